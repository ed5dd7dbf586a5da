"""save_compact / load_compact: bit-exact round trips (-0.0, NaN payloads, infinities, masks
and their modes) on one and two contexts, hybridised or not, into fresh and apply_plan-reshaped
nets; the sizes the issue asks for; damaged or unfitting files raise typed errors with nothing
changed; writes are atomic."""
import os

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd
from mxnet.gluon import nn

import paramsurgery as ps
from paramsurgery.masks import mask_mode

from channel_nets import USER_NETS, batch, build
from helpers import assert_same_bits, snapshot


def conv_net(ctxs, prefix, hybridize=False, initialise=True):
    net = nn.HybridSequential(prefix=prefix)
    with net.name_scope():
        net.add(nn.Conv2D(8, 3, in_channels=3), nn.BatchNorm(in_channels=8),
                nn.Activation('relu'), nn.Dense(5, in_units=8 * 6 * 6))
    if initialise:
        mx.random.seed(0)
        net.initialize(mx.init.Xavier(), ctx=ctxs)
    if hybridize:
        net.hybridize()
    return net


def odd_values(net):
    """Entries whose bits a careless format loses: -0.0, NaNs with payloads, infinities."""
    bias = net[0].bias.data().asnumpy()
    bias[0], bias[1], bias[2] = -0.0, np.inf, -np.inf
    bits = bias.view(np.uint32)
    bits[3], bits[4] = 0x7fc00001, 0xffa5a5a5  # quiet and signalling NaN, payloads
    ps.set_params(net, net[0].bias, bias, allow_nonfinite=True)


def by_structure(net):
    return {k: [d.asnumpy() for d in p.list_data()]
            for k, p in net._collect_params_with_prefix().items()}


def assert_same(net, fresh):
    a, b = by_structure(net), by_structure(fresh)
    assert a.keys() == b.keys()
    for key in a:
        for x, y in zip(a[key], b[key]):
            assert x.dtype == y.dtype and x.tobytes() == y.tobytes(), key


def test_round_trip_is_bit_exact_with_masks_and_modes(tmp_path, ctxs, hybridize):
    net = conv_net(ctxs, 'old_', hybridize)
    ps.prune_magnitude(net, net[0].weight, 0.7, mode='update')
    ps.prune_magnitude(net, net[3].weight, 0.9)  # graph mode: the weight stays dense
    odd_values(net)
    path = str(tmp_path / 'net.compact')
    saved = ps.save_compact(net, path)
    assert saved == sorted(k for k in net._collect_params_with_prefix() if
                           not k.endswith('_mask'))
    for initialise in (False, True):
        fresh = conv_net(ctxs, 'new_', hybridize, initialise=initialise)
        loaded = ps.load_compact(fresh, path)
        assert loaded == sorted(p.name for p in fresh.collect_params().values()
                                if not p.name.endswith('_mask'))
        assert_same(net, fresh)
        assert sorted(ps.masked(fresh)) == ['new_conv0_weight', 'new_dense0_weight']
        assert mask_mode(fresh, 'new_conv0_weight') == 'update'
        assert mask_mode(fresh, 'new_dense0_weight') == 'graph'
        x = batch()
        for ctx in ctxs if initialise else [mx.cpu()]:
            with autograd.predict_mode():
                want = net(x.as_in_context(ctxs[0])).asnumpy()
                got = fresh(x.as_in_context(ctx)).asnumpy()
            np.testing.assert_array_equal(want, got)  # same bits in, same kernels
        assert ps.check_params(fresh) == []


def test_masks_false_stores_weights_as_they_are(tmp_path):
    net = conv_net([mx.cpu(0)], 'old_')
    ps.prune_magnitude(net, net[3].weight, 0.9)
    path = str(tmp_path / 'net.compact')
    ps.save_compact(net, path, masks=False)
    fresh = conv_net([mx.cpu(0)], 'new_')
    ps.load_compact(fresh, path)
    assert ps.masked(fresh) == []
    np.testing.assert_array_equal(fresh[3].weight.data().asnumpy(),
                                  net[3].weight.data().asnumpy())  # dense: not baked


