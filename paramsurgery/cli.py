"""The ``paramsurgery`` command line (also ``python -m paramsurgery``).

``inspect`` and ``prune`` work on saved parameter files (``save_parameters``, ``nd.save``,
``export``) and ``shrink`` on an exported model, all without the model definition. Exit codes: 0 success, 2 bad usage or bad input
(one line on stderr, no traceback).
"""
import argparse
import os
import re
import sys
from collections import OrderedDict
from typing import List, Optional

import numpy as np

from . import _mx
from ._files import atomic_write, check_path, reading
from .errors import ParamSurgeryError, SelectionError
from .pruning_core import magnitude_masks, random_masks, structured_masks
from .report import arrays_report
from .select import MASK_SUFFIX, match, unmasked

__all__ = ['main']

PROG = 'paramsurgery'


class UsageError(Exception):
    """Bad input on the command line: reported in one line, exit code 2."""


def _load(path):
    import mxnet as mx
    if not os.path.isfile(path):
        raise UsageError("%s: no such file" % path)
    if os.path.getsize(path) == 0:
        raise UsageError('%s: the file is empty (0 bytes), not an MXNet parameter file' % path)
    # MXNet raises MXNetError with a C++ trace for a damaged file: one line instead
    with reading(path, 'MXNet parameter file (save_parameters, nd.save or export output)',
                 'Pass a file written by save_parameters, mx.nd.save or export().'):
        loaded = mx.nd.load(path)
    if isinstance(loaded, list):
        loaded = OrderedDict(('%d' % i, a) for i, a in enumerate(loaded))
    if not loaded:
        raise UsageError('%s: the file holds no arrays' % path)
    return OrderedDict((name, arr) for name, arr in loaded.items())


def _keys(arrays, key, default):
    names = list(unmasked(arrays))
    if key is None:
        chosen = [n for n in names if default(n, arrays[n])]
        if not chosen:
            raise UsageError('no array of 2 or more dimensions whose name ends in "weight"; '
                             'the file has %d arrays, e.g. %s' % (len(names), ', '.join(names[:5])))
        return chosen
    try:
        return match(arrays, key, noun='array', where='the file')
    except SelectionError as err:
        raise UsageError('--key: %s' % err) from None


def _is_prunable(name, arr):
    return name.endswith('weight') and len(arr.shape) >= 2


def _amount(text):
    try:
        if re.fullmatch(r'[+-]?\d+(?:_\d+)*', text.strip()):  # 1000 or 1_000: a count
            return int(text)
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError('--amount must be a number, got %r' % text) from None


# A whole number in this range where a fraction is usual is most likely a percentage.
_PERCENT_LIKE = range(2, 101)


def _check_count(args, unit, per):
    """Refuse ``--amount N`` for N in 2..100 unless ``--count`` says a count is meant."""
    amount = args.amount
    is_count = isinstance(amount, int)
    if args.count and not is_count:
        raise UsageError('--count says --amount is a count, got %r: pass a whole number, or a '
                         'fraction without --count' % amount)
    if is_count and amount in _PERCENT_LIKE and not args.count:
        raise UsageError('--amount %d prunes %d %s %s, not %d%%: did you mean --amount %s? '
                         'To prune %d %s %s, add --count (docs/cli.md#amounts-fractions-and-counts)'
                         % (amount, amount, unit, per, amount, amount / 100, amount, unit, per))


def _inspect(args) -> int:
    arrays = _load(args.file)
    names = _keys(arrays, args.key, lambda n, a: True) if args.key else None
    report = arrays_report(OrderedDict((n, _mx.to_host(a)) for n, a in arrays.items()), names)
    print(report)
    return 0


