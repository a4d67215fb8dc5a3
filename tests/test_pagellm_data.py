"""PageLLM data (pagellm/data.py, pagellm/prompts.py): train-only (valid/test never read), golden
order, redundancy and diversity rules, the four pair families, held-out users, review text,
determinism, reuse, edge datasets."""

from __future__ import annotations

import dataclasses
import json
import math
import random

import numpy as np
import pandas as pd
import pytest

from bench.data.datasets import ensure_split
from bench.data.splits import SplitSpec, load_split, make_split, write_split
from bench.errors import ConfigError
from pagellm import prompts
from pagellm.data import (FAMILIES, FILES, Catalogue, DataConfig, build, golden_list, history_prompt,
                          history_prompts, label_count, load, mean_category_jaccard, review_texts,
                          stratified_labels)
from pagellm.prompts import ITEM_TOKEN_PATTERN, USER_TOKEN_PATTERN
from tests.conftest import make_interactions


@pytest.fixture(scope="module")
def split(workspace):
    return ensure_split("synthetic", workspace, SplitSpec())


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("pagellm") / "data"


@pytest.fixture(scope="module")
def data(split, out_dir):
    return build(split, DataConfig(), out_dir)


@pytest.fixture(scope="module")
def catalogue(split):
    return Catalogue.from_items(split.items, DataConfig().redundancy_title_jaccard)


def _items_of(frame: pd.DataFrame) -> dict[int, set[int]]:
    out: dict[int, set[int]] = {}
    for u, i in zip(frame["user"].to_numpy(), frame["item"].to_numpy()):
        out.setdefault(int(u), set()).add(int(i))
    return out


def _all_pairs(data):
    return data.pairs_train + data.pairs_heldout


def _meta_items(rows: list[tuple[str, str, str]]) -> pd.DataFrame:
    """(title, brand, categories) rows -> an items frame indexed 0..n-1."""
    return pd.DataFrame([{"title": t, "brand": b, "categories": c, "description": ""} for t, b, c in rows])


# --- train only -----------------------------------------------------------------------------------

def test_no_valid_or_test_item_appears_anywhere(split, data):
    held = _items_of(pd.concat([split.valid, split.test]))
    train = _items_of(split.train)
    for u, items in data.golden.items():
        assert set(items) <= train[u]
    for mapping in (data.label_lists, data.input_items):
        for u, items in mapping.items():
            assert set(items) <= train[u]
    for u, prompt in data.finetune_prompts.items():
        assert set(prompts.parse_items(prompt)) <= train[u]
    for p in _all_pairs(data):  # rejected items are drawn blind to valid/test (see the next test)
        assert set(p.chosen) <= train[p.user]
    for u, i, _r, prompt in data.rating_examples:
        assert i not in held.get(u, set())
        assert prompts.parse_items(prompt) == [i] and prompts.parse_users(prompt) == [u]
    n_user_texts = 0
    for text in data.pretrain_texts:  # every prompt about a user mentions only its train/negative items
        users = [int(m) for m in USER_TOKEN_PATTERN.findall(text)]
        items = {int(m) for m in ITEM_TOKEN_PATTERN.findall(text)}
        assert all(0 <= i < split.n_items for i in items)
        if users:
            n_user_texts += 1
            assert len(set(users)) == 1
            assert not items & held.get(users[0], set())
    assert n_user_texts > 0


def test_valid_and_test_are_never_read(split, data, out_dir, tmp_path):
    """Every file is the same whatever valid/test hold: here they are replaced by the very items
    drawn into rejected lists (a held-out mask would have changed those draws)."""
    drawn = [(p.user, i) for p in _all_pairs(data) for i, lab in zip(p.rejected, p.rejected_labels)
             if lab == 0 and p.source in ("sampled", "same-category", "near-duplicate", "same-brand-category")]
    assert drawn
    fake = pd.DataFrame({"user": [u for u, _ in drawn], "item": [i for _, i in drawn], "rating": 5.0,
                         "timestamp": 0})
    other = dataclasses.replace(split, valid=fake, test=fake.iloc[::-1].reset_index(drop=True))
    build(other, DataConfig(), tmp_path / "other")
    for name in FILES:
        assert (out_dir / name).read_bytes() == (tmp_path / "other" / name).read_bytes(), name

    class NoHeldOut:  # any read of valid/test fails
        def __getattr__(self, name):
            if name in ("valid", "test"):
                raise AssertionError(f"pagellm.data read split.{name}")
            return getattr(split, name)

    build(NoHeldOut(), DataConfig(), tmp_path / "blind")
    assert (out_dir / "pairs.jsonl").read_bytes() == (tmp_path / "blind" / "pairs.jsonl").read_bytes()


