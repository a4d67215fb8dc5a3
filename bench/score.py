"""`bench score`: score anyone's ranked lists from CSV files with the project's one evaluator.

Files (headers required; ids are read as strings; plain or gzip):
    train / valid / test   user_id,item_id[,rating]      (valid optional)
    recs                   user_id,item_id,rank           (rank: any numbers, smaller = better)
    items                  item_id[,title][,brand][,categories]   (categories joined by "|"; optional)

Held-out positives are the test rows with rating > 3, or every row without a rating. The
history removed from the lists is every train row (and valid row, when given); the golden
tie-break uses the mean train rating of each item. Integer indices follow
`canonical.ordered_ids` over every id seen in any file.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from bench.data.canonical import is_positive, ordered_ids
from bench.data.splits import category_matrix, interaction_matrix, mean_item_rating
from bench.errors import DataError

logger = logging.getLogger(__name__)


def score_files(train: Path, test: Path, recs: Path, valid: Path | None = None, items: Path | None = None,
                ks: Sequence[int] = (20, 40, 100), similarity: str = "category", encoder: str | None = None) -> dict:
    """Evaluate the lists in `recs` against `test`. Returns
    {"metrics": {name: value or None}, "n_users": evaluated users, "similarity": ..., "ks": [...]}."""
    from bench.evaluator import GroundTruth, evaluate

    ks = [int(k) for k in ks]
    if not ks or min(ks) < 1:
        raise DataError(f"cutoffs must be positive integers, got {ks}", fix="e.g. --k 20,40,100")
    if similarity not in ("category", "text"):
        raise DataError(f"unknown similarity {similarity!r}", fix="use category or text")
    train_df = _read(train, "train", ["user_id", "item_id"], optional=["rating"])
    test_df = _read(test, "test", ["user_id", "item_id"], optional=["rating"])
    valid_df = _read(valid, "valid", ["user_id", "item_id"], optional=["rating"]) if valid is not None else None
    recs_df = _read(recs, "recs", ["user_id", "item_id", "rank"])
    items_df = _read(items, "items", ["item_id"], optional=["title", "brand", "categories"]) \
        if items is not None else None

    train_r = _ratings(train_df, train)
    test_r = _ratings(test_df, test)
    rank = pd.to_numeric(recs_df["rank"], errors="coerce").to_numpy(dtype=np.float64)
    bad = np.flatnonzero(np.isnan(rank))
    if len(bad):
        raise DataError(f"rank {recs_df['rank'].iloc[bad[0]]!r} is not a number", recs, line=int(bad[0]) + 2,
                        fix="the rank column must hold numbers, 1 = best")

    unknown = _unknown_in_recs(recs_df, [f for f in (train_df, valid_df, test_df) if f is not None], items_df)
    if unknown["rows"]:
        logger.warning("%s names %d user(s) and %d item(s) found in no train/valid/test%s file (%d of %d rows): "
                       "lists of unknown users are not evaluated, unknown items count as misses; check that the "
                       "ids match", recs, unknown["users"], unknown["items"], "/items" if items_df is not None else "",
                       unknown["rows"], len(recs_df))
    frames = [f for f in (train_df, valid_df, test_df, recs_df) if f is not None]
    user_ids = ordered_ids(pd.concat([f["user_id"] for f in frames], ignore_index=True))
    item_ids = ordered_ids(pd.concat([f["item_id"] for f in frames]
                                     + ([items_df["item_id"]] if items_df is not None else []), ignore_index=True))
    users, items_index = pd.Index(user_ids), pd.Index(item_ids)
    n_users, n_items = len(user_ids), len(item_ids)

    seen = pd.concat([f for f in (train_df, valid_df) if f is not None], ignore_index=True)
    history = interaction_matrix(users.get_indexer(seen["user_id"]), items_index.get_indexer(seen["item_id"]),
                                 n_users, n_items)
    item_mean = mean_item_rating(items_index.get_indexer(train_df["item_id"]), train_r, n_items)

    positive = is_positive(test_r)
    if not positive.any():
        raise DataError("no held-out positives (rows with rating > 3, or without a rating)", test,
                        fix="check that this is the test split")

    rec_users, rec_lists = _lists(recs_df, rank, users, items_index)
    categories = vectors = None
    if items_df is not None and "categories" in items_df.columns:
        categories = category_matrix(items_df["categories"], items_index.get_indexer(items_df["item_id"]), n_items)
    if similarity == "text":
        vectors = _text_vectors(items_df, items, item_ids, encoder)

    truth = GroundTruth(n_users=n_users, n_items=n_items,
                        test_users=users.get_indexer(test_df["user_id"])[positive],
                        test_items=items_index.get_indexer(test_df["item_id"])[positive],
                        test_ratings=test_r[positive], history=history, item_mean_rating=item_mean,
                        item_categories=categories, item_vectors=vectors)
    result = evaluate(rec_lists, rec_users, truth, ks=tuple(ks), ranked_k=100, diversity_k=20,
                      similarity=similarity)
    logger.info("scored %d users (%d with lists)", result.n_users, len(rec_users))
    return {"metrics": result.metrics, "n_users": result.n_users, "similarity": similarity, "ks": ks,
            "unknown_in_recs": unknown}


def format_table(result: dict) -> str:
    """A two-column text table of a score_files result, with what the numbers mean."""
    from tabulate import tabulate

    rows = [(name, "missing" if value is None else f"{value:.4f}") for name, value in result["metrics"].items()]
    head = (f"{result['n_users']} users; ild similarity: {result['similarity']}; "
            "was/dpa/wmrd/pwkt at K=100, normalised so a perfect page scores 1 (wmrd: 0)")
    unknown = result.get("unknown_in_recs") or {}
    if unknown.get("rows"):
        head += (f"\nwarning: the lists name {unknown['users']} unknown user(s) and {unknown['items']} unknown "
                 f"item(s) ({unknown['rows']} rows): unknown users are not evaluated, unknown items are misses")
    return head + "\n" + tabulate(rows, headers=["metric", "value"], tablefmt="github", disable_numparse=True)


# ------------------------------------------------------------------------------------------------


def _read(path: Path, what: str, required: list[str], optional: Sequence[str] = ()) -> pd.DataFrame:
    """The CSV at `path` with string columns `required` (+ those of `optional` present)."""
    from bench.io import open_text, reading

    path = Path(path)
    if not path.is_file():
        raise DataError(f"no {what} file here", path, fix=f"give the path of a CSV with columns {','.join(required)}")
    try:
        with reading(path), open_text(path) as fh:
            df = pd.read_csv(fh, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"not a readable CSV ({str(exc).strip().splitlines()[-1]})", path,
                        fix=f"expected a header line {','.join(required)}") from exc
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataError(f"no {', '.join(missing)} column (found: {', '.join(df.columns)})", path,
                        fix=f"the {what} file needs a header line with {','.join(required)}")
    keep = required + [c for c in optional if c in df.columns]
    df = df[keep].copy()
    for col in ("user_id", "item_id"):
        if col in df:
            df[col] = df[col].str.strip()
            empty = np.flatnonzero(df[col].to_numpy() == "")
            if len(empty):
                raise DataError(f"empty {col}", path, line=int(empty[0]) + 2, fix="every row needs an id")
    if what in ("test", "recs") and len(df) == 0:
        raise DataError(f"the {what} file has no rows", path, fix="check that this is the right file")
    return df


def _unknown_in_recs(recs_df: pd.DataFrame, data: list[pd.DataFrame], items_df: pd.DataFrame | None) -> dict:
    """Counts of the users and items in `recs_df` that no data file (nor the items file) names."""
    known_users = pd.Index(pd.concat([f["user_id"] for f in data], ignore_index=True).unique())
    known_items = pd.Index(pd.concat([f["item_id"] for f in data]
                                     + ([items_df["item_id"]] if items_df is not None else []),
                                     ignore_index=True).unique())
    bad_user = ~recs_df["user_id"].isin(known_users).to_numpy()
    bad_item = ~recs_df["item_id"].isin(known_items).to_numpy()
    return {"users": int(recs_df["user_id"][bad_user].nunique()), "items": int(recs_df["item_id"][bad_item].nunique()),
            "rows": int((bad_user | bad_item).sum())}


def _ratings(df: pd.DataFrame, path: Path) -> np.ndarray:
    """(len(df),) float ratings; NaN where the file has no rating (implicit feedback)."""
    if "rating" not in df.columns:
        return np.full(len(df), np.nan)
    text = df["rating"].str.strip()
    values = pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64)
    bad = np.flatnonzero(np.isnan(values) & (text.to_numpy() != ""))
    if len(bad):
        raise DataError(f"rating {df['rating'].iloc[bad[0]]!r} is not a number", path, line=int(bad[0]) + 2,
                        fix="ratings must be numbers, or empty for implicit feedback")
    return values


def _lists(recs_df: pd.DataFrame, rank: np.ndarray, users: pd.Index, items: pd.Index):
    """(R,) user indices and (R, W) ranked item indices (-1 padded), rows ordered by rank."""
    u = users.get_indexer(recs_df["user_id"])
    i = items.get_indexer(recs_df["item_id"])
    order = np.lexsort((rank, u))
    u, i = u[order], i[order]
    starts = np.flatnonzero(np.r_[True, u[1:] != u[:-1]])
    lengths = np.diff(np.r_[starts, len(u)])
    row = np.repeat(np.arange(len(starts)), lengths)
    col = np.arange(len(u)) - starts[row]
    lists = np.full((len(starts), int(lengths.max())), -1, dtype=np.int64)
    lists[row, col] = i
    return u[starts], lists


def _text_vectors(items_df: pd.DataFrame | None, path: Path | None, item_ids: np.ndarray,
                  encoder: str | None) -> np.ndarray:
    """(n_items, d) embeddings of "title. brand. cat1, cat2"; zero rows for items without text."""
    from bench.text import encode_texts

    if items_df is None or not {"title", "brand", "categories"} & set(items_df.columns):
        raise DataError("--similarity text needs item texts", path or "--items",
                        fix="pass --items with a title (and optionally brand, categories) column")
    frame = items_df.drop_duplicates("item_id", keep="last").set_index("item_id")
    columns = [c for c in ("title", "brand", "categories") if c in frame.columns]
    texts = [". ".join(v for v in (str(x).strip() for x in values) if v)
             for values in zip(*(frame[c].fillna("").str.replace("|", ", ", regex=False) for c in columns))]
    texts = pd.Series(texts, index=frame.index, dtype=object).reindex(pd.Index(item_ids)).fillna("")
    has_text = (texts != "").to_numpy()
    encoded = encode_texts(texts[has_text].tolist(), encoder=encoder)
    vectors = np.zeros((len(item_ids), encoded.shape[1] if encoded.ndim == 2 else 0), dtype=np.float32)
    vectors[has_text] = encoded
    return vectors