def _prune(args) -> int:
    import mxnet as mx
    _check_count(args, 'entries', 'in all' if args.scope == 'global' else 'per array')
    check_path('-o/--output', args.output, write=True)  # before any work
    source = os.path.abspath(args.file)
    target = os.path.abspath(args.output)
    arrays = _load(args.file)
    names = _keys(arrays, args.key, _is_prunable)
    weights = OrderedDict((n, _mx.to_host(arrays[n])) for n in names)
    masks = {n: _mx.to_host(arrays[n + MASK_SUFFIX]) for n in names if n + MASK_SUFFIX in arrays}
    if args.method == 'magnitude':
        keeps = magnitude_masks(weights, args.amount, masks=masks, scope=args.scope)
    elif args.method == 'random':
        keeps = random_masks(weights, args.amount, masks=masks, scope=args.scope, seed=args.seed)
    else:
        if args.scope == 'global':
            raise UsageError('--method structured prunes whole slices of each array: '
                             'use --scope layer')
        keeps = structured_masks(weights, args.amount, masks=masks)
    out = OrderedDict(arrays)
    for name, keep in keeps.items():
        # Zero only what this call prunes; entries an existing mask hides keep their value.
        pruned = ~keep if name not in masks else ~keep & (np.broadcast_to(
            masks[name], keep.shape) != 0)
        value = weights[name].copy()
        value[pruned] = 0
        out[name] = mx.nd.array(value, dtype=arrays[name].dtype)
        if arrays[name].stype != 'default':
            # A row_sparse array stays row_sparse (rows pruned to zero are dropped from it).
            out[name] = out[name].tostype(arrays[name].stype)
    with atomic_write(target) as tmp:  # a kill or an error leaves the old file
        mx.nd.save(tmp, out)
    arrays = OrderedDict((n, _mx.to_host(a)) for n, a in out.items())
    print(arrays_report(arrays, names))
    print('wrote %s (%s)' % (args.output, 'overwrote the input' if source == target else
                             'input unchanged'))
    return 0


def _shape(text):
    try:
        dims = tuple(int(d) for d in text.replace('x', ',').split(','))
    except ValueError:
        dims = ()
    if not dims or any(d < 1 for d in dims):
        raise argparse.ArgumentTypeError(
            '--input-shape must be positive whole numbers separated by commas, such as '
            '1,3,224,224, got %r' % text)
    return dims


def _check_inputs(symbol, given):
    """One ``--input-shape`` per data input of the exported model (``export()`` names them
    ``data`` or ``data0``, ``data1``, ...), said as such rather than as an unreadable model."""
    import mxnet as mx

    from .channels.inputs import input_names
    try:
        inputs = mx.sym.load(symbol).list_inputs()
    except mx.base.MXNetError:
        return   # a damaged file: the loader reports it with the parameter file
    data = [n for n in inputs if re.fullmatch(r'data\d*', n)]
    count = len(given) if given else 1
    if data and sorted(data) != sorted(input_names(count)):
        raise UsageError(
            '%s has %d data input%s (%s): give one --input-shape per input, got %s'
            % (symbol, len(data), 's' if len(data) > 1 else '', ', '.join(data),
               '%d' % len(given) if given else 'none (the default is one input, 1,3,224,224)'))


