"""NDArrays: autograd leaves, the freshness flag ``_fresh_grad``, and elementwise writes that
mix dtypes (the numpy frontend's operators do, the legacy ones do not)."""

import numpy as np
from mxnet import numpy as mx_np

from . import host

__all__ = []


def is_leaf(arr):
    """True when ``arr`` is a marked autograd variable (it has a gradient buffer attached).

    A computed array put into ``_data`` (``w * mask``) has none: ``backward`` never fills a
    buffer the Trainer reads, and reading ``_fresh_grad`` on it silently returns 0.
    """
    return arr.grad is not None


def fresh_grad(arr):
    """Read the freshness flag that ``backward()`` sets, without clearing it."""
    return bool(arr._fresh_grad)


def set_fresh_grad(arr, value):
    arr._fresh_grad = bool(value)


def as_np(arr):
    """A numpy-frontend view of ``arr`` (no copy): ``mxnet.numpy`` operators multiply
    mixed dtypes (a float32 weight by a uint8 mask), the legacy ones do not."""
    return arr if isinstance(arr, mx_np.ndarray) else arr.as_np_ndarray()


def multiply_inplace(arr, factor):
    """``arr *= factor`` for an NDArray ``factor`` of the same shape and any numeric dtype
    (one elementwise pass, nothing allocated).

    A one-byte factor (an update-mode mask: uint8, or bool) on a CPU is applied by numpy on
    views of both arrays: every training step masks each gradient so, and MXNet's
    mixed-dtype multiply is the slow part of it (over resnet18_v1's 11.2M weights, one
    thread: 27 ms against 3.3 ms for numpy). Both round the product once to ``arr``'s dtype
    (a 0/1 mask: exactly), so the result is the same.
    """
    dtype = np.dtype(factor.dtype)
    if dtype.itemsize == 1 and dtype.kind in 'bu' and tuple(factor.shape) == tuple(arr.shape):
        host_factor = host.read_view(factor)
        view = host.write_view(arr) if host_factor is not None else None
        if view is not None:
            # inf * 0 is NaN as in MXNet, which does not warn about it either
            with np.errstate(invalid='ignore'):
                np.multiply(view, host_factor, out=view)
            return
    out = as_np(arr)
    mx_np.multiply(out, as_np(factor), out=out)


def zero_where_masked(arr, mask):
    """``arr = where(mask != 0, arr, 0)``: exactly 0 under the mask even where ``arr`` holds
    NaN or inf (which a multiplication by 0 would keep)."""
    kept = mx_np.where(as_np(mask), as_np(arr), 0)
    out = as_np(arr)
    out[:] = kept.astype(out.dtype, copy=False)
