"""The one evaluator: every metric of docs/metrics.md, for every model, from ranked lists.

Inputs are integer indices (users and items in `canonical.ordered_ids` order):

    recs   (R, W) int   ranked item lists, best first, -1 = empty slot
    users  (R,)   int   the user of each row
    truth  GroundTruth  held-out positives, history to mask, item metadata

Per evaluated user u (every user with at least one held-out positive; a user missing from
`users` is scored with an EMPTY list, so a model cannot skip hard users):

    L    u's list with history items and duplicates removed, then left-compacted
    T    u's held-out positives;  G = T ordered by (u's rating desc, train mean rating desc, index asc)
    recall@K, recall_mvae@K, ndcg@K                    for K in ks
    was, dpa, wmrd, pwkt                               at K = ranked_k
    ild@K (category Jaccard or text cosine), entropy@K at K = diversity_k

Everything is vectorised over users: per-user work happens in (n_users, K) arrays, in a
few chunked passes whose loops run over chunks of rows, list positions or |C| buckets,
never over single users.

Conventions the spec leaves open, fixed here:
- Jaccard of two empty category sets is 0 (0/0 := 0): an item without categories is
  similar to nothing, so it raises ild. Cosine with a zero text vector is 0 likewise.
- Duplicate (user, item) rows in the held-out split count once, with the user's highest rating.
- A NaN rating (implicit feedback) ties with every other NaN rating; when a user mixes
  NaN and real ratings, the NaN items rank after the rated ones in G.
- Held-out items that are also in the history are still in T (they count in |T|) but can
  never be hit, because the history is removed from L.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

logger = logging.getLogger(__name__)

SIMILARITIES = ("category", "text")

# Size (entries) of the scratch table used to find history items, duplicates and held-out
# items in the lists: one chunk of rows * (n_items + 1). 2**19 int32 (2 MiB, the L2 cache of
# one core of the dev machine) measured fastest on the benchmark
# (tests/benchmarks/test_bench_evaluator.py; 2**17..2**21 within 20%): smaller chunks pay
# Python overhead per chunk, larger ones miss the cache. Catalogues too large for at least
# _MIN_DIRECT_ROWS rows per chunk switch to "remap" mode: the items of each chunk of
# _REMAP_ROWS rows are renumbered densely first (np.unique), then the same trick runs.
_SCRATCH_ENTRIES = 1 << 19
_MIN_DIRECT_ROWS = 16
_REMAP_ROWS = 64
# The category-ild fast path keeps a dense n_classes^2 table of Jaccard codes (uint8/uint16;
# float32 for huge category sets), where a class is a distinct category set found on the
# lists (6000 -> 36 MB in uint8, 144 MB in float32). Above this many
# it switches to a chunked sparse block-Gram computation, whose memory does not grow
# with the catalogue.
_MAX_TABLE_CLASSES = 6000
# The table holds codes (uint8/uint16) instead of float32 Jaccard when the category sets are
# small enough for this many distinct (intersection, sizes) codes (sets of up to 180).
_MAX_JACCARD_CODES = 1 << 16
# Rows per chunk for the diversity metrics and elements per pwkt broadcast block.
_DIVERSITY_ROWS = 20_000
_PWKT_BLOCK = 1 << 20


@dataclass(frozen=True)
class GroundTruth:
    """What the evaluator needs to know about one split being scored.

    n_users, n_items    sizes of the index spaces
    test_users          (n,) int    user index of each held-out positive
    test_items          (n,) int    item index of each held-out positive
    test_ratings        (n,) float  the user's rating of it (NaN = implicit feedback: all equal)
    history             (n_users, n_items) CSR, nonzero = seen by the user (train, or
                        train+valid when scoring test); these items are removed from the lists
    item_mean_rating    (n_items,) float, mean TRAIN rating, 0 where none (golden-list tie-break)
    item_categories     (n_items, n_categories) CSR, nonzero = item has category; None when the
                        dataset has no categories (ild/entropy are then missing, not 0)
    item_vectors        (n_items, d) float text embeddings for similarity="text"; None if absent
    """

    n_users: int
    n_items: int
    test_users: np.ndarray
    test_items: np.ndarray
    test_ratings: np.ndarray
    history: sp.csr_matrix
    item_mean_rating: np.ndarray
    item_categories: sp.csr_matrix | None = None
    item_vectors: np.ndarray | None = None


@dataclass
class Evaluation:
    """metrics: macro averages over evaluated users (None = not computable for this data);
    per_user: one row per evaluated user, column "user" (user index) then one per metric;
    n_users: the number of evaluated users."""

    metrics: dict[str, float | None]
    per_user: pd.DataFrame
    n_users: int


def metric_names(ks: Sequence[int] = (20, 40, 100), diversity_k: int = 20) -> list[str]:
    """The metric names, in the order results and tables use them."""
    ks = _check_ks(ks)
    return ([f"recall@{k}" for k in ks] + [f"recall_mvae@{k}" for k in ks] + [f"ndcg@{k}" for k in ks]
            + ["was", "dpa", "wmrd", "pwkt", f"ild@{diversity_k}", f"entropy@{diversity_k}"])


def clean_lists(recs: np.ndarray, users: np.ndarray, history: sp.spmatrix) -> np.ndarray:
    """Remove history items and repeated items from each list, left-compact, pad with -1.

    recs (R, W) int item indices (-1 = empty), users (R,) int row of `history` for each list,
    history (n_rows, n_items) sparse, nonzero = seen. Returns (R, W) int64: the kept items in
    their original order, then -1.
    """
    recs = _as_lists(recs, len(users))
    users = np.asarray(users, dtype=np.int64)
    history = sp.csr_matrix(history)
    _check_items(recs, history.shape[1], "recs")
    if len(users) and (users.min() < 0 or users.max() >= history.shape[0]):
        raise ValueError(f"users must be rows of history (0..{history.shape[0] - 1})")
    keep, _ = _scan_lists(recs, history[users], None, history.shape[1])
    return _compact(recs, keep, recs.shape[1])


def evaluate(recs: np.ndarray, users: np.ndarray, truth: GroundTruth, *, ks: Sequence[int] = (20, 40, 100),
             ranked_k: int = 100, diversity_k: int = 20, similarity: str = "category",
             metrics: Sequence[str] | None = None) -> Evaluation:
    """Score ranked lists against one split, following docs/metrics.md exactly.

    recs (R, W) int item indices best first (-1 = empty; W may be shorter or longer than the
    cutoffs), users (R,) int distinct user indices. Returns an Evaluation whose metrics are
    named as in `metric_names(ks, diversity_k)`; with `metrics`, only those (a subset of
    these names, e.g. ["ndcg@20"] for early stopping), and only their work is done.
    """
    ks = _check_ks(ks)
    names = metric_names(ks, diversity_k)
    if metrics is not None:
        unknown = sorted(set(metrics) - set(names))
        if unknown:
            raise ValueError(f"unknown metrics {unknown}; with these cutoffs the metrics are {names}")
        names = [name for name in names if name in set(metrics)]
    if similarity not in SIMILARITIES:
        raise ValueError(f"similarity must be one of {SIMILARITIES}, not {similarity!r}")
    if int(ranked_k) < 1 or int(diversity_k) < 1:
        raise ValueError("ranked_k and diversity_k must be positive")
    ranked_k, diversity_k = int(ranked_k), int(diversity_k)
    n_items = int(truth.n_items)
    users = np.asarray(users, dtype=np.int64).reshape(-1)
    recs = _as_lists(recs, len(users))
    _check_items(recs, n_items, "recs")
    if len(users) and (users.min() < 0 or users.max() >= truth.n_users):
        raise ValueError(f"users must be user indices in 0..{truth.n_users - 1}")
    if len(np.unique(users)) != len(users):
        raise ValueError("users must be distinct: one ranked list per user")

    gold = _golden(truth)
    n = len(gold.users)

    # One row per evaluated user; users without a list keep an all-empty row.
    row_of_user = np.full(truth.n_users, -1, dtype=np.int64)
    row_of_user[gold.users] = np.arange(n)
    rows = row_of_user[users]
    given = rows >= 0
    if len(rows) == n and np.array_equal(rows, np.arange(n)):
        lists = recs  # already one row per evaluated user, in order (the usual case)
    else:
        lists = np.full((n, recs.shape[1]), -1, dtype=np.int64)
        lists[rows[given]] = recs[given]

    history = sp.csr_matrix(truth.history)
    if history.shape != (truth.n_users, n_items):
        raise ValueError(f"history must be ({truth.n_users}, {n_items}), not {history.shape}")
    keep, hits = _scan_lists(lists, history[gold.users], gold, n_items)
    shifted = _shifted_rows(keep)
    rows_s, count_s = shifted
    if len(rows_s):  # raw -> cleaned positions where something before the hit was dropped
        where = np.full(n, -1)
        where[rows_s] = np.arange(len(rows_s))
        moved = where[hits.row] >= 0
        hits.pos[moved] = count_s[where[hits.row[moved]], hits.pos[moved] - 1]

    values: dict[str, np.ndarray | None] = {}
    wanted = set(names)
    accuracy_ks = tuple(k for k in ks if {f"recall@{k}", f"recall_mvae@{k}", f"ndcg@{k}"} & wanted)
    if accuracy_ks:
        values.update(_accuracy(hits, gold.n_pos, accuracy_ks))
    if {"was", "dpa", "wmrd", "pwkt"} & wanted:
        values.update(_ranked(hits, gold.n_pos, ranked_k))
    ild_name, entropy_name = f"ild@{diversity_k}", f"entropy@{diversity_k}"
    if {ild_name, entropy_name} & wanted:
        top = _compact(lists, keep, diversity_k, shifted)  # (n, diversity_k) L@K for diversity
        ild = entropy = None
        if truth.item_categories is not None:
            cats = _Categories(truth.item_categories, n_items)
            entropy = cats.entropy(top) if entropy_name in wanted else None
            if similarity == "category" and ild_name in wanted:
                ild = cats.ild(top)
        if similarity == "text" and truth.item_vectors is not None and ild_name in wanted:
            ild = _text_ild(top, truth.item_vectors, n_items)
        values[ild_name] = ild
        values[entropy_name] = entropy

    per_user = pd.DataFrame({"user": gold.users})
    metrics: dict[str, float | None] = {}
    for name in names:
        col = values[name]
        per_user[name] = np.full(n, np.nan) if col is None else col
        metrics[name] = None if col is None else float(col.mean())
    logger.debug("evaluated %d users on %d lists", n, len(users))
    return Evaluation(metrics=metrics, per_user=per_user, n_users=n)


# --------------------------------------------------------------------------------------------
# Input checks


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    ks = tuple(int(k) for k in (ks if isinstance(ks, (list, tuple, np.ndarray)) else (ks,)))
    if not ks or min(ks) < 1:
        raise ValueError(f"cutoffs must be positive integers, got {ks}")
    return ks


def _as_lists(recs: np.ndarray, n_rows: int) -> np.ndarray:
    recs = np.asarray(recs)
    if recs.size == 0:
        return np.full((n_rows, 0), -1, dtype=np.int64)
    if recs.ndim != 2 or recs.shape[0] != n_rows:
        raise ValueError(f"recs must be (len(users), W) = ({n_rows}, W), not {recs.shape}")
    if not np.issubdtype(recs.dtype, np.integer):
        raise ValueError(f"recs must hold integer item indices, not {recs.dtype}")
    return recs.astype(np.int64, copy=False)


def _check_items(recs: np.ndarray, n_items: int, what: str) -> None:
    if recs.size and (recs.min() < -1 or recs.max() >= n_items):
        raise ValueError(f"{what} holds item indices outside 0..{n_items - 1} (-1 marks an empty slot)")


# --------------------------------------------------------------------------------------------
# Golden lists


@dataclass
class _Golden:
    """Held-out positives grouped by evaluated user, each user's entries in golden order.

    users (n,) evaluated user indices, ascending; n_pos (n,) |T|;
    row, item, rank (m,) one entry per (user, item): row in 0..n-1, item index, r_real (1-based);
    ptr (n+1,) CSR-style offsets of each row's entries.
    """

    users: np.ndarray
    n_pos: np.ndarray
    row: np.ndarray
    item: np.ndarray
    rank: np.ndarray
    ptr: np.ndarray


def _golden(truth: GroundTruth) -> _Golden:
    u = np.asarray(truth.test_users, dtype=np.int64).reshape(-1)
    i = np.asarray(truth.test_items, dtype=np.int64).reshape(-1)
    r = np.asarray(truth.test_ratings, dtype=np.float64).reshape(-1)
    n_items = int(truth.n_items)
    if not (len(u) == len(i) == len(r)):
        raise ValueError("test_users, test_items and test_ratings must have the same length")
    if len(u) == 0:
        raise ValueError("no held-out positives: nothing to evaluate")
    if u.min() < 0 or u.max() >= truth.n_users or i.min() < 0 or i.max() >= n_items:
        raise ValueError("held-out user/item indices out of range")
    mean = np.asarray(truth.item_mean_rating, dtype=np.float64).reshape(-1)
    if len(mean) != n_items:
        raise ValueError(f"item_mean_rating must have n_items={n_items} entries")
    # Sort key (user asc, rating desc, train mean desc, item asc) packed into one int64:
    # the last two only depend on the item, so they become the item's rank in that order,
    # and the rating becomes its rank among the distinct ratings. NaN ratings are all equal;
    # -inf puts them after real ratings if a user mixes both.
    item_order = np.empty(n_items, dtype=np.int64)
    item_order[np.lexsort((np.arange(n_items), -mean))] = np.arange(n_items)
    # factorize (hashing) is several times faster than np.unique's sort on long columns
    level, levels = pd.factorize(np.where(np.isnan(r), -np.inf, r), sort=True)
    n_levels = len(levels)
    if truth.n_users * n_levels * n_items < 2**62:
        key = (u * n_levels + (n_levels - 1 - level)) * n_items + item_order[i]
        order = np.argsort(key, kind="stable")
    else:  # index spaces too large to pack: the same order, more slowly
        order = np.lexsort((item_order[i], n_levels - 1 - level, u))
    u, i = u[order], i[order]
    _, first = np.unique(u * n_items + i, return_index=True)  # stable: keeps the best-rated copy
    if len(first) < len(u):
        keep = np.sort(first)
        u, i = u[keep], i[keep]
    starts = np.flatnonzero(np.r_[True, u[1:] != u[:-1]])
    users = u[starts]
    ptr = np.r_[starts, len(u)]
    n_pos = np.diff(ptr)
    row = np.repeat(np.arange(len(users)), n_pos)
    rank = np.arange(len(u)) - ptr[row] + 1
    return _Golden(users=users, n_pos=n_pos, row=row, item=i, rank=rank, ptr=ptr)


# --------------------------------------------------------------------------------------------
# Cleaning lists and finding held-out items


@dataclass
class _Hits:
    """Held-out items found in the cleaned lists: (m,) arrays sorted by row.

    row: evaluated-user row; pos: 1-based position in the cleaned list (r_gen); rank: r_real."""

    row: np.ndarray
    pos: np.ndarray
    rank: np.ndarray


def _scan_lists(lists: np.ndarray, history: sp.csr_matrix, gold: _Golden | None, n_items: int):
    """Which slots survive cleaning, and where the held-out items sit in the raw lists.

    lists (R, W) int64, history (R, n_items) CSR aligned with the rows of `lists`, gold rows
    aligned likewise (or None). Returns keep (R, W) bool (a real item, not in history, first
    occurrence in its row) and, with gold, _Hits whose pos is the 1-based RAW position.

    A chunk of rows is mapped onto a flat scratch table indexed by (row, 1 + item); column 0
    of each row takes the empty slots (-1). The list positions are written in reverse, so
    that when an item repeats its first position is the one left behind, then history items
    and the empty column overwrite with a "seen" mark. Reading the table back at each slot
    tells "seen", "empty" and "duplicate" at once, and reading it at each held-out item gives
    its position without scanning the lists again. Values carry a per-chunk base, so entries
    left over from earlier chunks read as negative and the table is never reset: the cost is
    linear in the data, not in rows * n_items.
    """
    R, W = lists.shape
    keep = np.zeros((R, W), dtype=bool)
    found = []
    if R == 0 or W == 0:
        return keep, _Hits(*(np.zeros(0, np.int64),) * 3) if gold is not None else None
    history.eliminate_zeros()  # stored zeros are not "seen"
    h_row = np.repeat(np.arange(R), np.diff(history.indptr))
    direct = n_items * _MIN_DIRECT_ROWS <= _SCRATCH_ENTRIES
    step = min(R, max(1, _SCRATCH_ENTRIES // max(n_items, 1))) if direct else min(R, _REMAP_ROWS)
    dtype = np.int64 if (R // step + 2) * (W + 1) >= 2**31 else np.int32
    # Written values in reverse slot order (W..1 per row, last row first), so the scatter
    # below reads its keys and values front to back: numpy's fast path, no casting.
    rpos = np.tile(np.arange(W, 0, -1, dtype=dtype), step)
    if direct:
        width = n_items + 1
        table = np.zeros(step * width, dtype)
        h_key = (h_row % step) * width + history.indices + 1  # keys of every chunk, in one pass
        t_key = (gold.row % step) * width + gold.item + 1 if gold is not None else None
    base = 0
    for a in range(0, R, step):
        b = min(R, a + step)
        block = lists[a:b]
        hs, he = history.indptr[a], history.indptr[b]
        if gold is not None:
            ts, te = gold.ptr[a], gold.ptr[b]
        if direct:
            local, h_keys = block, h_key[hs:he]
            t_keys = t_key[ts:te] if gold is not None else None
            base += W + 1
        else:
            # Renumber this chunk's items 0..m-1 so the scratch table stays small.
            valid = block >= 0
            parts = [block[valid], history.indices[hs:he]] + ([gold.item[ts:te]] if gold is not None else [])
            uniq, inverse = np.unique(np.concatenate(parts), return_inverse=True)
            width = len(uniq) + 1
            n_valid, n_hist = int(valid.sum()), he - hs
            local = np.full(block.shape, -1, dtype=np.int64)
            local[valid] = inverse[:n_valid]
            h_keys = (h_row[hs:he] - a) * width + inverse[n_valid:n_valid + n_hist] + 1
            t_keys = (gold.row[ts:te] - a) * width + inverse[n_valid + n_hist:] + 1 if gold is not None else None
            table = np.zeros((b - a) * width, dtype)
            base = W + 1
        row_start = np.arange(b - a - 1, -1, -1) * width  # local rows, last first
        keys = (row_start[:, None] + 1 + local[::-1, ::-1]).ravel()  # reverse slot order
        written = rpos[:keys.size] + dtype(base)
        table[keys] = written  # repeated keys: the last write wins = the first position
        table[row_start] = base  # empty slots and history items: "seen" (position 0)
        table[h_keys] = base
        keep[a:b] = (table.take(keys) == written).reshape(b - a, W)[::-1, ::-1]
        if gold is not None:
            at = table.take(t_keys) - base  # 1..W in the list, else <= 0
            hit = at > 0
            found.append((ts + np.flatnonzero(hit), at[hit]))
    if gold is None:
        return keep, None
    idx = np.concatenate([f[0] for f in found])
    return keep, _Hits(row=gold.row[idx], pos=np.concatenate([f[1] for f in found]).astype(np.int64),
                       rank=gold.rank[idx])


def _shifted_rows(keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows whose kept slots are not a prefix, and (len, W) running counts of kept slots.

    Most rows need no moving (nothing removed, or only at the end): a kept slot after a
    dropped one is the only thing that shifts positions, so only those rows pay for cumsum.
    """
    if keep.shape[1] < 2:
        return np.zeros(0, np.int64), np.zeros((0, keep.shape[1]), np.int64)
    rows = np.flatnonzero((keep[:, 1:] > keep[:, :-1]).any(axis=1))
    return rows, np.cumsum(keep[rows], axis=1)


