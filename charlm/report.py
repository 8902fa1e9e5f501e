"""Rich renderables for the CLI's results: tables, sentence scores, surprisal heat maps,
and the JSON objects of ``--json``.

Formatting only; the numbers come from ``charlm.evaluate`` and ``charlm.runs``. Colour
is decided by the console that prints these: none when NO_COLOR is set or the output
is not a terminal (bold and reverse video still mark the two highest surprisal bins
under NO_COLOR on a terminal).

A table never cuts a value or a header. On a terminal it is aligned columns two
spaces apart under a bold header, the last column unpadded; a line wider than the
terminal is left for the terminal to wrap. Anywhere else (a pipe, a file) it is
tab-separated values, the header first, one line per row and no title.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Container, Sequence
from dataclasses import asdict

import numpy as np
from rich.cells import cell_len
from rich.segment import Segment
from rich.style import Style
from rich.text import Text

from charlm.config import UNIT_NAMES
from charlm.evaluate import SentenceScore
from charlm.spans import Span
from charlm.wordreport import corpus_text, vocabulary_text

# Surprisal bins in bits per character: [0, 1), [1, 2), [2, 4), [4, 8), [8, ∞).
BIT_EDGES = (1.0, 2.0, 4.0, 8.0)
BIN_LABELS = ("< 1", "1–2", "2–4", "4–8", "≥ 8")
BIN_STYLES = ("green", "yellow", "dark_orange", "bold red", "bold reverse red")
UNSCORED_STYLE = "dim"
SUPERSCRIPT = str.maketrans("0123456789-", "⁰¹²³⁴⁵⁶⁷⁸⁹⁻")


def perplexity_text(nats_per_char: float, decimals: int = 3) -> str:
    """exp(nats/char) with ``decimals`` places, in scientific notation once it
    passes a million (an untrained or diverged model), "inf" past the float range."""
    if not nats_per_char < 709.0:
        return "inf"
    value = math.exp(nats_per_char)
    return f"{value:.{decimals}f}" if value < 1e6 else f"{value:.{decimals}e}"


def power_of_ten(log10_p: float) -> str:
    """10 ** log10_p written as the seeds do: 3.2 × 10⁻¹³."""
    if not math.isfinite(log10_p):
        return "0" if log10_p < 0 else "–"
    exponent = math.floor(log10_p)
    mantissa = 10.0 ** (log10_p - exponent)
    if round(mantissa, 1) >= 10.0:
        mantissa, exponent = 1.0, exponent + 1
    return f"{mantissa:.1f} × 10{str(exponent).translate(SUPERSCRIPT)}"


def _num(x: float, digits: int) -> str:
    return f"{x:.{digits}f}" if math.isfinite(x) else "–"


def _finite(x: float) -> float | None:
    """x, or None (JSON null) for inf and nan, which JSON cannot write."""
    return x if math.isfinite(x) else None


def _one_line(value: object) -> str:
    """A table cell: tabs and line breaks become spaces (they would split a TSV row)."""
    return " ".join(str(value).replace("\t", " ").splitlines())


class PlainTable:
    """Rows under a header that never cut a value: aligned on a terminal, tab-separated
    elsewhere (see the module docstring). Columns in ``right`` are right-aligned."""

    def __init__(
        self,
        header: Sequence[str],
        rows: Sequence[Sequence[object]],
        right: Container[int] = (),
        title: str | None = None,
    ) -> None:
        self.header = [_one_line(h) for h in header]
        self.rows = [[_one_line(v) for v in row] for row in rows]
        self.right, self.title = right, title

    def tsv(self) -> str:
        return "".join("\t".join(row) + "\n" for row in [self.header, *self.rows])

    def aligned(self) -> list[str]:
        """The header and the rows as lines, columns two spaces apart, no trailing spaces."""
        widths = [max(cell_len(row[i]) for row in [self.header, *self.rows]) for i in range(len(self.header))]
        lines = []
        for row in [self.header, *self.rows]:
            cells = [
                " " * (w - cell_len(v)) + v if i in self.right else v + " " * (w - cell_len(v))
                for i, (v, w) in enumerate(zip(row, widths, strict=True))
            ]
            lines.append("  ".join(cells).rstrip())
        return lines

    def __rich_console__(self, console, options):
        # Segments are written as they are: rich neither wraps, crops nor expands tabs in them.
        if not console.is_terminal:
            yield Segment(self.tsv())
            return
        bold = Style(bold=True)
        head, *body = self.aligned()
        for text, style in [(self.title, bold)] * bool(self.title) + [(head, bold)] + [(line, None) for line in body]:
            yield Segment(text, style)
            yield Segment.line()


class Fields:
    """``name  value`` lines, the values aligned, the names bold on a terminal; nothing cut,
    no trailing spaces, on a terminal or not."""

    def __init__(self, fields: Sequence[tuple[str, object]]) -> None:
        self.fields = [(name, _one_line(value)) for name, value in fields]

    def __rich_console__(self, console, options):
        width = max((cell_len(name) for name, _ in self.fields), default=0)
        bold = Style(bold=True) if console.is_terminal else None
        for name, value in self.fields:
            yield Segment(name, bold)
            yield Segment((" " * (width - cell_len(name) + 2) + value).rstrip())
            yield Segment.line()


def score_table(ranked: Sequence[SentenceScore], unit: str = "char") -> PlainTable:
    """Sentences, most likely first, with ln P, nats and bits per char (per word for a word
    model) and P; the sentence last, so that a long one is never squeezed into a narrow column."""
    rows = [
        (
            rank,
            _num(s.log_prob, 2),
            _num(s.nats_per_char, 3),
            _num(s.bits_per_char, 3),
            power_of_ten(s.log10_prob),
            s.text,
        )
        for rank, s in enumerate(ranked, 1)
    ]
    one = UNIT_NAMES[unit].one
    header = ("rank", "log P (nats)", f"nats/{one}", f"bits/{one}", "P", "sentence")
    return PlainTable(header, rows, right=range(5), title="Sentences, most likely first")


def score_json(ranked: Sequence[SentenceScore], index: Sequence[int], unit: str = "char") -> str:
    """The ranked scores as a JSON list; ``index`` is each sentence's 1-based input position. A word
    model's per-symbol fields are per word: nats_per_word, bits_per_word, tokens."""
    u = UNIT_NAMES[unit]

    rows = [
        {
            "rank": rank,
            "index": i,
            "sentence": s.text,
            "log_prob_nats": _finite(s.log_prob),
            "log10_prob": _finite(s.log10_prob),
            f"nats_per_{u.one}": _finite(s.nats_per_char),
            f"bits_per_{u.one}": _finite(s.bits_per_char),
            "chars" if unit == "char" else "tokens": s.chars,
            "unknown": s.unknown,
        }
        for rank, (s, i) in enumerate(zip(ranked, index, strict=True), 1)
    ]
    return json.dumps(rows, ensure_ascii=False, indent=2)


