"""The bytes of a compact file: checksums, deflating, the threads that encode and decode,
and the writeback of what is written (:mod:`paramsurgery.compact` holds the format).

Numpy and zlib only: nothing here knows MXNet or a net."""
import ctypes
import os
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np


class Blob(NamedTuple):
    offset: int
    length: int
    check: int   # checksum of the stored bytes (format 1: their CRC-32)


#: 64-bit words per block of the checksums (4 KiB: a file system's block)
_BLOCK = 512
#: the weight of each word of a block in checksum: its position, odd (1, 3, 5, ...)
_WORD_WEIGHTS = np.arange(1, 2 * _BLOCK, 2, dtype=np.uint64)


def _words(data):
    """``data`` as little-endian 64-bit words: ``(whole blocks, (blocks, _BLOCK) view, the
    zero-padded words of the last partial block)``."""
    data = memoryview(data).cast('B')
    blocks, tail = divmod(len(data), 8 * _BLOCK)
    whole = np.frombuffer(data[:blocks * 8 * _BLOCK], dtype='<u8').reshape(blocks, _BLOCK)
    rest = np.frombuffer(bytes(data[blocks * 8 * _BLOCK:]) + bytes(-tail % 8), dtype='<u8')
    return blocks, whole, rest


def checksum(data):
    """A 64-bit checksum of ``data`` (format 3): the sum of its little-endian 64-bit words
    (the last one zero-padded), the word at position ``i`` of 4 KiB block ``b`` weighted by
    ``(2i + 1) * (1 + 1024 b)``, modulo 2**64.

    Every weight is odd, so any damage within one word (every flipped bit, every changed
    byte) changes it: an odd weight times a nonzero change is nonzero modulo 2**64. Two
    words ``x``, ``y`` swapped change it by ``(x - y)`` times the difference of their
    weights, which has at most 9 factors of two inside a block (``2 (i - j)``, ``|i - j| <
    512``): found unless the words are equal in their low 55 bits. Blocks swapped or moved,
    and other damage, are found but for a chance of about 2**-54 (a truncation is found by
    the lengths first). One numpy pass over a view of the bytes (no copy), as fast as the
    plain sum of :func:`checksum_v2`."""
    blocks, whole, rest = _words(data)
    total = 0
    if blocks:
        sums = np.einsum('ij,j->i', whole, _WORD_WEIGHTS)
        sums *= np.arange(1, 1024 * blocks, 1024, dtype=np.uint64)
        total = int(np.add.reduce(sums))
    if rest.size:  # the last block: most blobs are this block alone
        total += (1 + 1024 * blocks) * int(np.dot(rest, _WORD_WEIGHTS[:rest.size]))
    return total % (1 << 64)


def checksum_v2(data):
    """The checksum of format 2: the sum of each 4 KiB block's little-endian 64-bit words,
    weighted by the block's position (1, 3, 5, ...), modulo 2**64. It found every change
    within one word and blocks moved or swapped, but not two words swapped within a block
    (format 3's :func:`checksum` does)."""
    blocks, whole, rest = _words(data)
    total = 0
    if blocks:
        sums = np.add.reduce(whole, axis=1)
        total = int(np.add.reduce(sums * np.arange(1, 2 * blocks, 2, dtype=np.uint64)))
    if rest.size:
        total += (2 * blocks + 1) * int(np.add.reduce(rest))
    return total % (1 << 64)


#: the checksum of each format version read_compact reads (format 1 also stored the signs of
#: the zeros alone; formats 2 and 3 differ only in their checksum)
CHECKS = {1: zlib.crc32, 2: checksum_v2, 3: checksum}


#: A blob whose first SAMPLE bytes zlib shrinks by less than 1 - SKIP_RATIO is stored raw:
#: the low mantissa planes of trained or random weights are noise. On a 90% sparse
#: resnet50_v1 the two lowest planes shrink by 7% and 3%: deflating them took a sixth of
#: save_compact's time for 0.003x of the save_parameters file.
SAMPLE = 1 << 14
SKIP_RATIO = 0.9


