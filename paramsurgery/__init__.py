"""paramsurgery: change MXNet Gluon parameters safely.

Assign, scale or mask parameters on every device copy, inside ``autograd.record()``, in
custom training loops, without stale-gradient errors and without the Trainer silently
undoing the change.
"""
from .errors import (ParamSurgeryError, SurgeryError, SelectionError, SurgeryValueError,
                     SurgeryTypeError, ParameterStateError, TrainerStateError,
                     SamplerValueError, SamplerTypeError, MissingDependencyError,
                     DistributedWarning)
from .select import select
from .access import replicas, data_on, check_params, Problem
from .surgery import assign_params, set_params
from .samplers import SubsetRandomSampler, complementary_split, kfold
from .pruning import (prune_count, magnitude_masks, random_masks, structured_masks,
                      custom_masks, ConstantSparsity, PolynomialDecay)
from .report import SparsityReport, arrays_report
from .distributed import check_trainer, init_kvstore

__version__ = '0.1.0'

__all__ = [
    # errors
    'ParamSurgeryError', 'SurgeryError', 'SelectionError', 'SurgeryValueError',
    'SurgeryTypeError', 'ParameterStateError', 'TrainerStateError',
    # selection and access
    'select', 'replicas', 'data_on', 'check_params', 'Problem',
    # value surgery
    'assign_params', 'set_params',
    # samplers
    'SamplerValueError', 'SamplerTypeError',
    'SubsetRandomSampler', 'complementary_split', 'kfold',
    'MissingDependencyError',
    # pruning: masks computed from arrays, and schedules
    'prune_count', 'magnitude_masks', 'random_masks', 'structured_masks', 'custom_masks',
    'ConstantSparsity', 'PolynomialDecay',
    # reports
    'SparsityReport', 'arrays_report',
    # distributed kvstore (dist_sync)
    'DistributedWarning', 'check_trainer', 'init_kvstore',
]
