"""Small user HybridBlocks built from the operators the channel tracer knows, for
tests/test_channels.py and tests/test_shrink.py."""
import mxnet as mx
from mxnet import gluon
from mxnet.gluon import nn, rnn


def conv_bn(channels, kernel=3, **kwargs):
    out = nn.HybridSequential()
    out.add(nn.Conv2D(channels, kernel, padding=kernel // 2, use_bias=False, **kwargs),
            nn.BatchNorm(), nn.Activation('relu'))
    return out


class Chain(gluon.HybridBlock):
    """conv-bn-relu, conv(bias)-relu, global pool, dense."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.body = nn.HybridSequential()
            self.body.add(conv_bn(8), nn.Conv2D(6, 3, padding=1), nn.Activation('sigmoid'),
                          nn.MaxPool2D(2), conv_bn(10))
            self.pool = nn.GlobalAvgPool2D()
            self.out = nn.Dense(3)

    def hybrid_forward(self, F, x):
        return self.out(self.pool(self.body(x)))


class Residual(gluon.HybridBlock):
    """A residual stream: stem, two blocks adding into it, a projection shortcut."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.stem = conv_bn(8)
            self.a1, self.a2 = conv_bn(6), nn.Conv2D(8, 3, padding=1, use_bias=False)
            self.a_bn = nn.BatchNorm()
            self.b1, self.b2 = conv_bn(5), nn.Conv2D(8, 3, padding=1)
            self.proj = nn.Conv2D(12, 1, use_bias=False)
            self.c = nn.Conv2D(12, 3, padding=1)
            self.pool = nn.GlobalMaxPool2D()
            self.out = nn.Dense(4)

    def hybrid_forward(self, F, x):
        x = self.stem(x)
        x = F.relu(x + self.a_bn(self.a2(self.a1(x))))
        x = F.relu(F.elemwise_add(x, self.b2(self.b1(x))))
        x = F.broadcast_add(self.proj(x), self.c(x))
        return self.out(self.pool(x))


class Concat(gluon.HybridBlock):
    """Two branches concatenated, read by a convolution and a second concatenation."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.a, self.b = conv_bn(6), conv_bn(4, kernel=1)
            self.c = conv_bn(5)
            self.d = nn.Conv2D(7, 1)
            self.pool = nn.GlobalAvgPool2D()
            self.out = nn.Dense(2)

    def hybrid_forward(self, F, x):
        y = F.concat(self.a(x), self.b(x), dim=1)
        z = F.concat(y, self.c(y), dim=1)
        return self.out(self.pool(self.d(z)))


class Depthwise(gluon.HybridBlock):
    """conv, depthwise conv (bias), pointwise conv: mobilenet's pattern."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.a = conv_bn(8)
            self.dw = nn.Conv2D(8, 3, padding=1, groups=8, in_channels=8)
            self.dw_bn = nn.BatchNorm()
            self.pw = conv_bn(6, kernel=1)
            self.pool = nn.GlobalAvgPool2D()
            self.out = nn.Dense(3)

    def hybrid_forward(self, F, x):
        x = F.clip(self.dw_bn(self.dw(self.a(x))), 0, 6)
        return self.out(self.pool(self.pw(x)))


class FlattenDense(gluon.HybridBlock):
    """conv, flatten, dense, dense: a channel is H*W columns of the first dense."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.conv = nn.Conv2D(6, 3, strides=2, padding=1)
            self.flat = nn.Flatten()
            self.fc1 = nn.Dense(10, activation='tanh')
            self.drop = nn.Dropout(0.0)
            self.fc2 = nn.Dense(3)

    def hybrid_forward(self, F, x):
        return self.fc2(self.drop(self.fc1(self.flat(F.relu(self.conv(x))))))


class SqueezeExcite(gluon.HybridBlock):
    """conv-bn-relu, squeeze-and-excitation (dense layers, reshape, broadcast_mul)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.a = conv_bn(8)
            self.pool = nn.GlobalAvgPool2D()
            self.se1 = nn.Dense(4, activation='relu')
            self.se2 = nn.Dense(8)
            self.b = conv_bn(6)
            self.out = nn.Dense(2)

    def hybrid_forward(self, F, x):
        x = self.a(x)
        w = F.sigmoid(self.se2(self.se1(self.pool(x))))
        x = F.broadcast_mul(x, F.reshape(w, shape=(0, 0, 1, 1)))
        return self.out(F.flatten(self.pool(self.b(x))))


class HardCoded(gluon.HybridBlock):
    """A convolution whose hybrid_forward hard-codes its channel count (num_filter=8)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.weight = self.params.get('weight', shape=(8, 3, 3, 3))
            self.bn = nn.BatchNorm(in_channels=8)
            self.pool = nn.GlobalAvgPool2D()
            self.out = nn.Dense(2, in_units=8)

    def hybrid_forward(self, F, x, weight):
        x = F.Convolution(x, weight, kernel=(3, 3), num_filter=8, no_bias=True, name='conv')
        return self.out(self.pool(F.relu(self.bn(x))))


class ResNeXt(gluon.HybridBlock):
    """A ResNeXt bottleneck as gluoncv writes it: 1x1, grouped 3x3 (num_group=4), 1x1, with a
    projection shortcut; then a second grouped convolution reading the first's groups."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.stem = conv_bn(8)
            self.body = nn.HybridSequential()
            self.body.add(conv_bn(8, kernel=1), conv_bn(8, groups=4),
                          nn.Conv2D(12, 1, use_bias=False), nn.BatchNorm())
            self.down = nn.HybridSequential()
            self.down.add(nn.Conv2D(12, 1, use_bias=False), nn.BatchNorm())
            self.grouped = nn.Conv2D(8, 3, padding=1, groups=4)
            self.again = nn.Conv2D(8, 3, padding=1, groups=4)
            self.pool = nn.GlobalAvgPool2D()
            self.out = nn.Dense(3)

    def hybrid_forward(self, F, x):
        x = self.stem(x)
        x = F.relu(self.body(x) + self.down(x))
        return self.out(self.pool(F.relu(self.again(F.relu(self.grouped(x))))))


class GluoncvSE(gluon.HybridBlock):
    """gluoncv's squeeze-and-excitation: contrib adaptive pooling, 1x1 convolutions, sigmoid,
    broadcast_mul."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.a = conv_bn(8)
            self.se = nn.HybridSequential()
            self.se.add(nn.Conv2D(4, 1), nn.Activation('relu'), nn.Conv2D(8, 1),
                        nn.Activation('sigmoid'))
            self.b = conv_bn(6)
            self.out = nn.Dense(2)

    def hybrid_forward(self, F, x):
        x = self.a(x)
        w = self.se(F.contrib.AdaptiveAvgPooling2D(x, output_size=1))
        x = self.b(F.broadcast_mul(x, w))
        return self.out(F.contrib.AdaptiveAvgPooling2D(x, output_size=2))


class XceptionBlock(gluon.HybridBlock):
    """xception's separable convolution with gluoncv's fixed padding: F.pad, depthwise 3x3
    without padding, BatchNorm, pointwise 1x1."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.a = conv_bn(8)
            self.dw = nn.Conv2D(8, 3, groups=8, use_bias=False)
            self.dw_bn = nn.BatchNorm()
            self.pw = conv_bn(6, kernel=1)
            self.pool = nn.GlobalAvgPool2D()
            self.out = nn.Dense(3)

    def hybrid_forward(self, F, x):
        x = F.pad(self.a(x), mode='constant', constant_value=0,
                  pad_width=(0, 0, 0, 0, 1, 1, 1, 1))
        return self.out(self.pool(self.pw(F.relu(self.dw_bn(self.dw(x))))))


class HRFusion(gluon.HybridBlock):
    """HRNet's fusion: a low-resolution branch, 1x1 conv + BatchNorm, nearest UpSampling,
    added to the high-resolution branch; and the reverse path with a strided convolution."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.high = conv_bn(6)
            self.low = conv_bn(8, strides=2)
            self.up = nn.HybridSequential()
            self.up.add(nn.Conv2D(6, 1, use_bias=False), nn.BatchNorm())
            self.down = nn.HybridSequential()
            self.down.add(nn.Conv2D(8, 3, strides=2, padding=1, use_bias=False),
                          nn.BatchNorm())
            self.pool = nn.GlobalAvgPool2D()
            self.out = nn.Dense(2)

    def hybrid_forward(self, F, x):
        high, low = self.high(x), self.low(x)
        fused_high = F.relu(high + F.UpSampling(self.up(low), scale=2, sample_type='nearest'))
        fused_low = F.relu(low + self.down(high))
        up = F.UpSampling(fused_low, scale=2, sample_type='nearest')
        return self.out(self.pool(F.concat(fused_high, up, dim=1)))


class FCNHead(gluon.HybridBlock):
    """An FCN-style head on a backbone: bilinear resize, residual attention's
    ``(1 + mask) * trunk`` with ones_like, spatial slices and a spatial transpose."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.trunk = conv_bn(8)
            self.mask = nn.HybridSequential()
            self.mask.add(nn.Conv2D(8, 1), nn.Activation('sigmoid'))
            self.head = conv_bn(6)
            self.cls = nn.Conv2D(3, 1)

    def hybrid_forward(self, F, x):
        trunk = self.trunk(x)
        m = self.mask(F.contrib.BilinearResize2D(trunk, height=16, width=16))
        y = F.broadcast_mul(F.ones_like(m) + m,
                            F.contrib.BilinearResize2D(trunk, height=16, width=16))
        y = F.slice_axis(y, axis=2, begin=1, end=None)
        y = F.slice(y, begin=(None, None, None, 1), end=(None, None, None, None))
        y = F.transpose(self.head(y), axes=(0, 1, 3, 2))
        return F.contrib.BilinearResize2D(self.cls(y), height=8, width=8)


class BertLayer(gluon.HybridBlock):
    """A BERT encoder layer written the way gluonnlp writes it: query/key/value projections
    (Dense, flatten=False), heads split by reshape + transpose into the batch axis, batch_dot
    and softmax, the output projection, residual adds with LayerNorm, and a GELU
    feed-forward block. Inputs are ``(batch, tokens, units)``."""

    def __init__(self, units=16, hidden=32, heads=4, **kwargs):
        super().__init__(**kwargs)
        self._heads = heads
        with self.name_scope():
            self.proj_query = nn.Dense(units, flatten=False)
            self.proj_key = nn.Dense(units, flatten=False)
            self.proj_value = nn.Dense(units, flatten=False)
            self.proj_out = nn.Dense(units, flatten=False)
            self.ln1 = nn.LayerNorm()
            self.ffn_1 = nn.Dense(hidden, flatten=False)
            self.gelu = nn.GELU()
            self.ffn_2 = nn.Dense(units, flatten=False)
            self.ln2 = nn.LayerNorm()

    def _split(self, F, x):
        x = F.transpose(F.reshape(x, shape=(0, 0, self._heads, -1)), axes=(0, 2, 1, 3))
        return F.reshape(x, shape=(-1, 0, 0), reverse=True)

    def hybrid_forward(self, F, x):
        q, k, v = (self._split(F, p(x)) for p in (self.proj_query, self.proj_key,
                                                   self.proj_value))
        att = F.softmax(F.batch_dot(q, k, transpose_b=True) * 0.5, axis=-1)
        ctx = F.reshape(F.batch_dot(att, v), shape=(-4, -1, self._heads, 0, 0))
        ctx = F.reshape(F.transpose(ctx, axes=(0, 2, 1, 3)), shape=(0, 0, -1))
        x = self.ln1(x + self.proj_out(ctx))
        return self.ln2(x + self.ffn_2(self.gelu(self.ffn_1(x))))


class Deconv(gluon.HybridBlock):
    """simple_pose_resnet's head: strided transposed convolutions (weight ``(in, out, k, k)``)
    with BatchNorm, a depthwise transposed convolution, a 1x1 output convolution."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.stem = conv_bn(8)
            self.up1 = nn.Conv2DTranspose(6, 4, strides=2, padding=1, use_bias=False)
            self.bn = nn.BatchNorm()
            self.dw = nn.Conv2DTranspose(6, 3, padding=1, groups=6, in_channels=6)
            self.up2 = nn.Conv2DTranspose(5, 4, strides=2, padding=1)
            self.head = nn.Conv2D(3, 1)

    def hybrid_forward(self, F, x):
        x = self.dw(F.relu(self.bn(self.up1(self.stem(x)))))
        return self.head(F.relu(self.up2(x)))


class LanguageModel(gluon.HybridBlock):
    """gluonnlp's RNN language model: embedding, a projection, a fused LSTM or GRU layer
    (rnn.LSTM, rnn.GRU: one flat weight vector), the decoder. Inputs are token indices
    ``(batch, tokens)``."""

    def __init__(self, mode='lstm', vocab=50, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.embedding = nn.Embedding(vocab, 8)
            self.proj = nn.Dense(6, flatten=False)
            self.encoder = (rnn.LSTM if mode == 'lstm' else rnn.GRU)(10, layout='NTC')
            self.decoder = nn.Dense(vocab, flatten=False)

    def hybrid_forward(self, F, x):
        return self.decoder(self.encoder(self.proj(self.embedding(x))))


class RecurrentStack(gluon.HybridBlock):
    """Features ``(batch, steps, 7)`` through a projection, a fused ``layers``-layer
    (bidirectional) LSTM or GRU of 6 hidden units, and a per-step classifier."""

    def __init__(self, mode='lstm', layers=2, bidirectional=True, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.proj = nn.Dense(5, flatten=False)
            self.encoder = (rnn.LSTM if mode == 'lstm' else rnn.GRU)(
                6, num_layers=layers, bidirectional=bidirectional, layout='NTC')
            self.out = nn.Dense(3, flatten=False)

    def hybrid_forward(self, F, x):
        return self.out(self.encoder(self.proj(x)))


class GivenStates(gluon.HybridBlock):
    """An LSTM run from initial states given as inputs ``(x, h, c)``; it returns its final
    states too when asked."""

    def __init__(self, return_states=False, **kwargs):
        super().__init__(**kwargs)
        self.return_states = return_states
        with self.name_scope():
            self.proj = nn.Dense(5, flatten=False)
            self.encoder = rnn.LSTM(6, layout='NTC')
            self.out = nn.Dense(3, flatten=False)

    def hybrid_forward(self, F, x, h, c):
        out, states = self.encoder(self.proj(x), [h, c])
        return (self.out(out), states) if self.return_states else self.out(out)


class SplitAttentionConv(gluon.HybridBlock):
    """gluoncv 0.10's SplitAttentionConv (ResNeSt), written as gluoncv writes it: a
    convolution of ``groups * radix`` groups makes ``radix`` splits (reshaped apart by the
    block's own ``channels``, summed), pooled, two grouped 1x1 convolutions give attention
    weights, softmaxed across the splits (a sigmoid for radix 1), that weigh the splits
    before they are summed back; see :func:`split_attention_rule`."""

    def __init__(self, channels, kernel_size, strides=(1, 1), padding=(0, 0),
                 dilation=(1, 1), groups=1, radix=2, in_channels=None, r=2,
                 norm_layer=nn.BatchNorm, norm_kwargs=None, drop_ratio=0, *args, **kwargs):
        super().__init__()
        norm_kwargs = norm_kwargs if norm_kwargs is not None else {}
        inter_channels = max(in_channels * radix // 2 // r, 32)
        self.radix = radix
        self.cardinality = groups
        self.conv = nn.Conv2D(channels * radix, kernel_size, strides, padding, dilation,
                              groups=groups * radix, *args, in_channels=in_channels, **kwargs)
        self.use_bn = norm_layer is not None
        if self.use_bn:
            self.bn = norm_layer(in_channels=channels * radix, **norm_kwargs)
        self.relu = nn.Activation('relu')
        self.fc1 = nn.Conv2D(inter_channels, 1, in_channels=channels, groups=self.cardinality)
        if self.use_bn:
            self.bn1 = norm_layer(in_channels=inter_channels, **norm_kwargs)
        self.relu1 = nn.Activation('relu')
        self.drop = nn.Dropout(drop_ratio) if drop_ratio > 0 else None
        self.fc2 = nn.Conv2D(channels * radix, 1, in_channels=inter_channels,
                             groups=self.cardinality)
        self.channels = channels

    def hybrid_forward(self, F, x):
        x = self.conv(x)
        if self.use_bn:
            x = self.bn(x)
        x = self.relu(x)
        if self.radix > 1:
            splited = F.reshape(x.expand_dims(1), (0, self.radix, self.channels, 0, 0))
            gap = F.sum(splited, axis=1)
        else:
            gap = x
        gap = F.contrib.AdaptiveAvgPooling2D(gap, 1)
        gap = self.fc1(gap)
        if self.use_bn:
            gap = self.bn1(gap)
        atten = self.relu1(gap)
        if self.drop:
            atten = self.drop(atten)
        atten = self.fc2(atten).reshape((0, self.cardinality, self.radix, -1)).swapaxes(1, 2)
        if self.radix > 1:
            atten = F.softmax(atten, axis=1).reshape((0, self.radix, -1, 1, 1))
        else:
            atten = F.sigmoid(atten).reshape((0, -1, 1, 1))
        if self.radix > 1:
            out = F.sum(F.broadcast_mul(atten, splited), axis=1)
        else:
            out = F.broadcast_mul(atten, x)
        return out


def split_attention_rule(block, kept):
    """The shrink rule of :class:`SplitAttentionConv` (the one paramsurgery knows for
    gluoncv's): the channels per radix split follow the convolution."""
    block.channels = block.conv.weight.shape[0] // block.radix


class SplitAttention(gluon.HybridBlock):
    """A ResNeSt bottleneck: a 1x1 convolution, split attention of ``groups`` cardinal groups
    and ``radix`` splits (8 channels per split), a 1x1 convolution, pooling and a
    classifier."""

    def __init__(self, groups=1, radix=2, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.stem = conv_bn(8)
            self.conv1 = nn.Conv2D(8, 1, use_bias=False)
            self.bn1 = nn.BatchNorm()
            self.splat = SplitAttentionConv(8, 3, padding=1, groups=groups, radix=radix,
                                            in_channels=8, use_bias=False)
            self.conv3 = nn.Conv2D(12, 1, use_bias=False)
            self.pool = nn.GlobalAvgPool2D()
            self.out = nn.Dense(3)

    def hybrid_forward(self, F, x):
        x = F.relu(self.bn1(self.conv1(self.stem(x))))
        return self.out(self.pool(self.conv3(self.splat(x))))


class MultiHeadAttentionCell(gluon.HybridBlock):
    """gluonnlp 0.10's MultiHeadAttentionCell over a scaled DotProductAttentionCell, written
    as gluonnlp writes it (self-attention, no mask): the head count and the units live in
    attributes that hybrid_forward reads (see :func:`attention_rule`)."""

    def __init__(self, units, num_heads, dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        self._num_heads = num_heads
        self._query_units = self._key_units = self._value_units = units
        with self.name_scope():
            self.proj_query = nn.Dense(units, flatten=False, prefix='query_')
            self.proj_key = nn.Dense(units, flatten=False, prefix='key_')
            self.proj_value = nn.Dense(units, flatten=False, prefix='value_')
            self._dropout_layer = nn.Dropout(dropout)

    def _heads(self, F, x):
        # (batch, tokens, units) -> (batch * heads, tokens, units / heads)
        x = F.transpose(x.reshape(shape=(0, 0, self._num_heads, -1)), axes=(0, 2, 1, 3))
        return x.reshape(shape=(-1, 0, 0), reverse=True)

    def hybrid_forward(self, F, x):
        query = F.contrib.div_sqrt_dim(self._heads(F, self.proj_query(x)))
        key = self._heads(F, self.proj_key(x))
        att = F.softmax(F.batch_dot(query, key, transpose_b=True), axis=-1)
        att = att.reshape(shape=(-1, self._num_heads, 0, 0), reverse=True)
        att = self._dropout_layer(att).reshape(shape=(-1, 0, 0), reverse=True)
        context = F.batch_dot(att, self._heads(F, self.proj_value(x)))
        context = context.reshape(shape=(-1, self._num_heads, 0, 0), reverse=True)
        return F.transpose(context, axes=(0, 2, 1, 3)).reshape(shape=(0, 0, -1))


def attention_rule(cell, kept):
    """The shrink rule of :class:`MultiHeadAttentionCell`: whole heads were removed, so the
    head count is the new number of query rows over the (unchanged) units per head."""
    per_head = cell._query_units // cell._num_heads
    units = cell.proj_query.weight.shape[0]
    cell._num_heads = units // per_head
    cell._query_units = cell._key_units = cell._value_units = units


class EncoderLayer(gluon.HybridBlock):
    """gluonnlp's BERTEncoderCell: the attention cell, the output projection, a residual
    add and LayerNorm, and the position-wise feed-forward block (dense, GELU, dense,
    residual add, LayerNorm). Inputs are ``(batch, tokens, units)``; BERT-base is
    ``units=768, hidden=3072, heads=12``."""

    def __init__(self, units=16, hidden=32, heads=4, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.attention_cell = MultiHeadAttentionCell(units, heads, prefix='attention_')
            self.proj = nn.Dense(units, flatten=False, prefix='proj_')
            self.layer_norm = nn.LayerNorm(prefix='ln_')
            self.ffn_1 = nn.Dense(hidden, flatten=False, prefix='ffn_1_')
            self.activation = nn.GELU()
            self.ffn_2 = nn.Dense(units, flatten=False, prefix='ffn_2_')
            self.ffn_layer_norm = nn.LayerNorm(prefix='ffn_ln_')

    def hybrid_forward(self, F, x):
        x = self.layer_norm(x + self.proj(self.attention_cell(x)))
        return self.ffn_layer_norm(x + self.ffn_2(self.activation(self.ffn_1(x))))


USER_NETS = {'chain': Chain, 'residual': Residual, 'concat': Concat, 'depthwise': Depthwise,
             'flatten_dense': FlattenDense, 'se': SqueezeExcite, 'resnext': ResNeXt,
             'gluoncv_se': GluoncvSE, 'xception': XceptionBlock, 'hrnet': HRFusion,
             'fcn': FCNHead, 'deconv': Deconv}


def build(kind, ctxs, seed=0, init=None):
    """A user net of ``kind``, initialised deterministically on ``ctxs``, shapes known."""
    net = USER_NETS[kind](prefix=kind + '_')
    mx.random.seed(seed)
    net.initialize(init or mx.init.Xavier(magnitude=2.5), ctx=ctxs)
    net(mx.nd.zeros((1, 3, 8, 8), ctx=ctxs[0]))
    return net


def batch(n=4, seed=3, size=8):
    import numpy as np
    return mx.nd.array(np.random.RandomState(seed).uniform(-1, 1, size=(n, 3, size, size)))


class SelfAttentionCell(gluon.HybridBlock):
    """gluonnlp 0.10's DotProductSelfAttentionCell (BERT's), written as gluonnlp writes it:
    query, key and value weights of its own, each reshaped into heads and concatenated into
    one interleaved projection (whose output's last axis is ``(heads, 3, head units)``),
    MXNet's fused ``interleaved_matmul_selfatt_qk`` and ``_valatt`` operators, and a softmax
    over the valid lengths. Inputs are ``(tokens, batch, units)`` and the valid lengths
    ``(batch, tokens)``; the head count and the units live in attributes (see
    :func:`self_attention_rule`)."""

    def __init__(self, units, num_heads, dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        self._num_heads = num_heads
        self.units = units
        with self.name_scope():
            for name in ('query', 'key', 'value'):
                setattr(self, name + '_bias', self.params.get(name + '_bias', shape=(units,),
                                                              init='zeros'))
            for name in ('query', 'key', 'value'):
                setattr(self, name + '_weight', self.params.get(
                    name + '_weight', shape=(units, units), allow_deferred_init=True))
            self.dropout_layer = nn.Dropout(dropout)

    def hybrid_forward(self, F, qkv, valid_len, query_bias, key_bias, value_bias,
                       query_weight, key_weight, value_weight):
        weights = [w.reshape(shape=(self._num_heads, -1, 0), reverse=True)
                   for w in (query_weight, key_weight, value_weight)]
        in_weight = F.concat(*weights, dim=-2).reshape(shape=(-1, 0), reverse=True)
        biases = [b.reshape(shape=(self._num_heads, -1), reverse=True)
                  for b in (query_bias, key_bias, value_bias)]
        in_bias = F.stack(*biases, axis=1).reshape(-1)
        qkv_proj = F.FullyConnected(data=qkv, weight=in_weight, bias=in_bias,
                                    num_hidden=self.units * 3, no_bias=False, flatten=False)
        att_score = F.contrib.interleaved_matmul_selfatt_qk(qkv_proj, heads=self._num_heads)
        valid_len = F.broadcast_axis(F.expand_dims(valid_len, axis=1), axis=1,
                                     size=self._num_heads)
        valid_len = valid_len.reshape(shape=(-1, 0), reverse=True)
        att_weights = F.softmax(att_score, length=valid_len, use_length=True, axis=-1)
        att_weights = self.dropout_layer(att_weights)
        context = F.contrib.interleaved_matmul_selfatt_valatt(qkv_proj, att_weights,
                                                              heads=self._num_heads)
        att_weights = att_weights.reshape(shape=(-1, self._num_heads, 0, 0), reverse=True)
        return context, att_weights


def self_attention_rule(cell, kept):
    """The shrink rule of :class:`SelfAttentionCell` (the one paramsurgery knows for
    gluonnlp's class): whole heads were removed, so the units per head are unchanged."""
    per_head = cell.units // cell._num_heads
    cell.units = cell.query_weight.shape[0]
    cell._num_heads = cell.units // per_head


class BertCell(gluon.HybridBlock):
    """gluonnlp's BERTEncoderCell: the interleaved self-attention cell, the output
    projection, a residual add and LayerNorm, the position-wise feed-forward block (dense,
    GELU, dense, residual add, LayerNorm). Inputs are ``(tokens, batch, units)`` and the
    valid lengths ``(batch, tokens)``."""

    def __init__(self, units=16, hidden=32, heads=4, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.attention_cell = SelfAttentionCell(units, heads, prefix='attention_')
            self.proj = nn.Dense(units, flatten=False, prefix='proj_')
            self.ffn_1 = nn.Dense(hidden, flatten=False, prefix='ffn_1_')
            self.activation = nn.GELU()
            self.ffn_2 = nn.Dense(units, flatten=False, prefix='ffn_2_')
            self.ffn_layer_norm = nn.LayerNorm(prefix='ffn_ln_')
            self.layer_norm = nn.LayerNorm(prefix='ln_')

    def hybrid_forward(self, F, x, valid_len):
        context, _ = self.attention_cell(x, valid_len)
        x = self.layer_norm(self.proj(context) + x)
        return self.ffn_layer_norm(self.ffn_2(self.activation(self.ffn_1(x))) + x)


class Bert(gluon.HybridBlock):
    """gluonnlp's BERTModel over its BERTEncoder, written as gluonnlp writes them: token
    embeddings turned to the ``(tokens, batch, units)`` layout, positions from
    ``arange_like`` embedded and added, LayerNorm, :class:`BertCell` layers given the valid
    lengths, ``SequenceMask`` and the layout turned back. The input is the token indices
    ``(batch, tokens)``; the valid lengths are made from its shape (tokens, tokens - 1, ...;
    batch <= tokens), so that the net has one input."""

    def __init__(self, units=16, hidden=32, heads=4, layers=2, vocab=20, max_length=16,
                 **kwargs):
        super().__init__(**kwargs)
        self._units, self._max_length = units, max_length
        with self.name_scope():
            self.word_embed = nn.Embedding(vocab, units, prefix='word_embed_')
            self.position_weight = self.params.get('position_weight',
                                                   shape=(max_length, units))
            self.layer_norm = nn.LayerNorm(prefix='ln_')
            self.cells = nn.HybridSequential(prefix='cells_')
            with self.cells.name_scope():
                for _ in range(layers):
                    self.cells.add(BertCell(units, hidden, heads))

    def hybrid_forward(self, F, tokens, position_weight):
        x = self.word_embed(tokens).transpose((1, 0, 2))
        steps = F.contrib.arange_like(x, axis=0)
        valid_length = F.broadcast_sub(F.sum(F.ones_like(steps), axis=0, keepdims=True),
                                       F.contrib.arange_like(x, axis=1))
        valid_len = F.broadcast_add(F.reshape(valid_length, shape=(-1, 1)),
                                    F.reshape(F.zeros_like(steps), shape=(1, -1)))
        valid_len = F.cast(valid_len, dtype='int32')
        positions = F.Embedding(steps, position_weight, self._max_length, self._units)
        x = self.layer_norm(F.broadcast_add(x, F.expand_dims(positions, axis=1)))
        for cell in self.cells:
            x = cell(x, valid_len)
        x = F.SequenceMask(x, sequence_length=valid_length, use_sequence_length=True, axis=0)
        return x.transpose((1, 0, 2))


class FusedAttention(gluon.HybridBlock):
    """MXNet's fused self-attention fed by one Dense of ``3 * units`` features (its rows laid
    out ``(heads, 3, head units)``), and an output projection. Inputs are ``(tokens, batch,
    units)``; the head count lives in an attribute (see :func:`fused_attention_rule`)."""

    def __init__(self, units=8, heads=2, **kwargs):
        super().__init__(**kwargs)
        self._units, self._heads = units, heads
        with self.name_scope():
            self.qkv = nn.Dense(3 * units, flatten=False, prefix='qkv_')
            self.out = nn.Dense(units, flatten=False, prefix='out_')
            self.ln = nn.LayerNorm(prefix='ln_')

    def hybrid_forward(self, F, x):
        proj = self.qkv(x)
        att = F.softmax(F.contrib.interleaved_matmul_selfatt_qk(proj, heads=self._heads),
                        axis=-1)
        context = F.contrib.interleaved_matmul_selfatt_valatt(proj, att, heads=self._heads)
        return self.ln(x + self.out(context))


def fused_attention_rule(block, kept):
    """The shrink rule of :class:`FusedAttention`: whole heads were removed, so the units per
    head are unchanged."""
    per_head = block._units // block._heads
    block._units = block.out.weight.shape[1]
    block._heads = block._units // per_head
