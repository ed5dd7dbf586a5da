"""trace_channels, count_ops and prune_channels on small user HybridBlocks."""
import math

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon
from mxnet.gluon import nn

import paramsurgery as ps

from channel_nets import batch, build
from helpers import ONE, TWO, assert_same_bits, snapshot


def members(graph, name):
    return dict((m[0], m[1:]) for m in graph[name].members)


# --------------------------------------------------------------------------- tracing

def test_chain_groups_and_members():
    net = build('chain', ONE)
    graph = ps.trace_channels(net, (1, 3, 8, 8))
    assert [(g.name, g.size, g.prunable) for g in graph.groups] == [
        ('data', 3, False), ('chain_conv0_weight', 8, True), ('chain_conv1_weight', 6, True),
        ('chain_conv2_weight', 10, True), ('chain_dense0_weight', 3, False)]
    g = graph['chain_conv0_weight']
    assert g.members == [
        ('chain_conv0_weight', 0, 0, 1), ('chain_batchnorm0_gamma', 0, 0, 1),
        ('chain_batchnorm0_beta', 0, 0, 1), ('chain_batchnorm0_running_mean', 0, 0, 1),
        ('chain_batchnorm0_running_var', 0, 0, 1), ('chain_conv1_weight', 1, 0, 1)]
    assert g.roles == ['weight', 'bn_gamma', 'bn_beta', 'bn_mean', 'bn_var', 'input']
    assert ('chain_batchnorm0_running_mean', 0, 0, 1) not in g.maskable
    assert graph['data'].reason == 'data input'
    assert graph['chain_dense0_weight'].reason == "reaches the net output ('chain_dense0_fwd')"
    table = str(graph)
    assert 'chain_conv1_weight' in table and '3 prunable' in table



def test_members_are_named_records_that_read_as_the_tuples_they_were():
    """Member(param, axis, offset, stride): fields by name, and still equal to, unpacked as
    and printed as the plain 4-tuple (docs and user code read members that way)."""
    net = nn.HybridSequential(prefix='net_')
    with net.name_scope():
        net.add(nn.Conv2D(8, 3, use_bias=False), nn.BatchNorm(), nn.Activation('relu'),
                nn.Conv2D(4, 3), nn.Flatten(), nn.Dense(2))
    graph = ps.trace_channels(net, (1, 3, 8, 8))
    dense = graph['net_conv1_weight'].members[-1]
    # Flatten after a 4x4 output: each channel is 16 consecutive columns
    assert (dense.param, dense.axis, dense.offset, dense.stride) == ('net_dense0_weight', 1, 0, 16)
    name, axis, offset, stride = dense
    assert (name, axis, offset, stride) == dense == ('net_dense0_weight', 1, 0, 16)
    assert repr(dense) == "('net_dense0_weight', 1, 0, 16)"
    # what the shrink diagnosis reads comes through the graph's constructor: the layout of
    # every tensor by group index, and the nodes that stand for parameters
    conv0 = [g.name for g in graph.groups].index('net_conv0_weight')
    nodes = graph._trace.nodes
    relu = next(nid for nid, n in enumerate(nodes) if n['op'] == 'Activation')
    assert [tuple(s) for s in graph._layout[(relu, 0)]] == [(conv0, 0, 1)]
    assert {nodes[nid]['name'] for nid in graph._param_nodes} == {
        n for n in net.collect_params()}


def test_residual_stream_is_one_group():
    graph = ps.trace_channels(build('residual', ONE), (1, 3, 8, 8))
    stream = members(graph, 'residual_conv0_weight')
    # the stem, both blocks' last convolutions and every reader of the stream
    for name in ('residual_conv0_weight', 'residual_conv2_weight', 'residual_conv4_weight',
                 'residual_conv4_bias', 'residual_batchnorm2_gamma'):
        assert stream[name][0] == 0, name
    for name in ('residual_conv1_weight', 'residual_conv3_weight', 'residual_conv5_weight',
                 'residual_conv6_weight'):
        assert stream[name] == (1, 0, 1), name
    # broadcast_add joins the projection and the other branch
    assert {'residual_conv5_weight', 'residual_conv6_weight', 'residual_conv6_bias',
            'residual_dense0_weight'} <= set(members(graph, 'residual_conv5_weight'))
    assert len(graph.prunable) == 4


def test_concat_offsets():
    graph = ps.trace_channels(build('concat', ONE), (1, 3, 8, 8))
    a = members(graph, 'concat_conv0_weight')
    b = members(graph, 'concat_conv1_weight')
    c = members(graph, 'concat_conv2_weight')
    # y = [a(6), b(4)] read by conv2; z = [y, c(5)] read by conv3
    assert a['concat_conv2_weight'] == (1, 0, 1) and b['concat_conv2_weight'] == (1, 6, 1)
    assert a['concat_conv3_weight'] == (1, 0, 1) and b['concat_conv3_weight'] == (1, 6, 1)
    assert c['concat_conv3_weight'] == (1, 10, 1)
    assert graph['data'].members == [('concat_conv0_weight', 1, 0, 1),
                                      ('concat_conv1_weight', 1, 0, 1)]


def test_depthwise_couples_input_and_output():
    graph = ps.trace_channels(build('depthwise', ONE), (1, 3, 8, 8))
    g = members(graph, 'depthwise_conv0_weight')
    assert g['depthwise_conv1_weight'] == (0, 0, 1)     # depthwise weight, output axis
    assert g['depthwise_conv1_bias'] == (0, 0, 1)
    assert g['depthwise_batchnorm1_gamma'] == (0, 0, 1)
    assert g['depthwise_conv2_weight'] == (1, 0, 1)
    assert [x.name for x in graph.prunable] == ['depthwise_conv0_weight',
                                                'depthwise_conv2_weight']


def test_dense_after_flatten_has_stride_h_times_w():
    graph = ps.trace_channels(build('flatten_dense', ONE), (2, 3, 8, 8))
    g = members(graph, 'flatten_dense_conv0_weight')
    assert g['flatten_dense_dense0_weight'] == (1, 0, 16)    # 4x4 output map
    assert graph['flatten_dense_dense0_weight'].prunable
    assert members(graph, 'flatten_dense_dense0_weight')['flatten_dense_dense1_weight'] == \
        (1, 0, 1)


