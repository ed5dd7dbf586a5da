"""What a mask costs: training-step time and peak memory, graph mode and update mode vs. plain.

Setup (issues 3 and 12): hybridised ``resnet18_v1`` from the model zoo, SGD with momentum,
one CPU context, at two sizes: ``worst`` (batch 32 of 3x32x32: the step is bound by the
weights, so anything done per weight shows most) and ``large`` (batch 16 of 3x128x128:
compute-bound). Deferred initialisation is finished by a plain predict-mode forward before
masking, as users do (on an MKLDNN build that forward may leave conv weights in MKLDNN's
blocked layout). Then every Conv2D/Dense weight is masked (a random 50 % binary mask).

Time: the arms are stepped in an interleaved order (a new random order every round) in one
process, so that load from other processes hits them alike; the script prints the median step
time of each and the ratios to the plain step. Arms:

- ``unmasked``: the plain network;
- ``graph``: ``ps.apply_mask(..., mode='graph')`` (target <= 1.15 worst, <= 1.03 large);
- ``update``: ``ps.apply_mask(..., mode='update')`` (target <= 1.10 worst, <= 1.03 large);
- ``graph-blocked`` (with ``--blocked-arm``): graph mode with ``apply_mask``'s return of
  MKLDNN-blocked weights to the default layout switched off
  (``forward.RESTORE_DEFAULT_LAYOUT = False``), to show what that step buys.

Memory: each arm runs in its own fresh process (same setup, a few steps) and reports its peak
resident set size (``resource.getrusage(RUSAGE_SELF).ru_maxrss``); the script prints each and
the ratio to the plain one (target for update mode <= 1.08).

Both are measured with a plain ``hybridize()`` and with ``hybridize(static_alloc=True)``
(``--alloc``): without static allocation graph mode's effective weights ``w * mask`` are new
arrays every step, and the script also prints the minor page faults per step.

Run: ``python bench/mask_overhead.py [--rounds 30] [--warmup 3] [--mem-steps 5]
[--alloc default|static|both] [--size worst|large|both] [--blocked-arm]``.
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
from paramsurgery import _mx  # noqa: E402
from paramsurgery.masks import forward  # noqa: E402

SIZES = {'worst': (32, 32), 'large': (16, 128)}   # batch, image side
ARMS = ('unmasked', 'graph', 'update', 'graph-blocked')
TARGETS = {('worst', 'graph'): 1.15, ('worst', 'update'): 1.10,
           ('large', 'graph'): 1.03, ('large', 'update'): 1.03}
MEM_TARGETS = {'update': 1.08}


def build(arm, seed=0, static_alloc=False, size='worst'):
    """The network, its trainer and one batch for ``arm``; returns a ``step()`` callable."""
    batch, side = SIZES[size]
    mx.random.seed(seed)
    np.random.seed(seed)
    ctx = mx.cpu(0)
    net = gluon.model_zoo.vision.resnet18_v1(pretrained=False, classes=10)
    net.initialize(mx.init.Xavier(), ctx=ctx)
    net.hybridize(static_alloc=static_alloc)
    x = nd.random.uniform(shape=(batch, 3, side, side), ctx=ctx)
    y = nd.array(np.random.randint(0, 10, size=batch), ctx=ctx)
    net(x).wait_to_read()          # finishes deferred init, predict mode (as users do)
    weights = [b.weight for b in _mx.walk_blocks(net)
               if isinstance(b, (nn.Conv2D, nn.Dense))]
    blocked = sum(forward.is_blocked_layout(w.data(ctx)) for w in weights)
    if arm != 'unmasked':
        rng = np.random.RandomState(seed)
        # bool masks drawn without a float64 array per weight (rand() > 0.5 made one, up to
        # 19 MB, and the memory arms measured this script's own scratch)
        masks = {w.name: rng.randint(0, 2, size=w.shape, dtype=np.uint8).view(bool)
                 for w in weights}
        previous = forward.RESTORE_DEFAULT_LAYOUT
        forward.RESTORE_DEFAULT_LAYOUT = arm != 'graph-blocked'
        try:
            ps.apply_mask(net, masks, mode='update' if arm == 'update' else 'graph')
        finally:
            forward.RESTORE_DEFAULT_LAYOUT = previous
        del masks
    still_blocked = sum(forward.is_blocked_layout(w.data(ctx)) for w in weights)
    trainer = gluon.Trainer(net.collect_params(), 'sgd',
                            {'learning_rate': 0.01, 'momentum': 0.9})
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()

    def step():
        with autograd.record():
            loss = loss_fn(net(x), y)
        loss.backward()
        trainer.step(batch)
        loss.wait_to_read()
        nd.waitall()

    info = {'weights': len(weights), 'blocked_after_init': blocked,
            'blocked_when_training': still_blocked}
    return step, info


def time_arms(rounds, warmup, arms, static_alloc, size):
    """Median-ready step times and minor page faults per step of each arm, interleaved."""
    steps, infos = {}, {}
    for arm in arms:
        steps[arm], infos[arm] = build(arm, static_alloc=static_alloc, size=size)
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


def peak_memory_child(arm, steps, static_alloc, size):
    step, _ = build(arm, static_alloc=static_alloc, size=size)
    for _ in range(steps):
        step()
    # ru_maxrss is in kilobytes on Linux (bytes on macOS).
    scale = 1024 if sys.platform != 'darwin' else 1
    print('MAXRSS_BYTES %d' % (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale))


def peak_memory(arm, steps, static_alloc, size):
    # Linux keeps ru_maxrss across exec, and a child starts with its parent's pages: run the
    # children before this process grows (it has only imported MXNet at that point).
    cmd = [sys.executable, os.path.abspath(__file__), '--memory-child', arm,
           '--mem-steps', str(steps), '--size', size] + \
        (['--static-alloc'] if static_alloc else [])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    line = [l for l in out.splitlines() if l.startswith('MAXRSS_BYTES')][-1]
    return int(line.split()[1])


def report(args, static_alloc, mem, size):
    arms = [a for a in ARMS if a != 'graph-blocked' or args.blocked_arm]
    batch, side = SIZES[size]
    print('== %s: resnet18_v1, hybridize(static_alloc=%s), batch %d x 3x%dx%d, SGD momentum '
          '0.9, cpu(0); MXNet %s, MKLDNN %s' % (size, static_alloc, batch, side, side,
                                               mx.__version__,
                                               'on' if forward.mkldnn_enabled() else 'off'))
    times, infos = time_arms(args.rounds, args.warmup, arms, static_alloc, size)
    info = infos['graph']
    print('Conv2D/Dense weights: %d; left in MKLDNN blocked layout by the predict-mode init '
          'forward: %d; still blocked right after masking: graph %d, update %d (until the first '
          'training-mode forward)%s'
          % (info['weights'], info['blocked_after_init'], info['blocked_when_training'],
             infos['update']['blocked_when_training'],
             ', graph-blocked %d' % infos['graph-blocked']['blocked_when_training']
             if 'graph-blocked' in infos else ''))
    medians = {arm: statistics.median(times[arm]) for arm in arms}
    print('step time, median of %d interleaved steps:' % args.rounds)
    for arm in arms:
        q1, q3 = np.percentile(times[arm], [25, 75])
        print('  %-15s %8.1f ms   (IQR %.1f-%.1f ms, %.0f minor page faults per step)'
              % (arm, medians[arm] * 1e3, q1 * 1e3, q3 * 1e3, infos[arm]['faults']))
    for arm in arms[1:]:
        target = TARGETS.get((size, arm))
        print('  ratio %s/unmasked: %.3f%s' % (arm, medians[arm] / medians['unmasked'],
                                               '   (target <= %.2f)' % target if target
                                               else ''))
        if target:
            print('RATIO mask_step[%s,%s,%s] %.3f <=%.2f'
                  % (arm, size, 'static' if static_alloc else 'default',
                     medians[arm] / medians['unmasked'], target))
    print('peak memory (ru_maxrss, separate processes, %d steps each):' % args.mem_steps)
    for arm, value in mem.items():
        print('  %-15s %8.1f MiB' % (arm, value / 2.0 ** 20))
    for arm in mem:
        if arm != 'unmasked':
            target = MEM_TARGETS.get(arm)
            print('  ratio %s/unmasked: %.3f%s' % (arm, mem[arm] / mem['unmasked'],
                                                   '   (target <= %.2f)' % target if target
                                                   else ''))
            if target:
                print('RATIO mask_memory[%s,%s,%s] %.3f <=%.2f'
                      % (arm, size, 'static' if static_alloc else 'default',
                         mem[arm] / mem['unmasked'], target))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--rounds', type=int, default=30, help='timed steps per arm')
    parser.add_argument('--warmup', type=int, default=3, help='untimed steps per arm')
    parser.add_argument('--mem-steps', type=int, default=5,
                        help='training steps in each memory process')
    parser.add_argument('--blocked-arm', action='store_true',
                        help='add the graph-blocked arm')
    parser.add_argument('--size', choices=('worst', 'large', 'both'), default='both',
                        help="batch 32 of 32x32 ('worst'), batch 16 of 128x128 ('large')")
    parser.add_argument('--no-memory', action='store_true', help='skip the memory processes')
    parser.add_argument('--alloc', choices=('default', 'static', 'both'), default='both',
                        help="hybridize() as is ('default'), with static_alloc=True "
                             "('static'), or one after the other ('both')")
    parser.add_argument('--memory-child', choices=ARMS, help=argparse.SUPPRESS)
    parser.add_argument('--static-alloc', action='store_true', help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        peak_memory_child(args.memory_child, args.mem_steps, args.static_alloc, args.size)
        return
    modes = {'default': [False], 'static': [True], 'both': [False, True]}[args.alloc]
    sizes = ['worst', 'large'] if args.size == 'both' else [args.size]
    # Every memory child first, while this process is still small (see peak_memory).
    mem = {(size, static_alloc): {} if args.no_memory else
           {arm: peak_memory(arm, args.mem_steps, static_alloc, size)
            for arm in ('unmasked', 'graph', 'update')}
           for size in sizes for static_alloc in modes}
    for size in sizes:
        for static_alloc in modes:
            report(args, static_alloc, mem[(size, static_alloc)], size)


if __name__ == '__main__':
    main()
