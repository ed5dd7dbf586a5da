"""MKLDNN's blocked weight layout, and putting a weight back into the default layout.

A Convolution run in predict mode (a plain ``net(x)`` outside ``autograd.record()``, such as
the forward that finishes deferred initialisation) reorders its weight NDArray in place into
a blocked MKLDNN layout. A training-mode Convolution reorders it back, but a masked conv only
ever sees the computed ``weight * mask``, so its stored weight would stay blocked and every
elementwise operation and optimizer update on it would pay a reorder (``docs/masks.md``).
"""
from mxnet import autograd

from . import _internals
from ._internals import is_blocked_layout

__all__ = []

#: Whether :func:`restore_default_layout` does anything (bench/mask_overhead.py switches it
#: off to measure what the blocked layout costs).
RESTORE_DEFAULT_LAYOUT = True


def restore_default_layout(param):
    """Put every replica of ``param`` that is in an MKLDNN blocked layout back into the
    default layout, in place: same NDArray objects, same values (bit for bit), still leaves
    bound to their gradient buffers, so Trainers and cached graphs keep working.

    Filling with a scalar writes through the default-layout path and drops the blocked
    layout; copying a default-layout copy back then restores the values. Returns the number
    of replicas changed.
    """
    if not RESTORE_DEFAULT_LAYOUT:
        return 0
    changed = 0
    with autograd.pause():
        for arr in _internals.raw_data(param):
            if is_blocked_layout(arr):
                copy = arr.copy()          # copies come out in the default layout
                arr[:] = 0
                copy.copyto(arr)
                changed += 1
    return changed
