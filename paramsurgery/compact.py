"""Compact parameter files: as small as the information in them, bit-exact.

Each array is stored dense, or as a packed bit mask of its nonzero entries (deflated)
plus those entries' values, whichever is smaller. "Nonzero" is read on the bits (the array
viewed as unsigned integers), so ``-0.0`` and every NaN payload count as values and come back
bit for bit. A mask whose nonzero pattern is that of an array already stored (an update-mode
mask over its zeroed weight) is stored as a reference to it, and a sparse array whose values
are all equal (a mask's ones) as one value. See ``docs/deploy.md#compact-files``.

The file: the magic line, an 8-byte header length, the JSON header, then the blobs it
describes (offset, length and checksum of each: a 64-bit sum of words weighted by their
position in format 3, of 4 KiB blocks weighted by theirs in format 2, a CRC-32 in format 1),
so damage anywhere is found before anything is loaded.
"""
import concurrent.futures
import json
import math
import os
import queue
import struct
import zlib
from collections import OrderedDict
from typing import List

import numpy as np
from mxnet import autograd, gluon

from . import _mx
from ._blobs import CHECKS, WRITEBACK, Blob, checksum, pack, pool, read_blob, start_writeback
from ._checks import check_flag
from ._files import atomic_write, check_path, reading
from .access import data_on
from .errors import FileFormatError, SurgeryTypeError, SurgeryValueError, and_more
from .masks import apply_mask, masked
from .masks.apply import mode_of
from .select import MASK_SUFFIX, all_params

__all__ = ['save_compact', 'load_compact']

MAGIC = b'paramsurgery-compact\n'
VERSION = 3
_FIX = ('Write it again with ps.save_compact(net, path), or pass the file it wrote '
        '(docs/deploy.md#compact-files).')


def _unsigned(arr):
    """``arr`` viewed as unsigned integers of its item size, flat."""
    flat = np.ascontiguousarray(arr).reshape(-1)
    return flat.view(np.dtype('u%d' % flat.dtype.itemsize))


def _sign_bit(dtype):
    """The sign bit of a float dtype as an unsigned integer (0 for integer dtypes)."""
    if dtype.kind != 'f':
        return 0
    return 1 << (8 * dtype.itemsize - 1)


