"""A fixed numpy/scipy workload that tells how fast this machine is right now.

Benchmarks state their budgets for the dev machine (2 cores, shared) and scale them by this
workload, timed in the same process and run: a slower or busier machine slows both alike, so
a budget does not fail spuriously there, and a real slowdown of the code still fails it.

The mix follows the evaluator's (bench/evaluator.py): random gathers from a table larger than
the L2 cache, a stable sort, a sparse product, elementwise logs. It takes about 0.1 s of CPU.
Time it with CPU time (time.process_time): on a shared machine the wall clock mostly measures
how long the scheduler left the process waiting.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import scipy.sparse as sp


def reference_workload(seed: int = 0) -> Callable[[], float]:
    """Build the inputs once; return the timed part (a function returning a checksum)."""
    rng = np.random.default_rng(seed)
    table = rng.random(1 << 22).astype(np.float32)  # 16 MiB
    idx = rng.integers(0, len(table), 2_000_000)
    keys = rng.integers(0, 1 << 40, 250_000)
    items = sp.random(5_000, 50, density=0.06, format="csr", random_state=seed)
    picks = sp.csr_matrix((np.ones(500_000), rng.integers(0, 5_000, 500_000), np.arange(0, 500_001, 20)),
                          shape=(25_000, 5_000))
    x = rng.random(500_000) + 0.5

    def work() -> float:
        total = float(table.take(idx).sum())
        total += float(np.argsort(keys, kind="stable")[0])
        total += float((picks @ items).sum())
        return total + float((x * np.log(x)).sum())

    return work


def cpu_seconds(fn: Callable[[], object], rounds: int) -> float:
    """The smallest CPU time of `rounds` calls of fn (the least disturbed one)."""
    best = float("inf")
    for _ in range(rounds):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return best
