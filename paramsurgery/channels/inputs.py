"""What the channel functions are given and return: input shapes and batches, deferred
initialisation, the check that a net can be traced, nested outputs, the net's contexts."""
import numbers
from typing import List, Tuple

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon

from .. import _mx
from ..errors import SurgeryTypeError, SurgeryValueError
from ..select import all_params


def input_shapes(inputs, what='inputs') -> List[Tuple[int, ...]]:
    """Validate ``inputs`` (NDArrays or shape tuples, one may be given bare) -> shapes."""
    if isinstance(inputs, (mx.nd.NDArray, np.ndarray)) or (
            isinstance(inputs, tuple) and inputs and all(is_dim(d) for d in inputs)):
        inputs = [inputs]
    if not isinstance(inputs, (list, tuple)) or not inputs:
        raise SurgeryTypeError(
            '%s must be an NDArray, a shape tuple such as (1, 3, 224, 224), or a non-empty '
            'list of them, got %r.' % (what, type(inputs).__name__ if not isinstance(
                inputs, (list, tuple)) else inputs))
    shapes = []
    for i, one in enumerate(inputs):
        if isinstance(one, (mx.nd.NDArray, np.ndarray)):
            shape = tuple(int(d) for d in one.shape)
        elif isinstance(one, (tuple, list)) and all(is_dim(d) for d in one) and one:
            shape = tuple(int(d) for d in one)
        else:
            raise SurgeryTypeError(
                '%s[%d] must be an NDArray or a tuple of positive ints (a shape), got %r.'
                % (what, i, one))
        if any(d <= 0 for d in shape):
            raise SurgeryValueError('%s[%d] has shape %s; every dimension must be >= 1.'
                                    % (what, i, shape))
        shapes.append(shape)
    return shapes


def input_batches(inputs, shapes):
    """NDArrays for the check: the given ones, or a fixed pseudo-random batch per shape."""
    if isinstance(inputs, (mx.nd.NDArray, np.ndarray)) or (
            isinstance(inputs, tuple) and inputs and all(isinstance(d, int) for d in inputs)):
        inputs = [inputs]
    rng = np.random.RandomState(0)
    out = []
    for one, shape in zip(inputs, shapes):
        if isinstance(one, mx.nd.NDArray):
            out.append(one)
        elif isinstance(one, np.ndarray):
            out.append(mx.nd.array(one))
        else:
            out.append(mx.nd.array(rng.uniform(-1, 1, size=shape)))
    return out


def finish_deferred(net, inputs, shapes):
    """Run one predict-mode forward when some parameter still waits for its shape."""
    params = net.collect_params().values()
    if any(_mx.is_deferred(p) for p in params):
        ctx = next((_mx.context_list(p)[0] for p in params
                    if _mx.context_list(p)), mx.current_context())
        with autograd.predict_mode():
            net(*[b.as_in_context(ctx) for b in input_batches(inputs, shapes)])


def positional(inputs):
    """``*inputs``, also accepting one list of inputs given positionally."""
    if len(inputs) == 1 and isinstance(inputs[0], list):
        return list(inputs[0])
    return list(inputs)


def is_dim(d):
    return isinstance(d, numbers.Integral) and not isinstance(d, (bool, np.bool_))


def input_names(n):
    # the names HybridBlock.export gives its inputs
    return ['data'] if n == 1 else ['data%d' % i for i in range(n)]


def require_hybrid(net, what):
    if not isinstance(net, gluon.HybridBlock):
        raise SurgeryTypeError(
            "%s needs a gluon.HybridBlock (it traces the net symbolically with "
            "net(mx.sym.var('data'))), got %s. A plain Block cannot be traced: make it a "
            "HybridBlock with a hybrid_forward." % (what, type(net).__name__))


def flat_outputs(out) -> list:
    """The leaves of a (nested) list or tuple of outputs, in order (as gluon flattens a
    ``HybridBlock``'s outputs for ``export``)."""
    if isinstance(out, (list, tuple)):
        return [leaf for one in out for leaf in flat_outputs(one)]
    return [out]


def net_contexts(net):
    for param in all_params(net).values():
        ctxs = _mx.context_list(param)
        if ctxs:
            return list(ctxs)
    return [mx.current_context()]
