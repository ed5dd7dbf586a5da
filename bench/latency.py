"""Latency models and latency budgets on the runtimes that serve a net (issue 22).

For mobilenet_v2_1_0 and resnet50_v1 (``pretrained=False``), at batch 1 and 8 (224x224), on
each runtime (plain MXNet with static_alloc, MXNet's oneDNN fusion, ONNX Runtime):

- the time ``ps.latency_model`` takes to build (target for resnet50_v1 at batch 1: < 60 s);
- uniform 50% of every prunable group's channels, kept counts rounded to 1, 8, 16 and to the
  model's fast counts (``round_to='fast'``): the measured speed-up, the MACs ratio and their
  quotient, the efficiency (target with ``'fast'`` on mobilenet_v2_1_0 under mkldnn and
  onnxruntime: >= 0.8), and the model's predicted ratio against the measured one for the
  ``'fast'`` net (target: within 20%, printed as max(p/m, m/p) <= 1.2);
- plans for ``latency_ratio`` 2 and 3 from an output-distance sensitivity (no labels) at the
  model's fast counts, each checked whole by the plan (``model.measure``) and made again
  while it measures short, then measured here (target: >= 0.9x the requested ratio).

Every ratio is dense / shrunk measured in this run.

Shrunk nets are made with the public API (prune_channels, shrink) from fresh copies, and
timed by ``ps.compare_latency`` (interleaved). The predicted ratio of every net is printed
against the measured one (target: max(p/m, m/p) <= 1.2).

Run: ``PYTHONPATH=. python bench/latency.py [--nets mobilenet_v2_1_0,resnet50_v1]
[--batches 1,8] [--runtimes mxnet,mkldnn,onnxruntime] [--repeats 10] [--threads 1]``;
one net, batch and runtime alone: ``--nets resnet50_v1 --batches 1 --runtimes mkldnn``.
Progress lines (elapsed seconds) go to stdout.
"""
import argparse
import os
import time
import warnings

import mxnet as mx
import numpy as np
from mxnet.gluon.model_zoo import vision

import paramsurgery as ps

TARGET_BUILD = 60.0
TARGET_EFFICIENCY = 0.8
TARGET_PREDICTION = 1.2
TARGET_PLAN = 0.9
AMOUNTS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def load():
    return ' '.join('%.2f' % v for v in os.getloadavg())


def ratio_line(job, value, target):
    print('RATIO %s %.3f %s' % (job, value, target), flush=True)


def fresh(name):
    """The zoo net, the same names and initial values every time (the latency model's
    groups are then every copy's, and the channels pruned by magnitude the same)."""
    mx.random.seed(0)
    net = getattr(vision, name)(pretrained=False, prefix=name + '_')
    net.initialize(mx.init.Xavier())
    return net


def shrunk(name, shape, prune):
    """A fresh net, ``prune(net)`` masking channels, shrunk for real and unmasked (masks of
    ones left in the graph would be timed too)."""
    net = fresh(name)
    prune(net)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        ps.shrink(net, inputs=shape)
    ps.remove_mask(net, ps.masked(net))
    return net


def kept_counts(net, shape, model):
    return {g.name: g.size for g in ps.trace_channels(net, shape).groups
            if g.name in model.sizes}


def output_distance(shape):
    """evaluate(net) for ps.sensitivity without labels: minus the relative distance of the
    output from the dense net's on a fixed batch (so that a drop is a distance)."""
    x = mx.nd.array(np.random.RandomState(0).uniform(-1, 1, size=shape))
    dense = []

    def evaluate(net):
        with mx.autograd.predict_mode():
            out = net(x).asnumpy()
        if not dense:
            dense.append(out)
        return -float(np.linalg.norm(out - dense[0]) / max(np.linalg.norm(dense[0]), 1e-30))
    return evaluate


