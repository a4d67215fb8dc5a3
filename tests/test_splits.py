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


# --- review text (reviews.csv): train and negatives only, never scored ------------------------------

def _with_text(interactions: pd.DataFrame) -> pd.DataFrame:
    """Each row gets its own text; every 7th row has none; HTML entities and spacing to clean."""
    df = interactions.copy()
    df["review_text"] = [f"text of {u} on {i} &amp;  more" if k % 7 else ""
                         for k, (u, i) in enumerate(zip(df["user"], df["item"]))]
    df["summary"] = [f"about {i}" if k % 7 else "" for k, i in enumerate(df["item"])]
    return df


def test_reviews_hold_train_and_negative_text_only(interactions, items_table):
    df = _with_text(interactions)
    with_text = {(u, i) for u, i, t in zip(df["user"], df["item"], df["review_text"]) if t}
    for spec in (SplitSpec("random"), SplitSpec("random", cold_start=True), SplitSpec("loo")):
        f = make_split(df, items_table, spec)
        reviews = f["reviews"]
        assert list(reviews.columns) == ["user_id", "item_id", "summary", "review_text"]
        got = _pairs(reviews)
        assert got == (_pairs(f["train"]) | _pairs(f["negatives"])) & with_text
        assert not got & (_pairs(f["valid"]) | _pairs(f["test"]))  # held-out text would leak answers
        assert len(got) == len(reviews) and f["stats"]["n_reviews"] == len(reviews) > 0
        row = reviews.iloc[0]
        assert row["review_text"] == f"text of {row['user_id']} on {row['item_id']} & more"
        assert row["summary"] == f"about {row['item_id']}"
        assert list(f["train"].columns) == ["user_id", "item_id", "rating", "timestamp"]  # text stays out


def test_reviews_file_loads_with_indices_and_is_hashed(tmp_path, interactions, items_table):
    spec = SplitSpec("random", seed=0)
    f = make_split(_with_text(interactions), items_table, spec)
    h = write_split(f, tmp_path / "a", spec, "toy")
    split = load_split(tmp_path / "a")
    split.ground_truth("test")
    assert "reviews" not in vars(split)  # never scored: the evaluator's view does not read it
    reviews = split.reviews
    assert list(reviews.columns) == ["user", "item", "summary", "review_text"] and len(reviews) == len(f["reviews"])
    assert reviews["user"].dtype == np.int64 and reviews["item"].dtype == np.int64
    ids = list(zip(split.user_ids[reviews["user"]], split.item_ids[reviews["item"]]))
    assert ids == list(zip(f["reviews"]["user_id"], f["reviews"]["item_id"]))
    assert all(t == f"text of {u} on {i} & more" for (u, i), t in zip(ids, reviews["review_text"]))
    train = set(zip(split.train["user"], split.train["item"])) | set(zip(split.negatives["user"], split.negatives["item"]))
    assert set(zip(reviews["user"], reviews["item"])) <= train
    # without text the split differs only by reviews.csv, which the content hash covers
    plain = write_split(make_split(interactions, items_table, spec), tmp_path / "b", spec, "toy")
    assert plain != h and (tmp_path / "b" / "reviews.csv").read_text() == "user_id,item_id,summary,review_text\n"
    assert load_split(tmp_path / "b").reviews.empty
    (tmp_path / "a" / "reviews.csv").write_text("user_id,item_id,summary,review_text\n")
    assert not split_is_current(tmp_path / "a")
    (tmp_path / "b" / "reviews.csv").unlink()  # a split written before reviews.csv existed still loads
    old = load_split(tmp_path / "b")
    assert old.reviews.empty and list(old.reviews.columns) == ["user", "item", "summary", "review_text"]
    assert not split_is_current(tmp_path / "b")  # ... and ensure_split rebuilds it
