"""Mask modes (API section 10): 'update' keeps the masked entries of the stored weights at
zero through the Trainer, with the dense forward graph; optimizer state under masks is zeroed
in both modes."""
import warnings

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon
from mxnet import optimizer as mx_optimizer

import paramsurgery as ps
from paramsurgery import _mx
from paramsurgery._mx import arrays as mx_arrays
from paramsurgery._mx import host as _host
from paramsurgery.masks import update_mode

from helpers import (
    ONE,
    TRAINER_SETUPS,
    TWO,
    Scale,
    assert_same_bits,
    batch,
    forward_backward,
    make_mlp,
    snapshot,
)

WEIGHTS = ['mlp_dense0_weight', 'mlp_dense1_weight']

OPTIMIZERS = [
    pytest.param('sgd', {'learning_rate': 0.05}, id='sgd'),
    pytest.param('sgd', {'learning_rate': 0.05, 'momentum': 0.9}, id='momentum'),
    pytest.param('sgd', {'learning_rate': 0.05, 'momentum': 0.9, 'wd': 0.1}, id='momentum-wd'),
    pytest.param('adam', {'learning_rate': 0.01}, id='adam'),
    pytest.param('adam', {'learning_rate': 0.01, 'wd': 0.1}, id='adam-wd'),
    pytest.param('nag', {'learning_rate': 0.05, 'momentum': 0.9, 'wd': 0.05}, id='nag-wd'),
]


def masks_for(net, seed=3):
    rng = np.random.RandomState(seed)
    params = net.collect_params()
    return {name: (rng.rand(*params[name].shape) > 0.4).astype('float32') for name in WEIGHTS}


def effective(net):
    """``{name: weight * mask}`` on the first context, for every non-mask parameter."""
    params = net.collect_params()
    out = {}
    for name, param in params.items():
        if name.endswith('_mask') and name[:-5] in params:
            continue
        value = param.data(param.list_ctx()[0]).asnumpy()
        if name + '_mask' in params:
            value = value * params[name + '_mask'].data(param.list_ctx()[0]).asnumpy()
        out[name] = value
    return out


def trainer_for(net, optimizer, options, kvstore, update_on_kvstore, **extra):
    return gluon.Trainer(net.collect_params(), optimizer, dict(options, **extra),
                         kvstore=kvstore or 'device', update_on_kvstore=update_on_kvstore)


def assert_masked_zero(net, masks, trainer):
    """Stored entries and optimizer states under the masks are exactly zero."""
    params = net.collect_params()
    for name, mask in masks.items():
        param = params[name]
        for arr in param.list_data():
            assert np.all(arr.asnumpy()[mask == 0] == 0), name
        idx = _mx.trainer_index(trainer, param)
        for updater in _mx.process_updaters(trainer):
            for state, _ in _mx.state_arrays(updater, idx, param.shape):
                assert np.all(state.asnumpy()[mask == 0] == 0), name


def pair(ctxs, hybridize):
    nets = [make_mlp(ctxs, hybridize, seed=5) for _ in range(2)]
    assert_same_bits(snapshot(nets[0]), snapshot(nets[1]))
    return nets


# --------------------------------------------------------------------------- equivalence

@pytest.mark.parametrize('optimizer,options', OPTIMIZERS)
@pytest.mark.parametrize('kvstore,update_on_kvstore,ctxs', TRAINER_SETUPS)
@pytest.mark.parametrize('trainer_first', [False, True], ids=['trainer-after', 'trainer-before'])
def test_update_mode_trains_like_graph_mode(optimizer, options, kvstore, update_on_kvstore,
                                            ctxs, trainer_first, hybridize):
    graph_net, update_net = pair(ctxs, hybridize)
    masks = masks_for(graph_net)
    x = batch(8)
    trainers = {}
    if trainer_first:
        # the Trainers exist and have stepped (momentum, moments) before the masks come
        for label, net in (('graph', graph_net), ('update', update_net)):
            trainers[label] = trainer_for(net, optimizer, options, kvstore, update_on_kvstore)
            for _ in range(2):
                forward_backward(net, x, ctxs)
                trainers[label].step(8)
    ps.apply_mask(graph_net, masks, mode='graph')
    ps.apply_mask(update_net, masks, mode='update')
    if not trainer_first:
        for label, net in (('graph', graph_net), ('update', update_net)):
            trainers[label] = trainer_for(net, optimizer, options, kvstore, update_on_kvstore)
        assert ps.check_params(update_net) == []   # watched: masking installed at step 1
    assert_masked_zero(update_net, masks, trainers['update'])
    for step in range(20):
        x = batch(8, seed=step)
        for label, net in (('graph', graph_net), ('update', update_net)):
            forward_backward(net, x, ctxs)
            trainers[label].step(8)       # plain Trainer.step, not ps.safe_step
        assert_masked_zero(update_net, masks, trainers['update'])
        if 'wd' not in options:
            # without weight decay nothing moves the graph-mode state under the mask either
            assert_masked_zero_states(graph_net, masks, trainers['graph'])
        ours, theirs = effective(update_net), effective(graph_net)
        for name in theirs:
            np.testing.assert_allclose(ours[name], theirs[name], rtol=1e-5, atol=1e-5,
                                       err_msg='%s after step %d' % (name, step))
    assert ps.check_params(update_net) == []


