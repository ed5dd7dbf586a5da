""":func:`latency_model`: time the layers each group shapes, then the whole net dense and
shrunk, and fit the per-layer sums to the whole-net measurements.
"""
import json
from collections import OrderedDict
from typing import Optional

import numpy as np

from ..channels.inputs import finish_deferred, input_shapes, require_hybrid
from ..channels.prune import selected_groups
from ..channels.trace import build
from .layers import (
    check_counts,
    layer_dims,
    layer_variant,
    misaligned_volume,
    shrunk_variant,
    timed_layers,
    uniform_kept,
)
from .model import LatencyModel
from .runtimes import check_runtime, variant_of
from .timing import check_count, thread_count, time_variants

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
    check_runtime(runtime)
    repeats = check_count('repeats', repeats, 1)
    threads = thread_count(threads)
    shapes = input_shapes(inputs)
    graph = build(net, shapes)
    groups = selected_groups(net, graph, key)
    grid = check_counts(counts, groups)
    finish_deferred(net, inputs, shapes)
    variant = variant_of(net, shapes)
    sizes = OrderedDict((g.name, g.size) for g in groups)
    layers = timed_layers(graph._trace, groups)
    table, stored_layers = _layer_tables(layers, grid, sizes, runtime, repeats, threads)
    data = {
        'runtime': runtime, 'shapes': [list(s) for s in shapes], 'threads': threads,
        'repeats': repeats, 'sizes': [[g, n] for g, n in sizes.items()],
        'table': {g: [[c, t] for c, t in rows.items()] for g, rows in table.items()},
        'measured': 0.0, 'layers': stored_layers,
        'weights': _channel_volumes(layers, sizes),
        'calibration': [], 'fit': [1.0, 0.0, 0.0],
    }
    _calibrate(data, variant, groups, runtime, repeats, threads)
    return LatencyModel(data)


def _layer_key(layer, dims):
    return (layer.op, json.dumps(layer.attrs, sort_keys=True), layer.data_shape,
            layer.weight_shape, layer.depthwise, dims)


def _layer_tables(layers, grid, sizes, runtime, repeats, threads):
    """Every layer timed alone, dense and with each group it depends on at each count of
    ``grid``: ``(table, stored)``, the per-group sums ``{group: {count: seconds}}`` and
    the per-layer records ``{node, dense, tables}`` the model predicts from."""
    # every distinct single-layer shape once (repeated blocks share their timings)
    configs = OrderedDict()
    plan = []
    for layer in layers:
        deps = list(OrderedDict.fromkeys(g for g, _ in layer.ins + layer.outs))
        want = {(None, None): layer_dims(layer, {}, sizes)}
        for g in deps:
            for c in grid[g]:
                want[(g, c)] = layer_dims(layer, {g: c}, sizes)
        for dims in want.values():
            key = _layer_key(layer, dims)
            if key not in configs:
                configs[key] = layer_variant(layer, *dims)
        plan.append((layer, deps, want))
    keys = list(configs)
    seconds = time_variants(runtime, [configs[k] for k in keys], repeats, 1, threads,
                            desc='latency model, layers (%s)' % runtime, settle=_LAYER_SETTLE)
    timed = dict(zip(keys, (float(np.median(s)) for s in seconds)))

    stored = []
    table = OrderedDict((g, OrderedDict((c, 0.0) for c in grid[g])) for g in sizes)
    for layer, deps, want in plan:
        tables = OrderedDict()
        for g in deps:
            rows = [[c, timed[_layer_key(layer, want[(g, c)])]] for c in grid[g]]
            tables[g] = rows
            for c, t in rows:
                table[g][c] += t
        dense = timed[_layer_key(layer, want[(None, None)])]
        stored.append({'node': layer.node, 'dense': dense,
                       'tables': tables})
    return table, stored


def _channel_volumes(layers, sizes):
    """Activation elements per channel of each group (its producers' outputs): the volume
    a layout reorder moves when the count is not aligned."""
    weights = {}
    for layer in layers:
        per = int(np.prod(layer.data_shape[2:], dtype=np.int64)) * layer.data_shape[0]
        for g, _ in layer.ins:
            weights[g] = weights.get(g, 0.0) + float(per)
    return {g: weights.get(g, 0.0) for g in sizes}


def _calibrate(data, variant, groups, runtime, repeats, threads):
    """Measure the whole net dense and at the calibration counts, and fit the per-layer
    sums to them: sets ``data``'s ``measured``, ``calibration`` and ``fit``."""
    sizes = OrderedDict((g.name, g.size) for g in groups)
    # Counts picked as the fastest of noisy layer tables are, on average, the ones whose
    # time was measured low: the whole nets at such counts (what round_to='fast' and
    # latency plans build) show the fit that bias, the uniform ones what fusion costs.
    layers_only = LatencyModel(data)
    calibration = [uniform_kept(groups, amount, r) for amount, r in _CALIBRATION] + [
        {g: layers_only.round(g, k) for g, k in uniform_kept(groups, amount, 1).items()}
        for amount in _FAST_CALIBRATION]
    wholes = [variant] + [shrunk_variant(variant, groups, kept) for kept in calibration]
    # the whole nets interleaved among themselves only: their ratios are what is fitted
    seconds = time_variants(runtime, wholes, max(repeats, _WHOLE_REPEATS), 1, threads,
                            desc='latency model, whole nets (%s)' % runtime)
    whole = [float(np.median(s)) for s in seconds]
    data['measured'] = whole[0]
    data['calibration'] = [{'kept': {}, 'seconds': whole[0]}] + [
        {'kept': kept, 'seconds': s} for kept, s in zip(calibration, whole[1:])]
    model = LatencyModel(data)
    sums = [model._sum(c['kept']) for c in data['calibration']]
    mis = [misaligned_volume(dict(sizes, **c['kept']), sizes, data['weights'])
           for c in data['calibration']]
    data['fit'] = list(_fit(sums, mis, [c['seconds'] for c in data['calibration']]))
