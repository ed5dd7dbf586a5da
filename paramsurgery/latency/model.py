""":class:`LatencyModel`: the per-layer tables of a net, corrected by whole-net
measurements; its predictions, fast counts, table, figure and file.
"""
import json
import math
from collections import OrderedDict
from collections.abc import Mapping
from typing import List

import numpy as np

from .._checks import is_int, is_real
from .._files import check_path, reading, write_bytes
from .._plot import pyplot, save_figure
from ..errors import FileFormatError, SurgeryTypeError, SurgeryValueError
from .layers import misaligned_volume
from .runtimes import RUNTIMES

_MODEL_FORMAT = 'paramsurgery-latency-model'
_MODEL_VERSION = 1


class LatencyModel:
    """Measured latency of a net against the kept channel counts of its groups.

    Built by :func:`latency_model`; see docs/latency.md#latency-models.

    Attributes
    ----------
    runtime : str
    shapes : tuple of tuple of int
        The input shapes it was measured with.
    threads : int
    sizes : dict of str -> int
        The modelled groups and their channel counts.
    table : dict of str -> dict of int -> float
        Per group: the summed seconds of the layers whose shapes depend on it, timed alone,
        with the group at each measured kept count (the other groups dense).
    measured : float
        The whole dense net, measured (seconds per forward).
    dense : float
        The model's prediction for the dense net.
    calibration : list of dict
        The whole nets measured to correct the per-layer sums (``kept``, ``seconds``).
    """

    def __init__(self, data):
        self._data = data
        self.runtime = data['runtime']
        self.shapes = tuple(tuple(s) for s in data['shapes'])
        self.threads = int(data['threads'])
        self.sizes = OrderedDict((g, int(n)) for g, n in data['sizes'])
        self.table = OrderedDict(
            (g, OrderedDict((int(c), float(t)) for c, t in data['table'][g]))
            for g in self.sizes)
        self.measured = float(data['measured'])
        self.calibration = [dict(kept=dict(c['kept']), seconds=float(c['seconds']))
                            for c in data['calibration']]
        self._layers = data['layers']
        self._weights = dict(data['weights'])
        self._fit = tuple(float(v) for v in data['fit'])
        self.dense = self.predict({})

    # ----------------------------------------------------------------------- prediction

    def _sum(self, kept):
        """The per-layer sum: each layer's time from its tables (interpolated between the
        measured counts), several groups combined as independent factors."""
        total = 0.0
        for layer in self._layers:
            base = layer['dense']
            t = base
            for g, counts in layer['tables'].items():
                k = kept.get(g, self.sizes[g])
                if k == self.sizes[g]:
                    continue
                xs = [int(c) for c, _ in counts]
                ys = [float(s) for _, s in counts]
                t *= float(np.interp(k, xs, ys)) / base if base > 0 else 1.0
            total += t
        return total

    def _check_kept(self, kept):
        if not isinstance(kept, Mapping):
            raise SurgeryTypeError('kept must be a dict group name -> kept channel count, '
                                   'got %s.' % type(kept).__name__)
        out = {}
        for name, k in kept.items():
            if name not in self.sizes:
                raise SurgeryValueError(
                    "kept names channel group %r, which this latency model does not "
                    "model. Its groups are: %s." % (name, ', '.join(list(self.sizes)[:5])
                                                     + (', ...' if len(self.sizes) > 5
                                                        else '')))
            if isinstance(k, (bool, np.bool_)) or not is_int(k):
                raise SurgeryTypeError("kept[%r] must be an int (a channel count), got %s %r."
                                       % (name, type(k).__name__, k))
            if not 1 <= k <= self.sizes[name]:
                raise SurgeryValueError("kept[%r]=%d: a kept count of group %r is from 1 to "
                                        "its size %d." % (name, k, name, self.sizes[name]))
            out[name] = int(k)
        return out

    def predict(self, kept: Mapping[str, int]) -> float:
        """Predicted seconds per forward of the whole net with each named group at its kept
        count (unnamed groups dense).

        Examples
        --------
        >>> import mxnet as mx, paramsurgery as ps
        >>> from mxnet.gluon import nn
        >>> net = nn.HybridSequential(prefix='n_')
        >>> with net.name_scope():
        ...     net.add(nn.Conv2D(16, 3, in_channels=3), nn.Activation('relu'),
        ...             nn.Conv2D(4, 3, in_channels=16))
        >>> net.initialize()
        >>> model = ps.latency_model(net, inputs=(1, 3, 16, 16), repeats=1, threads=1)
        >>> model.predict({'n_conv0_weight': 8}) > 0
        True
        """
        kept = self._check_kept(kept)
        a, b, c = self._fit
        full = {g: n for g, n in self.sizes.items()}
        full.update(kept)
        return a * self._sum(kept) + b * misaligned_volume(full, self.sizes, self._weights) + c

    def fast_counts(self, name: str) -> List[int]:
        """The measured kept counts of group ``name`` that are faster than every larger
        count (where the runtime speeds up), smallest first.

        Examples
        --------
        >>> import mxnet as mx, paramsurgery as ps
        >>> from mxnet.gluon import nn
        >>> net = nn.HybridSequential(prefix='n_')
        >>> with net.name_scope():
        ...     net.add(nn.Conv2D(16, 3, in_channels=3), nn.Conv2D(4, 3, in_channels=16))
        >>> net.initialize()
        >>> model = ps.latency_model(net, inputs=(1, 3, 16, 16), repeats=1, threads=1)
        >>> model.fast_counts('n_conv0_weight')[-1]     # the size is always one
        16
        """
        if name not in self.sizes:
            raise SurgeryValueError(
                "fast_counts: channel group %r is not in this latency model; its groups "
                "are: %s." % (name, ', '.join(list(self.sizes)[:5])
                              + (', ...' if len(self.sizes) > 5 else '')))
        counts = sorted(self.table[name])
        times = {c: self.predict({name: c}) for c in counts}
        fast, best = [], float('inf')
        for c in reversed(counts):
            if times[c] < best or c == counts[-1]:
                fast.append(c)
                best = min(best, times[c])
        return sorted(fast)

    def round(self, name: str, count: int) -> int:
        """The fast count of group ``name`` nearest to ``count`` (ties to the larger)."""
        fast = self.fast_counts(name)
        return min(fast, key=lambda c: (abs(c - count), -c))

    # ----------------------------------------------------------------------- views

    def __str__(self):
        lines = ['latency model: %s, inputs %s, %d thread%s; dense measured %.3f ms, '
                 'predicted %.3f ms' % (self.runtime, ', '.join(map(str, self.shapes)),
                                        self.threads, '' if self.threads == 1 else 's',
                                        1e3 * self.measured, 1e3 * self.dense)]
        rows = [('group', 'size', 'fast counts', 'ms (kept: layers alone)')]
        for g, size in self.sizes.items():
            fast = self.fast_counts(g)
            table = self.table[g]
            shown = ' '.join('%d:%.3f' % (c, 1e3 * table[c]) for c in sorted(table)[::4])
            rows.append((g, str(size), ' '.join(map(str, fast[-8:])), shown))
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        lines += ['%-*s  %*s  %-*s  %s' % (widths[0], r[0], widths[1], r[1], widths[2], r[2],
                                           r[3]) for r in rows]
        lines.insert(2, '-' * len(lines[1]))
        return '\n'.join(lines)

    def __repr__(self):
        return 'LatencyModel(%r, %d groups, dense %.3f ms measured)' % (
            self.runtime, len(self.sizes), 1e3 * self.measured)

    def plot(self, path) -> None:
        """A PNG: per group, the latency of its layers against the kept count, the fast
        counts marked. Needs matplotlib."""
        path = check_path('path', path, write=True)
        plt = pyplot()
        names = list(self.sizes)
        columns = min(4, max(1, len(names)))
        rows = (len(names) + columns - 1) // columns
        fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.4 * rows),
                                 squeeze=False)
        for ax, name in zip(axes.flat, names):
            table = self.table[name]
            counts = sorted(table)
            ax.plot(counts, [1e3 * table[c] for c in counts], '-', color='0.4', linewidth=1)
            fast = self.fast_counts(name)
            ax.plot(fast, [1e3 * table[c] for c in fast], 'o', color='tab:green', markersize=3)
            ax.set_title(name, fontsize=7)
            ax.tick_params(labelsize=6)
        for ax in list(axes.flat)[len(names):]:
            ax.axis('off')
        fig.suptitle('%s: ms of the layers each group shapes, timed alone, against the kept '
                     'count (green: fast counts)' % self.runtime, fontsize=8)
        save_figure(fig, path, dpi=100)

    # ----------------------------------------------------------------------- files

    def save(self, path) -> None:
        """Write the model to ``path`` as JSON, atomically."""
        path = check_path('path', path, write=True)
        data = dict(self._data, format=_MODEL_FORMAT, version=_MODEL_VERSION)
        write_bytes(path, json.dumps(data, indent=1).encode('utf-8'))

    @classmethod
    def load(cls, path) -> 'LatencyModel':
        """Read a model written by :meth:`save`; a damaged file raises
        :class:`FileFormatError` naming what is wrong."""
        path = check_path('path', path)
        with reading(path, 'latency model (JSON written by LatencyModel.save)',
                     'Write it again with LatencyModel.save.'):
            with open(path, 'rb') as f:
                data = json.loads(f.read().decode('utf-8'))
            _check_model(path, data)
            return cls(data)


