"""Tests of the numpy pruning core (``pruning_core``: prune_count, magnitude_masks,
random_masks, structured_masks, custom_masks): masks computed from arrays.

The core needs no MXNet: every function takes numpy arrays and returns boolean keep-masks, so
contexts and hybridisation do not enter here (they are tested with the net-level functions in
test_pruning.py).
"""
import copy
import math
import os
import subprocess
import sys
from collections import OrderedDict

import numpy as np
import pytest

import paramsurgery as ps
from paramsurgery import SurgeryTypeError, SurgeryValueError

# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------

def pruned(keep):
    return int(keep.size - np.count_nonzero(keep))


def reference_magnitude(weights, amount, masks=None, scope='layer', scores=None):
    """Sort-based reference: rank candidates by (|score|, position) and prune the first k."""
    masks = masks or {}
    names = list(weights)
    groups = [names] if scope == 'global' else [[n] for n in names]
    out = {}
    for group in groups:
        values, positions, owners = [], [], []
        offset = 0
        for name in group:
            w = weights[name]
            m = masks.get(name)
            if scores is not None:
                s = np.abs(np.broadcast_to(scores[name], w.shape)).astype(np.float64)
            else:
                s = np.abs(w if m is None else w * m).astype(np.float64)
            cand = np.ones(w.shape, bool) if m is None else np.broadcast_to(m, w.shape) != 0
            idx = np.flatnonzero(cand)
            values.append(s.ravel()[idx])
            positions.append(idx + offset)
            owners += [(name, i) for i in idx]
            offset += w.size
        values = np.concatenate(values)
        positions = np.concatenate(positions)
        n = values.size
        k = int(amount) if isinstance(amount, int) else int(math.floor(amount * n + 0.5))
        order = np.lexsort((positions, values))[:k]
        for name in group:
            m = masks.get(name)
            shape = weights[name].shape
            out[name] = np.ones(shape, bool) if m is None else \
                (np.broadcast_to(m, shape) != 0).copy()
        for j in order:
            name, i = owners[j]
            out[name].reshape(-1)[i] = False
    return out


def snapshot(*dicts):
    return [copy.deepcopy(d) for d in dicts]


def assert_same(before, after_dicts):
    for old, new in zip(before, after_dicts):
        assert list(old) == list(new)
        for name in old:
            assert type(new[name]) is type(old[name])
            if isinstance(old[name], np.ndarray):
                assert new[name].dtype == old[name].dtype
                np.testing.assert_array_equal(new[name], old[name])
            else:
                assert new[name] == old[name]


# ---------------------------------------------------------------------------------------------
# amount -> count
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize('amount,n,expected', [
    (0.5, 7, 4), (0.25, 10, 3), (0.35, 20, 7), (0.05, 10, 1), (0.049, 10, 0), (0.15, 10, 2),
    (0.0, 10, 0), (1.0, 10, 10), (1.0, 0, 0), (0.9, 25502912, 22952621),
    (3, 10, 3), (0, 10, 0), (10, 10, 10), (np.int64(2), 5, 2), (np.float32(0.5), 4, 2),
    (1, 10, 1),
])
def test_prune_count(amount, n, expected):
    got = ps.prune_count(amount, n)
    assert got == expected and type(got) is int


@pytest.mark.parametrize('amount,exc,words', [
    (True, SurgeryTypeError, 'bool'),
    (np.bool_(False), SurgeryTypeError, 'bool'),
    ('0.5', SurgeryTypeError, 'str'),
    (None, SurgeryTypeError, 'NoneType'),
    ([0.5], SurgeryTypeError, 'list'),
    (float('nan'), SurgeryValueError, 'not finite'),
    (float('inf'), SurgeryValueError, 'not finite'),
    (-0.1, SurgeryValueError, 'negative'),
    (-1, SurgeryValueError, 'negative'),
    (11, SurgeryValueError, 'only 10 entries are still unmasked'),
    (1.5, SurgeryValueError, 'amount=0.015 (amount/100)'),
    (50.0, SurgeryValueError, 'amount=0.5 (amount/100)'),
])
def test_prune_count_rejects(amount, exc, words):
    with pytest.raises(exc) as info:
        ps.prune_count(amount, 10)
    assert words in str(info.value)
    builtin = TypeError if exc is SurgeryTypeError else ValueError
    assert isinstance(info.value, builtin) and isinstance(info.value, ps.ParamSurgeryError)


