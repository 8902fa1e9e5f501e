"""Settings as objects: each a dataclass with a comment on every default.

The CLI builds them from its options and calls their ``check``; the checkpoint
stores them, and the rest of charlm takes them as they are. A check names the
field that is wrong (``ConfigError(field, problem)``), never a command-line flag.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields

from charlm.errors import ConfigError

CELL_NAMES = ("lstm", "gru", "rnn")  # the recurrent cells charlm.model builds
MAX_LAYERS = 16  # N: stacked recurrent layers at most
MAX_WIDTH = 8192  # E and H: embedding width and hidden units at most
ERROR_POLICIES = ("strict", "replace")  # what decoding does with bytes that are not valid text


def _positive(setting: str, value: float | None) -> None:
    if value is not None and not (value > 0 and math.isfinite(value)):
        raise ConfigError(setting, f"must be a finite number greater than 0 (got {value:g}).")


def _at_least(setting: str, value: int | None, low: int) -> None:
    if value is not None and value < low:
        raise ConfigError(setting, f"must be at least {low} (got {value}).")


def _at_most(setting: str, value: int, high: int) -> None:
    if value > high:
        raise ConfigError(setting, f"must be at most {high} (got {value}).")


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild the network; stored in every checkpoint."""

    vocab_size: int = 0  # V: distinct characters (0 until the corpus's vocabulary is known)
    cell: str = "lstm"  # recurrent cell: lstm, gru or rnn
    embed: int = 64  # E: embedding width
    hidden: int = 256  # H: hidden units per recurrent layer
    layers: int = 2  # N: stacked recurrent layers
    dropout: float = (
        0.2  # inverted-dropout probability between layers and before the decoder (a 10-minute run overfits without it)
    )
    forget_bias: float = 0.0  # initial LSTM forget-gate bias b_f (init only; ignored by GRU/RNN)

    def check(self) -> None:
        """Refuse a value that cannot build a model (ConfigError naming the field)."""
        if self.cell not in CELL_NAMES:
            raise ConfigError(
                "cell", f"{self.cell!r} is not a cell charlm knows; choose one of: {', '.join(CELL_NAMES)}."
            )
        _at_least("vocab_size", self.vocab_size, 0)
        for name, high in (("embed", MAX_WIDTH), ("hidden", MAX_WIDTH), ("layers", MAX_LAYERS)):
            _at_least(name, getattr(self, name), 1)
            _at_most(name, getattr(self, name), high)
        if not 0.0 <= self.dropout <= 0.9:
            raise ConfigError(
                "dropout", f"must be between 0 and 0.9 (got {self.dropout:g}): the probability of zeroing a unit."
            )
        if not -10.0 <= self.forget_bias <= 10.0:
            raise ConfigError("forget_bias", f"must be between -10 and 10 (got {self.forget_bias:g}).")
        if self.forget_bias != 0.0 and self.cell != "lstm":
            raise ConfigError(
                "forget_bias", f"is for the LSTM's forget gate; a {self.cell} cell has none. Drop the option."
            )

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        """The stored config (its types checked by charlm.checkpoint_schema). An LSTM
        written before forget_bias was a setting was initialised with 1; other cells have none."""
        return cls(**{"forget_bias": 1.0 if d.get("cell", "lstm") == "lstm" else 0.0, **d})


