"""measure_latency: the runtimes run, the net is left exactly as it was, the statistics."""
import mxnet as mx
import numpy as np
import pytest
from mxnet.gluon import nn

import paramsurgery as ps
from paramsurgery import latency

CTXS = [[mx.cpu(0)], [mx.cpu(0), mx.cpu(1)]]


def _net(ctx, hybridize):
    net = nn.HybridSequential(prefix='net_')
    with net.name_scope():
        net.add(nn.Conv2D(8, 3, in_channels=3), nn.BatchNorm(in_channels=8),
                nn.Activation('relu'), nn.GlobalAvgPool2D(), nn.Dense(2, in_units=8))
    net.initialize(mx.init.Xavier(), ctx=ctx)
    if hybridize:
        net.hybridize()
    return net


def _state(net, x):
    params = {n: [a.asnumpy().copy() for a in p.list_data()]
              for n, p in net.collect_params().items()}
    with mx.autograd.predict_mode():
        out = net(x).asnumpy()
    return params, out


@pytest.mark.parametrize('runtime', latency.runtimes.RUNTIMES)
@pytest.mark.parametrize('ctx', CTXS, ids=['1ctx', '2ctx'])
@pytest.mark.parametrize('hybridize', [False, True], ids=['imperative', 'hybrid'])
def test_runtime_runs_and_leaves_the_net_as_it_was(runtime, ctx, hybridize):
    net = _net(ctx, hybridize)
    ps.apply_mask(net, {'net_conv0_weight': np.ones((8, 3, 3, 3))})
    x = mx.nd.array(np.random.RandomState(0).uniform(-1, 1, (2, 3, 8, 8)), ctx=ctx[0])
    before, out_before = _state(net, x)
    masks_before = {n: m.asnumpy() for n, m in ps.get_mask(net, ps.masked(net)).items()}
    lat = ps.measure_latency(net, inputs=x, runtime=runtime, repeats=3, warmup=1, threads=1)
    assert lat.runtime == runtime and lat.shapes == ((2, 3, 8, 8),)
    assert lat.threads == 1 and lat.repeats == 3
    assert 0 < lat.p10 <= lat.median <= lat.p90
    after, out_after = _state(net, x)
    assert before.keys() == after.keys()
    for name in before:   # bit for bit, every replica
        for a, b in zip(before[name], after[name]):
            assert np.array_equal(a, b), name
    # same arithmetic before and after, so equal bit for bit
    assert np.array_equal(out_before, out_after)
    masks_after = {n: m.asnumpy() for n, m in ps.get_mask(net, ps.masked(net)).items()}
    assert masks_before.keys() == masks_after.keys()
    assert all(np.array_equal(masks_before[n], masks_after[n]) for n in masks_before)


def test_statistics_come_from_the_samples(monkeypatch):
    samples = iter([0.5, 0.1, 0.3, 0.2, 0.4])
    monkeypatch.setattr(latency.timing, '_TIMER', lambda runtime, variant: next(samples))
    net = _net([mx.cpu(0)], False)
    lat = ps.measure_latency(net, inputs=(1, 3, 8, 8), repeats=5, threads=2)
    assert lat.median == pytest.approx(0.3, rel=1e-12)   # numpy percentile, exact inputs
    assert lat.p10 == pytest.approx(0.14, rel=1e-12)
    assert lat.p90 == pytest.approx(0.46, rel=1e-12)
    assert lat.threads == 2


def test_timer_sees_the_nets_parameters(monkeypatch):
    seen = []
    monkeypatch.setattr(latency.timing, '_TIMER',
                        lambda runtime, variant: seen.append(variant) or 1.0)
    net = _net([mx.cpu(0), mx.cpu(1)], True)
    ps.measure_latency(net, inputs=(1, 3, 8, 8), runtime='mkldnn', repeats=1)
    arrays = seen[0].arrays
    assert np.array_equal(arrays['net_conv0_weight'],
                          net.collect_params()['net_conv0_weight'].data(mx.cpu(0)).asnumpy())
    assert seen[0].shapes == ((1, 3, 8, 8),)


