"""Stale gradients: find_stale, track_usage, safe_step, explain.

Every behaviour runs on one context and on two, hybridised and not, with every way a
Trainer can hold the weights (no kvstore, kvstore 'device' updating locally, kvstore
'device' updating on the kvstore), and checks the values the Trainer wrote against a
hand-computed SGD-with-momentum update.
"""
import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon, nd
from mxnet.gluon import nn

import paramsurgery as ps
from paramsurgery import _mx

ONE = [mx.cpu(0)]
TWO = [mx.cpu(0), mx.cpu(1)]
LR, MOMENTUM, WD, BATCH = 0.1, 0.9, 0.01, 4

# MXNet's own note when a hybridised graph leaves head b out; expected here.
pytestmark = pytest.mark.filterwarnings(
    'ignore:Parameter .* is not used by any computation:UserWarning')

# (contexts, kvstore, update_on_kvstore). With one context Gluon uses no kvstore whatever is
# asked, and one context with update_on_kvstore=True crashes inside MXNet.
SETUPS = [
    pytest.param(ONE, None, None, id='1ctx-nokv'),
    pytest.param(ONE, 'device', False, id='1ctx-device'),
    pytest.param(TWO, None, None, id='2ctx-nokv'),
    pytest.param(TWO, 'device', False, id='2ctx-device-local'),
    pytest.param(TWO, 'device', True, id='2ctx-device-uok'),
]

BODY = ['net_dense0_weight', 'net_dense0_bias']
HEAD_A = ['net_dense1_weight', 'net_dense1_bias']
HEAD_B = ['net_dense2_weight', 'net_dense2_bias']


class TwoHead(nn.HybridBlock):
    """body -> head_a; head_b is defined but the forward never uses it (an unused head).

    With ``both=True`` the forward returns both heads: head_b is read, but a loss on
    head_a alone does not reach it.
    """

    def __init__(self, both=False, **kwargs):
        super().__init__(**kwargs)
        self._both = both
        with self.name_scope():
            self.body = nn.Dense(3, in_units=2)
            self.head_a = nn.Dense(1, in_units=3)
            self.head_b = nn.Dense(1, in_units=3)

    def hybrid_forward(self, F, x):
        h = self.body(x)
        return (self.head_a(h), self.head_b(h)) if self._both else self.head_a(h)


def make(ctxs, hybrid, kvstore=None, update_on_kvstore=None, both=False):
    net = TwoHead(both, prefix='net_')
    net.initialize(ctx=ctxs)
    rng = np.random.RandomState(0)
    for param in net.collect_params().values():
        param.set_data(nd.array(rng.uniform(-1, 1, size=param.shape)))
    if hybrid:
        net.hybridize()
    trainer = gluon.Trainer(net.collect_params(), 'sgd',
                            {'learning_rate': LR, 'momentum': MOMENTUM, 'wd': WD},
                            kvstore=kvstore, update_on_kvstore=update_on_kvstore)
    return net, trainer


def batch(seed=1):
    return np.random.RandomState(seed).uniform(-1, 1, size=(BATCH, 2)).astype(np.float32)


def parts(x, ctxs):
    return gluon.utils.split_and_load(nd.array(x), ctxs)


def run(net, x, ctxs, heads=('a',), direct=False):
    """Forward on every context (one call per context) and backward of sum(outputs).

    ``direct`` calls the children (body, then the heads listed) instead of the net, which
    lets one iteration use head_b and the next not, hybridised or not.
    """
    with autograd.record():
        losses = []
        for part in parts(x, ctxs):
            if direct:
                h = net.body(part)
                out = [getattr(net, 'head_' + name)(h) for name in heads]
                losses.append(sum(o.sum() for o in out))
            else:
                losses.append(net(part).sum())
    autograd.backward(losses)


def snapshot(net):
    return {name: [d.asnumpy().copy() for d in p.list_data()]
            for name, p in net.collect_params().items()}


def hand_grads(w, x, heads):
    """Gradients of sum(head(body(x))) over ``heads`` (linear layers, so closed form)."""
    h = x @ w['net_dense0_weight'].T + w['net_dense0_bias']
    s = sum(w['net_dense%d_weight' % (1 if n == 'a' else 2)][0] for n in heads)
    g = {'net_dense0_weight': np.outer(s, x.sum(0)), 'net_dense0_bias': len(x) * s}
    for n in heads:
        i = 1 if n == 'a' else 2
        g['net_dense%d_weight' % i] = h.sum(0)[None, :]
        g['net_dense%d_bias' % i] = np.array([float(len(x))])
    return g