def bench(name, batch, runtime, repeats, threads):
    began = time.perf_counter()
    net = fresh(name)
    shape = (batch, 3, 224, 224)
    tag = '%s-b%d-%s' % (name, batch, runtime)
    start = time.perf_counter()
    model = ps.latency_model(net, inputs=shape, runtime=runtime, threads=threads)
    built = time.perf_counter() - start
    print('%s: latency model of %d groups built in %.1f s (dense measured %.2f ms, '
          'predicted %.2f ms; alignment %d; load %s)'
          % (tag, len(model.sizes), built, 1e3 * model.measured, 1e3 * model.dense,
             model.align, load()), flush=True)
    ratio_line('%s-model-build-s' % tag, built,
               '<=%g' % TARGET_BUILD if (name, batch) == ('resnet50_v1', 1) else '-')
    print('%s: shrinking, sensitivity ... (%.0f s)' % (tag, time.perf_counter() - began),
          flush=True)
    nets = {'round%s' % r: shrunk(name, shape, lambda n, r=r: ps.prune_channels(
        n, 0.5, inputs=shape, round_to=r, latency=model if r == 'fast' else None))
        for r in (1, 8, 16, 'fast')}
    nets['fast'] = nets.pop('roundfast')
    report = ps.sensitivity(net, output_distance(shape), inputs=shape, amounts=AMOUNTS,
                            round_to='fast', latency=model, progress=False)
    for want in (2, 3):
        try:
            plan = report.plan(latency_ratio=want, latency=model)
        except ps.SurgeryValueError as err:
            print('%s: no plan for latency_ratio=%d: %s' % (tag, want, err))
            continue

        def prune(n, plan=plan):
            for group, amount in plan.items():
                ps.prune_channels(n, amount, inputs=shape, key=group, round_to='fast',
                                  latency=model)
        nets['plan%d' % want] = shrunk(name, shape, prune)
    print('%s: timing %d nets ... (%.0f s)' % (tag, 1 + len(nets), time.perf_counter() - began),
          flush=True)
    lats = ps.compare_latency([net] + list(nets.values()), inputs=shape, runtime=runtime,
                              repeats=repeats, warmup=2, threads=threads)
    medians = [lat.median for lat in lats]
    dense_macs = ps.count_ops(net, shape)[0]
    for (job, small), median in zip(nets.items(), medians[1:]):
        speedup = medians[0] / median
        macs = dense_macs / ps.count_ops(small, shape)[0]
        predicted = model.dense / model.predict(kept_counts(small, shape, model))
        print('%s %-7s: %.2f ms -> %.2f ms, speed-up %.2fx, MACs %.2fx, efficiency %.2f, '
              'predicted %.2fx (load %s)' % (tag, job, 1e3 * medians[0], 1e3 * median, speedup,
                                             macs, speedup / macs, predicted, load()),
              flush=True)
        if job in ('round1', 'round8', 'round16', 'fast'):
            target = '>=%g' % TARGET_EFFICIENCY if job == 'fast' and name == \
                'mobilenet_v2_1_0' and runtime in ('mkldnn', 'onnxruntime') else '-'
            ratio_line('%s-%s-efficiency' % (tag, job), speedup / macs, target)
        ratio_line('%s-%s-prediction-error' % (tag, job),
                   max(predicted / speedup, speedup / predicted), '<=%g' % TARGET_PREDICTION)
        if job.startswith('plan'):
            want = int(job[4:])
            ratio_line('%s-%s-measured-over-requested' % (tag, job), speedup / want,
                       '>=%g' % TARGET_PLAN)
    print('%s: done (%.0f s)' % (tag, time.perf_counter() - began), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--nets', default='mobilenet_v2_1_0,resnet50_v1')
    parser.add_argument('--batches', default='1,8')
    parser.add_argument('--runtimes', default='mxnet,mkldnn,onnxruntime')
    parser.add_argument('--repeats', type=int, default=10)
    parser.add_argument('--threads', type=int, default=None)
    args = parser.parse_args()
    print('load average %s, %d CPUs' % (' '.join('%.2f' % v for v in os.getloadavg()),
                                        os.cpu_count()), flush=True)
    for name in args.nets.split(','):
        for batch in map(int, args.batches.split(',')):
            for runtime in args.runtimes.split(','):
                bench(name, batch, runtime, args.repeats, args.threads)
    print('load average %s' % ' '.join('%.2f' % v for v in os.getloadavg()))


if __name__ == '__main__':
    main()
