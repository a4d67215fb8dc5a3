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
    # every epoch and validation is timed (docs/performance.md); the result holds the means
    assert len(model.timings["train"]) == len(model.timings["valid"]) == 4
    assert all(wall >= 0 and cpu >= 0 for wall, cpu in model.timings["train"] + model.timings["valid"])
    assert model.info["train_seconds_per_epoch"] > 0 and model.info["valid_seconds_per_validation"] >= 0


def test_a_tie_does_not_restart_the_patience(split, tmp_path, monkeypatch, one_torch_thread):
    # RecBole stops after stopping_step + 1 validations without a (strict) improvement.
    model, _ = _fit_with_scores(split, tmp_path, monkeypatch, [0.3] * 6, stopping_step=1)
    assert model.info["epochs_run"] == 3 and model.info["best_epoch"] == 0


def test_a_job_leaves_the_process_as_it_found_it(split, tmp_path, monkeypatch, one_torch_thread):
    # RecBole sets CUDA_VISIBLE_DEVICES ("" for a CPU run) and makes cuDNN deterministic; the
    # next job of the process must not inherit either. No os.chdir (unsafe with threads), and
    # nothing written to the working directory.
    import os

    import torch

    torch.cuda.is_available()  # fix this process's devices before the variable is changed
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,1")
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", False)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)

    def no_chdir(path):
        raise AssertionError(f"os.chdir({path!r}) during a RecBole job")

    monkeypatch.setattr(os, "chdir", no_chdir)
    seen = []
    import baselines.recbole_adapter as adapter_module

    def scripted(adapter, split, metric):
        seen.append((torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark))
        return 0.5

    monkeypatch.setattr(adapter_module, "validate", scripted)
    model = MODELS.get("multivae")()
    config = cfg.build(model.Config, {**cfg.model_yaml("multivae", "smoke"), "epochs": 2, "device": "cpu"},
                       "multivae")
    model.fit(split, config, tmp_path / "work")
    assert seen == [(True, False)] * 2  # RecBole's reproducible settings while it trains
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "3,1"
    assert (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic) == (True, False)
    assert list(cwd.iterdir()) == []
    assert (tmp_path / "work" / "log_tensorboard").is_dir() and (tmp_path / "work" / "checkpoints").is_dir()
    assert model.score(np.arange(3), split.history("test")[:3]).shape == (3, split.n_items)


def test_an_unset_cuda_visible_devices_stays_unset(tmp_path, monkeypatch):
    import os

    import torch

    from bench.recbole_compat import make_config

    torch.cuda.is_available()
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    config = make_config("BPR", "toyset", str(tmp_path), {"use_gpu": False, "gpu_id": ""}, tmp_path / "work")
    assert "CUDA_VISIBLE_DEVICES" not in os.environ
    assert str(config["device"]) == "cpu" and os.path.isabs(config["checkpoint_dir"])


def test_overlapping_jobs_in_threads_restore_cudnn_when_the_last_ends(tmp_path, monkeypatch):
    import threading

    import torch

    from bench.recbole_compat import _job_tensorboard, recbole_job

    monkeypatch.setattr(torch.backends.cudnn, "deterministic", False)
    a_started, b_started, a_done = threading.Event(), threading.Event(), threading.Event()
    during = {}

    def job_a():
        with recbole_job(tmp_path / "a"):
            torch.backends.cudnn.deterministic = True  # as RecBole's init_seed does
            a_started.set()
            b_started.wait(5)
            writer = _job_tensorboard(None)
            during["a"] = writer.log_dir
            writer.close()
        a_done.set()

    def job_b():
        a_started.wait(5)
        with recbole_job(tmp_path / "b"):
            b_started.set()
            a_done.wait(5)
            writer = _job_tensorboard(None)
            during["b"] = (writer.log_dir, torch.backends.cudnn.deterministic)
            writer.close()

    threads = [threading.Thread(target=job_a), threading.Thread(target=job_b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert during["a"] == str(tmp_path / "a" / "log_tensorboard")
    assert during["b"] == (str(tmp_path / "b" / "log_tensorboard"), True)  # a ended, b still runs
    assert torch.backends.cudnn.deterministic is False


@pytest.mark.parametrize("settings", ["default", "cpu", "smoke"])
def test_bert4rec_masks_as_its_paper_did_on_amazon(settings):
    # Sun et al. 2019: mask proportion 0.6 on Amazon Beauty (RecBole's default 0.2 is ML-1m's).
    assert cfg.model_yaml("bert4rec", settings)["params"]["mask_ratio"] == 0.6


def test_multivae_latent_is_the_papers_200(split, tmp_path, monkeypatch, one_torch_thread):
    # Liang et al. 2018: 600-d hidden layer, 200-d latent z. RecBole's encoder outputs
    # latent_dimension values, half of them the mean, half the log-variance.
    import torch

    import baselines.recbole_adapter as adapter_module

    monkeypatch.setattr(adapter_module, "validate", lambda adapter, split, metric: 0.5)
    model = MODELS.get("multivae")()
    model.fit(split, cfg.build(model.Config, {**cfg.model_yaml("multivae", "default"), "epochs": 1}, "multivae"),
              tmp_path / "work")
    net = model.model
    net.eval()
    with torch.no_grad():
        _, mu, logvar = net(torch.ones(2, net.n_items))
    assert mu.shape == logvar.shape == (2, 200)
    assert net.encoder[0].out_features == 600 and net.decoder[0].in_features == 200
