"""The layers a latency model times: every Convolution and FullyConnected whose shape
depends on a selected channel group, each as a single-layer variant at a kept count; the
candidate counts; whole nets shrunk to given counts (only shapes matter for timing).
"""
import math
from collections.abc import Mapping
from typing import NamedTuple, Tuple

import mxnet as mx
import numpy as np

from .._checks import is_int
from ..channels.exported import deletions, rewrite
from ..errors import SurgeryTypeError, SurgeryValueError
from ..pruning_core import prune_count
from ..select import MASK_SUFFIX
from .runtimes import Variant, fixed_values

_TIMED_OPS = ('Convolution', 'FullyConnected')


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


def timed_layers(trace, groups):
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


def layer_dims(layer, kept, sizes):
    """``(input channels, output channels)`` of ``layer`` with the groups at ``kept``."""
    cin = layer.data_shape[1]
    cout = layer.weight_shape[0]
    for g, st in layer.ins:
        cin -= (sizes[g] - kept.get(g, sizes[g])) * st
    for g, st in layer.outs:
        cout -= (sizes[g] - kept.get(g, sizes[g])) * st
    return cin, cout


def layer_variant(layer, cin, cout):
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
    arrays = {'weight': fixed_values(wshape)}
    if layer.has_bias:
        arrays['bias'] = np.zeros(cout, dtype=np.float32)
    return Variant(symbol.tojson(), ('data',), (shape,), arrays,
                    {'op': layer.op, 'attrs': attrs, 'bias': layer.has_bias})


def shrunk_variant(variant, groups, kept):
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
    return Variant(symbol_json, variant.input_names, variant.shapes, arrays)


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


def uniform_kept(groups, amount, round_to):
    kept = {}
    for g in groups:
        k = g.size - prune_count(amount, g.size)
        if round_to == 'odd':
            k = k - 1 if k % 2 == 0 and k > 1 else k
        elif round_to > 1:
            k = max(round_to, int(math.floor(k / round_to + 0.5)) * round_to)
        kept[g.name] = max(1, min(g.size, k))
    return kept


def misaligned_volume(kept, sizes, weights, align=8):
    """Channel volume (``weights``: activation elements per channel) of the groups whose
    kept count is not a multiple of ``align``: what a fused runtime pays layout reorders
    and slower kernels for (``align`` 1: nothing)."""
    if align <= 1:
        return 0.0
    return float(sum(weights[g] * kept.get(g, sizes[g]) for g in sizes
                     if kept.get(g, sizes[g]) % align))


def check_counts(counts, groups):
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


