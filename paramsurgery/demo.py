"""The demo behind ``make demo`` / ``paramsurgery demo``.

Value surgery on a real model_zoo network trained on two contexts: every convolution
weight of resnet18_v1 is scaled inside ``autograd.record()`` while the Trainer's kvstore
owns a copy of the weights, and the result is checked against the same run with
``update_on_kvstore=False``.
"""
import mxnet as mx
import numpy as np
from mxnet import autograd, gluon
from mxnet.gluon.model_zoo import vision

from . import access, surgery

__all__ = ['run']

CTXS = [mx.cpu(0), mx.cpu(1)]


def _train(net, update_on_kvstore, multiplier):
    trainer = gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': 0.05, 'momentum': 0.9},
                            kvstore='device', update_on_kvstore=update_on_kvstore)
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    rng = np.random.RandomState(0)
    x = mx.nd.array(rng.uniform(size=(8, 3, 32, 32)))
    y = mx.nd.array(rng.randint(0, 10, size=8))
    changed = []
    for step in range(3):
        with autograd.record():
            if step == 1:
                changed = surgery.assign_params(net, '.*conv.*weight', multiplier)
            losses = [loss_fn(net(xp), yp) for xp, yp in
                      zip(gluon.utils.split_and_load(x, CTXS), gluon.utils.split_and_load(y, CTXS))]
        autograd.backward(losses)
        trainer.step(8)
    return changed


def run(args=None) -> None:
    mx.random.seed(0)
    template = vision.resnet18_v1(pretrained=False, classes=10)
    template.initialize(mx.init.Xavier(), ctx=CTXS)
    template(mx.nd.zeros((1, 3, 32, 32)))
    first = {n: p.data(CTXS[1]).asnumpy() for n, p in template.collect_params().items()}

    nets = {}
    for uok in (True, False):
        net = vision.resnet18_v1(pretrained=False, classes=10, prefix='resnetv10_')
        net.initialize(ctx=CTXS)
        net(mx.nd.zeros((1, 3, 32, 32)))
        surgery.set_params(net, {n: v for n, v in first.items()})
        changed = _train(net, uok, 0.5)
        nets[uok] = net
    print('resnet18_v1 on %s, SGD with momentum, kvstore "device"' % CTXS)
    print('assign_params(net, ".*conv.*weight", 0.5) inside autograd.record() at step 2 of 3')
    print('changed %d parameters, e.g. %s' % (len(changed), ', '.join(changed[:3])))
    worst = 0.0
    for name, param in nets[True].collect_params().items():
        other = nets[False].collect_params()[name].data(CTXS[1]).asnumpy()
        worst = max(worst, float(np.abs(param.data(CTXS[1]).asnumpy() - other).max()))
    print('update_on_kvstore=True vs False after training: max abs difference %.2e' % worst)
    problems = access.check_params(nets[True])
    print('check_params: %s' % ('healthy (replicas equal, leaves, grads attached)'
                                if not problems else problems))
