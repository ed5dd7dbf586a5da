"""The diagnosis behind :func:`paramsurgery.find_stale`: which replicas hold a stale
gradient, the reason of each (:data:`STALE_REASONS`), and one message per group of records
that share a reason and a cause, naming the block that did not run and the fix."""
import os
import re
from collections import OrderedDict
from typing import List, NamedTuple

import mxnet as mx
from mxnet import gluon
from mxnet.gluon.parameter import Parameter

from . import _mx
from ._usage import describe, tracker_for
from .errors import ParamSurgeryError, SurgeryTypeError, and_more
from .select import all_params, select

__all__ = []

#: Reason codes of :class:`StaleRecord`.
STALE_REASONS = ('unused', 'no-backward', 'not-a-leaf', 'flags-reset', 'partial-context')


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


def allow_key(names, params):
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
    messages = {key: _fill(key[1], names, ctxs, allow_key(names, params))
                for key, (names, ctxs) in groups.items()}
    return [StaleRecord(name, ctx, reason, messages[(reason, template)])
            for name, ctx, reason, template in raw]


def collect(trainer_or_params) -> 'OrderedDict[str, Parameter]':
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


def diagnose(params, usage=None, assume_fresh=frozenset()) -> List[StaleRecord]:
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
