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
    shrunk_variant,
    timed_layers,
    uniform_kept,
)
from .model import LatencyModel, WholeNet, refit
from .runtimes import check_runtime, variant_of
from .timing import check_count, thread_count, time_variants

# Calibration nets measured whole next to the dense one: every group at the count that
# these amounts keep, rounded to a multiple of 8 or 16 (oneDNN's blocked layouts use 8 or
# 16 channels) or made odd (never aligned, also where every exact count would be: resnet's
# sizes), so the fit sees both sides of what a fused runtime does between layers. Not 32:
# never the fastest on a quiet machine, it was picked twice in six models under load 8-10
# and then left mobilenet_v2's 16- and 24-channel groups unprunable (MACs 2.2x at 50%)
# and the fit off by 1.6-2x.
_CALIBRATION = ((0.5, 'odd'), (0.5, 8), (0.5, 16), (0.25, 'odd'), (0.75, 8))
# The 50% nets above, one per alignment: the fastest measured decides the model's alignment
# (the channel multiple its fast counts keep). Layers timed alone cannot see it: at batch 1
# on mobilenet_v2_1_0 their fastest counts (multiples of 8 only, some not even that)
# measured 1.7x where multiples of 16 measured 2.1x (oneDNN) and of 8 2.95x (ONNX Runtime).
_ALIGNMENTS = (('odd', 1), (8, 8), (16, 16))
# A coarser alignment must be faster than a finer one by more than this fraction (a
# coarser one leaves fewer counts to choose from, so noise alone should not pick it).
_ALIGN_MARGIN = 0.03
# and at the fast counts (of the layers alone, aligned) nearest to what these amounts keep
_FAST_CALIBRATION = (0.5, 0.75)
# A single layer's samples within this fraction of their median need no more repeats: the
# fast counts compare layers whose times differ by more (an aligned count of oneDNN is
# 1.5-3x faster than its unaligned neighbours).
_LAYER_SETTLE = 0.05
# The whole nets are few and decide every predicted ratio: at least this many repeats.
_WHOLE_REPEATS = 10


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
    return _calibrate(data, variant, groups, runtime, repeats, threads)


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
    """Measure the whole net dense and at the calibration counts, choose the alignment and
    fit the per-layer sums to the measurements: sets ``data``'s ``measured``, ``align``,
    ``calibration`` and ``fit``; returns the model."""
    repeats = max(repeats, _WHOLE_REPEATS)
    uniform = [uniform_kept(groups, amount, r) for amount, r in _CALIBRATION]
    whole = _time_wholes(variant, groups, uniform, runtime, repeats, threads)
    data['measured'] = whole[0]
    at_half = {r: t for (amount, r), t in zip(_CALIBRATION, whole[1:]) if amount == 0.5}
    data['align'] = _alignment(at_half)
    # Counts picked as the fastest of noisy layer tables are, on average, the ones whose
    # time was measured low: the whole nets at such counts (what round_to='fast' and
    # latency plans build) show the fit that bias, the uniform ones what fusion costs.
    layers_only = LatencyModel(data)
    fast = [{g: layers_only.round(g, k) for g, k in uniform_kept(groups, amount, 1).items()}
            for amount in _FAST_CALIBRATION]
    dense, *rest = _time_wholes(variant, groups, fast, runtime, repeats, threads)
    # the second run's nets on the first run's scale: only ratios to a dense net measured
    # in the same run are compared
    scaled = [t * whole[0] / dense for t in rest]
    data['calibration'] = [{'kept': {}, 'seconds': whole[0]}] + [
        {'kept': kept, 'seconds': t} for kept, t in zip(uniform + fast, whole[1:] + scaled)]
    model = LatencyModel(data, WholeNet(variant, tuple(groups), repeats))
    refit(model)
    return model


def _time_wholes(variant, groups, kept_list, runtime, repeats, threads):
    """Median seconds of the dense net and of it shrunk to each of ``kept_list``, the
    whole nets interleaved among themselves only (their ratios are what is fitted)."""
    wholes = [variant] + [shrunk_variant(variant, groups, kept) for kept in kept_list]
    seconds = time_variants(runtime, wholes, repeats, 1, threads,
                            desc='latency model, whole nets (%s)' % runtime)
    return [float(np.median(s)) for s in seconds]


def _alignment(at_half):
    """The channel multiple whose 50% net measured fastest (``at_half``: rounding ->
    seconds), a coarser one only when faster by more than ``_ALIGN_MARGIN``."""
    best_round, best_align = _ALIGNMENTS[0]
    for rounding, align in _ALIGNMENTS[1:]:
        if at_half[rounding] < at_half[best_round] * (1 - _ALIGN_MARGIN):
            best_round, best_align = rounding, align
    return best_align
