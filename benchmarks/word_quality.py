"""Word-model quality at equal wall-clock time on news: charlm against a PyTorch word language model.

Issue 20's quality comparison. Every side reads charlm's own token ids of the corpus (charlm.words,
charlm.wordvocab: a 10,000-word vocabulary with <EOS> and <UNK>); the last 10% of the tokens are held
out, and each side trains for ``--seconds`` of wall-clock time (its validations included), one after
the other:

    charlm     ``charlm train news --unit word`` with the word model's defaults, --minutes = seconds / 60
    SGD peer   PyTorch's word_language_model example, as its main.py trains it: Embedding(V, 200) →
               dropout → 2-layer LSTM(200) with dropout between → dropout → Linear(200, V), embedding and
               decoder weights U(−0.1, 0.1); batch 20 contiguous columns read 35 tokens at a time, state
               carried within an epoch; plain SGD, lr 20, gradient norm clipped to 0.25, dropout 0.2,
               the lr divided by 4 after every epoch whose validation is not better than the best
    Adam peer  the same model and batches with charlm train's recipe: Adam, lr 3e-3, 50 warm-up steps,
               cosine decay to 10% over the time budget, clipped to 5
    unigram    token counts of the training ids, add-one smoothing
    bigram     interpolated Kneser–Ney over the training ids (discount 0.75; its continuation
               unigram add-one smoothed, so no token has probability 0)

The peers validate after every epoch on the whole held-out tail (charlm's rows, score_peer.score_rows),
and keep their best weights. Then every model is scored on one held-out text: the tail of the corpus
from the first line start that lies inside both the word model's held-out tokens and the character
model's held-out 10% of the characters, checked to read as the same tokens. On it the shipped character
model (``charlm perplexity -m news``) gives bits/char, and each word model gives nats/word, perplexity
and its total log-loss per character of that text (which flatters it: every unknown word costs only
<UNK>'s probability, see the README). The section "Word model quality" of benchmarks/RESULTS.md is
replaced (the other sections are kept) and every figure and history goes to benchmarks/word_quality.json.

    python benchmarks/word_quality.py                       # 600 s per trained side, about 33 minutes
    python benchmarks/word_quality.py --seconds 20 --out /tmp/W.md
"""

from __future__ import annotations

import io
import json
import math
import os
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
    nproc,
    pins_line,
    portable,
    replace_section,
    require_torch_and_charlm,
    run_as_user,
    user_command,
    user_env,
    write_atomic,
)

SECTION = "Word model quality"
VOCAB, VAL_FRAC = 10_000, 0.1
PEER = {"layers": 2, "hidden": 200, "embed": 200, "batch": 20, "seq_len": 35, "dropout": 0.2}  # the example's
SGD_LR, SGD_CLIP, ANNEAL = 20.0, 0.25, 4.0  # the example's recipe
ADAM_LR, WARMUP, FINAL_LR_FRAC, ADAM_CLIP = 3e-3, 50, 0.1, 5.0  # charlm train's recipe
KN_DISCOUNT = 0.75


# --------------------------------------------------------------------------- #
# The tokens and the held-out text
# --------------------------------------------------------------------------- #


def load_tokens(corpus: str):
    """(path, WordCorpus, text): charlm's word corpus of ``corpus`` and its text as training reads it."""
    from charlm.config import TrainConfig, WordConfig
    from charlm.corpora import resolve
    from charlm.corpus import form_of
    from charlm.text import read_text
    from charlm.wordcorpus import load_word_corpus

    path, _ = resolve(corpus)
    config = TrainConfig(val_frac=VAL_FRAC)
    return path, load_word_corpus(path, config, WordConfig(VOCAB)), read_text(path, form=form_of(config))


def heldout_text(words, text: str) -> str:
    """The tail of ``text`` from the first line start inside both held-out parts (the last VAL_FRAC of the
    characters and of the tokens) whose tokens are exactly the last tokens of the corpus after an <EOS>."""
    import numpy as np

    from charlm.data import split_text
    from charlm.wordcorpus import encode_word_stream
    from charlm.wordvocab import EOS_ID

    start = len(split_text(text, VAL_FRAC)[0])
    ids = np.asarray(words.ids)
    while (start := text.find("\n", start) + 1) > 0:
        tail = encode_word_stream(io.BytesIO(text[start:].encode("utf-8")), words.vocab, "<held-out>").ids
        n = len(tail) - 1
        if n <= words.n_val and ids[-n - 1] == EOS_ID and np.array_equal(ids[-n:], tail[1:]):
            return text[start:]
    raise BenchError("found no line start in the held-out tail that reads as the corpus's last tokens")


