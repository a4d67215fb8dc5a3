"""CLI paths a user takes: download from a (local) mirror, run on it, score lists, render tables."""

from __future__ import annotations

import functools
import gzip
import json
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pandas as pd
import pytest

from bench.cli import main
from bench.data.datasets import EMBEDDED_DIR


@pytest.fixture
def mirror(tmp_path):
    """A local HTTP server serving the 2018 All_Beauty files under their official names."""
    root = tmp_path / "mirror"
    (root / "files").mkdir(parents=True)
    (root / "files" / "All_Beauty_5.json.gz").write_bytes((EMBEDDED_DIR / "All_Beauty_5.json.gz").read_bytes())
    meta = [{"asin": "B0009RF9DW", "title": "Shampoo &amp; Conditioner", "brand": "Acme",
             "category": ["Beauty", "Hair Care"], "description": ["A shampoo."]}]
    with gzip.open(root / "files" / "meta_All_Beauty.json.gz", "wt") as fh:
        fh.write("\n".join(json.dumps(m) for m in meta) + "\n")
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/files"
    server.shutdown()


def test_download_then_run_offline(tmp_path, mirror):
    ws = tmp_path / "ws"
    assert main(["--root", str(ws), "data", "download", "--datasets", "am-beauty", "--base-url", mirror]) == 0
    raw = ws / "data" / "raw" / "am-beauty"
    assert (raw / "All_Beauty_5.json.gz").read_bytes() == (EMBEDDED_DIR / "All_Beauty_5.json.gz").read_bytes()
    assert not list(raw.glob("*.part"))
    assert main(["--root", str(ws), "run", "--models", "pop", "--datasets", "am-beauty", "--no-progress"]) == 0
    split = json.loads(next((ws / "data" / "splits" / "am-beauty").rglob("split.json")).read_text())
    assert split["n_users"] + split["n_dropped_users"] == 991  # every user of the real file is accounted for
    items = pd.read_csv(next((ws / "data" / "splits" / "am-beauty").rglob("items.csv")))
    assert items.loc[items.item_id == "B0009RF9DW", "title"].item() == "Shampoo & Conditioner"


def test_download_offline_fails_at_once_with_the_manual_path(tmp_path, capsys):
    code = main(["--root", str(tmp_path), "data", "download", "--datasets", "am-luxury",
                 "--base-url", "http://127.0.0.1:9/nothing"])
    err = capsys.readouterr().err
    assert code == 2 and "Luxury_Beauty_5.json.gz" in err and "place it at" in err


def test_embedded_2014_instruments_splits_offline_from_a_fresh_workspace(tmp_path, capsys):
    """The complete official 2014 Musical_Instruments 5-core ships in the package: no download."""
    assert main(["--root", str(tmp_path), "data", "download", "--datasets", "am-instruments-2014"]) == 0
    assert "nothing to download (embedded)" in capsys.readouterr().out
    assert not (tmp_path / "data" / "raw").exists()
    assert main(["--root", str(tmp_path), "data", "split", "--dataset", "am-instruments-2014"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["n_items"] == 900 and stats["n_items_with_metadata"] == 0
    assert stats["n_users"] + stats["n_dropped_users"] == 1429
    assert sum(stats[k] for k in ("n_train", "n_valid", "n_test", "n_negatives")) <= 10_261
    inter = pd.read_parquet(tmp_path / "data" / "processed" / "am-instruments-2014" / "interactions.parquet")
    assert len(inter) == 10_261 and inter["review_text"].str.len().gt(0).mean() > 0.99
    reviews = pd.read_csv(next((tmp_path / "data" / "splits" / "am-instruments-2014").rglob("reviews.csv")))
    assert len(reviews) == stats["n_reviews"] and 0.99 * (stats["n_train"] + stats["n_negatives"]) < len(reviews) \
        <= stats["n_train"] + stats["n_negatives"]


def test_score_cli_writes_the_spec_keys(tmp_path, capsys):
    pd.DataFrame({"user_id": ["u1", "u1"], "item_id": ["h", "g"], "rating": [5, 4]}).to_csv(tmp_path / "train.csv", index=False)
    pd.DataFrame({"user_id": ["u1", "u1"], "item_id": ["a", "b"], "rating": [5, 4]}).to_csv(tmp_path / "test.csv", index=False)
    pd.DataFrame({"user_id": ["u1"] * 4, "item_id": ["h", "b", "x", "a"], "rank": [1, 2, 3, 4]}).to_csv(
        tmp_path / "recs.csv", index=False)
    out = tmp_path / "m.json"
    assert main(["score", "--train", str(tmp_path / "train.csv"), "--test", str(tmp_path / "test.csv"),
                 "--recs", str(tmp_path / "recs.csv"), "--k", "3", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    # h is history -> removed, the list becomes [b, x, a]: the spec's worked example
    assert result["n_users"] == 1
    assert result["metrics"]["ndcg@3"] == pytest.approx(0.91972, abs=1e-5)
    assert result["metrics"]["ild@20"] is None and result["metrics"]["entropy@20"] is None
    assert "ndcg@3" in capsys.readouterr().out
    assert main(["score", "--train", str(tmp_path / "missing.csv"), "--test", str(tmp_path / "test.csv"),
                 "--recs", str(tmp_path / "recs.csv")]) == 2
    assert "missing.csv" in capsys.readouterr().err


def test_leaderboard_golden(tmp_path):
    """Tables come from result files alone: fixture results -> a known Markdown table."""
    runs = tmp_path / "results" / "runs" / "smoke" / "toy" / "random-s0"
    for model, seed, r20 in (("pop", 0, 0.1), ("pop", 1, 0.3), ("ease", 0, 0.5)):
        path = runs / model / f"seed{seed}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"schema": 1, "preset": "smoke", "dataset": "toy", "model": model, "seed": seed,
                                    "split": {"name": "random-s0", "protocol": "random", "hash": "h"},
                                    "config_hash": "c", "metrics": {"recall@20": r20, "wmrd": r20}}))
    assert main(["--root", str(tmp_path), "table"]) == 0
    md = (tmp_path / "results" / "LEADERBOARD.md").read_text()
    assert "| ease    |   1 | **0.5000**      | 0.5000              |" in md
    assert "| pop     |   2 | 0.2000 ± 0.1414 | **0.2000 ± 0.1414** |" in md  # wmrd: lower is better
    csv = pd.read_csv(tmp_path / "results" / "tables" / "leaderboard.csv")
    assert csv.set_index("model").loc["pop", "recall@20:mean"] == pytest.approx(0.2)
