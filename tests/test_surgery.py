"""assign_params / set_params: values, autograd, the Trainer, and all-or-nothing validation."""
import signal

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon

import paramsurgery as ps
from paramsurgery import _mx

from helpers import (
    ONE,
    TRAINER_SETUPS,
    TWO,
    Scale,
    assert_same_bits,
    batch,
    forward_backward,
    make_mlp,
    snapshot,
    split,
)


def all_replicas(param):
    return [d.asnumpy() for d in param.list_data()]


# ----------------------------------------------------------------------------- values

def test_assign_multiplies_every_replica(ctxs, hybridize):
    net = make_mlp(ctxs, hybridize)
    net(batch().as_in_context(ctxs[0]))  # a cached graph exists and must see the change
    before = snapshot(net)
    mult = np.linspace(0.5, 1.5, 20, dtype=np.float32).reshape(5, 4)
    names = ps.assign_params(net, 'mlp_dense0_weight', mult)
    assert names == ['mlp_dense0_weight']
    for old, new in zip(before['mlp_dense0_weight'], all_replicas(net[0].weight)):
        np.testing.assert_array_equal(new, old * mult)
    for name in ['mlp_dense0_bias', 'mlp_dense1_weight', 'mlp_dense1_bias']:
        assert_same_bits({name: before[name]}, {name: all_replicas(net.collect_params()[name])})
    # the forward (hybridised or not) computes with the new weights, on every context
    x = batch(3)
    w, b = before['mlp_dense0_weight'][0] * mult, before['mlp_dense0_bias'][0]
    w2, b2 = before['mlp_dense1_weight'][0], before['mlp_dense1_bias'][0]
    expected = np.maximum(x.asnumpy() @ w.T + b, 0) @ w2.T + b2
    for ctx in ctxs:
        np.testing.assert_allclose(net(x.as_in_context(ctx)).asnumpy(), expected, rtol=1e-5,
                                   atol=1e-6)


@pytest.mark.parametrize('value, expected', [
    (2.0, lambda old: np.full_like(old, 2.0)),
    (np.arange(4, dtype=np.float64), lambda old: np.tile(np.arange(4.0), (5, 1))),
    (np.arange(5).reshape(5, 1), lambda old: np.tile(np.arange(5.0)[:, None], (1, 4))),
    (np.ones((5, 4)) * 3, lambda old: np.full_like(old, 3.0)),
], ids=['scalar', 'row', 'column', 'full'])
def test_set_broadcasts_numpy_rules(ctxs, value, expected):
    net = make_mlp(ctxs)
    old = net[0].weight.data(ctxs[0]).asnumpy()
    ps.set_params(net, 'mlp_dense0_weight', value)
    for arr in all_replicas(net[0].weight):
        assert arr.dtype == np.float32
        np.testing.assert_array_equal(arr, expected(old).astype(np.float32))


def test_ndarray_value_from_any_context(ctxs):
    net = make_mlp(ctxs)
    value = mx.nd.array(np.arange(5), ctx=mx.cpu(1))
    ps.set_params(net, {'mlp_dense0_bias': value})
    for ctx, arr in zip(ctxs, net[0].bias.list_data()):
        assert arr.context == ctx
        np.testing.assert_array_equal(arr.asnumpy(), np.arange(5))


def test_value_aliasing_a_replica_is_read_before_writing(ctxs):
    net = make_mlp(ctxs)
    w = net[0].weight
    old = w.data(ctxs[0]).asnumpy()
    ps.assign_params(net, w, w.data(ctxs[0]))  # w * w, with w's own array as multiplier
    for arr in all_replicas(w):
        np.testing.assert_array_equal(arr, old * old)


