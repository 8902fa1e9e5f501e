"""Writing a run: the folder, owned by one process at a time, and the order it writes in.

``RunFolder`` takes the folder's lock (``charlm.runlock``) before anything is read
from or written to it, and is the save policy: the checkpoints first, then the
metrics line, so every line has a checkpoint at or after its step.
"""

from __future__ import annotations

import errno
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from charlm.atomic import atomic_write, remove_stale_temps
from charlm.errors import CharlmError, RunFolderBusyError, UsageError
from charlm.runlock import FolderLock


class RunFolder:
    """The folder a run writes into, owned by one process at a time, and the order it writes in.

    ``lock`` creates the folder if needed and takes its lock (``charlm.runlock``), held
    until ``release``. ``unique``: ``path`` is a first choice, and ``lock`` takes the
    first of path, path-2, path-3, … that it can create itself, so that runs started
    at the same time never share a folder and no earlier run is overwritten."""

    def __init__(self, path: Path, unique: bool = False) -> None:
        self.path = Path(path)
        self.unique = unique
        self.created = False  # made by this session (and so removed again if nothing was written)
        self._lock = FolderLock(self.path)

    @property
    def last(self) -> Path:
        return self.path / "last.safetensors"

    @property
    def best(self) -> Path:
        return self.path / "best.safetensors"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def locked(self) -> bool:
        return self._lock.held

    def holds_run(self) -> bool:
        return self.best.exists() or self.last.exists()

    def refuse_overwrite(self) -> None:
        """A new run never writes into a folder that holds a run."""
        if self.holds_run():
            raise UsageError(
                f"{self.path} already holds a run, which a new run would overwrite. Choose another name, "
                "or resume that run.",
                kind="run_exists",
                path=self.path,
            )

    def lock(self) -> None:
        """Create the folder if needed and take its lock for this process (a no-op if held).
        Another process holding it: RunFolderBusyError, naming that process's pid."""
        if self._lock.held:
            return
        if self.unique:
            return self._lock_free_name()
        waited = 0
        while True:
            made = self._make(self.path, exist_ok=True)
            try:
                if self._lock.acquire():
                    self.created = made
                    return
                pid = self._lock.owner()
            except FileNotFoundError:  # the folder was removed meanwhile (an empty run discarded): again
                pid = None
            except OSError as e:
                raise self._unwritable(self.path, e) from None
            if pid is not None or waited >= 50:
                owner = f"pid {pid}" if pid is not None else "pid unknown"
                raise RunFolderBusyError(
                    f"{self.path} is in use by another charlm process ({owner}); wait for it to finish, "
                    "or start a new run in another folder.",
                    kind="run_folder_busy",
                    path=self.path,
                    pid=pid,
                    owner=owner,
                )
            time.sleep(0.01)  # the owner is just letting go, or not yet in the lock table: again
            waited += 1

    def _lock_free_name(self) -> None:
        """Take path, path-2, path-3, …: the first this process creates and locks."""
        base, n = self.path, 2
        candidate = base
        while True:
            if self._make(candidate, exist_ok=False):
                lock = FolderLock(candidate)
                try:
                    got = lock.acquire()
                except FileNotFoundError:
                    got = False
                except OSError as e:
                    raise self._unwritable(candidate, e) from None
                if got:
                    self.path, self._lock, self.created = candidate, lock, True
                    return
                # else taken meanwhile by a run that named this folder itself: theirs
            candidate, n = base.with_name(f"{base.name}-{n}"), n + 1

    def _make(self, path: Path, exist_ok: bool) -> bool:
        """Create ``path``: True if this call made it; False if it exists (``exist_ok``) or was taken."""
        try:
            path.mkdir(parents=True)
            return True
        except FileExistsError:
            if exist_ok and not path.is_dir():
                raise self._unwritable(path, FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST))) from None
            return False
        except OSError as e:
            raise self._unwritable(path, e) from None

    @staticmethod
    def _unwritable(path: Path, e: OSError) -> CharlmError:
        return CharlmError(
            f"cannot create the run folder {path} ({e.strerror or e}). Choose another folder for the runs.",
            kind="run_folder_unwritable",
            path=path,
            reason=e.strerror or e,
        )

    def release(self) -> None:
        """Give up the folder's lock; ``lock`` takes it again."""
        self._lock.release()

    def open(self, resumed_step: int) -> None:
        """Take the folder (``lock``) if not yet and clear what a killed process left:
        its temporary files and, on resume (``resumed_step`` > 0), metrics lines from
        after the resumed step."""
        self.lock()
        try:
            remove_stale_temps(self.path)
            if resumed_step:
                self.trim_metrics(resumed_step)
        except BaseException:
            self.release()
            raise

    def discard_if_empty(self) -> None:
        """A run that wrote nothing leaves no folder behind: one this session made is
        removed (while still locked, so no other process has written into it)."""
        if self.created and self._lock.held and self.path.is_dir() and not any(self.path.iterdir()):
            self.path.rmdir()
            self.release()

    def record(self, save: Callable[[Path], None], record: dict, improved: bool) -> None:
        """The save policy of one validation: last.safetensors, best.safetensors if
        validation ``improved``, then the metrics line."""
        save(self.last)
        if improved:
            save(self.best)
        self.log(record)

    def log(self, record: dict) -> None:
        """Append ``record`` to metrics.jsonl as one line."""
        try:
            with open(self.metrics, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as e:
            raise CharlmError(
                f"cannot write {self.metrics} ({e.strerror or e}); the checkpoints of step {record['step']} are "
                "saved. Free some space or choose another folder for the runs.",
                kind="metrics_unwritable",
                path=self.metrics,
                reason=e.strerror or e,
                step=record["step"],
            ) from None

    def trim_metrics(self, step: int) -> None:
        """Drop metrics lines from after ``step`` (a future that was abandoned, e.g. by
        a kill) and any torn last line, so the log stays one history."""
        path = self.metrics
        if not path.is_file():
            return
        try:
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)
            keep = []
            for line in lines:
                try:
                    ok = line.endswith("\n") and json.loads(line)["step"] <= step
                except (ValueError, KeyError, TypeError):
                    ok = False
                if ok:
                    keep.append(line)
            if len(keep) != len(lines):
                atomic_write(path, "".join(keep).encode("utf-8"))
        except OSError as e:
            raise CharlmError(f"cannot update {path} ({e.strerror or e}); the run is unchanged.") from None