class _Writer:
    """Collects the blobs of one or more arrays and the header entries that describe them.

    Offsets are relative to this writer's first blob until :func:`write_compact` shifts
    them: each array gets its own writer, so arrays are encoded on several threads (zlib,
    and numpy's passes release the GIL) and their blobs laid out in order afterwards."""

    def __init__(self, patterns=None):
        self.blobs, self.refs, self.size = [], [], 0
        #: packed bit mask -> its blob reference, shared between writers: a mask whose
        #: pattern another array already stored refers to that blob
        self.patterns = {} if patterns is None else patterns

    def blob(self, data, how='raw'):
        if not isinstance(data, bytes):  # a view of an array: written as it is, not copied
            data = memoryview(np.ascontiguousarray(data)).cast('B') \
                if isinstance(data, np.ndarray) else memoryview(data).cast('B')
        self.blobs.append(data)
        self.size += len(data)
        ref = [how] + list(Blob(self.size - len(data), len(data), checksum(data)))
        self.refs.append(ref)
        return ref

    def array(self, arr):
        """The header entry of ``arr``: dense bytes, or the bit mask of its nonzero entries
        with their values, whichever is smaller.

        ``-0.0`` is a zero of the mask; when some zero is negative (a pruned weight's zeros
        carry the sign of the weight they replaced) the sign bits of all entries are stored
        as a second bit mask, which the reader turns into the zeros' bits in one pass (storing
        the zeros' signs alone took a gather on writing and a scatter on reading: four times
        the time, for 1 bit per kept value less). The values are split in byte planes: the
        plane of the sign and exponent bits of large weights compresses to a few bits."""
        entry = {'dtype': arr.dtype.str, 'shape': list(arr.shape)}
        u = _unsigned(arr)
        sign = _sign_bit(arr.dtype)
        # counted on the bits first: most arrays of a net have no zero bits, and those are
        # stored dense without building the mask (one whose zeros are all -0.0 too: only a
        # size lost, on an array no pruning makes)
        stored = int(np.count_nonzero(u))                    # -0.0 counts here
        nonzero = None
        if stored < u.size and sign:
            # on the float values: NaN != 0 and -0.0 == 0, as on the bits without the sign,
            # in a quarter of the time of masking the bits first
            nonzero = np.asarray(arr).reshape(-1) != 0
            count = int(np.count_nonzero(nonzero))
        else:
            count = stored
        # all equal (a mask's ones, a fresh BatchNorm); a few entries tell most arrays apart
        if count == u.size and (u[:64] == u[0]).all() and (u == u[0]).all():
            entry.update(kind='constant', data=self.blob(u[:1].tobytes()))
            return entry
        mask_bytes = (u.size + 7) // 8
        if mask_bytes * (1 + (stored != count)) + count * u.itemsize >= u.nbytes:
            entry.update(kind='dense', data=self.blob(u))
            return entry
        if nonzero is None:
            nonzero = u != 0
        bits = np.packbits(nonzero).tobytes()
        entry.update(kind='sparse', count=count)
        known = self.patterns.get(bits)
        if known is None:
            known = self.patterns[bits] = self.blob(*reversed(pack(bits)))
        entry['bits'] = known
        if stored != count:  # some -0.0
            entry['signs'] = self.blob(*reversed(pack(np.packbits(
                np.signbit(np.asarray(arr).reshape(-1))))))
        values = np.compress(nonzero, u)   # a quarter faster than u[nonzero]
        if count and (values == values[0]).all():
            entry['fill'] = self.blob(values[:1].tobytes())
            return entry
        planes = values.view(np.uint8).reshape(count, u.itemsize)
        # a plane has no runs (the zeros are gone): Huffman coding alone, on the sign and
        # exponent plane of resnet50_v1 1% smaller and a quarter faster than with Z_RLE
        entry['planes'] = [self.blob(*reversed(pack(np.ascontiguousarray(planes[:, i]),
                                                     zlib.Z_HUFFMAN_ONLY)))
                           for i in range(u.itemsize)]
        return entry


def _first_array(param):
    """The NDArray on the first context (data_on names a parameter not initialised)."""
    ctxs = _mx.context_list(param)
    return data_on(param, ctxs[0] if ctxs else None)


