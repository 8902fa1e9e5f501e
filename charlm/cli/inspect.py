"""``charlm corpora``, ``info``, ``export``, ``runs`` and ``bench``: what is here, and how fast it runs."""

from pathlib import Path
from typing import Annotated

import typer

from charlm.cli.common import app, check_threads, err, out, user_errors, warn_threads_over_cores
from charlm.cli.output import print_json
from charlm.config import MAX_LAYERS, MAX_WIDTH
from charlm.errors import UsageError

# --------------------------------------------------------------------------- #
# corpora
# --------------------------------------------------------------------------- #


@app.command()
@user_errors
def corpora() -> None:
    """List the corpora shipped with charlm."""
    from charlm.corpora import shipped
    from charlm.report import PlainTable

    rows = []
    for c in shipped():
        if not c.path.is_file():
            rows.append((c.name, "missing", "", "", c.path, c.description))
            continue
        text = c.path.read_text(encoding="utf-8")
        size = f"{c.path.stat().st_size / 1e6:.2f} MB"
        rows.append((c.name, size, f"{len(text):,}", len(set(text)), c.path, c.description))
    header = ("name", "size", "characters", "distinct", "path", "source")
    out.print(PlainTable(header, rows, right=(1, 2, 3), title="Shipped corpora (use the name in place of a file)"))


# --------------------------------------------------------------------------- #
# info, export, runs
# --------------------------------------------------------------------------- #


