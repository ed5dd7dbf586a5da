"""Operator handlers of the tracer for the layers with parameters: convolutions (grouped,
depthwise, transposed), dense layers, normalisations, PReLU, embeddings, RNNs.

Each handler is ``handler(node) -> layout`` (see :mod:`.graph` and the table in
:mod:`.trace`): it records the members it finds in the node's channel spaces and returns
the layout of the node's output.
"""
import re
from typing import NamedTuple

import mxnet as mx
import numpy as np

from .. import _mx
from .graph import CHANNEL_FIRST, UNKNOWN, Along, Blocked, Lost, Segment, Slot, Split, flag


def batchnorm(n):
    inputs = n.node['inputs']
    axis = int(n.attrs.get('axis', 1))
    ndim = len(n.in_shape() or ())
    if len(n.data) != 1:
        return UNKNOWN
    if axis not in (1, 1 - ndim):
        return Blocked("passes the BatchNorm '%s' over axis %d: the tracer follows channels "
                        "on axis 1 only" % (n.name, axis))
    if len(inputs) != 5 or not all(pid in n.param_src for pid, _, _ in inputs[1:]):
        return UNKNOWN
    roles = ('bn_gamma', 'bn_beta', 'bn_mean', 'bn_var')
    for (pid, _, _), role in zip(inputs[1:], roles):
        for sp, off, st in n.in_segs[0]:
            n.spaces.add(sp, n.param_src[pid], 0, off, st, role)
    return n.in_segs[0]


def layernorm(n):
    axis = int(n.attrs.get('axis', -1))
    ndim = len(n.in_shape() or ())
    if ndim and axis % ndim >= 2 and not isinstance(n.in_segs[0], Along):
        # normalising over spatial axes keeps every channel apart: gamma and beta are not
        # per channel, so nothing follows the channels but the tensor
        return n.in_segs[0] if len(n.data) == 1 else UNKNOWN
    return Blocked("passes the LayerNorm '%s', which normalises over axis %d: removing a "
                    "channel changes the mean and variance of every other one, so these "
                    "channels cannot be removed exactly" % (n.name, axis))


def conv(n):
    attrs = n.attrs
    layout = attrs.get('layout', 'None')
    weight = n.param(1)
    no_bias = flag(attrs, 'no_bias')
    bias = None if no_bias else n.param(2)
    if len(n.data) != 1 or weight is None or (not no_bias and bias is None):
        return UNKNOWN
    groups = int(attrs.get('num_group', 1))
    filters = int(attrs['num_filter'])
    in_shape = n.in_shape()
    spaces = n.spaces
    if layout not in CHANNEL_FIRST:
        return _unfollowed(
            spaces, n.nid, weight, bias, filters, n.in_segs[0], in_shape[layout.index('C')],
            "'%s' is a Convolution with layout='%s': the tracer follows channels on axis 1 "
            "(layouts %s) only" % (n.name, layout, ', '.join(CHANNEL_FIRST[1:])))
    channels = in_shape[1]
    segs = n.in_segs[0]
    if groups == 1:
        for sp, off, st in segs:
            spaces.add(sp, weight, 1, off, st, 'input')
        out = spaces.new(filters, n.nid, weight)
        return _produced(spaces, out, weight, bias)
    if groups == channels == filters:
        # depthwise: output channel i reads input channel i only
        for sp, off, st in segs:
            spaces.add(sp, weight, 0, off, st, 'depthwise')
            if bias is not None:
                spaces.add(sp, bias, 0, off, st, 'bias')
        return segs
    return _grouped_conv(n, weight, bias, groups, channels, filters, segs)


