"""The PyTorch LSTM peer trained with charlm's default recipe for a wall-clock budget.

The recipe is read when the script runs from charlm.config's dataclasses, ``ModelConfig()`` and
``TrainConfig()`` (the defaults of ``charlm train``), so a change of charlm's defaults reaches the peer
without an edit here:

    model     nn.Embedding(V, E) → nn.LSTM(E, H, N; dropout between layers) → dropout → nn.Linear(H, V)
              (torch_peer.build_model, PyTorch's default initialisation; when forget_bias ≠ 0 the forget-gate
              block of b_ih is set to it and that of b_hh to 0, so b_f = forget_bias as in charlm)
    data      charlm's pipeline (charlm.corpus.load_corpus with TrainConfig()): the text read as charlm train
              reads it, its sorted characters as vocabulary, the last val_frac held out, the rest cut into B
              streams read T characters at a time, the state carried and reset at each epoch (BatchStream)
    step      mean cross-entropy, backward, clip_grad_norm_(clip), Adam (betas 0.9, 0.999, as charlm's)
    schedule  charlm's own budget and learning rate (charlm.budget.TimeBudget, charlm.optim.timed_learning_rate):
              linear warm-up over ``warmup`` steps times a cosine from lr to final_lr_frac·lr over the fraction of
              the training time used; the budget counts from this process's start, as ``charlm train --minutes``
              counts from its own, and keeps back the time of the final validation
    validate  every eval_every steps and after the last one, on charlm's spread sample of the held-out text
              (charlm.validation.VAL_SAMPLE characters, the first of each of the 64 warmed-up rows); the best
              weights are kept in memory (charlm writes best.safetensors) and at the end scored on the whole
              held-out text (its first val_chars), inside the budget as charlm's final validation is

Settings of the dataclasses the peer does not know (added after it was written) are listed under "ignored"
in the JSON and on stderr. Results are one JSON object on stdout; progress goes to stderr.

    python benchmarks/recipe_peer.py --minutes 3 --seed 0 --json
"""

from __future__ import annotations

import copy
import json
import math
import sys
import time
from dataclasses import asdict, fields

from benchlib import BenchError, fail, peer_args, require_torch_and_charlm, run_as_user

# the settings of charlm.config the peer follows (or that do not concern it); any other is reported as ignored
KNOWN_MODEL = {"vocab_size", "cell", "embed", "hidden", "layers", "dropout", "forget_bias"}
KNOWN_TRAIN = {
    "batch_size", "seq_len", "lr", "clip", "val_frac", "val_chars", "eval_every", "steps", "epochs", "minutes",
    "seed", "warmup", "final_lr_frac", "threads", "encoding", "errors", "normalize", "keep_cr",
}  # fmt: skip


def charlm_recipe() -> dict:
    """charlm train's defaults as {"model": …, "train": …, "ignored": [...]} (from the dataclasses)."""
    from charlm.config import ModelConfig, TrainConfig

    model, train = ModelConfig(), TrainConfig()
    ignored = [f"ModelConfig.{f.name}" for f in fields(model) if f.name not in KNOWN_MODEL]
    ignored += [f"TrainConfig.{f.name}" for f in fields(train) if f.name not in KNOWN_TRAIN]
    return {"model": asdict(model), "train": asdict(train), "ignored": ignored}


def describe(recipe: dict) -> str:
    """One line: the model and the recipe, e.g. '2×256 LSTM, E 64, dropout 0, batch 32 × 64, Adam lr 0.003 …'."""
    m, t = recipe["model"], recipe["train"]
    return (
        f"{m['layers']}×{m['hidden']} {m['cell'].upper()}, E {m['embed']}, dropout {m['dropout']:g}, "
        f"forget bias {m['forget_bias']:g}; batch {t['batch_size']} × {t['seq_len']}, Adam lr {t['lr']:g}, "
        f"{t['warmup']} warm-up steps, cosine to {t['final_lr_frac']:g}× by the budget, clip {t['clip']:g}, "
        f"validation every {t['eval_every']} steps"
    )


