"""Every bad input gets one clear line on stderr, a non-zero exit code, no
traceback, and leaves the file system exactly as it was.

Each case runs the real command line (``charlm.cli.run``, what the console
script's ``main`` calls) in a fresh folder, snapshots that folder (names, sizes,
modification times, contents) before and after, and checks the exit code (2 for
usage errors, 1 for other problems) and a keyword naming the problem. A subset
runs again through the installed console script in a subprocess.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import pickle
import re
import shutil
import struct
import subprocess
import sys
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from charlm.checkpoint import load, save
from charlm.cli import run
from charlm.model import CharModel, ModelConfig
from charlm.vocab import Vocab
from tests.conftest import SMALL_TEXT

TINY = ["--hidden", "8", "--embed", "4", "--layers", "1", "--batch-size", "4", "--seq-len", "16", "--steps", "1"]


# --------------------------------------------------------------------------- #
# Helpers
# --------------------------------------------------------------------------- #


def snapshot(root: Path) -> dict[str, tuple]:
    """Every file and folder under ``root`` (and root itself): kind, size, mtime, sha256."""
    found = {}
    for p in [root, *sorted(root.rglob("*"))]:
        st = p.lstat()
        digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
        found[str(p.relative_to(root))] = (p.is_dir(), st.st_size, st.st_mtime_ns, digest)
    return found


def call(capsys, args: list[str], stdin: bytes | None = None, monkeypatch=None) -> tuple[int, str, str]:
    """Run the command line in-process; (exit code, stdout, stderr)."""
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8"))
    capsys.readouterr()
    code = run(args)
    out, err = capsys.readouterr()
    return code, out, err


def write_checkpoint(path: Path) -> Path:
    vocab = Vocab.from_text(SMALL_TEXT)
    model = CharModel(ModelConfig(len(vocab), embed=4, hidden=8, layers=1), seed=1)
    save(path, model, vocab, {"step": 1}, {"name": "small.txt"})
    return path


def rewrite_header(path: Path, change) -> None:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    change(header)
    new = json.dumps(header).encode()
    new += b" " * (-len(new) % 8)
    path.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + n :])


class Evil:
    """Unpickling this would create the file 'pwned'."""

    def __reduce__(self):
        return (open, ("pwned", "w"))


def _meta(key, value):
    def change(header):
        header["__metadata__"][key] = value

    return change


def _drop_tensor(header):
    header.pop("decoder.bias")


def _reshape_tensor(header):
    entry = header["decoder.weight"]
    entry["shape"] = entry["shape"][::-1]  # same byte count, wrong layout


def _nan_weights(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    (n,) = struct.unpack("<Q", raw[:8])
    raw[8 + n : 8 + n + 4] = np.array([np.nan], dtype="<f4").tobytes()
    path.write_bytes(bytes(raw))


def _cut_with_pickle_like_length(path: Path) -> None:
    """Pad the header to a length of 0x0280 + 65536k (its first bytes read like pickle's
    PROTO 2), then cut the file inside the header."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    length = n + (0x0280 - n) % 65536
    path.write_bytes(struct.pack("<Q", length) + raw[8 : 8 + n] + b" " * (length // 2 - n))


# --------------------------------------------------------------------------- #
# The cases
# --------------------------------------------------------------------------- #


@dataclass
class Case:
    id: str
    args: list[str]
    code: int
    match: str  # regex that the one stderr line must contain
    files: dict = field(default_factory=dict)  # name → bytes | str | callable(path) | None (folder)
    stdin: bytes | None = None


def ckpt(name="good.safetensors", then=None):
    def make(path: Path):
        write_checkpoint(path)
        if then is not None:
            if callable(then) and then.__code__.co_varnames[:1] == ("header",):
                rewrite_header(path, then)
            else:
                then(path)

    return {name: make}


GOOD = ckpt()
SMALL = {"small.txt": SMALL_TEXT}
PNG = b"\x89PNG\r\n\x1a\n" + bytes(200)

CASES = [
    # -- corpus ------------------------------------------------------------------
    Case("corpus-missing", ["train", "nope.txt", *TINY], 1, r"nope\.txt: no such file"),
    Case("corpus-directory", ["train", "adir", *TINY], 1, r"adir: is a directory", {"adir": None}),
    Case("corpus-empty", ["train", "e.txt", *TINY], 1, r"e\.txt: the file is empty", {"e.txt": b""}),
    Case("corpus-whitespace", ["train", "w.txt", *TINY], 1, r"only whitespace", {"w.txt": " \n\t\r\n" * 500}),
    Case(
        "corpus-too-short",
        ["train", "s.txt", *TINY],
        1,
        r"s\.txt: 30 characters, too short for one training batch.*at least 72 characters",
        {"s.txt": "abc" * 10},
    ),
    Case(
        "corpus-too-short-defaults",
        ["train", "small.txt", "--steps", "1"],
        1,
        r"too short for one training batch: --batch-size 32 × --seq-len 64 needs at least 2,277 characters",
        {"small.txt": SMALL_TEXT[:2276]},
    ),
    Case("corpus-png", ["train", "img.txt", *TINY], 1, r"looks like a PNG image", {"img.txt": PNG}),
    Case(
        "corpus-is-a-checkpoint",
        ["train", "good.safetensors", *TINY],
        1,
        r"good\.safetensors: looks like a safetensors model file \(a checkpoint\), not text",
        GOOD,
    ),
    Case("corpus-npy", ["train", "a.npy", *TINY], 1, r"looks like a NumPy array", {"a.npy": b"\x93NUMPY" + bytes(200)}),
    Case("corpus-pdf", ["train", "doc.txt", *TINY], 1, r"looks like a PDF", {"doc.txt": b"%PDF-1.4\n" + b"x" * 500}),
    Case("corpus-gzip", ["train", "a.txt.gz", *TINY], 1, r"gzip", {"a.txt.gz": b"\x1f\x8b\x08\x00" + bytes(100)}),
    Case(
        "corpus-nul-bytes",
        ["train", "bin.txt", *TINY],
        1,
        r"NUL byte at byte offset 3000, so it is binary",
        {"bin.txt": b"a" * 3000 + b"\x00" + b"b" * 100},
    ),
    Case(
        "corpus-invalid-utf8",
        ["train", "latin.txt", *TINY],
        1,
        r"not valid utf-8 at byte offset 2000 \(byte 0xe9\).*--errors replace",
        {"latin.txt": b"x" * 2000 + "é".encode("latin-1") + b"y" * 500},
    ),
    Case(
        "corpus-vocabulary-too-large",
        ["train", "big.txt", *TINY],
        1,
        r"65,537 distinct characters; a charlm model holds at most 65,536",
        {
            "big.txt": "".join(
                [
                    c
                    for c in map(chr, range(0x10000, 0x30000))
                    if unicodedata.is_normalized("NFC", c) and unicodedata.category(c)[0] != "M"
                ][:65_537]
            )
        },
    ),
    Case("corpus-device", ["train", "/dev/zero", *TINY], 1, r"/dev/zero: not a regular file"),
    Case(
        "corpus-pipe",
        ["train", "fifo", *TINY],
        1,
        r"fifo: not a regular file \(a pipe or a device\)\. .*save it to a file first",
        {"fifo": lambda p: os.mkfifo(p)},
    ),
    Case("encoding-unknown", ["train", "small.txt", "--encoding", "klingon", *TINY], 2, r"unknown encoding", SMALL),
    Case("encoding-not-text", ["train", "small.txt", "--encoding", "rot13", *TINY], 2, r"not a text encoding", SMALL),
    Case("errors-policy", ["train", "small.txt", "--errors", "ignore", *TINY], 2, r"--errors must be", SMALL),
    Case("perplexity-missing-file", ["perplexity", "nope.txt", "-c", "good.safetensors"], 1, r"no such file", GOOD),
    Case("perplexity-png", ["perplexity", "img.txt", "-c", "good.safetensors"], 1, r"PNG", {**GOOD, "img.txt": PNG}),
    Case(
        "perplexity-invalid-utf8",
        ["perplexity", "bad.txt", "-c", "good.safetensors"],
        1,
        r"byte offset 6",
        {**GOOD, "bad.txt": b"Speak.\xc3(All"},
    ),
    Case("perplexity-empty", ["perplexity", "e.txt", "-c", "good.safetensors"], 1, r"empty", {**GOOD, "e.txt": b""}),
    Case(
        "perplexity-stdin-binary",
        ["perplexity", "-", "-c", "good.safetensors"],
        1,
        r"standard input: looks like a PNG",
        GOOD,
        stdin=PNG,
    ),
    Case(
        "perplexity-nothing-known",
        ["perplexity", "greek.txt", "-c", "good.safetensors"],
        1,
        r"fewer than two characters the model knows",
        {**GOOD, "greek.txt": "αβγδε ζηθ"},
    ),
    # -- options -----------------------------------------------------------------
    *[
        Case(f"option{flag}-{value}", ["train", "small.txt", *TINY, flag, value], 2, re.escape(flag), SMALL)
        for flag, value in [
            ("--hidden", "0"),
            ("--hidden", "-3"),
            ("--hidden", "abc"),
            ("--embed", "0"),
            ("--layers", "0"),
            ("--batch-size", "0"),
            ("--seq-len", "0"),
            ("--steps", "0"),
            ("--eval-every", "0"),
            ("--lr", "0"),
            ("--lr", "nan"),
            ("--lr", "inf"),
            ("--clip", "0"),
            ("--minutes", "0"),
            ("--epochs", "nan"),
            ("--dropout", "1"),
            ("--dropout", "nan"),
            ("--forget-bias", "nan"),
            ("--forget-bias", "11"),
            ("--dropout", "-0.1"),
            ("--epochs", "-2"),
            ("--minutes", "nan"),
            ("--val-frac", "0"),
            ("--val-frac", "0.6"),
            ("--val-frac", "-0.1"),
            ("--val-frac", "nan"),
        ]
    ],
    Case(
        "option-threads-above-batch",
        ["train", "small.txt", *TINY, "--threads", "9"],
        2,
        r"--threads 9 is more than the batch size \d+: each block needs a row of its own",
        SMALL,
    ),
    Case(
        "bench-threads-above-batch",
        ["bench", "--batch-size", "4", "--threads", "5"],
        2,
        r"--threads 5 is more than",
        {},
    ),
    Case(
        "option-forget-bias-gru",
        ["train", "small.txt", *TINY, "--cell", "gru", "--forget-bias", "1"],
        2,
        r"--forget-bias is for the LSTM's forget gate; a gru cell has none",
        SMALL,
    ),
    Case(
        "option-val-frac-holds-out-nothing",
        ["train", "small.txt", *TINY, "--val-frac", "0.0001"],
        1,
        r"--val-frac 0.0001 holds out 0 of its [\d,]+ characters; validation needs at least 2",
        SMALL,
    ),
    Case(
        "corpus-utf16-without-bom",
        ["train", "u.txt", *TINY, "--encoding", "utf-16"],
        1,
        r"u\.txt: cannot be read as utf-16 \(UTF-16 stream does not start with BOM\).*utf-16-le",
        {"u.txt": SMALL_TEXT.encode("utf-16-le")},
    ),
    *[
        Case(f"option-name-{i}", ["train", "small.txt", *TINY, "--name", bad], 2, r"give a plain folder name", SMALL)
        for i, bad in enumerate(["a/b", "../escape", "..", " "])
    ],
    Case(
        "option-cell-unknown",
        ["train", "small.txt", *TINY, "--cell", "transformer"],
        2,
        r"--cell 'transformer' is not a cell",
        SMALL,
    ),
    Case("option-unknown", ["train", "small.txt", "--hiden", "5"], 2, r"No such option: --hiden", SMALL),
    Case("argument-missing", ["train"], 2, r"Missing argument"),
    Case("command-unknown", ["trian", "small.txt"], 2, r"No such command 'trian'", SMALL),
    *[
        Case(f"sample{flag}={value}", ["sample", "-c", "good.safetensors", flag, value], 2, re.escape(flag), GOOD)
        for flag, value in [
            ("--temperature", "-1"),
            ("--temperature", "nan"),
            ("--temperature", "inf"),
            ("--length", "-1"),
            ("--top-k", "0"),
        ]
    ],
    # -- checkpoints ---------------------------------------------------------------
    Case("ckpt-missing", ["sample", "-c", "nope.safetensors"], 1, r"nope\.safetensors: no such checkpoint"),
    Case(
        "model-name-typo",
        ["score", "hello", "-m", "Shakspeare"],
        1,
        r"Shakspeare: no such checkpoint, run folder, run or shipped model\. Did you mean shakespeare\?",
    ),
    Case("ckpt-folder-without-one", ["sample", "-c", "adir"], 1, r"no checkpoint in this folder", {"adir": None}),
    Case(
        "ckpt-text-file",
        ["sample", "-c", "notes.safetensors"],
        1,
        r"not a safetensors file",
        {"notes.safetensors": "these are my notes, not a model\n" * 3},
    ),
    Case(
        "ckpt-truncated",
        ["sample", "-c", "good.safetensors"],
        1,
        r"truncated",
        ckpt(then=lambda p: p.write_bytes(p.read_bytes()[:-100])),
    ),
    Case(
        "ckpt-truncated-length-like-pickle",
        ["sample", "-c", "good.safetensors"],
        1,
        r"truncated checkpoint \(the header runs past the end of the file\)",
        ckpt(then=_cut_with_pickle_like_length),
    ),
    Case(
        "ckpt-pickle",
        ["sample", "-c", "model.pt"],
        1,
        r"Python pickle.*never unpickles",
        {"model.pt": pickle.dumps(Evil())},
    ),
    Case(
        "ckpt-zip",
        ["perplexity", "small.txt", "-c", "model.pt"],
        1,
        r"zip archive",
        {"model.pt": b"PK\x03\x04" + bytes(100), **SMALL},
    ),
    Case(
        "ckpt-version",
        ["sample", "-c", "good.safetensors"],
        1,
        r"format version '99'",
        ckpt(then=_meta("format_version", "99")),
    ),
    Case(
        "ckpt-foreign-safetensors",
        ["sample", "-c", "good.safetensors"],
        1,
        r"not one written by charlm",
        ckpt(then=_meta("format", "something-else")),
    ),
    Case(
        "ckpt-config-not-json",
        ["sample", "-c", "good.safetensors"],
        1,
        r"damaged checkpoint: config is not valid JSON",
        ckpt(then=_meta("config", "{vocab_size: 3")),
    ),
    Case(
        "ckpt-train-not-json",
        ["perplexity", "small.txt", "-c", "good.safetensors"],
        1,
        r"damaged checkpoint: train is not valid JSON",
        {**ckpt(then=_meta("train", "[1, 2")), **SMALL},
    ),
    Case(
        "ckpt-vocab-invalid",
        ["sample", "-c", "good.safetensors"],
        1,
        r"damaged checkpoint: vocab\[1\] is out of order",
        ckpt(then=_meta("vocab", "[66, 65]")),
    ),
    Case(
        "ckpt-tensor-missing",
        ["sample", "-c", "good.safetensors"],
        1,
        r'tensor "decoder.bias" is missing; a 1×8 LSTM',
        ckpt(then=_drop_tensor),
    ),
    Case(
        "ckpt-tensor-misshaped",
        ["sample", "-c", "good.safetensors"],
        1,
        r'tensor "decoder.weight" has shape \[8, \d+\]; a 1×8 LSTM \(embedding 4, \d+ characters\) has \[\d+, 8\]',
        ckpt(then=_reshape_tensor),
    ),
    Case("ckpt-nan-weights", ["sample", "-c", "good.safetensors"], 1, r"NaN or infinity", ckpt(then=_nan_weights)),
    # -- output --------------------------------------------------------------------
    Case(
        "out-parent-is-a-file",
        ["train", "small.txt", *TINY, "--out", "afile/runs"],
        1,
        r"cannot create the run folder afile/runs/small \(Not a directory\)",
        {**SMALL, "afile": "I am a file"},
    ),
    Case(
        "out-name-taken",
        ["train", "small.txt", *TINY, "--name", "old"],
        2,
        r"runs/old already holds a run.*--resume runs/old",
        {**SMALL, "runs": None, "runs/old": None, **ckpt("runs/old/last.safetensors")},
    ),
]


def make_files(root: Path, files: dict) -> None:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if content is None:
            path.mkdir(exist_ok=True)
        elif isinstance(content, bytes):
            path.write_bytes(content)
        elif isinstance(content, str):
            path.write_text(content, encoding="utf-8")
        else:
            content(path)


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CHARLM_CACHE", str(tmp_path / "cache"))  # a cache written by mistake would show
    return tmp_path


def check_one_line(code: int, out: str, err: str, case: Case) -> None:
    assert "Traceback" not in err and "Traceback" not in out
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), lines[0]
    assert re.search(case.match, lines[0]), lines[0]
    assert code == case.code, (code, lines[0])
    assert out == ""


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, workdir: Path, capsys, monkeypatch):
    make_files(workdir, case.files)
    before = snapshot(workdir)
    code, out, err = call(capsys, case.args, case.stdin, monkeypatch)
    check_one_line(code, out, err, case)
    assert snapshot(workdir) == before
    assert not (workdir / "pwned").exists()  # the pickle was never unpickled


