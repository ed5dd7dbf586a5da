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
import os
import re
from collections import OrderedDict
from typing import Any, List, NamedTuple, Optional

import mxnet as mx
from mxnet import gluon
from mxnet.gluon.parameter import Parameter

from . import _mx
from ._checks import check_batch_size
from ._usage import TRACKERS, UsageTracker, describe, track_usage, tracker_for
from .distributed import init_kvstore
from .errors import (
    ParamSurgeryError,
    StaleGradientError,
    SurgeryTypeError,
    SurgeryValueError,
    and_more,
)
from .select import all_params, select

__all__ = ['STALE_REASONS', 'StaleRecord', 'UsageTracker', 'find_stale', 'track_usage',
           'safe_step', 'explain']

# Its public home: reprs, pickles and the API pages name it here.
UsageTracker.__module__ = __name__

#: Reason codes of :class:`StaleRecord`.
STALE_REASONS = ('unused', 'no-backward', 'not-a-leaf', 'flags-reset', 'partial-context')

_MXNET_STALE = re.compile(r"Gradient of Parameter `(?P<name>.+?)` on context (?P<ctx>\S+) "
                          r"has not been updated by backward")


class StaleRecord(NamedTuple):
    """One stale (parameter, context) found by :func:`find_stale`.

    Attributes
    ----------
    name : str
        Full name of the parameter.
    context : Context
        The replica concerned.
    reason : str
        One of :data:`STALE_REASONS`.
    message : str
        Why the gradient is stale, and the fix.
    """
    name: str
    context: mx.Context
    reason: str
    message: str

    def __str__(self):
        return '[%s] %s on %s: %s' % (self.reason, self.name, self.context, self.message)

    def __repr__(self):
        # find_stale returns one record per (parameter, context), most sharing one long
        # message: a list of them printed in full would repeat it on every line
        return 'StaleRecord(name=%r, context=%s, reason=%r)' % (self.name, self.context,
                                                                 self.reason)


# --------------------------------------------------------------------------- diagnosis

# Messages are written once per group of records that share a reason and a cause (the same
# block, the same contexts): they are built as templates with these placeholders, grouped,
# then filled with the group's parameter names, contexts and a key for allow_stale.
_P = '\x00P'    # "Parameter 'a'" or "Parameters 'a', 'b'"
_C = '\x00C'    # the contexts: "cpu(0)" or "cpu(0), cpu(1)"
_A = '\x00A'    # an allow_stale key selecting exactly the group
_W = '\x00W'    # was / were
_H = '\x00H'    # has / have
_I = '\x00I'    # its / their
_T = '\x00T'    # it / them

_FIX_UNUSED = (
    "Fix: make " + _I + " block take part in the loss; or, if leaving " + _T + " out of this "
    "step is intended, skip " + _T + " explicitly with ps.safe_step(trainer, batch_size, "
    "allow_stale=" + _A + ") or freeze " + _T + " (param.grad_req = 'null'). Avoid "
    "ignore_stale_grad=True: under update_on_kvstore=True (the multi-device default) it still "
    "applies the old gradient.")


def _why(tracker, param, ctx):
    """:meth:`UsageTracker._why_not_read` as a template (context and pronoun left open)."""
    text = tracker._why_not_read(param, ctx).replace(str(ctx), _C)
    return re.sub(r'\bits ', _I + ' ', text)


def _msg_unused(ctx, tracker, read, param, deferred=False):
    if deferred:
        why = (_P + " " + _W + " never initialised on " + _C + ": initialisation waits for the "
               "first forward through the block, and no forward has run that block. MXNet's "
               "trainer.step cannot even start with " + _T + ". ")
        return why + ("Fix: run the block once (e.g. net(x) on a sample batch) before "
                      "training, or leave " + _T + " out of this Trainer.")
    if tracker is None:
        why = (_P + " got no gradient on " + _C + " from the last backward, while other "
               "parameters did: " + _I + " block did not run (a branch not taken, an unused "
               "head) or its output did not reach the loss. Run the forward inside `with "
               "ps.track_usage(net):` to see which block, and to tell this apart from a "
               "freshness flag reset by a grad_req change, cast, reset_ctx or "
               "re-initialisation. ")
    elif read is not None:
        why = (_P + " " + _W + " read by block %s on " + _C + "%s, but the backward did not "
               "reach " + _T + ": the output that depends on " + _T + " did not feed the loss "
               "that was back-propagated%s. ") % (
                   describe(read.block),
                   '' if read.recording else ' outside autograd.record()',
                   '' if read.recording else ', and an unrecorded forward has no gradient')
    else:
        why = _P + " got no gradient on " + _C + ": " + _why(tracker, param, ctx) + " "
    return why + _FIX_UNUSED


