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
import contextlib
import types

import numpy as np
import mxnet as mx
from mxnet import autograd, ndarray as nd
from mxnet import optimizer as mx_optimizer
from mxnet.gluon.block import HybridBlock
from mxnet.gluon.parameter import Parameter

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


def registered_params(block):
    """The parameters a block's own forward reads (``_reg_params``: its Parameter attributes)."""
    return list(block._reg_params.values())


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

# --------------------------------------------------------------------------- blocks and masks
#
# A mask is a grad_req 'null' Parameter registered on the block that owns the weight, under
# the attribute name ``<attr>_mask``. The block's ``hybrid_forward`` is wrapped at the
# instance level so that it receives ``weight * mask`` under the name ``weight``; Gluon's
# ``HybridBlock.forward`` (and the symbolic pass that builds cached graphs) passes every entry
# of ``_reg_params`` to ``hybrid_forward`` by attribute name, so the mask arrives as a keyword
# argument that the wrapper consumes. The wrapper state lives in the block's ``__dict__``
# under the names below, so ``copy.deepcopy`` and pickling carry it along.

MASKS_ATTR = '_paramsurgery_masks'            # {weight attribute: mask attribute}
_INNER_FORWARD = '_paramsurgery_inner_forward'  # an instance-level hybrid_forward we wrapped


def block_children(block):
    """The direct child blocks of ``block``."""
    return list(block._children.values())


def block_params(block):
    """``{attribute name: Parameter}`` that ``block`` passes to its ``hybrid_forward``."""
    return dict(block._reg_params)


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
    from mxnet.gluon import HybridBlock
    for blk in walk_blocks(block):
        if isinstance(blk, HybridBlock):
            blk._clear_cached_op()


def structural_names(block):
    """``{structural name: Parameter}`` exactly as ``save_parameters`` names them."""
    return block._collect_params_with_prefix()


def param_stypes(param):
    """``(storage type, gradient storage type)`` of a parameter, e.g. ``('default',
    'row_sparse')`` for an ``Embedding(sparse_grad=True)`` weight."""
    return param._stype, param._grad_stype


def mask_registry(block):
    """``{weight attribute: mask attribute}`` of the masks registered on ``block``."""
    return dict(block.__dict__.get(MASKS_ATTR, {}))


def _masked_hybrid_forward(self, F, *args, **kwargs):
    """``hybrid_forward`` of a block with masks: the weights it receives are ``w * mask``."""
    from mxnet.util import is_np_array
    for attr, mask_attr in self.__dict__[MASKS_ATTR].items():
        mask = kwargs.pop(mask_attr, None)
        weight = kwargs[attr]
        if mask is None:
            # hybrid_forward called by hand with the block's own parameters only
            param = self._reg_params[mask_attr]
            mask = param.var() if isinstance(weight, mx.sym.Symbol) \
                else param.data(weight.context)
        kwargs[attr] = F.np.multiply(weight, mask) if is_np_array() \
            else F.elemwise_mul(weight, mask)
    if needs_deconv_workaround(self) and 'weight' in self.__dict__[MASKS_ATTR]:
        F = _DeconvAsConv(F, tuple(self._reg_params['weight'].shape))
    inner = self.__dict__.get(_INNER_FORWARD)
    if inner is not None:
        return inner(F, *args, **kwargs)
    return type(self).hybrid_forward(self, F, *args, **kwargs)


def _masked_collect_params_with_prefix(self, prefix=''):
    """For blocks that override ``_collect_params_with_prefix`` (the fused RNN layers map
    ``l0_i2h_weight`` to ``_unfused.0.i2h_weight`` with a regular expression that a mask
    attribute would break): run the block's own naming without the masks, then name each
    mask after its weight's structural name."""
    masks = self.__dict__[MASKS_ATTR]
    hidden = set(masks.values())
    registered = self.__dict__['_reg_params']
    self.__dict__['_reg_params'] = {k: v for k, v in registered.items() if k not in hidden}
    try:
        names = type(self)._collect_params_with_prefix(self, prefix)
    finally:
        self.__dict__['_reg_params'] = registered
    by_param = {id(param): name for name, param in names.items()}
    for attr, mask_attr in masks.items():
        base = by_param.get(id(registered[attr]))
        if base is not None:
            names[base + '_mask'] = registered[mask_attr]
    return names


