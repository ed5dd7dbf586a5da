"""Whole-object state for transactions.

A transaction (paramsurgery._snapshot.Transaction) puts back what Gluon objects hold in
their ``__dict__``: a Block's registered parameters, children, mask registry and cached
graph; a Parameter's arrays, shape, symbol variable and last Trainer; a Trainer's kvstore,
Updaters and parameters still to broadcast; an Optimizer's counters and multipliers. Gluon
mutates several of those containers in place (``_reg_params``, ``_params_to_init``, a
ParameterDict's ``_params``), so their contents are copied too, one level deep.
"""


__all__ = []


def object_state(obj):
    """The attributes of ``obj``, and the contents of those that are dicts or lists."""
    attrs = dict(obj.__dict__)
    contents = {k: (v.copy() if isinstance(v, dict) else list(v))
                for k, v in attrs.items() if isinstance(v, (dict, list))}
    return attrs, contents


def restore_object_state(obj, state):
    """Put back what :func:`object_state` returned: the same attribute objects, with the
    contents they had."""
    attrs, contents = state
    obj.__dict__.clear()
    obj.__dict__.update(attrs)
    for k, saved in contents.items():
        live = attrs[k]
        if isinstance(live, dict):
            live.clear()
            live.update(saved)
        else:
            live[:] = saved
