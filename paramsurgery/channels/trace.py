"""The channel tracer: the symbolic graph of a net with every tensor's shape, the walk that
follows channels through it, and the operator table that says how.

``OPERATORS`` maps every operator the tracer knows to a :class:`~.graph.Rule`: its handler
(in :mod:`.layers` or :mod:`.tensors`) and what it does with channels; docs/shrink.md's
operator table is generated from it (docs/gen_operators.py). Teaching the tracer an
operator is one handler and one row.
"""
import contextlib
import io
import json
from collections import OrderedDict

import mxnet as mx
from mxnet import autograd, gluon

from .. import _mx
from ..errors import SurgeryTypeError, SurgeryValueError
from ..masks import unmasked_params
from ..masks.forward import real_deconvolution
from . import layers, tensors
from .graph import (
    EVERY_INPUT,
    UNKNOWN,
    Along,
    Blocked,
    ChannelGraph,
    ChannelGroup,
    Lost,
    Node,
    Rule,
    Segment,
    Slot,
)
from .inputs import flat_outputs, input_names, input_shapes, positional, require_hybrid
from .rules import check_head_rules

# Operators through which channel i of the input is channel i of the output.
_PASSTHROUGH = {
    'Activation', 'relu', 'sigmoid', 'tanh', 'softsign', 'clip', '_copy', 'identity',
    'Dropout', 'Pooling', 'abs', 'exp', 'square', 'sqrt', 'negative', 'Cast', 'BlockGrad',
    'stop_gradient', 'hard_sigmoid', 'erf', 'log_sigmoid', 'softrelu', 'reciprocal',
    '_mul_scalar', '_div_scalar', '_plus_scalar', '_minus_scalar', '_rminus_scalar',
    '_rdiv_scalar', '_power_scalar', '_maximum_scalar', '_minimum_scalar', 'mish',
    'sign', 'round', 'floor', 'ceil', 'log', 'log1p', 'expm1', 'cos', 'sin', 'cbrt',
    'rsqrt', 'gelu', 'selu', 'elu', '_contrib_div_sqrt_dim',
}


# Operators that may keep the batch and channel axes (checked on the inferred shapes).
_RESHAPES = {'Reshape', 'reshape', 'expand_dims', 'squeeze'}


# Reductions: channels kept when only axes >= 2 are reduced.
_REDUCTIONS = {'mean', 'sum', 'max', 'min', 'nansum', 'sum_axis', 'max_axis', 'min_axis'}


# Elementwise operators of several tensors (broadcasting allowed): their inputs' channels are
# the same channels.
_ELEMENTWISE = {
    'elemwise_add', 'broadcast_add', '_plus', '_Plus', '_add', 'ElementWiseSum', 'add_n',
    'elemwise_sub', 'broadcast_sub', '_minus', '_Minus', '_sub',
    'elemwise_mul', 'broadcast_mul', '_mul', '_Mul',
    'elemwise_div', 'broadcast_div', '_div', '_Div',
    'broadcast_maximum', 'broadcast_minimum', '_maximum', '_minimum',
}


# Operators a masked parameter goes through before its layer reads it (``weight * mask``).
_PARAM_EXPR = {'elemwise_mul', 'broadcast_mul', '_mul', '_Mul', '_mul_scalar', '_copy',
               'identity', 'Cast'}


# Operators that rearrange parameters into the weight a layer reads (the layer's handler
# reads the arrangement back: layers.param_rows).
_PARAM_LAYOUT = {'Reshape', 'reshape', 'Concat', 'concat', 'stack'}


