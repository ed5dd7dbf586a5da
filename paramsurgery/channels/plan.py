"""Shrink plans: what :func:`~.shrink.shrink` did, by structural name, saved as JSON, and
:func:`apply_plan`, which reshapes a fresh net of the same class from one."""
import json
import os
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Union

import numpy as np
from mxnet import autograd, gluon
from mxnet import ndarray as nd

from .. import _mx
from .._files import check_path, reading, write_bytes
from .._snapshot import Transaction
from ..errors import ShrinkError, SurgeryTypeError, SurgeryValueError
from ..select import MASK_SUFFIX, all_params, mask_names
from .rules import resize, resized_blocks, run_rules

_FORMAT = 'paramsurgery-shrink-plan'


_VERSION = 1


def _ints(values, what, low):
    """``values`` as a list of ints >= ``low``, or a typed error naming ``what``."""
    # shrink's own lists (every kept index of resnet50_v1: ~10^5) are plain ints: one
    # type test each, not four isinstance calls
    if type(values) is list and all(type(v) is int for v in values):
        if values and min(values) < low:
            raise SurgeryValueError('%s has a value below %d: %r.' % (what, low, values))
        return list(values)
    if not isinstance(values, (list, tuple)) or not all(
            isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))
            for v in values):
        raise SurgeryTypeError('%s must be a list of ints, got %r.' % (what, values))
    if any(v < low for v in values):
        raise SurgeryValueError('%s has a value below %d: %r.' % (what, low, values))
    return [int(v) for v in values]


class ShrinkPlan:
    """What :func:`shrink` did, enough to rebuild the shrunk network from its class.

    Attributes
    ----------
    kept : dict of str -> list of int
        For every prunable channel group (by name, see :func:`trace_channels`), the indices
        of the channels kept.
    shapes : dict of str -> tuple of int
        The shape of every parameter of the shrunk net (masks excepted), by structural name
        as ``save_parameters`` names them (``'features.0.weight'``).
    slices : dict of str -> dict of int -> list of int, or None
        For every parameter that shrank (by full name), the indices kept on each axis that
        shrank: what :meth:`Capture.shrink` needs to slice values taken before the shrink
        (None for a plan file written before plans recorded them).

    Examples
    --------
    >>> import os, tempfile, paramsurgery as ps
    >>> plan = ps.ShrinkPlan({'conv0_weight': [0, 2]}, {'0.weight': (2, 3, 3, 3)})
    >>> path = os.path.join(tempfile.mkdtemp(), 'plan.json')
    >>> plan.save(path)
    >>> ps.ShrinkPlan.load(path).shapes
    {'0.weight': (2, 3, 3, 3)}
    """

    def __init__(self, kept: Dict[str, List[int]], shapes: Dict[str, tuple],
                 slices: Optional[Dict[str, Dict[int, List[int]]]] = None):
        if not isinstance(kept, dict) or not isinstance(shapes, dict) or \
                not isinstance(slices, (dict, type(None))):
            raise SurgeryTypeError('ShrinkPlan(kept, shapes, slices=None) takes dicts (group '
                                   'name -> kept indices, structural name -> shape, parameter '
                                   'name -> axis -> kept indices), got %s, %s and %s.'
                                   % (type(kept).__name__, type(shapes).__name__,
                                      type(slices).__name__))
        self.kept = {str(k): _ints(v, 'kept[%r]' % k, 0) for k, v in kept.items()}
        self.shapes = {str(k): tuple(_ints(v, 'shapes[%r]' % k, 1)) for k, v in shapes.items()}
        # None (not {}) when unknown: a plan file written before plans recorded slices
        self.slices = None if slices is None else {}
        for name, axes in (slices or {}).items():
            if not isinstance(axes, dict):
                raise SurgeryTypeError('slices[%r] must be a dict axis -> kept indices, got %s.'
                                       % (name, type(axes).__name__))
            self.slices[str(name)] = {int(a): _ints(v, 'slices[%r][%r]' % (name, a), 0)
                                      for a, v in axes.items()}

    def to_dict(self) -> Dict[str, Any]:
        """The plan as plain JSON-able data."""
        data = {'format': _FORMAT, 'version': _VERSION, 'kept': self.kept,
                'shapes': {k: list(v) for k, v in self.shapes.items()}}
        if self.slices is not None:
            data['slices'] = {n: {str(a): v for a, v in axes.items()}
                              for n, axes in self.slices.items()}
        return data

    def save(self, path: str) -> None:
        """Write the plan as JSON, atomically (a temporary file in the same folder, flushed
        to disk, then renamed over ``path``): a crash never leaves half a plan."""
        path = check_path('path', path, write=True)
        write_bytes(path, json.dumps(self.to_dict(), indent=1).encode('utf-8'))

    @classmethod
    def load(cls, path: str) -> 'ShrinkPlan':
        """Read a plan written by :meth:`save`."""
        path = check_path('path', path)
        with reading(path, 'shrink plan (JSON written by ShrinkPlan.save)',
                     'Write it with ShrinkPlan.save.'):
            with open(path, 'rb') as f:
                data = json.loads(f.read().decode('utf-8'))
            if not isinstance(data, dict) or data.get('format') != _FORMAT or \
                    data.get('version') != _VERSION:
                raise ValueError('format %r version %r, expected %r version %d'
                                 % (data.get('format') if isinstance(data, dict) else None,
                                    data.get('version') if isinstance(data, dict) else None,
                                    _FORMAT, _VERSION))
            # (plans written before slices existed have none: Capture.shrink says so)
            return cls(data['kept'], data['shapes'], data.get('slices'))

    def __eq__(self, other):
        return isinstance(other, ShrinkPlan) and self.kept == other.kept and \
            self.shapes == other.shapes

    def __repr__(self):
        return 'ShrinkPlan(%d groups, %d parameters)' % (len(self.kept), len(self.shapes))


