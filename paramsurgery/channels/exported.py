"""Channel pruning of an exported model (symbol JSON + parameter file), with no model code.

The command line's ``paramsurgery shrink``: the model is loaded as a ``SymbolBlock``, its
channel groups traced exactly as :func:`trace_channels` traces a Gluon net, the channels to
remove chosen exactly as :func:`prune_channels` chooses them, and a new model written whose
operators have fewer channels. A ``SymbolBlock``'s parameters cannot be reshaped, so the
shrink happens on the files: every member's arrays (and masks) are sliced, and each
Convolution's ``num_filter`` (and a depthwise one's ``num_group``), each FullyConnected's
``num_hidden``, and every variable's ``__shape__`` are rewritten in the symbol JSON. Channels
that the export's masks already zero are removed too, as :func:`shrink` removes them. Before
anything is written the new model's output is checked against the original with the removed
channels zeroed (the masked equivalent), as :func:`shrink` checks.
"""
import json
from collections import OrderedDict

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon

from .. import _mx
from .._amounts import check_amount
from ..errors import ShrinkError
from ..masks import load_exported
from ..masks.files import quiet_input_types
from ..select import MASK_SUFFIX
from .importance import GroupState, channel_rows
from .inputs import flat_outputs, input_names
from .ops import count_ops
from .prune import check_round_to, choose_channels, selected_groups
from .trace import build

_TOLERANCE = 1e-4


class ExportedShrink:
    """The result of :func:`shrink_exported`: the new symbol JSON text and arrays (in
    ``nd.save`` naming: ``arg:``/``aux:`` prefixes), and the counts before and after."""

    def __init__(self, symbol_json, arrays, before, after, removed):
        self.symbol_json = symbol_json
        self.arrays = arrays
        self.before = before
        self.after = after
        self.removed = removed


def _load(symbol_file, param_file, n_inputs):
    # load_exported gives every parameter its shape (imports leaves it None, and tracing
    # would then accept an input shape the weights do not fit) and names damaged files
    return load_exported(symbol_file, input_names(n_inputs), param_file)


def _check_masks(masks, weights):
    """Every mask of a group member is sliced with its weight: it must have its shape."""
    for name, mask in masks.items():
        if mask.shape != weights[name].shape:
            raise ShrinkError(
                "The export's mask '%s%s' has shape %s, not the shape %s of '%s', so it cannot "
                "be sliced with its weight. Bake the masks first (ps.remove_mask(net, "
                "ps.masked(net)) before export()); nothing was written."
                % (name, MASK_SUFFIX, mask.shape, weights[name].shape, name))


def _with_masked(group, chosen, weights, masks):
    """``chosen`` and the channels of ``group`` that the masks zero on every maskable
    member (one is kept when all are, as :func:`shrink` keeps one)."""
    dead = np.flatnonzero(~GroupState(group, weights, masks).alive)
    if len(dead) == group.size:
        dead = dead[1:]
    return np.union1d(np.asarray(chosen, dtype=np.int64), dead).astype(np.int64)


def deletions(groups, pruned, masks):
    """``{param: {axis: sorted rows to delete}}`` for the chosen channels of every group
    (the members and their ``masks``)."""
    out = {}
    for group, chosen in zip(groups, pruned):
        if not len(chosen):
            continue
        for member in group.members:
            name, axis = member.param, member.axis
            rows = channel_rows(member, chosen)
            out.setdefault(name, {}).setdefault(axis, set()).update(int(r) for r in rows)
            if name in masks:       # a mask is sliced with its weight (checked: same shape)
                out.setdefault(name + MASK_SUFFIX, {}).setdefault(axis, set()).update(
                    int(r) for r in rows)
    return {name: {axis: np.array(sorted(rows), dtype=np.int64) for axis, rows in axes.items()}
            for name, axes in out.items()}


def rewrite(graph_json, new_shapes):
    """The symbol JSON with every operator's channel counts and every variable's shape set
    from the new parameter shapes."""
    graph = json.loads(graph_json)
    nodes = graph['nodes']

    def source(entry):
        node = nodes[entry[0]]
        while node['op'] != 'null' and node['inputs']:
            node = nodes[node['inputs'][0][0]]
        return node['name']

    for node in nodes:
        attrs = node.get('attrs', {})
        if node['op'] == 'null':
            if node['name'] in new_shapes and '__shape__' in attrs:
                attrs['__shape__'] = str(tuple(new_shapes[node['name']]))
            continue
        if node['op'] not in ('Convolution', 'Deconvolution', 'FullyConnected',
                              'Embedding') or len(node['inputs']) < 2:
            continue
        weight = source(node['inputs'][1])
        if weight not in new_shapes:
            continue
        shape = new_shapes[weight]
        if node['op'] == 'Embedding':
            attrs['output_dim'] = str(shape[1])
            continue
        if node['op'] == 'FullyConnected':
            attrs['num_hidden'] = str(shape[0])
            continue
        old_filters = int(attrs['num_filter'])
        groups = int(attrs.get('num_group', '1'))
        if groups > 1 and groups == old_filters:          # depthwise: one group a channel
            groups = shape[0]
            attrs['num_group'] = str(groups)
        # a transposed convolution's weight is (in, out / groups, kernel...)
        attrs['num_filter'] = str(shape[1] * groups if node['op'] == 'Deconvolution'
                                  else shape[0])
    return json.dumps(graph)


