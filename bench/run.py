"""Run every benchmark and print one table of every ratio with its target.

Each script in ``SCRIPTS`` prints its own figures and, for each job it measures, a line
``RATIO <job> <ratio> <target>`` (the target is ``<=x``, ``>=x`` or ``-`` for a figure shown
without one). The whole set runs ``--runs`` times back to back (two by default: a ratio counts
as at target when both consecutive runs are), and the table has one column per run.

Run: ``PYTHONPATH=. python bench/run.py [--runs 2] [--only assign,global_prune]`` (``make bench``
runs it with ``OMP_NUM_THREADS=1`` unless set: the figures in docs/ were measured so, on a
2-core machine shared with other jobs, where more threads than cores make every ratio noisy)
"""
import argparse
import os
import platform
import signal
import subprocess
import sys
from collections import OrderedDict
from typing import NamedTuple

HERE = os.path.dirname(os.path.abspath(__file__))

#: script -> its arguments for the table (the sizes and settings the issues' targets name)
SCRIPTS = OrderedDict([
    ('assign', []),
    ('global_prune', []),
    ('mask_overhead', ['--alloc', 'static', '--rounds', '30']),
    ('shrink', ['--nets', 'resnet50_v1']),
    ('sensitivity', []),
    # prints its ratio only with a torch Python given (PARAMSURGERY_TORCH_PYTHON)
    ('torch_pruning', []),
])

# what libstdc++ prints when MXNet's engine threads are destroyed still joinable at exit
EXIT_ABORT = 'terminate called without an active exception'


class Ratio(NamedTuple):
    job: str
    value: float
    target: str


def parse(line):
    """The Ratio of one ``RATIO job value target`` line, or None for any other line."""
    parts = line.split()
    if len(parts) != 4 or parts[0] != 'RATIO':
        return None
    return Ratio(parts[1], float(parts[2]), parts[3])


def meets(value, target):
    if target.startswith('<='):
        return value <= float(target[2:])
    if target.startswith('>='):
        return value >= float(target[2:])
    return None


def run_script(name, args):
    """Run one script, echo its output, and return its Ratio lines."""
    cmd = [sys.executable, os.path.join(HERE, name + '.py')] + args
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(HERE)] + [p for p in [os.environ.get('PYTHONPATH')] if p]))
    print('$ %s' % ' '.join(cmd[1:]), flush=True)
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    out = done.stdout
    print(out, end='', flush=True)
    ratios = [r for r in map(parse, out.splitlines()) if r is not None]
    if done.returncode == -signal.SIGABRT and ratios and EXIT_ABORT in done.stderr:
        # MXNet 1.9.1 sometimes aborts while the interpreter shuts down, after everything
        # ran and printed (apache/mxnet#14775): the figures stand
        print('(%s: MXNet aborted at exit, after its figures: "%s")' % (name, EXIT_ABORT),
              flush=True)
    elif done.returncode:
        sys.stderr.write(done.stderr)
        raise subprocess.CalledProcessError(done.returncode, cmd, out, done.stderr)
    return ratios


def machine():
    try:
        with open('/proc/cpuinfo') as f:
            model = next(l.split(':', 1)[1].strip() for l in f if l.startswith('model name'))
    except (OSError, StopIteration):
        model = platform.processor() or 'unknown CPU'
    load = os.getloadavg()[0] if hasattr(os, 'getloadavg') else float('nan')
    return '%s, %d cores, load average %.2f, OMP_NUM_THREADS=%s' % (
        model, os.cpu_count() or 0, load, os.environ.get('OMP_NUM_THREADS', 'unset'))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--runs', type=int, default=2)
    parser.add_argument('--only', default=','.join(SCRIPTS),
                        help='comma-separated scripts, of: %s' % ', '.join(SCRIPTS))
    args = parser.parse_args()
    names = args.only.split(',')
    unknown = [n for n in names if n not in SCRIPTS]
    if unknown:
        parser.error('unknown script %s; choose from %s' % (unknown, ', '.join(SCRIPTS)))
    columns = []
    for run in range(args.runs):
        print('== run %d of %d: %s' % (run + 1, args.runs, machine()), flush=True)
        columns.append([r for name in names for r in run_script(name, SCRIPTS[name])])
    jobs = OrderedDict()
    for column in columns:
        for r in column:
            jobs.setdefault(r.job, r.target)
    width = max(len(j) for j in jobs) if jobs else 3
    print('\n%-*s  %s  %-7s  %s' % (width, 'job', '  '.join('run %-3d' % (i + 1)
                                                           for i in range(args.runs)),
                                     'target', 'status'))
    for job, target in jobs.items():
        values = [next((r.value for r in column if r.job == job), None) for column in columns]
        verdicts = [meets(v, target) for v in values if v is not None]
        status = ('-' if not verdicts or None in verdicts else
                  'OK' if all(verdicts) else 'ABOVE TARGET' if target.startswith('<=')
                  else 'BELOW TARGET')
        print('%-*s  %s  %-7s  %s' % (width, job, '  '.join(
            '%7s' % ('%.3f' % v if v is not None else 'n/a') for v in values), target, status))
    print('(%s)' % machine())


if __name__ == '__main__':
    main()
