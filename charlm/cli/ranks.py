"""The start of ``charlm train`` on every rank of an MPI job: each builds its Trainer,
and all of them agree that they built the same one before the first step."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from charlm.cli.common import cli_message
from charlm.errors import CharlmError

if TYPE_CHECKING:
    from charlm.train import Trainer


def start_on_every_rank(session, build: Callable[[], Trainer]) -> Trainer:
    """``build()``'s Trainer, on every rank of an MPI job (``charlm.session``) once all
    ranks have built the same one; an error on any rank stops every rank, rank 0
    saying which one met it."""
    if session.size == 1:
        return build()
    from charlm.mpistep import distribute
    from charlm.session import agree_start

    trainer, error, text = None, None, None
    try:
        trainer = build()
        distribute(trainer, session)
    except CharlmError as e:
        error, text = e, cli_message(e)
    except OSError as e:
        error, text = e, f"{e.filename + ': ' if e.filename else ''}{e.strerror or e}"
    except Exception as e:  # raised again here after the others are told, as it would be without MPI
        error, text = e, f"{type(e).__name__}: {e}"
    signature = None if trainer is None else (trainer.corpus, trainer.model.num_params, trainer.step)
    try:
        agree_start(session, error, text, signature)
    except BaseException:
        if trainer is not None:  # rank 0 made or took the run folder: leave it as it was
            trainer.folder.discard_if_empty()
            trainer.folder.release()
        raise
    return trainer
