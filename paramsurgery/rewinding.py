"""Lottery-ticket rewinding: capture parameter values, later rewind the unmasked entries to
them on every context, Trainer-safe (see docs/training-surgery.md)."""
import io
import json
from collections import OrderedDict
from typing import Any, Dict, List, Optional

import numpy as np
from mxnet import gluon

from . import _mx
from ._files import check_path, reading, write_bytes
from .channels import ShrinkPlan
from .errors import FileFormatError, SurgeryTypeError, SurgeryValueError, and_more
from .select import MASK_SUFFIX, all_params, mask_names, select
from .surgery import set_params

__all__ = ['Capture', 'capture', 'rewind']

_FORMAT = 'paramsurgery-capture'
_VERSION = 1


class Capture:
    """Parameter values taken by :func:`capture` (numpy copies of the first context).

    Attributes
    ----------
    values : dict of str -> numpy.ndarray
        The captured value of every parameter, by full name.

    Examples
    --------
    >>> import os, tempfile, mxnet as mx, paramsurgery as ps
    >>> net = mx.gluon.nn.Dense(2, in_units=3, prefix='d_')
    >>> net.initialize(mx.init.One())
    >>> path = os.path.join(tempfile.mkdtemp(), 'init.npz')
    >>> ps.capture(net).save(path)
    >>> sorted(ps.Capture.load(path).values)
    ['d_bias', 'd_weight']
    """

    def __init__(self, values: Dict[str, np.ndarray]):
        if not isinstance(values, dict):
            raise SurgeryTypeError('Capture(values) takes a dict of parameter name -> numpy '
                                   'array, got %s.' % type(values).__name__)
        self.values = OrderedDict((str(k), np.array(v, copy=True)) for k, v in values.items())

    def save(self, path: str) -> None:
        """Write the capture as a NumPy ``.npz`` archive, atomically (a temporary file in
        the same folder, flushed, then renamed over ``path``)."""
        path = check_path('path', path, write=True)
        buffer = io.BytesIO()
        meta = json.dumps({'format': _FORMAT, 'version': _VERSION,
                           'names': list(self.values)})
        arrays = {'v%d' % i: v for i, v in enumerate(self.values.values())}
        np.savez(buffer, meta=np.frombuffer(meta.encode('utf-8'), dtype=np.uint8), **arrays)
        write_bytes(path, buffer.getvalue())

    def shrink(self, plan: ShrinkPlan) -> 'Capture':
        """The capture sliced as :func:`shrink` sliced the net, so that :func:`rewind` fits
        the shrunk net: every captured parameter the plan shrank keeps the plan's indices.

        Parameters
        ----------
        plan : ShrinkPlan
            What :func:`shrink` returned (or :meth:`ShrinkPlan.load` read).

        Returns
        -------
        Capture
            A new capture; this one is left as it is.

        Raises
        ------
        SurgeryTypeError
            ``plan`` is not a :class:`ShrinkPlan`.
        SurgeryValueError
            The plan does not fit the captured shapes, or holds no slices (written before
            plans recorded them: shrink again).

        Examples
        --------
        >>> import mxnet as mx, paramsurgery as ps
        >>> from mxnet.gluon import nn
        >>> net = nn.HybridSequential(prefix='net_')
        >>> with net.name_scope():
        ...     net.add(nn.Dense(4, in_units=3, activation='relu'), nn.Dense(2, in_units=4))
        >>> net.initialize(mx.init.Xavier())
        >>> start = ps.capture(net)
        >>> _ = ps.prune_channels(net, 2, inputs=(1, 3))
        >>> plan = ps.shrink(net, inputs=(1, 3))
        >>> small = start.shrink(plan)
        >>> small.values['net_dense0_weight'].shape, small.values['net_dense1_weight'].shape
        ((2, 3), (2, 2))
        >>> ps.rewind(net, small)
        ['net_dense0_weight', 'net_dense0_bias', 'net_dense1_weight', 'net_dense1_bias']
        """
        if not isinstance(plan, ShrinkPlan):
            raise SurgeryTypeError('Capture.shrink(plan): plan must be the ps.ShrinkPlan that '
                                   'ps.shrink returned, got %s.' % type(plan).__name__)
        if plan.slices is None:
            raise SurgeryValueError('Capture.shrink: the plan records no slices (it was '
                                    'written before plans did). Fix: shrink again with this '
                                    'version, or capture the shrunk net.')
        values = OrderedDict()
        for name, value in self.values.items():
            for axis, keep in sorted(plan.slices.get(name, {}).items()):
                if axis >= value.ndim or (keep and max(keep) >= value.shape[axis]):
                    raise SurgeryValueError(
                        "Capture.shrink: the plan keeps indices %s on axis %d of '%s', whose "
                        "captured shape is %s: the plan is of another net. Nothing was "
                        "changed. Fix: pass the plan of the net this capture was taken of."
                        % (and_more([str(k) for k in keep]), axis, name, tuple(value.shape)))
                value = np.take(value, keep, axis=axis)
            values[name] = value
        return Capture(values)

    @classmethod
    def load(cls, path: str) -> 'Capture':
        """Read a capture written by :meth:`save`."""
        path = check_path('path', path)
        with reading(path, 'paramsurgery capture (.npz written by Capture.save)',
                     'Write it with ps.capture(net).save(path).'):
            with np.load(path, allow_pickle=False) as archive:
                meta = json.loads(bytes(archive['meta']).decode('utf-8'))
                if meta.get('format') != _FORMAT or meta.get('version') != _VERSION:
                    raise FileFormatError(
                        "'%s' is not a paramsurgery capture of version %d (found format %r, "
                        "version %r). Write it with ps.capture(net).save(path)."
                        % (path, _VERSION, meta.get('format'), meta.get('version')))
                values = {n: archive['v%d' % i] for i, n in enumerate(meta['names'])}
        return cls(values)