def _msg_partial(ctx, fresh_ctxs, tracker, param):
    detail = ''
    if tracker is not None and tracker._read_on(param, ctx) is None:
        detail = ' (%s)' % _why(tracker, param, ctx).rstrip('.')
    return (_P + " " + _H + " a fresh gradient on %s but not on " + _C + ": the "
            "forward/backward on " + _C + " did not use " + _T + ".%s The kvstore sums the "
            "replicas' gradients, so a step would mix in the old gradient of " + _C + " (and "
            "without a kvstore the replicas would drift apart). Fix: give every context its "
            "slice of each batch (gluon.utils.split_and_load(batch, ctx_list)), run the same "
            "blocks on each and back-propagate every context's loss; or skip " + _T + " with "
            "ps.safe_step(..., allow_stale=" + _A + ").") % (
                '[%s]' % ', '.join(str(c) for c in fresh_ctxs), detail)


def _msg_no_backward():
    return (_P + " on " + _C + ": no parameter has a fresh gradient, so there was no "
            "backward() since the last step (or the gradients came from autograd.grad(), "
            "which does not mark them fresh, or a trainer.step that raised consumed them). "
            "Stepping now would apply the old gradients again, which MXNet does silently when "
            "the kvstore updates the weights (update_on_kvstore=True). Fix: run the forward "
            "inside autograd.record() and call loss.backward() (or autograd.backward(losses)) "
            "before every step.")


def _msg_flags_reset(read):
    return ((_P + " " + _W + " read by block %s on " + _C + ", but " + _I + " gradient buffer "
            "was replaced after that forward: a grad_req change, cast, reset_ctx or "
            "re-initialisation re-creates the buffers and clears the freshness flag, so the "
            "gradient of that backward is lost. Fix: make such changes before the forward (or "
            "right after a step), then run forward and backward again. Skipping " + _T + " "
            "(ignore_stale_grad or allow_stale) would leave " + _T + " untrained for this "
            "step.") % describe(read.block))


def _msg_not_a_leaf(bare):
    if bare:
        return (_P + ": _data is a bare NDArray, not a list with one autograd variable per "
                "context, so no replica can receive a gradient. Fix: never assign _data; "
                "write values with ps.set_params/ps.assign_params (see ps.check_params for "
                "the repair).")
    return (_P + " on " + _C + ": the replica is a computed array, not the autograd variable "
            "bound to the gradient buffer (e.g. _data was rebound to w * mask inside "
            "autograd.record(), the old blog recipe). Backward never marks it, the Trainer "
            "cannot update the real weight, and with update_on_kvstore=True a step writes the "
            "new weight into the computed array. Fix: put masks in the graph (ps.apply_mask) "
            "and write values with ps.assign_params/ps.set_params; repair it with "
            "param.reset_ctx(param.list_ctx()), which re-creates leaf replicas from the "
            "current values.")


def _allow_key(names, params):
    """The shortest ``allow_stale`` key that selects exactly ``names`` among ``params``: the
    name itself, a regular expression on their common prefix, or the list of names."""
    if len(names) == 1:
        return names[0]
    prefix = os.path.commonprefix(names)
    if prefix:
        pattern = re.escape(prefix) + '.*'
        try:
            chosen = select(params, pattern)
        except ParamSurgeryError:
            chosen = {}
        if set(chosen) == set(names):
            return pattern
    return list(names)


def _fill(template, names, ctxs, allow):
    plural = len(names) > 1
    subject = ('Parameters %s' % and_more(names, shown=6) if plural
               else "Parameter '%s'" % names[0])
    for mark, text in ((_P, subject), (_C, ', '.join(str(c) for c in ctxs)),
                       (_A, repr(allow)), (_W, 'were' if plural else 'was'),
                       (_H, 'have' if plural else 'has'), (_I, 'their' if plural else 'its'),
                       (_T, 'them' if plural else 'it')):
        template = template.replace(mark, text)
    return template


