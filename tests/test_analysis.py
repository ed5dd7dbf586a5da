"""Tests of sensitivity analysis and budget plans (``paramsurgery.analysis``)."""
import itertools
import json
import os

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon
from mxnet.gluon import nn

import paramsurgery as ps
from paramsurgery import budget
from paramsurgery.analysis import SensitivityReport, sensitivity

from helpers import split


def small_cnn(ctxs, hybridize, seed=0):
    net = nn.HybridSequential(prefix='cnn_')
    with net.name_scope():
        net.add(nn.Conv2D(6, 3, padding=1, in_channels=2), nn.BatchNorm(in_channels=6),
                nn.Activation('relu'), nn.Conv2D(8, 3, padding=1, in_channels=6),
                nn.BatchNorm(in_channels=8), nn.Activation('relu'), nn.GlobalAvgPool2D(),
                nn.Dense(3, in_units=8))
    mx.random.seed(seed)
    net.initialize(mx.init.Xavier(), ctx=ctxs)
    if hybridize:
        net.hybridize()
    return net


def data(n=16, seed=3):
    rng = np.random.RandomState(seed)
    return mx.nd.array(rng.randn(n, 2, 6, 6)), mx.nd.array(rng.randint(0, 3, n))


def state_of(net, trainer=None):
    """Every replica of every parameter, and the trainer's optimizer states, as bytes."""
    out = {}
    for name, param in net.collect_params().items():
        out[name] = [a.asnumpy().tobytes() for a in param.list_data()]
    if trainer is not None:
        for i, updater in enumerate(ps._mx.process_updaters(trainer)):
            for key, st in sorted(updater.states.items()):
                arrays = st if isinstance(st, (tuple, list)) else [st]
                out['state%d/%d' % (i, key)] = [a.asnumpy().tobytes() for a in arrays
                                               if a is not None]
        out['counters'] = repr(ps._mx.optimizer_counters(trainer.optimizer))
    return out


def accuracy_of(x, y):
    def evaluate(net):
        ctx = net.collect_params().values().__iter__().__next__().list_ctx()[0]
        return float((net(x.as_in_context(ctx)).argmax(axis=1) == y.as_in_context(ctx))
                     .mean().asscalar())
    return evaluate


def test_weights_trials_match_prune_magnitude_and_restore_everything(ctxs, hybridize):
    net = small_cnn(ctxs, hybridize)
    x, y = data()
    evaluate = accuracy_of(x, y)
    before = state_of(net)
    report = sensitivity(net, evaluate, kind='weights', amounts=[0.3, 0.8], progress=False)
    assert state_of(net) == before
    assert report.names == ['cnn_conv0_weight', 'cnn_conv1_weight', 'cnn_dense0_weight']
    assert report.baseline == evaluate(net)
    for row in report.table:
        fresh = small_cnn(ctxs, hybridize)
        ps.prune_magnitude(fresh, row['name'], row['amount'])
        assert row['metric'] == evaluate(fresh)
        assert row['drop'] == report.baseline - row['metric']
        size = fresh.collect_params()[row['name']].data().size
        assert row['params_removed'] == row['removed'] == int(np.floor(row['amount'] * size
                                                                        + 0.5))
        assert row['macs_removed'] == 0


def test_trials_keep_existing_masks_and_count_what_is_still_unmasked(ctxs):
    net = small_cnn(ctxs, False)
    ps.prune_magnitude(net, 'cnn_conv1_weight', 0.5)
    before = state_of(net)
    report = sensitivity(net, accuracy_of(*data()), kind='weights', key='cnn_conv1_weight',
                         amounts=[0.5], progress=False)
    assert state_of(net) == before
    assert report.table[0]['removed'] == int(np.floor(0.5 * 216 + 0.5))   # of the 216 left