def test_a_mask_the_file_does_not_have_stays(tmp_path):
    net = conv_net([mx.cpu(0)], 'old_')
    path = str(tmp_path / 'net.compact')
    ps.save_compact(net, path)
    fresh = conv_net([mx.cpu(0)], 'new_')
    ps.apply_mask(fresh, fresh[3].weight, np.zeros(fresh[3].weight.shape))
    ps.load_compact(fresh, path)
    assert ps.masked(fresh) == ['new_dense0_weight']
    np.testing.assert_array_equal(fresh[3].weight.data().asnumpy(),
                                  net[3].weight.data().asnumpy())


def sizes(tmp_path, net, **kwargs):
    ps.save_compact(net, str(tmp_path / 'net.compact'), **kwargs)
    net.save_parameters(str(tmp_path / 'net.params'))
    return os.path.getsize(tmp_path / 'net.compact') / os.path.getsize(tmp_path / 'net.params')


def test_sizes(tmp_path):
    net = nn.Dense(512, in_units=1024, prefix='big_')
    net.initialize(mx.init.Xavier())
    assert sizes(tmp_path, net) <= 1.01  # dense: the raw bytes and a header
    ps.prune_magnitude(net, net.weight, 0.9)
    ps.remove_mask(net, net.weight)  # baked: the zeros keep the signs of the weights
    zeros = net.weight.data().asnumpy() == 0
    assert np.signbit(net.weight.data().asnumpy()[zeros]).mean() > 0.3
    # 1 bit of mask (compressed), 1 sign per zero, 32 bits per value minus what the sign and
    # exponent plane compresses: under the 0.14 the issue asks for
    assert sizes(tmp_path, net) <= 0.14
    fresh = nn.Dense(512, in_units=1024, prefix='other_')
    ps.load_compact(fresh, str(tmp_path / 'net.compact'))
    assert fresh.weight.data().asnumpy().tobytes() == net.weight.data().asnumpy().tobytes()
    # update mode: the mask (one byte per entry in save_parameters) costs nothing more
    net = nn.Dense(512, in_units=1024, prefix='upd_')
    net.initialize(mx.init.Xavier())
    ps.prune_magnitude(net, net.weight, 0.9, mode='update')
    assert sizes(tmp_path, net) <= 0.12
    # a mask of ones (nothing pruned yet) is one value
    ps.remove_mask(net, net.weight)
    ps.apply_mask(net, net.weight, np.ones(net.weight.shape), mode='update')
    assert sizes(tmp_path, net) <= 0.14


def test_large_noisy_planes_are_stored_raw_and_round_trip(tmp_path):
    # 262144 kept values: byte planes past the size where save_compact samples a plane and
    # stores the low mantissa planes (noise to zlib) without compressing them
    import json
    import struct

    from paramsurgery.compact import MAGIC
    net = nn.Dense(512, in_units=1024, prefix='half_')
    net.initialize()
    # trained weights' low mantissa bits are noise (MXNet's own uniform draws are not: their
    # lowest bits are often zero and do compress)
    ps.set_params(net, net.weight, np.random.RandomState(0).standard_normal((512, 1024)))
    ps.prune_magnitude(net, net.weight, 0.5)
    ps.remove_mask(net, net.weight)   # baked: signed zeros too
    path = str(tmp_path / 'net.compact')
    ratio = sizes(tmp_path, net)
    # 1 bit of mask and of zero sign per entry, 32 bits per kept value: 0.5 + 2/32, before
    # the sign and exponent plane compresses
    assert ratio <= 0.5 + 2 / 32
    with open(path, 'rb') as f:
        f.read(len(MAGIC))
        header = json.loads(f.read(struct.unpack('<Q', f.read(8))[0]))
    weight = [e for e in header['arrays'] if e['keys'] == ['weight']][0]
    assert weight['kind'] == 'sparse' and [p[0] for p in weight['planes']][0] == 'raw'
    assert weight['planes'][3][0] == 'z'   # the sign and exponent plane
    fresh = nn.Dense(512, in_units=1024, prefix='other_')
    ps.load_compact(fresh, path)
    assert fresh.weight.data().asnumpy().tobytes() == net.weight.data().asnumpy().tobytes()


