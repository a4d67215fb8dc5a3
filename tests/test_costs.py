"""Measured cost hints (bench.costs, scripts/measure_costs.py, `bench ls models`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bench.costs import COSTS_FILE, Profile, job_seconds, load_profiles, measure, write_profile
from bench.errors import ConfigError
from bench.models import MODELS

ROOT = Path(__file__).resolve().parents[1]


def _result(fit: float, predict: float, stages: dict | None = None) -> dict:
    info = {"stages": stages} if stages is not None else {}
    split = {"n_train": 1234, "n_users": 56, "n_items": 78}
    return {"timing": {"fit_seconds": fit, "predict_seconds": predict}, "model_info": info, "split": split}


def _write(results: Path, preset: str, dataset: str, model: str, result: dict) -> None:
    path = results / "runs" / preset / dataset / "random-s0" / model / "seed0.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result))


def test_a_job_costs_fit_plus_predict_with_cached_stages_counted_in_full():
    assert job_seconds(_result(3.0, 0.5)) == pytest.approx(3.5)
    # PageLLM found pre-training cached (another variant paid for it): its cost still counts it.
    stages = {"pretrain": {"cached": True, "seconds": 70.0}, "finetune": {"cached": False, "seconds": 20.0}}
    assert job_seconds(_result(20.4, 1.0, stages)) == pytest.approx(91.0)


def test_measure_reads_a_runs_result_files_and_the_script_writes_a_profile(tmp_path):
    results = tmp_path / "results"
    _write(results, "cpu", "data-a", "pop", _result(0.25, 0.25))
    _write(results, "cpu", "data-a", "sasrec", _result(100.0, 2.0))
    _write(results, "cpu", "data-b", "sasrec", _result(50.0, 1.0))
    _write(results, "other", "data-a", "pop", _result(9.0, 9.0))  # another preset: not read
    seconds, datasets = measure(results, "cpu")
    assert seconds == {"pop": {"data-a": 0.5}, "sasrec": {"data-a": 102.0, "data-b": 51.0}}
    assert datasets["data-a"] == "1,234 train interactions, 56 users, 78 items"

    out = tmp_path / "costs.yaml"
    write_profile(Profile("gpu-x", "one made-up GPU", "earlier", {"data-a": "?"}, {"pop": {"data-a": 9.0}}), out)
    subprocess.run([sys.executable, str(ROOT / "scripts" / "measure_costs.py"), "--results", str(results),
                    "--preset", "cpu", "--profile", "cpu-test", "--hardware", "this machine",
                    "--run", "the test", "--out", str(out)], check=True, cwd=ROOT, capture_output=True)
    profiles = load_profiles(out)
    assert [p.name for p in profiles] == ["gpu-x", "cpu-test"]  # the other profile is kept
    assert profiles[1].model_seconds("sasrec") == 102.0 and profiles[1].model_seconds("sasrec", "data-b") == 51.0
    assert profiles[1].model_seconds("pop", "data-b") is None


def test_measure_without_results_names_the_folder_and_the_fix(tmp_path):
    with pytest.raises(ConfigError, match=r"no results of preset 'cpu'.*bench run --preset cpu"):
        measure(tmp_path, "cpu")


def test_a_damaged_costs_file_is_one_error_naming_it(tmp_path):
    path = tmp_path / "costs.yaml"
    path.write_text(yaml.safe_dump({"profiles": {"x": {"hardware": "h"}}}))
    with pytest.raises(ConfigError, match=r"costs.yaml: profile 'x' lacks 'run'.*measure_costs.py"):
        load_profiles(path)


def test_the_shipped_profile_measured_every_registered_model():
    profile = load_profiles(COSTS_FILE)[0]
    assert "cores" in profile.hardware and "cpu preset" in profile.run
    missing = [name for name in MODELS if profile.model_seconds(name) is None]
    assert not missing, f"no measured cost for {missing}: rerun scripts/measure_costs.py"


def test_ls_models_shows_the_measured_seconds_and_the_machine(capsys):
    from bench.cli import main

    assert main(["ls", "models"]) == 0
    out = capsys.readouterr().out
    profile = load_profiles(COSTS_FILE)[0]
    assert f"s: am-instruments-2014 ({profile.name})" in out and profile.hardware in out
    row = next(line for line in out.splitlines() if line.startswith("| pagellm "))
    assert f"{profile.model_seconds('pagellm', 'am-instruments-2014'):.0f}" in row
    assert "typical minutes" not in out
