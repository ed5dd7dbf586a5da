"""Value surgery: scale or set parameters on every context, Trainer-safe, all or nothing."""
import numbers
from typing import Any, Dict, List, Optional

import numpy as np
import mxnet as mx
from mxnet import gluon, ndarray as nd

from . import _internals, distributed
from .access import ensure_usable
from .errors import SurgeryTypeError, SurgeryValueError, TrainerStateError
from .select import all_params, select

__all__ = ['assign_params', 'set_params']


def _broadcastable(value_shape, param_shape):
    """True when numpy broadcasting of ``value_shape`` against ``param_shape`` gives
    ``param_shape`` (the parameter keeps its shape)."""
    if len(value_shape) > len(param_shape):
        return False
    tail = param_shape[len(param_shape) - len(value_shape):]
    return all(v in (1, p) for v, p in zip(value_shape, tail))


class _Value:
    """A value validated for one parameter, ready to be written on each of its contexts.

    ``scalar`` is a Python number; otherwise ``array`` is a numpy array or an NDArray of
    the parameter's dtype and number of dimensions, and ``full`` says whether it already
    has the parameter's whole shape (else it is broadcast).
    """

    def __init__(self, scalar=None, array=None, full=False):
        self.scalar = scalar
        self.array = array
        self.full = full
        self._per_ctx = {}

    def prefetch(self, contexts):
        # An NDArray value may be (a view of) a parameter that this call also writes:
        # copy it to every context before the first write, so every write sees the old value.
        if isinstance(self.array, nd.NDArray):
            for ctx in contexts:
                self._per_ctx[ctx] = self.array.copyto(ctx)

    def on(self, ctx):
        arr = self._per_ctx.pop(ctx, None)
        if arr is None:
            # Not kept: freeing each copy right after its write lets MXNet's memory pool
            # reuse the buffer for the next parameter.
            arr = nd.array(self.array, ctx=ctx, dtype=self.array.dtype)
        return arr


def _fail_type(name, what, value):
    return SurgeryTypeError(
        "Parameter '%s': the %s must be a Python number, a numpy array or an NDArray, got %s. "
        "Convert it with np.asarray(...) first." % (name, what, type(value).__name__))


def _check_values(name, what, values, dtype, allow_nonfinite):
    """Check a numpy array (already cast to ``dtype``) for non-finite and truncated numbers."""
    if np.issubdtype(dtype, np.floating) and not allow_nonfinite:
        bad = ~np.isfinite(values)
        if bad.any():
            raise SurgeryValueError(
                "Parameter '%s': the %s has %d non-finite entr%s (NaN or inf after conversion "
                "to %s), first at index %s. Pass allow_nonfinite=True if that is intended."
                % (name, what, int(bad.sum()), 'y' if bad.sum() == 1 else 'ies',
                   np.dtype(dtype).name, tuple(int(i) for i in np.argwhere(bad)[0])))


def _prepare(name, param, value, what, allow_nonfinite) -> _Value:
    dtype = np.dtype(param.dtype)
    shape = tuple(_internals.raw_data(param)[0].shape)  # param.shape is None after SymbolBlock.imports
    if isinstance(value, (np.bool_, numbers.Real)):
        cast = np.asarray(value).astype(dtype)
        _check_values(name, what, cast, dtype, allow_nonfinite)
        if dtype.kind in 'iu' and cast != value:
            raise SurgeryValueError(
                "Parameter '%s' has integer dtype %s: the %s %r would be truncated to %r."
                % (name, dtype.name, what, value, cast.item()))
        return _Value(scalar=cast.item())
    if isinstance(value, np.ndarray):
        kind = value.dtype.kind
        vshape = value.shape
    elif isinstance(value, nd.NDArray):
        if value.stype != 'default':
            raise SurgeryTypeError(
                "Parameter '%s': the %s is a %s NDArray; convert it with .tostype('default')."
                % (name, what, value.stype))
        kind = np.dtype(value.dtype).kind
        vshape = tuple(value.shape)
    else:
        raise _fail_type(name, what, value)
    if kind not in 'biuf':
        raise SurgeryTypeError(
            "Parameter '%s': the %s has dtype %s; it must be numeric (bool, integer or float) "
            "so that the result keeps the parameter's dtype %s."
            % (name, what, np.dtype(value.dtype).name, dtype.name))
    if not _broadcastable(vshape, shape):
        raise SurgeryValueError(
            "Parameter '%s': the %s has shape %s, which does not broadcast to the parameter's "
            "shape %s (numpy rules, and the result must keep the parameter's shape). Reshape "
            "it, e.g. to %s for one value per output channel."
            % (name, what, vshape, shape, (shape[0],) + (1,) * (len(shape) - 1)
               if shape else ()))
    full_shape = (1,) * (len(shape) - len(vshape)) + vshape
    if isinstance(value, np.ndarray):
        array = value.astype(dtype, copy=False).reshape(full_shape)
        _check_values(name, what, array, dtype, allow_nonfinite)
        if dtype.kind in 'iu' and not np.array_equal(array, value.reshape(full_shape)):
            raise SurgeryValueError(
                "Parameter '%s' has integer dtype %s: the %s has entries that would be "
                "truncated." % (name, dtype.name, what))
    else:
        array = value.astype(dtype, copy=False).reshape(full_shape)
        if dtype.kind == 'f' and not allow_nonfinite:
            finite = nd.contrib.isfinite(array).min().asscalar()
            if not finite:
                _check_values(name, what, array.asnumpy(), dtype, allow_nonfinite)
    return _Value(array=array, full=full_shape == shape)


