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
import json
import os
import re
from collections import OrderedDict
from typing import Any, Dict, List, Union

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon
from mxnet import ndarray as nd

from . import _internals
from ._files import check_path, reading, write_bytes
from ._snapshot import Transaction
from .channels import (
    _batches,
    _build,
    _channel_rows,
    _check_owners,
    _flat_outputs,
    _input_shapes,
    _require_hybrid,
)
from .errors import (
    ParameterStateError,
    ShrinkError,
    SurgeryTypeError,
    SurgeryValueError,
    TrainerStateError,
)
from .masks import structural_keys
from .select import MASK_SUFFIX, all_params, mask_names

__all__ = ['shrink', 'ShrinkPlan', 'apply_plan']

_FORMAT = 'paramsurgery-shrink-plan'
_VERSION = 1
#: Relative tolerance of the all-or-nothing check: max |shrunk - masked| <= RTOL * max |masked|.
RTOL = 1e-4


# --------------------------------------------------------------------------- the plan

def _ints(values, what, low):
    """``values`` as a list of ints >= ``low``, or a typed error naming ``what``."""
    if not isinstance(values, (list, tuple)) or not all(
            isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))
            for v in values):
        raise SurgeryTypeError('%s must be a list of ints, got %r.' % (what, values))
    if any(v < low for v in values):
        raise SurgeryValueError('%s has a value below %d: %r.' % (what, low, values))
    return [int(v) for v in values]


class ShrinkPlan:
    """What :func:`shrink` did, enough to rebuild the shrunk network from its class.

    Attributes
    ----------
    kept : dict of str -> list of int
        For every prunable channel group (by name, see :func:`trace_channels`), the indices
        of the channels kept.
    shapes : dict of str -> tuple of int
        The shape of every parameter of the shrunk net (masks excepted), by structural name
        as ``save_parameters`` names them (``'features.0.weight'``).

    Examples
    --------
    >>> import os, tempfile, paramsurgery as ps
    >>> plan = ps.ShrinkPlan({'conv0_weight': [0, 2]}, {'0.weight': (2, 3, 3, 3)})
    >>> path = os.path.join(tempfile.mkdtemp(), 'plan.json')
    >>> plan.save(path)
    >>> ps.ShrinkPlan.load(path).shapes
    {'0.weight': (2, 3, 3, 3)}
    """

    def __init__(self, kept: Dict[str, List[int]], shapes: Dict[str, tuple]):
        if not isinstance(kept, dict) or not isinstance(shapes, dict):
            raise SurgeryTypeError('ShrinkPlan(kept, shapes) takes two dicts (group name -> '
                                   'kept indices, structural name -> shape), got %s and %s.'
                                   % (type(kept).__name__, type(shapes).__name__))
        self.kept = {str(k): _ints(v, 'kept[%r]' % k, 0) for k, v in kept.items()}
        self.shapes = {str(k): tuple(_ints(v, 'shapes[%r]' % k, 1)) for k, v in shapes.items()}

    def to_dict(self) -> Dict[str, Any]:
        """The plan as plain JSON-able data."""
        return {'format': _FORMAT, 'version': _VERSION, 'kept': self.kept,
                'shapes': {k: list(v) for k, v in self.shapes.items()}}

    def save(self, path: str) -> None:
        """Write the plan as JSON, atomically (a temporary file in the same folder, flushed
        to disk, then renamed over ``path``): a crash never leaves half a plan."""
        path = check_path('path', path, write=True)
        write_bytes(path, json.dumps(self.to_dict(), indent=1).encode('utf-8'))

    @classmethod
    def load(cls, path: str) -> 'ShrinkPlan':
        """Read a plan written by :meth:`save`."""
        path = check_path('path', path)
        with reading(path, 'shrink plan (JSON written by ShrinkPlan.save)',
                     'Write it with ShrinkPlan.save.'):
            with open(path, 'rb') as f:
                data = json.loads(f.read().decode('utf-8'))
            if not isinstance(data, dict) or data.get('format') != _FORMAT or \
                    data.get('version') != _VERSION:
                raise ValueError('format %r version %r, expected %r version %d'
                                 % (data.get('format') if isinstance(data, dict) else None,
                                    data.get('version') if isinstance(data, dict) else None,
                                    _FORMAT, _VERSION))
            return cls(data['kept'], data['shapes'])

    def __eq__(self, other):
        return isinstance(other, ShrinkPlan) and self.kept == other.kept and \
            self.shapes == other.shapes

    def __repr__(self):
        return 'ShrinkPlan(%d groups, %d parameters)' % (len(self.kept), len(self.shapes))