def deconv(n):
    """A transposed convolution: its weight is ``(in, out / groups, kernel...)``, so it reads
    its input through weight rows and makes its output channels along weight axis 1."""
    attrs = n.attrs
    weight = n.param(1)
    no_bias = flag(attrs, 'no_bias', 'True')
    bias = None if no_bias else n.param(2)
    if len(n.data) != 1 or weight is None or (not no_bias and bias is None):
        return UNKNOWN
    if attrs.get('layout', 'None') not in CHANNEL_FIRST:
        return Blocked("passes the Deconvolution '%s' with layout='%s': the tracer follows "
                        "channels on axis 1 only" % (n.name, attrs['layout']))
    groups, filters = int(attrs.get('num_group', 1)), int(attrs['num_filter'])
    channels, segs, spaces = n.in_shape()[1], n.in_segs[0], n.spaces
    if groups > 1 and groups == channels == filters:
        for sp, off, st in segs:       # depthwise: output channel i reads input channel i
            spaces.add(sp, weight, 0, off, st, 'depthwise')
            if bias is not None:
                spaces.add(sp, bias, 0, off, st, 'bias')
        return segs
    if groups > 1:
        for sp, _, _ in segs:
            spaces.block(sp, "feeds the grouped Deconvolution '%s' (num_group=%d), which the "
                             "tracer follows depthwise only" % (n.name, groups))
        out = spaces.new(filters, n.nid, weight, "made by the grouped Deconvolution '%s' "
                         "(num_group=%d), which the tracer follows depthwise only"
                         % (n.name, groups))
        return [Segment(out, 0, 1)]
    for sp, off, st in segs:
        spaces.add(sp, weight, 0, off, st, 'input')
    out = spaces.new(filters, n.nid, weight)
    spaces.producers[out].append(weight)
    spaces.add(out, weight, 1, 0, 1, 'weight')
    if bias is not None:
        spaces.add(out, bias, 0, 0, 1, 'bias')
    return [Segment(out, 0, 1)]


def _grouped_conv(n, weight, bias, groups, channels, filters, segs):
    """A grouped convolution keeps ``num_group``: its channels are removed in equal numbers
    from every group. A group of the tracer is then a position within a convolution group:
    channel ``i`` is channel ``j * size + i`` of every convolution group ``j``."""
    spaces = n.spaces
    per_in, per_out = channels // groups, filters // groups
    tied = _tied_input(n, segs, groups, channels)
    if isinstance(tied, str):
        for sp, _, _ in segs:
            spaces.block(sp, tied)
    else:
        spaces.add(tied, weight, 1, 0, 1, 'input')
    out = spaces.new(per_out, n.nid, weight)
    spaces.producers[out].append(weight)
    for j in range(groups):
        spaces.add(out, weight, 0, j * per_out, 1, 'weight')
        if bias is not None:
            spaces.add(out, bias, 0, j * per_out, 1, 'bias')
    del per_in
    return [Segment(out, j * per_out, 1) for j in range(groups)]


def _tied_input(n, segs, groups, channels):
    """The space of the positions within a group of a grouped convolution's input, tying
    channel ``i`` of every group (folding the producer's space when it is one whole space),
    or the reason it cannot."""
    spaces = n.spaces
    per = channels // groups
    roots = {spaces.find(sp) for sp, _, _ in segs}
    if per == 1:
        return ("feeds the grouped Convolution '%s' (num_group=%d), each of whose groups reads "
                "a single channel" % (n.name, groups))
    if len(roots) == 1 and len(segs) == groups and \
            [(off, st) for _, off, st in segs] == [(j * per, 1) for j in range(groups)] and \
            spaces.size[next(iter(roots))] == per:
        return next(iter(roots))           # already positions (a grouped layer before)
    if len(segs) == 1 and segs[0][1:] == (0, 1) and spaces.size[spaces.find(segs[0][0])] == \
            channels:
        root = spaces.find(segs[0][0])
        fold(n, root, groups)
        return root
    return ("feeds the grouped Convolution '%s' (num_group=%d) with channels that do not "
            "split into its groups the same way" % (n.name, groups))


