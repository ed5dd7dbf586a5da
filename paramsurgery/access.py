"""Context-safe access to parameter replicas, and a health check of Gluon's internals."""
from typing import List, NamedTuple, Optional, Tuple

import mxnet as mx
import numpy as np
from mxnet.gluon.parameter import Parameter

from . import _mx
from .errors import ParameterStateError, SurgeryTypeError
from .select import all_params, mask_names, select

__all__ = ['replicas', 'data_on', 'check_params', 'Problem', 'PROBLEM_CODES']

#: Codes of :class:`Problem`, in the order they are checked.
PROBLEM_CODES = ('uninitialized', 'deferred', 'bare-array', 'length-mismatch', 'wrong-context',
                 'not-a-leaf', 'grad-missing', 'replicas-diverged')

# Problems that make a parameter unusable for surgery (it would write into the wrong arrays).
_STRUCTURAL = frozenset(PROBLEM_CODES) - {'replicas-diverged'}


class Problem(NamedTuple):
    """One problem found by :func:`check_params`.

    Attributes
    ----------
    name : str
        Full name of the parameter.
    context : Context or None
        The context concerned, or None when the problem is not about one replica.
    code : str
        One of :data:`PROBLEM_CODES`.
    message : str
        What is wrong and how to fix it.
    """
    name: str
    context: Optional[mx.Context]
    code: str
    message: str

    def __str__(self):
        where = ' on %s' % self.context if self.context is not None else ''
        return '[%s] %s%s: %s' % (self.code, self.name, where, self.message)


def _check_param(param: Parameter) -> List[Problem]:
    """Structural problems of one parameter (cheap: reads no array values)."""
    name = param.name
    data = _mx.raw_data(param)
    ctxs = _mx.context_list(param)
    if data is None:
        if _mx.is_deferred(param):
            return [Problem(name, None, 'deferred',
                            "initialisation is deferred until the first forward, because "
                            "the shape %s is not fully known yet. Run one forward pass "
                            "(e.g. net(x)) before touching its values." % (param.shape,))]
        return [Problem(name, None, 'uninitialized',
                        'it was never initialised. Call net.initialize(ctx=...) first.')]
    if isinstance(data, mx.nd.NDArray):
        return [Problem(name, None, 'bare-array',
                        "_data is a bare NDArray of shape %s, not a list with one array per "
                        "context: param.data() would silently return its first row. Restore "
                        "it with param._data = [array] or, better, write values with "
                        "ps.set_params/ps.assign_params." % (data.shape,))]
    problems = []
    if len(data) != len(ctxs):
        problems.append(Problem(
            name, None, 'length-mismatch',
            '_data holds %d arrays but the parameter lives on %d contexts %s: '
            'data(ctx) fails or returns the wrong replica. Keep one array per context '
            '(use ps.set_params, or param.reset_ctx to change contexts).'
            % (len(data), len(ctxs), ctxs)))
    grads = _mx.raw_grad(param)
    for i, (ctx, arr) in enumerate(zip(ctxs, data)):
        if arr.context != ctx:
            problems.append(Problem(
                name, ctx, 'wrong-context',
                'the replica for %s lives on %s. Write values into the existing arrays '
                '(ps.set_params) instead of replacing them, or call param.reset_ctx().'
                % (ctx, arr.context)))
        if param.grad_req != 'null':
            if not _mx.is_leaf(arr):
                problems.append(Problem(
                    name, ctx, 'not-a-leaf',
                    'the replica is a computed array, not the autograd variable bound to the '
                    "gradient buffer (e.g. _data was rebound to w * mask): backward never "
                    "updates this parameter and trainer.step() reports a stale gradient. "
                    "Use ps.apply_mask for masks and ps.assign_params for values; "
                    "re-initialise the parameter to repair it."))
            if grads is None or i >= len(grads) or grads[i] is None:
                problems.append(Problem(
                    name, ctx, 'grad-missing',
                    "grad_req is '%s' but there is no gradient buffer for this replica. "
                    "Set param.grad_req again (e.g. 'null' then 'write') to re-attach it."
                    % param.grad_req))
    return problems


