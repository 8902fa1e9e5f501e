"""charlm's word model against a PyTorch word language model, side by side, on the same tokens.

The peer has the sizes of PyTorch's own word_language_model example (2-layer LSTM, 200 hidden,
embedding 200, batch 20, bptt 35) with charlm's default 10,000-word vocabulary, and both sides
read the same token ids: charlm's tokenizer and vocabulary (charlm.words, charlm.wordvocab) turn
the corpus (news by default) into uint16 ids once, into a temporary folder that both read.

    e<t> = Embedding(V, 200)(x<t>)  →  a<t> = 2-layer LSTM(200)  →  u<t> = Linear(200, V)  →  softmax

Protocol of benchmarks/compare.py: for every measure the two sides run as separate processes,
alternately — charlm, PyTorch, charlm, PyTorch, … — for ``--pairs`` pairs; each run reports the
median of its own timed windows; the script reports the median of each side, the ratio of the
medians (charlm ÷ PyTorch) and the smallest and largest per-pair ratio, against the goals of
issue 20:

    measure    what                                                             goal
    train      words/s of full steps on consecutive (35, 20) chunks of the      ≥ 1×
               corpus: forward, cross-entropy over V, backward, clipping at 5,
               Adam (lr 1e-3), state carried (no dropout, as compare.py)
    sample     words/s at batch 1, τ = 1 (a 200-word warm-up, then 5 windows)  > 1× (by how much: measured)
    peak RSS   ru_maxrss of each training process (charlm: with its workers)   ≤ 1×

A "word" is a token of charlm's tokenizer (words, numbers, punctuation marks and <EOS>). The
section "Word model" of benchmarks/RESULTS.md is replaced (the other sections are kept) and
every raw figure goes to benchmarks/word_compare.json.

    python benchmarks/word_compare.py                                  # the comparison (a few minutes)
    python benchmarks/word_compare.py --pairs 1 --windows 1 --window-seconds 0.2 --out /tmp/W.md
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from benchlib import (
    RESULTS_MD,
    BenchError,
    Parser,
    blas_line,
    bounded,
    command_block,
    cpu_model,
    fail,
    fmt_rate,
    fmt_ratio,
    nproc,
    pins_line,
    portable,
    replace_section,
    run_as_user,
    thread_env,
    user_command,
    user_env,
    write_atomic,
)

TITLE = "Word model"  # the section of RESULTS.md this script writes
SIZES = {"layers": 2, "hidden": 200, "embed": 200, "batch": 20, "seq_len": 35}  # word_language_model's defaults
GOALS = {"train": ("≥", 1.0), "sample": (">", 1.0), "rss": ("≤", 1.0)}  # charlm ÷ PyTorch
SAMPLE_WARMUP, SAMPLE_WINDOWS = 200, 5


# --------------------------------------------------------------------------- #
# The tokens both sides read
# --------------------------------------------------------------------------- #


def prepare_tokens(corpus: str, vocab_size: int, folder: Path) -> dict:
    """charlm's token ids of ``corpus`` (its tokenizer, its vocabulary of ``vocab_size`` words)
    as ``folder/ids.npy`` (uint16) and its vocabulary as ``folder/vocab.json``."""
    import numpy as np

    from charlm.config import TrainConfig, WordConfig
    from charlm.corpora import resolve
    from charlm.wordcorpus import load_word_corpus

    path, _ = resolve(corpus)
    words = load_word_corpus(
        path, TrainConfig(batch_size=SIZES["batch"], seq_len=SIZES["seq_len"]), WordConfig(vocab_size)
    )
    np.save(folder / "ids.npy", np.asarray(words.ids, dtype=np.uint16))
    (folder / "vocab.json").write_text(words.vocab.to_json(), encoding="utf-8")
    return {"corpus": path.name, "tokens": int(len(words.ids)), "vocab": len(words.vocab), "chars": words.scan.n_chars}


def timed_windows(step, words_per_step: int, windows: int, seconds: float) -> list[float]:
    """Words per second of ``step(k)`` (k = 0, 1, …) in ``windows`` windows of at least ``seconds`` and two steps."""
    rates, k = [], 0
    for _ in range(windows):
        n, t0 = 0, time.perf_counter()
        while True:
            step(k)
            k, n = k + 1, n + 1
            dt = time.perf_counter() - t0
            if dt >= seconds and n >= 2:
                break
        rates.append(n * words_per_step / dt)
    return rates


def sample_windows(draw, words: int) -> list[float]:
    """Words per second of ``draw(n)`` (an iterator of n words): a warm-up, then SAMPLE_WINDOWS windows."""
    for _ in draw(SAMPLE_WARMUP):
        pass
    rates = []
    for _ in range(SAMPLE_WINDOWS):
        t0 = time.perf_counter()
        for _ in draw(words):
            pass
        rates.append(words / (time.perf_counter() - t0))
    return rates


# --------------------------------------------------------------------------- #
# One side, in its own process: --side charlm | pytorch
# --------------------------------------------------------------------------- #


def charlm_side(folder: Path, measure: str, windows: int, seconds: float, words: int) -> dict:
    import numpy as np

    from charlm.config import ModelConfig, SampleConfig
    from charlm.data import BatchStream
    from charlm.model import CharModel
    from charlm.optim import Adam, clip_grad_norm_
    from charlm.parallel import DataParallel, default_workers
    from charlm.sample import Sampler
    from charlm.throughput import peak_rss_mb
    from charlm.wordvocab import WordVocab

    vocab = WordVocab.from_json((folder / "vocab.json").read_text(encoding="utf-8"))
    config = ModelConfig(len(vocab), "lstm", SIZES["embed"], SIZES["hidden"], SIZES["layers"], dropout=0.0)
    model = CharModel(config, seed=0)
    B, T = SIZES["batch"], SIZES["seq_len"]
    if measure == "sample":
        sampler = Sampler(model, vocab, SampleConfig(temperature=1.0, seed=0))
        return {"rates": sample_windows(lambda n: sampler.generate(n), words), "peak_rss_mb": peak_rss_mb()}
    stream = BatchStream(np.load(folder / "ids.npy"), B, T)
    opt = Adam(model.num_params)
    stepper = DataParallel(model, default_workers(B))
    state = model.zero_state(B)

    def step(k: int) -> None:
        nonlocal state
        x, y = stream.batch(k % stream.steps_per_epoch)
        _, state = stepper.loss_and_grads(x, y, state)
        clip_grad_norm_(model.grad_flat, 5.0)
        opt.step(model.flat, model.grad_flat, 1e-3, run=stepper.run_all)

    for k in range(3):  # warm-up: workspaces, BLAS threads, caches
        step(k)
    rates = timed_windows(lambda k: step(k + 3), B * T, windows, seconds)
    workers_mb = stepper.workers_peak_rss_mb()
    stepper.close()
    return {"rates": rates, "peak_rss_mb": peak_rss_mb() + workers_mb, "workers": stepper.workers}


def pytorch_side(folder: Path, measure: str, windows: int, seconds: float, words: int) -> dict:
    import numpy as np
    from benchlib import import_torch
    from torch_peer import BenchConfig, build_model, detach_state, peak_rss_mb

    torch = import_torch()
    import torch.nn.functional as F

    V = len(json.loads((folder / "vocab.json").read_text(encoding="utf-8"))["words"]) + 2
    B, T = SIZES["batch"], SIZES["seq_len"]
    cfg = BenchConfig("lstm", SIZES["layers"], SIZES["hidden"], SIZES["embed"], B, T, V)
    model = build_model(cfg)
    if measure == "sample":
        model.eval()
        g = torch.Generator().manual_seed(0)
        x, state = torch.zeros(1, 1, dtype=torch.long), None

        def draw(n: int):
            nonlocal x, state
            for _ in range(n):
                a, state = model.rnn(model.embedding(x), state)  # (1, 1, H)
                probs = torch.softmax(model.decoder(a[0]), dim=-1)  # (1, V)
                x = torch.multinomial(probs, 1, generator=g)  # (1, 1)
                yield x.item()

        with torch.inference_mode():
            rates = sample_windows(draw, words)
        return {"rates": rates, "peak_rss_mb": peak_rss_mb()}
    ids = torch.from_numpy(np.load(folder / "ids.npy").astype(np.int64))  # the same token ids as charlm's
    L = (len(ids) - 1) // B
    data = ids[: B * L].reshape(B, L).t().contiguous()  # (L, B): row b is the b-th contiguous stream
    targets = ids[1 : B * L + 1].reshape(B, L).t().contiguous()
    steps_per_epoch = L // T
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    state = None

    def step(k: int) -> None:
        nonlocal state
        s = (k % steps_per_epoch) * T
        logits, state = model(data[s : s + T], state)  # (T, B, V)
        loss = F.cross_entropy(logits.reshape(T * B, V), targets[s : s + T].reshape(T * B))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        state = detach_state(state)

    for k in range(3):
        step(k)
    rates = timed_windows(lambda k: step(k + 3), B * T, windows, seconds)
    return {"rates": rates, "peak_rss_mb": peak_rss_mb(), "torch_threads": torch.get_num_threads()}


# --------------------------------------------------------------------------- #
# The comparison
# --------------------------------------------------------------------------- #


def run_side(python: Path, side: str, folder: Path, measure: str, args) -> dict:
    cmd = [str(python), str(Path(__file__).resolve()), "--side", side, "--tokens", str(folder), "--measure", measure]
    cmd += ["--windows", str(args.windows), "--window-seconds", str(args.window_seconds)]
    cmd += ["--sample-words", str(args.sample_words)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=user_env(NO_COLOR="1"))
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        raise BenchError(f"the {side} side ({measure}) failed: {lines[-1].strip() if lines else 'no message'}")
    result = json.loads(proc.stdout)
    result["median"] = statistics.median(result["rates"])
    return result


def summarize(measure: str, runs: dict[str, list[dict]]) -> dict:
    key = "peak_rss_mb" if measure == "rss" else "median"
    source = "train" if measure == "rss" else measure
    vals = {side: [r[key] for r in runs[side][source]] for side in ("charlm", "pytorch")}
    med = {side: statistics.median(v) for side, v in vals.items()}
    pairs = [c / p for c, p in zip(vals["charlm"], vals["pytorch"], strict=True)]
    ratio = med["charlm"] / med["pytorch"]
    op, goal = GOALS[measure]
    met = {"≥": ratio >= goal, ">": ratio > goal, "≤": ratio <= goal}[op]
    return {"measure": measure, "charlm": vals["charlm"], "pytorch": vals["pytorch"], "charlm_median": med["charlm"],
            "pytorch_median": med["pytorch"], "ratio": ratio, "pair_min": min(pairs), "pair_max": max(pairs),
            "goal": f"{op} {goal:g}×", "met": met}  # fmt: skip


def render(summaries: list[dict], tokens: dict, command: str, args, started: datetime, load: tuple) -> str:
    label = {
        "train": "training, words/s",
        "sample": "sampling at batch 1, words/s",
        "rss": "peak RSS while training, MB",
    }
    lines = [
        f"## {TITLE}",
        "",
        f"Measured by `benchmarks/word_compare.py` on {started:%Y-%m-%d %H:%M} UTC: charlm's word model against a "
        "PyTorch word language model with the sizes of PyTorch's word_language_model example (2-layer LSTM, "
        f"200 hidden, embedding 200, batch 20, bptt 35), both on the same {tokens['tokens']:,} token ids of "
        f"{tokens['corpus']} (charlm's tokenizer, a vocabulary of {tokens['vocab']:,} with <EOS> and <UNK>). "
        f"{args.pairs} alternating pair{'s' * (args.pairs > 1)} per measure; ratios are charlm ÷ PyTorch of the "
        "medians, the range the smallest and largest ratio within one pair.",
        "",
        *command_block(command),
        f"- {nproc()} CPUs; {cpu_model()}; load average (1 min) at the start and the end: {load[0]:.2f}, {load[1]:.2f}",
        f"- Thread environment variables: {', '.join(f'{k}={v}' for k, v in thread_env().items()) or 'none set'}",
        f"- charlm: {blas_line()}; PyTorch {torch_version()}, its default threads, oneDNN on, eager mode",
        pins_line(),
        "",
        "| measure | charlm | PyTorch | ratio | per-pair range | goal | met |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for s in summaries:
        lines.append(
            f"| {label[s['measure']]} | {fmt_rate(s['charlm_median'])} | {fmt_rate(s['pytorch_median'])} | "
            f"{fmt_ratio(s['ratio'])} | {s['pair_min']:.2f}–{s['pair_max']:.2f} | {s['goal']} | "
            f"{'**yes**' if s['met'] else '**no**'} |"
        )
    return "\n".join(lines) + "\n"


def torch_version() -> str:
    """The installed PyTorch's version, without importing it."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("torch")
    except PackageNotFoundError:
        return "(not installed)"


