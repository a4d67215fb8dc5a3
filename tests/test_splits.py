"""The split contract: disjoint, deterministic, 80/10/10 up to rounding, cold-start halves train."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bench.data.splits import SplitSpec, load_split, make_split, split_is_current, write_split
from bench.errors import ConfigError, DataError
from tests.conftest import make_interactions


def _pairs(frame: pd.DataFrame) -> set:
    return set(zip(frame["user_id"], frame["item_id"]))


def test_random_split_is_disjoint_and_covers_positives(interactions, items_table):
    f = make_split(interactions, items_table, SplitSpec("random", seed=0))
    train, valid, test = _pairs(f["train"]), _pairs(f["valid"]), _pairs(f["test"])
    assert not (train & valid) and not (train & test) and not (valid & test)
    pos = interactions[interactions["rating"] > 3]
    counts = pos.groupby("user").size()
    kept = counts[counts >= 3]
    assert train | valid | test == {(u, i) for u, i in zip(pos["user"], pos["item"]) if u in kept.index}
    assert f["stats"]["n_dropped_users"] == interactions["user"].nunique() - len(kept)
    # every kept user has at least one valid and one test item, and at least one train item
    for frame in (f["train"], f["valid"], f["test"]):
        assert set(frame["user_id"]) == set(kept.index)


def test_random_split_proportions_per_user():
    df = make_interactions(n_users=30, n_items=200, per_user=60, seed=3)
    df["rating"] = 5.0
    f = make_split(df, pd.DataFrame(columns=["item"]), SplitSpec("random", seed=1))
    n = df.groupby("user").size()
    for name, share in (("valid", 0.1), ("test", 0.1)):
        got = f[name].groupby("user_id").size()
        expected = np.maximum(1, np.floor(0.1 * n + 0.5)).astype(int)
        assert (got.reindex(n.index) == expected).all(), name
    total = sum(len(f[p]) for p in ("train", "valid", "test"))
    assert abs(len(f["train"]) / total - 0.8) < 0.03


def test_split_is_deterministic_and_seeded(interactions, items_table):
    a = make_split(interactions, items_table, SplitSpec("random", seed=0))
    shuffled = interactions.sample(frac=1.0, random_state=7)
    b = make_split(shuffled, items_table, SplitSpec("random", seed=0))
    c = make_split(interactions, items_table, SplitSpec("random", seed=1))
    assert _pairs(a["test"]) == _pairs(b["test"])  # row order of the input does not matter
    assert _pairs(a["test"]) != _pairs(c["test"])


def test_loo_holds_out_latest(interactions, items_table):
    f = make_split(interactions, items_table, SplitSpec("loo"))
    assert f["test"].groupby("user_id").size().eq(1).all()
    assert f["valid"].groupby("user_id").size().eq(1).all()
    latest_train = f["train"].groupby("user_id")["timestamp"].max()
    assert (f["valid"].set_index("user_id")["timestamp"] >= latest_train.reindex(f["valid"]["user_id"]).values).all()
    assert (f["test"].set_index("user_id")["timestamp"].values
            >= f["valid"].set_index("user_id")["timestamp"].reindex(f["test"]["user_id"]).values).all()


def test_temporal_split_is_chronological(interactions, items_table):
    f = make_split(interactions, items_table, SplitSpec("temporal"))
    last_train = f["train"].groupby("user_id")["timestamp"].max()
    first_test = f["test"].groupby("user_id")["timestamp"].min()
    assert (first_test >= last_train.reindex(first_test.index)).all()


def test_cold_start_keeps_valid_test_and_halves_train(interactions, items_table):
    base = make_split(interactions, items_table, SplitSpec("random", seed=0))
    cold = make_split(interactions, items_table, SplitSpec("random", seed=0, cold_start=True))
    assert _pairs(cold["valid"]) == _pairs(base["valid"]) and _pairs(cold["test"]) == _pairs(base["test"])
    assert _pairs(cold["train"]) < _pairs(base["train"])
    n = base["train"].groupby("user_id").size()
    kept = cold["train"].groupby("user_id").size().reindex(n.index)
    assert (kept == np.ceil(n / 2)).all()
    assert SplitSpec("random", 0, True).name == "random-s0-cold50"


def test_negatives_are_low_ratings_only(interactions, items_table):
    f = make_split(interactions, items_table, SplitSpec("random"))
    assert (f["negatives"]["rating"] <= 3).all()
    assert not (_pairs(f["negatives"]) & (_pairs(f["train"]) | _pairs(f["test"])))


def test_implicit_feedback_rows_are_positive(items_table):
    df = make_interactions(seed=4)
    df["rating"] = np.nan
    f = make_split(df, items_table, SplitSpec("random"))
    assert len(f["negatives"]) == 0
    assert sum(len(f[p]) for p in ("train", "valid", "test")) == len(df[df.groupby("user")["user"].transform("size") >= 3])


def test_write_load_roundtrip_and_hash(tmp_path, interactions, items_table):
    spec = SplitSpec("random", seed=0)
    f = make_split(interactions, items_table, spec)
    h1 = write_split(f, tmp_path / "a", spec, "toy")
    h2 = write_split(make_split(interactions, items_table, spec), tmp_path / "b", spec, "toy")
    assert h1 == h2 and len(h1) == 16
    split = load_split(tmp_path / "a")
    assert split.hash == h1 and split_is_current(tmp_path / "a")
    assert len(split.train) == len(f["train"]) and split.n_users == f["stats"]["n_users"]
    # indices round-trip to the original ids
    assert set(zip(split.user_ids[split.test["user"]], split.item_ids[split.test["item"]])) == _pairs(f["test"])
    assert split.history("test").nnz == len(split.train) + len(split.valid)
    assert split.item_categories is not None and split.item_categories.shape[0] == split.n_items
    (tmp_path / "a" / "test.csv").write_text("user_id,item_id,rating,timestamp\n")
    assert not split_is_current(tmp_path / "a")  # a tampered file invalidates the split


def test_bad_inputs():
    with pytest.raises(ConfigError, match="protocol"):
        SplitSpec("bogus")
    df = pd.DataFrame({"user": ["a", "a"], "item": ["x", "y"], "rating": [5.0, 5.0], "timestamp": [1, 2]})
    with pytest.raises(DataError, match="at least 3"):
        make_split(df, pd.DataFrame(columns=["item"]), SplitSpec())