def test_identity_leaves_and_grads_are_kept(ctxs, hybridize):
    net = make_mlp(ctxs, hybridize)
    params = net.collect_params()
    objects = {name: (p, list(p.list_data()), list(p.list_grad())) for name, p in params.items()}
    ps.assign_params(net, '.*', 0.5)
    ps.set_params(net, '.*bias', 0.1)
    assert ps.check_params(net) == []
    for name, (param, datas, grads) in objects.items():
        assert net.collect_params()[name] is param
        assert all(a is b for a, b in zip(param.list_data(), datas))
        assert all(a is b for a, b in zip(param.list_grad(), grads))


def test_dict_form_and_returned_names(ctxs):
    net = make_mlp(ctxs)
    before = snapshot(net)
    names = ps.assign_params(net, {'.*dense1.*': 2.0, 'mlp_dense0_bias': 0.0})
    assert names == ['mlp_dense1_weight', 'mlp_dense1_bias', 'mlp_dense0_bias']
    np.testing.assert_array_equal(all_replicas(net[1].weight)[-1],
                                  before['mlp_dense1_weight'][-1] * 2)
    np.testing.assert_array_equal(all_replicas(net[0].bias)[-1], 0)


def test_integer_parameter_keeps_dtype():
    p = gluon.Parameter('counts', shape=(3,), dtype='int32', grad_req='null',
                        init=mx.init.Constant(2))
    p.initialize(ctx=TWO)
    ps.assign_params({'counts': p}, 'counts', 3)
    for arr in all_replicas(p):
        assert arr.dtype == np.int32
        np.testing.assert_array_equal(arr, [6, 6, 6])
    with pytest.raises(ps.SurgeryValueError, match='truncated'):
        ps.set_params({'counts': p}, 'counts', 0.5)


# ----------------------------------------------------------------------------- overflow check

def _big_param(ctxs, dtype, big, name='big'):
    """A parameter holding ``big`` (near the dtype's largest finite number) among ones."""
    p = gluon.Parameter(name, shape=(2, 3), dtype=dtype, init=mx.init.One())
    p.initialize(ctx=ctxs)
    with autograd.pause():
        for arr in p.list_data():
            arr[0, 0] = big
    return p


def _count_exact_checks(monkeypatch):
    from paramsurgery import _values
    calls = []
    exact = _values._exact_check

    def counting(name, *args, **kwargs):
        calls.append(name)
        return exact(name, *args, **kwargs)
    monkeypatch.setattr(_values, '_exact_check', counting)
    return calls


@pytest.mark.parametrize('dtype, big', [('float32', 3e38), ('float64', 1.5e308)])
def test_overflow_bound_fails_but_every_product_is_finite(ctxs, dtype, big, monkeypatch):
    # norm(w) * max|m| = big * 2 exceeds the largest finite number, so the device bound
    # cannot prove the products finite; the big entry is halved, so none overflows
    calls = _count_exact_checks(monkeypatch)
    p = _big_param(ctxs, dtype, big)
    before = all_replicas(p)
    mult = np.full((2, 3), 2.0, dtype=dtype)
    mult[0, 0] = 0.5
    ps.assign_params({'big': p}, 'big', mult)
    assert calls == ['big']
    for old, new in zip(before, all_replicas(p)):
        assert np.isfinite(new).all()
        np.testing.assert_array_equal(new, old * mult)   # exact: products of powers of two


@pytest.mark.parametrize('dtype, big', [('float32', 3e38), ('float64', 1.5e308)])
def test_overflow_bound_fails_and_a_product_overflows(ctxs, dtype, big, monkeypatch):
    calls = _count_exact_checks(monkeypatch)
    p = _big_param(ctxs, dtype, big)
    before = all_replicas(p)
    with pytest.raises(ps.SurgeryValueError,
                       match=r"Parameter 'big' on cpu\(0\): multiplying by the multiplier "
                             r"would overflow in 1 entry .*first at index \(0, 0\)"):
        ps.assign_params({'big': p}, 'big', np.full((2, 3), 2.0, dtype=dtype))
    assert calls == ['big']
    assert_same_bits({'big': before}, {'big': all_replicas(p)})


