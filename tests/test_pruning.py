"""Tests of net-level pruning (``pruning``: prune_magnitude, prune_random, prune_structured,
prune_custom, Pruner) on one and two contexts, hybridised and not.

The masks they compute come from the numpy core (test_pruning_core.py) and the schedules
(test_schedules.py); here: the masks reach the forward graph on every context, errors change
nothing, and a pruned net trains with its masked entries held at zero.
"""
import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon
from mxnet.gluon import nn
from mxnet.gluon.model_zoo import vision

import paramsurgery as ps

from helpers import assert_same_bits, split
from helpers import snapshot as net_snapshot


def conv_net(ctxs, hybridize, seed=0):
    net = nn.HybridSequential(prefix='cnn_')
    with net.name_scope():
        net.add(nn.Conv2D(6, 3, in_channels=2, activation='relu'), nn.Flatten(),
                nn.Dense(4, in_units=6 * 4 * 4))
    mx.random.seed(seed)
    net.initialize(mx.init.Xavier(), ctx=ctxs)
    if hybridize:
        net.hybridize()
    return net


WEIGHTS = r'.*weight$'


def effective(net, name, ctx_index=0):
    params = net.collect_params()
    w = params[name].list_data()[ctx_index].asnumpy()
    mask = params[name + '_mask'] if name + '_mask' in params.keys() else None
    return w * mask.list_data()[ctx_index].asnumpy() if mask is not None else w


def images(n=4, seed=3):
    return mx.nd.array(np.random.RandomState(seed).uniform(-1, 1, (n, 2, 6, 6)))


def test_prune_magnitude_layer_exact_and_in_the_graph(ctxs, hybridize):
    net = conv_net(ctxs, hybridize)
    x = images()
    net(x.as_in_context(ctxs[0]))   # already ran: cached graphs must be rebuilt
    stored = net_snapshot(net)
    names = ps.prune_magnitude(net, WEIGHTS, 0.5)
    assert names == ['cnn_conv0_weight', 'cnn_dense0_weight']
    for name in names:
        w = stored[name][0]
        zeros = int(np.floor(0.5 * w.size + 0.5))
        for i in range(len(ctxs)):
            eff = effective(net, name, i)
            assert (eff == 0).sum() == zeros
            kept = np.abs(w[eff != 0])
            assert kept.min() >= np.abs(w[eff == 0]).max()  # the smallest went
        # the stored weight is untouched
        assert_same_bits({name: stored[name]},
                         {name: [d.asnumpy() for d in net.collect_params()[name].list_data()]})
    reference = conv_net(ctxs, False)
    ps.set_params(reference, {n: effective(net, n) for n in names})
    for ctx in ctxs:
        np.testing.assert_allclose(net(x.as_in_context(ctx)).asnumpy(),
                                   reference(x.as_in_context(ctx)).asnumpy(), rtol=1e-5,
                                   atol=1e-6)


def test_prune_global_counts_the_union_and_composes(ctxs):
    net = conv_net(ctxs, False)
    total = sum(p.shape and int(np.prod(p.shape)) for p in ps.select(net, WEIGHTS).values())
    ps.prune_magnitude(net, WEIGHTS, 0.6, scope='global')
    zeros = sum(int((effective(net, n) == 0).sum()) for n in ps.select(net, WEIGHTS))
    assert zeros == int(np.floor(0.6 * total + 0.5))
    before = {n: effective(net, n) == 0 for n in ps.masked(net)}
    ps.prune_magnitude(net, WEIGHTS, 0.5, scope='global')  # half of what is still unmasked
    left = total - zeros
    after = sum(int((effective(net, n) == 0).sum()) for n in ps.select(net, WEIGHTS))
    assert after == zeros + int(np.floor(0.5 * left + 0.5))
    for n, was in before.items():
        assert (effective(net, n)[was] == 0).all()  # never revived


