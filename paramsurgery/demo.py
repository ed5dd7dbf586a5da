"""The demo behind ``make demo`` / ``paramsurgery demo``: prune a CNN, then shrink one.

Offline, on scikit-learn's bundled handwritten digits (8x8 images, shipped inside the
package): a held-out test split, a complementary train/validation split from
:func:`paramsurgery.complementary_split`, a small CNN trained in a custom
``autograd.record()`` loop on two contexts.

Act 1, unstructured: the CNN pruned gradually to 90% sparsity with :class:`Pruner` and
:class:`PolynomialDecay` while fine-tuning, stepping with :func:`safe_step`.

Act 2, channels: from the same dense weights, :func:`sensitivity` measures each channel
group pruned alone on the validation split, :meth:`SensitivityReport.plan` picks per-group
amounts for a MACs budget, :func:`prune_channels` masks them, the net is fine-tuned and
:func:`shrink` removes the channels for real; a table compares MACs, parameters, file size,
measured inference time and test accuracy, dense and shrunk.

Act 3, leaving MXNet: the shrunk net exported to ONNX with :func:`export_onnx` and run
in ONNX Runtime (the largest difference from MXNet and both speeds printed; skipped, saying
so, when the ``[onnx]`` extra is not installed), and act 1's 90% sparse net saved with
:func:`save_compact` (its size against ``save_parameters``).

The last line printed is ``RESULT dense_acc=<float> pruned_acc=<float> sparsity=<float>
shrunk_acc=<float> macs_ratio=<float> speedup=<float> onnx_max_diff=<float>
compact_ratio=<float>`` (``onnx_max_diff=nan`` when act 3's export was skipped).
"""
import argparse
import os
import shutil
import sys
import tempfile
import time
from typing import Optional

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon
from mxnet.gluon import nn

from . import _mx
from ._checks import check_flag, is_int, is_real
from ._files import atomic_write, check_path
from ._plot import pyplot
from .analysis import sensitivity
from .channels import count_ops, prune_channels, shrink
from .compact import load_compact, save_compact
from .errors import MissingDependencyError, SurgeryTypeError, SurgeryValueError, install_hint
from .masks import masked, remove_mask
from .onnx_export import export_onnx
from .pruning import Pruner
from .report import sparsity_report
from .samplers import complementary_split
from .schedules import PolynomialDecay
from .select import select
from .stale import safe_step
from .surgery import set_params

__all__ = ['run', 'add_arguments']

CTXS = [mx.cpu(0), mx.cpu(1)]
PRUNED = r'.*(conv|dense)\d+_weight$'  # every conv/dense weight, not their masks


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--epochs', type=int, default=20,
                        help='dense training epochs (default 20)')
    parser.add_argument('--prune-epochs', type=int, default=40,
                        help='epochs of gradual pruning and fine-tuning (default 40)')
    parser.add_argument('--sparsity', type=float, default=0.9,
                        help='final sparsity of the conv/dense weights (default 0.9)')
    parser.add_argument('--channel-epochs', type=int, default=15,
                        help='epochs of fine-tuning after channel pruning (default 15)')
    parser.add_argument('--macs-ratio', type=float, default=2.5,
                        help='channel pruning budget: dense MACs / shrunk MACs (default 2.5)')
    parser.add_argument('--seed', type=int, default=0, help='random seed (default 0)')
    parser.add_argument('--plot', metavar='FILE.png',
                        help='bar chart of sparsity per layer; the sensitivity curves go to '
                             'FILE-sensitivity.png beside it')
    parser.add_argument('--out', metavar='FILE.params',
                        help='save the pruned net with the masks baked into the weights')
    parser.add_argument('--quiet', action='store_true', help='no progress bars')