def _shrink(args) -> int:
    from .channels import exported
    _check_count(args, 'channels', 'in all' if args.scope == 'global' else 'per group')
    symbol = check_path('SYMBOL', args.symbol)
    params = check_path('PARAMS', args.params)
    prefix = os.fspath(args.output)
    if prefix.endswith(('-symbol.json', '.params')):
        raise UsageError('-o is a prefix: OUT writes OUT-symbol.json and OUT-0000.params, '
                         'got %r' % prefix)
    targets = [prefix + '-symbol.json', prefix + '-0000.params']
    for target in targets:
        check_path('-o', target, write=True)
    shapes = args.input_shape or [(1, 3, 224, 224)]
    _check_inputs(symbol, args.input_shape)
    if (args.amount is None) == (args.latency_ratio is None):
        raise UsageError('give --amount or --latency-ratio (one of them)')
    model = None
    if args.latency_ratio is not None:
        if args.latency_ratio <= 1 or not np.isfinite(args.latency_ratio):
            raise UsageError('--latency-ratio must be a number > 1 (dense / pruned latency), '
                             'got %r' % args.latency_ratio)
        if args.scope != 'layer' or args.round_to != 1 or args.count:
            raise UsageError('--latency-ratio plans per group at the fast counts of a latency '
                             'model: it takes no --scope, --round-to or --count')
        amount, model, predicted = _latency_plan(args, symbol, params, shapes)
    else:
        amount = args.amount
    result = exported.shrink_exported(symbol, params, shapes, amount,
                                       importance=args.importance, scope=args.scope,
                                       round_to=args.round_to)
    import mxnet as mx
    # everything is computed and checked: now write, each file atomically
    with atomic_write(targets[1]) as tmp:
        mx.nd.save(tmp, result.arrays)
    with atomic_write(targets[0]) as tmp:
        with open(tmp, 'w') as f:
            f.write(result.symbol_json)
    (macs, count), (new_macs, new_count) = result.before, result.after
    print('%-12s %16s %16s %8s' % ('', 'before', 'after', 'ratio'))
    print('%-12s %16d %16d %7.2fx' % ('MACs', macs, new_macs, macs / max(new_macs, 1)))
    print('%-12s %16d %16d %7.2fx' % ('parameters', count, new_count, count / max(new_count, 1)))
    print('channels removed in %d groups (%d in all); the shrunk model computes what the '
          'original computes with them zeroed' % (len(result.removed),
                                                   sum(result.removed.values())))
    print('wrote %s and %s' % tuple(targets))
    if model is not None:
        from .latency import measure_latency
        dense = measure_latency(_exported_net(symbol, params, shapes), inputs=shapes,
                                runtime=args.runtime, threads=args.threads)
        small = measure_latency(_exported_net(targets[0], targets[1], shapes), inputs=shapes,
                                runtime=args.runtime, threads=args.threads)
        print('latency on %s: predicted %.2fx, measured %.2fx (%.3f ms -> %.3f ms, %d '
              'thread%s)' % (args.runtime, predicted, dense.median / small.median,
                            1e3 * dense.median, 1e3 * small.median, dense.threads,
                            '' if dense.threads == 1 else 's'))
    return 0


def _exported_net(symbol, params, shapes):
    from .channels.inputs import input_names
    from .masks import load_exported
    return load_exported(symbol, input_names(len(shapes)), params)


def _latency(args) -> int:
    from .latency import latency_model, measure_latency
    symbol = check_path('SYMBOL', args.symbol)
    params = check_path('PARAMS', args.params)
    if args.model:
        check_path('--model', args.model, write=True)
    shapes = args.input_shape or [(1, 3, 224, 224)]
    _check_inputs(symbol, args.input_shape)
    net = _exported_net(symbol, params, shapes)
    lat = measure_latency(net, inputs=shapes, runtime=args.runtime, repeats=args.repeats,
                          warmup=args.warmup, threads=args.threads)
    print('%s on %s, inputs %s, %d thread%s: median %.3f ms (p10 %.3f, p90 %.3f; %d runs)'
          % (symbol, lat.runtime, ' '.join(','.join(map(str, s)) for s in lat.shapes),
             lat.threads, '' if lat.threads == 1 else 's', 1e3 * lat.median, 1e3 * lat.p10,
             1e3 * lat.p90, lat.repeats))
    if args.model:
        model = latency_model(net, inputs=shapes, runtime=args.runtime, threads=args.threads)
        model.save(args.model)
        print(model)
        print('wrote %s' % args.model)
    return 0


