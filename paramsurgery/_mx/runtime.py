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


def set_omp_threads(threads):
    """Fix MXNet's OpenMP thread count for the operators run from now on (the C API has no
    Python wrapper in 1.9.1)."""
    import ctypes

    import mxnet as mx
    mx.base._LIB.MXSetNumOMPThreads(ctypes.c_int(int(threads)))