class Trace:
    """The symbolic graph of a net with the inferred shape of every tensor."""

    def __init__(self, net, shapes):
        self.input_names = input_names(len(shapes))
        variables = [mx.sym.var(n) for n in self.input_names]
        try:
            with autograd.pause():
                out = net(*variables)
        except Exception as err:  # pylint: disable=broad-except
            raise SurgeryTypeError(
                "Cannot trace %s '%s' symbolically: calling it with mx.sym.var inputs failed "
                "with %s: %s. Every block inside must be a HybridBlock whose hybrid_forward "
                "uses F (not NDArray methods or Python control flow on values)."
                % (type(net).__name__, net.name, type(err).__name__,
                   str(err).splitlines()[0] if str(err) else '')) from None
        leaves = flat_outputs(out)
        odd = [leaf for leaf in leaves if not isinstance(leaf, mx.sym.Symbol)]
        if odd or not leaves:
            raise SurgeryTypeError(
                "%s '%s' returned %s among its outputs for symbolic inputs: every output must "
                "be a Symbol (or a nested list of Symbols, as export() needs). Return the "
                "Symbols only." % (type(net).__name__, net.name,
                                   type(odd[0]).__name__ if odd else 'no output'))
        # nested outputs ((out, [states]) as RNN encoders return) are traced as export()
        # traces them: every leaf is an output of the graph
        out = leaves[0] if len(leaves) == 1 else mx.sym.Group(leaves)
        self.symbol = out
        self.graph = json.loads(out.tojson())
        self.nodes = self.graph['nodes']
        internals = out.get_internals()
        self.all_params = net.collect_params()
        # The parameters' real shapes (a cached symbol variable may still carry the
        # partial shape it had before deferred initialisation).
        known = dict(zip(self.input_names, shapes))
        names = set(out.list_arguments()) | set(out.list_auxiliary_states())
        for name, param in self.all_params.items():
            if name in names and param.shape and all(d > 0 for d in param.shape):
                known[name] = tuple(param.shape)
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # MXNet prints the arguments
                _, out_shapes, _ = internals.infer_shape(**known)
        except mx.base.MXNetError as err:
            raise SurgeryValueError(
                "The input shape%s %s do%s not run through %s '%s': %s. Pass the shape of "
                "a batch the net accepts (e.g. (1, 3, 224, 224))."
                % ('s' if len(shapes) > 1 else '', ', '.join(map(str, shapes)),
                   '' if len(shapes) > 1 else 'es', type(net).__name__, net.name,
                   _first_line(err))) from None
        if out_shapes is None:
            raise SurgeryValueError(
                "Shape inference of %s '%s' with input shape %s is incomplete; pass the "
                "shape of a whole batch." % (type(net).__name__, net.name, shapes))
        self.shapes = dict(zip(internals.list_outputs(), [tuple(s) for s in out_shapes]))
        self.params = unmasked_params(net)

    def shape(self, node_id, index=0):
        node = self.nodes[node_id]
        if node['op'] == 'null':
            return self.shapes.get(node['name'])
        name = node['name']
        return self.shapes.get('%s_output' % name, self.shapes.get('%s_output%d' % (name, index)))


def _first_line(err):
    text = str(err)
    for line in text.splitlines():
        if 'Error in operator' in line or 'Check failed' in line:
            return line.strip()
    return text.splitlines()[0].strip() if text else type(err).__name__


class _Spaces:
    """Union-find over channel spaces."""

    def __init__(self):
        self.parent, self.size, self.members, self.reasons = [], [], [], []
        self.first, self.name, self.producers = [], [], []
        self.heads = []     # the Splits of a space's channels (attention heads, radix splits)

    def new(self, size, node, name, reason=''):
        self.parent.append(len(self.parent))
        self.size.append(int(size))
        self.members.append([])
        self.reasons.append([reason] if reason else [])
        self.first.append(node)
        self.name.append(name)
        self.producers.append([])
        self.heads.append([])
        return len(self.parent) - 1

    def find(self, s):
        while self.parent[s] != s:
            self.parent[s] = self.parent[self.parent[s]]
            s = self.parent[s]
        return s

    def union(self, a, b):
        a, b = self.find(a), self.find(b)
        if a == b:
            return a
        if (self.first[b], b) < (self.first[a], a):
            a, b = b, a
        # the root keeps the earliest producer's name
        if not self.producers[a] and self.producers[b]:
            self.name[a] = self.name[b]
        self.parent[b] = a
        if self.size[a] != self.size[b]:
            self.reasons[a].append('joins %d and %d channels' % (self.size[a], self.size[b]))
        self.members[a].extend(self.members[b])
        self.reasons[a].extend(self.reasons[b])
        self.producers[a].extend(self.producers[b])
        self.heads[a].extend(self.heads[b])
        self.first[a] = min(self.first[a], self.first[b])
        return a

    def block(self, s, reason):
        self.reasons[self.find(s)].append(reason)

    def add(self, s, param, axis, offset, stride, role):
        self.members[self.find(s)].append(Slot(param, axis, offset, stride, role))


