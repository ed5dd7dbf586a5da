"""Which parameters each forward of a net read, per context: ``ps.track_usage``.

:func:`paramsurgery.find_stale` uses the record to say which block left a parameter unused,
and to tell a parameter whose flags were reset from one that was not used.
"""
import weakref
from collections import OrderedDict
from typing import Any, List, NamedTuple, Optional

import mxnet as mx
from mxnet import autograd, gluon
from mxnet import ndarray as nd

from . import _mx
from .errors import SurgeryTypeError, SurgeryValueError
from .select import all_params

__all__ = ['UsageTracker', 'track_usage']


class _Read(NamedTuple):
    grads: Any          # the parameter's gradient-buffer list when it was read
    recording: bool     # read inside autograd.record()
    block: Any          # the block whose call read it


# The newest tracker of each parameter; it outlives the ``with`` block so that find_stale
# after the block still knows, until safe_step starts a new step.
TRACKERS = weakref.WeakKeyDictionary()


def _first_context(args):
    for arg in args:
        if isinstance(arg, nd.NDArray):
            return arg.context
        if isinstance(arg, (list, tuple)):
            ctx = _first_context(arg)
            if ctx is not None:
                return ctx
        elif isinstance(arg, mx.sym.Symbol):
            # A parent HybridBlock is building its graph: nothing is read now.
            return None
    return None


def describe(block):
    return "'%s' (%s)" % (block.name, type(block).__name__)


class UsageTracker:
    """Records which parameters each forward of a net read, per context.

    Made by :func:`track_usage`; use it as a context manager. Every block of the net
    gets a forward hook. A block that runs eagerly read its own parameters; a hybridised
    block read the parameters its cached graph takes as inputs (its children do not run
    again after the graph is built, so their hooks only see Symbols and are ignored).

    Reads accumulate from ``__enter__`` until :meth:`clear` or the next successful
    :func:`safe_step`. After a plain ``trainer.step`` call :meth:`clear` yourself, or a
    parameter read in an earlier iteration still counts as read.

    Attributes
    ----------
    active : bool
        True inside the ``with`` block (hooks attached).
    """

    def __init__(self, net):
        if not isinstance(net, gluon.Block):
            raise SurgeryTypeError('track_usage needs a gluon.Block (its forward is observed), '
                                   'got %s.' % type(net).__name__)
        self._net = net
        self._params = all_params(net)
        self._blocks = []
        net.apply(self._blocks.append)
        self._direct = {}
        self._owners = {}
        for block in self._blocks:
            own = list(_mx.block_params(block).values())
            if not isinstance(block, gluon.HybridBlock):
                # A plain Block may read any parameter of its own ParameterDict by name.
                own += [p for p in block.params.values() if all(p is not q for q in own)]
            self._direct[id(block)] = own
            for param in own:
                self._owners.setdefault(id(param), []).append(block)
        self._reads = {}
        self._calls = {}
        self._handles = []
        self.active = False

    # hooks
    def _on_call(self, block, args, out):  # pylint: disable=unused-argument
        ctx = _first_context(args)
        if ctx is None:
            return
        hybrid = _mx.is_hybridized(block)
        params = _mx.cached_graph_params(block) if hybrid else None
        if params is None:
            hybrid = False
            params = self._direct.get(id(block), ())
        recording = autograd.is_recording()
        for param in params:
            self._reads[(id(param), ctx)] = _Read(_mx.raw_grad(param), recording, block)
        self._calls.setdefault(ctx, OrderedDict())[id(block)] = (block, hybrid)

    def __enter__(self):
        if self.active:
            raise SurgeryValueError('This UsageTracker is already active; make a new one with '
                                    'ps.track_usage(net).')
        self.clear()
        for block in self._blocks:
            self._handles.append(block.register_forward_hook(self._on_call))
        for param in self._params.values():
            TRACKERS[param] = self
        self.active = True
        return self

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.detach()
        self._handles = []
        self.active = False
        return False

    # queries
    def clear(self) -> None:
        """Forget every read: the next forwards start a new step."""
        self._reads = {}
        self._calls = {}

    @property
    def contexts(self) -> List[mx.Context]:
        """The contexts on which a tracked forward ran."""
        return list(self._calls)

    def read(self, ctx: Optional[mx.Context] = None) -> List[str]:
        """Names of the parameters read by the tracked forwards (on ``ctx``, or anywhere)."""
        keys = set(self._reads)
        ctxs = [ctx] if ctx is not None else self.contexts
        return [name for name, p in self._params.items()
                if any((id(p), c) in keys for c in ctxs)]

    def ran(self, ctx: Optional[mx.Context] = None) -> List[str]:
        """Names of the blocks called with NDArrays (on ``ctx``, or anywhere), in call order."""
        ctxs = [ctx] if ctx is not None else self.contexts
        names = []
        for c in ctxs:
            for block, _ in self._calls.get(c, {}).values():
                if block.name not in names:
                    names.append(block.name)
        return names

    # used by find_stale
    def _knows(self, param):
        return any(param is p for p in self._params.values())

    def _read_on(self, param, ctx):
        return self._reads.get((id(param), ctx))

    def _why_not_read(self, param, ctx):
        """A sentence saying which block did not run on ``ctx`` for ``param``."""
        owners = self._owners.get(id(param), [])
        owner = ('block %s' % describe(owners[0])) if owners else 'the block that owns it'
        calls = self._calls.get(ctx)
        if not calls:
            where = ', '.join(str(c) for c in self.contexts) or 'no context'
            return ('no tracked forward ran on %s at all (tracked forwards ran on %s), so its '
                    '%s did not run there.' % (ctx, where, owner))
        for block, hybrid in calls.values():
            if hybrid and param.name in block.collect_params().keys():
                return ('its %s is not part of the cached graph of hybridised block %s, which '
                        'ran on %s: that hybrid_forward does not use its output.'
                        % (owner, describe(block), ctx))
        return 'its %s did not run on %s in the tracked forwards, while other blocks did.' % (
            owner, ctx)


def track_usage(net) -> UsageTracker:
    """Record which parameters each forward of ``net`` reads, per context.

    While it is active (and after, until the next successful :func:`safe_step`),
    :func:`find_stale` uses the record to name the block that did not run (reason
    ``unused``) and to tell a parameter that was read but whose freshness flag was reset
    afterwards (reason ``flags-reset``: a grad_req change, ``cast``, ``reset_ctx`` or
    re-initialisation between forward and step) from one that was never read.

    Works hybridised or not: a hybridised block's call is recorded with the parameters
    its cached graph reads, once per call and context.

    Parameters
    ----------
    net : Block
        The network; every block in it (at the time of the call) is observed.

    Returns
    -------
    UsageTracker
        A context manager; ``read(ctx)``, ``ran(ctx)`` and ``contexts`` say what it saw.

    Examples
    --------
    >>> import mxnet as mx, paramsurgery as ps
    >>> from mxnet import autograd
    >>> from mxnet.gluon import nn
    >>> net = nn.HybridSequential(prefix='net_')
    >>> with net.name_scope():
    ...     net.add(nn.Dense(2, in_units=3), nn.Dense(1, in_units=2))
    >>> net.initialize()
    >>> net.hybridize()
    >>> with ps.track_usage(net) as usage:
    ...     with autograd.record():
    ...         y = net[0](mx.nd.ones((1, 3)))   # only the first layer runs
    >>> usage.read(mx.cpu(0))
    ['net_dense0_weight', 'net_dense0_bias']
    """
    return UsageTracker(net)


def tracker_for(param, usage):
    if usage is not None:
        return usage if usage._knows(param) else None
    return TRACKERS.get(param)