def register_mask(block, attr, mask_attr, mask):
    """Register ``mask`` on ``block`` as attribute ``mask_attr`` (so it is part of
    ``collect_params()`` and ``save_parameters``) and make ``hybrid_forward`` use
    ``<attr> * <mask_attr>``. The caller clears cached graphs afterwards."""
    from mxnet.gluon import Block
    setattr(block, mask_attr, mask)            # Block.__setattr__ fills _reg_params
    block.params.update({mask.name: mask})     # collect_params() reads the ParameterDict
    registry = block.__dict__.get(MASKS_ATTR)
    if registry is None:
        registry = {}
        inner = block.__dict__.get('hybrid_forward')
        if inner is not None:
            block.__dict__[_INNER_FORWARD] = inner
        block.__dict__[MASKS_ATTR] = registry
        block.__dict__['hybrid_forward'] = types.MethodType(_masked_hybrid_forward, block)
        if type(block)._collect_params_with_prefix is not Block._collect_params_with_prefix:
            block.__dict__['_collect_params_with_prefix'] = types.MethodType(
                _masked_collect_params_with_prefix, block)
    registry[attr] = mask_attr


def unregister_mask(block, attr):
    """Undo :func:`register_mask` for the weight attribute ``attr`` of ``block``."""
    registry = block.__dict__[MASKS_ATTR]
    mask_attr = registry.pop(attr)
    mask = block._reg_params.pop(mask_attr)
    block.__dict__.pop(mask_attr, None)
    if block.params._params.get(mask.name) is mask:
        del block.params._params[mask.name]
    if not registry:
        del block.__dict__[MASKS_ATTR]
        del block.__dict__['hybrid_forward']
        block.__dict__.pop('_collect_params_with_prefix', None)
        inner = block.__dict__.pop(_INNER_FORWARD, None)
        if inner is not None:
            block.__dict__['hybrid_forward'] = inner


def original_hybrid_forward(block):
    """The ``hybrid_forward`` that ``block`` runs without paramsurgery's mask wrapper."""
    inner = block.__dict__.get(_INNER_FORWARD)
    if inner is not None:
        return inner
    own = block.__dict__.get('hybrid_forward')
    if own is not None and MASKS_ATTR not in block.__dict__:
        return own
    return getattr(type(block), 'hybrid_forward')


# --------------------------------------------------------------------------- MKLDNN layout

#: Whether :func:`restore_default_layout` does anything (bench/mask_overhead.py switches it
#: off to measure what the blocked layout costs).
RESTORE_DEFAULT_LAYOUT = True


def is_blocked_layout(arr):
    """True when ``arr`` holds its values in an MKLDNN blocked layout.

    A Convolution run in predict mode reorders its weight into such a layout in place.
    There is no Python accessor for the layout; exporting a DLPack view is refused for
    exactly these arrays ("We can't generate TBlob for MKLDNN data"), which tells them apart
    without copying anything.
    """
    try:
        nd.to_dlpack_for_read(arr)
    except mx.base.MXNetError as err:
        return 'MKLDNN' in str(err) or 'DNNL' in str(err)
    return False


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
        for arr in param._data:
            if is_blocked_layout(arr):
                copy = arr.copy()          # copies come out in the default layout
                arr[:] = 0
                copy.copyto(arr)
                changed += 1
    return changed


# --------------------------------------------------------------------------- Deconvolution
#
# MXNet 1.9.1's MKLDNN Deconvolution backward fails ("could not execute a primitive",
# reported asynchronously at the next read, sometimes a crash) whenever the gradient of its
# weight input is not written straight into a leaf's gradient buffer: a computed weight
# (``weight * mask``, ``weight.copy()``) or a weight used twice. 1D, 2D and 3D transposed
# convolutions are all affected; a plain leaf weight works. A masked transposed convolution
# is therefore computed as the equivalent Convolution (zeros inserted between input samples,
# padded, kernel flipped and its in/out channels swapped), whose backward handles computed
# weights. Same values and gradients; it costs about stride**ndim times the multiply-adds.

_MKLDNN = None


def mkldnn_enabled():
    global _MKLDNN  # pylint: disable=global-statement
    if _MKLDNN is None:
        try:
            features = mx.runtime.Features()
            _MKLDNN = any(features.is_enabled(name) for name in ('MKLDNN', 'ONEDNN')
                          if name in features)
        except Exception:  # pylint: disable=broad-except
            _MKLDNN = True  # unknown build: take the path that works everywhere
    return _MKLDNN


def is_transposed_conv(block):
    """True for Gluon's Conv1D/2D/3DTranspose (``_Conv`` blocks running Deconvolution)."""
    return getattr(block, '_op_name', None) in ('Deconvolution', 'deconvolution')


def transposed_conv_layout(block):
    """The layout string of a transposed-convolution block, e.g. ``'NCHW'``."""
    return block._kwargs.get('layout') or 'NC' + 'DHW'[-len(block._kwargs['kernel']):]


def needs_deconv_workaround(block):
    return is_transposed_conv(block) and mkldnn_enabled()


