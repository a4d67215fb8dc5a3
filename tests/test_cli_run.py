"""The headline command behaves: empty selections, missing data, offline hub backbones, progress."""

from __future__ import annotations

import io
import time

import pytest

from bench import progress
from bench.cli import main
from bench.errors import BenchError


def _run(tmp_path, *argv):
    return main(["--root", str(tmp_path), "run", "--no-progress", *argv])


# --------------------------------------------------------------------------- empty selections

@pytest.mark.parametrize("argv, message", [
    (["--models", ""], "--models names no model"),
    (["--models", " , "], "--models names no model"),
    (["--models", "pop", "--datasets", ""], "--datasets names no dataset"),
    (["--models", "pop", "--datasets", "synthetic-tiny", "--seeds", ""], "--seeds names no seed"),
    (["--models", "pop", "--datasets", "synthetic-tiny", "--seeds", "-1"], "seed -1 is negative"),
    (["--models", "pop", "--datasets", "synthetic-tiny", "--seeds", "0,-2"], "seed -2 is negative"),
])
def test_empty_or_negative_selection_is_one_clear_error(tmp_path, capsys, argv, message):
    assert _run(tmp_path, *argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "results" / "runs").exists()  # nothing planned, nothing run


def test_plan_rejects_empty_selections_from_the_api_too(tmp_path):
    from bench import config as cfg
    from bench.paths import Workspace
    from bench.runner import plan

    preset, ws = cfg.load_preset("smoke"), Workspace(tmp_path)
    with pytest.raises(BenchError, match="--models names no model"):
        plan(preset, ws, models=[], datasets="synthetic-tiny")
    with pytest.raises(BenchError, match="--seeds names no seed"):
        plan(preset, ws, models="pop", datasets="synthetic-tiny", seeds=())
    assert [j.seed for j in plan(preset, ws, models="pop", datasets="synthetic-tiny", seeds=(1, 1, 0))] == [1, 0]


# --------------------------------------------------------------------------- missing data

def test_missing_data_is_one_summary_then_the_rest_runs(tmp_path, capsys):
    code = _run(tmp_path, "--models", "pop,random", "--datasets", "am-luxury,synthetic-tiny,am-toys",
                "--preset", "smoke")
    out, err = capsys.readouterr()
    assert code == 1  # not everything asked for ran
    assert err.count("missing data:") == 1 and "FAILED" not in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert "bench data download --datasets am-luxury,am-toys" in err and "--download" in err
    assert "2 ran, 0 skipped, 0 failed, 4 not run" in out
    assert not (tmp_path / "results" / "failures").exists()
    assert {p.parts[-4] for p in (tmp_path / "results" / "runs").rglob("seed0.json")} == {"synthetic-tiny"}


# --------------------------------------------------------------------------- offline hub backbones

@pytest.fixture
def hub_down(monkeypatch):
    """The hub does not answer (deterministic: no network is asked)."""
    from pagellm import backbones

    probes = []

    def probe(url, timeout):
        probes.append(url)
        return "no answer within 2 s"

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(backbones, "_probe", probe)
    monkeypatch.setattr(backbones, "_hub_answers", {})
    return probes


@pytest.mark.parametrize("name", ["gpt2", "llama-3.2-1b"])
def test_hub_backbone_offline_fails_at_once_with_the_fix(hub_down, name):
    from pagellm.backbones import check_available

    t0 = time.perf_counter()
    with pytest.raises(BenchError) as info:
        check_available(name)
    message = str(info.value)
    assert time.perf_counter() - t0 < 2
    assert "\n" not in message and "cannot be reached" in message
    for fix in ("--set pagellm.backbone=tiny", "--set pagellm.backbone=smollm2-135m", "pagellm.backbone_path="):
        assert fix in message
    with pytest.raises(BenchError):
        check_available(name)  # again: the probe's answer is reused
    assert len(hub_down) == 1


def test_hf_hub_offline_is_respected_without_a_probe(hub_down, monkeypatch, tmp_path):
    from pagellm.backbones import check_available

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BenchError, match="HF_HUB_OFFLINE is set"):
        check_available("gpt2")
    assert hub_down == []
    check_available("gpt2", str(tmp_path))  # a local copy needs no hub
    check_available("tiny")  # nor do the offline backbones
    with pytest.raises(BenchError, match="pagellm.backbone_path = '/no/such/model': no such directory"):
        check_available("gpt2", "/no/such/model")