# --------------------------------------------------------------------------- helpers

def _contexts(net):
    for param in all_params(net).values():
        ctxs = _internals.context_list(param)
        if ctxs:
            return list(ctxs)
    return [mx.current_context()]


def _forward(net, batches, ctx):
    with autograd.predict_mode():
        out = net(*[b.as_in_context(ctx) for b in batches])
    return [o.asnumpy() for o in _flat_outputs(out)]


def _differs(before, after):
    """None when the outputs agree within ``RTOL``, else ``(index, max diff, scale)``."""
    for i, (a, b) in enumerate(zip(before, after)):
        scale = float(np.abs(a).max()) if a.size else 0.0
        if a.shape != b.shape:
            return i, float('inf'), scale
        diff = float(np.abs(a.astype(np.float64) - b).max()) if a.size else 0.0
        if not np.isfinite(diff) or diff > RTOL * scale:
            return i, diff, scale
    return None


def _layer_of(net, node_name):
    """The block whose operator node is ``node_name`` (longest matching prefix)."""
    best = None
    for blk in _internals.walk_blocks(net):
        prefix = blk.prefix
        if prefix and node_name.startswith(prefix) and (best is None or
                                                        len(prefix) > len(best.prefix)):
            best = blk
    if best is None:
        return "operator node '%s'" % node_name
    return "layer '%s' (%s, operator node '%s')" % (best.name, type(best).__name__, node_name)


def _mask_of(params, name):
    # (a plain dict: ParameterDict.get would create the parameter)
    return params[name + MASK_SUFFIX] if name + MASK_SUFFIX in params else None


def _dead_channels(group, params, cache):
    """Channels of ``group`` whose maskable members are all masked to zero."""
    dead = np.ones(group.size, dtype=bool)
    any_mask = False
    with autograd.pause():
        for member in group.maskable:
            mask = _mask_of(params, member[0])
            if mask is None:
                return np.zeros(group.size, dtype=bool)
            any_mask = True
            if member[0] not in cache:
                cache[member[0]] = _internals.raw_data(mask)[0].asnumpy()
            values = cache[member[0]]
            view = np.moveaxis(values, member[1], 0)[member[2]:member[2] + group.size * member[3]]
            dead &= ~np.any(view.reshape(group.size, -1) != 0, axis=1)
    return dead if any_mask else np.zeros(group.size, dtype=bool)


def _take(arr, keeps, cache):
    """``arr`` restricted to the kept indices, axis by axis (a new array, same context).

    ``cache`` (a dict for one shrink) holds the index arrays: many members share a group's
    kept channels, and making an NDArray from numpy costs far more than the take itself."""
    out = arr
    for axis, keep in keeps.items():
        key = (keep.tobytes(), keep.shape, arr.context)
        idx = cache.get(key)
        if idx is None:
            idx = cache[key] = nd.array(np.flatnonzero(keep), ctx=arr.context, dtype='int64')
        out = nd.take(out, idx, axis=axis)
    return out.astype(arr.dtype, copy=False) if out.dtype != arr.dtype else out


def _slice_state(state, old_shape, keeps, cache):
    if isinstance(state, nd.NDArray):
        if tuple(state.shape) == tuple(old_shape):
            return _take(state, keeps, cache)
        return state
    if isinstance(state, (list, tuple)):
        return type(state)(_slice_state(s, old_shape, keeps, cache) for s in state)
    return state


def _owner_blocks(net):
    """``{id(param): [block, ...]}`` for every registered parameter."""
    owners = {}
    for blk in _internals.walk_blocks(net):
        for param in _internals.block_params(blk).values():
            owners.setdefault(id(param), []).append(blk)
    return owners


