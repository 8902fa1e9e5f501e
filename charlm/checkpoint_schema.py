"""What a checkpoint's header may hold: one table of fields with their types and
ranges, checked when a checkpoint is read, before anything else sees a value.

``parse`` turns the ``__metadata__`` strings and the tensor entries of a safetensors
header (already checked as safetensors by ``charlm.checkpoint.read_header``) into
typed objects — ModelConfig, Vocab (or WordVocab when ``unit`` is "word"; absent:
characters), TrainState with its TrainConfig, CorpusFingerprint — or raises a
CheckpointError of kind "bad_header" that names the field (``train.step``,
``config.hidden``, ``vocab[3]``, ``tensor 'decoder.bias'``) and what is wrong with it.
Checked:

* types as JSON spells them: an integer is neither ``true`` nor ``3.0``; a number is
  finite (no NaN, no infinity); an integer fits a signed 64-bit counter;
* ranges: the settings' own checks (``ModelConfig.check``, ``TrainConfig.check``),
  counters and clocks ≥ 0, a text encoding Python knows, a sha256 of 64 hex digits,
  a PCG64 generator state;
* agreement: the vocabulary's size, best step ≤ step, held-out ≤ all characters, and
  exactly the tensors the config implies, with their shapes (beside them, for
  resuming: Adam's two moments and the carried state of every layer; for sampling:
  the sampler's warmed-up state of every layer, with the ``warm_up`` field).

Checkpoints of older charlm versions keep loading: a field added later may be absent
and then means what its absence meant when it was written (see the tables).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path

from charlm.config import CELL_NAMES, ERROR_POLICIES, STORED_WITH_CORPUS, UNITS, ModelConfig, TrainConfig, TrainState
from charlm.corpus import CorpusFingerprint
from charlm.errors import CharlmError, CheckpointError, ConfigError
from charlm.model import CELLS, CharModel
from charlm.text import check_decoding
from charlm.vocab import MAX_VOCAB, Vocab
from charlm.wordvocab import MAX_WORDS, SPECIALS, WordVocab

INT, NUMBER, STR, BOOL = "an integer", "a number", "a string", "true or false"
MAX_COUNT = 2**63 - 1  # every integer fits a signed 64-bit counter (NumPy's int64)


@dataclass(frozen=True)
class Spec:
    """One header field: its JSON type, its range, and whether it may be null or absent."""

    kind: str  # INT, NUMBER, STR or BOOL
    low: float | None = None  # smallest value allowed (None: no bound below)
    high: float | None = None  # largest value allowed (None: MAX_COUNT for an integer, no bound for a number)
    null: bool = False  # null allowed (None in the typed object: not recorded)
    required: bool = False  # must be present (otherwise absent means the default)
    rule: Callable[[object], str | None] | None = None  # a further check: the problem, or None


class Bad(Exception):
    """A field that breaks the schema: ``field`` and ``problem`` (the rest of the sentence)."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field} {problem}")
        self.field, self.problem = field, problem


def _sha256(v: str) -> str | None:
    return None if re.fullmatch(r"[0-9a-f]{64}", v) else f"must be 64 lowercase hexadecimal digits, not {show(v)}"


def _encoding(v: str) -> str | None:
    try:
        check_decoding(v, "strict")
    except (CharlmError, ValueError):  # ValueError: a NUL in the name
        return f'must name a text encoding Python knows (such as "utf-8"), not {show(v)}'
    return None


def _one_of(choices: tuple[str, ...]) -> Callable[[str], str | None]:
    listed = " or ".join(json.dumps(c) for c in choices)
    return lambda v: None if v in choices else f"must be {listed}, not {show(v)}"


# config (ModelConfig): written in full by every version; the ranges are ModelConfig.check's.
MODEL = {
    "vocab_size": Spec(INT, required=True),
    "cell": Spec(STR, required=True, rule=_one_of(CELL_NAMES)),
    "embed": Spec(INT, required=True),
    "hidden": Spec(INT, required=True),
    "layers": Spec(INT, required=True),
    "dropout": Spec(NUMBER, required=True),
    "forget_bias": Spec(NUMBER),  # absent before it was a setting: 1 for an LSTM (ModelConfig.from_dict)
}


