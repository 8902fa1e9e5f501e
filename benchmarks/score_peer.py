"""The PyTorch peer of ``charlm perplexity``: the same weights, the same streams, the same warm-up.

A charlm checkpoint is a safetensors file whose tensors are named and laid out like the state dict of
nn.Embedding → nn.LSTM → nn.Linear: ``embedding.weight`` (V, E), ``rnn.weight_ih_l{k}`` (4H, D),
``rnn.weight_hh_l{k}`` (4H, H), ``rnn.bias_ih_l{k}`` and ``rnn.bias_hh_l{k}`` (4H,), ``decoder.weight`` (V, H),
``decoder.bias`` (V,), the LSTM's H-row gate blocks in nn.LSTM's order i, f, g, o (the notes' Γu, Γf, c̃, Γo;
see charlm/cells/base.py and charlm/cells/lstm.py). So they load into torch_peer.build_model's modules
unchanged; nn.RNN(tanh) likewise. The notes' GRU applies Γr before the recurrent product, nn.GRU after: refused.
float16 weights (shipped models) are read as float32, as charlm reads them.

The text is read as UTF-8 (a byte-order mark dropped), brought into the checkpoint's form (NFC, "\\r\\n" as
"\\n", as its corpus fingerprint records) and encoded with its vocabulary; characters outside it are dropped.

Scoring, charlm.evaluate's layout: N ids give n = N − 1 targets, scored in B = max(1, min(64, ⌊n/128⌋)) rows of
L = ⌊n/B⌋; row b predicts targets [bL, (b+1)L) with (a<t>, c<t>) carried, ``--steps`` time steps per forward
pass; before that, rows b ≥ 1 read the W = min(256, L) characters before their start, unscored (row 0 starts
from zeros); the n − BL leftover targets continue from the end of the last row. Under torch.inference_mode(),
oneDNN on (PyTorch's default), PyTorch's default thread count. ``--sequential`` adds one pass over the whole
text at batch 1 with the state carried: the reference the rows should match within 0.005 nats/char.

    python benchmarks/score_peer.py tail.txt --checkpoint runs/shakespeare/best.safetensors
    python benchmarks/score_peer.py tail.txt --checkpoint model.safetensors --sequential --json
"""

from __future__ import annotations

import json
import math
import time
import unicodedata
from pathlib import Path

from benchlib import Parser, bounded, fail, import_torch, run_as_user

EVAL_BATCH, EVAL_MIN_ROW, EVAL_WARMUP = 64, 128, 256  # as charlm.evaluate
CELLS = ("lstm", "rnn")  # cells whose tensors load into PyTorch's module unchanged


class PeerError(Exception):
    """A checkpoint or text the peer cannot score; the CLI prints it on one line."""


def read_checkpoint(path: Path) -> tuple[dict, str, dict, dict]:
    """(model config, vocabulary characters, corpus fingerprint, float32 weights) of a charlm checkpoint."""
    import numpy as np
    import safetensors
    from safetensors import safe_open

    unreadable = (OSError, ValueError, getattr(safetensors, "SafetensorError", ValueError))
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            if meta.get("format") != "charlm":
                raise PeerError(f"{path}: not a charlm checkpoint (no 'format: charlm' metadata)")
            names = [k for k in f.keys() if not k.startswith(("optimizer.", "state.", "warm."))]  # weights only
            weights = {k: np.asarray(f.get_tensor(k), dtype=np.float32) for k in names}
    except unreadable as e:  # missing file, not safetensors
        raise PeerError(f"{path}: cannot read it as safetensors ({e})") from None
    try:
        config = json.loads(meta["config"])
        vocab = "".join(map(chr, json.loads(meta["vocab"])))
        corpus = json.loads(meta.get("corpus") or "{}")
    except (KeyError, ValueError, TypeError):
        raise PeerError(f"{path}: its config or vocabulary metadata is missing or damaged") from None
    return config, vocab, corpus, weights


