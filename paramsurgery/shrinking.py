"""The old path of the structural shrink: ``shrink``, ``ShrinkPlan`` and ``apply_plan`` now
live in the :mod:`paramsurgery.channels` subpackage (``channels/shrink.py`` and
``channels/plan.py``); they are importable from here as before."""
# A shim, kept so that ``from paramsurgery.shrinking import shrink`` (as users wrote it)
# keeps working; new code imports from paramsurgery (``ps.shrink``) or paramsurgery.channels.
from .channels.check import RTOL  # noqa: F401  (the check's tolerance, as before)
from .channels.plan import ShrinkPlan, apply_plan
from .channels.shrink import shrink

__all__ = ['shrink', 'ShrinkPlan', 'apply_plan']
