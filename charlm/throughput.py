"""Throughput: training and sampling speed, and how close to the machine's limit.

Training throughput is characters per second of one full optimizer step
(forward, backward, clipping, Adam) on synthetic data, measured in several
timed windows after a warm-up; the median window is reported. Sampling
throughput is characters per second at batch 1, temperature 1.

The roofline: the matrix-product FLOPs a step performs per character, divided
by the float32 rate a large NumPy matmul reaches on this machine with the same
number of BLAS threads, gives the fraction of the machine the model code
achieves. (The element-wise gate maths is not counted, so the fraction is a
lower bound on utilisation.) Training with K row blocks runs K processes of one
BLAS thread each, so its peak is the matmul's with min(K, cores) threads (one
block: the process's own thread count); sampling runs on one thread. The peak is
the best of ten products, five before the timed windows and five after: other
work on the machine only ever slows a product down, and a peak measured low
would put the fraction above 1.
"""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import statistics
import time
from dataclasses import dataclass, field

import numpy as np

from charlm import blas
from charlm.config import ModelConfig, SampleConfig
from charlm.model import CELLS, CharModel
from charlm.optim import Adam, clip_grad_norm_
from charlm.parallel import DataParallel, default_workers


@dataclass(frozen=True)
class BenchConfig:
    """What to measure: a model of random weights, the training batch and the timing windows."""

    # the network measured (random weights); its vocab_size is that of the synthetic data
    model: ModelConfig = field(default_factory=lambda: ModelConfig(vocab_size=65))
    batch: int = 32  # B: training rows
    seq_len: int = 64  # T: training steps per chunk
    windows: int = 5  # timed windows for training (median reported)
    window_seconds: float = 2.0  # minimum length of one training window
    sample_chars: int = 2000  # characters per sampling window
    threads: int = 0  # training row blocks in parallel (0: one per core, as training does)

    def to_dict(self) -> dict:
        """The flat JSON ``config`` object of a result (the PyTorch peer writes the same keys)."""
        m = self.model
        return {
            "cell": m.cell,
            "layers": m.layers,
            "hidden": m.hidden,
            "embed": m.embed,
            "batch": self.batch,
            "seq_len": self.seq_len,
            "vocab": m.vocab_size,
            "windows": self.windows,
            "window_seconds": self.window_seconds,
            "sample_chars": self.sample_chars,
            "threads": self.threads,
        }


def gemm_gflops(threads: int | None = None, n: int = 1024, repeats: int = 5) -> float:
    """Best float32 rate of an (n × n) @ (n × n) NumPy matmul over ``repeats`` runs,
    in GFLOP/s, with at most ``threads`` BLAS threads (None: as the process has them)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    c = np.empty((n, n), np.float32)
    with blas.limit(threads) if threads else contextlib.nullcontext():
        np.matmul(a, b, out=c)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            np.matmul(a, b, out=c)
            times.append(time.perf_counter() - t)
    return 2.0 * n**3 / min(times) / 1e9


def gemm_threads(workers: int) -> tuple[int, int]:
    """BLAS threads of (training with ``workers`` row blocks, sampling): K blocks are
    K one-thread processes on at most as many cores; a single block runs on this
    process's own threads; sampling runs on one."""
    own = blas.threads()
    if workers <= 1:
        return own, 1
    return min(workers, os.cpu_count() or 1), 1


def flops_per_char(cfg: ModelConfig, training: bool) -> float:
    """Matrix-product FLOPs per character actually performed by CharModel.

    Forward: the recurrent product 2·G·H·H in every layer, the input product
    2·G·H·D in layers ≥ 1 (the first layer gathers rows of a table), the decoder
    2·V·H. Backward: the recurrent gradient and ∂W_hh (2 × 2·G·H·H), ∂W_ih and
    ∂x (2 × 2·G·H·D, including the first layer's embedding gradient), and the
    decoder's two products (2 × 2·V·H).
    """
    G = CELLS[cfg.cell].gates
    H, E, V = cfg.hidden, cfg.embed, cfg.vocab_size
    fwd = 2 * V * H
    bwd = 4 * V * H
    for layer in range(cfg.layers):
        D = E if layer == 0 else H
        fwd += 2 * G * H * H + (0 if layer == 0 else 2 * G * H * D)
        bwd += 4 * G * H * H + 4 * G * H * D
    return float(fwd + bwd) if training else float(fwd)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def train_throughput(cfg: BenchConfig) -> tuple[list[float], float]:
    """Characters per second of full training steps, one figure per timed window;
    and the peak memory of the worker processes that trained beside this one, in MB."""
    model = CharModel(cfg.model, seed=0)
    opt = Adam(model.num_params)
    stepper = DataParallel(model, cfg.threads or default_workers(cfg.batch))
    rng = np.random.default_rng(0)
    T, B = cfg.seq_len, cfg.batch
    data = rng.integers(0, cfg.model.vocab_size, (8, T + 1, B))
    state = model.zero_state(B)

    def step(k: int) -> None:
        nonlocal state
        chunk = data[k % len(data)]
        _, state = stepper.loss_and_grads(chunk[:-1], chunk[1:], state)
        clip_grad_norm_(model.grad_flat, 5.0)
        opt.step(model.flat, model.grad_flat, 1e-3, run=stepper.run_all)

    for k in range(3):  # warm-up: workspaces, BLAS threads, caches
        step(k)
    rates = _timed_windows(step, T * B, cfg)
    workers_mb = stepper.workers_peak_rss_mb()
    stepper.close()
    return rates, workers_mb