def per_context_grads(w, x, ctxs, kvstore, heads):
    """The gradient each replica is updated with: the sum over contexts when a kvstore
    reduces them, else each context's own slice. ``w`` is a snapshot (a list of replicas
    per name; without a kvstore the replicas drift apart) or one dict of arrays."""
    slices = np.array_split(x, len(ctxs))
    ws = [{k: v[i] if isinstance(v, list) else v for k, v in w.items()}
          for i in range(len(ctxs))]
    grads = [hand_grads(wi, s, heads) for wi, s in zip(ws, slices)]
    if len(ctxs) > 1 and kvstore is not None:
        total = {k: sum(g[k] for g in grads) for k in grads[0]}
        grads = [total] * len(ctxs)
    return grads


def sgd(w, g, mom):
    """MXNet's sgd_mom_update in float32: mom = m*mom - lr*(g/batch + wd*w); w += mom.

    The weight decay makes any update visible, even one with a zero gradient."""
    f = np.float32
    new_mom = f(MOMENTUM) * mom - f(LR) * (f(1.0 / BATCH) * g.astype(f) + f(WD) * w)
    return (w + new_mom).astype(f), new_mom.astype(f)


def assert_bits(before, after, names):
    for name in names:
        for a, b in zip(before[name], after[name]):
            assert a.tobytes() == b.tobytes(), name


def assert_updated(before, after, grads, names, mom=None):
    """``after`` = one SGD step from ``before`` with ``grads`` (per context); returns the
    new momentum per (name, context)."""
    new_moms = {}
    for name in names:
        for i, (w0, w1) in enumerate(zip(before[name], after[name])):
            m0 = (mom or {}).get((name, i), np.zeros_like(w0))
            expect, new_moms[(name, i)] = sgd(w0, grads[i][name].reshape(w0.shape), m0)
            np.testing.assert_allclose(w1, expect, rtol=1e-5, atol=1e-6, err_msg=name)
            assert not np.array_equal(w1, w0), name
    return new_moms


def flags(net):
    return {name: [_mx.fresh_grad(d) for d in p.list_data()]
            for name, p in net.collect_params().items()}


def reasons(records):
    return sorted({(r.name, r.reason) for r in records})


def by_context(records):
    return sorted((r.name, str(r.context), r.reason) for r in records)


# --------------------------------------------------------------------------- find_stale

@pytest.mark.parametrize('hybrid', [False, True], ids=['imperative', 'hybrid'])
@pytest.mark.parametrize('ctxs', [ONE, TWO], ids=['1ctx', '2ctx'])
def test_unused_head_untracked(ctxs, hybrid):
    net, trainer = make(ctxs, hybrid)
    run(net, batch(), ctxs)
    before = flags(net)
    records = ps.find_stale(trainer)
    assert by_context(records) == sorted((n, str(c), 'unused') for n in HEAD_B for c in ctxs)
    assert all(isinstance(r, ps.StaleRecord) for r in records)
    assert "'net_dense2_weight'" in records[-1].message
    assert 'ps.track_usage' in records[-1].message      # how to find out more
    assert "allow_stale='net_dense2_.*'" in records[-1].message   # one key for the group
    assert len({r.message for r in records}) == 1                 # explained once
    # issue 18: a short repr, so a printed list does not repeat the message per record
    assert repr(records) == '[%s]' % ', '.join(
        "StaleRecord(name='%s', context=%s, reason='unused')" % (r.name, r.context)
        for r in records)
    assert records[-1].message in str(records[-1])               # str keeps the whole story
    # reading consumed nothing
    assert flags(net) == before
    assert ps.find_stale(trainer) == records
    # the same from the net and from a list of parameters (in their order, not the Trainer's)
    assert by_context(ps.find_stale(net)) == by_context(records)
    assert by_context(ps.find_stale(list(net.collect_params().values()))) == by_context(records)


