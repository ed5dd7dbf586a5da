"""Every access to private MXNet 1.9.1 attributes lives in this module, and nothing else.

The rest of the package talks to Gluon through these small functions, so that a port to
another MXNet version (2.0 renamed ``_ctx_list``/``_ctx_map`` to ``_device_list``/
``_device_map``) changes this file only. What the attributes mean is explained in
``docs/internals.md``. The complete inventory of the private names used here:

- Parameter: ``_data`` (list of leaf NDArrays, one per context), ``_grad`` (the matching
  gradient buffers or None), ``_ctx_list``, ``_ctx_map``, ``_deferred_init``, ``_trainer``,
  ``_grad_req`` (written without the property's re-allocation), ``_stype``, ``_grad_stype``.
- ParameterDict: ``_params`` (the name -> Parameter dict behind it).
- NDArray: ``_fresh_grad`` (set by ``backward()``, read and cleared by ``Trainer.step``).
- Block: ``_children``, ``_reg_params`` (the Parameter attributes its ``hybrid_forward``
  receives by name), ``_collect_params_with_prefix`` (structural names, as
  ``save_parameters`` uses them); HybridBlock: ``_active``, ``_cached_op``,
  ``_cached_op_args``, ``_clear_cached_op``; the convolution blocks: ``_op_name``,
  ``_kwargs``.
- Trainer: ``_kvstore``, ``_kvstore_params``, ``_kv_initialized``, ``_update_on_kvstore``,
  ``_param2idx``, ``_params``, ``_params_to_init``, ``_updaters``, ``_optimizer``,
  ``_contains_sparse_weight``, ``_contains_sparse_grad``, ``_init_kvstore``,
  ``_init_params``.
- KVStore: ``_updater``, ``_set_updater``.
- ``mxnet.base._LIB.MXSetNumOMPThreads`` (the C call that fixes the OpenMP thread count).
- Optimizer: ``_all_index_update_counts`` (and its alias ``_index_update_count``).
- Updater (``mxnet.optimizer``): ``states``, ``optimizer`` (public attributes, no
  accessors), and its class, which :func:`enforce_masks` changes to
  :class:`MaskingUpdater`; Optimizer: ``param_dict``, ``multi_precision``.
- The whole ``__dict__`` of Blocks, Parameters, ParameterDicts, Trainers, Optimizers,
  Updaters and learning-rate schedulers, copied and put back by the transaction (the section
  "transactions" below).
- Instance-level overrides paramsurgery installs (the section "update-mode masks" below):
  ``Parameter._set_trainer`` and ``Trainer._init_kvstore``, plus its own
  ``_paramsurgery_*`` attributes on Parameters.
"""
import contextlib
import os
import types
import weakref

import numpy as np
from mxnet import autograd
from mxnet import ndarray as nd
from mxnet import numpy as mx_np
from mxnet import optimizer as mx_optimizer
from mxnet.base import MXNetError
from mxnet.gluon.block import Block, HybridBlock
from mxnet.gluon.parameter import Parameter

from .errors import TrainerStateError, and_more

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
    # masks never reach the kvstore (see _watching_init_kvstore): nothing there to overwrite
    keyed = [(idx, p) for idx, p in keyed if idx is not None and not is_mask_param(p)]
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


# --------------------------------------------------------------------------- stale gradients


def trainer_params(trainer):
    """The Parameters a Trainer updates, in its kvstore-key order (sorted names for a dict)."""
    return list(trainer._params)


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


def is_hybridized(block):
    """True when ``block`` runs through a cached graph when called with NDArrays."""
    return isinstance(block, HybridBlock) and bool(block._active)


def cached_graph_params(block):
    """The Parameters a hybridised block's cached graph reads at every call, or None.

    A hybridised block builds its graph once (calling its children with Symbols) and then
    runs the CachedOp: the children's ``forward`` never runs again, so which parameters a
    call reads is the list of parameter inputs of that graph (``_cached_op_args``).
    """
    args = getattr(block, '_cached_op_args', None)
    if not args or getattr(block, '_cached_op', None) is None:
        return None
    return [param for is_data, param in args if not is_data and isinstance(param, Parameter)]

