"""The paper's tables, figures and the reproduction report, rendered from fixture result files.

Fixtures: tests/fixtures/results/runs/ (written by tests/fixtures/results/make_fixtures.py, which says what
was constructed). Golden files: tests/fixtures/expected/; after a deliberate change, check the new output by
eye and rewrite them with  BENCH_UPDATE_GOLDEN=1 pytest tests/test_paper_tables.py
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench import paper_tables as pt
from bench.cli import main
from bench.paths import Workspace

FIXTURES = Path(__file__).resolve().parent / "fixtures"
RUNS = FIXTURES / "results" / "runs"
EXPECTED = FIXTURES / "expected"
TABLE_KEYS = ["table1_reward", "table2_baselines", "table3_backbones", "table5_ablation", "cold_start",
              "judge_winrate", "reward_models"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# the runs whose model_info holds a ppo_curve (tests/fixtures/results/make_fixtures.py: reward_info)
PPO_PNGS = sorted([f"ppo/paper/am-toys/random-s0/{m}-seed{k}.png" for m in ("pagellm", "pagellm-item", "pagellm-page")
                   for k in (0, 1)]
                  + [f"ppo/paper/{d}/{s}/pagellm-seed{k}.png" for d, s in (("am-toys", "random-s0-cold50"),
                                                                          ("am-beauty-2014", "random-s0"))
                     for k in (0, 1)])


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> Path:
    """A workspace holding the fixture results, after `bench table` and `bench report`."""
    root = tmp_path_factory.mktemp("ws")
    shutil.copytree(RUNS, root / "results" / "runs")
    assert main(["--root", str(root), "table"]) == 0
    assert main(["--root", str(root), "report"]) == 0
    return root


def _tidy(root: Path, key: str) -> pd.DataFrame:
    return pd.read_csv(root / "results" / "tables" / f"{key}.csv")


def _cell(tidy: pd.DataFrame, dataset: str, model: str, metric: str) -> pd.Series:
    rows = tidy[(tidy["dataset"] == dataset) & (tidy["model"] == model) & (tidy["metric"] == metric)]
    assert len(rows) == 1, (dataset, model, metric)
    return rows.iloc[0]


@pytest.mark.parametrize("name", [f"{k}.md" for k in TABLE_KEYS] + ["REPORT.md"])
def test_golden_markdown(rendered, name):
    produced = rendered / "results" / ("REPORT.md" if name == "REPORT.md" else f"tables/{name}")
    expected = EXPECTED / name
    if os.environ.get("BENCH_UPDATE_GOLDEN"):
        expected.parent.mkdir(parents=True, exist_ok=True)
        expected.write_text(produced.read_text())
    assert produced.read_text() == expected.read_text()


def test_significance_where_constructed_and_not_elsewhere(rendered):
    t2 = _tidy(rendered, "table2_baselines")
    # am-toys: pagellm is clearly above the best baseline (sasrec), multivae clearly below
    assert _cell(t2, "am-toys", "pagellm", "recall@20")["significant"]
    assert _cell(t2, "am-toys", "sasrec", "recall@20")["reference"] == "sasrec"
    assert _cell(t2, "am-toys", "multivae", "ndcg@100")["significant"]
    # am-beauty-2014: pagellm a little below sasrec, within noise -> no mark; multivae far below -> marked
    assert not _cell(t2, "am-beauty-2014", "pagellm", "recall@20")["significant"]
    assert not _cell(t2, "am-beauty-2014", "pagellm-sft", "ndcg@100")["significant"]
    assert _cell(t2, "am-beauty-2014", "multivae", "recall@20")["significant"]
    t1 = _tidy(rendered, "table1_reward")
    assert _cell(t1, "am-toys", "pagellm", "was")["significant"]
    assert not _cell(t1, "am-beauty-2014", "pagellm", "recall@40")["significant"]
    pv = pd.read_csv(rendered / "results" / "tables" / "table2_baselines.pvalues.csv")
    assert {"p", "p_holm", "n_users", "reference"} <= set(pv.columns)
    assert (pv["p_holm"] >= pv["p"] - 1e-12).all()  # Holm never lowers a p-value
    row = pv[(pv["dataset"] == "am-beauty-2014") & (pv["model"] == "pagellm") & (pv["metric"] == "recall@20")].iloc[0]
    assert row["reference"] == "sasrec" and row["p_holm"] > 0.05 and row["n_users"] == 60
    md = (rendered / "results" / "tables" / "table2_baselines.md").read_text()
    assert "| pagellm      | 2   | **0.4895 ± 0.0035**† |" in md
    assert "| pagellm     | 2   | 0.3923 ± 0.0028      |" in md  # not best, not significant


def test_paper_numbers_and_differences(rendered):
    t2 = _tidy(rendered, "table2_baselines")
    toys = _cell(t2, "am-toys", "pagellm", "recall_mvae@20")
    assert toys["paper"] == pytest.approx(0.1349)  # the paper's Recall@20 beside our recall_mvae@20
    assert toys["diff_vs_paper"] == pytest.approx(toys["mean"] - 0.1349)
    assert math.isnan(_cell(t2, "am-toys", "pagellm", "recall@20")["paper"])  # standard recall: no paper number
    assert _cell(t2, "am-beauty-2014", "sasrec", "ndcg@100")["paper"] == pytest.approx(0.0929)  # 2014 -> AM-Beauty
    t3 = _tidy(rendered, "table3_backbones")
    assert _cell(t3, "am-instruments", "pagellm", "recall_mvae@20")["paper"] == pytest.approx(0.1757)  # Llama
    md = (rendered / "results" / "tables" / "table5_ablation.md").read_text()
    assert "↳ paper" in md and "↳ Δ" in md and "0.1236" in md  # Item-level, AM-Toys
    assert "recall_mvae@K" in md and "divides by N" in md  # the definitions note
    cold = (rendered / "results" / "tables" / "cold_start.md").read_text()
    assert "-22.3%" in cold and "pp" in cold


def test_paper_lookup():
    assert pt.our_dataset_to_paper("am-toys-2014") == "AM-Toys"
    assert pt.our_dataset_to_paper("synthetic") is None
    assert pt.paper_number("table2_baselines", "am-food", "hstu", "recall_mvae@20") == pytest.approx(0.949)
    assert pt.paper_number("table2_baselines", "am-food", "hstu", "recall_mvae@20", corrected=True) == 0.0949
    assert pt.paper_number("table1_reward", "am-sports", "pagellm-sft", "ild@20") == pytest.approx(0.0394)
    assert pt.paper_number("table1_reward", "am-luxury", "pagellm", "ild@20") is None  # blank in the paper
    assert pt.paper_number("table3_backbones", "am-instruments", "pagellm", "recall_mvae@40",
                           "meta-llama/Llama-3.2-1B") == pytest.approx(0.2414)
    assert pt.paper_number("table3_backbones", "am-toys", "pagellm", "recall_mvae@40", "gpt2") is None
    for name in ("table1_reward", "table2_baselines", "table3_backbones", "table5_ablation"):
        assert (Path(pt.__file__).parent / "paper" / f"{name}.csv").exists()


def test_latex_files(rendered):
    tex = (rendered / "results" / "tables" / "table2_baselines.tex").read_text()
    assert tex.count("\\begin{table}") == tex.count("\\end{table}") == 3
    assert "\\textbf{0.4895 $\\pm$ 0.0035}$^\\dagger$" in tex
    assert "recall\\_mvae@20" in tex and "$^\\circ$" in tex and "\\quad $\\Delta$" in tex
    for key in TABLE_KEYS:
        assert (rendered / "results" / "tables" / f"{key}.tex").read_text().startswith("% ")


def test_figures_open(rendered):
    import matplotlib.image as mpimg

    for name in ("cold_start.png", "judge_winrate.png"):
        image = mpimg.imread(rendered / "results" / "tables" / name)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
        assert f"]({name})" in (rendered / "results" / "tables" / name.replace(".png", ".md")).read_text()


def test_report_answers_from_the_fixtures(rendered):
    report = (rendered / "results" / "REPORT.md").read_text()
    assert "| 1 | PageLLM is the best model on each dataset (Table 2) | **no** |" in report
    assert "am-beauty-2014 recall@20: pagellm 0.3923 vs sasrec 0.3989 (not significant)" in report
    assert "| 2 | The reward helps: pagellm beats pagellm-sft (Table 1) | **no** |" in report
    assert "| 3 | Each ablation hurts" in report and "pagellm-sft (Table 5) | **yes** |" in report
    assert "| 4 | Cold start hurts PageLLM less than the baselines (Appendix F) | **yes** |" in report
    assert "| 5 | The LLM judge prefers PageLLM's pages to the best baseline's (Figure 3) | **yes** |" in report
    assert "preset `reward` has no usable results; answered from preset(s) `paper`" in report


def test_report_follows_the_results_not_a_script(tmp_path):
    """Make PageLLM best on am-beauty-2014 too: claim 1 flips to yes without any other change."""
    shutil.copytree(RUNS, tmp_path / "results" / "runs")
    for seed in (0, 1):
        src = tmp_path / "results" / "runs" / "paper" / "am-beauty-2014" / "random-s0" / "pagellm" / f"seed{seed}.json"
        data = json.loads(src.read_text())
        data["metrics"] = {k: (v * 1.5 if k != "wmrd" and v is not None else v) for k, v in data["metrics"].items()}
        src.write_text(json.dumps(data))
    text = pt.build_report(Workspace.at(tmp_path))
    assert "| 1 | PageLLM is the best model on each dataset (Table 2) | **yes** |" in text


def test_stubs_when_nothing_ran(tmp_path):
    assert main(["--root", str(tmp_path), "table"]) == 0
    assert main(["--root", str(tmp_path), "report"]) == 0
    tables = tmp_path / "results" / "tables"
    for key, preset in (("table1_reward", "reward"), ("table2_baselines", "paper"), ("table3_backbones", "backbones"),
                        ("table5_ablation", "ablation"), ("cold_start", "cold-start"), ("judge_winrate", "judge"),
                        ("reward_models", "ablation")):
        md = (tables / f"{key}.md").read_text()
        assert "**Not run yet.**" in md and f"bench run --preset {preset}" in md, key
        assert (tables / f"{key}.tex").exists()
        assert "not run" in pd.read_csv(tables / f"{key}.csv")["status"].iloc[0]
    assert not (tables / "cold_start.png").exists() and not (tables / "judge_winrate.png").exists()
    assert not (tables / "ppo").exists() or not list((tables / "ppo").rglob("*.png"))
    report = (tmp_path / "results" / "REPORT.md").read_text()
    assert report.count("| **not run** |") == 5
    leaderboard = (tmp_path / "results" / "LEADERBOARD.md").read_text()
    assert "(tables/table1_reward.md)" in leaderboard and "(REPORT.md)" in leaderboard


def test_preset_filter(tmp_path):
    shutil.copytree(RUNS, tmp_path / "results" / "runs")
    assert main(["--root", str(tmp_path), "table", "--preset", "backbones"]) == 0
    tables = tmp_path / "results" / "tables"
    assert "am-toys" not in (tables / "table2_baselines.md").read_text()
    assert "Only preset `backbones` was read" in (tables / "table1_reward.md").read_text()
    assert "llama-3.2-1b" in (tables / "table3_backbones.md").read_text()


def test_historic_results_still_load(tmp_path):
    """Result files without per_user, timing, model_info, config or newer metrics still render."""
    runs = tmp_path / "results" / "runs" / "old" / "am-toys" / "random-s0"
    for model, r20 in (("pagellm", 0.2), ("sasrec", 0.1)):
        path = runs / model / "seed0.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"schema": 1, "preset": "old", "dataset": "am-toys", "model": model, "seed": 0,
                                    "split": {"name": "random-s0"}, "config_hash": "c",
                                    "metrics": {"recall@20": r20, "ndcg@100": None}}))
    frame = pt.load_runs(Workspace.at(tmp_path))
    assert len(frame) == 2 and frame["per_user_path"].isna().all() and frame["backbone"].eq("").all()
    assert main(["--root", str(tmp_path), "table"]) == 0
    assert main(["--root", str(tmp_path), "report"]) == 0
    md = (tmp_path / "results" / "tables" / "table2_baselines.md").read_text()
    assert "| pagellm | 1   | **0.2000**  |" in md
    pv = pd.read_csv(tmp_path / "results" / "tables" / "table2_baselines.pvalues.csv")
    assert (pv["note"] == "no per-user file").all() and not pv["significant"].any()
    report = (tmp_path / "results" / "REPORT.md").read_text()
    assert "| 1 | PageLLM is the best model on each dataset (Table 2) | **yes** |" in report


def test_fixture_historic_file_counts(rendered):
    t2 = _tidy(rendered, "table2_baselines")
    sasrec = _cell(t2, "am-beauty-2014", "sasrec", "recall_mvae@20")
    assert sasrec["n_seeds"] == 1 and math.isnan(sasrec["std"])  # seed 1 predates recall_mvae
    assert _cell(t2, "am-beauty-2014", "sasrec", "recall@20")["n_seeds"] == 2


def test_holm_and_paired_test():
    adjusted = pt.holm([0.01, 0.04, np.nan, 0.03])
    assert adjusted[0] == pytest.approx(0.03) and adjusted[3] == pytest.approx(0.06)
    assert adjusted[1] == pytest.approx(0.06) and np.isnan(adjusted[2])
    a = pd.Series([0.1, 0.2, 0.3], index=["u1", "u2", "u3"])
    same = pt.paired_test(a, a.copy())
    assert same["p"] == 1.0 and same["n_users"] == 3
    assert pt.paired_test(a, None)["note"] == "no per-user file"
    b = pd.Series(np.arange(30) / 100, index=[f"u{i}" for i in range(30)])
    res = pt.paired_test(b + 0.05 + np.linspace(0, 0.01, 30), b)
    assert res["p"] < 1e-5 and res["mean_diff"] > 0.05


def test_judge_input_formats():
    flat = pt.judge_records({"wins": 3, "ties": 1, "losses": 2, "baseline": "sasrec"})
    assert flat == [{"aspect": "overall", "baseline": "sasrec", "wins": 3, "ties": 1, "losses": 2}]
    nested = pt.judge_records({"baseline": "ease", "relevance": {"wins": 1, "ties": 0, "losses": 0}, "note": "x"})
    assert nested == [{"aspect": "relevance", "baseline": "ease", "wins": 1, "ties": 0, "losses": 0}]
    assert pt.judge_records(None) == [] and pt.judge_records({"wins": "many"}) == []


def _stage(seconds: float, per_epoch: float | None = None, epochs: int = 0, rss: float = 800.0,
           cached: bool = False) -> dict:
    """One entry of model_info.stages as pagellm/model.py writes it."""
    out = {"cached": cached, "seconds": seconds, "memory": {"peak_rss_mb": rss},
           "parameters": {"total": 220_416, "trainable": 220_416}}
    if per_epoch is not None:
        out.update(seconds_per_epoch=per_epoch, epochs=[{"epoch": i, "seconds": per_epoch} for i in range(epochs)])
    return out


def _backbone_run(root: Path, backbone: str, scale: float, seed: int = 0) -> None:
    """A `backbones` result of pagellm in the format PageLLM writes today (model_info.stages)."""
    path = root / "results" / "runs" / "backbones" / "am-instruments" / "random-s0" / "pagellm" / f"seed{seed}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    stages = {"pretrain": _stage(14.2 * scale, 13.7 * scale, 1), "finetune": _stage(3.5 * scale, 1.1 * scale, 3),
              "lists": _stage(0.5 * scale), "reward-page": _stage(6.9 * scale, 6.7 * scale, 1, cached=True),
              "ppo": _stage(3.9 * scale, 2.6 * scale, 1, rss=848.0 * scale)}
    path.write_text(json.dumps({
        "schema": 1, "preset": "backbones", "dataset": "am-instruments", "model": "pagellm", "seed": seed,
        "split": {"name": "random-s0"}, "config_hash": "c", "config": {"backbone": backbone},
        "metrics": {"recall@20": 0.2 * scale, "ndcg@100": 0.1 * scale},
        "timing": {"fit_seconds": 36.9 * scale, "predict_seconds": 1.4 * scale, "peak_rss_mb": 848.0 * scale},
        "model_info": {"backbone": backbone, "fit_seconds": 36.9 * scale, "stages": stages, "peak_gpu_mb": None,
                       "peak_rss_mb": 848.0 * scale}}))


def test_table3_one_row_per_backbone_and_stages_in_long_format(tmp_path):
    """A smoke-size run gave one row of 22 columns, all bold: now a short row per backbone, stages below."""
    _backbone_run(tmp_path, "tiny", 1.0)
    t3 = pt.build_tables(Workspace.at(tmp_path))["table3_backbones"]
    main, stages = t3.sections
    assert main.headers == ["model", "backbone", "n", *pt.TABLE2_METRICS, "total s", "fine-tuning s/epoch",
                            "peak RAM MB"]  # no GPU recorded: no GPU column
    assert len(main.rows) == 1 and not any(c.bold for c in main.rows[0])  # nothing to be best against
    row = [c.text for c in main.rows[0]]
    assert row[:3] == ["pagellm", "tiny", "1"] and row[-3:] == ["38.3", "1.1", "848"]
    assert stages.title.endswith("· per stage")
    assert stages.headers == ["model", "backbone", "stage", "n", "s", "epochs", "s/epoch", "peak RAM MB",
                              "trainable params", "params", "reused"]
    assert [[c.text for c in r][2:8] for r in stages.rows] == [
        ["pretrain", "1", "14.2", "1", "13.7", "800"], ["finetune", "1", "3.5", "3", "1.1", "800"],
        ["lists", "1", "0.5", "", "", "800"], ["reward-page", "1", "6.9", "1", "6.7", "800"],
        ["ppo", "1", "3.9", "1", "2.6", "848"]]
    assert [r[-1].text for r in stages.rows] == ["no", "no", "no", "yes", "no"]
    assert stages.rows[0][8].text == "220,416"
    tidy = t3.tidy
    ppo = tidy[(tidy["stage"] == "ppo") & (tidy["metric"] == "seconds_per_epoch")].iloc[0]
    assert ppo["mean"] == pytest.approx(2.6) and ppo["backbone"] == "tiny"
    assert tidy[tidy["metric"] == "total_seconds"]["mean"].iloc[0] == pytest.approx(38.3)


def test_table3_two_backbones_lower_cost_in_bold(tmp_path):
    _backbone_run(tmp_path, "gpt2", 1.0)
    _backbone_run(tmp_path, "llama-3.2-1b", 4.0, seed=1)  # one file per (model, seed): the seed tells them apart
    t3 = pt.build_tables(Workspace.at(tmp_path))["table3_backbones"]
    main, stages = t3.sections
    rows = [r for r in main.rows if not r[0].text.startswith("↳")]  # the paper's rows (both backbones are its)
    assert [r[1].text for r in rows] == ["gpt2", "llama-3.2-1b"]
    gpt2, llama = rows
    assert all(c.bold for c in gpt2[-3:]) and not any(c.bold for c in llama[-3:])  # lower cost in bold
    assert llama[3].bold and not gpt2[3].bold  # higher recall in bold
    assert len(stages.rows) == 10 and [r[1].text for r in stages.rows[:5]] == ["gpt2"] * 5


def test_table3_reads_older_cost_fields():
    info = {"stage_seconds": {"pretrain": 120.0, "ppo": 60.0}, "finetune_epoch_seconds": 8.0, "peak_gpu_mb": 10,
            "trainable_params": 5, "total_params": 7}
    stages = pt.stages_of(info)
    assert stages == {"pretrain": {"seconds": 120.0}, "ppo": {"seconds": 60.0}}
    costs = pt.job_costs({"fit_seconds": 300.0, "predict_seconds": 5.0, "peak_rss_mb": 2048.0}, info, stages)
    assert costs == {"total_seconds": 305.0, "finetune_seconds_per_epoch": 8.0, "peak_rss_mb": 2048.0,
                     "peak_gpu_mb": 10.0}
    assert pt.job_costs({}, {}, {}) == {}


# ---------------------------------------------------------------------------------------------
# Reward models and PPO (model_info.reward_accuracy, model_info.ppo_curve)
# ---------------------------------------------------------------------------------------------

def _section(md: str, title_start: str) -> str:
    """The text of the Markdown section whose heading starts with `title_start`, up to the next heading."""
    start = md.index(f"## {title_start}")
    end = md.find("\n## ", start + 1)
    return md[start:end if end > 0 else None]


def test_table1_shows_reward_model_accuracy(rendered):
    t1 = _tidy(rendered, "table1_reward")
    page = _cell(t1, "am-toys", "pagellm", "reward_accuracy.page")
    # seeds 0.79 and 0.81 (make_fixtures: 0.80 -/+ 0.01), 420 held-out pairs
    assert page["mean"] == pytest.approx(0.80) and page["std"] == pytest.approx(0.01 * math.sqrt(2), abs=1e-6)
    assert page["n_seeds"] == 2 and page["n_pairs"] == 420 and not page["below_near_chance"]
    assert _cell(t1, "am-toys", "pagellm", "reward_accuracy.mixed")["mean"] == pytest.approx(0.78)
    mixed = _cell(t1, "am-beauty-2014", "pagellm", "reward_accuracy.mixed")
    assert mixed["mean"] == pytest.approx(0.57) and mixed["n_pairs"] == 800 and mixed["below_near_chance"]
    reward_rows = t1[t1["metric"].str.startswith("reward_accuracy")]
    assert len(reward_rows) == 6 and set(reward_rows["model"]) == {"pagellm"}  # pagellm-sft has no reward model
    md = (rendered / "results" / "tables" / "table1_reward.md").read_text()
    toys = _section(md, "am-toys · split random-s0 · preset paper · reward models")
    assert "| pagellm | 2   | 0.800 ± 0.014 | 0.740 ± 0.014 | 0.780 ± 0.014 | 420 / 380 / 800" in toys
    assert "⚠" not in toys
    beauty = _section(md, "am-beauty-2014 · split random-s0 · preset paper · reward models")
    assert "| 0.580 ± 0.014 ⚠ | 0.550 ± 0.014 ⚠ | 0.570 ± 0.014 ⚠ |" in beauty
    assert "⚠ = held-out pair accuracy below 0.6: the reward model is near chance" in md
    # each block's metric section comes first, its reward models right after it
    assert md.index("## am-beauty-2014 · split random-s0 · preset paper\n") < md.index(
        "## am-beauty-2014 · split random-s0 · preset paper · reward models") < md.index("## am-toys")
    tex = (rendered / "results" / "tables" / "table1_reward.tex").read_text()
    assert "0.570 $\\pm$ 0.014$^{!}$" in tex


def test_reward_models_table_by_family_and_ppo(rendered):
    rm = _tidy(rendered, "reward_models")

    def value(dataset, model, section, metric, reward=""):
        rows = rm[(rm["dataset"] == dataset) & (rm["split"] == "random-s0") & (rm["model"] == model)
                  & (rm["section"] == section) & (rm["metric"] == metric) & (rm["reward"].fillna("") == reward)]
        assert len(rows) == 1, (dataset, model, section, metric, reward)
        return rows.iloc[0]

    ranked = value("am-toys", "pagellm-item", "accuracy", "ranked", "item")  # 0.74 - 0.15
    assert ranked["mean"] == pytest.approx(0.59) and ranked["below_near_chance"] and ranked["n_pairs"] == 380
    preference = value("am-toys", "pagellm", "accuracy", "preference", "mixed")  # 0.78 + 0.08
    assert preference["mean"] == pytest.approx(0.86) and not preference["below_near_chance"]
    assert set(rm.loc[(rm["model"] == "pagellm-page") & (rm["section"] == "accuracy"), "reward"]) == {"page"}
    assert not (rm["model"] == "pagellm-sft").any()  # no reward model, no PPO
    old = value("am-instruments", "pagellm", "accuracy", "all", "page")  # one number per kind: an older result
    assert old["mean"] == pytest.approx(0.81) and math.isnan(old["n_pairs"])
    # PPO, last epoch: am-toys gain 0.19 + 0.02 * seed, Jaccard@20 0.70 - 0.02 * seed;
    # am-beauty-2014 gain -0.02 + 0.02 * seed
    gain = value("am-toys", "pagellm", "ppo", "reward_gain")
    assert gain["mean"] == pytest.approx(0.20) and gain["std"] == pytest.approx(0.02 / math.sqrt(2), abs=1e-6)
    assert value("am-toys", "pagellm", "ppo", "jaccard20_sft")["mean"] == pytest.approx(0.69)
    assert value("am-toys", "pagellm-page", "ppo", "reward_greedy")["mean"] == pytest.approx(0.40)
    assert value("am-beauty-2014", "pagellm", "ppo", "reward_gain")["mean"] == pytest.approx(-0.01)
    assert value("am-toys", "pagellm", "ppo", "epochs")["mean"] == 3
    assert not ((rm["dataset"] == "am-instruments") & (rm["section"] == "ppo")).any()  # no ppo_curve
    md = (rendered / "results" / "tables" / "reward_models.md").read_text()
    beauty = _section(md, "am-beauty-2014 · split random-s0 · preset paper · held-out pair accuracy")
    assert "| pagellm   | mixed    | 2   | 800     | 0.570 ± 0.014 ⚠ |" in beauty
    assert "| pagellm   | 2   | 3        | 0.1200 ± 0.0000       | 0.1100 ± 0.0141 | -0.0100 ± 0.0141" in md
    assert "below 0.6: the reward model is near chance" in md
    assert "[pagellm-item seed 1](ppo/paper/am-toys/random-s0/pagellm-item-seed1.png)" in md
    assert not (rendered / "results" / "tables" / "reward_models.pvalues.csv").exists()  # nothing is tested


def test_one_ppo_figure_per_run_with_a_curve(rendered):
    tables = rendered / "results" / "tables"
    drawn = sorted(p.relative_to(tables).as_posix() for p in (tables / "ppo").rglob("*.png"))
    assert drawn == PPO_PNGS  # none for pagellm-sft, none for the backbones run (no ppo_curve)
    for name in drawn:
        data = (tables / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000, name
    import matplotlib.image as mpimg

    image = mpimg.imread(tables / PPO_PNGS[0])
    assert image.ndim == 3 and image.shape[0] > 400 and image.shape[1] > 600


def test_stale_ppo_figures_removed_and_new_ones_listed(tmp_path):
    shutil.copytree(RUNS, tmp_path / "results" / "runs")
    ws = Workspace.at(tmp_path)
    stale = ws.tables / "ppo" / "old-preset" / "am-toys" / "random-s0" / "pagellm-seed7.png"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(PNG_MAGIC)
    # a run that lost its curve (e.g. rerun with an older model) must lose its figure too
    src = tmp_path / "results" / "runs" / "paper" / "am-beauty-2014" / "random-s0" / "pagellm" / "seed1.json"
    data = json.loads(src.read_text())
    del data["model_info"]["ppo_curve"]
    src.write_text(json.dumps(data))
    paths = pt.write_tables(ws)
    assert not stale.exists() and not (ws.tables / "ppo" / "old-preset").exists()
    expected = [p for p in PPO_PNGS if p != "ppo/paper/am-beauty-2014/random-s0/pagellm-seed1.png"]
    listed = sorted(p.relative_to(ws.tables).as_posix() for p in paths if p.parts[-5:-4] == ("ppo",))
    assert listed == expected
    assert sorted(p.relative_to(ws.tables).as_posix() for p in (ws.tables / "ppo").rglob("*.png")) == expected
    assert all(p.exists() for p in paths)
    rm = pd.read_csv(ws.tables / "reward_models.csv")
    gain = rm[(rm["dataset"] == "am-beauty-2014") & (rm["metric"] == "reward_gain")].iloc[0]
    assert gain["n_seeds"] == 1 and gain["mean"] == pytest.approx(-0.02)  # the seed that kept its curve


def test_reward_fields_parsed_leniently(caplog):
    full = pt.reward_accuracy_of({"page": {"all": 0.8, "n": 10, "ranked": None, "diversity": 0.7}, "item": None,
                                  "mixed": 0.75})
    assert full == {"page": {"all": 0.8, "n": 10.0, "diversity": 0.7}, "mixed": {"all": 0.75}}
    assert pt.reward_accuracy_of(None) == {} and not caplog.records
    assert pt.reward_accuracy_of([0.8], where="r.json") == {} and "r.json" in caplog.text
    curve = pt.ppo_curve_of([{"epoch": 1, "reward_greedy": 0.3, "kl": None}, {"epoch": 0, "reward_greedy": 0.1}])
    assert [r["epoch"] for r in curve] == [0.0, 1.0] and curve[1]["reward_greedy"] == 0.3
    assert math.isnan(curve[1]["kl"]) and math.isnan(curve[0]["clipfrac"])
    assert pt.ppo_curve_of(None) is None and pt.ppo_curve_of({"epoch": 0}) is None
    final = pt._ppo_final(pt.ppo_curve_of([{"epoch": 0, "reward_greedy": 0.1},
                                           {"epoch": 2, "reward_greedy": 0.4, "jaccard20_sft": 0.5}]))
    # no reward_greedy_sft recorded: the fine-tuned lists' reward is epoch 0's reward_greedy
    assert final["reward_gain"] == pytest.approx(0.3) and final["epochs"] == 2 and final["jaccard20_sft"] == 0.5


# ---------------------------------------------------------------------------------------------
# Evidence: runs at settings a preset marks `evidence: false` (smoke) never answer a claim
# ---------------------------------------------------------------------------------------------

def _relabel(runs: Path, src: str, dst: str) -> None:
    """Move the fixture runs of preset `src` to preset `dst` (directory and the `preset` field)."""
    shutil.move(str(runs / src), str(runs / dst))
    for path in (runs / dst).rglob("seed*.json"):
        data = json.loads(path.read_text())
        data["preset"] = dst
        path.write_text(json.dumps(data))


def test_smoke_preset_is_marked_not_evidence():
    from bench.config import load_preset

    assert load_preset("smoke").evidence is False
    assert load_preset("paper").evidence is True
    assert pt.preset_is_evidence("smoke") is False and pt.preset_is_evidence("paper") is True
    assert pt.preset_is_evidence("a-preset-of-mine") is True  # not shipped: nothing says it is not evidence


def test_report_from_smoke_runs_only_says_not_tested(tmp_path):
    """The fixture runs relabelled `smoke`: every claim reads "not tested", none a bold "no" or "yes"."""
    runs = tmp_path / "results" / "runs"
    shutil.copytree(RUNS, runs)
    _relabel(runs, "paper", "smoke")
    _relabel(runs, "backbones", "smoke-backbones")  # any name: stays evidence, but holds no claim's runs
    text = pt.build_report(Workspace.at(tmp_path))
    assert text.count("| **not tested (smoke settings are not evidence)** |") == 5, text
    assert "| **no** |" not in text and "| **yes** |" not in text
    assert "only preset(s) `smoke`, whose settings are not evidence" in text
    # the numbers are still shown, for orientation
    assert "am-beauty-2014 recall@20: pagellm 0.3923 vs sasrec 0.3989" in text


def test_report_answers_from_real_settings_beside_smoke(tmp_path):
    """Smoke runs beside runs at real settings: the answers rest on the real ones alone."""
    runs = tmp_path / "results" / "runs"
    shutil.copytree(RUNS, runs)
    shutil.copytree(RUNS / "paper", runs / "smoke")
    for path in (runs / "smoke").rglob("seed*.json"):  # smoke says pagellm is best everywhere
        data = json.loads(path.read_text())
        data["preset"] = "smoke"
        if data["model"] == "pagellm":
            data["metrics"] = {k: (v * 3 if isinstance(v, float) and k != "wmrd" else v)
                               for k, v in data["metrics"].items()}
        path.write_text(json.dumps(data))
    text = pt.build_report(Workspace.at(tmp_path))
    assert "| 1 | PageLLM is the best model on each dataset (Table 2) | **no** | from preset `paper` |" in text
    assert ("| 2 | The reward helps: pagellm beats pagellm-sft (Table 1) | **no** | preset `reward` has no usable "
            "results; answered from preset(s) `paper` |") in text  # smoke's blocks are not mixed in
    assert "not tested" not in text.split("Notes:")[0].split("| # |")[1]


def test_a_judge_pass_marked_not_evidence_answers_no_claim(tmp_path):
    """`cpu` runs are evidence, but its 4-user judge pass with the offline 135M model is not
    (`judge_evidence: false`): the judge claim reads "not tested", the others are answered."""
    from bench.config import load_preset

    assert load_preset("cpu").evidence is True and load_preset("cpu").judge_evidence is False
    runs = tmp_path / "results" / "runs"
    shutil.copytree(RUNS, runs)
    _relabel(runs, "paper", "cpu")
    text = pt.build_report(Workspace.at(tmp_path))
    assert ("| 5 | The LLM judge prefers PageLLM's pages to the best baseline's (Figure 3) | "
            "**not tested (cpu settings are not evidence)** |") in text
    assert "| 1 | PageLLM is the best model on each dataset (Table 2) | **no** |" in text


def test_judge_figure_shows_n_and_wilson_intervals(rendered):
    """Figure 3's bars come with n in their labels and a 95% Wilson interval on the win share (README)."""
    tidy = _tidy(rendered, "judge_winrate")
    data = pt.judge_figure_data(tidy)
    overall = data[data["aspect"] == "overall"].iloc[0]
    # am-toys pagellm overall, seeds 0 and 1: 34 + 31 wins, 10 + 12 ties, 16 + 17 losses
    assert overall["n"] == 120 and "n = 120" in overall["label"] and "2 seeds" in overall["label"]
    low, high = pt._wilson(65, 120)
    assert overall["win_pct"] == pytest.approx(100 * 65 / 120)
    assert (overall["ci_low_pct"], overall["ci_high_pct"]) == (pytest.approx(100 * low), pytest.approx(100 * high))
    assert (data["ci_low_pct"] <= data["win_pct"]).all() and (data["win_pct"] <= data["ci_high_pct"]).all()
    assert {"ci_low", "ci_high", "n"} <= set(tidy.columns)  # the numbers behind the figure, in its CSV
    png = rendered / "results" / "tables" / "judge_winrate.png"
    assert png.read_bytes().startswith(PNG_MAGIC)
