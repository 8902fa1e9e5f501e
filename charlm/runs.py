"""Run folders: naming and finding them and what they hold; and the one way every
command finds the model it is given (``find_model``).

A run folder ``runs/<name>/`` holds ``last.safetensors`` (written at every
validation and when a run is stopped), ``best.safetensors`` (when validation
improved) and ``metrics.jsonl`` (one line per validation); how a run writes into
one is ``charlm.runfolder.RunFolder``. ``describe`` reads what a checkpoint holds
from its safetensors header only, never loading the tensors.
"""

from __future__ import annotations

import difflib
import json
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path

from charlm import corpora
from charlm.checkpoint import read_header, read_metadata
from charlm.config import ModelConfig, TrainState
from charlm.corpus import CorpusFingerprint
from charlm.errors import CharlmError

DEFAULT_RUNS = Path("runs")

# --------------------------------------------------------------------------- #
# Naming and finding runs
# --------------------------------------------------------------------------- #


def run_name(stem: str) -> str:
    """A safe folder name from a corpus file name."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-.")
    return name or "run"


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


@dataclass(frozen=True)
class FoundModel:
    """The checkpoint a model argument names, and how it was found."""

    path: Path  # the checkpoint file
    how: str  # "path", "shipped" or "run"
    note: str | None = None  # worth saying on stderr: a run that has the name of a shipped model


def find_model(name: str, runs: Path = DEFAULT_RUNS) -> FoundModel:
    """The checkpoint ``name`` stands for, tried in this order:

    1. an existing path: a checkpoint file, or a run folder (its best checkpoint, else its last);
    2. a shipped model's name, in any case (shakespeare, Shakespeare, NEWS);
    3. a run's name: the folder ``runs``/NAME.

    Shipped names come before run names so that a shipped model's name always means
    the same model, also after ``charlm train shakespeare`` has made runs/shakespeare
    (reachable as that path). Anything else is a CharlmError that suggests the
    closest run and shipped names."""
    path = Path(name)
    if path.exists():
        return FoundModel(checkpoint_in(path), "path")
    key = name.lower()
    if key in corpora.SHIPPED_MODELS:
        found = corpora.shipped_model(key)
        if found is None:
            corpus, unit = corpora.SHIPPED_MODEL_SOURCES[key]
            raise CharlmError(
                f"no pretrained {key!r} model is shipped yet. Train a {unit} model on {corpus} with charlm train, "
                f"then use its run folder, runs/{corpus}.",
                kind="model_not_shipped",
                name=key,
                corpus=corpus,
                unit=unit,
            )
        run = next((runs / n for n in (name, key) if (runs / n).is_dir()), None)
        note = None if run is None else f"{name}: the shipped model; for your run of that name give its folder, {run}"
        return FoundModel(found, "shipped", note)
    if len(path.parts) == 1 and (runs / name).is_dir():
        return FoundModel(checkpoint_in(runs / name), "run")
    raise CharlmError(f"{name}: no such checkpoint, run folder, run or shipped model.{_did_you_mean(name, runs)}")


def _did_you_mean(name: str, runs: Path) -> str:
    """' Did you mean X?' with the closest run and shipped names (difflib), else a list
    of the shipped models and where runs are looked for."""
    names = {n.lower(): n for n in [d.name for d in list_runs(runs)] + list(corpora.SHIPPED_MODELS)}
    close = difflib.get_close_matches(Path(name).name.lower(), names, n=3, cutoff=0.6)
    if close:
        return f" Did you mean {' or '.join(names[c] for c in close)}?"
    return f" The shipped models are {corpora.shipped_models_text()}; runs are looked for in {runs}/."


def resume_checkpoint(target: Path | None, runs: Path = DEFAULT_RUNS) -> Path:
    """The checkpoint a resumed run continues from: a checkpoint file as given, a run
    folder's last.safetensors (the folder as a path, or its name under ``runs``), or
    (target None) the newest run's under ``runs``."""
    if target is not None and not target.exists() and len(target.parts) == 1 and (runs / target).is_dir():
        target = runs / target  # a run's name
    if target is None:
        found = list_runs(runs)
        if not found:
            raise CharlmError(
                f"no run under {runs} to resume. Name the run folder, or the folder that holds the runs, "
                "or start a new run.",
                kind="no_run_to_resume",
                runs=runs,
            )
        target = found[0]
    if target.is_dir():
        last = target / "last.safetensors"
        if not last.is_file():
            raise CharlmError(f"{target}: no last.safetensors in this folder, so there is no run to resume here.")
        return last
    if not target.exists():
        close = difflib.get_close_matches(target.name, [d.name for d in list_runs(runs)], n=3, cutoff=0.6)
        hint = f" Did you mean {' or '.join(close)}?" if close else ""
        raise CharlmError(
            f"{target}: no such run folder, run or checkpoint. Name a run folder under runs/ to resume.{hint}",
            kind="no_such_run",
            target=target,
            hint=hint,
        )
    return target