# ---------------------------------------------------------------------------------------------
# magnitude
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize('amount', [0.0, 0.1, 0.5, 0.77, 1.0, 3])
def test_magnitude_exact_count_and_smallest(amount):
    rng = np.random.RandomState(0)
    w = rng.randn(6, 5).astype(np.float32)
    keep = ps.magnitude_masks({'w': w}, amount)['w']
    k = ps.prune_count(amount, w.size)
    assert keep.dtype == bool and keep.shape == w.shape
    assert pruned(keep) == k
    if 0 < k < w.size:
        assert np.abs(w[~keep]).max() < np.abs(w[keep]).min()


def test_magnitude_ties_lowest_index_first():
    w = np.array([[2., 1., 1.], [1., 1., 3.]])
    keep = ps.magnitude_masks({'w': w}, 2)['w']
    np.testing.assert_array_equal(keep, [[True, False, False], [True, True, True]])
    keep = ps.magnitude_masks({'w': w}, 3)['w']
    np.testing.assert_array_equal(keep, [[True, False, False], [False, True, True]])
    # All equal: the first k flat positions go.
    keep = ps.magnitude_masks({'z': np.zeros((2, 4), np.float32)}, 0.5)['z']
    np.testing.assert_array_equal(keep, [[False] * 4, [True] * 4])
    # Sign does not matter: -1 and 1 tie, the lower index goes.
    keep = ps.magnitude_masks({'s': np.array([1., -1., 5.])}, 1)['s']
    np.testing.assert_array_equal(keep, [False, True, True])


def test_magnitude_global_ties_follow_dict_order():
    weights = OrderedDict([('b', np.ones(3)), ('a', np.ones(2))])
    keep = ps.magnitude_masks(weights, 4, scope='global')
    assert list(keep) == ['b', 'a']
    np.testing.assert_array_equal(keep['b'], [False, False, False])
    np.testing.assert_array_equal(keep['a'], [False, True])


@pytest.mark.parametrize('scope', ['layer', 'global'])
@pytest.mark.parametrize('case', range(12))
def test_magnitude_matches_sort_reference(scope, case):
    rng = np.random.RandomState(case)
    weights, masks = OrderedDict(), {}
    for i in range(3):
        shape = tuple(rng.randint(1, 5, size=rng.randint(1, 4)))
        # Small integers: many ties, and exact products with the masks.
        weights['p%d' % i] = rng.randint(-3, 4, size=shape).astype(np.float32)
        if rng.rand() < 0.7:
            masks['p%d' % i] = rng.choice([0., 1., 2.], size=shape).astype(np.float32)
    amount = [0.0, 0.3, 0.5, 0.9, 1.0][case % 5]
    got = ps.magnitude_masks(weights, amount, masks=masks, scope=scope)
    want = reference_magnitude(weights, amount, masks, scope)
    for name in weights:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_magnitude_global_exact_over_union():
    rng = np.random.RandomState(1)
    weights = OrderedDict([('small', rng.randn(50) * 0.01), ('big', rng.randn(30, 2)),
                           ('mid', rng.randn(4, 5, 3) * 0.1)])
    n = sum(w.size for w in weights.values())
    keep = ps.magnitude_masks(weights, 0.6, scope='global')
    assert sum(pruned(m) for m in keep.values()) == math.floor(0.6 * n + 0.5)
    # Global: the tiny layer loses more than 60%, the big one less; layer: each loses 60%.
    assert pruned(keep['small']) > 0.6 * 50 and pruned(keep['big']) < 0.6 * 60
    kept = np.concatenate([np.abs(weights[k][keep[k]]).ravel() for k in weights])
    gone = np.concatenate([np.abs(weights[k][~keep[k]]).ravel() for k in weights])
    assert gone.max() < kept.min()
    layer = ps.magnitude_masks(weights, 0.6)
    assert [pruned(m) for m in layer.values()] == [30, 36, 36]
    # An int amount counts over the union too.
    keep = ps.magnitude_masks(weights, 7, scope='global')
    assert sum(pruned(m) for m in keep.values()) == 7


