"""Tests of the transaction over a net and its Trainers (``paramsurgery._snapshot``)."""
import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon
from mxnet.gluon import nn

import paramsurgery as ps
from paramsurgery import _mx
from paramsurgery._snapshot import Transaction
from paramsurgery.masks import update_mode
from paramsurgery.masks.forward import MASKS_ATTR
from paramsurgery.select import all_params

from helpers import TWO, split


def small_net(ctxs, hybridize, seed=0):
    net = nn.HybridSequential(prefix='txn_')
    with net.name_scope():
        net.add(nn.Conv2D(4, 3, padding=1, in_channels=2), nn.BatchNorm(in_channels=4),
                nn.Activation('relu'), nn.GlobalAvgPool2D(), nn.Dense(3, in_units=4))
    mx.random.seed(seed)
    net.initialize(mx.init.Xavier(), ctx=ctxs)
    if hybridize:
        net.hybridize()
    return net


def data(n=8, seed=3):
    rng = np.random.RandomState(seed)
    return mx.nd.array(rng.randn(n, 2, 5, 5)), mx.nd.array(rng.randint(0, 3, n))


LOSS = gluon.loss.SoftmaxCrossEntropyLoss()


def train(net, trainer, ctxs, steps=1):
    x, y = data()
    for _ in range(steps):
        with autograd.record():
            losses = [LOSS(net(a), b) for a, b in zip(split(x, ctxs), split(y, ctxs))]
        autograd.backward(losses)
        trainer.step(len(x))


def state(net, trainer=None):
    """Values and gradients of every replica, masks and their modes, the Trainer's optimizer
    states (every Updater, with its class), counters and kvstore copies: all as bytes."""
    out = {}
    for name, p in net.collect_params().items():
        out[name] = [(a.shape, a.asnumpy().tobytes()) for a in p.list_data()]
        if p.grad_req != 'null':
            out[name + '/grad'] = [a.asnumpy().tobytes() for a in p.list_grad()]
            out[name + '/fresh'] = [_mx.fresh_grad(a) for a in p.list_data()]
    out['masks'] = {n: ps.masks.mask_mode(net, n) for n in ps.masked(net)}
    if trainer is not None:
        for i, u in enumerate(_mx.process_updaters(trainer)):
            out['class%d' % i] = type(u).__name__
            for key, st in sorted(u.states.items()):
                arrays = st if isinstance(st, (tuple, list)) else [st]
                out['state%d/%d' % (i, key)] = [a.asnumpy().tobytes() for a in arrays
                                                if a is not None]
        out['counters'] = repr(_mx.optimizer_counters(trainer.optimizer))
        out['kvstore'] = {k: v.asnumpy().tobytes()
                          for k, v in _mx.kvstore_copies(trainer).items()}
        scheduler = trainer.optimizer.lr_scheduler
        out['lr'] = None if scheduler is None else (scheduler.base_lr, scheduler.count)
    return out


def outputs(net, ctxs):
    x, _ = data()
    with autograd.predict_mode():
        return [net(a).asnumpy().tobytes() for a in split(x, ctxs)]


SETUPS = [
    pytest.param([mx.cpu(0)], None, id='1ctx'),
    pytest.param(TWO, True, id='2ctx-device-uok'),
    pytest.param(TWO, False, id='2ctx-device-nouok'),
]


def make_trainer(net, ctxs, update_on_kvstore):
    kwargs = {} if len(ctxs) == 1 else {'kvstore': 'device',
                                        'update_on_kvstore': update_on_kvstore}
    return gluon.Trainer(net.collect_params(), 'sgd',
                         {'momentum': 0.9,
                          'lr_scheduler': mx.lr_scheduler.FactorScheduler(1, 0.5, base_lr=0.1)},
                         **kwargs)


@pytest.mark.parametrize('ctxs, update_on_kvstore', SETUPS)
def test_rollback_undoes_training_masks_and_trainers(ctxs, update_on_kvstore, hybridize):
    # Inside: training steps (weights, gradients, momentum, counters, the lr scheduler, the
    # kvstore copies), a mask added in update mode (MaskingUpdater), one switched to graph
    # mode, a new Trainer built on the parameters. Rolled back twice: every time exactly the
    # state recorded at the start.
    net = small_net(ctxs, hybridize)
    trainer = make_trainer(net, ctxs, update_on_kvstore)
    train(net, trainer, ctxs, 2)
    ps.prune_magnitude(net, 'txn_dense0_weight', 0.5, mode='update')
    before, ref = state(net, trainer), outputs(net, ctxs)
    last = {n: p._trainer for n, p in net.collect_params().items()}
    txn = Transaction(net)
    for _ in range(2):
        train(net, trainer, ctxs, 2)
        ps.prune_magnitude(net, 'txn_conv0_weight', 0.5, mode='update')
        ps.prune_magnitude(net, 'txn_dense0_weight', 0.25, mode='graph')
        other = gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': 1.0})
        train(net, other, ctxs)
        assert state(net, trainer) != before
        txn.rollback()
        assert state(net, trainer) == before
        assert outputs(net, ctxs) == ref
        assert all(p._trainer is last[n] for n, p in net.collect_params().items())
    # and the Trainer trains on exactly like a twin that never saw the transaction
    twin = small_net(ctxs, hybridize)
    twin_trainer = make_trainer(twin, ctxs, update_on_kvstore)
    train(twin, twin_trainer, ctxs, 2)
    ps.prune_magnitude(twin, 'txn_dense0_weight', 0.5, mode='update')
    train(net, trainer, ctxs, 2)
    train(twin, twin_trainer, ctxs, 2)
    assert state(net, trainer) == state(twin, twin_trainer)