def build_peer(config: dict, weights: dict):
    """torch_peer's nn.Embedding → nn.LSTM/nn.RNN → nn.Linear holding the checkpoint's weights, in eval mode."""
    import torch
    from torch_peer import BenchConfig, build_model

    cell = config.get("cell", "lstm")
    if cell not in CELLS:
        raise PeerError(f"a {cell} checkpoint: the notes' GRU is not nn.GRU's; the peer scores {' and '.join(CELLS)}")
    cfg = BenchConfig(cell, config["layers"], config["hidden"], config["embed"], vocab=config["vocab_size"])
    model = build_model(cfg)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=True)
    return model.eval()


def encode(text: str, vocab: str, corpus: dict):
    """(ids (N,) int64, characters dropped): ``text`` in the checkpoint's form, unknown characters left out."""
    import numpy as np

    if corpus.get("crlf_as_lf"):
        text = text.replace("\r\n", "\n")
    if corpus.get("nfc"):
        text = unicodedata.normalize("NFC", text)
    index = {c: i for i, c in enumerate(vocab)}
    ids = [index[c] for c in text if c in index]
    return np.asarray(ids, dtype=np.int64), len(text) - len(ids)


def row_layout(n_targets: int, batch: int = EVAL_BATCH, min_row: int = EVAL_MIN_ROW) -> tuple[int, int]:
    """(B, L): rows and targets per row, as charlm.evaluate.row_layout."""
    B = max(1, min(batch, n_targets // min_row or 1))
    return B, n_targets // B


def score_rows(
    model, ids, batch: int = EVAL_BATCH, steps: int = 128, warmup: int = EVAL_WARMUP, row_limit: int | None = None
) -> tuple[float, int]:
    """(total nats, targets scored) of ids[1:] in charlm's rows (module docstring). With ``row_limit``,
    only the first ``row_limit`` targets of each row and no leftover (charlm.evaluate.score_sample)."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    n = len(ids) - 1
    if n <= 0:
        return 0.0, 0
    B, L = row_layout(n, batch)
    ids = np.asarray(ids, dtype=np.int64)
    rows_x = torch.from_numpy(ids[: B * L].reshape(B, L).T.copy())  # (L, B)
    rows_y = torch.from_numpy(ids[1 : B * L + 1].reshape(B, L).T.copy())  # (L, B)
    total, count, state = 0.0, 0, None

    def nats(x, y, state):
        logits, state = model(x, state)  # (T', B', V)
        per = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="none")
        return float(per.double().sum()), per.numel(), state

    was_training = model.training
    model.eval()
    with torch.inference_mode():
        W = min(warmup, L)
        if B > 1 and W > 0:  # rows b ≥ 1 read the W characters before their start; row 0 starts from zeros
            before = torch.from_numpy(np.stack([ids[b * L - W : b * L] for b in range(1, B)], axis=1))  # (W, B−1)
            state = None
            for s in range(0, W, steps):
                _, state = model(before[s : s + steps], state)
            zero = lambda part: torch.cat([torch.zeros_like(part[:, :1]), part], dim=1)  # noqa: E731
            state = tuple(map(zero, state)) if isinstance(state, tuple) else zero(state)
        end = L if row_limit is None else min(L, row_limit)
        for s in range(0, end, steps):
            e = min(end, s + steps)
            t, c, state = nats(rows_x[s:e], rows_y[s:e], state)
            total, count = total + t, count + c
        rest = n - B * L
        if rest and end == L:  # the last row goes on over the leftover targets
            last = lambda part: part[:, B - 1 : B].contiguous()  # noqa: E731
            state = tuple(map(last, state)) if isinstance(state, tuple) else last(state)
            for s in range(B * L, B * L + rest, steps):
                e = min(B * L + rest, s + steps)
                x = torch.from_numpy(ids[s:e].reshape(-1, 1).copy())
                y = torch.from_numpy(ids[s + 1 : e + 1].reshape(-1, 1).copy())
                t, c, state = nats(x, y, state)
                total, count = total + t, count + c
    model.train(was_training)
    return total, count


def score_sequential(model, ids, steps: int = 4096) -> tuple[float, int]:
    """(total nats, targets) of ids[1:] in one pass at batch 1, the state carried from chunk to chunk."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    ids = torch.from_numpy(np.asarray(ids, dtype=np.int64))
    total, state = 0.0, None
    with torch.inference_mode():
        for s in range(0, len(ids) - 1, steps):
            e = min(len(ids) - 1, s + steps)
            logits, state = model(ids[s:e].reshape(-1, 1), state)  # (T', 1, V)
            total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[s + 1 : e + 1], reduction="sum"))
    return total, max(0, len(ids) - 1)


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def run(text_path: Path, checkpoint: Path, batch: int, steps: int, sequential: bool) -> dict:
    """Load, encode, score in rows (timed), optionally score sequentially; every figure as a dict."""
    import torch

    t0 = time.perf_counter()
    config, vocab, corpus, weights = read_checkpoint(checkpoint)
    model = build_peer(config, weights)
    t1 = time.perf_counter()
    try:
        text = text_path.read_bytes().decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise PeerError(f"{text_path}: cannot read it as UTF-8 text ({e})") from None
    ids, unknown = encode(text, vocab, corpus)
    if len(ids) < 2:
        raise PeerError(f"{text_path}: fewer than two characters the model knows; nothing to score")
    t2 = time.perf_counter()
    nats, chars = score_rows(model, ids, batch, steps)
    t3 = time.perf_counter()
    result = {
        "tool": "pytorch",
        "checkpoint": str(checkpoint),
        "model": f"{config['layers']}×{config['hidden']} {config.get('cell', 'lstm').upper()}",
        "nats_per_char": nats / chars,
        "chars": chars,
        "unknown": unknown,
        "rows": row_layout(chars, batch)[0],
        "steps_per_pass": steps,
        "seconds": round(t3 - t2, 4),
        "load_seconds": round(t1 - t0, 4),
        "encode_seconds": round(t2 - t1, 4),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "mkldnn": bool(torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled),
    }
    if sequential:
        t4 = time.perf_counter()
        seq, n = score_sequential(model, ids)
        result["sequential"] = {"nats_per_char": seq / n, "chars": n, "seconds": round(time.perf_counter() - t4, 3)}
    result["peak_rss_mb"] = round(peak_rss_mb(), 1)
    return result


