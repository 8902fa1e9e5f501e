"""Building a run's Trainer: the settings checked, the corpus read and checked, a fresh model.

``prepare_run`` starts a new run; ``charlm.resume`` builds on ``build_trainer``
and then restores the checkpoint into it. A word model (``words`` given) reads
its corpus as tokens (``charlm.wordcorpus``) and trains through the same Trainer.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from charlm import memory
from charlm.config import ModelConfig, TrainConfig, WordConfig
from charlm.corpus import CorpusScan, load_corpus
from charlm.model import CharModel
from charlm.runfolder import RunFolder
from charlm.train import Callbacks, Trainer
from charlm.vocab import Vocab
from charlm.wordvocab import WordVocab


def new_model(config: ModelConfig, vocab: Vocab | WordVocab, seed: int) -> CharModel:
    """A freshly initialised model of ``config``'s shape for ``vocab``'s characters or words."""
    return CharModel(replace(config, vocab_size=len(vocab)), seed=seed)


def prepare_run(
    corpus_path: Path,
    run_dir: Path | RunFolder,
    model_config: ModelConfig,
    config: TrainConfig,
    callbacks: Callbacks | None = None,
    started: float | None = None,
    words: WordConfig | None = None,
) -> Trainer:
    """Check the configs, read and check a corpus, build the vocabulary and model,
    and return a Trainer (see ``build_trainer``) that holds its run folder's lock
    (``RunFolder.lock``: RunFolderBusyError if another process has it). A folder that
    holds a run already is refused (UsageError), as a new run would overwrite it.
    ``words``: train a word model with this vocabulary (None: a character model)."""
    model_config.check()
    config.check()
    if words is not None:
        words.check()
    trainer = build_trainer(corpus_path, run_dir, model_config, config, callbacks, started, words=words)
    trainer.folder.lock()
    try:
        trainer.folder.refuse_overwrite()  # checked under the lock: no other run can start there now
    except BaseException:
        trainer.folder.release()
        raise
    return trainer


def build_trainer(
    corpus_path: Path,
    run_dir: Path | RunFolder,
    model_config: ModelConfig,
    config: TrainConfig,
    callbacks: Callbacks | None = None,
    started: float | None = None,
    check_memory: bool = True,
    words: WordConfig | None = None,
) -> Trainer:
    """A Trainer for a new model of ``model_config``'s shape on the corpus at ``corpus_path``.

    Everything that can be wrong with the input is found here, before the run
    folder is created: with ``check_memory``, also a run too large for the memory
    available (``memory.check_training``, once the corpus's vocabulary and length
    are known and before the text is encoded or the model built). The corpus is
    streamed, never held as one string (see ``corpus.load_corpus``,
    ``wordcorpus.load_word_corpus`` with ``words``); ``callbacks`` may ask for
    progress bars while it is read and receives one-line notices.
    ``started``: ``time.perf_counter()`` at the session's start-up, from which a
    budget in minutes counts (default: now, before the corpus is read).
    """
    started = time.perf_counter() if started is None else started
    callbacks = callbacks or Callbacks()

    def fits(scan: CorpusScan) -> None:
        length = getattr(scan, "n_tokens", scan.n_chars)  # ids: characters, or tokens of a word corpus
        memory.check_training(model_config, config, len(scan.vocab), length)

    if words is None:
        load = load_corpus
    else:
        from charlm.wordcorpus import load_word_corpus

        def load(path, config, **kw):
            return load_word_corpus(path, config, words, **kw)

    corpus = load(
        Path(corpus_path),
        config,
        progress=callbacks.show_reading,
        report=callbacks.on_notice,
        check=fits if check_memory else None,
    )
    model = new_model(model_config, corpus.vocab, config.seed)
    return Trainer(model, corpus, config, run_dir, callbacks, started)