class _DeconvAsConv:
    """Stands in for ``F`` (the ndarray or symbol module) in a transposed convolution's
    ``hybrid_forward``: ``Deconvolution`` is computed with ``Convolution``, every other
    operator is the module's own."""

    def __init__(self, F, weight_shape):
        self._F = F
        self._weight_shape = weight_shape

    def __getattr__(self, name):
        return getattr(self._F, name)

    def Deconvolution(self, data, weight, bias=None, **kwargs):  # pylint: disable=invalid-name
        return deconvolution_as_convolution(self._F, data, weight, bias,
                                            weight_shape=self._weight_shape, **kwargs)


def _insert_zeros(F, x, axis, ndim, stride):
    """Put ``stride - 1`` zeros between consecutive entries along ``axis``."""
    if stride == 1:
        return x
    x = F.expand_dims(x, axis=axis + 1)
    x = F.concat(x, *([F.zeros_like(x)] * (stride - 1)), dim=axis + 1)
    x = F.reshape(x, shape=(0,) * axis + (-3,) + (0,) * (ndim - axis - 1))
    return F.slice_axis(x, axis=axis, begin=0, end=-(stride - 1))


def _pad_axis(F, x, axis, before, after):
    """Zero-pad (positive) or crop (negative) ``x`` along ``axis``."""
    if before < 0:
        x = F.slice_axis(x, axis=axis, begin=-before, end=None)
    if after < 0:
        x = F.slice_axis(x, axis=axis, begin=0, end=after)
    if before > 0 or after > 0:
        zero = F.zeros_like(F.slice_axis(x, axis=axis, begin=0, end=1))
        parts = [x]
        if before > 0:
            parts.insert(0, F.repeat(zero, repeats=before, axis=axis))
        if after > 0:
            parts.append(F.repeat(zero, repeats=after, axis=axis))
        x = F.concat(*parts, dim=axis)
    return x


def deconvolution_as_convolution(F, data, weight, bias=None, *, weight_shape, kernel,
                                 stride=(), dilate=(), pad=(), adj=(), num_filter,
                                 num_group=1, no_bias=False, layout=None, name=None,
                                 **ignored):  # pylint: disable=unused-argument
    """``F.Deconvolution(data, weight, bias, ...)`` computed with ``F.Convolution``
    (channel-first layouts). ``ignored`` takes the cuDNN/workspace hints."""
    n = len(kernel)
    stride = tuple(stride) or (1,) * n
    dilate = tuple(dilate) or (1,) * n
    pad = tuple(pad) or (0,) * n
    adj = tuple(adj) or (0,) * n
    ndim = n + 2
    x, conv_pad = data, []
    for i in range(n):
        axis = 2 + i
        x = _insert_zeros(F, x, axis, ndim, stride[i])
        before = dilate[i] * (kernel[i] - 1) - pad[i]
        after = before + adj[i]
        both = max(0, min(before, after))   # symmetric part: the Convolution pads it
        conv_pad.append(both)
        x = _pad_axis(F, x, axis, before - both, after - both)
    in_channels, out_per_group = weight_shape[0], weight_shape[1]
    groups = num_group
    w = F.reshape(weight, shape=(groups, in_channels // groups, out_per_group) + tuple(kernel))
    w = F.swapaxes(w, 1, 2)
    w = F.reshape(w, shape=(groups * out_per_group, in_channels // groups) + tuple(kernel))
    w = F.reverse(w, axis=tuple(range(2, ndim)))
    args = [x, w] if no_bias or bias is None else [x, w, bias]
    return F.Convolution(*args, kernel=tuple(kernel), stride=(1,) * n, dilate=dilate,
                         pad=tuple(conv_pad), num_filter=num_filter, num_group=groups,
                         no_bias=no_bias or bias is None)

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


def reset_var(param):
    param._var = None


def is_conv(block):
    from mxnet.gluon.nn.conv_layers import _Conv
    return isinstance(block, _Conv) and block._op_name == 'Convolution'


def is_dense(block):
    from mxnet.gluon.nn import Dense
    return isinstance(block, Dense)


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


def resize_block(block, depthwise):
    """Make a Gluon layer's channel counts agree with its (already resized) parameters."""
    if is_conv(block):
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


def kvstore_of(trainer):
    """``(kvstore or None, update_on_kvstore, initialized)``."""
    return trainer._kvstore, bool(trainer._update_on_kvstore), bool(trainer._kv_initialized)


def trainer_updaters(trainer):
    """The Updaters that hold ``trainer``'s optimizer states right now."""
    kvstore, on_kv, initialized = kvstore_of(trainer)
    if initialized and kvstore is not None and on_kv:
        return [kvstore._updater]
    return [u for u in trainer._updaters if u is not None]


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
