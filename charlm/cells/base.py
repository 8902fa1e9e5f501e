"""What every recurrent cell shares: the notes' weights, the layer base class, its workspace.

Notation follows the lecture notes in ``shared/seeds``: x<t> input, a<t> hidden
state, c<t> memory cell, c̃<t> candidate, Γu update, Γf forget, Γo output and
Γr relevance gates, σ the logistic sigmoid, ∗ the element-wise product, and
W[a<t-1>, x<t>] the product of W with a<t-1> stacked on x<t>.

Sizes used in every shape comment:

    T  time steps in a chunk        B  batch rows (independent streams)
    D  input features per step      H  hidden units
    G  H-wide blocks in a fused weight (LSTM 4, GRU 3, RNN 1)

Weights are laid out like PyTorch's ``nn.LSTM`` (``weight_ih`` (G·H, D),
``weight_hh`` (G·H, H), ``bias_ih``, ``bias_hh`` (G·H,)), one H-row block per
gate. The notes' weight of a gate is that block of both matrices side by side,
W = [W_hh | W_ih] (H, H + D), and its bias b = b_ih + b_hh: ``notes_weights``
builds them, ``pytorch_grads`` maps their gradients back.

Each cell module opens with its *reference* step pair (``lstm_step_forward`` /
``lstm_step_backward`` …): the notes' equations, one gate at a time, for
reading and testing. Below it is the *fast path*, the fused whole-sequence
layer that training and sampling run, tested against the reference step by step.

The fast path, as laid out here: sequences are time-major, ``(T, B, ·)``, so
that step t is the contiguous block ``x[t]``, and ``x @ W.T`` is a forward
projection (NumPy passes the transpose to BLAS without copying). The one
exception is the recurrent product inside a time loop: each chunk first makes
a contiguous copy of W_hhᵀ (with the cell's scale factors folded in), because
OpenBLAS repacks the weight at every one of the T small products and packs a
contiguous operand faster.

A layer owns references to its parameter and gradient arrays (views into the
model's flat buffers) and a workspace of preallocated arrays per (T, B) shape.
``forward`` fills the workspace; ``backward`` reads it (and may overwrite the
gate values with their gradients), so the pair must run back to back on the
same chunk, one backward per forward. Nothing is allocated inside the time loop.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

# --------------------------------------------------------------------------- #
# Reference helpers: plain NumPy, any float dtype
# --------------------------------------------------------------------------- #


def sigmoid(z: np.ndarray) -> np.ndarray:
    """σ(z) = 1 / (1 + exp(−z)), a new array."""
    return 1.0 / (1.0 + np.exp(-z))


def notes_weights(
    w_ih: np.ndarray, w_hh: np.ndarray, b_ih: np.ndarray, b_hh: np.ndarray, gates: tuple[str, ...]
) -> dict[str, np.ndarray]:
    """The notes' weights of each gate from the four PyTorch tensors.

    w_ih (G·H, D), w_hh (G·H, H), b_ih, b_hh (G·H,); ``gates`` names the G
    H-row blocks in the tensors' order, e.g. ("u", "f", "c", "o") for the
    LSTM's i, f, g, o. For gate k with rows k·H … (k+1)·H − 1:

        W<k> = [W_hh[k] | W_ih[k]]   (H, H + D)   so W<k>[a, x] = W_hh[k] a + W_ih[k] x
        b<k> = b_ih[k] + b_hh[k]     (H,)

    Returns {"Wu": …, "bu": …, …} (new arrays).
    """
    H = w_hh.shape[1]
    weights = {}
    for k, gate in enumerate(gates):
        rows = slice(k * H, (k + 1) * H)
        weights[f"W{gate}"] = np.concatenate([w_hh[rows], w_ih[rows]], axis=1)
        weights[f"b{gate}"] = b_ih[rows] + b_hh[rows]
    return weights


def pytorch_grads(grads: dict[str, np.ndarray], gates: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The gradients of the four PyTorch tensors from those of the notes' weights.

    grads holds "dW<k>" (H, H + D) and "db<k>" (H,) for each gate named in
    ``gates`` (see ``notes_weights``). The first H columns of dW<k> belong to
    W_hh[k], the rest to W_ih[k]; b = b_ih + b_hh, so both biases get db<k>.
    Returns {"w_ih": (G·H, D), "w_hh": (G·H, H), "b_ih": (G·H,), "b_hh": (G·H,)}.
    """
    H = grads[f"db{gates[0]}"].shape[0]
    d_w = [grads[f"dW{gate}"] for gate in gates]
    d_b = np.concatenate([grads[f"db{gate}"] for gate in gates])
    return {
        "w_ih": np.concatenate([dw[:, H:] for dw in d_w]),
        "w_hh": np.concatenate([dw[:, :H] for dw in d_w]),
        "b_ih": d_b,
        "b_hh": d_b.copy(),
    }