def surprisal_bins(nats: np.ndarray) -> np.ndarray:
    """Bin index (0–4) of each character's surprisal, len(BIN_STYLES) where not scored."""
    bins = np.digitize(nats / math.log(2), BIT_EDGES)
    bins[np.isnan(nats)] = len(BIN_STYLES)
    return bins


def heatmap(text: str, nats: np.ndarray) -> Text:
    """``text`` with each character styled by its surprisal bin; one span per run of equal bins."""
    styles = (*BIN_STYLES, UNSCORED_STYLE)
    bins = surprisal_bins(nats)
    out = Text(no_wrap=False)
    if not text:
        return out
    cuts = [0, *(np.flatnonzero(bins[1:] != bins[:-1]) + 1).tolist(), len(text)]
    for a, b in itertools.pairwise(cuts):
        out.append(text[a:b], style=styles[int(bins[a])])
    return out


def legend() -> Text:
    """Which style is which bin: surprisal −log₂ p in bits."""
    out = Text("surprisal −log₂ p per character, bits: ")
    for label, style in zip(BIN_LABELS, BIN_STYLES, strict=True):
        out.append(f" {label} ", style=style)
        out.append(" ")
    out.append(" not scored ", style=UNSCORED_STYLE)
    return out


def span_lines(text: str, spans: Sequence[Span], width: int) -> Text:
    """The most surprising spans with line, column, offset and mean bits/char."""
    if not spans:
        return Text("no scored characters, so no surprising spans.")
    out = Text(f"most surprising {width}-character spans (mean bits/char over scored characters):")
    for rank, sp in enumerate(spans, 1):
        line = text.count("\n", 0, sp.start) + 1
        col = sp.start - (text.rfind("\n", 0, sp.start) + 1) + 1
        where = f"line {line}, col {col} (offset {sp.start})"
        out.append(f"\n{rank:3d}. {where:<32} {sp.bits_per_char:6.2f} bits/char  ")
        out.append(json.dumps(text[sp.start : sp.end], ensure_ascii=False))
    return out