def test_writeback_of_a_large_file_starts_while_it_is_written(tmp_path, monkeypatch):
    # the atomic write's fsync then waits for the last bytes only; every byte is started
    # once, in order, and the file is the same
    from paramsurgery import _blobs
    started = []
    monkeypatch.setattr(_blobs, '_SYNC_FILE_RANGE',
                        lambda fd, offset, length, flags: started.append((offset, length, flags)))
    net = nn.Dense(2048, in_units=1200, prefix='big_')   # 9.8 MB of dense weights
    net.initialize()
    path = str(tmp_path / 'net.compact')
    ps.save_compact(net, path)
    assert started and started[0][0] == 0 and all(flags == 2 for _, _, flags in started)
    assert all(a + n == b for (a, n, _), (b, _, _) in zip(started, started[1:]))
    assert _blobs.WRITEBACK <= sum(n for _, n, _ in started) <= os.path.getsize(path)
    fresh = nn.Dense(2048, in_units=1200, prefix='other_')
    ps.load_compact(fresh, path)
    assert fresh.weight.data().asnumpy().tobytes() == net.weight.data().asnumpy().tobytes()


def test_shrunk_net_loads_into_apply_plan_net(tmp_path, ctxs):
    net = build('concat', ctxs)
    ps.prune_channels(net, 0.5, inputs=batch(), mode='update')
    plan = ps.shrink(net, inputs=batch())
    path = str(tmp_path / 'net.compact')
    ps.save_compact(net, path)
    fresh = USER_NETS['concat'](prefix='other_')
    ps.apply_plan(fresh, plan)
    ps.load_compact(fresh, path)
    assert_same(net, fresh)
    assert sorted(ps.masked(fresh)) == sorted(n.replace('concat_', 'other_', 1)
                                              for n in ps.masked(net))


