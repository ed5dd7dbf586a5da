"""Argument checks shared by every layer (pure Python and numpy: no MXNet needed)."""
import math
import numbers

import numpy as np

from .errors import SurgeryTypeError, SurgeryValueError

__all__ = []


def is_int(value) -> bool:
    """True for a whole number that is not a ``bool`` (``True`` would silently mean 1)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def is_real(value) -> bool:
    """True for a real number that is not a ``bool``."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def check_flag(name: str, value, error=SurgeryTypeError) -> bool:
    """``value`` as a ``bool``; anything but ``True``/``False`` (``'no'``, 1, None) raises
    ``error``, since a truthy string would silently mean the opposite of what it says."""
    if not isinstance(value, (bool, np.bool_)):
        raise error('%s must be True or False, got %s %r.'
                    % (name, type(value).__name__, value))
    return bool(value)


def check_batch_size(value, name: str = 'batch_size') -> float:
    """``value`` as a positive finite number: the gradients are scaled by ``1 / value``.

    NaN would turn every weight NaN, a negative size would ascend the gradient, 0 divides
    by zero, and a ``bool`` or ``str`` is a mistake: each raises, naming ``name``.
    """
    if not is_real(value):
        raise SurgeryTypeError(
            '%s must be a positive number (the number of samples the gradients were summed '
            'over), got %s %r.' % (name, type(value).__name__, value))
    number = float(value)
    if not math.isfinite(number) or number <= 0:
        raise SurgeryValueError(
            '%s must be a positive finite number (the number of samples the gradients were '
            'summed over; they are scaled by 1/%s), got %r. Pass the batch size, e.g. '
            'data.shape[0].' % (name, name, value))
    return value
