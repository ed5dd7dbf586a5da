"""The value plan behind value surgery and masks: resolve keys, validate every value against
its parameter, then write it into every replica.

Everything is checked (``plan``) before the first write, so a call that raises has changed
nothing; the writers (``multiply``, ``assign``) then cannot fail for the user's input.
"""
import math
import numbers
from typing import List, NamedTuple, Optional

import numpy as np
from mxnet import autograd, gluon
from mxnet import ndarray as nd

from . import _mx
from .access import ensure_usable
from .errors import SurgeryTypeError, SurgeryValueError
from .select import all_params, match

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
    the parameter's dtype (a mask: also a bool numpy array) and number of dimensions, and
    ``full`` says whether it already has the parameter's whole shape (else it is broadcast).
    """

    def __init__(self, scalar=None, array=None, full=False, largest=None):
        self.scalar = scalar
        self.array = array
        self.full = full
        # the largest |entry| when validation already found it (None when unknown)
        self.largest = largest
        self._per_ctx = {}
        self._host = None

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

    def on_shared(self, ctx):
        """Like ``on``, but on a CPU context a numpy value is read in place, without a copy:
        every CPU context is host memory, so one zero-copy view serves them all. The caller
        must wait for the writes that read it (``wait_written``) before returning, since the
        user may change the numpy array afterwards."""
        if (ctx.device_type != 'cpu' or not isinstance(self.array, np.ndarray)
                or self.array.size == 0):
            return self.on(ctx)
        if self._host is None:
            view = np.ascontiguousarray(self.array).view()
            # from_numpy marks what it is given read-only: a view keeps the user's array as it was
            self._host = nd.from_numpy(view, zero_copy=True)
        return self._host

    @property
    def shared(self):
        """True once ``on_shared`` handed out a view of the user's numpy array."""
        return self._host is not None


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


# Dtypes whose sums of squares are cheap (one BLAS dot) and accurate enough to bound with.
_DOT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


_SLACK = 1 + 2.0 ** -20


def norm_bound(sumsq, size, dtype):
    """An upper bound on the L2 norm, hence on the largest ``|entry|``, of ``size`` numbers
    of ``dtype`` whose sum of squares was computed in ``dtype`` as ``sumsq``; inf when none
    holds. Summing non-negative terms in any order loses at most a factor ``1 - gamma``
    (``gamma = n u / (1 - n u)``, ``u`` the unit roundoff, n terms and n additions), and
    underflow flushed to zero at most ``finfo.tiny`` per operation."""
    dtype = np.dtype(dtype)
    if dtype not in _DOT_DTYPES or not math.isfinite(sumsq):
        return math.inf
    unit = float(np.finfo(dtype).eps) / 2
    roundings = 2 * size
    if roundings * unit >= 0.5:
        return math.inf
    gamma = roundings * unit / (1 - roundings * unit)
    # the last factor covers the rounding of this float64 arithmetic itself (a few units of
    # 2**-53, far below 2**-20), so the result is an upper bound and not only close to one
    return math.sqrt((sumsq + roundings * float(np.finfo(dtype).tiny)) / (1 - gamma)) * _SLACK


def _host_extremes(array):
    """The largest and smallest entry of a non-empty numpy array (NaN when it holds one), or
    None when empty: two reductions that prove every entry finite and give the largest
    ``|entry|`` exactly, cheaper than an entry-wise isfinite mask."""
    if array.size == 0 or array.dtype.kind not in 'fiu':
        return None
    return array.max(), array.min()