def assert_masked_zero_states(net, masks, trainer):
    params = net.collect_params()
    for name, mask in masks.items():
        idx = _mx.trainer_index(trainer, params[name])
        for updater in _mx.process_updaters(trainer):
            for state, is_master in _mx.state_arrays(updater, idx, mask.shape):
                if not is_master:
                    assert np.all(state.asnumpy()[mask == 0] == 0), name


def test_forward_graph_has_no_mask_input(tmp_path, ctxs):
    net = make_mlp(ctxs, hybridize=True)
    x = batch(4)
    before = net(x.as_in_context(ctxs[0])).asnumpy()
    ps.apply_mask(net, masks_for(net), mode='update')
    with warnings.catch_warnings(record=True) as caught:
        net.hybridize()
        out = net(x.as_in_context(ctxs[0])).asnumpy()
    # Gluon's "Parameter ..._mask is not used by any computation" is silenced
    assert not [w for w in caught if 'not used' in str(w.message)]
    assert not np.allclose(out, before)     # the masked weights are used
    net.export(str(tmp_path / 'model'))
    symbol = open(str(tmp_path / 'model-symbol.json')).read()
    assert '_mask' not in symbol
    assert not [k for k in mx.nd.load(str(tmp_path / 'model-0000.params')) if '_mask' in k]
    # the mask is still a parameter: save_parameters and load_parameters round-trip it
    assert sorted(n for n in net.collect_params() if n.endswith('_mask')) == \
        [w + '_mask' for w in WEIGHTS]
    net.save_parameters(str(tmp_path / 'p.params'))
    assert '0.weight_mask' in mx.nd.load(str(tmp_path / 'p.params'))


def test_mask_is_stored_in_one_byte_per_entry_and_read_in_the_weight_dtype(ctxs):
    net = make_mlp(ctxs)
    ps.apply_mask(net, masks_for(net), mode='update')
    mask = net.collect_params()['mlp_dense0_weight_mask']
    assert np.dtype(mask.dtype) == np.uint8 and mask.grad_req == 'null'
    assert [m.context for m in mask.list_data()] == ctxs
    got = ps.get_mask(net, 'mlp_dense0_weight')['mlp_dense0_weight']
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got.asnumpy(), masks_for(net)['mlp_dense0_weight'])


# --------------------------------------------------------------------------- optimizers

def _all_optimizers():
    extra = {'sgd': {'momentum': 0.9}, 'nag': {'momentum': 0.9}, 'lars': {'momentum': 0.9},
             'lbsgd': {'momentum': 0.9}, 'signum': {'momentum': 0.9, 'wd_lh': 0.01},
             'rmsprop': {'centered': True}, 'ccsgd': {'momentum': 0.9},
             'dcasgd': {'momentum': 0.9}}
    for name in sorted(mx_optimizer.Optimizer.opt_registry):
        if name in ('test', 'groupadagrad', 'dcasgd'):
            continue   # a test stub; 2-D row-sparse only; fails in MXNet itself with clipping
        yield pytest.param(name, extra.get(name, {}), id=name)


@pytest.mark.parametrize('multi_precision', [False, True], ids=['fp32', 'fp16-mp'])
@pytest.mark.parametrize('name,extra', list(_all_optimizers()))
def test_every_optimizer_keeps_masked_entries_at_zero(name, extra, multi_precision):
    """ZERO_PRESERVING optimizers need the gradient masked only; the others get the weight
    (and master copy) masked after the update as well. Either way: exactly zero."""
    opt = mx_optimizer.create(name, learning_rate=0.1, wd=0.1, clip_gradient=5.0,
                              multi_precision=multi_precision, **extra)
    dtype = 'float16' if multi_precision else 'float32'
    weight = gluon.Parameter('w', shape=(24,), dtype=dtype)
    weight.initialize(mx.init.Uniform(1))
    mask = gluon.Parameter('w_mask', shape=(24,), dtype='uint8', grad_req='null')
    rng = np.random.RandomState(0)
    keep = (rng.rand(24) > 0.5).astype('uint8')
    mask.initialize(mx.init.Constant(0))
    mask.set_data(mx.nd.array(keep, dtype='uint8'))
    weight.set_data(weight.data() * mx.nd.array(keep, dtype=dtype))
    opt.param_dict = {0: weight}
    updater = mx_optimizer.get_updater(opt)
    updater.__class__ = update_mode.MaskingUpdater
    update_mode.set_update_mask(weight, mask)
    try:
        for _ in range(6):
            grad = mx.nd.array(rng.randn(24), dtype=dtype)   # not masked by the caller
            updater(0, grad, weight.data())
            assert np.all(weight.data().asnumpy()[keep == 0] == 0)
            if name in ('sgd', 'nag', 'adam'):   # momentum and moments (FTML's d is not 0)
                for state, _ in _mx.state_arrays(updater, 0, (24,)):
                    assert np.all(state.asnumpy()[keep == 0] == 0)
    finally:
        update_mode.set_update_mask(weight, None)


