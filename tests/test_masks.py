"""Masks inside the forward graph: apply_mask, get_mask, masked, remove_mask, save/load/export."""
import copy
import os
import warnings

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon, nd
from mxnet.gluon import nn, rnn

import paramsurgery as ps
from paramsurgery import _mx
from paramsurgery.masks import forward

CTXS = {1: [mx.cpu(0)], 2: [mx.cpu(0), mx.cpu(1)]}


# --------------------------------------------------------------------------- fixtures

class Scale(gluon.HybridBlock):
    """A user block that receives its parameter by name."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.scale = self.params.get('scale', shape=(units,), init=mx.init.Uniform(1.0))

    def hybrid_forward(self, F, x, scale):
        return F.broadcast_mul(F.tanh(x), scale.reshape((1, -1)))


class Anonymous(gluon.HybridBlock):
    """A user block whose hybrid_forward does not receive its parameter by name."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.weight = self.params.get('weight', shape=(3,))

    def hybrid_forward(self, F, x, *args):
        return x


class Eager(gluon.Block):
    """A plain Block: its forward reads the weight itself."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.weight = self.params.get('weight', shape=(3, 3))

    def forward(self, x):
        return nd.dot(x, self.weight.data(x.context))


def _kind(name):
    """``(net, input of batch 4, the block that owns the masked parameter, its attribute)``."""
    rng = np.random.RandomState(7)
    net = nn.HybridSequential(prefix='net_')
    with net.name_scope():
        if name == 'dense':
            net.add(nn.Dense(5, in_units=6, activation='tanh'), nn.Dense(3, in_units=5))
            x, owner, attr = rng.randn(4, 6), 0, 'weight'
        elif name == 'conv1d':
            net.add(nn.Conv1D(4, 3, in_channels=2, padding=1), nn.Dense(3))
            x, owner, attr = rng.randn(4, 2, 6), 0, 'weight'
        elif name == 'conv2d':
            net.add(nn.Conv2D(4, 3, in_channels=2), nn.Dense(3))
            x, owner, attr = rng.randn(4, 2, 5, 5), 0, 'weight'
        elif name == 'conv3d':
            net.add(nn.Conv3D(3, 2, in_channels=2), nn.Dense(3))
            x, owner, attr = rng.randn(4, 2, 3, 3, 3), 0, 'weight'
        elif name == 'conv1dtranspose':
            net.add(nn.Conv1DTranspose(3, 3, strides=2, in_channels=2), nn.Dense(3))
            x, owner, attr = rng.randn(4, 2, 4), 0, 'weight'
        elif name == 'conv2dtranspose':
            net.add(nn.Conv2DTranspose(4, 3, strides=2, padding=1, output_padding=1, groups=2,
                                       in_channels=2, activation='relu'), nn.Dense(3))
            x, owner, attr = rng.randn(4, 2, 3, 3), 0, 'weight'
        elif name == 'conv3dtranspose':
            net.add(nn.Conv3DTranspose(2, (1, 2, 2), strides=(1, 2, 1), in_channels=2),
                    nn.Dense(3))
            x, owner, attr = rng.randn(4, 2, 2, 3, 3), 0, 'weight'
        elif name == 'embedding':
            net.add(nn.Embedding(10, 4), nn.Dense(3, in_units=12))
            x, owner, attr = rng.randint(0, 10, size=(4, 3)), 0, 'weight'
        elif name == 'batchnorm':
            net.add(nn.Conv2D(3, 1, in_channels=2), nn.BatchNorm(in_channels=3), nn.Dense(3))
            x, owner, attr = rng.randn(4, 2, 3, 3), 1, 'gamma'
        elif name == 'lstm':
            net.add(rnn.LSTM(4, num_layers=2, input_size=3, layout='NTC'), nn.Dense(3))
            x, owner, attr = rng.randn(4, 5, 3), 0, 'l1_h2h_weight'
        elif name == 'user':
            net.add(nn.Dense(5, in_units=6), Scale(5), nn.Dense(3, in_units=5))
            x, owner, attr = rng.randn(4, 6), 1, 'scale'
        else:
            raise ValueError(name)
    return net, x.astype('float32'), net[owner], attr


KINDS = ['dense', 'conv1d', 'conv2d', 'conv3d', 'conv1dtranspose', 'conv2dtranspose',
         'conv3dtranspose', 'embedding', 'batchnorm', 'lstm', 'user']


def _twin(name, ctxs):
    """Two identical initialised nets of one kind (the masked one, the reference)."""
    net, x, owner, attr = _kind(name)
    ref, _, ref_owner, _ = _kind(name)
    mx.random.seed(3)
    for n in (net, ref):
        n.initialize(mx.init.Uniform(0.5), ctx=ctxs)
    # Finish deferred shapes, then give both nets the same values. The masked net finishes
    # them with a predict-mode forward, as users do (MKLDNN may leave conv weights in its
    # blocked layout); the reference in training mode, because MXNet 1.9.1 fails ("could not
    # execute a primitive") when a blocked Deconvolution weight is overwritten by set_data.
    net(nd.array(x[:1], ctx=ctxs[0]))
    with autograd.record():
        ref(nd.array(x[:1], ctx=ctxs[0]))
    for p, q in zip(net.collect_params().values(), ref.collect_params().values()):
        q.set_data(p.data(ctxs[0]).copy())
    return net, ref, x, owner, ref_owner, attr


def _mask_for(param, seed=0, binary=True):
    rng = np.random.RandomState(seed)
    shape = param.shape
    if binary:
        mask = (rng.rand(*shape) > 0.4).astype('float32')
        mask.reshape(-1)[0] = 0
        return mask
    return rng.uniform(0.0, 2.0, size=shape).astype('float32')


def _run(net, x, ctxs, coef, train=True):
    """One forward per context (split batch) and backward; the outputs, concatenated."""
    xs = gluon.utils.split_and_load(nd.array(x), ctxs, even_split=False)
    outs, losses = [], []
    with autograd.record(train_mode=train):
        for xi in xs:
            out = net(xi)
            outs.append(out)
            losses.append((out * nd.array(coef, ctx=xi.context)[:out.shape[0]]).sum())
    autograd.backward(losses)
    return np.concatenate([o.asnumpy() for o in outs])


# --------------------------------------------------------------------------- forward, backward

@pytest.mark.parametrize('nctx', [1, 2])
@pytest.mark.parametrize('hybrid', [False, True])
@pytest.mark.parametrize('when', ['before', 'after'])
@pytest.mark.parametrize('kind', KINDS)
def test_forward_and_gradient_equal_reference(kind, nctx, hybrid, when):
    ctxs = CTXS[nctx]
    net, ref, x, owner, ref_owner, attr = _twin(kind, ctxs)
    weight, ref_weight = getattr(owner, attr), getattr(ref_owner, attr)
    if hybrid:
        net.hybridize()
        ref.hybridize()
    coef = np.random.RandomState(1).randn(4, 3).astype('float32')
    if when == 'after':   # the net already ran (and built its cached graphs)
        _run(net, x, ctxs, coef)
    stored = weight.data(ctxs[0]).asnumpy()
    mask = _mask_for(weight)
    assert ps.apply_mask(net, weight.name, mask) == [weight.name]
    ref_weight.set_data(nd.array(stored * mask))

    out = _run(net, x, ctxs, coef)
    expected = _run(ref, x, ctxs, coef)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    for ctx in ctxs:
        grad = weight.grad(ctx).asnumpy()
        np.testing.assert_allclose(grad, mask * ref_weight.grad(ctx).asnumpy(),
                                   rtol=1e-5, atol=1e-6)
        assert not grad[mask == 0].any()
        # the stored weight itself is untouched, on every context
        np.testing.assert_array_equal(weight.data(ctx).asnumpy(), stored)
    # every other parameter gets the reference gradient
    others = [(p, q) for (n, p), q in zip(
        [(n, p) for n, p in net.collect_params().items() if not n.endswith('_mask')],
        ref.collect_params().values()) if p is not weight and p.grad_req != 'null']
    for p, q in others:
        for ctx in ctxs:
            np.testing.assert_allclose(p.grad(ctx).asnumpy(), q.grad(ctx).asnumpy(),
                                       rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('nctx', [1, 2])
def test_mask_parameter_layout(nctx):
    ctxs = CTXS[nctx]
    net, _, x, owner, _, attr = _twin('dense', ctxs)
    ps.apply_mask(net, 'net_dense0_weight', 0.5)
    mask = owner.weight_mask
    assert mask.name == 'net_dense0_weight_mask'
    assert mask.grad_req == 'null' and mask.list_ctx() == ctxs
    assert np.dtype(mask.dtype) == np.float32 and mask.shape == owner.weight.shape
    assert net.collect_params()['net_dense0_weight_mask'] is mask
    # grad_req cannot be turned on by a blanket setattr (masks are not differentiable)
    net.collect_params().setattr('grad_req', 'write')
    assert mask.grad_req == 'null'
    for arr in mask.list_data():
        assert (arr.asnumpy() == 0.5).all()
    assert ps.check_params(net) == []


@pytest.mark.parametrize('hybrid', [False, True])
def test_masked_inside_record_before_forward(hybrid):
    net, ref, x, owner, ref_owner, attr = _twin('dense', CTXS[2])
    if hybrid:
        net.hybridize()
    coef = np.ones((4, 3), 'float32')
    mask = _mask_for(owner.weight)
    xs = gluon.utils.split_and_load(nd.array(x), CTXS[2])
    with autograd.record():
        ps.apply_mask(net, owner.weight, mask)
        losses = [(net(xi) * nd.array(coef, ctx=xi.context)[:2]).sum() for xi in xs]
    autograd.backward(losses)
    ref_owner.weight.set_data(nd.array(owner.weight.data().asnumpy() * mask))
    _run(ref, x, CTXS[2], coef)
    for ctx in CTXS[2]:
        np.testing.assert_allclose(owner.weight.grad(ctx).asnumpy(),
                                   mask * ref_owner.weight.grad(ctx).asnumpy(), rtol=1e-5)


def test_shared_weight_is_masked_in_every_block_that_uses_it():
    net = nn.HybridSequential(prefix='net_')
    with net.name_scope():
        first = nn.Dense(4, in_units=4, use_bias=False)
        net.add(first, nn.Dense(4, in_units=4, use_bias=False, params=first.params))
    net.initialize(mx.init.One())
    ps.apply_mask(net, 'net_dense0_weight', np.eye(4))
    np.testing.assert_array_equal(net(nd.ones((1, 4))).asnumpy(), [[1, 1, 1, 1]])
    assert ps.masked(net) == ['net_dense0_weight']


# --------------------------------------------------------------------------- combine, get, remove

@pytest.mark.parametrize('nctx', [1, 2])
def test_combine_multiply_and_replace(nctx):
    net, _, x, owner, _, _ = _twin('dense', CTXS[nctx])
    name = owner.weight.name
    a, b = _mask_for(owner.weight, 1), _mask_for(owner.weight, 2)
    ps.apply_mask(net, name, a)
    ps.apply_mask(net, name, b)                       # a second pruning never revives
    np.testing.assert_array_equal(ps.get_mask(net, name)[name].asnumpy(), a * b)
    ps.apply_mask(net, name, np.array([3.0]), combine='multiply')   # broadcast scaling
    np.testing.assert_array_equal(ps.get_mask(net, name)[name].asnumpy(), a * b * 3)
    ps.apply_mask(net, {name: b}, combine='replace')
    for arr in owner.weight_mask.list_data():
        np.testing.assert_array_equal(arr.asnumpy(), b)
    with pytest.raises(ValueError, match="combine must be 'multiply' or 'replace'"):
        ps.apply_mask(net, name, a, combine='add')


def test_mask_on_its_own_parameter_data_is_read_before_writing():
    net, _, _, owner, _, _ = _twin('dense', CTXS[2])
    name = owner.weight.name
    a = _mask_for(owner.weight, 1, binary=False)
    ps.apply_mask(net, name, a)
    ps.apply_mask(net, name, owner.weight_mask.data(mx.cpu(1)))   # squares it
    for arr in owner.weight_mask.list_data():
        np.testing.assert_allclose(arr.asnumpy(), a * a, rtol=1e-6)


def test_get_mask_returns_copies_on_first_context():
    net, _, _, owner, _, _ = _twin('dense', CTXS[2])
    ps.apply_mask(net, '.*dense0.*', 0.0)
    got = ps.get_mask(net, '.*dense0.*')
    assert list(got) == ['net_dense0_weight', 'net_dense0_bias']
    assert all(m.context == mx.cpu(0) for m in got.values())
    got['net_dense0_weight'][:] = 7
    assert (owner.weight_mask.data(mx.cpu(0)).asnumpy() == 0).all()
    with pytest.raises(ps.SelectionError, match="'net_dense1_weight' has no mask"):
        ps.get_mask(net, '.*weight')
    with pytest.raises(KeyError):
        ps.get_mask(net, 'nothing_like_this')


def test_masked_lists_in_collect_params_order():
    net, _, _, _, _, _ = _twin('dense', CTXS[1])
    assert ps.masked(net) == []
    ps.apply_mask(net, {'net_dense1_weight': 1.0, 'net_dense0_bias': 0.0})
    assert ps.masked(net) == ['net_dense0_bias', 'net_dense1_weight']
    assert ps.masked(net.collect_params()) == ['net_dense0_bias', 'net_dense1_weight']


def test_masks_are_never_selected():
    net, _, _, _, _, _ = _twin('dense', CTXS[1])
    ps.apply_mask(net, '.*weight', 1.0)
    # '.*weight' also matches 'net_dense0_weight_mask' under re.match: masks are skipped
    assert ps.apply_mask(net, '.*weight', 0.5) == ['net_dense0_weight', 'net_dense1_weight']
    assert not any(n.endswith('_mask_mask') for n in net.collect_params())
    with pytest.raises(ValueError, match="'net_dense0_weight_mask' is itself a mask"):
        ps.apply_mask(net, 'net_dense0_weight_mask', 0.0)
    with pytest.raises(KeyError):
        ps.apply_mask(net, '.*weight_mask', 0.0)


@pytest.mark.parametrize('hybrid', [False, True])
@pytest.mark.parametrize('bake', [True, False])
def test_remove_mask(hybrid, bake):
    net, _, x, owner, _, _ = _twin('dense', CTXS[2])
    if hybrid:
        net.hybridize()
    coef = np.ones((4, 3), 'float32')
    stored = owner.weight.data().asnumpy()
    mask = _mask_for(owner.weight, binary=False)
    ps.apply_mask(net, owner.weight, mask)
    masked_out = _run(net, x, CTXS[2], coef)
    assert ps.remove_mask(net, 'net_dense0_weight', bake=bake) == ['net_dense0_weight']
    assert ps.masked(net) == [] and 'net_dense0_weight_mask' not in net.collect_params()
    assert 'hybrid_forward' not in vars(owner) and not hasattr(owner, 'weight_mask')
    for arr in owner.weight.list_data():
        np.testing.assert_allclose(arr.asnumpy(), stored * mask if bake else stored, rtol=1e-6)
    out = _run(net, x, CTXS[2], coef)
    if bake:
        np.testing.assert_allclose(out, masked_out, rtol=1e-5, atol=1e-6)
    else:
        assert not np.allclose(out, masked_out)
    assert ps.check_params(net) == []
    with pytest.raises(ps.SelectionError, match='has no mask'):
        ps.remove_mask(net, 'net_dense0_weight')
    ps.apply_mask(net, owner.weight, mask)     # can be applied again
    assert ps.masked(net) == ['net_dense0_weight']


# --------------------------------------------------------------------------- validation

def _snapshot(net):
    return (list(net.collect_params()),
            [sorted(vars(b)) for b in _mx.walk_blocks(net)],
            [p.data().asnumpy().tobytes() for p in net.collect_params().values()])


@pytest.mark.parametrize('bad, error, match', [
    (np.ones((5, 5)), ps.SurgeryValueError, 'does not broadcast'),
    (np.full((5, 6), np.nan), ps.SurgeryValueError, 'non-finite'),
    (float('inf'), ps.SurgeryValueError, 'non-finite'),
    ('abc', ps.SurgeryTypeError, 'must be a Python number'),
    (np.array(['a']), ps.SurgeryTypeError, 'numeric'),
])
def test_bad_mask_changes_nothing(bad, error, match):
    net, _, x, _, _, _ = _twin('dense', CTXS[2])
    net.hybridize()
    net(nd.array(x[:1]))
    before = _snapshot(net)
    # the first entry is fine, the second is not: all or nothing
    with pytest.raises(error, match=match) as info:
        ps.apply_mask(net, {'net_dense1_weight': 0.0, 'net_dense0_weight': bad})
    assert 'net_dense0_weight' in str(info.value)
    assert _snapshot(net) == before
    assert ps.masked(net) == []


def test_required_mask_and_unknown_key():
    net, _, _, _, _, _ = _twin('dense', CTXS[1])
    with pytest.raises(TypeError, match='A mask is required'):
        ps.apply_mask(net, '.*weight')
    with pytest.raises(ps.SelectionError, match="'net_dense0_wieght'"):
        ps.apply_mask(net, 'net_dense0_wieght', 0.0)
    with pytest.raises(ps.SurgeryTypeError, match='gluon.Block'):
        ps.apply_mask(net.collect_params(), '.*weight', 0.0)
    assert ps.masked(net) == []


@pytest.mark.parametrize('case', ['anonymous', 'eager', 'running_mean', 'sparse', 'symbol',
                                  'deferred', 'attribute-taken', 'deconv-nhwc'])
def test_unsupported_blocks_raise_before_changing_anything(case, tmp_path):
    net = nn.HybridSequential(prefix='net_') if case != 'eager' else nn.Sequential(prefix='net_')
    with net.name_scope():
        net.add(nn.Dense(3, in_units=3))
        if case == 'anonymous':
            net.add(Anonymous())
            key, error, match = '.*anonymous0_weight', TypeError, 'does not receive'
        elif case == 'eager':
            net.add(Eager())
            key, error, match = '.*eager0_weight', TypeError, 'not a HybridBlock'
        elif case == 'running_mean':
            net.add(nn.BatchNorm(in_channels=3))
            key, error, match = '.*running_mean', ValueError, 'updates in place'
        elif case == 'sparse':
            net.add(nn.Embedding(5, 3, sparse_grad=True))
            key, error, match = '.*embedding0_weight', TypeError, 'storage type'
        elif case == 'deferred':
            net.add(nn.Dense(3))
            key, error, match = '.*dense1_weight', RuntimeError, 'deferred'
        elif case == 'deconv-nhwc':
            if not forward.mkldnn_enabled():
                pytest.skip('channel-last transposed convolutions are refused on MKLDNN only')
            net.add(nn.Conv2DTranspose(3, 3, in_channels=3, layout='NHWC'))
            key, error, match = '.*conv0_weight', TypeError, 'channel-first'
        elif case == 'attribute-taken':
            net.add(nn.Dense(3, in_units=3))
            net[1].weight_mask = 1.0
            key, error, match = '.*dense1_weight', ValueError, "already has an attribute"
    net.initialize()
    if case == 'symbol':
        net.hybridize()
        net(nd.ones((1, 3)))
        net.export(str(tmp_path / 'm'))
        net = gluon.SymbolBlock.imports(str(tmp_path / 'm-symbol.json'), 'data',
                                        str(tmp_path / 'm-0000.params'))
        key, error, match = '.*weight', TypeError, 'SymbolBlock'
    before = list(net.collect_params())
    blocks = [sorted(vars(b)) for b in _mx.walk_blocks(net)]
    with pytest.raises(error, match=match) as info:
        ps.apply_mask(net, ['net_dense0_bias', key], 0.0)
    assert isinstance(info.value, ps.ParamSurgeryError)
    assert list(net.collect_params()) == before
    assert [sorted(vars(b)) for b in _mx.walk_blocks(net)] == blocks


# --------------------------------------------------------------------------- training

def _trainer(net, kvstore, update_on_kvstore, optimizer='sgd', **opt):
    opt.setdefault('learning_rate', 0.5)
    return gluon.Trainer(net.collect_params(), optimizer, opt, kvstore=kvstore,
                         update_on_kvstore=update_on_kvstore)


def _copy_values(src, dst):
    """Give ``dst`` the current values of ``src``'s parameters (masks excluded)."""
    values = [p.data().copy() for n, p in src.collect_params().items()
              if not n.endswith('_mask')]
    for q, v in zip(dst.collect_params().values(), values):
        q.set_data(v)


