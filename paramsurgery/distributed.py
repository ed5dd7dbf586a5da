"""Training on MXNet's parameter-server kvstore (``dist_sync``) without silent divergence.

MXNet 1.9.1's Gluon Trainer has one race on a ``dist_sync`` kvstore with
``update_on_kvstore=False``. Its first ``step`` broadcasts rank 0's weights (``kv.init``,
then a ``kv.pull`` into every worker's replicas) and then all-reduces the gradients
(``kv.pushpull``) on the same keys. The pull and the pushpull write different arrays, so the
engine is free to send them in either order; with no optimizer on the servers, the
pushpull replaces the servers' copy of each key by the summed gradient. When a worker's
pull is served after that, the worker's weights become the summed gradient, on that worker
only or on all of them, and because the workers never exchange weights again with
``update_on_kvstore=False`` the error stays for the rest of training. Nothing is raised.
``docs/distributed.md`` has the measurements.

:func:`check_trainer` says when a Trainer is exposed; :func:`init_kvstore` removes the race
by doing the broadcast before the first step and waiting for it. :func:`broadcast_masks`
makes every worker's masks equal to rank 0's.
"""
import warnings
from typing import List

import mxnet as mx
from mxnet import autograd, gluon

from . import _mx
from .errors import (
    DistributedWarning,
    ParameterStateError,
    SurgeryTypeError,
    TrainerStateError,
    and_more,
)
from .select import MASK_SUFFIX, all_params, mask_names

__all__ = ['check_trainer', 'init_kvstore', 'broadcast_masks']


def _require_trainer(trainer, where):
    if not isinstance(trainer, gluon.Trainer):
        raise SurgeryTypeError('%s expects a gluon.Trainer, got %s.'
                               % (where, type(trainer).__name__))


def _exposed(trainer):
    """Names of the parameters whose next broadcast can race, and the kvstore type."""
    kv_type = _mx.kvstore_type(_mx.trainer_kvstore(trainer)[0])
    if not _mx.is_distributed(kv_type) or 'async' in kv_type:
        return [], kv_type
    if _mx.effective_update_on_kvstore(trainer):
        return [], kv_type  # the servers own the weights: every step pulls them back
    return [p.name for p in _mx.params_to_broadcast(trainer)], kv_type


def _deferred(trainer):
    """Names of the parameters the next broadcast needs that still wait for a forward."""
    return [p.name for p in _mx.params_to_broadcast(trainer) if _mx.is_deferred(p)]


def _warn(trainer, stacklevel):
    names, kv_type = _exposed(trainer)
    if not names:
        return names
    deferred = _deferred(trainer)
    shown = and_more(names, shown=3)
    message = (
        "Trainer on kvstore '%s' with update_on_kvstore=False: with MXNet 1.9.1 its next "
        "step can start parameter(s) %s from the summed gradient instead of rank 0's "
        "weights, on some workers or all, silently and for good (the broadcast pull and the "
        "gradient pushpull of the same key are not ordered, and without an optimizer the "
        "servers store the gradient sum in place of the weight). Fix: call "
        "ps.init_kvstore(trainer) on every worker before the first trainer.step(), or use "
        "update_on_kvstore=True." % (kv_type, shown))
    if deferred:
        message += (" Parameter %s still waits for its first forward (deferred "
                    "initialisation): give the layers their input sizes (in_units, "
                    "in_channels) or run one forward outside autograd.record() first."
                    % and_more(deferred))
    warnings.warn(message, DistributedWarning, stacklevel=stacklevel + 1)
    return names


def warn_if_exposed(trainer, stacklevel=1):
    """:func:`check_trainer` for paramsurgery's own functions: ``stacklevel`` counts from
    the caller of this function, as in ``warnings.warn``."""
    return _warn(trainer, stacklevel + 1)


def check_trainer(trainer: gluon.Trainer) -> List[str]:
    """Warn when ``trainer``'s next step can silently corrupt weights on ``dist_sync``.

    The exposed configuration is exactly: a distributed synchronous kvstore (``dist_sync``,
    ``dist_sync_device``, ...), the optimizer running on the workers
    (``update_on_kvstore=False``, or ``None`` with ``MXNET_UPDATE_ON_KVSTORE=0``), and
    parameters that the next step will broadcast from rank 0 (all of them before the first
    step, or those whose initialisation was deferred until then). With
    ``update_on_kvstore=True`` (the distributed default), an async kvstore, a local kvstore
    or none, nothing is reported. No kvstore is created and nothing is changed.

    Parameters
    ----------
    trainer : Trainer
        The Trainer to inspect, before or after its first ``step``.

    Returns
    -------
    list of str
        The names of the exposed parameters (empty when the Trainer is safe). When the
        list is not empty a :class:`paramsurgery.DistributedWarning` is issued too; it
        names the fix, :func:`paramsurgery.init_kvstore`.

    Raises
    ------
    SurgeryTypeError
        ``trainer`` is not a ``gluon.Trainer``.

    Examples
    --------
    >>> import warnings
    >>> import mxnet as mx, paramsurgery as ps
    >>> from mxnet import gluon
    >>> net = gluon.nn.Dense(2, in_units=3, prefix='fc_')
    >>> net.initialize(ctx=mx.cpu(0))
    >>> trainer = gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': 0.1},
    ...                         kvstore='dist_sync', update_on_kvstore=False)
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter('always')
    ...     ps.check_trainer(trainer)
    ['fc_bias', 'fc_weight']
    >>> caught[0].category is ps.DistributedWarning
    True
    >>> safe = gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': 0.1},
    ...                      kvstore='dist_sync')          # update_on_kvstore=True
    >>> ps.check_trainer(safe)
    []
    """
    _require_trainer(trainer, 'check_trainer')
    return _warn(trainer, stacklevel=2)


