"""Selecting parameters: the ``net`` and ``key`` arguments every paramsurgery call takes.

It also owns the mask-name rule: a mask that paramsurgery registers for parameter ``X`` is
the parameter ``X_mask``. A regular expression or a callable never selects a mask (under
Gluon's ``re.match`` rule ``'.*weight'`` would also match ``fc_weight_mask``, and scaling or
setting a mask along with its weight silently changes what was pruned); a mask is reached by
its exact name or its Parameter object only.

MXNet is imported on first use only: the mask-name rule and :func:`match` also serve the
command line on plain arrays.
"""
import difflib
import re
import sys
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Union

from .errors import SelectionError, SurgeryTypeError

if TYPE_CHECKING:
    from mxnet.gluon import Parameter

__all__ = ['select', 'all_params', 'MASK_SUFFIX', 'mask_names']

MAX_SUGGESTIONS = 5

#: Suffix of the name of a mask parameter: ``<weight name>_mask``.
MASK_SUFFIX = '_mask'


def mask_names(params) -> List[str]:
    """Names of the masks among ``params`` (any mapping by name: parameters, or the arrays
    of a saved file): ``X_mask`` where ``X`` exists too."""
    return [name for name in params
            if name.endswith(MASK_SUFFIX) and name[:-len(MASK_SUFFIX)] in params]


def unmasked(params) -> 'OrderedDict[str, Any]':
    """``params`` (a mapping by name) without the masks, in the same order."""
    masks = set(mask_names(params))
    return OrderedDict((n, p) for n, p in params.items() if n not in masks)


def _is_parameter(value) -> bool:
    mxnet = sys.modules.get('mxnet')
    return mxnet is not None and isinstance(value, mxnet.gluon.Parameter)


def all_params(net) -> 'OrderedDict[str, Parameter]':
    """Every parameter of ``net`` as an ordered ``{full name: Parameter}``.

    ``net`` is a ``gluon.Block`` (its ``collect_params()``), a ``gluon.ParameterDict``
    or a ``dict`` of name -> ``Parameter``.
    """
    from mxnet import gluon
    if isinstance(net, gluon.Block):
        items = net.collect_params().items()
    elif isinstance(net, gluon.ParameterDict):
        items = net.items()
    elif isinstance(net, dict):
        items = net.items()
        for name, param in items:
            if not _is_parameter(param):
                raise SurgeryTypeError(
                    "net['%s'] is a %s, not a gluon Parameter. Pass a Block, a ParameterDict "
                    "or a dict of name -> Parameter." % (name, type(param).__name__))
    else:
        raise SurgeryTypeError(
            "net must be a gluon.Block, a gluon.ParameterDict or a dict of name -> Parameter, "
            "got %s." % type(net).__name__)
    return OrderedDict(items)


def _describe(key):
    if _is_parameter(key):
        return "Parameter '%s'" % key.name
    if callable(key) and not isinstance(key, str):
        return 'callable %s' % getattr(key, '__name__', repr(key))
    return repr(key)


def _miss(key, params, why=None, noun='parameter', where='the net'):
    probe = key if isinstance(key, str) else getattr(key, 'name', '')
    close = difflib.get_close_matches(probe, list(params), n=MAX_SUGGESTIONS, cutoff=0.4) \
        if probe else []
    if not close:
        close = list(params)[:MAX_SUGGESTIONS]
        hint = 'first names'
    else:
        hint = 'closest names'
    listed = ', '.join("'%s'" % n for n in close) or '(none)'
    fix = ("Use a full parameter name, a regular expression matched from the start of the "
           "name (e.g. '.*weight'), a Parameter, a list of these, or a callable "
           "f(name, param) -> bool." if noun == 'parameter' else
           "Use a full name or a regular expression matched from the start of the name.")
    return SelectionError("Key %s %s among the %d %ss of %s; %s: %s. %s"
                          % (_describe(key), why or 'matches no ' + noun, len(params), noun,
                             where, hint, listed, fix))


