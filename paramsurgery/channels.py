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
from typing import Any, Callable, List, Mapping, NamedTuple, Tuple, Union

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

__all__ = ['trace_channels', 'ChannelGraph', 'ChannelGroup', 'prune_channels', 'count_ops']

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
    'rsqrt', 'gelu', 'selu', 'elu',
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

    def new(self, size, node, name, reason=''):
        self.parent.append(len(self.parent))
        self.size.append(int(size))
        self.members.append([])
        self.reasons.append([reason] if reason else [])
        self.first.append(node)
        self.name.append(name)
        self.producers.append([])
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
        self.first[a] = min(self.first[a], self.first[b])
        return a

    def block(self, s, reason):
        self.reasons[self.find(s)].append(reason)

    def add(self, s, param, axis, offset, stride, role):
        self.members[self.find(s)].append((param, axis, offset, stride, role))


def _build(net, shapes) -> ChannelGraph:
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
            for sp, _, _ in (segs if isinstance(segs, list) else ()):
                spaces.block(sp, reason)

    def fresh(node_id, reason, out_index=0):
        shape = trace.shape(node_id, out_index)
        if shape is None or len(shape) < 2:
            return None
        return [(spaces.new(shape[1], node_id, nodes[node_id]['name'], reason), 0, 1)]

    def param_of(entry):
        return param_src.get(entry[0])

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
        if lost is not None and op in ('Convolution', 'FullyConnected'):
            # the input's channels cannot be followed, its own output channels can
            in_segs = [[] if isinstance(s, _Lost) else s for s in in_segs]
        elif lost is not None:
            block_all(data, lost.reason)
            for k in range(n_outputs(name)):
                layout[(nid, k)] = lost
            continue
        known = all(s is not None for s in in_segs)
        out = unknown
        why = "passes the operator %s ('%s') that the tracer does not know" % (op, name)
        if not inputs:
            layout[(nid, 0)] = fresh(nid, "made by the operator %s ('%s')" % (op, name))
            continue
        if not known:
            out = unknown
        elif op in ('Convolution',):
            out = _conv(trace, spaces, nid, node, attrs, data, in_segs, param_of)
        elif op == 'FullyConnected':
            out = _dense(trace, spaces, nid, node, attrs, data, in_segs, param_of)
        elif op in ('BatchNorm', 'BatchNormWithReLU', '_contrib_BatchNormWithReLU') \
                and len(data) == 1:
            axis = int(attrs.get('axis', 1))
            ndim = len(trace.shape(data[0][0], data[0][1]) or ())
            if axis in (1, 1 - ndim) and len(inputs) == 5 and \
                    all(pid in param_src for pid, _, _ in inputs[1:]):
                roles = ('bn_gamma', 'bn_beta', 'bn_mean', 'bn_var')
                for (pid, _, _), role in zip(inputs[1:], roles):
                    for sp, off, st in in_segs[0]:
                        spaces.add(sp, param_src[pid], 0, off, st, role)
                out = in_segs[0]
            elif axis not in (1, 1 - ndim):
                why = ("passes the BatchNorm '%s' over axis %d: the tracer follows channels "
                       "on axis 1 only" % (name, axis))
        elif op in _PASSTHROUGH and len(data) == 1 and len(inputs) == 1:
            out = in_segs[0]
            if attrs.get('layout', 'None') not in _CHANNEL_FIRST:
                # e.g. Pooling(layout='NHWC') on NCHW data pools across the channels
                out = _Lost("passes the operator %s ('%s') with layout='%s', which does not "
                            "keep the channels on axis 1 (the tracer follows layouts %s)"
                            % (op, name, attrs['layout'], ', '.join(_CHANNEL_FIRST[1:])))
                block_all(data, out.reason)
        elif op == 'LeakyReLU' and len(data) == 1:
            out = _leaky(trace, spaces, node, attrs, data, in_segs, inputs, param_src)
        elif op in _RESHAPES and len(data) == 1 and len(inputs) == 1:
            # (N, C, ...) -> (N, C, ...) with the same number of entries per channel: each
            # channel keeps its block of entries (e.g. SE's (N, C) -> (N, C, 1, 1)).
            a, b = trace.shape(*data[0]), trace.shape(nid)
            if a and b and len(a) >= 2 and len(b) >= 2 and a[:2] == b[:2] and \
                    all(st == 1 for _, _, st in in_segs[0]):
                out = in_segs[0]
        elif op in _REDUCTIONS and len(data) == 1 and len(inputs) == 1:
            # reducing spatial axes only keeps every channel where it was
            shape = trace.shape(*data[0]) or ()
            axes = _axes(attrs.get('axis'), len(shape))
            if axes and min(axes) >= 2 and attrs.get('exclude', 'False') in ('False', '0') \
                    and all(st == 1 for _, _, st in in_segs[0]):
                out = in_segs[0]
        elif op == 'Flatten' and len(data) == 1:
            shape = trace.shape(*data[0])
            mult = int(np.prod(shape[2:])) if shape and len(shape) > 2 else 1
            out = [(sp, off * mult, st * mult) for sp, off, st in in_segs[0]]
        elif op in ('Concat', 'concat') and len(data) == len(inputs):
            out = _concat(trace, attrs, data, in_segs)
        elif op in _ELEMENTWISE:
            out, why = _elementwise(trace, spaces, nid, node, data, in_segs, inputs,
                                    param_src, why)
        if out is unknown:
            block_all(data, why)
            for k in range(n_outputs(name)):
                layout[(nid, k)] = fresh(nid, why, k)
        else:
            layout[(nid, 0)] = out
    for head in trace.graph['heads']:
        block_all([head], "reaches the net output ('%s')" % nodes[head[0]]['name'])
    graph = _groups(trace, spaces, layout)
    graph._param_nodes = set(param_src)   # nodes that compute parameters (weight * mask)
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