def _distance_report(net, shapes, model, amounts, importance):
    """A sensitivity report with no labels: per group and amount, the relative distance of
    the net's output from the dense output on a fixed random batch, with the group's
    channels zeroed (as pruning them computes) at the fast count nearest to the amount."""
    import mxnet as mx
    from mxnet import autograd

    from .analysis import SensitivityReport
    from .channels import trace_channels
    from .channels.prune import choose_channels
    from .pruning_core import prune_count
    # an export's groups are 'not prunable' for masks (its graph is fixed) but shrink_exported
    # removes them from the files: the model's groups are the ones to analyse
    groups = [g for g in trace_channels(net, *shapes).groups if g.name in model.sizes]
    params = net.collect_params()
    names = list(OrderedDict.fromkeys(m[0] for g in groups for m in g.members))
    with autograd.pause():
        weights = {n: _mx.to_host(params[n].data()) for n in names}
    batches = [mx.nd.array(np.random.RandomState(i).uniform(-1, 1, size=s))
               for i, s in enumerate(shapes)]

    def outputs():
        with autograd.predict_mode():
            out = net(*batches)
        return np.concatenate([_mx.to_host(o).ravel() for o in
                               (out if isinstance(out, (list, tuple)) else [out])])

    dense = outputs()
    scale = max(float(np.linalg.norm(dense)), 1e-30)
    table = []
    for g in groups:
        for amount in amounts:
            kept = model.round(g.name, g.size - prune_count(amount, g.size))
            chosen = choose_channels(net, [g], weights, {}, g.size - kept, importance, 'layer',
                                     1)[0]
            try:
                for member, role in zip(g.members, g.roles):
                    if role in ('bn_mean', 'bn_var') or not len(chosen):
                        continue
                    name, axis, off, st = member
                    arr = np.moveaxis(weights[name].copy(), axis, 0)
                    rows = (off + np.asarray(chosen)[:, None] * st + np.arange(st)).ravel()
                    arr[rows] = 0
                    params[name].set_data(mx.nd.array(np.moveaxis(arr, 0, axis),
                                                      dtype=arr.dtype))
                distance = float(np.linalg.norm(outputs() - dense)) / scale
            finally:
                for name in names:
                    params[name].set_data(mx.nd.array(weights[name], dtype=weights[name].dtype))
            table.append({'name': g.name, 'amount': amount, 'metric': -distance,
                          'drop': distance, 'macs_removed': 0, 'params_removed': 0,
                          'removed': len(chosen)})
    return SensitivityReport('channels', 0.0, amounts, table, 0, 0, []), groups


def _latency_plan(args, symbol, params, shapes):
    """``--latency-ratio``: a latency model of the export on ``--runtime``, an output-distance
    sensitivity at its fast counts, the plan that reaches the ratio losing the least; as
    channel counts per group for shrink_exported."""
    from .analysis import DEFAULT_AMOUNTS
    from .latency import latency_model
    net = _exported_net(symbol, params, shapes)
    print('measuring a latency model on %s ...' % args.runtime, flush=True)
    model = latency_model(net, inputs=shapes, runtime=args.runtime, threads=args.threads)
    report, groups = _distance_report(net, shapes, model, DEFAULT_AMOUNTS, args.importance)
    plan = report.plan(latency_ratio=args.latency_ratio, latency=model)
    predicted = report.predict(plan, latency=model)['latency_ratio']
    rows = {name: [r for r in report.table if r['name'] == name and r['amount'] == amount][0]
            for name, amount in plan.items()}
    counts = {g.name: int(rows[g.name]['removed']) if g.name in rows else 0 for g in groups}
    return counts, model, predicted


def _demo(args) -> int:
    from .demo import run
    run(args)
    return 0


# --------------------------------------------------------------------------- leaving MXNet

