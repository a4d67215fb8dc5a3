"""Nothing wrong is read, cached or downloaded silently: damaged gzip files, non-UTF-8 ids, values
out of range, non-finite settings and scores, damaged result files and stages (issue 11, section 4)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from bench.data.readers import read_source
from bench.errors import DataError


def _review(user: str, item: str, rating: object = 5.0, ts: object = 1_300_000_000) -> str:
    return (f'{{"reviewerID": "{user}", "asin": "{item}", "overall": {rating}, '
            f'"unixReviewTime": {ts}, "verified": true}}')


def _reviews_gz(path: Path, n: int = 2000) -> bytes:
    text = "".join(_review(f"U{u}", f"I{u % 7}") + "\n" for u in range(n))
    data = gzip.compress(text.encode())
    path.write_bytes(data)
    return data


# --- damaged gzip ---------------------------------------------------------------------------

def test_truncated_gzip_names_file_and_redownload(tmp_path):
    raw = tmp_path / "data" / "raw" / "beauty" / "Beauty_5.json.gz"
    raw.parent.mkdir(parents=True)
    data = _reviews_gz(raw)
    raw.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError) as err:
        read_source(raw, "amazon2018")
    message = str(err.value)
    assert str(raw) in message and "truncated or corrupt gzip" in message
    assert "bench data download --datasets beauty --force" in message


def test_corrupt_gzip_names_file(tmp_path):
    path = tmp_path / "Beauty_5.json.gz"
    data = bytearray(_reviews_gz(path))
    data[-8] ^= 0xFF  # the CRC of the stream
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="truncated or corrupt gzip.*replace it"):
        read_source(path, "amazon2018")


def test_truncated_gzip_csv_names_file(tmp_path):
    path = tmp_path / "inter.csv.gz"
    text = "user_id,item_id,rating\n" + "".join(f"u{i},i{i % 9},5\n" for i in range(5000))
    data = gzip.compress(text.encode())
    path.write_bytes(data[: len(data) - 40])
    with pytest.raises(DataError, match="inter.csv.gz: truncated or corrupt gzip"):
        read_source(path, "generic")


# --- non-UTF-8 ids --------------------------------------------------------------------------

@pytest.mark.parametrize("gz", [False, True])
def test_non_utf8_json_line_is_an_error(tmp_path, gz):
    # b"U\xe9" and b"U\xe8" are two users in Latin-1; replacing them would merge them into one.
    lines = [_review(f"U{i}", "I1").encode() for i in range(3000)]
    lines += [_review("U\xe9", "I1").encode("latin-1"), _review("U\xe8", "I2").encode("latin-1")]
    data = b"\n".join(lines) + b"\n"
    path = tmp_path / "Beauty_5.json"
    path.write_bytes(gzip.compress(data) if gz else data)
    with pytest.raises(DataError) as err:
        read_source(path, "amazon2018")
    assert "not UTF-8" in str(err.value) and err.value.line == 3001 and str(path) in str(err.value)


def test_non_utf8_csv_line_is_an_error(tmp_path):
    path = tmp_path / "inter.csv"
    path.write_bytes(b"user_id,item_id\nu1,i1\nu\xe9,i1\nu\xe8,i2\n")
    with pytest.raises(DataError, match=r"inter.csv, line 3: not UTF-8"):
        read_source(path, "generic")


def test_score_names_non_utf8_and_truncated_files(tmp_path):
    from bench.score import score_files

    train = tmp_path / "train.csv"
    train.write_bytes(b"user_id,item_id\nu1,i1\nu\xe9,i2\n")
    test = tmp_path / "test.csv"
    test.write_text("user_id,item_id\nu1,i2\n")
    recs = tmp_path / "recs.csv.gz"
    recs.write_bytes(gzip.compress(b"user_id,item_id,rank\n" + b"u1,i2,1\n" * 5000)[:-30])
    with pytest.raises(DataError, match=r"train.csv, line 3: not UTF-8"):
        score_files(train, test, recs)
    train.write_text("user_id,item_id\nu1,i1\n")
    with pytest.raises(DataError, match=r"recs.csv.gz: truncated or corrupt gzip"):
        score_files(train, test, recs)


# --- values out of range --------------------------------------------------------------------

@pytest.mark.parametrize("rating", [-3, 1e9, 6])
def test_json_rating_out_of_range(tmp_path, rating):
    path = tmp_path / "Beauty_5.json"
    path.write_text(_review("U1", "I1") + "\n" + _review("U2", "I1", rating) + "\n")
    with pytest.raises(DataError, match=r"Beauty_5.json, line 2: rating .* out of range.*from 0 to 5"):
        read_source(path, "amazon2018")


@pytest.mark.parametrize("ts", ["1e30", "-5", "1700000000000"])
def test_json_timestamp_out_of_range(tmp_path, ts):
    path = tmp_path / "Beauty_5.json"
    path.write_text(_review("U1", "I1") + "\n" + _review("U2", "I1", ts=ts) + "\n")
    with pytest.raises(DataError, match=r"line 2: timestamp .* out of range.*unix seconds between 1970 and 2100"):
        read_source(path, "amazon2018")


def test_2023_timestamps_are_milliseconds(tmp_path):
    ok = '{"user_id": "U1", "parent_asin": "I1", "rating": 5, "timestamp": 1600000000000}'
    bad = '{"user_id": "U2", "parent_asin": "I1", "rating": 5, "timestamp": 1e30}'
    path = tmp_path / "Beauty.jsonl"
    path.write_text(ok + "\n")
    assert read_source(path, "amazon2023")[0]["timestamp"].tolist() == [1600000000]
    path.write_text(ok + "\n" + bad + "\n")
    with pytest.raises(DataError, match=r"line 2: timestamp .* out of range \(this format counts milliseconds\)"):
        read_source(path, "amazon2023")


@pytest.mark.parametrize("row, what", [("u2,i1,-3,100", "rating"), ("u2,i1,1e9,100", "rating"),
                                       ("u2,i1,5,1e30", "timestamp")])
def test_csv_values_out_of_range(tmp_path, row, what):
    path = tmp_path / "inter.csv"
    path.write_text(f"user_id,item_id,rating,timestamp\nu1,i1,5,100\n{row}\n")
    with pytest.raises(DataError, match=rf"inter.csv, line 3: .*{what}.* out of range"):
        read_source(path, "generic")
    headerless = tmp_path / "ratings_Toys.csv"
    headerless.write_text("u1,i1,5,100\n" + row + "\n")
    with pytest.raises(DataError, match=rf"ratings_Toys.csv, line 2: .*{what}.* out of range"):
        read_source(headerless, "amazon2014")


def test_make_interactions_backstop():
    import pandas as pd

    from bench.data.canonical import make_interactions

    frame = pd.DataFrame({"user": ["a", "b"], "item": ["x", "y"], "rating": [5.0, 4.0], "timestamp": [1, 1e30]})
    with pytest.raises(DataError, match=r"src: timestamp 1e\+30 out of range in row 2"):
        make_interactions(frame, "src")


# --- non-finite settings, scores and JSON ---------------------------------------------------

@pytest.mark.parametrize("value", ["inf", ".inf", "-inf", "nan", ".nan"])
def test_non_finite_float_setting_is_rejected(value):
    from bench import config as cfg
    from bench.errors import ConfigError
    from bench.models import MODELS

    overrides = cfg.parse_overrides([f"ease.l2={value}"])
    with pytest.raises(ConfigError, match=r"ease.l2: .* is not a finite number"):
        cfg.build(MODELS.get("ease").Config, overrides["ease"], "ease")


def test_all_non_finite_scores_fail_the_job():
    import numpy as np
    import scipy.sparse as sp

    from bench.errors import BenchError
    from bench.scoring import top_k

    class Diverged:
        produces_lists = False

        def score(self, users, history):
            return np.full((len(users), 5), np.nan)

    history = sp.csr_matrix((3, 5))
    with pytest.raises(BenchError, match="Diverged gave no finite score to any item for 3 users"):
        top_k(Diverged(), np.arange(3), history, 2)


def test_json_files_never_hold_nan_or_infinity(tmp_path):
    import numpy as np

    from bench.io import write_json_atomic

    path = tmp_path / "r.json"
    write_json_atomic(path, {"a": float("inf"), "b": [np.float32("nan"), 1.5], "c": {"d": -np.inf}, "e": 2})
    text = path.read_text()
    assert "Infinity" not in text and "NaN" not in text
    assert json.loads(text) == {"a": None, "b": [None, 1.5], "c": {"d": None}, "e": 2}


# --- the result cache checks every file of a result -----------------------------------------

def _run(root, capsys, models="pop,ease"):
    from bench.cli import main

    capsys.readouterr()
    code = main(["--root", str(root), "run", "--models", models, "--datasets", "synthetic-tiny", "--preset", "smoke",
                 "--no-progress", "--no-table"])
    return code, capsys.readouterr()


@pytest.fixture(scope="module")
def results_ws(tmp_path_factory):
    from bench.cli import main

    root = tmp_path_factory.mktemp("ws")
    assert main(["--root", str(root), "run", "--models", "pop,ease", "--datasets", "synthetic-tiny",
                 "--preset", "smoke", "--no-progress", "--no-table"]) == 0
    return root


def _result(root, model):
    path = next((root / "results" / "runs").rglob(f"{model}/seed0.json"))
    return path, json.loads(path.read_text())


def test_result_records_its_side_files(results_ws):
    from bench.io import sha256_file

    path, result = _result(results_ws, "pop")
    for name in (result["per_user"], result["recs"]):
        side = path.parent / name
        assert result["files"][name] == {"bytes": side.stat().st_size, "sha256": sha256_file(side)}


@pytest.mark.parametrize("damage", ["truncate_recs", "delete_per_user", "garble_per_user"])
def test_damaged_side_file_is_recomputed_with_a_warning(results_ws, capsys, caplog, damage):
    from bench.io import file_record

    path, result = _result(results_ws, "pop")
    recs, per_user = path.parent / result["recs"], path.parent / result["per_user"]
    if damage == "truncate_recs":
        recs.write_bytes(recs.read_bytes()[:-20])
        damaged = recs
    elif damage == "delete_per_user":
        per_user.unlink()
        damaged = per_user
    else:
        data = bytearray(per_user.read_bytes())
        data[len(data) // 2] ^= 0xFF
        per_user.write_bytes(bytes(data))
        damaged = per_user
    with caplog.at_level("WARNING", logger="bench.runner"):
        code, out = _run(results_ws, capsys)
    assert code == 0 and "1 ran, 1 skipped, 0 failed" in out.out
    assert f"result {path} recomputed: {damaged}" in caplog.text
    assert _result(results_ws, "pop")[1]["files"] == {name: file_record(path.parent / name)
                                                      for name in (result["per_user"], result["recs"])}
    assert "0 ran, 2 skipped" in _run(results_ws, capsys)[1].out


def test_older_result_without_file_record_is_checked_by_reading(results_ws, capsys, caplog):
    path, result = _result(results_ws, "ease")
    del result["files"]
    path.write_text(json.dumps(result))
    assert "0 ran, 2 skipped" in _run(results_ws, capsys)[1].out  # complete side files: reused
    recs = path.parent / result["recs"]
    recs.write_bytes(recs.read_bytes()[:-20])
    with caplog.at_level("WARNING", logger="bench.runner"):
        assert "1 ran, 1 skipped" in _run(results_ws, capsys)[1].out
    assert f"{recs} is not a complete gzip file" in caplog.text


def test_table_warns_about_results_without_per_user_file(results_ws, capsys):
    from bench.cli import main

    path, result = _result(results_ws, "ease")
    per_user = path.parent / result["per_user"]
    per_user.unlink()
    try:
        capsys.readouterr()
        assert main(["--root", str(results_ws), "table"]) == 0
        err = capsys.readouterr().err
        assert "warning: 1 of 2 result(s) have no usable per-user file" in err
        assert f"{per_user} is missing" in err
    finally:
        _run(results_ws, capsys)  # recomputes it for the other tests


# --- PageLLM stages --------------------------------------------------------------------------

def _stage(directory: Path, runs: list[int]) -> dict:
    from pagellm.model import run_stage

    def work(tmp: Path) -> dict:
        runs.append(1)
        (tmp / "ckpt").mkdir()
        (tmp / "ckpt" / "weights.bin").write_bytes(b"w" * 1000)
        return {"value": 1}

    return run_stage(directory, {"stage": "demo"}, work)


@pytest.mark.parametrize("damage", ["garble_record", "truncate_file", "delete_file", "flip_byte"])
def test_damaged_stage_is_recomputed_with_a_warning(tmp_path, caplog, damage):
    directory, runs = tmp_path / "pretrain-abc", []
    first = _stage(directory, runs)
    assert list(first["files"]) == ["ckpt/weights.bin"] and first["files"]["ckpt/weights.bin"]["bytes"] == 1000
    assert _stage(directory, runs)["cached"] and len(runs) == 1
    weights = directory / "ckpt" / "weights.bin"
    if damage == "garble_record":
        (directory / "stage.json").write_text('{"hash": "ab')
        expected = f"its record {directory / 'stage.json'} is unreadable"
    elif damage == "truncate_file":
        weights.write_bytes(b"w" * 10)
        expected = f"{weights} has 10 bytes, 1000 recorded"
    elif damage == "delete_file":
        weights.unlink()
        expected = f"{weights} is missing"
    else:
        weights.write_bytes(b"x" + b"w" * 999)
        expected = f"{weights} differs from its recorded sha256"
    with caplog.at_level("WARNING", logger="pagellm.model"):
        again = _stage(directory, runs)
    assert not again["cached"] and len(runs) == 2 and expected in caplog.text
    assert _stage(directory, runs)["cached"] and len(runs) == 2


def test_stage_written_before_file_records_is_reused(tmp_path):
    directory, runs = tmp_path / "pretrain-abc", []
    _stage(directory, runs)
    record = json.loads((directory / "stage.json").read_text())
    del record["files"]
    (directory / "stage.json").write_text(json.dumps(record))
    assert _stage(directory, runs)["cached"] and len(runs) == 1