# --------------------------------------------------------------------------- #
# Run views
# --------------------------------------------------------------------------- #

SPARK = "▁▂▃▄▅▆▇█"


def sparkline(values: Sequence[float], width: int = 60) -> str:
    """Values as a row of block characters (▁ lowest … █ highest), resampled to
    at most ``width`` points; non-finite values are shown as spaces."""
    vals = [float(v) for v in values]
    if not vals:
        return ""
    if len(vals) > width:
        idx = np.linspace(0, len(vals) - 1, width).round().astype(int)
        vals = [vals[i] for i in idx]
    finite = [v for v in vals if math.isfinite(v)]
    if not finite:
        return " " * len(vals)
    lo, hi = min(finite), max(finite)
    span = hi - lo
    out = []
    for v in vals:
        if not math.isfinite(v):
            out.append(" ")
        elif span == 0:
            out.append(SPARK[0])
        else:
            out.append(SPARK[min(len(SPARK) - 1, int((v - lo) / span * len(SPARK)))])
    return "".join(out)


def human_count(n: int) -> str:
    """A count for people: 45,056 below a million, 7.7M above."""
    return f"{n:,}" if n < 1_000_000 else f"{n / 1e6:.1f}M"


def human_duration(seconds: float) -> str:
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f}s"
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    d, h = divmod(h, 24)
    if d:
        return f"{d}d{h:02d}h"
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def info_fields(info, width: int = 80) -> Fields:
    """Everything ``charlm info`` shows about one checkpoint (a runs.RunInfo); the
    validation curve's sparkline is made narrow enough for lines of ``width``."""
    cfg, tr = info.config, info.state
    fields = [("checkpoint", f"{info.path} ({info.file_bytes / 1e6:.1f} MB)")]
    model = f"{cfg.layers}×{cfg.hidden} {cfg.cell.upper()}, embedding {cfg.embed}, dropout {cfg.dropout}"
    if cfg.cell == "lstm":  # written before the setting existed: initialised with 1 (see ModelConfig.from_dict)
        model += f", initial forget-gate bias {cfg.forget_bias:g}"
    u = UNIT_NAMES[info.unit]
    fields += [("model", model), ("parameters", f"{info.params:,}"), ("unit", u.one)]
    fields.append(("vocabulary", vocabulary_text(info)))
    if info.corpus is not None:
        fields.append(("corpus", corpus_text(info.corpus)))
    if tr is not None:
        seen = f"{human_count(tr.chars_seen)} {u.many} seen"
        fields.append(("training", f"{tr.step:,} steps, {seen}, {human_duration(tr.elapsed)}"))
    best = info.best_val
    if math.isfinite(best):
        fields.append(
            (
                "best validation",
                f"{best:.4f} nats/{u.one}, {best / math.log(2):.4f} bits/{u.one}, perplexity {perplexity_text(best)} "
                f"(step {tr.best_step:,})",
            )
        )
    if info.val_curve:
        vals = [v for _, v in info.val_curve]
        finite = [v for v in vals if math.isfinite(v)]
        rng = f"  {max(finite):.3f} → {min(finite):.3f}" if finite else ""
        rest = f"{rng}  ({len(vals)} evaluations)"
        room = width - len("validation curve  ") - len(rest)
        fields.append(("validation curve", f"{sparkline(vals, max(10, min(60, room)))}{rest}"))
    if info.warmed_up:
        fields.append(("sampling", "warmed-up state stored: an unprompted sample starts at once"))
    return Fields(fields)


