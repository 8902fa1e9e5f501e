"""Start-up as a user meets it: whole-process seconds of ``charlm --help`` and of
``charlm sample -m shakespeare --length 200``, median of ``--runs`` each.

    python benchmarks/startup.py               # 15 rounds → the "Start-up" section of RESULTS.md
    python benchmarks/startup.py --runs 30 --out /tmp/r.md

Each run is a process of its own, started from this script with stdout to
/dev/null, timed from start to exit (wall clock) with its CPU seconds from
``os.wait4``. The commands take turns round by round, after ``--warmup`` untimed
rounds (files in the page cache, as for a user's second command), so a change in
the machine's load touches them alike. ``python -c pass`` runs alongside: the
interpreter's own start, which no change to charlm can remove. The commands run
as on a user's machine: without the OpenBLAS pinning variables and without
PYTHONDONTWRITEBYTECODE, so Python keeps the compiled modules it writes (with it
set and charlm installed editable, every start compiles charlm from source).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from benchlib import (
    Parser,
    blas_line,
    bounded,
    command_block,
    cpu_model,
    fail,
    nproc,
    parse_with_outputs,
    pins_line,
    portable,
    replace_section,
    run_as_user,
    thread_env,
    user_env,
    write_atomic,
)

SECTION = "Start-up"
NO_BYTECODE = "PYTHONDONTWRITEBYTECODE"  # unset for the commands: a user's Python caches compiled modules
HEAD = "# charlm benchmark results\n\n"
GOALS = {"help": 0.15, "sample": 0.35}  # seconds, whole process, median (issue 19)


def commands(charlm: Path) -> dict[str, list[str]]:
    """What is timed: name → argv."""
    return {
        "python": [sys.executable, "-c", "pass"],
        "help": [str(charlm), "--help"],
        "sample": [str(charlm), "sample", "-m", "shakespeare", "--length", "200"],
    }


def run_once(argv: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one process, stdout to /dev/null."""
    with open(os.devnull, "wb") as sink:
        start = time.perf_counter()
        env = {k: v for k, v in user_env().items() if k != NO_BYTECODE}
        proc = subprocess.Popen(argv, stdout=sink, stderr=subprocess.PIPE, env=env, cwd=Path.home())
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        fail(f"{' '.join(argv)} failed: {proc.stderr.read().decode(errors='replace').strip()}")
    proc.stderr.close()
    return wall, usage.ru_utime + usage.ru_stime


def measure(cmds: dict[str, list[str]], runs: int, warmup: int) -> dict[str, dict[str, list[float]]]:
    """Every timed run's wall and CPU seconds, by command."""
    times = {name: {"wall": [], "cpu": []} for name in cmds}
    for round_ in range(warmup + runs):
        for name, argv in cmds.items():
            wall, cpu = run_once(argv)
            if round_ >= warmup:
                times[name]["wall"].append(wall)
                times[name]["cpu"].append(cpu)
    return times


def render(data: dict) -> str:
    t = data["times"]
    lines = [
        f"## {SECTION}",
        "",
        f"`benchmarks/startup.py`, {data['date'][:16].replace('T', ' ')} UTC, {data['cpus']} CPUs ({data['cpu']}), "
        f"{data['blas']}. Thread variables: {data['threads'] or 'none set'}. {data['pins']}. "
        f"`{NO_BYTECODE}`: unset for the commands, so Python keeps the modules it compiles, as on a user's machine "
        f"(this machine had {data['no_bytecode'] or 'it unset'}). Load average (1 min) at the start and the end: "
        f"{data['load'][0]:.2f}, {data['load'][1]:.2f}.",
        "",
        f"Each command a process of its own, stdout to /dev/null, timed from start to exit; {data['runs']} rounds "
        f"(after {data['warmup']} untimed), the commands taking turns; medians. CPU: user + system seconds of the "
        "process.",
        "",
        "| command | median | fastest–slowest | CPU (median) | goal | met |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    shown = {"python": "`python -c pass` (the interpreter alone)", "help": "`charlm --help`"}
    shown["sample"] = "`charlm sample -m shakespeare --length 200`"
    for name, label in shown.items():
        wall, cpu = t[name]["wall"], t[name]["cpu"]
        goal = GOALS.get(name)
        med = statistics.median(wall)
        met = "—" if goal is None else ("**yes**" if med <= goal else "**no**")
        lines.append(
            f"| {label} | {med:.3f} s | {min(wall):.3f}–{max(wall):.3f} s | {statistics.median(cpu):.3f} s | "
            f"{'—' if goal is None else f'≤ {goal:.2f} s'} | {met} |"
        )
    lines += ["", *command_block(data["command"]), "Every run's seconds: `startup.json` next to this file."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = Parser(prog="benchmarks/startup.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=bounded(int, 1), default=15, help="Timed rounds (≥ 10 for the record).")
    p.add_argument("--warmup", type=bounded(int, 0), default=2, help="Untimed rounds first.")
    args = parse_with_outputs(p, argv, "startup.json", "Every run's seconds as JSON ")
    run_as_user()
    charlm = Path(sys.executable).with_name("charlm")
    if not charlm.exists():
        fail(f"no charlm console script next to {Path(sys.executable).name}; install charlm first (pip install -e .)")
    started = datetime.now(UTC)
    load_start = os.getloadavg()[0]
    times = measure(commands(charlm), args.runs, args.warmup)
    data = {
        "date": started.isoformat(timespec="seconds"),
        "cpus": nproc(),
        "cpu": cpu_model(),
        "blas": blas_line(),
        "threads": ", ".join(f"{k}={v}" for k, v in thread_env().items()),
        "pins": pins_line()[2:].replace("for both sides", "for the commands"),
        "no_bytecode": f"{NO_BYTECODE}={os.environ[NO_BYTECODE]}" if NO_BYTECODE in os.environ else "",
        "load": [load_start, os.getloadavg()[0]],
        "runs": args.runs,
        "warmup": args.warmup,
        "command": "python benchmarks/startup.py" + "".join(f" {a}" for a in (argv or sys.argv[1:])),
        "times": times,
    }
    text = render(data)
    print(text)
    write_atomic(args.json_out, json.dumps(data, indent=1) + "\n")
    replace_section(args.out, SECTION, portable(text), HEAD)


if __name__ == "__main__":
    main()
