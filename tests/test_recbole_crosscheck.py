"""RecBole's own evaluator and ours agree on the same model, split and history mask (to 1e-4).

This is how users can trust that our evaluator is not a new source of differences:
- LightGCN (general): RecBole masks train+valid items itself when scoring test.
- SASRec (sequential): RecBole does not mask seen items for sequential models (by design), so
  the check wraps full_sort_predict with the same mask our harness applies; on the `loo`
  split each user has one test row, which is RecBole's unit of evaluation for sequences.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench import config as cfg
from bench.data.datasets import ensure_split
from bench.data.splits import SplitSpec
from bench.models import MODELS
from bench.paths import Workspace
from bench.runner import evaluate_split

pytest.importorskip("recbole")


def _fit(name: str, split, tmp_path):
    model = MODELS.get(name)()
    values = {**cfg.model_yaml(name, "smoke"), "epochs": 1}  # agreement does not need a good model
    model.fit(split, cfg.build(model.Config, values, name), tmp_path / name)
    return model


def _recbole_metrics(adapter, tmp_path) -> dict:
    from recbole.trainer import Trainer

    from bench.recbole_compat import quiet_recbole

    config = adapter.rb_config
    config["metrics"], config["topk"] = ["Recall", "NDCG"], [20, 100]
    config["metric_decimal_place"] = 10  # RecBole rounds to 4 places by default
    with quiet_recbole():
        trainer = Trainer(config, adapter.model)
        return trainer.evaluate(adapter.dataloaders["test"], load_best_model=False)


def _ours(adapter, split) -> dict:
    evaluation, _, _ = evaluate_split(adapter, split, "test", 100, (20, 100))
    return evaluation.metrics


def test_lightgcn_matches_recbole(tmp_path):
    split = ensure_split("synthetic", Workspace(tmp_path), SplitSpec("random"))
    adapter = _fit("lightgcn", split, tmp_path)
    theirs, ours = _recbole_metrics(adapter, tmp_path), _ours(adapter, split)
    assert ours["recall@20"] == pytest.approx(theirs["recall@20"], abs=1e-6)
    assert ours["ndcg@100"] == pytest.approx(theirs["ndcg@100"], abs=1e-6)
    assert 0 < ours["recall@20"] < 1  # a real comparison, not two zeros


def test_sasrec_matches_recbole_with_the_history_mask(tmp_path):
    split = ensure_split("synthetic", Workspace(tmp_path), SplitSpec("loo"))
    adapter = _fit("sasrec", split, tmp_path)
    seen = split.history("test")  # train + valid, as our harness masks it
    rb_seen = {}
    for u in range(split.n_users):
        rb_seen[int(adapter.rb_user[u])] = adapter.rb_item[seen.indices[seen.indptr[u]:seen.indptr[u + 1]]]
    original = adapter.model.full_sort_predict

    def masked(interaction):
        scores = original(interaction).view(len(interaction), -1).clone()
        for row, user in enumerate(interaction["user_id"].tolist()):
            scores[row, torch.as_tensor(rb_seen[user], dtype=torch.long)] = -np.inf
        return scores.view(-1)

    adapter.model.full_sort_predict = masked
    theirs = _recbole_metrics(adapter, tmp_path)
    adapter.model.full_sort_predict = original
    ours = _ours(adapter, split)
    assert ours["recall@20"] == pytest.approx(theirs["recall@20"], abs=1e-6)
    assert ours["ndcg@100"] == pytest.approx(theirs["ndcg@100"], abs=1e-6)
