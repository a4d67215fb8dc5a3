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
