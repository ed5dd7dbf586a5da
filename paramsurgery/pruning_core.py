"""The pruning core: exact binary masks from magnitudes, scores, random draws or whole slices.

Pure numpy, as the core of ``torch.nn.utils.prune`` is pure tensor code: it computes new
masks from ``{name: weight}`` and ``{name: existing mask or None}`` (:func:`magnitude_masks`,
:func:`random_masks`, :func:`structured_masks`, :func:`custom_masks`, :func:`prune_count`)
and imports no MXNet, so it can be used (and tested) without it. The net-level functions in
:mod:`paramsurgery.pruning` read a net's weights, call it and apply the result with
``apply_mask(net, {name: mask}, combine='multiply')``.

Rules shared by every core function:

- Pruning acts on the *effective* weight ``weight * mask``. Entries whose existing mask is 0
  are already pruned: they are never revived and are not candidates, so a float ``amount`` is
  a fraction of the entries still unmasked.
- The count is exact: ``floor(amount * n + 0.5)`` entries for a float ``amount`` (``n`` being
  the candidates), ``amount`` entries for an int. Ties are broken by position, the lower flat
  (C order) index being pruned first; with ``scope='global'`` positions run through the
  weights in the order of the dict.
- The returned masks are boolean arrays of each weight's shape, True where the entry is kept
  after this pruning; entries that were already masked are False. Multiplying them into the
  existing masks (``combine='multiply'``) gives the pruned net.
- The inputs are never modified; invalid input raises before anything is computed.
"""
import math
import numbers
from collections import OrderedDict
from typing import Any, Dict, List, Mapping, Optional, Union

import numpy as np

from ._checks import is_int as _is_int
from ._checks import is_real as _is_real
from .errors import SurgeryTypeError, SurgeryValueError, and_more

__all__ = ['prune_count', 'magnitude_masks', 'random_masks', 'structured_masks',
           'custom_masks']

# Elements per block when recomputing scores to build the masks: small enough for the block
# to stay in cache, large enough that the Python loop costs nothing next to the arithmetic.
_BLOCK = 1 << 16

_SCOPES = ('layer', 'global')


# ---------------------------------------------------------------------------------------------
# Validation of arguments
# ---------------------------------------------------------------------------------------------

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
    value = _check_amount(amount, what=what, where=where, n=n)
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


