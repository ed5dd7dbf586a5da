"""Trainers, their kvstores, Updaters and Optimizers.

A Trainer's optimizer states live in its Updaters (one per context) or, with
``update_on_kvstore``, in the kvstore's Updater; the kvstore itself holds buffers of the
parameters' shapes. The update-mode engine (``paramsurgery.masks.update_mode``) watches a
Trainer through an instance-level ``_init_kvstore`` (:func:`hook_init_kvstore`).
"""
import os
import types

import numpy as np
from mxnet import autograd
from mxnet import ndarray as nd
from mxnet import optimizer as mx_optimizer

from .params import context_index, is_mask_param, known_trainers

__all__ = []


def trainer_index(trainer, param):
    """The kvstore key of ``param`` in ``trainer``, or None when it is not one of its params."""
    idx = trainer._param2idx.get(param.name)
    if idx is None or trainer._params[idx] is not param:
        return None
    return idx


def trainer_kvstore(trainer):
    """``(kvstore, update_on_kvstore, initialized)`` of a Trainer.

    Before the first ``step`` the kvstore is not created yet: ``kvstore`` is then the
    configured value (a string such as ``'device'`` or ``'dist_sync'``, a KVStore or None).
    """
    if trainer._kv_initialized:
        return trainer._kvstore, bool(trainer._update_on_kvstore), True
    config = trainer._kvstore_params
    return config['kvstore'], config['update_on_kvstore'], False


def is_distributed(kvstore):
    kv_type = kvstore if isinstance(kvstore, str) else getattr(kvstore, 'type', '')
    return 'dist' in (kv_type or '')


def _assign_updater(key, received, stored):  # pylint: disable=unused-argument
    stored[:] = received


def master_copies(updaters, idx):
    """The fp32 master copies that ``multi_precision`` optimizers keep for key ``idx``.

    Gluon's base ``Optimizer`` stores ``(master, state)``; SGD, NAG, LARS and LBSGD store
    ``(state, master)``. A class that keeps the base implementation uses the first layout.
    """
    for updater in updaters:
        if updater is None:
            continue
        optimizer = updater.optimizer
        state = updater.states.get(idx)
        if not optimizer.multi_precision or not isinstance(state, (tuple, list)) or not state:
            continue
        base = type(optimizer).create_state_multi_precision is \
            mx_optimizer.Optimizer.create_state_multi_precision
        master = state[0] if base else state[-1]
        if isinstance(master, nd.NDArray) and master.dtype == np.float32:
            yield master


def sync_trainer(trainer, params):
    """Make ``trainer``'s own copies of ``params`` equal to the parameters' replicas.

    Two copies outlive an in-place edit of the replicas: the weight a kvstore keeps when it
    runs the optimizer itself (``update_on_kvstore=True``), which the next ``step`` pulls
    back into every replica, and the fp32 master copy of a ``multi_precision`` optimizer.
    The kvstore copy is overwritten by pushing the new value through a temporary updater
    that assigns instead of optimising; the optimizer's Updater (with the momentum and
    other states) is put back afterwards, untouched.
    """
    keyed = _keyed_copies(trainer, params)
    if not keyed:
        return
    kvstore, update_on_kvstore, _ = trainer_kvstore(trainer)
    on_kvstore = kvstore is not None and update_on_kvstore
    if on_kvstore:
        previous = kvstore._updater
        kvstore._set_updater(_assign_updater)
        try:
            for idx, param in keyed:
                kvstore.push(idx, param._data[0], priority=-idx)
        finally:
            kvstore._set_updater(previous)
        updaters = [previous]
    else:
        updaters = list(trainer._updaters)
    if trainer._optimizer.multi_precision:
        for idx, param in keyed:
            if np.dtype(param.dtype) != np.float16:
                continue  # only fp16 weights get a master copy
            for master in master_copies(updaters, idx):
                source = param._data[context_index(param, master.context) or 0]
                master[:] = source.astype(master.dtype)


