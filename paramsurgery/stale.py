"""Stale gradients: find them, say why, and step without ever applying one.

MXNet marks a replica's gradient "fresh" in ``backward()`` and ``Trainer.step`` is
supposed to refuse a step whose gradients are not. Its check has three flaws
(see ``docs/stale-gradients.md``): a failed check has already consumed the flags of the
parameters it passed, one stale parameter cancels every update, and with
``update_on_kvstore=True`` (the multi-device default) it is blind, because the kvstore has
already applied the step before the check runs and the flags are never consumed.

This module reads the flags without consuming them (:func:`find_stale`), records which
parameters each forward read (:func:`track_usage`) to say which block did not run, and
steps only when every gradient that is applied is fresh (:func:`safe_step`).
"""
import re
from collections import OrderedDict
from typing import Any, List, Optional

from mxnet import gluon

from . import _mx
from ._checks import check_batch_size
from ._diagnosis import STALE_REASONS, StaleRecord, allow_key, collect, diagnose
from ._usage import TRACKERS, UsageTracker, track_usage
from .distributed import init_kvstore
from .errors import StaleGradientError, SurgeryTypeError, SurgeryValueError
from .select import select

__all__ = ['STALE_REASONS', 'StaleRecord', 'UsageTracker', 'find_stale', 'track_usage',
           'safe_step', 'explain']

# Its public home: reprs, pickles and the API pages name it here.
UsageTracker.__module__ = __name__

# Its public home, as for UsageTracker.
StaleRecord.__module__ = __name__

_MXNET_STALE = re.compile(r"Gradient of Parameter `(?P<name>.+?)` on context (?P<ctx>\S+) "
                          r"has not been updated by backward")


def find_stale(trainer_or_params, *, usage: Optional[UsageTracker] = None) -> List[StaleRecord]:
    """Find the parameters whose gradient was not refreshed by a backward since the last step.

    Reads MXNet's freshness flags without consuming them (a ``trainer.step`` that raises
    consumes those it checked before failing; this does not). Parameters with grad_req
    'null' are never stale.

    Parameters
    ----------
    trainer_or_params : Trainer or Block or ParameterDict or dict or list of Parameter
        What to inspect; a Trainer contributes the parameters it updates.
    usage : UsageTracker, default None
        The record of a :func:`track_usage`. By default the newest tracker of each
        parameter is used, if there is one.

    Returns
    -------
    list of StaleRecord
        One per stale (parameter, context), in parameter then context order. Reasons:
        ``unused`` (it got no gradient while others did; with a usage record, names the
        block that did not run; also a parameter still waiting for deferred initialisation),
        ``no-backward`` (nothing has a fresh gradient: no ``backward()`` since the last
        step, or ``autograd.grad`` was used), ``not-a-leaf`` (``_data`` rebound to computed
        arrays), ``flags-reset`` (read by the tracked forward, then its flag was reset by a
        grad_req change, ``cast``, ``reset_ctx`` or re-initialisation; needs a usage
        record, otherwise reported ``unused``), ``partial-context`` (fresh on some contexts,
        not on others).

    Examples
    --------
    >>> import mxnet as mx, paramsurgery as ps
    >>> from mxnet import autograd, gluon
    >>> from mxnet.gluon import nn
    >>> net = nn.HybridSequential(prefix='net_')
    >>> with net.name_scope():
    ...     net.add(nn.Dense(2, in_units=3), nn.Dense(1, in_units=2))
    >>> net.initialize()
    >>> trainer = gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': 0.1})
    >>> [r.reason for r in ps.find_stale(trainer)]   # no backward yet
    ['no-backward', 'no-backward', 'no-backward', 'no-backward']
    >>> with autograd.record():
    ...     loss = net[0](mx.nd.ones((1, 3))).sum()   # the second layer does not run
    >>> loss.backward()
    >>> [(r.name, r.reason) for r in ps.find_stale(trainer)]
    [('net_dense1_bias', 'unused'), ('net_dense1_weight', 'unused')]
    """
    if usage is not None and not isinstance(usage, UsageTracker):
        raise SurgeryTypeError('usage must be a UsageTracker made by ps.track_usage(net), '
                               'got %s.' % type(usage).__name__)
    return diagnose(collect(trainer_or_params), usage)


# --------------------------------------------------------------------------- the error

