from __future__ import annotations

import os
from pathlib import Path

import pytest

from charlm.checkpoint import save
from charlm.model import CharModel, ModelConfig
from charlm.vocab import Vocab

SMALL_TEXT = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\n"
    "All:\nSpeak, speak.\n\nFirst Citizen:\nYou are all resolved rather to die than to famish?\n\n"
    "All:\nResolved. resolved.\n\n"
) * 12


@pytest.fixture
def small_corpus(tmp_path: Path) -> Path:
    p = tmp_path / "small.txt"
    p.write_text(SMALL_TEXT, encoding="utf-8")
    return p


@pytest.fixture
def tiny_checkpoint(tmp_path: Path) -> Path:
    vocab = Vocab.from_text(SMALL_TEXT)
    model = CharModel(ModelConfig(len(vocab), embed=4, hidden=8, layers=2), seed=1)
    path = tmp_path / "tiny.safetensors"
    save(path, model, vocab, {"step": 3}, {"name": "small.txt"})
    return path


@pytest.fixture(autouse=True)
def _no_color(monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "200")
    os.environ.pop("FORCE_COLOR", None)
