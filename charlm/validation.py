"""A run's validation: the held-out sample scored during the run, the whole held-out text at its end.

Every ``eval_every`` steps a fixed sample of the held-out text (``VAL_SAMPLE``
characters spread over it, see ``evaluate.score_sample``) is scored and the
run folder records it (``charlm.runfolder.RunFolder``: ``last.safetensors``,
``best.safetensors`` if validation improved, then a ``metrics.jsonl`` line).
When the budget is used up, the final weights are validated on the sample if
they were not yet, and the best weights once on the whole held-out text (up to
``val_chars``): that figure is the run's ``best_val``, in the summary and in
both checkpoints. Under MPI every rank validates (its block of the rows,
``charlm.mpistep.RankScoring``) and rank 0 alone writes.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from charlm import checkpoint
from charlm.errors import CharlmError, WorkerError
from charlm.evaluate import HeldOutScoring, Score, scoring_steps
from charlm.sample import warmed_state

if TYPE_CHECKING:
    from charlm.train import Trainer

VAL_SAMPLE = 16_384  # held-out characters validated during a run, spread over the held-out text


class Validation:
    """The held-out text of ``trainer``'s run and the best validation so far; the
    Trainer calls ``evaluate`` during the run and ``validate_whole`` at its end."""

    def __init__(self, trainer: Trainer, val_ids: np.ndarray) -> None:
        """``val_ids``: all the held-out text; validation reads the first ``val_chars`` of it."""
        self.trainer = trainer
        val_chars = trainer.config.val_chars
        self.held_out = len(val_ids)  # characters held out
        self.val_ids = val_ids[:val_chars] if val_chars else val_ids
        self.sample_chars = min(VAL_SAMPLE, max(0, len(self.val_ids) - 1))  # targets validated during the run
        self.best_val = math.inf  # the run's figure: whole held-out text once ended, else the sample's
        self.best_sample = math.inf  # best validation on the sample, what each validation is compared with
        self.best_step = 0
        self.val_curve: list[list[float]] = []  # [step, val loss] of every validation of the run
        self.scoring = HeldOutScoring(trainer.model)  # under MPI every rank scores its rows (charlm.mpistep)
        self.final_chars = 0  # held-out characters the final validation read (0: not run)

    def score(self, whole: bool) -> Score | None:
        """The score of the held-out sample (or of all of it), None without held-out text;
        the time it took goes into the budget's plan."""
        t = self.trainer
        n = len(self.val_ids)
        if n <= 1:
            return None
        t0 = time.perf_counter()
        score = self.scoring.score(self.val_ids, None if whole else VAL_SAMPLE)
        if not math.isfinite(score.nats_per_char):
            raise t.diverged("the validation loss is not finite", t.step)
        if t.budget is not None:
            t.budget.note_validation(time.perf_counter() - t0, scoring_steps(n, None if whole else VAL_SAMPLE))
        return score

    def evaluate(self, train_loss: float, chars_per_s: float) -> dict:
        """Validate on the held-out sample and record it: metrics line, last.safetensors,
        best.safetensors if the sample's loss improved."""
        t = self.trainer
        score = self.score(whole=False)
        val = math.nan if score is None else score.nats_per_char
        t.elapsed = t.clock()
        record = {
            "step": t.step,
            "epoch": round(t.step / t.stream.steps_per_epoch, 4),
            "chars": t.step * t.chars_per_step,
            "train_loss": round(train_loss, 6),
            "val_loss": round(val, 6),
            "val_chars": 0 if score is None else score.chars,
            "lr": t.lr,
            "chars_per_s": round(chars_per_s, 1),
            "elapsed": round(t.elapsed, 2),
        }
        t.history.append(record)
        self.val_curve.append([t.step, round(val, 5)])
        # With no held-out text (val is NaN) the newest weights are the best we know.
        improved = math.isnan(val) or val < self.best_sample
        if improved and not math.isnan(val):
            self.best_sample = self.best_val = val
        if improved:
            self.best_step = t.step
        if t.session.root:  # under MPI every rank validates its rows, rank 0 alone writes
            t.folder.record(t.save, record, improved)
        t.callbacks.on_eval(t, record)
        return record

    def validate_whole(self) -> dict | None:
        """The end of a run: validate the best weights (those of best.safetensors) on all
        the held-out text, make that the run's best_val, and write it into best.safetensors
        (with the sampler's warmed-up state), last.safetensors and a last metrics line
        (with best_step, best_val_loss, val_chars)."""
        t = self.trainer
        if t.budget is not None:
            t.total_steps = t.step  # the schedule has run to its end
        if len(self.val_ids) <= 1:
            t.elapsed = t.clock()
            return None
        best = self._read_best()
        earlier = self.best_step != t.step
        if earlier:  # the best weights are those of an earlier validation: score them, then go back
            current = t.model.flat.copy()
            if best is not None:
                t.model.load_params(best.params)
            t.session.share_array(t.model.flat)  # under MPI rank 0 alone has read them
        try:
            score = self.score(whole=True)
        finally:
            if earlier:
                t.model.flat[...] = current
        assert score is not None
        self.best_val = score.nats_per_char
        self.final_chars = len(self.val_ids)
        t.elapsed = t.clock()
        record = {
            "step": t.step,
            "best_step": self.best_step,
            "best_val_loss": round(self.best_val, 6),
            "val_chars": score.chars,
            "elapsed": round(t.elapsed, 2),
        }
        if not t.session.root:  # under MPI rank 0 alone writes
            return record
        if earlier:
            self._rewrite_best(best)
        else:
            t.save(t.folder.best, warm=True)  # sampling from the run's best model starts at once
        t.save(t.folder.last)
        t.folder.log(record)
        t.callbacks.on_final(t, record)
        return record

    def _read_best(self) -> checkpoint.Checkpoint | None:
        """On rank 0 (or alone): best.safetensors when it holds earlier weights than the
        final ones, else None. Under MPI every rank then has rank 0's ``best_step``, and
        an error reading it stops every rank (``LocalSession.share``)."""
        t = self.trainer
        best, error = None, None
        if t.session.root:
            if not t.folder.best.is_file():  # removed by hand: the final weights are the best there are
                self.best_step = t.step
            try:
                if self.best_step != t.step:
                    best = checkpoint.load(t.folder.best, memory_for=None)  # counted in the run's estimate
            except CharlmError as e:
                error = e
        failed, self.best_step = t.session.share((error is not None, self.best_step))
        if error is not None:
            raise error
        if failed:
            raise WorkerError("MPI rank 0 could not read the best weights to validate them.")
        return best

    def _rewrite_best(self, best: checkpoint.Checkpoint) -> None:
        """best.safetensors again, as it was but with the whole held-out text's best_val."""
        t = self.trainer
        state = replace(best.state, best_val=self.best_val, best_sample_val=self.best_sample)
        current = t.model.flat.copy()
        t.model.load_params(best.params)
        try:
            t0 = time.perf_counter()
            warmed = warmed_state(t.model, t.vocab)  # sampling from the run's best model starts at once
            checkpoint.save(t.folder.best, t.model, t.vocab, state, t.corpus, best.extra, warmed=warmed)
            if t.budget is not None:
                t.budget.note_save(time.perf_counter() - t0)
        finally:
            t.model.flat[...] = current