def build(recipe: dict, vocab_size: int, seed: int):
    import torch
    from torch_peer import BenchConfig, build_model

    m, t = recipe["model"], recipe["train"]
    cfg = BenchConfig(m["cell"], m["layers"], m["hidden"], m["embed"], t["batch_size"], t["seq_len"], vocab_size)
    model = build_model(cfg, seed=seed, dropout=m["dropout"])
    fb, H = m["forget_bias"], m["hidden"]
    if fb and m["cell"] == "lstm":
        with torch.no_grad():
            for layer in range(m["layers"]):
                getattr(model.rnn, f"bias_ih_l{layer}")[H : 2 * H] = fb
                getattr(model.rnn, f"bias_hh_l{layer}")[H : 2 * H] = 0.0
    return model


def pass_step_seconds(model, rows: int, steps: int = 128) -> float:
    """Seconds per time step of a validation pass, timed on zeros after an untimed pass (charlm.evaluate's)."""
    import torch

    x = torch.zeros(steps, rows, dtype=torch.long)  # (T, B)
    model.eval()
    with torch.inference_mode():
        model(x)
        t0 = time.perf_counter()
        model(x)
        seconds = time.perf_counter() - t0
    model.train()
    return seconds / steps


def train(corpus: str, seconds: float, seed: int, recipe: dict, started: float) -> dict:
    """Train for ``seconds`` of run clock (counted from ``started``) as charlm.train.Trainer does; every figure."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from score_peer import score_rows

    from charlm.budget import RunClock, TimeBudget
    from charlm.config import TrainConfig
    from charlm.corpora import resolve
    from charlm.corpus import load_corpus
    from charlm.data import BatchStream
    from charlm.evaluate import row_layout, scoring_steps
    from charlm.optim import timed_learning_rate
    from charlm.validation import VAL_SAMPLE

    t = recipe["train"]
    config = TrainConfig(**{k: v for k, v in t.items() if k in KNOWN_TRAIN})
    data = load_corpus(resolve(corpus)[0], config)
    B, T, V = t["batch_size"], t["seq_len"], len(data.vocab)
    stream = BatchStream(data.train_ids, B, T)
    held_out = np.asarray(data.val_ids, dtype=np.int64)
    val_ids = held_out[: t["val_chars"]] if t["val_chars"] else held_out
    n = len(val_ids)
    rows, L = row_layout(n - 1)
    row_limit = None if -(-VAL_SAMPLE // rows) >= L else -(-VAL_SAMPLE // rows)  # charlm.evaluate._row_limit
    model = build(recipe, V, seed)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=t["lr"])
    budget = TimeBudget(seconds, RunClock(0.0, started), scoring_steps(n, VAL_SAMPLE), scoring_steps(n))
    budget.note_validation(pass_step_seconds(model, rows), 1)  # a first measure, as charlm's Trainer takes
    step, position, state, lr = 0, 0, None, 0.0
    best = {"val": math.inf, "step": 0, "weights": None}
    history: list[dict] = []
    window_loss, window_steps, window_t = 0.0, 0, time.perf_counter()

    def validate() -> None:
        nonlocal window_loss, window_steps, window_t
        rate = window_steps * B * T / max(time.perf_counter() - window_t, 1e-9)
        v0 = time.perf_counter()
        nats, count = score_rows(model, val_ids, row_limit=row_limit)
        budget.note_validation(time.perf_counter() - v0, scoring_steps(n, VAL_SAMPLE))
        val = nats / count
        if val < best["val"]:
            s0 = time.perf_counter()
            best.update(val=val, step=step, weights=copy.deepcopy(model.state_dict()))
            budget.note_save(time.perf_counter() - s0)
        train_loss = window_loss / max(window_steps, 1)
        history.append(
            {"step": step, "chars": step * B * T, "train_loss": round(train_loss, 6), "val_loss": round(val, 6),
             "val_chars": count, "lr": lr, "chars_per_s": round(rate, 1), "elapsed": round(budget.clock(), 2)}
        )  # fmt: skip
        print(
            f"  lstm peer: step {step:>6,}  train {train_loss:.4f}  val {val:.4f}  elapsed {budget.clock():.0f} s",
            file=sys.stderr,
            flush=True,
        )
        window_loss, window_steps, window_t = 0.0, 0, time.perf_counter()

    train_seconds = 0.0
    while True:
        plan = budget.plan(validate_after=(step + 1) % t["eval_every"] == 0)
        if plan is None:
            break
        progress, last = plan
        s0 = time.perf_counter()
        x, y = (torch.from_numpy(a) for a in stream.batch(position))  # (T, B) each
        logits, state = model(x, state)  # (T, B, V)
        loss = F.cross_entropy(logits.reshape(-1, V), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), t["clip"])
        lr = timed_learning_rate(step, progress, t["lr"], t["warmup"], t["final_lr_frac"])
        for group in opt.param_groups:
            group["lr"] = lr
        opt.step()
        state = tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()
        step, position = step + 1, position + 1
        if position >= stream.steps_per_epoch:  # a new epoch: the streams start again from zero state
            position, state = 0, None
        window_loss += loss.item()
        window_steps += 1
        budget.note_step(time.perf_counter() - s0)
        train_seconds += time.perf_counter() - s0
        if step % t["eval_every"] == 0:
            validate()
        if last:
            break
    if window_steps or not history:
        validate()
    model.load_state_dict(best["weights"])
    f0 = time.perf_counter()
    nats, count = score_rows(model, val_ids)
    return {
        "system": "lstm-peer",
        "recipe": {k: recipe[k] for k in ("model", "train")},
        "ignored": recipe["ignored"],
        "tail_nats": round(nats / count, 6),
        "tail_chars": count,
        "final_seconds": round(time.perf_counter() - f0, 2),
        "best_step": best["step"],
        "best_sample_val": round(best["val"], 6),
        "steps": step,
        "chars": step * B * T,
        "train_seconds": round(train_seconds, 2),
        "elapsed": round(budget.clock(), 2),
        "budget": seconds,
        "held_out": len(held_out),
        "vocab": V,
        "history": history,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }


def parse_args(argv: list[str] | None = None):
    return peer_args(
        "recipe_peer.py",
        "Train the PyTorch LSTM peer with charlm train's default recipe for a wall-clock budget and "
        "score its best weights on the whole held-out text; one JSON object on stdout.",
        "torch.manual_seed before the model is built.",
        argv,
    )


def main(argv: list[str] | None = None) -> None:
    from charlm.budget import process_started  # as charlm train counts its budget

    started = process_started()
    args = parse_args(argv)
    run_as_user()
    require_torch_and_charlm()
    from charlm.errors import CharlmError

    recipe = charlm_recipe()
    for name in recipe["ignored"]:
        print(f"warning: the peer does not follow charlm's setting {name}", file=sys.stderr)
    print(f"lstm peer: {describe(recipe)}, {args.minutes:g} min …", file=sys.stderr, flush=True)
    try:
        result = train(args.corpus, args.minutes * 60.0, args.seed, recipe, started)
    except CharlmError as e:
        fail(str(e).rstrip("."))
    except BenchError as e:
        fail(str(e))
    if args.as_json:
        print(json.dumps(result, indent=1))
    else:
        print(
            f"held-out {result['tail_nats']:.4f} nats/char ({result['tail_chars']:,} characters), best at step "
            f"{result['best_step']:,} of {result['steps']:,}; {result['elapsed']:.0f} s"
        )


if __name__ == "__main__":
    main()
