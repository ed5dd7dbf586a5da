"""Blocks: children, the Parameters a ``hybrid_forward`` receives by name, cached graphs,
structural names (as ``save_parameters`` uses them), and the channel counts a layer keeps in
private attributes (resized by structural shrink)."""

from mxnet.gluon.block import Block, HybridBlock
from mxnet.gluon.parameter import Parameter

__all__ = []


def is_hybridized(block):
    """True when ``block`` runs through a cached graph when called with NDArrays."""
    return isinstance(block, HybridBlock) and bool(block._active)


def cached_graph_params(block):
    """The Parameters a hybridised block's cached graph reads at every call, or None.

    A hybridised block builds its graph once (calling its children with Symbols) and then
    runs the CachedOp: the children's ``forward`` never runs again, so which parameters a
    call reads is the list of parameter inputs of that graph (``_cached_op_args``).
    """
    args = getattr(block, '_cached_op_args', None)
    if not args or getattr(block, '_cached_op', None) is None:
        return None
    return [param for is_data, param in args if not is_data and isinstance(param, Parameter)]


def block_children(block):
    """The direct child blocks of ``block``."""
    return list(block._children.values())


def block_params(block):
    """``{attribute name: Parameter}`` that ``block`` passes to its ``hybrid_forward``."""
    return dict(block._reg_params)


def registered_params_live(block):
    """The live ``{attribute: Parameter}`` dict behind :func:`block_params` (to edit)."""
    return block._reg_params


def set_registered_params(block, params):
    """Replace the ``{attribute: Parameter}`` dict behind :func:`block_params`."""
    block.__dict__['_reg_params'] = params


def walk_blocks(block):
    """``block`` and all its descendants, depth first, each once."""
    seen, order, stack = set(), [], [block]
    while stack:
        blk = stack.pop()
        if id(blk) in seen:
            continue
        seen.add(id(blk))
        order.append(blk)
        stack.extend(reversed(block_children(blk)))
    return order


def clear_cached_graphs(block):
    """Drop the cached graph and CachedOp of ``block`` and every hybrid descendant.

    The next forward rebuilds them from ``hybrid_forward`` (Gluon does the same in
    ``hybridize()`` and ``cast()``).
    """
    for blk in walk_blocks(block):
        if isinstance(blk, HybridBlock):
            blk._clear_cached_op()


def structural_names(block):
    """``{structural name: Parameter}`` exactly as ``save_parameters`` names them."""
    return block._collect_params_with_prefix()


def own_structural_names(block, prefix=''):
    """:func:`structural_names` as ``block``'s class computes them, ignoring any override
    installed on the instance."""
    return type(block)._collect_params_with_prefix(block, prefix)


def class_overrides_structural_names(block):
    """True when ``block``'s class has its own structural naming (the fused RNN layers)."""
    return type(block)._collect_params_with_prefix is not Block._collect_params_with_prefix


def set_structural_names(block, method):
    """Install (``method`` a bound method) or remove (None) an instance-level override of
    the structural naming."""
    if method is None:
        block.__dict__.pop('_collect_params_with_prefix', None)
    else:
        block.__dict__['_collect_params_with_prefix'] = method


def conv_op_name(block):
    """The operator a convolution block runs (``'Convolution'``, ``'Deconvolution'``), or
    None for other blocks."""
    return getattr(block, '_op_name', None)


def conv_kwargs(block):
    """The operator arguments a convolution block passes (kernel, stride, layout, ...)."""
    return dict(block._kwargs)


_BLOCK_ATTRS = ('_channels', '_in_channels', '_units', '_in_units', 'in_channels')


def is_conv(block):
    from mxnet.gluon.nn.conv_layers import _Conv
    return isinstance(block, _Conv) and block._op_name == 'Convolution'


def is_dense(block):
    from mxnet.gluon.nn import Dense
    return isinstance(block, Dense)


def is_embedding(block):
    from mxnet.gluon.nn import Embedding
    return isinstance(block, Embedding)


def resize_rnn_layer(block):
    """Make a Gluon rnn.LSTM, GRU or RNN layer's hidden size (its begin state and the RNN
    operator's ``state_size``) and input size agree with its resized parameters."""
    block._hidden_size = block._reg_params['l0_h2h_weight'].shape[1]
    if block._input_size:
        block._input_size = block._reg_params['l0_i2h_weight'].shape[1]


def is_batchnorm(block):
    from mxnet.gluon.nn.basic_layers import _BatchNorm
    return isinstance(block, _BatchNorm)


def block_attrs_state(block):
    """The channel-count attributes of ``block`` (to restore with :func:`restore_block_attrs`)."""
    saved = {k: block.__dict__[k] for k in _BLOCK_ATTRS if k in block.__dict__}
    kwargs = block.__dict__.get('_kwargs')
    return saved, (dict(kwargs) if isinstance(kwargs, dict) else None)


def restore_block_attrs(block, state):
    saved, kwargs = state
    for k in _BLOCK_ATTRS:
        if k in saved:
            block.__dict__[k] = saved[k]
        else:
            block.__dict__.pop(k, None)
    if kwargs is not None:
        block.__dict__['_kwargs'].clear()
        block.__dict__['_kwargs'].update(kwargs)


def is_depthwise(block):
    """A Convolution block whose every group is one input and one output channel."""
    groups = block._kwargs.get('num_group', 1)
    return groups > 1 and groups == block._channels


def is_deconv(block):
    from mxnet.gluon.nn.conv_layers import _Conv
    return isinstance(block, _Conv) and block._op_name == 'Deconvolution'


def resize_block(block, depthwise):
    """Make a Gluon layer's channel counts agree with its (already resized) parameters."""
    if is_deconv(block):
        # the weight of a transposed convolution is (in, out / groups, kernel...)
        shape = block._reg_params['weight'].shape
        if depthwise:
            block._kwargs['num_group'] = shape[0]
        block._channels = shape[1] * block._kwargs.get('num_group', 1)
        block._kwargs['num_filter'] = block._channels
        if block._in_channels:
            block._in_channels = shape[0]
    elif is_conv(block):
        shape = block._reg_params['weight'].shape
        block._channels = shape[0]
        block._kwargs['num_filter'] = shape[0]
        if depthwise:
            block._kwargs['num_group'] = shape[0]
            if block._in_channels:
                block._in_channels = shape[0]
        elif shape[1]:
            block._in_channels = shape[1] * block._kwargs.get('num_group', 1)
    elif is_dense(block):
        shape = block._reg_params['weight'].shape
        block._units = shape[0]
        if shape[1]:
            block._in_units = shape[1]
    elif is_batchnorm(block):
        block.in_channels = block._reg_params['gamma'].shape[0]
    elif is_embedding(block):
        block._kwargs['output_dim'] = block._reg_params['weight'].shape[1]
