"""Dynamic sparse training: RigL and SET keep a constant sparsity while moving the active
entries, on update-mode masks (see docs/training-surgery.md)."""
import math
import zlib
from collections import OrderedDict
from typing import Any, Dict, List, Mapping, Optional

import numpy as np
from mxnet import gluon

from . import _mx
from ._checks import is_int, is_real
from .errors import (
    ParameterStateError,
    SelectionError,
    SurgeryTypeError,
    SurgeryValueError,
    and_more,
)
from .masks import apply_mask
from .select import MASK_SUFFIX, all_params, mask_names, select

__all__ = ['DynamicSparsity']

_FORMAT = 'paramsurgery-dynamic-sparsity'
_VERSION = 1
_METHODS = ('rigl', 'set')
_DECAYS = ('cosine', 'constant')
_DISTRIBUTIONS = ('uniform', 'erk')
# the settings a saved state must share with the object that loads it
_SETTINGS = ('method', 'sparsity', 'update_every', 'drop_fraction', 'end', 'decay',
             'distribution')


def erk_densities(shapes: Mapping[str, tuple], sparsity: float) -> Dict[str, float]:
    """Erdős–Rényi-kernel densities (as in RigL): density proportional to
    ``sum(shape) / prod(shape)``, scaled so that the total number of active entries is
    ``(1 - sparsity)`` of all; a layer that would exceed density 1 is made dense and the
    others are scaled again."""
    dense = set()
    while True:
        divisor, rhs, raw = 0.0, 0.0, {}
        for name, shape in shapes.items():
            size = float(np.prod(shape))
            if name in dense:
                rhs -= size * sparsity
            else:
                rhs += size * (1.0 - sparsity)
                raw[name] = float(np.sum(shape)) / size
                divisor += raw[name] * size
        if not raw:
            return {name: 1.0 for name in shapes}
        eps = rhs / divisor
        top = max(raw.values())
        if top * eps <= 1.0:
            return {name: 1.0 if name in dense else eps * raw[name] for name in shapes}
        dense.update(name for name, value in raw.items() if value == top)


def _check_step(what, step):
    if not is_int(step) or step < 0:
        raise SurgeryValueError('DynamicSparsity.%s(step) takes the number of the training '
                                'step, an int >= 0, got %r.' % (what, step))


def _count(fraction, total):
    # floor(x + 0.5): numpy's round() rounds half to even, which the contract does not
    return int(math.floor(fraction * total + 0.5))


def _check_arguments(net, trainer, sparsity, method, update_every, drop_fraction, end, decay,
                     distribution, seed):
    """Raise for any bad argument of :class:`DynamicSparsity` (nothing is read from the net)."""
    if not isinstance(net, gluon.Block):
        raise SurgeryTypeError('DynamicSparsity needs the network (a gluon.Block), got %s.'
                               % type(net).__name__)
    if not isinstance(trainer, gluon.Trainer):
        raise SurgeryTypeError('DynamicSparsity(trainer=) must be the gluon.Trainer that '
                               'updates the parameters, got %s.' % type(trainer).__name__)
    if not is_real(sparsity) or not 0 <= sparsity < 1:
        raise SurgeryValueError('DynamicSparsity(sparsity=) must be a number in [0, 1) '
                                '(the fraction of zeros), got %r.' % (sparsity,))
    for name, value, choices in (('method', method, _METHODS), ('decay', decay, _DECAYS),
                                 ('distribution', distribution, _DISTRIBUTIONS)):
        if not isinstance(value, str) or value not in choices:
            raise SurgeryValueError('DynamicSparsity(%s=) must be one of %s, got %r.'
                                    % (name, ', '.join(repr(c) for c in choices), value))
    if not is_int(update_every) or update_every < 1:
        raise SurgeryValueError('DynamicSparsity(update_every=) must be an int >= 1 (steps '
                                'between mask updates), got %r.' % (update_every,))
    if not is_real(drop_fraction) or not 0 <= drop_fraction <= 1:
        raise SurgeryValueError('DynamicSparsity(drop_fraction=) must be a number in '
                                '[0, 1], got %r.' % (drop_fraction,))
    if end is not None and (not is_int(end) or end < 1):
        raise SurgeryValueError('DynamicSparsity(end=) must be an int >= 1 (the step from '
                                'which the masks stay fixed) or None, got %r.' % (end,))
    if seed is not None and (not is_int(seed) or not 0 <= seed < 2 ** 32):
        raise SurgeryValueError('DynamicSparsity(seed=) must be an int in [0, 2**32) or '
                                'None, got %r.' % (seed,))
    kvstore, _, _ = _mx.trainer_kvstore(trainer)
    if seed is None and _mx.is_distributed(kvstore):
        raise SurgeryValueError('DynamicSparsity on a distributed kvstore needs seed= (the '
                                'same on every worker), so that the workers draw the same '
                                'masks.')


