"""capture / rewind: the lottery-ticket step, on every context, Trainer-safe."""
import numpy as np
import pytest
from mxnet import gluon

import paramsurgery as ps
from paramsurgery import _mx

from helpers import TRAINER_SETUPS, batch, forward_backward, make_mlp

WEIGHTS = ['mlp_dense0_weight', 'mlp_dense1_weight']


def masks_for(net, seed=3):
    rng = np.random.RandomState(seed)
    params = net.collect_params()
    return {name: (rng.rand(*params[name].shape) > 0.4).astype('float32') for name in WEIGHTS}


def train(net, trainer, ctxs, steps, seed=0):
    for step in range(steps):
        forward_backward(net, batch(8, seed=seed + step), ctxs)
        trainer.step(8)


def values(net):
    return {n: [a.asnumpy() for a in p.list_data()]
            for n, p in ps.masks.unmasked_params(net).items()}


@pytest.mark.parametrize('kvstore,update_on_kvstore,ctxs', TRAINER_SETUPS)
@pytest.mark.parametrize('mode', ['update', 'graph'])
def test_rewind_resets_values_and_optimizer_state(kvstore, update_on_kvstore, ctxs, mode,
                                                   hybridize):
    net = make_mlp(ctxs, hybridize)
    start = ps.capture(net)
    trainer = gluon.Trainer(net.collect_params(), 'adam', {'learning_rate': 0.01},
                            kvstore=kvstore or 'device', update_on_kvstore=update_on_kvstore)
    train(net, trainer, ctxs, 3)
    masks = masks_for(net)
    ps.apply_mask(net, masks, mode=mode)
    trained = values(net)
    assert sorted(ps.rewind(net, start, trainer=trainer)) == sorted(start.values)
    for name, replicas in values(net).items():
        for arr, before in zip(replicas, trained[name]):
            expected = start.values[name]
            if name in masks:
                # masked entries keep what the stored weight held (0 in update mode)
                expected = np.where(masks[name] != 0, expected, before)
            assert np.array_equal(arr, expected), name
    for param in ps.masks.unmasked_params(net).values():
        idx = _mx.trainer_index(trainer, param)
        for updater in _mx.process_updaters(trainer):
            for state, _ in _mx.state_arrays(updater, idx, param.shape):
                assert not state.asnumpy().any(), param.name
    # training resumes exactly as a fresh Trainer from the captured point would: same
    # operations on the same values, so the bits are equal
    twin = make_mlp(ctxs, hybridize, seed=99)
    ps.set_params(twin, {n: v[0] for n, v in values(net).items()})
    ps.apply_mask(twin, masks, mode=mode)
    fresh = gluon.Trainer(twin.collect_params(), 'adam', {'learning_rate': 0.01},
                          kvstore=kvstore or 'device', update_on_kvstore=update_on_kvstore)
    train(net, trainer, ctxs, 2, seed=10)
    train(twin, fresh, ctxs, 2, seed=10)
    got, want = values(net), values(twin)
    for name in got:
        for a, b in zip(got[name], want[name]):
            assert np.array_equal(a, b), name


def test_capture_round_trips_through_a_file(tmp_path, ctxs):
    net = make_mlp(ctxs)
    path = str(tmp_path / 'init.npz')
    ps.capture(net).save(path)
    loaded = ps.Capture.load(path)
    for name, param in ps.masks.unmasked_params(net).items():
        assert np.array_equal(loaded.values[name], param.data(ctxs[0]).asnumpy())


def test_rewind_refuses_other_shapes_and_changes_nothing(ctxs):
    net = make_mlp(ctxs)
    start = ps.capture(net)
    start.values['mlp_dense1_weight'] = np.zeros((2, 5), 'float32')
    ps.set_params(net, 'mlp_dense0_weight', 3.0)
    before = values(net)
    with pytest.raises(ps.SurgeryValueError, match="'mlp_dense1_weight' has shape"):
        ps.rewind(net, start)
    with pytest.raises(ps.SurgeryTypeError, match='must be a ps.Capture'):
        ps.rewind(net, {'mlp_dense0_weight': 1})
    with pytest.raises(ps.SelectionError, match='was not captured'):
        ps.rewind(net, ps.capture(net, 'mlp_dense0_weight'), key='mlp_dense1_weight')
    after = values(net)
    for name in before:
        for a, b in zip(before[name], after[name]):
            assert np.array_equal(a, b)


