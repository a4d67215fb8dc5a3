"""Users' items in time order, in one place (numpy only).

Sequential models read a user's known items oldest first; every sequence of the project is
ordered by the one rule of `time_order`: by timestamp, ties by item index. `KnownInteractions`
looks up when (and with which rating) a user met an item in train or valid, so a history
given as a matrix (the harness's ``history``) can be put back in time order;
`padded_histories` does that for a batch of users, as the right-aligned, -1-padded arrays the
sequential models take.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def time_order(users: np.ndarray, items: np.ndarray, times: np.ndarray) -> np.ndarray:
    """The permutation that sorts rows by user, then timestamp, then item index (stable)."""
    return np.lexsort((np.asarray(items), np.asarray(times), np.asarray(users)))


def in_time_order(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` (columns user, item, timestamp, ...) with its rows in `time_order`."""
    return frame.iloc[time_order(frame["user"].to_numpy(), frame["item"].to_numpy(),
                                 frame["timestamp"].to_numpy())]


class KnownInteractions:
    """The timestamp and rating of every (user, item) of a split's train and valid parts, looked
    up by key user * n_items + item in a sorted table (no scan per user)."""

    def __init__(self, split) -> None:
        frame = pd.concat([split.train, split.valid])
        self.n_items = split.n_items
        keys = frame["user"].to_numpy(np.int64) * self.n_items + frame["item"].to_numpy(np.int64)
        order = np.argsort(keys, kind="stable")
        self.keys = keys[order]
        self.times = frame["timestamp"].to_numpy(np.int64)[order]
        self.ratings = frame["rating"].to_numpy(np.float64)[order]

    def lookup(self, users: np.ndarray, items: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For (user, item) pairs of any (broadcast) shape: whether each is known, its timestamp
        (0 where unknown) and its rating (NaN where unknown or unrated)."""
        query = np.asarray(users, dtype=np.int64) * self.n_items + np.asarray(items, dtype=np.int64)
        if not len(self.keys):
            return np.zeros(query.shape, dtype=bool), np.zeros(query.shape, np.int64), np.full(query.shape, np.nan)
        pos = np.clip(np.searchsorted(self.keys, query), 0, len(self.keys) - 1)
        found = self.keys[pos] == query
        return found, np.where(found, self.times[pos], 0), np.where(found, self.ratings[pos], np.nan)


def padded_histories(split, users: np.ndarray, history, max_len: int,
                     known: KnownInteractions | None = None) -> np.ndarray:
    """(len(users), max_len) int64 item sequences, oldest first, right-aligned, padded with -1.

    The items of each `history` row, in `time_order` of their time in train/valid (an item
    of neither counts as time 0); the most recent `max_len` are kept. `known` may be passed to
    reuse the lookup table across calls.
    """
    known = known or KnownInteractions(split)
    coo = history.tocoo()
    rows, items = coo.row.astype(np.int64), coo.col.astype(np.int64)
    _, t, _ = known.lookup(np.asarray(users, dtype=np.int64)[rows], items)
    order = time_order(rows, items, t)
    rows, items = rows[order], items[order]
    counts = np.bincount(rows, minlength=len(users))
    from_end = np.repeat(np.cumsum(counts), counts) - np.arange(len(rows)) - 1  # 0 = most recent
    keep = from_end < max_len
    out = np.full((len(users), max_len), -1, dtype=np.int64)
    out[rows[keep], max_len - 1 - from_end[keep]] = items[keep]
    return out