def _timed_windows(step, chars_per_step: int, cfg: BenchConfig) -> list[float]:
    """Characters per second of ``step(k)`` (k = 0, 1, …) in each of ``cfg.windows`` windows
    of at least ``cfg.window_seconds`` and two steps."""
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
        rates.append(n * chars_per_step / dt)
    return rates


def sample_throughput(cfg: BenchConfig, windows: int = 5) -> list[float]:
    """Characters per second generated at batch 1, temperature 1."""
    from charlm.sample import Sampler
    from charlm.vocab import Vocab

    model = CharModel(cfg.model, seed=0)
    vocab = Vocab("".join(chr(0x21 + i) for i in range(cfg.model.vocab_size)))
    sampler = Sampler(model, vocab, SampleConfig(temperature=1.0, seed=0))
    for _ in sampler.generate(200):  # warm-up
        pass
    rates = []
    for _ in range(windows):
        t0 = time.perf_counter()
        for _ in sampler.generate(cfg.sample_chars):
            pass
        rates.append(cfg.sample_chars / (time.perf_counter() - t0))
    return rates


def blas_name() -> str:
    """The BLAS NumPy runs on, e.g. "openblas 0.3.31 SkylakeX, 2 threads" (threadpoolctl's view)."""
    libs = blas.info()
    if not libs:
        return "unknown"
    return "; ".join(
        " ".join(str(x) for x in (lib["internal_api"], lib.get("version"), lib.get("architecture")) if x)
        + f", {lib['num_threads']} thread{'s' if lib['num_threads'] != 1 else ''}"
        for lib in libs
    )


def _significant(x: float, digits: int = 4) -> float:
    """x to ``digits`` significant figures (a fixed number of decimals would round a tiny model's rate to 0)."""
    return float(f"{x:.{digits}g}")


def _figures(rates: list[float], flops: float, gemm: float, threads: int, digits: int) -> dict:
    """The median rate of timed windows, the windows, and what the rate means in FLOP/s
    against the GEMM peak ``gemm`` measured with the same ``threads``. The fraction is
    capped at 1 only should the peak still have come out below the rate (flagged)."""
    med = statistics.median(rates)
    fraction = med * flops / 1e9 / gemm
    return {
        "chars_per_s": round(med, 1),
        "windows": [round(r, 1) for r in rates],
        "flops_per_char": flops,
        "gflops": _significant(med * flops / 1e9),
        "gemm_gflops": round(gemm, 1),
        "gemm_threads": threads,
        "roofline_fraction": round(min(fraction, 1.0), digits),
        "roofline_capped": fraction > 1.0,
    }


def run(cfg: BenchConfig, train: bool = True, sample: bool = True) -> dict:
    """Run the benchmark and return every figure as a JSON-ready dict."""
    workers = cfg.threads or default_workers(cfg.batch)
    result: dict = {
        "tool": "charlm",
        "config": cfg.to_dict(),
        "params": CharModel.count_params(cfg.model),
        "machine": {
            "nproc": os.cpu_count(),
            "cpu": platform.processor() or platform.machine(),
            "numpy": np.__version__,
            "blas": blas_name(),
            "python": platform.python_version(),
        },
        "threads": workers,
    }
    train_threads, sample_threads = gemm_threads(workers)
    counts = sorted({train_threads, sample_threads})
    peak = {k: gemm_gflops(k) for k in counts}  # before the timed windows …
    measured = {}  # what → (rates, BLAS threads, training?)
    workers_mb = 0.0
    if train:
        rates, workers_mb = train_throughput(cfg)
        measured["train"] = (rates, train_threads, True)
    if sample:
        measured["sample"] = (sample_throughput(cfg), sample_threads, False)
    peak = {k: max(v, gemm_gflops(k)) for k, v in peak.items()}  # … and after: the better of the two
    for key, (rates, threads, training) in measured.items():
        flops = flops_per_char(cfg.model, training=training)
        result[key] = _figures(rates, flops, peak[threads], threads, 4 if training else 5)
    # the peak at the training's thread count (benchmarks/compare.py prints it beside PyTorch's)
    result["gemm_gflops"] = round(peak[train_threads], 1)
    result["gemm_threads"] = train_threads
    # this process plus the training workers: what the machine had to hold
    result["peak_rss_mb"] = round(peak_rss_mb() + workers_mb, 1)
    return result
