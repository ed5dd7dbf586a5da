"""Latency measured on the runtime that serves a net (docs/latency.md).

The net is traced to a symbol and its parameters copied (replica 0) into a separate runner,
so the measured net itself is never hybridised, fused or exported: it is left exactly as
it was. Runtimes are a table of builders: ``'mxnet'`` (a SymbolBlock hybridised with
``static_alloc``/``static_shape``), ``'mkldnn'`` (a SymbolBlock fused by
``optimize_for(backend='MKLDNN')``) and ``'onnxruntime'`` (exported with
``mx.onnx.export_model`` into a temporary folder and run by ONNX Runtime's CPU provider).
"""
import contextlib
import io
import json
import math
import os
import sys
import tempfile
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import List, NamedTuple, Optional, Tuple

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon

from . import _mx
from ._checks import is_int, is_real
from ._files import check_path, reading, write_bytes
from ._plot import pyplot, save_figure
from .channels.exported import deletions, rewrite
from .channels.inputs import finish_deferred, flat_outputs, input_shapes, require_hybrid
from .channels.prune import selected_groups
from .channels.trace import Trace, build
from .errors import (
    FileFormatError,
    MissingDependencyError,
    SurgeryTypeError,
    SurgeryValueError,
    install_hint,
)
from .pruning_core import prune_count
from .select import MASK_SUFFIX

__all__ = ['Latency', 'measure_latency', 'compare_latency', 'LatencyModel', 'latency_model']

RUNTIMES = ('mxnet', 'mkldnn', 'onnxruntime')

# Tests set this to f(runtime, variant) -> seconds, a deterministic fake clock, so that the
# logic around the timing is checked without timing anything.
_TIMER = None


class Latency(NamedTuple):
    """Seconds per forward of the whole batch, as :func:`measure_latency` measured them."""
    median: float
    p10: float
    p90: float
    runtime: str
    shapes: Tuple[Tuple[int, ...], ...]
    threads: int
    repeats: int


class _Variant(NamedTuple):
    """A net to time, apart from the user's: symbol JSON, input names and shapes, arrays."""
    symbol_json: str
    input_names: Tuple[str, ...]
    shapes: Tuple[Tuple[int, ...], ...]
    arrays: dict
    # a single layer (latency models): its operator and attributes, so that ONNX Runtime
    # gets the one node directly instead of a whole export per count
    layer: Optional[dict] = None


def _variant_of(net, shapes) -> _Variant:
    trace = Trace(net, shapes)
    params = net.collect_params()
    symbol = trace.symbol
    names = set(symbol.list_arguments()) | set(symbol.list_auxiliary_states())
    with autograd.pause():
        arrays = {n: _mx.raw_data(p)[0].asnumpy() for n, p in params.items()
                  if n in names}
    return _Variant(symbol.tojson(), tuple(trace.input_names), tuple(shapes), arrays)


_NOISE = [np.zeros(0, dtype=np.float32)]


def _values(shape, scale=1.0):
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
    return [np.array(_values(s)) for s in variant.shapes]


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
    os.mkdir(folder)
    path = os.path.join(folder, 'net.onnx')
    if variant.layer is not None:
        _onnx_layer(variant, path)
    else:
        _export_onnx(variant, path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])
    feed = {i.name: b for i, b in zip(session.get_inputs(), _batches(variant))}

    def run():
        session.run(None, feed)
    run.session = session       # tests read back the options it runs with
    return run


_BUILDERS = {'mxnet': _mxnet_runner, 'mkldnn': _mkldnn_runner,
             'onnxruntime': _onnxruntime_runner}


def _progress(total, desc):
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    # disable=None: silent when stderr is not a terminal
    return tqdm(total=total, desc=desc, unit='run', leave=False, disable=None,
                file=sys.stderr)


# Runners are built and timed in chunks of at most this many, or this many parameter
# entries: thousands of single layers held at once would not fit in memory.
_CHUNK = 48
_CHUNK_ENTRIES = 1 << 25


def _chunks(variants):
    chunk, entries = [], 0
    for i, v in enumerate(variants):
        size = sum(a.size for a in v.arrays.values())
        if chunk and (len(chunk) >= _CHUNK or entries + size > _CHUNK_ENTRIES):
            yield chunk
            chunk, entries = [], 0
        chunk.append(i)
        entries += size
    if chunk:
        yield chunk


# With ``settle``, every variant gets this many timed runs, and only the ones whose spread
# is still above ``settle`` get the rest of ``repeats``.
_SETTLE_AFTER = 3


def _settled(samples, settle):
    return settle is not None and len(samples) >= _SETTLE_AFTER and \
        max(samples) - min(samples) <= settle * float(np.median(samples))


