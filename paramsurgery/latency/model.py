""":class:`LatencyModel`: the per-layer tables of a net, corrected by whole-net
measurements; its predictions, fast counts, table, figure and file.
"""
import json
import math
from collections import OrderedDict
from collections.abc import Mapping
from typing import List, NamedTuple, Optional, Tuple

import numpy as np

from .._checks import is_int, is_real
from .._files import check_path, reading, write_bytes
from .._plot import pyplot, save_figure
from ..errors import FileFormatError, SurgeryTypeError, SurgeryValueError
from .layers import misaligned_volume, shrunk_variant
from .runtimes import RUNTIMES, Variant
from .timing import time_variants

_MODEL_FORMAT = 'paramsurgery-latency-model'
_MODEL_VERSION = 1
# Models written before the alignment was measured: oneDNN's block of 8 channels.
_DEFAULT_ALIGN = 8
# Whole nets measured by LatencyModel.measure: at least this many timed runs each.
_MEASURE_REPEATS = 10


class WholeNet(NamedTuple):
    """The net a model was built from, as :meth:`LatencyModel.measure` times it: kept in
    memory only (a file holds the tables, not the net's arrays)."""
    variant: Variant
    groups: Tuple
    repeats: int


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
    align : int
        The channel multiple the runtime prefers, from whole-net measurements (1: none):
        fast counts are its multiples.
    """

    def __init__(self, data, whole: Optional[WholeNet] = None):
        self._data = data
        self._whole = whole
        self.align = int(data.get('align', _DEFAULT_ALIGN))
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
        return a * self._sum(kept) + b * misaligned_volume(full, self.sizes, self._weights,
                                                           self.align) + c

    def fast_counts(self, name: str) -> List[int]:
        """The measured kept counts of group ``name`` that are multiples of :attr:`align`
        and faster than every larger such count (where the runtime speeds up), smallest
        first; the size is always one.

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
        size = self.sizes[name]
        counts = [c for c in sorted(self.table[name]) if c % self.align == 0 or c == size]
        # the layer sums alone: every candidate is aligned (the size is the reference), so
        # the fit's misalignment term is the same for all, and a fit whose layer term is
        # zero (a net too small to see it) does not make every count look alike
        times = {c: self._sum({name: c}) for c in counts}
        fast, best = [], float('inf')
        for c in reversed(counts):
            if times[c] < best or c == counts[-1]:
                fast.append(c)
                best = min(best, times[c])
        return sorted(fast)

    def measure(self, kept: Mapping[str, int]) -> float:
        """Measure the whole net with each named group at its kept count against the dense
        net (interleaved, on the model's runtime and threads), add the measurement to the
        model's calibration and fit the correction again; returns the measured ratio
        dense / shrunk. Only a model built in this process can (it holds a copy of the
        net's arrays, which a file does not); see :attr:`can_measure`.

        Examples
        --------
        >>> import mxnet as mx, paramsurgery as ps
        >>> from mxnet.gluon import nn
        >>> net = nn.HybridSequential(prefix='n_')
        >>> with net.name_scope():
        ...     net.add(nn.Conv2D(16, 3, in_channels=3), nn.Conv2D(4, 3, in_channels=16))
        >>> net.initialize()
        >>> model = ps.latency_model(net, inputs=(1, 3, 16, 16), repeats=1, threads=1)
        >>> before = len(model.calibration)
        >>> model.measure({'n_conv0_weight': 8}) > 0, len(model.calibration) - before
        (True, 1)
        """
        kept = self._check_kept(kept)
        if self._whole is None:
            raise SurgeryValueError(
                'measure: this latency model was loaded from a file, which holds its tables '
                'but not the net: build it with ps.latency_model(net, inputs=..., '
                'runtime=...) in this process to measure whole nets.')
        whole = self._whole
        seconds = time_variants(
            self.runtime, [whole.variant, shrunk_variant(whole.variant, whole.groups, kept)],
            max(whole.repeats, _MEASURE_REPEATS), 1, self.threads,
            desc='latency model, whole net (%s)' % self.runtime)
        dense, small = (float(np.median(s)) for s in seconds)
        # on the scale of the build's dense measurement, as the other calibration nets
        self._data['calibration'].append({'kept': kept, 'seconds': small * self.measured / dense})
        refit(self)
        return dense / small

    @property
    def can_measure(self) -> bool:
        """Whether :meth:`measure` can time whole nets (built in this process, not loaded)."""
        return self._whole is not None

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


def refit(model) -> None:
    """Fit ``model``'s correction to its calibration nets (whole nets measured):
    ``seconds ~ a * (sum of the layers) + b * (unaligned channel volume) + c``."""
    data = model._data
    sums = [model._sum(c['kept']) for c in data['calibration']]
    mis = [misaligned_volume(dict(model.sizes, **c['kept']), model.sizes, model._weights,
                             model.align) for c in data['calibration']]
    data['fit'] = list(_fit(sums, mis, [c['seconds'] for c in data['calibration']]))
    model.calibration = [dict(kept=dict(c['kept']), seconds=float(c['seconds']))
                         for c in data['calibration']]
    model._fit = tuple(data['fit'])
    model.dense = model.predict({})


def _fit(sums, misaligned, seconds):
    """``(a, b, c)`` with ``seconds ~ a * sum + b * misaligned + c``, all ``>= 0``: the
    per-layer sums scaled to the whole net, what unaligned counts cost between layers, and
    what no group shapes (a negative one, which noise can fit, makes the predicted time of
    a small net fall towards zero and its ratio explode). Least squares over the whole-net
    measurements."""
    best = None
    x = np.column_stack([sums, misaligned, np.ones(len(sums))])
    y = np.asarray(seconds)
    # the non-negative solutions lie on the faces: try each subset of free columns
    for cols in ([0, 1, 2], [0, 2], [1, 2], [2], [0, 1], [0], [1]):
        coef, *_ = np.linalg.lstsq(x[:, cols], y, rcond=None)
        full = np.zeros(3)
        full[cols] = coef
        if (full < 0).any():
            continue
        err = float(np.sum((x @ full - y) ** 2))
        if best is None or err < best[0] - 1e-30:
            best = (err, full)
    return tuple(float(v) for v in best[1])


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
    if 'align' in data and not (is_int(data['align']) and data['align'] >= 1):
        bad("'align' should be an integer >= 1")
    sizes = {g for g, _ in data['sizes']}
    for where, names in [('table', data['table']), ('weights', data['weights'])] + [
            ('layer %d' % i, layer['tables']) for i, layer in enumerate(data['layers'])]:
        unknown = set(names) - sizes
        if unknown:
            bad('%s names group %r, which is not in sizes' % (where, sorted(unknown)[0]))
    if set(data['table']) != sizes:
        bad('table has no row for group %r' % sorted(sizes - set(data['table']))[0])


