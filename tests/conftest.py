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


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gluoncv`` need gluoncv (``pip install --no-deps gluoncv==0.10.5.post0
    portalocker``): they run when asked for (``-m gluoncv``), and then fail if it is
    missing; otherwise they are skipped, saying how to run them. Tests marked ``gluonnlp``
    likewise run only with ``-m gluonnlp`` (and skip when gluonnlp is not importable)."""
    for marker in ('gluoncv', 'gluonnlp'):
        if marker in (config.getoption('-m') or ''):
            continue
        skip = pytest.mark.skip(reason='%s nets: run with -m %s (see docs/shrink.md)'
                                % (marker, marker))
        for item in items:
            if marker in item.keywords:
                item.add_marker(skip)
