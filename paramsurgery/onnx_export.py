"""ONNX export on MXNet's own exporter, checked in ONNX Runtime before the file is written.

MXNet 1.9.1 is the last release; :func:`export_onnx` is the checked path out of it for a
dense, masked (either mode) or shrunk HybridBlock. The graph is traced symbolically (the net
is not changed), converted by ``mxnet.onnx``'s converter table, graph-mode masks are baked
into the weights they multiply, the parameters become initializers only (MXNet's exporter
also lists them as graph inputs, which keeps ONNX Runtime from folding and fusing them),
and the model runs in ONNX Runtime against the net before it is written atomically. See
``docs/deploy.md``.
"""
import importlib
import numbers
from typing import NamedTuple, Optional, Tuple

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon

from . import _mx
from ._checks import check_flag
from ._files import check_path, write_bytes
from .access import data_on
from .channels.check import layer_of
from .channels.inputs import (
    finish_deferred,
    flat_outputs,
    input_batches,
    input_shapes,
    net_contexts,
)
from .channels.trace import Trace
from .errors import (
    ExportError,
    MissingDependencyError,
    SurgeryTypeError,
    SurgeryValueError,
    install_hint,
)
from .select import MASK_SUFFIX, all_params

__all__ = ['export_onnx', 'OnnxExport']

#: The check: max |ONNX Runtime - net| <= RTOL * max |net output|, per output. Both compute in
#: float32 with different kernels (ONNX Runtime fuses BatchNorm into the convolutions and sums
#: in another order), so they agree to a few float32 roundings per layer, not bit for bit.
RTOL = 1e-4
#: The oldest opset MXNet's converters are written for (``convert_layer`` refuses older ones).
MIN_OPSET = 12
_SUPPORT = 'docs/deploy.md#what-the-exporter-supports'


class OnnxExport(NamedTuple):
    """What :func:`export_onnx` wrote and how it checked it.

    ``max_diff`` and ``scale`` are the largest ``|ONNX Runtime - net|`` over the outputs and
    the largest ``|net output|`` (both None with ``check=False``).
    """
    path: str
    opset: int
    inputs: Tuple[str, ...]
    outputs: Tuple[str, ...]
    initializers: int
    baked_masks: Tuple[str, ...]
    max_diff: Optional[float]
    scale: Optional[float]


def _require(module, what):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependencyError(
            "%s needs the '%s' package, which is not installed. Install the ONNX extra: %s"
            % (what, module, install_hint('onnx'))) from None


def _check_opset(opset, newest):
    if opset is None:
        return newest
    if not isinstance(opset, numbers.Integral) or isinstance(opset, (bool, np.bool_)):
        raise SurgeryTypeError('opset must be an int or None, got %s %r.'
                               % (type(opset).__name__, opset))
    if not MIN_OPSET <= int(opset) <= newest:
        raise SurgeryValueError(
            'opset must be between %d (the oldest MXNet converts to) and %d (the newest the '
            'installed onnx knows), got %d. Pass opset=None for %d.'
            % (MIN_OPSET, newest, opset, newest))
    return int(opset)


def _output_names(symbol):
    """The names MXNet's exporter gives the graph outputs (``'<node>_output'`` -> node)."""
    names = []
    for name in symbol.list_outputs():
        if name.endswith('_output'):
            names.append(name[:-len('_output')])
        elif name[-1:].isdigit() and name[:-1].endswith('_output'):
            names.append(name[:-len('_output0')] + name[-1])
        else:
            names.append(name)
    return names


def _first_unconvertible(net, trace, supported, opset):
    for node in trace.nodes:
        if node['op'] != 'null' and node['op'] not in supported:
            return ExportError(
                "MXNet's ONNX exporter has no converter for operator '%s' (%s) at opset %d, so "
                "%s '%s' cannot be exported. Nothing was written. Replace that layer with "
                "operators the exporter converts (the list: %s), or export a net without it."
                % (node['op'], layer_of(net, node['name']), opset, type(net).__name__,
                   net.name, _SUPPORT))
    return None


def _bake_masks(graph, numpy_helper, mask_names):
    """Fold every ``Mul(weight, weight_mask)`` of two initializers into one initializer.

    The product is computed in the weight's dtype, as MXNet's forward computes it
    (``w * 1 == w`` and ``w * 0 == +-0`` exactly), and takes the weight's name when nothing
    else reads the unmasked weight. Returns the weight names baked."""
    inits = {init.name: init for init in graph.initializer}
    readers = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    baked, drop = [], []
    for node in list(graph.node):
        if node.op_type != 'Mul' or len(node.input) != 2:
            continue
        a, b = node.input
        weight, mask = (a, b) if b in mask_names else (b, a)
        if mask not in mask_names or weight not in inits or mask not in inits:
            continue
        product = numpy_helper.to_array(inits[weight]) * numpy_helper.to_array(inits[mask])
        out = node.output[0]
        graph.node.remove(node)
        if readers.get(weight, 0) == 1:  # the Mul was its only reader: keep its name
            name = weight
            graph.initializer.remove(inits[weight])
        else:
            name = out
        graph.initializer.append(numpy_helper.from_array(product, name))
        for other in graph.node:
            for i, inp in enumerate(other.input):
                if inp == out:
                    other.input[i] = name
        for output in graph.output:
            if output.name == out and name != out:
                output.name = name
        readers[mask] -= 1
        if readers[mask] == 0:
            drop.append(inits[mask])
        baked.append(weight)
    for init in drop:
        graph.initializer.remove(init)
    return baked


