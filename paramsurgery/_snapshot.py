"""One transaction over a net and every Trainer reachable from its parameters.

:class:`Transaction` records, once, everything an operation on the net may change, and puts
it back bit for bit on :meth:`Transaction.rollback` (or when its ``with`` block raises):

- every block's attributes: registered parameters and children, paramsurgery's mask
  registry and mask modes, channel counts and operator arguments (``shrink`` changes them),
  the hybridisation's cached graph;
- every parameter's attributes (shape, per-context array and gradient lists, symbol
  variable, last Trainer, update-mode mask) and, unless ``values=False``, the values of its
  replicas and gradients;
- every Trainer found from the parameters (the last one built on each, those built while it
  had an update-mode mask, and those given): its kvstore and whether it was created, the
  parameters still to broadcast, every Updater in this process (each context's and a
  local/device kvstore's) with its optimizer states and class, the optimizer's update counters
  and learning-rate scheduler, and the kvstore's own copy of each weight and BatchNorm
  statistic when it runs the optimizer.

A Trainer created inside the transaction holds nothing of the recorded state: the rollback
forgets it (the parameters' last Trainer is put back). Used by every
:func:`paramsurgery.sensitivity` trial, by :func:`paramsurgery.shrink` and
:func:`paramsurgery.apply_plan`, and by the value surgery (:func:`paramsurgery.assign_params`,
:func:`paramsurgery.set_params`) when a Trainer keeps its own copy of what it writes.

:func:`held_interrupts` is the other half of all-or-nothing, for a commit that cannot fail
but can be interrupted: Ctrl-C (SIGINT) is held back until the commit ends, then delivered.
"""
import contextlib
import copy
import signal
import threading
from typing import NamedTuple

from mxnet import autograd
from mxnet import ndarray as nd
from mxnet.gluon import Block

from . import _mx
from .errors import TrainerStateError, and_more
from .select import all_params

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


def _copies(arrays):
    return None if arrays is None else [a.copy() for a in arrays]


class _ParamRecord(NamedTuple):
    param: object
    attrs: tuple            # _mx.object_state
    data: list              # the replicas' values (None: not recorded or not initialised)
    grads: list
    fresh: list             # backward()'s freshness flag of each replica


class _UpdaterRecord(NamedTuple):
    updater: object
    cls: type               # Updater or MaskingUpdater
    attrs: tuple
    states: dict            # key -> deep copy of the optimizer state


class _TrainerRecord(NamedTuple):
    trainer: object
    attrs: tuple
    optimizer: tuple
    counters: tuple
    scheduler: tuple        # object_state of the lr_scheduler, or None
    updaters: list
    kvstore: dict           # key -> copy held by a kvstore that runs the optimizer


def _record_param(param, values, grads=True):
    data = _mx.raw_data(param)
    if not values or not isinstance(data, list):
        return _ParamRecord(param, _mx.object_state(param), None, None, None)
    grads = _mx.raw_grad(param) if grads else None
    if not isinstance(grads, list):   # grad_req 'null' (or not asked): no gradient, no flag
        return _ParamRecord(param, _mx.object_state(param), _copies(data), None, None)
    return _ParamRecord(param, _mx.object_state(param), _copies(data), _copies(grads),
                        [_mx.fresh_grad(a) for a in data])


def _record_trainer(trainer, values, params=None):
    optimizer = trainer.optimizer
    scheduler = getattr(optimizer, 'lr_scheduler', None)
    updaters = [_UpdaterRecord(u, _mx.updater_class(u), _mx.object_state(u),
                               {k: _copy_state(s) for k, s in u.states.items()})
                for u in _mx.process_updaters(trainer) if u is not None]
    return _TrainerRecord(trainer, _mx.object_state(trainer),
                          _mx.object_state(optimizer),
                          _mx.optimizer_counters(optimizer),
                          None if scheduler is None else _mx.object_state(scheduler),
                          updaters, _mx.kvstore_copies(trainer, params) if values else {})


def _reachable_trainers(params, given=()):
    found = {}
    for trainer in given:
        found.setdefault(id(trainer), trainer)
    for param in params:
        for trainer in _mx.known_trainers(param):
            found.setdefault(id(trainer), trainer)
    return list(found.values())