def save_compact(net, path, *, masks: bool = True) -> List[str]:
    """Save the parameters of ``net`` in a file whose size follows the information in it.

    The parameters are keyed by structural name, as ``save_parameters`` keys them. Each array
    is stored dense or as a packed bit mask of its nonzero entries (losslessly compressed) plus
    their values, whichever is smaller; after :func:`load_compact` every value is bit-exact
    (``-0.0`` stays ``-0.0``). A 90% sparse net takes about an eighth of its
    ``save_parameters`` file, a dense one the same. Values are read from the first context
    (where ``save_parameters`` averages the replicas, which are equal). The file is written
    atomically. See ``docs/deploy.md#compact-files``.

    Parameters
    ----------
    net : Block
        The network (initialised).
    path : str or os.PathLike
        The file to write.
    masks : bool, default True
        Store the masks and their modes (:func:`load_compact` restores them). With False no
        mask is stored and the weights are stored as they are: bake graph-mode masks first
        (:func:`remove_mask`) to keep their effect.

    Returns
    -------
    list of str
        The structural names saved (masks not included).

    Raises
    ------
    SurgeryTypeError, SurgeryValueError
        ``net`` is not a Block, a bad ``path`` or ``masks``.
    ParameterStateError
        A parameter is not initialised.

    Examples
    --------
    >>> import os, tempfile, mxnet as mx, paramsurgery as ps
    >>> from mxnet.gluon import nn
    >>> net = nn.Dense(100, in_units=100, prefix='fc_')
    >>> net.initialize()
    >>> ps.prune_magnitude(net, net.weight, 0.9, mode='update')
    ['fc_weight']
    >>> folder = tempfile.mkdtemp()
    >>> ps.save_compact(net, os.path.join(folder, 'net.compact'))
    ['bias', 'weight']
    >>> net.save_parameters(os.path.join(folder, 'net.params'))
    >>> sizes = [os.path.getsize(os.path.join(folder, f)) for f in ('net.compact', 'net.params')]
    >>> sizes[0] < 0.2 * sizes[1]
    True
    """
    if not isinstance(net, gluon.Block):
        raise SurgeryTypeError('save_compact needs a gluon.Block, got %s.' % type(net).__name__)
    path = check_path('path', path, write=True)
    masks = check_flag('masks', masks)
    # the net walked once for its parameters and once for their structural names (each walk
    # of resnet50_v1 takes 7 ms: walking it for every question took a tenth of the round trip)
    params = all_params(net)
    masked_names = masked(params)
    mask_ids = set(id(params[n + MASK_SUFFIX]) for n in masked_names)
    names = OrderedDict()
    for sname, param in _mx.structural_names(net).items():
        if id(param) not in mask_ids:
            names.setdefault(id(param), (param, []))[1].append(sname)
    # (structural_keys(net), without walking the net again)
    keys = {pid: snames[0] for pid, (_, snames) in names.items()} if masks else {}
    mask_pairs = [(keys[id(params[name])], params[name], params[name + MASK_SUFFIX])
                  for name in masked_names if id(params[name]) in keys]
    # (a mask whose weight is not in keys is not reachable through save_parameters' names)
    # every check before anything is read (and before the encoding threads start)
    arrays = [(sorted(k), _first_array(p)) for p, k in names.values()]
    saved_masks = [(key, _first_array(mask), mode_of(weight, mask))
                   for key, weight, mask in mask_pairs]
    with autograd.pause():
        # views of the arrays' memory (copies of those in oneDNN's blocked layout, all queued
        # at the first: copies taken while the encoding threads ran each waited for the GIL
        # behind them, a 10% slower save_compact on 2 cores), read as they are encoded
        write_compact(path, arrays, saved_masks, _mx.host_arrays(
            [arr for _, arr in arrays] + [arr for _, arr, _ in saved_masks]))
    return sorted(k for _, names_of in names.values() for k in names_of)


#: the longest blob reference of a header: offsets, lengths and checksums are below 2**64
_WORST_REF = ['raw', (1 << 64) - 1, (1 << 64) - 1, (1 << 64) - 1]


def _header(arrays, masks, reserve=0):
    """The JSON header of the entries ``arrays`` and ``masks``, padded with spaces (which
    JSON ignores) to ``reserve`` bytes."""
    return json.dumps({'format': 'paramsurgery-compact', 'version': VERSION, 'arrays': arrays,
                       'masks': masks}).encode('utf-8').ljust(reserve)


def _header_bound(arrays, masks):
    """The most bytes the header of ``arrays`` and ``masks`` (``(fields, numpy array)``) can
    take: each entry with the longest kind, a count, and every blob reference an entry can
    have (mask, signs, a byte plane per byte: more than a dense or constant entry's one blob)
    at its longest."""
    def worst(fields, arr):
        dtype = np.dtype(arr.dtype)
        return dict(fields, dtype=dtype.str, shape=list(arr.shape), kind='constant',
                    count=math.prod(arr.shape), bits=_WORST_REF, signs=_WORST_REF,
                    planes=[_WORST_REF] * dtype.itemsize)
    return len(_header([worst(*a) for a in arrays], [worst(*m) for m in masks]))


def _encode(patterns, fields, arr):
    writer = _Writer(patterns)
    return dict(writer.array(arr), **fields), writer


def _write_blobs(f, encoded, reserve):
    """The writing thread of :func:`write_compact`: takes ``(entries, future of (entry,
    writer))`` from the queue ``encoded`` in file order until None, gives each blob its
    offset in the body and writes it, or, when ``reserve`` is None (a small file, written
    after its header), keeps it. Returns the writers kept."""
    held, base, started = [], 0, 0   # started: the bytes before it have their writeback begun
    body = len(MAGIC) + 8 + (reserve or 0)
    if reserve is not None:
        f.seek(body)
    while True:
        job = encoded.get()
        if job is None:
            return held
        entries, future = job
        entry, writer = future.result()
        for ref in writer.refs:
            ref[1] += base
        base += writer.size
        entries.append(entry)
        if reserve is None:
            held.append(writer)
            continue
        for data in writer.blobs:
            f.write(data)
        if body + base - started >= WRITEBACK:
            f.flush()
            started = start_writeback(f.fileno(), started, body + base)


