"""The lecture notes' lesson, measured: which recurrent cells carry information across long gaps.

The task is the notes' agreement example ("The cat, which already ate …, was full" /
"The cats, which …, were full") reduced to symbols. A sequence has k + 1 steps:

    x<1>        the subject: 'a' (singular) or 'A' (plural), equally likely
    x<2..k>     k − 1 fillers drawn uniformly from 8 other symbols
    x<k+1>      the query '?': was the subject singular or plural?

The answer depends only on a symbol k steps back; chance is 50%. In a sentence the words in
between are not idle: a language model must also predict each of them, so its hidden state
is rewritten at every step. The default task (``--task busy``) keeps the state busy the same
way: at every step t = 2..k+1 a second linear readout must also name the symbol seen at t − 1,
so every filler has to pass through the state, and only a cell that can protect part of its
state from these updates keeps the subject. ``--task plain`` drops that second readout: with
nothing else to do, a vanilla RNN can park the one bit in saturated units and ignore the fillers.

Each cell — charlm's own LSTM, GRU and vanilla RNN layers with their hand-written backward
passes — reads one-hot inputs (V = 11); a linear readout of its last hidden state a<k+1> gives
the two answer logits u. The loss is the answer's cross-entropy (plus, for ``busy``, the mean
cross-entropy of the previous-symbol readout). Every cell gets the same parameter budget
(recurrent layer plus readouts; the hidden sizes are chosen to match), at most the same number
of Adam steps on fresh random batches, the same learning-rate schedule and the same seeds.
Accuracy of the answer is measured on 2,000 held-out sequences.

Vanishing gradients, measured: for the cells at initialisation and trained at the longest k,
the norm of ∂(u_plural − u_singular)/∂x<T−d> — how much the input d steps before the answer
can still move it — averaged over 512 sequences, relative to its value at d = 0 (the query).

    python benchmarks/long_range.py                 # about 5 minutes; writes LONG_RANGE.md
    python benchmarks/long_range.py --task plain --out /tmp/PLAIN.md
    python benchmarks/long_range.py --steps 100 --ks 5,20 --seeds 1 --out /tmp/L.md   # smoke test

BLAS runs single-threaded (the matrices are tiny; this also makes a run bit-for-bit
reproducible).
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from benchlib import HERE, Parser, bounded, cpu_model, fail, run_as_user, user_command, write_atomic

from charlm.cells import GRU, LSTM, RNN, Recurrent
from charlm.optim import Adam, clip_grad_norm_, learning_rate

CELLS: dict[str, type[Recurrent]] = {"lstm": LSTM, "gru": GRU, "rnn": RNN}
N_FILLERS = 8
V = 2 + N_FILLERS + 1  # subjects a / A, fillers, query
QUERY = V - 1
N_PREV = V - 1  # classes of the previous-symbol readout: subjects and fillers
DISTANCES = (1, 5, 10, 20, 50, 100)  # gradient-norm table columns (those ≤ k are shown)
SOLVED_LOSS = 0.01  # mean answer loss (nats) over the last 50 steps that ends training early


def param_count(cls: type[Recurrent], H: int, busy: bool) -> int:
    """Recurrent layer G·H·(V + H + 2), answer readout 2·H + 2, previous-symbol readout 10·H + 10."""
    return cls.gates * H * (V + H + 2) + 2 * H + 2 + (N_PREV * H + N_PREV if busy else 0)


def hidden_for_budget(cls: type[Recurrent], budget: int, busy: bool) -> int:
    """The hidden size whose parameter count is closest to ``budget``."""
    return min(range(1, 2048), key=lambda H: abs(param_count(cls, H, busy) - budget))


def make_batch(rng: np.random.Generator, k: int, B: int) -> tuple[np.ndarray, np.ndarray]:
    """(k + 1, B) symbol ids and (B,) answers (0 singular, 1 plural)."""
    y = rng.integers(0, 2, B)
    ids = np.empty((k + 1, B), np.int64)
    ids[0] = y  # subject symbol 0 = 'a', 1 = 'A'
    ids[1:k] = 2 + rng.integers(0, N_FILLERS, (k - 1, B))
    ids[k] = QUERY
    return ids, y


@dataclass
class Net:
    """One recurrent layer and its linear readouts, all parameters in one flat buffer for Adam."""

    cell: Recurrent
    params: dict[str, np.ndarray]  # w_out (2, H), b_out (2,), and for busy: w_prev (10, H), b_prev (10,)
    grads: dict[str, np.ndarray]
    flat: np.ndarray
    grad_flat: np.ndarray


def build(cls: type[Recurrent], H: int, seed: int, busy: bool) -> Net:
    """charlm's initialisation with `--forget-bias 1`: U(−1/√H, 1/√H) weights, zero biases,
    LSTM forget-gate bias 1 (keeps c<t> from the start; what lets the LSTM bridge k = 20 here)."""
    G = cls.gates * H
    shapes = {"w_ih": (G, V), "w_hh": (G, H), "b_ih": (G,), "b_hh": (G,), "w_out": (2, H), "b_out": (2,)}
    if busy:
        shapes |= {"w_prev": (N_PREV, H), "b_prev": (N_PREV,)}
    flat = np.zeros(sum(math.prod(s) for s in shapes.values()), np.float32)
    grad_flat = np.zeros_like(flat)
    params, grads, offset = {}, {}, 0
    for name, shape in shapes.items():
        n = math.prod(shape)
        params[name] = flat[offset : offset + n].reshape(shape)
        grads[name] = grad_flat[offset : offset + n].reshape(shape)
        offset += n
    rng = np.random.default_rng(seed)
    bound = 1.0 / math.sqrt(H)
    for name, p in params.items():
        if name.startswith("w_"):
            p[...] = rng.uniform(-bound, bound, p.shape)
    if cls is LSTM:
        params["b_ih"][H : 2 * H] = 1.0
    names = ("w_ih", "w_hh", "b_ih", "b_hh")
    cell = cls(V, H, *(params[n] for n in names), *(grads[n] for n in names))
    return Net(cell, params, grads, flat, grad_flat)


def one_hot(ids: np.ndarray) -> np.ndarray:
    x = np.zeros((*ids.shape, V), np.float32)
    np.put_along_axis(x, ids[..., None], 1.0, axis=-1)
    return x


def softmax_xent(u: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean cross-entropy of softmax(u) (N, C) against y (N,), and ∂/∂u."""
    u = u - u.max(axis=1, keepdims=True)
    p = np.exp(u)
    p /= p.sum(axis=1, keepdims=True)
    rows = np.arange(len(y))
    loss = -float(np.log(p[rows, y] + 1e-30).mean())
    p[rows, y] -= 1.0
    p /= len(y)
    return loss, p


