"""nanoGPT's published CPU recipe for shakespeare_char, reproduced in PyTorch for a wall-clock budget.

The recipe is what nanoGPT's README runs on a CPU: config/train_shakespeare_char.py with --device=cpu
--compile=False --eval_iters=20 --log_interval=1 --block_size=64 --batch_size=12 --n_layer=4 --n_head=4
--n_embd=128 --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0, written anew here from nanoGPT's
model.py and train.py:

    model     GPT: token + position embeddings (block 64) → 4 pre-LayerNorm blocks (causal self-attention with
              4 heads of 32 through scaled_dot_product_attention, then an MLP 128 → 512 → 128 with exact GELU,
              each added to the residual stream) → LayerNorm → a linear head tied to the token embedding; no
              biases in the linears and LayerNorms (train.py's bias = False), dropout 0; weights N(0, 0.02),
              the two residual projections of each block N(0, 0.02/√(2·4))
    data      12 windows of 64 characters at random offsets of the training text (targets: the next characters),
              drawn with torch.randint from the generator the evaluation draws from too
    optimizer AdamW, betas (0.9, 0.99), weight decay 0.1 on the tensors of two or more dimensions only;
              gradients clipped to a global norm of 1.0
    schedule  lr·(it + 1)/101 over the first 100 iterations, then a cosine from 1e-3 to 1e-4 at lr_decay_iters,
              which is max_iters
    eval      every 250 iterations: the mean loss of 20 random batches of the training text and of the held-out
              text; the weights of the lowest held-out estimate are kept (always_save_checkpoint = False)

The iteration count is calibrated to the budget (--minutes, counted from this process's start as charlm
train's is): after 30 iterations, and again at every evaluation, max_iters = the iterations done + those that
fit in the time left at the mean iteration time since the last plan, the evaluations still due counted at
their measured cost; lr_decay_iters = max_iters, so the decay ends with the budget. The last iteration is
evaluated as well (nanoGPT evaluates only at multiples of 250). The seed is 1337 + --seed (nanoGPT's 1337).

Split and vocabulary are charlm's: the corpus read as charlm train reads it, the vocabulary its sorted
characters (as nanoGPT's prepare.py makes it), the last round(0.1·N) characters held out (prepare.py holds
out N − ⌊0.9·N⌋, at most one character more).

After the budget, outside it, the kept weights score the held-out tail's targets tail[1:] (the characters charlm
scores): "sliding" predicts each from the 64 characters before it (one window per target; for the first 63
the window reaches back into the training text), "blocks" is nanoGPT's own measure: non-overlapping
64-character blocks from the tail's start, the target at position k of a block seeing k + 1 characters.

    python benchmarks/nanogpt_peer.py --minutes 3 --seed 0 --json
"""

from __future__ import annotations

import copy
import json
import math
import sys
import time

from benchlib import fail, peer_args, require_torch_and_charlm, run_as_user

RECIPE = {
    "n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 64, "batch_size": 12, "dropout": 0.0, "bias": False,
    "learning_rate": 1e-3, "min_lr": 1e-4, "warmup_iters": 100, "weight_decay": 0.1, "beta1": 0.9, "beta2": 0.99,
    "grad_clip": 1.0, "eval_interval": 250, "eval_iters": 20,
}  # fmt: skip
VAL_FRAC = 0.1  # the held-out tail, as charlm's default split
PLAN_AFTER = 30  # iterations timed before the first plan
SCORE_WINDOWS = 256  # windows per forward pass when scoring the tail


def build_gpt(vocab: int, seed: int):
    """nanoGPT's GPT at RECIPE's size (module docstring), initialised as nanoGPT does."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    C, heads, block, layers = RECIPE["n_embd"], RECIPE["n_head"], RECIPE["block_size"], RECIPE["n_layer"]

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ln_1 = nn.LayerNorm(C, bias=False)
            self.qkv = nn.Linear(C, 3 * C, bias=False)
            self.attn_proj = nn.Linear(C, C, bias=False)
            self.ln_2 = nn.LayerNorm(C, bias=False)
            self.fc = nn.Linear(C, 4 * C, bias=False)
            self.mlp_proj = nn.Linear(4 * C, C, bias=False)

        def forward(self, x):  # (B, T, C)
            B, T, _ = x.shape
            q, k, v = self.qkv(self.ln_1(x)).split(C, dim=2)
            q, k, v = (t.view(B, T, heads, C // heads).transpose(1, 2) for t in (q, k, v))  # (B, h, T, C/h)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)
            x = x + self.attn_proj(y)
            return x + self.mlp_proj(F.gelu(self.fc(self.ln_2(x))))

    class GPT(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.wte = nn.Embedding(vocab, C)
            self.wpe = nn.Embedding(block, C)
            self.blocks = nn.ModuleList(Block() for _ in range(layers))
            self.ln_f = nn.LayerNorm(C, bias=False)
            self.head = nn.Linear(C, vocab, bias=False)
            self.head.weight = self.wte.weight  # weight tying

        def hidden(self, idx):  # (B, T) → (B, T, C) after the last LayerNorm
            x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
            for b in self.blocks:
                x = b(x)
            return self.ln_f(x)

        def forward(self, idx):  # (B, T) → logits (B, T, V)
            return self.head(self.hidden(idx))

    torch.manual_seed(1337 + seed)
    model = GPT()
    for name, p in model.named_parameters():
        if p.dim() >= 2:  # linear and embedding weights; the residual projections scaled down
            std = 0.02 / math.sqrt(2 * layers) if name.endswith(("attn_proj.weight", "mlp_proj.weight")) else 0.02
            nn.init.normal_(p, 0.0, std)
    return model


def get_lr(it: int, decay_iters: int) -> float:
    """nanoGPT's get_lr: linear warm-up, then cosine from learning_rate to min_lr at ``decay_iters``."""
    lr, low, warm = RECIPE["learning_rate"], RECIPE["min_lr"], RECIPE["warmup_iters"]
    if it < warm:
        return lr * (it + 1) / (warm + 1)
    if it > decay_iters or decay_iters <= warm:
        return low
    return low + 0.5 * (1.0 + math.cos(math.pi * (it - warm) / (decay_iters - warm))) * (lr - low)