def damaged(data, how):
    if how == 'truncated':
        return data[:len(data) * 2 // 3]
    if how == 'header byte':
        i = data.index(b'"arrays"') + 3
    elif how == 'body byte':
        i = len(data) - 5
    elif how == 'length':
        i = len(b'paramsurgery-compact\n') + 1
    elif how == 'dense byte':   # in a blob stored raw: only the checksum can tell
        import json
        import struct
        start = len(b'paramsurgery-compact\n') + 8
        length = struct.unpack('<Q', data[start - 8:start])[0]
        header = json.loads(data[start:start + length])
        blob = [e for e in header['arrays'] if e['kind'] == 'dense'][0]['data']
        i = start + length + blob[1] + blob[2] // 2
    return data[:i] + bytes([data[i] ^ 0x5a]) + data[i + 1:]


@pytest.mark.parametrize('chunk', [8 << 20, 64], ids=['whole', 'chunked'])
@pytest.mark.parametrize('how', ['truncated', 'header byte', 'body byte', 'dense byte', 'length',
                                 'empty', 'params file', 'text'])
def test_damaged_files_raise_and_change_nothing(tmp_path, monkeypatch, how, chunk):
    # chunked: the file read 64 bytes at a time (the header across several reads too), each
    # array decoded as soon as its blobs are in, while the rest is read
    from paramsurgery import compact
    monkeypatch.setattr(compact, 'READ_CHUNK', chunk)
    net = conv_net([mx.cpu(0)], 'old_')
    ps.prune_magnitude(net, net[3].weight, 0.9, mode='update')
    path = tmp_path / 'net.compact'
    ps.save_compact(net, str(path))
    if how == 'empty':
        path.write_bytes(b'')
    elif how == 'params file':
        net.save_parameters(str(path))
    elif how == 'text':
        path.write_text('hello')
    else:
        path.write_bytes(damaged(path.read_bytes(), how))
    fresh = conv_net([mx.cpu(0)], 'new_')
    before = snapshot(fresh)
    with pytest.raises(ps.FileFormatError, match="net.compact.*ps.save_compact"):
        ps.load_compact(fresh, str(path))
    assert_same_bits(before, snapshot(fresh))
    assert ps.masked(fresh) == []


@pytest.mark.parametrize('chunk', [8 << 20, 100, 4096])
def test_a_file_read_in_chunks_loads_the_same(tmp_path, monkeypatch, ctxs, chunk):
    from paramsurgery import compact
    monkeypatch.setattr(compact, 'READ_CHUNK', chunk)
    net = conv_net(ctxs, 'old_')
    ps.prune_magnitude(net, net[0].weight, 0.5, mode='graph')
    ps.prune_magnitude(net, net[3].weight, 0.9, mode='update')
    path = str(tmp_path / 'net.compact')
    ps.save_compact(net, path)
    fresh = conv_net(ctxs, 'new_')
    ps.load_compact(fresh, path)
    assert_same(net, fresh)
    assert sorted(ps.masked(fresh)) == ['new_conv0_weight', 'new_dense0_weight']


@pytest.mark.parametrize('planes', [7, 'x', [['raw', 'a', 1, 0]], {'p': 1}])
def test_a_malformed_blob_reference_is_a_format_error(tmp_path, planes):
    import json
    import struct
    net = conv_net([mx.cpu(0)], 'old_')
    ps.prune_magnitude(net, net[3].weight, 0.9, mode='update')
    path = tmp_path / 'net.compact'
    ps.save_compact(net, str(path))
    data = path.read_bytes()
    start = len(b'paramsurgery-compact\n') + 8
    length = struct.unpack('<Q', data[start - 8:start])[0]
    header = json.loads(data[start:start + length])
    entry = [e for e in header['arrays'] if e['kind'] == 'sparse'][0]
    entry['planes'] = planes
    text = json.dumps(header).encode('utf-8')
    path.write_bytes(data[:start - 8] + struct.pack('<Q', len(text)) + text
                     + data[start + length:])
    fresh = conv_net([mx.cpu(0)], 'new_')
    before = snapshot(fresh)
    with pytest.raises(ps.FileFormatError, match='net.compact'):
        ps.load_compact(fresh, str(path))
    assert_same_bits(before, snapshot(fresh))


def test_a_large_file_reserves_its_header_and_a_small_one_does_not(tmp_path):
    # a large file's blobs are written while the next arrays are encoded, after room for the
    # longest header its arrays can have (every kind of entry, every blob reference); the
    # header written into it is padded with spaces, which JSON ignores
    import json
    import struct

    from paramsurgery import _blobs, compact
    rng = np.random.RandomState(0)
    big = rng.standard_normal(_blobs.WRITEBACK // 8 + 1)        # float64: 8 byte planes
    big[rng.uniform(size=big.size) < 0.9] = 0
    big[:100] = -0.0                                            # signs stored too
    arrays = [(['a'], big), (['b'], np.ones(7, np.float32)), (['c'], np.zeros(3, np.int8))]
    masks = [('a', (big != 0).astype(np.float64), 'update')]
    for name, items, padded in (('big', arrays, True), ('small', arrays[1:], False)):
        path = str(tmp_path / name)
        compact.write_compact(path, items, masks if padded else ())
        data = open(path, 'rb').read()
        start = len(compact.MAGIC) + 8
        length = struct.unpack('<Q', data[start - 8:start])[0]
        text = data[start:start + length].decode('utf-8')
        header = json.loads(text)
        assert (len(text.rstrip(' ')) < length) == padded
        fields = [({'keys': k}, a) for k, a in items]
        mask_fields = [({'key': k, 'mode': m}, a) for k, a, m in (masks if padded else ())]
        assert len(text.rstrip(' ')) <= compact._header_bound(fields, mask_fields)
        read, saved = compact.read_compact(path)
        for keys, arr in items:
            assert read[keys[0]].tobytes() == arr.tobytes()
        if padded:
            assert header['arrays'][0]['kind'] == 'sparse' and 'signs' in header['arrays'][0]
            assert saved[0][1].tobytes() == masks[0][1].tobytes()


def narrow_net():
    net = nn.HybridSequential(prefix='z_')
    with net.name_scope():
        net.add(nn.Conv2D(4, 3, in_channels=3), nn.BatchNorm(in_channels=4),
                nn.Activation('relu'), nn.Dense(5, in_units=4 * 6 * 6))
    net.initialize()
    return net


def half_precision_net():
    net = conv_net([mx.cpu(0)], 'x_')
    net.cast('float16')
    return net


def dense_only():
    net = nn.Dense(5, in_units=4)
    net.initialize()
    return net


@pytest.mark.parametrize('other, match', [
    (dense_only, 'missing in file'),
    (lambda: conv_net([mx.cpu(0)], 'x_')[:3], 'does not have'),
    (narrow_net, 'has shape'),
    (half_precision_net, 'dtype'),
])
def test_files_that_do_not_fit_raise_and_change_nothing(tmp_path, other, match):
    net = conv_net([mx.cpu(0)], 'old_')
    ps.prune_magnitude(net, net[3].weight, 0.5)
    path = str(tmp_path / 'net.compact')
    ps.save_compact(net, path)
    fresh = other()
    before = snapshot(fresh)
    with pytest.raises(ps.SurgeryValueError, match=match):
        ps.load_compact(fresh, path)
    assert_same_bits(before, snapshot(fresh))
    assert ps.masked(fresh) == []


@pytest.mark.parametrize('point', ['fsync', 'replace'])
def test_a_failed_write_leaves_the_old_file(tmp_path, monkeypatch, point):
    net = conv_net([mx.cpu(0)], 'old_')
    path = tmp_path / 'net.compact'
    path.write_bytes(b'old file')

    def fail(*args):
        raise KeyboardInterrupt
    monkeypatch.setattr(os, point, fail)
    with pytest.raises(KeyboardInterrupt):
        ps.save_compact(net, str(path))
    monkeypatch.undo()
    assert path.read_bytes() == b'old file' and os.listdir(tmp_path) == ['net.compact']


def test_bad_arguments(tmp_path):
    net = conv_net([mx.cpu(0)], 'old_')
    with pytest.raises(ps.SurgeryTypeError, match='masks'):
        ps.save_compact(net, str(tmp_path / 'a'), masks='yes')
    with pytest.raises(ps.SurgeryTypeError, match='gluon.Block'):
        ps.save_compact('net', str(tmp_path / 'a'))
    with pytest.raises(ps.SurgeryTypeError, match='gluon.Block'):
        ps.load_compact(None, str(tmp_path / 'a'))
    with pytest.raises(ps.SurgeryTypeError, match='file descriptor'):
        ps.save_compact(net, 3)
    with pytest.raises(ps.SurgeryValueError, match='is a folder'):
        ps.save_compact(net, str(tmp_path))
    with pytest.raises(ps.SurgeryValueError, match='no such file'):
        ps.load_compact(net, str(tmp_path / 'missing'))
    assert os.listdir(tmp_path) == []


def test_parameters_not_initialised_cannot_be_saved(tmp_path):
    net = conv_net([mx.cpu(0)], 'old_', initialise=False)
    with pytest.raises(ps.ParameterStateError):
        ps.save_compact(net, str(tmp_path / 'net.compact'))
    assert os.listdir(tmp_path) == []


def _resnet50_right_after_a_forward(seed):
    """A resnet50_v1 whose first predict-mode forward is still queued when this returns."""
    from mxnet.gluon.model_zoo import vision
    mx.random.seed(seed)
    net = vision.resnet50_v1(pretrained=False)
    net.initialize(mx.init.Xavier())
    net(mx.nd.zeros((1, 3, 224, 224)))   # asynchronous: the convolutions run after this
    return net


@pytest.mark.zoo
def test_saved_right_after_a_forward_holds_the_net_values(tmp_path):
    # A queued predict-mode Convolution reorders its weight in place (oneDNN layout) while a
    # careless reader copies it: before the fix, about half of such files held a few wrong
    # weights with two OpenMP threads, 1 in 6 with OMP_NUM_THREADS=1, so this end-to-end check
    # misses the bug in many runs; test_reads_wait_for_queued_forwards checks the ordering
    # itself, deterministically.
    from paramsurgery.compact import read_compact
    for seed in range(3):
        net = _resnet50_right_after_a_forward(seed)
        path = str(tmp_path / ('%d.compact' % seed))
        ps.save_compact(net, path)
        mx.nd.waitall()
        arrays, _ = read_compact(path)
        wrong = [k for k, v in by_structure(net).items() if not np.array_equal(v[0], arrays[k])]
        assert wrong == []


def test_reads_wait_for_queued_forwards(tmp_path, monkeypatch):
    from paramsurgery import compact
    events = []
    real_wait, real_read = mx.nd.waitall, compact._mx.host_arrays
    monkeypatch.setattr(mx.nd, 'waitall', lambda: events.append('wait') or real_wait())

    def reading(arrs):
        for out in real_read(arrs):
            events.append('read')
            yield out
    monkeypatch.setattr(compact._mx, 'host_arrays', reading)
    net = conv_net([mx.cpu(0), mx.cpu(1)], 'w_')
    net(mx.nd.ones((1, 3, 8, 8)))
    ps.save_compact(net, str(tmp_path / 'net.compact'))
    assert events[0] == 'wait' and 'read' in events
    events.clear()
    real_load = compact._mx.load_init
    monkeypatch.setattr(compact._mx, 'load_init',
                        lambda p, a: events.append('write') or real_load(p, a))
    fresh = conv_net([mx.cpu(0), mx.cpu(1)], 'f_')
    fresh(mx.nd.ones((1, 3, 8, 8)))
    ps.load_compact(fresh, str(tmp_path / 'net.compact'))
    assert events[0] == 'wait' and 'write' in events
    assert_same(net, fresh)


def fixture_net(prefix, ctxs=(mx.cpu(0),)):
    """The net whose values tests/data/compact_v*.compact hold, built from numpy draws (not
    MXNet's initialisers, whose draws may change between builds): a 70% sparse baked weight
    (its zeros keep their signs) under an update-mode mask, a bias of -0.0, infinities and
    NaN payloads, and a graph-mode mask over a dense weight."""
    rng = np.random.RandomState(0)
    net = nn.HybridSequential(prefix=prefix)
    with net.name_scope():
        net.add(nn.Dense(16, in_units=64), nn.Dense(8, in_units=16))
    net.initialize(ctx=list(ctxs))
    weight = rng.standard_normal((16, 64)).astype(np.float32)
    keep = np.abs(weight) >= np.quantile(np.abs(weight), 0.7)
    ps.set_params(net, net[0].weight, np.where(keep, weight, np.copysign(0, weight)))
    bias = rng.standard_normal(16).astype(np.float32)
    bias[0], bias[1], bias[2] = -0.0, np.inf, -np.inf
    bias.view(np.uint32)[3:5] = 0x7fc00001, 0xffa5a5a5
    ps.set_params(net, net[0].bias, bias, allow_nonfinite=True)
    ps.set_params(net, net[1].weight, rng.standard_normal((8, 16)))
    ps.apply_mask(net, net[0].weight, keep, mode='update')
    ps.apply_mask(net, net[1].weight, rng.uniform(size=(8, 16)) > 0.5, mode='graph')
    return net


def write_fixture(version):
    """Run once, with the writer of format ``version``, to write its fixture."""
    path = os.path.join(os.path.dirname(__file__), 'data', 'compact_v%d.compact' % version)
    ps.save_compact(fixture_net('fixture_'), path)


def header_of(path):
    import json
    import struct

    from paramsurgery.compact import MAGIC
    with open(path, 'rb') as f:
        assert f.read(len(MAGIC)) == MAGIC
        return json.loads(f.read(struct.unpack('<Q', f.read(8))[0]))


@pytest.mark.parametrize('version', [1, 2, 3])
def test_files_of_every_format_version_load_bit_exact(tmp_path, ctxs, hybridize, version):
    path = os.path.join(os.path.dirname(__file__), 'data', 'compact_v%d.compact' % version)
    header = header_of(path)
    assert header['version'] == version
    weight = [e for e in header['arrays'] if e['keys'] == ['0.weight']][0]
    assert weight['kind'] == 'sparse' and {1: 'zero_signs', 2: 'signs', 3: 'signs'}[version] in weight
    want = fixture_net('want_')
    fresh = fixture_net('fresh_', ctxs)
    ps.remove_mask(fresh, ps.masked(fresh))
    ps.set_params(fresh, '.*', 0.5)
    if hybridize:
        fresh.hybridize()
    assert ps.load_compact(fresh, path) == sorted(p.name for p in fresh.collect_params()
                                                  .values() if not p.name.endswith('_mask'))
    assert_same(want, fresh)
    assert [mask_mode(fresh, fresh[i].weight.name) for i in (0, 1)] == ['update', 'graph']
    x = mx.nd.array(np.random.RandomState(1).standard_normal((2, 64)), ctx=ctxs[0])
    assert np.array_equal(want(x).asnumpy(), fresh(x).asnumpy(), equal_nan=True)


def test_checksum_finds_every_changed_byte_and_moved_blocks():
    from paramsurgery._blobs import checksum
    rng = np.random.RandomState(0)
    data = bytearray(rng.bytes(3 * 4096 + 13))   # three 4 KiB blocks and a ragged tail
    want = checksum(data)
    assert want == checksum(bytes(data)) == checksum(np.frombuffer(data, np.uint8))
    for i in range(len(data)):
        for flip in (0x01, 0x80, 1 + rng.randint(255)):  # the lowest bit, the sign bit
            data[i] ^= flip
            assert checksum(data) != want, (i, flip)
            data[i] ^= flip
    swapped = data[4096:8192] + data[:4096] + data[8192:]
    moved = data[:4096] + data[8192:12288] + data[4096:8192] + data[12288:]
    assert checksum(swapped) != want and checksum(moved) != want
    assert checksum(b'') == 0


def test_checksum_finds_words_swapped_within_a_block():
    from paramsurgery._blobs import checksum
    rng = np.random.RandomState(0)
    words = rng.randint(0, 2 ** 63, size=2 * 512 + 7, dtype=np.uint64) * 2 + 1
    want = checksum(words.tobytes())
    # the definition, on Python integers: word i of block b weighted by (2i + 1)(1 + 1024 b)
    assert want == sum(int(w) * (2 * (k % 512) + 1) * (1 + 1024 * (k // 512))
                       for k, w in enumerate(words)) % 2 ** 64
    # neighbours, a block's two ends, far apart, and inside the ragged last block
    for i, j in [(0, 1), (0, 511), (100, 355), (512, 513), (600, 1023), (1024, 1030)]:
        swapped = words.copy()
        swapped[[i, j]] = swapped[[j, i]]
        assert checksum(swapped.tobytes()) != want, (i, j)
    # two float32 values swapped inside one word too
    pairs = words.view(np.uint32).copy()
    pairs[[0, 1]] = pairs[[1, 0]]
    assert checksum(pairs.tobytes()) != want


def test_format_2_checksum_is_kept_for_its_files():
    from paramsurgery._blobs import CHECKS
    data = np.random.RandomState(0).bytes(2 * 4096 + 13)
    words = np.frombuffer(data + bytes(3), dtype='<u8')
    assert CHECKS[2](data) == sum(int(w) * (2 * (k // 512) + 1)
                                   for k, w in enumerate(words)) % 2 ** 64


def test_a_forked_process_starts_its_own_threads(tmp_path, monkeypatch):
    # a forked child inherits the pool object but not its threads: work queued on it would
    # never run, so the child must get a pool of its own
    from paramsurgery import _blobs
    parent = _blobs.pool()
    assert _blobs.pool() is parent   # started once per process
    pid = os.getpid()
    monkeypatch.setattr(os, 'getpid', lambda: pid + 1)
    child = _blobs.pool()
    assert child is not parent
    net = conv_net([mx.cpu(0)], 'old_')
    ps.save_compact(net, str(tmp_path / 'net.compact'))
    fresh = conv_net([mx.cpu(0)], 'new_')
    ps.load_compact(fresh, str(tmp_path / 'net.compact'))
    assert_same(net, fresh)
    assert _blobs.pool() is child
    monkeypatch.undo()
    assert _blobs.pool() is not child


@pytest.mark.parametrize('update_on_kvstore', [False, True])
def test_a_trainer_keeps_what_load_compact_wrote(tmp_path, ctxs, hybridize, update_on_kvstore):
    """Loaded into a net whose Trainer has stepped: a step with zero gradients (plain SGD)
    leaves the loaded values. A Trainer updating on its kvstore holds its own copy of the
    weights, which would overwrite them on the next step unless it is reset (as
    load_parameters does it, through set_data)."""
    if update_on_kvstore and len(ctxs) == 1:
        pytest.skip('one context: MXNet makes no kvstore to update on')
    source = conv_net(ctxs, 'old_')
    source[0].weight.set_data(source[0].weight.data() * 3 + 1)   # unlike the fresh net's
    path = str(tmp_path / 'net.compact')
    ps.save_compact(source, path)
    net = conv_net(ctxs, 'new_', hybridize)
    trainer = mx.gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': 0.5},
                               kvstore='device', update_on_kvstore=update_on_kvstore)
    x = mx.nd.array(np.random.RandomState(0).uniform(size=(2, 3, 8, 8)))
    with autograd.record():
        losses = [net(x.as_in_context(ctx)).sum() for ctx in ctxs]
    autograd.backward(losses)
    trainer.step(2)
    ps.load_compact(net, path)
    with autograd.record(train_mode=False):   # zero gradients; running statistics kept
        losses = [net(x.as_in_context(ctx)).sum() * 0 for ctx in ctxs]
    autograd.backward(losses)
    trainer.step(2)
    assert_same(source, net)
