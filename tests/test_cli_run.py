"""The headline command behaves: empty selections, missing data, offline hub backbones, progress."""

from __future__ import annotations

import time

import pytest

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
