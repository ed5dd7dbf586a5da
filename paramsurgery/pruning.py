"""Pruning a net: read the selected weights, compute exact masks with the numpy core
(:mod:`paramsurgery.pruning_core`), apply them with ``apply_mask(..., combine='multiply')``;
and :class:`Pruner`, which does it on a schedule (:mod:`paramsurgery.schedules`).
"""
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

import numpy as np

from . import _mx
from ._amounts import check_scope, count_to_reach, random_state, scope_groups
from ._checks import check_flag
from ._checks import is_int as _is_int
from ._checks import is_real as _is_real
from .access import data_on, replicas
from .errors import SurgeryTypeError, SurgeryValueError
from .masks.apply import apply_core_masks
from .masks.modes import check_mode
from .pruning_core import custom_masks, magnitude_masks, random_masks, structured_masks
from .schedules import Schedule
from .select import MASK_SUFFIX, all_params, select, unmasked

__all__ = ['prune_magnitude', 'prune_random', 'prune_structured', 'prune_custom', 'Pruner']


def _read(net, key):
    """Selected parameters (masks themselves never selected), their first-context weights and
    existing masks as (read-only) numpy arrays."""
    everything = all_params(net)   # (once: each collect_params() walks every block)
    params = select(unmasked(everything), key)
    weights = OrderedDict((name, _mx.host_array(replicas(p)[0][1])) for name, p in params.items())
    existing = {}
    for name in params:
        mask = everything.get(name + MASK_SUFFIX)
        if mask is not None:
            existing[name] = _mx.host_array(data_on(mask, replicas(params[name])[0][0]))
    return params, weights, existing


def _apply(net, params, keeps, mode):
    # The core's masks are exact and binary: applied without another validation pass.
    return apply_core_masks(net, OrderedDict(keeps), mode)


def prune_magnitude(net, key, amount: Union[int, float], *, scope: str = 'layer',
                    norm: float = 1, importance: Optional[Mapping[str, Any]] = None,
                    mode: str = 'graph') -> List[str]:
    """Mask the entries of smallest magnitude of the selected parameters.

    The effective weights ``weight * mask`` are read from the first context, the masks
    computed exactly by :func:`magnitude_masks` and multiplied into the existing masks with
    :func:`apply_mask` (``combine='multiply'``: a pruned entry is never revived), on every
    context. Entries already masked are not candidates, so a float ``amount`` is a fraction
    of what is still unmasked.

    Parameters
    ----------
    net : Block
        The network.
    key : str or Parameter or list or callable
        Which parameters (see :func:`select`; masks are never selected).
    amount : int or float or dict of str -> (int or float)
        A float in [0, 1]: the fraction of the still-unmasked entries to prune,
        ``floor(amount * n + 0.5)`` of them; an int >= 0: a count. A dict gives each
        selected parameter its own amount (``scope='layer'``; parameters left out are not
        pruned), such as a :meth:`SensitivityReport.plan`.
    scope : {'layer', 'global'}, default 'layer'
        ``'layer'`` prunes ``amount`` of each parameter; ``'global'`` ranks all selected
        parameters together and prunes exactly ``amount`` of their union.
    norm : float, default 1
        The p of the Lp norm (> 0 or ``numpy.inf``); for single entries every p ranks alike.
    importance : dict of str -> numpy.ndarray or NDArray, default None
        Scores to rank by instead of the weights (one per selected parameter, broadcastable
        to its shape): the entries of smallest ``|score|`` are pruned.

    mode : {'graph', 'update'}, default 'graph'
        Where the masks act (see :func:`apply_mask`): in the forward graph, or in the stored
        weights, which the Trainer keeps at zero under the masks (binary masks, the dense
        graph, the lowest cost). A parameter masked in the other mode switches to this one.

    Returns
    -------
    list of str
        The names of the parameters masked.

    Raises
    ------
    SelectionError
        ``key`` selects nothing.
    SurgeryTypeError, SurgeryValueError
        A bad ``amount`` (docs/pruning.md#how-much-amount: ``bool``, NaN, negative, a float
        above 1, a count above the entries left), bad options, or a parameter that cannot
        take a mask (see :func:`apply_mask`).
    ParameterStateError
        A selected parameter is not initialised yet (run one forward first).

    On any error nothing has changed.

    Examples
    --------
    >>> import mxnet as mx, numpy as np, paramsurgery as ps
    >>> from mxnet.gluon import nn
    >>> net = nn.Dense(2, in_units=4, use_bias=False, prefix='fc_')
    >>> net.initialize()
    >>> net.weight.set_data(mx.nd.array([[0.1, -0.5, 0.2, 0.9], [0.3, 0.05, -0.7, 0.4]]))
    >>> ps.prune_magnitude(net, '.*weight', 0.5)
    ['fc_weight']
    >>> ps.get_mask(net, 'fc_weight')['fc_weight'].asnumpy().tolist()
    [[0.0, 1.0, 0.0, 1.0], [0.0, 0.0, 1.0, 1.0]]
    >>> ps.prune_magnitude(net, '.*weight', 1.5)
    Traceback (most recent call last):
    ...
    paramsurgery.errors.SurgeryValueError: amount=1.5 is a float above 1; ...
    """
    check_mode(mode)
    params, weights, existing = _read(net, key)
    if isinstance(importance, Mapping):
        importance = {name: _mx.to_host(s) if hasattr(s, 'asnumpy') else s
                      for name, s in importance.items()}
    keeps = magnitude_masks(weights, amount, masks=existing, scope=scope, norm=norm,
                            importance=importance)
    return _apply(net, params, keeps, mode)


