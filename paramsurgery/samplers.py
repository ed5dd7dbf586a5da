"""Random samplers whose index sets complement each other, for ``gluon.data.DataLoader``.

Every draw is a pure function of ``(seed, stream, epoch)``: each sampler builds its own
``numpy.random.RandomState`` for the epoch it is about to yield, so nothing here reads or
changes the global ``random`` / ``numpy.random`` / ``mx.random`` state, a fixed seed
reproduces the whole sequence of epochs, and two samplers that share a partition agree on
it without talking to each other (also after being pickled).
"""
import numbers
import secrets
from typing import List, Optional, Tuple

import numpy as np
from mxnet import gluon

from ._checks import check_flag
from .errors import SamplerTypeError, SamplerValueError

__all__ = ['SubsetRandomSampler', 'complementary_split', 'kfold']

_WORD = 0xFFFFFFFF

# Streams keep the draws of different samplers built from the same seed independent.
_STREAM_STANDALONE = (0,)
_STREAM_PARTITION = (1,)
_ORDER = 2          # (_ORDER, fold, role): order inside one side of a partition
_TRAIN, _VALID = 0, 1


def _words(value: int) -> List[int]:
    """``value`` (>= 0) as little-endian 32-bit words, at least one."""
    words = [value & _WORD]
    value >>= 32
    while value:
        words.append(value & _WORD)
        value >>= 32
    return words


def _rng(entropy: int, stream: Tuple[int, ...], epoch: int) -> np.random.RandomState:
    """The random state private to one (sampler stream, epoch).

    RandomState rather than Generator: its streams are frozen by NumPy's compatibility
    policy (NEP 19), so a seed gives the same epochs on every NumPy version, and it exists
    on NumPy 1.16 (Generator needs 1.17). Lengths are part of the key so that different
    (entropy, stream, epoch) triples never give the same key.
    """
    ent, ep = _words(entropy), _words(epoch)
    key = [len(ent)] + ent + [len(stream)] + list(stream) + [len(ep)] + ep
    return np.random.RandomState(np.array(key, dtype=np.uint32))


def _check_int(name: str, value, *, low: int = 0, high: Optional[int] = None,
               high_what: str = '', hint: str = '') -> int:
    """``value`` as an ``int`` in ``[low, high]``, or a SamplerTypeError/SamplerValueError."""
    if isinstance(value, (bool, np.bool_)):
        # bool is an int subclass: True would silently mean 1.
        raise SamplerTypeError('%s must be an int, got the bool %r. Pass a whole number.'
                               % (name, value))
    if not isinstance(value, numbers.Integral):
        if isinstance(value, numbers.Real):
            raise SamplerValueError('%s must be a whole number, got %r.%s'
                                    % (name, value, hint or ' Pass an int.'))
        raise SamplerTypeError('%s must be an int, got %s %r.'
                               % (name, type(value).__name__, value))
    value = int(value)
    if value < low:
        raise SamplerValueError('%s must be >= %d, got %d.%s'
                                % (name, low, value,
                                   hint if high is None else ' Pass %s in [%d, %d].'
                                   % (name, low, high)))
    if high is not None and value > high:
        raise SamplerValueError('%s=%d is larger than %s. Pass %s in [%d, %d].'
                                % (name, value, high_what or 'the maximum (%d)' % high,
                                   name, low, high))
    return value


def _entropy(seed) -> int:
    """The seed as a non-negative int; fresh OS entropy for ``None``.

    The OS entropy (not the global RNGs) makes ``seed=None`` random, and it is drawn once
    and shared, so the samplers of one split still agree on their partition.
    """
    if seed is None:
        return secrets.randbits(64)
    return _check_int('seed', seed, hint=' Pass an int >= 0 or None.')


class _Partition:
    """A sequence of permutations of ``range(length)``, one per epoch (the same one for
    every epoch unless ``reshuffle``), shared by the samplers of a split or of a k-fold.

    A sampler that owns the slice ``[start, stop)`` of the epoch's permutation takes it as
    its validation side and everything else as its training side, so the two sides of one
    epoch are disjoint and cover ``range(length)`` by construction.
    """

    def __init__(self, length: int, entropy: int, reshuffle: bool):
        self.length = length
        self.entropy = entropy
        self.reshuffle = reshuffle
        self._cache = None

    def permutation(self, epoch: int) -> np.ndarray:
        key = epoch if self.reshuffle else 0
        # The partner sampler usually asks for the same epoch next: compute it once.
        if self._cache is None or self._cache[0] != key:
            perm = _rng(self.entropy, _STREAM_PARTITION, key).permutation(self.length)
            self._cache = (key, perm)
        return self._cache[1]

    def side(self, epoch: int, start: int, stop: int, role: int) -> np.ndarray:
        perm = self.permutation(epoch)
        if role == _VALID:
            return perm[start:stop]
        return np.concatenate((perm[:start], perm[stop:]))

    def __getstate__(self):
        state = dict(self.__dict__)
        state['_cache'] = None
        return state