def write_compact(path, arrays, saved_masks=(), values=None):
    """Write ``arrays`` (``(keys, numpy array)`` pairs: shared parameters are stored once) and
    ``saved_masks`` (``(key of the weight, numpy mask, mode)``) atomically to ``path``.
    With ``values`` (an iterator of the numpy arrays, those of ``arrays`` then those of
    ``saved_masks``), the arrays in the pairs are only read for their shape and dtype (an
    NDArray will do) and ``values`` is read as the arrays are encoded.

    Three things run at once: this thread reads the arrays (waiting for MXNet's copies of
    those in oneDNN's blocked layout) and queues their encoding, the encoding threads encode
    them, the writing thread writes each one's blobs as soon as it and those before it are
    encoded (on resnet50_v1 the copies, the encoding and the writing took 30, 40 and 28 ms
    one after the other). The header comes first in the file and holds every blob's offset
    and checksum: for a file of more than :data:`WRITEBACK` bytes its room is taken at the
    start (the most it can need, see :func:`_header_bound`; the rest is spaces); a smaller
    file is written once all is encoded, its header unpadded."""
    arrays = [({'keys': list(keys)}, arr) for keys, arr in arrays]
    masks = [({'key': key, 'mode': mode}, value) for key, value, mode in saved_masks]
    values = iter([arr for _, arr in arrays + masks] if values is None else values)
    reserve = None
    if sum(math.prod(arr.shape) * np.dtype(arr.dtype).itemsize
           for _, arr in arrays + masks) > WRITEBACK:
        reserve = _header_bound(arrays, masks)
    patterns, entries, encoded = {}, ([], []), queue.Queue()
    with atomic_write(path) as tmp:
        with open(tmp, 'wb') as f:
            writing = pool('write').submit(_write_blobs, f, encoded, reserve)
            try:
                for items, done in ((arrays, entries[0]), (masks, entries[1])):
                    futures = []
                    for fields, _ in items:
                        futures.append(pool().submit(_encode, patterns, fields, next(values)))
                        encoded.put((done, futures[-1]))
                    # the masks after the arrays: an update-mode mask's pattern is its
                    # weight's, then known
                    concurrent.futures.wait(futures)
            finally:
                encoded.put(None)
                concurrent.futures.wait([writing])   # (its error, if any, raised below)
            held = writing.result()
            header = _header(*entries, reserve=reserve or 0)
            if reserve is not None and len(header) > reserve:   # (the bound holds)
                raise AssertionError('compact header of %d bytes past its bound %d'
                                     % (len(header), reserve))
            f.seek(0)
            f.write(MAGIC + struct.pack('<Q', len(header)) + header)
            for writer in held:
                for data in writer.blobs:
                    f.write(data)
            f.flush()


# --------------------------------------------------------------------------- reading

