"""`itemknn`: item-item cosine similarity over the training matrix, top-k neighbours per item."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from bench.models import Model, ModelConfig


@dataclass(frozen=True)
class ItemKNNConfig(ModelConfig):
    k: int = field(default=100, metadata={"help": "neighbours kept per item"})
    shrink: float = field(default=0.0, metadata={
        "help": "added to the cosine denominator: sim(i, j) = co(i, j) / (|i| |j| + shrink), "
                "which damps similarities resting on few co-occurrences (>= 0)"})


class ItemKNN(Model):
    Config = ItemKNNConfig

    def fit(self, split, config: ItemKNNConfig, workdir: Path) -> None:
        from bench.errors import ConfigError

        if config.shrink < 0:
            raise ConfigError(f"itemknn.shrink must be >= 0, not {config.shrink}")
        x = split.matrix(("train",)).astype(np.float64)
        norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=0)).ravel())  # (n_items,) column norms |i|
        co = (x.T @ x).tocoo()  # co(i, j) = sum over users of x_ui x_uj
        # The shrunk cosine (as RecBole's ItemKNN): co(i, j) / (|i| |j| + shrink). An item with a
        # co-occurrence has |i| > 0, so the denominator is positive for every stored entry.
        sim = co.data / (norms[co.row] * norms[co.col] + config.shrink)
        sim = sp.csr_matrix((sim.astype(np.float32), (co.row, co.col)), shape=co.shape)
        self.sim = _keep_top_k_per_column(sim, config.k)

    def score(self, users: np.ndarray, history) -> np.ndarray:
        return np.asarray((history @ self.sim).todense(), dtype=np.float32)


def _keep_top_k_per_column(sim: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """Keep, for each target item (column), its k most similar other items (ties: lower index)."""
    coo = sim.tocoo()
    off = (coo.row != coo.col) & (coo.data != 0)
    coo = sp.coo_matrix((coo.data[off], (coo.row[off], coo.col[off])), shape=sim.shape)
    order = np.lexsort((coo.row, -coo.data, coo.col))
    cols = coo.col[order]
    starts = np.r_[0, np.flatnonzero(cols[1:] != cols[:-1]) + 1] if len(cols) else np.zeros(0, dtype=int)
    rank = np.arange(len(cols)) - np.repeat(starts, np.diff(np.r_[starts, len(cols)]))
    keep = order[rank < k]
    return sp.csr_matrix((coo.data[keep], (coo.row[keep], coo.col[keep])), shape=sim.shape)