def test_overflow_only_on_the_second_replica_is_refused(monkeypatch):
    # the bound is taken per replica: a safe first replica must not vouch for the second
    p = _big_param(TWO, 'float32', 1.0)
    with autograd.pause():
        p.list_data()[1][1, 2] = 3e38
    before = all_replicas(p)
    with pytest.raises(ps.SurgeryValueError, match=r"'big' on cpu\(1\).*index \(1, 2\)"):
        ps.assign_params({'big': p}, 'big', 2.0)
    assert_same_bits({'big': before}, {'big': all_replicas(p)})


def test_overflow_bound_spares_the_exact_check(ctxs, monkeypatch):
    # ordinary weights times 4: the device bound proves every product finite
    calls = _count_exact_checks(monkeypatch)
    net = make_mlp(ctxs)
    before = snapshot(net)
    ps.assign_params(net, '.*', 4.0)
    assert calls == []
    for name, olds in before.items():
        for old, new in zip(olds, all_replicas(net.collect_params()[name])):
            np.testing.assert_array_equal(new, old * 4)


def test_nonfinite_weight_entries_are_not_counted_as_overflow(ctxs):
    # NaN and inf in the weight make the bound unknown; the exact check passes them over
    p = _big_param(ctxs, 'float32', np.nan)
    with autograd.pause():
        for arr in p.list_data():
            arr[1, 1] = np.inf
    ps.assign_params({'big': p}, 'big', 1e30)
    for new in all_replicas(p):
        assert np.isnan(new[0, 0]) and new[1, 1] == np.inf
        np.testing.assert_array_equal(np.delete(new.ravel(), [0, 4]), 1e30)


def _no_product_pass(monkeypatch):
    """Make any pass over the weights for the overflow check fail the test."""
    from paramsurgery import _values

    def refuse(*args, **kwargs):
        raise AssertionError('a pass over the weights ran for the overflow check')
    monkeypatch.setattr(_values, '_start_sumsq', refuse)
    monkeypatch.setattr(_values, '_exact_check', refuse)


@pytest.mark.parametrize('dtype, mult', [
    ('float32', [[1.0, -1.0, 0.5], [0.0, -0.25, 1.0]]),
    ('float64', [[-1.0, 1.0, 1.0], [0.125, 0.0, -1.0]]),
    ('int32', [[0, 0, 0], [0, 0, 0]]),
    ('uint8', [[1, 0, 1], [1, 1, 0]]),
])
def test_multiplier_at_most_one_needs_no_pass_over_the_weights(ctxs, dtype, mult, monkeypatch):
    # |w * m| <= |w| when max|m| <= 1 (< 1 for a signed integer, since -1 * min wraps):
    # no product can overflow where w is finite, so neither the device bound nor the host
    # check runs; the largest |entry| is the exact one validation found
    p = gluon.Parameter('p', shape=(2, 3), dtype=dtype, init=mx.init.Constant(3))
    p.initialize(ctx=ctxs)
    before = all_replicas(p)
    _no_product_pass(monkeypatch)
    ps.assign_params({'p': p}, 'p', np.array(mult, dtype=dtype))
    for old, new in zip(before, all_replicas(p)):
        np.testing.assert_array_equal(new, old * np.array(mult, dtype=dtype))


def test_multiplier_at_most_one_keeps_nonfinite_weights_as_the_exact_check_does(
        ctxs, monkeypatch):
    # NaN and inf in w are not the multiplier's doing: inf * 0 = NaN and NaN * 1 are let
    # through, exactly as the entry-wise check lets them (it counts only finite factors)
    p = _big_param(ctxs, 'float32', np.nan)
    with autograd.pause():
        for arr in p.list_data():
            arr[1, 1] = np.inf
    mult = np.array([[1.0, 0.5, 0.5], [0.5, 0.0, -1.0]], dtype=np.float32)
    from paramsurgery import _values
    steps = _values.plan({'big': p}, 'big', mult, 'multiplier', False)
    _values._exact_check(*steps[0], 'multiplier')   # the host check accepts it too
    _no_product_pass(monkeypatch)
    ps.assign_params({'big': p}, 'big', mult)
    for new in all_replicas(p):
        assert np.isnan(new[0, 0]) and np.isnan(new[1, 1])
        np.testing.assert_array_equal(np.delete(new.ravel(), [0, 4]), [0.5, 0.5, 0.5, -1.0])


