"""The RecBole adapter: the epoch it reports is the epoch whose weights it restores."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from bench import config as cfg
from bench.data.datasets import ensure_split
from bench.data.splits import SplitSpec
from bench.models import MODELS

pytest.importorskip("recbole")


@pytest.fixture(scope="module")
def split(workspace):
    return ensure_split("synthetic-tiny", workspace, SplitSpec("random"))


def _fit_with_scores(split, tmp_path, monkeypatch, values: list[float], **settings):
    """Fit multivae with the validation scores `values` (one per epoch); return the adapter and
    the weights after each epoch."""
    import baselines.recbole_adapter as adapter_module

    states, scores = [], iter(values)

    def scripted(adapter, split, metric):
        states.append(copy.deepcopy(adapter.model.state_dict()))
        return next(scores)

    monkeypatch.setattr(adapter_module, "validate", scripted)
    model = MODELS.get("multivae")()
    config = cfg.build(model.Config, {**cfg.model_yaml("multivae", "smoke"), "epochs": len(values),
                                      "stopping_step": 10, **settings}, "multivae")
    model.fit(split, config, tmp_path / "work")
    return model, states


def _same(state, other) -> bool:
    return all(np.array_equal(state[k].cpu().numpy(), other[k].cpu().numpy()) for k in state)


def test_tied_validation_scores_keep_the_first_best_epoch(split, tmp_path, monkeypatch, one_torch_thread):
    # epochs 1 and 2 tie at 0.3: the first is kept (as bench.training.EarlyStopping does), and
    # the restored weights are that epoch's.
    model, states = _fit_with_scores(split, tmp_path, monkeypatch, [0.1, 0.3, 0.3, 0.2])
    assert model.info["best_epoch"] == 1 and model.info["best_valid"] == 0.3
    assert not _same(states[1], states[2])  # the two tied epochs have different weights
    assert _same(model.model.state_dict(), states[1])


def test_a_tie_does_not_restart_the_patience(split, tmp_path, monkeypatch, one_torch_thread):
    # RecBole stops after stopping_step + 1 validations without a (strict) improvement.
    model, _ = _fit_with_scores(split, tmp_path, monkeypatch, [0.3] * 6, stopping_step=1)
    assert model.info["epochs_run"] == 3 and model.info["best_epoch"] == 0
