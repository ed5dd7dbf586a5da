"""Pruning schedules: pure callables ``schedule(step) -> (prune_now, sparsity)``.

:class:`ConstantSparsity` and :class:`PolynomialDecay` (Zhu & Gupta 2017) drive
:class:`paramsurgery.Pruner`; like the pruning core they need no MXNet.
"""
import math
from collections import OrderedDict
from typing import Any, Dict, Tuple

from ._checks import is_int as _is_int
from ._checks import is_real as _is_real
from .errors import SurgeryTypeError, SurgeryValueError

__all__ = ['ConstantSparsity', 'PolynomialDecay']


def _check_step(value, what, *, allow_end=False):
    if not _is_int(value):
        raise SurgeryTypeError('%s must be an int, got %s %r.' % (what, type(value).__name__,
                                                                   value))
    value = int(value)
    if value < 0 and not (allow_end and value == -1):
        raise SurgeryValueError('%s=%d must be >= 0%s.' % (what, value,
                                                          ' (or -1: no end)' if allow_end
                                                          else ''))
    return value


def _check_sparsity(value, what):
    if not _is_real(value):
        raise SurgeryTypeError('%s must be a float in [0, 1), got %s %r.'
                               % (what, type(value).__name__, value))
    value = float(value)
    if not 0.0 <= value < 1.0:
        hint = ' Did you mean %s=%r?' % (what, value / 100) if 1 <= value < 100 else ''
        raise SurgeryValueError('%s=%r must be in [0, 1) (1 would prune everything).%s'
                                % (what, value, hint))
    return value


class Schedule:
    """Base of the pruning schedules: a pure callable ``schedule(step) -> (prune_now,
    sparsity)`` with value equality and a readable repr."""

    _fields = ()

    def _in_range(self, step):
        return step >= self.begin and (self.end == -1 or step <= self.end)

    def __call__(self, step: int) -> Tuple[bool, float]:
        if not _is_int(step):
            raise SurgeryTypeError('step must be an int, got %s %r.' % (type(step).__name__,
                                                                        step))
        return self._at(int(step))

    def _at(self, step):
        raise NotImplementedError

    def get_config(self) -> Dict[str, Any]:
        """The constructor's arguments: ``type(s)(**s.get_config()) == s``."""
        return OrderedDict((field, getattr(self, field)) for field in self._fields)

    def __repr__(self):
        return '%s(%s)' % (type(self).__name__, ', '.join(
            '%s=%r' % item for item in self.get_config().items()))

    def __eq__(self, other):
        if type(other) is not type(self):
            return NotImplemented
        return self.get_config() == other.get_config()

    def __hash__(self):
        return hash((type(self).__name__,) + tuple(self.get_config().values()))


class ConstantSparsity(Schedule):
    """Prune to a constant sparsity every ``frequency`` steps in [``begin``, ``end``].

    Same semantics as ``tfmot.sparsity.keras.ConstantSparsity``.

    Parameters
    ----------
    target : float
        The sparsity in [0, 1) to bring the weights to.
    begin : int, default 0
        The first step that prunes (>= 0).
    end : int, default -1
        The last step that may prune (>= begin), or -1 for no end.
    frequency : int, default 100
        Prune at ``begin``, ``begin + frequency``, ... (> 0).

    Outputs:
        - **prune_now**: True when ``begin <= step`` (and ``step <= end`` unless end is -1)
          and ``(step - begin) % frequency == 0``.
        - **sparsity**: ``target`` at every step.

    Examples
    --------
    >>> import paramsurgery as ps
    >>> s = ps.ConstantSparsity(0.8, begin=100, end=400, frequency=100)
    >>> s(0), s(100), s(150), s(400), s(500)
    ((False, 0.8), (True, 0.8), (False, 0.8), (True, 0.8), (False, 0.8))
    >>> s
    ConstantSparsity(target=0.8, begin=100, end=400, frequency=100)
    """

    _fields = ('target', 'begin', 'end', 'frequency')

    def __init__(self, target: float, begin: int = 0, end: int = -1, frequency: int = 100):
        self.target = _check_sparsity(target, 'target')
        self.begin = _check_step(begin, 'begin')
        self.end = _check_step(end, 'end', allow_end=True)
        if self.end != -1 and self.end < self.begin:
            raise SurgeryValueError('end=%d is before begin=%d; pass end >= begin, or -1 for '
                                    'no end.' % (self.end, self.begin))
        self.frequency = _check_step(frequency, 'frequency')
        if self.frequency == 0:
            raise SurgeryValueError('frequency must be > 0 (prune every `frequency` steps).')

    def _at(self, step):
        prune = self._in_range(step) and (step - self.begin) % self.frequency == 0
        return bool(prune), self.target