def _trainable(net, key):
    params = all_params(net)
    masks = set(mask_names(params))
    chosen = select(net, key) if key is not None else params
    return OrderedDict((n, p) for n, p in chosen.items() if n not in masks)


def capture(net, key: Any = None) -> Capture:
    """Copy the values of the selected parameters now (first context), e.g. at
    initialisation or at step k of training, for :func:`rewind`.

    Parameters
    ----------
    net : Block or ParameterDict or dict of str -> Parameter
    key : str or Parameter or list or callable, default None
        Which parameters (see :func:`select`); None takes every parameter except the masks.

    Returns
    -------
    Capture

    Raises
    ------
    SelectionError, SurgeryTypeError
        When ``key`` selects nothing or ``net`` has an unsupported type.

    Examples
    --------
    >>> import mxnet as mx, paramsurgery as ps
    >>> net = mx.gluon.nn.Dense(2, in_units=3, prefix='d_')
    >>> net.initialize(mx.init.One())
    >>> ps.capture(net, 'd_weight').values['d_weight'].sum()
    6.0
    """
    params = _trainable(net, key)
    values = OrderedDict()
    for name, param in params.items():
        values[name] = _mx.to_host(param.data(param.list_ctx()[0]))
    return Capture(values)


def rewind(net, capture: Capture, *, key: Any = None,
           trainer: Optional[gluon.Trainer] = None) -> List[str]:
    """Set the unmasked entries of the selected parameters to their captured values on
    every context (the lottery-ticket step); masked entries stay as they are (zero in update
    mode).

    Trainer-safe as :func:`set_params` (the kvstore's copy and fp32 master copies are
    written too). With ``trainer=``, the optimizer state of the rewound parameters is reset
    to zero (momentum, Adam moments) and so are their update counts, so that training
    restarts from the captured point. All or nothing.

    Parameters
    ----------
    net : Block or ParameterDict or dict of str -> Parameter
    capture : Capture
        From :func:`capture` or :meth:`Capture.load`.
    key : str or Parameter or list or callable, default None
        Which parameters to rewind (see :func:`select`); None rewinds every captured one.
    trainer : Trainer, default None
        The Trainer whose optimizer state to reset for the rewound parameters.

    Returns
    -------
    list of str
        The names of the parameters rewound.

    Raises
    ------
    SurgeryTypeError
        ``capture`` is not a :class:`Capture`, or ``trainer`` not a Trainer.
    SelectionError
        A selected parameter is not in the capture, or a captured one not in the net.
    SurgeryValueError
        A captured shape differs from the parameter's (e.g. after ``shrink``).

    Examples
    --------
    >>> import mxnet as mx, numpy as np, paramsurgery as ps
    >>> net = mx.gluon.nn.Dense(2, in_units=2, prefix='d_')
    >>> net.initialize(mx.init.One())
    >>> start = ps.capture(net)
    >>> _ = ps.set_params(net, 'd_weight', 5.0)
    >>> _ = ps.apply_mask(net, 'd_weight', np.array([[1, 0], [1, 1]]), mode='update')
    >>> ps.rewind(net, start)
    ['d_weight', 'd_bias']
    >>> net.weight.data().asnumpy()
    array([[1., 0.],
           [1., 1.]], dtype=float32)
    """
    if not isinstance(capture, Capture):
        raise SurgeryTypeError('rewind(net, capture): capture must be a ps.Capture (from '
                               'ps.capture or ps.Capture.load), got %s.'
                               % type(capture).__name__)
    if trainer is not None and not isinstance(trainer, gluon.Trainer):
        raise SurgeryTypeError('rewind(trainer=) must be a gluon.Trainer or None, got %s.'
                               % type(trainer).__name__)
    params = all_params(net)
    if key is None:
        missing = [n for n in capture.values if n not in params]
        if missing:
            from .errors import SelectionError
            raise SelectionError(
                'rewind: the capture holds %s, which the net has not. Nothing was changed. '
                'Fix: rewind a net with the same parameter names, or pass key= to choose.'
                % and_more(missing))
        chosen = OrderedDict((n, params[n]) for n in capture.values)
    else:
        chosen = _trainable(net, key)
        missing = [n for n in chosen if n not in capture.values]
        if missing:
            from .errors import SelectionError
            raise SelectionError(
                'rewind: parameter %s was not captured. Nothing was changed. Fix: capture it '
                '(ps.capture(net, key)) or leave it out of key.' % and_more(missing))
    new = OrderedDict()
    for name, param in chosen.items():
        saved = capture.values[name]
        if tuple(saved.shape) != tuple(param.shape):
            raise SurgeryValueError(
                "rewind: parameter '%s' has shape %s but was captured with shape %s (shrunk "
                "since?). Nothing was changed. Fix: slice the capture with "
                "capture.shrink(plan), or capture the net in its current shape." % (name, tuple(param.shape), tuple(saved.shape)))
        mask = params.get(name + MASK_SUFFIX)
        if mask is not None:
            keep = _mx.to_host(mask.data(mask.list_ctx()[0])) != 0
            current = _mx.to_host(param.data(param.list_ctx()[0]))
            saved = np.where(keep, saved, current)
        new[name] = saved.astype(param.dtype, copy=False)
    for name, value in new.items():
        set_params(net, chosen[name], value, trainer=trainer)
    if trainer is not None:
        for param in chosen.values():
            _mx.reset_optimizer_state(trainer, param)
    return list(new)
