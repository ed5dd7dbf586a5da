"""DynamicSparsity: RigL and SET at a constant sparsity, the same decision on every context
and worker, Trainer state of grown entries zero, exact resume."""
import pickle

import numpy as np
import pytest
from mxnet import gluon

import paramsurgery as ps
from paramsurgery import _mx
from paramsurgery.dynamic import erk_densities

from helpers import TRAINER_SETUPS, TWO, batch, forward_backward, make_mlp

WEIGHTS = ['mlp_dense0_weight', 'mlp_dense1_weight']


def trainer_for(net, kvstore, update_on_kvstore, optimizer='adam'):
    opts = {'learning_rate': 0.05}
    if optimizer == 'sgd':
        opts['momentum'] = 0.9
    return gluon.Trainer(net.collect_params(), optimizer, opts, kvstore=kvstore or 'device',
                         update_on_kvstore=update_on_kvstore)


def mask_of(net, name):
    return [m.asnumpy() for m in net.collect_params()[name + '_mask'].list_data()]


def states(trainer, param):
    idx = _mx.trainer_index(trainer, param)
    return [s.asnumpy() for u in _mx.process_updaters(trainer)
            for s, master in _mx.state_arrays(u, idx, param.shape) if not master]


def expected_mask(mask, weight, grad, count, method):
    """The contract written out plainly: drop the `count` active entries of smallest |w|,
    grow the `count` entries not kept with the largest |g|, ties lowest index first."""
    mask, weight, grad = mask.ravel(), weight.ravel(), grad.ravel()
    active = [i for i in range(mask.size) if mask[i]]
    drop = sorted(active, key=lambda i: (abs(weight[i]), i))[:count]
    kept = mask.copy()
    kept[drop] = 0
    if method == 'rigl':
        candidates = [i for i in range(mask.size) if not kept[i]]
        kept[sorted(candidates, key=lambda i: (-abs(grad[i]), i))[:count]] = 1
    return kept, drop


@pytest.mark.parametrize('kvstore,update_on_kvstore,ctxs', TRAINER_SETUPS)
@pytest.mark.parametrize('method', ['rigl', 'set'])
def test_updates_move_entries_at_constant_sparsity(kvstore, update_on_kvstore, ctxs, method,
                                                    hybridize):
    net = make_mlp(ctxs, hybridize)
    trainer = trainer_for(net, kvstore, update_on_kvstore)
    # 20 and 15 entries at 75%: 5 and 4 active; f = 0.5 moves floor(2.5 + 0.5) = 3 and
    # floor(2 + 0.5) = 2 (numpy's round would give 2 for 2.5)
    dyn = ps.DynamicSparsity(net, trainer, WEIGHTS, 0.75, method=method, update_every=2,
                             drop_fraction=0.5, decay='constant', seed=4)
    params = net.collect_params()
    assert [int(mask_of(net, n)[0].sum()) for n in WEIGHTS] == [5, 4]
    grown_any = False
    for step in range(1, 7):
        forward_backward(net, batch(8, seed=step), ctxs)
        before = {n: (mask_of(net, n)[0], params[n].list_data()[0].asnumpy(),
                      sum(g.asnumpy() for g in params[n].list_grad())) for n in WEIGHTS}
        moved = dyn.step(step)
        for name, count in zip(WEIGHTS, [3, 2]):
            masks = mask_of(net, name)
            mask, weight, grad = before[name]
            if step % 2:
                assert moved == [] and np.array_equal(masks[0], mask)
                continue
            assert int(masks[0].sum()) == int(mask.sum())
            want, dropped = expected_mask(mask, weight, grad, count, method)
            got = masks[0].ravel()
            if method == 'rigl':
                assert np.array_equal(got, want), (step, name)
            else:   # random growth: the dropped are gone unless drawn again, the rest kept
                kept = want.astype(bool)
                assert np.all(got[kept] == 1)
                assert int((got[~kept] == 1).sum()) == count
            for arr in masks[1:]:
                assert np.array_equal(arr, masks[0])
            grown = (got == 1) & (mask.ravel() == 0)
            grown_any = grown_any or grown.any()
            for arr in params[name].list_data():
                value = arr.asnumpy().ravel()
                assert np.all(value[got == 0] == 0) and np.all(value[grown] == 0), name
            for state in states(trainer, params[name]):
                assert np.all(state.ravel()[grown] == 0) and np.all(state.ravel()[got == 0] == 0)
        trainer.step(8)
        for name in WEIGHTS:
            replicas = [a.asnumpy() for a in params[name].list_data()]
            for arr in replicas:
                assert np.array_equal(arr, replicas[0])
                assert np.all(arr[mask_of(net, name)[0] == 0] == 0)
    assert dyn.updates == [2, 4, 6]
    assert grown_any     # the checks on grown entries checked something