def _conv(trace, spaces, nid, node, attrs, data, in_segs, param_of):
    inputs = node['inputs']
    layout = attrs.get('layout', 'None')
    weight = param_of(inputs[1]) if len(inputs) > 1 else None
    no_bias = attrs.get('no_bias', 'False') in ('True', 'true', '1')
    bias = param_of(inputs[2]) if not no_bias and len(inputs) > 2 else None
    if len(data) != 1 or weight is None or (not no_bias and bias is None):
        return _UNKNOWN
    groups = int(attrs.get('num_group', 1))
    filters = int(attrs['num_filter'])
    in_shape = trace.shape(*data[0])
    if layout not in _CHANNEL_FIRST:
        return _unfollowed(
            spaces, nid, weight, bias, filters, in_segs[0], in_shape[layout.index('C')],
            "'%s' is a Convolution with layout='%s': the tracer follows channels on axis 1 "
            "(layouts %s) only" % (node['name'], layout, ', '.join(_CHANNEL_FIRST[1:])))
    channels = in_shape[1]
    segs = in_segs[0]
    if groups == 1:
        for sp, off, st in segs:
            spaces.add(sp, weight, 1, off, st, 'input')
        out = spaces.new(filters, nid, weight)
        spaces.producers[out].append(weight)
        spaces.add(out, weight, 0, 0, 1, 'weight')
        if bias is not None:
            spaces.add(out, bias, 0, 0, 1, 'bias')
        return [(out, 0, 1)]
    if groups == channels == filters:
        # depthwise: output channel i reads input channel i only
        for sp, off, st in segs:
            spaces.add(sp, weight, 0, off, st, 'depthwise')
            if bias is not None:
                spaces.add(sp, bias, 0, off, st, 'bias')
        return segs
    reason = ("passes the grouped Convolution '%s' (num_group=%d), whose groups would no "
              "longer split the channels evenly" % (node['name'], groups))
    for sp, _, _ in segs:
        spaces.block(sp, reason)
    out = spaces.new(filters, nid, weight, reason)
    return _produced(spaces, out, weight, bias)


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


