"""Structural shrink: remove masked channels for real, so the network is smaller and faster.

:func:`shrink` takes a network whose channels were masked consistently (by
:func:`paramsurgery.prune_channels`, or by hand on every member of a channel group) and
removes every channel whose maskable members are all masked to zero, on every context, in
place: the blocks keep their classes with their channel counts updated. It is all or
nothing: the shrunk network must compute what the masked one computed, or everything is put
back. A :class:`ShrinkPlan` records the new shapes by structural name, so that
:func:`apply_plan` rebuilds a shrunk network from its own class (no pickling) and
``load_parameters`` then reads the shrunk network's file. See ``docs/shrink.md``.
"""
from collections import OrderedDict
from typing import Any, NamedTuple

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon
from mxnet import ndarray as nd

from .. import _mx
from .._snapshot import Transaction
from ..errors import (
    ParameterStateError,
    ShrinkError,
    SurgeryTypeError,
    SurgeryValueError,
    TrainerStateError,
)
from ..masks import structural_keys
from ..select import MASK_SUFFIX, all_params
from .check import difference, differs, failure, internals, launch, read
from .importance import channel_rows
from .inputs import input_batches, input_shapes, net_contexts, require_hybrid
from .plan import ShrinkPlan
from .rules import resize, resized_blocks, run_rules
from .traced import traced


def shrink(net, *, inputs, trainer=None) -> ShrinkPlan:
    """Remove the fully masked channels of ``net`` for real, in place, on every context.

    Every channel of a prunable group (see :func:`trace_channels`) whose maskable members
    are all masked to zero is removed from every member (BatchNorm running statistics
    follow). The blocks keep their classes: ``Conv2D``, ``Conv2DTranspose`` and the like
    get ``channels``, ``in_channels`` and, depthwise, ``groups`` updated, ``Dense``
    ``units`` and ``in_units``, ``BatchNorm`` ``in_channels``, ``Embedding`` its output
    dimension; a block with a rule registered by :func:`register_shrink_rule` (an attention
    cell's head count) is updated by it. Masks of what remains are kept, sliced.
    Parameters keep their identity (a Trainer built earlier keeps them).

    All or nothing: before anything is committed, the shrunk net's output on ``inputs`` (in
    predict mode, on every context) must equal the masked net's, ``max |difference| <=
    1e-4 * max |masked output|``; otherwise every parameter, block and Trainer is restored bit
    for bit and :class:`ShrinkError` names the first layer that differs or fails to run.

    Parameters
    ----------
    net : HybridBlock
        An initialised network with channel masks (e.g. from :func:`prune_channels`).
    inputs : NDArray or tuple of int or list of them
        A batch per data input (or its shape: a fixed pseudo-random batch is used) for the
        trace and the check.
    trainer : Trainer, default None
        A Trainer that keeps training the shrunk net: its kvstore is re-initialised with
        the new shapes and its optimizer states (momentum, Adam moments, fp32 master
        copies) are sliced to the kept channels. The last Trainer built on each parameter
        is updated too.

    Returns
    -------
    ShrinkPlan

    Raises
    ------
    SurgeryTypeError
        ``net`` is not a HybridBlock, or ``trainer`` is not a Trainer.
    SurgeryValueError
        The input shape does not run through the net.
    TrainerStateError
        The Trainer uses a distributed kvstore (its servers keep the old shapes).
    ShrinkError
        The shrunk net fails to run or computes something else; nothing was changed.

    Examples
    --------
    >>> import mxnet as mx, paramsurgery as ps
    >>> from mxnet.gluon import nn
    >>> net = nn.HybridSequential(prefix='net_')
    >>> with net.name_scope():
    ...     net.add(nn.Conv2D(8, 3, in_channels=3, use_bias=False), nn.BatchNorm(in_channels=8),
    ...             nn.Activation('relu'), nn.Conv2D(4, 3, in_channels=8), nn.Flatten(),
    ...             nn.Dense(2, in_units=64))
    >>> net.initialize(mx.init.Xavier())
    >>> x = mx.nd.random.uniform(shape=(2, 3, 8, 8))
    >>> ps.prune_channels(net, 0.5, inputs=x)
    ['net_conv0_weight', 'net_conv1_weight']
    >>> masked_out = net(x)
    >>> plan = ps.shrink(net, inputs=x)
    >>> net[0], net[3], net[5]
    (Conv2D(3 -> 4, kernel_size=(3, 3), stride=(1, 1), bias=False), Conv2D(4 -> 2, kernel_size=(3, 3), stride=(1, 1)), Dense(32 -> 2, linear))
    >>> (net(x) - masked_out).abs().max().asscalar() < 1e-5
    True
    >>> plan.shapes['0.weight'], plan.shapes['5.weight']
    ((4, 3, 3, 3), (2, 32))
    """
    require_hybrid(net, 'shrink')
    shapes, batches, ctxs = _checked_inputs(inputs, trainer, net)
    graph = traced(net, shapes)
    params = all_params(net)
    before = None
    if any(_mx.is_deferred(p) for p in params.values()):
        before = _reference(net, shapes, batches, ctxs)   # initialises them, as before
    _initialised(params)
    keeps, kept = _plan_keeps(graph, params)
    indices = _index_arrays(params, keeps)
    if before is None:
        # queued after the indices (see _index_arrays); it runs in the engine while the
        # host records the transaction and queues the new arrays
        before = _reference(net, shapes, batches, ctxs)
    check = _Check(shapes, batches, ctxs, before, kept)
    snames = structural_keys(net)
    if not keeps:
        _read_reference(net, shapes, before)
    else:
        trainers = _trainers(net, trainer, [params[n] for n in keeps])
        changes = _new_arrays(params, keeps, indices)
        rule_kept = {name: {axis: np.flatnonzero(keep) for axis, keep in axis_keeps.items()}
                     for name, axis_keeps in keeps.items()}
        problem = _commit(net, params, changes, rule_kept, trainers, check, indices)
        if problem is not None:
            raise ShrinkError(problem.message + ' Nothing was changed. ' + _FIX[problem.kind])
    new_shapes = {snames[id(p)]: p.shape for p in params.values() if id(p) in snames}
    slices = {name: {axis: np.flatnonzero(keep).tolist() for axis, keep in axis_keeps.items()}
              for name, axis_keeps in keeps.items()}
    return ShrinkPlan(kept, new_shapes, slices)


