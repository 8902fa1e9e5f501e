"""The CLI's training display on stderr: a tqdm bar on a terminal, plain lines otherwise."""

from __future__ import annotations

import math

from rich.console import Console

from charlm.config import UNIT_NAMES
from charlm.train import Callbacks, Trainer, TrainSummary


class TrainingDisplay(Callbacks):
    def __init__(self, console: Console, show_reading: bool = False, notices: bool = False) -> None:
        self.console = console
        self.interactive = console.file.isatty()
        self.show_reading = show_reading  # progress bars while the corpus is read
        self.notices = notices  # print the notices of preparing the run
        self.bar = None
        self.val = math.nan
        self.unit = UNIT_NAMES["char"]  # set from the trainer's vocabulary at the start

    def on_notice(self, text: str) -> None:
        if self.notices:
            self.console.print(text, markup=False)

    def on_start(self, trainer: Trainer) -> None:
        m, c = trainer.model, trainer.config
        self.unit = UNIT_NAMES[trainer.vocab.unit]
        budget = []
        if c.steps is not None:
            budget.append(f"{c.steps:,} steps")
        if c.epochs is not None:
            budget.append(f"{c.epochs:g} epochs")
        if c.minutes is not None:
            budget.append(f"{c.minutes:g} minutes")
        v = trainer.validation
        held_out = f"{len(v.val_ids):,}"
        if len(v.val_ids) < v.held_out:
            held_out += f" of the {v.held_out:,} held out (--val-chars)"
        if v.sample_chars < len(v.val_ids) - 1:
            held_out = f"{v.sample_chars:,} spread over them during the run and on all {held_out} at the end"
        self.console.print(
            f"training a {m.config.layers}×{m.config.hidden} {m.config.cell.upper()} "
            f"({m.num_params:,} parameters, vocabulary {m.config.vocab_size}) on "
            f"{len(trainer.stream.ids):,} {self.unit.many}, validating on {held_out}; "
            f"budget {' or '.join(budget)}; run folder {trainer.run_dir}"
        )
        if self.interactive:
            from tqdm import tqdm

            self.bar = tqdm(
                total=trainer.total_steps,
                unit="step",
                file=self.console.file,
                dynamic_ncols=True,
                initial=trainer.step,
                desc="train",
            )

    def on_step(self, trainer: Trainer, loss: float) -> None:
        if self.bar is None:
            return
        if trainer.total_steps is not None and self.bar.total != trainer.total_steps:
            self.bar.total = trainer.total_steps
        self.bar.update(1)
        if trainer.step % 10 == 0:
            rate = self.bar.format_dict.get("rate") or 0.0
            self.bar.set_postfix(
                loss=f"{loss:.3f}",
                val=f"{self.val:.3f}",
                **{f"{self.unit.short}_s": f"{rate * trainer.chars_per_step:,.0f}"},
                refresh=False,
            )

    def on_eval(self, trainer: Trainer, record: dict) -> None:
        self.val = record["val_loss"]
        line = (
            f"step {record['step']:>7,}  epoch {record['epoch']:6.2f}  train {record['train_loss']:.4f}  "
            f"val {record['val_loss']:.4f} nats/{self.unit.one}  lr {record['lr']:.2e}  "
            f"{record['chars_per_s']:,.0f} {self.unit.short}/s  {record['elapsed']:.0f}s"
        )
        self._say(line)

    def on_warning(self, text: str) -> None:
        self._say(text)

    def _say(self, line: str) -> None:
        """A line above the progress bar, or on its own without one."""
        if self.bar is not None:
            self.bar.write(line, file=self.console.file)
        else:
            self.console.print(line, markup=False)

    def on_final(self, trainer: Trainer, record: dict) -> None:
        line = (
            f"step {record['step']:>7,}  best weights (step {record['best_step']:,}) on all "
            f"{len(trainer.validation.val_ids):,} held-out {self.unit.many}: val {record['best_val_loss']:.4f} "
            f"nats/{self.unit.one}  "
            f"{record['elapsed']:.0f}s"
        )
        self._say(line)

    def on_end(self, trainer: Trainer, summary: TrainSummary) -> None:
        if self.bar is not None:
            self.bar.close()