@pytest.mark.parametrize('aggregation', ['1', '45'])
def test_aggregated_multi_tensor_updates(monkeypatch, aggregation, hybridize):
    monkeypatch.setenv('MXNET_OPTIMIZER_AGGREGATION_SIZE', aggregation)
    graph_net, update_net = pair(TWO, hybridize)
    masks = masks_for(graph_net)
    ps.apply_mask(graph_net, masks)
    ps.apply_mask(update_net, masks, mode='update')
    trainers = [gluon.Trainer(n.collect_params(), 'sgd', {'learning_rate': 0.05,
                                                        'momentum': 0.9, 'wd': 0.01},
                              update_on_kvstore=False) for n in (graph_net, update_net)]
    assert trainers[1]._optimizer.aggregate_num == int(aggregation)
    for step in range(20):
        for net, trainer in zip((graph_net, update_net), trainers):
            forward_backward(net, batch(8, seed=step), TWO)
            trainer.step(8)
        assert_masked_zero(update_net, masks, trainers[1])
    for name, value in effective(graph_net).items():
        np.testing.assert_allclose(effective(update_net)[name], value, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('optimizer', ['sgd', 'nag', 'adam'])
@pytest.mark.parametrize('kvstore,update_on_kvstore,ctxs', TRAINER_SETUPS)
def test_multi_precision_fp16(optimizer, kvstore, update_on_kvstore, ctxs):
    net = Scale(features=8, prefix='s_')
    net.initialize(ctx=ctxs)
    net.cast('float16')
    keep = np.array([1, 0, 1, 1, 0, 0, 1, 1], 'float32')
    trainer = gluon.Trainer(net.collect_params(), optimizer,
                            {'learning_rate': 0.1, 'multi_precision': True, 'wd': 0.01,
                             **({'momentum': 0.9} if optimizer != 'adam' else {})},
                            kvstore=kvstore or 'device', update_on_kvstore=update_on_kvstore)
    x = mx.nd.ones((4, 8), dtype='float16')

    def step():
        with autograd.record():
            losses = [(net(part) ** 2).sum() for part in
                      gluon.utils.split_and_load(x, ctxs, even_split=False)]
        autograd.backward(losses)
        trainer.step(4)

    step()                                     # master copies exist before the mask
    ps.apply_mask(net, 's_weight', keep, mode='update')
    for _ in range(5):
        step()
        for arr in net.weight.list_data():
            assert np.all(arr.asnumpy()[keep == 0] == 0)
        idx = _mx.trainer_index(trainer, net.weight)
        for updater in _mx.process_updaters(trainer):
            for state, _ in _mx.state_arrays(updater, idx, (8,)):
                assert np.all(state.asnumpy()[keep == 0] == 0)
        assert np.all(net.weight.data(ctxs[0]).asnumpy()[keep == 1] != 0)


# --------------------------------------------------------------------------- pruning

@pytest.mark.parametrize('kvstore,update_on_kvstore,ctxs', TRAINER_SETUPS)
def test_pruner_update_mode_reaches_the_schedule_exactly(kvstore, update_on_kvstore, ctxs):
    net = make_mlp(ctxs, hybridize=True)
    trainer = gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': 0.05,
                                                          'momentum': 0.9},
                            kvstore=kvstore or 'device', update_on_kvstore=update_on_kvstore)
    pruner = ps.Pruner(net, WEIGHTS, ps.PolynomialDecay(0.0, 0.7, begin=0, end=8,
                                                        frequency=2), mode='update')
    for step in range(12):
        forward_backward(net, batch(8, seed=step), ctxs)
        trainer.step(8)
        pruner.step(step)
        for name in WEIGHTS:
            param = net.collect_params()[name]
            mask = ps.get_mask(net, name)[name].asnumpy()
            _, sparsity = pruner.schedule(step)
            if step in pruner.pruned_steps:
                assert int((mask == 0).sum()) == ps.prune_count(sparsity, mask.size)
            for arr in param.list_data():
                assert np.all(arr.asnumpy()[mask == 0] == 0)
    report = ps.sparsity_report(net, WEIGHTS)
    assert [row['sparsity'] for row in report.rows] == \
        [ps.prune_count(0.7, 20) / 20, ps.prune_count(0.7, 15) / 15]
    assert pruner.state_dict()['mode'] == 'update'


def test_pruning_functions_take_mode(ctxs):
    net = make_mlp(ctxs)
    ps.prune_magnitude(net, WEIGHTS, 0.5, scope='global', mode='update')
    ps.prune_random(net, 'mlp_dense0_weight', 0.2, seed=1, mode='update')
    ps.prune_structured(net, 'mlp_dense1_weight', 1, mode='update')
    ps.prune_custom(net, 'mlp_dense0_weight', np.ones((5, 4)), mode='update')
    for name in WEIGHTS:
        mask = ps.get_mask(net, name)[name].asnumpy()
        assert np.dtype(net.collect_params()[name + '_mask'].dtype) == np.uint8
        for arr in net.collect_params()[name].list_data():
            np.testing.assert_array_equal(arr.asnumpy() == 0, mask == 0)
    with pytest.raises(ps.SurgeryValueError, match="exactly 'graph'"):
        ps.prune_magnitude(net, WEIGHTS, 0.1, mode='Update')
    with pytest.raises(ps.SurgeryTypeError):
        ps.Pruner(net, WEIGHTS, ps.ConstantSparsity(0.5), mode=None)


# --------------------------------------------------------------------------- validation

