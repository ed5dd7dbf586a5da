"""Tests of paramsurgery.samplers: complementary random samplers for gluon DataLoader."""
import pickle
import random

import mxnet as mx
import numpy as np
import pytest
from mxnet import gluon

import paramsurgery as ps

L = 20


def epochs(sampler, n):
    return [list(sampler) for _ in range(n)]


def assert_complementary(train_draw, valid_draw, length):
    assert len(set(train_draw)) == len(train_draw), 'train repeats an index'
    assert len(set(valid_draw)) == len(valid_draw), 'valid repeats an index'
    assert set(train_draw).isdisjoint(valid_draw)
    assert sorted(list(train_draw) + list(valid_draw)) == list(range(length))


class OldRecipeSampler:
    """Python 3 port of the sampler in the seed blog post (section 6), bugs included:
    ``exclude`` dropped after one pass, the global ``random`` module reseeded from itself,
    and a missing ``exclude.out`` swallowed."""

    def __init__(self, length, subs, exclude=None):
        self._length = length
        self._subs = subs
        self.exclude = exclude

    def __iter__(self):
        random.seed(random.randint(1, 100))
        indices = range(self._length)
        if self.exclude:
            try:
                indices = set(indices) - set(self.exclude.out)
            except Exception:
                pass
            self.exclude = None
        self.out = random.sample(sorted(indices), self._subs)
        return iter(self.out)

    def __len__(self):
        return self._subs


@pytest.fixture
def global_random_state():
    """Restore the global ``random`` state the old recipe reseeds."""
    state = random.getstate()
    yield
    random.setstate(state)


# ---------------------------------------------------------------- SubsetRandomSampler


def test_subset_random_sampler_draws_distinct_indices_each_epoch():
    s = ps.SubsetRandomSampler(L, 7, seed=3)
    assert isinstance(s, gluon.data.Sampler)
    assert len(s) == 7
    assert s.epoch == 0 and s.last_draw is None
    draws = epochs(s, 4)
    for d in draws:
        assert len(d) == 7 and len(set(d)) == 7
        assert all(type(i) is int and 0 <= i < L for i in d)
    assert s.epoch == 4
    assert list(s.last_draw) == draws[-1]
    # a new subset every epoch, not the same one reshuffled
    assert len({frozenset(d) for d in draws}) > 1


def test_full_and_empty_sizes():
    assert sorted(ps.SubsetRandomSampler(L, L, seed=0)) == list(range(L))
    assert list(ps.SubsetRandomSampler(L, 0, seed=0)) == []
    assert list(ps.SubsetRandomSampler(0, 0, seed=0)) == []
    full = ps.SubsetRandomSampler(L, L, seed=0)
    assert list(ps.SubsetRandomSampler(L, 0, exclude=full)) == []


def test_exclude_leaves_out_most_recent_draw_in_every_epoch():
    train = ps.SubsetRandomSampler(L, 12, seed=0)
    valid = ps.SubsetRandomSampler(L, 8, exclude=train, seed=1)
    assert valid.exclude is train
    for _ in range(6):       # the old recipe forgot exclude after the first pass
        t = list(train)
        v = list(valid)
        assert_complementary(t, v, L)


def test_exclude_smaller_than_complement():
    train = ps.SubsetRandomSampler(L, 10, seed=0)
    valid = ps.SubsetRandomSampler(L, 4, exclude=train, seed=1)
    for _ in range(3):
        t, v = list(train), list(valid)
        assert len(v) == 4 and set(v).isdisjoint(t)


def test_exclude_draws_first_when_it_has_not_drawn():
    train = ps.SubsetRandomSampler(L, 12, seed=0)
    valid = ps.SubsetRandomSampler(L, 8, exclude=train, seed=1)
    v = list(valid)
    assert train.epoch == 1, 'exclude did not draw first'
    assert_complementary(train.last_draw, v, L)
    # train's draw is the one a fresh train with the same seed makes in epoch 0
    assert list(train.last_draw) == list(ps.SubsetRandomSampler(L, 12, seed=0))


def test_exclude_chain():
    a = ps.SubsetRandomSampler(L, 5, seed=0)
    b = ps.SubsetRandomSampler(L, 5, exclude=a, seed=1)
    c = ps.SubsetRandomSampler(L, 15, exclude=b, seed=2)
    cs = list(c)             # b draws first, which makes a draw first
    assert a.epoch == 1 and b.epoch == 1
    assert set(b.last_draw).isdisjoint(a.last_draw)
    assert_complementary(b.last_draw, cs, L)