def fold(n, root, groups):
    """Make space ``root`` (``C`` channels) the ``C / groups`` positions within a group:
    every member and every tensor layout holding it now holds one slice per group."""
    spaces = n.spaces
    per = spaces.size[root] // groups
    spaces.size[root] = per
    spaces.members[root] = [Slot(p, ax, off + j * per * st, st, role)
                            for p, ax, off, st, role in spaces.members[root]
                            for j in range(groups)]
    _relayout(n, root, lambda sp, off, st: [Segment(sp, off + j * per * st, st)
                                            for j in range(groups)])


def coarsen(n, root, per):
    """Make space ``root`` (``C`` channels) ``C / per`` channels of ``per`` entries each (an
    attention head of ``per`` units): every member and tensor layout holding it follows."""
    spaces = n.spaces
    spaces.size[root] //= per
    spaces.members[root] = [Slot(p, ax, off, st * per, role)
                            for p, ax, off, st, role in spaces.members[root]]
    _relayout(n, root, lambda sp, off, st: [Segment(sp, off, st * per)])


def _relayout(n, root, change):
    """Rewrite every traced tensor's segments of space ``root`` with ``change``."""
    find = n.spaces.find
    for key, segs in list(n.layout.items()):
        inner = segs.segs if isinstance(segs, Along) else segs
        if not isinstance(inner, list) or not any(find(sp) == root for sp, _, _ in inner):
            continue
        new = [one for sp, off, st in inner for one in (
            change(sp, off, st) if find(sp) == root else [Segment(sp, off, st)])]
        n.layout[key] = segs._replace(segs=new) if isinstance(segs, Along) else new


def _unfollowed(spaces, nid, weight, bias, size, segs, in_channels, reason):
    """A layer whose channels are not on axis 1: its own group (``size`` output channels,
    not prunable, with the reason) and a tensor whose channels are not followed."""
    for sp, _, _ in segs:
        spaces.block(sp, reason)
        if not spaces.members[spaces.find(sp)] and len(segs) == 1:
            # a data input or an unknown operator's output: its axis 1 was never a channel
            # axis, so its count is the one this layer reads
            spaces.size[spaces.find(sp)] = int(in_channels)
    out = spaces.new(size, nid, weight, reason)
    _produced(spaces, out, weight, bias)
    return Lost(reason)


def _produced(spaces, out, weight, bias):
    """Record ``weight`` (its output axis) and ``bias`` as the producers of space ``out``."""
    spaces.producers[out].append(weight)
    spaces.add(out, weight, 0, 0, 1, 'weight')
    if bias is not None:
        spaces.add(out, bias, 0, 0, 1, 'bias')
    return [Segment(out, 0, 1)]


def dense(n):
    attrs = n.attrs
    weight = n.param(1)
    no_bias = flag(attrs, 'no_bias')
    bias = None if no_bias else n.param(2)
    flatten = flag(attrs, 'flatten', 'True')
    shape = n.in_shape()
    if len(n.data) == 1 and shape is not None and weight is None and \
            n.node['inputs'][1][0] in n.derived:
        return _interleaved_dense(n, no_bias, flatten, shape)
    if len(n.data) != 1 or weight is None or (not no_bias and bias is None) or shape is None:
        return UNKNOWN
    segs, units = n.in_segs[0], int(attrs['num_hidden'])
    if isinstance(segs, Along) and (segs.at(len(shape)) != len(shape) - 1 or segs.inner != 1):
        return Blocked("passes the Dense '%s' with its channels on axis %d of %s, not the "
                        "last" % (n.name, segs.at(len(shape)), shape))
    if isinstance(segs, Along) and flatten:
        # (N, T, C) flattened: channel c is feature t * C + c for every t
        rows = int(np.prod(shape[1:-1]))
        for sp, off, st in segs.segs:
            for t in range(rows):
                n.spaces.add(sp, weight, 1, t * shape[-1] + off, st, 'input')
    elif isinstance(segs, Along):
        for sp, off, st in segs.segs:
            n.spaces.add(sp, weight, 1, off, st, 'input')
    elif len(shape) > 2 and not flatten:
        # it reads the last axis, which holds no channel the tracer followed
        for sp, _, _ in segs:
            n.spaces.block(sp, "'%s' is a FullyConnected (Dense) with flatten=False on a "
                               "rank-%d input: it reads the last axis, not these channels on "
                               "axis 1" % (n.name, len(shape)))
            if not n.spaces.members[n.spaces.find(sp)] and len(segs) == 1:
                # a data input or an unknown operator's output: its count is the one read
                n.spaces.size[n.spaces.find(sp)] = int(shape[-1])
    else:
        mult = int(np.prod(shape[2:])) if len(shape) > 2 else 1
        for sp, off, st in segs:
            n.spaces.add(sp, weight, 1, off * mult, st * mult, 'input')
    out = _produced(n.spaces, n.spaces.new(units, n.nid, weight), weight, bias)
    return Along(out) if len(shape) > 2 and not flatten else out