def test_every_bullet_of_the_issue_has_a_case():
    ids = {c.id for c in CASES}
    for needed in [
        "corpus-missing",
        "corpus-directory",
        "corpus-empty",
        "corpus-whitespace",
        "corpus-too-short",
        "corpus-png",
        "corpus-invalid-utf8",
        "corpus-vocabulary-too-large",
        "option--hidden-0",
        "option--val-frac-0",
        "option--val-frac-0.6",
        "sample--temperature=-1",
        "sample--temperature=nan",
        "sample--length=-1",
        "sample--top-k=0",
        "option-cell-unknown",
        "ckpt-missing",
        "ckpt-text-file",
        "ckpt-truncated",
        "ckpt-pickle",
        "ckpt-version",
        "ckpt-tensor-missing",
        "ckpt-tensor-misshaped",
        "ckpt-config-not-json",
        "out-parent-is-a-file",
    ]:
        assert needed in ids


def test_invalid_utf8_can_proceed_with_errors_replace(workdir, capsys, monkeypatch):
    """The message suggests --errors replace; it does work."""
    (workdir / "latin.txt").write_bytes(SMALL_TEXT.encode() + "café".encode("latin-1") + SMALL_TEXT.encode())
    code, out, err = call(capsys, ["train", "latin.txt", *TINY, "--errors", "replace"], None, monkeypatch)
    assert code == 0, err
    assert load(workdir / "runs" / "latin" / "best.safetensors").vocab.index("\ufffd") is not None
    code, out, err = call(capsys, ["train", "latin.txt", *TINY, "--encoding", "latin-1"], None, monkeypatch)
    assert code == 0, err
    assert load(workdir / "runs" / "latin-2" / "best.safetensors").vocab.index("é") is not None


