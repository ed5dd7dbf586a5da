"""The all-or-nothing check of a shrink: does the shrunk net compute what the masked one
did, and when it does not, which layer fails or differs first (the :class:`Problem` that
:func:`~.shrink.shrink` raises with the fix for its kind)."""
import os
import re
from typing import NamedTuple, Optional

import mxnet as mx
import numpy as np
from mxnet import autograd

from .. import _mx
from .graph import Problem
from .importance import channel_rows
from .inputs import flat_outputs
from .trace import build

#: Relative tolerance of the all-or-nothing check: max |shrunk - masked| <= RTOL * max |masked|.
RTOL = 1e-4


def launch(net, batches, ctx):
    """The net's outputs on ``ctx`` in predict mode, as NDArrays the engine may still be
    computing: the caller does host work meanwhile and reads them with :func:`read`."""
    with autograd.predict_mode():
        return flat_outputs(net(*[b.as_in_context(ctx) for b in batches]))


def read(outputs):
    return [_mx.to_host(o) for o in outputs]


def forward(net, batches, ctx):
    return read(launch(net, batches, ctx))


class Difference(NamedTuple):
    """The first output of the shrunk net that differs from the masked net's."""
    index: int      # which output
    diff: float     # max |shrunk - masked| (inf for another shape)
    scale: float    # max |masked|


def differs(before, after) -> Optional[Difference]:
    """None when the outputs agree within ``RTOL``, else the first that does not."""
    for i, (a, b) in enumerate(zip(before, after)):
        scale = float(np.abs(a).max()) if a.size else 0.0
        if a.shape != b.shape:
            return Difference(i, float('inf'), scale)
        diff = float(np.abs(a.astype(np.float64) - b).max()) if a.size else 0.0
        if not np.isfinite(diff) or diff > RTOL * scale:
            return Difference(i, diff, scale)
    return None


def layer_of(net, node_name):
    """The block whose operator node is ``node_name`` (longest matching prefix)."""
    best = None
    for blk in _mx.walk_blocks(net):
        prefix = blk.prefix
        if prefix and node_name.startswith(prefix) and (best is None or
                                                        len(prefix) > len(best.prefix)):
            best = blk
    if best is None:
        return "operator node '%s'" % node_name
    return "layer '%s' (%s, operator node '%s')" % (best.name, type(best).__name__, node_name)


def failure(net, err, ctx, shapes):
    text = str(err)
    match = re.search(r'Error in operator ([^\s:]+)', text)
    if not match:
        # An imperative forward does not say which operator failed; shape inference on the
        # traced graph (with the parameters' new shapes) does.
        try:
            build(net, shapes)
        except Exception as traced:  # pylint: disable=broad-except
            match = re.search(r'Error in operator ([^\s:]+)', str(traced))
    where = layer_of(net, match.group(1)) if match else 'the forward'
    first = next((l.strip() for l in text.splitlines() if 'Check failed' in l or
                  'Error in operator' in l), text.splitlines()[0] if text else '')
    return Problem('fails', 'The shrunk net fails to run on %s: %s raises %s: %s.'
                   % (ctx, where, type(err).__name__, first))


def internals(net, batches, ctx):
    """Every operator's output of ``net`` as it is now (a fresh trace), for
    :func:`difference`; None when they cannot be computed."""
    try:
        graph = build(net, [tuple(b.shape) for b in batches])
        names = dict(zip(graph._trace.input_names, batches))
        return _internals_outputs(graph._trace.symbol, net, names, ctx)
    except Exception:  # pylint: disable=broad-except
        return None


def difference(net, batches, bad, ctx, kept, shrunk):
    """The Problem of a shrunk net that computes otherwise. Called on the masked net (the
    shrink rolled back), with ``shrunk``: :func:`internals` of the shrunk net."""
    where = _first_differing_node(net, batches, ctx, kept, shrunk) if shrunk else None
    return Problem('differs', 'The shrunk net computes something else than the masked net on '
                   '%s: output %d differs by %.3g (max |masked output| %.3g, tolerance %.0e of '
                   'it)%s.' % (ctx, bad.index, bad.diff, bad.scale, RTOL,
                               '; the first layer that differs is %s' % where if where else ''))


def _first_differing_node(net, batches, ctx, kept, new_vals):
    """Compare every operator's output, masked (``net`` now) vs shrunk (``new_vals``), on
    the kept channels.

    Returns a description of the first node (topological order) that differs, or None.
    """
    try:
        graph = build(net, [tuple(b.shape) for b in batches])
        trace = graph._trace
        layout = graph._layout
        names = dict(zip(trace.input_names, batches))
        old_vals = _internals_outputs(trace.symbol, net, names, ctx)
    except Exception:  # pylint: disable=broad-except
        return None
    groups = graph.groups
    for nid, node in enumerate(trace.nodes):
        if node['op'] == 'null' or nid in graph._param_nodes:
            continue
        key = node['name'] + '_output'
        if key not in old_vals or key not in new_vals:
            continue
        a, b = old_vals[key], new_vals[key]
        segs = layout.get((nid, 0))
        if segs and a.ndim >= 2:
            rows = []
            for gi, off, st in segs:
                g = groups[gi]
                chans = kept.get(g.name, list(range(g.size))) if g.prunable else range(g.size)
                rows.extend(channel_rows((None, 1, off, st), list(chans)).tolist())
            if max(rows, default=-1) < a.shape[1]:
                a = np.take(a, rows, axis=1)
        if a.shape != b.shape:
            return layer_of(net, node['name']) + ' (shape %s, expected %s)' % (b.shape, a.shape)
        scale = float(np.abs(a).max()) if a.size else 0.0
        if a.size and float(np.abs(a - b).max()) > RTOL * max(scale, 1e-30):
            return layer_of(net, node['name'])
    return None


def _internals_outputs(symbol, net, names, ctx):
    """Every internal output of ``symbol`` (predict mode) with the net's parameters."""
    every = symbol.get_internals()
    # operator outputs only: variables among the heads confuse the executor
    internals = mx.sym.Group([every[i] for i, n in enumerate(every.list_outputs())
                              if re.search(r'_output\d*$', n)])
    params = net.collect_params()

    def value(name, copy=False):
        if name in names:
            return names[name].as_in_context(ctx)
        arrays = _mx.raw_data(params[name])
        arr = arrays[_mx.context_index(params[name], ctx) or 0]
        return arr.copy() if copy else arr

    # lists, in the executor's order (a variable may be listed more than once)
    args = [value(n) for n in internals.list_arguments()]
    aux = [value(n, copy=True) for n in internals.list_auxiliary_states()]
    # MKLDNN's subgraph fusion (convolution + BatchNorm) miscounts the arguments of a
    # graph with several heads; it is switched off for this one diagnostic binding.
    previous = os.environ.get('MXNET_SUBGRAPH_BACKEND')
    os.environ['MXNET_SUBGRAPH_BACKEND'] = 'NONE'
    try:
        executor = internals.bind(ctx, args=args, aux_states=aux, grad_req='null')
    finally:
        if previous is None:
            del os.environ['MXNET_SUBGRAPH_BACKEND']
        else:
            os.environ['MXNET_SUBGRAPH_BACKEND'] = previous
    outs = executor.forward(is_train=False)
    return {n: _mx.to_host(o) for n, o in zip(internals.list_outputs(), outs)}
