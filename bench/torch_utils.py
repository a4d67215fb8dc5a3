"""Small torch helpers shared by the models written in this project (imported lazily by them)."""

from __future__ import annotations

import contextlib

import numpy as np


@contextlib.contextmanager
def quiet_transformers():
    """Hide transformers' "Loading weights" / "Writing model shards" progress bars while a model
    we manage is saved or loaded (several times per job: noise next to the grid's own bar)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def pick_device(preference: str = "auto"):
    """"auto" -> cuda when available, else cpu; or an explicit torch device string."""
    import torch

    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(preference)


def seed_torch(seed: int) -> None:
    import torch

    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def padded_histories(split, users: np.ndarray, history, max_len: int) -> np.ndarray:
    """(len(users), max_len) int64 item sequences, oldest first, right-aligned, padded with -1.

    The items of each `history` row, ordered by their time in train/valid (ties: item index);
    the most recent `max_len` are kept. Used by sequential models to read a user's known items.
    """
    import pandas as pd

    frame = pd.concat([split.train, split.valid])
    keys = frame["user"].to_numpy(np.int64) * split.n_items + frame["item"].to_numpy(np.int64)
    order = np.argsort(keys, kind="stable")
    keys, times = keys[order], frame["timestamp"].to_numpy(np.int64)[order]
    coo = history.tocoo()
    rows, items = coo.row.astype(np.int64), coo.col.astype(np.int64)
    query = np.asarray(users, dtype=np.int64)[rows] * split.n_items + items
    pos = np.clip(np.searchsorted(keys, query), 0, max(len(keys) - 1, 0))
    t = np.where(len(keys) and (keys[pos] == query), times[pos] if len(keys) else 0, 0)
    order = np.lexsort((items, t, rows))
    rows, items = rows[order], items[order]
    counts = np.bincount(rows, minlength=len(users))
    from_end = np.repeat(np.cumsum(counts), counts) - np.arange(len(rows)) - 1  # 0 = most recent
    keep = from_end < max_len
    out = np.full((len(users), max_len), -1, dtype=np.int64)
    out[rows[keep], max_len - 1 - from_end[keep]] = items[keep]
    return out