def prepare(name, param, value, what, allow_nonfinite) -> Value:
    dtype = np.dtype(param.dtype)
    shape = tuple(_mx.raw_data(param)[0].shape)  # param.shape is None after SymbolBlock.imports
    if isinstance(value, (np.bool_, numbers.Real)):
        cast = np.asarray(value).astype(dtype)
        _check_values(name, what, cast, dtype, allow_nonfinite)
        if dtype.kind in 'iu' and cast != value:
            raise SurgeryValueError(
                "Parameter '%s' has integer dtype %s: the %s %r would be truncated to %r."
                % (name, dtype.name, what, value, cast.item()))
        return Value(scalar=cast.item())
    if isinstance(value, nd.NDArray) and dtype.kind in 'iu' and value.stype == 'default':
        # An integer parameter: the exact numpy checks below (no truncation, no wrap-around)
        # must apply to an NDArray exactly as to the same numpy values.
        value = _mx.to_host(value)
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
    if what == 'mask' and isinstance(value, np.ndarray) and kind == 'b':
        # A bool mask is exact in every dtype and finite: kept as it is, as the pruning
        # core's masks are (the mask writers convert it per replica). Cast here, a whole
        # set of masks was held at once as float copies as large as the weights.
        return Value(array=value.reshape(full_shape), full=full_shape == shape,
                     largest=float(value.any()))
    if isinstance(value, np.ndarray):
        array = value.astype(dtype, copy=False).reshape(full_shape)
        extremes = _host_extremes(array)
        # A finite largest and smallest entry prove every entry finite (max and min propagate
        # NaN); otherwise the entry-wise check decides and says where.
        finite = extremes is not None and all(math.isfinite(x) for x in extremes)
        if not finite:
            _check_values(name, what, array, dtype, allow_nonfinite)
        if dtype.kind in 'iu' and not np.array_equal(array, value.reshape(full_shape)):
            raise SurgeryValueError(
                "Parameter '%s' has integer dtype %s: the %s has entries that would be "
                "truncated." % (name, dtype.name, what))
        if finite:
            return Value(array=array, full=full_shape == shape,
                         largest=max(abs(extremes[0].item()), abs(extremes[1].item())))
    else:
        array = value.astype(dtype, copy=False).reshape(full_shape)
        if dtype.kind == 'f' and not allow_nonfinite:
            finite = nd.contrib.isfinite(array).min().asscalar()
            if not finite:
                _check_values(name, what, _mx.to_host(array), dtype, allow_nonfinite)
    return Value(array=array, full=full_shape == shape)


def _numpy_value(value, dtype):
    if value.scalar is not None:
        return np.asarray(value.scalar, dtype=dtype)
    if isinstance(value.array, nd.NDArray):
        return _mx.to_host(value.array)
    return value.array


def _largest(value):
    """The largest ``|entry|`` of ``value`` as a Python number (0.0 when empty)."""
    if value.largest is not None:
        return value.largest
    if value.scalar is not None:
        return float(abs(value.scalar))
    if value.array.size == 0:
        return 0.0
    if isinstance(value.array, nd.NDArray):
        return float(nd.abs(value.array).max().asscalar())
    return float(np.abs(value.array.astype(np.float64)).max())


def _at_most_one(largest, dtype):
    """True when multiplying by a value whose largest ``|entry|`` is ``largest`` cannot
    overflow (``<= 1``; for a signed integer dtype ``< 1``, since ``-1 * min`` wraps around)."""
    return largest < 1 if dtype.kind == 'i' else largest <= 1


def _needs_check(param, value):
    """The largest ``|entry|`` of ``value`` when ``param * value`` could overflow, else None."""
    dtype = np.dtype(param.dtype)
    if dtype.kind not in 'fiu':
        return None
    largest = _largest(value)
    return None if _at_most_one(largest, dtype) else largest


def _start_sumsq(param):
    """Start the sum of squares of every replica on its own device (one BLAS pass each); the
    NDArrays returned are read later, so that all of them run before the first is waited on."""
    if np.dtype(param.dtype) not in _DOT_DTYPES:
        return None
    with autograd.pause():
        return [_sumsq(arr) for arr in _mx.raw_data(param)]


def _sumsq(arr):
    """Start ``sum(arr ** 2)`` on ``arr``'s device. A weight in MKLDNN's blocked layout (after
    a predict-mode forward) is copied first: a copy comes out in the default layout several
    times faster than the reorder that reshaping the blocked array runs."""
    flat = (arr.copy() if _mx.is_blocked_layout(arr) else arr).reshape((-1,))
    return nd.dot(flat, flat)


def _products_finite(param, sums, largest):
    """True when ``norm(w) * largest`` stays below the dtype's largest finite number on every
    replica (``sums`` from ``_start_sumsq``): then no product ``w * value`` can overflow, and
    the exact host check is not needed."""
    dtype = np.dtype(param.dtype)
    size = _mx.raw_data(param)[0].size
    worst = max(norm_bound(float(s.asscalar()), size, dtype) for s in sums)
    # |w * m| <= norm(w) * largest <= max, and rounding to nearest never passes a
    # representable bound; inf (no bound, NaN or inf in w) fails this test.
    return worst * largest <= float(np.finfo(dtype).max)