def compare(args) -> None:
    run_as_user()
    command = user_command("benchmarks/word_compare.py", args.argv)
    started, load_start = datetime.now(UTC), os.getloadavg()[0]
    measures = ["train", *(["sample"] if args.sample else [])]
    runs: dict[str, dict[str, list[dict]]] = {"charlm": {m: [] for m in measures}, "pytorch": {m: [] for m in measures}}
    with tempfile.TemporaryDirectory(prefix="charlm-words-") as tmp:
        folder = Path(tmp)
        print(f"tokenizing {args.corpus} with charlm's tokenizer …", file=sys.stderr)
        tokens = prepare_tokens(args.corpus, args.vocab_size, folder)
        total, done, t0 = len(measures) * args.pairs * 2, 0, time.perf_counter()
        try:
            for measure in measures:
                for pair in range(args.pairs):
                    for side in ("charlm", "pytorch"):
                        r = run_side(args.python, side, folder, measure, args)
                        runs[side][measure].append(r)
                        done += 1
                        print(f"[{done}/{total}] {measure:<6} pair {pair + 1} {side:<8} {fmt_rate(r['median']):>9} "
                              f"words/s  peak RSS {r['peak_rss_mb']:.0f} MB  ({time.perf_counter() - t0:.0f} s)",
                              file=sys.stderr, flush=True)  # fmt: skip
        except BenchError as e:
            fail(f"{e}. Nothing was written")
    summaries = [summarize(m, runs) for m in [*measures, "rss"]]
    load = (load_start, os.getloadavg()[0])
    section = render(summaries, tokens, command, args, started, load)
    record = {"command": command, "date": started.isoformat(timespec="seconds"), "tokens": tokens,
              "sizes": SIZES, "summaries": summaries, "runs": runs}  # fmt: skip
    write_atomic(args.json_out, portable(json.dumps(record, indent=1)) + "\n")
    replace_section(args.out, TITLE, section, "# charlm vs PyTorch: benchmark results\n\n")
    for s in summaries:
        print(f"{s['measure']:<7} charlm {fmt_rate(s['charlm_median']):>9}, PyTorch {fmt_rate(s['pytorch_median']):>9}: "
              f"{fmt_ratio(s['ratio'])} (goal {s['goal']}: {'met' if s['met'] else 'not met'})")  # fmt: skip
    print(f"wrote the section '{TITLE}' of {args.out} and {args.json_out}")


