"""How the channels of a group are ranked: the members' arrays read once per group, and the
scores of each importance ('l1', 'l2', 'bn_gamma', 'taylor' or a callable)."""
import numpy as np

from .. import _mx
from ..access import replicas
from ..errors import SurgeryTypeError, SurgeryValueError

IMPORTANCES = ('l1', 'l2', 'bn_gamma', 'taylor')


def channel_view(arr, member, size):
    """``(size, -1)`` view of the slices of ``arr`` that hold the channels of a member."""
    _, axis, off, st = member
    moved = np.moveaxis(arr, axis, 0)[off:off + size * st]
    return moved.reshape(size, -1)


def channel_sums(arr, member, size, norm):
    """Per channel of a member, the float64 sum of ``|x|`` (``norm='l1'``) or of ``x**2``
    (``'l2'``) over its entries of ``arr``.

    Reduced over every axis but the member's, in place: a :func:`channel_view` of a member
    whose axis is not the first is a copy, and a float64 copy of it another (for resnet50's
    weights these copies took five times as long as the sums)."""
    _, axis, off, st = member
    if norm == 'l2':
        letters = 'abcdefgh'[:arr.ndim]
        # float64 products and sums (the float32 operands are cast in buffered chunks)
        per_index = np.einsum('%s,%s->%s' % (letters, letters, letters[axis]), arr, arr,
                              dtype=np.float64)
    else:
        others = tuple(i for i in range(arr.ndim) if i != axis)
        per_index = np.add.reduce(np.abs(arr), axis=others, dtype=np.float64)
    return per_index[off:off + size * st].reshape(size, st).sum(axis=1)


def channel_rows(member, channels):
    """Indices along the member's axis that hold ``channels``."""
    _, _, off, st = member
    channels = np.asarray(channels, dtype=np.int64)
    return (off + channels[:, None] * st + np.arange(st)[None, :]).reshape(-1)


class GroupState:
    """The current weights, masks and scores of one group, read once."""

    def __init__(self, group, weights, masks):
        self.group = group
        size = group.size
        alive = np.zeros(size, dtype=bool)
        has_mask = False
        for member in group.maskable:
            mask = masks.get(member.param)
            if mask is None:
                alive[:] = True
            else:
                has_mask = True
                alive |= np.any(channel_view(mask, member, size) != 0, axis=1)
        if not group.maskable or not has_mask:
            alive[:] = True
        self.alive = alive
        self.weights = weights
        self.masks = masks

    def effective(self, name):
        weight = self.weights[name]
        mask = self.masks.get(name)
        return weight if mask is None else weight * mask


def scores_of(state, importance, net):
    group = state.group
    size = group.size
    if callable(importance):
        scores = importance(group)
        if hasattr(scores, 'asnumpy'):
            scores = _mx.to_host(scores)
        try:
            scores = np.asarray(scores, dtype=np.float64)
        except (TypeError, ValueError):
            raise SurgeryTypeError(
                "importance(group) for channel group '%s' returned %s; it must return %d "
                "numbers (one per channel)." % (group.name, type(scores).__name__, size)) from None
        if scores.shape != (size,):
            raise SurgeryValueError(
                "importance(group) for channel group '%s' returned shape %s; expected (%d,) "
                "(one score per channel)." % (group.name, scores.shape, size))
    elif importance in ('l1', 'l2'):
        scores = np.zeros(size)
        for member in group.maskable:
            sums = channel_sums(state.effective(member.param), member, size, importance)
            scores += sums if importance == 'l1' else np.sqrt(sums)
    elif importance == 'bn_gamma':
        gammas = [m for m, r in zip(group.members, group.roles) if r == 'bn_gamma']
        if not gammas:
            raise SurgeryValueError(
                "importance='bn_gamma': channel group '%s' has no BatchNorm, so it has no "
                "gamma to rank its channels by. Use importance='l2' (or select groups with a "
                "BatchNorm with key=)." % group.name)
        scores = np.zeros(size)
        for member in gammas:
            view = channel_view(state.effective(member.param), member, size)
            scores += np.abs(view.astype(np.float64)).sum(axis=1)
    else:  # taylor
        scores = np.zeros(size)
        params = net.collect_params()
        for member in group.maskable:
            for _, data, grad in replicas(params[member.param]):
                if grad is None:
                    continue
                prod = np.abs(_mx.to_host(data).astype(np.float64) * _mx.to_host(grad))
                scores += channel_view(prod, member, size).sum(axis=1)
    if not np.all(np.isfinite(scores)):
        raise SurgeryValueError(
            "The %s importance of channel group '%s' has NaN or infinite scores (channels "
            "%s): its weights%s are not finite. Fix the weights first."
            % (importance if isinstance(importance, str) else 'custom', group.name,
               np.flatnonzero(~np.isfinite(scores))[:5].tolist(),
               ' or gradients' if importance == 'taylor' else ''))
    return scores


def lowest(scores, candidates, count):
    """The ``count`` candidates of lowest score, ties broken by lower index first."""
    candidates = np.asarray(candidates, dtype=np.int64)
    order = np.lexsort((candidates, scores[candidates]))
    return np.sort(candidates[order[:count]])