def apply_plan(net, plan: Union[ShrinkPlan, str, 'os.PathLike']) -> List[str]:
    """Reshape a freshly built net of the same architecture as a shrunk one.

    The parameters named in the plan (by structural name) get the plan's shapes and the
    blocks their channel counts, so that ``load_parameters`` of the shrunk net's file (and
    then ``load_masks``, if masks were saved with :func:`save_masks`) works: a shrunk model
    is rebuilt from its own class, with no pickling. The net may be initialised (each
    array keeps its leading entries, to be overwritten by ``load_parameters``) or not.

    Parameters
    ----------
    net : Block
        A freshly built network of the class that was shrunk.
    plan : ShrinkPlan or str or os.PathLike
        The plan, or the path of a plan saved with :meth:`ShrinkPlan.save`.

    Returns
    -------
    list of str
        The structural names of the parameters whose shape changed.

    Raises
    ------
    ShrinkError
        The plan does not fit the net (the message names the first parameter that does not
        fit); nothing was changed.
    SurgeryTypeError, SurgeryValueError
        ``net`` is not a Block, or the plan cannot be read.

    Examples
    --------
    >>> import os, tempfile, mxnet as mx, paramsurgery as ps
    >>> from mxnet.gluon import nn
    >>> def build(prefix):
    ...     net = nn.HybridSequential(prefix=prefix)
    ...     with net.name_scope():
    ...         net.add(nn.Conv2D(8, 3), nn.BatchNorm(), nn.Activation('relu'),
    ...                 nn.GlobalAvgPool2D(), nn.Dense(2))
    ...     return net
    >>> net = build('old_')
    >>> net.initialize()
    >>> x = mx.nd.random.uniform(shape=(1, 3, 8, 8))
    >>> ps.prune_channels(net, 3, inputs=x)
    ['old_conv0_weight']
    >>> plan = ps.shrink(net, inputs=x)
    >>> folder = tempfile.mkdtemp()
    >>> plan.save(os.path.join(folder, 'plan.json'))
    >>> ps.remove_mask(net, ps.masked(net))      # bake the masks before saving
    ['old_conv0_weight', ...]
    >>> net.save_parameters(os.path.join(folder, 'net.params'))
    >>> fresh = build('new_')
    >>> ps.apply_plan(fresh, os.path.join(folder, 'plan.json'))
    ['0.weight', '0.bias', '1.gamma', '1.beta', '1.running_mean', '1.running_var', '4.weight']
    >>> fresh.load_parameters(os.path.join(folder, 'net.params'))
    >>> fresh[0]
    Conv2D(3 -> 5, kernel_size=(3, 3), stride=(1, 1))
    >>> (fresh(x) - net(x)).abs().max().asscalar()
    0.0
    """
    if not isinstance(net, gluon.Block):
        raise SurgeryTypeError('apply_plan needs the network (a gluon.Block), got %s.'
                               % type(net).__name__)
    if isinstance(plan, (str, os.PathLike)):
        plan = ShrinkPlan.load(plan)
    if not isinstance(plan, ShrinkPlan):
        raise SurgeryTypeError('plan must be a ShrinkPlan or the path of a saved plan, got %s.'
                               % type(plan).__name__)
    names = _mx.structural_names(net)
    params = all_params(net)
    masks = set(mask_names(params))
    mask_ids = set(id(params[n]) for n in masks)
    weights = OrderedDict((s, p) for s, p in names.items() if id(p) not in mask_ids)
    for sname in plan.shapes:
        if sname not in weights:
            raise ShrinkError(
                "The plan has a parameter '%s' that %s '%s' does not have (it has %s%s): the "
                "plan was made for another architecture. Build the net with the class and "
                "arguments of the shrunk one. Nothing was changed."
                % (sname, type(net).__name__, net.name, ', '.join(list(weights)[:4]),
                   ', ...' if len(weights) > 4 else ''))
    changed = []
    for sname, param in weights.items():
        if sname not in plan.shapes:
            raise ShrinkError(
                "%s '%s' has a parameter '%s' that the plan does not know: the plan was made "
                "for another architecture. Nothing was changed."
                % (type(net).__name__, net.name, sname))
        new = plan.shapes[sname]
        old = param.shape
        if old is None or len(old) != len(new) or any(
                o and (n > o or n < 1) for o, n in zip(old, new)) or any(n < 1 for n in new):
            raise ShrinkError(
                "Parameter '%s' (%s) has shape %s, which the plan's shape %s does not fit (a "
                "plan only removes channels): the plan was made for another architecture. "
                "Nothing was changed." % (sname, param.name, old, new))
        if tuple(old) != tuple(new):
            if param.name in {n[:-len(MASK_SUFFIX)] for n in masks}:
                raise ShrinkError(
                    "Parameter '%s' (%s) has a mask; masks are not part of a plan. Apply the "
                    "plan to a net without masks, then load_masks. Nothing was changed."
                    % (sname, param.name))
            changed.append((sname, param, tuple(new)))
    blocks = resized_blocks(net, [param for _, param, _ in changed])
    # only the counts are known here: the rules see the leading indices
    rule_kept = {param.name: {axis: np.arange(n) for axis, (o, n) in
                              enumerate(zip(param.shape, new)) if o != n}
                 for _, param, new in changed}
    with Transaction(net, values=False), autograd.pause():
        for _, param, new in changed:
            data = _mx.raw_data(param)
            if data is None or _mx.is_deferred(param):
                _mx.set_param_arrays(param, new)
                continue
            # Through numpy: basic slicing of an array that a predict-mode convolution left
            # in oneDNN's blocked layout kills the process with SIGFPE (MXNet 1.9.1);
            # asnumpy reads it back in the default layout.
            keep = tuple(slice(0, n) for n in new)
            arrays = [nd.array(_mx.to_host(a)[keep], ctx=a.context, dtype=a.dtype) for a in data]
            _mx.set_param_arrays(param, new, arrays)
        resize(blocks)
        problem = run_rules(net, rule_kept)
        if problem is not None:
            raise ShrinkError(problem.message + ' Nothing was changed. Fix the rule (see '
                              'docs/shrink.md#blocks-with-their-own-channel-counts).')
    _mx.clear_cached_graphs(net)
    return [s for s, _, _ in changed]
