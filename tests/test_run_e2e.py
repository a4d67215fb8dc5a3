"""End to end through the CLI: files and numbers produced, skip/overwrite, failures, bad input."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from bench.cli import main
from bench.evaluator import metric_names
from bench.models import MODELS, Model

SANITY = "random,pop,itemknn,ease"


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    root = tmp_path_factory.mktemp("ws")
    code = main(["--root", str(root), "run", "--models", SANITY, "--datasets", "synthetic-tiny",
                 "--preset", "smoke", "--no-progress"])
    return root, code


def _results(root):
    return {p.parent.name: json.loads(p.read_text()) for p in (root / "results" / "runs").rglob("seed0.json")}


def test_run_writes_one_complete_result_per_model(ran):
    root, code = ran
    assert code == 0
    results = _results(root)
    assert set(results) == set(SANITY.split(","))
    for name, r in results.items():
        assert set(metric_names()) <= set(r["metrics"]), name
        assert r["split"]["protocol"] == "random" and len(r["split"]["hash"]) == 16
        assert len(r["config_hash"]) == 16 and r["config"]["seed"] == 0
        assert r["provenance"]["packages"]["numpy"] and r["timing"]["peak_rss_mb"] > 0
        assert r["n_users"] > 0 and r["metrics"]["ild@20"] is not None  # synthetic data has categories
    assert (root / "results" / "LEADERBOARD.md").read_text().count("| ease") >= 1


def test_no_list_contains_a_history_item_and_lists_are_full(ran):
    root, _ = ran
    split_dir = next((root / "data" / "splits" / "synthetic-tiny").iterdir())
    seen = pd.concat([pd.read_csv(split_dir / f, dtype=str) for f in ("train.csv", "valid.csv")])
    seen_pairs = set(zip(seen["user_id"], seen["item_id"]))
    for recs_path in (root / "results" / "runs").rglob("*.recs.csv.gz"):
        recs = pd.read_csv(recs_path, dtype={"user_id": str, "item_id": str})
        assert not seen_pairs & set(zip(recs["user_id"], recs["item_id"])), recs_path
        assert not recs.duplicated(["user_id", "item_id"]).any()


def test_models_beat_random_on_planted_structure(ran):
    root, _ = ran
    r = {k: v["metrics"]["recall@20"] for k, v in _results(root).items()}
    assert r["ease"] > r["random"] and r["itemknn"] > r["random"] and r["pop"] > r["random"]


def test_deleted_result_is_the_only_job_recomputed(ran, capsys):
    root, _ = ran
    target = next((root / "results" / "runs").rglob("itemknn/seed0.json"))
    target.unlink()
    capsys.readouterr()
    assert main(["--root", str(root), "run", "--models", SANITY, "--datasets", "synthetic-tiny", "--preset", "smoke",
                 "--no-progress"]) == 0
    assert "1 ran, 3 skipped, 0 failed" in capsys.readouterr().out
    assert target.exists()


def test_second_run_skips_and_overwrite_recomputes(ran, capsys):
    root, _ = ran
    capsys.readouterr()
    assert main(["--root", str(root), "run", "--models", "pop", "--datasets", "synthetic-tiny", "--preset", "smoke",
                 "--no-progress"]) == 0
    assert "0 ran, 1 skipped, 0 failed" in capsys.readouterr().out
    assert main(["--root", str(root), "run", "--models", "pop", "--datasets", "synthetic-tiny", "--preset", "smoke",
                 "--no-progress", "--overwrite"]) == 0
    assert "1 ran, 0 skipped" in capsys.readouterr().out
    # a changed setting changes the config hash: the job reruns instead of reusing a stale file
    assert main(["--root", str(root), "run", "--models", "ease", "--datasets", "synthetic-tiny", "--preset", "smoke",
                 "--no-progress", "--set", "ease.l2=5"]) == 0
    assert "1 ran" in capsys.readouterr().out


class _Boom(Model):
    def fit(self, split, config, workdir):
        raise RuntimeError("boom")


def test_failing_job_does_not_stop_the_grid(tmp_path, capsys):
    MODELS.register("boom", _Boom, family="test")
    try:
        code = main(["--root", str(tmp_path), "run", "--models", "boom,pop", "--datasets", "synthetic-tiny",
                     "--preset", "smoke", "--no-progress"])
    finally:
        MODELS.unregister("boom")
    captured = capsys.readouterr()
    assert code == 1
    assert "1 ran, 0 skipped, 1 failed" in captured.out and "boom" in captured.err
    tb = list((tmp_path / "results" / "failures").glob("*boom*.txt"))
    assert tb and "RuntimeError: boom" in tb[0].read_text()
    assert not list((tmp_path / "results" / "runs").rglob("boom/*.json"))


def test_interrupted_write_leaves_no_result(tmp_path, monkeypatch):
    import bench.runner as runner

    def killed(path, obj):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "write_json_atomic", killed)
    assert main(["--root", str(tmp_path), "run", "--models", "pop", "--datasets", "synthetic-tiny",
                 "--preset", "smoke", "--no-progress"]) == 130
    assert not list((tmp_path / "results" / "runs").rglob("*.json"))
    assert not list((tmp_path / "results" / "runs").rglob("*.tmp"))


@pytest.mark.parametrize("argv, message", [
    (["run", "--models", "sasrek", "--datasets", "synthetic-tiny"], "unknown model 'sasrek'"),
    (["run", "--models", "pop", "--datasets", "am-toyz"], "Did you mean am-toys"),
    (["run", "--models", "pop", "--datasets", "../etc"], "never contain '/' or '..'"),
    (["run", "--preset", "nope"], "unknown preset"),
    (["run", "--models", "pop", "--datasets", "am-luxury"], "bench data download --datasets am-luxury"),
    (["run", "--models", "pop", "--datasets", "synthetic-tiny", "--set", "pop.x=1"], "unknown setting 'x'"),
    (["data", "prepare", "--dataset", "a/b", "--source", "."], "invalid dataset name"),
])
def test_user_errors_are_one_clear_line(tmp_path, capsys, argv, message):
    code = main(["--root", str(tmp_path)] + argv + (["--no-progress"] if argv[0] == "run" else []))
    err = capsys.readouterr().err
    assert code != 0
    assert message in err
    assert "Traceback" not in err


def test_prepare_user_dataset_then_run(tmp_path, capsys):
    rng = np.random.default_rng(0)
    rows = [(f"u{u}", f"i{i}", 5, 100 + k) for u in range(40) for k, i in enumerate(rng.choice(30, 6, replace=False))]
    src = tmp_path / "mine.csv"
    pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"]).to_csv(src, index=False)
    assert main(["--root", str(tmp_path), "data", "prepare", "--dataset", "mine", "--source", str(src)]) == 0
    assert main(["--root", str(tmp_path), "run", "--models", "pop", "--datasets", "mine", "--no-progress"]) == 0
    assert list((tmp_path / "results" / "runs" / "default" / "mine").rglob("seed0.json"))
    bad = tmp_path / "bad.csv"
    bad.write_text("user_id,item_id,rating\nu1,i1,5\nu2,i2,five\n")
    capsys.readouterr()
    assert main(["--root", str(tmp_path), "data", "prepare", "--dataset", "bad", "--source", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.csv" in err and "line 3" in err
    assert "bad" not in json.loads((tmp_path / "data" / "datasets.json").read_text())  # nothing half-registered


def test_parallel_jobs_give_the_same_results(ran, tmp_path, capsys):
    root, _ = ran
    assert main(["--root", str(tmp_path), "run", "--models", SANITY, "--datasets", "synthetic-tiny",
                 "--preset", "smoke", "--no-progress", "--jobs", "2"]) == 0
    assert "4 ran, 0 skipped, 0 failed" in capsys.readouterr().out
    serial, parallel = _results(root), _results(tmp_path)
    for name in SANITY.split(","):
        if parallel[name]["config_hash"] != serial[name]["config_hash"]:
            continue  # an earlier test reran ease with another l2
        assert parallel[name]["metrics"] == serial[name]["metrics"], name
        assert parallel[name]["split"]["hash"] == serial[name]["split"]["hash"]


def test_missing_raw_files_stop_their_jobs_only(tmp_path, capsys):
    code = main(["--root", str(tmp_path), "run", "--models", "pop", "--datasets", "am-luxury,synthetic-tiny",
                 "--no-progress"])
    out = capsys.readouterr()
    assert code == 1
    assert "1 ran, 0 skipped, 0 failed, 1 not run" in out.out and "bench data download --datasets am-luxury" in out.err