def test_squeeze_excitation_multiplication_joins_the_groups():
    graph = ps.trace_channels(build('se', ONE), (1, 3, 8, 8))
    g = members(graph, 'se_conv0_weight')
    assert g['se_dense0_weight'] == (1, 0, 1)     # squeeze reads the channels
    assert g['se_dense1_weight'] == (0, 0, 1)     # excitation produces a scale per channel
    assert g['se_dense1_bias'] == (0, 0, 1)
    assert g['se_conv1_weight'] == (1, 0, 1)
    assert graph['se_dense0_weight'].prunable


def test_unknown_operator_is_not_prunable_and_named():
    class Odd(gluon.HybridBlock):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            with self.name_scope():
                self.a = nn.Conv2D(4, 3)
                self.b = nn.Conv2D(4, 3)
                self.c = nn.Conv2D(5, 1)
                self.out = nn.Dense(2)

        def hybrid_forward(self, F, x):
            x = F.LRN(self.a(x), nsize=3)
            x = F.softmax(self.b(x), axis=1)
            return self.out(self.c(x))

    graph = ps.trace_channels(Odd(prefix='odd_'), (1, 3, 8, 8))
    g = graph['odd_conv0_weight']
    assert not g.prunable
    assert g.reason == "passes the operator LRN ('odd_lrn0') that the tracer does not know"
    # a known operator that cannot keep the channels apart says why, naming itself
    assert graph['odd_conv1_weight'].reason == \
        "passes the softmax 'odd_softmax0' over axis 1, which mixes the channels"
    # the layers after them still start groups of their own
    assert graph['odd_conv2_weight'].prunable


def test_an_unknown_operator_blocks_only_the_channels_through_it():
    """An operator whose output has no channel axis (rank 1) used to leave the next layers
    untraced, their reasons naming the wrong operator; a layer after it starts its own group."""
    class Rank1(gluon.HybridBlock):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            with self.name_scope():
                self.a = nn.Conv2D(4, 3)
                self.b = nn.Dense(6, flatten=False)
                self.c = nn.Dense(3)
                self.out = nn.Dense(2)

        def hybrid_forward(self, F, x):
            y = F.reshape(self.a(x), shape=(-1,))        # rank 1: no channel axis
            y = F.expand_dims(self.b(y), axis=0)
            return self.out(F.relu(self.c(y)))

    graph = ps.trace_channels(Rank1(prefix='r_'), (1, 3, 8, 8))
    assert graph['r_conv0_weight'].reason == (
        "passes the Reshape 'r_reshape0', which reshapes (1, 4, 6, 6) into (144,): the "
        "channel axis is not kept")
    # the dense layer reading the rank-1 tensor is a group of its own, blocked by what
    # really blocks it
    assert graph['r_dense0_weight'].reason.startswith("passes the expand_dims 'r_expand_dims0'")
    assert graph['r_dense1_weight'].prunable
    assert "the tracer does not know" not in str(graph)


def test_grouped_convolution_keeps_num_group():
    net = nn.HybridSequential(prefix='g_')
    with net.name_scope():
        net.add(nn.Conv2D(8, 3), nn.BatchNorm(), nn.Conv2D(6, 3, groups=2), nn.Dense(2))
    graph = ps.trace_channels(net, (1, 3, 8, 8))
    first = graph['g_conv0_weight']
    # position i within a group of 4: channels i and 4 + i of every member
    assert first.prunable and first.size == 4
    assert ('g_conv0_weight', 0, 0, 1) in first.members
    assert ('g_conv0_weight', 0, 4, 1) in first.members
    assert ('g_batchnorm0_gamma', 0, 4, 1) in first.members
    assert ('g_conv1_weight', 1, 0, 1) in first.members      # the weight's (8 / 2) columns
    second = graph['g_conv1_weight']
    assert second.size == 3 and second.prunable
    assert {('g_conv1_weight', 0, 0, 1), ('g_conv1_weight', 0, 3, 1), ('g_conv1_bias', 0, 3, 1),
            ('g_dense0_weight', 1, 0, 16), ('g_dense0_weight', 1, 48, 16)} <= set(second.members)


def test_plain_block_and_bad_shapes():
    class Plain(gluon.Block):
        def forward(self, x):
            return x

    for fn in (lambda n: ps.trace_channels(n, (1, 3)), lambda n: ps.count_ops(n, (1, 3)),
               lambda n: ps.prune_channels(n, 0.5, inputs=(1, 3))):
        with pytest.raises(ps.SurgeryTypeError, match='HybridBlock'):
            fn(Plain())
    net = build('chain', ONE)
    with pytest.raises(ps.SurgeryValueError, match=r'\(1, 5, 8, 8\) does not run'):
        ps.trace_channels(net, (1, 5, 8, 8))
    with pytest.raises(ps.SurgeryValueError, match='>= 1'):
        ps.trace_channels(net, (0, 3, 8, 8))
    with pytest.raises(ps.SurgeryTypeError):
        ps.trace_channels(net, 'data')


def test_count_ops_by_hand():
    net = build('flatten_dense', ONE)
    macs, params = ps.count_ops(net, (5, 3, 8, 8))
    # conv 6x3x3x3 on a 4x4 output map; dense 96 -> 10; dense 10 -> 3
    assert macs == 6 * 16 * 27 + 96 * 10 + 10 * 3
    assert params == (6 * 27 + 6) + (96 * 10 + 10) + (10 * 3 + 3)
    # masks are not counted, running statistics are not counted
    chain = build('chain', ONE)
    before = ps.count_ops(chain, (1, 3, 8, 8))
    ps.prune_channels(chain, 0.5, inputs=(1, 3, 8, 8))
    assert ps.count_ops(chain, (1, 3, 8, 8)) == before


def test_count_ops_counts_a_transposed_convolution_masked_or_not(ctxs, hybridize):
    net = nn.HybridSequential()
    net.add(nn.Conv2D(4, 3, padding=1), nn.Conv2DTranspose(6, 3, strides=2, padding=1,
                                                            output_padding=1), nn.Dense(3))
    net.initialize(ctx=ctxs)
    if hybridize:
        net.hybridize()
    x = mx.nd.ones((2, 3, 8, 8), ctx=ctxs[0])
    net(x)
    # conv 4x3x3x3 on 8x8; the transposed conv: each of the 4x8x8 input elements meets 6x3x3
    # weights (its output is 6x16x16); dense 1536 -> 3
    macs = 64 * 4 * 27 + 4 * 64 * 6 * 9 + 6 * 256 * 3
    params = (108 + 4) + (4 * 6 * 9 + 6) + (1536 * 3 + 3)
    assert ps.count_ops(net, x) == (macs, params)
    weight = net[1].weight
    ps.apply_mask(net, weight.name, np.ones(weight.shape, dtype='float32'))
    y = net(x)    # the masked forward runs (on MKLDNN builds, as the equivalent Convolution)
    assert y.shape == (2, 3)
    assert ps.count_ops(net, x) == (macs, params)


