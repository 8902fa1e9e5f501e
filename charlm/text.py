"""Reading text files: chunked, incrementally decoded, refused when they are not text.

A corpus is never held as one Python string. ``iter_text`` reads the file in
chunks of ``CHUNK_BYTES`` and decodes them incrementally (a UTF-8 sequence cut
by a chunk boundary is completed by the next chunk), checking as it goes:
empty file, binary magic numbers, NUL bytes and undecodable bytes, each
reported with its byte offset in the whole file. The advice of such an error
fits the file: bytes that look like UTF-16 name that encoding, and a file with
NUL bytes near the problem is called binary rather than told to replace bytes.

The decoded text is then brought into its ``TextForm`` (``charlm.textform``): NFC
normalization and ``\r\n`` read as ``\n``, each optional. Both are done chunk
by chunk; the end of a chunk whose form could still change with the next one
(a ``\r`` before a possible ``\n``, a character a following combining mark
could compose with) waits for it, so the result never depends on where the
chunks were cut.
"""

from __future__ import annotations

import codecs
import io
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from charlm.config import ERROR_POLICIES
from charlm.errors import ConfigError, CorpusError, UsageError
from charlm.textform import RAW, Cleaner, TextForm

CHUNK_BYTES = 8 * 2**20  # bytes read, checked and decoded at a time
HEAD_BYTES = 4096  # bytes from the start of a file that say which encoding it may be in
LOOKAHEAD_BYTES = 4096  # bytes after an undecodable one searched for NUL bytes (binary data)

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


