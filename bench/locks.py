"""File locks for what several processes may write at once: the datasets registry, one job of
the grid, one PageLLM stage. Two `bench` commands on one workspace (or Dask workers sharing it)
then never lose each other's registrations nor do the same work twice.

`filelock` takes an OS lock on the file (``flock`` on POSIX), so a lock held by a process that
is killed is released with it; the lock file itself stays (removing it would race).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout


@contextlib.contextmanager
def locked(path: str | os.PathLike) -> Iterator[None]:
    """Hold the lock `path`, waiting as long as another process holds it."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with FileLock(path):
        yield


@contextlib.contextmanager
def lock_if_free(path: str | os.PathLike) -> Iterator[bool]:
    """Yield True while holding the lock `path`, or False at once when another process holds it."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        yield False
        return
    try:
        yield True
    finally:
        lock.release()
