"""shrink, ShrinkPlan and apply_plan: the shrunk net computes what the masked net computed,
on one and two contexts, hybridised or not, in train and predict mode; training goes on with
the same Trainer; export, apply_plan and load_parameters round trips; bad input."""
import json
import os

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon
from mxnet.gluon import nn
from mxnet.gluon.model_zoo import vision

import paramsurgery as ps
from paramsurgery import _mx
from paramsurgery.channels.check import RTOL

from channel_nets import USER_NETS, HardCoded, batch, build
from helpers import ONE, TWO, assert_same_bits, snapshot, split

# Tolerances, relative to max |reference output|, each derived from what its comparison checks.
#
# FLOAT64: does shrink slice right? The masked and the shrunk net run in float64
# (net.cast('float64'); oneDNN has no float64 kernels, so its per-CPU kernel choice plays no
# part). They add the same non-zero products in another order, so they differ by rounding
# only: eps64 (1.1e-16) times the net's error growth, which train-mode BatchNorm drives (it
# divides by the standard deviation of 2 samples per context). The worst measured over every
# net in this file is 6.6e-14 (resnet50_v1, train mode; docs/shrink.md), a growth of ~600
# eps; 1e-9 leaves 10^4 for other CPUs' float64 BLAS. A wrong slice (another channel's
# weights, statistics or optimizer moments) moves outputs by 1e-3 relative and more.
FLOAT64 = 1e-9
# FLOAT32: the same float32 weights run twice (export + SymbolBlock, apply_plan +
# load_parameters, a net restored bit for bit): only oneDNN's kernel choice for the rebuilt
# graph can differ, a predict-mode float32 rounding difference. Measured against float64 it
# is at most 1.2e-6 relative per net (two nets: 2.4e-6) over the zoo nets; shrink's own check
# bound (1e-4) holds that with a 40x margin, and nothing here may be looser than that check.
FLOAT32 = RTOL
# FUSED32: does shrink slice right, on a net MXNet runs in float32 only (its fused attention
# operators, interleaved_matmul_selfatt_*, refuse float64 on CPU)? The masked and the shrunk
# net add the same non-zero products in another order: rounding only, eps32 (6e-8) times the
# net's error growth. LayerNorm nets grow less than FLOAT64's worst (~600 eps, train-mode
# BatchNorm): 600 * 6e-8 = 3.6e-5 bounds it, and shrink's own check bound (RTOL, 1e-4) is
# above that; a wrong slice (another head's rows, a head count that did not follow) moves
# outputs by 1e-2 relative and more.
FUSED32 = RTOL


def in_float64(net, *arrays):
    """Cast ``net`` to float64 (see FLOAT64); return ``arrays`` cast likewise."""
    net.cast('float64')
    out = tuple(a.astype('float64') for a in arrays)
    return out[0] if len(out) == 1 else out


def outputs(net, x, ctxs, train=False):
    """The net's output on every context (the same batch on each)."""
    out = []
    for ctx in ctxs:
        if train:
            with autograd.record():
                y = net(x.as_in_context(ctx))
        else:
            with autograd.predict_mode():
                y = net(x.as_in_context(ctx))
        out.append(y.asnumpy())
    return out


def assert_close(ref, got, rtol):
    assert len(ref) == len(got)
    for a, b in zip(ref, got):
        assert a.shape == b.shape and a.dtype == b.dtype
        assert np.abs(a - b).max() <= rtol * np.abs(a).max(), np.abs(a - b).max()


def warm_up(net, x, ctxs):
    """One train-mode forward, so BatchNorm running statistics are not trivial."""
    with autograd.record():
        for part in split(x, ctxs):
            net(part)


def masked_vs_shrunk(net, x, ctxs, amount=0.5, **kwargs):
    """Prune, record the masked outputs, shrink; return the plan and both sets of outputs."""
    warm_up(net, x, ctxs)
    ps.prune_channels(net, amount, inputs=x, **kwargs)
    ref_train = outputs(net, x, ctxs, train=True)   # (updates the running statistics)
    ref = outputs(net, x, ctxs)
    plan = ps.shrink(net, inputs=x)
    return plan, (ref, outputs(net, x, ctxs)), (ref_train, outputs(net, x, ctxs, train=True))


# --------------------------------------------------------------------------- user blocks

@pytest.mark.parametrize('kind', sorted(USER_NETS))
def test_user_nets_shrunk_equals_masked(kind, ctxs, hybridize):
    net = build(kind, ctxs)
    if hybridize:
        net.hybridize()
    x = in_float64(net, batch())
    names = {n: p for n, p in net.collect_params().items()}
    macs, params = ps.count_ops(net, x)
    plan, (ref, got), (ref_train, got_train) = masked_vs_shrunk(net, x, ctxs)
    assert ref[0].dtype == np.float64
    assert_close(ref, got, FLOAT64)
    assert_close(ref_train, got_train, FLOAT64)
    # the same Parameter objects, smaller, healthy on every context; masks kept, sliced
    assert all(net.collect_params()[n] is p for n, p in names.items())
    assert ps.check_params(net) == []
    assert ps.masked(net)
    for name in ps.masked(net):
        p = net.collect_params()[name]
        assert net.collect_params()[name + '_mask'].shape == p.shape
    new_macs, new_params = ps.count_ops(net, x)
    assert new_macs < macs and new_params < params
    assert all(len(v) < len(set(v)) + 1 for v in plan.kept.values())
    for sname, shape in plan.shapes.items():
        assert tuple(_mx.structural_names(net)[sname].shape) == shape


def test_blocks_keep_their_classes_with_counts_updated():
    net = build('depthwise', ONE)
    x = batch()
    ps.prune_channels(net, 3, inputs=x, key='depthwise_conv0_weight')
    ps.prune_channels(net, 2, inputs=x, key='depthwise_conv2_weight')
    plan = ps.shrink(net, inputs=x)
    conv, bn = net.a[0], net.a[1]
    assert type(conv) is nn.Conv2D and conv._channels == 5 and conv._kwargs['num_filter'] == 5
    assert bn.in_channels == 5 and bn.running_mean.shape == (5,)
    assert net.dw._kwargs['num_group'] == 5 and net.dw.weight.shape == (5, 1, 3, 3)
    assert net.dw._in_channels == 5
    assert net.pw[0]._in_channels == 5 and net.pw[0]._channels == 4
    assert net.out._in_units == 4
    assert 'groups=5' in repr(net.dw)     # (Gluon prints weight.shape[1] as the input)
    assert plan.kept['depthwise_conv0_weight'] == sorted(plan.kept['depthwise_conv0_weight'])
    assert len(plan.kept['depthwise_conv0_weight']) == 5


def test_flatten_dense_columns_removed_per_channel():
    net = build('flatten_dense', ONE)
    x = batch()
    ps.prune_channels(net, 2, inputs=x, key='flatten_dense_conv0_weight')
    ps.shrink(net, inputs=x)
    assert net.fc1.weight.shape == (10, 4 * 16) and net.fc1._in_units == 64
    assert net.conv._channels == 4


def test_nothing_masked_changes_nothing():
    net = build('chain', TWO)
    before = snapshot(net)
    plan = ps.shrink(net, inputs=batch())
    assert_same_bits(before, snapshot(net))
    assert plan.kept['chain_conv0_weight'] == list(range(8))


def test_fully_masked_group_keeps_one_channel():
    net = build('chain', ONE)
    x = in_float64(net, batch())
    graph = ps.trace_channels(net, x)
    masks = {}
    for name, axis, off, st in graph['chain_conv1_weight'].maskable:
        masks[name] = 0
    ps.apply_mask(net, masks)
    ref = outputs(net, x, ONE)
    ps.shrink(net, inputs=x)
    assert net.body[1]._channels == 1
    assert_close(ref, outputs(net, x, ONE), FLOAT64)


# --------------------------------------------------------------------------- trainer

def step(net, trainer, x, ctxs):
    with autograd.record():
        # (a tuple of outputs: gluoncv's segmentation nets add an auxiliary head)
        losses = [sum((y ** 2).mean() for y in (out if isinstance(out, tuple) else (out,)))
                  for out in (net(part) for part in split(x, ctxs))]
    autograd.backward(losses)
    trainer.step(x.shape[0])


SETUPS = [
    pytest.param(None, None, ONE, id='1ctx-nokv'),
    pytest.param('device', True, TWO, id='2ctx-device-uok'),
    pytest.param('device', False, TWO, id='2ctx-device-nouok'),
]


@pytest.mark.parametrize('optimizer, opt_args', [
    ('sgd', {'learning_rate': 0.1, 'momentum': 0.9, 'wd': 0}),
    ('adam', {'learning_rate': 0.01, 'wd': 0}),
])
@pytest.mark.parametrize('kvstore, update_on_kvstore, ctxs', SETUPS)
def test_training_continues_step_for_step(optimizer, opt_args, kvstore, update_on_kvstore,
                                          ctxs):
    nets, trainers = [], []
    for _ in range(2):
        net = build('residual', ctxs, seed=5)
        x = in_float64(net, batch(n=4))
        ps.prune_channels(net, 0.5, inputs=x)
        kwargs = {} if kvstore is None else {'kvstore': kvstore,
                                              'update_on_kvstore': update_on_kvstore}
        trainer = gluon.Trainer(net.collect_params(), optimizer, dict(opt_args), **kwargs)
        step(net, trainer, x, ctxs)
        step(net, trainer, x, ctxs)
        nets.append(net)
        trainers.append(trainer)
    masked, shrunk = nets
    ps.shrink(shrunk, inputs=x, trainer=trainers[1])
    assert_close(outputs(masked, x, ctxs), outputs(shrunk, x, ctxs), FLOAT64)
    for i in range(3):
        step(masked, trainers[0], x + i, ctxs)
        step(shrunk, trainers[1], x + i, ctxs)
        assert_close(outputs(masked, x, ctxs), outputs(shrunk, x, ctxs), FLOAT64)
    assert ps.check_params(shrunk) == []


def trainer_state(trainer):
    """Every optimizer state of every Updater in this process, and the counters, as bytes."""
    out = {'counters': repr(_mx.optimizer_counters(trainer.optimizer)),
           'kvstore': trainer._kv_initialized}
    for i, updater in enumerate(_mx.process_updaters(trainer)):
        for key, state in sorted(updater.states.items()):
            arrays = state if isinstance(state, (tuple, list)) else [state]
            out['%d/%d' % (i, key)] = [(a.shape, a.asnumpy().tobytes()) for a in arrays
                                       if a is not None]
    return out


