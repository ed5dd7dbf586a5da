"""Which layers to prune, and how much: sensitivity analysis and budget plans.

:func:`sensitivity` prunes one channel group (or one weight) at a time, at each amount, on
the untouched net, and measures ``evaluate(net)``; everything is put back bit for bit after
every trial. :meth:`SensitivityReport.plan` then picks per-group amounts that reach a
budget (a MACs or parameter ratio, or a largest acceptable drop) while losing the least by
the measurements. The pruning functions take the plan as their ``amount``.

A trial is a transaction (:class:`paramsurgery._snapshot.Transaction`, recorded once before
the baseline): the group's channels (or the weight's entries) are masked exactly as
:func:`prune_channels` (or :func:`prune_magnitude`) masks them, in graph mode, so an
``evaluate`` that trains cannot revive them; then the rollback puts back every block,
parameter, mask and mode, and every Trainer reachable from the parameters (also one first
stepped, or created, inside ``evaluate``): optimizer states in every updater, update
counters, the kvstore's own copies.
"""
import math
from collections import OrderedDict
from typing import Any, Callable, Sequence, Union

import numpy as np
from mxnet import autograd
from mxnet import ndarray as nd

from . import _mx
from ._amounts import check_amount
from ._checks import check_flag, is_real
from ._sensitivity import KINDS, SensitivityReport
from ._snapshot import Transaction
from .channels import count_ops
from .channels.importance import IMPORTANCES
from .channels.inputs import finish_deferred, input_shapes, require_hybrid
from .channels.ops import op_counts
from .channels.prune import FastCounts, choose_channels, keep_masks, rounding, selected_groups
from .channels.trace import build as build_channel_graph
from .channels.trace import check_owners
from .errors import SurgeryTypeError, SurgeryValueError
from .masks import get_mask, masked, unmasked_params
from .masks.apply import apply_core_masks
from .masks.owners import owner_index, owners_checked
from .pruning_core import magnitude_masks
from .select import all_params, select

__all__ = ['sensitivity', 'SensitivityReport']

# Its public home: reprs, pickles and the API pages name it here.
SensitivityReport.__module__ = __name__

#: The amounts tried by default.
DEFAULT_AMOUNTS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)

# --------------------------------------------------------------------------- trials

def _metric(value):
    if isinstance(value, nd.NDArray) and value.size == 1:
        value = value.asscalar()
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value.item()
    if not is_real(value):
        raise SurgeryTypeError('evaluate(net) must return a number (higher is better), got %s '
                               '%r.' % (type(value).__name__, value))
    if not math.isfinite(float(value)):
        raise SurgeryValueError('evaluate(net) returned %r; it must return a finite number '
                                '(higher is better).' % (value,))
    return float(value)


def _amounts(amounts):
    if isinstance(amounts, (str, bytes)) or not isinstance(amounts, Sequence):
        raise SurgeryTypeError('amounts must be a list of amounts (floats in [0, 1] or '
                               'counts; see docs/pruning.md#how-much-amount), got %s %r.'
                               % (type(amounts).__name__, amounts))
    if not amounts:
        raise SurgeryValueError('amounts=%r is empty: give at least one amount, e.g. '
                                'amounts=[0.25, 0.5] (see docs/pruning.md#how-much-amount).'
                                % (amounts,))
    for amount in amounts:
        check_amount(amount)     # type, bool, NaN, sign, a float above 1
    if len(set(amounts)) != len(amounts):
        raise SurgeryValueError('amounts has repeated values: %r.' % (list(amounts),))
    return tuple(amounts)


def _progress(total):
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    # disable=None: no bar unless stderr is a terminal (no carriage returns in a log)
    return tqdm(total=total, desc='sensitivity', unit='trial', leave=False, disable=None)


