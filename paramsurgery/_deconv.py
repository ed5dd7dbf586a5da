"""Temporary re-export: ``channels.py`` still imports ``real_deconvolution`` from here.

The masked transposed convolution moved to ``paramsurgery/masks/forward.py``; remove this
file once the channel tracer imports it from there.
"""
from .masks.forward import real_deconvolution  # noqa: F401

__all__ = []