def test_prune_structured_whole_filters(ctxs):
    net = conv_net(ctxs, False)
    ps.prune_structured(net, 'cnn_conv0_weight', 2, axis=0)
    for i in range(len(ctxs)):
        eff = effective(net, 'cnn_conv0_weight', i)
        dead = [(eff[f] == 0).all() for f in range(6)]
        assert sum(dead) == 2
        assert all((eff[f] != 0).all() for f in range(6) if not dead[f])
    w = net[0].weight.data(ctxs[0]).asnumpy()
    norms = np.sqrt((w ** 2).reshape(6, -1).sum(1))
    assert set(np.flatnonzero(dead)) == set(np.argsort(norms)[:2])


def test_prune_random_seeded_and_custom(ctxs):
    masks = []
    for _ in range(2):
        net = conv_net(ctxs, False)
        ps.prune_random(net, WEIGHTS, 0.3, seed=11)
        masks.append({n: m.asnumpy() for n, m in ps.get_mask(net, WEIGHTS).items()})
        assert (masks[-1]['cnn_dense0_weight'] == 0).sum() == int(np.floor(0.3 * 4 * 96 + 0.5))
    for n in masks[0]:
        np.testing.assert_array_equal(masks[0][n], masks[1][n])
    custom = np.zeros((4, 96), dtype=np.float32)
    custom[:, :10] = 1
    ps.prune_custom(net, 'cnn_dense0_weight', custom)
    np.testing.assert_array_equal(ps.get_mask(net, 'cnn_dense0_weight')['cnn_dense0_weight']
                                  .asnumpy(), masks[1]['cnn_dense0_weight'] * custom)


@pytest.mark.parametrize('call, error', [
    (lambda net: ps.prune_magnitude(net, WEIGHTS, 1.5), ps.SurgeryValueError),
    (lambda net: ps.prune_magnitude(net, WEIGHTS, True), ps.SurgeryTypeError),
    (lambda net: ps.prune_magnitude(net, 'nothing', 0.5), ps.SelectionError),
    (lambda net: ps.prune_magnitude(net, WEIGHTS, 10 ** 6, scope='global'), ps.SurgeryValueError),
    (lambda net: ps.prune_structured(net, WEIGHTS, 0.5, axis=5), ps.SurgeryValueError),
    (lambda net: ps.prune_custom(net, WEIGHTS, np.ones(3)), ps.SurgeryValueError),
])
def test_prune_errors_change_nothing(ctxs, call, error):
    net = conv_net(ctxs, False)
    before = net_snapshot(net)
    with pytest.raises(error):
        call(net)
    assert ps.masked(net) == []
    assert_same_bits(before, net_snapshot(net))


@pytest.mark.parametrize('kvstore, update_on_kvstore', [('device', True), ('device', False),
                                                         (None, None)])
def test_pruned_net_trains_with_masked_entries_still(ctxs, hybridize, kvstore, update_on_kvstore):
    if len(ctxs) == 1 and update_on_kvstore:
        pytest.skip('one context has no kvstore; MXNet 1.9.1 crashes on update_on_kvstore=True')
    net = conv_net(ctxs, hybridize)
    trainer = gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': 0.1, 'momentum': 0.9},
                            kvstore=kvstore, update_on_kvstore=update_on_kvstore)
    ps.prune_magnitude(net, WEIGHTS, 0.7, scope='global')
    dead = {n: effective(net, n) == 0 for n in ps.masked(net)}
    x, y = images(8), mx.nd.array(np.arange(8) % 4)
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    for _ in range(3):
        with autograd.record():
            losses = [loss_fn(net(xp), yp) for xp, yp in zip(split(x, ctxs), split(y, ctxs))]
        autograd.backward(losses)
        for n in dead:  # the gradient reaching the stored weight is zero where masked
            for g in net.collect_params()[n].list_grad():
                assert (g.asnumpy()[dead[n]] == 0).all()
        ps.safe_step(trainer, 8)
    for n, was in dead.items():
        for i in range(len(ctxs)):
            assert (effective(net, n, i)[was] == 0).all()
    if kvstore is not None or len(ctxs) == 1:
        assert ps.check_params(net) == []