def train_step(net: Net, ids: np.ndarray, y: np.ndarray, lr: float, opt: Adam) -> float:
    """Loss and gradient of one batch, one clipped Adam step. Returns the answer's loss."""
    x = one_hot(ids)
    T, B, _ = x.shape
    H = net.cell.hidden_size
    out, _ = net.cell.forward(x, net.cell.zero_state(B))  # (T, B, H)
    p, g = net.params, net.grads
    net.grad_flat.fill(0.0)
    grad_out = np.zeros((T, B, H), np.float32)
    last = out[-1]  # a<T>
    loss, du = softmax_xent(last @ p["w_out"].T + p["b_out"], y)
    g["w_out"][...] = du.T @ last
    g["b_out"][...] = du.sum(axis=0)
    grad_out[-1] = du @ p["w_out"]
    if "w_prev" in p:  # at steps 2..T, name the symbol of the step before
        hidden = out[1:].reshape(-1, H)  # ((T − 1)·B, H)
        _, dv = softmax_xent(hidden @ p["w_prev"].T + p["b_prev"], ids[:-1].reshape(-1))
        g["w_prev"][...] = dv.T @ hidden
        g["b_prev"][...] = dv.sum(axis=0)
        grad_out[1:] += (dv @ p["w_prev"]).reshape(T - 1, B, H)
    net.cell.backward(grad_out, x)
    clip_grad_norm_(net.grad_flat, 5.0)
    opt.step(net.flat, net.grad_flat, lr)
    return loss


def accuracy(net: Net, ids: np.ndarray, y: np.ndarray) -> float:
    out, _ = net.cell.forward(one_hot(ids), net.cell.zero_state(ids.shape[1]))
    u = out[-1] @ net.params["w_out"].T + net.params["b_out"]
    return float((u.argmax(axis=1) == y).mean())


