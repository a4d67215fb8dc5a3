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