# --------------------------------------------------------------------------- prune_channels

def channel_alive(net, group):
    masks = {n: ps.get_mask(net, n)[n].asnumpy() for n in ps.masked(net)}
    alive = np.zeros(group.size, dtype=bool)
    for name, axis, off, st in group.maskable:
        m = masks.get(name)
        if m is None:
            return np.ones(group.size, dtype=bool)
        view = np.moveaxis(m, axis, 0)[off:off + group.size * st].reshape(group.size, -1)
        alive |= (view != 0).any(axis=1)
    return alive


def test_layer_scope_masks_every_member_consistently():
    net = build('residual', ONE)
    x = batch()
    touched = ps.prune_channels(net, 0.5, inputs=x)
    assert touched == ['residual_conv0_weight', 'residual_conv1_weight',
                       'residual_conv3_weight', 'residual_conv5_weight']
    graph = ps.trace_channels(net, x)
    for group in graph.prunable:
        dead = np.flatnonzero(~channel_alive(net, group))
        assert len(dead) == math.floor(0.5 * group.size + 0.5)
        for name, axis, off, st in group.maskable:
            m = np.moveaxis(ps.get_mask(net, name)[name].asnumpy(), axis, 0)
            for i in range(group.size):
                part = m[off + i * st:off + (i + 1) * st]
                assert (part == 0).all() if i in dead else (part != 0).any(), (name, i)
    # running statistics never get a mask
    assert not [n for n in ps.masked(net) if 'running' in n]


def test_amounts_follow_section_7_and_are_fractions_of_what_is_left():
    net = build('chain', ONE)
    g = lambda: ps.trace_channels(net, (1, 3, 8, 8))['chain_conv2_weight']   # 10 channels
    ps.prune_channels(net, 0.3, inputs=(1, 3, 8, 8), key='chain_conv2_weight')
    assert (~channel_alive(net, g())).sum() == 3
    ps.prune_channels(net, 0.5, inputs=(1, 3, 8, 8), key='chain_conv2_weight')
    assert (~channel_alive(net, g())).sum() == 3 + 4        # floor(0.5 * 7 + 0.5)
    ps.prune_channels(net, 2, inputs=(1, 3, 8, 8), key='chain_conv2_weight')
    assert (~channel_alive(net, g())).sum() == 9
    ps.prune_channels(net, 1.0, inputs=(1, 3, 8, 8), key='chain_conv2_weight')
    assert (~channel_alive(net, g())).sum() == 9            # at least one channel kept


@pytest.mark.parametrize('mode', ['graph', 'update'])
@pytest.mark.parametrize('ctxs', [ONE, TWO], ids=['1ctx', '2ctx'])
def test_channel_masks_multiply_into_existing_masks(ctxs, mode):
    """Pruning channels on top of an existing mask keeps its values where the channel
    survives and its zeros everywhere (a soft graph-mode mask stays soft; a binary one
    becomes an update-mode mask with the weight zero under it), on every context."""
    net = build('chain', ctxs)
    name = 'chain_conv0_weight'
    w = net.collect_params()[name]
    rs = np.random.RandomState(5)
    # (update mode keeps binary masks only: a soft one it refuses, tested in test_masks)
    old = rs.choice([0.0, 0.5, 1.0] if mode == 'graph' else [0.0, 1.0],
                    size=w.shape).astype(np.float32)
    old[:, 0] = 1    # no channel dead yet
    ps.apply_mask(net, {name: old})
    weight = w.data(ctxs[0]).asnumpy()
    ps.prune_channels(net, 2, inputs=(1, 3, 8, 8), key=name, mode=mode)
    g = ps.trace_channels(net, (1, 3, 8, 8))[name]
    dead = ~channel_alive(net, g)
    assert dead.sum() == 2
    keep = np.ones(w.shape, dtype=bool)
    keep[dead] = False
    want = old * keep    # get_mask answers in the weight's dtype in both modes
    assert ps.masks.mask_mode(net, name) == mode
    for ctx in ctxs:
        mask = ps.get_mask(net, name)[name].as_in_context(ctx).asnumpy()
        assert np.array_equal(mask, want)
        stored = w.data(ctx).asnumpy()
        assert np.array_equal(stored, weight if mode == 'graph' else weight * want)


def test_lowest_l1_and_l2_channels_go_first_ties_by_index():
    net = build('chain', ONE)
    w = net.body[4][0].weight
    values = np.ones(w.shape, dtype=np.float32)
    values[[7, 2, 5]] = 0.1
    values[3] = 0.1         # the same l1 norm as 7, 2, 5: lower index first
    w.set_data(mx.nd.array(values))
    for member in ('chain_batchnorm1_gamma', 'chain_batchnorm1_beta', 'chain_dense0_weight'):
        ps.set_params(net, member, 1)
    ps.prune_channels(net, 3, inputs=(1, 3, 8, 8), key=w.name, importance='l1')
    g = ps.trace_channels(net, (1, 3, 8, 8))[w.name]
    assert np.flatnonzero(~channel_alive(net, g)).tolist() == [2, 3, 5]


@pytest.mark.parametrize('shape, axis, offset, stride', [
    ((6, 4, 3, 3), 0, 0, 1), ((6, 4, 3, 3), 1, 1, 1), ((5, 12), 1, 0, 3),
    ((5, 13), 1, 1, 4), ((7,), 0, 2, 1), ((2, 6, 3, 3, 3), 1, 0, 2)])