def test_loading_a_hub_backbone_offline_is_fast(hub_down, monkeypatch):
    """The loader itself (not only the pre-check) asks the cache only: no minute of retries."""
    from pagellm.backbones import load_backbone

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(BenchError, match="--set pagellm.backbone=tiny"):
        load_backbone("gpt2", 2, 3, "cpu", source="no-such-org/no-such-model")
    assert time.perf_counter() - t0 < 30  # transformers' import included; the retries took about 50 s


def test_run_reports_an_offline_backbone_once_and_runs_the_rest(hub_down, tmp_path, capsys):
    code = _run(tmp_path, "--models", "pagellm,pop", "--datasets", "synthetic-tiny", "--preset", "smoke",
                "--set", "pagellm.backbone=gpt2")
    out, err = capsys.readouterr()
    assert code == 1
    assert err.count("--set pagellm.backbone=tiny") == 1 and "Traceback" not in err and "FAILED" not in err
    assert "not run (2 job(s) of pagellm)" in err  # the smoke preset's random and cold-start splits
    assert "1 ran, 0 skipped, 0 failed, 2 not run" in out
    assert len(hub_down) == 1


# --------------------------------------------------------------------------- progress

def test_bars_only_on_a_terminal_or_when_asked(monkeypatch):
    monkeypatch.delenv("BENCH_PROGRESS", raising=False)
    progress.set_enabled(None)
    assert not progress.enabled()  # pytest's captured stderr is no terminal
    monkeypatch.setenv("BENCH_PROGRESS", "1")
    assert progress.enabled()
    progress.set_enabled(False)  # --no-progress wins
    try:
        assert not progress.enabled()
    finally:
        progress.set_enabled(None)


def test_note_goes_to_the_innermost_open_bar(monkeypatch):
    monkeypatch.setenv("BENCH_PROGRESS", "1")
    out = io.StringIO()
    outer = progress.bar(total=2, desc="stages", file=out)
    for _ in progress.bar(range(2), desc="epochs", file=out):
        progress.note(loss=0.5)
        progress.note(**{"ndcg@20": 0.25})
    text = out.getvalue()
    assert "loss=0.5" in text and "ndcg@20=0.25" in text  # both values, merged
    progress.note(stage="ppo")  # the epoch bar is closed: the outer one shows it
    assert "stage=ppo" in str(outer)
    outer.close()
    progress.note(ignored=1)  # no open bar: nothing happens


def test_epochs_show_the_validation_metric(monkeypatch, capsys):
    import bench.scoring
    from bench.training import fit_with_early_stopping

    monkeypatch.setenv("BENCH_PROGRESS", "1")
    values = iter([0.1, 0.3, 0.2, 0.2])
    monkeypatch.setattr(bench.scoring, "validate", lambda model, split, metric: next(values))
    restored = []
    _, valid, stopper = fit_with_early_stopping(None, None, epochs=10, patience=2, metric="ndcg@20",
                                                train_epoch=lambda: 1.5, snapshot=lambda: "state",
                                                restore=restored.append, desc="toy")
    assert valid == [0.1, 0.3, 0.2, 0.2] and stopper.best_epoch == 1 and restored == ["state"]
    err = capsys.readouterr().err
    assert "toy" in err and "ndcg@20=0.3" in err and "loss=1.5" in err


def test_pagellm_epochs_note_their_losses(monkeypatch):
    from pagellm.sft import EpochLog

    monkeypatch.setenv("BENCH_PROGRESS", "1")
    out = io.StringIO()
    b = progress.bar(total=3, desc="pagellm fine-tuning", file=out)
    EpochLog().add(1.0, list_nll=2.25)
    assert "list_nll=2.25" in str(b)
    b.close()


class _Echo:
    name, batch_size = "echo", 2

    def __init__(self):
        self.asked = []

    def generate(self, prompts, *, max_new_tokens, temperature=0.0, seed=0):
        self.asked += list(prompts)
        return [p.upper() for p in prompts]

    def stats(self):
        return {}


