"""Atomic files: written beside their target and renamed over it, so a reader sees the old file or the new one.

:class:`AtomicFile` creates ``.<name>.mcdrop-<pid>-<random><suffix>`` in the target's folder (the same file
system, so :func:`os.replace` is atomic), lets the caller write it, then on :meth:`~AtomicFile.commit` flushes
and fsyncs it, gives it the mode a new file gets under the process umask (``0o666 & ~umask``; ``mkstemp`` alone
leaves ``0o600``) and renames it over the target.  :meth:`~AtomicFile.abort`, or an exception inside ``with``,
removes it and leaves the target as it was.  The ``<pid>`` in the name lets a later run remove what a killed one
left (:func:`mcdrop.io.writers.clean_stale`).  Standard library only: every layer may use it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from types import TracebackType
from typing import IO, Any

__all__ = ["TMP_MARK", "AtomicFile", "atomic_write", "new_mode", "temp_prefix", "umask"]

TMP_MARK = ".mcdrop-"
"""Marks mcdrop's temporary files: ``.<name>.mcdrop-<pid>-...``."""


def umask() -> int:
    """The process umask (POSIX can only read it by setting it, so it is set and restored at once)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def new_mode(*, directory: bool = False) -> int:
    """The permissions ``open``/``mkdir`` give a new file (``0o666 & ~umask``) or folder (``0o777 & ~umask``)."""
    return (0o777 if directory else 0o666) & ~umask()


def temp_prefix(path: str | os.PathLike[str]) -> str:
    """``.<name>.mcdrop-<pid>-``: a reader sees what a temporary file is for, and whose it was."""
    return f".{Path(path).name}{TMP_MARK}{os.getpid()}-"


def _fsync(path: Path, *, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class AtomicFile:
    """A new version of ``path``, written in a temporary file beside it until :meth:`commit`.

    Args:
        path: the file to replace (or create); its folder has to exist.
        binary: open the temporary file in ``"wb"`` mode, else text (UTF-8, ``newline`` as :func:`open` takes it).
        suffix: the temporary file's suffix.

    ``fh`` is the open temporary file and ``tmp`` its path.  Creating it raises :class:`OSError` as the file system
    does (a missing or read-only folder); callers name the path in their own error.  As a context manager it
    yields ``fh``, commits when the block ends and aborts when it raises.
    """

    def __init__(self, path: str | os.PathLike[str], *, binary: bool = False, suffix: str = ".tmp",
                 encoding: str = "utf-8", newline: str | None = None) -> None:
        self.path = Path(path)
        fd, name = tempfile.mkstemp(prefix=temp_prefix(self.path), suffix=suffix, dir=self.path.parent or ".")
        self.tmp = Path(name)
        try:
            self.fh: IO[Any] = os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding=encoding, newline=newline)
        except BaseException:
            os.close(fd)
            self.tmp.unlink(missing_ok=True)
            raise
        self.done = False

    def commit(self) -> None:
        """Flush, fsync, set the umask's mode and rename over ``path``; on failure, :meth:`abort` and re-raise."""
        try:
            self.fh.close()  # a no-op if a library writing into ``fh`` (pyarrow) closed it already
            _fsync(self.tmp)
            os.chmod(self.tmp, new_mode())
            os.replace(self.tmp, self.path)
        except BaseException:
            self.abort()
            raise
        self.done = True
        with contextlib.suppress(OSError):  # the rename itself is durable once its folder is synced
            _fsync(self.path.parent if str(self.path.parent) else Path("."), directory=True)

    def abort(self) -> None:
        """Close and remove the temporary file; ``path`` is left as it was."""
        self.done = True
        with contextlib.suppress(OSError):
            self.fh.close()
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> IO[Any]:
        return self.fh

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        if self.done:
            return
        if kind is None:
            self.commit()
        else:
            self.abort()


def atomic_write(path: str | os.PathLike[str], data: str | bytes) -> None:
    """Replace ``path`` with ``data`` atomically (text as UTF-8), with the mode the umask gives a new file."""
    with AtomicFile(path, binary=isinstance(data, bytes)) as fh:
        fh.write(data)