def _trainers(net, trainer, touched):
    if trainer is not None and not isinstance(trainer, gluon.Trainer):
        raise SurgeryTypeError('trainer must be a gluon.Trainer or None, got %s.'
                               % type(trainer).__name__)
    found = [] if trainer is None else [trainer]
    for param in touched:
        last = _internals.last_trainer(param)
        if last is not None and all(last is not t for t in found):
            found.append(last)
    for t in found:
        kv_type = _internals.kvstore_type(_internals.trainer_kvstore(t)[0])
        if 'dist' in kv_type:
            raise TrainerStateError(
                "shrink cannot change the shapes of parameters held by a distributed kvstore "
                "('%s'): its servers keep the old shapes. Shrink before creating the Trainer, "
                "or save, shrink and restart the job." % kv_type)
    return found


# --------------------------------------------------------------------------- shrink

def shrink(net, *, inputs, trainer=None) -> ShrinkPlan:
    """Remove the fully masked channels of ``net`` for real, in place, on every context.

    Every channel of a prunable group (see :func:`trace_channels`) whose maskable members
    are all masked to zero is removed from every member (BatchNorm running statistics
    follow). The blocks keep their classes: ``Conv2D`` and the like get ``channels``,
    ``in_channels`` and, depthwise, ``groups`` updated, ``Dense`` ``units`` and
    ``in_units``, ``BatchNorm`` ``in_channels``. Masks of what remains are kept, sliced.
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
    _require_hybrid(net, 'shrink')
    shapes = _input_shapes(inputs)
    batches = _batches(inputs, shapes)
    for i, b in enumerate(batches):
        if not np.all(np.isfinite(b.asnumpy())):
            raise SurgeryValueError('inputs[%d] has NaN or infinite values; the check compares '
                                    'outputs, so pass a finite batch.' % i)
    ctxs = _contexts(net)
    if trainer is not None and not isinstance(trainer, gluon.Trainer):
        raise SurgeryTypeError('trainer must be a gluon.Trainer or None, got %s.'
                               % type(trainer).__name__)
    graph = _build(net, shapes)
    _check_owners(net, graph)
    try:
        before = [_forward(net, batches, ctx) for ctx in ctxs]
    except mx.base.MXNetError as err:
        raise SurgeryValueError('%s \'%s\' does not run on inputs of shape %s: %s'
                                % (type(net).__name__, net.name, shapes,
                                   str(err).splitlines()[0])) from None
    params = all_params(net)
    for param in params.values():
        if _internals.is_deferred(param) or _internals.raw_data(param) is None:
            raise ParameterStateError("Parameter '%s' is not initialised; initialise the net "
                                      "and run one forward before shrink." % param.name)
    # Which indices each (parameter, axis) keeps.
    keeps, kept, cache = {}, OrderedDict(), {}
    for group in graph.groups:
        if not group.prunable:
            continue
        dead = _dead_channels(group, params, cache)
        if dead.all():
            dead[0] = False   # a layer needs one channel; it stays masked
        kept[group.name] = np.flatnonzero(~dead).tolist()
        if not dead.any():
            continue
        for member in group.members:
            name, axis = member[0], member[1]
            shape = params[name].shape
            keep = keeps.setdefault(name, {}).setdefault(axis, np.ones(shape[axis], dtype=bool))
            keep[_channel_rows(member, np.flatnonzero(dead))] = False
    snames = structural_keys(net)
    if not keeps:
        return ShrinkPlan(kept, {snames[id(p)]: p.shape for p in params.values()
                                 if id(p) in snames})
    touched = [params[n] for n in keeps]
    trainers = _trainers(net, trainer, touched)
    owners = _owner_blocks(net)
    # New arrays, computed before anything changes.
    changes = []   # (param, new shape, new arrays, keeps)
    indices = {}
    with autograd.pause():
        for name, axis_keeps in keeps.items():
            for param in filter(None, (params[name], _mask_of(params, name))):
                arrays = [_take(a, axis_keeps, indices) for a in _internals.raw_data(param)]
                changes.append((param, tuple(arrays[0].shape), arrays, axis_keeps))
    blocks = OrderedDict()
    for param, _, _, _ in changes:
        for blk in owners.get(id(param), ()):
            blocks[id(blk)] = blk
    depthwise = {id(b): _internals.is_conv(b) and _internals.is_depthwise(b)
                 for b in blocks.values()}
    # The masked net's arrays, for the diagnosis of a shrunk net that computes otherwise.
    saved_params = [(p, _internals.param_arrays_state(p)) for p, _, _, _ in changes]
    # All or nothing, the Trainers included: shrink replaces arrays and states with new ones
    # and never writes into the old ones, so no values need copying.
    transaction = Transaction(net, trainers, values=False)
    with transaction:
        for param, shape, arrays, _ in changes:
            _internals.set_param_arrays(param, shape, arrays)
        for blk in blocks.values():
            _internals.resize_block(blk, depthwise[id(blk)])
        _internals.clear_cached_graphs(net)
        problem = None
        for ctx, ref in zip(ctxs, before):
            try:
                after = _forward(net, batches, ctx)
            except Exception as err:  # pylint: disable=broad-except
                problem = _failure(net, err, ctx, shapes)
                break
            bad = _differs(ref, after)
            if bad is not None:
                problem = _difference(net, graph, batches, saved_params, bad, ctx, kept)
                break
        if problem is None:
            for t in trainers:
                _update_trainer(t, changes)
    if problem is not None:
        transaction.rollback()
        if problem.startswith('The shrunk net fails'):
            fix = ('Make the layer take its channel counts from its attributes (channels, '
                   'in_channels, units) or from its parameters instead of constants, or '
                   'leave its channels unmasked (prune_channels with key=).')
        else:
            fix = ('The layer reads the removed channels in a way the tracer does not see; '
                   'leave its channels unmasked (prune_channels with key=) and report the '
                   'layer\'s code.')
        raise ShrinkError(problem + ' Nothing was changed. ' + fix)
    new_shapes = {snames[id(p)]: p.shape for p in params.values() if id(p) in snames}
    return ShrinkPlan(kept, new_shapes)


def _failure(net, err, ctx, shapes):
    text = str(err)
    match = re.search(r'Error in operator ([^\s:]+)', text)
    if not match:
        # An imperative forward does not say which operator failed; shape inference on the
        # traced graph (with the parameters' new shapes) does.
        try:
            _build(net, shapes)
        except Exception as traced:  # pylint: disable=broad-except
            match = re.search(r'Error in operator ([^\s:]+)', str(traced))
    where = _layer_of(net, match.group(1)) if match else 'the forward'
    first = next((l.strip() for l in text.splitlines() if 'Check failed' in l or
                  'Error in operator' in l), text.splitlines()[0] if text else '')
    return ('The shrunk net fails to run on %s: %s raises %s: %s.'
            % (ctx, where, type(err).__name__, first))


def _difference(net, graph, batches, saved_params, bad, ctx, kept):
    index, diff, scale = bad
    where = _first_differing_node(net, graph, batches, saved_params, ctx, kept)
    return ('The shrunk net computes something else than the masked net on %s: output %d '
            'differs by %.3g (max |masked output| %.3g, tolerance %.0e of it)%s.'
            % (ctx, index, diff, scale, RTOL,
               '; the first layer that differs is %s' % where if where else ''))


def _first_differing_node(net, graph, batches, saved_params, ctx, kept):
    """Compare every operator's output, masked (old arrays) vs shrunk, on the kept channels.

    Returns a description of the first node (topological order) that differs, or None.
    """
    try:
        trace = graph._trace
        layout = graph._layout
        names = dict(zip(trace.input_names, batches))
        old = {p.name: state[1] for p, state in saved_params}
        old_vals = _internals_outputs(trace.symbol, net, names, ctx, old)
        new_graph = _build(net, [tuple(b.shape) for b in batches])
        new_vals = _internals_outputs(new_graph._trace.symbol, net, names, ctx, {})
    except Exception:  # pylint: disable=broad-except
        return None
    groups = graph.groups
    for nid, node in enumerate(trace.nodes):
        if node['op'] == 'null' or nid in graph._param_nodes:
            continue
        key = node['name'] + '_output'
        if key not in old_vals or key not in new_vals:
            continue
        a, b = old_vals[key], new_vals[key]
        segs = layout.get((nid, 0))
        if segs and a.ndim >= 2:
            rows = []
            for gi, off, st in segs:
                g = groups[gi]
                chans = kept.get(g.name, list(range(g.size))) if g.prunable else range(g.size)
                rows.extend(_channel_rows((None, 1, off, st), list(chans)).tolist())
            if max(rows, default=-1) < a.shape[1]:
                a = np.take(a, rows, axis=1)
        if a.shape != b.shape:
            return _layer_of(net, node['name']) + ' (shape %s, expected %s)' % (b.shape, a.shape)
        scale = float(np.abs(a).max()) if a.size else 0.0
        if a.size and float(np.abs(a - b).max()) > RTOL * max(scale, 1e-30):
            return _layer_of(net, node['name'])
    return None


def _internals_outputs(symbol, net, names, ctx, override):
    """Every internal output of ``symbol`` (predict mode) with the net's parameters, or the
    arrays in ``override`` (name -> per-context list)."""
    every = symbol.get_internals()
    # operator outputs only: variables among the heads confuse the executor
    internals = mx.sym.Group([every[i] for i, n in enumerate(every.list_outputs())
                              if re.search(r'_output\d*$', n)])
    params = net.collect_params()

    def value(name, copy=False):
        if name in names:
            return names[name].as_in_context(ctx)
        arrays = override.get(name, _internals.raw_data(params[name]))
        arr = arrays[_internals.context_index(params[name], ctx) or 0]
        return arr.copy() if copy else arr

    # lists, in the executor's order (a variable may be listed more than once)
    args = [value(n) for n in internals.list_arguments()]
    aux = [value(n, copy=True) for n in internals.list_auxiliary_states()]
    # MKLDNN's subgraph fusion (convolution + BatchNorm) miscounts the arguments of a
    # graph with several heads; it is switched off for this one diagnostic binding.
    previous = os.environ.get('MXNET_SUBGRAPH_BACKEND')
    os.environ['MXNET_SUBGRAPH_BACKEND'] = 'NONE'
    try:
        executor = internals.bind(ctx, args=args, aux_states=aux, grad_req='null')
    finally:
        if previous is None:
            del os.environ['MXNET_SUBGRAPH_BACKEND']
        else:
            os.environ['MXNET_SUBGRAPH_BACKEND'] = previous
    outs = executor.forward(is_train=False)
    return {n: o.asnumpy() for n, o in zip(internals.list_outputs(), outs)}


def _update_trainer(trainer, changes):
    by_param = {id(p): (shape, keeps) for p, shape, _, keeps in changes}
    indices = {}
    for param in _internals.trainer_params(trainer):
        if id(param) not in by_param:
            continue
        idx = _internals.trainer_index(trainer, param)
        if idx is None:
            continue
        _, keeps = by_param[id(param)]
        old_shape = tuple(len(keeps[a]) if a in keeps else d for a, d in enumerate(param.shape))
        for updater in _internals.process_updaters(trainer):
            if idx in updater.states:
                updater.states[idx] = _slice_state(updater.states[idx], old_shape, keeps,
                                                   indices)
    _internals.reinit_trainer_kvstore(trainer)


# --------------------------------------------------------------------------- apply_plan

def apply_plan(net, plan: Union[ShrinkPlan, str, 'os.PathLike']) -> List[str]:
    """Reshape a freshly built net of the same architecture as a shrunk one.

    The parameters named in the plan (by structural name) get the plan's shapes and the
    blocks their channel counts, so that ``load_parameters`` of the shrunk net's file (and
    then ``load_masks``, if masks were saved with :func:`save_masks`) works: a shrunk model
    is rebuilt from its own class, with no pickling. The net may be initialised (each
    array keeps its leading entries, to be overwritten by ``load_parameters``) or not.

    Parameters
    ----------
    net : Block
        A freshly built network of the class that was shrunk.
    plan : ShrinkPlan or str or os.PathLike
        The plan, or the path of a plan saved with :meth:`ShrinkPlan.save`.

    Returns
    -------
    list of str
        The structural names of the parameters whose shape changed.

    Raises
    ------
    ShrinkError
        The plan does not fit the net (the message names the first parameter that does not
        fit); nothing was changed.
    SurgeryTypeError, SurgeryValueError
        ``net`` is not a Block, or the plan cannot be read.

    Examples
    --------
    >>> import os, tempfile, mxnet as mx, paramsurgery as ps
    >>> from mxnet.gluon import nn
    >>> def build(prefix):
    ...     net = nn.HybridSequential(prefix=prefix)
    ...     with net.name_scope():
    ...         net.add(nn.Conv2D(8, 3), nn.BatchNorm(), nn.Activation('relu'),
    ...                 nn.GlobalAvgPool2D(), nn.Dense(2))
    ...     return net
    >>> net = build('old_')
    >>> net.initialize()
    >>> x = mx.nd.random.uniform(shape=(1, 3, 8, 8))
    >>> ps.prune_channels(net, 3, inputs=x)
    ['old_conv0_weight']
    >>> plan = ps.shrink(net, inputs=x)
    >>> folder = tempfile.mkdtemp()
    >>> plan.save(os.path.join(folder, 'plan.json'))
    >>> ps.remove_mask(net, ps.masked(net))      # bake the masks before saving
    ['old_conv0_weight', ...]
    >>> net.save_parameters(os.path.join(folder, 'net.params'))
    >>> fresh = build('new_')
    >>> ps.apply_plan(fresh, os.path.join(folder, 'plan.json'))
    ['0.weight', '0.bias', '1.gamma', '1.beta', '1.running_mean', '1.running_var', '4.weight']
    >>> fresh.load_parameters(os.path.join(folder, 'net.params'))
    >>> fresh[0]
    Conv2D(3 -> 5, kernel_size=(3, 3), stride=(1, 1))
    >>> (fresh(x) - net(x)).abs().max().asscalar()
    0.0
    """
    if not isinstance(net, gluon.Block):
        raise SurgeryTypeError('apply_plan needs the network (a gluon.Block), got %s.'
                               % type(net).__name__)
    if isinstance(plan, (str, os.PathLike)):
        plan = ShrinkPlan.load(plan)
    if not isinstance(plan, ShrinkPlan):
        raise SurgeryTypeError('plan must be a ShrinkPlan or the path of a saved plan, got %s.'
                               % type(plan).__name__)
    names = _internals.structural_names(net)
    params = all_params(net)
    masks = set(mask_names(params))
    mask_ids = set(id(params[n]) for n in masks)
    weights = OrderedDict((s, p) for s, p in names.items() if id(p) not in mask_ids)
    for sname in plan.shapes:
        if sname not in weights:
            raise ShrinkError(
                "The plan has a parameter '%s' that %s '%s' does not have (it has %s%s): the "
                "plan was made for another architecture. Build the net with the class and "
                "arguments of the shrunk one. Nothing was changed."
                % (sname, type(net).__name__, net.name, ', '.join(list(weights)[:4]),
                   ', ...' if len(weights) > 4 else ''))
    changed = []
    for sname, param in weights.items():
        if sname not in plan.shapes:
            raise ShrinkError(
                "%s '%s' has a parameter '%s' that the plan does not know: the plan was made "
                "for another architecture. Nothing was changed."
                % (type(net).__name__, net.name, sname))
        new = plan.shapes[sname]
        old = param.shape
        if old is None or len(old) != len(new) or any(
                o and (n > o or n < 1) for o, n in zip(old, new)) or any(n < 1 for n in new):
            raise ShrinkError(
                "Parameter '%s' (%s) has shape %s, which the plan's shape %s does not fit (a "
                "plan only removes channels): the plan was made for another architecture. "
                "Nothing was changed." % (sname, param.name, old, new))
        if tuple(old) != tuple(new):
            if param.name in {n[:-len(MASK_SUFFIX)] for n in masks}:
                raise ShrinkError(
                    "Parameter '%s' (%s) has a mask; masks are not part of a plan. Apply the "
                    "plan to a net without masks, then load_masks. Nothing was changed."
                    % (sname, param.name))
            changed.append((sname, param, tuple(new)))
    owners = _owner_blocks(net)
    blocks = OrderedDict()
    for _, param, _ in changed:
        for blk in owners.get(id(param), ()):
            blocks[id(blk)] = blk
    depthwise = {id(b): _internals.is_conv(b) and _internals.is_depthwise(b)
                 for b in blocks.values()}
    with autograd.pause():
        for _, param, new in changed:
            data = _internals.raw_data(param)
            if data is None or _internals.is_deferred(param):
                _internals.set_param_arrays(param, new)
                continue
            # Through numpy: basic slicing of an array that a predict-mode convolution left
            # in oneDNN's blocked layout kills the process with SIGFPE (MXNet 1.9.1);
            # asnumpy reads it back in the default layout.
            keep = tuple(slice(0, n) for n in new)
            arrays = [nd.array(a.asnumpy()[keep], ctx=a.context, dtype=a.dtype) for a in data]
            _internals.set_param_arrays(param, new, arrays)
    for blk in blocks.values():
        _internals.resize_block(blk, depthwise[id(blk)])
    _internals.clear_cached_graphs(net)
    return [s for s, _, _ in changed]