@pytest.mark.parametrize('ctx', CTXS, ids=['1ctx', '2ctx'])
@pytest.mark.parametrize('hybridize', [False, True], ids=['imperative', 'hybrid'])
def test_compare_latency_interleaves_the_nets(monkeypatch, ctx, hybridize):
    """The forwards alternate between the nets (so load changes hit both alike) and each
    net's statistics come from its own samples; the nets are left as they were."""
    order = []

    def timer(runtime, variant):
        order.append(variant.arrays['net_conv0_weight'].shape[0])
        return 1e-3 * order[-1]          # ms per output channel: each net's time is known
    monkeypatch.setattr(latency.timing, '_TIMER', timer)
    wide = _net(ctx, hybridize)
    narrow = nn.HybridSequential(prefix='net_')
    with narrow.name_scope():
        narrow.add(nn.Conv2D(4, 3, in_channels=3), nn.GlobalAvgPool2D(), nn.Dense(2, in_units=4))
    narrow.initialize(ctx=ctx)
    if hybridize:
        narrow.hybridize()
    x = mx.nd.ones((1, 3, 8, 8), ctx=ctx[0])
    before = [_state(n, x) for n in (wide, narrow)]
    lats = ps.compare_latency([wide, narrow], inputs=(1, 3, 8, 8), runtime='mkldnn',
                              repeats=3, threads=1)
    assert order == [8, 4] * 3
    assert [lat.median for lat in lats] == [8e-3, 4e-3]
    assert all(lat.runtime == 'mkldnn' and lat.repeats == 3 and lat.threads == 1
               for lat in lats)
    for net, (params, out) in zip((wide, narrow), before):
        after, out_after = _state(net, x)
        assert all(np.array_equal(a, b) for n in params for a, b in zip(params[n], after[n]))
        assert np.array_equal(out, out_after)
        assert ps._mx.is_hybridized(net) == hybridize


def test_missing_onnxruntime_is_a_typed_error(monkeypatch):
    import builtins
    real = builtins.__import__

    def no_ort(name, *args, **kwargs):
        if name == 'onnxruntime':
            raise ImportError('no onnxruntime')
        return real(name, *args, **kwargs)
    monkeypatch.setattr(builtins, '__import__', no_ort)
    with pytest.raises(ps.MissingDependencyError, match=r"\[onnx\]"):
        ps.measure_latency(_net([mx.cpu(0)], False), inputs=(1, 3, 8, 8),
                           runtime='onnxruntime')


@pytest.mark.parametrize('ctx', CTXS, ids=['1ctx', '2ctx'])
@pytest.mark.parametrize('hybridize', [False, True], ids=['imperative', 'hybrid'])
@pytest.mark.parametrize('mode', ['graph', 'update'])
def test_the_timed_copy_computes_what_the_net_computes(ctx, hybridize, mode):
    """A copy that lost the graph-mode masks (or read another replica) would time another
    net: half the filters masked must show in the copy's output."""
    net = _net(ctx, hybridize)
    mask = np.ones((8, 3, 3, 3))
    mask[::2] = 0
    ps.apply_mask(net, {'net_conv0_weight': mask}, mode=mode)
    x = mx.nd.array(np.random.RandomState(0).uniform(-1, 1, (2, 3, 8, 8)))
    was_hybrid = ps._mx.is_hybridized(net)
    variant = latency.runtimes.variant_of(net, [(2, 3, 8, 8)])
    copy = latency.runtimes._symbol_block(variant)
    with mx.autograd.predict_mode():
        want = net(x.as_in_context(ctx[0])).asnumpy()
        got = copy(x).asnumpy()
    # the same float32 operators on the same values: only the summation order of a cached
    # graph may differ, 27 products per output -> about 27 * 6e-8 relative
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=2e-6 * np.abs(want).max())
    assert ps._mx.is_hybridized(net) == was_hybrid == hybridize


def test_threads_are_set_for_the_timing_and_put_back(monkeypatch):
    calls = []

    def fake(threads):
        calls.append(threads)
        return 5             # what the engine ran with before: put back after timing
    monkeypatch.setattr(ps._mx, 'set_omp_threads', fake)
    monkeypatch.setenv('OMP_NUM_THREADS', '3')
    lat = ps.measure_latency(_net([mx.cpu(0)], False), inputs=(1, 3, 8, 8), repeats=1,
                             warmup=0, threads=1)
    assert lat.threads == 1
    assert calls == [1, 5]      # fixed while timing, then what it was
    lat = ps.measure_latency(_net([mx.cpu(0)], False), inputs=(1, 3, 8, 8), repeats=1,
                             warmup=0, runtime='onnxruntime')
    assert lat.threads == 3
    assert calls == [1, 5]      # ONNX Runtime's count is a session option, not MXNet's