def time_variants(runtime, variants, repeats, warmup, threads, desc='latency', settle=None):
    """Seconds per forward of each variant: ``repeats`` samples each, taken round-robin
    over a chunk of variants (interleaved, so a load change on the machine hits every
    variant of the chunk alike; callers put the variants they compare next to each other)
    after ``warmup`` forwards of each. With ``settle`` (a fraction), a variant stops after
    ``_SETTLE_AFTER`` samples once their range is within ``settle`` of their median: more
    samples would not move a median that the range already pins down."""
    samples = [[] for _ in variants]
    if _TIMER is not None:
        for _ in range(repeats):
            for i, v in enumerate(variants):
                if not _settled(samples[i], settle):
                    samples[i].append(float(_TIMER(runtime, v)))
        return [np.asarray(s) for s in samples]
    bar = _progress(len(variants) * (repeats + warmup), desc)
    try:
        with _omp_threads(threads if runtime != 'onnxruntime' else None):
            for chunk in _chunks(variants):
                with tempfile.TemporaryDirectory(prefix='paramsurgery-latency-') as folder:
                    runners = []
                    for i in chunk:
                        sub = os.path.join(folder, str(i))
                        runners.append((i, _BUILDERS[runtime](variants[i], sub, threads)))
                    for _ in range(warmup):
                        for _, run in runners:
                            run()
                            if bar is not None:
                                bar.update(1)
                    for _ in range(repeats):
                        for i, run in runners:
                            if _settled(samples[i], settle):
                                continue
                            start = time.perf_counter()
                            run()
                            samples[i].append(time.perf_counter() - start)
                            if bar is not None:
                                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return [np.asarray(s) for s in samples]


@contextlib.contextmanager
def _omp_threads(threads):
    """MXNet's operator thread count fixed to ``threads`` inside, put back after (the
    count is process-wide: the caller's later forwards run as they did before)."""
    if threads is None:
        yield
        return
    before = _mx.set_omp_threads(threads)
    try:
        yield
    finally:
        _mx.set_omp_threads(before)


def _check_runtime(runtime):
    if runtime not in RUNTIMES:
        raise SurgeryValueError('runtime must be one of %s, got %r (see docs/latency.md).'
                                % (', '.join(repr(r) for r in RUNTIMES), runtime))
    if runtime == 'onnxruntime':
        _onnx_modules()


def _check_count(name, value, low):
    if isinstance(value, (bool, np.bool_)) or not is_int(value):
        raise SurgeryTypeError('%s must be an int >= %d, got %s %r.'
                               % (name, low, type(value).__name__, value))
    if value < low:
        raise SurgeryValueError('%s=%d: it must be >= %d.' % (name, value, low))
    return int(value)


def _default_threads():
    """What MXNet and ONNX Runtime use when not told: ``OMP_NUM_THREADS`` or every CPU."""
    try:
        return max(1, int(os.environ.get('OMP_NUM_THREADS', '')))
    except ValueError:
        return os.cpu_count() or 1


def _threads(threads):
    if threads is None:
        return _default_threads()
    return _check_count('threads', threads, 1)


def _summary(seconds, runtime, shapes, threads, repeats):
    p10, median, p90 = (float(v) for v in np.percentile(seconds, [10, 50, 90]))
    return Latency(median, p10, p90, runtime, tuple(shapes), threads, repeats)


def measure_latency(net, *, inputs, runtime: str = 'mxnet', repeats: int = 20,
                    warmup: int = 3, threads: Optional[int] = None) -> Latency:
    """Measure how long one forward of the whole batch takes on a runtime.

    The net is traced and its parameters copied into a separate runner, so the net is left
    exactly as it was (parameters, masks, hybridisation state).

    Parameters
    ----------
    net : HybridBlock
        An initialised network.
    inputs : NDArray or tuple of int or list of them
        A batch (or its shape) per data input.
    runtime : {'mxnet', 'mkldnn', 'onnxruntime'}, default 'mxnet'
        ``'mxnet'``: hybridised with ``static_alloc=True, static_shape=True``;
        ``'mkldnn'``: fused by ``optimize_for(backend='MKLDNN')``; ``'onnxruntime'``:
        exported by MXNet's exporter and run by ONNX Runtime's CPU provider (needs the
        ``[onnx]`` extra).
    repeats : int, default 20
        Timed forwards (the median and percentiles are over them).
    warmup : int, default 3
        Untimed forwards first.
    threads : int, default None
        Compute threads (MXNet's OpenMP threads, ONNX Runtime's intra-op threads); None:
        ``OMP_NUM_THREADS`` or the number of CPUs. Reported in the result.

    Returns
    -------
    Latency
        ``median``, ``p10``, ``p90`` (seconds), ``runtime``, ``shapes``, ``threads``,
        ``repeats``.

    Raises
    ------
    SurgeryTypeError
        ``net`` is not a HybridBlock, or a wrong argument type.
    SurgeryValueError
        An unknown runtime, a count out of range, or inputs that do not fit the net.
    MissingDependencyError
        ``runtime='onnxruntime'`` without onnx and onnxruntime installed.

    Examples
    --------
    >>> import mxnet as mx, paramsurgery as ps
    >>> from mxnet.gluon import nn
    >>> net = nn.HybridSequential()
    >>> net.add(nn.Conv2D(8, 3, in_channels=3), nn.Activation('relu'))
    >>> net.initialize()
    >>> lat = ps.measure_latency(net, inputs=(1, 3, 16, 16), repeats=3, warmup=1, threads=1)
    >>> lat.runtime, lat.shapes, lat.threads, lat.p10 <= lat.median <= lat.p90
    ('mxnet', ((1, 3, 16, 16),), 1, True)
    """
    return _measure([net], inputs, runtime, repeats, warmup, threads, 'measure_latency')[0]