@pytest.mark.parametrize('hybrid', [False, True], ids=['imperative', 'hybrid'])
@pytest.mark.parametrize('ctxs', [ONE, TWO], ids=['1ctx', '2ctx'])
def test_unused_head_tracked_names_the_block(ctxs, hybrid):
    net, trainer = make(ctxs, hybrid)
    with ps.track_usage(net) as usage:
        run(net, batch(), ctxs)
        inside = ps.find_stale(trainer)
    after = ps.find_stale(trainer)  # the record outlives the with block
    for records in (inside, after):
        assert by_context(records) == sorted((n, str(c), 'unused') for n in HEAD_B for c in ctxs)
        for rec in records:
            assert "block 'net_dense2' (Dense)" in rec.message
            if hybrid:
                assert "cached graph of hybridised block 'net' (TwoHead)" in rec.message
            else:
                assert 'did not run on %s' % ', '.join(map(str, ctxs)) in rec.message
    for ctx in ctxs:
        assert usage.read(ctx) == BODY + HEAD_A
        if hybrid:
            assert usage.ran(ctx) == ['net']     # children run inside the cached graph
        else:
            assert usage.ran(ctx) == ['net_dense0', 'net_dense1', 'net']
    assert usage.contexts == ctxs


@pytest.mark.parametrize('hybrid', [False, True], ids=['imperative', 'hybrid'])
@pytest.mark.parametrize('ctxs', [ONE, TWO], ids=['1ctx', '2ctx'])
def test_read_but_not_in_the_loss(ctxs, hybrid):
    net, trainer = make(ctxs, hybrid, both=True)
    with ps.track_usage(net) as usage:
        with autograd.record():
            losses = [net(p)[0].sum() for p in parts(batch(), ctxs)]  # loss on head_a only
        autograd.backward(losses)
    assert usage.read(ctxs[-1]) == BODY + HEAD_A + HEAD_B
    records = ps.find_stale(trainer)
    if hybrid:
        # The CachedOp's backward writes a (zero) gradient into every input of the graph:
        # MXNet marks head b fresh, so it is not stale, and a step applies zero plus momentum.
        assert records == []
        assert float(net.head_b.weight.grad(ctxs[0]).abs().sum().asscalar()) == 0
    else:
        assert by_context(records) == sorted(
            (n, str(c), 'unused') for n in HEAD_B for c in ctxs)
        assert all('backward did not reach them' in r.message for r in records)


@pytest.mark.parametrize('hybrid', [False, True], ids=['imperative', 'hybrid'])
def test_tracking_is_per_call_on_a_hybridised_graph(hybrid):
    """The cached graph is built at the first call only: the second call must be recorded
    too, with the context of its input."""
    net, _ = make(TWO, hybrid)
    x = parts(batch(), TWO)
    net(x[0])  # builds the graph outside tracking
    with ps.track_usage(net) as usage:
        net(x[1])
        assert usage.contexts == [mx.cpu(1)]
        assert usage.read(mx.cpu(1)) == BODY + HEAD_A
        assert usage.read(mx.cpu(0)) == []
        usage.clear()
        net(x[0])
        assert usage.contexts == [mx.cpu(0)]
        assert usage.read() == BODY + HEAD_A
    net(x[1])  # hooks are gone after the with block
    assert usage.contexts == [mx.cpu(0)]


@pytest.mark.parametrize('hybrid', [False, True], ids=['imperative', 'hybrid'])
@pytest.mark.parametrize('ctxs', [ONE, TWO], ids=['1ctx', '2ctx'])
def test_no_backward_after_a_step_and_with_autograd_grad(ctxs, hybrid):
    net, trainer = make(ctxs, hybrid)
    everything = sorted((n, str(c), 'no-backward') for n in BODY + HEAD_A + HEAD_B for c in ctxs)
    assert by_context(ps.find_stale(trainer)) == everything  # nothing ran yet
    # autograd.grad computes gradients but does not mark them fresh
    params = [net.collect_params()[n] for n in BODY + HEAD_A]
    with autograd.record():
        outs = [net(p).sum() for p in parts(batch(), ctxs)]
    variables = [d for p in params for d in p.list_data()]
    grads = autograd.grad(outs, variables)
    assert all(float(g.abs().sum().asscalar()) > 0 for g in grads)
    records = ps.find_stale(trainer)
    assert by_context(records) == everything
    assert 'autograd.grad()' in records[0].message


