"""Leaving MXNet: compact file sizes and times, and ONNX Runtime latency next to MXNet's.

resnet50_v1 (``pretrained=False``, Xavier weights, seed 0). Printed, each measured in this run:

- sizes: the net pruned by global magnitude over every conv/dense weight (update mode, masks
  then baked into the weights, as a deployment keeps them) at 50/80/90/95% sparsity, and the
  dense net: the ``ps.save_compact`` file / the ``save_parameters`` file, next to two bounds
  for the same arrays (BatchNorm and biases dense, 32 bits per entry): the 1-bit floor (a
  1-bit-per-entry mask plus 32 bits per nonzero value) and the entropy bound (each mask's
  binary entropy per entry plus 32 bits per nonzero value). Targets: 90% sparse <= 0.14x,
  dense <= 1.01x;
- times: ``save_compact`` + ``load_compact`` (into a freshly built net) / ``save_parameters``
  + ``load_parameters`` (into the same kind of net), interleaved, medians; dense and 90%
  sparse. Target <= 2x. Each job's time includes the work it queued on MXNet's engine
  (``mx.nd.waitall()`` before its clock stops: ``load_parameters`` returns with its copies
  into the parameters still queued, which the next job would wait for). ``save_compact`` writes atomically (a temporary file, fsync, rename);
  ``save_parameters`` writes in place without fsync: the save and load halves are printed,
  and the ratio against ``save_parameters`` followed by an fsync of its file (``_vs_fsynced``)
  and the ratio of CPU times (``compact_cpu_*``: the process's, every thread's, which a busy
  machine stretches less than wall time);
- latency: ``ps.export_onnx`` of the dense net and of ``prune_channels(0.5)`` + ``shrink``
  (masks baked), ONNX Runtime (CPU provider, default graph optimisations) against MXNet
  (hybridised with ``static_alloc``, predict mode), batch 1 at 224x224, interleaved, medians;
  the ratio is MXNet time / ONNX Runtime time (above 1: ONNX Runtime is faster).

Each target prints ``RATIO <job> <ratio> <=<target>``; the other figures ``RATIO <job> <ratio> -``.

Run: ``PYTHONPATH=. python bench/deploy.py [--repeat 7] [--latency-repeat 20]``
"""
import argparse
import math
import os
import platform
import shutil
import statistics
import tempfile
import time
from typing import NamedTuple

import mxnet as mx
import numpy as np
from mxnet.gluon.model_zoo import vision

import paramsurgery as ps

NET = 'resnet50_v1'
SHAPE = (1, 3, 224, 224)
PRUNED = r'.*(conv|dense)\d+_weight$'
SPARSITIES = (0.5, 0.8, 0.9, 0.95)
TARGET_SIZE_90 = 0.14
TARGET_SIZE_DENSE = 1.01
TARGET_TIME = 2.0


class Sizes(NamedTuple):
    compact: int
    params: int
    floor: float     # bytes: 1 bit per entry of each sparse-stored array + 32 bits per value
    entropy: float   # bytes: binary entropy of each mask + 32 bits per nonzero value


def build(seed=0):
    mx.random.seed(seed)
    net = vision.get_model(NET, pretrained=False)
    net.initialize(mx.init.Xavier())
    net(mx.nd.zeros(SHAPE))
    return net


def sparse_net(sparsity):
    net = build()
    if sparsity:
        ps.prune_magnitude(net, PRUNED, sparsity, scope='global', mode='update')
        ps.remove_mask(net, ps.masked(net), bake=True)
    return net


def _entropy_bits(p):
    if p <= 0 or p >= 1:
        return 0.0
    return -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


def bounds(net):
    """The 1-bit floor and the entropy bound, in bytes, for the net's arrays."""
    floor = entropy = 0.0
    for param in net.collect_params().values():
        arr = param.data().asnumpy()
        n, nnz = arr.size, int(np.count_nonzero(arr))
        dense = 4.0 * n
        floor += min(dense, n / 8.0 + 4.0 * nnz)
        entropy += min(dense, n * _entropy_bits(nnz / n) / 8.0 + 4.0 * nnz)
    return floor, entropy


def sizes(net, folder):
    compact, params = os.path.join(folder, 's.compact'), os.path.join(folder, 's.params')
    ps.save_compact(net, compact)
    net.save_parameters(params)
    floor, entropy = bounds(net)
    return Sizes(os.path.getsize(compact), os.path.getsize(params), floor, entropy)


class RoundTrips(NamedTuple):
    wall: dict   # job -> median seconds
    cpu: dict    # job -> median CPU seconds of the process (every thread, MXNet's too)


