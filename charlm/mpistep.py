"""Data parallelism over MPI ranks: every rank computes its row block of every batch.

The batch's B rows split into the same blocks as ``charlm.parallel``
(``row_blocks(B, N)``), one per rank: rank r computes the loss L_r and gradient
∇L_r of its B_r rows, and the ranks sum

    ∇L = Σ_r (B_r / B) ∇L_r        L = Σ_r (B_r / B) L_r

with one Allreduce over the flat gradient (P,), one over the pair
(B_r/B · L_r, failed), and one Allgatherv of the carried state rows (B_r, H), so
that every rank holds the whole batch's gradient, loss and state a<t> (c<t>) and
applies the same clipping and Adam update. With two ranks the sums are those of
``--threads 2`` in the same order, so the losses are the same.

Validation is split the same way (``RankScoring``): each rank scores its block
of the held-out text's rows, and one Allreduce sums the nats and the targets.

A rank's own block can be split again over local worker processes
(``threads`` > 1 blocks per rank, ``charlm.parallel.DataParallel``). A rank whose
block fails still takes part in the collectives, and then every rank raises
WorkerError naming it, so no rank waits for another that has given up.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

from charlm import blas
from charlm.errors import ConfigError, WorkerError
from charlm.evaluate import (
    EVAL_BATCH,
    HeldOutScoring,
    Score,
    block_nats,
    pass_step_seconds,
    row_layout,
    sample_row_limit,
)
from charlm.model import CharModel, State
from charlm.parallel import DataParallel, row_block, row_blocks
from charlm.session import MPISession


def check_rows(batch_size: int, ranks: int, threads: int = 1) -> None:
    """Every row block needs a row of its own: B ≥ ranks · blocks per rank (ConfigError)."""
    if batch_size < ranks * threads:
        per = "" if threads == 1 else f" × {threads} row blocks each"
        raise ConfigError(
            "batch_size",
            f"{batch_size} is too small for {ranks} MPI ranks{per}: each row block needs a row of its own; "
            f"give {ranks * threads} or more, or start fewer ranks.",
        )


class MPIDataParallel:
    """``loss_and_grads`` of a CharModel over the ranks of ``session`` (see the module
    docstring); the gradient lands in ``model.grad_flat`` on every rank."""

    def __init__(
        self,
        model: CharModel,
        session: MPISession,
        batch_size: int,
        threads: int = 1,
        stop_requested: Callable[[], bool] | None = None,
    ) -> None:
        self.threads = max(1, threads)
        check_rows(batch_size, session.size, self.threads)
        self.model = model
        self.session = session
        self.local = DataParallel(model, self.threads, stop_requested)  # this rank's block, maybe split again
        # BLAS threads for this rank's block: the machine's cores shared by the ranks on it
        self.blas_threads = max(1, (os.cpu_count() or 1) // (session.local_size * self.threads))
        self.synced = False  # the parameters have been broadcast from rank 0

    def run_all(self, fns) -> None:
        self.local.run_all(fns)

    def loss_and_grads(
        self, ids: np.ndarray, targets: np.ndarray, state: State, rng: np.random.Generator | None = None
    ) -> tuple[float, State]:
        """``CharModel.loss_and_grads`` of the whole batch, ids and targets (T, B). The
        dropout masks are drawn for the whole batch on every rank (the same draws: the
        same seed), each rank using its rows of them."""
        MPI, comm = self.session.MPI, self.session.comm
        T, B = ids.shape
        if not self.synced:  # every rank starts from rank 0's θ, whatever its own start
            comm.Bcast(self.model.flat, root=0)
            self.synced = True
        blocks = row_blocks(B, self.session.size)
        rows = blocks[self.session.rank]
        masks = None
        if self.model.config.dropout > 0.0 and rng is not None:
            masks = self.model.draw_dropout_masks(rng, T, B)  # (T, B, H) per layer, the serial run's draws
        ids_r, targets_r, state_r, masks_r = row_block((ids, targets, state, masks), rows)
        weight = (rows.stop - rows.start) / B
        grad = self.model.grad_flat
        failure: Exception | None = None
        try:
            with blas.limit(self.blas_threads):
                loss, new_state = self.local.loss_and_grads(
                    np.ascontiguousarray(ids_r), np.ascontiguousarray(targets_r), state_r, dropout_masks=masks_r
                )
            grad *= weight  # in float32, as DataParallel weighs its blocks
        except Exception as e:  # still take part in the collectives, so no rank waits alone
            failure, loss, new_state = e, 0.0, state_r
            grad[...] = 0.0
        pair = np.array([weight * loss, 0.0 if failure is None else 1.0])
        comm.Allreduce(MPI.IN_PLACE, grad, op=MPI.SUM)
        comm.Allreduce(MPI.IN_PLACE, pair, op=MPI.SUM)
        if pair[1] > 0:
            raise _failed_rank(self.session, failure, "in its row block")
        return float(pair[0]), self._gather_state(new_state, blocks)

    def _gather_state(self, own: State, blocks: list[slice]) -> State:
        """Every rank's final state rows, (B_r, H) per part, joined into (B, H) per part."""
        comm = self.session.comm
        parts = [a for layer in own for a in layer]
        send = np.ascontiguousarray(np.stack(parts))  # (parts, B_r, H)
        n, H = len(parts), send.shape[2]
        sizes = [b.stop - b.start for b in blocks]
        recv = np.empty(n * sum(sizes) * H, dtype=send.dtype)
        comm.Allgatherv(send, [recv, [n * b * H for b in sizes]])
        chunks, start = [], 0
        for b in sizes:
            chunks.append(recv[start : start + n * b * H].reshape(n, b, H))
            start += n * b * H
        joined = [np.concatenate([c[i] for c in chunks], axis=0) for i in range(n)]  # (B, H) each
        it = iter(joined)
        return [tuple(next(it) for _ in layer) for layer in own]

    def workers_peak_rss_mb(self) -> float:
        return self.local.workers_peak_rss_mb()

    def peak_rss_mb(self) -> float:
        return self.local.peak_rss_mb()

    def close(self) -> None:
        self.local.close()


