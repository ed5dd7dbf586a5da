"""The ONNX converter behind ``mx.onnx.export_model``, and the OpenMP thread count.

``mx.onnx.export_model`` takes no opset and only writes a file (with the parameters also
listed as graph inputs); its converter class builds the GraphProto at a chosen opset. The
C call that fixes the thread count has no Python wrapper in 1.9.1.
"""


__all__ = []


def onnx_graph(symbol, params, shapes, onnx_types, opset):
    """The ONNX GraphProto of ``symbol`` as ``mx.onnx.export_model`` builds it, at ``opset``."""
    from mxnet.onnx.mx2onnx._export_onnx import MXNetGraph
    return MXNetGraph().create_onnx_graph_proto(symbol, params, shapes, onnx_types,
                                                opset_version=opset, dynamic=False)


class _CpuContext:
    """ctypes layout of mxnet::Context (DeviceType, dev_id), built on first use."""
    struct = None


def _on_cpu_worker(fn):
    """Run ``fn()`` (no MXNet calls in it) on the engine's worker thread of ``cpu(0)`` and
    return its result. OpenMP thread counts are per thread (omp_set_num_threads), and
    operators on CPU run on that worker, not on the thread that calls the C API: pushing a
    callback to the engine is the only way 1.9.1 offers to reach it."""
    import ctypes

    import mxnet as mx
    if _CpuContext.struct is None:
        class Context(ctypes.Structure):
            _fields_ = [('dev_type', ctypes.c_int32), ('dev_id', ctypes.c_int32)]
        _CpuContext.struct = Context
    result = []
    callback = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)(
        lambda run_ctx, param: result.append(fn()))
    ctx = _CpuContext.struct(1, 0)       # Context::kCPU, dev_id 0: what mx.cpu() runs on
    mx.base.check_call(mx.base._LIB.MXEnginePushSyncND(
        callback, None, None, ctypes.byref(ctx), None, 0, None, 0, None, 0, None))
    mx.nd.waitall()                      # the callback has run; it may be freed now
    return result[0]


def omp_threads():
    """The OpenMP thread count MXNet's CPU operators run with now (the engine worker's)."""
    lib = _omp_lib()
    return _on_cpu_worker(lambda: int(lib.omp_get_max_threads()))


def _omp_lib():
    import mxnet as mx
    # dlsym on libmxnet's handle also searches its dependencies: the OpenMP runtime it uses
    return mx.base._LIB


def set_omp_threads(threads):
    """Fix the OpenMP thread count of the CPU operators MXNet runs from now on; return the
    count they ran with before. MXSetNumOMPThreads (1.9.1's only setter) sets the calling
    thread's count, which operators never read: they run on the engine's worker thread, so
    the count is set there (and on the calling thread, for operators a caller runs itself).
    MXNet's own kernels read the count only when OMP_NUM_THREADS is set (else they keep the
    engine's start-up count); oneDNN's read it always."""
    import ctypes

    import mxnet as mx
    lib = _omp_lib()
    mx.base._LIB.MXSetNumOMPThreads(ctypes.c_int(int(threads)))

    def swap():
        before = int(lib.omp_get_max_threads())
        lib.omp_set_num_threads(ctypes.c_int(int(threads)))
        return before
    return _on_cpu_worker(swap)