def load_ids(corpus: str):
    """(train ids, held-out ids, vocabulary size) as int64 tensors, split and encoded as charlm does."""
    import numpy as np
    import torch

    from charlm.config import TrainConfig
    from charlm.corpora import resolve
    from charlm.corpus import form_of
    from charlm.data import split_text
    from charlm.text import read_text
    from charlm.vocab import Vocab

    text = read_text(resolve(corpus)[0], form=form_of(TrainConfig()))
    vocab = Vocab.from_text(text)
    train, val = split_text(text, VAL_FRAC)
    as_tensor = lambda s: torch.from_numpy(np.asarray(vocab.encode(s).ids, dtype=np.int64))  # noqa: E731
    return as_tensor(train), as_tensor(val), len(vocab)


def score_tail(model, train_ids, val_ids) -> dict:
    """Mean nats/char of val_ids[1:]: "sliding" (64 characters of context each) and "blocks" (nanoGPT's)."""
    import torch
    import torch.nn.functional as F

    T = RECIPE["block_size"]
    n = len(val_ids) - 1
    model.eval()
    with torch.inference_mode():
        ctx = torch.cat([train_ids[-T:], val_ids])  # target val[j] is ctx[T + j], its window ctx[j : j + T]
        windows = ctx.unfold(0, T, 1)  # (len − T + 1, T), views
        sliding = 0.0
        for s in range(1, n + 1, SCORE_WINDOWS):
            e = min(n + 1, s + SCORE_WINDOWS)
            last = model.hidden(windows[s:e])[:, -1]  # (W, C): each window's last position
            sliding += float(F.cross_entropy(model.head(last), val_ids[s:e], reduction="sum"))
        full = n // T
        blocks = 0.0
        for s in range(0, full, SCORE_WINDOWS):  # whole blocks, SCORE_WINDOWS at a time
            e = min(full, s + SCORE_WINDOWS)
            x = val_ids[s * T : e * T].view(-1, T)
            y = val_ids[s * T + 1 : e * T + 1].view(-1, T)
            blocks += float(
                F.cross_entropy(model(x).reshape(-1, model.head.out_features), y.reshape(-1), reduction="sum")
            )
        if n % T:  # the last, shorter block
            x, y = val_ids[full * T : n].view(1, -1), val_ids[full * T + 1 : n + 1]
            blocks += float(F.cross_entropy(model(x)[0], y, reduction="sum"))
    return {"tail_sliding": sliding / n, "tail_blocks": blocks / n, "tail_chars": n}