def parse_args(argv: list[str] | None = None):
    p = Parser(
        prog="word_compare.py",
        description="charlm's word model against a PyTorch word LM (word_language_model's sizes) on the same "
        "token ids: training and sampling words/s, peak RSS.",
    )
    p.add_argument("--corpus", default="news", help="Shipped corpus name or text file to take the tokens from.")
    p.add_argument("--vocab-size", type=bounded(int, 1, 65534), default=10_000, help="Words kept (plus <EOS>, <UNK>).")
    p.add_argument(
        "--pairs", type=bounded(int, 1, 100), default=3, help="Alternating charlm/PyTorch pairs per measure."
    )
    p.add_argument("--windows", type=bounded(int, 1, 100), default=5, help="Timed training windows per run.")
    p.add_argument("--window-seconds", type=bounded(float, 0.01), default=2.0, help="Minimum seconds per window.")
    p.add_argument("--sample-words", type=bounded(int, 1), default=1000, help="Words per sampling window.")
    p.add_argument("--sample", action=argparse.BooleanOptionalAction, default=True, help="Measure sampling.")
    p.add_argument("--python", type=Path, default=Path(sys.executable), help="Interpreter for both sides.")
    p.add_argument("--out", type=Path, default=RESULTS_MD, help="Markdown report whose section is replaced.")
    p.add_argument("--json", dest="json_out", type=Path, default=argparse.SUPPRESS,
                   help="Raw results. (default: word_compare.json next to --out)")  # fmt: skip
    p.add_argument("--side", choices=("charlm", "pytorch"), help=argparse.SUPPRESS)  # one side, in its own process
    p.add_argument("--tokens", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--measure", choices=("train", "sample"), default="train", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    if "json_out" not in args:
        args.json_out = args.out.with_name("word_compare.json")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.side is None:
        compare(args)
        return
    side = charlm_side if args.side == "charlm" else pytorch_side
    result = side(args.tokens, args.measure, args.windows, args.window_seconds, args.sample_words)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