def _measure(nets, inputs, runtime, repeats, warmup, threads, what):
    for net in nets:
        require_hybrid(net, what)
    _check_runtime(runtime)
    repeats = _check_count('repeats', repeats, 1)
    warmup = _check_count('warmup', warmup, 0)
    threads = _threads(threads)
    shapes = input_shapes(inputs)
    variants = []
    for net in nets:
        finish_deferred(net, inputs, shapes)
        variants.append(_variant_of(net, shapes))
    seconds = time_variants(runtime, variants, repeats, warmup, threads)
    return [_summary(s, runtime, shapes, threads, repeats) for s in seconds]


def compare_latency(nets, *, inputs, runtime: str = 'mxnet', repeats: int = 20,
                    warmup: int = 3, threads: Optional[int] = None) -> List[Latency]:
    """Measure several nets on one runtime, interleaved, so that their latencies compare.

    As :func:`measure_latency` for each net, but the timed forwards are taken round-robin
    over the nets (one forward of each, then again), so that a change of load on the machine
    hits every net alike: compare medians of one call, not of separate calls. Every net is
    left exactly as it was.

    Parameters
    ----------
    nets : list of HybridBlock
        Initialised networks taking the same inputs (a dense net and its shrunk copies).
    inputs : NDArray or tuple of int or list of them
        A batch (or its shape) per data input, for every net.
    runtime, repeats, warmup, threads
        As in :func:`measure_latency`.

    Returns
    -------
    list of Latency
        One per net, in order.

    Raises
    ------
    SurgeryTypeError
        ``nets`` is not a non-empty list of HybridBlocks, or a wrong argument type.
    SurgeryValueError
        As in :func:`measure_latency`.
    MissingDependencyError
        ``runtime='onnxruntime'`` without onnx and onnxruntime installed.

    Examples
    --------
    >>> import mxnet as mx, paramsurgery as ps
    >>> from mxnet.gluon import nn
    >>> wide, narrow = nn.Conv2D(32, 3, in_channels=3), nn.Conv2D(8, 3, in_channels=3)
    >>> for net in (wide, narrow):
    ...     net.initialize()
    >>> lats = ps.compare_latency([wide, narrow], inputs=(1, 3, 16, 16), repeats=3, threads=1)
    >>> [lat.repeats for lat in lats], lats[0].shapes
    ([3, 3], ((1, 3, 16, 16),))
    """
    if isinstance(nets, (str, bytes, gluon.Block)) or not isinstance(nets, (list, tuple)) \
            or not nets:
        raise SurgeryTypeError('nets must be a non-empty list of HybridBlocks, got %s.'
                               % type(nets).__name__)
    return _measure(list(nets), inputs, runtime, repeats, warmup, threads, 'compare_latency')


# --------------------------------------------------------------------------- latency models

_MODEL_FORMAT = 'paramsurgery-latency-model'
_MODEL_VERSION = 1
_TIMED_OPS = ('Convolution', 'FullyConnected')
# Calibration nets measured whole next to the dense one: every group at the count that
# these amounts keep, rounded to a multiple of 8 (aligned for oneDNN's blocked layouts) or
# made odd (never aligned, also where every exact count would be: resnet's sizes), so the
# fit sees both sides of what a fused runtime does between layers.
_CALIBRATION = ((0.5, 'odd'), (0.5, 8), (0.25, 'odd'), (0.75, 8))
# and at the fast counts (of the layers alone) nearest to what these amounts keep
_FAST_CALIBRATION = (0.5, 0.75)
# A single layer's samples within this fraction of their median need no more repeats: the
# fast counts compare layers whose times differ by more (an aligned count of oneDNN is
# 1.5-3x faster than its unaligned neighbours).
_LAYER_SETTLE = 0.05
# The whole nets are few and decide every predicted ratio: at least this many repeats.
_WHOLE_REPEATS = 10


class _Layer(NamedTuple):
    """A Convolution or FullyConnected layer whose shape depends on selected groups."""
    node: str
    op: str
    attrs: dict
    data_shape: Tuple[int, ...]      # as the layer reads it (FullyConnected: flattened)
    weight_shape: Tuple[int, ...]
    has_bias: bool
    ins: Tuple[Tuple[str, int], ...]    # (group, stride) covering the input channels
    outs: Tuple[Tuple[str, int], ...]   # (group, stride) covering the output channels
    depthwise: bool


def _source(nodes, entry):
    node = nodes[entry[0]]
    while node['op'] != 'null' and node['inputs']:
        node = nodes[node['inputs'][0][0]]
    return node['name']


def _layers(trace, groups):
    """The timed layers: every Convolution / FullyConnected reading or producing channels of
    one of ``groups``."""
    covers = {}
    for g in groups:
        for member, role in zip(g.members, g.roles):
            name, axis, _, stride = member
            covers.setdefault(name, []).append((g.name, axis, stride, role))
    nodes = trace.nodes
    out = []
    for nid, node in enumerate(nodes):
        if node['op'] not in _TIMED_OPS or len(node['inputs']) < 2:
            continue
        weight = _source(nodes, node['inputs'][1])
        mine = covers.get(weight)
        if not mine:
            continue
        attrs = dict(node.get('attrs', {}))
        wshape = trace.shapes.get(weight)
        data = trace.shape(*node['inputs'][0][:2])
        if wshape is None or data is None:
            continue
        depthwise = node['op'] == 'Convolution' and int(attrs.get('num_group', 1)) > 1 and \
            int(attrs.get('num_group', 1)) == int(attrs['num_filter'])
        if node['op'] == 'FullyConnected' and attrs.get('flatten', 'True') in ('True', '1'):
            data = (data[0], int(np.prod(data[1:])))
        ins = tuple((g, st) for g, axis, st, role in mine if axis == 1 and role == 'input')
        outs = tuple((g, st) for g, axis, st, role in mine
                     if axis == 0 and role in ('weight', 'depthwise'))
        if depthwise:
            ins = outs
        no_bias = attrs.get('no_bias', 'False') in ('True', '1')
        out.append(_Layer(node['name'], node['op'], attrs, tuple(data), tuple(wshape),
                          not no_bias, ins, outs, depthwise))
    return out


