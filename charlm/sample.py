"""Generating text one character (or, for a word model, one token) at a time.

At each step the model gives logits u<t> over the vocabulary; the next character
is drawn from ŷ<t> = softmax(u<t> / τ), where the temperature τ sharpens (τ < 1)
or flattens (τ > 1) the distribution, and τ = 0 takes the argmax (greedy). Two
filters can cut the tail of ŷ<t> before the draw (see ``Decoder``): top-k keeps
the k most likely characters, top-p (nucleus) the smallest set of most likely
characters whose probabilities add up to p. The drawn character is fed back as
x<t+1>.

Sampling runs at batch 1, so it is latency-bound: the first layer's input
projection is a precomputed (V, G·H) table, every array is allocated once, and
the per-character loop calls NumPy a fixed, small number of times.

A word model's sampler yields tokens (``charlm.words``: words, punctuation marks,
<EOS>); the CLI prints them with ``charlm.words.Detokenizer``. ``no_unk`` gives <UNK> the
logit −∞, and ``sentences`` ends a sample after that many sentence ends.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from charlm import blas
from charlm.config import SampleConfig
from charlm.errors import ConfigError
from charlm.model import CharModel
from charlm.vocab import Vocab
from charlm.words import EOS, SentenceEnds
from charlm.wordvocab import UNK_ID, WordVocab

WARMUP_CHARS = 256  # unprinted characters of its own that an unprompted sampler reads first
WARMUP_SEED = 0  # the same warm-up for every seed: the seed only chooses the printed text
WARMUP = SampleConfig(temperature=1.0, seed=WARMUP_SEED)  # the warm-up draws from the model's own distribution
DRAW_CHUNK = 4096  # uniform numbers drawn at a time: memory stays flat in the length of a sample


@dataclass(frozen=True)
class Warmed:
    """Where ``Sampler.warm_up`` brings a model: the id fed first and the state a<t>
    (and c<t>) of every layer, (H,) vectors, for WARMUP_CHARS and WARMUP_SEED.
    Stored with a model (``charlm.checkpoint``), it spares an unprompted sample the
    warm-up: the same state, so the same text for every seed (made by ``warmed_state``)."""

    first: int  # the id generate feeds first: the newline the warm-up stopped at (as a rule)
    state: list[tuple[np.ndarray, ...]]  # per layer, one (H,) vector per state name (LSTM: a, c)
    chars: int = WARMUP_CHARS  # the warm-up it is the end of: stored with it, so that
    seed: int = WARMUP_SEED  # a state of another warm-up recipe is never taken for this one

    def fits(self, model: CharModel) -> bool:
        """True when this is a warm-up of this charlm's recipe for ``model``'s layers and dtype."""
        return (
            (self.chars, self.seed) == (WARMUP_CHARS, WARMUP_SEED)
            and 0 <= self.first < model.config.vocab_size
            and len(self.state) == len(model.rnn)
            and all(
                len(parts) == len(cell.state_names)
                and all(p.shape == (cell.hidden_size,) and p.dtype == model.dtype for p in parts)
                for parts, cell in zip(self.state, model.rnn, strict=True)
            )
        )


def warmed_state(model: CharModel, vocab: Vocab) -> Warmed:
    """The warm-up of ``Sampler.warm_up``, run live: what a model stores to start fast."""
    sampler = Sampler(model, vocab)
    first = sampler.warm_up()
    return Warmed(first, [tuple(part.copy() for part in layer) for layer in sampler.state])


class Decoder:
    """Logits u<t> (V,) and a uniform number U ∈ [0, 1) → the id of the next character.

    With τ = ``config.temperature``, k = ``config.top_k`` and p = ``config.top_p``
    (checked by ``config.check()``), in this order:

        τ = 0:  x<t+1> = argmax u<t>                               (greedy; k and p are moot)
        top-k:  K = {i : u_i ≥ k-th largest u}                      (every id when k is None or ≥ V)
        w_i     = exp((u_i − max u) / τ) for i ∈ K, else 0          (∝ softmax(u<t>/τ) on K)
        top-p:  w_i ← 0 unless w_i ≥ w_(j), where w_(j) is the smallest weight of the
                smallest set of largest weights whose sum reaches p·Σw   (nucleus)
        draw:   x<t+1> = min{i : w_1 + … + w_i > U·Σw}                 (inverse CDF)

    ``choose`` overwrites the logits it is given and allocates no array: the
    scratch vectors are made once, top-k is one in-place partition of a copy and
    top-p one in-place sort of a copy, so each character costs a fixed handful of
    NumPy calls on V-sized buffers. Filtered-out ids have weight exactly 0 and can
    never be drawn.
    """

    def __init__(self, vocab_size: int, config: SampleConfig, dtype=np.float32) -> None:
        config.check()
        top_k, top_p = config.top_k, config.top_p
        V = vocab_size
        self.vocab_size = V
        self.temperature = float(config.temperature)
        self.top_k = None if top_k is None or top_k >= V else int(top_k)
        self.top_p = None if top_p is None or top_p >= 1.0 else float(top_p)
        # τ = 0 is the argmax; so is a τ so small that (u_i − max u)/τ could overflow the
        # dtype for a plausible logit gap (< 1e9), where softmax(u/τ) is one-hot anyway.
        self.greedy = self.temperature * float(np.finfo(dtype).max) < 1e9
        self.inv_temperature = 0.0 if self.greedy else 1.0 / self.temperature
        self.mask = np.empty(V, np.bool_)  # (V,) ids filtered out
        self.sorted = np.empty(V, dtype)  # (V,) partition / sort scratch
        self.csum = np.empty(V, dtype)  # (V,) cumulative weights of the sorted scratch
        self.zero = np.zeros((), dtype)
        if self.greedy:
            self.choose = self._greedy
        elif self.top_k is None and self.top_p is None:
            self.choose = self._plain
        else:
            self.choose = self._filtered

    def __call__(self, logits: np.ndarray, u: float) -> int:
        """The next id for logits (V,) (overwritten) and a uniform number u ∈ [0, 1)."""
        return self.choose(logits, u)

    @staticmethod
    def _greedy(logits: np.ndarray, u: float) -> int:
        return int(logits.argmax())

    def _plain(self, w: np.ndarray, u: float) -> int:
        w -= w.max()  # (V,) u − max u ≤ 0: exp cannot overflow
        w *= self.inv_temperature
        np.exp(w, out=w)  # ∝ softmax(u/τ)
        return self._draw(w, u)

    def _filtered(self, w: np.ndarray, u: float) -> int:
        V, mask = self.vocab_size, self.mask
        if self.top_k is not None:
            scratch = self.sorted
            np.copyto(scratch, w)
            scratch.partition(V - self.top_k)  # in place: the k largest logits sit at the end
            np.less(w, scratch[V - self.top_k], out=mask)  # below the k-th largest logit
        w -= w.max()
        w *= self.inv_temperature
        np.exp(w, out=w)
        if self.top_k is not None:
            np.copyto(w, self.zero, where=mask)
        if self.top_p is not None:
            s, c = self.sorted, self.csum
            np.copyto(s, w)
            s.sort()  # ascending; the only sort per character
            np.add.accumulate(s, out=c)  # c[i] = mass of the i+1 smallest weights
            # the nucleus is s[j:], with j the number of smallest weights whose mass stays ≤ (1 − p)·Σw
            j = min(int(c.searchsorted((1.0 - self.top_p) * c[-1], side="right")), V - 1)
            np.less(w, s[j], out=mask)
            np.copyto(w, self.zero, where=mask)
        return self._draw(w, u)

    @staticmethod
    def _draw(w: np.ndarray, u: float) -> int:
        """Inverse-CDF draw from weights w (V,) ≥ 0, overwritten with their cumulative sum."""
        np.add.accumulate(w, out=w)  # (np.cumsum's Python wrapper costs more than the sum at this size)
        x = int(w.searchsorted(u * w[-1], side="right"))
        if x >= w.shape[0]:  # U·Σw rounded up to Σw: take the last id with a non-zero weight
            x = int(w.searchsorted(w[-1], side="left"))
        return x


class Sampler:
    """Text from ``model`` at batch 1, drawn as ``config`` says; the state carries over
    from one ``generate`` call to the next until ``reset``."""

    def __init__(
        self, model: CharModel, vocab: Vocab, config: SampleConfig = SampleConfig(), warmed: Warmed | None = None
    ) -> None:
        self.config = config.check()
        if vocab.unit != "word" and (config.no_unk or config.unknown == "unk"):
            setting = "no_unk" if config.no_unk else "unknown"
            raise ConfigError(setting, "is for word models: a character model has no <UNK>. Drop it.")
        if vocab.unit == "word" and config.stop is not None:
            raise ConfigError("stop", "is for character models; end a word model's sample by sentences or length.")
        self.banned = UNK_ID if config.no_unk else None  # an id never drawn: <UNK> under no_unk
        self.warmed = warmed if warmed is not None and warmed.fits(model) else None  # else warm_up runs live
        self.model = model
        self.vocab = vocab
        self.rng = np.random.default_rng(config.seed)
        p = model.params
        self.table = model.input_table()  # (V, G·H)
        self.bias = [cell.b_ih + cell.b_hh for cell in model.rnn]  # (G·H,) per layer
        self.dec_w = np.ascontiguousarray(p["decoder.weight"])  # (V, H)
        self.dec_b = p["decoder.bias"].copy()  # (V,)
        self.pre = [np.empty(cell.gates * cell.hidden_size, model.dtype) for cell in model.rnn]
        self.logits = np.empty(len(vocab), model.dtype)  # (V,)
        self.decoder = Decoder(len(vocab), config, model.dtype)
        self.state = [tuple(s[0] for s in layer) for layer in model.zero_state(1)]  # (H,) vectors, updated in place
        self.last: int | None = None  # the id fed next: the last character given or generated, not yet read

    def feed(self, ids: np.ndarray) -> None:
        """Run the prompt through the model (batched over time), updating the state.

        The state then holds everything but the prompt's last character, which is
        the id ``generate`` feeds first (as after a generated character): the state
        has always read all text but ``last``."""
        if len(ids) == 0:
            return
        pending = [] if self.last is None else [self.last]
        x = np.asarray([*pending, *ids[:-1]], dtype=np.int64).reshape(-1, 1)  # (T, 1)
        if len(x):
            state = [tuple(s[None, :] for s in layer) for layer in self.state]
            _, new_state = self.model.forward_states(x, state)
            for mine, new in zip(self.state, new_state, strict=True):
                for part, value in zip(mine, new, strict=True):
                    part[...] = value[0]
        self.last = int(ids[-1])

    def _step(self, x: int) -> np.ndarray:
        """One character through the stack; returns the top hidden vector (H,)."""
        cells = self.model.rnn
        pre = self.pre[0]
        np.copyto(pre, self.table[x])
        a = cells[0].forward_one(pre, self.state[0])
        for layer in range(1, len(cells)):
            pre = self.pre[layer]
            np.matmul(cells[layer].w_ih, a, out=pre)
            pre += self.bias[layer]
            a = cells[layer].forward_one(pre, self.state[layer])
        return a

    def warm_up(self) -> int:
        """Bring the zero state a<0> = c<0> = 0 to one like those seen in training;
        return the id to feed first.

        Training carries the state from batch to batch, so the model meets a zero
        state only at the start of each of its B streams, and from it predicts little
        better than chance (the shipped news model: entropy 4.8 nats over 134
        characters, ln 134 = 4.9). So an unprompted sample first runs the model on
        WARMUP_CHARS characters of its own text at τ = 1, drawn with a fixed seed and
        not printed, then on to the next newline (at most WARMUP_CHARS more), and the
        printed text starts after that newline. With a stored ``Warmed`` (made by
        ``warmed_state``) the state is copied in instead of computed: the same state.
        """
        if self.warmed is not None:
            for mine, stored in zip(self.state, self.warmed.state, strict=True):
                for part, value in zip(mine, stored, strict=True):
                    part[...] = value
            return self.warmed.first
        newline = self.vocab.boundary_id  # a character model's newline, a word model's <EOS>
        x = newline if newline is not None else int(np.argmax(self.dec_b))
        choose = Decoder(len(self.vocab), WARMUP, self.logits.dtype).choose
        with blas.limit(1):  # see generate
            for n, u in enumerate(np.random.default_rng(WARMUP.seed).random(2 * WARMUP_CHARS).tolist()):
                x = choose(self.logits_after(x), u)
                if n + 1 >= WARMUP_CHARS and (newline is None or x == newline):
                    break
        return x

    def logits_after(self, x: int) -> np.ndarray:
        """Feed id x; the logits u<t> (V,) of the next character, in the shared buffer."""
        logits = self.logits
        np.matmul(self.dec_w, self._step(x), out=logits)
        logits += self.dec_b
        return logits

    def reset(self) -> None:
        """Back to the start: a<0> = c<0> = 0 in every layer, no prompt fed."""
        for layer in self.state:
            for part in layer:
                part.fill(0.0)
        self.last = None

    def generate(self, length: int | None = None, first: int | None = None) -> Iterator[str]:
        """Yield up to ``length`` (default ``config.length``) symbols drawn by the decoder:
        characters, or a word model's tokens (<EOS> included; ``charlm.words.Detokenizer``
        prints them).

        ``first`` is the id fed first; by default the last symbol fed or
        generated, else (nothing fed since a reset) what ``warm_up`` returns. With
        ``config.stop``, generation ends as soon as the generated characters end with
        it (the stop string is yielded too); with ``config.sentences``, after that many
        sentence ends (<EOS>, or for characters the rule of ``charlm.words.SentenceEnds``).
        With ``config.no_unk`` <UNK> is never drawn: its logit is −∞, so the draw is the one
        that drawing again until a token other than <UNK> comes would give.

        The uniform numbers come DRAW_CHUNK at a time from a copy of the sampler's
        generator, and the generator itself moves on by ``length`` numbers at once:
        the same stream, and the same text for a seed, as one draw of ``length``
        numbers up front, whether the sample stops early or not, in memory that does
        not grow with ``length``.
        """
        length = self.config.length if length is None else length
        x = first if first is not None else self.last
        if x is None:
            x = self.warm_up()
        chars = self.vocab.chars
        choose = self.decoder.choose
        rng = copy.deepcopy(self.rng)  # draws this sample's numbers
        self.rng.bit_generator.advance(length)  # as if this sample's `length` numbers were drawn
        stop = self.config.stop
        n_stop = len(stop) if stop else 0
        tail = ""
        banned = self.banned
        sentences_left = self.config.sentences
        ends = None if sentences_left is None else (_is_eos if isinstance(self.vocab, WordVocab) else SentenceEnds())
        # One BLAS thread per product: at batch 1 a second thread gains little, and next to a busy
        # process it slows sampling down many times. Set once per call, not per character; the limit
        # holds for the whole process, also while the generator waits at a yield, until it ends or is closed.
        with blas.limit(1):
            for start in range(0, length, DRAW_CHUNK):
                for u in rng.random(min(DRAW_CHUNK, length - start)).tolist():
                    logits = self.logits_after(x)
                    if banned is not None:
                        logits[banned] = -np.inf
                    x = choose(logits, u)
                    self.last = x  # a later call continues the text from here
                    ch = chars[x]
                    yield ch
                    if n_stop:
                        tail = (tail + ch)[-n_stop:]
                        if tail == stop:
                            return
                    if ends is not None and ends(ch):
                        sentences_left -= 1
                        if sentences_left == 0:
                            return


def _is_eos(token: str) -> bool:
    return token == EOS