@app.command()
@user_errors
def info(
    target: Annotated[
        str,
        typer.Argument(
            help="A checkpoint file, a run folder (its best checkpoint), a shipped model (shakespeare, news, "
            "news-words) or a run's name under ./runs.",
            show_default=False,
        ),
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON object (fields in the README).")] = False,
) -> None:
    """Show a checkpoint's model, training and validation-loss curve (reads the header only)."""
    from charlm.report import info_fields, info_json
    from charlm.runs import describe, find_model

    found = describe(find_model(target).path)
    if as_json:
        print_json(info_json(found))
    else:
        out.print(info_fields(found, width=out.width))


@app.command()
@user_errors
def export(
    source: Annotated[
        str,
        typer.Argument(
            help="A checkpoint file, a run folder (its best checkpoint), a shipped model or a run's name, as for info.",
            show_default=False,
        ),
    ],
    destination: Annotated[Path, typer.Argument(help="The .safetensors file to write.", show_default=False)],
    half: Annotated[
        bool, typer.Option("--half", help="Store the weights as float16: half the size, loaded as float32.")
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Replace DESTINATION if it is an existing regular file.")
    ] = False,
) -> None:
    """Write a model file for sharing: weights, config, vocabulary and training history only."""
    from charlm.checkpoint import check_export_destination
    from charlm.checkpoint import export as export_checkpoint
    from charlm.runs import find_model

    check_export_destination(destination)  # also with --force: only a regular file is replaced
    if destination.exists() and not force:
        raise UsageError(f"{destination} exists; choose another name or pass --force to replace it.")
    if not destination.parent.is_dir():
        raise UsageError(f"{destination.parent}: no such folder.")
    export_checkpoint(find_model(source).path, destination, half=half)
    out.print(f"wrote {destination} ({destination.stat().st_size / 1e6:.1f} MB)")


@app.command()
@user_errors
def runs(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder that holds the run folders.")] = Path("runs"),
    as_json: Annotated[
        bool, typer.Option("--json", help="Print a JSON list, newest first (fields in the README).")
    ] = False,
) -> None:
    """List the runs under ./runs with their best validation loss and age (a run whose checkpoint cannot be read: as broken)."""
    from charlm.report import runs_json, runs_table
    from charlm.runs import describe_runs

    found = describe_runs(out_dir)
    if not found:  # nothing to list is not an error
        err.print(f"no runs with a checkpoint under {out_dir} yet. Train one: charlm train shakespeare", markup=False)
    if as_json:
        print_json(runs_json(found))
    elif found:
        out.print(runs_table(found))
    broken = sum(r.broken is not None for r in found)
    if broken:  # listed, and the others with them: still a listing, so exit status 0
        err.print(
            f"warning: {broken} run(s) have a checkpoint charlm cannot read, listed as broken; "
            "'charlm info RUN' says why in full.",
            markup=False,
        )


# --------------------------------------------------------------------------- #
# bench
# --------------------------------------------------------------------------- #


@app.command()
@user_errors
def bench(
    cell: Annotated[str, typer.Option(help="Recurrent cell to measure: lstm, gru or rnn.")] = "lstm",
    layers: Annotated[int, typer.Option(min=1, max=MAX_LAYERS, help="Stacked recurrent layers.")] = 2,
    hidden: Annotated[int, typer.Option(min=1, max=MAX_WIDTH, help="Hidden units per layer (H).")] = 256,
    embed: Annotated[int, typer.Option(min=1, max=MAX_WIDTH, help="Embedding width (E).")] = 64,
    batch: Annotated[int, typer.Option("--batch-size", "--batch", min=1, help="Batch rows (B) for training.")] = 32,
    seq_len: Annotated[int, typer.Option(min=1, help="Steps per chunk (T) for training.")] = 64,
    vocab: Annotated[int, typer.Option(min=2, max=65536, help="Vocabulary size of the synthetic data.")] = 65,
    windows: Annotated[int, typer.Option(min=1, max=100, help="Timed training windows; the median is reported.")] = 5,
    window_seconds: Annotated[float, typer.Option(min=0.01, help="Minimum seconds per training window.")] = 2.0,
    threads: Annotated[
        int,
        typer.Option(
            min=0, max=256, help="Row blocks trained in parallel; 0 = one per CPU core, as 'charlm train' does."
        ),
    ] = 0,
    train: Annotated[bool, typer.Option("--train/--no-train", help="Measure training throughput.")] = True,
    sample: Annotated[bool, typer.Option("--sample/--no-sample", help="Measure sampling throughput.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
) -> None:
    """Measure training and sampling throughput (characters per second) on synthetic data."""
    import json

    from charlm.config import ModelConfig
    from charlm.model import CELLS
    from charlm.throughput import BenchConfig, run

    if cell not in CELLS:
        raise UsageError(f"unknown cell {cell!r}; choose one of: {', '.join(CELLS)}.")
    check_threads(threads, batch)
    warn_threads_over_cores(threads)
    model = ModelConfig(vocab_size=vocab, cell=cell, embed=embed, hidden=hidden, layers=layers)
    cfg = BenchConfig(model, batch, seq_len, windows, window_seconds, threads=threads)
    if not as_json:
        err.print(f"measuring {layers}×{hidden} {cell.upper()}, batch {batch} × {seq_len} steps …")
    result = run(cfg, train=train, sample=sample)
    if as_json:
        out.print_json(json.dumps(result))
    else:
        _print_bench(cfg, result)


def _print_bench(cfg, result: dict) -> None:
    """The figures of a ``run`` as a table and a line about the machine."""
    from charlm.report import PlainTable

    m = cfg.model
    rows = []
    for key, label in (("train", f"training, batch {cfg.batch} × {cfg.seq_len}"), ("sample", "sampling, batch 1")):
        if key in result:
            r = result[key]
            rows.append(
                (
                    label,
                    f"{r['chars_per_s']:,.0f}",
                    f"{min(r['windows']):,.0f}–{max(r['windows']):,.0f}",
                    f"{r['gflops']:.2f}",
                    f"{100 * r['roofline_fraction']:.1f}%",
                    f"{r['gemm_gflops']:.1f} GFLOP/s, {r['gemm_threads']} thread{'s' * (r['gemm_threads'] != 1)}",
                )
            )
            if r["roofline_capped"]:
                err.print(
                    f"warning: the {key} rate came out above the GEMM peak measured beside it (a busy machine?); "
                    "shown as 100%.",
                    markup=False,
                )
    header = ("measure", "chars/s (median)", "min–max", "GFLOP/s", "of GEMM peak", "GEMM peak (same threads)")
    title = f"charlm bench: {m.layers}×{m.hidden} {m.cell.upper()}, E={m.embed}, V={m.vocab_size}"
    out.print(PlainTable(header, rows, right=range(1, 5), title=title))
    machine = result["machine"]
    out.print(
        f"{machine['nproc']} CPUs; {result['threads']} row block{'s' * (result['threads'] != 1)}; "
        f"NumPy {machine['numpy']} ({machine['blas']}); peak RSS {result['peak_rss_mb']:.0f} MB",
        markup=False,
    )