class PolynomialDecay(Schedule):
    """Gradual pruning from ``initial`` to ``final`` sparsity (Zhu & Gupta, 2017).

    Same semantics as ``tfmot.sparsity.keras.PolynomialDecay``, except that the step ``end``
    always prunes (so the final sparsity is reached even when ``end - begin`` is not a
    multiple of ``frequency``).

    Parameters
    ----------
    initial : float
        The sparsity at ``begin``, in [0, 1).
    final : float
        The sparsity from ``end`` on, in [``initial``, 1): pruned entries are never revived,
        so the sparsity cannot decrease.
    begin : int
        The first step that prunes (>= 0).
    end : int
        The last step that prunes (>= begin).
    power : float, default 3
        The exponent (> 0); 3 as in the paper: fast pruning first, slow near the end.
    frequency : int, default 100
        Prune at ``begin``, ``begin + frequency``, ... and at ``end`` (> 0).

    Outputs:
        - **prune_now**: True when ``begin <= step <= end`` and either
          ``(step - begin) % frequency == 0`` or ``step == end``.
        - **sparsity**: ``final + (initial - final) * (1 - p) ** power`` with
          ``p = (step - begin) / (end - begin)`` clipped to [0, 1] (``initial`` before
          ``begin``, ``final`` from ``end`` on).

    Examples
    --------
    >>> import paramsurgery as ps
    >>> s = ps.PolynomialDecay(0.0, 0.8, begin=0, end=1000, frequency=250)
    >>> [(step, prune, round(sparsity, 4)) for step in (0, 250, 500, 600, 1000, 1250)
    ...  for prune, sparsity in [s(step)]]
    [(0, True, 0.0), (250, True, 0.4625), (500, True, 0.7), (600, False, 0.7488),
     (1000, True, 0.8), (1250, False, 0.8)]
    """

    _fields = ('initial', 'final', 'begin', 'end', 'power', 'frequency')

    def __init__(self, initial: float, final: float, begin: int, end: int, power: float = 3,
                 frequency: int = 100):
        self.initial = _check_sparsity(initial, 'initial')
        self.final = _check_sparsity(final, 'final')
        if self.final < self.initial:
            raise SurgeryValueError(
                'final=%r is below initial=%r: pruned entries are never revived, so the '
                'sparsity cannot decrease. Swap them or use ConstantSparsity.'
                % (self.final, self.initial))
        self.begin = _check_step(begin, 'begin')
        self.end = _check_step(end, 'end')
        if self.end < self.begin:
            raise SurgeryValueError('end=%d is before begin=%d; pass end >= begin (PolynomialDecay'
                                    ' needs an end step).' % (self.end, self.begin))
        if not _is_real(power):
            raise SurgeryTypeError('power must be a number, got %s %r.'
                                   % (type(power).__name__, power))
        if not (math.isfinite(power) and power > 0):
            raise SurgeryValueError('power=%r must be a finite number > 0 (3 in Zhu & Gupta).'
                                    % (power,))
        self.power = power
        self.frequency = _check_step(frequency, 'frequency')
        if self.frequency == 0:
            raise SurgeryValueError('frequency must be > 0 (prune every `frequency` steps).')

    def _at(self, step):
        prune = self._in_range(step) and ((step - self.begin) % self.frequency == 0
                                          or step == self.end)
        if step <= self.begin and step < self.end:
            sparsity = self.initial
        elif step >= self.end:
            sparsity = self.final
        else:
            done = (step - self.begin) / (self.end - self.begin)
            sparsity = self.final + (self.initial - self.final) * (1.0 - done) ** self.power
            sparsity = min(max(sparsity, self.initial), self.final)
        return bool(prune), float(sparsity)
