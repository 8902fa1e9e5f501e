"""The BLAS library NumPy links, and how many threads its products may use.

threadpoolctl finds the library (OpenBLAS, MKL, BLIS, FlexiBLAS) and sets its
thread count. The count holds for the whole process, not for the calling
thread: a limit is meant for stretches where one thread of the process does
all the BLAS work (a sampling loop, the main process's own row block), or for a
process that never needs more (a training worker process).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache

import numpy  # noqa: F401  (imported first, so that its BLAS is loaded when the search runs)
from threadpoolctl import ThreadpoolController


@cache
def _blas() -> ThreadpoolController:
    """The BLAS libraries loaded at the first call (NumPy's among them), found once."""
    return ThreadpoolController().select(user_api="blas")


def controllable() -> bool:
    """True when a BLAS library whose thread count can be set is loaded."""
    return bool(_blas().lib_controllers)


def info() -> list[dict]:
    """One dict per BLAS library: internal_api, version, num_threads, architecture …"""
    return _blas().info()


def threads() -> int:
    """The most threads any loaded BLAS library may use now (1 when none is found)."""
    return max((lib["num_threads"] for lib in info()), default=1)


@contextmanager
def limit(n: int) -> Iterator[None]:
    """Within the block, BLAS calls anywhere in the process use at most ``n`` threads."""
    with _blas().limit(limits=n):
        yield


def limit_process(n: int) -> None:
    """From now on, BLAS calls in this process use at most ``n`` threads."""
    _blas().limit(limits=n)
