"""The cost of one sensitivity trial against one call of ``evaluate`` alone.

resnet18_v1 (``pretrained=False``, 10 classes), hybridised, on one CPU context;
``evaluate`` is the accuracy on 512 images of 32x32 (random data: only the cost matters).
``ps.sensitivity`` runs on a few groups (``kind='channels'``) or weights
(``kind='weights'``) at two amounts; the whole call is timed (snapshot, every trial's
pruning and restoring, the baseline) and divided by the number of ``evaluate`` calls it
made, and compared with the median time of the same ``evaluate`` measured inside that call.
A trial that rebuilt the graph or copied every weight would show here. Target: a trial
<= 1.2x ``evaluate`` alone.

Run: ``PYTHONPATH=. python bench/sensitivity.py [--kind weights] [--repeat 3]``
"""
import argparse
import statistics
import time

import mxnet as mx
import numpy as np
from mxnet.gluon.model_zoo import vision

import paramsurgery as ps

TARGET = 1.2


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--kind', choices=['channels', 'weights', 'both'], default='both')
    parser.add_argument('--repeat', type=int, default=3)
    args = parser.parse_args()

    mx.random.seed(0)
    net = vision.resnet18_v1(pretrained=False, classes=10)
    net.initialize(mx.init.Xavier())
    net.hybridize(static_alloc=True)
    rng = np.random.RandomState(0)
    x = mx.nd.array(rng.rand(512, 3, 32, 32).astype('float32'))
    y = mx.nd.array(rng.randint(0, 10, 512))
    net(x[:2])
    durations = []

    def evaluate(net):
        start = time.perf_counter()
        correct = 0.0
        for i in range(0, 512, 128):
            correct += (net(x[i:i + 128]).argmax(axis=1) == y[i:i + 128]).sum().asscalar()
        durations.append(time.perf_counter() - start)
        return correct / 512

    kinds = ['channels', 'weights'] if args.kind == 'both' else [args.kind]
    keys = {'channels': ['.*stage1_conv0_weight', '.*stage3_conv0_weight',
                         '.*stage4_conv2_weight'],
            'weights': ['.*stage1_conv0_weight', '.*stage3_conv0_weight',
                        '.*stage4_conv2_weight', '.*dense0_weight']}
    for kind in kinds:
        ratios = []
        for _ in range(args.repeat):
            durations.clear()
            start = time.perf_counter()
            inputs = (1, 3, 32, 32) if kind == 'channels' else None
            report = ps.sensitivity(net, evaluate, inputs=inputs, kind=kind,
                                    key=keys[kind], amounts=[0.3, 0.7], progress=False)
            total = time.perf_counter() - start
            per_call = total / len(durations)
            alone = statistics.median(durations)
            ratios.append(per_call / alone)
        print('%-8s %d trials + baseline: per trial %.1f ms, evaluate alone (median) %.1f ms'
              % (kind, len(report.table), 1e3 * per_call, 1e3 * alone))
        print('%-8s ratio trial / evaluate: median %.3f over %d runs (each %s); target <= %.1f'
              % (kind, statistics.median(ratios), len(ratios),
                 ', '.join('%.3f' % r for r in ratios), TARGET))
        print('RATIO sensitivity[%s] %.3f <=%.1f' % (kind, statistics.median(ratios), TARGET))


if __name__ == '__main__':
    main()
