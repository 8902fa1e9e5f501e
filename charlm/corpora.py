"""The corpora shipped with charlm, found by name from a wheel or a checkout."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SHIPPED = {
    "shakespeare": ("shakespeare.txt", "Tiny Shakespeare (karpathy/char-rnn), public domain"),
    "news": (
        "news.txt",
        "English Wikinews 2019–2021, © Wikinews contributors, CC BY 2.5 (see NEWS-ATTRIBUTION.md)",
    ),
}


def corpus_dir() -> Path:
    """charlm/corpora inside an installed wheel; the checkout's corpora/ otherwise."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "corpora", here.parent / "corpora"):
        if (candidate / "shakespeare.txt").is_file():
            return candidate
    return here / "corpora"


@dataclass(frozen=True)
class ShippedCorpus:
    name: str
    path: Path
    description: str


def shipped() -> list[ShippedCorpus]:
    d = corpus_dir()
    return [ShippedCorpus(n, d / f, desc) for n, (f, desc) in SHIPPED.items()]


def resolve(name_or_path: str) -> tuple[Path, str]:
    """A path or a shipped corpus name → (path, run name). A file that exists
    wins over a shipped name of the same spelling."""
    p = Path(name_or_path)
    if p.exists() or name_or_path not in SHIPPED:
        return p, p.stem or "corpus"
    return corpus_dir() / SHIPPED[name_or_path][0], name_or_path


# Pretrained models: charlm/models/NAME.safetensors in an installed wheel,
# models/NAME.safetensors in a checkout, each with the corpus and unit a model like it
# is trained on (the Makefile's "shipped models" has the exact settings). A model
# argument is resolved to one of them, a run or a file by charlm.runs.find_model.
SHIPPED_MODEL_SOURCES = {  # name → (corpus, unit)
    "shakespeare": ("shakespeare", "char"),
    "news": ("news", "char"),
    "news-words": ("news", "word"),  # the lecture notes' word-level model
}
SHIPPED_MODELS = tuple(SHIPPED_MODEL_SOURCES)


def shipped_models_text() -> str:
    """The shipped models' names as a sentence lists them: "a, b and c"."""
    *rest, last = SHIPPED_MODELS
    return f"{', '.join(rest)} and {last}" if rest else last


def shipped_model(name: str) -> Path | None:
    """The shipped pretrained model called ``name``, or None when it is not installed."""
    here = Path(__file__).resolve().parent
    for folder in (here / "models", here.parent / "models"):
        if (folder / f"{name}.safetensors").is_file():
            return folder / f"{name}.safetensors"
    return None
