"""One process per run folder: an exclusive operating-system lock on the folder itself.

``FolderLock.acquire`` opens the folder and takes ``flock(LOCK_EX | LOCK_NB)`` on it.
Nothing is written for it, so a process that is refused, or that fails its checks
and gives up, leaves the folder exactly as it was. The operating system frees the
lock when its process ends, however it ends (kill -9 too), so nothing left behind
ever blocks a later run. The descriptor is not inherited by child processes (PEP
446; the worker processes are started with ``close_fds``), so no worker holds the
lock on after its parent is gone.

A folder removed and made again while a process waited (an empty run's folder is
removed when its run fails) is another folder: every acquire checks that the folder
it locked is still the one at the path (same inode) and otherwise tries again.

``owner`` names the process holding the lock, from ``/proc/locks`` (Linux; None
elsewhere). Where ``fcntl`` is missing (Windows), or the file system has no locks
(some network file systems), folders are not locked: ``acquire`` always succeeds.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

_BUSY = {errno.EWOULDBLOCK, errno.EAGAIN}
_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS}  # no flock here
_UNLOCKED = -1  # "held" where locks do not exist
PROC_LOCKS = Path("/proc/locks")


class FolderLock:
    """The lock of one folder, held by at most one process (see the module docstring)."""

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder)
        self._fd: int | None = None  # the locked folder's descriptor while held

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> bool:
        """Take the lock: True if this process holds it now, False if another one does.
        Raises OSError if the folder cannot be opened (FileNotFoundError: no such folder)."""
        if self._fd is not None:
            return True
        if fcntl is None:
            self._fd = _UNLOCKED
            return True
        for _ in range(100):
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))  # non-inheritable
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno in _BUSY:
                    return False
                if e.errno in _NO_LOCKS:
                    self._fd = _UNLOCKED
                    return True
                raise
            if _same_file(fd, self.path):
                self._fd = fd
                return True
            os.close(fd)  # removed (and perhaps made again) meanwhile: lock the folder now at the path
        raise FileNotFoundError(errno.ENOENT, "the folder keeps being removed and made again", str(self.path))

    def owner(self) -> int | None:
        """The pid of the process holding the lock (from /proc/locks), else None."""
        try:
            st = os.stat(self.path)
            table = PROC_LOCKS.read_text(encoding="ascii", errors="replace")
        except OSError:
            return None
        return lock_owner(table, st.st_ino, os.major(st.st_dev), os.minor(st.st_dev))

    def release(self) -> None:
        """Let go of the lock; a later ``acquire`` takes it anew."""
        fd, self._fd = self._fd, None
        if fd is not None and fd != _UNLOCKED:
            os.close(fd)

    def __del__(self) -> None:  # dropped without release, e.g. a Trainer that never ran
        try:
            self.release()
        except Exception:
            pass


def lock_owner(table: str, inode: int, major: int, minor: int) -> int | None:
    """The pid holding an exclusive flock on ``inode`` in a /proc/locks ``table``
    (lines such as ``1: FLOCK  ADVISORY  WRITE 5669 fe:00:2146658 0 EOF``). The
    device must match too unless only one lock is on that inode (some file systems
    give stat another device number than the lock table)."""
    found = []
    for line in table.splitlines():
        parts = line.split()
        if "->" in parts:  # a process waiting for the lock, not holding it
            continue
        try:
            kind, mode, pid, where = parts[1], parts[3], int(parts[4]), parts[5].split(":")
            dev, ino = (int(where[0], 16), int(where[1], 16)), int(where[2])
        except (IndexError, ValueError):
            continue
        if kind == "FLOCK" and mode == "WRITE" and ino == inode and pid > 0:
            found.append((dev == (major, minor), pid))
    exact = [pid for same, pid in found if same]
    if exact:
        return exact[0]
    return found[0][1] if len(found) == 1 else None


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except OSError:
        return False