@pytest.mark.parametrize('kwargs,error,match', [
    ({'mask': 0.5, 'mode': 'update'}, ps.SurgeryValueError, 'binary masks only'),
    ({'mask': np.full((5, 4), 2.0), 'mode': 'update'}, ps.SurgeryValueError, 'binary'),
    ({'mask': mx.nd.full((5, 4), -1), 'mode': 'update'}, ps.SurgeryValueError, 'binary'),
    ({'mask': 1, 'mode': 'UPDATE'}, ps.SurgeryValueError, "exactly 'graph' .* or 'update'"),
    ({'mask': 1, 'mode': None}, ps.SurgeryTypeError, 'mode must be'),
    ({'mask': 1, 'mode': b'update'}, ps.SurgeryTypeError, 'mode must be'),
    ({'mask': np.array([1, np.nan, 0, 1]), 'mode': 'update'}, ps.SurgeryValueError,
     'non-finite'),
])
def test_bad_arguments_change_nothing(ctxs, kwargs, error, match):
    net = make_mlp(ctxs)
    trainer = gluon.Trainer(net.collect_params(), 'sgd', {'momentum': 0.9})
    forward_backward(net, batch(), ctxs)
    trainer.step(8)
    before = snapshot(net)
    with pytest.raises(error, match=match):
        ps.apply_mask(net, 'mlp_dense0_weight', **kwargs)
    assert_same_bits(before, snapshot(net))
    assert ps.masked(net) == []
    assert '_set_trainer' not in net[0].weight.__dict__


def test_non_binary_graph_mask_cannot_become_an_update_mask_by_multiplying(ctxs):
    net = make_mlp(ctxs)
    ps.apply_mask(net, 'mlp_dense0_weight', 0.5)
    before = snapshot(net)
    with pytest.raises(ps.SurgeryValueError, match="combine='replace'"):
        ps.apply_mask(net, 'mlp_dense0_weight', 1, mode='update')
    assert_same_bits(before, snapshot(net))
    with pytest.raises(ps.SurgeryValueError, match="combine='replace'"):
        ps.prune_magnitude(net, 'mlp_dense0_weight', 0.5, mode='update')
    assert_same_bits(before, snapshot(net))
    ps.apply_mask(net, 'mlp_dense0_weight', 1, mode='update', combine='replace')
    assert ps.masks.mask_mode(net, 'mlp_dense0_weight') == 'update'


def test_dist_kvstore_updating_on_servers_is_refused_before_the_first_step(ctxs):
    """The configuration alone decides (the kvstore is created by the first step): no
    parameter server is needed to check the refusal."""
    net = make_mlp(ctxs)
    gluon.Trainer(net.collect_params(), 'sgd', kvstore='dist_sync')   # update_on_kvstore
    before = snapshot(net)
    with pytest.raises(ps.TrainerStateError, match='servers'):
        ps.apply_mask(net, 'mlp_dense0_weight', 0, mode='update')
    assert_same_bits(before, snapshot(net))
    assert ps.masked(net) == []
    ps.apply_mask(net, 'mlp_dense0_weight', 0)       # graph mode needs nothing from servers
    # a dist Trainer with update_on_kvstore=False updates locally: accepted
    other = make_mlp(ctxs, prefix='mlp_')
    gluon.Trainer(other.collect_params(), 'sgd', kvstore='dist_sync', update_on_kvstore=False)
    ps.apply_mask(other, 'mlp_dense0_weight', 0, mode='update')


# --------------------------------------------------------------------------- the same in both modes

def test_mode_switch_combines_masks(ctxs):
    net = make_mlp(ctxs, hybridize=True)
    stored = net[0].weight.data().asnumpy()
    a = np.array([[1, 0, 1, 1]] * 5, 'float32')
    b = np.array([[1, 1, 0, 1]] * 5, 'float32')
    ps.apply_mask(net, 'mlp_dense0_weight', a)
    ps.apply_mask(net, 'mlp_dense0_weight', b, mode='update')
    np.testing.assert_array_equal(ps.get_mask(net, 'mlp_dense0_weight')['mlp_dense0_weight']
                                  .asnumpy(), a * b)
    np.testing.assert_array_equal(net[0].weight.data().asnumpy(), stored * a * b)
    net(batch(2).as_in_context(ctxs[0]))
    ps.apply_mask(net, 'mlp_dense0_weight', np.ones((5, 4)), mode='graph', combine='replace')
    assert ps.masks.mask_mode(net, 'mlp_dense0_weight') == 'graph'
    assert np.dtype(net[0].weight_mask.dtype) == np.float32
    # revived from weight 0 (update mode had zeroed it)
    np.testing.assert_array_equal(net[0].weight.data().asnumpy(), stored * a * b)
    assert ps.check_params(net) == []


def test_remove_mask_gives_back_the_zeroed_stored_weight(ctxs, hybridize):
    net = make_mlp(ctxs, hybridize)
    masks = masks_for(net)
    stored = net[0].weight.data().asnumpy()
    ps.apply_mask(net, masks, mode='update')
    trainer = gluon.Trainer(net.collect_params(), 'sgd', {'momentum': 0.9})
    assert ps.remove_mask(net, 'mlp_dense0_weight', bake=False) == ['mlp_dense0_weight']
    np.testing.assert_array_equal(net[0].weight.data().asnumpy(),
                                  stored * masks['mlp_dense0_weight'])
    assert ps.masked(net) == ['mlp_dense1_weight']
    forward_backward(net, batch(), ctxs)
    trainer.step(8)              # no longer masked: the zeros train again
    assert np.all(net[0].weight.data().asnumpy() != 0)
    ps.remove_mask(net, 'mlp_dense1_weight')
    assert ps.masked(net) == []


