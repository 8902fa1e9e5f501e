"""Reading a corpus, splitting it, and cutting it into truncated-BPTT batches.

A corpus is never held as one Python string. ``iter_text`` reads the file in
chunks of ``CHUNK_BYTES`` and decodes them incrementally (a UTF-8 sequence cut
by a chunk boundary is completed by the next chunk), checking as it goes:
empty file, binary magic numbers, NUL bytes and undecodable bytes, each
reported with its byte offset in the whole file. ``load_corpus`` makes two
such passes: the first collects the vocabulary (the set of code points), the
character count and the sha256 of the bytes, and refuses the corpus before
anything is written; the second encodes it to a uint16 id array. Corpora of
``MEMMAP_MIN_CHARS`` characters or more are encoded to a file in the cache
folder (``$CHARLM_CACHE``, else ``$XDG_CACHE_HOME/charlm``, else
``~/.cache/charlm``), named by the sha256 of the bytes and the decoding
options, written to a temporary name and renamed into place when complete, and
then used as an ``np.memmap``: later runs on the same file skip the second pass.
Pages of a memmap that have been read are released every ``RELEASE_EVERY``
batches (``release_pages``), so resident memory does not grow with the corpus.

The last ``val_frac`` of the characters is held out for validation. For training,
the rest is cut into B contiguous streams, one per batch row; batch k takes
columns [kT, (k+1)T) of every stream, so row b of batch k+1 continues exactly
where row b of batch k stopped and the hidden state can be carried across
batches (truncated back-propagation through time).
"""

from __future__ import annotations

import codecs
import hashlib
import mmap
import os
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

from charlm.errors import CorpusError, UsageError
from charlm.vocab import MAX_VOCAB, Vocab, code_points, describe_char

CHUNK_BYTES = 8 * 2**20  # bytes read, checked and decoded at a time
BLOCK_CHARS = 2**20  # characters converted to code points / ids at a time (bounds the temporaries)
MEMMAP_MIN_CHARS = 16 * 2**20  # corpora this long are encoded to a cached np.memmap, not to memory
CACHE_ENV = "CHARLM_CACHE"  # environment variable naming the cache folder
MIN_VAL_CHARS = 2  # held-out characters: the first is context, the rest are predicted
CODE_POINTS = 0x110000  # size of the Unicode code space
ERRORS = ("strict", "replace")  # accepted --errors policies
RELEASE_EVERY = 256  # batches between releasing the read pages of a memmapped corpus

BINARY_MAGIC = {
    b"\x89PNG": "a PNG image",
    b"GIF8": "a GIF image",
    b"\xff\xd8\xff": "a JPEG image",
    b"%PDF": "a PDF document",
    b"PK\x03\x04": "a zip archive",
    b"\x1f\x8b": "a gzip archive",
    b"\x7fELF": "an executable",
    b"\x93NUMPY": "a NumPy array file",
}


def check_decoding(encoding: str, errors: str) -> codecs.CodecInfo:
    """The codec for ``encoding``; a UsageError for an unknown encoding or errors policy."""
    if errors not in ERRORS:
        raise UsageError(f"--errors must be 'strict' or 'replace', not {errors!r}.")
    try:
        info = codecs.lookup(encoding)
    except LookupError:
        raise UsageError(f"unknown encoding {encoding!r}. Use a Python codec name such as utf-8 or latin-1.") from None
    if not getattr(info, "_is_text_encoding", True):
        raise UsageError(f"{encoding!r} is not a text encoding. Use one such as utf-8 or latin-1.")
    return info


def _open_corpus(path: Path, label: str) -> BinaryIO:
    try:
        if path.is_dir():
            raise CorpusError(f"{label}: is a directory. Give a text file.")
        return open(path, "rb")
    except FileNotFoundError:
        raise CorpusError(
            f"{label}: no such file. Give a text file or a shipped corpus name (see 'charlm corpora')."
        ) from None
    except OSError as e:
        raise CorpusError(f"{label}: cannot read it ({e.strerror or e}).") from None


