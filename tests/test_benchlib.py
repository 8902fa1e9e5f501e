"""benchmarks/benchlib.py's markdown sections: each benchmark script rewrites its own
section of benchmarks/RESULTS.md and keeps the others (compare.py reads quality.py's)."""

from __future__ import annotations

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
