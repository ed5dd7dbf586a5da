"""The exact selection behind magnitude pruning: the ``k`` lowest scores over a group of
arrays, ties pruned lowest position first, in one ``partition`` pass and blocks that stay in
cache (pure numpy, no MXNet)."""
from typing import List

import numpy as np

from .errors import SurgeryValueError

__all__ = []

# Elements per block when recomputing scores to build the masks: small enough for the block
# to stay in cache, large enough that the Python loop costs nothing next to the arithmetic.
_BLOCK = 1 << 16


class Source:
    """One weight as the selection sees it: its scores, computed block by block."""

    def __init__(self, name, weight, unmasked, scores, mask):
        self.name = name
        self.shape = weight.shape
        self.size = weight.size
        # Flat views (copies only when the input was not contiguous).
        self.weight = weight.reshape(-1)
        self.scores = None if scores is None else np.broadcast_to(scores, weight.shape) \
            .reshape(-1)
        self.mask = None if mask is None else np.broadcast_to(mask, weight.shape).reshape(-1)
        self.unmasked = None if unmasked is None else unmasked.reshape(-1)
        self.candidates = self.size if unmasked is None else int(np.count_nonzero(unmasked))

    def score(self, lo, hi, out):
        """|score| of flat entries [lo, hi) written into ``out`` (the ranking dtype)."""
        # dtype= makes the ranking dtype the loop's dtype, so integers cannot overflow in abs.
        if self.scores is not None:
            np.abs(self.scores[lo:hi], out=out, dtype=out.dtype)
        elif self.mask is not None:
            # The effective weight, rounded as the forward computes it, then its magnitude.
            np.abs(self.weight[lo:hi] * self.mask[lo:hi], out=out, dtype=out.dtype)
        else:
            np.abs(self.weight[lo:hi], out=out, dtype=out.dtype)
        return out

    def nan_message(self, dtype):
        """Describe the NaN candidates, or return None when there are none."""
        nan = np.isnan(self.score(0, self.size, np.empty(self.size, dtype)))
        if self.unmasked is not None:
            nan &= self.unmasked
        bad = int(np.count_nonzero(nan))
        if not bad:
            return None
        what = 'importance scores' if self.scores is not None else 'weights'
        return "'%s': the %s have %d NaN entr%s among the unmasked ones" % (
            self.name, what, bad, 'y' if bad == 1 else 'ies')


def _ranking_dtype(sources):
    kinds = []
    for src in sources:
        arr = src.scores if src.scores is not None else src.weight
        dtype = arr.dtype
        if src.scores is None and src.mask is not None:
            dtype = np.result_type(dtype, src.mask.dtype)
        # Integers and bools are ranked as float64, which holds every int32 exactly.
        kinds.append(dtype if dtype.kind == 'f' else np.dtype(np.float64))
    return np.result_type(*kinds)


def keep_lowest_pruned(sources, k) -> List[np.ndarray]:
    """Flat boolean keep-arrays for ``sources`` pruning exactly the ``k`` candidates with the
    smallest scores over the whole group, ties pruned lowest position first.

    One selection pass: the candidates' scores are gathered into one buffer and
    ``ndarray.partition`` finds the k-th smallest score ``t`` in place (no sort). Every entry
    scoring above ``t`` is kept; of the entries equal to ``t``, the ones not needed to reach
    ``k`` are kept too, taken from the highest positions, so that exactly ``k`` are pruned.
    """
    dtype = _ranking_dtype(sources)
    total = sum(src.candidates for src in sources)
    buf = np.empty(total, dtype=dtype)
    offset = 0
    for src in sources:
        part = buf[offset:offset + src.candidates]
        if src.unmasked is None:
            src.score(0, src.size, part)
        else:
            part[...] = src.score(0, src.size, np.empty(src.size, dtype))[src.unmasked]
        offset += src.candidates

    if k > 0:
        buf.partition(k - 1)
        threshold = buf[k - 1]
        # NaN ranks above every number in numpy's partition, so any NaN sits at or after k-1.
        tail = buf[k - 1:]
    else:
        threshold = None
        tail = buf
    if dtype.kind == 'f' and np.isnan(tail).any():
        problems = [msg for msg in (src.nan_message(dtype) for src in sources) if msg]
        raise SurgeryValueError(
            '%s; the magnitude ranking is undefined. Replace the NaNs first (e.g. with '
            'ps.set_params), or choose the entries yourself with a custom mask.'
            % '; '.join(problems))
    del buf, tail

    keeps = []
    if threshold is None:
        for src in sources:
            keeps.append(np.ones(src.size, bool) if src.unmasked is None
                         else src.unmasked.copy())
        return keeps

    threshold = np.asarray(threshold, dtype=dtype)
    block = np.empty(min(_BLOCK, max(src.size for src in sources)), dtype)
    kept = 0
    for src in sources:
        keep = np.empty(src.size, bool)
        for lo in range(0, src.size, _BLOCK):
            hi = min(lo + _BLOCK, src.size)
            np.greater(src.score(lo, hi, block[:hi - lo]), threshold, out=keep[lo:hi])
        if src.unmasked is not None:
            keep &= src.unmasked
        kept += int(np.count_nonzero(keep))
        keeps.append(keep)

    # At least k candidates score <= t; the surplus are ties at t that stay, the last ones.
    surplus = total - kept - k
    for src, keep in zip(reversed(sources), reversed(keeps)):
        if surplus == 0:
            break
        tied = src.score(0, src.size, np.empty(src.size, dtype)) == threshold
        if src.unmasked is not None:
            tied &= src.unmasked
        positions = np.flatnonzero(tied)
        take = min(surplus, positions.size)
        if take:
            keep[positions[positions.size - take:]] = True
            surplus -= take
    return keeps