def test_reports_and_checks_are_the_same_in_both_modes(ctxs):
    graph_net, update_net = pair(ctxs, False)
    masks = masks_for(graph_net)
    ps.apply_mask(graph_net, masks)
    ps.apply_mask(update_net, masks, mode='update')
    assert ps.masked(graph_net) == ps.masked(update_net) == WEIGHTS
    rows = [ps.sparsity_report(n).rows for n in (graph_net, update_net)]
    assert rows[0] == rows[1]
    assert ps.check_params(graph_net) == ps.check_params(update_net) == []
    for name in WEIGHTS:
        np.testing.assert_array_equal(ps.get_mask(graph_net, name)[name].asnumpy(),
                                      ps.get_mask(update_net, name)[name].asnumpy())


def test_check_params_reports_what_is_not_enforced(ctxs):
    net = make_mlp(ctxs)
    ps.apply_mask(net, masks_for(net), mode='update')
    trainer = gluon.Trainer(net.collect_params(), 'sgd', {'momentum': 0.9},
                            update_on_kvstore=False)
    forward_backward(net, batch(), ctxs)
    trainer.step(8)
    assert ps.check_params(net) == []
    # a write that bypasses paramsurgery
    with autograd.pause():
        net[0].weight.data(ctxs[-1])[:] = 1
    codes = {(p.name, p.code, p.context) for p in ps.check_params(net)}
    assert ('mlp_dense0_weight', 'mask-not-enforced', ctxs[-1]) in codes
    ps.set_params(net, 'mlp_dense0_weight', net[0].weight.data(ctxs[0]))
    # Updaters replaced behind paramsurgery's back
    trainer._updaters = [mx_optimizer.get_updater(trainer._optimizer) for _ in ctxs]
    problems = [p for p in ps.check_params(net, 'mlp_dense1_weight')]
    assert [p.code for p in problems] == ['mask-not-enforced']
    assert 'Updater' in problems[0].message
    # re-applying repairs both
    ps.apply_mask(net, masks_for(net), mode='update')
    assert ps.check_params(net) == []


def test_value_surgery_keeps_update_masks(ctxs):
    net = make_mlp(ctxs)
    masks = masks_for(net)
    ps.apply_mask(net, masks, mode='update')
    ps.set_params(net, 'mlp_dense0_weight', 2.0)
    for arr in net[0].weight.list_data():
        np.testing.assert_array_equal(arr.asnumpy(), 2.0 * masks['mlp_dense0_weight'])
    assert ps.check_params(net) == []


def test_save_and_load_masks_keep_modes(tmp_path, ctxs):
    net = make_mlp(ctxs)
    masks = masks_for(net)
    ps.apply_mask(net, {'mlp_dense0_weight': masks['mlp_dense0_weight']}, mode='update')
    ps.apply_mask(net, {'mlp_dense1_weight': masks['mlp_dense1_weight']})
    path = str(tmp_path / 'masks.npz')
    ps.save_masks(net, path)
    fresh = make_mlp(ctxs, prefix='other_')
    ps.load_masks(fresh, path)
    assert ps.masks.mask_mode(fresh, 'other_dense0_weight') == 'update'
    assert ps.masks.mask_mode(fresh, 'other_dense1_weight') == 'graph'
    assert np.all(fresh[0].weight.data().asnumpy()[masks['mlp_dense0_weight'] == 0] == 0)
    forced = make_mlp(ctxs, prefix='third_')
    ps.load_masks(forced, path, mode='update')
    assert {ps.masks.mask_mode(forced, n) for n in ps.masked(forced)} == {'update'}
    with pytest.raises(ps.SurgeryValueError):
        ps.load_masks(forced, path, mode='both')


def test_files_written_before_modes_load_as_graph_masks(tmp_path):
    """Version-1 files without a 'mode' field (written before mask modes existed)."""
    import json
    net = make_mlp(ONE)
    ps.apply_mask(net, masks_for(net), mode='update')
    path = str(tmp_path / 'masks.npz')
    ps.save_masks(net, path)
    with np.load(path) as archive:
        arrays = dict(archive)
    meta = json.loads(arrays['meta'].tobytes().decode('utf-8'))
    for entry in meta['masks']:
        del entry['mode']
    arrays['meta'] = np.frombuffer(json.dumps(meta).encode('utf-8'), dtype=np.uint8)
    old = str(tmp_path / 'old.npz')
    np.savez_compressed(old, **arrays)
    fresh = make_mlp(ONE, prefix='f_')
    ps.load_masks(fresh, old)
    assert {ps.masks.mask_mode(fresh, n) for n in ps.masked(fresh)} == {'graph'}


# --------------------------------------------------------------------------- optimizer state rule