def test_magnitude_never_revives_and_counts_unmasked():
    w = np.arange(1, 11, dtype=np.float32)
    mask = np.array([1, 0, 1, 1, 0, 1, 1, 1, 1, 0], np.float32)
    keep = ps.magnitude_masks({'w': w}, 0.5, masks={'w': mask})['w']
    # 7 unmasked -> floor(3.5 + 0.5) = 4 more pruned: the unmasked 1, 3, 4, 6.
    np.testing.assert_array_equal(np.flatnonzero(keep), [6, 7, 8])
    assert not keep[mask == 0].any()
    # Pruning again with the combined mask never brings anything back.
    again = ps.magnitude_masks({'w': w}, 0.5, masks={'w': keep.astype(np.float32)})['w']
    assert not (again & ~keep).any()
    assert pruned(again) == 10 - 1  # 3 left -> floor(1.5 + 0.5) = 2 more


def test_magnitude_repeated_halving_reaches_75_percent():
    w = np.random.RandomState(3).randn(16, 16)
    keep = ps.magnitude_masks({'w': w}, 0.5)['w']
    keep2 = ps.magnitude_masks({'w': w}, 0.5, masks={'w': keep})['w']
    assert pruned(keep) == 128 and pruned(keep2) == 192
    assert not (keep2 & ~keep).any()


def test_magnitude_ranks_effective_weight():
    w = np.ones(4, np.float32)
    mask = np.array([0.1, 1.0, 2.0, 0.0], np.float32)  # scaling mask, last entry masked
    keep = ps.magnitude_masks({'w': w}, 1, masks={'w': mask})['w']
    np.testing.assert_array_equal(keep, [False, True, True, False])
    # A broadcastable mask (per row) works too.
    w2 = np.array([[1., 9.], [2., 3.]])
    keep = ps.magnitude_masks({'w': w2}, 1, masks={'w': np.array([[0.], [1.]])})['w']
    np.testing.assert_array_equal(keep, [[False, False], [False, True]])


def test_magnitude_importance_scores():
    w = np.array([5., 4., 3., 2.])
    scores = np.array([-0.1, 9., 0.5, -7.])  # |score| ranks: 0.1, 0.5, 7, 9
    keep = ps.magnitude_masks({'w': w}, 2, importance={'w': scores})['w']
    np.testing.assert_array_equal(keep, [False, True, False, True])
    # Masked entries stay out even when their score is the smallest.
    keep = ps.magnitude_masks({'w': w}, 1, masks={'w': np.array([0, 1, 1, 1])},
                              importance={'w': scores})['w']
    np.testing.assert_array_equal(keep, [False, True, False, True])
    # ... and stay pruned even when their score is the largest.
    keep = ps.magnitude_masks({'w': np.ones(4)}, 1, masks={'w': np.array([1, 1, 0, 1])},
                              importance={'w': np.array([1., 2., 100., 3.])})['w']
    np.testing.assert_array_equal(keep, [False, True, False, True])
    weights = OrderedDict([('a', np.ones(3)), ('b', np.ones(2))])
    imp = {'a': np.array([3., 4., 5.]), 'b': np.array([[1.], [2.]])[:, 0]}
    keep = ps.magnitude_masks(weights, 0.4, scope='global', importance=imp)
    assert pruned(keep['a']) == 0 and pruned(keep['b']) == 2
    ref = reference_magnitude(weights, 0.4, scope='global', scores=imp)
    for name in weights:
        np.testing.assert_array_equal(keep[name], ref[name])


