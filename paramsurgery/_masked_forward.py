"""The masked forward: a block whose ``hybrid_forward`` receives ``weight * mask``.

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
"""
import types

import mxnet as mx
from mxnet.util import is_np_array

from . import _internals
from ._deconv import DeconvAsConv, needs_deconv_workaround

__all__ = []

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
            param = _internals.block_params(self)[mask_attr]
            mask = param.var() if isinstance(weight, mx.sym.Symbol) \
                else param.data(weight.context)
        kwargs[attr] = F.np.multiply(weight, mask) if is_np_array() \
            else F.elemwise_mul(weight, mask)
    if needs_deconv_workaround(self) and 'weight' in graph_masked:
        F = DeconvAsConv(F, tuple(_internals.block_params(self)['weight'].shape))
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
    registered = _internals.registered_params_live(self)
    _internals.set_registered_params(
        self, {k: v for k, v in registered.items() if k not in hidden})
    try:
        names = _internals.own_structural_names(self, prefix)
    finally:
        _internals.set_registered_params(self, registered)
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
        if _internals.class_overrides_structural_names(block):
            _internals.set_structural_names(
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
    mask = _internals.registered_params_live(block).pop(mask_attr)
    block.__dict__.pop(mask_attr, None)
    if _internals.param_dict_get(block.params, mask.name) is mask:
        _internals.param_dict_remove(block.params, mask.name)
    if not registry:
        del block.__dict__[MASKS_ATTR]
        block.__dict__.pop(MODES_ATTR, None)
        del block.__dict__['hybrid_forward']
        _internals.set_structural_names(block, None)
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