def test_channel_sums_are_the_norms_of_the_channel_slices(shape, axis, offset, stride):
    """channel_sums reduces in place what channel_view copies out: the same float64 sums
    (summed in another order: equal to float64 rounding, 1e-12 relative is thousands of
    ulps), members on any axis, with an offset (a concatenated input) and several entries
    per channel (a Dense reading a Flatten)."""
    from paramsurgery.channels.graph import Member
    from paramsurgery.channels.importance import channel_sums, channel_view
    arr = np.random.RandomState(0).uniform(-2, 2, shape).astype(np.float32)
    size = (shape[axis] - offset) // stride
    member = Member('w', axis, offset, stride)
    view = channel_view(arr, member, size).astype(np.float64)
    np.testing.assert_allclose(channel_sums(arr, member, size, 'l1'),
                               np.abs(view).sum(axis=1), rtol=1e-12)
    np.testing.assert_allclose(channel_sums(arr, member, size, 'l2'),
                               (view ** 2).sum(axis=1), rtol=1e-12)


def test_bn_gamma_taylor_and_callable_importance():
    net = build('chain', ONE)
    gamma = net.body[0][1].gamma
    gamma.set_data(mx.nd.array([5, 4, 0.1, 3, 0.2, 2, 1, 6]))
    ps.prune_channels(net, 2, inputs=(1, 3, 8, 8), key='chain_conv0_weight',
                      importance='bn_gamma')
    g = ps.trace_channels(net, (1, 3, 8, 8))['chain_conv0_weight']
    assert np.flatnonzero(~channel_alive(net, g)).tolist() == [2, 4]
    ps.prune_channels(net, 1, inputs=(1, 3, 8, 8), key='chain_conv0_weight',
                      importance=lambda group: np.arange(group.size)[::-1])
    assert np.flatnonzero(~channel_alive(net, g)).tolist() == [2, 4, 7]
    with pytest.raises(ps.SurgeryValueError, match="'chain_conv1_weight' has no BatchNorm"):
        ps.prune_channels(net, 1, inputs=(1, 3, 8, 8), importance='bn_gamma')
    with pytest.raises(ps.SurgeryValueError, match='gradient'):
        ps.prune_channels(net, 1, inputs=(1, 3, 8, 8), importance='taylor')
    x = batch()
    with autograd.record():
        loss = net(x).sum()
    loss.backward()
    assert ps.prune_channels(net, 1, inputs=x, importance='taylor')
    with pytest.raises(ps.SurgeryValueError, match=r'shape \(2,\); expected \(8,\)'):
        ps.prune_channels(net, 1, inputs=x, key='chain_conv0_weight',
                          importance=lambda group: [1, 2])


def test_global_scope_exact_count_normalised_and_one_kept():
    net = build('chain', ONE)
    x = (1, 3, 8, 8)
    graph = ps.trace_channels(net, x)
    scale = {'chain_conv0_weight': 1000.0, 'chain_conv1_weight': 1.0,
             'chain_conv2_weight': 0.001}

    def importance(group):      # 1..n times a very different scale per group
        return (np.arange(group.size) + 1.0) * scale[group.name]

    ps.prune_channels(net, 0.5, inputs=x, scope='global', importance=importance)
    dead = {g.name: np.flatnonzero(~channel_alive(net, g)).tolist() for g in graph.prunable}
    # each group's scores divided by its maximum: (i + 1) / n, ranked together
    ranked = sorted(((i + 1) / g.size, k, i) for k, g in enumerate(graph.prunable)
                    for i in range(g.size))[:12]
    expected = {g.name: sorted(i for _, k, i in ranked if k == j)
                for j, g in enumerate(graph.prunable)}
    assert dead == expected
    assert sum(len(v) for v in dead.values()) == 12 == math.floor(0.5 * 24 + 0.5)
    ps.prune_channels(net, 1.0, inputs=x, scope='global')
    assert all(channel_alive(net, g).sum() == 1 for g in graph.prunable)


def test_round_to():
    net = build('chain', ONE)
    x = (1, 3, 8, 8)
    # 10 channels, prune 3: keep 7 -> nearest multiple of 4 is 8
    ps.prune_channels(net, 3, inputs=x, key='chain_conv2_weight', round_to=4)
    g = ps.trace_channels(net, x)['chain_conv2_weight']
    assert channel_alive(net, g).sum() == 8
    # keep 8 - 2 = 6: a tie between 4 and 8 goes up, at most what is unmasked (8)
    ps.prune_channels(net, 2, inputs=x, key='chain_conv2_weight', round_to=4)
    assert channel_alive(net, g).sum() == 8
    # 6 channels, prune all: at least round_to kept
    ps.prune_channels(net, 1.0, inputs=x, key='chain_conv1_weight', round_to=4)
    assert channel_alive(net, ps.trace_channels(net, x)['chain_conv1_weight']).sum() == 4


@pytest.mark.parametrize('kwargs, error, text', [
    # issue 18: no bogus count ("the 4611686018427387904 channels") before n is known
    (dict(amount=1.5), ps.SurgeryValueError, r'fraction of the channels still unmasked\. '
                                             r'Did you mean amount=0\.015 \(amount/100\)'),
    (dict(amount=True), ps.SurgeryTypeError, 'bool'),
    (dict(amount=float('nan')), ps.SurgeryValueError, 'not finite'),
    (dict(amount=-0.1), ps.SurgeryValueError, 'negative'),
    (dict(amount=11), ps.SurgeryValueError, 'only 10 channels'),
    (dict(amount='half'), ps.SurgeryTypeError, 'amount'),
    (dict(scope='net'), ps.SurgeryValueError, 'scope'),
    (dict(importance='l3'), ps.SurgeryValueError, 'importance'),
    (dict(round_to=0), ps.SurgeryValueError, 'round_to'),
    (dict(round_to=2.0), ps.SurgeryTypeError, 'round_to'),
    (dict(key='nothing.*'), ps.SelectionError, 'nothing'),
    (dict(key='chain_dense0_weight'), ps.SurgeryValueError, 'reaches the net output'),
    (dict(key='chain_batchnorm0_gamma'), ps.SurgeryValueError, 'produce'),
])
def test_bad_arguments_change_nothing(kwargs, error, text):
    net = build('chain', TWO)
    before = snapshot(net)
    args = dict(amount=0.5, inputs=(1, 3, 8, 8), key='chain_conv2_weight')
    args.update(kwargs)
    amount = args.pop('amount')
    with pytest.raises(error, match=text):
        ps.prune_channels(net, amount, **args)
    assert ps.masked(net) == []
    assert_same_bits(before, snapshot(net))