def test_magnitude_importance_validation():
    w = {'a': np.ones(3), 'b': np.ones(2)}
    with pytest.raises(SurgeryValueError, match="missing for 'b'"):
        ps.magnitude_masks(w, 1, importance={'a': np.ones(3)})
    with pytest.raises(SurgeryValueError, match="does not broadcast"):
        ps.magnitude_masks(w, 1, importance={'a': np.ones(4), 'b': np.ones(2)})
    with pytest.raises(SurgeryValueError, match="NaN"):
        ps.magnitude_masks(w, 1, importance={'a': np.array([1, np.nan, 2]), 'b': np.ones(2)})


@pytest.mark.parametrize('norm', [1, 2, 0.5, np.inf, 3.0])
def test_magnitude_norm_does_not_change_ranking(norm):
    w = np.random.RandomState(4).randn(5, 7)
    np.testing.assert_array_equal(ps.magnitude_masks({'w': w}, 0.4, norm=norm)['w'],
                                  ps.magnitude_masks({'w': w}, 0.4)['w'])


@pytest.mark.parametrize('norm', [0, -1, 'l1', True, None, float('nan')])
def test_magnitude_bad_norm(norm):
    with pytest.raises(SurgeryValueError, match='norm'):
        ps.magnitude_masks({'w': np.ones(3)}, 1, norm=norm)


def test_magnitude_nan_weights():
    w = OrderedDict([('ok', np.ones(3)), ('bad', np.array([1., np.nan, 2., np.nan]))])
    for amount in (0, 1, 0.9):
        with pytest.raises(SurgeryValueError) as info:
            ps.magnitude_masks(w, amount, scope='global')
        assert "'bad': the weights have 2 NaN entries" in str(info.value)
        assert "'ok'" not in str(info.value)
    # A NaN in an already masked entry is not a candidate: no error, never kept.
    keep = ps.magnitude_masks({'bad': w['bad']}, 1, masks={'bad': np.array([1, 0, 1, 0])})
    np.testing.assert_array_equal(keep['bad'], [False, False, True, False])
    # Infinity ranks above every number.
    keep = ps.magnitude_masks({'w': np.array([np.inf, -np.inf, 1., 0.])}, 3)['w']
    np.testing.assert_array_equal(keep, [False, True, False, False])


def test_magnitude_mixed_dtypes_global():
    weights = OrderedDict([('h', np.array([0.5, 3.0, 1.25], np.float16)),
                           ('d', np.array([0.5 + 1e-12, 2.0])),
                           ('i', np.array([[1, -7]], np.int32))])
    keep = ps.magnitude_masks(weights, 3, scope='global')
    # Exact comparisons: 0.5 (h) < 0.5+1e-12 (d) < 1 (i) < 1.25 (h).
    np.testing.assert_array_equal(keep['h'], [False, True, True])
    np.testing.assert_array_equal(keep['d'], [False, True])
    np.testing.assert_array_equal(keep['i'], [[False, True]])


def test_magnitude_large_group_with_ties_and_blocks():
    # Larger than one block, with a tied threshold spanning several weights.
    rng = np.random.RandomState(5)
    weights = OrderedDict(('p%d' % i, rng.randint(0, 5, size=70000).astype(np.float32))
                          for i in range(3))
    masks = {'p1': (rng.rand(70000) > 0.3).astype(np.float32)}
    got = ps.magnitude_masks(weights, 0.37, masks=masks, scope='global')
    want = reference_magnitude(weights, 0.37, masks, 'global')
    for name in weights:
        np.testing.assert_array_equal(got[name], want[name])


def test_magnitude_scalar_and_empty_weights():
    keep = ps.magnitude_masks({'s': np.float32(2.0), 'e': np.zeros((0, 3))}, 1.0)
    assert keep['s'].shape == () and not keep['s']
    assert keep['e'].shape == (0, 3)


