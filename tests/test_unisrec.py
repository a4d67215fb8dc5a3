"""`unisrec`: it trains, it learns (beats popularity on the planted synthetic structure), it
falls back to ID embeddings without item text, and it encodes item texts only once per workdir.

The real sentence encoder runs once in this file (the `trained` fixture); later fits in the
same workdir read its cached embeddings.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import scipy.sparse as sp

torch = pytest.importorskip("torch")

from baselines import unisrec  # noqa: E402
from baselines.popularity import PopModel  # noqa: E402
from baselines.unisrec import NO_TEXT_WARNING, UniSRec, UniSRecConfig  # noqa: E402
from bench.data.datasets import ensure_split  # noqa: E402
from bench.data.splits import SplitSpec  # noqa: E402
from bench.paths import Workspace  # noqa: E402
from bench.runner import evaluate_split  # noqa: E402

# Small dims so the file runs in well under a minute on 2 CPU cores.
SMALL = dict(hidden_size=64, inner_size=128, n_experts=4, batch_size=128, epochs=6, patience=3, device="cpu")


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see tests/conftest.py


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return ensure_split("synthetic", Workspace(tmp_path_factory.mktemp("ws")), SplitSpec())


@pytest.fixture(scope="module")
def beauty(tmp_path_factory):
    return ensure_split("beauty-2018-sample", Workspace(tmp_path_factory.mktemp("ws")), SplitSpec())


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("work")


@pytest.fixture(scope="module")
def trained(synthetic, workdir):
    model = UniSRec()
    model.fit(synthetic, UniSRecConfig(**SMALL), workdir)  # the one real encoder call of this file
    return model


def _no_encoder(*args, **kwargs):
    raise AssertionError("the sentence encoder was called")


def test_learns_beats_popularity(trained, synthetic):
    pop = PopModel()
    pop.fit(synthetic, PopModel.Config(), None)
    pop_recall = evaluate_split(pop, synthetic, "test", 100, (20,))[0].metrics["recall@20"]
    recall = evaluate_split(trained, synthetic, "test", 100, (20,))[0].metrics["recall@20"]
    assert recall > 1.2 * pop_recall, (recall, pop_recall)

    info = trained.extra_result()
    assert info["text"] is True and info["text_cache_hit"] is False and "warning" not in info
    assert 1 <= info["best_epoch"] <= info["epochs"] <= SMALL["epochs"]
    assert info["n_parameters"] == info["n_trainable_parameters"] > info["n_adaptor_parameters"] > 0
    assert info["n_id_embedding_parameters"] == synthetic.n_items * SMALL["hidden_size"]
    assert info["final_loss"] < info["losses"][0]


@pytest.mark.parametrize("dataset", ["synthetic", "beauty"])
def test_training_step_changes_every_parameter_and_loss_falls(dataset, request, trained, workdir, monkeypatch):
    split = request.getfixturevalue(dataset)
    # `trained` has filled the cache in `workdir`: synthetic's texts are read, never encoded.
    monkeypatch.setattr(unisrec, "encode_texts", _no_encoder)
    model = UniSRec()
    # max_len 4: the batch of longest prefixes then fills every position slot (beauty: at most 5).
    model._setup(split, UniSRecConfig(**{**SMALL, "max_len": 4}), workdir)
    rows = np.argsort(-model.prefixes.lengths, kind="stable")[:64]
    seq, target = model.prefixes.batch(rows)
    assert (seq >= 0).any(axis=0).all()
    before = {name: p.detach().clone() for name, p in model.net.named_parameters()}
    first = model._step(seq, target)
    unchanged = [name for name, p in model.net.named_parameters() if torch.equal(before[name], p.detach())]
    assert not unchanged
    assert (model.net.adaptor is None) == (dataset == "beauty")
    for _ in range(15):
        last = model._step(seq, target)
    assert last < first


def test_no_text_falls_back_to_id_embeddings(beauty, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(unisrec, "encode_texts", _no_encoder)
    model = UniSRec()
    with caplog.at_level(logging.WARNING, logger="baselines.unisrec"):
        model.fit(beauty, UniSRecConfig(**{**SMALL, "epochs": 1}), tmp_path)
    info = model.extra_result()
    assert info["warning"] == NO_TEXT_WARNING
    assert info["text"] is False and info["n_items_without_text"] == beauty.n_items
    assert any(NO_TEXT_WARNING in r.getMessage() for r in caplog.records)
    users = np.arange(5)
    scores = model.score(users, beauty.history("test")[users])
    assert scores.shape == (5, beauty.n_items) and scores.dtype == np.float32 and np.isfinite(scores).all()
    assert not list(tmp_path.glob("unisrec_text_*.npy"))


def test_text_embeddings_are_cached_per_encoder(synthetic, trained, workdir, monkeypatch):
    assert len(list(workdir.glob("unisrec_text_*.npy"))) == 1
    monkeypatch.setattr(unisrec, "encode_texts", _no_encoder)
    again = UniSRec()
    again.fit(synthetic, UniSRecConfig(**{**SMALL, "epochs": 1}), workdir)
    assert again.extra_result()["text_cache_hit"] is True

    calls = []

    def fake_encoder(texts, encoder=None):
        calls.append(encoder)
        return np.random.default_rng(0).normal(size=(len(texts), 16)).astype(np.float32)

    monkeypatch.setattr(unisrec, "encode_texts", fake_encoder)
    other = UniSRecConfig(**{**SMALL, "epochs": 1, "encoder": "/models/another-encoder"})
    UniSRec().fit(synthetic, other, workdir)  # another encoder: another key
    UniSRec().fit(synthetic, other, workdir)  # ... encoded once
    assert calls == ["/models/another-encoder"]
    assert len(list(workdir.glob("unisrec_text_*.npy"))) == 2


def test_scores_deterministic_and_finite_without_history(synthetic, trained, workdir, monkeypatch):
    monkeypatch.setattr(unisrec, "encode_texts", _no_encoder)
    config = UniSRecConfig(**{**SMALL, "epochs": 1, "seed": 3})
    a, b = UniSRec(), UniSRec()
    a.fit(synthetic, config, workdir)
    b.fit(synthetic, config, workdir)
    users = np.arange(40)
    history = synthetic.history("test")[users]
    np.testing.assert_array_equal(a.score(users, history), b.score(users, history))
    # Users with no history (cold users) still get finite scores: no all-masked attention row.
    empty = sp.csr_matrix((3, synthetic.n_items), dtype=np.float32)
    scores = a.score(np.arange(3), empty)
    assert np.isfinite(scores).all()
    # Scoring in one batch or in pieces gives the same numbers.
    np.testing.assert_allclose(a.score(users, history)[:7], a.score(users[:7], history[:7]), rtol=1e-5, atol=1e-5)
