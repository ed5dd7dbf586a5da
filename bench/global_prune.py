"""Global magnitude pruning of resnet50_v1 to 0.9: mask computation vs. a bare np.partition.

Every Conv2D and Dense weight of ``gluon.model_zoo.vision.resnet50_v1`` (about 25.5M entries,
Xavier-initialised, shapes resolved by one forward on a 1x3x224x224 input) is pruned to 90%
over the union with ``ps.magnitude_masks(..., scope='global')``: gathering the magnitudes,
finding the exact threshold, and building one boolean mask per weight with ties broken by
index. The reference is one bare ``np.partition`` of the same magnitudes, already
concatenated. The two are timed interleaved in one run; the medians and their ratio are
printed (target: ratio <= 1.3).

Then the whole net-level ``ps.prune_magnitude(net, ..., scope='global')`` in graph and in
update mode (reading the weights, writing the masks and, in update mode, zeroing the
weights) against a bare numpy pass over the same host arrays (abs, concatenate, partition,
compare), interleaved (issue 12 target: <= 1.3).

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
    parser.add_argument('--repeat', type=int, default=5)
    args = parser.parse_args()

    mx.random.seed(0)
    net = vision.resnet50_v1(pretrained=False)
    net.initialize(mx.init.Xavier())
    net(mx.nd.zeros((1, 3, 224, 224)))
    params = conv_dense_weights(net)
    weights = OrderedDict((name, p.data().asnumpy()) for name, p in params.items())
    total = sum(w.size for w in weights.values())
    k = ps.prune_count(AMOUNT, total)
    print('resnet50_v1: %d Conv2D/Dense weights, %d entries, pruning %d (amount=%s, global)'
          % (len(weights), total, k, AMOUNT))

    concatenated = np.concatenate([np.abs(w).ravel() for w in weights.values()])
    ours, bare = [], []
    for _ in range(args.repeat):
        start = time.perf_counter()
        masks = ps.magnitude_masks(weights, AMOUNT, scope='global')
        ours.append(time.perf_counter() - start)
        start = time.perf_counter()
        np.partition(concatenated, k - 1)
        bare.append(time.perf_counter() - start)

    pruned = sum(int(m.size - np.count_nonzero(m)) for m in masks.values())
    if pruned != k:
        raise SystemExit('wrong count: pruned %d, expected %d' % (pruned, k))
    t_ours, t_bare = statistics.median(ours), statistics.median(bare)
    print('global magnitude masks (ps.magnitude_masks): median %.1f ms  (runs: %s)'
          % (1e3 * t_ours, ', '.join('%.0f' % (1e3 * t) for t in ours)))
    print('bare np.partition of the concatenated |w|:   median %.1f ms  (runs: %s)'
          % (1e3 * t_bare, ', '.join('%.0f' % (1e3 * t) for t in bare)))
    ratio = t_ours / t_bare
    print('ratio: %.2f (target <= %.1f) %s' % (ratio, TARGET_RATIO,
                                               'OK' if ratio <= TARGET_RATIO else 'ABOVE TARGET'))
    print('pruned exactly %d of %d entries; numpy %s, mxnet %s'
          % (pruned, total, np.__version__, mx.__version__))

    # The whole net-level call (reading the weights and existing masks from the net,
    # computing the masks, writing them into the net) in each mode, against a bare numpy pass
    # over the same host arrays: abs, concatenate, partition, compare (target: <= 1.3).
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

    times = {'bare': [], 'graph': [], 'update': []}
    for _ in range(args.repeat):
        for arm in ('bare', 'graph', 'update'):
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
    print('bare numpy pass (abs, concatenate, partition, compare): median %.1f ms'
          % (1e3 * medians['bare']))
    for arm in ('graph', 'update'):
        ratio = medians[arm] / medians['bare']
        print('whole ps.prune_magnitude(net, ..., scope="global", mode=%r): median %.1f ms, '
              'ratio %.2f (target <= %.1f) %s' % (arm, 1e3 * medians[arm], ratio, TARGET_RATIO,
                                                  'OK' if ratio <= TARGET_RATIO
                                                  else 'ABOVE TARGET'))


if __name__ == '__main__':
    main()