# ---------------------------------------------------------------------------------------------
# random
# ---------------------------------------------------------------------------------------------

def test_random_exact_count_seeded_and_fresh():
    w = {'a': np.zeros((10, 10)), 'b': np.zeros(7)}
    one = ps.random_masks(w, 0.3, seed=7)
    assert pruned(one['a']) == 30 and pruned(one['b']) == 2
    two = ps.random_masks(w, 0.3, seed=7)
    for name in w:
        np.testing.assert_array_equal(one[name], two[name])
    other = ps.random_masks(w, 0.3, seed=8)
    assert not np.array_equal(one['a'], other['a'])
    # An explicit RandomState or Generator is used as given.
    rs = ps.random_masks(w, 0.3, seed=np.random.RandomState(7))
    np.testing.assert_array_equal(rs['a'], one['a'])
    gen = ps.random_masks(w, 5, seed=np.random.default_rng(0))
    assert pruned(gen['a']) == 5 and pruned(gen['b']) == 5
    fresh = ps.random_masks(w, 0.3)
    assert pruned(fresh['a']) == 30


def test_random_leaves_global_numpy_state_alone():
    np.random.seed(123)
    state = np.random.get_state()
    ps.random_masks({'a': np.zeros(100)}, 0.5, seed=1)
    ps.random_masks({'a': np.zeros(100)}, 0.5)
    after = np.random.get_state()
    assert state[0] == after[0] and np.array_equal(state[1], after[1]) and state[2] == after[2]


def test_random_skips_masked_and_global_union():
    mask = np.zeros((5, 6))
    mask[:, :2] = 1
    keep = ps.random_masks({'w': np.ones((5, 6))}, 0.5, masks={'w': mask}, seed=0)['w']
    assert not keep[:, 2:].any()
    assert int(keep.sum()) == 5  # 10 candidates, 5 pruned
    weights = OrderedDict([('a', np.ones(40)), ('b', np.ones((3, 20)))])
    keep = ps.random_masks(weights, 0.25, scope='global', seed=1)
    assert pruned(keep['a']) + pruned(keep['b']) == 25
    assert pruned(keep['a']) not in (0, 25)  # drawn across both


def test_random_is_uniform():
    counts = np.zeros(4)
    rng = np.random.RandomState(0)
    for _ in range(2000):
        counts += ~ps.random_masks({'w': np.ones(4)}, 1, seed=rng)['w']
    assert counts.sum() == 2000 and counts.min() > 430 and counts.max() < 570


@pytest.mark.parametrize('seed,exc', [(-1, SurgeryValueError), (2 ** 32, SurgeryValueError),
                                      (1.5, SurgeryTypeError), ('0', SurgeryTypeError),
                                      (True, SurgeryTypeError)])
def test_random_bad_seed(seed, exc):
    with pytest.raises(exc, match='seed'):
        ps.random_masks({'w': np.ones(3)}, 1, seed=seed)


# ---------------------------------------------------------------------------------------------
# structured
# ---------------------------------------------------------------------------------------------

def conv_weight():
    # 4 output filters x 3 input channels x 2 x 2, filter norms distinct and known.
    w = np.ones((4, 3, 2, 2), np.float32)
    w[0] *= 3
    w[1] *= 0.5
    w[2] *= 2
    w[3] *= 1
    return w


def test_structured_axis0_filters():
    w = conv_weight()
    keep = ps.structured_masks({'c': w}, 0.5)['c']
    # Norms 3, 0.5, 2, 1 (times sqrt(12)) -> filters 1 and 3 go, whole.
    assert not keep[[1, 3]].any() and keep[[0, 2]].all()
    keep = ps.structured_masks({'c': w}, 1)['c']
    assert not keep[1].any() and keep[[0, 2, 3]].all()


