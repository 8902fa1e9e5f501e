"""What the training loop reports: the hooks it calls (``Callbacks``, which the CLI's
display implements) and the summary of a run (``TrainSummary``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from charlm.train import Trainer


class Callbacks:
    """Hooks the training loop calls; override what you need. ``show_reading`` asks
    for progress bars while the corpus is read; ``on_notice`` gets one-line notices
    from preparing a run (e.g. where a large corpus is cached), ``on_warning`` warnings
    during it (e.g. a worker process that had to be ended)."""

    show_reading = False

    def on_notice(self, text: str) -> None: ...

    def on_warning(self, text: str) -> None: ...

    def on_start(self, trainer: Trainer) -> None: ...

    def on_step(self, trainer: Trainer, loss: float) -> None: ...

    def on_eval(self, trainer: Trainer, record: dict) -> None: ...

    def on_final(self, trainer: Trainer, record: dict) -> None:
        """After the best weights were validated on the whole held-out text (``record``
        holds step, best_step, best_val_loss, val_chars: the characters predicted, elapsed)."""

    def on_end(self, trainer: Trainer, summary: TrainSummary) -> None: ...


@dataclass
class TrainSummary:
    run_dir: Path
    steps: int
    chars_seen: int
    elapsed: float  # seconds of the run from start-up, validations and checkpoints included
    train_seconds: float  # seconds spent in training steps
    best_val: float  # nats/char, on the val_chars held-out characters once the run has ended
    best_step: int
    final_train: float
    history: list[dict] = field(default_factory=list)
    interrupted: int | None = None  # the signal that stopped the run early (0: request_stop), else None
    val_chars: int = 0  # held-out characters best_val was measured on (0: not yet, the run was interrupted)

    @property
    def best_val_bits(self) -> float:
        return self.best_val / math.log(2)
