"""How well a model predicts text: cross-entropy, bits per character, perplexity.

The text is scored in B parallel rows with the hidden state carried along each
row, so a multi-megabyte file is a few thousand batched forward passes. Every
character after the first is predicted exactly once: row b predicts targets
[bL, (b+1)L) (L = ⌊(N−1)/B⌋), and the last few that do not fill a row are
predicted by continuing from the end of the last row. Before its first
prediction, row b ≥ 1 reads the W = EVAL_WARMUP characters that precede its
start, unscored, so its (a<t>, c<t>) carry context as they would in one pass
over the whole text; the result then matches a single unbatched pass to about
1e-4 nats/char instead of paying for B cold starts.

A forward pass (``charlm.scorer``, forward only) covers EVAL_STEPS time steps of
all B rows: its memory does not grow with the text.

Training validates on a spread sample during the run (``score_sample``: the
first characters of every row, so the same rows and warm-up as the whole) and
on the whole held-out text once at the end (``score_ids``).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from charlm.config import check_unknown_policy
from charlm.data import RELEASE_EVERY, release_pages
from charlm.errors import ConfigError
from charlm.model import CharModel, State
from charlm.scorer import Scorer
from charlm.unknown import UnknownCharacters, nothing_to_score
from charlm.vocab import Vocab
from charlm.wordvocab import WordVocab

EVAL_BATCH = 64  # rows scored in parallel
EVAL_MIN_ROW = 128  # each row holds at least this many targets, so a short text is scored in fewer rows
EVAL_WARMUP = 256  # characters each row ≥ 1 reads, unscored, before its first prediction
EVAL_STEPS = 16  # time steps per forward pass: a pass's arrays hold B × EVAL_STEPS steps (see charlm.scorer)


@dataclass(frozen=True)
class Score:
    nats: float  # total −log p, in nats
    chars: int  # characters scored
    unknown: int = 0  # characters dropped because the model has never seen them

    @property
    def nats_per_char(self) -> float:
        return self.nats / self.chars if self.chars else float("nan")

    @property
    def bits_per_char(self) -> float:
        return self.nats_per_char / math.log(2)

    @property
    def perplexity(self) -> float:
        """e^(nats/char); inf when that overflows a float (a model that is sure and wrong)."""
        try:
            return math.exp(self.nats_per_char)
        except OverflowError:
            return math.inf


def row_layout(n_targets: int, batch_size: int = EVAL_BATCH, min_row: int = EVAL_MIN_ROW) -> tuple[int, int]:
    """(B, L): the rows a text of ``n_targets`` targets is scored in, and the targets of each row."""
    B = max(1, min(batch_size, n_targets // min_row or 1))
    return B, n_targets // B


def surprisal_chunks(
    model: CharModel,
    ids: np.ndarray,
    batch_size: int = EVAL_BATCH,
    min_row: int = EVAL_MIN_ROW,
    warmup: int = EVAL_WARMUP,
    steps: int = EVAL_STEPS,
    row_limit: int | None = None,
    rows: slice = slice(None),
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (target positions, −log p in nats) for every target ids[1:], chunk by chunk.

    A target position k means "ids[k+1] predicted from ids[..k]"; positions come
    in a (T', B) grid per chunk of at most ``steps`` time steps, matching the
    nats array. The chunk length changes nothing but the size of the model's
    workspaces: the state is carried from chunk to chunk. With ``row_limit``,
    only the first ``row_limit`` targets of each row are scored (an evenly
    spread sample of the text, see ``score_sample``), and no leftover tail.
    With ``rows``, only those of the B rows are scored (the leftover tail goes
    with the last row), each as in the whole: a block of rows for one process.
    """
    n_targets = len(ids) - 1
    if n_targets <= 0:
        return
    B, L = row_layout(n_targets, batch_size, min_row)
    block = range(B)[rows]  # the rows scored here
    rows_x = ids[: B * L].reshape(B, L)[rows]  # (B', L)
    rows_y = ids[1 : B * L + 1].reshape(B, L)[rows]
    scorer = Scorer(model)
    state = _row_states(scorer, ids, block, L, warmup, steps)
    starts = np.asarray(block)[None, :] * L  # (1, B')
    end = L if row_limit is None else min(L, row_limit)
    for k, s in enumerate(range(0, end, steps)):
        e = min(end, s + steps)
        x = np.ascontiguousarray(rows_x[:, s:e].T, dtype=np.int64)  # (T', B)
        y = np.ascontiguousarray(rows_y[:, s:e].T, dtype=np.int64)
        nats, state = scorer.nll(x, y, state)
        yield starts + np.arange(s, e)[:, None], nats
        if k % RELEASE_EVERY == RELEASE_EVERY - 1:
            release_pages(ids)  # a memmapped text (a long file): read pages need not stay resident
    rest = n_targets - B * L
    if rest and end == L and len(block) and block[-1] == B - 1:
        state = [tuple(part[-1:].copy() for part in layer) for layer in state]  # the last row goes on
        for s in range(B * L, B * L + rest, steps):
            e = min(B * L + rest, s + steps)
            x = ids[s:e].astype(np.int64).reshape(-1, 1)
            y = ids[s + 1 : e + 1].astype(np.int64).reshape(-1, 1)
            nats, state = scorer.nll(x, y, state)
            yield np.arange(s, e)[:, None], nats


