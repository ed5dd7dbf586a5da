"""The command line on saved model_zoo files: inspect, prune, and bad input."""
import json
import os
import re
import subprocess
import sys
import warnings

import mxnet as mx
import numpy as np
import pytest
from mxnet.gluon.model_zoo import vision

import paramsurgery as ps
from paramsurgery.cli import main

from helpers import ONE, TWO


@pytest.fixture(scope='module')
def saved(tmp_path_factory):
    """resnet18_v1 saved with save_parameters (structural names), plus a copy with a mask."""
    folder = tmp_path_factory.mktemp('cli')
    mx.random.seed(0)
    net = vision.resnet18_v1(pretrained=False, classes=10)
    net.initialize(mx.init.Xavier())
    net(mx.nd.zeros((1, 3, 32, 32)))
    path = str(folder / 'r18.params')
    net.save_parameters(path)
    arrays = mx.nd.load(path)
    mask = (mx.nd.arange(arrays['output.weight'].size) % 2).reshape(arrays['output.weight'].shape)
    masked = dict(arrays, **{'output.weight_mask': mask})
    masked_path = str(folder / 'masked.params')
    mx.nd.save(masked_path, masked)
    return path, masked_path, arrays


def run(args, capsys):
    try:
        code = main(args)
    except SystemExit as exit:    # argparse's own usage errors
        code = exit.code
    out, err = capsys.readouterr()
    return code, out, err


def test_inspect_lists_every_array(saved, capsys):
    path, _, arrays = saved
    code, out, err = run(['inspect', path], capsys)
    assert code == 0 and err == ''
    rows = out.splitlines()[2:-2]
    assert [r.split()[0] for r in rows] == list(arrays)
    assert out.splitlines()[-1].split()[:2] == ['total', '(%d)' % len(arrays)]
    code, out, _ = run(['inspect', path, '--key', r'.*\.running_var'], capsys)
    assert code == 0 and len(out.splitlines()) == 4 + 20  # 20 BatchNorm layers