def _dims(layer, kept, sizes):
    """``(input channels, output channels)`` of ``layer`` with the groups at ``kept``."""
    cin = layer.data_shape[1]
    cout = layer.weight_shape[0]
    for g, st in layer.ins:
        cin -= (sizes[g] - kept.get(g, sizes[g])) * st
    for g, st in layer.outs:
        cout -= (sizes[g] - kept.get(g, sizes[g])) * st
    return cin, cout


def _layer_variant(layer, cin, cout):
    """The layer alone, with ``cin`` input and ``cout`` output channels, random values."""
    data = mx.sym.var('data')
    attrs = {k: v for k, v in layer.attrs.items() if not k.startswith('__')}
    args = {'data': data, 'weight': mx.sym.var('weight'), 'name': 'layer'}
    if layer.has_bias:
        args['bias'] = mx.sym.var('bias')
    shape = (layer.data_shape[0], cin) + tuple(layer.data_shape[2:])
    if layer.op == 'FullyConnected':
        attrs['num_hidden'] = str(cout)
        wshape = (cout, cin)
        symbol = mx.sym.FullyConnected(**args, **attrs)
    else:
        attrs['num_filter'] = str(cout)
        if layer.depthwise:
            attrs['num_group'] = str(cout)
        groups = int(attrs.get('num_group', 1))
        wshape = (cout, cin // groups) + tuple(layer.weight_shape[2:])
        symbol = mx.sym.Convolution(**args, **attrs)
    arrays = {'weight': _values(wshape)}
    if layer.has_bias:
        arrays['bias'] = np.zeros(cout, dtype=np.float32)
    return _Variant(symbol.tojson(), ('data',), (shape,), arrays,
                    {'op': layer.op, 'attrs': attrs, 'bias': layer.has_bias})


def _shrunk_variant(variant, groups, kept):
    """``variant`` with the last channels of each group removed (values do not matter for
    timing; the shapes do): the arrays sliced, the operators' channel counts rewritten."""
    chosen = [np.arange(kept[g.name], g.size) if g.name in kept else np.zeros(0, np.int64)
              for g in groups]
    masks = {n[:-len(MASK_SUFFIX)]: None for n in variant.arrays if n.endswith(MASK_SUFFIX)}
    arrays = dict(variant.arrays)
    for name, axes in deletions(groups, chosen, masks).items():
        if name not in arrays:
            continue
        for axis, rows in axes.items():
            arrays[name] = np.delete(arrays[name], rows, axis=axis)
    symbol_json = rewrite(variant.symbol_json, {n: a.shape for n, a in arrays.items()})
    return _Variant(symbol_json, variant.input_names, variant.shapes, arrays)


def _count_step(size):
    """8 up to 256 channels, then doubled with the size (16 up to 512, 32 up to 1024, ...):
    at most 32 multiples per group. Every step is a multiple of 8 (oneDNN's blocks), and
    a wide group's neighbouring counts differ too little in time to be worth timing."""
    step = 8
    while size > 32 * step:
        step *= 2
    return step


def _default_counts(size):
    """The multiples of :func:`_count_step` up to ``size``, the counts amounts 0.1 ... 0.9
    keep, ``size``."""
    step = _count_step(size)
    counts = set(range(step, size + 1, step)) | {size}
    for tenth in range(1, 10):
        counts.add(max(1, size - prune_count(tenth / 10, size)))
    return sorted(counts)


def _uniform(groups, amount, round_to):
    kept = {}
    for g in groups:
        k = g.size - prune_count(amount, g.size)
        if round_to == 'odd':
            k = k - 1 if k % 2 == 0 and k > 1 else k
        elif round_to > 1:
            k = max(round_to, int(math.floor(k / round_to + 0.5)) * round_to)
        kept[g.name] = max(1, min(g.size, k))
    return kept


def _misaligned(kept, sizes, weights):
    """Channel volume (``weights``: activation elements per channel) of the groups whose
    kept count is not a multiple of 8: what a fused runtime pays layout reorders for."""
    return float(sum(weights[g] * kept.get(g, sizes[g]) for g in sizes
                     if kept.get(g, sizes[g]) % 8))


class LatencyModel:
    """Measured latency of a net against the kept channel counts of its groups.

    Built by :func:`latency_model`; see docs/latency.md#latency-models.

    Attributes
    ----------
    runtime : str
    shapes : tuple of tuple of int
        The input shapes it was measured with.
    threads : int
    sizes : dict of str -> int
        The modelled groups and their channel counts.
    table : dict of str -> dict of int -> float
        Per group: the summed seconds of the layers whose shapes depend on it, timed alone,
        with the group at each measured kept count (the other groups dense).
    measured : float
        The whole dense net, measured (seconds per forward).
    dense : float
        The model's prediction for the dense net.
    calibration : list of dict
        The whole nets measured to correct the per-layer sums (``kept``, ``seconds``).
    """

    def __init__(self, data):
        self._data = data
        self.runtime = data['runtime']
        self.shapes = tuple(tuple(s) for s in data['shapes'])
        self.threads = int(data['threads'])
        self.sizes = OrderedDict((g, int(n)) for g, n in data['sizes'])
        self.table = OrderedDict(
            (g, OrderedDict((int(c), float(t)) for c, t in data['table'][g]))
            for g in self.sizes)
        self.measured = float(data['measured'])
        self.calibration = [dict(kept=dict(c['kept']), seconds=float(c['seconds']))
                            for c in data['calibration']]
        self._layers = data['layers']
        self._weights = dict(data['weights'])
        self._fit = tuple(float(v) for v in data['fit'])
        self.dense = self.predict({})

    # ----------------------------------------------------------------------- prediction

    def _sum(self, kept):
        """The per-layer sum: each layer's time from its tables (interpolated between the
        measured counts), several groups combined as independent factors."""
        total = 0.0
        for layer in self._layers:
            base = layer['dense']
            t = base
            for g, counts in layer['tables'].items():
                k = kept.get(g, self.sizes[g])
                if k == self.sizes[g]:
                    continue
                xs = [int(c) for c, _ in counts]
                ys = [float(s) for _, s in counts]
                t *= float(np.interp(k, xs, ys)) / base if base > 0 else 1.0
            total += t
        return total

    def _check_kept(self, kept):
        if not isinstance(kept, Mapping):
            raise SurgeryTypeError('kept must be a dict group name -> kept channel count, '
                                   'got %s.' % type(kept).__name__)
        out = {}
        for name, k in kept.items():
            if name not in self.sizes:
                raise SurgeryValueError(
                    "kept names channel group %r, which this latency model does not "
                    "model. Its groups are: %s." % (name, ', '.join(list(self.sizes)[:5])
                                                     + (', ...' if len(self.sizes) > 5
                                                        else '')))
            if isinstance(k, (bool, np.bool_)) or not is_int(k):
                raise SurgeryTypeError("kept[%r] must be an int (a channel count), got %s %r."
                                       % (name, type(k).__name__, k))
            if not 1 <= k <= self.sizes[name]:
                raise SurgeryValueError("kept[%r]=%d: a kept count of group %r is from 1 to "
                                        "its size %d." % (name, k, name, self.sizes[name]))
            out[name] = int(k)
        return out

    def predict(self, kept: Mapping[str, int]) -> float:
        """Predicted seconds per forward of the whole net with each named group at its kept
        count (unnamed groups dense).

        Examples
        --------
        >>> import mxnet as mx, paramsurgery as ps
        >>> from mxnet.gluon import nn
        >>> net = nn.HybridSequential(prefix='n_')
        >>> with net.name_scope():
        ...     net.add(nn.Conv2D(16, 3, in_channels=3), nn.Activation('relu'),
        ...             nn.Conv2D(4, 3, in_channels=16))
        >>> net.initialize()
        >>> model = ps.latency_model(net, inputs=(1, 3, 16, 16), repeats=1, threads=1)
        >>> model.predict({'n_conv0_weight': 8}) > 0
        True
        """
        kept = self._check_kept(kept)
        a, b, c = self._fit
        full = {g: n for g, n in self.sizes.items()}
        full.update(kept)
        return a * self._sum(kept) + b * _misaligned(full, self.sizes, self._weights) + c

    def fast_counts(self, name: str) -> List[int]:
        """The measured kept counts of group ``name`` that are faster than every larger
        count (where the runtime speeds up), smallest first.

        Examples
        --------
        >>> import mxnet as mx, paramsurgery as ps
        >>> from mxnet.gluon import nn
        >>> net = nn.HybridSequential(prefix='n_')
        >>> with net.name_scope():
        ...     net.add(nn.Conv2D(16, 3, in_channels=3), nn.Conv2D(4, 3, in_channels=16))
        >>> net.initialize()
        >>> model = ps.latency_model(net, inputs=(1, 3, 16, 16), repeats=1, threads=1)
        >>> model.fast_counts('n_conv0_weight')[-1]     # the size is always one
        16
        """
        if name not in self.sizes:
            raise SurgeryValueError(
                "fast_counts: channel group %r is not in this latency model; its groups "
                "are: %s." % (name, ', '.join(list(self.sizes)[:5])
                              + (', ...' if len(self.sizes) > 5 else '')))
        counts = sorted(self.table[name])
        times = {c: self.predict({name: c}) for c in counts}
        fast, best = [], float('inf')
        for c in reversed(counts):
            if times[c] < best or c == counts[-1]:
                fast.append(c)
                best = min(best, times[c])
        return sorted(fast)

    def round(self, name: str, count: int) -> int:
        """The fast count of group ``name`` nearest to ``count`` (ties to the larger)."""
        fast = self.fast_counts(name)
        return min(fast, key=lambda c: (abs(c - count), -c))

    # ----------------------------------------------------------------------- views

    def __str__(self):
        lines = ['latency model: %s, inputs %s, %d thread%s; dense measured %.3f ms, '
                 'predicted %.3f ms' % (self.runtime, ', '.join(map(str, self.shapes)),
                                        self.threads, '' if self.threads == 1 else 's',
                                        1e3 * self.measured, 1e3 * self.dense)]
        rows = [('group', 'size', 'fast counts', 'ms (kept: layers alone)')]
        for g, size in self.sizes.items():
            fast = self.fast_counts(g)
            table = self.table[g]
            shown = ' '.join('%d:%.3f' % (c, 1e3 * table[c]) for c in sorted(table)[::4])
            rows.append((g, str(size), ' '.join(map(str, fast[-8:])), shown))
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        lines += ['%-*s  %*s  %-*s  %s' % (widths[0], r[0], widths[1], r[1], widths[2], r[2],
                                           r[3]) for r in rows]
        lines.insert(2, '-' * len(lines[1]))
        return '\n'.join(lines)

    def __repr__(self):
        return 'LatencyModel(%r, %d groups, dense %.3f ms measured)' % (
            self.runtime, len(self.sizes), 1e3 * self.measured)

    def plot(self, path) -> None:
        """A PNG: per group, the latency of its layers against the kept count, the fast
        counts marked. Needs matplotlib."""
        path = check_path('path', path, write=True)
        plt = pyplot()
        names = list(self.sizes)
        columns = min(4, max(1, len(names)))
        rows = (len(names) + columns - 1) // columns
        fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.4 * rows),
                                 squeeze=False)
        for ax, name in zip(axes.flat, names):
            table = self.table[name]
            counts = sorted(table)
            ax.plot(counts, [1e3 * table[c] for c in counts], '-', color='0.4', linewidth=1)
            fast = self.fast_counts(name)
            ax.plot(fast, [1e3 * table[c] for c in fast], 'o', color='tab:green', markersize=3)
            ax.set_title(name, fontsize=7)
            ax.tick_params(labelsize=6)
        for ax in list(axes.flat)[len(names):]:
            ax.axis('off')
        fig.suptitle('%s: ms of the layers each group shapes, timed alone, against the kept '
                     'count (green: fast counts)' % self.runtime, fontsize=8)
        save_figure(fig, path, dpi=100)

    # ----------------------------------------------------------------------- files

    def save(self, path) -> None:
        """Write the model to ``path`` as JSON, atomically."""
        path = check_path('path', path, write=True)
        data = dict(self._data, format=_MODEL_FORMAT, version=_MODEL_VERSION)
        write_bytes(path, json.dumps(data, indent=1).encode('utf-8'))

    @classmethod
    def load(cls, path) -> 'LatencyModel':
        """Read a model written by :meth:`save`; a damaged file raises
        :class:`FileFormatError` naming what is wrong."""
        path = check_path('path', path)
        with reading(path, 'latency model (JSON written by LatencyModel.save)',
                     'Write it again with LatencyModel.save.'):
            with open(path, 'rb') as f:
                data = json.loads(f.read().decode('utf-8'))
            _check_model(path, data)
            return cls(data)


