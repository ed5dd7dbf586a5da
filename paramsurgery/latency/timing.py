"""Timing variants on a runtime, interleaved; :func:`measure_latency` and
:func:`compare_latency`.
"""
import contextlib
import os
import sys
import tempfile
import time
from typing import List, NamedTuple, Optional, Tuple

import numpy as np
from mxnet import gluon

from .. import _mx
from .._checks import is_int
from ..channels.inputs import finish_deferred, input_shapes, require_hybrid
from ..errors import SurgeryTypeError, SurgeryValueError
from .runtimes import BUILDERS, check_runtime, variant_of

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
                        runners.append((i, BUILDERS[runtime](variants[i], sub, threads)))
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



def check_count(name, value, low):
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


def thread_count(threads):
    if threads is None:
        return _default_threads()
    return check_count('threads', threads, 1)


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
    check_runtime(runtime)
    repeats = check_count('repeats', repeats, 1)
    warmup = check_count('warmup', warmup, 0)
    threads = thread_count(threads)
    shapes = input_shapes(inputs)
    variants = []
    for net in nets:
        finish_deferred(net, inputs, shapes)
        variants.append(variant_of(net, shapes))
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