def parse_args(argv: list[str] | None = None):
    p = Parser(
        prog="score_peer.py",
        description="Score a text with a charlm checkpoint's weights in PyTorch, in charlm perplexity's rows "
        "(batch 64, same warm-up), under inference_mode with oneDNN on.",
    )
    p.add_argument("text", type=Path, help="UTF-8 text file to score.")
    p.add_argument("--checkpoint", "-c", type=Path, required=True, help="charlm checkpoint (.safetensors).")
    p.add_argument("--batch", type=bounded(int, 1, 4096), default=EVAL_BATCH, help="Rows scored in parallel.")
    p.add_argument("--steps", type=bounded(int, 1), default=128, help="Time steps per forward pass.")
    p.add_argument("--sequential", action="store_true", help="Also score the text in one pass at batch 1.")
    p.add_argument("--json", dest="as_json", action="store_true", help="Print every figure as JSON on stdout.")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    run_as_user()
    torch = import_torch()
    torch.backends.mkldnn.enabled = True  # PyTorch's default, said explicitly: the peer is defined with it on
    try:
        result = run(args.text, args.checkpoint, args.batch, args.steps, args.sequential)
    except PeerError as e:
        fail(str(e))
    if args.as_json:
        print(json.dumps(result, indent=1))
        return
    r = result
    print(
        f"{r['nats_per_char']:.4f} nats/char ({r['nats_per_char'] / math.log(2):.4f} bits/char) on {r['chars']:,} "
        f"characters in {r['rows']} rows: {r['seconds']:.2f} s scoring, {r['load_seconds']:.2f} s loading"
    )
    if "sequential" in r:
        s = r["sequential"]
        print(f"sequential pass (batch 1): {s['nats_per_char']:.4f} nats/char in {s['seconds']:.2f} s")


if __name__ == "__main__":
    main()
