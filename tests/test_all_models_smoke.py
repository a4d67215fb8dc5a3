"""Every registered model trains with its smoke settings on embedded data and is scored fairly."""

from __future__ import annotations

import json

import pandas as pd

from bench.cli import main
from bench.evaluator import metric_names
from bench.models import MODELS


def test_every_registered_model_runs_the_smoke_preset(tmp_path, capsys):
    code = main(["--root", str(tmp_path), "run", "--models", "all", "--datasets", "synthetic-tiny",
                 "--preset", "smoke", "--no-progress"])
    out = capsys.readouterr()
    assert code == 0, out.err
    split_dir = tmp_path / "data" / "splits" / "synthetic-tiny" / "random-s0"
    seen = pd.concat([pd.read_csv(split_dir / f, dtype=str) for f in ("train.csv", "valid.csv")])
    seen_pairs = set(zip(seen["user_id"], seen["item_id"]))
    n_test_users = pd.read_csv(split_dir / "test.csv", dtype=str)["user_id"].nunique()
    runs = tmp_path / "results" / "runs" / "smoke" / "synthetic-tiny" / "random-s0"
    for name in MODELS.names():
        result = json.loads((runs / name / "seed0.json").read_text())
        assert set(metric_names()) <= set(result["metrics"]), name
        assert all(result["metrics"][m] is not None for m in metric_names()), name
        assert result["n_users"] == n_test_users
        recs = pd.read_csv(runs / name / "seed0.recs.csv.gz", dtype={"user_id": str, "item_id": str})
        assert not seen_pairs & set(zip(recs["user_id"], recs["item_id"])), f"{name} recommended a seen item"
        assert recs.groupby("user_id").size().min() >= 20, name
    # PageLLM variants: cost fields for Table 3, reward accuracy, and shared stages computed once.
    info = {name: json.loads((runs / name / "seed0.json").read_text())["model_info"]
            for name in ("pagellm", "pagellm-item", "pagellm-page", "pagellm-sft")}
    for name, model_info in info.items():
        for stage, record in model_info["stages"].items():
            assert record["seconds"] > 0 and record["memory"]["peak_rss_mb"] > 0, (name, stage)
            assert 0 < record["parameters"]["trainable"] <= record["parameters"]["total"], (name, stage)
    assert set(info["pagellm"]["stages"]) == {"pretrain", "finetune", "lists", "reward-page", "reward-item", "ppo"}
    assert set(info["pagellm-sft"]["stages"]) == {"pretrain", "finetune"}
    computed = [(n, s) for n, i in info.items() for s, r in i["stages"].items() if s != "ppo" and not r["cached"]]
    assert sorted(s for _, s in computed) == ["finetune", "lists", "pretrain", "reward-item", "reward-page"]
    assert set(info["pagellm"]["reward_accuracy"]) == {"page", "item", "mixed"}
    # One PPO curve row per epoch plus the fine-tuned policy's; none without a reward.
    assert [row["epoch"] for row in info["pagellm-page"]["ppo_curve"]] == [0, 1]
    assert info["pagellm-sft"].get("ppo_curve") is None