# --- golden lists ----------------------------------------------------------------------------------

def test_golden_order_follows_ratings_then_mean_rating(split, data, catalogue):
    train = split.train
    scores = split.item_mean_rating
    checked = 0
    for u, rows in train.groupby("user"):
        items, ratings = rows["item"].to_numpy(), rows["rating"].to_numpy()
        rating_of = dict(zip(items.tolist(), ratings.tolist()))
        g = data.golden[u]
        assert all(rating_of[a] >= rating_of[b] for a, b in zip(g, g[1:]))  # ratings never mix
        plain, removed = golden_list(items, ratings, scores, catalogue, diversity_lambda=0.0)
        keys = [(-rating_of[i], -scores[i], i) for i in plain]
        assert keys == sorted(keys)  # lambda = 0: rating desc, mean rating desc, item index
        assert sorted(plain + removed) == sorted(items.tolist())
        assert set(g) == set(plain)  # the re-rank only reorders
        checked += 1
    assert checked == split.n_users


def test_no_redundant_pair_inside_a_golden_list(split, data, catalogue, out_dir):
    rows = [json.loads(line) for line in (out_dir / "golden.jsonl").read_text().splitlines()]
    n_removed = 0
    for row in rows:
        for lst in (row["golden"], data.label_lists.get(row["user"], [])):
            assert not any(catalogue.redundant(a, b) for k, a in enumerate(lst) for b in lst[k + 1:])
        for i in row["removed"]:  # each dropped item duplicates a kept one
            assert any(catalogue.redundant(i, j) for j in row["golden"])
        n_removed += len(row["removed"])
    assert n_removed > 0  # synthetic data plants near-duplicates


def test_redundancy_definition_by_hand():
    cat = Catalogue.from_items(_meta_items([
        ("Acme Wooden Puzzle", "Acme", "Toys|Puzzles"),            # 0
        ("Acme Wooden Puzzle (2-Pack)", "ACME ", "Toys|Puzzles"),  # 1: 3/5 = 0.6 -> redundant with 0
        ("Acme Wooden Puzzle (2-Pack)", "Other", "Toys|Puzzles"),  # 2: other brand
        ("Acme Wooden Puzzle (2-Pack)", "Acme", "Toys|Games"),     # 3: other categories
        ("Acme Magnetic Block Set", "Acme", "Toys|Puzzles"),       # 4: titles differ (1/6)
        ("", "Acme", "Toys|Puzzles"),                              # 5: no title
    ]), redundancy_title_jaccard=0.6)
    assert cat.redundant(0, 1) and cat.redundant(1, 0)
    assert not any(cat.redundant(0, j) for j in (2, 3, 4, 5))
    assert cat.near_duplicates(0).tolist() == [1]
    assert cat.same_brand_category(0).tolist() == [1, 4, 5]