def _match_one(key, params, noun, where):
    """Names selected by one non-list key, in ``params`` order."""
    if _is_parameter(key):
        for name, param in params.items():
            if param is key:
                return [name]
        raise _miss(key, params, why='is not a parameter of this net')
    if isinstance(key, str):
        if key in params:
            return [key]
        try:
            pattern = re.compile(key)
        except re.error as err:
            raise SelectionError(
                "Key %r names no %s and is not a valid regular expression (%s). "
                "Escape special characters with re.escape() to select a name literally."
                % (key, noun, err)) from None
        names = [name for name in unmasked(params) if pattern.match(name)]
    elif callable(key):
        names = [name for name, param in unmasked(params).items() if key(name, param)]
    else:
        raise SurgeryTypeError(
            "key must be a parameter name or regular expression (str), a Parameter, a "
            "list/tuple of these, or a callable f(name, param) -> bool; got %s."
            % type(key).__name__)
    if not names:
        raise _miss(key, params, noun=noun, where=where)
    return names


def match(items, key, *, noun: str = 'parameter', where: str = 'the net') -> List[str]:
    """The names of ``items`` (any mapping by name, e.g. the arrays of a saved file) that
    ``key`` selects, in ``items`` order, by the rules of :func:`select`; ``noun`` and
    ``where`` word the error message."""
    keys = list(key) if isinstance(key, (list, tuple)) else [key]
    if not keys:
        raise SelectionError('Key %r is an empty list: it selects no %s.' % (key, noun))
    chosen = set()
    for one in keys:
        if isinstance(one, (list, tuple)):
            raise SurgeryTypeError('key lists cannot be nested: flatten %r.' % (key,))
        chosen.update(_match_one(one, items, noun, where))
    return [name for name in items if name in chosen]


def select(net, key: Union[str, 'Parameter', list, tuple, Callable[[str, Any], bool]]
           ) -> Dict[str, 'Parameter']:
    """Select parameters of ``net`` by ``key``.

    Parameters
    ----------
    net : Block or ParameterDict or dict of str -> Parameter
        Where to look; a Block contributes its ``collect_params()``.
    key : str or Parameter or list or tuple or callable
        A full parameter name selects exactly that parameter; any other string is a
        regular expression matched from the start of each full name, as Gluon's
        ``collect_params(select)`` does; a ``Parameter`` selects itself; a list or tuple
        selects the union of its entries (each of which must select something); a
        callable ``f(name, param) -> bool`` selects where it returns True. Regular
        expressions and callables never select the masks paramsurgery registers
        (``<name>_mask``): a mask is selected by its exact name or Parameter only.

    Returns
    -------
    dict of str -> Parameter
        The selected parameters, in ``collect_params()`` order.

    Raises
    ------
    SelectionError
        (a ``KeyError``) when a key selects nothing; the message lists close names.
    SurgeryTypeError
        (a ``TypeError``) when ``net`` or ``key`` has an unsupported type.

    Examples
    --------
    >>> import paramsurgery as ps
    >>> from mxnet.gluon import nn
    >>> net = nn.HybridSequential(prefix='net_')
    >>> with net.name_scope():
    ...     net.add(nn.Dense(4, in_units=3), nn.Dense(2, in_units=4))
    >>> list(ps.select(net, '.*weight'))
    ['net_dense0_weight', 'net_dense1_weight']
    >>> list(ps.select(net, ['net_dense1_bias', '.*dense0']))
    ['net_dense0_weight', 'net_dense0_bias', 'net_dense1_bias']
    >>> list(ps.select(net, lambda name, p: p.shape[0] == 2))
    ['net_dense1_weight', 'net_dense1_bias']
    >>> ps.select(net, 'net_dense0_wieght')
    Traceback (most recent call last):
    ...
    paramsurgery.errors.SelectionError: Key 'net_dense0_wieght' matches no parameter ...
    """
    params = all_params(net)
    return OrderedDict((name, params[name]) for name in match(params, key))
