"""Every model that can read the harness's history reads it (issue 10, section 1).

At test time the harness hands each model train + valid as the history (`Split.history`); a
model that folds it in must score test users differently when their valid history changes.
Each model is fitted once, tiny (smoke settings, 1 epoch), on synthetic-tiny, and scores the
test users with the test history (train + valid) and with the valid part taken out (train
only). LightGCN (a user is a trained embedding, by design), Pop and Random cannot move.
"""

from __future__ import annotations

import numpy as np
import pytest

from bench import config as cfg
from bench.data.datasets import ensure_split
from bench.data.splits import SplitSpec
from bench.models import MODELS

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see tests/conftest.py

# name -> settings on top of its smoke settings (one epoch, CPU, nothing slow)
FOLD_IN = {
    "ease": {},
    "itemknn": {},
    "md-cvae": {"epochs": 1, "device": "cpu"},
    "hstu": {"epochs": 1, "device": "cpu"},
    "unisrec": {"epochs": 1, "device": "cpu"},
    "multivae": {"epochs": 1, "device": "cpu"},
    "sasrec": {"epochs": 1, "device": "cpu"},
    "gru4rec": {"epochs": 1, "device": "cpu"},
    "bert4rec": {"epochs": 1, "device": "cpu"},
    "fdsa": {"epochs": 1, "device": "cpu"},
    "s3rec": {"epochs": 1, "device": "cpu"},
}
FIXED = {"lightgcn": {"epochs": 1, "device": "cpu"}, "pop": {}, "random": {}}
RECBOLE = {"multivae", "sasrec", "gru4rec", "bert4rec", "fdsa", "s3rec", "lightgcn"}


@pytest.fixture(scope="module")
def split(workspace):
    return ensure_split("synthetic-tiny", workspace, SplitSpec("random"))


def _test_scores(name: str, settings: dict, split, workdir) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scores of the test users with the test history, again with it, and with train only."""
    if name in RECBOLE:
        pytest.importorskip("recbole")
    if name == "unisrec":
        pytest.importorskip("sentence_transformers")
    model = MODELS.get(name)()
    config = cfg.build(model.Config, {**cfg.model_yaml(name, "smoke"), **settings}, name)
    model.fit(split, config, workdir)
    users = np.unique(split.test["user"].to_numpy())
    with_valid = split.history("test")[users]
    train_only = split.history("valid")[users]
    return (np.asarray(model.score(users, with_valid)), np.asarray(model.score(users, with_valid)),
            np.asarray(model.score(users, train_only)))


@pytest.mark.parametrize("name", list(FOLD_IN))
def test_test_scores_follow_the_valid_history(name, split, tmp_path):
    scores, again, without_valid = _test_scores(name, FOLD_IN[name], split, tmp_path / "work")
    np.testing.assert_array_equal(scores, again)  # scoring is deterministic: a change is the history's
    changed = np.any(scores != without_valid, axis=1)
    assert changed.mean() > 0.9, f"{name}: only {changed.mean():.0%} of the test users' scores read valid"


@pytest.mark.parametrize("name", list(FIXED))
def test_models_that_cannot_fold_in_score_without_the_history(name, split, tmp_path):
    scores, _, without_valid = _test_scores(name, FIXED[name], split, tmp_path / "work")
    np.testing.assert_array_equal(scores, without_valid)


def test_multivae_encodes_the_harness_history_as_recbole_encodes_its_training_matrix(split, tmp_path):
    # When the history is the training split (scoring valid), the folded-in input row is the
    # one RecBole builds itself: the same scores as its own full_sort_predict.
    pytest.importorskip("recbole")
    import torch
    from recbole.data.interaction import Interaction

    model = MODELS.get("multivae")()
    model.fit(split, cfg.build(model.Config, {**cfg.model_yaml("multivae", "smoke"), "epochs": 1, "device": "cpu"},
                               "multivae"), tmp_path / "work")
    users = np.unique(split.valid["user"].to_numpy())
    ours = model.score(users, split.history("valid")[users])
    with torch.no_grad():
        theirs = model.model.full_sort_predict(Interaction({"user_id": torch.as_tensor(model.rb_user[users])}))
    np.testing.assert_allclose(ours, theirs.view(len(users), -1).numpy()[:, model.rb_item], rtol=1e-6, atol=1e-6)


def test_the_adapters_auto_encoders_are_recboles():
    # The adapter folds in history for every RecBole auto-encoder and names them for the cache key.
    pytest.importorskip("recbole")
    import recbole.model.general_recommender as general
    from recbole.model.abstract_recommender import AutoEncoderMixin

    from baselines.recbole_adapter import AUTO_ENCODERS

    found = {name for name, c in vars(general).items()
             if isinstance(c, type) and issubclass(c, AutoEncoderMixin) and c is not AutoEncoderMixin}
    assert found == AUTO_ENCODERS


def test_results_of_multivae_before_the_fold_in_are_recomputed(tmp_path, monkeypatch):
    # Its scores changed under the same settings: the result cache key must change with them,
    # and only for the models whose results changed.
    from baselines.recbole_adapter import LightGCN, MultiVAE
    from bench.paths import Workspace
    from bench.runner import plan

    preset = cfg.Preset(name="t", datasets=("synthetic-tiny",), models=("multivae", "lightgcn"))
    before = {j.model: j.config_hash(preset) for j in plan(preset, Workspace(tmp_path))}
    assert MultiVAE.result_version == 1 and LightGCN.result_version == 0
    monkeypatch.setattr(MultiVAE, "result_version", 0)
    monkeypatch.setattr(LightGCN, "result_version", 0)
    after = {j.model: j.config_hash(preset) for j in plan(preset, Workspace(tmp_path))}
    assert before["multivae"] != after["multivae"] and before["lightgcn"] == after["lightgcn"]
