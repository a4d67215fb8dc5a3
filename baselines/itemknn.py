"""`itemknn`: item-item cosine similarity over the training matrix, top-k neighbours per item.

The co-occurrences X^T X of a large catalogue with heavy users can hold billions of pairs, so they
are never built whole: the similarity is computed for blocks of target items at a time (the rows
X^T X[block, :], by symmetry the columns), each block keeps its top k per target item, and the
next block reuses the memory. A block holds at most `block_entries` co-occurrences, bounded before
the product from each item's users (an item's co-occurrences are at most the summed history
lengths of its users), and chosen from the memory available. Memory is thus O(one block +
n_items k), and the result is the same as computing everything at once, ties included.
The fit checks that n_items k neighbours, a minimal block and the scoring fit in the available
memory before it starts (`bench.memory`), and refuses the job if not, naming `--set itemknn.k`
where the neighbours are most of the need (docs/performance.md, "Memory of item-item models").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from bench import memory
from bench.errors import ConfigError
from bench.models import Model, ModelConfig
from bench.scoring import SCORE_BATCH

# Peaks per co-occurrence of a block while its top k are picked (measured 47.5-47.6 bytes), and per
# neighbour kept (23.7-24.2), rounded up for the temporaries tracemalloc does not see
# (scripts/memory_factors.py; docs/performance.md, "Memory of item-item models").
BYTES_PER_COOCCURRENCE = 64
BYTES_PER_NEIGHBOUR = 32
BLOCK_BYTES = 2**29  # a block's co-occurrences take at most this much (less where memory is short)
# Training matrix: the harness's float32 CSR and the float64 X and X^T read by the products.
BYTES_PER_INTERACTION = 8 + 2 * 12
# Scoring: `history @ sim` (sparse, float32 values + int32 indices) made dense (float32); with
# top_k's own arrays, measured at most 24.7 bytes per cell of a batch (2,000 items, dense scores).
SCORE_BYTES_PER_CELL = 12


@dataclass(frozen=True)
class ItemKNNConfig(ModelConfig):
    k: int = field(default=100, metadata={"help": "neighbours kept per item"})
    shrink: float = field(default=0.0, metadata={
        "help": "added to the cosine denominator: sim(i, j) = co(i, j) / (|i| |j| + shrink), "
                "which damps similarities resting on few co-occurrences (>= 0)"})


def memory_need(n_items: int, n_interactions: int, k: int, batch: int = SCORE_BATCH) -> tuple[float, float]:
    """(fit, scoring) bytes ItemKNN needs besides its blocks of co-occurrences, the training data
    included in both: the neighbours kept (n_items k at most) and a block of one item while
    fitting; the similarity and one batch of `batch` users' scores while scoring."""
    neighbours = n_items * max(0, min(k, n_items - 1))
    data = BYTES_PER_INTERACTION * n_interactions
    fit = BYTES_PER_NEIGHBOUR * neighbours + BYTES_PER_COOCCURRENCE * n_items  # a block of one item
    score = 12 * neighbours + memory.scoring_bytes(n_items, batch, SCORE_BYTES_PER_CELL)
    return fit + data, score + data


class ItemKNN(Model):
    Config = ItemKNNConfig

    def fit(self, split, config: ItemKNNConfig, workdir: Path) -> None:
        if config.shrink < 0:
            raise ConfigError(f"itemknn.shrink must be >= 0, not {config.shrink}")
        x = split.matrix(("train",))
        n = x.shape[1]
        fit, scoring = memory_need(n, x.nnz, config.k)
        need = max(fit, scoring)
        if fit >= scoring:
            fix = "Lower it with --set itemknn.k=<fewer neighbours>, or run it on a machine with more memory"
        else:  # the batch of scores is the harness's, the same for every model
            fix = "Most of it is the scoring, which no setting lowers: run it on a machine with more memory"
        memory.require(need, "itemknn", f"its {config.k} neighbours per item ({memory.gib(fit)} to fit) and scoring "
                       f"{SCORE_BATCH:,} users at a time ({memory.gib(scoring)})", n, fix)
        room = memory.USABLE_SHARE * memory.available_bytes() - need
        block_entries = max(n, int(min(BLOCK_BYTES, room) // BYTES_PER_COOCCURRENCE))
        self.sim = similarity(x, config.k, config.shrink, block_entries)

    def score(self, users: np.ndarray, history) -> np.ndarray:
        return np.asarray((history @ self.sim).todense(), dtype=np.float32)


def similarity(x: sp.spmatrix, k: int, shrink: float, block_entries: int) -> sp.csr_matrix:
    """(n_items, n_items) float32 CSR: column j holds item j's k most similar other items i,
    sim(i, j) = co(i, j) / (|i| |j| + shrink); ties: the lower index i first.

    x: (n_users, n_items) training matrix. Target items are taken in blocks whose co-occurrences
    (bounded from above before the product) number at most `block_entries`, or one item."""
    x = sp.csr_matrix(x, dtype=np.float64)
    n = x.shape[1]
    norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=0)).ravel())  # (n_items,) column norms |i|
    xt = x.T.tocsr()  # (n_items, n_users)
    # Item j co-occurs with at most the items its users have: sum over its users of their history
    # length, and never more than n_items (a cheap upper bound on the nnz of row j of X^T X).
    bound = np.minimum(xt @ np.diff(x.indptr).astype(np.float64), n)
    ends = np.cumsum(bound)
    others, targets, values = [], [], []
    r0 = 0
    while r0 < n:
        start = ends[r0 - 1] if r0 else 0.0
        r1 = max(r0 + 1, int(np.searchsorted(ends, start + block_entries, side="right")))
        # rows r0:r1 of X^T X: co(j, i) = co(i, j) for the target items j of the block
        co = (xt[r0:r1] @ x).tocoo()
        target = co.row + np.int32(r0)  # int32 (n_items < 2^31), as the indices of the product
        other = co.col
        # The shrunk cosine (as RecBole's ItemKNN): co(i, j) / (|i| |j| + shrink). An item with a
        # co-occurrence has |i| > 0, so the denominator is positive for every stored entry.
        sim = (co.data / (norms[other] * norms[target] + shrink)).astype(np.float32)
        del co
        kept = _top_k_per_target(other, target, sim, k)
        others.append(other[kept])
        targets.append(target[kept])
        values.append(sim[kept])
        del target, other, sim, kept
        r0 = r1
    other = np.concatenate(others) if others else np.zeros(0, dtype=np.int32)
    target = np.concatenate(targets) if targets else np.zeros(0, dtype=np.int32)
    value = np.concatenate(values) if values else np.zeros(0, dtype=np.float32)
    del others, targets, values
    return sp.csr_matrix((value, (other, target)), shape=(n, n))


def _top_k_per_target(other: np.ndarray, target: np.ndarray, sim: np.ndarray, k: int) -> np.ndarray:
    """Indices of the entries kept: for each target item, its k most similar other items (not
    itself, no zero similarity), the higher similarity first, ties: the lower index first."""
    candidates = np.flatnonzero((other != target) & (sim != 0))
    order = candidates[np.lexsort((other[candidates], -sim[candidates], target[candidates]))]
    grouped = target[order]
    if not len(grouped):
        return order
    starts = np.r_[0, np.flatnonzero(grouped[1:] != grouped[:-1]) + 1]
    rank = np.arange(len(grouped)) - np.repeat(starts, np.diff(np.r_[starts, len(grouped)]))
    return order[rank < k]
