"""How much channel pruning at 0.5 removes, per architecture: the MACs ratio after
``prune_channels(net, 0.5)`` + ``shrink`` (``count_ops`` before / after), and how many
channel groups are prunable.

Nets: the in-repo blocks of tests/channel_nets.py (the ways gluoncv and gluonnlp write
their blocks; a BERT-base-shaped encoder layer with the attention cell's shrink rule), the
model_zoo nets, and, when gluoncv 0.10.5.post0 is installed (``pip install --no-deps
gluoncv==0.10.5.post0 portalocker``), its real nets (``pretrained=False``, Xavier weights).
Each net is shrunk in predict mode on one context; shrink's all-or-nothing check runs as
always, so every row is a net that computes what its masked twin computed.

Run: ``PYTHONPATH=.:tests python bench/shrink_coverage.py [--only NAME,...]``
"""
import argparse
import sys
import time
import warnings

import mxnet as mx
import numpy as np
from mxnet.gluon.model_zoo import vision

import paramsurgery as ps

ZOO = [('resnet18_v1', 224), ('resnet50_v1', 224), ('resnet50_v2', 224),
       ('mobilenet1.0', 224), ('mobilenetv2_1.0', 224), ('vgg16_bn', 224),
       ('densenet121', 224), ('squeezenet1.1', 224), ('inceptionv3', 299), ('alexnet', 224)]
GLUONCV = [('resnext50_32x4d', 224), ('se_resnet50_v2', 224), ('resnest14', 224),
           ('xception', 299), ('hrnet_w18_small_v1_c', 224), ('fcn_resnet50_voc', 224),
           ('simple_pose_resnet18_v1b', (256, 192)), ('yolo3_darknet53_voc', 416),
           ('mobilenetv3_large', 224), ('darknet53', 224), ('residualattentionnet56', 224),
           ('resnet50_v1b', 224), ('resnet50_v1d', 224), ('vgg16_bn', 224)]


def in_repo():
    import channel_nets as cn
    ps.register_shrink_rule(cn.MultiHeadAttentionCell, cn.attention_rule)
    for kind, cls in sorted(cn.USER_NETS.items()):
        yield 'channel_nets.' + cls.__name__, (lambda c=cls, k=kind: c(prefix=k + '_')), \
            cn.batch()
    yield 'channel_nets.EncoderLayer (BERT-base: 768, 12 heads, 3072)', \
        (lambda: cn.EncoderLayer(768, 3072, 12, prefix='enc_')), \
        mx.nd.array(np.random.RandomState(0).uniform(-1, 1, size=(2, 16, 768)))
    for mode in ('lstm', 'gru'):
        yield 'channel_nets.LanguageModel (%s)' % mode, \
            (lambda m=mode: cn.LanguageModel(m, prefix='lm_')), \
            mx.nd.array(np.random.RandomState(0).randint(0, 50, size=(2, 5)))


def image(size):
    shape = (1, 3) + ((size, size) if isinstance(size, int) else tuple(size))
    return mx.nd.array(np.random.RandomState(0).uniform(-1, 1, size=shape))


def zoo():
    for name, size in ZOO:
        yield 'model_zoo ' + name, (lambda n=name: vision.get_model(n, classes=10)), image(size)


def gluoncv():
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            from gluoncv import model_zoo as gz
    except ImportError as err:
        print('(gluoncv not importable: %s; its nets are skipped)' % err)
        return
    for name, size in GLUONCV:
        kwargs = {'pretrained_base': False} if name.split('_')[0] in (
            'fcn', 'yolo3', 'simple') else {}
        yield 'gluoncv ' + name, (lambda n=name, k=kwargs: gz.get_model(
            n, pretrained=False, **k)), image(size)


def measure(make, x):
    mx.random.seed(0)
    net = make()
    net.initialize(mx.init.Xavier())
    net(x)
    before = ps.count_ops(net, x)[0]
    graph = ps.trace_channels(net, x)
    ps.prune_channels(net, 0.5, inputs=x)
    ps.shrink(net, inputs=x)
    return len(graph.prunable), len(graph), before / ps.count_ops(net, x)[0]


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--only', default='', help='comma-separated substrings of net names')
    args = parser.parse_args(argv)
    only = [s for s in args.only.split(',') if s]
    print('| net | prunable groups / all | MACs ratio at 0.5 |')
    print('| --- | --- | --- |')
    for source in (in_repo, zoo, gluoncv):
        for name, make, x in source():
            if only and not any(s in name for s in only):
                continue
            start = time.time()
            try:
                prunable, groups, ratio = measure(make, x)
                row = '| %s | %d / %d | %.2fx |' % (name, prunable, groups, ratio)
            except Exception as err:  # pylint: disable=broad-except  (a row says why)
                row = '| %s | - | %s: %s |' % (name, type(err).__name__,
                                              str(err).splitlines()[0][:120])
            print(row + '  <!-- %.1fs -->' % (time.time() - start), flush=True)


if __name__ == '__main__':
    main(sys.argv[1:])