def _chosen_params(net, trainer, key, method):
    """The weights ``key`` selects (masks left out), each initialised and updated by
    ``trainer``, and with a gradient for RigL."""
    params = all_params(net)
    masks = set(mask_names(params))
    chosen = OrderedDict((n, p) for n, p in select(net, key).items() if n not in masks)
    if not chosen:
        raise SelectionError('DynamicSparsity: key %r selects only masks. Fix: select the '
                             'weights.' % (key,))
    for name, param in chosen.items():
        if _mx.is_deferred(param) or _mx.raw_data(param) is None:
            raise ParameterStateError("DynamicSparsity: parameter '%s' is not initialised; "
                                      "initialise the net (and run one forward) first."
                                      % name)
    missing = [n for n, p in chosen.items() if _mx.trainer_index(trainer, p) is None]
    if missing:
        raise SelectionError('DynamicSparsity: the Trainer does not update %s. Fix: pass '
                             'the Trainer built on these parameters, or leave them out of '
                             'key.' % and_more(missing))
    if method == 'rigl':
        frozen = [n for n, p in chosen.items() if p.grad_req == 'null']
        if frozen:
            raise SurgeryValueError("DynamicSparsity(method='rigl') grows by gradient, but "
                                    "%s has grad_req='null'. Fix: leave it out of key, or "
                                    "use method='set'." % and_more(frozen))
    return chosen


def _active_counts(chosen, sparsity, distribution):
    """How many entries of each weight stay active: ``1 - sparsity`` of each (``'uniform'``)
    or the Erdos-Renyi-Kernel densities, at least one entry each."""
    shapes = OrderedDict((n, tuple(p.shape)) for n, p in chosen.items())
    if distribution == 'erk':
        wanted = erk_densities(shapes, sparsity)
    else:
        wanted = {n: 1.0 - sparsity for n in shapes}
    active = OrderedDict()
    for name, shape in shapes.items():
        size = int(np.prod(shape))
        active[name] = min(size, max(1, _count(wanted[name], size)))
    return active


def _random_masks(chosen, active, rng):
    """The first masks: ``active[name]`` entries of each weight drawn at random."""
    initial = OrderedDict()
    for name, param in chosen.items():
        shape = tuple(param.shape)
        size = int(np.prod(shape))
        mask = np.zeros(size, dtype=np.uint8)
        mask[rng.permutation(size)[:active[name]]] = 1
        initial[name] = mask.reshape(shape)
    return initial