# --------------------------------------------------------------------------- #
# Fast-path helpers
# --------------------------------------------------------------------------- #


def sigmoid_(x: np.ndarray) -> np.ndarray:
    """In place: x ← σ(x) = 1 / (1 + exp(-x)). Overflow of exp gives exactly 0."""
    np.negative(x, out=x)
    np.exp(x, out=x)
    np.add(x, 1.0, out=x)
    np.reciprocal(x, out=x)
    return x


def check_state_shape(a0: np.ndarray, B: int, H: int) -> None:
    if a0.shape != (B, H):
        raise ValueError(f"initial state has shape {a0.shape}, expected {(B, H)}")


class Workspace:
    """Keeps one set of work arrays per (T, B) shape, for the ``limit`` shapes used
    last: two by default, a chunk's and that of a shorter last chunk, so that
    scoring a long text never holds more (the arrays are (T, B, ·) each)."""

    def __init__(self, limit: int = 2) -> None:
        self._sets: dict[tuple[int, int], dict[str, np.ndarray]] = {}  # least recently used first
        self._limit = limit

    def get(self, key: tuple[int, int], make) -> dict[str, np.ndarray]:
        ws = self._sets.pop(key, None)
        if ws is None:
            while len(self._sets) >= self._limit:
                self._sets.pop(next(iter(self._sets)))
            ws = make()
        self._sets[key] = ws  # now the most recently used
        return ws

    def clear(self) -> None:
        self._sets.clear()


