"""Tests of the pruning schedules (``schedules``: ConstantSparsity, PolynomialDecay).

Like the numpy core, the schedules need no MXNet: they map a step to (prune now?, sparsity).
"""
import numpy as np
import pytest

import paramsurgery as ps
from paramsurgery import SurgeryTypeError, SurgeryValueError


def test_constant_sparsity_values():
    s = ps.ConstantSparsity(0.75, begin=200, end=1000, frequency=300)
    assert s(0) == (False, 0.75)
    assert s(199) == (False, 0.75)
    assert s(200) == (True, 0.75)
    assert s(350) == (False, 0.75)
    assert s(500) == (True, 0.75)
    assert s(800) == (True, 0.75)
    assert s(1000) == (False, 0.75)   # 1000 - 200 is not a multiple of 300
    assert s(1100) == (False, 0.75)   # after end
    forever = ps.ConstantSparsity(0.5)
    assert forever(0) == (True, 0.5) and forever(10 ** 9) == (True, 0.5)
    assert forever(10 ** 9 + 1) == (False, 0.5)
    assert forever(-100) == (False, 0.5)
    prune, sparsity = forever(np.int64(300))
    assert type(prune) is bool and type(sparsity) is float


def test_polynomial_decay_values():
    s = ps.PolynomialDecay(0.2, 0.8, begin=100, end=500, frequency=100)
    expected = {
        50: (False, 0.2),
        100: (True, 0.2),
        200: (True, 0.8 - 0.6 * 0.75 ** 3),     # 0.546875
        300: (True, 0.8 - 0.6 * 0.5 ** 3),      # 0.725
        350: (False, 0.8 - 0.6 * 0.375 ** 3),   # 0.768359375
        400: (True, 0.8 - 0.6 * 0.25 ** 3),     # 0.790625
        500: (True, 0.8),
        600: (False, 0.8),
    }
    for step, (prune, sparsity) in expected.items():
        got = s(step)
        assert got[0] is prune, step
        assert got[1] == pytest.approx(sparsity, abs=1e-12), step
    assert s(200)[1] == pytest.approx(0.546875) and s(350)[1] == pytest.approx(0.768359375)
    assert s(100)[1] == 0.2 and s(500)[1] == 0.8   # exact at both ends


def test_polynomial_decay_power_and_end_always_prunes():
    linear = ps.PolynomialDecay(0.0, 0.5, begin=0, end=100, power=1, frequency=10)
    assert linear(30) == (True, pytest.approx(0.15))
    assert linear(55) == (False, pytest.approx(0.275))
    odd = ps.PolynomialDecay(0.1, 0.9, begin=0, end=250, frequency=100)
    assert [step for step in range(0, 400) if odd(step)[0]] == [0, 100, 200, 250]
    assert odd(250)[1] == 0.9
    instant = ps.PolynomialDecay(0.1, 0.5, begin=10, end=10)
    assert instant(9) == (False, 0.1) and instant(10) == (True, 0.5)
    assert instant(11) == (False, 0.5)


def test_polynomial_decay_monotone_and_bounded():
    s = ps.PolynomialDecay(0.3, 0.95, begin=7, end=1007, power=3, frequency=1)
    values = [s(step)[1] for step in range(0, 1100)]
    assert all(b >= a for a, b in zip(values, values[1:]))
    assert min(values) == 0.3 and max(values) == 0.95


@pytest.mark.parametrize('make,exc,words', [
    (lambda: ps.ConstantSparsity(1.0), SurgeryValueError, r'\[0, 1\)'),
    (lambda: ps.ConstantSparsity(-0.1), SurgeryValueError, r'\[0, 1\)'),
    (lambda: ps.ConstantSparsity(80), SurgeryValueError, 'target=0.8'),
    (lambda: ps.ConstantSparsity(float('nan')), SurgeryValueError, r'\[0, 1\)'),
    (lambda: ps.ConstantSparsity(True), SurgeryTypeError, 'target'),
    (lambda: ps.ConstantSparsity('0.5'), SurgeryTypeError, 'target'),
    (lambda: ps.ConstantSparsity(0.5, begin=-1), SurgeryValueError, 'begin'),
    (lambda: ps.ConstantSparsity(0.5, begin=1.5), SurgeryTypeError, 'begin'),
    (lambda: ps.ConstantSparsity(0.5, begin=10, end=5), SurgeryValueError, 'end=5'),
    (lambda: ps.ConstantSparsity(0.5, end=-2), SurgeryValueError, 'end'),
    (lambda: ps.ConstantSparsity(0.5, frequency=0), SurgeryValueError, 'frequency'),
    (lambda: ps.ConstantSparsity(0.5, frequency=-3), SurgeryValueError, 'frequency'),
    (lambda: ps.PolynomialDecay(0.5, 0.9, 0, -1), SurgeryValueError, 'end'),
    (lambda: ps.PolynomialDecay(0.5, 0.9, 10, 5), SurgeryValueError, 'end=5'),
    (lambda: ps.PolynomialDecay(0.5, 1.0, 0, 5), SurgeryValueError, 'final'),
    (lambda: ps.PolynomialDecay(0.9, 0.5, 0, 5), SurgeryValueError, 'never revived'),
    (lambda: ps.PolynomialDecay(0.1, 0.5, 0, 5, power=0), SurgeryValueError, 'power'),
    (lambda: ps.PolynomialDecay(0.1, 0.5, 0, 5, power=float('inf')), SurgeryValueError,
     'power'),
    (lambda: ps.PolynomialDecay(0.1, 0.5, 0, 5, power='3'), SurgeryTypeError, 'power'),
    (lambda: ps.PolynomialDecay(0.1, 0.5, 0, 5, frequency=0), SurgeryValueError, 'frequency'),
    (lambda: ps.PolynomialDecay(0.1, 0.5, 0, 5, frequency=True), SurgeryTypeError,
     'frequency'),
])
def test_schedule_validation(make, exc, words):
    with pytest.raises(exc, match=words):
        make()


@pytest.mark.parametrize('step', [1.0, True, '3', None])
def test_schedule_step_type(step):
    for s in (ps.ConstantSparsity(0.5), ps.PolynomialDecay(0.1, 0.5, 0, 10)):
        with pytest.raises(SurgeryTypeError, match='step'):
            s(step)


def test_schedule_repr_equality_config():
    a = ps.PolynomialDecay(0.1, 0.5, begin=np.int64(0), end=10, frequency=2)
    assert repr(a) == ('PolynomialDecay(initial=0.1, final=0.5, begin=0, end=10, power=3, '
                       'frequency=2)')
    assert a == ps.PolynomialDecay(0.1, 0.5, 0, 10, 3, 2)
    assert hash(a) == hash(ps.PolynomialDecay(0.1, 0.5, 0, 10, 3, 2))
    assert a != ps.PolynomialDecay(0.1, 0.5, 0, 10, 2, 2)
    assert ps.PolynomialDecay(**a.get_config()) == a
    c = ps.ConstantSparsity(0.5, 0, 10, 2)
    assert repr(c) == 'ConstantSparsity(target=0.5, begin=0, end=10, frequency=2)'
    assert ps.ConstantSparsity(**c.get_config()) == c and c != a and c != 'x'
    assert ps.ConstantSparsity(0, 0, 10, 2) == ps.ConstantSparsity(0.0, 0, 10, 2)
    assert len({c, ps.ConstantSparsity(0.5, 0, 10, 2), a}) == 2