def test_diversity_rerank_changes_the_order_as_documented():
    cat = Catalogue.from_items(_meta_items([
        ("Alpha Kite", "a", "Toys|Outdoor"),      # 0 mean 4.9
        ("Beta Kite", "b", "Toys|Outdoor"),       # 1 mean 4.8, same categories as 0
        ("Gamma Tea", "c", "Food|Tea"),           # 2 mean 4.5, other categories
        ("Delta Puzzle", "d", "Toys|Puzzles"),    # 3 mean 4.0, rated 4: always after the 5s
    ]))
    scores = np.array([4.9, 4.8, 4.5, 4.0])
    items, ratings = [0, 1, 2, 3], [5.0, 5.0, 5.0, 4.0]
    assert golden_list(items, ratings, scores, cat, diversity_lambda=0.0) == ([0, 1, 2, 3], [])
    # lambda = 1: after 0, item 1 scores 4.8 - 1 * 1.0 = 3.8 < item 2's 4.5 - 0 -> 2 goes first.
    assert golden_list(items, ratings, scores, cat, diversity_lambda=1.0) == ([0, 2, 1, 3], [])
    # a small lambda keeps the mean-rating order: 4.8 - 0.2 = 4.6 > 4.5
    assert golden_list(items, ratings, scores, cat, diversity_lambda=0.2)[0] == [0, 1, 2, 3]
    assert mean_category_jaccard([0, 1], cat) == 1.0 and mean_category_jaccard([0, 2], cat) == 0.0


def test_redundant_items_are_dropped_keeping_the_better_ranked():
    cat = Catalogue.from_items(_meta_items([
        ("Acme Red Kite", "Acme", "Toys"), ("Acme Blue Kite", "Acme", "Toys"), ("Acme Tea", "Acme", "Food")]),
        redundancy_title_jaccard=0.5)  # the kites' titles share 2 of 4 words
    scores = np.array([4.0, 4.5, 3.0])  # 1 ranks above 0 (same rating, higher mean): 0 is dropped
    assert golden_list([0, 1, 2], [5.0, 5.0, 5.0], scores, cat, 1.0) == ([1, 2], [0])


# --- input / label split -------------------------------------------------------------------------

def test_input_label_split(split, data):
    config = DataConfig()
    train = split.train.sort_values(["user", "timestamp", "item"], kind="stable")
    for u, rows in train.groupby("user"):
        items = rows["item"].tolist()
        if u not in data.label_lists:
            assert len(items) < 2
            continue
        labels, inputs = data.label_lists[u], data.input_items[u]
        assert len(labels) == label_count(len(items), len(data.golden[u]), config)
        assert 1 <= len(labels) <= config.max_list_len and len(inputs) >= 1
        assert not set(labels) & set(inputs) and sorted(labels + inputs) == sorted(items)
        assert inputs == [i for i in items if i not in set(labels)]  # chronological
        assert prompts.parse_items(data.finetune_prompts[u]) == inputs[-config.max_history:]
        assert prompts.parse_users(data.finetune_prompts[u]) == [u]
    assert label_count(5, 5, config) == 3 and label_count(2, 2, config) == 1 and label_count(1, 1, config) == 0
    assert label_count(100, 90, config) == 20


def test_label_items_are_stratified_by_rating():
    golden = [1, 2, 3, 4, 5, 6]
    rating_of = {1: 5.0, 2: 5.0, 3: 5.0, 4: 5.0, 5: 4.0, 6: 4.0}
    labels = stratified_labels(golden, rating_of, 3, random.Random(0))
    assert sorted(rating_of[i] for i in labels) == [4.0, 5.0, 5.0]
    # quotas 1.5 / 0.5 tie on the remainder: the higher rating gets it
    labels = stratified_labels([1, 2, 3, 5], rating_of, 2, random.Random(0))
    assert [rating_of[i] for i in labels] == [5.0, 5.0]


# --- preference pairs ----------------------------------------------------------------------------