def test_llm_calls_count_only_uncached_answers(tmp_path, monkeypatch, capsys):
    from bench.llm import CachedLLM, generate_with_progress

    monkeypatch.setenv("BENCH_PROGRESS", "1")
    bars = []
    make_bar = progress.bar
    monkeypatch.setattr(progress, "bar", lambda *a, **k: bars.append(make_bar(*a, **k)) or bars[-1])
    backend = _Echo()
    llm = CachedLLM(backend, tmp_path / "cache.sqlite", chunk_size=2)
    llm.generate(["a"], max_new_tokens=4)
    prompts = ["a", "b", "c", "b", "d", "e"]
    assert llm.n_missing(prompts, max_new_tokens=4) == 4
    capsys.readouterr()
    answers = generate_with_progress(llm, prompts, desc="recmind llm", max_new_tokens=4, chunk_size=2)
    assert answers == [p.upper() for p in prompts]
    assert backend.asked == ["a", "b", "c", "d", "e"]  # each prompt generated once
    assert "recmind llm" in capsys.readouterr().err
    assert (bars[0].n, bars[0].total, bars[0].unit) == (4, 4, "answer")  # the cached answer is not work
    assert generate_with_progress(backend, ["x"], desc="judge", max_new_tokens=4) == ["X"]  # no cache: fine too


# --------------------------------------------------------------------------- the grid's ETA

def test_grid_eta_weighs_the_remaining_jobs_by_their_cost_hints():
    from bench.progress import GridProgress, WeightedETA

    now = [0.0]
    eta = WeightedETA({"pop": 0.1, "cached": 5, "recmind": 240, "ease": 2}, clock=lambda: now[0])
    assert eta.eta() is None  # nothing ran yet
    now[0] = 1.0
    eta.finished("cached", counted=False)  # served from the result cache: no pace from it
    now[0] = 3.0
    eta.finished("pop")  # 2 s for 0.1 minutes of hint: 20 s per hint-minute
    # A mean of finished jobs would say 2 s per job, 4 s in all; the hints say 242 * 20 s.
    assert eta.eta() == pytest.approx(242 * 20)
    now[0] = 13.0
    assert eta.eta() == pytest.approx(242 * 20 - 10)  # counts down while a job runs
    eta.finished("recmind")
    eta.finished("ease")
    assert eta.eta() == 0.0
    grid = GridProgress({1: 1.0}, total=1, show=False)
    grid.started("smoke/x/random/pop/seed0")
    assert grid.text().startswith("ETA ? (by cost hints)") and "pop/seed0" in grid.text()


def test_cost_hints_are_the_measured_seconds(tmp_path):
    from bench import config as cfg
    from bench.costs import cost_hints
    from bench.paths import Workspace
    from bench.runner import cost_hint, plan

    jobs = plan(cfg.load_preset("smoke"), Workspace(tmp_path), models="pop,recmind,recbole:NARM",
                datasets="synthetic-tiny")
    measured = {"pop": 0.5, "recmind": 30.0, "sasrec": 100.0}
    hints = {j.model: cost_hint(j, measured) for j in jobs}
    assert hints == {"pop": 0.5, "recmind": 30.0, "recbole:NARM": 30.0}  # never measured: the median
    shipped = cost_hints()  # bench/configs/costs.yaml, as `bench run` reads it
    assert shipped["pagellm"] > shipped["pagellm-sft"] > shipped["pop"] > 0


# --------------------------------------------------------------------------- the default run

def test_no_arguments_run_the_cpu_preset_with_the_presets_jobs(tmp_path, monkeypatch, capsys):
    """`bench run` alone plans the cpu preset (every model on the embedded real category and
    synthetic) and runs its `jobs: 2` at once, capped at the CPU count; --jobs still wins."""
    import os

    import bench.runner

    seen = []

    def fake_grid(jobs, preset, ws, **kwargs):
        seen.append((preset.name, kwargs["n_jobs"], sorted({j.dataset for j in jobs}), len(jobs)))
        return []

    monkeypatch.setattr(bench.runner, "run_grid", fake_grid)
    monkeypatch.setattr("bench.cli._judge", lambda *a, **k: 0)
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert _run(tmp_path, "--no-table") == 0
    assert _run(tmp_path, "--no-table", "--jobs", "1") == 0
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    assert _run(tmp_path, "--no-table") == 0
    models = len(__import__("bench.models", fromlist=["MODELS"]).MODELS.names())
    assert seen == [("cpu", 2, ["am-instruments-2014", "synthetic"], 2 * models),
                    ("cpu", 1, ["am-instruments-2014", "synthetic"], 2 * models),
                    ("cpu", 1, ["am-instruments-2014", "synthetic"], 2 * models)]
