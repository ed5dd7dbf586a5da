"""Value surgery: scale or set parameters on every context, Trainer-safe, all or nothing.

Everything is validated before the first write, so the writes cannot fail for the caller's
input, and Ctrl-C is held back until they end. A Trainer's own copies (a kvstore that runs
the optimizer, fp16 master copies) are pushed inside a
:class:`paramsurgery._snapshot.Transaction`, which puts back every replica and Trainer copy
if the push fails. Without such copies there is no undo copy: its cost (one device copy of
everything written) is what the raw loop does not pay; a device or runtime failure in the
middle of the writes (out of memory for a value's copy to a context) leaves the parameters
written before it written (see ``docs/value-surgery.md``).
"""
import contextlib
from typing import Any, List, Optional

from . import _mx, distributed
from ._checks import check_flag
from ._snapshot import Transaction, held_interrupts
from ._values import assign, check_products, multiply, plan, trainers_of

__all__ = ['assign_params', 'set_params']


def _run(net, key, value, what, write, trainer, allow_nonfinite):
    allow_nonfinite = check_flag('allow_nonfinite', allow_nonfinite)
    steps = plan(net, key, value, what, allow_nonfinite)
    if write is multiply and not allow_nonfinite:
        # Finite factors can still overflow (fp16) or wrap around (integers).
        check_products(steps, what)
    params = [param for _, param, _ in steps]
    trainers = trainers_of(params, trainer)
    for t in trainers:
        distributed.refuse_server_updates(t, params)
    for t in trainers:
        # the values written now are what rank 0 broadcasts at the first step: say so if
        # that broadcast can race (dist_sync with update_on_kvstore=False)
        distributed.warn_if_exposed(t, stacklevel=3)
    for _, param, prepared in steps:
        prepared.prefetch(_mx.context_list(param))
    # Everything is validated: the writes below cannot fail for the caller's input, only be
    # interrupted (held back). Pushing a Trainer's own copies can fail:
    # then the writes are undone too, at the cost of one device copy of what is written,
    # recorded over the written parameters only (nothing else changes).
    syncing = [t for t in trainers if _mx.keeps_copies(t, params)]
    undo = (Transaction({name: param for name, param, _ in steps}, syncing, values=params)
            if syncing else contextlib.nullcontext())
    _mx.settle()  # the writes go through host views (see paramsurgery._mx.host)
    with held_interrupts(), undo:
        _write(steps, write)
        for t in syncing:
            _mx.sync_trainer(t, params)
    return [name for name, _, _ in steps]


def _write(steps, write):
    for _, param, prepared in steps:
        _mx.write_replicas(param, lambda arr, v=prepared: write(arr, v))
        mask = _mx.update_mask(param)
        if mask is not None:
            # an update-mode mask keeps the stored weight at zero under it
            _mx.write_replicas(param, lambda arr, m=mask: _mx.multiply_inplace(
                arr, _mx.mask_on(m, arr.context)))
    for _, param, prepared in steps:
        if prepared.shared:
            # the writes read the caller's numpy array in place: they must be done before
            # the caller may change it
            for arr in _mx.raw_data(param):
                arr.wait_to_read()