def _field_specs(cls: type, skip: tuple[str, ...] = ()) -> dict[str, Spec]:
    """A Spec per field of the dataclass ``cls``, its kind and nullability read from the
    annotation ("int", "float | None" …), so a setting added there is checked here too."""
    kinds = {"int": INT, "float": NUMBER, "str": STR, "bool": BOOL}
    specs = {}
    for f in fields(cls):
        if f.name not in skip:
            base, *rest = (t.strip() for t in str(f.type).split("|"))
            specs[f.name] = Spec(kinds[base], null="None" in rest)
    return specs


# train.config (TrainConfig): absent fields keep their defaults; the ranges are TrainConfig.check's;
# how the text is read is stored with the corpus.
TRAIN_CONFIG = _field_specs(TrainConfig, skip=STORED_WITH_CORPUS)
# train (TrainState): an exported model keeps only its history; rng, config and val_curve: below.
TRAIN = {
    "step": Spec(INT, 0),
    "epoch": Spec(INT, 0),
    "position": Spec(INT, 0),
    "total_steps": Spec(INT, 0, null=True),
    "best_val": Spec(NUMBER, 0, null=True),  # null: no validation yet
    "best_step": Spec(INT, 0),  # at most step (checked below)
    "best_sample_val": Spec(NUMBER, 0, null=True),  # absent in checkpoints written before it existed
    "chars_seen": Spec(INT, 0),
    "elapsed": Spec(NUMBER, 0),
    "train_seconds": Spec(NUMBER, 0),
    "adam_t": Spec(INT, 0),
}
# train.rng: NumPy's PCG64 bit_generator.state, the dropout generator's.
RNG = {
    "bit_generator": Spec(STR, required=True, rule=_one_of(("PCG64",))),
    "has_uint32": Spec(INT, 0, 1, required=True),
    "uinteger": Spec(INT, 0, 2**32 - 1, required=True),
}
PCG64_STATE = {"state": Spec(INT, 0, 2**128 - 1, required=True), "inc": Spec(INT, 0, 2**128 - 1, required=True)}
# corpus (CorpusFingerprint): any field may be absent or null (not recorded by an older version).
CORPUS = {
    "name": Spec(STR, null=True),
    "sha256": Spec(STR, null=True, rule=_sha256),
    "chars": Spec(INT, 0, null=True),
    "val_chars": Spec(INT, 0, null=True),  # at most chars (checked below)
    "encoding": Spec(STR, null=True, rule=_encoding),
    "errors": Spec(STR, null=True, rule=_one_of(ERROR_POLICIES)),
    "nfc": Spec(BOOL, null=True),
    "crlf_as_lf": Spec(BOOL, null=True),
    "tokens": Spec(INT, 0, null=True),  # word models only, as the two below
    "val_tokens": Spec(INT, 0, null=True),  # at most tokens (checked below)
    "unknown_tokens": Spec(INT, 0, null=True),  # at most tokens (checked below)
}
# warm_up (charlm.sample.Warmed): absent in a model stored without it, and in older checkpoints.
WARM = {
    "first": Spec(INT, 0, required=True),  # below the vocabulary's size (checked below)
    "chars": Spec(INT, 0, required=True),
    "seed": Spec(INT, 0, required=True),
}
OPTIMIZER_TENSORS = ("optimizer.exp_avg", "optimizer.exp_avg_sq")  # Adam's m and v, (P,) each
STATE_TENSOR = re.compile(r"state\.([a-z]+)_l(0|[1-9][0-9]{0,2})")  # carried state, (B, H) per name and layer
WARM_TENSOR = re.compile(r"warm\.([a-z]+)_l(0|[1-9][0-9]{0,2})")  # warmed-up sampler state, (H,) per name and layer


