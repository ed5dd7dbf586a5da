"""Mask values: the binary check of update mode, writing or multiplying a planned value into
a mask replica of any dtype, a new mask Parameter made from it on every context, and the
Trainers a mask write keeps in step."""
from collections import OrderedDict

import mxnet as mx
import numpy as np
from mxnet import autograd
from mxnet import ndarray as nd
from mxnet.gluon.parameter import Parameter

from .. import _mx
from .._values import trainers_of
from ..errors import SurgeryValueError
from ..select import MASK_SUFFIX
from .modes import UPDATE_MASK_DTYPE
from .update_mode import mark_mask_param

__all__ = []


def is_binary(value):
    """True when a planned mask value holds only 0 and 1."""
    if value.scalar is not None:
        return value.scalar in (0, 1)
    array = value.array
    if isinstance(array, np.ndarray):
        return array.dtype == np.bool_ or bool(np.all((array == 0) | (array == 1)))
    with autograd.pause():
        return not (nd.not_equal(array, 0) * nd.not_equal(array, 1)).sum().asscalar()


def refuse_non_binary(name, value, existing, combine):
    """Update mode keeps the masked entries of the stored weight at zero: only 0/1 masks."""
    if not is_binary(value):
        raise SurgeryValueError(
            "Parameter '%s': mode='update' takes binary masks only (every entry 0 or 1), "
            "because the masked entries of the stored weight are set to 0 and kept there. "
            "Nothing was changed. Pass a 0/1 mask, or use mode='graph' to scale weights."
            % name)
    if existing is not None and combine == 'multiply':
        with autograd.pause():
            old = _mx.to_host(_mx.raw_data(existing)[0])
        if not np.all((old == 0) | (old == 1)):
            product = old * (value.scalar if value.scalar is not None else
                             np.asarray(_mx.to_host(value.array) if isinstance(
                                 value.array, nd.NDArray) else value.array))
            if not np.all((product == 0) | (product == 1)):
                raise SurgeryValueError(
                    "Parameter '%s': its graph-mode mask is not binary, so multiplying it "
                    "with this mask gives a mask that is not binary, which mode='update' "
                    "cannot keep. Nothing was changed. Pass combine='replace', or keep "
                    "mode='graph'." % name)


def _mask_value_on(value, arr):
    """A planned mask value as a number or as an NDArray of ``arr``'s shape, dtype and
    context."""
    if value.scalar is not None:
        return value.scalar
    if isinstance(value.array, np.ndarray):
        return nd.array(np.broadcast_to(value.array, arr.shape), ctx=arr.context,
                        dtype=arr.dtype)
    src = value.on(arr.context)
    if not value.full:
        src = nd.broadcast_to(src, shape=arr.shape)
    return src.astype(arr.dtype, copy=False)


def write_value(arr, value):
    """Write a planned mask value into a mask replica of any dtype."""
    if value.array is not None and isinstance(value.array, np.ndarray):
        # Straight from numpy: no temporary NDArray per context (a full set of masks is as
        # large as the weights, and freed NDArrays stay in the process's heap).
        src = value.array
        if src.dtype == np.bool_ and np.dtype(arr.dtype) == np.uint8:
            src = src.view(np.uint8)   # the pruning core's masks: no conversion pass
        arr[:] = np.broadcast_to(src, arr.shape)
    else:
        arr[:] = _mask_value_on(value, arr)


def multiply_value(arr, value):
    """Multiply a planned mask value into a mask replica of any dtype."""
    factor = _mask_value_on(value, arr)
    if isinstance(factor, nd.NDArray):
        _mx.multiply_inplace(arr, factor)
    else:
        arr *= factor


def _arrays_from_host(value, dtype, contexts):
    """A full-shape numpy value as one NDArray of ``dtype`` per context, or None for any
    other value. The host array is read in place (the pruning core's bool masks as uint8,
    without a conversion pass); any conversion to ``dtype`` runs on each device, in
    parallel, from a copy a quarter the size for a bool mask into float32."""
    if not (value.full and isinstance(value.array, np.ndarray) and value.array.size):
        return None
    host = value.array
    if host.dtype == np.bool_:
        host = host.view(np.uint8)
    # from_numpy marks what it is given read-only (a view keeps the caller's array as it
    # was) and keeps it alive while the copies read it
    src = nd.from_numpy(np.ascontiguousarray(host).view(), zero_copy=True)
    arrays = []
    for ctx in contexts:
        near = src if ctx == src.context else src.copyto(ctx)
        arrays.append(near.astype(dtype) if near is src or near.dtype != dtype else near)
    return arrays


def new_mask_param(name, param, mode, contexts, value):
    """The mask Parameter of ``param``, on ``contexts``. Returns it and whether it already
    holds ``value`` (made from it with one copy per context), else it holds ones."""
    # the Parameter keeps the dtype object Gluon users set and compare (np.uint8, not
    # np.dtype('uint8')); the arrays are made with its np.dtype
    declared = UPDATE_MASK_DTYPE if mode == 'update' else param.dtype
    dtype = np.dtype(declared)
    mask = Parameter(name + MASK_SUFFIX, grad_req='null', shape=param.shape, dtype=declared,
                     init=mx.init.One(), differentiable=False)
    mark_mask_param(mask)
    with autograd.pause():
        arrays = _arrays_from_host(value, dtype, contexts)
        if arrays is None:
            mask.initialize(ctx=contexts)
        else:
            # the mask's own init (ones) stays for initialize(force_reinit=True)
            _mx.initialize_with(mask, arrays, contexts)
    return mask, arrays is not None


def mask_trainers(params, trainer):
    """The Trainers to keep in step: the explicit ones, the last one built on each
    parameter and those built on it while it had an update-mode mask."""
    found = OrderedDict((id(t), t) for t in trainers_of(params, trainer))
    for param in params:
        for t in _mx.known_trainers(param):
            found.setdefault(id(t), t)
    return list(found.values())


# Update-mode masks are registered on their block but not used by its graph: Gluon warns
