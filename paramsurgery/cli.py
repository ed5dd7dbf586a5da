"""The ``paramsurgery`` command line (also ``python -m paramsurgery``).

``inspect`` and ``prune`` work on saved parameter files (``save_parameters``, ``nd.save``,
``export``) without the model definition. Exit codes: 0 success, 2 bad usage or bad input
(one line on stderr, no traceback).
"""
import argparse
import os
import re
import sys
import tempfile
from collections import OrderedDict
from typing import List, Optional

import numpy as np

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
    try:
        loaded = mx.nd.load(path)
    except Exception as err:  # MXNet raises MXNetError with a C++ trace for a corrupt file
        lines = [l.strip() for l in str(err).splitlines() if l.strip()]
        last = lines[-1] if lines else type(err).__name__  # MXNet puts the reason last
        raise UsageError('%s: not a readable MXNet parameter file (%s)' % (path, last[:200])) \
            from None
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
        if re.fullmatch(r'[+-]?\d+', text.strip()):
            return int(text)
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError('--amount must be a number, got %r' % text) from None


def _inspect(args) -> int:
    arrays = _load(args.file)
    names = _keys(arrays, args.key, lambda n, a: True) if args.key else None
    report = arrays_report(OrderedDict((n, a.asnumpy()) for n, a in arrays.items()), names)
    print(report)
    return 0


def _prune(args) -> int:
    import mxnet as mx
    source = os.path.abspath(args.file)
    target = os.path.abspath(args.output)
    arrays = _load(args.file)
    names = _keys(arrays, args.key, _is_prunable)
    weights = OrderedDict((n, arrays[n].asnumpy()) for n in names)
    masks = {n: arrays[n + MASK_SUFFIX].asnumpy() for n in names if n + MASK_SUFFIX in arrays}
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
    # Write next to the target and rename: an error leaves no partial output file.
    fd, tmp = tempfile.mkstemp(prefix='.%s.' % os.path.basename(target), suffix='.tmp',
                               dir=os.path.dirname(target))
    os.close(fd)
    try:
        mx.nd.save(tmp, out)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    arrays = OrderedDict((n, a.asnumpy()) for n, a in out.items())
    print(arrays_report(arrays, names))
    print('wrote %s (%s)' % (args.output, 'overwrote the input' if source == target else
                             'input unchanged'))
    return 0


def _demo(args) -> int:
    from .demo import run
    run(args)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description='Safe parameter surgery for MXNet Gluon networks.')
    sub = parser.add_subparsers(dest='command', metavar='COMMAND')
    sub.required = True

    inspect = sub.add_parser(
        'inspect', help='sparsity table of a saved parameter file',
        description='Print the sparsity table of a saved parameter file (save_parameters, '
                    'nd.save or export output). Arrays named <name>_mask are recognised as '
                    'masks: the row of <name> counts the zeros of <name> * mask.')
    inspect.add_argument('file', metavar='FILE.params')
    inspect.add_argument('--key', metavar='REGEX',
                         help='only arrays whose name matches REGEX (from the start)')
    inspect.set_defaults(func=_inspect)

    prune = sub.add_parser(
        'prune', help='prune a saved parameter file (no model definition needed)',
        description='Zero the pruned entries of the selected arrays of a parameter file and '
                    'write the result to -o; every other array is written unchanged. Without '
                    '--key, every array of 2 or more dimensions whose name ends in "weight".')
    prune.add_argument('file', metavar='IN.params')
    prune.add_argument('-o', '--output', metavar='OUT.params', required=True,
                       help='where to write (the input is overwritten only if named here)')
    prune.add_argument('--amount', type=_amount, required=True,
                       help='a fraction in [0, 1] of the entries (0.9) or a count (1000)')
    prune.add_argument('--scope', choices=['layer', 'global'], default='layer',
                       help='rank each array separately (layer) or all together (global)')
    prune.add_argument('--key', metavar='REGEX', help='arrays to prune (from the start)')
    prune.add_argument('--method', choices=['magnitude', 'random', 'structured'],
                       default='magnitude', help='default: magnitude')
    prune.add_argument('--seed', type=int, default=None, help='seed for --method random')
    prune.set_defaults(func=_prune)

    demo = sub.add_parser(
        'demo', help='run the end-to-end example (offline)',
        description='Train a small CNN on scikit-learn\'s bundled digits on two contexts, '
                    'prune it gradually to 90%% sparsity while fine-tuning, and print the '
                    'sparsity reports and a RESULT line. Needs the [demo] extra.')
    from .demo import add_arguments
    add_arguments(demo)
    demo.set_defaults(func=_demo)
    return parser


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
