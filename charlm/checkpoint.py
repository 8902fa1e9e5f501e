"""Checkpoints: one safetensors file, written atomically, read without executing code.

Layout of a checkpoint file:

* tensors named and shaped like a PyTorch state dict: ``embedding.weight`` (V, E),
  ``rnn.weight_ih_l{k}`` (G·H, D), ``rnn.weight_hh_l{k}`` (G·H, H),
  ``rnn.bias_ih_l{k}``, ``rnn.bias_hh_l{k}`` (G·H,) with PyTorch's gate order
  (LSTM: i, f, g, o), ``decoder.weight`` (V, H), ``decoder.bias`` (V,);
* optionally ``optimizer.exp_avg`` / ``optimizer.exp_avg_sq`` (flat Adam moments)
  and ``state.<name>_l{k}`` (the carried hidden state), for exact resume;
* optionally ``warm.<name>_l{k}`` (H,) float32, the state the sampler's warm-up
  reaches (``charlm.sample.Warmed``), so that an unprompted sample skips it;
* string metadata: ``format`` ("charlm"), ``format_version``, ``config`` (JSON
  ``ModelConfig``), ``vocab`` (JSON list of code points), ``train`` (JSON
  ``TrainState``, with the ``TrainConfig`` inside) and ``corpus`` (JSON
  ``CorpusFingerprint``: name, sha256, characters, how it was read) and, with a
  warmed-up state, ``warm_up`` (JSON: the id fed first, the warm-up's chars and seed);
  a word model also has ``unit`` ("word"), and its ``vocab`` is a JSON object (words
  and case policy, see ``charlm.wordvocab``); without ``unit`` a checkpoint is a
  character model's.

Loading parses the 8-byte header length and JSON header first (never pickle),
checks every field against one schema (``charlm.checkpoint_schema``: types,
ranges, tensors the config implies) and reads the metadata once into those typed
objects (``read_metadata``), so a damaged or foreign file is refused with a
``CheckpointError``.
"""

from __future__ import annotations

import json
import math
import os
import stat
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from charlm import checkpoint_schema, memory
from charlm.atomic import atomic_write
from charlm.checkpoint_schema import Metadata
from charlm.config import TrainConfig, TrainState
from charlm.corpus import CorpusFingerprint
from charlm.errors import CheckpointError
from charlm.model import CharModel, ModelConfig
from charlm.sample import Warmed, warmed_state
from charlm.vocab import Vocab

FORMAT = "charlm"
FORMAT_VERSION = 1
MAX_HEADER = 100 * 1024 * 1024
DTYPES = {"F16": np.float16, "F32": np.float32, "F64": np.float64}  # weights load as float32


@dataclass
class Checkpoint:
    config: ModelConfig
    vocab: Vocab
    params: dict[str, np.ndarray]
    state: TrainState | None = None  # step, best val loss, RNG, training settings …
    corpus: CorpusFingerprint | None = None  # name, sha256, characters, how it was read
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # optimizer moments, carried state
    path: Path | None = None
    warmed: Warmed | None = None  # the sampler's warmed-up state, when stored

    @property
    def train_config(self) -> TrainConfig | None:
        """The training settings of the run that wrote it (None for weights only)."""
        return None if self.state is None else self.state.config

    def build_model(self) -> CharModel:
        """A model with these weights, in one new array (no initialisation to overwrite)."""
        shapes = CharModel.param_shapes(self.config)
        flat = np.concatenate([self.params[n].reshape(-1) for n in shapes]).astype(np.float32, copy=False)  # (P,)
        return CharModel(self.config, flat=flat)


# --------------------------------------------------------------------------- #
# Writing
# --------------------------------------------------------------------------- #


