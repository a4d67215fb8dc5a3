"""The evaluator's outputs pinned to 1e-12: a speed-up must not move any metric.

tests/test_evaluator.py checks the evaluator against a naive reference to 1e-6 (the reference
sums in another order, and the category ild table is float32). This file pins the exact numbers
the evaluator gave before its speed-ups (commit "Pin the evaluator's outputs"), on random cases
large enough to exercise every code path (direct and remapped list scans, dense and sparse
Jaccard, few and many categories, text similarity, implicit ratings), so a restructured
evaluator must reproduce them to 1e-12, not only to the reference's 1e-6.

Regenerate (only on a deliberate metric change, with METRICS_VERSION bumped in bench/runner.py):
    PYTHONPATH=. python tests/test_evaluator_pinned.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from bench import evaluator as ev
from bench.evaluator import GroundTruth, evaluate

PINNED = Path(__file__).parent / "fixtures" / "expected" / "evaluator_pinned.npz"

# name: (case arguments, evaluate arguments, evaluator constants to override)
CASES = {
    "few-categories": ({"seed": 0, "n_cats": 12}, {}, {}),
    "many-categories": ({"seed": 1, "n_cats": 3000, "n_items": 4000}, {}, {}),
    "small-catalogue": ({"seed": 2, "n_items": 150, "n_cats": 20},
                        {"ks": (5, 50), "ranked_k": 60, "diversity_k": 10}, {}),
    "text": ({"seed": 3, "vectors": True}, {"similarity": "text"}, {}),
    "implicit": ({"seed": 4, "implicit": True}, {"ks": (10,), "ranked_k": 30, "diversity_k": 30}, {}),
    "remap-sparse-chunked": ({"seed": 5, "n_cats": 40}, {},
                             {"_SCRATCH_ENTRIES": 1 << 10, "_REMAP_ROWS": 37, "_MAX_TABLE_CLASSES": 1,
                              "_DIVERSITY_ROWS": 97, "_PWKT_BLOCK": 64}),
    "float32-jaccard": ({"seed": 6, "n_cats": 30}, {"diversity_k": 40}, {"_MAX_JACCARD_CODES": 0}),
    "float32-jaccard-dense": ({"seed": 7, "n_cats": 6}, {}, {"_MAX_JACCARD_CODES": 0}),
    "large-sets": ({"seed": 8, "n_cats": 60, "max_item_cats": 25}, {}, {}),
}


def pinned_case(seed, n_users=500, n_items=800, width=100, n_cats=12, max_item_cats=6, vectors=False,
                implicit=False):
    """Random (recs, users, GroundTruth) with holes, duplicates, history inside the lists,
    users without lists, users without positives, tied and missing ratings."""
    rng = np.random.default_rng(seed)
    n_pos = rng.integers(0, 9, n_users)  # 0: not evaluated
    t_users = np.repeat(np.arange(n_users), n_pos)
    t_items = rng.integers(0, n_items, len(t_users))  # repeats: duplicate held-out rows
    ratings = rng.integers(1, 6, len(t_users)).astype(float)
    ratings[implicit | (rng.random(len(ratings)) < 0.05)] = np.nan
    n_hist = rng.integers(0, 40, n_users)
    h_users = np.repeat(np.arange(n_users), n_hist)
    history = sp.csr_matrix((np.ones(len(h_users)), (h_users, rng.integers(0, n_items, len(h_users)))),
                            shape=(n_users, n_items))
    users = rng.permutation(n_users)[: int(0.9 * n_users)]
    recs = rng.integers(0, n_items, (len(users), width))
    planted = rng.random(len(t_users)) < 0.5  # put half of the positives in their user's list
    slot_of_user = np.full(n_users, -1)
    slot_of_user[users] = np.arange(len(users))
    rows = slot_of_user[t_users]
    ok = planted & (rows >= 0)
    recs[rows[ok], rng.integers(0, width, ok.sum())] = t_items[ok]
    recs[rng.random(recs.shape) < 0.05] = -1
    short = rng.random(len(users)) < 0.2  # lists that end early
    recs[short[:, None] & (np.arange(width) >= rng.integers(0, width, len(users))[:, None])] = -1
    n_item_cats = rng.integers(0, max_item_cats + 1, n_items)
    cat_rows = np.repeat(np.arange(n_items), n_item_cats)
    categories = sp.csr_matrix((np.ones(len(cat_rows)), (cat_rows, rng.integers(0, n_cats, len(cat_rows)))),
                               shape=(n_items, n_cats))
    vec = None
    if vectors:
        vec = rng.normal(size=(n_items, 16))
        vec[rng.random(n_items) < 0.1] = 0.0
    means = np.round(rng.uniform(1, 5, n_items) * 2) / 2
    truth = GroundTruth(n_users=n_users, n_items=n_items, test_users=t_users, test_items=t_items,
                        test_ratings=ratings, history=history, item_mean_rating=means,
                        item_categories=categories, item_vectors=vec)
    return recs, users, truth


def run_case(name):
    case_args, eval_args, constants = CASES[name]
    saved = {k: getattr(ev, k, None) for k in constants}
    try:
        for k, v in constants.items():
            setattr(ev, k, v)
        recs, users, truth = pinned_case(**case_args)
        return evaluate(recs, users, truth, **eval_args).per_user
    finally:
        for k, v in saved.items():
            setattr(ev, k, v)


@pytest.mark.parametrize("name", list(CASES))
def test_evaluator_outputs_pinned(name):
    frame = run_case(name)
    with np.load(PINNED) as pinned:
        assert frame.columns.tolist() == pinned[f"{name}/columns"].tolist()
        expected = pinned[f"{name}/values"]
    got = frame.to_numpy(dtype=np.float64)
    assert got.shape == expected.shape
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ["few-categories", "text"])
def test_chosen_metrics_alone_give_the_same_values(name):
    # Early stopping asks for one metric (bench.scoring.validate): it must equal the full run's.
    case_args, eval_args, _ = CASES[name]
    recs, users, truth = pinned_case(**case_args)
    full = evaluate(recs, users, truth, **eval_args)
    for metric in full.metrics:
        alone = evaluate(recs, users, truth, **eval_args, metrics=[metric])
        assert list(alone.metrics) == [metric] and alone.per_user.columns.tolist() == ["user", metric]
        assert alone.metrics[metric] == full.metrics[metric]
        np.testing.assert_array_equal(alone.per_user[metric].to_numpy(), full.per_user[metric].to_numpy())
    pair = evaluate(recs, users, truth, **eval_args, metrics=["pwkt", "recall@20"])
    assert list(pair.metrics) == ["recall@20", "pwkt"]  # in metric_names order
    with pytest.raises(ValueError, match="unknown metrics"):
        evaluate(recs, users, truth, **eval_args, metrics=["ndcg@10"])


if __name__ == "__main__":
    arrays = {}
    for name in CASES:
        frame = run_case(name)
        arrays[f"{name}/columns"] = np.array(frame.columns.tolist())
        arrays[f"{name}/values"] = frame.to_numpy(dtype=np.float64)
    np.savez_compressed(PINNED, **arrays)
    print(f"wrote {PINNED}")