def _decode(body, entry, what, version):
    dtype = np.dtype(str(entry['dtype']))
    if dtype.kind not in 'biuf' or dtype.itemsize not in (1, 2, 4, 8):
        raise ValueError('%s has dtype %s, not a parameter dtype' % (what, dtype))
    shape = tuple(int(n) for n in entry['shape'])
    if any(n < 0 for n in shape):
        raise ValueError('%s has a negative dimension in %s' % (what, shape))
    size = math.prod(shape)
    utype = np.dtype('u%d' % dtype.itemsize)
    if entry['kind'] == 'dense':
        data = read_blob(body, entry['data'], what, version)
        if len(data) != size * dtype.itemsize:
            raise ValueError('%s has %d bytes for %d entries' % (what, len(data), size))
        # a view of the file's buffer (read into a writable array): no second copy
        return np.frombuffer(data, dtype=utype).view(dtype).reshape(shape)
    if entry['kind'] == 'constant':
        data = read_blob(body, entry['data'], what, version)
        if len(data) != dtype.itemsize:
            raise ValueError('%s has a constant of %d bytes' % (what, len(data)))
        return np.full(size, np.frombuffer(data, dtype=utype)[0], dtype=utype).view(
            dtype).reshape(shape)
    if entry['kind'] != 'sparse':
        raise ValueError('%s has an unknown kind %r' % (what, entry['kind']))
    bits = read_blob(body, entry['bits'], what + "'s bit mask", version)
    if len(bits) != (size + 7) // 8:
        raise ValueError('%s has %d mask bytes for %d entries' % (what, len(bits), size))
    nonzero = np.unpackbits(np.frombuffer(bits, dtype=np.uint8), count=size).view(bool)
    count = int(np.count_nonzero(nonzero))
    if count != int(entry['count']):
        raise ValueError('%s has %d entries in its mask, the header says %d'
                         % (what, count, entry['count']))
    if 'fill' in entry:
        values = np.frombuffer(read_blob(body, entry['fill'], what, version), dtype=utype)
        if values.size != 1:
            raise ValueError('%s has a fill value of %d bytes' % (what, values.nbytes))
    else:
        planes = [np.frombuffer(read_blob(body, blob, what, version), dtype=np.uint8)
                  for blob in entry['planes']]
        if len(planes) != dtype.itemsize or any(p.size != count for p in planes):
            raise ValueError('%s has byte planes of %s values for %d nonzero entries'
                             % (what, [p.size for p in planes], count))
        values = np.stack(planes, axis=1).reshape(-1).view(utype) if count else \
            np.zeros(0, utype)
    if 'signs' in entry:   # format 2: the sign bits of every entry
        signs = np.frombuffer(read_blob(body, entry['signs'], what, version), dtype=np.uint8)
        if signs.size != (size + 7) // 8:
            raise ValueError('%s has %d sign bytes for %d entries' % (what, signs.size, size))
        # the zeros' bits are their sign bits; the values (signed already) overwrite the rest
        # (shifted as they are widened: a third faster than widening, then shifting)
        flat = np.left_shift(np.unpackbits(signs, count=size),
                             utype.type(8 * dtype.itemsize - 1), dtype=utype)
    elif 'zero_signs' in entry:   # format 1: the sign bits of the zeros only
        signs = np.frombuffer(read_blob(body, entry['zero_signs'], what, version),
                              dtype=np.uint8)
        if signs.size != (size - count + 7) // 8:
            raise ValueError('%s has %d zero-sign bytes for %d zeros'
                             % (what, signs.size, size - count))
        negative = np.zeros(size, dtype=bool)
        negative[~nonzero] = np.unpackbits(signs, count=size - count).view(bool)
        flat = negative.view(np.uint8).astype(utype) << utype.type(8 * dtype.itemsize - 1)
    else:
        flat = np.zeros(size, dtype=utype)
    np.place(flat, nonzero, values)   # flat[nonzero] = values, in two thirds of its time
    return flat.view(dtype).reshape(shape)


#: bytes read from the file between two looks for arrays whose blobs are all in (see
#: read_compact)
READ_CHUNK = 8 << 20


def _blob_end(entry):
    """Where the last blob of a header entry ends in the body (the byte after it); None for
    an entry whose blob references are malformed (its decoding says how)."""
    try:
        refs = [entry[k] for k in ('data', 'bits', 'fill', 'signs', 'zero_signs') if k in entry]
        refs += list(entry.get('planes', ()))
        return max((int(ref[1]) + int(ref[2]) for ref in refs), default=0)
    except (TypeError, ValueError, IndexError, KeyError, AttributeError):
        return None


def _read_and_decode(f, whole, start, body, jobs, version):
    """Read the rest of ``f`` into ``whole`` (``start`` bytes are in) while the arrays of
    ``jobs`` (``(header entry, what it is)``; ``body`` the view of ``whole`` their offsets
    count from) are decoded on threads, each as soon as its blobs are all read: the checksums
    of the first arrays run while the next are read (on resnet50_v1 the read and the
    checksums took 27 and 20 ms one after the other). Returns the arrays in order; the first
    damaged one in order raises."""
    body_start = len(whole) - len(body)
    ends = [_blob_end(entry) for entry, _ in jobs]
    # by where their blobs end; those with malformed references after the last read
    order = sorted((i for i in range(len(jobs)) if ends[i] is not None), key=ends.__getitem__)
    waiting = len(order)
    order += [i for i in range(len(jobs)) if ends[i] is None]
    executor, futures, next_job, read = pool(), [None] * len(jobs), 0, start
    view = memoryview(whole)
    while True:
        while next_job < waiting and body_start + ends[order[next_job]] <= read:
            i = order[next_job]
            futures[i] = executor.submit(_decode, body, *jobs[i], version)
            next_job += 1
        got = f.readinto(view[read:read + READ_CHUNK]) if read < len(whole) else 0
        if not got:
            break
        read += got
    body = body[:max(0, read - body_start)]   # a file that shrank: its tail is not there
    for i in order[next_job:]:
        futures[i] = executor.submit(_decode, body, *jobs[i], version)
    return [future.result() for future in futures]


