"""Benchmark: assign_params vs. the raw in-place loop it replaces.

Every weight of resnet50_v1 on two contexts is multiplied by a numpy multiplier of its own
shape, once through ``ps.assign_params(net, {name: multiplier})`` and once through the
issue's baseline for this job: a loop that copies each multiplier to each replica's context and
runs ``nd.elemwise_mul(arr, m, out=arr)`` under ``autograd.pause()``.

The multipliers are drawn from [0.999, 1.001] (the issue's job: some entries above 1, so a
product could overflow and the call must prove it cannot) and, in a second arm, from
[0.998, 1] (max|m| <= 1: no product can overflow where the weight is finite, no pass over the
weights is needed). A third arm is the floor for the first: the same writes reading the
multipliers in place plus the one device pass over every replica that bounds the products
(a sum of squares; a weight in an MKLDNN layout copied first, as the call does). The arms are
interleaved in one run; the script prints their medians and ratios, and ``RATIO`` lines for
``bench/run.py``.
"""
import statistics
import time

import mxnet as mx
import numpy as np
from mxnet import autograd, nd
from mxnet.gluon.model_zoo import vision

import paramsurgery as ps
from paramsurgery import _mx

CTXS = [mx.cpu(0), mx.cpu(1)]
REPEATS = 15
TARGET = 1.10


def raw_loop(params, multipliers):
    with autograd.pause():
        for name, mult in multipliers.items():
            for arr in params[name].list_data():
                nd.elemwise_mul(arr, nd.array(mult, ctx=arr.context), out=arr)
    nd.waitall()


def floor_with_one_pass(params, views):
    """The writes reading the multipliers in place, after one device pass per replica."""
    with autograd.pause():
        sums = []
        for name in views:
            for arr in params[name].list_data():
                flat = (arr.copy() if _mx.is_blocked_layout(arr) else arr).reshape((-1,))
                sums.append(nd.dot(flat, flat))
        [s.asscalar() for s in sums]
        for name, view in views.items():
            for arr in params[name].list_data():
                nd.elemwise_mul(arr, view, out=arr)
    nd.waitall()


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
    at_most_one = {name: rng.uniform(0.998, 1.0, p.shape).astype(np.float32)
                   for name, p in params.items()}
    views = {name: nd.from_numpy(m.copy(), zero_copy=True) for name, m in multipliers.items()}
    entries = sum(m.size for m in multipliers.values())
    raw_loop(params, multipliers)       # warm up every path
    with_paramsurgery(net, multipliers)
    with_paramsurgery(net, at_most_one)
    arms = {'raw loop': lambda: raw_loop(params, multipliers),
            'assign_params': lambda: with_paramsurgery(net, multipliers),
            'assign |m|<=1': lambda: with_paramsurgery(net, at_most_one),
            'floor': lambda: floor_with_one_pass(params, views)}
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
    print('  ratio assign_params / raw loop = %.2f (target <= %.2f); with max|m| <= 1: %.2f; '
          'floor (in-place writes + one device pass over the replicas) / raw loop = %.2f; '
          'assign_params / floor = %.2f'
          % (ratio, TARGET, med['assign |m|<=1'] / med['raw loop'], med['floor'] / med['raw loop'],
             med['assign_params'] / med['floor']))
    print('RATIO assign_params %.3f <=%.2f' % (ratio, TARGET))
    print('RATIO assign_params[max|m|<=1] %.3f <=%.2f' % (med['assign |m|<=1'] / med['raw loop'],
                                                        TARGET))
    print('RATIO assign_params_floor %.3f -' % (med['floor'] / med['raw loop']))
    print('RATIO assign_params/floor %.3f -' % (med['assign_params'] / med['floor']))


if __name__ == '__main__':
    main()