def save(
    path: Path,
    model: CharModel,
    vocab: Vocab,
    state: TrainState | dict | None = None,
    corpus: CorpusFingerprint | dict | None = None,
    extra: dict[str, np.ndarray] | None = None,
    *,
    half: bool = False,
    warmed: Warmed | None = None,
) -> None:
    """Write a checkpoint atomically. ``state`` and ``corpus`` may be the typed objects
    or their JSON objects (e.g. only a state's history fields). ``half`` stores the weights as float16
    (half the size, for shipping a model; they load as float32). ``warmed`` is the sampler's
    warmed-up state for the weights as they load (``warm_up``), stored as it is."""
    from safetensors.numpy import save as st_save

    dtype = np.float16 if half else None
    if half:
        check_half(model)
    tensors = {name: np.ascontiguousarray(p, dtype=dtype) for name, p in model.params.items()}
    for name, arr in (extra or {}).items():
        tensors[name] = np.ascontiguousarray(arr)
    if warmed is not None:
        for names, parts in zip(checkpoint_schema.warm_tensor_names(model.config), warmed.state, strict=True):
            for name, arr in zip(names, parts, strict=True):
                tensors[name] = np.ascontiguousarray(arr)
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "config": model.config.to_json(),
        "vocab": vocab.to_json(),
        "train": json.dumps(state.to_dict() if isinstance(state, TrainState) else state or {}, sort_keys=True),
        "corpus": json.dumps(
            corpus.to_dict() if isinstance(corpus, CorpusFingerprint) else corpus or {}, sort_keys=True
        ),
    }
    if vocab.unit != "char":  # a character model records none, as every checkpoint before word models
        metadata["unit"] = vocab.unit
    if warmed is not None:
        metadata["warm_up"] = json.dumps({"first": warmed.first, "chars": warmed.chars, "seed": warmed.seed})
    data = st_save(tensors, metadata=metadata)
    try:
        atomic_write(Path(path), data)
    except OSError as e:
        reason = e.strerror or str(e)
        raise CheckpointError(
            f"cannot write checkpoint {path}: {reason}. Any previous checkpoint there is unchanged; "
            "check that the path names a file in a folder you can write to, and the free space."
        ) from None


def check_half(model: CharModel) -> None:
    """Refuse to store ``model`` as float16 when a weight is too large for it."""
    if max(float(np.abs(p).max()) for p in model.params.values()) > float(np.finfo(np.float16).max):
        raise CheckpointError("a weight is too large for float16; store the model as float32.", kind="half_overflow")


# --------------------------------------------------------------------------- #
# Reading
# --------------------------------------------------------------------------- #


def _refuse_foreign(path: Path, head: bytes) -> None:
    """Name the format of a file that is a pickle or a zip archive, from its first bytes.

    A zip archive opens with "PK\\3\\4": read as a safetensors header length, 67 MB (+ 4 GiB·k),
    which no charlm checkpoint has. A pickle of protocol 2–5 opens with PROTO (0x80) and its
    protocol number, one of protocol 0–1 with a mark or an empty dict or list; many header
    lengths start so too (0x0280 + 65536k: PROTO 2), but a pickle's first 8 bytes read as a
    length above MAX_HEADER, so only such files are named pickles (a pickle of a 4- or 5-byte
    frame, such as one small integer, reads lower; it is refused as a truncated checkpoint)."""
    if head[:4] == b"PK\x03\x04":
        raise CheckpointError(
            f"{path}: this is a zip archive (e.g. a PyTorch .pt file), not a charlm checkpoint; "
            "charlm reads only .safetensors files written by charlm."
        )
    proto = len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5
    if header_length(head) is None and (proto or head[:2] in (b"(d", b"(l", b"}q", b"]q")):
        raise CheckpointError(
            f"{path}: this is a Python pickle, not a charlm checkpoint; charlm never unpickles "
            "files (loading one can run arbitrary code). Use a .safetensors file written by charlm."
        )


