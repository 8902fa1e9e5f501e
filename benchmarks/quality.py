"""Quality at equal time: charlm and PyTorch train config B on Shakespeare for the same wall-clock budget.

Both sides train the same model on the same data with the same recipe, one after the other:

    model     Embedding(V, 64) → 2-layer LSTM, H = 256 → Linear(256, V)
    data      the shipped corpus; the vocabulary is its sorted set of characters; the last 10% of the
              characters are held out; the rest is cut into B = 32 contiguous streams read T = 64
              characters at a time, with the state carried from chunk to chunk (reset at each epoch)
    recipe    Adam, lr 3e-3 with a linear warm-up over 50 steps, then cosine decay to 10% at the end of
              the planned steps (planned from the side's own measured step time at step 20 and at every
              validation); gradients clipped to a global norm of 5
    budget    --seconds of wall-clock time (default 600), validations included
    val loss  mean nats per character of the held-out text, scored in 64 contiguous rows with the state
              carried (every character after the first predicted once), every 200 steps and at the end;
              the best one is reported

charlm side: ``charlm train`` (the console script next to the interpreter), its figures read from the
run's metrics.jsonl. PyTorch side: this process, with charlm's own data pipeline (charlm.data,
charlm.vocab) and learning-rate function (charlm.optim.learning_rate), so the data, vocabulary, split and
schedule are the same by construction; the model is torch_peer.build_model (PyTorch's default
initialisation; charlm's default starts its forget-gate bias at 0 as well). The "Quality at equal time" section of
benchmarks/RESULTS.md is written (other sections are kept) and the histories go to benchmarks/quality.json.

    python benchmarks/quality.py                  # 600 s per side, about 21 minutes in all
    python benchmarks/quality.py --seconds 20 --out /tmp/R.md
"""

from __future__ import annotations

import json
import math
import shlex
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from benchlib import (
    BenchError,
    Parser,
    bounded,
    command_block,
    cpu_model,
    fail,
    nproc,
    parse_with_outputs,
    pins_line,
    replace_section,
    run_as_user,
    user_command,
    user_env,
    write_atomic,
)

SECTION = "Quality at equal time"

# Config B and the training recipe (charlm train's defaults, passed explicitly).
LAYERS, HIDDEN, EMBED, BATCH, SEQ_LEN = 2, 256, 64, 32, 64
LR, WARMUP, FINAL_LR_FRAC, CLIP, VAL_FRAC, EVAL_EVERY = 3e-3, 50, 0.1, 5.0, 0.1, 200
EVAL_BATCH, EVAL_SEQ, EVAL_WARMUP = 64, 128, 256  # as charlm.evaluate


# --------------------------------------------------------------------------- #
# charlm side
# --------------------------------------------------------------------------- #


def charlm_command(python: Path, corpus: str, seconds: float, out_dir: Path, seed: int) -> list[str]:
    charlm = python.parent / "charlm"
    if not charlm.is_file():
        raise BenchError(
            f"no 'charlm' console script next to {python}. Install charlm into that environment "
            "(pip install -e .) or pass --python with an interpreter that has it"
        )
    return [
        str(charlm), "train", corpus, "--minutes", repr(seconds / 60.0), "--out", str(out_dir), "--name", "quality",
        "--seed", str(seed), "--layers", str(LAYERS), "--hidden", str(HIDDEN), "--embed", str(EMBED),
        "--batch-size", str(BATCH), "--seq-len", str(SEQ_LEN), "--lr", repr(LR), "--clip", repr(CLIP),
        "--val-frac", repr(VAL_FRAC), "--eval-every", str(EVAL_EVERY),
    ]  # fmt: skip


