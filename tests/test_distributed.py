"""Value surgery against MXNet's real parameter-server kvstore (dist_sync, 2 workers).

The tests marked ``cluster`` start a loopback scheduler, servers and workers
(dist_harness.py); ``-m "not cluster"`` leaves them out. The others check the
``distributed`` module (check_trainer, init_kvstore) in this process."""
import json
import warnings

import mxnet as mx
import numpy as np
import pytest
from mxnet import gluon

import paramsurgery as ps
from paramsurgery import _mx

from dist_harness import run_cluster

REFUSAL = r'''
import json
import mxnet as mx, numpy as np, paramsurgery as ps
from mxnet import autograd, gluon

kv = mx.kv.create('dist_sync')
net = gluon.nn.Dense(2, in_units=3, prefix='fc_')
net.initialize(mx.init.Constant(1.0), ctx=[mx.cpu(0), mx.cpu(1)])
trainer = gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': 0.1}, kvstore=kv)

def step():
    with autograd.record():
        losses = [net(mx.nd.ones((1, 3), ctx=c)).sum() for c in net.weight.list_ctx()]
    autograd.backward(losses)
    trainer.step(2)

before_first = ps.set_params(net, 'fc_weight', 0.5)  # before the first step: allowed
step()
after_first = [w.asnumpy().tolist() for w in net.weight.list_data()]
snap = [p.asnumpy().tobytes() for p in net.weight.list_data() + net.bias.list_data()]
try:
    ps.assign_params(net, '.*', 2.0)
    error = None
except ps.TrainerStateError as exc:
    error = str(exc)
unchanged = snap == [p.asnumpy().tobytes() for p in net.weight.list_data() + net.bias.list_data()]
step()
print('RESULT ' + json.dumps({'rank': kv.rank, 'error': error, 'unchanged': unchanged,
                              'after_first': after_first,
                              'update_on_kvstore': bool(trainer._update_on_kvstore)}))
'''


@pytest.mark.cluster
def test_value_surgery_refused_on_dist_update_on_kvstore():
    results = run_cluster(REFUSAL, workers=2)
    assert sorted(r['rank'] for r in results) == [0, 1]
    for r in results:
        assert r['update_on_kvstore'] is True
        assert r['unchanged'] is True
        assert "Parameter 'fc_weight'" in r['error'] and 'dist_sync' in r['error']
        assert 'Nothing was changed' in r['error'] and 'ps.apply_mask' in r['error']
        # the set_params before the first step reached the servers: 0.5 - 0.1 * (2 workers *
        # 2 contexts * 1) / 2 = 0.3 on every entry, on every worker
        for replica in r['after_first']:
            np.testing.assert_allclose(replica, np.full((2, 3), 0.3), rtol=1e-6)


# --------------------------------------------------------------------------- update_on_kvstore
# MXNet 1.9.1, dist_sync, update_on_kvstore=False: the first step's broadcast pull and the
# gradient pushpull of a key are not ordered, and without an optimizer the servers keep the
# summed gradient as the key's value, so a worker can start from the gradient sum instead of
# the weights (docs/distributed.md has the measurements). paramsurgery warns about exactly
# that configuration (ps.check_trainer) and removes the race (ps.init_kvstore).

# Built identically by the workers and by the single-process reference in this process.
COMMON = r'''
import mxnet as mx, numpy as np
from mxnet import autograd, gluon

def build_net(ctxs, hybridize):
    net = gluon.nn.HybridSequential(prefix='mlp_')
    with net.name_scope():
        net.add(gluon.nn.Dense(5, in_units=4, activation='relu'), gluon.nn.Dense(3, in_units=5))
    mx.random.seed(0)
    net.initialize(mx.init.Uniform(0.5), ctx=ctxs)
    if hybridize:
        net.hybridize()
    return net

def batch(rank, step):
    """Each worker trains on its own 4 rows: a wrong sum over workers cannot hide."""
    return np.random.RandomState(100 * step + rank).uniform(-1, 1, (4, 4)).astype('float32')

def train_step(net, trainer, x, ctxs, batch_size):
    parts = gluon.utils.split_and_load(mx.nd.array(x), ctxs)
    with autograd.record():
        losses = [(net(part) ** 2).sum() for part in parts]
    autograd.backward(losses)
    trainer.step(batch_size)

OPTIMIZER = ('sgd', {'learning_rate': 0.1, 'momentum': 0.9})
STEPS = 3
'''

