"""The demo: a quick run (the RESULT line, the plots, the baked weights), the full run's
targets, and the evidence that sensitivity plans beat uniform amounts."""
import os
import re
import subprocess
import sys

import pytest

import paramsurgery as ps
from paramsurgery import demo
from paramsurgery.cli import main
from paramsurgery.errors import install_hint

RESULT = re.compile(r'^RESULT dense_acc=(\d\.\d{4}) pruned_acc=(\d\.\d{4}) sparsity=(\d\.\d{4}) '
                    r'shrunk_acc=(\d\.\d{4}) macs_ratio=(\d+\.\d{4}) speedup=(\d+\.\d{4})$')


def test_quick_demo_run(tmp_path, capsys):
    plot, out = str(tmp_path / 'sparsity.png'), str(tmp_path / 'pruned.params')
    assert main(['demo', '--epochs', '2', '--prune-epochs', '3', '--channel-epochs', '1',
                 '--quiet', '--plot', plot, '--out', out]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    match = RESULT.match(lines[-1])
    assert match, lines[-1]
    dense_acc, pruned_acc, sparsity, shrunk_acc, macs_ratio, speedup = map(float,
                                                                          match.groups())
    assert 0.5 < dense_acc <= 1 and 0.1 < pruned_acc <= 1 and 0.1 < shrunk_acc <= 1
    assert abs(sparsity - 0.9) < 1e-4   # the schedule ends at exactly 90% of the weights
    assert macs_ratio >= 2.5 and speedup > 0  # the plan's budget is met
    assert any(line.startswith('plan for MACs ratio >= 2.5: digits_') for line in lines)
    assert any(line.startswith('group \\ amount') for line in lines)   # the matrix
    assert open(plot, 'rb').read(8) == b'\x89PNG\r\n\x1a\n'
    assert open(str(tmp_path / 'sparsity-sensitivity.png'), 'rb').read(8) == \
        b'\x89PNG\r\n\x1a\n'
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
    # without --quiet, into pipes (not terminals), as when the output goes to a log
    done = subprocess.run([sys.executable, '-m', 'paramsurgery', 'demo', '--epochs', '1',
                           '--prune-epochs', '1', '--channel-epochs', '1'],
                          capture_output=True, env=env)   # bytes: text=True would turn \r to \n
    assert done.returncode == 0, done.stderr
    # issue 18: the progress bars wrote carriage returns into logs
    assert b'\r' not in done.stdout and b'\r' not in done.stderr
    out = done.stdout.decode()
    assert RESULT.match(out.strip().splitlines()[-1])
    assert 'contexts [cpu(0), cpu(1)]' in out


def test_missing_extras_name_an_install_that_keeps_numpy(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, 'tqdm', None)   # import tqdm -> ImportError
    with pytest.raises(ps.MissingDependencyError, match=re.escape(install_hint('demo'))):
        demo.run()
    assert main(['demo', '--epochs', '1', '--quiet']) == 2
    assert install_hint('demo') in capsys.readouterr().err


def _fails_before_training(args, capsys, message):
    code = main(['demo', '--quiet'] + args)
    out, err = capsys.readouterr()
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and message in err and 'Traceback' not in err
    assert 'digits:' not in out      # no data loaded, nothing trained
    return err


def test_bad_options_fail_before_training(tmp_path, capsys):
    _fails_before_training(['--epochs', '-1'], capsys, '--epochs must be >= 1, got -1')
    _fails_before_training(['--prune-epochs', '0'], capsys, '--prune-epochs')
    _fails_before_training(['--sparsity', '90'], capsys, 'Did you mean 0.9')
    _fails_before_training(['--sparsity', 'nan'], capsys, '--sparsity')
    (tmp_path / 'folder').mkdir()
    _fails_before_training(['--out', str(tmp_path / 'folder')], capsys, 'is a folder')
    _fails_before_training(['--out', str(tmp_path / 'no' / 'x.params')], capsys,
                           'does not exist')
    _fails_before_training(['--plot', str(tmp_path / 'no' / 'x.png')], capsys, '--plot')
    assert os.listdir(tmp_path) == ['folder'] and os.listdir(tmp_path / 'folder') == []


def test_plot_without_matplotlib_fails_before_training(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, 'matplotlib', None)   # import matplotlib -> ImportError
    err = _fails_before_training(['--plot', str(tmp_path / 'p.png')], capsys,
                                 install_hint('plot'))
    assert 'matplotlib' in err and os.listdir(tmp_path) == []


@pytest.mark.slow
def test_full_demo_meets_its_targets(capsys):
    # the defaults of `make demo`: shrunk within 1 point of dense, MACs ratio >= 2
    assert main(['demo', '--quiet']) == 0
    out = capsys.readouterr().out
    print(out)
    match = RESULT.match(out.strip().splitlines()[-1])
    dense_acc, pruned_acc, sparsity, shrunk_acc, macs_ratio, speedup = map(float,
                                                                          match.groups())
    assert dense_acc - shrunk_acc <= 0.01 and macs_ratio >= 2


@pytest.mark.slow
def test_sensitivity_plans_lose_no_more_than_uniform_amounts():
    # issue 15's evidence: at the MACs ratio of 70% uniform channel pruning (about 10x; the
    # plan's ratio is at least as high), fine-tuned the same way, over 3 seeds. (At 50%,
    # about 3.9x, both arms end within one or two test images of each other and of dense:
    # docs/sensitivity.md has both measurements.)
    results = [demo.plan_vs_uniform(seed, uniform=0.7) for seed in (0, 1, 2)]
    for seed, r in enumerate(results):
        print('seed %d: dense %.4f | plan %.4f at MACs ratio %.2f | uniform 0.7 %.4f at %.2f '
              '| plan %s' % (seed, r['dense_acc'], r['plan_acc'], r['plan_ratio'],
                             r['uniform_acc'], r['uniform_ratio'], dict(r['plan'])))
        assert r['plan_ratio'] >= r['uniform_ratio'] >= 2
    assert sum(r['plan_acc'] for r in results) >= sum(r['uniform_acc'] for r in results)
