"""Masks inside the forward graph: every forward computes with ``weight * mask``.

A mask is a non-trainable parameter ``<weight name>_mask`` registered on the block that owns
the weight; that block's ``hybrid_forward`` receives ``weight * mask`` instead of ``weight``.
Because the product is part of the graph (imperative or hybridised, on every context), the
gradient that reaches the stored weight is ``mask * dL/dW_effective``, the weight stays the
leaf variable the Trainer updates (no stale gradient), and ``export()`` carries the mask.
See ``docs/masks.md``.
"""
import contextlib
import inspect
import io
import json
import os
import warnings
from collections import OrderedDict
from typing import Any, Dict, List, Optional

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon
from mxnet import ndarray as nd
from mxnet.gluon import HybridBlock, SymbolBlock
from mxnet.gluon.parameter import Parameter
from mxnet.util import is_np_array

from . import _internals, _masked_forward, distributed
from ._checks import check_flag
from ._deconv import needs_deconv_workaround, transposed_conv_layout
from ._files import check_path, reading, write_bytes
from ._layout import restore_default_layout
from ._values import Value, check_product, plan, trainers_of
from .access import ensure_usable
from .errors import (
    FileFormatError,
    SelectionError,
    SurgeryTypeError,
    SurgeryValueError,
    and_more,
)
from .select import MASK_SUFFIX, all_params, mask_names, match, select, unmasked
from .surgery import assign_params

__all__ = ['apply_mask', 'get_mask', 'masked', 'remove_mask', 'save_masks', 'load_masks',
           'load_exported', 'broadcast_masks']

_COMBINE = ('multiply', 'replace')
#: Where a mask acts: in every forward graph, or in the stored weights and their updates.
MODES = ('graph', 'update')
#: An update-mode mask is only read to zero gradients (MXNet's numpy-frontend operators
#: multiply a float weight or gradient by it directly): one byte per entry.
UPDATE_MASK_DTYPE = np.uint8
_FILE_FORMAT = 'paramsurgery-masks'
_FILE_VERSION = 1
# Aux states are written in place by their operator (BatchNorm's running statistics); the
# operator would update the temporary ``state * mask`` and the real state would never move.
_AUX_STATES = ('running_mean', 'running_var', 'moving_mean', 'moving_var')


# --------------------------------------------------------------------------- helpers

def unmasked_params(net) -> 'OrderedDict[str, Parameter]':
    """Every parameter of ``net`` except the masks themselves, in ``collect_params()`` order."""
    return unmasked(all_params(net))


def _require_block(net, what):
    if not isinstance(net, gluon.Block):
        raise SurgeryTypeError(
            "%s needs the network itself (a gluon.Block), got %s: the mask is registered "
            "on the block that owns each weight and changes its forward, which a "
            "ParameterDict or dict does not know. Pass the outermost block you call."
            % (what, type(net).__name__))
    return net


def _refuse_masks_as_keys(key, params, what):
    """A key that names a mask explicitly is an error; regular expressions skip masks."""
    masks = set(mask_names(params))
    keys = list(key) if isinstance(key, (list, tuple, dict)) else [key]
    for one in keys:
        name = one.name if isinstance(one, Parameter) else one
        if isinstance(name, str) and name in masks:
            raise SurgeryValueError(
                "Parameter '%s' is itself a mask (of '%s'); %s works on the masked "
                "parameter. Pass '%s' instead."
                % (name, name[:-len(MASK_SUFFIX)], what, name[:-len(MASK_SUFFIX)]))


def _owner_index(net):
    """``{id(param): [(block, attribute), ...]}`` for every parameter a block of ``net``
    receives: one walk over the net for a call that masks many parameters."""
    index = {}
    for blk in _internals.walk_blocks(net):
        for attr, registered in _internals.block_params(blk).items():
            index.setdefault(id(registered), []).append((blk, attr))
    return index


def _owners(net, param, index=None):
    """Every ``(block, attribute)`` inside ``net`` whose ``hybrid_forward`` gets ``param``."""
    if index is not None:
        return list(index.get(id(param), []))
    found = []
    for blk in _internals.walk_blocks(net):
        for attr, registered in _internals.block_params(blk).items():
            if registered is param:
                found.append((blk, attr))
    return found


def _mask_owners(net, param, index=None):
    """``(owners, ours)``: every ``(block, attribute)`` that receives ``param``, and whether
    paramsurgery registered its mask on every one of them (False when there is none)."""
    owners = _owners(net, param, index)
    ours = bool(owners) and all(attr in _masked_forward.mask_registry(blk)
                                for blk, attr in owners)
    return owners, ours


def _receives_by_name(block, attr):
    forward = _masked_forward.original_hybrid_forward(block)
    try:
        signature = inspect.signature(forward)
    except (TypeError, ValueError):
        return True  # a builtin or C callable: trust Gluon's calling convention
    for p in signature.parameters.values():
        if p.kind == p.VAR_KEYWORD:
            return True
        if p.name == attr and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            return True
    return False


def _forward_overrider(block):
    """The class that overrides ``HybridBlock.forward`` for ``block``, or None.

    Gluon's own blocks (module ``mxnet.*``) are trusted: their ``forward`` hands the
    parameters to ``hybrid_forward``. Any other override may read the weight itself, which
    no mask can reach, so it is refused even when it happens to call ``super().forward``.
    """
    for cls in type(block).__mro__:
        if 'forward' in vars(cls):
            if cls is HybridBlock or cls.__module__.split('.')[0] == 'mxnet':
                return None
            return cls
    return None


