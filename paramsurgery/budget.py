"""The budget planner: one measured amount per name, reaching a budget at the least drop.

Pure numpy and Python (it imports without MXNet, like ``pruning_core``):
:meth:`paramsurgery.SensitivityReport.plan` turns its measurements into :class:`Option`
lists and a removal function, and :func:`solve` picks the choice. Up to ``EXHAUSTIVE``
combinations are all tried; beyond that, a multiple-choice knapsack on the removals
measured one at a time (exact where removals add up) gives a start, which is completed
greedily where overlaps leave it short and then improved by moving one or two names at a
time while the budget holds.
"""
import itertools
import math
from collections import OrderedDict
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence

import numpy as np

__all__ = []

# Buckets of the budget in the dynamic programme: the removal each choice is credited with
# is rounded down to a bucket, so a plan it returns always reaches the budget.
BUCKETS = 2000
# Weight of "remove no more than needed" against the drops in the objective.
TIE = 1e-9
# Plans are searched exhaustively up to this many combinations of measured amounts.
EXHAUSTIVE = 60000


class Option(NamedTuple):
    """One candidate for one name: prune it by ``amount`` (None: leave it dense)."""
    amount: Optional[float]  # the measured amount, or None
    drop: float              # the cost: the measured drop (>= 0), plus the tie-breaker
    gain: float              # the removal measured alone (MACs, parameters or seconds)
    removed: int             # channels (or entries) it removes


def options(rows: Sequence[dict], gains: Sequence[float], need: float) -> List[Option]:
    """The options of one name: dense, then each measured row (``rows`` sorted by amount,
    ``gains[i]`` the removal of ``rows[i]`` alone)."""
    found = [Option(None, 0.0, 0, 0)]
    for row, gain in zip(rows, gains):
        # A metric that improves when a group is pruned is measurement noise, not a reason
        # to prune more than the budget needs: it counts as no drop, and among choices of
        # equal drop the one removing least wins (the tiny second term).
        drop = max(0.0, float(row['drop'])) + TIE * gain / (need if need > 0 else 1.0)
        found.append(Option(row['amount'], drop, gain, int(row['removed'])))
    return found


class Combined:
    """The combined removal (MACs or parameters) of pruning several units at once, as a
    function of how many channels (entries) each unit removes: fast to call many times.

    ``units`` are the report's shape records (``shape``, ``axes``: axis -> [(group,
    stride)], ``macs_per_entry``, ``learnable``); ``index`` 0 counts MACs, 1 parameters;
    ``additive`` (``kind='weights'``): removals simply add up."""

    def __init__(self, names: Sequence[str], units: Sequence[dict], index: int,
                 additive: bool):
        self.additive = additive
        pos = {name: i for i, name in enumerate(names)}
        self.entries = []
        for entry in units:
            size = float(np.prod(entry['shape']))
            weight = entry['macs_per_entry'] * size if index == 0 else \
                (size if entry['learnable'] else 0.0)
            if weight <= 0:
                continue
            axes = [(entry['shape'][int(axis)], [(pos[g], st) for g, st in covers if g in pos])
                    for axis, covers in entry['axes'].items()]
            self.entries.append((weight, [a for a in axes if a[1]]))

    def __call__(self, removed: Sequence[int]) -> float:
        if self.additive:
            return float(sum(removed))
        total = 0.0
        for weight, axes in self.entries:
            kept = 1.0
            for rows, covers in axes:
                kept *= max(0.0, rows - sum(removed[u] * st for u, st in covers)) / rows
            total += weight * (1.0 - kept)
        return total


def solve(names: Sequence[str], choices: Sequence[List[Option]], need: float,
          removal: Callable[[Sequence[int]], float]) -> Optional[Dict[str, float]]:
    """The choice of one option per name whose ``removal`` (of the chosen option indices)
    is >= ``need`` with the smallest sum of drops, as ``{name: amount}`` (dense names left
    out); None when no choice reaches ``need``.

    Examples
    --------
    >>> a = options([{'amount': 0.5, 'drop': 0.1, 'removed': 5}], [5.0], 4.0)
    >>> b = options([{'amount': 0.5, 'drop': 0.3, 'removed': 5}], [5.0], 4.0)
    >>> solve(['a', 'b'], [a, b], 4.0, lambda ks: sum([a, b][i][k].gain
    ...                                              for i, k in enumerate(ks)))
    OrderedDict([('a', 0.5)])
    """
    def cost(ks):
        return sum(choices[i][k].drop for i, k in enumerate(ks))

    sizes = [len(opts) for opts in choices]
    if float(np.prod(sizes, dtype=np.float64)) <= EXHAUSTIVE:
        best = None
        for ks in itertools.product(*[range(n) for n in sizes]):
            c = cost(ks)
            if (best is None or c < best[0]) and removal(ks) >= need:
                best = (c, ks)
        ks = None if best is None else best[1]
    else:
        ks = knapsack([[(o.amount, o.drop, o.gain) for o in opts] for opts in choices], need)
        if ks is not None:
            ks = [[o.amount for o in opts].index(a) for opts, a in zip(choices, ks)]
            ks = repair(ks, sizes, removal, cost, need)
        if ks is not None:
            ks = improve(ks, sizes, removal, cost, need)
    if ks is None:
        return None
    return OrderedDict((n, choices[i][k].amount) for i, (n, k) in enumerate(zip(names, ks))
                       if choices[i][k].amount is not None)


def repair(ks, sizes, removal, cost, need):
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


def improve(ks, sizes, removal, cost, need, rounds=20):
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


def knapsack(options, target):
    """Multiple-choice knapsack over ``options`` (per name, ``(amount, drop, gain)``): the
    amounts whose summed gains reach ``target`` at the least summed drop, or None."""
    bucket = target / BUCKETS
    inf = float('inf')
    best = np.full(BUCKETS + 1, inf)
    best[0] = 0.0
    picks = []
    for opts in options:
        new = np.full(BUCKETS + 1, inf)
        arg = np.zeros(BUCKETS + 1, dtype=np.int64)
        for k, (_, drop, gain) in enumerate(opts):
            w = min(BUCKETS, int(math.floor(gain / bucket))) if bucket > 0 else BUCKETS
            shifted = np.concatenate([np.full(min(w, BUCKETS + 1), best[0]),
                                      best[:BUCKETS + 1 - w]]) if w else best
            # best[b] = least drop with removal >= b buckets; with w from this choice, any
            # b <= w is met by the others removing >= 0 (best[0]).
            shifted = np.minimum.accumulate(shifted[::-1])[::-1] if w else shifted
            cand = shifted + drop
            better = cand < new
            new[better] = cand[better]
            arg[better] = k
        picks.append(arg)
        best = new
    if not np.isfinite(best[BUCKETS]):
        return None
    chosen, b = [], BUCKETS
    for opts, arg in zip(reversed(options), reversed(picks)):
        k = int(arg[b])
        chosen.append(opts[k][0])
        w = min(BUCKETS, int(math.floor(opts[k][2] / (target / BUCKETS))))
        b = max(0, b - w)
    return list(reversed(chosen))