# --------------------------------------------------------------------------- #
# Baselines
# --------------------------------------------------------------------------- #


def unigram_nats(train, ids, V: int) -> float:
    """Total −ln p of ids[1:] under add-one smoothed unigram counts of ``train``."""
    import numpy as np

    c = np.bincount(np.asarray(train, np.int64), minlength=V)
    return float(-np.log((c[np.asarray(ids[1:], np.int64)] + 1) / (c.sum() + V)).sum())


def bigram_nats(train, ids, V: int, d: float = KN_DISCOUNT) -> float:
    """Total −ln p of ids[1:] under an interpolated Kneser–Ney bigram model of ``train``:
    p(w | v) = max(c(v,w) − d, 0) / c(v) + d · N1+(v•) / c(v) · p_cont(w), p_cont(w) ∝ N1+(•w) + 1
    (p_cont(w) alone for a v never seen as a context)."""
    import numpy as np

    t = np.asarray(train, np.int64)
    pairs, counts = np.unique(t[:-1] * V + t[1:], return_counts=True)
    c_v = np.bincount(t[:-1], minlength=V)  # c(v)
    n1_after = np.bincount(pairs // V, minlength=V)  # N1+(v•): distinct followers of v
    p_cont = (np.bincount(pairs % V, minlength=V) + 1) / (len(pairs) + V)  # N1+(•w), add-one
    q = np.asarray(ids, np.int64)
    v, w = q[:-1], q[1:]
    at = np.minimum(np.searchsorted(pairs, v * V + w), len(pairs) - 1)
    c_vw = np.where(pairs[at] == v * V + w, counts[at], 0)
    seen = c_v[v] > 0
    p = np.where(
        seen, (np.maximum(c_vw - d, 0) + d * n1_after[v] * p_cont[w]) / np.maximum(c_v[v], 1), p_cont[w]
    )  # fmt: skip
    return float(-np.log(p).sum())


# --------------------------------------------------------------------------- #
# charlm's side: its console script
# --------------------------------------------------------------------------- #


def charlm_script(python: Path) -> Path:
    charlm = python.parent / "charlm"
    if not charlm.is_file():
        raise BenchError(f"no 'charlm' console script next to {python}: install charlm there (pip install -e .)")
    return charlm


def run_charlm(python: Path, corpus: str, seconds: float, seed: int, folder: Path) -> dict:
    """``charlm train --unit word`` with the word model's defaults for ``seconds``; its metrics.jsonl."""
    cmd = [str(charlm_script(python)), "train", corpus, "--unit", "word", "--minutes", repr(seconds / 60.0),
           "--seed", str(seed), "--out", str(folder), "--name", "words"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=user_env(NO_COLOR="1"))
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        raise BenchError(f"charlm train failed: {lines[-1] if lines else 'no message'}")
    history = [json.loads(ln) for ln in (folder / "words" / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    validations = [r for r in history if "val_loss" in r]
    return {
        "command": " ".join(["charlm", *cmd[1:]]).replace(str(folder), "<tmpdir>"),
        "best_val": history[-1]["best_val_loss"],
        "best_step": history[-1]["best_step"],
        "steps": validations[-1]["step"],
        "tokens": validations[-1]["chars"],
        "elapsed": validations[-1]["elapsed"],
        "history": history,
        "checkpoint": folder / "words" / "best.safetensors",
    }


def charlm_defaults() -> str:
    """The word model's default sizes, as the report names them."""
    from charlm.config import WORD_DEFAULTS as d

    return (f"2×{d['hidden']} LSTM, E {d['embed']}, dropout {d['dropout']:g}, batch {d['batch_size']}, "
            f"T {d['seq_len']}, Adam lr 3e-3 with warm-up and cosine decay over the budget")  # fmt: skip


def charlm_perplexity(python: Path, model: str, file: Path) -> dict:
    """``charlm perplexity -m MODEL FILE --json``."""
    cmd = [str(charlm_script(python)), "perplexity", "-m", model, str(file), "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=user_env(NO_COLOR="1"))
    if proc.returncode != 0:
        raise BenchError(f"charlm perplexity -m {model} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout)


# --------------------------------------------------------------------------- #
# The PyTorch peer: word_language_model's RNNModel and main.py's loop
# --------------------------------------------------------------------------- #


def build_peer(V: int, seed: int):
    import torch
    from torch import nn

    class RNNModel(nn.Module):  # word_language_model/model.py, LSTM
        def __init__(self) -> None:
            super().__init__()
            E, H, N, p = PEER["embed"], PEER["hidden"], PEER["layers"], PEER["dropout"]
            self.drop = nn.Dropout(p)
            self.encoder = nn.Embedding(V, E)
            self.rnn = nn.LSTM(E, H, N, dropout=p)
            self.decoder = nn.Linear(H, V)
            nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
            nn.init.zeros_(self.decoder.bias)
            nn.init.uniform_(self.decoder.weight, -0.1, 0.1)

        def forward(self, x, state=None):
            a, state = self.rnn(self.drop(self.encoder(x)), state)  # (T, B, H)
            return self.decoder(self.drop(a)), state  # (T, B, V)

    torch.manual_seed(seed)
    return RNNModel()


def train_peer(recipe: str, train, val, V: int, seconds: float, seed: int) -> tuple[dict, dict]:
    """Train the peer with ``recipe`` ("sgd" or "adam") for ``seconds``: (result, best weights)."""
    import copy

    import numpy as np
    import torch
    import torch.nn.functional as F
    from score_peer import score_rows
    from torch_peer import detach_state

    from charlm.optim import timed_learning_rate

    B, T = PEER["batch"], PEER["seq_len"]
    t = torch.from_numpy(np.asarray(train, np.int64))
    columns = t[: len(t) // B * B].view(B, -1).t().contiguous()  # (L, B): main.py's batchify
    model = build_peer(V, seed)
    opt = torch.optim.Adam(model.parameters(), lr=ADAM_LR) if recipe == "adam" else None
    lr, best, best_state, step, epoch, history = SGD_LR, math.inf, None, 0, 0, []
    t0 = time.perf_counter()
    over = lambda: time.perf_counter() - t0 >= seconds  # noqa: E731
    while not over():
        model.train()
        state, total, n = None, 0.0, 0
        for i in range(0, len(columns) - 1, T):
            if over():
                break
            n_t = min(T, len(columns) - 1 - i)  # main.py's get_batch: the last chunk may be shorter
            x, y = columns[i : i + n_t], columns[i + 1 : i + 1 + n_t]  # (n_t, B) each
            logits, state = model(x, state)
            loss = F.cross_entropy(logits.reshape(-1, V), y.reshape(-1))
            model.zero_grad(set_to_none=True)
            loss.backward()
            if opt is None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), SGD_CLIP)
                with torch.no_grad():
                    for p in model.parameters():
                        p.add_(p.grad, alpha=-lr)
            else:
                torch.nn.utils.clip_grad_norm_(model.parameters(), ADAM_CLIP)
                elapsed = time.perf_counter() - t0
                for group in opt.param_groups:
                    group["lr"] = timed_learning_rate(step, elapsed / seconds, ADAM_LR, WARMUP, FINAL_LR_FRAC)
                opt.step()
            state = detach_state(state)
            step, total, n = step + 1, total + loss.item(), n + 1
        epoch += 1
        nats, count = score_rows(model, val)
        v = nats / count
        history.append({"epoch": epoch, "step": step, "train_loss": round(total / max(n, 1), 6), "val_loss": round(v, 6),
                        "lr": lr if opt is None else opt.param_groups[0]["lr"],
                        "elapsed": round(time.perf_counter() - t0, 2)})  # fmt: skip
        print(f"  {recipe}: epoch {epoch} step {step:,} train {total / max(n, 1):.4f} val {v:.4f} "
              f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)  # fmt: skip
        if v < best:
            best, best_state = v, copy.deepcopy(model.state_dict())
        elif opt is None:
            lr /= ANNEAL
    model.load_state_dict(best_state)
    result = {"recipe": recipe, "best_val": round(best, 6), "steps": step, "tokens": step * B * T,
              "steps_per_epoch": math.ceil((len(columns) - 1) / T),
              "elapsed": history[-1]["elapsed"], "history": history, "torch_threads": torch.get_num_threads()}  # fmt: skip
    return result, model


def peer_nats(model, ids) -> float:
    from score_peer import score_rows

    return score_rows(model, ids)[0]


# --------------------------------------------------------------------------- #
# Report
# --------------------------------------------------------------------------- #


def render(r: dict, command: str, started: datetime, load: tuple[float, float]) -> str:
    h = r["heldout"]
    ln2 = math.log(2)

    def row(name: str, training: str, nats: float) -> str:
        return (f"| {name} | {training} | {nats / h['tokens']:.4f} | {math.exp(nats / h['tokens']):,.1f} | "
                f"{nats / h['chars'] / ln2:.4f} |")  # fmt: skip

    c, sgd, adam = r["charlm"], r["sgd"], r["adam"]
    best_peer = min((sgd, adam), key=lambda p: p["heldout_nats"])
    char = r["char_model"]
    lines = [
        f"## {SECTION}",
        "",
        f"Measured by `benchmarks/word_quality.py` on {started:%Y-%m-%d %H:%M} UTC: {r['seconds']:g} s of "
        f"wall-clock training per side (validations included) on `{r['corpus']}`, one after the other, all on "
        f"charlm's {r['tokens']:,} token ids (vocabulary {r['vocab']:,} with <EOS> and <UNK>; the last 10% held "
        f"out). Every row is scored on the same held-out text: the corpus's last {h['chars']:,} characters "
        f"({h['tokens']:,} tokens, OOV rate {h['oov_rate']:.2%}), held out from every model here. Per character: "
        "the model's total log-loss over that text's characters; for a word model it flatters (see the README: "
        "every unknown word costs only <UNK>'s probability).",
        "",
        "| model | training | nats/word | perplexity | bits/char |",
        "| --- | --- | ---: | ---: | ---: |",
        row(
            "charlm word model, its defaults",
            f"{c['steps']:,} steps ({c['history'][-2]['epoch']:.1f} epochs)",
            c["heldout_nats"],
        ),
        row(
            "PyTorch peer, the example's SGD recipe",
            f"{sgd['steps']:,} steps ({sgd['steps'] / sgd['steps_per_epoch']:.1f} epochs)",
            sgd["heldout_nats"],
        ),
        row(
            "PyTorch peer, Adam (charlm's recipe)",
            f"{adam['steps']:,} steps ({adam['steps'] / adam['steps_per_epoch']:.1f} epochs)",
            adam["heldout_nats"],
        ),
        row("bigram, interpolated Kneser–Ney (d = 0.75)", "counts of the training tokens", r["bigram_nats"]),
        row("unigram, add-one", "counts of the training tokens", r["unigram_nats"]),
        row("shipped character model `news`", "2×512 LSTM, 7 epochs (see the README)", char["nats_total"]),
        "",
        f"Goal: charlm no worse per word than the peer with its better recipe ({best_peer['recipe'].replace('sgd', 'SGD').replace('adam', 'Adam')}): "
        f"{'**met**' if c['heldout_nats'] <= best_peer['heldout_nats'] else '**not met**'} "
        f"({(c['heldout_nats'] - best_peer['heldout_nats']) / h['tokens']:+.4f} nats/word). charlm's own "
        f"validation at the end of its run (best weights, all {c['history'][-1]['val_chars']:,} held-out "
        f"tokens): {c['best_val']:.4f} nats/word. The character model's nats/word is its total over the "
        "text divided by the tokens.",
        "",
        f"- charlm: `{c['command']}` ({c['model']})",
        f"- PyTorch peer: word_language_model's RNNModel (2×{PEER['hidden']} LSTM, embedding {PEER['embed']}, "
        f"dropout {PEER['dropout']:g}, batch {PEER['batch']}, bptt {PEER['seq_len']}), its main.py loop; SGD: lr "
        f"{SGD_LR:g}, clip {SGD_CLIP:g}, lr ÷ {ANNEAL:g} after an epoch without a better validation; Adam: lr "
        f"{ADAM_LR:g}, {WARMUP} warm-up steps, cosine to {FINAL_LR_FRAC:.0%} over the budget, clip {ADAM_CLIP:g}; "
        f"PyTorch {r['torch']}, {sgd['torch_threads']} threads, eager mode",
        f"- {nproc()} CPUs; {cpu_model()}; load average (1 min) at the start and the end: {load[0]:.2f}, {load[1]:.2f}",
        f"- charlm: {r['blas']}",
        pins_line(),
        "",
        *command_block(command),
        "Histories: `word_quality.json` next to this file. Earlier runs: [HISTORY.md](HISTORY.md).",
    ]
    return "\n".join(lines) + "\n"


def measure(args) -> dict:
    import numpy as np
    import torch

    from charlm.wordcorpus import encode_word_stream

    path, words, text = load_tokens(args.corpus)
    V = len(words.vocab)
    train, val = np.asarray(words.train_ids), np.asarray(words.val_ids)
    tail = heldout_text(words, text)
    held = encode_word_stream(io.BytesIO(tail.encode("utf-8")), words.vocab, "<held-out>")
    r = {"corpus": path.name, "seconds": args.seconds, "tokens": len(words.ids), "vocab": V,
         "torch": torch.__version__, "blas": blas_line(),
         "heldout": {"chars": held.chars, "tokens": held.tokens, "oov_rate": held.unknown_count / held.tokens},
         "unigram_nats": unigram_nats(train, held.ids, V), "bigram_nats": bigram_nats(train, held.ids, V)}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="charlm-word-quality-") as tmp:
        folder = Path(tmp)
        (folder / "heldout.txt").write_text(tail, encoding="utf-8")
        print(f"charlm: training for {args.seconds:g} s …", file=sys.stderr, flush=True)
        c = run_charlm(args.python, args.corpus, args.seconds, args.seed, folder)
        p = charlm_perplexity(args.python, str(c.pop("checkpoint")), folder / "heldout.txt")
        if p["tokens"] != held.tokens or p["chars"] != held.chars:
            raise BenchError(f"charlm perplexity read {p['tokens']} tokens, {p['chars']} characters, not {held.tokens}")
        c["heldout_nats"], c["model"] = p["nats_per_word"] * p["tokens"], charlm_defaults()
        c["perplexity"] = {**p, "checkpoint": p["checkpoint"].replace(str(folder), "<tmpdir>")}
        char = charlm_perplexity(args.python, "news", folder / "heldout.txt")
        char["nats_total"] = char["nats_per_char"] * held.chars  # per character of the same text
        r["charlm"], r["char_model"] = c, char
    for recipe in ("sgd", "adam"):
        print(f"PyTorch peer ({recipe}): training for {args.seconds:g} s …", file=sys.stderr, flush=True)
        res, model = train_peer(recipe, train, val, V, args.seconds, args.seed)
        res["heldout_nats"] = peer_nats(model, held.ids)
        r[recipe] = res
    return r


def parse_args(argv: list[str] | None = None):
    p = Parser(prog="word_quality.py", description="charlm's word model against a PyTorch word LM at equal "
               "wall-clock time on the same tokens, with unigram/bigram baselines and the character model.")  # fmt: skip
    p.add_argument("--seconds", type=bounded(float, 0.0, strict_low=True), default=600.0, help="Budget per side.")
    p.add_argument("--corpus", default="news", help="Shipped corpus name or text file.")
    p.add_argument("--seed", type=bounded(int, 0), default=0, help="Random seed of every side.")
    p.add_argument("--python", type=Path, default=Path(sys.executable), help="Interpreter whose 'charlm' trains.")
    p.add_argument("--out", type=Path, default=RESULTS_MD, help="Markdown report whose section is replaced.")
    p.add_argument("--json", dest="json_out", type=Path, default=None,
                   help="Figures and histories. (default: word_quality.json next to --out)")  # fmt: skip
    args = p.parse_args(argv)
    args.json_out = args.json_out or args.out.with_name("word_quality.json")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    run_as_user()
    require_torch_and_charlm()
    command = user_command("benchmarks/word_quality.py", argv)
    started, load_start = datetime.now(UTC), os.getloadavg()[0]
    try:
        r = measure(args)
    except BenchError as e:
        fail(f"{e}. Nothing was written")
    except KeyboardInterrupt:
        fail("interrupted; nothing was written", 130)
    load = (load_start, os.getloadavg()[0])
    r.update(command=command, date=started.isoformat(timespec="seconds"), load=load)
    replace_section(args.out, SECTION, render(r, command, started, load), "# charlm vs PyTorch: benchmark results\n\n")
    write_atomic(args.json_out, portable(json.dumps(r, indent=1, default=str)) + "\n")
    h = r["heldout"]
    for name, nats in (("charlm", r["charlm"]["heldout_nats"]), ("PyTorch SGD", r["sgd"]["heldout_nats"]),
                       ("PyTorch Adam", r["adam"]["heldout_nats"]), ("bigram KN", r["bigram_nats"]),
                       ("unigram", r["unigram_nats"]), ("char model", r["char_model"]["nats_total"])):  # fmt: skip
        print(f"{name:<13} {nats / h['tokens']:.4f} nats/word  ppl {math.exp(nats / h['tokens']):8.1f}  "
              f"{nats / h['chars'] / math.log(2):.4f} bits/char")  # fmt: skip
    print(f"wrote the section '{SECTION}' of {args.out} and {args.json_out}")


if __name__ == "__main__":
    main()
