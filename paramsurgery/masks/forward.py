"""The masked forward: a block whose ``hybrid_forward`` receives ``weight * mask``.

Three parts, in this order: masked transposed convolutions computed as the equivalent
Convolution (MKLDNN cannot backpropagate into a computed Deconvolution weight), putting a
conv weight back into the default memory layout (MKLDNN's blocked layout would cost a
reorder at every step), and the wrapped ``hybrid_forward`` itself.

A mask is a grad_req 'null' Parameter registered on the block that owns the weight, under
the attribute name ``<attr>_mask``. The block's ``hybrid_forward`` is wrapped at the
instance level so that it receives ``weight * mask`` under the name ``weight``; Gluon's
``HybridBlock.forward`` (and the symbolic pass that builds cached graphs) passes every entry
of the block's registered parameters to ``hybrid_forward`` by attribute name, so the mask
arrives as a keyword argument that the wrapper consumes. The wrapper state lives in the
block's ``__dict__`` under the names below, so ``copy.deepcopy`` and pickling carry it along.

A mask in update mode (``apply_mask(..., mode='update')``) is registered the same way, so
that it stays part of ``collect_params()`` and ``save_parameters``, but the wrapper only
takes it out of the keyword arguments: the block computes with the stored weight, and the
forward graph has no mask input (the Trainer keeps the masked entries at zero instead).

Transposed convolutions: MXNet 1.9.1's MKLDNN Deconvolution backward fails ("could not
execute a primitive", reported asynchronously at the next read, sometimes a crash) whenever the gradient of its
weight input is not written straight into a leaf's gradient buffer: a computed weight
(``weight * mask``, ``weight.copy()``) or a weight used twice. 1D, 2D and 3D transposed
convolutions are all affected; a plain leaf weight works. A masked transposed convolution
is therefore computed as the equivalent Convolution (zeros inserted between input samples,
padded, kernel flipped and its in/out channels swapped), whose backward handles computed
weights. Same values and gradients; it costs about stride**ndim times the multiply-adds.

Memory layout: a Convolution run in predict mode (a plain ``net(x)`` outside
``autograd.record()``, such as the forward that finishes deferred initialisation) reorders its weight NDArray in place into
a blocked MKLDNN layout. A training-mode Convolution reorders it back, but a masked conv only
ever sees the computed ``weight * mask``, so its stored weight would stay blocked and every
elementwise operation and optimizer update on it would pay a reorder (``docs/masks.md``).
"""
import contextlib
import types

import mxnet as mx
from mxnet import autograd
from mxnet.util import is_np_array

from .. import _mx
from .._mx import is_blocked_layout

__all__ = []

# --------------------------------------------------------------------------- transposed convolutions

_MKLDNN = None
#: >0 while a symbolic trace that only infers shapes runs (see :func:`real_deconvolution`).
_REAL = 0


@contextlib.contextmanager
def real_deconvolution():
    """Trace masked transposed convolutions as the Deconvolution they are.

    The stand-in Convolution is only needed for a backward; a trace that infers shapes
    and counts multiply-adds would otherwise count the stand-in's (about stride**ndim
    times more)."""
    global _REAL  # pylint: disable=global-statement
    _REAL += 1
    try:
        yield
    finally:
        _REAL -= 1


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
    return _mx.conv_op_name(block) in ('Deconvolution', 'deconvolution')


def transposed_conv_layout(block):
    """The layout string of a transposed-convolution block, e.g. ``'NCHW'``."""
    kwargs = _mx.conv_kwargs(block)
    return kwargs.get('layout') or 'NC' + 'DHW'[-len(kwargs['kernel']):]


def needs_deconv_workaround(block):
    return not _REAL and is_transposed_conv(block) and mkldnn_enabled()


class DeconvAsConv:
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


# --------------------------------------------------------------------------- memory layout

#: Whether :func:`restore_default_layout` does anything (bench/mask_overhead.py switches it
#: off to measure what the blocked layout costs).
RESTORE_DEFAULT_LAYOUT = True


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
        for arr in _mx.raw_data(param):
            if is_blocked_layout(arr):
                copy = arr.copy()          # copies come out in the default layout
                arr[:] = 0
                copy.copyto(arr)
                changed += 1
    return changed


# --------------------------------------------------------------------------- masked forward