def _check_owner(name, param, block, attr, mode='graph'):
    """Raise unless ``block`` can apply a mask to ``param`` (attribute ``attr``)."""
    kind = type(block).__name__
    if isinstance(block, SymbolBlock):
        raise SurgeryTypeError(
            "Parameter '%s' belongs to a SymbolBlock, whose graph is fixed (loaded from a "
            "symbol file): it cannot be rewritten to multiply by a mask. Apply the mask to "
            "the original Gluon network and export it again, or change the weight values "
            "with ps.assign_params." % name)
    if not isinstance(block, HybridBlock):
        raise SurgeryTypeError(
            "Parameter '%s' belongs to block '%s' (%s), which is not a HybridBlock: its "
            "forward reads the weight itself, so a mask cannot be put into its graph. Make "
            "the block a HybridBlock whose hybrid_forward receives '%s' as an argument."
            % (name, block.name, kind, attr))
    overrider = _forward_overrider(block)
    if overrider is not None:
        raise SurgeryTypeError(
            "Parameter '%s' belongs to block '%s' (%s), whose class %s overrides forward(): "
            "a HybridBlock that defines its own forward may read the weight itself (e.g. "
            "self.%s.data()) instead of receiving it in hybrid_forward, and the mask would "
            "never reach that computation while reports counted it as applied. Move the "
            "computation into hybrid_forward(self, F, x, %s) and delete forward(), or change "
            "the weight values themselves with ps.assign_params."
            % (name, block.name, kind, overrider.__qualname__, attr, attr))
    if not _receives_by_name(block, attr):
        raise SurgeryTypeError(
            "Parameter '%s': the hybrid_forward of block '%s' (%s) does not receive '%s' by "
            "name, so the masked value cannot be passed to it. Add '%s' (or **kwargs) to its "
            "hybrid_forward signature." % (name, block.name, kind, attr, attr))
    if attr in _AUX_STATES:
        raise SurgeryValueError(
            "Parameter '%s' is the state '%s' that block '%s' (%s) updates in place during "
            "training; a mask would make it update a temporary copy. Mask weights, biases "
            "or gamma/beta instead." % (name, attr, block.name, kind))
    stype, grad_stype = _internals.param_stypes(param)
    if stype != 'default' or grad_stype != 'default':
        raise SurgeryTypeError(
            "Parameter '%s' has storage type '%s' and gradient storage type '%s'; masks "
            "support dense ('default') parameters only. For Embedding, build it with "
            "sparse_grad=False." % (name, stype, grad_stype))
    if attr == 'weight' and mode == 'graph' and needs_deconv_workaround(block):
        layout = transposed_conv_layout(block)
        if is_np_array() or not layout.startswith('NC'):
            raise SurgeryTypeError(
                "Parameter '%s' is the weight of a transposed convolution (%s, layout %s%s). "
                "On MKLDNN builds MXNet 1.9.1 cannot backpropagate into a computed "
                "Deconvolution weight, so paramsurgery computes a masked one as a "
                "Convolution, which it supports for channel-first layouts (NCW, NCHW, NCDHW) "
                "outside numpy mode only. Use a channel-first layout."
                % (name, kind, layout, ', numpy mode' if is_np_array() else ''))
    mask_attr = attr + MASK_SUFFIX
    registry = _masked_forward.mask_registry(block)
    if attr in registry:
        return
    if mask_attr in _internals.block_params(block) or hasattr(block, mask_attr):
        raise SurgeryValueError(
            "Parameter '%s': block '%s' (%s) already has an attribute '%s' that paramsurgery "
            "did not create, so the mask cannot be registered under that name. Rename that "
            "attribute." % (name, block.name, kind, mask_attr))


def _existing_mask(net, name, param, params, index=None):
    """The mask Parameter of ``param`` registered by :func:`apply_mask`, or None.

    Raises when a parameter named like the mask exists but is not one of ours.
    """
    mask_name = name + MASK_SUFFIX
    mask = params.get(mask_name)
    owners, ours = _mask_owners(net, param, index)
    if mask is None:
        return None, owners
    if not ours:
        raise SurgeryValueError(
            "Parameter '%s': a parameter named '%s' already exists but is not a mask that "
            "paramsurgery registered on every block using '%s' (hand-written masks or an "
            "imported SymbolBlock). Remove or rename it first, or write its values with "
            "ps.set_params." % (name, mask_name, name))
    return mask, owners


def _owners_checked(net, name, param, params, mode='graph', index=None):
    """``(existing mask or None, owners)`` of a parameter about to be masked, or raise."""
    existing, owners = _existing_mask(net, name, param, params, index)
    if not owners:
        raise SurgeryTypeError(
            "Parameter '%s' is not an attribute of any block inside the net, so no "
            "hybrid_forward receives it by name and a mask cannot be put into the graph "
            "(it is probably read with self.params.get(...).data() in a forward). Assign "
            "it as a block attribute (self.weight = self.params.get(...)) and receive it "
            "in hybrid_forward." % name)
    for blk, attr in owners:
        _check_owner(name, param, blk, attr, mode)
    return existing, owners


# --------------------------------------------------------------------------- public API

def _check_mode(mode, what='mode', allow_none=False):
    """Raise unless ``mode`` is exactly ``'graph'`` or ``'update'`` (or None when allowed)."""
    if mode is None and allow_none:
        return
    if not isinstance(mode, str):
        raise SurgeryTypeError(
            "%s must be the string 'graph' or 'update'%s, got %s %r."
            % (what, ' (or None)' if allow_none else '', type(mode).__name__, mode))
    if mode not in MODES:
        raise SurgeryValueError(
            "%s must be exactly 'graph' (the mask is part of every forward graph) or "
            "'update' (the Trainer keeps the masked entries of the stored weight at zero), "
            "got %r." % (what, mode))


def mask_mode(net, name) -> str:
    """``'graph'`` or ``'update'``: the mode of the mask of parameter ``name``.

    Raises ``SelectionError`` when ``name`` has no mask.
    """
    params, chosen = _select_masked(net, name, 'mask_mode')
    return _mode_of(chosen[name], params[name + MASK_SUFFIX])


def _mode_of(param, mask):
    return 'update' if _internals.update_mask(param) is mask else 'graph'


def _binary(value):
    """True when a planned mask value holds only 0 and 1."""
    if value.scalar is not None:
        return value.scalar in (0, 1)
    array = value.array
    if isinstance(array, np.ndarray):
        return bool(np.all((array == 0) | (array == 1)))
    with autograd.pause():
        return not (nd.not_equal(array, 0) * nd.not_equal(array, 1)).sum().asscalar()


def _refuse_non_binary(name, value, existing, combine):
    """Update mode keeps the masked entries of the stored weight at zero: only 0/1 masks."""
    if not _binary(value):
        raise SurgeryValueError(
            "Parameter '%s': mode='update' takes binary masks only (every entry 0 or 1), "
            "because the masked entries of the stored weight are set to 0 and kept there. "
            "Nothing was changed. Pass a 0/1 mask, or use mode='graph' to scale weights."
            % name)
    if existing is not None and combine == 'multiply':
        with autograd.pause():
            old = _internals.raw_data(existing)[0].asnumpy()
        if not np.all((old == 0) | (old == 1)):
            product = old * (value.scalar if value.scalar is not None else
                             np.asarray(value.array.asnumpy() if isinstance(
                                 value.array, nd.NDArray) else value.array))
            if not np.all((product == 0) | (product == 1)):
                raise SurgeryValueError(
                    "Parameter '%s': its graph-mode mask is not binary, so multiplying it "
                    "with this mask gives a mask that is not binary, which mode='update' "
                    "cannot keep. Nothing was changed. Pass combine='replace', or keep "
                    "mode='graph'." % name)