def _diverged(param: Parameter) -> List[Problem]:
    data = _mx.raw_data(param)
    if len(data) < 2:
        return []
    first = _mx.to_host(data[0])
    problems = []
    for ctx, arr in zip(_mx.context_list(param)[1:], data[1:]):
        other = _mx.to_host(arr)
        if first.tobytes() != other.tobytes():  # replicas are copies: bit-identical
            diff = np.abs(first.astype(np.float64) - other.astype(np.float64))
            problems.append(Problem(
                param.name, ctx, 'replicas-diverged',
                'the replica on %s differs from the one on %s (max abs difference %.4g): '
                'an in-place edit reached only some contexts. Write all replicas with '
                'ps.set_params(net, name, value).'
                % (ctx, data[0].context, float(np.nanmax(diff)) if diff.size else 0.0)))
    return problems


def _not_enforced(param: Parameter) -> List[Problem]:
    """``mask-not-enforced``: an update-mode mask whose masked entries are not zero in the
    stored weight, or that a Trainer of the parameter would not keep at zero."""
    mask = _mx.update_mask(param)
    if mask is None or _check_param(mask):
        return []
    problems = []
    fix = ("Re-apply the mask (ps.apply_mask(net, '%s', 1, mode='update') zeroes the masked "
           "entries again and watches the Trainers found through the parameter; pass "
           "trainer= for others), or use mode='graph'." % param.name)
    for gap in _mx.enforcement_gaps(param):
        problems.append(Problem(param.name, None, 'mask-not-enforced',
                                'it has an update-mode mask, but %s. %s' % (gap, fix)))
    masks = _mx.raw_data(mask)
    for ctx, arr, i in zip(_mx.context_list(param), _mx.raw_data(param),
                           range(len(masks))):
        stray = int(((_mx.to_host(arr) != 0) & (_mx.to_host(masks[i]) == 0)).sum())
        if stray:
            problems.append(Problem(
                param.name, ctx, 'mask-not-enforced',
                'it has an update-mode mask, but %d masked entr%s of the stored weight %s '
                'not zero (something wrote the weight without the mask: set_data, '
                'load_parameters, a Trainer paramsurgery does not know). %s'
                % (stray, 'y' if stray == 1 else 'ies', 'is' if stray == 1 else 'are', fix)))
    return problems


def _compares_replicas(name, param, masks):
    # BatchNorm running statistics and other grad_req 'null' state may differ per device.
    return param.grad_req != 'null' or name in masks


def check_params(net, key=None) -> List[Problem]:
    """Inspect Gluon's internal state of parameters and report what is damaged.

    Never raises for a damaged parameter: every finding becomes a :class:`Problem`.
    A healthy net gives ``[]``.

    Parameters
    ----------
    net : Block or ParameterDict or dict of str -> Parameter
        The parameters to inspect.
    key : str or Parameter or list or callable, default None
        Restrict the check to a selection (see :func:`select`); None checks everything.

    Returns
    -------
    list of Problem
        Codes: ``uninitialized``, ``deferred``, ``bare-array`` (``_data`` is an NDArray,
        not a list), ``length-mismatch`` (list length differs from the contexts),
        ``wrong-context`` (an entry lives on another context), ``not-a-leaf`` (an entry is
        not an autograd variable), ``grad-missing`` (grad_req is not 'null' but a gradient
        buffer is missing), ``replicas-diverged`` (copies of a trainable parameter or a
        mask differ between contexts; parameters with grad_req 'null', such as BatchNorm's
        running statistics, are per context and not compared), ``mask-not-enforced`` (an update-mode mask whose
        masked entries are not zero in the stored weight, or which a Trainer of the
        parameter would not keep at zero: a dist kvstore updating on its servers, an
        Updater replaced after the mask).

    Examples
    --------
    >>> import mxnet as mx, paramsurgery as ps
    >>> from mxnet.gluon import nn
    >>> net = nn.Dense(2, in_units=3, prefix='fc_')
    >>> net.initialize(ctx=[mx.cpu(0), mx.cpu(1)])
    >>> ps.check_params(net)
    []
    >>> net.weight._data = [w * 2 for w in net.weight.list_data()]  # the old blog recipe
    >>> [p.code for p in ps.check_params(net)]
    ['not-a-leaf', 'not-a-leaf']
    """
    everything = all_params(net)
    params = select(everything, key) if key is not None else everything
    masks = set(mask_names(everything))
    problems = []
    for name, param in params.items():
        found = _check_param(param)
        if not found:
            if _compares_replicas(name, param, masks):
                found = _diverged(param)
            found += _not_enforced(param)
        problems.extend(found)
    return problems


