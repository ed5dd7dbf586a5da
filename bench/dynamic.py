"""Dynamic sparse training on the demo's digits task: dense, a static random mask, SET and RigL.

Setup (issue 24): the demo's CNN (``paramsurgery.demo.build_net``: three convs and two dense
layers, hybridised, two CPU contexts) trained from scratch on scikit-learn's bundled digits
(the demo's split: 1150 training images, 360 test images), Adam, batch 64, the same number
of steps for every arm. The sparse arms keep every conv/dense weight at ``--sparsity``
(uniform) in update mode:

- ``dense``: no mask;
- ``static``: the random initial mask of ``DynamicSparsity`` with ``drop_fraction=0`` (so
  the same masks as SET and RigL start from, never moved);
- ``set`` / ``rigl``: ``DynamicSparsity(method=...)``, ``update_every``, ``drop_fraction``
  0.3, cosine decay to ``end`` = 75% of the steps (RigL's defaults).

It prints the test accuracy of every arm and seed, the means over the seeds, and the
targets: SET and RigL above static, RigL within 3 points of dense.

Time: after training, a step between updates (forward, backward, ``DynamicSparsity.step`` at
a step that does not update, ``trainer.step``) against an update-mode masked step without
``DynamicSparsity``, interleaved in random order in one process; medians and the ratio
(target <= 1.05).

Measured here (690 steps, Adam lr 0.001, batch 64, means of 3 seeds, one run each):
uniform: dense 0.9796, static 0.9352, SET 0.9454, RigL 0.9398; ERK: static 0.9574, SET
0.9630, RigL 0.9574; step between updates / masked step 0.976. The Adam suspicion (a grown
entry's first step of ~3.2x the learning rate because the bias correction uses the global
count) does not hold at this length: at step 100 the correction is sqrt(1 - 0.999**100) =
0.31, and the measured first step of grown entries was 0.98x the learning rate; an Adam with
a per-entry count (its bias correction restarted for every grown entry) gave RigL 0.9333
(static 0.9352), no better. What holds the sparse arms back is the length: at step 100 the
net is at 24% test accuracy, at 300 at 88%, so the masks are moved (and frozen at 75%) while
the net is still far from trained, and a 90%-sparse first conv (14 weights) limits every
arm; ERK, which keeps small layers denser, gains 2 points for all of them.

Longer training (a helper's runs on this machine, uniform, Adam, means of 3 seeds, one run per
length): 2000 steps dense 0.9796, static 0.9759, SET 0.9769, RigL 0.9722; 4000 steps dense
0.9815, static 0.9769, SET 0.9769, RigL 0.9750; step between updates / masked step 0.989.
From 2000 steps the sparse arms are within 0.5 points of each other (under 2 of the 360 test
images), less than the spread between seeds (up to ~1.4 points): this task has no headroom to
show RigL above static. The grow criterion was checked: the gradient RigL ranks is
bit-identical to an unmasked copy's, summed over the contexts; 62-76% of the inactive entries
have an exactly zero gradient (filters of a 90%-sparse first conv with no active weight are
dead ReLU units RigL cannot grow into; SET can by chance). The plot in
docs/img/dynamic-sparsity.png is the 2000-step run (``--steps 2000 --plot PATH``).

Run: ``python bench/dynamic.py [--steps 690] [--seeds 3] [--sparsity 0.9]
[--update-every 100] [--lr 0.001] [--optimizer adam] [--momentum M] [--rounds 300]
[--curve FILE.json] [--plot FILE.png]``.
"""
import argparse
import json
import random
import statistics
import time

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon

import paramsurgery as ps
from paramsurgery._plot import pyplot, save_figure
from paramsurgery.demo import CTXS, PRUNED, _splits, accuracy, build_net
from paramsurgery.dynamic import erk_densities

ARMS = ['dense', 'static', 'set', 'rigl']


def batches(train, steps):
    """``steps`` training batches, epoch after epoch."""
    done = 0
    while True:
        for data, label in train:
            if done == steps:
                return
            yield data, label
            done += 1


def make(arm, seed, args):
    net = build_net(seed)
    opts = {'learning_rate': args.lr}
    if args.momentum:
        opts['momentum'] = args.momentum
    trainer = gluon.Trainer(net.collect_params(), args.optimizer, opts, update_on_kvstore=False)
    dyn = None
    if arm != 'dense':
        dyn = ps.DynamicSparsity(
            net, trainer, PRUNED, args.sparsity, method='set' if arm == 'set' else 'rigl',
            update_every=args.update_every,
            drop_fraction=0.0 if arm == 'static' else args.drop_fraction,
            end=int(0.75 * args.steps), distribution=args.distribution, seed=seed)
    return net, trainer, dyn


def train_one(arm, seed, args, record=None):
    """Train an arm from scratch; returns (test accuracy, net, trainer, dyn)."""
    mx.random.seed(seed)
    np.random.seed(seed)
    train, _, (x_test, y_test), _ = _splits(seed)
    net, trainer, dyn = make(arm, seed, args)
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    for step, (data, label) in enumerate(batches(train, args.steps), start=1):
        xs = gluon.utils.split_and_load(data, CTXS, even_split=False)
        ys = gluon.utils.split_and_load(label, CTXS, even_split=False)
        with autograd.record():
            losses = [loss_fn(net(xp), yp) for xp, yp in zip(xs, ys)]
        autograd.backward(losses)
        if dyn is not None:
            dyn.step(step)
        trainer.step(data.shape[0])
        if record is not None and (step % args.eval_every == 0 or step == args.steps):
            record.setdefault(arm, {}).setdefault(seed, []).append(
                (step, accuracy(net, x_test, y_test)))
    return accuracy(net, x_test, y_test), net, trainer, dyn