@pytest.mark.parametrize('update_on_kvstore', [None, False])
def test_evaluate_that_trains_and_moves_batchnorm_is_undone(ctxs, hybridize, update_on_kvstore):
    # A twin net trained the same way without the analysis must match bit for bit after one
    # more step: weights, momentum, counters and (with update_on_kvstore) the kvstore copy.
    x, y = data()
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    nets, trainers = [], []
    for _ in range(2):
        net = small_cnn(ctxs, hybridize)
        nets.append(net)
        trainers.append(gluon.Trainer(net.collect_params(), 'sgd',
                                      {'learning_rate': 0.1, 'momentum': 0.9},
                                      update_on_kvstore=update_on_kvstore))

    def train_step(net, trainer):
        with autograd.record():
            losses = [loss_fn(net(xs), ys) for xs, ys in zip(split(x, ctxs), split(y, ctxs))]
        autograd.backward(losses)
        trainer.step(len(x))

    for net, trainer in zip(nets, trainers):
        train_step(net, trainer)      # momentum, counters and kvstore copies exist
    net, trainer = nets[0], trainers[0]
    before = state_of(net, trainer)
    calls = []

    def evaluate(net):
        train_step(net, trainer)      # moves weights, momentum, BN statistics, counters
        calls.append(1)
        return accuracy_of(x, y)(net)

    sensitivity(net, evaluate, kind='weights', amounts=[0.5], progress=False)
    assert len(calls) == 1 + 3
    assert state_of(net, trainer) == before
    for net, trainer in zip(nets, trainers):
        train_step(net, trainer)
    assert state_of(nets[0], trainers[0]) == state_of(nets[1], trainers[1])


def test_the_cached_graph_is_put_back():
    # Trials hold their entries masked in the graph (a new cached graph per trial); the
    # rollback puts the net's own cached graph object back.
    net = small_cnn([mx.cpu(0)], True)
    x, y = data()
    net(x)
    cached = net._cached_op
    sensitivity(net, accuracy_of(x, y), kind='weights', amounts=[0.5], progress=False)
    assert net._cached_op is cached


@pytest.mark.parametrize('bad, error', [
    (lambda net: 'high', ps.SurgeryTypeError),
    (lambda net: float('nan'), ps.SurgeryValueError),
    (lambda net: None, ps.SurgeryTypeError),
    (lambda net: True, ps.SurgeryTypeError),
])
def test_evaluate_returning_a_non_number_raises_after_restoring(ctxs, bad, error):
    net = small_cnn(ctxs, False)
    before = state_of(net)
    with pytest.raises(error, match='evaluate'):
        sensitivity(net, bad, kind='weights', progress=False)
    assert state_of(net) == before


def test_evaluate_raising_is_passed_on_after_restoring(ctxs):
    net = small_cnn(ctxs, False)
    before = state_of(net)
    calls = []

    def evaluate(net):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError('boom')
        return 1.0

    with pytest.raises(RuntimeError, match='boom'):
        sensitivity(net, evaluate, kind='weights', progress=False)
    assert state_of(net) == before


@pytest.mark.parametrize('kwargs, error, match', [
    ({'kind': 'filters'}, ps.SurgeryValueError, 'kind'),
    ({'amounts': []}, ps.SurgeryValueError, 'amounts'),
    ({'amounts': ()}, ps.SurgeryValueError, 'amounts'),
    ({'amounts': 0.5}, ps.SurgeryTypeError, 'amounts'),
    ({'amounts': [1.5]}, ps.SurgeryValueError,
     r'fraction of the entries still unmasked\. Did you mean amount=0\.015'),
    ({'amounts': [float('nan')]}, ps.SurgeryValueError, 'not finite'),
    ({'amounts': [0.5, 0.5]}, ps.SurgeryValueError, 'repeated'),
    ({'importance': 'taylor', 'kind': 'weights'}, ps.SurgeryValueError, 'importance'),
    ({'progress': 'no'}, ps.SurgeryTypeError, 'progress'),
    ({'kind': 'channels'}, ps.SurgeryValueError, 'inputs'),
    ({'key': 'nothing.*', 'kind': 'weights'}, ps.SelectionError, 'nothing'),
])
def test_bad_arguments_raise_before_any_trial(kwargs, error, match):
    net = small_cnn([mx.cpu(0)], False)
    before = state_of(net)
    calls = []
    with pytest.raises(error, match=match):
        sensitivity(net, lambda n: calls.append(1) or 1.0, **kwargs)
    assert calls == [] and state_of(net) == before


def synthetic(rows, dense=100):
    table = [{'name': n, 'amount': a, 'metric': 1 - d, 'drop': d, 'macs_removed': 0,
              'params_removed': r, 'removed': r} for n, a, d, r in rows]
    return SensitivityReport('weights', 1.0, sorted({a for _, a, _, _ in rows}), table, 0,
                             dense, [])


