"""Operator handlers of the tracer for the operators without parameters: activations and
other channel-preserving operators, reshapes (attention heads included), reductions,
slices, concatenation and elementwise operators of several tensors.

Each handler is ``handler(node) -> layout``, as in :mod:`.layers`.
"""
import numpy as np

from .graph import (
    CHANNEL_FIRST,
    UNKNOWN,
    Along,
    Blocked,
    Lost,
    Segment,
    Split,
    axes_attr,
    flag,
    tuple_attr,
)
from .layers import coarsen, fold


def passthrough(n):
    if not n.only_input():
        return UNKNOWN
    if isinstance(n.in_segs[0], Along):
        return n.in_segs[0]
    if n.attrs.get('layout', 'None') not in CHANNEL_FIRST:
        # e.g. Pooling(layout='NHWC') on NCHW data pools across the channels
        return Lost("passes the operator %s ('%s') with layout='%s', which does not keep the "
                     "channels on axis 1 (the tracer follows layouts %s)"
                     % (n.node['op'], n.name, n.attrs['layout'], ', '.join(CHANNEL_FIRST[1:])))
    return n.in_segs[0]


def first_input(n):
    """Channel i of the first input is channel i of the output; the other inputs give a
    shape only (``like=`` tensors)."""
    a, b = n.in_shape(), n.out_shape()
    if not n.data or a is None or b is None or len(a) < 2 or len(b) < 2 or a[1] != b[1] or \
            len(n.data) != len(n.node['inputs']):
        return UNKNOWN
    return n.in_segs[0]


def reshape(n):
    # (N, C, ...) -> (N, C, ...) with the same number of entries per channel: each channel
    # keeps its block of entries (e.g. SE's (N, C) -> (N, C, 1, 1)).
    a, b = n.in_shape(), n.out_shape()
    segs = n.in_segs[0] if n.in_segs else None
    if n.only_input() and a and b and isinstance(segs, Along):
        out = _reshape_along(n, segs, tuple(a), tuple(b))
        if out is not None:
            return out
    elif n.only_input() and a and b and len(a) >= 2 and len(b) >= 2 and a[:2] == b[:2] and \
            all(st == 1 for _, _, st in segs):
        return segs
    elif n.only_input() and a and b and len(a) >= 3 and b == (a[0] * a[1],) + a[2:]:
        # (N, H, ...) -> (N * H, ...): attention heads merged into the batch axis
        return Along(segs, 0, a[1])
    if n.only_input() and a and b and segs is not None:
        out = _regroup(n, segs, tuple(a), tuple(b))
        if out is not None:
            return out
    return Blocked("passes the %s '%s', which reshapes %s into %s: the channel axis is not "
                    "kept" % (n.node['op'], n.name, a, b))