# --------------------------------------------------------------------------- blocks

def block_children(block):
    """The direct child blocks of ``block``."""
    return list(block._children.values())


def block_params(block):
    """``{attribute name: Parameter}`` that ``block`` passes to its ``hybrid_forward``."""
    return dict(block._reg_params)


def registered_params_live(block):
    """The live ``{attribute: Parameter}`` dict behind :func:`block_params` (to edit)."""
    return block._reg_params


def set_registered_params(block, params):
    """Replace the ``{attribute: Parameter}`` dict behind :func:`block_params`."""
    block.__dict__['_reg_params'] = params


def walk_blocks(block):
    """``block`` and all its descendants, depth first, each once."""
    seen, order, stack = set(), [], [block]
    while stack:
        blk = stack.pop()
        if id(blk) in seen:
            continue
        seen.add(id(blk))
        order.append(blk)
        stack.extend(reversed(block_children(blk)))
    return order


def clear_cached_graphs(block):
    """Drop the cached graph and CachedOp of ``block`` and every hybrid descendant.

    The next forward rebuilds them from ``hybrid_forward`` (Gluon does the same in
    ``hybridize()`` and ``cast()``).
    """
    for blk in walk_blocks(block):
        if isinstance(blk, HybridBlock):
            blk._clear_cached_op()


def structural_names(block):
    """``{structural name: Parameter}`` exactly as ``save_parameters`` names them."""
    return block._collect_params_with_prefix()


def own_structural_names(block, prefix=''):
    """:func:`structural_names` as ``block``'s class computes them, ignoring any override
    installed on the instance."""
    return type(block)._collect_params_with_prefix(block, prefix)


def class_overrides_structural_names(block):
    """True when ``block``'s class has its own structural naming (the fused RNN layers)."""
    return type(block)._collect_params_with_prefix is not Block._collect_params_with_prefix


def set_structural_names(block, method):
    """Install (``method`` a bound method) or remove (None) an instance-level override of
    the structural naming."""
    if method is None:
        block.__dict__.pop('_collect_params_with_prefix', None)
    else:
        block.__dict__['_collect_params_with_prefix'] = method


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


def conv_op_name(block):
    """The operator a convolution block runs (``'Convolution'``, ``'Deconvolution'``), or
    None for other blocks."""
    return getattr(block, '_op_name', None)


def conv_kwargs(block):
    """The operator arguments a convolution block passes (kernel, stride, layout, ...)."""
    return dict(block._kwargs)


# --------------------------------------------------------------------------- distributed kvstore


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


# --------------------------------------------------------------------------- optimizer state

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


# --------------------------------------------------------------------------- structural shrink
#
# Changing a parameter's shape in place: ``_shape`` (the ``shape`` setter only fills unknown
# dimensions), ``_data`` and ``_grad`` (new arrays, marked as autograd variables by
# ``_init_grad``), ``_var`` (the cached symbol variable carries the old ``__shape__``: tracing,
# ``infer_shape`` and ``export`` fail until it is dropped). Blocks keep their channel counts
# in private attributes that their ``hybrid_forward`` passes to the operators. A Trainer's
# optimizer states live in its Updaters (one per context) or, with ``update_on_kvstore``, in
# the kvstore's Updater; the kvstore itself holds buffers of the old shapes.

_BLOCK_ATTRS = ('_channels', '_in_channels', '_units', '_in_units', 'in_channels')


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


def is_conv(block):
    from mxnet.gluon.nn.conv_layers import _Conv
    return isinstance(block, _Conv) and block._op_name == 'Convolution'


def is_dense(block):
    from mxnet.gluon.nn import Dense
    return isinstance(block, Dense)


def is_embedding(block):
    from mxnet.gluon.nn import Embedding
    return isinstance(block, Embedding)


def is_batchnorm(block):
    from mxnet.gluon.nn.basic_layers import _BatchNorm
    return isinstance(block, _BatchNorm)