@pytest.mark.parametrize('kvstore, update_on_kvstore, ctxs', SETUPS)
def test_a_failing_trainer_update_leaves_net_and_trainer_as_before(
        monkeypatch, kvstore, update_on_kvstore, ctxs, hybridize):
    # Before, shrink updated the Trainers after committing the net, outside its error
    # handling: a failure there left a shrunk net with half-updated Trainers. Here the
    # failure comes after the optimizer states were sliced. The twin runs the very same
    # operations on the same values afterwards, so the comparison is bit for bit.
    x = batch(n=4)
    nets, trainers = [], []
    for _ in range(2):
        net = build('residual', ctxs, seed=5)
        if hybridize:
            net.hybridize()
        ps.prune_channels(net, 0.5, inputs=x)
        kwargs = {} if kvstore is None else {'kvstore': kvstore,
                                              'update_on_kvstore': update_on_kvstore}
        trainer = gluon.Trainer(net.collect_params(), 'sgd',
                                {'learning_rate': 0.1, 'momentum': 0.9}, **kwargs)
        step(net, trainer, x, ctxs)
        nets.append(net)
        trainers.append(trainer)
    net, trainer = nets[0], trainers[0]
    before, states = snapshot(net), trainer_state(trainer)
    shapes = {n: p.shape for n, p in net.collect_params().items()}
    kv_before = trainer._kvstore

    def fail(trainer):
        raise RuntimeError('kvstore re-initialisation failed')

    monkeypatch.setattr(_mx, 'reinit_trainer_kvstore', fail)
    with pytest.raises(RuntimeError, match='re-initialisation failed'):
        ps.shrink(net, inputs=x, trainer=trainer)
    monkeypatch.undo()
    assert {n: p.shape for n, p in net.collect_params().items()} == shapes
    assert_same_bits(before, snapshot(net))
    assert trainer_state(trainer) == states and trainer._kvstore is kv_before
    assert net.stem[0]._channels == 8
    for net, trainer in zip(nets, trainers):
        step(net, trainer, x, ctxs)
        step(net, trainer, x + 1, ctxs)
    assert_same_bits(snapshot(nets[1]), snapshot(nets[0]))
    assert trainer_state(trainers[0]) == trainer_state(trainers[1])
    ps.shrink(nets[0], inputs=x, trainer=trainers[0])    # and it still shrinks


def test_optimizer_states_and_fp32_master_copies_are_sliced():
    from paramsurgery.channels.shrink import slice_state
    weight = np.arange(24, dtype=np.float32).reshape(4, 6)
    keeps = {0: np.array([True, False, True, True]), 1: np.array([True] * 5 + [False])}
    state = (mx.nd.array(weight), mx.nd.array(weight, dtype='float32'), None,
             mx.nd.ones((1,)))
    out = slice_state(state, (4, 6), keeps, {})
    assert out[0].shape == (3, 5) and out[1].dtype == np.float32
    assert out[1].asnumpy().tolist() == weight[[0, 2, 3]][:, :5].tolist()
    assert out[2] is None and out[3] is state[3]


# --------------------------------------------------------------------------- round trips

def test_export_and_symbolblock_imports(tmp_path, ctxs):
    net = build('se', ctxs)
    net.hybridize()
    x = batch()
    masked_vs_shrunk(net, x, ctxs)
    ref = outputs(net, x, ctxs)
    prefix = str(tmp_path / 'se')
    net.export(prefix)
    loaded = ps.load_exported(prefix + '-symbol.json', 'data', prefix + '-0000.params',
                              ctx=ctxs)
    assert_close(ref, outputs(loaded, x, ctxs), FLOAT32)
    assert ps.count_ops(loaded, x) == ps.count_ops(net, x)


@pytest.mark.parametrize('initialise', [False, True], ids=['fresh', 'initialised'])
def test_apply_plan_and_load_parameters(tmp_path, initialise):
    x = batch()
    net = build('concat', ONE)
    masked_vs_shrunk(net, x, ONE)
    ref = outputs(net, x, ONE)
    plan_path = str(tmp_path / 'plan.json')
    ps.shrink(net, inputs=x).save(plan_path)
    ps.save_masks(net, str(tmp_path / 'masks.npz'))
    ps.remove_mask(net, ps.masked(net), bake=False)
    net.save_parameters(str(tmp_path / 'net.params'))
    fresh = USER_NETS['concat'](prefix='other_')
    if initialise:
        fresh.initialize()
        fresh(x)
    changed = ps.apply_plan(fresh, plan_path)
    assert 'a.0.weight' in changed
    fresh.load_parameters(str(tmp_path / 'net.params'))
    ps.load_masks(fresh, str(tmp_path / 'masks.npz'))
    assert_close(ref, outputs(fresh, x, ONE), FLOAT32)
    fresh.hybridize()
    assert_close(ref, outputs(fresh, x, ONE), FLOAT32)


_PLAN_ON_BLOCKED_WEIGHTS = """
import sys
import mxnet as mx, numpy as np
import paramsurgery as ps
from mxnet.gluon import nn
ctxs = [mx.cpu(i) for i in range(int(sys.argv[1]))]
hybrid, folder = sys.argv[2] == '1', sys.argv[3]
x = mx.nd.array(np.random.RandomState(0).uniform(-1, 1, size=(2, 3, 12, 12)))

def build():
    net = nn.HybridSequential()
    with net.name_scope():
        net.add(nn.Conv2D(8, 3), nn.BatchNorm(), nn.Activation('relu'), nn.Conv2D(8, 3),
                nn.GlobalAvgPool2D(), nn.Dense(2))
    return net

net = build()
net.initialize(mx.init.Xavier(), ctx=ctxs)
ps.prune_channels(net, 0.5, inputs=x)
plan = ps.shrink(net, inputs=x)
ps.remove_mask(net, ps.masked(net))
net.save_parameters(folder + '/net.params')
if hybrid:
    net.hybridize()      # the reference runs the same graph and kernels as the rebuilt net
fresh = build()
fresh.initialize(ctx=ctxs)
if hybrid:
    fresh.hybridize()
with mx.autograd.predict_mode():
    fresh(x)             # the convolutions reorder their weights into oneDNN's layout
ps.apply_plan(fresh, plan)
fresh.load_parameters(folder + '/net.params', ctx=ctxs)
np.save(folder + '/ref.npy', net(x).asnumpy())
np.save(folder + '/out.npy', np.stack([fresh(x.as_in_context(c)).asnumpy() for c in ctxs]))
"""


def test_apply_plan_on_a_net_with_onednn_weights_does_not_kill_the_process(tmp_path, ctxs,
                                                                          hybridize):
    # in a subprocess: the failure this guards against is a SIGFPE, not an exception
    import subprocess
    import sys
    script = tmp_path / 'plan.py'
    script.write_text(_PLAN_ON_BLOCKED_WEIGHTS)
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(ps.__file__)))
    proc = subprocess.run([sys.executable, str(script), str(len(ctxs)), str(int(hybridize)),
                           str(tmp_path)], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    ref, out = np.load(tmp_path / 'ref.npy'), np.load(tmp_path / 'out.npy')
    for got in out:     # the same weights through the same graph and kernels: bit for bit
        assert got.tobytes() == ref.tobytes()


def test_plan_file_is_json_written_atomically(tmp_path):
    net = build('chain', ONE)
    ps.prune_channels(net, 0.5, inputs=batch())
    plan = ps.shrink(net, inputs=batch())
    path = tmp_path / 'plan.json'
    plan.save(str(path))
    data = json.loads(path.read_text())
    assert data['format'] == 'paramsurgery-shrink-plan' and data['shapes']['body.0.0.weight'] \
        == [4, 3, 3, 3]
    assert os.listdir(tmp_path) == ['plan.json']      # no temporary file left behind
    assert ps.ShrinkPlan.load(str(path)) == plan


# --------------------------------------------------------------------------- bad input

def test_hard_coded_channel_count_raises_and_changes_nothing(ctxs, hybridize):
    net = HardCoded(prefix='hardcoded_')
    net.initialize(mx.init.Xavier(), ctx=ctxs)
    if hybridize:
        net.hybridize()
    x = batch()
    trainer = gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': 0.1,
                                                         'momentum': 0.9})
    step(net, trainer, x, ctxs)
    ps.prune_channels(net, 0.5, inputs=x)
    step(net, trainer, x, ctxs)
    before = snapshot(net)
    ref = outputs(net, x, ctxs)
    kwargs = dict(net.bn._kwargs)
    with pytest.raises(ps.ShrinkError, match=r"layer 'hardcoded' \(HardCoded, operator node "
                                             r"'hardcoded_conv'\).*Nothing was changed") as info:
        ps.shrink(net, inputs=x, trainer=trainer)
    # the fix for a net that fails to run, not for one that computes otherwise
    assert 'Make the layer take its channel counts from its attributes' in str(info.value)
    assert_same_bits(before, snapshot(net))
    assert net.weight.shape == (8, 3, 3, 3) and net.bn.in_channels == 8
    assert net.bn._kwargs == kwargs and net.out._in_units == 8
    assert ps.check_params(net) == []
    assert_close(ref, outputs(net, x, ctxs), FLOAT32)
    step(net, trainer, x, ctxs)             # the Trainer still works


def test_output_that_differs_names_the_first_layer_and_restores(monkeypatch, ctxs):
    import sys
    shrink_module = sys.modules['paramsurgery.channels.shrink']   # (ps.shrink is the function)
    net = build('chain', ctxs)
    x = batch()
    ps.prune_channels(net, 0.5, inputs=x)
    before = snapshot(net)
    ref = outputs(net, x, ctxs)
    take = shrink_module._take

    def corrupt(arr, keeps, cache):  # a wrong slice of the second convolution's weight
        out = take(arr, keeps, cache)
        return out * 2 if arr.shape == (6, 8, 3, 3) else out

    monkeypatch.setattr(shrink_module, '_take', corrupt)
    with pytest.raises(ps.ShrinkError, match=r"computes something else .* the first layer "
                                             r"that differs is layer 'chain_conv1'") as info:
        ps.shrink(net, inputs=x)
    assert "does not see; leave its channels unmasked" in str(info.value)   # that kind's fix
    assert_same_bits(before, snapshot(net))
    assert net.body[1]._channels == 6
    assert_close(ref, outputs(net, x, ctxs), FLOAT32)


def test_bad_arguments():
    class Plain(gluon.Block):
        def forward(self, x):
            return x

    with pytest.raises(ps.SurgeryTypeError, match='HybridBlock'):
        ps.shrink(Plain(), inputs=(1, 3))
    net = build('chain', ONE)
    ps.prune_channels(net, 0.5, inputs=batch())
    before = snapshot(net)
    with pytest.raises(ps.SurgeryValueError, match='does not run'):
        ps.shrink(net, inputs=(1, 4, 8, 8))
    with pytest.raises(ps.SurgeryTypeError, match='Trainer'):
        ps.shrink(net, inputs=batch(), trainer='sgd')
    with pytest.raises(ps.SurgeryTypeError):
        ps.shrink(net, inputs=None)
    with pytest.raises(ps.SurgeryValueError, match='NaN'):
        ps.shrink(net, inputs=batch() * float('nan'))
    assert_same_bits(before, snapshot(net))
    with pytest.raises(ps.SurgeryTypeError, match='list of ints'):
        ps.ShrinkPlan({'g': [0, 'x']}, {})
    with pytest.raises(ps.SurgeryValueError, match='below 1'):
        ps.ShrinkPlan({}, {'0.weight': (0, 3)})


