"""Data preparation up to the size of Amazon 2018 Sports (2.84M reviews): prepare + split + RecBole
export grow about linearly in CPU time and peak memory (per review, the largest size costs at most
1.5x the smallest) and stay within the dev machine's memory.

The measurement is scripts/scale_data.py's (docs/performance.md, section 3): synthetic data at
0.1, 0.35 and 1 times the Sports size, generated once into a cache folder (the first run spends
about 6 minutes generating; set BENCH_SCALE_CACHE to keep it elsewhere than the temp
folder), then `bench data prepare` and `bench data split --recbole` in fresh processes, whose CPU
seconds and peak resident memory (ru_maxrss) are read from the kernel, best of 3 runs per size
(BENCH_SCALE_ROUNDS; about 12 minutes in all on the dev machine). The tiny size runs first:
its cost is the fixed part (interpreter, imports), subtracted before dividing by the reviews.
Targets are ratios (largest size against smallest, per review), not seconds, so a slower or busier
machine does not fail them. BENCH_SCALE_FRACTIONS (e.g. "0.02,0.05") runs smaller sizes.

Run: pytest tests/benchmarks -m benchmark --benchmark-only -k scale
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

# a benchmark only: `pytest -m slow` (the long tests) stays free of its 12-18 minutes
pytestmark = pytest.mark.benchmark

ROOT = Path(__file__).resolve().parents[2]
MAX_GROWTH = 1.5  # per-review cost at the largest size / at the smallest
MEMORY_LIMIT_MB = 24 * 1024  # the dev machine has 23 GB (and other jobs)


def _scale_data():
    spec = importlib.util.spec_from_file_location("scale_data", ROOT / "scripts" / "scale_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_data_preparation_grows_linearly_to_sports_size(benchmark):
    scale = _scale_data()
    fractions = tuple(float(f) for f in os.environ.get("BENCH_SCALE_FRACTIONS", "0.1,0.35,1").split(","))
    cache = Path(os.environ.get("BENCH_SCALE_CACHE", scale.DEFAULT_CACHE))
    rounds = int(os.environ.get("BENCH_SCALE_ROUNDS", "3"))
    rows = benchmark.pedantic(scale.measure_all, args=(fractions, cache, rounds), rounds=1, iterations=1)
    benchmark.extra_info["rows"] = rows
    print("\n" + scale.table(rows))
    smallest, largest = rows[1], rows[-1]
    assert largest["n_reviews"] > 3 * smallest["n_reviews"]
    cpu_growth = largest["cpu_us_per_review"] / smallest["cpu_us_per_review"]
    memory_growth = largest["bytes_per_review"] / smallest["bytes_per_review"]
    assert cpu_growth <= MAX_GROWTH, f"CPU per review grew {cpu_growth:.2f}x from the smallest to the largest size"
    assert memory_growth <= MAX_GROWTH, f"peak memory per review grew {memory_growth:.2f}x"
    assert max(r["peak_mb"] for r in rows) < MEMORY_LIMIT_MB
