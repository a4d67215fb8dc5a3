"""Stock RecBole loads the exported atomic files, and its counts equal the split files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bench.data.recbole_export import EXPORT_VERSION, export_recbole, sequential_rows
from bench.data.splits import SplitSpec, load_split, make_split, write_split
from bench.paths import Workspace

pytest.importorskip("recbole")


@pytest.fixture
def split(tmp_path, interactions, items_table):
    spec = SplitSpec("random", seed=0)
    ws = Workspace(tmp_path)
    directory = ws.split("toyset", spec.name)
    write_split(make_split(interactions, items_table, spec), directory, spec, "toyset")
    return load_split(directory)


def _load(model: str, dataset: str, data_path: str, extra: dict, workdir):
    from recbole.data import create_dataset, data_preparation

    from bench.recbole_compat import make_config

    config = make_config(model, dataset, data_path, {
        "benchmark_filename": ["train", "valid", "test"],
        "eval_args": {"order": "TO", "group_by": "user", "mode": "full"}, **extra}, workdir)
    dataset = create_dataset(config)
    return dataset, data_preparation(config, dataset)


def test_general_files_load_with_matching_counts(tmp_path, split):
    out = export_recbole(split)
    ds, (train, valid, test) = _load("BPR", out["general"], out["data_path"], {
        "load_col": {"inter": ["user_id", "item_id", "rating", "timestamp"],
                     "item": ["item_id", "brand", "categories", "title"]}}, tmp_path / "work")
    assert train.dataset.inter_num == len(split.train)
    assert valid.dataset.inter_num == len(split.valid)
    assert test.dataset.inter_num == len(split.test)
    assert ds.user_num - 1 == split.n_users and ds.item_num - 1 == split.n_items  # RecBole adds [PAD]
    # item features arrived as tokens: every item has its brand, categories are token sequences
    assert "categories" in ds.item_feat and ds.item_feat["categories"].shape[0] == ds.item_num
    assert not (tmp_path / "log").exists() or (tmp_path / "work").exists()


def test_sequential_files_keep_item_ids_aligned(tmp_path, split):
    out = export_recbole(split)
    ds, (train, valid, test) = _load("SASRec", out["sequential"], out["data_path"], {
        "load_col": {"inter": ["user_id", "item_id_list", "item_id"]}, "alias_of_item_id": ["item_id_list"],
        "train_neg_sample_args": None}, tmp_path / "work")
    users_with_history = split.train.groupby("user").size()
    assert train.dataset.inter_num == int((users_with_history - 1).sum())
    assert valid.dataset.inter_num == len(split.valid)
    assert test.dataset.inter_num == len(split.test)
    # the alias keeps history ids and target ids in one id space: tokens round-trip
    feat = test.dataset.inter_feat
    row = 0
    history = [t for t in ds.id2token("item_id", feat["item_id_list"][row].numpy()) if t != "[PAD]"]
    user = ds.id2token("user_id", feat["user_id"][row:row + 1].numpy())[0]
    u = int(np.flatnonzero(split.user_ids == user)[0])
    known = set(split.item_ids[split.train[split.train.user == u]["item"]]) | set(
        split.item_ids[split.valid[split.valid.user == u]["item"]])
    assert set(history) == known


def test_sequential_rows_are_prefixes(split):
    rows = sequential_rows(split, "train", max_len=3)
    assert rows["h"].str.split().map(len).max() <= 3
    u0 = rows[rows["u"] == rows["u"].iloc[0]]
    seqs = [h.split() for h in u0["h"]]
    assert all(len(a) <= len(b) for a, b in zip(seqs, seqs[1:]))


def test_export_is_cached_by_split_hash(tmp_path, split):
    out = export_recbole(split)
    inter = Path(out["data_path"]) / out["general"] / f"{out['general']}.train.inter"
    mtime = inter.stat().st_mtime_ns
    export_recbole(split)
    assert inter.stat().st_mtime_ns == mtime


def test_no_whole_data_file_with_the_test_rows(tmp_path, split):
    out = export_recbole(split)
    general = Path(out["data_path"]) / out["general"]
    whole = general / f"{out['general']}.inter"
    assert sorted(p.name for p in general.iterdir()) == [
        f"toyset.{part}" for part in ("item", "test.inter", "train.inter", "valid.inter")]
    # a view exported by version 1 (with that file) is rebuilt, and the file removed
    marker = Path(out["data_path"]) / "export.json"
    marker.write_text(json.dumps({**json.loads(marker.read_text()), "version": 1}))
    whole.write_text("user_id:token\titem_id:token\n")
    export_recbole(split)
    assert not whole.exists() and json.loads(marker.read_text())["version"] == EXPORT_VERSION > 1
