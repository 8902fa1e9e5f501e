"""The character language model: Embedding → recurrent stack → Linear → softmax.

    e<t>      = Emb[x<t>]                              (B, E)
    a[1]<t>   = cell(e<t>, state[1]<t-1>)              (B, H)
    a[l]<t>   = cell(drop(a[l-1]<t>), state[l]<t-1>)   (B, H)   l = 2..N
    ŷ<t>      = softmax(W_dec drop(a[N]<t>) + b_dec)   (B, V)
    L         = −(1/TB) Σ_t Σ_b log ŷ<t>[x<t+1>]

All parameters live in one flat array and are exposed as named views with
PyTorch's names and layouts (``rnn.weight_ih_l0`` (4H, E), gates i, f, g, o),
so the optimizer and gradient clipping each run as a few whole-array
operations and a checkpoint maps one-to-one onto a PyTorch state dict.
"""

from __future__ import annotations

import numpy as np

from charlm.cells import CELLS, Recurrent
from charlm.config import ModelConfig
from charlm.layers import log_softmax_pick, scatter_rows, softmax_cross_entropy_

State = list[tuple[np.ndarray, ...]]  # one tuple of (B, H) arrays per layer


class CharModel:
    """Embedding → ``layers`` recurrent cells → Linear decoder, with hand-written backward."""

    def __init__(
        self,
        config: ModelConfig,
        dtype=np.float32,
        seed: int = 0,
        flat: np.ndarray | None = None,
        grad_flat: np.ndarray | None = None,
    ) -> None:
        """A new model with initialised weights; or, given ``flat``, a model whose
        parameters live in that 1-D array (left as they are), and given
        ``grad_flat``, whose gradient is written there (for the worker processes
        of ``charlm.parallel``, which map both from shared memory)."""
        if config.cell not in CELLS:
            raise ValueError(f"unknown cell {config.cell!r}")
        self.config = config
        self.dtype = np.dtype(dtype)
        self.shapes = self.param_shapes(config)
        total = self.count_params(config)
        # every parameter, contiguous
        for given in (flat, grad_flat):
            if given is not None and (given.shape != (total,) or given.dtype != self.dtype):
                raise ValueError(f"buffer of shape {given.shape} {given.dtype}, expected ({total},) {self.dtype}")
        self.flat = flat if flat is not None else np.zeros(total, self.dtype)
        self.grad_flat = grad_flat if grad_flat is not None else np.zeros(total, self.dtype)  # ∂L/∂flat
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        offset = 0
        for name, shape in self.shapes.items():
            n = int(np.prod(shape))
            self.params[name] = self.flat[offset : offset + n].reshape(shape)
            self.grads[name] = self.grad_flat[offset : offset + n].reshape(shape)
            offset += n
        cell = CELLS[config.cell]
        self.rnn: list[Recurrent] = []
        for layer in range(config.layers):
            names = [f"rnn.{w}_l{layer}" for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
            self.rnn.append(
                cell(
                    config.embed if layer == 0 else config.hidden,
                    config.hidden,
                    *(self.params[n] for n in names),
                    *(self.grads[n] for n in names),
                )
            )
        if flat is None:
            self.init_weights(np.random.default_rng(seed))

    # -- parameters -------------------------------------------------------

    @staticmethod
    def param_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
        V, E, H = config.vocab_size, config.embed, config.hidden
        GH = CELLS[config.cell].gates * H
        shapes: dict[str, tuple[int, ...]] = {"embedding.weight": (V, E)}
        for layer in range(config.layers):
            D = E if layer == 0 else H
            shapes[f"rnn.weight_ih_l{layer}"] = (GH, D)
            shapes[f"rnn.weight_hh_l{layer}"] = (GH, H)
            shapes[f"rnn.bias_ih_l{layer}"] = (GH,)
            shapes[f"rnn.bias_hh_l{layer}"] = (GH,)
        shapes["decoder.weight"] = (V, H)
        shapes["decoder.bias"] = (V,)
        return shapes

    @staticmethod
    def count_params(config: ModelConfig) -> int:
        """How many numbers the parameters of a model of this config hold."""
        return sum(int(np.prod(s)) for s in CharModel.param_shapes(config).values())

    @property
    def num_params(self) -> int:
        return int(self.flat.size)

    def init_weights(self, rng: np.random.Generator) -> None:
        """PyTorch's scheme: U(−1/√H, 1/√H) for recurrent and decoder weights,
        N(0, 1) for the embedding; biases zero except the LSTM forget gate, whose
        b_f starts at ``config.forget_bias`` (0 by default, as in PyTorch; 1 makes
        Γf ≈ 0.73 at the start, so c<t> is kept longer — see the README)."""
        H = self.config.hidden
        k = 1.0 / np.sqrt(H)
        for name, p in self.params.items():
            if name == "embedding.weight":
                p[...] = rng.standard_normal(p.shape)
            elif "bias" in name:
                p[...] = 0.0
            else:
                p[...] = rng.uniform(-k, k, p.shape)
        if self.config.cell == "lstm":
            for layer in range(self.config.layers):
                self.params[f"rnn.bias_ih_l{layer}"][H : 2 * H] = self.config.forget_bias

    def load_params(self, tensors: dict[str, np.ndarray]) -> None:
        for name, p in self.params.items():
            p[...] = tensors[name]

    # -- state ----------------------------------------------------------------

    def zero_state(self, B: int) -> State:
        return [layer.zero_state(B) for layer in self.rnn]

    # -- training ---------------------------------------------------------------

    def loss_and_grads(
        self,
        ids: np.ndarray,
        targets: np.ndarray,
        state: State,
        rng: np.random.Generator | None = None,
        dropout_masks: list[np.ndarray] | None = None,
    ) -> tuple[float, State]:
        """Mean cross-entropy (nats/char) of one chunk and its gradient.

        ids, targets: (T, B) ints, targets[t] = ids[t+1] of the stream; state: the
        carried state. Writes ∂L/∂params into ``self.grads`` (overwriting) and
        returns (loss, final state). Dropout masks are drawn from ``rng`` when the
        config has dropout, or given explicitly (for gradient checks).
        """
        T, B = ids.shape
        masks = dropout_masks
        if masks is None and self.config.dropout > 0.0 and rng is not None:
            masks = self.draw_dropout_masks(rng, T, B)
        top, new_state, inputs = self._forward(ids, state, masks)
        H = self.config.hidden
        logits = top.reshape(T * B, H) @ self.params["decoder.weight"].T
        logits += self.params["decoder.bias"]
        loss = softmax_cross_entropy_(logits, targets.reshape(-1))
        dlogits = logits  # (T·B, V), now ∂L/∂logits
        self.grad_flat.fill(0.0)
        np.matmul(dlogits.T, top.reshape(T * B, H), out=self.grads["decoder.weight"])  # (V, H)
        np.sum(dlogits, axis=0, out=self.grads["decoder.bias"])
        grad = (dlogits @ self.params["decoder.weight"]).reshape(T, B, H)
        self._backward(ids, grad, inputs, masks)
        return loss, new_state

    def draw_dropout_masks(self, rng: np.random.Generator, T: int, B: int) -> list[np.ndarray]:
        """Inverted-dropout masks, one (T, B, H) per layer output: 0 or 1/(1−p)."""
        p = self.config.dropout
        masks = []
        for _ in range(self.config.layers):
            m = rng.random((T, B, self.config.hidden), dtype=np.float32) >= p
            masks.append(m.astype(self.dtype) * self.dtype.type(1.0 / (1.0 - p)))
        return masks

    def input_table(self) -> np.ndarray:
        """The first layer's input projection of every character, (V, G·H): row v is
        W_ih[1] Emb[v] + b_ih + b_hh, so a chunk's projection is a row gather."""
        first = self.rnn[0]
        table = self.params["embedding.weight"] @ first.w_ih.T  # (V, G·H)
        table += first.b_ih
        table += first.b_hh
        return table

    def chunk_table(self, ids: np.ndarray) -> np.ndarray:
        """The rows of ``input_table`` for the (T, B) ids of one chunk only, (T·B, G·H) in their order:
        W_ih[1] Emb[x<t>] + b_ih + b_hh. Cheaper than the whole table when V > T·B (a word model)."""
        first = self.rnn[0]
        rows = self.params["embedding.weight"][ids.reshape(-1)] @ first.w_ih.T  # (T·B, E) @ (E, G·H)
        rows += first.b_ih
        rows += first.b_hh
        return rows

    def _forward(
        self, ids: np.ndarray, state: State, masks: list[np.ndarray] | None
    ) -> tuple[np.ndarray, State, list[np.ndarray]]:
        """Run the stack. Returns (top output (T, B, H), final state, inputs of layers ≥ 1)."""
        first = self.rnn[0]
        T, B = ids.shape
        if self.config.vocab_size > T * B:  # a word vocabulary: project the chunk's T·B rows, not all V
            table, ids = self.chunk_table(ids), np.arange(T * B).reshape(T, B)
        else:
            table = self.input_table()
        out, s = first.forward_from_table(ids, table, state[0])
        new_state = [s]
        inputs = []  # the input of each layer ≥ 1, (T, B, H)
        for layer in range(1, len(self.rnn)):
            if masks is not None:
                out = out * masks[layer - 1]
            inputs.append(out)
            out, s = self.rnn[layer].forward(out, state[layer])
            new_state.append(s)
        if masks is not None:
            out = out * masks[-1]
        return out, new_state, inputs

    def _backward(self, ids: np.ndarray, grad: np.ndarray, inputs: list[np.ndarray], masks) -> None:
        """grad: ∂L/∂(top output after dropout), (T, B, H)."""
        T, B = ids.shape
        for layer in range(len(self.rnn) - 1, -1, -1):
            if masks is not None:
                grad = grad * masks[layer]
            cell = self.rnn[layer]
            if layer > 0:
                grad, _ = cell.backward(grad, inputs[layer - 1])
            else:
                cell.backward(grad, None)
        # First layer: its input projection was a row gather from table = Emb @ W_ih.T + b.
        first = self.rnn[0]
        flat_ids = ids.reshape(-1)
        emb = self.params["embedding.weight"]  # (V, E)
        dpre = first.grad_pre().reshape(T * B, -1)  # (T·B, G·H)
        V, E = emb.shape
        if V <= 2 * E:
            # Small vocabulary: gradient of the table first, one (V, T·B) @ (T·B, G·H)
            # product, then through table = Emb @ W_ih.T with two tiny products.
            grad_table = scatter_rows(flat_ids, dpre, V)  # (V, G·H)
            first.grad_w_ih += grad_table.T @ emb  # (G·H, E)
            self.grads["embedding.weight"][...] = grad_table @ first.w_ih  # (V, E)
        else:
            first.accumulate_input_weight_grad(emb[flat_ids])  # ∂L/∂W_ih += δz.T @ e
            grad_e = dpre @ first.w_ih  # (T·B, E)
            self.grads["embedding.weight"][...] = scatter_rows(flat_ids, grad_e, V)

    # -- inference ------------------------------------------------------------

    def forward_states(self, ids: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        """The top layer's output a[N]<t> (T, B, H) for a (T, B) chunk, and the final state; no dropout."""
        top, new_state, _ = self._forward(ids, state, None)
        return top, new_state

    def forward_logits(self, ids: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        """Logits (T·B, V) for every position of a (T, B) chunk; no dropout."""
        T, B = ids.shape
        top, new_state, _ = self._forward(ids, state, None)
        logits = top.reshape(T * B, -1) @ self.params["decoder.weight"].T
        logits += self.params["decoder.bias"]
        return logits, new_state

    def nll(self, ids: np.ndarray, targets: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        """−log p(target) in nats for each position, (T, B) float64; and the final state."""
        logits, new_state = self.forward_logits(ids, state)
        return log_softmax_pick(logits, targets.reshape(-1)).reshape(ids.shape), new_state
