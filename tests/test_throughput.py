"""The benchmark command reports consistent figures. No timing thresholds here:
speed goals are measured by benchmarks/compare.py, never asserted in tests."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from charlm.cli import app
from charlm.model import CharModel, ModelConfig
from charlm.throughput import flops_per_char

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
