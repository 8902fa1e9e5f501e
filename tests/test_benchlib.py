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
