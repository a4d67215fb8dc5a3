"""The ranking rule holds exactly (higher score first; equal scores, lower item index first),
also for items tied at the top-K cut-off, on the score path every model goes through."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from bench.ranking import top_k_indices
from bench.scoring import top_k


def rule(scores: np.ndarray, k: int) -> np.ndarray:
    """The rule written out: a full stable sort of every row on (-score, item index)."""
    return np.stack([np.lexsort((np.arange(len(row)), -row))[:k] for row in scores])


def by_rule(model, users: np.ndarray, history: sp.csr_matrix, k: int) -> np.ndarray:
    """top_k's contract by the rule: history masked, -1 for items left with -inf."""
    scores = np.array(model.score(users, history), dtype=np.float32)
    scores[history.nonzero()] = -np.inf
    out = rule(scores, k)
    out[np.take_along_axis(scores, out, axis=1) == -np.inf] = -1
    return out


@pytest.mark.parametrize("k", [1, 7, 20, 50, 60, 80])
def test_top_k_indices_follows_the_rule_with_heavy_ties(k):
    rng = np.random.default_rng(k)
    scores = rng.integers(0, 4, size=(40, 60)).astype(np.float32)  # ~15 items per value: ties everywhere
    scores[rng.random(scores.shape) < 0.2] = -np.inf
    scores[0] = 0.0  # one row all tied
    scores[1] = -0.0  # negative zero equals zero
    scores[2, ::2] = -0.0
    expected = rule(scores, k)
    assert (top_k_indices(scores, k) == expected).all()
    assert top_k_indices(scores, k).shape == (40, min(k, 60))


def test_top_k_indices_with_a_tie_order():
    scores = np.array([[1.0, 2.0, 2.0, 0.0, 2.0]], dtype=np.float32)
    assert top_k_indices(scores, 2).tolist() == [[1, 2]]
    assert top_k_indices(scores, 2, tie_order=np.array([4, 3, 2, 1, 0])).tolist() == [[4, 2]]
    assert top_k_indices(np.zeros((3, 0), np.float32), 5).shape == (3, 0)


def test_pop_counts_tied_at_the_cut_off():
    from baselines.popularity import PopModel

    # 10k items, the first 300 seen 1024 times each: equal counts, so the top 20 are items 0..19
    # (ties: lower index first). Large float32 counts leave no room for a tie-breaking offset.
    n_items, counts = 10_000, np.zeros(10_000, dtype=np.int64)
    counts[:300] = 1024
    counts[300:400] = 3
    split = SimpleNamespace(train=pd.DataFrame({"item": np.repeat(np.arange(n_items), counts)}), n_items=n_items)
    model = PopModel()
    model.fit(split, PopModel.Config(), None)
    users = np.arange(64)
    history = sp.random(64, n_items, density=0.001, format="csr", random_state=0, dtype=np.float32)
    history.data[:] = 1
    recs = top_k(model, users, history, 20)
    assert (recs == by_rule(model, users, history, 20)).all()
    assert recs[0].tolist() == [i for i in range(n_items) if history[0, i] == 0][:20]


def test_itemknn_zero_tails_tied_at_the_cut_off():
    from baselines.itemknn import ItemKNN

    # Few neighbours per item: most users have fewer than 100 items with a score > 0, and the
    # rest of their list is drawn from the items scored 0, lowest index first.
    rng = np.random.default_rng(0)
    x = sp.random(3000, 5000, density=0.001, format="csr", random_state=rng, dtype=np.float32)
    x.data[:] = 1
    model = ItemKNN()
    model.fit(SimpleNamespace(matrix=lambda parts: x), ItemKNN.Config(k=5), None)
    users = np.arange(300)
    history = x[users]
    recs = top_k(model, users, history, 100, batch_size=128)
    expected = by_rule(model, users, history, 100)
    scores = model.score(users, history)
    assert ((scores > 0).sum(axis=1) < 100).mean() > 0.9  # the case under test: zero tails
    assert (recs == expected).all()