def _row_states(scorer: Scorer, ids: np.ndarray, rows: range, L: int, warmup: int, steps: int) -> State:
    """The state each of the rows (of length L) starts from: row 0 starts the text
    (zero state); row b ≥ 1 has read the ``warmup`` characters before its start, unscored.

    All the rows are run (row 0 reads row 1's characters), so the warm-up uses the
    scoring's workspace shape; row 0's state is then reset to zero."""
    state = scorer.model.zero_state(len(rows))
    W = min(warmup, L)  # row b ≥ 1 starts at bL ≥ L, so W characters precede it
    if len(rows) and rows[-1] > 0 and W > 0:
        before = np.stack([ids[max(b, 1) * L - W : max(b, 1) * L] for b in rows], axis=1).astype(np.int64)
        for s in range(0, W, steps):  # (W, B') in chunks; only the final state is kept
            state = scorer.advance(before[s : s + steps], state)
        if rows[0] == 0:
            for layer in state:
                for part in layer:
                    part[0] = 0.0
    return state


def score_sample(model: CharModel, ids: np.ndarray, chars: int, **kw) -> Score:
    """The score of an evenly spread sample of about ``chars`` targets of ``ids``: the
    first ⌈chars / B⌉ targets of each of the B rows ``score_ids`` uses, each row
    warmed up as there. With ``chars`` ≥ the targets of ``ids``, this is ``score_ids``."""
    return score_ids(model, ids, **sample_row_limit(len(ids), chars, **kw), **kw)