@pytest.mark.parametrize('hybrid', [False, True], ids=['imperative', 'hybrid'])
@pytest.mark.parametrize('ctxs', [ONE, TWO], ids=['1ctx', '2ctx'])
def test_not_a_leaf_blog_recipe(ctxs, hybrid):
    """The seed blog's assign_params: ``param._data = [w * mask]`` inside record."""
    net, trainer = make(ctxs, hybrid, kvstore='device')
    mask = nd.array([[1, 0, 1]])
    weight = net.head_a.weight
    x = batch()
    with autograd.record():
        out = [nd.multiply(arr, mask.as_in_context(arr.context)) for arr in weight.list_data()]
        weight._data = out  # "must be a list" (the blog), one computed array per context
        losses = [net(p).sum() for p in parts(x, ctxs)]
    autograd.backward(losses)
    records = ps.find_stale(trainer)
    assert by_context(records) == sorted(
        [('net_dense1_weight', str(c), 'not-a-leaf') for c in ctxs]
        + [(n, str(c), 'unused') for n in HEAD_B for c in ctxs])
    leaf = [r for r in records if r.reason == 'not-a-leaf'][0]
    assert 'w * mask' in leaf.message and 'ps.apply_mask' in leaf.message
    # MXNet refuses too, but safe_step says why, and with allow_stale steps the others
    before = snapshot(net)
    with pytest.raises(ps.StaleGradientError, match=r'\[not-a-leaf\] net_dense1_weight'):
        ps.safe_step(trainer, BATCH)
    assert_bits(before, snapshot(net), before)
    skipped = ps.safe_step(trainer, BATCH, allow_stale=['net_dense1_weight', 'net_dense2_'])
    assert reasons(skipped) == sorted([('net_dense1_weight', 'not-a-leaf')]
                                      + [(n, 'unused') for n in HEAD_B])
    after = snapshot(net)
    # the computed arrays were not written (a kvstore pull would have written into them)
    assert_bits(before, after, ['net_dense1_weight'] + HEAD_B)
    w = {k: v[0] for k, v in before.items()}
    w['net_dense1_weight'] = w['net_dense1_weight'] * mask.asnumpy()  # what the forward saw
    grads = per_context_grads(w, x, ctxs, 'device', 'a')
    assert_updated(before, after, grads, BODY + ['net_dense1_bias'])
    # the repair named in the message: leaf replicas again, holding the masked values
    weight.reset_ctx(weight.list_ctx())
    assert ps.check_params(net) == []
    np.testing.assert_array_equal(weight.data(ctxs[0]).asnumpy(), w['net_dense1_weight'])


FLAG_RESETS = {
    'grad_req': lambda p: setattr(p, 'grad_req', 'add'),
    'grad_req_null_and_back': lambda p: (setattr(p, 'grad_req', 'null'),
                                         setattr(p, 'grad_req', 'write')),
    'cast': lambda p: p.cast('float64'),
    'reset_ctx': lambda p: p.reset_ctx(p.list_ctx()),
    'reinitialise': lambda p: p.initialize(ctx=p.list_ctx(), force_reinit=True),
}


@pytest.mark.parametrize('action', sorted(FLAG_RESETS))
@pytest.mark.parametrize('hybrid', [False, True], ids=['imperative', 'hybrid'])
@pytest.mark.parametrize('ctxs', [ONE, TWO], ids=['1ctx', '2ctx'])
def test_flags_reset(ctxs, hybrid, action):
    net, trainer = make(ctxs, hybrid)
    x = batch()
    with ps.track_usage(net):
        run(net, x, ctxs)
    FLAG_RESETS[action](net.head_a.weight)
    tracked = ps.find_stale(trainer)
    assert by_context(tracked) == sorted(
        [('net_dense1_weight', str(c), 'flags-reset') for c in ctxs]
        + [(n, str(c), 'unused') for n in HEAD_B for c in ctxs])
    reset = [r for r in tracked if r.reason == 'flags-reset'][0]
    assert "block 'net" in reset.message and 'before the forward' in reset.message
    # without a usage record it cannot be told from an unused parameter (API.md section 5)
    untracked = ps.find_stale(trainer, usage=ps.track_usage(net))
    assert by_context(untracked) == sorted(
        (n, str(c), 'unused') for n in ['net_dense1_weight'] + HEAD_B for c in ctxs)


