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
import os
import sys
import tempfile
import time
from typing import NamedTuple, Optional, Tuple

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon

from . import _internals
from ._checks import is_int
from .channels import _finish_deferred, _flat_outputs, _input_shapes, _require_hybrid, _Trace
from .errors import MissingDependencyError, SurgeryTypeError, SurgeryValueError, install_hint

__all__ = ['Latency', 'measure_latency']

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


def _variant_of(net, shapes) -> _Variant:
    trace = _Trace(net, shapes)
    params = net.collect_params()
    symbol = trace.symbol
    names = set(symbol.list_arguments()) | set(symbol.list_auxiliary_states())
    with autograd.pause():
        arrays = {n: _internals.raw_data(p)[0].asnumpy() for n, p in params.items()
                  if n in names}
    return _Variant(symbol.tojson(), tuple(trace.input_names), tuple(shapes), arrays)


def _batches(variant):
    rng = np.random.RandomState(0)
    return [rng.uniform(-1, 1, size=s).astype(np.float32) for s in variant.shapes]


def _symbol_block(variant, folder):
    prefix = os.path.join(folder, 'net')
    with open(prefix + '-symbol.json', 'w') as f:
        f.write(variant.symbol_json)
    symbol = mx.sym.load_json(variant.symbol_json)
    aux = set(symbol.list_auxiliary_states())
    mx.nd.save(prefix + '-0000.params',
               {('aux:' if n in aux else 'arg:') + n: mx.nd.array(a, dtype=a.dtype)
                for n, a in variant.arrays.items()})
    with warnings_off():
        return gluon.SymbolBlock.imports(prefix + '-symbol.json', list(variant.input_names),
                                         prefix + '-0000.params', ctx=mx.cpu())


@contextlib.contextmanager
def warnings_off():
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        yield


def _mxnet_runner(variant, folder, threads, fuse=False):
    _internals.set_omp_threads(threads)
    block = _symbol_block(variant, folder)
    xs = [mx.nd.array(b) for b in _batches(variant)]
    with warnings_off():
        if fuse:
            block.optimize_for(*xs, backend='MKLDNN', static_alloc=True, static_shape=True)
        else:
            block.hybridize(static_alloc=True, static_shape=True)

    def run():
        with autograd.predict_mode():
            out = block(*xs)
        for o in _flat_outputs(out):
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


def _onnxruntime_runner(variant, folder, threads):
    _, ort = _onnx_modules()
    path = os.path.join(folder, 'net.onnx')
    _export_onnx(variant, path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])
    feed = {i.name: b for i, b in zip(session.get_inputs(), _batches(variant))}

    def run():
        session.run(None, feed)
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


def time_variants(runtime, variants, repeats, warmup, threads, desc='latency'):
    """Seconds per forward of each variant: ``repeats`` samples each, taken round-robin
    (interleaved, so a load change on the machine hits every variant alike) after
    ``warmup`` forwards of each."""
    samples = [[] for _ in variants]
    if _TIMER is not None:
        for _ in range(repeats):
            for i, v in enumerate(variants):
                samples[i].append(float(_TIMER(runtime, v)))
        return [np.asarray(s) for s in samples]
    # MXNet's thread count is process-wide (no getter to save it): put back the default
    # after timing, so that the caller's later forwards run as they did before.
    with tempfile.TemporaryDirectory(prefix='paramsurgery-latency-') as folder, \
            _omp_threads_restored():
        runners = []
        for i, v in enumerate(variants):
            sub = os.path.join(folder, str(i))
            os.mkdir(sub)
            runners.append(_BUILDERS[runtime](v, sub, threads))
        bar = _progress(len(runners) * (repeats + warmup), desc)
        try:
            for _ in range(warmup):
                for run in runners:
                    run()
                    if bar is not None:
                        bar.update(1)
            for _ in range(repeats):
                for i, run in enumerate(runners):
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
def _omp_threads_restored():
    try:
        yield
    finally:
        _internals.set_omp_threads(_default_threads())


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
    _require_hybrid(net, 'measure_latency')
    _check_runtime(runtime)
    repeats = _check_count('repeats', repeats, 1)
    warmup = _check_count('warmup', warmup, 0)
    threads = _threads(threads)
    shapes = _input_shapes(inputs)
    _finish_deferred(net, inputs, shapes)
    variant = _variant_of(net, shapes)
    seconds = time_variants(runtime, [variant], repeats, warmup, threads)[0]
    return _summary(seconds, runtime, shapes, threads, repeats)