# The fix shrink prints for each kind of problem (a Problem's kind).
_FIX = {
    'rule': ('Fix the rule (see docs/shrink.md#blocks-with-their-own-channel-counts) or '
             'leave that block\'s channels unmasked (prune_channels with key=).'),
    'fails': ('Make the layer take its channel counts from its attributes (channels, '
              'in_channels, units) or from its parameters instead of constants, or '
              'leave its channels unmasked (prune_channels with key=).'),
    'differs': ('The layer reads the removed channels in a way the tracer does not see; '
                'leave its channels unmasked (prune_channels with key=) and report the '
                'layer\'s code.'),
}


class _Check(NamedTuple):
    """What the all-or-nothing check runs and compares with."""
    shapes: list        # the input shapes
    batches: list       # one NDArray per data input
    ctxs: list          # every context of the net
    before: list        # per context, the masked net's outputs (NDArrays, maybe still running)
    kept: dict          # group name -> kept channels (to compare a layer's kept channels)


class Change(NamedTuple):
    """One parameter's new arrays, computed before anything is written."""
    param: Any
    shape: tuple
    arrays: list        # one per context
    keeps: dict         # axis -> bool array: the indices kept along it


def _checked_inputs(inputs, trainer, net):
    """``(shapes, batches, contexts)`` for the check, or a typed error."""
    shapes = input_shapes(inputs)
    batches = input_batches(inputs, shapes)
    for i, b in enumerate(batches):
        if not np.all(np.isfinite(_mx.to_host(b))):
            raise SurgeryValueError('inputs[%d] has NaN or infinite values; the check compares '
                                    'outputs, so pass a finite batch.' % i)
    ctxs = net_contexts(net)
    if trainer is not None and not isinstance(trainer, gluon.Trainer):
        raise SurgeryTypeError('trainer must be a gluon.Trainer or None, got %s.'
                               % type(trainer).__name__)
    return shapes, batches, ctxs


def _reference(net, shapes, batches, ctxs):
    """The masked net's outputs on every context (queued, not waited for): what the shrunk
    net must compute."""
    try:
        return [launch(net, batches, ctx) for ctx in ctxs]
    except mx.base.MXNetError as err:
        raise _not_running(net, shapes, err) from None


def _read_reference(net, shapes, before):
    """``before`` as numpy arrays; an error the engine met running it is the caller's."""
    try:
        return [read(outs) for outs in before]
    except mx.base.MXNetError as err:
        raise _not_running(net, shapes, err) from None


