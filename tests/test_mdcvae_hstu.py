"""md-cvae and hstu: every parameter trains, the loss falls, they learn the synthetic data's
planted structure (beating popularity), scores have the contract's shape, and the smoke
configs run on data without metadata."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")

from baselines.hstu import HSTU, _trim  # noqa: E402
from baselines.mdcvae import MDCVAE, item_features  # noqa: E402
from baselines.popularity import PopModel  # noqa: E402
from bench import config as cfg  # noqa: E402
from bench.data.datasets import ensure_split  # noqa: E402
from bench.data.splits import SplitSpec  # noqa: E402
from bench.runner import evaluate_split  # noqa: E402

# Settings that learn in seconds on a 2-core CPU: smaller than the papers', larger steps.
MDCVAE_FAST = dict(hidden_dims=(200,), latent_dim=64, content_hidden_dims=(64,), batch_size=64, lr=3e-3,
                   epochs=15, patience=15, content_pretrain_epochs=5, anneal_epochs=10)
HSTU_FAST = dict(dim=32, head_dim=16, negatives=64, batch_size=32, lr=3e-3, epochs=15, patience=15)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see tests/conftest.py


@pytest.fixture(scope="module")
def synthetic(workspace):
    return ensure_split("synthetic", workspace, SplitSpec())  # generated, planted structure


@pytest.fixture(scope="module")
def beauty(workspace):
    return ensure_split("beauty-2018-sample", workspace, SplitSpec())  # real data, no metadata


@pytest.fixture(scope="module")
def pop_recall(synthetic) -> float:
    model = PopModel()
    model.fit(synthetic, PopModel.Config(), None)
    return evaluate_split(model, synthetic, "test", 100, (20,))[0].metrics["recall@20"]


@pytest.fixture(scope="module")
def trained(synthetic, tmp_path_factory):
    """name -> (model fitted on synthetic with the fast settings, test recall@20)."""
    out = {}
    for name, cls, settings in (("md-cvae", MDCVAE, MDCVAE_FAST), ("hstu", HSTU, HSTU_FAST)):
        model = cls()
        model.fit(synthetic, cls.Config(**settings), tmp_path_factory.mktemp(name))
        out[name] = (model, evaluate_split(model, synthetic, "test", 100, (20,))[0].metrics["recall@20"])
    return out


def _snapshot(*nets) -> dict:
    return {f"{i}.{n}": p.detach().clone() for i, net in enumerate(nets) for n, p in net.named_parameters()}


def _unchanged(before: dict, *nets) -> list[str]:
    after = _snapshot(*nets)
    return [n for n, p in before.items() if torch.equal(p, after[n])]


# --- one training step changes every parameter; the loss falls -----------------------------

def test_mdcvae_steps_change_every_parameter_and_loss_falls(synthetic):
    model = MDCVAE()
    model._setup(synthetic, MDCVAE.Config(hidden_dims=(32,), latent_dim=8, content_hidden_dims=(16,)))
    assert model.content_vae is not None
    before = _snapshot(model.user_vae, model.content_vae)
    model._user_step(np.arange(64), model._content_targets())  # b-step: user VAE
    model._content_step(np.arange(64))  # t-step: content VAE (every synthetic item has features)
    assert _unchanged(before, model.user_vae, model.content_vae) == []
    losses = [model._user_epoch() for _ in range(5)]
    assert losses[-1] < losses[0]


def test_hstu_step_changes_every_parameter_and_loss_falls(synthetic):
    model = HSTU()
    model._setup(synthetic, HSTU.Config(dim=16, head_dim=8, negatives=32))
    before = _snapshot(model.net)
    model._train_step(*_trim(model.train_seqs[:64], model.train_times[:64]))
    assert _unchanged(before, model.net) == []
    losses = [model._train_epoch() for _ in range(5)]
    assert losses[-1] < losses[0]


# --- they learn ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["md-cvae", "hstu"])
def test_beats_popularity_on_synthetic(trained, pop_recall, name):
    model, recall = trained[name]
    assert recall > 1.2 * pop_recall, f"{name} recall@20 {recall:.3f} vs pop {pop_recall:.3f}"
    info = model.extra_result()
    assert info["epochs_run"] >= info["best_epoch"] >= 1
    assert info["n_parameters"] > 0 and np.isfinite(info["final_train_loss"])


@pytest.mark.parametrize("name", ["md-cvae", "hstu"])
def test_score_shape_dtype_and_batch_independence(trained, synthetic, name):
    model, _ = trained[name]
    history = synthetic.history("test")
    users = np.array([3, 0, 17, 42, 5])
    scores = model.score(users, history[users])
    assert scores.shape == (len(users), synthetic.n_items) and scores.dtype == np.float32
    assert np.isfinite(scores).all()
    # A user's scores do not depend on who else is in the batch (HSTU trims padding per batch).
    alone = model.score(users[2:3], history[users[2:3]])
    np.testing.assert_allclose(alone[0], scores[2], rtol=1e-5, atol=1e-5)


# --- smoke configs on data without metadata ---------------------------------------------

def test_mdcvae_smoke_without_metadata(beauty, tmp_path, caplog):
    config = cfg.build(MDCVAE.Config, cfg.model_yaml("md-cvae", "smoke"), "md-cvae")
    model = MDCVAE()
    with caplog.at_level(logging.WARNING, logger="baselines.mdcvae"):
        model.fit(beauty, config, tmp_path)
    assert "content VAE disabled" in caplog.text
    info = model.extra_result()
    assert info["content_vae"] == "disabled" and info["warnings"] and info["n_content_features"] == 0
    users = np.arange(10)
    scores = model.score(users, beauty.history("test")[users])
    assert scores.shape == (10, beauty.n_items) and scores.dtype == np.float32


def test_hstu_smoke_without_metadata(beauty, tmp_path):
    config = cfg.build(HSTU.Config, cfg.model_yaml("hstu", "smoke"), "hstu")
    assert config.epochs == 2 and config.dim == 16
    model = HSTU()
    model.fit(beauty, config, tmp_path)
    users = np.arange(10)
    scores = model.score(users, beauty.history("test")[users])
    assert scores.shape == (10, beauty.n_items) and scores.dtype == np.float32
    assert model.extra_result()["epochs_run"] <= 2


# --- details ------------------------------------------------------------------------------

def test_item_features_bag_and_empty_rows():
    items = pd.DataFrame({"title": ["Red Soft Ball", "Blue Soft Ball", "", ""],
                          "brand": ["Acme", "Acme", "", ""],
                          "categories": ["Toys|Balls", "Toys|Balls", "Toys", ""],
                          "description": ""})
    matrix, vocab = item_features(items, min_word_count=2)
    assert vocab == ["brand:acme", "cat:balls", "cat:toys", "word:ball", "word:soft"]  # red/blue: 1 item only
    assert matrix.getnnz(axis=1).tolist() == [5, 5, 1, 0]
    empty, vocab = item_features(items.assign(title="", brand="", categories=""))
    assert vocab == [] and empty.shape == (4, 0)


def test_hstu_timestamps_follow_the_sequence(synthetic):
    model = HSTU()
    model._setup(synthetic, HSTU.Config(dim=8, head_dim=4, max_len=5))
    seqs, times = model.train_seqs, model.train_times
    real = seqs >= 0
    assert (times[real] > 0).all()
    # Oldest first: timestamps never decrease along a sequence (padding copies the first time).
    assert (np.diff(times, axis=1) >= 0).all()


def test_mdcvae_items_without_features(synthetic):
    import dataclasses

    blank = synthetic.items.copy()
    blank.loc[blank.index[::2], ["title", "brand", "categories"]] = ""  # half the items lose their metadata
    split = dataclasses.replace(synthetic, items=blank)
    model = MDCVAE()
    model._setup(split, MDCVAE.Config(hidden_dims=(32,), latent_dim=8, content_hidden_dims=(16,), epochs=1))
    assert len(model.featured) == synthetic.n_items // 2 and 0 not in model.featured
    assert model._content_targets().shape == (len(model.featured), 32)
    assert np.isfinite(model._content_epoch()) and np.isfinite(model._user_epoch())