def test_masks_on_two_contexts_agree():
    net = build('depthwise', TWO)
    ps.prune_channels(net, 0.5, inputs=batch())
    for name in ps.masked(net):
        mask = net.collect_params()[name + '_mask']
        a, b = [d.asnumpy() for d in mask.list_data()]
        assert (a == b).all()


def test_symbolblock_groups_are_not_prunable(tmp_path):
    net = build('chain', ONE)
    net.hybridize()
    net(batch())
    prefix = str(tmp_path / 'chain')
    net.export(prefix)
    loaded = gluon.SymbolBlock.imports(prefix + '-symbol.json', ['data'],
                                       prefix + '-0000.params')
    graph = ps.trace_channels(loaded, (1, 3, 8, 8))
    group = graph['chain_conv0_weight']
    assert not group.prunable and 'SymbolBlock' in group.reason
    assert ps.count_ops(loaded, (1, 3, 8, 8)) == ps.count_ops(net, (1, 3, 8, 8))
    with pytest.raises(ps.SurgeryValueError, match='no prunable channel group'):
        ps.prune_channels(loaded, 0.5, inputs=(1, 3, 8, 8))


@pytest.mark.parametrize('kind', sorted(['chain', 'residual', 'concat', 'depthwise',
                                         'flatten_dense', 'se']))
def test_masks_do_not_change_the_groups(kind):
    """The tracer sees through ``weight * mask``: the same groups before and after."""
    net = build(kind, ONE)
    before = [(g.name, g.size, g.members, g.prunable) for g in ps.trace_channels(net, batch())]
    ps.prune_channels(net, 0.25, inputs=batch())
    after = [(g.name, g.size, g.members, g.prunable) for g in ps.trace_channels(net, batch())]
    assert before == after


# --------------------------------------------------------------------------- nested outputs, layouts

class NestedOutputs(gluon.HybridBlock):
    """An encoder-like block returning ``(out, [state1, state2])``."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.a = nn.Conv2D(6, 3, padding=1)
            self.b = nn.Conv2D(4, 3, padding=1)
            self.s1, self.s2 = nn.Conv2D(5, 1), nn.Conv2D(3, 1)
            self.out = nn.Dense(2)

    def hybrid_forward(self, F, x):
        h = self.b(F.relu(self.a(x)))
        return self.out(h), [self.s1(h), self.s2(F.relu(h))]


def leaves(out):
    return [out] if isinstance(out, mx.nd.NDArray) else [x for o in out for x in leaves(o)]


def initialised(net, ctxs, hybrid):
    mx.random.seed(0)
    net.initialize(mx.init.Xavier(magnitude=2.5), ctx=ctxs)
    if hybrid:
        net.hybridize()
    return net


def outputs(net, x, ctx):
    with autograd.predict_mode():
        return [o.asnumpy() for o in leaves(net(x.as_in_context(ctx)))]


def assert_computes(net, x, ctxs, masked):
    """The shrunk ``net`` computes the ``masked`` outputs on every context."""
    for ctx in ctxs:
        shrunk = outputs(net, x, ctx)
        assert [o.shape for o in shrunk] == [o.shape for o in masked]
        for a, b in zip(masked, shrunk):
            # the same sums without the removed (zero) terms: float32 rounding of sums of
            # at most 54 terms of |x| <= 1 differs by far less than 1e-5 of the scale
            assert np.abs(a - b).max() <= 1e-5 * np.abs(a).max()


def test_nested_outputs_are_traced_like_export():
    graph = ps.trace_channels(NestedOutputs(prefix='nest_'), (1, 3, 8, 8))
    assert [(g.name, g.size, g.prunable) for g in graph.groups] == [
        ('data', 3, False), ('nest_conv0_weight', 6, True), ('nest_conv1_weight', 4, True),
        ('nest_dense0_weight', 2, False), ('nest_conv2_weight', 5, False),
        ('nest_conv3_weight', 3, False)]
    # channels reaching any of the three outputs are not prunable
    for name, head in [('nest_dense0_weight', 'nest_dense0_fwd'),
                       ('nest_conv2_weight', 'nest_conv2_fwd'),
                       ('nest_conv3_weight', 'nest_conv3_fwd')]:
        assert graph[name].reason == "reaches the net output ('%s')" % head
    # the state readers are members of the group they read
    assert {'nest_dense0_weight', 'nest_conv2_weight', 'nest_conv3_weight'} <= set(
        members(graph, 'nest_conv1_weight'))


def test_an_output_that_is_not_a_symbol_gets_a_typed_error():
    class WithNone(gluon.HybridBlock):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            with self.name_scope():
                self.a, self.b, self.out = nn.Conv2D(6, 3), nn.Conv2D(4, 3), nn.Dense(2)

        def hybrid_forward(self, F, x):
            return self.out(self.b(self.a(x))), [None]

    net = initialised(WithNone(prefix='none_'), ONE, False)
    net(batch())       # runs imperatively: only tracing (and export) needs Symbols
    before = snapshot(net)
    for call in (lambda: ps.trace_channels(net, (1, 3, 8, 8)),
                 lambda: ps.prune_channels(net, 0.5, inputs=(1, 3, 8, 8))):
        with pytest.raises(ps.SurgeryTypeError, match="WithNone 'none' returned NoneType among its "
                                                      "outputs.*Return the Symbols only"):
            call()
    assert ps.masked(net) == []
    assert_same_bits(before, snapshot(net))


@pytest.mark.parametrize('ctxs', [ONE, TWO], ids=['1ctx', '2ctx'])
@pytest.mark.parametrize('hybrid', [False, True], ids=['imperative', 'hybrid'])
def test_nested_outputs_prune_shrink_and_train(ctxs, hybrid):
    net = initialised(NestedOutputs(prefix='nest_'), ctxs, hybrid)
    x = batch()
    assert ps.prune_channels(net, 0.5, inputs=x) == ['nest_conv0_weight', 'nest_conv1_weight']
    masked = outputs(net, x, ctxs[0])
    trainer = gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': 0.1})
    ps.shrink(net, inputs=x, trainer=trainer)
    assert net.a.weight.shape == (3, 3, 3, 3) and net.b.weight.shape == (2, 3, 3, 3)
    assert net.s1.weight.shape == (5, 2, 1, 1) and net.out.weight.shape == (2, 2 * 64)
    assert_computes(net, x, ctxs, masked)
    # the Trainer updates the shrunk weights (plain SGD: w - lr * summed gradient / batch)
    before = net.b.weight.data(ctxs[0]).asnumpy()
    for ctx in ctxs:
        with autograd.record():
            loss = sum(o.sum() for o in leaves(net(x.as_in_context(ctx))))
        loss.backward()
    grad = sum(g.asnumpy() for g in net.b.weight.list_grad())
    trainer.step(x.shape[0] * len(ctxs))
    expected = before - 0.1 * grad / (x.shape[0] * len(ctxs))
    for data in net.b.weight.list_data():
        # one multiply-add in float32 and a sum of at most 2 gradients: a few ulps
        assert np.abs(data.asnumpy() - expected).max() <= 1e-6 * np.abs(expected).max()


class PoolAcrossChannels(gluon.HybridBlock):
    """A max pooling with layout='NHWC' on NCHW data: it pools over the channel axis
    (3x3 window, stride 1, padding 1, so every shape stays the same)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.a = nn.Conv2D(6, 3, padding=1)
            self.pool = nn.MaxPool2D(3, 1, 1, layout='NHWC')
            self.b = nn.Conv2D(4, 3, padding=1)
            self.out = nn.Dense(2)

    def hybrid_forward(self, F, x):
        return self.out(F.relu(self.b(self.pool(self.a(x)))))