def _keyed_copies(trainer, params):
    """``[(kvstore index, param)]`` of the ``params`` whose value ``trainer`` also holds
    elsewhere (its kvstore runs the optimizer, or a multi-precision fp32 master copy)."""
    kvstore, update_on_kvstore, initialized = trainer_kvstore(trainer)
    if not initialized:
        # The first step broadcasts replica 0 to the kvstore: nothing to synchronise yet.
        return []
    on_kvstore = kvstore is not None and update_on_kvstore
    if not on_kvstore and not trainer._optimizer.multi_precision:
        return []
    pending = set(id(p) for p in trainer._params_to_init)
    keyed = [(trainer_index(trainer, p), p) for p in params if id(p) not in pending]
    # masks never reach the kvstore (see _watching_init_kvstore): nothing there to overwrite
    return [(idx, p) for idx, p in keyed if idx is not None and not is_mask_param(p)]


def keeps_copies(trainer, params) -> bool:
    """Whether :func:`sync_trainer` has anything of ``params`` to write for ``trainer``."""
    return bool(_keyed_copies(trainer, params))


def trainer_params(trainer):
    """The Parameters a Trainer updates, in its kvstore-key order (sorted names for a dict)."""
    return list(trainer._params)


def kvstore_type(kvstore):
    """The type string of a kvstore or of a Trainer's configured kvstore ('' for None)."""
    if isinstance(kvstore, str):
        return kvstore
    return getattr(kvstore, 'type', '') or ''


def effective_update_on_kvstore(trainer):
    """Whether ``trainer`` runs (or will run, once its first step creates the kvstore) the
    optimizer on the kvstore, resolved the way ``Trainer._init_kvstore`` resolves it for
    dense parameters: an explicit ``update_on_kvstore`` wins, else ``MXNET_UPDATE_ON_KVSTORE``
    (default 1); a distributed async kvstore and sparse weights always update on the kvstore.
    """
    if trainer._kv_initialized:
        return trainer._kvstore is not None and bool(trainer._update_on_kvstore)
    config = trainer._kvstore_params
    kv_type = kvstore_type(config['kvstore'])
    if config['kvstore'] is None:
        return False
    if trainer._contains_sparse_weight or (trainer._contains_sparse_grad and 'dist' in kv_type):
        return True  # MXNet forces it (or raises when update_on_kvstore=False was asked for)
    if 'dist' in kv_type and 'async' in kv_type:
        return True
    if config['update_on_kvstore'] is not None:
        return bool(config['update_on_kvstore'])
    return bool(int(os.getenv('MXNET_UPDATE_ON_KVSTORE', '1')))


def params_to_broadcast(trainer):
    """The Parameters the next ``step`` will broadcast from rank 0 through the kvstore.

    Before the first step that is every parameter; afterwards only those whose
    initialisation was still deferred at the first step (``_params_to_init``).
    """
    if not trainer._kv_initialized:
        return list(trainer._params)
    return list(trainer._params_to_init)


def init_trainer_kvstore(trainer):
    """Create the Trainer's kvstore and broadcast its parameters now, as its first ``step``
    would (``_init_kvstore`` then ``_init_params``), and wait until every replica has
    received its value: ``KVStore.broadcast`` only queues the pull on the engine."""
    if not trainer._kv_initialized:
        trainer._init_kvstore()
    if trainer._params_to_init:
        trainer._init_params()
    for param in trainer._params:
        if not param._deferred_init and param._data is not None:
            for arr in param._data:
                arr.wait_to_read()


def optimizer_counters(optimizer):
    """``(num_update, {device: {key: count}})``: the update counters an optimizer keeps
    (they drive the learning-rate schedule and Adam's bias correction), copied."""
    return optimizer.num_update, {dev: dict(counts) for dev, counts
                                  in optimizer._all_index_update_counts.items()}


def set_optimizer_counters(optimizer, counters):
    """Put back what :func:`optimizer_counters` returned, keeping the dict objects (the
    optimizer aliases the current device's dict as ``_index_update_count``)."""
    num_update, saved = counters
    optimizer.num_update = num_update
    live = optimizer._all_index_update_counts
    for dev in list(live):
        if dev not in saved:
            del live[dev]
    for dev, counts in saved.items():
        live.setdefault(dev, {}).clear()
        live[dev].update(counts)