def _is_seconds(v):
    return is_real(v) and math.isfinite(v) and v >= 0


def _is_table(v):
    return isinstance(v, list) and bool(v) and all(
        isinstance(r, list) and len(r) == 2 and is_int(r[0]) and r[0] >= 1 and _is_seconds(r[1])
        for r in v)


def _check_model(path, data):
    def bad(what):
        raise FileFormatError(
            "'%s' is not a readable latency model (JSON written by LatencyModel.save): %s. "
            "The file is damaged or was edited by hand; build it again with ps.latency_model "
            "and save it." % (path, what))
    if not isinstance(data, dict):
        bad('the file holds %s, not an object' % type(data).__name__)
    if data.get('format') != _MODEL_FORMAT or data.get('version') != _MODEL_VERSION:
        bad('format %r version %r' % (data.get('format'), data.get('version')))
    if data.get('runtime') not in RUNTIMES:
        bad('runtime %r' % (data.get('runtime'),))
    for field, check, should in (
            ('shapes', lambda v: isinstance(v, list) and bool(v) and all(
                isinstance(s, list) and all(is_int(d) and d >= 1 for d in s) for s in v),
             'a list of shapes'),
            ('threads', lambda v: is_int(v) and v >= 1, 'an integer >= 1'),
            ('sizes', lambda v: isinstance(v, list) and all(
                isinstance(r, list) and len(r) == 2 and isinstance(r[0], str) and is_int(r[1])
                and r[1] >= 1 for r in v), 'a list of [group, size]'),
            ('table', lambda v: isinstance(v, dict) and all(map(_is_table, v.values())),
             'an object group -> [[count, seconds], ...]'),
            ('measured', _is_seconds, 'seconds (a number >= 0)'),
            ('fit', lambda v: isinstance(v, list) and len(v) == 3 and all(
                is_real(x) and math.isfinite(x) for x in v), 'three numbers'),
            ('weights', lambda v: isinstance(v, dict) and all(map(_is_seconds, v.values())),
             'an object group -> number'),
            ('calibration', lambda v: isinstance(v, list) and all(
                isinstance(c, dict) and isinstance(c.get('kept'), dict) and
                _is_seconds(c.get('seconds')) for c in v), 'a list of {kept, seconds}'),
            ('layers', lambda v: isinstance(v, list) and all(
                isinstance(layer, dict) and _is_seconds(layer.get('dense')) and
                isinstance(layer.get('tables'), dict) and
                all(map(_is_table, layer['tables'].values())) for layer in v),
             'a list of {dense, tables}')):
        if field not in data:
            bad('it has no field %r' % field)
        if not check(data[field]):
            bad('%r should be %s' % (field, should))
    sizes = {g for g, _ in data['sizes']}
    for where, names in [('table', data['table']), ('weights', data['weights'])] + [
            ('layer %d' % i, layer['tables']) for i, layer in enumerate(data['layers'])]:
        unknown = set(names) - sizes
        if unknown:
            bad('%s names group %r, which is not in sizes' % (where, sorted(unknown)[0]))
    if set(data['table']) != sizes:
        bad('table has no row for group %r' % sorted(sizes - set(data['table']))[0])