class Interleaved(NamedTuple):
    """A weight (or bias) whose rows interleave the rows of several parameters by heads:
    row ``h * J * D + j * D + d`` is row ``h * D + d`` of ``params[j]`` (gluonnlp's
    self-attention: J = 3, query, key and value)."""
    params: list
    heads: int
    per: int        # D, the rows of one head of one parameter


def param_rows(n, k):
    """``(params, rows)``: for every row of input ``k`` of the node, computed from parameters
    by reshapes, concatenations and stacks, the parameter and its row it copies (each row
    copied whole); None when it is not such a tensor. The arrangement is computed by
    running those operators on the parameters' row numbers."""
    nodes, param_src = n.trace.nodes, n.param_src
    names = []

    def value(nid, which):
        if nid in param_src:
            name = param_src[nid]
            shape = n.trace.shapes.get(name) or n.trace.all_params[name].shape
            if name not in names:
                names.append(name)
            if which == 'rows':
                code = names.index(name) * 2 ** 24 + np.arange(shape[0])
                return np.broadcast_to(code.reshape((-1,) + (1,) * (len(shape) - 1)), shape)
            return np.broadcast_to(np.arange(int(np.prod(shape[1:])), dtype=np.float64)
                                   .reshape((1,) + tuple(shape[1:])), shape)
        node = nodes[nid]
        args = [mx.nd.array(value(i, which), dtype='float64') for i, _, _ in node['inputs']]
        attrs = node.get('attrs', node.get('attr', {})) or {}
        return _mx.to_host(getattr(mx.nd, node['op'])(*args, **attrs))

    nid = n.node['inputs'][k][0]
    try:
        rows, cols = value(nid, 'rows'), value(nid, 'cols')
    except (mx.base.MXNetError, AttributeError, TypeError, ValueError):
        return None
    rows = rows.reshape(rows.shape[0], -1)
    if (rows != rows[:, :1]).any() or (cols.reshape(cols.shape[0], -1) !=
                                       np.arange(rows.shape[1])).any():
        return None
    rows = rows[:, 0].astype(np.int64)
    return names, [(names[r >> 24], int(r & (2 ** 24 - 1))) for r in rows]


def interleaved(n, k):
    """The :class:`Interleaved` arrangement of input ``k`` of the node, or None."""
    found = param_rows(n, k)
    if found is None or len(found[0]) < 2:
        return None
    names, rows = found
    total = len(rows) // len(names)
    for heads in range(1, total + 1):
        per = total // heads
        if total % heads == 0 and rows == [
                (names[j], h * per + d) for h in range(heads) for j in range(len(names))
                for d in range(per)]:
            return Interleaved(names, heads, per)
    return None


