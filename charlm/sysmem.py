"""The memory this process can still have: Linux's MemAvailable, or what its cgroup's limit leaves.

v2: memory.max − memory.current; v1: memory.limit_in_bytes − memory.usage_in_bytes;
in both the cgroup's page cache (active and inactive file pages) counts as free,
as MemAvailable counts the machine's, and the tightest of the cgroup and its
ancestors wins. Swap is not counted. Where none of it can be read (another
system), the figure is unknown (None).
"""

from __future__ import annotations

from pathlib import Path

UNLIMITED = 2**60  # a cgroup limit at least this large is no limit (v1 writes "unlimited" as about 2⁶³)


def available_bytes(proc: Path = Path("/proc"), cgroup: Path = Path("/sys/fs/cgroup")) -> int | None:
    """Bytes this process can still have: the smaller of the machine's MemAvailable
    and what its cgroup's memory limit leaves; None where neither can be read."""
    found = [x for x in (_meminfo_available(proc), _cgroup_available(proc, cgroup)) if x is not None]
    return min(found) if found else None


def _meminfo_available(proc: Path) -> int | None:
    try:
        for line in (proc / "meminfo").read_text(encoding="ascii").splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text(encoding="ascii").strip())
    except (OSError, ValueError):
        return None  # missing, or "max" (no limit)


def _page_cache(stat: Path, keys: tuple[str, ...]) -> int:
    """The reclaimable page cache a cgroup's memory.stat counts (the sum of ``keys``)."""
    try:
        fields = dict(line.split()[:2] for line in stat.read_text(encoding="ascii").splitlines() if line.strip())
        return sum(int(fields.get(k, 0)) for k in keys)
    except (OSError, ValueError):
        return 0


def _cgroup_available(proc: Path, root: Path) -> int | None:
    """The least that the memory limits of this process's cgroup and its ancestors
    leave (usage less page cache), v2 or v1; None when no limit is set or readable."""
    try:
        lines = (proc / "self" / "cgroup").read_text(encoding="ascii").splitlines()
    except OSError:
        return None
    best = None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":  # v2: one unified hierarchy
            base, names = root, ("memory.max", "memory.current", ("active_file", "inactive_file"))
        elif "memory" in parts[1].split(","):  # v1: the memory controller's own hierarchy
            base = root / "memory"
            names = ("memory.limit_in_bytes", "memory.usage_in_bytes", ("total_active_file", "total_inactive_file"))
        else:
            continue
        folder = base / parts[2].lstrip("/")
        if not folder.is_dir():  # a namespaced view: the cgroup is the mount's root
            folder = base
        while True:
            limit, usage = _read_int(folder / names[0]), _read_int(folder / names[1])
            if limit is not None and usage is not None and limit < UNLIMITED:
                left = max(0, limit - usage + _page_cache(folder / "memory.stat", names[2]))
                best = left if best is None else min(best, left)
            if folder == base or base not in folder.parents:
                break
            folder = folder.parent
    return best
