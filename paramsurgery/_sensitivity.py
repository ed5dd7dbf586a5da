"""``SensitivityReport``: the measurements of ``ps.sensitivity``, their file, plot and plans.

:meth:`SensitivityReport.plan` turns the measurements into a budget problem that
:mod:`paramsurgery.budget` solves; :func:`paramsurgery.analysis.sensitivity` makes reports.
"""
import json
import math
from collections import OrderedDict
from collections.abc import Mapping
from typing import Dict, List, Optional

import numpy as np

from . import budget
from ._checks import is_real
from ._files import check_path, reading, write_bytes
from ._plot import pyplot, save_figure
from .errors import FileFormatError, SurgeryTypeError, SurgeryValueError

__all__ = ['SensitivityReport']

KINDS = ('channels', 'weights')
_FILE_FORMAT = 'paramsurgery-sensitivity'
_FILE_VERSION = 1
# A latency plan that measures below its ratio is made again, asking for the shortfall more,
# at most this many times (each a whole-net measurement).
_PLAN_CORRECTIONS = 2
# and is accepted once it measures this much above its ratio: the same two nets measured
# again (interleaved medians, a loaded machine) scatter by about 5%.
_PLAN_MARGIN = 1.05


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
            (docs/latency.md#planning-for-a-runtime; ``kind='channels'``). With a model
            built in this process the plan is then measured whole against the dense net
            (``latency.measure``, which adds it to the model's calibration); if it measures
            below 1.05x the ratio, the plan is made again asking for the shortfall more, up
            to two more times.
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
            return self._plan_latency(value, latency)
        return self._plan_ratio(what, value)

    def _plan_latency(self, value, latency):
        """:meth:`plan` for ``latency_ratio=value``: the model's plan, then (a model that can
        measure) checked whole and made again while it measures short."""
        choice = self._solve_latency(value, latency)
        if not getattr(latency, 'can_measure', False):
            return choice
        aim = value
        for _ in range(_PLAN_CORRECTIONS + 1):
            kept = {n: latency.sizes[n] - r['removed']
                    for n, r in self._chosen_rows(choice).items()}
            measured = latency.measure(kept)
            if measured >= value * _PLAN_MARGIN:
                return choice
            # the model over-predicted this plan by value / measured: ask for that much more
            aim *= value * _PLAN_MARGIN / measured
            again = _solve(self, latency.dense - latency.dense / aim, None, latency)
            if again is None or again == choice:
                return choice   # nothing faster was measured: the best there is
            choice = again
        return choice

    def _solve_latency(self, value, latency):
        """The cheapest plan the model predicts at >= ``value``, or an error."""
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

    def _plan_ratio(self, what, value):
        """:meth:`plan` for ``macs_ratio`` or ``params_ratio`` (``what``) ``=value``."""
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
    ('kind', lambda v: v in KINDS, "'channels' or 'weights'"),
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


def _solve(report, need, index, latency=None):
    """The choice of one measured amount (or none) per name whose combined removal is
    >= ``need`` with the smallest sum of drops (:func:`paramsurgery.budget.solve`).

    The combined removal is computed from the shapes: where two groups meet in one layer
    (its input and its output channels), pruning both removes less than the sum of each
    alone; with a ``latency`` model it is the predicted seconds saved, and only rows whose
    kept counts are fast counts are candidates.
    """
    names = report.names
    choices = []
    for name in names:
        rows = report._fast_rows(name, latency) if latency is not None else report._rows(name)
        rows = sorted(rows, key=lambda r: r['amount'])
        if latency is not None:
            gains = [latency.dense - latency.predict({name: latency.sizes[name] - r['removed']})
                     for r in rows]
        else:
            gains = [r['macs_removed'] if index == 0 else r['params_removed'] for r in rows]
        choices.append(budget.options(rows, gains, need))
    if latency is not None:
        group_sizes = latency.sizes

        def removal(ks):
            return latency.dense - latency.predict(
                {n: group_sizes[n] - choices[i][k].removed
                 for i, (n, k) in enumerate(zip(names, ks)) if choices[i][k].amount is not None})
    else:
        combined = budget.Combined(names, report._units, index, report.kind == 'weights')

        def removal(ks):
            return combined([choices[i][k].removed for i, k in enumerate(ks)])

    return budget.solve(names, choices, need, removal)