# kvstore None with two contexts does not synchronise replicas (Gluon's behaviour): see
# test_training_without_kvstore_on_two_contexts.
TRAINERS = [('device', True, 2), ('device', False, 2), ('local', True, 2), (None, None, 1)]


@pytest.mark.parametrize('kvstore, update_on_kvstore, nctx', TRAINERS)
@pytest.mark.parametrize('hybrid', [False, True])
def test_training_masked_entries_never_move(kvstore, update_on_kvstore, nctx, hybrid):
    ctxs = CTXS[nctx]
    net, ref, x, owner, ref_owner, _ = _twin('conv2d', ctxs)
    if hybrid:
        net.hybridize()
    coef = np.random.RandomState(2).randn(4, 3).astype('float32')
    trainer = _trainer(net, kvstore, update_on_kvstore)   # built before the mask exists
    _run(net, x, ctxs, coef)
    trainer.step(4)
    mask = _mask_for(owner.weight)
    ps.apply_mask(net, owner.weight, mask)
    frozen = owner.weight.data().asnumpy()
    for step in range(3):
        before = owner.weight.data().asnumpy()
        _copy_values(net, ref)
        ref_owner.weight.set_data(nd.array(before * mask))
        _run(net, x, ctxs, coef)
        _run(ref, x, ctxs, coef)
        trainer.step(4)                   # no stale-gradient error, no ignore_stale_grad
        after = [w.asnumpy() for w in owner.weight.list_data()]
        grad = sum(ref_owner.weight.grad(c).asnumpy() for c in ctxs)
        for w in after:
            np.testing.assert_array_equal(w[mask == 0], frozen[mask == 0])
            np.testing.assert_allclose(w, before - 0.5 / 4 * mask * grad, rtol=1e-4, atol=1e-5)
        for w in after[1:]:
            np.testing.assert_array_equal(w, after[0])
        if step == 1:   # a second pruning while training
            extra = _mask_for(owner.weight, 5)
            ps.apply_mask(net, owner.weight, extra)
            mask = mask * extra
            frozen = after[0]
    assert ps.check_params(net) == []