def test_multiplier_one_on_a_signed_integer_is_still_checked(ctxs):
    # -1 * int32 min wraps around: max|m| = 1 is no proof for a signed integer
    p = gluon.Parameter('p', shape=(2,), dtype='int32', init=mx.init.Constant(5))
    p.initialize(ctx=ctxs)
    with autograd.pause():
        for arr in p.list_data():
            arr[0] = np.iinfo(np.int32).min
    before = all_replicas(p)
    with pytest.raises(ps.SurgeryValueError, match=r"Parameter 'p' on cpu\(0\).*wrap|overflow"):
        ps.assign_params({'p': p}, 'p', np.array([-1, 1], dtype=np.int32))
    assert_same_bits({'p': before}, {'p': all_replicas(p)})


def test_numpy_value_is_read_in_place_but_left_untouched(ctxs, hybridize):
    # on CPU contexts the multiplier is read without a copy; the call must still finish
    # reading it before returning, and leave the caller's array writable
    net = make_mlp(ctxs, hybridize)
    before = snapshot(net)
    mult = np.linspace(0.5, 1.5, 20, dtype=np.float32).reshape(5, 4)
    value = np.arange(5, dtype=np.float32).reshape(5, 1)
    ps.assign_params(net, 'mlp_dense0_weight', mult)
    ps.set_params(net, 'mlp_dense0_bias', value.ravel())
    assert mult.flags.writeable and value.flags.writeable
    expected = mult.copy()
    mult[:] = 100
    value[:] = 100
    for old, new in zip(before['mlp_dense0_weight'], all_replicas(net[0].weight)):
        np.testing.assert_array_equal(new, old * expected)
    for new in all_replicas(net[0].bias):
        np.testing.assert_array_equal(new, np.arange(5))


# ----------------------------------------------------------------------------- autograd

def test_inside_record_then_backward_and_step(ctxs, hybridize):
    net = Scale(prefix='s_')
    mx.random.seed(0)
    net.initialize(ctx=ctxs)
    if hybridize:
        net.hybridize()
    trainer = gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': 0.1})
    x = batch()
    forward_backward(net, x, ctxs)
    trainer.step(8)
    w0 = net.weight.data(ctxs[0]).asnumpy()
    with autograd.record():
        ps.assign_params(net, 's_weight', 0.5)   # before the forward that should see it
        losses = [(net(part) ** 2).sum() for part in split(x, ctxs)]
    autograd.backward(losses)
    w1 = w0 * 0.5
    xs = x.asnumpy()
    # d/dw sum((x*w)^2) = 2 * w * sum(x^2) over each context's part of the batch
    for ctx, part, grad in zip(ctxs, np.array_split(xs, len(ctxs)), net.weight.list_grad()):
        np.testing.assert_allclose(grad.asnumpy(), 2 * w1 * (part ** 2).sum(0), rtol=1e-5)
    trainer.step(8)  # no stale-gradient error, no ignore_stale_grad
    expected = w1 - 0.1 * 2 * w1 * (xs ** 2).sum(0) / 8
    for arr in all_replicas(net.weight):
        np.testing.assert_allclose(arr, expected, rtol=1e-5)


def test_old_recipe_inside_record_breaks_the_step():
    # The problem this library solves: rebinding _data inside record takes the weight out
    # of training (kept as a regression guard on MXNet's behaviour that the docs describe).
    net = Scale(prefix='s_')
    net.initialize(ctx=ONE)
    trainer = gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': 0.1})
    with autograd.record():
        net.weight._data = [w * 0.5 for w in net.weight.list_data()]
        loss = (net(batch()) ** 2).sum()
    loss.backward()
    with pytest.raises(UserWarning, match='has not been updated by backward'):
        trainer.step(8)