@pytest.mark.parametrize('hybrid', [False, True], ids=['imperative', 'hybrid'])
def test_partial_context(hybrid):
    net, trainer = make(TWO, hybrid, kvstore='device', update_on_kvstore=True)
    x0, x1 = parts(batch(), TWO)
    with ps.track_usage(net):
        with autograd.record():
            losses = [net(x0).sum() + net.head_b(net.body(x0)).sum(), net(x1).sum()]
        autograd.backward(losses)
    records = ps.find_stale(trainer)
    assert by_context(records) == [(n, 'cpu(1)', 'partial-context') for n in sorted(HEAD_B)]
    assert all('fresh gradient on [cpu(0)] but not on cpu(1)' in r.message for r in records)
    assert all("block 'net_dense2' (Dense)" in r.message for r in records)


# --------------------------------------------------------------------------- safe_step

@pytest.mark.parametrize('hybrid', [False, True], ids=['imperative', 'hybrid'])
@pytest.mark.parametrize('ctxs, kvstore, uok', SETUPS)
def test_safe_step_refuses_then_skips_exactly_the_allowed(ctxs, kvstore, uok, hybrid):
    net, trainer = make(ctxs, hybrid, kvstore, uok)
    x = batch()
    run(net, x, ctxs)
    before, fresh = snapshot(net), flags(net)
    with pytest.raises(ps.StaleGradientError) as info:
        ps.safe_step(trainer, BATCH)
    err = info.value
    assert isinstance(err, UserWarning) and isinstance(err, ps.ParamSurgeryError)
    assert reasons(err.records) == [(n, 'unused') for n in sorted(HEAD_B)]
    text = str(err)
    assert 'nothing updated' in text
    assert '[unused] net_dense2_bias, net_dense2_weight on %s' % ', '.join(map(str, ctxs)) \
        in text
    assert "allow_stale='net_dense2_.*'" in text
    # nothing updated, no flag consumed: MXNet's own check would have consumed some
    assert_bits(before, snapshot(net), before)
    assert flags(net) == fresh
    # allowing only one of the two stale parameters is not enough
    with pytest.raises(ps.StaleGradientError, match='allowed, but'):
        ps.safe_step(trainer, BATCH, allow_stale='net_dense2_weight')
    assert flags(net) == fresh
    # a fresh parameter selected by allow_stale is still updated
    skipped = ps.safe_step(trainer, BATCH, allow_stale=HEAD_B + ['net_dense0_weight'])
    assert reasons(skipped) == [(n, 'unused') for n in sorted(HEAD_B)]
    after = snapshot(net)
    assert_bits(before, after, HEAD_B)
    w = {k: v[0] for k, v in before.items()}
    assert_updated(before, after, per_context_grads(w, x, ctxs, kvstore, 'a'), BODY + HEAD_A)
    # every flag consumed, whatever the kvstore (MXNet leaves them set under uok=True)
    assert all(not any(f) for f in flags(net).values())


@pytest.mark.parametrize('hybrid', [False, True], ids=['imperative', 'hybrid'])
@pytest.mark.parametrize('ctxs, kvstore, uok', SETUPS)
def test_step_without_new_backward_raises(ctxs, kvstore, uok, hybrid):
    net, trainer = make(ctxs, hybrid, kvstore, uok)
    run(net, batch(), ctxs)
    ps.safe_step(trainer, BATCH, allow_stale='net_dense2_')
    before = snapshot(net)
    with pytest.raises(ps.StaleGradientError) as info:
        ps.safe_step(trainer, BATCH, allow_stale='net_dense2_')
    assert {r.reason for r in info.value.records} == {'no-backward'}
    assert '[no-backward] net_dense0_bias, net_dense0_weight' in str(info.value)
    assert_bits(before, snapshot(net), before)