def _export(args) -> int:
    import json

    from .masks import load_exported
    from .onnx_export import export_onnx
    symbol = check_path('SYMBOL', args.symbol)
    params = check_path('PARAMS', args.params)
    output = check_path('-o', args.output, write=True)
    with reading(symbol, 'symbol file written by export() (JSON)',
                 'Pass the PREFIX-symbol.json file export() wrote.'):
        with open(symbol) as f:
            nodes = json.load(f)['nodes']
    stored = set(name.split(':', 1)[-1] for name in _load(params))
    # the data inputs: the graph's variables that the parameter file does not hold
    names = [n['name'] for n in nodes if n['op'] == 'null' and n['name'] not in stored]
    shapes = args.input_shape or [(1, 3, 224, 224)]
    if len(shapes) != len(names):
        raise UsageError('the model has %d data input%s (%s): pass --input-shape once for each'
                         % (len(names), '' if len(names) == 1 else 's', ', '.join(names)))
    net = load_exported(symbol, names, params)
    done = export_onnx(net, output, inputs=shapes, opset=args.opset)
    print('wrote %s: opset %d, inputs %s, outputs %s, %d initializers'
          % (done.path, done.opset, ', '.join(done.inputs), ', '.join(done.outputs),
             done.initializers))
    if done.baked_masks:
        print('masks baked into %d weights' % len(done.baked_masks))
    print('ONNX Runtime matches MXNet: max |difference| %.3g (max |output| %.3g)'
          % (done.max_diff, done.scale))
    return 0


def _compact(args) -> int:
    from .compact import write_compact
    source = check_path('IN', args.file)
    output = check_path('-o', args.output, write=True)
    arrays = _load(source)
    # <name>_mask arrays next to <name> are masks: stored in their mode, restored by
    # load_compact (a uint8 mask is an update-mode mask, as apply_mask stores it)
    masks = [name for name in arrays if name.endswith(MASK_SUFFIX)
             and name[:-len(MASK_SUFFIX)] in arrays]
    plain = [([name], _mx.to_host(arr)) for name, arr in arrays.items() if name not in masks]
    saved = [(name[:-len(MASK_SUFFIX)], _mx.to_host(arrays[name]),
              'update' if arrays[name].dtype == np.uint8 else 'graph') for name in masks]
    write_compact(output, plain, saved)
    before, after = os.path.getsize(source), os.path.getsize(output)
    print('wrote %s: %d arrays (%d masks), %d -> %d bytes (%.3fx)'
          % (output, len(arrays), len(masks), before, after, after / max(before, 1)))
    return 0


def _expand(args) -> int:
    import mxnet as mx

    from .compact import read_compact
    source = check_path('IN', args.file)
    output = check_path('-o', args.output, write=True)
    arrays, masks = read_compact(source)
    out = OrderedDict((name, mx.nd.array(arr, dtype=arr.dtype)) for name, arr in arrays.items())
    for key, value, _ in masks:
        out[key + MASK_SUFFIX] = mx.nd.array(value, dtype=value.dtype)
    with atomic_write(output) as tmp:
        mx.nd.save(tmp, out)
    print('wrote %s: %d arrays, %d -> %d bytes' % (output, len(out), os.path.getsize(source),
                                                    os.path.getsize(output)))
    return 0


def _add_deploy_commands(sub):
    export = sub.add_parser(
        'export', help='export a model to ONNX, checked in ONNX Runtime',
        description='Convert an exported model (the -symbol.json and -0000.params files written '
                    'by export()) to ONNX with MXNet\'s own exporter: masks baked into the '
                    'weights, parameters as initializers. The model runs in ONNX Runtime '
                    'against MXNet before anything is written. Needs the [onnx] extra. See '
                    'docs/deploy.md.')
    _export_arguments(export)
    export.add_argument('-o', '--output', metavar='OUT.onnx', required=True)
    export.add_argument('--opset', type=int, default=None,
                        help='ONNX opset (default: the newest the installed onnx knows)')
    export.set_defaults(func=_export)

    compact = sub.add_parser(
        'compact', help='store a parameter file as small as its information',
        description='Rewrite a parameter file (save_parameters, nd.save or export output) as a '
                    'compact file: each array dense or as a bit mask plus its nonzero values, '
                    'whichever is smaller, losslessly compressed; bit-exact. A 90%% sparse net '
                    'takes about an eighth of the space. ps.load_compact and "paramsurgery '
                    'expand" read it. See docs/deploy.md#compact-files.')
    compact.add_argument('file', metavar='IN.params')
    compact.add_argument('-o', '--output', metavar='OUT', required=True)
    compact.set_defaults(func=_compact)

    expand = sub.add_parser(
        'expand', help='turn a compact file back into an MXNet parameter file',
        description='Write the arrays of a compact file (ps.save_compact or "paramsurgery '
                    'compact") to an MXNet parameter file that any MXNet loads (load_parameters, '
                    'nd.load), bit for bit. Masks are written as <name>_mask arrays.')
    expand.add_argument('file', metavar='IN')
    expand.add_argument('-o', '--output', metavar='OUT.params', required=True)
    expand.set_defaults(func=_expand)


