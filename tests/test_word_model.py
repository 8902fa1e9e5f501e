"""The word-level model end to end: corpus, checkpoint, train, sample, perplexity, score, info, runs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from charlm import checkpoint
from charlm.cli import run
from charlm.config import WORD_DEFAULTS, ModelConfig, SampleConfig, TrainConfig, WordConfig
from charlm.errors import CheckpointError, ConfigError, CorpusError
from charlm.model import CharModel
from charlm.prepare import prepare_run
from charlm.sample import Sampler
from charlm.vocab import Vocab
from charlm.wordcorpus import encode_word_stream, load_word_corpus
from charlm.words import EOS, SentenceEnds, tokenize
from charlm.wordvocab import EOS_ID, UNK_ID, WordVocab
from tests.conftest import SMALL_TEXT

WORD_TEXT = (
    "The apple and pair salad is good. The cat sat on the mat. A dog ran in the park!\n\n"
    "Is the pair of shoes new? Yes, the pair is new.\n"
) * 20
TINY = ["--hidden", "16", "--embed", "8", "--layers", "1", "--batch-size", "4", "--seq-len", "8", "--eval-every", "4"]


@pytest.fixture
def word_corpus(tmp_path: Path) -> Path:
    p = tmp_path / "words.txt"
    p.write_text(WORD_TEXT, encoding="utf-8")
    return p


def call(capsys, args: list[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    code = run(args)
    out, err = capsys.readouterr()
    return code, out, err


def one_line(code: int, out: str, err: str, expected_code: int, pattern: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert re.search(pattern, lines[0]), lines[0]
    assert code == expected_code and out == ""


# --------------------------------------------------------------------------- #
# Corpus and checkpoint
# --------------------------------------------------------------------------- #


def test_word_corpus_counts_and_clamps(word_corpus):
    notices = []
    corpus = load_word_corpus(
        word_corpus, TrainConfig(batch_size=4, seq_len=8), WordConfig(10_000), report=notices.append
    )
    tokens = tokenize(WORD_TEXT)
    assert len(corpus.ids) == len(tokens) and corpus.ids.dtype == np.uint16
    assert corpus.scan.n_sentences == tokens.count(EOS)
    distinct = len(set(tokens) - {EOS})
    assert len(corpus.vocab) == distinct + 2  # clamped: every token is kept, plus <EOS> and <UNK>
    assert notices and f"{distinct} distinct tokens, fewer than the 10,000 asked for" in notices[0]
    assert corpus.vocab.tokens[int(corpus.ids[0])] == "the"
    fp = corpus.fingerprint()
    assert (fp.tokens, fp.val_tokens, fp.unknown_tokens, fp.val_chars) == (len(tokens), corpus.n_val, 0, None)
    small = load_word_corpus(word_corpus, TrainConfig(batch_size=4, seq_len=8), WordConfig(3))
    assert small.vocab.words == ["the", ".", "is"]  # the most frequent; ".", "is" and "pair" tie, in code-point order
    assert small.fingerprint().unknown_tokens == int((small.ids == UNK_ID).sum()) > 0


def test_word_corpus_with_one_sentence_is_refused(tmp_path):
    p = tmp_path / "one.txt"
    p.write_text("just one sentence without an end " * 50, encoding="utf-8")
    with pytest.raises(CorpusError, match="1 sentence"):
        load_word_corpus(p, TrainConfig(batch_size=2, seq_len=4), WordConfig(10))


def test_vocab_size_checked():
    with pytest.raises(ConfigError):
        WordConfig(0).check()
    with pytest.raises(ConfigError):
        WordConfig(65_535).check()
    assert WordConfig(65_534).check().vocab_size == 65_534


def save_word_model(path: Path, vocab: WordVocab, **state) -> CharModel:
    model = CharModel(ModelConfig(len(vocab), embed=4, hidden=8, layers=1), seed=1)
    checkpoint.save(path, model, vocab, state or {"step": 1}, {"name": "words.txt", "tokens": 9, "val_tokens": 1})
    return model


def test_checkpoint_records_the_unit(tmp_path, tiny_checkpoint):
    vocab = WordVocab(["the", "apple", "pair", "."], lowercase=True)
    path = tmp_path / "w.safetensors"
    save_word_model(path, vocab)
    header, meta = checkpoint.read_header(path)
    assert meta["unit"] == "word" and json.loads(meta["vocab"])["words"] == ["the", "apple", "pair", "."]
    ck = checkpoint.load(path)
    assert ck.vocab == vocab and ck.vocab.unit == "word" and ck.corpus.tokens == 9
    # a character checkpoint has no unit field, as every checkpoint before word models: it loads as characters
    _, char_meta = checkpoint.read_header(tiny_checkpoint)
    assert "unit" not in char_meta and checkpoint.load(tiny_checkpoint).vocab.unit == "char"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda m: m.update(unit="words"), "unit"),
        (lambda m: m.update(vocab=json.dumps({"words": ["the", "the", "a", "."], "lowercase": True})), "vocab.words"),
        (lambda m: m.update(vocab=json.dumps({"words": ["the", "a b", "x", "."], "lowercase": True})), "vocab.words"),
        (lambda m: m.update(vocab=json.dumps({"words": ["the", "apple", "."], "lowercase": True})), "vocab_size"),
        (lambda m: m.update(vocab=json.dumps(["t", "h"])), "vocab"),
        (lambda m: m.pop("unit"), "vocab"),  # a word vocabulary read as characters
    ],
)
def test_damaged_word_header_is_refused(tmp_path, change, field):
    from safetensors.numpy import load_file, save_file

    path = tmp_path / "w.safetensors"
    save_word_model(path, WordVocab(["the", "apple", "pair", "."]))
    _, meta = checkpoint.read_header(path)
    change(meta)
    save_file(load_file(path), path, metadata=meta)
    with pytest.raises(CheckpointError, match=re.escape(field)):
        checkpoint.load(path)


def test_word_text_to_score_starts_after_eos(tmp_path):
    vocab = WordVocab(["the", "apple", "and", "salad", "."])
    p = tmp_path / "t.txt"
    p.write_text("The apple and pear salad.", encoding="utf-8")
    text = encode_word_stream(p, vocab)
    assert text.ids.tolist() == [EOS_ID, 2, 3, 4, UNK_ID, 5, 6, EOS_ID]
    assert (text.tokens, text.chars, dict(text.unknown)) == (7, 25, {"pear": 1})


# --------------------------------------------------------------------------- #
# Sampling
# --------------------------------------------------------------------------- #


def word_sampler(**settings) -> Sampler:
    vocab = WordVocab(["the", "apple", "pair", "."])
    model = CharModel(ModelConfig(len(vocab), embed=4, hidden=8, layers=1), seed=1)
    model.params["decoder.bias"][UNK_ID] = 5.0  # <UNK> is the most likely token by far
    return Sampler(model, vocab, SampleConfig(**settings))


def test_no_unk_never_draws_unk():
    assert "<UNK>" in list(word_sampler(seed=0, length=200).generate())
    for settings in ({}, {"temperature": 0.0}, {"top_k": 2}, {"top_p": 0.5}):
        tokens = list(word_sampler(seed=0, length=300, no_unk=True, **settings).generate())
        assert len(tokens) == 300 and "<UNK>" not in tokens


def test_sentences_stop_after_n_eos():
    tokens = list(word_sampler(seed=1, length=10_000, sentences=3).generate())
    assert tokens.count(EOS) == 3 and tokens[-1] == EOS


def test_word_options_refused_for_characters(tiny_checkpoint):
    ck = checkpoint.load(tiny_checkpoint)
    with pytest.raises(ConfigError, match="no <UNK>"):
        Sampler(ck.build_model(), ck.vocab, SampleConfig(no_unk=True))
    with pytest.raises(ConfigError):
        SampleConfig(sentences=0).check()


def test_character_sentences_stop_at_sentence_ends(tiny_checkpoint):
    ck = checkpoint.load(tiny_checkpoint)
    text = "".join(Sampler(ck.build_model(), ck.vocab, SampleConfig(seed=2, length=100_000, sentences=2)).generate())
    ends = SentenceEnds()
    marks = [i for i, ch in enumerate(text) if ends(ch)]
    assert len(marks) == 2 and marks[-1] == len(text) - 1


# --------------------------------------------------------------------------- #
# Training
# --------------------------------------------------------------------------- #


def test_tiny_word_model_overfits_a_short_text(tmp_path, word_corpus):
    """A repeated text of five sentences: a small LSTM learns it to well under the
    ln V nats/word of a uniform guess."""
    cfg = TrainConfig(batch_size=4, seq_len=16, steps=200, eval_every=100, lr=1e-2, threads=1, warmup=10)
    trainer = prepare_run(
        word_corpus, tmp_path / "run", ModelConfig(embed=16, hidden=32, layers=1, dropout=0.0), cfg, words=WordConfig()
    )
    summary = trainer.run()
    V = len(trainer.vocab)
    assert summary.best_val < 0.3 < np.log(V)
    ck = checkpoint.load(tmp_path / "run" / "best.safetensors")
    assert ck.vocab.unit == "word" and ck.warmed is not None


# --------------------------------------------------------------------------- #
# The command line
# --------------------------------------------------------------------------- #


@pytest.fixture
def word_run(tmp_path, word_corpus, monkeypatch, capsys) -> Path:
    monkeypatch.chdir(tmp_path)
    args = ["train", str(word_corpus), "--unit", "word", "--vocab-size", "12", "--steps", "6", *TINY]
    code, out, err = call(capsys, args)
    assert code == 0, err
    assert "nats/word" in out and "words/s" in out and re.search(r"\(\d[\d,]* words\)", out), out
    assert "nats/word" in err and "fewer than" not in err  # 12 of the ~25 distinct tokens: no notice
    return tmp_path / "runs" / "words"


def test_word_defaults_yield_to_given_values(tmp_path, word_corpus, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, _, err = call(
        capsys, ["train", str(word_corpus), "--unit", "word", "--steps", "1", "--dropout", "0.1", *TINY]
    )
    assert code == 0, err
    ck = checkpoint.load(tmp_path / "runs" / "words" / "last.safetensors")
    assert ck.config.dropout == 0.1 and WORD_DEFAULTS["dropout"] != 0.1
    assert (ck.config.embed, ck.config.hidden) == (8, 16) and ck.train_config.seq_len == 8


def test_cli_word_model(word_run, capsys):
    code, out, err = call(capsys, ["info", str(word_run)])
    assert code == 0
    fields = dict(re.match(r"(\S.*?)\s{2,}(.*)", line).groups() for line in out.splitlines() if line.strip())
    assert fields["unit"] == "word"
    assert checkpoint.load(word_run / "best.safetensors").config.dropout == WORD_DEFAULTS["dropout"]  # not given
    assert fields["vocabulary"].startswith("14 tokens: the 12 most frequent")
    assert "OOV rate" in fields["corpus"] and "nats/word" in fields["best validation"]
    code, out, _ = call(capsys, ["info", str(word_run), "--json"])
    info = json.loads(out)
    assert info["unit"] == "word" and info["vocab_size"] == 14 and info["corpus"]["unknown_tokens"] > 0

    code, _, err = call(capsys, ["export", str(word_run), "shared.safetensors", "--half"])
    assert code == 0, err
    shared = checkpoint.load(Path("shared.safetensors"))
    assert shared.vocab.unit == "word" and shared.warmed is not None and shared.extra == {}

    code, out, _ = call(capsys, ["runs"])
    assert code == 0 and "best val nats/unit" in out and "word, V=14" in out

    code, out, err = call(capsys, ["sample", "--sentences", "3", "--seed", "1"])
    assert code == 0, err
    assert out.count("\n") == 3 and out.endswith("\n")  # one sentence per line
    assert all(line[:1].isupper() or not line[:1].isalpha() for line in out.splitlines())

    code, out, err = call(capsys, ["sample", "--length", "40", "--no-unk", "--seed", "1"])
    assert code == 0 and "<UNK>" not in out and out.strip()

    code, out, err = call(capsys, ["sample", "--length", "5", "--prime", "The zebra and", "--seed", "1"])
    assert code == 0 and out.startswith("The zebra and")
    assert "read 1 word(s) of the prime as <UNK>: 'zebra'" in err


def test_cli_word_perplexity_and_score(word_run, word_corpus, capsys):
    code, out, err = call(capsys, ["perplexity", str(word_corpus)])
    assert code == 0, err
    values = {line.split()[0]: line.split()[1] for line in out.splitlines()}
    tokens = tokenize(WORD_TEXT)
    assert f"{len(tokens):,} tokens" in out
    nats_word, nats_char = float(values["nats/word"]), float(values["nats/char"])
    assert nats_char == pytest.approx(nats_word * len(tokens) / len(WORD_TEXT), rel=1e-3)
    assert "OOV rate" in out and "read" in err and "<UNK>" in err
    js = json.loads(call(capsys, ["perplexity", str(word_corpus), "--json"])[1])
    assert js["unit"] == "word" and js["tokens"] == len(tokens) and 0 < js["oov_rate"] < 1

    # The notes' speech-recognition example: the corpus has pair and never pear.
    code, out, err = call(capsys, ["score", "The apple and pear salad.", "The apple and pair salad."])
    assert code == 0, err
    assert "nats/word" in out and "pear" in out and "pair" in out
    assert re.search(r"sentence 1 has words the model does not know, scored as <UNK>: 'pear'", err)
    rows = json.loads(call(capsys, ["score", "The apple and pair salad.", "--json"])[1])
    assert rows[0]["tokens"] == 7 and "nats_per_word" in rows[0]  # six tokens and the <EOS> that ends it
    code, out, err = call(capsys, ["score", "-c", str(word_run), "The apple and pear salad.", "--unknown", "error"])
    one_line(code, out, err, 1, r"2 word\(s\) not in the model's vocabulary: 'pear', 'salad' \(sentence 1\)")


@pytest.mark.slow
def test_console_script_word_model(tmp_path, word_corpus):
    from tests.test_cli import run_cli

    args = ["train", str(word_corpus), "--unit", "word", "--vocab-size", "20", "--steps", "4", *TINY]
    assert run_cli(*args, cwd=tmp_path).returncode == 0
    s = run_cli("sample", "--sentences", "2", "--seed", "0", cwd=tmp_path)
    assert s.returncode == 0 and s.stdout.count("\n") == 2
    p = run_cli("score", "The apple and pear salad.", "The apple and pair salad.", cwd=tmp_path)
    assert p.returncode == 0 and "'pear'" in p.stderr


BAD = [
    (["train", "words.txt", "--unit", "word", "--vocab-size", "0", *TINY, "--steps", "1"], 2, r"--vocab-size must be"),
    (["train", "words.txt", "--unit", "word", "--vocab-size", "70000", *TINY], 2, r"--vocab-size must be at most"),
    (["train", "words.txt", "--vocab-size", "100", *TINY], 2, r"--vocab-size is for word models"),
    (["train", "words.txt", "--no-lowercase", *TINY], 2, r"--no-lowercase is for word models"),
    (["train", "words.txt", "--unit", "letters", *TINY], 2, r"--unit 'letters'"),
    (["train", "one.txt", "--unit", "word", *TINY], 1, r"one\.txt: 1 sentence\(s\); a word model .*needs at least 2"),
    (["train", "words.txt", "--unit", "word", "--batch-size", "64", "--seq-len", "64"], 1, r"tokens, too short"),
    (["train", "words.txt", "--resume", "--unit", "word"], 2, r"--unit cannot be combined with --resume"),
    (["sample", "-c", "tiny.safetensors", "--no-unk"], 2, r"--no-unk is for word models"),
    (["sample", "-c", "tiny.safetensors", "--unknown", "unk"], 2, r"--unknown is for word models"),
    (["sample", "-c", "tiny.safetensors", "--sentences", "0"], 2, r"--sentences must be at least 1"),
    (["sample", "-c", "w.safetensors", "--stop", "x"], 2, r"--stop is for character models"),
    (["sample", "-c", "w.safetensors", "--prime", "zebra", "--unknown", "error"], 1, r"1 word\(s\) not in the model"),
    (["score", "-c", "tiny.safetensors", "--unknown", "unk", "Hi."], 2, r"--unknown 'unk' is for word models"),
    (["score", "-c", "w.safetensors", "   "], 1, r"sentence 1: no word to score"),
    (["perplexity", "-c", "w.safetensors", "words.txt", "--show"], 2, r"--show colours characters"),
]


@pytest.mark.parametrize(("args", "code", "pattern"), BAD, ids=[" ".join(a[:4]) for a, _, _ in BAD])
def test_bad_word_input_is_one_line(tmp_path, monkeypatch, capsys, args, code, pattern):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CHARLM_CACHE", str(tmp_path / "cache"))
    (tmp_path / "words.txt").write_text(WORD_TEXT, encoding="utf-8")
    (tmp_path / "one.txt").write_text("no sentence end here " * 200, encoding="utf-8")
    save_word_model(tmp_path / "w.safetensors", WordVocab(["the", "apple", "pair", "."]))
    vocab = Vocab.from_text(SMALL_TEXT)  # a character checkpoint beside it
    checkpoint.save(
        tmp_path / "tiny.safetensors", CharModel(ModelConfig(len(vocab), embed=4, hidden=8, layers=1)), vocab, {}
    )
    before = sorted(p.name for p in tmp_path.rglob("*"))
    one_line(*call(capsys, args), code, pattern)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written


def test_shipped_character_models_are_unchanged(capsys):
    """The shipped models are character models: no unit field, sampling as before."""
    from charlm.corpora import shipped_model

    for name in ("shakespeare", "news"):
        path = shipped_model(name)
        assert "unit" not in checkpoint.read_header(path)[1]
        assert checkpoint.load(path).vocab.unit == "char"
    code, out, _ = call(capsys, ["info", "news"])
    assert code == 0 and re.search(r"unit\s+char", out) and "characters" in out


def test_chunk_table_is_the_rows_of_the_input_table():
    """A word model projects only a chunk's rows (V > T·B); they are the table's rows for those ids,
    and the gradient checks of tests/test_model.py cover both ways (V = 13 > T·B = 12 there)."""
    model = CharModel(ModelConfig(vocab_size=50, embed=6, hidden=5, layers=2), dtype=np.float64, seed=0)
    ids = np.random.default_rng(0).integers(0, 50, (3, 4))
    np.testing.assert_allclose(model.chunk_table(ids), model.input_table()[ids.reshape(-1)], rtol=1e-12)


def test_word_run_resumes_with_its_own_vocabulary(word_run, word_corpus, capsys):
    """--resume needs no word option: the checkpoint's vocabulary rebuilds the same ids."""
    code, out, err = call(capsys, ["train", str(word_corpus), "--resume", str(word_run), "--steps", "8"])
    assert code == 0, err
    assert "resuming" in err and "nats/word" in out
    assert checkpoint.load(word_run / "last.safetensors").state.step == 8
    assert checkpoint.load(word_run / "last.safetensors").vocab == checkpoint.load(word_run / "best.safetensors").vocab


def test_word_corpus_ids_do_not_depend_on_blocks(word_corpus, monkeypatch):
    """The corpus is split into tokens TOKEN_BLOCK characters at a time; any block size gives the same ids."""
    import charlm.wordcorpus as wc

    config, words = TrainConfig(batch_size=4, seq_len=8), WordConfig(15)
    whole = load_word_corpus(word_corpus, config, words)
    monkeypatch.setattr(wc, "TOKEN_BLOCK", 7)
    cut = load_word_corpus(word_corpus, config, words)
    assert cut.vocab == whole.vocab and np.array_equal(cut.ids, whole.ids)
    assert len(whole.ids) == len(tokenize(WORD_TEXT))
