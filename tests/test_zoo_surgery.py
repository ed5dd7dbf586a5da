"""End to end (not named after a module): value surgery on a real model_zoo network
trained on two contexts. Every test here is marked ``zoo``."""
import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon
from mxnet.gluon.model_zoo import vision

import paramsurgery as ps

from helpers import TWO, split

pytestmark = pytest.mark.zoo


def build(path, hybridize):
    net = vision.resnet18_v1(pretrained=False, classes=10)
    net.load_parameters(path, ctx=TWO)
    if hybridize:
        net.hybridize()
    return net


def train(net, update_on_kvstore, surgery):
    trainer = gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': 0.05, 'momentum': 0.9},
                            kvstore='device', update_on_kvstore=update_on_kvstore)
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    rng = np.random.RandomState(0)
    x = mx.nd.array(rng.uniform(size=(4, 3, 32, 32)))
    y = mx.nd.array(rng.randint(0, 10, size=4))
    multipliers = {name: np.random.RandomState(i).uniform(0.5, 1.5, p.shape).astype(np.float32)
                   for i, (name, p) in enumerate(net.collect_params('.*conv.*weight').items())}
    snapshot = None
    for step in range(3):
        with autograd.record():
            if step == 1 and surgery:
                before = {n: net.collect_params()[n].data(TWO[1]).asnumpy() for n in multipliers}
                assert ps.assign_params(net, multipliers) == list(multipliers)
                snapshot = {n: net.collect_params()[n].list_data() for n in multipliers}
                # one float32 multiply per entry, correctly rounded (IEEE 754) on every CPU
                # and in numpy alike: the bits are equal
                for n, m in multipliers.items():
                    for arr in snapshot[n]:
                        np.testing.assert_array_equal(arr.asnumpy(), before[n] * m)
            losses = [loss_fn(net(xp), yp) for xp, yp in zip(split(x, TWO), split(y, TWO))]
        autograd.backward(losses)
        trainer.step(4)
    # keyed by position: every new net gets a new name prefix (resnetv10_, resnetv11_, ...)
    return [p.list_data()[0].asnumpy() for p in net.collect_params().values()
            if p.grad_req != 'null']


@pytest.mark.parametrize('hybridize', [False, True], ids=['imperative', 'hybrid'])
def test_resnet18_surgery_survives_kvstore(tmp_path, hybridize):
    mx.random.seed(1)
    net = vision.resnet18_v1(pretrained=False, classes=10)
    net.initialize(mx.init.Xavier(), ctx=TWO)
    net(mx.nd.zeros((1, 3, 32, 32), ctx=TWO[0]))
    net(mx.nd.zeros((1, 3, 32, 32), ctx=TWO[1]))
    path = str(tmp_path / 'init.params')
    net.save_parameters(path)

    on_kv = build(path, hybridize)
    result = train(on_kv, update_on_kvstore=True, surgery=True)
    assert ps.check_params(on_kv) == []  # replicas equal, leaves, grads attached
    reference = train(build(path, hybridize), update_on_kvstore=False, surgery=True)
    untouched = train(build(path, hybridize), update_on_kvstore=True, surgery=False)
    # surgery mattered: the multipliers (0.5 to 1.5) move conv0's weights (Xavier, about
    # 0.1) by about 1e-2, two orders above 1e-4
    assert not np.allclose(result[0], untouched[0], atol=1e-4)
    assert len(result) == len(reference) > 40
    # Both runs do the same float32 arithmetic on the same values in the same order, on any
    # CPU: the same kernels for the same shapes, the kvstore sums the two gradients either
    # way, and the SGD update is one elementwise operator whether the kvstore or each context
    # runs it. Only where the update runs differs, so the weights are equal bit for bit.
    for i, (got, want) in enumerate(zip(result, reference)):
        np.testing.assert_array_equal(got, want, err_msg=str(i))