def test_load_refuses_another_file(tmp_path):
    path = str(tmp_path / 'other.npz')
    np.savez(path, meta=np.frombuffer(b'{"format": "x"}', dtype=np.uint8))
    with pytest.raises(ps.FileFormatError, match='not a paramsurgery capture'):
        ps.Capture.load(path)


@pytest.mark.parametrize('kvstore,update_on_kvstore,ctxs', TRAINER_SETUPS)
def test_capture_shrink_fits_the_shrunk_net(kvstore, update_on_kvstore, ctxs, hybridize):
    net = make_mlp(ctxs, hybridize)
    start = ps.capture(net)
    trainer = gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': 0.1,
                                                          'momentum': 0.9},
                            kvstore=kvstore or 'device', update_on_kvstore=update_on_kvstore)
    train(net, trainer, ctxs, 2)
    # hidden units 1 and 3 go: dense0 keeps rows [0, 2, 4], dense1 columns [0, 2, 4]
    keep = np.array([1, 0, 1, 0, 1], 'float32')
    ps.apply_mask(net, {'mlp_dense0_weight': np.repeat(keep[:, None], 4, 1),
                        'mlp_dense0_bias': keep,
                        'mlp_dense1_weight': np.repeat(keep[None], 3, 0)}, mode='update')
    plan = ps.shrink(net, inputs=(2, 4), trainer=trainer)
    assert plan.slices == {'mlp_dense0_weight': {0: [0, 2, 4]}, 'mlp_dense0_bias': {0: [0, 2, 4]},
                           'mlp_dense1_weight': {1: [0, 2, 4]}}
    with pytest.raises(ps.SurgeryValueError, match='capture.shrink'):
        ps.rewind(net, start)
    small = start.shrink(plan)
    assert start.values['mlp_dense0_weight'].shape == (5, 4)   # the original is kept
    ps.rewind(net, small, trainer=trainer)
    got = values(net)
    expected = {'mlp_dense0_weight': start.values['mlp_dense0_weight'][[0, 2, 4]],
                'mlp_dense0_bias': start.values['mlp_dense0_bias'][[0, 2, 4]],
                'mlp_dense1_weight': start.values['mlp_dense1_weight'][:, [0, 2, 4]],
                'mlp_dense1_bias': start.values['mlp_dense1_bias']}
    for name, want in expected.items():
        for arr in got[name]:
            assert np.array_equal(arr, want), name
    train(net, trainer, ctxs, 1)   # the Trainer still runs on the shrunk, rewound net
    assert all(a.shape == (3, 4) for a in net[0].weight.list_data())


def test_capture_shrink_refuses_plans_that_do_not_fit(tmp_path):
    start = ps.Capture({'a_weight': np.arange(6, dtype='float32').reshape(2, 3)})
    with pytest.raises(ps.SurgeryTypeError, match='must be the ps.ShrinkPlan'):
        start.shrink({'a_weight': {0: [0]}})
    with pytest.raises(ps.SurgeryValueError, match="axis 1 of 'a_weight'"):
        start.shrink(ps.ShrinkPlan({}, {}, {'a_weight': {1: [0, 3]}}))
    with pytest.raises(ps.SurgeryValueError, match='records no slices'):
        start.shrink(ps.ShrinkPlan({}, {}))
    # the slices survive a file
    path = str(tmp_path / 'plan.json')
    ps.ShrinkPlan({}, {}, {'a_weight': {1: [0, 2]}}).save(path)
    assert np.array_equal(start.shrink(ps.ShrinkPlan.load(path)).values['a_weight'],
                          [[0, 2], [3, 5]])