def warm_tensor_names(config: ModelConfig) -> list[tuple[str, ...]]:
    """The tensors of a stored warmed-up state, per layer one name per state part (LSTM: a, c)."""
    return [tuple(f"warm.{n}_l{k}" for n in CELLS[config.cell].state_names) for k in range(config.layers)]


@dataclass(frozen=True)
class Metadata:
    """A checkpoint's metadata, read once into typed objects."""

    config: ModelConfig  # the network
    vocab: Vocab | WordVocab  # its characters, or its words (a word model: meta "unit" is "word")
    state: TrainState | None = None  # where training stood, with its TrainConfig (None: not recorded)
    corpus: CorpusFingerprint | None = None  # the text it was trained on (None: not recorded)
    warm_up: dict | None = None  # first, chars and seed of the stored warmed-up state (None: not stored)


def show(value: object, limit: int = 40) -> str:
    """A value as JSON spells it (true, null, "abc", NaN), cut to ``limit`` characters."""
    if isinstance(value, list | dict):
        return "a list" if isinstance(value, list) else "a JSON object"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**limit:
        return f"an integer of {len(str(abs(value)))} digits"
    text = json.dumps(value if not isinstance(value, str) else value[: limit + 1])
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _num(x: float) -> str:
    return f"{x:,}" if isinstance(x, int) else f"{x:g}"


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


IS_TYPE = {
    INT: _is_int,
    NUMBER: lambda v: _is_int(v) or isinstance(v, float),
    STR: lambda v: isinstance(v, str),
    BOOL: lambda v: isinstance(v, bool),
}


def value(field: str, spec: Spec, v: object) -> object:
    """``v`` if it has the type and range of ``spec``; otherwise Bad naming ``field``."""
    if v is None:
        if spec.null:
            return None
        raise Bad(field, f"must be {spec.kind}, not null")
    if not IS_TYPE[spec.kind](v):
        raise Bad(field, f"must be {spec.kind}{' or null' if spec.null else ''}, not {show(v)}")
    if spec.kind == NUMBER and not (abs(v) <= MAX_COUNT if _is_int(v) else math.isfinite(v)):
        raise Bad(field, f"must be a finite number, not {show(v)}")
    high = MAX_COUNT if spec.high is None and spec.kind == INT else spec.high
    if spec.low is not None and v < spec.low:
        raise Bad(field, f"must be at least {_num(spec.low)}, not {show(v)}")
    if high is not None and v > high:
        raise Bad(field, f"must be at most {_num(high)}, not {show(v)}")
    problem = spec.rule(v) if spec.rule is not None else None
    if problem:
        raise Bad(field, problem)
    return v


def section(name: str, d: object, table: dict[str, Spec], known_only: bool = False) -> dict:
    """The fields of the JSON object ``d`` that ``table`` lists, each checked; fields it
    does not list are ignored, or refused with ``known_only``."""
    if not isinstance(d, dict):
        raise Bad(name, f"must be a JSON object, not {show(d)}")
    for key, spec in table.items():
        if spec.required and key not in d:
            raise Bad(f"{name}.{key}", "is missing")
    if known_only:
        for key in d:
            if key not in table:
                raise Bad(f"{name}.{show(key, 30).strip(chr(34))}", "is not a field charlm knows")
    return {key: value(f"{name}.{key}", spec, d[key]) for key, spec in table.items() if key in d}


def _checked(prefix: str, check: Callable[[], object]) -> None:
    """Run a settings object's own ``check``; its ConfigError becomes Bad for ``prefix.<setting>``."""
    try:
        check()
    except ConfigError as e:  # its first sentence: the rest advises on a setting given, not a file
        raise Bad(f"{prefix}.{e.setting}", e.problem.split(". ")[0].rstrip(".")) from None


def _json(meta: dict, key: str) -> object:
    """Metadata ``key`` parsed as JSON."""
    try:
        return json.loads(meta[key])
    except KeyError:
        raise Bad(key, "is missing") from None
    except (ValueError, RecursionError):  # bad JSON, too deep, or an integer of more than 4,300 digits
        raise Bad(key, "is not valid JSON") from None