def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def round_trips(net, folder, repeat):
    """Interleaved medians (seconds) of each half of both round trips."""
    target = build(1)
    compact, params = os.path.join(folder, 't.compact'), os.path.join(folder, 't.params')
    durable = os.path.join(folder, 'd.params')

    def save_durably():   # what save_compact's atomic write adds: the fsync
        net.save_parameters(durable)
        fd = os.open(durable, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    jobs = {'save_compact': lambda: ps.save_compact(net, compact),
            'load_compact': lambda: ps.load_compact(target, compact),
            'save_parameters': lambda: net.save_parameters(params),
            'load_parameters': lambda: target.load_parameters(params),
            'save_parameters_fsync': save_durably}
    times = {name: [] for name in jobs}
    cpu = {name: [] for name in jobs}
    for _ in range(repeat + 1):          # the first round warms the caches: dropped
        for name, job in jobs.items():
            start = time.process_time()
            times[name].append(timed(lambda: (job(), mx.nd.waitall())))
            cpu[name].append(time.process_time() - start)
    return RoundTrips({name: statistics.median(t[1:]) for name, t in times.items()},
                      {name: statistics.median(t[1:]) for name, t in cpu.items()})


def latencies(net, path, repeat):
    """Median seconds of one MXNet forward and one ONNX Runtime run, interleaved."""
    import onnxruntime
    x = mx.nd.array(np.random.RandomState(0).uniform(-1, 1, SHAPE).astype(np.float32))
    done = ps.export_onnx(net, path, inputs=x)
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(path, options, providers=['CPUExecutionProvider'])
    feeds = {done.inputs[0]: x.asnumpy()}
    net.hybridize(static_alloc=True, static_shape=True)
    with mx.autograd.predict_mode():
        net(x).wait_to_read()
    session.run(None, feeds)
    mx_times, ort_times = [], []
    for _ in range(repeat + 2):
        mx_times.append(timed(lambda: net(x).wait_to_read()))
        ort_times.append(timed(lambda: session.run(None, feeds)))
    return (statistics.median(mx_times[2:]), statistics.median(ort_times[2:]),
            done.max_diff / done.scale)


def shrunk_net():
    net = build()
    ps.prune_channels(net, 0.5, inputs=SHAPE)
    ps.shrink(net, inputs=SHAPE)
    ps.remove_mask(net, ps.masked(net), bake=True)
    return net


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--repeat', type=int, default=7)
    parser.add_argument('--latency-repeat', type=int, default=20)
    args = parser.parse_args()
    print('machine: %s, %d CPUs, %s; mxnet %s, numpy %s, OMP_NUM_THREADS=%s'
          % (platform.processor() or platform.machine(), os.cpu_count(), platform.platform(),
             mx.__version__, np.__version__, os.environ.get('OMP_NUM_THREADS', 'unset')))
    folder = tempfile.mkdtemp()
    try:
        print('%-8s %14s %14s %8s %8s %8s' % ('sparsity', 'save_params B', 'compact B',
                                               'compact', '1-bit', 'entropy'))
        ratios, nets = {}, {}
        for sparsity in (0.0,) + SPARSITIES:
            net = sparse_net(sparsity)
            s = sizes(net, folder)
            ratio = s.compact / s.params
            ratios[sparsity] = ratio
            print('%-8s %14d %14d %7.4fx %7.4fx %7.4fx'
                  % ('dense' if not sparsity else '%d%%' % round(100 * sparsity), s.params,
                     s.compact, ratio, s.floor / s.params, s.entropy / s.params), flush=True)
            if sparsity in (0.0, 0.9):
                nets[sparsity] = net
        for sparsity in SPARSITIES:
            job = 'compact_size_%d' % round(100 * sparsity)
            target = '<=%.2f' % TARGET_SIZE_90 if sparsity == 0.9 else '-'
            print('RATIO %s %.4f %s' % (job, ratios[sparsity], target))
        print('RATIO compact_size_dense %.4f <=%.2f' % (ratios[0.0], TARGET_SIZE_DENSE))

        for sparsity, net in sorted(nets.items()):
            t, cpu = round_trips(net, folder, args.repeat)
            label = 'dense' if not sparsity else '90'
            compact = t['save_compact'] + t['load_compact']
            plain = t['save_parameters'] + t['load_parameters']
            print('round trip (%s): save_compact %.1f ms + load_compact %.1f ms vs '
                  'save_parameters %.1f ms (%.1f ms with fsync) + load_parameters %.1f ms'
                  % (label, 1e3 * t['save_compact'], 1e3 * t['load_compact'],
                     1e3 * t['save_parameters'], 1e3 * t['save_parameters_fsync'],
                     1e3 * t['load_parameters']), flush=True)
            print('RATIO compact_time_%s %.3f <=%.1f' % (label, compact / plain, TARGET_TIME))
            print('RATIO compact_time_%s_vs_fsynced %.3f -'
                  % (label, compact / (t['save_parameters_fsync'] + t['load_parameters'])))
            # CPU time: the work done, which other processes on a busy machine do not stretch
            print('RATIO compact_cpu_%s %.3f -'
                  % (label, (cpu['save_compact'] + cpu['load_compact'])
                     / (cpu['save_parameters'] + cpu['load_parameters'])))
        del nets

        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            print('ONNX Runtime latency skipped: %s' % ps.errors.install_hint('onnx'))
            return
        for label, make in (('dense', build), ('shrunk', shrunk_net)):
            net = make()
            mx_time, ort_time, rel = latencies(net, os.path.join(folder, label + '.onnx'),
                                               args.latency_repeat)
            print('latency (%s, batch %d): MXNet %.2f ms, ONNX Runtime %.2f ms; max |diff| / '
                  'max |output| %.2g' % (label, SHAPE[0], 1e3 * mx_time, 1e3 * ort_time, rel),
                  flush=True)
            print('RATIO mxnet_vs_ort_%s %.3f -' % (label, mx_time / ort_time))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == '__main__':
    main()
