"""The exceptions raised by paramsurgery.

Every error is a :class:`ParamSurgeryError`. Each subclass also subclasses the built-in
exception a user would naturally catch (``KeyError`` for a key that selects nothing,
``ValueError`` for a bad value, ``TypeError`` for a wrong type, ``RuntimeError`` for a
parameter or trainer in a state that does not allow the operation), so existing
``except ValueError:`` code keeps working.
"""
import os

__all__ = ['ParamSurgeryError', 'SurgeryError', 'SelectionError', 'SurgeryValueError',
           'SurgeryTypeError', 'FileFormatError', 'ParameterStateError',
           'TrainerStateError', 'SamplerValueError', 'SamplerTypeError', 'MissingDependencyError',
           'StaleGradientError', 'DistributedWarning', 'ShrinkError']


def and_more(names, shown: int = 1) -> str:
    """``'a'``, ``'a' (and 2 more)`` or ``'a', 'b', 'c' (and 4 more)``: the first ``shown``
    names of a list, quoted, and how many were left out. Every message that names several
    parameters uses it, so they all read the same."""
    names = list(names)
    text = ', '.join("'%s'" % name for name in names[:shown])
    if len(names) > shown:
        text += ' (and %d more)' % (len(names) - shown)
    return text


class ParamSurgeryError(Exception):
    """Root of every error raised by paramsurgery."""


class SurgeryError(ParamSurgeryError):
    """An operation on parameters was refused; nothing was changed."""


class SelectionError(SurgeryError, KeyError):
    """A ``key`` selected no parameter (or a parameter that is not part of ``net``).

    The message quotes the key, lists up to five close parameter names and the total
    number of parameters.
    """

    def __str__(self):
        # KeyError.__str__ would print the repr of the message (quotes, escaped newlines).
        return str(self.args[0]) if self.args else ''


class SurgeryValueError(SurgeryError, ValueError):
    """A value has the wrong shape, is not finite, or is otherwise unusable."""


class SurgeryTypeError(SurgeryError, TypeError):
    """An argument has a type paramsurgery does not accept."""


class FileFormatError(SurgeryValueError):
    """A file could not be read: empty, truncated, damaged, or of another format.

    Raised by the functions that read files (:func:`paramsurgery.load_masks`,
    :func:`paramsurgery.load_exported`) instead of whatever the parser underneath raised
    (``BadZipFile``, ``JSONDecodeError``, ``KeyError``, MXNet's ``MXNetError`` with its C++
    trace, ``UnicodeDecodeError``, ``AssertionError``, ``EOFError``...). The message names
    the file, what it should be, the parser's reason in one line, and the fix. Nothing was
    changed. A ``ValueError`` (and a :class:`SurgeryValueError`), so existing handlers keep
    catching it.
    """


class ParameterStateError(SurgeryError, RuntimeError):
    """A parameter is not in a state that allows the operation.

    Examples: its initialisation is deferred until the first forward, it was never
    initialised, it does not live on the context asked for, or its internal arrays were
    damaged (see :func:`paramsurgery.check_params`).
    """


class TrainerStateError(SurgeryError, RuntimeError):
    """A Trainer's kvstore makes the operation impossible to do correctly."""


class SamplerValueError(ParamSurgeryError, ValueError):
    """A sampler size, length, fold count or seed has an unusable value.

    Examples: a negative size, a size larger than the indices available, ``k`` outside
    ``[2, length]``, or a number that is not a whole number (``2.5``). The message gives the
    numbers involved.
    """


class SamplerTypeError(ParamSurgeryError, TypeError, ValueError):
    """A sampler argument has the wrong type (a ``bool``, ``str`` or ``None`` as a size, an
    ``exclude`` that is not a :class:`paramsurgery.SubsetRandomSampler`).

    It is also a ``ValueError`` because every bad size raises a ``ValueError``
    (docs/samplers.md), while Python's own convention for a wrong type is ``TypeError``:
    catching either works.
    """


class MissingDependencyError(ParamSurgeryError, ImportError):
    """An optional dependency is not installed; the message names the extra to install
    (e.g. ``pip install 'paramsurgery[plot]'``)."""


class StaleGradientError(ParamSurgeryError, UserWarning):
    """A step was refused because some parameters have stale gradients.

    Raised by :func:`paramsurgery.safe_step` before anything is updated and before any
    freshness flag is consumed, and returned by :func:`paramsurgery.explain` for MXNet's
    own stale-gradient ``UserWarning``. It subclasses ``UserWarning`` so that code written
    for MXNet's ``trainer.step`` (``except UserWarning:``) keeps catching it.

    Attributes
    ----------
    records : list of StaleRecord
        One record per stale (parameter, context), with ``.name``, ``.context``,
        ``.reason`` and ``.message``.
    """

    def __init__(self, message='', records=()):
        super().__init__(message)
        self.records = list(records)


class DistributedWarning(UserWarning):
    """A distributed kvstore setting with which MXNet 1.9.1 can train silently wrong.

    Issued by :func:`paramsurgery.check_trainer` (and by the functions that call it) for a
    Trainer on a ``dist_sync`` kvstore with ``update_on_kvstore=False`` whose parameters
    have not been broadcast yet: its first ``step`` can start a worker from the summed
    gradient instead of the weights. The message names the parameters and the fix,
    :func:`paramsurgery.init_kvstore`. It is a warning, not an error, because the failure is
    a race: it hit 15 of 80 runs of a small net in our measurements and none of 30 after
    ``init_kvstore`` (``docs/distributed.md``).
    """


class ShrinkError(ParamSurgeryError, RuntimeError):
    """A structural shrink (or a shrink plan) could not be carried out; nothing was changed.

    Raised by :func:`paramsurgery.shrink` when the shrunk network fails to run or computes
    something else than the masked one (the message names the first layer that differs or
    fails, and why), after everything was restored bit for bit, and by
    :func:`paramsurgery.apply_plan` for a plan that does not fit the network (the message
    names the first parameter that does not fit).
    """


def install_hint(extra: str) -> str:
    """The command that installs the optional dependencies of ``extra`` and keeps numpy in range.

    ``pip install matplotlib`` alone can upgrade numpy to 2.x, with which MXNet 1.9.1 no
    longer imports; installing the extra goes through paramsurgery's own requirement
    ``numpy<1.24``. From a source checkout (a ``setup.py`` next to the package directory) the
    command is the editable install, to run in the checkout; otherwise the released package.

    Examples
    --------
    >>> install_hint('plot') in ("pip install -e '.[plot]'", "pip install 'paramsurgery[plot]'")
    True
    """
    checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if os.path.isfile(os.path.join(checkout, 'setup.py')):
        return "pip install -e '.[%s]'" % extra
    return "pip install 'paramsurgery[%s]'" % extra