def test_pruner_reaches_the_schedule_exactly(ctxs):
    net = conv_net(ctxs, True)
    schedule = ps.PolynomialDecay(0.2, 0.8, begin=0, end=4, frequency=2)
    pruner = ps.Pruner(net, WEIGHTS, schedule, scope='global')
    total = 6 * 2 * 9 + 4 * 96
    pruned = []
    for step in range(6):
        if pruner.step(step):
            pruned.append(step)
            zeros = sum(int((effective(net, n, i) == 0).sum())
                        for n in ps.select(ps.masks.unmasked_params(net), WEIGHTS)
                        for i in [len(ctxs) - 1])
            assert zeros == int(np.floor(schedule(step)[1] * total + 0.5)), step
    assert pruned == [0, 2, 4]
    state = pruner.state_dict()
    again = ps.Pruner(net, WEIGHTS, schedule, scope='global')
    again.load_state_dict(state)
    assert again.state_dict() == state
    with pytest.raises(ps.SurgeryValueError):
        ps.Pruner(net, WEIGHTS, schedule, scope='layer').load_state_dict(state)


def test_pruner_layer_scope_each_parameter(ctxs):
    net = conv_net(ctxs, False)
    pruner = ps.Pruner(net, WEIGHTS, ps.ConstantSparsity(0.5, frequency=1), scope='layer')
    assert pruner.step(0)
    for n in ['cnn_conv0_weight', 'cnn_dense0_weight']:
        w = effective(net, n)
        assert (w == 0).sum() == int(np.floor(0.5 * w.size + 0.5))


def test_state_dict_checks_the_schedule():
    net = nn.Dense(4, in_units=4, prefix='fc_')
    net.initialize()
    one = ps.Pruner(net, 'fc_weight', ps.ConstantSparsity(0.5, frequency=2))
    one.step(0)
    state = one.state_dict()
    assert state['schedule'] == 'ConstantSparsity(target=0.5, begin=0, end=-1, frequency=2)'
    other = ps.Pruner(net, 'fc_weight', ps.ConstantSparsity(0.75, frequency=2))
    with pytest.raises(ps.SurgeryValueError, match='same schedule'):
        other.load_state_dict(state)
    assert other.last_step is None
    # a plain callable has no stable repr: recorded as None and not compared
    plain = ps.Pruner(net, 'fc_weight', lambda step: (False, 0.0))
    assert plain.state_dict()['schedule'] is None
    plain.load_state_dict(state)
    assert plain.pruned_steps == [0]


# --------------------------------------------------------------------------- the pruning call's
# own passes (issue 20): what it skips, and that what it writes is the same on every context

@pytest.mark.parametrize('mode', ['graph', 'update'])
def test_new_masks_made_from_the_core_masks_without_a_fill(ctxs, mode, monkeypatch):
    # A new mask Parameter is made straight from the core's mask: no initializer pass (the
    # fill that was written over right away), one copy per context.
    net = conv_net(ctxs, False)
    net(images().as_in_context(ctxs[0]))
    weights = {n: p.data(ctxs[0]).asnumpy() for n, p in ps.select(net, WEIGHTS).items()}
    expected = ps.magnitude_masks(weights, 0.5, scope='global')

    def no_fill(self, *args):
        raise AssertionError('an initializer ran for a mask that is written right away')
    monkeypatch.setattr(mx.init.Zero, '_init_weight', no_fill)
    monkeypatch.setattr(mx.init.One, '_init_weight', no_fill)
    ps.prune_magnitude(net, WEIGHTS, 0.5, scope='global', mode=mode)
    monkeypatch.undo()
    params = net.collect_params()
    for name, keep in expected.items():
        mask = params[name + '_mask']
        assert np.dtype(mask.dtype) == (np.uint8 if mode == 'update' else np.float32)
        assert mask.list_ctx() == ctxs
        for i, arr in enumerate(mask.list_data()):
            assert arr.context == ctxs[i]
            np.testing.assert_array_equal(arr.asnumpy(), keep.astype(arr.dtype))
            if mode == 'update':   # the stored weight is zeroed under the mask
                np.testing.assert_array_equal(params[name].list_data()[i].asnumpy(),
                                              weights[name] * keep)
        # the mask's own init (ones) is still what a re-initialisation gives
        mask.initialize(ctx=ctxs, force_reinit=True)
        assert all((arr.asnumpy() == 1).all() for arr in mask.list_data())