def check_args(args: argparse.Namespace) -> None:
    """Every option checked before the data is loaded or anything trains: a bad value, a
    plot without matplotlib or an output path that cannot be written fails now, not after
    the whole run."""
    for name, low in (('epochs', 1), ('prune_epochs', 1), ('channel_epochs', 1), ('seed', 0)):
        value = getattr(args, name)
        option = '--' + name.replace('_', '-')
        if not is_int(value):
            raise SurgeryTypeError('%s must be a whole number, got %r.' % (option, value))
        if value < low:
            raise SurgeryValueError('%s must be >= %d, got %d.' % (option, low, value))
    if not is_real(args.sparsity) or not 0 <= args.sparsity < 1:
        raise SurgeryValueError('--sparsity must be a number in [0, 1) (0.9 for 90%%), got %r.%s'
                                % (args.sparsity, ' Did you mean %r?' % (args.sparsity / 100)
                                   if is_real(args.sparsity) and 1 <= args.sparsity < 100
                                   else ''))
    if not is_real(args.macs_ratio) or not 1 < args.macs_ratio < float('inf'):
        raise SurgeryValueError('--macs-ratio must be a number > 1 (dense MACs / shrunk MACs), '
                                'got %r.' % (args.macs_ratio,))
    check_flag('--quiet', args.quiet)
    if args.plot is not None:
        check_path('--plot', args.plot, write=True)
        pyplot()  # MissingDependencyError now, not after training
    if args.out is not None:
        check_path('--out', args.out, write=True)


def _require_demo_extras():
    try:
        import sklearn.datasets  # noqa: F401  (bundled data: no download)
        import tqdm  # noqa: F401
    except ImportError as err:
        raise MissingDependencyError(
            "the demo needs scikit-learn and tqdm (%s): %s or "
            "run `make demo`." % (err, install_hint('demo'))) from None


def _data(seed):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    y = digits.target.astype(np.float32)
    x_fit, x_test, y_fit, y_test = train_test_split(x, y, test_size=0.2, random_state=seed,
                                                    stratify=y)
    return gluon.data.ArrayDataset(x_fit, y_fit), (x_test, y_test)


def build_net(seed):
    net = nn.HybridSequential(prefix='digits_')
    with net.name_scope():
        net.add(nn.Conv2D(16, 3, padding=1, in_channels=1, activation='relu'),
                nn.Conv2D(32, 3, padding=1, in_channels=16, activation='relu'),
                nn.MaxPool2D(2),
                nn.Conv2D(64, 3, padding=1, in_channels=32, activation='relu'),
                nn.MaxPool2D(2),
                nn.Flatten(),
                nn.Dense(128, in_units=64 * 2 * 2, activation='relu'),
                nn.Dense(10, in_units=128))
    mx.random.seed(seed)
    net.initialize(mx.init.Xavier(), ctx=CTXS)
    net.hybridize()
    return net


def accuracy(net, x, y):
    """Accuracy on ``(x, y)`` numpy arrays, the batch split across the contexts."""
    correct = 0
    for xp, yp in zip(gluon.utils.split_and_load(mx.nd.array(x), CTXS, even_split=False),
                      gluon.utils.split_and_load(mx.nd.array(y), CTXS, even_split=False)):
        correct += int((net(xp).argmax(axis=1) == yp).sum().asscalar())
    return correct / len(y)


def _epoch(net, trainer, loader, loss_fn, bar, pruner=None, step=0):
    """One epoch of the custom loop; returns the global step after it."""
    for data, label in loader:
        if pruner is not None:
            pruner.step(step)  # masks change before the forward that should see them
        xs = gluon.utils.split_and_load(data, CTXS, even_split=False)
        ys = gluon.utils.split_and_load(label, CTXS, even_split=False)
        with autograd.record():
            losses = [loss_fn(net(xp), yp) for xp, yp in zip(xs, ys)]
        autograd.backward(losses)
        safe_step(trainer, data.shape[0])
        step += 1
        bar.update(1)
    return step


INPUT = (1, 1, 8, 8)
# Channel counts kept in multiples of 8: MKLDNN runs odd counts (14, 22, 19 channels) more
# slowly than the dense net's 16, 32, 64, so without rounding a 2.5x smaller net measured
# half as fast, not faster.
ROUND_TO = 8


