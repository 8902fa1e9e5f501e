"""``charlm sample``, ``perplexity`` and ``score``: a checkpoint in, text or numbers out."""

from __future__ import annotations

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
    out,
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
    ckpt = load(checkpoint_path(checkpoint, model_name))
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
    _write_samples(Sampler(ckpt.build_model(), ckpt.vocab, config), ids, prime)


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
            if flush_each:
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
    as_json: Annotated[
        bool, typer.Option("--json", help="Print a JSON object instead of the five lines (fields in the README).")
    ] = False,
) -> None:
    """How well the model predicts a text: nats/char, bits/char and perplexity.

    The text is read as the model's training text was (NFC-normalized, \\r\\n as
    \\n, when its checkpoint says so). Characters the model has never seen are left
    out (neither scored nor fed to the model); their count is reported, and they are
    listed on stderr. Colour is off when NO_COLOR is set or stdout is not a terminal;
    the span list is printed either way.
    """
    from charlm.checkpoint import load
    from charlm.corpora import resolve
    from charlm.corpus import text_form
    from charlm.data import encode_stream
    from charlm.evaluate import SpanConfig, score_ids
    from charlm.text import iter_text

    listed = SpanConfig(spans=spans, span_width=span_width).check()
    if show and as_json:
        raise UsageError("give --show or --json, not both.")
    path = checkpoint_path(checkpoint, model_name)
    ckpt = load(path)
    form = text_form(ckpt.corpus)
    source, label = (sys.stdin.buffer, "standard input") if file == "-" else (resolve(file)[0], file)
    if show:  # the heat map needs the text itself
        text = "".join(iter_text(source, label, encoding, errors, form=form))
        enc = ckpt.vocab.encode(text, unknown="skip")
    else:  # streamed, never held as a string; a long text is spooled to a temporary file
        enc = encode_stream(source, ckpt.vocab, label, encoding, errors, form=form, progress=sys.stderr.isatty())
    if len(enc.ids) < 2:
        from charlm.vocab import describe_counts

        skipped = f" (it has {describe_counts(enc.unknown)})" if enc.unknown else ""
        raise CharlmError(f"the text has fewer than two characters the model knows{skipped}; nothing to score.")
    _say_skipped(enc.unknown)
    if show:
        result = _show_surprisal(ckpt, text, listed)
    else:
        result = score_ids(ckpt.build_model(), enc.ids, unknown=enc.unknown_count)
    if as_json:
        from charlm.cli.output import print_json
        from charlm.report import perplexity_json

        print_json(perplexity_json(result, path))
    else:
        _print_score(result)


def _say_skipped(unknown) -> None:
    """One line on stderr naming the characters left out, with their counts, most frequent first."""
    from charlm.vocab import describe_counts

    if unknown:
        err.print(
            f"notice: skipped {sum(unknown.values()):,} character(s) the model has never seen: "
            f"{describe_counts(unknown)}",
            markup=False,
        )


def _show_surprisal(ckpt, text: str, listed):
    """Print the text coloured by surprisal, the legend and the most surprising spans; return the Score."""
    from charlm.evaluate import surprising_spans, text_surprisal
    from charlm.report import heatmap, legend, span_lines

    nats, result = text_surprisal(ckpt.build_model(), ckpt.vocab, text)
    if out.is_terminal:  # coloured (under NO_COLOR only bold and reverse video mark the top bins)
        out.print(heatmap(text, nats), end="" if text.endswith("\n") else "\n")
    else:  # a file or a pipe gets the text exactly
        out.file.write(text if text.endswith("\n") else text + "\n")
    out.print(legend())
    if listed.spans:
        found = surprising_spans(nats, listed.span_width, listed.spans)
        out.print(span_lines(text, found, listed.span_width))
    out.print()
    return result


def _print_score(result) -> None:
    """A Score as five aligned lines."""
    from charlm.report import perplexity_text

    out.print(f"nats/char   {result.nats_per_char:.4f}")
    out.print(f"bits/char   {result.bits_per_char:.4f}")
    out.print(f"perplexity  {perplexity_text(result.nats_per_char, 4)}")
    out.print(f"scored      {result.chars:,} characters")
    out.print(f"unknown     {result.unknown:,} characters skipped (not in the model's vocabulary)")


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
    charlm score -m news "The apple and pear salad." "The apple and pair salad."
    A model knows only its corpus: the news corpus has pair and never pear, so
    the news model prefers pair.
    """
    from collections import Counter

    from charlm.checkpoint import load
    from charlm.config import check_unknown_policy
    from charlm.corpus import text_form
    from charlm.evaluate import UnknownCharacters, score_sentences
    from charlm.report import score_json, score_table

    check_unknown_policy(unknown)
    texts = _sentences(sentences or [], file)
    ckpt = load(checkpoint_path(checkpoint, model_name))
    texts = [text_form(ckpt.corpus).apply(t) for t in texts]  # read as the model's training text was
    try:
        scores = score_sentences(ckpt.build_model(), ckpt.vocab, texts, unknown=unknown)
    except UnknownCharacters as e:
        raise CharlmError(f"{e.what}. Remove them, or use --unknown skip to drop them.") from None
    if any(s.unknown for s in scores):
        _say_skipped(sum((ckpt.vocab.encode(t, unknown="skip").unknown for t in texts), Counter()))
    order = sorted(range(len(scores)), key=lambda i: scores[i].nats)
    ranked = [scores[i] for i in order]
    if as_json:
        sys.stdout.write(score_json(ranked, [i + 1 for i in order]) + "\n")
    else:
        out.print(score_table(ranked))


def _sentences(given: list[str], file: str | None) -> list[str]:
    """The sentences given, then every non-blank line of --file (- for standard input)."""
    from charlm.text import decode_bytes, read_text

    texts = list(given)
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
    return texts