def assign_params(net, key, multiplier: Any = None, *, trainer: Optional[Any] = None,
                  allow_nonfinite: bool = False) -> List[str]:
    """Multiply the selected parameters by ``multiplier`` on every context.

    Each selected parameter becomes ``old * multiplier`` on each of its replicas. The
    parameters keep their identity and their replicas stay the leaf autograd variables
    bound to their gradient buffers, so a Trainer built earlier keeps working, and the
    call is safe inside ``autograd.record()`` (make it before the forward that should see
    the new values). The Trainer's own copies (the kvstore's weight under
    ``update_on_kvstore=True``, the fp32 master copy under ``multi_precision``) are
    updated too, keeping the optimizer state, so the next ``step()`` does not undo it.

    Parameters
    ----------
    net : Block or ParameterDict or dict of str -> Parameter
        Where the parameters are.
    key : str or Parameter or list or callable or dict
        Which parameters (see :func:`select`); or a dict ``{key: multiplier}``.
    multiplier : number or numpy.ndarray or NDArray
        Broadcast against each parameter's shape with numpy rules; the result keeps the
        parameter's shape and dtype. An NDArray may live on any context.
    trainer : Trainer or list of Trainer, default None
        Trainers to keep in step besides the last one built on each parameter.
    allow_nonfinite : bool, default False
        Accept NaN and inf in ``multiplier``, and products that overflow the parameter's
        dtype (finite fp16 numbers can multiply to inf). Exactly ``True`` or ``False``.

    Returns
    -------
    list of str
        The names of the parameters changed.

    Raises
    ------
    SelectionError, SurgeryValueError, SurgeryTypeError, ParameterStateError, TrainerStateError
        Before anything is written: on error no replica has changed. A product that is not
        representable (fp16 overflow to inf, an integer that would wrap around) is a
        ``SurgeryValueError`` too. Should a write fail after that (a device error, an
        interrupt), every replica and Trainer copy is put back bit for bit before the error
        is raised.

    Examples
    --------
    >>> import mxnet as mx, numpy as np, paramsurgery as ps
    >>> from mxnet.gluon import nn
    >>> net = nn.Dense(2, in_units=3, prefix='fc_')
    >>> net.initialize(mx.init.One(), ctx=[mx.cpu(0), mx.cpu(1)])
    >>> ps.assign_params(net, '.*weight', np.array([[0.5], [2.0]]))
    ['fc_weight']
    >>> [w.asnumpy().tolist() for w in net.weight.list_data()]
    [[[0.5, 0.5, 0.5], [2.0, 2.0, 2.0]], [[0.5, 0.5, 0.5], [2.0, 2.0, 2.0]]]
    >>> ps.assign_params(net, {'fc_bias': 0.0})
    ['fc_bias']
    """
    return _run(net, key, multiplier, 'multiplier', multiply, trainer, allow_nonfinite)


def set_params(net, key, value: Any = None, *, trainer: Optional[Any] = None,
               allow_nonfinite: bool = False) -> List[str]:
    """Set the selected parameters to ``value`` (broadcast) on every context.

    Same guarantees as :func:`assign_params`: every replica on its own context, identity
    and autograd leaves kept, safe inside ``autograd.record()``, Trainer-safe (optimizer
    state kept), all or nothing. Unlike ``Parameter.set_data`` it does not throw away the
    Trainer's optimizer state and works with a kvstore that updates on the kvstore.

    Parameters
    ----------
    net : Block or ParameterDict or dict of str -> Parameter
        Where the parameters are.
    key : str or Parameter or list or callable or dict
        Which parameters (see :func:`select`); or a dict ``{key: value}``.
    value : number or numpy.ndarray or NDArray
        Broadcast to each parameter's shape with numpy rules and cast to its dtype.
    trainer : Trainer or list of Trainer, default None
        Trainers to keep in step besides the last one built on each parameter.
    allow_nonfinite : bool, default False
        Accept NaN and inf in ``value``. Exactly ``True`` or ``False``.

    Returns
    -------
    list of str
        The names of the parameters changed.

    Examples
    --------
    >>> import mxnet as mx, paramsurgery as ps
    >>> from mxnet.gluon import nn
    >>> net = nn.Dense(2, in_units=3, prefix='fc_')
    >>> net.initialize(ctx=[mx.cpu(0), mx.cpu(1)])
    >>> ps.set_params(net, 'fc_bias', mx.nd.array([1, 2], ctx=mx.cpu(1)))
    ['fc_bias']
    >>> [b.asnumpy().tolist() for b in net.bias.list_data()]
    [[1.0, 2.0], [1.0, 2.0]]
    >>> ps.set_params(net, 'fc_weight', float('nan'))
    Traceback (most recent call last):
    ...
    paramsurgery.errors.SurgeryValueError: Parameter 'fc_weight': the value has 1 non-finite entry ...
    """
    return _run(net, key, value, 'value', assign, trainer, allow_nonfinite)
