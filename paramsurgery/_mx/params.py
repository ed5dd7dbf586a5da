"""Parameters and ParameterDicts: the per-context arrays, contexts, deferred initialisation,
shapes changed in place (structural shrink), and paramsurgery's own attributes on them.

Changing a parameter's shape in place: ``_shape`` (the ``shape`` setter only fills unknown
dimensions), ``_data`` and ``_grad`` (new arrays, marked as autograd variables by
``_init_grad``), ``_var`` (the cached symbol variable carries the old ``__shape__``: tracing,
``infer_shape`` and ``export`` fail until it is dropped).

paramsurgery's own attributes (the update-mode engine, ``paramsurgery.masks.update_mode``,
installs them through these functions):

- weight Parameter: ``_paramsurgery_update_mask`` (its mask Parameter), ``_set_trainer``
  (the hook), ``_paramsurgery_trainers`` (weak references to Trainers built on it since);
- mask Parameter: ``_paramsurgery_copies`` (copies on contexts it does not live on, e.g. a
  GPU kvstore's merge buffer on ``cpu_pinned``), ``_paramsurgery_is_mask`` and
  ``_set_trainer`` (a Trainer built on the mask is watched, so it never reaches a kvstore).
"""
import contextlib
import types
import weakref

import numpy as np
from mxnet import autograd
from mxnet import ndarray as nd

from .host import is_blocked_layout

__all__ = []


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


def last_trainer(param):
    """The last Trainer built on ``param`` (Gluon remembers only that one), or None."""
    return param._trainer


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


@contextlib.contextmanager
def excluded_from_step(params):
    """Make ``Trainer.step`` pass over ``params`` as if their grad_req were 'null'.

    ``Trainer._allreduce_grads`` and ``Trainer._update`` skip a parameter whose
    ``grad_req`` is 'null': no push/pull to the kvstore (so a kvstore that updates the
    weights does not run the optimizer on it, and its momentum does not advance) and no
    local update. The private ``_grad_req`` is switched instead of the ``grad_req``
    property because the property's setter detaches the replicas and re-allocates the
    gradient buffers, which would change the parameter for good.
    """
    saved = [(param, param._grad_req) for param in params]
    try:
        for param, _ in saved:
            param._grad_req = 'null'
        yield
    finally:
        for param, req in saved:
            param._grad_req = req


def param_dict_remove(param_dict, name):
    """Remove ``name`` from a ``ParameterDict`` (which has no public way to do it)."""
    param_dict._params.pop(name, None)


def param_dict_get(param_dict, name):
    """The Parameter called ``name`` in a ``ParameterDict``, or None (no creation)."""
    return param_dict._params.get(name)


def param_stypes(param):
    """``(storage type, gradient storage type)`` of a parameter, e.g. ``('default',
    'row_sparse')`` for an ``Embedding(sparse_grad=True)`` weight."""
    return param._stype, param._grad_stype


def param_arrays_state(param):
    """Everything :func:`set_param_arrays` changes, to put back with :func:`restore_param_arrays`."""
    return (param._shape, param._data, param._grad, param._var)


def restore_param_arrays(param, state):
    """Put back the very objects saved by :func:`param_arrays_state` (bit for bit: the old
    arrays are still the marked variables bound to their old gradient buffers)."""
    param._shape, param._data, param._grad, param._var = state


def set_param_arrays(param, shape, arrays=None):
    """Give ``param`` a new shape and, when initialised, new per-context arrays (with fresh
    gradient buffers marked as autograd variables)."""
    param._shape = tuple(shape)
    param._var = None
    if arrays is not None:
        with autograd.pause():
            param._data = list(arrays)
            param._init_grad()


def initialize_with(param, arrays, contexts):
    """Initialise ``param`` with ``arrays`` (one NDArray per context of ``contexts``, used
    as they are): what Gluon's ``_init_impl`` does after ``initialize`` has filled and
    copied a fresh array, without that fill and those copies. ``param.init`` stays what
    ``initialize(force_reinit=True)`` uses later."""
    param._deferred_init = ()
    param._ctx_list = list(contexts)
    param._ctx_map = [[], []]
    for i, ctx in enumerate(param._ctx_list):
        dev_list = param._ctx_map[ctx.device_typeid & 1]
        while len(dev_list) <= ctx.device_id:
            dev_list.append(None)
        dev_list[ctx.device_id] = i
    param._data = list(arrays)
    param._init_grad()


def reset_var(param):
    param._var = None


