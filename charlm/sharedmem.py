"""Files in shared memory, mapped by the main process and one worker process,
and the layout of the exchange file through which they pass a row block.

The files go to ``/dev/shm`` (RAM) where there is one. Each is unlinked as soon
as both processes have mapped it, so nothing is left behind even on kill -9.
"""

from __future__ import annotations

import math
import mmap
import os
import tempfile

import numpy as np

from charlm.errors import CharlmError
from charlm.model import CharModel

Layout = dict[str, tuple[int, tuple[int, ...], np.dtype]]  # name → (byte offset, shape, dtype)


def shared_folders() -> list[str]:
    """Where shared files may go, best first: /dev/shm (RAM), then the temporary folder."""
    shm = "/dev/shm"
    folders = [shm] if os.path.isdir(shm) and os.access(shm, os.W_OK) else []
    return [*folders, tempfile.gettempdir()]


def shared_file(nbytes: int) -> tuple[str, mmap.mmap]:
    """A new private file of ``nbytes`` bytes, mapped read-write, in the first of
    ``shared_folders`` with room for it. Returns its path, for a worker to map,
    and the mapping. The space is reserved at once, so a full /dev/shm (64 MB in
    a default Docker container) means the next folder, not a crash (SIGBUS) on
    the first write to a page that cannot be had."""
    reasons = []
    for folder in shared_folders():
        try:
            fd, path = tempfile.mkstemp(prefix="charlm-", dir=folder)
        except OSError as e:
            reasons.append(f"{folder}: {e.strerror or e}")
            continue
        try:
            if hasattr(os, "posix_fallocate"):
                os.posix_fallocate(fd, 0, nbytes)
            else:
                os.ftruncate(fd, nbytes)
            return path, mmap.mmap(fd, nbytes)
        except OSError as e:
            os.unlink(path)
            reasons.append(f"{folder}: {e.strerror or e}")
        finally:
            os.close(fd)
    raise CharlmError(
        f"cannot reserve {nbytes / 2**20:.0f} MB of shared memory for the training worker processes "
        f"({'; '.join(reasons)}). Free some space there, or train in one row block, without worker processes."
    )


def map_file(path: str) -> mmap.mmap:
    """Map an existing file read-write."""
    fd = os.open(path, os.O_RDWR)
    try:
        return mmap.mmap(fd, 0)
    finally:
        os.close(fd)


def remove(path: str) -> None:
    """Unlink a shared file; one already gone is fine."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def exchange_layout(model: CharModel, T: int, B: int, masks: bool) -> tuple[Layout, int]:
    """Where each array of a worker's exchange file for a (T, B) block lives, and
    the file's size. The same function on both sides."""
    cfg, dtype = model.config, model.dtype
    states = len(model.rnn[0].state_names)
    arrays = {
        "ids": ((T, B), np.dtype(np.int64)),
        "targets": ((T, B), np.dtype(np.int64)),
        "state_in": ((cfg.layers, states, B, cfg.hidden), dtype),  # carried state of the block's rows
        "state_out": ((cfg.layers, states, B, cfg.hidden), dtype),  # final state
    }
    if masks:
        arrays["masks"] = ((cfg.layers, T, B, cfg.hidden), dtype)  # inverted-dropout masks
    layout, offset = {}, 0
    for name, (shape, dt) in arrays.items():
        layout[name] = (offset, shape, dt)
        offset += -(-math.prod(shape) * dt.itemsize // 64) * 64  # 64-byte aligned
    return layout, max(offset, 64)


def exchange_views(buf: mmap.mmap, layout: Layout) -> dict[str, np.ndarray]:
    """The arrays of an exchange file, as views of its mapping."""
    return {
        name: np.frombuffer(buf, dt, math.prod(shape), offset).reshape(shape)
        for name, (offset, shape, dt) in layout.items()
    }
