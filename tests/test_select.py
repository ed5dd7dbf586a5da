"""select(net, key): every key form of API.md section 1, ordering, and misses."""
import mxnet as mx
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
