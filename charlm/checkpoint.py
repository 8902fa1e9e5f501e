"""Checkpoints: one safetensors file, written atomically, read without executing code.

Layout of a checkpoint file:

* tensors named and shaped like a PyTorch state dict: ``embedding.weight`` (V, E),
  ``rnn.weight_ih_l{k}`` (G·H, D), ``rnn.weight_hh_l{k}`` (G·H, H),
  ``rnn.bias_ih_l{k}``, ``rnn.bias_hh_l{k}`` (G·H,) with PyTorch's gate order
  (LSTM: i, f, g, o), ``decoder.weight`` (V, H), ``decoder.bias`` (V,);
* optionally ``optimizer.exp_avg`` / ``optimizer.exp_avg_sq`` (flat Adam moments)
  and ``state.<name>_l{k}`` (the carried hidden state), for exact resume;
* string metadata: ``format`` ("charlm"), ``format_version``, ``config`` (JSON),
  ``vocab`` (JSON list of code points), ``train`` (JSON training state) and
  ``corpus`` (JSON: name, sha256, characters).

Loading parses the 8-byte header length and JSON header first (never pickle),
so a damaged or foreign file is refused with a ``CheckpointError``.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from charlm.errors import CheckpointError
from charlm.model import CELLS, CharModel, ModelConfig
from charlm.vocab import Vocab

FORMAT = "charlm"
FORMAT_VERSION = 1
MAX_HEADER = 100 * 1024 * 1024
DTYPES = {"F32": np.float32, "F64": np.float64}


@dataclass
class Checkpoint:
    config: ModelConfig
    vocab: Vocab
    params: dict[str, np.ndarray]
    train: dict = field(default_factory=dict)  # training state (step, best val loss, …)
    corpus: dict = field(default_factory=dict)  # name, sha256, characters
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # optimizer moments, carried state
    path: Path | None = None

    def build_model(self) -> CharModel:
        model = CharModel(self.config)
        model.load_params(self.params)
        return model


# --------------------------------------------------------------------------- #
# Writing
# --------------------------------------------------------------------------- #


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that ``path`` is always either the old file
    or the complete new one: temp file in the same folder, fsync, os.replace."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def save(
    path: Path,
    model: CharModel,
    vocab: Vocab,
    train: dict | None = None,
    corpus: dict | None = None,
    extra: dict[str, np.ndarray] | None = None,
) -> None:
    from safetensors.numpy import save as st_save

    tensors = {name: np.ascontiguousarray(p) for name, p in model.params.items()}
    for name, arr in (extra or {}).items():
        tensors[name] = np.ascontiguousarray(arr)
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "config": model.config.to_json(),
        "vocab": vocab.to_json(),
        "train": json.dumps(train or {}, sort_keys=True),
        "corpus": json.dumps(corpus or {}, sort_keys=True),
    }
    data = st_save(tensors, metadata=metadata)
    try:
        atomic_write(Path(path), data)
    except OSError as e:
        reason = e.strerror or str(e)
        raise CheckpointError(
            f"cannot write checkpoint {path}: {reason}. Any previous checkpoint there is unchanged; "
            "free some space or choose another --out folder."
        ) from None


# --------------------------------------------------------------------------- #
# Reading
# --------------------------------------------------------------------------- #


def _refuse_foreign(path: Path, head: bytes) -> None:
    if head[:1] == b"\x80" or head[:2] in (b"(d", b"(l", b"}q", b"]q"):
        raise CheckpointError(
            f"{path}: this is a Python pickle, not a charlm checkpoint; charlm never unpickles "
            "files (loading one can run arbitrary code). Use a .safetensors file written by charlm."
        )
    if head[:4] == b"PK\x03\x04":
        raise CheckpointError(
            f"{path}: this is a zip archive (e.g. a PyTorch .pt file), not a charlm checkpoint; "
            "charlm reads only .safetensors files written by charlm."
        )


def read_header(path: Path) -> tuple[dict, dict]:
    """(tensor entries, metadata) from the safetensors header, without reading tensors."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint. Train a model first with 'charlm train FILE'.")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory; give a .safetensors file (or a run folder where accepted).")
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            _refuse_foreign(path, head)
            if len(head) < 8:
                raise CheckpointError(f"{path}: too short to be a checkpoint (truncated or empty file).")
            (n,) = struct.unpack("<Q", head)
            size = path.stat().st_size
            if n == 0 or n > MAX_HEADER or 8 + n > size:
                raise CheckpointError(f"{path}: not a safetensors file, or truncated (bad header length).")
            raw = f.read(n)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read it ({e.strerror}).") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(f"{path}: damaged checkpoint (the header is not valid JSON).") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: damaged checkpoint (the header is not a JSON object).")
    meta = header.pop("__metadata__", None)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: a safetensors file, but not one written by charlm (no charlm metadata).")
    version = meta.get("format_version")
    if version != str(FORMAT_VERSION):
        raise CheckpointError(
            f"{path}: checkpoint format version {version!r}; this charlm reads version {FORMAT_VERSION}. "
            "Use the charlm version that wrote it, or retrain."
        )
    data_len = size - 8 - n
    for name, entry in header.items():
        ok = (
            isinstance(entry, dict)
            and entry.get("dtype") in DTYPES
            and isinstance(entry.get("shape"), list)
            and all(isinstance(d, int) and d >= 0 for d in entry["shape"])
            and isinstance(entry.get("data_offsets"), list)
            and len(entry["data_offsets"]) == 2
            and all(isinstance(o, int) for o in entry["data_offsets"])
        )
        if not ok:
            raise CheckpointError(f"{path}: damaged checkpoint (bad entry for tensor {name!r}).")
        start, end = entry["data_offsets"]
        nbytes = int(np.prod(entry["shape"], dtype=np.int64)) * np.dtype(DTYPES[entry["dtype"]]).itemsize
        if not 0 <= start <= end <= data_len or end - start != nbytes:
            raise CheckpointError(f"{path}: damaged or truncated checkpoint (tensor {name!r} out of bounds).")
    return header, meta


