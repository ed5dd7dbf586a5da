"""The value plan behind value surgery and masks: resolve keys, validate every value against
its parameter, then write it into every replica.

Everything is checked (``plan``) before the first write, so a call that raises has changed
nothing; the writers (``multiply``, ``assign``) then cannot fail for the user's input.
"""
import numbers

import numpy as np
from mxnet import gluon
from mxnet import ndarray as nd

from . import _internals
from .access import ensure_usable
from .errors import SurgeryTypeError, SurgeryValueError
from .select import all_params, select

__all__ = []


def _broadcastable(value_shape, param_shape):
    """True when numpy broadcasting of ``value_shape`` against ``param_shape`` gives
    ``param_shape`` (the parameter keeps its shape)."""
    if len(value_shape) > len(param_shape):
        return False
    tail = param_shape[len(param_shape) - len(value_shape):]
    return all(v in (1, p) for v, p in zip(value_shape, tail))


class Value:
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


def prepare(name, param, value, what, allow_nonfinite) -> Value:
    dtype = np.dtype(param.dtype)
    shape = tuple(_internals.raw_data(param)[0].shape)  # param.shape is None after SymbolBlock.imports
    if isinstance(value, (np.bool_, numbers.Real)):
        cast = np.asarray(value).astype(dtype)
        _check_values(name, what, cast, dtype, allow_nonfinite)
        if dtype.kind in 'iu' and cast != value:
            raise SurgeryValueError(
                "Parameter '%s' has integer dtype %s: the %s %r would be truncated to %r."
                % (name, dtype.name, what, value, cast.item()))
        return Value(scalar=cast.item())
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
    return Value(array=array, full=full_shape == shape)


def multiply(arr, value):
    if value.scalar is not None:
        arr *= value.scalar
    elif value.full:
        nd.elemwise_mul(arr, value.on(arr.context), out=arr)
    else:
        nd.broadcast_mul(arr, value.on(arr.context), out=arr)


def assign(arr, value):
    if value.scalar is not None:
        arr[:] = value.scalar
    elif value.full:
        value.on(arr.context).copyto(arr)
    else:
        nd.broadcast_to(value.on(arr.context), shape=arr.shape, out=arr)


def trainers_of(params, trainer):
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


def plan(net, key, value, what, allow_nonfinite):
    """Resolve and validate everything; returns ``[(name, param, Value)]`` or raises."""
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
    steps, seen = [], {}
    params = all_params(net)
    for one_key, one_value in pairs:
        for name, param in select(params, one_key).items():
            if name in seen:
                raise SurgeryValueError(
                    "Parameter '%s' is selected by both %r and %r; give each parameter one %s."
                    % (name, seen[name], one_key, what))
            seen[name] = one_key
            ensure_usable(param)
            prepared = prepare(name, param, one_value, what, allow_nonfinite)
            steps.append((name, param, prepared))
    return steps