def _as_initializers_only(graph):
    """Drop the parameters from the graph inputs: ONNX Runtime treats an initializer that is
    also a graph input as overridable, so it neither folds nor fuses it."""
    inits = set(init.name for init in graph.initializer)
    kept = [vi for vi in graph.input if vi.name not in inits]
    del graph.input[:]
    graph.input.extend(kept)


def _run_onnx(ort, model_bytes, feeds):
    options = ort.SessionOptions()
    options.log_severity_level = 3  # ORT's warnings go to stderr, not to the user's log
    session = ort.InferenceSession(model_bytes, options, providers=['CPUExecutionProvider'])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feeds)))


class _Converted(NamedTuple):
    model: object           # the checked onnx.ModelProto
    data: bytes             # its serialised bytes, what is written
    batches: list           # the example inputs, one NDArray each
    ctx: object             # the context the weights were read from
    baked: set              # the masks baked into their weights


class _Agreement(NamedTuple):
    max_diff: Optional[float]   # the largest |ONNX Runtime - MXNet| over the outputs
    scale: Optional[float]      # the largest |output| of the net


def _convert(net, trace, inputs, shapes, opset) -> _Converted:
    """The net's traced graph converted by MXNet's exporter, masks baked, checked by onnx."""
    import onnx  # export_onnx checked that it is installed
    from onnx import helper, numpy_helper
    symbol = trace.symbol
    params = all_params(net)
    ctx = net_contexts(net)[0]
    wanted = set(symbol.list_arguments()) | set(symbol.list_auxiliary_states())
    _mx.settle()  # a queued forward would reorder the weights while they are copied
    with autograd.pause():
        arrays = {name: data_on(param, ctx) for name, param in params.items() if name in wanted}
    batches = input_batches(inputs, shapes)
    # The exporter pairs the shapes with the data inputs in the symbol's order, which is the
    # order the graph first reads them, not the order of the net's arguments.
    order = [name for name in symbol.list_inputs() if name not in arrays]
    given = dict(zip(trace.input_names, batches))
    onnx_types = [onnx.mapping.NP_TYPE_TO_TENSOR_TYPE[np.dtype(given[n].dtype)] for n in order]
    try:
        graph = _mx.onnx_graph(symbol, arrays, [given[n].shape for n in order],
                               onnx_types, opset)
    except Exception as err:  # pylint: disable=broad-except
        raise ExportError(
            "MXNet's ONNX exporter failed on %s '%s' at opset %d: %s: %s. Nothing was "
            "written. See %s for what it converts."
            % (type(net).__name__, net.name, opset, type(err).__name__,
               str(err).splitlines()[0] if str(err) else '', _SUPPORT)) from None
    masks = set(name for name in arrays if name.endswith(MASK_SUFFIX)
                and name[:-len(MASK_SUFFIX)] in params)
    _as_initializers_only(graph)  # first: baking removes the masks' initializers
    baked = _bake_masks(graph, numpy_helper, masks)
    model = helper.make_model(graph, producer_name='paramsurgery',
                              opset_imports=[helper.make_opsetid('', opset)])
    onnx.checker.check_model(model)
    data = model.SerializeToString()
    return _Converted(model, data, batches, ctx, baked)


def _check_in_runtime(ort, net, trace, converted) -> _Agreement:
    """Raise unless ONNX Runtime computes every output of the net within ``RTOL``."""
    batches, ctx = converted.batches, converted.ctx
    feeds = {name: _mx.to_host(b) for name, b in zip(trace.input_names, batches)}
    try:
        got = _run_onnx(ort, converted.data, feeds)
    except Exception as err:  # pylint: disable=broad-except
        raise ExportError(
            "ONNX Runtime cannot run the exported %s '%s': %s: %s. Nothing was written. "
            "See %s." % (type(net).__name__, net.name, type(err).__name__,
                         str(err).splitlines()[0] if str(err) else '', _SUPPORT)) from None
    with autograd.predict_mode():
        expected = flat_outputs(net(*[b.as_in_context(ctx) for b in batches]))
    names = _output_names(trace.symbol)
    max_diff = scale = 0.0
    for name, want in zip(names, expected):
        want = _mx.to_host(want)
        have = got.get(name)
        one_scale = float(np.abs(want).max()) if want.size else 0.0
        if have is None or have.shape != want.shape:
            raise ExportError(
                "ONNX Runtime's output '%s' has shape %s; the net's has %s. Nothing was "
                "written." % (name, None if have is None else have.shape, want.shape))
        diff = float(np.abs(have.astype(np.float64) - want).max()) if want.size else 0.0
        if not np.isfinite(diff) or diff > RTOL * one_scale:
            raise ExportError(
                "ONNX Runtime computes output '%s' of %s '%s' differently: max |difference| "
                "%.3g, more than %g x max |output| (%.3g). Nothing was written. An operator "
                "converted with other semantics is the usual cause; see %s."
                % (name, type(net).__name__, net.name, diff, RTOL, one_scale, _SUPPORT))
        max_diff, scale = max(max_diff, diff), max(scale, one_scale)
    return _Agreement(max_diff, scale)


