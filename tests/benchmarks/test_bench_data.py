"""Data preparation speed on real scale: ../shared/data/toys2014 (165k interactions).

Run: pytest tests/benchmarks -m benchmark --benchmark-only
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.data.readers import read_source
from bench.data.splits import SplitSpec, make_split

pytestmark = pytest.mark.benchmark

TOYS = Path(__file__).resolve().parents[3] / "shared" / "data" / "toys2014"


@pytest.fixture(scope="module")
def toys():
    if not TOYS.exists():
        pytest.skip("../shared/data/toys2014 is not available")
    return TOYS


def test_read_toys2014(benchmark, toys):
    interactions, items = benchmark.pedantic(read_source, args=(toys, "generic"), rounds=3, iterations=1)
    assert len(interactions) == 165_247 and interactions["user"].nunique() == 19_124


def test_split_toys2014(benchmark, toys):
    interactions, items = read_source(toys, "generic")
    frames = benchmark.pedantic(make_split, args=(interactions, items, SplitSpec("random", seed=0)),
                                rounds=3, iterations=1)
    assert frames["stats"]["n_users"] == 19_124
