"""The training corpus: checked, measured and encoded to ids, in memory or in a cached memmap.

(The corpora shipped with charlm are found by name in ``charlm.corpora``.)

``load_corpus`` makes two passes over the file with ``charlm.text.iter_text``:
the first collects the vocabulary (the set of code points), the character count
and the sha256 of the bytes, and refuses the corpus before anything is written;
the second encodes it to a uint16 id array. Both read the text in the form the
settings ask for (``TextForm``: NFC, ``\r\n`` as ``\n``), which the fingerprint
records so that scoring reads text the same way. Corpora of ``MEMMAP_MIN_CHARS``
characters or more are encoded to a file in the cache folder (``$CHARLM_CACHE``,
else ``$XDG_CACHE_HOME/charlm``, else ``~/.cache/charlm``), named by the sha256
of the bytes, the decoding options and the text form, written to a temporary
name and renamed into place when complete, and then used as an ``np.memmap``:
later runs on the same file skip the second pass, once the cache's length, ids and
checksum are checked.

The last ``val_frac`` of the characters is held out for validation.
"""

from __future__ import annotations

import codecs
import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from charlm.atomic import remove_stale_temps
from charlm.config import TrainConfig
from charlm.errors import CorpusError
from charlm.text import iter_text
from charlm.textform import RAW, TextForm
from charlm.vocab import CODE_POINTS, MAX_VOCAB, Vocab, code_point_blocks, code_points

MEMMAP_MIN_CHARS = 16 * 2**20  # corpora this long are encoded to a cached np.memmap, not to memory
CACHE_ENV = "CHARLM_CACHE"  # environment variable naming the cache folder
DIGEST_BYTES = 32  # a cache file ends with the sha256 of its ids
STALE_TEMP_SECONDS = 24 * 3600  # a cache temp unwritten this long is a killed run's, whatever its pid
MIN_VAL_CHARS = 2  # held-out characters: the first is context, the rest are predicted


@dataclass(frozen=True)
class CorpusFingerprint:
    """What a checkpoint records about the text it was trained on; None: not recorded
    (checkpoints of older versions, or written by hand)."""

    name: str | None = None  # file name
    sha256: str | None = None  # of the file's bytes
    chars: int | None = None  # N: characters after decoding
    val_chars: int | None = None  # characters held out at the end
    encoding: str | None = None  # how the text was read, so a resumed run reads it the same way
    errors: str | None = None  # error policy of that reading
    nfc: bool | None = None  # NFC-normalized as it was read (None: not recorded, read raw)
    crlf_as_lf: bool | None = None  # "\r\n" read as "\n" (None: not recorded, read raw)
    tokens: int | None = None  # word models: tokens of the text, <EOS> included (None: a character model)
    val_tokens: int | None = None  # word models: tokens held out at the end (val_chars is then not recorded)
    unknown_tokens: int | None = None  # word models: tokens of the text read as <UNK> (outside the vocabulary)

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @property
    def form(self) -> TextForm:
        """How text for this model is read: as its training text was; raw when not recorded."""
        return TextForm(nfc=bool(self.nfc), crlf_as_lf=bool(self.crlf_as_lf))

    @classmethod
    def from_dict(cls, d: dict) -> CorpusFingerprint:
        """The stored fingerprint (its types checked by charlm.checkpoint_schema); unknown fields are ignored."""
        return cls(**{f.name: d.get(f.name) for f in fields(cls)})


def text_form(fingerprint: CorpusFingerprint | None) -> TextForm:
    """The form a model's text is read in: its training text's, raw for a checkpoint that records none."""
    return RAW if fingerprint is None else fingerprint.form


def form_of(config: TrainConfig) -> TextForm:
    """The text form a run's settings ask for."""
    return TextForm(nfc=config.normalize, crlf_as_lf=not config.keep_cr)


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
    n_chars: int  # N: characters after decoding and bringing into ``form`` (a byte-order mark is not counted)
    sha256: str  # of the file's bytes, as read
    vocab: Vocab  # every code point of the text, sorted
    form: TextForm = RAW  # what was done to the decoded text: NFC, "\r\n" as "\n"


def refuse_special_file(path: Path, label: str) -> None:
    """Refuse a pipe or a device: training reads the corpus twice."""
    try:
        special = path.exists() and not path.is_dir() and not path.is_file()
    except OSError:
        special = False  # iter_text reports it
    if special:
        raise CorpusError(
            f"{label}: not a regular file (a pipe or a device). Training reads the corpus twice; save it to a file first."
        )


