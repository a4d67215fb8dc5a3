"""`unisrec-scratch` (one stage on the target): it trains, it learns (beats popularity on the
planted synthetic structure), it falls back to ID embeddings without item text, and it encodes
item texts only once per workdir. `unisrec` (pre-trained on other datasets, then fine-tuned): the
pre-training stage runs on the other datasets' train splits only, never on the target, is
cached and shared, and is where fine-tuning starts from.

The real sentence encoder runs for synthetic in the `trained` fixture and for gift-cards-2018
in the `pretrained` fixture; later fits in the same workdir read the cached embeddings.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import scipy.sparse as sp

torch = pytest.importorskip("torch")

from baselines import unisrec  # noqa: E402
from baselines.popularity import PopModel  # noqa: E402
from baselines.unisrec import (  # noqa: E402
    NO_SOURCE_WARNING,
    NO_TEXT_WARNING,
    UniSRec,
    UniSRecConfig,
    UniSRecScratch,
)
from bench.data.datasets import ensure_split  # noqa: E402
from bench.data.splits import SplitSpec  # noqa: E402
from bench.paths import Workspace  # noqa: E402
from bench.runner import evaluate_split  # noqa: E402

# Small dims so the file runs in well under a minute on 2 CPU cores.
SMALL = dict(hidden_size=64, inner_size=128, n_experts=4, batch_size=128, epochs=6, patience=3, device="cpu")


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see tests/conftest.py


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return Workspace(tmp_path_factory.mktemp("ws"))


@pytest.fixture(scope="module")
def synthetic(ws):
    return ensure_split("synthetic", ws, SplitSpec())


@pytest.fixture(scope="module")
def beauty(ws):
    return ensure_split("beauty-2018-sample", ws, SplitSpec())


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("work")


@pytest.fixture(scope="module")
def trained(synthetic, workdir):
    model = UniSRecScratch()
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
    model = UniSRecScratch()
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
    model = UniSRecScratch()
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
    again = UniSRecScratch()
    again.fit(synthetic, UniSRecConfig(**{**SMALL, "epochs": 1}), workdir)
    assert again.extra_result()["text_cache_hit"] is True

    calls = []

    def fake_encoder(texts, encoder=None):
        calls.append(encoder)
        return np.random.default_rng(0).normal(size=(len(texts), 16)).astype(np.float32)

    monkeypatch.setattr(unisrec, "encode_texts", fake_encoder)
    other = UniSRecConfig(**{**SMALL, "epochs": 1, "encoder": "/models/another-encoder"})
    UniSRecScratch().fit(synthetic, other, workdir)  # another encoder: another key
    UniSRecScratch().fit(synthetic, other, workdir)  # ... encoded once
    assert calls == ["/models/another-encoder"]
    assert len(list(workdir.glob("unisrec_text_*.npy"))) == 2


def test_scores_deterministic_and_finite_without_history(synthetic, trained, workdir, monkeypatch):
    monkeypatch.setattr(unisrec, "encode_texts", _no_encoder)
    config = UniSRecConfig(**{**SMALL, "epochs": 1, "seed": 3})
    a, b = UniSRecScratch(), UniSRecScratch()
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


# --- `unisrec`: pre-training on other datasets, then fine-tuning -------------------------------

PRE = dict(SMALL, epochs=2, pretrain_epochs=2, pretrain_batch_size=128)


@pytest.fixture(scope="module")
def gift(ws):
    return ensure_split("gift-cards-2018", ws, SplitSpec())


@pytest.fixture(scope="module")
def pretrained(synthetic, gift, trained, workdir):
    """`unisrec` on synthetic, told to pre-train on synthetic itself and gift-cards-2018.
    (`trained` first: it is the fit that encodes synthetic's texts into `workdir`.)"""
    model = UniSRec()
    model.fit(synthetic, UniSRecConfig(**PRE, pretrain_datasets=("synthetic", "gift-cards-2018")), workdir)
    return model


class _TrainOnly:
    """A split whose valid, test and negatives cannot be read."""

    def __init__(self, split) -> None:
        self._split = split

    def __getattr__(self, name):
        if name in ("valid", "test", "negatives"):
            raise AssertionError(f"pre-training read the {name} split of {self._split.dataset}")
        return getattr(self._split, name)


def test_pretraining_uses_the_other_datasets_train_splits_only(pretrained, gift, tmp_path):
    info = pretrained.extra_result()
    pre = info["pretraining"]
    assert info["pretrained"] is True and pre["cached"] is False and pre["epochs"] == PRE["pretrain_epochs"]
    # The target was named but left out: one source, gift-cards-2018, and nothing of synthetic.
    assert pre["datasets"] == ["gift-cards-2018"] and pre["target_left_out"] is True
    assert list(pre["sources"]) == ["gift-cards-2018"] and pre["n_items"] == gift.n_items
    assert pre["sources"]["gift-cards-2018"]["n_train_rows"] == len(gift.train)
    assert pre["n_prefixes"] == len(unisrec._Prefixes(gift.train, SMALL.get("max_len", 50)))
    assert len(pre["losses"]) == 2 and all(np.isfinite(pre["losses"]))
    assert UniSRec.job_config(UniSRecConfig(), "synthetic", ("synthetic", "gift-cards-2018")).pretrain_datasets == \
        ("gift-cards-2018",)
    # The stage itself never touches a source's valid or test interactions.
    stats = unisrec.pretrain(tmp_path, [_TrainOnly(gift)], UniSRecConfig(**{**PRE, "pretrain_epochs": 1}),
                             torch.device("cpu"), tmp_path / "text", seed=0)
    assert stats["n_prefixes"] == pre["n_prefixes"] and (tmp_path / "pretrained.pt").exists()


def test_pretraining_is_cached_and_shared(pretrained, synthetic, workdir, monkeypatch):
    stage = pretrained.extra_result()["pretraining"]["stage"]
    monkeypatch.setattr(unisrec, "encode_texts", _no_encoder)  # every text, word-dropped ones too, is cached
    monkeypatch.setattr(unisrec, "pretrain", lambda *a, **k: pytest.fail("pre-trained again"))
    # A second job with other fine-tuning settings (and the target not named) reuses the stage.
    again = UniSRec()
    again.fit(synthetic, UniSRecConfig(**{**PRE, "epochs": 1, "lr": 5e-4, "pretrain_datasets": ("gift-cards-2018",)}),
              workdir)
    pre = again.extra_result()["pretraining"]
    assert pre["cached"] is True and pre["stage"] == stage and pre["losses"] == \
        pretrained.extra_result()["pretraining"]["losses"]
    assert len(list((workdir / "unisrec-pretrain").glob("pretrain-*"))) == 1
    # The runner's layout shares one folder across presets, targets and variants.
    job_dir = workdir / "root" / "work" / "cpu" / "synthetic" / "random-s0" / "unisrec" / "seed0"
    assert unisrec.pretrain_root(job_dir) == workdir / "root" / "work" / "unisrec-pretrain"


def test_pretraining_is_where_fine_tuning_starts(pretrained, synthetic, workdir, monkeypatch):
    from pathlib import Path

    monkeypatch.setattr(unisrec, "encode_texts", _no_encoder)
    state = torch.load(Path(pretrained.extra_result()["pretraining"]["stage"]) / "pretrained.pt", weights_only=True)
    assert not any(k.startswith("item_embedding") for k in state)  # pre-training has no item IDs
    config = UniSRecConfig(**PRE)
    fine, scratch = UniSRec(), UniSRecScratch()
    fine._setup(synthetic, config, workdir, state)
    scratch._setup(synthetic, config, workdir)
    for name, p in fine.net.named_parameters():
        if name in state:
            assert torch.equal(p.detach(), state[name]), name
    for name in ("adaptor.weight", "blocks.0.qkv.weight", "position.weight"):
        assert not torch.equal(dict(fine.net.named_parameters())[name], dict(scratch.net.named_parameters())[name])
    # Fine-tuning trains the adaptor and the ID embeddings; the transformer stays (freeze_encoder).
    rows = np.argsort(-fine.prefixes.lengths, kind="stable")[:64]
    before = {name: p.detach().clone() for name, p in fine.net.named_parameters()}
    fine._step(*fine.prefixes.batch(rows))
    changed = {name for name, p in fine.net.named_parameters() if not torch.equal(before[name], p.detach())}
    frozen = {name for name in before if name.startswith(("blocks.", "position."))}
    assert frozen and not changed & frozen
    assert {"adaptor.weight", "adaptor.bias", "item_embedding.weight", "ln.weight"} <= changed
    info = pretrained.extra_result()
    assert info["frozen_encoder"] is True
    assert info["n_trainable_parameters"] == info["n_parameters"] - sum(state[n].numel() for n in frozen)
    unfrozen = UniSRec()
    unfrozen._setup(synthetic, UniSRecConfig(**{**PRE, "freeze_encoder": False}), workdir, state)
    assert all(p.requires_grad for p in unfrozen.net.parameters())


def test_scratch_variant_never_pretrains(synthetic, trained, workdir, monkeypatch):
    monkeypatch.setattr(unisrec, "encode_texts", _no_encoder)
    monkeypatch.setattr(unisrec, "load_sources", lambda *a, **k: pytest.fail("unisrec-scratch loaded sources"))
    config = UniSRecConfig(**{**SMALL, "epochs": 1})
    assert UniSRecScratch.job_config(config, "synthetic", ("synthetic", "gift-cards-2018")) == config
    named = UniSRecConfig(**{**SMALL, "epochs": 1, "pretrain_datasets": ("gift-cards-2018",)})
    a, b = UniSRecScratch(), UniSRecScratch()
    a.fit(synthetic, config, workdir)
    b.fit(synthetic, named, workdir)
    users = np.arange(30)
    np.testing.assert_array_equal(a.score(users, synthetic.history("test")[users]),
                                  b.score(users, synthetic.history("test")[users]))
    info = b.extra_result()
    assert info["pretrained"] is False and info["pretraining"] is None and info["frozen_encoder"] is False
    assert info["n_trainable_parameters"] == info["n_parameters"]


def test_without_usable_sources_unisrec_says_it_was_not_pretrained(synthetic, beauty, workdir, monkeypatch, caplog):
    monkeypatch.setattr(unisrec, "encode_texts", _no_encoder)
    model = UniSRec()
    with caplog.at_level(logging.WARNING, logger="baselines.unisrec"):
        model.fit(synthetic, UniSRecConfig(**{**PRE, "epochs": 1, "pretrain_datasets": ("beauty-2018-sample",)}),
                  workdir)
    info = model.extra_result()
    assert info["pretrained"] is False and info["warning"] == NO_SOURCE_WARNING
    assert info["pretraining"]["without_text"] == ["beauty-2018-sample"] and info["pretraining"]["datasets"] == []
    assert NO_SOURCE_WARNING in caplog.text
    # A text-less target has no adaptor to pre-train: nothing is loaded.
    monkeypatch.setattr(unisrec, "load_sources", lambda *a, **k: pytest.fail("loaded sources"))
    textless = UniSRec()
    textless.fit(beauty, UniSRecConfig(**{**PRE, "epochs": 1, "pretrain_datasets": ("gift-cards-2018",)}), workdir)
    assert textless.extra_result()["pretrained"] is False and "skipped" in textless.extra_result()["pretraining"]


def test_runner_pretrains_on_the_presets_other_datasets(ws):
    from bench.config import load_preset
    from bench.runner import plan

    smoke = load_preset("smoke")  # datasets: synthetic, gift-cards-2018
    jobs = {(j.dataset, j.model): j.config for j in plan(smoke, ws, models="unisrec,unisrec-scratch",
                                                         datasets="synthetic,synthetic-tiny")}
    assert jobs["synthetic", "unisrec"].pretrain_datasets == ("gift-cards-2018",)
    # --datasets narrows the run, not the sources: a job's result does not depend on its neighbours.
    assert jobs["synthetic-tiny", "unisrec"].pretrain_datasets == ("synthetic", "gift-cards-2018")
    assert jobs["synthetic", "unisrec-scratch"].pretrain_datasets == ()
    named = plan(smoke, ws, models="unisrec", datasets="synthetic",
                 overrides={"unisrec": {"pretrain_datasets": ["synthetic-medium", "synthetic"]}})
    assert named[0].config.pretrain_datasets == ("synthetic-medium",)