def _recording_builders(monkeypatch, seen):
    """Every runtime's builder, wrapped to record what the runner runs with: the OpenMP
    count on MXNet's engine worker (read back there) while timing, and ONNX Runtime's
    session options."""
    builders = dict(latency.runtimes.BUILDERS)

    def wrap(runtime):
        def build(variant, folder, threads):
            run = builders[runtime](variant, folder, threads)

            def timed():
                run()
                if runtime == 'onnxruntime':
                    options = run.session.get_session_options()
                    seen.append((options.intra_op_num_threads, options.inter_op_num_threads))
                else:
                    seen.append(ps._mx.omp_threads())
            return timed
        return build
    for runtime in builders:
        monkeypatch.setitem(latency.runtimes.BUILDERS, runtime, wrap(runtime))


@pytest.mark.parametrize('runtime', latency.runtimes.RUNTIMES)
def test_timing_leaves_no_file_behind(monkeypatch, tmp_path, runtime):
    """A runner's files (the ONNX model) are gone once it is built, not only when the
    chunk of variants ends: a latency model builds thousands, and a killed run would
    leave them all on the disk."""
    monkeypatch.setattr('tempfile.tempdir', str(tmp_path))
    builders = dict(latency.runtimes.BUILDERS)
    left = []

    def build(variant, folder, threads):
        run = builders[runtime](variant, folder, threads)
        left.append(sorted(p.name for p in tmp_path.rglob('*') if p.is_file()))
        return run
    monkeypatch.setitem(latency.runtimes.BUILDERS, runtime, build)
    lat = ps.measure_latency(_net([mx.cpu(0)], False), inputs=(1, 3, 8, 8), repeats=1,
                             warmup=0, threads=1, runtime=runtime)
    assert lat.repeats == 1 and left == [[]]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize('runtime', ['mxnet', 'mkldnn'])
def test_threads_reach_the_operators_of_mxnet(monkeypatch, runtime):
    """MXSetNumOMPThreads alone sets the calling thread's count, which MXNet's operators
    never read (they run on the engine's worker thread): the count must be the worker's."""
    before = ps._mx.omp_threads()
    want = before + 1         # differs from the current count, whatever it is
    seen = []
    _recording_builders(monkeypatch, seen)
    lat = ps.measure_latency(_net([mx.cpu(0)], False), inputs=(1, 3, 8, 8), repeats=2,
                             warmup=1, threads=want, runtime=runtime)
    assert lat.threads == want
    assert seen == [want] * 3
    assert ps._mx.omp_threads() == before      # put back after timing


def test_threads_reach_onnxruntime(monkeypatch):
    seen = []
    _recording_builders(monkeypatch, seen)
    ps.measure_latency(_net([mx.cpu(0)], False), inputs=(1, 3, 8, 8), repeats=2, warmup=0,
                       threads=2, runtime='onnxruntime')
    assert seen == [(2, 1)] * 2


def test_set_omp_threads_reaches_new_operator_threads():
    """Counted, not timed: a convolution run with 2 OpenMP threads, in a process started
    with OMP_NUM_THREADS=1, makes the OpenMP runtime start a thread it had not needed."""
    import os
    import subprocess
    import sys
    code = (
        "import os, mxnet as mx\n"
        "from paramsurgery import _mx\n"
        "x = mx.nd.ones((1, 16, 32, 32)); w = mx.nd.ones((16, 16, 3, 3))\n"
        "def conv():\n"
        "    mx.nd.Convolution(x, w, kernel=(3, 3), num_filter=16, no_bias=True).wait_to_read()\n"
        # wait_to_read: no copy on this thread (asnumpy's could start OpenMP threads here)
        "count = lambda: len(os.listdir('/proc/self/task'))\n"
        "conv(); one = count()\n"
        "_mx.set_omp_threads(2); conv(); print(one, count())\n")
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=os.getcwd())
    out = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True,
                         text=True, check=True).stdout.split()
    one, two = map(int, out)
    assert two == one + 1