def _stale_error(records, head, allowed=(), tail=''):
    """One line per group of records sharing a message (a reason and a cause): the reason,
    the parameters and contexts, then the explanation, once."""
    groups = OrderedDict()
    for rec in records:
        names, ctxs = groups.setdefault((rec.reason, rec.message), ([], []))
        if rec.name not in names:
            names.append(rec.name)
        if rec.context not in ctxs:
            ctxs.append(rec.context)
    n_params = len(OrderedDict.fromkeys(rec.name for rec in records))
    lines = ['%s %d parameter%s %s a stale gradient.' % (
        head, n_params, '' if n_params == 1 else 's', 'has' if n_params == 1 else 'have')]
    for (reason, message), (names, ctxs) in groups.items():
        chosen = [name for name in names if name in allowed]
        note = ''
        if chosen and len(chosen) == len(names):
            note = ' (allowed, but cannot be skipped here)'
        elif chosen:
            note = ' (%s allowed, but not the others)' % ', '.join(chosen)
        shown = ', '.join(names[:6]) + (' (and %d more)' % (len(names) - 6)
                                        if len(names) > 6 else '')
        lines.append('- [%s] %s on %s%s: %s' % (reason, shown,
                                                ', '.join(str(c) for c in ctxs), note, message))
    if tail:
        lines.append(tail)
    return StaleGradientError('\n'.join(lines), records)


# --------------------------------------------------------------------------- stepping

def _consume(params):
    for param in params:
        if param.grad_req == 'null':
            continue
        data = _mx.raw_data(param)
        if not isinstance(data, (list, tuple)):
            continue
        for arr in data:
            if _mx.is_leaf(arr):
                _mx.set_fresh_grad(arr, False)


def _new_step_for_trackers(params):
    seen = {}
    for param in params:
        tracker = TRACKERS.get(param)
        if tracker is not None:
            seen[id(tracker)] = tracker
    for tracker in seen.values():
        if tracker.active:
            tracker.clear()
        else:
            # A finished tracker says nothing about the next step's forwards.
            for param in list(tracker._params.values()):
                if TRACKERS.get(param) is tracker:
                    del TRACKERS[param]


