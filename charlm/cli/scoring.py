"""``charlm perplexity`` and ``charlm score``: a checkpoint and a text in, numbers out."""

import sys
from pathlib import Path
from typing import Annotated

import typer

from charlm.cli.common import (
    CheckpointOption,
    ModelOption,
    app,
    checkpoint_path,
    err,
    out,
    user_errors,
)
from charlm.errors import CharlmError, UsageError

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
    from charlm.evaluate import score_ids
    from charlm.spans import SpanConfig
    from charlm.text import iter_text

    listed = SpanConfig(spans=spans, span_width=span_width).check()
    if show and as_json:
        raise UsageError("give --show or --json, not both.")
    path = checkpoint_path(checkpoint, model_name)
    ckpt = load(path)
    form = text_form(ckpt.corpus)
    source, label = (sys.stdin.buffer, "standard input") if file == "-" else (resolve(file)[0], file)
    if ckpt.vocab.unit == "word":
        if show:
            raise UsageError("--show colours characters; a word model scores words. Drop --show.")
        _word_perplexity(ckpt, source, label, encoding, errors, form, path, as_json)
        return
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
        result = score_ids(ckpt.build_model(), enc.ids, unknown=enc.unknown_count, parallel=True)
    if as_json:
        from charlm.cli.output import print_json
        from charlm.report import perplexity_json

        print_json(perplexity_json(result, path))
    else:
        _print_score(result)


def _word_perplexity(ckpt, source, label, encoding, errors, form, path, as_json: bool) -> None:
    """A word model's figures on a text: per word, its OOV rate, and per character of the text."""
    from charlm.evaluate import score_ids
    from charlm.wordcorpus import encode_word_stream
    from charlm.wordreport import word_perplexity_json, word_perplexity_lines
    from charlm.wordvocab import describe_words

    text = encode_word_stream(source, ckpt.vocab, label, encoding, errors, form=form, progress=sys.stderr.isatty())
    if text.tokens < 1:
        raise CharlmError(f"{label}: no words in it; nothing to score.")
    if text.unknown:
        err.print(
            f"notice: read {text.unknown_count:,} token(s) the model does not know as <UNK>: "
            f"{describe_words(text.unknown, 5)}",
            markup=False,
        )
    result = score_ids(ckpt.build_model(), text.ids, unknown=text.unknown_count, parallel=True)
    if as_json:
        from charlm.cli.output import print_json

        print_json(word_perplexity_json(result, text.chars, path))
    else:
        for line in word_perplexity_lines(result, text.chars):
            out.print(line, markup=False, highlight=False)


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
    from charlm.report import heatmap, legend, span_lines
    from charlm.spans import surprising_spans, text_surprisal

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
        str | None,
        typer.Option(
            "--unknown",
            help="Characters or words the model has never seen: error (stop and list them), skip (leave them out, "
            "neither scored nor fed, with a notice on stderr) or, for word models, unk (score them as <UNK>, and "
            "name the sentences that have them on stderr). Default: unk for a word model, error for a character "
            "model.",
            show_default=False,
        ),
    ] = None,
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

    A word model is fed <EOS> first and scores each token of the sentence and the
    <EOS> that ends it, ln P(sentence) = Σ ln P(next token | the ones before); the
    table is then per word, and a word outside its vocabulary is scored as <UNK>
    (the sentences with such words are named on stderr).
    """
    from collections import Counter

    from charlm.checkpoint import load
    from charlm.config import check_unknown_policy
    from charlm.corpus import text_form
    from charlm.evaluate import UnknownCharacters, score_sentences
    from charlm.report import score_json, score_table

    if unknown is not None:
        check_unknown_policy(unknown)
    texts = _sentences(sentences or [], file)
    ckpt = load(checkpoint_path(checkpoint, model_name))
    words = ckpt.vocab.unit == "word"
    unknown = unknown or ("unk" if words else "error")
    texts = [text_form(ckpt.corpus).apply(t) for t in texts]  # read as the model's training text was
    try:
        scores = score_sentences(ckpt.build_model(), ckpt.vocab, texts, unknown=unknown)
    except UnknownCharacters as e:
        advice = "--unknown unk to score them as <UNK> or --unknown skip" if words else "--unknown skip"
        raise CharlmError(f"{e.what}. Remove them, or use {advice} to drop them.") from None
    if words:
        _name_unknown_words(ckpt.vocab, texts, unknown)
    elif any(s.unknown for s in scores):
        _say_skipped(sum((ckpt.vocab.encode(t, unknown="skip").unknown for t in texts), Counter()))
    order = sorted(range(len(scores)), key=lambda i: scores[i].nats)
    ranked = [scores[i] for i in order]
    if as_json:
        sys.stdout.write(score_json(ranked, [i + 1 for i in order], ckpt.vocab.unit) + "\n")
    else:
        out.print(score_table(ranked, ckpt.vocab.unit))


def _name_unknown_words(vocab, texts: list[str], unknown: str) -> None:
    """One line on stderr per sentence with words outside a word model's vocabulary."""
    from charlm.wordvocab import describe_words

    done = "scored as <UNK>" if unknown == "unk" else "left out"
    for i, text in enumerate(texts, 1):
        missing = vocab.encode(text).unknown
        if missing:
            err.print(
                f"notice: sentence {i} has words the model does not know, {done}: {describe_words(missing)}",
                markup=False,
            )


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