def _masked_outputs(block, groups, pruned, removed_rows, batches):
    """The masked equivalent's outputs: the original model with every removed channel
    zeroed (its parameters put back afterwards)."""
    params = block.collect_params()
    originals = {name: params[name].data().copy() for name in removed_rows}
    try:
        for group, chosen in zip(groups, pruned):
            if not len(chosen):
                continue
            for member, role in zip(group.members, group.roles):
                if role in ('bn_mean', 'bn_var'):
                    continue
                arr = np.moveaxis(_mx.to_host(params[member.param].data()), member.axis, 0)
                arr[channel_rows(member, chosen)] = 0
                params[member.param].set_data(mx.nd.array(np.moveaxis(arr, 0, member.axis),
                                                       dtype=arr.dtype))
        with autograd.predict_mode():
            masked = block(*batches)
        return [_mx.to_host(m) for m in flat_outputs(masked)]
    finally:
        for name, value in originals.items():
            params[name].set_data(value)


def shrink_exported(symbol_file, param_file, shapes, amount, *, importance='l2',
                    scope='layer', round_to=1):
    """Prune channels of an exported model and return the shrunk model (nothing written).

    ``shapes`` is a list of input shapes (one per data input). Raises ``ShrinkError`` when
    the shrunk model does not compute what the masked original computes.
    """
    # type, NaN, sign, float > 1: first (a dict, from a plan, names every group)
    for one in (amount.values() if isinstance(amount, dict) else [amount]):
        check_amount(one, what='channels')
    round_to = check_round_to(round_to)
    block = _load(symbol_file, param_file, len(shapes))
    graph = build(block, shapes)
    groups = selected_groups(block, graph, None)
    params = block.collect_params()
    names = list(OrderedDict.fromkeys(m.param for g in groups for m in g.members))
    with autograd.pause():
        weights = {n: _mx.to_host(params[n].data()) for n in names}
        masks = {n: _mx.to_host(params[n + MASK_SUFFIX].data()) for n in names
                 if n + MASK_SUFFIX in params}
    _check_masks(masks, weights)
    pruned = choose_channels(block, groups, weights, masks, amount, importance, scope,
                             round_to)
    # channels the export's masks already zero go too, as shrink removes them from a net
    pruned = [_with_masked(group, chosen, weights, masks)
              for group, chosen in zip(groups, pruned)]
    before = count_ops(block, *shapes)
    removed_rows = deletions(groups, pruned, masks)
    batches = [mx.nd.array(np.random.RandomState(i).uniform(-1, 1, size=s))
               for i, s in enumerate(shapes)]
    masked = _masked_outputs(block, groups, pruned, removed_rows, batches)
    arrays = OrderedDict()
    new_shapes = {}
    symbol = mx.sym.load(symbol_file)
    aux = set(symbol.list_auxiliary_states())
    for name, param in params.items():
        value = _mx.to_host(param.data())
        for axis, rows in removed_rows.get(name, {}).items():
            value = np.delete(value, rows, axis=axis)
        if name in removed_rows:
            new_shapes[name] = value.shape
        arrays[('aux:' if name in aux else 'arg:') + name] = mx.nd.array(value, dtype=value.dtype)
    symbol_json = rewrite(symbol.tojson(), new_shapes)
    with quiet_input_types():
        shrunk = gluon.SymbolBlock(mx.sym.load_json(symbol_json),
                                   [mx.sym.var(n) for n in input_names(len(shapes))])
    shrunk_params = shrunk.collect_params()
    for key, value in arrays.items():
        shrunk_params[key.split(':', 1)[1]]._load_init(value, mx.cpu())
    with autograd.predict_mode():
        out = shrunk(*batches)
    out = [_mx.to_host(o) for o in flat_outputs(out)]
    for i, (a, b) in enumerate(zip(masked, out)):
        scale = max(float(np.abs(a).max()), 1e-12)
        if a.shape != b.shape or float(np.abs(a - b).max()) > _TOLERANCE * scale:
            raise ShrinkError(
                "The shrunk model's output %d differs from the original's with the removed "
                "channels zeroed (max |difference| %s, tolerance %.0e of %.4g). Nothing was "
                "written. Report the model's operators: one of them uses a channel count the "
                "tracer does not know." % (i, float(np.abs(a - b).max()) if a.shape == b.shape
                                            else 'shape %s vs %s' % (a.shape, b.shape),
                                            _TOLERANCE, scale))
    after = count_ops(shrunk, *shapes)
    removed = {g.name: len(c) for g, c in zip(groups, pruned) if len(c)}
    return ExportedShrink(symbol_json, arrays, before, after, removed)