def _is_seconds(v):
    return is_real(v) and math.isfinite(v) and v >= 0


def _is_table(v):
    return isinstance(v, list) and bool(v) and all(
        isinstance(r, list) and len(r) == 2 and is_int(r[0]) and r[0] >= 1 and _is_seconds(r[1])
        for r in v)


def _check_model(path, data):
    def bad(what):
        raise FileFormatError(
            "'%s' is not a readable latency model (JSON written by LatencyModel.save): %s. "
            "The file is damaged or was edited by hand; build it again with ps.latency_model "
            "and save it." % (path, what))
    if not isinstance(data, dict):
        bad('the file holds %s, not an object' % type(data).__name__)
    if data.get('format') != _MODEL_FORMAT or data.get('version') != _MODEL_VERSION:
        bad('format %r version %r' % (data.get('format'), data.get('version')))
    if data.get('runtime') not in RUNTIMES:
        bad('runtime %r' % (data.get('runtime'),))
    for field, check, should in (
            ('shapes', lambda v: isinstance(v, list) and bool(v) and all(
                isinstance(s, list) and all(is_int(d) and d >= 1 for d in s) for s in v),
             'a list of shapes'),
            ('threads', lambda v: is_int(v) and v >= 1, 'an integer >= 1'),
            ('sizes', lambda v: isinstance(v, list) and all(
                isinstance(r, list) and len(r) == 2 and isinstance(r[0], str) and is_int(r[1])
                and r[1] >= 1 for r in v), 'a list of [group, size]'),
            ('table', lambda v: isinstance(v, dict) and all(map(_is_table, v.values())),
             'an object group -> [[count, seconds], ...]'),
            ('measured', _is_seconds, 'seconds (a number >= 0)'),
            ('fit', lambda v: isinstance(v, list) and len(v) == 3 and all(
                is_real(x) and math.isfinite(x) for x in v), 'three numbers'),
            ('weights', lambda v: isinstance(v, dict) and all(map(_is_seconds, v.values())),
             'an object group -> number'),
            ('calibration', lambda v: isinstance(v, list) and all(
                isinstance(c, dict) and isinstance(c.get('kept'), dict) and
                _is_seconds(c.get('seconds')) for c in v), 'a list of {kept, seconds}'),
            ('layers', lambda v: isinstance(v, list) and all(
                isinstance(layer, dict) and _is_seconds(layer.get('dense')) and
                isinstance(layer.get('tables'), dict) and
                all(map(_is_table, layer['tables'].values())) for layer in v),
             'a list of {dense, tables}')):
        if field not in data:
            bad('it has no field %r' % field)
        if not check(data[field]):
            bad('%r should be %s' % (field, should))
    sizes = {g for g, _ in data['sizes']}
    for where, names in [('table', data['table']), ('weights', data['weights'])] + [
            ('layer %d' % i, layer['tables']) for i, layer in enumerate(data['layers'])]:
        unknown = set(names) - sizes
        if unknown:
            bad('%s names group %r, which is not in sizes' % (where, sorted(unknown)[0]))
    if set(data['table']) != sizes:
        bad('table has no row for group %r' % sorted(sizes - set(data['table']))[0])


