"""Create and write the plugin's files safely: never through a symlink, with a fixed mode, whole.

Every file the plugin writes goes through here. `open_file` opens (creating) a file without
following a symlink in its last component (`O_NOFOLLOW`), refuses anything but a regular file,
and gives a file it creates exactly `mode` whatever the umask (an existing file keeps its mode,
so a shared group set up by hand stays). `write_atomically` writes a unique temp file beside the
target (`tempfile.mkstemp`: `O_EXCL`, never a fixed name someone could plant a link at), checks
every byte was written, then renames it over the target: readers (other xdist workers, CI steps)
see the old file or the new one, never half, and a full disk leaves the old one.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path

__all__ = [
    "PRIVATE",
    "PUBLIC",
    "UnsafeFileError",
    "open_file",
    "read_file",
    "write_all",
    "write_atomically",
]

#: State, lock, ledger, spools: they steer other runs, so only their owner may write them.
PRIVATE = 0o600
#: Reports, metrics: read by CI steps and exporters; never writable by others.
PUBLIC = 0o644
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


class UnsafeFileError(OSError):
    """A path the plugin writes is a symlink or not a regular file: refused, nothing written."""


def open_file(path: str | os.PathLike[str], flags: int, mode: int = PRIVATE) -> int:
    """A descriptor of `path` opened with `flags` (O_CREAT implied), following no final symlink.

    A file created here gets `mode` exactly; raises UnsafeFileError for a symlink or a non-file.
    """
    name = os.fspath(path)
    flags |= _NOFOLLOW | _CLOEXEC
    fd, created = _open(name, flags, mode)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnsafeFileError(errno.EINVAL, "not a regular file; refusing to write it", name)
        if created and stat.S_IMODE(info.st_mode) != mode:
            _chmod(fd, mode)  # the umask narrowed or widened it
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open(name: str, flags: int, mode: int) -> tuple[int, bool]:
    """Create `name` exclusively, else open the file there; (descriptor, whether created)."""
    while True:
        try:
            return os.open(name, flags | os.O_CREAT | os.O_EXCL, mode), True
        except FileExistsError:
            pass
        try:
            return os.open(name, flags & ~os.O_CREAT), False
        except FileNotFoundError:  # removed in between by another process: create it again
            continue
        except OSError as exc:
            if exc.errno == errno.ELOOP or os.path.islink(name):
                raise UnsafeFileError(
                    errno.ELOOP, "is a symlink; refusing to write through it", name
                ) from None
            raise


def _chmod(fd: int, mode: int) -> None:
    if hasattr(os, "fchmod"):  # not on Windows before Python 3.13
        os.fchmod(fd, mode)


def read_file(path: str | os.PathLike[str]) -> bytes:
    """The bytes of a file the plugin owns, refusing a symlink (FileNotFoundError if none)."""
    name = os.fspath(path)
    try:
        fd = os.open(name, os.O_RDONLY | _NOFOLLOW | _CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafeFileError(errno.ELOOP, "is a symlink; refusing to use it", name) from None
        raise
    with os.fdopen(fd, "rb") as handle:
        return handle.read()


def write_all(fd: int, data: bytes, offset: int | None = None) -> None:
    """Write every byte of `data` (at `offset` with pwrite), or raise OSError (ENOSPC if short)."""
    view = memoryview(data)
    while view:
        if offset is None:
            done = os.write(fd, view)
        else:
            done = os.pwrite(fd, view, offset)
            offset += done
        if done <= 0:
            raise OSError(errno.ENOSPC, "short write: no space left on device")
        view = view[done:]


def write_atomically(path: str | os.PathLike[str], data: bytes, mode: int = PUBLIC) -> None:
    """Write `data` to a unique temp file beside `path` (mode `mode`), then rename it over `path`.

    A symlink at `path` is replaced, never written through; on any failure the old file stays.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a directory", str(target))
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        try:
            _chmod(fd, mode)
            write_all(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