@pytest.mark.parametrize('mode', ['graph', 'update'])
@pytest.mark.parametrize('kvstore,update_on_kvstore,ctxs', TRAINER_SETUPS)
def test_optimizer_state_is_zeroed_under_masks_and_revived_from_zero(
        mode, kvstore, update_on_kvstore, ctxs):
    net = make_mlp(ctxs)
    trainer = gluon.Trainer(net.collect_params(), 'adam', {'learning_rate': 0.01},
                            kvstore=kvstore or 'device', update_on_kvstore=update_on_kvstore)
    for step in range(3):
        forward_backward(net, batch(8, seed=step), ctxs)
        trainer.step(8)
    param = net[0].weight
    idx = _mx.trainer_index(trainer, param)

    def states():
        return [s.asnumpy() for u in _mx.process_updaters(trainer)
                for s, _ in _mx.state_arrays(u, idx, param.shape)]

    assert all(np.all(s != 0) for s in states())
    first = np.array([[0, 1, 1, 1]] * 5, 'float32')
    ps.apply_mask(net, 'mlp_dense0_weight', first, mode=mode)
    for s in states():
        assert np.all(s[first == 0] == 0) and np.all(s[first == 1] != 0)
    tighter = np.array([[1, 0, 1, 1]] * 5, 'float32')
    ps.apply_mask(net, 'mlp_dense0_weight', tighter, mode=mode)
    for s in states():
        assert np.all(s[:, :2] == 0) and np.all(s[:, 2:] != 0)
    # replace revives column 0 with zero state; column 1 is masked now
    ps.apply_mask(net, 'mlp_dense0_weight', np.array([[1, 0, 1, 1]] * 5), mode=mode,
                  combine='replace')
    for s in states():
        assert np.all(s[:, :2] == 0)
    if mode == 'update':
        assert np.all(param.data().asnumpy()[:, 0] == 0)    # revived from weight 0


# --------------------------------------------------------------------------- cluster

DIST_REFUSAL = r'''
import json, numpy as np, mxnet as mx, paramsurgery as ps
from mxnet import autograd, gluon
from mxnet.gluon import nn
kv = mx.kv.create('dist_sync')
result = {}
def build(prefix):
    net = nn.Dense(3, in_units=4, prefix=prefix)
    net.initialize(mx.init.One())
    return net
def step(net, trainer):
    with autograd.record():
        loss = net(mx.nd.ones((2, 4))).sum()
    loss.backward()
    trainer.step(2)
net = build('a_')
trainer = gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': 0.1}, kvstore=kv)
for label in ('before', 'after'):
    w = net.weight.data().asnumpy().copy()
    try:
        ps.apply_mask(net, 'a_weight', np.array([1, 0, 1, 1]), mode='update')
        result[label] = 'accepted'
    except ps.TrainerStateError as err:
        result[label] = 'refused'
        result[label + '_unchanged'] = bool((net.weight.data().asnumpy() == w).all()) and \
            ps.masked(net) == []
    if label == 'before':
        step(net, trainer)
# a Trainer built after the mask is refused at its first step, before anything trains
other = build('b_')
ps.apply_mask(other, 'b_weight', np.array([1, 0, 1, 1]), mode='update')
late = gluon.Trainer(other.collect_params(), 'sgd', {'learning_rate': 0.1}, kvstore=kv)
try:
    step(other, late)
    result['late'] = 'stepped'
except ps.TrainerStateError:
    result['late'] = 'refused'
result['late_check'] = sorted({p.code for p in ps.check_params(other)})
print('RESULT ' + json.dumps(result))
'''


def test_dist_refusal_on_a_loopback_cluster():
    from dist_harness import run_cluster
    results = run_cluster(DIST_REFUSAL, workers=2, timeout=90)
    for result in results:
        assert result['before'] == result['after'] == 'refused', result
        assert result['before_unchanged'] and result['after_unchanged'], result
        assert result['late'] == 'refused', result
        assert result['late_check'] == ['mask-not-enforced'], result


def test_allreduce_grads_then_update_and_a_switch_from_graph_mode(hybridize):
    """The two-call path (gradients edited in between, e.g. clipped) is masked too, and a
    Trainer that stepped with graph-mode masks keeps working after the switch."""
    net = make_mlp(TWO, hybridize)
    masks = masks_for(net)
    ps.apply_mask(net, masks)
    trainer = gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': 0.1,
                                                          'momentum': 0.9},
                            update_on_kvstore=False)
    forward_backward(net, batch(8), TWO)
    trainer.step(8)
    ps.apply_mask(net, masks, mode='update')
    for step in range(5):
        forward_backward(net, batch(8, seed=step), TWO)
        trainer.allreduce_grads()
        for grad in net[0].weight.list_grad():
            grad[:] = grad + 1.0          # an edit that would revive masked entries
        trainer.update(8)
        assert_masked_zero(net, masks, trainer)
    assert ps.check_params(net) == []


@pytest.mark.parametrize('kvstore,update_on_kvstore,ctxs', TRAINER_SETUPS)
def test_trainer_built_before_the_mask_and_not_stepped_yet(kvstore, update_on_kvstore, ctxs):
    net = make_mlp(ctxs)
    trainer = gluon.Trainer(net.collect_params(), 'adam', {'learning_rate': 0.1, 'wd': 0.1},
                            kvstore=kvstore or 'device', update_on_kvstore=update_on_kvstore)
    masks = masks_for(net)
    ps.apply_mask(net, masks, mode='update')
    assert ps.check_params(net) == []
    for step in range(5):
        forward_backward(net, batch(8, seed=step), ctxs)
        trainer.step(8)
        assert_masked_zero(net, masks, trainer)
    assert ps.check_params(net) == []