def test_every_pair_family_is_present_and_well_formed(split, data, catalogue):
    assert {p.kind for p in data.pairs_train} == set(FAMILIES)
    assert {p.kind for p in data.pairs_heldout} == set(FAMILIES)
    for p in _all_pairs(data):
        assert p.chosen == data.label_lists[p.user]
        assert len(p.rejected) == len(p.chosen) == len(p.chosen_labels) == len(p.rejected_labels)
        assert p.chosen_labels == [1] * len(p.chosen)
        assert p.rejected_labels == [int(a == b) for a, b in zip(p.chosen, p.rejected)]
        assert 0 in p.rejected_labels
        assert all(isinstance(i, int) and 0 <= i < split.n_items for i in p.rejected)
        diff = [k for k, lab in enumerate(p.rejected_labels) if lab == 0]
        if p.kind == "ranked":
            assert sorted(p.rejected) == sorted(p.chosen) and len(diff) == 2
            a, b = diff
            assert (p.rejected[a], p.rejected[b]) == (p.chosen[b], p.chosen[a])
        elif p.kind == "diversity":
            assert mean_category_jaccard(p.rejected, catalogue) > mean_category_jaccard(p.chosen, catalogue)
            anchor_cats = next(catalogue.cat_sets[i] for i in p.chosen if catalogue.cat_sets[i])
            assert all(catalogue.cat_sets[p.rejected[k]] == anchor_cats for k in diff)
        elif p.kind == "redundancy":
            (q,) = diff
            neighbours = [p.chosen[k] for k in (q - 1, q + 1) if 0 <= k < len(p.chosen)]
            new = p.rejected[q]
            rule = {"near-duplicate": catalogue.redundant,
                    "same-brand-category": lambda a, b: b in catalogue.same_brand_category(a),
                    "repeat": lambda a, b: a == b}[p.source]
            assert any(rule(new, n) for n in neighbours)


def test_preference_pairs_use_negatives_when_the_user_has_them(split, data):
    neg = split.negatives
    low = _items_of(neg[neg["rating"] < 3])
    interacted = _items_of(pd.concat([split.train, neg]))
    sources = set()
    for p in _all_pairs(data):
        if p.kind != "preference":
            continue
        new = {p.rejected[k] for k, lab in enumerate(p.rejected_labels) if lab == 0}
        if p.user in low:
            assert p.source == "negatives" and new <= low[p.user]
        else:
            assert p.source == "sampled" and not new & interacted.get(p.user, set())
        sources.add(p.source)
    assert sources == {"negatives", "sampled"}


def test_heldout_users_are_disjoint_from_train_pair_users(data):
    train_users = {p.user for p in data.pairs_train}
    heldout_users = {p.user for p in data.pairs_heldout}
    assert heldout_users and not train_users & heldout_users
    assert heldout_users <= set(data.heldout_users)
    assert len(data.heldout_users) == round(0.1 * len(data.label_lists))


# --- files -----------------------------------------------------------------------------------------

def test_build_is_deterministic_and_reused(split, data, out_dir, tmp_path):
    other = build(split, DataConfig(), tmp_path / "again")
    for name in (*FILES, "manifest.json"):
        assert (out_dir / name).read_bytes() == (tmp_path / "again" / name).read_bytes(), name
    mtimes = {name: (out_dir / name).stat().st_mtime_ns for name in (*FILES, "manifest.json")}
    reused = build(split, DataConfig(), out_dir)
    assert {name: (out_dir / name).stat().st_mtime_ns for name in mtimes} == mtimes
    assert reused.label_lists == data.label_lists == other.label_lists
    assert reused.pairs_train == data.pairs_train
    loaded = load(out_dir)
    assert loaded.rating_examples == data.rating_examples and loaded.config == DataConfig()
    manifest = loaded.manifest
    assert manifest["split_hash"] == split.hash and manifest["config"]["seed"] == 0
    assert manifest["counts"]["n_rating_examples"] == len(split.train) + len(split.negatives)
    reseeded = build(split, DataConfig(seed=1), tmp_path / "again")  # another config: rebuilt
    assert reseeded.manifest["config"]["seed"] == 1
    assert (tmp_path / "again" / "pairs.jsonl").read_bytes() != (out_dir / "pairs.jsonl").read_bytes()


def test_beauty_sample_without_metadata_builds(workspace, tmp_path):
    split = ensure_split("beauty-2018-sample", workspace, SplitSpec())
    data = build(split, DataConfig(), tmp_path / "beauty")
    assert set(data.pretrain_kinds) == {"first_order", "sequence"}
    assert data.label_lists and data.rating_examples
    assert {p.kind for p in data.pairs_train} >= {"preference", "ranked"}
    # nothing is redundant without metadata, and repeats are off by default: no redundancy pairs
    assert not any(p.kind == "redundancy" for p in _all_pairs(data))
    assert any("no item metadata" in note and "no redundancy pairs" in note for note in data.manifest["notes"])
    repeats = build(split, DataConfig(redundancy_allow_repeat=True), tmp_path / "repeat")
    redundancy = [p for p in _all_pairs(repeats) if p.kind == "redundancy"]
    assert redundancy and all(p.source == "repeat" for p in redundancy)
    first_order = [t for t, k in zip(data.pretrain_texts, data.pretrain_kinds) if k == "first_order"]
    assert sum('Review: "' in t for t in first_order) > 0.9 * len(first_order)  # the real file has text
    for text, kind in zip(data.pretrain_texts, data.pretrain_kinds):
        text = text.split(' Review: "')[0] if kind == "first_order" else text
        assert '"' not in text and ">," not in text  # ids only: no titles, no empty fields
    for text in data.finetune_prompts.values():
        assert '"' not in text and ">," not in text