def test_ctrl_c_outside_training_is_one_line(workdir, capsys, monkeypatch):
    """Ctrl-C while, say, a checkpoint loads: exit 130 and one line, no traceback."""
    write_checkpoint(workdir / "good.safetensors")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("charlm.checkpoint.load", interrupted)
    code, out, err = call(capsys, ["sample", "-c", "good.safetensors"], None, monkeypatch)
    check_one_line(code, out, err, Case("ctrl-c", [], 130, r"^error: interrupted\.$"))


def test_run_folder_permission_denied(workdir, capsys, monkeypatch):
    """'runs/ not writable'. Tests run as root, for whom chmod does not stop writes,
    so the permission error is injected where the run folder is created."""
    (workdir / "small.txt").write_text(SMALL_TEXT, encoding="utf-8")
    before = snapshot(workdir)

    def denied(self, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", denied)
    code, out, err = call(capsys, ["train", "small.txt", *TINY], None, monkeypatch)
    case = Case(
        "denied", [], 1, r"cannot create the run folder runs/small \(Permission denied\)\. Choose another --out"
    )
    check_one_line(code, out, err, case)
    assert snapshot(workdir) == before


def test_disk_full_while_saving_keeps_the_old_checkpoint(workdir, capsys, monkeypatch):
    """The second save of last.safetensors fails as a full disk does (ENOSPC when the
    data is flushed): one error line, exit 1, and the step-4 checkpoint is intact."""
    (workdir / "small.txt").write_text(SMALL_TEXT, encoding="utf-8")
    real_fsync = os.fsync
    seen = []

    def fsync(fd):
        name = os.readlink(f"/proc/self/fd/{fd}")
        if name.endswith(".tmp") and ".last.safetensors." in name:
            seen.append(name)
            if len(seen) >= 2:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    args = ["train", "small.txt", *TINY[:-2], "--steps", "8", "--eval-every", "4"]
    code, out, err = call(capsys, args, None, monkeypatch)
    assert code == 1
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and err.rstrip().endswith(errors[0])
    assert re.search(r"cannot write checkpoint .*last\.safetensors: No space left on device\. .*unchanged", errors[0])
    run_dir = workdir / "runs" / "small"
    assert load(run_dir / "last.safetensors").state.step == 4
    assert load(run_dir / "best.safetensors").state.step == 4
    assert not list(run_dir.glob("*.tmp")) and not list(run_dir.glob(".*.tmp"))
    assert len(seen) == 2


# --------------------------------------------------------------------------- #
# What users see: the installed console script
# --------------------------------------------------------------------------- #


def console_script() -> str:
    found = shutil.which("charlm", path=os.path.dirname(sys.executable)) or shutil.which("charlm")
    if found is None:
        pytest.fail("the charlm console script is not installed; install the package as the README says")
    return found


SUBPROCESS = [
    "option--hidden-0",
    "option-unknown",
    "command-unknown",
    "corpus-missing",
    "corpus-png",
    "ckpt-pickle",
    "out-parent-is-a-file",
]


@pytest.mark.parametrize("case", [c for c in CASES if c.id in SUBPROCESS], ids=SUBPROCESS)
def test_console_script_prints_one_line(case: Case, tmp_path: Path):
    make_files(tmp_path, case.files)
    before = snapshot(tmp_path)
    env = {**os.environ, "CHARLM_CACHE": str(tmp_path / "cache"), "COLUMNS": "80"}
    r = subprocess.run(
        [console_script(), *case.args], cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env
    )
    check_one_line(r.returncode, r.stdout, r.stderr, case)
    assert "╭" not in r.stderr  # not Typer's boxed panel
    assert snapshot(tmp_path) == before


def test_help_still_works(tmp_path):
    r = subprocess.run([console_script(), "train", "--help"], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0 and "--seq-len" in r.stdout and r.stderr == ""
    bare = subprocess.run([console_script()], cwd=tmp_path, capture_output=True, text=True)
    assert bare.returncode == 2 and "train" in bare.stdout