def guess_encoding(head: bytes, current: str) -> str | None:
    """The encoding the first bytes of a file look like when it is not ``current``:
    utf-32 or utf-16 after their byte-order mark, utf-16-le / utf-16-be when every
    other byte is NUL (Latin text in UTF-16 without a mark); None otherwise, or when
    ``head`` is not valid text in that encoding."""
    if head.startswith((b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff")):
        guess = "utf-32"
    elif head.startswith((b"\xff\xfe", b"\xfe\xff")):
        guess = "utf-16"
    else:
        even, odd, pairs = head[0::2], head[1::2], len(head) // 2
        if pairs >= 2 and odd.count(0) >= pairs / 4 and even.count(0) == 0:
            guess = "utf-16-le"
        elif pairs >= 2 and even.count(0) >= pairs / 4 and odd.count(0) == 0:
            guess = "utf-16-be"
        else:
            return None
    if codecs.lookup(guess).name == codecs.lookup(current).name:
        return None
    try:  # the advice must work: the head decodes, and holds no NUL character
        text = codecs.getincrementaldecoder(guess)("strict").decode(head, False)
    except UnicodeError:
        return None
    return None if "\x00" in text else guess


class ChunkDecoder:
    """Incremental decoding of one file's bytes, naming the byte offset of a problem.

    ``read_more`` (the stream's read) is called only when a problem is found, to
    look at the bytes after it: whether the file is text in another encoding, or
    binary data, is decided from the first HEAD_BYTES of the file and the
    LOOKAHEAD_BYTES after the problem, whatever the chunk size."""

    def __init__(
        self,
        info: codecs.CodecInfo,
        encoding: str,
        errors: str,
        label: str,
        read_more: Callable[[int], bytes] | None = None,
    ) -> None:
        self.decoder = codecs.getincrementaldecoder(info.name)(errors)
        self.refuse_nul = not info.name.startswith(("utf-16", "utf-32"))  # NUL is text in UTF-16/32
        self.encoding, self.label = encoding, label
        self.read_more = read_more
        self.offset = 0  # bytes decoded so far
        self.head = b""  # the first HEAD_BYTES of the file
        self.at_start = True

    def decode(self, raw: bytes, final: bool) -> str:
        """The text of the next chunk (a leading byte-order mark dropped)."""
        label, encoding = self.label, self.encoding
        if len(self.head) < HEAD_BYTES:
            self.head += raw[: HEAD_BYTES - len(self.head)]
        nul = raw.find(b"\x00") if self.refuse_nul else -1
        state = self.decoder.getstate()
        pending = len(state[0]) if isinstance(state, tuple) and isinstance(state[0], bytes) else 0
        try:  # up to a NUL byte only, so that whichever problem comes first is reported
            text = self.decoder.decode(raw if nul < 0 else raw[:nul], final and nul < 0)
        except UnicodeDecodeError as e:
            at = self.offset - pending + e.start  # e.start counts from the bytes held back by the last chunk
            raise self._undecodable(raw, at, e.object[e.start]) from None
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
            raise self._nul(raw, self.offset + nul)
        self.offset += len(raw)
        if self.at_start and text:
            self.at_start = False
            if text[0] == "\ufeff":
                text = text[1:]  # byte-order mark
        return text

    def _after(self, raw: bytes, at: int) -> bytes:
        """LOOKAHEAD_BYTES from file offset ``at`` (in or after ``raw``), reading ahead;
        completes ``head`` on the way."""
        extra = b""
        if self.read_more is not None:
            try:
                extra = self.read_more(HEAD_BYTES + LOOKAHEAD_BYTES)
            except OSError:
                pass  # the advice is then from what was read
        if len(self.head) < HEAD_BYTES:
            self.head += extra[: HEAD_BYTES - len(self.head)]
        start = max(0, at - self.offset)
        return (raw + extra)[start : start + LOOKAHEAD_BYTES]

    def _undecodable(self, raw: bytes, at: int, byte: int) -> CorpusError:
        """The error for an undecodable byte at file offset ``at``: another encoding if the
        file looks like one, binary data if NUL bytes are near, else how to read it anyway."""
        label, encoding = self.label, self.encoding
        after = self._after(raw, at)
        guess = guess_encoding(self.head, encoding)
        if guess is not None:
            return CorpusError(
                f"{label}: not valid {encoding} at byte offset {at}; it looks like {guess} text. Read it as {guess}.",
                kind="other_encoding",
                label=label,
                encoding=encoding,
                offset=at,
                guess=guess,
            )
        if self.refuse_nul and (b"\x00" in self.head or b"\x00" in after):
            return CorpusError(
                f"{label}: binary data, not text (byte 0x{byte:02x} at byte offset {at} is not valid {encoding}, "
                "and NUL bytes are near it). Give a plain text file.",
                kind="binary_data",
                label=label,
                encoding=encoding,
                offset=at,
                byte=byte,
            )
        return CorpusError(
            f"{label}: not valid {encoding} at byte offset {at} (byte 0x{byte:02x}). "
            "Convert it to UTF-8, or read it with its own encoding or with undecodable bytes replaced.",
            kind="undecodable",
            label=label,
            encoding=encoding,
            offset=at,
            byte=byte,
        )

    def _nul(self, raw: bytes, at: int) -> CorpusError:
        """The error for a NUL byte at file offset ``at``: UTF-16 text read as another
        encoding, else binary data."""
        label = self.label
        self._after(raw, at)
        guess = guess_encoding(self.head, self.encoding)
        if guess is not None:
            return CorpusError(
                f"{label}: contains a NUL byte at byte offset {at}; it looks like {guess} text. Read it as {guess}.",
                kind="other_encoding_nul",
                label=label,
                offset=at,
                guess=guess,
            )
        return CorpusError(
            f"{label}: contains a NUL byte at byte offset {at}, so it is binary data, not text. "
            "Give a plain text file.",
            kind="nul_byte",
            label=label,
            offset=at,
        )


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
    form: TextForm = RAW,
    digest=None,
    chunk_bytes: int | None = None,
    progress: str | None = None,
) -> Iterator[str]:
    """Decoded text of a file (a Path) or a binary stream in ``form``, ``chunk_bytes`` at a time.

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
    decoder = ChunkDecoder(info, encoding, errors, label, read_more=stream.read)
    cleaner = Cleaner(form)
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
            has_text = has_text or (bool(text) and not text.isspace())
            yield from cleaner.feed(text, final)
            if final:
                break
        if not has_text:
            raise CorpusError(f"{label}: contains only whitespace. Give a text file with some text in it.")
    finally:
        if bar is not None:
            bar.close()
        if isinstance(source, Path):
            stream.close()


def read_text(path: Path, encoding: str = "utf-8", errors: str = "strict", form: TextForm = RAW) -> str:
    """Read a whole text file into memory (for short texts), with the checks of ``iter_text``."""
    path = Path(path)
    return "".join(iter_text(path, "-" if str(path) == "-" else str(path), encoding, errors, form=form))


def decode_bytes(raw: bytes, label: str, encoding: str = "utf-8", errors: str = "strict", form: TextForm = RAW) -> str:
    """Decode bytes already in memory, with the checks of ``iter_text``."""
    return "".join(iter_text(io.BytesIO(raw), label, encoding, errors, form=form))
