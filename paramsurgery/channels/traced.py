"""The last channel graph traced for a net, reused while nothing it depends on changed.

``prune_channels`` then ``shrink`` on the same net and input shapes trace the same graph
(the tracer sees through ``weight * mask``, so the masks ``prune_channels`` adds change no
group): :func:`prune_channels` leaves its graph here, keyed by the net's structure once its
masks are on, and :func:`shrink` takes it instead of tracing again. The key covers what a
trace reads: every block's class and attributes (the contents of its dicts, lists and
tuples too, other objects by identity: children, parameters, an installed
``hybrid_forward``), every block's parameters' names, shapes and dtypes, the shrink rule of every block
class, NumPy array mode and the input shapes. Any change to one of them (a shrink, a
resized block, a mask added or removed, a rule registered) misses, and the net is traced
again. Only the groups are reused: the diagnosis of a failed check traces afresh.
"""
import weakref
from typing import Any, NamedTuple

from mxnet.util import is_np_array

from .. import _mx
from .rules import shrink_rule_of
from .trace import build, check_owners

# Hybridisation caches and hooks' bookkeeping: they do not change the symbol a call with
# mx.sym.var inputs builds.
_IGNORED = frozenset(('_cached_graph', '_cached_op', '_cached_op_args', '_flags',
                      '_callback', '_monitor_all', '_backend', '_backend_opts',
                      '_first_forward', '_partition_if_dynamic'))

# net -> (key, graph): one entry per net, gone with the net
_LAST = weakref.WeakKeyDictionary()


def _token(value, held, depth=0):
    """A hashable stand-in for ``value``: scalars themselves, containers by their contents
    (a few levels deep), any other object by identity (and a reference to it appended to
    ``held``: an identity stays unique only while its object lives)."""
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return value
    if depth < 4:
        if isinstance(value, dict):
            return ('dict',) + tuple((_token(k, held, depth + 1), _token(v, held, depth + 1))
                                     for k, v in value.items())
        if isinstance(value, (list, tuple)):
            return (type(value).__name__,) + tuple(_token(v, held, depth + 1) for v in value)
    held.append(_reference(value))
    return ('id', id(value))


def _reference(value):
    """A weak reference where one can be had: a strong one to a block or a method bound to
    one would keep the net alive through its own entry."""
    try:
        return weakref.ref(value)
    except TypeError:
        return lambda: value


class _Entry(NamedTuple):
    key: tuple
    held: list      # references to the objects whose identities the key holds
    graph: Any


def structure_key(net, shapes, held):
    """What the channel graph of ``net`` traced with ``shapes`` depends on (hashable)."""
    parts = [tuple(tuple(s) for s in shapes), is_np_array()]
    classes = {}
    for blk in _mx.walk_blocks(net):
        parts.append(_token(blk, held))
        parts.append(tuple((k, _token(v, held)) for k, v in blk.__dict__.items()
                           if k not in _IGNORED))
        classes.setdefault(type(blk), blk)
        # (each block's own parameters: collect_params() would cost a walk of its own)
        parts.append(tuple((name, _token(p, held), p.shape, str(p.dtype)) for name, p in
                           list(blk.params.items()) + list(_mx.block_params(blk).items())))
    parts.append(tuple((_token(cls, held), _token(shrink_rule_of(blk), held))
                       for cls, blk in classes.items()))
    return tuple(parts)


def remember(net, shapes, graph):
    """Keep ``graph`` as the trace of ``net`` in its present state."""
    if _weak(net):
        held = []
        _LAST[net] = _Entry(structure_key(net, shapes, held), held, graph)


def traced(net, shapes):
    """The channel graph of ``net`` (owners checked): the remembered one when the net and
    ``shapes`` are as they were, else a new trace. Forgets the remembered one either way:
    a graph is used once (prune_channels to shrink), never handed out twice."""
    entry = _LAST.pop(net, None) if _weak(net) else None
    # (an object the key names by identity that died may have left its id to another)
    if entry is not None and all(ref() is not None for ref in entry.held) and \
            entry.key == structure_key(net, shapes, []):
        return entry.graph
    graph = build(net, shapes)
    check_owners(net, graph)
    return graph


def _weak(net):
    try:
        weakref.ref(net)
    except TypeError:
        return False
    return True