def read_compact(path):
    """``({structural name: numpy array}, [(structural name, numpy mask, mode)])`` from a file
    written by :func:`save_compact`; any damage is a FileFormatError naming the file."""
    with open(path, 'rb', buffering=0) as f:
        # read straight into a writable array (half the time of f.read(), which copies
        # through a bytes object); dense arrays are views of it
        whole = np.empty(os.fstat(f.fileno()).st_size, dtype=np.uint8)
        read = f.readinto(memoryview(whole)[:min(len(whole), READ_CHUNK)])
        head = whole[:min(read, len(MAGIC) + 8)].tobytes()
        if not head.startswith(MAGIC):
            raise FileFormatError(
                "'%s' is not a compact file written by ps.save_compact (it starts with %r%s). "
                "%s" % (path, head[:16], '; it is empty' if not head else '', _FIX))
        with reading(path, 'compact file written by ps.save_compact', _FIX):
            if len(head) < len(MAGIC) + 8:
                raise EOFError('the file ends inside its header')
            (length,) = struct.unpack('<Q', head[len(MAGIC):])
            while read < min(len(whole), len(head) + length):   # a header past the chunk
                got = f.readinto(memoryview(whole)[read:])
                if not got:
                    break
                read += got
            if length > read - len(head):
                raise EOFError('the header needs %d bytes, %d are left'
                               % (length, read - len(head)))
            header = json.loads(whole[len(head):len(head) + length].tobytes().decode('utf-8'))
            if not isinstance(header, dict) or header.get('format') != 'paramsurgery-compact' \
                    or header.get('version') not in CHECKS:
                raise ValueError('format/version %r; this paramsurgery reads versions %s'
                                 % ((header.get('format'), header.get('version'))
                                    if isinstance(header, dict) else header,
                                    ' and '.join(map(str, sorted(CHECKS)))))
            jobs = [(entry, 'array %s' % and_more(entry['keys'])) for entry in header['arrays']]
            jobs += [(entry, "the mask of '%s'" % entry['key']) for entry in header['masks']]
            for entry, what in jobs[len(header['arrays']):]:
                if entry['mode'] not in ('graph', 'update'):
                    raise ValueError("%s has mode %r" % (what, entry['mode']))
            # the blobs: views of the buffer, not copies
            body = memoryview(whole)[len(head) + length:]
            values = _read_and_decode(f, whole, read, body, jobs, header['version'])
            arrays = OrderedDict()
            for entry, value in zip(header['arrays'], values):
                for key in entry['keys']:
                    arrays[str(key)] = value
            saved_masks = [(str(entry['key']), value, entry['mode']) for entry, value
                           in zip(header['masks'], values[len(header['arrays']):])]
    return arrays, saved_masks


