"""Latency models and latency budgets on the runtimes that serve a net (issue 22).

For mobilenet_v2_1_0 and resnet50_v1 (``pretrained=False``), at batch 1 and 8 (224x224), on
each runtime (plain MXNet with static_alloc, MXNet's oneDNN fusion, ONNX Runtime):

- the time ``ps.latency_model`` takes to build (target for resnet50_v1 at batch 1: < 60 s);
- uniform 50% of every prunable group's channels, kept counts rounded to 1, to 8 and to the
  model's fast counts (``round_to='fast'``): the measured speed-up, the MACs ratio and their
  quotient, the efficiency (target with ``'fast'`` on mobilenet_v2_1_0 under mkldnn and
  onnxruntime: >= 0.8), and the model's predicted ratio against the measured one for the
  ``'fast'`` net (target: within 20%, printed as max(p/m, m/p) <= 1.2);
- plans for ``latency_ratio`` 2 and 3 from an output-distance sensitivity (no labels) at the
  model's fast counts, measured (target: >= 0.9x the requested ratio).

Shrunk nets are timed as copies with the channels removed from the arrays and the symbol
(their values do not matter for timing); dense and shrunk nets of one comparison are timed
interleaved, medians. Every ratio is dense / shrunk measured in this run.

Run: ``PYTHONPATH=. python bench/latency.py [--nets mobilenet_v2_1_0,resnet50_v1]
[--batches 1,8] [--runtimes mxnet,mkldnn,onnxruntime] [--repeats 10]``
"""
import argparse
import os
import time
import warnings

import mxnet as mx
import numpy as np
from mxnet.gluon.model_zoo import vision

import paramsurgery as ps
from paramsurgery import latency
from paramsurgery.analysis import DEFAULT_AMOUNTS
from paramsurgery.channels import _build, _selected_groups
from paramsurgery.cli import _distance_report

TARGET_BUILD = 60.0
TARGET_EFFICIENCY = 0.8
TARGET_PREDICTION = 1.2
TARGET_PLAN = 0.9


def ratio_line(job, value, target):
    print('RATIO %s %.3f %s' % (job, value, target), flush=True)


def macs_of(variant, shape):
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        return ps.count_ops(latency._symbol_block(variant), shape)[0]


def bench(name, batch, runtime, repeats, threads):
    began = time.perf_counter()
    mx.random.seed(0)
    net = getattr(vision, name)(pretrained=False)
    net.initialize(mx.init.Xavier())
    shape = (batch, 3, 224, 224)
    tag = '%s-b%d-%s' % (name, batch, runtime)
    start = time.perf_counter()
    model = ps.latency_model(net, inputs=shape, runtime=runtime, threads=threads)
    built = time.perf_counter() - start
    print('%s: latency model of %d groups built in %.1f s (dense measured %.2f ms, '
          'predicted %.2f ms)' % (tag, len(model.sizes), built, 1e3 * model.measured,
                                   1e3 * model.dense), flush=True)
    ratio_line('%s-model-build-s' % tag, built,
               '<=%g' % TARGET_BUILD if (name, batch) == ('resnet50_v1', 1) else '-')
    groups = _selected_groups(net, _build(net, [shape]), None)
    dense = latency._variant_of(net, [shape])
    exact = latency._uniform(groups, 0.5, 1)
    kept = {'round1': exact, 'round8': latency._uniform(groups, 0.5, 8),
            'fast': {g: model.round(g, k) for g, k in exact.items()}}
    print('%s: sensitivity ... (%.0f s)' % (tag, time.perf_counter() - began), flush=True)
    report, _ = _distance_report(net, [shape], model, DEFAULT_AMOUNTS, 'l2')
    plans = {}
    for want in (2, 3):
        try:
            plan = report.plan(latency_ratio=want, latency=model)
        except ps.SurgeryValueError as err:
            print('%s: no plan for latency_ratio=%d: %s' % (tag, want, err))
            continue
        rows = {r['name']: r for r in report.table if plan.get(r['name']) == r['amount']}
        plans['plan%d' % want] = {n: model.sizes[n] - r['removed'] for n, r in rows.items()}
    kept.update(plans)
    print('%s: timing %d nets ... (%.0f s)' % (tag, 1 + len(kept), time.perf_counter() - began),
          flush=True)
    variants = [dense] + [latency._shrunk_variant(dense, groups, k) for k in kept.values()]
    seconds = latency.time_variants(runtime, variants, repeats, 2, latency._threads(threads),
                                    desc=tag)
    medians = [float(np.median(s)) for s in seconds]
    dense_macs = macs_of(dense, shape)
    for (job, counts), variant, median in zip(kept.items(), variants[1:], medians[1:]):
        speedup = medians[0] / median
        macs = dense_macs / macs_of(variant, shape)
        predicted = model.dense / model.predict(counts)
        print('%s %-7s: %.2f ms -> %.2f ms, speed-up %.2fx, MACs %.2fx, efficiency %.2f, '
              'predicted %.2fx' % (tag, job, 1e3 * medians[0], 1e3 * median, speedup, macs,
                                   speedup / macs, predicted), flush=True)
        if job in ('round1', 'round8', 'fast'):
            target = '>=%g' % TARGET_EFFICIENCY if job == 'fast' and name == \
                'mobilenet_v2_1_0' and runtime in ('mkldnn', 'onnxruntime') else '-'
            ratio_line('%s-%s-efficiency' % (tag, job), speedup / macs, target)
        if job in ('fast',) or job.startswith('plan'):
            ratio_line('%s-%s-prediction-error' % (tag, job),
                       max(predicted / speedup, speedup / predicted), '<=%g' % TARGET_PREDICTION)
        if job.startswith('plan'):
            want = int(job[4:])
            ratio_line('%s-%s-measured-over-requested' % (tag, job), speedup / want,
                       '>=%g' % TARGET_PLAN)


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