def train(corpus: str, seconds: float, seed: int, started: float) -> dict:
    """Train for ``seconds`` from ``started`` (a perf_counter value), then score the kept weights; every figure."""
    import torch
    import torch.nn.functional as F

    train_ids, val_ids, V = load_ids(corpus)
    model = build_gpt(V, seed)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": RECIPE["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}],
        lr=RECIPE["learning_rate"],
        betas=(RECIPE["beta1"], RECIPE["beta2"]),
    )
    Bn, T, every = RECIPE["batch_size"], RECIPE["block_size"], RECIPE["eval_interval"]
    clock = lambda: time.perf_counter() - started  # noqa: E731

    def get_batch(data):
        ix = torch.randint(len(data) - T, (Bn,))
        offsets = ix[:, None] + torch.arange(T)  # (B, T)
        return data[offsets], data[offsets + 1]

    def estimate() -> dict:
        model.eval()
        out = {}
        with torch.no_grad():
            for split, data in (("train", train_ids), ("val", val_ids)):
                losses = []
                for _ in range(RECIPE["eval_iters"]):
                    x, y = get_batch(data)
                    losses.append(float(F.cross_entropy(model(x).reshape(-1, V), y.reshape(-1))))
                out[split] = sum(losses) / len(losses)
        model.train()
        return out

    it, max_iters, eval_seconds = 0, None, 0.0
    iter_times: list[float] = []
    best = {"val": math.inf, "iter": 0, "weights": None}
    history: list[dict] = []
    plans: list[list] = []

    def plan() -> int:
        """The iterations that fit: each at the mean time since the last plan, the evaluations at their cost."""
        t_it = sum(iter_times) / len(iter_times)
        left = seconds - clock() - eval_seconds  # the last evaluation must fit too
        n = max(0, int(left / (t_it + eval_seconds / every)))
        plans.append([it, it + n, round(t_it, 5), round(clock(), 2)])
        iter_times.clear()
        return it + n

    x, y = get_batch(train_ids)
    model.train()
    while True:
        done = max_iters is not None and it >= max_iters
        if it % every == 0 or done:
            e0 = time.perf_counter()
            losses = estimate()
            eval_seconds = time.perf_counter() - e0
            if losses["val"] < best["val"]:
                best.update(val=losses["val"], iter=it)
                if it > 0:  # nanoGPT writes ckpt.pt from iteration 1 on
                    best["weights"] = copy.deepcopy(model.state_dict())
            lr_now = get_lr(it, max_iters or 10**9)
            history.append({"iter": it, "train": round(losses["train"], 4), "val": round(losses["val"], 4),
                            "lr": lr_now, "elapsed": round(clock(), 2)})  # fmt: skip
            print(
                f"  nanogpt: iter {it:>6,}  train {losses['train']:.4f}  val {losses['val']:.4f}  "
                f"max_iters {max_iters or '?'}  elapsed {clock():.0f} s",
                file=sys.stderr,
                flush=True,
            )
            if it >= PLAN_AFTER and iter_times and not done:
                max_iters = plan()
                done = max_iters <= it  # no further iteration fits: these weights were just evaluated
            if done:
                break
        lr = get_lr(it, max_iters or 10**9)
        for group in opt.param_groups:
            group["lr"] = lr
        s0 = time.perf_counter()
        loss = F.cross_entropy(model(x).reshape(-1, V), y.reshape(-1))
        x, y = get_batch(train_ids)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), RECIPE["grad_clip"])
        opt.step()
        opt.zero_grad(set_to_none=True)
        iter_times.append(time.perf_counter() - s0)
        it += 1
        if clock() + iter_times[-1] + eval_seconds > seconds and (max_iters is None or max_iters > it):
            max_iters = it  # running late: stop here (the plan is made again at every evaluation)
        elif max_iters is None and it == PLAN_AFTER:
            max_iters = plan()
    train_seconds = clock()
    if best["weights"] is not None:
        model.load_state_dict(best["weights"])
    s0 = time.perf_counter()
    scores = score_tail(model, train_ids, val_ids)
    return {
        "system": "nanogpt",
        "recipe": RECIPE,
        **{k: round(v, 6) if isinstance(v, float) else v for k, v in scores.items()},
        "score_seconds": round(time.perf_counter() - s0, 2),
        "best_iter": best["iter"],
        "best_val_estimate": round(best["val"], 6),
        "iters": it,
        "chars": it * Bn * T,
        "elapsed": round(train_seconds, 2),
        "budget": seconds,
        "plans": plans,
        "params": sum(p.numel() for p in model.parameters()),
        "held_out": len(val_ids),
        "vocab": V,
        "history": history,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }


def parse_args(argv: list[str] | None = None):
    return peer_args(
        "nanogpt_peer.py",
        "Train nanoGPT's CPU recipe for shakespeare_char (4×128 GPT, block 64, batch 12) for a wall-clock "
        "budget, then score its best weights on the whole held-out tail; one JSON object on stdout.",
        "Added to nanoGPT's seed 1337.",
        argv,
    )


def main(argv: list[str] | None = None) -> None:
    from charlm.budget import process_started  # as charlm train counts its budget

    started = process_started()
    args = parse_args(argv)
    run_as_user()
    require_torch_and_charlm()
    from charlm.errors import CharlmError

    print(f"nanogpt: 4×128 GPT, block 64, batch 12, {args.minutes:g} min …", file=sys.stderr, flush=True)
    try:
        result = train(args.corpus, args.minutes * 60.0, args.seed, started)
    except CharlmError as e:
        fail(str(e).rstrip("."))
    if len(result["history"]) < 2:
        print("warning: the budget ended before the first evaluation after iteration 0", file=sys.stderr)
    if args.as_json:
        print(json.dumps(result, indent=1))
    else:
        print(
            f"held-out {result['tail_sliding']:.4f} nats/char with 64 characters of context "
            f"({result['tail_blocks']:.4f} in 64-character blocks) on {result['tail_chars']:,} characters; "
            f"best at iteration {result['best_iter']:,} of {result['iters']:,}; {result['elapsed']:.0f} s training, "
            f"{result['score_seconds']:.0f} s scoring"
        )


if __name__ == "__main__":
    main()