class _WeightUnits:
    """kind='weights': one unit per selected weight, pruned by magnitude."""

    def __init__(self, net, key, importance):
        if importance not in ('l1', 'l2') and not callable(importance):
            raise SurgeryValueError("importance for kind='weights' must be 'l1', 'l2' (both "
                                    "rank by magnitude) or a callable f(name, weight) -> "
                                    "scores, got %r." % (importance,))
        view = unmasked_params(net)
        if key is None:
            chosen = OrderedDict((n, p) for n, p in view.items()
                                 if p.grad_req != 'null' and p.shape is not None
                                 and len(p.shape) >= 2)
            if not chosen:
                raise SurgeryValueError('the net has no trainable weight of 2 or more '
                                        'dimensions; select parameters with key=.')
        else:
            chosen = select(view, key)
        # A trial masks as prune_magnitude does: a weight that cannot take a mask is refused
        # before the first trial, with prune_magnitude's error.
        params, index = all_params(net), owner_index(net)
        for name, param in chosen.items():
            owners_checked(net, name, param, params, 'graph', index)
        self.params = chosen
        have = set(masked(net))
        self.net = net
        self.importance = importance
        self.masks = {n: _mx.to_host(m) for n, m in get_mask(net, [n for n in chosen
                                                                 if n in have]).items()} \
            if any(n in have for n in chosen) else {}
        self.names = list(chosen)

    def members(self, name):
        return [name]

    def prune(self, name, amount):
        param = self.params[name]
        weight = _mx.to_host(_mx.raw_data(param)[0])
        scores = None
        if callable(self.importance):
            scores = {name: np.asarray(self.importance(name, weight), dtype=np.float64)}
        keep = magnitude_masks({name: weight}, amount, masks={name: self.masks.get(name)},
                               importance=scores)[name]
        # Held masked as prune_magnitude masks it (so an evaluate that trains cannot revive
        # the pruned entries); the trial's transaction takes the mask away again.
        # the core's masks are exact and binary: applied without another validation pass
        apply_core_masks(self.net, OrderedDict([(name, keep)]), 'graph')
        old = self.masks.get(name)
        before = 0 if old is None else int(np.count_nonzero(np.broadcast_to(old, keep.shape)
                                                            == 0))
        removed = int(keep.size - np.count_nonzero(keep)) - before
        return removed, 0, removed

    def structure(self):
        return []


class _ChannelUnits:
    """kind='channels': one unit per selected prunable channel group, its channels chosen
    exactly as :func:`prune_channels` chooses them."""

    def __init__(self, net, inputs, key, importance, round_to, latency=None):
        require_hybrid(net, 'sensitivity')
        self.round_to = rounding(round_to, latency)
        if not callable(importance) and importance not in IMPORTANCES:
            raise SurgeryValueError(
                "importance must be one of %s or a callable f(group) -> scores, got %r."
                % (', '.join(repr(i) for i in IMPORTANCES), importance))
        shapes = input_shapes(inputs)
        graph = build_channel_graph(net, shapes)
        check_owners(net, graph)
        groups = selected_groups(net, graph, key)
        if self.round_to == 'fast':
            self.round_to = FastCounts(latency, groups)
        finish_deferred(net, inputs, shapes)
        self.net = net
        self.importance = importance
        self.groups = OrderedDict((g.name, g) for g in groups)
        self.names = list(self.groups)
        self.params = net.collect_params()
        names = list(OrderedDict.fromkeys(m[0] for g in groups for m in g.maskable))
        have = set(masked(net))
        with autograd.pause():
            self.weights = {n: _mx.to_host(_mx.raw_data(self.params[n])[0]) for n in names}
        mine = [n for n in names if n in have]
        self.masks = {n: _mx.to_host(m) for n, m in get_mask(net, mine).items()} if mine else {}
        macs, learnable = op_counts(graph._trace)
        covers = OrderedDict()
        for group in groups:
            for member in group.members:
                name, axis, _, stride = member
                covers.setdefault(name, {}).setdefault(str(axis), []).append(
                    [group.name, int(stride)])
        self.entries = []
        for name, axes in covers.items():
            shape = [int(d) for d in self.params[name].shape]
            size = float(np.prod(shape))
            self.entries.append({'param': name, 'shape': shape, 'axes': axes,
                                 'macs_per_entry': macs.get(name, 0) / size if size else 0.0,
                                 'learnable': name in learnable})

    def members(self, name):
        return [m[0] for m in self.groups[name].maskable]

    def prune(self, name, amount):
        group = self.groups[name]
        chosen = choose_channels(self.net, [group], self.weights, self.masks, amount,
                                 self.importance, 'layer', self.round_to)[0]
        # Held masked exactly as prune_channels({name: amount}) masks them (so an evaluate
        # that trains cannot revive them); the trial's transaction takes the masks away.
        keeps = keep_masks([(group, chosen)], self.weights, self.masks)
        if keeps:
            apply_core_masks(self.net, keeps, 'graph')
        removed = len(chosen)
        report = SensitivityReport('channels', 0.0, [], [{'name': name, 'amount': amount,
                                                          'removed': removed}], 0, 0,
                                   self.entries)
        macs, params = report._combined({name: amount})
        return removed, macs, params

    def structure(self):
        return self.entries


