"""The mask modes and combines, checked: ``MODES``, ``COMBINE``, which mode a mask is in,
and the parameters that are not masks."""
from collections import OrderedDict

import numpy as np
from mxnet.gluon.parameter import Parameter

from .. import _mx
from ..errors import SurgeryTypeError, SurgeryValueError
from ..select import all_params, unmasked

__all__ = []

COMBINE = ('multiply', 'replace')
#: Where a mask acts: in every forward graph, or in the stored weights and their updates.
MODES = ('graph', 'update')
#: An update-mode mask is only read to zero gradients (MXNet's numpy-frontend operators
#: multiply a float weight or gradient by it directly): one byte per entry.
UPDATE_MASK_DTYPE = np.uint8


def unmasked_params(net) -> 'OrderedDict[str, Parameter]':
    """Every parameter of ``net`` except the masks themselves, in ``collect_params()`` order."""
    return unmasked(all_params(net))


def check_mode(mode, what='mode', allow_none=False):
    """Raise unless ``mode`` is exactly ``'graph'`` or ``'update'`` (or None when allowed)."""
    if mode is None and allow_none:
        return
    if not isinstance(mode, str):
        raise SurgeryTypeError(
            "%s must be the string 'graph' or 'update'%s, got %s %r."
            % (what, ' (or None)' if allow_none else '', type(mode).__name__, mode))
    if mode not in MODES:
        raise SurgeryValueError(
            "%s must be exactly 'graph' (the mask is part of every forward graph) or "
            "'update' (the Trainer keeps the masked entries of the stored weight at zero), "
            "got %r." % (what, mode))


def mode_of(param, mask):
    return 'update' if _mx.update_mask(param) is mask else 'graph'

