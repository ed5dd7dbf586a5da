"""Every host read of an NDArray in paramsurgery: :func:`to_host` (a numpy copy) and numpy
views of CPU NDArrays' memory, for elementwise passes that numpy runs several times faster
than MXNet 1.9.1's kernels (its mixed-dtype multiply above all); ``MXNDArrayGetData`` gives
the address.

They first :func:`settle` MXNet's engine (the views leave that to the public call that
uses them, once). A predict-mode Convolution (one run outside
``autograd.record()``, such as the forward that finishes deferred initialisation) pushes,
while it runs, an in-place reorder of its weight into oneDNN's blocked layout. A host read
issued in between waits only for the writes queued *before* it, so it copies (or views) a
half-reordered array: on resnet50_v1, ``prune_magnitude`` right after such a forward chose
other masks in about 40 of its 54 weights, and ``save_compact`` stored wrong values. Operators
queued through MXNet are ordered after the reorder and are not affected; a host read is.

A view reads or writes the array's own memory, so it must be used and dropped while the
NDArray is alive and before the next MXNet operator on it is queued.
"""
import ctypes
from typing import Iterator, Optional

import numpy as np
from mxnet import ndarray as nd
from mxnet.base import _LIB, MXNetError, check_call

__all__ = []


def settle() -> None:
    """Wait until MXNet has run everything queued, the in-place layout reorders that running
    Convolutions queue included (``nd.waitall``; a fraction of a microsecond when idle)."""
    nd.waitall()


def to_host(arr) -> np.ndarray:
    """``arr.asnumpy()`` after :func:`settle`: the only way paramsurgery copies an NDArray to
    the host (``tests/test_host.py`` checks that no other module calls ``asnumpy``)."""
    settle()
    return arr.asnumpy()


class _ReadView:
    """DLPack producer for ``numpy.from_dlpack``: a read-only numpy view of a CPU NDArray,
    which keeps the NDArray alive as long as the view."""

    def __init__(self, arr):
        self.arr = arr

    def __dlpack__(self, stream=None):  # pylint: disable=unused-argument
        return nd.to_dlpack_for_read(self.arr)

    def __dlpack_device__(self):
        return (1, 0)  # kDLCPU


def _on_cpu(arr):
    return arr.context.device_type.startswith('cpu')


def _readable(arr):
    if _on_cpu(arr):
        try:
            return np.from_dlpack(_ReadView(arr))
        except (MXNetError, AttributeError, TypeError, BufferError):
            pass  # an MKLDNN blocked layout has no plain view; numpy without from_dlpack
    return arr.asnumpy()


def host_array(arr) -> np.ndarray:
    """``arr`` as a numpy array, after :func:`settle`: a read-only view of its memory when it
    is on a CPU and in the default layout (no copy: reading every weight of a network is the
    largest cost of pruning it otherwise), else a copy. Do not write it."""
    settle()
    return _readable(arr)


def host_arrays(arrs) -> Iterator[np.ndarray]:
    """``arrs`` (NDArrays) as numpy arrays, in order, after one :func:`settle`, as
    :func:`host_array` reads each (do not write them), but an array in MKLDNN's blocked
    layout is first copied into the default layout by MXNet (one reorder, where ``asnumpy``
    reorders into a temporary and copies that: 38 ms against 57 ms for resnet50_v1's conv
    weights), and a view of the copy read. Every copy is queued before the first array is
    yielded, so they run while the earlier arrays are used."""
    arrs = list(arrs)
    settle()
    arrs = [arr.copy() if _on_cpu(arr) and is_blocked_layout(arr) else arr for arr in arrs]
    for arr in arrs:
        yield _readable(arr)


def shared_ndarray(arr: np.ndarray):
    """A CPU NDArray over the memory of ``arr`` (a numpy array, then read-only), which it
    keeps alive (``nd.from_numpy(zero_copy=True)``, whose deleter takes the GIL): copying it
    into a parameter (``replica[:] = shared``, queued on MXNet's engine) is then the only
    copy, where ``nd.array(arr)`` copies into new memory first (on resnet50_v1's weights
    95 ms, more than the copy into blocked replicas). ``arr`` itself when it cannot be shared
    (not C-contiguous, empty, or of a dtype DLPack has no code for here)."""
    if not arr.size or not arr.flags.c_contiguous:
        return arr
    try:
        return nd.from_numpy(arr, zero_copy=True)
    except (MXNetError, ValueError):
        return arr


def _view(arr, wait) -> Optional[np.ndarray]:
    # not settled here: a loop of views over arrays it queues work for would wait for all of
    # it each time; the public call that writes weights through views settles once first
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


def is_blocked_layout(arr):
    """True when ``arr`` holds its values in an MKLDNN blocked layout.

    A Convolution run in predict mode reorders its weight into such a layout in place.
    There is no Python accessor for the layout; exporting a DLPack view is refused for
    exactly these arrays ("We can't generate TBlob for MKLDNN data"), which tells them apart
    without copying anything.

    The answer can change while a predict-mode Convolution is still queued (its reorder
    runs later); where that matters, :func:`settle` first. Not settled here: a loop that
    queues work per array and asks this of each would wait for all of it every time.
    """
    try:
        nd.to_dlpack_for_read(arr)
    except MXNetError as err:
        return 'MKLDNN' in str(err) or 'DNNL' in str(err)
    return False