def iter_text(
    source: Path | BinaryIO,
    label: str | None = None,
    encoding: str = "utf-8",
    errors: str = "strict",
    *,
    digest=None,
    chunk_bytes: int | None = None,
    progress: str | None = None,
) -> Iterator[str]:
    """Decoded text of a file (a Path) or a binary stream, ``chunk_bytes`` at a time.

    Refuses, with a CorpusError naming the problem and its byte offset, what
    cannot be a corpus: a missing file or a directory, an empty file, a known
    binary format, NUL bytes (for ASCII-compatible encodings), bytes that are not
    valid ``encoding`` (unless ``errors="replace"``), and text that is only
    whitespace (raised at the end). A leading byte-order mark is dropped. Every
    byte read is fed to ``digest`` (a hashlib object) if given. ``chunk_bytes``
    defaults to CHUNK_BYTES. ``progress`` labels a tqdm bar on stderr; None shows none.
    """
    info = check_decoding(encoding, errors)
    chunk_bytes = chunk_bytes or CHUNK_BYTES
    if isinstance(source, Path):
        label = label or str(source)
        stream = _open_corpus(source, label)
    else:
        label, stream = label or "standard input", source
    refuse_nul = not info.name.startswith(("utf-16", "utf-32"))
    decoder = codecs.getincrementaldecoder(info.name)(errors)
    bar = None
    try:
        if progress is not None:
            from tqdm import tqdm

            try:
                total = os.fstat(stream.fileno()).st_size or None
            except (OSError, AttributeError, ValueError):
                total = None
            bar = tqdm(
                total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=progress, file=sys.stderr, leave=False
            )
        offset = 0  # bytes read so far
        at_start, has_text = True, False
        while True:
            try:
                raw = stream.read(max(chunk_bytes, 16) if offset == 0 else chunk_bytes)
            except OSError as e:
                raise CorpusError(f"{label}: cannot read it ({e.strerror or e}).") from None
            final = not raw
            if offset == 0:
                if final:
                    raise CorpusError(f"{label}: the file is empty. Give a text file with some text in it.")
                for magic, kind in BINARY_MAGIC.items():
                    if raw.startswith(magic):
                        raise CorpusError(f"{label}: looks like {kind}, not text. Give a plain text file.")
                from charlm.checkpoint import opens_like_safetensors  # only for the first chunk

                if opens_like_safetensors(raw):
                    raise CorpusError(
                        f"{label}: looks like a safetensors model file (a checkpoint), not text. Give the "
                        "text file to learn from; checkpoints go to --checkpoint/-c or --resume."
                    )
            nul = raw.find(b"\x00") if refuse_nul else -1
            if digest is not None:
                digest.update(raw)
            state = decoder.getstate()
            pending = len(state[0]) if isinstance(state, tuple) and isinstance(state[0], bytes) else 0
            try:  # up to a NUL byte only, so that whichever problem comes first is reported
                text = decoder.decode(raw if nul < 0 else raw[:nul], final and nul < 0)
            except UnicodeDecodeError as e:
                at = offset - pending + e.start  # e.start counts from the bytes held back by the last chunk
                raise CorpusError(
                    f"{label}: not valid {encoding} at byte offset {at} (byte 0x{e.object[e.start]:02x}). "
                    "Convert it to UTF-8, or pass --encoding NAME or --errors replace."
                ) from None
            except UnicodeError as e:  # a codec's own refusal, e.g. UTF-16 without a byte-order mark
                raise CorpusError(
                    f"{label}: cannot be read as {encoding} ({e}). Pass another --encoding "
                    "(UTF-16 without a byte-order mark: utf-16-le or utf-16-be)."
                ) from None
            if nul >= 0:
                raise CorpusError(
                    f"{label}: contains a NUL byte at byte offset {offset + nul}, so it is binary "
                    "data, not text. Give a plain text file (or --encoding utf-16, utf-16-le or utf-16-be if it is UTF-16 text)."
                )
            offset += len(raw)
            if bar is not None:
                bar.update(len(raw))
            if at_start and text:
                at_start = False
                if text[0] == "\ufeff":
                    text = text[1:]  # byte-order mark
            if text:
                has_text = has_text or not text.isspace()
                yield text
            if final:
                break
        if not has_text:
            raise CorpusError(f"{label}: contains only whitespace. Give a text file with some text in it.")
    finally:
        if bar is not None:
            bar.close()
        if isinstance(source, Path):
            stream.close()


