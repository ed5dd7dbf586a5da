"""The runtimes a net is timed on: a table of builders, each turning a :class:`Variant` (a
symbol and its arrays, apart from the user's net) into a function running one forward.

``'mxnet'``: a SymbolBlock hybridised with ``static_alloc``/``static_shape``; ``'mkldnn'``:
a SymbolBlock fused by ``optimize_for(backend='MKLDNN')``; ``'onnxruntime'``: exported with
``mx.onnx.export_model`` into a temporary folder (a single timed layer: written as one ONNX
node directly) and run by ONNX Runtime's CPU provider.
"""
import contextlib
import io
import os
import shutil
from typing import NamedTuple, Optional, Tuple

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon

from .. import _mx
from ..channels.inputs import flat_outputs
from ..channels.trace import Trace
from ..errors import MissingDependencyError, SurgeryValueError, install_hint

RUNTIMES = ('mxnet', 'mkldnn', 'onnxruntime')


class Variant(NamedTuple):
    """A net to time, apart from the user's: symbol JSON, input names and shapes, arrays."""
    symbol_json: str
    input_names: Tuple[str, ...]
    shapes: Tuple[Tuple[int, ...], ...]
    arrays: dict
    # a single layer (latency models): its operator and attributes, so that ONNX Runtime
    # gets the one node directly instead of a whole export per count
    layer: Optional[dict] = None


def variant_of(net, shapes) -> Variant:
    trace = Trace(net, shapes)
    params = net.collect_params()
    symbol = trace.symbol
    names = set(symbol.list_arguments()) | set(symbol.list_auxiliary_states())
    with autograd.pause():
        arrays = {n: _mx.to_host(_mx.raw_data(p)[0]) for n, p in params.items()
                  if n in names}
    return Variant(symbol.tojson(), tuple(trace.input_names), tuple(shapes), arrays)


_NOISE = [np.zeros(0, dtype=np.float32)]


def fixed_values(shape, scale=1.0):
    """Fixed pseudo-random float32 values of ``shape`` (a latency does not depend on them,
    but zeros or denormals could take other kernel paths): views of one buffer, since
    drawing fresh ones for thousands of timed layers costs more than timing them."""
    n = int(np.prod(shape, dtype=np.int64))
    if _NOISE[0].size < n:
        _NOISE[0] = np.random.RandomState(0).uniform(-1, 1, size=max(n, 1 << 20)).astype(
            np.float32)
    out = _NOISE[0][:n].reshape(shape)
    return out * np.float32(scale) if scale != 1.0 else out


def _batches(variant):
    return [np.array(fixed_values(s)) for s in variant.shapes]


def _symbol_block(variant):
    """``variant`` as a SymbolBlock on ``cpu()``, built in memory (no files: thousands of
    single layers are built for a latency model, and a file round trip cost more than
    timing them)."""
    symbol = mx.sym.load_json(variant.symbol_json)
    with warnings_off():
        block = gluon.SymbolBlock(symbol, [mx.sym.var(n) for n in variant.input_names])
    params = block.collect_params()
    # no gradient arrays: the runners only run forwards
    params.setattr('grad_req', 'null')
    params.load_dict({n: mx.nd.array(a, dtype=a.dtype) for n, a in variant.arrays.items()},
                     ctx=mx.cpu())
    return block


@contextlib.contextmanager
def warnings_off():
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        yield


def _mxnet_runner(variant, folder, threads, fuse=False):
    # the thread count is set once for all runners, by time_variants
    block = _symbol_block(variant)
    xs = [mx.nd.array(b) for b in _batches(variant)]
    with warnings_off():
        if fuse:
            block.optimize_for(*xs, backend='MKLDNN', static_alloc=True, static_shape=True)
        else:
            block.hybridize(static_alloc=True, static_shape=True)

    def run():
        with autograd.predict_mode():
            out = block(*xs)
        for o in flat_outputs(out):
            o.wait_to_read()
    return run


def _mkldnn_runner(variant, folder, threads):
    return _mxnet_runner(variant, folder, threads, fuse=True)