# Update mode on dist_sync with update_on_kvstore=False: the optimizer runs on the workers, so
# the mask is enforced there; the mask itself is not trainable state and must never reach a
# kvstore (its uint8 values killed the parameter server: "only support floating point types").
DIST_UPDATE_MODE = r'''
import json, os, numpy as np, mxnet as mx, paramsurgery as ps
from mxnet import autograd, gluon
from mxnet.gluon import nn
order = os.environ['MASK_ORDER']
kv = mx.kv.create('dist_sync')
ctxs = [mx.cpu(0), mx.cpu(1)]
net = nn.Dense(3, in_units=4, prefix='a_')
net.initialize(mx.init.One(), ctx=ctxs)
mask = np.array([[0, 1, 1, 1], [1, 0, 1, 1], [1, 1, 0, 1]])
def make_trainer():
    return gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': 0.125}, kvstore=kv,
                         update_on_kvstore=False)
if order == 'trainer-before':
    trainer = make_trainer()
    ps.apply_mask(net, 'a_weight', mask, mode='update')
else:
    ps.apply_mask(net, 'a_weight', mask, mode='update')
    trainer = make_trainer()
for _ in range(3):
    parts = [mx.nd.ones((1, 4), ctx=c) * (kv.rank + 1) for c in ctxs]
    with autograd.record():
        losses = [net(p).sum() for p in parts]
    autograd.backward(losses)
    ps.safe_step(trainer, 2 * kv.num_workers)
print('RESULT ' + json.dumps({
    'rank': kv.rank,
    'weight': [w.asnumpy().tolist() for w in net.weight.list_data()],
    'bias': [b.asnumpy().tolist() for b in net.bias.list_data()],
    'mask': [m.asnumpy().tolist() for m in net.collect_params()['a_weight_mask'].list_data()],
    'problems': [p.code for p in ps.check_params(net)]}))
'''


@pytest.mark.cluster
@pytest.mark.parametrize('order', ['trainer-before', 'trainer-after'])
def test_update_mode_on_dist_sync_without_update_on_kvstore(order):
    from dist_harness import run_cluster
    results = run_cluster(DIST_UPDATE_MODE, workers=2, timeout=90,
                          extra_env={'MASK_ORDER': order})
    assert sorted(r['rank'] for r in results) == [0, 1]
    mask = np.array([[0, 1, 1, 1], [1, 0, 1, 1], [1, 1, 0, 1]])
    # loss = sum of outputs: dL/dW[i, j] = x_j summed over the rows of both contexts and both
    # workers (2 * (1 + 2) = 6), rescaled by 1/4; with lr 1/8 every value is a dyadic rational
    # with a short mantissa, so float32 computes it exactly and the comparison is exact.
    expected_weight = np.where(mask, 1.0 - 3 * 0.125 * 6 / 4, 0.0)
    expected_bias = np.full(3, 0.0 - 3 * 0.125 * 4 / 4)   # Dense's bias starts at zero
    for result in results:
        for weight, bias, stored in zip(result['weight'], result['bias'], result['mask']):
            assert np.array_equal(np.array(weight), expected_weight), result
            assert np.array_equal(np.array(bias), expected_bias), result
            assert np.array_equal(np.array(stored), mask), result
        assert result['problems'] == [], result


@pytest.mark.parametrize('mode', ['graph', 'update'])
@pytest.mark.parametrize('kvstore,update_on_kvstore,ctxs', TRAINER_SETUPS[2:])
def test_masks_never_reach_a_kvstore(monkeypatch, mode, kvstore, update_on_kvstore, ctxs,
                                     hybridize):
    """A Trainer built after the masks lists them (collect_params holds them) but hands only
    the trainable parameters to its kvstore, also after set_data reset the kvstore (update_on_kvstore)."""
    handed = []
    for method in ('broadcast', 'init'):
        original = getattr(mx.kvstore.KVStore, method)

        def record(self, key, *args, _original=original, **kwargs):
            handed.append(key)
            return _original(self, key, *args, **kwargs)
        monkeypatch.setattr(mx.kvstore.KVStore, method, record)
    net = make_mlp(ctxs, hybridize)
    masks = masks_for(net)
    ps.apply_mask(net, masks, mode=mode)
    trainer = trainer_for(net, 'sgd', {'learning_rate': 0.1}, kvstore, update_on_kvstore)
    names = [p.name for p in trainer._params]
    assert {n + '_mask' for n in WEIGHTS} <= set(names)
    for step in range(2):
        forward_backward(net, batch(8, seed=step), ctxs)
        trainer.step(8)
        net[0].bias.set_data(net[0].bias.data())    # resets the kvstore: a second init
    trainable = [n for n in names if not n.endswith('_mask')]
    # set_data resets the kvstore only where it holds the weights (update_on_kvstore)
    inits = 2 if update_on_kvstore else 1
    assert sorted(names[k] for k in handed) == sorted(inits * trainable)
    if mode == 'update':
        assert_masked_zero(net, masks, trainer)


# --------------------------------------------------------------------------- the fast mask pass