def _mask_value_on(value, arr):
    """A planned mask value as a number or as an NDArray of ``arr``'s shape, dtype and
    context."""
    if value.scalar is not None:
        return value.scalar
    if isinstance(value.array, np.ndarray):
        return nd.array(np.broadcast_to(value.array, arr.shape), ctx=arr.context,
                        dtype=arr.dtype)
    src = value.on(arr.context)
    if not value.full:
        src = nd.broadcast_to(src, shape=arr.shape)
    return src.astype(arr.dtype, copy=False)


def _write_value(arr, value):
    """Write a planned mask value into a mask replica of any dtype."""
    if value.array is not None and isinstance(value.array, np.ndarray):
        # Straight from numpy: no temporary NDArray per context (a full set of masks is as
        # large as the weights, and freed NDArrays stay in the process's heap).
        src = value.array
        if src.dtype == np.bool_ and np.dtype(arr.dtype) == np.uint8:
            src = src.view(np.uint8)   # the pruning core's masks: no conversion pass
        arr[:] = np.broadcast_to(src, arr.shape)
    else:
        arr[:] = _mask_value_on(value, arr)


def _multiply_value(arr, value):
    """Multiply a planned mask value into a mask replica of any dtype."""
    factor = _mask_value_on(value, arr)
    if isinstance(factor, nd.NDArray):
        _internals.multiply_inplace(arr, factor)
    else:
        arr *= factor


def _arrays_from_host(value, dtype, contexts):
    """A full-shape numpy value as one NDArray of ``dtype`` per context, or None for any
    other value. The host array is read in place (the pruning core's bool masks as uint8,
    without a conversion pass); any conversion to ``dtype`` runs on each device, in
    parallel, from a copy a quarter the size for a bool mask into float32."""
    if not (value.full and isinstance(value.array, np.ndarray) and value.array.size):
        return None
    host = value.array
    if host.dtype == np.bool_:
        host = host.view(np.uint8)
    # from_numpy marks what it is given read-only (a view keeps the caller's array as it
    # was) and keeps it alive while the copies read it
    src = nd.from_numpy(np.ascontiguousarray(host).view(), zero_copy=True)
    arrays = []
    for ctx in contexts:
        near = src if ctx == src.context else src.copyto(ctx)
        arrays.append(near.astype(dtype) if near is src or near.dtype != dtype else near)
    return arrays


def _new_mask_param(name, param, mode, contexts, value):
    """The mask Parameter of ``param``, on ``contexts``. Returns it and whether it already
    holds ``value`` (made from it with one copy per context), else it holds ones."""
    # the Parameter keeps the dtype object Gluon users set and compare (np.uint8, not
    # np.dtype('uint8')); the arrays are made with its np.dtype
    declared = UPDATE_MASK_DTYPE if mode == 'update' else param.dtype
    dtype = np.dtype(declared)
    mask = Parameter(name + MASK_SUFFIX, grad_req='null', shape=param.shape, dtype=declared,
                     init=mx.init.One(), differentiable=False)
    _internals.mark_mask_param(mask)
    with autograd.pause():
        arrays = _arrays_from_host(value, dtype, contexts)
        if arrays is None:
            mask.initialize(ctx=contexts)
        else:
            # the mask's own init (ones) stays for initialize(force_reinit=True)
            _internals.initialize_with(mask, arrays, contexts)
    return mask, arrays is not None


def _trainers(params, trainer):
    """The Trainers to keep in step: the explicit ones, the last one built on each
    parameter and those built on it while it had an update-mode mask."""
    found = OrderedDict((id(t), t) for t in trainers_of(params, trainer))
    for param in params:
        for t in _internals.known_trainers(param):
            found.setdefault(id(t), t)
    return list(found.values())


# Update-mode masks are registered on their block but not used by its graph: Gluon warns
# about such a parameter each time it builds a cached graph. Only warnings that name masks
# and nothing else are silenced.
_UNUSED_MASK_WARNING = r'Parameter ([^ ,]+_mask, )*[^ ,]+_mask is not used by any computation'