def _not_running(net, shapes, err):
    return SurgeryValueError('%s \'%s\' does not run on inputs of shape %s: %s'
                             % (type(net).__name__, net.name, shapes,
                                str(err).splitlines()[0]))


def _initialised(params):
    for param in params.values():
        if _mx.is_deferred(param) or _mx.raw_data(param) is None:
            raise ParameterStateError("Parameter '%s' is not initialised; initialise the net "
                                      "and run one forward before shrink." % param.name)
    return params


def _plan_keeps(graph, params):
    """``(keeps, kept)``: which indices each (parameter, axis) keeps (``{name: {axis: bool
    array}}``, only where some go), and each prunable group's kept channels. Pure: reads
    the masks, writes nothing."""
    keeps, kept = {}, OrderedDict()
    prunable = [g for g in graph.groups if g.prunable]
    alive = _alive_rows(prunable, params)
    for group in prunable:
        dead = _dead_channels(group, alive)
        if dead.all():
            dead[0] = False   # a layer needs one channel; it stays masked
        kept[group.name] = np.flatnonzero(~dead).tolist()
        if not dead.any():
            continue
        for member in group.members:
            shape = params[member.param].shape
            keep = keeps.setdefault(member.param, {}).setdefault(
                member.axis, np.ones(shape[member.axis], dtype=bool))
            keep[channel_rows(member, np.flatnonzero(dead))] = False
    return keeps, kept


def _new_arrays(params, keeps, indices):
    """Every changed parameter's (and its mask's) new arrays, nothing written yet
    (``indices``: the take indices from :func:`_index_arrays`)."""
    changes = []
    with autograd.pause():
        for name, axis_keeps in keeps.items():
            for param in filter(None, (params[name], _mask_of(params, name))):
                arrays = [_take(a, axis_keeps, indices) for a in _mx.raw_data(param)]
                changes.append(Change(param, tuple(arrays[0].shape), arrays, axis_keeps))
    return changes


def _index_arrays(params, keeps):
    """The index NDArrays of every take, made before any take is queued: making an NDArray
    from numpy waits until the engine has run everything queued before it."""
    cache = {}
    for name, axis_keeps in keeps.items():
        for arr in _mx.raw_data(params[name]):
            for keep in axis_keeps.values():
                _index(keep, arr.context, cache)
    return cache


def _commit(net, params, changes, rule_kept, trainers, check, indices):
    """Write ``changes``, resize the blocks, run the rules and the check; commit (the
    Trainers updated) and return None, or put everything back and return the Problem."""
    blocks = resized_blocks(net, [c.param for c in changes])
    # All or nothing, the Trainers included: shrink replaces arrays and states with new ones
    # and never writes into the old ones, so no values need copying.
    transaction = Transaction(net, trainers, values=False, params=params)
    differs_at = None
    with transaction:
        for change in changes:
            _mx.set_param_arrays(change.param, change.shape, change.arrays)
        resize(blocks)
        problem = run_rules(net, rule_kept)
        _mx.clear_cached_graphs(net)
        if problem is None:
            problem = _verify(net, check)
        if isinstance(problem, _Differs):
            differs_at, problem = problem, None
            shrunk = internals(net, check.batches, differs_at.ctx)
        elif problem is None:
            for t in trainers:
                _update_trainer(t, changes, indices)
    if differs_at is not None:
        transaction.rollback()
        # the layer to blame is found by comparing with the masked net, back in place
        return difference(net, check.batches, differs_at.bad, differs_at.ctx, check.kept,
                          shrunk)
    if problem is not None:
        transaction.rollback()
    return problem


class _Differs(NamedTuple):
    bad: Any        # the check's Difference
    ctx: Any        # on which context


def _verify(net, check):
    """None when the shrunk net computes the masked net's outputs on every context, else
    the Problem of the first context where it fails to run, or the :class:`_Differs`
    where it differs."""
    launched = []
    for ctx in check.ctxs:
        try:
            launched.append(launch(net, check.batches, ctx))
        except Exception as err:  # pylint: disable=broad-except
            launched.append(err)
            break
    before = _read_reference(net, check.shapes, check.before)
    for ctx, ref, outs in zip(check.ctxs, before, launched):
        try:
            if isinstance(outs, Exception):
                raise outs
            after = read(outs)
        except Exception as err:  # pylint: disable=broad-except
            return failure(net, err, ctx, check.shapes)
        bad = differs(ref, after)
        if bad is not None:
            return _Differs(bad, ctx)
    return None