def test_cosine_decay_end_and_ties_lowest_index_first(ctxs):
    net = make_mlp(ctxs)
    ps.set_params(net, 'mlp_dense0_weight', 1.0)     # every magnitude ties
    trainer = trainer_for(net, None, None, 'sgd')
    dyn = ps.DynamicSparsity(net, trainer, 'mlp_dense0_weight', 0.5, update_every=10, end=40,
                             drop_fraction=0.4, seed=0)
    # f(step) = 0.4 / 2 * (1 + cos(pi * step / 40)); exact at these steps
    assert [dyn.fraction(s) for s in (0, 20, 40, 50)] == [0.4, pytest.approx(0.2, abs=1e-15),
                                                          0.0, 0.0]
    assert [s for s in range(60) if dyn.is_update_step(s)] == [10, 20, 30]
    mask = mask_of(net, 'mlp_dense0_weight')[0].ravel()
    for grad in net[0].weight.list_grad():
        grad[:] = 1.0                                   # every gradient ties too
    dyn.step(10)
    count = int(np.floor(dyn.fraction(10) * 10 + 0.5))    # 0.3414 * 10 -> 3
    assert count == 3
    active, inactive = np.flatnonzero(mask), np.flatnonzero(mask == 0)
    want = mask.copy()
    want[active[:3]] = 0
    want[np.sort(np.concatenate([inactive, active[:3]]))[:3]] = 1
    for got in mask_of(net, 'mlp_dense0_weight'):
        assert np.array_equal(got.ravel(), want)


def test_erk_gives_small_layers_more_density(ctxs):
    # by hand: b's raw density 12/20 * eps exceeds 1, so b is dense; a then holds the rest:
    # 0.1 * 10020 - 20 = 982 entries of 10000
    got = erk_densities({'a': (100, 100), 'b': (10, 2)}, 0.9)
    assert got['b'] == 1.0 and got['a'] == pytest.approx(0.0982, rel=1e-12)
    net = make_mlp(ctxs)
    trainer = trainer_for(net, None, None, 'sgd')
    dyn = ps.DynamicSparsity(net, trainer, WEIGHTS, 0.5, distribution='erk', seed=1)
    # raw densities 9/20 and 8/15 (dense1 the denser); 17.5 entries of 35 active overall
    eps = 17.5 / (9 + 8)
    assert dyn.densities == {'mlp_dense0_weight': np.floor(eps * 9 + 0.5) / 20,
                             'mlp_dense1_weight': np.floor(eps * 8 + 0.5) / 15}


@pytest.mark.parametrize('method', ['rigl', 'set'])
def test_state_dict_resumes_exactly(tmp_path, method, hybridize):
    def build(seed):
        net = make_mlp(TWO, hybridize, seed=seed)
        trainer = trainer_for(net, 'device', False)
        return net, trainer, ps.DynamicSparsity(net, trainer, WEIGHTS, 0.6, method=method,
                                                update_every=2, seed=seed)

    def run(net, trainer, dyn, steps):
        for step in steps:
            forward_backward(net, batch(8, seed=step), TWO)
            dyn.step(step)
            trainer.step(8)

    net, trainer, dyn = build(0)
    run(net, trainer, dyn, range(1, 5))
    ps.save_masks(net, str(tmp_path / 'masks.json'))
    net.save_parameters(str(tmp_path / 'net.params'))
    trainer.save_states(str(tmp_path / 'trainer.states'))
    state = pickle.loads(pickle.dumps(dyn.state_dict()))
    twin, twin_trainer, twin_dyn = build(7)
    with pytest.raises(ps.SurgeryValueError, match='load the saved masks first'):
        twin_dyn.load_state_dict(state)
    twin.load_parameters(str(tmp_path / 'net.params'), ctx=TWO)
    ps.load_masks(twin, str(tmp_path / 'masks.json'))
    twin_trainer.load_states(str(tmp_path / 'trainer.states'))
    twin_dyn.load_state_dict(state)
    run(net, trainer, dyn, range(5, 11))
    run(twin, twin_trainer, twin_dyn, range(5, 11))
    assert dyn.updates == twin_dyn.updates == [2, 4, 6, 8, 10]
    for name, param in net.collect_params().items():
        for a, b in zip(param.list_data(), twin.collect_params()[name].list_data()):
            assert np.array_equal(a.asnumpy(), b.asnumpy()), name


