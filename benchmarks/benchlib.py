"""Small helpers shared by the benchmark scripts: one-line errors, argument
parsing, the machine description, and safe updates of RESULTS.md.

Nothing here imports NumPy, PyTorch or charlm, so every script's ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS_MD = HERE / "RESULTS.md"
TORCH_PIN = "torch==2.13.0"


class BenchError(Exception):
    """A problem the user can fix; the script prints ``error: <message>`` and exits 1."""


def fail(message: str, code: int = 1) -> None:
    """One line on stderr, then exit with ``code``."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


class Parser(argparse.ArgumentParser):
    """argparse with charlm's error style (one line on stderr, exit code 2); --help shows defaults."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        fail(f"{message}. Run '{self.prog} --help' for the options", 2)


def bounded(kind, low=None, high=None, *, strict_low: bool = False):
    """An argparse ``type`` that converts with ``kind`` and checks the range."""

    def convert(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a valid {kind.__name__}") from None
        if value != value:  # NaN
            raise argparse.ArgumentTypeError(f"{text!r} is not a number")
        if low is not None and (value <= low if strict_low else value < low):
            raise argparse.ArgumentTypeError(f"{text} must be {'>' if strict_low else '≥'} {low}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"{text} must be ≤ {high}")
        return value

    convert.__name__ = kind.__name__
    return convert


def nproc() -> int:
    """CPUs this process may run on (what ``nproc`` prints)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, or what the platform module knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def thread_env() -> dict[str, str]:
    """Thread-count environment variables that are set (they change both sides' speed)."""
    names = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")
    return {n: os.environ[n] for n in names if n in os.environ}


# Set on some machines to pin OpenBLAS to older kernels (1024³ sgemm 198 against 375 GFLOP/s on an
# AVX-512 CPU). A user's machine sets neither, so every benchmark runs both sides without them.
BLAS_PINS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
REMOVED_PINS = "CHARLM_BENCH_REMOVED_PINS"  # what run_as_user took away, for the record


def user_env(**extra: str) -> dict[str, str]:
    """This process's environment without BLAS_PINS (for the processes a benchmark starts)."""
    env = {k: v for k, v in os.environ.items() if k not in BLAS_PINS}
    env.update(extra)
    return env


def run_as_user() -> None:
    """Start this script again without BLAS_PINS if any is set: OpenBLAS reads them once, when
    NumPy loads, so unsetting them inside a running process changes nothing."""
    pins = " ".join(f"{k}={os.environ[k]}" for k in BLAS_PINS if k in os.environ)
    if pins:
        print(f"note: running without {pins}, as a user's machine does", file=sys.stderr)
        sys.stdout.flush()
        os.execve(sys.executable, [sys.executable, *sys.argv], user_env(**{REMOVED_PINS: pins}))


def pins_line() -> str:
    """One line for a report: the pinning variables are unset for both sides, and why."""
    had = os.environ.get(REMOVED_PINS) or " ".join(f"{k}={os.environ[k]}" for k in BLAS_PINS if k in os.environ)
    return (
        f"- OpenBLAS pinning variables ({' and '.join(f'`{k}`' for k in BLAS_PINS)}): unset for both sides, as on a "
        f"user's machine (they force older, slower kernels); this machine had {had or 'neither set'}"
    )


def blas_line() -> str:
    """NumPy's BLAS as threadpoolctl sees it (imported here, not at the top: --help stays instant)."""
    import numpy as np
    from threadpoolctl import threadpool_info

    libs = [i for i in threadpool_info() if i.get("user_api") == "blas"]
    desc = "; ".join(
        f"`{i.get('internal_api')}` {i.get('version') or ''}, architecture `{i.get('architecture')}`, "
        f"{i.get('num_threads')} thread{'' if i.get('num_threads') == 1 else 's'}"
        for i in libs
    )
    return f"NumPy {np.__version__} ({desc or 'no BLAS found by threadpoolctl'})"


def peer_args(prog: str, description: str, seed_help: str, argv: list[str] | None = None):
    """The options every time-budgeted training peer takes: corpus, minutes, seed, --json."""
    p = Parser(prog=prog, description=description)
    p.add_argument("--corpus", default="shakespeare", help="Shipped corpus name or text file.")
    p.add_argument("--minutes", type=bounded(float, 0.0, strict_low=True), default=3.0, help="Budget, from start-up.")
    p.add_argument("--seed", type=bounded(int, 0), default=0, help=seed_help)
    p.add_argument("--json", dest="as_json", action="store_true", help="Print the whole result (histories too).")
    return p.parse_args(argv)


