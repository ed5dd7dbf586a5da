"""Channel groups: which slices of which parameters must be removed together.

A channel of a convolution's output is not only a row of its weight: the BatchNorm after it
has a gamma, beta and running statistics entry for it, every layer reading the tensor has
an input slice for it, a residual add ties it to the channel of the same index of every
other tensor added, a ``Concat`` moves it to an offset, a ``Flatten`` spreads it over
``H*W`` columns of the next ``Dense``. :func:`trace_channels` finds all of that from the
symbolic graph of a ``HybridBlock`` (``net(mx.sym.var('data'))`` and shape inference), the
way Torch-Pruning's dependency graph does for PyTorch, and :func:`prune_channels` masks
whole channels consistently on every member, so that the masked net computes exactly what
the net shrunk by :func:`paramsurgery.shrink` computes. See ``docs/shrink.md``.
"""
import contextlib
import io
import json
import math
import numbers
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Tuple, Union

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon

from . import _internals
from ._deconv import real_deconvolution
from .access import replicas
from .errors import SelectionError, SurgeryTypeError, SurgeryValueError, and_more
from .masks import _check_mode, apply_mask, get_mask, masked, unmasked_params
from .pruning_core import _check_amount, prune_count
from .select import mask_names, select

__all__ = ['trace_channels', 'ChannelGraph', 'ChannelGroup', 'prune_channels', 'count_ops',
           'register_shrink_rule']

_IMPORTANCES = ('l1', 'l2', 'bn_gamma', 'taylor')
_SCOPES = ('layer', 'global')

# Roles of the members of a group. Running statistics are updated in place by BatchNorm and
# cannot carry a mask: they follow the channels when the net is shrunk, nothing more.
_NOT_MASKABLE = ('bn_mean', 'bn_var')

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
# What an operator handler returns when it cannot follow the channels.
_UNKNOWN = ('unknown',)
# The layouts whose channel axis is axis 1 (the only one the tracer follows).
_CHANNEL_FIRST = ('None', 'NCW', 'NCHW', 'NCDHW')
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


class _Lost(NamedTuple):
    """The layout of a tensor whose axis 1 holds no channels (after an NHWC convolution, a
    channel-last Pooling, a Dense with flatten=False on rank > 2): nothing downstream is
    followed, and a Convolution or Dense reading it starts a group of its own."""
    reason: str


class _Along(NamedTuple):
    """The layout of a tensor whose channels are on another axis than 1: the last axis (the
    features of a Dense with flatten=False: ``(batch, tokens, units)``), the heads axis of
    ``(batch, tokens, heads, head units)``, or the batch axis into which attention heads are
    merged (``(batch * heads, tokens, head units)``: index ``b * inner + h``). Followed
    through the operators whose row of the operator table says so."""
    segs: list
    axis: int = -1      # the channel axis (negative: from the end)
    inner: int = 1      # on a merged axis, the number of channel positions per outer index

    def at(self, ndim):
        """The channel axis, from the front."""
        return self.axis % ndim


# --------------------------------------------------------------------------- public types

class ChannelGroup:
    """Channels that must be removed together, and every slice that holds them.

    Attributes
    ----------
    name : str
        The weight of the first producing layer in topological order (for a data input:
        the input's name; for channels made by an unknown operator: that node's name).
    size : int
        The number of channels.
    members : list of (str, int, int, int)
        ``(parameter name, axis, offset, stride)``: channel ``i`` is the slice
        ``[offset + i*stride, offset + (i+1)*stride)`` of that parameter along ``axis``.
    prunable : bool
        Whether the channels can be removed.
    reason : str
        Why not (empty when prunable).
    producers : list of str
        The weights whose output channels these are (convolution and dense layers).
    roles : list of str
        The role of each member: ``'weight'`` (a producer's output axis), ``'bias'``,
        ``'bn_gamma'``, ``'bn_beta'``, ``'bn_mean'``, ``'bn_var'``, ``'input'`` (a
        consumer's input slice), ``'depthwise'``, ``'scale'`` (a per-channel parameter).

    Examples
    --------
    >>> import paramsurgery as ps
    >>> from mxnet.gluon import nn
    >>> net = nn.HybridSequential(prefix='n_')
    >>> with net.name_scope():
    ...     net.add(nn.Conv2D(4, 3), nn.BatchNorm(), nn.Conv2D(2, 1))
    >>> group = ps.trace_channels(net, (1, 3, 8, 8))['n_conv0_weight']
    >>> group.size, group.prunable, group.producers
    (4, True, ['n_conv0_weight'])
    >>> list(zip(group.members, group.roles))[-2:]
    [(('n_batchnorm0_running_var', 0, 0, 1), 'bn_var'), (('n_conv1_weight', 1, 0, 1), 'input')]
    >>> len(group.members), len(group.maskable)    # running statistics carry no mask
    (7, 5)
    """

    _heads = ()     # the reshapes that split these channels into attention heads

    def __init__(self, name, size, members, roles, prunable, reason, producers):
        self.name = name
        self.size = int(size)
        self.members = [tuple(m) for m in members]
        self.roles = list(roles)
        self.prunable = bool(prunable)
        self.reason = reason
        self.producers = list(producers)

    @property
    def maskable(self) -> List[Tuple[str, int, int, int]]:
        """The members that carry masks (every member but BatchNorm running statistics)."""
        return [m for m, r in zip(self.members, self.roles) if r not in _NOT_MASKABLE]

    def __repr__(self):
        return 'ChannelGroup(%r, size=%d, members=%d, prunable=%s)' % (
            self.name, self.size, len(self.members), self.prunable)


class ChannelGraph:
    """The channel groups of a traced network (see :func:`trace_channels`).

    Attributes
    ----------
    groups : list of ChannelGroup
        In topological order of their first producer.
    inputs : list of str
        The names of the data inputs the net was traced with.

    Examples
    --------
    >>> import paramsurgery as ps
    >>> from mxnet.gluon import nn
    >>> net = nn.HybridSequential(prefix='n_')
    >>> with net.name_scope():
    ...     net.add(nn.Conv2D(4, 3), nn.Activation('relu'), nn.Dense(2))
    >>> graph = ps.trace_channels(net, (1, 3, 8, 8))
    >>> graph.inputs, len(graph), [g.name for g in graph.prunable]
    (['data'], 3, ['n_conv0_weight'])
    >>> graph['n_dense0_weight'].reason
    "reaches the net output ('n_dense0_fwd')"
    """

    def __init__(self, groups, inputs, trace):
        self.groups = list(groups)
        self.inputs = list(inputs)
        self._trace = trace

    def __getitem__(self, name) -> ChannelGroup:
        for group in self.groups:
            if group.name == name:
                return group
        raise SelectionError("No channel group named '%s'; groups: %s" % (
            name, ', '.join(g.name for g in self.groups[:5])
            + (', ...' if len(self.groups) > 5 else '')))

    def __iter__(self):
        return iter(self.groups)

    def __len__(self):
        return len(self.groups)

    @property
    def prunable(self) -> List[ChannelGroup]:
        """The groups whose channels can be removed."""
        return [g for g in self.groups if g.prunable]

    def __str__(self):
        rows = [('group', 'channels', 'members', 'prunable')]
        for g in self.groups:
            rows.append((g.name, str(g.size), str(len(g.members)),
                         'yes' if g.prunable else 'no: ' + g.reason))
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        lines = ['%-*s  %*s  %*s  %s' % (widths[0], r[0], widths[1], r[1], widths[2], r[2], r[3])
                 for r in rows]
        lines.insert(1, '-' * len(lines[0]))
        lines.append('%d groups, %d prunable, %d channels prunable' % (
            len(self.groups), len(self.prunable), sum(g.size for g in self.prunable)))
        return '\n'.join(lines)

    def __repr__(self):
        return 'ChannelGraph(%d groups, %d prunable)' % (len(self.groups), len(self.prunable))


# --------------------------------------------------------------------------- inputs

def _input_shapes(inputs, what='inputs') -> List[Tuple[int, ...]]:
    """Validate ``inputs`` (NDArrays or shape tuples, one may be given bare) -> shapes."""
    if isinstance(inputs, (mx.nd.NDArray, np.ndarray)) or (
            isinstance(inputs, tuple) and inputs and all(_is_dim(d) for d in inputs)):
        inputs = [inputs]
    if not isinstance(inputs, (list, tuple)) or not inputs:
        raise SurgeryTypeError(
            '%s must be an NDArray, a shape tuple such as (1, 3, 224, 224), or a non-empty '
            'list of them, got %r.' % (what, type(inputs).__name__ if not isinstance(
                inputs, (list, tuple)) else inputs))
    shapes = []
    for i, one in enumerate(inputs):
        if isinstance(one, (mx.nd.NDArray, np.ndarray)):
            shape = tuple(int(d) for d in one.shape)
        elif isinstance(one, (tuple, list)) and all(_is_dim(d) for d in one) and one:
            shape = tuple(int(d) for d in one)
        else:
            raise SurgeryTypeError(
                '%s[%d] must be an NDArray or a tuple of positive ints (a shape), got %r.'
                % (what, i, one))
        if any(d <= 0 for d in shape):
            raise SurgeryValueError('%s[%d] has shape %s; every dimension must be >= 1.'
                                    % (what, i, shape))
        shapes.append(shape)
    return shapes


def _batches(inputs, shapes):
    """NDArrays for the check: the given ones, or a fixed pseudo-random batch per shape."""
    if isinstance(inputs, (mx.nd.NDArray, np.ndarray)) or (
            isinstance(inputs, tuple) and inputs and all(isinstance(d, int) for d in inputs)):
        inputs = [inputs]
    rng = np.random.RandomState(0)
    out = []
    for one, shape in zip(inputs, shapes):
        if isinstance(one, mx.nd.NDArray):
            out.append(one)
        elif isinstance(one, np.ndarray):
            out.append(mx.nd.array(one))
        else:
            out.append(mx.nd.array(rng.uniform(-1, 1, size=shape)))
    return out