def _compact(values: np.ndarray, keep: np.ndarray, width: int, shifted=None) -> np.ndarray:
    """(R, width) int64: the kept entries of each row of values (R, W), left-aligned, then -1."""
    R, W = values.shape
    rows, count = _shifted_rows(keep) if shifted is None else shifted
    out = np.full((R, width), -1, dtype=np.int64)
    w = min(W, width)
    out[:, :w] = np.where(keep[:, :w], values[:, :w], -1)
    if len(rows):
        # The first `width` kept slots of a row are those where its running count is <= width;
        # the count is also their 1-based column in the output. Flat indices: one scatter.
        sel = keep[rows] & (count <= width)
        part = np.full((len(rows), width), -1, dtype=np.int64)
        part.ravel()[(count + (np.arange(len(rows)) * width - 1)[:, None])[sel]] = values[rows][sel]
        out[rows] = part
    return out


# --------------------------------------------------------------------------------------------
# Accuracy and ranked metrics (from the hits: row, r_gen, r_real of each held-out item in L)


def _discount(n: int) -> np.ndarray:
    """(n+1,) d[r] = 1 / log2(r + 1) for r >= 1, d[0] = 0."""
    d = np.zeros(n + 1)
    d[1:] = 1.0 / np.log2(np.arange(2, n + 2))
    return d


