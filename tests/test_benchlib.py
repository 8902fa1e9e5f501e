"""benchmarks/benchlib.py's markdown sections: each benchmark script rewrites its own
section of benchmarks/RESULTS.md and keeps the others (compare.py reads quality.py's)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from benchlib import read_section, replace_section


def test_sections_are_replaced_and_read_back_without_touching_the_others(tmp_path):
    md = tmp_path / "RESULTS.md"
    assert read_section(md, "Speed") is None
    replace_section(md, "Speed", "## Speed\n\nfast\n", "# Results\n")
    replace_section(md, "Quality at equal time", "## Quality at equal time\n\ngood\n", "# Results\n")
    assert read_section(md, "Speed") == "## Speed\n\nfast\n\n"
    replace_section(md, "Speed", "## Speed\n\nfaster\n", "# Results\n")
    text = md.read_text()
    assert text.startswith("# Results\n\n## Speed\n\nfaster\n") and text.count("## ") == 2
    assert read_section(md, "Quality at equal time") == "## Quality at equal time\n\ngood\n"
    assert read_section(md, "Missing") is None


def test_profile_step_parts_add_up_to_the_step():
    """benchmarks/profile_step.py on a tiny block: every part is reported and is
    positive, i.e. the wrapped methods nest as the subtractions assume (a part
    timed twice or not at all would drive another negative)."""
    import re
    import subprocess

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "profile_step.py"
    args = ["--layers", "2", "--hidden", "8", "--embed", "4", "--rows", "3", "--seq-len", "5", "--steps", "3"]
    out = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, check=True).stdout
    shares = [float(x) for x in re.findall(r"ms +(-?[\d.]+)%", out)]
    assert len(shares) == 6 and "forward time loops" in out and "backward time loops" in out
    assert all(s > 0 for s in shares), out


def test_a_run_without_onednn_judges_no_goal_and_keeps_the_results_of_record():
    """compare.py --no-torch-mkldnn is a sensitivity check: it writes its own
    report by default, and its summaries judge no goal (the goals are against
    PyTorch's defaults)."""
    import compare

    default = compare.parse_args([])
    assert default.out.name == "RESULTS.md" and default.json_out.name == "results.json"
    off = compare.parse_args(["--no-torch-mkldnn"])
    assert off.out.name == "RESULTS-no-onednn.md" and off.json_out.name == "results-no-onednn.json"
    assert compare.parse_args(["--no-torch-mkldnn", "--out", "x.md"]).out == Path("x.md")

    series = compare.Series("A", "A", "lstm", "train")
    runs = {
        "charlm": [{"train": {"chars_per_s": 150.0}, "peak_rss_mb": 10.0}] * 3,
        "pytorch": [{"train": {"chars_per_s": 100.0}, "peak_rss_mb": 20.0}] * 3,
    }
    judged = compare.summarize(series, runs)
    assert judged["ratio"] == 1.5 and judged["met"] is True
    unjudged = compare.summarize(series, runs, goal_applies=False)
    assert unjudged["ratio"] == 1.5 and unjudged["met"] is None
    assert compare.yes_no(unjudged["met"]) == "—"


def _ttq_run(minutes, seed, system, loss):
    """A fake result of time_to_quality.py's run of ``system`` (the fields its report reads)."""
    common = {"chars": 600_000, "elapsed": 60.0 * minutes, "wall": 60.0 * minutes + 2, "held_out": 111_539}
    if system == "charlm":
        used = {
            "model": {"layers": 2, "hidden": 256, "cell": "lstm", "embed": 64, "dropout": 0.0},
            "train": {"batch_size": 32, "seq_len": 64, "lr": 3e-3, "eval_every": 200},
        }
        extra = {"tail_nats": loss, "run_best_val": loss, "steps": 1000, "used": used, "command": "charlm train x"}
        extra["differs_from_dataclasses"] = []
    elif system == "lstm":
        recipe = {"model": used_model(), "train": used_train()}
        extra = {"tail_nats": loss, "steps": 900, "recipe": recipe, "ignored": ["TrainConfig.new_setting"]}
    else:
        extra = {
            "tail_sliding": loss,
            "tail_blocks": loss + 0.03,
            "iters": 5000,
            "params": 803_328,
            "score_seconds": 90,
        }
    return {"minutes": minutes, "seed": seed, "system": system, "result": {**common, **extra}}


def used_model():
    return {"layers": 2, "hidden": 256, "cell": "lstm", "embed": 64, "dropout": 0.0, "forget_bias": 0.0}


def used_train():
    return {
        "batch_size": 32,
        "seq_len": 64,
        "lr": 3e-3,
        "warmup": 50,
        "final_lr_frac": 0.1,
        "clip": 5.0,
        "eval_every": 200,
    }


def test_time_to_quality_judges_the_goals_on_the_means_over_the_seeds(tmp_path):
    """10 minutes: charlm 1.41 against nanoGPT 1.475 on the means is 0.065 lower, met; 3 minutes: equal
    means are not 'lower'; charlm against the LSTM peer per budget; 30 minutes not measured."""
    import time_to_quality as ttq

    losses = {
        (10.0, "charlm"): (1.40, 1.42), (10.0, "nanogpt"): (1.48, 1.47), (10.0, "lstm"): (1.40, 1.40),
        (3.0, "charlm"): (1.60, 1.60), (3.0, "nanogpt"): (1.59, 1.61), (3.0, "lstm"): (1.61, 1.61),
    }  # fmt: skip
    runs = [_ttq_run(m, seed, system, x[seed]) for (m, system), x in losses.items() for seed in (0, 1)]
    rows = ttq.summarize(runs)
    assert abs(rows[(10.0, "charlm")]["mean"] - 1.41) < 1e-12 and rows[(3.0, "nanogpt")]["steps"] == 5000
    assert abs(rows[(3.0, "nanogpt-blocks")]["mean"] - 1.63) < 1e-12
    text = "\n".join(ttq.goals(rows))
    assert (
        "10 minutes, charlm lower than nanoGPT's recipe by ≥ 0.06 nats/char: charlm − nanoGPT = -0.0650: **met**"
        in text
    )
    assert "3 minutes, charlm lower than nanoGPT's recipe: charlm − nanoGPT = +0.0000: **not met**" in text
    assert "3 minutes, charlm no worse than the PyTorch LSTM with its recipe: charlm − peer = -0.0100: **met**" in text
    assert (
        "10 minutes, charlm no worse than the PyTorch LSTM with its recipe: charlm − peer = +0.0100: **not met**"
        in text
    )
    assert "30-minute default run ≤ 1.40: not measured" in text
    data = {"runs": runs, "date": "2026-12-03T12:00:00", "blas": "NumPy", "torch": "2.13.0", "seeds": [0, 1]}
    data |= {"corpus": "shakespeare", "thread_env": {}, "command": "python benchmarks/time_to_quality.py"}
    report = ttq.render(data, rows)
    assert (
        report.startswith("## Time to quality\n")
        and "| 10 min | charlm, its defaults | 1.4100 | 1.4000, 1.4200 |" in report
    )
    assert (
        "(it does not follow: TrainConfig.new_setting)" in report and "its 111,538 characters after the first" in report
    )


def test_score_compare_ratios_are_the_peers_seconds_over_charlms_and_the_loss_is_checked():
    import score_compare

    def run(seconds, nats, rss):
        return {"seconds": seconds, "nats_per_char": nats, "chars": 1000, "peak_rss_mb": rss}

    runs = {
        "charlm": [run(2.0, 1.5000, 410.0), run(2.2, 1.5000, 400.0), run(1.8, 1.5000, 420.0)],
        "peer": [run(3.0, 1.5001, 610.0), run(2.0, 1.5001, 600.0), run(4.0, 1.5001, 620.0)],
        "charlm_whole": [{"wall": w, "peak_rss_mb": 500.0} for w in (3.0, 3.1, 2.9)],
        "peer_whole": [{"wall": w, "peak_rss_mb": 600.0} for w in (4.5, 4.6, 4.4)],
        "sequential": {"sequential": {"nats_per_char": 1.5060}},
    }
    s = score_compare.summarize("m", runs)
    assert s["ratio"] == 3.0 / 2.0 and s["met_speed"] and abs(s["range"][0] - 2.0 / 2.2) < 1e-12
    assert abs(s["ratio_whole"] - 4.5 / 3.0) < 1e-12
    assert s["charlm_rss"] == 410.0 and s["peer_rss"] == 610.0  # the in-process runs' (charlm's with its forks)
    assert not s["met_loss"]  # 1.5000 against 1.5060: 0.006 apart
    runs["sequential"]["sequential"]["nats_per_char"] = 1.5040
    assert score_compare.summarize("m", runs)["met_loss"]


def test_compare_keeps_the_sections_other_scripts_write_and_drops_its_own(tmp_path):
    """compare.py rewrites RESULTS.md: its own old sections go (a run without sampling must not keep stale
    sampling figures), every other script's section stays."""
    import compare

    md = tmp_path / "RESULTS.md"
    md.write_text(
        "# R\n\n## Machine\n\nold\n\n## Time to quality\n\nttq\n\n## Sampling throughput (config B, batch 1)\n\n"
        "old\n\n## Scoring speed\n\nss\n",
        encoding="utf-8",
    )
    kept = [t for t in compare.kept_sections(md) if not t.startswith(compare.OWN_SECTIONS)]
    assert kept == ["Time to quality", "Scoring speed"]
    assert compare.kept_sections(tmp_path / "missing.md") == {}


def test_time_to_quality_add_keeps_earlier_runs_of_todays_defaults(tmp_path):
    """--add keeps the JSON's runs this invocation does not redo, but drops a charlm or LSTM run whose
    recipe is not today's defaults (one trained before a default changed) and keeps nanoGPT's."""
    from dataclasses import asdict

    import time_to_quality as ttq

    from charlm.config import ModelConfig, TrainConfig

    today = {"model": asdict(ModelConfig()), "train": TrainConfig().to_dict()}
    old = {**today, "model": {**today["model"], "dropout": today["model"]["dropout"] + 0.1}}
    runs = [_ttq_run(3.0, 0, "charlm", 1.5), _ttq_run(3.0, 1, "charlm", 1.5), _ttq_run(3.0, 0, "lstm", 1.6)]
    runs += [_ttq_run(3.0, 0, "nanogpt", 1.8), _ttq_run(10.0, 0, "charlm", 1.45)]
    runs[0]["result"]["used"], runs[1]["result"]["used"] = today, old
    runs[2]["result"]["recipe"] = old
    runs[4]["result"]["used"] = today
    path = tmp_path / "ttq.json"
    path.write_text(json.dumps({"command": "python benchmarks/time_to_quality.py --minutes 3", "runs": runs}))
    kept, commands = ttq.kept_runs(path, redo={(10.0, 0, "charlm")})
    assert [(r["minutes"], r["seed"], r["system"]) for r in kept] == [(3.0, 0, "charlm"), (3.0, 0, "nanogpt")]
    assert commands == ["python benchmarks/time_to_quality.py --minutes 3"]
    assert ttq.kept_runs(tmp_path / "none.json", redo=set()) == ([], [])


def test_startup_benchmark_writes_its_section_with_medians_and_goals(tmp_path, monkeypatch):
    """benchmarks/startup.py with the processes stubbed out: medians, the goals met or
    not, and every run's seconds in the JSON next to the report."""
    import json

    import startup

    seconds = {"python": 0.02, "help": 0.12, "sample": 0.5}
    monkeypatch.setattr(startup, "run_as_user", lambda: None)  # never re-executes the test process
    monkeypatch.setattr(
        startup, "run_once", lambda argv: next((s, s) for k, s in seconds.items() if k in " ".join(argv))
    )
    monkeypatch.setattr(startup, "commands", lambda charlm: {k: [k] for k in seconds})
    out = tmp_path / "R.md"
    startup.main(["--runs", "3", "--warmup", "1", "--out", str(out)])
    section = read_section(out, "Start-up")
    assert "| `charlm --help` | 0.120 s |" in section and "| ≤ 0.15 s | **yes** |" in section
    assert "| `charlm sample -m shakespeare --length 200` | 0.500 s |" in section and "**no**" in section
    data = json.loads((tmp_path / "startup.json").read_text())
    assert data["times"]["help"]["wall"] == [0.12] * 3


def test_user_command_shows_no_absolute_paths(tmp_path):
    from benchlib import user_command

    line = user_command(
        "benchmarks/x.py", ["--runs", str(tmp_path), f"--json={tmp_path / 'a.json'}", "--minutes", "30", "rel/x.txt"]
    )
    assert line == "python benchmarks/x.py --runs '<folder>' '--json=<file>' --minutes 30 rel/x.txt"
    assert str(tmp_path) not in line


def test_word_compare_charlm_side_and_summary(tmp_path):
    """benchmarks/word_compare.py without PyTorch: charlm's tokens of a small text, one timed window
    of charlm's side on them, and the goal arithmetic of a summary."""
    import word_compare as wc

    text = tmp_path / "t.txt"
    text.write_text("The cat sat on the mat. A dog ran in the park!\n\n" * 400, encoding="utf-8")
    tokens = wc.prepare_tokens(str(text), 10, tmp_path)
    assert tokens["vocab"] == 12 and tokens["tokens"] == 400 * 16
    r = wc.charlm_side(tmp_path, "train", 1, 0.01, 10)
    assert len(r["rates"]) == 1 and r["rates"][0] > 0 and r["peak_rss_mb"] > 0
    runs = {
        side: {"train": [{"median": m, "peak_rss_mb": rss}]}
        for side, m, rss in (("charlm", 3.0, 50), ("pytorch", 2.0, 100))
    }
    train, rss = wc.summarize("train", runs), wc.summarize("rss", runs)
    assert (train["ratio"], train["met"], rss["ratio"], rss["met"]) == (1.5, True, 0.5, True)