def block_attrs_state(block):
    """The channel-count attributes of ``block`` (to restore with :func:`restore_block_attrs`)."""
    saved = {k: block.__dict__[k] for k in _BLOCK_ATTRS if k in block.__dict__}
    kwargs = block.__dict__.get('_kwargs')
    return saved, (dict(kwargs) if isinstance(kwargs, dict) else None)


def restore_block_attrs(block, state):
    saved, kwargs = state
    for k in _BLOCK_ATTRS:
        if k in saved:
            block.__dict__[k] = saved[k]
        else:
            block.__dict__.pop(k, None)
    if kwargs is not None:
        block.__dict__['_kwargs'].clear()
        block.__dict__['_kwargs'].update(kwargs)


def is_depthwise(block):
    """A Convolution block whose every group is one input and one output channel."""
    groups = block._kwargs.get('num_group', 1)
    return groups > 1 and groups == block._channels


def is_deconv(block):
    from mxnet.gluon.nn.conv_layers import _Conv
    return isinstance(block, _Conv) and block._op_name == 'Deconvolution'


def resize_block(block, depthwise):
    """Make a Gluon layer's channel counts agree with its (already resized) parameters."""
    if is_deconv(block):
        # the weight of a transposed convolution is (in, out / groups, kernel...)
        shape = block._reg_params['weight'].shape
        if depthwise:
            block._kwargs['num_group'] = shape[0]
        block._channels = shape[1] * block._kwargs.get('num_group', 1)
        block._kwargs['num_filter'] = block._channels
        if block._in_channels:
            block._in_channels = shape[0]
    elif is_conv(block):
        shape = block._reg_params['weight'].shape
        block._channels = shape[0]
        block._kwargs['num_filter'] = shape[0]
        if depthwise:
            block._kwargs['num_group'] = shape[0]
            if block._in_channels:
                block._in_channels = shape[0]
        elif shape[1]:
            block._in_channels = shape[1] * block._kwargs.get('num_group', 1)
    elif is_dense(block):
        shape = block._reg_params['weight'].shape
        block._units = shape[0]
        if shape[1]:
            block._in_units = shape[1]
    elif is_batchnorm(block):
        block.in_channels = block._reg_params['gamma'].shape[0]
    elif is_embedding(block):
        block._kwargs['output_dim'] = block._reg_params['weight'].shape[1]


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
# --------------------------------------------------------------------------- update-mode masks
#
# An update-mode mask (``apply_mask(..., mode='update')``) keeps the stored weight at zero under
# the mask: the weight is multiplied by it once, and every optimizer update that the
# parameter's Trainers run in this process masks the gradient first. Every update goes
# through an ``mxnet.optimizer.Updater``: one per context in ``Trainer._updaters``
# (``update_on_kvstore`` False, or no kvstore), or the one a local/device kvstore calls
# inside ``push`` (``update_on_kvstore`` True; created by ``kv.set_optimizer`` in
# ``Trainer._init_kvstore`` at the first step). Those Updater objects get the class
# :class:`MaskingUpdater` (same object, same states: the kvstore's C callback, the Trainer
# and ``save_states``/``load_states`` keep working on it). A Trainer is watched through an
# instance-level ``_init_kvstore`` (the first thing every ``step``, ``update`` and
# ``allreduce_grads`` runs while its kvstore is not created yet, also after ``set_data``
# reset it), so a kvstore created later is covered too; a Trainer built after the mask is
# found by an instance-level ``Parameter._set_trainer`` on the weight, which every
# ``Trainer.__init__`` calls. paramsurgery's own attributes on MXNet objects:
#
# - weight Parameter: ``_paramsurgery_update_mask`` (its mask Parameter), ``_set_trainer``
#   (the hook), ``_paramsurgery_trainers`` (weak references to Trainers built on it since);
# - mask Parameter: ``_paramsurgery_copies`` (copies on contexts it does not live on, e.g. a
#   GPU kvstore's merge buffer on ``cpu_pinned``), ``_paramsurgery_is_mask`` and
#   ``_set_trainer`` (a Trainer built on the mask is watched, so it never reaches a kvstore);
# - Trainer: ``_init_kvstore`` (the watch).

