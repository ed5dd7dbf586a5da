"""Every access to private MXNet 1.9.1 attributes lives in this module.

The rest of the package talks to Gluon through these few functions, so that a port to
another MXNet version (2.0 renamed ``_ctx_list``/``_ctx_map`` to ``_device_list``/
``_device_map``) changes this file only. What each attribute means is explained in
``docs/internals.md``.

Parameter: ``_data`` (list of leaf NDArrays, one per context), ``_grad`` (the matching
gradient buffers or None), ``_ctx_list``, ``_ctx_map``, ``_deferred_init``, ``_trainer``.
NDArray: ``_fresh_grad`` (set by ``backward()``, read and cleared by ``Trainer.step``).
Trainer: ``_kvstore``, ``_kv_initialized``, ``_update_on_kvstore``, ``_param2idx``,
``_params``, ``_params_to_init``, ``_updaters``. KVStore: ``_updater``, ``_set_updater``.
"""
import numpy as np
from mxnet import autograd, ndarray as nd
from mxnet import optimizer as mx_optimizer

__all__ = []


# --------------------------------------------------------------------------- parameters

def raw_data(param):
    """What ``param._data`` holds, unchecked (a list of NDArrays, a bare NDArray, or None)."""
    return param._data


def raw_grad(param):
    """What ``param._grad`` holds, unchecked."""
    return param._grad


def context_list(param):
    """The contexts the parameter lives on (or will live on, when deferred), or None."""
    ctx = getattr(param, '_ctx_list', None)
    if ctx is None and param._deferred_init:
        ctx = param._deferred_init[1]
    return list(ctx) if ctx is not None else None


def is_deferred(param):
    """True while initialisation waits for the first forward to learn the shape."""
    return bool(param._deferred_init)


def context_index(param, ctx):
    """Index of ``ctx`` in ``param._data`` exactly as ``_check_and_get`` resolves it, or None."""
    ctx_map = getattr(param, '_ctx_map', None)
    if ctx_map is None:
        return None
    slot = ctx_map[ctx.device_typeid & 1]
    if ctx.device_id < len(slot):
        return slot[ctx.device_id]
    return None


def is_leaf(arr):
    """True when ``arr`` is a marked autograd variable (it has a gradient buffer attached).

    A computed array put into ``_data`` (``w * mask``) has none: ``backward`` never fills a
    buffer the Trainer reads, and reading ``_fresh_grad`` on it silently returns 0.
    """
    return arr.grad is not None


def fresh_grad(arr):
    """Read the freshness flag that ``backward()`` sets, without clearing it."""
    return bool(arr._fresh_grad)


def set_fresh_grad(arr, value):
    arr._fresh_grad = bool(value)


def last_trainer(param):
    """The last Trainer built on ``param`` (Gluon remembers only that one), or None."""
    return param._trainer


# --------------------------------------------------------------------------- trainers

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


def _master_copies(updaters, idx):
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
    kvstore, update_on_kvstore, initialized = trainer_kvstore(trainer)
    if not initialized:
        # The first step broadcasts replica 0 to the kvstore: nothing to synchronise yet.
        return
    pending = set(id(p) for p in trainer._params_to_init)
    keyed = [(trainer_index(trainer, p), p) for p in params if id(p) not in pending]
    keyed = [(idx, p) for idx, p in keyed if idx is not None]
    if not keyed:
        return
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
            for master in _master_copies(updaters, idx):
                source = param._data[context_index(param, master.context) or 0]
                master[:] = source.astype(master.dtype)


# --------------------------------------------------------------------------- writing

def write_replicas(param, write):
    """Call ``write(replica)`` on every replica, outside of any autograd recording.

    The replicas are marked autograd variables; writing into them inside
    ``autograd.record()`` raises "Assigning to NDArrays that are already in a
    computational graph". Gluon's own ``cast``/``reset_ctx`` write under
    ``autograd.pause()`` for the same reason. The arrays keep their identity, so they stay
    leaves with their gradient buffers attached and every Trainer and cached graph that
    holds them sees the new values.
    """
    with autograd.pause():
        for arr in param._data:
            write(arr)


# --------------------------------------------------------------------------- distributed kvstore
# (imported here rather than at the top so that this section merges as a pure addition)
import os  # noqa: E402  pylint: disable=wrong-import-position,wrong-import-order


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