def _onnx_modules():
    try:
        import onnx
        import onnxruntime
    except ImportError:
        raise MissingDependencyError(
            "runtime='onnxruntime' needs onnx and onnxruntime: %s." % install_hint('onnx')
        ) from None
    return onnx, onnxruntime


def _export_onnx(variant, path):
    """MXNet's own exporter, parameters as initializers only (not graph inputs, which would
    stop ONNX Runtime from folding them). Private so that ps.export_onnx can replace it."""
    onnx, _ = _onnx_modules()
    symbol = mx.sym.load_json(variant.symbol_json)
    params = {n: mx.nd.array(a, dtype=a.dtype) for n, a in variant.arrays.items()}
    with contextlib.redirect_stdout(io.StringIO()), warnings_off():
        mx.onnx.export_model(symbol, params, [list(s) for s in variant.shapes],
                             [np.float32] * len(variant.shapes), path)
    model = onnx.load(path)
    inits = {i.name for i in model.graph.initializer}
    keep = [i for i in model.graph.input if i.name not in inits]
    del model.graph.input[:]
    model.graph.input.extend(keep)
    onnx.save(model, path)


def _ints(text, n=None):
    """An MXNet tuple attribute ('(3, 3)') as a list of ints."""
    values = [int(v) for v in str(text).strip('()[] ').split(',') if v.strip()]
    return values if n is None or values else [0] * n


def _onnx_layer(variant, path):
    """The single Convolution or FullyConnected of a latency-model variant as a one-node
    ONNX model (what MXNet's exporter writes for it: Conv, or Gemm with transB)."""
    onnx, _ = _onnx_modules()
    from onnx import TensorProto, helper, numpy_helper
    layer = variant.layer
    attrs = layer['attrs']
    names = ['data', 'weight'] + (['bias'] if layer['bias'] else [])
    inits = [numpy_helper.from_array(np.ascontiguousarray(variant.arrays[n]), n)
             for n in names[1:]]
    if layer['op'] == 'FullyConnected':
        node = helper.make_node('Gemm', names, ['out'], transB=1)
        out_shape = [variant.shapes[0][0], variant.arrays['weight'].shape[0]]
    else:
        kernel = _ints(attrs['kernel'])
        nd_ = len(kernel)
        pads = _ints(attrs.get('pad', '()')) or [0] * nd_
        node = helper.make_node(
            'Conv', names, ['out'], kernel_shape=kernel,
            strides=_ints(attrs.get('stride', '()')) or [1] * nd_, pads=pads + pads,
            dilations=_ints(attrs.get('dilate', '()')) or [1] * nd_,
            group=int(attrs.get('num_group', 1)))
        out_shape = None
    graph = helper.make_graph(
        [node], 'layer',
        [helper.make_tensor_value_info('data', TensorProto.FLOAT, list(variant.shapes[0]))],
        [helper.make_tensor_value_info('out', TensorProto.FLOAT, out_shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 13)])
    onnx.save(model, path)


def _onnxruntime_runner(variant, folder, threads):
    _, ort = _onnx_modules()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    os.mkdir(folder)
    try:
        path = os.path.join(folder, 'net.onnx')
        if variant.layer is not None:
            _onnx_layer(variant, path)
        else:
            _export_onnx(variant, path)
        session = ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])
    finally:
        # the session holds the model in memory: a latency model builds thousands of
        # variants, and their files would otherwise pile up until the chunk ends (or for
        # good, when the process is killed)
        shutil.rmtree(folder, ignore_errors=True)
    feed = {i.name: b for i, b in zip(session.get_inputs(), _batches(variant))}

    def run():
        session.run(None, feed)
    run.session = session       # tests read back the options it runs with
    return run


BUILDERS = {'mxnet': _mxnet_runner, 'mkldnn': _mkldnn_runner,
             'onnxruntime': _onnxruntime_runner}


def check_runtime(runtime):
    if runtime not in RUNTIMES:
        raise SurgeryValueError('runtime must be one of %s, got %r (see docs/latency.md).'
                                % (', '.join(repr(r) for r in RUNTIMES), runtime))
    if runtime == 'onnxruntime':
        _onnx_modules()