def init_kvstore(trainer: gluon.Trainer) -> List[str]:
    """Remove the ``dist_sync`` first-step race: broadcast the parameters now and wait.

    For a Trainer that :func:`check_trainer` reports, this creates the kvstore and
    broadcasts rank 0's parameters to every worker and context, exactly as the first
    ``step`` would, and waits until every replica has its value, so no gradient can reach
    the servers while a worker still waits for its weights. Afterwards
    :func:`check_trainer` reports nothing and ``dist_sync`` with ``update_on_kvstore=False``
    matches a single-process run. The optimizer and its state are not touched.

    For any other Trainer it does nothing and returns ``[]``: there is no race, and on a
    distributed kvstore with ``update_on_kvstore=True`` creating the kvstore early would
    send the optimizer to the servers before ``step(batch_size)`` has set its gradient
    scale, after which MXNet refuses every step ("Possible change in the `batch_size`").

    It is a collective call (``kv.init`` waits at a barrier for every worker): call it on
    every worker at the same point, after ``initialize()`` and before the first
    ``trainer.step()``. Calling it again does nothing.

    Parameters
    ----------
    trainer : Trainer
        The Trainer whose kvstore to initialise.

    Returns
    -------
    list of str
        The names of the parameters broadcast by this call.

    Raises
    ------
    SurgeryTypeError
        ``trainer`` is not a ``gluon.Trainer``.
    ParameterStateError
        A parameter to broadcast still waits for its first forward (deferred
        initialisation); nothing was done.

    Examples
    --------
    Without a parameter server there is nothing to do (``docs/distributed.md`` runs it on
    a real ``dist_sync`` cluster):

    >>> import mxnet as mx, paramsurgery as ps
    >>> from mxnet import gluon
    >>> net = gluon.nn.Dense(2, in_units=3, prefix='fc_')
    >>> net.initialize(ctx=[mx.cpu(0), mx.cpu(1)])
    >>> trainer = gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': 0.1},
    ...                         kvstore='device', update_on_kvstore=False)
    >>> ps.init_kvstore(trainer)
    []
    """
    _require_trainer(trainer, 'init_kvstore')
    names, _ = _exposed(trainer)
    if not names:
        return []
    deferred = _deferred(trainer)
    if deferred:
        raise ParameterStateError(
            "Parameter %s has not been initialised yet (its shape waits for the first "
            "forward), so init_kvstore cannot broadcast it. Nothing was done. Fix: give the "
            "layers their input sizes (in_units, in_channels), or run one forward outside "
            "autograd.record() on every worker, then call ps.init_kvstore(trainer)."
            % and_more(deferred))
    _mx.init_trainer_kvstore(trainer)
    return names


def refuse_server_updates(trainer, params):
    """Raise ``TrainerStateError`` when ``trainer`` runs the optimizer on the parameter
    servers (a dist kvstore with ``update_on_kvstore=True``, after its first step) for one
    of ``params``: the servers' copy of the weights would silently undo any write."""
    kvstore, update_on_kvstore, initialized = _mx.trainer_kvstore(trainer)
    if not (initialized and update_on_kvstore and _mx.is_distributed(kvstore)):
        return
    mine = [p.name for p in params if _mx.trainer_index(trainer, p) is not None]
    if mine:
        raise TrainerStateError(
            "Parameter %s: its Trainer runs the optimizer on the parameter servers of "
            "kvstore '%s' (update_on_kvstore=True). The servers keep their own copy of the "
            "weights, overwrite every worker's replicas at the next step, and MXNet cannot "
            "reset a distributed kvstore, so a value written here would be silently undone. "
            "Nothing was changed. Fix: do value surgery before the first trainer.step() (the "
            "servers start from rank 0's values), or use ps.apply_mask, which changes the "
            "forward graph instead of the stored weights." % (and_more(mine), kvstore.type))