_UPDATE_MASK = '_paramsurgery_update_mask'
_TRAINERS = '_paramsurgery_trainers'
_COPIES = '_paramsurgery_copies'
_IS_MASK = '_paramsurgery_is_mask'

#: Optimizers that leave an entry at exactly zero when its weight, gradient and state are
#: zero (checked for each in tests/test_mask_modes.py, with weight decay, momentum, gradient
#: clipping and multi_precision): masking the gradient is enough. Any other optimizer (SGLD
#: adds noise, Adamax divides 0 by 0, user-defined ones are unknown) also gets its weight,
#: and fp32 master copy, masked after each update.
ZERO_PRESERVING = (mx_optimizer.SGD, mx_optimizer.NAG, mx_optimizer.Adam,
                   mx_optimizer.AdaGrad, mx_optimizer.AdaDelta, mx_optimizer.RMSProp,
                   mx_optimizer.Nadam, mx_optimizer.Ftrl, mx_optimizer.FTML,
                   mx_optimizer.Signum, mx_optimizer.LAMB, mx_optimizer.LARS,
                   mx_optimizer.LBSGD, mx_optimizer.ccSGD)


def _as_np(arr):
    """A numpy-frontend view of ``arr`` (no copy): ``mxnet.numpy`` operators multiply
    mixed dtypes (a float32 weight by a uint8 mask), the legacy ones do not."""
    return arr if isinstance(arr, mx_np.ndarray) else arr.as_np_ndarray()


def multiply_inplace(arr, factor):
    """``arr *= factor`` for an NDArray ``factor`` of the same shape and any numeric dtype
    (one elementwise pass, nothing allocated)."""
    out = _as_np(arr)
    mx_np.multiply(out, _as_np(factor), out=out)


def zero_where_masked(arr, mask):
    """``arr = where(mask != 0, arr, 0)``: exactly 0 under the mask even where ``arr`` holds
    NaN or inf (which a multiplication by 0 would keep)."""
    kept = mx_np.where(_as_np(mask), _as_np(arr), 0)
    out = _as_np(arr)
    out[:] = kept.astype(out.dtype, copy=False)


def update_mask(param):
    """The update-mode mask Parameter of ``param``, or None."""
    return param.__dict__.get(_UPDATE_MASK) if param is not None else None


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


def _recording_set_trainer(self, trainer):
    type(self)._set_trainer(self, trainer)
    if trainer is not None and update_mask(self) is not None:
        refs = self.__dict__.setdefault(_TRAINERS, [])
        if not any(ref() is trainer for ref in refs):
            refs.append(weakref.ref(trainer))
        watch_trainer(trainer)


def set_update_mask(param, mask):
    """Make ``mask`` (a Parameter) the update-mode mask of ``param``; None removes it."""
    if mask is None:
        for attr in (_UPDATE_MASK, '_set_trainer', _TRAINERS):
            param.__dict__.pop(attr, None)
        return
    param.__dict__[_UPDATE_MASK] = mask
    param.__dict__['_set_trainer'] = types.MethodType(_recording_set_trainer, param)


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


class MaskingUpdater(mx_optimizer.Updater):
    """An ``mxnet.optimizer.Updater`` that masks the gradient of every parameter with an
    update-mode mask before the update (and, for optimizers not in
    :data:`ZERO_PRESERVING`, the weight and its fp32 master copy after it).

    Installed by changing the class of an existing Updater, so that every holder of the
    object (the Trainer, a kvstore's C callback) keeps its states and sees the change.
    Parameters are found through ``optimizer.param_dict`` (index -> Parameter), which
    ``gluon.Trainer`` sets and keeps up to date (also after ``load_states``).
    """

    def __call__(self, index, grad, weight):
        many = isinstance(index, (list, tuple))
        indices, grads, weights = (index, grad, weight) if many else ([index], [grad], [weight])
        param_dict = getattr(self.optimizer, 'param_dict', None) or {}
        masked = []
        for idx, g, w in zip(indices, grads, weights):
            mask = update_mask(param_dict.get(idx))
            if mask is not None:
                m = mask_on(mask, g.context)
                multiply_inplace(g, m)
                masked.append((idx, w, m))
        mx_optimizer.Updater.__call__(self, index, grad, weight)
        if masked and type(self.optimizer) not in ZERO_PRESERVING:
            for idx, w, m in masked:
                zero_where_masked(w, m)
                for master in _master_copies([self], idx):
                    zero_where_masked(master, m)