def sensitivity(net, evaluate: Callable[[Any], float], *, inputs=None,
                amounts: Sequence[float] = DEFAULT_AMOUNTS, key=None, kind: str = 'channels',
                importance: Any = 'l2', round_to: Union[int, str] = 1, progress: bool = True,
                latency=None) -> SensitivityReport:
    """Measure how much ``evaluate(net)`` drops when each group (or weight) alone is pruned.

    For every selected prunable channel group (``kind='channels'``; see
    :func:`trace_channels`, ``key`` as in :func:`prune_channels`) or every selected weight
    (``kind='weights'``; ``key=None`` selects every trainable weight of 2 or more
    dimensions), and for each amount, the group alone is masked on the untouched net
    exactly as :func:`prune_channels` ``(net, {group: amount})`` (or
    :func:`prune_magnitude`) would mask it, then ``evaluate(net)`` is called, so a trial
    measures what that pruning followed by ``evaluate`` measures, even when ``evaluate``
    trains. Then everything is put back bit for bit: weights and gradients, masks and their
    modes, BatchNorm statistics and, for every Trainer reachable from the parameters (also one
    built or first stepped inside ``evaluate``), every optimizer state, update counter and
    kvstore copy. The same holds when ``evaluate`` raises (the exception then reaches the
    caller). See docs/sensitivity.md#measuring.

    Parameters
    ----------
    net : HybridBlock
        The network (initialised; hybridised or not, on any contexts).
    evaluate : callable
        ``evaluate(net) -> float``, higher is better (e.g. validation accuracy). It may do
        anything (train a step, update BatchNorm statistics): it is undone.
    inputs : NDArray or tuple of int or list of them, default None
        A batch (or its shape) per data input: needed for ``kind='channels'`` (to trace the
        net and count MACs), optional for ``kind='weights'``.
    amounts : list of float or int, default (0.1, 0.2, ..., 0.9)
        Each a fraction of what is still unmasked (or a count), as in
        docs/pruning.md#how-much-amount; at least one.
    key : str or Parameter or list or callable, default None
        Which groups (by their producing weights) or weights to analyse.
    kind : {'channels', 'weights'}, default 'channels'
    importance : str or callable, default 'l2'
        As in :func:`prune_channels` (``kind='channels'``); for ``kind='weights'``,
        ``'l1'``/``'l2'`` (magnitude) or ``f(name, weight) -> scores``.
    round_to : int, default 1
        ``kind='channels'``: the kept channel counts are rounded as :func:`prune_channels`
        rounds them; apply a plan with the same ``round_to``. Multiples of 8 or 16 run much
        faster under MKLDNN than odd counts. ``'fast'`` (with ``latency``): the fast counts
        of a latency model, for plans with ``latency_ratio``
        (docs/latency.md#planning-for-a-runtime).
    progress : bool, default True
        Show a progress bar (tqdm, when installed).
    latency : LatencyModel, default None
        For ``round_to='fast'``.

    Returns
    -------
    SensitivityReport

    Raises
    ------
    SurgeryTypeError, SurgeryValueError
        Bad arguments (checked before the first trial; an empty ``amounts`` is a
        SurgeryValueError), or ``evaluate`` returned a non-number or NaN (after everything
        was put back).
    TrainerStateError
        ``evaluate`` stepped a Trainer whose optimizer runs on the servers of a distributed
        kvstore (their state cannot be put back from this process; everything else was).

    Examples
    --------
    >>> import mxnet as mx, numpy as np, paramsurgery as ps
    >>> from mxnet.gluon import nn
    >>> net = nn.HybridSequential(prefix='net_')
    >>> with net.name_scope():
    ...     net.add(nn.Dense(8, in_units=4, activation='relu'), nn.Dense(2, in_units=8))
    >>> mx.random.seed(0)
    >>> net.initialize(mx.init.Xavier())
    >>> x = mx.nd.array(np.random.RandomState(0).randn(32, 4))
    >>> target = net(x).argmax(axis=1)
    >>> def accuracy(net):
    ...     return float((net(x).argmax(axis=1) == target).mean().asscalar())
    >>> report = ps.sensitivity(net, accuracy, kind='weights', amounts=[0.5, 0.9],
    ...                         progress=False)
    >>> report.baseline, report.names
    (1.0, ['net_dense0_weight', 'net_dense1_weight'])
    >>> [row['params_removed'] for row in report.table]
    [16, 29, 8, 14]
    >>> plan = report.plan(max_drop=1.0)       # per weight, the largest amount losing <= 1
    >>> plan
    OrderedDict([('net_dense0_weight', 0.9), ('net_dense1_weight', 0.9)])
    """
    if kind not in KINDS:
        raise SurgeryValueError("kind must be 'channels' or 'weights', got %r." % (kind,))
    if not callable(evaluate):
        raise SurgeryTypeError('evaluate must be a callable evaluate(net) -> float, got %s.'
                               % type(evaluate).__name__)
    check_flag('progress', progress)
    amounts = _amounts(amounts)
    if kind == 'channels':
        if inputs is None:
            raise SurgeryValueError("kind='channels' needs inputs= (a batch or its shape) to "
                                    "trace the net's channel groups.")
        units = _ChannelUnits(net, inputs, key, importance, round_to, latency)
    else:
        if round_to != 1 or latency is not None:
            raise SurgeryValueError("round_to is for kind='channels'; kind='weights' prunes "
                                    "entries, got round_to=%r." % (round_to,))
        units = _WeightUnits(net, key, importance)
    if inputs is not None:
        inputs_list = list(inputs) if isinstance(inputs, list) else [inputs]
        dense_macs, dense_params = count_ops(net, *inputs_list)
    else:
        dense_macs = 0
        dense_params = sum(int(np.prod(p.shape)) for p in unmasked_params(net).values()
                           if p.grad_req != 'null')
    transaction = Transaction(net)
    bar = _progress(1 + len(units.names) * len(amounts)) if progress else None
    try:
        try:
            baseline = _metric(evaluate(net))
        finally:
            transaction.rollback()
        if bar is not None:
            bar.update(1)
        table = []
        for name in units.names:
            for amount in amounts:
                try:
                    removed, macs, count = units.prune(name, amount)
                    metric = _metric(evaluate(net))
                finally:
                    transaction.rollback()
                table.append({'name': name, 'amount': amount, 'metric': metric,
                              'drop': baseline - metric, 'macs_removed': int(macs),
                              'params_removed': int(count), 'removed': int(removed)})
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return SensitivityReport(kind, baseline, amounts, table, dense_macs, dense_params,
                             units.structure())