def test_bad_arguments_change_nothing(ctxs):
    net = make_mlp(ctxs)
    trainer = trainer_for(net, None, None, 'sgd')
    before = [p.data().asnumpy() for p in net.collect_params().values()]
    for kwargs, error in [({'sparsity': 1.0}, ps.SurgeryValueError),
                          ({'sparsity': float('nan')}, ps.SurgeryValueError),
                          ({'method': 'snip'}, ps.SurgeryValueError),
                          ({'update_every': 0}, ps.SurgeryValueError),
                          ({'drop_fraction': -0.1}, ps.SurgeryValueError),
                          ({'end': 0}, ps.SurgeryValueError),
                          ({'seed': -1}, ps.SurgeryValueError),
                          ({'key': 'nothing'}, ps.SelectionError),
                          ({'trainer': 'adam'}, ps.SurgeryTypeError)]:
        args = dict({'trainer': trainer, 'key': WEIGHTS, 'sparsity': 0.5}, **kwargs)
        with pytest.raises(error):
            ps.DynamicSparsity(net, args.pop('trainer'), args.pop('key'), args.pop('sparsity'),
                               **args)
    other = gluon.Trainer(make_mlp(ctxs, prefix='o_').collect_params(), 'sgd')
    with pytest.raises(ps.SelectionError, match='does not update'):
        ps.DynamicSparsity(net, other, WEIGHTS, 0.5)
    assert ps.masked(net) == []
    for arr, param in zip(before, net.collect_params().values()):
        assert np.array_equal(arr, param.data().asnumpy())
    dyn = ps.DynamicSparsity(net, trainer, WEIGHTS, 0.5, seed=0)
    with pytest.raises(ps.SurgeryValueError, match='int >= 0'):
        dyn.step(-1)
    with pytest.raises(ps.SurgeryValueError, match='method='):
        ps.DynamicSparsity(net, trainer, WEIGHTS, 0.5, method='set', seed=0).load_state_dict(
            dyn.state_dict())


# Two workers of two contexts each, with different data: after allreduce_grads every worker
# holds the same summed gradient, so RigL's ranking, and the masks, agree everywhere.
DIST_RIGL = r'''
import json, numpy as np, mxnet as mx, paramsurgery as ps
from mxnet import autograd, gluon
from mxnet.gluon import nn
kv = mx.kv.create('dist_sync')
ctxs = [mx.cpu(0), mx.cpu(1)]
net = nn.HybridSequential(prefix='net_')
with net.name_scope():
    net.add(nn.Dense(6, in_units=5, activation='relu'), nn.Dense(3, in_units=6))
mx.random.seed(3)
net.initialize(mx.init.Uniform(0.5), ctx=ctxs)
trainer = gluon.Trainer(net.collect_params(), 'adam', {'learning_rate': 0.05}, kvstore=kv,
                        update_on_kvstore=False)
dyn = ps.DynamicSparsity(net, trainer, '.*weight', 0.7, update_every=2, drop_fraction=0.5,
                         seed=11)
ps.init_kvstore(trainer)
rng = np.random.RandomState(100 + kv.rank)
history = []
for step in range(1, 9):
    parts = [mx.nd.array(rng.uniform(-1, 1, (3, 5)), ctx=c) for c in ctxs]
    with autograd.record():
        losses = [(net(p) ** 2).sum() for p in parts]
    autograd.backward(losses)
    trainer.allreduce_grads()
    moved = dyn.step(step)
    trainer.update(6 * kv.num_workers)
    params = net.collect_params()
    history.append({'moved': moved,
                    'masks': {n: [m.asnumpy().tolist() for m in params[n + '_mask'].list_data()]
                              for n in ('net_dense0_weight', 'net_dense1_weight')},
                    'weights': {n: [w.asnumpy().tolist() for w in params[n].list_data()]
                                for n in ('net_dense0_weight', 'net_dense1_weight')}})
print('RESULT ' + json.dumps({'rank': kv.rank, 'history': history, 'updates': dyn.updates}))
'''


@pytest.mark.cluster
def test_rigl_on_dist_sync_decides_the_same_on_every_worker():
    from dist_harness import run_cluster
    results = run_cluster(DIST_RIGL, workers=2, timeout=120)
    assert sorted(r['rank'] for r in results) == [0, 1]
    first = results[0]
    assert first['updates'] == [2, 4, 6, 8]
    for step, record in enumerate(first['history'], start=1):
        if step % 2 == 0:
            assert record['moved'], step        # masks really moved
        for name, masks in record['masks'].items():
            assert int(np.sum(masks[0])) == {'net_dense0_weight': 9,
                                             'net_dense1_weight': 5}[name]
    for result in results:
        for mine, theirs in zip(result['history'], first['history']):
            for field in ('masks', 'weights'):
                for name, replicas in mine[field].items():
                    for arr in replicas:   # every context of every worker, bit for bit
                        assert np.array_equal(np.array(arr), np.array(theirs[field][name][0]))