@pytest.mark.parametrize('ctxs', [ONE, TWO], ids=['1ctx', '2ctx'])
@pytest.mark.parametrize('hybrid', [False, True], ids=['imperative', 'hybrid'])
def test_pooling_with_a_channel_last_layout_blocks_its_channels(ctxs, hybrid):
    net = initialised(PoolAcrossChannels(prefix='pl_'), ctxs, hybrid)
    x = batch()
    graph = ps.trace_channels(net, x)
    group = graph['pl_conv0_weight']
    assert not group.prunable
    assert group.reason == (
        "passes the operator Pooling ('pl_pool0_fwd') with layout='NHWC', which does not keep "
        "the channels on axis 1 (the tracer follows layouts NCW, NCHW, NCDHW)")
    # the convolution after it starts a group of its own, which prunes and shrinks
    assert [g.name for g in graph.prunable] == ['pl_conv1_weight']
    assert ps.prune_channels(net, 0.5, inputs=x) == ['pl_conv1_weight']
    masked = outputs(net, x, ctxs[0])
    ps.shrink(net, inputs=x)
    assert net.a.weight.shape == (6, 3, 3, 3) and net.b.weight.shape == (2, 6, 3, 3)
    assert_computes(net, x, ctxs, masked)


def test_dense_flatten_false_follows_the_last_axis():
    """Dense(flatten=False) on rank 3 reads and writes the last axis: its units are a group
    (a transformer's feed-forward hidden units); a Dense flattening it reads each unit at
    every token."""
    net = nn.HybridSequential(prefix='seq_')
    with net.name_scope():
        net.add(nn.Dense(6, flatten=False), nn.Activation('relu'), nn.Dense(4, flatten=False),
                nn.Dense(5), nn.Dense(2))
    graph = ps.trace_channels(net, (1, 7, 8))
    assert [(g.name, g.size, g.prunable) for g in graph.groups] == [
        ('data', 8, False), ('seq_dense0_weight', 6, True), ('seq_dense1_weight', 4, True),
        ('seq_dense2_weight', 5, True), ('seq_dense3_weight', 2, False)]
    assert graph['data'].reason == 'data input; ' + (
        "'seq_dense0_fwd' is a FullyConnected (Dense) with flatten=False on a rank-3 input: "
        "it reads the last axis, not these channels on axis 1")
    assert graph['seq_dense0_weight'].members == [
        ('seq_dense0_weight', 0, 0, 1), ('seq_dense0_bias', 0, 0, 1),
        ('seq_dense1_weight', 1, 0, 1)]
    assert graph['seq_dense1_weight'].members[2:] == [
        ('seq_dense2_weight', 1, 4 * t, 1) for t in range(7)]
    assert 'does not know' not in str(graph)


def test_channel_last_convolution_says_what_is_not_supported():
    net = nn.HybridSequential(prefix='hwc_')
    with net.name_scope():
        net.add(nn.Conv2D(6, 3, layout='NHWC'), nn.Conv2D(4, 3, layout='NHWC', use_bias=False),
                nn.Dense(5), nn.Dense(2))
    graph = ps.trace_channels(net, (1, 10, 12, 3))     # H=10, W=12, C=3
    assert [(g.name, g.size, g.prunable) for g in graph.groups] == [
        ('data', 3, False), ('hwc_conv0_weight', 6, False), ('hwc_conv1_weight', 4, False),
        ('hwc_dense0_weight', 5, True), ('hwc_dense1_weight', 2, False)]
    assert graph['hwc_conv1_weight'].reason == (
        "'hwc_conv1_fwd' is a Convolution with layout='NHWC': the tracer follows channels on "
        "axis 1 (layouts NCW, NCHW, NCDHW) only")
    assert graph['hwc_conv1_weight'].members == [('hwc_conv1_weight', 0, 0, 1)]
    assert 'does not know' not in str(graph)


def test_batchnorm_over_another_axis_says_so():
    net = nn.HybridSequential(prefix='bn_')
    with net.name_scope():
        net.add(nn.Conv2D(6, 3), nn.BatchNorm(axis=3), nn.Conv2D(4, 3), nn.Dense(2))
    graph = ps.trace_channels(net, (1, 3, 10, 10))
    assert graph['bn_conv0_weight'].reason == (
        "passes the BatchNorm 'bn_batchnorm0_fwd' over axis 3: the tracer follows channels on "
        "axis 1 only")
    assert graph['bn_conv1_weight'].prunable


# --------------------------------------------------------------------------- shrink rules

