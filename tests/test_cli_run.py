"""The headline command behaves: empty selections, missing data, offline hub backbones, progress."""

from __future__ import annotations

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
