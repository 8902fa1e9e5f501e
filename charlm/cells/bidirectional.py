"""Two recurrent layers over one sequence, one forward and one backward in time."""

from __future__ import annotations

import numpy as np

from charlm.cells.base import Recurrent


class Bidirectional:
    """Two recurrent layers over the same sequence, one forward and one backward
    in time, their outputs concatenated:

        a→<t> = cell→(x<t>, a→<t-1>)      t = 1, …, T
        a←<t> = cell←(x<t>, a←<t+1>)      t = T, …, 1
        a<t>  = [a→<t>, a←<t>]            (B, H→ + H←)

    Any cells work (LSTM, GRU, RNN, mixed). Each output depends on the whole
    sequence x<1..T>, which is what scoring or tagging a complete sequence needs
    and what a generator cannot have: the next character is not yet written when
    it is predicted, so a←<t> does not exist while sampling. A library layer:
    ``CharModel`` does not use it.

    Backward: ∂L/∂a<t> splits into its two halves; each cell runs its own
    backward pass (the backward cell in reversed time) and the two ∂L/∂x<t> add.
    Each cell accumulates into its own gradient arrays.
    """

    def __init__(self, forward_cell: Recurrent, backward_cell: Recurrent) -> None:
        if forward_cell.input_size != backward_cell.input_size:
            raise ValueError("both directions must take the same input size")
        self.fwd = forward_cell
        self.bwd = backward_cell
        self._x_rev: np.ndarray | None = None  # the reversed input of the last forward

    @property
    def input_size(self) -> int:
        return self.fwd.input_size

    @property
    def hidden_size(self) -> int:
        return self.fwd.hidden_size + self.bwd.hidden_size

    def zero_state(self, B: int) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
        return self.fwd.zero_state(B), self.bwd.zero_state(B)

    def forward(self, x: np.ndarray, state: tuple | None = None) -> tuple[np.ndarray, tuple]:
        """x: (T, B, D). state: (initial state of cell→ before x<1>, initial state
        of cell← after x<T>), or None for zeros. Returns [a→<t>, a←<t>] as a new
        (T, B, H→ + H←) array and the final states (cell→ after x<T>, cell← after x<1>)."""
        T, B, _ = x.shape
        if state is None:
            state = self.zero_state(B)
        out_f, s_f = self.fwd.forward(x, state[0])
        self._x_rev = np.ascontiguousarray(x[::-1])  # x<T..1>
        out_b, s_b = self.bwd.forward(self._x_rev, state[1])
        Hf = self.fwd.hidden_size
        out = np.empty((T, B, self.hidden_size), out_f.dtype)
        out[:, :, :Hf] = out_f
        out[:, :, Hf:] = out_b[::-1]
        return out, (s_f, s_b)

    def backward(
        self, grad_out: np.ndarray, x: np.ndarray, grad_state: tuple | None = None
    ) -> tuple[np.ndarray, tuple]:
        """grad_out: (T, B, H→ + H←) ∂L/∂a<t>; x: the input of the last forward;
        grad_state: ∂L/∂(both final states) or None. Accumulates both cells'
        parameter gradients; returns (∂L/∂x (T, B, D), ∂L/∂(both initial states))."""
        assert self._x_rev is not None, "backward without forward"
        Hf = self.fwd.hidden_size
        gs_f, gs_b = (None, None) if grad_state is None else grad_state
        grad_x, gi_f = self.fwd.backward(np.ascontiguousarray(grad_out[:, :, :Hf]), x, gs_f)
        grad_x_rev, gi_b = self.bwd.backward(np.ascontiguousarray(grad_out[::-1, :, Hf:]), self._x_rev, gs_b)
        grad_x += grad_x_rev[::-1]
        return grad_x, (gi_f, gi_b)
