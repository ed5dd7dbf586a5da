"""Applying masks (both modes): :func:`apply_mask`, and the same path for the pruning core's
masks (:func:`apply_core_masks`) and for loaded files (:func:`apply_masks`).

A mask is a non-trainable parameter ``<weight name>_mask`` registered on the block that owns
the weight. In graph mode that block's ``hybrid_forward`` receives ``weight * mask``
(:mod:`.forward`): the product is part of the graph (imperative or hybridised, on every
context), the gradient that reaches the stored weight is ``mask * dL/dW_effective``, the
weight stays the leaf variable the Trainer updates, and ``export()`` carries the mask. In
update mode the stored weight holds the zeros and the Trainers keep them (:mod:`.update_mode`).
See ``docs/masks.md``.
"""
import warnings
from collections import OrderedDict
from typing import Any, List, NamedTuple, Optional

import numpy as np
from mxnet import autograd
from mxnet.gluon.parameter import Parameter

from .. import _mx, distributed
from .._values import Value, check_product, plan
from ..access import ensure_usable
from ..errors import SurgeryValueError
from ..select import MASK_SUFFIX, all_params, match, unmasked
from . import forward
from .forward import restore_default_layout
from .modes import COMBINE, UPDATE_MASK_DTYPE, check_mode, mode_of
from .owners import owner_index, owners_checked, refuse_masks_as_keys, require_block
from .update_mode import set_update_mask, watch_trainer, zero_states_under
from .values import (
    mask_trainers,
    multiply_value,
    new_mask_param,
    refuse_non_binary,
    write_value,
)

__all__ = ['apply_mask']

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
    check_mode(mode)
    return apply_masks(net, key, mask, combine=combine, mode=mode, trainer=trainer)


class Step(NamedTuple):
    """One parameter about to be masked, validated."""
    name: str                      # the weight's full name
    param: Parameter               # the weight
    value: Value                   # the planned mask value (its arrays freed once written)
    mode: str                      # 'graph' or 'update'
    existing: Optional[Parameter]  # its current mask, or None
    owners: list                   # every (block, attribute) whose forward receives it


def _mode_for(mode, name):
    return mode.get(name, 'graph') if isinstance(mode, dict) else mode


def _start(net, key, combine):
    """The checks every apply runs first: ``combine``, the net, masks used as keys."""
    if combine not in COMBINE:
        raise SurgeryValueError("combine must be 'multiply' or 'replace', got %r." % (combine,))
    require_block(net, 'apply_mask')
    params = all_params(net)
    refuse_masks_as_keys(key, params, 'apply_mask')
    return params


def _found_owners(net, key, params, mode):
    """``{name: (existing mask or None, owners)}`` for every parameter ``key`` selects, each
    checked: where a parameter lives decides whether it can be masked at all, so this runs
    before the mask values are looked at."""
    view = unmasked(params)
    found = OrderedDict()
    index = owner_index(net)
    for one_key in (list(key) if isinstance(key, dict) else [key]):
        # match, not select: view is already validated, and select would check all of it
        # again for every key (quadratic in a list of one key per parameter)
        for name in match(view, one_key):
            if name not in found:
                found[name] = owners_checked(net, name, view[name], params,
                                             _mode_for(mode, name), index)
    return found


def _to_update_dtype(step, combine):
    refuse_non_binary(step.name, step.value, step.existing, combine)
    array = step.value.array
    if isinstance(array, np.ndarray):
        # a quarter of float32's bytes; a bool mask is viewed as it is, not copied
        step.value.array = array.view(UPDATE_MASK_DTYPE) if array.dtype == np.bool_ else \
            array.astype(UPDATE_MASK_DTYPE)


def apply_masks(net, key, mask, *, combine, mode, trainer=None) -> List[str]:
    """:func:`apply_mask` with ``mode`` a string or a dict name -> mode."""
    params = _start(net, key, combine)
    found = _found_owners(net, key, params, mode)
    steps = [Step(name, param, value, _mode_for(mode, name), *found[name])
             for name, param, value in plan(unmasked(params), key, mask, 'mask',
                                            allow_nonfinite=False)]
    for step in steps:
        if step.mode == 'update':
            _to_update_dtype(step, combine)
    return _write_steps(net, steps, combine, trainer, core=False)


