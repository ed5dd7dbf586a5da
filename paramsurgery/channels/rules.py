"""How blocks follow their new shapes: Gluon's own layers are resized generically, and a
block whose channel counts live in attributes only its author knows has a rule registered
with :func:`register_shrink_rule` (an attention cell's head count)."""
from collections import OrderedDict
from typing import Any, Callable, Dict, List, NamedTuple, Union

import numpy as np
from mxnet import gluon

from .. import _mx
from ..errors import SurgeryTypeError
from .graph import Problem

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
    attributes match the new shapes. The tracer splits channels into attention heads, or
    into radix splits by a count written in a reshape (ResNeSt's split attention), only
    inside a block that has a rule (the block or an enclosing one): other such groups are
    not prunable, and their reason says to register one. gluoncv's ``SplitAttentionConv``,
    gluonnlp's ``DotProductSelfAttentionCell`` (BERT's fused self-attention) and
    ``MultiHeadAttentionCell`` (its Transformer's), and Gluon's ``rnn.LSTM``, ``GRU`` and
    ``RNN`` layers (their hidden size) have theirs already. See
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


def _split_attention_rule(block, kept):
    """gluoncv's SplitAttentionConv (ResNeSt) reshapes its convolution's output into radix
    splits of ``block.channels`` each: that count follows the convolution's rows."""
    block.channels = block.conv.weight.shape[0] // block.radix


def _self_attention_rule(cell, kept):
    """gluonnlp's DotProductSelfAttentionCell (BERT's) keeps its head count and units in
    attributes: its reshapes split the query, key and value weights into ``_num_heads``
    heads and its FullyConnected makes ``units * 3`` features. Whole heads were removed, so
    the units per head are unchanged."""
    per_head = cell.units // cell._num_heads
    cell.units = cell.query_weight.shape[0]
    cell._num_heads = cell.units // per_head


def _multi_head_rule(cell, kept):
    """gluonnlp's MultiHeadAttentionCell (its Transformer's) keeps its head count and the
    units of its query, key and value projections in attributes; whole heads were removed,
    so the units per head are unchanged."""
    heads = cell.proj_query.weight.shape[0] // (cell._query_units // cell._num_heads)
    for name in ('query', 'key', 'value'):
        setattr(cell, '_%s_units' % name, getattr(cell, 'proj_' + name).weight.shape[0])
    cell._num_heads = heads


def _rnn_layer_rule(block, kept):
    """Gluon's rnn.LSTM, GRU and RNN layers keep their hidden size (which makes their zero
    begin state and the RNN operator's ``state_size``) in an attribute."""
    _mx.resize_rnn_layer(block)


# Rules of blocks whose counts the generic resize does not know, by the class's module and
# name, so that their package need not be imported to know them; a rule registered for the
# class comes first.
_KNOWN_RULES = {'gluoncv.nn.splat.SplitAttentionConv': _split_attention_rule,
                'gluonnlp.model.bert.DotProductSelfAttentionCell': _self_attention_rule,
                'gluonnlp.model.attention_cell.MultiHeadAttentionCell': _multi_head_rule}
_KNOWN_RULES.update({'mxnet.gluon.rnn.rnn_layer.' + name: _rnn_layer_rule
                     for name in ('LSTM', 'GRU', 'RNN')})


def shrink_rule_of(block):
    """The rule registered for ``block``'s class or its nearest registered base (or known
    for it: gluoncv's SplitAttentionConv, gluonnlp's DotProductSelfAttentionCell and
    MultiHeadAttentionCell), or None."""
    for cls in type(block).__mro__:
        if cls in _SHRINK_RULES:
            return _SHRINK_RULES[cls]
        known = _KNOWN_RULES.get('%s.%s' % (cls.__module__, cls.__qualname__))
        if known is not None:
            return known
    return None


def _enclosing_blocks(blocks, node_name):
    """The blocks whose name scope made ``node_name``, innermost first."""
    hits = [b for b in blocks if b.prefix and node_name.startswith(b.prefix)]
    return sorted(hits, key=lambda b: -len(b.prefix))


def check_head_rules(net, graph):
    """Attention heads (radix splits) shrink exactly only when their block's head count
    (channels per split) follows: a group split so outside every block with a shrink rule
    is not prunable."""
    heads = [g for g in graph.groups if g.prunable and g._heads]
    if not heads:
        return
    blocks = _mx.walk_blocks(net)
    for g in heads:
        for split in g._heads:
            around = _enclosing_blocks(blocks, split.node)
            if any(shrink_rule_of(b) is not None for b in around):
                continue
            owner = around[0] if around else net
            g.prunable = False
            if isinstance(owner, gluon.SymbolBlock):
                g.reason = (
                    "splits its channels into %s in the %s '%s' of the exported graph, which "
                    "writes the %s count: shrink the Gluon net instead, whose block a rule "
                    "updates (docs/shrink.md#blocks-with-their-own-channel-counts)"
                    % (split.what, split.op, split.node, split.count))
                break
            g.reason = (
                "splits its channels into %s in the %s '%s' of %s '%s', whose %s count "
                "shrink cannot update: register a rule with "
                "ps.register_shrink_rule(%s, rule) "
                "(docs/shrink.md#blocks-with-their-own-channel-counts)"
                % (split.what, split.op, split.node, type(owner).__name__, owner.name,
                   split.count, type(owner).__name__))
            break


class Resize(NamedTuple):
    """A block whose parameters change shape, and how Gluon's generic resize treats it."""
    block: Any
    depthwise: bool     # a depthwise (transposed) convolution: its ``groups`` follow too


def resized_blocks(net, params) -> List[Resize]:
    """The blocks that own ``params`` (each once, in the order the parameters come), read
    before anything is resized (a depthwise layer stops looking depthwise once resized)."""
    owners = {}
    for blk in _mx.walk_blocks(net):
        for param in _mx.block_params(blk).values():
            owners.setdefault(id(param), []).append(blk)
    blocks = OrderedDict()
    for param in params:
        for blk in owners.get(id(param), ()):
            blocks[id(blk)] = blk
    return [Resize(b, (_mx.is_conv(b) or _mx.is_deconv(b)) and
                   _mx.is_depthwise(b)) for b in blocks.values()]


def resize(resizes):
    """Give every block its new channel counts, read from its parameters' new shapes."""
    for one in resizes:
        _mx.resize_block(one.block, one.depthwise)


def run_rules(net, kept):
    """Call the shrink rule of every block whose parameters (or its children's) changed
    shape (``kept``: parameter name -> {axis: kept indices}); None, or the Problem."""
    for blk in _mx.walk_blocks(net):
        rule = shrink_rule_of(blk)
        if rule is None:
            continue
        mine = {name: kept[name] for name in blk.collect_params() if name in kept}
        if not mine:
            continue
        try:
            rule(blk, mine)
        except Exception as err:  # pylint: disable=broad-except
            return Problem('rule', "The shrink rule %s registered for %s raised %s on block "
                           "'%s': %s." % (getattr(rule, '__name__', repr(rule)),
                                          type(blk).__name__, type(err).__name__, blk.name,
                                          str(err).splitlines()[0] if str(err) else ''))
    return None
