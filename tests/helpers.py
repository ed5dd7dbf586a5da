"""Shared test helpers: nets, batches, snapshots, the Trainer set-ups.

A plain module (``from helpers import make_mlp``): ``tests/`` is on ``sys.path`` through
``pythonpath`` in setup.cfg. ``conftest.py`` holds only the fixtures.
"""
import mxnet as mx
import numpy as np
import pytest
from mxnet import gluon
from mxnet.gluon import nn

ONE = [mx.cpu(0)]
TWO = [mx.cpu(0), mx.cpu(1)]


def make_mlp(ctxs, hybridize=False, prefix='mlp_', seed=0):
    """A small two-layer perceptron with known shapes, initialised deterministically."""
    net = nn.HybridSequential(prefix=prefix)
    with net.name_scope():
        net.add(nn.Dense(5, in_units=4, activation='relu'), nn.Dense(3, in_units=5))
    mx.random.seed(seed)
    net.initialize(mx.init.Uniform(0.5), ctx=ctxs)
    if hybridize:
        net.hybridize()
    return net


def split(batch, ctxs):
    return gluon.utils.split_and_load(batch, ctxs, even_split=False)


def batch(n=8, seed=1, features=4):
    rng = np.random.RandomState(seed)
    return mx.nd.array(rng.uniform(-1, 1, size=(n, features)))


def forward_backward(net, x, ctxs):
    """Sum-of-squares loss over a batch split across ``ctxs``; returns the total loss."""
    with mx.autograd.record():
        losses = [(net(part) ** 2).sum() for part in split(x, ctxs)]
    mx.autograd.backward(losses)
    return sum(l.asscalar() for l in losses)


def snapshot(net):
    """Bit-exact copy of every replica of every parameter: {name: [numpy per context]}."""
    return {name: [d.asnumpy().copy() for d in p.list_data()]
            for name, p in net.collect_params().items()}


def assert_same_bits(before, after):
    assert before.keys() == after.keys()
    for name in before:
        for a, b in zip(before[name], after[name]):
            assert a.tobytes() == b.tobytes(), name


class Scale(gluon.HybridBlock):
    """y = x * weight (elementwise): gradients are easy to compute by hand, and the
    elementwise op also runs in float16 on CPU (FullyConnected does not)."""

    def __init__(self, features=4, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.weight = self.params.get('weight', shape=(features,),
                                          init=mx.init.Uniform(0.5))

    def hybrid_forward(self, F, x, weight):
        return F.broadcast_mul(x, weight)


# (kvstore, update_on_kvstore, contexts): every way a Trainer can hold the weights.
TRAINER_SETUPS = [
    pytest.param(None, None, ONE, id='1ctx-nokv'),
    pytest.param(None, None, TWO, id='2ctx-nokv'),
    pytest.param('device', True, TWO, id='2ctx-device-uok'),
    pytest.param('device', False, TWO, id='2ctx-device-nouok'),
    pytest.param('local', True, TWO, id='2ctx-local-uok'),
]