def read_text(path: Path, encoding: str = "utf-8", errors: str = "strict") -> str:
    """Read a whole text file into memory (for short texts), with the checks of ``iter_text``."""
    path = Path(path)
    return "".join(iter_text(path, "-" if str(path) == "-" else str(path), encoding, errors))


def decode_bytes(raw: bytes, label: str, encoding: str = "utf-8", errors: str = "strict") -> str:
    """Decode bytes already in memory, with the checks of ``iter_text``."""
    import io

    return "".join(iter_text(io.BytesIO(raw), label, encoding, errors))


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
        if k % RELEASE_EVERY == RELEASE_EVERY - 1:
            release_pages(self.ids)
        return x, y


# --------------------------------------------------------------------------- #
# Corpora of any size: streaming passes, ids in memory or in a cached np.memmap
# --------------------------------------------------------------------------- #


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


def code_point_blocks(text: str) -> Iterator[np.ndarray]:
    """The code points of ``text`` in blocks of at most BLOCK_CHARS: (n,) uint8 when
    the text is ASCII (one byte per character instead of four), else (n,) uint32.
    Blocks keep the temporaries of indexing small (NumPy widens indices to int64)."""
    ascii_only = text.isascii()
    for start in range(0, len(text), BLOCK_CHARS):
        block = text[start : start + BLOCK_CHARS]
        if ascii_only:
            yield np.frombuffer(block.encode("ascii"), dtype=np.uint8)
        else:
            yield code_points(block)


def id_table(vocab: Vocab) -> np.ndarray:
    """(0x110000,) int32: the id of every code point, −1 for characters outside ``vocab``."""
    table = np.full(CODE_POINTS, -1, dtype=np.int32)
    table[code_points(vocab.chars)] = np.arange(len(vocab), dtype=np.int32)
    return table


