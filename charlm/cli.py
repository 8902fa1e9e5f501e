"""The ``charlm`` command line. Parsing, calling and printing only: no maths here.

Results go to stdout; progress, warnings and errors to stderr. NumPy and the
model code are imported inside the commands, so ``charlm --help`` is instant.
"""

from __future__ import annotations

import functools
import math
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from charlm.errors import CharlmError, UsageError

app = typer.Typer(
    name="charlm",
    help="Train a character-level language model on any text, sample from it, and score text.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
err = Console(stderr=True, soft_wrap=True, highlight=False)
out = Console(soft_wrap=True, highlight=False)

DEFAULT_MINUTES = 10.0


def fail(message: str, code: int = 1) -> None:
    err.print(f"[bold red]error:[/] {message}", markup=True)
    raise typer.Exit(code)


def user_errors(fn):
    """Turn charlm's own errors into one line on stderr and a non-zero exit."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except CharlmError as e:
            fail(str(e), e.exit_code)

    return wrapper


def _checkpoint_path(checkpoint: Path | None) -> Path:
    from charlm.runs import checkpoint_in, newest_checkpoint

    if checkpoint is not None:
        return checkpoint_in(checkpoint)
    found = newest_checkpoint()
    if found is None:
        raise CharlmError("no trained model under ./runs. Train one first: charlm train shakespeare")
    err.print(f"using {found}")
    return found


# --------------------------------------------------------------------------- #
# train
# --------------------------------------------------------------------------- #


@app.command()
@user_errors
def train(
    corpus: Annotated[
        str, typer.Argument(help="Text file to learn from, or a shipped corpus name (see 'charlm corpora').")
    ],
    name: Annotated[
        str | None, typer.Option(help="Run name: checkpoints go to OUT/NAME. [default: the corpus name]")
    ] = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Folder that holds the run folders.")] = Path("runs"),
    cell: Annotated[str, typer.Option(help="Recurrent cell: lstm.")] = "lstm",
    layers: Annotated[int, typer.Option(min=1, max=16, help="Stacked recurrent layers.")] = 2,
    hidden: Annotated[int, typer.Option(min=1, max=8192, help="Hidden units per layer (H).")] = 256,
    embed: Annotated[int, typer.Option(min=1, max=8192, help="Character embedding width (E).")] = 64,
    dropout: Annotated[
        float, typer.Option(min=0.0, max=0.9, help="Dropout probability between layers and before the decoder, 0–0.9.")
    ] = 0.0,
    batch_size: Annotated[int, typer.Option(min=1, help="Parallel streams per batch (B).")] = 32,
    seq_len: Annotated[
        int, typer.Option(min=1, help="Characters of back-propagation through time per batch (T).")
    ] = 64,
    lr: Annotated[
        float, typer.Option(min=0.0, help="Peak Adam learning rate; it warms up and decays to 10% by the end.")
    ] = 3e-3,
    clip: Annotated[float, typer.Option(min=0.0, help="Maximum global gradient norm.")] = 5.0,
    val_frac: Annotated[
        float,
        typer.Option(
            min=0.0, max=0.5, help="Fraction of the text, from its end, held out for validation; in (0, 0.5]."
        ),
    ] = 0.1,
    eval_every: Annotated[
        int, typer.Option(min=1, help="Steps between validations (each writes checkpoints and a metrics line).")
    ] = 200,
    steps: Annotated[int | None, typer.Option(min=1, help="Stop after this many optimizer steps.")] = None,
    epochs: Annotated[
        float | None, typer.Option(min=0.0, help="Stop after this many passes over the training text.")
    ] = None,
    minutes: Annotated[
        float | None,
        typer.Option(
            min=0.0, help=f"Stop after this many minutes. [default: {DEFAULT_MINUTES:g} when no budget is given]"
        ),
    ] = None,
    seed: Annotated[
        int, typer.Option(min=0, help="Random seed; with --steps or --epochs a run is exactly reproducible.")
    ] = 0,
    encoding: Annotated[str, typer.Option(help="Text encoding of the corpus file.")] = "utf-8",
    errors: Annotated[
        str, typer.Option(help="What to do with undecodable bytes: strict (stop with an error) or replace.")
    ] = "strict",
) -> None:
    """Train a model on a text file; checkpoints go to runs/NAME/."""
    from charlm.corpora import resolve
    from charlm.progress import TrainingDisplay
    from charlm.runs import new_run_dir
    from charlm.train import TrainConfig, prepare_run

    if errors not in ("strict", "replace"):
        raise UsageError(f"--errors must be 'strict' or 'replace', not {errors!r}.")
    for flag, value in (
        ("--lr", lr),
        ("--clip", clip),
        ("--val-frac", val_frac),
        ("--epochs", epochs),
        ("--minutes", minutes),
    ):
        if value is not None and not value > 0:
            raise UsageError(f"{flag} must be greater than 0 (got {value:g}).")
    if steps is None and epochs is None and minutes is None:
        minutes = DEFAULT_MINUTES
    path, stem = resolve(corpus)
    config = TrainConfig(
        batch_size=batch_size,
        seq_len=seq_len,
        lr=lr,
        clip=clip,
        val_frac=val_frac,
        eval_every=eval_every,
        steps=steps,
        epochs=epochs,
        minutes=minutes,
        seed=seed,
    )
    run_dir = out_dir / name if name else new_run_dir(out_dir, stem)
    trainer = prepare_run(
        path,
        run_dir,
        config,
        cell=cell,
        layers=layers,
        hidden=hidden,
        embed=embed,
        dropout=dropout,
        encoding=encoding,
        errors=errors,
        callbacks=TrainingDisplay(err),
    )
    summary = trainer.run()
    best = run_dir / "best.safetensors"
    out.print(
        f"best validation loss {summary.best_val:.4f} nats/char ({summary.best_val_bits:.4f} bits/char, "
        f"perplexity {math.exp(summary.best_val):.3f}) at step {summary.best_step:,}"
    )
    out.print(
        f"trained {summary.steps:,} steps ({summary.chars_seen / 1e6:.1f}M characters) in "
        f"{_duration(summary.elapsed)}; {summary.chars_seen / max(summary.train_seconds, 1e-9):,.0f} chars/s "
        "in training steps"
    )
    out.print(f"checkpoint: {best}")
    out.print(f"sample from it: charlm sample --checkpoint {best}")


def _duration(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


# --------------------------------------------------------------------------- #
# sample
# --------------------------------------------------------------------------- #


@app.command()
@user_errors
def sample(
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            "--checkpoint",
            "-c",
            help="Checkpoint file or run folder. [default: best checkpoint of the newest run under ./runs]",
        ),
    ] = None,
    length: Annotated[int, typer.Option("--length", "-n", min=0, help="Characters to generate.")] = 200,
    temperature: Annotated[
        float,
        typer.Option(
            "--temperature",
            "-t",
            min=0.0,
            help="Softmax temperature: <1 safer and more repetitive, >1 wilder; 0 always takes the most likely character.",
        ),
    ] = 1.0,
    prime: Annotated[
        str, typer.Option("--prime", "-p", help="Text to start from; it is printed, then continued.")
    ] = "",
    seed: Annotated[int | None, typer.Option(min=0, help="Random seed for reproducible output.")] = None,
) -> None:
    """Generate text from a trained model; the text streams to stdout."""
    from charlm.checkpoint import load
    from charlm.sample import Sampler

    if math.isnan(temperature):
        raise CharlmError("--temperature must be a number ≥ 0.")
    ckpt = load(_checkpoint_path(checkpoint))
    sampler = Sampler(ckpt.build_model(), ckpt.vocab, seed=seed)
    prime_ids = ckpt.vocab.encode(prime).ids if prime else None
    stream = sys.stdout
    flush_each = stream.isatty()
    if prime:
        sampler.feed(prime_ids)
        stream.write(prime)
    for ch in sampler.generate(length, temperature):
        stream.write(ch)
        if flush_each:
            stream.flush()
    if flush_each:
        stream.write("\n")
    stream.flush()


# --------------------------------------------------------------------------- #
# perplexity
# --------------------------------------------------------------------------- #


@app.command()
@user_errors
def perplexity(
    file: Annotated[str, typer.Argument(help="Text file to score, or - for standard input.")],
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            "--checkpoint", "-c", help="Checkpoint file or run folder. [default: best checkpoint of the newest run]"
        ),
    ] = None,
    encoding: Annotated[str, typer.Option(help="Text encoding of the file.")] = "utf-8",
    errors: Annotated[str, typer.Option(help="Undecodable bytes: strict or replace.")] = "strict",
) -> None:
    """How well the model predicts a text: nats/char, bits/char and perplexity.

    Characters the model has never seen are left out (neither scored nor fed to
    the model); their count is reported.
    """
    from charlm.checkpoint import load
    from charlm.data import decode_bytes, read_text
    from charlm.evaluate import score_ids

    ckpt = load(_checkpoint_path(checkpoint))
    if file == "-":
        text = decode_bytes(sys.stdin.buffer.read(), "standard input", encoding, errors)
    else:
        text = read_text(Path(file), encoding, errors)
    enc = ckpt.vocab.encode(text, unknown="skip")
    if len(enc.ids) < 2:
        raise CharlmError("the text has fewer than two characters the model knows; nothing to score.")
    score = score_ids(ckpt.build_model(), enc.ids, unknown=enc.unknown_count)
    out.print(f"nats/char   {score.nats_per_char:.4f}")
    out.print(f"bits/char   {score.bits_per_char:.4f}")
    out.print(f"perplexity  {score.perplexity:.4f}")
    out.print(f"scored      {score.chars:,} characters")
    out.print(f"unknown     {score.unknown:,} characters skipped (not in the model's vocabulary)")


# --------------------------------------------------------------------------- #
# corpora
# --------------------------------------------------------------------------- #


@app.command()
@user_errors
def corpora() -> None:
    """List the corpora shipped with charlm."""
    from rich.table import Table

    from charlm.corpora import shipped

    table = Table(title="Shipped corpora (use the name in place of a file)")
    for col in ("name", "size", "characters", "distinct", "source", "path"):
        table.add_column(col, justify="right" if col in ("size", "characters", "distinct") else "left")
    for c in shipped():
        if not c.path.is_file():
            table.add_row(c.name, "missing", "", "", c.description, str(c.path))
            continue
        text = c.path.read_text(encoding="utf-8")
        table.add_row(
            c.name,
            f"{c.path.stat().st_size / 1e6:.2f} MB",
            f"{len(text):,}",
            str(len(set(text))),
            c.description,
            str(c.path),
        )
    out.print(table)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
