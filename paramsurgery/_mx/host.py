"""Numpy views of CPU NDArrays' memory, for elementwise passes that numpy runs several times
faster than MXNet 1.9.1's kernels (its mixed-dtype multiply above all); ``MXNDArrayGetData`` gives the address.

A view is taken only after MXNet has finished what it had queued on the array, and it reads
or writes the array's own memory, so it must be used and dropped while the NDArray is alive
and before the next MXNet operator on it is queued.
"""
import ctypes
from typing import Optional

import numpy as np
from mxnet import ndarray as nd
from mxnet.base import _LIB, MXNetError, check_call

__all__ = []


def _view(arr, wait) -> Optional[np.ndarray]:
    if not arr.context.device_type.startswith('cpu') or arr.stype != 'default' or not arr.size:
        return None
    try:
        # also refuses an MKLDNN blocked layout, whose memory is not in numpy's order
        capsule = wait(arr)
    except MXNetError:
        return None
    del capsule
    pointer = ctypes.c_void_p()
    check_call(_LIB.MXNDArrayGetData(arr.handle, ctypes.byref(pointer)))
    dtype = np.dtype(arr.dtype)
    memory = (ctypes.c_char * (arr.size * dtype.itemsize)).from_address(pointer.value)
    return np.frombuffer(memory, dtype=dtype).reshape(arr.shape)


def read_view(arr) -> Optional[np.ndarray]:
    """A numpy view of ``arr`` once every queued write of it is done, or None when there is
    none (not on a CPU, not dense, empty, or in an MKLDNN blocked layout). Do not write it."""
    return _view(arr, nd.to_dlpack_for_read)


def write_view(arr) -> Optional[np.ndarray]:
    """A writable numpy view of ``arr`` once every queued read and write of it is done, or
    None (as for :func:`read_view`). Writes through it bypass autograd and the engine."""
    return _view(arr, nd.to_dlpack_for_write)