def build(net, shapes) -> ChannelGraph:
    """The channel graph of ``net`` traced with inputs of ``shapes`` (checked by the caller:
    see :func:`trace_channels`); owners are not checked (:func:`check_owners`)."""
    with real_deconvolution():     # the graph of what the net computes, not the stand-in
        trace = Trace(net, shapes)
    walk = _Walk(trace)
    for nid, node in enumerate(trace.nodes):
        walk.visit(nid, node)
    for head in trace.graph['heads']:
        walk.block_all([head], "reaches the net output ('%s')" % trace.nodes[head[0]]['name'])
    graph = _groups(trace, walk.spaces, walk.layout, walk.param_src)
    check_head_rules(net, graph)
    return graph


class _Walk:
    """One pass over a trace's nodes in topological order, following the channels through
    each operator with its row of ``OPERATORS``."""

    def __init__(self, trace):
        self.trace = trace
        self.spaces = _Spaces()
        # (node, output) -> the tensor's layout: a list of Segment along axis 1, an Along or
        # a Lost
        self.layout = {}
        self.param_src = {}     # node id -> the parameter it stands for (weight * mask: weight)
        self.derived = set()    # nodes rearranging parameters only (see _PARAM_LAYOUT)
        self.param_names = set(trace.all_params)

    def segs_of(self, entry):
        return self.layout.get((entry[0], entry[1]))

    def block_all(self, entries, reason):
        """Make the channels of every tensor in ``entries`` not prunable, for ``reason``."""
        for entry in entries:
            segs = self.segs_of(entry)
            segs = segs.segs if isinstance(segs, Along) else segs
            for sp, _, _ in (segs if isinstance(segs, list) else ()):
                self.spaces.block(sp, reason)

    def fresh(self, node_id, reason, out_index=0):
        """A new channel space for an output whose channels come from nowhere traced."""
        shape = self.trace.shape(node_id, out_index)
        node = self.trace.nodes[node_id]
        if shape is None or len(shape) < 2:
            # nothing downstream can be followed, but a layer reading it still starts a group
            what = ("the input '%s'" % node['name'] if node['op'] == 'null' else
                    "the output of %s ('%s')" % (node['op'], node['name']))
            return Lost('reads %s, which has no channel axis (shape %s)' % (what, shape))
        return [Segment(self.spaces.new(shape[1], node_id, node['name'], reason), 0, 1)]

    def n_outputs(self, name):
        return sum(1 for k in range(64) if '%s_output%d' % (name, k) in self.trace.shapes) or 1

    def visit(self, nid, node):
        """Set the layout of the node's outputs (or the parameter it stands for)."""
        op, name, inputs = node['op'], node['name'], node['inputs']
        if op == 'null':
            self._variable(nid, name)
            return
        if inputs and all(i in self.param_src for i, _, _ in inputs) and op in _PARAM_EXPR:
            self.param_src[nid] = self.param_src[inputs[0][0]]
            return
        if inputs and op in _PARAM_LAYOUT and all(
                i in self.param_src or i in self.derived for i, _, _ in inputs):
            # parameters rearranged for a layer (gluonnlp's interleaved query/key/value
            # weight, an RNN's flat weight vector): the layer's handler reads them back
            self.derived.add(nid)
            return
        rule = OPERATORS.get(op)
        reads_back = rule is not None and rule.rearranged
        for i, o, _ in inputs:
            if i in self.derived and not reads_back and (i, o) not in self.layout:
                self.layout[(i, o)] = self.fresh(
                    i, "is made from parameters by the %s '%s', which the tracer reads back "
                    "only for the layer whose weight it is" % (self.trace.nodes[i]['op'],
                                                               self.trace.nodes[i]['name']))
        data = [(i, o) for i, o, _ in inputs
                if i not in self.param_src and not (reads_back and i in self.derived)]
        in_segs = [self.segs_of(e) for e in data]
        lost = next((s for s in in_segs if isinstance(s, Lost)), None)
        if lost is not None and rule is not None and all(
                k in rule.lost for k, s in enumerate(in_segs) if isinstance(s, Lost)):
            # inputs whose channels the output does not carry (indices, lengths, the input
            # of a layer that starts its own group): the output's channels can be followed
            in_segs = [[] if isinstance(s, Lost) else s for s in in_segs]
        elif lost is not None:
            self.block_all(data, lost.reason)
            for k in range(self.n_outputs(name)):
                self.layout[(nid, k)] = lost
            return
        if not inputs:
            self.layout[(nid, 0)] = self.fresh(nid, "made by the operator %s ('%s')" % (op, name))
            return
        out, why = self._apply(nid, node, data, in_segs)
        if out is UNKNOWN:
            self._unknown(nid, name, data, in_segs, why)
        else:
            self.layout[(nid, 0)] = out

    def _variable(self, nid, name):
        if name in self.param_names:
            self.param_src[nid] = name      # a weight, or a mask alone (elemwise_mul reads it)
        elif name in self.trace.input_names:
            self.layout[(nid, 0)] = self.fresh(nid, 'data input')
        else:
            self.layout[(nid, 0)] = self.fresh(
                nid, "comes from the variable '%s', which is not a parameter of the net" % name)

    def _apply(self, nid, node, data, in_segs):
        """``(layout, reason)``: the handler's layout of the output (UNKNOWN when the
        operator is not followed, with the reason)."""
        op, name = node['op'], node['name']
        why = "passes the operator %s ('%s') that the tracer does not know" % (op, name)
        rule = OPERATORS.get(op)
        if rule is not None and not rule.last and any(isinstance(s, Along) for s in in_segs):
            rule, why = None, (
                "passes the operator %s ('%s') with its channels on the last axis (after a "
                "Dense with flatten=False): the tracer follows them through activations, "
                "elementwise operators and dense layers only" % (op, name))
        if rule is None or any(s is None for s in in_segs):
            return UNKNOWN, why
        attrs = node.get('attrs', node.get('attr', {})) or {}
        out = rule.handler(Node(self.trace, self.spaces, nid, node, attrs, data, in_segs,
                                self.param_src, self.layout, self.derived))
        if isinstance(out, Blocked):
            return UNKNOWN, out.reason
        if isinstance(out, Lost) and out.blocks:
            self.block_all(data, out.reason)
        return out, why

    def _unknown(self, nid, name, data, in_segs, why):
        """An operator not followed: its inputs' channels are blocked, its outputs new."""
        self.block_all(data, why)
        shape = self.trace.shape(nid)
        if self.n_outputs(name) == 1 and shape and len(shape) > 2 and any(
                isinstance(s, Along) and self.trace.shape(*e) == shape
                for s, e in zip(in_segs, data)):
            # channels on the last axis in and out (LayerNorm): the reason follows them
            space = self.spaces.new(shape[-1], nid, name, why)
            self.layout[(nid, 0)] = Along([Segment(space, 0, 1)])
            return
        for k in range(self.n_outputs(name)):
            self.layout[(nid, k)] = self.fresh(nid, why, k)