def test_attention_heads_are_prunable_only_under_a_shrink_rule():
    """Heads split by a reshape whose head count is a block attribute: not prunable (the
    reason names the reshape, the block and the fix) until a rule is registered for the
    block's class; a subclass inherits the rule, None removes it."""
    from channel_nets import EncoderLayer, MultiHeadAttentionCell, attention_rule
    x = (2, 5, 16)
    name = 'enc_attention_query_weight'

    class Cell(MultiHeadAttentionCell):
        pass

    def traced():
        net = EncoderLayer(prefix='enc_')
        with net.name_scope():
            net.attention_cell = Cell(16, 4, prefix='attention_')
        return ps.trace_channels(net, x)[name]

    plain = ps.trace_channels(EncoderLayer(prefix='enc_'), x)[name]
    assert not plain.prunable and plain.size == 4
    assert plain.reason.startswith(
        "splits its channels into attention heads in the reshape 'enc_attention_reshape0' of "
        "MultiHeadAttentionCell 'enc_attention'")
    try:
        ps.register_shrink_rule(MultiHeadAttentionCell, attention_rule)
        group = ps.trace_channels(EncoderLayer(prefix='enc_'), x)[name]
        assert group.prunable and group.reason == ''
        assert group.members == plain.members
        assert traced().prunable                      # the subclass inherits the rule
        ps.register_shrink_rule(Cell, None)           # nothing registered for Cell itself
        assert traced().prunable
    finally:
        ps.register_shrink_rule(MultiHeadAttentionCell, None)
    assert not ps.trace_channels(EncoderLayer(prefix='enc_'), x)[name].prunable
    assert not traced().prunable


@pytest.mark.parametrize('block_class, rule, text', [
    (nn.Dense(2), print, 'block_class must be a subclass of gluon.Block'),
    (int, print, 'block_class must be a subclass of gluon.Block'),
    ('Dense', print, 'block_class must be a subclass of gluon.Block'),
    (nn.Dense, 'rule', 'rule must be a callable rule\\(block, kept\\) or None'),
    (nn.Dense, 3, 'rule must be a callable'),
])
def test_register_shrink_rule_bad_arguments(block_class, rule, text):
    from paramsurgery.channels.rules import _SHRINK_RULES
    before = dict(_SHRINK_RULES)
    with pytest.raises(ps.SurgeryTypeError, match=text):
        ps.register_shrink_rule(block_class, rule)
    assert dict(_SHRINK_RULES) == before
def test_bert_hidden_stream_reason_names_layernorm_not_arange_like():
    """A BERT written as gluonnlp writes it ((tokens, batch, units) layout, positions from
    arange_like embedded and added): arange_like reads only a shape, so the hidden stream
    (token and position embeddings, every residual) is blocked by the LayerNorms that
    normalise it, and its reason says so; the position embedding's columns are members."""
    from channel_nets import Bert
    graph = ps.trace_channels(Bert(prefix='bert_'), (4, 5))
    stream = [graph[name] for name in (
        'bert_word_embed_weight', 'bert_cells_bertcell0_proj_weight',
        'bert_cells_bertcell0_ffn_2_weight', 'bert_cells_bertcell1_proj_weight',
        'bert_cells_bertcell1_ffn_2_weight')]
    for group in stream:
        assert not group.prunable and group.size == 16
        assert 'arange_like' not in group.reason and 'SequenceMask' not in group.reason
        assert group.reason.startswith("passes the LayerNorm 'bert_"), group.reason
        assert 'which normalises over axis -1: removing a channel changes the mean and ' \
            'variance of every other one' in group.reason
    assert stream[0].members == [('bert_word_embed_weight', 1, 0, 1),
                                 ('bert_position_weight', 1, 0, 1)]
    assert "passes the LayerNorm 'bert_ln_layernorm0'" in stream[0].reason
    # the second cell's residual reads what the first cell's feed-forward LayerNorm made
    assert "'bert_cells_bertcell0_ffn_ln_layernorm0'" in stream[3].reason


def test_a_parameter_rearranged_for_anything_but_a_dense_weight_blocks():
    """A per-channel scale reshaped to (1, C, 1, 1) and multiplied in: the tracer reads
    rearranged parameters back only for the layer whose weight they are, so the channels it
    meets are not prunable (shrink would not slice the scale), and the reason names the
    reshape."""
    class Scaled(gluon.HybridBlock):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            with self.name_scope():
                self.conv1, self.conv2 = nn.Conv2D(4, 3), nn.Conv2D(2, 1)
                self.scale = self.params.get('scale', shape=(4,), init='ones')

        def hybrid_forward(self, F, x, scale):
            return self.conv2(F.broadcast_mul(self.conv1(x), scale.reshape((1, -1, 1, 1))))

    group = ps.trace_channels(Scaled(prefix='s_'), (1, 3, 8, 8))['s_conv0_weight']
    assert not group.prunable
    assert group.reason == ("is made from parameters by the Reshape 's_reshape0', which the "
                            "tracer reads back only for the layer whose weight it is")


def test_interleaved_self_attention_heads_are_one_group():
    """gluonnlp's interleaved self-attention (query, key and value weights reshaped by head
    and concatenated, MXNet's fused interleaved_matmul_selfatt_qk / _valatt): a head is its
    rows of the three weights and biases and its columns of the output projection; the
    group names the fused operator and the cell until the cell's rule is registered; the
    feed-forward units are a group too."""
    from channel_nets import Bert, SelfAttentionCell, self_attention_rule
    name = 'bert_cells_bertcell0_attention_query_weight'
    cell = 'bert_cells_bertcell0_attention_'
    plain = ps.trace_channels(Bert(prefix='bert_'), (4, 5))
    heads = plain[name]
    assert heads.size == 4 and not heads.prunable
    # 4 heads of 4 units: head h is rows 4h..4h+3 of each weight and bias, and columns
    # 4h..4h+3 of the output projection
    assert heads.members == [(cell + part, 0, 0, 4) for kind in ('query', 'key', 'value')
                             for part in (kind + '_weight', kind + '_bias')] + [
        ('bert_cells_bertcell0_proj_weight', 1, 0, 4)]
    assert heads.producers == [cell + 'query_weight', cell + 'key_weight',
                               cell + 'value_weight']
    assert heads.reason == (
        "splits its channels into attention heads in the _contrib_interleaved_matmul_selfatt_qk "
        "'%sinterleaved_matmul_selfatt_qk0' of SelfAttentionCell '%s', whose head count "
        "shrink cannot update: register a rule with ps.register_shrink_rule("
        "SelfAttentionCell, rule) (docs/shrink.md#blocks-with-their-own-channel-counts)"
        % (cell, cell[:-1]))
    assert [g.name for g in plain.prunable] == ['bert_cells_bertcell0_ffn_1_weight',
                                                'bert_cells_bertcell1_ffn_1_weight']
    try:
        ps.register_shrink_rule(SelfAttentionCell, self_attention_rule)
        graph = ps.trace_channels(Bert(prefix='bert_'), (4, 5))
    finally:
        ps.register_shrink_rule(SelfAttentionCell, None)
    assert graph[name].prunable and graph[name].members == heads.members
    assert [g.name for g in graph.prunable] == [
        name, 'bert_cells_bertcell0_ffn_1_weight',
        'bert_cells_bertcell1_attention_query_weight', 'bert_cells_bertcell1_ffn_1_weight']