# --------------------------------------------------------------------------- latency_model

def _two_convs(ctx, hybridize, channels=16, prefix='n_'):
    net = nn.HybridSequential(prefix=prefix)
    with net.name_scope():
        net.add(nn.Conv2D(channels, 3, in_channels=3), nn.Activation('relu'),
                nn.Conv2D(4, 3, in_channels=channels))
    net.initialize(mx.init.Xavier(), ctx=ctx)
    if hybridize:
        net.hybridize()
    return net


def _elements(variant):
    """A fake clock: a microsecond per parameter entry, so every time is known exactly."""
    return 1e-6 * sum(a.size for a in variant.arrays.values())


def _conv_entries(c):
    """Entries of the two convolutions with c channels kept between them."""
    return (c * 3 * 9 + c) + (4 * c * 9 + 4)


@pytest.mark.parametrize('ctx', CTXS, ids=['1ctx', '2ctx'])
@pytest.mark.parametrize('hybridize', [False, True], ids=['imperative', 'hybrid'])
def test_model_tables_predict_and_fit(monkeypatch, ctx, hybridize):
    monkeypatch.setattr(latency.timing, '_TIMER', lambda runtime, variant: _elements(variant))
    net = _two_convs(ctx, hybridize)
    x = mx.nd.ones((1, 3, 8, 8))
    before, out_before = _state(net, x.as_in_context(ctx[0]))
    model = ps.latency_model(net, inputs=(1, 3, 8, 8), runtime='mkldnn',
                             counts={'n_conv0_weight': [4, 8, 12]})
    after, out_after = _state(net, x.as_in_context(ctx[0]))
    assert all(np.array_equal(a, b) for n in before for a, b in zip(before[n], after[n]))
    assert np.array_equal(out_before, out_after)
    assert ps._mx.is_hybridized(net) == hybridize
    assert model.runtime == 'mkldnn' and model.shapes == ((1, 3, 8, 8),)
    assert dict(model.sizes) == {'n_conv0_weight': 16}
    # both convolutions depend on the group; sums of exact multiples of 1e-6
    assert list(model.table['n_conv0_weight']) == [4, 8, 12, 16]
    for c, t in model.table['n_conv0_weight'].items():
        assert t == pytest.approx(1e-6 * _conv_entries(c), rel=1e-12)
    # the whole nets cost exactly the sum of their layers: the fit is exact
    assert model.measured == pytest.approx(1e-6 * _conv_entries(16), rel=1e-12)
    for c in (16, 12, 9, 4):      # 9 lies between measured counts: linear in c, exact
        assert model.predict({'n_conv0_weight': c}) == pytest.approx(
            1e-6 * _conv_entries(c), rel=1e-9)
    assert model.dense == pytest.approx(model.measured, rel=1e-9)
    assert model.fast_counts('n_conv0_weight') == [4, 8, 12, 16]


def test_fast_counts_are_faster_than_every_larger_count(monkeypatch):
    """conv0's weight (it alone reads 3 channels) costs 100x per entry when its output count
    is not a multiple of 8, alone and in the whole nets alike: the net costs 64c + 4 with c
    aligned, 2737c + 4 unaligned, so only 8 and 16 beat every larger count."""
    def timer(runtime, variant):
        return 1e-6 * sum(a.size * (100 if a.ndim == 4 and a.shape[1] == 3 and a.shape[0] % 8
                                    else 1) for a in variant.arrays.values())

    monkeypatch.setattr(latency.timing, '_TIMER', timer)
    net = _two_convs([mx.cpu(0)], False)
    model = ps.latency_model(net, inputs=(1, 3, 8, 8), counts={'n_conv0_weight': range(1, 17)})
    assert model.fast_counts('n_conv0_weight') == [8, 16]
    assert model.round('n_conv0_weight', 11) == 8
    assert model.round('n_conv0_weight', 12) == 16       # a tie goes to the larger count
    assert model.round('n_conv0_weight', 1) == 8
    # the whole nets include the fast counts nearest to what 50% and 75% keep (8 and 4)
    assert [c['kept'] for c in model.calibration[-2:]] == [{'n_conv0_weight': 8}] * 2