def run_charlm(cmd: list[str], run_dir: Path) -> dict:
    """Run ``charlm train``, pass its progress lines through to stderr, read metrics.jsonl."""
    env = user_env(NO_COLOR="1", TERM="dumb", COLUMNS="200")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    last = "no message"
    assert proc.stderr is not None
    for line in proc.stderr:
        if line.strip():
            last = line.strip()
            print(f"  charlm: {last}", file=sys.stderr, flush=True)
    stdout = proc.stdout.read() if proc.stdout else ""
    if proc.wait() != 0:
        raise BenchError(f"{shlex.join(cmd)} failed with exit code {proc.returncode}: {last}")
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        raise BenchError(f"charlm train finished but wrote no {metrics}")
    history = [json.loads(line) for line in metrics.read_text(encoding="utf-8").splitlines() if line.strip()]
    validations = [r for r in history if "val_loss" in r]  # during the run: on the held-out sample
    final = history[-1] if "best_val_loss" in history[-1] else None  # the end: best weights, whole held-out text
    best = min(validations, key=lambda r: r["val_loss"])
    return {
        "best_val": final["best_val_loss"] if final else best["val_loss"],
        "best_step": final["best_step"] if final else best["step"],
        "steps": validations[-1]["step"],
        "chars": validations[-1]["chars"],
        "elapsed": history[-1]["elapsed"],
        "history": history,
        "stdout": stdout.strip().splitlines(),
    }


# --------------------------------------------------------------------------- #
# PyTorch side
# --------------------------------------------------------------------------- #


def load_data(corpus: str):
    """charlm's pipeline: (vocab, training BatchStream, validation ids)."""
    from charlm.corpora import resolve
    from charlm.data import BatchStream, split_text
    from charlm.text import read_text
    from charlm.vocab import Vocab

    path, _ = resolve(corpus)
    text = read_text(path)
    train_text, val_text = split_text(text, VAL_FRAC)
    vocab = Vocab.from_text(text)
    stream = BatchStream(vocab.encode(train_text).ids, BATCH, SEQ_LEN)
    return vocab, stream, vocab.encode(val_text).ids


def torch_val_loss(model, ids) -> float:
    """Mean nats/char of ids[1:] given the preceding text, in charlm.evaluate's rows (score_peer.score_rows)."""
    from score_peer import score_rows

    nats, count = score_rows(model, ids, EVAL_BATCH, EVAL_SEQ, EVAL_WARMUP)
    return nats / count