def test_plan_is_the_cheapest_combination_that_reaches_the_budget():
    rng = np.random.RandomState(0)
    names, amounts = ['a', 'b', 'c', 'd'], [0.25, 0.5, 0.75]
    rows = [(n, a, float(rng.rand() * a), int(a * 25 * (i + 1)))
            for i, n in enumerate(names) for a in amounts]
    report = synthetic(rows, dense=250)
    for ratio in (1.1, 1.5, 2.0, 3.0):
        need = 250 - 250 / ratio
        best = None
        for choice in itertools.product([None] + amounts, repeat=len(names)):
            got = sum(r for n, a, d, r in rows if dict(zip(names, choice))[n] == a)
            cost = sum(d for n, a, d, r in rows if dict(zip(names, choice))[n] == a)
            if got >= need and (best is None or cost < best - 1e-12):
                best = cost
        plan = report.plan(params_ratio=ratio)
        assert report._combined(plan)[1] >= need
        assert sum(d for n, a, d, r in rows if plan.get(n) == a) == pytest.approx(best)


def test_plan_budgets_and_errors():
    report = synthetic([('a', 0.5, 0.01, 10), ('a', 0.9, 0.2, 18),
                        ('b', 0.5, 0.3, 30), ('b', 0.9, 0.5, 54)])
    assert report.plan(max_drop=0.1) == {'a': 0.5}
    assert report.plan(max_drop=0.3) == {'a': 0.9, 'b': 0.5}
    with pytest.raises(ps.SurgeryValueError, match='exactly one budget'):
        report.plan(params_ratio=2, max_drop=0.1)
    with pytest.raises(ps.SurgeryValueError, match='exactly one budget'):
        report.plan()
    with pytest.raises(ps.SurgeryValueError, match='cannot be reached'):
        report.plan(params_ratio=10)
    with pytest.raises(ps.SurgeryValueError, match='no MACs'):
        report.plan(macs_ratio=2)
    with pytest.raises(ps.SurgeryValueError, match='> 1'):
        report.plan(params_ratio=0.5)
    with pytest.raises(ps.SurgeryValueError, match='finite'):
        report.plan(max_drop=float('nan'))


def test_save_load_str_and_plot(tmp_path):
    net = small_cnn([mx.cpu(0)], False)
    report = sensitivity(net, accuracy_of(*data()), kind='weights', amounts=[0.2, 0.6],
                         progress=False)
    path = str(tmp_path / 'report.json')
    report.save(path)
    again = SensitivityReport.load(path)
    assert again.table == report.table and again.baseline == report.baseline
    assert again.plan(max_drop=0.5) == report.plan(max_drop=0.5)
    assert os.listdir(tmp_path) == ['report.json']
    lines = str(report).splitlines()
    assert lines[1].split() == ['weight', '\\', 'amount', '0.2', '0.6']
    assert [l.split()[0] for l in lines[3:]] == report.names
    png = str(tmp_path / 'curves.png')
    report.plot(png)
    assert open(png, 'rb').read(8) == b'\x89PNG\r\n\x1a\n'
    with open(path, 'w') as f:
        json.dump({'format': 'other'}, f)
    with pytest.raises(ps.FileFormatError, match='not a readable sensitivity report'):
        SensitivityReport.load(path)


def test_a_plan_is_an_amount_for_prune_magnitude(ctxs):
    net = small_cnn(ctxs, False)
    report = sensitivity(net, accuracy_of(*data()), kind='weights', amounts=[0.25, 0.5, 0.9],
                         progress=False)
    plan = report.plan(params_ratio=1.5)
    assert ps.prune_magnitude(net, '.*weight', plan) == list(plan)
    zeros = {name: int(ps.sparsity_report(net, name).rows[0]['zeros']) for name in plan}
    assert sum(zeros.values()) == report._combined(plan)[1]
    assert ps.masked(net) == list(plan)


