"""The arguments of the pruning core, checked: amounts and counts, scopes and groups, norms,
seeds, and the weight, mask and score arrays (pure numpy and Python, no MXNet).

Every function raises a typed error from :mod:`paramsurgery.errors` before anything is
computed; :func:`prune_count` is the public face (documented in
:mod:`paramsurgery.pruning_core`, which re-exports it).
"""
import math
import numbers
from collections import OrderedDict
from typing import Any, Mapping, Optional, Union

import numpy as np

from ._checks import is_int as _is_int
from ._checks import is_real as _is_real
from .errors import SurgeryTypeError, SurgeryValueError, and_more

__all__ = []

_SCOPES = ('layer', 'global')


def prune_count(amount: Union[int, float], n: int, *, what: str = 'entries',
                where: str = '') -> int:
    """How many of ``n`` candidates ``amount`` prunes, validated as every pruning call does.

    Parameters
    ----------
    amount : int or float
        A float in [0, 1] is the fraction of the ``n`` candidates (the entries not masked
        yet) and gives ``floor(amount * n + 0.5)``; an int >= 0 is a count. ``1.0`` prunes
        everything, ``1`` prunes one entry.
    n : int
        The number of candidates.
    what : str, default 'entries'
        What is counted, for error messages (e.g. ``'slices'``).
    where : str, default ''
        Where the candidates live, for error messages (e.g. ``"parameter 'fc_weight'"``).

    Returns
    -------
    int
        The number of candidates to prune, between 0 and ``n``.

    Raises
    ------
    SurgeryTypeError
        (a ``TypeError``) for a bool, a string or any other non-number.
    SurgeryValueError
        (a ``ValueError``) for NaN, infinity, a negative amount, a float above 1 or a count
        above ``n``.

    Examples
    --------
    >>> import paramsurgery as ps
    >>> ps.prune_count(0.5, 7), ps.prune_count(0.25, 10), ps.prune_count(3, 10)
    (4, 3, 3)
    >>> ps.prune_count(1.0, 10), ps.prune_count(1, 10)
    (10, 1)
    >>> ps.prune_count(50.0, 10)
    Traceback (most recent call last):
    ...
    paramsurgery.errors.SurgeryValueError: amount=50.0 is a float above 1; a float is a
    fraction of the 10 entries still unmasked. Did you mean amount=0.5 (amount/100)? ...
    """
    if not _is_int(n):
        raise SurgeryTypeError('n (the number of candidates) must be an int, got %s %r.'
                               % (type(n).__name__, n))
    if n < 0:
        raise SurgeryValueError('n (the number of candidates) must be >= 0, got %d.' % n)
    value = check_amount(amount, what=what, where=where, n=n)
    if _is_int(value):
        if value > n:
            raise SurgeryValueError(
                'amount=%d asks to prune %d %s but only %d %s %s still unmasked%s. Pass at '
                'most %d, or a float in [0, 1] for a fraction.'
                % (value, value, what, n, what, 'is' if n == 1 else 'are', _at(where), n))
        return value
    return int(math.floor(value * n + 0.5))


def _at(where):
    return ' in %s' % where if where else ''


def check_amount(amount: Any, *, what: str = 'entries', where: str = '',
                 n: Optional[int] = None) -> Union[int, float]:
    """``amount`` as an int (a count) or a float in [0, 1], checked for type, bool, NaN,
    sign and a float above 1 before the number of candidates is known (``n``, when it is,
    is quoted in the float-above-1 message). Raises as :func:`prune_count` does."""
    at = _at(where)
    if isinstance(amount, (bool, np.bool_)):
        raise SurgeryTypeError(
            'amount=%r is a bool; pass a float in [0, 1] (fraction of the %s still unmasked%s) '
            'or an int >= 0 (a count).' % (amount, what, at))
    if _is_int(amount):
        count = int(amount)
        if count < 0:
            raise SurgeryValueError('amount=%d is negative; a count must be >= 0.' % count)
        return count
    if not _is_real(amount):
        raise SurgeryTypeError(
            'amount must be a float in [0, 1] (fraction of the %s still unmasked) or an '
            'int >= 0 (a count), got %s %r.' % (what, type(amount).__name__, amount))
    value = float(amount)
    if math.isnan(value) or math.isinf(value):
        raise SurgeryValueError('amount=%r is not finite; pass a float in [0, 1] or an int >= 0.'
                                % (amount,))
    if value < 0:
        raise SurgeryValueError('amount=%r is negative; pass a float in [0, 1] or an int >= 0.'
                                % (amount,))
    if value > 1:
        raise SurgeryValueError(
            'amount=%r is a float above 1; a float is a fraction of the %s%s still '
            'unmasked%s. Did you mean amount=%r (amount/100)? For a count pass an int.'
            % (amount, '' if n is None else '%d ' % n, what, at, value / 100))
    return value


def count_to_reach(sparsity: float, total: int, masked: int, zeros: Optional[int] = None
                   ) -> int:
    """How many more entries (or slices) to prune so that ``total`` reach ``sparsity``.

    ``masked`` are already pruned; ``zeros`` (default ``masked``) are the effective zeros
    already there, which magnitude pruning takes first: pruning ``target - masked`` then
    gives exactly ``target = floor(sparsity * total + 0.5)`` zeros whenever ``target`` is
    above the zeros already there, and nothing needs pruning otherwise.
    """
    target = int(math.floor(sparsity * total + 0.5))
    already = masked if zeros is None else zeros
    return max(0, target - masked) if target > already else 0


def check_scope(scope):
    if scope not in _SCOPES:
        raise SurgeryValueError("scope must be 'layer' or 'global', got %r." % (scope,))


