"""paramsurgery: change MXNet Gluon parameters safely.

Assign, scale or mask parameters on every device copy, inside ``autograd.record()``, in
custom training loops, without stale-gradient errors and without the Trainer silently
undoing the change.
"""
from .errors import (ParamSurgeryError, SurgeryError, SelectionError, SurgeryValueError,
                     SurgeryTypeError, ParameterStateError, TrainerStateError,
                     SamplerValueError, SamplerTypeError, MissingDependencyError,
                     StaleGradientError, DistributedWarning, ShrinkError)
from .select import select
from .access import replicas, data_on, check_params, Problem
from .surgery import assign_params, set_params
from .samplers import SubsetRandomSampler, complementary_split, kfold
from .pruning import (prune_magnitude, prune_random, prune_structured, prune_custom, Pruner,
                      prune_count, magnitude_masks, random_masks, structured_masks,
                      custom_masks, ConstantSparsity, PolynomialDecay)
from .report import SparsityReport, sparsity_report, arrays_report
from .stale import (find_stale, safe_step, track_usage, explain, StaleRecord, UsageTracker,
                    STALE_REASONS)
from .masks import (apply_mask, get_mask, masked, remove_mask, save_masks, load_masks,
                    load_exported)
from .distributed import check_trainer, init_kvstore, broadcast_masks
from .channels import trace_channels, ChannelGraph, ChannelGroup, count_ops, prune_channels
from .shrink import shrink, ShrinkPlan, apply_plan

__version__ = '0.1.0'

__all__ = [
    # errors and warnings
    'ParamSurgeryError', 'SurgeryError', 'SelectionError', 'SurgeryValueError',
    'SurgeryTypeError', 'ParameterStateError', 'TrainerStateError', 'StaleGradientError',
    'SamplerValueError', 'SamplerTypeError', 'MissingDependencyError', 'DistributedWarning',
    # selection and access
    'select', 'replicas', 'data_on', 'check_params', 'Problem',
    # value surgery
    'assign_params', 'set_params',
    # masks in the graph
    'apply_mask', 'get_mask', 'masked', 'remove_mask', 'save_masks', 'load_masks',
    'load_exported',
    # stale gradients
    'find_stale', 'safe_step', 'track_usage', 'explain', 'StaleRecord', 'UsageTracker',
    'STALE_REASONS',
    # pruning: on a net, masks computed from arrays, and schedules
    'prune_magnitude', 'prune_random', 'prune_structured', 'prune_custom', 'Pruner',
    'prune_count', 'magnitude_masks', 'random_masks', 'structured_masks', 'custom_masks',
    'ConstantSparsity', 'PolynomialDecay',
    # reports
    'SparsityReport', 'sparsity_report', 'arrays_report',
    # samplers
    'SubsetRandomSampler', 'complementary_split', 'kfold',
    # distributed kvstore (dist_sync)
    'check_trainer', 'init_kvstore', 'broadcast_masks',
    # channel pruning and structural shrink
    'trace_channels', 'ChannelGraph', 'ChannelGroup', 'count_ops', 'prune_channels',
    'shrink', 'ShrinkPlan', 'apply_plan', 'ShrinkError',
]