def test_channel_trials_match_prune_channels_and_shrink(ctxs, hybridize):
    # every trial: the metric of prune_channels({group: amount}); MACs and parameters
    # removed as count_ops of the shrunk net; and a plan's combined removal is exact
    def build():
        net = small_cnn(ctxs, hybridize)
        net.collect_params().setattr('grad_req', 'write')
        return net

    x, y = data()
    evaluate = accuracy_of(x, y)
    shape = (1, 2, 6, 6)
    net = build()
    before = state_of(net)
    report = sensitivity(net, evaluate, inputs=shape, amounts=[0.25, 0.5, 3], progress=False)
    assert state_of(net) == before
    assert report.names == ['cnn_conv0_weight', 'cnn_conv1_weight']
    dense_macs, dense_params = ps.count_ops(net, shape)
    assert (report.dense_macs, report.dense_params) == (dense_macs, dense_params)
    for row in report.table:
        fresh = build()
        ps.prune_channels(fresh, {row['name']: row['amount']}, inputs=shape)
        assert row['metric'] == evaluate(fresh)
        ps.shrink(fresh, inputs=shape)
        macs, params = ps.count_ops(fresh, shape)
        assert (row['macs_removed'], row['params_removed']) == (dense_macs - macs,
                                                                dense_params - params)
    plan = report.plan(macs_ratio=1.8)
    fresh = build()
    ps.prune_channels(fresh, plan, inputs=shape)
    ps.shrink(fresh, inputs=shape)
    macs, params = ps.count_ops(fresh, shape)
    assert report._combined(plan) == (dense_macs - macs, dense_params - params)
    assert dense_macs / macs >= 1.8


def test_the_large_net_search_finds_the_knapsack_optimum(monkeypatch):
    # beyond EXHAUSTIVE combinations: knapsack, repair, local search (exact for weights)
    rng = np.random.RandomState(1)
    names, amounts = ['a', 'b', 'c', 'd'], [0.25, 0.5, 0.75]
    rows = [(n, a, float(rng.rand() * a), int(a * 25 * (i + 1)))
            for i, n in enumerate(names) for a in amounts]
    report = synthetic(rows, dense=250)
    exhaustive = [report.plan(params_ratio=r) for r in (1.2, 1.6, 2.4)]
    monkeypatch.setattr(budget, 'EXHAUSTIVE', 0)
    assert [report.plan(params_ratio=r) for r in (1.2, 1.6, 2.4)] == exhaustive


def test_the_large_net_search_meets_overlapping_budgets(monkeypatch):
    net = small_cnn([mx.cpu(0)], True)
    report = sensitivity(net, accuracy_of(*data()), inputs=(1, 2, 6, 6), progress=False)
    monkeypatch.setattr(budget, 'EXHAUSTIVE', 0)
    for ratio in (1.5, 2.5, 4.0):
        plan = report.plan(macs_ratio=ratio)
        assert report.dense_macs / (report.dense_macs - report._combined(plan)[0]) >= ratio


# --------------------------------------------------------------------------- trials are transactions

LOSS = gluon.loss.SoftmaxCrossEntropyLoss()


def train_steps(net, trainer, x, y, ctxs, steps):
    for _ in range(steps):
        with autograd.record():
            losses = [LOSS(net(xs), ys) for xs, ys in zip(split(x, ctxs), split(y, ctxs))]
        autograd.backward(losses)
        trainer.step(len(x))


def fine_tuning(x, y, ctxs, steps=3):
    """An evaluate that fine-tunes with a Trainer it builds itself (momentum, so that
    revived entries would move), then returns minus the loss (higher is better)."""
    def evaluate(net):
        trainer = gluon.Trainer(net.collect_params(), 'sgd',
                                {'learning_rate': 0.5, 'momentum': 0.9})
        train_steps(net, trainer, x, y, ctxs, steps)
        out = [LOSS(net(xs), ys).asnumpy() for xs, ys in zip(split(x, ctxs), split(y, ctxs))]
        return -float(np.concatenate(out).mean())
    return evaluate


def test_evaluate_that_builds_its_own_trainer_is_undone(ctxs, hybridize):
    # Before: the weights stayed trained, and later trials ran on an already-trained net.
    x, y = data()
    net = small_cnn(ctxs, hybridize)
    evaluate = fine_tuning(x, y, ctxs)
    before = state_of(net)
    report = sensitivity(net, evaluate, kind='weights', amounts=[0.5], progress=False)
    assert state_of(net) == before
    assert all(p._trainer is None for p in net.collect_params().values())
    # every trial (and the baseline) ran on the untouched net, pruned as prune_magnitude
    # prunes it: the same computation on the same values, so the same bits
    assert report.baseline == evaluate(small_cnn(ctxs, hybridize))
    for row in report.table:
        fresh = small_cnn(ctxs, hybridize)
        ps.prune_magnitude(fresh, row['name'], row['amount'])
        assert row['metric'] == evaluate(fresh), row['name']


