"""``charlm sample``: a checkpoint in, text out."""

import sys
from pathlib import Path
from typing import Annotated

import typer

from charlm.cli.common import (
    CheckpointOption,
    ModelOption,
    app,
    checkpoint_path,
    cli_message,
    err,
    user_errors,
)
from charlm.errors import CharlmError, UsageError

# --------------------------------------------------------------------------- #
# sample
# --------------------------------------------------------------------------- #


@app.command()
@user_errors
def sample(
    checkpoint: CheckpointOption = None,
    model_name: ModelOption = None,
    length: Annotated[
        int,
        typer.Option("--length", "-n", help="Characters to generate per sample, not counting the prime; 0 to 10^15."),
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
    from dataclasses import replace

    from charlm.checkpoint import load
    from charlm.config import SampleConfig
    from charlm.corpus import text_form
    from charlm.sample import Sampler

    config = SampleConfig(
        length=length,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
        stop=None if stop is None else unescape(stop),
        num_samples=num_samples,
        unknown=unknown,
    ).check()
    prime, label = _prime_text(prime, prime_file)
    ckpt = load(checkpoint_path(checkpoint, model_name), with_extra=False)  # weights and warmed state only
    form = text_form(ckpt.corpus)  # the prime is read as the model's training text was
    prime = form.apply(prime)
    if config.stop is not None:
        config = replace(config, stop=form.apply(config.stop))
    ids, prime = _encode_prime(ckpt.vocab, prime, label, config.unknown)
    if config.stop is not None and any(ch not in ckpt.vocab for ch in config.stop):
        missing = {ch: 1 for ch in config.stop if ch not in ckpt.vocab}
        err.print(
            f"warning: --stop contains {_listed(missing)}, which the model never generates; "
            "every sample runs to --length.",
            markup=False,
        )
    _write_samples(Sampler(ckpt.build_model(), ckpt.vocab, config, ckpt.warmed), ids, prime)


def _prime_text(prime: str, prime_file: Path | None) -> tuple[str, str]:
    """The prime and the option it came from, for messages."""
    if prime and prime_file is not None:
        raise UsageError("give --prime or --prime-file, not both.")
    if prime_file is None:
        return prime, "--prime"
    return _read_prime(prime_file), f"--prime-file {prime_file}"


def _encode_prime(vocab, prime: str, label: str, unknown: str):
    """The prime's ids and the prime as printed: without the characters the model
    has never seen under --unknown skip (said on stderr), refused under error."""
    enc = vocab.encode(prime, unknown="skip")
    if not enc.unknown:
        return enc.ids, prime
    if unknown == "error":
        raise CharlmError(
            f"{label}: {_not_in_vocabulary(enc.unknown)}. Remove them, or use --unknown skip to drop them."
        )
    err.print(
        f"notice: dropped {enc.unknown_count} character(s) of the prime that the model has never seen: "
        f"{_listed(enc.unknown)}.",
        markup=False,
    )
    return enc.ids, vocab.decode(enc.ids)


def _write_samples(sampler, ids, prime: str) -> None:
    """Each sample to stdout as it is generated: the prime, then its continuation;
    with several, each under a '--- sample K ---' line, one blank line apart."""
    num_samples = sampler.config.num_samples
    stream = sys.stdout
    flush_each = stream.isatty()
    tail = ""  # the last two characters written: samples are separated by exactly one blank line
    for k in range(num_samples):
        if num_samples > 1:
            gap = "" if k == 0 else "\n" * (2 - len(tail) + len(tail.rstrip("\n")))
            stream.write(f"{gap}--- sample {k + 1} ---\n")
        sampler.reset()
        sampler.feed(ids)
        stream.write(prime)
        tail = prime[-2:]
        for ch in sampler.generate():
            stream.write(ch)
            tail = (tail + ch)[-2:]
            if flush_each or ch == "\n":  # a terminal sees each character, a pipe or file each line
                stream.flush()
    if flush_each:
        stream.write("\n")
    stream.flush()


def unescape(text: str) -> str:
    """\\n, \\t, \\r and \\\\ in a command-line string → newline, tab, carriage return, backslash."""
    import re

    escapes = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}
    return re.sub(r"\\([ntr\\])", lambda m: escapes[m.group(1)], text)  # left to right: \\n is \ then n


def _read_prime(path: Path) -> str:
    from charlm.errors import CorpusError
    from charlm.text import read_text

    if path.is_dir():
        raise UsageError(f"--prime-file {path}: is a folder. Give the path of a text file.")
    if not path.is_file():
        raise UsageError(f"--prime-file {path}: no such file. Give the path of a text file.")
    try:
        return read_text(path)
    except CorpusError as e:
        raise UsageError(f"--prime-file {cli_message(e)}") from None


def _not_in_vocabulary(missing) -> str:
    """'3 character(s) not in the model's vocabulary: '€', 'Z'' for a Counter of characters."""
    return f"{sum(missing.values())} character(s) not in the model's vocabulary: {_listed(dict(missing.most_common()))}"


def _listed(chars) -> str:
    """Characters for a message: 'x', '\\n', U+00A0 (ten at most)."""
    from charlm.vocab import describe_char

    names = [describe_char(c) for c in list(chars)[:10]]
    return ", ".join(names) + ("" if len(chars) <= 10 else f" and {len(chars) - 10} more")
