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
import itertools
import json
import math
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import numpy as np
from mxnet import autograd
from mxnet import ndarray as nd

from . import _internals
from ._checks import check_flag, is_real
from ._files import check_path, reading, write_bytes
from ._snapshot import Transaction
from .errors import FileFormatError, SurgeryTypeError, SurgeryValueError
from .masks import _owner_index, _owners_checked, apply_mask, get_mask, masked, unmasked_params
from .pruning import _apply as _apply_pruning_masks
from .pruning_core import _check_amount, magnitude_masks
from .report import pyplot, save_figure
from .select import all_params, select

__all__ = ['sensitivity', 'SensitivityReport']

#: The amounts tried by default.
DEFAULT_AMOUNTS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)

_KINDS = ('channels', 'weights')
_FILE_FORMAT = 'paramsurgery-sensitivity'
_FILE_VERSION = 1
# Buckets of the budget in the plan's dynamic programme: the removal each choice is credited
# with is rounded down to a bucket, so a plan it returns always reaches the budget.
_BUCKETS = 2000
# Weight of "remove no more than needed" against the drops in the plan's objective.
_TIE = 1e-9


# --------------------------------------------------------------------------- the report

class SensitivityReport:
    """The measurements of :func:`sensitivity`.

    Attributes
    ----------
    kind : {'channels', 'weights'}
    baseline : float
        ``evaluate(net)`` on the untouched net.
    amounts : tuple of float
        The amounts tried.
    table : list of dict
        One row per trial: ``name``, ``amount``, ``metric``, ``drop`` (``baseline -
        metric``), ``macs_removed``, ``params_removed`` (in :func:`count_ops` units; for
        ``kind='weights'``, ``params_removed`` is the number of entries pruned and
        ``macs_removed`` is 0), and ``removed`` (channels or entries).
    dense_macs, dense_params : int
        :func:`count_ops` of the untouched net (parameters: every trainable entry for
        ``kind='weights'`` without ``inputs``; MACs then 0).
    """

    def __init__(self, kind, baseline, amounts, table, dense_macs, dense_params, units):
        self.kind = kind
        self.baseline = float(baseline)
        self.amounts = tuple(float(a) for a in amounts)
        self.table = [dict(row) for row in table]
        self.dense_macs = int(dense_macs)
        self.dense_params = int(dense_params)
        # How removals combine: per parameter, its shape, MACs per entry, whether it counts
        # as a parameter, and which unit (group or weight) covers which rows of which axis.
        self._units = units

    @property
    def names(self) -> List[str]:
        """The groups (or weights) analysed, in order."""
        return list(OrderedDict.fromkeys(row['name'] for row in self.table))

    def _rows(self, name):
        return [row for row in self.table if row['name'] == name]

    def __str__(self):
        names = self.names
        head = ['%s \\ amount' % ('group' if self.kind == 'channels' else 'weight')]
        head += ['%g' % a for a in self.amounts]
        lines = [head]
        for name in names:
            by_amount = {row['amount']: row for row in self._rows(name)}
            lines.append([name] + ['%+.4f' % by_amount[a]['drop'] if a in by_amount else ''
                                   for a in self.amounts])
        widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
        text = ['  '.join(cell.ljust(w) if i == 0 else cell.rjust(w)
                          for i, (cell, w) in enumerate(zip(line, widths))).rstrip()
                for line in lines]
        rule = '-' * len(text[0])
        return '\n'.join(['drop in the metric (baseline %.4f) when one %s is pruned alone'
                          % (self.baseline, 'group' if self.kind == 'channels' else 'weight'),
                          text[0], rule] + text[1:])

    def __repr__(self):
        return 'SensitivityReport(kind=%r, baseline=%.4f, %d %s x %d amounts)' % (
            self.kind, self.baseline, len(self.names),
            'groups' if self.kind == 'channels' else 'weights', len(self.amounts))

    # ----------------------------------------------------------------------- files

    def save(self, path) -> None:
        """Write the report to ``path`` as JSON (atomically: a temporary file in the same
        folder, then renamed)."""
        path = check_path('path', path, write=True)
        data = {'format': _FILE_FORMAT, 'version': _FILE_VERSION, 'kind': self.kind,
                'baseline': self.baseline, 'amounts': list(self.amounts),
                'table': self.table, 'dense_macs': self.dense_macs,
                'dense_params': self.dense_params, 'units': self._units}
        write_bytes(path, json.dumps(data, indent=1).encode('utf-8'))

    @classmethod
    def load(cls, path) -> 'SensitivityReport':
        """Read a report written by :meth:`save`.

        A damaged report (a row without a field, a string or null where a number belongs)
        raises :class:`FileFormatError` naming the row and the field."""
        path = check_path('path', path)
        with reading(path, 'sensitivity report (JSON written by SensitivityReport.save)',
                     'Write it with SensitivityReport.save.'):
            with open(path, 'rb') as f:
                data = json.loads(f.read().decode('utf-8'))
            if data.get('format') != _FILE_FORMAT or data.get('version') != _FILE_VERSION:
                raise ValueError('format %r version %r' % (data.get('format'),
                                                           data.get('version')))
            _check_report(path, data)
            return cls(data['kind'], data['baseline'], data['amounts'], data['table'],
                       data['dense_macs'], data['dense_params'], data['units'])

    def plot(self, path, plan: Optional[Dict[str, float]] = None) -> None:
        """A PNG with one curve per group (or weight): the drop against the amount.

        With many curves the legend goes beside the axes in columns, and colours and line
        styles both vary, so 20 or more groups stay readable. ``plan`` (as :meth:`plan`
        returns it) marks each name's chosen amount with a ring. Needs matplotlib.
        """
        path = check_path('path', path, write=True)
        chosen = self._chosen_rows(plan) if plan is not None else {}
        plt = pyplot()
        names = self.names
        columns = 1 if len(names) <= 16 else 2 if len(names) <= 40 else 3
        fig, ax = plt.subplots(figsize=(7 + 3 * columns, max(4.5, 0.22 * len(names) / columns
                                                             + 2)))
        cmap = plt.get_cmap('tab10')
        styles = ['-', '--', ':', '-.']
        for i, name in enumerate(names):
            rows = sorted(self._rows(name), key=lambda r: r['amount'])
            ax.plot([0.0] + [r['amount'] for r in rows], [0.0] + [r['drop'] for r in rows],
                    color=cmap(i % 10), linestyle=styles[(i // 10) % len(styles)],
                    marker='o', markersize=3, linewidth=1.2, label=name)
            if name in chosen:
                ax.plot([chosen[name]['amount']], [chosen[name]['drop']], 'o',
                        markersize=9, markerfacecolor='none', color=cmap(i % 10))
        ax.axhline(0.0, color='0.6', linewidth=0.8)
        ax.set_xlabel('amount pruned (fraction of the %s)'
                      % ('channels of the group' if self.kind == 'channels'
                         else 'entries of the weight'))
        ax.set_ylabel('drop in the metric (baseline %.4g)' % self.baseline)
        ax.set_title('Sensitivity: each %s pruned alone' %
                     ('channel group' if self.kind == 'channels' else 'weight'))
        ax.grid(True, alpha=0.3)
        ax.legend(loc='upper left', bbox_to_anchor=(1.01, 1.0), fontsize=7, ncol=columns,
                  frameon=False)
        save_figure(fig, path, dpi=110)

    # ----------------------------------------------------------------------- budgets

    def _combined(self, choice):
        """``(macs_removed, params_removed)`` of pruning every unit by its chosen amount
        together, from the shapes (removals of different groups overlap where one layer's
        input and output channels are both pruned)."""
        removed = {name: 0 for name in self.names}
        for name, amount in choice.items():
            for row in self._rows(name):
                if row['amount'] == amount:
                    removed[name] = row['removed']
        if self.kind == 'weights':
            return 0, sum(removed.values())
        macs = params = 0.0
        for entry in self._units:
            size = float(np.prod(entry['shape']))
            kept = 1.0
            for axis, covers in entry['axes'].items():
                rows = entry['shape'][int(axis)]
                gone = sum(removed.get(group, 0) * stride for group, stride in covers)
                kept *= max(0.0, (rows - gone) / rows)
            macs += entry['macs_per_entry'] * size * (1.0 - kept)
            params += (size * (1.0 - kept)) if entry['learnable'] else 0.0
        return int(round(macs)), int(round(params))

    def plan(self, *, macs_ratio: Optional[float] = None, params_ratio: Optional[float] = None,
             max_drop: Optional[float] = None, latency_ratio: Optional[float] = None,
             latency=None) -> Dict[str, float]:
        """Per-group (or per-weight) amounts that meet one budget, losing the least.

        Parameters
        ----------
        macs_ratio : float, default None
            Reach dense MACs / pruned MACs >= ``macs_ratio`` (> 1).
        params_ratio : float, default None
            Reach dense parameters / pruned parameters >= ``params_ratio`` (> 1).
        max_drop : float, default None
            For each name, the largest measured amount whose drop is <= ``max_drop``.
        latency_ratio : float, default None
            Reach dense / pruned latency >= ``latency_ratio`` (> 1) as ``latency`` predicts
            it, with only amounts whose kept counts are fast counts of the model
            (docs/latency.md#planning-for-a-runtime; ``kind='channels'``).
        latency : LatencyModel, default None
            The model of the net, for ``latency_ratio``.

        Exactly one budget must be given. For a ratio the amounts are chosen among the
        measured ones so that the combined removal (computed from the shapes, overlaps
        included; for latency, the model's prediction) reaches the ratio while the sum of
        the measured drops is smallest. A negative drop (the metric improved) counts as 0,
        since it is measurement noise and would otherwise buy pruning beyond the budget;
        among plans of equal drop, the one removing the least is returned.

        Returns
        -------
        dict of str -> float
            Name -> amount, for the names to prune (unpruned names are left out); pass it
            as ``amount`` to :func:`prune_channels` (``kind='channels'``; with
            ``round_to='fast', latency=model`` for a latency plan) or
            :func:`prune_magnitude` (``kind='weights'``).

        Raises
        ------
        SurgeryValueError
            Not exactly one budget, a bad number, or a budget no combination of the
            measured amounts reaches.
        """
        given = [(n, v) for n, v in (('macs_ratio', macs_ratio), ('params_ratio', params_ratio),
                                    ('max_drop', max_drop), ('latency_ratio', latency_ratio))
                 if v is not None]
        if len(given) != 1:
            raise SurgeryValueError(
                'plan takes exactly one budget (macs_ratio=, params_ratio=, latency_ratio= or '
                'max_drop=), got %s.' % (', '.join(n for n, _ in given) or 'none'))
        what, value = given[0]
        if not is_real(value) or not math.isfinite(value):
            raise SurgeryValueError('%s must be a finite number, got %r.' % (what, value))
        if what == 'latency_ratio':
            self._check_latency(latency, required=True)
        elif latency is not None:
            raise SurgeryValueError('latency= is used by latency_ratio= only, got %s=%r.'
                                    % (what, value))
        if what == 'max_drop':
            out = OrderedDict()
            for name in self.names:
                fine = [r['amount'] for r in self._rows(name) if r['drop'] <= value]
                if fine:
                    out[name] = max(fine)
            return out
        if value <= 1:
            raise SurgeryValueError('%s=%r: a ratio dense/pruned must be > 1.' % (what, value))
        if what == 'latency_ratio':
            dense = latency.dense
            choice = _solve(self, dense - dense / value, None, latency)
            if choice is None:
                fast = {n: self._fast_rows(n, latency) for n in self.names}
                best = latency.predict({n: latency.sizes[n] - max(r['removed'] for r in rows)
                                        for n, rows in fast.items() if rows})
                raise SurgeryValueError(
                    'latency_ratio=%r cannot be reached with the measured amounts whose kept '
                    'counts are fast counts (%d of %d rows): pruning every group by the '
                    'largest of them is predicted at %.3gx. Measure with round_to=\'fast\', '
                    'latency=model (or larger amounts), or ask for less.'
                    % (value, sum(len(r) for r in fast.values()), len(self.table),
                       dense / best))
            return choice
        index = 0 if what == 'macs_ratio' else 1
        dense = self.dense_macs if index == 0 else self.dense_params
        if dense <= 0:
            raise SurgeryValueError('%s=%r cannot be reached: the report has no %s (%s).'
                                    % (what, value, 'MACs' if index == 0 else 'parameters',
                                       'kind=%r counts no MACs' % self.kind if index == 0
                                       else 'no parameters counted'))
        need = dense - dense / value
        choice = _solve(self, need, index)
        if choice is None:
            best = self._combined({n: max(r['amount'] for r in self._rows(n))
                                   for n in self.names})[index]
            raise SurgeryValueError(
                '%s=%r cannot be reached with the measured amounts: pruning every %s by '
                'the largest amount measured removes %d of %d %s (ratio %.3g). Measure '
                'larger amounts, or ask for less.'
                % (what, value, 'group' if self.kind == 'channels' else 'weight', best,
                   dense, 'MACs' if index == 0 else 'parameters',
                   dense / max(1, dense - best)))
        return choice

    def _check_latency(self, latency, required):
        if latency is None:
            if required:
                raise SurgeryValueError(
                    'latency_ratio= needs latency=ps.latency_model(net, inputs=..., '
                    'runtime=...) (docs/latency.md#planning-for-a-runtime).')
            return
        if not (hasattr(latency, 'predict') and isinstance(getattr(latency, 'sizes', None),
                                                           Mapping)):
            raise SurgeryTypeError('latency must be a LatencyModel (ps.latency_model), got %s.'
                                   % type(latency).__name__)
        if self.kind != 'channels':
            raise SurgeryValueError("a latency model predicts channel counts: it needs a "
                                    "report of kind='channels', this one is kind=%r."
                                    % self.kind)
        missing = [n for n in self.names if n not in latency.sizes]
        if missing:
            raise SurgeryValueError(
                "the latency model has no channel group '%s' of this report; build it with "
                "the key the report was measured with." % missing[0])

    def _fast_rows(self, name, latency):
        fast = set(latency.fast_counts(name))
        return [r for r in self._rows(name) if latency.sizes[name] - r['removed'] in fast]

    def _chosen_rows(self, plan):
        if not isinstance(plan, Mapping):
            raise SurgeryTypeError('plan must be a dict name -> amount (as plan() returns), '
                                   'got %s.' % type(plan).__name__)
        rows = OrderedDict()
        for name, amount in plan.items():
            if name not in self.names:
                raise SurgeryValueError("plan names %r, which this report did not measure; it "
                                        "has: %s." % (name, ', '.join(self.names[:5])))
            found = [r for r in self._rows(name) if is_real(amount) and r['amount'] == amount]
            if not found:
                raise SurgeryValueError(
                    'plan gives %r the amount %r, which was not measured (measured: %s).'
                    % (name, amount, ', '.join('%g' % r['amount'] for r in self._rows(name))))
            rows[name] = found[0]
        return rows

    def predict(self, plan: Dict[str, float], latency=None) -> Dict[str, Optional[float]]:
        """What a plan (name -> measured amount, as :meth:`plan` returns) is predicted to give.

        Returns
        -------
        dict
            ``macs_ratio`` and ``params_ratio`` (dense / pruned, from the shapes; None when the
            report counts none), ``latency_ratio`` (dense / pruned latency predicted by
            ``latency``; None without it) and ``drop``, the sum of the measured drops of the
            plan's rows (each measured alone: the combined drop can be larger).

        Examples
        --------
        >>> import paramsurgery as ps
        >>> table = [{'name': 'w', 'amount': 0.5, 'metric': 0.9, 'drop': 0.1,
        ...           'macs_removed': 0, 'params_removed': 5, 'removed': 5}]
        >>> report = ps.SensitivityReport('weights', 1.0, [0.5], table, 0, 10, [])
        >>> report.predict({'w': 0.5})
        {'macs_ratio': None, 'params_ratio': 2.0, 'latency_ratio': None, 'drop': 0.1}
        """
        rows = self._chosen_rows(plan)
        self._check_latency(latency, required=False)
        macs, params = self._combined(plan)
        out = {'macs_ratio': self.dense_macs / max(1e-300, self.dense_macs - macs)
               if self.dense_macs else None,
               'params_ratio': self.dense_params / max(1e-300, self.dense_params - params)
               if self.dense_params else None,
               'latency_ratio': None,
               'drop': float(sum(r['drop'] for r in rows.values()))}
        if latency is not None:
            kept = {n: latency.sizes[n] - r['removed'] for n, r in rows.items()}
            out['latency_ratio'] = latency.dense / latency.predict(kept)
        return out


def _is_number(value):
    return is_real(value) and math.isfinite(float(value))


def _is_count(value):
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_pair(value):
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and \
        _is_count(value[1])


def _is_axes(value):
    return isinstance(value, dict) and all(
        isinstance(k, str) and k.isdigit() and isinstance(v, list) and all(map(_is_pair, v))
        for k, v in value.items())


# What each field of a saved report must hold: (field, check, what it should be).
_REPORT_FIELDS = (
    ('kind', lambda v: v in _KINDS, "'channels' or 'weights'"),
    ('baseline', _is_number, 'a finite number'),
    ('amounts', lambda v: isinstance(v, list) and all(map(_is_number, v)),
     'a list of numbers'),
    ('table', lambda v: isinstance(v, list) and all(isinstance(r, dict) for r in v),
     'a list of rows (objects)'),
    ('dense_macs', _is_count, 'an integer >= 0'),
    ('dense_params', _is_count, 'an integer >= 0'),
    ('units', lambda v: isinstance(v, list) and all(isinstance(u, dict) for u in v),
     'a list of objects'),
)
_ROW_FIELDS = (
    ('name', lambda v: isinstance(v, str), 'a string'),
    ('amount', _is_number, 'a number'),
    ('metric', _is_number, 'a finite number'),
    ('drop', _is_number, 'a finite number'),
    ('macs_removed', _is_count, 'an integer >= 0'),
    ('params_removed', _is_count, 'an integer >= 0'),
    ('removed', _is_count, 'an integer >= 0'),
)
_UNIT_FIELDS = (
    ('param', lambda v: isinstance(v, str), 'a string'),
    ('shape', lambda v: isinstance(v, list) and bool(v) and all(
        _is_count(d) and d > 0 for d in v), 'a list of integers >= 1'),
    ('axes', _is_axes, "an object axis -> [[group, stride], ...]"),
    ('macs_per_entry', _is_number, 'a finite number'),
    ('learnable', lambda v: isinstance(v, bool), 'true or false'),
)


def _check_fields(path, where, record, fields):
    for field, check, should in fields:
        if field not in record:
            problem = 'has no field %r' % field
        elif not check(record[field]):
            problem = 'has %r = %r, which should be %s' % (field, record[field], should)
        else:
            continue
        raise FileFormatError(
            "'%s' is not a readable sensitivity report (JSON written by "
            "SensitivityReport.save): %s %s. The file is damaged or was edited by hand; "
            "write it again with SensitivityReport.save." % (path, where, problem))


def _check_report(path, data):
    """Refuse a damaged report at load, naming the row and field, rather than letting
    ``plan()`` fail later with a bare KeyError or TypeError."""
    if not isinstance(data, dict):
        _check_fields(path, 'the file', {}, _REPORT_FIELDS[:1])
    _check_fields(path, 'the report', data, _REPORT_FIELDS)
    for i, row in enumerate(data['table']):
        _check_fields(path, 'row %d of the table' % i, row, _ROW_FIELDS)
    for i, unit in enumerate(data['units']):
        _check_fields(path, 'entry %d of units' % i, unit, _UNIT_FIELDS)
        for axis in unit['axes']:
            if int(axis) >= len(unit['shape']):
                raise FileFormatError(
                    "'%s' is not a readable sensitivity report (JSON written by "
                    "SensitivityReport.save): entry %d of units ('%s') covers axis %s of a "
                    "shape %s. The file is damaged or was edited by hand; write it again "
                    "with SensitivityReport.save." % (path, i, unit['param'], axis,
                                                     unit['shape']))


class _Combined:
    """The combined removal (MACs or parameters) of pruning several units at once, as a
    function of how many channels (entries) each unit removes: fast to call many times."""

    def __init__(self, report, index):
        names = report.names
        self.additive = report.kind == 'weights'
        pos = {name: i for i, name in enumerate(names)}
        self.entries = []
        for entry in report._units:
            size = float(np.prod(entry['shape']))
            weight = entry['macs_per_entry'] * size if index == 0 else \
                (size if entry['learnable'] else 0.0)
            if weight <= 0:
                continue
            axes = [(entry['shape'][int(axis)], [(pos[g], st) for g, st in covers if g in pos])
                    for axis, covers in entry['axes'].items()]
            self.entries.append((weight, [a for a in axes if a[1]]))

    def __call__(self, removed):
        if self.additive:
            return float(sum(removed))
        total = 0.0
        for weight, axes in self.entries:
            kept = 1.0
            for rows, covers in axes:
                kept *= max(0.0, rows - sum(removed[u] * st for u, st in covers)) / rows
            total += weight * (1.0 - kept)
        return total


# Plans are searched exhaustively up to this many combinations of measured amounts.
_EXHAUSTIVE = 60000


def _solve(report, need, index, latency=None):
    """The choice of one measured amount (or none) per name whose combined removal is
    >= ``need`` with the smallest sum of drops.

    The combined removal is computed from the shapes: where two groups meet in one layer
    (its input and its output channels), pruning both removes less than the sum of each
    alone; with a ``latency`` model it is the predicted seconds saved, and only rows whose
    kept counts are fast counts are candidates. Up to ``_EXHAUSTIVE`` combinations are all
    tried; beyond that, a multiple-choice knapsack on the removals measured one at a time
    (exact for ``kind='weights'``, where removals add up) gives a start, which is completed
    greedily where the overlaps leave it short and then improved by moving one or two names
    at a time while the budget holds.
    """
    names = report.names
    options = []
    for name in names:
        opts = [(None, 0.0, 0, 0)]
        rows = report._fast_rows(name, latency) if latency is not None else report._rows(name)
        for row in sorted(rows, key=lambda r: r['amount']):
            if latency is not None:
                gain = latency.dense - latency.predict({name: latency.sizes[name] -
                                                        row['removed']})
            else:
                gain = row['macs_removed'] if index == 0 else row['params_removed']
            # A metric that improves when a group is pruned is measurement noise, not a
            # reason to prune more than the budget needs: it counts as no drop, and among
            # choices of equal drop the one removing least wins (the tiny second term).
            drop = max(0.0, float(row['drop'])) + _TIE * gain / (need if need > 0 else 1.0)
            opts.append((row['amount'], drop, gain, int(row['removed'])))
        options.append(opts)
    if latency is not None:
        group_sizes = latency.sizes

        def removal(ks):
            return latency.dense - latency.predict(
                {n: group_sizes[n] - options[i][k][3] for i, (n, k) in enumerate(zip(names, ks))
                 if options[i][k][0] is not None})
    else:
        combined = _Combined(report, index)

        def removal(ks):
            return combined([options[i][k][3] for i, k in enumerate(ks)])

    def cost(ks):
        return sum(options[i][k][1] for i, k in enumerate(ks))

    sizes = [len(opts) for opts in options]
    if float(np.prod(sizes, dtype=np.float64)) <= _EXHAUSTIVE:
        best = None
        for ks in itertools.product(*[range(n) for n in sizes]):
            c = cost(ks)
            if (best is None or c < best[0]) and removal(ks) >= need:
                best = (c, ks)
        ks = None if best is None else best[1]
    else:
        ks = _knapsack([[(o[0], o[1], o[2]) for o in opts] for opts in options], need)
        if ks is not None:
            ks = [[o[0] for o in opts].index(a) for opts, a in zip(options, ks)]
            ks = _repair(ks, sizes, removal, cost, need)
        if ks is not None:
            ks = _improve(ks, sizes, removal, cost, need)
    if ks is None:
        return None
    return OrderedDict((n, options[i][k][0]) for i, (n, k) in enumerate(zip(names, ks))
                       if options[i][k][0] is not None)


def _repair(ks, sizes, removal, cost, need):
    """Upgrade greedily, least extra drop per extra removal first, until ``need`` is met."""
    ks = list(ks)
    while removal(ks) < need:
        base, here, best = removal(ks), cost(ks), None
        for i in range(len(ks)):
            for k in range(ks[i] + 1, sizes[i]):
                trial = ks[:i] + [k] + ks[i + 1:]
                gain = removal(trial) - base
                if gain > 0:
                    rate = (cost(trial) - here) / gain
                    if best is None or rate < best[0]:
                        best = (rate, trial)
        if best is None:
            return None
        ks = best[1]
    return ks


def _improve(ks, sizes, removal, cost, need, rounds=20):
    """Local search: the best move of one name to any amount, or of one name down a step
    and another to any amount, that keeps the budget and lowers the drop; until none."""
    ks = list(ks)
    for _ in range(rounds):
        here, best = cost(ks), None
        moves = [[(i, k)] for i in range(len(ks)) for k in range(sizes[i]) if k != ks[i]]
        moves += [[(i, ks[i] - 1), (j, k)] for i in range(len(ks)) if ks[i] > 0
                  for j in range(len(ks)) if j != i for k in range(sizes[j]) if k != ks[j]]
        for move in moves:
            trial = list(ks)
            for i, k in move:
                trial[i] = k
            c = cost(trial)
            if c < here - 1e-15 and (best is None or c < best[0]) and removal(trial) >= need:
                best = (c, trial)
        if best is None:
            break
        ks = best[1]
    return ks


def _knapsack(options, target):
    bucket = target / _BUCKETS
    inf = float('inf')
    best = np.full(_BUCKETS + 1, inf)
    best[0] = 0.0
    picks = []
    for opts in options:
        new = np.full(_BUCKETS + 1, inf)
        arg = np.zeros(_BUCKETS + 1, dtype=np.int64)
        for k, (_, drop, gain) in enumerate(opts):
            w = min(_BUCKETS, int(math.floor(gain / bucket))) if bucket > 0 else _BUCKETS
            shifted = np.concatenate([np.full(min(w, _BUCKETS + 1), best[0]),
                                      best[:_BUCKETS + 1 - w]]) if w else best
            # best[b] = least drop with removal >= b buckets; with w from this choice, any
            # b <= w is met by the others removing >= 0 (best[0]).
            shifted = np.minimum.accumulate(shifted[::-1])[::-1] if w else shifted
            cand = shifted + drop
            better = cand < new
            new[better] = cand[better]
            arg[better] = k
        picks.append(arg)
        best = new
    if not np.isfinite(best[_BUCKETS]):
        return None
    chosen, b = [], _BUCKETS
    for opts, arg in zip(reversed(options), reversed(picks)):
        k = int(arg[b])
        chosen.append(opts[k][0])
        w = min(_BUCKETS, int(math.floor(opts[k][2] / (target / _BUCKETS))))
        b = max(0, b - w)
    return list(reversed(chosen))


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
        _check_amount(amount)     # type, bool, NaN, sign, a float above 1
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
        params, index = all_params(net), _owner_index(net)
        for name, param in chosen.items():
            _owners_checked(net, name, param, params, 'graph', index)
        self.params = chosen
        have = set(masked(net))
        self.net = net
        self.importance = importance
        self.masks = {n: m.asnumpy() for n, m in get_mask(net, [n for n in chosen
                                                                 if n in have]).items()} \
            if any(n in have for n in chosen) else {}
        self.names = list(chosen)

    def members(self, name):
        return [name]

    def prune(self, name, amount):
        param = self.params[name]
        weight = _internals.raw_data(param)[0].asnumpy()
        scores = None
        if callable(self.importance):
            scores = {name: np.asarray(self.importance(name, weight), dtype=np.float64)}
        keep = magnitude_masks({name: weight}, amount, masks={name: self.masks.get(name)},
                               importance=scores)[name]
        # Held masked as prune_magnitude masks it (so an evaluate that trains cannot revive
        # the pruned entries); the trial's transaction takes the mask away again.
        _apply_pruning_masks(self.net, None, OrderedDict([(name, keep)]), 'graph')
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
        from .channels.importance import IMPORTANCES
        from .channels.inputs import finish_deferred, input_shapes, require_hybrid
        from .channels.ops import op_counts
        from .channels.prune import FastCounts, rounding, selected_groups
        from .channels.trace import build, check_owners
        require_hybrid(net, 'sensitivity')
        self.round_to = rounding(round_to, latency)
        if not callable(importance) and importance not in IMPORTANCES:
            raise SurgeryValueError(
                "importance must be one of %s or a callable f(group) -> scores, got %r."
                % (', '.join(repr(i) for i in IMPORTANCES), importance))
        shapes = input_shapes(inputs)
        graph = build(net, shapes)
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
            self.weights = {n: _internals.raw_data(self.params[n])[0].asnumpy() for n in names}
        mine = [n for n in names if n in have]
        self.masks = {n: m.asnumpy() for n, m in get_mask(net, mine).items()} if mine else {}
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
        from .channels.importance import channel_rows
        from .channels.prune import choose_channels
        group = self.groups[name]
        chosen = choose_channels(self.net, [group], self.weights, self.masks, amount,
                                 self.importance, 'layer', self.round_to)[0]
        # Held masked exactly as prune_channels({name: amount}) masks them (so an evaluate
        # that trains cannot revive them); the trial's transaction takes the masks away.
        plan = OrderedDict()
        for member in group.maskable if len(chosen) else ():
            param = self.params[member[0]]
            if member[0] not in plan:
                plan[member[0]] = np.ones(param.shape, dtype=np.dtype(param.dtype))
            np.moveaxis(plan[member[0]], member[1], 0)[channel_rows(member, chosen)] = 0
        if plan:
            apply_mask(self.net, plan, combine='multiply', mode='graph')
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
    if kind not in _KINDS:
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
        from .channels import count_ops
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