@dataclass
class TrainConfig:
    """How to train: batches, optimizer, budget, validation and how the corpus is read."""

    batch_size: int = 32  # B: parallel streams per batch
    seq_len: int = 64  # T: steps of back-propagation through time
    lr: float = 3e-3  # peak Adam learning rate
    clip: float = 5.0  # maximum global gradient norm
    val_frac: float = 0.1  # held-out tail of the corpus
    val_chars: int = 500_000  # validate on at most this many held-out characters (0: all of them)
    eval_every: int = 200  # steps between validations
    steps: int | None = None  # budget: optimizer steps
    epochs: float | None = None  # budget: passes over the training text
    minutes: float | None = None  # budget: wall-clock minutes of training
    seed: int = 0  # initialisation, dropout and everything random
    warmup: int = 50  # steps of linear learning-rate warm-up
    final_lr_frac: float = 0.1  # learning rate at the end, as a fraction of lr
    threads: int = 0  # row blocks computed in parallel (0: one per core, see charlm.parallel)
    encoding: str = "utf-8"  # text encoding of the corpus file (stored with the corpus fingerprint)
    errors: str = "strict"  # undecodable bytes: strict (refuse the file) or replace (stored likewise)
    normalize: bool = True  # NFC-normalize the text as it is read (stored likewise)
    keep_cr: bool = False  # keep "\r\n" as two characters instead of reading it as "\n" (stored likewise)

    def check(self) -> None:
        """Refuse a value that cannot train (ConfigError naming the field)."""
        if self.errors not in ERROR_POLICIES:
            raise ConfigError("errors", f"must be 'strict' or 'replace', not {self.errors!r}.")
        if not 0 < self.val_frac <= 0.5:
            raise ConfigError(
                "val_frac", f"must be in (0, 0.5] (got {self.val_frac:g}): the share of the text held out."
            )
        for name in ("lr", "clip", "epochs", "minutes"):
            _positive(name, getattr(self, name))
        for name, low in (("batch_size", 1), ("seq_len", 1), ("eval_every", 1), ("steps", 1)):
            _at_least(name, getattr(self, name), low)
        for name in ("val_chars", "seed", "warmup", "threads"):
            _at_least(name, getattr(self, name), 0)
        if not 0.0 <= self.final_lr_frac <= 1.0:
            raise ConfigError("final_lr_frac", f"must be between 0 and 1 (got {self.final_lr_frac:g}).")
        if self.threads > self.batch_size:
            raise ConfigError(
                "threads",
                f"{self.threads} is more than the batch size {self.batch_size}: each block needs a row of its own. "
                "Give at most the batch size, or 0 for one block per core.",
            )

    def to_dict(self) -> dict:
        """The settings a checkpoint's training state stores; how the text is read
        (STORED_WITH_CORPUS) goes with the corpus fingerprint instead."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in STORED_WITH_CORPUS}

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """The stored settings (their types checked by charlm.checkpoint_schema); fields
        missing from an older checkpoint keep their defaults, unknown ones are ignored."""
        known = {f.name for f in fields(cls) if f.name not in STORED_WITH_CORPUS}
        return cls(**{k: v for k, v in d.items() if k in known})


STORED_WITH_CORPUS = ("encoding", "errors", "normalize", "keep_cr")  # TrainConfig fields the corpus fingerprint records

UNITS = ("char", "word")  # what one id of a model stands for: a character, or a token of charlm.words
MAX_WORDS = 65_534  # N at most: with <EOS> and <UNK>, every id fits uint16


@dataclass(frozen=True)
class UnitNames:
    """How figures name a model's unit: nats/char and chars/s, or nats/word and words/s."""

    one: str  # per one: "char", "word"
    short: str  # in rates: "chars", "words"
    many: str  # in counts: "characters", "words"


UNIT_NAMES = {"char": UnitNames("char", "chars", "characters"), "word": UnitNames("word", "words", "words")}

# The word model's defaults where they differ from the character model's (a run whose unit is "word"),
# chosen by held-out nats/word after a few minutes on news (benchmarks/RESULTS.md, "Word model defaults"):
# a narrower model takes more steps in the time, and strong dropout pays on a small corpus read many times
# over. val_chars counts tokens here: a 10,000-word softmax makes a held-out token far costlier to score.
WORD_DEFAULTS = {"embed": 200, "hidden": 200, "dropout": 0.65, "seq_len": 35, "batch_size": 32, "val_chars": 50_000}


@dataclass(frozen=True)
class WordConfig:
    """How a word model's corpus becomes ids (charlm.words, charlm.wordvocab); the
    checkpoint keeps the vocabulary itself, with its case policy."""

    vocab_size: int = 10_000  # N: the most frequent tokens kept; with <EOS> and <UNK>, V = N + 2
    lowercase: bool = True  # lower-case the text before it is split into tokens

    def check(self) -> WordConfig:
        """Refuse a vocabulary size that cannot work (ConfigError naming the field)."""
        _at_least("vocab_size", self.vocab_size, 1)
        if self.vocab_size > MAX_WORDS:
            raise ConfigError(
                "vocab_size", f"must be at most {MAX_WORDS:,} (got {self.vocab_size:,}): ids are 16-bit numbers."
            )
        return self