def test_structured_axis1_and_negative_axis():
    w = conv_weight()
    w[:, 1] *= 0.1
    keep = ps.structured_masks({'c': w}, 1, axis=1)['c']
    assert not keep[:, 1].any() and keep[:, [0, 2]].all()
    np.testing.assert_array_equal(ps.structured_masks({'c': w}, 1, axis=-3)['c'], keep)
    dense = np.array([[1., 5.], [1., 5.], [1., 5.]])
    keep = ps.structured_masks({'d': dense}, 0.5, axis=1)['d']
    np.testing.assert_array_equal(keep, [[False, True]] * 3)
    keep = ps.structured_masks({'d': dense}, 2, axis=0)['d']
    np.testing.assert_array_equal(keep, [[False, False], [False, False], [True, True]])


def test_structured_norm_choice():
    # Row A = [3, 0, 0, 0]: L1 3, L2 3, Linf 3. Row B = [1, 1, 1, 1]: L1 4, L2 2, Linf 1.
    w = {'d': np.array([[3., 0, 0, 0], [1, 1, 1, 1]])}
    assert not ps.structured_masks(w, 1, norm=1)['d'][0].any()
    assert not ps.structured_masks(w, 1, norm=2)['d'][1].any()
    assert not ps.structured_masks(w, 1, norm=np.inf)['d'][1].any()
    assert not ps.structured_masks(w, 1, norm=0.5)['d'][0].any()  # (4 * 1)^2 = 16 > 3


def test_structured_ties_lowest_slice_first():
    keep = ps.structured_masks({'d': np.ones((4, 3))}, 0.5)['d']
    np.testing.assert_array_equal(keep.all(axis=1), [False, False, True, True])


def test_structured_with_existing_masks():
    w = np.array([[1., 1.], [5., 5.], [2., 2.], [3., 3.]])
    mask = np.array([[0, 0], [0, 1], [1, 1], [1, 1]], np.float32)
    keep = ps.structured_masks({'d': w}, 0.5, masks={'d': mask})['d']
    # Row 0 is already fully masked: 3 candidates, floor(1.5 + 0.5) = 2 pruned. Effective
    # norms: row 1 = 5 (one entry left), row 2 = 2.83, row 3 = 4.24 -> rows 2 and 3 go.
    np.testing.assert_array_equal(keep, [[False, False], [False, True], [False, False],
                                         [False, False]])
    with pytest.raises(SurgeryValueError, match='only 3 slices'):
        ps.structured_masks({'d': w}, 4, masks={'d': mask})


def test_structured_validation():
    with pytest.raises(SurgeryValueError, match='axis=2 is out of range'):
        ps.structured_masks({'d': np.ones((2, 3))}, 1, axis=2)
    with pytest.raises(SurgeryValueError, match='axis=0 is out of range'):
        ps.structured_masks({'s': np.float32(1)}, 0)
    with pytest.raises(SurgeryTypeError, match='axis'):
        ps.structured_masks({'d': np.ones((2, 3))}, 1, axis=1.0)
    with pytest.raises(SurgeryValueError, match='slices'):
        ps.structured_masks({'d': np.ones((2, 3))}, 3)
    with pytest.raises(SurgeryValueError, match='NaN norm'):
        ps.structured_masks({'d': np.array([[1., np.nan], [1., 1.]])}, 1)
    with pytest.raises(SurgeryValueError, match='norm'):
        ps.structured_masks({'d': np.ones((2, 3))}, 1, norm=0)


# ---------------------------------------------------------------------------------------------
# custom
# ---------------------------------------------------------------------------------------------

def test_custom_masks_broadcast_and_combine():
    w = {'c': np.ones((3, 2, 2, 2))}
    per_filter = np.array([1, 0, 1]).reshape(3, 1, 1, 1)
    keep = ps.custom_masks(w, {'c': per_filter})['c']
    assert keep.shape == (3, 2, 2, 2) and not keep[1].any() and keep[[0, 2]].all()
    existing = np.ones((3, 2, 2, 2), np.float32)
    existing[0, 0] = 0
    keep = ps.custom_masks(w, {'c': per_filter.astype(bool)}, masks={'c': existing})['c']
    assert not keep[0, 0].any() and keep[0, 1].all() and not keep[1].any()
    keep = ps.custom_masks({'x': np.ones(3)}, {'x': np.array([1., 0., 1.])})['x']
    np.testing.assert_array_equal(keep, [True, False, True])