def _export_arguments(parser):
    parser.add_argument('symbol', metavar='PREFIX-symbol.json')
    parser.add_argument('params', metavar='PREFIX-0000.params')
    parser.add_argument('--input-shape', type=_shape, action='append', metavar='N,C,H,W',
                        help='shape of a batch for each data input, e.g. 1,3,224,224 '
                             '(repeat for several inputs; default 1,3,224,224)')


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    parser = argparse.ArgumentParser(
        prog=PROG, description='Safe parameter surgery for MXNet Gluon networks.')
    parser.add_argument('--version', action='version', version='%s %s' % (PROG, __version__))
    sub = parser.add_subparsers(dest='command', metavar='COMMAND')
    sub.required = True
    # the order of the commands in --help
    for add in (_add_inspect, _add_prune, _add_shrink, _add_deploy_commands, _add_latency,
                _add_demo):
        add(sub)
    return parser


def _add_inspect(sub):
    inspect = sub.add_parser(
        'inspect', help='sparsity table of a saved parameter file',
        description='Print the sparsity table of a saved parameter file (save_parameters, '
                    'nd.save or export output). Arrays named <name>_mask are recognised as '
                    'masks: the row of <name> counts the zeros of <name> * mask.')
    inspect.add_argument('file', metavar='FILE.params')
    inspect.add_argument('--key', metavar='REGEX',
                         help='only arrays whose name matches REGEX (from the start)')
    inspect.set_defaults(func=_inspect)


def _add_prune(sub):
    prune = sub.add_parser(
        'prune', help='prune a saved parameter file (no model definition needed)',
        description='Zero the pruned entries of the selected arrays of a parameter file and '
                    'write the result to -o; every other array is written unchanged. Without '
                    '--key, every array of 2 or more dimensions whose name ends in "weight".')
    prune.add_argument('file', metavar='IN.params')
    prune.add_argument('-o', '--output', metavar='OUT.params', required=True,
                       help='where to write (the input is overwritten only if named here)')
    prune.add_argument('--amount', type=_amount, required=True,
                       help='a fraction in [0, 1] of the entries (0.9) or a count (1000); '
                            'a whole number from 2 to 100 needs --count')
    prune.add_argument('--count', action='store_true',
                       help='--amount is a count of entries (allows --amount 2 to 100, which '
                            'are refused without it as probable percentages)')
    prune.add_argument('--scope', choices=['layer', 'global'], default='layer',
                       help='rank each array separately (layer) or all together (global)')
    prune.add_argument('--key', metavar='REGEX', help='arrays to prune (from the start)')
    prune.add_argument('--method', choices=['magnitude', 'random', 'structured'],
                       default='magnitude', help='default: magnitude')
    prune.add_argument('--seed', type=int, default=None, help='seed for --method random')
    prune.set_defaults(func=_prune)


