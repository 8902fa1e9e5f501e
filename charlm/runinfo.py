"""What a checkpoint or run folder holds, read from the safetensors header only.

``describe`` never loads the tensors: config, vocabulary size, parameter count,
training time and characters seen, best validation loss and the validation
curve all live in the header's metadata (see ``charlm.checkpoint``).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from charlm.checkpoint import json_field, read_header
from charlm.errors import CharlmError, CheckpointError
from charlm.runs import checkpoint_in


@dataclass
class RunInfo:
    path: Path  # the checkpoint file
    config: dict
    vocab_size: int
    params: int  # model parameters (optimizer moments and carried state not counted)
    file_bytes: int
    modified: float  # mtime, seconds since the epoch
    train: dict = field(default_factory=dict)
    corpus: dict = field(default_factory=dict)
    val_curve: list[tuple[int, float]] = field(default_factory=list)

    @property
    def best_val(self) -> float:
        v = self.train.get("best_val")
        return float(v) if isinstance(v, int | float) else math.nan

    @property
    def age_seconds(self) -> float:
        return max(0.0, time.time() - self.modified)


def describe(path: Path) -> RunInfo:
    """A checkpoint file, or a run folder (its best checkpoint) → RunInfo."""
    path = checkpoint_in(Path(path))
    header, meta = read_header(path)
    config = json_field(path, meta, "config")
    vocab = json_field(path, meta, "vocab")
    train = json_field(path, meta, "train") if "train" in meta else {}
    corpus = json_field(path, meta, "corpus") if "corpus" in meta else {}
    if not isinstance(config, dict) or not isinstance(vocab, list) or not isinstance(train, dict):
        raise CheckpointError(f"{path}: damaged checkpoint (metadata has the wrong type).")
    params = 0
    for name, entry in header.items():
        if not name.startswith(("optimizer.", "state.")):
            n = 1
            for d in entry["shape"]:
                n *= d
            params += n
    curve = _curve(train, path)
    stat = path.stat()
    return RunInfo(path, config, len(vocab), params, stat.st_size, stat.st_mtime, train, corpus, curve)


def _curve(train: dict, path: Path) -> list[tuple[int, float]]:
    """The validation curve: from the checkpoint, else from metrics.jsonl beside it."""
    raw = train.get("val_curve")
    try:
        if isinstance(raw, list) and raw:
            return [(int(s), float(v)) for s, v in raw]
    except (TypeError, ValueError):
        pass
    metrics = path.parent / "metrics.jsonl"
    curve = []
    if metrics.is_file():
        for line in metrics.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                rec = json.loads(line)
                curve.append((int(rec["step"]), float(rec["val_loss"])))
            except (ValueError, KeyError, TypeError):
                continue
    return curve


def list_runs(runs: Path) -> list[RunInfo]:
    """Every run folder under ``runs`` with a readable checkpoint, newest first.
    Folders whose checkpoint cannot be read are skipped."""
    if not runs.is_dir():
        raise CharlmError(f"{runs}: no such folder. Train a model first: charlm train shakespeare")
    found = []
    for d in sorted(p for p in runs.iterdir() if p.is_dir()):
        try:
            found.append(describe(d))
        except CharlmError:
            continue
    return sorted(found, key=lambda r: r.modified, reverse=True)
