"""Atomic writes: a file is always either the old one or the complete new one.

``atomic_write`` writes to ``.<name>.<pid>.tmp`` in the same folder, fsyncs and
renames over the target; ``remove_stale_temps`` clears what a process killed
mid-write (e.g. by kill -9) left behind.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that ``path`` is always either the old file
    or the complete new one: temp file in the same folder, fsync, os.replace."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # never named *.safetensors: nothing loads it
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


TEMP_NAME = re.compile(r"^\..+\.(\d+)\.tmp$")  # .<name>.<pid>.tmp, as atomic_write names them


def remove_stale_temps(folder: Path, older_than: float | None = None) -> list[Path]:
    """Delete the temporary files that atomic_write left in ``folder`` when its
    process died mid-write (e.g. kill -9); a live process's file is left alone,
    unless it was last written more than ``older_than`` seconds ago (its pid reused
    by another process). Returns what was removed."""
    removed = []
    for p in Path(folder).glob(".*.tmp"):
        match = TEMP_NAME.match(p.name)
        if match is None or (pid_alive(int(match.group(1))) and not _older(p, older_than)):
            continue
        try:
            p.unlink()
            removed.append(p)
        except OSError:
            pass
    return removed


def _older(path: Path, seconds: float | None) -> bool:
    try:
        return seconds is not None and time.time() - path.stat().st_mtime > seconds
    except OSError:
        return False


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (this one included)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except OSError:  # exists, but belongs to someone else
        return True
    return True
