"""The budget planner (paramsurgery.budget): pure numpy, no MXNet needed (the import without
MXNet is checked in test_pruning_core.py's blocked interpreter)."""
import itertools

import numpy as np
import pytest

from paramsurgery import budget


def rows_of(amounts, drops, removed):
    return [{'amount': a, 'drop': d, 'removed': r} for a, d, r in zip(amounts, drops, removed)]


def additive(choices):
    return lambda ks: sum(choices[i][k].gain for i, k in enumerate(ks))


def brute_force(choices, need, removal):
    """The least summed drop over every combination that reaches ``need`` (None: none)."""
    best = None
    for ks in itertools.product(*[range(len(c)) for c in choices]):
        if removal(ks) >= need:
            cost = sum(choices[i][k].drop for i, k in enumerate(ks))
            best = cost if best is None else min(best, cost)
    return best


def cost_of(plan, names, choices):
    chosen = [next(o for o in opts if o.amount == plan.get(n)) for n, opts in zip(names, choices)]
    return sum(o.drop for o in chosen)


def test_options_start_dense_count_improvements_as_no_drop_and_prefer_less_removal():
    opts = budget.options(rows_of([0.5, 0.9], [-0.2, 0.3], [5, 9]), [5.0, 9.0], need=10.0)
    assert opts[0] == budget.Option(None, 0.0, 0, 0)
    # a negative drop is noise: only the tie-breaker, proportional to the removal, remains
    assert opts[1] == budget.Option(0.5, budget.TIE * 5.0 / 10.0, 5.0, 5)
    assert opts[2].amount == 0.9 and opts[2].removed == 9
    assert opts[2].drop == 0.3 + budget.TIE * 9.0 / 10.0


def test_combined_counts_overlapping_groups_once():
    # a (4, 6) weight: group 'a' on its rows, 'b' on its columns; 2 MACs per entry
    units = [{'shape': [4, 6], 'axes': {'0': [['a', 1]], '1': [['b', 1]]},
              'macs_per_entry': 2.0, 'learnable': True},
             {'shape': [4], 'axes': {'0': [['a', 1]]}, 'macs_per_entry': 0.0,
              'learnable': False}]
    params = budget.Combined(['a', 'b'], units, index=1, additive=False)
    macs = budget.Combined(['a', 'b'], units, index=0, additive=False)
    # a removes 1 of 4 rows, b 2 of 6 columns: kept 3/4 * 4/6 = 1/2 of the 24 entries
    assert params([1, 2]) == pytest.approx(12.0, rel=1e-15)   # float sums of a few terms
    assert macs([1, 2]) == pytest.approx(24.0, rel=1e-15)
    assert params([1, 0]) + params([0, 2]) > params([1, 2])    # alone, they overlap
    assert params([4, 0]) == 24.0 and params([0, 0]) == 0.0
    assert budget.Combined(['a', 'b'], units, 1, additive=True)([3, 4]) == 7.0


@pytest.mark.parametrize('seed', [0, 1, 2, 3])
@pytest.mark.parametrize('search', ['exhaustive', 'knapsack'])
def test_solve_finds_the_least_drop_that_reaches_the_budget(monkeypatch, seed, search):
    if search == 'knapsack':
        monkeypatch.setattr(budget, 'EXHAUSTIVE', 0)
    rng = np.random.RandomState(seed)
    names, amounts = ['a', 'b', 'c', 'd'], [0.25, 0.5, 0.75]
    choices = []
    for i in range(len(names)):
        removed = [int(a * 20 * (i + 1)) for a in amounts]
        choices.append(budget.options(rows_of(amounts, rng.rand(3) * amounts, removed),
                                      [float(r) for r in removed], need=60.0))
    removal = additive(choices)
    for need in (20.0, 60.0, 120.0):
        plan = budget.solve(names, choices, need, removal)
        ks = [[o.amount for o in opts].index(plan.get(n)) for n, opts in zip(names, choices)]
        assert removal(ks) >= need
        # removals add up here, where the knapsack is exact: the optimum, up to the float
        # rounding of summing four drops
        assert cost_of(plan, names, choices) == pytest.approx(
            brute_force(choices, need, removal), rel=1e-12, abs=1e-15)


@pytest.mark.parametrize('search', ['exhaustive', 'knapsack'])
def test_solve_says_none_when_no_choice_reaches_the_budget(monkeypatch, search):
    if search == 'knapsack':
        monkeypatch.setattr(budget, 'EXHAUSTIVE', 0)
    choices = [budget.options(rows_of([0.5], [0.1], [5]), [5.0], 11.0)] * 2
    assert budget.solve(['a', 'b'], choices, 11.0, additive(choices)) is None
    assert budget.knapsack([[(o.amount, o.drop, o.gain) for o in c] for c in choices],
                           11.0) is None


def test_repair_and_improve_meet_a_budget_the_overlaps_left_short():
    # two names whose removals overlap: together they remove less than the sum
    choices = [budget.options(rows_of([0.5, 1.0], [0.1, 0.5], [5, 10]), [5.0, 10.0], 8.0)
               for _ in range(2)]

    def removal(ks):
        alone = [choices[i][k].gain for i, k in enumerate(ks)]
        return sum(alone) - 0.5 * min(alone)

    def cost(ks):
        return sum(choices[i][k].drop for i, k in enumerate(ks))

    # (1, 1) removes 5 + 5 - 2.5 = 7.5 < 8: the knapsack's additive guess is short
    ks = budget.repair([1, 1], [3, 3], removal, cost, 8.0)
    assert removal(ks) >= 8.0
    better = budget.improve(ks, [3, 3], removal, cost, 8.0)
    assert removal(better) >= 8.0 and cost(better) <= cost(ks)
    # two float64 drops summed in another order: rounding of a few ulps at most
    assert cost(better) == pytest.approx(brute_force(choices, 8.0, removal), rel=1e-12)
    assert budget.repair([0, 0], [3, 3], removal, cost, 100.0) is None


def test_the_knapsack_alone_finds_the_optimum_where_removals_add_up():
    # need = BUCKETS: one bucket per unit of removal, so integer gains are credited exactly
    rng = np.random.RandomState(5)
    need = float(budget.BUCKETS)
    choices = [budget.options(rows_of([0.25, 0.5, 0.75], rng.rand(3), [k * 300 * (i + 1)
                                                                       for k in (1, 2, 3)]),
                              [k * 300.0 * (i + 1) for k in (1, 2, 3)], need)
               for i in range(4)]
    picked = budget.knapsack([[(o.amount, o.drop, o.gain) for o in c] for c in choices], need)
    chosen = [next(o for o in c if o.amount == a) for c, a in zip(choices, picked)]
    assert sum(o.gain for o in chosen) >= need
    removal = additive(choices)
    # four float64 drops summed in another order: rounding of a few ulps at most
    assert sum(o.drop for o in chosen) == pytest.approx(brute_force(choices, need, removal),
                                                        rel=1e-12)
