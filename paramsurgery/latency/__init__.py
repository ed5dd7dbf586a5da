"""Latency measured on the runtime that serves a net, and latency models (docs/latency.md).

The net is traced to a symbol and its parameters copied (replica 0) into a separate runner,
so the measured net itself is never hybridised, fused or exported: it is left exactly as
it was.

The modules, each importing only from the ones before it (``tests/test_layers.py`` checks
this against the real imports; inside the package a name without an underscore is meant
for the sibling modules, ``_name`` is local to its file)::

    runtimes            the variants a runtime times, and the table of runtime builders
    timing              interleaved timing; measure_latency, compare_latency
    layers              the layers each group shapes, their counts, shrunk whole nets
    model               LatencyModel: predictions, fast counts, table, figure, file
    build               latency_model: the layer tables, the whole-net calibration, the fit
"""
from .build import latency_model
from .model import LatencyModel
from .timing import Latency, compare_latency, measure_latency

__all__ = ['Latency', 'measure_latency', 'compare_latency', 'LatencyModel', 'latency_model']

# The public path, in signatures, reprs and pickles: where users import them from.
for _cls in (Latency, LatencyModel):
    _cls.__module__ = __name__
del _cls
