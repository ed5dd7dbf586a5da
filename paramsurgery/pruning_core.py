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

The argument checks live in ``_amounts`` and the exact k-lowest selection in ``_ranking``;
this module holds the four mask functions.
"""
from collections import OrderedDict
from typing import Any, Dict, Mapping, Optional, Union

import numpy as np

from ._amounts import (
    check_masks,
    check_norm,
    check_per_name,
    check_scope,
    check_weights,
    describe_group,
    group_amounts,
    prune_count,
    random_state,
    unmasked_of,
)
from ._checks import is_int as _is_int
from ._ranking import Source, keep_lowest_pruned
from .errors import SurgeryTypeError, SurgeryValueError

__all__ = ['prune_count', 'magnitude_masks', 'random_masks', 'structured_masks',
           'custom_masks']

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
    weights = check_weights(weights)
    check_scope(scope)
    check_norm(norm)
    masks = check_masks(weights, masks)
    scores = check_per_name(weights, importance, 'importance', required=importance is not None)
    sources = OrderedDict(
        (name, Source(name, w, unmasked_of(masks[name], w.shape), scores[name], masks[name]))
        for name, w in weights.items())
    plan = []
    for group, one in group_amounts(weights, amount, scope):
        n = sum(sources[name].candidates for name in group)
        plan.append((group, prune_count(one, n, where=describe_group(group))))
    result = OrderedDict()
    for group, k in plan:
        keeps = keep_lowest_pruned([sources[name] for name in group], k)
        for name, keep in zip(group, keeps):
            result[name] = keep.reshape(weights[name].shape)
    return result



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
    weights = check_weights(weights)
    check_scope(scope)
    masks = check_masks(weights, masks)
    rng = random_state(seed)
    unmasked = OrderedDict((name, unmasked_of(masks[name], w.shape)) for name, w in weights.items())
    plan = []
    for group, one in group_amounts(weights, amount, scope):
        sizes = [weights[name].size if unmasked[name] is None
                 else int(np.count_nonzero(unmasked[name])) for name in group]
        plan.append((group, sizes, prune_count(one, sum(sizes), where=describe_group(group))))
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
    weights = check_weights(weights)
    p = check_norm(norm)
    if not _is_int(axis):
        raise SurgeryTypeError('axis must be an int, got %s %r.' % (type(axis).__name__, axis))
    masks = check_masks(weights, masks)
    plan = []
    for name, w in weights.items():
        if w.ndim == 0 or not -w.ndim <= axis < w.ndim:
            raise SurgeryValueError(
                "'%s' has shape %s: axis=%d is out of range (slices need an axis between %d "
                "and %d)." % (name, w.shape, axis, -w.ndim, w.ndim - 1))
        ax = axis % w.ndim
        unmasked = unmasked_of(masks[name], w.shape)
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
    weights = check_weights(weights)
    if not isinstance(new_masks, Mapping):
        raise SurgeryTypeError('new_masks must be a dict of name -> mask, got %s.'
                               % type(new_masks).__name__)
    given = check_per_name(weights, new_masks, 'new_masks', required=True)
    masks = check_masks(weights, masks)
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
            keep &= unmasked_of(masks[name], w.shape)
        result[name] = keep
    return result