def apply_core_masks(net, keeps, mode) -> List[str]:
    """Multiply in masks from the pruning core: ``keeps`` a dict name -> binary numpy array
    of the full shape, exact by construction, so the values need no validation pass (the
    parameters and their owners are still checked)."""
    key = OrderedDict((name, None) for name in keeps)
    params = _start(net, key, 'multiply')
    found = _found_owners(net, key, params, mode)
    view = unmasked(params)
    for name in keeps:
        ensure_usable(view[name])
    # binary: no entry above 1, so no product with it can overflow (no check pass)
    steps = [Step(name, view[name], Value(array=keeps[name], full=True, largest=1.0),
                  _mode_for(mode, name), *found[name]) for name in keeps]
    for step in steps:
        switching = step.existing is not None and mode_of(step.param, step.existing) == 'graph'
        if step.mode == 'update' and switching:
            _to_update_dtype(step, 'multiply')
    return _write_steps(net, steps, 'multiply', None, core=True)


def _check_steps(steps, combine, trainer):
    """The checks that need every value: overflow, the Trainers. Returns the Trainers to
    keep in step and the parameters that get update-mode masks."""
    # Finite masks can still overflow (fp16): the combined mask, and weight * mask, must be
    # finite wherever their factors are, before anything is written.
    for step in steps:
        kept = step.existing if combine == 'multiply' else None
        if kept is not None:
            check_product(step.name + MASK_SUFFIX, kept, step.value, 'mask')
        check_product(step.name, step.param, step.value, 'mask', also=kept)
    trainers = mask_trainers([step.param for step in steps], trainer)
    updated = [step.param for step in steps if step.mode == 'update']
    for t in trainers:
        distributed.refuse_update_masks(t, updated)
    for step in steps:
        step.value.prefetch(_mx.context_list(step.param))
    return trainers, updated


def _write_steps(net, steps, combine, trainer, core):
    """Validate what needs every step, then write every mask. ``core``: the masks come from
    the pruning core (binary, and already holding an existing mask's zeros)."""
    trainers, updated = _check_steps(steps, combine, trainer)
    # Everything is validated: from here on nothing raises for the user's input.
    _mx.settle()  # the writes below go through host views (see paramsurgery._mx.host)
    names = [step.name for step in steps]
    graph_changed = False
    from_host = []
    steps.reverse()
    while steps:
        # popped, so that each mask's per-context copies are freed once it is written
        step = steps.pop()
        target, changed, written = _write_one(step, combine, trainers, core)
        graph_changed = graph_changed or changed
        if written:
            from_host.append(target)
    for target in from_host:
        # the copies may read the caller's numpy array in place: done before it may change
        for arr in _mx.raw_data(target):
            arr.wait_to_read()
    for t in trainers:
        mine = [p for p in updated if _mx.trainer_index(t, p) is not None]
        if mine:
            _mx.sync_trainer(t, mine)
            watch_trainer(t)
    if updated:
        warnings.filterwarnings('ignore', message=_UNUSED_MASK_WARNING, category=UserWarning)
    if graph_changed:
        _mx.clear_cached_graphs(net)
    return names


def _write_one(step, combine, trainers, core):
    """Write one step's mask. Returns ``(mask Parameter, whether a forward graph changed,
    whether the new mask was made from the caller's host array)``."""
    name, param, value, step_mode, existing, owners = step
    old_mode = None if existing is None else mode_of(param, existing)
    graph_changed = written = False
    if existing is not None and combine == 'replace':
        # entries revived by the new mask start from zero state
        zero_states_under(trainers, param, existing)
    if old_mode == step_mode:
        target = existing
        write = multiply_value if combine == 'multiply' else write_value
        if core and step_mode == 'update':
            write = write_value  # the core's masks already hold the old zeros
        _mx.write_replicas(target, lambda arr, v=value, w=write: w(arr, v))
    else:
        target, written = new_mask_param(name, param, step_mode,
                                          _mx.context_list(param), value)
        old = _mx.raw_data(existing) if existing is not None else None
        with autograd.pause():
            for i, arr in enumerate(_mx.raw_data(target)):
                if not written:
                    write_value(arr, value)
                if old is not None and combine == 'multiply':
                    _mx.multiply_inplace(arr, old[i].astype(arr.dtype, copy=False))
        for blk, attr in owners:
            if existing is not None:
                forward.unregister_mask(blk, attr)
            forward.register_mask(blk, attr, attr + MASK_SUFFIX, target, step_mode)
        graph_changed = 'graph' in (old_mode, step_mode)
        if old_mode == 'update':
            set_update_mask(param, None)
    _mx.mask_changed(target)   # drop copies on other devices: new values
    if step_mode == 'update':
        _mx.write_replicas(
            param, lambda arr, m=target: _mx.multiply_inplace(
                arr, _mx.mask_on(m, arr.context)))
        set_update_mask(param, target)
    else:
        # A conv weight left in MKLDNN's blocked layout by a predict-mode forward would
        # stay so (the conv now sees only weight * mask) and cost a reorder in every step.
        restore_default_layout(param)
    zero_states_under(trainers, param, target)
    return target, graph_changed, written