def _add_shrink(sub):
    shrink = sub.add_parser(
        'shrink', help='remove channels of an exported model (no model code needed)',
        description='Prune whole channels of an exported model (the -symbol.json and '
                    '-0000.params files written by export()) exactly as ps.prune_channels '
                    'and ps.shrink would on the same network, and write a smaller model: '
                    'OUT-symbol.json and OUT-0000.params. Prints MACs and parameters before '
                    'and after. The shrunk model is checked against the original with the '
                    'removed channels zeroed before anything is written. Channels that the '
                    "export's masks (*_mask inputs) already zero are removed too.")
    _export_arguments(shrink)
    shrink.add_argument('-o', '--output', metavar='OUT', required=True,
                        help='prefix of the files to write')
    shrink.add_argument('--amount', type=_amount,
                        help='a fraction in [0, 1] of the channels of each group (0.5) or a '
                             'count; a whole number from 2 to 100 needs --count')
    shrink.add_argument('--latency-ratio', type=float, metavar='R',
                        help='instead of --amount: make the model R times faster on --runtime '
                             '(a latency model and an output-distance sensitivity, no labels '
                             'needed; docs/latency.md#planning-for-a-runtime)')
    shrink.add_argument('--runtime', choices=['mxnet', 'mkldnn', 'onnxruntime'],
                        default='mkldnn', help='for --latency-ratio (default mkldnn)')
    shrink.add_argument('--threads', type=int, default=None, metavar='N',
                        help='compute threads for the timing (default OMP_NUM_THREADS or '
                             'every CPU)')
    shrink.add_argument('--count', action='store_true',
                        help='--amount is a count of channels per group (allows --amount 2 '
                             'to 100, which are refused without it as probable percentages)')
    shrink.add_argument('--importance', choices=['l1', 'l2'], default='l2',
                        help='rank channels by the L1 or L2 norm of their slices (default l2)')
    shrink.add_argument('--scope', choices=['layer', 'global'], default='layer',
                        help='per group (layer) or all groups ranked together (global)')
    shrink.add_argument('--round-to', type=int, default=1, metavar='N',
                        help='keep a multiple of N channels in each group (default 1; 8 or 16 '
                             'suit MKLDNN and GPUs)')
    shrink.set_defaults(func=_shrink)


def _add_latency(sub):
    latency = sub.add_parser(
        'latency', help='measure the latency of an exported model on a runtime',
        description='Time one forward of an exported model (the -symbol.json and '
                    '-0000.params files written by export()) on a runtime: plain MXNet '
                    '(static_alloc), MXNet with oneDNN fusion (mkldnn) or ONNX Runtime. '
                    'Prints the median and the 10th and 90th percentiles. With --model, '
                    'also builds a latency model (latency against kept channel counts per '
                    'group) and writes it (docs/latency.md#latency-models).')
    _export_arguments(latency)
    latency.add_argument('--runtime', choices=['mxnet', 'mkldnn', 'onnxruntime'],
                         default='mxnet', help='default mxnet')
    latency.add_argument('--repeats', type=int, default=20, help='timed runs (default 20)')
    latency.add_argument('--warmup', type=int, default=3, help='untimed runs first (default 3)')
    latency.add_argument('--threads', type=int, default=None, metavar='N',
                         help='compute threads (default OMP_NUM_THREADS or every CPU)')
    latency.add_argument('--model', metavar='OUT.json',
                         help='also build a latency model and write it here')
    latency.set_defaults(func=_latency)


def _add_demo(sub):
    demo = sub.add_parser(
        'demo', help='run the end-to-end example (offline)',
        description='Train a small CNN on scikit-learn\'s bundled digits on two contexts, '
                    'prune it gradually to 90%% sparsity while fine-tuning, and print the '
                    'sparsity reports; prune channels by a sensitivity plan and shrink; '
                    'export the shrunk net to ONNX and run it in ONNX Runtime, and save the '
                    'sparse one compact; end with a RESULT line. Needs the [demo] extra. See '
                    'docs/cli.md#paramsurgery-demo.')
    from .demo import add_arguments
    add_arguments(demo)
    demo.set_defaults(func=_demo)


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)  # exits 2 with a usage line on bad usage
    try:
        return args.func(args)
    except (UsageError, ParamSurgeryError) as err:
        message = ' '.join(str(err).split())
        print('%s %s: error: %s' % (PROG, args.command, message), file=sys.stderr)
        return 2
