"""Safe output files: an exclusive lock per output path, temp files that name their owner,
publication that never replaces a file by surprise, and a disk-full guard for HDF5.

A build writes ``.<name>.tmp-<host>-<pid>`` beside the output and renames it into place at
the end, holding ``.<name>.lock`` (``flock``) the whole time:

- a second build to the same path fails at once, naming the holder's PID;
- without ``--overwrite`` the final rename is a no-replace link: a file that appeared at the
  output path during the build is never replaced;
- a temp file whose process is dead (a ``kill -9``) is removed by the next build to that
  path or by ``serprep clean-tmp``; the host name in its name keeps a build on another
  machine sharing the folder (NFS) from being taken for dead.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
from pathlib import Path
from typing import Any

from .errors import SerprepError

_TMP_TAG = ".tmp-"


def _host() -> str:
    # '-' separates the host from the PID in temp names: keep it out of the host part.
    return socket.gethostname().replace("-", "_") or "localhost"


def temp_path(out: Path) -> Path:
    """The temp file this process writes ``out`` to."""
    return out.with_name(f".{out.name}{_TMP_TAG}{_host()}-{os.getpid()}")


def _temp_owner(path: Path, out_name: str | None = None) -> tuple[str, int] | None:
    """(host, pid) of a serprep temp file name, or None if ``path`` is not one (for ``out_name``)."""
    name = path.name
    if not name.startswith(".") or _TMP_TAG not in name:
        return None
    target, _, owner = name[1:].rpartition(_TMP_TAG)
    if out_name is not None and target != out_name:
        return None
    host, _, pid = owner.rpartition("-")
    if not host or not pid.isdigit():
        return None
    return host, int(pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def stale_temps(folder: Path, out_name: str | None = None) -> list[Path]:
    """Temp files in ``folder`` (of ``out_name`` only, if given) left by dead processes of this host."""
    host = _host()
    stale = []
    try:
        entries = sorted(Path(folder).iterdir())
    except OSError:
        return []
    for path in entries:
        owner = _temp_owner(path, out_name)
        if owner is not None and owner[0] == host and owner[1] != os.getpid() and not _alive(owner[1]):
            stale.append(path)
    return stale


def remove_stale_temps(folder: Path, out_name: str | None = None) -> list[Path]:
    """Delete :func:`stale_temps`; returns what was removed."""
    removed = []
    for path in stale_temps(folder, out_name):
        try:
            path.unlink()
            removed.append(path)
        except FileNotFoundError:
            pass
    return removed


def remove_stale_locks(folder: Path) -> list[Path]:
    """Delete build lock files (``.NAME.lock``) in ``folder`` that no process holds (left by a
    killed build; harmless, but litter). A held lock is left alone."""
    removed = []
    try:
        entries = sorted(Path(folder).glob(".*.lock"))
    except OSError:
        return []
    for path in entries:
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        try:  # unlinked while held, as OutputLock.release does: a build that opened it retries
            path.unlink()
            removed.append(path)
        except FileNotFoundError:
            pass
        finally:
            os.close(fd)
    return removed


def lock_held(out: Path) -> bool:
    """Whether a build holds ``out``'s lock (:class:`OutputLock`) now."""
    try:
        fd = os.open(Path(out).with_name(f".{Path(out).name}.lock"), os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # releases the lock if this took it
    return False


class OutputLock:
    """Exclusive ``flock`` on ``.<name>.lock`` beside ``out`` for the life of a build.

    The lock file holds the owner's PID, so a refused build can say who holds it. It is
    unlinked on release; a process that locked a file just unlinked by its previous owner
    notices (the path no longer names the file it locked) and locks the new one.
    """

    def __init__(self, out: Path) -> None:
        self.out = Path(out)
        self.path = self.out.with_name(f".{self.out.name}.lock")
        self._fd: int | None = None

    def acquire(self) -> "OutputLock":
        for _ in range(100):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
                os.close(fd)
                raise SerprepError(
                    f"{self.out}: another serprep build (PID {holder}) is writing this file; "
                    "wait for it or choose another --out"
                ) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
                self._fd = fd
                return self
            os.close(fd)  # locked a file its owner had just unlinked: take the new one
        raise SerprepError(f"{self.out}: could not lock {self.path.name}")

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def publish(tmp: Path, out: Path, overwrite: bool) -> None:
    """Move the finished ``tmp`` to ``out``.

    With ``overwrite`` an atomic ``rename`` replaces whatever is there. Without it, a hard
    link (which fails if ``out`` exists, atomically) then removing ``tmp``: a file that
    appeared at ``out`` during the build is never replaced. Filesystems without hard links
    fall back to a check and a rename (still under the build's lock).
    """
    if overwrite:
        os.replace(tmp, out)
        return
    try:
        os.link(tmp, out)
    except FileExistsError:
        raise SerprepError(
            f"{out}: a file appeared there during the build; not replaced (use --overwrite); nothing written"
        ) from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        if out.exists():
            raise SerprepError(f"{out}: a file appeared there during the build; not replaced (use --overwrite)") from None
        os.replace(tmp, out)
        return
    tmp.unlink()


def is_disk_full(exc: BaseException) -> bool:
    """An exception that means the disk (or quota) is full, however HDF5 or Python worded it."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(exc)
    return "No space left on device" in text or "errno = 28" in text or "Disk quota exceeded" in text


class GuardedFile:
    """A raw file for ``h5py.File(fileobj)`` that survives a full disk.

    HDF5 cannot recover from a failed write: its file is left half-flushed, every later
    close fails, and the library's exit handler then crashes the interpreter (a segfault
    after "No space left on device" was seen). So the first failed write is recorded in
    :attr:`error` and reported as success, and later writes are dropped: HDF5 finishes and
    closes normally, and the writer, which checks :attr:`error` after each step, deletes the
    temp file and reports one line.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._f = open(self.path, "w+b", buffering=0)
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        if self.error is None:
            try:
                done = 0
                while done < len(view):
                    done += self._f.write(view[done:])
                return done
            except OSError as exc:
                self.error = exc
        self._f.seek(len(view), os.SEEK_CUR)
        return len(view)

    def readinto(self, buffer: Any) -> int:
        return self._f.readinto(buffer)

    def read(self, size: int = -1) -> bytes:
        return self._f.read(size)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()

    def truncate(self, size: int | None = None) -> int:
        try:
            return self._f.truncate(size)
        except OSError as exc:
            self.error = self.error or exc
            return self._f.tell() if size is None else size

    def flush(self) -> None:
        pass  # unbuffered: nothing to flush

    def close(self) -> None:
        self._f.close()

    @property
    def closed(self) -> bool:
        return self._f.closed
