"""Fixed splits on disk: the contract every model consumes.

Protocols (positives = rating > 3, or every row for implicit data):
- ``random`` (the paper, Appendix D.1): per user, a seeded random 80/10/10 split of the
  positives with at least one item in valid and in test. Users with fewer than 3 positives
  are dropped (and counted in split.json).
- ``loo``: leave the last positive out for test and the one before for valid (by time;
  ties broken by item id).
- ``temporal``: per user, the chronologically oldest 80% to train, then 10% valid, the
  latest 10% test (same counts as ``random``, so the two are comparable).
- cold-start variant (Appendix F): the same valid/test as the base split, and each user
  keeps ceil(n/2) of their n training positives (seeded), so at least one.

Counts per user with n positives: n_test = n_valid = max(1, floor(0.1 n + 0.5)),
n_train = n - n_valid - n_test (>= 1 since n >= 3).

Files in ``data/splits/<dataset>/<split_name>/`` (plain CSV with header, original ids):
    train.csv, valid.csv, test.csv   user_id,item_id,rating,timestamp   (positives)
    negatives.csv                    user_id,item_id,rating,timestamp   (rating <= 3 of kept
                                     users on known items: never scored, available to
                                     preference-pair generation)
    items.csv                        item_id,title,brand,categories,description
    reviews.csv                      user_id,item_id,summary,review_text   (see below)
    split.json                       spec, counts, dropped users, content hash; among the
                                     counts n_items_title_markup_only (titles that were
                                     only HTML markup in the source, now missing)
The content hash is the sha256 of those six files (in that order), first 16 hex digits.

reviews.csv holds the review text (``review_text``, ``summary`` from a reviews file, HTML
markup stripped and entities unescaped, whitespace collapsed: `canonical.clean_text`) of the TRAIN and NEGATIVES rows only, one row per
(user, item) that has non-empty text, ordered like those files; it is always written (header
only when the source has no text: ratings CSVs, generic data). Valid and test rows never
have their text here: a held-out review names the held-out item and usually its rating, so
a model reading it in training would be taught the answer it is scored on. Cold-start
splits hold only the text of the training rows they keep. It is model input (PageLLM's
pre-training prompts quote it), never scored: the evaluator does not read it. It is part of
the content hash because models read it, so changing it must change the cache key of every
result; a split written before this file existed is rebuilt by `ensure_split` (its hash no
longer verifies) and still loads with `load_split` (no reviews).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from bench.data.canonical import clean_text, is_positive, ordered_ids, split_categories
from bench.errors import ConfigError, DataError
from bench.io import atomic_path, sha256_file, write_json_atomic

logger = logging.getLogger(__name__)

PROTOCOLS = ("random", "loo", "temporal")
PART_FILES = ("train.csv", "valid.csv", "test.csv", "negatives.csv", "items.csv", "reviews.csv")
SPLIT_COLUMNS = ["user_id", "item_id", "rating", "timestamp"]
TEXT_COLUMNS = ("summary", "review_text")  # optional text columns of the canonical interactions
REVIEW_COLUMNS = ["user_id", "item_id", *TEXT_COLUMNS]
MIN_POSITIVES = 3


@dataclass(frozen=True)
class SplitSpec:
    protocol: str = field(default="random", metadata={"help": f"one of {PROTOCOLS}"})
    seed: int = field(default=0, metadata={"help": "seed of the split (fixed across model seeds)"})
    cold_start: bool = field(default=False, metadata={"help": "keep half of each user's train positives"})

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"unknown split protocol {self.protocol!r}; choose one of {', '.join(PROTOCOLS)}")

    @property
    def name(self) -> str:
        base = self.protocol if self.protocol != "random" else f"random-s{self.seed}"
        return base + ("-cold50" if self.cold_start else "")


def _holdout_count(n: np.ndarray) -> np.ndarray:
    return np.maximum(1, np.floor(0.1 * n + 0.5)).astype(np.int64)


def _rank_within_user(users: np.ndarray) -> np.ndarray:
    """0-based position of each row inside its (contiguous, sorted) user group."""
    starts = np.r_[0, np.flatnonzero(users[1:] != users[:-1]) + 1]
    sizes = np.diff(np.r_[starts, len(users)])
    return np.arange(len(users)) - np.repeat(starts, sizes)


def make_split(interactions: pd.DataFrame, items: pd.DataFrame, spec: SplitSpec,
               source: object = "interactions") -> dict:
    """Split canonical tables into train/valid/test/negatives DataFrames with original ids.

    Returns a dict with the four frames (columns user_id,item_id,rating,timestamp), the
    items frame restricted to items in the positive splits, the reviews frame (columns
    user_id,item_id,summary,review_text: text of train and negatives rows only, see the
    module docstring) and the split statistics.
    """
    text_columns = [c for c in TEXT_COLUMNS if c in interactions.columns]  # carried row-aligned, dropped below
    df = interactions[["user", "item", "rating", "timestamp", *text_columns]].rename(
        columns={"user": "user_id", "item": "item_id"})
    positive = is_positive(df["rating"].to_numpy())
    pos = df[positive]
    counts = pos.groupby("user_id").size()
    kept_users = counts.index[counts >= MIN_POSITIVES]
    n_dropped = int(df["user_id"].nunique() - len(kept_users))
    pos = pos[pos["user_id"].isin(kept_users)]
    if len(pos) == 0:
        raise DataError(f"no user has at least {MIN_POSITIVES} positive interactions (rating > 3)", source,
                        fix="check the rating column, or use a larger dataset")

    # A fixed row order before drawing makes the split independent of the file's row order.
    user_codes = pd.Categorical(pos["user_id"], categories=ordered_ids(pos["user_id"])).codes
    item_codes = pd.Categorical(pos["item_id"], categories=ordered_ids(pos["item_id"])).codes
    if spec.protocol == "random":
        rng = np.random.default_rng(spec.seed)
        base = np.lexsort((item_codes, user_codes))
        key = np.empty(len(pos))
        key[base] = rng.random(len(pos))
        order = np.lexsort((key, user_codes))
    else:
        # Newest first, so the first rows of each user are the held-out ones.
        order = np.lexsort((-item_codes, -pos["timestamp"].to_numpy(), user_codes))
    pos = pos.iloc[order].reset_index(drop=True)
    users_sorted = user_codes[order]
    rank = _rank_within_user(users_sorted)
    n = np.bincount(users_sorted)[users_sorted]
    holdout = _holdout_count(n) if spec.protocol != "loo" else np.ones_like(n)
    part = np.where(rank < holdout, 2, np.where(rank < 2 * holdout, 1, 0))  # 2 test, 1 valid, 0 train

    if spec.cold_start:
        train_rows = np.flatnonzero(part == 0)
        rng = np.random.default_rng([spec.seed, 1])  # its own stream: the base split is unchanged
        key = rng.random(len(train_rows))
        sub_order = np.lexsort((key, users_sorted[train_rows]))
        tr_users = users_sorted[train_rows][sub_order]
        tr_rank = _rank_within_user(tr_users)
        tr_n = np.bincount(tr_users, minlength=users_sorted.max() + 1)[tr_users]
        drop = tr_rank >= np.ceil(tr_n / 2)
        part[train_rows[sub_order][drop]] = -1

    frames = {name: pos[part == code].sort_values(["user_id", "timestamp", "item_id"], kind="stable")
              .reset_index(drop=True) for name, code in (("train", 0), ("valid", 1), ("test", 2))}
    known_items = set(pos["item_id"])
    neg = df[~positive & df["user_id"].isin(kept_users) & df["item_id"].isin(known_items)]
    frames["negatives"] = neg.sort_values(["user_id", "timestamp", "item_id"], kind="stable").reset_index(drop=True)
    frames["reviews"] = _reviews(frames["train"], frames["negatives"])
    for name in ("train", "valid", "test", "negatives"):
        frames[name] = frames[name][SPLIT_COLUMNS]
    item_table = items[items["item"].isin(known_items)].rename(columns={"item": "item_id"})
    frames["items"] = item_table.sort_values("item_id").reset_index(drop=True)
    frames["stats"] = {
        "n_users": int(len(kept_users)),
        "n_items": int(len(known_items)),
        "n_train": int(len(frames["train"])),
        "n_valid": int(len(frames["valid"])),
        "n_test": int(len(frames["test"])),
        "n_negatives": int(len(frames["negatives"])),
        "n_dropped_users": n_dropped,
        "n_dropped_cold_start": int((part == -1).sum()),
        "n_items_with_metadata": int(len(item_table)),
        # titles that were only HTML markup in the source (now missing); see bench.data.canonical
        "n_items_title_markup_only": int(item_table["title_markup_only"].sum())
        if "title_markup_only" in item_table.columns else 0,
        "n_reviews": int(len(frames["reviews"])),
    }
    return frames


def _reviews(train: pd.DataFrame, negatives: pd.DataFrame) -> pd.DataFrame:
    """The review text of train and negatives rows with any text (never valid/test rows)."""
    rows = pd.concat([train, negatives], ignore_index=True)
    out = pd.DataFrame({"user_id": rows["user_id"], "item_id": rows["item_id"], "timestamp": rows["timestamp"]})
    for col in TEXT_COLUMNS:
        out[col] = rows[col].map(clean_text) if col in rows.columns else ""
    out = out[(out["summary"] != "") | (out["review_text"] != "")]
    out = out.sort_values(["user_id", "timestamp", "item_id"], kind="stable").reset_index(drop=True)
    return out[REVIEW_COLUMNS]


def interaction_matrix(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int) -> sp.csr_matrix:
    """(n_users, n_items) binary float32 CSR with a 1 at each (users[j], items[j]); a pair listed
    twice is one entry. The history matrix of `Split.matrix` and of `bench score`."""
    mat = sp.csr_matrix((np.ones(len(users), dtype=np.float32), (np.asarray(users), np.asarray(items))),
                        shape=(n_users, n_items))
    mat.sum_duplicates()
    mat.data[:] = 1.0
    return mat


def mean_item_rating(items: np.ndarray, ratings: np.ndarray, n_items: int) -> np.ndarray:
    """(n_items,) mean of `ratings` (aligned with `items`) per item; NaN ratings are left out,
    and an item without any rating gets 0 (the golden list's tie-break, `GroundTruth`)."""
    items = np.asarray(items)
    ratings = np.asarray(ratings, dtype=np.float64)
    rated = ~np.isnan(ratings)
    sums = np.bincount(items[rated], weights=ratings[rated], minlength=n_items)
    counts = np.bincount(items[rated], minlength=n_items)
    return np.divide(sums, counts, out=np.zeros(n_items), where=counts > 0)


def category_matrix(categories, items: np.ndarray, n_items: int) -> sp.csr_matrix | None:
    """(n_items, n_categories) binary float32 CSR from "|"-joined category strings, one per entry
    of `items` (an item listed twice gets the union), columns in sorted category order; None when
    no item has a category. Names are parsed by `canonical.split_categories`."""
    lists = [split_categories(c) for c in categories]
    vocab = sorted({c for cats in lists for c in cats})
    if not vocab:
        return None
    index = {c: j for j, c in enumerate(vocab)}
    rows = np.repeat(np.asarray(items, dtype=np.int64), [len(c) for c in lists])
    cols = np.fromiter((index[c] for cats in lists for c in cats), dtype=np.int64, count=len(rows))
    return interaction_matrix(rows, cols, n_items, len(vocab))


def write_split(frames: dict, directory: Path, spec: SplitSpec, dataset: str, source_hash: str | None = None) -> str:
    """Write the split files atomically; return the content hash."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("train", "valid", "test", "negatives"):
        with atomic_path(directory / f"{name}.csv") as tmp:
            frames[name][SPLIT_COLUMNS].to_csv(tmp, index=False)
    with atomic_path(directory / "items.csv") as tmp:
        cols = ["item_id", "title", "brand", "categories", "description"]
        frames["items"].reindex(columns=cols).to_csv(tmp, index=False)
    with atomic_path(directory / "reviews.csv") as tmp:
        reviews = frames.get("reviews")
        reviews = pd.DataFrame(columns=REVIEW_COLUMNS) if reviews is None else reviews
        reviews.reindex(columns=REVIEW_COLUMNS).to_csv(tmp, index=False)
    digest = content_hash(directory)
    write_json_atomic(directory / "split.json", {
        "dataset": dataset, "name": spec.name, "spec": asdict(spec), "hash": digest,
        "source_hash": source_hash, **frames["stats"],
    })
    return digest


def content_hash(directory: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    for name in PART_FILES:
        digest.update(name.encode())
        digest.update(sha256_file(directory / name).encode())
    return digest.hexdigest()[:16]


@dataclass
class Split:
    """A split loaded from disk, with integer indices for users and items.

    Indices follow `ordered_ids` over kept users and over items of the positive splits.
    Frames have columns user, item (int indices), rating (float), timestamp (int).
    `reviews` (read on first use) has columns user, item (int indices), summary,
    review_text (str): the text of train and negatives rows only; empty when the split has
    no reviews.csv or the source no text.
    """

    dataset: str
    name: str
    directory: Path
    hash: str
    spec: dict
    user_ids: np.ndarray  # (n_users,) original ids, index -> id
    item_ids: np.ndarray  # (n_items,)
    train: pd.DataFrame
    valid: pd.DataFrame
    test: pd.DataFrame
    negatives: pd.DataFrame
    items: pd.DataFrame  # indexed 0..n_items-1: title, brand, categories, description (strings)
    stats: dict

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def protocol(self) -> str:
        return self.spec["protocol"]

    def view_dir(self, kind: str) -> Path:
        """Where model-specific views of this split live: a sibling tree of the split files,
        ``data/views/<dataset>/<split>/<kind>`` for ``data/splits/<dataset>/<split>``."""
        return self.directory.parent.parent.parent / "views" / self.dataset / self.name / kind

    def matrix(self, parts: tuple[str, ...] = ("train",)) -> sp.csr_matrix:
        """(n_users, n_items) binary CSR matrix of the given parts."""
        frame = pd.concat([getattr(self, p) for p in parts])
        return interaction_matrix(frame["user"].to_numpy(), frame["item"].to_numpy(), self.n_users, self.n_items)

    def history(self, part: str) -> sp.csr_matrix:
        """Items masked when scoring `part`: train for valid, train + valid for test."""
        if part == "valid":
            return self.matrix(("train",))
        if part == "test":
            return self.matrix(("train", "valid"))
        raise ValueError(f"part must be 'valid' or 'test', not {part!r}")

    @cached_property
    def reviews(self) -> pd.DataFrame:
        """Review text of train and negatives rows (never valid/test); see the class docstring."""
        path = self.directory / "reviews.csv"
        if not path.exists():  # a split written before reviews.csv existed
            raw = pd.DataFrame({c: pd.Series(dtype=str) for c in REVIEW_COLUMNS})
        else:
            raw = pd.read_csv(path, dtype=str, keep_default_na=False)
            missing = [c for c in REVIEW_COLUMNS if c not in raw.columns]
            if missing:
                raise DataError(f"no {', '.join(missing)} column", path,
                                fix="delete the split directory and run `bench data split` again")
        users = pd.Index(self.user_ids).get_indexer(raw["user_id"])
        items = pd.Index(self.item_ids).get_indexer(raw["item_id"])
        known = (users >= 0) & (items >= 0)
        if not known.all():
            logger.warning("%s: %d review rows name users or items outside the split; ignored",
                           path, int((~known).sum()))
        return pd.DataFrame({
            "user": users[known].astype(np.int64), "item": items[known].astype(np.int64),
            "summary": raw["summary"].to_numpy()[known].astype(object),
            "review_text": raw["review_text"].to_numpy()[known].astype(object),
        })

    @cached_property
    def item_mean_rating(self) -> np.ndarray:
        """(n_items,) mean training rating (0 where an item has none or data is implicit)."""
        return mean_item_rating(self.train["item"].to_numpy(), self.train["rating"].to_numpy(dtype="float64"),
                                self.n_items)

    @cached_property
    def item_categories(self) -> sp.csr_matrix | None:
        """(n_items, n_categories) binary matrix, or None when no item has a category."""
        return category_matrix(self.items["categories"].fillna(""), np.arange(self.n_items), self.n_items)

    def ground_truth(self, part: str = "test"):
        """The evaluator's view of `part` (history masked as for every model)."""
        from bench.evaluator import GroundTruth

        frame = getattr(self, part)
        return GroundTruth(
            n_users=self.n_users, n_items=self.n_items,
            test_users=frame["user"].to_numpy(), test_items=frame["item"].to_numpy(),
            test_ratings=frame["rating"].to_numpy(dtype="float64"),
            history=self.history(part), item_mean_rating=self.item_mean_rating,
            item_categories=self.item_categories,
        )


def load_split(directory: Path) -> Split:
    directory = Path(directory)
    meta_path = directory / "split.json"
    if not meta_path.exists():
        raise DataError("no split.json here", directory, fix="run `bench data split` or `bench run` to create the split")
    meta = json.loads(meta_path.read_text())
    read = {name: pd.read_csv(directory / f"{name}.csv", dtype={"user_id": str, "item_id": str},
                              keep_default_na=False, na_values=[""])
            for name in ("train", "valid", "test", "negatives")}
    items = pd.read_csv(directory / "items.csv", dtype=str, keep_default_na=False)
    positives = pd.concat([read["train"], read["valid"], read["test"]])
    user_ids = ordered_ids(positives["user_id"])
    item_ids = ordered_ids(positives["item_id"])
    user_index = pd.Index(user_ids)
    item_index = pd.Index(item_ids)

    def indexed(frame: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame({
            "user": user_index.get_indexer(frame["user_id"]).astype(np.int64),
            "item": item_index.get_indexer(frame["item_id"]).astype(np.int64),
            "rating": pd.to_numeric(frame["rating"], errors="coerce").astype("float64"),
            "timestamp": frame["timestamp"].astype(np.int64),
        })

    meta_items = items.set_index("item_id").reindex(item_ids)
    meta_items = meta_items.reindex(columns=["title", "brand", "categories", "description"]).fillna("")
    meta_items.index = pd.RangeIndex(len(item_ids))
    return Split(
        dataset=meta["dataset"], name=meta["name"], directory=directory, hash=meta["hash"], spec=meta["spec"],
        user_ids=user_ids, item_ids=item_ids,
        train=indexed(read["train"]), valid=indexed(read["valid"]), test=indexed(read["test"]),
        negatives=indexed(read["negatives"]), items=meta_items,
        stats={k: v for k, v in meta.items() if k.startswith("n_")},
    )


def split_is_current(directory: Path) -> bool:
    """True when split.json exists and its recorded hash matches the files on disk."""
    try:
        meta = json.loads((directory / "split.json").read_text())
        return meta.get("hash") == content_hash(directory)
    except (OSError, ValueError, KeyError):
        return False
