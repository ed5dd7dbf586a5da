"""replicas, data_on and check_params: context rules and every problem code."""
import mxnet as mx
import pytest
from mxnet import autograd, gluon

import paramsurgery as ps

from helpers import ONE, TWO, batch, forward_backward, make_mlp


def test_replicas_in_context_order(ctxs):
    net = make_mlp(ctxs)
    w = net[0].weight
    reps = ps.replicas(w)
    assert [c for c, _, _ in reps] == ctxs
    assert all(d is e for (_, d, _), e in zip(reps, w.list_data()))
    assert all(g is e for (_, _, g), e in zip(reps, w.list_grad()))
    w.grad_req = 'null'
    assert [g for _, _, g in ps.replicas(w)] == [None] * len(ctxs)


def test_data_on_rules(ctxs):
    net = make_mlp(ctxs)
    w = net[0].weight
    for ctx in ctxs:
        assert ps.data_on(w, ctx) is w.data(ctx)
    if len(ctxs) == 1:
        with mx.Context(mx.cpu(1)):  # one context: returned whatever the current one is
            assert ps.data_on(w) is w.data(ctxs[0])
    else:
        with mx.Context(mx.cpu(1)):
            assert ps.data_on(w) is w.list_data()[1]
    with pytest.raises(ps.ParameterStateError) as info:
        ps.data_on(w, mx.cpu(3))
    msg = str(info.value)
    assert "'mlp_dense0_weight'" in msg and 'cpu(3)' in msg and str(ctxs) in msg


def test_data_on_two_contexts_current_not_among_them():
    net = make_mlp(TWO)
    with mx.Context(mx.cpu(2)):
        with pytest.raises(ps.ParameterStateError, match=r'not on context cpu\(2\)'):
            ps.data_on(net[0].weight)


def test_data_on_deferred_and_uninitialised():
    layer = gluon.nn.Dense(2, prefix='fc_')
    with pytest.raises(ps.ParameterStateError, match='never initialised'):
        ps.data_on(layer.weight)
    layer.initialize(ctx=TWO)
    with pytest.raises(ps.ParameterStateError, match=r"'fc_weight'.*deferred.*forward"):
        ps.replicas(layer.weight)
    with pytest.raises(ps.ParameterStateError,
                       match=r"deferred.*asked for context cpu\(1\).*\[cpu\(0\), cpu\(1\)\]"):
        ps.data_on(layer.weight, mx.cpu(1))
    with pytest.raises(ps.SurgeryTypeError, match='Parameter'):
        ps.data_on('fc_weight')


def test_healthy_net_has_no_problem(ctxs, hybridize):
    net = make_mlp(ctxs, hybridize)
    trainer = gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': 0.1})
    forward_backward(net, batch(), ctxs)
    trainer.step(8)
    assert ps.check_params(net) == []


def codes(problems):
    return [(p.name, p.context, p.code) for p in problems]


def test_bare_array():
    net = make_mlp(TWO)
    net[0].weight._data = net[0].weight.data(mx.cpu(0))  # the seed's missing brackets
    problems = ps.check_params(net)
    assert codes(problems) == [('mlp_dense0_weight', None, 'bare-array')]
    assert 'first row' in problems[0].message


def test_length_mismatch():
    net = make_mlp(TWO)
    net[0].weight._data = net[0].weight._data[:1]
    assert codes(ps.check_params(net)) == [('mlp_dense0_weight', None, 'length-mismatch')]


def test_wrong_context():
    net = make_mlp(TWO)
    w = net[0].weight
    w._data = list(reversed(w._data))
    assert codes(ps.check_params(net, 'mlp_dense0_weight')) == [
        ('mlp_dense0_weight', mx.cpu(0), 'wrong-context'),
        ('mlp_dense0_weight', mx.cpu(1), 'wrong-context')]


def test_not_a_leaf_from_the_old_recipe(ctxs):
    net = make_mlp(ctxs)
    with autograd.record():
        net[1].weight._data = [w * 0.5 for w in net[1].weight.list_data()]
    problems = ps.check_params(net)
    assert codes(problems) == [('mlp_dense1_weight', c, 'not-a-leaf') for c in ctxs]
    assert 'ps.apply_mask' in problems[0].message


def test_grad_missing():
    net = make_mlp(TWO)
    net[0].bias._grad = [net[0].bias._grad[0], None]
    assert codes(ps.check_params(net)) == [('mlp_dense0_bias', mx.cpu(1), 'grad-missing')]
    net[0].bias._grad = None
    assert [p.code for p in ps.check_params(net)] == ['grad-missing', 'grad-missing']


def test_replicas_diverged_for_trainable_only():
    net = gluon.nn.HybridSequential(prefix='bn_')
    with net.name_scope():
        net.add(gluon.nn.Dense(3, in_units=2), gluon.nn.BatchNorm(in_channels=3))
    net.initialize(ctx=TWO)
    with autograd.pause():
        net[0].weight.list_data()[1][0, 0] += 1.0   # an edit that reached one replica
        net[1].running_mean.list_data()[1][:] = 5.0  # per-device statistics may differ
    problems = ps.check_params(net)
    assert codes(problems) == [('bn_dense0_weight', mx.cpu(1), 'replicas-diverged')]
    assert 'max abs difference 1' in problems[0].message
    ps.set_params(net, 'bn_dense0_weight', 0.5)
    assert ps.check_params(net) == []


def test_deferred_and_uninitialised_codes():
    net = gluon.nn.HybridSequential(prefix='d_')
    with net.name_scope():
        net.add(gluon.nn.Dense(3, in_units=2), gluon.nn.Dense(2))
    assert {p.code for p in ps.check_params(net)} == {'uninitialized'}
    net.initialize(ctx=ONE)
    # the bias shape (2,) is known: only the weight waits for the first forward
    assert codes(ps.check_params(net)) == [('d_dense1_weight', None, 'deferred')]
    net(mx.nd.ones((1, 2)))
    assert ps.check_params(net) == []


def test_problem_str_and_key():
    net = make_mlp(TWO)
    net[0].weight._data = net[0].weight._data[:1]
    (problem,) = ps.check_params(net, '.*dense0.*')
    assert str(problem).startswith('[length-mismatch] mlp_dense0_weight: ')
    assert ps.check_params(net, '.*dense1.*') == []