def model_config(d: object) -> ModelConfig:
    config = ModelConfig.from_dict(section("config", d, MODEL, known_only=True))
    _checked("config", config.check)
    return config


def vocab(cps: object, size: int) -> Vocab:
    """The vocabulary: distinct code points of characters (no surrogates), sorted, ``size`` of them."""
    if not isinstance(cps, list):
        raise Bad("vocab", f"must be a list of code points, not {show(cps)}")
    if not 1 <= len(cps) <= MAX_VOCAB:
        raise Bad("vocab", f"must hold 1 to {MAX_VOCAB:,} characters, not {len(cps):,}")
    for i, c in enumerate(cps):
        if not (_is_int(c) and 0 <= c <= 0x10FFFF and not 0xD800 <= c <= 0xDFFF):
            raise Bad(f"vocab[{i}]", f"must be the code point of a character, not {show(c)}")
        if i and c <= cps[i - 1]:
            raise Bad(f"vocab[{i}]", "repeats a character" if c == cps[i - 1] else "is out of order (stored sorted)")
    if len(cps) != size:
        raise Bad("config.vocab_size", f"is {size:,}, but the vocabulary has {len(cps):,} characters")
    return Vocab("".join(map(chr, cps)))


def word_vocab(d: object, size: int) -> WordVocab:
    """A word vocabulary: ``words``, size − 2 distinct tokens (non-empty strings without whitespace,
    neither <EOS> nor <UNK>, which take ids 0 and 1); ``lowercase``, true or false."""
    if not isinstance(d, dict):
        raise Bad("vocab", f"must be a JSON object (a word model's vocabulary), not {show(d)}")
    lowercase = section("vocab", d, {"lowercase": Spec(BOOL, required=True)})["lowercase"]
    words = d.get("words")
    if not (isinstance(words, list) and 1 <= len(words) <= MAX_WORDS):
        raise Bad("vocab.words", f"must be a list of 1 to {MAX_WORDS:,} tokens, not {show(words)}")
    for i, w in enumerate(words):
        if not isinstance(w, str) or not w or any(c.isspace() for c in w) or w in SPECIALS:
            raise Bad(f"vocab.words[{i}]", f"must be a token (a string without whitespace), not {show(w)}")
    if len(set(words)) != len(words):
        raise Bad("vocab.words", "repeats a token")
    if len(words) + len(SPECIALS) != size:
        raise Bad("config.vocab_size", f"is {size:,}, but the vocabulary has {len(words) + len(SPECIALS):,} tokens")
    return WordVocab(words, lowercase)


def _val_curve(curve: object) -> None:
    """[step, loss] pairs; a loss is ≥ 0, or NaN for a validation without held-out text."""
    if not isinstance(curve, list):
        raise Bad("train.val_curve", f"must be a list of [step, loss] pairs, not {show(curve)}")
    for i, pair in enumerate(curve):
        if not (isinstance(pair, list) and len(pair) == 2):
            raise Bad(f"train.val_curve[{i}]", f"must be a [step, loss] pair, not {show(pair)}")
        value(f"train.val_curve[{i}][0]", Spec(INT, 0), pair[0])
        loss = pair[1]
        if not (isinstance(loss, float) and math.isnan(loss)):
            value(f"train.val_curve[{i}][1]", Spec(NUMBER, 0), loss)


def train_state(d: object) -> TrainState | None:
    """The training state (None when not recorded), its settings checked as a run's are."""
    if not isinstance(d, dict):
        raise Bad("train", f"must be a JSON object, not {show(d)}")
    if not d:
        return None
    values = section("train", d, TRAIN)
    if values.get("best_step", 0) > values.get("step", 0):
        raise Bad("train.best_step", f"is {values['best_step']:,}, after the last step, {values.get('step', 0):,}")
    if d.get("rng") is not None:
        section("train.rng", d["rng"], RNG)
        section("train.rng.state", d["rng"].get("state"), PCG64_STATE)
    if d.get("config") is not None:
        _checked("train.config", TrainConfig.from_dict(section("train.config", d["config"], TRAIN_CONFIG)).check)
    _val_curve(d.get("val_curve", []))
    return TrainState.from_dict(d)