def _enforce_on(updater):
    if updater is None or isinstance(updater, MaskingUpdater):
        return
    if type(updater) is mx_optimizer.Updater:
        updater.__class__ = MaskingUpdater


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


def runs_on_servers(trainer):
    """True when ``trainer`` runs (or will run) the optimizer on a dist kvstore's servers."""
    return is_distributed(kvstore_type(trainer_kvstore(trainer)[0])) and \
        effective_update_on_kvstore(trainer)


def _refuse_at_kvstore_creation(trainer):
    names = [p.name for p in trainer._params if update_mask(p) is not None]
    if names and runs_on_servers(trainer):
        raise TrainerStateError(
            "Parameter %s has an update-mode mask (ps.apply_mask(..., mode='update')), but "
            "this Trainer runs the optimizer on the servers of kvstore '%s' "
            "(update_on_kvstore=True), where the gradient cannot be masked: the masked "
            "entries would train. Nothing was changed. Fix: use mode='graph' for these "
            "masks, or update_on_kvstore=False." % (and_more(names),
                                                    kvstore_type(trainer_kvstore(trainer)[0])))


def _watching_init_kvstore(self):
    _refuse_at_kvstore_creation(self)
    type(self)._init_kvstore(self)
    # the next thing every step runs is _init_params, which hands each listed parameter to
    # the kvstore: a dist kvstore's server dies on a uint8 update-mode mask, and no mask is
    # trainable state (paramsurgery writes every replica itself)
    self._params_to_init = [p for p in self._params_to_init if not is_mask_param(p)]
    enforce_masks(self)


def _watching_mask_set_trainer(self, trainer):
    type(self)._set_trainer(self, trainer)
    if trainer is not None:
        watch_trainer(trainer)


def mark_mask_param(mask):
    """Mark ``mask`` (a mask Parameter, either mode) so that every Trainer built on it is
    watched and keeps it out of its kvstore."""
    mask.__dict__[_IS_MASK] = True
    mask.__dict__['_set_trainer'] = types.MethodType(_watching_mask_set_trainer, mask)


def is_mask_param(param):
    """True for a Parameter marked by :func:`mark_mask_param`."""
    return bool(param.__dict__.get(_IS_MASK, False))


def watch_trainer(trainer):
    """Enforce update-mode masks in ``trainer`` now and whenever it (re)creates its kvstore."""
    if not isinstance(trainer.__dict__.get('_init_kvstore'), types.MethodType):
        trainer.__dict__['_init_kvstore'] = types.MethodType(_watching_init_kvstore, trainer)
    if getattr(trainer, '_kv_initialized', False) or hasattr(trainer, '_updaters'):
        enforce_masks(trainer)


def enforce_masks(trainer):
    """Give every Updater of ``trainer`` in this process the class :class:`MaskingUpdater`."""
    for updater in process_updaters(trainer):
        _enforce_on(updater)


def enforcement_gaps(param):
    """Why the update-mode mask of ``param`` may not be enforced: a list of messages."""
    gaps = []
    for trainer in known_trainers(param):
        if trainer_index(trainer, param) is None:
            continue
        if runs_on_servers(trainer):
            gaps.append("its Trainer runs the optimizer on the servers of a dist kvstore "
                        "(update_on_kvstore=True), which cannot mask the gradient")
            continue
        if not isinstance(trainer.__dict__.get('_init_kvstore'), types.MethodType):
            gaps.append('a Trainer of it is not watched by paramsurgery (its kvstore, once '
                        'created, would run unmasked updates)')
        if not trainer._kv_initialized:
            continue  # its first step creates the kvstore and installs the masking
        kv_updater = _local_kv_updater(trainer)
        used = [kv_updater] if kv_updater is not None else \
            ([] if trainer._kvstore is not None and trainer._update_on_kvstore
             else list(trainer._updaters))
        if any(not isinstance(u, MaskingUpdater) for u in used if u is not None):
            gaps.append('an Updater of its Trainer does not mask the gradient (it was '
                        'replaced after the mask was applied)')
    return gaps