@dataclass
class TrainState:
    """Where a run stands: everything besides the weights and tensors that an exact
    resume needs, stored as the checkpoint's ``train`` metadata (JSON)."""

    step: int = 0  # optimizer steps taken
    epoch: int = 0  # completed passes over the training text
    position: int = 0  # next chunk within the epoch
    total_steps: int | None = None  # steps the learning-rate schedule spans (None: not known yet)
    best_val: float | None = (
        None  # best validation loss in nats/char: on all the held-out text once a run has ended, on the sample before (None: none yet)
    )
    best_step: int = 0  # step of best_val
    best_sample_val: float | None = (
        None  # best validation loss on the sample validated during a run (what later ones are compared with)
    )
    chars_seen: int = 0  # characters trained on: step × B × T
    elapsed: float = (
        0.0  # seconds of the run from start-up, validations and checkpoints included (summed over sessions)
    )
    train_seconds: float = 0.0  # seconds in training steps only
    adam_t: int = 0  # Adam's step count t (bias correction)
    rng: dict | None = None  # the dropout generator's bit_generator.state (None: not resumable)
    config: TrainConfig | None = None  # the settings the run trains with
    val_curve: list[list] = field(default_factory=list)  # [step, val loss] of every validation

    def to_dict(self, keys: tuple[str, ...] | None = None) -> dict:
        """The JSON object stored in a checkpoint (only ``keys``, if given)."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        if d["best_sample_val"] is None:  # added later: left out unless set, so older headers write back the same
            del d["best_sample_val"]
        d["config"] = None if self.config is None else self.config.to_dict()
        return d if keys is None else {k: d[k] for k in keys}

    @classmethod
    def from_dict(cls, d: dict) -> TrainState:
        """A stored training state (its types checked by charlm.checkpoint_schema);
        missing fields keep their defaults (an exported model keeps only its history),
        unknown ones are ignored."""
        known = {f.name for f in fields(cls)} - {"config", "val_curve"}
        config, curve = d.get("config"), d.get("val_curve", [])
        return cls(
            **{k: v for k, v in d.items() if k in known},
            config=None if config is None else TrainConfig.from_dict(config),
            val_curve=[[int(s), float(v)] for s, v in curve],
        )


# --------------------------------------------------------------------------- #
# Sampling (appended: the settings of charlm.sample)
# --------------------------------------------------------------------------- #

UNKNOWN_POLICIES = (
    "error",
    "skip",
    "unk",
)  # unknown symbols: refuse and list them, drop them, or read them as <UNK> (words)


def check_unknown_policy(policy: str, setting: str = "unknown") -> None:
    """Raise ConfigError unless ``policy`` is one of UNKNOWN_POLICIES."""
    from charlm.errors import ConfigError

    if policy not in UNKNOWN_POLICIES:
        raise ConfigError(setting, f"must be 'error', 'skip' or 'unk', not {policy!r}.")


MAX_SAMPLE_LENGTH = 10**15  # characters per sample: far more than any run produces, well inside int64 counters


@dataclass(frozen=True)
class SampleConfig:
    """How text is drawn from a model (see charlm.sample); ``check`` says what cannot work.

    Greedy decoding is temperature 0: the argmax, the same text for every seed.
    """

    length: int = 200  # characters (tokens for a word model) per sample, not counting the prime; ≤ MAX_SAMPLE_LENGTH
    temperature: float = 1.0  # τ: logits are divided by it before the softmax; 0 takes the argmax
    top_k: int | None = None  # draw only from the k most likely characters (None: no cut)
    top_p: float | None = None  # nucleus: the smallest set of most likely characters with mass ≥ p (None: no cut)
    seed: int | None = None  # seeds the uniform numbers of the draws (None: fresh entropy every run)
    stop: str | None = None  # end a sample as soon as the generated text ends with this string
    num_samples: int = 1  # independent samples, each starting again from the prime
    unknown: str = "error"  # unknown prime symbols: error (refuse), skip (drop them), unk (words: read as <UNK>)
    sentences: int | None = None  # end a sample after this many sentence ends (None: only length ends it)
    no_unk: bool = False  # never emit <UNK> (word models): its probability is given to the other tokens

    def check(self) -> SampleConfig:
        """Raise ConfigError naming the first setting that cannot work; return self."""
        import math

        from charlm.errors import ConfigError

        t = self.temperature
        if not (math.isfinite(t) and t >= 0):
            raise ConfigError(
                "temperature",
                f"must be a number ≥ 0 (got {t:g}). Use 1 for the model's own distribution, "
                "0 for the most likely character.",
            )
        if self.top_k is not None and self.top_k < 1:
            raise ConfigError("top_k", f"must be at least 1 (got {self.top_k}). Leave it out to keep every character.")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ConfigError(
                "top_p", f"must be in (0, 1] (got {self.top_p:g}). Leave it out, or use 1, to keep every character."
            )
        if self.length < 0:
            raise ConfigError("length", f"must be 0 or more (got {self.length}).")
        if self.length > MAX_SAMPLE_LENGTH:
            raise ConfigError(
                "length",
                f"must be at most 10^15 (got {self.length}): at thousands of characters a second "
                "that is already millennia of text.",
            )
        if self.num_samples < 1:
            raise ConfigError("num_samples", f"must be at least 1 (got {self.num_samples}).")
        check_unknown_policy(self.unknown)
        if self.stop is not None and not self.stop:
            raise ConfigError("stop", "needs at least one character.")
        if self.seed is not None and self.seed < 0:
            raise ConfigError("seed", f"must be 0 or more (got {self.seed}).")
        if self.sentences is not None and self.sentences < 1:
            raise ConfigError("sentences", f"must be at least 1 (got {self.sentences}).")
        return self
