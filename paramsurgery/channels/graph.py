"""The records of the channel tracer: groups, graphs, and what travels between its parts.

:class:`ChannelGroup` and :class:`ChannelGraph` are public (``ps.trace_channels`` returns
them); the rest are the typed records the tracer's operator handlers take and return
(:class:`Node` in; a list of :class:`Segment`, :class:`Along`, :class:`Lost`,
:class:`Blocked` or ``UNKNOWN`` out) and the attribute parsers they share.
"""
import json
from typing import Any, Callable, List, NamedTuple

from ..errors import SelectionError

# Roles of the members of a group. Running statistics are updated in place by BatchNorm and
# cannot carry a mask: they follow the channels when the net is shrunk, nothing more.
NOT_MASKABLE = ('bn_mean', 'bn_var')


# What an operator handler returns when it cannot follow the channels.
UNKNOWN = ('unknown',)


# The layouts whose channel axis is axis 1 (the only one the tracer follows).
CHANNEL_FIRST = ('None', 'NCW', 'NCHW', 'NCDHW')


class Member(NamedTuple):
    """One slice holding a group's channels: channel ``i`` is ``[offset + i*stride,
    offset + (i+1)*stride)`` of the parameter along ``axis``. A tuple, so ``name, axis,
    offset, stride = member`` reads it."""
    param: str      # the parameter's full name
    axis: int       # its axis that holds the channels
    offset: int     # where channel 0 starts along that axis
    stride: int     # entries per channel (H*W for a Dense reading a Flatten)

    def __repr__(self):
        # the plain tuple members were before they had names: printed tables stay the same
        return tuple.__repr__(self)


class Slot(NamedTuple):
    """A member with its role, as the tracer collects them (see ``ChannelGroup.roles``)."""
    param: str
    axis: int
    offset: int
    stride: int
    role: str

    @property
    def member(self) -> Member:
        return Member(self.param, self.axis, self.offset, self.stride)


class Segment(NamedTuple):
    """A run of a tensor's channel axis: entries ``offset + i*stride`` ... hold channel
    ``i`` of channel space ``space`` (a traced tensor's layout is a list of them)."""
    space: int      # the channel space (a union-find index while tracing; a group index after)
    offset: int
    stride: int


class Lost(NamedTuple):
    """The layout of a tensor whose axis 1 holds no channels (after an NHWC convolution, a
    channel-last Pooling, a Dense with flatten=False on rank > 2): nothing downstream is
    followed, and a Convolution or Dense reading it starts a group of its own."""
    reason: str
    # False when the operator read only its input's shape (``arange_like``): the input's
    # channels are not blocked by it
    blocks: bool = True


class Along(NamedTuple):
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


class ChannelGroup:
    """Channels that must be removed together, and every slice that holds them.

    Attributes
    ----------
    name : str
        The weight of the first producing layer in topological order (for a data input:
        the input's name; for channels made by an unknown operator: that node's name).
    size : int
        The number of channels.
    members : list of Member
        ``Member(param, axis, offset, stride)`` (a tuple): channel ``i`` is the slice
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

    def __init__(self, name, size, members, roles, prunable, reason, producers, heads=()):
        self.name = name
        self.size = int(size)
        self.members = [Member(*m) for m in members]
        self.roles = list(roles)
        self.prunable = bool(prunable)
        self.reason = reason
        self.producers = list(producers)
        self._heads = list(heads)   # the Splits of these channels whose count a block holds

    @property
    def maskable(self) -> List[Member]:
        """The members that carry masks (every member but BatchNorm running statistics)."""
        return [m for m, r in zip(self.members, self.roles) if r not in NOT_MASKABLE]

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

    def __init__(self, groups, inputs, trace, layout=None, param_nodes=()):
        self.groups = list(groups)
        self.inputs = list(inputs)
        self._trace = trace                     # the Trace the groups were found in
        # (node, output) -> [Segment(group index, offset, stride)] along axis 1
        self._layout = dict(layout or {})
        self._param_nodes = set(param_nodes)    # nodes that compute parameters (weight * mask)

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


class Node(NamedTuple):
    """What an operator handler sees of one graph node."""
    trace: Any          # Trace: the graph and the inferred shapes
    spaces: Any         # _Spaces: the channel spaces found so far
    nid: int            # the node's index in the graph
    node: dict          # the node's JSON (op, name, inputs)
    attrs: dict         # its attributes, as strings
    data: list          # its data inputs: (node id, output index)
    in_segs: list       # the layout of each data input
    param_src: dict     # node id -> the parameter that node stands for
    layout: dict        # (node id, output) -> layout, for the tensors traced so far
    derived: Any = frozenset()  # nodes computing a tensor from parameters (reshape, concat)

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


class Split(NamedTuple):
    """A reshape that splits a group's channels by a count written in the block's code (an
    attention cell's head count, split attention's channels per radix split; an RNN
    operator's hidden size): shrink must update that count, so the group is prunable only
    inside a block with a shrink rule."""
    node: str       # the reshape (the RNN operator)
    what: str       # what the channels are split into ('attention heads', 'radix splits')
    count: str      # the count the block holds ('head', 'channel', 'hidden unit')
    op: str = 'reshape'     # what the node is, for the reason


class Blocked(NamedTuple):
    """A handler's answer for a node it does not follow, with the reason."""
    reason: str


class Rule(NamedTuple):
    """A row of the operator table."""
    handler: Callable[[Node], Any]
    channels: str       # what the operator does with channels (docs/shrink.md's table)
    last: bool = False  # whether it also follows channels on the last axis (Along)
    # the data inputs that may hold no channels (Lost) without blocking the output: the
    # indices of an embedding, a softmax's lengths, the input of a layer making its own
    lost: tuple = ()
    # whether its handler reads back a weight rearranged from parameters (the walk's
    # ``derived`` nodes); any other operator sees such a tensor as one of unknown channels
    rearranged: bool = False


# ``Rule.lost`` of an operator whose every data input may hold no channels.
EVERY_INPUT = tuple(range(8))


class Problem(NamedTuple):
    """Why a shrink cannot commit: the kind chooses the fix printed after the message."""
    kind: str       # 'rule' (a shrink rule raised), 'fails' (the shrunk net does not run),
    #                 'differs' (it computes something else than the masked net)
    message: str


def flag(attrs, key, default='False'):
    return attrs.get(key, default) in ('True', 'true', '1')


def tuple_attr(text):
    """An attribute such as '(0, 0, 1, 1)' or '(None, 2)' as a list (None kept)."""
    if text in (None, 'None', ''):
        return []
    try:
        value = json.loads(text.replace('(', '[').replace(')', ']').replace('None', 'null')
                           .replace(',]', ']'))
    except ValueError:
        return None
    return value if isinstance(value, list) else [value]


def axes_attr(text, ndim):
    """The axes of a reduction attribute such as '(2, 3)' or '-1', normalised; [] if none."""
    if text in (None, 'None', '()', ''):
        return []
    try:
        value = json.loads(text.replace('(', '[').replace(')', ']').replace(',]', ']'))
    except ValueError:
        return []
    value = value if isinstance(value, list) else [value]
    return [int(a) % ndim for a in value] if ndim else []
