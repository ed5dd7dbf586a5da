"""Argument checks shared by every layer (pure Python and numpy: no MXNet needed)."""
import numbers

import numpy as np

from .errors import SurgeryTypeError

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
