"""The PyTorch peer of ``charlm bench``: the same model, the same measurement, the same JSON.

The model is what a PyTorch user would write for charlm's network:

    e<t>  = nn.Embedding(V, E)(x<t>)                   (T, B, E)   time-major input (T, B)
    a<t>  = nn.LSTM / nn.GRU / nn.RNN(tanh)(e, state)   (T, B, H)   N layers
    u<t>  = nn.Linear(H, V)(a<t>)                       (T, B, V)
    L     = cross_entropy(u, x<t+1>)                    mean nats per character

One training step on a (T, B) chunk of synthetic ids: forward, L, zero_grad(set_to_none=True),
backward, clip_grad_norm_(5.0), Adam step (lr 1e-3); the final state is detached and carried
into the next chunk (truncated back-propagation through time).

Sampling: batch 1, one character per step through the same modules with the state carried,
ŷ<t> = softmax(u<t> / τ) with τ = 1, the next character drawn with torch.multinomial, under
torch.inference_mode().

The protocol is charlm/throughput.py's: training is 3 warm-up steps, then ``--windows`` timed
windows of at least ``--window-seconds`` (and 2 steps) each, median reported; sampling is a
200-character warm-up, then 5 windows of 2000 characters, median reported. PyTorch runs with its
defaults: all cores (torch.get_num_threads() is not lowered), default backends (oneDNN where PyTorch
picks it; --no-mkldnn turns it off for a sensitivity check), eager mode, no torch.compile.

    python benchmarks/torch_peer.py --json                 # config B, training and sampling
    python benchmarks/torch_peer.py --layers 1 --hidden 128 --no-sample
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import time
from dataclasses import asdict, dataclass

from benchlib import Parser, bounded, cpu_model, import_torch, nproc, run_as_user

GATES = {"lstm": 4, "gru": 3, "rnn": 1}  # H-wide blocks in each fused weight


@dataclass(frozen=True)
class BenchConfig:
    """Mirrors the JSON ``config`` object of ``charlm bench`` (charlm.throughput.BenchConfig.to_dict)."""

    cell: str = "lstm"
    layers: int = 2
    hidden: int = 256
    embed: int = 64
    batch: int = 32
    seq_len: int = 64
    vocab: int = 65
    windows: int = 5  # timed windows for training (median reported)
    window_seconds: float = 2.0  # minimum length of one training window
    sample_chars: int = 2000  # characters per sampling window


def build_model(cfg: BenchConfig, seed: int = 0, dropout: float = 0.0):
    """nn.Embedding → nn.LSTM/GRU/RNN (time-major) → nn.Linear, PyTorch's default initialisation.

    ``dropout``: as charlm's, between the recurrent layers (nn.LSTM's own) and before the decoder."""
    import torch
    from torch import nn

    rnn_class = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[cfg.cell]

    class CharRNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embedding = nn.Embedding(cfg.vocab, cfg.embed)
            between = dropout if cfg.layers > 1 else 0.0  # nn.LSTM warns about dropout with one layer
            self.rnn = rnn_class(cfg.embed, cfg.hidden, cfg.layers, dropout=between)  # nn.RNN: nonlinearity="tanh"
            self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
            self.decoder = nn.Linear(cfg.hidden, cfg.vocab)

        def forward(self, x: torch.Tensor, state=None):
            e = self.embedding(x)  # (T, B, E)
            a, state = self.rnn(e, state)  # (T, B, H)
            return self.decoder(self.drop(a)), state  # (T, B, V)

    torch.manual_seed(seed)
    return CharRNN()


def detach_state(state):
    """Cut the graph at the chunk boundary; the values are carried on."""
    if isinstance(state, tuple):  # LSTM: (a, c)
        return tuple(s.detach() for s in state)
    return state.detach()  # GRU, RNN: a


def num_params(cfg: BenchConfig) -> int:
    """Parameters of the model (nn.LSTM/GRU/RNN keep two biases per layer, like charlm)."""
    G, H, E, V = GATES[cfg.cell], cfg.hidden, cfg.embed, cfg.vocab
    rnn = sum(G * H * ((E if layer == 0 else H) + H + 2) for layer in range(cfg.layers))
    return V * E + rnn + V * H + V


def flops_per_char(cfg: BenchConfig, training: bool) -> float:
    """Matrix-product FLOPs per character that nn.Embedding → nn.<cell> → nn.Linear performs.

    As charlm.throughput.flops_per_char, except that PyTorch computes the first layer's input
    projection as a product (2·G·H·E per character in the forward pass) where charlm gathers
    rows of a table. Forward: 2·G·H·H + 2·G·H·D per layer, decoder 2·V·H. Backward: twice the
    recurrent, input and decoder products (gradient of the input and of the weight).
    """
    G, H, E, V = GATES[cfg.cell], cfg.hidden, cfg.embed, cfg.vocab
    fwd, bwd = 2 * V * H, 4 * V * H
    for layer in range(cfg.layers):
        D = E if layer == 0 else H
        fwd += 2 * G * H * H + 2 * G * H * D
        bwd += 4 * G * H * H + 4 * G * H * D
    return float(fwd + bwd) if training else float(fwd)


def gemm_gflops(n: int = 1024, repeats: int = 7) -> float:
    """Median float32 rate of an (n × n) @ (n × n) torch.matmul, in GFLOP/s."""
    import torch

    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g)
    b = torch.randn(n, n, generator=g)
    c = torch.empty(n, n)
    torch.matmul(a, b, out=c)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        torch.matmul(a, b, out=c)
        times.append(time.perf_counter() - t)
    return 2.0 * n**3 / statistics.median(times) / 1e9


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def train_throughput(cfg: BenchConfig) -> list[float]:
    """Characters per second of full training steps, one figure per timed window."""
    import torch
    import torch.nn.functional as F

    model = build_model(cfg)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    T, B, V = cfg.seq_len, cfg.batch, cfg.vocab
    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, V, (8, T + 1, B), generator=g)  # (8, T+1, B) int64
    state = None

    def step(k: int) -> None:
        nonlocal state
        chunk = data[k % len(data)]
        logits, state = model(chunk[:-1], state)  # (T, B, V)
        loss = F.cross_entropy(logits.reshape(T * B, V), chunk[1:].reshape(T * B))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        state = detach_state(state)

    for k in range(3):  # warm-up: allocator, thread pool, caches
        step(k)
    rates = []
    k = 0
    for _ in range(cfg.windows):
        n, t0 = 0, time.perf_counter()
        while True:
            step(k)
            k += 1
            n += 1
            dt = time.perf_counter() - t0
            if dt >= cfg.window_seconds and n >= 2:
                break
        rates.append(n * T * B / dt)
    return rates


def sample_throughput(cfg: BenchConfig, windows: int = 5, temperature: float = 1.0) -> list[float]:
    """Characters per second generated at batch 1, temperature 1."""
    import torch

    model = build_model(cfg)
    model.eval()
    chars = "".join(chr(0x21 + i) for i in range(cfg.vocab))
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(1, 1, dtype=torch.long)  # (1, 1): first character
    state = None

    def generate(n: int):
        nonlocal x, state
        for _ in range(n):
            e = model.embedding(x)  # (1, 1, E)
            a, state = model.rnn(e, state)  # (1, 1, H)
            logits = model.decoder(a[0])  # (1, V)
            probs = torch.softmax(logits / temperature, dim=-1)  # ŷ<t>
            x = torch.multinomial(probs, 1, generator=g)  # (1, 1): the next input
            yield chars[x.item()]

    rates = []
    with torch.inference_mode():
        for _ in generate(200):  # warm-up
            pass
        for _ in range(windows):
            t0 = time.perf_counter()
            for _ in generate(cfg.sample_chars):
                pass
            rates.append(cfg.sample_chars / (time.perf_counter() - t0))
    return rates


def torch_blas() -> str:
    """torch's BLAS as its build configuration reports it, e.g. 'mkl (Intel(R) oneAPI … 2024.2 …)'."""
    import torch

    show = torch.__config__.show()
    name = next((p.split("=", 1)[1] for p in show.replace(",", " ").split() if p.startswith("BLAS_INFO=")), "?")
    detail = next((ln.strip(" -") for ln in show.splitlines() if "Math Kernel Library" in ln), "")
    return f"{name} ({detail})" if detail else name


