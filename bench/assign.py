"""Benchmark: assign_params vs. the raw in-place loop it replaces.

Every weight of resnet50_v1 on two contexts is multiplied by a numpy multiplier of its own
shape, once through ``ps.assign_params(net, {name: multiplier})`` and once through the floor
for this job: a loop that copies each multiplier to each replica's context and runs
``nd.elemwise_mul(arr, m, out=arr)`` under ``autograd.pause()``. A third arm is the floor for
a call that must also refuse overflowing products: the raw loop plus one device pass over every
replica (the sum of squares that bounds the products). The arms are interleaved in one run;
the script prints their medians, the ratio to the raw loop (target <= 1.10) and the ratio of
the floor to the raw loop, and ``RATIO assign_params <ratio> <=1.10`` for ``bench/run.py``.
"""
import statistics
import time

import mxnet as mx
import numpy as np
from mxnet import autograd, nd
from mxnet.gluon.model_zoo import vision

import paramsurgery as ps

CTXS = [mx.cpu(0), mx.cpu(1)]
REPEATS = 15
TARGET = 1.10


def raw_loop(params, multipliers):
    with autograd.pause():
        for name, mult in multipliers.items():
            for arr in params[name].list_data():
                nd.elemwise_mul(arr, nd.array(mult, ctx=arr.context), out=arr)
    nd.waitall()


def raw_loop_and_one_pass(params, multipliers):
    with autograd.pause():
        sums = [nd.dot(arr.reshape((-1,)), arr.reshape((-1,)))
                for name in multipliers for arr in params[name].list_data()]
        [s.asscalar() for s in sums]
    raw_loop(params, multipliers)


def with_paramsurgery(net, multipliers):
    ps.assign_params(net, multipliers)
    nd.waitall()


def main():
    net = vision.resnet50_v1(pretrained=False)
    net.initialize(mx.init.Xavier(), ctx=CTXS)
    for ctx in CTXS:
        net(nd.zeros((1, 3, 224, 224), ctx=ctx))
    params = net.collect_params('.*weight')
    rng = np.random.RandomState(0)
    multipliers = {name: rng.uniform(0.999, 1.001, p.shape).astype(np.float32)
                   for name, p in params.items()}
    entries = sum(m.size for m in multipliers.values())
    raw_loop(params, multipliers)       # warm up both paths
    with_paramsurgery(net, multipliers)
    arms = {'raw loop': lambda: raw_loop(params, multipliers),
            'assign_params': lambda: with_paramsurgery(net, multipliers),
            'raw + one pass': lambda: raw_loop_and_one_pass(params, multipliers)}
    times = {k: [] for k in arms}
    for _ in range(REPEATS):
        for k, run in arms.items():
            start = time.perf_counter()
            run()
            times[k].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    print('resnet50_v1: %d weights, %.1fM entries, %d contexts, %d interleaved repeats'
          % (len(multipliers), entries / 1e6, len(CTXS), REPEATS))
    for k, v in med.items():
        print('  %-14s median %.1f ms' % (k, v * 1e3))
    ratio = med['assign_params'] / med['raw loop']
    print('  ratio assign_params / raw loop = %.2f (target <= %.2f); floor (raw loop + one '
          'device pass over the replicas) / raw loop = %.2f'
          % (ratio, TARGET, med['raw + one pass'] / med['raw loop']))
    print('RATIO assign_params %.3f <=%.2f' % (ratio, TARGET))
    print('RATIO assign_params_floor %.3f -' % (med['raw + one pass'] / med['raw loop']))


if __name__ == '__main__':
    main()