# ----------------------------------------------------------------------------- the Trainer

def sgd_reference(w, xs, lr, momentum, surgery_step, multiplier, steps, batch_size=8):
    """Momentum SGD on loss sum((x*w)^2), with w *= multiplier before step `surgery_step`."""
    mom = np.zeros_like(w)
    for step in range(steps):
        if step == surgery_step:
            w = w * multiplier
        grad = 2 * w * (xs ** 2).sum(0) / batch_size
        mom = momentum * mom - lr * grad
        w = w + mom
    return w


@pytest.mark.parametrize('kvstore, update_on_kvstore, ctxs', TRAINER_SETUPS)
def test_survives_trainer_and_keeps_momentum(kvstore, update_on_kvstore, ctxs, hybridize):
    net = Scale(prefix='s_')
    mx.random.seed(0)
    net.initialize(ctx=ctxs)
    if hybridize:
        net.hybridize()
    trainer = gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': 0.1, 'momentum': 0.9},
                            kvstore=kvstore, update_on_kvstore=update_on_kvstore)
    w_init = net.weight.data(ctxs[0]).asnumpy()
    x = batch()
    mult = np.array([0.5, 2.0, -1.0, 0.0], dtype=np.float32)
    for step in range(4):
        with autograd.record():
            if step == 2:
                ps.assign_params(net, 's_weight', mult)
            losses = [(net(part) ** 2).sum() for part in split(x, ctxs)]
        autograd.backward(losses)
        trainer.step(8)
    if update_on_kvstore:
        assert trainer._update_on_kvstore  # the case where the kvstore owns a weight copy
    # Without a kvstore nothing sums the gradients: each replica follows its own part.
    parts = np.array_split(x.asnumpy(), len(ctxs)) if kvstore is None else [x.asnumpy()] * 2
    for arr, part in zip(all_replicas(net.weight), parts):
        expected = sgd_reference(w_init, part, 0.1, 0.9, 2, mult, 4)
        np.testing.assert_allclose(arr, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize('kvstore, update_on_kvstore, ctxs', TRAINER_SETUPS)
def test_multi_precision_master_copy_is_updated(kvstore, update_on_kvstore, ctxs):
    net = Scale(prefix='s_')
    mx.random.seed(0)
    net.initialize(ctx=ctxs)
    net.cast('float16')
    trainer = gluon.Trainer(net.collect_params(), 'sgd',
                            {'learning_rate': 0.1, 'momentum': 0.9, 'multi_precision': True},
                            kvstore=kvstore, update_on_kvstore=update_on_kvstore)
    w_init = net.weight.data(ctxs[0]).asnumpy().astype(np.float32)
    x = batch().astype('float16')
    for step in range(3):
        with autograd.record():
            if step == 1:
                ps.set_params(net, 's_weight', np.float32(0.25))
            losses = [(net(part) ** 2).sum() for part in split(x, ctxs)]
        autograd.backward(losses)
        trainer.step(8)
    xs = x.asnumpy().astype(np.float32)
    parts = np.array_split(xs, len(ctxs)) if kvstore is None else [xs] * 2
    for arr, part in zip(all_replicas(net.weight), parts):
        mom, w = np.zeros(4, np.float32), w_init
        for step in range(3):
            if step == 1:
                w = np.full(4, 0.25, np.float32)
            mom = 0.9 * mom - 0.1 * 2 * w * (part ** 2).sum(0) / 8
            w = w + mom
        assert arr.dtype == np.float16
        np.testing.assert_allclose(arr.astype(np.float32), w, rtol=2e-3, atol=1e-3)


def _two_trainers():
    net = Scale(prefix='s_')
    net.initialize(ctx=TWO)
    used = gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': 0.0}, kvstore='device',
                         update_on_kvstore=True)
    gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': 0.0})  # now param._trainer
    forward_backward(net, batch(), TWO)
    used.step(8)  # creates the kvstore copy of the weights
    return net, used


