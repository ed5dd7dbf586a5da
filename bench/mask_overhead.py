"""What an in-graph mask costs: training-step time and peak memory, masked vs. unmasked.

Setup (issue 3, item 6): hybridised ``resnet18_v1`` from the model zoo, batch 32 of 3x32x32
images, SGD with momentum, one CPU context. Deferred initialisation is finished by a plain
predict-mode forward before masking, as users do (on an MKLDNN build that forward may leave
conv weights in MKLDNN's blocked layout). Then every Conv2D/Dense weight is masked with
``ps.apply_mask`` (a random 50 % binary mask).

Time: the arms are stepped in an interleaved order (a new random order every round) in one
process, so that load from other processes hits them alike; the script prints the median step
time of each and the ratio masked/unmasked (target <= 1.05). Arms:

- ``unmasked``: the plain network;
- ``masked``: every Conv2D/Dense weight masked with ``ps.apply_mask``;
- ``masked-blocked``: the same, but with ``apply_mask``'s return of MKLDNN-blocked weights
  to the default layout switched off (``_layout.RESTORE_DEFAULT_LAYOUT = False``), to
  show what that step buys. It only differs from ``masked`` when the predict-mode forward
  actually left weights blocked (the script prints how many were).

Memory: each of ``unmasked`` and ``masked`` runs in its own fresh process (same setup, a few
steps) and reports its peak resident set size (``resource.getrusage(RUSAGE_SELF).ru_maxrss``);
the script prints both and the ratio masked/unmasked (target <= 1.25).

Both are measured with a plain ``hybridize()`` and with ``hybridize(static_alloc=True)``
(``--alloc``): without static allocation the effective weights ``w * mask`` are new arrays
every step, and the script also prints the minor page faults per step that this costs.

Run: ``python bench/mask_overhead.py [--rounds 30] [--warmup 3] [--mem-steps 5]
[--alloc default|static|both]``.
"""
import argparse
import os
import random
import resource
import statistics
import subprocess
import sys
import time

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon, nd
from mxnet.gluon import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import paramsurgery as ps  # noqa: E402  (after the path fix, to bench this checkout)
from paramsurgery import _internals, _layout  # noqa: E402

BATCH = 32
ARMS = ('unmasked', 'masked', 'masked-blocked')


def build(arm, seed=0, static_alloc=False):
    """The network, its trainer and one batch for ``arm``; returns a ``step()`` callable."""
    mx.random.seed(seed)
    np.random.seed(seed)
    ctx = mx.cpu(0)
    net = gluon.model_zoo.vision.resnet18_v1(pretrained=False, classes=10)
    net.initialize(mx.init.Xavier(), ctx=ctx)
    net.hybridize(static_alloc=static_alloc)
    x = nd.random.uniform(shape=(BATCH, 3, 32, 32), ctx=ctx)
    y = nd.array(np.random.randint(0, 10, size=BATCH), ctx=ctx)
    net(x).wait_to_read()          # finishes deferred init, predict mode (as users do)
    weights = [b.weight for b in _internals.walk_blocks(net)
               if isinstance(b, (nn.Conv2D, nn.Dense))]
    blocked = sum(_layout.is_blocked_layout(w.data(ctx)) for w in weights)
    if arm != 'unmasked':
        rng = np.random.RandomState(seed)
        masks = {w.name: (rng.rand(*w.shape) > 0.5).astype('float32') for w in weights}
        previous = _layout.RESTORE_DEFAULT_LAYOUT
        _layout.RESTORE_DEFAULT_LAYOUT = arm != 'masked-blocked'
        try:
            ps.apply_mask(net, masks)
        finally:
            _layout.RESTORE_DEFAULT_LAYOUT = previous
    still_blocked = sum(_layout.is_blocked_layout(w.data(ctx)) for w in weights)
    trainer = gluon.Trainer(net.collect_params(), 'sgd',
                            {'learning_rate': 0.01, 'momentum': 0.9})
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()

    def step():
        with autograd.record():
            loss = loss_fn(net(x), y)
        loss.backward()
        trainer.step(BATCH)
        loss.wait_to_read()
        nd.waitall()

    info = {'weights': len(weights), 'blocked_after_init': blocked,
            'blocked_when_training': still_blocked}
    return step, info