@pytest.mark.parametrize('mask,exc,words', [
    (np.array([1., 0.5, 1.]), SurgeryValueError, 'binary'),
    (np.array([1., np.nan, 1.]), SurgeryValueError, 'binary'),
    (np.array([2, 0, 1]), SurgeryValueError, 'binary'),
    (np.ones(4), SurgeryValueError, 'does not broadcast'),
    ([1, 0, 1], SurgeryTypeError, 'numpy array'),
    (np.array(['1', '0', '1']), SurgeryTypeError, 'numeric'),
])
def test_custom_masks_rejects(mask, exc, words):
    with pytest.raises(exc, match=words):
        ps.custom_masks({'x': np.ones(3)}, {'x': mask})


def test_custom_masks_names():
    with pytest.raises(SurgeryValueError, match="missing for 'y'"):
        ps.custom_masks({'x': np.ones(3), 'y': np.ones(2)}, {'x': np.ones(3)})
    with pytest.raises(SurgeryValueError, match="'z'"):
        ps.custom_masks({'x': np.ones(3)}, {'x': np.ones(3), 'z': np.ones(3)})


# ---------------------------------------------------------------------------------------------
# validation common to all, and inputs never modified
# ---------------------------------------------------------------------------------------------

def calls():
    return [
        lambda w, m, a, **kw: ps.magnitude_masks(w, a, masks=m, **kw),
        lambda w, m, a, **kw: ps.random_masks(w, a, masks=m, seed=0, **kw),
        lambda w, m, a, **kw: ps.structured_masks(w, a, masks=m),
    ]


@pytest.mark.parametrize('call', calls())
@pytest.mark.parametrize('bad', [
    dict(amount=True, exc=SurgeryTypeError),
    dict(amount=float('nan'), exc=SurgeryValueError),
    dict(amount=-2, exc=SurgeryValueError),
    dict(amount='half', exc=SurgeryTypeError),
    dict(amount=1.5, exc=SurgeryValueError),
    dict(amount=10 ** 6, exc=SurgeryValueError),
    dict(amount=1, masks={'nope': np.ones(3)}, exc=SurgeryValueError),
    dict(amount=1, masks={'a': np.ones(5)}, exc=SurgeryValueError),
    dict(amount=1, masks={'a': np.array([1., np.nan, 1.])}, exc=SurgeryValueError),
    dict(amount=1, masks={'a': [1, 1, 1]}, exc=SurgeryTypeError),
])
def test_errors_leave_inputs_unchanged(call, bad):
    weights = OrderedDict([('a', np.array([3., 1., 2.])),
                           ('b', np.arange(6, dtype=np.float32).reshape(2, 3))])
    masks = bad.get('masks', {'b': np.array([[1, 0, 1], [1, 1, 0]], np.float32)})
    before = snapshot(weights, masks)
    with pytest.raises(bad['exc']):
        call(weights, masks, bad['amount'])
    assert_same(before, [weights, masks])


@pytest.mark.parametrize('call', calls())
def test_success_leaves_inputs_unchanged_and_returns_new_arrays(call):
    weights = OrderedDict([('a', np.array([3., 1., 2.])),
                           ('b', np.arange(6, dtype=np.float32).reshape(2, 3))])
    masks = {'b': np.array([[1, 0, 1], [1, 1, 0]], np.float32), 'a': None}
    before = snapshot(weights, masks)
    out = call(weights, masks, 0.5)
    assert_same(before, [weights, masks])
    assert list(out) == ['a', 'b']
    for name, keep in out.items():
        assert keep.dtype == bool and keep.shape == weights[name].shape
        assert not np.shares_memory(keep, weights[name])
    assert not out['b'][masks['b'] == 0].any()