@pytest.mark.parametrize('hybrid', [False, True], ids=['imperative', 'hybrid'])
@pytest.mark.parametrize('ctxs, kvstore, uok', SETUPS)
def test_skipped_momentum_does_not_advance(ctxs, kvstore, uok, hybrid):
    """Step 1 uses both heads, step 2 only head a (head b skipped), step 3 both again:
    head b's step 3 must continue from its step-1 momentum, as if step 2 never happened."""
    net, trainer = make(ctxs, hybrid, kvstore, uok)
    x1, x2, x3 = batch(1), batch(2), batch(3)

    w0 = snapshot(net)
    run(net, x1, ctxs, heads=('a', 'b'), direct=True)
    assert ps.safe_step(trainer, BATCH) == []
    w1 = snapshot(net)
    g1 = per_context_grads(w0, x1, ctxs, kvstore, 'ab')
    mom = assert_updated(w0, w1, g1, BODY + HEAD_A + HEAD_B)

    run(net, x2, ctxs, heads=('a',), direct=True)
    ps.safe_step(trainer, BATCH, allow_stale='net_dense2_')
    w2 = snapshot(net)
    assert_bits(w1, w2, HEAD_B)

    run(net, x3, ctxs, heads=('a', 'b'), direct=True)
    ps.safe_step(trainer, BATCH)
    w3 = snapshot(net)
    g3 = per_context_grads(w2, x3, ctxs, kvstore, 'ab')
    assert_updated(w2, w3, g3, HEAD_B, mom=mom)


@pytest.mark.parametrize('hybrid', [False, True], ids=['imperative', 'hybrid'])
@pytest.mark.parametrize('ctxs, kvstore, uok', SETUPS[2:])
def test_partial_context_skipped_and_its_fresh_half_consumed(ctxs, kvstore, uok, hybrid):
    net, trainer = make(ctxs, hybrid, kvstore, uok)
    x = batch()
    x0, x1 = parts(x, ctxs)
    with autograd.record():
        losses = [net(x0).sum() + net.head_b(net.body(x0)).sum(), net(x1).sum()]
    autograd.backward(losses)
    before = snapshot(net)
    with pytest.raises(ps.StaleGradientError, match=r'\[partial-context\] net_dense2_bias'):
        ps.safe_step(trainer, BATCH)
    assert_bits(before, snapshot(net), before)
    skipped = ps.safe_step(trainer, BATCH, allow_stale='net_dense2_')
    assert reasons(skipped) == [(n, 'partial-context') for n in sorted(HEAD_B)]
    assert_bits(before, snapshot(net), HEAD_B)
    # the half-fresh gradient on cpu(0) was consumed with the step: it is never applied later
    run(net, x, ctxs)
    assert reasons(ps.find_stale(trainer)) == [(n, 'unused') for n in sorted(HEAD_B)]


def test_deferred_head_is_unused_and_cannot_be_skipped_at_the_first_step():
    net = TwoHead(prefix='net_')
    with net.name_scope():
        net.head_c = nn.Dense(1)  # in_units unknown: waits for a forward that never comes
    net.initialize(ctx=TWO)
    trainer = gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': LR})
    run(net, batch(), TWO)
    records = [r for r in ps.find_stale(trainer) if r.name == 'net_dense3_weight']
    assert [(str(r.context), r.reason) for r in records] == [('cpu(0)', 'unused'),
                                                              ('cpu(1)', 'unused')]
    assert 'never initialised' in records[0].message
    with pytest.raises(ps.StaleGradientError, match='allowed, but cannot be skipped'):
        ps.safe_step(trainer, BATCH, allow_stale=['net_dense2_', 'net_dense3_'])
    assert _mx.trainer_kvstore(trainer)[2] is False  # the step never started


def test_distributed_kvstore_never_skips():
    net, trainer = make(TWO, False, kvstore='dist_sync')
    run(net, batch(), TWO)
    before = snapshot(net)
    with pytest.raises(ps.StaleGradientError, match="kvstore 'dist_sync' is distributed"):
        ps.safe_step(trainer, BATCH, allow_stale='net_dense2_')
    assert_bits(before, snapshot(net), before)
    assert _mx.trainer_kvstore(trainer)[2] is False  # no kvstore was even created


def test_bad_allow_stale_changes_nothing():
    net, trainer = make(TWO, False, 'device', True)
    run(net, batch(), TWO)
    before, fresh = snapshot(net), flags(net)
    with pytest.raises(ps.SelectionError, match='net_dense9_'):
        ps.safe_step(trainer, BATCH, allow_stale='net_dense9_')
    with pytest.raises(ps.SurgeryTypeError, match="allow_stale='.\\*'"):
        ps.safe_step(trainer, BATCH, allow_stale=True)
    with pytest.raises(ps.SurgeryTypeError):
        ps.safe_step(net, BATCH)
    assert_bits(before, snapshot(net), before)
    assert flags(net) == fresh