class DynamicSparsity:
    """Sparse training from scratch at a constant sparsity: RigL (Evci et al. 2020) or SET
    (Mocanu et al. 2018), on update-mode masks.

    At construction every selected parameter gets a random mask (seeded) at its density, in
    update mode (see docs/masks.md). Call :meth:`step` after the backward pass and before
    ``trainer.step`` (or between ``trainer.allreduce_grads()`` and ``trainer.update()``). At
    every ``update_every``-th step (from step ``update_every`` on) before ``end`` it drops,
    per parameter, ``floor(f(step) * active + 0.5)`` active entries of smallest magnitude and
    grows as many inactive ones: those with the largest magnitude of the dense gradient
    summed over the contexts (``'rigl'``), or at random (``'set'``). ``f`` decays from
    ``drop_fraction`` to 0 at ``end`` (``'cosine'``) or stays (``'constant'``). Ties are
    broken by index, lowest first, so that every context and every worker takes the same
    decision. Grown entries start at 0 with zero optimizer state (the Trainer's momentum
    or Adam moments under them are zeroed); a dropped entry is set to 0.

    On ``dist_sync`` (``update_on_kvstore=False``), call :meth:`step` between
    ``trainer.allreduce_grads()`` and ``trainer.update()``, so that every worker ranks the
    same, all-reduced, gradient, and pass the same ``seed`` on every worker.

    Parameters
    ----------
    net : Block
        The network.
    trainer : Trainer
        The Trainer that updates the selected parameters.
    key : str or Parameter or list or callable
        Which parameters are sparse (see :func:`select`); usually the weights.
    sparsity : float
        The fraction of zeros, in [0, 1), over all the selected parameters.
    method : {'rigl', 'set'}, default 'rigl'
        How inactive entries are grown: by dense gradient magnitude, or at random.
    update_every : int, default 100
        Steps between mask updates.
    drop_fraction : float, default 0.3
        The fraction of the active entries moved at the first update, in [0, 1].
    end : int, default None
        The step from which the masks stay fixed; None: never (``f`` is then constant).
    decay : {'cosine', 'constant'}, default 'cosine'
        How the moved fraction decays until ``end``.
    distribution : {'uniform', 'erk'}, default 'uniform'
        ``'uniform'``: every parameter at ``sparsity``; ``'erk'``: Erdős–Rényi-kernel, the
        same total sparsity with denser small layers.
    seed : int, default None
        Seeds the initial masks and SET's growth; None draws one (not on ``dist_sync``,
        where workers must agree).

    Attributes
    ----------
    densities : dict of str -> float
        The density (fraction of active entries) of every selected parameter.
    updates : list of int
        The steps at which the masks were updated.

    Examples
    --------
    >>> import mxnet as mx, paramsurgery as ps
    >>> from mxnet import autograd, gluon
    >>> net = mx.gluon.nn.Dense(4, in_units=10, prefix='d_')
    >>> net.initialize(mx.init.Xavier())
    >>> trainer = gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': 0.1})
    >>> dyn = ps.DynamicSparsity(net, trainer, 'd_weight', 0.75, update_every=2, seed=0)
    >>> for step in range(1, 5):
    ...     with autograd.record():
    ...         loss = (net(mx.nd.ones((2, 10))) ** 2).sum()
    ...     loss.backward()
    ...     moved = dyn.step(step)
    ...     trainer.step(2)
    >>> dyn.updates, dyn.densities
    ([2, 4], {'d_weight': 0.25})
    >>> int((net.weight.data() != 0).sum().asscalar())
    10
    """

    def __init__(self, net, trainer: gluon.Trainer, key: Any, sparsity: float, *,
                 method: str = 'rigl', update_every: int = 100, drop_fraction: float = 0.3,
                 end: Optional[int] = None, decay: str = 'cosine',
                 distribution: str = 'uniform', seed: Optional[int] = None):
        _check_arguments(net, trainer, sparsity, method, update_every, drop_fraction, end, decay,
                         distribution, seed)
        chosen = _chosen_params(net, trainer, key, method)
        self.net, self.trainer, self.method = net, trainer, method
        self.sparsity, self.update_every = float(sparsity), int(update_every)
        self.drop_fraction, self.end, self.decay = float(drop_fraction), end, decay
        self.distribution = distribution
        self.seed = int(np.random.randint(0, 2 ** 31)) if seed is None else int(seed)
        self._params = chosen
        self._active = _active_counts(chosen, self.sparsity, distribution)
        self._rng = np.random.RandomState(self.seed)
        initial = _random_masks(chosen, self._active, self._rng)
        self.updates = []
        apply_mask(net, initial, combine='replace', mode='update', trainer=trainer)

    @property
    def densities(self) -> Dict[str, float]:
        return {n: a / float(np.prod(self._params[n].shape)) for n, a in self._active.items()}

    def fraction(self, step: int) -> float:
        """``f(step)``: the fraction of the active entries an update at ``step`` moves."""
        _check_step('fraction', step)
        if self.decay == 'constant' or self.end is None:
            return self.drop_fraction
        return self.drop_fraction / 2 * (1 + math.cos(math.pi * min(step, self.end) / self.end))

    def is_update_step(self, step: int) -> bool:
        """Whether :meth:`step` at ``step`` updates the masks."""
        _check_step('is_update_step', step)
        return step > 0 and step % self.update_every == 0 and (self.end is None or
                                                                step < self.end)

    def step(self, step: int) -> List[str]:
        """Update the masks if ``step`` is an update step; call it after the backward pass
        and before ``trainer.step`` (the gradients are still dense then).

        Parameters
        ----------
        step : int
            The number of the training step (from 0 or 1: steps ``update_every``,
            ``2 * update_every``, ... before ``end`` update).

        Returns
        -------
        list of str
            The parameters whose masks changed (empty between updates).
        """
        _check_step('step', step)
        if not self.is_update_step(step):
            return []
        fraction = self.fraction(step)
        params = all_params(self.net)
        new = OrderedDict()
        for name, param in self._params.items():
            mask_param = params.get(name + MASK_SUFFIX)
            if mask_param is None or _mx.update_mask(param) is None:
                raise ParameterStateError(
                    "DynamicSparsity.step: parameter '%s' lost its update-mode mask (removed "
                    "or switched to graph mode). Nothing was changed. Fix: keep the masks "
                    "DynamicSparsity made, or build a new DynamicSparsity." % name)
            mask = _mx.to_host(_mx.raw_data(mask_param)[0]).ravel() != 0
            active = np.flatnonzero(mask)
            count = min(len(active), _count(fraction, len(active)))
            if count == 0:
                continue
            weight = _mx.to_host(param.list_data()[0]).ravel()
            # lexsort sorts by its last key first: magnitude, then index, lowest first
            drop = active[np.lexsort((active, np.abs(weight[active])))[:count]]
            kept = mask.copy()
            kept[drop] = False
            candidates = np.flatnonzero(~kept)
            if self.method == 'rigl':
                grads = param.list_grad()
                total = _mx.to_host(grads[0]).ravel().copy()
                for grad in grads[1:]:
                    total += _mx.to_host(grad).ravel()
                score = np.abs(total[candidates])
                grow = candidates[np.lexsort((candidates, -score))[:count]]
            else:
                grow = candidates[np.sort(self._rng.permutation(len(candidates))[:count])]
            kept[grow] = True
            if not np.array_equal(kept, mask):
                new[name] = kept.astype(np.uint8).reshape(param.shape)
        # Entries dropped and grown again in one update keep their value and state, as in
        # RigL's reference code; every other grown entry was masked, so it is 0 already.
        if new:
            apply_mask(self.net, new, combine='replace', mode='update', trainer=self.trainer)
        self.updates.append(step)
        return list(new)

    def _fingerprints(self):
        # a CRC of the mask bits: enough to tell the saved masks from any others
        params = all_params(self.net)
        found = {}
        for name in self._params:
            mask = params.get(name + MASK_SUFFIX)
            bits = None if mask is None else _mx.to_host(_mx.raw_data(mask)[0]) != 0
            found[name] = None if bits is None else zlib.crc32(np.packbits(bits).tobytes())
        return found

    def state_dict(self) -> Dict[str, Any]:
        """The progress, picklable: settings, the active counts, the random state and the
        update steps. With the masks saved by :func:`save_masks`, the weights and the
        Trainer's states, :meth:`load_state_dict` resumes exactly."""
        state = {'format': _FORMAT, 'version': _VERSION, 'seed': self.seed,
                 'active': dict(self._active), 'updates': list(self.updates),
                 'rng': self._rng.get_state(), 'masks': self._fingerprints()}
        state.update((name, getattr(self, name)) for name in _SETTINGS)
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the progress saved by :meth:`state_dict`. Load the masks first
        (:func:`load_masks`): they are checked against the ones the state was saved with."""
        if not isinstance(state, Mapping):
            raise SurgeryTypeError('state must be the dict from DynamicSparsity.state_dict(), '
                                   'got %s.' % type(state).__name__)
        if state.get('format') != _FORMAT or state.get('version') != _VERSION:
            raise SurgeryValueError('state is not a DynamicSparsity state of version %d (found '
                                    'format %r). Pass what DynamicSparsity.state_dict() returned.'
                                    % (_VERSION, state.get('format')))
        for name in _SETTINGS:
            if state.get(name) != getattr(self, name):
                raise SurgeryValueError('state has %s=%r but this DynamicSparsity has %s=%r. '
                                        'Build it with the same settings.'
                                        % (name, state.get(name), name, getattr(self, name)))
        if dict(state.get('active', {})) != dict(self._active):
            raise SurgeryValueError('state holds parameters %s with active counts that differ '
                                    'from this DynamicSparsity\'s. Build it on the same net and '
                                    'key.' % sorted(state.get('active', {})))
        mine, saved = self._fingerprints(), dict(state.get('masks', {}))
        differ = [n for n in mine if mine[n] != saved.get(n)]
        if differ:
            raise SurgeryValueError(
                "load_state_dict: the mask of %s is not the one the state was saved with. "
                "Nothing was changed. Fix: load the saved masks first (ps.load_masks(net, "
                "path)), then the state." % and_more(differ))
        rng = np.random.RandomState()
        try:
            rng.set_state(state['rng'])
        except (KeyError, TypeError, ValueError) as err:
            raise SurgeryValueError('state has no valid random state (%s). Pass what '
                                    'DynamicSparsity.state_dict() returned.' % err) from None
        self._rng, self.seed = rng, int(state['seed'])
        self.updates = list(state.get('updates', []))