def _row_limit(
    n_targets: int, chars: int | None, batch_size: int = EVAL_BATCH, min_row: int = EVAL_MIN_ROW, **_
) -> int | None:
    """Targets per row of a spread sample of ``chars`` targets; None: the whole rows."""
    if chars is None or n_targets <= 0:
        return None
    B, L = row_layout(n_targets, batch_size, min_row)
    limit = -(-chars // B)
    return None if limit >= L else limit


def scoring_steps(n_ids: int, chars: int | None = None, warmup: int = EVAL_WARMUP, **kw) -> int:
    """Time steps of the batched passes that score ``n_ids`` ids (warm-up included),
    or a spread sample of ``chars`` of their targets (``score_sample``): what a
    scoring costs, in units of ``pass_step_seconds``."""
    n_targets = n_ids - 1
    if n_targets <= 0:
        return 0
    B, L = row_layout(n_targets, kw.get("batch_size", EVAL_BATCH), kw.get("min_row", EVAL_MIN_ROW))
    limit = _row_limit(n_targets, chars, **kw)
    W = min(warmup, L) if B > 1 else 0
    return W + (L + n_targets - B * L if limit is None else limit)


def pass_step_seconds(model: CharModel, batch_size: int = EVAL_BATCH, steps: int = EVAL_STEPS) -> float:
    """Seconds a time step of a scoring pass takes now, timed on one pass of zeros
    (after an untimed one that sets up the workspace)."""
    x, scorer = np.zeros((steps, batch_size), np.int64), Scorer(model)  # (T, B)
    scorer.nll(x, x, model.zero_state(batch_size))
    t0 = time.perf_counter()
    scorer.nll(x, x, model.zero_state(batch_size))
    return (time.perf_counter() - t0) / steps


class HeldOutScoring:
    """How a training run scores its held-out text: in this process, with all its BLAS
    threads (``charlm.mpistep.RankScoring``: each MPI rank its block of the rows)."""

    def __init__(self, model: CharModel) -> None:
        self.model = model

    def score(self, ids: np.ndarray, chars: int | None = None) -> Score:
        """The Score of ``ids``, or of its spread sample of ``chars`` targets (``score_sample``)."""
        return score_ids(self.model, ids) if chars is None else score_sample(self.model, ids, chars)

    def pass_step_seconds(self) -> float:
        """Seconds a time step of ``score``'s passes takes now (see ``pass_step_seconds``)."""
        return pass_step_seconds(self.model)


def score_ids(model: CharModel, ids: np.ndarray, unknown: int = 0, parallel: bool = False, **kw) -> Score:
    """The Score of every target of ``ids``; with ``parallel``, a long text's rows are
    split over processes, one block per core (``charlm.rowsplit``)."""
    from charlm import rowsplit

    def block(rows: slice) -> tuple[float, int]:
        return block_nats(model, ids, rows, **kw)

    n_targets = len(ids) - 1
    B = row_layout(n_targets, kw.get("batch_size", EVAL_BATCH), kw.get("min_row", EVAL_MIN_ROW))[0]
    processes = rowsplit.processes_for(n_targets, B) if parallel else 1
    total, count = block(slice(None)) if processes == 1 else rowsplit.score_blocks(block, rowsplit.blocks(B, processes))
    return Score(total, count, unknown)


def block_nats(model: CharModel, ids: np.ndarray, rows: slice = slice(None), **kw) -> tuple[float, int]:
    """(Σ −log p in nats, targets) of the rows ``rows`` of the B rows ``score_ids`` scores
    ``ids`` in: the share of one process when the rows are split over several."""
    total, count = 0.0, 0
    for _, nats in surprisal_chunks(model, ids, rows=rows, **kw):
        total += float(nats.sum())
        count += nats.size
    return total, count


def sample_row_limit(n_ids: int, chars: int | None, **kw) -> dict:
    """The keyword ``score_ids`` and ``block_nats`` take to score ``score_sample``'s spread
    sample of ``chars`` targets of ``n_ids`` ids (none: all of them)."""
    limit = _row_limit(n_ids - 1, chars, **kw)
    return {} if limit is None else {"row_limit": limit}


def surprisal(model: CharModel, ids: np.ndarray, **kw) -> np.ndarray:
    """−log p(ids[k+1] | ids[..k]) for k = 0..N−2, in nats, (N−1,) float64."""
    out = np.zeros(max(0, len(ids) - 1))
    for pos, nats in surprisal_chunks(model, ids, **kw):
        out[pos.ravel()] = nats.ravel()
    return out


# --------------------------------------------------------------------------- #
# Sentences: log P(y<1>, …, y<T>) = Σ_t log P(y<t> | y<1>, …, y<t-1>)
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class SentenceScore(Score):
    """A sentence's score: ``nats`` = −log P(sentence), the sum of its characters' surprisals."""

    text: str = ""  # the sentence as given

    @property
    def log_prob(self) -> float:
        """ln P(sentence), in nats (≤ 0)."""
        return -self.nats

    @property
    def log10_prob(self) -> float:
        """log₁₀ P(sentence): P = 10 ** log10_prob."""
        return -self.nats / math.log(10)


def score_sentences(
    model: CharModel,
    vocab: Vocab | WordVocab,
    sentences: Sequence[str],
    unknown: str = "error",
    batch_size: int = EVAL_BATCH,
    steps: int = EVAL_STEPS,
) -> list[SentenceScore]:
    """Score each sentence on its own, as if it started a new line; results in input order.

    The model is fed x<1> = "\n" from a<0> = c<0> = 0 when the vocabulary has a
    newline, and every character y<t> of the sentence is scored:
    −log P(sentence) = −Σ_t log ŷ<t>[y<t>]. Without a newline in the vocabulary
    the first character is fed, not scored. unknown: "error" raises
    UnknownCharacters naming the characters the model has never seen; "skip"
    drops them. A word model is fed <EOS> first and scores every token of the
    sentence and the <EOS> that ends it (the notes' P(y<1>, …, y<T>, <EOS>));
    under "unk" (word models only) a word outside its vocabulary is scored as <UNK>.

    Sentences are scored in batches of ``batch_size``, grouped by length and
    padded at the end: padding comes after every scored position, so it never
    changes a score.
    """
    check_unknown_policy(unknown)
    if unknown == "unk" and vocab.unit != "word":
        raise ConfigError("unknown", "'unk' is for word models: a character model has no <UNK>. Use error or skip.")
    encoded, dropped = _encode_sentences(vocab, sentences, unknown)
    lengths = np.array([len(ids) for ids in encoded], dtype=np.int64)
    nats = np.zeros(len(sentences))
    order, scorer = np.argsort(lengths, kind="stable"), Scorer(model)
    for g in range(0, len(order), batch_size):
        group = order[g : g + batch_size]
        nats[group] = _group_nats(scorer, [encoded[i] for i in group], steps)
    return [
        SentenceScore(float(nats[i]), max(0, int(lengths[i]) - 1), dropped[i], text=text)
        for i, text in enumerate(sentences)
    ]


def _encode_sentences(
    vocab: Vocab | WordVocab, sentences: Sequence[str], unknown: str
) -> tuple[list[np.ndarray], list[int]]:
    """Each sentence's ids after a newline (when the vocabulary has one; a word model: after <EOS>,
    and ending with <EOS>), and how many unknown symbols each lost (or read as <UNK>); refused as
    UnknownCharacters under the "error" policy."""
    start = vocab.boundary_id
    keep = "unk" if unknown == "unk" else "skip"  # "error" is decided below, once every sentence is read
    encoded, dropped = [], []
    lost: dict[int, Counter] = {}  # sentence number → its unknown characters
    for i, sentence in enumerate(sentences):
        enc = vocab.encode(sentence, unknown=keep)
        if enc.unknown:
            lost[i + 1] = enc.unknown
        ids = enc.ids  # compact ids (cast to int64 a group at a time), so a long file of sentences stays small
        encoded.append(ids if start is None else np.concatenate((np.array([start], ids.dtype), ids)))
        dropped.append(enc.unknown_count)
    if lost and unknown == "error":
        raise UnknownCharacters(sum(lost.values(), Counter()), list(lost), words=vocab.unit == "word")
    if short := [i + 1 for i, ids in enumerate(encoded) if len(ids) < 2]:
        raise nothing_to_score(short, lost, start is not None, words=vocab.unit == "word")
    return encoded, dropped


def _group_nats(scorer: Scorer, group: list[np.ndarray], steps: int) -> np.ndarray:
    """−log P of each id sequence of a batch (B,), its first id fed, not scored; padded at the end."""
    B = len(group)
    T = max(len(ids) for ids in group) - 1  # predicted positions of the longest
    if T < 1:
        return np.zeros(B)
    x = np.zeros((T, B), np.int64)  # (T, B) inputs, padded with id 0
    y = np.zeros((T, B), np.int64)  # (T, B) targets
    keep = np.zeros((T, B))  # (T, B) 1 where a real character is predicted
    for b, ids in enumerate(group):
        n = len(ids) - 1
        if n > 0:
            x[:n, b], y[:n, b], keep[:n, b] = ids[:-1], ids[1:], 1.0
    state = scorer.model.zero_state(B)
    total = np.zeros(B)
    for s in range(0, T, steps):
        e = min(T, s + steps)
        chunk, state = scorer.nll(x[s:e], y[s:e], state)  # (T', B)
        total += (chunk * keep[s:e]).sum(axis=0)
    return total