@pytest.mark.parametrize('hybrid', [False, True], ids=['imperative', 'hybrid'])
def test_safe_step_starts_a_new_usage_window(hybrid):
    net, trainer = make(TWO, hybrid)
    with ps.track_usage(net) as usage:
        run(net, batch(), TWO, heads=('a', 'b'), direct=True)
        ps.safe_step(trainer, BATCH)
        assert usage.read() == []
        run(net, batch(), TWO, heads=('a',), direct=True)
        records = ps.find_stale(trainer)
    assert reasons(records) == [(n, 'unused') for n in sorted(HEAD_B)]
    assert all('did not run' in r.message for r in records)
    ps.safe_step(trainer, BATCH, allow_stale='net_dense2_')
    # the finished tracker is dropped: it knows nothing of the next forwards
    run(net, batch(), TWO)
    assert all('ps.track_usage' in r.message for r in ps.find_stale(trainer))


# --------------------------------------------------------------------------- MXNet's own check

@pytest.mark.parametrize('hybrid', [False, True], ids=['imperative', 'hybrid'])
def test_mxnet_is_blind_under_update_on_kvstore(hybrid):
    """The claims of docs/stale-gradients.md about MXNet 1.9.1 itself."""
    net, trainer = make(TWO, hybrid, 'device', True)
    run(net, batch(), TWO, heads=('a', 'b'), direct=True)
    trainer.step(BATCH)
    w1 = snapshot(net)
    trainer.step(BATCH)  # no backward in between: no error, the old gradient applied again
    w2 = snapshot(net)
    assert all(not np.array_equal(w1[n][0], w2[n][0]) for n in w1)
    assert all(all(f) for f in flags(net).values())   # MXNet never consumes them here
    # ignore_stale_grad=True still applies head b's old gradient
    run(net, batch(), TWO, heads=('a',), direct=True)
    trainer.step(BATCH, ignore_stale_grad=True)
    assert not np.array_equal(w2['net_dense2_weight'][0],
                              net.head_b.weight.data(mx.cpu(0)).asnumpy())


def test_mxnet_failed_step_consumes_flags_and_cancels_all_updates():
    net, trainer = make(TWO, False, 'device', False)
    run(net, batch(), TWO)
    before = snapshot(net)
    with pytest.raises(UserWarning, match='net_dense2_bias'):
        trainer.step(BATCH)
    assert_bits(before, snapshot(net), before)
    assert all(not any(f) for f in flags(net).values())  # body and head a consumed


# --------------------------------------------------------------------------- explain

@pytest.mark.parametrize('hybrid', [False, True], ids=['imperative', 'hybrid'])
@pytest.mark.parametrize('ctxs, kvstore, uok', SETUPS)
def test_explain_mxnet_warning(ctxs, kvstore, uok, hybrid):
    net, trainer = make(ctxs, hybrid, kvstore, uok)
    before = snapshot(net)
    run(net, batch(), ctxs)
    with pytest.raises(UserWarning) as info:
        trainer.step(BATCH)
    diagnosis = ps.explain(info.value)
    assert isinstance(diagnosis, ps.StaleGradientError)
    # MXNet consumed the flags of body and head a before failing (unless the kvstore
    # updates): explain counts them fresh, so only head b is stale, for the right reason.
    assert by_context(diagnosis.records) == sorted(
        (n, str(c), 'unused') for n in HEAD_B for c in ctxs)
    if uok:
        assert 'already applied this step' in str(diagnosis)
        assert not np.array_equal(before['net_dense1_weight'][0],
                                  net.head_a.weight.data(ctxs[0]).asnumpy())
    else:
        assert 'consumed the freshness flags of the 4 parameters' in str(diagnosis)
    assert ps.explain(diagnosis) is diagnosis


