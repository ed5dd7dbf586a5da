"""Mask files: ``save_masks``/``load_masks`` (bit-packed, keyed by structural name), and
``load_exported`` for a network exported with its masks.
"""
import contextlib
import io
import json
import os
import warnings
from collections import OrderedDict
from typing import List, Optional

import mxnet as mx
import numpy as np
from mxnet import autograd
from mxnet.gluon import SymbolBlock

from .. import _mx
from .._checks import check_flag
from .._files import check_path, reading, write_bytes
from ..access import ensure_usable
from ..errors import (
    FileFormatError,
    SelectionError,
    SurgeryTypeError,
    SurgeryValueError,
)
from ..select import MASK_SUFFIX, all_params, mask_names
from .apply import apply_masks
from .existing import masked
from .modes import COMBINE, check_mode, mode_of
from .owners import require_block
from .update_mode import mark_mask_param

__all__ = ['save_masks', 'load_masks', 'load_exported']

_FILE_FORMAT = 'paramsurgery-masks'
_FILE_VERSION = 1


def structural_keys(net):
    """``{id(weight): structural name}`` for the non-mask parameters of ``net``."""
    names = _mx.structural_names(net)
    params = all_params(net)
    masks = set(id(params[n]) for n in mask_names(params))
    keys = {}
    for sname, param in names.items():
        if id(param) not in masks:
            keys.setdefault(id(param), sname)
    return keys


def save_masks(net, path: str) -> List[str]:
    """Save the masks of ``net`` to ``path``, binary masks bit-packed.

    A mask whose entries are all 0 or 1 is stored with one bit per entry
    (``numpy.packbits``, then compressed: at most about 1.1 bits per weight on disk for any
    real network); any other mask is stored exactly in its dtype. Each mask's mode (``'graph'``
    or ``'update'``) is recorded, and :func:`load_masks` restores it. Masks are keyed by the
    structural name of their weight (``'0.weight'``, as ``save_parameters`` names it), so
    :func:`load_masks` can apply them to a freshly built net whose name prefixes differ.

    Parameters
    ----------
    net : Block
    path : str or os.PathLike
        The file to write (a NumPy ``.npz`` archive; written exactly at ``path``),
        atomically: a temporary file in the same folder, flushed to disk, then renamed over
        ``path``, so a kill or a full disk leaves the old file or the complete new one.

    Returns
    -------
    list of str
        The structural names of the weights whose masks were saved.

    Raises
    ------
    SurgeryTypeError
        ``net`` is not a Block, or ``path`` is not a ``str``/``os.PathLike`` (an ``int``
        would be a file descriptor).
    SurgeryValueError
        ``path`` is a folder or its folder does not exist (checked before anything is
        written).

    Examples
    --------
    >>> import os, tempfile, mxnet as mx, numpy as np, paramsurgery as ps
    >>> from mxnet.gluon import nn
    >>> def build(prefix):
    ...     net = nn.HybridSequential(prefix=prefix)
    ...     with net.name_scope():
    ...         net.add(nn.Dense(8, in_units=16), nn.Dense(2, in_units=8))
    ...     net.initialize()
    ...     return net
    >>> net = build('old_')
    >>> ps.apply_mask(net, net[0].weight, (np.arange(128) % 3 > 0).reshape(8, 16))
    ['old_dense0_weight']
    >>> path = os.path.join(tempfile.mkdtemp(), 'masks.npz')
    >>> ps.save_masks(net, path)
    ['0.weight']
    >>> fresh = build('new_')
    >>> ps.load_masks(fresh, path)
    ['new_dense0_weight']
    >>> ps.get_mask(fresh, 'new_dense0_weight')['new_dense0_weight'].sum().asscalar()
    85.0
    """
    require_block(net, 'save_masks')
    path = check_path('path', path, write=True)
    params = all_params(net)
    keys = structural_keys(net)
    entries, arrays = [], {}
    with autograd.pause():
        for name in masked(net):
            weight, mask = params[name], params[name + MASK_SUFFIX]
            skey = keys.get(id(weight))
            if skey is None:
                continue  # not reachable through save_parameters' naming
            values = _mx.to_host(_mx.raw_data(mask)[0])
            binary = bool(np.all((values == 0) | (values == 1)))
            slot = 'm%d' % len(entries)
            arrays[slot] = np.packbits(values.reshape(-1) != 0) if binary else values
            # 'mode' is optional in version 1 (files without it hold graph-mode masks);
            # 'dtype' is the weight's, in which get_mask shows a mask of either mode.
            entries.append({'key': skey, 'name': name, 'shape': list(values.shape),
                            'dtype': np.dtype(weight.dtype).name, 'packed': binary,
                            'slot': slot, 'mode': mode_of(weight, mask)})
    meta = json.dumps({'format': _FILE_FORMAT, 'version': _FILE_VERSION, 'masks': entries})
    arrays['meta'] = np.frombuffer(meta.encode('utf-8'), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)  # a file object: numpy appends no '.npz'
    write_bytes(path, buf.getvalue())  # atomic: a killed write leaves the old file
    return [e['key'] for e in entries]


