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

