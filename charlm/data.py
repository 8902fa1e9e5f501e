"""Cutting encoded text into truncated-BPTT batches, and encoding text to score.

For training, the text is cut into B contiguous streams, one per batch row;
batch k takes columns [kT, (k+1)T) of every stream, so row b of batch k+1
continues exactly where row b of batch k stopped and the hidden state can be
carried across batches (truncated back-propagation through time). Pages of a
memmapped corpus that have been read are released every ``RELEASE_EVERY``
batches (``release_pages``), so resident memory does not grow with the corpus.

Reading and checking text files is in ``charlm.text``; checking and encoding a
training corpus (with its cache) in ``charlm.corpus``.
"""

from __future__ import annotations

import mmap
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

from charlm.errors import CorpusError
from charlm.text import iter_text
from charlm.textform import RAW, TextForm
from charlm.vocab import Vocab, code_point_blocks, describe_counts

RELEASE_EVERY = 256  # batches between releasing the read pages of a memmapped corpus
SPOOL_MIN_CHARS = 16 * 2**20  # text to score this long is spooled to a temporary file, not kept in memory


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
                "Use a longer text or a smaller batch size or sequence length.",
                kind="text_too_short_for_batch",
                chars=len(self.ids),
                batch_size=B,
                seq_len=T,
                needed=B * T + 1,
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
        if k % RELEASE_EVERY == RELEASE_EVERY - 1:
            release_pages(self.ids)
        return x, y


def release_pages(ids: np.ndarray) -> None:
    """Unmap the pages of a memmapped id array that have been read (they stay in the
    OS page cache and are mapped again if read again), so reading a long corpus
    front to back does not grow the process's resident memory. No-op for arrays in
    memory."""
    mapping = getattr(ids, "_mmap", None)  # np.memmap keeps its mmap.mmap here, views too
    if mapping is not None and hasattr(mmap, "MADV_DONTNEED"):
        try:
            mapping.madvise(mmap.MADV_DONTNEED)
        except (OSError, ValueError):
            pass  # advice only


@dataclass(frozen=True)
class EncodedText:
    """Text to score: the ids of its known characters and what was dropped."""

    ids: np.ndarray  # (N,) uint16, in memory or a memmap of an unlinked temporary file
    unknown: Counter = field(default_factory=Counter)  # character → count, not in the vocabulary

    @property
    def unknown_count(self) -> int:
        return sum(self.unknown.values())

    def describe_unknown(self, limit: int = 5) -> str:
        """The unknown characters with their counts, most frequent first."""
        return describe_counts(self.unknown, limit)


def encode_stream(
    source: Path | BinaryIO,
    vocab: Vocab,
    label: str | None = None,
    encoding: str = "utf-8",
    errors: str = "strict",
    *,
    form: TextForm = RAW,
    progress: bool = False,
) -> EncodedText:
    """One streaming pass over a file or a binary stream (standard input): check it
    (see ``iter_text``), bring it into ``form`` (the model's: see ``CorpusFingerprint.form``)
    and encode it with a fixed vocabulary, dropping and counting
    unknown characters. Up to ``SPOOL_MIN_CHARS`` ids stay in memory; beyond that
    they are spooled to an unlinked temporary file and returned as a memmap."""
    table = vocab.id_table()  # (0x110000,) int32, −1 = unknown
    parts: list[np.ndarray] = []
    unknown: Counter = Counter()
    n = 0
    spool = None
    try:
        for text in iter_text(source, label, encoding, errors, form=form, progress="reading" if progress else None):
            for cps in code_point_blocks(text):
                idx = np.take(table, cps, mode="clip")  # (n,) int32
                known = idx >= 0
                if not known.all():
                    chars, counts = np.unique(cps[~known], return_counts=True)
                    unknown.update(dict(zip(map(chr, chars.tolist()), counts.tolist(), strict=True)))
                    idx = idx[known]
                chunk = idx.astype(np.uint16)
                if spool is None and n + len(chunk) >= SPOOL_MIN_CHARS:
                    spool = tempfile.TemporaryFile(prefix="charlm-")
                    for part in parts:
                        spool.write(part)
                    parts = []
                if spool is not None:
                    spool.write(chunk)
                else:
                    parts.append(chunk)
                n += len(chunk)
        if spool is None:
            ids = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint16)
        else:
            spool.flush()
            ids = np.memmap(spool, dtype=np.uint16, mode="r", shape=(n,))
    except OSError as e:
        raise CorpusError(
            f"cannot spool the encoded text to the temporary folder ({e.strerror or e}). "
            "Set TMPDIR to a folder with more free space."
        ) from None
    finally:
        if spool is not None:
            spool.close()
    return EncodedText(ids, unknown)