def prune_random(net, key, amount: Union[int, float], *, seed: Any = None,
                 mode: str = 'graph') -> List[str]:
    """Mask entries drawn at random among the still-unmasked ones of each selected parameter.

    Exactly ``floor(amount * n + 0.5)`` of the ``n`` unmasked entries of each parameter (or
    ``amount`` of them for an int) are masked, drawn by :func:`random_masks` and applied
    with :func:`apply_mask` (``combine='multiply'``) on every context.

    Parameters
    ----------
    net : Block
        The network.
    key : str or Parameter or list or callable
        Which parameters (see :func:`select`; masks are never selected).
    amount : int or float
        A float in [0, 1]: the fraction of the still-unmasked entries; an int >= 0: a count.
    seed : int or numpy.random.RandomState or numpy.random.Generator, default None
        The draw: an int in ``[0, 2**32)`` gives the same masks every time; a random state
        is used (and advanced) as it is; None draws from fresh entropy. With several
        workers (``dist_sync``), pass the same int on every worker, or broadcast the masks
        afterwards with :func:`broadcast_masks`.

    mode : {'graph', 'update'}, default 'graph'
        Where the masks act (see :func:`apply_mask`): in the forward graph, or in the stored
        weights, which the Trainer keeps at zero under the masks (binary masks, the dense
        graph, the lowest cost). A parameter masked in the other mode switches to this one.

    Returns
    -------
    list of str
        The names of the parameters masked.

    Raises
    ------
    SelectionError
        ``key`` selects nothing.
    SurgeryTypeError, SurgeryValueError
        A bad ``amount`` (docs/pruning.md#how-much-amount: ``bool``, NaN, negative, a float
        above 1, a count above the entries left), bad options, or a parameter that cannot
        take a mask (see :func:`apply_mask`).
    ParameterStateError
        A selected parameter is not initialised yet (run one forward first).

    On any error nothing has changed.

    Examples
    --------
    >>> import mxnet as mx, paramsurgery as ps
    >>> from mxnet.gluon import nn
    >>> net = nn.Dense(4, in_units=5, prefix='fc_')
    >>> net.initialize(ctx=[mx.cpu(0), mx.cpu(1)])
    >>> ps.prune_random(net, 'fc_weight', 0.25, seed=7)
    ['fc_weight']
    >>> [int(m.sum().asscalar()) for m in net.collect_params()['fc_weight_mask'].list_data()]
    [15, 15]
    """
    check_mode(mode)
    params, weights, existing = _read(net, key)
    return _apply(net, params, random_masks(weights, amount, masks=existing, seed=seed), mode)


