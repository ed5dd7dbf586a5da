"""The masks already on a net: which parameters have one (:func:`masked`), in which mode
(:func:`mask_mode`), copies of them (:func:`get_mask`), and taking them out
(:func:`remove_mask`, baking ``weight * mask`` into the stored weight first)."""
from collections import OrderedDict
from typing import Any, Dict, List, Optional

from mxnet import autograd
from mxnet import ndarray as nd

from .. import _mx
from .._checks import check_flag
from ..access import ensure_usable
from ..errors import SelectionError, SurgeryTypeError, and_more
from ..select import MASK_SUFFIX, all_params, mask_names, select, unmasked
from ..surgery import assign_params
from . import forward
from .modes import mode_of
from .owners import mask_owners, refuse_masks_as_keys, require_block
from .update_mode import set_update_mask

__all__ = ['get_mask', 'masked', 'remove_mask']


def mask_mode(net, name) -> str:
    """``'graph'`` or ``'update'``: the mode of the mask of parameter ``name``.

    Raises ``SelectionError`` when ``name`` has no mask.
    """
    params, chosen = select_masked(net, name, 'mask_mode')
    return mode_of(chosen[name], params[name + MASK_SUFFIX])


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


def select_masked(net, key, what):
    params = all_params(net)
    refuse_masks_as_keys(key, params, what)
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
    params, chosen = select_masked(net, key, 'get_mask')
    out = OrderedDict()
    with autograd.pause():
        for name in chosen:
            mask = params[name + MASK_SUFFIX]
            ensure_usable(mask)
            # in the weight's dtype in both modes (an update-mode mask is stored as uint8)
            out[name] = _mx.raw_data(mask)[0].astype(chosen[name].dtype, copy=True)
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
    require_block(net, 'remove_mask')
    params, chosen = select_masked(net, key, 'remove_mask')
    steps = []
    for name, param in chosen.items():
        owners, ours = mask_owners(net, param)
        if not ours:
            raise SurgeryTypeError(
                "Parameter '%s': its mask '%s' was not registered by ps.apply_mask (an "
                "imported SymbolBlock or a hand-written mask), so it cannot be taken out of "
                "the graph. Set it to ones instead: ps.set_params(net, '%s', 1)."
                % (name, name + MASK_SUFFIX, name + MASK_SUFFIX))
        steps.append((name, owners))
    if bake:
        with autograd.pause():
            factors = {name: _mx.raw_data(params[name + MASK_SUFFIX])[0].astype(
                chosen[name].dtype, copy=True) for name, _ in steps}
        # All or nothing: assign_params validates everything (trainers included) first.
        assign_params(net, factors, trainer=trainer)
    graph_changed = False
    for name, owners in steps:
        param = chosen[name]
        if mode_of(param, params[name + MASK_SUFFIX]) == 'update':
            set_update_mask(param, None)
        else:
            graph_changed = True
        for blk, attr in owners:
            forward.unregister_mask(blk, attr)
    if graph_changed:
        _mx.clear_cached_graphs(net)
    return [name for name, _ in steps]