def safe_step(trainer: gluon.Trainer, batch_size: int, *, allow_stale: Any = None
              ) -> List[StaleRecord]:
    """``trainer.step(batch_size)`` that never applies a stale gradient.

    Checks every parameter of the Trainer first. If a parameter has a stale gradient and
    ``allow_stale`` does not select it, raises :class:`StaleGradientError` listing every
    stale parameter with its reason: nothing is updated and no freshness flag is consumed.
    Otherwise steps, skipping exactly the stale parameters (their values and optimizer
    state, e.g. momentum, stay as they are, also when the kvstore runs the optimizer) and
    updating all others; then marks every gradient as consumed, so a second step without
    a new backward raises (``no-backward``), whatever the kvstore setting. On a
    ``dist_sync`` kvstore with ``update_on_kvstore=False`` it first calls
    :func:`init_kvstore`, which removes MXNet's first-step broadcast race.

    Parameters
    ----------
    trainer : Trainer
        The Trainer to step.
    batch_size : int or float
        As for ``trainer.step``: gradients are scaled by ``1 / batch_size``. A positive
        finite number (NaN, inf, 0, a negative number, a ``bool`` or ``str`` raise).
    allow_stale : str or Parameter or list or callable, default None
        A key as in :func:`select` (over the Trainer's parameters): the stale parameters it
        selects are skipped instead of refused. The error lists stale parameters grouped by
        cause and gives, for each group, a key that selects exactly it (a name, or a
        regular expression such as ``'net_dense2_.*'``). A selected parameter with a fresh gradient
        is updated normally. ``'.*'`` skips every stale parameter, which is what
        ``ignore_stale_grad=True`` promises (and under ``update_on_kvstore=True`` does not
        do). With a distributed kvstore a stale parameter is never skipped (every worker
        must push the same keys): it raises.

    Returns
    -------
    list of StaleRecord
        The records of the parameters that were skipped (empty when all were fresh).

    Raises
    ------
    StaleGradientError
        (a ``UserWarning`` too, like MXNet's own) when a stale parameter may not be
        skipped; nothing changed.
    SelectionError
        When ``allow_stale`` selects no parameter of the Trainer.
    SurgeryTypeError, SurgeryValueError
        A ``batch_size`` that is not a positive finite number; nothing changed.

    Examples
    --------
    >>> import mxnet as mx, paramsurgery as ps
    >>> from mxnet import autograd, gluon
    >>> from mxnet.gluon import nn
    >>> net = nn.HybridSequential(prefix='net_')
    >>> with net.name_scope():
    ...     net.add(nn.Dense(1, in_units=2), nn.Dense(1, in_units=2))
    >>> net.initialize(mx.init.One())
    >>> trainer = gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': 0.5})
    >>> with autograd.record():
    ...     loss = net[0](mx.nd.ones((1, 2))).sum()
    >>> loss.backward()
    >>> ps.safe_step(trainer, 1)
    Traceback (most recent call last):
    ...
    paramsurgery.errors.StaleGradientError: Step refused, nothing updated: 2 parameters ...
    >>> [r.name for r in ps.safe_step(trainer, 1, allow_stale='net_dense1_')]
    ['net_dense1_bias', 'net_dense1_weight']
    >>> net[0].weight.data(), net[1].weight.data()
    (
    [[0.5 0.5]]
    <NDArray 1x2 @cpu(0)>, 
    [[1. 1.]]
    <NDArray 1x2 @cpu(0)>)
    >>> ps.safe_step(trainer, 1, allow_stale='net_dense1_')
    Traceback (most recent call last):
    ...
    paramsurgery.errors.StaleGradientError: Step refused, nothing updated: 4 parameters ...
    """
    if not isinstance(trainer, gluon.Trainer):
        raise SurgeryTypeError('safe_step needs a gluon.Trainer, got %s.'
                               % type(trainer).__name__)
    batch_size = check_batch_size(batch_size)
    if isinstance(allow_stale, bool):
        raise SurgeryTypeError(
            "allow_stale takes a key (a name, regular expression, Parameter, list or callable), "
            "not %r. allow_stale='.*' skips every stale parameter." % allow_stale)
    params = collect(trainer)
    allowed = select(params, allow_stale) if allow_stale is not None else {}
    records = diagnose(params)
    kvstore, _, initialized = _mx.trainer_kvstore(trainer)
    distributed = _mx.is_distributed(kvstore)

    def skippable(rec):
        if rec.name not in allowed or distributed:
            return False
        # The Trainer's first step reads every parameter to create the kvstore.
        return initialized or not _mx.is_deferred(params[rec.name])

    if not all(skippable(rec) for rec in records):
        stale = list(OrderedDict.fromkeys(rec.name for rec in records))
        tail = ("To skip %s on purpose: ps.safe_step(trainer, batch_size, allow_stale=%r) "
                "(skipped parameters keep their values and optimizer state)."
                % ('it' if len(stale) == 1 else 'them', allow_key(stale, params)))
        if distributed and any(rec.name in allowed for rec in records):
            tail = ("The Trainer's kvstore '%s' is distributed: every worker must push the "
                    "same keys at every step, so a stale parameter cannot be skipped on one "
                    "worker. Make every worker back-propagate through every parameter, or "
                    "freeze the parameter (grad_req='null') on all workers before the first "
                    "step." % (kvstore if isinstance(kvstore, str) else kvstore.type))
        raise _stale_error(records, 'Step refused, nothing updated:',
                           allowed=[r.name for r in records if r.name in allowed], tail=tail)
    skipped = list(OrderedDict.fromkeys(rec.name for rec in records))
    if distributed:
        # dist_sync with update_on_kvstore=False: do the first broadcast before the step, or
        # it can race with the gradient all-reduce (docs/distributed.md). No-op otherwise.
        init_kvstore(trainer)
    with _mx.excluded_from_step([params[name] for name in skipped]):
        trainer.step(batch_size)
    # MXNet leaves the flags set when the kvstore updates the weights: without this, the
    # next step would apply the same gradients again.
    _consume(params.values())
    _new_step_for_trackers(params.values())
    return records


# --------------------------------------------------------------------------- explain

def _trainer_in_traceback(exc):
    tb = exc.__traceback__
    found = None
    while tb is not None:
        candidate = tb.tb_frame.f_locals.get('self')
        if isinstance(candidate, gluon.Trainer):
            found = candidate
        tb = tb.tb_next
    return found


