"""Benchmark: assign_params vs. the raw in-place loop it replaces.

Every weight of resnet50_v1 on two contexts is multiplied by a numpy multiplier of its own
shape, once through ``ps.assign_params(net, {name: multiplier})`` and once through the floor
for this job: a loop that copies each multiplier to each replica's context and runs
``nd.elemwise_mul(arr, m, out=arr)`` under ``autograd.pause()``. The two are interleaved in
one run; the script prints both medians and the ratio (target <= 1.3).
"""
import statistics
import time

import mxnet as mx
import numpy as np
from mxnet import autograd, nd
from mxnet.gluon.model_zoo import vision

import paramsurgery as ps

CTXS = [mx.cpu(0), mx.cpu(1)]
REPEATS = 9


def raw_loop(params, multipliers):
    with autograd.pause():
        for name, mult in multipliers.items():
            for arr in params[name].list_data():
                nd.elemwise_mul(arr, nd.array(mult, ctx=arr.context), out=arr)
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
    entries = sum(m.size for m in multipliers.values())
    raw_loop(params, multipliers)       # warm up both paths
    with_paramsurgery(net, multipliers)
    times = {'raw loop': [], 'assign_params': []}
    for _ in range(REPEATS):
        start = time.perf_counter()
        raw_loop(params, multipliers)
        times['raw loop'].append(time.perf_counter() - start)
        start = time.perf_counter()
        with_paramsurgery(net, multipliers)
        times['assign_params'].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    print('resnet50_v1: %d weights, %.1fM entries, %d contexts, %d interleaved repeats'
          % (len(multipliers), entries / 1e6, len(CTXS), REPEATS))
    for k, v in med.items():
        print('  %-14s median %.1f ms' % (k, v * 1e3))
    print('  ratio assign_params / raw loop = %.2f (target <= 1.3)'
          % (med['assign_params'] / med['raw loop']))


if __name__ == '__main__':
    main()
