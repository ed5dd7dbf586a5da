"""paramsurgery: change MXNet Gluon parameters safely.

Assign, scale or mask parameters on every device copy, inside ``autograd.record()``, in
custom training loops, without stale-gradient errors and without the Trainer silently
undoing the change.
"""
from .errors import (ParamSurgeryError, SurgeryError, SelectionError, SurgeryValueError,
                     SurgeryTypeError, ParameterStateError, TrainerStateError)
from .select import select
from .access import replicas, data_on, check_params, Problem
from .surgery import assign_params, set_params
from .masks import (apply_mask, get_mask, masked, remove_mask, save_masks, load_masks,
                    load_exported)

__version__ = '0.1.0'

__all__ = [
    # errors
    'ParamSurgeryError', 'SurgeryError', 'SelectionError', 'SurgeryValueError',
    'SurgeryTypeError', 'ParameterStateError', 'TrainerStateError',
    # selection and access
    'select', 'replicas', 'data_on', 'check_params', 'Problem',
    # value surgery
    'assign_params', 'set_params',
    # masks in the graph
    'apply_mask', 'get_mask', 'masked', 'remove_mask', 'save_masks', 'load_masks',
    'load_exported',
]