def prune_structured(net, key, amount: Union[int, float], *, axis: int = 0, norm: float = 2,
                     mode: str = 'graph') -> List[str]:
    """Mask whole slices along ``axis`` of the selected parameters, smallest Lp norm first.

    For ``axis=0`` the slices are the output filters (rows) of a Conv or Dense weight. The
    norms are those of the effective weight; slices already fully masked are not
    candidates, so a float ``amount`` is a fraction of the slices still alive. Masks come
    from :func:`structured_masks` and are applied with :func:`apply_mask`
    (``combine='multiply'``) on every context. The shapes do not change.

    Parameters
    ----------
    net : Block
        The network.
    key : str or Parameter or list or callable
        Which parameters (see :func:`select`; masks are never selected).
    amount : int or float
        A float in [0, 1]: the fraction of the live slices of each parameter; an int >= 0:
        a count of slices.
    axis : int, default 0
        The axis the slices are taken along (negative values count from the end).
    norm : float, default 2
        The p of the Lp norm of each slice (> 0 or ``numpy.inf``).

    mode : {'graph', 'update'}, default 'graph'
        Where the masks act (see :func:`apply_mask`): in the forward graph, or in the stored
        weights, which the Trainer keeps at zero under the masks (binary masks, the dense
        graph, the lowest cost). A parameter masked in the other mode switches to this one.

    Returns
    -------
    list of str
        The names of the parameters masked.

    Raises
    ------
    SelectionError
        ``key`` selects nothing.
    SurgeryTypeError, SurgeryValueError
        A bad ``amount`` (docs/pruning.md#how-much-amount: ``bool``, NaN, negative, a float
        above 1, a count above the entries left), bad options, or a parameter that cannot
        take a mask (see :func:`apply_mask`).
    ParameterStateError
        A selected parameter is not initialised yet (run one forward first).

    On any error nothing has changed.

    Examples
    --------
    >>> import mxnet as mx, paramsurgery as ps
    >>> from mxnet.gluon import nn
    >>> net = nn.Dense(3, in_units=2, use_bias=False, prefix='fc_')
    >>> net.initialize()
    >>> net.weight.set_data(mx.nd.array([[1, 1], [0.1, 0.2], [3, 0]]))
    >>> ps.prune_structured(net, 'fc_weight', 1)
    ['fc_weight']
    >>> ps.get_mask(net, 'fc_weight')['fc_weight'].asnumpy().tolist()
    [[1.0, 1.0], [0.0, 0.0], [1.0, 1.0]]
    """
    check_mode(mode)
    params, weights, existing = _read(net, key)
    return _apply(net, params, structured_masks(weights, amount, masks=existing, axis=axis,
                                                norm=norm), mode)


def prune_custom(net, key, mask: Any, *, mode: str = 'graph') -> List[str]:
    """Mask the selected parameters with binary masks you computed.

    Each mask (True/1 keeps an entry, False/0 prunes it) is checked by :func:`custom_masks`
    and multiplied into the existing mask with :func:`apply_mask` (``combine='multiply'``),
    so an entry pruned before stays pruned.

    Parameters
    ----------
    net : Block
        The network.
    key : str or Parameter or list or callable
        Which parameters (see :func:`select`; masks are never selected).
    mask : numpy.ndarray or NDArray or dict of str -> array
        One array (broadcast to every selected parameter's shape) or a dict from parameter
        name to array, with an entry for every selected parameter; values must be 0 or 1.

    mode : {'graph', 'update'}, default 'graph'
        Where the masks act (see :func:`apply_mask`): in the forward graph, or in the stored
        weights, which the Trainer keeps at zero under the masks (binary masks, the dense
        graph, the lowest cost). A parameter masked in the other mode switches to this one.

    Returns
    -------
    list of str
        The names of the parameters masked.

    Raises
    ------
    SelectionError
        ``key`` selects nothing.
    SurgeryTypeError, SurgeryValueError
        A bad ``amount`` (docs/pruning.md#how-much-amount: ``bool``, NaN, negative, a float
        above 1, a count above the entries left), bad options, or a parameter that cannot
        take a mask (see :func:`apply_mask`).
    ParameterStateError
        A selected parameter is not initialised yet (run one forward first).

    On any error nothing has changed.

    Examples
    --------
    >>> import numpy as np, paramsurgery as ps
    >>> from mxnet.gluon import nn
    >>> net = nn.Dense(2, in_units=3, prefix='fc_')
    >>> net.initialize()
    >>> ps.prune_custom(net, 'fc_weight', np.array([1, 0, 1]))
    ['fc_weight']
    >>> ps.get_mask(net, 'fc_weight')['fc_weight'].asnumpy().tolist()
    [[1.0, 0.0, 1.0], [1.0, 0.0, 1.0]]
    """
    check_mode(mode)
    params, weights, existing = _read(net, key)
    if isinstance(mask, Mapping):
        given = dict(mask)
    else:
        given = {name: mask for name in weights}
    given = {name: _mx.to_host(m) if hasattr(m, 'asnumpy') else m for name, m in given.items()}
    return _apply(net, params, custom_masks(weights, given, masks=existing), mode)


