"""sparsity_report and arrays_report: the numbers, the table, the plot."""
import re
import sys

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd
from mxnet.gluon import nn

import paramsurgery as ps
from paramsurgery.errors import install_hint


def masked_net(ctxs, hybridize):
    net = nn.HybridSequential(prefix='r_')
    with net.name_scope():
        net.add(nn.Dense(4, in_units=3), nn.Dense(2, in_units=4))
    net.initialize(mx.init.Constant(2.0), ctx=ctxs)
    if hybridize:
        net.hybridize()
    ps.set_params(net, 'r_dense0_bias', np.array([0, 1, 0, 1]))
    mask = np.ones((4, 3), dtype=np.float32)
    mask[0] = 0
    ps.apply_mask(net, 'r_dense0_weight', mask)
    return net


def test_rows_count_effective_zeros(ctxs, hybridize):
    net = masked_net(ctxs, hybridize)
    report = ps.sparsity_report(net)
    by_name = {r['name']: r for r in report.rows}
    assert list(by_name) == ['r_dense0_weight', 'r_dense0_bias', 'r_dense1_weight',
                             'r_dense1_bias']  # the mask is not a row of its own
    w = by_name['r_dense0_weight']
    assert (w['size'], w['zeros'], w['masked'], w['grad_req']) == (12, 3, True, 'write')
    assert w['sparsity'] == pytest.approx(0.25)
    assert w['contexts'] == ctxs and w['replicas_equal'] is True
    assert by_name['r_dense0_bias']['zeros'] == 2 and not by_name['r_dense0_bias']['masked']
    assert by_name['r_dense1_weight']['zeros'] == 0
    assert report.total == {'size': 12 + 4 + 8 + 2, 'zeros': 3 + 2 + 0 + 2,
                            'sparsity': pytest.approx(7 / 26), 'masked': 1}
    text = str(report).splitlines()
    assert text[0].split() == ['name', 'shape', 'contexts', 'size', 'zeros', 'sparsity',
                               'masked', 'grad_req', 'replicas_equal']
    assert text[-1].split() == ['total', '(4)', '26', '7', '26.92%', '1']
    assert len({len(line) for line in text[:2]}) == 1  # the rule spans the header


def test_key_and_diverged_replicas():
    net = masked_net([mx.cpu(0), mx.cpu(1)], False)
    report = ps.sparsity_report(net, r'.*dense0.*')
    assert [r['name'] for r in report.rows] == ['r_dense0_weight', 'r_dense0_bias']
    with autograd.pause():
        net.collect_params()['r_dense0_weight_mask'].list_data()[1][:] = 1
    row = ps.sparsity_report(net, 'r_dense0_weight').rows[0]
    assert row['replicas_equal'] is False and 'NO' in str(ps.sparsity_report(net))


def test_plot_writes_a_png(tmp_path):
    import matplotlib  # noqa: F401  (part of the [test] extra: missing must fail, not skip)
    path = tmp_path / 'sparsity.png'
    ps.sparsity_report(masked_net([mx.cpu(0)], False)).plot(str(path))
    assert path.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n' and path.stat().st_size > 1000


def test_plot_without_matplotlib_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, 'matplotlib', None)  # import matplotlib -> ImportError
    with pytest.raises(ps.MissingDependencyError, match=re.escape(install_hint('plot'))):
        ps.sparsity_report(masked_net([mx.cpu(0)], False)).plot(str(tmp_path / 'x.png'))
    assert isinstance(ps.MissingDependencyError('x'), ImportError)


def test_arrays_report_recognises_masks():
    arrays = {'a.weight': np.array([[0., 1.], [2., 3.]]), 'a.weight_mask': np.array([[1, 1],
                                                                                     [0, 1]]),
              'b': np.zeros(3, dtype=np.float16), 'lonely_mask': np.ones(2)}
    report = ps.arrays_report(arrays)
    assert [(r['name'], r['zeros'], r['masked'], r['dtype']) for r in report.rows] == [
        ('a.weight', 2, True, 'float64'), ('b', 3, False, 'float16'),
        ('lonely_mask', 0, False, 'float64')]
    assert str(report).splitlines()[-1].split() == ['total', '(3)', '9', '5', '55.56%', '1']