def _check_counts(counts, groups):
    """``{group: sorted kept counts}`` from the ``counts`` argument."""
    sizes = {g.name: g.size for g in groups}
    if counts is None:
        return {g: _default_counts(n) for g, n in sizes.items()}
    if isinstance(counts, Mapping):
        unknown = [n for n in counts if n not in sizes]
        if unknown:
            raise SurgeryValueError(
                "counts names channel group %r, which is not a selected prunable group; the "
                "groups are: %s." % (unknown[0], ', '.join(list(sizes)[:5])))
        given = dict(counts)
        get = lambda g: given.get(g.name, _default_counts(g.size))   # noqa: E731
    elif callable(counts):
        get = counts
    else:
        raise SurgeryTypeError('counts must be None, a dict group name -> list of kept '
                               'counts, or a callable f(group) -> counts, got %s.'
                               % type(counts).__name__)
    out = {}
    for g in groups:
        one = get(g)
        try:
            values = list(one)
        except TypeError:
            raise SurgeryTypeError("counts for channel group '%s' must be a list of ints, got "
                                   "%s." % (g.name, type(one).__name__)) from None
        for c in values:
            if isinstance(c, (bool, np.bool_)) or not is_int(c):
                raise SurgeryTypeError("counts for channel group '%s' must be ints, got %s %r."
                                       % (g.name, type(c).__name__, c))
            if not 1 <= c <= g.size:
                raise SurgeryValueError("counts for channel group '%s' holds %d; a kept count "
                                        "is from 1 to the size %d." % (g.name, c, g.size))
        out[g.name] = sorted(set(int(c) for c in values) | {g.size})
    return out