class Transaction:
    """Everything ``net`` and its Trainers hold, recorded once; :meth:`rollback` puts it
    back bit for bit (as many times as asked).

    Used as ``with Transaction(net) as txn: ...``: an exception rolls back and reaches the
    caller; a normal exit commits (keeps the changes). ``values=False`` records no array
    values (nor kvstore copies): for operations that only replace arrays with new ones and
    never write into the old ones (:func:`paramsurgery.shrink`). ``values`` a list of
    Parameters records the replica values of those only, not their gradients, and their
    kvstore copies: for operations that write into nothing else
    (:func:`paramsurgery.assign_params`, whose cost is then one copy of what it writes).
    ``net`` may also be a ParameterDict or a dict of Parameters (no blocks to record).
    ``params``: the net's ``all_params``, if the caller has them.
    """

    def __init__(self, net, trainers=(), *, values=True, params=None):
        # (``params``: the caller's all_params(net), when it has them: collecting them
        # again walks every block)
        params = list((all_params(net) if params is None else params).values())
        blocks = _mx.walk_blocks(net) if isinstance(net, Block) else []
        values = values if isinstance(values, bool) else list(values)
        only = None if isinstance(values, bool) else set(id(p) for p in values)
        with autograd.pause():
            self._blocks = [(b, _mx.object_state(b), _mx.object_state(b.params))
                            for b in blocks]
            self._params = [_record_param(p, values) if only is None else
                            _record_param(p, id(p) in only, grads=False) for p in params]
            self._trainers = [_record_trainer(t, bool(values), None if only is None else values)
                              for t in _reachable_trainers(params, trainers)]

    def __enter__(self):
        return self

    def __exit__(self, kind, err, trace):
        if kind is not None:
            self.rollback()
        return False

    def _stepped_on_servers(self):
        names = []
        for record in self._trainers:
            trainer = record.trainer
            if _mx.runs_on_servers(trainer) and _mx.trainer_kvstore(trainer)[2] \
                    and _mx.optimizer_counters(trainer.optimizer) != record.counters:
                names.extend(p.name for p in _mx.trainer_params(trainer))
                kv_type = _mx.kvstore_type(_mx.trainer_kvstore(trainer)[0])
        if not names:
            return None
        return TrainerStateError(
            "Parameter %s: the Trainer stepped on kvstore '%s', whose servers run the "
            "optimizer (update_on_kvstore=True); their copy of the weights and states cannot "
            "be put back from this process (everything else was). Do not step that Trainer "
            "inside the operation, or use update_on_kvstore=False." % (and_more(names), kv_type))

    def rollback(self):
        """Put everything back as it was when the transaction began.

        Raises TrainerStateError (after putting back everything this process holds) when a
        Trainer stepped on the servers of a distributed kvstore.
        """
        problem = self._stepped_on_servers()
        with autograd.pause():
            for block, attrs, param_dict in self._blocks:
                _mx.restore_object_state(block, attrs)
                _mx.restore_object_state(block.params, param_dict)
            for record in self._params:
                _mx.restore_object_state(record.param, record.attrs)
                if record.data is None:
                    continue
                live = _mx.raw_data(record.param)
                for arr, saved in zip(live, record.data):
                    saved.copyto(arr)
                if record.grads is not None:
                    for arr, saved in zip(_mx.raw_grad(record.param), record.grads):
                        saved.copyto(arr)
                    for arr, fresh in zip(live, record.fresh):
                        _mx.set_fresh_grad(arr, fresh)
            for record in self._trainers:
                self._restore_trainer(record)
        if problem is not None:
            raise problem

    @staticmethod
    def _restore_trainer(record):
        optimizer = record.trainer.optimizer
        _mx.restore_object_state(record.trainer, record.attrs)
        _mx.restore_object_state(optimizer, record.optimizer)
        _mx.set_optimizer_counters(optimizer, record.counters)
        if record.scheduler is not None:
            _mx.restore_object_state(optimizer.lr_scheduler, record.scheduler)
        for saved in record.updaters:
            updater = saved.updater
            _mx.set_updater_class(updater, saved.cls)
            _mx.restore_object_state(updater, saved.attrs)
            for key, state in saved.states.items():
                updater.states[key] = _put_state(updater.states.get(key), state)
        _mx.put_kvstore_copies(record.trainer, record.kvstore)


@contextlib.contextmanager
def held_interrupts():
    """Hold back Ctrl-C (SIGINT) inside the ``with`` block and deliver it when the block ends.

    For a commit whose steps cannot fail (staged values written into existing memory): an
    interrupt between two of them would leave some parameters written and others not. Only
    the main thread receives signals in Python; elsewhere this holds nothing back.
    """
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or previous is None:
        # (None: a handler installed outside Python, which could not be put back)
        yield
        return
    held = []
    signal.signal(signal.SIGINT, lambda signum, frame: held.append(frame))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if held and callable(previous):
            previous(signal.SIGINT, held[0])
        elif held and previous == signal.SIG_DFL:
            signal.raise_signal(signal.SIGINT)   # now with the default action