def cache_dir() -> Path:
    """Where encoded large corpora are kept: $CHARLM_CACHE, else $XDG_CACHE_HOME/charlm,
    else ~/.cache/charlm. Deleting it is always safe."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "charlm"


def min_corpus_chars(batch_size: int, seq_len: int, val_frac: float) -> int:
    """Fewest characters N such that the N − round(N·val_frac) training characters
    fill one batch of ``batch_size`` rows × ``seq_len`` steps (plus the last target)."""
    needed = batch_size * seq_len + 1
    n = max(needed, int(needed / (1.0 - min(val_frac, 0.5))) - 2)
    while n - int(round(n * val_frac)) < needed:
        n += 1
    return n


@dataclass(frozen=True)
class CorpusScan:
    """What the first pass over a corpus file learns, before anything is written."""

    path: Path
    label: str
    encoding: str  # codec name as given, e.g. "utf-8"
    errors: str  # "strict" or "replace"
    n_chars: int  # N: characters after decoding (a byte-order mark is not counted)
    sha256: str  # of the file's bytes, as read
    vocab: Vocab  # every code point of the text, sorted


def scan_corpus(path: Path, encoding: str = "utf-8", errors: str = "strict", *, progress: bool = False) -> CorpusScan:
    """First pass: check the whole file (see ``iter_text``), count its characters,
    collect its vocabulary and hash its bytes. Raises CorpusError or UsageError."""
    path = Path(path)
    label = str(path)
    try:
        special = path.exists() and not path.is_dir() and not path.is_file()
    except OSError:
        special = False  # iter_text reports it
    if special:
        raise CorpusError(
            f"{label}: not a regular file (a pipe or a device). Training reads the corpus twice; save it to a file first."
        )
    digest = hashlib.sha256()
    seen = np.zeros(CODE_POINTS, dtype=bool)  # (0x110000,) code points present
    n_chars = 0
    for text in iter_text(path, label, encoding, errors, digest=digest, progress="reading" if progress else None):
        n_chars += len(text)
        for cps in code_point_blocks(text):
            seen[cps] = True
    cps = np.flatnonzero(seen)
    if cps.size > MAX_VOCAB:
        raise CorpusError(
            f"{label}: {cps.size:,} distinct characters; a charlm model holds at most {MAX_VOCAB:,} "
            "(ids are 16-bit). Use a text with fewer distinct characters."
        )
    vocab = Vocab("".join(map(chr, cps.tolist())))
    return CorpusScan(path, label, encoding, errors, n_chars, digest.hexdigest(), vocab)


def _encoded_chunks(scan: CorpusScan, progress: bool) -> Iterator[np.ndarray]:
    """Second pass: the ids of the file chunk by chunk, each (n,) uint16; refuses a file
    that changed since ``scan`` (other length or other bytes)."""
    table = np.zeros(CODE_POINTS, dtype=np.uint16)  # every character of the file is in the vocabulary
    table[code_points(scan.vocab.chars)] = np.arange(len(scan.vocab), dtype=np.uint16)
    digest = hashlib.sha256()
    n = 0
    changed = CorpusError(f"{scan.label}: the file changed while it was being read. Run the command again.")
    for text in iter_text(
        scan.path, scan.label, scan.encoding, scan.errors, digest=digest, progress="encoding" if progress else None
    ):
        for cps in code_point_blocks(text):
            ids = np.take(table, cps, mode="clip")  # (n,) uint16
            n += len(ids)
            if n > scan.n_chars:
                raise changed
            yield ids
    if n != scan.n_chars or digest.hexdigest() != scan.sha256:
        raise changed


def _discard(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


def encode_corpus(
    scan: CorpusScan, *, progress: bool = False, report: Callable[[str], None] | None = None
) -> tuple[np.ndarray, Path | None]:
    """(ids, cache file): the (N,) uint16 ids of the scanned corpus.

    Below ``MEMMAP_MIN_CHARS`` characters the ids are an in-memory array and no
    file is written. Longer corpora are encoded to ``cache_dir()/<sha256>-<encoding>-
    <errors>.u16`` (raw little-endian uint16), written under a temporary name and
    renamed when complete, so a half-written cache is never used; an existing
    cache file of the right size is reused. The ids are then a read-only np.memmap.
    """
    N = scan.n_chars
    if N < MEMMAP_MIN_CHARS:
        ids = np.empty(N, dtype=np.uint16)  # (N,)
        pos = 0
        for chunk in _encoded_chunks(scan, progress):
            ids[pos : pos + len(chunk)] = chunk
            pos += len(chunk)
        return ids, None
    codec = codecs.lookup(scan.encoding).name  # one name per codec: utf8, UTF-8 → utf-8
    path = cache_dir() / f"{scan.sha256}-{codec}-{scan.errors}.u16"
    try:
        if path.is_file() and path.stat().st_size == 2 * N:
            if report:
                report(f"using the encoded corpus cached in {path}")
            return np.memmap(path, dtype="<u2", mode="r", shape=(N,)), path
    except OSError:
        pass  # unreadable cache: encode again
    if report:
        report(f"encoding {N:,} characters to {path} ({2 * N / 1e6:,.0f} MB, reused by later runs on this file)")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            for chunk in _encoded_chunks(scan, progress):
                f.write(chunk.astype("<u2", copy=False))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return np.memmap(path, dtype="<u2", mode="r", shape=(N,)), path
    except OSError as e:
        _discard(tmp)
        raise CorpusError(
            f"cannot write the encoded corpus to {path} ({e.strerror or e}). "
            f"Free some space or set {CACHE_ENV} to another folder."
        ) from None
    except BaseException:
        _discard(tmp)
        raise


@dataclass(frozen=True)
class Corpus:
    """A checked, encoded training corpus with its validation tail."""

    scan: CorpusScan
    ids: np.ndarray  # (N,) uint16, in memory or a read-only np.memmap
    n_val: int  # characters held out at the end
    cache: Path | None = None  # the memmap's file, if any

    @property
    def vocab(self) -> Vocab:
        return self.scan.vocab

    @property
    def train_ids(self) -> np.ndarray:
        return self.ids[: len(self.ids) - self.n_val]

    @property
    def val_ids(self) -> np.ndarray:
        return self.ids[len(self.ids) - self.n_val :]

    def info(self) -> dict:
        """The corpus fingerprint stored in checkpoints."""
        s = self.scan
        return {
            "name": s.path.name,
            "sha256": s.sha256,
            "chars": s.n_chars,
            "val_chars": self.n_val,
            "encoding": s.encoding,  # how the text was read, so --resume reads it the same way
            "errors": s.errors,
        }


def load_corpus(
    path: Path,
    encoding: str = "utf-8",
    errors: str = "strict",
    *,
    val_frac: float,
    batch_size: int,
    seq_len: int,
    progress: bool = False,
    report: Callable[[str], None] | None = None,
) -> Corpus:
    """Check, measure and encode a training corpus without holding it as a string.

    Everything that can be wrong with the file — including being too short for
    one batch of ``batch_size`` × ``seq_len`` after the last ``val_frac`` is held
    out — is found by the first pass, before anything is written.
    """
    scan = scan_corpus(Path(path), encoding, errors, progress=progress)
    n_val = int(round(scan.n_chars * val_frac))
    minimum = min_corpus_chars(batch_size, seq_len, val_frac)
    if scan.n_chars < minimum:
        raise CorpusError(
            f"{scan.label}: {scan.n_chars:,} characters, too short for one training batch: --batch-size "
            f"{batch_size} × --seq-len {seq_len} needs at least {minimum:,} characters with --val-frac "
            f"{val_frac:g}. Use a longer text or smaller --batch-size/--seq-len."
        )
    if n_val < MIN_VAL_CHARS:
        raise CorpusError(
            f"{scan.label}: --val-frac {val_frac:g} holds out {n_val} of its {scan.n_chars:,} characters; "
            f"validation needs at least {MIN_VAL_CHARS}. Raise --val-frac to "
            f"{min(0.5, (MIN_VAL_CHARS + 0.5) / scan.n_chars):.2g} or more, or use a longer text."
        )
    ids, cache = encode_corpus(scan, progress=progress, report=report)
    return Corpus(scan, ids, n_val, cache)


@dataclass(frozen=True)
class EncodedText:
    """Text to score: the ids of its known characters and what was dropped."""

    ids: np.ndarray  # (N,) uint16, in memory or a memmap of an unlinked temporary file
    unknown: Counter = field(default_factory=Counter)  # character → count, not in the vocabulary

    @property
    def unknown_count(self) -> int:
        return sum(self.unknown.values())

    def describe_unknown(self, limit: int = 5) -> str:
        return ", ".join(describe_char(c) for c, _ in self.unknown.most_common(limit))


def encode_stream(
    source: Path | BinaryIO,
    vocab: Vocab,
    label: str | None = None,
    encoding: str = "utf-8",
    errors: str = "strict",
    *,
    progress: bool = False,
) -> EncodedText:
    """One streaming pass over a file or a binary stream (standard input): check it
    (see ``iter_text``) and encode it with a fixed vocabulary, dropping and counting
    unknown characters. Up to ``MEMMAP_MIN_CHARS`` ids stay in memory; beyond that
    they are spooled to an unlinked temporary file and returned as a memmap."""
    table = id_table(vocab)  # (0x110000,) int32, −1 = unknown
    parts: list[np.ndarray] = []
    unknown: Counter = Counter()
    n = 0
    spool = None
    try:
        for text in iter_text(source, label, encoding, errors, progress="reading" if progress else None):
            for cps in code_point_blocks(text):
                idx = np.take(table, cps, mode="clip")  # (n,) int32
                known = idx >= 0
                if not known.all():
                    chars, counts = np.unique(cps[~known], return_counts=True)
                    unknown.update(dict(zip(map(chr, chars.tolist()), counts.tolist(), strict=True)))
                    idx = idx[known]
                chunk = idx.astype(np.uint16)
                if spool is None and n + len(chunk) >= MEMMAP_MIN_CHARS:
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