def test_model_save_load_and_damage(monkeypatch, tmp_path):
    import json
    monkeypatch.setattr(latency.timing, '_TIMER', lambda runtime, variant: _elements(variant))
    model = ps.latency_model(_two_convs([mx.cpu(0)], False), inputs=(1, 3, 8, 8))
    path = str(tmp_path / 'model.json')
    model.save(path)
    back = ps.LatencyModel.load(path)
    assert back.predict({'n_conv0_weight': 5}) == model.predict({'n_conv0_weight': 5})
    assert back.fast_counts('n_conv0_weight') == model.fast_counts('n_conv0_weight')
    assert str(back) == str(model)
    data = json.loads(open(path).read())
    for field, value in [('measured', 'fast'), ('fit', [1.0]), ('table', {'x': [[1, 0.1]]}),
                         ('runtime', 'gpu'), ('sizes', [['n_conv0_weight', 0]])]:
        broken = dict(data, **{field: value})
        bad = tmp_path / ('bad_%s.json' % field)
        bad.write_text(json.dumps(broken))
        with pytest.raises(ps.FileFormatError, match=field if field != 'table' else 'x'):
            ps.LatencyModel.load(str(bad))
    (tmp_path / 'cut.json').write_text(open(path).read()[:100])
    with pytest.raises(ps.FileFormatError, match='cut.json'):
        ps.LatencyModel.load(str(tmp_path / 'cut.json'))


def test_model_save_is_atomic(monkeypatch, tmp_path):
    import os
    monkeypatch.setattr(latency.timing, '_TIMER', lambda runtime, variant: _elements(variant))
    model = ps.latency_model(_two_convs([mx.cpu(0)], False), inputs=(1, 3, 8, 8))
    path = tmp_path / 'model.json'
    path.write_text('old')

    def broken(fd):
        raise OSError('disk full')
    monkeypatch.setattr(os, 'fsync', broken)
    with pytest.raises(OSError):
        model.save(str(path))
    assert path.read_text() == 'old' and os.listdir(str(tmp_path)) == ['model.json']


@pytest.mark.parametrize('runtime', latency.runtimes.RUNTIMES)
def test_model_runs_on_each_runtime(runtime, tmp_path):
    """The single layers and the shrunk whole nets build and run on the real runtime (no
    timing is asserted: only what the model is made of)."""
    net = nn.HybridSequential(prefix='n_')
    with net.name_scope():
        net.add(nn.Conv2D(16, 3, in_channels=3), nn.BatchNorm(), nn.Activation('relu'),
                nn.Conv2D(16, 3, groups=16, in_channels=16), nn.Conv2D(8, 1, in_channels=16),
                nn.GlobalAvgPool2D(), nn.Dense(3, in_units=8))
    net.initialize(mx.init.Xavier())
    model = ps.latency_model(net, inputs=(2, 3, 8, 8), runtime=runtime, repeats=1,
                             threads=1, counts={'n_conv0_weight': [5, 8],
                                                'n_conv2_weight': [3]})
    assert list(model.sizes) == ['n_conv0_weight', 'n_conv2_weight']
    assert list(model.table['n_conv0_weight']) == [5, 8, 16]
    assert len(model.calibration) == 1 + len(latency.build._CALIBRATION) + len(
        latency.build._FAST_CALIBRATION) and all(c['seconds'] > 0 for c in model.calibration)
    assert model.predict({'n_conv0_weight': 7, 'n_conv2_weight': 2}) > 0
    model.plot(str(tmp_path / 'model.png'))
    assert (tmp_path / 'model.png').stat().st_size > 0