def explain(exc: BaseException, trainer_or_params=None) -> StaleGradientError:
    """Turn MXNet's stale-gradient ``UserWarning`` into the diagnosis of :func:`safe_step`.

    MXNet's message names only the first stale parameter it met, and its failed check has
    already consumed the freshness flags of the parameters it passed (they were fresh).
    This parses the name and context from the message, takes the Trainer from the
    exception's traceback (or ``trainer_or_params``) and inspects every parameter, counting
    those MXNet passed as fresh.

    Parameters
    ----------
    exc : Exception
        The ``UserWarning`` raised by ``trainer.step`` / ``trainer.update`` (a
        :class:`StaleGradientError` is returned as is).
    trainer_or_params : Trainer or Block or ParameterDict or dict or list, default None
        Where the parameter lives; None means the Trainer found in the traceback.

    Returns
    -------
    StaleGradientError
        Its ``records`` list every stale parameter with its reason; raise it
        (``raise ps.explain(err) from err``) or print it.

    Raises
    ------
    SurgeryValueError
        When ``exc`` is not MXNet's stale-gradient warning.
    SurgeryTypeError
        When no Trainer is in the traceback and ``trainer_or_params`` is not given.

    Examples
    --------
    >>> import mxnet as mx, paramsurgery as ps
    >>> from mxnet import autograd, gluon
    >>> from mxnet.gluon import nn
    >>> net = nn.HybridSequential(prefix='net_')
    >>> with net.name_scope():
    ...     net.add(nn.Dense(1, in_units=2), nn.Dense(1, in_units=2))
    >>> net.initialize()
    >>> trainer = gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': 0.1})
    >>> with autograd.record():
    ...     loss = net[1](mx.nd.ones((1, 2))).sum()
    >>> loss.backward()
    >>> try:
    ...     trainer.step(1)
    ... except UserWarning as err:
    ...     diagnosis = ps.explain(err)
    >>> sorted({(r.name, r.reason) for r in diagnosis.records})
    [('net_dense0_bias', 'unused'), ('net_dense0_weight', 'unused')]
    """
    if isinstance(exc, StaleGradientError):
        return exc
    match = _MXNET_STALE.search(str(exc)) if isinstance(exc, BaseException) else None
    if match is None:
        raise SurgeryValueError(
            'explain() turns MXNet\'s "Gradient of Parameter `...` on context ... has not been '
            'updated by backward since last `step`" UserWarning into a diagnosis; got %s: %s'
            % (type(exc).__name__, str(exc)[:200]))
    name, ctx_text = match.group('name'), match.group('ctx')
    source = trainer_or_params if trainer_or_params is not None else _trainer_in_traceback(exc)
    if source is None:
        raise SurgeryTypeError(
            "explain() found no Trainer in the traceback of the warning about Parameter '%s'; "
            "pass it: ps.explain(err, trainer)." % name)
    params = collect(source)
    param = select(params, name)[name]  # a clear SelectionError if it is not there
    # The order MXNet checked in is the Trainer's (the last one built on the parameter,
    # when a net or a dict was given).
    trainer = source if isinstance(source, gluon.Trainer) else _mx.last_trainer(param)
    passed, tail = frozenset(), ''
    if trainer is not None and _mx.trainer_index(trainer, param) is not None:
        order = [p for p in _mx.trainer_params(trainer) if p.grad_req != 'null']
        failing = next((i for i, p in enumerate(order) if p is param), 0)
        passed = frozenset(id(p) for p in order[:failing])
        kvstore, update_on_kvstore, initialized = _mx.trainer_kvstore(trainer)
        if initialized and kvstore is not None and update_on_kvstore:
            # The check never consumes a flag in this mode: nothing to count as fresh.
            passed = frozenset()
            tail = ("MXNet raised after the kvstore had already applied this step to every "
                    "parameter, the stale ones included (update_on_kvstore=True): the "
                    "weights have changed. Use ps.safe_step, which checks first.")
        elif passed:
            tail = ("MXNet's failed step consumed the freshness flags of the %d parameters it "
                    "checked before '%s' (they were fresh; counted as fresh here): run "
                    "forward and backward again before stepping, and use ps.safe_step, which "
                    "checks before it consumes anything." % (len(passed), name))
    records = diagnose(params, assume_fresh=passed)
    if not records:
        raise SurgeryValueError(
            "Parameter '%s' on %s is no longer stale: it has had a new backward since MXNet's "
            "warning. Call ps.explain(err) right after the failed step." % (name, ctx_text))
    return _stale_error(records, "MXNet's step failed:", tail=tail)