def test_explain_without_traceback_and_bad_input():
    net, trainer = make(TWO, True, 'device', False)
    with autograd.record():
        outs = [net(p).sum() for p in parts(batch(), TWO)]
    autograd.backward(outs)
    warning = UserWarning('Gradient of Parameter `net_dense2_bias` on context cpu(1) has not '
                          'been updated by backward since last `step`. ...')
    with pytest.raises(ps.SurgeryTypeError, match='pass it'):
        ps.explain(warning)
    records = ps.explain(warning, trainer).records
    assert reasons(records) == [(n, 'unused') for n in sorted(HEAD_B)]
    assert reasons(ps.explain(warning, net).records) == reasons(records)
    # after MXNet's failed step consumed body and head a, a net is enough: the Trainer (and
    # the order it checked in) is found through the parameter
    with pytest.raises(UserWarning) as info:
        trainer.step(BATCH)
    assert reasons(ps.explain(info.value, net).records) == reasons(records)
    assert reasons(ps.find_stale(trainer)) == sorted(
        (n, 'no-backward') for n in BODY + HEAD_A + HEAD_B)  # what a naive look would say
    with pytest.raises(ps.SurgeryValueError, match='has not been updated by backward'):
        ps.explain(ValueError('something else'))
    with pytest.raises(ps.SelectionError):
        ps.explain(UserWarning('Gradient of Parameter `nope` on context cpu(0) has not been '
                               'updated by backward since last `step`.'), trainer)


def test_types():
    assert issubclass(ps.StaleGradientError, UserWarning)
    assert issubclass(ps.StaleGradientError, ps.ParamSurgeryError)
    assert set(ps.STALE_REASONS) == {'unused', 'no-backward', 'not-a-leaf', 'flags-reset',
                                     'partial-context'}
    with pytest.raises(ps.SurgeryTypeError):
        ps.find_stale(42)
    with pytest.raises(ps.SurgeryTypeError):
        ps.track_usage(nn.Dense(1).collect_params())


@pytest.mark.parametrize('hybrid', [False, True], ids=['imperative', 'hybrid'])
@pytest.mark.parametrize('ctxs', [ONE, TWO], ids=['1ctx', '2ctx'])
def test_explain_blog_recipe(ctxs, hybrid):
    net, trainer = make(ctxs, hybrid, kvstore='device')
    weight = net.head_a.weight
    with autograd.record():
        weight._data = [nd.multiply(w, 0.5) for w in weight.list_data()]
        losses = [net(p).sum() + net.head_b(net.body(p)).sum() for p in parts(batch(), ctxs)]
    autograd.backward(losses)
    with pytest.raises(UserWarning, match='net_dense1_weight') as info:
        trainer.step(BATCH)
    diagnosis = ps.explain(info.value)
    assert by_context(diagnosis.records) == sorted(
        ('net_dense1_weight', str(c), 'not-a-leaf') for c in ctxs)
    assert '[not-a-leaf] net_dense1_weight on %s' % ', '.join(map(str, ctxs)) in str(diagnosis)


class PlainHeads(nn.Block):
    """A plain (never hybridised) Block that reads its own parameter in forward."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.scale = self.params.get('scale', shape=(1,), init=mx.init.One())
            self.unused = self.params.get('unused', shape=(1,), init=mx.init.One())

    def forward(self, x):
        return x * self.scale.data(x.context)


@pytest.mark.parametrize('ctxs', [ONE, TWO], ids=['1ctx', '2ctx'])
def test_plain_block_tracking(ctxs):
    net = PlainHeads(prefix='plain_')
    net.initialize(ctx=ctxs)
    trainer = gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': LR})
    with ps.track_usage(net) as usage:
        with autograd.record():
            losses = [net(p).sum() for p in parts(batch(), ctxs)]
        autograd.backward(losses)
    # a plain Block's own parameters all count as read: 'unused' was read, never reached
    assert usage.read() == ['plain_scale', 'plain_unused']
    records = ps.find_stale(trainer, usage=usage)
    assert by_context(records) == sorted(('plain_unused', str(c), 'unused') for c in ctxs)
    with pytest.raises(ps.SurgeryTypeError, match='UsageTracker'):
        ps.find_stale(trainer, usage=object())
    scale = net.scale.data(ctxs[0]).asnumpy()
    ps.safe_step(trainer, BATCH, allow_stale='plain_unused')
    expect = scale - np.float32(LR) * np.float32(batch().sum() / BATCH)
    np.testing.assert_allclose(net.scale.data(ctxs[-1]).asnumpy(), expect, rtol=1e-6)
    np.testing.assert_array_equal(net.unused.data(ctxs[-1]).asnumpy(), [1.0])