def test_explicit_trainer_is_synchronised():
    net, used = _two_trainers()
    ps.set_params(net, 's_weight', 3.0, trainer=used)
    forward_backward(net, batch(), TWO)
    used.step(8)  # lr 0: the weight stays what the kvstore holds
    for arr in all_replicas(net.weight):
        np.testing.assert_array_equal(arr, 3.0)


def test_forgotten_trainer_undoes_the_change():
    # Gluon remembers only the last Trainer built on a parameter: this is why trainer= exists.
    net, used = _two_trainers()
    before = all_replicas(net.weight)
    ps.set_params(net, 's_weight', 3.0)
    forward_backward(net, batch(), TWO)
    used.step(8)
    for old, arr in zip(before, all_replicas(net.weight)):
        np.testing.assert_array_equal(arr, old)


# ----------------------------------------------------------------------------- all or nothing

@pytest.mark.parametrize('call, error, match', [
    (lambda net: ps.assign_params(net, {'mlp_dense0_weight': 2.0, 'mlp_dense1_weight':
                                        np.ones((4, 4))}), ps.SurgeryValueError,
     r"'mlp_dense1_weight'.*shape \(4, 4\).*shape \(3, 5\)"),
    (lambda net: ps.assign_params(net, {'.*dense0.*': 2.0, '.*bias': 1.0}),
     ps.SurgeryValueError, "selected by both"),
    (lambda net: ps.set_params(net, '.*weight', np.array([1.0, np.inf, 1.0, 1.0])),
     ps.SurgeryValueError, r"'mlp_dense0_weight'.*non-finite.*allow_nonfinite"),
    (lambda net: ps.set_params(net, ['mlp_dense0_bias', 'nope'], 1.0),
     ps.SelectionError, "'nope' matches no parameter"),
    (lambda net: ps.assign_params(net, '.*', '2'), ps.SurgeryTypeError, "Python number"),
    (lambda net: ps.assign_params(net, '.*', [1, 2]), ps.SurgeryTypeError, "np.asarray"),
    (lambda net: ps.assign_params(net, '.*', np.array(['a'])), ps.SurgeryTypeError, "numeric"),
    (lambda net: ps.assign_params(net, '.*', 1j), ps.SurgeryTypeError, "complex"),
    (lambda net: ps.assign_params(net, '.*'), ps.SurgeryTypeError, "multiplier is required"),
    (lambda net: ps.assign_params(net, {'.*': 1.0}, 2.0), ps.SurgeryTypeError, "not both"),
    (lambda net: ps.assign_params(net, 42, 2.0), ps.SurgeryTypeError, "key must be"),
    (lambda net: ps.assign_params(net, '.*', 2.0, trainer='sgd'), ps.SurgeryTypeError,
     "trainer must be"),
    (lambda net: ps.set_params(net, '.*weight', mx.nd.array([[np.nan] * 4], ctx=mx.cpu(1))),
     ps.SurgeryValueError, "non-finite"),
], ids=['shape', 'overlap', 'inf', 'unknown-key', 'str', 'list', 'str-array', 'complex',
        'missing', 'both', 'key-type', 'trainer-type', 'nan-ndarray'])
def test_errors_change_nothing(ctxs, call, error, match):
    net = make_mlp(ctxs)
    before = snapshot(net)
    with pytest.raises(error, match=match):
        call(net)
    assert_same_bits(before, snapshot(net))


def _interrupt_in_the_second_write(monkeypatch):
    """Send Ctrl-C (SIGINT) to this process inside the second parameter's write: on two
    contexts after its first replica is written, on one after its only replica."""
    real = _mx.write_replicas
    calls = []

    def interrupting(param, write):
        calls.append(param.name)
        if len(calls) != 2:
            return real(param, write)
        done = []

        def once(arr):
            done.append(write(arr))
            if len(done) == 1:
                signal.raise_signal(signal.SIGINT)

        return real(param, once)

    monkeypatch.setattr(_mx, 'write_replicas', interrupting)
    return calls