TRAIN = COMMON + r'''
import json, os, warnings
import paramsurgery as ps
cfg = json.loads(os.environ['DIST_CFG'])
kv = mx.kv.create('dist_sync')
ctxs = [mx.cpu(i) for i in range(cfg['nctx'])]
net = build_net(ctxs, cfg['hybridize'])
trainer = gluon.Trainer(net.collect_params(), *OPTIMIZER, kvstore=kv,
                        update_on_kvstore=cfg['update_on_kvstore'])
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    exposed_before = ps.check_trainer(trainer)
    broadcast = ps.init_kvstore(trainer)
    exposed_after = ps.check_trainer(trainer)
warned = [str(w.message) for w in caught if issubclass(w.category, ps.DistributedWarning)]
history = []
for step in range(STEPS):
    train_step(net, trainer, batch(kv.rank, step), ctxs, 4 * kv.num_workers)
    history.append({name: [d.asnumpy().tolist() for d in p.list_data()]
                    for name, p in net.collect_params().items()})
print('RESULT ' + json.dumps({
    'rank': kv.rank, 'update_on_kvstore': bool(trainer._update_on_kvstore),
    'exposed_before': exposed_before, 'warned': warned, 'broadcast': broadcast,
    'exposed_after': exposed_after, 'history': history}))
'''


def _reference(workers=2):
    """Single process, one context, every worker's rows in one batch."""
    ns = {}
    exec(COMMON, ns)  # pylint: disable=exec-used
    net = ns['build_net']([mx.cpu(0)], False)
    trainer = gluon.Trainer(net.collect_params(), *ns['OPTIMIZER'], kvstore=None)
    history = []
    for step in range(ns['STEPS']):
        x = np.concatenate([ns['batch'](rank, step) for rank in range(workers)])
        ns['train_step'](net, trainer, x, [mx.cpu(0)], len(x))
        history.append({name: p.data().asnumpy() for name, p in net.collect_params().items()})
    return history


NAMES = ['mlp_dense0_bias', 'mlp_dense0_weight', 'mlp_dense1_bias', 'mlp_dense1_weight']


@pytest.mark.cluster
@pytest.mark.parametrize('update_on_kvstore', [True, False], ids=['uok-true', 'uok-false'])
@pytest.mark.parametrize('nctx,hybridize,servers,bound', [
    (1, False, 1, None),
    # two servers, and every weight above the big-array bound: the servers split each key
    (2, True, 2, '10'),
], ids=['1ctx-imperative-1server', '2ctx-hybrid-2servers-split'])
def test_dist_sync_matches_single_process(update_on_kvstore, nctx, hybridize, servers, bound):
    env = {'DIST_CFG': json.dumps({'update_on_kvstore': update_on_kvstore, 'nctx': nctx,
                                   'hybridize': hybridize})}
    if bound:
        env['MXNET_KVSTORE_BIGARRAY_BOUND'] = bound
    results = run_cluster(TRAIN, workers=2, servers=servers, timeout=60, extra_env=env)
    reference = _reference()
    assert sorted(r['rank'] for r in results) == [0, 1]
    for r in results:
        assert r['update_on_kvstore'] is update_on_kvstore
        if update_on_kvstore:
            # the servers own the weights and every step pulls them back: nothing to warn
            # and nothing for init_kvstore to do
            assert r['exposed_before'] == [] and r['warned'] == [] and r['broadcast'] == []
        else:
            assert r['exposed_before'] == NAMES
            assert len(r['warned']) == 1 and 'ps.init_kvstore(trainer)' in r['warned'][0]
            assert r['broadcast'] == NAMES
        assert r['exposed_after'] == []
        for step, (got, want) in enumerate(zip(r['history'], reference)):
            for name in NAMES:
                assert len(got[name]) == nctx
                for replica in got[name]:
                    np.testing.assert_allclose(
                        replica, want[name], rtol=1e-5, atol=1e-6,
                        err_msg='rank %d, step %d, %s' % (r['rank'], step, name))


