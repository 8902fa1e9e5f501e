"""The recurrent cells, one module each: a reference step pair in the lecture
notes' notation, then the fused whole-sequence layer (the fast path).

    lstm.py           lstm_step_forward / lstm_step_backward, LSTM
    gru.py            gru_step_forward / gru_step_backward, GRU (the notes' full GRU)
    rnn.py            rnn_step_forward / rnn_step_backward, RNN
    bidirectional.py  Bidirectional: any two cells, one in each direction of time
    base.py           the notes' weights from PyTorch's tensors, the Recurrent base class
"""

from charlm.cells.base import Recurrent, new_layer, notes_weights, pytorch_grads
from charlm.cells.bidirectional import Bidirectional
from charlm.cells.gru import GRU, gru_step_backward, gru_step_forward
from charlm.cells.lstm import LSTM, lstm_step_backward, lstm_step_forward
from charlm.cells.rnn import RNN, rnn_step_backward, rnn_step_forward

CELLS: dict[str, type[Recurrent]] = {"lstm": LSTM, "gru": GRU, "rnn": RNN}  # by the name of ``--cell``

__all__ = [
    "CELLS",
    "GRU",
    "LSTM",
    "RNN",
    "Bidirectional",
    "Recurrent",
    "gru_step_backward",
    "gru_step_forward",
    "lstm_step_backward",
    "lstm_step_forward",
    "new_layer",
    "notes_weights",
    "pytorch_grads",
    "rnn_step_backward",
    "rnn_step_forward",
]