def test_plan_for_another_architecture(tmp_path):
    net = build('chain', ONE)
    ps.prune_channels(net, 0.5, inputs=batch())
    plan = ps.shrink(net, inputs=batch())
    for other, text in [(build('residual', ONE), "parameter 'body.0.0.weight'"),
                        (build('depthwise', ONE), "parameter 'body.0.0.weight'")]:
        before = snapshot(other)
        with pytest.raises(ps.ShrinkError, match=text + '.*another architecture'):
            ps.apply_plan(other, plan)
        assert_same_bits(before, snapshot(other))
    # same names, a smaller layer than the plan asks for
    small = USER_NETS['chain'](prefix='small_')
    small.initialize()
    small(batch())
    bigger = ps.ShrinkPlan(plan.kept, dict(plan.shapes, **{'body.0.0.weight': (9, 3, 3, 3)}))
    with pytest.raises(ps.ShrinkError, match=r"'body.0.0.weight' .* shape \(8, 3, 3, 3\)"):
        ps.apply_plan(small, bigger)
    with pytest.raises(ps.FileFormatError, match='not a readable shrink plan'):
        (tmp_path / 'x.json').write_text('{}')
        ps.apply_plan(small, str(tmp_path / 'x.json'))
    with pytest.raises(ps.SurgeryTypeError):
        ps.apply_plan(small, {'kept': {}})


# --------------------------------------------------------------------------- model zoo

ZOO = {'resnet18_v1': 64, 'resnet50_v1': 64, 'resnet18_v2': 64, 'mobilenet1.0': 64,
       'mobilenetv2_1.0': 64, 'densenet121': 224, 'squeezenet1.1': 224, 'vgg11_bn': 32,
       'alexnet': 64, 'inceptionv3': 299}


def assert_round_trips(net, plan, model, x, tmp_path):
    """A shrunk zoo net (masks baked, float64) computes the same after export +
    load_exported and after apply_plan + load_parameters on a fresh net of its class;
    returns that net."""
    ref = outputs(net, x, ONE)
    prefix = str(tmp_path / 'zoo')
    net.export(prefix)
    loaded = ps.load_exported(prefix + '-symbol.json', 'data', prefix + '-0000.params')
    assert_close(ref, outputs(loaded, x, ONE), FLOAT64)
    plan.save(str(tmp_path / 'plan.json'))
    net.save_parameters(str(tmp_path / 'zoo.params'))
    fresh = vision.get_model(model, pretrained=False, classes=10)
    fresh.cast('float64')
    ps.apply_plan(fresh, str(tmp_path / 'plan.json'))
    fresh.load_parameters(str(tmp_path / 'zoo.params'))
    fresh.hybridize()
    assert_close(ref, outputs(fresh, x, ONE), FLOAT64)
    return fresh


def zoo_net(model, ctxs):
    """A hybridised zoo net initialised on ``ctxs``, Dropout off, its batch, and the
    prune_channels arguments the zoo tests use for it."""
    net = vision.get_model(model, pretrained=False, classes=10)
    mx.random.seed(0)
    net.initialize(mx.init.Xavier(), ctx=ctxs)
    net.hybridize()
    size = ZOO[model]
    x = mx.nd.array(np.random.RandomState(0).uniform(-1, 1, size=(4, 3, size, size)))
    net(x)
    # Dropout draws its random mask over the tensor's shape, which shrink changes: in train
    # mode the masked and the shrunk net cannot draw the same masks. Compare without it.
    for blk in _mx.walk_blocks(net):
        if isinstance(blk, nn.Dropout):
            blk._rate = 0
    kwargs = {'scope': 'global', 'importance': 'bn_gamma'} if model == 'resnet50_v1' else {}
    if model == 'resnet50_v1':
        # network slimming ranks by gamma: make them differ
        for name, p in net.collect_params('.*gamma').items():
            p.set_data(mx.nd.random.uniform(0.1, 1, shape=p.shape))
    return net, x, kwargs


@pytest.mark.zoo
@pytest.mark.parametrize('model', sorted(ZOO))
def test_model_zoo(model, tmp_path):
    """Every listed zoo net on two contexts: masked == shrunk in predict and train mode; the
    shrunk net exports (SymbolBlock) and is rebuilt from its class (apply_plan)."""
    ctxs = TWO
    net, x, kwargs = zoo_net(model, ctxs)
    before = ps.count_ops(net, x)
    x = in_float64(net, x)
    plan, (ref, got), (ref_train, got_train) = masked_vs_shrunk(net, x, ctxs, **kwargs)
    assert_close(ref, got, FLOAT64)
    assert_close(ref_train, got_train, FLOAT64)
    after = ps.count_ops(net, x)
    assert after[0] < 0.5 * before[0] and after[1] < 0.6 * before[1]
    assert ps.check_params(net) == []
    # export() and save_parameters keep one copy: make the per-context running statistics
    # equal, bake the masks, then compare the exported and the rebuilt net on one context
    for name, p in net.collect_params('.*running.*').items():
        ps.set_params(net, name, p.data(mx.cpu(0)))
    ps.remove_mask(net, ps.masked(net))
    assert_round_trips(net, plan, model, x, tmp_path)


def assert_exports_to_onnx(net, x, tmp_path):
    """The shrunk net leaves MXNet: ONNX Runtime computes what it computes (docs/deploy.md)."""
    import onnxruntime as ort
    path = ps.export_onnx(net, str(tmp_path / 'zoo.onnx'), inputs=x).path
    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    assert [i.name for i in session.get_inputs()] == ['data']  # parameters are initializers
    # ONNX Runtime has no float64 Conv: exported in float32, its kernels differ from oneDNN's
    # in the last bits as another CPU's would, so shrink's own float32 bound applies (1e-4)
    assert_close(outputs(net, x, ONE), session.run(None, {'data': x.asnumpy()}), FLOAT32)


@pytest.mark.zoo
@pytest.mark.parametrize('model', sorted(ZOO))
def test_model_zoo_float32_shrink_keeps_a_10x_margin_below_its_check(model, tmp_path):
    """shrink's own check runs in float32, in predict mode: on a correct shrink of a deep
    net the difference it sees must stay 10x below its bound, or another CPU's kernels could
    make it refuse (docs/shrink.md#the-all-or-nothing-check)."""
    net, x, kwargs = zoo_net(model, ONE)
    warm_up(net, x, ONE)
    ps.prune_channels(net, 0.5, inputs=x, **kwargs)
    ref = outputs(net, x, ONE)
    ps.shrink(net, inputs=x)
    assert ref[0].dtype == np.float32
    assert_close(ref, outputs(net, x, ONE), RTOL / 10)
    assert_exports_to_onnx(net, x[:1], tmp_path)


def test_twice_and_with_a_trainer_that_has_not_stepped(tmp_path):
    net = build('residual', TWO)
    net.hybridize()
    x = in_float64(net, batch())
    trainer = gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': 0.1,
                                                         'momentum': 0.9},
                            kvstore='device')
    for amount in (0.25, 0.5):
        ps.prune_channels(net, amount, inputs=x, importance='l1')
        ref = outputs(net, x, TWO)
        ps.shrink(net, inputs=x, trainer=trainer)
        assert_close(ref, outputs(net, x, TWO), FLOAT64)
    assert net.stem[0]._channels == 3          # 8 -> 6 -> 3
    step(net, trainer, x, TWO)
    step(net, trainer, x, TWO)
    assert ps.check_params(net) == []
    # export() saves the mean over contexts; running statistics differ per context (each
    # saw half the batch): make them equal first
    for name, p in net.collect_params('.*running.*').items():
        ps.set_params(net, name, p.data(mx.cpu(0)))
    prefix = str(tmp_path / 'twice')
    net.export(prefix)
    loaded = ps.load_exported(prefix + '-symbol.json', 'data', prefix + '-0000.params')
    assert_close(outputs(net, x, ONE), outputs(loaded, x, ONE), FLOAT64)


@pytest.mark.zoo
@pytest.mark.parametrize('optimizer', ['sgd', 'adam'])
@pytest.mark.parametrize('model', ['resnet18_v1', 'mobilenetv2_1.0'])
def test_model_zoo_round_trips_and_training(model, optimizer, tmp_path):
    """The shrunk zoo net trains on with the same Trainer like the masked one, exports, and
    is rebuilt from its class with apply_plan + load_parameters."""
    # 64x64 and 4 samples per context: at 32x32 with 2 per context the last BatchNorms
    # normalise over 2 values, which turns float rounding (the shrunk convolutions sum fewer
    # terms) into 1e-3 differences after a step, in the masked net as much as in the shrunk
    x = mx.nd.array(np.random.RandomState(1).uniform(-1, 1, size=(8, 3, 64, 64)))
    nets, trainers = [], []
    for _ in range(2):
        mx.random.seed(7)
        net = vision.get_model(model, pretrained=False, classes=10)
        net.initialize(mx.init.Xavier(), ctx=TWO)
        net.hybridize()
        net(x.as_in_context(mx.cpu(0)))
        xs = in_float64(net, x)
        ps.prune_channels(net, 0.5, inputs=xs, scope='global')
        settings = {'learning_rate': 1e-3, 'wd': 0}
        if optimizer == 'sgd':
            settings['momentum'] = 0.9
        else:
            # Where a true gradient is about 0 (a channel ReLU6 clips everywhere, a bias
            # before a BatchNorm), the masked and the shrunk net compute different rounding
            # noise (their convolutions sum different numbers of terms), and Adam turns
            # noise into full learning-rate steps (INTERNALS.md): mobilenetv2 drifts 1.7e-3
            # apart after two steps with epsilon 1e-8 or 1e-4. An epsilon above the noise
            # compares the trajectories themselves; the update still goes through both
            # sliced moments.
            settings['epsilon'] = 1e-2
        trainer = gluon.Trainer(net.collect_params(), optimizer, settings, kvstore='device')
        step(net, trainer, xs, TWO)
        nets.append(net)
        trainers.append(trainer)
    masked, shrunk = nets
    x = xs
    plan = ps.shrink(shrunk, inputs=x, trainer=trainers[1])
    for i in range(2):
        step(masked, trainers[0], x + 0.1 * i, TWO)
        step(shrunk, trainers[1], x + 0.1 * i, TWO)
        assert_close(outputs(masked, x, TWO), outputs(shrunk, x, TWO), FLOAT64)
    for name, p in shrunk.collect_params('.*running.*').items():
        ps.set_params(shrunk, name, p.data(mx.cpu(0)))
    ps.remove_mask(shrunk, ps.masked(shrunk))
    fresh = assert_round_trips(shrunk, plan, model, x, tmp_path)
    assert ps.count_ops(fresh, x) == ps.count_ops(shrunk, x)


