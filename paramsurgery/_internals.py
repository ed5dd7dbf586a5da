"""Temporary re-export of :mod:`paramsurgery._mx` (the adapter was split by object).

``channels.py`` and ``shrinking.py`` still import this name; remove this file once they
import ``_mx``.
"""
from . import _mx

__all__ = []


def __getattr__(name):
    return getattr(_mx, name)