def runs_table(infos) -> PlainTable:
    """``charlm runs``: one row per run folder, newest first."""
    rows = []
    for r in infos:
        if r.broken is not None:  # a checkpoint that cannot be read (runs.BrokenRun)
            rows.append((r.path.parent, f"broken: {r.broken}", "–", "–", "–", human_duration(r.age_seconds) + " ago"))
            continue
        cfg, best = r.config, r.best_val
        word = f", word, V={r.vocab_size:,}" if r.unit == "word" else ""
        rows.append(
            (
                r.path.parent,
                f"{cfg.layers}×{cfg.hidden} {cfg.cell.upper()}{word}",
                f"{best:.4f}" if math.isfinite(best) else "–",
                f"{best / math.log(2):.4f}" if math.isfinite(best) else "–",
                f"{r.state.step if r.state is not None else 0:,}",
                human_duration(r.age_seconds) + " ago",
            )
        )
    per = "char" if all(getattr(r, "unit", "char") == "char" for r in infos) else "unit"  # a word run: per word
    header = ("run", "model", f"best val nats/{per}", f"bits/{per}", "steps", "age")
    return PlainTable(header, rows, right=range(2, 6), title="Runs (newest first)")


# --------------------------------------------------------------------------- #
# --json: the objects are documented in the README (perplexity, info, runs)
# --------------------------------------------------------------------------- #


def perplexity_json(result, checkpoint) -> dict:
    """``charlm perplexity --json``: the model's loss on the text (an evaluate.Score)."""
    return {
        "checkpoint": str(checkpoint),
        "nats_per_char": _finite(result.nats_per_char),
        "bits_per_char": _finite(result.bits_per_char),
        "perplexity": _finite(result.perplexity),
        "chars": result.chars,
        "unknown": result.unknown,
    }


def _best_val(info) -> dict | None:
    best = info.best_val
    if not math.isfinite(best):
        return None
    step = info.state.best_step if info.state is not None else None
    perplexity = math.exp(best) if best < 709.0 else None  # past that exp overflows a float
    return {"nats_per_char": best, "bits_per_char": best / math.log(2), "perplexity": perplexity, "step": step}


def info_json(info) -> dict:
    """``charlm info --json``: one checkpoint (a runs.RunInfo)."""
    tr, c = info.state, info.corpus
    corpus = None if c is None else {"name": c.name, "chars": c.chars, "val_chars": c.val_chars, "sha256": c.sha256}
    if c is not None and c.tokens is not None:  # a word model's text
        corpus.update(tokens=c.tokens, val_tokens=c.val_tokens, unknown_tokens=c.unknown_tokens)
    training = None
    if tr is not None:
        training = {
            "steps": tr.step,
            "total_steps": tr.total_steps,
            "chars_seen": tr.chars_seen,
            "seconds": tr.elapsed,
            "train_seconds": tr.train_seconds,
        }
    return {
        "checkpoint": str(info.path),
        "file_bytes": info.file_bytes,
        "model": asdict(info.config),
        "params": info.params,
        "vocab_size": info.vocab_size,
        "unit": info.unit,
        "corpus": corpus,
        "training": training,
        "best_val": _best_val(info),
        "val_curve": [[int(step), _finite(v)] for step, v in (info.val_curve or [])],
        "warmed_up": info.warmed_up,
    }


def runs_json(infos) -> list[dict]:
    """``charlm runs --json``: one object per run folder, newest first; a run whose
    checkpoint cannot be read has ``broken`` (why) and nulls for what it would say."""
    return [
        {
            "run": str(r.path.parent),
            "checkpoint": str(r.path),
            "broken": r.broken,
            "model": None if r.broken else asdict(r.config),
            "unit": None if r.broken else r.unit,
            "params": None if r.broken else r.params,
            "steps": None if r.broken else r.state.step if r.state is not None else 0,
            "best_val": None if r.broken else _best_val(r),
            "corpus": None if r.broken or r.corpus is None else r.corpus.name,
            "modified": r.modified,
            "age_seconds": r.age_seconds,
        }
        for r in infos
    ]
