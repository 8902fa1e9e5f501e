"""Who trains: this process alone, or one rank of an MPI job (``mpiexec -n N charlm train …``).

A run under MPI is N processes (ranks) with the same model; each computes its
row block of every batch (``charlm.mpistep``). Rank 0 is the run's face: it
alone shows progress, owns the run folder and writes checkpoints and metrics.
Every decision that depends on a clock or a signal is made on rank 0, or agreed
by all ranks, before each step (``agree``), so every rank takes the same steps
and none waits alone in a collective:

    v = (stop signal, command, p, last, total steps)      one Allreduce(MAX) per step

where each rank gives the signal it has seen (0: none) and rank 0 alone the
plan (the others −∞). Rank 0 leaving the loop with an error while the others
wait for its plan sends them the command to stop instead (``end``). A plain run
is a ``LocalSession``, which decides alone.

mpi4py is imported only when the environment says this process was started by
an MPI launcher (``launched``), so a plain run never loads MPI.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable

import numpy as np

from charlm.errors import CharlmError, WorkerError

# Set by the launchers for every process they start: MPICH's Hydra and Intel MPI (PMI_*), Open MPI
# (OMPI_*), PMIx launchers including Slurm's srun --mpi=pmix (PMIX_RANK).
LAUNCH_VARIABLES = ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK")

Plan = tuple[float | None, bool, int | None]  # (p of the next step or None, last step?, total steps or None)

GO, END, ABORT = 0, 1, 2
ABORT_GRACE_S = 0.5  # seconds between a rank's traceback and MPI_Abort, which ends every rank's output  # rank 0's command in ``agree``


def launched() -> bool:
    """True when an MPI launcher started this process (see LAUNCH_VARIABLES)."""
    return any(os.environ.get(name) for name in LAUNCH_VARIABLES)


class LocalSession:
    """A run in this process alone: rank 0 of 1, deciding alone."""

    rank = 0
    size = 1
    root = True

    def agree(self, plan: Callable[[], Plan | None], stop_signal: int | None) -> tuple[int | None, Plan | None]:
        """(stop signal, plan of the next step): the signal if one stopped the run, else ``plan()`` (None: the end)."""
        if stop_signal is not None:
            return stop_signal, None
        return None, plan()

    def stepped(self, last: bool) -> None:
        """A step agreed by ``agree`` is done; ``last``: it was the last one."""

    def end(self) -> None:
        """This rank leaves the training loop: nobody else to tell."""

    def gather(self, obj: object) -> list:
        return [obj]

    def share(self, obj: object) -> object:
        """Rank 0's ``obj`` (small and picklable), on every rank."""
        return obj

    def share_array(self, array: np.ndarray) -> None:
        """Rank 0's ``array`` into ``array`` on every rank (in place)."""


class MPISession(LocalSession):
    """This process as one rank of ``MPI.COMM_WORLD``."""

    def __init__(self) -> None:
        from mpi4py import MPI  # only here: a plain run never loads MPI

        self.MPI = MPI
        self.comm = MPI.COMM_WORLD
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        self.root = self.rank == 0
        self.local_size = self.comm.Split_type(MPI.COMM_TYPE_SHARED).Get_size()  # ranks on this machine
        self.awaited = True  # the other ranks wait in ``agree`` for rank 0's next plan

    def agree(self, plan: Callable[[], Plan | None], stop_signal: int | None) -> tuple[int | None, Plan | None]:
        """The stop signal seen by any rank, and rank 0's plan of the next step (None: the end).
        One small Allreduce(MAX); every rank must call it before every step."""
        v = np.full(5, -math.inf)
        v[0] = stop_signal or 0
        if self.root:
            p = plan() if stop_signal is None else None
            v[1] = END if p is None else GO
            if p is not None:
                progress, last, total = p
                v[2:] = (-1.0 if progress is None else progress, float(last), -1.0 if total is None else total)
        self.comm.Allreduce(self.MPI.IN_PLACE, v, op=self.MPI.MAX)
        self.awaited = False  # every rank has the plan: nobody waits for rank 0 until this step is done
        signal = int(v[0]) or None
        if v[1] == ABORT:
            raise WorkerError("MPI rank 0 stopped with an error.")
        if signal is not None or v[1] == END:
            return signal, None
        return None, (None if v[2] < 0 else float(v[2]), bool(v[3]), None if v[4] < 0 else int(v[4]))

    def stepped(self, last: bool) -> None:
        """A step agreed by ``agree`` is done on every rank: unless it was the last, the
        other ranks now wait for rank 0's next plan."""
        self.awaited = not last

    def end(self) -> None:
        """This rank leaves the training loop. On rank 0, left with an error while the
        other ranks wait for its next plan (before the first step, or between two):
        they are told to stop (``agree`` raises WorkerError there)."""
        if self.root and self.awaited:
            self.awaited = False
            v = np.full(5, -math.inf)
            v[0], v[1] = 0, ABORT
            self.comm.Allreduce(self.MPI.IN_PLACE, v, op=self.MPI.MAX)

    def gather(self, obj: object) -> list:
        """Every rank's ``obj`` (small and picklable), in rank order, on every rank."""
        return self.comm.allgather(obj)

    def share(self, obj: object) -> object:
        return self.comm.bcast(obj, root=0)

    def share_array(self, array: np.ndarray) -> None:
        self.comm.Bcast(array, root=0)


def start_session() -> LocalSession:
    """An MPISession when an MPI launcher started this process, else a LocalSession.
    A launch without mpi4py installed is a CharlmError saying what to install. Under
    MPI an exception that reaches the interpreter (a bug: charlm's own errors are
    agreed between the ranks) is printed and then ends the whole job (MPI_Abort)."""
    if not launched():
        return LocalSession()
    try:
        session = MPISession()
    except ImportError:
        raise CharlmError(
            "started by an MPI launcher, but mpi4py is not installed: pip install 'charlm[mpi]'."
        ) from None
    if session.size == 1:
        return LocalSession()
    previous = sys.excepthook

    def abort_job(*exc) -> None:  # an unforeseen error (a bug) on one rank must not leave the others waiting
        previous(*exc)
        sys.stderr.flush()
        time.sleep(ABORT_GRACE_S)  # the launcher forwards output through pipes: let the traceback reach it first
        session.comm.Abort(1)

    sys.excepthook = abort_job
    return session


def agree_start(session: LocalSession, error: BaseException | None, text: str | None, signature: object) -> None:
    """Before training: every rank says whether it is ready (``error``: None, or the
    error it met, worded as ``text``) and what it built (``signature``: e.g. the
    corpus's fingerprint and the model's size). Every rank then raises: its own
    error, else a CharlmError naming the first rank that met one, or saying that
    the ranks built different things. One allgather; a LocalSession just raises ``error``."""
    answers = session.gather((text if error is not None else None, signature))
    if error is not None:
        raise error
    for rank, (problem, _) in enumerate(answers):
        if problem is not None:
            raise CharlmError(f"MPI rank {rank}: {problem}")
    if any(s != answers[0][1] for _, s in answers):
        raise CharlmError(
            "the MPI ranks did not read the same corpus or build the same model: give every rank the same "
            "file and options (a shared file system)."
        )
