"""export_onnx: dense, graph-masked (net untouched), update-masked and shrunk nets on one and
two contexts, hybridised and not, run in real ONNX Runtime; parameters as initializers only;
an operator the exporter cannot convert and an output that differs raise ExportError with
nothing written; bad arguments and missing dependencies."""
import importlib

import mxnet as mx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from mxnet import autograd, gluon
from mxnet.gluon import nn
from onnx import numpy_helper

import paramsurgery as ps
from paramsurgery import onnx_export

from channel_nets import batch, build
from helpers import assert_same_bits, snapshot, split

# ONNX Runtime and MXNet both compute in float32 with their own kernels (ORT fuses BatchNorm
# into the convolution weights and sums in another order): a few float32 roundings per layer
# on outputs of order 1, far below 1e-4 relative; a wrong weight or operator is off by O(1).
RTOL = 1e-4


def conv_net(ctxs, hybridize, prefix='cnn_'):
    net = nn.HybridSequential(prefix=prefix)
    with net.name_scope():
        net.add(nn.Conv2D(6, 3, in_channels=3), nn.BatchNorm(in_channels=6),
                nn.Activation('relu'), nn.MaxPool2D(2), nn.Dense(4, in_units=6 * 3 * 3))
    mx.random.seed(0)
    net.initialize(mx.init.Xavier(magnitude=2.5), ctx=ctxs)
    x = batch(n=4)
    with autograd.record():  # running statistics that are not the initial 0 and 1
        for part in split(x, ctxs):
            net(part)
    if hybridize:
        net.hybridize()
    return net, x


def run_onnx(path, x):
    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    return session.run(None, {session.get_inputs()[0].name: x.asnumpy()})[0]


def predict(net, x, ctx):
    with autograd.predict_mode():
        return net(x.as_in_context(ctx)).asnumpy()


def assert_close(ref, got):
    assert ref.shape == got.shape
    assert np.abs(ref - got).max() <= RTOL * np.abs(ref).max(), np.abs(ref - got).max()