def apply_mask(net, key, mask: Any = None, *, combine: str = 'multiply', mode: str = 'graph',
               trainer: Optional[Any] = None) -> List[str]:
    """Mask the selected parameters: inside every forward graph, or in the stored weights.

    With ``mode='graph'`` (the default), from the next forward on each block that owns a
    selected parameter computes with ``weight * mask`` (hybridised or not, on every
    context): the stored weight is not changed, and the gradient that reaches it is
    ``mask * dL/dW_effective``, so masked entries get exactly zero gradient, with no
    stale-gradient error and with any kvstore.

    With ``mode='update'`` (binary masks only), the forward graph stays the dense one: the
    stored weight is multiplied by the mask at once (every context, the kvstore's copy, fp32
    master copies), and every Trainer that updates the parameter masks its gradient before
    each update (and its weight after, for optimizers that need it), so the masked entries
    stay exactly 0. This holds with plain ``trainer.step``, for Trainers built before or
    after the mask, with no kvstore or a local/device one (``update_on_kvstore`` True or
    False), aggregated updates and ``multi_precision``. See ``docs/masks.md``.

    In both modes the mask is a parameter named ``<weight name>_mask`` (grad_req
    ``'null'``, on every context of the weight; the weight's dtype in graph mode, uint8 in
    update mode), registered as attribute ``<attr>_mask`` of the owning block: it is part of
    ``collect_params()`` and ``save_parameters``; only a graph-mode mask is part of
    ``export()``. Optimizer momentum and moments under the zeros of the new mask are set to
    zero in every Updater of this process (and, with ``combine='replace'``, under the zeros
    of the old mask, so a revived entry starts from zero state).

    Parameters
    ----------
    net : Block
        The network (pass the outermost block you call: cached graphs of ``net`` and its
        descendants are rebuilt when a graph-mode mask appears or goes).
    key : str or Parameter or list or callable or dict
        Which parameters (see :func:`select`; masks themselves are never selected), or a
        dict ``{key: mask}``.
    mask : number or numpy.ndarray or NDArray
        Broadcast to the parameter's shape with numpy rules and stored with its full shape.
        In graph mode any finite multiplier works (scaling); in update mode only 0 and 1.
    combine : {'multiply', 'replace'}, default 'multiply'
        With a mask already in place, ``'multiply'`` multiplies the new mask into it (a
        second pruning never revives an entry), ``'replace'`` replaces it.
    mode : {'graph', 'update'}, default 'graph'
        Where the mask acts (see above). A parameter masked in the other mode switches to
        this one, its masks combined as ``combine`` says.
    trainer : Trainer or list of Trainer, default None
        Trainers to keep in step besides those found through the parameters (the last one
        built on each, and any built after an update-mode mask).

    Returns
    -------
    list of str
        The names of the parameters masked.

    Raises
    ------
    SelectionError
        A key selects nothing.
    SurgeryValueError
        The mask does not broadcast, has NaN or inf, is not binary in update mode,
        ``combine`` or ``mode`` is unknown, a key names a mask, the parameter is a state
        updated in place (BatchNorm running statistics), or a product overflows the dtype
        (the new mask times the mask in place, or the weight times the mask: finite fp16
        numbers can multiply to inf).
    SurgeryTypeError
        Wrong mask or ``mode`` type, ``net`` is not a Block, or the owning block cannot
        take a mask (not a HybridBlock, its class overrides ``forward()`` (which may read
        the weight itself, out of the mask's reach), ``hybrid_forward`` does not receive the
        parameter by name, a SymbolBlock, sparse storage).
    TrainerStateError
        Update mode, and a Trainer of the parameter runs the optimizer on the servers of a
        dist kvstore (``update_on_kvstore=True``), which cannot mask the gradient.
    ParameterStateError
        The parameter is not initialised yet (run one forward first).

    On any error nothing has changed: no mask registered, no forward wrapped, no value or
    optimizer state written.

    Examples
    --------
    >>> import mxnet as mx, numpy as np, paramsurgery as ps
    >>> from mxnet.gluon import nn
    >>> net = nn.HybridSequential(prefix='net_')
    >>> with net.name_scope():
    ...     net.add(nn.Dense(2, in_units=3, use_bias=False))
    >>> net.initialize(mx.init.One(), ctx=[mx.cpu(0), mx.cpu(1)])
    >>> net.hybridize()
    >>> ps.apply_mask(net, '.*weight', np.array([[1, 0, 1], [0, 1, 1]]))
    ['net_dense0_weight']
    >>> net(mx.nd.ones((1, 3), ctx=mx.cpu(1))).asnumpy().tolist()
    [[2.0, 2.0]]
    >>> net[0].weight.data(mx.cpu(0)).asnumpy().tolist()   # the stored weight is unchanged
    [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]
    >>> sorted(net.collect_params())
    ['net_dense0_weight', 'net_dense0_weight_mask']
    >>> ps.apply_mask(net, 'net_dense0_weight', np.array([0, 1, 1]))  # multiplies in
    ['net_dense0_weight']
    >>> ps.get_mask(net, 'net_dense0_weight')['net_dense0_weight'].asnumpy().tolist()
    [[0.0, 0.0, 1.0], [0.0, 1.0, 1.0]]

    In update mode the stored weight itself holds the zeros, and the Trainer keeps them:

    >>> from mxnet import autograd, gluon
    >>> ps.apply_mask(net, 'net_dense0_weight', 1, mode='update')   # switches the mode
    ['net_dense0_weight']
    >>> net[0].weight.data(mx.cpu(1)).asnumpy().tolist()
    [[0.0, 0.0, 1.0], [0.0, 1.0, 1.0]]
    >>> trainer = gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': 0.1})
    >>> for ctx in [mx.cpu(0), mx.cpu(1)]:
    ...     with autograd.record():
    ...         out = net(mx.nd.ones((1, 3), ctx=ctx))
    ...     out.backward()
    >>> trainer.step(1)
    >>> net[0].weight.data(mx.cpu(0)).asnumpy().tolist()
    [[0.0, 0.0, 0.800000011920929], [0.0, 0.800000011920929, 0.800000011920929]]
    >>> ps.apply_mask(net, 'net_dense0_weight', 0.5, mode='update')
    Traceback (most recent call last):
    ...
    paramsurgery.errors.SurgeryValueError: Parameter 'net_dense0_weight': mode='update' takes binary masks only ...
    """
    _check_mode(mode)
    return _apply_masks(net, key, mask, combine=combine, mode=mode, trainer=trainer)


