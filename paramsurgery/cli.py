"""The ``paramsurgery`` command line (also ``python -m paramsurgery``)."""
import argparse
import sys
from typing import List, Optional

__all__ = ['main']


def _demo(args) -> int:
    from .demo import run
    run(args)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='paramsurgery',
        description='Safe parameter surgery for MXNet Gluon networks.')
    sub = parser.add_subparsers(dest='command', metavar='COMMAND')
    sub.required = True
    demo = sub.add_parser('demo', help='run the end-to-end example (offline)',
                          description='Run the end-to-end example (offline).')
    demo.set_defaults(func=_demo)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    return args.func(args)