def test_set_epoch_replays_an_epoch():
    s = ps.SubsetRandomSampler(L, 6, seed=9)
    draws = epochs(s, 3)
    s.set_epoch(1)
    assert list(s) == draws[1]
    assert s.epoch == 2
    with pytest.raises(ValueError, match='-1'):
        s.set_epoch(-1)


# ---------------------------------------------------------------- the seed's old recipe


def test_old_recipe_overlaps_in_later_epochs(global_random_state):
    """The bug our samplers fix, shown on the old recipe itself (so the test below can fail)."""
    random.seed(0)
    train = OldRecipeSampler(L, 12)
    valid = OldRecipeSampler(L, 8, exclude=train)
    t0, v0 = list(train), list(valid)
    assert set(t0).isdisjoint(v0)              # the first epoch is fine...
    t1, v1 = list(train), list(valid)
    assert valid.exclude is None               # ...then exclude is dropped
    assert not set(t1).isdisjoint(v1)          # and the sets overlap


def test_old_recipe_is_order_dependent(global_random_state):
    random.seed(0)
    train = OldRecipeSampler(L, 12)
    valid = OldRecipeSampler(L, 8, exclude=train)
    v0 = list(valid)     # train.out does not exist yet: the AttributeError is swallowed
    t0 = list(train)
    assert not set(t0).isdisjoint(v0)


@pytest.mark.parametrize('valid_first', [False, True])
@pytest.mark.parametrize('reshuffle', [False, True])
def test_old_recipe_bug_does_not_happen(reshuffle, valid_first):
    train, valid = ps.complementary_split(L, 12, seed=0, reshuffle=reshuffle)
    for _ in range(6):
        if valid_first:
            v, t = list(valid), list(train)
        else:
            t, v = list(train), list(valid)
        assert_complementary(t, v, L)


# ---------------------------------------------------------------- complementary_split


ORDERS = {
    'train-first': 'tvtvtvtv',
    'valid-first': 'vtvtvtvt',
    'train-runs-ahead': 'tttvvtvv',
    'valid-runs-ahead': 'vvvvtttt',
    'mixed': 'tvvttvvt',
}


@pytest.mark.parametrize('reshuffle', [False, True])
@pytest.mark.parametrize('order', sorted(ORDERS))
def test_split_is_complementary_in_every_epoch_whatever_the_order(reshuffle, order):
    train, valid = ps.complementary_split(L, 13, seed=5, reshuffle=reshuffle)
    assert (len(train), len(valid)) == (13, 7)
    drawn = {'t': [], 'v': []}
    for who in ORDERS[order]:
        drawn[who].append(list(train if who == 't' else valid))
    assert len(drawn['t']) == len(drawn['v']) == 4
    for t, v in zip(drawn['t'], drawn['v']):
        assert len(t) == 13 and len(v) == 7
        assert_complementary(t, v, L)
    # the result is the same whatever the order the epochs were drawn in
    ref_train, ref_valid = ps.complementary_split(L, 13, seed=5, reshuffle=reshuffle)
    assert drawn['t'] == epochs(ref_train, 4)
    assert drawn['v'] == epochs(ref_valid, 4)


def test_split_without_reshuffle_keeps_the_partition_and_reshuffles_the_order():
    train, valid = ps.complementary_split(L, 12, seed=1)
    draws = epochs(valid, 4)
    assert len({frozenset(d) for d in draws}) == 1
    assert len({tuple(d) for d in draws}) > 1
    tdraws = epochs(train, 4)
    assert len({frozenset(d) for d in tdraws}) == 1
    assert len({tuple(d) for d in tdraws}) > 1


def test_split_with_reshuffle_changes_the_partition():
    train, valid = ps.complementary_split(L, 12, seed=1, reshuffle=True)
    draws = epochs(valid, 4)
    assert len({frozenset(d) for d in draws}) == 4


def test_split_set_epoch_realigns_the_pair():
    train, valid = ps.complementary_split(L, 12, seed=2, reshuffle=True)
    epochs(train, 3)
    v = list(valid)          # valid epoch 0, train already at epoch 3
    train.set_epoch(0)
    assert_complementary(list(train), v, L)