def refuse_update_masks(trainer, params):
    """Raise ``TrainerStateError`` when ``trainer`` runs, or will run once its first step
    creates the kvstore, the optimizer on the servers of a dist kvstore for one of
    ``params``: the servers' updates cannot be masked, so an update-mode mask would not hold.
    """
    if not _mx.runs_on_servers(trainer):
        return
    mine = [p.name for p in params if _mx.trainer_index(trainer, p) is not None]
    if mine:
        kv_type = _mx.kvstore_type(_mx.trainer_kvstore(trainer)[0])
        raise TrainerStateError(
            "Parameter %s: its Trainer runs the optimizer on the parameter servers of "
            "kvstore '%s' (update_on_kvstore=True%s), which update the weights with the "
            "unmasked gradient, so an update-mode mask cannot be enforced there. Nothing was "
            "changed. Fix: use mode='graph' (the mask is then part of the forward graph and "
            "needs nothing from the servers), or build the Trainer with "
            "update_on_kvstore=False." % (and_more(mine), kv_type,
                                          '' if _mx.trainer_kvstore(trainer)[2]
                                          else ', from its first step on'))


# --------------------------------------------------------------------------- distributed

# Trainer keys are parameter indices 0..n-1; mask broadcasts use keys from here on, a fresh
# block per call (a dist kvstore key cannot be initialised twice, and pushing to a key would
# run the servers' optimizer on it under update_on_kvstore=True).
_MASK_KEY_BASE = 1 << 30
_next_mask_key = [_MASK_KEY_BASE]


def broadcast_masks(kvstore, net) -> List[str]:
    """Make every worker's masks equal to rank 0's.

    For masks computed from local randomness or local data (``prune_random`` without a
    shared seed, importance scores from each worker's own batches): without this, each
    worker would train a different sparse network against the same servers. Masks computed
    from the weights (``prune_magnitude``, ``Pruner``) are already identical on every worker
    when the weights are, and need no broadcast.

    A collective call: every worker must call it at the same point, with nets that have the
    same masks (names and shapes), and the same number of times. Each call initialises
    fresh kvstore keys (from ``2**30`` on, far from the Trainer's keys ``0..n-1``) with rank
    0's masks and pulls them into every context; the servers keep one copy of the masks per
    call, so broadcast after the masks change, not at every step. Without a distributed
    kvstore it makes every context's copy equal to the first context's.

    Parameters
    ----------
    kvstore : KVStore or Trainer or None
        The job's kvstore (``mx.kv.create('dist_sync')``), or a Trainer using it.
    net : Block
        The network whose masks to broadcast.

    Returns
    -------
    list of str
        The names of the masked parameters whose masks were broadcast.

    Raises
    ------
    SurgeryTypeError
        ``kvstore`` is neither a KVStore, a Trainer with a created kvstore, nor None.

    Examples
    --------
    >>> import mxnet as mx, numpy as np, paramsurgery as ps
    >>> from mxnet.gluon import nn
    >>> net = nn.Dense(2, in_units=2, prefix='fc_')
    >>> net.initialize(ctx=[mx.cpu(0), mx.cpu(1)])
    >>> ps.apply_mask(net, 'fc_weight', np.array([[1, 0], [1, 1]], 'float32'))
    ['fc_weight']
    >>> ps.broadcast_masks(None, net)       # one process: the contexts are already equal
    ['fc_weight']
    """
    if isinstance(kvstore, gluon.Trainer):
        kv, _, initialized = _mx.trainer_kvstore(kvstore)
        if not initialized and isinstance(kv, str):
            raise SurgeryTypeError(
                "broadcast_masks: the Trainer has not created its kvstore '%s' yet. Create it "
                "yourself, kv = mx.kv.create('%s'), pass it to gluon.Trainer(..., kvstore=kv) "
                "and to broadcast_masks." % (kv, kv))
        kvstore = kv
    if kvstore is not None and not isinstance(kvstore, mx.kv.KVStore):
        raise SurgeryTypeError('broadcast_masks expects a KVStore, a Trainer or None, got %s.'
                               % type(kvstore).__name__)
    params = all_params(net)
    masks = [params[name] for name in mask_names(params)]
    names = [name[:-len(MASK_SUFFIX)] for name in mask_names(params)]
    with autograd.pause():
        # Inside autograd.record() after a forward the masks are part of the graph; the
        # copies are not a computation to differentiate.
        _broadcast(kvstore, masks)
    return names


def _broadcast(kvstore, masks):
    if kvstore is not None and _mx.is_distributed(kvstore.type):
        base = _next_mask_key[0]
        _next_mask_key[0] += len(masks)
        for i, mask in enumerate(masks):
            replicas = mask.list_data()
            kvstore.init(base + i, replicas[0])   # rank 0's value wins, after a barrier
            kvstore.pull(base + i, out=replicas, priority=-i)
        for mask in masks:
            for arr in mask.list_data():
                arr.wait_to_read()
    else:
        for mask in masks:
            first, *others = mask.list_data()
            for arr in others:
                first.copyto(arr)
