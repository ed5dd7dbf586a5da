"""select(net, key): every key form of API.md section 1, ordering, and misses."""
import mxnet as mx
import numpy as np
import pytest
from mxnet import gluon

import paramsurgery as ps

from helpers import make_mlp

NAMES = ['mlp_dense0_weight', 'mlp_dense0_bias', 'mlp_dense1_weight', 'mlp_dense1_bias']


@pytest.fixture
def net():
    return make_mlp([mx.cpu(0)])


@pytest.mark.parametrize('key, expected', [
    ('mlp_dense1_bias', ['mlp_dense1_bias']),
    ('.*weight', ['mlp_dense0_weight', 'mlp_dense1_weight']),
    ('mlp_dense0', ['mlp_dense0_weight', 'mlp_dense0_bias']),  # re.match: a prefix matches
    ('.*dense0.*_weight|.*dense1.*_bias', ['mlp_dense0_weight', 'mlp_dense1_bias']),
    (['mlp_dense1_bias', '.*weight', 'mlp_dense1_weight'],
     ['mlp_dense0_weight', 'mlp_dense1_weight', 'mlp_dense1_bias']),
    (('mlp_dense0_bias',), ['mlp_dense0_bias']),
    (lambda name, p: p.shape == (5,), ['mlp_dense0_bias']),
], ids=['full-name', 'regex', 'prefix', 'alternation', 'list-union', 'tuple', 'callable'])
def test_key_forms(net, key, expected):
    selected = ps.select(net, key)
    assert list(selected) == expected
    params = net.collect_params()
    assert all(selected[n] is params[n] for n in expected)


def test_parameter_objects_and_net_forms(net):
    w = net[1].weight
    assert list(ps.select(net, w)) == ['mlp_dense1_weight']
    assert list(ps.select(net, [w, net[0].bias])) == ['mlp_dense0_bias', 'mlp_dense1_weight']
    as_dict = dict(net.collect_params().items())
    assert list(ps.select(as_dict, '.*bias')) == ['mlp_dense0_bias', 'mlp_dense1_bias']
    assert list(ps.select(net.collect_params(), '.*')) == NAMES


def test_full_name_wins_over_regex_meaning():
    p = gluon.Parameter('a.b', shape=(1,))
    q = gluon.Parameter('axb', shape=(1,))
    assert list(ps.select({'a.b': p, 'axb': q}, 'a.b')) == ['a.b']
    assert list(ps.select({'a.b': p, 'axb': q}, 'a.?b')) == ['a.b', 'axb']


def test_miss_suggests_close_names_and_counts(net):
    with pytest.raises(ps.SelectionError) as info:
        ps.select(net, 'mlp_dense0_wieght')
    msg = str(info.value)
    assert "'mlp_dense0_wieght'" in msg and 'among the 4 parameters' in msg
    assert "'mlp_dense0_weight'" in msg
    assert isinstance(info.value, KeyError)


def test_suggestions_are_at_most_five():
    params = {'layer%d_weight' % i: gluon.Parameter('layer%d_weight' % i, shape=(1,))
              for i in range(12)}
    with pytest.raises(ps.SelectionError) as info:
        ps.select(params, 'layer_weight')
    assert str(info.value).count("'layer") == 1 + 5  # the key itself and five names


@pytest.mark.parametrize('key, match', [
    (['.*weight', 'nothing'], "'nothing' matches no parameter"),
    (lambda n, p: False, 'callable'),
    ([], 'empty list'),
    ('(', 'valid regular expression'),
])
def test_selection_errors(net, key, match):
    with pytest.raises(ps.SelectionError, match=match):
        ps.select(net, key)


def test_foreign_parameter(net):
    other = gluon.Parameter('mlp_dense0_weight', shape=(5, 4))
    with pytest.raises(ps.SelectionError, match='is not a parameter of this net'):
        ps.select(net, other)


@pytest.mark.parametrize('net_arg, key, match', [
    ('net', 3, 'key must be'),
    ('net', [['.*']], 'nested'),
    ([1, 2], '.*', 'net must be'),
    ({'x': 1}, '.*', r"net\['x'\] is a int"),
])
def test_type_errors(net, net_arg, key, match):
    with pytest.raises(ps.SurgeryTypeError, match=match):
        ps.select(net if net_arg == 'net' else net_arg, key)


def test_masks_are_selected_by_exact_name_only(ctxs):
    # One rule for every function: regular expressions and callables never select a mask.
    net = make_mlp(ctxs)
    ps.apply_mask(net, 'mlp_dense0_weight', 0.5)
    assert list(ps.select(net, '.*weight')) == ['mlp_dense0_weight', 'mlp_dense1_weight']
    assert list(ps.select(net, lambda name, p: True)) == [
        'mlp_dense0_weight', 'mlp_dense0_bias', 'mlp_dense1_weight', 'mlp_dense1_bias']
    assert list(ps.select(net, 'mlp_dense0_weight_mask')) == ['mlp_dense0_weight_mask']
    mask = net.collect_params()['mlp_dense0_weight_mask']
    assert list(ps.select(net, mask)) == ['mlp_dense0_weight_mask']
    with pytest.raises(ps.SelectionError, match='matches no parameter'):
        ps.select(net, '.*_mask')


def test_value_surgery_by_regex_leaves_masks_alone(ctxs):
    net = make_mlp(ctxs)
    ps.apply_mask(net, 'mlp_dense0_weight', np.array([[1, 0, 1, 0]] * 5, 'float32'))
    before = net[0].weight.data().asnumpy()
    assert ps.assign_params(net, '.*weight', 0.5) == ['mlp_dense0_weight', 'mlp_dense1_weight']
    ps.set_params(net, '.*bias', 1.0)
    for mask in net.collect_params()['mlp_dense0_weight_mask'].list_data():
        assert mask.asnumpy().tolist() == [[1, 0, 1, 0]] * 5   # neither scaled nor revived
    for w in net[0].weight.list_data():
        assert np.array_equal(w.asnumpy(), before * np.float32(0.5))