def time_steps(args):
    """Median seconds of a masked step and of a DynamicSparsity step between updates."""
    train, _, _, _ = _splits(0)
    data, label = next(iter(train))
    xs = gluon.utils.split_and_load(data, CTXS, even_split=False)
    ys = gluon.utils.split_and_load(label, CTXS, even_split=False)
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    arms = {}
    for name in ('masked', 'dynamic'):
        net, trainer, dyn = make('rigl', 0, args)
        arms[name] = (net, trainer, dyn if name == 'dynamic' else None)

    def step(net, trainer, dyn):
        with autograd.record():
            losses = [loss_fn(net(xp), yp) for xp, yp in zip(xs, ys)]
        autograd.backward(losses)
        if dyn is not None:
            dyn.step(1)          # never an update step (update_every > 1)
        trainer.step(data.shape[0])
        for p in net.collect_params().values():
            p.list_data()[0].wait_to_read()

    for _ in range(10):
        for arm in arms.values():
            step(*arm)
    times = {name: [] for name in arms}
    for _ in range(args.rounds):
        order = list(arms)
        random.shuffle(order)
        for name in order:
            start = time.perf_counter()
            step(*arms[name])
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def plot(args, record, means):
    """Two panels: the density of every sparse weight under 'uniform' and 'erk', and the
    test accuracy of every arm against the steps (mean over the seeds), mask updates marked."""
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    net = build_net(0)
    shapes = {n: p.shape for n, p in ps.select(net, PRUNED).items()}
    names = [n.replace('digits_', '') for n in shapes]
    uniform = [1 - args.sparsity] * len(shapes)
    erk = list(erk_densities(shapes, args.sparsity).values())
    xs = np.arange(len(shapes))
    left.bar(xs - 0.2, uniform, 0.4, label='uniform')
    left.bar(xs + 0.2, erk, 0.4, label='erk')
    left.set_xticks(xs)
    left.set_xticklabels(['%s\n%d' % (n, np.prod(s)) for n, s in zip(names, shapes.values())],
                         fontsize=7)
    left.set_yscale('log')
    left.set_ylabel('density (active fraction)')
    left.set_title('per-layer density at %.0f%% sparsity' % (100 * args.sparsity))
    left.legend()
    end = int(0.75 * args.steps)
    for step in range(args.update_every, end, args.update_every):
        right.axvline(step, color='0.85', linewidth=0.8)
    for arm, runs in record.items():
        steps = [s for s, _ in next(iter(runs.values()))]
        acc = np.mean([[a for _, a in curve] for curve in runs.values()], axis=0)
        right.plot(steps, acc, label='%s (%.3f)' % (arm, means[arm]))
    right.set_ylim(0.0, 1.0)
    right.set_xlabel('step (grey: mask updates of SET and RigL)')
    right.set_ylabel('test accuracy (mean of %d seeds)' % args.seeds)
    right.set_title('%s, %s, %d steps' % (args.distribution, args.optimizer, args.steps))
    right.legend(loc='lower right')
    save_figure(fig, args.plot, dpi=90)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--steps', type=int, default=690)
    parser.add_argument('--seeds', type=int, default=3)
    parser.add_argument('--sparsity', type=float, default=0.9)
    parser.add_argument('--update-every', type=int, default=100)
    parser.add_argument('--drop-fraction', type=float, default=0.3)
    parser.add_argument('--distribution', default='uniform', choices=['uniform', 'erk'])
    parser.add_argument('--optimizer', default='adam')
    parser.add_argument('--lr', type=float, default=0.001)
    parser.add_argument('--momentum', type=float, default=0.0, help="for --optimizer sgd")
    parser.add_argument('--arms', default=','.join(ARMS))
    parser.add_argument('--rounds', type=int, default=300, help='timed rounds (0: no timing)')
    parser.add_argument('--eval-every', type=int, default=30)
    parser.add_argument('--curve', metavar='FILE.json',
                        help='write the test accuracy every --eval-every steps')
    parser.add_argument('--plot', metavar='FILE.png',
                        help='plot the per-layer densities and the test accuracy against steps')
    args = parser.parse_args()
    arms = args.arms.split(',')
    if args.plot:
        pyplot()     # fail now, not after the training, if matplotlib is missing
    record = {} if args.curve or args.plot else None
    results = {arm: [] for arm in arms}
    for seed in range(args.seeds):
        for arm in arms:
            acc = train_one(arm, seed, args, record)[0]
            results[arm].append(acc)
            print('%-7s seed %d  test accuracy %.4f' % (arm, seed, acc), flush=True)
    means = {arm: float(np.mean(v)) for arm, v in results.items()}
    print('means over %d seeds (%d steps, %s, sparsity %.2f):' % (args.seeds, args.steps,
                                                                 args.optimizer, args.sparsity))
    for arm in arms:
        print('  %-7s %.4f' % (arm, means[arm]))
    if {'static', 'set', 'rigl', 'dense'} <= set(means):
        print('SET - static %+.4f, RigL - static %+.4f, dense - RigL %+.4f (target < 0.03)'
              % (means['set'] - means['static'], means['rigl'] - means['static'],
                 means['dense'] - means['rigl']))
    if args.curve:
        with open(args.curve, 'w') as f:
            json.dump(record, f)
    if args.plot:
        plot(args, record, means)
    if args.rounds:
        med = time_steps(args)
        print('step between updates %.2f ms, update-mode masked step %.2f ms: ratio %.3f '
              '(target <= 1.05)' % (med['dynamic'] * 1e3, med['masked'] * 1e3,
                                    med['dynamic'] / med['masked']))


if __name__ == '__main__':
    main()
