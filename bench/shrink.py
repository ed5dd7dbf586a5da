"""Structural shrink: how much smaller and faster a channel-pruned network really gets.

For resnet50_v1 and mobilenetv2_1.0 (``pretrained=False``, Xavier weights), 50% of the
channels of every prunable group are masked with ``ps.prune_channels`` (L2), removed with
``ps.shrink``, and the remaining masks baked into the weights (``ps.remove_mask``). Printed, each as dense / shrunk measured in this run:

- the MACs ratio and the parameter ratio (``ps.count_ops``), and the parameter-file size
  ratio (``save_parameters``);
- the CPU inference latency ratio: hybridised with ``static_alloc=True``, predict mode,
  batch 8 at 224x224, dense and shrunk calls interleaved, medians; the same with MXNet's
  MKLDNN operator fusion (``optimize_for(x, backend='MKLDNN')``); and the efficiency
  (latency speed-up / MACs ratio; the target for resnet50_v1 is >= 0.75);
- the training-step speed-up (forward, backward and an SGD step, batch 8 at 224x224);
- the time of ``ps.shrink`` itself, and of ``ps.prune_channels`` + ``ps.shrink``, against one
  ``save_parameters`` + ``load_parameters`` round trip of the same dense net, medians of 3
  trials interleaved with the round trips (target for shrink <= 3x; issue 20 compares
  prune_channels + shrink with Torch-Pruning 1.6, which needs torch: only its ratio to the
  round trip is printed, without a target); and the floor of any shrink, timed in the same
  trials on the masked net: its check's two predict forwards and one copy of every array.

Run: ``PYTHONPATH=. python bench/shrink.py [--repeat 7] [--nets resnet50_v1,mobilenetv2_1.0]``
"""
import argparse
import os
import statistics
import tempfile
import time
import warnings
from typing import NamedTuple

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon
from mxnet.gluon.model_zoo import vision

import paramsurgery as ps

SHAPE = (8, 3, 224, 224)
TARGET_EFFICIENCY = 0.75
TARGET_SHRINK = 3.0
SURGERY_TRIALS = 3


def build(name, seed=0):
    mx.random.seed(seed)
    net = vision.get_model(name, pretrained=False)
    net.initialize(mx.init.Xavier())
    net(mx.nd.zeros((1,) + SHAPE[1:]))
    return net


def clone(name, net):
    other = build(name)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, 'w.params')
        net.save_parameters(path)
        other.load_parameters(path)
    return other


def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(fns, repeat):
    """Median seconds of each callable, the calls interleaved (a, b, a, b, ...)."""
    for fn in fns:
        fn()   # warm-up: graphs built, memory pools filled
    times = [[] for _ in fns]
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            times[i].append(timed(fn))
    return [statistics.median(t) for t in times]


def file_size(net):
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, 'w.params')
        net.save_parameters(path)
        return os.path.getsize(path)


def infer(net, x):
    def run():
        with autograd.predict_mode():
            net(x).wait_to_read()
    return run


def train_step(net, x, y):
    trainer = gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': 1e-3,
                                                          'momentum': 0.9})
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()

    def run():
        with autograd.record():
            loss = loss_fn(net(x), y)
        loss.backward()
        trainer.step(x.shape[0])
        mx.nd.waitall()
    return run


class SurgeryTimes(NamedTuple):
    prune: float    # median seconds of ps.prune_channels(net, 0.5, ...)
    shrink: float   # of ps.shrink(net, ...) after it
    trip: float     # of one save_parameters + load_parameters round trip of the dense net
    floor: float    # of what no shrink can skip: its check's two predict forwards of the
    #                 masked net and reading their outputs, and one copy of every array


def check_floor(net, sample):
    """What every shrink does at least, on the masked ``net`` (left unchanged)."""
    x = mx.nd.array(np.random.RandomState(0).uniform(-1, 1, size=sample))
    arrays = [p.data() for p in net.collect_params().values()]

    def run():
        with autograd.predict_mode():
            outs = [net(x) for _ in range(2)]
        copies = [a.copy() for a in arrays]
        for out in outs:
            out.asnumpy()
        mx.nd.waitall()
        del copies
    return run


def surgery_times(name, dense, sample, trials):
    """Each trial prunes and shrinks a fresh copy of ``dense``, then times the round trip
    (interleaved, so that load from other processes hits both alike). Returns the last
    shrunk net, the medians and the dense net's parameter file."""
    path = os.path.join(tempfile.mkdtemp(), 'dense.params')

    def round_trip():
        dense.save_parameters(path)
        dense.load_parameters(path)
    round_trip()                       # warm-up: the file in the page cache
    ps.prune_channels, ps.shrink       # warm-up: their modules imported
    prunes, shrinks, trips, floors = [], [], [], []
    for _ in range(trials):
        net = clone(name, dense)
        prunes.append(timed(lambda: ps.prune_channels(net, 0.5, inputs=sample,
                                                      importance='l2')))
        shrinks.append(timed(lambda: ps.shrink(net, inputs=sample)))
        trips.append(timed(round_trip))
        # on a masked copy of its own, so that shrink's timing is what it was without it
        masked = clone(name, dense)
        ps.prune_channels(masked, 0.5, inputs=sample, importance='l2')
        floors.append(timed(check_floor(masked, sample)))
    times = SurgeryTimes(*map(statistics.median, (prunes, shrinks, trips, floors)))
    return net, times, path


