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
        int | None,
        typer.Option(
            "--length",
            "-n",
            help="Characters to generate per sample, not counting the prime; 0 to 10^15. For a word model, tokens: "
            "words, numbers, punctuation marks and sentence ends (<EOS>). Default: 200; with --sentences, up to "
            "1,000 tokens or 10,000 characters per sentence.",
            show_default=False,
        ),
    ] = None,
    sentences: Annotated[
        int | None,
        typer.Option(
            "--sentences",
            metavar="N",
            help="End each sample after N sentences, N ≥ 1: for a word model N <EOS> tokens, for a character "
            "model N sentence ends (. ! or ? before a space or line break, or a blank line). --length still caps it.",
        ),
    ] = None,
    no_unk: Annotated[
        bool,
        typer.Option(
            "--no-unk",
            help="Word models: never print <UNK>; whenever it would be drawn, the draw is made again among the "
            "other tokens (the notes' remedy).",
        ),
    ] = False,
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
        str | None,
        typer.Option(
            "--unknown",
            help="Prime characters or words the model has never seen: error (stop and list them), skip (drop "
            "them, with a notice on stderr; a character model's prime is printed without them) or, for word models, "
            "unk (read them as <UNK>, with a notice on stderr). Default: unk for a word model, error for a character "
            "model.",
            show_default=False,
        ),
    ] = None,
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

    A word model (trained with --unit word) samples token by token and prints one
    sentence per line, punctuation attached, sentence starts capitalised.

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
        length=200 if length is None else length,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
        stop=None if stop is None else unescape(stop),
        num_samples=num_samples,
        unknown="error" if unknown is None else unknown,
        sentences=sentences,
        no_unk=no_unk,
    ).check()
    prime, label = _prime_text(prime, prime_file)
    ckpt = load(checkpoint_path(checkpoint, model_name), with_extra=False)  # weights and warmed state only
    words = ckpt.vocab.unit == "word"
    if unknown is None and words:
        config = replace(config, unknown="unk")
    if length is None and sentences is not None:  # a cap, so that a model that never ends a sentence stops
        config = replace(config, length=sentences * (1_000 if words else 10_000))
    form = text_form(ckpt.corpus)  # the prime is read as the model's training text was
    prime = form.apply(prime)
    if config.stop is not None:
        config = replace(config, stop=form.apply(config.stop))
    sampler = Sampler(ckpt.build_model(), ckpt.vocab, config, ckpt.warmed)  # refuses word options for characters
    if words:
        ids = _encode_word_prime(ckpt.vocab, prime, label, config.unknown)
        _write_samples(sampler, ids, prime, _detokenizer(ckpt.vocab, prime, ids))
        return
    ids, prime = _encode_prime(ckpt.vocab, prime, label, config.unknown)
    if config.stop is not None and any(ch not in ckpt.vocab for ch in config.stop):
        missing = {ch: 1 for ch in config.stop if ch not in ckpt.vocab}
        err.print(
            f"warning: --stop contains {_listed(missing)}, which the model never generates; "
            "every sample runs to --length.",
            markup=False,
        )
    _write_samples(sampler, ids, prime)


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


def _encode_word_prime(vocab, prime: str, label: str, unknown: str):
    """A word model's prime as ids (its last sentence left open, to be continued): words the
    model does not know are read as <UNK> under --unknown unk, dropped under skip (said on
    stderr either way), refused under error. The prime is printed as given."""
    from charlm.wordvocab import UNK_ID, describe_words

    enc = vocab.encode(prime, unknown="unk", end=False)
    if not enc.unknown:
        return enc.ids
    listed = describe_words(enc.unknown)
    if unknown == "error":
        raise CharlmError(
            f"{label}: {enc.unknown_count} word(s) not in the model's vocabulary: {listed}. Remove them, or use "
            "--unknown unk to read them as <UNK> or --unknown skip to drop them."
        )
    if unknown == "skip":
        err.print(
            f"notice: dropped {enc.unknown_count} word(s) of the prime the model does not know: {listed}.", markup=False
        )
        return enc.ids[enc.ids != UNK_ID]
    err.print(f"notice: read {enc.unknown_count} word(s) of the prime as <UNK>: {listed}.", markup=False)
    return enc.ids


def _detokenizer(vocab, prime: str, ids):
    """A new Detokenizer per sample that prints a word model's tokens after ``prime``: a
    capital after a finished sentence (of a lower-cased model), a space unless the prime
    ends with whitespace."""
    from charlm.words import Detokenizer

    ended = len(ids) == 0 or int(ids[-1]) == vocab.boundary_id
    return lambda: Detokenizer(vocab.lowercase, at_start=ended, no_space=not prime or prime[-1].isspace())


def _write_samples(sampler, ids, prime: str, detokenizer=None) -> None:
    """Each sample to stdout as it is generated: the prime, then its continuation;
    with several, each under a '--- sample K ---' line, one blank line apart.
    ``detokenizer``: makes a word model's Detokenizer, which prints its tokens."""
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
        pieces = sampler.generate()
        if detokenizer is not None:
            pieces = map(detokenizer().piece, pieces)
        for ch in pieces:
            stream.write(ch)
            tail = (tail + ch)[-2:]
            if flush_each or ch.endswith("\n"):  # a terminal sees each character, a pipe or file each line
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
