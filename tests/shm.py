"""/dev/shm leak checks that other tests running at the same time cannot fail."""

from __future__ import annotations

import os
import time

SHM = "/dev/shm"


def shm_names() -> set[str]:
    """The names in /dev/shm now (empty where there is none)."""
    return set(os.listdir(SHM)) if os.path.isdir(SHM) else set()


def charlm_files_left(before: set[str], wait: float = 5.0) -> set[str]:
    """charlm's files in /dev/shm that were not there ``before`` and are still there after
    up to ``wait`` seconds: under pytest-xdist another test's workers may have files there
    for a moment (each is unlinked once mapped), while a file leaked here stays."""
    new = {n for n in shm_names() - before if n.startswith("charlm-")}
    deadline = time.monotonic() + wait
    while (left := {n for n in new if os.path.exists(f"{SHM}/{n}")}) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left