def state_arrays(updater, idx, shape):
    """``[(array, is_master)]``: the optimizer state arrays of key ``idx`` in ``updater``
    that have the weight's shape (momentum, Adam moments, fp32 master copy...)."""
    state = updater.states.get(idx)
    if state is None:
        return []
    masters = set(id(m) for m in _master_copies([updater], idx))
    found, stack = [], [state]
    while stack:
        item = stack.pop()
        if isinstance(item, (tuple, list)):
            stack.extend(item)
        elif isinstance(item, nd.NDArray) and tuple(item.shape) == tuple(shape) \
                and item.stype == 'default':
            found.append((item, id(item) in masters))
    return found


def _optimizer_states(trainer, param):
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


def zero_states_under(trainers, param, mask):
    """Zero every optimizer state of ``param`` (not its fp32 master copy) in every Updater
    of ``trainers`` in this process where ``mask`` (a Parameter of ``param``'s shape) is 0."""
    for trainer in trainers:
        for arr in _optimizer_states(trainer, param):
            with autograd.pause():
                m = mask_on(mask, arr.context)
                alive = mx_np.not_equal(_as_np(m), 0)
                multiply_inplace(arr, alive)


# --------------------------------------------------------------------------- transactions
#
# A transaction (paramsurgery._snapshot.Transaction) puts back what Gluon objects hold in
# their ``__dict__``: a Block's registered parameters, children, mask registry and cached
# graph; a Parameter's arrays, shape, symbol variable and last Trainer; a Trainer's kvstore,
# Updaters and parameters still to broadcast; an Optimizer's counters and multipliers. Gluon
# mutates several of those containers in place (``_reg_params``, ``_params_to_init``, a
# ParameterDict's ``_params``), so their contents are copied too, one level deep.

def object_state(obj):
    """The attributes of ``obj``, and the contents of those that are dicts or lists."""
    attrs = dict(obj.__dict__)
    contents = {k: (v.copy() if isinstance(v, dict) else list(v))
                for k, v in attrs.items() if isinstance(v, (dict, list))}
    return attrs, contents


def restore_object_state(obj, state):
    """Put back what :func:`object_state` returned: the same attribute objects, with the
    contents they had."""
    attrs, contents = state
    obj.__dict__.clear()
    obj.__dict__.update(attrs)
    for k, saved in contents.items():
        live = attrs[k]
        if isinstance(live, dict):
            live.clear()
            live.update(saved)
        else:
            live[:] = saved


def updater_class(updater):
    return type(updater)


def set_updater_class(updater, cls):
    """Undo :func:`enforce_masks` (or redo it): the class decides whether it masks."""
    updater.__class__ = cls


def kvstore_copies(trainer):
    """``{key: NDArray}``: a copy of the weight (or BatchNorm statistic) that a local/device
    kvstore keeps for each parameter when it runs the optimizer (``update_on_kvstore``); the
    next ``step`` pulls the weights from there. Empty when there is no such copy."""
    kvstore, on_kv, initialized = trainer_kvstore(trainer)
    if not initialized or kvstore is None or not on_kv or is_distributed(kvstore):
        return {}
    pending = set(id(p) for p in trainer._params_to_init)
    copies = {}
    for idx, param in enumerate(trainer._params):
        if id(param) in pending or param._data is None or param._stype != 'default':
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


# --------------------------------------------------------------------------- ONNX exporter
# mx.onnx.export_model takes no opset and only writes a file (with the parameters also listed
# as graph inputs); its converter class builds the GraphProto at a chosen opset.

def onnx_graph(symbol, params, shapes, onnx_types, opset):
    """The ONNX GraphProto of ``symbol`` as ``mx.onnx.export_model`` builds it, at ``opset``."""
    from mxnet.onnx.mx2onnx._export_onnx import MXNetGraph
    return MXNetGraph().create_onnx_graph_proto(symbol, params, shapes, onnx_types,
                                                opset_version=opset, dynamic=False)