def _finish_deferred(net, inputs, shapes):
    """Run one predict-mode forward when some parameter still waits for its shape."""
    params = net.collect_params().values()
    if any(_internals.is_deferred(p) for p in params):
        ctx = next((_internals.context_list(p)[0] for p in params
                    if _internals.context_list(p)), mx.current_context())
        with autograd.predict_mode():
            net(*[b.as_in_context(ctx) for b in _batches(inputs, shapes)])


def _positional(inputs):
    """``*inputs``, also accepting one list of inputs given positionally."""
    if len(inputs) == 1 and isinstance(inputs[0], list):
        return list(inputs[0])
    return list(inputs)


def _is_dim(d):
    return isinstance(d, numbers.Integral) and not isinstance(d, (bool, np.bool_))


def _input_names(n):
    # the names HybridBlock.export gives its inputs
    return ['data'] if n == 1 else ['data%d' % i for i in range(n)]


def _require_hybrid(net, what):
    if not isinstance(net, gluon.HybridBlock):
        raise SurgeryTypeError(
            "%s needs a gluon.HybridBlock (it traces the net symbolically with "
            "net(mx.sym.var('data'))), got %s. A plain Block cannot be traced: make it a "
            "HybridBlock with a hybrid_forward." % (what, type(net).__name__))


# --------------------------------------------------------------------------- tracing

class _Trace:
    """The symbolic graph of a net with the inferred shape of every tensor."""

    def __init__(self, net, shapes):
        self.input_names = _input_names(len(shapes))
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
        leaves = _flat_outputs(out)
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


def _flat_outputs(out) -> list:
    """The leaves of a (nested) list or tuple of outputs, in order (as gluon flattens a
    ``HybridBlock``'s outputs for ``export``)."""
    if isinstance(out, (list, tuple)):
        return [leaf for one in out for leaf in _flat_outputs(one)]
    return [out]


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
        self.heads = []     # the reshapes that split a space's channels into attention heads

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
        self.members[self.find(s)].append((param, axis, offset, stride, role))


def _build(net, shapes) -> ChannelGraph:
    with real_deconvolution():     # the graph of what the net computes, not the stand-in
        trace = _Trace(net, shapes)
    nodes = trace.nodes
    spaces = _Spaces()
    param_names = set(trace.all_params)
    masks = set(mask_names(trace.all_params))
    # layout[(node, output)]: list of (space, offset, stride) along axis 1, or None
    layout = {}
    param_src = {}      # node id -> parameter name it stands for (weight * mask -> weight)
    unknown = _UNKNOWN

    def data_inputs(node):
        return [(i, o) for i, o, _ in node['inputs'] if i not in param_src]

    def segs_of(entry):
        return layout.get((entry[0], entry[1]))

    def block_all(entries, reason):
        for entry in entries:
            segs = segs_of(entry)
            segs = segs.segs if isinstance(segs, _Along) else segs
            for sp, _, _ in (segs if isinstance(segs, list) else ()):
                spaces.block(sp, reason)

    def fresh(node_id, reason, out_index=0):
        shape = trace.shape(node_id, out_index)
        if shape is None or len(shape) < 2:
            # nothing downstream can be followed, but a layer reading it still starts a group
            node = nodes[node_id]
            what = ("the input '%s'" % node['name'] if node['op'] == 'null' else
                    "the output of %s ('%s')" % (node['op'], node['name']))
            return _Lost('reads %s, which has no channel axis (shape %s)' % (what, shape))
        return [(spaces.new(shape[1], node_id, nodes[node_id]['name'], reason), 0, 1)]

    def n_outputs(name):
        return sum(1 for k in range(64) if '%s_output%d' % (name, k) in trace.shapes) or 1

    for nid, node in enumerate(nodes):
        op, name = node['op'], node['name']
        attrs = node.get('attrs', node.get('attr', {})) or {}
        if op == 'null':
            if name in param_names and name not in masks:
                param_src[nid] = name
            elif name in param_names:
                param_src[nid] = name      # a mask on its own (read by elemwise_mul)
            elif name in trace.input_names:
                layout[(nid, 0)] = fresh(nid, 'data input')
            else:
                layout[(nid, 0)] = fresh(nid, "comes from the variable '%s', which is not a "
                                              "parameter of the net" % name)
            continue
        inputs = node['inputs']
        if inputs and all(i in param_src for i, _, _ in inputs) and op in _PARAM_EXPR:
            param_src[nid] = param_src[inputs[0][0]]
            continue
        data = data_inputs(node)
        in_segs = [segs_of(e) for e in data]
        lost = next((s for s in in_segs if isinstance(s, _Lost)), None)
        if lost is not None and op in ('Convolution', 'FullyConnected', 'RNN'):
            # the input's channels cannot be followed, its own output channels can (an
            # RNN's weights are one flat vector of reshaped parameters: a Lost input)
            in_segs = [[] if isinstance(s, _Lost) else s for s in in_segs]
        elif lost is not None:
            block_all(data, lost.reason)
            for k in range(n_outputs(name)):
                layout[(nid, k)] = lost
            continue
        out = unknown
        why = "passes the operator %s ('%s') that the tracer does not know" % (op, name)
        if not inputs:
            layout[(nid, 0)] = fresh(nid, "made by the operator %s ('%s')" % (op, name))
            continue
        rule = _OPERATORS.get(op)
        if rule is not None and not rule.last and any(isinstance(s, _Along) for s in in_segs):
            rule, why = None, (
                "passes the operator %s ('%s') with its channels on the last axis (after a "
                "Dense with flatten=False): the tracer follows them through activations, "
                "elementwise operators and dense layers only" % (op, name))
        if rule is not None and all(s is not None for s in in_segs):
            out = rule.handler(_Node(trace, spaces, nid, node, attrs, data, in_segs,
                                     param_src, layout))
            if isinstance(out, _Blocked):
                why, out = out.reason, unknown
            elif isinstance(out, _Lost):
                block_all(data, out.reason)
        if out is unknown:
            block_all(data, why)
            shape = trace.shape(nid)
            if n_outputs(name) == 1 and shape and len(shape) > 2 and any(
                    isinstance(s, _Along) and trace.shape(*e) == shape
                    for s, e in zip(in_segs, data)):
                # channels on the last axis in and out (LayerNorm): the reason follows them
                layout[(nid, 0)] = _Along([(spaces.new(shape[-1], nid, name, why), 0, 1)])
                continue
            for k in range(n_outputs(name)):
                layout[(nid, k)] = fresh(nid, why, k)
        else:
            layout[(nid, 0)] = out
    for head in trace.graph['heads']:
        block_all([head], "reaches the net output ('%s')" % nodes[head[0]]['name'])
    graph = _groups(trace, spaces, layout)
    graph._param_nodes = set(param_src)   # nodes that compute parameters (weight * mask)
    _check_head_rules(net, graph)
    return graph


def _axes(text, ndim):
    """The axes of a reduction attribute such as '(2, 3)' or '-1', normalised; [] if none."""
    if text in (None, 'None', '()', ''):
        return []
    try:
        value = json.loads(text.replace('(', '[').replace(')', ']').replace(',]', ']'))
    except ValueError:
        return []
    value = value if isinstance(value, list) else [value]
    return [int(a) % ndim for a in value] if ndim else []


# --------------------------------------------------------------------------- operators
#
# One handler per operator kind, behind one interface: ``handler(node) -> layout`` where
# ``node`` is a :class:`_Node` and the layout returned is the output's list of ``(space,
# offset, stride)`` along axis 1, ``_UNKNOWN`` (not followed: the inputs' channels are
# blocked with the generic reason), a :class:`_Blocked` (not followed, with that reason) or a
# :class:`_Lost` (the output's axis 1 holds no channels). ``_OPERATORS`` maps operator names
# to :class:`_Rule` rows; docs/shrink.md's operator table is generated from it.


class _Node(NamedTuple):
    """What an operator handler sees of one graph node."""
    trace: Any          # _Trace: the graph and the inferred shapes
    spaces: Any         # _Spaces: the channel spaces found so far
    nid: int            # the node's index in the graph
    node: dict          # the node's JSON (op, name, inputs)
    attrs: dict         # its attributes, as strings
    data: list          # its data inputs: (node id, output index)
    in_segs: list       # the layout of each data input
    param_src: dict     # node id -> the parameter that node stands for
    layout: dict        # (node id, output) -> layout, for the tensors traced so far

    @property
    def name(self):
        return self.node['name']

    def param(self, k):
        """The parameter behind input ``k`` of the node, or None."""
        inputs = self.node['inputs']
        return self.param_src.get(inputs[k][0]) if len(inputs) > k else None

    def in_shape(self, k=0):
        return self.trace.shape(*self.data[k]) if len(self.data) > k else None

    def out_shape(self):
        return self.trace.shape(self.nid)

    def only_input(self):
        """True when the node reads one tensor and no parameter."""
        return len(self.data) == 1 and len(self.node['inputs']) == 1


class _Blocked(NamedTuple):
    """A handler's answer for a node it does not follow, with the reason."""
    reason: str


class _Rule(NamedTuple):
    """A row of the operator table."""
    handler: Callable[[_Node], Any]
    channels: str       # what the operator does with channels (docs/shrink.md's table)
    last: bool = False  # whether it also follows channels on the last axis (_Along)


def _flag(attrs, key, default='False'):
    return attrs.get(key, default) in ('True', 'true', '1')


