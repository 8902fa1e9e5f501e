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


def info_table(info) -> Table:
    """Everything ``charlm info`` shows about one checkpoint (a runs.RunInfo)."""
    cfg, tr = info.config, info.state
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("checkpoint", f"{info.path} ({info.file_bytes / 1e6:.1f} MB)")
    model = f"{cfg.layers}×{cfg.hidden} {cfg.cell.upper()}, embedding {cfg.embed}, dropout {cfg.dropout}"
    if cfg.cell == "lstm":  # written before the setting existed: initialised with 1 (see ModelConfig.from_dict)
        model += f", initial forget-gate bias {cfg.forget_bias:g}"
    table.add_row("model", model)
    table.add_row("parameters", f"{info.params:,}")
    table.add_row("vocabulary", f"{info.vocab_size} characters")
    if info.corpus is not None:
        c = info.corpus
        text = f"{c.name or '?'}, {c.chars or 0:,} characters"
        if c.val_chars:
            text += f" ({c.val_chars:,} held out)"
        table.add_row("corpus", text)
    if tr is not None:
        table.add_row(
            "training",
            f"{tr.step:,} steps, {tr.chars_seen / 1e6:.1f}M characters seen, {human_duration(tr.elapsed)}",
        )
    best = info.best_val
    if math.isfinite(best):
        table.add_row(
            "best validation",
            f"{best:.4f} nats/char, {best / math.log(2):.4f} bits/char, perplexity {perplexity_text(best)} "
            f"(step {tr.best_step:,})",
        )
    if info.val_curve:
        vals = [v for _, v in info.val_curve]
        finite = [v for v in vals if math.isfinite(v)]
        rng = f"  {max(finite):.3f} → {min(finite):.3f}" if finite else ""
        table.add_row("validation curve", f"{sparkline(vals)}{rng}  ({len(vals)} evaluations)")
    return table


def runs_table(infos) -> Table:
    """``charlm runs``: one row per run folder."""
    infos = list(infos)
    table = Table(title="Runs (newest first)")
    # The run folder is what the user types next, so it is never cut short.
    table.add_column("run", no_wrap=True, min_width=max((len(str(r.path.parent)) for r in infos), default=3))
    for col in ("model", "best val nats/char", "bits/char", "steps", "age"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for r in infos:
        cfg = r.config
        best = r.best_val
        table.add_row(
            str(r.path.parent),
            f"{cfg.layers}×{cfg.hidden} {cfg.cell.upper()}",
            f"{best:.4f}" if math.isfinite(best) else "–",
            f"{best / math.log(2):.4f}" if math.isfinite(best) else "–",
            f"{r.state.step if r.state is not None else 0:,}",
            human_duration(r.age_seconds) + " ago",
        )
    return table