def grads(net):
    return {name: [g.asnumpy().copy() for g in p.list_grad()]
            for name, p in net.collect_params().items()}


@pytest.mark.parametrize('call', ['assign_params', 'set_params'])
def test_ctrl_c_in_the_middle_of_the_writes_arrives_after_all_of_them(ctxs, hybridize, call,
                                                                      monkeypatch):
    net = make_mlp(ctxs, hybridize)
    forward_backward(net, batch(), ctxs)    # a cached graph and gradients that must stay
    before, grads_before = snapshot(net), grads(net)
    rng = np.random.RandomState(3)
    values = {name: rng.uniform(0.5, 1.5, p.shape).astype(np.float32)
              for name, p in net.collect_params().items()}
    calls = _interrupt_in_the_second_write(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        getattr(ps, call)(net, values)
    assert len(calls) == len(values)        # the interrupt waited for every write
    assert_same_bits(grads_before, grads(net))
    for name, p in net.collect_params().items():
        for old, new in zip(before[name], all_replicas(p)):
            want = old * values[name] if call == 'assign_params' else values[name]
            np.testing.assert_array_equal(new, want)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.parametrize('call', ['assign_params', 'set_params'])
def test_a_failure_while_staging_the_values_changes_nothing(ctxs, call, monkeypatch):
    """NDArray values are copied to every context before the first write: a failure there
    (out of memory) finds every parameter as it was."""
    from paramsurgery import _values
    net = make_mlp(ctxs)
    before = snapshot(net)
    values = {name: mx.nd.full(p.shape, 0.5) for name, p in net.collect_params().items()}
    real, staged = _values.Value.prefetch, []

    def failing(self, contexts):
        staged.append(self)
        if len(staged) == 2:
            raise MemoryError('out of memory')
        return real(self, contexts)

    monkeypatch.setattr(_values.Value, 'prefetch', failing)
    with pytest.raises(MemoryError):
        getattr(ps, call)(net, values)
    assert len(staged) == 2
    assert_same_bits(before, snapshot(net))


def _train_step(net, trainer, ctxs, x):
    forward_backward(net, x, ctxs)
    trainer.step(8)


KEEPS_COPIES = [p for p in TRAINER_SETUPS if p.values[1]]   # the kvstore runs the optimizer


@pytest.mark.parametrize('kvstore, update_on_kvstore, ctxs', TRAINER_SETUPS)
def test_an_undo_copy_only_when_a_trainer_keeps_its_own_copy(kvstore, update_on_kvstore,
                                                             ctxs, monkeypatch):
    from paramsurgery import surgery
    net = Scale(prefix='s_')
    net.initialize(ctx=ctxs)
    trainer = gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': 0.1},
                            kvstore=kvstore, update_on_kvstore=update_on_kvstore)
    _train_step(net, trainer, ctxs, batch())
    recorded, real = [], surgery.Transaction

    def recording(*args, **kwargs):
        recorded.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(surgery, 'Transaction', recording)
    ps.assign_params(net, 's_weight', 2.0)
    assert len(recorded) == (1 if update_on_kvstore else 0)


