"""The ``charlm`` command line. Parsing, calling and printing only: no maths here.

Results go to stdout; progress, warnings and errors to stderr. NumPy and the
model code are imported inside the commands, so ``charlm --help`` is instant.
"""

from __future__ import annotations

import functools
import math
import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from typer.core import TyperCommand

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
    """``error: <message>`` as one line on stderr (the message is never read as markup), then exit ``code``."""
    from rich.markup import escape

    err.print(f"[bold red]error:[/] {escape(' '.join(str(message).splitlines()))}", markup=True)
    raise typer.Exit(code)


def _notice(message: str) -> None:
    """A one-line notice on stderr."""
    err.print(message, markup=False)


def user_errors(fn):
    """Turn charlm's own errors into one line on stderr and a non-zero exit: a
    CharlmError (its exit_code), an operating-system error such as a full disk (1),
    Ctrl-C outside the training loop (130). A closed stdout pipe stays quiet."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except CharlmError as e:
            fail(str(e), e.exit_code)
        except KeyboardInterrupt:
            fail("interrupted.", 130)
        except BrokenPipeError:
            raise  # Typer exits quietly when the reader of stdout goes away (charlm sample | head)
        except OSError as e:
            where = f"{e.filename}: " if e.filename else ""
            fail(f"{where}{e.strerror or e}. Check the path, its permissions and the free space.")

    return wrapper


MODEL_HELP = (
    "A shipped pretrained model, shakespeare or news, or a checkpoint file or run folder "
    "(then the same as --checkpoint)."
)
CHECKPOINT_HELP = "Checkpoint file or run folder. Default: the best checkpoint of the newest run under ./runs"
# The two ways every model-reading command is told which model to read.
CheckpointOption = Annotated[Path | None, typer.Option("--checkpoint", "-c", help=CHECKPOINT_HELP + ".")]
ModelOption = Annotated[str | None, typer.Option("--model", "-m", metavar="NAME|PATH", help=MODEL_HELP)]


def _checkpoint_path(checkpoint: Path | None, model: str | None = None, *, fallback: str | None = None) -> Path:
    """--checkpoint or --model, else the newest run's best checkpoint, else (with
    ``fallback``) that shipped pretrained model, said on stderr."""
    from charlm.corpora import resolve_model, shipped_model
    from charlm.runs import checkpoint_in, newest_checkpoint

    if checkpoint is not None and model is not None:
        raise UsageError("give --checkpoint or --model, not both.")
    if model is not None:
        checkpoint = resolve_model(model)
    if checkpoint is not None:
        return checkpoint_in(checkpoint)
    found = newest_checkpoint()
    if found is None and fallback is not None and (shipped := shipped_model(fallback)) is not None:
        err.print(f"no trained model under ./runs; using the shipped {fallback} model ({shipped})", markup=False)
        return shipped
    if found is None:
        raise CharlmError(
            "no trained model under ./runs. Use a shipped one (-m shakespeare or -m news), "
            "or train one first: charlm train shakespeare"
        )
    err.print(f"using {found}")
    return found


# --------------------------------------------------------------------------- #
# train
# --------------------------------------------------------------------------- #


class _TrainCommand(TyperCommand):
    """``--resume`` takes an optional value; Typer's parser has no such option kind,
    so a bare ``--resume`` (last, or followed by another option) gets the value ""
    (= the newest run) before parsing."""

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        args = list(args)
        for i, arg in enumerate(args):
            if arg == "--":
                break
            if arg == "--resume" and (i + 1 == len(args) or args[i + 1].startswith("-")):
                args[i] = "--resume="
        return super().parse_args(ctx, args)


@app.command(cls=_TrainCommand)
@user_errors
def train(
    ctx: typer.Context,
    corpus: Annotated[
        str, typer.Argument(help="Text file to learn from, or a shipped corpus name (see 'charlm corpora').")
    ],
    name: Annotated[
        str | None, typer.Option(help="Run name: checkpoints go to OUT/NAME. Default: the corpus name, made unique.")
    ] = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Folder that holds the run folders.")] = Path("runs"),
    cell: Annotated[
        str,
        typer.Option(
            help="Recurrent cell: lstm, gru (the lecture notes' full GRU) or rnn (vanilla tanh). "
            "Recorded in the checkpoint, so sample, perplexity and --resume need no flag."
        ),
    ] = "lstm",
    layers: Annotated[int, typer.Option(min=1, max=16, help="Stacked recurrent layers.")] = 2,
    hidden: Annotated[int, typer.Option(min=1, max=8192, help="Hidden units per layer (H).")] = 256,
    embed: Annotated[int, typer.Option(min=1, max=8192, help="Character embedding width (E).")] = 64,
    dropout: Annotated[
        float, typer.Option(help="Dropout probability between layers and before the decoder, 0–0.9.")
    ] = 0.0,
    forget_bias: Annotated[
        float,
        typer.Option(
            help="Initial LSTM forget-gate bias b_f, −10–10. 0 (PyTorch's biases are 0 on average) learns text "
            "fastest; 1 keeps c<t> longer from the start and helps dependencies 20+ characters apart.",
        ),
    ] = 0.0,
    batch_size: Annotated[int, typer.Option(min=1, help="Parallel streams per batch (B).")] = 32,
    seq_len: Annotated[
        int, typer.Option(min=1, help="Characters of back-propagation through time per batch (T).")
    ] = 64,
    lr: Annotated[
        float, typer.Option(help="Peak Adam learning rate, > 0; it warms up and decays to 10% by the end.")
    ] = 3e-3,
    clip: Annotated[float, typer.Option(help="Maximum global gradient norm, > 0.")] = 5.0,
    val_frac: Annotated[
        float,
        typer.Option(help="Fraction of the text, from its end, held out for validation; in (0, 0.5]."),
    ] = 0.1,
    val_chars: Annotated[
        int,
        typer.Option(
            min=0,
            help="Validate on at most this many characters from the start of the held-out text (0 = all), "
            "so validation stays quick on a large corpus.",
        ),
    ] = 500_000,
    eval_every: Annotated[
        int, typer.Option(min=1, help="Steps between validations (each writes checkpoints and a metrics line).")
    ] = 200,
    steps: Annotated[int | None, typer.Option(min=1, help="Stop after this many optimizer steps.")] = None,
    epochs: Annotated[
        float | None, typer.Option(help="Stop after this many passes over the training text (> 0; fractions allowed).")
    ] = None,
    minutes: Annotated[
        float | None,
        typer.Option(help=f"Stop after this many minutes, > 0. Default: {DEFAULT_MINUTES:g} when no budget is given."),
    ] = None,
    seed: Annotated[
        int, typer.Option(min=0, help="Random seed; with --steps or --epochs a run is exactly reproducible.")
    ] = 0,
    threads: Annotated[
        int,
        typer.Option(
            min=0,
            max=256,
            help="Row blocks of each batch trained in parallel, one per core; 0 = one per CPU core "
            "(each block at least 8 rows). Results are reproducible for a given value.",
        ),
    ] = 0,
    encoding: Annotated[str, typer.Option(help="Text encoding of the corpus file.")] = "utf-8",
    errors: Annotated[
        str, typer.Option(help="What to do with undecodable bytes: strict (stop with an error) or replace.")
    ] = "strict",
    resume: Annotated[
        str | None,
        typer.Option(
            "--resume",
            metavar="[RUN]",
            help="Continue a run exactly where it stopped: a run folder (its last.safetensors) or a checkpoint file; "
            "alone, the newest run under --out. CORPUS must be the same text. Model and data options come from "
            "the run; --lr, --clip, --eval-every and --threads may change. With no budget option the run's own budget "
            "goes on; --steps/--epochs are totals counted from the start of the run; --minutes is minutes more.",
        ),
    ] = None,
) -> None:
    """Train a model on a text file; checkpoints go to runs/NAME/.

    Ctrl-C (or SIGTERM) stops after the current step, saves last.safetensors and
    prints the command that resumes the run (exit code 130, or 143 for SIGTERM).
    """
    from charlm.corpora import resolve
    from charlm.progress import TrainingDisplay
    from charlm.runs import new_run_dir
    from charlm.train import TrainConfig, prepare_run

    if errors not in ("strict", "replace"):
        raise UsageError(f"--errors must be 'strict' or 'replace', not {errors!r}.")
    if not 0 < val_frac <= 0.5:
        raise UsageError(f"--val-frac must be in (0, 0.5] (got {val_frac:g}): the share of the text held out.")
    for flag, value in (
        ("--lr", lr),
        ("--clip", clip),
        ("--epochs", epochs),
        ("--minutes", minutes),
    ):
        if value is not None and not (value > 0 and math.isfinite(value)):
            raise UsageError(f"{flag} must be a finite number greater than 0 (got {value:g}).")
    if not 0.0 <= dropout <= 0.9:
        raise UsageError(f"--dropout must be between 0 and 0.9 (got {dropout:g}): the probability of zeroing a unit.")
    if not -10.0 <= forget_bias <= 10.0:
        raise UsageError(f"--forget-bias must be between -10 and 10 (got {forget_bias:g}).")
    if forget_bias != 0.0 and cell in ("gru", "rnn"):
        raise UsageError(f"--forget-bias is for the LSTM's forget gate; a {cell} cell has none. Drop the option.")
    if resume is None:  # a resumed run keeps its own batch size
        _check_threads(threads, batch_size)
    path, stem = resolve(corpus)
    if resume is not None:
        trainer = _resume(ctx, resume, name, out_dir, path)
        summary = trainer.run()
        _report_training(summary, corpus)
        return
    if steps is None and epochs is None and minutes is None:
        minutes = DEFAULT_MINUTES
    config = TrainConfig(
        batch_size=batch_size,
        seq_len=seq_len,
        lr=lr,
        clip=clip,
        val_frac=val_frac,
        val_chars=val_chars,
        eval_every=eval_every,
        steps=steps,
        epochs=epochs,
        minutes=minutes,
        seed=seed,
        threads=threads,
    )
    if name is not None and (not name.strip() or name in (".", "..") or any(c in name for c in "/\\")):
        raise UsageError(f"--name {name!r}: give a plain folder name (no '/'); the run goes to {out_dir}/NAME.")
    run_dir = out_dir / name if name else new_run_dir(out_dir, stem)
    if name and any((run_dir / f).exists() for f in ("best.safetensors", "last.safetensors")):
        raise UsageError(
            f"{run_dir} already holds a run, which a new run would overwrite. Choose another --name, "
            f"or continue that run with --resume {run_dir}."
        )
    trainer = prepare_run(
        path,
        run_dir,
        config,
        cell=cell,
        layers=layers,
        hidden=hidden,
        embed=embed,
        dropout=dropout,
        forget_bias=forget_bias,
        encoding=encoding,
        errors=errors,
        callbacks=TrainingDisplay(err),
        progress=sys.stderr.isatty(),
        report=_notice,
    )
    summary = trainer.run()
    _report_training(summary, corpus)


def _check_threads(threads: int, batch_size: int) -> None:
    """Row blocks run in parallel, each at least one row of the batch."""
    if threads > batch_size:
        raise UsageError(
            f"--threads {threads} is more than --batch-size {batch_size}: each block needs a row of its own. "
            "Give at most the batch size, or 0 for one block per core."
        )


def _resume(ctx: typer.Context, resume: str, name: str | None, out_dir: Path, path: Path):
    """The Trainer for ``train --resume``: the options given on the command line are passed on."""
    from charlm.progress import TrainingDisplay
    from charlm.runs import resume_checkpoint
    from charlm.train import BUDGETS, CHANGEABLE_ON_RESUME, FIXED_ON_RESUME, resume_run

    if name is not None:
        raise UsageError("--name cannot be combined with --resume: a resumed run continues in its own folder.")
    keys = (*FIXED_ON_RESUME, *CHANGEABLE_ON_RESUME, *BUDGETS, "encoding", "errors")
    given = {k: ctx.params[k] for k in keys if ctx.get_parameter_source(k).name != "DEFAULT"}
    target = resume_checkpoint(Path(resume) if resume else None, out_dir)
    trainer = resume_run(target, path, given, callbacks=TrainingDisplay(err))
    for note in trainer.notes:
        err.print(note, markup=False)
    return trainer


def _report_training(summary, corpus: str) -> None:
    """The end-of-run summary on stdout; after a signal, the resume command on stderr and exit 128 + signal."""
    from charlm.report import perplexity_text

    if summary.interrupted is not None:
        command = f"charlm train {shlex.quote(corpus)} --resume {shlex.quote(str(summary.run_dir))}"
        err.print(f"interrupted at step {summary.steps}; resume with: {command}", markup=False)
        raise typer.Exit(128 + summary.interrupted)
    best = summary.run_dir / "best.safetensors"
    out.print(
        f"best validation loss {summary.best_val:.4f} nats/char ({summary.best_val_bits:.4f} bits/char, "
        f"perplexity {perplexity_text(summary.best_val)}) at step {summary.best_step:,}"
    )
    out.print(
        f"trained {summary.steps:,} step{'' if summary.steps == 1 else 's'} ({summary.chars_seen / 1e6:.1f}M characters) in "
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
            help=CHECKPOINT_HELP + ", or with no runs the shipped Shakespeare model.",
        ),
    ] = None,
    model_name: ModelOption = None,
    length: Annotated[
        int, typer.Option("--length", "-n", help="Characters to generate per sample, not counting the prime; ≥ 0.")
    ] = 200,
    temperature: Annotated[
        float,
        typer.Option(
            "--temperature",
            "-t",
            help="Divides the logits before the softmax, ≥ 0. Below 1 the text is safer and more repetitive, above 1 "
            "wilder, with more invented words; 0 always takes the most likely character (greedy: the same text "
            "every time, often stuck in a loop).",
        ),
    ] = 1.0,
    top_k: Annotated[
        int | None,
        typer.Option(
            "--top-k",
            "-k",
            help="Draw only from the K most likely characters, K ≥ 1: cuts off the rare characters that garble "
            "words, whatever the context; 1 is greedy. Default: no cut.",
        ),
    ] = None,
    top_p: Annotated[
        float | None,
        typer.Option(
            "--top-p",
            help="Nucleus sampling, P in (0, 1]: draw only from the smallest set of most likely characters whose "
            "probabilities add up to P. Cuts the unlikely tail where the model is sure and keeps the choice wide "
            "where it is not; 0.9 is a common value, 1 keeps everything. Default: no cut.",
        ),
    ] = None,
    prime: Annotated[
        str, typer.Option("--prime", "-p", help="Text to start from; it is printed, then continued.")
    ] = "",
    prime_file: Annotated[
        Path | None,
        typer.Option("--prime-file", metavar="PATH", help="Start from the text of this file instead of --prime."),
    ] = None,
    unknown: Annotated[
        str,
        typer.Option(
            "--unknown",
            help="Prime characters the model has never seen: error (stop and list them) or skip (drop them, "
            "with a notice on stderr; the prime is printed without them).",
        ),
    ] = "error",
    seed: Annotated[
        int | None, typer.Option(min=0, help="Random seed: the same seed gives the same text, byte for byte.")
    ] = None,
    num_samples: Annotated[
        int,
        typer.Option(
            "--num-samples",
            help="Independent samples, each starting again from the prime, ≥ 1. With more than one, each sample "
            "is preceded by a line '--- sample K ---' and samples are separated by a blank line.",
        ),
    ] = 1,
    stop: Annotated[
        str | None,
        typer.Option(
            "--stop",
            metavar="STRING",
            help="End a sample early as soon as the generated text ends with STRING (printed too). "
            "\\n, \\t, \\r and \\\\ are read as escapes: --stop '\\n\\n' stops at the first blank line.",
        ),
    ] = None,
) -> None:
    """Generate text from a trained model; the text streams to stdout as it is generated.

    The controls compose, in this order: --temperature reshapes the distribution,
    --top-k and then --top-p cut off its tail, and the next character is drawn
    from what is left. Only the text goes to stdout (notices go to stderr), so
    'charlm sample > out.txt' gives exactly the text.
    """
    from charlm.checkpoint import load
    from charlm.sample import Sampler

    _check_sampling(temperature, top_k, top_p, length, num_samples)
    if unknown not in ("error", "skip"):
        raise UsageError(f"--unknown must be 'error' or 'skip', not {unknown!r}.")
    if stop is not None:
        stop = _unescape(stop)
        if not stop:
            raise UsageError("--stop needs at least one character.")
    if prime and prime_file is not None:
        raise UsageError("give --prime or --prime-file, not both.")
    label = "--prime"
    if prime_file is not None:
        prime, label = _read_prime(prime_file), f"--prime-file {prime_file}"
    ckpt = load(_checkpoint_path(checkpoint, model_name, fallback="shakespeare"))
    vocab = ckpt.vocab
    try:
        enc = vocab.encode(prime, unknown=unknown)
    except CharlmError as e:
        raise CharlmError(f"{label}: {e}") from None
    if enc.unknown:
        prime = vocab.decode(enc.ids)
        err.print(
            f"notice: dropped {enc.unknown_count} character(s) of the prime that the model has never seen: "
            f"{_listed(enc.unknown)}.",
            markup=False,
        )
    if stop is not None and any(ch not in vocab for ch in stop):
        missing = {ch: 1 for ch in stop if ch not in vocab}
        err.print(
            f"warning: --stop contains {_listed(missing)}, which the model never generates; "
            "every sample runs to --length.",
            markup=False,
        )
    sampler = Sampler(ckpt.build_model(), vocab, seed=seed)
    stream = sys.stdout
    flush_each = stream.isatty()
    tail = ""  # the last two characters written: samples are separated by exactly one blank line
    for k in range(num_samples):
        if num_samples > 1:
            gap = "" if k == 0 else "\n" * (2 - len(tail) + len(tail.rstrip("\n")))
            stream.write(f"{gap}--- sample {k + 1} ---\n")
        sampler.reset()
        sampler.feed(enc.ids)
        stream.write(prime)
        tail = prime[-2:]
        for ch in sampler.generate(length, temperature, top_k=top_k, top_p=top_p, stop=stop):
            stream.write(ch)
            tail = (tail + ch)[-2:]
            if flush_each:
                stream.flush()
    if flush_each:
        stream.write("\n")
    stream.flush()


def _check_sampling(temperature: float, top_k: int | None, top_p: float | None, length: int, num_samples: int) -> None:
    if not (math.isfinite(temperature) and temperature >= 0):
        raise UsageError(
            f"--temperature must be a number ≥ 0 (got {temperature:g}). Use 1 for the model's own distribution, "
            "0 for the most likely character."
        )
    if top_k is not None and top_k < 1:
        raise UsageError(f"--top-k must be at least 1 (got {top_k}). Leave it out to keep every character.")
    if top_p is not None and not 0 < top_p <= 1:
        raise UsageError(f"--top-p must be in (0, 1] (got {top_p:g}). Leave it out, or use 1, to keep every character.")
    if length < 0:
        raise UsageError(f"--length must be 0 or more (got {length}).")
    if num_samples < 1:
        raise UsageError(f"--num-samples must be at least 1 (got {num_samples}).")


def _unescape(text: str) -> str:
    """\\n, \\t, \\r and \\\\ in a command-line string → newline, tab, carriage return, backslash."""
    escapes = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in escapes:
            out.append(escapes[text[i + 1]])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _read_prime(path: Path) -> str:
    from charlm.data import read_text
    from charlm.errors import CorpusError

    if path.is_dir():
        raise UsageError(f"--prime-file {path}: is a folder. Give the path of a text file.")
    if not path.is_file():
        raise UsageError(f"--prime-file {path}: no such file. Give the path of a text file.")
    try:
        return read_text(path)
    except CorpusError as e:
        raise UsageError(f"--prime-file {e}") from None


def _listed(chars) -> str:
    """Characters for a message: 'x', '\\n', U+00A0 (ten at most)."""
    from charlm.vocab import describe_char

    names = [describe_char(c) for c in list(chars)[:10]]
    return ", ".join(names) + ("" if len(chars) <= 10 else f" and {len(chars) - 10} more")


# --------------------------------------------------------------------------- #
# perplexity
# --------------------------------------------------------------------------- #


@app.command()
@user_errors
def perplexity(
    file: Annotated[
        str, typer.Argument(help="Text file to score, a shipped corpus name (its whole text), or - for standard input.")
    ],
    checkpoint: CheckpointOption = None,
    model_name: ModelOption = None,
    encoding: Annotated[str, typer.Option(help="Text encoding of the file.")] = "utf-8",
    errors: Annotated[str, typer.Option(help="Undecodable bytes: strict or replace.")] = "strict",
    show: Annotated[
        bool,
        typer.Option(
            "--show",
            help="Also print the text with each character coloured by its surprisal −log₂ p (in bits; a legend "
            "follows the text) and list the most surprising spans, to see what the model finds hard.",
        ),
    ] = False,
    spans: Annotated[int, typer.Option("--spans", help="With --show: how many surprising spans to list, ≥ 0.")] = 5,
    span_width: Annotated[
        int, typer.Option("--span-width", help="With --show: characters per surprising span, ≥ 1.")
    ] = 12,
) -> None:
    """How well the model predicts a text: nats/char, bits/char and perplexity.

    Characters the model has never seen are left out (neither scored nor fed to
    the model); their count is reported. Colour is off when NO_COLOR is set or
    stdout is not a terminal; the span list is printed either way.
    """
    from charlm.checkpoint import load
    from charlm.corpora import resolve
    from charlm.data import encode_stream, iter_text
    from charlm.evaluate import score_ids, surprising_spans, text_surprisal
    from charlm.report import perplexity_text

    if spans < 0:
        raise UsageError(f"--spans must be 0 or more (got {spans}).")
    if span_width < 1:
        raise UsageError(f"--span-width must be at least 1 (got {span_width}).")
    ckpt = load(_checkpoint_path(checkpoint, model_name))
    source, label = (sys.stdin.buffer, "standard input") if file == "-" else (resolve(file)[0], file)
    if show:  # the heat map needs the text itself
        text = "".join(iter_text(source, label, encoding, errors))
        enc = ckpt.vocab.encode(text, unknown="skip")
    else:  # streamed, never held as a string; a long text is spooled to a temporary file
        enc = encode_stream(source, ckpt.vocab, label, encoding, errors, progress=sys.stderr.isatty())
    if len(enc.ids) < 2:
        raise CharlmError("the text has fewer than two characters the model knows; nothing to score.")
    if show:
        from charlm.report import heatmap, legend, span_lines

        nats, score = text_surprisal(ckpt.build_model(), ckpt.vocab, text)
        if out.is_terminal:  # coloured (under NO_COLOR only bold and reverse video mark the top bins)
            out.print(heatmap(text, nats), end="" if text.endswith("\n") else "\n")
        else:  # a file or a pipe gets the text exactly
            out.file.write(text if text.endswith("\n") else text + "\n")
        out.print(legend())
        if spans:
            out.print(span_lines(text, surprising_spans(nats, span_width, spans), span_width))
        out.print()
    else:
        score = score_ids(ckpt.build_model(), enc.ids, unknown=enc.unknown_count)
    out.print(f"nats/char   {score.nats_per_char:.4f}")
    out.print(f"bits/char   {score.bits_per_char:.4f}")
    out.print(f"perplexity  {perplexity_text(score.nats_per_char, 4)}")
    out.print(f"scored      {score.chars:,} characters")
    out.print(f"unknown     {score.unknown:,} characters skipped (not in the model's vocabulary)")


# --------------------------------------------------------------------------- #
# score
# --------------------------------------------------------------------------- #


@app.command()
@user_errors
def score(
    sentences: Annotated[
        list[str] | None,
        typer.Argument(metavar="SENTENCE", help="Sentences to score; quote each one.", show_default=False),
    ] = None,
    file: Annotated[
        str | None,
        typer.Option(
            "--file", "-f", metavar="PATH", help="Also score every non-blank line of this file (- for standard input)."
        ),
    ] = None,
    checkpoint: CheckpointOption = None,
    model_name: ModelOption = None,
    unknown: Annotated[
        str,
        typer.Option(
            "--unknown",
            help="Characters the model has never seen: error (stop and list them) or skip (leave them out, "
            "neither scored nor fed, with a notice on stderr).",
        ),
    ] = "error",
    as_json: Annotated[
        bool, typer.Option("--json", help="Print a JSON list, most likely first, instead of a table.")
    ] = False,
) -> None:
    """Log-probability of each sentence under the model, most likely first.

    Each sentence is scored on its own as if it started a new line: the model is
    first fed a newline (when its vocabulary has one), then every character of
    the sentence is scored, ln P(sentence) = Σ ln P(next character | the ones
    before). The table gives ln P in nats, nats/char, bits/char and P as a power
    of ten. The seeds' speech-recognition example:
    charlm score "The apple and pear salad." "The apple and pair salad."
    """
    from charlm.checkpoint import load
    from charlm.data import decode_bytes, read_text
    from charlm.evaluate import score_sentences
    from charlm.report import score_json, score_table

    if unknown not in ("error", "skip"):
        raise UsageError(f"--unknown must be 'error' or 'skip', not {unknown!r}.")
    texts = list(sentences or [])
    for i, sentence in enumerate(texts, 1):
        if not sentence:
            raise UsageError(f"sentence {i} is empty. Give at least one character, or leave it out.")
    if file is not None:
        if file != "-" and not Path(file).is_file():
            what = "is a folder" if Path(file).is_dir() else "no such file"
            raise UsageError(f"--file {file}: {what}. Give a text file with one sentence per line.")
        text = decode_bytes(sys.stdin.buffer.read(), "standard input") if file == "-" else read_text(Path(file))
        texts += [line.removesuffix("\r") for line in text.split("\n") if line.strip()]
    if not texts:
        raise UsageError("nothing to score. Give one or more sentences, or --file PATH with one sentence per line.")
    ckpt = load(_checkpoint_path(checkpoint, model_name))
    scores = score_sentences(ckpt.build_model(), ckpt.vocab, texts, unknown=unknown)
    skipped = sum(s.unknown for s in scores)
    if skipped:
        err.print(
            f"notice: left out {skipped} character(s) the model has never seen (neither scored nor fed).", markup=False
        )
    order = sorted(range(len(scores)), key=lambda i: scores[i].nats)
    ranked = [scores[i] for i in order]
    if as_json:
        sys.stdout.write(score_json(ranked, [i + 1 for i in order]) + "\n")
    else:
        out.print(score_table(ranked))


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


# --------------------------------------------------------------------------- #
# bench
# --------------------------------------------------------------------------- #


@app.command()
@user_errors
def info(
    target: Annotated[
        str,
        typer.Argument(
            help="A checkpoint file, a run folder (its best checkpoint) or a shipped model name (shakespeare, news).",
            show_default=False,
        ),
    ],
) -> None:
    """Show a checkpoint's model, training and validation-loss curve (reads the header only)."""
    from charlm.corpora import resolve_model
    from charlm.report import info_table
    from charlm.runinfo import describe

    out.print(info_table(describe(resolve_model(target))))