def _tuple_attr(text):
    """An attribute such as '(0, 0, 1, 1)' or '(None, 2)' as a list (None kept)."""
    if text in (None, 'None', ''):
        return []
    try:
        value = json.loads(text.replace('(', '[').replace(')', ']').replace('None', 'null')
                           .replace(',]', ']'))
    except ValueError:
        return None
    return value if isinstance(value, list) else [value]


def _passthrough(n):
    if not n.only_input():
        return _UNKNOWN
    if isinstance(n.in_segs[0], _Along):
        return n.in_segs[0]
    if n.attrs.get('layout', 'None') not in _CHANNEL_FIRST:
        # e.g. Pooling(layout='NHWC') on NCHW data pools across the channels
        return _Lost("passes the operator %s ('%s') with layout='%s', which does not keep the "
                     "channels on axis 1 (the tracer follows layouts %s)"
                     % (n.node['op'], n.name, n.attrs['layout'], ', '.join(_CHANNEL_FIRST[1:])))
    return n.in_segs[0]


def _first_input(n):
    """Channel i of the first input is channel i of the output; the other inputs give a
    shape only (``like=`` tensors)."""
    a, b = n.in_shape(), n.out_shape()
    if not n.data or a is None or b is None or len(a) < 2 or len(b) < 2 or a[1] != b[1] or \
            len(n.data) != len(n.node['inputs']):
        return _UNKNOWN
    return n.in_segs[0]


def _batchnorm(n):
    inputs = n.node['inputs']
    axis = int(n.attrs.get('axis', 1))
    ndim = len(n.in_shape() or ())
    if len(n.data) != 1:
        return _UNKNOWN
    if axis not in (1, 1 - ndim):
        return _Blocked("passes the BatchNorm '%s' over axis %d: the tracer follows channels "
                        "on axis 1 only" % (n.name, axis))
    if len(inputs) != 5 or not all(pid in n.param_src for pid, _, _ in inputs[1:]):
        return _UNKNOWN
    roles = ('bn_gamma', 'bn_beta', 'bn_mean', 'bn_var')
    for (pid, _, _), role in zip(inputs[1:], roles):
        for sp, off, st in n.in_segs[0]:
            n.spaces.add(sp, n.param_src[pid], 0, off, st, role)
    return n.in_segs[0]


def _layernorm(n):
    axis = int(n.attrs.get('axis', -1))
    ndim = len(n.in_shape() or ())
    if ndim and axis % ndim >= 2 and not isinstance(n.in_segs[0], _Along):
        # normalising over spatial axes keeps every channel apart: gamma and beta are not
        # per channel, so nothing follows the channels but the tensor
        return n.in_segs[0] if len(n.data) == 1 else _UNKNOWN
    return _Blocked("passes the LayerNorm '%s', which normalises over axis %d: removing a "
                    "channel changes the mean and variance of every other one, so these "
                    "channels cannot be removed exactly" % (n.name, axis))


def _conv(n):
    attrs = n.attrs
    layout = attrs.get('layout', 'None')
    weight = n.param(1)
    no_bias = _flag(attrs, 'no_bias')
    bias = None if no_bias else n.param(2)
    if len(n.data) != 1 or weight is None or (not no_bias and bias is None):
        return _UNKNOWN
    groups = int(attrs.get('num_group', 1))
    filters = int(attrs['num_filter'])
    in_shape = n.in_shape()
    spaces = n.spaces
    if layout not in _CHANNEL_FIRST:
        return _unfollowed(
            spaces, n.nid, weight, bias, filters, n.in_segs[0], in_shape[layout.index('C')],
            "'%s' is a Convolution with layout='%s': the tracer follows channels on axis 1 "
            "(layouts %s) only" % (n.name, layout, ', '.join(_CHANNEL_FIRST[1:])))
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


