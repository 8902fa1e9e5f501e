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