@app.command()
@user_errors
def export(
    source: Annotated[
        Path, typer.Argument(help="A checkpoint file or a run folder (its best checkpoint).", show_default=False)
    ],
    destination: Annotated[Path, typer.Argument(help="The .safetensors file to write.", show_default=False)],
    half: Annotated[
        bool, typer.Option("--half", help="Store the weights as float16: half the size, loaded as float32.")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace DESTINATION if it exists.")] = False,
) -> None:
    """Write a model file for sharing: weights, config, vocabulary and training history only."""
    from charlm.checkpoint import export as export_checkpoint
    from charlm.runs import checkpoint_in

    if destination.exists() and not force:
        raise UsageError(f"{destination} exists; choose another name or pass --force to replace it.")
    if not destination.parent.is_dir():
        raise UsageError(f"{destination.parent}: no such folder.")
    export_checkpoint(checkpoint_in(source), destination, half=half)
    out.print(f"wrote {destination} ({destination.stat().st_size / 1e6:.1f} MB)")


@app.command()
@user_errors
def runs(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder that holds the run folders.")] = Path("runs"),
) -> None:
    """List the runs under ./runs with their best validation loss and age."""
    from charlm.report import runs_table
    from charlm.runinfo import list_runs

    found = list_runs(out_dir)
    if not found:
        raise CharlmError(f"no runs with a checkpoint under {out_dir}. Train one: charlm train shakespeare")
    out.print(runs_table(found))


@app.command()
@user_errors
def bench(
    cell: Annotated[str, typer.Option(help="Recurrent cell to measure: lstm, gru or rnn.")] = "lstm",
    layers: Annotated[int, typer.Option(min=1, max=16, help="Stacked recurrent layers.")] = 2,
    hidden: Annotated[int, typer.Option(min=1, max=8192, help="Hidden units per layer (H).")] = 256,
    embed: Annotated[int, typer.Option(min=1, max=8192, help="Embedding width (E).")] = 64,
    batch: Annotated[int, typer.Option("--batch-size", "--batch", min=1, help="Batch rows (B) for training.")] = 32,
    seq_len: Annotated[int, typer.Option(min=1, help="Steps per chunk (T) for training.")] = 64,
    vocab: Annotated[int, typer.Option(min=2, max=65536, help="Vocabulary size of the synthetic data.")] = 65,
    windows: Annotated[int, typer.Option(min=1, max=100, help="Timed training windows; the median is reported.")] = 5,
    window_seconds: Annotated[float, typer.Option(min=0.01, help="Minimum seconds per training window.")] = 2.0,
    threads: Annotated[
        int,
        typer.Option(
            min=0, max=256, help="Row blocks trained in parallel; 0 = one per CPU core, as 'charlm train' does."
        ),
    ] = 0,
    train: Annotated[bool, typer.Option("--train/--no-train", help="Measure training throughput.")] = True,
    sample: Annotated[bool, typer.Option("--sample/--no-sample", help="Measure sampling throughput.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
) -> None:
    """Measure training and sampling throughput (characters per second) on synthetic data."""
    import json

    from charlm.bench import BenchConfig, run
    from charlm.model import CELLS

    if cell not in CELLS:
        raise UsageError(f"unknown cell {cell!r}; choose one of: {', '.join(CELLS)}.")
    _check_threads(threads, batch)
    cfg = BenchConfig(cell, layers, hidden, embed, batch, seq_len, vocab, windows, window_seconds, threads=threads)
    if not as_json:
        err.print(f"measuring {layers}×{hidden} {cell.upper()}, batch {batch} × {seq_len} steps …")
    result = run(cfg, train=train, sample=sample)
    if as_json:
        out.print_json(json.dumps(result))
        return
    from rich.table import Table

    table = Table(title=f"charlm bench: {layers}×{hidden} {cell.upper()}, E={embed}, V={vocab}")
    for col in ("measure", "chars/s (median)", "min–max", "GFLOP/s", "of GEMM peak"):
        table.add_column(col, justify="left" if col == "measure" else "right")
    for key, label in (("train", f"training, batch {batch} × {seq_len}"), ("sample", "sampling, batch 1")):
        if key in result:
            r = result[key]
            table.add_row(
                label,
                f"{r['chars_per_s']:,.0f}",
                f"{min(r['windows']):,.0f}–{max(r['windows']):,.0f}",
                f"{r['gflops']:.2f}",
                f"{100 * r['roofline_fraction']:.1f}%",
            )
    out.print(table)
    m = result["machine"]
    out.print(
        f"float32 GEMM peak {result['gemm_gflops']:.1f} GFLOP/s; {m['nproc']} CPUs; NumPy {m['numpy']} "
        f"({m['blas']}); peak RSS {result['peak_rss_mb']:.0f} MB"
    )


def run(argv: list[str] | None = None) -> int:
    """Run the command line on ``argv`` (default: sys.argv[1:]) and return the exit status.

    Click's usage errors (bad or missing option values, unknown options or
    commands) become one line on stderr, ``error: <message> (see 'charlm
    <command> --help')``, with status 2, instead of Typer's boxed panel.
    """
    try:
        from typer._click import exceptions as click_errors  # Typer ≥ 0.22 vendors Click
    except ImportError:  # pragma: no cover - older Typer on top of Click
        from click import exceptions as click_errors

    command = typer.main.get_command(app)
    try:
        status = command.main(args=argv, prog_name="charlm", standalone_mode=False)
    except click_errors.NoArgsIsHelpError as e:  # bare 'charlm': the help is the answer
        text = e.format_message()
        if text.strip():
            out.print(text, markup=False, highlight=False)
        return 2
    except click_errors.UsageError as e:
        where = e.ctx.command_path if e.ctx is not None else "charlm"
        message = " ".join(e.format_message().split())
        err.print(f"error: {message} (see '{where} --help')", markup=False)
        return 2
    except click_errors.ClickException as e:
        err.print(f"error: {' '.join(e.format_message().split())}", markup=False)
        return e.exit_code
    except (typer.Abort, KeyboardInterrupt):
        err.print("error: interrupted.", markup=False)
        return 130
    return status if isinstance(status, int) else 0


def main() -> None:
    """Console-script entry point."""
    sys.exit(run())


if __name__ == "__main__":  # pragma: no cover
    main()
