"""Masked transposed convolutions, computed as the equivalent Convolution.

MXNet 1.9.1's MKLDNN Deconvolution backward fails ("could not execute a primitive",
reported asynchronously at the next read, sometimes a crash) whenever the gradient of its
weight input is not written straight into a leaf's gradient buffer: a computed weight
(``weight * mask``, ``weight.copy()``) or a weight used twice. 1D, 2D and 3D transposed
convolutions are all affected; a plain leaf weight works. A masked transposed convolution
is therefore computed as the equivalent Convolution (zeros inserted between input samples,
padded, kernel flipped and its in/out channels swapped), whose backward handles computed
weights. Same values and gradients; it costs about stride**ndim times the multiply-adds.
"""
import contextlib

import mxnet as mx

from . import _internals

__all__ = []

_MKLDNN = None
#: >0 while a symbolic trace that only infers shapes runs (see :func:`real_deconvolution`).
_REAL = 0


@contextlib.contextmanager
def real_deconvolution():
    """Trace masked transposed convolutions as the Deconvolution they are.

    The stand-in Convolution is only needed for a backward; a trace that infers shapes
    and counts multiply-adds would otherwise count the stand-in's (about stride**ndim
    times more)."""
    global _REAL  # pylint: disable=global-statement
    _REAL += 1
    try:
        yield
    finally:
        _REAL -= 1


def mkldnn_enabled():
    global _MKLDNN  # pylint: disable=global-statement
    if _MKLDNN is None:
        try:
            features = mx.runtime.Features()
            _MKLDNN = any(features.is_enabled(name) for name in ('MKLDNN', 'ONEDNN')
                          if name in features)
        except Exception:  # pylint: disable=broad-except
            _MKLDNN = True  # unknown build: take the path that works everywhere
    return _MKLDNN


def is_transposed_conv(block):
    """True for Gluon's Conv1D/2D/3DTranspose (``_Conv`` blocks running Deconvolution)."""
    return _internals.conv_op_name(block) in ('Deconvolution', 'deconvolution')


def transposed_conv_layout(block):
    """The layout string of a transposed-convolution block, e.g. ``'NCHW'``."""
    kwargs = _internals.conv_kwargs(block)
    return kwargs.get('layout') or 'NC' + 'DHW'[-len(kwargs['kernel']):]


def needs_deconv_workaround(block):
    return not _REAL and is_transposed_conv(block) and mkldnn_enabled()


class DeconvAsConv:
    """Stands in for ``F`` (the ndarray or symbol module) in a transposed convolution's
    ``hybrid_forward``: ``Deconvolution`` is computed with ``Convolution``, every other
    operator is the module's own."""

    def __init__(self, F, weight_shape):
        self._F = F
        self._weight_shape = weight_shape

    def __getattr__(self, name):
        return getattr(self._F, name)

    def Deconvolution(self, data, weight, bias=None, **kwargs):  # pylint: disable=invalid-name
        return deconvolution_as_convolution(self._F, data, weight, bias,
                                            weight_shape=self._weight_shape, **kwargs)


def _insert_zeros(F, x, axis, ndim, stride):
    """Put ``stride - 1`` zeros between consecutive entries along ``axis``."""
    if stride == 1:
        return x
    x = F.expand_dims(x, axis=axis + 1)
    x = F.concat(x, *([F.zeros_like(x)] * (stride - 1)), dim=axis + 1)
    x = F.reshape(x, shape=(0,) * axis + (-3,) + (0,) * (ndim - axis - 1))
    return F.slice_axis(x, axis=axis, begin=0, end=-(stride - 1))


def _pad_axis(F, x, axis, before, after):
    """Zero-pad (positive) or crop (negative) ``x`` along ``axis``."""
    if before < 0:
        x = F.slice_axis(x, axis=axis, begin=-before, end=None)
    if after < 0:
        x = F.slice_axis(x, axis=axis, begin=0, end=after)
    if before > 0 or after > 0:
        zero = F.zeros_like(F.slice_axis(x, axis=axis, begin=0, end=1))
        parts = [x]
        if before > 0:
            parts.insert(0, F.repeat(zero, repeats=before, axis=axis))
        if after > 0:
            parts.append(F.repeat(zero, repeats=after, axis=axis))
        x = F.concat(*parts, dim=axis)
    return x


def deconvolution_as_convolution(F, data, weight, bias=None, *, weight_shape, kernel,
                                 stride=(), dilate=(), pad=(), adj=(), num_filter,
                                 num_group=1, no_bias=False, layout=None, name=None,
                                 **ignored):  # pylint: disable=unused-argument
    """``F.Deconvolution(data, weight, bias, ...)`` computed with ``F.Convolution``
    (channel-first layouts). ``ignored`` takes the cuDNN/workspace hints."""
    n = len(kernel)
    stride = tuple(stride) or (1,) * n
    dilate = tuple(dilate) or (1,) * n
    pad = tuple(pad) or (0,) * n
    adj = tuple(adj) or (0,) * n
    ndim = n + 2
    x, conv_pad = data, []
    for i in range(n):
        axis = 2 + i
        x = _insert_zeros(F, x, axis, ndim, stride[i])
        before = dilate[i] * (kernel[i] - 1) - pad[i]
        after = before + adj[i]
        both = max(0, min(before, after))   # symmetric part: the Convolution pads it
        conv_pad.append(both)
        x = _pad_axis(F, x, axis, before - both, after - both)
    in_channels, out_per_group = weight_shape[0], weight_shape[1]
    groups = num_group
    w = F.reshape(weight, shape=(groups, in_channels // groups, out_per_group) + tuple(kernel))
    w = F.swapaxes(w, 1, 2)
    w = F.reshape(w, shape=(groups * out_per_group, in_channels // groups) + tuple(kernel))
    w = F.reverse(w, axis=tuple(range(2, ndim)))
    args = [x, w] if no_bias or bias is None else [x, w, bias]
    return F.Convolution(*args, kernel=tuple(kernel), stride=(1,) * n, dilate=dilate,
                         pad=tuple(conv_pad), num_filter=num_filter, num_group=groups,
                         no_bias=no_bias or bias is None)