def test_model_stops_timing_a_layer_once_its_samples_agree(monkeypatch):
    """Steady layers get _SETTLE_AFTER samples, a noisy one every repeat (the build time of a
    big net is mostly these repeats); the whole nets always get every repeat."""
    calls = {}
    noisy = iter(range(10 ** 6))

    def timer(runtime, variant):
        key = (variant.layer is None, variant.shapes, tuple(a.shape for a in
                                                          variant.arrays.values()))
        calls[key] = calls.get(key, 0) + 1
        if variant.layer is not None and variant.arrays['weight'].shape[0] == 12:
            return 1e-3 * (1 + next(noisy) % 2)       # alternates 1 ms, 2 ms: never settles
        return _elements(variant)
    monkeypatch.setattr(latency.timing, '_TIMER', timer)
    ps.latency_model(_two_convs([mx.cpu(0)], False), inputs=(1, 3, 8, 8), repeats=7,
                     counts={'n_conv0_weight': [4, 8, 12]})
    layers = {k: n for k, n in calls.items() if not k[0]}
    wholes = [n for k, n in calls.items() if k[0]]
    noisy_layers = [n for k, n in layers.items() if k[2][0] == (12, 3, 3, 3)]
    assert noisy_layers == [7]
    assert sorted(layers.values()) == [latency.timing._SETTLE_AFTER] * (len(layers) - 1) + [7]
    # the dense net in each of the two runs (uniform, then fast counts) and the calibration
    # nets (some of them can have the same shapes here)
    build = latency.build
    assert sum(wholes) == (2 + len(build._CALIBRATION) + len(build._FAST_CALIBRATION)) \
        * build._WHOLE_REPEATS


def test_default_counts_of_a_wide_group_step_by_16(monkeypatch):
    """Above 256 channels the default grid doubles its step (the build time of resnet50_v1
    is mostly its 1024- and 2048-channel groups): multiples of 16, the amounts' counts and
    the size, nothing else."""
    monkeypatch.setattr(latency.timing, '_TIMER', lambda runtime, variant: _elements(variant))
    net = nn.HybridSequential(prefix='w_')
    with net.name_scope():
        net.add(nn.Conv2D(300, 1, in_channels=3), nn.Conv2D(4, 1, in_channels=300))
    net.initialize()
    model = ps.latency_model(net, inputs=(1, 3, 2, 2))
    amounts = {300 - ps.prune_count(t / 10, 300) for t in range(1, 10)}
    assert set(model.table['w_conv0_weight']) == set(range(16, 301, 16)) | amounts | {300}
    assert [latency.layers._count_step(n) for n in (16, 256, 257, 512, 513, 2048)] == \
        [8, 8, 16, 16, 32, 64]


def _wide_convs(ctx, hybridize):
    """conv0 (48 channels, its group) feeding conv1: 50% keeps 24, a multiple of 8 but not
    of 16."""
    return _two_convs(ctx, hybridize, 48, 'w_')


def _sixteen_clock(runtime, variant):
    """Layers alone cost their entries; a whole net costs 3x its entries when conv0's
    count is not a multiple of 16 (what layers timed alone cannot see: a fused runtime's
    reorders between layers)."""
    seconds = _elements(variant)
    if variant.layer is None and variant.arrays['w_conv0_weight'].shape[0] % 16:
        seconds *= 3
    return seconds


@pytest.mark.parametrize('ctx', CTXS, ids=['1ctx', '2ctx'])
@pytest.mark.parametrize('hybridize', [False, True], ids=['imperative', 'hybrid'])
def test_alignment_comes_from_the_whole_nets(monkeypatch, ctx, hybridize):
    """The 50% nets at 'odd', 8, 16 and 32 are measured whole; the fastest (16) sets the
    alignment, and the fast counts are its multiples, although every multiple of 8 is
    faster than the larger ones layer by layer."""
    monkeypatch.setattr(latency.timing, '_TIMER', _sixteen_clock)
    net = _wide_convs(ctx, hybridize)
    before, _ = _state(net, mx.nd.ones((1, 3, 8, 8), ctx=ctx[0]))
    model = ps.latency_model(net, inputs=(1, 3, 8, 8), runtime='mkldnn')
    after, _ = _state(net, mx.nd.ones((1, 3, 8, 8), ctx=ctx[0]))
    assert all(np.array_equal(a, b) for n in before for a, b in zip(before[n], after[n]))
    assert model.align == 16
    assert model.fast_counts('w_conv0_weight') == [16, 32, 48]
    assert model.round('w_conv0_weight', 24) == 32     # a tie goes to the larger count
    # the fit learnt what unaligned counts cost: 24 channels predicted slower than 32
    assert model.predict({'w_conv0_weight': 24}) > model.predict({'w_conv0_weight': 32})
    back = ps.LatencyModel(dict(model._data))
    assert back.align == 16 and back.fast_counts('w_conv0_weight') == [16, 32, 48]