def deflate(data, strategy=zlib.Z_RLE):
    """``data`` deflated at level 1 with run-length matching only (zlib's Z_RLE), or with
    ``strategy``. Any zlib inflates it.

    A mask is close to independent bytes plus runs (a pruned filter, a zero row): Huffman
    coding of the bytes gets near their entropy and runs still collapse, while LZ77's search
    for longer matches finds nothing more. Measured on a 90% random mask of 25M entries: 0.49
    of the bytes in 31 ms, where the default strategy kept 0.58 in 67 ms."""
    deflater = zlib.compressobj(1, zlib.DEFLATED, 15, 9, strategy)
    return deflater.compress(data) + deflater.flush()


def pack(data, strategy=zlib.Z_RLE):
    """``['z', bytes]`` when deflating makes ``data`` smaller, else ``['raw', bytes]``."""
    data = memoryview(data).cast('B')
    if len(data) > 4 * SAMPLE and len(deflate(data[:SAMPLE], strategy)) > SKIP_RATIO * SAMPLE:
        return ('raw', data)
    packed = deflate(data, strategy)
    return ('z', packed) if len(packed) < len(data) else ('raw', data)


def unpack(how, data):
    if how == 'z':
        return zlib.decompress(data)
    if how == 'raw':
        return data
    raise ValueError('unknown packing %r' % (how,))


def workers():
    """Threads for encoding and decoding: one per core, at most 4 (past that the passes
    wait on memory bandwidth)."""
    return max(1, min(4, os.cpu_count() or 1))


_POOL = {}
_POOL_LOCK = threading.Lock()


def pool(kind='code'):
    """The encoding and decoding threads (``kind='code'``), or the one thread that writes a
    compact file while the next arrays are encoded (``'write'``), started once per process:
    starting them on each call cost a third of load_compact's time on resnet50_v1 on a busy
    machine (each start waits until the new thread runs). A forked child gets its own (its
    parent's threads do not exist there)."""
    with _POOL_LOCK:
        if any(pid != os.getpid() for pid, _ in _POOL):
            for stale in _POOL.values():   # (a parent's: no thread of it to wait for)
                stale.shutdown(wait=False)
            _POOL.clear()
        pool = _POOL.get((os.getpid(), kind))
        if pool is None:
            pool = _POOL[os.getpid(), kind] = ThreadPoolExecutor(
                workers() if kind == 'code' else 1,
                thread_name_prefix='paramsurgery-compact-' + kind)
        return pool


#: bytes written between two starts of their writeback (see start_writeback)
WRITEBACK = 8 << 20


def _sync_file_range():
    """Linux's ``sync_file_range`` from the C library, or None."""
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    return function


_SYNC_FILE_RANGE = _sync_file_range()


def start_writeback(fd, start, end):
    """Start writing bytes ``start:end`` of ``fd`` to the disk without waiting, and return
    ``end``. The atomic write's fsync then waits only for the last few: on resnet50_v1
    (100 MB) writing and syncing took 54 ms instead of 85 ms. Where the C library has no
    ``sync_file_range`` (not Linux), the fsync writes it all."""
    if _SYNC_FILE_RANGE is not None:
        _SYNC_FILE_RANGE(fd, start, end - start, 2)   # SYNC_FILE_RANGE_WRITE
    return end


def read_blob(body, blob, what, version):
    how, offset, length, check = blob[0], int(blob[1]), int(blob[2]), int(blob[3])
    if offset < 0 or length < 0 or offset + length > len(body):
        raise ValueError('%s lies past the end of the file (truncated?)' % what)
    data = body[offset:offset + length]
    if CHECKS[version](data) != check:
        raise ValueError('%s fails its checksum (damaged bytes)' % what)
    return unpack(how, data)