@pytest.mark.parametrize('train_size', [0, 1, L - 1, L])
def test_split_edge_sizes(train_size):
    train, valid = ps.complementary_split(L, train_size, seed=0, reshuffle=True)
    for _ in range(2):
        v, t = list(valid), list(train)
        assert_complementary(t, v, L)
        assert len(t) == train_size


def test_split_without_seed_is_random_but_consistent():
    np.random.seed(0)
    random.seed(0)
    a_train, a_valid = ps.complementary_split(50, 30, reshuffle=True)
    np.random.seed(0)
    random.seed(0)
    b_train, b_valid = ps.complementary_split(50, 30, reshuffle=True)
    a = [list(a_valid) for _ in range(2)]
    b = [list(b_valid) for _ in range(2)]
    assert a != b, 'seed=None must not depend on the global random states'
    for v in a:
        assert_complementary(list(a_train), v, 50)


# ---------------------------------------------------------------- reproducibility


def test_a_seed_reproduces_every_epoch():
    def run(seed):
        s = ps.SubsetRandomSampler(L, 9, seed=seed)
        x = ps.SubsetRandomSampler(L, 11, exclude=s, seed=seed + 1)
        t, v = ps.complementary_split(L, 12, seed=seed, reshuffle=True)
        folds = ps.kfold(L, 4, seed=seed)
        out = []
        for _ in range(3):
            out.append((list(s), list(x), list(t), list(v),
                        [(list(a), list(b)) for a, b in folds]))
        return out

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_global_random_states_neither_used_nor_changed():
    np.random.seed(1)
    random.seed(1)
    mx.random.seed(1)
    np_state = np.random.get_state()
    py_state = random.getstate()
    s = ps.SubsetRandomSampler(L, 9, seed=4)
    t, v = ps.complementary_split(L, 12, seed=4, reshuffle=True)
    first = [list(s), list(t), list(v)]
    assert random.getstate() == py_state
    after = np.random.get_state()
    assert after[0] == np_state[0] and np.array_equal(after[1], np_state[1]) \
        and after[2:] == np_state[2:]
    np.random.seed(2)
    random.seed(2)
    mx.random.seed(2)
    s = ps.SubsetRandomSampler(L, 9, seed=4)
    t, v = ps.complementary_split(L, 12, seed=4, reshuffle=True)
    assert [list(s), list(t), list(v)] == first


def test_numpy_integer_seed_and_sizes_accepted():
    a = ps.SubsetRandomSampler(np.int64(L), np.int32(5), seed=np.uint8(3))
    b = ps.SubsetRandomSampler(L, 5, seed=3)
    assert list(a) == list(b)


def test_large_seed():
    a = ps.complementary_split(L, 5, seed=2 ** 100)[1]
    b = ps.complementary_split(L, 5, seed=2 ** 100 + 2 ** 64)[1]
    assert list(a) != list(b)


# ---------------------------------------------------------------- pickling


@pytest.mark.parametrize('reshuffle', [False, True])
def test_pickled_pair_continues_the_same_sequence(reshuffle):
    train, valid = ps.complementary_split(L, 12, seed=3, reshuffle=reshuffle)
    list(train), list(valid), list(train)
    train2, valid2 = pickle.loads(pickle.dumps((train, valid)))
    assert (train2.epoch, valid2.epoch) == (2, 1)
    assert epochs(train2, 2) == epochs(train, 2)
    assert epochs(valid2, 3) == epochs(valid, 3)


def test_pickled_sides_apart_still_agree():
    train, valid = ps.complementary_split(L, 12, reshuffle=True)    # seed=None
    train2 = pickle.loads(pickle.dumps(train))
    valid2 = pickle.loads(pickle.dumps(valid))
    for _ in range(3):
        assert_complementary(list(train2), list(valid2), L)


def test_pickled_exclude_sampler():
    train = ps.SubsetRandomSampler(L, 12, seed=0)
    valid = ps.SubsetRandomSampler(L, 8, exclude=train, seed=1)
    list(train)
    valid2 = pickle.loads(pickle.dumps(valid))
    assert list(valid2) == list(valid)
    assert valid2.exclude is not train and valid2.exclude.epoch == 1


# ---------------------------------------------------------------- DataLoader


def loader_indices(loader):
    """The indices a DataLoader yielded in one epoch, read back from the data."""
    seen = []
    sizes = []
    for data, label in loader:
        sizes.append(data.shape[0])
        d = data.asnumpy()
        np.testing.assert_array_equal(label.asnumpy(), d * 10)
        seen.extend(int(i) for i in d)
    return seen, sizes