_PASS = 'channel i in is channel i out'


_SPATIAL = 'channel i in is channel i out (spatial axes only)'


OPERATORS = {}


OPERATORS.update({op: Rule(tensors.passthrough, _PASS, last=True) for op in sorted(_PASSTHROUGH)})
OPERATORS['Pooling'] = Rule(tensors.passthrough, _PASS + ' (layouts with C on axis 1)')


OPERATORS.update({op: Rule(tensors.elementwise, 'joins the channels of its inputs (one group); a '
                             'per-channel parameter is a member', last=True)
                   for op in sorted(_ELEMENTWISE)})


OPERATORS.update({op: Rule(tensors.reshape, 'follows when the batch and channel axes are kept and '
                             'each channel keeps its entries, and the reshapes that split a '
                             'last axis into attention heads, merge heads into the batch axis '
                             'and back, and those that split channels into radix splits (channel '
                             'i of every split is one channel) or merge axes into the channel '
                             'axis', last=True)
                   for op in sorted(_RESHAPES)})


OPERATORS.update({op: Rule(tensors.reduction, 'follows when it reduces neither the batch nor the '
                             'channel axis (spatial axes, radix splits)', last=True)
                   for op in sorted(_REDUCTIONS)})


OPERATORS.update({
    'Convolution': Rule(layers.conv, 'starts a group (weight rows, bias); reads its input through '
                         'weight columns; depthwise: one group in and out; grouped: a group '
                         'is a position within every convolution group (num_group kept)',
                         lost=EVERY_INPUT),
    'Deconvolution': Rule(layers.deconv, 'starts a group (weight axis 1, bias); reads its input '
                           'through weight axis 0; depthwise: one group in and out'),
    'FullyConnected': Rule(layers.dense, 'starts a group (weight rows, bias); reads its input '
                            'through weight columns (H*W per channel after Flatten); '
                            'flatten=False on rank > 2: the last axis; a weight interleaving '
                            'the rows of several parameters by heads (gluonnlp\'s query, key '
                            'and value): a group of whole heads', last=True,
                            lost=EVERY_INPUT, rearranged=True),
    'BatchNorm': Rule(layers.batchnorm, 'gamma, beta, running mean and variance are members'),
    'BatchNormWithReLU': Rule(layers.batchnorm, 'as BatchNorm'),
    '_contrib_BatchNormWithReLU': Rule(layers.batchnorm, 'as BatchNorm'),
    'LayerNorm': Rule(layers.layernorm, 'blocks the channels it normalises over (not removable '
                       'exactly); normalising over axes >= 2 follows', last=True),
    'LeakyReLU': Rule(layers.leaky, _PASS + ' (gelu, elu, ...); PReLU alpha is a member',
                       last=True),
    'Flatten': Rule(tensors.flatten, 'channel i becomes H*W consecutive features'),
    'Concat': Rule(tensors.concat, 'places the groups of its inputs at offsets (axis 1)'),
    'concat': Rule(tensors.concat, 'as Concat'),
    'Pad': Rule(tensors.pad, _SPATIAL),
    'UpSampling': Rule(tensors.upsampling, _SPATIAL + '; nearest, one input'),
    '_contrib_BilinearResize2D': Rule(tensors.first_input, _SPATIAL),
    '_contrib_AdaptiveAvgPooling2D': Rule(tensors.passthrough, _SPATIAL),
    'ones_like': Rule(tensors.passthrough, _PASS + ' (the values do not depend on the input)'),
    'zeros_like': Rule(tensors.passthrough, _PASS + ' (the values do not depend on the input)'),
    'slice_axis': Rule(tensors.slice_axis, _SPATIAL),
    'slice': Rule(tensors.strided_slice, 'follows when the channel axis is not sliced'),
    'slice_like': Rule(tensors.slice_like, 'follows with axes >= 2 (the second input gives a '
                        'shape only)'),
    'Crop': Rule(tensors.first_input, _SPATIAL + ' (the second input gives a shape only)'),
    'softmax': Rule(tensors.softmax, 'follows over any axis but the channel axis (and the batch); '
                     'its lengths (use_length) hold no channels', last=True, lost=(1,)),
    'log_softmax': Rule(tensors.softmax, 'as softmax', last=True, lost=(1,)),
    'transpose': Rule(tensors.transpose, 'moves the channel axis where the axes say (not into the '
                       'batch axis)', last=True),
    'batch_dot': Rule(tensors.batch_dot, 'joins the attention heads of its two inputs (heads merged '
                       'into the batch axis)', last=True),
    'SwapAxis': Rule(tensors.swapaxis, 'follows when it swaps axes >= 2, or moves channels off '
                      'axis 1 onto another axis but the batch axis', last=True),
    'swapaxes': Rule(tensors.swapaxis, 'as SwapAxis', last=True),
    'Embedding': Rule(layers.embedding, 'starts a group on the last axis (weight columns); the '
                       'indices it reads hold no channels', lost=(0,)),
    'SequenceMask': Rule(tensors.sequence_mask, 'follows channels on an axis after the sequence '
                          'and batch axes; its lengths hold no channels', last=True, lost=(1,)),
    '_contrib_arange_like': Rule(tensors.shape_only, 'reads its input\'s shape only (not its '
                                  'channels); its output holds no channels (positions)',
                                  last=True),
    '_contrib_interleaved_matmul_selfatt_qk': Rule(
        tensors.interleaved_qk, 'reads the heads of its input\'s last axis (heads, 3, head '
        'units: query, key, value) and merges them into the batch axis', last=True),
    '_contrib_interleaved_matmul_selfatt_valatt': Rule(
        tensors.interleaved_valatt, 'joins the heads of its two inputs; a head is head units '
        'of the last axis out', last=True),
    'RNN': Rule(layers.rnn, "a Gluon rnn.LSTM, GRU or RNN layer's operator: starts a group per "
                 "layer and direction (every gate's rows of the i2h and h2h weights and "
                 "biases, the h2h columns; the next layer's i2h columns), reads its input "
                 "through the first layer's i2h columns; from zero initial states, its final "
                 "states unread", last=True, lost=EVERY_INPUT, rearranged=True),
})