def _check_amount(amount: Any, *, what: str = 'entries', where: str = '',
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


def _check_norm(norm):
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


def _check_weights(weights) -> 'OrderedDict[str, np.ndarray]':
    if not isinstance(weights, Mapping):
        raise SurgeryTypeError('weights must be a dict of name -> numpy array, got %s.'
                               % type(weights).__name__)
    if not weights:
        raise SurgeryValueError('weights is empty: there is nothing to prune.')
    return OrderedDict((name, _as_numeric(name, 'weight', w)) for name, w in weights.items())


def _check_per_name(weights, values, what, *, required=False):
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


def _check_masks(weights, masks):
    masks = _check_per_name(weights, masks, 'masks')
    for name, mask in masks.items():
        if mask is not None and mask.dtype.kind == 'f' and np.isnan(mask).any():
            raise SurgeryValueError(
                "'%s': the existing mask has NaN entries; whether they are masked is "
                "undefined. Fix the mask first." % name)
    return masks


def _unmasked(mask, shape) -> Optional[np.ndarray]:
    """Boolean array of ``shape`` (True = still a candidate), or None when nothing is masked."""
    if mask is None:
        return None
    return np.broadcast_to(mask, shape) != 0


# ---------------------------------------------------------------------------------------------
# Exact selection of the k lowest scores over one group of arrays
# ---------------------------------------------------------------------------------------------

class _Source:
    """One weight as the selection sees it: its scores, computed block by block."""

    def __init__(self, name, weight, unmasked, scores, mask):
        self.name = name
        self.shape = weight.shape
        self.size = weight.size
        # Flat views (copies only when the input was not contiguous).
        self.weight = weight.reshape(-1)
        self.scores = None if scores is None else np.broadcast_to(scores, weight.shape) \
            .reshape(-1)
        self.mask = None if mask is None else np.broadcast_to(mask, weight.shape).reshape(-1)
        self.unmasked = None if unmasked is None else unmasked.reshape(-1)
        self.candidates = self.size if unmasked is None else int(np.count_nonzero(unmasked))

    def score(self, lo, hi, out):
        """|score| of flat entries [lo, hi) written into ``out`` (the ranking dtype)."""
        # dtype= makes the ranking dtype the loop's dtype, so integers cannot overflow in abs.
        if self.scores is not None:
            np.abs(self.scores[lo:hi], out=out, dtype=out.dtype)
        elif self.mask is not None:
            # The effective weight, rounded as the forward computes it, then its magnitude.
            np.abs(self.weight[lo:hi] * self.mask[lo:hi], out=out, dtype=out.dtype)
        else:
            np.abs(self.weight[lo:hi], out=out, dtype=out.dtype)
        return out

    def nan_message(self, dtype):
        """Describe the NaN candidates, or return None when there are none."""
        nan = np.isnan(self.score(0, self.size, np.empty(self.size, dtype)))
        if self.unmasked is not None:
            nan &= self.unmasked
        bad = int(np.count_nonzero(nan))
        if not bad:
            return None
        what = 'importance scores' if self.scores is not None else 'weights'
        return "'%s': the %s have %d NaN entr%s among the unmasked ones" % (
            self.name, what, bad, 'y' if bad == 1 else 'ies')


def _ranking_dtype(sources):
    kinds = []
    for src in sources:
        arr = src.scores if src.scores is not None else src.weight
        dtype = arr.dtype
        if src.scores is None and src.mask is not None:
            dtype = np.result_type(dtype, src.mask.dtype)
        # Integers and bools are ranked as float64, which holds every int32 exactly.
        kinds.append(dtype if dtype.kind == 'f' else np.dtype(np.float64))
    return np.result_type(*kinds)


def _keep_lowest_pruned(sources, k) -> List[np.ndarray]:
    """Flat boolean keep-arrays for ``sources`` pruning exactly the ``k`` candidates with the
    smallest scores over the whole group, ties pruned lowest position first.

    One selection pass: the candidates' scores are gathered into one buffer and
    ``ndarray.partition`` finds the k-th smallest score ``t`` in place (no sort). Every entry
    scoring above ``t`` is kept; of the entries equal to ``t``, the ones not needed to reach
    ``k`` are kept too, taken from the highest positions, so that exactly ``k`` are pruned.
    """
    dtype = _ranking_dtype(sources)
    total = sum(src.candidates for src in sources)
    buf = np.empty(total, dtype=dtype)
    offset = 0
    for src in sources:
        part = buf[offset:offset + src.candidates]
        if src.unmasked is None:
            src.score(0, src.size, part)
        else:
            part[...] = src.score(0, src.size, np.empty(src.size, dtype))[src.unmasked]
        offset += src.candidates

    if k > 0:
        buf.partition(k - 1)
        threshold = buf[k - 1]
        # NaN ranks above every number in numpy's partition, so any NaN sits at or after k-1.
        tail = buf[k - 1:]
    else:
        threshold = None
        tail = buf
    if dtype.kind == 'f' and np.isnan(tail).any():
        problems = [msg for msg in (src.nan_message(dtype) for src in sources) if msg]
        raise SurgeryValueError(
            '%s; the magnitude ranking is undefined. Replace the NaNs first (e.g. with '
            'ps.set_params), or choose the entries yourself with a custom mask.'
            % '; '.join(problems))
    del buf, tail

    keeps = []
    if threshold is None:
        for src in sources:
            keeps.append(np.ones(src.size, bool) if src.unmasked is None
                         else src.unmasked.copy())
        return keeps

    threshold = np.asarray(threshold, dtype=dtype)
    block = np.empty(min(_BLOCK, max(src.size for src in sources)), dtype)
    kept = 0
    for src in sources:
        keep = np.empty(src.size, bool)
        for lo in range(0, src.size, _BLOCK):
            hi = min(lo + _BLOCK, src.size)
            np.greater(src.score(lo, hi, block[:hi - lo]), threshold, out=keep[lo:hi])
        if src.unmasked is not None:
            keep &= src.unmasked
        kept += int(np.count_nonzero(keep))
        keeps.append(keep)

    # At least k candidates score <= t; the surplus are ties at t that stay, the last ones.
    surplus = total - kept - k
    for src, keep in zip(reversed(sources), reversed(keeps)):
        if surplus == 0:
            break
        tied = src.score(0, src.size, np.empty(src.size, dtype)) == threshold
        if src.unmasked is not None:
            tied &= src.unmasked
        positions = np.flatnonzero(tied)
        take = min(surplus, positions.size)
        if take:
            keep[positions[positions.size - take:]] = True
            surplus -= take
    return keeps


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


def _where(group):
    if len(group) == 1:
        return "parameter '%s'" % group[0]
    return 'the %d selected parameters together' % len(group)


# ---------------------------------------------------------------------------------------------
# The core: new masks from arrays
# ---------------------------------------------------------------------------------------------

def magnitude_masks(weights: Mapping[str, np.ndarray], amount: Union[int, float], *,
                    masks: Optional[Mapping[str, Optional[np.ndarray]]] = None,
                    scope: str = 'layer', norm: float = 1,
                    importance: Optional[Mapping[str, np.ndarray]] = None
                    ) -> Dict[str, np.ndarray]:
    """Masks pruning the entries of smallest magnitude (L1-unstructured pruning).

    Parameters
    ----------
    weights : dict of str -> numpy.ndarray
        The stored weights.
    amount : int or float or dict of str -> (int or float)
        A float in [0, 1] is the fraction of the still-unmasked entries to prune (of each
        weight with ``scope='layer'``, of all of them together with ``scope='global'``);
        an int >= 0 is a count. See :func:`prune_count`. A dict gives each weight its own
        amount (``scope='layer'``; weights left out are not pruned, and not in the result),
        e.g. a :meth:`SensitivityReport.plan`.
    masks : dict of str -> numpy.ndarray or None, default None
        Existing masks (missing names or None: no mask). Entries where the mask is 0 are
        already pruned: they stay pruned and are not candidates; the others are ranked by
        the magnitude of the effective weight ``weight * mask``.
    scope : {'layer', 'global'}, default 'layer'
        'layer' prunes ``amount`` of each weight separately; 'global' ranks all the weights
        together and prunes exactly ``amount`` of their union.
    norm : float, default 1
        The p of the Lp norm. The norm of a single entry is ``|w|`` for every p, so it does
        not change the ranking; it is validated (> 0 or ``numpy.inf``) and kept for symmetry
        with :func:`structured_masks`.
    importance : dict of str -> numpy.ndarray, default None
        Scores to rank by instead of the weights (one per weight, broadcastable to its
        shape): the entries of smallest ``|score|`` are pruned. Masked entries are still
        never candidates.

    Returns
    -------
    dict of str -> numpy.ndarray of bool
        For each weight, in the order of ``weights``: True where the entry is kept.

    Raises
    ------
    SurgeryTypeError, SurgeryValueError
        For a bad ``amount`` (see :func:`prune_count`), ``scope`` or ``norm``, arrays that
        are not numeric or do not match the weights' shapes, names that are not among the
        weights, and NaN among the candidates' scores.

    Examples
    --------
    >>> import numpy as np, paramsurgery as ps
    >>> w = {'a': np.array([0.5, -0.1, 0.3, 0.2]), 'b': np.array([[0.05, -0.9], [0.4, 0.01]])}
    >>> ps.magnitude_masks(w, 0.5)['a']
    array([ True, False,  True, False])
    >>> m = ps.magnitude_masks(w, 3, scope='global')
    >>> m['a'], m['b']
    (array([ True, False,  True,  True]), array([[False,  True],
           [ True, False]]))

    Ties are pruned lowest index first, and masked entries are not candidates:

    >>> ps.magnitude_masks({'c': np.ones(4)}, 0.5, masks={'c': np.array([0, 1, 1, 1])})['c']
    array([False, False, False,  True])
    """
    weights = _check_weights(weights)
    check_scope(scope)
    _check_norm(norm)
    masks = _check_masks(weights, masks)
    scores = _check_per_name(weights, importance, 'importance', required=importance is not None)
    sources = OrderedDict(
        (name, _Source(name, w, _unmasked(masks[name], w.shape), scores[name], masks[name]))
        for name, w in weights.items())
    plan = []
    for group, one in group_amounts(weights, amount, scope):
        n = sum(sources[name].candidates for name in group)
        plan.append((group, prune_count(one, n, where=_where(group))))
    result = OrderedDict()
    for group, k in plan:
        keeps = _keep_lowest_pruned([sources[name] for name in group], k)
        for name, keep in zip(group, keeps):
            result[name] = keep.reshape(weights[name].shape)
    return result


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


def random_masks(weights: Mapping[str, np.ndarray], amount: Union[int, float], *,
                 masks: Optional[Mapping[str, Optional[np.ndarray]]] = None,
                 scope: str = 'layer', seed: Any = None) -> Dict[str, np.ndarray]:
    """Masks pruning entries drawn uniformly at random among the still-unmasked ones.

    Parameters
    ----------
    weights : dict of str -> numpy.ndarray
        The weights (only their shapes matter).
    amount : int or float
        As in :func:`magnitude_masks`.
    masks : dict of str -> numpy.ndarray or None, default None
        Existing masks; entries where they are 0 are never drawn.
    scope : {'layer', 'global'}, default 'layer'
        'layer' draws ``amount`` of each weight; 'global' draws exactly ``amount`` of the
        union (so each weight loses a random share).
    seed : int or numpy.random.RandomState or numpy.random.Generator, default None
        The same int gives the same masks; None draws fresh entropy. The global numpy random
        state is neither used nor changed.

    Returns
    -------
    dict of str -> numpy.ndarray of bool
        True where the entry is kept.

    Examples
    --------
    >>> import numpy as np, paramsurgery as ps
    >>> w = {'a': np.zeros((4, 5))}
    >>> m = ps.random_masks(w, 0.25, seed=0)['a']
    >>> int((~m).sum()), bool((m == ps.random_masks(w, 0.25, seed=0)['a']).all())
    (5, True)
    """
    weights = _check_weights(weights)
    check_scope(scope)
    masks = _check_masks(weights, masks)
    rng = random_state(seed)
    unmasked = OrderedDict((name, _unmasked(masks[name], w.shape)) for name, w in weights.items())
    plan = []
    for group, one in group_amounts(weights, amount, scope):
        sizes = [weights[name].size if unmasked[name] is None
                 else int(np.count_nonzero(unmasked[name])) for name in group]
        plan.append((group, sizes, prune_count(one, sum(sizes), where=_where(group))))
    result = OrderedDict()
    for group, sizes, k in plan:
        drawn = np.sort(rng.choice(sum(sizes), size=k, replace=False)) if k else \
            np.empty(0, np.int64)
        bounds = np.cumsum([0] + sizes)
        for i, name in enumerate(group):
            shape = weights[name].shape
            keep = np.ones(shape, bool) if unmasked[name] is None else unmasked[name].copy()
            mine = drawn[np.searchsorted(drawn, bounds[i]):np.searchsorted(drawn, bounds[i + 1])]
            mine = mine - bounds[i]
            if unmasked[name] is not None:
                mine = np.flatnonzero(unmasked[name])[mine]
            keep.reshape(-1)[mine] = False
            result[name] = keep
    return result


def structured_masks(weights: Mapping[str, np.ndarray], amount: Union[int, float], *,
                     masks: Optional[Mapping[str, Optional[np.ndarray]]] = None,
                     axis: int = 0, norm: float = 2) -> Dict[str, np.ndarray]:
    """Masks pruning whole slices along ``axis`` (e.g. output filters), smallest norm first.

    Parameters
    ----------
    weights : dict of str -> numpy.ndarray
        The weights; each needs at least one dimension.
    amount : int or float
        Counts slices: a float in [0, 1] is the fraction of the slices that still have an
        unmasked entry, an int >= 0 a number of slices (per weight).
    masks : dict of str -> numpy.ndarray or None, default None
        Existing masks. A slice whose entries are all masked is already pruned and not a
        candidate; the others are ranked by the norm of their effective weight
        ``weight * mask``.
    axis : int, default 0
        The axis the slices are taken along: 0 prunes output channels of a Conv/Dense
        weight (its rows), 1 prunes input channels. Negative values count from the end.
    norm : float, default 2
        The p of the Lp norm of a slice (> 0, or ``numpy.inf`` for the largest magnitude).
        Ties are pruned lowest slice index first.

    Returns
    -------
    dict of str -> numpy.ndarray of bool
        True where the entry is kept; a pruned slice is False throughout.

    Examples
    --------
    >>> import numpy as np, paramsurgery as ps
    >>> w = {'fc': np.array([[3., 4.], [1., 1.], [0., 2.]])}
    >>> ps.structured_masks(w, 1)['fc']
    array([[ True,  True],
           [False, False],
           [ True,  True]])
    >>> ps.structured_masks(w, 0.5, axis=1, norm=1)['fc']
    array([[False,  True],
           [False,  True],
           [False,  True]])
    """
    weights = _check_weights(weights)
    p = _check_norm(norm)
    if not _is_int(axis):
        raise SurgeryTypeError('axis must be an int, got %s %r.' % (type(axis).__name__, axis))
    masks = _check_masks(weights, masks)
    plan = []
    for name, w in weights.items():
        if w.ndim == 0 or not -w.ndim <= axis < w.ndim:
            raise SurgeryValueError(
                "'%s' has shape %s: axis=%d is out of range (slices need an axis between %d "
                "and %d)." % (name, w.shape, axis, -w.ndim, w.ndim - 1))
        ax = axis % w.ndim
        unmasked = _unmasked(masks[name], w.shape)
        effective = w if masks[name] is None else w * masks[name]
        if effective.dtype.itemsize < 4 or effective.dtype.kind != 'f':
            effective = effective.astype(np.float64)
        rows = np.moveaxis(effective, ax, 0).reshape(w.shape[ax], -1)
        if unmasked is None:
            alive = np.full(w.shape[ax], rows.shape[1] > 0)
        else:
            alive = np.moveaxis(unmasked, ax, 0).reshape(w.shape[ax], -1).any(axis=1)
        norms = np.linalg.norm(rows, ord=p, axis=1) if rows.size else np.zeros(len(rows))
        candidates = np.flatnonzero(alive)
        if np.isnan(norms[candidates]).any():
            raise SurgeryValueError(
                "'%s': %d slice(s) along axis %d have a NaN norm (NaN weights); the ranking "
                "is undefined. Replace the NaNs first." % (name, int(np.isnan(
                    norms[candidates]).sum()), ax))
        k = prune_count(amount, candidates.size, what='slices',
                        where="parameter '%s' along axis %d" % (name, ax))
        plan.append((name, ax, unmasked, norms, candidates, k))
    result = OrderedDict()
    for name, ax, unmasked, norms, candidates, k in plan:
        # A stable sort keeps equal norms in index order: ties go lowest slice first.
        pruned = candidates[np.argsort(norms[candidates], kind='stable')[:k]]
        shape = weights[name].shape
        keep = np.ones(shape, bool) if unmasked is None else unmasked.copy()
        np.moveaxis(keep, ax, 0)[pruned] = False
        result[name] = keep
    return result


def custom_masks(weights: Mapping[str, np.ndarray], new_masks: Mapping[str, Any], *,
                 masks: Optional[Mapping[str, Optional[np.ndarray]]] = None
                 ) -> Dict[str, np.ndarray]:
    """Validate user-chosen binary masks and combine them with the existing ones.

    Parameters
    ----------
    weights : dict of str -> numpy.ndarray
        The weights (only their shapes matter).
    new_masks : dict of str -> numpy.ndarray or number
        One binary mask (0 = prune, 1 = keep; bool, int or float) per weight,
        broadcastable to its shape (e.g. ``(out, 1, 1, 1)`` for whole filters).
    masks : dict of str -> numpy.ndarray or None, default None
        Existing masks; entries already masked stay masked.

    Returns
    -------
    dict of str -> numpy.ndarray of bool
        True where the entry is kept (unmasked before and 1 in the new mask).

    Raises
    ------
    SurgeryValueError
        When a new mask is missing, has values other than 0 and 1 (scale with
        ``ps.apply_mask`` instead) or does not broadcast to its weight's shape.

    Examples
    --------
    >>> import numpy as np, paramsurgery as ps
    >>> w = {'fc': np.ones((2, 3))}
    >>> ps.custom_masks(w, {'fc': np.array([[1], [0]])})['fc']
    array([[ True,  True,  True],
           [False, False, False]])
    """
    weights = _check_weights(weights)
    if not isinstance(new_masks, Mapping):
        raise SurgeryTypeError('new_masks must be a dict of name -> mask, got %s.'
                               % type(new_masks).__name__)
    given = _check_per_name(weights, new_masks, 'new_masks', required=True)
    masks = _check_masks(weights, masks)
    for name, mask in given.items():
        if mask.dtype.kind != 'b':
            bad = ~((mask == 0) | (mask == 1))
            if bad.any():
                raise SurgeryValueError(
                    "'%s': a pruning mask must be binary (0 = prune, 1 = keep) but %d entr%s "
                    "other values, e.g. %r. To scale a weight use ps.apply_mask instead."
                    % (name, int(bad.sum()), 'y has' if bad.sum() == 1 else 'ies have',
                       mask[bad].flat[0].item()))
    result = OrderedDict()
    for name, w in weights.items():
        keep = np.broadcast_to(given[name] != 0, w.shape).copy()
        if masks[name] is not None:
            keep &= _unmasked(masks[name], w.shape)
        result[name] = keep
    return result