def test_trained_channel_trial_computes_what_prune_channels_then_evaluate_computes(
        ctxs, hybridize):
    # Before: a trial only zeroed the stored weights, so fine-tuning revived the channels
    # (issue: -1.1057 recorded where prune_channels + the same evaluate gives -1.1150).
    x, y = data()
    shape = (1, 2, 6, 6)
    evaluate = fine_tuning(x, y, ctxs)
    net = small_cnn(ctxs, hybridize)
    before = state_of(net)
    report = sensitivity(net, evaluate, inputs=shape, amounts=[0.5], progress=False)
    assert state_of(net) == before
    assert ps.masked(net) == []
    for row in report.table:
        fresh = small_cnn(ctxs, hybridize)
        ps.prune_channels(fresh, {row['name']: row['amount']}, inputs=shape)
        assert row['metric'] == evaluate(fresh), row['name']


@pytest.mark.parametrize('hybrid', [False, True], ids=['imperative', 'hybrid'])
def test_update_on_kvstore_trainer_first_stepped_inside_evaluate(hybrid):
    # Two contexts, kvstore 'device', update_on_kvstore=True, never stepped before: its first
    # step inside evaluate creates the kvstore and its Updater (momentum). Before, that
    # momentum stayed while the update counts were put back, and training afterwards
    # differed from a twin that never ran sensitivity. The twin runs the very same
    # operations on the same values, so the comparison is bit for bit.
    ctxs = [mx.cpu(0), mx.cpu(1)]
    x, y = data()
    nets = [small_cnn(ctxs, hybrid) for _ in range(2)]
    trainers = [gluon.Trainer(n.collect_params(), 'sgd', {'learning_rate': 0.1,
                                                         'momentum': 0.9},
                              kvstore='device', update_on_kvstore=True) for n in nets]
    net, trainer = nets[0], trainers[0]

    def evaluate(net):
        train_steps(net, trainer, x, y, ctxs, 2)
        return accuracy_of(x, y)(net)

    before = state_of(net, trainer)
    sensitivity(net, evaluate, kind='weights', amounts=[0.5], progress=False)
    assert state_of(net, trainer) == before
    assert not trainer._kv_initialized
    for n, t in zip(nets, trainers):
        train_steps(n, t, x, y, ctxs, 3)
    assert state_of(nets[0], trainers[0]) == state_of(nets[1], trainers[1])


def test_masks_set_or_added_inside_evaluate_are_undone(ctxs, hybridize):
    # Before: a mask changed (set_params on it) or added (prune_magnitude) inside evaluate
    # stayed, with its mode.
    net = small_cnn(ctxs, hybridize)
    ps.prune_magnitude(net, 'cnn_conv1_weight', 0.5)                    # graph mode
    ps.prune_magnitude(net, 'cnn_dense0_weight', 0.25, mode='update')
    x, y = data()
    reference = [o.asnumpy().tobytes() for o in
                 (net(xs) for xs in split(x, ctxs))]
    before = state_of(net)
    modes = {n: ps.masks.mask_mode(net, n) for n in ps.masked(net)}

    def evaluate(net):
        ps.set_params(net, 'cnn_conv1_weight_mask', 1)
        ps.prune_magnitude(net, 'cnn_conv0_weight', 0.5, mode='update')
        ps.prune_magnitude(net, 'cnn_dense0_weight', 0.5, mode='graph')   # switches mode
        return accuracy_of(x, y)(net)

    sensitivity(net, evaluate, kind='weights', amounts=[0.5], progress=False)
    assert {n: ps.masks.mask_mode(net, n) for n in ps.masked(net)} == modes
    assert state_of(net) == before
    assert [o.asnumpy().tobytes() for o in (net(xs) for xs in split(x, ctxs))] == reference


