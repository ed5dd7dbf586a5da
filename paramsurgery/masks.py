"""Masks inside the forward graph: every forward computes with ``weight * mask``.

A mask is a non-trainable parameter ``<weight name>_mask`` registered on the block that owns
the weight; that block's ``hybrid_forward`` receives ``weight * mask`` instead of ``weight``.
Because the product is part of the graph (imperative or hybridised, on every context), the
gradient that reaches the stored weight is ``mask * dL/dW_effective``, the weight stays the
leaf variable the Trainer updates (no stale gradient), and ``export()`` carries the mask.
See ``docs/masks.md``.
"""
import inspect
import io
import json
from collections import OrderedDict
from typing import Any, Dict, List, Optional

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon
from mxnet import ndarray as nd
from mxnet.gluon import HybridBlock, SymbolBlock
from mxnet.gluon.parameter import Parameter
from mxnet.util import is_np_array

from . import _internals, _masked_forward
from ._deconv import needs_deconv_workaround, transposed_conv_layout
from ._layout import restore_default_layout
from ._values import assign, multiply, plan
from .access import ensure_usable
from .errors import (
    SelectionError,
    SurgeryTypeError,
    SurgeryValueError,
    and_more,
)
from .select import MASK_SUFFIX, all_params, mask_names, select, unmasked
from .surgery import assign_params

__all__ = ['apply_mask', 'get_mask', 'masked', 'remove_mask', 'save_masks', 'load_masks',
           'load_exported', 'broadcast_masks']

_COMBINE = ('multiply', 'replace')
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


def _owners(net, param):
    """Every ``(block, attribute)`` inside ``net`` whose ``hybrid_forward`` gets ``param``."""
    found = []
    for blk in _internals.walk_blocks(net):
        for attr, registered in _internals.block_params(blk).items():
            if registered is param:
                found.append((blk, attr))
    return found


def _mask_owners(net, param):
    """``(owners, ours)``: every ``(block, attribute)`` that receives ``param``, and whether
    paramsurgery registered its mask on every one of them (False when there is none)."""
    owners = _owners(net, param)
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


def _check_owner(name, param, block, attr):
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
    if attr == 'weight' and needs_deconv_workaround(block):
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


def _existing_mask(net, name, param, params):
    """The mask Parameter of ``param`` registered by :func:`apply_mask`, or None.

    Raises when a parameter named like the mask exists but is not one of ours.
    """
    mask_name = name + MASK_SUFFIX
    mask = params.get(mask_name)
    owners, ours = _mask_owners(net, param)
    if mask is None:
        return None, owners
    if not ours:
        raise SurgeryValueError(
            "Parameter '%s': a parameter named '%s' already exists but is not a mask that "
            "paramsurgery registered on every block using '%s' (hand-written masks or an "
            "imported SymbolBlock). Remove or rename it first, or write its values with "
            "ps.set_params." % (name, mask_name, name))
    return mask, owners


def _owners_checked(net, name, param, params):
    """``(existing mask or None, owners)`` of a parameter about to be masked, or raise."""
    existing, owners = _existing_mask(net, name, param, params)
    if not owners:
        raise SurgeryTypeError(
            "Parameter '%s' is not an attribute of any block inside the net, so no "
            "hybrid_forward receives it by name and a mask cannot be put into the graph "
            "(it is probably read with self.params.get(...).data() in a forward). Assign "
            "it as a block attribute (self.weight = self.params.get(...)) and receive it "
            "in hybrid_forward." % name)
    for blk, attr in owners:
        _check_owner(name, param, blk, attr)
    return existing, owners


def _write_mask(arr, value):
    """Write a validated mask into a mask replica (always in the default layout)."""
    if value.array is not None and isinstance(value.array, np.ndarray):
        # Straight from numpy: no temporary NDArray per context (a full set of masks is as
        # large as the weights, and freed NDArrays stay in the process's heap).
        arr[:] = np.broadcast_to(value.array, arr.shape)
    else:
        assign(arr, value)


# --------------------------------------------------------------------------- public API

