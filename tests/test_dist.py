"""Value surgery against MXNet's real parameter-server kvstore (dist_sync, 2 workers)."""
import numpy as np

from dist_harness import run_cluster

REFUSAL = r'''
import json
import mxnet as mx, numpy as np, paramsurgery as ps
from mxnet import autograd, gluon

kv = mx.kv.create('dist_sync')
net = gluon.nn.Dense(2, in_units=3, prefix='fc_')
net.initialize(mx.init.Constant(1.0), ctx=[mx.cpu(0), mx.cpu(1)])
trainer = gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': 0.1}, kvstore=kv)

def step():
    with autograd.record():
        losses = [net(mx.nd.ones((1, 3), ctx=c)).sum() for c in net.weight.list_ctx()]
    autograd.backward(losses)
    trainer.step(2)

before_first = ps.set_params(net, 'fc_weight', 0.5)  # before the first step: allowed
step()
after_first = [w.asnumpy().tolist() for w in net.weight.list_data()]
snap = [p.asnumpy().tobytes() for p in net.weight.list_data() + net.bias.list_data()]
try:
    ps.assign_params(net, '.*', 2.0)
    error = None
except ps.TrainerStateError as exc:
    error = str(exc)
unchanged = snap == [p.asnumpy().tobytes() for p in net.weight.list_data() + net.bias.list_data()]
step()
print('RESULT ' + json.dumps({'rank': kv.rank, 'error': error, 'unchanged': unchanged,
                              'after_first': after_first,
                              'update_on_kvstore': bool(trainer._update_on_kvstore)}))
'''


def test_value_surgery_refused_on_dist_update_on_kvstore():
    results = run_cluster(REFUSAL, workers=2)
    assert sorted(r['rank'] for r in results) == [0, 1]
    for r in results:
        assert r['update_on_kvstore'] is True
        assert r['unchanged'] is True
        assert "Parameter 'fc_weight'" in r['error'] and 'dist_sync' in r['error']
        assert 'Nothing was changed' in r['error'] and 'ps.apply_mask' in r['error']
        # the set_params before the first step reached the servers: 0.5 - 0.1 * (2 workers *
        # 2 contexts * 1) / 2 = 0.3 on every entry, on every worker
        for replica in r['after_first']:
            np.testing.assert_allclose(replica, np.full((2, 3), 0.3), rtol=1e-6)