def _apply_masks(net, key, mask, *, combine, mode, trainer=None, trusted=None):
    """:func:`apply_mask` with ``mode`` a string or a dict name -> mode. ``trusted``: a
    dict name -> binary numpy array of the full shape from the pruning core, which needs
    no validation, given in place of ``key`` and ``mask``."""
    if combine not in _COMBINE:
        raise SurgeryValueError("combine must be 'multiply' or 'replace', got %r." % (combine,))
    _require_block(net, 'apply_mask')
    params = all_params(net)
    if trusted is not None:
        key = OrderedDict((name, None) for name in trusted)
    _refuse_masks_as_keys(key, params, 'apply_mask')
    view = unmasked(params)
    modes = mode if isinstance(mode, dict) else None
    # Where each parameter lives decides whether it can be masked at all: check that before
    # looking at the mask values.
    found = OrderedDict()
    index = _owner_index(net)
    for one_key in (list(key) if isinstance(key, dict) else [key]):
        # match, not select: view is already validated, and select would check all of it
        # again for every key (quadratic in a list of one key per parameter)
        for name in match(view, one_key):
            param = view[name]
            if name not in found:
                found[name] = _owners_checked(net, name, param, params,
                                              modes.get(name, 'graph') if modes else mode,
                                              index)
    if trusted is not None:
        for name in trusted:
            ensure_usable(view[name])
        # binary: no entry above 1, so no product with it can overflow (no check pass)
        planned = [(name, view[name], Value(array=trusted[name], full=True, largest=1.0))
                   for name in trusted]
    else:
        planned = plan(view, key, mask, 'mask', allow_nonfinite=False)
    steps = [(name, param, value, modes.get(name, 'graph') if modes else mode) + found[name]
             for name, param, value in planned]
    del planned   # each value is freed once written (see the loop below)
    for name, param, value, step_mode, existing, _ in steps:
        switching = existing is not None and _mode_of(param, existing) == 'graph'
        if step_mode == 'update' and (trusted is None or switching):
            _refuse_non_binary(name, value, existing, combine)
            if isinstance(value.array, np.ndarray):
                value.array = value.array.astype(UPDATE_MASK_DTYPE)  # a quarter of the bytes
    # Finite masks can still overflow (fp16): the combined mask, and weight * mask, must be
    # finite wherever their factors are, before anything is written.
    for name, param, value, _, existing, _ in steps:
        kept = existing if combine == 'multiply' else None
        if kept is not None:
            check_product(name + MASK_SUFFIX, kept, value, 'mask')
        check_product(name, param, value, 'mask', also=kept)
    trainers = _trainers([param for _, param, _, _, _, _ in steps], trainer)
    updated = [param for _, param, _, step_mode, _, _ in steps if step_mode == 'update']
    for t in trainers:
        distributed.refuse_update_masks(t, updated)
    for _, param, value, _, _, _ in steps:
        value.prefetch(_internals.context_list(param))
    # Everything is validated: from here on nothing raises for the user's input.
    names = [step[0] for step in steps]
    graph_changed = False
    from_host = []
    steps.reverse()
    while steps:
        # popped, so that each mask's per-context copies are freed once it is written
        name, param, value, step_mode, existing, owners = steps.pop()
        old_mode = None if existing is None else _mode_of(param, existing)
        if existing is not None and combine == 'replace':
            # entries revived by the new mask start from zero state
            _internals.zero_states_under(trainers, param, existing)
        if old_mode == step_mode:
            target = existing
            write = _multiply_value if combine == 'multiply' else _write_value
            if trusted is not None and step_mode == 'update':
                write = _write_value  # the core's masks already hold the old zeros
            _internals.write_replicas(target, lambda arr, v=value, w=write: w(arr, v))
        else:
            target, written = _new_mask_param(name, param, step_mode,
                                              _internals.context_list(param), value)
            if written:
                from_host.append(target)
            old = _internals.raw_data(existing) if existing is not None else None
            with autograd.pause():
                for i, arr in enumerate(_internals.raw_data(target)):
                    if not written:
                        _write_value(arr, value)
                    if old is not None and combine == 'multiply':
                        _internals.multiply_inplace(arr, old[i].astype(arr.dtype, copy=False))
            for blk, attr in owners:
                if existing is not None:
                    _masked_forward.unregister_mask(blk, attr)
                _masked_forward.register_mask(blk, attr, attr + MASK_SUFFIX, target, step_mode)
            graph_changed = graph_changed or 'graph' in (old_mode, step_mode)
            if old_mode == 'update':
                _internals.set_update_mask(param, None)
        _internals.mask_changed(target)   # drop copies on other devices: new values
        if step_mode == 'update':
            _internals.write_replicas(
                param, lambda arr, m=target: _internals.multiply_inplace(
                    arr, _internals.mask_on(m, arr.context)))
            _internals.set_update_mask(param, target)
        else:
            # A conv weight left in MKLDNN's blocked layout by a predict-mode forward would
            # stay so (the conv now sees only weight * mask) and cost a reorder in every step.
            restore_default_layout(param)
        _internals.zero_states_under(trainers, param, target)
    for target in from_host:
        # the copies may read the caller's numpy array in place: done before it may change
        for arr in _internals.raw_data(target):
            arr.wait_to_read()
    for t in trainers:
        mine = [p for p in updated if _internals.trainer_index(t, p) is not None]
        if mine:
            _internals.sync_trainer(t, mine)
            _internals.watch_trainer(t)
    if updated:
        warnings.filterwarnings('ignore', message=_UNUSED_MASK_WARNING, category=UserWarning)
    if graph_changed:
        _internals.clear_cached_graphs(net)
    return names


def masked(net) -> List[str]:
    """The names of the parameters of ``net`` that have a mask, in ``collect_params()`` order.

    Parameters
    ----------
    net : Block or ParameterDict or dict of str -> Parameter

    Returns
    -------
    list of str

    Examples
    --------
    >>> import mxnet as mx, paramsurgery as ps
    >>> from mxnet.gluon import nn
    >>> net = nn.Dense(2, in_units=3, prefix='fc_')
    >>> net.initialize()
    >>> ps.masked(net)
    []
    >>> ps.apply_mask(net, 'fc_bias', 0.5)
    ['fc_bias']
    >>> ps.masked(net)
    ['fc_bias']
    """
    params = all_params(net)
    return [name[:-len(MASK_SUFFIX)] for name in mask_names(params)]


def _select_masked(net, key, what):
    params = all_params(net)
    _refuse_masks_as_keys(key, params, what)
    chosen = select(unmasked(params), key)
    missing = [name for name in chosen if name + MASK_SUFFIX not in params]
    if missing:
        raise SelectionError(
            "Parameter %s has no mask (%s needs one). Masked parameters: %s. Select them "
            "with ps.masked(net), or apply a mask first with ps.apply_mask."
            % (and_more(missing), what, and_more(masked(params), shown=5) or 'none'))
    return params, chosen


def get_mask(net, key) -> Dict[str, nd.NDArray]:
    """Copies of the masks of the selected parameters, on each parameter's first context.

    Parameters
    ----------
    net : Block or ParameterDict or dict of str -> Parameter
    key : str or Parameter or list or callable
        Which masked parameters (see :func:`select`).

    Returns
    -------
    dict of str -> NDArray
        ``{parameter name: mask}``, in the parameter's dtype whatever the mask's mode; the
        arrays are copies (writing them changes nothing).

    Raises
    ------
    SelectionError
        When the key selects nothing, or a selected parameter has no mask (the message
        names it).

    Examples
    --------
    >>> import mxnet as mx, paramsurgery as ps
    >>> from mxnet.gluon import nn
    >>> net = nn.Dense(2, in_units=2, prefix='fc_')
    >>> net.initialize(ctx=[mx.cpu(0), mx.cpu(1)])
    >>> ps.apply_mask(net, 'fc_weight', mx.nd.array([[1, 0], [0, 1]]))
    ['fc_weight']
    >>> m = ps.get_mask(net, '.*weight')['fc_weight']
    >>> m.context, m.asnumpy().tolist()
    (cpu(0), [[1.0, 0.0], [0.0, 1.0]])
    >>> ps.get_mask(net, 'fc_bias')
    Traceback (most recent call last):
    ...
    paramsurgery.errors.SelectionError: Parameter 'fc_bias' has no mask ...
    """
    params, chosen = _select_masked(net, key, 'get_mask')
    out = OrderedDict()
    with autograd.pause():
        for name in chosen:
            mask = params[name + MASK_SUFFIX]
            ensure_usable(mask)
            # in the weight's dtype in both modes (an update-mode mask is stored as uint8)
            out[name] = _internals.raw_data(mask)[0].astype(chosen[name].dtype, copy=True)
    return out


