"""``prune_channels`` + ``shrink`` against Torch-Pruning, on the same machine in the same window.

The job of issue 20: resnet50 with 50% of the channels of every prunable group removed, the
whole call a user makes. paramsurgery: ``ps.prune_channels(net, 0.5, importance='l2')`` then
``ps.shrink(net)`` on ``vision.resnet50_v1`` (``pretrained=False``, Xavier weights, its
deferred initialisation finished by one forward). Torch-Pruning: the pruner built and stepped,
``tp.pruner.MagnitudePruner(model, example_inputs, importance=MagnitudeImportance(p=2),
pruning_ratio=0.5, ignored_layers=[model.fc])`` then ``pruner.step()``, on torchvision's
``resnet50(weights=None)``; both with one example input of 1x3x224x224 and the same thread
count (``OMP_NUM_THREADS``, 1 when unset, as ``make bench`` runs).

Torch and Torch-Pruning are not dependencies of paramsurgery (not even an extra): they run in
a worker process of another Python given by ``--torch-python`` (or the environment variable
``PARAMSURGERY_TORCH_PYTHON``), for example a venv made with ``python3 -m venv /tmp/tp &&
/tmp/tp/bin/pip install torch torchvision torch-pruning``. The worker builds its model once
and, for each trial, prunes a fresh deep copy of it; the trials of the two tools alternate
(one of ours, one of theirs, ...), so that load from other processes hits both alike. Only
the pruning calls are timed, not the copies (ours until MXNet's queued work is done).
Printed: the medians of the wall and of the process CPU time, the MACs ratio (dense /
pruned) each tool reached, and ``RATIO prune_channels+shrink/torch_pruning <ratio> <=1.0``.
Without a torch Python the script says so and prints no ratio.

Run: ``PYTHONPATH=. python bench/torch_pruning.py --torch-python /tmp/tp/bin/python
[--trials 5]``
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import mxnet as mx
from mxnet.gluon.model_zoo import vision

import paramsurgery as ps

TARGET = 1.0
SAMPLE = (1, 3, 224, 224)

# The worker, run by the torch Python: one line in ('go'), one JSON line out per trial.
WORKER = r'''
import copy, json, sys, time
import torch, torchvision, torch_pruning as tp
torch.set_num_threads(int(sys.argv[1]))
torch.manual_seed(0)
dense = torchvision.models.resnet50(weights=None).eval()
x = torch.randn(1, 3, 224, 224)
macs_dense, _ = tp.utils.count_ops_and_params(dense, x)
print(json.dumps({'torch': torch.__version__, 'torch_pruning': tp.__version__,
                  'threads': torch.get_num_threads()}), flush=True)
for line in sys.stdin:
    model = copy.deepcopy(dense)
    start, cpu = time.perf_counter(), time.process_time()
    pruner = tp.pruner.MagnitudePruner(
        model, x, importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=0.5,
        ignored_layers=[model.fc])
    pruner.step()
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    macs, _ = tp.utils.count_ops_and_params(model, x)
    print(json.dumps({'seconds': seconds, 'cpu': cpu, 'macs_ratio': macs_dense / macs}),
          flush=True)
'''


class Worker:
    """The torch worker process: ``trial()`` runs one timed prune there."""

    def __init__(self, python, threads):
        self._proc = subprocess.Popen([python, '-c', WORKER, str(threads)], text=True,
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.versions = self._read()

    def _read(self):
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError('the torch worker stopped (see its error above)')
        return json.loads(line)

    def trial(self):
        self._proc.stdin.write('go\n')
        self._proc.stdin.flush()
        return self._read()

    def close(self):
        self._proc.stdin.close()
        self._proc.wait()


def build():
    mx.random.seed(0)
    net = vision.resnet50_v1(pretrained=False)
    net.initialize(mx.init.Xavier())
    net(mx.nd.zeros(SAMPLE))
    return net


def ours(path):
    """One timed prune_channels + shrink on a fresh copy of the dense net saved at ``path``
    (the copy not timed; ``copy.deepcopy`` would not do: its parameter arrays are no longer
    the autograd leaves bound to their gradient buffers, and paramsurgery refuses them)."""
    net = build()
    net.load_parameters(path)
    mx.nd.waitall()
    start, cpu = time.perf_counter(), time.process_time()
    ps.prune_channels(net, 0.5, inputs=SAMPLE, importance='l2')
    ps.shrink(net, inputs=SAMPLE)
    mx.nd.waitall()
    return time.perf_counter() - start, time.process_time() - cpu, net


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--torch-python', default=os.environ.get('PARAMSURGERY_TORCH_PYTHON'))
    parser.add_argument('--trials', type=int, default=5)
    args = parser.parse_args()
    if not args.torch_python:
        print('torch_pruning: skipped: no Python with torch, torchvision and torch-pruning '
              'given (--torch-python or PARAMSURGERY_TORCH_PYTHON)')
        return
    threads = int(os.environ.get('OMP_NUM_THREADS') or 1)
    worker = Worker(args.torch_python, threads)
    try:
        dense = build()
        macs_dense, _ = ps.count_ops(dense, SAMPLE)
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, 'dense.params')
            dense.save_parameters(path)
            ours(path)              # warm-up of both: modules imported, graphs traced once
            worker.trial()
            mine, theirs, net = [], [], None
            for _ in range(args.trials):
                seconds, cpu, net = ours(path)
                mine.append((seconds, cpu))
                theirs.append(worker.trial())
    finally:
        worker.close()
    macs_ours = macs_dense / ps.count_ops(net, SAMPLE)[0]
    t_ours = statistics.median(t for t, _ in mine)
    t_theirs = statistics.median(r['seconds'] for r in theirs)
    c_ours = statistics.median(c for _, c in mine)
    c_theirs = statistics.median(r['cpu'] for r in theirs)
    print('torch %s, torch_pruning %s, %d thread(s) on both; mxnet %s'
          % (worker.versions['torch'], worker.versions['torch_pruning'],
             worker.versions['threads'], mx.__version__))
    print('medians of %d alternating trials: prune_channels + shrink %.0f ms (MACs ratio '
          '%.2f), Torch-Pruning MagnitudePruner built + step %.0f ms (MACs ratio %.2f)'
          % (args.trials, 1e3 * t_ours, macs_ours, 1e3 * t_theirs, theirs[-1]['macs_ratio']))
    print('CPU time of the calling process (all its threads), medians: %.0f ms / %.0f ms = '
          '%.2f (less moved by other processes than the wall time, which the ratio uses)'
          % (1e3 * c_ours, 1e3 * c_theirs, c_ours / c_theirs))
    print('RATIO prune_channels+shrink/torch_pruning %.3f <=%.1f' % (t_ours / t_theirs, TARGET))


if __name__ == '__main__':
    sys.exit(main())