_MASKS_FIX = 'Write it again with ps.save_masks(net, path), or pass the file it wrote.'


def _read_masks(path):
    """``{structural name: numpy mask}`` from a file written by :func:`save_masks`; any
    damage (empty, truncated, flipped bytes, another format) is a FileFormatError."""
    if os.path.getsize(path) == 0:
        raise FileFormatError("'%s' is empty (0 bytes), not a mask file written by "
                              "ps.save_masks (an interrupted copy?). %s" % (path, _MASKS_FIX))
    with open(path, 'rb') as f:
        head = f.read(6)
    if not head.startswith((b'PK\x03\x04', b'\x93NUMPY')):
        # numpy would blame "pickled data" for any file that is neither zip nor .npy
        raise FileFormatError("'%s' is not a mask file written by ps.save_masks: it is not a "
                              ".npz archive (it starts with %r). %s" % (path, head, _MASKS_FIX))
    with reading(path, 'mask file written by ps.save_masks (a .npz archive)', _MASKS_FIX):
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise FileFormatError("'%s' is a single NumPy array, not a mask file written by "
                                  "ps.save_masks (a .npz archive). %s" % (path, _MASKS_FIX))
        with archive:
            if 'meta' not in archive.files:
                raise FileFormatError("'%s' is a .npz archive but not a mask file written by "
                                      "ps.save_masks (no metadata). %s" % (path, _MASKS_FIX))
            meta = json.loads(archive['meta'].tobytes().decode('utf-8'))
            if not isinstance(meta, dict) or meta.get('format') != _FILE_FORMAT \
                    or meta.get('version') != _FILE_VERSION:
                found = meta if not isinstance(meta, dict) else (meta.get('format'),
                                                                 meta.get('version'))
                raise FileFormatError("'%s' has format/version %r; this paramsurgery reads %r "
                                      "version %d. %s" % (path, found, _FILE_FORMAT,
                                                          _FILE_VERSION, _MASKS_FIX))
            masks = OrderedDict()
            for entry in meta['masks']:
                shape = tuple(int(n) for n in entry['shape'])
                if any(n < 0 for n in shape):
                    raise ValueError('negative dimension in shape %s' % (shape,))
                dtype = np.dtype(entry['dtype'])
                if dtype.kind not in 'biuf':
                    raise ValueError('mask dtype %s is not numeric' % dtype.name)
                stored = archive[entry['slot']]
                size = int(np.prod(shape, dtype=np.int64))
                if entry['packed']:
                    if stored.dtype != np.uint8 or stored.size * 8 < size:
                        raise ValueError("mask of '%s' has %d packed bytes for %d entries"
                                         % (entry['key'], stored.size, size))
                    values = np.unpackbits(stored, count=size).reshape(shape)
                    values = values.astype(dtype)
                else:
                    if stored.shape != shape or stored.dtype != dtype:
                        raise ValueError("mask of '%s' is stored as %s %s, the metadata says "
                                         "%s %s" % (entry['key'], stored.dtype, stored.shape,
                                                    dtype, shape))
                    values = stored
                if not isinstance(entry['key'], str):
                    raise ValueError('mask key %r is not a name' % (entry['key'],))
                masks[entry['key']] = values
    return masks


def _saved_modes(path):
    """``{structural name: mode}`` recorded by :func:`save_masks` (a file without modes,
    written before modes existed, holds graph-mode masks)."""
    with np.load(path, allow_pickle=False) as archive:
        meta = json.loads(archive['meta'].tobytes().decode('utf-8'))
    return {entry['key']: entry.get('mode', 'graph') for entry in meta['masks']}