def _interleaved_dense(n, no_bias, flatten, shape):
    """A FullyConnected whose weight interleaves the rows of several parameters by heads:
    a head (its rows of every parameter, and of the biases arranged the same way) is one
    channel of the output, which holds it in ``J * D`` consecutive features."""
    weight = interleaved(n, 1)
    bias = None if no_bias else interleaved(n, 2)
    if weight is None or (not no_bias and (bias is None or bias[1:] != weight[1:])) or \
            isinstance(n.in_segs[0], Along) and (n.in_segs[0].at(len(shape)) != len(shape) - 1
                                                 or n.in_segs[0].inner != 1) or \
            not isinstance(n.in_segs[0], Along) and n.in_segs[0]:
        return Blocked("passes the FullyConnected '%s', whose weight is computed from "
                       "parameters in a way the tracer does not read back (it reads rows "
                       "of several parameters interleaved by heads)" % n.name)
    spaces = n.spaces
    for param in weight.params:
        for sp, off, st in (n.in_segs[0].segs if n.in_segs[0] else ()):
            spaces.add(sp, param, 1, off, st, 'input')
    out = spaces.new(weight.heads, n.nid, weight.params[0])
    for j, param in enumerate(weight.params):
        spaces.producers[out].append(param)
        spaces.add(out, param, 0, 0, weight.per, 'weight')
        if bias is not None:
            spaces.add(out, bias.params[j], 0, 0, weight.per, 'bias')
    segs = [Segment(out, 0, len(weight.params) * weight.per)]
    return Along(segs) if len(shape) > 2 and not flatten else segs


def leaky(n):
    if len(n.data) != 1:
        return UNKNOWN
    inputs = n.node['inputs']
    if n.attrs.get('act_type', 'leaky') != 'prelu':
        return n.in_segs[0] if len(inputs) == 1 else UNKNOWN
    if isinstance(n.in_segs[0], Along):
        return Blocked("passes the PReLU '%s', whose alpha is per channel on axis 1, with "
                        "its channels on the last axis" % n.name)
    gamma = n.param(1)
    if len(inputs) != 2 or gamma is None:
        return UNKNOWN
    gshape = n.trace.all_params[gamma].shape
    if gshape and int(np.prod(gshape)) > 1:
        for sp, off, st in n.in_segs[0]:
            n.spaces.add(sp, gamma, 0, off, st, 'scale')
    return n.in_segs[0]


def embedding(n):
    """An embedding's output channels are the columns of its ``(vocabulary, dim)`` weight,
    on the last axis; the indices it reads hold no channels."""
    weight = n.param(1)
    shape = n.out_shape()
    if len(n.data) != 1 or weight is None or not shape:
        return UNKNOWN
    out = n.spaces.new(shape[-1], n.nid, weight)
    n.spaces.producers[out].append(weight)
    n.spaces.add(out, weight, 1, 0, 1, 'weight')
    return Along([Segment(out, 0, 1)])


# Gates per hidden unit of the fused RNN operator's modes: each is a block of H rows.
_GATES = {'lstm': 4, 'gru': 3, 'rnn_tanh': 1, 'rnn_relu': 1}


_NOT_GLUON = ('its weights are one flat vector, which the tracer reads back to the parameters '
              'of a Gluon RNN layer (rnn.LSTM, GRU, RNN) only')


_RNN_PARAM = re.compile(r'([lr])(\d+)_(i2h|h2h)_(weight|bias)$')


