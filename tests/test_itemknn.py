"""ItemKNN's similarity computed by hand: the cosine, and the shrunk cosine co / (|i| |j| + shrink)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import scipy.sparse as sp

from baselines.itemknn import ItemKNN
from bench.errors import ConfigError

# users x items: u0 = {i0, i1}, u1 = {i0, i1, i2}, u2 = {i1}
# |i0| = sqrt 2, |i1| = sqrt 3, |i2| = 1; co(i0, i1) = 2, co(i0, i2) = 1, co(i1, i2) = 1
X = sp.csr_matrix(np.array([[1, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=np.float32))


def _fit(**config) -> ItemKNN:
    model = ItemKNN()
    model.fit(SimpleNamespace(matrix=lambda parts: X), ItemKNN.Config(**config), None)
    return model


@pytest.mark.parametrize("shrink, s01, s02, s12", [
    (0.0, 2 / 6 ** 0.5, 1 / 2 ** 0.5, 1 / 3 ** 0.5),              # 0.816497, 0.707107, 0.577350
    (1.0, 2 / (6 ** 0.5 + 1), 1 / (2 ** 0.5 + 1), 1 / (3 ** 0.5 + 1)),  # 0.579796, 0.414214, 0.366025
    (10.0, 2 / (6 ** 0.5 + 10), 1 / (2 ** 0.5 + 10), 1 / (3 ** 0.5 + 10)),
])
def test_similarity_by_hand(shrink, s01, s02, s12):
    model = _fit(shrink=shrink)
    expected = np.array([[0, s01, s02], [s01, 0, s12], [s02, s12, 0]])
    assert model.sim.toarray() == pytest.approx(expected, abs=1e-6)
    # a user who has only i2: scores are the similarities to i2
    scores = model.score(np.array([0]), sp.csr_matrix(np.array([[0, 0, 1]], dtype=np.float32)))
    assert scores[0] == pytest.approx([s02, s12, 0.0], abs=1e-6)


def test_shrink_1_values_written_out():
    assert _fit(shrink=1.0).sim[0, 1] == pytest.approx(0.579796, abs=1e-6)


def test_k_keeps_the_most_similar_neighbours():
    sim = _fit(k=1).sim.toarray()  # column j keeps its one most similar item
    assert (sim != 0).sum(axis=0).tolist() == [1, 1, 1]
    assert sim[1, 0] and sim[0, 1] and sim[0, 2]


def test_negative_shrink_is_refused():
    with pytest.raises(ConfigError, match="itemknn.shrink must be >= 0"):
        _fit(shrink=-1.0)


def _all_at_once(x: sp.csr_matrix, k: int, shrink: float) -> sp.csr_matrix:
    """The former ItemKNN fit, verbatim: all co-occurrences X^T X at once, then top k per column."""
    x = x.astype(np.float64)
    norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=0)).ravel())
    co = (x.T @ x).tocoo()
    sim = co.data / (norms[co.row] * norms[co.col] + shrink)
    sim = sp.csr_matrix((sim.astype(np.float32), (co.row, co.col)), shape=co.shape)
    coo = sim.tocoo()
    off = (coo.row != coo.col) & (coo.data != 0)
    coo = sp.coo_matrix((coo.data[off], (coo.row[off], coo.col[off])), shape=sim.shape)
    order = np.lexsort((coo.row, -coo.data, coo.col))
    cols = coo.col[order]
    starts = np.r_[0, np.flatnonzero(cols[1:] != cols[:-1]) + 1] if len(cols) else np.zeros(0, dtype=int)
    rank = np.arange(len(cols)) - np.repeat(starts, np.diff(np.r_[starts, len(cols)]))
    keep = order[rank < k]
    return sp.csr_matrix((coo.data[keep], (coo.row[keep], coo.col[keep])), shape=sim.shape)


def _random_with_ties(seed: int) -> sp.csr_matrix:
    """Binary users x items with duplicated item columns (exactly tied similarities) and empty items."""
    rng = np.random.default_rng(seed)
    n_users, n_items = int(rng.integers(5, 300)), int(rng.integers(2, 200))
    x = sp.random(n_users, n_items, density=rng.uniform(0.01, 0.3), format="csc", random_state=seed,
                  dtype=np.float32).toarray()
    copies = rng.integers(0, n_items, size=n_items // 4)
    x[:, rng.integers(0, n_items, size=len(copies))] = x[:, copies]
    x[:, rng.integers(0, n_items, size=2)] = 0
    return sp.csr_matrix((x != 0).astype(np.float32))


@pytest.mark.parametrize("seed", range(8))
def test_blockwise_equals_all_at_once_ties_included(seed):
    from baselines.itemknn import similarity

    x = _random_with_ties(seed)
    for k in (1, 3, 50):
        for shrink in (0.0, 2.0):
            expected = _all_at_once(x, k, shrink)
            for block_entries in (1, 17, 500, 10**12):  # one item a block ... everything in one block
                sim = similarity(x, k, shrink, block_entries)
                assert sim.dtype == np.float32 and sim.shape == expected.shape
                assert np.array_equal(sim.indptr, expected.indptr)
                assert np.array_equal(sim.indices, expected.indices)
                assert np.array_equal(sim.data, expected.data)


def test_blocks_follow_the_available_memory(monkeypatch):
    import baselines.itemknn as itemknn
    from bench import memory

    x = _random_with_ties(3)
    n = x.shape[1]
    blocks = []
    real = itemknn._top_k_per_target
    monkeypatch.setattr(itemknn, "_top_k_per_target", lambda *a: blocks.append(a[1]) or real(*a))
    need = max(itemknn.memory_need(n, x.nnz, 100))
    monkeypatch.setattr(memory, "available_bytes", lambda: int(need / memory.USABLE_SHARE) + 1)
    model = _fit_on(x, k=100)
    assert len(blocks) > 1  # no room beyond the need: blocks of the smallest size
    assert all(len(np.unique(b)) <= n for b in blocks)
    assert (model.sim != _all_at_once(x, 100, 0.0)).nnz == 0
    blocks.clear()
    monkeypatch.setattr(memory, "available_bytes", lambda: 64 * 2**30)
    _fit_on(x, k=100)
    assert len(blocks) == 1


def _fit_on(x, **config) -> ItemKNN:
    model = ItemKNN()
    model.fit(SimpleNamespace(matrix=lambda parts: x, n_items=x.shape[1]), ItemKNN.Config(**config), None)
    return model


def test_refused_before_the_cooccurrences_with_the_setting_that_lowers_it(monkeypatch):
    import baselines.itemknn as itemknn
    from bench import memory
    from bench.errors import NotEnoughMemory

    monkeypatch.setattr(memory, "available_bytes", lambda: 2**30)
    monkeypatch.setattr(itemknn, "similarity", lambda *a: pytest.fail("similarity started before the check"))
    x = sp.csr_matrix((1, 20_000), dtype=np.float32)
    with pytest.raises(NotEnoughMemory) as err:  # 20,000 x 5,000 neighbours x 32 bytes: 3.0 GiB to fit
        _fit_on(x, k=5000)
    message = str(err.value)
    assert message.startswith("itemknn needs about 3.0 GiB for its 5000 neighbours per item (3.0 GiB to fit)")
    assert "(n_items=20,000); this machine has 1.0 GiB available. Lower it with --set itemknn.k=" in message
    x = sp.csr_matrix((1, 104_000), dtype=np.float32)
    with pytest.raises(NotEnoughMemory) as err:  # 104,000 items: mostly the harness's batch of scores
        _fit_on(x, k=100)
    assert "scoring 1,024 users at a time (2.9 GiB)" in str(err.value)
    assert "Most of it is the scoring, which no setting lowers" in str(err.value)