def load_masks(net, path: str, *, combine: str = 'replace', mode: Optional[str] = None
               ) -> List[str]:
    """Apply the masks saved by :func:`save_masks` to ``net``.

    Masks are matched by the structural name of their weight (as ``load_parameters``
    matches parameters), so a freshly built net of the same architecture loads them even
    when its name prefixes differ, and it needs no mask yet. Parameters of ``net`` that are
    not in the file keep their masks (or lack of one).

    Parameters
    ----------
    net : Block
    path : str or os.PathLike
    combine : {'replace', 'multiply'}, default 'replace'
        How to treat a mask that ``net`` already has (see :func:`apply_mask`).
    mode : {None, 'graph', 'update'}, default None
        None applies each mask in the mode it was saved in; ``'graph'`` or ``'update'``
        applies every mask in that mode (see :func:`apply_mask`).

    Returns
    -------
    list of str
        The full names of the parameters masked.

    Raises
    ------
    SelectionError
        A saved mask has no weight of that structural name in ``net``.
    FileFormatError
        The file is empty, truncated, damaged or not written by :func:`save_masks` (a
        ``SurgeryValueError`` too); nothing changed.
    SurgeryValueError
        A shape that does not match, a missing file, a folder.
    ParameterStateError
        A parameter's shape is not known yet (deferred initialisation: run one forward
        first) or it was never initialised.
    SurgeryTypeError
        ``path`` is not a ``str`` or ``os.PathLike`` (an ``int`` is not a file descriptor
        here).

    Examples
    --------
    >>> import os, tempfile, mxnet as mx, paramsurgery as ps
    >>> from mxnet.gluon import nn
    >>> net = nn.Dense(2, in_units=3, prefix='a_')
    >>> net.initialize()
    >>> ps.apply_mask(net, 'a_weight', mx.nd.array([[1, 0, 1], [0, 1, 0]]))
    ['a_weight']
    >>> path = os.path.join(tempfile.mkdtemp(), 'm.npz')
    >>> ps.save_masks(net, path)
    ['weight']
    >>> other = nn.Dense(2, in_units=3, prefix='b_')
    >>> other.initialize()
    >>> ps.load_masks(other, path)
    ['b_weight']
    >>> ps.get_mask(other, 'b_weight')['b_weight'].asnumpy().tolist()
    [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]
    >>> ps.load_masks(nn.Dense(3, in_units=3, prefix='c_'), path)
    Traceback (most recent call last):
    ...
    paramsurgery.errors.SurgeryValueError: The mask file ... has a mask of shape (2, 3) for 'weight' ...
    """
    check_mode(mode, allow_none=True)
    require_block(net, 'load_masks')
    path = check_path('path', path)
    if combine not in COMBINE:
        raise SurgeryValueError("combine must be 'multiply' or 'replace', got %r." % (combine,))
    saved = _read_masks(path)
    saved_modes = _saved_modes(path) if mode is None else {}
    keys = structural_keys(net)
    params = all_params(net)
    by_key = {sname: param for param in params.values() for sname in [keys.get(id(param))]
              if sname is not None}
    plan, modes = OrderedDict(), {}
    for skey, values in saved.items():
        param = by_key.get(skey)
        if param is None:
            raise SelectionError(
                "The mask file '%s' has a mask for '%s', which is not a parameter of this net "
                "(structural names: %s%s). Load it into a net of the same architecture."
                % (path, skey, ', '.join(list(by_key)[:5]), ', ...' if len(by_key) > 5 else ''))
        if tuple(values.shape) != tuple(param.shape):
            # a shape still deferred ((4, 0)) is not another architecture: say to run a forward
            if not param.shape or not all(d > 0 for d in param.shape):
                ensure_usable(param)
            raise SurgeryValueError(
                "The mask file '%s' has a mask of shape %s for '%s' but Parameter '%s' has "
                "shape %s. Load it into a net of the same architecture."
                % (path, values.shape, skey, param.name, param.shape))
        plan[param.name] = values
        modes[param.name] = mode or saved_modes.get(skey, 'graph')
    if not plan:
        return []
    return apply_masks(net, plan, None, combine=combine, mode=modes)


@contextlib.contextmanager
def quiet_input_types():
    """Silence MXNet's "Cannot decide type for the following arguments ... data: None",
    which every ``SymbolBlock`` built from a symbol warns: an input's dtype is only known at
    the first forward, which is fine, and the warning only alarms users."""
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', message='Cannot decide type', category=UserWarning)
        yield


