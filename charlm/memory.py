"""Memory: what a piece of work needs at its peak, what the machine has, and the check between them.

Before a model or a workspace is allocated, charlm estimates the bytes the work
needs at its peak, every process counted, and refuses with ``NotEnoughMemory``
when they do not fit in the memory available. With P parameters, floats of 4 bytes
and a checkpoint file of F ≈ 4·3P bytes (weights, Adam's m and v):

    training  = runtime + text + 4·6P (θ, ∂L/∂θ, Adam's m, v and two scratch arrays)
                + workspaces + max(a step's temporaries, checkpoints: 3F + 4·2P)
                + per worker process: runtime + workspace + temporaries
                + shared memory: θ once, one ∂L/∂θ per worker process
    loading   = runtime + max(reading the file: F + its tensors,
                              tensors kept + the model's θ + workspace)

A workspace is what the recurrent layers keep per (T, B) chunk shape
(``charlm.cells``): the gate values (T, B, G·H), the states a<t> (and c<t>,
tanh c<t>), and scaled copies of W_ih and W_hh, for a training block; a scoring
or validation pass keeps its own while it runs (``charlm.scorer``: the weights
prepared once, a chunk's pre-activations, outputs and logits). A step's
temporaries are the first layer's table (V, G·H), the logits (T·B, V) and the
gradients flowing down (``CharModel.loss_and_grads``). The checkpoints' peak is
the end of a run: the best checkpoint read back (F), the weights copied twice,
and a checkpoint written (its serialized bytes, twice F).

The memory available comes from ``charlm.sysmem``; where it is unknown (another
system than Linux), nothing is checked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

from charlm import rowsplit
from charlm.cells import CELLS
from charlm.cells.lstm import steps_per_span
from charlm.config import ModelConfig, TrainConfig
from charlm.corpus import MEMMAP_MIN_CHARS
from charlm.errors import NotEnoughMemory
from charlm.evaluate import EVAL_BATCH, EVAL_STEPS, EVAL_WARMUP
from charlm.model import CharModel
from charlm.scorer import chunk_floats, prepared_floats
from charlm.sysmem import available_bytes

FLOAT = 4  # bytes of a float32, every model array's dtype
INT = 8  # bytes of an int64, the dtype of a chunk's ids and targets
RUNTIME = 64 * 2**20  # the main process before any model (Python, NumPy, charlm, its CLI), and room for allocator slack
WORKER_RUNTIME = 40 * 2**20  # a worker process before its first block
HEADER = 2**18  # a checkpoint's JSON header (tensor entries, vocabulary, validation curve), at most about
USABLE = 0.9  # share of the memory available an estimate may fill: the rest is for the estimate's error


@dataclass(frozen=True)
class Estimate:
    """Bytes a piece of work needs at its peak, by part, all its processes together.

    Training parts: parameters, gradients, optimizer (Adam's m, v and two scratch
    arrays), workspace (the main process's layer workspaces and a step's
    temporaries), checkpoints (what writing and reading back checkpoints adds over
    a step), workers (the worker processes and the shared memory they use), text
    (the encoded corpus) and runtime. Loading parts: parameters (the model),
    checkpoint (its tensors, kept), workspace, reading (what reading the file adds
    at its peak) and runtime."""

    parts: dict[str, int]
    workers: int = 0  # worker processes besides the main one

    @property
    def total(self) -> int:
        return sum(self.parts.values())


# --------------------------------------------------------------------------- #
# What the arrays take
# --------------------------------------------------------------------------- #


def layer_workspace(cell: str, D: int, H: int, T: int, B: int, backward: bool) -> int:
    """Floats in one recurrent layer's workspace for a (T, B) chunk of D inputs
    (``Recurrent._workspace`` and the cell's ``_extra_buffers``); without
    ``backward``, only those a forward pass writes (the others are never touched
    and take no memory), with it also the buffers a backward pass adds or writes."""
    kind = CELLS[cell]
    GH = kind.gates * H
    n = T * B * GH  # gates
    n += (T + 1) * B * H + B * GH + 2 * B * H  # a_seq, z_rec, tmp1, tmp2
    n += GH * (D + 2)  # w_ih_scaled, scale, b_scaled
    if backward and not kind.grad_over_gates:
        n += T * B * GH  # grad_z
    if cell == "lstm":
        n += (T + 1) * B * H + T * B * H + GH + H * GH  # c_seq, tanh_c, numerator, w_hh_scaled_t
        if backward:
            span = min(T, steps_per_span(B * 11 * H * FLOAT))
            n += span * B * 5 * H  # gate_factors (S, B, 4H), cell_factor (S, B, H)
    elif cell == "gru":
        n += T * B * H + 3 * H * H + 2 * B * H  # rc_prev, w_ru_t, w_c_t, z_ru
        if backward:
            n += T * B * H  # one_minus_u
    else:
        n += H * H  # w_hh_scaled_t
    return n


def model_workspace(c: ModelConfig, T: int, B: int, backward: bool) -> int:
    """Bytes of every layer's workspace for a (T, B) chunk."""
    return FLOAT * sum(
        layer_workspace(c.cell, c.embed if layer == 0 else c.hidden, c.hidden, T, B, backward)
        for layer in range(c.layers)
    )


def step_temporaries(c: ModelConfig, T: int, B: int, mask_rows: int) -> int:
    """Bytes a training step of a (T, B) block allocates beyond the workspaces, at
    its peak: the forward pass's table (V, G·H) and its scaled copy; or, backward,
    the logits (T·B, V), the gradients flowing down (T·B, H), one weight
    gradient's product and the embedding's gradient. With dropout: the masked
    layer outputs, and the masks of ``mask_rows`` rows drawn here (all the batch's,
    in the main process), each drawn through three (T, rows, H) temporaries."""
    V, E, H, L = c.vocab_size, c.embed, c.hidden, c.layers
    GH, N, wide = CELLS[c.cell].gates * H, T * B, max(H, E)
    if V <= 2 * E:  # the first layer's gradient goes through the table's (see CharModel._backward)
        first = N * V + V * GH + max(GH * E, V * E)
    else:
        first = 2 * N * E + N * V + V * E
    forward = 2 * V * GH
    backward = N * V + 6 * N + 3 * N * wide + max(GH * wide, first)
    masks = drawing = 0
    if c.dropout > 0:
        forward += L * N * H  # the masked inputs of the layers and the top output
        backward += (L + 1) * N * H  # … and the masked gradient
        masks, drawing = L * T * mask_rows * H, 3 * T * mask_rows * H
    return FLOAT * (masks + max(drawing, forward, backward)) + 4 * N * INT


def scoring_workspace(c: ModelConfig) -> int:
    """Bytes a scoring pass keeps (``charlm.scorer.Scorer``): the prepared weights, the
    arrays of a pass's (EVAL_STEPS, EVAL_BATCH) chunk and a last row's (EVAL_STEPS, 1)."""
    return FLOAT * (prepared_floats(c) + chunk_floats(c, EVAL_STEPS, EVAL_BATCH) + chunk_floats(c, EVAL_STEPS, 1))


def scoring_temporaries(c: ModelConfig) -> int:
    """Bytes a validation or scoring pass of EVAL_STEPS × EVAL_BATCH allocates beyond
    the workspace: the unscaled table while preparing, or a time loop's (B, ·) scratch
    and a chunk's ids, targets and float64 sums; and the rows' warm-up ids (twice)."""
    V, GH, H, N = c.vocab_size, CELLS[c.cell].gates * c.hidden, c.hidden, EVAL_STEPS * EVAL_BATCH
    return FLOAT * max(V * GH, EVAL_BATCH * (GH + 3 * H)) + 8 * N * INT + 2 * EVAL_WARMUP * EVAL_BATCH * INT


# --------------------------------------------------------------------------- #
# The two estimates
# --------------------------------------------------------------------------- #


def training(model: ModelConfig, train: TrainConfig, vocab_size: int, corpus_chars: int) -> Estimate:
    """The peak of a training run of ``model`` (its vocabulary ``vocab_size``) with
    ``train``'s batch and worker processes on a text of ``corpus_chars`` characters,
    from its start through its last checkpoint (a resumed run's start included)."""
    c = replace(model, vocab_size=vocab_size)
    P = CharModel.count_params(c)
    B, T, L, H = train.batch_size, train.seq_len, c.layers, c.hidden
    from charlm.parallel import default_workers, row_blocks  # here: loading a model needs no worker processes

    blocks = row_blocks(B, min(train.threads or default_workers(B), B))
    b = max(s.stop - s.start for s in blocks)  # rows of the largest block
    workers = len(blocks) - 1
    state = FLOAT * L * len(CELLS[c.cell].state_names) * B * H  # the carried state, every (B, H) array
    step = step_temporaries(c, T, b, mask_rows=B) + 4 * B * T * INT + state  # and the batch, the new state
    file = FLOAT * 3 * P + state + HEADER  # a checkpoint: θ, Adam's m and v, the carried state
    ends = 3 * file + 2 * FLOAT * P  # the best read back, θ copied twice, a checkpoint serialized twice
    worker = WORKER_RUNTIME + model_workspace(c, T, b, backward=True) + step_temporaries(c, T, b, mask_rows=0)
    exchange = 2 * T * b * INT + 2 * state * b // B + (FLOAT * L * T * b * H if c.dropout > 0 else 0)
    shared = FLOAT * P * (1 + workers) + workers * exchange if workers else 0  # θ, a ∂L/∂θ per worker
    parts = {
        "parameters": FLOAT * P,
        "gradients": FLOAT * P,
        "optimizer": 4 * FLOAT * P,
        "workspace": model_workspace(c, T, b, backward=True)
        + scoring_workspace(c)  # the end of a run scores the best weights read back
        + max(step, scoring_temporaries(c)),
        "checkpoints": max(0, ends - step),
        "workers": workers * worker + shared,
        "text": 2 * max(0, corpus_chars)
        if corpus_chars < MEMMAP_MIN_CHARS
        else 0,  # uint16 ids; a longer text is mapped
        "runtime": RUNTIME,
    }
    return Estimate(parts, workers)


def loading(
    c: ModelConfig, file_bytes: int, param_bytes: int, extra_bytes: int, keep_extra: bool, export: bool = False
) -> Estimate:
    """The peak of reading a checkpoint of ``file_bytes`` bytes (its parameters
    ``param_bytes`` as stored, its other tensors ``extra_bytes``), building the model
    of config ``c`` from it and then scoring or sampling with it, or with ``export``
    writing it again. ``keep_extra``: the other tensors are kept after reading."""
    P = CharModel.count_params(c)
    as_float = FLOAT * P if param_bytes != FLOAT * P else 0  # float16 weights are converted
    reading = file_bytes + param_bytes + extra_bytes + as_float  # the file's bytes, then its tensors
    kept = FLOAT * P + (extra_bytes if keep_extra else 0)
    largest = max(math.prod(s) for s in CharModel.param_shapes(c).values())
    init = 8 * largest  # initialising the new model's weights draws float64s, a tensor at a time
    if export:
        use = 2 * (param_bytes + HEADER)  # the copy's file, serialized twice
    else:  # a long text's rows may be scored in forks too, each preparing its own weights
        forks = rowsplit.processes_for(2**62, EVAL_BATCH) - 1
        use = scoring_workspace(c) + scoring_temporaries(c) + forks * FLOAT * prepared_floats(c)
    workspace = max(init, use)
    parts = {
        "parameters": FLOAT * P,
        "checkpoint": kept,
        "workspace": workspace,
        "reading": max(0, reading - (kept + FLOAT * P + workspace)),
        "runtime": RUNTIME,
    }
    return Estimate(parts)


# --------------------------------------------------------------------------- #
# The check
# --------------------------------------------------------------------------- #


def fits(estimate: Estimate, available: int | None) -> bool:
    """True when ``estimate`` fits in USABLE of ``available`` bytes (or that is unknown)."""
    return available is None or estimate.total <= USABLE * available


def size_text(n: float) -> str:
    """Bytes for people: 820 MiB, 31.4 GiB, 1.2 TiB."""
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{max(1, round(n / 2**20))} MiB"


TRAINING_WORDS = {
    "parameters": "parameters",
    "gradients": "gradients",
    "optimizer": "Adam's moments",
    "workspace": "workspace",
    "checkpoints": "checkpoint writes",
    "text": "text",
}
LOADING_WORDS = {
    "parameters": "parameters",
    "checkpoint": "checkpoint tensors",
    "workspace": "workspace",
    "reading": "reading the file",
}


def breakdown(estimate: Estimate, words: dict[str, str]) -> str:
    """The estimate's large parts, worded: "parameters 32.0 GiB, …, 1 worker process 35.2 GiB"."""
    shown = [
        f"{words[k]} {size_text(v)}" for k, v in estimate.parts.items() if k in words and v >= 0.01 * estimate.total
    ]
    if estimate.workers:
        n = estimate.workers
        shown.append(f"{n} worker process{'es' if n > 1 else ''} {size_text(estimate.parts['workers'])}")
    return ", ".join(shown)


def refuse(what: str, estimate: Estimate, available: int, words: dict[str, str], smaller: dict[str, int]):
    """The NotEnoughMemory error for ``estimate``; ``smaller``: settings with which it would fit."""
    parts = breakdown(estimate, words)
    advice = (
        "a smaller setting that fits: " + " or ".join(f"{k.replace('_', ' ')} {v}" for k, v in smaller.items())
        if smaller
        else "free some memory or use a machine with more"
    )
    return NotEnoughMemory(
        f"{what} needs about {size_text(estimate.total)} ({parts}) but {size_text(available)} is available; {advice}.",
        kind="memory",
        what=what,
        needed=size_text(estimate.total),
        available=size_text(available),
        breakdown=parts,
        smaller=smaller,
    )


def check_training(
    model: ModelConfig, train: TrainConfig, vocab_size: int, corpus_chars: int, *, resuming: bool = False
) -> Estimate:
    """Refuse (NotEnoughMemory) a training run whose estimate does not fit in the memory
    available, naming a smaller hidden size, number of layers, batch size or number
    of row blocks that would fit (on ``resuming``, only the row blocks may change)."""
    estimate = training(model, train, vocab_size, corpus_chars)
    available = available_bytes()
    if fits(estimate, available):
        return estimate
    assert available is not None

    def ok(m: ModelConfig, t: TrainConfig) -> bool:
        return fits(training(m, t, vocab_size, corpus_chars), available)

    smaller: dict[str, int] = {}
    if not resuming:
        hidden = _first(_halvings(model.hidden), lambda h: ok(replace(model, hidden=h), train))
        layers = _first(range(model.layers - 1, 0, -1), lambda n: ok(replace(model, layers=n), train))
        batch = _first(
            (b for b in _halvings(train.batch_size) if b >= train.threads),
            lambda b: ok(model, replace(train, batch_size=b)),
        )
        smaller.update({k: v for k, v in (("hidden", hidden), ("layers", layers), ("batch_size", batch)) if v})
    if estimate.workers:
        threads = _first(range(estimate.workers, 0, -1), lambda k: ok(model, replace(train, threads=k)))
        if threads:
            smaller["threads"] = threads
    raise refuse(
        "resuming this run" if resuming else "training this model", estimate, available, TRAINING_WORDS, smaller
    )


def check_loading(path: Path, estimate: Estimate) -> None:
    """Refuse (NotEnoughMemory) reading the checkpoint ``path`` when ``estimate`` does not fit."""
    available = available_bytes()
    if not fits(estimate, available):
        assert available is not None
        raise refuse(f"{path}: this model", estimate, available, LOADING_WORDS, {})


def _halvings(n: int):
    """n // 2, n // 4, … down to 1."""
    n //= 2
    while n >= 1:
        yield n
        n //= 2


def _first(values, good) -> int | None:
    """The first of ``values`` for which ``good`` holds, else None."""
    return next((v for v in values if good(v)), None)
