"""Channel pruning: which channels of the selected groups to mask (per group or ranked
together, with the kept counts rounded), and :func:`prune_channels`, which masks them on
every maskable member."""
import math
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, Callable, List, Union

import numpy as np
from mxnet import autograd

from .. import _mx
from .._amounts import check_amount
from ..access import replicas
from ..errors import SurgeryTypeError, SurgeryValueError, and_more
from ..masks import get_mask, masked, unmasked_params
from ..masks.apply import apply_core_masks, check_mode
from ..pruning_core import prune_count
from ..select import select
from .graph import ChannelGroup
from .importance import IMPORTANCES, GroupState, channel_rows, lowest, scores_of
from .inputs import finish_deferred, input_shapes, is_dim, require_hybrid
from .traced import remember, traced

_SCOPES = ('layer', 'global')


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
    require_hybrid(net, 'prune_channels')
    check_mode(mode)
    if scope not in _SCOPES:
        raise SurgeryValueError("scope must be 'layer' or 'global', got %r." % (scope,))
    if not callable(importance) and importance not in IMPORTANCES:
        raise SurgeryValueError(
            "importance must be one of %s or a callable f(group) -> scores, got %r."
            % (', '.join(repr(i) for i in IMPORTANCES), importance))
    round_to = rounding(round_to, latency)
    for one in (amount.values() if isinstance(amount, Mapping) else [amount]):
        check_amount(one, what='channels')   # type, NaN, sign, float > 1
    shapes = input_shapes(inputs)
    graph = traced(net, shapes)
    groups = selected_groups(net, graph, key)
    if isinstance(amount, Mapping):
        groups = _named_groups(graph, groups, amount, scope, key)
    if round_to == 'fast':
        round_to = FastCounts(latency, groups)
    finish_deferred(net, inputs, shapes)
    params = net.collect_params()
    names = list(OrderedDict.fromkeys(m.param for g in groups for m in g.members))
    with autograd.pause():
        weights = {n: _mx.to_host(replicas(params[n])[0][1]) for n in names}
    have = set(masked(net))
    mine = [n for n in names if n in have]
    existing = {n: _mx.to_host(m) for n, m in get_mask(net, mine).items()} if mine else {}
    pruned = choose_channels(net, groups, weights, existing, amount, importance, scope,
                             round_to)
    keeps = keep_masks(zip(groups, pruned), weights, existing)
    if keeps:
        apply_core_masks(net, keeps, mode)
    touched = [group.name for group, chosen in zip(groups, pruned) if len(chosen)]
    # for shrink, next: its masks change no group (the tracer sees through weight * mask)
    remember(net, shapes, graph)
    return touched


def keep_masks(chosen, weights, existing):
    """The masks that remove the ``chosen`` channels of each ``(group, channel indices)``
    pair from every maskable member: bool, True where kept, False where an ``existing``
    mask (name -> numpy array) is zero too, as the pruning core makes them, so that
    ``apply_core_masks`` multiplies them in without a validation pass (exact by
    construction). ``weights`` (name -> numpy array) gives the shapes."""
    keeps = OrderedDict()
    for group, channels in chosen:
        if not len(channels):
            continue
        for member in group.maskable:
            name = member.param
            if name not in keeps:
                keeps[name] = np.ones(weights[name].shape, dtype=bool) \
                    if name not in existing else existing[name] != 0
            np.moveaxis(keeps[name], member.axis, 0)[channel_rows(member, channels)] = False
    return keeps


def choose_channels(net, groups, weights, existing, amount, importance, scope, round_to):
    """The channels :func:`prune_channels` masks in each of ``groups``: a sorted index
    array per group, from the members' arrays (``weights``, existing ``masks``; numpy)."""
    states = [GroupState(g, weights, existing) for g in groups]
    scores = [scores_of(s, importance, net) for s in states]
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
        kept = kept_count(len(alive) - count, len(alive), round_to, s.group.name) \
            if len(alive) else 0
        pruned.append(lowest(sc, alive, len(alive) - kept))
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
    if not isinstance(round_to, FastCounts) and round_to == 1:
        return [np.sort(np.asarray(c, dtype=np.int64)) for c in chosen]
    out = []
    for s, sc, c in zip(states, scores, chosen):
        alive = np.flatnonzero(s.alive)
        if not len(alive):
            out.append(np.zeros(0, dtype=np.int64))
            continue
        kept = kept_count(len(alive) - len(c), len(alive), round_to, s.group.name)
        out.append(lowest(sc, alive, len(alive) - kept))
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


def selected_groups(net, graph, key):
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


def check_round_to(round_to):
    if isinstance(round_to, (bool, np.bool_)) or not is_dim(round_to):
        raise SurgeryTypeError('round_to must be an int >= 1, got %s %r.'
                               % (type(round_to).__name__, round_to))
    if round_to < 1:
        raise SurgeryValueError('round_to=%d: it must be >= 1 (1 keeps exact counts).'
                                % round_to)
    return int(round_to)


def kept_count(kept, alive, round_to, name=None):
    """The number of channels kept after rounding (``round_to``: the nearest multiple, at
    least one multiple, at most what is alive, at least one channel; or a
    :class:`FastCounts`: the nearest fast count of group ``name``)."""
    if isinstance(round_to, FastCounts):
        return max(1, round_to.kept(name, kept, alive))
    if round_to > 1:
        kept = int(math.floor(kept / round_to + 0.5)) * round_to
        kept = max(kept, round_to)
    return max(1, min(kept, alive))


class FastCounts:
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


def rounding(round_to, latency):
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
    round_to = check_round_to(round_to)
    if latency is not None:
        raise SurgeryValueError("latency= is used by round_to='fast' only, got round_to=%d."
                                % round_to)
    return round_to