@pytest.mark.parametrize('kvstore, update_on_kvstore, ctxs', KEEPS_COPIES)
def test_failure_after_the_trainer_was_synchronised_is_undone(kvstore, update_on_kvstore,
                                                              ctxs, monkeypatch):
    """The kvstore's copy (update_on_kvstore) is overwritten before the failure: it is put
    back too, so the next steps are bit for bit those of a net never touched."""
    nets, trainers = [], []
    for _ in range(2):
        net = Scale(prefix='s_')
        mx.random.seed(0)
        net.initialize(ctx=ctxs)
        nets.append(net)
        trainers.append(gluon.Trainer(net.collect_params(), 'sgd',
                                      {'learning_rate': 0.1, 'momentum': 0.9},
                                      kvstore=kvstore, update_on_kvstore=update_on_kvstore))
    x = batch()
    for net, trainer in zip(nets, trainers):
        _train_step(net, trainer, ctxs, x)
    before = snapshot(nets[0])
    real = _mx.sync_trainer

    def sync_then_fail(trainer, params):
        real(trainer, params)
        raise RuntimeError('failed after the sync')

    monkeypatch.setattr(_mx, 'sync_trainer', sync_then_fail)
    with pytest.raises(RuntimeError, match='failed after the sync'):
        ps.assign_params(nets[0], 's_weight', np.array([0.5, 2.0, -1.0, 3.0], np.float32))
    assert_same_bits(before, snapshot(nets[0]))
    for _ in range(2):
        for net, trainer in zip(nets, trainers):
            _train_step(net, trainer, ctxs, x)
    assert_same_bits(snapshot(nets[1]), snapshot(nets[0]))


def test_errors_are_builtin_subclasses():
    assert issubclass(ps.SurgeryValueError, ValueError)
    assert issubclass(ps.SurgeryTypeError, TypeError)
    assert issubclass(ps.SelectionError, KeyError)
    for cls in (ps.SurgeryValueError, ps.SurgeryTypeError, ps.SelectionError,
                ps.ParameterStateError, ps.TrainerStateError):
        assert issubclass(cls, ps.SurgeryError) and issubclass(cls, ps.ParamSurgeryError)


def test_deferred_parameter_is_refused_before_anything_changes(ctxs):
    net = gluon.nn.HybridSequential(prefix='d_')
    with net.name_scope():
        net.add(gluon.nn.Dense(3, in_units=2), gluon.nn.Dense(2))  # second one is deferred
    net.initialize(ctx=ctxs)
    w0 = [d.asnumpy() for d in net[0].weight.list_data()]
    with pytest.raises(ps.ParameterStateError, match=r"'d_dense1_weight'.*deferred.*forward"):
        ps.assign_params(net, '.*weight', 2.0)
    for a, b in zip(w0, net[0].weight.list_data()):
        np.testing.assert_array_equal(a, b.asnumpy())


def test_damaged_parameter_is_refused():
    net = make_mlp(TWO)
    net[0].weight._data = [w * 2 for w in net[0].weight.list_data()]
    with pytest.raises(ps.ParameterStateError, match=r"'mlp_dense0_weight'.*not-a-leaf"):
        ps.set_params(net, 'mlp_dense0_weight', 1.0)


def test_uninitialised_parameter_is_refused():
    net = gluon.nn.Dense(2, in_units=3, prefix='u_')
    with pytest.raises(ps.ParameterStateError, match=r"'u_weight'.*never initialised"):
        ps.set_params(net, 'u_weight', 1.0)


def test_symbolblock_parameters_without_shape(tmp_path, ctxs):
    # SymbolBlock.imports leaves param.shape None: the replicas' shape is the truth
    net = gluon.nn.HybridSequential(prefix='e_')
    with net.name_scope():
        net.add(gluon.nn.Dense(2, in_units=3))
    net.initialize(mx.init.One())
    net.hybridize()
    net(mx.nd.ones((1, 3)))
    net.export(str(tmp_path / 'm'))
    block = gluon.nn.SymbolBlock.imports(str(tmp_path / 'm-symbol.json'), ['data'],
                                         str(tmp_path / 'm-0000.params'), ctx=ctxs)
    assert block.collect_params()['e_dense0_weight'].shape is None
    assert ps.assign_params(block, 'e_dense0_weight', np.array([[2.0], [3.0]])) == \
        ['e_dense0_weight']
    for ctx in ctxs:
        np.testing.assert_array_equal(block(mx.nd.ones((1, 3), ctx=ctx)).asnumpy(), [[6, 9]])
    with pytest.raises(ps.SurgeryValueError, match=r'shape \(2, 3\)'):
        ps.set_params(block, 'e_dense0_weight', np.ones(4))