MECHANISM = r'''
import json, mxnet as mx
kv = mx.kv.create('dist_sync')                # no optimizer: what update_on_kvstore=False does
weight = mx.nd.array([1.0, 2.0, 3.0])
kv.init(3, weight)                            # rank 0's value
pulled_first = mx.nd.zeros(3)
kv.pull(3, out=pulled_first)
pulled_first.wait_to_read()
grad = mx.nd.full((3,), kv.rank + 1.0)
kv.pushpull(3, grad)                          # the Trainer's gradient all-reduce
grad.wait_to_read()
pulled_after = mx.nd.zeros(3)
kv.pull(3, out=pulled_after)                  # a broadcast pull served after the pushpull
print('RESULT ' + json.dumps({'rank': kv.rank, 'first': pulled_first.asnumpy().tolist(),
                              'grad': grad.asnumpy().tolist(),
                              'after': pulled_after.asnumpy().tolist()}))
'''


@pytest.mark.cluster
def test_dist_servers_keep_the_gradient_sum_without_an_optimizer():
    """The root of the race, made deterministic: once every worker has pushed a gradient
    for a key, the servers' value of that key is the gradient sum, not the weight. The
    Trainer's first step sends its broadcast pull and its pushpull without ordering them,
    so a pull served late hands a worker the gradient sum as its weights."""
    results = run_cluster(MECHANISM, workers=2)
    for r in results:
        assert r['first'] == [1.0, 2.0, 3.0]
        assert r['grad'] == [3.0, 3.0, 3.0]     # 1 (rank 0) + 2 (rank 1)
        assert r['after'] == [3.0, 3.0, 3.0]    # the weight is gone from the servers


# --------------------------------------------------------------------------- without a cluster
# check_trainer and init_kvstore read the Trainer's configuration; a Trainer built with
# kvstore='dist_sync' creates no kvstore before its first step, so these run in-process.

def _trainer(ctxs, kvstore, update_on_kvstore, in_units=4):
    net = gluon.nn.Dense(3, in_units=in_units, prefix='fc_')
    mx.random.seed(0)
    net.initialize(mx.init.Uniform(0.5), ctx=ctxs)
    return net, gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': 0.1},
                              kvstore=kvstore, update_on_kvstore=update_on_kvstore)


def _caught(fn, *args, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        out = fn(*args, **kwargs)
    return out, [w for w in caught if issubclass(w.category, ps.DistributedWarning)]


@pytest.mark.parametrize('kvstore,update_on_kvstore,env,exposed', [
    ('dist_sync', False, None, True),
    ('dist_sync_device', False, None, True),
    ('dist_sync', None, '0', True),          # MXNET_UPDATE_ON_KVSTORE=0 turns it off
    ('dist_sync', None, None, False),        # the distributed default: updates on the servers
    ('dist_sync', True, None, False),
    ('dist_async', None, '0', False),        # async always updates on the servers
    ('device', False, None, False),          # local kvstores order their own operations
    ('local', False, None, False),
    (None, False, None, False),
])
def test_check_trainer_reports_exactly_the_racy_configuration(
        ctxs, monkeypatch, kvstore, update_on_kvstore, env, exposed):
    if env is None:
        monkeypatch.delenv('MXNET_UPDATE_ON_KVSTORE', raising=False)
    else:
        monkeypatch.setenv('MXNET_UPDATE_ON_KVSTORE', env)
    _, trainer = _trainer(ctxs, kvstore, update_on_kvstore)
    names, caught = _caught(ps.check_trainer, trainer)
    assert names == (['fc_bias', 'fc_weight'] if exposed else [])
    assert len(caught) == (1 if exposed else 0)
    if exposed:
        message = str(caught[0].message)
        assert "'fc_bias', 'fc_weight'" in message and kvstore in message
        assert 'ps.init_kvstore(trainer)' in message and 'update_on_kvstore=True' in message
        assert caught[0].filename == __file__   # points at the caller, not at paramsurgery
    assert _mx.trainer_kvstore(trainer)[2] is False   # no kvstore was created


def test_check_trainer_and_init_kvstore_with_deferred_parameters(ctxs):
    net = gluon.nn.Dense(3, prefix='fc_')       # in_units unknown until the first forward
    net.initialize(ctx=ctxs)
    trainer = gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': 0.1},
                            kvstore='dist_sync', update_on_kvstore=False)
    names, caught = _caught(ps.check_trainer, trainer)
    assert names == ['fc_bias', 'fc_weight']
    # the bias shape is known from units=3; only the weight waits for in_units
    assert "Parameter 'fc_weight' still waits for its first forward" in str(caught[0].message)
    with pytest.raises(ps.ParameterStateError) as info:
        ps.init_kvstore(trainer)
    assert "Parameter 'fc_weight' has not been initialised yet" in str(info.value)
    assert 'Nothing was done' in str(info.value) and 'in_units' in str(info.value)
    assert _mx.trainer_kvstore(trainer)[2] is False


