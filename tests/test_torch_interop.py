"""A checkpoint loads into PyTorch's nn.Embedding → nn.LSTM / nn.RNN → nn.Linear as
the README shows, and computes the same function. PyTorch is not a dependency of
charlm: without it installed these tests are skipped (CI has no PyTorch)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from charlm.checkpoint import load, save
from charlm.model import CharModel, ModelConfig
from charlm.vocab import Vocab

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("cell", ["lstm", "rnn"])
@pytest.mark.parametrize("half", [False, True])
def test_checkpoint_loads_into_pytorch_as_the_readme_shows(tmp_path, cell, half):
    from safetensors import safe_open
    from safetensors.torch import load_file

    vocab = Vocab.from_text("abcdefg hij\n")
    model = CharModel(ModelConfig(vocab_size=len(vocab), embed=5, hidden=7, layers=2, cell=cell), seed=3)
    path = tmp_path / "m.safetensors"
    save(path, model, vocab, {"step": 0}, {"name": "t"}, half=half)

    # The README's snippet.
    with safe_open(str(path), "pt") as f:
        cfg = json.loads(f.metadata()["config"])
    sd = {k: v.float() for k, v in load_file(path).items()}
    emb = torch.nn.Embedding(cfg["vocab_size"], cfg["embed"])
    rnn_class = {"lstm": torch.nn.LSTM, "rnn": torch.nn.RNN}[cfg["cell"]]
    rnn = rnn_class(cfg["embed"], cfg["hidden"], cfg["layers"])
    dec = torch.nn.Linear(cfg["hidden"], cfg["vocab_size"])
    emb.load_state_dict({"weight": sd["embedding.weight"]})
    rnn.load_state_dict({k[4:]: v for k, v in sd.items() if k.startswith("rnn.")})
    dec.load_state_dict({"weight": sd["decoder.weight"], "bias": sd["decoder.bias"]})

    ids = np.random.default_rng(0).integers(0, len(vocab), (20, 3))  # (T, B)
    with torch.no_grad():
        out, _ = rnn(emb(torch.from_numpy(ids)))
        theirs = dec(out).numpy()  # (T, B, V)
    ours_model = load(path).build_model()
    ours, _ = ours_model.forward_logits(ids, ours_model.zero_state(3))  # (T·B, V)
    assert np.allclose(ours.reshape(theirs.shape), theirs, atol=1e-5)