def machine() -> dict:
    import torch

    try:
        import numpy as np

        numpy_version = np.__version__
    except ImportError:
        numpy_version = None
    return {
        "nproc": nproc(),
        "cpu": cpu_model(),
        "numpy": numpy_version,
        "blas": torch_blas(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "mkldnn": bool(torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled),
        "compile": False,
    }


def run(cfg: BenchConfig, train: bool = True, sample: bool = True) -> dict:
    """Run the benchmark and return every figure as a JSON-ready dict (charlm bench's schema)."""
    result: dict = {
        "tool": "pytorch",
        "config": asdict(cfg),
        "params": num_params(cfg),
        "machine": machine(),
    }
    gemm = gemm_gflops()
    result["gemm_gflops"] = round(gemm, 1)
    for key, wanted, measure, training in (
        ("train", train, train_throughput, True),
        ("sample", sample, sample_throughput, False),
    ):
        if not wanted:
            continue
        rates = measure(cfg)
        med = statistics.median(rates)
        f = flops_per_char(cfg, training)
        result[key] = {
            "chars_per_s": round(med, 1),
            "windows": [round(r, 1) for r in rates],
            "flops_per_char": f,
            "gflops": round(med * f / 1e9, 2 if training else 3),
            "roofline_fraction": round(med * f / 1e9 / gemm, 4 if training else 5),
        }
    result["peak_rss_mb"] = round(peak_rss_mb(), 1)
    return result


def parse_args(argv: list[str] | None = None):
    p = Parser(
        prog="torch_peer.py",
        description="Training and sampling throughput of the PyTorch peer (nn.Embedding → nn.LSTM/GRU/RNN → "
        "nn.Linear), measured exactly like 'charlm bench'.",
    )
    p.add_argument("--cell", choices=sorted(GATES), default="lstm", help="Recurrent cell.")
    p.add_argument("--layers", type=bounded(int, 1, 16), default=2, help="Stacked recurrent layers, 1–16.")
    p.add_argument("--hidden", type=bounded(int, 1, 8192), default=256, help="Hidden units per layer (H).")
    p.add_argument("--embed", type=bounded(int, 1, 8192), default=64, help="Embedding width (E).")
    p.add_argument("--batch", type=bounded(int, 1), default=32, help="Batch rows (B) for training.")
    p.add_argument("--seq-len", type=bounded(int, 1), default=64, help="Steps per chunk (T) for training.")
    p.add_argument("--vocab", type=bounded(int, 2, 65536), default=65, help="Vocabulary size of the synthetic data.")
    p.add_argument(
        "--windows", type=bounded(int, 1, 100), default=5, help="Timed training windows; the median is reported."
    )
    p.add_argument(
        "--window-seconds", type=bounded(float, 0.01), default=2.0, help="Minimum seconds per training window."
    )
    p.add_argument("--train", action=argparse.BooleanOptionalAction, default=True, help="Measure training throughput.")
    p.add_argument("--sample", action=argparse.BooleanOptionalAction, default=True, help="Measure sampling throughput.")
    p.add_argument(
        "--mkldnn",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Let PyTorch use oneDNN (mkldnn) kernels, its default; --no-mkldnn is for sensitivity checks.",
    )
    p.add_argument("--json", dest="as_json", action="store_true", help="Print the results as JSON on stdout.")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    run_as_user()
    torch = import_torch()
    torch.backends.mkldnn.enabled = args.mkldnn
    cfg = BenchConfig(
        args.cell, args.layers, args.hidden, args.embed, args.batch, args.seq_len, args.vocab, args.windows,
        args.window_seconds,
    )  # fmt: skip
    if not args.as_json:
        print(
            f"measuring PyTorch {args.layers}×{args.hidden} {args.cell.upper()}, batch {args.batch} × {args.seq_len} …",
            file=sys.stderr,
        )
    result = run(cfg, train=args.train, sample=args.sample)
    if args.as_json:
        print(json.dumps(result, indent=2))
        return
    print(f"PyTorch peer: {cfg.layers}×{cfg.hidden} {cfg.cell.upper()}, E={cfg.embed}, V={cfg.vocab}")
    for key, label in (("train", f"training, batch {cfg.batch} × {cfg.seq_len}"), ("sample", "sampling, batch 1")):
        if key in result:
            r = result[key]
            print(
                f"  {label:<28} {r['chars_per_s']:>12,.0f} chars/s  (windows {min(r['windows']):,.0f}–"
                f"{max(r['windows']):,.0f}; {r['gflops']:.2f} GFLOP/s, {100 * r['roofline_fraction']:.1f}% of GEMM)"
            )
    m = result["machine"]
    print(
        f"float32 GEMM peak {result['gemm_gflops']:.1f} GFLOP/s; {m['nproc']} CPUs, {m['torch_threads']} torch "
        f"threads; PyTorch {m['torch']} ({m['blas']}); peak RSS {result['peak_rss_mb']:.0f} MB"
    )


if __name__ == "__main__":
    main()
