"""Which block owns a weight, and whether a mask can be put into its forward.

A mask acts in the ``hybrid_forward`` of every block that receives the weight by attribute
name; these checks refuse, before anything changes, every place where it could not act
(a SymbolBlock, a plain Block, an overridden ``forward``, a running statistic, sparse
storage, a transposed convolution the workaround cannot compute).
"""
import inspect

from mxnet import gluon
from mxnet.gluon import HybridBlock, SymbolBlock
from mxnet.gluon.parameter import Parameter
from mxnet.util import is_np_array

from .. import _mx
from ..errors import SurgeryTypeError, SurgeryValueError
from ..select import MASK_SUFFIX, mask_names
from . import forward
from .forward import needs_deconv_workaround, transposed_conv_layout

__all__ = []

# Aux states are written in place by their operator (BatchNorm's running statistics); the
# operator would update the temporary ``state * mask`` and the real state would never move.
_AUX_STATES = ('running_mean', 'running_var', 'moving_mean', 'moving_var')


def require_block(net, what):
    if not isinstance(net, gluon.Block):
        raise SurgeryTypeError(
            "%s needs the network itself (a gluon.Block), got %s: the mask is registered "
            "on the block that owns each weight and changes its forward, which a "
            "ParameterDict or dict does not know. Pass the outermost block you call."
            % (what, type(net).__name__))
    return net


def refuse_masks_as_keys(key, params, what):
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


def owner_index(net):
    """``{id(param): [(block, attribute), ...]}`` for every parameter a block of ``net``
    receives: one walk over the net for a call that masks many parameters."""
    index = {}
    for blk in _mx.walk_blocks(net):
        for attr, registered in _mx.block_params(blk).items():
            index.setdefault(id(registered), []).append((blk, attr))
    return index


def _owners(net, param, index=None):
    """Every ``(block, attribute)`` inside ``net`` whose ``hybrid_forward`` gets ``param``."""
    if index is not None:
        return list(index.get(id(param), []))
    found = []
    for blk in _mx.walk_blocks(net):
        for attr, registered in _mx.block_params(blk).items():
            if registered is param:
                found.append((blk, attr))
    return found


def mask_owners(net, param, index=None):
    """``(owners, ours)``: every ``(block, attribute)`` that receives ``param``, and whether
    paramsurgery registered its mask on every one of them (False when there is none)."""
    owners = _owners(net, param, index)
    ours = bool(owners) and all(attr in forward.mask_registry(blk)
                                for blk, attr in owners)
    return owners, ours


def _receives_by_name(block, attr):
    method = forward.original_hybrid_forward(block)
    try:
        signature = inspect.signature(method)
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
    stype, grad_stype = _mx.param_stypes(param)
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
    registry = forward.mask_registry(block)
    if attr in registry:
        return
    if mask_attr in _mx.block_params(block) or hasattr(block, mask_attr):
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
    owners, ours = mask_owners(net, param, index)
    if mask is None:
        return None, owners
    if not ours:
        raise SurgeryValueError(
            "Parameter '%s': a parameter named '%s' already exists but is not a mask that "
            "paramsurgery registered on every block using '%s' (hand-written masks or an "
            "imported SymbolBlock). Remove or rename it first, or write its values with "
            "ps.set_params." % (name, mask_name, name))
    return mask, owners


def owners_checked(net, name, param, params, mode='graph', index=None):
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