def import_torch():
    """PyTorch, or one line saying how to install it and exit 1."""
    try:
        import torch
    except ImportError:
        fail(f"PyTorch is not installed in {sys.executable}. Install it: {sys.executable} -m pip install {TORCH_PIN}")
    return torch


def parse_with_outputs(p: argparse.ArgumentParser, argv: list[str] | None, json_name: str, json_help: str):
    """Add --out (the report whose section is updated) and --json (``json_name`` next to it), then parse."""
    p.add_argument("--out", type=Path, default=RESULTS_MD, help="Markdown report whose section is updated.")
    p.add_argument(
        "--json", dest="json_out", type=Path, default=argparse.SUPPRESS,
        help=f"{json_help}(default: {json_name} next to --out)",
    )  # fmt: skip
    args = p.parse_args(argv)
    if "json_out" not in args:
        args.json_out = args.out.with_name(json_name)
    return args


def command_block(command: str) -> list[str]:
    """A report's lines showing the command that produced it, as a bash block."""
    return ["Command:", "", "```bash", command, "```", ""]


def user_command(script: str, argv: list[str] | None = None) -> str:
    """The command line that ran ``script`` as a user types it: ``python benchmarks/x.py …``,
    with every absolute path among the arguments shown as ``<folder>`` or ``<file>``, so a
    committed record names no one's machine (the interpreter of ``--python`` included)."""
    args = sys.argv[1:] if argv is None else argv
    shown = []
    for arg in args:
        option, eq, value = arg.partition("=") if arg.startswith("--") else ("", "", arg)
        if os.path.isabs(value):
            value = "<folder>" if Path(value).is_dir() or not Path(value).suffix else "<file>"
        shown.append(f"{option}{eq}{value}")
    return shlex.join(["python", script, *shown])


def require_torch_and_charlm() -> None:
    """One line and exit 1 unless this interpreter can import both PyTorch and charlm."""
    try:
        import torch  # noqa: F401

        import charlm  # noqa: F401
    except ImportError as e:
        fail(f"cannot import {e.name}: run this script with an interpreter that has charlm and torch==2.13.0")


def portable(text: str, *temporary: Path) -> str:
    """``text`` with this checkout's path left out and temporary folders named ``<tmpdir>``,
    so a committed record names no one's machine."""
    for folder in temporary:
        text = text.replace(str(folder), "<tmpdir>")
    return text.replace(str(HERE.parent) + os.sep, "")


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file in the same folder and os.replace,
    so an interrupted run leaves the previous file intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are for everyone to read
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def split_sections(text: str) -> tuple[str, dict[str, str]]:
    """Markdown → (text before the first '## ' heading, {heading: section text incl. heading})."""
    head: list[str] = []
    sections: dict[str, str] = {}
    current: list[str] | None = None
    title = ""
    for line in text.splitlines(keepends=True):
        if line.startswith("## "):
            if current is not None:
                sections[title] = "".join(current)
            title, current = line[3:].strip(), [line]
        elif current is None:
            head.append(line)
        else:
            current.append(line)
    if current is not None:
        sections[title] = "".join(current)
    return "".join(head), sections


def read_section(path: Path, title: str) -> str | None:
    """The '## title' section of a markdown file (heading included), or None."""
    if not path.is_file():
        return None
    return split_sections(path.read_text(encoding="utf-8"))[1].get(title)


def replace_section(path: Path, title: str, body: str, new_file_head: str) -> None:
    """Replace the '## title' section of ``path`` with ``body`` (which starts with
    that heading), or append it; other sections are kept as they are."""
    text = path.read_text(encoding="utf-8") if path.is_file() else new_file_head
    head, sections = split_sections(text)
    sections[title] = body.rstrip("\n") + "\n\n"
    out = head if head.endswith("\n\n") or not head else head.rstrip("\n") + "\n\n"
    out += "".join(s.rstrip("\n") + "\n\n" for s in sections.values())
    write_atomic(path, out.rstrip("\n") + "\n")


def fmt_rate(x: float) -> str:
    return f"{x:,.0f}"


def fmt_ratio(x: float) -> str:
    return f"{x:.2f}×"
