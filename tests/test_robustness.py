"""Careless and hostile input, end to end (issue 14): every public name of ``paramsurgery``
gets a table of bad arguments, each of which must raise a typed ``ParamSurgeryError`` and
leave every parameter replica, the Trainer's optimizer state (momentum) and every file
bit-identical.

The table is data: add a row to ``BAD`` (or a reason to ``NOT_CALLABLE``) for every new
public name; ``test_every_public_name_has_a_table_entry`` fails until you do.
"""
import math
import os
import types

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon
from mxnet.gluon import nn

import paramsurgery as ps

CTXS = [mx.cpu(0), mx.cpu(1)]
NAN, INF = float('nan'), float('inf')


# --------------------------------------------------------------------------- environment

class Custom(gluon.HybridBlock):
    """A HybridBlock whose forward() reads its weight itself: hybrid_forward never gets it."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.weight = self.params.get('weight', shape=(2, 3), init=mx.init.One())

    def forward(self, x):
        return mx.nd.dot(x, self.weight.data(x.context).T)

    def hybrid_forward(self, F, x, weight):  # pragma: no cover - never called by forward
        return F.FullyConnected(x, weight, no_bias=True, num_hidden=2)


def _net(prefix='net_'):
    net = nn.HybridSequential(prefix=prefix)
    with net.name_scope():
        net.add(nn.Dense(4, in_units=3), nn.Dense(2, in_units=4))
    mx.random.seed(0)
    net.initialize(mx.init.Uniform(0.5), ctx=CTXS)
    return net


def _dynamic():
    # on a net of its own: building one masks its net, which the table checks stays unchanged
    net = _net('dyn_')
    return ps.DynamicSparsity(net, gluon.Trainer(net.collect_params(), 'sgd'), '.*weight',
                              0.5, seed=0)


@pytest.fixture
def env(tmp_path):
    """A masked two-context net whose Trainer has momentum, an fp16 net near overflow, an
    int32 parameter, a Pruner, and files (masks, an exported model, a parameter file)."""
    e = types.SimpleNamespace(tmp=tmp_path)
    e.net = _net()
    ps.apply_mask(e.net, 'net_dense0_weight', (np.arange(12) % 3 > 0).reshape(4, 3))
    e.trainer = gluon.Trainer(e.net.collect_params(), 'sgd',
                              {'learning_rate': 0.1, 'momentum': 0.9},
                              kvstore='device', update_on_kvstore=False)
    x = mx.nd.array(np.random.RandomState(0).uniform(-1, 1, (4, 3)))
    with autograd.record():
        losses = [e.net(p).sum() for p in gluon.utils.split_and_load(x, CTXS)]
    autograd.backward(losses)
    e.trainer.step(4)
    with autograd.record():  # fresh gradients again, for safe_step's bad batch sizes
        losses = [e.net(p).sum() for p in gluon.utils.split_and_load(x, CTXS)]
    autograd.backward(losses)
    e.half = nn.Dense(2, in_units=2, use_bias=False, dtype='float16', prefix='half_')
    e.half.initialize(mx.init.Constant(30000.0))
    ps.apply_mask(e.half, 'half_weight', np.full((2, 2), 2.0, 'float16'))
    # a mask written by value surgery: baking it would overflow float16
    e.baked = nn.Dense(2, in_units=2, use_bias=False, dtype='float16', prefix='baked_')
    e.baked.initialize(mx.init.Constant(30000.0))
    ps.apply_mask(e.baked, 'baked_weight', 1.0)
    ps.set_params(e.baked, 'baked_weight_mask', 3.0)
    e.count = gluon.Parameter('count', shape=(3,), dtype='int32', init=mx.init.Constant(7),
                              grad_req='null')
    e.count.initialize()
    e.ints = {'count': e.count}
    e.custom = nn.HybridSequential(prefix='c_')
    with e.custom.name_scope():
        e.custom.add(Custom())
    e.custom.initialize()
    e.sparse = nn.Embedding(5, 2, sparse_grad=True, prefix='emb_')
    e.sparse.initialize()
    e.pruner = ps.Pruner(e.net, 'net_dense1_weight', ps.ConstantSparsity(0.5, frequency=1))
    e.masks = str(tmp_path / 'masks.npz')
    ps.save_masks(e.net, e.masks)
    e.export = str(tmp_path / 'model')
    exported = _net('exp_')
    exported.hybridize()
    exported(mx.nd.ones((1, 3), ctx=CTXS[0]))
    exported.export(e.export)
    e.symbol, e.params_file = e.export + '-symbol.json', e.export + '-0000.params'
    good = open(e.masks, 'rb').read()
    middle = _inside_first_member(good)
    for name, data in [('empty.npz', b''), ('truncated.npz', good[:len(good) // 2]),
                       ('flipped.npz', _flip(good, middle)),
                       ('text.npz', 'ünïcode, not a zip'.encode('utf-8')),
                       ('empty.json', b''), ('bad.json', b'{"nodes": [1, 2'),
                       ('binary.json', b'\xff\xfe\x00garbage'),
                       ('truncated.params', open(e.params_file, 'rb').read()[:64])]:
        (tmp_path / name).write_bytes(data)
    np.save(str(tmp_path / 'array.npy'), np.ones(3))
    os.rename(str(tmp_path / 'array.npy'), str(tmp_path / 'array.npz'))
    np.savez(str(tmp_path / 'other.npz'), a=np.ones(3))
    (tmp_path / 'folder').mkdir()
    e.missing_dir = str(tmp_path / 'no' / 'such' / 'folder' / 'masks.npz')
    e.f = lambda name: str(tmp_path / name)
    # An open file whose descriptor a careless caller might pass as a path.
    e.fd_file = open(str(tmp_path / 'descriptor.txt'), 'w+b')
    e.fd_file.write(b'precious')
    e.fd_file.flush()
    e.fd = e.fd_file.fileno()
    _compact_files(e)
    yield e
    e.fd_file.close()


def _compact_files(e):
    """A compact file of ``e.net`` and damaged copies of it, for load_compact's rows."""
    e.compact = e.f('net.compact')
    ps.save_compact(e.net, e.compact)
    good = open(e.compact, 'rb').read()
    for name, data in [('empty.compact', b''), ('truncated.compact', good[:len(good) // 2]),
                       ('flipped.compact', _flip(good, len(good) - 5)),  # inside a blob
                       ('text.compact', 'ünïcode, not a compact file'.encode('utf-8'))]:
        with open(e.f(name), 'wb') as f:
            f.write(data)
    wider = nn.HybridSequential(prefix='wide_')
    with wider.name_scope():
        wider.add(nn.Dense(5, in_units=3), nn.Dense(2, in_units=5))
    wider.initialize()
    ps.save_compact(wider, e.f('wider.compact'))


class _Erf(gluon.HybridBlock):
    """An operator MXNet's ONNX exporter has no converter for."""

    def hybrid_forward(self, F, x):
        return F.erf(x)


def _unconvertible(e):
    net = nn.HybridSequential(prefix='odd_')
    with net.name_scope():
        net.add(nn.Dense(2, in_units=3), _Erf(prefix='erf_'))
    net.initialize()
    return ps.export_onnx(net, e.f('odd.onnx'), inputs=(1, 3))


def _uninitialised(e):
    return ps.save_compact(nn.Dense(2, in_units=3, prefix='fresh_'), e.f('fresh.compact'))


def _flip(data, pos):
    return data[:pos] + bytes([data[pos] ^ 0xFF]) + data[pos + 1:]


def _inside_first_member(archive):
    """An offset in the middle of the first member's compressed data."""
    import io
    import zipfile
    info = zipfile.ZipFile(io.BytesIO(archive)).infolist()[0]
    name_len = int.from_bytes(archive[info.header_offset + 26:info.header_offset + 28], 'little')
    extra_len = int.from_bytes(archive[info.header_offset + 28:info.header_offset + 30],
                               'little')
    return info.header_offset + 30 + name_len + extra_len + info.compress_size // 2


def _trainer_states(trainer):
    out = {}
    for i, updater in enumerate(trainer._updaters):
        for idx, state in updater.states.items():
            arrays = state if isinstance(state, (list, tuple)) else [state]
            out[(i, idx)] = [a.asnumpy().tobytes() for a in arrays if a is not None]
    return out


def _params(*nets):
    out = {}
    for net in nets:
        params = net.collect_params() if isinstance(net, gluon.Block) else net
        for name, p in params.items():
            out[name] = [d.asnumpy().tobytes() for d in p.list_data()] if p._data else None
    return out


def _files(folder):
    out = {}
    for root, _, names in os.walk(str(folder)):
        for name in names:
            path = os.path.join(root, name)
            out[os.path.relpath(path, str(folder))] = open(path, 'rb').read()
    return out


def snapshot(e):
    return {'params': _params(e.net, e.half, e.baked, e.ints, e.custom, e.sparse),
            'grads': {n: [g.asnumpy().tobytes() for g in p.list_grad()]
                      for n, p in e.net.collect_params().items() if p.grad_req != 'null'},
            'trainer': _trainer_states(e.trainer),
            'masks': ps.masked(e.net) + ps.masked(e.half) + ps.masked(e.custom),
            'pruner': e.pruner.state_dict(),
            'files': _files(e.tmp)}


# --------------------------------------------------------------------------- the table

TE, VE, SE = ps.SurgeryTypeError, ps.SurgeryValueError, ps.SelectionError
FE = ps.FileFormatError
STE, SVE = ps.SamplerTypeError, ps.SamplerValueError
W = 'net_dense0_weight'


def bad_schedule(value):
    return ps.Pruner.__new__(ps.Pruner), value


def _pruner_with(e, schedule):
    return ps.Pruner(e.net, 'net_dense1_weight', schedule)


STATE = {'last_step': 3, 'pruned_steps': [0, 1], 'method': 'magnitude', 'scope': 'layer',
         'schedule': repr(ps.ConstantSparsity(0.5, frequency=1))}

def _one(net):
    return 1.0


def _latency_model(e):
    """A model of e.net built with a fake clock (the rows check arguments, not timing)."""
    from paramsurgery import latency
    previous, latency.timing._TIMER = latency.timing._TIMER, lambda runtime, variant: 1e-3
    try:
        return ps.latency_model(e.net, inputs=(1, 3))
    finally:
        latency.timing._TIMER = previous


def _report():
    table = [{'name': 'w', 'amount': 0.5, 'metric': 0.9, 'drop': 0.1, 'macs_removed': 0,
              'params_removed': 5, 'removed': 5}]
    return ps.SensitivityReport('weights', 1.0, [0.5], table, 0, 10, [])


# name -> [(label, call(env), expected error class)]
BAD = {
    'select': [
        ('int key', lambda e: ps.select(e.net, 3), TE),
        ('None key', lambda e: ps.select(e.net, None), TE),
        ('empty key', lambda e: ps.select(e.net, ''), SE),
        ('empty list', lambda e: ps.select(e.net, []), SE),
        ('bad regex', lambda e: ps.select(e.net, '('), SE),
        ('no match', lambda e: ps.select(e.net, 'nothing'), SE),
        ('net is a str', lambda e: ps.select('net', '.*'), TE),
        ('net is None', lambda e: ps.select(None, '.*'), TE),
        ('callable returns a str', lambda e: ps.select(e.net, lambda n, p: 'no'), TE),
    ],
    'replicas': [
        ('a str', lambda e: ps.replicas('net_dense0_weight'), TE),
        ('None', lambda e: ps.replicas(None), TE),
        ('an int', lambda e: ps.replicas(0), TE),
    ],
    'data_on': [
        ('a str', lambda e: ps.data_on('w'), TE),
        ('ctx is a str', lambda e: ps.data_on(e.net[0].weight, 'cpu(0)'), TE),
        ('ctx is an int', lambda e: ps.data_on(e.net[0].weight, 1), TE),
        ('ctx elsewhere', lambda e: ps.data_on(e.net[0].weight, mx.cpu(5)),
         ps.ParameterStateError),
    ],
    'check_params': [
        ('net is an int', lambda e: ps.check_params(5), TE),
        ('key no match', lambda e: ps.check_params(e.net, 'nothing'), SE),
        ('key is a float', lambda e: ps.check_params(e.net, 1.5), TE),
    ],
    'assign_params': [
        ('NaN', lambda e: ps.assign_params(e.net, W, NAN), VE),
        ('inf', lambda e: ps.assign_params(e.net, W, INF), VE),
        ('-inf array', lambda e: ps.assign_params(e.net, W, np.array([1, -INF, 1])), VE),
        ('huge (inf in float32)', lambda e: ps.assign_params(e.net, W, 1e39), VE),
        ('a str', lambda e: ps.assign_params(e.net, W, '2'), TE),
        ('None', lambda e: ps.assign_params(e.net, W, None), TE),
        ('a list', lambda e: ps.assign_params(e.net, W, [1, 2, 3]), TE),
        ('wrong shape', lambda e: ps.assign_params(e.net, W, np.ones((5, 3))), VE),
        ('empty array', lambda e: ps.assign_params(e.net, W, np.ones((0,))), VE),
        ("allow_nonfinite='no'",
         lambda e: ps.assign_params(e.net, W, NAN, allow_nonfinite='no'), TE),
        ('allow_nonfinite=1', lambda e: ps.assign_params(e.net, W, NAN, allow_nonfinite=1), TE),
        ('allow_nonfinite=None',
         lambda e: ps.assign_params(e.net, W, 2.0, allow_nonfinite=None), TE),
        ('empty key list', lambda e: ps.assign_params(e.net, [], 2.0), SE),
        ('trainer is a str', lambda e: ps.assign_params(e.net, W, 2.0, trainer='sgd'), TE),
        ('fp16 overflow', lambda e: ps.assign_params(e.half, 'half_weight', 4.0), VE),
        ('fp16 overflow, array',
         lambda e: ps.assign_params(e.half, 'half_weight', np.array([1, 3], 'float16')), VE),
        ('int32 wraps around', lambda e: ps.assign_params(e.ints, 'count', 10 ** 9), VE),
        ('int32 times a float', lambda e: ps.assign_params(e.ints, 'count', 0.5), VE),
        ('int32 NDArray of floats',
         lambda e: ps.assign_params(e.ints, 'count', mx.nd.array([0.5, 1, 1])), VE),
        ('dict and value', lambda e: ps.assign_params(e.net, {W: 2.0}, 2.0), TE),
    ],
    'set_params': [
        ('NaN', lambda e: ps.set_params(e.net, W, NAN), VE),
        ('inf NDArray', lambda e: ps.set_params(e.net, W, mx.nd.array([1, INF, 1])), VE),
        ('huge (inf in float32)', lambda e: ps.set_params(e.net, W, -1e300), VE),
        ('a str', lambda e: ps.set_params(e.net, W, 'zero'), TE),
        ('wrong shape', lambda e: ps.set_params(e.net, W, np.ones(4)), VE),
        ("allow_nonfinite='no'", lambda e: ps.set_params(e.net, W, NAN, allow_nonfinite='no'),
         TE),
        ('a mask by regex only', lambda e: ps.set_params(e.net, '.*_mask', 1.0), SE),
        ('int32 NDArray wraps around',
         lambda e: ps.set_params(e.ints, 'count', mx.nd.array([2 ** 40, 1, 1], dtype='int64')),
         VE),
        ('int32 NDArray truncated',
         lambda e: ps.set_params(e.ints, 'count', mx.nd.array([2.5, 1, 1])), VE),
        ('int32 numpy wraps around',
         lambda e: ps.set_params(e.ints, 'count', np.array([2 ** 40, 1, 1])), VE),
        ('int32 NaN', lambda e: ps.set_params(e.ints, 'count', NAN), VE),
        ('no value', lambda e: ps.set_params(e.net, W), TE),
    ],
    'apply_mask': [
        ('NaN', lambda e: ps.apply_mask(e.net, W, NAN), VE),
        ('inf array', lambda e: ps.apply_mask(e.net, W, np.array([1, INF, 1])), VE),
        ('a str', lambda e: ps.apply_mask(e.net, W, 'no'), TE),
        ('wrong shape', lambda e: ps.apply_mask(e.net, W, np.ones((3, 4))), VE),
        ("combine='add'", lambda e: ps.apply_mask(e.net, W, 0.5, combine='add'), VE),
        ('combine=True', lambda e: ps.apply_mask(e.net, W, 0.5, combine=True), VE),
        ('net is a dict', lambda e: ps.apply_mask(dict(e.net.collect_params()), W, 0.5), TE),
        ('a mask as key', lambda e: ps.apply_mask(e.net, W + '_mask', 0.5), VE),
        ('no match', lambda e: ps.apply_mask(e.net, 'nothing', 0.5), SE),
        ('forward() override', lambda e: ps.apply_mask(e.custom, 'c_custom0_weight', 0.0), TE),
        ('row_sparse gradient', lambda e: ps.apply_mask(e.sparse, 'emb_weight', 0.0), TE),
        ('fp16 masks overflow when combined',
         lambda e: ps.apply_mask(e.half, 'half_weight', np.full((2, 2), 40000.0, 'float16')),
         VE),
        ('fp16 weight * mask overflows',
         lambda e: ps.apply_mask(e.half, 'half_weight', 1.5), VE),
        ('fp16 replace: weight * mask overflows',
         lambda e: ps.apply_mask(e.half, 'half_weight', 3.0, combine='replace'), VE),
    ],
    'get_mask': [
        ('no mask', lambda e: ps.get_mask(e.net, 'net_dense1_weight'), SE),
        ('int key', lambda e: ps.get_mask(e.net, 3), TE),
        ('net is None', lambda e: ps.get_mask(None, W), TE),
    ],
    'masked': [
        ('net is an int', lambda e: ps.masked(5), TE),
        ('net is a str', lambda e: ps.masked('net'), TE),
    ],
    'remove_mask': [
        ("bake='no'", lambda e: ps.remove_mask(e.net, W, bake='no'), TE),
        ('bake=0', lambda e: ps.remove_mask(e.net, W, bake=0), TE),
        ('bake=None', lambda e: ps.remove_mask(e.net, W, bake=None), TE),
        ('no mask', lambda e: ps.remove_mask(e.net, 'net_dense1_weight'), SE),
        ('trainer is a str', lambda e: ps.remove_mask(e.net, W, trainer='x'), TE),
        ('bake overflows fp16', lambda e: ps.remove_mask(e.baked, 'baked_weight'), VE),
    ],
    'save_masks': [
        ('an int path (file descriptor)', lambda e: ps.save_masks(e.net, e.fd), TE),
        ('None path', lambda e: ps.save_masks(e.net, None), TE),
        ('bytes path', lambda e: ps.save_masks(e.net, e.masks.encode()), TE),
        ('empty path', lambda e: ps.save_masks(e.net, ''), VE),
        ('a folder', lambda e: ps.save_masks(e.net, e.f('folder')), VE),
        ('missing folder', lambda e: ps.save_masks(e.net, e.missing_dir), VE),
        ('net is a dict', lambda e: ps.save_masks(dict(e.net.collect_params()), e.masks), TE),
    ],
    'load_masks': [
        ('an int path (file descriptor)', lambda e: ps.load_masks(e.net, e.fd), TE),
        ('missing file', lambda e: ps.load_masks(e.net, e.f('nope.npz')), VE),
        ('a folder', lambda e: ps.load_masks(e.net, e.f('folder')), VE),
        ('empty file', lambda e: ps.load_masks(e.net, e.f('empty.npz')), FE),
        ('truncated file', lambda e: ps.load_masks(e.net, e.f('truncated.npz')), FE),
        ('flipped byte', lambda e: ps.load_masks(e.net, e.f('flipped.npz')), FE),
        ('text file', lambda e: ps.load_masks(e.net, e.f('text.npz')), FE),
        ('a .npy array', lambda e: ps.load_masks(e.net, e.f('array.npz')), FE),
        ('another .npz', lambda e: ps.load_masks(e.net, e.f('other.npz')), FE),
        ('a parameter file', lambda e: ps.load_masks(e.net, e.params_file), FE),
        ("combine='no'", lambda e: ps.load_masks(e.net, e.masks, combine='no'), VE),
        ('another architecture', lambda e: ps.load_masks(e.half, e.masks), SE),
    ],
    'load_exported': [
        ('an int path', lambda e: ps.load_exported(e.fd, 'data', e.params_file), TE),
        ('missing symbol file', lambda e: ps.load_exported(e.f('no.json'), 'data'), VE),
        ('a folder', lambda e: ps.load_exported(e.f('folder'), 'data'), VE),
        ('empty symbol file',
         lambda e: ps.load_exported(e.f('empty.json'), 'data', e.params_file), FE),
        ('truncated JSON',
         lambda e: ps.load_exported(e.f('bad.json'), 'data', e.params_file), FE),
        ('binary symbol file',
         lambda e: ps.load_exported(e.f('binary.json'), 'data', e.params_file), FE),
        ('mask file as symbol', lambda e: ps.load_exported(e.masks, 'data', e.params_file), FE),
        ('truncated params',
         lambda e: ps.load_exported(e.symbol, 'data', e.f('truncated.params')), FE),
        ('empty params', lambda e: ps.load_exported(e.symbol, 'data', e.f('empty.npz')), FE),
        ('mask file as params', lambda e: ps.load_exported(e.symbol, 'data', e.masks), FE),
        ('wrong input name', lambda e: ps.load_exported(e.symbol, 'nodata', e.params_file), FE),
        ('input_names is an int', lambda e: ps.load_exported(e.symbol, 5, e.params_file), TE),
        ('input_names empty', lambda e: ps.load_exported(e.symbol, [], e.params_file), TE),
        ('ctx is a str', lambda e: ps.load_exported(e.symbol, 'data', e.params_file, 'cpu'),
         TE),
        ("allow_missing='no'", lambda e: ps.load_exported(e.symbol, 'data', e.params_file,
                                                          allow_missing='no'), TE),
        ('unknown keyword', lambda e: ps.load_exported(e.symbol, 'data', e.params_file,
                                                       allow_misssing=True), TE),
    ],
    'broadcast_masks': [
        ('kvstore is a str', lambda e: ps.broadcast_masks('device', e.net), TE),
        ('net is an int', lambda e: ps.broadcast_masks(None, 5), TE),
    ],
    'find_stale': [
        ('an int', lambda e: ps.find_stale(5), TE),
        ('a list of str', lambda e: ps.find_stale(['w']), TE),
        ('usage is a str', lambda e: ps.find_stale(e.trainer, usage='x'), TE),
    ],
    'safe_step': [
        ('batch_size NaN', lambda e: ps.safe_step(e.trainer, NAN), VE),
        ('batch_size inf', lambda e: ps.safe_step(e.trainer, INF), VE),
        ('batch_size 0', lambda e: ps.safe_step(e.trainer, 0), VE),
        ('batch_size -4', lambda e: ps.safe_step(e.trainer, -4), VE),
        ('batch_size -0.5', lambda e: ps.safe_step(e.trainer, -0.5), VE),
        ("batch_size '4'", lambda e: ps.safe_step(e.trainer, '4'), TE),
        ('batch_size True', lambda e: ps.safe_step(e.trainer, True), TE),
        ('batch_size None', lambda e: ps.safe_step(e.trainer, None), TE),
        ('batch_size NDArray', lambda e: ps.safe_step(e.trainer, mx.nd.array([4])), TE),
        ('allow_stale=True', lambda e: ps.safe_step(e.trainer, 4, allow_stale=True), TE),
        ('allow_stale no match', lambda e: ps.safe_step(e.trainer, 4, allow_stale='zz'), SE),
        ('trainer is a net', lambda e: ps.safe_step(e.net, 4), TE),
    ],
    'track_usage': [
        ('a dict', lambda e: ps.track_usage(dict(e.net.collect_params())), TE),
        ('None', lambda e: ps.track_usage(None), TE),
    ],
    'explain': [
        ('not a stale warning', lambda e: ps.explain(ValueError('x')), VE),
        ('a str', lambda e: ps.explain('Gradient of Parameter'), VE),
        ('no trainer', lambda e: ps.explain(UserWarning(
            'Gradient of Parameter `net_dense0_weight` on context cpu(0) has not been updated '
            'by backward since last `step`.')), TE),
    ],
    'UsageTracker': [
        ('an int', lambda e: ps.UsageTracker(5), TE),
    ],
    'prune_magnitude': [
        ('NaN', lambda e: ps.prune_magnitude(e.net, W, NAN), VE),
        ('inf', lambda e: ps.prune_magnitude(e.net, W, INF), VE),
        ('negative', lambda e: ps.prune_magnitude(e.net, W, -1), VE),
        ('1.5', lambda e: ps.prune_magnitude(e.net, W, 1.5), VE),
        ('huge count', lambda e: ps.prune_magnitude(e.net, W, 10 ** 30), VE),
        ('True', lambda e: ps.prune_magnitude(e.net, W, True), TE),
        ("'no'", lambda e: ps.prune_magnitude(e.net, W, 'no'), TE),
        ('None', lambda e: ps.prune_magnitude(e.net, W, None), TE),
        ("scope='x'", lambda e: ps.prune_magnitude(e.net, W, 0.5, scope='x'), VE),
        ('norm 0', lambda e: ps.prune_magnitude(e.net, W, 0.5, norm=0), VE),
        ('norm NaN', lambda e: ps.prune_magnitude(e.net, W, 0.5, norm=NAN), VE),
        ('empty key', lambda e: ps.prune_magnitude(e.net, [], 0.5), SE),
    ],
    'prune_random': [
        ('NaN', lambda e: ps.prune_random(e.net, W, NAN), VE),
        ("seed 'x'", lambda e: ps.prune_random(e.net, W, 0.5, seed='x'), TE),
        ('seed -1', lambda e: ps.prune_random(e.net, W, 0.5, seed=-1), VE),
        ('seed 1.5', lambda e: ps.prune_random(e.net, W, 0.5, seed=1.5), TE),
    ],
    'prune_structured': [
        ('axis 5', lambda e: ps.prune_structured(e.net, W, 0.5, axis=5), VE),
        ("axis 'x'", lambda e: ps.prune_structured(e.net, W, 0.5, axis='x'), TE),
        ('norm -1', lambda e: ps.prune_structured(e.net, W, 0.5, norm=-1), VE),
        ('amount 2.0', lambda e: ps.prune_structured(e.net, W, 2.0), VE),
    ],
    'prune_custom': [
        ('NaN mask', lambda e: ps.prune_custom(e.net, W, np.full(3, NAN)), VE),
        ('wrong shape', lambda e: ps.prune_custom(e.net, W, np.ones(7)), VE),
        ("mask 'no'", lambda e: ps.prune_custom(e.net, W, 'no'), TE),
    ],
    'Pruner': [
        ("schedule 'x'", lambda e: ps.Pruner(e.net, W, 'x'), TE),
        ("method 'x'", lambda e: ps.Pruner(e.net, W, ps.ConstantSparsity(0.5), method='x'), VE),
        ("scope 'x'", lambda e: ps.Pruner(e.net, W, ps.ConstantSparsity(0.5), scope='x'), VE),
        ('schedule gives NaN',
         lambda e: _pruner_with(e, lambda step: (True, NAN)).step(0), VE),
        ('schedule gives None', lambda e: _pruner_with(e, lambda step: None).step(0), TE),
        ('schedule gives 1.5',
         lambda e: _pruner_with(e, lambda step: (True, 1.5)).step(0), VE),
        ("schedule gives 'yes'",
         lambda e: _pruner_with(e, lambda step: ('yes', 0.5)).step(0), TE),
        ('schedule gives a str sparsity',
         lambda e: _pruner_with(e, lambda step: (True, '0.5')).step(0), TE),
        ('step is a str', lambda e: e.pruner.step('3'), TE),
        ('step is a float', lambda e: e.pruner.step(1.5), TE),
        ('state is a list', lambda e: e.pruner.load_state_dict([]), TE),
        ('state misses a field',
         lambda e: e.pruner.load_state_dict({k: v for k, v in STATE.items()
                                             if k != 'pruned_steps'}), VE),
        ('state has NaN step', lambda e: e.pruner.load_state_dict(dict(STATE, last_step=NAN)),
         TE),
        ('state steps not ints',
         lambda e: e.pruner.load_state_dict(dict(STATE, pruned_steps=['a'])), TE),
        ('state steps a str',
         lambda e: e.pruner.load_state_dict(dict(STATE, pruned_steps='01')), TE),
        ('state other method',
         lambda e: e.pruner.load_state_dict(dict(STATE, method='random')), VE),
        ('state other schedule',
         lambda e: e.pruner.load_state_dict(dict(STATE, schedule='ConstantSparsity(0.9)')), VE),
        ('state unknown field', lambda e: e.pruner.load_state_dict(dict(STATE, extra=1)), VE),
    ],
    'prune_count': [
        ('NaN', lambda e: ps.prune_count(NAN, 10), VE),
        ('negative', lambda e: ps.prune_count(-0.1, 10), VE),
        ('True', lambda e: ps.prune_count(True, 10), TE),
        ("'no'", lambda e: ps.prune_count('no', 10), TE),
        ('huge', lambda e: ps.prune_count(10 ** 20, 10), VE),
        ('n negative', lambda e: ps.prune_count(0.5, -1), VE),
        ('n a float', lambda e: ps.prune_count(0.5, 2.5), TE),
    ],
    'magnitude_masks': [
        ('NaN amount', lambda e: ps.magnitude_masks({'w': np.ones(4)}, NAN), VE),
        ('weights a list', lambda e: ps.magnitude_masks([np.ones(4)], 0.5), TE),
        ('weights empty', lambda e: ps.magnitude_masks({}, 0.5), VE),
        ('str weight', lambda e: ps.magnitude_masks({'w': 'abc'}, 0.5), TE),
        ('NaN weight', lambda e: ps.magnitude_masks({'w': np.array([1, NAN])}, 0.5), VE),
    ],
    'random_masks': [
        ('1.5', lambda e: ps.random_masks({'w': np.ones(4)}, 1.5), VE),
        ("seed 'x'", lambda e: ps.random_masks({'w': np.ones(4)}, 0.5, seed='x'), TE),
    ],
    'structured_masks': [
        ('axis -9', lambda e: ps.structured_masks({'w': np.ones((2, 2))}, 0.5, axis=-9), VE),
        ('amount True', lambda e: ps.structured_masks({'w': np.ones((2, 2))}, True), TE),
    ],
    'custom_masks': [
        ('NaN mask', lambda e: ps.custom_masks({'w': np.ones(2)}, {'w': np.array([NAN, 1])}),
         VE),
        ('unknown name', lambda e: ps.custom_masks({'w': np.ones(2)}, {'v': np.ones(2)}), VE),
    ],
    'ConstantSparsity': [
        ('NaN', lambda e: ps.ConstantSparsity(NAN), VE),
        ('1.5', lambda e: ps.ConstantSparsity(1.5), VE),
        ('True', lambda e: ps.ConstantSparsity(True), TE),
        ("'no'", lambda e: ps.ConstantSparsity('no'), TE),
        ('begin -5', lambda e: ps.ConstantSparsity(0.5, begin=-5), VE),
        ('frequency 0', lambda e: ps.ConstantSparsity(0.5, frequency=0), VE),
        ('step NaN', lambda e: ps.ConstantSparsity(0.5)(NAN), TE),
    ],
    'PolynomialDecay': [
        ('final NaN', lambda e: ps.PolynomialDecay(0.0, NAN, 0, 10), VE),
        ('end before begin', lambda e: ps.PolynomialDecay(0.0, 0.5, 10, 5), VE),
        ('power inf', lambda e: ps.PolynomialDecay(0.0, 0.5, 0, 10, power=INF), VE),
        ("power 'no'", lambda e: ps.PolynomialDecay(0.0, 0.5, 0, 10, power='no'), TE),
    ],
    'SparsityReport': [
        ('plot to an int path', lambda e: ps.sparsity_report(e.net).plot(e.fd), TE),
        ('plot to a folder', lambda e: ps.sparsity_report(e.net).plot(e.f('folder')), VE),
        ('plot to a missing folder', lambda e: ps.sparsity_report(e.net).plot(e.missing_dir),
         VE),
    ],
    'sparsity_report': [
        ('net is an int', lambda e: ps.sparsity_report(5), TE),
        ('no match', lambda e: ps.sparsity_report(e.net, 'nothing'), SE),
    ],
    'arrays_report': [
        ('a list', lambda e: ps.arrays_report([np.ones(2)]), TE),
        ('mask does not broadcast',
         lambda e: ps.arrays_report({'w': np.ones((2, 3)), 'w_mask': np.ones((3, 2))}), VE),
        ('unknown name', lambda e: ps.arrays_report({'w': np.ones(2)}, ['v']), SE),
        ('names a str', lambda e: ps.arrays_report({'w': np.ones(2)}, 'w'), TE),
        ('str array', lambda e: ps.arrays_report({'w': np.array(['a'])}), TE),
    ],
    'SubsetRandomSampler': [
        ('negative length', lambda e: ps.SubsetRandomSampler(-1, 0), SVE),
        ('size > length', lambda e: ps.SubsetRandomSampler(5, 6), SVE),
        ("size 'no'", lambda e: ps.SubsetRandomSampler(5, 'no'), STE),
        ('size NaN', lambda e: ps.SubsetRandomSampler(5, NAN), SVE),
        ('size True', lambda e: ps.SubsetRandomSampler(5, True), STE),
        ("exclude 'x'", lambda e: ps.SubsetRandomSampler(5, 2, exclude='x'), STE),
        ('seed -1', lambda e: ps.SubsetRandomSampler(5, 2, seed=-1), SVE),
    ],
    'complementary_split': [
        ('train_size > length', lambda e: ps.complementary_split(10, 11), SVE),
        ("reshuffle='no'", lambda e: ps.complementary_split(10, 5, reshuffle='no'), STE),
        ('reshuffle=1', lambda e: ps.complementary_split(10, 5, reshuffle=1), STE),
        ('length inf', lambda e: ps.complementary_split(INF, 5), SVE),
    ],
    'kfold': [
        ('length 1', lambda e: ps.kfold(1, 2), SVE),
        ('k 1', lambda e: ps.kfold(10, 1), SVE),
        ("k 'no'", lambda e: ps.kfold(10, 'no'), STE),
        ('k huge', lambda e: ps.kfold(10, 10 ** 12), SVE),
    ],
    'sensitivity': [
        ('evaluate not callable', lambda e: ps.sensitivity(e.net, 3, kind='weights'), TE),
        ("kind='x'", lambda e: ps.sensitivity(e.net, _one, kind='x'), VE),
        ("round_to='fast' without a model", lambda e: ps.sensitivity(
            e.net, _one, inputs=(1, 3), round_to='fast'), VE),
        ("latency for kind='weights'", lambda e: ps.sensitivity(
            e.net, _one, kind='weights', latency=_latency_model(e)), VE),
        ('amounts NaN', lambda e: ps.sensitivity(e.net, _one, kind='weights',
                                                 amounts=[NAN]), VE),
        ('amounts 1.5', lambda e: ps.sensitivity(e.net, _one, kind='weights',
                                                 amounts=[1.5]), VE),
        ('amounts a str', lambda e: ps.sensitivity(e.net, _one, kind='weights',
                                                   amounts='0.5'), TE),
        ('amounts empty', lambda e: ps.sensitivity(e.net, _one, kind='weights',
                                                   amounts=[]), VE),
        ('amounts ()', lambda e: ps.sensitivity(e.net, _one, kind='weights',
                                                amounts=()), VE),
        ("progress='no'", lambda e: ps.sensitivity(e.net, _one, kind='weights',
                                                   progress='no'), TE),
        ('channels without inputs', lambda e: ps.sensitivity(e.net, _one), VE),
        ('evaluate returns NaN', lambda e: ps.sensitivity(e.net, lambda n: NAN,
                                                          kind='weights'), VE),
        ("evaluate returns 'no'", lambda e: ps.sensitivity(e.net, lambda n: 'no',
                                                           kind='weights'), TE),
        ('no match', lambda e: ps.sensitivity(e.net, _one, kind='weights', key='nothing'),
         SE),
    ],
    'SensitivityReport': [
        ('plan with two budgets', lambda e: _report().plan(params_ratio=2, max_drop=0.1), VE),
        ('plan NaN', lambda e: _report().plan(max_drop=NAN), VE),
        ('plan ratio 0.5', lambda e: _report().plan(params_ratio=0.5), VE),
        ('plan unreachable', lambda e: _report().plan(params_ratio=1e9), VE),
        ('save to an int path', lambda e: _report().save(e.fd), TE),
        ('save to a folder', lambda e: _report().save(e.f('folder')), VE),
        ('save to a missing folder', lambda e: _report().save(e.missing_dir), VE),
        ('load an empty file', lambda e: ps.SensitivityReport.load(e.f('empty.json')), FE),
        ('load a binary file', lambda e: ps.SensitivityReport.load(e.f('binary.json')), FE),
        ('load an int path', lambda e: ps.SensitivityReport.load(e.fd), TE),
        ('plot to a missing folder', lambda e: _report().plot(e.missing_dir), VE),
        ('latency_ratio without a model', lambda e: _report().plan(latency_ratio=2), VE),
        ("latency='x'", lambda e: _report().plan(latency_ratio=2, latency='x'), TE),
        ('latency for a weights report', lambda e: _report().plan(
            latency_ratio=2, latency=_latency_model(e)), VE),
        ('predict a list', lambda e: _report().predict([0.5]), TE),
        ('predict an unknown name', lambda e: _report().predict({'x': 0.5}), VE),
        ('predict NaN', lambda e: _report().predict({'w': NAN}), VE),
    ],
    'trace_channels': [
        ('a plain Block', lambda e: ps.trace_channels(nn.Block(), (1, 3)), TE),
        ('shape of a str', lambda e: ps.trace_channels(e.net, 'x'), TE),
        ('zero dimension', lambda e: ps.trace_channels(e.net, (0, 3)), VE),
        ('shape does not run', lambda e: ps.trace_channels(e.net, (1, 5)), VE),
        ('no input', lambda e: ps.trace_channels(e.net), TE),
    ],
    'count_ops': [
        ('a plain Block', lambda e: ps.count_ops(nn.Block(), (1, 3)), TE),
        ('negative dimension', lambda e: ps.count_ops(e.net, (1, -3)), VE),
        ('bool dimension', lambda e: ps.count_ops(e.net, (True, 3)), TE),
    ],
    'prune_channels': [
        ('NaN', lambda e: ps.prune_channels(e.net, NAN, inputs=(1, 3)), VE),
        ('1.5', lambda e: ps.prune_channels(e.net, 1.5, inputs=(1, 3)), VE),
        ('True', lambda e: ps.prune_channels(e.net, True, inputs=(1, 3)), TE),
        ("scope='x'", lambda e: ps.prune_channels(e.net, 0.5, inputs=(1, 3), scope='x'), VE),
        ('round_to 0', lambda e: ps.prune_channels(e.net, 0.5, inputs=(1, 3), round_to=0), VE),
        ("round_to='fast' without a model",
         lambda e: ps.prune_channels(e.net, 0.5, inputs=(1, 3), round_to='fast'), VE),
        ("round_to='fast', latency='x'", lambda e: ps.prune_channels(
            e.net, 0.5, inputs=(1, 3), round_to='fast', latency='x'), TE),
        ('latency with round_to=8', lambda e: ps.prune_channels(
            e.net, 0.5, inputs=(1, 3), round_to=8, latency=_latency_model(e)), VE),
        ("importance='x'", lambda e: ps.prune_channels(e.net, 0.5, inputs=(1, 3),
                                                        importance='x'), VE),
        ('unknown group', lambda e: ps.prune_channels(e.net, {'nothing': 0.5},
                                                      inputs=(1, 3)), VE),
        ('dict with global scope', lambda e: ps.prune_channels(
            e.net, {'net_dense0_weight': 0.5}, inputs=(1, 3), scope='global'), VE),
        ('bn_gamma without BatchNorm', lambda e: ps.prune_channels(
            e.net, 0.5, inputs=(1, 3), importance='bn_gamma'), VE),
        ('no input', lambda e: ps.prune_channels(e.net, 0.5, inputs=None), TE),
        ("mode='x'", lambda e: ps.prune_channels(e.net, 0.5, inputs=(1, 3), mode='x'), VE),
    ],
    'shrink': [
        ('a plain Block', lambda e: ps.shrink(nn.Block(), inputs=(1, 3)), TE),
        ('trainer a str', lambda e: ps.shrink(e.net, inputs=(1, 3), trainer='sgd'), TE),
        ('shape does not run', lambda e: ps.shrink(e.net, inputs=(1, 5)), VE),
    ],
    'ShrinkPlan': [
        ('save to an int path', lambda e: ps.ShrinkPlan({}, {}).save(e.fd), TE),
        ('save to a missing folder', lambda e: ps.ShrinkPlan({}, {}).save(e.missing_dir), VE),
        ('load an empty file', lambda e: ps.ShrinkPlan.load(e.f('empty.json')), FE),
        ('load a damaged file', lambda e: ps.ShrinkPlan.load(e.f('bad.json')), FE),
    ],
    'apply_plan': [
        ('plan an int', lambda e: ps.apply_plan(e.net, 3), TE),
        ('net a dict', lambda e: ps.apply_plan({}, ps.ShrinkPlan({}, {})), TE),
        ('another architecture', lambda e: ps.apply_plan(
            e.net, ps.ShrinkPlan({}, {'0.weight': (9, 9)})), ps.ShrinkError),
        ('a missing file', lambda e: ps.apply_plan(e.net, e.f('none.json')), VE),
    ],
    'export_onnx': [
        ('a plain Block', lambda e: ps.export_onnx(nn.Block(), e.f('n.onnx'), inputs=(1, 3)),
         TE),
        ('net is a str', lambda e: ps.export_onnx('net', e.f('n.onnx'), inputs=(1, 3)), TE),
        ('an int path (file descriptor)',
         lambda e: ps.export_onnx(e.net, e.fd, inputs=(1, 3)), TE),
        ('None path', lambda e: ps.export_onnx(e.net, None, inputs=(1, 3)), TE),
        ('empty path', lambda e: ps.export_onnx(e.net, '', inputs=(1, 3)), VE),
        ('a folder', lambda e: ps.export_onnx(e.net, e.f('folder'), inputs=(1, 3)), VE),
        ('missing folder', lambda e: ps.export_onnx(e.net, e.missing_dir, inputs=(1, 3)), VE),
        ('inputs a str', lambda e: ps.export_onnx(e.net, e.f('n.onnx'), inputs='1,3'), TE),
        ('inputs None', lambda e: ps.export_onnx(e.net, e.f('n.onnx'), inputs=None), TE),
        ('inputs empty', lambda e: ps.export_onnx(e.net, e.f('n.onnx'), inputs=[]), TE),
        ('zero dimension', lambda e: ps.export_onnx(e.net, e.f('n.onnx'), inputs=(0, 3)), VE),
        ('negative dimension',
         lambda e: ps.export_onnx(e.net, e.f('n.onnx'), inputs=(1, -3)), VE),
        ('bool dimension', lambda e: ps.export_onnx(e.net, e.f('n.onnx'), inputs=(True, 3)),
         TE),
        ('float dimension', lambda e: ps.export_onnx(e.net, e.f('n.onnx'), inputs=(1, 3.0)),
         TE),
        ('shape does not run',
         lambda e: ps.export_onnx(e.net, e.f('n.onnx'), inputs=(1, 5)), VE),
        # the tracer's message (channels.py) blames the blocks, not the number of inputs
        ('two inputs for one',
         lambda e: ps.export_onnx(e.net, e.f('n.onnx'), inputs=[(1, 3), (1, 3)]), TE),
        ('opset 11', lambda e: ps.export_onnx(e.net, e.f('n.onnx'), inputs=(1, 3), opset=11),
         VE),
        ('opset 99', lambda e: ps.export_onnx(e.net, e.f('n.onnx'), inputs=(1, 3), opset=99),
         VE),
        ('opset -1', lambda e: ps.export_onnx(e.net, e.f('n.onnx'), inputs=(1, 3), opset=-1),
         VE),
        ('opset True',
         lambda e: ps.export_onnx(e.net, e.f('n.onnx'), inputs=(1, 3), opset=True), TE),
        ('opset 13.0',
         lambda e: ps.export_onnx(e.net, e.f('n.onnx'), inputs=(1, 3), opset=13.0), TE),
        ('opset NaN',
         lambda e: ps.export_onnx(e.net, e.f('n.onnx'), inputs=(1, 3), opset=NAN), TE),
        ("opset '13'",
         lambda e: ps.export_onnx(e.net, e.f('n.onnx'), inputs=(1, 3), opset='13'), TE),
        ("check='yes'",
         lambda e: ps.export_onnx(e.net, e.f('n.onnx'), inputs=(1, 3), check='yes'), TE),
        ('check=None',
         lambda e: ps.export_onnx(e.net, e.f('n.onnx'), inputs=(1, 3), check=None), TE),
        ('check=1', lambda e: ps.export_onnx(e.net, e.f('n.onnx'), inputs=(1, 3), check=1),
         TE),
        ('an operator without converter', _unconvertible, ps.ExportError),
    ],
    'save_compact': [
        ('net is a dict',
         lambda e: ps.save_compact(dict(e.net.collect_params()), e.f('n.compact')), TE),
        ('net is None', lambda e: ps.save_compact(None, e.f('n.compact')), TE),
        ('an int path (file descriptor)', lambda e: ps.save_compact(e.net, e.fd), TE),
        ('None path', lambda e: ps.save_compact(e.net, None), TE),
        ('bytes path', lambda e: ps.save_compact(e.net, e.f('n.compact').encode()), TE),
        ('empty path', lambda e: ps.save_compact(e.net, ''), VE),
        ('a folder', lambda e: ps.save_compact(e.net, e.f('folder')), VE),
        ('missing folder', lambda e: ps.save_compact(e.net, e.missing_dir), VE),
        ("masks='no'", lambda e: ps.save_compact(e.net, e.f('n.compact'), masks='no'), TE),
        ('masks=None', lambda e: ps.save_compact(e.net, e.f('n.compact'), masks=None), TE),
        ('masks=0', lambda e: ps.save_compact(e.net, e.f('n.compact'), masks=0), TE),
        ('not initialised', _uninitialised, ps.ParameterStateError),
    ],
    'load_compact': [
        ('net is a dict',
         lambda e: ps.load_compact(dict(e.net.collect_params()), e.compact), TE),
        ('net is None', lambda e: ps.load_compact(None, e.compact), TE),
        ('an int path (file descriptor)', lambda e: ps.load_compact(e.net, e.fd), TE),
        ('None path', lambda e: ps.load_compact(e.net, None), TE),
        ('empty path', lambda e: ps.load_compact(e.net, ''), VE),
        ('missing file', lambda e: ps.load_compact(e.net, e.f('nope.compact')), VE),
        ('a folder', lambda e: ps.load_compact(e.net, e.f('folder')), VE),
        ('empty file', lambda e: ps.load_compact(e.net, e.f('empty.compact')), FE),
        ('truncated file', lambda e: ps.load_compact(e.net, e.f('truncated.compact')), FE),
        ('flipped byte', lambda e: ps.load_compact(e.net, e.f('flipped.compact')), FE),
        ('text file', lambda e: ps.load_compact(e.net, e.f('text.compact')), FE),
        ('a parameter file', lambda e: ps.load_compact(e.net, e.params_file), FE),
        ('a mask file', lambda e: ps.load_compact(e.net, e.masks), FE),
        ('another architecture', lambda e: ps.load_compact(e.half, e.compact), VE),
        ('other shapes', lambda e: ps.load_compact(e.net, e.f('wider.compact')), VE),
    ],
    'register_shrink_rule': [
        ('a block instance', lambda e: ps.register_shrink_rule(e.net, print), TE),
        ('not a Block class', lambda e: ps.register_shrink_rule(dict, print), TE),
        ('rule a str', lambda e: ps.register_shrink_rule(nn.Dense, 'rule'), TE),
    ],
    'check_trainer': [
        ('a str', lambda e: ps.check_trainer('sgd'), TE),
        ('a net', lambda e: ps.check_trainer(e.net), TE),
    ],
    'init_kvstore': [
        ('None', lambda e: ps.init_kvstore(None), TE),
    ],
    'capture': [
        ('a key that selects nothing', lambda e: ps.capture(e.net, 'nothing'), SE),
        ('net an int', lambda e: ps.capture(3), TE),
    ],
    'Capture': [
        ('values a list', lambda e: ps.Capture([1, 2]), TE),
        ('save to an int path', lambda e: ps.capture(e.net).save(e.fd), TE),
        ('save to a missing folder', lambda e: ps.capture(e.net).save(e.missing_dir), VE),
        ('load an empty file', lambda e: ps.Capture.load(e.f('empty.json')), FE),
        ('load a damaged file', lambda e: ps.Capture.load(e.f('bad.json')), FE),
        ('shrink with a dict', lambda e: ps.capture(e.net).shrink({}), TE),
        ('shrink with a plan without slices', lambda e: ps.capture(e.net).shrink(
            ps.ShrinkPlan({}, {})), VE),
    ],
    'rewind': [
        ('capture a dict', lambda e: ps.rewind(e.net, {'net_dense0_weight': 1.0}), TE),
        ('trainer a str', lambda e: ps.rewind(e.net, ps.capture(e.net), trainer='sgd'), TE),
        ('another shape', lambda e: ps.rewind(e.net, ps.Capture(
            {'net_dense0_weight': np.zeros((9, 9), 'float32')})), VE),
        ('a name the net has not', lambda e: ps.rewind(e.net, ps.Capture(
            {'other_weight': np.zeros(3, 'float32')})), SE),
        ('a key not captured', lambda e: ps.rewind(e.net, ps.capture(
            e.net, 'net_dense0_weight'), key='net_dense0_bias'), SE),
    ],
    'DynamicSparsity': [
        ('net an int', lambda e: ps.DynamicSparsity(3, e.trainer, '.*weight', 0.5), TE),
        ('trainer a str', lambda e: ps.DynamicSparsity(e.net, 'sgd', '.*weight', 0.5), TE),
        ('sparsity NaN', lambda e: ps.DynamicSparsity(e.net, e.trainer, '.*weight', NAN), VE),
        ('sparsity 1', lambda e: ps.DynamicSparsity(e.net, e.trainer, '.*weight', 1), VE),
        ('sparsity True', lambda e: ps.DynamicSparsity(e.net, e.trainer, '.*weight', True), VE),
        ("method='snip'", lambda e: ps.DynamicSparsity(e.net, e.trainer, '.*weight', 0.5,
                                                       method='snip'), VE),
        ('update_every 0', lambda e: ps.DynamicSparsity(e.net, e.trainer, '.*weight', 0.5,
                                                        update_every=0), VE),
        ('drop_fraction NaN', lambda e: ps.DynamicSparsity(e.net, e.trainer, '.*weight', 0.5,
                                                           drop_fraction=NAN), VE),
        ('end 1.5', lambda e: ps.DynamicSparsity(e.net, e.trainer, '.*weight', 0.5,
                                                 end=1.5), VE),
        ("decay='linear'", lambda e: ps.DynamicSparsity(e.net, e.trainer, '.*weight', 0.5,
                                                        decay='linear'), VE),
        ("distribution='x'", lambda e: ps.DynamicSparsity(e.net, e.trainer, '.*weight', 0.5,
                                                          distribution='x'), VE),
        ('seed -1', lambda e: ps.DynamicSparsity(e.net, e.trainer, '.*weight', 0.5,
                                                 seed=-1), VE),
        ('a key that selects nothing', lambda e: ps.DynamicSparsity(e.net, e.trainer,
                                                                    'nothing', 0.5), SE),
        ('a Trainer of other parameters', lambda e: ps.DynamicSparsity(
            e.net, gluon.Trainer(_net('o_').collect_params(), 'sgd'), '.*weight', 0.5), SE),
        ('step -1', lambda e: _dynamic().step(-1), VE),
        ('step 2.0', lambda e: _dynamic().step(2.0), VE),
        ('fraction(-1)', lambda e: _dynamic().fraction(-1), VE),
        ("fraction('1')", lambda e: _dynamic().fraction('1'), VE),
        ('is_update_step(-1)', lambda e: _dynamic().is_update_step(-1), VE),
        ('is_update_step(NaN)', lambda e: _dynamic().is_update_step(NAN), VE),
        ('load_state_dict a list', lambda e: _dynamic().load_state_dict([]), TE),
        ('load_state_dict of other settings', lambda e: _dynamic().load_state_dict(
            dict(_dynamic().state_dict(), method='set')), VE),
    ],
    'measure_latency': [
        ('a plain Block', lambda e: ps.measure_latency(nn.Block(), inputs=(1, 3)), TE),
        ("runtime='x'", lambda e: ps.measure_latency(e.net, inputs=(1, 3), runtime='x'), VE),
        ('repeats 0', lambda e: ps.measure_latency(e.net, inputs=(1, 3), repeats=0), VE),
        ('repeats 2.5', lambda e: ps.measure_latency(e.net, inputs=(1, 3), repeats=2.5), TE),
        ('warmup -1', lambda e: ps.measure_latency(e.net, inputs=(1, 3), warmup=-1), VE),
        ('threads True', lambda e: ps.measure_latency(e.net, inputs=(1, 3), threads=True), TE),
        ('threads 0', lambda e: ps.measure_latency(e.net, inputs=(1, 3), threads=0), VE),
        ('shape does not run', lambda e: ps.measure_latency(e.net, inputs=(1, 5)), VE),
    ],
    'compare_latency': [
        ('a net, not a list', lambda e: ps.compare_latency(e.net, inputs=(1, 3)), TE),
        ('an empty list', lambda e: ps.compare_latency([], inputs=(1, 3)), TE),
        ('a plain Block in the list',
         lambda e: ps.compare_latency([e.net, nn.Block()], inputs=(1, 3)), TE),
        ("runtime='x'", lambda e: ps.compare_latency([e.net], inputs=(1, 3), runtime='x'), VE),
        ('repeats 0', lambda e: ps.compare_latency([e.net], inputs=(1, 3), repeats=0), VE),
        ('warmup -1', lambda e: ps.compare_latency([e.net], inputs=(1, 3), warmup=-1), VE),
        ('threads 0', lambda e: ps.compare_latency([e.net], inputs=(1, 3), threads=0), VE),
        ('shape does not run', lambda e: ps.compare_latency([e.net], inputs=(1, 5)), VE),
    ],
    'latency_model': [
        ('a plain Block', lambda e: ps.latency_model(nn.Block(), inputs=(1, 3)), TE),
        ("runtime='x'", lambda e: ps.latency_model(e.net, inputs=(1, 3), runtime='x'), VE),
        ('repeats 0', lambda e: ps.latency_model(e.net, inputs=(1, 3), repeats=0), VE),
        ('threads 0', lambda e: ps.latency_model(e.net, inputs=(1, 3), threads=0), VE),
        ("counts 'abc'", lambda e: ps.latency_model(e.net, inputs=(1, 3), counts='abc'), TE),
        ('counts of an unknown group',
         lambda e: ps.latency_model(e.net, inputs=(1, 3), counts={'x': [1]}), VE),
        ('count 0', lambda e: ps.latency_model(e.net, inputs=(1, 3),
                                               counts={'net_dense0_weight': [0]}), VE),
        ('count 2.5', lambda e: ps.latency_model(e.net, inputs=(1, 3),
                                                 counts={'net_dense0_weight': [2.5]}), TE),
        ('count above the size', lambda e: ps.latency_model(
            e.net, inputs=(1, 3), counts=lambda g: [g.size + 1]), VE),
        ('no match', lambda e: ps.latency_model(e.net, inputs=(1, 3), key='nothing'), SE),
        ('shape does not run', lambda e: ps.latency_model(e.net, inputs=(1, 5)), VE),
    ],
    'LatencyModel': [
        ('predict an unknown group', lambda e: _latency_model(e).predict({'x': 1}), VE),
        ('predict 0 kept', lambda e: _latency_model(e).predict({'net_dense0_weight': 0}), VE),
        ('predict 5 of 4', lambda e: _latency_model(e).predict({'net_dense0_weight': 5}), VE),
        ('predict 1.5', lambda e: _latency_model(e).predict({'net_dense0_weight': 1.5}), TE),
        ('predict a list', lambda e: _latency_model(e).predict([1]), TE),
        ('fast_counts of an unknown group', lambda e: _latency_model(e).fast_counts('x'), VE),
        ('measure an unknown group', lambda e: _latency_model(e).measure({'x': 1}), VE),
        ('measure 0 kept', lambda e: _latency_model(e).measure({'net_dense0_weight': 0}), VE),
        ('measure 1.5', lambda e: _latency_model(e).measure({'net_dense0_weight': 1.5}), TE),
        ('measure a list', lambda e: _latency_model(e).measure([1]), TE),
        ('save to an int path', lambda e: _latency_model(e).save(e.fd), TE),
        ('save to a missing folder', lambda e: _latency_model(e).save(e.missing_dir), VE),
        ('load an empty file', lambda e: ps.LatencyModel.load(e.f('empty.json')), FE),
        ('load a binary file', lambda e: ps.LatencyModel.load(e.f('binary.json')), FE),
        ('load a report', lambda e: ps.LatencyModel.load(e.f('bad.json')), FE),
        ('plot to a missing folder', lambda e: _latency_model(e).plot(e.missing_dir), VE),
    ],
}

# Public names that take no arguments to get wrong, and why.
NOT_CALLABLE = dict(
    [(name, 'an exception class') for name in ps.errors.__all__] + [
        ('STALE_REASONS', 'a tuple of reason codes'),
        ('StaleRecord', 'a NamedTuple of find_stale results, built by paramsurgery'),
        ('Problem', 'a NamedTuple of check_params results, built by paramsurgery'),
        ('ChannelGraph', 'the result of trace_channels, built by paramsurgery'),
        ('ChannelGroup', 'a member of ChannelGraph.groups, built by paramsurgery'),
        ('OnnxExport', 'a NamedTuple of export_onnx results, built by paramsurgery'),
        ('Latency', 'a NamedTuple of measure_latency results, built by paramsurgery'),
    ])

CASES = [pytest.param(name, label, call, error, id='%s-%s' % (name, label))
         for name, rows in BAD.items() for label, call, error in rows]


def test_every_public_name_has_a_table_entry():
    """Grow BAD (or NOT_CALLABLE) with the API: a new public function needs its bad inputs."""
    missing = [name for name in ps.__all__ if name not in BAD and name not in NOT_CALLABLE]
    assert missing == [], 'add rows to BAD in tests/test_robustness.py for %s' % missing
    assert not set(BAD) & set(NOT_CALLABLE)
    assert set(BAD) | set(NOT_CALLABLE) <= set(ps.__all__)


@pytest.mark.parametrize('name, label, call, error', CASES)
def test_bad_argument_raises_typed_error_and_changes_nothing(env, name, label, call, error):
    before = snapshot(env)
    assert before['trainer'] and all(before['trainer'].values())   # momentum is watched
    with pytest.raises(ps.ParamSurgeryError) as info:
        call(env)
    assert isinstance(info.value, error), '%s: %r' % (label, info.value)
    message = str(info.value)
    assert message and 'Traceback' not in message and '[bt]' not in message
    after = snapshot(env)
    for part in before:
        assert before[part] == after[part], '%s changed %s' % (label, part)
    # the descriptor passed as a path is still open and its file untouched
    assert os.fstat(env.fd).st_size == len(b'precious')
    env.fd_file.seek(0)
    assert env.fd_file.read() == b'precious'


# --------------------------------------------------------------------------- specifics

def test_int_path_message_names_the_argument(env):
    with pytest.raises(ps.SurgeryTypeError, match=r"path must be a file path .*int.*descriptor"):
        ps.save_masks(env.net, env.fd)


def test_missing_folder_and_folder_name_the_argument(env):
    with pytest.raises(ps.SurgeryValueError, match="path '.*masks.npz': the folder .* does "
                                                   "not exist"):
        ps.save_masks(env.net, env.missing_dir)
    with pytest.raises(ps.SurgeryValueError, match="path '.*folder' is a folder"):
        ps.save_masks(env.net, env.f('folder'))


@pytest.mark.parametrize('name, fragment', [
    ('empty.npz', 'empty'), ('truncated.npz', 'truncated.npz'), ('flipped.npz', 'flipped'),
    ('text.npz', 'not a .npz archive'), ('other.npz', 'no metadata'),
])
def test_damaged_mask_files_name_the_file_and_the_fix(env, name, fragment):
    with pytest.raises(ps.FileFormatError) as info:
        ps.load_masks(env.net, env.f(name))
    text = str(info.value)
    assert fragment in text and env.f(name) in text and 'ps.save_masks' in text
    assert 'pickled' not in text   # numpy's misleading reason for a non-zip file
    assert isinstance(info.value, ValueError) and len(text.splitlines()) == 1


def test_every_flipped_byte_gives_the_same_masks_or_a_file_format_error(env):
    # Bytes of the zip headers that the reader does not use may flip harmlessly (the data
    # is CRC-checked); anything else must be refused, never loaded wrong or raised raw.
    good = open(env.masks, 'rb').read()
    want = ps.get_mask(env.net, W)[W].asnumpy()
    path = env.f('one-flip.npz')
    refused = 0
    for pos in range(len(good)):
        open(path, 'wb').write(_flip(good, pos))
        try:
            ps.load_masks(env.net, path)
        except ps.FileFormatError:
            refused += 1
        assert ps.get_mask(env.net, W)[W].asnumpy().tobytes() == want.tobytes(), pos
    assert refused > len(good) // 2


def test_damaged_exported_model_is_one_line_without_cpp_trace(env):
    with pytest.raises(ps.FileFormatError) as info:
        ps.load_exported(env.symbol, 'data', env.f('truncated.params'))
    text = str(info.value)
    assert len(text.splitlines()) == 1 and 'Stack trace' not in text
    assert 'truncated.params' in text and 'net.export' in text


def test_forward_override_message_says_why(env):
    with pytest.raises(ps.SurgeryTypeError, match=r"overrides forward\(\).*read the weight "
                                                  r"itself.*hybrid_forward"):
        ps.apply_mask(env.custom, 'c_custom0_weight', 0.0)
    # Gluon's own blocks are not affected (their forward hands the weight over)
    assert ps.apply_mask(env.net, 'net_dense1_weight', 1.0) == ['net_dense1_weight']


def test_fp16_overflow_names_parameter_and_limit(env):
    with pytest.raises(ps.SurgeryValueError, match=r"'half_weight' on cpu\(0\): multiplying by "
                                                   r"the multiplier would overflow .*65504"):
        ps.assign_params(env.half, 'half_weight', 4.0)
    # a product that fits is accepted, also with a factor above 1
    ps.assign_params(env.half, 'half_weight', 1.5)
    assert env.half.weight.data().asnumpy().max() == np.float16(45000.0)


def test_allow_nonfinite_true_still_accepts_overflow(env):
    ps.assign_params(env.half, 'half_weight', 4.0, allow_nonfinite=True)
    assert np.isinf(env.half.weight.data().asnumpy()).all()


def test_integer_parameter_ndarray_and_numpy_agree(env):
    for value in (np.array([3, 4, 5]), mx.nd.array([3, 4, 5], dtype='int64'),
                  mx.nd.array([3, 4, 5])):
        ps.set_params(env.ints, 'count', value)
        assert env.count.data().asnumpy().tolist() == [3, 4, 5]
    for value in (np.array([2 ** 33, 0, 0]), mx.nd.array([2 ** 33, 0, 0], dtype='int64')):
        with pytest.raises(ps.SurgeryValueError, match='truncated'):
            ps.set_params(env.ints, 'count', value)
    ps.assign_params(env.ints, 'count', 2)
    assert env.count.data().asnumpy().tolist() == [6, 8, 10]


@pytest.mark.parametrize('schedule, fragment', [
    (lambda step: (True, NAN), 'sparsity nan'),
    (lambda step: None, 'returned None'),
    (lambda step: (True, 1.5), 'sparsity 1.5'),
    (lambda step: (1, 0.5), 'prune_now'),
])
def test_pruner_names_the_schedule_and_the_step(env, schedule, fragment):
    pruner = _pruner_with(env, schedule)
    with pytest.raises(ps.ParamSurgeryError) as info:
        pruner.step(7)
    assert fragment in str(info.value) and 'at step 7' in str(info.value)
    assert pruner.last_step is None and pruner.pruned_steps == []


def test_pruner_state_round_trip_still_loads(env):
    env.pruner.step(0)
    state = env.pruner.state_dict()
    other = ps.Pruner(env.net, 'net_dense1_weight', ps.ConstantSparsity(0.5, frequency=1))
    other.load_state_dict(state)
    assert other.state_dict() == state


def test_broadcast_masks_inside_record_after_a_forward(env):
    ps.set_params(env.net, W + '_mask', 1.0)
    mask = env.net.collect_params()[W + '_mask']
    mask.list_data()[1][:] = 0  # replicas that drifted apart
    with autograd.record():
        out = env.net(mx.nd.ones((2, 3), ctx=CTXS[1]))
        assert ps.broadcast_masks(None, env.net) == [W]
    out.backward()
    assert all(m.asnumpy().tolist() == mask.list_data()[0].asnumpy().tolist()
               for m in mask.list_data())


def test_save_masks_replaces_atomically_and_cleans_stale_temps(env):
    folder = os.path.dirname(env.masks)
    dead = os.path.join(folder, '.masks.npz.999999999.abc.paramsurgery-tmp')
    live = os.path.join(folder, '.masks.npz.%d.xyz.paramsurgery-tmp' % os.getppid())
    other = os.path.join(folder, '.model.npz.999999999.abc.paramsurgery-tmp')
    for path in (dead, live, other):
        open(path, 'wb').write(b'x' * 1000)
    mode = os.stat(env.masks).st_mode
    ps.save_masks(env.net, env.masks)
    assert not os.path.exists(dead)                        # a killed writer's leftover
    assert os.path.exists(live) and os.path.exists(other)  # a live writer's, another target's
    assert os.stat(env.masks).st_mode == mode
    fresh = _net('fresh_')
    assert ps.load_masks(fresh, env.masks) == ['fresh_dense0_weight']


def test_stale_report_of_a_two_context_unused_head_reads_in_a_few_lines():
    class TwoHead(gluon.HybridBlock):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            with self.name_scope():
                self.body = nn.Dense(4, in_units=3)
                self.head_a = nn.Dense(1, in_units=4)
                self.head_b = nn.Dense(10, in_units=4)

        def hybrid_forward(self, F, x):
            return self.head_a(self.body(x))

    net = TwoHead(prefix='net_')
    net.initialize(ctx=CTXS)
    trainer = gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': 0.1})
    x = mx.nd.ones((4, 3))
    with autograd.record():
        losses = [net(p).sum() for p in gluon.utils.split_and_load(x, CTXS)]
    autograd.backward(losses)
    with pytest.raises(ps.StaleGradientError) as info:
        ps.safe_step(trainer, 4)
    lines = str(info.value).splitlines()
    assert len(lines) == 3, lines          # header, one line for the head, how to skip it
    assert lines[1].startswith('- [unused] net_dense2_bias, net_dense2_weight on cpu(0), cpu(1)')
    assert str(info.value).count('got no gradient') == 1
    assert len(info.value.records) == 4   # one record per (parameter, context) still
    records = ps.find_stale(trainer)
    assert len({r.message for r in records}) == 1
    # the one key the report offers skips the whole group
    key = "net_dense2_.*"
    assert "allow_stale=%r" % key in lines[1] and "allow_stale=%r" % key in lines[2]
    before = [p.data(CTXS[0]).asnumpy().copy() for p in net.head_b.collect_params().values()]
    skipped = ps.safe_step(trainer, 4, allow_stale=key)
    assert sorted({r.name for r in skipped}) == ['net_dense2_bias', 'net_dense2_weight']
    after = [p.data(CTXS[0]).asnumpy() for p in net.head_b.collect_params().values()]
    assert all((a == b).all() for a, b in zip(before, after))
    try:
        with autograd.record():
            losses = [net(p).sum() for p in gluon.utils.split_and_load(x, CTXS)]
        autograd.backward(losses)
        trainer.step(4)
    except UserWarning as err:
        explained = ps.explain(err)
    assert len(str(explained).splitlines()) <= 4
    assert str(explained).count('got no gradient') == 1


def test_flags_reject_truthy_strings_before_anything_changes(env):
    before = snapshot(env)
    for call in (lambda: ps.remove_mask(env.net, W, bake='no'),
                 lambda: ps.set_params(env.net, W, NAN, allow_nonfinite='no'),
                 lambda: ps.complementary_split(10, 5, reshuffle='no')):
        with pytest.raises(ps.ParamSurgeryError, match='must be True or False'):
            call()
    assert snapshot(env) == before
    assert math.isnan(NAN)


def test_shared_parameter_outside_net_is_documented_behaviour():
    """docs/masks.md: a block outside ``net`` sharing the weight computes unmasked; a
    container of both networks masks it everywhere."""
    a = nn.Dense(2, in_units=2, use_bias=False, prefix='a_')
    b = nn.Dense(2, in_units=2, use_bias=False, prefix='a_', params=a.collect_params())
    a.initialize(mx.init.One())
    x = mx.nd.ones((1, 2))
    ps.apply_mask(a, 'a_weight', np.eye(2, dtype='float32'))
    assert a(x).asnumpy().tolist() == [[1.0, 1.0]] and b(x).asnumpy().tolist() == [[2.0, 2.0]]
    ps.remove_mask(a, 'a_weight', bake=False)
    both = nn.HybridSequential(prefix='both_')
    both.add(a, b)
    ps.apply_mask(both, 'a_weight', np.eye(2, dtype='float32'))
    assert a(x).asnumpy().tolist() == b(x).asnumpy().tolist() == [[1.0, 1.0]]


def test_package_namespace_hides_importlib():
    # The lazy loader's importlib must not appear in dir(ps) or tab completion.
    import paramsurgery as _ps
    assert 'importlib' not in dir(_ps)