def ensure_usable(param: Parameter) -> None:
    """Raise :class:`ParameterStateError` unless every replica can be read and written."""
    problems = [p for p in _check_param(param) if p.code in _STRUCTURAL]
    if problems:
        raise ParameterStateError(
            "Parameter '%s' cannot be used: %s" % (param.name, ' '.join(map(str, problems))))


def replicas(param: Parameter) -> List[Tuple[mx.Context, mx.nd.NDArray, Optional[mx.nd.NDArray]]]:
    """Every copy of ``param``: one ``(context, data, grad)`` per context.

    Parameters
    ----------
    param : Parameter
        An initialised parameter.

    Returns
    -------
    list of (Context, NDArray, NDArray or None)
        In ``param.list_ctx()`` order; ``grad`` is None when grad_req is 'null'. The arrays
        are the parameter's own (not copies): write into them only under
        ``autograd.pause()``, or better through :func:`assign_params`/:func:`set_params`.

    Raises
    ------
    ParameterStateError
        When the parameter is deferred, uninitialised or its internal arrays are damaged.

    Examples
    --------
    >>> import mxnet as mx, paramsurgery as ps
    >>> from mxnet.gluon import nn
    >>> layer = nn.Dense(2, in_units=3)
    >>> layer.initialize(ctx=[mx.cpu(0), mx.cpu(1)])
    >>> [(ctx, data.shape, grad.shape) for ctx, data, grad in ps.replicas(layer.weight)]
    [(cpu(0), (2, 3), (2, 3)), (cpu(1), (2, 3), (2, 3))]
    """
    _require_param(param)
    ensure_usable(param)
    data = _mx.raw_data(param)
    grads = _mx.raw_grad(param)
    grads = list(grads) if grads is not None else [None] * len(data)
    return list(zip(_mx.context_list(param), data, grads))


def data_on(param: Parameter, ctx: Optional[mx.Context] = None) -> mx.nd.NDArray:
    """The replica of ``param`` on ``ctx``, with explicit rules and clear errors.

    Parameters
    ----------
    param : Parameter
        An initialised parameter.
    ctx : Context, default None
        The context wanted. None means the only context when there is one, else the
        current context (``mx.current_context()``), as ``param.data()`` does.

    Returns
    -------
    NDArray
        The parameter's own array on that context (not a copy).

    Raises
    ------
    ParameterStateError
        Deferred or missing initialisation, damaged internals, or ``ctx`` is not one of the
        parameter's contexts (the message lists where it lives).

    Examples
    --------
    >>> import mxnet as mx, paramsurgery as ps
    >>> from mxnet.gluon import nn
    >>> layer = nn.Dense(2, in_units=3, prefix='fc_')
    >>> layer.initialize(ctx=[mx.cpu(0), mx.cpu(1)])
    >>> ps.data_on(layer.weight, mx.cpu(1)).context
    cpu(1)
    >>> ps.data_on(layer.weight, mx.cpu(2))
    Traceback (most recent call last):
    ...
    paramsurgery.errors.ParameterStateError: Parameter 'fc_weight' is not on context cpu(2); it lives on [cpu(0), cpu(1)]. ...
    """
    _require_param(param)
    try:
        ensure_usable(param)
    except ParameterStateError as err:
        raise ParameterStateError('%s (data_on asked for context %s; the parameter %s)' % (
            err, 'None' if ctx is None else ctx,
            'is set up for %s' % _mx.context_list(param)
            if _mx.context_list(param) else 'has no context yet')) from None
    ctxs = _mx.context_list(param)
    if ctx is None:
        if len(ctxs) == 1:
            return _mx.raw_data(param)[0]
        ctx = mx.current_context()
    if not isinstance(ctx, mx.Context):
        raise SurgeryTypeError('ctx must be an mx.Context or None, got %s.' % type(ctx).__name__)
    idx = _mx.context_index(param, ctx)
    if idx is None or idx >= len(ctxs) or ctxs[idx] != ctx:
        raise ParameterStateError(
            "Parameter '%s' is not on context %s; it lives on %s. Pass one of those contexts "
            "(or, with several contexts and ctx=None, enter `with %s:`), or move it with "
            "param.reset_ctx()." % (param.name, ctx, ctxs, ctxs[0]))
    return _mx.raw_data(param)[idx]


def _require_param(param):
    if not isinstance(param, Parameter):
        raise SurgeryTypeError('expected a gluon Parameter, got %s. Use ps.select(net, key) to '
                               'look parameters up by name.' % type(param).__name__)
