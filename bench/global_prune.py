"""Global magnitude pruning of resnet50_v1 to 0.9: the whole call vs. a bare numpy pass.

Every Conv2D and Dense weight of ``gluon.model_zoo.vision.resnet50_v1`` (about 25.5M entries,
Xavier-initialised, shapes resolved by one forward on a 1x3x224x224 input) lives on two
contexts (``cpu(0)``, ``cpu(1)``), as the issue's job states. Timed, interleaved in one run:

- the whole ``ps.prune_magnitude(net, weights, 0.9, scope='global')`` a user makes, in graph
  mode (the default) and in update mode: reading the weights, finding the exact threshold,
  writing the masks on every context (and, in update mode, zeroing the weights there);
- the floor: a bare numpy pass over host copies of the same weights made beforehand: abs,
  concatenate, partition, compare.

Prints the medians and ``RATIO global_prune[mode] <ratio> <=1.30`` for ``bench/run.py``.

Run: ``PYTHONPATH=. python bench/global_prune.py [--repeat 7]``
"""
import argparse
import statistics
import time
from collections import OrderedDict

import mxnet as mx
import numpy as np
from mxnet.gluon import nn
from mxnet.gluon.model_zoo import vision

import paramsurgery as ps

AMOUNT = 0.9
TARGET_RATIO = 1.3
CTXS = [mx.cpu(0), mx.cpu(1)]


def conv_dense_weights(net):
    found = OrderedDict()

    def visit(block):
        if isinstance(block, (nn.Conv2D, nn.Dense)):
            found[block.weight.name] = block.weight
    net.apply(visit)
    # Block.apply visits children first; keep the collect_params() order.
    return OrderedDict((name, p) for name, p in net.collect_params().items() if name in found)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--repeat', type=int, default=7)
    args = parser.parse_args()

    mx.random.seed(0)
    net = vision.resnet50_v1(pretrained=False)
    net.initialize(mx.init.Xavier(), ctx=CTXS)
    for ctx in CTXS:
        net(mx.nd.zeros((1, 3, 224, 224), ctx=ctx))
    params = conv_dense_weights(net)
    weights = OrderedDict((name, p.data().asnumpy()) for name, p in params.items())
    total = sum(w.size for w in weights.values())
    k = ps.prune_count(AMOUNT, total)
    print('resnet50_v1: %d Conv2D/Dense weights, %d entries on %d contexts, pruning %d '
          '(amount=%s, global); numpy %s, mxnet %s'
          % (len(weights), total, len(CTXS), k, AMOUNT, np.__version__, mx.__version__))

    key = list(params)
    originals = {name: p.data().copy() for name, p in params.items()}

    def bare_pass():
        mags = [np.abs(w) for w in weights.values()]
        flat = np.concatenate([m.ravel() for m in mags])
        threshold = np.partition(flat, k - 1)[k - 1]
        return [m > threshold for m in mags]

    def whole(mode):
        ps.prune_magnitude(net, key, AMOUNT, scope='global', mode=mode)
        mx.nd.waitall()

    def reset():
        ps.remove_mask(net, key, bake=False)
        for name, p in params.items():
            p.set_data(originals[name])
        mx.nd.waitall()

    arms = ('bare', 'graph', 'update')
    times = {arm: [] for arm in arms}
    for _ in range(args.repeat):
        for arm in arms:
            start = time.perf_counter()
            if arm == 'bare':
                bare_pass()
            else:
                whole(arm)
            times[arm].append(time.perf_counter() - start)
            if arm != 'bare':
                pruned = sum(int((ps.get_mask(net, n)[n] == 0).sum().asscalar()) for n in key)
                if pruned != k:
                    raise SystemExit('%s: pruned %d, expected %d' % (arm, pruned, k))
                reset()
    medians = {arm: statistics.median(t) for arm, t in times.items()}
    print('bare numpy pass on host copies (abs, concatenate, partition, compare): '
          'median %.1f ms' % (1e3 * medians['bare']))
    for arm in ('graph', 'update'):
        ratio = medians[arm] / medians['bare']
        print('whole ps.prune_magnitude(net, ..., scope="global", mode=%r): median %.1f ms, '
              'ratio %.2f (target <= %.2f)' % (arm, 1e3 * medians[arm], ratio, TARGET_RATIO))
        print('RATIO global_prune[%s] %.3f <=%.2f' % (arm, ratio, TARGET_RATIO))


if __name__ == '__main__':
    main()