class Mixed(gluon.HybridBlock):
    """PReLU with per-channel slopes, a per-channel scale parameter, flattened features of
    two branches concatenated into one dense layer, a reduction over the spatial axes."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.a = nn.Conv2D(6, 3, padding=1, in_channels=3)
            self.act = nn.PReLU(alpha_initializer=mx.init.Uniform(0.5), in_channels=6)
            self.scale = self.params.get('scale', shape=(1, 6, 1, 1),
                                         init=mx.init.Uniform(1))
            self.b = nn.Conv2D(4, 3, strides=2, padding=1, in_channels=6)
            self.fc = nn.Dense(5, in_units=6 * 16 + 4)
            self.out = nn.Dense(2, in_units=5)

    def hybrid_forward(self, F, x, scale):
        y = F.broadcast_mul(self.act(self.a(x)), scale)           # (N, 6, 8, 8)
        z = F.mean(self.b(y), axis=(2, 3))                         # (N, 4)
        flat = F.concat(F.flatten(F.Pooling(y, kernel=(2, 2), stride=(2, 2),
                                            pool_type='max')), z, dim=1)
        return self.out(F.relu(self.fc(flat)))


def test_prelu_scale_flattened_concat(ctxs, hybridize):
    net = Mixed(prefix='mixed_')
    mx.random.seed(2)
    net.initialize(mx.init.Xavier(), ctx=ctxs)
    if hybridize:
        net.hybridize()
    x = in_float64(net, batch())
    graph = ps.trace_channels(net, x)
    a = dict((m[0], m[1:]) for m in graph['mixed_conv0_weight'].members)
    assert a['mixed_prelu0_alpha'] == (0, 0, 1) and a['mixed_scale'] == (1, 0, 1)
    assert a['mixed_dense0_weight'] == (1, 0, 16)
    assert dict((m[0], m[1:]) for m in graph['mixed_conv1_weight'].members)[
        'mixed_dense0_weight'] == (1, 96, 1)
    plan, (ref, got), (ref_train, got_train) = masked_vs_shrunk(net, x, ctxs)
    assert_close(ref, got, FLOAT64)
    assert_close(ref_train, got_train, FLOAT64)
    assert net.scale.shape == (1, 3, 1, 1) and net.act.alpha.shape == (3,)
    assert net.fc.weight.shape == (2, 3 * 16 + 2)      # 5 units: floor(2.5 + 0.5) pruned


@pytest.mark.parametrize('ctxs', [ONE, TWO], ids=['1ctx', '2ctx'])
def test_update_mode_channel_masks_shrink_and_keep_training(ctxs):
    # prune_channels(mode='update'): the stored weights hold the zeros, the graph stays
    # dense; shrink removes the channels the same way, and the Trainer (its Updaters were
    # switched to mask the gradients) keeps training the shrunk net with the masks in force
    net = build('chain', ctxs)
    x = in_float64(net, batch())
    trainer = gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': 0.1,
                                                          'momentum': 0.9})
    ps.prune_channels(net, 0.5, inputs=x, mode='update')
    masked_out = outputs(net, x, ctxs)
    before = {n: p.shape for n, p in net.collect_params().items()}
    ps.shrink(net, inputs=x, trainer=trainer)
    assert any(p.shape != before[n] for n, p in net.collect_params().items())
    assert_close(masked_out, outputs(net, x, ctxs), FLOAT64)
    weight = net.body[1].weight               # shrunk, and still under an update-mode mask
    keep = np.ones(weight.shape, dtype='float64')
    keep[0] = 0                               # tighten it on the new shape
    ps.apply_mask(net, weight.name, keep, mode='update')
    zeros = [w.asnumpy() == 0 for w in weight.list_data()]
    for _ in range(3):
        xs = gluon.utils.split_and_load(x, ctxs)
        with autograd.record():
            losses = [net(xp).sum() for xp in xs]
        autograd.backward(losses)
        trainer.step(x.shape[0])
        for w, z in zip(weight.list_data(), zeros):
            assert not w.asnumpy()[z].any()   # every masked entry stays exactly 0
    assert not weight.data().asnumpy()[0].any()
    assert ps.check_params(net) == []


# --------------------------------------------------------------------------- coverage (issue 21)

COVERAGE = ['resnext', 'gluoncv_se', 'xception', 'hrnet', 'fcn', 'deconv']


def train_alike(masked, shrunk, trainers, x, ctxs, steps, rtol=FLOAT64):
    """Shrunk == masked (FLOAT64 unless told) in predict and train mode, before each of
    ``steps`` training steps of both nets."""
    for i in range(steps):
        assert_close(outputs(masked, x, ctxs), outputs(shrunk, x, ctxs), rtol)
        assert_close(outputs(masked, x, ctxs, train=True), outputs(shrunk, x, ctxs, train=True),
                     rtol)
        step(masked, trainers[0], x + i, ctxs)
        step(shrunk, trainers[1], x + i, ctxs)


def stepped_trainer(net, x, ctxs, optimizer, settings):
    """A Trainer on ``net`` that has stepped once on ``x`` (it holds optimizer states)."""
    trainer = gluon.Trainer(net.collect_params(), optimizer, settings)
    step(net, trainer, x, ctxs)
    return trainer


def pruned_twins(make, ctxs):
    """Two nets ``make()`` in float64, warmed up, pruned by half, each with a Trainer that
    has stepped once: ``(masked, to shrink, [their trainers], the float64 batch)``."""
    nets, trainers = [], []
    for _ in range(2):
        net = make()
        x = in_float64(net, batch(n=4))
        warm_up(net, x, ctxs)
        ps.prune_channels(net, 0.5, inputs=x)
        nets.append(net)
        trainers.append(stepped_trainer(net, x, ctxs, 'sgd', {'learning_rate': 0.05,
                                                             'momentum': 0.9, 'wd': 0}))
    return nets[0], nets[1], trainers, x


def assert_exports_and_rebuilds(shrunk, plan, fresh, x, ctxs, tmp_path):
    """The shrunk net computes the same after export + load_exported (masks in the graph)
    and on ``fresh`` (a new net of its class) after apply_plan + load_parameters (masks
    baked). Files hold the mean over contexts of the running statistics, so every context
    gets that first."""
    shrunk.save_parameters(str(tmp_path / 'mean.params'))
    shrunk.load_parameters(str(tmp_path / 'mean.params'), ctx=ctxs)
    ref = outputs(shrunk, x, ONE)
    shrunk.hybridize()      # (export needs the cached graph)
    outputs(shrunk, x, ONE)
    prefix = str(tmp_path / 'shrunk')
    shrunk.export(prefix)
    loaded = ps.load_exported(prefix + '-symbol.json', 'data', prefix + '-0000.params')
    assert_close(ref, outputs(loaded, x, ONE), FLOAT32)
    ps.remove_mask(shrunk, ps.masked(shrunk))
    shrunk.save_parameters(str(tmp_path / 'net.params'))
    ps.apply_plan(fresh, plan)
    fresh.cast('float64')
    fresh.load_parameters(str(tmp_path / 'net.params'))
    fresh.hybridize()
    assert_close(ref, outputs(fresh, x, ONE), FLOAT32)


def token_layer(make, x, ctxs, hybridize):
    """The token layer ``make()`` (a transformer's, an RNN's) initialised deterministically
    on ``ctxs``, in float64 (see FLOAT64), and ``x`` in float64."""
    net = make()
    mx.random.seed(2)
    net.initialize(mx.init.Xavier(magnitude=2.5), ctx=ctxs)
    if hybridize:
        net.hybridize()
    net(x.as_in_context(ctxs[0]))
    return net, in_float64(net, x)


@pytest.mark.parametrize('kind', COVERAGE)
def test_coverage_nets_halve_every_group_round_trip_and_keep_training(kind, ctxs, tmp_path):
    """Grouped convolutions, gluoncv SE, padded separable, upsample fusion and an FCN head
    with bilinear resize, ones_like and spatial slices: every group not reaching an output is
    prunable, halved; shrunk == masked while training goes on; export and apply_plan."""
    def make():
        net = build(kind, ctxs, seed=5)
        net.hybridize()
        return net
    masked, shrunk, trainers, x = pruned_twins(make, ctxs)
    graph = ps.trace_channels(shrunk, x)
    blocked = [g for g in graph if not g.prunable]
    assert all(g.name == 'data' or 'reaches the net output' in g.reason for g in blocked), \
        [g.reason for g in blocked]
    sizes = {g.name: g.size for g in graph.prunable}
    macs = ps.count_ops(shrunk, x)[0]
    plan = ps.shrink(shrunk, inputs=x, trainer=trainers[1])
    assert {k: len(v) for k, v in plan.kept.items()} == {
        k: n - int(np.floor(0.5 * n + 0.5)) for k, n in sizes.items()}
    assert ps.count_ops(shrunk, x)[0] < macs / 2
    for blk in _mx.walk_blocks(shrunk):
        if isinstance(blk, nn.Conv2D) and blk._kwargs['num_group'] > 1:
            groups = blk._kwargs['num_group']
            assert groups == blk._channels or (groups == 4 and blk.weight.shape[0] == 4)
    train_alike(masked, shrunk, trainers, x, ctxs, steps=3)
    assert ps.check_params(shrunk) == []
    fresh = USER_NETS[kind](prefix=kind + '_')
    assert_exports_and_rebuilds(shrunk, plan, fresh, x, ctxs, tmp_path)


def test_bert_layer_feed_forward_units_shrink_layernorm_says_why(ctxs, hybridize, tmp_path):
    """A gluonnlp-style encoder layer: the feed-forward hidden units are one group (Dense
    rows and bias, the second Dense's columns) and shrink exactly; the model dimension that
    LayerNorm normalises is not prunable and says so; masked == shrunk in both modes, with
    a Trainer, and after apply_plan + load_parameters."""
    from channel_nets import BertLayer
    x = mx.nd.array(np.random.RandomState(4).uniform(-1, 1, size=(4, 5, 16)))
    nets, trainers = [], []
    for _ in range(2):
        net, xs = token_layer(lambda: BertLayer(prefix='bert_'), x, ctxs, hybridize)
        graph = ps.trace_channels(net, xs)
        assert [g.name for g in graph.prunable] == ['bert_dense4_weight']
        heads = graph['bert_dense0_weight']    # whole heads: q, k, v rows, out columns
        assert heads.size == 4 and {m for m in heads.members if m[1] == 1} == {
            ('bert_dense3_weight', 1, 0, 4)}
        assert ('bert_dense2_weight', 0, 0, 4) in heads.members
        # the head count is BertLayer's own attribute, and no rule updates it
        assert heads.reason == (
            "splits its channels into attention heads in the reshape 'bert_reshape0' of "
            "BertLayer 'bert', whose head count shrink cannot update: register a rule with "
            "ps.register_shrink_rule(BertLayer, rule) "
            "(docs/shrink.md#blocks-with-their-own-channel-counts)")
        ffn = graph['bert_dense4_weight']
        assert ffn.members == [('bert_dense4_weight', 0, 0, 1), ('bert_dense4_bias', 0, 0, 1),
                               ('bert_dense5_weight', 1, 0, 1)]
        assert "passes the LayerNorm 'bert_layernorm0_layernorm0', which normalises over " \
            "axis -1" in graph['bert_dense5_weight'].reason
        assert ps.prune_channels(net, 0.5, inputs=xs, key='bert_dense4_weight') == \
            ['bert_dense4_weight']
        nets.append(net)
        trainers.append(stepped_trainer(net, xs, ctxs, 'adam', {'learning_rate': 0.01}))
    masked, shrunk = nets
    x = xs
    macs = ps.count_ops(shrunk, x)[0]
    plan = ps.shrink(shrunk, inputs=x, trainer=trainers[1])
    assert shrunk.ffn_1._units == 16 and shrunk.ffn_2._in_units == 16
    assert shrunk.ffn_2.weight.shape == (16, 16)
    # 5 tokens: the feed-forward block (2 * 16 * 32 per token) loses half its MACs
    assert ps.count_ops(shrunk, x)[0] == macs - 5 * 16 * 32
    train_alike(masked, shrunk, trainers, x, ctxs, steps=3)
    ref = outputs(shrunk, x, ONE)
    ps.remove_mask(shrunk, ps.masked(shrunk))
    shrunk.save_parameters(str(tmp_path / 'bert.params'))
    fresh = BertLayer(prefix='bert_')
    ps.apply_plan(fresh, plan)
    fresh.cast('float64')
    fresh.load_parameters(str(tmp_path / 'bert.params'))
    assert_close(ref, outputs(fresh, x, ONE), FLOAT32)


@pytest.fixture
def attention_rules():
    """The shrink rule of the gluonnlp-style attention cell, registered for one test."""
    from channel_nets import MultiHeadAttentionCell, attention_rule
    ps.register_shrink_rule(MultiHeadAttentionCell, attention_rule)
    yield
    ps.register_shrink_rule(MultiHeadAttentionCell, None)


def test_bert_base_encoder_layer_half_the_heads_and_units(ctxs, hybridize, attention_rules,
                                                          tmp_path):
    """A BERT-base-shaped encoder layer (768 units, 12 heads, 3072 feed-forward units) written
    as gluonnlp writes it: half the heads (q, k, v rows and the output projection's columns,
    the cell's head count through its rule) and half the feed-forward units removed; 2x
    fewer MACs; shrunk == masked in float64 (FLOAT64: LayerNorm divides by the deviation of
    768 values, a smaller growth than train-mode BatchNorm's) before and while training;
    apply_plan + load_parameters rebuild it with the head count."""
    from channel_nets import EncoderLayer
    x = mx.nd.array(np.random.RandomState(4).uniform(-1, 1, size=(4, 5, 768)))
    nets, trainers = [], []
    for _ in range(2):
        net, xs = token_layer(lambda: EncoderLayer(768, 3072, 12, prefix='enc_'), x, ctxs,
                              hybridize)
        graph = ps.trace_channels(net, xs)
        assert [(g.name, g.size) for g in graph.prunable] == [
            ('enc_attention_query_weight', 12), ('enc_ffn_1_weight', 3072)]
        assert ps.prune_channels(net, 0.5, inputs=xs) == ['enc_attention_query_weight',
                                                          'enc_ffn_1_weight']
        nets.append(net)
        trainers.append(stepped_trainer(net, xs, ctxs, 'sgd', {'learning_rate': 0.01,
                                                              'momentum': 0.9}))
    masked, shrunk = nets
    x = xs
    macs = ps.count_ops(shrunk, x)[0]
    before = {n: p.data(ctxs[0]).asnumpy() for n, p in masked.collect_params().items()}
    plan = ps.shrink(shrunk, inputs=x, trainer=trainers[1])
    heads = plan.kept['enc_attention_query_weight']
    assert len(heads) == 6 and len(plan.kept['enc_ffn_1_weight']) == 1536
    cell = shrunk.attention_cell
    assert cell._num_heads == 6 and cell._query_units == cell._value_units == 384
    rows = (64 * np.asarray(heads)[:, None] + np.arange(64)).ravel()   # whole heads of 64
    for name in ('query', 'key', 'value'):
        weight = getattr(cell, 'proj_' + name).weight
        assert weight.shape == (384, 768)
        np.testing.assert_array_equal(weight.data(ctxs[0]).asnumpy(),
                                      before['enc_attention_%s_weight' % name][rows])
    np.testing.assert_array_equal(shrunk.proj.weight.data(ctxs[0]).asnumpy(),
                                  before['enc_proj_weight'][:, rows])
    assert shrunk.ffn_1.weight.shape == (1536, 768) and shrunk.ffn_2.weight.shape == (768, 1536)
    # every counted layer lost half its rows or columns: exactly half the MACs
    assert ps.count_ops(shrunk, x)[0] * 2 == macs
    train_alike(masked, shrunk, trainers, x, ctxs, steps=2)
    assert ps.check_params(shrunk) == []
    ref = outputs(shrunk, x, ONE)
    ps.remove_mask(shrunk, ps.masked(shrunk))
    shrunk.save_parameters(str(tmp_path / 'enc.params'))
    fresh = EncoderLayer(768, 3072, 12, prefix='enc_')
    ps.apply_plan(fresh, plan)
    assert fresh.attention_cell._num_heads == 6
    fresh.cast('float64')
    fresh.load_parameters(str(tmp_path / 'enc.params'))
    if hybridize:
        fresh.hybridize()
    assert_close(ref, outputs(fresh, x, ONE), FLOAT32)


def test_a_failing_shrink_rule_changes_nothing(ctxs, tmp_path):
    """A rule that raises: shrink and apply_plan raise ShrinkError naming the rule and the
    block, with every parameter, block attribute and the Trainer as they were."""
    from channel_nets import EncoderLayer, MultiHeadAttentionCell, attention_rule

    def broken(cell, kept):
        cell._num_heads = 1      # a change the rollback must undo
        raise ValueError('no heads here')

    x = mx.nd.array(np.random.RandomState(4).uniform(-1, 1, size=(2, 3, 16)))
    ps.register_shrink_rule(MultiHeadAttentionCell, attention_rule)
    try:
        net = EncoderLayer(prefix='enc_')
        net.initialize(mx.init.Xavier(), ctx=ctxs)
        ps.prune_channels(net, 0.5, inputs=x)
        trainer = gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': 0.1,
                                                              'momentum': 0.9})
        step(net, trainer, x, ctxs)
        ps.register_shrink_rule(MultiHeadAttentionCell, broken)
        before = snapshot(net)
        state = trainer_state(trainer)
        with pytest.raises(ps.ShrinkError, match="The shrink rule broken registered for "
                           "MultiHeadAttentionCell raised ValueError on block 'enc_attention': "
                           "no heads here") as info:
            ps.shrink(net, inputs=x, trainer=trainer)
        assert 'Nothing was changed. Fix the rule (see docs/shrink.md' in str(info.value)
        assert_same_bits(before, snapshot(net))
        assert net.attention_cell._num_heads == 4
        assert trainer_state(trainer) == state
        ps.register_shrink_rule(MultiHeadAttentionCell, attention_rule)
        plan = ps.shrink(net, inputs=x, trainer=trainer)
        ps.register_shrink_rule(MultiHeadAttentionCell, broken)
        fresh = EncoderLayer(prefix='enc_')
        shapes = {n: p.shape for n, p in fresh.collect_params().items()}
        with pytest.raises(ps.ShrinkError, match='The shrink rule broken .* no heads here'):
            ps.apply_plan(fresh, plan)
        assert {n: p.shape for n, p in fresh.collect_params().items()} == shapes
        assert fresh.attention_cell._num_heads == 4 and fresh.proj._in_units == 0
    finally:
        ps.register_shrink_rule(MultiHeadAttentionCell, None)


@pytest.fixture
def self_attention_rules():
    """The shrink rule of the gluonnlp-style interleaved self-attention cell, for one test."""
    from channel_nets import SelfAttentionCell, self_attention_rule
    ps.register_shrink_rule(SelfAttentionCell, self_attention_rule)
    yield
    ps.register_shrink_rule(SelfAttentionCell, None)


def test_interleaved_self_attention_heads_shrink_and_keep_training(ctxs, hybridize,
                                                                   self_attention_rules,
                                                                   tmp_path):
    """A BERT written as gluonnlp writes it (interleaved query/key/value projection, MXNet's
    fused self-attention operators, valid lengths): half the heads of every layer (the
    three weights' and biases' rows of whole heads, the output projection's columns; the
    cell's head count and units through its rule) and half the feed-forward units removed;
    shrunk == masked in predict and train mode, before and while training (FUSED32); every
    counted layer loses half: 2x fewer MACs; apply_plan + load_parameters rebuild it."""
    from channel_nets import Bert
    x = mx.nd.array(np.random.RandomState(4).randint(0, 20, size=(4, 5)))
    nets, trainers = [], []
    for _ in range(2):
        net = Bert(prefix='bert_')
        mx.random.seed(2)
        net.initialize(mx.init.Xavier(magnitude=2.5), ctx=ctxs)
        if hybridize:
            net.hybridize()
        assert ps.prune_channels(net, 0.5, inputs=x) == [
            'bert_cells_bertcell0_attention_query_weight', 'bert_cells_bertcell0_ffn_1_weight',
            'bert_cells_bertcell1_attention_query_weight', 'bert_cells_bertcell1_ffn_1_weight']
        nets.append(net)
        trainers.append(stepped_trainer(net, x, ctxs, 'adam', {'learning_rate': 0.01}))
    masked, shrunk = nets
    macs = ps.count_ops(shrunk, x)[0]
    # (count_ops counts per entry of axis 0: the 4 sequences of the (tokens, batch) layout)
    assert macs == 2 * 4 * (3 * 16 * 16 + 16 * 16 + 2 * 16 * 32)
    before = {n: p.data(ctxs[0]).asnumpy() for n, p in shrunk.collect_params().items()}
    plan = ps.shrink(shrunk, inputs=x, trainer=trainers[1])
    for k, layer in enumerate(shrunk.cells):
        cell, prefix = layer.attention_cell, 'bert_cells_bertcell%d_' % k
        heads = plan.kept[prefix + 'attention_query_weight']
        assert len(heads) == 2 and cell._num_heads == 2 and cell.units == 8
        rows = (4 * np.asarray(heads)[:, None] + np.arange(4)).ravel()   # whole heads of 4
        for part in ('query', 'key', 'value'):
            for kind in ('weight', 'bias'):
                param = getattr(cell, '%s_%s' % (part, kind))
                np.testing.assert_array_equal(
                    param.data(ctxs[0]).asnumpy(),
                    before['%sattention_%s_%s' % (prefix, part, kind)][rows])
        np.testing.assert_array_equal(layer.proj.weight.data(ctxs[0]).asnumpy(),
                                      before[prefix + 'proj_weight'][:, rows])
        assert layer.proj._in_units == 8 and layer.ffn_1._units == 16
    assert ps.count_ops(shrunk, x)[0] * 2 == macs
    train_alike(masked, shrunk, trainers, x, ctxs, steps=2, rtol=FUSED32)
    assert ps.check_params(shrunk) == []
    ref = outputs(shrunk, x, ONE)
    ps.remove_mask(shrunk, ps.masked(shrunk))
    shrunk.save_parameters(str(tmp_path / 'bert.params'))
    fresh = Bert(prefix='bert_')
    ps.apply_plan(fresh, plan)
    assert [c.attention_cell._num_heads for c in fresh.cells] == [2, 2]
    fresh.load_parameters(str(tmp_path / 'bert.params'))
    if hybridize:
        fresh.hybridize()
    assert_close(ref, outputs(fresh, x, ONE), FLOAT32)


def test_fused_attention_after_one_dense_shrinks_whole_heads(ctxs, hybridize):
    """MXNet's fused self-attention fed by one Dense: a head is 3 * head units consecutive
    rows of it (query, key, value) and head units columns of the output projection; with the
    block's rule, half the heads go and shrunk == masked (FUSED32) while training."""
    from channel_nets import FusedAttention, fused_attention_rule
    x = mx.nd.array(np.random.RandomState(4).uniform(-1, 1, size=(5, 4, 8)))
    ps.register_shrink_rule(FusedAttention, fused_attention_rule)
    try:
        nets, trainers = [], []
        for _ in range(2):
            net = FusedAttention(8, 4, prefix='fa_')
            mx.random.seed(2)
            net.initialize(mx.init.Xavier(magnitude=2.5), ctx=ctxs)
            if hybridize:
                net.hybridize()
            group = ps.trace_channels(net, x)['fa_qkv_weight']
            assert group.size == 4 and group.members == [
                ('fa_qkv_weight', 0, 0, 6), ('fa_qkv_bias', 0, 0, 6), ('fa_out_weight', 1, 0, 2)]
            assert ps.prune_channels(net, 0.5, inputs=x) == ['fa_qkv_weight']
            nets.append(net)
            trainers.append(stepped_trainer(net, x, ctxs, 'sgd', {'learning_rate': 0.05,
                                                                 'momentum': 0.9}))
        masked, shrunk = nets
        plan = ps.shrink(shrunk, inputs=x, trainer=trainers[1])
        heads = plan.kept['fa_qkv_weight']
        assert len(heads) == 2 and shrunk._heads == 2 and shrunk.qkv.weight.shape == (12, 8)
        np.testing.assert_array_equal(
            shrunk.out.weight.data(ctxs[0]).asnumpy(),
            masked.out.weight.data(ctxs[0]).asnumpy()[
                :, (2 * np.asarray(heads)[:, None] + np.arange(2)).ravel()])
        train_alike(masked, shrunk, trainers, x, ctxs, steps=2, rtol=FUSED32)
    finally:
        ps.register_shrink_rule(FusedAttention, None)


def test_transposed_convolutions_resized_on_both_channel_axes(ctxs, hybridize):
    """A transposed convolution's weight is (in, out / groups, k, k): shrink keeps the rows
    of the kept input channels and the columns of the kept output channels, and the block's
    counts follow (a depthwise one keeps groups == channels); shrunk == masked."""
    net = build('deconv', ctxs)
    if hybridize:
        net.hybridize()
    x = in_float64(net, batch())
    graph = ps.trace_channels(net, x)
    up1 = graph['deconv_conv1_weight']          # up1's outputs, through bn and dw, into up2
    assert ('deconv_conv1_weight', 1, 0, 1) in up1.members
    assert ('deconv_conv2_weight', 0, 0, 1) in up1.members      # depthwise: one axis
    assert ('deconv_conv3_weight', 0, 0, 1) in up1.members      # up2 reads through rows
    assert ('deconv_conv3_weight', 1, 0, 1) in graph['deconv_conv3_weight'].members
    plan, (ref, got), (ref_train, got_train) = masked_vs_shrunk(net, x, ctxs)
    assert_close(ref, got, FLOAT64)
    assert_close(ref_train, got_train, FLOAT64)
    stem, mid, out = (plan.kept[n] for n in ('deconv_conv0_weight', 'deconv_conv1_weight',
                                             'deconv_conv3_weight'))
    assert (len(stem), len(mid), len(out)) == (4, 3, 2)
    assert net.up1.weight.shape == (4, 3, 4, 4) and net.up1._channels == 3
    assert net.up1._kwargs['num_filter'] == 3
    assert net.dw.weight.shape == (3, 1, 3, 3) and net.dw._kwargs['num_group'] == 3
    assert net.dw._channels == net.dw._in_channels == 3
    assert net.up2.weight.shape == (3, 2, 4, 4) and net.up2._kwargs['num_filter'] == 2
    assert net.head._in_channels == 2


GATES = {'lstm': 4, 'gru': 3}


def rnn_members(prefix, layer, side, gates, hidden):
    """The members of one layer's and direction's hidden units, but the next readers'."""
    name = '%s_%s%d_%s_%s' % (prefix, side, layer, '%s', '%s')
    return [(name % (kind, t), 0, g * hidden, 1) for g in range(gates)
            for kind in ('i2h', 'h2h') for t in ('weight', 'bias')] + \
        [(name % ('h2h', 'weight'), 1, 0, 1)]


@pytest.mark.parametrize('mode', ['lstm', 'gru'])
def test_language_model_embedding_inputs_and_hidden_units_shrink(ctxs, hybridize, mode,
                                                                 tmp_path):
    """An RNN language model: the embedding's dimension (weight columns, the projection's
    columns), the fused RNN's input features (the projection's rows, the i2h columns) and
    its hidden units (every gate's rows of the i2h and h2h weights and biases, the h2h
    columns, the decoder's columns) are groups that shrink exactly: a removed unit's gates
    see zero input, so from the zero begin state its state and output stay zero; the
    layer's hidden size follows (its known rule); training goes on."""
    from channel_nets import LanguageModel
    # indices below 49: train_alike steps on tokens + 1 too
    tokens = mx.nd.array(np.random.RandomState(0).randint(0, 49, size=(4, 5)))
    nets, trainers = [], []
    layer = 'lm_%s0' % mode
    for _ in range(2):
        net = LanguageModel(mode, prefix='lm_')
        mx.random.seed(3)
        net.initialize(mx.init.Xavier(), ctx=ctxs)
        if hybridize:
            net.hybridize()
        net(tokens.as_in_context(ctxs[0]))
        net.cast('float64')
        graph = ps.trace_channels(net, tokens)
        assert [g.name for g in graph.prunable] == [
            'lm_embedding0_weight', 'lm_dense0_weight', layer + '_l0_i2h_weight']
        assert ('%s_l0_i2h_weight' % layer, 1, 0, 1) in graph['lm_dense0_weight'].members
        hidden = graph[layer + '_l0_i2h_weight']
        assert hidden.size == 10 and sorted(hidden.members) == sorted(
            rnn_members(layer, 0, 'l', GATES[mode], 10) + [('lm_dense1_weight', 1, 0, 1)])
        assert ps.prune_channels(net, 0.5, inputs=tokens) == [g.name for g in graph.prunable]
        nets.append(net)
        trainers.append(stepped_trainer(net, tokens, ctxs, 'sgd', {'learning_rate': 0.1,
                                                                  'momentum': 0.9}))
    masked, shrunk = nets
    plan = ps.shrink(shrunk, inputs=tokens, trainer=trainers[1])
    assert shrunk.embedding.weight.shape == (50, 4) and shrunk.proj.weight.shape == (3, 4)
    assert shrunk.embedding._kwargs['output_dim'] == 4
    gates = GATES[mode]
    assert shrunk.encoder.l0_i2h_weight.shape == (gates * 5, 3)
    assert shrunk.encoder.l0_h2h_weight.shape == (gates * 5, 5)
    assert shrunk.encoder._hidden_size == 5 and shrunk.decoder.weight.shape == (50, 5)
    train_alike(masked, shrunk, trainers, tokens, ctxs, steps=2)
    ref = outputs(shrunk, tokens, ONE)
    ps.remove_mask(shrunk, ps.masked(shrunk))
    shrunk.save_parameters(str(tmp_path / 'lm.params'))
    fresh = LanguageModel(mode, prefix='lm_')
    ps.apply_plan(fresh, plan)
    assert fresh.encoder._hidden_size == 5
    fresh.cast('float64')
    fresh.load_parameters(str(tmp_path / 'lm.params'))
    assert_close(ref, outputs(fresh, tokens, ONE), FLOAT32)


@pytest.mark.parametrize('mode', ['lstm', 'gru'])
def test_stacked_bidirectional_rnn_hidden_units_shrink(ctxs, hybridize, mode, tmp_path):
    """A 2-layer bidirectional LSTM or GRU: each layer's and direction's hidden units are a
    group, read by the next layer's i2h columns of both directions at its offset (forward
    units first) and, for the last layer, by the classifier; halved, shrunk == masked
    (FLOAT64) in both modes while training goes on; apply_plan rebuilds it."""
    from channel_nets import RecurrentStack
    x = mx.nd.array(np.random.RandomState(1).uniform(-1, 1, size=(4, 5, 7)))
    nets, trainers = [], []
    for _ in range(2):
        net, xs = token_layer(lambda: RecurrentStack(mode, prefix='stack_'), x, ctxs,
                              hybridize)
        graph = ps.trace_channels(net, xs)
        layer, gates = 'stack_%s0' % mode, GATES[mode]
        units = ['%s_%s%d_i2h_weight' % (layer, side, k) for k in (0, 1) for side in 'lr']
        assert [g.name for g in graph.prunable] == ['stack_dense0_weight'] + units
        for k in (0, 1):
            for d, side in enumerate('lr'):
                readers = [('%s_%s1_i2h_weight' % (layer, s), 1, d * 6, 1) for s in 'lr'] \
                    if k == 0 else [('stack_dense1_weight', 1, d * 6, 1)]
                assert sorted(graph['%s_%s%d_i2h_weight' % (layer, side, k)].members) == \
                    sorted(rnn_members(layer, k, side, gates, 6) + readers)
        ps.prune_channels(net, 0.5, inputs=xs)
        nets.append(net)
        trainers.append(stepped_trainer(net, xs, ctxs, 'adam', {'learning_rate': 0.01}))
    masked, shrunk = nets
    plan = ps.shrink(shrunk, inputs=xs, trainer=trainers[1])
    assert {k: len(v) for k, v in plan.kept.items()} == {
        'stack_dense0_weight': 2, **{name: 3 for name in units}}
    enc = shrunk.encoder
    assert enc._hidden_size == 3 and enc.l0_i2h_weight.shape == (gates * 3, 2)
    assert enc.l1_i2h_weight.shape == enc.r1_i2h_weight.shape == (gates * 3, 6)
    assert enc.r1_h2h_weight.shape == (gates * 3, 3) and shrunk.out.weight.shape == (3, 6)
    train_alike(masked, shrunk, trainers, xs, ctxs, steps=2)
    assert ps.check_params(shrunk) == []
    ref = outputs(shrunk, xs, ONE)
    ps.remove_mask(shrunk, ps.masked(shrunk))
    shrunk.save_parameters(str(tmp_path / 'stack.params'))
    fresh = RecurrentStack(mode, prefix='stack_')
    ps.apply_plan(fresh, plan)
    fresh.cast('float64')
    fresh.load_parameters(str(tmp_path / 'stack.params'))
    assert_close(ref, outputs(fresh, xs, ONE), FLOAT32)


@pytest.mark.parametrize('return_states', [False, True])
def test_rnn_hidden_units_from_given_states_or_returned_say_why(return_states):
    """Hidden units shrink exactly only from a zero initial state, with the final states
    unread: an LSTM given its states, or returning them, says why its units are not
    prunable (its input features are not either)."""
    from channel_nets import GivenStates
    net = GivenStates(return_states, prefix='given_')
    net.initialize()
    x, h = mx.nd.ones((2, 5, 7)), mx.nd.zeros((1, 2, 6))
    net(x, h, h)
    graph = ps.trace_channels(net, x, h, h)
    assert [g.name for g in graph.prunable] == []
    why = ('its final states are read, and the tracer follows hidden units through its output '
           'only' if return_states else "its initial state comes from 'data1', not from "
           "zeros: a removed unit's state would not stay zero")
    what = "the RNN operator 'given_lstm0_rnn0' (mode=lstm): " + why
    assert graph['given_dense0_weight'].reason == 'feeds ' + what
    assert graph['given_lstm0_rnn0'].reason == 'are the hidden units of ' + what


# --------------------------------------------------------------------------- gluoncv (optional)

# net -> (input shape, the MACs ratio at 0.5 it must reach). Halving every group's channels
# divides a layer's MACs by 4 (2 in, 2 out); 3x leaves room for the layers whose inputs or
# outputs cannot shrink (the stem reads the image, the classifier writes the classes).
GLUONCV = {
    'resnext50_32x4d': ((1, 3, 64, 64), 3), 'se_resnet50_v2': ((1, 3, 64, 64), 3),
    'xception': ((1, 3, 96, 96), 3), 'hrnet_w18_small_v1_c': ((1, 3, 64, 64), 3),
    'fcn_resnet50_voc': ((1, 3, 64, 64), 3), 'simple_pose_resnet18_v1b': ((1, 3, 128, 96), 3),
    'mobilenetv3_large': ((1, 3, 64, 64), 3), 'residualattentionnet56': ((1, 3, 224, 224), 3),
    'resnest14': ((1, 3, 64, 64), 3),
}


@pytest.mark.gluoncv
@pytest.mark.parametrize('name', sorted(GLUONCV))
def test_gluoncv_nets_shrink_and_keep_training(name):
    """gluoncv 0.10.5's real nets (pretrained=False): prune_channels(0.5) + shrink, whose
    check compares the shrunk and the masked outputs (float32, its own bound), then a
    training step goes on with the same Trainer on two contexts."""
    from gluoncv import model_zoo as gz
    shape, target = GLUONCV[name]
    kwargs = {'pretrained_base': False} if name.split('_')[0] in ('fcn', 'simple') else {}
    mx.random.seed(0)
    net = gz.get_model(name, pretrained=False, **kwargs)
    # (fcn initialises its backbone on cpu(0) when it builds it)
    net.initialize(mx.init.Xavier(), ctx=TWO, force_reinit=True)
    x = mx.nd.array(np.random.RandomState(0).uniform(-1, 1, size=(4,) + shape[1:]))
    net(x[:1].as_in_context(TWO[0]))
    macs = ps.count_ops(net, shape)[0]
    ps.prune_channels(net, 0.5, inputs=shape)
    trainer = stepped_trainer(net, x, TWO, 'sgd', {'learning_rate': 0.01, 'momentum': 0.9})
    ps.shrink(net, inputs=x[:2], trainer=trainer)
    assert macs / ps.count_ops(net, shape)[0] >= target
    before = snapshot(net)
    step(net, trainer, x, TWO)
    after = snapshot(net)
    assert any(a.tobytes() != b.tobytes() for n in before for a, b in zip(before[n], after[n]))
    assert ps.check_params(net) == []


# --------------------------------------------------------------------------- gluonnlp (optional)

def gluonnlp_bert():
    """gluonnlp 0.10.0's BERTModel with a BERT-base-shaped encoder of 2 layers (768 units,
    12 heads, 3072 feed-forward units), built directly (get_model downloads)."""
    pytest.importorskip('gluonnlp')
    from gluonnlp.model.bert import BERTEncoder, BERTModel
    encoder = BERTEncoder(num_layers=2, units=768, hidden_size=3072, max_length=64,
                          num_heads=12, dropout=0.0, output_attention=False,
                          output_all_encodings=False, prefix='enc_')
    return BERTModel(encoder, vocab_size=30, token_type_vocab_size=2, units=768,
                     embed_size=768, word_embed=None, use_pooler=False, use_decoder=False,
                     use_classifier=False, prefix='bert_')


@pytest.mark.gluonnlp
def test_gluonnlp_bert_heads_and_feed_forward_units_shrink(tmp_path):
    """gluonnlp's real BERT (its DotProductSelfAttentionCell's interleaved projection and
    MXNet's fused operators, valid lengths): prune_channels(0.5) removes half the heads and
    half the feed-forward units of every layer; shrink (gluonnlp's cell's rule is known)
    computes what the masked net did on two contexts, hybridised (FUSED32); every counted
    layer loses half: exactly 2x fewer MACs; apply_plan rebuilds it; training goes on."""
    inputs = (mx.nd.array(np.random.RandomState(0).randint(0, 30, size=(4, 8))),
              mx.nd.array(np.random.RandomState(1).randint(0, 2, size=(4, 8))),
              mx.nd.array([8, 5, 3, 8]))
    nets = []
    for _ in range(2):
        net = gluonnlp_bert()
        mx.random.seed(0)
        net.initialize(mx.init.Xavier(), ctx=TWO)
        net.hybridize()
        cells = ['enc_transformer%d_%s' % (k, name) for k in range(2) for name in (
            'dotproductselfattentioncell0_query_weight', 'positionwiseffn0_ffn_1_weight')]
        assert [(g.name, g.size) for g in ps.trace_channels(net, *inputs).prunable] == [
            (name, 12 if 'query' in name else 3072) for name in cells]
        assert ps.prune_channels(net, 0.5, inputs=inputs) == cells
        nets.append(net)
    masked, shrunk = nets
    macs = ps.count_ops(shrunk, *inputs)[0]
    trainer = gluon.Trainer(shrunk.collect_params(), 'sgd', {'learning_rate': 0.01,
                                                              'momentum': 0.9})
    plan = ps.shrink(shrunk, inputs=inputs, trainer=trainer)
    assert ps.count_ops(shrunk, *inputs)[0] * 2 == macs
    for layer in shrunk.encoder.transformer_cells:
        cell = layer.attention_cell
        assert cell._num_heads == 6 and cell.units == 384
        assert cell.query_weight.shape == cell.value_weight.shape == (384, 768)
        assert layer.proj.weight.shape == (768, 384)
        assert layer.ffn.ffn_1.weight.shape == (1536, 768)
    for ctx in TWO:
        on = [a.as_in_context(ctx) for a in inputs]
        assert_close([masked(*on).asnumpy()], [shrunk(*on).asnumpy()], FUSED32)
    fresh = gluonnlp_bert()
    ps.apply_plan(fresh, plan)
    assert [c.attention_cell._num_heads for c in fresh.encoder.transformer_cells] == [6, 6]
    before = snapshot(shrunk)
    with autograd.record():
        losses = [(shrunk(*[a.as_in_context(ctx) for a in inputs]) ** 2).mean() for ctx in TWO]
    autograd.backward(losses)
    trainer.step(4)
    after = snapshot(shrunk)
    assert all(any(a.tobytes() != b.tobytes() for a, b in zip(before[n], after[n]))
               for n in before if n.endswith('query_weight'))
    assert ps.check_params(shrunk) == []


# --------------------------------------------------------------------------- one trace

def counted_traces(monkeypatch):
    """The input shapes of every trace prune_channels and shrink make from now on."""
    from paramsurgery.channels import traced
    calls, real = [], traced.build

    def counting(net, shapes):
        calls.append([tuple(s) for s in shapes])
        return real(net, shapes)
    monkeypatch.setattr(traced, 'build', counting)
    return calls


@pytest.mark.parametrize('kind', ['chain', 'residual'])
def test_shrink_reuses_the_trace_of_prune_channels(monkeypatch, kind, ctxs, hybridize):
    from paramsurgery.channels import traced
    nets = [build(kind, ctxs) for _ in range(2)]
    x = batch()
    for net in nets:
        if hybridize:
            net.hybridize()
        warm_up(net, x, ctxs)
        ps.prune_channels(net, 0.5, inputs=x)
    calls = counted_traces(monkeypatch)
    traced._LAST.pop(nets[1])               # the second one traces for itself
    ref = [outputs(net, x, ctxs) for net in nets]
    plans = [ps.shrink(net, inputs=x) for net in nets]
    assert calls == [[tuple(x.shape)]]      # only the second net was traced again
    assert plans[0] == plans[1] and plans[0].slices == plans[1].slices
    for net, before in zip(nets, ref):
        # FLOAT32: the same float32 weights, masked then shrunk: shrink's own check bound
        assert_close(before, outputs(net, x, ctxs), FLOAT32)
    assert_same_bits(snapshot(nets[0]), snapshot(nets[1]))
    assert nets[0] not in traced._LAST     # a graph is used once


def _replace_head(net, ctxs):
    net.out = nn.Dense(3, in_units=10, prefix=net.prefix + 'newout_')
    net.out.initialize(mx.init.Xavier(), ctx=ctxs)


def _unregistered_rule(net, ctxs):
    ps.register_shrink_rule(nn.Dense, lambda block, kept: None)


# What a user may change between prune_channels and shrink; each makes shrink trace again.
_CHANGES = {
    'input shape': None,
    'head replaced': _replace_head,
    'mask removed': lambda net, ctxs: ps.remove_mask(net, ps.masked(net)[-1:]),
    'rule registered': _unregistered_rule,
    'block resized': lambda net, ctxs: ps.shrink(net, inputs=batch()),
}


@pytest.mark.parametrize('change', sorted(_CHANGES))
def test_a_changed_net_is_traced_again(monkeypatch, change, ctxs, hybridize):
    net = build('chain', ctxs)
    if hybridize:
        net.hybridize()
    x = batch()
    warm_up(net, x, ctxs)
    ps.prune_channels(net, 0.5, inputs=x)
    try:
        if _CHANGES[change] is not None:
            _CHANGES[change](net, ctxs)
        x = batch(n=2) if change == 'input shape' else x
        calls = counted_traces(monkeypatch)
        ref = outputs(net, x, ctxs)
        ps.shrink(net, inputs=x)
    finally:
        ps.register_shrink_rule(nn.Dense, None)
    assert calls == [[tuple(x.shape)]]
    assert_close(ref, outputs(net, x, ctxs), FLOAT32)   # (see FLOAT32)
    if change == 'head replaced':
        # the new head has no mask, so the channels it reads stay
        assert net.out.weight.shape == (3, 10)


def _small(prefix, **dims):
    net = nn.HybridSequential(prefix=prefix)
    with net.name_scope():
        net.add(nn.Conv2D(4, 3, **dims), nn.BatchNorm(), nn.Activation('relu'),
                nn.GlobalAvgPool2D(), nn.Dense(2))
    return net


def test_a_net_never_initialised_raises_a_typed_error_naming_the_parameter():
    net = _small('never_', in_channels=3)
    # (it was Gluon's own RuntimeError from the check's forward)
    with pytest.raises(ps.ParameterStateError, match="'never_conv0_weight' is not initialised"):
        ps.shrink(net, inputs=(1, 3, 8, 8))


def test_deferred_shapes_are_finished_by_the_check_forward(ctxs, hybridize):
    net = _small('deferred_')
    net.initialize(mx.init.Xavier(), ctx=ctxs)
    if hybridize:
        net.hybridize()
    x = batch()
    plan = ps.shrink(net, inputs=x)     # nothing masked: nothing removed
    assert net[0].weight.shape == (4, 3, 3, 3) and plan.kept == {'deferred_conv0_weight':
                                                                 [0, 1, 2, 3]}
    ref = outputs(net, x, ctxs)
    ps.prune_channels(net, 2, inputs=x)
    masked_out = outputs(net, x, ctxs)
    ps.shrink(net, inputs=x)
    assert net[0].weight.shape == (2, 3, 3, 3) and net[4].weight.shape == (2, 2)
    assert_close(masked_out, outputs(net, x, ctxs), FLOAT32)   # (see FLOAT32)
    assert all(r.shape == (4, 2) for r in ref)


def test_plan_lists_of_plain_ints_are_checked_like_any_other():
    assert ps.ShrinkPlan({'g': [0, 2]}, {'0.weight': [2, 3]}).shapes == {'0.weight': (2, 3)}
    assert ps.ShrinkPlan({'g': (np.int64(1),)}, {}).kept == {'g': [1]}
    with pytest.raises(ps.SurgeryValueError, match=r"kept\['g'\] has a value below 0"):
        ps.ShrinkPlan({'g': [0, -1]}, {})
    with pytest.raises(ps.SurgeryValueError, match=r"shapes\['0.weight'\] has a value below 1"):
        ps.ShrinkPlan({}, {'0.weight': [0, 3]})
    with pytest.raises(ps.SurgeryTypeError, match=r"kept\['g'\] must be a list of ints"):
        ps.ShrinkPlan({'g': [0, True]}, {})


def test_a_pruned_net_is_not_kept_alive_by_its_remembered_trace(ctxs):
    import gc
    import weakref
    net = build('chain', ctxs)
    ps.prune_channels(net, 0.5, inputs=batch())
    ref = weakref.ref(net)
    del net
    gc.collect()
    assert ref() is None


# --------------------------------------------------------------------------- split attention

@pytest.fixture
def split_attention_rules():
    """The shrink rule of the in-repo SplitAttentionConv, registered for one test."""
    from channel_nets import SplitAttentionConv, split_attention_rule
    ps.register_shrink_rule(SplitAttentionConv, split_attention_rule)
    yield
    ps.register_shrink_rule(SplitAttentionConv, None)


def split_attention_net(groups, ctxs, hybridize, radix=2):
    from channel_nets import SplitAttention
    net = SplitAttention(groups, radix, prefix='splat_')
    mx.random.seed(5)
    net.initialize(mx.init.Xavier(magnitude=2.5), ctx=ctxs)
    if hybridize:
        net.hybridize()
    net(mx.nd.zeros((1, 3, 8, 8), ctx=ctxs[0]))
    return net


@pytest.mark.parametrize('groups', [1, 2])
def test_split_attention_without_a_rule_says_why(groups):
    """ResNeSt's split attention reshapes its channels into radix splits by its own
    ``channels`` attribute: without a rule for it the group is not prunable, and says so."""
    net = split_attention_net(groups, ONE, hybridize=False)
    graph = ps.trace_channels(net, batch())
    assert graph['splat_conv2_weight'].reason == (
        "splits its channels into radix splits in the reshape "
        "'splat_splitattentionconv0_reshape0' of SplitAttentionConv "
        "'splat_splitattentionconv0', whose channel count shrink cannot update: register a "
        "rule with ps.register_shrink_rule(SplitAttentionConv, rule) "
        "(docs/shrink.md#blocks-with-their-own-channel-counts)")


def test_split_attention_and_rnn_units_of_an_exported_model_say_why(tmp_path):
    """An exported model writes split attention's channels per split and an RNN's hidden
    size into its graph, where no rule can update them: not prunable, and the reason says
    to shrink the Gluon net."""
    from channel_nets import RecurrentStack
    x = mx.nd.array(np.random.RandomState(1).uniform(-1, 1, size=(2, 5, 7)))
    for net, x, group, split in [
            (split_attention_net(1, ONE, True), batch(), 'splat_conv2_weight',
             "radix splits in the reshape 'splat_splitattentionconv0_reshape0' of the "
             "exported graph, which writes the channel count"),
            (RecurrentStack(prefix='stack_'), x, 'stack_lstm0_l0_i2h_weight',
             "hidden units in the RNN operator 'stack_lstm0_rnn0' of the exported graph, "
             "which writes the hidden unit count")]:
        net.initialize(force_reinit=True)
        net.hybridize()
        net(x)
        net.export(str(tmp_path / 'net'))
        loaded = ps.load_exported(str(tmp_path / 'net-symbol.json'), 'data',
                                  str(tmp_path / 'net-0000.params'))
        assert ps.trace_channels(loaded, x)[group].reason == (
            'splits its channels into %s: shrink the Gluon net instead, whose block a rule '
            'updates (docs/shrink.md#blocks-with-their-own-channel-counts)' % split)


@pytest.mark.parametrize('groups, radix', [(1, 2), (2, 2), (2, 1)])
def test_split_attention_shrinks_exactly_and_keeps_training(groups, radix, ctxs, hybridize,
                                                            split_attention_rules, tmp_path):
    """gluoncv's SplitAttentionConv (radix 2: softmax across the splits; radix 1: a sigmoid;
    1 and 2 cardinal groups) in a bottleneck:
    channel i of every radix split and cardinal group is one channel (the grouped
    convolution's rows and BatchNorm entries, fc1's columns, fc2's rows and bias, the next
    convolution's columns), so radix and cardinality are kept and every split loses the same
    channels; every group not reaching the output is prunable and halved; shrunk == masked
    (FLOAT64) in both modes while training goes on; export and apply_plan round trips."""
    masked, shrunk, trainers, x = pruned_twins(
        lambda: split_attention_net(groups, ctxs, hybridize, radix), ctxs)
    graph = ps.trace_channels(shrunk, x)
    assert [g.name for g in graph if not g.prunable] == ['data', 'splat_dense0_weight']
    per = 8 // groups      # channels per cardinal group of one radix split
    splits = graph['splat_conv2_weight']
    assert splits.size == per
    # conv rows and fc2 rows: split r, cardinal group g at (r * groups + g) * per
    rows = [(name, 0, off, 1) for name in ('splat_conv2_weight', 'splat_conv4_weight',
                                           'splat_conv4_bias')
            for off in range(0, 8 * radix, per)]
    columns = [('splat_conv3_weight', 1, 0, 1)] + [('splat_conv5_weight', 1, off, 1)
                                                   for off in range(0, 8, per)]
    assert sorted(m for m in splits.members if 'batchnorm' not in m[0]) == sorted(rows + columns)
    sizes = {g.name: g.size for g in graph.prunable}
    plan = ps.shrink(shrunk, inputs=x, trainer=trainers[1])
    assert {k: len(v) for k, v in plan.kept.items()} == {
        k: n - int(np.floor(0.5 * n + 0.5)) for k, n in sizes.items()}
    splat = shrunk.splat
    half = per - int(np.floor(0.5 * per + 0.5))
    assert splat.channels == half * groups and splat.radix == radix
    assert splat.cardinality == groups and splat.conv._kwargs['num_group'] == radix * groups
    assert splat.fc1._kwargs['num_group'] == splat.fc2._kwargs['num_group'] == groups
    assert splat.conv.weight.shape[0] == splat.fc2.weight.shape[0] == radix * half * groups
    assert splat.fc1.weight.shape[1] * groups == shrunk.conv3.weight.shape[1] == half * groups
    train_alike(masked, shrunk, trainers, x, ctxs, steps=3)
    assert ps.check_params(shrunk) == []
    from channel_nets import SplitAttention
    fresh = SplitAttention(groups, radix, prefix='splat_')
    assert_exports_and_rebuilds(shrunk, plan, fresh, x, ctxs, tmp_path)
    assert fresh.splat.channels == splat.channels


@pytest.mark.gluonnlp
def test_gluonnlp_transformer_encoder_heads_and_feed_forward_units_shrink():
    """gluonnlp's real TransformerEncoder (its MultiHeadAttentionCell splits the query, key
    and value projections into heads by reshape; the cell's rule is known): half the heads
    and half the feed-forward units of every layer are removed, on two contexts, hybridised;
    the shrunk net computes what the masked one did, with the head count and units updated;
    every counted layer loses half: exactly 2x fewer MACs."""
    pytest.importorskip('gluonnlp')
    from gluonnlp.model.transformer import TransformerEncoder
    x = mx.nd.array(np.random.RandomState(0).normal(size=(2, 8, 64)))
    nets = []
    for _ in range(2):
        net = TransformerEncoder(num_layers=2, units=64, hidden_size=256, max_length=32,
                                 num_heads=4, dropout=0.0, prefix='enc_')
        mx.random.seed(0)
        net.initialize(mx.init.Xavier(), ctx=TWO)
        net.hybridize()
        cells = ['enc_transformer%d_%s' % (k, name) for k in range(2) for name in (
            'multiheadattentioncell0_query_weight', 'positionwiseffn0_ffn_1_weight')]
        assert [(g.name, g.size) for g in ps.trace_channels(net, x).prunable] == [
            (name, 4 if 'query' in name else 256) for name in cells]
        assert ps.prune_channels(net, 0.5, inputs=x) == cells
        nets.append(net)
    masked, shrunk = nets
    macs = ps.count_ops(shrunk, x)[0]
    ps.shrink(shrunk, inputs=x)
    assert ps.count_ops(shrunk, x)[0] * 2 == macs
    for layer in shrunk.transformer_cells:
        cell = layer.attention_cell
        assert cell._num_heads == 2
        assert cell._query_units == cell._key_units == cell._value_units == 32
        assert cell.proj_key.weight.shape == (32, 64) and layer.proj.weight.shape == (64, 32)
    for ctx in TWO:
        on = x.as_in_context(ctx)
        assert_close([masked(on)[0].asnumpy()], [shrunk(on)[0].asnumpy()], FUSED32)