def _check_fits(net, path, arrays, saved_masks, structural):
    for sname, param in structural.items():
        if sname not in arrays:
            raise SurgeryValueError(
                "Parameter '%s' is missing in file '%s', which contains %s. Load it into the "
                "net it was saved from (or one rebuilt with ps.apply_plan)."
                % (sname, path, and_more(arrays, 3)))
        want, have = tuple(param.shape or ()), arrays[sname].shape
        if len(want) != len(have) or any(w not in (0, h) for w, h in zip(want, have)):
            raise SurgeryValueError(
                "Parameter '%s' (%s) has shape %s; file '%s' holds shape %s. A shrunk net's "
                "file loads into a net reshaped by ps.apply_plan with its plan first."
                % (sname, param.name, want, path, have))
        if np.dtype(param.dtype) != arrays[sname].dtype:
            raise SurgeryValueError(
                "Parameter '%s' (%s) has dtype %s; file '%s' holds %s. Cast the net first "
                "(net.cast('%s'))." % (sname, param.name, np.dtype(param.dtype).name, path,
                                       arrays[sname].dtype.name, arrays[sname].dtype.name))
    extra = [k for k in arrays if k not in structural]
    if extra:
        raise SurgeryValueError(
            "File '%s' holds parameter %s, which %s '%s' does not have. Load it into the net it "
            "was saved from (or one rebuilt with ps.apply_plan)."
            % (path, and_more(extra), type(net).__name__, net.name))
    for key, value, _ in saved_masks:
        if key not in structural or value.shape != arrays[key].shape:
            raise SurgeryValueError(
                "File '%s' holds a mask for '%s' of shape %s, which does not fit the net. %s"
                % (path, key, value.shape, _FIX))


def load_compact(net, path) -> List[str]:
    """Load a file written by :func:`save_compact` into ``net``, masks and modes included.

    ``net`` has the architecture the file was saved from: a freshly built one (initialised or
    not, as for ``load_parameters``) or one reshaped by :func:`apply_plan`. Parameters are
    matched by structural name with ``load_parameters``' checks (none missing, none extra,
    shapes and dtypes equal), all of them before anything changes; then every value is set on
    every context, bit-exact, and the file's masks are applied in their modes (replacing a
    mask the net already has; masks of the net that the file has none for stay).
    See ``docs/deploy.md#compact-files``.

    Parameters
    ----------
    net : Block
    path : str or os.PathLike
        A file written by :func:`save_compact`.

    Returns
    -------
    list of str
        The full names of the parameters loaded (masks not included).

    Raises
    ------
    FileFormatError
        The file is empty, truncated, damaged or of another format.
    SurgeryValueError
        The file does not fit ``net`` (a missing or extra parameter, a shape or dtype).
    SurgeryTypeError
        ``net`` is not a Block, or a bad ``path``.

    On any error nothing has changed.

    Examples
    --------
    >>> import os, tempfile, mxnet as mx, numpy as np, paramsurgery as ps
    >>> from mxnet.gluon import nn
    >>> net = nn.Dense(4, in_units=4, prefix='old_')
    >>> net.initialize()
    >>> ps.apply_mask(net, net.weight, np.eye(4), mode='update')
    ['old_weight']
    >>> path = os.path.join(tempfile.mkdtemp(), 'net.compact')
    >>> _ = ps.save_compact(net, path)
    >>> fresh = nn.Dense(4, in_units=4, prefix='new_')
    >>> ps.load_compact(fresh, path)
    ['new_bias', 'new_weight']
    >>> ps.masked(fresh), (fresh.weight.data() == net.weight.data()).min().asscalar()
    (['new_weight'], 1.0)
    """
    if not isinstance(net, gluon.Block):
        raise SurgeryTypeError('load_compact needs a gluon.Block, got %s.' % type(net).__name__)
    path = check_path('path', path)
    if os.path.getsize(path) == 0:
        raise FileFormatError("'%s' is empty (0 bytes), not a compact file written by "
                              "ps.save_compact (an interrupted copy?). %s" % (path, _FIX))
    arrays, saved_masks = read_compact(path)
    params = all_params(net)
    mask_ids = set(id(params[n + MASK_SUFFIX]) for n in masked(params))
    structural = OrderedDict((k, p) for k, p in _mx.structural_names(net).items()
                             if id(p) not in mask_ids)
    _check_fits(net, path, arrays, saved_masks, structural)
    _mx.settle()  # a queued predict-mode forward would reorder the weights being written
    with autograd.pause():
        for sname, param in structural.items():
            # an NDArray over the decoded memory: one copy into each replica, queued (into a
            # replica in oneDNN's blocked layout too, which refuses a copy from numpy)
            _mx.load_init(param, _mx.shared_ndarray(arrays[sname]))
        for key, value, mode in saved_masks:
            apply_mask(net, structural[key], value, combine='replace', mode=mode)
    return sorted(set(param.name for param in structural.values()))
