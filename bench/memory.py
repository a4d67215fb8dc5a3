"""Memory a job may take: the one reader of the memory available to this process, and one check.

Models whose memory grows with the square of the catalogue (EASE's dense n_items x n_items
matrix, ItemKNN's co-occurrences) estimate their need from the data's shape and call `require`
before they allocate anything big. A job that cannot fit is then refused with one message that
names the need, what is available and the setting that lowers the need (the runner records it
as a failed job and runs the rest of the grid), instead of being killed by the kernel halfway.

Two jobs started side by side (``--jobs N``) each see the same available memory; the check does
not reserve memory for the other one.
"""

from __future__ import annotations

import logging
from pathlib import Path

from bench.errors import NotEnoughMemory

logger = logging.getLogger(__name__)

GIB = 2**30
# A job may plan to use this share of what is available: the estimates are measured peaks of the
# model's big arrays, and the rest of the process (data frames, the evaluator) needs some room too.
USABLE_SHARE = 0.9
# `bench.scoring.top_k`'s own arrays per cell of a (users, n_items) batch of scores, on top of the
# model's scores: the float32 copy that masks the history, the partition, boolean masks and, where
# many scores tie at the k-th, a cumulative sum. Measured with tracemalloc: at most 15.1 bytes
# (20,000 items x 1,024 users, every score tied; 6-12 bytes on distinct scores).
TOP_K_BYTES_PER_CELL = 16
_NO_LIMIT = 2**60  # cgroup v1 writes "no limit" as a huge number (9223372036854771712)


def available_bytes() -> int:
    """Bytes this process can still allocate without swapping or being killed: the kernel's
    MemAvailable (through psutil), or less where a cgroup limit (a container, a Slurm or
    Kubernetes job) leaves less. psutil reads /proc/meminfo, which inside a container shows the
    whole host's memory, so the cgroup's limit and usage are read here too (v2 and v1)."""
    import psutil

    available = int(psutil.virtual_memory().available)
    headroom = cgroup_headroom()
    return available if headroom is None else min(available, headroom)


def cgroup_headroom(root: Path = Path("/sys/fs/cgroup"), proc_cgroup: Path = Path("/proc/self/cgroup")) -> int | None:
    """The least headroom (limit - usage, with the page cache the kernel can drop counted as free)
    over this process's memory cgroup and its ancestors, or None when none of them has a limit.

    An ancestor not visible in this mount namespace is skipped; the mount's root is always read,
    since in a container without its own cgroup namespace the mount root is the container's group.
    """
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    least = None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":  # v2: one unified hierarchy (in hybrid mode, mounted at .../unified)
            bases = [root, root / "unified"]
            limit_file, usage_file, cache_key = "memory.max", "memory.current", "inactive_file"
        elif "memory" in controllers.split(","):  # v1: the memory controller's own hierarchy
            bases = [root / "memory"]
            limit_file, usage_file, cache_key = "memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file"
        else:
            continue
        rel = Path(path.lstrip("/"))
        for base in bases:
            for group in [base / rel, *(base / p for p in rel.parents)]:
                headroom = _headroom(group, limit_file, usage_file, cache_key)
                if headroom is not None:
                    least = headroom if least is None else min(least, headroom)
    return least


def _headroom(group: Path, limit_file: str, usage_file: str, cache_key: str) -> int | None:
    try:
        limit_text = (group / limit_file).read_text().strip()
        usage = int((group / usage_file).read_text().strip())
    except (OSError, ValueError):
        return None
    if limit_text == "max" or not limit_text.isdigit() or int(limit_text) >= _NO_LIMIT:
        return None
    reclaimable = 0
    try:
        for stat_line in (group / "memory.stat").read_text().splitlines():
            key, _, value = stat_line.partition(" ")
            if key == cache_key:
                reclaimable = int(value)
                break
    except (OSError, ValueError):
        pass
    return max(0, int(limit_text) - max(0, usage - reclaimable))


def scoring_bytes(n_items: int, batch: int, model_bytes_per_cell: float) -> float:
    """Bytes the harness holds while it ranks one batch of `batch` users over `n_items` items
    (`bench.scoring.top_k`), given what the model's `score` itself allocates per cell."""
    return float(batch) * n_items * (TOP_K_BYTES_PER_CELL + model_bytes_per_cell)


def gib(n_bytes: float) -> str:
    return f"{n_bytes / GIB:.1f} GiB"


def require(need: float, model: str, what: str, n_items: int, fix: str) -> None:
    """Raise NotEnoughMemory unless `need` bytes fit in USABLE_SHARE of the available memory.

    The message reads "<model> needs about X GiB for <what> (n_items=N); this machine has
    Y GiB available. <fix>", where `fix` names the setting that lowers the need."""
    available = available_bytes()
    if need > USABLE_SHARE * available:
        raise NotEnoughMemory(f"{model} needs about {gib(need)} for {what} (n_items={n_items:,}); this machine "
                              f"has {gib(available)} available. {fix}")
    logger.info("%s needs about %s for %s (n_items=%d); %s available", model, gib(need), what, n_items,
                gib(available))
