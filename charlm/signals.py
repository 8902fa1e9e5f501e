"""Turning SIGINT and SIGTERM into a polite request to stop, for the length of a block."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def signals_call(request_stop: Callable[[int], None]) -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM call ``request_stop(signum)`` instead of
    interrupting; the previous handlers are back afterwards. Only the main thread may
    set handlers; elsewhere nothing is installed."""
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in STOP_SIGNALS:
            previous[sig] = signal.getsignal(sig)
            signal.signal(sig, lambda signum, frame: request_stop(signum))
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
