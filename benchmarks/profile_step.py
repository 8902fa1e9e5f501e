"""Where one row block's training step spends its time (one process, one BLAS thread).

    python benchmarks/profile_step.py                      # config B's block: 2×256, 16 rows
    python benchmarks/profile_step.py --layers 1 --hidden 128 --rows 16     # config A's block
    python benchmarks/profile_step.py --hidden 512 --rows 32 --seq-len 100  # config C's block

Times ``CharModel.loss_and_grads`` on random ids, as a worker does with its rows
of the batch, and splits the median step into: the forward time loops, the
backward time loops, the whole-sequence products of the recurrent layers
(input projections forward; weight and input gradients backward), the first
layer's table and embedding gradients, and the rest (decoder, softmax). The
parts are measured by wrapping the layer methods with timers, so they add up
to the step within the timers' own cost (well under 1%).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

import numpy as np
from benchlib import run_as_user

from charlm import blas
from charlm.cells import Recurrent
from charlm.model import CharModel, ModelConfig

TIMED = {  # (class, method) → what it holds
    (Recurrent, "_forward_loop"): "forward time loops",
    (Recurrent, "_backward_loop"): "backward time loops",
    (Recurrent, "forward"): "layer forward",
    (Recurrent, "forward_from_table"): "layer forward",
    (Recurrent, "backward"): "layer backward",
    (CharModel, "_forward"): "model forward",
    (CharModel, "_backward"): "model backward",
}


def instrument(spent: dict[str, float]) -> None:
    """Wrap each timed method so that its wall time is added to ``spent``; the
    subclasses' own _forward_loop/_backward_loop are wrapped too."""
    targets = []
    for (cls, name), label in TIMED.items():
        classes = [cls, *cls.__subclasses__()] if name.endswith("_loop") else [cls]
        targets += [(c, name, label) for c in classes if name in vars(c)]
    for cls, name, label in targets:
        fn = vars(cls)[name]

        def timed(*args, _fn=fn, _label=label, **kw):
            t = time.perf_counter()
            try:
                return _fn(*args, **kw)
            finally:
                spent[_label] += time.perf_counter() - t

        setattr(cls, name, timed)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cell", default="lstm", choices=["lstm", "gru", "rnn"])
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--embed", type=int, default=64)
    p.add_argument("--rows", type=int, default=16, help="Rows of the block (a worker's share of the batch).")
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--vocab", type=int, default=65)
    p.add_argument("--steps", type=int, default=20, help="Timed steps (after 2 of warm-up).")
    a = p.parse_args()
    run_as_user()

    model = CharModel(ModelConfig(a.vocab, a.cell, a.embed, a.hidden, a.layers), seed=0)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, a.vocab, (a.seq_len, a.rows))
    targets = rng.integers(0, a.vocab, (a.seq_len, a.rows))
    state = model.zero_state(a.rows)
    spent: dict[str, float] = defaultdict(float)
    instrument(spent)
    steps = []
    with blas.limit(1):
        for k in range(a.steps + 2):
            if k == 2:
                spent.clear()
            t = time.perf_counter()
            model.loss_and_grads(ids, targets, state)
            if k >= 2:
                steps.append(time.perf_counter() - t)
    n = a.steps
    total = sum(steps) / n
    part = {k: v / n for k, v in spent.items()}
    loops_f, loops_b = part["forward time loops"], part["backward time loops"]
    rows = [
        ("forward time loops", loops_f),
        ("backward time loops", loops_b),
        ("input projections (forward, whole sequence)", part["model forward"] - loops_f),
        ("weight and input gradients (backward, whole sequence)", part["layer backward"] - loops_b),
        ("first layer's table and embedding gradients", part["model backward"] - part["layer backward"]),
        ("decoder, softmax and the rest", total - part["model forward"] - part["model backward"]),
    ]
    print(
        f"{a.layers}×{a.hidden} {a.cell.upper()}, E {a.embed}, block of {a.rows} rows × {a.seq_len} steps: "
        f"median step {statistics.median(steps) * 1e3:.2f} ms (mean {total * 1e3:.2f} ms over {n})"
    )
    for label, sec in rows:
        print(f"  {label:56s} {sec * 1e3:9.2f} ms  {sec / total * 100:5.1f}%")


if __name__ == "__main__":
    main()