def _latency(net, x, repeat=15):
    """Median seconds of one predict-mode forward of ``x`` on the first context."""
    x = mx.nd.array(x, ctx=CTXS[0])
    net.hybridize(static_alloc=True, static_shape=True)
    times = []
    for i in range(repeat + 3):
        start = time.perf_counter()
        net(x).wait_to_read()
        if i >= 3:                                   # the first calls build the graph
            times.append(time.perf_counter() - start)
    return float(np.median(times))


def _bits(param):
    """The first copy of ``param`` as unsigned integers: equal bits, not equal values (NaN,
    -0.0)."""
    arr = _mx.to_host(param.data(param.list_ctx()[0]))
    return arr.view('u%d' % arr.dtype.itemsize)


def _ort_latency(session, x, repeat=15):
    """Median seconds of one ONNX Runtime run on ``x``, timed as :func:`_latency` times MXNet."""
    feeds = {session.get_inputs()[0].name: np.asarray(x, dtype=np.float32)}
    times = []
    for i in range(repeat + 3):
        start = time.perf_counter()
        session.run(None, feeds)
        if i >= 3:                                   # the first runs allocate and plan
            times.append(time.perf_counter() - start)
    return float(np.median(times))


def _file_size(net):
    # a scratch file in a private temporary folder, removed at once: only its size matters
    folder = tempfile.mkdtemp()
    try:
        tmp_path = os.path.join(folder, 'net.params')
        net.save_parameters(tmp_path)
        return os.path.getsize(tmp_path)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _load_dense(seed, dense_params):
    net = build_net(seed)
    for name, param in net.collect_params().items():
        param.set_data(dense_params[name])
    return net


def channel_act(args, dense_params, train, valid, test, tqdm, sensitivity_plot=None):
    """Act 2: sensitivity, plan, channel pruning, fine-tuning, shrink; returns the figures."""
    (x_valid, y_valid), (x_test, y_test) = valid, test
    net = _load_dense(args.seed, dense_params)
    dense = _load_dense(args.seed, dense_params)
    report = sensitivity(net, lambda n: accuracy(n, x_valid, y_valid), inputs=INPUT,
                         round_to=ROUND_TO, progress=not args.quiet)
    print(report)
    if sensitivity_plot:
        report.plot(sensitivity_plot)
        print('wrote %s' % sensitivity_plot)
    plan = report.plan(macs_ratio=args.macs_ratio)
    print('plan for MACs ratio >= %g: %s' % (args.macs_ratio, ', '.join(
        '%s %g' % (name, amount) for name, amount in plan.items())))
    prune_channels(net, plan, inputs=INPUT, round_to=ROUND_TO)
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    trainer = gluon.Trainer(net.collect_params(), 'adam', {'learning_rate': 1e-3})
    bar = _bar(tqdm, args, args.channel_epochs * len(train), 'channels: fine-tuning')
    for _ in range(args.channel_epochs):
        _epoch(net, trainer, train, loss_fn, bar)
        bar.set_postfix(valid_acc='%.3f' % accuracy(net, x_valid, y_valid))
    bar.close()
    masked_acc = accuracy(net, x_test, y_test)
    shrink(net, inputs=INPUT, trainer=trainer)
    remove_mask(net, masked(net), bake=True)     # what a deployment keeps
    shrunk_acc = accuracy(net, x_test, y_test)
    (dense_macs, dense_count), (macs, count) = count_ops(dense, INPUT), count_ops(net, INPUT)
    dense_time, shrunk_time = _latency(dense, x_test), _latency(net, x_test)
    dense_acc = accuracy(dense, x_test, y_test)
    rows = [('MACs per image', '%d' % dense_macs, '%d' % macs, dense_macs / macs),
            ('parameters', '%d' % dense_count, '%d' % count, dense_count / count),
            ('file size (bytes)', '%d' % _file_size(dense), '%d' % _file_size(net),
             _file_size(dense) / _file_size(net)),
            ('inference, %d images (ms)' % len(y_test), '%.2f' % (1e3 * dense_time),
             '%.2f' % (1e3 * shrunk_time), dense_time / shrunk_time),
            ('test accuracy', '%.4f' % dense_acc, '%.4f' % shrunk_acc, None)]
    print('channels: test accuracy %.4f masked, %.4f shrunk (the same function)'
          % (masked_acc, shrunk_acc))
    print('%-26s %12s %12s %8s' % ('', 'dense', 'shrunk', 'ratio'))
    for name, a, b, ratio in rows:
        print('%-26s %12s %12s %8s' % (name, a, b, '' if ratio is None else '%.2fx' % ratio))
    return {'shrunk_acc': shrunk_acc, 'macs_ratio': dense_macs / macs,
            'speedup': dense_time / shrunk_time, 'plan': plan, 'report': report,
            'net': net, 'latency': shrunk_time}