def kvstore_of(trainer):
    """``(kvstore or None, update_on_kvstore, initialized)``."""
    return trainer._kvstore, bool(trainer._update_on_kvstore), bool(trainer._kv_initialized)


def reinit_trainer_kvstore(trainer):
    """Throw the kvstore away and create it again with the parameters' current shapes,
    keeping the optimizer states (moved to the new kvstore's Updater) and the values of
    every replica (the re-initialisation broadcasts replica 0, which would overwrite
    per-context state such as BatchNorm running statistics)."""
    kvstore, on_kv, initialized = kvstore_of(trainer)
    if not initialized or kvstore is None:
        return
    old = kvstore._updater if on_kv else None
    with autograd.pause():
        saved = [(param, [a.copy() for a in param._data]) for param in trainer._params
                 if not param._deferred_init and param._data is not None]
    trainer._reset_kvstore()
    init_trainer_kvstore(trainer)
    with autograd.pause():
        for param, copies in saved:
            for arr, copy in zip(param._data, copies):
                copy.copyto(arr)
    if old is not None:
        new = trainer._kvstore._updater
        new.states = old.states
        new.states_synced = {k: False for k in old.states}


def _local_kv_updater(trainer):
    """The Updater a local/device kvstore runs for ``trainer``, or None."""
    kvstore = trainer._kvstore
    if trainer._kv_initialized and kvstore is not None and trainer._update_on_kvstore \
            and not is_distributed(kvstore):
        return getattr(kvstore, '_updater', None)
    return None


def process_updaters(trainer):
    """Every Updater of ``trainer`` in this process (each context's, and a local/device
    kvstore's when it runs the optimizer); a dist kvstore's servers keep their own."""
    updaters = list(getattr(trainer, '_updaters', []) or [])
    kv_updater = _local_kv_updater(trainer)
    if kv_updater is not None and all(kv_updater is not u for u in updaters):
        updaters.append(kv_updater)
    return updaters


def has_updaters(trainer):
    """True once ``trainer`` has Updaters to change (its kvstore or its per-context ones)."""
    return getattr(trainer, '_kv_initialized', False) or hasattr(trainer, '_updaters')


def runs_on_servers(trainer):
    """True when ``trainer`` runs (or will run) the optimizer on a dist kvstore's servers."""
    return is_distributed(kvstore_type(trainer_kvstore(trainer)[0])) and \
        effective_update_on_kvstore(trainer)


def hook_init_kvstore(trainer, init_kvstore):
    """Make ``trainer`` run ``init_kvstore(trainer)`` where it creates its kvstore."""
    trainer.__dict__['_init_kvstore'] = types.MethodType(init_kvstore, trainer)


def is_watched(trainer):
    """True when :func:`hook_init_kvstore` was applied to ``trainer``."""
    return isinstance(trainer.__dict__.get('_init_kvstore'), types.MethodType)


def class_init_kvstore(trainer):
    """What ``trainer._init_kvstore()`` does without an instance-level hook."""
    type(trainer)._init_kvstore(trainer)


def keep_masks_out_of_kvstore(trainer):
    """Drop mask Parameters from what the Trainer's next step hands to its kvstore."""
    trainer._params_to_init = [p for p in trainer._params_to_init if not is_mask_param(p)]


def enforcement_gaps(param):
    """Why the update-mode mask of ``param`` may not be enforced: a list of messages.

    An Updater masks when its class says ``masks_gradients`` (the engine's
    ``MaskingUpdater``, which lives above this module)."""
    gaps = []
    for trainer in known_trainers(param):
        if trainer_index(trainer, param) is None:
            continue
        if runs_on_servers(trainer):
            gaps.append("its Trainer runs the optimizer on the servers of a dist kvstore "
                        "(update_on_kvstore=True), which cannot mask the gradient")
            continue
        if not is_watched(trainer):
            gaps.append('a Trainer of it is not watched by paramsurgery (its kvstore, once '
                        'created, would run unmasked updates)')
        if not trainer._kv_initialized:
            continue  # its first step creates the kvstore and installs the masking
        kv_updater = _local_kv_updater(trainer)
        used = [kv_updater] if kv_updater is not None else \
            ([] if trainer._kvstore is not None and trainer._update_on_kvstore
             else list(trainer._updaters))
        if any(not getattr(type(u), 'masks_gradients', False) for u in used if u is not None):
            gaps.append('an Updater of its Trainer does not mask the gradient (it was '
                        'replaced after the mask was applied)')
    return gaps