def scan_corpus(
    path: Path, encoding: str = "utf-8", errors: str = "strict", *, form: TextForm = RAW, progress: bool = False
) -> CorpusScan:
    """First pass: check the whole file (see ``iter_text``), count its characters in
    ``form``, collect its vocabulary and hash its bytes. Raises CorpusError or UsageError."""
    path = Path(path)
    label = str(path)
    refuse_special_file(path, label)
    digest = hashlib.sha256()
    seen = np.zeros(CODE_POINTS, dtype=bool)  # (0x110000,) code points present
    n_chars = 0
    reading = "reading" if progress else None
    for text in iter_text(path, label, encoding, errors, form=form, digest=digest, progress=reading):
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
    return CorpusScan(path, label, encoding, errors, n_chars, digest.hexdigest(), vocab, form)


def encoded_chunks(scan: CorpusScan, progress: bool) -> Iterator[np.ndarray]:
    """Second pass: the ids of the file chunk by chunk, each (n,) uint16; refuses a file
    that changed since ``scan`` (other length or other bytes)."""
    table = np.zeros(CODE_POINTS, dtype=np.uint16)  # every character of the file is in the vocabulary
    table[code_points(scan.vocab.chars)] = np.arange(len(scan.vocab), dtype=np.uint16)
    digest = hashlib.sha256()
    n = 0
    changed = CorpusError(f"{scan.label}: the file changed while it was being read. Run the command again.")
    bar = "encoding" if progress else None
    for text in iter_text(
        scan.path, scan.label, scan.encoding, scan.errors, form=scan.form, digest=digest, progress=bar
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


def cache_name(scan: CorpusScan) -> str:
    """The cache file of a corpus: what its ids depend on, the bytes (sha256), how they are
    decoded and the text form, e.g. ``<sha256>-utf-8-strict-nfc-lf.u16``."""
    codec = codecs.lookup(scan.encoding).name  # one name per codec: utf8, UTF-8 → utf-8
    form = "-".join(name for name, on in (("nfc", scan.form.nfc), ("lf", scan.form.crlf_as_lf)) if on) or "raw"
    return f"{scan.sha256}-{codec}-{scan.errors}-{form}.u16"


def cache_problem(path: Path, n_chars: int, vocab_size: int) -> str | None:
    """What is wrong with a cache file, or None when it can be used: its size must be
    ``2 * n_chars`` bytes of ids plus the 32-byte sha256 of them, the digest must match
    and every id must be below ``vocab_size``."""
    try:
        if not path.is_file():
            return "missing"
        size = path.stat().st_size
        if size != 2 * n_chars + DIGEST_BYTES:
            return f"{size:,} bytes, not {2 * n_chars + DIGEST_BYTES:,}"
        ids = np.memmap(path, dtype="<u2", mode="r", shape=(n_chars,))  # (N,)
        with open(path, "rb") as f:
            f.seek(2 * n_chars)
            recorded = f.read(DIGEST_BYTES)
        if int(ids.max()) >= vocab_size:
            return f"an id of {int(ids.max())} in a vocabulary of {vocab_size}"
        if hashlib.sha256(ids).digest() != recorded:
            return "its checksum does not match"
        return None
    except (OSError, ValueError) as e:
        return f"unreadable: {e}"


def encode_corpus(
    scan: CorpusScan, *, progress: bool = False, report: Callable[[str], None] | None = None
) -> tuple[np.ndarray, Path | None]:
    """(ids, cache file): the (N,) uint16 ids of the scanned corpus.

    Below ``MEMMAP_MIN_CHARS`` characters the ids are an in-memory array and no
    file is written. Longer corpora are encoded to ``cache_dir()/<sha256>-<encoding>-
    <errors>-<form>.u16`` (raw little-endian uint16 followed by their sha256; see ``cache_name``), written
    under a temporary name and renamed when complete, so a half-written cache is never used; an existing
    cache file is reused when ``cache_problem`` finds nothing wrong with it, else encoded again, and
    temporary files of killed runs are removed. The ids are then a read-only np.memmap.
    """
    return encode_ids(
        scan.n_chars, len(scan.vocab), cache_name(scan), lambda: encoded_chunks(scan, progress), report, "characters"
    )


def encode_ids(
    N: int,
    vocab_size: int,
    name: str,
    chunks: Callable[[], Iterator[np.ndarray]],
    report: Callable[[str], None] | None = None,
    what: str = "characters",
) -> tuple[np.ndarray, Path | None]:
    """(ids, cache file): the N ids that ``chunks()`` yields, in memory below
    ``MEMMAP_MIN_CHARS``, else through the cache file ``cache_dir()/name`` (see ``encode_corpus``;
    ``what`` names the ids in the notices: characters, words)."""
    if N < MEMMAP_MIN_CHARS:
        ids = np.empty(N, dtype=np.uint16)  # (N,)
        pos = 0
        for chunk in chunks():
            ids[pos : pos + len(chunk)] = chunk
            pos += len(chunk)
        return ids, None
    path = cache_dir() / name
    for stale in remove_stale_temps(path.parent, older_than=STALE_TEMP_SECONDS) if path.parent.is_dir() else ():
        if report:
            report(f"removed {stale}, left by a killed run")
    problem = cache_problem(path, N, vocab_size)
    if problem is None:
        if report:
            report(f"using the encoded corpus cached in {path}")
        return np.memmap(path, dtype="<u2", mode="r", shape=(N,)), path
    if report and problem != "missing":
        report(f"the encoded corpus cached in {path} is damaged ({problem}); encoding it again")
    if report:
        report(f"encoding {N:,} {what} to {path} ({2 * N / 1e6:,.0f} MB, reused by later runs on this file)")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # as atomic.remove_stale_temps expects
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            digest = hashlib.sha256()
            for chunk in chunks():
                data = np.ascontiguousarray(chunk, dtype="<u2")  # no copy when it is already little-endian uint16
                digest.update(data)
                f.write(data)
            f.write(digest.digest())  # the trailer cache_problem checks
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

    def fingerprint(self) -> CorpusFingerprint:
        """What checkpoints record about this corpus."""
        s = self.scan
        return CorpusFingerprint(
            s.path.name, s.sha256, s.n_chars, self.n_val, s.encoding, s.errors, s.form.nfc, s.form.crlf_as_lf
        )


def check_length(label: str, n: int, config: TrainConfig, unit: str = "characters") -> int:
    """The number of held-out symbols of a corpus of ``n`` (characters, or a word model's
    tokens: ``unit``); a CorpusError when the text is too short for one training batch
    after the validation tail, or the tail too short to validate."""
    B, T, f = config.batch_size, config.seq_len, config.val_frac
    n_val = int(round(n * f))
    minimum = min_corpus_chars(B, T, f)
    if n < minimum:
        raise CorpusError(
            f"{label}: {n:,} {unit}, too short for one training batch: a batch of {B} rows × {T} steps needs at "
            f"least {minimum:,} {unit} when {f:g} of them are held out. "
            "Use a longer text or a smaller batch size or sequence length.",
            kind="corpus_too_short",
            label=label,
            count=n,
            unit=unit,
            batch_size=B,
            seq_len=T,
            minimum=minimum,
            val_frac=f,
        )
    if n_val < MIN_VAL_CHARS:
        suggest = min(0.5, (MIN_VAL_CHARS + 0.5) / n)
        raise CorpusError(
            f"{label}: a validation fraction of {f:g} holds out {n_val} of its {n:,} {unit}; validation needs at "
            f"least {MIN_VAL_CHARS}. Raise the fraction to {suggest:.2g} or more, or use a longer text.",
            kind="validation_too_short",
            label=label,
            val_frac=f,
            n_val=n_val,
            count=n,
            unit=unit,
            needed=MIN_VAL_CHARS,
            suggest=suggest,
        )
    return n_val


def load_corpus(
    path: Path,
    config: TrainConfig,
    *,
    progress: bool = False,
    report: Callable[[str], None] | None = None,
    check: Callable[[CorpusScan], None] | None = None,
) -> Corpus:
    """Check, measure and encode a training corpus without holding it as a string.

    Everything that can be wrong with the file — including being too short for
    one batch of ``config.batch_size`` × ``config.seq_len`` after the last
    ``config.val_frac`` is held out — is found by the first pass, before anything
    is written. The file is read with ``config.encoding`` and ``config.errors``, in
    the form ``config.normalize`` and ``config.keep_cr`` ask for. ``check`` is
    called with the first pass's findings before the text is encoded (it may raise).
    """
    scan = scan_corpus(Path(path), config.encoding, config.errors, form=form_of(config), progress=progress)
    n_val = check_length(scan.label, scan.n_chars, config)
    if check is not None:
        check(scan)
    ids, cache = encode_corpus(scan, progress=progress, report=report)
    return Corpus(scan, ids, n_val, cache)
