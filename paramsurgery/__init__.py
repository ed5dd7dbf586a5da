"""paramsurgery: change MXNet Gluon parameters safely.

Assign, scale or mask parameters on every device copy, inside ``autograd.record()``, in
custom training loops, without stale-gradient errors and without the Trainer silently
undoing the change.

Every public name is importable from here (``import paramsurgery as ps``). The modules are
loaded on first use, so that the parts that need no MXNet (``paramsurgery.errors``,
``paramsurgery.pruning_core``, ``paramsurgery.schedules``, ``paramsurgery.budget``) import
without it.

The layers, each importing only from the ones above it (and, within a line, ``a -> b``:
``b`` imports ``a``); a subpackage is one entry, and its ``__init__`` lists the layering of
its modules; ``tests/test_layers.py`` checks this against the real imports::

    errors -> _checks, _files -> _plot    exceptions; argument checks, atomic files; figures
    _amounts -> _ranking -> pruning_core, schedules, budget  no MXNet: the pruning core; budgets
    select                           keys, and the mask-name rule
    _mx                              every private MXNet attribute, nothing else (subpackage)
    access, distributed              context-safe access; Trainer and kvstore checks
    _snapshot                        one transaction over a net and its Trainers
    _values -> surgery               the value plan; assign_params, set_params
    masks                            masks in the graph or the stored weights (subpackage)
    pruning, _usage -> _diagnosis -> stale, samplers  pruning; the stale-gradient doctor; samplers
    channels -> shrinking            channel groups, pruning and shrink (a subpackage); the old path
    report -> _sensitivity -> analysis    sparsity reports; sensitivity reports and trials
    _blobs -> compact -> onnx_export    a compact file's bytes; compact files; ONNX export
    rewinding, dynamic               capture and rewind (lottery tickets); RigL and SET
    latency                          latency measured on a runtime; latency models (subpackage)
    demo -> cli                      the demo and the command line
"""
import importlib as _importlib

# Bound now: the submodule of the same name would otherwise shadow the function.
from .select import select  # noqa: F401  (listed in __all__ below)

__version__ = '0.1.0'

_EXPORTS = {
    'errors': ['ParamSurgeryError', 'SurgeryError', 'SelectionError', 'SurgeryValueError',
               'SurgeryTypeError', 'FileFormatError', 'ParameterStateError',
               'TrainerStateError', 'StaleGradientError', 'SamplerValueError', 'SamplerTypeError',
               'MissingDependencyError', 'DistributedWarning', 'ShrinkError',
               'ExportError'],
    'select': ['select'],
    'access': ['replicas', 'data_on', 'check_params', 'Problem'],
    'surgery': ['assign_params', 'set_params'],
    'masks': ['apply_mask', 'get_mask', 'masked', 'remove_mask', 'save_masks', 'load_masks',
              'load_exported', 'broadcast_masks'],
    'stale': ['find_stale', 'safe_step', 'track_usage', 'explain', 'StaleRecord',
              'UsageTracker', 'STALE_REASONS'],
    'pruning': ['prune_magnitude', 'prune_random', 'prune_structured', 'prune_custom',
                'Pruner'],
    'pruning_core': ['prune_count', 'magnitude_masks', 'random_masks', 'structured_masks',
                     'custom_masks'],
    'schedules': ['ConstantSparsity', 'PolynomialDecay'],
    'report': ['SparsityReport', 'sparsity_report', 'arrays_report'],
    'channels': ['trace_channels', 'ChannelGraph', 'ChannelGroup', 'count_ops',
                 'prune_channels', 'register_shrink_rule', 'shrink', 'ShrinkPlan', 'apply_plan'],
    'analysis': ['sensitivity', 'SensitivityReport'],
    'samplers': ['SubsetRandomSampler', 'complementary_split', 'kfold'],
    'distributed': ['check_trainer', 'init_kvstore'],
    'onnx_export': ['export_onnx', 'OnnxExport'],
    'compact': ['save_compact', 'load_compact'],
    'rewinding': ['Capture', 'capture', 'rewind'],
    'dynamic': ['DynamicSparsity'],
    'latency': ['measure_latency', 'compare_latency', 'Latency', 'latency_model', 'LatencyModel'],
}

_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = [name for names in _EXPORTS.values() for name in names]


def __getattr__(name):
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError("module 'paramsurgery' has no attribute %r" % name)
    value = getattr(_importlib.import_module('.' + module, __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