@pytest.mark.parametrize('mode', ['graph', 'update'])
def test_trainer_built_after_a_mask_is_recorded(mode, hybridize):
    # the Trainer holds the mask parameter, whose key the kvstore never initialises (masks
    # never reach it): recording the kvstore's copies must leave it out, not pull it
    net = small_net(TWO, hybridize)
    ps.prune_magnitude(net, 'txn_dense0_weight', 0.5, mode=mode)
    trainer = make_trainer(net, TWO, True)
    train(net, trainer, TWO)
    before = state(net, trainer)
    txn = Transaction(net)
    train(net, trainer, TWO)
    assert state(net, trainer) != before
    txn.rollback()
    assert state(net, trainer) == before


def test_with_block_rolls_back_on_error_and_commits_otherwise(ctxs, hybridize):
    net = small_net(ctxs, hybridize)
    before = state(net)
    with pytest.raises(RuntimeError, match='inside'):
        with Transaction(net):
            ps.prune_magnitude(net, 'txn_conv0_weight', 0.5)
            ps.set_params(net, 'txn_dense0_bias', 7.0)
            raise RuntimeError('inside')
    assert state(net) == before
    assert MASKS_ATTR not in net[0].__dict__
    with Transaction(net):
        ps.prune_magnitude(net, 'txn_conv0_weight', 0.5)
    assert ps.masked(net) == ['txn_conv0_weight']


def test_removed_masks_and_cached_graph_come_back():
    net = small_net(TWO, True)
    ps.prune_magnitude(net, 'txn_conv0_weight', 0.5)
    ref = outputs(net, TWO)
    cached = net._cached_op
    txn = Transaction(net)
    ps.remove_mask(net, 'txn_conv0_weight', bake=False)
    assert outputs(net, TWO) != ref        # the stored weights, unmasked
    assert net._cached_op is not cached
    txn.rollback()
    assert ps.masked(net) == ['txn_conv0_weight'] and net._cached_op is cached
    assert outputs(net, TWO) == ref


@pytest.mark.parametrize('given', [False, True], ids=['collected', 'params given'])
def test_changed_shapes_and_block_attributes_come_back(ctxs, given):
    # shrink's use: arrays replaced (values=False records no values), channel counts changed;
    # shrink passes the parameters it collected already
    net = small_net(ctxs, False)
    ref = outputs(net, ctxs)
    conv = net[0]
    weight = conv.weight
    old_data = _mx.raw_data(weight)
    txn = Transaction(net, values=False, params=all_params(net) if given else None)
    _mx.set_param_arrays(weight, (2, 2, 3, 3),
                                [a[0:2].copy() for a in old_data])
    _mx.resize_block(conv, False)
    assert conv._channels == 2 and weight.shape == (2, 2, 3, 3)
    txn.rollback()
    assert conv._channels == 4 and conv._kwargs['num_filter'] == 4
    assert weight.shape == (4, 2, 3, 3) and _mx.raw_data(weight) is old_data
    assert outputs(net, ctxs) == ref


@pytest.mark.parametrize('ctxs, update_on_kvstore', SETUPS)
def test_updaters_get_their_class_back(ctxs, update_on_kvstore):
    # An update-mode mask added inside makes every Updater a MaskingUpdater (and watches the
    # Trainer); after the rollback no mask is left, and neither is the masking.
    net = small_net(ctxs, False)
    trainer = make_trainer(net, ctxs, update_on_kvstore)
    train(net, trainer, ctxs)
    classes = [type(u) for u in _mx.process_updaters(trainer)]
    assert classes and all(c is mx.optimizer.Updater for c in classes)
    txn = Transaction(net)
    ps.prune_magnitude(net, 'txn_conv0_weight', 0.5, mode='update')
    assert all(type(u) is update_mode.MaskingUpdater
               for u in _mx.process_updaters(trainer))
    txn.rollback()
    assert [type(u) for u in _mx.process_updaters(trainer)] == classes
    assert '_init_kvstore' not in trainer.__dict__


def test_held_interrupts_deliver_ctrl_c_once_after_the_block():
    import signal

    from paramsurgery._snapshot import held_interrupts
    calls = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: calls.append(signum))
    try:
        with held_interrupts():
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)
            assert calls == []                       # held inside the block
        assert calls == [signal.SIGINT]              # delivered once, after it
        with held_interrupts():
            pass
        assert calls == [signal.SIGINT]              # nothing held: nothing delivered
    finally:
        signal.signal(signal.SIGINT, previous)