@pytest.mark.parametrize('kvstore,update_on_kvstore', [
    ('dist_sync', None),      # creating it early would freeze the servers' gradient scale
    ('dist_sync', True),
    ('device', False),
    ('device', None),
    (None, False),
])
def test_init_kvstore_does_nothing_where_nothing_races(ctxs, hybridize, kvstore,
                                                       update_on_kvstore):
    net, trainer = _trainer(ctxs, kvstore, update_on_kvstore)
    if hybridize:
        net.hybridize()
    before = [d.asnumpy() for p in net.collect_params().values() for d in p.list_data()]
    assert ps.init_kvstore(trainer) == []
    assert _mx.trainer_kvstore(trainer)[2] is False   # no kvstore was created
    after = [d.asnumpy() for p in net.collect_params().values() for d in p.list_data()]
    for b, a in zip(before, after):
        np.testing.assert_array_equal(b, a)


def test_value_surgery_warns_on_an_exposed_trainer(ctxs):
    net, trainer = _trainer(ctxs, 'dist_sync', False)
    changed, caught = _caught(ps.set_params, net, 'fc_weight', 0.25)
    assert changed == ['fc_weight']
    for replica in net.weight.list_data():           # the surgery itself still happened
        np.testing.assert_array_equal(replica.asnumpy(), np.full((3, 4), 0.25, 'float32'))
    assert len(caught) == 1 and caught[0].filename == __file__
    assert 'ps.init_kvstore(trainer)' in str(caught[0].message)
    net, trainer = _trainer(ctxs, 'dist_sync', None)  # updates on the servers: no warning
    _, caught = _caught(ps.set_params, net, 'fc_weight', 0.25)
    assert caught == []


def test_distributed_helpers_reject_a_non_trainer():
    for fn in (ps.check_trainer, ps.init_kvstore):
        with pytest.raises(ps.SurgeryTypeError, match='expects a gluon.Trainer, got dict'):
            fn({})


# --------------------------------------------------------------------------- masks, stale, pruning

MASKS = COMMON + r'''
import json, os
import paramsurgery as ps
cfg = json.loads(os.environ['DIST_CFG'])
kv = mx.kv.create('dist_sync')
ctxs = [mx.cpu(0), mx.cpu(1)]
net = build_net(ctxs, True)
trainer = gluon.Trainer(net.collect_params(), *OPTIMIZER, kvstore=kv,
                        update_on_kvstore=cfg['update_on_kvstore'])

def masks():
    return {n: [m.asnumpy().tolist() for m in net.collect_params()[n + '_mask'].list_data()]
            for n in ps.masked(net)}

def weights():
    return {n: [d.asnumpy().tolist() for d in p.list_data()]
            for n, p in ps.masks.unmasked_params(net).items()}

def step(s):
    parts = gluon.utils.split_and_load(mx.nd.array(batch(kv.rank, s)), ctxs)
    with autograd.record():
        losses = [(net(part) ** 2).sum() for part in parts]
    autograd.backward(losses)
    ps.safe_step(trainer, 4 * kv.num_workers)   # also removes the first-step race

ps.prune_random(net, r'.*weight$', 0.5, seed=kv.rank)    # local randomness: masks differ
local = masks()
broadcast = ps.broadcast_masks(kv, net)
shared = masks()
for s in range(STEPS):
    step(s)
trained = weights()
pruner = ps.Pruner(net, r'.*weight$', ps.ConstantSparsity(0.8, frequency=1), scope='global')
pruned = pruner.step(0)
step(STEPS)
final, final_masks = weights(), masks()
problems = [p.code for p in ps.check_params(net)]
with autograd.record():                            # the second layer does not run
    loss = sum(net[0](part).sum() for part in gluon.utils.split_and_load(
        mx.nd.array(batch(kv.rank, 9)), ctxs))
loss.backward()
stale = sorted({(r.name, r.reason) for r in ps.find_stale(trainer)})
try:
    ps.safe_step(trainer, 8, allow_stale='.*dense1.*')
    refused = None
except ps.StaleGradientError as err:
    refused = str(err)
print('RESULT ' + json.dumps({
    'rank': kv.rank, 'local': local, 'broadcast': broadcast, 'shared': shared,
    'trained': trained, 'pruned': pruned, 'final': final, 'final_masks': final_masks,
    'problems': problems, 'stale': stale, 'refused': refused,
    'unchanged_after_refusal': weights() == final}))
'''


