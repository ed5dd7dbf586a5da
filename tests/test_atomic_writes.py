"""A write killed with SIGKILL at any point leaves the previous file intact or the new one
complete, and the next successful write removes the killed write's temporary file (issue 14).

A child process writes masks (``ps.save_masks``) or a CLI output (``paramsurgery prune``)
with one step of the write replaced by "print a marker, then wait on stdin": the parent kills
it with SIGKILL as soon as it reads the marker, so every point is hit exactly, with no timing.
"""
import os
import signal
import subprocess
import sys
import textwrap

import mxnet as mx
import numpy as np
import pytest
from mxnet.gluon import nn

import paramsurgery as ps
from paramsurgery.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARKER = 'KILL-ME-NOW'

CHILD = textwrap.dedent('''
    import os, sys
    mode, point, target, source = sys.argv[1:5]
    import mxnet as mx
    import numpy as np
    import paramsurgery as ps
    from paramsurgery import _files
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from faults_common import build, NEW_MASK

    def hang():
        print('%(marker)s', flush=True)
        sys.stdin.read()        # blocks until the parent kills this process

    if point == 'mid-write':
        if mode == 'masks':
            real_open = open

            class Half:
                def __init__(self, f):
                    self.f = f
                def write(self, data):
                    self.f.write(data[:len(data) // 2])
                    self.f.flush()
                    os.fsync(self.f.fileno())
                    hang()
                def flush(self):
                    self.f.flush()
                def __enter__(self):
                    return self
                def __exit__(self, *exc):
                    self.f.close()

            _files.open = lambda path, how='r': Half(real_open(path, how))
        else:
            real_save = mx.nd.save

            def half_save(path, data):
                real_save(path, data)
                with open(path, 'r+b') as f:
                    f.truncate(os.path.getsize(path) // 2)
                hang()

            mx.nd.save = half_save
    elif point == 'before-fsync':
        os.fsync = lambda fd: hang()
    elif point == 'before-replace':
        os.replace = lambda src, dst: hang()
    elif point == 'after-replace':
        _files._fsync_folder = lambda folder: hang()

    if mode == 'masks':
        net = build('child_')
        ps.apply_mask(net, net[0].weight, NEW_MASK)
        ps.save_masks(net, target)
    else:
        from paramsurgery.cli import main
        main(['prune', source, '-o', target, '--amount', '0.5'])
    print('finished', flush=True)
''') % {'marker': MARKER}

COMMON = textwrap.dedent('''
    import mxnet as mx
    import numpy as np
    from mxnet.gluon import nn

    OLD_MASK = (np.arange(64 * 32) % 3 > 0).reshape(64, 32).astype('float32')
    NEW_MASK = (np.arange(64 * 32) % 5 > 1).reshape(64, 32).astype('float32')

    def build(prefix):
        net = nn.HybridSequential(prefix=prefix)
        with net.name_scope():
            net.add(nn.Dense(64, in_units=32), nn.Dense(4, in_units=64))
        net.initialize(mx.init.One())
        return net
''')

POINTS = ['mid-write', 'before-fsync', 'before-replace', 'after-replace']


@pytest.fixture
def child(tmp_path):
    helpers = tmp_path / 'helpers'
    helpers.mkdir()
    (helpers / 'faults_common.py').write_text(COMMON)
    (helpers / 'child.py').write_text(CHILD)
    sys.path.insert(0, str(helpers))
    try:
        import faults_common
        yield str(helpers / 'child.py'), faults_common
    finally:
        sys.path.remove(str(helpers))
        sys.modules.pop('faults_common', None)


def _kill_at_marker(script, mode, point, target, source):
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS='1')
    proc = subprocess.Popen([sys.executable, script, mode, point, target, source],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, text=True)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.strip() == MARKER:
            break
    else:
        proc.wait()
        pytest.fail('the child never reached %s: %s %s' % (point, seen, proc.stderr.read()))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdin.close()
    proc.stdout.close()
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    return proc.pid