class _Pending(NamedTuple):
    name: str
    param: gluon.Parameter
    value: Value
    largest: float
    sums: Optional[List[nd.NDArray]]


def check_products(steps, what):
    """``check_product`` for every ``(name, param, Value)`` of ``steps``. The device passes
    that bound the products are all started before the first result is read, so they run
    back to back in MXNet's engine instead of one round trip per parameter."""
    pending = []
    for name, param, value in steps:
        largest = _needs_check(param, value)
        if largest is not None:
            pending.append(_Pending(name, param, value, largest, _start_sumsq(param)))
    for one in pending:
        if one.sums is None or not _products_finite(one.param, one.sums, one.largest):
            _exact_check(one.name, one.param, one.value, what)


def check_product(name, param, value, what, also=None):
    """Raise unless ``param * value`` (times the Parameter ``also``, e.g. the mask already in
    place) is representable on every replica: a product of finite fp16 numbers can overflow
    to inf, and an integer product can wrap around. Entries whose factors are already
    non-finite are not counted (nothing new is made non-finite)."""
    if also is None:
        check_products([(name, param, value)], what)
    elif _needs_check(param, value) is not None:
        _exact_check(name, param, value, what, also)


def _exact_check(name, param, value, what, also=None):
    """The entry-wise check behind ``check_product``, on host copies of every replica."""
    dtype = np.dtype(param.dtype)
    factor = _numpy_value(value, dtype)
    with autograd.pause():
        olds = [_mx.to_host(arr) for arr in _mx.raw_data(param)]
        if also is not None:
            olds = [old * _mx.to_host(other) for old, other in zip(olds, _mx.raw_data(also))]
    for old, ctx in zip(olds, _mx.context_list(param)):
        if dtype.kind == 'f':
            with np.errstate(over='ignore', invalid='ignore'):
                product = np.multiply(old, factor, dtype=dtype)
            bad = ~np.isfinite(product) & np.isfinite(old) & np.isfinite(factor)
            limit = 'the largest %s is %g' % (dtype.name, np.finfo(dtype).max)
        else:
            exact = np.multiply(old.astype(object), np.asarray(factor).astype(object))
            info = np.iinfo(dtype)
            bad = np.asarray((exact < info.min) | (exact > info.max), dtype=bool)
            limit = '%s holds [%d, %d]' % (dtype.name, info.min, info.max)
        if bad.any():
            raise SurgeryValueError(
                "Parameter '%s' on %s: multiplying by the %s would overflow in %d entr%s "
                "(%s), first at index %s; nothing was changed. Use a smaller %s, or cast the "
                "parameter to a wider dtype first (e.g. net.cast('float32'))."
                % (name, ctx, what, int(bad.sum()), 'y' if bad.sum() == 1 else 'ies', limit,
                   tuple(int(i) for i in np.argwhere(bad)[0]), what))


def multiply(arr, value):
    if value.scalar is not None:
        arr *= value.scalar
    elif value.full:
        nd.elemwise_mul(arr, value.on_shared(arr.context), out=arr)
    else:
        nd.broadcast_mul(arr, value.on_shared(arr.context), out=arr)


def assign(arr, value):
    if value.scalar is not None:
        arr[:] = value.scalar
    elif value.full:
        value.on_shared(arr.context).copyto(arr)
    else:
        nd.broadcast_to(value.on_shared(arr.context), shape=arr.shape, out=arr)


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
    for t in explicit + [_mx.last_trainer(p) for p in params]:
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
        # match, not select: params is already validated, and select would check all of
        # it again for every key (quadratic in a dict of one value per parameter)
        for name in match(params, one_key):
            param = params[name]
            if name in seen:
                raise SurgeryValueError(
                    "Parameter '%s' is selected by both %r and %r; give each parameter one %s."
                    % (name, seen[name], one_key, what))
            seen[name] = one_key
            ensure_usable(param)
            prepared = prepare(name, param, one_value, what, allow_nonfinite)
            steps.append((name, param, prepared))
    return steps