def test_implicit_feedback_builds_without_rating_examples(tmp_path, items_table):
    df = make_interactions(seed=4)
    df["rating"] = np.nan
    spec = SplitSpec("random")
    write_split(make_split(df, items_table, spec), tmp_path / "split", spec, "implicit-toy")
    split = load_split(tmp_path / "split")
    data = build(split, DataConfig(), tmp_path / "pagellm")
    assert data.rating_examples == []
    assert any("implicit" in note for note in data.manifest["notes"])
    assert data.label_lists and data.pairs_train
    assert not any(p.kind == "ranked" for p in _all_pairs(data))  # nothing orders the items
    assert all("has interacted with" in text for text in data.finetune_prompts.values())
    assert not any("rated" in text for text in data.pretrain_texts)


# --- prompts ---------------------------------------------------------------------------------------

def test_prompt_templates_render_the_documented_text():
    assert prompts.user_token(5) == "<u_5>" and prompts.item_token(3) == "<i_3>"
    assert prompts.item_content_text(3, "Glowe Hydrating Body Mist", "Glowe", ["Beauty", "Fragrance"],
                                     "A body mist.") == (
        '<i_3> has title "Glowe Hydrating Body Mist", brand Glowe, categories Beauty > Fragrance, '
        "description: A body mist.")
    assert prompts.item_content_text(3, brand="Glowe") == "<i_3> has brand Glowe."
    assert prompts.item_content_text(3, description="one two three", max_description_words=2) == \
        "<i_3> has description: one two..."
    assert prompts.item_content_text(3) is None
    assert prompts.first_order_text(5, 7, 4.0) == "<u_5> rated <i_7> 4 out of 5."
    assert prompts.first_order_text(5, 7, 4.5, review="Nice.") == '<u_5> rated <i_7> 4.5 out of 5. Review: "Nice."'
    assert prompts.first_order_text(5, 7, math.nan) == "<u_5> interacted with <i_7>."
    assert prompts.second_order_text([3, 9], "brand", "Glowe") == "<i_3> and <i_9> share the brand Glowe."
    assert prompts.second_order_text([1, 3, 9], "category", "Beauty > Fragrance") == \
        "<i_1>, <i_3> and <i_9> share the category Beauty > Fragrance."
    assert prompts.sequence_text(5, [1, 7, 3]) == "<u_5> interacted with <i_1> <i_7> <i_3> in this order."
    assert prompts.rating_prompt(5, 7) == "How would <u_5> rate <i_7>? Rating:"
    assert prompts.rating_prompt(5, 7, "Nice.") == 'How would <u_5> rate <i_7>? Review: "Nice." Rating:'
    assert prompts.review_excerpt('one "two" <i_3> three  four', 3) == "one 'two' three..."
    assert prompts.review_excerpt("one two", 0) == "" and prompts.review_excerpt("", 5) == ""
    prompt = prompts.finetune_prompt(5, [1, 7], [5.0, 4.0])
    assert prompt == "<u_5> has rated <i_1> 5, <i_7> 4. Recommend a ranked page:"
    assert prompts.finetune_prompt(5, [1, 7]) == "<u_5> has interacted with <i_1> <i_7>. Recommend a ranked page:"
    assert prompts.finetune_prompt(5, [1, 7], [math.nan, math.nan]).startswith("<u_5> has interacted with")
    assert prompts.finetune_text(prompt, [9, 3]) == prompt + " <i_9> <i_3>"
    assert prompts.parse_items(prompts.finetune_text(prompt, [9, 3])) == [1, 7, 9, 3]
    assert prompts.special_tokens(2, 1) == ["<u_0>", "<u_1>", "<i_0>"]