def test_core_masks_are_not_scanned_for_overflow(ctxs, monkeypatch):
    # The core's masks are binary: no entry above 1, so the overflow check needs no pass
    # over them to find their largest entry.
    from paramsurgery import _values
    net = conv_net(ctxs, False)
    net(images().as_in_context(ctxs[0]))

    real = _values._largest

    def scan(value):
        # a value whose largest entry is not known yet costs a pass over it
        assert value.largest is not None, 'a binary core mask was scanned for its largest'
        return real(value)
    monkeypatch.setattr(_values, '_largest', scan)
    ps.prune_magnitude(net, WEIGHTS, 0.5, scope='global', mode='update')
    ps.prune_magnitude(net, WEIGHTS, 0.5, scope='global')   # switches mode, combines
    monkeypatch.undo()
    total = sum(p.shape and int(np.prod(p.shape)) for p in ps.select(net, WEIGHTS).values())
    zeros = sum(int((effective(net, n, i) == 0).sum()) for n in ps.select(net, WEIGHTS)
                for i in range(len(ctxs)))
    first = int(np.floor(0.5 * total + 0.5))
    assert zeros == len(ctxs) * (first + int(np.floor(0.5 * (total - first) + 0.5)))


def test_a_list_key_is_not_validated_once_per_entry(monkeypatch):
    # one key per weight: the selection is validated once, not once per key
    import sys
    select_module = sys.modules['paramsurgery.select']   # ps.select is the function
    net = nn.HybridSequential(prefix='deep_')
    with net.name_scope():
        for _ in range(10):
            net.add(nn.Dense(3, in_units=3))
    net.initialize(mx.init.Xavier())
    calls = []
    real = select_module.all_params

    def counted(where):
        calls.append(1)
        return real(where)
    names = list(ps.select(net, WEIGHTS))
    monkeypatch.setattr(select_module, 'all_params', counted)
    ps.prune_magnitude(net, names, 0.5, scope='global')
    monkeypatch.undo()
    # a fixed number of validations (the call's own reads), whatever the number of keys
    assert len(calls) <= 4, len(calls)


@pytest.mark.parametrize('mode', ['graph', 'update'])
def test_masks_chosen_right_after_a_predict_mode_forward(ctxs, hybridize, mode):
    """A predict-mode forward queues in-place reorders of the conv weights (docs/internals.md):
    a prune issued while they are pending must read the weights, not half-reordered copies,
    and so choose exactly the masks it chooses once MXNet is idle."""
    def pruned(wait_first):
        mx.random.seed(0)
        net = vision.resnet18_v1(pretrained=False)
        net.initialize(mx.init.Xavier(), ctx=ctxs)
        if hybridize:
            net.hybridize()
        for ctx in ctxs:
            net(mx.nd.zeros((1, 3, 64, 64), ctx=ctx))
        if wait_first:
            mx.nd.waitall()
        ps.prune_magnitude(net, r'.*conv\d+_weight$', 0.9, scope='global', mode=mode)
        mx.nd.waitall()
        return {name: [d.asnumpy() for d in p.list_data()]
                for name, p in net._collect_params_with_prefix().items() if name.endswith('_mask')}

    expected, got = pruned(True), pruned(False)
    assert sorted(got) == sorted(expected) and len(got) == 20
    for name in expected:
        for want, have in zip(expected[name], got[name]):
            np.testing.assert_array_equal(have, want, err_msg=name)
