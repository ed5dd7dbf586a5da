"""Shared fixtures: every behaviour runs on one context and on two, hybridised and not.

The helpers (nets, batches, snapshots) are in ``helpers.py``: import them from there.
"""
import pytest

from helpers import ONE, TWO


@pytest.fixture(params=[1, 2], ids=['1ctx', '2ctx'])
def ctxs(request):
    """One context, or two CPU contexts standing in for two GPUs."""
    return ONE if request.param == 1 else TWO


@pytest.fixture(params=[False, True], ids=['imperative', 'hybrid'])
def hybridize(request):
    return request.param
