"""Rich renderables for the CLI's results: sentence scores and surprisal heat maps.

Formatting only; the numbers come from ``charlm.evaluate``. Colour is decided by
the console that prints these: none when NO_COLOR is set or the output is not
a terminal (bold and reverse video still mark the two highest surprisal bins
under NO_COLOR on a terminal).
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence

import numpy as np
from rich.table import Table
from rich.text import Text

from charlm.evaluate import SentenceScore, Span

# Surprisal bins in bits per character: [0, 1), [1, 2), [2, 4), [4, 8), [8, ∞).
BIT_EDGES = (1.0, 2.0, 4.0, 8.0)
BIN_LABELS = ("< 1", "1–2", "2–4", "4–8", "≥ 8")
BIN_STYLES = ("green", "yellow", "dark_orange", "bold red", "bold reverse red")
UNSCORED_STYLE = "dim"
SUPERSCRIPT = str.maketrans("0123456789-", "⁰¹²³⁴⁵⁶⁷⁸⁹⁻")


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


def score_table(ranked: Sequence[SentenceScore]) -> Table:
    """Sentences, most likely first, with ln P, nats/char, bits/char and P."""
    table = Table(title="Sentences, most likely first", title_justify="left")
    table.add_column("rank", justify="right")
    table.add_column("sentence", justify="left", overflow="fold")
    table.add_column("log P (nats)", justify="right")
    table.add_column("nats/char", justify="right")
    table.add_column("bits/char", justify="right")
    table.add_column("P", justify="right")
    for rank, s in enumerate(ranked, 1):
        table.add_row(
            str(rank),
            Text(s.text),
            _num(s.log_prob, 2),
            _num(s.nats_per_char, 3),
            _num(s.bits_per_char, 3),
            power_of_ten(s.log10_prob),
        )
    return table


def score_json(ranked: Sequence[SentenceScore], index: Sequence[int]) -> str:
    """The ranked scores as a JSON list; ``index`` is each sentence's 1-based input position."""

    def finite(x: float) -> float | None:
        return x if math.isfinite(x) else None

    rows = [
        {
            "rank": rank,
            "index": i,
            "sentence": s.text,
            "log_prob_nats": finite(s.log_prob),
            "log10_prob": finite(s.log10_prob),
            "nats_per_char": finite(s.nats_per_char),
            "bits_per_char": finite(s.bits_per_char),
            "chars": s.chars,
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
