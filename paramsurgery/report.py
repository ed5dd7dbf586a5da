"""Sparsity reports: of a net's effective weights, or of the arrays of a saved file."""
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from . import _mx
from ._files import check_path
from ._plot import pyplot, save_figure
from .access import replicas
from .errors import (
    SelectionError,
    SurgeryTypeError,
    SurgeryValueError,
)
from .masks import unmasked_params
from .select import MASK_SUFFIX, all_params, mask_names, select

__all__ = ['SparsityReport', 'sparsity_report', 'arrays_report']

_NET_COLUMNS = ('name', 'shape', 'contexts', 'size', 'zeros', 'sparsity', 'masked', 'grad_req',
                'replicas_equal')
_FILE_COLUMNS = ('name', 'shape', 'dtype', 'size', 'zeros', 'sparsity', 'masked')


def _cell(column, value):
    if column == 'shape':
        return 'x'.join(str(d) for d in value) or '()'
    if column == 'contexts':
        return ','.join(str(c) for c in value)
    if column == 'sparsity':
        return '%.2f%%' % (100 * value)
    if column == 'masked':
        return 'yes' if value else 'no'
    if column == 'replicas_equal':
        return 'yes' if value else 'NO'
    return str(value)


class SparsityReport:
    """A table of sparsity per parameter: ``str()`` is the aligned table with a total line,
    ``.rows`` the list of dicts behind it, ``.plot(path)`` a PNG bar chart.

    Sparsity and zeros are those of the effective weight ``weight * mask``.
    """

    def __init__(self, rows: List[Dict[str, Any]], columns: Sequence[str] = _NET_COLUMNS):
        self.rows = rows
        self.columns = tuple(columns)

    @property
    def total(self) -> Dict[str, Any]:
        """Totals over the rows: size, zeros, sparsity, and how many are masked."""
        size = sum(r['size'] for r in self.rows)
        zeros = sum(r['zeros'] for r in self.rows)
        return {'size': size, 'zeros': zeros, 'sparsity': zeros / size if size else 0.0,
                'masked': sum(bool(r['masked']) for r in self.rows)}

    def __str__(self):
        total = self.total
        lines = [list(self.columns)]
        lines += [[_cell(c, r[c]) for c in self.columns] for r in self.rows]
        lines.append(['total (%d)' % len(self.rows) if c == 'name' else
                      str(total['masked']) if c == 'masked' else
                      _cell(c, total[c]) if c in total else '' for c in self.columns])
        widths = [max(len(line[i]) for line in lines) for i in range(len(self.columns))]
        text = ['  '.join(cell.ljust(w) if i == 0 else cell.rjust(w)
                          for i, (cell, w) in enumerate(zip(line, widths))).rstrip()
                for line in lines]
        rule = '-' * max(len(t) for t in text)
        return '\n'.join([text[0], rule] + text[1:-1] + [rule, text[-1]])

    __repr__ = __str__

    def plot(self, path: str) -> None:
        """Write a PNG bar chart of the sparsity of each parameter to ``path``.

        Needs matplotlib (``pip install 'paramsurgery[plot]'``); without it raises
        :class:`MissingDependencyError`. ``path`` (``str`` or ``os.PathLike``; its folder
        must exist) is checked first and written atomically (see :func:`save_masks`).
        """
        path = check_path('path', path, write=True)
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(max(6, 0.3 * len(self.rows)), 4.5))
        ax.bar(range(len(self.rows)), [100 * r['sparsity'] for r in self.rows])
        ax.set_xticks(range(len(self.rows)))
        ax.set_xticklabels([r['name'] for r in self.rows], rotation=90,
                           fontsize=8 if len(self.rows) <= 30 else 6)
        ax.set_ylabel('sparsity of weight * mask (%)')
        ax.set_ylim(0, 100)
        ax.set_title('sparsity per parameter (total %.1f%%)' % (100 * self.total['sparsity']))
        save_figure(fig, path, dpi=100)


def _zeros(effective: np.ndarray) -> int:
    return int(effective.size - np.count_nonzero(effective))