def apply_mask(net, key, mask: Any = None, *, combine: str = 'multiply') -> List[str]:
    """Multiply the selected parameters by a mask inside every forward graph.

    From the next forward on, each block that owns a selected parameter computes with
    ``weight * mask`` (hybridised or not, on every context): the stored weight is not
    changed, and the gradient that reaches it is ``mask * dL/dW_effective``, so masked
    entries get exactly zero gradient, with no stale-gradient error and with any kvstore.
    The mask is a parameter named ``<weight name>_mask`` (grad_req ``'null'``, the weight's
    dtype, on every context of the weight), registered as attribute ``<attr>_mask`` of the
    owning block: it is part of ``collect_params()``, ``save_parameters`` and ``export()``.

    Parameters
    ----------
    net : Block
        The network (pass the outermost block you call: cached graphs of ``net`` and its
        descendants are rebuilt).
    key : str or Parameter or list or callable or dict
        Which parameters (see :func:`select`; masks themselves are never selected), or a
        dict ``{key: mask}``.
    mask : number or numpy.ndarray or NDArray
        Broadcast to the parameter's shape with numpy rules and stored with its full shape.
        Need not be binary: any finite multiplier works (scaling).
    combine : {'multiply', 'replace'}, default 'multiply'
        With a mask already in place, ``'multiply'`` multiplies the new mask into it (a
        second pruning never revives an entry), ``'replace'`` replaces it.

    Returns
    -------
    list of str
        The names of the parameters masked.

    Raises
    ------
    SelectionError
        A key selects nothing.
    SurgeryValueError
        The mask does not broadcast, has NaN or inf, ``combine`` is unknown, a key names a
        mask, or the parameter is a state updated in place (BatchNorm running statistics).
    SurgeryTypeError
        Wrong mask type, ``net`` is not a Block, or the owning block cannot take a mask
        (not a HybridBlock, ``hybrid_forward`` does not receive the parameter by name, a
        SymbolBlock, sparse storage).
    ParameterStateError
        The parameter is not initialised yet (run one forward first).

    On any error nothing has changed: no mask registered, no forward wrapped.

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
    """
    if combine not in _COMBINE:
        raise SurgeryValueError("combine must be 'multiply' or 'replace', got %r." % (combine,))
    _require_block(net, 'apply_mask')
    params = all_params(net)
    _refuse_masks_as_keys(key, params, 'apply_mask')
    view = unmasked(params)
    # Where each parameter lives decides whether it can be masked at all: check that before
    # looking at the mask values.
    found = OrderedDict()
    for one_key in (list(key) if isinstance(key, dict) else [key]):
        for name, param in select(view, one_key).items():
            if name not in found:
                found[name] = _owners_checked(net, name, param, params)
    steps = [(name, param, value) + found[name]
             for name, param, value in plan(view, key, mask, 'mask', allow_nonfinite=False)]
    for _, param, value, _, _ in steps:
        value.prefetch(_internals.context_list(param))
    # Everything is validated: from here on nothing raises for the user's input.
    names = [step[0] for step in steps]
    registered = False
    steps.reverse()
    while steps:
        # popped, so that each mask's per-context copies are freed once it is written
        name, param, value, existing, owners = steps.pop()
        if existing is None:
            existing = Parameter(name + MASK_SUFFIX, grad_req='null', shape=param.shape,
                                 dtype=param.dtype, init=mx.init.One(),
                                 differentiable=False)
            with autograd.pause():
                existing.initialize(ctx=_internals.context_list(param))
            write = _write_mask
            for blk, attr in owners:
                _masked_forward.register_mask(blk, attr, attr + MASK_SUFFIX, existing)
            registered = True
        else:
            write = multiply if combine == 'multiply' else _write_mask
        _internals.write_replicas(existing, lambda arr, v=value, w=write: w(arr, v))
        # A conv weight left in MKLDNN's blocked layout by a predict-mode forward would stay
        # so (the conv now sees only weight * mask) and cost a reorder in every step.
        restore_default_layout(param)
    if registered:
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
        ``{parameter name: mask}``; the arrays are copies (writing them changes nothing).

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
            out[name] = _internals.raw_data(mask)[0].copy()
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
        True writes ``weight * mask`` into the stored weight first, through
        :func:`assign_params` (every context, Trainer-safe, optimizer state kept), so the
        network computes the same function afterwards; False gives back the stored weight
        as it is (masked entries keep the values they had when masked, apart from what the
        optimizer's weight decay or momentum did to them).
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
            factors = {name: _internals.raw_data(params[name + MASK_SUFFIX])[0].copy()
                       for name, _ in steps}
        # All or nothing: assign_params validates everything (trainers included) first.
        assign_params(net, factors, trainer=trainer)
    for name, owners in steps:
        for blk, attr in owners:
            _masked_forward.unregister_mask(blk, attr)
    _internals.clear_cached_graphs(net)
    return [name for name, _ in steps]


# --------------------------------------------------------------------------- files

def _weight_keys(net):
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
    real network); any other mask is stored exactly in its dtype. Masks are keyed by the
    structural name of their weight (``'0.weight'``, as ``save_parameters`` names it), so
    :func:`load_masks` can apply them to a freshly built net whose name prefixes differ.

    Parameters
    ----------
    net : Block
    path : str
        The file to write (a NumPy ``.npz`` archive; written exactly at ``path``).

    Returns
    -------
    list of str
        The structural names of the weights whose masks were saved.

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
    params = all_params(net)
    keys = _weight_keys(net)
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
            entries.append({'key': skey, 'name': name, 'shape': list(values.shape),
                            'dtype': np.dtype(values.dtype).name, 'packed': binary,
                            'slot': slot})
    meta = json.dumps({'format': _FILE_FORMAT, 'version': _FILE_VERSION, 'masks': entries})
    arrays['meta'] = np.frombuffer(meta.encode('utf-8'), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)  # a file object: numpy appends no '.npz'
    with open(path, 'wb') as f:
        f.write(buf.getvalue())
    return [e['key'] for e in entries]