def test_history_prompt_for_inference(split, data):
    u = next(iter(data.label_lists))
    rows = split.train[split.train["user"] == u].sort_values(["timestamp", "item"], kind="stable")
    text = history_prompt(split, u, ("train",))
    assert prompts.parse_items(text) == rows["item"].tolist()
    both = history_prompt(split, u, ("train", "valid"))
    assert set(prompts.parse_items(both)) == set(rows["item"]) | set(split.valid[split.valid["user"] == u]["item"])
    every = history_prompts(split, ("train",), DataConfig(max_history=2))
    assert len(every) == split.n_users and prompts.parse_items(every[u]) == rows["item"].tolist()[-2:]
    assert "has rated" in every[u]


def test_config_is_validated():
    with pytest.raises(ConfigError):
        DataConfig(label_fraction=1.0)
    with pytest.raises(ConfigError):
        DataConfig(max_review_words=-1)
    with pytest.raises(ConfigError):
        DataConfig.from_dict({"no_such_setting": 1})
    with pytest.raises(ConfigError):  # removed: no stage reads valid/test, not even as a mask
        DataConfig.from_dict({"mask_heldout_items": True})
    assert not DataConfig().redundancy_allow_repeat and DataConfig().max_review_words == 60
    assert DataConfig().hash == DataConfig().hash != DataConfig(seed=1).hash


# --- review text ------------------------------------------------------------------------------------

def _review_split(tmp_path, items_table):
    """A split whose every row has its own long review text ("w0 ... w99" + a marker per row)."""
    df = make_interactions(seed=5)
    df["review_text"] = [f"R-{u}-{i} " + " ".join(f"w{k}" for k in range(100)) for u, i in zip(df["user"], df["item"])]
    df["summary"] = "headline"
    spec = SplitSpec("random")
    write_split(make_split(df, items_table, spec), tmp_path / "split", spec, "review-toy")
    return load_split(tmp_path / "split")


def test_prompts_quote_train_and_negative_reviews_cut_to_the_word_budget(tmp_path, items_table):
    split = _review_split(tmp_path, items_table)
    assert len(split.reviews) == len(split.train) + len(split.negatives)
    data = build(split, DataConfig(max_review_words=5), tmp_path / "five")

    def excerpt(u, i):  # the marker plus 4 words, then "..."
        return f'Review: "R-{split.user_ids[u]}-{split.item_ids[i]} w0 w1 w2 w3..."'

    rated = pd.concat([split.train, split.negatives])
    first_order = [t for t, k in zip(data.pretrain_texts, data.pretrain_kinds) if k == "first_order"]
    assert len(first_order) == len(rated)
    for text in first_order:
        (u,), (i,) = prompts.parse_users(text), prompts.parse_items(text)
        assert text.endswith(excerpt(u, i)) and "w4" not in text
    assert len(data.rating_examples) == len(rated)
    for u, i, _r, prompt in data.rating_examples:
        assert prompt == f"How would <u_{u}> rate <i_{i}>? {excerpt(u, i)} Rating:"
    held = pd.concat([split.valid, split.test])
    markers = {f"R-{split.user_ids[u]}-{split.item_ids[i]} " for u, i in zip(held["user"], held["item"])}
    every = data.pretrain_texts + [r[3] for r in data.rating_examples] + list(data.finetune_prompts.values())
    assert not any(m in text for text in every for m in markers)  # held-out reviews are never quoted
    assert data.manifest["counts"]["n_reviews_quoted"] == len(rated)

    default = review_texts(split, DataConfig())
    assert all(len(t.split()) == 60 and t.endswith("...") for t in default.values())
    off = build(split, DataConfig(max_review_words=0), tmp_path / "off")
    assert not any("Review:" in t for t in off.pretrain_texts + [r[3] for r in off.rating_examples])
    assert any("no review text" in note for note in off.manifest["notes"])