def arrays_report(arrays: Mapping[str, np.ndarray], names: Optional[Sequence[str]] = None
                  ) -> SparsityReport:
    """The sparsity table of plain arrays, e.g. a file loaded with ``mx.nd.load``.

    An array ``<name>_mask`` beside ``<name>`` is recognised as its mask: it is not listed on
    its own, and the row of ``<name>`` counts the zeros of ``array * mask``.

    Parameters
    ----------
    arrays : dict of str -> numpy.ndarray
        The arrays by name.
    names : list of str, default None
        The rows to show, in order (default: every array that is not a mask).

    Examples
    --------
    >>> import numpy as np, paramsurgery as ps
    >>> report = ps.arrays_report({'w': np.array([[1., 0.], [2., 3.]]),
    ...                            'w_mask': np.array([[1., 1.], [0., 1.]]), 'b': np.ones(2)})
    >>> [(r['name'], r['zeros'], r['masked']) for r in report.rows]
    [('w', 2, True), ('b', 0, False)]
    """
    if not isinstance(arrays, Mapping) or not all(isinstance(n, str) for n in arrays):
        raise SurgeryTypeError('arrays must be a dict of name -> numpy array (e.g. from '
                               'mx.nd.load), got %s.' % type(arrays).__name__)
    if names is not None:
        if isinstance(names, str) or not isinstance(names, Sequence):
            raise SurgeryTypeError('names must be a list of array names or None, got %r.'
                                   % (names,))
        unknown = [n for n in names if not isinstance(n, str) or n not in arrays]
        if unknown:
            raise SelectionError('names: %r is not an array of the file (it has %d arrays, '
                                 'e.g. %s).' % (unknown[0], len(arrays),
                                                ', '.join(list(arrays)[:5])))
    if names is None:
        hidden = set(mask_names(arrays))
        names = [n for n in arrays if n not in hidden]
    rows = []
    for name in names:
        value = np.asarray(arrays[name])
        if value.dtype.kind not in 'biuf':
            raise SurgeryTypeError("Array '%s' has dtype %s; a sparsity report needs numbers."
                                   % (name, value.dtype))
        mask = arrays.get(name + MASK_SUFFIX)
        if mask is not None:
            mask = np.asarray(mask)
            if mask.ndim > value.ndim or any(m not in (1, v) for m, v in zip(
                    mask.shape[::-1], value.shape[::-1])):
                raise SurgeryValueError(
                    "Array '%s' has shape %s but its mask '%s' has shape %s, which does not "
                    "broadcast to it: the file is inconsistent. Fix or drop '%s'."
                    % (name, value.shape, name + MASK_SUFFIX, mask.shape, name + MASK_SUFFIX))
        effective = value * mask if mask is not None else value
        rows.append({'name': name, 'shape': tuple(value.shape), 'dtype': value.dtype.name,
                     'size': int(value.size), 'zeros': _zeros(effective),
                     'sparsity': _zeros(effective) / value.size if value.size else 0.0,
                     'masked': mask is not None})
    return SparsityReport(rows, _FILE_COLUMNS)


def sparsity_report(net, key=None) -> SparsityReport:
    """The sparsity table of the effective weights ``weight * mask`` of a net.

    Parameters
    ----------
    net : Block or ParameterDict or dict of str -> Parameter
        The network.
    key : str or Parameter or list or callable, default None
        The parameters to report (see :func:`paramsurgery.select`; masks are never rows of
        their own); None reports every parameter.

    Returns
    -------
    SparsityReport
        ``str()`` is the table (name, shape, contexts, size, zeros, sparsity, masked,
        grad_req, replicas equal) with a total line; ``.rows`` the list of dicts;
        ``.plot(path)`` a PNG bar chart. ``replicas_equal`` compares every context's copy of
        the weight and of its mask.

    Examples
    --------
    >>> import mxnet as mx, numpy as np, paramsurgery as ps
    >>> from mxnet.gluon import nn
    >>> net = nn.Dense(2, in_units=4, prefix='fc_')
    >>> net.initialize(mx.init.One(), ctx=[mx.cpu(0), mx.cpu(1)])
    >>> ps.apply_mask(net, 'fc_weight', np.array([[1, 0, 0, 0], [1, 1, 0, 1]], 'float32'))
    ['fc_weight']
    >>> print(ps.sparsity_report(net))
    name       shape         contexts  size  zeros  sparsity  masked  grad_req  replicas_equal
    ----------------------------------------------------------------------------------------
    fc_weight    2x4  cpu(0),cpu(1)     8      4    50.00%     yes     write             yes
    fc_bias        2  cpu(0),cpu(1)     2      2   100.00%      no     write             yes
    ----------------------------------------------------------------------------------------
    total (2)                          10      6    60.00%       1
    """
    params = all_params(net)
    view = unmasked_params(params)
    chosen = view if key is None else select(view, key)
    rows = []
    for name, param in chosen.items():
        copies = replicas(param)
        contexts = [ctx for ctx, _, _ in copies]
        copies = [_mx.to_host(data) for _, data, _ in copies]
        equal = all(c.tobytes() == copies[0].tobytes() for c in copies[1:])
        mask_param = params.get(name + MASK_SUFFIX)
        effective = copies[0]
        if mask_param is not None:
            masks = [_mx.to_host(data) for _, data, _ in replicas(mask_param)]
            equal = equal and all(m.tobytes() == masks[0].tobytes() for m in masks[1:])
            effective = effective * masks[0]
        zeros = _zeros(effective)
        rows.append({'name': name, 'shape': tuple(effective.shape),
                     'contexts': contexts,
                     'size': int(effective.size), 'zeros': zeros,
                     'sparsity': zeros / effective.size if effective.size else 0.0,
                     'masked': mask_param is not None, 'grad_req': param.grad_req,
                     'replicas_equal': bool(equal)})
    return SparsityReport(rows)