def _groups(trace, spaces, layout, param_src):
    """The ChannelGraph of a finished walk: one group per channel space, in topological
    order of its first producer."""
    # The same slice of a parameter in two spaces (a shared layer) makes them one space.
    seen = {}
    for s in range(len(spaces.parent)):
        if spaces.find(s) != s:
            continue
        for param, axis, off, st, role in list(spaces.members[s]):
            key = (param, axis, off, st)
            if key in seen and spaces.find(seen[key]) != spaces.find(s):
                spaces.union(seen[key], s)
            seen.setdefault(key, s)
    # a parameter's variable node comes right before its first use: topological order
    var_index = {}
    for nid, node in enumerate(trace.nodes):
        if node['op'] == 'null':
            var_index.setdefault(node['name'], nid)
    groups = []
    roots = sorted({spaces.find(s) for s in range(len(spaces.parent))},
                   key=lambda r: min([var_index.get(n, spaces.first[r])
                                      for n in spaces.producers[r]] or [spaces.first[r]]))
    for r in roots:
        members, roles, dedup = [], [], set()
        for param, axis, off, st, role in spaces.members[r]:
            if (param, axis, off, st) in dedup:
                continue
            dedup.add((param, axis, off, st))
            members.append((param, axis, off, st))
            roles.append(role)
        reasons = list(OrderedDict.fromkeys(spaces.reasons[r]))
        size = spaces.size[r]
        for param, axis, off, st in members:
            shape = trace.shapes.get(param) or trace.all_params[param].shape
            if shape is None or axis >= len(shape) or off + size * st > shape[axis]:
                reasons.append("its slice of '%s' (axis %d, offset %d, stride %d) does not fit "
                               "the shape %s" % (param, axis, off, st, shape))
        if not members and not reasons:
            reasons.append('no parameter holds these channels')
        producers = sorted(OrderedDict.fromkeys(spaces.producers[r]),
                           key=lambda n: var_index.get(n, len(trace.nodes)))
        name = producers[0] if producers else spaces.name[r]
        groups.append(ChannelGroup(name, size, members, roles, not reasons, '; '.join(reasons),
                                   producers, OrderedDict.fromkeys(spaces.heads[r])))
    index = {r: i for i, r in enumerate(roots)}
    layouts = {}
    for key, segs in layout.items():
        if isinstance(segs, list) and segs:
            layouts[key] = [Segment(index[spaces.find(sp)], off, st) for sp, off, st in segs]
    # Unique names: a second group named after the same node gets a suffix.
    counts = {}
    for g in groups:
        if g.name in counts:
            counts[g.name] += 1
            g.name = '%s#%d' % (g.name, counts[g.name])
        else:
            counts[g.name] = 0
    return ChannelGraph(groups, trace.input_names, trace, layouts, param_src)