# --------------------------------------------------------------------------- #
# What a run holds, from the checkpoint header
# --------------------------------------------------------------------------- #


@dataclass
class RunInfo:
    path: Path  # the checkpoint file
    config: ModelConfig
    vocab_size: int
    params: int  # model parameters (optimizer moments and carried state not counted)
    file_bytes: int
    modified: float  # mtime, seconds since the epoch
    state: TrainState | None = None
    corpus: CorpusFingerprint | None = None
    val_curve: list[tuple[int, float]] | None = None
    warmed_up: bool = False  # the sampler's warmed-up state is stored with it
    unit: str = "char"  # what an id stands for: a character, or a word model's token
    lowercase: bool | None = None  # a word model's case policy (None: a character model)
    broken = None  # readable (see BrokenRun)

    @property
    def best_val(self) -> float:
        v = None if self.state is None else self.state.best_val
        return math.nan if v is None else float(v)

    @property
    def age_seconds(self) -> float:
        return max(0.0, time.time() - self.modified)


def describe(path: Path) -> RunInfo:
    """A checkpoint file, or a run folder (its best checkpoint) → RunInfo."""
    path = checkpoint_in(Path(path))
    header, meta = read_header(path)
    md = read_metadata(path, header, meta)
    params = 0
    for name, entry in header.items():
        if not name.startswith(("optimizer.", "state.", "warm.")):  # the model's own tensors
            n = 1
            for d in entry["shape"]:
                n *= d
            params += n
    curve = _curve(md.state, path)
    stat = path.stat()
    return RunInfo(
        path, md.config, len(md.vocab), params, stat.st_size, stat.st_mtime, md.state, md.corpus, curve,
        md.warm_up is not None, md.vocab.unit, getattr(md.vocab, "lowercase", None),
    )  # fmt: skip


def _curve(state: TrainState | None, path: Path) -> list[tuple[int, float]]:
    """The validation curve: from the checkpoint, else from metrics.jsonl beside it."""
    if state is not None and state.val_curve:
        return [(int(s), float(v)) for s, v in state.val_curve]
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


@dataclass
class BrokenRun:
    """A run folder whose checkpoint cannot be read: ``charlm runs`` lists it as broken."""

    path: Path  # the checkpoint file
    error: CharlmError  # why it cannot be read
    modified: float  # mtime, seconds since the epoch

    @property
    def broken(self) -> str:
        """What is wrong, without the file's name: for a bad header field, the field and its problem."""
        details = self.error.details
        if "field" in details and "problem" in details:
            return f"{details['field']} {details['problem']}"
        text, prefix = str(self.error), f"{self.path}: "
        return text[len(prefix) :] if text.startswith(prefix) else text

    @property
    def age_seconds(self) -> float:
        return max(0.0, time.time() - self.modified)


def describe_runs(runs: Path) -> list[RunInfo | BrokenRun]:
    """Every run folder under ``runs`` that holds a checkpoint, newest first (none when
    the folder does not exist); one whose checkpoint cannot be read is a BrokenRun."""
    found: list[RunInfo | BrokenRun] = []
    for d in list_runs(runs):
        try:
            found.append(describe(d))
        except CharlmError as e:
            found.append(BrokenRun(checkpoint_in(d), e, _mtime(d)))
    return sorted(found, key=lambda r: r.modified, reverse=True)
