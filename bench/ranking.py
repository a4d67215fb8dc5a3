"""The ranking rule, in one place: higher score first; equal scores, lower item index first.

Every score-based list of the project is cut here (through `bench.scoring.top_k`), so the rule
holds exactly, also for items tied at the cut-off: which of several equal items makes the top
K never depends on the selection algorithm, the numpy build or the machine.
"""

from __future__ import annotations

import numpy as np


def top_k_indices(scores: np.ndarray, k: int, tie_order: np.ndarray | None = None) -> np.ndarray:
    """(n_rows, min(k, n_items)) column indices of each row's k best scores, best first.

    scores: (n_rows, n_items) floats (NaN is not allowed: map it to -inf first).
    tie_order: optional (n_items,) permutation; equal scores then go in its order (an item
    earlier in `tie_order` first) instead of by item index.

    The top K is exact in O(n_items) per row: a partition finds the k-th best score, every
    item above it is in, and of the items equal to it the first ones (by index) fill the
    remaining places; only those k are then sorted (stably, so ties stay in index order).
    """
    scores = np.asarray(scores)
    if tie_order is not None:
        tie_order = np.asarray(tie_order, dtype=np.int64)
        return tie_order[top_k_indices(scores[:, tie_order], k)]
    n_rows, n_items = scores.shape
    kk = min(k, n_items)
    if kk <= 0 or n_rows == 0:
        return np.zeros((n_rows, max(kk, 0)), dtype=np.int64)
    kth = np.partition(scores, n_items - kk, axis=1)[:, n_items - kk][:, None]  # the k-th best score
    keep = scores > kth
    tied = scores == kth
    need = kk - np.count_nonzero(keep, axis=1)  # >= 1: places left for items equal to the k-th score
    over = np.flatnonzero(np.count_nonzero(tied, axis=1) > need)  # rows with more such items than places
    if len(over):
        sub = tied[over]
        sub &= np.cumsum(sub, axis=1, dtype=np.int32) <= need[over, None]  # the first ones by index
        tied[over] = sub
    keep |= tied
    cols = np.nonzero(keep)[1].reshape(n_rows, kk)  # exactly kk per row, in index order
    order = np.argsort(-np.take_along_axis(scores, cols, axis=1), axis=1, kind="stable")
    return np.take_along_axis(cols, order, axis=1)