def state_arrays(updater, idx, shape):
    """``[(array, is_master)]``: the optimizer state arrays of key ``idx`` in ``updater``
    that have the weight's shape (momentum, Adam moments, fp32 master copy...)."""
    state = updater.states.get(idx)
    if state is None:
        return []
    masters = set(id(m) for m in master_copies([updater], idx))
    found, stack = [], [state]
    while stack:
        item = stack.pop()
        if isinstance(item, (tuple, list)):
            stack.extend(item)
        elif isinstance(item, nd.NDArray) and tuple(item.shape) == tuple(shape) \
                and item.stype == 'default':
            found.append((item, id(item) in masters))
    return found


def optimizer_states(trainer, param):
    """Every optimizer state array of ``param`` (not its fp32 master copy) in every Updater
    of ``trainer`` in this process."""
    idx = trainer_index(trainer, param)
    if idx is None:
        return
    for updater in process_updaters(trainer):
        if updater is None:
            continue
        for arr, is_master in state_arrays(updater, idx, param.shape):
            if not is_master:
                yield arr


def updater_class(updater):
    return type(updater)


def set_updater_class(updater, cls):
    """Give ``updater`` the class ``cls``: how the update-mode engine switches an Updater to
    its masking class, and how a transaction switches it back."""
    updater.__class__ = cls


def kvstore_copies(trainer, params=None):
    """``{key: NDArray}``: a copy of the weight (or BatchNorm statistic) that a local/device
    kvstore keeps for each parameter (of ``params``, default all) when it runs the optimizer
    (``update_on_kvstore``); the next ``step`` pulls the weights from there. Empty when there
    is no such copy."""
    kvstore, on_kv, initialized = trainer_kvstore(trainer)
    if not initialized or kvstore is None or not on_kv or is_distributed(kvstore):
        return {}
    pending = set(id(p) for p in trainer._params_to_init)
    wanted = None if params is None else set(id(p) for p in params)
    copies = {}
    for idx, param in enumerate(trainer._params):
        if id(param) in pending or param._data is None or param._stype != 'default':
            continue
        if is_mask_param(param) or (wanted is not None and id(param) not in wanted):
            # masks never reach the kvstore (see _watching_init_kvstore): no key to pull
            continue
        first = param._data[0]
        buf = nd.zeros(first.shape, ctx=first.context, dtype=first.dtype)
        kvstore.pull(idx, out=buf, priority=-idx)
        copies[idx] = buf
    return copies


def put_kvstore_copies(trainer, copies):
    """Write :func:`kvstore_copies` back into the Trainer's kvstore, through a temporary
    updater that assigns (the optimizer's Updater is put back untouched)."""
    if not copies:
        return
    kvstore = trainer._kvstore
    previous = kvstore._updater
    kvstore._set_updater(_assign_updater)
    try:
        for idx, arr in copies.items():
            kvstore.push(idx, arr, priority=-idx)
    finally:
        kvstore._set_updater(previous)


def reset_optimizer_state(trainer, param):
    """Zero the optimizer state of ``param`` (not its fp32 master copy) in every Updater of
    ``trainer`` in this process, and reset its update counts to 0, so that Adam's bias
    correction and the learning-rate schedule restart for it."""
    idx = trainer_index(trainer, param)
    if idx is None:
        return
    for arr in optimizer_states(trainer, param):
        with autograd.pause():
            arr[:] = 0
    optimizer = trainer._optimizer
    for counts in optimizer._all_index_update_counts.values():
        if idx in counts:
            counts[idx] = 0
    optimizer.num_update = max([0] + [c for counts in optimizer._all_index_update_counts.values()
                                      for c in counts.values()])