def gradient_profile(net: Net, ids: np.ndarray) -> np.ndarray:
    """Mean over the batch of ‖∂(u_plural − u_singular)/∂x<t>‖ for t = 1..T, (T,) float64."""
    x = one_hot(ids)
    T, B, _ = x.shape
    net.cell.forward(x, net.cell.zero_state(B))
    grad_out = np.zeros((T, B, net.cell.hidden_size), np.float32)
    grad_out[-1] = net.params["w_out"][1] - net.params["w_out"][0]
    grad_x, _ = net.cell.backward(grad_out, x)  # also accumulates weight gradients, unused here
    return np.linalg.norm(grad_x.astype(np.float64), axis=2).mean(axis=1)


def train(cls: type[Recurrent], H: int, k: int, args, seed: int) -> tuple[Net, int]:
    """Train on fresh batches until the step budget is spent or the task is solved (mean
    answer loss of the last 50 steps below SOLVED_LOSS). Returns the net and the steps taken."""
    net = build(cls, H, seed, args.task == "busy")
    opt = Adam(net.flat.size)
    rng = np.random.default_rng(seed + 1000)
    recent: list[float] = []
    for step in range(args.steps):
        ids, y = make_batch(rng, k, args.batch)
        recent.append(train_step(net, ids, y, learning_rate(step, args.steps, args.lr, 50, 0.1), opt))
        if len(recent) >= 50 and sum(recent[-50:]) / 50 < SOLVED_LOSS:
            return net, step + 1
    return net, args.steps


def run(args) -> dict:
    busy = args.task == "busy"
    results: dict = {"acc": {}, "steps": {}, "params": {}, "hidden": {}, "grad": {}}
    k_max = max(args.ks)
    test = {k: make_batch(np.random.default_rng(10**6 + k), k, 2000) for k in args.ks}
    probe = make_batch(np.random.default_rng(2 * 10**6), k_max, 512)[0]
    for name, cls in CELLS.items():
        H = hidden_for_budget(cls, args.budget, busy)
        results["hidden"][name] = H
        results["params"][name] = param_count(cls, H, busy)
        results["grad"][(name, "init")] = gradient_profile(build(cls, H, args.seed, busy), probe)
        for k in args.ks:
            for seed in range(args.seed, args.seed + args.seeds):
                t0 = time.perf_counter()
                net, steps = train(cls, H, k, args, seed)
                acc = accuracy(net, *test[k])
                results["acc"][(name, k, seed)] = acc
                results["steps"][(name, k, seed)] = steps
                if k == k_max and seed == args.seed:
                    results["grad"][(name, "trained")] = gradient_profile(net, probe)
                print(
                    f"{name:4s} H={H:3d} k={k:3d} seed {seed}: test accuracy {acc:6.1%} after {steps:5d} steps, "
                    f"{time.perf_counter() - t0:5.1f} s",
                    file=sys.stderr,
                    flush=True,
                )
    return results