def _accuracy(hits: _Hits, n_pos: np.ndarray, ks: tuple[int, ...]) -> dict[str, np.ndarray]:
    """recall@K, recall_mvae@K, ndcg@K per user (n,), from the hits and |T| per user n_pos (n,)."""
    n = len(n_pos)
    disc = _discount(max(max(ks), int(n_pos.max())))
    ideal = np.cumsum(disc)  # ideal[t] = IDCG with t relevant items at the top
    out: dict[str, np.ndarray] = {}
    for k in ks:
        m = hits.pos <= k
        row = hits.row[m]
        found = np.bincount(row, minlength=n)
        best = np.minimum(k, n_pos)
        out[f"recall@{k}"] = found / n_pos
        out[f"recall_mvae@{k}"] = found / best
        out[f"ndcg@{k}"] = np.bincount(row, weights=disc[hits.pos[m]], minlength=n) / ideal[best]
    return out


def _ranked(hits: _Hits, n_pos: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """was, dpa, wmrd, pwkt per user (n,) at cutoff k."""
    n = len(n_pos)
    m = hits.pos <= k  # C: golden items inside L@k
    hr, gen, real = hits.row[m], hits.pos[m], hits.rank[m]
    w_of = _discount(max(k + 1, int(n_pos.max())))  # w_of[r_real]
    w = w_of[real]
    delta = np.abs(gen - real)
    w_total = np.cumsum(w_of)[n_pos]  # Σ_{i∈G} w_i = Σ_{r=1..|T|} 1/log2(r+1)

    was = np.bincount(hr, weights=w * np.maximum(0.0, 1.0 - delta / k), minlength=n) / w_total
    dpa = np.bincount(hr, weights=w / (1.0 + np.log2(1.0 + delta)), minlength=n) / w_total
    # wmrd: start as if every golden item were missing (r_gen = k+1), then correct the hits.
    r = np.arange(len(w_of))
    base = np.cumsum(w_of * np.minimum(np.abs(k + 1 - r), k) / k)[n_pos]
    fix = w * (np.minimum(delta, k) - np.minimum(np.abs(k + 1 - real), k)) / k
    wmrd = (base + np.bincount(hr, weights=fix, minlength=n)) / w_total
    return {"was": was, "dpa": dpa, "wmrd": wmrd, "pwkt": _pwkt(hr, gen, real, w, n)}


def _pwkt(hr: np.ndarray, gen: np.ndarray, real: np.ndarray, w: np.ndarray, n: int) -> np.ndarray:
    """Weighted Kendall tau over each user's C. hr/gen/real/w (m,) one entry per item of C,
    grouped by row. Returns (n,), 0 where |C| < 2.

    The spec's Σ_{i<j} w_i w_j s_ij over pairs in r_real order equals half the sum over all
    ordered pairs (i, j) of w_i w_j sign(Δgen)·sign(Δreal), and Σ_{i<j} w_i w_j equals
    ((Σw)^2 - Σw^2)/2, so the per-user sums need no sorting: users with the same |C| form a
    bucket computed with one (rows, c, c) broadcast, chunked to bound memory.
    """
    out = np.zeros(n)
    size = np.bincount(hr, minlength=n)
    start = np.cumsum(size) - size
    for c in np.unique(size[size >= 2]):
        rows = np.flatnonzero(size == c)
        step = max(1, _PWKT_BLOCK // (c * c))
        for a in range(0, len(rows), step):
            sub = rows[a:a + step]
            idx = start[sub][:, None] + np.arange(c)
            g, r, ww = gen[idx], real[idx], w[idx]
            s = np.sign(g[:, None, :] - g[:, :, None]) * np.sign(r[:, None, :] - r[:, :, None])
            num = np.einsum("ui,uij,uj->u", ww, s, ww)
            den = ww.sum(1) ** 2 - (ww * ww).sum(1)
            out[sub] = num / den
    return out


# --------------------------------------------------------------------------------------------
# Diversity


class _Categories:
    """Item categories prepared for ild (Jaccard) and entropy over lists of item indices.

    matrix (n_items, n_categories) sparse, nonzero = has category. An extra item without
    categories (index n_items) stands for the empty slot (-1): Jaccard 0 with everything and
    no share in the entropy, so lookups need no masking. For ild, items are grouped into
    classes of identical category sets, which keeps the pairwise table small when items share sets.
    """

    def __init__(self, matrix: sp.spmatrix, n_items: int):
        m = sp.csr_matrix(matrix, copy=True)
        if m.shape[0] != n_items:
            raise ValueError(f"item_categories must have n_items={n_items} rows, not {m.shape[0]}")
        m.sum_duplicates()
        m.data = (m.data != 0).astype(np.float64)
        m.eliminate_zeros()
        m.sort_indices()
        self.matrix = sp.vstack([m, sp.csr_matrix((1, m.shape[1]))], format="csr")
        self.size = np.diff(self.matrix.indptr)  # (n_items+1,) categories per item
        self.n_items = n_items
        self._classes = None

    def _item_class(self) -> tuple[np.ndarray, np.ndarray]:
        """(n_items+1,) class of each item (classes = distinct category sets; the last entry
        is the empty slot) and (n_classes,) one member item of each class."""
        if self._classes is None:
            m = self.matrix
            width = max(int(self.size.max()), 1)
            padded = np.full((m.shape[0], width), -1, dtype=np.int32)
            col = np.arange(m.nnz) - np.repeat(m.indptr[:-1], self.size)
            padded[np.repeat(np.arange(m.shape[0]), self.size), col] = m.indices
            _, first, cls = np.unique(padded, axis=0, return_index=True, return_inverse=True)
            self._classes = (cls.reshape(-1), first)
        return self._classes

    def _jaccard_table(self, members: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Jaccard between the category sets of the items `members` (c,), as (table, values).

        Jaccard is |a∩b| / |a∪b| in float32 (exact for these small integers up to the final
        rounding). When every set is small, the (c, c) table holds a uint8/uint16 code per pair,
        |a∩b| * (2 M + 1) + |a| + |b| with M the largest set, and values (n_codes,) float32 maps
        a code to its Jaccard: the same numbers as a float32 table, from a table 2-4 times
        smaller, so the random lookups in ild miss the cache less. Otherwise table is the
        (c, c) float32 Jaccard itself and values is None.

        The intersections come from a sparse product when few pairs share a category (its
        work, Σ over categories of members², is below c²), else from one BLAS product of the
        dense member-category matrix (real catalogues: a root category shared by every item).
        """
        rows = self.matrix[members]
        c = len(members)
        s = self.size[members]
        big = int(s.max()) if c else 0
        base = 2 * big + 1
        n_codes = (big + 1) * base
        per_category = np.bincount(rows.indices, minlength=rows.shape[1]).astype(np.float64)
        sparse_work = float(per_category @ per_category) < float(c) * c
        if n_codes <= _MAX_JACCARD_CODES:
            k = np.arange(n_codes)
            i, t = (k // base).astype(np.float32), (k % base).astype(np.float32)
            # The union is 0 only for two empty sets, whose intersection 0 stays 0.
            values = i / np.maximum(t - i, np.float32(1.0))
            code_type = np.uint8 if n_codes <= 1 << 8 else np.uint16
            if sparse_work:
                table = s.astype(code_type)[:, None] + s.astype(code_type)[None, :]
                gram = rows @ rows.T  # (c, c) CSR: the pairs that share a category, no repeats
                at = np.repeat(np.arange(c) * c, np.diff(gram.indptr)) + gram.indices
                table.ravel()[at] += (gram.data * base).astype(code_type)
                return table, values
        if c * rows.shape[1] <= 1 << 24 and not sparse_work:
            dense = rows.toarray().astype(np.float32)  # counts are exact in float32
            inter = dense @ dense.T
        else:
            inter = (rows @ rows.T).toarray().astype(np.float32)
        sf = s.astype(np.float32)
        band = max(1, (1 << 16) // max(c, 1))  # cache-sized temporaries, a band of rows at a time
        if n_codes <= _MAX_JACCARD_CODES:
            table = np.empty((c, c), code_type)
            for a in range(0, c, band):  # exact: every term is an integer below 2^24
                table[a:a + band] = inter[a:a + band] * base + (sf[a:a + band, None] + sf[None, :])
            return table, values
        for a in range(0, c, band):  # intersection -> Jaccard in place
            part = inter[a:a + band]
            part /= np.maximum(sf[a:a + band, None] + sf[None, :] - part, 1.0)
        return inter, None

    def ild(self, top: np.ndarray) -> np.ndarray:
        """(n,) 1 - mean Jaccard over ordered pairs of distinct items of each row of top (n, K)."""
        n, K = top.shape
        present = (top >= 0).sum(1)
        item_cls, first = self._item_class()
        cls = item_cls[np.where(top >= 0, top, self.n_items)]  # (n, K)
        # Only the classes on the lists enter the table, most frequent first: on real data
        # (popular items) the hot corner of the table then stays in cache.
        freq = np.bincount(cls.ravel(), minlength=len(first))
        used = np.flatnonzero(freq)
        used = used[np.argsort(-freq[used], kind="stable")]
        total = np.zeros(n)
        if len(used) <= _MAX_TABLE_CLASSES:
            table, values = self._jaccard_table(first[used])
            table = table.ravel()
            local = np.empty(len(first), dtype=np.int64)
            local[used] = np.arange(len(used))
            width = len(used)
            for a in range(0, n, _DIVERSITY_ROWS):
                # (K, rows) layout: each list position is one contiguous vector, so the sums
                # below add whole vectors instead of reducing many short rows.
                block = np.ascontiguousarray(local[cls[a:a + _DIVERSITY_ROWS]].T)
                acc = np.zeros(block.shape[1])
                for i in range(K - 1):  # Σ_{i<j} J: list position i against all later ones
                    found = table.take(block[i + 1:] + block[i] * width)
                    acc += (found if values is None else values.take(found)).sum(0)
                total[a:a + block.shape[1]] = 2.0 * acc
        else:
            slots = np.where(top >= 0, top, self.n_items)
            for a in range(0, n, _DIVERSITY_ROWS):
                total[a:a + _DIVERSITY_ROWS] = self._pair_jaccard_sparse(slots[a:a + _DIVERSITY_ROWS])
        pairs = present * (present - 1.0)
        return np.where(present >= 2, 1.0 - total / np.where(pairs > 0, pairs, 1.0), 0.0)

    def _pair_jaccard_sparse(self, block: np.ndarray) -> np.ndarray:
        """(rows,) Σ_{i≠j} Jaccard for each row of block (rows, K) via a block-diagonal Gram.

        Each row's items get category columns of their own (row * n_categories + c), so
        M @ M.T only pairs items of the same row; its nonzeros are the shared-category counts.
        """
        rows, K = block.shape
        n_cat = self.matrix.shape[1]
        m = self.matrix[block.ravel()]
        counts = np.diff(m.indptr)
        owner = np.repeat(np.arange(rows * K) // K, counts)
        spread = sp.csr_matrix((m.data, m.indices + owner * n_cat, m.indptr), shape=(rows * K, rows * n_cat))
        gram = (spread @ spread.T).tocoo()
        s = counts.astype(np.float64)
        off = gram.row != gram.col
        r, c, inter = gram.row[off], gram.col[off], gram.data[off]
        return np.bincount(r // K, weights=inter / (s[r] + s[c] - inter), minlength=rows)

    def entropy(self, top: np.ndarray) -> np.ndarray:
        """(n,) -Σ_c p_c ln p_c of each row of top (n, K); an item with m categories gives 1/m to each."""
        n, K = top.shape
        slots = np.where(top >= 0, top, self.n_items).ravel()
        share = sp.diags(1.0 / np.maximum(self.size, 1)) @ self.matrix
        picks = sp.csr_matrix((np.ones(n * K), slots, np.arange(0, n * K + 1, K)),
                              shape=(n, self.n_items + 1))
        mass = picks @ share  # (n, n_categories) CSR: Σ over the row's items of 1/m per category
        counted = (self.size[slots] > 0).reshape(n, K).sum(1).astype(np.float64)  # = Σ_c mass_c
        x = mass.data  # all > 0: sums of positive shares
        xlogx = x * np.log(x)
        s = np.zeros(n)
        filled = np.diff(mass.indptr) > 0  # reduceat needs non-empty segments
        if len(xlogx):
            s[filled] = np.add.reduceat(xlogx, mass.indptr[:-1][filled])
        # -Σ p ln p with p = x / t equals ln t - Σ x ln x / t (since Σ x = t).
        safe = np.where(counted > 0, counted, 1.0)
        return np.where(counted > 0, np.maximum(np.log(safe) - s / safe, 0.0), 0.0)


def _text_ild(top: np.ndarray, vectors: np.ndarray, n_items: int) -> np.ndarray:
    """(n,) 1 - mean cosine over ordered pairs of distinct items of each row of top (n, K).

    vectors (n_items, d). Σ_{i≠j} cos(i, j) = ||Σ_i x̂_i||^2 - Σ_i ||x̂_i||^2 with x̂ the unit
    vectors (zero vectors stay zero: cosine 0), so one sparse-dense product per chunk suffices.
    """
    x = np.asarray(vectors, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] != n_items:
        raise ValueError(f"item_vectors must be (n_items={n_items}, d), not {x.shape}")
    norm = np.linalg.norm(x, axis=1)
    unit = np.vstack([x / np.where(norm > 0, norm, 1.0)[:, None], np.zeros((1, x.shape[1]))])
    self_sim = np.r_[(norm > 0).astype(np.float64), 0.0]
    n, K = top.shape
    present = (top >= 0).sum(1)
    total = np.zeros(n)
    for a in range(0, n, _DIVERSITY_ROWS):
        block = np.where(top[a:a + _DIVERSITY_ROWS] >= 0, top[a:a + _DIVERSITY_ROWS], n_items)
        rows = len(block)
        picks = sp.csr_matrix((np.ones(rows * K), block.ravel(), np.arange(0, rows * K + 1, K)),
                              shape=(rows, n_items + 1))
        summed = picks @ unit
        total[a:a + rows] = (summed * summed).sum(1) - self_sim[block].sum(1)
    pairs = present * (present - 1.0)
    return np.where(present >= 2, 1.0 - total / np.where(pairs > 0, pairs, 1.0), 0.0)