def _multiply(arr, value):
    if value.scalar is not None:
        arr *= value.scalar
    elif value.full:
        nd.elemwise_mul(arr, value.on(arr.context), out=arr)
    else:
        nd.broadcast_mul(arr, value.on(arr.context), out=arr)


def _assign(arr, value):
    if value.scalar is not None:
        arr[:] = value.scalar
    elif value.full:
        value.on(arr.context).copyto(arr)
    else:
        nd.broadcast_to(value.on(arr.context), shape=arr.shape, out=arr)


def _trainers(params, trainer):
    """The Trainers that hold copies of ``params``: the explicit ones and the last one built
    on each parameter (the only one Gluon remembers)."""
    if trainer is None:
        explicit = []
    elif isinstance(trainer, gluon.Trainer):
        explicit = [trainer]
    elif isinstance(trainer, (list, tuple)) and all(isinstance(t, gluon.Trainer)
                                                    for t in trainer):
        explicit = list(trainer)
    else:
        raise SurgeryTypeError('trainer must be a gluon.Trainer, a list of them or None, got %s.'
                               % type(trainer).__name__)
    found = {}
    for t in explicit + [_internals.last_trainer(p) for p in params]:
        if t is not None:
            found.setdefault(id(t), t)
    return list(found.values())


def _check_trainer(trainer, params):
    kvstore, update_on_kvstore, initialized = _internals.trainer_kvstore(trainer)
    if not (initialized and update_on_kvstore and _internals.is_distributed(kvstore)):
        return
    mine = [p.name for p in params if _internals.trainer_index(trainer, p) is not None]
    if mine:
        raise TrainerStateError(
            "Parameter '%s'%s: its Trainer runs the optimizer on the parameter servers of "
            "kvstore '%s' (update_on_kvstore=True). The servers keep their own copy of the "
            "weights, overwrite every worker's replicas at the next step, and MXNet cannot "
            "reset a distributed kvstore, so a value written here would be silently undone. "
            "Nothing was changed. Fix: do value surgery before the first trainer.step() (the "
            "servers start from rank 0's values), or use ps.apply_mask, which changes the "
            "forward graph instead of the stored weights."
            % (mine[0], ' (and %d more)' % (len(mine) - 1) if len(mine) > 1 else '',
               kvstore.type))


def _plan(net, key, value, what, allow_nonfinite):
    """Resolve and validate everything; returns ``[(name, param, _Value)]`` or raises."""
    if isinstance(key, dict):
        if value is not None:
            raise SurgeryTypeError(
                'Pass either a dict {key: %s} or a key and a %s, not both.' % (what, what))
        pairs = list(key.items())
    else:
        if value is None:
            raise SurgeryTypeError(
                'A %s is required: call with (net, key, %s) or (net, {key: %s}).'
                % (what, what, what))
        pairs = [(key, value)]
    plan, seen = [], {}
    params = all_params(net)
    for one_key, one_value in pairs:
        for name, param in select(params, one_key).items():
            if name in seen:
                raise SurgeryValueError(
                    "Parameter '%s' is selected by both %r and %r; give each parameter one %s."
                    % (name, seen[name], one_key, what))
            seen[name] = one_key
            ensure_usable(param)
            prepared = _prepare(name, param, one_value, what, allow_nonfinite)
            plan.append((name, param, prepared))
    return plan


def _run(net, key, value, what, write, trainer, allow_nonfinite):
    plan = _plan(net, key, value, what, allow_nonfinite)
    params = [param for _, param, _ in plan]
    trainers = _trainers(params, trainer)
    for t in trainers:
        _check_trainer(t, params)
    for t in trainers:
        # the values written now are what rank 0 broadcasts at the first step: say so if
        # that broadcast can race (dist_sync with update_on_kvstore=False)
        distributed.warn_if_exposed(t, stacklevel=3)
    for _, param, prepared in plan:
        prepared.prefetch(_internals.context_list(param))
    # Everything is validated: from here on nothing raises for the user's input.
    for _, param, prepared in plan:
        _internals.write_replicas(param, lambda arr, v=prepared: write(arr, v))
    for t in trainers:
        _internals.sync_trainer(t, params)
    return [name for name, _, _ in plan]