def corpus_fingerprint(d: object) -> CorpusFingerprint | None:
    """The corpus fingerprint (None when not recorded)."""
    values = section("corpus", d, CORPUS)
    if (
        values.get("val_chars") is not None
        and values.get("chars") is not None
        and values["val_chars"] > values["chars"]
    ):
        raise Bad("corpus.val_chars", f"is {values['val_chars']:,}, more than all {values['chars']:,} characters")
    for key in ("val_tokens", "unknown_tokens"):
        if values.get(key) is not None and values.get("tokens") is not None and values[key] > values["tokens"]:
            raise Bad(f"corpus.{key}", f"is {values[key]:,}, more than all {values['tokens']:,} tokens")
    return CorpusFingerprint.from_dict(values) if d else None


def warm_up(d: object, size: int) -> dict | None:
    """The ``warm_up`` field of a stored warmed-up state (None when there is none)."""
    if d is None:
        return None
    values = section("warm_up", d, WARM)
    if values["first"] >= size:
        raise Bad("warm_up.first", f"is {values['first']:,}, not the id of one of the {size:,} characters")
    return values


def tensors(header: dict, config: ModelConfig, state: TrainState | None, warm: bool = False) -> None:
    """Exactly the tensors ``config`` implies, with their shapes; for resuming also Adam's
    moments (P,) and the carried state (B, H) of every layer (B: the stored batch size);
    with ``warm`` (a ``warm_up`` field) the warmed-up state (H,) of every layer, else none."""
    shapes = CharModel.param_shapes(config)
    names = CELLS[config.cell].state_names
    if warm:
        shapes = shapes | {n: (config.hidden,) for layer in warm_tensor_names(config) for n in layer}
    model = f"a {config.layers}×{config.hidden} {config.cell.upper()} (embedding {config.embed}, {config.vocab_size} characters)"
    batch = state.config.batch_size if state is not None and state.config is not None else None
    for name, entry in header.items():
        shape = tuple(entry["shape"])
        match = STATE_TENSOR.fullmatch(name)
        if name in shapes:
            want = shapes[name]
        elif name in OPTIMIZER_TENSORS:
            want = (CharModel.count_params(config),)
        elif match and match[1] in names and int(match[2]) < config.layers:
            want = (batch if batch is not None else (shape or (0,))[0], config.hidden)
        elif WARM_TENSOR.fullmatch(name) and not warm:
            raise Bad(f"tensor {show(name)}", "is a warmed-up state without its warm_up field")
        else:
            raise Bad(f"tensor {show(name)}", f"is not part of {model}")
        if shape != want:
            raise Bad(f"tensor {show(name)}", f"has shape {list(shape)}; {model} has {list(want)}")
    for name in shapes:
        if name not in header:
            raise Bad(f"tensor {show(name)}", f"is missing; {model} has one")


def parse(path: Path, header: dict, meta: dict) -> Metadata:
    """The metadata of a checked safetensors header as typed objects, every field checked
    against the tables above. Raises CheckpointError (kind "bad_header": path, field, problem)."""
    try:
        config = model_config(_json(meta, "config"))
        unit = value("unit", Spec(STR, rule=_one_of(UNITS)), meta.get("unit", "char"))  # absent: characters
        read_vocab = word_vocab if unit == "word" else vocab
        chars = read_vocab(_json(meta, "vocab"), config.vocab_size)
        state = train_state(_json(meta, "train") if "train" in meta else {})
        corpus = corpus_fingerprint(_json(meta, "corpus") if "corpus" in meta else {})
        warm = warm_up(_json(meta, "warm_up") if "warm_up" in meta else None, config.vocab_size)
        tensors(header, config, state, warm is not None)
    except Bad as e:
        raise CheckpointError(
            f"{path}: damaged checkpoint: {e.field} {e.problem}. Use another copy of the model, or train it again.",
            kind="bad_header",
            path=path,
            field=e.field,
            problem=e.problem,
        ) from None
    return Metadata(config, chars, state, corpus, warm)