def remove_mask(net, key, *, bake: bool = True, trainer: Optional[Any] = None) -> List[str]:
    """Remove the masks of the selected parameters.

    Parameters
    ----------
    net : Block
        The network (cached graphs are rebuilt).
    key : str or Parameter or list or callable
        Which masked parameters (see :func:`select`).
    bake : bool, default True
        Exactly ``True`` or ``False`` (anything else raises ``SurgeryTypeError``). True writes ``weight * mask`` into the stored weight first, through
        :func:`assign_params` (every context, Trainer-safe, optimizer state kept), so the
        network computes the same function afterwards; False gives back the stored weight
        as it is: for a graph-mode mask, masked entries keep the values they had when
        masked, apart from what the optimizer's weight decay did to them; for an
        update-mode mask, they are 0. Either way the Trainers stop masking the parameter.
    trainer : Trainer or list of Trainer, default None
        With ``bake=True``: Trainers to keep in step besides the last one built on each
        parameter (see :func:`assign_params`).

    Returns
    -------
    list of str
        The names of the parameters whose mask was removed.

    Raises
    ------
    SelectionError
        When the key selects nothing or a selected parameter has no mask.
    SurgeryTypeError
        When a mask was not registered by :func:`apply_mask` (e.g. an imported
        SymbolBlock, whose graph is fixed).

    Examples
    --------
    >>> import mxnet as mx, paramsurgery as ps
    >>> from mxnet.gluon import nn
    >>> net = nn.Dense(2, in_units=2, use_bias=False, prefix='fc_')
    >>> net.initialize(mx.init.One())
    >>> ps.apply_mask(net, 'fc_weight', mx.nd.array([[1, 0], [0, 3]]))
    ['fc_weight']
    >>> ps.remove_mask(net, 'fc_weight')
    ['fc_weight']
    >>> net.weight.data().asnumpy().tolist(), ps.masked(net)
    ([[1.0, 0.0], [0.0, 3.0]], [])
    """
    bake = check_flag('bake', bake)
    _require_block(net, 'remove_mask')
    params, chosen = _select_masked(net, key, 'remove_mask')
    steps = []
    for name, param in chosen.items():
        owners, ours = _mask_owners(net, param)
        if not ours:
            raise SurgeryTypeError(
                "Parameter '%s': its mask '%s' was not registered by ps.apply_mask (an "
                "imported SymbolBlock or a hand-written mask), so it cannot be taken out of "
                "the graph. Set it to ones instead: ps.set_params(net, '%s', 1)."
                % (name, name + MASK_SUFFIX, name + MASK_SUFFIX))
        steps.append((name, owners))
    if bake:
        with autograd.pause():
            factors = {name: _internals.raw_data(params[name + MASK_SUFFIX])[0].astype(
                chosen[name].dtype, copy=True) for name, _ in steps}
        # All or nothing: assign_params validates everything (trainers included) first.
        assign_params(net, factors, trainer=trainer)
    graph_changed = False
    for name, owners in steps:
        param = chosen[name]
        if _mode_of(param, params[name + MASK_SUFFIX]) == 'update':
            _internals.set_update_mask(param, None)
        else:
            graph_changed = True
        for blk, attr in owners:
            _masked_forward.unregister_mask(blk, attr)
    if graph_changed:
        _internals.clear_cached_graphs(net)
    return [name for name, _ in steps]


# --------------------------------------------------------------------------- files

def structural_keys(net):
    """``{id(weight): structural name}`` for the non-mask parameters of ``net``."""
    names = _internals.structural_names(net)
    params = all_params(net)
    masks = set(id(params[n]) for n in mask_names(params))
    keys = {}
    for sname, param in names.items():
        if id(param) not in masks:
            keys.setdefault(id(param), sname)
    return keys


def save_masks(net, path: str) -> List[str]:
    """Save the masks of ``net`` to ``path``, binary masks bit-packed.

    A mask whose entries are all 0 or 1 is stored with one bit per entry
    (``numpy.packbits``, then compressed: at most about 1.1 bits per weight on disk for any
    real network); any other mask is stored exactly in its dtype. Each mask's mode (``'graph'``
    or ``'update'``) is recorded, and :func:`load_masks` restores it. Masks are keyed by the
    structural name of their weight (``'0.weight'``, as ``save_parameters`` names it), so
    :func:`load_masks` can apply them to a freshly built net whose name prefixes differ.

    Parameters
    ----------
    net : Block
    path : str or os.PathLike
        The file to write (a NumPy ``.npz`` archive; written exactly at ``path``),
        atomically: a temporary file in the same folder, flushed to disk, then renamed over
        ``path``, so a kill or a full disk leaves the old file or the complete new one.

    Returns
    -------
    list of str
        The structural names of the weights whose masks were saved.

    Raises
    ------
    SurgeryTypeError
        ``net`` is not a Block, or ``path`` is not a ``str``/``os.PathLike`` (an ``int``
        would be a file descriptor).
    SurgeryValueError
        ``path`` is a folder or its folder does not exist (checked before anything is
        written).

    Examples
    --------
    >>> import os, tempfile, mxnet as mx, numpy as np, paramsurgery as ps
    >>> from mxnet.gluon import nn
    >>> def build(prefix):
    ...     net = nn.HybridSequential(prefix=prefix)
    ...     with net.name_scope():
    ...         net.add(nn.Dense(8, in_units=16), nn.Dense(2, in_units=8))
    ...     net.initialize()
    ...     return net
    >>> net = build('old_')
    >>> ps.apply_mask(net, net[0].weight, (np.arange(128) % 3 > 0).reshape(8, 16))
    ['old_dense0_weight']
    >>> path = os.path.join(tempfile.mkdtemp(), 'masks.npz')
    >>> ps.save_masks(net, path)
    ['0.weight']
    >>> fresh = build('new_')
    >>> ps.load_masks(fresh, path)
    ['new_dense0_weight']
    >>> ps.get_mask(fresh, 'new_dense0_weight')['new_dense0_weight'].sum().asscalar()
    85.0
    """
    _require_block(net, 'save_masks')
    path = check_path('path', path, write=True)
    params = all_params(net)
    keys = structural_keys(net)
    entries, arrays = [], {}
    with autograd.pause():
        for name in masked(net):
            weight, mask = params[name], params[name + MASK_SUFFIX]
            skey = keys.get(id(weight))
            if skey is None:
                continue  # not reachable through save_parameters' naming
            values = _internals.raw_data(mask)[0].asnumpy()
            binary = bool(np.all((values == 0) | (values == 1)))
            slot = 'm%d' % len(entries)
            arrays[slot] = np.packbits(values.reshape(-1) != 0) if binary else values
            # 'mode' is optional in version 1 (files without it hold graph-mode masks);
            # 'dtype' is the weight's, in which get_mask shows a mask of either mode.
            entries.append({'key': skey, 'name': name, 'shape': list(values.shape),
                            'dtype': np.dtype(weight.dtype).name, 'packed': binary,
                            'slot': slot, 'mode': _mode_of(weight, mask)})
    meta = json.dumps({'format': _FILE_FORMAT, 'version': _FILE_VERSION, 'masks': entries})
    arrays['meta'] = np.frombuffer(meta.encode('utf-8'), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)  # a file object: numpy appends no '.npz'
    write_bytes(path, buf.getvalue())  # atomic: a killed write leaves the old file
    return [e['key'] for e in entries]