def _read_masks(path):
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise SurgeryValueError("Cannot read masks from '%s': %s. Write the file with "
                                "ps.save_masks." % (path, err)) from None
    with archive:
        if 'meta' not in archive.files:
            raise SurgeryValueError("'%s' is not a mask file written by ps.save_masks (no "
                                    "metadata)." % path)
        meta = json.loads(archive['meta'].tobytes().decode('utf-8'))
        if meta.get('format') != _FILE_FORMAT or meta.get('version') != _FILE_VERSION:
            raise SurgeryValueError("'%s' has format %r version %r; this paramsurgery reads "
                                    "%r version %d." % (path, meta.get('format'),
                                                        meta.get('version'), _FILE_FORMAT,
                                                        _FILE_VERSION))
        masks = OrderedDict()
        for entry in meta['masks']:
            shape = tuple(entry['shape'])
            stored = archive[entry['slot']]
            if entry['packed']:
                size = int(np.prod(shape, dtype=np.int64))
                values = np.unpackbits(stored, count=size).reshape(shape)
                values = values.astype(entry['dtype'])
            else:
                values = stored
            masks[entry['key']] = values
    return masks


def load_masks(net, path: str, *, combine: str = 'replace') -> List[str]:
    """Apply the masks saved by :func:`save_masks` to ``net``.

    Masks are matched by the structural name of their weight (as ``load_parameters``
    matches parameters), so a freshly built net of the same architecture loads them even
    when its name prefixes differ, and it needs no mask yet. Parameters of ``net`` that are
    not in the file keep their masks (or lack of one).

    Parameters
    ----------
    net : Block
    path : str
    combine : {'replace', 'multiply'}, default 'replace'
        How to treat a mask that ``net`` already has (see :func:`apply_mask`).

    Returns
    -------
    list of str
        The full names of the parameters masked.

    Raises
    ------
    SelectionError
        A saved mask has no weight of that structural name in ``net``.
    SurgeryValueError
        Unreadable file, or a shape that does not match.

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
    _require_block(net, 'load_masks')
    saved = _read_masks(path)
    keys = _weight_keys(net)
    params = all_params(net)
    by_key = {sname: param for param in params.values() for sname in [keys.get(id(param))]
              if sname is not None}
    plan = OrderedDict()
    for skey, values in saved.items():
        param = by_key.get(skey)
        if param is None:
            raise SelectionError(
                "The mask file '%s' has a mask for '%s', which is not a parameter of this net "
                "(structural names: %s%s). Load it into a net of the same architecture."
                % (path, skey, ', '.join(list(by_key)[:5]), ', ...' if len(by_key) > 5 else ''))
        if tuple(values.shape) != tuple(param.shape):
            raise SurgeryValueError(
                "The mask file '%s' has a mask of shape %s for '%s' but Parameter '%s' has "
                "shape %s. Load it into a net of the same architecture."
                % (path, values.shape, skey, param.name, param.shape))
        plan[param.name] = values
    if not plan:
        return []
    return apply_mask(net, plan, combine=combine)


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
        Passed to ``SymbolBlock.imports`` (e.g. ``allow_missing``, ``ignore_extra``).

    Returns
    -------
    SymbolBlock

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
    block = SymbolBlock.imports(symbol_file, input_names, param_file, ctx, **kwargs)
    params = block.collect_params()
    for param in params.values():
        # Parameter._load_init leaves shape None when the parameter had none before: give
        # every loaded parameter its shape, so that value surgery can validate against it.
        if param.shape is None and _internals.raw_data(param) is not None:
            param.shape = _internals.raw_data(param)[0].shape
    for name in mask_names(params):
        params[name].grad_req = 'null'
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
    return names