def load_init(param, arr):
    """Set ``param`` to ``arr`` on every context, initialising it first if needed, as
    ``load_parameters`` does (``Parameter._load_init``)."""
    param._load_init(arr, None)


def reset_optimizer_state(trainer, param):
    """Zero the optimizer state of ``param`` (not its fp32 master copy) in every Updater of
    ``trainer`` in this process, and reset its update counts to 0, so that Adam's bias
    correction and the learning-rate schedule restart for it."""
    idx = trainer_index(trainer, param)
    if idx is None:
        return
    for arr in _optimizer_states(trainer, param):
        with autograd.pause():
            arr[:] = 0
    optimizer = trainer._optimizer
    for counts in optimizer._all_index_update_counts.values():
        if idx in counts:
            counts[idx] = 0
    optimizer.num_update = max([0] + [c for counts in optimizer._all_index_update_counts.values()
                                      for c in counts.values()])


# --------------------------------------------------------------------------- memory layout


def is_blocked_layout(arr):
    """True when ``arr`` holds its values in an MKLDNN blocked layout.

    A Convolution run in predict mode reorders its weight into such a layout in place.
    There is no Python accessor for the layout; exporting a DLPack view is refused for
    exactly these arrays ("We can't generate TBlob for MKLDNN data"), which tells them apart
    without copying anything.
    """
    try:
        nd.to_dlpack_for_read(arr)
    except MXNetError as err:
        return 'MKLDNN' in str(err) or 'DNNL' in str(err)
    return False

# --------------------------------------------------------------------------- threads

class _CpuContext:
    """ctypes layout of mxnet::Context (DeviceType, dev_id), built on first use."""
    struct = None


def _on_cpu_worker(fn):
    """Run ``fn()`` (no MXNet calls in it) on the engine's worker thread of ``cpu(0)`` and
    return its result. OpenMP thread counts are per thread (omp_set_num_threads), and
    operators on CPU run on that worker, not on the thread that calls the C API: pushing a
    callback to the engine is the only way 1.9.1 offers to reach it."""
    import ctypes

    import mxnet as mx
    if _CpuContext.struct is None:
        class Context(ctypes.Structure):
            _fields_ = [('dev_type', ctypes.c_int32), ('dev_id', ctypes.c_int32)]
        _CpuContext.struct = Context
    result = []
    callback = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)(
        lambda run_ctx, param: result.append(fn()))
    ctx = _CpuContext.struct(1, 0)       # Context::kCPU, dev_id 0: what mx.cpu() runs on
    mx.base.check_call(mx.base._LIB.MXEnginePushSyncND(
        callback, None, None, ctypes.byref(ctx), None, 0, None, 0, None, 0, None))
    mx.nd.waitall()                      # the callback has run; it may be freed now
    return result[0]


def omp_threads():
    """The OpenMP thread count MXNet's CPU operators run with now (the engine worker's)."""
    lib = _omp_lib()
    return _on_cpu_worker(lambda: int(lib.omp_get_max_threads()))


def _omp_lib():
    import mxnet as mx
    # dlsym on libmxnet's handle also searches its dependencies: the OpenMP runtime it uses
    return mx.base._LIB


def set_omp_threads(threads):
    """Fix the OpenMP thread count of the CPU operators MXNet runs from now on; return the
    count they ran with before. MXSetNumOMPThreads (1.9.1's only setter) sets the calling
    thread's count, which operators never read: they run on the engine's worker thread, so
    the count is set there (and on the calling thread, for operators a caller runs itself).
    MXNet's own kernels read the count only when OMP_NUM_THREADS is set (else they keep the
    engine's start-up count); oneDNN's read it always."""
    import ctypes

    import mxnet as mx
    lib = _omp_lib()
    mx.base._LIB.MXSetNumOMPThreads(ctypes.c_int(int(threads)))

    def swap():
        before = int(lib.omp_get_max_threads())
        lib.omp_set_num_threads(ctypes.c_int(int(threads)))
        return before
    return _on_cpu_worker(swap)