@pytest.mark.parametrize('hybrid', [False, True])
def test_training_without_kvstore_on_two_contexts(hybrid):
    # Without a kvstore each replica is updated with its own gradient; masked entries of
    # every replica still never move.
    ctxs = CTXS[2]
    net, _, x, owner, _, _ = _twin('conv2d', ctxs)
    if hybrid:
        net.hybridize()
    coef = np.random.RandomState(2).randn(4, 3).astype('float32')
    mask = _mask_for(owner.weight)
    ps.apply_mask(net, owner.weight, mask)
    trainer = _trainer(net, None, None)
    frozen = [w.asnumpy() for w in owner.weight.list_data()]
    for _ in range(2):
        before = [w.asnumpy() for w in owner.weight.list_data()]
        _run(net, x, ctxs, coef)
        grads = [g.asnumpy() for g in owner.weight.list_grad()]
        trainer.step(4)
        for w, b, g, f in zip(owner.weight.list_data(), before, grads, frozen):
            assert not g[mask == 0].any()
            np.testing.assert_array_equal(w.asnumpy()[mask == 0], f[mask == 0])
            np.testing.assert_allclose(w.asnumpy(), b - 0.5 / 4 * g, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('kvstore, update_on_kvstore, nctx', TRAINERS[:2] + TRAINERS[3:])
def test_training_with_momentum_and_weight_decay_keeps_effective_weight_zero(
        kvstore, update_on_kvstore, nctx):
    ctxs = CTXS[nctx]
    net, _, x, owner, _, _ = _twin('dense', ctxs)
    net.hybridize()
    coef = np.ones((4, 3), 'float32')
    mask = _mask_for(owner.weight)
    ps.apply_mask(net, owner.weight, mask)
    trainer = _trainer(net, kvstore, update_on_kvstore, momentum=0.9, wd=0.1)
    for _ in range(2):
        _run(net, x, ctxs, coef)
        trainer.step(4)
    mask_now = ps.get_mask(net, owner.weight)[owner.weight.name].asnumpy()
    np.testing.assert_array_equal(mask_now, mask)       # masks are not trained
    effective = owner.weight.data().asnumpy() * mask_now
    assert not effective[mask == 0].any()
    assert ps.check_params(net) == []


@pytest.mark.parametrize('update_on_kvstore', [True, False])
def test_remove_mask_bake_survives_the_trainer(update_on_kvstore):
    net, _, x, owner, _, _ = _twin('dense', CTXS[2])
    net.hybridize()
    coef = np.ones((4, 3), 'float32')
    mask = _mask_for(owner.weight)
    ps.apply_mask(net, owner.weight, mask)
    trainer = _trainer(net, 'device', update_on_kvstore, momentum=0.5)
    _run(net, x, CTXS[2], coef)
    trainer.step(4)
    ps.remove_mask(net, owner.weight)
    baked = owner.weight.data().asnumpy()
    assert not baked[mask == 0].any()
    _run(net, x, CTXS[2], coef)
    grad = owner.weight.grad(mx.cpu(0)).asnumpy() + owner.weight.grad(mx.cpu(1)).asnumpy()
    trainer.step(4)
    w = owner.weight.data().asnumpy()
    # the step started from the baked weight (the kvstore copy did not undo the bake);
    # the momentum of the masked entries was zero, so they move by exactly lr * grad / 4
    np.testing.assert_allclose(w[mask == 0], -0.5 / 4 * grad[mask == 0], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize('hybrid', [False, True])
def test_mkldnn_blocked_weight_is_restored_in_place(hybrid):
    ctxs = CTXS[2]
    net = nn.HybridSequential(prefix='net_')
    with net.name_scope():
        net.add(nn.Conv2D(32, 3, in_channels=16), nn.Dense(3))
    net.initialize(ctx=ctxs)
    owner = net[0]
    x = np.random.RandomState(0).randn(4, 16, 5, 5).astype('float32')
    coef = np.ones((4, 3), 'float32')
    trainer = _trainer(net, 'device', True)
    _run(net, x, ctxs, coef)
    trainer.step(4)
    _run(net, x, ctxs, coef)                # a gradient pending when the mask arrives
    nd.waitall()
    if not forward.mkldnn_enabled():
        pytest.skip('this MXNet build has no MKLDNN')
    arrays = owner.weight.list_data()
    for _ in range(5):
        for ctx in ctxs:
            net(nd.array(x, ctx=ctx))       # predict mode: MKLDNN reorders the weight in place
        nd.waitall()
        # a training-mode reorder back to the default layout may still have been pending
        if all(forward.is_blocked_layout(a) for a in arrays):
            break
    assert any(forward.is_blocked_layout(a) for a in arrays)
    values = [a.asnumpy() for a in arrays]
    mask = _mask_for(owner.weight)
    ps.apply_mask(net, owner.weight, mask)
    assert not any(forward.is_blocked_layout(a) for a in owner.weight.list_data())
    assert all(a is b for a, b in zip(arrays, owner.weight.list_data()))   # same arrays
    for a, v in zip(arrays, values):
        np.testing.assert_array_equal(a.asnumpy(), v)                        # same values
    trainer.step(4)                         # the pending gradient is still fresh
    if hybrid:
        net.hybridize()
    before = owner.weight.data().asnumpy()
    _run(net, x, ctxs, coef)
    grad = sum(g.asnumpy() for g in owner.weight.list_grad())
    trainer.step(4)                         # still a leaf with its gradient buffer
    assert not grad[mask == 0].any() and grad.any()
    for w in owner.weight.list_data():
        np.testing.assert_allclose(w.asnumpy(), before - 0.5 / 4 * grad, rtol=1e-4, atol=1e-5)
        assert not forward.is_blocked_layout(w)
    for ctx in ctxs:                        # predict mode again: the conv only sees w * mask
        net(nd.array(x, ctx=ctx))
    nd.waitall()                            # a reorder would be queued by the running forward
    assert not any(forward.is_blocked_layout(a) for a in owner.weight.list_data())
    assert ps.check_params(net) == []


def test_cast_reaches_the_mask():
    net, _, x, owner, _, _ = _twin('dense', CTXS[2])
    mask = _mask_for(owner.weight)
    ps.apply_mask(net, owner.weight, mask)
    net.cast('float16')
    for arr in owner.weight_mask.list_data():
        assert arr.dtype == np.float16
        np.testing.assert_array_equal(arr.asnumpy(), mask)
    assert np.dtype(owner.weight_mask.dtype) == np.float16
    ps.apply_mask(net, owner.weight, 0.5)        # fp16 masks combine too
    assert np.dtype(owner.weight_mask.dtype) == np.float16
    # float16 FullyConnected needs cuDNN: run the graph in float64 on the CPU
    net.cast('float64')
    net.hybridize()
    weight = owner.weight.data().asnumpy() * mask * 0.5
    hidden = np.tanh(x.astype('float64') @ weight.T + owner.bias.data().asnumpy())
    expected = hidden @ net[1].weight.data().asnumpy().T + net[1].bias.data().asnumpy()
    for ctx in CTXS[2]:
        out = net(nd.array(x, dtype='float64', ctx=ctx))
        assert out.dtype == np.float64
        np.testing.assert_allclose(out.asnumpy(), expected, rtol=1e-6)


def test_deepcopy_keeps_masks_independent():
    net, _, x, owner, _, _ = _twin('dense', CTXS[1])
    ps.apply_mask(net, owner.weight, 0.0)
    clone = copy.deepcopy(net)
    assert ps.masked(clone) == ['net_dense0_weight']
    out = clone(nd.array(x)).asnumpy()
    np.testing.assert_allclose(out, net(nd.array(x)).asnumpy())


# --------------------------------------------------------------------------- persistence

@pytest.mark.parametrize('kind', ['dense', 'lstm', 'batchnorm'])
def test_save_and_load_parameters_round_trip(kind, tmp_path):
    net, other, x, owner, other_owner, attr = _twin(kind, CTXS[2])
    weight = getattr(owner, attr)
    mask = _mask_for(weight, binary=False)
    ps.apply_mask(net, weight, mask)
    path = str(tmp_path / 'p.params')
    net.save_parameters(path)
    saved = nd.load(path)
    mask_keys = [k for k in saved if k.endswith('_mask')]
    assert len(mask_keys) == 1
    if kind == 'dense':
        assert mask_keys == ['0.weight_mask']
    if kind == 'lstm':
        assert mask_keys == ['0._unfused.1.h2h_weight_mask']
    # a net with the same masks registered (any values) loads weights and masks
    ps.apply_mask(other, getattr(other_owner, attr), 1.0)
    other.load_parameters(path, ctx=CTXS[2])
    np.testing.assert_allclose(
        ps.get_mask(other, getattr(other_owner, attr))[getattr(other_owner, attr).name]
        .asnumpy(), mask)
    np.testing.assert_allclose(other(nd.array(x)).asnumpy(), net(nd.array(x)).asnumpy(),
                               rtol=1e-5, atol=1e-6)


def _bits_per_weight(path, net):
    size = sum(np.prod(net.collect_params()[n].shape) for n in ps.masked(net))
    return os.path.getsize(path) * 8.0 / size


def test_save_and_load_masks_bit_packed(tmp_path):
    def build(prefix):
        net = nn.HybridSequential(prefix=prefix)
        with net.name_scope():
            net.add(nn.Dense(256, in_units=256), nn.Dense(128, in_units=256),
                    nn.Dense(10, in_units=128))
        net.initialize(ctx=CTXS[2])
        return net
    net = build('a_')
    rng = np.random.RandomState(0)
    masks = {'a_dense0_weight': (rng.rand(256, 256) > 0.5),
             'a_dense1_weight': (rng.rand(128, 256) > 0.9)}
    ps.apply_mask(net, {k: v.astype('float32') for k, v in masks.items()})
    path = str(tmp_path / 'masks')
    assert ps.save_masks(net, path) == ['0.weight', '1.weight']
    assert os.path.exists(path)                         # written exactly at path
    assert _bits_per_weight(path, net) <= 1.1
    fresh = build('b_')                                  # other prefixes, no masks yet
    assert ps.load_masks(fresh, path) == ['b_dense0_weight', 'b_dense1_weight']
    for key, expect in masks.items():
        name = key.replace('a_', 'b_')
        for arr in fresh.collect_params()[name + '_mask'].list_data():
            np.testing.assert_array_equal(arr.asnumpy(), expect)
    x = nd.array(rng.randn(2, 256))
    fresh.collect_params().setattr('grad_req', 'write')
    for p, q in zip([p for n, p in net.collect_params().items() if not n.endswith('_mask')],
                    [p for n, p in fresh.collect_params().items() if not n.endswith('_mask')]):
        q.set_data(p.data())
    np.testing.assert_allclose(fresh(x).asnumpy(), net(x).asnumpy(), rtol=1e-5, atol=1e-6)
    # loading again replaces (default), it does not multiply
    ps.apply_mask(fresh, 'b_dense0_weight', 0.0)
    ps.load_masks(fresh, path)
    np.testing.assert_array_equal(ps.get_mask(fresh, 'b_dense0_weight')['b_dense0_weight']
                                  .asnumpy(), masks['a_dense0_weight'])


def test_save_and_load_non_binary_masks_exactly(tmp_path):
    net, other, _, owner, other_owner, attr = _twin('lstm', CTXS[1])
    mask = _mask_for(getattr(owner, attr), binary=False)
    ps.apply_mask(net, getattr(owner, attr), mask)
    ps.apply_mask(net, '.*dense0_bias', 0.25)
    path = str(tmp_path / 'm.npz')
    assert ps.save_masks(net, path) == ['0._unfused.1.h2h_weight', '1.bias']
    ps.load_masks(other, path)
    got = ps.get_mask(other, ps.masked(other))
    np.testing.assert_array_equal(got[getattr(other_owner, attr).name].asnumpy(), mask)
    np.testing.assert_array_equal(got['net_dense0_bias'].asnumpy(), [0.25] * 3)


@pytest.mark.parametrize('nctx', [1, 2])
@pytest.mark.parametrize('hybridize', [False, True])
def test_load_masks_into_a_deferred_net_says_run_one_forward(nctx, hybridize, tmp_path):
    # issue 18: it said "load it into a net of the same architecture" (shape (4, 0))
    def build():
        net = nn.HybridSequential()
        net.add(nn.Dense(4), nn.Dense(2))
        net.initialize(mx.init.Uniform(), ctx=CTXS[nctx])
        if hybridize:
            net.hybridize()
        return net
    x = nd.array(np.random.RandomState(0).uniform(-1, 1, (2, 3)))
    source = build()
    source(x.as_in_context(CTXS[nctx][0]))
    ps.prune_magnitude(source, '.*weight', 0.5)
    path = str(tmp_path / 'm.npz')
    ps.save_masks(source, path)
    fresh = build()
    with pytest.raises(ps.ParameterStateError, match=r"deferred until the first forward.*"
                                                      r"Run one forward pass"):
        ps.load_masks(fresh, path)
    assert ps.masked(fresh) == []
    fresh(x.as_in_context(CTXS[nctx][0]))
    assert ps.load_masks(fresh, path) == [p.name for p in fresh.collect_params().values()
                                          if p.name.endswith('weight')]
    for mine, theirs in zip(ps.masked(fresh), ps.masked(source)):
        expected = ps.get_mask(source, theirs)[theirs].asnumpy()
        replicas = fresh.collect_params()[mine + '_mask'].list_data()
        assert len(replicas) == nctx
        for replica in replicas:     # every context's copy
            np.testing.assert_array_equal(replica.asnumpy(), expected)


def test_load_masks_errors_change_nothing(tmp_path):
    net, _, _, owner, _, _ = _twin('dense', CTXS[1])
    ps.apply_mask(net, owner.weight, _mask_for(owner.weight))
    path = str(tmp_path / 'm.npz')
    ps.save_masks(net, path)
    wrong = nn.HybridSequential(prefix='w_')
    with wrong.name_scope():
        wrong.add(nn.Dense(5, in_units=7), nn.Dense(3, in_units=5))
    wrong.initialize()
    with pytest.raises(ValueError, match='shape'):
        ps.load_masks(wrong, path)
    with pytest.raises(KeyError, match="mask for '0.weight'"):
        ps.load_masks(nn.HybridSequential(), path)
    (tmp_path / 'junk').write_bytes(b'not a zip')
    with pytest.raises(ps.FileFormatError, match='junk.* not a mask file .*npz'):
        ps.load_masks(wrong, str(tmp_path / 'junk'))
    assert ps.masked(wrong) == []


@pytest.mark.parametrize('nctx', [1, 2])
def test_export_round_trip(nctx, tmp_path):
    ctxs = CTXS[nctx]
    net, _, x, owner, _, _ = _twin('conv2d', ctxs)
    mask = _mask_for(owner.weight)
    ps.apply_mask(net, owner.weight, mask)
    net.hybridize()
    out = net(nd.array(x, ctx=ctxs[0])).asnumpy()
    prefix = str(tmp_path / 'model')
    net.export(prefix)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        loaded = ps.load_exported(prefix + '-symbol.json', 'data', prefix + '-0000.params', ctxs)
    # issue 18: MXNet's "Cannot decide type ... data: None" is noise to a user loading a model
    assert [str(w.message) for w in caught] == []
    assert ps.masked(loaded) == [owner.weight.name]
    params = loaded.collect_params()
    assert params[owner.weight.name + '_mask'].grad_req == 'null'
    assert params[owner.weight.name].grad_req == 'write'
    for ctx in ctxs:
        np.testing.assert_allclose(loaded(nd.array(x, ctx=ctx)).asnumpy(), out,
                                   rtol=1e-5, atol=1e-6)
    # the imported net trains with the mask in its graph and the mask stays put
    trainer = gluon.Trainer(params, 'sgd', {'learning_rate': 0.1})
    stored = params[owner.weight.name].data().asnumpy()
    _run(loaded, x, ctxs, np.ones((4, 3), 'float32'))
    trainer.step(4)
    np.testing.assert_array_equal(params[owner.weight.name].data().asnumpy()[mask == 0],
                                  stored[mask == 0])
    np.testing.assert_array_equal(ps.get_mask(loaded, ps.masked(loaded))[owner.weight.name]
                                  .asnumpy(), mask)
    with pytest.raises(TypeError, match='was not registered by ps.apply_mask'):
        ps.remove_mask(loaded, owner.weight.name)
    # the mask of the fixed graph can still be rewritten by value surgery
    assert params[owner.weight.name + '_mask'].shape == owner.weight.shape
    ps.set_params(loaded, owner.weight.name + '_mask', 1.0)
    for name, p in params.items():        # same full names in both nets
        net.collect_params()[name].set_data(p.data(ctxs[0]))
    assert (ps.get_mask(net, owner.weight)[owner.weight.name] == 1).asnumpy().all()
    for ctx in ctxs:
        np.testing.assert_allclose(loaded(nd.array(x, ctx=ctx)).asnumpy(),
                                   net(nd.array(x, ctx=ctx)).asnumpy(), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- model zoo

@pytest.mark.zoo
@pytest.mark.parametrize('model', ['resnet18_v1', 'mobilenet0.25'])
def test_model_zoo_every_conv_masked_one_step_on_two_contexts(model):
    ctxs = CTXS[2]
    net = gluon.model_zoo.vision.get_model(model, pretrained=False, classes=10)
    net.initialize(mx.init.Xavier(), ctx=ctxs)
    net.hybridize()
    x = nd.random.uniform(shape=(4, 3, 32, 32))
    for xi in gluon.utils.split_and_load(x, ctxs):
        net(xi)                               # finish deferred init (predict mode)
    convs = [b.weight for b in _mx.walk_blocks(net) if isinstance(b, nn.Conv2D)]
    rng = np.random.RandomState(0)
    masks = {p.name: (rng.rand(*p.shape) > 0.5).astype('float32') for p in convs}
    assert ps.apply_mask(net, masks) == [p.name for p in convs]
    stored = {p.name: p.data().asnumpy() for p in convs}
    trainer = gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': 0.1,
                                                          'momentum': 0.9})
    y = nd.array(rng.randint(0, 10, size=4))
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    with autograd.record():
        losses = [loss_fn(net(xi), yi) for xi, yi in zip(
            gluon.utils.split_and_load(x, ctxs), gluon.utils.split_and_load(y, ctxs))]
    autograd.backward(losses)
    trainer.step(4)
    moved = 0
    for p in convs:
        mask = masks[p.name]
        for ctx in ctxs:
            assert not p.grad(ctx).asnumpy()[mask == 0].any()
        after = [w.asnumpy() for w in p.list_data()]
        np.testing.assert_array_equal(after[0][mask == 0], stored[p.name][mask == 0])
        np.testing.assert_array_equal(after[0], after[1])
        moved += int((after[0] != stored[p.name]).any())
    assert moved == len(convs)
    assert ps.check_params(net) == []


def test_check_params_compares_mask_replicas():
    net, _, _, owner, _, _ = _twin('dense', CTXS[2])
    ps.apply_mask(net, owner.weight, 1.0)
    with autograd.pause():
        owner.weight_mask.data(mx.cpu(1))[0, 0] = 0.0    # an edit that reached one context
    problems = ps.check_params(net)
    assert [(p.name, p.context, p.code) for p in problems] == [
        ('net_dense0_weight_mask', mx.cpu(1), 'replicas-diverged')]


@pytest.mark.parametrize('mode', ['graph', 'update'])
@pytest.mark.parametrize('n_ctx', [1, 2])
def test_new_mask_from_a_numpy_array_reads_it_before_returning(n_ctx, mode):
    # A new mask is copied from the caller's numpy array in place (no temporary per
    # context): the copies are done before the call returns, and the array stays the
    # caller's (writable, unchanged).
    ctxs = CTXS[n_ctx]
    net = nn.Dense(3, in_units=4, prefix='fc_')
    net.initialize(mx.init.One(), ctx=ctxs)
    keep = (np.arange(12).reshape(3, 4) % 3 != 0).astype(np.float32)
    ps.apply_mask(net, 'fc_weight', keep, mode=mode)
    assert keep.flags.writeable
    keep[:] = 7   # a later change of the caller's array must not reach the mask
    expected = (np.arange(12).reshape(3, 4) % 3 != 0)
    mask = net.collect_params()['fc_weight_mask']
    for ctx, arr in zip(ctxs, mask.list_data()):
        assert arr.context == ctx
        np.testing.assert_array_equal(arr.asnumpy(), expected.astype(arr.dtype))
    for arr in net.weight.list_data():
        np.testing.assert_array_equal(arr.asnumpy(), expected if mode == 'update' else 1)


@pytest.mark.parametrize('mode', ['graph', 'update'])
@pytest.mark.parametrize('ctxs', [[mx.cpu(0)], [mx.cpu(0), mx.cpu(1)]], ids=['1ctx', '2ctx'])
def test_bool_masks_are_not_copied_as_floats_on_the_host(ctxs, mode):
    """A bool mask is written as it is: no float copy of it is made on the host (a whole
    set of masks was held so at once, as large as the weights: update mode's memory cost on
    resnet18_v1 was 11% instead of the masks' 2.4%). numpy's allocations are what
    tracemalloc sees; a float32 copy of the mask alone would be the weight's size."""
    import gc
    import tracemalloc
    net = nn.Dense(500, in_units=400, prefix='big_')
    net.initialize(mx.init.Xavier(), ctx=ctxs)
    weight = net.weight.data(ctxs[0]).asnumpy()
    keep = np.random.RandomState(0).randint(0, 2, size=weight.shape, dtype=np.uint8) \
        .view(bool)
    tracemalloc.start()
    try:
        ps.apply_mask(net, {'big_weight': keep}, mode=mode)
        mx.nd.waitall()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        # MXNet frees the NDArrays made over numpy memory (from_numpy) on its engine's
        # threads: stopping tracemalloc while one of them untracks a block crashed the
        # process (1 run in 5 under pytest); every such array is released first
        gc.collect()
        mx.nd.waitall()
        tracemalloc.stop()
    assert peak < weight.nbytes / 2, peak
    for ctx in ctxs:   # and written right, bit for bit, on every context
        mask = ps.get_mask(net, 'big_weight')['big_weight'].as_in_context(ctx).asnumpy()
        assert np.array_equal(mask, keep.astype(np.float32))
        stored = net.weight.data(ctx).asnumpy()
        assert np.array_equal(stored, weight if mode == 'graph' else weight * keep)