def test_kvstore_copy_of_batchnorm_statistics_is_unchanged(hybridize):
    # The kvstore keeps the BatchNorm statistics it was initialised with (they have no
    # gradient, so steps never push them); before, the put-back after a trial that stepped
    # pushed the replicas' newer statistics into it.
    ctxs = [mx.cpu(0), mx.cpu(1)]
    x, y = data()
    net = small_cnn(ctxs, hybridize)
    trainer = gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': 0.1},
                            kvstore='device', update_on_kvstore=True)
    train_steps(net, trainer, x, y, ctxs, 2)    # the replicas' statistics move on
    params = ps._mx.trainer_params(trainer)

    def kvstore_copies():
        out = {}
        for idx, param in enumerate(params):
            buf = mx.nd.zeros(param.shape)
            trainer._kvstore.pull(idx, out=buf)
            out[param.name] = buf.asnumpy().tobytes()
        return out

    copies = kvstore_copies()
    stats = [n for n in copies if 'running' in n]
    # the kvstore's statistics are not the replicas' (else the test could not fail)
    assert any(copies[n] != net.collect_params()[n].data(mx.cpu(0)).asnumpy().tobytes()
               for n in stats)

    def evaluate(net):
        train_steps(net, trainer, x, y, ctxs, 1)   # the put-back of the weights it moved
        return 1.0                                  # must leave the statistics alone

    sensitivity(net, evaluate, kind='weights', amounts=[0.5], progress=False)
    assert kvstore_copies() == copies


def _saved_report(tmp_path):
    net = small_cnn([mx.cpu(0)], False)
    report = sensitivity(net, accuracy_of(*data()), inputs=(1, 2, 6, 6), amounts=[0.5],
                         progress=False)
    path = str(tmp_path / 'report.json')
    report.save(path)
    with open(path) as f:
        return path, json.load(f)


def _drop_field(data):
    del data['table'][1]['drop']


def _units_null(data):
    data['units'] = None


def _metric_string(data):
    data['table'][0]['metric'] = '0.5'


def _shape_string(data):
    data['units'][0]['shape'][0] = 'six'


def _baseline_nan(data):
    data['baseline'] = float('nan')


@pytest.mark.parametrize('damage, match', [
    (_drop_field, "row 1 of the table has no field 'drop'"),
    (_units_null, "'units' = None"),
    (_metric_string, "row 0 of the table has 'metric' = '0.5'"),
    (_shape_string, "entry 0 of units has 'shape'"),
    (_baseline_nan, "'baseline' = nan"),
])
def test_load_refuses_a_damaged_report(tmp_path, damage, match):
    # Before: load accepted these and plan() raised a bare KeyError/TypeError/ValueError.
    path, data = _saved_report(tmp_path)
    damage(data)
    with open(path, 'w') as f:
        json.dump(data, f)
    with pytest.raises(ps.FileFormatError, match=match):
        SensitivityReport.load(path)


def test_load_accepts_what_save_wrote(tmp_path):
    path, _ = _saved_report(tmp_path)
    report = SensitivityReport.load(path)
    assert report.plan(max_drop=1.0) is not None


class _OwnForward(gluon.HybridBlock):
    """Reads its weight itself in forward(): a mask could not reach that computation."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.weight = self.params.get('weight', shape=(3, 4))

    def forward(self, x):
        return mx.nd.dot(x, self.weight.data(x.context).T)


def test_weights_that_cannot_take_a_mask_are_refused_before_any_trial():
    # A trial masks as prune_magnitude does; before, it zeroed the stored weight, which an
    # evaluate that trains would revive.
    net = _OwnForward(prefix='own_')
    net.initialize()
    before = state_of(net)
    calls = []
    with pytest.raises(ps.SurgeryTypeError, match="own_weight.*overrides forward"):
        sensitivity(net, lambda n: calls.append(1) or 1.0, kind='weights', progress=False)
    assert calls == [] and state_of(net) == before
    with pytest.raises(ps.SurgeryTypeError, match="own_weight.*overrides forward"):
        ps.prune_magnitude(net, 'own_weight', 0.5)


# --------------------------------------------------------------------------- latency budgets

def _entries_clock(monkeypatch):
    """A fake clock: a microsecond per weight entry of the convolution and dense layers
    (masks, biases and BatchNorm are free), the same alone and in the whole nets, so the
    latency model's fit is exact and every kept count it measured is a fast count."""
    from paramsurgery import latency
    monkeypatch.setattr(latency.timing, '_TIMER', lambda runtime, variant: 1e-6 * sum(
        a.size for n, a in variant.arrays.items() if a.ndim >= 2 and not n.endswith('_mask')))