def _temps(folder):
    return sorted(f for f in os.listdir(folder) if f.endswith('.paramsurgery-tmp'))


def _masks_in(path, common):
    net = common.build('reader_')
    ps.load_masks(net, path)
    return ps.get_mask(net, 'reader_dense0_weight')['reader_dense0_weight'].asnumpy()


@pytest.mark.parametrize('point', POINTS)
def test_killed_save_masks_keeps_old_or_new_file(child, tmp_path, point):
    script, common = child
    target = str(tmp_path / 'masks.npz')
    net = common.build('parent_')
    ps.apply_mask(net, net[0].weight, common.OLD_MASK)
    ps.save_masks(net, target)
    old = open(target, 'rb').read()
    pid = _kill_at_marker(script, 'masks', point, target, '')
    now = open(target, 'rb').read()
    if now != old:   # only once the rename happened: then the new file is complete
        assert point == 'after-replace'
        np.testing.assert_array_equal(_masks_in(target, common), common.NEW_MASK)
    else:
        assert point != 'after-replace'
        np.testing.assert_array_equal(_masks_in(target, common), common.OLD_MASK)
    left = _temps(str(tmp_path))
    if point in ('mid-write', 'before-fsync', 'before-replace'):
        # the killed write left its temporary file, named after the target and its process
        assert len(left) == 1 and left[0].startswith('.masks.npz.%d.' % pid)
    # the next successful write removes it (its process is gone) and leaves only the target
    ps.apply_mask(net, net[0].weight, common.NEW_MASK, combine='replace')
    ps.save_masks(net, target)
    assert _temps(str(tmp_path)) == []
    assert sorted(os.listdir(str(tmp_path))) == ['helpers', 'masks.npz']
    np.testing.assert_array_equal(_masks_in(target, common), common.NEW_MASK)


@pytest.mark.parametrize('point', POINTS)
def test_killed_cli_prune_keeps_old_or_new_file(child, tmp_path, point, capsys):
    script, common = child
    net = common.build('cli_')
    net.initialize(mx.init.Uniform(1.0), force_reinit=True)
    source = str(tmp_path / 'in.params')
    net.save_parameters(source)
    target = str(tmp_path / 'out.params')
    reference = str(tmp_path / 'reference.params')
    assert main(['prune', source, '-o', reference, '--amount', '0.5']) == 0
    assert main(['prune', source, '-o', target, '--amount', '0.2']) == 0
    capsys.readouterr()
    old = open(target, 'rb').read()
    _kill_at_marker(script, 'cli', point, target, source)
    now = open(target, 'rb').read()
    if now != old:
        assert point == 'after-replace'
        assert now == open(reference, 'rb').read()
    left = _temps(str(tmp_path))
    assert len(left) == (1 if point in ('mid-write', 'before-fsync', 'before-replace') else 0)
    assert main(['prune', source, '-o', target, '--amount', '0.5']) == 0
    assert _temps(str(tmp_path)) == []
    assert open(target, 'rb').read() == open(reference, 'rb').read()
    loaded = mx.nd.load(target)
    assert set(loaded) == set(mx.nd.load(source))


def test_error_during_write_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    net = nn.Dense(2, in_units=2, prefix='fc_')
    net.initialize()
    ps.apply_mask(net, 'fc_weight', np.array([[1, 0], [0, 1]], 'float32'))
    target = str(tmp_path / 'm.npz')
    ps.save_masks(net, target)
    old = open(target, 'rb').read()

    def full_disk(fd):
        raise OSError(28, 'No space left on device')

    monkeypatch.setattr(os, 'fsync', full_disk)
    with pytest.raises(OSError, match='No space left'):
        ps.save_masks(net, target)
    assert open(target, 'rb').read() == old
    assert os.listdir(str(tmp_path)) == ['m.npz']
