"""The Dask executor runs a grid against a local scheduler on 127.0.0.1."""

from __future__ import annotations

import json

import pytest

from bench.cli import main

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def cluster():
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None, resources={"GPU": 1}) as c:
        yield c.scheduler_address


def test_smoke_grid_on_a_local_scheduler(tmp_path, cluster, capsys):
    code = main(["--root", str(tmp_path), "run", "--models", "random,pop,ease", "--datasets", "synthetic-tiny",
                 "--preset", "smoke", "--no-progress", "--executor", "dask", "--scheduler", cluster])
    assert code == 0, capsys.readouterr().err
    assert "3 ran, 0 skipped, 0 failed" in capsys.readouterr().out
    runs = tmp_path / "results" / "runs" / "smoke" / "synthetic-tiny" / "random-s0"
    local = tmp_path / "local"
    assert main(["--root", str(local), "run", "--models", "ease", "--datasets", "synthetic-tiny",
                 "--preset", "smoke", "--no-progress"]) == 0
    ours = json.loads((runs / "ease" / "seed0.json").read_text())
    reference = json.loads(next((local / "results" / "runs").rglob("ease/seed0.json")).read_text())
    assert ours["metrics"] == reference["metrics"]  # same numbers wherever the job ran


def test_gpu_jobs_request_the_gpu_resource(tmp_path, cluster, capsys, monkeypatch):
    """lightgcn is registered with gpu=True: with --gpu-resource it asks for a GPU, pop does not."""
    requested = {}
    original = distributed.Client.submit

    def recording_submit(self, func, *args, resources=None, key=None, **kwargs):
        requested[key.rsplit("/", 2)[-2]] = resources
        return original(self, func, *args, resources=resources, key=key, **kwargs)

    monkeypatch.setattr(distributed.Client, "submit", recording_submit)
    code = main(["--root", str(tmp_path), "run", "--models", "pop,lightgcn", "--datasets", "synthetic-tiny",
                 "--preset", "smoke", "--no-progress", "--executor", "dask", "--scheduler", cluster,
                 "--gpu-resource"])
    assert code == 0, capsys.readouterr().err
    assert requested == {"pop": None, "lightgcn": {"GPU": 1}}


def test_unreachable_scheduler_is_one_clear_error(tmp_path, capsys):
    code = main(["--root", str(tmp_path), "run", "--models", "pop", "--datasets", "synthetic-tiny",
                 "--no-progress", "--executor", "dask", "--scheduler", "tcp://127.0.0.1:9"])
    assert code == 2 and "cannot reach the Dask scheduler" in capsys.readouterr().err