@pytest.mark.parametrize('ctxs', [[mx.cpu(0)], [mx.cpu(0), mx.cpu(1)]], ids=['1ctx', '2ctx'])
@pytest.mark.parametrize('hybridize', [False, True], ids=['imperative', 'hybrid'])
def test_latency_plan_is_the_cheapest_that_the_model_says_reaches_the_ratio(
        monkeypatch, ctxs, hybridize):
    _entries_clock(monkeypatch)
    shape = (1, 2, 6, 6)
    net = small_cnn(ctxs, hybridize)
    model = ps.latency_model(net, inputs=shape)
    before = state_of(net)
    report = sensitivity(net, accuracy_of(*data()), inputs=shape, amounts=[0.25, 0.5, 0.75],
                         round_to='fast', latency=model, progress=False)
    assert state_of(net) == before
    names = report.names
    for ratio in (1.2, 1.5, 2.0):
        plan = report.plan(latency_ratio=ratio, latency=model)
        best = None
        for choice in itertools.product([None] + list(report.amounts), repeat=len(names)):
            rows = [r for r in report.table if dict(zip(names, choice))[r['name']] ==
                    r['amount']]
            kept = {r['name']: model.sizes[r['name']] - r['removed'] for r in rows}
            cost = sum(max(0.0, r['drop']) for r in rows)
            if model.dense / model.predict(kept) >= ratio and (best is None or cost < best):
                best = cost
        rows = [r for r in report.table if plan.get(r['name']) == r['amount']]
        assert sum(max(0.0, r['drop']) for r in rows) == pytest.approx(best, abs=1e-12)
        predicted = report.predict(plan, latency=model)
        assert predicted['latency_ratio'] >= ratio
        assert predicted['drop'] == pytest.approx(sum(r['drop'] for r in rows), abs=1e-12)
        # applied with the same rounding and shrunk, the net measures what was predicted
        fresh = small_cnn(ctxs, hybridize)
        ps.prune_channels(fresh, plan, inputs=shape, round_to='fast', latency=model)
        ps.shrink(fresh, inputs=shape)
        measured = ps.measure_latency(fresh, inputs=shape, repeats=1)
        assert model.measured / measured.median == pytest.approx(predicted['latency_ratio'],
                                                                 rel=1e-9)
        macs, params = ps.count_ops(fresh, shape)
        assert predicted['macs_ratio'] == pytest.approx(report.dense_macs / macs, rel=1e-12)
        assert predicted['params_ratio'] == pytest.approx(report.dense_params / params,
                                                          rel=1e-12)


def _entries(variant):
    return 1e-6 * sum(a.size for n, a in variant.arrays.items()
                      if a.ndim >= 2 and not n.endswith('_mask'))


@pytest.mark.parametrize('ctxs', [[mx.cpu(0)], [mx.cpu(0), mx.cpu(1)]], ids=['1ctx', '2ctx'])
@pytest.mark.parametrize('hybridize', [False, True], ids=['imperative', 'hybrid'])
def test_latency_plan_is_measured_and_made_again_when_short(monkeypatch, ctxs, hybridize):
    """After the model is built, every shrunk whole net runs 1.5x slower than the model can
    know: the plan a loaded model makes measures short of the ratio; the model built here
    measures its plan, and the plan made again reaches the ratio, measured."""
    from paramsurgery import latency
    slow = {'on': False}

    def clock(runtime, variant):
        shrunk = variant.layer is None and (variant.arrays['cnn_conv0_weight'].shape[0] < 6
                                            or variant.arrays['cnn_conv1_weight'].shape[0] < 8)
        return _entries(variant) * (1.5 if slow['on'] and shrunk else 1.0)
    monkeypatch.setattr(latency.timing, '_TIMER', clock)
    shape, ratio = (1, 2, 6, 6), 1.4
    net = small_cnn(ctxs, hybridize)
    model = ps.latency_model(net, inputs=shape)
    report = sensitivity(net, accuracy_of(*data()), inputs=shape, amounts=[0.25, 0.5, 0.75],
                         round_to='fast', latency=model, progress=False)
    loaded = ps.LatencyModel(json.loads(json.dumps(model._data)))
    calibration = len(model.calibration)
    before = state_of(net)
    slow['on'] = True

    def measured(plan):
        fresh = small_cnn(ctxs, hybridize)
        ps.prune_channels(fresh, plan, inputs=shape, round_to='fast', latency=model)
        ps.shrink(fresh, inputs=shape)
        dense, small = ps.compare_latency([small_cnn(ctxs, hybridize), fresh], inputs=shape,
                                          repeats=1)
        return dense.median / small.median

    unchecked = report.plan(latency_ratio=ratio, latency=loaded)
    assert not loaded.can_measure and measured(unchecked) < 0.9 * ratio
    plan = report.plan(latency_ratio=ratio, latency=model)
    assert measured(plan) >= ratio
    assert len(model.calibration) > calibration
    assert state_of(net) == before