def run_torch(corpus: str, seconds: float, seed: int) -> dict:
    """Train the PyTorch peer for ``seconds`` with charlm's loop (charlm.train.Trainer.run), step for step."""
    import torch
    import torch.nn.functional as F
    from torch_peer import BenchConfig, build_model, detach_state

    from charlm.optim import learning_rate

    vocab, stream, val_ids = load_data(corpus)
    V = len(vocab)
    model = build_model(BenchConfig("lstm", LAYERS, HIDDEN, EMBED, BATCH, SEQ_LEN, V), seed=seed)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    step, position, state, total_steps = 0, 0, None, None
    history: list[dict] = []
    best_val, best_step = math.inf, 0
    window_loss, window_steps, window_t = 0.0, 0, time.perf_counter()
    lr = 0.0

    def evaluate(train_loss: float, chars_per_s: float, elapsed: float) -> None:
        nonlocal best_val, best_step
        val = torch_val_loss(model, val_ids)
        if val < best_val:
            best_val, best_step = val, step
        record = {
            "step": step,
            "chars": step * BATCH * SEQ_LEN,
            "train_loss": round(train_loss, 6),
            "val_loss": round(val, 6),
            "lr": lr,
            "chars_per_s": round(chars_per_s, 1),
            "elapsed": round(elapsed, 2),
        }
        history.append(record)
        print(
            f"  pytorch: step {step:>6,}  train {train_loss:.4f}  val {val:.4f}  elapsed {elapsed:.0f} s",
            file=sys.stderr,
            flush=True,
        )

    t0 = time.perf_counter()
    while True:
        elapsed = time.perf_counter() - t0
        if (total_steps is not None and step >= total_steps) or elapsed >= seconds:
            break
        x, y = (torch.from_numpy(a) for a in stream.batch(position))  # (T, B) each
        logits, state = model(x, state)  # (T, B, V)
        loss = F.cross_entropy(logits.reshape(-1, V), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        lr = learning_rate(step, total_steps if total_steps is not None else step + 1, LR, WARMUP, FINAL_LR_FRAC)
        for group in opt.param_groups:
            group["lr"] = lr
        opt.step()
        state = detach_state(state)
        step += 1
        position += 1
        if position >= stream.steps_per_epoch:  # new epoch: streams restart, state reset
            position, state = 0, None
        window_loss += loss.item()
        window_steps += 1
        if step == 20 or step % EVAL_EVERY == 0:  # plan the schedule from the measured step time
            elapsed = time.perf_counter() - t0
            total_steps = step + max(1, int((seconds - elapsed) / (elapsed / step)))
        if step % EVAL_EVERY == 0:
            now = time.perf_counter()
            evaluate(window_loss / window_steps, window_steps * BATCH * SEQ_LEN / (now - window_t), now - t0)
            window_loss, window_steps, window_t = 0.0, 0, time.perf_counter()
    elapsed = time.perf_counter() - t0
    if window_steps or not history:
        rate = window_steps * BATCH * SEQ_LEN / max(time.perf_counter() - window_t, 1e-9)
        evaluate(window_loss / max(window_steps, 1), rate, elapsed)
    return {
        "best_val": round(best_val, 6),
        "best_step": best_step,
        "steps": step,
        "chars": step * BATCH * SEQ_LEN,
        "elapsed": round(elapsed, 2),
        "history": history,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "val_chars": len(val_ids),
        "vocab": V,
    }


# --------------------------------------------------------------------------- #
# Report
# --------------------------------------------------------------------------- #


def render(res: dict, seconds: float, corpus: str, command: str, charlm_cmd: str, started: datetime) -> str:
    c, p = res["charlm"], res["pytorch"]
    met = c["best_val"] <= p["best_val"]
    ln2 = math.log(2)

    def row(name: str, r: dict) -> str:
        return (
            f"| {name} | {r['best_val']:.4f} | {r['best_val'] / ln2:.4f} | {r['best_step']:,} | {r['steps']:,} | "
            f"{r['chars']:,} | {r['elapsed']:.0f} s |"
        )

    return "\n".join(
        [
            f"## {SECTION}",
            "",
            f"Config B ({LAYERS}×{HIDDEN} LSTM, E {EMBED}, batch {BATCH} × {SEQ_LEN}) on `{corpus}`, "
            f"{seconds:g} s of wall-clock training per side (validations included), one after the other on "
            f"{nproc()} CPUs ({cpu_model()}), {started:%Y-%m-%d %H:%M} UTC. Same vocabulary ({p['vocab']} "
            f"characters), same streams with carried state, same validation text (the last "
            f"{VAL_FRAC:.0%}, {p['val_chars']:,} characters), same schedule (Adam, lr {LR:g}, {WARMUP} warm-up steps, "
            f"cosine to {FINAL_LR_FRAC:.0%} over the steps planned from each side's own speed), clip {CLIP:g}. "
            f"Validation every {EVAL_EVERY} steps and at the end: mean nats/char over the held-out text in "
            f"{EVAL_BATCH} contiguous rows with carried state; the best is reported. PyTorch {p['torch']} with "
            f"{p['torch_threads']} threads, eager mode (no torch.compile), default initialisation; charlm also "
            "writes checkpoints at every validation, inside its budget.",
            "",
            pins_line()[2:] + ".",
            "",
            "| side | best val nats/char | bits/char | at step | steps | characters seen | loop time |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
            row("charlm", c),
            row("PyTorch", p),
            "",
            f"Goal: charlm's validation loss no worse than PyTorch's: {'**met**' if met else '**not met**'} "
            f"(charlm − PyTorch = {c['best_val'] - p['best_val']:+.4f} nats/char). charlm trained "
            f"{c['steps'] / max(p['steps'], 1):.2f}× as many steps.",
            "",
            *command_block(command),
            f"charlm side: `{charlm_cmd}`. Histories: `quality.json` next to this file. "
            "Earlier runs: [HISTORY.md](HISTORY.md).",
        ]
    )


def parse_args(argv: list[str] | None = None):
    p = Parser(
        prog="quality.py",
        description="Train config B on a corpus for the same wall-clock budget with charlm and with PyTorch, "
        "and compare their best validation losses; updates the 'Quality at equal time' section of RESULTS.md.",
    )
    p.add_argument(
        "--seconds", type=bounded(float, 0.0, strict_low=True), default=600.0, help="Training budget per side."
    )
    p.add_argument("--corpus", default="shakespeare", help="Shipped corpus name or text file.")
    p.add_argument("--seed", type=bounded(int, 0), default=0, help="Random seed of both sides.")
    p.add_argument(
        "--python",
        type=Path,
        default=Path(sys.executable),
        help="Interpreter whose environment's 'charlm' script trains the charlm side.",
    )
    return parse_with_outputs(p, argv, "quality.json", "Histories as JSON. ")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    run_as_user()
    # the command as a user types it from the checkout: no interpreter path, no working directory
    command = user_command("benchmarks/quality.py", argv)
    started = datetime.now(UTC)
    try:
        from charlm.errors import CharlmError

        try:
            load_data(args.corpus)  # check the corpus before the long runs
        except CharlmError as e:
            raise BenchError(str(e).rstrip(".")) from None
        try:
            import torch  # noqa: F401
        except ImportError:
            raise BenchError(
                f"PyTorch is not installed. Install it: {sys.executable} -m pip install torch==2.13.0"
            ) from None
        with tempfile.TemporaryDirectory(prefix="charlm-quality-") as tmp:
            cmd = charlm_command(args.python, args.corpus, args.seconds, Path(tmp), args.seed)
            print(f"charlm: training for {args.seconds:g} s …", file=sys.stderr, flush=True)
            charlm_res = run_charlm(cmd, Path(tmp) / "quality")
        charlm_cmd = shlex.join([Path(cmd[0]).name, *cmd[1:]]).replace(tmp, "<tmpdir>")
        charlm_res["stdout"] = [line.replace(tmp, "<tmpdir>") for line in charlm_res["stdout"]]
        print(f"pytorch: training for {args.seconds:g} s …", file=sys.stderr, flush=True)
        torch_res = run_torch(args.corpus, args.seconds, args.seed)
    except BenchError as e:
        fail(f"{e}. Nothing was written")
    except ImportError as e:
        fail(f"cannot import {e.name}: run this script with the interpreter of charlm's environment")
    except KeyboardInterrupt:
        fail("interrupted; nothing was written", 130)
    res = {"charlm": charlm_res, "pytorch": torch_res}
    head = "# charlm vs PyTorch: benchmark results\n\nThe throughput sections are written by benchmarks/compare.py.\n\n"
    replace_section(args.out, SECTION, render(res, args.seconds, args.corpus, command, charlm_cmd, started), head)
    dump = {"command": command, "charlm_command": charlm_cmd, "date": started.isoformat(timespec="seconds"), **res}
    write_atomic(args.json_out, json.dumps(dump, indent=1) + "\n")
    for name, r in (("charlm", charlm_res), ("PyTorch", torch_res)):
        print(
            f"{name:<8} best val {r['best_val']:.4f} nats/char at step {r['best_step']:,}; "
            f"{r['steps']:,} steps, {r['chars']:,} characters in {r['elapsed']:.0f} s"
        )
    print(f"wrote the '{SECTION}' section of {args.out} and {args.json_out}")


if __name__ == "__main__":
    main()