@pytest.mark.parametrize('weights,exc', [
    ([np.ones(3)], SurgeryTypeError),
    ({}, SurgeryValueError),
    ({'a': [1., 2.]}, SurgeryTypeError),
    ({'a': np.array(['x', 'y'])}, SurgeryTypeError),
    ({'a': np.array([object(), object()])}, SurgeryTypeError),
])
def test_bad_weights(weights, exc):
    for fn in (ps.magnitude_masks, ps.random_masks, ps.structured_masks):
        with pytest.raises(exc):
            fn(weights, 1)


@pytest.mark.parametrize('scope', ['Global', 'model', None])
def test_bad_scope(scope):
    with pytest.raises(SurgeryValueError, match='scope'):
        ps.magnitude_masks({'a': np.ones(2)}, 1, scope=scope)
    with pytest.raises(SurgeryValueError, match='scope'):
        ps.random_masks({'a': np.ones(2)}, 1, scope=scope)


def test_count_errors_name_the_parameter_or_union():
    w = OrderedDict([('fc_weight', np.ones(3)), ('fc2_weight', np.ones(2))])
    with pytest.raises(SurgeryValueError, match="parameter 'fc2_weight'"):
        ps.magnitude_masks(w, 3)
    with pytest.raises(SurgeryValueError,
                       match='only 5 entries are still unmasked in the 2 selected parameters'):
        ps.magnitude_masks(w, 6, scope='global')


# ---------------------------------------------------------------------------------------------
# the core needs no MXNet
# ---------------------------------------------------------------------------------------------

def test_core_and_schedules_import_with_mxnet_blocked():
    # A fresh interpreter in which `import mxnet` fails: the core, the schedules and the
    # budget planner must work.
    code = ("import sys; sys.modules['mxnet'] = None\n"
            "import numpy as np\n"
            "import paramsurgery as ps\n"
            "from paramsurgery import budget, pruning_core, schedules\n"
            "keep = ps.magnitude_masks({'w': np.arange(10.0)}, 0.3)['w']\n"
            "print(int(keep.sum()), ps.prune_count(0.5, 9), ps.PolynomialDecay(0, 0.5, 0, 4)(2))\n"
            "opts = budget.options([{'amount': 0.5, 'drop': 0.1, 'removed': 3}], [3.0], 2.0)\n"
            "print(dict(budget.solve(['w'], [opts], 2.0, lambda ks: opts[ks[0]].gain)))\n"
            "try:\n"
            "    ps.apply_mask\n"
            "except ImportError:\n"
            "    print('gluon parts need mxnet')\n"
            "print(sorted(m for m in sys.modules if m.startswith('mxnet') and sys.modules[m]))\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          cwd=root, env=dict(os.environ, PYTHONPATH=root))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ['7 5 (False, 0.4375)', "{'w': 0.5}",
                                        'gluon parts need mxnet', '[]']


def test_dict_amounts_give_each_weight_its_own():
    w = OrderedDict([('a', np.arange(10.0)), ('b', np.arange(4.0)), ('c', np.ones(6))])
    keeps = ps.magnitude_masks(w, {'a': 0.5, 'c': 2})
    assert list(keeps) == ['a', 'c'] and [pruned(keeps[n]) for n in keeps] == [5, 2]
    assert np.array_equal(keeps['a'], ps.magnitude_masks({'a': w['a']}, 0.5)['a'])
    keeps = ps.random_masks(w, {'b': 0.75}, seed=0)
    assert list(keeps) == ['b'] and pruned(keeps['b']) == 3
    with pytest.raises(SurgeryValueError, match="'d'.*The weights are: 'a', 'b', 'c'"):
        ps.magnitude_masks(w, {'d': 0.5})
    with pytest.raises(SurgeryValueError, match="scope='layer'"):
        ps.magnitude_masks(w, {'a': 0.5}, scope='global')
    with pytest.raises(SurgeryValueError, match="parameter 'a'.*amount/100"):
        ps.magnitude_masks(w, {'a': 50.0})