def test_latency_plan_uses_only_fast_counts(monkeypatch):
    _entries_clock(monkeypatch)
    shape = (1, 2, 6, 6)
    net = small_cnn([mx.cpu(0)], False)
    # measured counts 3, 6 and 4, 8: of the kept counts 4, 3, 1 (conv0) and 6, 4, 2 (conv1)
    # that the amounts give, only 3 and 4 are fast
    model = ps.latency_model(net, inputs=shape, counts={'cnn_conv0_weight': [3],
                                                        'cnn_conv1_weight': [4]})
    report = sensitivity(net, accuracy_of(*data()), inputs=shape, amounts=[0.25, 0.5, 0.75],
                         progress=False)
    plan = report.plan(latency_ratio=1.01, latency=model)
    assert set(plan.values()) == {0.5}
    with pytest.raises(ps.SurgeryValueError, match='fast counts .2 of 6 rows'):
        report.plan(latency_ratio=50, latency=model)


def test_latency_plan_and_predict_errors(monkeypatch):
    _entries_clock(monkeypatch)
    shape = (1, 2, 6, 6)
    net = small_cnn([mx.cpu(0)], False)
    model = ps.latency_model(net, inputs=shape)
    report = sensitivity(net, accuracy_of(*data()), inputs=shape, amounts=[0.5],
                         progress=False)
    weights = synthetic([('a', 0.5, 0.01, 10)])
    for call, error, match in [
            (lambda: report.plan(latency_ratio=2), ps.SurgeryValueError, 'latency='),
            (lambda: report.plan(latency_ratio=2, latency='m'), ps.SurgeryTypeError,
             'LatencyModel'),
            (lambda: report.plan(macs_ratio=2, latency=model), ps.SurgeryValueError,
             'latency_ratio= only'),
            (lambda: report.plan(latency_ratio=0.5, latency=model), ps.SurgeryValueError,
             '> 1'),
            (lambda: weights.plan(latency_ratio=2, latency=model), ps.SurgeryValueError,
             "kind='channels'"),
            (lambda: report.predict({'x': 0.5}), ps.SurgeryValueError, "'x'"),
            (lambda: report.predict({'cnn_conv0_weight': 0.3}), ps.SurgeryValueError,
             'not measured'),
            (lambda: report.predict([0.5]), ps.SurgeryTypeError, 'dict')]:
        with pytest.raises(error, match=match):
            call()
    assert report.predict({}) == {'macs_ratio': 1.0, 'params_ratio': 1.0,
                                  'latency_ratio': None, 'drop': 0.0}


def test_plot_marks_the_chosen_plan(tmp_path):
    net = small_cnn([mx.cpu(0)], False)
    report = sensitivity(net, accuracy_of(*data()), kind='weights', amounts=[0.2, 0.6],
                         progress=False)
    plain, marked = str(tmp_path / 'plain.png'), str(tmp_path / 'marked.png')
    report.plot(plain)
    report.plot(marked, plan={report.names[0]: 0.6})
    # the same figure but for the ring: the images differ
    assert open(plain, 'rb').read() != open(marked, 'rb').read()
    with pytest.raises(ps.SurgeryValueError, match='not measured'):
        report.plot(str(tmp_path / 'bad.png'), plan={report.names[0]: 0.5})
    assert sorted(os.listdir(tmp_path)) == ['marked.png', 'plain.png']