def check_norm(norm):
    if not _is_real(norm) or not (float(norm) > 0):
        raise SurgeryValueError(
            'norm must be a number > 0 or numpy.inf (the p of the Lp norm), got %r.' % (norm,))
    return float(norm)


def _as_numeric(name, what, value, shape=None):
    """``value`` as a numeric numpy array (no copy when it already is one)."""
    if isinstance(value, (numbers.Number, np.generic)):
        value = np.asarray(value)
    if not isinstance(value, np.ndarray):
        raise SurgeryTypeError(
            "'%s': the %s must be a numpy array, got %s. Convert it first (np.asarray(x) or "
            "x.asnumpy() for an NDArray)." % (name, what, type(value).__name__))
    if value.dtype.kind not in 'biuf':
        raise SurgeryTypeError(
            "'%s': the %s has dtype %s; it must be numeric (bool, integer or float)."
            % (name, what, value.dtype.name))
    if shape is not None and value.shape != shape:
        try:
            ok = np.broadcast_shapes(value.shape, shape) == shape
        except ValueError:
            ok = False
        if not ok:
            raise SurgeryValueError(
                "'%s': the %s has shape %s, which does not broadcast to the weight's shape %s."
                % (name, what, value.shape, shape))
    return value


def check_weights(weights) -> 'OrderedDict[str, np.ndarray]':
    if not isinstance(weights, Mapping):
        raise SurgeryTypeError('weights must be a dict of name -> numpy array, got %s.'
                               % type(weights).__name__)
    if not weights:
        raise SurgeryValueError('weights is empty: there is nothing to prune.')
    return OrderedDict((name, _as_numeric(name, 'weight', w)) for name, w in weights.items())


def check_per_name(weights, values, what, *, required=False):
    """``values`` (a dict name -> array or None) checked against the weights' names and
    shapes; returns name -> array or None for every weight."""
    if values is None:
        values = {}
    if not isinstance(values, Mapping):
        raise SurgeryTypeError('%s must be a dict of name -> numpy array%s, got %s.'
                               % (what, '' if required else ' or None', type(values).__name__))
    unknown = [name for name in values if name not in weights]
    if unknown:
        raise SurgeryValueError(
            '%s has names that are not among the weights: %s. The weights are: %s.'
            % (what, ', '.join(repr(n) for n in unknown[:5]),
               ', '.join(repr(n) for n in list(weights)[:5])
               + (', ...' if len(weights) > 5 else '')))
    if required:
        missing = [name for name in weights if values.get(name) is None]
        if missing:
            raise SurgeryValueError(
                '%s is missing for %s; give one for every weight.'
                % (what, ', '.join(repr(n) for n in missing[:5])))
    out = OrderedDict()
    for name, w in weights.items():
        value = values.get(name)
        # one entry of 'masks' is 'the mask'
        out[name] = None if value is None else _as_numeric(
            name, what[:-1] if what.endswith('s') else what, value, w.shape)
    return out


def check_masks(weights, masks):
    masks = check_per_name(weights, masks, 'masks')
    for name, mask in masks.items():
        if mask is not None and mask.dtype.kind == 'f' and np.isnan(mask).any():
            raise SurgeryValueError(
                "'%s': the existing mask has NaN entries; whether they are masked is "
                "undefined. Fix the mask first." % name)
    return masks


def unmasked_of(mask, shape) -> Optional[np.ndarray]:
    """Boolean array of ``shape`` (True = still a candidate), or None when nothing is masked."""
    if mask is None:
        return None
    return np.broadcast_to(mask, shape) != 0


# ---------------------------------------------------------------------------------------------
# Exact selection of the k lowest scores over one group of arrays
# ---------------------------------------------------------------------------------------------


def scope_groups(names, scope):
    """The groups ranked together: every name alone (``'layer'``) or all of them (``'global'``)."""
    return [list(names)] if scope == 'global' else [[name] for name in names]


def group_amounts(names, amount, scope):
    """``[(group, amount or None)]``: the groups of :func:`scope_groups` with the amount of
    each. ``amount`` is one amount for every group, or a dict name -> amount (each name its
    own, ``scope='layer'`` only; names left out are not pruned and not returned)."""
    check_scope(scope)
    if not isinstance(amount, Mapping):
        return [(group, amount) for group in scope_groups(names, scope)]
    if scope != 'layer':
        raise SurgeryValueError("a dict amount gives each parameter its own amount; it needs "
                                "scope='layer', got scope=%r." % (scope,))
    unknown = [name for name in amount if name not in names]
    if unknown:
        raise SurgeryValueError(
            'amount has names that are not among the selected weights: %s. The weights are: '
            '%s.' % (and_more(unknown, shown=3), and_more(list(names), shown=5)))
    return [([name], amount[name]) for name in names if name in amount]


def describe_group(group):
    if len(group) == 1:
        return "parameter '%s'" % group[0]
    return 'the %d selected parameters together' % len(group)


# ---------------------------------------------------------------------------------------------
# The core: new masks from arrays


def random_state(seed):
    """A numpy random state from ``None``, an int seed, or a RandomState/Generator (used as is)."""
    if seed is None or isinstance(seed, (np.random.RandomState, np.random.Generator)):
        return seed if seed is not None else np.random.RandomState()
    if not _is_int(seed):
        raise SurgeryTypeError('seed must be None, an int or a numpy RandomState/Generator, '
                               'got %s %r.' % (type(seed).__name__, seed))
    if not 0 <= seed < 2 ** 32:
        raise SurgeryValueError('seed=%d is out of range; use 0 <= seed < 2**32.' % seed)
    return np.random.RandomState(int(seed))