def test_inspect_recognises_masks(saved, capsys):
    _, masked_path, arrays = saved
    code, out, _ = run(['inspect', masked_path, '--key', 'output'], capsys)
    assert code == 0
    (row,) = [l for l in out.splitlines() if l.startswith('output.weight')]
    size = arrays['output.weight'].size
    assert row.split()[-4:] == [str(size), str(size // 2), '50.00%', 'yes']
    assert 'output.weight_mask' not in out


@pytest.mark.parametrize('scope', ['global', 'layer'])
def test_prune_exact_count_and_rest_untouched(saved, tmp_path, capsys, scope):
    path, _, arrays = saved
    out_path = str(tmp_path / 'pruned.params')
    code, out, err = run(['prune', path, '-o', out_path, '--amount', '0.9', '--scope', scope],
                         capsys)
    assert code == 0, err
    pruned = mx.nd.load(out_path)
    assert list(pruned) == list(arrays)
    chosen = [n for n, a in arrays.items() if n.endswith('weight') and a.ndim >= 2]
    assert len(chosen) == 21  # 20 convolutions and the output Dense
    new_zeros = {n: int((pruned[n].asnumpy() == 0).sum() - (arrays[n].asnumpy() == 0).sum())
                 for n in chosen}
    if scope == 'global':
        total = sum(arrays[n].size for n in chosen)
        assert sum(new_zeros.values()) == int(np.floor(0.9 * total + 0.5))
    else:
        for n in chosen:
            assert new_zeros[n] == int(np.floor(0.9 * arrays[n].size + 0.5)), n
    for name, arr in arrays.items():
        before, after = arr.asnumpy(), pruned[name].asnumpy()
        if name in chosen:  # pruned entries are zero, the others are bit-identical
            kept = after != 0
            np.testing.assert_array_equal(after[kept], before[kept])
        else:
            assert before.tobytes() == after.tobytes() and arr.dtype == pruned[name].dtype
    assert 'input unchanged' in out
    assert mx.nd.load(path)['features.0.weight'].asnumpy().tobytes() == \
        arrays['features.0.weight'].asnumpy().tobytes()


def test_prune_respects_masks_in_the_file(saved, tmp_path, capsys):
    _, masked_path, arrays = saved
    out_path = str(tmp_path / 'p.params')
    assert run(['prune', masked_path, '-o', out_path, '--amount', '10', '--count', '--key',
                'output'], capsys)[0] == 0
    pruned = mx.nd.load(out_path)
    mask = pruned['output.weight_mask'].asnumpy()
    newly = (pruned['output.weight'].asnumpy() == 0) & (arrays['output.weight'].asnumpy() != 0)
    assert newly.sum() == 10 and (mask[newly] == 1).all()  # only still-unmasked entries


def test_prune_structured_and_random(saved, tmp_path, capsys):
    path, _, arrays = saved
    out_path = str(tmp_path / 's.params')
    assert run(['prune', path, '-o', out_path, '--amount', '0.25', '--key', 'output',
                '--method', 'structured'], capsys)[0] == 0
    w = mx.nd.load(out_path)['output.weight'].asnumpy()
    assert (np.abs(w).sum(axis=1) == 0).sum() == 3  # 25% of 10 output rows, rounded
    outs = []
    for i in range(2):
        p = str(tmp_path / ('r%d.params' % i))
        assert run(['prune', path, '-o', p, '--amount', '0.5', '--method', 'random',
                    '--seed', '7'], capsys)[0] == 0
        outs.append(mx.nd.load(p)['features.0.weight'].asnumpy())
    np.testing.assert_array_equal(outs[0], outs[1])


def test_prune_overwrites_only_when_named(saved, tmp_path, capsys):
    path, _, arrays = saved
    copy = str(tmp_path / 'copy.params')
    mx.nd.save(copy, arrays)
    code, out, _ = run(['prune', copy, '-o', copy, '--amount', '0.5', '--key', 'output'], capsys)
    assert code == 0 and 'overwrote the input' in out
    assert (mx.nd.load(copy)['output.weight'].asnumpy() == 0).mean() >= 0.5


@pytest.mark.parametrize('args, message', [
    (['inspect', '{missing}'], 'no such file'),
    (['inspect', '{corrupt}'], 'not a readable MXNet parameter file'),
    (['prune', '{path}', '-o', '{out}', '--amount', '1.5'], 'Did you mean'),
    (['prune', '{path}', '-o', '{out}', '--amount', '-1'], '-1'),
    (['prune', '{path}', '-o', '{out}', '--amount', '0.5', '--key', 'nothing.*'],
     "matches no array"),
    (['prune', '{path}', '-o', '{out}', '--amount', '0.5', '--key', '('],
     'not a valid regular expression'),
    (['prune', '{path}', '-o', '{out}', '--amount', '99999999', '--key', 'output'], 'only 5120'),
    (['prune', '{path}', '-o', '{out}', '--amount', '0.5', '--method', 'structured',
      '--scope', 'global'], '--scope layer'),
    # issue 14: one line and exit 2, never a traceback, nothing written
    (['inspect', '{unbroadcast}'], "mask 'w_mask' has shape (3, 2), which does not broadcast"),
    (['prune', '{unbroadcast}', '-o', '{out}', '--amount', '0.5', '--key', 'w'], "'w'"),
    (['prune', '{path}', '-o', '{missing_dir}', '--amount', '0.5'], 'does not exist'),
    (['prune', '{path}', '-o', '{folder}', '--amount', '0.5'], 'is a folder'),
    (['prune', '{path}', '-o', '', '--amount', '0.5'], 'must be a file path'),
    (['inspect', '{empty}'], 'empty (0 bytes)'),
    (['prune', '{path}', '-o', '{out}', '--amount', '1_000_000'], 'amount=1000000'),
    (['prune', '{path}', '-o', '{out}', '--amount', 'nan'], 'not finite'),
])
def test_bad_input_exits_2_without_output(saved, tmp_path, capsys, args, message):
    path, _, _ = saved
    corrupt = tmp_path / 'corrupt.params'
    corrupt.write_bytes(open(path, 'rb').read()[:100])
    unbroadcast = str(tmp_path / 'unbroadcast.params')
    mx.nd.save(unbroadcast, {'w': mx.nd.ones((2, 3)), 'w_mask': mx.nd.ones((3, 2))})
    (tmp_path / 'empty.params').write_bytes(b'')
    (tmp_path / 'folder').mkdir()
    out_path = tmp_path / 'out.params'
    args = [a.format(missing=tmp_path / 'nope.params', corrupt=corrupt, path=path, out=out_path,
                     unbroadcast=unbroadcast, empty=tmp_path / 'empty.params',
                     folder=tmp_path / 'folder', missing_dir=tmp_path / 'no' / 'o.params')
            for a in args]
    before = sorted(os.listdir(tmp_path))
    code, out, err = run(args, capsys)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and message in err and 'Traceback' not in err
    assert not re.search(r'(\w+Error): \1:', err), err   # issue 18: "MXNetError: MXNetError:"
    assert not out_path.exists()
    assert sorted(os.listdir(tmp_path)) == before            # nothing written, no temp files
    assert os.listdir(tmp_path / 'folder') == []


def test_amount_with_underscores_is_a_count(saved, tmp_path, capsys):
    path, _, arrays = saved
    out_path = str(tmp_path / 'p.params')
    code, _, err = run(['prune', path, '-o', out_path, '--amount', '1_000', '--key',
                        'output.weight'], capsys)
    assert code == 0, err
    newly = (mx.nd.load(out_path)['output.weight'].asnumpy() == 0).sum() - \
        (arrays['output.weight'].asnumpy() == 0).sum()
    assert newly == 1000   # a count, not "did you mean 10.0"


@pytest.mark.parametrize('amount, scope, said', [
    ('90', 'layer', '--amount 90 prunes 90 entries per array, not 90%: did you mean --amount 0.9?'),
    ('2', 'global', '--amount 2 prunes 2 entries in all, not 2%: did you mean --amount 0.02?'),
    ('100', 'layer', 'did you mean --amount 1.0?'),
])
def test_percent_like_count_is_refused_without_count(saved, tmp_path, capsys, amount, scope,
                                                      said):
    # issue 18: --amount 90 silently pruned 90 entries per array (0.02% of resnet18)
    path, _, arrays = saved
    out_path = tmp_path / 'p.params'
    code, out, err = run(['prune', path, '-o', str(out_path), '--amount', amount, '--scope',
                          scope], capsys)
    assert code == 2 and said in err and 'add --count' in err, err
    assert len(err.strip().splitlines()) == 1 and out == '' and os.listdir(tmp_path) == []
    code, _, err = run(['prune', path, '-o', str(out_path), '--amount', amount, '--scope', scope,
                        '--count', '--key', 'output.weight'], capsys)
    assert code == 0, err
    newly = (mx.nd.load(str(out_path))['output.weight'].asnumpy() == 0).sum() - \
        (arrays['output.weight'].asnumpy() == 0).sum()
    assert newly == int(amount)   # with --count, exactly that many entries


@pytest.mark.parametrize('amount', ['0', '1', '101'])
def test_counts_outside_2_to_100_need_no_flag(saved, tmp_path, capsys, amount):
    path, _, arrays = saved
    out_path = str(tmp_path / 'p.params')
    code, _, err = run(['prune', path, '-o', out_path, '--amount', amount, '--key',
                        'output.weight'], capsys)
    assert code == 0, err
    newly = (mx.nd.load(out_path)['output.weight'].asnumpy() == 0).sum() - \
        (arrays['output.weight'].asnumpy() == 0).sum()
    assert newly == int(amount)


def test_count_flag_with_a_fraction_is_refused(saved, tmp_path, capsys):
    path, _, _ = saved
    code, _, err = run(['prune', path, '-o', str(tmp_path / 'p.params'), '--amount', '0.9',
                        '--count'], capsys)
    assert code == 2 and '--count says --amount is a count, got 0.9' in err, err
    assert os.listdir(tmp_path) == []


def test_version(capsys):
    code, out, err = run(['--version'], capsys)
    assert code == 0 and out.strip() == 'paramsurgery %s' % ps.__version__, (out, err)


def test_prune_keeps_row_sparse_storage(tmp_path, capsys):
    dense = np.arange(1, 13, dtype=np.float32).reshape(6, 2)
    path, out_path = str(tmp_path / 'emb.params'), str(tmp_path / 'p.params')
    mx.nd.save(path, {'emb.weight': mx.nd.array(dense).tostype('row_sparse'),
                      'fc.weight': mx.nd.ones((2, 2))})
    code, _, err = run(['prune', path, '-o', out_path, '--amount', '4', '--count', '--key', 'emb'],
                       capsys)
    assert code == 0, err
    pruned = mx.nd.load(out_path)
    assert pruned['emb.weight'].stype == 'row_sparse'
    expected = dense.copy()
    expected[:2] = 0   # the four smallest entries: rows 0 and 1
    np.testing.assert_array_equal(pruned['emb.weight'].asnumpy(), expected)
    assert pruned['fc.weight'].stype == 'default'


def test_console_entry_point_and_usage_errors(saved, tmp_path):
    path, _, _ = saved
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    ok = subprocess.run([sys.executable, '-m', 'paramsurgery', 'inspect', path, '--key', 'output'],
                        capture_output=True, text=True, env=env)
    assert ok.returncode == 0 and 'output.weight' in ok.stdout
    bad = subprocess.run([sys.executable, '-m', 'paramsurgery', 'prune', path, '--amount', '0.5'],
                         capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and 'Traceback' not in bad.stderr and '-o' in bad.stderr
    corrupt = tmp_path / 'c.params'
    corrupt.write_bytes(b'not a params file')
    bad = subprocess.run([sys.executable, '-m', 'paramsurgery', 'inspect', str(corrupt)],
                         capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and 'Traceback' not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    for sub in ['inspect', 'prune', 'demo']:
        helped = subprocess.run([sys.executable, '-m', 'paramsurgery', sub, '--help'],
                                capture_output=True, text=True, env=env)
        assert helped.returncode == 0 and 'usage: paramsurgery ' + sub in helped.stdout


def test_exported_file_with_prefixed_names_and_masks(tmp_path, capsys):
    from mxnet.gluon import nn

    import paramsurgery as ps
    net = nn.HybridSequential(prefix='x_')
    with net.name_scope():
        net.add(nn.Conv2D(4, 3, in_channels=1), nn.BatchNorm(in_channels=4))
    net.initialize(mx.init.One())
    ps.apply_mask(net, 'x_conv0_weight', (np.arange(36) % 3 != 0).reshape(4, 1, 3, 3))
    net.hybridize()
    net(mx.nd.ones((1, 1, 5, 5)))
    net.export(str(tmp_path / 'm'))
    path = str(tmp_path / 'm-0000.params')
    assert 'arg:x_conv0_weight_mask' in mx.nd.load(path)
    code, out, _ = run(['inspect', path], capsys)
    assert code == 0
    rows = {line.split()[0]: line.split() for line in out.splitlines()[2:-2]}
    assert 'arg:x_conv0_weight_mask' not in rows and 'aux:x_batchnorm0_running_var' in rows
    assert rows['arg:x_conv0_weight'][-4:] == ['36', '12', '33.33%', 'yes']
    out_path = str(tmp_path / 'p.params')
    assert run(['prune', path, '-o', out_path, '--amount', '6', '--count'], capsys)[0] == 0
    pruned = mx.nd.load(out_path)
    w, m = pruned['arg:x_conv0_weight'].asnumpy(), pruned['arg:x_conv0_weight_mask'].asnumpy()
    assert ((w == 0) & (m != 0)).sum() == 6   # six more, among the entries still unmasked


# --------------------------------------------------------------------------- shrink

@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    """resnet18_v1 (10 classes) exported at 32x32, and its Gluon twin."""
    folder = tmp_path_factory.mktemp('exported')
    net = vision.resnet18_v1(pretrained=False, classes=10, prefix='r_')
    mx.random.seed(0)
    net.initialize(mx.init.Xavier())
    net.hybridize()
    net(mx.nd.zeros((1, 3, 32, 32)))
    prefix = str(folder / 'model')
    net.export(prefix)
    net.save_parameters(prefix + '.params')
    return prefix, net


@pytest.mark.parametrize('amount, scope', [('0.5', 'layer'), ('0.3', 'global'), ('2', 'layer')])
def test_shrink_an_exported_model_as_prune_channels_and_shrink_would(exported, tmp_path, capsys,
                                                                      amount, scope):
    prefix, net = exported
    out = str(tmp_path / 'small')
    code, stdout, err = run(['shrink', prefix + '-symbol.json', prefix + '-0000.params',
                             '--input-shape', '1,3,32,32', '--amount', amount, '--scope', scope,
                             '-o', out] + (['--count'] if amount.isdigit() else []), capsys)
    assert code == 0, err
    twin = vision.resnet18_v1(pretrained=False, classes=10, prefix='r_')
    twin.load_parameters(prefix + '.params')
    twin.hybridize()
    ps.prune_channels(twin, int(amount) if amount.isdigit() else float(amount),
                      inputs=(1, 3, 32, 32), scope=scope)
    ps.shrink(twin, inputs=(1, 3, 32, 32))
    ps.remove_mask(twin, ps.masked(twin))
    small = ps.load_exported(out + '-symbol.json', 'data', out + '-0000.params')
    x = mx.nd.array(np.random.RandomState(0).uniform(-1, 1, (2, 3, 32, 32)))
    with mx.autograd.predict_mode():
        assert np.allclose(small(x).asnumpy(), twin(x).asnumpy(), rtol=1e-4, atol=1e-5)
    before, after = ps.count_ops(net, (1, 3, 32, 32)), ps.count_ops(twin, (1, 3, 32, 32))
    assert ps.count_ops(small, (1, 3, 32, 32)) == after
    lines = stdout.splitlines()
    assert lines[1].split()[:3] == ['MACs', str(before[0]), str(after[0])]
    assert lines[2].split()[:3] == ['parameters', str(before[1]), str(after[1])]
    assert sorted(os.listdir(tmp_path)) == ['small-0000.params', 'small-symbol.json']


@pytest.mark.parametrize('args, message', [
    (['--amount', '1.5'], 'Did you mean'),
    (['--amount', '-1'], 'negative'),
    (['--amount', '0.5', '--input-shape', '1,3,0,32'], 'positive whole numbers'),
    (['--amount', '0.5', '--input-shape', '1,5,32,32'], 'does not run'),
    (['--amount', '0.5', '--round-to', '0'], 'round_to'),
    (['--amount', '0.5', '--params', 'x'], 'unrecognized'),
    (['--amount', '0.5', '--importance', 'taylor'], 'invalid choice'),
    # issue 18: reported as an unreadable model ("Parameter 'data' is missing in file")
    (['--amount', '0.5', '--input-shape', '1,3,32,32', '--input-shape', '1,3,32,32'],
     'model-symbol.json has 1 data input (data): give one --input-shape per input, got 2'),
    (['--amount', '64'], '--amount 64 prunes 64 channels per group, not 64%: did you mean '
                         '--amount 0.64?'),
    (['--amount', '64', '--scope', 'global'], '64 channels in all'),
])
def test_shrink_bad_input_exits_2_without_output(exported, tmp_path, capsys, args, message):
    prefix, _ = exported
    argv = ['shrink', prefix + '-symbol.json', prefix + '-0000.params', '-o',
            str(tmp_path / 'small')]
    if '--input-shape' not in args:
        args = args + ['--input-shape', '1,3,32,32']
    code, out, err = run(argv + args, capsys)
    assert code == 2 and message in err and 'Traceback' not in err, err
    assert os.listdir(tmp_path) == []


def test_shrink_damaged_or_missing_files_exit_2(exported, tmp_path, capsys):
    prefix, _ = exported
    damaged = tmp_path / 'bad-symbol.json'
    damaged.write_text('{"nodes": [1, 2')
    for symbol, params, message in [(str(damaged), prefix + '-0000.params', 'not a readable'),
                                    (str(tmp_path / 'none.json'), prefix + '-0000.params',
                                     'no such file'),
                                    (prefix + '-symbol.json', str(tmp_path / 'none.params'),
                                     'no such file')]:
        code, out, err = run(['shrink', symbol, params, '--amount', '0.5', '--input-shape',
                              '1,3,32,32', '-o', str(tmp_path / 'small')], capsys)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert sorted(os.listdir(tmp_path)) == ['bad-symbol.json']


@pytest.fixture(scope='module', params=[ONE, TWO], ids=['1ctx', '2ctx'])
def exported_masked(request, exported, tmp_path_factory):
    """The ``exported`` resnet18_v1 after prune_channels(0.5) on 1 or 2 contexts, exported
    with its masks (a ``*_mask`` input per pruned member)."""
    prefix, _ = exported
    folder = tmp_path_factory.mktemp('exported_masked')
    net = vision.resnet18_v1(pretrained=False, classes=10, prefix='r_')
    net.load_parameters(prefix + '.params', ctx=request.param)
    net.hybridize()
    ps.prune_channels(net, 0.5, inputs=(1, 3, 32, 32))
    net(mx.nd.zeros((1, 3, 32, 32), ctx=request.param[0]))
    masked_prefix = str(folder / 'masked')
    net.export(masked_prefix)
    assert any(k.endswith('_mask') for k in mx.nd.load(masked_prefix + '-0000.params'))
    return masked_prefix, prefix


@pytest.mark.parametrize('amount', ['0', '0.5'])
def test_shrink_an_export_with_masks_slices_them_and_removes_masked_channels(
        exported_masked, tmp_path, capsys, amount):
    masked_prefix, prefix = exported_masked
    out = str(tmp_path / 'small')
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        code, stdout, err = run(['shrink', masked_prefix + '-symbol.json',
                                 masked_prefix + '-0000.params', '--input-shape', '1,3,32,32',
                                 '--amount', amount, '-o', out], capsys)
    assert code == 0, err
    # issue 18: MXNet's "Cannot decide type ... data: None" on stderr alarms users
    assert [str(w.message) for w in caught if 'Cannot decide type' in str(w.message)] == []
    # what prune_channels(0.5), prune_channels(amount) and shrink do to the Gluon net
    twin = vision.resnet18_v1(pretrained=False, classes=10, prefix='r_')
    twin.load_parameters(prefix + '.params')
    twin.hybridize()
    ps.prune_channels(twin, 0.5, inputs=(1, 3, 32, 32))
    ps.prune_channels(twin, float(amount), inputs=(1, 3, 32, 32))
    ps.shrink(twin, inputs=(1, 3, 32, 32))
    ps.remove_mask(twin, ps.masked(twin))
    small = ps.load_exported(out + '-symbol.json', 'data', out + '-0000.params')
    assert ps.count_ops(small, (1, 3, 32, 32)) == ps.count_ops(twin, (1, 3, 32, 32))
    # the masks were sliced with their weights: every one still fits it
    params = small.collect_params()
    masks = [n for n in params if n.endswith('_mask')]
    assert masks and all(params[n].shape == params[n[:-5]].shape for n in masks)
    x = mx.nd.array(np.random.RandomState(0).uniform(-1, 1, (2, 3, 32, 32)))
    with mx.autograd.predict_mode():
        # as in the test above: the same kept channels, summed in another order
        assert np.allclose(small(x).asnumpy(), twin(x).asnumpy(), rtol=1e-4, atol=1e-5)
    assert sorted(os.listdir(tmp_path)) == ['small-0000.params', 'small-symbol.json']


def test_shrink_refuses_a_mask_it_cannot_slice_in_one_line(tmp_path, capsys):
    net = mx.gluon.nn.HybridSequential(prefix='b_')
    with net.name_scope():
        net.add(mx.gluon.nn.Conv2D(4, 3), mx.gluon.nn.Conv2D(3, 3), mx.gluon.nn.Dense(2))
    net.initialize(mx.init.Xavier())
    net(mx.nd.zeros((1, 3, 8, 8)))
    ps.apply_mask(net, 'b_conv0_weight', mx.nd.ones((4, 3, 3, 3)))
    net.hybridize()
    net(mx.nd.zeros((1, 3, 8, 8)))
    model = tmp_path / 'in'
    model.mkdir()
    prefix = str(model / 'm')
    net.export(prefix)
    # a mask broadcast over its weight (one entry per filter) cannot be sliced with it
    graph = json.loads(open(prefix + '-symbol.json').read())
    for node in graph['nodes']:
        if node['op'] == 'elemwise_mul':
            node['op'] = 'broadcast_mul'
        if node['name'] == 'b_conv0_weight_mask':
            node.get('attrs', {}).pop('__shape__', None)
    with open(prefix + '-symbol.json', 'w') as f:
        json.dump(graph, f)
    arrays = mx.nd.load(prefix + '-0000.params')
    arrays['arg:b_conv0_weight_mask'] = mx.nd.ones((4, 1, 1, 1))
    mx.nd.save(prefix + '-0000.params', arrays)
    loaded = ps.load_exported(prefix + '-symbol.json', 'data', prefix + '-0000.params')
    assert loaded(mx.nd.ones((1, 3, 8, 8))).shape == (1, 2)     # a valid model
    out = tmp_path / 'out'
    out.mkdir()
    code, stdout, err = run(['shrink', prefix + '-symbol.json', prefix + '-0000.params',
                             '--input-shape', '1,3,8,8', '--amount', '0.5',
                             '-o', str(out / 'small')], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "mask 'b_conv0_weight_mask' has shape (4, 1, 1, 1)" in err
    assert 'Bake the masks first' in err
    assert os.listdir(out) == []


# --------------------------------------------------------------------------- export, compact, expand

def test_export_an_exported_model_to_onnx(exported, tmp_path, capsys):
    import onnxruntime as ort
    prefix, net = exported
    out = str(tmp_path / 'model.onnx')
    code, stdout, err = run(['export', prefix + '-symbol.json', prefix + '-0000.params',
                             '--input-shape', '2,3,32,32', '-o', out], capsys)
    assert code == 0, err
    assert 'ONNX Runtime matches MXNet' in stdout and os.listdir(tmp_path) == ['model.onnx']
    session = ort.InferenceSession(out, providers=['CPUExecutionProvider'])
    assert [i.name for i in session.get_inputs()] == ['data']  # parameters are initializers
    x = mx.nd.array(np.random.RandomState(0).uniform(-1, 1, (2, 3, 32, 32)))
    with mx.autograd.predict_mode():
        want = net(x).asnumpy()
    got = session.run(None, {'data': x.asnumpy()})[0]
    # float32 in both runtimes, other kernels: see tests/test_onnx_export.py
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


@pytest.mark.parametrize('args, message', [
    (['--input-shape', '1,3,0,32'], 'positive whole numbers'),
    (['--input-shape', '1,3,32,32', '--input-shape', '1,3,32,32'], '1 data input (data)'),
    (['--input-shape', '1,5,32,32'], 'does not run'),
    (['--input-shape', '1,3,32,32', '--opset', '7'], 'opset must be between 12'),
    (['--input-shape', '1,3,32,32', '--opset', 'x'], 'invalid int'),
])
def test_export_bad_input_exits_2_without_output(exported, tmp_path, capsys, args, message):
    prefix, _ = exported
    code, out, err = run(['export', prefix + '-symbol.json', prefix + '-0000.params', '-o',
                          str(tmp_path / 'm.onnx')] + args, capsys)
# --------------------------------------------------------------------------- latency

@pytest.fixture
def weight_clock(monkeypatch):
    """A fake clock for the latency commands: a microsecond per weight entry of the
    convolution and dense layers (masks, biases, BatchNorm free), alone and in whole nets
    alike, so a latency model's fit is exact: no timing is asserted."""
    from paramsurgery import latency

    def seconds(variant):
        return 1e-6 * sum(a.size for n, a in variant.arrays.items()
                          if a.ndim >= 2 and not n.endswith('_mask'))
    monkeypatch.setattr(latency.timing, '_TIMER', lambda runtime, variant: seconds(variant))
    return seconds


def test_latency_measures_an_export_and_writes_a_model(exported, tmp_path, capsys,
                                                       weight_clock):
    prefix, net = exported
    model_path = str(tmp_path / 'model.json')
    code, out, err = run(['latency', prefix + '-symbol.json', prefix + '-0000.params',
                          '--input-shape', '1,3,32,32', '--runtime', 'mkldnn', '--threads', '1',
                          '--repeats', '3', '--model', model_path], capsys)
    assert code == 0, err
    entries = sum(int(np.prod(p.shape)) for p in net.collect_params().values()
                  if len(p.shape) >= 2)
    assert ('on mkldnn, inputs 1,3,32,32, 1 thread: median %.3f ms' % (1e-3 * entries)) in out
    model = ps.LatencyModel.load(model_path)
    assert model.runtime == 'mkldnn' and model.measured == pytest.approx(1e-6 * entries)
    assert 'wrote %s' % model_path in out


def test_shrink_to_a_latency_ratio(exported, tmp_path, capsys, weight_clock):
    prefix, net = exported
    out = str(tmp_path / 'small')
    code, stdout, err = run(['shrink', prefix + '-symbol.json', prefix + '-0000.params',
                             '--input-shape', '1,3,32,32', '--latency-ratio', '1.5',
                             '--runtime', 'onnxruntime', '-o', out], capsys)
    assert code == 0, err
    found = re.search(r'latency on onnxruntime: predicted ([\d.]+)x, measured ([\d.]+)x', stdout)
    assert found, stdout
    predicted, measured = float(found.group(1)), float(found.group(2))
    assert predicted >= 1.5 and measured == predicted     # the fake clock is exact
    small = ps.load_exported(out + '-symbol.json', 'data', out + '-0000.params')
    dense = ps.load_exported(prefix + '-symbol.json', 'data', prefix + '-0000.params')
    ratio = (weight_clock(ps.latency.runtimes.variant_of(dense, [(1, 3, 32, 32)])) /
             weight_clock(ps.latency.runtimes.variant_of(small, [(1, 3, 32, 32)])))
    assert ratio >= 1.5 and '%.2f' % ratio == found.group(2)


@pytest.mark.parametrize('args, message', [
    (['--latency-ratio', '2', '--amount', '0.5'], 'give --amount or --latency-ratio'),
    ([], 'give --amount or --latency-ratio'),
    (['--latency-ratio', '0.5'], '--latency-ratio must be a number > 1'),
    (['--latency-ratio', 'nan'], '--latency-ratio must be a number > 1'),
    (['--latency-ratio', '2', '--scope', 'global'], 'takes no --scope'),
    (['--latency-ratio', '2', '--runtime', 'tvm'], 'invalid choice'),
])
def test_shrink_latency_bad_input_exits_2_without_output(exported, tmp_path, capsys, args,
                                                         message, weight_clock):
    prefix, _ = exported
    code, out, err = run(['shrink', prefix + '-symbol.json', prefix + '-0000.params', '-o',
                          str(tmp_path / 'small'), '--input-shape', '1,3,32,32'] + args, capsys)
    assert code == 2 and message in err and 'Traceback' not in err, err
    assert os.listdir(tmp_path) == []


def test_compact_and_expand_round_trip_bit_exact(saved, tmp_path, capsys):
    path, masked_path, _ = saved
    for source in (path, masked_path):
        small, back = str(tmp_path / 'net.compact'), str(tmp_path / 'back.params')
        code, out, err = run(['compact', source, '-o', small], capsys)
        assert code == 0 and 'bytes' in out, err
        code, out, err = run(['expand', small, '-o', back], capsys)
        assert code == 0, err
        want, got = mx.nd.load(source), mx.nd.load(back)
        assert sorted(got) == sorted(want)
        for name in want:
            assert got[name].dtype == want[name].dtype
            assert got[name].asnumpy().tobytes() == want[name].asnumpy().tobytes(), name
    # the expanded file is an ordinary save_parameters file
    net = vision.resnet18_v1(pretrained=False, classes=10)
    code, _, err = run(['compact', path, '-o', small], capsys)
    code, _, err = run(['expand', small, '-o', back], capsys)
    net.load_parameters(back)


def test_compact_file_loads_with_load_compact_masks_included(saved, tmp_path, capsys):
    _, masked_path, arrays = saved
    small = str(tmp_path / 'net.compact')
    assert run(['compact', masked_path, '-o', small], capsys)[0] == 0
    net = vision.resnet18_v1(pretrained=False, classes=10)
    ps.load_compact(net, small)
    assert ps.masked(net) == [net.output.weight.name]
    assert (net.output.weight.data().asnumpy().tobytes()
            == arrays['output.weight'].asnumpy().tobytes())


def test_compact_and_expand_bad_input_exit_2_without_output(saved, tmp_path, capsys):
    path, _, _ = saved
    text = tmp_path / 'text.params'
    text.write_text('hello')
    for argv, message in [(['compact', str(tmp_path / 'none'), '-o', 'x'], 'no such file'),
                          (['compact', str(text), '-o', str(tmp_path / 'o')], 'not a readable'),
                          (['expand', path, '-o', str(tmp_path / 'o')], 'not a compact file'),
                          (['expand', str(text), '-o', str(tmp_path / 'o')], 'not a compact'),
                          (['compact', path, '-o', str(tmp_path)], 'is a folder')]:
        code, out, err = run(argv, capsys)
        assert code == 2 and message in err and 'Traceback' not in err, (argv, err)
    assert os.listdir(tmp_path) == ['text.params']
def test_shrink_an_exported_model_with_transposed_convolutions(tmp_path, capsys):
    """A transposed convolution's num_filter is rewritten from its weight's axis 1 (and a
    depthwise one's num_group): the exported shrink equals prune_channels + shrink."""
    from channel_nets import Deconv, batch
    net = Deconv(prefix='deconv_')
    mx.random.seed(0)
    net.initialize(mx.init.Xavier())
    net.hybridize()
    x = batch()
    net(x)
    prefix = str(tmp_path / 'model')
    net.export(prefix)
    code, _, err = run(['shrink', prefix + '-symbol.json', prefix + '-0000.params',
                        '--input-shape', '1,3,8,8', '--amount', '0.5', '-o',
                        str(tmp_path / 'small')], capsys)
    assert code == 0, err
    ps.prune_channels(net, 0.5, inputs=(1, 3, 8, 8))
    ps.shrink(net, inputs=(1, 3, 8, 8))
    small = ps.load_exported(str(tmp_path / 'small-symbol.json'), 'data',
                             str(tmp_path / 'small-0000.params'))
    nodes = json.load(open(str(tmp_path / 'small-symbol.json')))['nodes']
    deconvs = [n['attrs'] for n in nodes if n['op'] == 'Deconvolution']
    assert [(a['num_filter'], a['num_group']) for a in deconvs] == [('3', '1'), ('3', '3'),
                                                                    ('2', '1')]
    assert ps.count_ops(small, (1, 3, 8, 8)) == ps.count_ops(net, (1, 3, 8, 8))
    # the same float32 weights and arithmetic: shrink's own check bound holds
    with mx.autograd.predict_mode():
        ref, got = net(x).asnumpy(), small(x).asnumpy()
    assert np.abs(ref - got).max() <= 1e-4 * np.abs(ref).max()
def test_latency_bad_input_exits_2(exported, tmp_path, capsys, weight_clock):
    prefix, _ = exported
    for args, message in [(['--runtime', 'tvm'], 'invalid choice'),
                          (['--repeats', '0'], 'repeats=0'),
                          (['--input-shape', '1,5,32,32'], 'does not run'),
                          (['--model', str(tmp_path / 'no' / 'm.json')], 'does not exist')]:
        if '--input-shape' not in args:
            args = args + ['--input-shape', '1,3,32,32']
        code, out, err = run(['latency', prefix + '-symbol.json', prefix + '-0000.params']
                             + args, capsys)
        assert code == 2 and message in err and 'Traceback' not in err, (args, err)
    assert os.listdir(tmp_path) == []