_METHODS = ('magnitude', 'random', 'structured')
_STATE_FIELDS = ('last_step', 'pruned_steps', 'method', 'scope', 'schedule', 'mode')


def _check_state(state):
    """Every field of a :meth:`Pruner.state_dict`, with its type and value, or a typed error
    naming the field: nothing is restored from a damaged state."""
    # 'mode' is optional: states saved before masks had modes are graph mode
    missing = [f for f in _STATE_FIELDS if f not in state and f != 'mode']
    extra = [f for f in state if f not in _STATE_FIELDS]
    if missing or extra:
        raise SurgeryValueError(
            'state must have exactly the fields %s of Pruner.state_dict(); %s.'
            % (', '.join(_STATE_FIELDS), '; '.join(
                part for part in ('missing: %s' % ', '.join(map(str, missing)) if missing
                                  else '', 'unknown: %s' % ', '.join(map(repr, extra)) if extra
                                  else '') if part)))
    last = state['last_step']
    if last is not None and not _is_int(last):
        raise SurgeryTypeError("state['last_step'] must be an int or None, got %s %r."
                               % (type(last).__name__, last))
    steps = state['pruned_steps']
    if not isinstance(steps, (list, tuple)) or not all(_is_int(s) for s in steps):
        raise SurgeryTypeError("state['pruned_steps'] must be a list of ints, got %r." % (steps,))
    if steps and last is None:
        raise SurgeryValueError("state has pruned_steps %r but last_step None: a Pruner that "
                                "pruned has stepped." % (list(steps),))
    for field in ('method', 'scope', 'mode'):
        if field in state and not isinstance(state[field], str):
            raise SurgeryTypeError("state[%r] must be a str, got %r." % (field, state[field]))
    if state['schedule'] is not None and not isinstance(state['schedule'], str):
        raise SurgeryTypeError("state['schedule'] must be a str or None, got %r."
                               % (state['schedule'],))