def _deconv(n):
    """A transposed convolution: its weight is ``(in, out / groups, kernel...)``, so it reads
    its input through weight rows and makes its output channels along weight axis 1."""
    attrs = n.attrs
    weight = n.param(1)
    no_bias = _flag(attrs, 'no_bias', 'True')
    bias = None if no_bias else n.param(2)
    if len(n.data) != 1 or weight is None or (not no_bias and bias is None):
        return _UNKNOWN
    if attrs.get('layout', 'None') not in _CHANNEL_FIRST:
        return _Blocked("passes the Deconvolution '%s' with layout='%s': the tracer follows "
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
        return [(out, 0, 1)]
    for sp, off, st in segs:
        spaces.add(sp, weight, 0, off, st, 'input')
    out = spaces.new(filters, n.nid, weight)
    spaces.producers[out].append(weight)
    spaces.add(out, weight, 1, 0, 1, 'weight')
    if bias is not None:
        spaces.add(out, bias, 0, 0, 1, 'bias')
    return [(out, 0, 1)]


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
    return [(out, j * per_out, 1) for j in range(groups)]


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
        _fold(n, root, groups)
        return root
    return ("feeds the grouped Convolution '%s' (num_group=%d) with channels that do not "
            "split into its groups the same way" % (n.name, groups))


def _fold(n, root, groups):
    """Make space ``root`` (``C`` channels) the ``C / groups`` positions within a group:
    every member and every tensor layout holding it now holds one slice per group."""
    spaces = n.spaces
    per = spaces.size[root] // groups
    spaces.size[root] = per
    spaces.members[root] = [(p, ax, off + j * per * st, st, role)
                            for p, ax, off, st, role in spaces.members[root]
                            for j in range(groups)]
    _relayout(n, root, lambda sp, off, st: [(sp, off + j * per * st, st)
                                            for j in range(groups)])


def _coarsen(n, root, per):
    """Make space ``root`` (``C`` channels) ``C / per`` channels of ``per`` entries each (an
    attention head of ``per`` units): every member and tensor layout holding it follows."""
    spaces = n.spaces
    spaces.size[root] //= per
    spaces.members[root] = [(p, ax, off, st * per, role)
                            for p, ax, off, st, role in spaces.members[root]]
    _relayout(n, root, lambda sp, off, st: [(sp, off, st * per)])


def _relayout(n, root, change):
    """Rewrite every traced tensor's segments of space ``root`` with ``change``."""
    find = n.spaces.find
    for key, segs in list(n.layout.items()):
        inner = segs.segs if isinstance(segs, _Along) else segs
        if not isinstance(inner, list) or not any(find(sp) == root for sp, _, _ in inner):
            continue
        new = [one for sp, off, st in inner for one in (
            change(sp, off, st) if find(sp) == root else [(sp, off, st)])]
        n.layout[key] = segs._replace(segs=new) if isinstance(segs, _Along) else new


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
    return _Lost(reason)


def _produced(spaces, out, weight, bias):
    """Record ``weight`` (its output axis) and ``bias`` as the producers of space ``out``."""
    spaces.producers[out].append(weight)
    spaces.add(out, weight, 0, 0, 1, 'weight')
    if bias is not None:
        spaces.add(out, bias, 0, 0, 1, 'bias')
    return [(out, 0, 1)]


def _dense(n):
    attrs = n.attrs
    weight = n.param(1)
    no_bias = _flag(attrs, 'no_bias')
    bias = None if no_bias else n.param(2)
    flatten = _flag(attrs, 'flatten', 'True')
    shape = n.in_shape()
    if len(n.data) != 1 or weight is None or (not no_bias and bias is None) or shape is None:
        return _UNKNOWN
    segs, units = n.in_segs[0], int(attrs['num_hidden'])
    if isinstance(segs, _Along) and (segs.at(len(shape)) != len(shape) - 1 or segs.inner != 1):
        return _Blocked("passes the Dense '%s' with its channels on axis %d of %s, not the "
                        "last" % (n.name, segs.at(len(shape)), shape))
    if isinstance(segs, _Along) and flatten:
        # (N, T, C) flattened: channel c is feature t * C + c for every t
        rows = int(np.prod(shape[1:-1]))
        for sp, off, st in segs.segs:
            for t in range(rows):
                n.spaces.add(sp, weight, 1, t * shape[-1] + off, st, 'input')
    elif isinstance(segs, _Along):
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
    return _Along(out) if len(shape) > 2 and not flatten else out


def _leaky(n):
    if len(n.data) != 1:
        return _UNKNOWN
    inputs = n.node['inputs']
    if n.attrs.get('act_type', 'leaky') != 'prelu':
        return n.in_segs[0] if len(inputs) == 1 else _UNKNOWN
    if isinstance(n.in_segs[0], _Along):
        return _Blocked("passes the PReLU '%s', whose alpha is per channel on axis 1, with "
                        "its channels on the last axis" % n.name)
    gamma = n.param(1)
    if len(inputs) != 2 or gamma is None:
        return _UNKNOWN
    gshape = n.trace.all_params[gamma].shape
    if gshape and int(np.prod(gshape)) > 1:
        for sp, off, st in n.in_segs[0]:
            n.spaces.add(sp, gamma, 0, off, st, 'scale')
    return n.in_segs[0]


def _embedding(n):
    """An embedding's output channels are the columns of its ``(vocabulary, dim)`` weight,
    on the last axis; the indices it reads hold no channels."""
    weight = n.param(1)
    shape = n.out_shape()
    if len(n.data) != 1 or weight is None or not shape:
        return _UNKNOWN
    out = n.spaces.new(shape[-1], n.nid, weight)
    n.spaces.producers[out].append(weight)
    n.spaces.add(out, weight, 1, 0, 1, 'weight')
    return _Along([(out, 0, 1)])


def _rnn(n):
    """The fused RNN operator (Gluon's rnn.LSTM, GRU, RNN layers): its weights are one flat
    vector concatenated from every gate's reshaped parameters, so neither its input
    features nor its hidden units are followed; both get a reason that names it."""
    mode = n.attrs.get('mode', 'rnn')
    what = "the RNN operator '%s' (mode=%s), whose weights are slices of one flat parameter " \
           "vector: the tracer does not remove %s" % (n.name, mode, '%s')
    for segs in n.in_segs:
        for sp, _, _ in (segs.segs if isinstance(segs, _Along) else segs):
            n.spaces.block(sp, 'feeds ' + what % 'the input features of an RNN')
    shape = n.out_shape()
    if not shape:
        return _UNKNOWN
    kind = {'lstm': 'an LSTM', 'gru': 'a GRU'}.get(mode, 'an RNN')
    out = n.spaces.new(shape[-1], n.nid, n.name, 'are the hidden units of ' + what % (
        'the hidden units of %s' % kind))
    return _Along([(out, 0, 1)])


def _reshape(n):
    # (N, C, ...) -> (N, C, ...) with the same number of entries per channel: each channel
    # keeps its block of entries (e.g. SE's (N, C) -> (N, C, 1, 1)).
    a, b = n.in_shape(), n.out_shape()
    segs = n.in_segs[0] if n.in_segs else None
    if n.only_input() and a and b and isinstance(segs, _Along):
        out = _reshape_along(n, segs, tuple(a), tuple(b))
        if out is not None:
            return out
    elif n.only_input() and a and b and len(a) >= 2 and len(b) >= 2 and a[:2] == b[:2] and \
            all(st == 1 for _, _, st in segs):
        return segs
    elif n.only_input() and a and b and len(a) >= 3 and b == (a[0] * a[1],) + a[2:]:
        # (N, H, ...) -> (N * H, ...): attention heads merged into the batch axis
        return _Along(segs, 0, a[1])
    return _Blocked("passes the %s '%s', which reshapes %s into %s: the channel axis is not "
                    "kept" % (n.node['op'], n.name, a, b))


def _reshape_along(n, segs, a, b):
    """The reshapes of multi-head attention, on channels off axis 1, or None."""
    c = segs.at(len(a))
    if c == 0 and segs.inner > 1 and b == (a[0] // segs.inner, segs.inner) + a[1:]:
        return list(segs.segs)                     # (N * H, ...) -> (N, H, ...)
    if segs.inner != 1:
        return None
    if c == len(a) - 1 and len(b) == len(a) + 1 and b[:-2] == a[:-1] and \
            b[-2] * b[-1] == a[-1]:
        # (..., H * D) -> (..., H, D): a channel becomes a head of D units
        per = b[-1]
        for sp, _, _ in segs.segs:
            n.spaces.heads[n.spaces.find(sp)].append(n.name)
        if all(off % per == 0 and st % per == 0 for _, off, st in segs.segs):
            return _Along([(sp, off // per, st // per) for sp, off, st in segs.segs], -2)
        roots = {n.spaces.find(sp) for sp, _, _ in segs.segs}
        if len(segs.segs) == 1 and segs.segs[0][1:] == (0, 1) and \
                n.spaces.size[roots.pop()] == a[-1]:
            root = n.spaces.find(segs.segs[0][0])
            _coarsen(n, root, per)
            return _Along([(segs.segs[0][0], 0, 1)], -2)
        return None
    if c == len(a) - 2 and b == a[:-2] + (a[-2] * a[-1],):
        # (..., H, D) -> (..., H * D): a head is D consecutive units
        per = a[-1]
        return _Along([(sp, off * per, st * per) for sp, off, st in segs.segs], -1)
    return None


def _reduction(n):
    # reducing spatial axes only keeps every channel where it was
    shape = n.in_shape() or ()
    axes = _axes(n.attrs.get('axis'), len(shape))
    if n.only_input() and axes and min(axes) >= 2 and not _flag(n.attrs, 'exclude') and \
            all(st == 1 for _, _, st in n.in_segs[0]):
        return n.in_segs[0]
    return _Blocked("passes the %s '%s' over axes %s, which reduces the channel axis"
                    % (n.node['op'], n.name, axes or 'all'))


def _along_axis(n, axis, what):
    """An operator acting along one axis: it keeps channels when that axis is spatial."""
    ndim = len(n.in_shape() or ())
    if not n.only_input() or not ndim:
        return _UNKNOWN
    segs = n.in_segs[0]
    if isinstance(segs, _Along) and axis % ndim != segs.at(ndim):
        return segs
    if not isinstance(segs, _Along) and axis % ndim >= 2:
        return segs
    return _Blocked("passes the %s '%s' %s axis %d, which %s" % (
        n.node['op'], n.name, what, axis, 'mixes the channels' if axis % ndim == 1
        else 'mixes the samples of the batch'))


def _softmax(n):
    return _along_axis(n, int(n.attrs.get('axis', -1)), 'over')


def _slice_axis(n):
    return _along_axis(n, int(n.attrs.get('axis')), 'along')


def _slice(n):
    begin, end = _tuple_attr(n.attrs.get('begin')), _tuple_attr(n.attrs.get('end'))
    step = _tuple_attr(n.attrs.get('step')) or []
    a, b = n.in_shape(), n.out_shape()
    if not n.only_input() or begin is None or end is None or step is None or not a or \
            len(a) < 2:
        return _UNKNOWN
    whole = (len(begin) < 2 or begin[1] in (None, 0)) and \
        (len(end) < 2 or end[1] in (None, a[1])) and (len(step) < 2 or step[1] in (None, 1))
    if whole and b and b[1] == a[1]:
        return n.in_segs[0]
    return _Blocked("passes the slice '%s' (begin=%s, end=%s), which slices the channel "
                    "axis" % (n.name, n.attrs.get('begin'), n.attrs.get('end')))


def _slice_like(n):
    axes = _tuple_attr(n.attrs.get('axes', '()'))
    ndim = len(n.in_shape() or ())
    if axes and ndim and all(int(a) % ndim >= 2 for a in axes) and len(n.data) == 2 and \
            len(n.node['inputs']) == 2:
        return n.in_segs[0]
    return _Blocked("passes the slice_like '%s' with axes=%s, which may slice the channel axis "
                    "(give axes=(2, 3) to crop spatial axes only)"
                    % (n.name, n.attrs.get('axes', '()')))


def _pad(n):
    width = _tuple_attr(n.attrs.get('pad_width'))
    if not n.only_input() or not width:
        return _UNKNOWN
    if any(width[:4]):
        return _Blocked("passes the Pad '%s' with pad_width=%s, which pads the batch or channel "
                        "axis" % (n.name, n.attrs.get('pad_width')))
    return n.in_segs[0]


def _upsampling(n):
    if n.attrs.get('sample_type', 'nearest') != 'nearest' or int(n.attrs.get('num_args', 1)) \
            != 1:
        return _Blocked("passes the UpSampling '%s' (sample_type=%s, num_args=%s): the tracer "
                        "follows nearest upsampling of one tensor" % (
                            n.name, n.attrs.get('sample_type', 'nearest'),
                            n.attrs.get('num_args', 1)))
    return _passthrough(n)


def _transpose(n):
    axes = _tuple_attr(n.attrs.get('axes', '()'))
    segs = n.in_segs[0] if n.in_segs else None
    ndim = len(n.in_shape() or ())
    if n.only_input() and axes and len(axes) == ndim and ndim >= 2 and \
            (not isinstance(segs, _Along) or segs.inner == 1):
        at = axes.index(segs.at(ndim) if isinstance(segs, _Along) else 1)
        inner = segs.segs if isinstance(segs, _Along) else segs
        if at == 1:
            return inner
        if at != 0:
            return _Along(inner, at - ndim)
    return _Blocked("passes the transpose '%s' (axes=%s), which moves the channel axis"
                    % (n.name, n.attrs.get('axes', '()')))


def _swapaxis(n):
    ndim = len(n.in_shape() or ())
    dims = {int(n.attrs.get('dim1', 0)) % ndim, int(n.attrs.get('dim2', 0)) % ndim} \
        if ndim else {0}
    segs = n.in_segs[0] if n.in_segs else None
    if n.only_input() and isinstance(segs, _Along) and segs.inner == 1:
        at = segs.at(ndim)
        if at not in dims or len(dims) == 1:
            return segs          # e.g. an RNN layer's NTC <-> TNC swap of batch and time
        to = (dims - {at}).pop()
        if to == 1:
            return segs.segs
        if to != 0:
            return segs._replace(axis=to - ndim)
    elif n.only_input() and not isinstance(segs, _Along) and (min(dims) >= 2 or
                                                                 len(dims) == 1):
        return segs
    return _Blocked("passes the SwapAxis '%s' (dim1=%s, dim2=%s), which moves the channel "
                    "axis" % (n.name, n.attrs.get('dim1', 0), n.attrs.get('dim2', 0)))


def _batch_dot(n):
    """Attention's batch_dot on heads merged into the batch axis: head h of one input meets
    head h of the other, so their channels are the same channels."""
    if len(n.data) != 2 or len(n.node['inputs']) != 2:
        return _UNKNOWN
    a, b = n.in_segs
    if isinstance(a, _Along) and isinstance(b, _Along) and a.at(3) == b.at(3) == 0 and \
            a.inner == b.inner > 1 and len(n.in_shape(0)) == len(n.in_shape(1)) == 3:
        if [(o, st) for _, o, st in a.segs] == [(o, st) for _, o, st in b.segs] and \
                [n.spaces.size[n.spaces.find(sp)] for sp, _, _ in a.segs] == \
                [n.spaces.size[n.spaces.find(sp)] for sp, _, _ in b.segs]:
            for (x, _, _), (y, _, _) in zip(a.segs, b.segs):
                n.spaces.union(x, y)
            return a
    return _Blocked("passes the batch_dot '%s', which the tracer follows on attention heads "
                    "merged into the batch axis only" % n.name)


def _flatten(n):
    if len(n.data) != 1:
        return _UNKNOWN
    shape = n.in_shape()
    mult = int(np.prod(shape[2:])) if shape and len(shape) > 2 else 1
    return [(sp, off * mult, st * mult) for sp, off, st in n.in_segs[0]]


def _concat(n):
    dim = int(n.attrs.get('dim', 1))
    shape0 = n.in_shape()
    if len(n.data) != len(n.node['inputs']) or shape0 is None:
        return _UNKNOWN
    if dim not in (1, 1 - len(shape0)):
        return _Blocked("passes the Concat '%s' along axis %d: the tracer follows channels on "
                        "axis 1 only" % (n.name, dim))
    out, base = [], 0
    for entry, segs in zip(n.data, n.in_segs):
        out.extend((sp, base + off, st) for sp, off, st in segs)
        base += n.trace.shape(*entry)[1]
    return out


def _elementwise(n):
    trace, spaces, data, in_segs = n.trace, n.spaces, n.data, n.in_segs
    shapes = [trace.shape(*e) for e in data]
    out_shape = n.out_shape()
    if any(isinstance(s, _Along) for s in in_segs):
        return _elementwise_last(n, shapes, out_shape)
    if out_shape is None or len(out_shape) < 2 or any(s is None for s in shapes):
        return _UNKNOWN
    channels = out_shape[1]
    # Parameters combined with the tensor (a per-channel scale or shift): members on axis 1.
    for pid, _, _ in n.node['inputs']:
        if pid not in n.param_src:
            continue
        pshape = trace.shape(pid)     # a variable, or weight * mask
        if pshape is None or len(pshape) != len(out_shape):
            return _UNKNOWN
        if pshape[1] == channels and channels > 1:
            for entry, segs in zip(data, in_segs):
                if trace.shape(*entry)[1] == channels:
                    for sp, off, st in segs:
                        spaces.add(sp, n.param_src[pid], 1, off, st, 'scale')
                    break
    full = [(e, s, segs) for e, s, segs in zip(data, shapes, in_segs)
            if len(s) == len(out_shape) and s[1] == channels]
    others = [s for s in shapes if not (len(s) == len(out_shape) and s[1] == channels)]
    if not full or any(len(s) == len(out_shape) and s[1] != 1 for s in others) or \
            any(len(s) != len(out_shape) for s in others):
        return _UNKNOWN
    if channels == 1 and len(full) < len(data):
        return _UNKNOWN
    first = full[0][2]
    for _, _, segs in full[1:]:
        if [(o, st) for _, o, st in segs] != [(o, st) for _, o, st in first] or \
                [spaces.size[spaces.find(sp)] for sp, _, _ in segs] != \
                [spaces.size[spaces.find(sp)] for sp, _, _ in first]:
            reason = ("meets channels laid out differently (another concatenation or grouping) "
                      "in %s ('%s')" % (n.node['op'], n.name))
            for _, _, s in full:
                for sp, _, _ in s:
                    spaces.block(sp, reason)
            return _Blocked(reason)
    for _, _, segs in full[1:]:
        for (a, _, _), (b, _, _) in zip(first, segs):
            spaces.union(a, b)
    return first


def _elementwise_last(n, shapes, out_shape):
    """Elementwise operators on channels on the last axis (a transformer's residual add):
    every input holds the same channels, or broadcasts one value over them."""
    spaces = n.spaces
    full = [segs for segs, shape in zip(n.in_segs, shapes) if shape == out_shape]
    if len(n.data) != len(n.node['inputs']) or not full or any(
            shape != out_shape and (shape is None or shape[-1] != 1) for shape in shapes):
        return _UNKNOWN
    if not all(isinstance(segs, _Along) for segs in full):
        reason = ("meets, in %s ('%s'), a tensor of the same shape whose last axis holds no "
                  "channel the tracer follows" % (n.node['op'], n.name))
        for segs in full:
            for sp, _, _ in (segs.segs if isinstance(segs, _Along) else segs):
                spaces.block(sp, reason)
        return _Blocked(reason)
    first = full[0].segs
    for segs in full[1:]:
        if [(o, st) for _, o, st in segs.segs] != [(o, st) for _, o, st in first] or \
                [spaces.size[spaces.find(sp)] for sp, _, _ in segs.segs] != \
                [spaces.size[spaces.find(sp)] for sp, _, _ in first]:
            return _Blocked("meets channels laid out differently in %s ('%s')"
                            % (n.node['op'], n.name))
        for (a, _, _), (b, _, _) in zip(first, segs.segs):
            spaces.union(a, b)
    return full[0]


_PASS = 'channel i in is channel i out'
_SPATIAL = 'channel i in is channel i out (spatial axes only)'
_OPERATORS = {}
_OPERATORS.update({op: _Rule(_passthrough, _PASS, last=True) for op in sorted(_PASSTHROUGH)})
_OPERATORS['Pooling'] = _Rule(_passthrough, _PASS + ' (layouts with C on axis 1)')
_OPERATORS.update({op: _Rule(_elementwise, 'joins the channels of its inputs (one group); a '
                             'per-channel parameter is a member', last=True)
                   for op in sorted(_ELEMENTWISE)})
_OPERATORS.update({op: _Rule(_reshape, 'follows when the batch and channel axes are kept and '
                             'each channel keeps its entries, and the reshapes that split a '
                             'last axis into attention heads, merge heads into the batch axis '
                             'and back', last=True)
                   for op in sorted(_RESHAPES)})
_OPERATORS.update({op: _Rule(_reduction, 'follows when it reduces axes >= 2 only')
                   for op in sorted(_REDUCTIONS)})
_OPERATORS.update({
    'Convolution': _Rule(_conv, 'starts a group (weight rows, bias); reads its input through '
                         'weight columns; depthwise: one group in and out; grouped: a group '
                         'is a position within every convolution group (num_group kept)'),
    'Deconvolution': _Rule(_deconv, 'starts a group (weight axis 1, bias); reads its input '
                           'through weight axis 0; depthwise: one group in and out'),
    'FullyConnected': _Rule(_dense, 'starts a group (weight rows, bias); reads its input '
                            'through weight columns (H*W per channel after Flatten); '
                            'flatten=False on rank > 2: the last axis', last=True),
    'BatchNorm': _Rule(_batchnorm, 'gamma, beta, running mean and variance are members'),
    'BatchNormWithReLU': _Rule(_batchnorm, 'as BatchNorm'),
    '_contrib_BatchNormWithReLU': _Rule(_batchnorm, 'as BatchNorm'),
    'LayerNorm': _Rule(_layernorm, 'blocks the channels it normalises over (not removable '
                       'exactly); normalising over axes >= 2 follows', last=True),
    'LeakyReLU': _Rule(_leaky, _PASS + ' (gelu, elu, ...); PReLU alpha is a member',
                       last=True),
    'Flatten': _Rule(_flatten, 'channel i becomes H*W consecutive features'),
    'Concat': _Rule(_concat, 'places the groups of its inputs at offsets (axis 1)'),
    'concat': _Rule(_concat, 'as Concat'),
    'Pad': _Rule(_pad, _SPATIAL),
    'UpSampling': _Rule(_upsampling, _SPATIAL + '; nearest, one input'),
    '_contrib_BilinearResize2D': _Rule(_first_input, _SPATIAL),
    '_contrib_AdaptiveAvgPooling2D': _Rule(_passthrough, _SPATIAL),
    'ones_like': _Rule(_passthrough, _PASS + ' (the values do not depend on the input)'),
    'zeros_like': _Rule(_passthrough, _PASS + ' (the values do not depend on the input)'),
    'slice_axis': _Rule(_slice_axis, _SPATIAL),
    'slice': _Rule(_slice, 'follows when the channel axis is not sliced'),
    'slice_like': _Rule(_slice_like, 'follows with axes >= 2 (the second input gives a '
                        'shape only)'),
    'Crop': _Rule(_first_input, _SPATIAL + ' (the second input gives a shape only)'),
    'softmax': _Rule(_softmax, 'follows over any axis but the channel axis (and the batch)',
                     last=True),
    'log_softmax': _Rule(_softmax, 'as softmax', last=True),
    'transpose': _Rule(_transpose, 'moves the channel axis where the axes say (not into the '
                       'batch axis)', last=True),
    'batch_dot': _Rule(_batch_dot, 'joins the attention heads of its two inputs (heads merged '
                       'into the batch axis)', last=True),
    'SwapAxis': _Rule(_swapaxis, 'follows when it swaps axes >= 2, or moves channels off '
                      'axis 1 onto another axis but the batch axis', last=True),
    'swapaxes': _Rule(_swapaxis, 'as SwapAxis', last=True),
    'Embedding': _Rule(_embedding, 'starts a group on the last axis (weight columns); the '
                       'indices it reads hold no channels'),
    'RNN': _Rule(_rnn, 'blocks its input features and its hidden units (one flat weight '
                 'vector: LSTM/GRU hidden units are not prunable)', last=True),
})


def _groups(trace, spaces, layout):
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
        group = ChannelGroup(name, size, members, roles, not reasons, '; '.join(reasons),
                             producers)
        group._heads = list(OrderedDict.fromkeys(spaces.heads[r]))
        groups.append(group)
    index = {r: i for i, r in enumerate(roots)}
    tensors = {}
    for key, segs in layout.items():
        if isinstance(segs, list) and segs:
            tensors[key] = [(index[spaces.find(sp)], off, st) for sp, off, st in segs]
    # Unique names: a second group named after the same node gets a suffix.
    counts = {}
    for g in groups:
        if g.name in counts:
            counts[g.name] += 1
            g.name = '%s#%d' % (g.name, counts[g.name])
        else:
            counts[g.name] = 0
    graph = ChannelGraph(groups, trace.input_names, trace)
    graph._layout = tensors   # (node, output) -> [(group index, offset, stride)] on axis 1
    return graph


# --------------------------------------------------------------------------- shrink rules

_SHRINK_RULES = OrderedDict()   # block class -> rule(block, kept)


def register_shrink_rule(block_class: type,
                         rule: Union[Callable[[Any, Dict[str, Dict[int, np.ndarray]]], None],
                                     None]) -> None:
    """Tell :func:`shrink` how to update a block whose channel counts live in attributes.

    The generic resize updates Gluon's own layers (``channels``, ``units``, ...). A block
    of your own may keep a count in an attribute that only its author knows, such as the
    head count of an attention cell, read in ``hybrid_forward`` to split heads with a
    reshape. After :func:`shrink` (or :func:`apply_plan`) has sliced the parameters of
    such a block and its children, it calls ``rule(block, kept)`` so that the block's
    attributes match the new shapes. The tracer splits channels into attention heads only
    inside a block that has a rule (the block or an enclosing one): other head groups are
    not prunable, and their reason says to register one. See
    docs/shrink.md#blocks-with-their-own-channel-counts.

    Parameters
    ----------
    block_class : type
        A subclass of ``gluon.Block``. The rule applies to its instances and to those of
        its subclasses (the most derived registered class wins).
    rule : callable or None
        ``rule(block, kept)``, called once per shrink for every instance whose parameters
        (its own or its children's) changed shape, after the parameters and Gluon's layers
        are resized and before the all-or-nothing check. ``kept`` maps the full name of
        each such parameter to ``{axis: kept indices}`` (numpy int arrays); in
        :func:`apply_plan` only the counts are known, and the indices given are the leading
        ones. The rule changes the block's attributes (its return value is ignored); an
        exception in it makes the shrink fail with nothing changed. None removes the rule
        of ``block_class``.

    Raises
    ------
    SurgeryTypeError
        ``block_class`` is not a subclass of ``gluon.Block``, or ``rule`` is neither
        callable nor None.

    Examples
    --------
    An attention cell written the way gluonnlp writes it (heads split by reshape,
    ``batch_dot``, merged back), followed by the output projection:

    >>> import mxnet as mx, paramsurgery as ps
    >>> from mxnet import gluon
    >>> from mxnet.gluon import nn
    >>> class MultiHeadAttentionCell(gluon.HybridBlock):
    ...     def __init__(self, units, num_heads, **kwargs):
    ...         super().__init__(**kwargs)
    ...         self._units, self._num_heads = units, num_heads
    ...         with self.name_scope():
    ...             self.proj_query = nn.Dense(units, flatten=False, prefix='query_')
    ...             self.proj_key = nn.Dense(units, flatten=False, prefix='key_')
    ...             self.proj_value = nn.Dense(units, flatten=False, prefix='value_')
    ...     def _split(self, x):    # (batch, tokens, units) -> (batch * heads, tokens, units/heads)
    ...         x = x.reshape(shape=(0, 0, self._num_heads, -1)).transpose(axes=(0, 2, 1, 3))
    ...         return x.reshape(shape=(-1, 0, 0), reverse=True)
    ...     def hybrid_forward(self, F, x):
    ...         q, k, v = (self._split(p(x)) for p in (self.proj_query, self.proj_key,
    ...                                                self.proj_value))
    ...         att = F.softmax(F.batch_dot(q, k, transpose_b=True), axis=-1)
    ...         out = F.batch_dot(att, v).reshape(shape=(-1, self._num_heads, 0, 0),
    ...                                           reverse=True)
    ...         return out.transpose(axes=(0, 2, 1, 3)).reshape(shape=(0, 0, -1))
    >>> net = nn.HybridSequential(prefix='net_')
    >>> with net.name_scope():
    ...     net.add(MultiHeadAttentionCell(8, 4, prefix='att_'),
    ...             nn.Dense(8, flatten=False, prefix='out_'))
    >>> x = mx.nd.random.uniform(shape=(2, 5, 8))
    >>> ps.trace_channels(net, x)['net_att_query_weight'].reason
    "splits its channels into attention heads in the reshape 'net_att_reshape0' of MultiHeadAttentionCell 'net_att', whose head count shrink cannot update: register a rule with ps.register_shrink_rule(MultiHeadAttentionCell, rule) (docs/shrink.md#blocks-with-their-own-channel-counts)"
    >>> def attention_rule(cell, kept):
    ...     per_head = cell._units // cell._num_heads
    ...     cell._units = cell.proj_query.weight.shape[0]
    ...     cell._num_heads = cell._units // per_head
    >>> ps.register_shrink_rule(MultiHeadAttentionCell, attention_rule)
    >>> group = ps.trace_channels(net, x)['net_att_query_weight']
    >>> group.size, group.prunable      # 4 heads of 2 units: q, k, v rows, out columns
    (4, True)
    >>> net.initialize()
    >>> ps.prune_channels(net, 0.5, inputs=x)
    ['net_att_query_weight']
    >>> masked_out = net(x)
    >>> plan = ps.shrink(net, inputs=x)
    >>> net[0]._num_heads, net[0].proj_value, net[1]
    (2, Dense(8 -> 4, linear), Dense(4 -> 8, linear))
    >>> (net(x) - masked_out).abs().max().asscalar() < 1e-5
    True
    """
    if not isinstance(block_class, type) or not issubclass(block_class, gluon.Block):
        raise SurgeryTypeError(
            'register_shrink_rule(block_class, rule): block_class must be a subclass of '
            'gluon.Block (the class, not an instance), got %r.' % (block_class,))
    if rule is None:
        _SHRINK_RULES.pop(block_class, None)
        return
    if not callable(rule):
        raise SurgeryTypeError(
            "register_shrink_rule(%s, rule): rule must be a callable rule(block, kept) or None "
            "(to remove the rule), got %s." % (block_class.__name__, type(rule).__name__))
    _SHRINK_RULES[block_class] = rule


def shrink_rule_of(block):
    """The rule registered for ``block``'s class or its nearest registered base, or None."""
    for cls in type(block).__mro__:
        if cls in _SHRINK_RULES:
            return _SHRINK_RULES[cls]
    return None


def _enclosing_blocks(blocks, node_name):
    """The blocks whose name scope made ``node_name``, innermost first."""
    hits = [b for b in blocks if b.prefix and node_name.startswith(b.prefix)]
    return sorted(hits, key=lambda b: -len(b.prefix))


def _check_head_rules(net, graph):
    """Attention heads shrink exactly only when their block's head count follows: a group
    split into heads outside every block with a shrink rule is not prunable."""
    heads = [g for g in graph.groups if g.prunable and g._heads]
    if not heads:
        return
    blocks = _internals.walk_blocks(net)
    for g in heads:
        for node in g._heads:
            around = _enclosing_blocks(blocks, node)
            if any(shrink_rule_of(b) is not None for b in around):
                continue
            owner = around[0] if around else net
            g.prunable = False
            g.reason = (
                "splits its channels into attention heads in the reshape '%s' of %s '%s', "
                "whose head count shrink cannot update: register a rule with "
                "ps.register_shrink_rule(%s, rule) "
                "(docs/shrink.md#blocks-with-their-own-channel-counts)"
                % (node, type(owner).__name__, owner.name, type(owner).__name__))
            break


# --------------------------------------------------------------------------- public API

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
    _require_hybrid(net, 'trace_channels')
    shapes = _input_shapes(_positional(inputs), 'inputs')
    graph = _build(net, shapes)
    _check_owners(net, graph)
    return graph


def _check_owners(net, graph):
    """Groups whose parameters live in a SymbolBlock (a fixed graph) cannot be shrunk."""
    fixed = {}
    for blk in _internals.walk_blocks(net):
        if isinstance(blk, gluon.SymbolBlock):
            for param in blk.collect_params().values():
                fixed[param.name] = blk.name
    if not fixed:
        return
    for g in graph.groups:
        hit = [m[0] for m in g.members if m[0] in fixed]
        if hit and g.prunable:
            g.prunable = False
            g.reason = ("'%s' belongs to the SymbolBlock '%s', whose graph is fixed"
                        % (hit[0], fixed[hit[0]]))


def count_ops(net, *inputs) -> Tuple[int, int]:
    """Multiply-accumulates for one sample and learnable parameters of ``net``.

    MACs count the Convolution, Deconvolution (transposed convolution) and FullyConnected
    layers only (a convolution: output elements times input channels per group times kernel
    size; a transposed one: input elements times output channels per group times kernel
    size, masked or not; bias additions are not counted); the batch size divides out.
    Parameters count the weights and biases of those layers and BatchNorm gamma and beta,
    each shared parameter once; running statistics and masks are not counted (a masked
    weight counts in full: shrink it to make it smaller).

    Parameters
    ----------
    net : HybridBlock
    *inputs : NDArray or tuple of int
        One batch per data input, or its shape.

    Returns
    -------
    (int, int)
        ``(macs, params)``.

    Examples
    --------
    >>> import paramsurgery as ps
    >>> from mxnet.gluon import nn
    >>> net = nn.HybridSequential()
    >>> net.add(nn.Conv2D(8, 3, padding=1), nn.BatchNorm(), nn.Dense(10))
    >>> ps.count_ops(net, (4, 3, 16, 16))   # 16*16*8*3*9 + 2048*10; 224 + 16 + 20490
    (75776, 20730)
    """
    _require_hybrid(net, 'count_ops')
    shapes = _input_shapes(_positional(inputs), 'inputs')
    with real_deconvolution():
        trace = _Trace(net, shapes)
    return _count(trace)


def _op_counts(trace):
    """``({weight: MACs of the layers using it}, {learnable parameter: size})`` for one
    sample, in :func:`count_ops` units."""
    nodes = trace.nodes
    macs, counted = {}, {}

    def src(entry):
        node = nodes[entry[0]]
        while node['op'] != 'null' and node['inputs']:
            node = nodes[node['inputs'][0][0]]
        return node['name']

    for nid, node in enumerate(nodes):
        op = node['op']
        if op not in ('Convolution', 'Deconvolution', 'FullyConnected', 'BatchNorm',
                      'BatchNormWithReLU', '_contrib_BatchNormWithReLU'):
            continue
        inputs = node['inputs']
        if op in ('Convolution', 'Deconvolution', 'FullyConnected'):
            wname = src(inputs[1])
            wshape = trace.shapes.get(wname)
            out = trace.shape(nid)
            if wshape is None or out is None:
                continue
            if op == 'Convolution':
                layer = int(np.prod(out[1:], dtype=np.int64)) * int(np.prod(wshape[1:]))
            elif op == 'Deconvolution':
                # every input element meets (output channels per group) x kernel weights;
                # the weight is (in channels, out channels per group, kernel...)
                data = trace.shape(*inputs[0][:2])
                if data is None:
                    continue
                layer = int(np.prod(data[1:], dtype=np.int64)) * int(np.prod(wshape[1:]))
            else:
                rows = int(np.prod(out[1:-1], dtype=np.int64)) if len(out) > 2 else 1
                layer = rows * int(np.prod(wshape))
            macs[wname] = macs.get(wname, 0) + layer
        for entry in inputs[1:3]:
            name = src(entry)
            if name in trace.all_params:
                counted[name] = int(np.prod(trace.shapes.get(name, (0,))))
    return macs, counted


def _count(trace):
    macs, counted = _op_counts(trace)
    return int(sum(macs.values())), int(sum(counted.values()))


# --------------------------------------------------------------------------- pruning

def _channel_view(arr, member, size):
    """``(size, -1)`` view of the slices of ``arr`` that hold the channels of a member."""
    _, axis, off, st = member
    moved = np.moveaxis(arr, axis, 0)[off:off + size * st]
    return moved.reshape(size, -1)


def _channel_rows(member, channels):
    """Indices along the member's axis that hold ``channels``."""
    _, _, off, st = member
    channels = np.asarray(channels, dtype=np.int64)
    return (off + channels[:, None] * st + np.arange(st)[None, :]).reshape(-1)


def _check_round_to(round_to):
    if isinstance(round_to, (bool, np.bool_)) or not _is_dim(round_to):
        raise SurgeryTypeError('round_to must be an int >= 1, got %s %r.'
                               % (type(round_to).__name__, round_to))
    if round_to < 1:
        raise SurgeryValueError('round_to=%d: it must be >= 1 (1 keeps exact counts).'
                                % round_to)
    return int(round_to)


def _kept_count(kept, alive, round_to, name=None):
    """The number of channels kept after rounding (``round_to``: the nearest multiple, at
    least one multiple, at most what is alive, at least one channel; or a
    :class:`_FastCounts`: the nearest fast count of group ``name``)."""
    if isinstance(round_to, _FastCounts):
        return max(1, round_to.kept(name, kept, alive))
    if round_to > 1:
        kept = int(math.floor(kept / round_to + 0.5)) * round_to
        kept = max(kept, round_to)
    return max(1, min(kept, alive))


class _FastCounts:
    """``round_to='fast'``: kept counts rounded to the nearest fast count of each group in a
    latency model (ties to the larger count), among those not above the channels still
    unmasked."""

    def __init__(self, latency, groups):
        self.fast = {}
        for g in groups:
            size = latency.sizes.get(g.name)
            if size is None:
                raise SurgeryValueError(
                    "round_to='fast': the latency model has no channel group '%s' (it models "
                    "%s). Build it with the same key as here (docs/latency.md#latency-models)."
                    % (g.name, and_more(list(latency.sizes), 5)))
            if size != g.size:
                raise SurgeryValueError(
                    "round_to='fast': channel group '%s' has %d channels, but the latency "
                    "model was built when it had %d. Build the model on this net."
                    % (g.name, g.size, size))
            self.fast[g.name] = latency.fast_counts(g.name)

    def kept(self, name, kept, alive):
        options = [c for c in self.fast[name] if c <= alive] or [alive]
        return min(options, key=lambda c: (abs(c - kept), -c))


def _rounding(round_to, latency):
    """``round_to`` checked against ``latency`` (a LatencyModel for ``'fast'``, else None)."""
    if isinstance(round_to, str) and round_to == 'fast':
        if latency is None or not (hasattr(latency, 'fast_counts') and
                                   isinstance(getattr(latency, 'sizes', None), Mapping)):
            raise (SurgeryValueError if latency is None else SurgeryTypeError)(
                "round_to='fast' rounds to the fast counts of a latency model: pass "
                "latency=ps.latency_model(net, inputs=..., runtime=...), got %s "
                "(docs/latency.md#planning-for-a-runtime)." % type(latency).__name__)
        return 'fast'
    if isinstance(round_to, str):
        raise SurgeryValueError("round_to must be an int >= 1 or 'fast', got %r." % round_to)
    round_to = _check_round_to(round_to)
    if latency is not None:
        raise SurgeryValueError("latency= is used by round_to='fast' only, got round_to=%d."
                                % round_to)
    return round_to


class _GroupState:
    """The current weights, masks and scores of one group, read once."""

    def __init__(self, group, weights, masks):
        self.group = group
        size = group.size
        alive = np.zeros(size, dtype=bool)
        has_mask = False
        for member in group.maskable:
            mask = masks.get(member[0])
            if mask is None:
                alive[:] = True
            else:
                has_mask = True
                alive |= np.any(_channel_view(mask, member, size) != 0, axis=1)
        if not group.maskable or not has_mask:
            alive[:] = True
        self.alive = alive
        self.weights = weights
        self.masks = masks

    def effective(self, name):
        weight = self.weights[name]
        mask = self.masks.get(name)
        return weight if mask is None else weight * mask


def _scores(state, importance, net):
    group = state.group
    size = group.size
    if callable(importance):
        scores = importance(group)
        if hasattr(scores, 'asnumpy'):
            scores = scores.asnumpy()
        try:
            scores = np.asarray(scores, dtype=np.float64)
        except (TypeError, ValueError):
            raise SurgeryTypeError(
                "importance(group) for channel group '%s' returned %s; it must return %d "
                "numbers (one per channel)." % (group.name, type(scores).__name__, size)) from None
        if scores.shape != (size,):
            raise SurgeryValueError(
                "importance(group) for channel group '%s' returned shape %s; expected (%d,) "
                "(one score per channel)." % (group.name, scores.shape, size))
    elif importance in ('l1', 'l2'):
        scores = np.zeros(size)
        for member in group.maskable:
            view = _channel_view(state.effective(member[0]), member, size).astype(np.float64)
            scores += np.abs(view).sum(axis=1) if importance == 'l1' else \
                np.sqrt((view ** 2).sum(axis=1))
    elif importance == 'bn_gamma':
        gammas = [m for m, r in zip(group.members, group.roles) if r == 'bn_gamma']
        if not gammas:
            raise SurgeryValueError(
                "importance='bn_gamma': channel group '%s' has no BatchNorm, so it has no "
                "gamma to rank its channels by. Use importance='l2' (or select groups with a "
                "BatchNorm with key=)." % group.name)
        scores = np.zeros(size)
        for member in gammas:
            view = _channel_view(state.effective(member[0]), member, size)
            scores += np.abs(view.astype(np.float64)).sum(axis=1)
    else:  # taylor
        scores = np.zeros(size)
        params = net.collect_params()
        for member in group.maskable:
            for _, data, grad in replicas(params[member[0]]):
                if grad is None:
                    continue
                prod = np.abs(data.asnumpy().astype(np.float64) * grad.asnumpy())
                scores += _channel_view(prod, member, size).sum(axis=1)
    if not np.all(np.isfinite(scores)):
        raise SurgeryValueError(
            "The %s importance of channel group '%s' has NaN or infinite scores (channels "
            "%s): its weights%s are not finite. Fix the weights first."
            % (importance if isinstance(importance, str) else 'custom', group.name,
               np.flatnonzero(~np.isfinite(scores))[:5].tolist(),
               ' or gradients' if importance == 'taylor' else ''))
    return scores


def _lowest(scores, candidates, count):
    """The ``count`` candidates of lowest score, ties broken by lower index first."""
    candidates = np.asarray(candidates, dtype=np.int64)
    order = np.lexsort((candidates, scores[candidates]))
    return np.sort(candidates[order[:count]])


def prune_channels(net, amount: Union[int, float], *, inputs, key=None,
                   importance: Union[str, Callable[[ChannelGroup], Any]] = 'l2',
                   scope: str = 'layer', round_to: Union[int, str] = 1, mode: str = 'graph',
                   latency=None) -> List[str]:
    """Mask whole channels of the prunable channel groups of ``net``.

    Every maskable member of a group (producer weights and biases, BatchNorm gamma and
    beta, the consumers' input slices, depthwise weights; not running statistics) gets the
    same channels masked through :func:`apply_mask` (``combine='multiply'``), so the masked
    net computes exactly what :func:`shrink` will compute once the channels are removed.

    Parameters
    ----------
    net : HybridBlock
        An initialised network.
    amount : int or float
        As in docs/pruning.md#how-much-amount: a float in [0, 1] is the fraction of each
        group's channels still unmasked (``floor(amount * n + 0.5)``), an int a count. With
        ``scope='global'`` the same rule applies to the channels of all selected groups
        together. At least one channel of every group is kept.
    inputs : NDArray or tuple of int or list of them
        A batch (or its shape) per data input, to trace the net.
    key : str or Parameter or list or callable, default None
        A group is selected when one of its producing weights is selected (see
        :func:`select`); None selects every prunable group.
    importance : {'l2', 'l1', 'bn_gamma', 'taylor'} or callable, default 'l2'
        How channels are ranked (lowest pruned first, ties by lower index): ``'l1'``/
        ``'l2'`` the sum over maskable members of the norm of each channel's slice of the
        masked weight; ``'bn_gamma'`` the sum of ``|gamma|`` over the group's BatchNorms
        (network slimming); ``'taylor'`` the sum over members and contexts of
        ``|w * grad|`` from the last backward; a callable ``f(group) -> scores`` (one
        number per channel).
    scope : {'layer', 'global'}, default 'layer'
        Per group, or all selected groups ranked together, each group's scores divided by
        its largest score.
    round_to : int or 'fast', default 1
        The number of channels kept is rounded to the nearest multiple (ties up), at least
        ``round_to`` (or all channels), at most the channels still unmasked. ``'fast'``:
        to the nearest fast count of the group in ``latency`` (ties to the larger count;
        docs/latency.md#planning-for-a-runtime). With ``scope='global'`` or a dict amount
        the count that ``round_to=1`` would keep is rounded.

    mode : {'graph', 'update'}, default 'graph'
        Where the channel masks act (see :func:`apply_mask`): in the forward graph, or in
        the stored weights, which the Trainer keeps at zero (the dense graph, the lowest
        cost). :func:`shrink` removes the channels in both modes.
    latency : LatencyModel, default None
        For ``round_to='fast'``: a model of this net (see :func:`latency_model`).

    Returns
    -------
    list of str
        The names of the groups in which channels were masked.

    Raises
    ------
    SurgeryTypeError
        ``net`` is not a HybridBlock, or a wrong argument type.
    SurgeryValueError
        A bad ``amount`` (docs/pruning.md#how-much-amount), ``scope``, ``round_to`` or
        ``importance``; the key selects no prunable group (the message says why each
        selected one is not); a group without a BatchNorm with ``'bn_gamma'``.
    SelectionError
        ``key`` selects no parameter.

    Nothing is changed when an error is raised.

    Examples
    --------
    >>> import mxnet as mx, paramsurgery as ps
    >>> from mxnet.gluon import nn
    >>> net = nn.HybridSequential(prefix='net_')
    >>> with net.name_scope():
    ...     net.add(nn.Conv2D(8, 3, use_bias=False), nn.BatchNorm(), nn.Activation('relu'),
    ...             nn.GlobalAvgPool2D(), nn.Dense(2))
    >>> net.initialize(mx.init.Xavier())
    >>> ps.prune_channels(net, 0.5, inputs=(1, 3, 8, 8))
    ['net_conv0_weight']
    >>> mask = ps.get_mask(net, 'net_conv0_weight')['net_conv0_weight']
    >>> (mask.asnumpy().sum(axis=(1, 2, 3)) > 0).sum()   # 4 of 8 filters kept
    4
    >>> sorted(ps.masked(net))
    ['net_batchnorm0_beta', 'net_batchnorm0_gamma', 'net_conv0_weight', 'net_dense0_weight']
    """
    _require_hybrid(net, 'prune_channels')
    _check_mode(mode)
    if scope not in _SCOPES:
        raise SurgeryValueError("scope must be 'layer' or 'global', got %r." % (scope,))
    if not callable(importance) and importance not in _IMPORTANCES:
        raise SurgeryValueError(
            "importance must be one of %s or a callable f(group) -> scores, got %r."
            % (', '.join(repr(i) for i in _IMPORTANCES), importance))
    round_to = _rounding(round_to, latency)
    for one in (amount.values() if isinstance(amount, Mapping) else [amount]):
        _check_amount(one, what='channels')   # type, NaN, sign, float > 1
    shapes = _input_shapes(inputs)
    graph = _build(net, shapes)
    _check_owners(net, graph)
    groups = _selected_groups(net, graph, key)
    if isinstance(amount, Mapping):
        groups = _named_groups(graph, groups, amount, scope, key)
    if round_to == 'fast':
        round_to = _FastCounts(latency, groups)
    _finish_deferred(net, inputs, shapes)
    params = net.collect_params()
    names = list(OrderedDict.fromkeys(m[0] for g in groups for m in g.members))
    with autograd.pause():
        weights = {n: replicas(params[n])[0][1].asnumpy() for n in names}
    have = set(masked(net))
    mine = [n for n in names if n in have]
    existing = {n: m.asnumpy() for n, m in get_mask(net, mine).items()} if mine else {}
    pruned = choose_channels(net, groups, weights, existing, amount, importance, scope,
                             round_to)
    plan = OrderedDict()
    touched = []
    for group, chosen in zip(groups, pruned):
        if not len(chosen):
            continue
        touched.append(group.name)
        for member in group.maskable:
            name = member[0]
            if name not in plan:
                plan[name] = np.ones(weights[name].shape, dtype=np.dtype(params[name].dtype))
            np.moveaxis(plan[name], member[1], 0)[_channel_rows(member, chosen)] = 0
    if plan:
        apply_mask(net, plan, combine='multiply', mode=mode)
    return touched


def choose_channels(net, groups, weights, existing, amount, importance, scope, round_to):
    """The channels :func:`prune_channels` masks in each of ``groups``: a sorted index
    array per group, from the members' arrays (``weights``, existing ``masks``; numpy)."""
    states = [_GroupState(g, weights, existing) for g in groups]
    scores = [_scores(s, importance, net) for s in states]
    if importance == 'taylor' and all(not np.any(sc) for sc in scores):
        raise SurgeryValueError(
            "importance='taylor' needs the gradients of the last backward, but every "
            "gradient of the selected groups is zero. Run a forward and backward (without "
            "trainer.step, which keeps them, or before zero_grad) first.")
    if scope == 'global':
        return _global(states, scores, amount, round_to)
    pruned = []
    for s, sc in zip(states, scores):
        alive = np.flatnonzero(s.alive)
        one = amount[s.group.name] if isinstance(amount, Mapping) else amount
        count = prune_count(one, len(alive), what='channels',
                            where="channel group '%s'" % s.group.name)
        kept = _kept_count(len(alive) - count, len(alive), round_to, s.group.name) \
            if len(alive) else 0
        pruned.append(_lowest(sc, alive, len(alive) - kept))
    return pruned


def _global(states, scores, amount, round_to):
    entries = []
    for gi, (s, sc) in enumerate(zip(states, scores)):
        alive = np.flatnonzero(s.alive)
        if not len(alive):
            continue
        top = sc[alive].max()
        norm = sc / top if top > 0 else np.zeros_like(sc)
        entries.extend((norm[i], gi, i) for i in alive)
    count = prune_count(amount, len(entries), what='channels',
                        where='the %d selected channel groups' % len(states))
    entries.sort()
    left = [int(s.alive.sum()) for s in states]
    chosen = [[] for _ in states]
    done = 0
    for _, gi, i in entries:
        if done == count:
            break
        if left[gi] > 1:
            chosen[gi].append(i)
            left[gi] -= 1
            done += 1
    if not isinstance(round_to, _FastCounts) and round_to == 1:
        return [np.sort(np.asarray(c, dtype=np.int64)) for c in chosen]
    out = []
    for s, sc, c in zip(states, scores, chosen):
        alive = np.flatnonzero(s.alive)
        if not len(alive):
            out.append(np.zeros(0, dtype=np.int64))
            continue
        kept = _kept_count(len(alive) - len(c), len(alive), round_to, s.group.name)
        out.append(_lowest(sc, alive, len(alive) - kept))
    return out


def _named_groups(graph, selected, amount, scope, key):
    """The groups a dict amount names (group name -> amount), in graph order, checked."""
    if scope != 'layer':
        raise SurgeryValueError("a dict amount gives each channel group its own amount; it "
                                "needs scope='layer', got scope=%r." % (scope,))
    by_name = {g.name: g for g in graph.groups}
    chosen = {id(g) for g in selected}
    for name in amount:
        group = by_name.get(name)
        if group is None:
            raise SurgeryValueError(
                "amount names channel group %r, which this net does not have. Its prunable "
                "groups are: %s." % (name, and_more([g.name for g in graph.prunable], 5)))
        if not group.prunable:
            raise SurgeryValueError("amount names channel group %r, which cannot be pruned: "
                                    "%s." % (name, group.reason))
        if id(group) not in chosen:
            raise SurgeryValueError("amount names channel group %r, which key=%r does not "
                                    "select." % (name, key))
    return [g for g in selected if g.name in amount]


def _selected_groups(net, graph, key):
    if key is None:
        groups = graph.prunable
        if not groups:
            raise SurgeryValueError(
                "%s '%s' has no prunable channel group: %s. See ps.trace_channels(net, ...) "
                "for the table." % (type(net).__name__, net.name, '; '.join(
                    "'%s' %s" % (g.name, g.reason) for g in graph.groups[:4])))
        return groups
    chosen = select(unmasked_params(net), key)
    hit = [g for g in graph.groups if any(p in chosen for p in g.producers)]
    groups = [g for g in hit if g.prunable]
    if not groups:
        if hit:
            raise SurgeryValueError(
                "key %r selects only channel groups that cannot be pruned: %s."
                % (key, '; '.join("'%s' %s" % (g.name, g.reason) for g in hit[:4])))
        raise SurgeryValueError(
            "key %r selects %s, which produce%s no channel group (a group is selected by "
            "the weight of a Convolution or Dense layer producing it, e.g. '%s')."
            % (key, ', '.join("'%s'" % n for n in list(chosen)[:3]),
               's' if len(chosen) == 1 else '',
               graph.prunable[0].name if graph.prunable else '.*conv.*weight'))
    return groups
