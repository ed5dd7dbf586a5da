"""Channel groups, channel pruning and structural shrink: one feature, one subpackage.

A channel of a convolution's output is not only a row of its weight: the BatchNorm after it
has a gamma, beta and running statistics entry for it, every layer reading the tensor has
an input slice for it, a residual add ties it to the channel of the same index of every
other tensor added, a ``Concat`` moves it to an offset, a ``Flatten`` spreads it over
``H*W`` columns of the next ``Dense``. :func:`trace_channels` finds all of that from the
symbolic graph of a ``HybridBlock`` (``net(mx.sym.var('data'))`` and shape inference), the
way Torch-Pruning's dependency graph does for PyTorch; :func:`prune_channels` masks whole
channels consistently on every member, so that the masked net computes exactly what the net
shrunk by :func:`shrink` computes; :func:`shrink` removes them for real. See
``docs/shrink.md``.

The modules, each importing only from the ones before it (``tests/test_layers.py`` checks
this against the real imports; inside the package a name without an underscore is meant
for the sibling modules, ``_name`` is local to its file)::

    graph               ChannelGroup, ChannelGraph and the records the tracer passes around
    inputs              input shapes and batches, deferred init, the HybridBlock check
    layers -> tensors   operator handlers: layers with parameters; the other operators
    rules               register_shrink_rule; how blocks follow their new shapes
    trace               the symbolic trace, the walk, the operator table; trace_channels
    traced              the last trace of a net, reused while nothing it reads changed
    ops                 count_ops
    importance          the members' arrays per group, and the channels' scores
    prune               which channels to mask; prune_channels
    plan -> check       ShrinkPlan and apply_plan; the all-or-nothing check of a shrink
    shrink              shrink (the phases: plan the keeps, new arrays, commit or undo)
    exported            shrinking an exported model's files (the CLI's shrink)
"""
from .graph import ChannelGraph, ChannelGroup
from .ops import count_ops
from .plan import ShrinkPlan, apply_plan
from .prune import choose_channels as choose_channels  # importable as before; not exported
from .prune import prune_channels
from .rules import register_shrink_rule
from .rules import shrink_rule_of as shrink_rule_of  # importable as before; not exported
from .trace import trace_channels

# isort: split
# Last, and bound by name: importing the submodule ``shrink`` sets the package attribute
# ``shrink`` to the module; this binding makes it the function again, for good (a later
# import of the already loaded submodule does not set it back).
from .shrink import shrink

__all__ = ['trace_channels', 'ChannelGraph', 'ChannelGroup', 'prune_channels', 'count_ops',
           'register_shrink_rule', 'shrink', 'ShrinkPlan', 'apply_plan']