class SubsetRandomSampler(gluon.data.Sampler):
    """Samples ``size`` distinct elements of ``range(length)`` at random, each epoch anew,
    leaving out the most recent draw of another sampler.

    Use it as ``gluon.data.DataLoader(dataset, sampler=..., batch_size=...)``. Each
    iteration (epoch) draws a new subset in a new random order. With ``exclude``, none of
    the indices drawn is in the most recent draw of ``exclude``; if ``exclude`` has not
    drawn yet, it draws first. That is relative to whatever ``exclude`` drew last, so it
    depends on the order the two are iterated in: for a training/validation split that is
    complementary in every epoch whatever the order, use :func:`complementary_split`.

    Randomness comes from a ``numpy.random.RandomState`` private to the sampler and
    derived from ``(seed, epoch)``; the global ``random``, ``numpy.random`` and
    ``mx.random`` states are neither read nor changed.

    Parameters
    ----------
    length : int
        Number of elements of the dataset: indices are drawn from ``range(length)``.
    size : int
        Number of distinct indices yielded per epoch, at most ``length`` (at most
        ``length - len(exclude)`` with ``exclude``).
    exclude : SubsetRandomSampler, default None
        A sampler over the same ``length`` whose most recent draw is left out.
    seed : int, default None
        Seed of the sequence of epochs (an int >= 0). The same seed gives the same epochs;
        ``None`` takes fresh entropy from the operating system.

    Attributes
    ----------
    epoch : int
        Number of epochs drawn so far, which is the epoch the next iteration draws.
    last_draw : numpy.ndarray or None
        A copy of the indices of the most recent epoch, in the order they were yielded.

    Raises
    ------
    SamplerTypeError
        (a ``TypeError`` and ``ValueError``) ``length``, ``size`` or ``seed`` is not an int
        (a ``bool``, ``str``, ``None``...), or ``exclude`` is not a SubsetRandomSampler.
    SamplerValueError
        (a ``ValueError``) a negative or non-whole number, ``size`` larger than the indices
        available, or ``exclude`` over another ``length``.

    Examples
    --------
    >>> import paramsurgery as ps
    >>> train = ps.SubsetRandomSampler(10, 7, seed=1)
    >>> valid = ps.SubsetRandomSampler(10, 3, exclude=train, seed=2)
    >>> len(train), len(valid)
    (7, 3)
    >>> t = list(train)       # epoch 0 of train
    >>> v = list(valid)       # leaves out train's most recent draw
    >>> sorted(t + v) == list(range(10))
    True
    >>> train.epoch, valid.epoch
    (1, 1)
    >>> list(ps.SubsetRandomSampler(10, 7, seed=1)) == t   # the seed reproduces the epochs
    True
    """

    def __init__(self, length: int, size: int, *, exclude: Optional['SubsetRandomSampler'] = None,
                 seed: Optional[int] = None):
        super().__init__()
        length = _check_int('length', length)
        if exclude is None:
            size = _check_int('size', size, high=length, high_what='length (%d)' % length)
        else:
            if not isinstance(exclude, SubsetRandomSampler):
                raise SamplerTypeError(
                    'exclude must be a paramsurgery.SubsetRandomSampler (its most recent draw '
                    'is left out), got %s. For two samplers that never overlap, use '
                    'complementary_split(length, train_size).'
                    % type(exclude).__name__)
            if exclude._length != length:
                raise SamplerValueError(
                    'exclude samples from range(%d) but this sampler from range(%d): both '
                    'must index the same dataset.' % (exclude._length, length))
            size = _check_int('size', size, high=length - len(exclude),
                              high_what='the %d indices of range(%d) left once the %d drawn by '
                                        'exclude are removed' % (length - len(exclude), length,
                                                                 len(exclude)))
        self._length = length
        self._size = size
        self._exclude = exclude
        self._entropy = _entropy(seed)
        self._stream = _STREAM_STANDALONE
        self._partition = None
        self._bounds = None
        self._role = None
        self._epoch = 0
        self._last = None

    @classmethod
    def _side_of(cls, partition: _Partition, start: int, stop: int, role: int,
                 fold: int) -> 'SubsetRandomSampler':
        """One side (train or valid) of ``partition``; its members come from the partition,
        and only their order from the sampler's own stream."""
        self = cls.__new__(cls)
        self._length = partition.length
        self._size = (stop - start) if role == _VALID else partition.length - (stop - start)
        self._exclude = None
        self._entropy = partition.entropy
        self._stream = (_ORDER, fold, role)
        self._partition = partition
        self._bounds = (start, stop)
        self._role = role
        self._epoch = 0
        self._last = None
        return self

    @property
    def exclude(self) -> Optional['SubsetRandomSampler']:
        """The sampler whose most recent draw is left out (``None`` for the samplers made by
        :func:`complementary_split` and :func:`kfold`, which share a partition instead)."""
        return self._exclude

    @property
    def epoch(self) -> int:
        """Number of epochs drawn so far: the epoch the next iteration draws."""
        return self._epoch

    @property
    def last_draw(self) -> Optional[np.ndarray]:
        """A copy of the indices of the most recent epoch, or ``None`` before the first."""
        return None if self._last is None else self._last.copy()

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration draw epoch ``epoch`` (an int >= 0).

        Use it to realign the two samplers of a :func:`complementary_split` with
        ``reshuffle=True`` when they were not iterated the same number of times, or to
        resume a run: epoch ``e`` gives the same indices whenever it is drawn.

        Examples
        --------
        >>> import paramsurgery as ps
        >>> s = ps.SubsetRandomSampler(6, 3, seed=0)
        >>> first = list(s)
        >>> s.set_epoch(0)
        >>> list(s) == first
        True
        """
        self._epoch = _check_int('epoch', epoch)

    def _draw(self) -> np.ndarray:
        epoch = self._epoch
        rng = _rng(self._entropy, self._stream, epoch)
        if self._partition is not None:
            members = self._partition.side(epoch, *self._bounds, self._role)
            draw = rng.permutation(members)
        elif self._exclude is not None:
            banned = self._exclude._last
            if banned is None:
                banned = self._exclude._draw()
            pool = np.setdiff1d(np.arange(self._length), banned, assume_unique=True)
            draw = rng.choice(pool, self._size, replace=False)
        else:
            draw = rng.choice(self._length, self._size, replace=False)
        self._last = draw
        self._epoch = epoch + 1
        return draw

    def __iter__(self):
        # Drawn eagerly, so the draw exists (for a partner's exclude) as soon as the
        # iteration starts, not only once it has been consumed.
        return iter(self._draw().tolist())

    def __len__(self) -> int:
        return self._size

    def __repr__(self) -> str:
        if self._partition is not None:
            how = ', %s side%s' % ('valid' if self._role == _VALID else 'train',
                                   ', reshuffled' if self._partition.reshuffle else '')
        elif self._exclude is not None:
            how = ', exclude=<%d of %d>' % (len(self._exclude), self._length)
        else:
            how = ''
        return '%s(length=%d, size=%d%s, epoch=%d)' % (
            type(self).__name__, self._length, self._size, how, self._epoch)


def complementary_split(length: int, train_size: int, *, seed: Optional[int] = None,
                        reshuffle: bool = False) -> Tuple[SubsetRandomSampler, SubsetRandomSampler]:
    """Two samplers, ``train`` and ``valid``, that split ``range(length)`` between them.

    In every epoch the index sets of the two are disjoint and together cover
    ``range(length)``, whichever of the two is iterated first and however many times.
    Both yield their indices in a new random order each epoch.

    Each sampler counts its own epochs, and epoch ``e`` of ``train`` and epoch ``e`` of
    ``valid`` take the two sides of the same partition, a pure function of
    ``(seed, e)``. With ``reshuffle=False`` the partition is the same in every epoch (a
    fixed validation set, e.g. for early stopping); with ``reshuffle=True`` each epoch has
    its own partition, so train ``e`` and valid ``e`` complement each other, and a sampler
    iterated more often than its partner is ahead of it (realign with ``set_epoch``).

    Parameters
    ----------
    length : int
        Number of elements of the dataset.
    train_size : int
        Number of indices of the ``train`` side, in ``[0, length]``; ``valid`` gets the
        other ``length - train_size``.
    seed : int, default None
        Seed of the partitions and orders (an int >= 0). ``None`` takes fresh entropy from
        the operating system, drawn once and shared by the pair.
    reshuffle : bool, default False
        Whether each epoch uses a new partition.

    Returns
    -------
    tuple of SubsetRandomSampler
        ``(train, valid)``, with ``len(train) == train_size`` and
        ``len(valid) == length - train_size``.

    Raises
    ------
    SamplerTypeError
        A size or seed that is not an int (``bool``, ``str``, ``None``), or ``reshuffle``
        not a bool.
    SamplerValueError
        A negative or non-whole number, or ``train_size`` larger than ``length``.

    Examples
    --------
    >>> import paramsurgery as ps
    >>> train, valid = ps.complementary_split(10, 8, seed=0, reshuffle=True)
    >>> v0 = list(valid)            # valid first: order does not matter
    >>> t0 = list(train)
    >>> sorted(t0 + v0) == list(range(10))
    True
    >>> t1, v1 = list(train), list(valid)
    >>> sorted(t1 + v1) == list(range(10)), sorted(v1) != sorted(v0)
    (True, True)

    Through a DataLoader:

    >>> from mxnet import gluon, nd
    >>> data = gluon.data.ArrayDataset(nd.arange(10))
    >>> loader = gluon.data.DataLoader(data, sampler=valid, batch_size=4)
    >>> [batch.shape[0] for batch in loader]
    [2]
    """
    length = _check_int('length', length)
    train_size = _check_int(
        'train_size', train_size, high=length, high_what='length (%d)' % length,
        hint=' For a fraction f of the data, pass int(round(f * length)).')
    reshuffle = check_flag('reshuffle', reshuffle, SamplerTypeError)
    partition = _Partition(length, _entropy(seed), reshuffle)
    return (SubsetRandomSampler._side_of(partition, train_size, length, _TRAIN, 0),
            SubsetRandomSampler._side_of(partition, train_size, length, _VALID, 0))


def kfold(length: int, k: int, *, seed: Optional[int] = None
          ) -> List[Tuple[SubsetRandomSampler, SubsetRandomSampler]]:
    """``k`` complementary ``(train, valid)`` sampler pairs for k-fold cross-validation.

    ``range(length)`` is shuffled once and cut into ``k`` folds whose sizes differ by at
    most one (the first ``length % k`` folds have one more index). Pair ``i`` validates on
    fold ``i`` and trains on the other ``k - 1``; every index is in exactly one validation
    fold. The folds stay fixed over epochs; each sampler yields its indices in a new random
    order every epoch.

    Parameters
    ----------
    length : int
        Number of elements of the dataset.
    k : int
        Number of folds, in ``[2, length]``.
    seed : int, default None
        Seed of the folds and orders (an int >= 0); ``None`` takes fresh entropy from the
        operating system, shared by all the pairs.

    Returns
    -------
    list of (SubsetRandomSampler, SubsetRandomSampler)
        The ``k`` pairs ``(train, valid)``.

    Raises
    ------
    SamplerTypeError
        ``length``, ``k`` or ``seed`` is not an int (``bool``, ``str``, ``None``).
    SamplerValueError
        A negative or non-whole number, ``k < 2`` or ``k > length``.

    Examples
    --------
    >>> import paramsurgery as ps
    >>> folds = ps.kfold(10, 3, seed=0)
    >>> [(len(train), len(valid)) for train, valid in folds]
    [(6, 4), (7, 3), (7, 3)]
    >>> sorted(i for _, valid in folds for i in valid) == list(range(10))
    True
    """
    length = _check_int('length', length)
    k = _check_int('k', k, low=2, high=length,
                   high_what='length (%d): each fold needs at least one index' % length)
    partition = _Partition(length, _entropy(seed), reshuffle=False)
    pairs = []
    start = 0
    for fold in range(k):
        stop = start + length // k + (1 if fold < length % k else 0)
        pairs.append((SubsetRandomSampler._side_of(partition, start, stop, _TRAIN, fold),
                      SubsetRandomSampler._side_of(partition, start, stop, _VALID, fold)))
        start = stop
    return pairs