@pytest.mark.parametrize('num_workers', [0, 2])
@pytest.mark.parametrize('reshuffle', [False, True])
def test_dataloader(num_workers, reshuffle):
    n = 22
    dataset = gluon.data.ArrayDataset(np.arange(n, dtype='float32'),
                                      np.arange(n, dtype='float32') * 10)
    train, valid = ps.complementary_split(n, 15, seed=0, reshuffle=reshuffle)
    train_loader = gluon.data.DataLoader(dataset, sampler=train, batch_size=4,
                                         num_workers=num_workers)
    valid_loader = gluon.data.DataLoader(dataset, sampler=valid, batch_size=4,
                                         num_workers=num_workers)
    assert (len(train_loader), len(valid_loader)) == (4, 2)
    ref_train, ref_valid = ps.complementary_split(n, 15, seed=0, reshuffle=reshuffle)
    partitions = set()
    for epoch in range(3):
        if epoch % 2:        # the order of the two loaders must not matter
            v, vsizes = loader_indices(valid_loader)
            t, tsizes = loader_indices(train_loader)
        else:
            t, tsizes = loader_indices(train_loader)
            v, vsizes = loader_indices(valid_loader)
        assert tsizes == [4, 4, 4, 3] and vsizes == [4, 3]
        assert_complementary(t, v, n)
        assert t == list(ref_train) and v == list(ref_valid)    # the sampler's order, kept
        partitions.add(frozenset(v))
    assert len(partitions) == (3 if reshuffle else 1)


def test_dataloader_kfold():
    n = 10
    dataset = gluon.data.ArrayDataset(np.arange(n, dtype='float32'),
                                      np.arange(n, dtype='float32') * 10)
    seen_valid = []
    for train, valid in ps.kfold(n, 3, seed=0):
        t, _ = loader_indices(gluon.data.DataLoader(dataset, sampler=train, batch_size=3))
        v, _ = loader_indices(gluon.data.DataLoader(dataset, sampler=valid, batch_size=3))
        assert_complementary(t, v, n)
        seen_valid.extend(v)
    assert sorted(seen_valid) == list(range(n))


# ---------------------------------------------------------------- kfold


