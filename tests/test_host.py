"""Numpy views of CPU NDArrays (paramsurgery._mx.host): what they see, what writes do, and when
there is none."""
import ast
import pathlib

import mxnet as mx
import numpy as np
import pytest
from mxnet import gluon

import paramsurgery
from paramsurgery import _mx
from paramsurgery._mx import host as _host

from helpers import TWO


@pytest.mark.parametrize('ctx', TWO, ids=str)
@pytest.mark.parametrize('dtype', ['float32', 'float16', 'int64', 'uint8', 'bool'])
def test_views_read_and_write_the_arrays_memory(ctx, dtype):
    values = (np.arange(24).reshape(2, 3, 4) % 3).astype(dtype)
    arr = mx.nd.array(values, ctx=ctx, dtype=dtype)
    read = _host.read_view(arr)
    assert read.dtype == np.dtype(dtype) and read.shape == (2, 3, 4)
    np.testing.assert_array_equal(read, values)
    write = _host.write_view(arr)
    write[1] = 0
    expected = values.copy()
    expected[1] = 0
    np.testing.assert_array_equal(arr.asnumpy(), expected)


def test_views_wait_for_queued_writes_and_reads():
    arr = mx.nd.zeros((500, 500))
    for _ in range(20):
        arr += 1                         # queued in MXNet's engine, not done yet
    np.testing.assert_array_equal(_host.read_view(arr), 20)
    copy = arr * 1                       # a queued read of arr
    _host.write_view(arr)[:] = -1        # after the read: the copy keeps 20
    np.testing.assert_array_equal(copy.asnumpy(), 20)
    np.testing.assert_array_equal(arr.asnumpy(), -1)


def test_a_slice_views_its_own_rows():
    arr = mx.nd.array(np.arange(12).reshape(4, 3))
    _host.write_view(arr[1:3])[:] = 0
    np.testing.assert_array_equal(arr.asnumpy(), [[0, 1, 2], [0, 0, 0], [0, 0, 0], [9, 10, 11]])


def test_no_view_of_sparse_or_blocked_arrays():
    assert _host.write_view(mx.nd.zeros((4, 3)).tostype('row_sparse')) is None
    net = gluon.nn.Conv2D(8, 3, in_channels=4)
    net.initialize()
    net(mx.nd.ones((1, 4, 8, 8)))          # predict mode: may reorder the weight
    mx.nd.waitall()                        # the reorder is queued by the running forward
    weight = net.weight.data()
    if not _mx.is_blocked_layout(weight):
        pytest.skip('this MXNet build left the conv weight in the default layout')
    assert _host.read_view(weight) is None and _host.write_view(weight) is None


def test_no_module_reads_an_ndarray_on_the_host_but_through_host():
    """Every host read settles the engine first (paramsurgery._mx.host explains the race with
    the layout reorders a predict-mode Convolution queues): so no module but host.py may call
    ``asnumpy`` or take a DLPack view. Docstring examples are not code and may."""
    root = pathlib.Path(paramsurgery.__file__).parent
    found = []
    for path in sorted(root.rglob('*.py')):
        if path == root / '_mx' / 'host.py':
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            name = (node.attr if isinstance(node, ast.Attribute) else
                    node.id if isinstance(node, ast.Name) else None)
            if name in ('asnumpy', 'to_dlpack_for_read', 'to_dlpack_for_write', 'from_dlpack'):
                found.append('%s:%d %s' % (path.relative_to(root), node.lineno, name))
    assert not found, 'use _mx.to_host / _mx.host_array instead: %s' % found



def test_host_arrays_view_default_arrays_and_copy_blocked_ones(monkeypatch):
    net = gluon.nn.Conv2D(8, 3, in_channels=4)
    net.initialize()
    net(mx.nd.ones((1, 4, 8, 8)))          # predict mode: the weight is reordered
    plain = mx.nd.array(np.arange(6).reshape(2, 3))
    waits = []
    real_wait = mx.nd.waitall
    monkeypatch.setattr(_host.nd, 'waitall', lambda: waits.append(1) or real_wait())
    weight, bias = net.weight.data(), net.bias.data()
    real_wait()
    if not _mx.is_blocked_layout(weight):
        pytest.skip('this MXNet build left the conv weight in the default layout')
    read = list(_host.host_arrays([weight, plain, bias]))
    assert waits == [1]                    # settled once, before the first read
    for arr, out in zip([weight, plain, bias], read):
        np.testing.assert_array_equal(out, arr.asnumpy())
    _host.write_view(plain)[:] = -1        # a view of its memory, not a copy
    np.testing.assert_array_equal(read[1], -1)
    real_wait()
    assert _mx.is_blocked_layout(weight)   # left as it was: a copy of it was reordered


@pytest.mark.parametrize('ctxs', [[mx.cpu(0)], TWO], ids=len)
def test_shared_ndarray_is_copied_once_into_parameters(ctxs):
    values = np.arange(24, dtype=np.float32).reshape(4, 6)
    shared = _host.shared_ndarray(values)
    assert np.shares_memory(_host.read_view(shared), values)
    assert not values.flags.writeable      # what MXNet reads may not change under it
    param = gluon.Parameter('w', shape=(4, 6))
    param.initialize(ctx=ctxs)
    _mx.load_init(param, shared)
    del values, shared                     # the NDArray keeps the memory until it is copied
    for replica in param.list_data():
        np.testing.assert_array_equal(replica.asnumpy(), np.arange(24).reshape(4, 6))


def test_shared_ndarray_returns_what_it_cannot_share():
    for arr in (np.zeros(0, np.float32), np.arange(12.).reshape(3, 4).T,
                np.arange(4, dtype=np.int8)):
        assert _host.shared_ndarray(arr) is arr
