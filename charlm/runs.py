"""Run folders under ./runs: naming new runs and finding the newest checkpoint."""

from __future__ import annotations

import re
from pathlib import Path

from charlm.errors import CharlmError

DEFAULT_RUNS = Path("runs")


def run_name(stem: str) -> str:
    """A safe folder name from a corpus file name."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-.")
    return name or "run"


def new_run_dir(runs: Path, stem: str) -> Path:
    """runs/<name>, or runs/<name>-2, -3, … so that no earlier run is overwritten."""
    base = run_name(stem)
    candidate, n = runs / base, 2
    while candidate.exists():
        candidate, n = runs / f"{base}-{n}", n + 1
    return candidate


def list_runs(runs: Path = DEFAULT_RUNS) -> list[Path]:
    """Run folders holding a checkpoint, newest first."""
    if not runs.is_dir():
        return []
    found = [
        d
        for d in runs.iterdir()
        if d.is_dir() and ((d / "best.safetensors").exists() or (d / "last.safetensors").exists())
    ]
    return sorted(found, key=lambda d: _mtime(d), reverse=True)


def _mtime(d: Path) -> float:
    return max((p.stat().st_mtime for p in d.glob("*.safetensors")), default=0.0)


def checkpoint_in(path: Path, which: str = "best") -> Path:
    """A checkpoint file, or a run folder → its best (else last) checkpoint."""
    if path.is_dir():
        for name in (f"{which}.safetensors", "best.safetensors", "last.safetensors"):
            if (path / name).exists():
                return path / name
        raise CharlmError(f"{path}: no checkpoint in this folder (expected best.safetensors or last.safetensors).")
    return path


def newest_checkpoint(runs: Path = DEFAULT_RUNS) -> Path | None:
    found = list_runs(runs)
    return checkpoint_in(found[0]) if found else None


def resume_checkpoint(target: Path | None, runs: Path = DEFAULT_RUNS) -> Path:
    """The checkpoint ``--resume`` continues from: a checkpoint file as given, a run
    folder's last.safetensors, or (target None) the newest run's under ``runs``."""
    if target is None:
        found = list_runs(runs)
        if not found:
            raise CharlmError(
                f"no run under {runs} to resume. Give the run folder (--resume runs/NAME) or --out FOLDER, "
                "or start a new run without --resume."
            )
        target = found[0]
    if target.is_dir():
        last = target / "last.safetensors"
        if not last.is_file():
            raise CharlmError(f"{target}: no last.safetensors in this folder, so there is no run to resume here.")
        return last
    if not target.exists():
        raise CharlmError(f"{target}: no such run folder or checkpoint. Give a folder under runs/ to --resume.")
    return target
