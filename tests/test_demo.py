"""A quick run of the demo: the RESULT line, the plot and the baked weights."""
import os
import re
import subprocess
import sys

import pytest

import paramsurgery as ps
from paramsurgery import demo
from paramsurgery.cli import main
from paramsurgery.errors import install_hint

RESULT = re.compile(r'^RESULT dense_acc=(\d\.\d{4}) pruned_acc=(\d\.\d{4}) sparsity=(\d\.\d{4})$')


def test_quick_demo_run(tmp_path, capsys):
    plot, out = str(tmp_path / 'sparsity.png'), str(tmp_path / 'pruned.params')
    assert main(['demo', '--epochs', '2', '--prune-epochs', '3', '--quiet', '--plot', plot,
                 '--out', out]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    match = RESULT.match(lines[-1])
    assert match, lines[-1]
    dense_acc, pruned_acc, sparsity = map(float, match.groups())
    assert 0.5 < dense_acc <= 1 and 0.1 < pruned_acc <= 1
    assert abs(sparsity - 0.9) < 1e-4   # the schedule ends at exactly 90% of the weights
    assert open(plot, 'rb').read(8) == b'\x89PNG\r\n\x1a\n'
    # the saved weights have the masks baked in: a fresh net loads them, no mask needed
    net = demo.build_net(0)
    net.load_parameters(out, ctx=demo.CTXS)
    assert ps.masked(net) == []
    report = ps.sparsity_report(net, demo.PRUNED)
    assert abs(report.total['sparsity'] - sparsity) < 1e-4
    _, (x_test, y_test) = demo._data(0)
    assert abs(demo.accuracy(net, x_test, y_test) - pruned_acc) < 1e-4


def test_demo_from_the_console_entry_point():
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    done = subprocess.run([sys.executable, '-m', 'paramsurgery', 'demo', '--epochs', '1',
                           '--prune-epochs', '1', '--quiet'], capture_output=True, text=True,
                          env=env)
    assert done.returncode == 0, done.stderr
    assert RESULT.match(done.stdout.strip().splitlines()[-1])
    assert 'contexts [cpu(0), cpu(1)]' in done.stdout


def test_missing_extras_name_an_install_that_keeps_numpy(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, 'tqdm', None)   # import tqdm -> ImportError
    with pytest.raises(ps.MissingDependencyError, match=re.escape(install_hint('demo'))):
        demo.run()
    assert main(['demo', '--epochs', '1', '--quiet']) == 2
    assert install_hint('demo') in capsys.readouterr().err