def _masked_reference(rank0_masks):
    """Single process: rank 0's masks, every worker's rows in one batch, then the Pruner."""
    ns = {}
    exec(COMMON, ns)  # pylint: disable=exec-used
    net = ns['build_net']([mx.cpu(0)], False)
    ps.apply_mask(net, {n: np.array(m[0], dtype=np.float32) for n, m in rank0_masks.items()})
    trainer = gluon.Trainer(net.collect_params(), *ns['OPTIMIZER'], kvstore=None)

    def step(s):
        x = np.concatenate([ns['batch'](rank, s) for rank in range(2)])
        ns['train_step'](net, trainer, x, [mx.cpu(0)], len(x))
    for s in range(ns['STEPS']):
        step(s)
    ps.Pruner(net, r'.*weight$', ps.ConstantSparsity(0.8, frequency=1), scope='global').step(0)
    step(ns['STEPS'])
    return ({n: p.data().asnumpy() for n, p in ps.masks.unmasked_params(net).items()},
            {n: m.asnumpy() for n, m in ps.get_mask(net, r'.*weight$').items()})


@pytest.mark.cluster
@pytest.mark.parametrize('update_on_kvstore', [True, False], ids=['uok-true', 'uok-false'])
def test_masks_pruner_and_stale_on_dist_sync(update_on_kvstore):
    results = run_cluster(MASKS, workers=2, timeout=90, extra_env={
        'DIST_CFG': json.dumps({'update_on_kvstore': update_on_kvstore})})
    results.sort(key=lambda r: r['rank'])
    rank0, rank1 = results
    weights = ['mlp_dense0_weight', 'mlp_dense1_weight']
    # local masks differed; broadcast_masks made both workers use rank 0's
    assert rank0['local'] != rank1['local']
    for r in results:
        assert r['broadcast'] == weights
        assert r['shared'] == rank0['local']
    ref_weights, ref_masks = _masked_reference(rank0['local'])
    ns = {}
    exec(COMMON, ns)  # pylint: disable=exec-used
    initial = {n: p.data().asnumpy() for n, p in ns['build_net']([mx.cpu(0)], False)
               .collect_params().items()}
    for r in results:
        for name, replicas in r['final'].items():   # every worker, every context
            # effective weights: the reference zeroes momentum under the Pruner's new zeros
            # (API section 10), the servers of update_on_kvstore=True keep their own state,
            # which may still move stored entries under the masks
            mask = ref_masks[name] if name in ref_masks else 1
            for replica in replicas:
                np.testing.assert_allclose(np.array(replica) * mask, ref_weights[name] * mask,
                                           rtol=1e-5, atol=1e-6,
                                           err_msg='rank %d %s' % (r['rank'], name))
        assert r['pruned'] is True
        zeros = 0
        for name in weights:
            for mask in r['final_masks'][name]:
                np.testing.assert_array_equal(mask, ref_masks[name])  # identical everywhere
            # entries under the broadcast masks got no gradient: still at their initial value
            hidden = np.array(rank0['local'][name][0]) == 0
            for w in r['trained'][name]:
                np.testing.assert_array_equal(np.array(w)[hidden], initial[name][hidden])
            zeros += int((np.array(r['final_masks'][name][0]) == 0).sum())
        assert zeros == int(np.floor(0.8 * (5 * 4 + 3 * 5) + 0.5))
        assert r['problems'] == []
        # the unused head is diagnosed, and never skipped on a distributed kvstore
        assert r['stale'] == [['mlp_dense1_bias', 'unused'], ['mlp_dense1_weight', 'unused']]
        assert 'distributed' in r['refused'] and 'mlp_dense1_weight' in r['refused']
        assert r['unchanged_after_refusal'] is True