def _grouped(raw, params):
    """StaleRecords from ``raw`` ``(name, ctx, reason, template)``: records that share a
    reason and a template (the same cause) share one message naming all of them."""
    groups = OrderedDict()
    for name, ctx, reason, template in raw:
        names, ctxs = groups.setdefault((reason, template), ([], []))
        if name not in names:
            names.append(name)
        if ctx not in ctxs:
            ctxs.append(ctx)
    messages = {key: _fill(key[1], names, ctxs, _allow_key(names, params))
                for key, (names, ctxs) in groups.items()}
    return [StaleRecord(name, ctx, reason, messages[(reason, template)])
            for name, ctx, reason, template in raw]


def _collect(trainer_or_params) -> 'OrderedDict[str, Parameter]':
    if isinstance(trainer_or_params, gluon.Trainer):
        return OrderedDict((p.name, p) for p in _mx.trainer_params(trainer_or_params))
    if isinstance(trainer_or_params, (list, tuple)):
        for item in trainer_or_params:
            if not isinstance(item, Parameter):
                raise SurgeryTypeError(
                    'find_stale takes a Trainer, a Block, a ParameterDict, a dict of name -> '
                    'Parameter or a list of Parameters; the list holds a %s.'
                    % type(item).__name__)
        return OrderedDict((p.name, p) for p in trainer_or_params)
    try:
        return all_params(trainer_or_params)
    except SurgeryTypeError:
        raise SurgeryTypeError(
            'find_stale takes a Trainer, a Block, a ParameterDict, a dict of name -> Parameter '
            'or a list of Parameters, got %s.' % type(trainer_or_params).__name__) from None


def _states(param, assume_fresh):
    """``[(ctx, state)]`` with state 'fresh', 'stale', 'not-a-leaf', 'bare' or 'deferred'."""
    ctxs = _mx.context_list(param)
    if ctxs is None:
        return []  # never initialised: there is no gradient to speak of
    if _mx.is_deferred(param):
        return [(ctx, 'deferred') for ctx in ctxs]
    data = _mx.raw_data(param)
    if not isinstance(data, (list, tuple)):
        return [(ctx, 'bare') for ctx in ctxs]
    states = []
    for i, ctx in enumerate(ctxs):
        arr = data[i] if i < len(data) else None
        if arr is None or not _mx.is_leaf(arr):
            states.append((ctx, 'not-a-leaf'))
        elif id(param) in assume_fresh or _mx.fresh_grad(arr):
            states.append((ctx, 'fresh'))
        else:
            states.append((ctx, 'stale'))
    return states


def _diagnose(params, usage=None, assume_fresh=frozenset()) -> List[StaleRecord]:
    table = [(name, param, _states(param, assume_fresh)) for name, param in params.items()
             if param.grad_req != 'null']
    any_fresh = any(state == 'fresh' for _, _, states in table for _, state in states)
    raw = []
    for name, param, states in table:
        fresh_ctxs = [ctx for ctx, state in states if state == 'fresh']
        tracker = tracker_for(param, usage)
        for ctx, state in states:
            if state == 'fresh':
                continue
            if state in ('not-a-leaf', 'bare'):
                raw.append((name, ctx, 'not-a-leaf', _msg_not_a_leaf(state == 'bare')))
                continue
            if state == 'deferred':
                raw.append((name, ctx, 'unused', _msg_unused(ctx, tracker, None, param, True)))
                continue
            read = tracker._read_on(param, ctx) if tracker is not None else None
            if read is not None and read.grads is not _mx.raw_grad(param):
                raw.append((name, ctx, 'flags-reset', _msg_flags_reset(read)))
            elif not any_fresh:
                raw.append((name, ctx, 'no-backward', _msg_no_backward()))
            elif fresh_ctxs:
                raw.append((name, ctx, 'partial-context',
                            _msg_partial(ctx, fresh_ctxs, tracker, param)))
            else:
                raw.append((name, ctx, 'unused', _msg_unused(ctx, tracker, read, param)))
    return _grouped(raw, params)


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
    return _diagnose(_collect(trainer_or_params), usage)


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
    params = _collect(trainer)
    allowed = select(params, allow_stale) if allow_stale is not None else {}
    records = _diagnose(params)
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
                % ('it' if len(stale) == 1 else 'them', _allow_key(stale, params)))
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
    params = _collect(source)
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
    records = _diagnose(params, assume_fresh=passed)
    if not records:
        raise SurgeryValueError(
            "Parameter '%s' on %s is no longer stale: it has had a new backward since MXNet's "
            "warning. Call ps.explain(err) right after the failed step." % (name, ctx_text))
    return _stale_error(records, "MXNet's step failed:", tail=tail)