def load_init(param, arr):
    """Set ``param`` to ``arr`` (an NDArray, or a numpy array of its dtype) on every context,
    initialising it first if needed, as ``load_parameters`` does (``Parameter._load_init``).

    An initialised parameter gets a numpy value copied straight into its replicas
    (``set_data`` writes ``replica[:] = value``): making an NDArray of it first costs a
    second copy into freshly allocated memory, slower than the copy itself. An NDArray value
    that fits is copied into each replica with one queued copy, unless a Trainer updates
    the parameter on its kvstore (``set_data`` then resets that kvstore's copy). A copy from
    numpy memory is a host write: the caller settles the engine first
    (:func:`paramsurgery._mx.host.settle`, once for all its parameters), or a queued
    predict-mode Convolution may reorder a replica while it is written."""
    if isinstance(arr, np.ndarray):
        # (a replica a predict-mode Convolution reordered into oneDNN's blocked layout
        # refuses a copy from host memory: those get an NDArray, whose copy reorders back)
        if param._data is not None and param._stype == 'default' \
                and not any(is_blocked_layout(replica) for replica in param._data):
            param.set_data(arr)  # the end of _load_init for an initialised parameter
            return
        arr = nd.array(arr, dtype=arr.dtype)
    trainer = param._trainer
    if param._data is not None and param._stype == 'default' and arr.stype == 'default' \
            and tuple(param.shape) == arr.shape and np.dtype(param.dtype) == arr.dtype \
            and not (trainer and trainer._kv_initialized and trainer._update_on_kvstore):
        # what _load_init does for an initialised parameter whose shape and dtype fit (its
        # set_data writes ``replica[:] = arr``), without the Python of its checks and of
        # NDArray indexing: one queued copy per replica (on resnet50_v1, 21 ms against 41 ms).
        # A Trainer updating on its kvstore must reset it (set_data does): that goes through
        # _load_init.
        for replica in param._data:
            arr.copyto(replica)
        return
    param._load_init(arr, None)


_UPDATE_MASK = '_paramsurgery_update_mask'


_TRAINERS = '_paramsurgery_trainers'


_COPIES = '_paramsurgery_copies'


_IS_MASK = '_paramsurgery_is_mask'


def update_mask(param):
    """The update-mode mask Parameter of ``param``, or None."""
    return param.__dict__.get(_UPDATE_MASK) if param is not None else None


def store_update_mask(param, mask, set_trainer):
    """Make ``mask`` the update-mode mask of ``param``, with ``set_trainer(param, trainer)``
    run by every Trainer built on it; ``mask`` None removes both."""
    if mask is None:
        for attr in (_UPDATE_MASK, '_set_trainer', _TRAINERS):
            param.__dict__.pop(attr, None)
        return
    param.__dict__[_UPDATE_MASK] = mask
    param.__dict__['_set_trainer'] = types.MethodType(set_trainer, param)


def class_set_trainer(param, trainer):
    """What ``param._set_trainer(trainer)`` does without an instance-level hook."""
    type(param)._set_trainer(param, trainer)


def remember_trainer(param, trainer):
    """Keep a weak reference to ``trainer`` on ``param`` (see :func:`known_trainers`)."""
    refs = param.__dict__.setdefault(_TRAINERS, [])
    if not any(ref() is trainer for ref in refs):
        refs.append(weakref.ref(trainer))


def mask_on(mask, ctx):
    """The replica of ``mask`` that lives on ``ctx``, or a cached copy there."""
    idx = context_index(mask, ctx)
    data = mask._data
    if idx is not None and idx < len(data):
        return data[idx]   # the same device (any CPU flavour shares memory with the CPU)
    copies = mask.__dict__.setdefault(_COPIES, {})
    if ctx not in copies:
        copies[ctx] = data[0].copyto(ctx)
    return copies[ctx]


def mask_changed(mask):
    """Drop the copies :func:`mask_on` made (the mask's values just changed)."""
    mask.__dict__.pop(_COPIES, None)


def known_trainers(param):
    """Every Trainer of ``param`` this process can find: the last one built on it and those
    built on it while it had an update-mode mask."""
    found = [ref() for ref in param.__dict__.get(_TRAINERS, [])]
    found.append(param._trainer)
    unique = {}
    for trainer in found:
        if trainer is not None:
            unique.setdefault(id(trainer), trainer)
    return list(unique.values())


def store_mask_mark(mask, set_trainer):
    """Mark ``mask`` as a mask Parameter, with ``set_trainer(mask, trainer)`` run by every
    Trainer built on it."""
    mask.__dict__[_IS_MASK] = True
    mask.__dict__['_set_trainer'] = types.MethodType(set_trainer, mask)


def is_mask_param(param):
    """True for a Parameter marked by :func:`store_mask_mark`."""
    return bool(param.__dict__.get(_IS_MASK, False))
