"""Reading a corpus, splitting it, and cutting it into truncated-BPTT batches.

The corpus is read once, checked, and encoded to a compact uint16 array. The
last ``val_frac`` of the characters is held out for validation. For training,
the rest is cut into B contiguous streams, one per batch row; batch k takes
columns [kT, (k+1)T) of every stream, so row b of batch k+1 continues exactly
where row b of batch k stopped and the hidden state can be carried across
batches (truncated back-propagation through time).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from charlm.errors import CorpusError

BINARY_MAGIC = {
    b"\x89PNG": "a PNG image",
    b"GIF8": "a GIF image",
    b"\xff\xd8\xff": "a JPEG image",
    b"%PDF": "a PDF document",
    b"PK\x03\x04": "a zip archive",
    b"\x1f\x8b": "a gzip archive",
    b"\x7fELF": "an executable",
}


def read_text(path: Path, encoding: str = "utf-8", errors: str = "strict") -> str:
    """Read a text file, refusing what cannot be a corpus with a clear message."""
    label = "-" if str(path) == "-" else str(path)
    if not path.exists():
        raise CorpusError(f"{label}: no such file. Give a text file or a shipped corpus name (see 'charlm corpora').")
    if path.is_dir():
        raise CorpusError(f"{label}: is a directory. Give a text file.")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise CorpusError(f"{label}: cannot read it ({e.strerror}).") from None
    return decode_bytes(raw, label, encoding, errors)


def decode_bytes(raw: bytes, label: str, encoding: str = "utf-8", errors: str = "strict") -> str:
    if not raw:
        raise CorpusError(f"{label}: the file is empty. Give a text file with some text in it.")
    for magic, kind in BINARY_MAGIC.items():
        if raw.startswith(magic):
            raise CorpusError(f"{label}: looks like {kind}, not text. Give a plain text file.")
    if b"\x00" in raw[:65536] and encoding.lower().replace("-", "") in ("utf8", "ascii", "latin1"):
        raise CorpusError(f"{label}: contains NUL bytes, so it is binary data, not text. Give a plain text file.")
    try:
        text = raw.decode(encoding, errors)
    except UnicodeDecodeError as e:
        raise CorpusError(
            f"{label}: not valid {encoding} at byte offset {e.start} "
            f"(byte 0x{raw[e.start]:02x}). Convert it to UTF-8, or pass --encoding NAME "
            "or --errors replace."
        ) from None
    except LookupError:
        raise CorpusError(f"unknown encoding {encoding!r}. Use a Python codec name such as utf-8 or latin-1.") from None
    if text.startswith("\ufeff"):
        text = text[1:]  # byte-order mark
    if not text.strip():
        raise CorpusError(f"{label}: contains only whitespace. Give a text file with some text in it.")
    return text


def fingerprint(text: str) -> str:
    """sha256 of the text's UTF-8 bytes: identifies a corpus in checkpoints."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def split_text(text: str, val_frac: float) -> tuple[str, str]:
    """(train, validation): the validation part is the last ``val_frac`` of the characters."""
    n_val = int(round(len(text) * val_frac))
    return text[: len(text) - n_val], text[len(text) - n_val :]


@dataclass
class BatchStream:
    """Consecutive (T, B) chunks of B parallel, contiguous streams of ``ids``."""

    ids: np.ndarray  # (N,) uint16
    batch_size: int  # B
    seq_len: int  # T

    def __post_init__(self) -> None:
        B, T = self.batch_size, self.seq_len
        self.stream_len = (len(self.ids) - 1) // B  # L: characters per row
        if self.stream_len < T:
            raise CorpusError(
                f"the training text has {len(self.ids):,} characters, too short for one batch of "
                f"{B} rows × {T} steps (needs at least {B * T + 1:,}). "
                "Use a longer text or smaller --batch-size/--seq-len."
            )
        usable = B * self.stream_len
        self._x = self.ids[:usable].reshape(B, self.stream_len)  # (B, L)
        self._y = self.ids[1 : usable + 1].reshape(B, self.stream_len)  # (B, L)

    @property
    def steps_per_epoch(self) -> int:
        return self.stream_len // self.seq_len

    def batch(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Chunk k of the epoch: (inputs, targets), each (T, B) int64, time-major."""
        s = slice(k * self.seq_len, (k + 1) * self.seq_len)
        x = np.ascontiguousarray(self._x[:, s].T, dtype=np.int64)
        y = np.ascontiguousarray(self._y[:, s].T, dtype=np.int64)
        return x, y


def min_train_chars(batch_size: int, seq_len: int) -> int:
    return batch_size * seq_len + 1