def time_arms(rounds, warmup, arms, static_alloc):
    """Median-ready step times and minor page faults per step of each arm, interleaved."""
    steps, infos = {}, {}
    for arm in arms:
        steps[arm], infos[arm] = build(arm, static_alloc=static_alloc)
        for _ in range(warmup):
            steps[arm]()
    times = {arm: [] for arm in arms}
    faults = {arm: 0 for arm in arms}
    order = list(arms)
    rng = random.Random(0)
    for _ in range(rounds):
        rng.shuffle(order)
        for arm in order:
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            start = time.perf_counter()
            steps[arm]()
            times[arm].append(time.perf_counter() - start)
            faults[arm] += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    return times, {arm: dict(infos[arm], faults=faults[arm] / rounds) for arm in arms}


def peak_memory_child(arm, steps, static_alloc):
    step, _ = build(arm, static_alloc=static_alloc)
    for _ in range(steps):
        step()
    # ru_maxrss is in kilobytes on Linux (bytes on macOS).
    scale = 1024 if sys.platform != 'darwin' else 1
    print('MAXRSS_BYTES %d' % (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale))


def peak_memory(arm, steps, static_alloc):
    # Linux keeps ru_maxrss across exec, and a child starts with its parent's pages: run the
    # children before this process grows (it has only imported MXNet at that point).
    cmd = [sys.executable, os.path.abspath(__file__), '--memory-child', arm,
           '--mem-steps', str(steps)] + (['--static-alloc'] if static_alloc else [])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    line = [l for l in out.splitlines() if l.startswith('MAXRSS_BYTES')][-1]
    return int(line.split()[1])


def report(args, static_alloc, mem):
    arms = ARMS[:2] if args.no_blocked_arm else ARMS
    print('== resnet18_v1, hybridize(static_alloc=%s), batch %d x 3x32x32, SGD momentum 0.9, '
          'cpu(0); MXNet %s, MKLDNN %s' % (static_alloc, BATCH, mx.__version__,
                                          'on' if _internals.mkldnn_enabled() else 'off'))
    times, infos = time_arms(args.rounds, args.warmup, arms, static_alloc)
    info = infos['masked']
    print('Conv2D/Dense weights: %d; left in MKLDNN blocked layout by the predict-mode init '
          'forward: %d; still blocked when training: masked %d, masked-blocked %s'
          % (info['weights'], info['blocked_after_init'], info['blocked_when_training'],
             infos['masked-blocked']['blocked_when_training'] if 'masked-blocked' in infos
             else '-'))
    medians = {arm: statistics.median(times[arm]) for arm in arms}
    print('step time, median of %d interleaved steps:' % args.rounds)
    for arm in arms:
        q1, q3 = np.percentile(times[arm], [25, 75])
        print('  %-15s %8.1f ms   (IQR %.1f-%.1f ms, %.0f minor page faults per step)'
              % (arm, medians[arm] * 1e3, q1 * 1e3, q3 * 1e3, infos[arm]['faults']))
    for arm in arms[1:]:
        print('  ratio %s/unmasked: %.3f%s' % (arm, medians[arm] / medians['unmasked'],
                                               '   (target <= 1.05)' if arm == 'masked'
                                               else ''))
    print('peak memory (ru_maxrss, separate processes, %d steps each):' % args.mem_steps)
    for arm, value in mem.items():
        print('  %-15s %8.1f MiB' % (arm, value / 2.0 ** 20))
    print('  ratio masked/unmasked: %.3f   (target <= 1.25)' % (mem['masked'] / mem['unmasked']))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--rounds', type=int, default=30, help='timed steps per arm')
    parser.add_argument('--warmup', type=int, default=3, help='untimed steps per arm')
    parser.add_argument('--mem-steps', type=int, default=5,
                        help='training steps in each memory process')
    parser.add_argument('--no-blocked-arm', action='store_true',
                        help='skip the masked-blocked arm')
    parser.add_argument('--alloc', choices=('default', 'static', 'both'), default='both',
                        help="hybridize() as is ('default'), with static_alloc=True "
                             "('static'), or one after the other ('both')")
    parser.add_argument('--memory-child', choices=ARMS, help=argparse.SUPPRESS)
    parser.add_argument('--static-alloc', action='store_true', help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        peak_memory_child(args.memory_child, args.mem_steps, args.static_alloc)
        return
    modes = {'default': [False], 'static': [True], 'both': [False, True]}[args.alloc]
    # Every memory child first, while this process is still small (see peak_memory).
    mem = {static_alloc: {arm: peak_memory(arm, args.mem_steps, static_alloc)
                          for arm in ('unmasked', 'masked')} for static_alloc in modes}
    for static_alloc in modes:
        report(args, static_alloc, mem[static_alloc])


if __name__ == '__main__':
    main()