def initializers(path):
    model = onnx.load(path)
    return model, {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def assert_exported(net, x, ctxs, path):
    """Export, then check the file independently of export_onnx's own check: only the data
    is a graph input, every parameter an initializer, ORT computes what the net computes on
    each context, and the net did not change."""
    before = snapshot(net)
    hybridized = net._active
    done = ps.export_onnx(net, path, inputs=x)
    assert_same_bits(before, snapshot(net))
    assert net._active == hybridized
    model, inits = initializers(path)
    assert [i.name for i in model.graph.input] == ['data']
    assert done.initializers == len(inits) and done.inputs == ('data',)
    got = run_onnx(path, x)
    for ctx in ctxs:
        assert_close(predict(net, x, ctx), got)
    assert 0 <= done.max_diff <= RTOL * done.scale
    return done, model, inits


def test_dense_parameters_are_initializers_not_inputs(tmp_path, ctxs, hybridize):
    net, x = conv_net(ctxs, hybridize)
    done, model, inits = assert_exported(net, x, ctxs, str(tmp_path / 'net.onnx'))
    params = net.collect_params()
    assert set(inits) == set(params)
    for name, param in params.items():  # the net's own values, bit for bit
        assert inits[name].tobytes() == param.data(ctxs[0]).asnumpy().tobytes(), name
    assert done.baked_masks == () and done.opset == onnx.defs.onnx_opset_version()
    assert model.opset_import[0].version == done.opset


def test_mxnet_exporter_alone_lists_parameters_as_inputs(tmp_path):
    """What export_onnx fixes: MXNet's export_model makes every parameter a graph input too,
    which ONNX Runtime will not fold."""
    net, x = conv_net([mx.cpu(0)], True)
    symbol = net(mx.sym.var('data'))
    params = {name: p.data() for name, p in net.collect_params().items()}
    path = str(tmp_path / 'plain.onnx')
    mx.onnx.export_model(symbol, params, [x.shape], np.float32, path)
    assert len(onnx.load(path).graph.input) == 1 + len(params)


def test_graph_masks_are_baked_and_the_net_is_untouched(tmp_path, ctxs, hybridize):
    net, x = conv_net(ctxs, hybridize)
    ps.prune_magnitude(net, ['cnn_conv0_weight', 'cnn_dense0_weight'], 0.6)
    weights = {n: net.collect_params()[n].data(ctxs[0]).asnumpy()
               for n in ('cnn_conv0_weight', 'cnn_dense0_weight')}
    masks = {n: v.asnumpy() for n, v in ps.get_mask(net, list(weights)).items()}
    done, model, inits = assert_exported(net, x, ctxs, str(tmp_path / 'net.onnx'))
    assert done.baked_masks == tuple(sorted(weights))
    assert not [n for n in inits if n.endswith('_mask')]
    assert 'Mul' not in [node.op_type for node in model.graph.node]
    for name, weight in weights.items():
        assert inits[name].tobytes() == (weight * masks[name]).tobytes()
    assert sorted(ps.masked(net)) == sorted(weights)  # still masked, weights still dense
    assert (net.collect_params()['cnn_conv0_weight'].data(ctxs[0]) == 0).sum() == 0


def test_update_masks_export_the_stored_weights(tmp_path, ctxs, hybridize):
    net, x = conv_net(ctxs, hybridize)
    ps.prune_magnitude(net, 'cnn_conv0_weight', 0.6, mode='update')
    done, model, inits = assert_exported(net, x, ctxs, str(tmp_path / 'net.onnx'))
    assert done.baked_masks == () and 'cnn_conv0_weight_mask' not in inits
    stored = net.collect_params()['cnn_conv0_weight'].data(ctxs[0]).asnumpy()
    assert inits['cnn_conv0_weight'].tobytes() == stored.tobytes()
    assert (stored == 0).sum() == round(0.6 * stored.size)


@pytest.mark.parametrize('kind', ['chain', 'residual', 'concat'])
def test_shrunk_nets(tmp_path, kind, ctxs, hybridize):
    net = build(kind, ctxs)
    if hybridize:
        net.hybridize()
    x = batch()
    before = sum(p.data(ctxs[0]).size for p in net.collect_params().values())
    ps.prune_channels(net, 0.5, inputs=x)
    ps.shrink(net, inputs=x)
    # something was removed: the exported shapes are the shrunk ones
    assert sum(p.data(ctxs[0]).size for p in net.collect_params().values()) < 0.7 * before
    done, _, inits = assert_exported(net, x, ctxs, str(tmp_path / 'net.onnx'))
    for name, param in net.collect_params().items():
        if name in inits:
            assert inits[name].shape == param.shape


class TwoHeads(gluon.HybridBlock):
    """Two inputs, two outputs: outputs are matched by name, not by position."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.a = nn.Dense(3, in_units=4)
            self.b = nn.Dense(2, in_units=5)

    def hybrid_forward(self, F, x, y):
        return self.b(y), F.relu(self.a(x))


def test_two_inputs_two_outputs(tmp_path, ctxs):
    net = TwoHeads(prefix='two_')
    net.initialize(mx.init.Xavier(), ctx=ctxs)
    x, y = mx.nd.ones((2, 4)), mx.nd.array(np.arange(10).reshape(2, 5) / 10)
    path = str(tmp_path / 'two.onnx')
    done = ps.export_onnx(net, path, inputs=[x, y])
    assert done.inputs == ('data0', 'data1') and len(done.outputs) == 2
    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    got = dict(zip([o.name for o in session.get_outputs()],
                   session.run(None, {'data0': x.asnumpy(), 'data1': y.asnumpy()})))
    want = net(x.as_in_context(ctxs[0]), y.as_in_context(ctxs[0]))
    assert_close(want[0].asnumpy(), got['two_dense1_fwd'])
    assert_close(want[1].asnumpy(), got['two_relu0'])


class Softsign(gluon.HybridBlock):
    def hybrid_forward(self, F, x):
        return F.softsign(x)


def test_unconvertible_operator_names_it_and_writes_nothing(tmp_path, hybridize):
    net = nn.HybridSequential(prefix='odd_')
    with net.name_scope():
        net.add(nn.Dense(3, in_units=4), Softsign(prefix='squash_'))
    net.initialize()
    if hybridize:
        net.hybridize()
    path = tmp_path / 'odd.onnx'
    path.write_bytes(b'old')
    with pytest.raises(ps.ExportError, match=r"operator 'softsign' .*layer 'odd_squash'.*"
                                             r"opset.*docs/deploy.md"):
        ps.export_onnx(net, str(path), inputs=(2, 4))
    assert path.read_bytes() == b'old' and sorted(p.name for p in tmp_path.iterdir()) == [
        'odd.onnx']


def test_differing_output_names_it_and_writes_nothing(tmp_path, monkeypatch):
    net, x = conv_net([mx.cpu(0)], True)
    real = onnx_export._run_onnx

    def off_by_a_bit(*args):
        got = real(*args)
        return {name: value * (1 + 1e-3) for name, value in got.items()}
    monkeypatch.setattr(onnx_export, '_run_onnx', off_by_a_bit)
    path = tmp_path / 'net.onnx'
    with pytest.raises(ps.ExportError, match="output 'cnn_dense0_fwd'.*Nothing was written"):
        ps.export_onnx(net, str(path), inputs=x)
    assert list(tmp_path.iterdir()) == []
    # check=False skips ONNX Runtime: the same export is written
    done = ps.export_onnx(net, str(path), inputs=x, check=False)
    assert done.max_diff is None and path.exists()
    assert_close(predict(net, x, mx.cpu(0)), run_onnx(str(path), x))


@pytest.mark.parametrize('kwargs, error, match', [
    (dict(inputs='1,3,8,8'), ps.SurgeryTypeError, 'inputs must be'),
    (dict(inputs=(0, 3, 8, 8)), ps.SurgeryValueError, 'every dimension'),
    (dict(inputs=(1, 3, 8, 8), opset=11), ps.SurgeryValueError, 'opset must be between 12'),
    (dict(inputs=(1, 3, 8, 8), opset=99), ps.SurgeryValueError, 'opset must be between'),
    (dict(inputs=(1, 3, 8, 8), opset=True), ps.SurgeryTypeError, 'opset must be an int'),
    (dict(inputs=(1, 3, 8, 8), opset=13.0), ps.SurgeryTypeError, 'opset must be an int'),
    (dict(inputs=(1, 3, 8, 8), check='yes'), ps.SurgeryTypeError, 'check'),
])
def test_bad_arguments_change_and_write_nothing(tmp_path, kwargs, error, match):
    net, _ = conv_net([mx.cpu(0)], False)
    before = snapshot(net)
    with pytest.raises(error, match=match):
        ps.export_onnx(net, str(tmp_path / 'net.onnx'), **kwargs)
    with pytest.raises(ps.SurgeryValueError, match='is a folder'):
        ps.export_onnx(net, str(tmp_path), inputs=(1, 3, 8, 8))
    with pytest.raises(ps.SurgeryTypeError, match='HybridBlock'):
        ps.export_onnx(nn.Sequential(), str(tmp_path / 'net.onnx'), inputs=(1, 3, 8, 8))
    assert list(tmp_path.iterdir()) == []
    assert_same_bits(before, snapshot(net))


def test_an_older_opset(tmp_path):
    net, x = conv_net([mx.cpu(0)], True)
    done = ps.export_onnx(net, str(tmp_path / 'net.onnx'), inputs=x, opset=13)
    assert done.opset == 13 and onnx.load(done.path).opset_import[0].version == 13
    assert_close(predict(net, x, mx.cpu(0)), run_onnx(done.path, x))


@pytest.mark.parametrize('missing', ['onnx', 'onnxruntime'])
def test_missing_dependency_names_the_install_command(tmp_path, monkeypatch, missing):
    net, _ = conv_net([mx.cpu(0)], False)
    real = importlib.import_module

    def without(name, *args):
        if name == missing:
            raise ImportError('No module named %r' % name)
        return real(name, *args)
    monkeypatch.setattr(importlib, 'import_module', without)
    with pytest.raises(ps.MissingDependencyError, match=r"'%s'.*pip install.*\[onnx\]" % missing):
        ps.export_onnx(net, str(tmp_path / 'net.onnx'), inputs=(1, 3, 8, 8))
    assert list(tmp_path.iterdir()) == []
    if missing == 'onnxruntime':  # not needed without the check
        ps.export_onnx(net, str(tmp_path / 'net.onnx'), inputs=(1, 3, 8, 8), check=False)


def test_export_reads_the_weights_after_queued_forwards(tmp_path, monkeypatch):
    # a queued predict-mode Convolution reorders its weight in place while it is copied
    # (seen on resnet50_v1: ONNX Runtime then differed by 18% of the output; see
    # test_compact.py's test_saved_right_after_a_forward_holds_the_net_values)
    events = []
    real_wait, real_graph = mx.nd.waitall, onnx_export._mx.onnx_graph
    monkeypatch.setattr(mx.nd, 'waitall', lambda: events.append('wait') or real_wait())
    monkeypatch.setattr(onnx_export._mx, 'onnx_graph',
                        lambda *a: events.append('read') or real_graph(*a))
    net, x = conv_net([mx.cpu(0), mx.cpu(1)], True)
    net(x.as_in_context(mx.cpu(0)))
    done = ps.export_onnx(net, str(tmp_path / 'net.onnx'), inputs=x)
    assert events.index('wait') < events.index('read')
    assert_close(predict(net, x, mx.cpu(0)), run_onnx(done.path, x))


@pytest.mark.zoo
def test_exported_right_after_a_forward_matches(tmp_path):
    from mxnet.gluon.model_zoo import vision
    for seed in range(3):
        mx.random.seed(seed)
        net = vision.resnet50_v1(pretrained=False)
        net.initialize(mx.init.Xavier())
        net(mx.nd.zeros((1, 3, 224, 224)))   # asynchronous: still queued at the export
        done = ps.export_onnx(net, str(tmp_path / 'r50.onnx'), inputs=(1, 3, 224, 224),
                              check=False)
        mx.nd.waitall()
        inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(done.path).graph.initializer}
        wrong = [name for name, p in net.collect_params().items()
                 if name in inits and not np.array_equal(p.data().asnumpy(), inits[name])]
        assert wrong == []