def _reshape_along(n, segs, a, b):
    """The reshapes of multi-head attention, on channels off axis 1, or None."""
    c = segs.at(len(a))
    if c == 0 and segs.inner > 1 and b == (a[0] // segs.inner, segs.inner) + a[1:]:
        return list(segs.segs)                     # (N * H, ...) -> (N, H, ...)
    if segs.inner != 1:
        return None
    kept_a = [k for k, d in enumerate(a) if d != 1]
    kept_b = [k for k, d in enumerate(b) if d != 1]
    if len(a) != len(b) and c in kept_a and [a[k] for k in kept_a] == [b[k] for k in kept_b]:
        # axes of size 1 added or removed (expand_dims to broadcast over the batch)
        at = kept_b[kept_a.index(c)]
        if at:
            return list(segs.segs) if at == 1 else Along(segs.segs, at - len(b))
    if c == len(a) - 1 and len(b) == len(a) + 1 and b[:-2] == a[:-1] and \
            b[-2] * b[-1] == a[-1]:
        # (..., H * D) -> (..., H, D): a channel becomes a head of D units
        per = b[-1]
        for sp, _, _ in segs.segs:
            n.spaces.heads[n.spaces.find(sp)].append(Split(n.name, 'attention heads', 'head'))
        if all(off % per == 0 and st % per == 0 for _, off, st in segs.segs):
            return Along([Segment(sp, off // per, st // per) for sp, off, st in segs.segs], -2)
        roots = {n.spaces.find(sp) for sp, _, _ in segs.segs}
        if len(segs.segs) == 1 and segs.segs[0][1:] == (0, 1) and \
                n.spaces.size[roots.pop()] == a[-1]:
            root = n.spaces.find(segs.segs[0][0])
            coarsen(n, root, per)
            return Along([Segment(segs.segs[0][0], 0, 1)], -2)
        return None
    if c == len(a) - 2 and b == a[:-2] + (a[-2] * a[-1],):
        # (..., H, D) -> (..., H * D): a head is D consecutive units
        per = a[-1]
        return Along([Segment(sp, off * per, st * per) for sp, off, st in segs.segs], -1)
    return None


def _regroup(n, segs, a, b, folded=False):
    """Reshapes that keep the batch axis and regroup the axes around the channel axis, or
    None: axes holding no channels merged into it from before (``(N, R, G, C/G) -> (N, R,
    C)``: G copies of the channels side by side), then split with the innermost new axis
    holding the channels (ResNeSt's radix splits, ``(N, R * C, ...) -> (N, R, C, ...)``:
    channel ``i`` of every split is one channel, so each split must hold the same channels
    in the same places; a whole space of ``R * C`` channels is folded into ``C``)."""
    if isinstance(segs, Along) and segs.inner != 1:
        return None
    c = segs.at(len(a)) if isinstance(segs, Along) else 1
    inner = list(segs.segs if isinstance(segs, Along) else segs)
    if c == 0 or not inner or a[0] != b[0]:
        return None
    pa, pb = np.cumprod((1,) + a).tolist(), np.cumprod((1,) + b).tolist()
    # the smallest run of axes around the channel axis that both shapes share
    common = set(pa[1:]) & set(pb[1:])
    lo = max(v for v in common if v <= pa[c])
    hi = min(v for v in common if v >= pa[c + 1])
    if hi != pa[c + 1]:
        return None             # axes after the channel axis merge into it (a flatten)
    axes = [k for k in range(1, len(b)) if pb[k] >= lo and pb[k + 1] <= hi and b[k] > 1]
    if not axes:
        return None
    at, per = axes[-1], b[axes[-1]]
    size = n.spaces.size
    find = n.spaces.find
    merged = [Segment(sp, o * a[c] + off, st) for o in range(pa[c] // lo) for sp, off, st in inner]
    if any(off // per != (off + size[find(sp)] * st - 1) // per for sp, off, st in merged):
        # a space across splits: one whole space of R * C channels becomes C channels
        if folded or any(st != 1 or off % per or size[find(sp)] % per
                         for sp, off, st in merged
                         if off // per != (off + size[find(sp)] - 1) // per):
            return None
        for root in sorted({find(sp) for sp, off, _ in merged
                            if off // per != (off + size[find(sp)] - 1) // per}):
            fold(n, root, size[root] // per)
        return _regroup(n, n.layout[tuple(n.data[0])], a, b, folded=True)
    splits = [sorted((off - j * per, st, find(sp)) for sp, off, st in merged
                     if off // per == j) for j in range(hi // lo // per)]
    if any(one != splits[0] for one in splits):
        return None
    if len(splits) > 1 and _counts_written(n, at, len(b)):
        for root in {sp for _, _, sp in splits[0]}:
            n.spaces.heads[root].append(Split(n.name, 'radix splits', 'channel'))
    out = [Segment(sp, off, st) for off, st, sp in splits[0]]
    return out if at == 1 else Along(out, at - len(b))


def _counts_written(n, axis, ndim):
    """Whether the reshape's ``shape`` writes the size of output ``axis`` as a number (which
    a block's attribute gave, and shrink must update) rather than 0 or -1 (derived)."""
    shape = tuple_attr(n.attrs.get('shape'))
    return n.node['op'] not in ('Reshape', 'reshape') or not shape or flag(
        n.attrs, 'reverse') or len(shape) != ndim or any(v is None or v < -1 for v in shape) \
        or shape[axis] not in (0, -1)


def reduction(n):
    # reducing spatial axes only keeps every channel where it was
    shape = n.in_shape() or ()
    axes = axes_attr(n.attrs.get('axis'), len(shape))
    segs = n.in_segs[0] if n.in_segs else None
    if isinstance(segs, Along):
        # e.g. the sum over the radix splits of split attention: the channel axis moves
        # down by the axes reduced before it
        c = segs.at(len(shape))
        if n.out_shape() is None:
            return UNKNOWN
        if n.only_input() and axes and 0 not in axes and c not in axes and segs.inner == 1 \
                and not flag(n.attrs, 'exclude'):
            at = c if flag(n.attrs, 'keepdims') else c - sum(1 for x in axes if x < c)
            return segs.segs if at == 1 else segs._replace(axis=at - len(n.out_shape()))
        return Blocked("passes the %s '%s' over axes %s, which reduces the channel axis"
                       % (n.node['op'], n.name, axes or 'all'))
    if n.only_input() and axes and min(axes) >= 2 and not flag(n.attrs, 'exclude') and \
            all(st == 1 for _, _, st in n.in_segs[0]):
        return n.in_segs[0]
    return Blocked("passes the %s '%s' over axes %s, which reduces the channel axis"
                    % (n.node['op'], n.name, axes or 'all'))


def _along_axis(n, axis, what):
    """An operator acting along one axis: it keeps channels when that axis is spatial."""
    ndim = len(n.in_shape() or ())
    if not n.only_input() or not ndim:
        return UNKNOWN
    segs = n.in_segs[0]
    if isinstance(segs, Along) and axis % ndim != segs.at(ndim):
        return segs
    if not isinstance(segs, Along) and axis % ndim >= 2:
        return segs
    return Blocked("passes the %s '%s' %s axis %d, which %s" % (
        n.node['op'], n.name, what, axis, 'mixes the channels' if axis % ndim == 1
        else 'mixes the samples of the batch'))


def softmax(n):
    if flag(n.attrs, 'use_length') and len(n.data) == 2 == len(n.node['inputs']):
        # the lengths (a row's valid entries, the same for every head) hold no channels
        for sp, _, _ in n.in_segs[1]:
            n.spaces.block(sp, "gives the lengths of the softmax '%s'" % n.name)
        n = n._replace(data=n.data[:1], in_segs=n.in_segs[:1],
                       node=dict(n.node, inputs=n.node['inputs'][:1]))
    return _along_axis(n, int(n.attrs.get('axis', -1)), 'over')


def sequence_mask(n):
    """``SequenceMask`` zeroes whole steps of the sequence axis: the channels on a third
    axis stay where they are; the lengths hold no channels."""
    segs, ndim = n.in_segs[0] if n.in_segs else None, len(n.in_shape() or ())
    axis = int(n.attrs.get('axis', 0))
    if not isinstance(segs, Along) or not ndim or segs.at(ndim) in (0, 1) or \
            segs.inner != 1 or len(n.data) != len(n.node['inputs']):
        return Blocked("passes the SequenceMask '%s' (axis=%d) with its channels on the "
                       "sequence or batch axis" % (n.name, axis))
    for sp, _, _ in (n.in_segs[1] if len(n.in_segs) > 1 else ()):
        n.spaces.block(sp, "gives the lengths of the SequenceMask '%s'" % n.name)
    return segs


def shape_only(n):
    """``arange_like``: the values come from the input's shape, so the input's channels are
    not read; the output holds none."""
    if not n.only_input():
        return UNKNOWN
    return Lost("reads the output of %s ('%s'), which holds positions, no channels"
                % (n.node['op'], n.name), blocks=False)


def _interleaved(n, segs, heads):
    """The space of the heads on the last axis of the interleaved query/key/value tensor
    ``segs`` (``(tokens, batch, heads * 3 * head units)``), or the reason it is not one."""
    shape = n.in_shape()
    what = "the %s '%s' (heads=%d)" % (n.node['op'], n.name, heads)
    if not isinstance(segs, Along) or segs.inner != 1 or len(shape) != 3 or \
            segs.at(3) != 2 or shape[-1] % (3 * heads):
        return 'passes %s with its channels not on the last axis of its interleaved input' \
            % what
    per = shape[-1] // heads
    spaces = n.spaces
    if len(segs.segs) == 1 and segs.segs[0][1:] == (0, 1) and \
            spaces.size[spaces.find(segs.segs[0][0])] == shape[-1]:
        coarsen(n, spaces.find(segs.segs[0][0]), per)     # one Dense making the heads
        segs = n.layout[tuple(n.data[0])]
    if len(segs.segs) != 1 or segs.segs[0][1:] != (0, per) or \
            spaces.size[spaces.find(segs.segs[0][0])] != heads:
        return 'passes %s with channels that are not its whole heads' % what
    space = spaces.find(segs.segs[0][0])
    spaces.heads[space].append(Split(n.name, 'attention heads', 'head', n.node['op']))
    return space


def interleaved_qk(n):
    """MXNet's fused self-attention scores: the heads of the interleaved projection (its
    last axis is ``(heads, 3, head units)``) become the heads merged into the batch axis of
    ``(batch * heads, tokens, tokens)``."""
    if not n.only_input():
        return UNKNOWN
    heads = int(n.attrs['heads'])
    space = _interleaved(n, n.in_segs[0], heads)
    if isinstance(space, str):
        return Blocked(space)
    return Along([Segment(space, 0, 1)], 0, heads)


def interleaved_valatt(n):
    """MXNet's fused attention-times-values: head ``h`` of the attention weights (merged
    into the batch axis) meets head ``h`` of the interleaved projection, and the output's
    last axis holds head ``h`` in its ``h``-th run of head units."""
    if len(n.data) != 2 or len(n.node['inputs']) != 2:
        return UNKNOWN
    heads = int(n.attrs['heads'])
    space = _interleaved(n, n.in_segs[0], heads)
    if isinstance(space, str):
        return Blocked(space)
    att = n.in_segs[1]
    if not isinstance(att, Along) or att.at(3) != 0 or att.inner != heads or \
            len(att.segs) != 1 or att.segs[0][1:] != (0, 1):
        return Blocked("passes the %s '%s' with attention weights whose heads are not "
                       "merged into the batch axis" % (n.node['op'], n.name))
    n.spaces.union(space, att.segs[0][0])
    return Along([Segment(space, 0, n.in_shape()[-1] // heads // 3)])


def slice_axis(n):
    return _along_axis(n, int(n.attrs.get('axis')), 'along')


def strided_slice(n):
    begin, end = tuple_attr(n.attrs.get('begin')), tuple_attr(n.attrs.get('end'))
    step = tuple_attr(n.attrs.get('step')) or []
    a, b = n.in_shape(), n.out_shape()
    if not n.only_input() or begin is None or end is None or step is None or not a or \
            len(a) < 2:
        return UNKNOWN
    whole = (len(begin) < 2 or begin[1] in (None, 0)) and \
        (len(end) < 2 or end[1] in (None, a[1])) and (len(step) < 2 or step[1] in (None, 1))
    if whole and b and b[1] == a[1]:
        return n.in_segs[0]
    return Blocked("passes the slice '%s' (begin=%s, end=%s), which slices the channel "
                    "axis" % (n.name, n.attrs.get('begin'), n.attrs.get('end')))


def slice_like(n):
    axes = tuple_attr(n.attrs.get('axes', '()'))
    ndim = len(n.in_shape() or ())
    if axes and ndim and all(int(a) % ndim >= 2 for a in axes) and len(n.data) == 2 and \
            len(n.node['inputs']) == 2:
        return n.in_segs[0]
    return Blocked("passes the slice_like '%s' with axes=%s, which may slice the channel axis "
                    "(give axes=(2, 3) to crop spatial axes only)"
                    % (n.name, n.attrs.get('axes', '()')))


def pad(n):
    width = tuple_attr(n.attrs.get('pad_width'))
    if not n.only_input() or not width:
        return UNKNOWN
    if any(width[:4]):
        return Blocked("passes the Pad '%s' with pad_width=%s, which pads the batch or channel "
                        "axis" % (n.name, n.attrs.get('pad_width')))
    return n.in_segs[0]


def upsampling(n):
    if n.attrs.get('sample_type', 'nearest') != 'nearest' or int(n.attrs.get('num_args', 1)) \
            != 1:
        return Blocked("passes the UpSampling '%s' (sample_type=%s, num_args=%s): the tracer "
                        "follows nearest upsampling of one tensor" % (
                            n.name, n.attrs.get('sample_type', 'nearest'),
                            n.attrs.get('num_args', 1)))
    return passthrough(n)


def transpose(n):
    axes = tuple_attr(n.attrs.get('axes', '()'))
    segs = n.in_segs[0] if n.in_segs else None
    ndim = len(n.in_shape() or ())
    if n.only_input() and axes and len(axes) == ndim and ndim >= 2 and \
            (not isinstance(segs, Along) or segs.inner == 1):
        at = axes.index(segs.at(ndim) if isinstance(segs, Along) else 1)
        inner = segs.segs if isinstance(segs, Along) else segs
        if at == 1:
            return inner
        if at != 0:
            return Along(inner, at - ndim)
    return Blocked("passes the transpose '%s' (axes=%s), which moves the channel axis"
                    % (n.name, n.attrs.get('axes', '()')))


def swapaxis(n):
    ndim = len(n.in_shape() or ())
    dims = {int(n.attrs.get('dim1', 0)) % ndim, int(n.attrs.get('dim2', 0)) % ndim} \
        if ndim else {0}
    segs = n.in_segs[0] if n.in_segs else None
    if n.only_input() and isinstance(segs, Along) and segs.inner == 1:
        at = segs.at(ndim)
        if at not in dims or len(dims) == 1:
            return segs          # e.g. an RNN layer's NTC <-> TNC swap of batch and time
        to = (dims - {at}).pop()
        if to == 1:
            return segs.segs
        if to != 0:
            return segs._replace(axis=to - ndim)
    elif n.only_input() and not isinstance(segs, Along) and (min(dims) >= 2 or
                                                                 len(dims) == 1):
        return segs
    return Blocked("passes the SwapAxis '%s' (dim1=%s, dim2=%s), which moves the channel "
                    "axis" % (n.name, n.attrs.get('dim1', 0), n.attrs.get('dim2', 0)))


def batch_dot(n):
    """Attention's batch_dot on heads merged into the batch axis: head h of one input meets
    head h of the other, so their channels are the same channels."""
    if len(n.data) != 2 or len(n.node['inputs']) != 2:
        return UNKNOWN
    a, b = n.in_segs
    if isinstance(a, Along) and isinstance(b, Along) and a.at(3) == b.at(3) == 0 and \
            a.inner == b.inner > 1 and len(n.in_shape(0)) == len(n.in_shape(1)) == 3:
        if [(o, st) for _, o, st in a.segs] == [(o, st) for _, o, st in b.segs] and \
                [n.spaces.size[n.spaces.find(sp)] for sp, _, _ in a.segs] == \
                [n.spaces.size[n.spaces.find(sp)] for sp, _, _ in b.segs]:
            for (x, _, _), (y, _, _) in zip(a.segs, b.segs):
                n.spaces.union(x, y)
            return a
    return Blocked("passes the batch_dot '%s', which the tracer follows on attention heads "
                    "merged into the batch axis only" % n.name)


def flatten(n):
    if len(n.data) != 1:
        return UNKNOWN
    shape = n.in_shape()
    mult = int(np.prod(shape[2:])) if shape and len(shape) > 2 else 1
    return [Segment(sp, off * mult, st * mult) for sp, off, st in n.in_segs[0]]


def concat(n):
    dim = int(n.attrs.get('dim', 1))
    shape0 = n.in_shape()
    if len(n.data) != len(n.node['inputs']) or shape0 is None:
        return UNKNOWN
    if dim not in (1, 1 - len(shape0)):
        return Blocked("passes the Concat '%s' along axis %d: the tracer follows channels on "
                        "axis 1 only" % (n.name, dim))
    out, base = [], 0
    for entry, segs in zip(n.data, n.in_segs):
        out.extend(Segment(sp, base + off, st) for sp, off, st in segs)
        base += n.trace.shape(*entry)[1]
    return out


def elementwise(n):
    trace, spaces, data, in_segs = n.trace, n.spaces, n.data, n.in_segs
    shapes = [trace.shape(*e) for e in data]
    out_shape = n.out_shape()
    if any(isinstance(s, Along) for s in in_segs):
        return _elementwise_last(n, shapes, out_shape)
    if out_shape is None or len(out_shape) < 2 or any(s is None for s in shapes):
        return UNKNOWN
    channels = out_shape[1]
    # Parameters combined with the tensor (a per-channel scale or shift): members on axis 1.
    for pid, _, _ in n.node['inputs']:
        if pid not in n.param_src:
            continue
        pshape = trace.shape(pid)     # a variable, or weight * mask
        if pshape is None or len(pshape) != len(out_shape):
            return UNKNOWN
        if pshape[1] == channels and channels > 1:
            for entry, segs in zip(data, in_segs):
                if trace.shape(*entry)[1] == channels:
                    for sp, off, st in segs:
                        spaces.add(sp, n.param_src[pid], 1, off, st, 'scale')
                    break
    full = [(e, s, segs) for e, s, segs in zip(data, shapes, in_segs)
            if len(s) == len(out_shape) and s[1] == channels]
    others = [s for s in shapes if not (len(s) == len(out_shape) and s[1] == channels)]
    if not full or any(len(s) == len(out_shape) and s[1] != 1 for s in others) or \
            any(len(s) != len(out_shape) for s in others):
        return UNKNOWN
    if channels == 1 and len(full) < len(data):
        return UNKNOWN
    first = full[0][2]
    for _, _, segs in full[1:]:
        if [(o, st) for _, o, st in segs] != [(o, st) for _, o, st in first] or \
                [spaces.size[spaces.find(sp)] for sp, _, _ in segs] != \
                [spaces.size[spaces.find(sp)] for sp, _, _ in first]:
            reason = ("meets channels laid out differently (another concatenation or grouping) "
                      "in %s ('%s')" % (n.node['op'], n.name))
            for _, _, s in full:
                for sp, _, _ in s:
                    spaces.block(sp, reason)
            return Blocked(reason)
    for _, _, segs in full[1:]:
        for (a, _, _), (b, _, _) in zip(first, segs):
            spaces.union(a, b)
    return first


def _elementwise_last(n, shapes, out_shape):
    """Elementwise operators on channels off axis 1 (a transformer's residual add on the last
    axis, split attention's weights times its radix splits): every input holds the same
    channels on that axis, or broadcasts one value over them."""
    spaces = n.spaces
    if out_shape is None or any(shape is None or len(shape) != len(out_shape)
                                for shape in shapes):
        return UNKNOWN
    c = next(s for s in n.in_segs if isinstance(s, Along)).at(len(out_shape))
    # the inputs holding the channels (split attention's weights broadcast over H and W),
    # and those broadcasting one value over them
    full = [segs for segs, shape in zip(n.in_segs, shapes) if shape[c] == out_shape[c]]
    if len(n.data) != len(n.node['inputs']) or not full or any(
            shape[c] != out_shape[c] and shape[c] != 1 for shape in shapes):
        return UNKNOWN
    if not all(isinstance(segs, Along) and segs.at(len(out_shape)) == c for segs in full):
        reason = ("meets, in %s ('%s'), a tensor of the same shape whose last axis holds no "
                  "channel the tracer follows" % (n.node['op'], n.name))
        for segs in full:
            for sp, _, _ in (segs.segs if isinstance(segs, Along) else segs):
                spaces.block(sp, reason)
        return Blocked(reason)
    first = full[0].segs
    for segs in full[1:]:
        if [(o, st) for _, o, st in segs.segs] != [(o, st) for _, o, st in first] or \
                [spaces.size[spaces.find(sp)] for sp, _, _ in segs.segs] != \
                [spaces.size[spaces.find(sp)] for sp, _, _ in first]:
            return Blocked("meets channels laid out differently in %s ('%s')"
                            % (n.node['op'], n.name))
        for (a, _, _), (b, _, _) in zip(first, segs.segs):
            spaces.union(a, b)
    return full[0]