def assign_params(net, key, multiplier: Any = None, *, trainer: Optional[Any] = None,
                  allow_nonfinite: bool = False) -> List[str]:
    """Multiply the selected parameters by ``multiplier`` on every context.

    Each selected parameter becomes ``old * multiplier`` on each of its replicas. The
    parameters keep their identity and their replicas stay the leaf autograd variables
    bound to their gradient buffers, so a Trainer built earlier keeps working, and the
    call is safe inside ``autograd.record()`` (make it before the forward that should see
    the new values). The Trainer's own copies (the kvstore's weight under
    ``update_on_kvstore=True``, the fp32 master copy under ``multi_precision``) are
    updated too, keeping the optimizer state, so the next ``step()`` does not undo it.

    Parameters
    ----------
    net : Block or ParameterDict or dict of str -> Parameter
        Where the parameters are.
    key : str or Parameter or list or callable or dict
        Which parameters (see :func:`select`); or a dict ``{key: multiplier}``.
    multiplier : number or numpy.ndarray or NDArray
        Broadcast against each parameter's shape with numpy rules; the result keeps the
        parameter's shape and dtype. An NDArray may live on any context.
    trainer : Trainer or list of Trainer, default None
        Trainers to keep in step besides the last one built on each parameter.
    allow_nonfinite : bool, default False
        Accept NaN and inf in ``multiplier``.

    Returns
    -------
    list of str
        The names of the parameters changed.

    Raises
    ------
    SelectionError, SurgeryValueError, SurgeryTypeError, ParameterStateError, TrainerStateError
        Before anything is written: on error no replica has changed.

    Examples
    --------
    >>> import mxnet as mx, numpy as np, paramsurgery as ps
    >>> from mxnet.gluon import nn
    >>> net = nn.Dense(2, in_units=3, prefix='fc_')
    >>> net.initialize(mx.init.One(), ctx=[mx.cpu(0), mx.cpu(1)])
    >>> ps.assign_params(net, '.*weight', np.array([[0.5], [2.0]]))
    ['fc_weight']
    >>> [w.asnumpy().tolist() for w in net.weight.list_data()]
    [[[0.5, 0.5, 0.5], [2.0, 2.0, 2.0]], [[0.5, 0.5, 0.5], [2.0, 2.0, 2.0]]]
    >>> ps.assign_params(net, {'fc_bias': 0.0})
    ['fc_bias']
    """
    return _run(net, key, multiplier, 'multiplier', _multiply, trainer, allow_nonfinite)


def set_params(net, key, value: Any = None, *, trainer: Optional[Any] = None,
               allow_nonfinite: bool = False) -> List[str]:
    """Set the selected parameters to ``value`` (broadcast) on every context.

    Same guarantees as :func:`assign_params`: every replica on its own context, identity
    and autograd leaves kept, safe inside ``autograd.record()``, Trainer-safe (optimizer
    state kept), all or nothing. Unlike ``Parameter.set_data`` it does not throw away the
    Trainer's optimizer state and works with a kvstore that updates on the kvstore.

    Parameters
    ----------
    net : Block or ParameterDict or dict of str -> Parameter
        Where the parameters are.
    key : str or Parameter or list or callable or dict
        Which parameters (see :func:`select`); or a dict ``{key: value}``.
    value : number or numpy.ndarray or NDArray
        Broadcast to each parameter's shape with numpy rules and cast to its dtype.
    trainer : Trainer or list of Trainer, default None
        Trainers to keep in step besides the last one built on each parameter.
    allow_nonfinite : bool, default False
        Accept NaN and inf in ``value``.

    Returns
    -------
    list of str
        The names of the parameters changed.

    Examples
    --------
    >>> import mxnet as mx, paramsurgery as ps
    >>> from mxnet.gluon import nn
    >>> net = nn.Dense(2, in_units=3, prefix='fc_')
    >>> net.initialize(ctx=[mx.cpu(0), mx.cpu(1)])
    >>> ps.set_params(net, 'fc_bias', mx.nd.array([1, 2], ctx=mx.cpu(1)))
    ['fc_bias']
    >>> [b.asnumpy().tolist() for b in net.bias.list_data()]
    [[1.0, 2.0], [1.0, 2.0]]
    >>> ps.set_params(net, 'fc_weight', float('nan'))
    Traceback (most recent call last):
    ...
    paramsurgery.errors.SurgeryValueError: Parameter 'fc_weight': the value has 1 non-finite entry ...
    """
    return _run(net, key, value, 'value', _assign, trainer, allow_nonfinite)