def load_exported(symbol_file: str, input_names, param_file: Optional[str] = None,
                  ctx=None, **kwargs) -> SymbolBlock:
    """``SymbolBlock.imports`` for a network exported with masks: masks stay non-trainable.

    ``export()`` writes each mask as an ordinary input of its ``elemwise_mul``, and
    ``SymbolBlock.imports`` gives every input grad_req ``'write'``, so a Trainer would
    train the masks. This sets every ``<name>_mask`` parameter back to grad_req
    ``'null'``, and gives every loaded parameter its shape (``imports`` leaves it None,
    which value surgery such as ``ps.set_params`` needs).

    Parameters
    ----------
    symbol_file : str
        The ``-symbol.json`` file written by ``export()``.
    input_names : str or list of str
        The input names (``'data'`` for a single-input network).
    param_file : str, default None
        The ``-NNNN.params`` file.
    ctx : Context or list of Context, default None
    **kwargs
        ``allow_missing``, ``ignore_extra`` (``True``/``False``), passed to
        ``SymbolBlock.imports``.

    Returns
    -------
    SymbolBlock

    Raises
    ------
    FileFormatError
        A file is empty, truncated, damaged or of another format, or the files do not
        belong together (MXNet's own ``MXNetError``, ``AssertionError`` or ``ValueError``,
        summed up in one line); nothing was loaded.
    SurgeryValueError, SurgeryTypeError
        A missing file or a folder; a path that is not a ``str`` or ``os.PathLike``;
        ``input_names`` not a name or list of names, ``ctx`` not a Context.

    Examples
    --------
    >>> import os, tempfile, mxnet as mx, paramsurgery as ps
    >>> from mxnet.gluon import nn
    >>> net = nn.HybridSequential(prefix='net_')
    >>> with net.name_scope():
    ...     net.add(nn.Dense(2, in_units=3))
    >>> net.initialize(mx.init.One())
    >>> ps.apply_mask(net, '.*weight', mx.nd.array([[1, 0, 0], [1, 1, 1]]))
    ['net_dense0_weight']
    >>> net.hybridize()
    >>> x = mx.nd.ones((1, 3))
    >>> net(x).asnumpy().tolist()
    [[1.0, 3.0]]
    >>> prefix = os.path.join(tempfile.mkdtemp(), 'model')
    >>> net.export(prefix)
    >>> loaded = ps.load_exported(prefix + '-symbol.json', 'data', prefix + '-0000.params')
    >>> loaded(x).asnumpy().tolist(), ps.masked(loaded)
    ([[1.0, 3.0]], ['net_dense0_weight'])
    >>> loaded.collect_params()['net_dense0_weight_mask'].grad_req
    'null'
    """
    symbol_file = check_path('symbol_file', symbol_file)
    if param_file is not None:
        param_file = check_path('param_file', param_file)
    names = [input_names] if isinstance(input_names, str) else input_names
    if not isinstance(names, (list, tuple)) or not names or \
            not all(isinstance(n, str) and n for n in names):
        raise SurgeryTypeError(
            "input_names must be a name or a non-empty list of names (e.g. 'data'), got %r."
            % (input_names,))
    contexts = ctx if isinstance(ctx, (list, tuple)) else [ctx]
    if ctx is not None and (not contexts or
                            not all(isinstance(c, mx.Context) for c in contexts)):
        raise SurgeryTypeError('ctx must be a Context, a list of Contexts or None, got %r.'
                               % (ctx,))
    unknown = sorted(set(kwargs) - {'allow_missing', 'ignore_extra'})
    if unknown:
        raise SurgeryTypeError('load_exported got unexpected keyword argument(s) %s; it takes '
                               'allow_missing and ignore_extra (as SymbolBlock.imports).'
                               % ', '.join(unknown))
    for flag in ('allow_missing', 'ignore_extra'):
        if flag in kwargs:
            kwargs[flag] = check_flag(flag, kwargs[flag])
    fix = ('Export the network again with net.export(prefix) and pass prefix + '
           "'-symbol.json' and prefix + '-0000.params'.")
    with reading([symbol_file] if param_file is None else [symbol_file, param_file],
                 'exported model (symbol JSON and parameter file written by export())', fix), \
            quiet_input_types():
        block = SymbolBlock.imports(symbol_file, input_names, param_file, ctx, **kwargs)
    params = block.collect_params()
    for param in params.values():
        # Parameter._load_init leaves shape None when the parameter had none before: give
        # every loaded parameter its shape, so that value surgery can validate against it.
        if param.shape is None and _mx.raw_data(param) is not None:
            param.shape = _mx.raw_data(param)[0].shape
    for name in mask_names(params):
        params[name].grad_req = 'null'
        mark_mask_param(params[name])
    return block