@dataclass
class Recurrent(ABC):
    """Base for the fused recurrent layers: input projection, state layout, weight gradients.

    Subclasses set ``gates`` (number of H-wide blocks in the fused weight) and
    ``state_names`` (one (B, H) array per name), and implement ``_forward_loop``,
    ``_backward_loop`` and ``forward_one``.
    """

    input_size: int
    hidden_size: int
    w_ih: np.ndarray  # (G·H, D)
    w_hh: np.ndarray  # (G·H, H)
    b_ih: np.ndarray  # (G·H,)
    b_hh: np.ndarray  # (G·H,)
    grad_w_ih: np.ndarray
    grad_w_hh: np.ndarray
    grad_b_ih: np.ndarray
    grad_b_hh: np.ndarray

    gates: ClassVar[int] = 1
    state_names: ClassVar[tuple[str, ...]] = ("a",)
    # True when backward writes ∂L/∂pre-activations over the forward's gate
    # values (ws["grad_z"] is ws["gates"]): one (T, B, G·H) array fewer per layer.
    grad_over_gates: ClassVar[bool] = False
    forget_block: ClassVar[int | None] = None  # the H-row block whose bias ``new_layer`` sets (LSTM: f)

    def __post_init__(self) -> None:
        self._ws = Workspace()
        self._last_ws: dict[str, np.ndarray] | None = None
        self._forward_pending = False  # a forward pass has filled _last_ws and no backward has read it

    @property
    def dtype(self) -> np.dtype:
        return self.w_hh.dtype

    # -- public API ---------------------------------------------------------

    def zero_state(self, B: int) -> tuple[np.ndarray, ...]:
        return tuple(np.zeros((B, self.hidden_size), self.dtype) for _ in self.state_names)

    def forward(self, x: np.ndarray, state: tuple[np.ndarray, ...]) -> tuple[np.ndarray, tuple]:
        """Run the layer over a chunk.

        x: (T, B, D) inputs; state: initial state, each (B, H).
        Returns the outputs a<1..T> as a (T, B, H) view of the workspace and the
        final state (copies, safe to carry into the next chunk).
        """
        T, B, D = x.shape
        ws = self._workspace(T, B)
        scale = ws["scale"]
        w = np.multiply(self.w_ih, scale[:, None], out=ws["w_ih_scaled"])  # s ∗ W_ih, (G·H, D)
        projection = ws["gates"].reshape(T * B, -1)  # (T·B, G·H)
        np.matmul(x.reshape(T * B, D), w.T, out=projection)
        b = np.add(self.b_ih, self.b_hh, out=ws["b_scaled"])
        b *= scale
        projection += b  # s ∗ (W_ih x<t> + b_ih + b_hh)
        return self._forward_loop(ws, state)

    def forward_from_table(
        self, ids: np.ndarray, table: np.ndarray, state: tuple[np.ndarray, ...]
    ) -> tuple[np.ndarray, tuple]:
        """Forward for a first layer fed by an embedding: the input projection of
        every symbol is precomputed, ``table = Emb @ W_ih.T + b`` (V, G·H), and the
        projection of a chunk is a row gather. ids: (T, B) ints."""
        T, B = ids.shape
        ws = self._workspace(T, B)
        if ids.size and (ids.min() < 0 or ids.max() >= table.shape[0]):
            raise IndexError(f"symbol ids must lie in [0, {table.shape[0]}) for this table")
        # mode="clip" (ids checked above) copies whole rows, much faster than table[ids]
        np.take(table * ws["scale"], ids, axis=0, out=ws["gates"], mode="clip")  # (T, B, G·H) s ∗ rows
        return self._forward_loop(ws, state)

    def backward(
        self, grad_out: np.ndarray, x: np.ndarray | None, grad_state: tuple | None = None
    ) -> tuple[np.ndarray, tuple]:
        """Back-propagate through the chunk run by the last ``forward``.

        grad_out: (T, B, H) ∂L/∂a<t> from the layer above; x: the (T, B, D) inputs
        of the forward pass (for ∂L/∂W_ih) or None when the caller handles the
        input projection itself (see ``grad_pre``); grad_state: ∂L/∂(final state),
        or None for zero (truncated BPTT).
        Accumulates into the gradient arrays. Returns (∂L/∂x (T, B, D) or None,
        ∂L/∂(initial state)).
        """
        ws = self._last_ws
        if ws is None or not self._forward_pending:
            raise RuntimeError("backward needs a forward pass of its own (one backward per forward)")
        self._forward_pending = False  # the gate values may now be overwritten (grad_over_gates)
        T, B, _ = grad_out.shape
        grad_init = self._backward_loop(ws, grad_out, grad_state)
        grad_z = ws["grad_z"].reshape(T * B, -1)  # (T·B, G·H) ∂L/∂(pre-activations)
        # Weight gradients: one GEMM each over the stacked steps.
        a_prev = ws["a_seq"][:-1].reshape(T * B, -1)  # a<0..T-1> (T·B, H)
        self._grad_hh(grad_z, a_prev, ws)
        db = grad_z.sum(axis=0)
        self.grad_b_ih += db
        self.grad_b_hh += db
        if x is None:
            return None, grad_init
        D = x.shape[-1]
        self.grad_w_ih += grad_z.T @ x.reshape(T * B, D)
        grad_x = (grad_z @ self.w_ih).reshape(T, B, D)
        return grad_x, grad_init

    def grad_pre(self) -> np.ndarray:
        """∂L/∂(input projection) of the last backward pass, (T, B, G·H)."""
        assert self._last_ws is not None
        return self._last_ws["grad_z"]

    def accumulate_input_weight_grad(self, inputs2d: np.ndarray) -> None:
        """∂L/∂W_ih += grad_z.T @ inputs, for callers that ran backward(x=None)."""
        grad_z = self.grad_pre()
        self.grad_w_ih += grad_z.reshape(-1, grad_z.shape[-1]).T @ inputs2d

    # -- forward only (scoring) ---------------------------------------------

    def prepare(self) -> dict[str, np.ndarray]:
        """The weights of forward-only passes (``infer``), scaled once as ``forward``
        scales them for every chunk: "w_ih" s ∗ W_ih (G·H, D), "b" s ∗ (b_ih + b_hh)
        (G·H,) and the loop's own (``_loop_weights``). A snapshot: prepare again
        after the weights change."""
        scale = self._gate_scale()
        w_ih = self.w_ih * scale[:, None]  # (G·H, D)
        b = (self.b_ih + self.b_hh) * scale  # (G·H,)
        return {"w_ih": w_ih, "b": b, **self._loop_weights(scale)}

    def infer(
        self, pre: np.ndarray, state: tuple[np.ndarray, ...], weights: dict[str, np.ndarray], out: np.ndarray
    ) -> tuple[np.ndarray, ...]:
        """Run the layer forward only, keeping nothing for a backward pass.

        pre: (T, B, G·H) s ∗ (W_ih x<t> + b) from ``weights = prepare()``, overwritten;
        state: the initial (B, H) arrays, left as they are; out: (T, B, H) receives
        a<1..T>. Returns the final state (new arrays). The same operations as
        ``forward``'s time loop, minus what only backward reads.
        """
        check_state_shape(state[0], pre.shape[1], self.hidden_size)
        return self._infer_loop(pre, state, weights, out)

    @abstractmethod
    def forward_one(self, pre: np.ndarray, state: tuple[np.ndarray, ...]) -> np.ndarray:
        """One time step at batch 1, for sampling. pre: (G·H,) input projection
        W_ih x<t> + b, overwritten; state: (H,) vectors, updated in place.
        Returns a<t> (a view of the state)."""

    # -- subclass hooks ----------------------------------------------------

    def _grad_hh(self, grad_z2d: np.ndarray, a_prev2d: np.ndarray, ws) -> None:
        self.grad_w_hh += grad_z2d.T @ a_prev2d  # (G·H, H)

    def _extra_buffers(self, T: int, B: int) -> dict[str, np.ndarray]:
        return {}

    @abstractmethod
    def _gate_scale(self) -> np.ndarray:
        """s (G·H,): the factor by which the loop wants each pre-activation
        multiplied (−1 where exp(−z) gives σ(z), −2 where exp(−2z) gives tanh(z)).
        ``forward`` applies it to the chunk's input projection through a scaled
        copy of W_ih (or of the table), so the loop needs no pass of its own."""

    @abstractmethod
    def _forward_loop(self, ws, state) -> tuple[np.ndarray, tuple]:
        """The time loop over ws["gates"], which holds s ∗ (W_ih x<t> + b) (see
        ``_gate_scale``): fill it with gate values and ws["a_seq"] with a<0..T>."""

    @abstractmethod
    def _loop_weights(self, scale: np.ndarray) -> dict[str, np.ndarray]:
        """The time loop's recurrent weights scaled by s, contiguous (see ``prepare``)."""

    @abstractmethod
    def _infer_loop(self, pre, state, weights, out) -> tuple[np.ndarray, ...]:
        """The forward time loop of ``infer``: pre → gate values, a<1..T> into out."""

    @abstractmethod
    def _backward_loop(self, ws, grad_out, grad_state) -> tuple:
        """The reverse time loop: fill ws["grad_z"]; return ∂L/∂(initial state)."""

    # -- workspace ------------------------------------------------------------

    def _workspace(self, T: int, B: int) -> dict[str, np.ndarray]:
        def make() -> dict[str, np.ndarray]:
            GH, H, dt = self.gates * self.hidden_size, self.hidden_size, self.dtype
            gates = np.empty((T, B, GH), dt)  # scaled pre-activations, then gate values
            ws = {
                "gates": gates,
                "grad_z": gates if self.grad_over_gates else np.empty((T, B, GH), dt),  # ∂L/∂pre-activations
                "a_seq": np.empty((T + 1, B, H), dt),  # a<0..T>
                "z_rec": np.empty((B, GH), dt),  # recurrent projection of one time step
                "tmp1": np.empty((B, H), dt),  # scratch of one time step
                "tmp2": np.empty((B, H), dt),  # scratch of one time step
                "scale": self._gate_scale(),  # (G·H,) s
                "w_ih_scaled": np.empty((GH, self.input_size), dt),  # s ∗ W_ih
                "b_scaled": np.empty(GH, dt),  # s ∗ (b_ih + b_hh)
            }
            ws.update(self._extra_buffers(T, B))
            return ws

        ws = self._ws.get((T, B), make)
        self._last_ws = ws
        self._forward_pending = True
        return ws


def new_layer(
    cls: type[Recurrent],
    input_size: int,
    hidden_size: int,
    rng: np.random.Generator,
    dtype=np.float32,
    forget_bias: float = 0.0,
) -> Recurrent:
    """A stand-alone recurrent layer that owns its parameters and zeroed gradients,
    initialised like ``CharModel``: weights U(−1/√H, 1/√H), biases 0 except the
    LSTM forget-gate bias b_f = ``forget_bias``."""
    G, H = cls.gates * hidden_size, hidden_size
    k = 1.0 / np.sqrt(H)
    w_ih = rng.uniform(-k, k, (G, input_size)).astype(dtype)
    w_hh = rng.uniform(-k, k, (G, H)).astype(dtype)
    b_ih, b_hh = np.zeros(G, dtype), np.zeros(G, dtype)
    if cls.forget_block is not None:
        b_ih[cls.forget_block * H : (cls.forget_block + 1) * H] = forget_bias
    grads = [np.zeros_like(p) for p in (w_ih, w_hh, b_ih, b_hh)]
    return cls(input_size, hidden_size, w_ih, w_hh, b_ih, b_hh, *grads)