_MASKS_FIX = 'Write it again with ps.save_masks(net, path), or pass the file it wrote.'


def _read_masks(path):
    """``{structural name: numpy mask}`` from a file written by :func:`save_masks`; any
    damage (empty, truncated, flipped bytes, another format) is a FileFormatError."""
    if os.path.getsize(path) == 0:
        raise FileFormatError("'%s' is empty (0 bytes), not a mask file written by "
                              "ps.save_masks (an interrupted copy?). %s" % (path, _MASKS_FIX))
    with open(path, 'rb') as f:
        head = f.read(6)
    if not head.startswith((b'PK\x03\x04', b'\x93NUMPY')):
        # numpy would blame "pickled data" for any file that is neither zip nor .npy
        raise FileFormatError("'%s' is not a mask file written by ps.save_masks: it is not a "
                              ".npz archive (it starts with %r). %s" % (path, head, _MASKS_FIX))
    with reading(path, 'mask file written by ps.save_masks (a .npz archive)', _MASKS_FIX):
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise FileFormatError("'%s' is a single NumPy array, not a mask file written by "
                                  "ps.save_masks (a .npz archive). %s" % (path, _MASKS_FIX))
        with archive:
            if 'meta' not in archive.files:
                raise FileFormatError("'%s' is a .npz archive but not a mask file written by "
                                      "ps.save_masks (no metadata). %s" % (path, _MASKS_FIX))
            meta = json.loads(archive['meta'].tobytes().decode('utf-8'))
            if not isinstance(meta, dict) or meta.get('format') != _FILE_FORMAT \
                    or meta.get('version') != _FILE_VERSION:
                found = meta if not isinstance(meta, dict) else (meta.get('format'),
                                                                 meta.get('version'))
                raise FileFormatError("'%s' has format/version %r; this paramsurgery reads %r "
                                      "version %d. %s" % (path, found, _FILE_FORMAT,
                                                          _FILE_VERSION, _MASKS_FIX))
            masks = OrderedDict()
            for entry in meta['masks']:
                shape = tuple(int(n) for n in entry['shape'])
                if any(n < 0 for n in shape):
                    raise ValueError('negative dimension in shape %s' % (shape,))
                dtype = np.dtype(entry['dtype'])
                if dtype.kind not in 'biuf':
                    raise ValueError('mask dtype %s is not numeric' % dtype.name)
                stored = archive[entry['slot']]
                size = int(np.prod(shape, dtype=np.int64))
                if entry['packed']:
                    if stored.dtype != np.uint8 or stored.size * 8 < size:
                        raise ValueError("mask of '%s' has %d packed bytes for %d entries"
                                         % (entry['key'], stored.size, size))
                    values = np.unpackbits(stored, count=size).reshape(shape)
                    values = values.astype(dtype)
                else:
                    if stored.shape != shape or stored.dtype != dtype:
                        raise ValueError("mask of '%s' is stored as %s %s, the metadata says "
                                         "%s %s" % (entry['key'], stored.dtype, stored.shape,
                                                    dtype, shape))
                    values = stored
                if not isinstance(entry['key'], str):
                    raise ValueError('mask key %r is not a name' % (entry['key'],))
                masks[entry['key']] = values
    return masks


def _saved_modes(path):
    """``{structural name: mode}`` recorded by :func:`save_masks` (a file without modes,
    written before modes existed, holds graph-mode masks)."""
    with np.load(path, allow_pickle=False) as archive:
        meta = json.loads(archive['meta'].tobytes().decode('utf-8'))
    return {entry['key']: entry.get('mode', 'graph') for entry in meta['masks']}


def load_masks(net, path: str, *, combine: str = 'replace', mode: Optional[str] = None
               ) -> List[str]:
    """Apply the masks saved by :func:`save_masks` to ``net``.

    Masks are matched by the structural name of their weight (as ``load_parameters``
    matches parameters), so a freshly built net of the same architecture loads them even
    when its name prefixes differ, and it needs no mask yet. Parameters of ``net`` that are
    not in the file keep their masks (or lack of one).

    Parameters
    ----------
    net : Block
    path : str or os.PathLike
    combine : {'replace', 'multiply'}, default 'replace'
        How to treat a mask that ``net`` already has (see :func:`apply_mask`).
    mode : {None, 'graph', 'update'}, default None
        None applies each mask in the mode it was saved in; ``'graph'`` or ``'update'``
        applies every mask in that mode (see :func:`apply_mask`).

    Returns
    -------
    list of str
        The full names of the parameters masked.

    Raises
    ------
    SelectionError
        A saved mask has no weight of that structural name in ``net``.
    FileFormatError
        The file is empty, truncated, damaged or not written by :func:`save_masks` (a
        ``SurgeryValueError`` too); nothing changed.
    SurgeryValueError
        A shape that does not match, a missing file, a folder.
    ParameterStateError
        A parameter's shape is not known yet (deferred initialisation: run one forward
        first) or it was never initialised.
    SurgeryTypeError
        ``path`` is not a ``str`` or ``os.PathLike`` (an ``int`` is not a file descriptor
        here).

    Examples
    --------
    >>> import os, tempfile, mxnet as mx, paramsurgery as ps
    >>> from mxnet.gluon import nn
    >>> net = nn.Dense(2, in_units=3, prefix='a_')
    >>> net.initialize()
    >>> ps.apply_mask(net, 'a_weight', mx.nd.array([[1, 0, 1], [0, 1, 0]]))
    ['a_weight']
    >>> path = os.path.join(tempfile.mkdtemp(), 'm.npz')
    >>> ps.save_masks(net, path)
    ['weight']
    >>> other = nn.Dense(2, in_units=3, prefix='b_')
    >>> other.initialize()
    >>> ps.load_masks(other, path)
    ['b_weight']
    >>> ps.get_mask(other, 'b_weight')['b_weight'].asnumpy().tolist()
    [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]
    >>> ps.load_masks(nn.Dense(3, in_units=3, prefix='c_'), path)
    Traceback (most recent call last):
    ...
    paramsurgery.errors.SurgeryValueError: The mask file ... has a mask of shape (2, 3) for 'weight' ...
    """
    _check_mode(mode, allow_none=True)
    _require_block(net, 'load_masks')
    path = check_path('path', path)
    if combine not in _COMBINE:
        raise SurgeryValueError("combine must be 'multiply' or 'replace', got %r." % (combine,))
    saved = _read_masks(path)
    saved_modes = _saved_modes(path) if mode is None else {}
    keys = structural_keys(net)
    params = all_params(net)
    by_key = {sname: param for param in params.values() for sname in [keys.get(id(param))]
              if sname is not None}
    plan, modes = OrderedDict(), {}
    for skey, values in saved.items():
        param = by_key.get(skey)
        if param is None:
            raise SelectionError(
                "The mask file '%s' has a mask for '%s', which is not a parameter of this net "
                "(structural names: %s%s). Load it into a net of the same architecture."
                % (path, skey, ', '.join(list(by_key)[:5]), ', ...' if len(by_key) > 5 else ''))
        if tuple(values.shape) != tuple(param.shape):
            # a shape still deferred ((4, 0)) is not another architecture: say to run a forward
            if not param.shape or not all(d > 0 for d in param.shape):
                ensure_usable(param)
            raise SurgeryValueError(
                "The mask file '%s' has a mask of shape %s for '%s' but Parameter '%s' has "
                "shape %s. Load it into a net of the same architecture."
                % (path, values.shape, skey, param.name, param.shape))
        plan[param.name] = values
        modes[param.name] = mode or saved_modes.get(skey, 'graph')
    if not plan:
        return []
    return _apply_masks(net, plan, None, combine=combine, mode=modes)


