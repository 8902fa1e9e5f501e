"""Where charlm's per-step quality gap to PyTorch comes from: the initial weights.

PyTorch trains config B on Shakespeare for a fixed number of steps (default 400) with charlm's
data pipeline and learning-rate schedule (as in quality.py), from three starting points:

    torch        PyTorch's own initialisation
    charlm       charlm's initial weights (--seed 0), forget-gate bias 0 (the default)
    charlm-fb1   the same weights with the forget-gate bias 1 (`--forget-bias 1`)

and prints the mean training loss over the second half of the steps. `charlm train shakespeare
--steps 400 --seed 0 [--forget-bias 1]` prints the charlm side's own figure for the same window
(its log line at step 400). Needs PyTorch (benchmark only).

    python benchmarks/init_ablation.py
"""

from __future__ import annotations

import argparse

import numpy as np
from benchlib import run_as_user
from quality import BATCH, CLIP, EMBED, FINAL_LR_FRAC, HIDDEN, LAYERS, LR, SEQ_LEN, WARMUP, load_data
from torch_peer import BenchConfig, build_model, detach_state

from charlm.model import CharModel, ModelConfig
from charlm.optim import learning_rate


def mean_train_loss(init: str, steps: int, seed: int) -> float:
    import torch
    import torch.nn.functional as F

    vocab, stream, _ = load_data("shakespeare")
    V = len(vocab)
    model = build_model(BenchConfig("lstm", LAYERS, HIDDEN, EMBED, BATCH, SEQ_LEN, V), seed=seed)
    if init != "torch":
        forget_bias = 1.0 if init == "charlm-fb1" else 0.0
        config = ModelConfig(V, embed=EMBED, hidden=HIDDEN, layers=LAYERS, forget_bias=forget_bias)
        start = CharModel(config, seed=seed)  # the same weights either way; only b_f differs
        params = dict(model.named_parameters())  # the same names as charlm's tensors
        with torch.no_grad():
            for name, value in start.params.items():
                params[name].copy_(torch.from_numpy(value))
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    state, losses = None, []
    for step in range(steps):
        x, y = (torch.from_numpy(a) for a in stream.batch(step % stream.steps_per_epoch))
        logits, state = model(x, state)  # (T, B, V)
        loss = F.cross_entropy(logits.reshape(-1, V), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        for group in opt.param_groups:
            group["lr"] = learning_rate(step, steps, LR, WARMUP, FINAL_LR_FRAC)
        opt.step()
        state = detach_state(state)
        losses.append(loss.item())
    return float(np.mean(losses[steps // 2 :]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=400, help="Training steps per run (within one epoch).")
    p.add_argument("--seed", type=int, default=0, help="Seed of both initialisations.")
    args = p.parse_args()
    run_as_user()
    for init in ("torch", "charlm", "charlm-fb1"):
        loss = mean_train_loss(init, args.steps, args.seed)
        print(f"{init:<11} mean training loss over steps {args.steps // 2}–{args.steps}: {loss:.4f} nats/char")


if __name__ == "__main__":
    main()