class RankScoring(HeldOutScoring):
    """Held-out scoring split over the ranks: rank r scores its block ``row_blocks(B, N)[r]``
    of the B rows ``score_ids`` uses (the same rows, warm-up and sample as one process), and
    one Allreduce sums (Σ −log p, targets, failed). Every rank does its share at once, on its
    share of the machine's cores, so none waits alone for rank 0 to validate."""

    def __init__(self, model: CharModel, session: MPISession) -> None:
        super().__init__(model)
        self.session = session
        self.blas_threads = max(1, (os.cpu_count() or 1) // session.local_size)  # the ranks on this machine share it

    def score(self, ids: np.ndarray, chars: int | None = None) -> Score:
        MPI, comm = self.session.MPI, self.session.comm
        rows = self._rows(row_layout(len(ids) - 1)[0])
        failure, total, count = None, 0.0, 0
        try:
            if rows is not None:
                with blas.limit(self.blas_threads):
                    total, count = block_nats(self.model, ids, rows, **sample_row_limit(len(ids), chars))
        except Exception as e:  # still take part in the sum, so no rank waits alone
            failure = e
        sums = np.array([total, count, 0.0 if failure is None else 1.0])
        comm.Allreduce(MPI.IN_PLACE, sums, op=MPI.SUM)
        if sums[2] > 0:
            raise _failed_rank(self.session, failure, "scoring its rows of the held-out text")
        return Score(float(sums[0]), int(sums[1]))

    def pass_step_seconds(self) -> float:
        rows = self._rows(EVAL_BATCH)
        with blas.limit(self.blas_threads):
            return pass_step_seconds(self.model, batch_size=rows.stop - rows.start if rows is not None else 1)

    def _rows(self, B: int) -> slice | None:
        """This rank's block of B rows; None when there are fewer rows than ranks and none is left for it."""
        blocks = row_blocks(B, min(B, self.session.size))
        return blocks[self.session.rank] if self.session.rank < len(blocks) else None


def _failed_rank(session: MPISession, failure: Exception | None, doing: str) -> WorkerError:
    """The error every rank raises after a rank's ``failure`` (None on the others) while ``doing``."""
    reports = session.comm.allgather(None if failure is None else f"{type(failure).__name__}: {failure}")
    rank = next(r for r, text in enumerate(reports) if text is not None)
    return WorkerError(f"MPI rank {rank} failed {doing} ({str(reports[rank]).rstrip('.')}).")


def distribute(trainer, session: MPISession) -> None:
    """Make ``trainer`` (a ``charlm.train.Trainer``) one rank of ``session``'s MPI job: it
    computes its row block of every batch (``threads`` blocks of its own, 1 if 0), and
    only rank 0 writes into the run folder. ConfigError when the batch is too small."""
    c = trainer.config
    stop_requested = lambda: trainer.stop_signal is not None  # noqa: E731
    trainer.stepper = MPIDataParallel(trainer.model, session, c.batch_size, c.threads or 1, stop_requested)
    trainer.session = session
    trainer.validation.scoring = RankScoring(trainer.model, session)
