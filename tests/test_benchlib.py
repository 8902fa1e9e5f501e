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