def test_alignment_needs_a_clear_margin(monkeypatch):
    """Whole nets that do not care (the layers' entries, nothing more): the finest
    alignment, 1, and every measured count can be fast."""
    monkeypatch.setattr(latency.timing, '_TIMER', lambda runtime, variant: _elements(variant))
    model = ps.latency_model(_wide_convs([mx.cpu(0)], False), inputs=(1, 3, 8, 8))
    assert model.align == 1
    assert model.fast_counts('w_conv0_weight') == sorted(model.table['w_conv0_weight'])


def test_a_file_without_alignment_reads_as_8(monkeypatch, tmp_path):
    import json
    monkeypatch.setattr(latency.timing, '_TIMER', _sixteen_clock)
    model = ps.latency_model(_wide_convs([mx.cpu(0)], False), inputs=(1, 3, 8, 8))
    path = tmp_path / 'model.json'
    model.save(str(path))
    data = json.loads(path.read_text())
    assert data['align'] == 16
    del data['align']
    path.write_text(json.dumps(data))
    assert ps.LatencyModel.load(str(path)).align == 8
    data['align'] = 0
    path.write_text(json.dumps(data))
    with pytest.raises(ps.FileFormatError, match='align'):
        ps.LatencyModel.load(str(path))


@pytest.mark.parametrize('ctx', CTXS, ids=['1ctx', '2ctx'])
@pytest.mark.parametrize('hybridize', [False, True], ids=['imperative', 'hybrid'])
def test_measure_adds_a_whole_net_and_fits_again(monkeypatch, tmp_path, ctx, hybridize):
    """A whole net at a count no calibration net has, 5x slower than its layers say: the
    measured ratio is returned, the net joins the calibration, the prediction moves to it;
    the user's net is never touched; a loaded model cannot measure."""
    state = {'slow': 20}

    def clock(runtime, variant):
        seconds = _elements(variant)
        if variant.layer is None and variant.arrays['w_conv0_weight'].shape[0] == state['slow']:
            seconds *= 5
        return seconds
    monkeypatch.setattr(latency.timing, '_TIMER', clock)
    net = _wide_convs(ctx, hybridize)
    x = mx.nd.ones((1, 3, 8, 8), ctx=ctx[0])
    before, out_before = _state(net, x)
    model = ps.latency_model(net, inputs=(1, 3, 8, 8))
    assert all(c['kept'].get('w_conv0_weight') != 20 for c in model.calibration)
    calibration = list(model.calibration)
    predicted = model.predict({'w_conv0_weight': 20})
    dense = 1e-6 * (48 * 27 + 48 + 4 * 48 * 9 + 4)
    slow = 5e-6 * (20 * 27 + 20 + 4 * 20 * 9 + 4)
    assert model.measure({'w_conv0_weight': 20}) == pytest.approx(dense / slow, rel=1e-12)
    assert model.calibration[:-1] == calibration
    assert model.calibration[-1]['kept'] == {'w_conv0_weight': 20}
    assert model.calibration[-1]['seconds'] == pytest.approx(slow, rel=1e-12)
    assert predicted < model.predict({'w_conv0_weight': 20})
    after, out_after = _state(net, x)
    assert all(np.array_equal(a, b) for n in before for a, b in zip(before[n], after[n]))
    assert np.array_equal(out_before, out_after) and ps._mx.is_hybridized(net) == hybridize
    # bad counts: typed errors, the calibration as it was
    for kept, error in [({'w_conv0_weight': 0}, ps.SurgeryValueError),
                        ({'nope': 3}, ps.SurgeryValueError),
                        ({'w_conv0_weight': 2.5}, ps.SurgeryTypeError),
                        ([20], ps.SurgeryTypeError)]:
        with pytest.raises(error):
            model.measure(kept)
    assert len(model.calibration) == len(calibration) + 1
    path = str(tmp_path / 'model.json')
    model.save(path)
    back = ps.LatencyModel.load(path)
    assert model.can_measure and not back.can_measure
    with pytest.raises(ps.SurgeryValueError, match='loaded from a file'):
        back.measure({'w_conv0_weight': 20})

