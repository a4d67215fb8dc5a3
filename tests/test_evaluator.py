"""The evaluator against docs/metrics.md: hand-computed cases and a naive reference.

Every expected number below is worked out by hand in the comments (w(r) = 1/log2(r+1):
w(1) = 1, w(2) = 0.63093, w(3) = 0.5). The reference implementation at the bottom is
written from the spec with loops, sets and dicts, independently of bench/evaluator.py,
and the vectorised code must agree with it on random data to 1e-6.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from bench import evaluator as ev
from bench.evaluator import GroundTruth, clean_lists, evaluate, metric_names

W2 = 1 / math.log2(3)  # w(2) = 0.63093


def truth_of(n_users, n_items, positives, history=(), means=None, categories=None, vectors=None):
    """positives: [(user, item, rating)], history: [(user, item)], categories: {item: [cat, ...]}."""
    users, items, ratings = zip(*positives)
    hist = sp.csr_matrix((np.ones(len(history)), ([u for u, _ in history], [i for _, i in history])),
                         shape=(n_users, n_items))
    cats = None
    if categories is not None:
        n_cat = 1 + max((c for cs in categories.values() for c in cs), default=0)
        rows = [i for i, cs in categories.items() for _ in cs]
        cols = [c for cs in categories.values() for c in cs]
        cats = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n_items, n_cat))
    return GroundTruth(n_users=n_users, n_items=n_items, test_users=np.array(users), test_items=np.array(items),
                       test_ratings=np.array(ratings, dtype=float), history=hist,
                       item_mean_rating=np.zeros(n_items) if means is None else np.asarray(means, dtype=float),
                       item_categories=cats, item_vectors=vectors)


def one(recs, truth, users=None, **kw):
    recs = np.array(recs, dtype=np.int64)
    users = np.arange(len(recs)) if users is None else np.array(users)
    return evaluate(recs, users, truth, **kw)


def row_of(result, user):
    return result.per_user.set_index("user").loc[user]


# ------------------------------------------------------------------------------------------------
# The spec's worked example


def test_spec_worked_example():
    # a=0, b=1, x=2; T = {a:5, b:4} so G = [a, b]; L = [b, x, a]; K = 3 everywhere.
    truth = truth_of(1, 3, [(0, 0, 5.0), (0, 1, 4.0)])
    m = one([[1, 2, 0]], truth, ks=(3,), ranked_k=3, diversity_k=3).metrics
    assert m["recall@3"] == pytest.approx(1.0)
    assert m["recall_mvae@3"] == pytest.approx(1.0)
    assert m["ndcg@3"] == pytest.approx(0.91972, abs=1e-4)
    assert m["was"] == pytest.approx(0.46228, abs=1e-4)
    assert m["dpa"] == pytest.approx(0.43062, abs=1e-4)
    assert m["wmrd"] == pytest.approx(0.53772, abs=1e-4)
    assert m["pwkt"] == pytest.approx(-1.0, abs=1e-12)
    assert m["ild@3"] is None and m["entropy@3"] is None  # no categories: missing, not 0


def test_metric_names_order():
    assert metric_names((20, 40), 10) == ["recall@20", "recall@40", "recall_mvae@20", "recall_mvae@40",
                                         "ndcg@20", "ndcg@40", "was", "dpa", "wmrd", "pwkt", "ild@10",
                                         "entropy@10"]
    truth = truth_of(1, 3, [(0, 0, 5.0)])
    result = one([[0]], truth, ks=(20, 40), diversity_k=10)
    assert list(result.metrics) == metric_names((20, 40), 10)
    assert list(result.per_user.columns) == ["user"] + metric_names((20, 40), 10)


# ------------------------------------------------------------------------------------------------
# Hand-computed cases


def test_history_item_removed_and_list_compacted():
    # T = {3}; history {1}; L raw = [1, 2, 3] -> cleaned [2, 3]: r_gen(3) = 2, r_real(3) = 1.
    # K = 2: recall@2 = 1, ndcg@2 = w(2) / w(1) = 0.63093.
    # ranked_k = 2: Δ = 1; was = 1 - 1/2 = 0.5; dpa = 1 / (1 + log2 2) = 0.5; wmrd = 1/2; pwkt = 0 (|C| = 1).
    truth = truth_of(1, 6, [(0, 3, 5.0)], history=[(0, 1)])
    m = one([[1, 2, 3]], truth, ks=(2,), ranked_k=2).metrics
    assert m["recall@2"] == pytest.approx(1.0)
    assert m["ndcg@2"] == pytest.approx(W2)
    assert (m["was"], m["dpa"], m["wmrd"], m["pwkt"]) == pytest.approx((0.5, 0.5, 0.5, 0.0))
    # Had the history item stayed, item 3 would sit at position 3 > K: recall@2 would be 0.


def test_duplicates_removed():
    # L raw = [2, 2, 3] -> [2, 3]: the same numbers as the history case above.
    truth = truth_of(1, 6, [(0, 3, 5.0)])
    m = one([[2, 2, 3]], truth, ks=(2,), ranked_k=2).metrics
    assert m["recall@2"] == pytest.approx(1.0)
    assert m["ndcg@2"] == pytest.approx(W2)
    assert m["was"] == pytest.approx(0.5)


def test_clean_lists():
    # Row 0 (history {3}): [1, 2, 2, -1, 3, 1] -> [1, 2]; row 1 (history {}): [-1, 4, 4] -> [4].
    history = sp.csr_matrix(([1.0], ([0], [3])), shape=(2, 5))
    out = clean_lists(np.array([[1, 2, 2, -1, 3, 1], [-1, 4, 4, -1, -1, -1]]), np.array([0, 1]), history)
    assert out.tolist() == [[1, 2, -1, -1, -1, -1], [4, -1, -1, -1, -1, -1]]
    # history rows are picked by `users`, not by list position
    out = clean_lists(np.array([[3, 1]]), np.array([0]), history)
    assert out.tolist() == [[1, -1]]


def test_fewer_than_k_items_and_mean_rating_tie_break():
    # T = {0: 5, 1: 5}, train means item0 = 3.0, item1 = 4.0 -> G = [1, 0] (same rating, mean desc).
    # L = [0] only, K = 3. recall@3 = 1/2; recall_mvae@3 = 1/min(3, 2) = 0.5;
    # ndcg@3 = w(1) / (w(1) + w(2)) = 1 / 1.63093 = 0.61315.
    # item1: r_real 1, missing -> r_gen 4, Δ 3.  item0: r_real 2, r_gen 1, Δ 1, w = 0.63093.
    # was = 0.63093 (1 - 1/3) / 1.63093 = 0.25790; dpa = 0.63093 / 2 / 1.63093 = 0.19343;
    # wmrd = (1 * 3/3 + 0.63093 * 1/3) / 1.63093 = 0.74210; pwkt = 0 (|C| = 1).
    truth = truth_of(1, 3, [(0, 0, 5.0), (0, 1, 5.0)], means=[3.0, 4.0, 0.0])
    m = one([[0]], truth, ks=(3,), ranked_k=3).metrics
    assert m["recall@3"] == pytest.approx(0.5)
    assert m["recall_mvae@3"] == pytest.approx(0.5)
    assert m["ndcg@3"] == pytest.approx(0.61315, abs=1e-4)
    assert m["was"] == pytest.approx(0.25790, abs=1e-4)
    assert m["dpa"] == pytest.approx(0.19343, abs=1e-4)
    assert m["wmrd"] == pytest.approx(0.74210, abs=1e-4)
    assert m["pwkt"] == 0.0
    # With the means swapped G = [0, 1]: item0 r_real 1 = r_gen -> was = 1 * 1 / 1.63093 = 0.61315.
    truth = truth_of(1, 3, [(0, 0, 5.0), (0, 1, 5.0)], means=[4.0, 3.0, 0.0])
    assert one([[0]], truth, ks=(3,), ranked_k=3).metrics["was"] == pytest.approx(0.61315, abs=1e-4)


def test_tie_break_by_item_index():
    # T = {4: 5, 2: 5}, equal means -> G = [2, 4]. L = [4, 2]: both pairs swapped -> pwkt = -1;
    # L = [2, 4] -> pwkt = 1 and was = 1.
    truth = truth_of(1, 5, [(0, 4, 5.0), (0, 2, 5.0)])
    assert one([[4, 2]], truth, ks=(2,), ranked_k=2).metrics["pwkt"] == pytest.approx(-1.0)
    m = one([[2, 4]], truth, ks=(2,), ranked_k=2).metrics
    assert (m["pwkt"], m["was"]) == pytest.approx((1.0, 1.0))


def test_rating_beats_mean_and_index():
    # T = {0: 4, 1: 5}, item 0 has the higher mean and lower index, but rating decides: G = [1, 0].
    truth = truth_of(1, 2, [(0, 0, 4.0), (0, 1, 5.0)], means=[5.0, 1.0])
    m = one([[1, 0]], truth, ks=(2,), ranked_k=2).metrics
    assert (m["pwkt"], m["was"], m["wmrd"]) == pytest.approx((1.0, 1.0, 0.0))


def test_user_absent_from_recs_counts_with_empty_list():
    # user 0: perfect list [0]; user 1: T = {1}, no list at all -> every accuracy metric 0;
    # wmrd = w(1) min(|K+1-1|, K)/K / w(1) = 1 with K = 3; ild = entropy = 0 (fewer than 2 / no items).
    truth = truth_of(2, 3, [(0, 0, 5.0), (1, 1, 5.0)], categories={0: [0], 1: [1]})
    result = one([[0, 2]], truth, users=[0], ks=(3,), ranked_k=3, diversity_k=3)
    assert result.n_users == 2 and len(result.per_user) == 2
    u1 = row_of(result, 1)
    assert (u1["recall@3"], u1["ndcg@3"], u1["was"], u1["dpa"], u1["pwkt"]) == (0, 0, 0, 0, 0)
    assert u1["wmrd"] == pytest.approx(1.0)
    assert (u1["ild@3"], u1["entropy@3"]) == (0.0, 0.0)
    assert result.metrics["recall@3"] == pytest.approx(0.5)  # macro average: (1 + 0) / 2


def test_users_without_positives_are_skipped():
    # user 1 has a list but no held-out positive: not evaluated, not in per_user.
    truth = truth_of(3, 3, [(0, 0, 5.0), (2, 1, 5.0)])
    result = one([[0], [1], [1]], truth, ks=(1,), ranked_k=1)
    assert result.per_user["user"].tolist() == [0, 2]
    assert result.metrics["recall@1"] == pytest.approx(1.0)


def test_single_hit_gives_pwkt_zero():
    # |C| = 1 -> pwkt = 0 even though the item sits at its golden position.
    truth = truth_of(1, 3, [(0, 0, 5.0), (0, 1, 4.0)])
    assert one([[0, 2, 2]], truth, ks=(3,), ranked_k=3).metrics["pwkt"] == 0.0


def test_perfect_page():
    # T = {0: 5, 1: 4.5, 2: 4}, L = [0, 1, 2] = G: was = dpa = 1, wmrd = 0, pwkt = 1, recall = ndcg = 1.
    truth = truth_of(1, 4, [(0, 2, 4.0), (0, 0, 5.0), (0, 1, 4.5)])
    m = one([[0, 1, 2]], truth, ks=(3,), ranked_k=3).metrics
    assert (m["was"], m["dpa"], m["wmrd"], m["pwkt"], m["recall@3"], m["ndcg@3"]) == pytest.approx(
        (1.0, 1.0, 0.0, 1.0, 1.0, 1.0))


def test_nan_ratings_tie():
    # Implicit feedback: T = {5, 1} both NaN, equal means -> G = [1, 5] by index. L = [5, 1], K = 2:
    # item1 r_real 1 r_gen 2, item5 r_real 2 r_gen 1, Δ = 1 each.
    # was = (1 (1 - 1/2) + 0.63093 (1 - 1/2)) / 1.63093 = 0.5; dpa = (1/2 + 0.63093/2) / 1.63093 = 0.5;
    # wmrd = (1/2 + 0.63093/2) / 1.63093 = 0.5; pwkt = -1; ndcg@2 = 1 (both relevant at the top).
    truth = truth_of(1, 6, [(0, 5, np.nan), (0, 1, np.nan)])
    m = one([[5, 1]], truth, ks=(2,), ranked_k=2).metrics
    assert (m["was"], m["dpa"], m["wmrd"], m["pwkt"], m["ndcg@2"]) == pytest.approx((0.5, 0.5, 0.5, -1.0, 1.0))


def test_many_positives_beyond_k():
    # |T| = 4 > K = 2, L = [0, 1] = G[:2]: recall@2 = 2/4, recall_mvae@2 = 2/min(2, 4) = 1, ndcg@2 = 1.
    # Σw over G = 1 + 0.63093 + 0.5 + 0.43068 = 2.56161; the two found items have Δ = 0, the missing
    # ones r_gen = 3: Δ = 0 (r_real 3) and 1 (r_real 4).
    # was = 1.63093 / 2.56161 = 0.63668; wmrd = 0.43068 * 1/2 / 2.56161 = 0.08406.
    truth = truth_of(1, 5, [(0, 0, 5.0), (0, 1, 4.9), (0, 2, 4.8), (0, 3, 4.7)])
    m = one([[0, 1]], truth, ks=(2,), ranked_k=2).metrics
    assert (m["recall@2"], m["recall_mvae@2"], m["ndcg@2"]) == pytest.approx((0.5, 1.0, 1.0))
    assert m["was"] == pytest.approx(0.63668, abs=1e-4)
    assert m["wmrd"] == pytest.approx(0.08406, abs=1e-4)


def test_category_ild_and_entropy_by_hand():
    # categories: item0 {a, b}, item1 {b}, item2 {c}, item3 {} (a=0, b=1, c=2).
    # user 0, L@3 = [0, 1, 3]: J(0,1) = |{b}| / |{a,b}| = 1/2, J(0,3) = J(1,3) = 0 (no categories)
    #   -> Σ over ordered pairs = 1, n = 3 -> ild = 1 - 1/6 = 0.833333.
    #   entropy: item0 gives a 1/2, b 1/2; item1 gives b 1; item3 left out -> p = (1/4, 3/4)
    #   -> -(0.25 ln 0.25 + 0.75 ln 0.75) = 0.562335.
    # user 1, L@3 = [2, 3]: J(2,3) = 0 -> ild = 1; entropy: only item2 {c} -> 0.
    # user 2, L@3 = [3]: n < 2 -> ild = 0; no item with categories -> entropy 0.
    # user 3, L@3 = [0, 1, 2] (item 3 cut at K): J(0,1) = 1/2, J(0,2) = J(1,2) = 0 -> 1 - 1/6;
    #   entropy: a 1/2, b 3/2, c 1 over 3 -> p = (1/6, 1/2, 1/3) -> 1.011404.
    truth = truth_of(4, 4, [(u, 0, 5.0) for u in range(4)], categories={0: [0, 1], 1: [1], 2: [2], 3: []})
    result = one([[0, 1, 3, -1], [2, 3, -1, -1], [3, -1, -1, -1], [0, 1, 2, 3]], truth, ks=(3,), ranked_k=3,
                 diversity_k=3)
    ild = result.per_user["ild@3"].to_numpy()
    ent = result.per_user["entropy@3"].to_numpy()
    np.testing.assert_allclose(ild, [5 / 6, 1.0, 0.0, 5 / 6], atol=1e-6)
    np.testing.assert_allclose(ent, [0.562335, 0.0, 0.0, 1.011404], atol=1e-6)
    assert result.metrics["ild@3"] == pytest.approx((5 / 6 + 1 + 0 + 5 / 6) / 4)


def test_text_ild_by_hand():
    # vectors: item0 (1, 0), item1 (1, 1), item2 (0, 2), item3 (0, 0).
    # cos(0,1) = 1/√2 = 0.707107, cos(0,2) = 0, cos(1,2) = 0.707107; zero vector -> cosine 0.
    # L@3 = [0, 1, 2]: Σ ordered = 2 * 1.414214 = 2.828427 -> ild = 1 - 2.828427/6 = 0.528595.
    # L@3 = [1, 3]: cos = 0 -> ild = 1.
    vectors = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0], [0.0, 0.0]])
    truth = truth_of(2, 4, [(0, 0, 5.0), (1, 1, 5.0)], vectors=vectors, categories={0: [0], 1: [0]})
    result = one([[0, 1, 2], [1, 3, -1]], truth, ks=(3,), ranked_k=3, diversity_k=3, similarity="text")
    np.testing.assert_allclose(result.per_user["ild@3"], [0.528595, 1.0], atol=1e-6)
    assert result.metrics["entropy@3"] == 0.0  # still from categories: one category each
    missing = one([[0, 1, 2], [1, 3, -1]], truth_of(2, 4, [(0, 0, 5.0), (1, 1, 5.0)]), ks=(3,),
                  similarity="text")
    assert missing.metrics["ild@20"] is None and missing.per_user["ild@20"].isna().all()


def test_duplicate_held_out_rows_count_once():
    # (0, 1) appears twice (ratings 3 and 5): T = {1: 5, 0: 4} -> G = [1, 0], |T| = 2.
    truth = truth_of(1, 3, [(0, 1, 3.0), (0, 0, 4.0), (0, 1, 5.0)])
    m = one([[1, 0]], truth, ks=(2,), ranked_k=2).metrics
    assert (m["recall@2"], m["pwkt"], m["was"]) == pytest.approx((1.0, 1.0, 1.0))


def test_bad_inputs():
    truth = truth_of(2, 3, [(0, 0, 5.0)])
    with pytest.raises(ValueError, match="outside"):
        one([[0, 3]], truth)
    with pytest.raises(ValueError, match="outside"):
        one([[0, -2]], truth)
    with pytest.raises(ValueError, match="distinct"):
        evaluate(np.array([[0], [1]]), np.array([0, 0]), truth)
    with pytest.raises(ValueError, match="user"):
        evaluate(np.array([[0]]), np.array([5]), truth)
    with pytest.raises(ValueError, match="similarity"):
        one([[0]], truth, similarity="words")
    with pytest.raises(ValueError, match="cutoffs"):
        one([[0]], truth, ks=(0,))
    with pytest.raises(ValueError, match="integer"):
        evaluate(np.array([[0.0]]), np.array([0]), truth)


def test_empty_recs():
    truth = truth_of(2, 3, [(0, 0, 5.0), (1, 2, 4.0)])
    result = evaluate(np.zeros((0, 0), dtype=np.int64), np.zeros(0, dtype=np.int64), truth, ks=(2,))
    assert result.n_users == 2 and result.metrics["recall@2"] == 0.0 and result.metrics["wmrd"] == 1.0


# ------------------------------------------------------------------------------------------------
# Naive reference implementation, from the spec only


def reference(recs, users, truth, ks, ranked_k, diversity_k, similarity):
    """{user: {metric: value}} computed with plain Python, one user at a time."""
    hist = {}
    coo = truth.history.tocoo()
    for u, i, v in zip(coo.row, coo.col, coo.data):
        if v != 0:
            hist.setdefault(int(u), set()).add(int(i))
    positives = {}
    for u, i, r in zip(truth.test_users, truth.test_items, truth.test_ratings):
        r = -math.inf if math.isnan(r) else float(r)
        d = positives.setdefault(int(u), {})
        d[int(i)] = max(d.get(int(i), -math.inf), r)
    lists = {int(u): [int(x) for x in row] for u, row in zip(users, recs)}
    cats = {}
    if truth.item_categories is not None:
        c = truth.item_categories.tocoo()
        for i, j, v in zip(c.row, c.col, c.data):
            if v != 0:
                cats.setdefault(int(i), set()).add(int(j))

    def w(r):
        return 1.0 / math.log2(r + 1)

    out = {}
    for u in sorted(positives):
        T = positives[u]
        L = []
        for item in lists.get(u, []):
            if item != -1 and item not in hist.get(u, set()) and item not in L:
                L.append(item)
        G = sorted(T, key=lambda i: (-T[i], -truth.item_mean_rating[i], i))
        res = {}
        for k in ks:
            top = L[:k]
            found = len([i for i in top if i in T])
            res[f"recall@{k}"] = found / len(T)
            res[f"recall_mvae@{k}"] = found / min(k, len(T))
            dcg = sum(1 / math.log2(p + 2) for p, i in enumerate(top) if i in T)
            idcg = sum(1 / math.log2(p + 2) for p in range(min(k, len(T))))
            res[f"ndcg@{k}"] = dcg / idcg
        K = ranked_k
        top = L[:K]
        r_real = {i: p + 1 for p, i in enumerate(G)}
        r_gen = {i: (top.index(i) + 1 if i in top else K + 1) for i in G}
        C = [i for i in G if i in top]
        wsum = sum(w(r_real[i]) for i in G)
        delta = {i: abs(r_gen[i] - r_real[i]) for i in G}
        res["was"] = sum(w(r_real[i]) * max(0.0, 1 - delta[i] / K) for i in C) / wsum
        res["dpa"] = sum(w(r_real[i]) / (1 + math.log2(1 + delta[i])) for i in C) / wsum
        res["wmrd"] = sum(w(r_real[i]) * min(delta[i], K) / K for i in G) / wsum
        if len(C) < 2:
            res["pwkt"] = 0.0
        else:
            num = den = 0.0
            for a in range(len(C)):
                for b in range(a + 1, len(C)):
                    i, j = C[a], C[b]
                    ww = w(r_real[i]) * w(r_real[j])
                    s = (r_gen[i] - r_gen[j]) * (r_real[i] - r_real[j])
                    num += ww * (1 if s > 0 else -1 if s < 0 else 0)
                    den += ww
            res["pwkt"] = num / den
        top = L[:diversity_k]
        n = len(top)
        if truth.item_categories is not None:
            shares = {}
            for i in top:
                for c in cats.get(i, ()):
                    shares[c] = shares.get(c, 0.0) + 1 / len(cats[i])
            total = sum(shares.values())
            res[f"entropy@{diversity_k}"] = -sum(x / total * math.log(x / total) for x in shares.values()) \
                if total > 0 else 0.0
        if similarity == "category" and truth.item_categories is not None:
            def sim(i, j):
                a, b = cats.get(i, set()), cats.get(j, set())
                return len(a & b) / len(a | b) if a | b else 0.0
        elif similarity == "text" and truth.item_vectors is not None:
            def sim(i, j):
                x, y = truth.item_vectors[i], truth.item_vectors[j]
                nx, ny = math.sqrt(sum(v * v for v in x)), math.sqrt(sum(v * v for v in y))
                return sum(p * q for p, q in zip(x, y)) / (nx * ny) if nx > 0 and ny > 0 else 0.0
        else:
            sim = None
        if sim is not None:
            pair_sum = sum(sim(i, j) for i in top for j in top if i != j)
            res[f"ild@{diversity_k}"] = 1 - pair_sum / (n * (n - 1)) if n >= 2 else 0.0
        out[u] = res
    return out


def random_case(seed, n_users=40, n_items=30, width=12, n_cats=6, vectors=False, implicit=False):
    rng = np.random.default_rng(seed)
    positives, history = [], []
    for u in range(n_users):
        if rng.random() < 0.15:
            continue  # no held-out positive: not evaluated
        for i in rng.choice(n_items, rng.integers(1, 9), replace=False):
            rating = np.nan if implicit or rng.random() < 0.05 else float(rng.integers(1, 6))
            positives.append((u, int(i), rating))
        if rng.random() < 0.1:  # a duplicate held-out row with another rating
            positives.append((u, positives[-1][1], float(rng.integers(1, 6))))
        history += [(u, int(i)) for i in rng.choice(n_items, rng.integers(0, 6), replace=False)]
    listed = rng.permutation(n_users)[: int(0.8 * n_users)]  # some users get no list at all
    recs = rng.integers(0, n_items, (len(listed), width))
    recs[rng.random(recs.shape) < 0.15] = -1  # holes and short lists
    short = rng.random(len(listed)) < 0.3
    recs[short, rng.integers(0, width):] = -1
    categories = {i: list(rng.choice(n_cats, rng.integers(0, 4), replace=False)) for i in range(n_items)}
    means = np.round(rng.uniform(1, 5, n_items) * 2) / 2  # halves: ties between items
    means[rng.random(n_items) < 0.2] = 0.0
    vec = None
    if vectors:
        vec = rng.normal(size=(n_items, 5))
        vec[rng.random(n_items) < 0.1] = 0.0
    truth = truth_of(n_users, n_items, positives, history, means=means, categories=categories, vectors=vec)
    return recs, listed, truth


def compare(recs, users, truth, ks=(3, 5, 10), ranked_k=6, diversity_k=4, similarity="category"):
    result = evaluate(recs, users, truth, ks=ks, ranked_k=ranked_k, diversity_k=diversity_k, similarity=similarity)
    expected = reference(recs, users, truth, ks, ranked_k, diversity_k, similarity)
    assert result.per_user["user"].tolist() == sorted(expected)
    assert result.n_users == len(expected) == len(result.per_user)
    frame = pd.DataFrame.from_dict(expected, orient="index")
    for name in metric_names(ks, diversity_k):
        if name not in frame:
            assert result.metrics[name] is None and result.per_user[name].isna().all()
            continue
        np.testing.assert_allclose(result.per_user[name].to_numpy(), frame[name].to_numpy(), atol=1e-6,
                                   err_msg=name)
        assert result.metrics[name] == pytest.approx(frame[name].mean(), abs=1e-6)
    return result


@pytest.mark.parametrize("seed", range(8))
def test_matches_reference_random(seed):
    # odd seeds: a small catalogue, so lists hit many held-out items (large |C| for pwkt)
    recs, users, truth = random_case(seed, n_items=30 if seed % 2 == 0 else 14)
    compare(recs, users, truth)


def test_matches_reference_default_cutoffs():
    recs, users, truth = random_case(99, n_users=150, n_items=120, width=110, n_cats=12)
    compare(recs, users, truth, ks=(20, 40, 100), ranked_k=100, diversity_k=20)


@pytest.mark.parametrize("seed", range(3))
def test_matches_reference_cutoffs_longer_than_lists(seed):
    recs, users, truth = random_case(100 + seed, width=5)
    compare(recs, users, truth, ks=(1, 4, 20), ranked_k=20, diversity_k=8)


@pytest.mark.parametrize("seed", range(3))
def test_matches_reference_text_and_implicit(seed):
    recs, users, truth = random_case(200 + seed, vectors=True, implicit=seed != 2)
    compare(recs, users, truth, similarity="text")


def test_matches_reference_without_categories():
    recs, users, truth = random_case(300)
    truth = GroundTruth(**{**truth.__dict__, "item_categories": None})
    result = compare(recs, users, truth)
    assert result.metrics["ild@4"] is None and result.metrics["entropy@4"] is None


@pytest.mark.parametrize("seed", range(3))
def test_matches_reference_on_every_code_path(seed, monkeypatch):
    # Tiny chunks and thresholds force the remap scan, the sparse ild and many pwkt blocks.
    recs, users, truth = random_case(400 + seed, n_users=60, width=15)
    monkeypatch.setattr(ev, "_SCRATCH_ENTRIES", 64)  # 64 < 30 * 16: remap mode
    monkeypatch.setattr(ev, "_REMAP_ROWS", 7)
    monkeypatch.setattr(ev, "_MAX_TABLE_CLASSES", 1)  # sparse block-Gram ild
    monkeypatch.setattr(ev, "_DIVERSITY_ROWS", 5)
    monkeypatch.setattr(ev, "_PWKT_BLOCK", 8)
    compare(recs, users, truth, ks=(2, 7), ranked_k=9, diversity_k=6)
    monkeypatch.setattr(ev, "_SCRATCH_ENTRIES", 30 * 16)  # direct mode, 16-row chunks
    monkeypatch.setattr(ev, "_MAX_TABLE_CLASSES", 10_000)
    compare(recs, users, truth, ks=(2, 7), ranked_k=9, diversity_k=6)


def test_clean_lists_matches_reference():
    rng = np.random.default_rng(7)
    recs = rng.integers(-1, 20, (50, 15))
    history = sp.random(50, 20, density=0.2, random_state=3, format="csr")
    users = rng.permutation(50)
    out = clean_lists(recs, users, history)
    for row, u, got in zip(recs, users, out):
        seen = set(history[u].indices)
        want = []
        for i in row:
            if i >= 0 and i not in seen and i not in want:
                want.append(int(i))
        assert got.tolist() == want + [-1] * (len(row) - len(want))
