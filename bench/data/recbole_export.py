"""RecBole atomic files for a split (a model-specific view of the contract).

Written under ``data/views/<dataset>/<split>/recbole/``:

    <ds>/<ds>.item                    item_id:token brand:token categories:token_seq title:token_seq
    <ds>/<ds>.{train,valid,test}.inter  the split files, for ``benchmark_filename``
                                      user_id:token item_id:token rating:float timestamp:float
    <ds>-seq/<ds>-seq.{train,valid,test}.inter
                                      pre-augmented sequential rows
                                      user_id:token item_id_list:token_seq item_id:token

RecBole skips its own sequence augmentation when benchmark files are given, so the
sequential files hold one row per (history -> next item). Train: every chronological
prefix of the user's train items predicts the next one. Valid: the user's train items
(by time) predict each valid item. Test: train + valid items, merged by time, predict each
test item. Histories keep the last ``max_len`` items. Load them with
``alias_of_item_id: [item_id_list]``; without it RecBole silently re-maps history ids to
other items (see docs/dependencies.md). Category names become single tokens (spaces ->
"_"), because RecBole splits token_seq fields on spaces.

There is no whole-data ``<ds>.inter``: with ``benchmark_filename`` RecBole reads only the split
files, and a file holding the test rows beside the training data invites leakage. Version 1
wrote one; re-exporting an old view deletes it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from bench.data.canonical import collapse_whitespace, split_categories
from bench.data.sequences import in_time_order
from bench.io import atomic_path, write_json_atomic

INTER_HEADER = ["user_id:token", "item_id:token", "rating:float", "timestamp:float"]
SEQ_HEADER = ["user_id:token", "item_id_list:token_seq", "item_id:token"]
ITEM_HEADER = ["item_id:token", "brand:token", "categories:token_seq", "title:token_seq"]
EXPORT_VERSION = 2  # 2: no whole-data <ds>.inter


def _write(path, header: list[str], frame: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write("\t".join(header) + "\n")
            frame.to_csv(fh, sep="\t", header=False, index=False, lineterminator="\n")


def _inter_frame(split, frame: pd.DataFrame) -> pd.DataFrame:
    rating = frame["rating"].fillna(5.0)  # implicit data: every row is a positive
    return pd.DataFrame({"u": split.user_ids[frame["user"].to_numpy()], "i": split.item_ids[frame["item"].to_numpy()],
                         "r": rating.to_numpy(), "t": frame["timestamp"].to_numpy()})


def sequential_rows(split, part: str, max_len: int = 50) -> pd.DataFrame:
    """(user, history, target) rows with original ids; history = space-joined item ids."""
    if part == "train":
        context = split.train
    elif part == "valid":
        context = split.train
    else:
        context = pd.concat([split.train, split.valid])
    ordered = in_time_order(context)
    users = ordered["user"].to_numpy()
    items = split.item_ids[ordered["item"].to_numpy()].tolist()  # original ids, each user's oldest first
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]]) if len(users) else np.zeros(0, np.int64)
    # (starts: where each user's rows begin)
    first = np.repeat(starts, np.diff(np.r_[starts, len(users)]))  # per row: its user's first row
    if part == "train":  # every prefix of a user's items predicts the next one
        at = np.flatnonzero(np.arange(len(users)) > first)
        rows_u = users[at]
        rows_h = [" ".join(items[max(f, p - max_len):p]) for p, f in zip(at.tolist(), first[at].tolist())]
        rows_t = [items[p] for p in at.tolist()]
    else:  # a user's whole context (the last max_len items) predicts each of its targets
        ends = np.r_[starts[1:], len(users)]
        history = {u: " ".join(items[max(s, e - max_len):e])
                   for u, s, e in zip(users[starts].tolist(), starts.tolist(), ends.tolist())}
        target = in_time_order(getattr(split, part))
        keep = np.isin(target["user"].to_numpy(), users[starts])  # users without a context have no row
        rows_u = target["user"].to_numpy()[keep]
        rows_h = [history[u] for u in rows_u.tolist()]
        rows_t = split.item_ids[target["item"].to_numpy()[keep]].tolist()
    return pd.DataFrame({"u": split.user_ids[np.asarray(rows_u, dtype=np.int64)], "h": rows_h, "t": rows_t})


def export_recbole(split, max_len: int = 50) -> dict[str, str]:
    """Write the general and sequential RecBole views of `split` (under `split.view_dir`);
    return {"data_path", "general", "sequential"}, RecBole's data_path and dataset names.

    Skipped when the files already exist for the same split hash and settings.
    """
    base = split.view_dir("recbole")
    name = split.dataset
    general, sequential = base / name, base / f"{name}-seq"
    stamp = {"split_hash": split.hash, "max_len": max_len, "version": EXPORT_VERSION}
    marker = base / "export.json"
    out = {"data_path": str(base), "general": name, "sequential": f"{name}-seq"}
    if marker.exists():
        import json

        try:
            if json.loads(marker.read_text()) == {**stamp, **out}:
                return out
        except ValueError:
            pass

    (general / f"{name}.inter").unlink(missing_ok=True)  # written by version 1, with the test rows
    for part in ("train", "valid", "test"):
        _write(general / f"{name}.{part}.inter", INTER_HEADER, _inter_frame(split, getattr(split, part)))
    items = split.items
    item_frame = pd.DataFrame({
        "i": split.item_ids,
        "b": items["brand"].map(collapse_whitespace).to_numpy(),
        "c": items["categories"].map(lambda v: " ".join(c.replace(" ", "_") for c in split_categories(v))).to_numpy(),
        "t": items["title"].map(collapse_whitespace).to_numpy(),
    })
    _write(general / f"{name}.item", ITEM_HEADER, item_frame)
    _write(sequential / f"{name}-seq.item", ITEM_HEADER, item_frame)  # item features for FDSA, S3Rec
    for part in ("train", "valid", "test"):
        _write(sequential / f"{name}-seq.{part}.inter", SEQ_HEADER, sequential_rows(split, part, max_len))
    write_json_atomic(marker, {**stamp, **out})
    return out
