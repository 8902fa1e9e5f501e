"""Settings as objects: each a dataclass with a comment on every default.

The CLI builds them from its options, the checkpoint stores them, and the rest
of charlm takes them as they are.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild the network; stored in every checkpoint."""

    vocab_size: int  # V: distinct characters
    cell: str = "lstm"  # recurrent cell: lstm, gru or rnn
    embed: int = 64  # E: embedding width
    hidden: int = 256  # H: hidden units per recurrent layer
    layers: int = 2  # N: stacked recurrent layers
    dropout: float = 0.0  # inverted-dropout probability between layers and before the decoder
    forget_bias: float = 0.0  # initial LSTM forget-gate bias b_f (init only; ignored by GRU/RNN)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        # checkpoints written before forget_bias was a setting were initialised with 1
        return cls(**{"forget_bias": 1.0, **d})


@dataclass
class TrainConfig:
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


# --------------------------------------------------------------------------- #
# Sampling (appended: the settings of charlm.sample)
# --------------------------------------------------------------------------- #

UNKNOWN_POLICIES = ("error", "skip")  # characters the model has never seen: refuse and list them, or drop them


def check_unknown_policy(policy: str, setting: str = "unknown") -> None:
    """Raise ConfigError unless ``policy`` is one of UNKNOWN_POLICIES."""
    from charlm.errors import ConfigError

    if policy not in UNKNOWN_POLICIES:
        raise ConfigError(setting, f"must be 'error' or 'skip', not {policy!r}.")


@dataclass(frozen=True)
class SampleConfig:
    """How text is drawn from a model (see charlm.sample); ``check`` says what cannot work.

    Greedy decoding is temperature 0: the argmax, the same text for every seed.
    """

    length: int = 200  # characters generated per sample, not counting the prime
    temperature: float = 1.0  # τ: logits are divided by it before the softmax; 0 takes the argmax
    top_k: int | None = None  # draw only from the k most likely characters (None: no cut)
    top_p: float | None = None  # nucleus: the smallest set of most likely characters with mass ≥ p (None: no cut)
    seed: int | None = None  # seeds the uniform numbers of the draws (None: fresh entropy every run)
    stop: str | None = None  # end a sample as soon as the generated text ends with this string
    num_samples: int = 1  # independent samples, each starting again from the prime
    unknown: str = "error"  # prime characters the model has never seen: error (refuse) or skip (drop them)

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
        if self.num_samples < 1:
            raise ConfigError("num_samples", f"must be at least 1 (got {self.num_samples}).")
        check_unknown_policy(self.unknown)
        if self.stop is not None and not self.stop:
            raise ConfigError("stop", "needs at least one character.")
        if self.seed is not None and self.seed < 0:
            raise ConfigError("seed", f"must be 0 or more (got {self.seed}).")
        return self