def _short(value: object, limit: int = 40) -> str:
    """repr(value) cut to ``limit`` characters, for messages about damaged files."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def header_length(head: bytes, size: int | None = None) -> int | None:
    """The safetensors header length n from a file's first 8 bytes (little-endian)
    when plausible — 0 < n ≤ MAX_HEADER and, if the file size is known, 8 + n ≤ size —
    else None."""
    if len(head) < 8:
        return None
    (n,) = struct.unpack("<Q", head[:8])
    return n if 0 < n <= MAX_HEADER and (size is None or 8 + n <= size) else None


def opens_like_safetensors(head: bytes, size: int | None = None) -> bool:
    """A plausible header length, then the "{" that starts the JSON header. Eight
    bytes of text read as a length are ≥ 2⁶¹, so no text file opens like this."""
    return header_length(head, size) is not None and head[8:9] == b"{"


def read_header(path: Path) -> tuple[dict, dict]:
    """(tensor entries, metadata) from the safetensors header, without reading tensors.

    Checks everything the header promises before any tensor is read: an 8-byte
    length that fits the file, a JSON object, charlm's format and version, string
    metadata, and for every tensor a known dtype, a shape of non-negative
    integers and data offsets inside the file that match that shape.
    """
    path = Path(path)
    try:
        if not path.exists():
            raise CheckpointError(f"{path}: no such checkpoint. Train a model first with 'charlm train FILE'.")
        if path.is_dir():
            raise CheckpointError(f"{path}: is a directory; give a .safetensors file (or a run folder where accepted).")
        with open(path, "rb") as f:
            head = f.read(9)
            size = os.fstat(f.fileno()).st_size
            n = header_length(head)
            _refuse_foreign(path, head)
            if len(head) < 8:
                raise CheckpointError(f"{path}: too short to be a checkpoint (truncated or empty file).")
            if n is None:
                raise CheckpointError(f"{path}: not a safetensors file (bad header length).")
            if 8 + n > size:
                raise CheckpointError(f"{path}: truncated checkpoint (the header runs past the end of the file).")
            f.seek(8)
            raw = f.read(n)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read it ({e.strerror or e}).") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):  # ValueError: bad JSON, or an integer too long
        raise CheckpointError(f"{path}: damaged checkpoint (the header is not valid JSON).") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: damaged checkpoint (the header is not a JSON object).")
    meta = header.pop("__metadata__", None)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: a safetensors file, but not one written by charlm (no charlm metadata).")
    version = meta.get("format_version")
    if version != str(FORMAT_VERSION):
        raise CheckpointError(
            f"{path}: checkpoint format version {_short(version)}; this charlm reads version {FORMAT_VERSION}. "
            "Use the charlm version that wrote it, or retrain."
        )
    if not all(isinstance(v, str) for v in meta.values()):
        raise CheckpointError(f"{path}: damaged checkpoint (the metadata values are not all strings).")
    data_len = size - 8 - n
    for name, entry in header.items():
        ok = (
            isinstance(entry, dict)
            and isinstance(entry.get("dtype"), str)
            and entry["dtype"] in DTYPES
            and isinstance(entry.get("shape"), list)
            and all(_is_int(d) and d >= 0 for d in entry["shape"])
            and isinstance(entry.get("data_offsets"), list)
            and len(entry["data_offsets"]) == 2
            and all(_is_int(o) for o in entry["data_offsets"])
        )
        if not ok:
            raise CheckpointError(f"{path}: damaged checkpoint (bad entry for tensor {_short(name)}).")
        start, end = entry["data_offsets"]
        nbytes = math.prod(entry["shape"]) * np.dtype(DTYPES[entry["dtype"]]).itemsize
        if not 0 <= start <= end <= data_len or end - start != nbytes:
            raise CheckpointError(f"{path}: damaged or truncated checkpoint (tensor {_short(name)} out of bounds).")
    return header, meta


def read_metadata(path: Path, header: dict, meta: dict) -> Metadata:
    """The metadata of a checked header (see ``read_header``) as typed objects: model
    config, vocabulary, training state (with its settings) and corpus fingerprint, every
    field checked for type and range and the tensors against the config (see
    ``charlm.checkpoint_schema``). Raises CheckpointError for anything damaged."""
    return checkpoint_schema.parse(path, header, meta)


def load(path: Path, with_extra: bool = True, memory_for: str | None = "use") -> Checkpoint:
    """Read and fully validate a checkpoint; raises CheckpointError, nothing else, or
    NotEnoughMemory before any tensor is read when the memory available is too small
    for what the caller does with it, ``memory_for`` (see ``charlm.memory.loading``):
    "use" (build the model and score or sample), "export" (build it and write it
    again) or None (checked by the caller, e.g. a training run's own estimate)."""
    path = Path(path)
    header, meta = read_header(path)
    md = read_metadata(path, header, meta)  # the tensors' names and shapes are checked here
    shapes = CharModel.param_shapes(md.config)
    if memory_for is not None:
        memory.check_loading(path, loading_estimate(path, header, md.config, with_extra, memory_for == "export"))
    try:
        from safetensors.numpy import load as st_load

        tensors = st_load(path.read_bytes())
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException:  # SafetensorError, OSError, or a Rust panic (a BaseException)
        raise CheckpointError(f"{path}: damaged checkpoint (the tensor data cannot be read).") from None
    for n, shape in shapes.items():  # the library's reading of the header must agree with ours
        t = tensors.get(n)
        if t is None or t.shape != shape or t.dtype not in (np.float16, np.float32, np.float64):
            raise CheckpointError(f"{path}: damaged checkpoint (tensor {n!r} cannot be read as {shape}).")
    params = {n: tensors[n].astype(np.float32, copy=False) for n in shapes}
    warm = {n: t for n, t in tensors.items() if n.startswith("warm.")}  # (H,) each, shapes checked by the schema
    for n, p in (params | warm).items():
        if not np.isfinite(p).all():
            raise CheckpointError(f"{path}: damaged checkpoint (tensor {n!r} holds NaN or infinity).")
    extra = {n: t for n, t in tensors.items() if n not in shapes and n not in warm} if with_extra else {}
    warmed = None
    if md.warm_up is not None:
        state = [tuple(warm[n] for n in names) for names in checkpoint_schema.warm_tensor_names(md.config)]
        warmed = Warmed(md.warm_up["first"], state, md.warm_up["chars"], md.warm_up["seed"])
    return Checkpoint(md.config, md.vocab, params, md.state, md.corpus, extra, path, warmed)


def loading_estimate(
    path: Path, header: dict, config: ModelConfig, with_extra: bool = True, export: bool = False
) -> memory.Estimate:
    """What reading the checkpoint ``path`` (its checked ``header``) and using its model
    of ``config`` needs at the peak (``charlm.memory.loading``), from the header's sizes."""
    sizes = {name: entry["data_offsets"][1] - entry["data_offsets"][0] for name, entry in header.items()}
    shapes = CharModel.param_shapes(config)
    params = sum(n for name, n in sizes.items() if name in shapes)
    try:
        file_bytes = path.stat().st_size
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read it ({e.strerror or e}).") from None
    return memory.loading(config, file_bytes, params, sum(sizes.values()) - params, with_extra, export)


# Training-state fields that describe a model's history; a shipped model keeps
# these and drops what only resuming needs (optimizer moments, RNG, data position).
HISTORY_FIELDS = (
    "step",
    "epoch",
    "best_val",
    "best_step",
    "chars_seen",
    "elapsed",
    "train_seconds",
    "val_curve",
    "config",
)


def check_export_destination(dst: Path) -> None:
    """Refuse a ``dst`` that is not a regular file or a new name: a symlink (even to a
    regular file), a directory, a device, a FIFO or a socket. Raises CheckpointError."""
    dst = Path(dst)
    try:
        mode = dst.lstat().st_mode
    except FileNotFoundError:
        return
    except OSError as e:
        raise CheckpointError(
            f"{dst}: cannot be checked ({e.strerror or e}).",
            kind="export_unchecked",
            path=str(dst),
            reason=e.strerror or str(e),
        ) from None
    if stat.S_ISREG(mode):
        return
    kinds = ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a pipe (FIFO)"))
    kinds += ((stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device"))
    what = next((word for test, word in kinds if test(mode)), "not a regular file")
    raise CheckpointError(
        f"{dst} is {what}; export writes only regular files. Name a new file or an existing regular one.",
        kind="export_destination",
        path=str(dst),
        what=what,
    )


def export(src: Path, dst: Path, half: bool = False) -> Checkpoint:
    """Copy a checkpoint's weights, config, vocabulary and history to ``dst``,
    without the optimizer moments and carried state, optionally as float16, with the
    sampler's warmed-up state computed for the weights as they will load.
    ``dst`` must be a new name or a regular file (see ``check_export_destination``)."""
    check_export_destination(dst)
    ck = load(src, with_extra=False, memory_for="export")
    history = ck.state.to_dict(HISTORY_FIELDS) if ck.state is not None else None
    model = ck.build_model()
    if half:  # the weights as a float16 file loads them
        check_half(model)
        model.flat[...] = model.flat.astype(np.float16)
    save(dst, model, ck.vocab, history, ck.corpus, half=half, warmed=warmed_state(model, ck.vocab))
    return ck
