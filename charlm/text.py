"""Reading text files: chunked, incrementally decoded, refused when they are not text.

A corpus is never held as one Python string. ``iter_text`` reads the file in
chunks of ``CHUNK_BYTES`` and decodes them incrementally (a UTF-8 sequence cut
by a chunk boundary is completed by the next chunk), checking as it goes:
empty file, binary magic numbers, NUL bytes and undecodable bytes, each
reported with its byte offset in the whole file.
"""

from __future__ import annotations

import codecs
import io
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from charlm.config import ERROR_POLICIES
from charlm.errors import ConfigError, CorpusError, UsageError

CHUNK_BYTES = 8 * 2**20  # bytes read, checked and decoded at a time

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
    """The codec for ``encoding``; a UsageError for an unknown encoding or error policy."""
    if errors not in ERROR_POLICIES:
        raise ConfigError("errors", f"must be 'strict' or 'replace', not {errors!r}.")
    try:
        info = codecs.lookup(encoding)
    except LookupError:
        raise UsageError(f"unknown encoding {encoding!r}. Use a Python codec name such as utf-8 or latin-1.") from None
    if not getattr(info, "_is_text_encoding", True):
        raise UsageError(f"{encoding!r} is not a text encoding. Use one such as utf-8 or latin-1.")
    return info


def open_text_file(path: Path, label: str) -> BinaryIO:
    """``path`` opened for reading bytes; a CorpusError for a folder or a missing file."""
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


def refuse_binary_start(raw: bytes, label: str) -> None:
    """Refuse a file whose first bytes say it is not text: empty, a known binary
    format, or a charlm checkpoint."""
    if not raw:
        raise CorpusError(f"{label}: the file is empty. Give a text file with some text in it.")
    for magic, kind in BINARY_MAGIC.items():
        if raw.startswith(magic):
            raise CorpusError(f"{label}: looks like {kind}, not text. Give a plain text file.")
    from charlm.checkpoint import opens_like_safetensors  # only for the first chunk

    if opens_like_safetensors(raw):
        raise CorpusError(
            f"{label}: looks like a safetensors model file (a checkpoint), not text. Give the text file to learn "
            "from; a checkpoint is given as the model to use or the run to resume.",
            kind="checkpoint_as_text",
            label=label,
        )


class ChunkDecoder:
    """Incremental decoding of one file's bytes, naming the byte offset of a problem."""

    def __init__(self, info: codecs.CodecInfo, encoding: str, errors: str, label: str) -> None:
        self.decoder = codecs.getincrementaldecoder(info.name)(errors)
        self.refuse_nul = not info.name.startswith(("utf-16", "utf-32"))  # NUL is text in UTF-16/32
        self.encoding, self.label = encoding, label
        self.offset = 0  # bytes decoded so far
        self.at_start = True

    def decode(self, raw: bytes, final: bool) -> str:
        """The text of the next chunk (a leading byte-order mark dropped)."""
        label, encoding = self.label, self.encoding
        nul = raw.find(b"\x00") if self.refuse_nul else -1
        state = self.decoder.getstate()
        pending = len(state[0]) if isinstance(state, tuple) and isinstance(state[0], bytes) else 0
        try:  # up to a NUL byte only, so that whichever problem comes first is reported
            text = self.decoder.decode(raw if nul < 0 else raw[:nul], final and nul < 0)
        except UnicodeDecodeError as e:
            at = self.offset - pending + e.start  # e.start counts from the bytes held back by the last chunk
            raise CorpusError(
                f"{label}: not valid {encoding} at byte offset {at} (byte 0x{e.object[e.start]:02x}). "
                "Convert it to UTF-8, or read it with its own encoding or with undecodable bytes replaced.",
                kind="undecodable",
                label=label,
                encoding=encoding,
                offset=at,
                byte=e.object[e.start],
            ) from None
        except UnicodeError as e:  # a codec's own refusal, e.g. UTF-16 without a byte-order mark
            raise CorpusError(
                f"{label}: cannot be read as {encoding} ({e}). Read it with another encoding "
                "(UTF-16 without a byte-order mark: utf-16-le or utf-16-be).",
                kind="codec_refused",
                label=label,
                encoding=encoding,
                reason=str(e),
            ) from None
        if nul >= 0:
            raise CorpusError(
                f"{label}: contains a NUL byte at byte offset {self.offset + nul}, so it is binary data, not text. "
                "Give a plain text file (or read it as utf-16, utf-16-le or utf-16-be if it is UTF-16 text).",
                kind="nul_byte",
                label=label,
                offset=self.offset + nul,
            )
        self.offset += len(raw)
        if self.at_start and text:
            self.at_start = False
            if text[0] == "\ufeff":
                text = text[1:]  # byte-order mark
        return text


def _progress_bar(stream: BinaryIO, desc: str):
    from tqdm import tqdm

    try:
        total = os.fstat(stream.fileno()).st_size or None
    except (OSError, AttributeError, ValueError):
        total = None
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, file=sys.stderr, leave=False)


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
        stream = open_text_file(source, label)
    else:
        label, stream = label or "standard input", source
    decoder = ChunkDecoder(info, encoding, errors, label)
    bar = None
    try:
        bar = None if progress is None else _progress_bar(stream, progress)
        has_text = False
        while True:
            try:
                raw = stream.read(max(chunk_bytes, 16) if decoder.offset == 0 else chunk_bytes)
            except OSError as e:
                raise CorpusError(f"{label}: cannot read it ({e.strerror or e}).") from None
            final = not raw
            if decoder.offset == 0:
                refuse_binary_start(raw, label)
            if digest is not None:
                digest.update(raw)
            text = decoder.decode(raw, final)
            if bar is not None:
                bar.update(len(raw))
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
    return "".join(iter_text(io.BytesIO(raw), label, encoding, errors))
