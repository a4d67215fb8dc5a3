from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture
def shared() -> Path:
    if not SHARED.exists():
        pytest.skip("../shared is not available on this machine")
    return SHARED


def make_interactions(n_users: int = 60, n_items: int = 40, per_user: int = 12, seed: int = 0) -> pd.DataFrame:
    """Random explicit-feedback interactions with ratings 1-5 and increasing timestamps."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        items = rng.choice(n_items, size=rng.integers(2, per_user + 1), replace=False)
        for t, i in enumerate(items):
            rows.append((f"u{u}", f"i{i}", float(rng.choice([1, 2, 3, 4, 5], p=[.05, .05, .1, .3, .5])), 1000 + 10 * t))
    return pd.DataFrame(rows, columns=["user", "item", "rating", "timestamp"])


@pytest.fixture
def interactions() -> pd.DataFrame:
    return make_interactions()


@pytest.fixture
def items_table() -> pd.DataFrame:
    return pd.DataFrame({"item": [f"i{i}" for i in range(40)], "title": [f"title {i}" for i in range(40)],
                         "brand": [f"b{i % 5}" for i in range(40)],
                         "categories": [f"Toys|Sub{i % 4}" for i in range(40)], "description": ""})


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A fresh workspace shared by the tests of one module (splits are built once per module)."""
    from bench.paths import Workspace

    return Workspace(tmp_path_factory.mktemp("ws"))


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors on a shared 2-core machine: a second OpenMP thread only spins and makes an
    epoch several times slower. Used by the model test modules; restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def progress_decided_by_the_terminal():
    """`bench run --no-progress` (through `bench.cli.main`) turns bars off for the whole process;
    reset it after each test so a test's outcome never depends on which test ran before it."""
    yield
    from bench import progress

    progress.set_enabled(None)