def bench(name, repeat):
    dense = build(name)
    x = mx.nd.array(np.random.RandomState(0).uniform(-1, 1, size=SHAPE).astype('float32'))
    y = mx.nd.array(np.random.RandomState(1).randint(0, 1000, size=SHAPE[0]))
    sample = (1,) + SHAPE[1:]
    shrunk, times, path = surgery_times(name, dense, sample, SURGERY_TRIALS)
    # what a deployment does next: bake the (sliced) masks into the weights, so that the
    # graph has no multiply left and the file no mask arrays
    ps.remove_mask(shrunk, ps.masked(shrunk), bake=True)
    macs_d, params_d = ps.count_ops(dense, sample)
    macs_s, params_s = ps.count_ops(shrunk, sample)
    macs_ratio = macs_d / macs_s
    print('%s: MACs %.3fG -> %.3fG (ratio %.2f), parameters %.2fM -> %.2fM (ratio %.2f), '
          'file %.1f MB -> %.1f MB (ratio %.2f)'
          % (name, macs_d / 1e9, macs_s / 1e9, macs_ratio, params_d / 1e6, params_s / 1e6,
             params_d / params_s, file_size(dense) / 1e6, file_size(shrunk) / 1e6,
             file_size(dense) / file_size(shrunk)))
    print('%s: medians of %d interleaved trials: prune_channels %.0f ms, shrink %.0f ms, '
          'save+load round trip %.0f ms: shrink / round trip %.2f (target <= %.1f), '
          'prune_channels + shrink / round trip %.2f'
          % (name, SURGERY_TRIALS, 1e3 * times.prune, 1e3 * times.shrink, 1e3 * times.trip,
             times.shrink / times.trip, TARGET_SHRINK, (times.prune + times.shrink) / times.trip))
    print('%s: the floor (two predict forwards of the masked net + one copy of every '
          'array) %.0f ms: floor / round trip %.2f, shrink / floor %.2f'
          % (name, 1e3 * times.floor, times.floor / times.trip, times.shrink / times.floor))
    print('RATIO shrink[%s] %.3f <=%.1f' % (name, times.shrink / times.trip, TARGET_SHRINK))
    print('RATIO prune_channels+shrink[%s] %.3f -'
          % (name, (times.prune + times.shrink) / times.trip))

    for net in (dense, shrunk):
        net.hybridize(static_alloc=True, static_shape=True)
    t_dense, t_shrunk = interleaved([infer(dense, x), infer(shrunk, x)], repeat)
    speedup = t_dense / t_shrunk
    print('%s: inference batch 8, static_alloc: %.0f ms -> %.0f ms, speed-up %.2f, '
          'efficiency %.2f (speed-up / MACs ratio)%s'
          % (name, 1e3 * t_dense, 1e3 * t_shrunk, speedup, speedup / macs_ratio,
             '; target >= %.2f' % TARGET_EFFICIENCY if name == 'resnet50_v1' else ''))
    if name == 'resnet50_v1':
        print('RATIO shrink_efficiency[%s] %.3f >=%.2f'
              % (name, speedup / macs_ratio, TARGET_EFFICIENCY))

    fused = []
    for net in (dense, shrunk):
        net = clone(name, net) if net is dense else net
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            net.optimize_for(x, backend='MKLDNN', static_alloc=True, static_shape=True)
        fused.append(net)
    f_dense, f_shrunk = interleaved([infer(fused[0], x), infer(fused[1], x)], repeat)
    print('%s: inference with MKLDNN fusion (optimize_for): %.0f ms -> %.0f ms, speed-up '
          '%.2f, efficiency %.2f; fusion alone speeds dense up %.2fx'
          % (name, 1e3 * f_dense, 1e3 * f_shrunk, f_dense / f_shrunk,
             f_dense / f_shrunk / macs_ratio, t_dense / f_dense))

    train_d, train_s = build(name), shrunk
    train_d.load_parameters(path)
    for net in (train_d, train_s):
        net.hybridize(static_alloc=True, static_shape=True)
    s_dense, s_shrunk = interleaved([train_step(train_d, x, y), train_step(train_s, x, y)],
                                    max(3, repeat // 2))
    print('%s: training step batch 8: %.0f ms -> %.0f ms, speed-up %.2f'
          % (name, 1e3 * s_dense, 1e3 * s_shrunk, s_dense / s_shrunk))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--repeat', type=int, default=7)
    parser.add_argument('--nets', default='resnet50_v1,mobilenetv2_1.0')
    args = parser.parse_args()
    # the round trip's parameter file (kept for the training step) goes in one scratch
    # folder, removed at the end
    with tempfile.TemporaryDirectory(prefix='bench-shrink-') as scratch:
        tempfile.tempdir = scratch
        try:
            for name in args.nets.split(','):
                bench(name, args.repeat)
        finally:
            tempfile.tempdir = None


if __name__ == '__main__':
    main()