def trace_channels(net, *inputs) -> ChannelGraph:
    """Find the channel groups of ``net``: the slices that must be removed together.

    The net is traced symbolically (``net(mx.sym.var('data'))``) and the shape of every
    tensor inferred from ``inputs``. Each output channel of a convolution or dense layer
    starts a group; operators that keep channels (BatchNorm, activations, pooling, dropout,
    elementwise unary operators) carry it on, elementwise operators of several tensors
    (residual adds, squeeze-and-excitation multiplication) join the groups of their inputs,
    ``Concat`` places groups at offsets, ``Flatten`` spreads each channel over ``H*W``
    columns, depthwise convolutions couple their input and output channels. Channels are
    followed on axis 1 (layouts ``NCW``, ``NCHW``, ``NCDHW``): an operator with another
    layout gets a reason that names it and its layout. A net whose ``hybrid_forward``
    returns nested outputs (``(out, [states])``) is traced as ``export()`` traces it:
    every leaf is an output.

    Parameters
    ----------
    net : HybridBlock
        The network (initialised or not: shapes come from shape inference).
    *inputs : NDArray or tuple of int
        One batch per data input of the net, or its shape.

    Returns
    -------
    ChannelGraph
        ``.groups``: every group, prunable or not (with the reason); ``str()`` is a table.

    Raises
    ------
    SurgeryTypeError
        ``net`` is not a HybridBlock, or it cannot be traced symbolically.
    SurgeryValueError
        The input shapes do not run through the net.

    Examples
    --------
    >>> import mxnet as mx, paramsurgery as ps
    >>> from mxnet.gluon import nn
    >>> net = nn.HybridSequential(prefix='net_')
    >>> with net.name_scope():
    ...     net.add(nn.Conv2D(8, 3, use_bias=False), nn.BatchNorm(), nn.Activation('relu'),
    ...             nn.Conv2D(4, 3), nn.Flatten(), nn.Dense(2))
    >>> graph = ps.trace_channels(net, (1, 3, 8, 8))
    >>> [(g.name, g.size, g.prunable) for g in graph.groups]
    [('data', 3, False), ('net_conv0_weight', 8, True), ('net_conv1_weight', 4, True), ('net_dense0_weight', 2, False)]
    >>> graph['net_conv1_weight'].members
    [('net_conv1_weight', 0, 0, 1), ('net_conv1_bias', 0, 0, 1), ('net_dense0_weight', 1, 0, 16)]
    >>> graph['net_dense0_weight'].reason
    "reaches the net output ('net_dense0_fwd')"
    >>> print(graph)   # doctest: +NORMALIZE_WHITESPACE
    group             channels  members  prunable
    ----------------------------------------------
    data                     3        1  no: data input
    net_conv0_weight         8        6  yes
    net_conv1_weight         4        3  yes
    net_dense0_weight        2        2  no: reaches the net output ('net_dense0_fwd')
    4 groups, 2 prunable, 12 channels prunable
    """
    require_hybrid(net, 'trace_channels')
    shapes = input_shapes(positional(inputs), 'inputs')
    graph = build(net, shapes)
    check_owners(net, graph)
    return graph


def check_owners(net, graph):
    """Groups whose parameters live in a SymbolBlock (a fixed graph) cannot be shrunk."""
    fixed = {}
    for blk in _mx.walk_blocks(net):
        if isinstance(blk, gluon.SymbolBlock):
            for param in blk.collect_params().values():
                fixed[param.name] = blk.name
    if not fixed:
        return
    for g in graph.groups:
        hit = [m.param for m in g.members if m.param in fixed]
        if hit and g.prunable:
            g.prunable = False
            g.reason = ("'%s' belongs to the SymbolBlock '%s', whose graph is fixed"
                        % (hit[0], fixed[hit[0]]))