@pytest.mark.parametrize('length,k', [(10, 3), (12, 4), (7, 7), (2, 2), (11, 2)])
def test_kfold_partitions(length, k):
    folds = ps.kfold(length, k, seed=1)
    assert len(folds) == k
    count = np.zeros(length, dtype=int)
    for train, valid in folds:
        assert len(train) + len(valid) == length
        for _ in range(2):
            t, v = list(train), list(valid)
            assert_complementary(t, v, length)
        for i in v:
            count[i] += 1
    assert (count == 1).all(), 'each index must be in exactly one validation fold'
    sizes = sorted(len(v) for _, v in folds)
    assert sizes[-1] - sizes[0] <= 1
    assert [len(v) for _, v in folds] == [length // k + (i < length % k) for i in range(k)]


def test_kfold_folds_are_fixed_and_orders_reshuffled():
    train, valid = ps.kfold(20, 2, seed=0)[0]
    draws = epochs(valid, 3)
    assert len({frozenset(d) for d in draws}) == 1
    assert len({tuple(d) for d in draws}) > 1


def test_kfold_without_seed_is_consistent():
    folds = ps.kfold(15, 5)
    assert sorted(i for _, v in folds for i in v) == list(range(15))


# ---------------------------------------------------------------- errors


def raises(cls, *fragments):
    """pytest.raises for a paramsurgery error whose message contains every fragment."""
    class Ctx:
        def __enter__(self):
            self.ctx = pytest.raises(cls)
            self.info = self.ctx.__enter__()
            return self.info

        def __exit__(self, *exc):
            result = self.ctx.__exit__(*exc)
            assert isinstance(self.info.value, ps.ParamSurgeryError)
            for fragment in fragments:
                assert fragment in str(self.info.value), str(self.info.value)
            return result
    return Ctx()


@pytest.mark.parametrize('call,fragments', [
    (lambda: ps.SubsetRandomSampler(-1, 0), ['length', '-1']),
    (lambda: ps.SubsetRandomSampler(10, -2), ['size', '-2']),
    (lambda: ps.SubsetRandomSampler(10, 11), ['size=11', '10']),
    (lambda: ps.SubsetRandomSampler(10, 2.5), ['size', '2.5']),
    (lambda: ps.SubsetRandomSampler(10, 3.0), ['size', '3.0']),
    (lambda: ps.SubsetRandomSampler(10.0, 3), ['length', '10.0']),
    (lambda: ps.SubsetRandomSampler(10, 3, seed=-1), ['seed', '-1']),
    (lambda: ps.SubsetRandomSampler(10, 3, seed=1.5), ['seed', '1.5']),
    (lambda: ps.SubsetRandomSampler(10, 5, exclude=ps.SubsetRandomSampler(10, 6)),
     ['size=5', 'the 4 indices of range(10)', '6 drawn by exclude']),
    (lambda: ps.SubsetRandomSampler(10, 2, exclude=ps.SubsetRandomSampler(12, 6)),
     ['range(12)', 'range(10)']),
    (lambda: ps.complementary_split(10, 11), ['train_size=11', '10']),
    (lambda: ps.complementary_split(10, -1), ['train_size', '-1']),
    (lambda: ps.complementary_split(10, 0.8), ['train_size', '0.8', 'round']),
    (lambda: ps.complementary_split(-3, 0), ['length', '-3']),
    (lambda: ps.kfold(10, 1), ['k', '2', '1']),
    (lambda: ps.kfold(10, 0), ['k', '0']),
    (lambda: ps.kfold(10, 11), ['k=11', '10']),
    (lambda: ps.kfold(1, 2), ['k=2', '1']),
    (lambda: ps.kfold(10, 2.5), ['k', '2.5']),
])
def test_bad_values_raise_value_error(call, fragments):
    with raises(ps.SamplerValueError, *fragments):
        call()
    with pytest.raises(ValueError):
        call()


@pytest.mark.parametrize('call,fragments', [
    (lambda: ps.SubsetRandomSampler(10, True), ['size', 'bool', 'True']),
    (lambda: ps.SubsetRandomSampler(True, 1), ['length', 'bool']),
    (lambda: ps.SubsetRandomSampler(10, '3'), ['size', 'str', "'3'"]),
    (lambda: ps.SubsetRandomSampler(10, None), ['size', 'NoneType']),
    (lambda: ps.SubsetRandomSampler(10, 3, seed=True), ['seed', 'bool']),
    (lambda: ps.SubsetRandomSampler(10, 3, seed='0'), ['seed', 'str']),
    (lambda: ps.SubsetRandomSampler(10, 3, exclude=range(3)), ['exclude', 'range']),
    (lambda: ps.SubsetRandomSampler(10, 3, exclude=gluon.data.RandomSampler(10)),
     ['exclude', 'RandomSampler']),
    (lambda: ps.complementary_split(10, np.bool_(True)), ['train_size', 'bool']),
    (lambda: ps.complementary_split(10, 5, reshuffle='yes'), ['reshuffle', 'str']),
    (lambda: ps.complementary_split(10, 5, reshuffle=1), ['reshuffle', 'int']),
    (lambda: ps.kfold(10, False), ['k', 'bool']),
    (lambda: ps.kfold('10', 2), ['length', 'str']),
])
def test_bad_types_raise_type_error(call, fragments):
    with raises(ps.SamplerTypeError, *fragments):
        call()
    # the contract promises ValueError for bad sizes; Python's convention is TypeError
    with pytest.raises(TypeError):
        call()
    with pytest.raises(ValueError):
        call()


def test_errors_are_param_surgery_errors():
    assert issubclass(ps.SamplerValueError, ps.ParamSurgeryError)
    assert issubclass(ps.SamplerValueError, ValueError)
    assert issubclass(ps.SamplerTypeError, ps.ParamSurgeryError)
    assert issubclass(ps.SamplerTypeError, TypeError)


def test_public_names():
    for name in ['SubsetRandomSampler', 'complementary_split', 'kfold',
                 'SamplerValueError', 'SamplerTypeError']:
        assert name in ps.__all__ and hasattr(ps, name)


def test_repr():
    train, valid = ps.complementary_split(10, 7, seed=0, reshuffle=True)
    list(valid)
    assert repr(valid) == 'SubsetRandomSampler(length=10, size=3, valid side, reshuffled, epoch=1)'
    s = ps.SubsetRandomSampler(10, 3, exclude=train)
    assert repr(s) == 'SubsetRandomSampler(length=10, size=3, exclude=<7 of 10>, epoch=0)'