def report(args, results: dict, elapsed: float, command: str) -> str:
    ks, k_max = args.ks, max(args.ks)
    seeds = range(args.seed, args.seed + args.seeds)
    task = (
        "busy (the state must also name the previous symbol at every step)"
        if args.task == "busy"
        else "plain (only the answer is trained)"
    )
    lines = [
        "# Long-range dependencies: LSTM, GRU and vanilla RNN",
        "",
        "Written by `benchmarks/long_range.py` (its docstring describes the task). Command:",
        "",
        "```bash",
        command,
        "```",
        "",
        f"Task: {task}. Per cell, distance and seed: at most {args.steps:,} Adam steps on batches of "
        f"{args.batch} fresh sequences, peak learning rate {args.lr:g} (50 warm-up steps, cosine decay to "
        f"10%), gradient norm clipped at 5, stopping early once the mean answer loss of the last 50 steps is "
        f"below {SOLVED_LOSS} nats (solved). Seeds {seeds.start}–{seeds.stop - 1}. Accuracy on 2,000 "
        f"held-out sequences; chance is 50%. Machine: {cpu_model()}, BLAS single-threaded; "
        f"{elapsed / 60:.1f} minutes in all.",
        "",
        f"### Accuracy k steps after the subject (mean over {len(seeds)} seeds; runs that reached 99%)",
        "",
        "| cell | H | parameters | " + " | ".join(f"k = {k}" for k in ks) + " |",
        "| --- | ---: | ---: | " + " | ".join("---:" for _ in ks) + " |",
    ]
    for name in CELLS:
        row = []
        for k in ks:
            accs = [results["acc"][(name, k, s)] for s in seeds]
            row.append(f"{sum(accs) / len(accs):.1%} ({sum(a >= 0.99 for a in accs)}/{len(accs)})")
        lines.append(f"| {name} | {results['hidden'][name]} | {results['params'][name]:,} | {' | '.join(row)} |")
    lines += [
        "",
        "### Training steps until solved (median over the solved runs; — : none solved)",
        "",
        "| cell | " + " | ".join(f"k = {k}" for k in ks) + " |",
        "| --- | " + " | ".join("---:" for _ in ks) + " |",
    ]
    for name in CELLS:
        row = []
        for k in ks:
            done = sorted(results["steps"][(name, k, s)] for s in seeds if results["steps"][(name, k, s)] < args.steps)
            row.append(f"{done[len(done) // 2]:,}" if done else "—")
        lines.append(f"| {name} | {' | '.join(row)} |")
    dists = [d for d in DISTANCES if d <= k_max]
    lines += [
        "",
        f"### Gradient norm versus distance (k = {k_max}, seed {args.seed})",
        "",
        "‖∂(u_plural − u_singular)/∂x<T−d>‖: how much the input d steps before the answer can move it, "
        "mean over 512 sequences, relative to d = 0 (the query):",
        "",
        "| cell | weights | " + " | ".join(f"d = {d}" for d in dists) + " |",
        "| --- | --- | " + " | ".join("---:" for _ in dists) + " |",
    ]
    for name in CELLS:
        for when in ("init", "trained"):
            g = results["grad"][(name, when)]
            T = len(g)
            cells = " | ".join(f"{g[T - 1 - d] / g[T - 1]:.0e}" for d in dists)
            label = "initial" if when == "init" else f"trained at k = {k_max}"
            lines.append(f"| {name} | {label} | {cells} |")
    return "\n".join(lines) + "\n"


def parse_ks(text: str) -> list[int]:
    try:
        ks = sorted({int(s) for s in text.split(",") if s.strip()})
    except ValueError:
        raise ValueError(f"--ks must be comma-separated integers, not {text!r}") from None
    if not ks or ks[0] < 2:
        raise ValueError("--ks needs distances of at least 2")
    return ks


def main(argv: list[str] | None = None) -> None:
    ap = Parser(prog="long_range.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", choices=("busy", "plain"), default="busy", help="keep the state busy, or not")
    ap.add_argument("--ks", default="5,20,50,100", help="distances k between the subject and the query")
    ap.add_argument("--steps", type=bounded(int, 1), default=1500, help="most Adam steps per cell, distance and seed")
    ap.add_argument("--batch", type=bounded(int, 1), default=64, help="sequences per step")
    ap.add_argument("--budget", type=bounded(int, 100), default=5000, help="parameters per model (approximately)")
    ap.add_argument(
        "--lr",
        type=bounded(float, 0.0, strict_low=True),
        default=3e-3,
        help="peak Adam learning rate (charlm train's default)",
    )
    ap.add_argument("--seed", type=bounded(int, 0), default=0, help="first seed of initialisation and data")
    ap.add_argument("--seeds", type=bounded(int, 1), default=3, help="seeds per cell and distance")
    ap.add_argument("--out", type=Path, default=HERE / "LONG_RANGE.md", help="markdown report to write")
    args = ap.parse_args(argv)
    run_as_user()
    try:
        args.ks = parse_ks(args.ks)
    except ValueError as e:
        fail(f"{e}. Example: --ks 5,20,50,100", 2)
    command = user_command("benchmarks/long_range.py", argv)
    t0 = time.perf_counter()
    results = run(args)
    text = report(args, results, time.perf_counter() - t0, command)
    write_atomic(args.out, text)
    print(text)


if __name__ == "__main__":
    main()