def rnn(n):
    """The fused RNN operator (Gluon's rnn.LSTM, GRU, RNN layers). Its weights are one flat
    vector concatenated from every layer's and direction's reshaped parameters; read back to
    those parameters, each layer's and direction's hidden units are a group (every gate's
    rows of the i2h and h2h weights and biases, the h2h columns, the next layer's i2h
    columns or the readers of the output), and the first layer's input features are its
    i2h columns. A removed unit's gates see zero input, so from a zero initial state its
    state and output stay zero: exact. Otherwise both get a reason that names it."""
    mode = n.attrs.get('mode', 'rnn')
    shape = n.out_shape()
    if not shape:
        return UNKNOWN
    units = _rnn_units(n, mode)
    if not isinstance(units, str):
        return units
    what = "the RNN operator '%s' (mode=%s): %s" % (n.name, mode, units)
    for segs in n.in_segs:
        for sp, _, _ in (segs.segs if isinstance(segs, Along) else segs):
            n.spaces.block(sp, 'feeds ' + what)
    out = n.spaces.new(shape[-1], n.nid, n.name, 'are the hidden units of ' + what)
    return Along([Segment(out, 0, 1)])


def _rnn_units(n, mode):
    """The output layout of an RNN operator whose hidden units are followed, or why not."""
    attrs, inputs, nodes = n.attrs, n.node['inputs'], n.trace.nodes
    layers, hidden = int(attrs.get('num_layers', 1)), int(attrs.get('state_size', 0))
    dirs = 2 if flag(attrs, 'bidirectional') else 1
    if mode not in _GATES or attrs.get('projection_size', 'None') != 'None' or \
            flag(attrs, 'use_sequence_length') or len(inputs) < 3:
        return 'the tracer does not remove the hidden units of a projected LSTM, or of an ' \
               'RNN given sequence lengths'
    params = {}
    for rid, _, _ in nodes[inputs[1][0]]['inputs']:
        src = nodes[rid]['inputs'][0][0] if nodes[rid]['inputs'] else None
        match = _RNN_PARAM.search(n.param_src.get(src, '')) if src is not None else None
        if nodes[rid]['op'] not in ('Reshape', 'reshape') or match is None:
            return _NOT_GLUON
        params[match.groups()] = n.param_src[src]
    if len(params) != 4 * layers * dirs:
        return _NOT_GLUON
    nid = n.nid
    read = [e for node in nodes for e in node['inputs'] if e[0] == nid and e[1] > 0]
    if read or any(h[0] == nid and h[1] > 0 for h in n.trace.graph['heads']):
        return 'its final states are read, and the tracer follows hidden units through its ' \
               'output only'
    for sid, _, _ in inputs[2:]:
        if nodes[sid]['op'] != '_zeros':
            return "its initial state comes from '%s', not from zeros: a removed unit's " \
                   "state would not stay zero" % nodes[sid]['name']
    segs, spaces, gates = n.in_segs[0], n.spaces, _GATES[mode]
    if not isinstance(segs, Along) or segs.inner != 1 or segs.at(3) != 2:
        for sp, _, _ in (segs.segs if isinstance(segs, Along) else segs):
            spaces.block(sp, "feeds the RNN operator '%s' on an axis that is not its input "
                             "features" % n.name)
        segs = Along([])
    dirs_of = ['l', 'r'][:dirs]
    below = segs.segs       # the layer's input: (space, offset, stride) along its features
    for layer in range(layers):
        made = []
        for d, side in enumerate(dirs_of):
            mine = {key[2:]: name for key, name in params.items()
                    if key[:2] == (side, str(layer))}
            for sp, off, st in below:
                spaces.add(sp, mine[('i2h', 'weight')], 1, off, st, 'input')
            out = spaces.new(hidden, nid, mine[('i2h', 'weight')])
            spaces.producers[out].append(mine[('i2h', 'weight')])
            for g in range(gates):
                for kind in ('i2h', 'h2h'):
                    spaces.add(out, mine[(kind, 'weight')], 0, g * hidden, 1, 'weight')
                    spaces.add(out, mine[(kind, 'bias')], 0, g * hidden, 1, 'bias')
            spaces.add(out, mine[('h2h', 'weight')], 1, 0, 1, 'input')
            spaces.heads[out].append(Split(n.name, 'hidden units', 'hidden unit',
                                           'RNN operator'))
            made.append(Segment(out, d * hidden, 1))
        below = made
    return Along(below)