def _fit(sums, misaligned, seconds):
    """``(a, b, c)`` with ``seconds ~ a * sum + b * misaligned + c``, ``a, b >= 0``: the
    per-layer sums scaled to the whole net, what unaligned counts cost between layers, and
    what no group shapes. Least squares over the whole-net measurements."""
    best = None
    x = np.column_stack([sums, misaligned, np.ones(len(sums))])
    y = np.asarray(seconds)
    # the non-negative solutions lie on the faces: try each subset of free columns
    for cols in ([0, 1, 2], [0, 2], [1, 2], [2], [0, 1], [0]):
        coef, *_ = np.linalg.lstsq(x[:, cols], y, rcond=None)
        full = np.zeros(3)
        full[cols] = coef
        if full[0] < 0 or full[1] < 0:
            continue
        err = float(np.sum((x @ full - y) ** 2))
        if best is None or err < best[0] - 1e-30:
            best = (err, full)
    return tuple(float(v) for v in best[1])


def latency_model(net, *, inputs, runtime: str = 'mxnet', key=None, counts=None,
                  repeats: int = 5, threads: Optional[int] = None) -> LatencyModel:
    """Measure how the latency of a net on a runtime depends on its kept channel counts.

    For every selected prunable channel group, the Convolution and FullyConnected layers
    whose shapes depend on it are timed alone on the runtime, with their real input shape,
    at candidate kept counts of the group (the other groups dense); a layer that depends on
    two groups is modelled in both, the two effects combined as independent factors. Timing
    layers one by one cannot see what a fused runtime does between them (oneDNN layout
    reorders, fusion), so the whole net is also measured, dense and shrunk at a few uniform
    amounts (rounded to multiples of 8, and made odd), and the per-layer sums are corrected to
    fit those measurements (docs/latency.md#what-the-model-cannot-see). The net is left
    exactly as it was: every timed net is a separate copy.

    Parameters
    ----------
    net : HybridBlock
        An initialised network.
    inputs : NDArray or tuple of int or list of them
        A batch (or its shape) per data input: the batch size matters.
    runtime : {'mxnet', 'mkldnn', 'onnxruntime'}, default 'mxnet'
        As in :func:`measure_latency`.
    key : str or Parameter or list or callable, default None
        The groups to model, selected by a producing weight as in :func:`prune_channels`;
        None: every prunable group.
    counts : dict or callable, default None
        The kept counts to time: a dict group name -> list of counts (groups not named get
        the default), or ``f(group) -> counts``. Default: every multiple of 8 up to the
        size (of 16 above 256 channels, 32 above 512, 64 above 1024: at most 32 multiples),
        and the counts amounts 0.1 ... 0.9 keep. The size is always added.
    repeats : int, default 5
        Timed runs of each layer (and whole net); each after one untimed run.
    threads : int, default None
        As in :func:`measure_latency`.

    Returns
    -------
    LatencyModel

    Raises
    ------
    SurgeryTypeError
        ``net`` is not a HybridBlock, or a wrong argument type.
    SurgeryValueError
        An unknown runtime, a bad count, a key that selects no prunable group.
    MissingDependencyError
        ``runtime='onnxruntime'`` without onnx and onnxruntime installed.

    Examples
    --------
    >>> import mxnet as mx, paramsurgery as ps
    >>> from mxnet.gluon import nn
    >>> net = nn.HybridSequential(prefix='n_')
    >>> with net.name_scope():
    ...     net.add(nn.Conv2D(16, 3, in_channels=3), nn.Activation('relu'),
    ...             nn.Conv2D(4, 3, in_channels=16))
    >>> net.initialize()
    >>> model = ps.latency_model(net, inputs=(1, 3, 16, 16), repeats=1, threads=1)
    >>> model.sizes
    OrderedDict([('n_conv0_weight', 16)])
    >>> sorted(model.table['n_conv0_weight'])
    [2, 3, 5, 6, 8, 10, 11, 13, 14, 16]
    """
    require_hybrid(net, 'latency_model')
    _check_runtime(runtime)
    repeats = _check_count('repeats', repeats, 1)
    threads = _threads(threads)
    shapes = input_shapes(inputs)
    graph = build(net, shapes)
    groups = selected_groups(net, graph, key)
    grid = _check_counts(counts, groups)
    finish_deferred(net, inputs, shapes)
    variant = _variant_of(net, shapes)
    trace = graph._trace
    sizes = OrderedDict((g.name, g.size) for g in groups)
    layers = _layers(trace, groups)

    # every distinct single-layer shape once (repeated blocks share their timings)
    configs = OrderedDict()
    plan = []
    for layer in layers:
        deps = list(OrderedDict.fromkeys(g for g, _ in layer.ins + layer.outs))
        dense = _dims(layer, {}, sizes)
        want = {(None, None): dense}
        for g in deps:
            for c in grid[g]:
                want[(g, c)] = _dims(layer, {g: c}, sizes)
        for dims in want.values():
            cfg = (layer.op, json.dumps(layer.attrs, sort_keys=True), layer.data_shape,
                   layer.weight_shape, layer.depthwise, dims)
            if cfg not in configs:
                configs[cfg] = _layer_variant(layer, *dims)
        plan.append((layer, deps, want))
    keys = list(configs)
    seconds = time_variants(runtime, [configs[k] for k in keys], repeats, 1, threads,
                            desc='latency model, layers (%s)' % runtime, settle=_LAYER_SETTLE)
    timed = dict(zip(keys, (float(np.median(s)) for s in seconds)))

    def time_of(layer, dims):
        return timed[(layer.op, json.dumps(layer.attrs, sort_keys=True), layer.data_shape,
                      layer.weight_shape, layer.depthwise, dims)]

    stored_layers = []
    table = OrderedDict((g, OrderedDict((c, 0.0) for c in grid[g])) for g in sizes)
    for layer, deps, want in plan:
        dense = time_of(layer, want[(None, None)])
        tables = OrderedDict()
        for g in deps:
            rows = [[c, time_of(layer, want[(g, c)])] for c in grid[g]]
            tables[g] = rows
            for c, t in rows:
                table[g][c] += t
        stored_layers.append({'node': layer.node, 'dense': dense, 'tables': tables})
    # activation elements per channel of each group (its producers' outputs): the volume
    # a layout reorder moves when the count is not aligned
    weights = {}
    for layer in layers:
        per = int(np.prod(layer.data_shape[2:], dtype=np.int64)) * layer.data_shape[0]
        for g, _ in layer.ins:
            weights[g] = weights.get(g, 0.0) + float(per)
    data = {
        'runtime': runtime, 'shapes': [list(s) for s in shapes], 'threads': threads,
        'repeats': repeats, 'sizes': [[g, n] for g, n in sizes.items()],
        'table': {g: [[c, t] for c, t in rows.items()] for g, rows in table.items()},
        'measured': 0.0, 'layers': stored_layers,
        'weights': {g: weights.get(g, 0.0) for g in sizes},
        'calibration': [], 'fit': [1.0, 0.0, 0.0],
    }
    # Counts picked as the fastest of noisy layer tables are, on average, the ones whose
    # time was measured low: the whole nets at such counts (what round_to='fast' and
    # latency plans build) show the fit that bias, the uniform ones what fusion costs.
    layers_only = LatencyModel(data)
    calibration = [_uniform(groups, amount, r) for amount, r in _CALIBRATION] + [
        {g: layers_only.round(g, k) for g, k in _uniform(groups, amount, 1).items()}
        for amount in _FAST_CALIBRATION]
    wholes = [variant] + [_shrunk_variant(variant, groups, kept) for kept in calibration]
    # the whole nets interleaved among themselves only: their ratios are what is fitted
    seconds = time_variants(runtime, wholes, max(repeats, _WHOLE_REPEATS), 1, threads,
                            desc='latency model, whole nets (%s)' % runtime)
    whole = [float(np.median(s)) for s in seconds]
    data['measured'] = whole[0]
    data['calibration'] = [{'kept': {}, 'seconds': whole[0]}] + [
        {'kept': kept, 'seconds': s} for kept, s in zip(calibration, whole[1:])]
    model = LatencyModel(data)
    sums = [model._sum(c['kept']) for c in data['calibration']]
    mis = [_misaligned(dict(sizes, **c['kept']), sizes, data['weights'])
           for c in data['calibration']]
    data['fit'] = list(_fit(sums, mis, [c['seconds'] for c in data['calibration']]))
    return LatencyModel(data)