@contextlib.contextmanager
def _quiet_input_types():
    """Silence MXNet's "Cannot decide type for the following arguments ... data: None",
    which every ``SymbolBlock`` built from a symbol warns: an input's dtype is only known at
    the first forward, which is fine, and the warning only alarms users."""
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', message='Cannot decide type', category=UserWarning)
        yield


def load_exported(symbol_file: str, input_names, param_file: Optional[str] = None,
                  ctx=None, **kwargs) -> SymbolBlock:
    """``SymbolBlock.imports`` for a network exported with masks: masks stay non-trainable.

    ``export()`` writes each mask as an ordinary input of its ``elemwise_mul``, and
    ``SymbolBlock.imports`` gives every input grad_req ``'write'``, so a Trainer would
    train the masks. This sets every ``<name>_mask`` parameter back to grad_req
    ``'null'``, and gives every loaded parameter its shape (``imports`` leaves it None,
    which value surgery such as ``ps.set_params`` needs).

    Parameters
    ----------
    symbol_file : str
        The ``-symbol.json`` file written by ``export()``.
    input_names : str or list of str
        The input names (``'data'`` for a single-input network).
    param_file : str, default None
        The ``-NNNN.params`` file.
    ctx : Context or list of Context, default None
    **kwargs
        ``allow_missing``, ``ignore_extra`` (``True``/``False``), passed to
        ``SymbolBlock.imports``.

    Returns
    -------
    SymbolBlock

    Raises
    ------
    FileFormatError
        A file is empty, truncated, damaged or of another format, or the files do not
        belong together (MXNet's own ``MXNetError``, ``AssertionError`` or ``ValueError``,
        summed up in one line); nothing was loaded.
    SurgeryValueError, SurgeryTypeError
        A missing file or a folder; a path that is not a ``str`` or ``os.PathLike``;
        ``input_names`` not a name or list of names, ``ctx`` not a Context.

    Examples
    --------
    >>> import os, tempfile, mxnet as mx, paramsurgery as ps
    >>> from mxnet.gluon import nn
    >>> net = nn.HybridSequential(prefix='net_')
    >>> with net.name_scope():
    ...     net.add(nn.Dense(2, in_units=3))
    >>> net.initialize(mx.init.One())
    >>> ps.apply_mask(net, '.*weight', mx.nd.array([[1, 0, 0], [1, 1, 1]]))
    ['net_dense0_weight']
    >>> net.hybridize()
    >>> x = mx.nd.ones((1, 3))
    >>> net(x).asnumpy().tolist()
    [[1.0, 3.0]]
    >>> prefix = os.path.join(tempfile.mkdtemp(), 'model')
    >>> net.export(prefix)
    >>> loaded = ps.load_exported(prefix + '-symbol.json', 'data', prefix + '-0000.params')
    >>> loaded(x).asnumpy().tolist(), ps.masked(loaded)
    ([[1.0, 3.0]], ['net_dense0_weight'])
    >>> loaded.collect_params()['net_dense0_weight_mask'].grad_req
    'null'
    """
    symbol_file = check_path('symbol_file', symbol_file)
    if param_file is not None:
        param_file = check_path('param_file', param_file)
    names = [input_names] if isinstance(input_names, str) else input_names
    if not isinstance(names, (list, tuple)) or not names or \
            not all(isinstance(n, str) and n for n in names):
        raise SurgeryTypeError(
            "input_names must be a name or a non-empty list of names (e.g. 'data'), got %r."
            % (input_names,))
    contexts = ctx if isinstance(ctx, (list, tuple)) else [ctx]
    if ctx is not None and (not contexts or
                            not all(isinstance(c, mx.Context) for c in contexts)):
        raise SurgeryTypeError('ctx must be a Context, a list of Contexts or None, got %r.'
                               % (ctx,))
    unknown = sorted(set(kwargs) - {'allow_missing', 'ignore_extra'})
    if unknown:
        raise SurgeryTypeError('load_exported got unexpected keyword argument(s) %s; it takes '
                               'allow_missing and ignore_extra (as SymbolBlock.imports).'
                               % ', '.join(unknown))
    for flag in ('allow_missing', 'ignore_extra'):
        if flag in kwargs:
            kwargs[flag] = check_flag(flag, kwargs[flag])
    fix = ('Export the network again with net.export(prefix) and pass prefix + '
           "'-symbol.json' and prefix + '-0000.params'.")
    with reading([symbol_file] if param_file is None else [symbol_file, param_file],
                 'exported model (symbol JSON and parameter file written by export())', fix), \
            _quiet_input_types():
        block = SymbolBlock.imports(symbol_file, input_names, param_file, ctx, **kwargs)
    params = block.collect_params()
    for param in params.values():
        # Parameter._load_init leaves shape None when the parameter had none before: give
        # every loaded parameter its shape, so that value surgery can validate against it.
        if param.shape is None and _internals.raw_data(param) is not None:
            param.shape = _internals.raw_data(param)[0].shape
    for name in mask_names(params):
        params[name].grad_req = 'null'
        _internals.mark_mask_param(params[name])
    return block


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
        kv, _, initialized = _internals.trainer_kvstore(kvstore)
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
    names = masked(net)
    masks = [params[name + MASK_SUFFIX] for name in names]
    with autograd.pause():
        # Inside autograd.record() after a forward the masks are part of the graph; the
        # copies are not a computation to differentiate.
        _broadcast(kvstore, masks)
    return names


def _broadcast(kvstore, masks):
    if kvstore is not None and _internals.is_distributed(kvstore.type):
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
