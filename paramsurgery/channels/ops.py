"""Counting a net's multiply-accumulates and learnable parameters from its trace."""
from typing import Tuple

import numpy as np

from ..masks.forward import real_deconvolution
from .inputs import input_shapes, positional, require_hybrid
from .trace import Trace


def count_ops(net, *inputs) -> Tuple[int, int]:
    """Multiply-accumulates for one sample and learnable parameters of ``net``.

    MACs count the Convolution, Deconvolution (transposed convolution) and FullyConnected
    layers only (a convolution: output elements times input channels per group times kernel
    size; a transposed one: input elements times output channels per group times kernel
    size, masked or not; bias additions are not counted); the batch size divides out.
    Parameters count the weights and biases of those layers and BatchNorm gamma and beta,
    each shared parameter once; running statistics and masks are not counted (a masked
    weight counts in full: shrink it to make it smaller).

    Parameters
    ----------
    net : HybridBlock
    *inputs : NDArray or tuple of int
        One batch per data input, or its shape.

    Returns
    -------
    (int, int)
        ``(macs, params)``.

    Examples
    --------
    >>> import paramsurgery as ps
    >>> from mxnet.gluon import nn
    >>> net = nn.HybridSequential()
    >>> net.add(nn.Conv2D(8, 3, padding=1), nn.BatchNorm(), nn.Dense(10))
    >>> ps.count_ops(net, (4, 3, 16, 16))   # 16*16*8*3*9 + 2048*10; 224 + 16 + 20490
    (75776, 20730)
    """
    require_hybrid(net, 'count_ops')
    shapes = input_shapes(positional(inputs), 'inputs')
    with real_deconvolution():
        trace = Trace(net, shapes)
    return _count(trace)


def op_counts(trace):
    """``({weight: MACs of the layers using it}, {learnable parameter: size})`` for one
    sample, in :func:`count_ops` units."""
    nodes = trace.nodes
    macs, counted = {}, {}

    def src(entry):
        node = nodes[entry[0]]
        while node['op'] != 'null' and node['inputs']:
            node = nodes[node['inputs'][0][0]]
        return node['name']

    for nid, node in enumerate(nodes):
        op = node['op']
        if op not in ('Convolution', 'Deconvolution', 'FullyConnected', 'BatchNorm',
                      'BatchNormWithReLU', '_contrib_BatchNormWithReLU'):
            continue
        inputs = node['inputs']
        if op in ('Convolution', 'Deconvolution', 'FullyConnected'):
            wname = src(inputs[1])
            # the weight the layer reads: a parameter's shape, or that of the parameters
            # rearranged into it (gluonnlp's interleaved query, key and value: 3x its rows)
            wshape = trace.shape(*inputs[1][:2]) or trace.shapes.get(wname)
            out = trace.shape(nid)
            if wshape is None or out is None:
                continue
            if op == 'Convolution':
                layer = int(np.prod(out[1:], dtype=np.int64)) * int(np.prod(wshape[1:]))
            elif op == 'Deconvolution':
                # every input element meets (output channels per group) x kernel weights;
                # the weight is (in channels, out channels per group, kernel...)
                data = trace.shape(*inputs[0][:2])
                if data is None:
                    continue
                layer = int(np.prod(data[1:], dtype=np.int64)) * int(np.prod(wshape[1:]))
            else:
                rows = int(np.prod(out[1:-1], dtype=np.int64)) if len(out) > 2 else 1
                layer = rows * int(np.prod(wshape))
            macs[wname] = macs.get(wname, 0) + layer
        for entry in inputs[1:3]:
            name = src(entry)
            if name in trace.all_params:
                counted[name] = int(np.prod(trace.shapes.get(name, (0,))))
    return macs, counted


def _count(trace):
    macs, counted = op_counts(trace)
    return int(sum(macs.values())), int(sum(counted.values()))
