"""Take a net and its Trainers' state once, and put it back bit for bit, in part or whole.

Used where an operation must try something on the real net and then undo it (the trials of
:func:`paramsurgery.sensitivity`): the snapshot is taken once, a trial that touched only a
few parameters restores just those (and the small non-trainable state, such as BatchNorm's
running statistics, that any training-mode forward moves), and only a trial whose code made
a Trainer step pays for restoring everything: every replica, the optimizer states of every
updater (momentum, Adam moments, fp32 master copies), the optimizer's update counters and a
local/device kvstore's copy of the weights.
"""
import copy

from mxnet import autograd
from mxnet import ndarray as nd

from . import _internals
from .errors import TrainerStateError, and_more
from .select import all_params, mask_names

__all__ = []


def _copy_state(state):
    """A deep copy of one optimizer state (an NDArray, a tuple/list of them, or None)."""
    if isinstance(state, nd.NDArray):
        return state.copy()
    if isinstance(state, (tuple, list)):
        return type(state)(_copy_state(s) for s in state)
    return copy.deepcopy(state)


def _put_state(live, saved):
    """Write ``saved`` into ``live`` in place where the structure allows; return the object
    the updater should hold afterwards."""
    if isinstance(saved, nd.NDArray) and isinstance(live, nd.NDArray) and \
            live.shape == saved.shape and live.dtype == saved.dtype:
        saved.copyto(live)
        return live
    if isinstance(saved, (tuple, list)) and isinstance(live, (tuple, list)) and \
            len(saved) == len(live):
        return type(live)(_put_state(a, b) for a, b in zip(live, saved))
    return _copy_state(saved)


class _TrainerState:
    """What one Trainer keeps besides the parameters' replicas."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.updaters = [(u, {k: _copy_state(s) for k, s in u.states.items()},
                          dict(u.states_synced)) for u in _internals.process_updaters(trainer)]
        self.counters = _internals.optimizer_counters(trainer.optimizer)

    def changed(self):
        """True when the Trainer stepped (or created optimizer state) since the snapshot."""
        if _internals.optimizer_counters(self.trainer.optimizer) != self.counters:
            return True
        return any(set(u.states) != set(states) for u, states, _ in self.updaters) or \
            len(_internals.process_updaters(self.trainer)) != len(self.updaters)

    def check_restorable(self, params):
        """Raise before anything is written when the state lives on parameter servers."""
        kvstore, update_on_kvstore, initialized = _internals.trainer_kvstore(self.trainer)
        if initialized and update_on_kvstore and _internals.is_distributed(kvstore):
            mine = [p.name for p in params if _internals.trainer_index(self.trainer, p)
                    is not None]
            raise TrainerStateError(
                "Parameter %s: the Trainer stepped on kvstore '%s', whose servers run the "
                "optimizer (update_on_kvstore=True); their copy of the weights and states "
                "cannot be put back from this process. Evaluate without stepping that "
                "Trainer, or use update_on_kvstore=False." % (and_more(mine), kvstore.type))

    def restore(self, params):
        for updater, states, synced in self.updaters:
            for key in list(updater.states):
                if key not in states:
                    del updater.states[key]
            for key, saved in states.items():
                updater.states[key] = _put_state(updater.states.get(key), saved)
            updater.states_synced.clear()
            updater.states_synced.update(synced)
        _internals.set_optimizer_counters(self.trainer.optimizer, self.counters)
        # The replicas are back: make the kvstore's own copy of the weights equal to them.
        _internals.sync_trainer(self.trainer, params)


class Snapshot:
    """Every replica of every parameter of ``net`` and the state of ``trainers``, copied once.

    :meth:`restore` puts back the named parameters, the small non-trainable state (grad_req
    'null' parameters that are not masks: BatchNorm's running statistics) and, when a
    Trainer stepped since the snapshot, everything.
    """

    def __init__(self, net, trainers=()):
        self.params = all_params(net)
        masks = set(mask_names(self.params))
        self.aux = [name for name, p in self.params.items()
                    if p.grad_req == 'null' and name not in masks]
        with autograd.pause():
            self.values = {name: [arr.copy() for arr in _internals.raw_data(p)]
                           for name, p in self.params.items()
                           if _internals.raw_data(p) is not None}
        self.trainers = [_TrainerState(t) for t in trainers]

    def _write(self, names):
        with autograd.pause():
            for name in names:
                for live, saved in zip(_internals.raw_data(self.params[name]),
                                       self.values[name]):
                    saved.copyto(live)

    def restore(self, names=()):
        """Put back ``names``, the non-trainable state, and everything if a Trainer stepped.

        Returns True when everything was restored.
        """
        stepped = [t for t in self.trainers if t.changed()]
        if stepped:
            for state in stepped:
                state.check_restorable(list(self.params.values()))
            self._write(self.values)
            for state in self.trainers:
                state.restore(list(self.params.values()))
            return True
        self._write(list(dict.fromkeys(list(names) + self.aux)))
        return False
