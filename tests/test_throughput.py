"""The benchmark command reports consistent figures. No timing thresholds here:
speed goals are measured by benchmarks/compare.py, never asserted in tests."""

from __future__ import annotations

import json
import os

import pytest
from typer.testing import CliRunner

from charlm import blas
from charlm.cli import app
from charlm.model import CharModel, ModelConfig
from charlm.throughput import _figures, flops_per_char, gemm_threads

runner = CliRunner()
TINY = [
    "--layers",
    "1",
    "--hidden",
    "16",
    "--embed",
    "8",
    "--batch",
    "4",
    "--seq-len",
    "8",
    "--windows",
    "2",
    "--window-seconds",
    "0.05",
]


def test_bench_json_is_consistent():
    r = runner.invoke(app, ["bench", *TINY, "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["machine"]["nproc"] >= 1
    assert res["config"] == {  # flat, as the PyTorch peer and the stored results read it
        "cell": "lstm",
        "layers": 1,
        "hidden": 16,
        "embed": 8,
        "batch": 4,
        "seq_len": 8,
        "vocab": 65,
        "windows": 2,
        "window_seconds": 0.05,
        "sample_chars": 2000,
        "threads": 0,
    }
    for key in ("train", "sample"):
        part = res[key]
        assert len(part["windows"]) == (2 if key == "train" else 5)
        assert min(part["windows"]) <= part["chars_per_s"] <= max(part["windows"])
        assert abs(part["gflops"] - part["chars_per_s"] * part["flops_per_char"] / 1e9) < 0.01 * part["gflops"] + 1e-3
    assert res["peak_rss_mb"] > 10
    # each fraction is against a peak measured with the run's own BLAS thread count
    assert res["train"]["gemm_threads"] == gemm_threads(res["threads"])[0] == res["gemm_threads"]
    assert res["sample"]["gemm_threads"] == 1
    for key in ("train", "sample"):
        part = res[key]
        assert 0 < part["roofline_fraction"] <= 1.0
        assert (
            part["roofline_fraction"] == pytest.approx(part["gflops"] / part["gemm_gflops"], rel=0.01, abs=1e-4)
            or part["roofline_capped"]
        )


def test_gemm_peak_threads_follow_the_run():
    cores = os.cpu_count() or 1
    assert gemm_threads(1) == (blas.threads(), 1)  # one block: this process, with its own threads
    assert gemm_threads(2) == (min(2, cores), 1)  # K one-thread worker processes
    assert gemm_threads(cores + 5) == (cores, 1)  # more blocks than cores share the cores


def test_a_rate_above_the_peak_is_capped_and_flagged():
    fig = _figures([100.0, 120.0], flops=1e9, gemm=50.0, threads=2, digits=4)  # 110 GFLOP/s against 50
    assert fig["roofline_fraction"] == 1.0 and fig["roofline_capped"]
    fig = _figures([10.0], flops=1e9, gemm=50.0, threads=2, digits=4)
    assert fig["roofline_fraction"] == 0.2 and not fig["roofline_capped"]


def test_bench_table_and_selective_runs():
    r = runner.invoke(app, ["bench", *TINY, "--no-sample"])
    assert r.exit_code == 0, r.output
    assert "training" in r.stdout and "sampling" not in r.stdout
    assert "GEMM peak" in r.stdout


def test_flop_count_matches_parameter_shapes():
    """Forward FLOPs = 2 × (recurrent + input + decoder weights), the first layer's input excepted (gathered)."""
    cfg = ModelConfig(vocab_size=50, embed=8, hidden=12, layers=3)
    shapes = CharModel.param_shapes(cfg)
    weights = sum(
        a * b
        for n, (a, b) in ((n, s) for n, s in shapes.items() if len(s) == 2)
        if n not in ("embedding.weight", "rnn.weight_ih_l0")
    )
    assert flops_per_char(cfg, training=False) == 2 * weights
    # backward does two products per forward product, plus the first layer's input products
    assert flops_per_char(cfg, training=True) == 6 * weights + 4 * shapes["rnn.weight_ih_l0"][0] * 8