def _mxnet_multiplies(monkeypatch):
    """Record every call of MXNet's numpy-frontend multiply (the mixed-dtype one)."""
    calls = []
    original = mx.np.multiply

    def spy(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)
    monkeypatch.setattr(mx_arrays.mx_np, 'multiply', spy)
    return calls


@pytest.mark.parametrize('kvstore,update_on_kvstore,ctxs', TRAINER_SETUPS)
def test_update_mode_step_masks_gradients_in_numpy_exactly(monkeypatch, kvstore,
                                                          update_on_kvstore, ctxs, hybridize):
    """The Trainer's masking of each gradient by a uint8 mask runs in numpy on views of the
    arrays, and trains exactly (bit for bit: weights, gradients, momentum) as MXNet's
    multiply does."""
    nets = pair(ctxs, hybridize)
    masks = masks_for(nets[0])
    trainers = []
    for net in nets:
        ps.apply_mask(net, masks, mode='update')
        trainers.append(trainer_for(net, 'sgd', {'learning_rate': 0.05, 'momentum': 0.9},
                                    kvstore, update_on_kvstore))
    calls = _mxnet_multiplies(monkeypatch)
    for step in range(3):
        x = batch(8, seed=step)
        # nets[1] with no host view: MXNet's own multiply, the reference
        forward_backward(nets[0], x, ctxs)
        trainers[0].step(8)
        assert calls == []
        with monkeypatch.context() as m:
            m.setattr(_host, 'write_view', lambda arr: None)
            forward_backward(nets[1], x, ctxs)
            trainers[1].step(8)
        assert len(calls) >= len(WEIGHTS)
        del calls[:]
        assert_same_bits(snapshot(nets[1]), snapshot(nets[0]))
        for name in WEIGHTS:
            grads = [[g.asnumpy() for g in net.collect_params()[name].list_grad()]
                     for net in nets]
            for ours, theirs in zip(*grads):
                assert ours.tobytes() == theirs.tobytes(), name
            states = [[s.asnumpy() for u in _mx.process_updaters(t)
                       for s, _ in _mx.state_arrays(
                           u, _mx.trainer_index(t, net.collect_params()[name]),
                           masks[name].shape)]
                      for net, t in zip(nets, trainers)]
            assert len(states[0]) == len(states[1]) > 0
            for ours, theirs in zip(*states):
                assert ours.tobytes() == theirs.tobytes(), name
    for net, trainer in zip(nets, trainers):
        assert_masked_zero(net, masks, trainer)


@pytest.mark.parametrize('dtype', ['float32', 'float16', 'float64', 'int32', 'uint8'])
@pytest.mark.parametrize('factor_dtype', ['uint8', 'bool'])
@pytest.mark.parametrize('ctx', TWO, ids=str)
def test_multiply_inplace_by_a_byte_factor_matches_mxnet(monkeypatch, dtype, factor_dtype, ctx):
    """multiply_inplace by a one-byte factor, on each context, gives MXNet's result bit for
    bit (NaN and inf kept where the factor is 1, NaN where inf meets 0), without MXNet's
    multiply."""
    rng = np.random.RandomState(0)
    values = (rng.uniform(-100, 100, (6, 7)) if dtype.startswith('float')
              else rng.randint(0, 100, (6, 7))).astype(dtype)
    if dtype.startswith('float'):
        values[0, :3] = [np.nan, np.inf, -np.inf]
    factor = (rng.rand(6, 7) > 0.5).astype(factor_dtype)
    factor[0, :3] = [1, 0, 1]
    arr = mx.nd.array(values, ctx=ctx, dtype=dtype)
    expected = mx.np.multiply(mx.nd.array(values, ctx=ctx, dtype=dtype).as_np_ndarray(),
                              mx.np.array(factor, ctx=ctx, dtype=factor_dtype)).asnumpy()
    calls = _mxnet_multiplies(monkeypatch)
    pending = arr * 1          # queued work on arr: the view must wait for it
    arr += 0
    _mx.multiply_inplace(arr, mx.nd.array(factor, ctx=ctx, dtype=factor_dtype))
    assert calls == []
    assert arr.dtype == np.dtype(dtype)
    assert arr.asnumpy().tobytes() == expected.astype(dtype).tobytes()
    assert pending.asnumpy().tobytes() == values.tobytes()


def test_multiply_inplace_on_a_blocked_layout_uses_mxnet(monkeypatch):
    """A weight left in MKLDNN's blocked layout has no numpy view: MXNet multiplies it, with
    the same result."""
    net = gluon.nn.Conv2D(8, 3, in_channels=4)
    net.initialize(mx.init.Uniform(1.0))
    net(mx.nd.ones((1, 4, 8, 8)))          # predict mode: may reorder the weight
    mx.nd.waitall()                        # the reorder is queued by the running forward
    weight = net.weight.data()
    if not _mx.is_blocked_layout(weight):
        pytest.skip('this MXNet build left the conv weight in the default layout')
    mask = (np.random.RandomState(1).rand(*weight.shape) > 0.5).astype('uint8')
    expected = weight.asnumpy() * mask
    calls = _mxnet_multiplies(monkeypatch)
    with autograd.pause():
        _mx.multiply_inplace(weight, mx.nd.array(mask, dtype='uint8'))
    assert len(calls) == 1
    np.testing.assert_array_equal(net.weight.data().asnumpy(), expected)
