"""A worker process of ``charlm.parallel.DataParallel``: ``python -m charlm.worker``.

It reads one message per request from the pipe on its stdin and answers with
one message on the pipe on its stdout (``multiprocessing.connection`` framing,
each message a JSON object; nothing is pickled). The first line describes the model and names the shared files holding
its parameters (read) and gradient (written); each ``step`` line names an
exchange file with the block's ids, targets, carried state and dropout masks,
into which the final state is written back. The worker computes
``CharModel.loss_and_grads`` on that block and answers with the loss, or with
the error it met. It ends at the end of its input (the main process closed the
pipe or ended) and ignores Ctrl-C, which is the main process's to handle.

Its BLAS uses one thread for its whole life: each row block has a core of its own.
"""

from __future__ import annotations

import json
import resource
import signal
import sys
from collections.abc import Iterator
from multiprocessing.connection import Connection

import numpy as np

from charlm import blas
from charlm.model import CharModel, ModelConfig
from charlm.sharedmem import exchange_layout, exchange_views, map_file


def _answer(out: Connection, **fields) -> None:
    fields["peak_rss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out.send_bytes(json.dumps(fields).encode())


def _requests(inp: Connection) -> Iterator[dict]:
    """Each request, until the main process closes its end of the pipe."""
    while True:
        try:
            yield json.loads(inp.recv_bytes())
        except EOFError:
            return


def serve(inp: Connection, out: Connection) -> None:
    requests = _requests(inp)
    init = next(requests, None)
    if init is None:
        return
    config = ModelConfig.from_dict(init["config"])
    dtype = np.dtype(init["dtype"])
    P = CharModel.count_params(config)
    params, grad = map_file(init["params"]), map_file(init["grad"])
    model = CharModel(config, dtype, flat=np.frombuffer(params, dtype, P), grad_flat=np.frombuffer(grad, dtype, P))
    _answer(out, ok=True, blas_threads=blas.threads())
    exchange_path, x = None, {}
    for msg in requests:
        try:
            if msg["exchange"] != exchange_path:
                layout, _ = exchange_layout(model, msg["T"], msg["B"], msg["masks"])
                x = exchange_views(map_file(msg["exchange"]), layout)
                exchange_path = msg["exchange"]
            state = [tuple(x["state_in"][layer]) for layer in range(config.layers)]
            masks = list(x["masks"]) if msg["masks"] else None
            with np.errstate(**msg["err"]):
                loss, new_state = model.loss_and_grads(x["ids"], x["targets"], state, dropout_masks=masks)
            for layer, arrays in enumerate(new_state):
                for s, a in enumerate(arrays):
                    x["state_out"][layer, s] = a
        except Exception as e:  # reported to the main process, which decides what the user sees
            _answer(out, ok=False, error=type(e).__name__, message=str(e))
            continue
        _answer(out, ok=True, loss=float(loss))


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    blas.limit_process(1)
    serve(Connection(sys.stdin.fileno(), writable=False), Connection(sys.stdout.fileno(), readable=False))


if __name__ == "__main__":
    main()