def deploy_act(sparse_net, shrunk_net, test, rebuild, shrunk_time=None) -> dict:
    """Act 3: ``shrunk_net`` exported to ONNX and run in ONNX Runtime on the test images,
    ``sparse_net`` (its masks baked into the weights first, as a deployment keeps them)
    saved compact and loaded back into ``rebuild()``, a fresh net of its architecture.
    Returns ``onnx_max_diff`` (NaN when onnx or onnxruntime is missing: the export is
    skipped with a message naming the install command), ``onnx_acc``, ``onnx_speedup``
    (MXNet time / ONNX Runtime time), ``compact_ratio`` (compact size / ``save_parameters``
    size) and ``compact_exact`` (every loaded value has the saved bits)."""
    x_test, y_test = test
    out = {'onnx_max_diff': float('nan'), 'onnx_acc': None, 'onnx_speedup': None}
    folder = tempfile.mkdtemp()   # private scratch files, removed at the end: only sizes
    try:
        path = os.path.join(folder, 'shrunk.onnx')
        try:
            done = export_onnx(shrunk_net, path, inputs=mx.nd.array(x_test))
        except MissingDependencyError:
            print('deploy: ONNX export skipped: onnx and onnxruntime are not installed (%s)'
                  % install_hint('onnx'))
        else:
            import onnxruntime
            options = onnxruntime.SessionOptions()
            options.log_severity_level = 3
            session = onnxruntime.InferenceSession(path, options,
                                                   providers=['CPUExecutionProvider'])
            (logits,) = session.run(None, {done.inputs[0]: x_test.astype(np.float32)})
            if shrunk_time is None:
                shrunk_time = _latency(shrunk_net, x_test)
            ort_time = _ort_latency(session, x_test)
            out.update(onnx_max_diff=done.max_diff,
                       onnx_acc=float((logits.argmax(axis=1) == y_test).mean()),
                       onnx_speedup=shrunk_time / ort_time)
            print('deploy: shrunk net exported to ONNX (opset %d, %d initializers) and run in '
                  'ONNX Runtime: max |difference| from MXNet %.3g (max |output| %.3g), test '
                  'accuracy %.4f' % (done.opset, done.initializers, done.max_diff, done.scale,
                                     out['onnx_acc']))
            print('deploy: inference, %d images: MXNet %.2f ms, ONNX Runtime %.2f ms (%.2fx)'
                  % (len(y_test), 1e3 * shrunk_time, 1e3 * ort_time, out['onnx_speedup']))
        if masked(sparse_net):
            remove_mask(sparse_net, masked(sparse_net), bake=True)
        compact_path, params_path = (os.path.join(folder, 'sparse.compact'),
                                     os.path.join(folder, 'sparse.params'))
        save_compact(sparse_net, compact_path)
        with atomic_write(params_path) as tmp:
            sparse_net.save_parameters(tmp)
        compact, params = os.path.getsize(compact_path), os.path.getsize(params_path)
        copy = rebuild()
        load_compact(copy, compact_path)
        out['compact_ratio'] = compact / params
        out['compact_exact'] = all(
            np.array_equal(_bits(a), _bits(b)) for a, b in
            zip(sparse_net.collect_params().values(), copy.collect_params().values()))
        print('deploy: the sparse net in %d bytes with save_compact, %d with save_parameters '
              '(%.3fx); loaded back into a fresh net %s'
              % (compact, params, out['compact_ratio'],
                 'bit for bit' if out['compact_exact'] else 'WITH OTHER VALUES'))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return out