class Pruner:
    """Gradual pruning driven by a schedule, called once per training step.

    ``step(step)`` asks ``schedule(step)``; when it says to prune, the selected effective
    weights are brought to exactly the scheduled sparsity (per parameter with
    ``scope='layer'``, over their union with ``scope='global'``), through the pruning
    functions of this module, so masks only ever tighten. With ``method='random'`` the
    sparsity counts masked entries, with ``method='structured'`` masked slices along axis 0.

    Parameters
    ----------
    net : Block
        The network.
    key : str or Parameter or list or callable
        Which parameters (see :func:`select`); checked now.
    schedule : callable
        ``schedule(step) -> (prune_now, sparsity)``, e.g. :class:`PolynomialDecay` or
        :class:`ConstantSparsity`.
    method : {'magnitude', 'random', 'structured'}, default 'magnitude'
        How entries are chosen (see :func:`prune_magnitude`, :func:`prune_random`,
        :func:`prune_structured`).
    scope : {'layer', 'global'}, default 'layer'
        Rank each parameter alone, or all of them together (not with ``'structured'``).
    seed : int or numpy.random.RandomState or numpy.random.Generator, default None
        For ``method='random'``: the random state of every draw this Pruner makes (an int
        makes the whole run reproducible); ignored by the other methods.

    mode : {'graph', 'update'}, default 'graph'
        Where the masks act (see :func:`apply_mask`; ``Pruner(mode='update')`` prunes with the
        dense graph): in the forward graph, or in the stored
        weights, which the Trainer keeps at zero under the masks (binary masks, the dense
        graph, the lowest cost). A parameter masked in the other mode switches to this one.

    Attributes
    ----------
    last_step : int or None
        The last step passed to :meth:`step`.
    pruned_steps : list of int
        The steps at which it pruned.

    Raises
    ------
    SurgeryTypeError, SurgeryValueError, SelectionError
        For a schedule that is not callable, an unknown method or scope, or a key that
        selects nothing.

    Examples
    --------
    >>> import mxnet as mx, paramsurgery as ps
    >>> from mxnet.gluon import nn
    >>> net = nn.Dense(10, in_units=10, prefix='fc_')
    >>> net.initialize()
    >>> pruner = ps.Pruner(net, 'fc_weight', ps.PolynomialDecay(0.0, 0.8, begin=0, end=4,
    ...                                                         frequency=2))
    >>> [pruner.step(step) for step in range(5)]
    [True, False, True, False, True]
    >>> ps.sparsity_report(net, 'fc_weight').rows[0]['sparsity']
    0.8
    >>> pruner.state_dict()['pruned_steps']
    [0, 2, 4]
    """

    def __init__(self, net, key, schedule: Callable[[int], Tuple[bool, float]], *,
                 method: str = 'magnitude', scope: str = 'layer', seed: Any = None,
                 mode: str = 'graph'):
        if not callable(schedule):
            raise SurgeryTypeError('schedule must be a callable step -> (prune_now, sparsity),'
                                   ' e.g. ps.PolynomialDecay(...), got %s.'
                                   % type(schedule).__name__)
        if method not in _METHODS:
            raise SurgeryValueError('method must be one of %s, got %r.' % (_METHODS, method))
        check_scope(scope)
        check_mode(mode)
        if method == 'structured' and scope == 'global':
            raise SurgeryValueError("method='structured' prunes slices per parameter; use "
                                    "scope='layer'.")
        self.net = net
        self.key = key
        self.schedule = schedule
        self.method = method
        self.scope = scope
        self.mode = mode
        self._rng = random_state(seed)
        self.last_step = None
        self.pruned_steps = []
        _read(net, key)  # fail now on a key that selects nothing

    def _targets(self, weights, existing, sparsity):
        """Amounts (counts) that bring each group to ``sparsity``."""
        amounts = {}
        for group in scope_groups(weights, self.scope):
            total = sum(weights[name].size for name in group)
            masked = sum(0 if existing.get(name) is None else
                         int(np.count_nonzero(np.broadcast_to(existing[name],
                                                              weights[name].shape) == 0))
                         for name in group)
            zeros = masked
            if self.method == 'magnitude':
                zeros = sum(int(np.count_nonzero(
                    weights[name] * (1 if existing.get(name) is None else existing[name]) == 0))
                    for name in group)
            amounts[tuple(group)] = count_to_reach(sparsity, total, masked, zeros)
        return amounts

    def _scheduled(self, step):
        """``schedule(step)`` checked: ``(bool, float in [0, 1))``, or a typed error naming
        the schedule and the step (nothing is pruned)."""
        out = self.schedule(step)
        where = 'schedule %r at step %r' % (self.schedule, step)
        if not isinstance(out, tuple) or len(out) != 2:
            raise SurgeryTypeError(
                '%s returned %r; a schedule must return a pair (prune_now: bool, sparsity: '
                'float in [0, 1)), like ps.PolynomialDecay.' % (where, out))
        prune_now, sparsity = out
        prune_now = check_flag('prune_now (the first value returned by %s)' % where, prune_now)
        if not _is_real(sparsity):
            raise SurgeryTypeError(
                '%s returned sparsity %s %r; it must be a float in [0, 1).'
                % (where, type(sparsity).__name__, sparsity))
        if not (0 <= float(sparsity) < 1):
            raise SurgeryValueError(
                '%s returned sparsity %r; it must be a float in [0, 1) (the fraction of the '
                'selected weights that is zero after pruning; 1 would remove everything).%s'
                % (where, sparsity, ' Did you mean %r (sparsity/100)?' % (sparsity / 100)
                   if 1 <= sparsity < 100 else ''))
        return prune_now, float(sparsity)

    def step(self, step: int) -> bool:
        """Prune if the schedule says so at ``step``; True when it pruned.

        Raises
        ------
        SurgeryTypeError, SurgeryValueError
            ``step`` is not a whole number, or the schedule returned something other than
            ``(bool, float in [0, 1))`` (the message names the schedule and the step);
            nothing was pruned.
        """
        if not _is_int(step):
            raise SurgeryTypeError('step must be an int (the training step), got %s %r.'
                                   % (type(step).__name__, step))
        prune_now, sparsity = self._scheduled(step)
        self.last_step = step
        if not prune_now:
            return False
        params, weights, existing = _read(self.net, self.key)
        keeps = OrderedDict()
        if self.method == 'structured':
            for name, w in weights.items():
                old = existing.get(name)
                rows = w.shape[0] if w.ndim else 0
                dead = 0 if old is None else rows - int(np.count_nonzero(
                    (np.broadcast_to(old, w.shape) != 0).reshape(rows, -1).any(axis=1)))
                keeps.update(structured_masks({name: w}, count_to_reach(sparsity, rows, dead),
                                              masks={name: old}))
        else:
            for group, count in self._targets(weights, existing, sparsity).items():
                sub = OrderedDict((name, weights[name]) for name in group)
                old = {name: existing.get(name) for name in group}
                if self.method == 'magnitude':
                    keeps.update(magnitude_masks(sub, count, masks=old, scope=self.scope))
                else:
                    keeps.update(random_masks(sub, count, masks=old, scope=self.scope,
                                              seed=self._rng))
        _apply(self.net, params, keeps, self.mode)
        self.pruned_steps.append(step)
        return True

    def _schedule_id(self):
        # A paramsurgery schedule has a repr that names it by value; any other callable's
        # repr holds a memory address, which would never match across processes.
        return repr(self.schedule) if isinstance(self.schedule, Schedule) else None

    def state_dict(self) -> Dict[str, Any]:
        """The Pruner's progress: ``{'last_step', 'pruned_steps', 'method', 'scope',
        'schedule', 'mode'}``; ``'schedule'`` is the repr of a paramsurgery schedule (checked by
        :meth:`load_state_dict`), None for another callable."""
        return {'last_step': self.last_step, 'pruned_steps': list(self.pruned_steps),
                'method': self.method, 'scope': self.scope, 'schedule': self._schedule_id(),
                'mode': self.mode}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the progress saved by :meth:`state_dict`: method, scope, mode and (for a
        paramsurgery schedule) the schedule must match this Pruner's."""
        if not isinstance(state, Mapping):
            raise SurgeryTypeError('state must be a dict from Pruner.state_dict(), got %s.'
                                   % type(state).__name__)
        _check_state(state)
        saved, mine = state.get('schedule'), self._schedule_id()
        if saved is not None and mine is not None and saved != mine:
            raise SurgeryValueError('state was saved with schedule %s but this Pruner has %s. '
                                    'Build the Pruner with the same schedule.' % (saved, mine))
        for field in ('method', 'scope', 'mode'):
            if field == 'mode' and field not in state:
                continue  # saved before masks had modes
            if state.get(field) != getattr(self, field):
                raise SurgeryValueError('state has %s=%r but this Pruner has %s=%r.'
                                        % (field, state.get(field), field,
                                           getattr(self, field)))
        self.last_step = state.get('last_step')
        self.pruned_steps = list(state.get('pruned_steps', []))