def export_onnx(net, path, *, inputs, opset: Optional[int] = None,
                check: bool = True) -> OnnxExport:
    """Export a HybridBlock to an ONNX file, checked in ONNX Runtime against the net.

    The net is traced with ``net(mx.sym.var('data'))`` and converted by MXNet's own exporter
    (``mxnet.onnx``); the net itself is not changed. Graph-mode masks are baked into the
    weights they multiply; update-mode masks are already in the stored weights; a shrunk net
    exports at its new sizes. The parameters are initializers (the net's values, as MXNet's
    exporter writes them: ONNX Runtime does the folding and fusing), not graph inputs. With
    ``check=True`` the model runs in ONNX Runtime on the ``inputs`` (a fixed pseudo-random batch
    for a shape) and is compared with the net in predict mode on its first context: every
    output must agree within ``1e-4 x max |output|``. Only then is the file written,
    atomically. See ``docs/deploy.md``.

    Parameters
    ----------
    net : HybridBlock
        The network (initialised, on any contexts).
    path : str or os.PathLike
        The ONNX file to write.
    inputs : NDArray or tuple of int or list of them
        One per input of the net: a batch, or its shape such as ``(1, 3, 224, 224)``. The
        exported model takes exactly these shapes.
    opset : int, default None
        The ONNX opset, from 12 to the newest the installed onnx knows (None: the newest).
    check : bool, default True
        Run the model in ONNX Runtime and compare it with the net before writing.

    Returns
    -------
    OnnxExport
        The path written, the opset, the input and output names, the number of initializers,
        the weights whose graph-mode masks were baked, and the largest difference found.

    Raises
    ------
    SurgeryTypeError, SurgeryValueError
        A bad argument (not a HybridBlock, a bad path, shape or opset).
    ExportError
        The exporter has no converter for an operator (the first one is named, with its
        layer), or ONNX Runtime computes something else than the net (the first differing
        output is named). Nothing was written.
    MissingDependencyError
        onnx (or, with ``check=True``, onnxruntime) is not installed.

    Examples
    --------
    >>> import os, tempfile, mxnet as mx, numpy as np, paramsurgery as ps
    >>> from mxnet.gluon import nn
    >>> net = nn.HybridSequential(prefix='net_')
    >>> with net.name_scope():
    ...     net.add(nn.Conv2D(4, 3, in_channels=3), nn.Activation('relu'),
    ...             nn.Dense(2, in_units=4 * 6 * 6))
    >>> net.initialize(mx.init.Xavier())
    >>> ps.prune_magnitude(net, 'net_conv0_weight', 0.5)
    ['net_conv0_weight']
    >>> path = os.path.join(tempfile.mkdtemp(), 'net.onnx')
    >>> done = ps.export_onnx(net, path, inputs=(1, 3, 8, 8))
    >>> done.inputs, done.outputs, done.baked_masks
    (('data',), ('net_dense0_fwd',), ('net_conv0_weight',))
    >>> done.max_diff <= 1e-4 * done.scale
    True
    """
    if not isinstance(net, gluon.HybridBlock):
        raise SurgeryTypeError(
            'export_onnx needs a gluon.HybridBlock (it traces the net symbolically), got %s. '
            'Make every block a HybridBlock with a hybrid_forward.' % type(net).__name__)
    path = check_path('path', path, write=True)
    shapes = input_shapes(inputs)
    check = check_flag('check', check)
    _require('onnx', 'export_onnx')
    from onnx.defs import onnx_opset_version
    opset = _check_opset(opset, onnx_opset_version())
    ort = _require('onnxruntime', 'export_onnx(check=True)') if check else None
    _require('mxnet.onnx', 'export_onnx')

    finish_deferred(net, inputs, shapes)
    trace = Trace(net, shapes)
    supported = set(mx.onnx.get_operator_support(opset))
    unconvertible = _first_unconvertible(net, trace, supported, opset)
    if unconvertible is not None:
        raise unconvertible

    converted = _convert(net, trace, inputs, shapes, opset)
    agreement = _check_in_runtime(ort, net, trace, converted) if check else _Agreement(None, None)
    model, data = converted.model, converted.data
    write_bytes(path, data)
    return OnnxExport(path=path, opset=opset, inputs=tuple(trace.input_names),
                      outputs=tuple(o.name for o in model.graph.output),
                      initializers=len(model.graph.initializer),
                      baked_masks=tuple(sorted(converted.baked)), max_diff=agreement.max_diff,
                      scale=agreement.scale)