MASKS_ATTR = '_paramsurgery_masks'            # {weight attribute: mask attribute}
MODES_ATTR = '_paramsurgery_mask_modes'       # {weight attribute: 'update'}; absent: 'graph'
_INNER_FORWARD = '_paramsurgery_inner_forward'  # an instance-level hybrid_forward we wrapped


def mask_registry(block):
    """``{weight attribute: mask attribute}`` of the masks registered on ``block``."""
    return dict(block.__dict__.get(MASKS_ATTR, {}))


def mask_mode(block, attr):
    """``'graph'`` or ``'update'``: the mode of the mask of ``block``'s attribute ``attr``."""
    return block.__dict__.get(MODES_ATTR, {}).get(attr, 'graph')


def _masked_hybrid_forward(self, F, *args, **kwargs):
    """``hybrid_forward`` of a block with masks: the weights it receives are ``w * mask``
    (graph mode), or the stored weights (update mode)."""
    updates = self.__dict__.get(MODES_ATTR, {})
    graph_masked = []
    for attr, mask_attr in self.__dict__[MASKS_ATTR].items():
        mask = kwargs.pop(mask_attr, None)
        if attr in updates:
            continue
        graph_masked.append(attr)
        weight = kwargs[attr]
        if mask is None:
            # hybrid_forward called by hand with the block's own parameters only
            param = _mx.block_params(self)[mask_attr]
            mask = param.var() if isinstance(weight, mx.sym.Symbol) \
                else param.data(weight.context)
        kwargs[attr] = F.np.multiply(weight, mask) if is_np_array() \
            else F.elemwise_mul(weight, mask)
    if needs_deconv_workaround(self) and 'weight' in graph_masked:
        F = DeconvAsConv(F, tuple(_mx.block_params(self)['weight'].shape))
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
    registered = _mx.registered_params_live(self)
    _mx.set_registered_params(
        self, {k: v for k, v in registered.items() if k not in hidden})
    try:
        names = _mx.own_structural_names(self, prefix)
    finally:
        _mx.set_registered_params(self, registered)
    by_param = {id(param): name for name, param in names.items()}
    for attr, mask_attr in masks.items():
        base = by_param.get(id(registered[attr]))
        if base is not None:
            names[base + '_mask'] = registered[mask_attr]
    return names


def register_mask(block, attr, mask_attr, mask, mode='graph'):
    """Register ``mask`` on ``block`` as attribute ``mask_attr`` (so it is part of
    ``collect_params()`` and ``save_parameters``) and make ``hybrid_forward`` use
    ``<attr> * <mask_attr>`` (``mode='graph'``) or ignore the mask (``mode='update'``). The
    caller clears cached graphs afterwards when the graph changed."""
    setattr(block, mask_attr, mask)            # Block.__setattr__ registers it
    block.params.update({mask.name: mask})     # collect_params() reads the ParameterDict
    registry = block.__dict__.get(MASKS_ATTR)
    if registry is None:
        registry = {}
        inner = block.__dict__.get('hybrid_forward')
        if inner is not None:
            block.__dict__[_INNER_FORWARD] = inner
        block.__dict__[MASKS_ATTR] = registry
        block.__dict__['hybrid_forward'] = types.MethodType(_masked_hybrid_forward, block)
        if _mx.class_overrides_structural_names(block):
            _mx.set_structural_names(
                block, types.MethodType(_masked_collect_params_with_prefix, block))
    registry[attr] = mask_attr
    modes = block.__dict__.setdefault(MODES_ATTR, {})
    if mode == 'update':
        modes[attr] = mode
    else:
        modes.pop(attr, None)


def unregister_mask(block, attr):
    """Undo :func:`register_mask` for the weight attribute ``attr`` of ``block``."""
    registry = block.__dict__[MASKS_ATTR]
    mask_attr = registry.pop(attr)
    block.__dict__.get(MODES_ATTR, {}).pop(attr, None)
    mask = _mx.registered_params_live(block).pop(mask_attr)
    block.__dict__.pop(mask_attr, None)
    if _mx.param_dict_get(block.params, mask.name) is mask:
        _mx.param_dict_remove(block.params, mask.name)
    if not registry:
        del block.__dict__[MASKS_ATTR]
        block.__dict__.pop(MODES_ATTR, None)
        del block.__dict__['hybrid_forward']
        _mx.set_structural_names(block, None)
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