def _bar(tqdm, args, total, desc):
    # disable=None: no bar unless stdout is a terminal, so a log or a pipe gets no carriage
    # returns (tqdm redraws its line with them)
    return tqdm(total=total, desc=desc, disable=True if args.quiet else None, file=sys.stdout,
                leave=False)


class _Silent:
    """A stand-in for a tqdm bar."""

    def update(self, n=1):
        pass


def _splits(seed):
    """The digits: a train loader (complementary_split), validation and test arrays, and the
    number of training samples."""
    fit, test = _data(seed)
    train_sampler, valid_sampler = complementary_split(len(fit), int(0.8 * len(fit)),
                                                       seed=seed)
    train = gluon.data.DataLoader(fit, batch_size=64, sampler=train_sampler, last_batch='keep')
    valid_idx = np.array(list(valid_sampler))
    return train, (fit[:][0][valid_idx], fit[:][1][valid_idx]), test, len(train_sampler)


def plan_vs_uniform(seed: int, uniform: float = 0.5, epochs: int = 20, fine_tune: int = 10
                    ) -> dict:
    """Channel pruning by a sensitivity plan against uniform amounts, at the same MACs ratio.

    The demo's CNN is trained on the digits (``epochs``, seed ``seed``); ``uniform`` of the
    channels of every prunable group gives a MACs ratio ``r``; :func:`sensitivity` on the
    validation split and ``plan(macs_ratio=r)`` give per-group amounts removing at least as
    much. Both arms start from the same dense weights, are fine-tuned the same way
    (``fine_tune`` epochs, same batches) and shrunk. Returns the test accuracies and the
    MACs ratios of both arms, and the plan.
    """
    _require_demo_extras()
    train, (x_valid, y_valid), (x_test, y_test), _ = _splits(seed)
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    net = build_net(seed)
    trainer = gluon.Trainer(net.collect_params(), 'adam', {'learning_rate': 2e-3})
    for _ in range(epochs):
        _epoch(net, trainer, train, loss_fn, _Silent())
    dense_params = {n: p.data(CTXS[0]).copy() for n, p in net.collect_params().items()}
    dense_macs = count_ops(net, INPUT)[0]
    report = sensitivity(net, lambda n: accuracy(n, x_valid, y_valid), inputs=INPUT,
                         progress=False)

    def arm(amount):
        pruned = _load_dense(seed, dense_params)
        prune_channels(pruned, amount, inputs=INPUT)
        mx.random.seed(seed + 1)
        tuner = gluon.Trainer(pruned.collect_params(), 'adam', {'learning_rate': 1e-3})
        for _ in range(fine_tune):
            _epoch(pruned, tuner, train, loss_fn, _Silent())
        shrink(pruned, inputs=INPUT)
        return accuracy(pruned, x_test, y_test), dense_macs / count_ops(pruned, INPUT)[0]

    uniform_acc, uniform_ratio = arm(uniform)
    plan = report.plan(macs_ratio=uniform_ratio)
    plan_acc, plan_ratio = arm(plan)
    return {'dense_acc': accuracy(_load_dense(seed, dense_params), x_test, y_test),
            'plan_acc': plan_acc, 'plan_ratio': plan_ratio, 'uniform_acc': uniform_acc,
            'uniform_ratio': uniform_ratio, 'plan': plan}