def _json_field(path: Path, meta: dict, key: str):
    try:
        return json.loads(meta[key])
    except KeyError:
        raise CheckpointError(f"{path}: damaged checkpoint (metadata {key!r} is missing).") from None
    except (TypeError, json.JSONDecodeError):
        raise CheckpointError(f"{path}: damaged checkpoint (metadata {key!r} is not valid JSON).") from None


def load(path: Path, with_extra: bool = True) -> Checkpoint:
    """Read and fully validate a checkpoint; raises CheckpointError, nothing else."""
    path = Path(path)
    header, meta = read_header(path)
    cfg = _json_field(path, meta, "config")
    try:
        config = ModelConfig.from_dict(cfg)
        if config.cell not in CELLS or min(config.vocab_size, config.embed, config.hidden, config.layers) < 1:
            raise ValueError
        if not 0.0 <= config.dropout < 1.0:
            raise ValueError
        shapes = CharModel.param_shapes(config)
    except (TypeError, ValueError):
        raise CheckpointError(f"{path}: damaged checkpoint (the model config is not valid).") from None
    try:
        vocab = Vocab.from_json(meta.get("vocab", "null"))
    except Exception:
        raise CheckpointError(f"{path}: damaged checkpoint (the vocabulary is not valid).") from None
    if len(vocab) != config.vocab_size:
        raise CheckpointError(f"{path}: damaged checkpoint (vocabulary size does not match the config).")
    train = _json_field(path, meta, "train") if "train" in meta else {}
    corpus = _json_field(path, meta, "corpus") if "corpus" in meta else {}
    if not isinstance(train, dict) or not isinstance(corpus, dict):
        raise CheckpointError(f"{path}: damaged checkpoint (training metadata is not a JSON object).")
    for name, shape in shapes.items():
        if name not in header:
            raise CheckpointError(f"{path}: damaged checkpoint (tensor {name!r} is missing).")
        if tuple(header[name]["shape"]) != shape:
            raise CheckpointError(
                f"{path}: damaged checkpoint (tensor {name!r} has shape {tuple(header[name]['shape'])}, "
                f"expected {shape})."
            )
    try:
        from safetensors.numpy import load as st_load

        tensors = st_load(path.read_bytes())
    except Exception:
        raise CheckpointError(f"{path}: damaged checkpoint (the tensor data cannot be read).") from None
    params = {n: tensors[n].astype(np.float32, copy=False) for n in shapes}
    for n, p in params.items():
        if not np.isfinite(p).all():
            raise CheckpointError(f"{path}: damaged checkpoint (tensor {n!r} holds NaN or infinity).")
    extra = {n: t for n, t in tensors.items() if n not in shapes} if with_extra else {}
    return Checkpoint(config, vocab, params, train, corpus, extra, path)