def _dense(trace, spaces, nid, node, attrs, data, in_segs, param_of):
    inputs = node['inputs']
    weight = param_of(inputs[1]) if len(inputs) > 1 else None
    no_bias = attrs.get('no_bias', 'False') in ('True', 'true', '1')
    bias = param_of(inputs[2]) if not no_bias and len(inputs) > 2 else None
    flatten = attrs.get('flatten', 'True') in ('True', 'true', '1')
    shape = trace.shape(*data[0])
    if len(data) != 1 or weight is None or (not no_bias and bias is None) or shape is None:
        return _UNKNOWN
    if len(shape) > 2 and not flatten:
        return _unfollowed(
            spaces, nid, weight, bias, int(attrs['num_hidden']), in_segs[0], shape[-1],
            "'%s' is a FullyConnected (Dense) with flatten=False on a rank-%d input: it reads "
            "the last axis, and the tracer follows channels on axis 1 only"
            % (node['name'], len(shape)))
    mult = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    for sp, off, st in in_segs[0]:
        spaces.add(sp, weight, 1, off * mult, st * mult, 'input')
    out = spaces.new(int(attrs['num_hidden']), nid, weight)
    return _produced(spaces, out, weight, bias)


def _leaky(trace, spaces, node, attrs, data, in_segs, inputs, param_src):
    act = attrs.get('act_type', 'leaky')
    if act != 'prelu':
        return in_segs[0] if len(inputs) == 1 else _UNKNOWN
    if len(inputs) != 2 or inputs[1][0] not in param_src:
        return _UNKNOWN
    gamma = param_src[inputs[1][0]]
    gshape = trace.all_params[gamma].shape
    if gshape and int(np.prod(gshape)) > 1:
        for sp, off, st in in_segs[0]:
            spaces.add(sp, gamma, 0, off, st, 'scale')
    return in_segs[0]


def _concat(trace, attrs, data, in_segs):
    dim = int(attrs.get('dim', 1))
    shape0 = trace.shape(*data[0])
    if shape0 is None or dim not in (1, 1 - len(shape0)):
        return _UNKNOWN
    out, base = [], 0
    for entry, segs in zip(data, in_segs):
        out.extend((sp, base + off, st) for sp, off, st in segs)
        base += trace.shape(*entry)[1]
    return out


def _elementwise(trace, spaces, nid, node, data, in_segs, inputs, param_src, why):
    shapes = [trace.shape(*e) for e in data]
    out_shape = trace.shape(nid)
    if out_shape is None or len(out_shape) < 2 or any(s is None for s in shapes):
        return _UNKNOWN, why
    channels = out_shape[1]
    # Parameters combined with the tensor (a per-channel scale or shift): members on axis 1.
    for pid, _, _ in inputs:
        if pid not in param_src:
            continue
        pshape = trace.shape(pid)     # a variable, or weight * mask
        if pshape is None or len(pshape) != len(out_shape):
            return _UNKNOWN, why
        if pshape[1] == channels and channels > 1:
            for entry, segs in zip(data, in_segs):
                if trace.shape(*entry)[1] == channels:
                    for sp, off, st in segs:
                        spaces.add(sp, param_src[pid], 1, off, st, 'scale')
                    break
    full = [(e, s, segs) for e, s, segs in zip(data, shapes, in_segs)
            if len(s) == len(out_shape) and s[1] == channels]
    others = [s for s in shapes if not (len(s) == len(out_shape) and s[1] == channels)]
    if not full or any(len(s) == len(out_shape) and s[1] != 1 for s in others) or \
            any(len(s) != len(out_shape) for s in others):
        return _UNKNOWN, why
    if channels == 1 and len(full) < len(data):
        return _UNKNOWN, why
    first = full[0][2]
    for _, _, segs in full[1:]:
        if [(o, st) for _, o, st in segs] != [(o, st) for _, o, st in first] or \
                [spaces.size[spaces.find(sp)] for sp, _, _ in segs] != \
                [spaces.size[spaces.find(sp)] for sp, _, _ in first]:
            reason = ("meets channels of a different concatenation in %s ('%s')"
                      % (node['op'], node['name']))
            for _, _, s in full:
                for sp, _, _ in s:
                    spaces.block(sp, reason)
            return _UNKNOWN, reason
    for _, _, segs in full[1:]:
        for (a, _, _), (b, _, _) in zip(first, segs):
            spaces.union(a, b)
    return first, why


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
        groups.append(ChannelGroup(name, size, members, roles, not reasons,
                                   '; '.join(reasons), producers))
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