def run(args: Optional[argparse.Namespace] = None) -> dict:
    """Run the demo; prints the reports and the RESULT line, returns the figures."""
    if args is None:
        parser = argparse.ArgumentParser()
        add_arguments(parser)
        args = parser.parse_args([])
    check_args(args)
    _require_demo_extras()
    from tqdm import tqdm

    train, (x_valid, y_valid), (x_test, y_test), n_train = _splits(args.seed)
    print('digits: %d train, %d validation (complementary_split), %d test; contexts %s'
          % (n_train, len(y_valid), len(y_test), CTXS))

    net = build_net(args.seed)
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    trainer = gluon.Trainer(net.collect_params(), 'adam', {'learning_rate': 2e-3})
    bar = _bar(tqdm, args, args.epochs * len(train), 'dense training')
    best, best_params = -1.0, None
    for _ in range(args.epochs):
        _epoch(net, trainer, train, loss_fn, bar)
        acc = accuracy(net, x_valid, y_valid)
        bar.set_postfix(valid_acc='%.3f' % acc)
        if acc > best:  # early stopping on the validation split: keep the best epoch
            best = acc
            best_params = {n: p.data(CTXS[0]).copy() for n, p in net.collect_params().items()}
    bar.close()
    set_params(net, best_params, trainer=trainer)
    dense_acc = accuracy(net, x_test, y_test)
    print('dense: validation accuracy %.4f, test accuracy %.4f' % (best, dense_acc))
    print(sparsity_report(net, PRUNED))

    steps_per_epoch = len(train)
    total = args.prune_epochs * steps_per_epoch
    end = max(1, int(0.7 * total))
    schedule = PolynomialDecay(0.0, args.sparsity, begin=0, end=end,
                               frequency=max(1, steps_per_epoch // 2))
    pruner = Pruner(net, PRUNED, schedule, scope='global')
    trainer = gluon.Trainer(net.collect_params(), 'adam', {'learning_rate': 1e-3})
    bar = _bar(tqdm, args, total, 'pruning + fine-tuning')
    step = 0
    for _ in range(args.prune_epochs):
        step = _epoch(net, trainer, train, loss_fn, bar, pruner, step)
        bar.set_postfix(valid_acc='%.3f' % accuracy(net, x_valid, y_valid))
    bar.close()
    pruned_acc = accuracy(net, x_test, y_test)
    report = sparsity_report(net, PRUNED)
    print('pruned: test accuracy %.4f' % pruned_acc)
    print(report)
    sparsity = report.total['sparsity']
    if args.plot:
        report.plot(args.plot)
        print('wrote %s' % args.plot)
    if args.out:
        remove_mask(net, list(select(net, PRUNED)), bake=True)
        with atomic_write(args.out) as tmp:  # a kill leaves the old file, never half of one
            net.save_parameters(tmp)
        print('wrote %s (masks baked into the weights)' % args.out)
    plot = None
    if args.plot:
        stem, ext = os.path.splitext(args.plot)
        plot = stem + '-sensitivity' + (ext or '.png')
    act = channel_act(args, best_params, train, (x_valid, y_valid), (x_test, y_test), tqdm,
                      sensitivity_plot=plot)
    deploy = deploy_act(net, act['net'], (x_test, y_test), lambda: build_net(args.seed),
                        shrunk_time=act['latency'])
    print('RESULT dense_acc=%.4f pruned_acc=%.4f sparsity=%.4f shrunk_acc=%.4f '
          'macs_ratio=%.4f speedup=%.4f onnx_max_diff=%.3g compact_ratio=%.4f'
          % (dense_acc, pruned_acc, sparsity, act['shrunk_acc'], act['macs_ratio'],
             act['speedup'], deploy['onnx_max_diff'], deploy['compact_ratio']))
    return {'dense_acc': dense_acc, 'pruned_acc': pruned_acc, 'sparsity': sparsity,
            'shrunk_acc': act['shrunk_acc'], 'macs_ratio': act['macs_ratio'],
            'speedup': act['speedup'], 'onnx_max_diff': deploy['onnx_max_diff'],
            'compact_ratio': deploy['compact_ratio']}
