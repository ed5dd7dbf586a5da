"""Files: path arguments checked before any work, every write atomic, every read of a file
format turned into :class:`~paramsurgery.errors.FileFormatError`.

Every file the package writes goes through :func:`atomic_write`: the data goes to a temporary
file in the target's folder, is flushed and ``fsync``-ed, then ``os.replace`` puts it in
place in one step. A kill, a full disk or an exception at any point leaves either the old
file or the complete new one. A temporary file left by a killed process is named after its
target (``.<target name>.<pid>.<random>.paramsurgery-tmp``) and removed by the next
successful write of the same target, once its process no longer runs.

Pure Python (no MXNet): every layer may use it.
"""
import contextlib
import os
import re
import tempfile
import zipfile
import zlib

from .errors import FileFormatError, SurgeryTypeError, SurgeryValueError

__all__ = []

_TMP_SUFFIX = '.paramsurgery-tmp'


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Read once: os.umask can only be read by setting it, which is not thread-safe later on.
_DEFAULT_MODE = 0o666 & ~_umask()


def check_path(name: str, path, *, write: bool = False, error=SurgeryValueError) -> str:
    """``path`` as a ``str``, checked before any work is done.

    Only ``str`` and ``os.PathLike`` are paths: an ``int`` would be taken by ``open`` as a
    file descriptor (writing into, and closing, some other open file), ``bytes`` and anything
    else are refused too. A path to read must be an existing file; a path to write must not
    be a folder and its folder must exist.

    Parameters
    ----------
    name : str
        The argument's name, for the message (``'path'``, ``'--output'``).
    path : str or os.PathLike
    write : bool, default False
        True for a file about to be written, False for one about to be read.
    error : type, default SurgeryValueError
        The exception raised for a bad value (the type error is always
        :class:`SurgeryTypeError`).
    """
    if isinstance(path, os.PathLike):
        path = os.fspath(path)
    if not isinstance(path, str):
        raise SurgeryTypeError(
            '%s must be a file path (str or os.PathLike), got %s %r%s.'
            % (name, type(path).__name__, path,
               ': an int would be taken as an open file descriptor' if isinstance(path, int)
               and not isinstance(path, bool) else ''))
    if not path or '\0' in path:
        raise error('%s must be a file path, got %r.' % (name, path))
    if os.path.isdir(path):
        raise error("%s '%s' is a folder; pass the path of a file%s."
                    % (name, path, ' inside it' if write else ''))
    if write:
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise error("%s '%s': the folder '%s' does not exist. Create it first "
                        "(os.makedirs) or write elsewhere." % (name, path, folder))
        if not os.access(folder, os.W_OK):
            raise error("%s '%s': the folder '%s' is not writable." % (name, path, folder))
    elif not os.path.isfile(path):
        raise error("%s '%s': no such file." % (name, path))
    return path


def _temp_pattern(target):
    return re.compile(r'^\.%s\.(\d+)\.[^.]+%s$' % (re.escape(os.path.basename(target)),
                                                   re.escape(_TMP_SUFFIX)))


def _running(pid):
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: alive
    return True


def remove_stale_temps(target: str) -> list:
    """Remove the temporary files of ``target`` left by processes that no longer run (a
    killed write); returns their paths. Those of running processes (a concurrent write of
    the same target) are kept."""
    folder = os.path.dirname(os.path.abspath(target))
    pattern = _temp_pattern(target)
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for entry in names:
        found = pattern.match(entry)
        if found and not _running(int(found.group(1))):
            path = os.path.join(folder, entry)
            with contextlib.suppress(OSError):
                os.remove(path)
                removed.append(path)
    return removed


def _fsync_folder(folder):
    # The rename itself is durable only once the folder is synced (POSIX); not every
    # platform lets a folder be opened, and the data is safe either way.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path: str):
    """Write ``path`` atomically: yields a temporary path in the same folder to write to.

    When the ``with`` block ends without error, the temporary file is flushed to disk and
    renamed over ``path`` (the old file, if any, stays until then, and keeps its permission
    bits); on any error, or a ``KeyboardInterrupt``, it is removed and ``path`` is untouched.
    Stale temporary files of ``path`` from killed processes are removed afterwards.

    Examples
    --------
    >>> import os, tempfile
    >>> from paramsurgery._files import atomic_write
    >>> path = os.path.join(tempfile.mkdtemp(), 'out.txt')
    >>> with atomic_write(path) as tmp:
    ...     with open(tmp, 'w') as f:
    ...         _ = f.write('hello')
    >>> open(path).read(), os.listdir(os.path.dirname(path))
    ('hello', ['out.txt'])
    """
    target = os.path.abspath(path)
    folder = os.path.dirname(target)
    fd, tmp = tempfile.mkstemp(prefix='.%s.%d.' % (os.path.basename(target), os.getpid()),
                               suffix=_TMP_SUFFIX, dir=folder)
    os.close(fd)
    try:
        yield tmp
        try:
            mode = os.stat(target).st_mode & 0o7777
        except OSError:
            mode = _DEFAULT_MODE  # mkstemp's 0600 would make a new file private
        os.chmod(tmp, mode)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    _fsync_folder(folder)
    remove_stale_temps(target)


def write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    with atomic_write(path) as tmp:
        with open(tmp, 'wb') as f:
            f.write(data)
            f.flush()


def _reason(err):
    """The useful part of an exception's text: MXNet puts the reason on the last line of a
    C++ trace, Python on the only line."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith(('Stack trace', '[bt]', 'File "'))]
    text = lines[-1] if lines else ''
    kind = type(err).__name__
    if text.startswith(kind + ':'):   # MXNet's last line names the type already
        text = text[len(kind) + 1:].strip()
    return '%s: %s' % (kind, text[:200]) if text else kind


# What a damaged or wrong-format file raises while being parsed (numpy, zipfile, json,
# MXNet's C++ loader and its Python asserts).
_FORMAT_ERRORS = (OSError, EOFError, ValueError, KeyError, IndexError, TypeError,
                  AssertionError, UnicodeDecodeError, RuntimeError, AttributeError,
                  zipfile.BadZipFile, zlib.error)


@contextlib.contextmanager
def reading(paths, what: str, fix: str):
    """Turn any error raised while parsing the file(s) ``paths`` into a
    :class:`FileFormatError` naming the file(s), what they should be, the parser's reason in
    one line and ``fix``. The package's own errors pass through unchanged."""
    from .errors import ParamSurgeryError
    paths = [paths] if isinstance(paths, str) else list(paths)
    try:
        yield
    except ParamSurgeryError:
        raise
    except _FORMAT_ERRORS as err:
        empty = []
        for path in paths:
            with contextlib.suppress(OSError):
                if os.path.getsize(path) == 0:
                    empty.append(path)
        note = ' (%s empty: 0 bytes)' % ' and '.join("'%s' is" % p for p in empty) \
            if empty else ''
        raise FileFormatError("%s %s not a readable %s%s: %s. %s"
                              % (' + '.join("'%s'" % p for p in paths),
                                 'is' if len(paths) == 1 else 'are', what, note,
                                 _reason(err), fix)) from None