# --------------------------------------------------------------------------- round_to='fast'

def _fast_model(monkeypatch, net, counts):
    """A latency model whose clock counts parameter entries: latency grows with every kept
    channel, so the fast counts are exactly the measured ones (and the size)."""
    from paramsurgery import latency
    monkeypatch.setattr(latency.timing, '_TIMER', lambda runtime, variant: 1e-6 * sum(
        a.size for a in variant.arrays.values()))
    return ps.latency_model(net, inputs=(1, 3, 8, 8), counts=counts)


@pytest.mark.parametrize('ctxs', [ONE, TWO], ids=['1ctx', '2ctx'])
@pytest.mark.parametrize('hybridize', [False, True], ids=['imperative', 'hybrid'])
def test_round_to_fast_takes_the_nearest_fast_count(monkeypatch, ctxs, hybridize):
    net = build('chain', ctxs)
    if hybridize:
        net.hybridize()
    x = (1, 3, 8, 8)
    model = _fast_model(monkeypatch, net, {'chain_conv2_weight': [4, 8]})
    assert model.fast_counts('chain_conv2_weight') == [4, 8, 10]
    g = ps.trace_channels(net, x)['chain_conv2_weight']
    # 10 channels, prune 3: keep 7 -> 8
    ps.prune_channels(net, 3, inputs=x, key='chain_conv2_weight', round_to='fast',
                      latency=model)
    assert channel_alive(net, g).sum() == 8
    for name in ps.masked(net):     # every replica masked alike
        data = [d.asnumpy() for d in net.collect_params()[name + '_mask'].list_data()]
        assert all((d == data[0]).all() for d in data)
    # 8 unmasked, prune 2: keep 6, a tie between 4 and 8 goes to the larger (8)
    assert ps.prune_channels(net, 2, inputs=x, key='chain_conv2_weight', round_to='fast',
                             latency=model) == []
    assert channel_alive(net, g).sum() == 8
    # prune 3 more: keep 5 -> 4 (10 is fast but more than the 8 unmasked)
    ps.prune_channels(net, 3, inputs=x, key='chain_conv2_weight', round_to='fast',
                      latency=model)
    assert channel_alive(net, g).sum() == 4


def test_round_to_fast_global_and_dict_round_the_exact_count(monkeypatch):
    net = build('chain', ONE)
    x = (1, 3, 8, 8)
    model = _fast_model(monkeypatch, net, {'chain_conv1_weight': [2], 'chain_conv2_weight': [4]})
    graph = ps.trace_channels(net, x)
    exact = build('chain', ONE)
    ps.prune_channels(exact, {'chain_conv1_weight': 0.5, 'chain_conv2_weight': 0.3}, inputs=x)
    assert [channel_alive(exact, graph[n]).sum() for n in ('chain_conv1_weight',
                                                           'chain_conv2_weight')] == [3, 7]
    ps.prune_channels(net, {'chain_conv1_weight': 0.5, 'chain_conv2_weight': 0.3}, inputs=x,
                      round_to='fast', latency=model)
    # 3 of 6 -> fast counts 2, 6: 2; 7 of 10 -> fast 4, 10: 10 (nothing pruned)
    assert channel_alive(net, graph['chain_conv1_weight']).sum() == 2
    assert channel_alive(net, graph['chain_conv2_weight']).sum() == 10
    names = ['chain_conv1_weight', 'chain_conv2_weight']
    exact, net = build('chain', ONE), build('chain', ONE)
    ps.prune_channels(exact, 0.5, inputs=x, scope='global', key=names)
    counts = [int(channel_alive(exact, graph[n]).sum()) for n in names]
    assert counts != [6, 10]
    ps.prune_channels(net, 0.5, inputs=x, scope='global', key=names, round_to='fast',
                      latency=model)
    fast = [model.fast_counts(n) for n in names]
    want = [min(f, key=lambda c: (abs(c - k), -c)) for f, k in zip(fast, counts)]
    assert [channel_alive(net, graph[n]).sum() for n in names] == want


@pytest.mark.parametrize('kwargs, error, text', [
    (dict(round_to='fast'), ps.SurgeryValueError, 'latency=ps.latency_model'),
    (dict(round_to='fast', latency='model'), ps.SurgeryTypeError, 'latency=ps.latency_model'),
    (dict(round_to='fastest'), ps.SurgeryValueError, "'fast'"),
    (dict(round_to=8, latency='model'), ps.SurgeryValueError, "round_to='fast' only"),
])
def test_round_to_fast_bad_arguments_change_nothing(kwargs, error, text):
    net = build('chain', TWO)
    before = snapshot(net)
    with pytest.raises(error, match=text):
        ps.prune_channels(net, 0.5, inputs=(1, 3, 8, 8), **kwargs)
    assert ps.masked(net) == []
    assert_same_bits(before, snapshot(net))


def test_round_to_fast_needs_a_model_of_the_groups(monkeypatch):
    net = build('chain', TWO)
    model = _fast_model(monkeypatch, net, None)
    other = build('chain', ONE)
    ps.prune_channels(other, 0.5, inputs=(1, 3, 8, 8), key='chain_conv1_weight')
    ps.shrink(other, inputs=(1, 3, 8, 8))
    small = _fast_model(monkeypatch, other, None)
    before = snapshot(net)
    with pytest.raises(ps.SurgeryValueError, match="'chain_conv1_weight' has 6 channels, but "
                                                   "the latency model was built when it had 3"):
        ps.prune_channels(net, 0.5, inputs=(1, 3, 8, 8), round_to='fast', latency=small)
    only = _fast_model(monkeypatch, net, None)
    only.sizes.pop('chain_conv0_weight')
    with pytest.raises(ps.SurgeryValueError, match="no channel group 'chain_conv0_weight'"):
        ps.prune_channels(net, 0.5, inputs=(1, 3, 8, 8), round_to='fast', latency=only)
    assert ps.masked(net) == []
    assert_same_bits(before, snapshot(net))
    assert model.sizes['chain_conv1_weight'] == 6