def _mask_of(params, name):
    # (a plain dict: ParameterDict.get would create the parameter)
    return params[name + MASK_SUFFIX] if name + MASK_SUFFIX in params else None


def _alive_rows(groups, params):
    """``{(parameter, axis): bool array}``: which indices along ``axis`` of each maskable
    member's parameter have a nonzero mask entry (members without a mask are left out).

    Each mask is copied to the host once and reduced once per axis. (On a CPU context the
    same reductions in MXNet measured about 17 times slower than this copy and numpy; see
    bench/README.md.)"""
    rows, nonzero = {}, {}
    with autograd.pause():
        for group in groups:
            for member in group.maskable:
                key = (member.param, member.axis)
                mask = _mask_of(params, member.param)
                if mask is None or key in rows:
                    continue
                if member.param not in nonzero:
                    nonzero[member.param] = _mx.to_host(_mx.raw_data(mask)[0]) != 0
                nz = nonzero[member.param]
                others = tuple(a for a in range(nz.ndim) if a != member.axis)
                rows[key] = nz.any(axis=others) if others else nz
    return rows


def _dead_channels(group, alive):
    """Channels of ``group`` whose maskable members are all masked to zero (``alive``:
    from :func:`_alive_rows`)."""
    dead = np.ones(group.size, dtype=bool)
    for member in group.maskable:
        rows = alive.get((member.param, member.axis))
        if rows is None:
            return np.zeros(group.size, dtype=bool)
        _, _, off, st = member
        dead &= ~rows[off:off + group.size * st].reshape(group.size, st).any(axis=1)
    return dead if group.maskable else np.zeros(group.size, dtype=bool)


def _index(keep, ctx, cache):
    key = (keep.tobytes(), keep.shape, ctx)
    idx = cache.get(key)
    if idx is None:
        idx = cache[key] = nd.array(np.flatnonzero(keep), ctx=ctx, dtype='int64')
    return idx


def _take(arr, keeps, cache):
    """``arr`` restricted to the kept indices, axis by axis (a new array, same context).

    ``cache`` (a dict for one shrink) holds the index arrays: many members share a group's
    kept channels, and making an NDArray from numpy costs far more than the take itself."""
    out = arr
    for axis, keep in keeps.items():
        out = nd.take(out, _index(keep, arr.context, cache), axis=axis)
    return out.astype(arr.dtype, copy=False) if out.dtype != arr.dtype else out


def slice_state(state, old_shape, keeps, cache):
    if isinstance(state, nd.NDArray):
        if tuple(state.shape) == tuple(old_shape):
            return _take(state, keeps, cache)
        return state
    if isinstance(state, (list, tuple)):
        return type(state)(slice_state(s, old_shape, keeps, cache) for s in state)
    return state


def _trainers(net, trainer, touched):
    if trainer is not None and not isinstance(trainer, gluon.Trainer):
        raise SurgeryTypeError('trainer must be a gluon.Trainer or None, got %s.'
                               % type(trainer).__name__)
    found = [] if trainer is None else [trainer]
    for param in touched:
        last = _mx.last_trainer(param)
        if last is not None and all(last is not t for t in found):
            found.append(last)
    for t in found:
        kv_type = _mx.kvstore_type(_mx.trainer_kvstore(t)[0])
        if 'dist' in kv_type:
            raise TrainerStateError(
                "shrink cannot change the shapes of parameters held by a distributed kvstore "
                "('%s'): its servers keep the old shapes. Shrink before creating the Trainer, "
                "or save, shrink and restart the job." % kv_type)
    return found


def _update_trainer(trainer, changes, indices):
    by_param = {id(c.param): c.keeps for c in changes}
    for param in _mx.trainer_params(trainer):
        if id(param) not in by_param:
            continue
        idx = _mx.trainer_index(trainer, param)
        if idx is None:
            continue
        keeps = by_param[id(param)]
        old_shape = tuple(len(keeps[a]) if a in keeps else d for a, d in enumerate(param.shape))
        for updater in _mx.process_updaters(trainer):
            if idx in updater.states:
                updater.states[idx] = slice_state(updater.states[idx], old_shape, keeps,
                                                   indices)
    _mx.reinit_trainer_kvstore(trainer)
