"""The paper's tables and figures, and the reproduction report, built from result files alone.

    results/runs/**/seed*.json (+ <stem>.per_user.csv.gz)      what `bench run` wrote
      -> load_runs(): one row per result file
      -> build_tables(): Table 1, 2, 3, 5, the cold-start comparison, the judge win rates,
         each with mean ± std over seeds, the best value per column, the paper's number and
         the difference, and paired significance tests over per-user metrics; the reward models'
         held-out pair accuracy (`model_info.reward_accuracy`, also under Table 1) and the PPO
         summary (`model_info.ppo_curve`)
      -> write_tables(): results/tables/<key>.md / .csv / .tex / .pvalues.csv (+ PNG figures, and
         one PNG per PPO run under results/tables/ppo/<preset>/<dataset>/<split>/<model>-seed<k>.png)
      -> write_report(): results/REPORT.md, claim by claim

Decisions (also printed under every table and in the report):

- Recall: the paper's Recall@K is compared with our ``recall_mvae@K`` (hits / min(K, |T|), the
  Multi-VAE / MD-CVAE convention the paper most likely used, see docs/metrics.md). Our standard
  ``recall@K`` (hits / |T|) is shown beside it, without a paper number.
- Significance: two-sided Wilcoxon signed-rank test (scipy.stats.wilcoxon, zero differences
  dropped) over per-user metrics of the users both models scored. With several seeds, each user's
  metric is first averaged over the seeds whose per-user file exists, so every user is one pair
  (pooling user x seed pairs would count a user several times). p-values are Holm-corrected across
  all the comparisons of one table; a cell is marked † when its corrected p < 0.05.
- Reference of the tests: Table 2, the best baseline of the column (highest mean among the
  non-PageLLM models of that dataset and split; lowest for wmrd), marked °; Table 1, pagellm-sft;
  Table 5, pagellm; Table 3, the gpt2 backbone (else the first row); cold start, the same model on
  the full training data.
- Cold-start claim: PageLLM's relative change against another model's, by a paired bootstrap over
  the users every run of the full / cold pair scored (1,000 resamples, seed 0, one resampling per
  pair), Holm-corrected across the comparisons.
- Reward models: a held-out pair accuracy below NEAR_CHANCE (0.6) is marked ⚠ (near chance). The
  PPO summary compares the last epoch's greedy top-20 lists with the fine-tuned policy's (epoch 0).
- Best baseline for the report's claim 1: the same rule as Table 2's reference. The paper's own best
  baseline (printed beside it) uses PAPER_CORRECTIONS.
"""

from __future__ import annotations

import logging
import math
import re
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import cache, lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from bench.io import atomic_path, write_text_atomic
from bench.judge import read_judgement
from bench.paths import Workspace
from bench.results import iter_results
from bench.tables import LOWER_IS_BETTER

logger = logging.getLogger(__name__)

PAPER_DIR = Path(__file__).resolve().parent / "paper"
ALPHA = 0.05
COLD_SUFFIX = "-cold50"
BOOTSTRAP_RESAMPLES = 1000

# ---------------------------------------------------------------------------------------------
# Names: the paper's spelling -> ours
# ---------------------------------------------------------------------------------------------

PAPER_DATASETS = {"am-instruments": "AM-Instruments", "am-sports": "AM-Sports", "am-luxury": "AM-Luxury",
                  "am-beauty": "AM-Beauty", "am-food": "AM-Food", "am-scientific": "AM-Scientific",
                  "am-toys": "AM-Toys"}
PAPER_MODELS = {"multivae": "Multi-VAE", "md-cvae": "MD-CVAE", "lightgcn": "LightGCN", "bert4rec": "BERT4Rec",
                "s3rec": "S3Rec", "unisrec": "UniSRec", "fdsa": "FDSA", "sasrec": "SASRec", "gru4rec": "GRU4Rec",
                "recmind": "RecMind", "hstu": "HSTU", "pagellm": "PageLLM", "pagellm-sft": "w/o Reward",
                "pagellm-item": "Item-level", "pagellm-page": "Page-level"}
PAPER_BACKBONES = {"gpt2": "GPT-2", "llama321b": "Llama3.2-1B"}  # keys: lower-case alphanumerics of ours
# our column -> the paper's column (our standard recall@K has no paper counterpart, see the docstring)
PAPER_METRICS = {"recall_mvae@20": "recall@20", "recall_mvae@40": "recall@40", "ndcg@100": "ndcg@100",
                 "was": "was", "pwkt": "pwkt", "wmrd": "wmrd", "dpa": "dpa", "ild@20": "ild",
                 "entropy@20": "entropy"}
# printed values that are almost surely typos; used only where the report picks the paper's best baseline
PAPER_CORRECTIONS = {("AM-Food", "HSTU", "recall@20"): 0.0949}
# Appendix F / Figure 6: relative change of PageLLM on AM-Toys with half the training data
COLD_START_PAPER = {("AM-Toys", "pagellm"): {"recall_mvae@20": -0.062, "recall_mvae@40": -0.056,
                                             "ndcg@100": -0.223}}

MODEL_ORDER = ["random", "pop", "itemknn", "ease", "multivae", "md-cvae", "lightgcn", "bert4rec", "s3rec",
               "unisrec", "fdsa", "sasrec", "gru4rec", "recmind", "hstu", "pagellm-sft", "pagellm-item",
               "pagellm-page", "pagellm"]
ABLATIONS = ("pagellm-item", "pagellm-page", "pagellm-sft")

TABLE1_METRICS = ["recall@20", "recall_mvae@20", "recall@40", "recall_mvae@40", "ndcg@100", "was", "pwkt",
                  "wmrd", "dpa", "ild@20", "entropy@20"]
TABLE2_METRICS = ["recall@20", "recall_mvae@20", "recall@40", "recall_mvae@40", "ndcg@100"]
COLD_METRICS = TABLE2_METRICS
CLAIM_METRICS = ("recall@20", "recall@40", "ndcg@100")  # what the report's yes/no answers rest on

# model_info.reward_accuracy: {kind: {family: accuracy, "n": pairs}}; kinds and families in display order
REWARD_KINDS = ("page", "item", "mixed")
PAIR_FAMILIES = ("all", "preference", "ranked", "diversity", "on-policy-greedy", "on-policy-sampled")
NEAR_CHANCE = 0.6  # a held-out pair accuracy below this is flagged ⚠
# model_info.ppo_curve: one row per PPO epoch (row 0 = the fine-tuned policy, before any update)
PPO_CURVE_FIELDS = ("reward_greedy_sft", "reward_greedy", "jaccard20_sft", "score", "approx_kl", "clipfrac",
                    "entropy", "vf_loss", "kl", "kl_coef")
PPO_DIR = "ppo"  # results/tables/ppo/<preset>/<dataset>/<split>/<model>-seed<k>.png

PRESET_OF = {"table1_reward": "reward", "table2_baselines": "paper", "table3_backbones": "backbones",
             "table5_ablation": "ablation", "cold_start": "cold-start", "judge_winrate": "judge"}

DEFINITIONS_NOTE = (
    "Metric definitions (docs/metrics.md) differ from the paper's in places: recall@K = hits / |T| (standard); "
    "recall_mvae@K = hits / min(K, |T|), the Multi-VAE convention the paper's Recall most likely follows, so the "
    "paper's Recall@K is printed under recall_mvae@K. was, dpa, wmrd, pwkt (K = 100) are normalised by the sum of "
    "position weights so that a perfect page scores 1; the paper's WAS divides by N and its values (WAS ~0.016, "
    "PWKT ~0.0001) are on another scale, so differences in these columns compare different definitions. "
    "ild@20 / entropy@20 use the Jaccard similarity / shares of category sets (the paper does not say which "
    "similarity it used) and are blank when a dataset has no categories. wmrd: lower is better.")
SIGNIFICANCE_NOTE = (
    "Significance: two-sided Wilcoxon signed-rank test over the per-user metric of the users both runs scored "
    "(each user's value averaged over the seeds with a per-user file), Holm-corrected across all comparisons "
    "of this table; † = corrected p < 0.05. p-values: `{key}.pvalues.csv`.")
NEAR_CHANCE_NOTE = (
    f"⚠ = held-out pair accuracy below {NEAR_CHANCE}: the reward model is near chance (0.5 = a coin flip), so "
    "PPO on its reward optimises little more than noise.")
REWARD_ACCURACY_NOTE = (
    "Reward models: held-out Bradley-Terry pair accuracy (share of held-out preference pairs the reward model "
    "orders correctly; `model_info.reward_accuracy.<kind>.all`), mean ± std over seeds; pairs = held-out pairs "
    "(mean over seeds). Per pair family and variant, with what PPO did to the lists: `reward_models.md`.")
HISTORY_NOTE = (
    "History at test time: every model's lists have train + valid items removed; as input, EASE, ItemKNN, Multi-VAE "
    "(its encoder reads the harness's history row), MD-CVAE, the sequential models (SASRec, GRU4Rec, BERT4Rec, S3Rec, "
    "FDSA, HSTU, UniSRec), RecMind and PageLLM read train + valid; LightGCN reads train only (a user is an embedding "
    "trained on the training graph: it cannot fold in valid without retraining); Pop and Random read none. Multi-VAE "
    "results written before it read the history scored from train only; `bench run` recomputes them (their cache key "
    "changed).")
CELL_NOTE = ("Cells: mean ± std over seeds (n = seeds; a cell without ± rests on one seed, e.g. a metric an older "
             "result file lacks); best per column in bold; rows `↳ paper` = the paper's reported number, `↳ Δ` = "
             "ours − paper.")


def our_dataset_to_paper(dataset: str) -> str | None:
    """am-toys and am-toys-2014 -> "AM-Toys" (the paper's row); other datasets have no paper row."""
    base = dataset[:-len("-2014")] if dataset.endswith("-2014") else dataset
    return PAPER_DATASETS.get(base)


def _backbone_key(backbone: str) -> str:
    """"meta-llama/Llama-3.2-1B" -> "llama321b"; "gpt2" -> "gpt2"."""
    return re.sub(r"[^a-z0-9]", "", str(backbone).rsplit("/", 1)[-1].lower())


@lru_cache(maxsize=None)
def paper_table(name: str) -> pd.DataFrame:
    """One of the paper's tables as transcribed in bench/paper/<name>.csv (the paper's spelling)."""
    return pd.read_csv(PAPER_DIR / f"{name}.csv")


def paper_number(table: str, dataset: str, model: str, metric: str, backbone: str = "",
                 corrected: bool = False) -> float | None:
    """The paper's number for (our dataset, our model, our metric) in its Table `table`, or None."""
    pd_name = our_dataset_to_paper(dataset)
    pm = PAPER_METRICS.get(metric)
    if pd_name is None or pm is None:
        return None
    if table in ("table1_reward", "table5_ablation"):
        df = paper_table(table)
        rows = df[(df["dataset"] == pd_name) & (df["model"] == PAPER_MODELS.get(model))]
        value = rows[pm].iloc[0] if len(rows) and pm in rows else None
    elif table == "table2_baselines":
        df = paper_table(table)
        col = PAPER_MODELS.get(model)
        rows = df[(df["dataset"] == pd_name) & (df["metric"] == pm)]
        value = rows[col].iloc[0] if len(rows) and col in df.columns else None
        if corrected and (pd_name, col, pm) in PAPER_CORRECTIONS:
            value = PAPER_CORRECTIONS[(pd_name, col, pm)]
    elif table == "table3_backbones":
        col = PAPER_BACKBONES.get(_backbone_key(backbone)) if model == "pagellm" else None
        df = paper_table(table)
        rows = df[(df["category"] == "performance") & (df["metric"] == pm)]
        value = rows[col].iloc[0] if pd_name == "AM-Instruments" and len(rows) and col in df.columns else None
    else:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


def paper_costs_note() -> str:
    df = paper_table("table3_backbones")
    parts = []
    for col in df.columns[2:]:
        items = [f"{r['metric']} {r[col]}" for _, r in df[df["category"] != "performance"].iterrows()]
        parts.append(f"{col}: " + ", ".join(items))
    return ("The paper's costs (AM-Instruments, its own hardware; not comparable with this machine's): "
            + "; ".join(parts) + ".")


# ---------------------------------------------------------------------------------------------
# Loading result files
# ---------------------------------------------------------------------------------------------

# Table 3: the job's costs (key, header), then one row per stage with these fields (key, header)
JOB_COSTS = [("total_seconds", "total s"), ("finetune_seconds_per_epoch", "fine-tuning s/epoch"),
             ("peak_rss_mb", "peak RAM MB"), ("peak_gpu_mb", "peak GPU MB")]
STAGE_FIELDS = [("seconds", "s"), ("epochs", "epochs"), ("seconds_per_epoch", "s/epoch"),
                ("peak_rss_mb", "peak RAM MB"), ("peak_gpu_mb", "peak GPU MB"), ("trainable", "trainable params"),
                ("total", "params")]


def stages_of(info: dict) -> dict[str, dict[str, float]]:
    """`model_info.stages` (pagellm/model.py) -> {stage: {field: number}}, stages in the order they ran.

    Fields (those recorded): seconds, seconds_per_epoch, epochs (how many ran), peak_rss_mb / peak_gpu_mb
    (the stage's `memory`), trainable / total (its `parameters`), reused (1.0 when the stage was reused from
    an earlier run: its seconds are those it took then). Older results hold `stage_seconds` {stage: seconds}.
    """
    stages = info.get("stages")
    if not isinstance(stages, dict):
        old = info.get("stage_seconds")
        return {str(k): {"seconds": float(v)} for k, v in old.items() if _number(v) is not None} \
            if isinstance(old, dict) else {}
    out: dict[str, dict[str, float]] = {}
    for name, record in stages.items():
        if not isinstance(record, dict):
            continue
        memory = record.get("memory") if isinstance(record.get("memory"), dict) else {}
        params = record.get("parameters") if isinstance(record.get("parameters"), dict) else {}
        epochs = record.get("epochs")
        values = {"seconds": record.get("seconds"), "seconds_per_epoch": record.get("seconds_per_epoch"),
                  "epochs": len(epochs) if isinstance(epochs, list) else epochs,
                  "peak_rss_mb": memory.get("peak_rss_mb"), "peak_gpu_mb": memory.get("peak_gpu_mb"),
                  "trainable": params.get("trainable"), "total": params.get("total")}
        row = {k: float(v) for k, v in values.items() if _number(v) is not None}
        if isinstance(record.get("cached"), bool):
            row["reused"] = float(record["cached"])
        out[str(name)] = row
    return out


def job_costs(timing: dict, info: dict, stages: dict[str, dict[str, float]]) -> dict[str, float]:
    """Table 3's costs of one result, the keys of JOB_COSTS that it recorded.

    total_seconds: the job's fit + predict wall time (`timing`; else `model_info.fit_seconds`);
    finetune_seconds_per_epoch: stage `finetune` (older results: `model_info.finetune_epoch_seconds`);
    peak_rss_mb / peak_gpu_mb: the job's peak (`timing`, else `model_info`).
    """
    out: dict[str, float] = {}
    fit = _number(timing.get("fit_seconds"))
    fit = _number(info.get("fit_seconds")) if fit is None else fit
    if fit is not None:
        out["total_seconds"] = fit + (_number(timing.get("predict_seconds")) or 0.0)
    per_epoch = stages.get("finetune", {}).get("seconds_per_epoch", _number(info.get("finetune_epoch_seconds")))
    if per_epoch is not None:
        out["finetune_seconds_per_epoch"] = per_epoch
    for name in ("peak_rss_mb", "peak_gpu_mb"):
        value = _number(timing.get(name))
        value = _number(info.get(name)) if value is None else value
        if value is not None:
            out[name] = value
    return out


def reward_accuracy_of(value: object, where: Path | str = "?") -> dict[str, dict[str, float]]:
    """`model_info.reward_accuracy` -> {kind: {family: accuracy, "n": pairs}}; {} when absent.

    Expected input (pagellm/model.py): ``{"page": {"all": 0.81, "n": 420, "preference": 0.9, ...},
    "item": {...}, "mixed": {...}}``, only the kinds the variant used, or null (pagellm-sft). Older
    results hold one number per kind (``{"page": 0.81}``): read as that kind's "all".
    """
    if not isinstance(value, dict):
        if value is not None:
            logger.warning("%s: model_info.reward_accuracy is not a mapping: left out of the tables", where)
        return {}
    out: dict[str, dict[str, float]] = {}
    for kind, acc in value.items():
        if _number(acc) is not None:
            out[str(kind)] = {"all": float(acc)}
        elif isinstance(acc, dict):
            out[str(kind)] = {str(k): float(v) for k, v in acc.items() if _number(v) is not None}
        elif acc is not None:
            logger.warning("%s: model_info.reward_accuracy.%s is neither a number nor a mapping: left out",
                           where, kind)
    return out


def ppo_curve_of(value: object, where: Path | str = "?") -> list[dict[str, float]] | None:
    """`model_info.ppo_curve` -> its rows sorted by epoch, each field a float (NaN when null); None
    when absent (pagellm-sft, results written before it existed) or not a list of mappings."""
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(r, dict) for r in value) or not value:
        logger.warning("%s: model_info.ppo_curve is not a list of per-epoch mappings: no PPO summary or figure",
                       where)
        return None
    rows = []
    for i, r in enumerate(value):
        epoch = _number(r.get("epoch"))
        row = {"epoch": float(i if epoch is None else epoch)}
        for name in PPO_CURVE_FIELDS:
            v = _number(r.get(name))
            row[name] = math.nan if v is None else v
        rows.append(row)
    return sorted(rows, key=lambda r: r["epoch"])


def _number(value: object) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def load_runs(ws: Workspace, preset: str | None = None) -> pd.DataFrame:
    """One row per result file: identifiers, metrics (NaN when missing), costs, stages and judge counts.

    Only `schema, preset, dataset, model, seed, split, metrics, config_hash` are required; `config`,
    `timing`, `model_info` and `per_user` are optional, so results written before they existed load.
    Columns: preset, dataset, split, model, entry, backbone, seed, path, per_user_path, costs (dict, see
    job_costs), stages (dict, see stages_of), judge (dict or None: `model_info.judge`, else the `.judge.json`
    beside the file), reward_accuracy (dict, see reward_accuracy_of), ppo_curve (list or None, see
    ppo_curve_of), then one column per metric.
    """
    rows = []
    base = ws.runs / preset if preset else ws.runs
    if not base.exists():
        return pd.DataFrame()
    for path, r in iter_results(ws, preset):
        split = r["split"]
        info = r.get("model_info") if isinstance(r.get("model_info"), dict) else {}
        config = r.get("config") if isinstance(r.get("config"), dict) else {}
        backbone = config.get("backbone") or info.get("backbone") or ""
        timing = r.get("timing") if isinstance(r.get("timing"), dict) else {}
        stages = stages_of(info)
        per_user = r.get("per_user")
        row = {"preset": r["preset"], "dataset": r["dataset"],
               "split": split.get("name", "?") if isinstance(split, dict) else str(split),
               "model": r["model"], "backbone": str(backbone), "seed": int(r["seed"]), "path": str(path),
               "per_user_path": str(path.parent / per_user) if per_user else None,
               "costs": job_costs(timing, info, stages), "stages": stages,
               "judge": info.get("judge") or read_judgement(path),
               "reward_accuracy": reward_accuracy_of(info.get("reward_accuracy"), path),
               "ppo_curve": ppo_curve_of(info.get("ppo_curve"), path)}
        for name, value in (r["metrics"] or {}).items():
            row[name] = float(value) if isinstance(value, (int, float)) else math.nan
        rows.append(row)
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    # A model run with several backbones in one block becomes one row per backbone.
    keys = ["preset", "split", "dataset", "model"]
    several = frame.groupby(keys)["backbone"].transform("nunique") > 1
    frame["entry"] = np.where(several, frame["model"] + " [" + frame["backbone"] + "]", frame["model"])
    return frame


def _model_rank(model: str) -> tuple[float, str]:
    # models this module does not know go after the paper's baselines, before the PageLLM variants
    return (MODEL_ORDER.index(model) if model in MODEL_ORDER else MODEL_ORDER.index("pagellm-sft") - 0.5, model)


def _dataset_rank(dataset: str) -> tuple[int, str]:
    paper = list(PAPER_DATASETS.values())
    name = our_dataset_to_paper(dataset)
    return (paper.index(name) if name else len(paper), dataset)


def is_pagellm(model: str) -> bool:
    return model == "pagellm" or model.startswith("pagellm-")


class PerUser:
    """Per-user metric files, read on demand: one run (an entry's seeds) at a time, averaged over seeds.

    The last `max_runs` runs are kept (float32, numeric columns only): enough for every entry of a
    block, bounded for paper-size datasets (~300k users per file).
    """

    def __init__(self, max_runs: int = 32) -> None:
        self._cache: OrderedDict[tuple[str, ...], pd.DataFrame | None] = OrderedDict()
        self.max_runs = max_runs

    def frame(self, paths: list[str | None]) -> pd.DataFrame | None:
        """users x metrics (index user_id), each user's value averaged over the files that have it."""
        key = tuple(p for p in paths if p)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        frames = []
        for path in key:
            try:
                df = pd.read_csv(path, dtype={"user_id": str})
            except (OSError, ValueError) as exc:
                logger.warning("per-user file %s unreadable (%s): left out of the tests", path, exc)
                continue
            if "user_id" not in df.columns:
                logger.warning("per-user file %s has no user_id column: left out of the tests", path)
                continue
            frames.append(df.drop_duplicates("user_id").set_index("user_id").select_dtypes("number")
                          .astype("float32"))
        if not frames:
            out = None
        elif len(frames) == 1:
            out = frames[0]
        else:
            out = pd.concat(frames).groupby(level=0).mean()
        self._cache[key] = out
        while len(self._cache) > self.max_runs:
            self._cache.popitem(last=False)
        return out

    def series(self, paths: list[str | None], metric: str) -> pd.Series | None:
        df = self.frame(paths)
        return None if df is None or metric not in df.columns else df[metric]


def paired_test(a: pd.Series | None, b: pd.Series | None) -> dict:
    """Two-sided Wilcoxon signed-rank test of a - b over the users both have (NaN pairs dropped)."""
    from scipy.stats import wilcoxon

    if a is None or b is None:
        return {"n_users": 0, "mean_diff": math.nan, "statistic": math.nan, "p": math.nan,
                "note": "no per-user file"}
    joined = pd.concat([a.rename("a"), b.rename("b")], axis=1, join="inner").dropna()
    d = (joined["a"] - joined["b"]).to_numpy(dtype=float)
    out = {"n_users": len(d), "mean_diff": float(d.mean()) if len(d) else math.nan, "statistic": math.nan,
           "p": math.nan, "note": ""}
    if len(d) == 0:
        out["note"] = "no common users"
    elif not np.any(np.abs(d) > 1e-12):
        out.update(p=1.0, note="identical per-user values")
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = wilcoxon(d, zero_method="wilcox", alternative="two-sided")
        out.update(statistic=float(res.statistic), p=float(res.pvalue))
    return out


def holm(pvalues) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values; NaN entries stay NaN and do not count."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    if len(ok):
        order = ok[np.argsort(p[ok], kind="stable")]
        m = len(order)
        adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
        out[order] = adjusted
    return out


# ---------------------------------------------------------------------------------------------
# A table as data, and its Markdown / LaTeX renderings
# ---------------------------------------------------------------------------------------------

@dataclass
class Cell:
    text: str = ""
    bold: bool = False
    sig: bool = False  # † significantly different from the reference (Holm-corrected)
    ref: bool = False  # ° the reference of the tests in this column
    low: bool = False  # ⚠ a reward model's held-out pair accuracy below NEAR_CHANCE

    def markdown(self) -> str:
        if not self.text:
            return ""
        text = f"**{self.text}**" if self.bold else self.text
        return text + ("†" if self.sig else "") + ("°" if self.ref else "") + (" ⚠" if self.low else "")

    def latex(self) -> str:
        if not self.text:
            return ""
        text = _latex_escape(self.text)
        text = f"\\textbf{{{text}}}" if self.bold else text
        return (text + ("$^\\dagger$" if self.sig else "") + ("$^\\circ$" if self.ref else "")
                + ("$^{!}$" if self.low else ""))


def _latex_escape(text: str) -> str:
    for a, b in (("\\", "\\textbackslash{}"), ("&", "\\&"), ("%", "\\%"), ("#", "\\#"), ("_", "\\_"),
                 ("±", "$\\pm$"), ("↳ ", "\\quad "), ("Δ", "$\\Delta$"), ("−", "-"), ("·", "$\\cdot$"),
                 ("→", "$\\rightarrow$"), ("⚠", "$^{!}$")):
        text = text.replace(a, b)
    return text


@dataclass
class Section:
    title: str
    headers: list[str]
    rows: list[list[Cell]]
    footer: str = ""  # Markdown only, under the table (e.g. links to figures)


@dataclass
class Table:
    key: str  # file stem under results/tables/
    title: str
    description: str
    notes: list[str] = field(default_factory=list)
    sections: list[Section] = field(default_factory=list)
    stub: str | None = None  # set when there is nothing to show: what to run
    tidy: pd.DataFrame = field(default_factory=pd.DataFrame)
    pvalues: pd.DataFrame = field(default_factory=pd.DataFrame)
    figure: str | None = None  # file name of its PNG, when one was drawn
    figures: list[str] = field(default_factory=list)  # further PNGs drawn, relative to results/tables/
    tested: bool = True  # False: no significance tests, so no .pvalues.csv
    blocks: list = field(default_factory=list)  # the numbers, for the report

    def markdown(self) -> str:
        from tabulate import tabulate

        parts = [f"# {self.title}", "", self.description, ""]
        if self.stub:
            parts += [f"**Not run yet.** {self.stub}", ""]
        parts += [f"- {n}" for n in self.notes] + [""]
        if self.figure:
            parts += [f"![{self.title}]({self.figure})", ""]
        for s in self.sections:
            rows = [[c.markdown() for c in r] for r in s.rows]
            parts += [f"## {s.title}", "", tabulate(rows, headers=s.headers, tablefmt="github",
                                                    disable_numparse=True), ""]
            if s.footer:
                parts += [s.footer, ""]
        return "\n".join(parts).rstrip() + "\n"

    def latex(self) -> str:
        parts = [f"% {self.title} -- generated by `bench table` from result files alone",
                 "% needs \\usepackage{booktabs}"]
        if self.stub:
            parts.append(f"% Not run yet. {self.stub}")
        for s in self.sections:
            cols = "l" + "r" * (len(s.headers) - 1)
            parts += ["\\begin{table}[t]", "\\centering", "\\small",
                      f"\\caption{{{_latex_escape(self.title)}: {_latex_escape(s.title)}}}",
                      f"\\begin{{tabular}}{{{cols}}}", "\\toprule",
                      " & ".join(_latex_escape(h) for h in s.headers) + " \\\\", "\\midrule"]
            parts += [" & ".join(c.latex() for c in r) + " \\\\" for r in s.rows]
            parts += ["\\bottomrule", "\\end{tabular}", "\\end{table}", ""]
        return "\n".join(parts).rstrip() + "\n"


def _fmt(value: float, digits: int = 4) -> str:
    return "" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _fmt_signed(value: float, digits: int = 4) -> str:
    return "" if value is None or math.isnan(value) else f"{value:+.{digits}f}"


def _fmt_cost(value: float) -> str:
    """Seconds or MB: whole numbers from 100 up, one decimal below."""
    if value is None or math.isnan(value):
        return ""
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.1f}"


def _mean_std(mean: float, std: float, fmt=_fmt) -> str:
    if mean is None or math.isnan(mean):
        return ""
    return fmt(mean) + ("" if std is None or math.isnan(std) else f" ± {fmt(std)}")


# ---------------------------------------------------------------------------------------------
# Blocks: one (preset, split, dataset) with the rows (entries) that have results
# ---------------------------------------------------------------------------------------------

@dataclass
class Block:
    preset: str
    split: str
    dataset: str
    entries: list[str]
    frame: pd.DataFrame  # the result rows of those entries
    refs: dict[str, str | None] = field(default_factory=dict)  # metric -> reference entry of the tests
    tested: dict[str, list[str]] = field(default_factory=dict)  # metric -> entries tested against it
    paper: dict[tuple[str, str], float] = field(default_factory=dict)  # (entry, metric) -> paper number
    sig: set = field(default_factory=set)  # {(entry, metric)}
    _rows: dict = field(default_factory=dict, repr=False)

    @property
    def title(self) -> str:
        return f"{self.dataset} · split {self.split} · preset {self.preset}"

    def rows_of(self, entry: str) -> pd.DataFrame:
        if entry not in self._rows:
            self._rows[entry] = self.frame[self.frame["entry"] == entry]
        return self._rows[entry]

    def model_of(self, entry: str) -> str:
        return self.rows_of(entry)["model"].iloc[0]

    def backbone_of(self, entry: str) -> str:
        return self.rows_of(entry)["backbone"].iloc[0]

    def stat(self, entry: str, metric: str) -> tuple[float, float, int]:
        rows = self.rows_of(entry)
        if metric not in rows.columns:
            return math.nan, math.nan, 0
        values = rows[metric].dropna()
        if values.empty:
            return math.nan, math.nan, 0
        return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else math.nan, len(values)

    def cost(self, entry: str, name: str) -> tuple[float, float, int]:
        values = pd.Series([c.get(name, math.nan) for c in self.rows_of(entry)["costs"]], dtype=float).dropna()
        if values.empty:
            return math.nan, math.nan, 0
        return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else math.nan, len(values)

    def best(self, metric: str, among: list[str] | None = None) -> tuple[str | None, float]:
        means = {e: self.stat(e, metric)[0] for e in (among if among is not None else self.entries)}
        means = {e: m for e, m in means.items() if not math.isnan(m)}
        if not means:
            return None, math.nan
        pick = min if metric in LOWER_IS_BETTER else max
        entry = pick(means, key=lambda e: means[e])
        return entry, means[entry]

    def per_user_paths(self, entry: str) -> list[str | None]:
        return list(self.rows_of(entry)["per_user_path"])


def _blocks(frame: pd.DataFrame, *, cold: bool) -> list[tuple[tuple[str, str, str], pd.DataFrame]]:
    if frame.empty:
        return []
    is_cold = frame["split"].str.endswith(COLD_SUFFIX)
    frame = frame[is_cold] if cold else frame[~is_cold]
    keys = sorted(frame.groupby(["preset", "split", "dataset"]).groups,
                  key=lambda k: (k[0], k[1], _dataset_rank(k[2])))
    return [(k, frame[(frame["preset"] == k[0]) & (frame["split"] == k[1]) & (frame["dataset"] == k[2])])
            for k in keys]


def _ordered_entries(sub: pd.DataFrame, keep) -> list[str]:
    model_of = dict(zip(sub["entry"], sub["model"]))
    return sorted((e for e, m in model_of.items() if keep(m)), key=lambda e: (_model_rank(model_of[e]), e))


def _run_tests(table_key: str, blocks: list[Block], per_user: PerUser) -> pd.DataFrame:
    """Every (entry vs reference) comparison of a table, Holm-corrected together; marks Block.sig."""
    records = []
    for b in blocks:
        for metric, ref in b.refs.items():
            if ref is None:
                continue
            ref_series = per_user.series(b.per_user_paths(ref), metric)
            for entry in b.tested.get(metric, []):
                if math.isnan(b.stat(entry, metric)[0]):
                    continue
                res = paired_test(per_user.series(b.per_user_paths(entry), metric), ref_series)
                records.append({"table": table_key, "preset": b.preset, "split": b.split, "dataset": b.dataset,
                                "metric": metric, "model": entry, "reference": ref,
                                "mean_model": b.stat(entry, metric)[0], "mean_reference": b.stat(ref, metric)[0],
                                "test": "wilcoxon signed-rank (two-sided)", **res})
    columns = ["table", "preset", "split", "dataset", "metric", "model", "reference", "mean_model",
               "mean_reference", "test", "n_users", "mean_diff", "statistic", "p", "note"]
    out = pd.DataFrame(records, columns=columns)
    out["p_holm"] = holm(out["p"])
    out["significant"] = out["p_holm"] < ALPHA
    by_key = {(b.preset, b.split, b.dataset): b for b in blocks}
    for _, r in out[out["significant"]].iterrows():
        by_key[(r["preset"], r["split"], r["dataset"])].sig.add((r["model"], r["metric"]))
    return out


def _best_of(values: list[float], lower: bool) -> float:
    """The best of the values a column has, or NaN when fewer than two entries have one (nothing to beat)."""
    values = [v for v in values if not math.isnan(v)]
    if len(values) < 2:
        return math.nan
    return min(values) if lower else max(values)


def _metric_table(table: Table, blocks: list[Block], metrics: list[str], *, label_backbone: bool = False,
                  costs: list[tuple[str, str]] | None = None) -> None:
    """Fill the sections and the tidy frame of a table of mean ± std cells with paper and Δ rows.

    costs: (key of Block.cost, header) columns after the metrics, those any entry of the block recorded;
    lower is better. Bold marks the best of a column only when at least two entries have a value."""
    tidy = []
    for b in blocks:
        shown = [(c, h) for c, h in costs or [] if any(not math.isnan(b.cost(e, c)[0]) for e in b.entries)]
        headers = ["model"] + (["backbone"] if label_backbone else []) + ["n"] + metrics + [h for _, h in shown]
        best = {m: _best_of([b.stat(e, m)[0] for e in b.entries], m in LOWER_IS_BETTER) for m in metrics}
        best_cost = {c: _best_of([b.cost(e, c)[0] for e in b.entries], True) for c, _ in shown}
        refs_marked = {(ref, m) for m, ref in b.refs.items() if ref is not None and table.key == "table2_baselines"}
        rows = []
        for e in b.entries:
            n_seeds = b.rows_of(e)["seed"].nunique()
            lead = [Cell(e)] + ([Cell(b.backbone_of(e))] if label_backbone else []) + [Cell(str(n_seeds))]
            cells = []
            for m in metrics:
                mean, std, n = b.stat(e, m)
                cells.append(Cell(_mean_std(mean, std), bold=mean == best[m], sig=(e, m) in b.sig,
                                  ref=(e, m) in refs_marked))
                paper = b.paper.get((e, m))
                tidy.append({"table": table.key, "preset": b.preset, "split": b.split, "dataset": b.dataset,
                             "model": e, "backbone": b.backbone_of(e), "metric": m, "mean": mean, "std": std,
                             "n_seeds": n, "best": mean == best[m],
                             "reference": b.refs.get(m), "significant": (e, m) in b.sig,
                             "paper": paper, "diff_vs_paper": mean - paper if paper is not None else math.nan})
            for c, _ in shown:
                mean, std, n = b.cost(e, c)
                cells.append(Cell(_mean_std(mean, std, _fmt_cost), bold=mean == best_cost[c]))
                tidy.append({"table": table.key, "preset": b.preset, "split": b.split, "dataset": b.dataset,
                             "model": e, "backbone": b.backbone_of(e), "metric": c, "mean": mean, "std": std,
                             "n_seeds": n, "best": mean == best_cost[c]})
            rows.append(lead + cells)
            papers = [b.paper.get((e, m)) for m in metrics]
            if any(p is not None for p in papers):
                blank_lead, blank_costs = [Cell()] * (len(lead) - 1), [Cell()] * len(shown)
                rows.append([Cell("↳ paper")] + blank_lead
                            + [Cell(_fmt(p) if p is not None else "") for p in papers] + blank_costs)
                rows.append([Cell("↳ Δ")] + blank_lead
                            + [Cell(_fmt_signed(b.stat(e, m)[0] - p) if p is not None else "")
                               for m, p in zip(metrics, papers)] + blank_costs)
        table.sections.append(Section(b.title, headers, rows))
    table.tidy = pd.DataFrame(tidy)


def _stage_section(b: Block) -> tuple[Section, list[dict]]:
    """Table 3's per-stage detail of a block: one row per (entry, stage), in the order the stages ran."""
    names: list[str] = []
    for stages in b.frame["stages"]:
        names += [s for s in stages if s not in names]
    present = [(f, h) for f, h in STAGE_FIELDS if any(f in st for stages in b.frame["stages"] for st in stages.values())]
    with_reused = any("reused" in st for stages in b.frame["stages"] for st in stages.values())
    rows, tidy = [], []
    for e in b.entries:
        runs = b.rows_of(e)
        for stage in names:
            records = [stages[stage] for stages in runs["stages"] if stage in stages]
            if not records:
                continue
            cells = [Cell(e), Cell(b.backbone_of(e)), Cell(stage), Cell(str(len(records)))]
            for name, _ in present:
                values = pd.Series([r.get(name, math.nan) for r in records], dtype=float).dropna()
                mean = float(values.mean()) if len(values) else math.nan
                std = float(values.std(ddof=1)) if len(values) > 1 and name not in ("trainable", "total") else math.nan
                fmt = (lambda v: f"{v:,.0f}") if name in ("trainable", "total") else (
                    (lambda v: f"{v:g}") if name == "epochs" else _fmt_cost)
                cells.append(Cell(_mean_std(mean, std, fmt)))
                tidy.append({"table": "table3_backbones", "preset": b.preset, "split": b.split, "dataset": b.dataset,
                             "model": e, "backbone": b.backbone_of(e), "stage": stage, "metric": name, "mean": mean,
                             "std": std, "n_seeds": len(values)})
            if with_reused:
                reused = [r["reused"] for r in records if "reused" in r]
                cells.append(Cell("" if not reused else "yes" if all(reused) else "no" if not any(reused)
                                  else "some seeds"))
            rows.append(cells)
    headers = ["model", "backbone", "stage", "n"] + [h for _, h in present] + (["reused"] if with_reused else [])
    return Section(f"{b.title} · per stage", headers, rows), tidy


# ---------------------------------------------------------------------------------------------
# The tables
# ---------------------------------------------------------------------------------------------

def _with_paper(b: Block, table_key: str, metrics: list[str]) -> Block:
    for e in b.entries:
        for m in metrics:
            value = paper_number(table_key, b.dataset, b.model_of(e), m, b.backbone_of(e))
            if value is not None:
                b.paper[(e, m)] = value
    return b


def table1(frame: pd.DataFrame, per_user: PerUser) -> Table:
    key = "table1_reward"
    t = Table(key, "Table 1 · reward vs no reward (pagellm vs pagellm-sft)",
              "PageLLM with the mixed-grained reward (`pagellm`) against the same model after supervised "
              "fine-tuning only (`pagellm-sft`, the paper's \"w/o Reward\"), all nine metrics. † compares "
              "`pagellm` with `pagellm-sft`.",
              notes=[CELL_NOTE, DEFINITIONS_NOTE, SIGNIFICANCE_NOTE.format(key=key), REWARD_ACCURACY_NOTE,
                     NEAR_CHANCE_NOTE])
    blocks = []
    for (preset, split, dataset), sub in _blocks(frame, cold=False):
        if "pagellm-sft" not in set(sub["model"]):
            continue
        entries = sorted(_ordered_entries(sub, lambda m: m in ("pagellm", "pagellm-sft")),
                         key=lambda e: sub[sub["entry"] == e]["model"].iloc[0] != "pagellm")  # the paper's order
        b = _with_paper(Block(preset, split, dataset, entries, sub[sub["entry"].isin(entries)]), key, TABLE1_METRICS)
        refs = [e for e in entries if b.model_of(e) == "pagellm-sft"]
        for m in TABLE1_METRICS:
            b.refs[m] = refs[0]
            b.tested[m] = [e for e in entries if b.model_of(e) == "pagellm"]
        blocks.append(b)
    _finish(t, blocks, per_user, TABLE1_METRICS,
            "Run `bench run --preset reward` (pagellm and pagellm-sft on the seven categories).")
    if blocks:
        # each block's metric section is followed by the accuracy of the reward models behind its pagellm
        sections, tidy = [], [t.tidy]
        for section, b in zip(t.sections, blocks):
            extra, rows = _table1_reward_section(b)
            sections += [section, extra]
            tidy.append(pd.DataFrame(rows))
        t.sections = sections
        t.tidy = pd.concat(tidy, ignore_index=True)
    return t


def _accuracy(rows: pd.DataFrame, kind: str, family: str = "all") -> tuple[float, float, int, float]:
    """(mean, std, seeds, mean held-out pairs) of one reward model's accuracy over the result rows."""
    accs = [a[kind] for a in rows["reward_accuracy"] if kind in a]
    values = pd.Series([a.get(family, math.nan) for a in accs], dtype=float).dropna()
    pairs = pd.Series([a.get("n", math.nan) for a in accs], dtype=float).dropna()
    if values.empty:
        return math.nan, math.nan, 0, math.nan
    return (float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else math.nan, len(values),
            float(pairs.mean()) if len(pairs) else math.nan)


def _fmt_pairs(value: float) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.0f}"


def _accuracy_cell(mean: float, std: float) -> Cell:
    return Cell(_mean_std(mean, std, lambda v: _fmt(v, 3)), low=not math.isnan(mean) and mean < NEAR_CHANCE)


def _table1_reward_section(b: Block) -> tuple[Section, list[dict]]:
    """Held-out pair accuracy of the page / item / mixed reward models of the block's pagellm runs."""
    rows, tidy = [], []
    for e in [e for e in b.entries if b.model_of(e) == "pagellm"]:
        runs = b.rows_of(e)
        stats = {kind: _accuracy(runs, kind) for kind in REWARD_KINDS}
        lead = [Cell(e), Cell(str(runs["seed"].nunique()))]
        if not any(n for _, _, n, _ in stats.values()):
            rows.append(lead + [Cell("not recorded")] + [Cell()] * len(REWARD_KINDS))
            continue
        rows.append(lead + [_accuracy_cell(mean, std) for mean, std, _, _ in stats.values()]
                    + [Cell(" / ".join(_fmt_pairs(pairs) for _, _, _, pairs in stats.values()))])
        for kind, (mean, std, n, pairs) in stats.items():
            if n:
                tidy.append({"table": "table1_reward", "preset": b.preset, "split": b.split, "dataset": b.dataset,
                             "model": e, "backbone": b.backbone_of(e), "metric": f"reward_accuracy.{kind}",
                             "mean": mean, "std": std, "n_seeds": n, "n_pairs": pairs,
                             "below_near_chance": mean < NEAR_CHANCE})
    headers = ["model", "n", *REWARD_KINDS, "pairs (" + " / ".join(REWARD_KINDS) + ")"]
    return Section(f"{b.title} · reward models (held-out pair accuracy)", headers, rows), tidy


def table2(frame: pd.DataFrame, per_user: PerUser) -> Table:
    key = "table2_baselines"
    t = Table(key, "Table 2 · all models x datasets",
              "Every model with results, per dataset. † compares a model with the column's best baseline "
              "(highest mean among the non-PageLLM models of that dataset and split; lowest for wmrd), marked °.",
              notes=[CELL_NOTE, DEFINITIONS_NOTE, SIGNIFICANCE_NOTE.format(key=key),
                     HISTORY_NOTE,
                     "The paper prints AM-Food HSTU recall@20 as 0.949 (almost surely 0.0949); shown as printed."])
    blocks = []
    for (preset, split, dataset), sub in _blocks(frame, cold=False):
        entries = _ordered_entries(sub, lambda m: True)
        b = _with_paper(Block(preset, split, dataset, entries, sub), key, TABLE2_METRICS)
        baselines = [e for e in entries if not is_pagellm(b.model_of(e))]
        for m in TABLE2_METRICS:
            ref = b.best(m, baselines)[0] if baselines else None
            b.refs[m] = ref
            b.tested[m] = [e for e in entries if e != ref]
        blocks.append(b)
    return _finish(t, blocks, per_user, TABLE2_METRICS,
                   "Run `bench run --preset paper` (the seven categories x all models).")


def table3(frame: pd.DataFrame, per_user: PerUser) -> Table:
    key = "table3_backbones"
    t = Table(key, "Table 3 · PageLLM backbones: performance, time, memory",
              "PageLLM per backbone, one row each: the metrics, then the job's costs: total s = wall time of "
              "training and recommending (`timing.fit_seconds + predict_seconds`), fine-tuning s/epoch = the "
              "`finetune` stage's time per epoch, peak RAM MB = the job's peak process memory (RSS), peak GPU MB "
              "= its peak CUDA memory (shown when a run recorded it). Below each block, one row per backbone and "
              "stage (`model_info.stages`): wall time, epochs, time per epoch, peak memory, parameters, and "
              "whether the stage was reused from an earlier run with the same inputs (its time is then the time "
              "it took when it was computed, not part of this job's total). With two or more backbones the "
              "better value of a column is in bold (costs: lower). † compares a backbone with gpt2 (else the "
              "first row).",
              notes=[CELL_NOTE, DEFINITIONS_NOTE, SIGNIFICANCE_NOTE.format(key=key), paper_costs_note()])
    blocks = []
    for (preset, split, dataset), sub in _blocks(frame, cold=False):
        entries = _ordered_entries(sub, lambda m: is_pagellm(m) and m not in ABLATIONS)
        if not entries:
            continue
        b = _with_paper(Block(preset, split, dataset, entries, sub[sub["entry"].isin(entries)]), key,
                        TABLE2_METRICS)
        gpt2 = [e for e in entries if _backbone_key(b.backbone_of(e)) == "gpt2"]
        ref = (gpt2 or entries)[0]
        for m in TABLE2_METRICS:
            b.refs[m] = ref if len(entries) > 1 else None
            b.tested[m] = [e for e in entries if e != ref]
        blocks.append(b)
    _finish(t, blocks, per_user, TABLE2_METRICS,
            "Run `bench run --preset backbones` (GPT-2 vs Llama-3.2-1B on am-instruments).",
            label_backbone=True, costs=JOB_COSTS)
    if blocks:  # each block's section is followed by its per-stage detail
        sections, tidy = [], [t.tidy]
        for section, b in zip(t.sections, blocks):
            extra, rows = _stage_section(b)
            sections += [section] + ([extra] if extra.rows else [])
            tidy.append(pd.DataFrame(rows))
        t.sections = sections
        t.tidy = pd.concat(tidy, ignore_index=True)
    return t


def table5(frame: pd.DataFrame, per_user: PerUser) -> Table:
    key = "table5_ablation"
    t = Table(key, "Table 5 · ablation of the reward",
              "The four PageLLM variants: mixed reward (`pagellm`), item-level only (`pagellm-item`), page-level "
              "only (`pagellm-page`), no reward (`pagellm-sft`). † compares a variant with `pagellm`.",
              notes=[CELL_NOTE, DEFINITIONS_NOTE, SIGNIFICANCE_NOTE.format(key=key)])
    blocks = []
    for (preset, split, dataset), sub in _blocks(frame, cold=False):
        if not {"pagellm-item", "pagellm-page"} & set(sub["model"]):
            continue
        order = ["pagellm", "pagellm-item", "pagellm-page", "pagellm-sft"]
        entries = sorted(_ordered_entries(sub, lambda m: m in order),
                         key=lambda e: (order.index(sub[sub["entry"] == e]["model"].iloc[0]), e))
        b = _with_paper(Block(preset, split, dataset, entries, sub[sub["entry"].isin(entries)]), key, TABLE1_METRICS)
        full = [e for e in entries if b.model_of(e) == "pagellm"]
        for m in TABLE1_METRICS:
            b.refs[m] = full[0] if full else None
            b.tested[m] = [e for e in entries if b.model_of(e) != "pagellm"]
        blocks.append(b)
    return _finish(t, blocks, per_user, TABLE1_METRICS,
                   "Run `bench run --preset ablation` (the four PageLLM variants on am-toys).")


def _finish(t: Table, blocks: list[Block], per_user: PerUser, metrics: list[str], stub: str, **kw) -> Table:
    t.blocks = blocks
    if not blocks:
        t.stub = stub
        return t
    t.pvalues = _run_tests(t.key, blocks, per_user)
    _metric_table(t, blocks, metrics, **kw)
    return t


# ---------------------------------------------------------------------------------------------
# Cold start
# ---------------------------------------------------------------------------------------------

@dataclass
class ColdPair:
    preset: str
    dataset: str
    split_full: str
    split_cold: str
    full: Block
    cold: Block

    @property
    def title(self) -> str:
        return f"{self.dataset} · {self.split_full} → {self.split_cold} · preset {self.preset}"

    def rel_change(self, entry: str, metric: str) -> tuple[float, float]:
        """(cold - full) / full of the seed means, and the std over seeds present in both."""
        full, cold = self.full.stat(entry, metric)[0], self.cold.stat(entry, metric)[0]
        value = (cold - full) / full if full and not math.isnan(full) and not math.isnan(cold) else math.nan
        a = self.full.rows_of(entry).set_index("seed")
        c = self.cold.rows_of(entry).set_index("seed")
        per_seed = []
        if metric in a.columns and metric in c.columns:
            for s in sorted(set(a.index) & set(c.index)):
                f, k = a.loc[s, metric], c.loc[s, metric]
                if isinstance(f, pd.Series) or isinstance(k, pd.Series):
                    continue
                if f and not math.isnan(f) and not math.isnan(k):
                    per_seed.append((k - f) / f)
        return value, float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else math.nan


def _cold_pairs(frame: pd.DataFrame) -> list[ColdPair]:
    full_blocks = {k: sub for k, sub in _blocks(frame, cold=False)}
    pairs = []
    for (preset, split, dataset), sub in _blocks(frame, cold=True):
        base = split[:-len(COLD_SUFFIX)]
        full = full_blocks.get((preset, base, dataset))
        if full is None:
            continue
        entries = [e for e in _ordered_entries(sub, lambda m: True) if e in set(full["entry"])]
        if not entries:
            continue
        pairs.append(ColdPair(preset, dataset, base, split,
                              Block(preset, base, dataset, entries, full[full["entry"].isin(entries)]),
                              Block(preset, split, dataset, entries, sub[sub["entry"].isin(entries)])))
    return pairs


def cold_start_table(frame: pd.DataFrame, per_user: PerUser, out_dir: Path | None) -> Table:
    key = "cold_start"
    t = Table(key, "Cold start · relative change with half the training data (Appendix F)",
              "Relative change (cold − full) / full of each metric when every user keeps half of their training "
              "positives (split `…-cold50`, same valid/test users) against the full split, per model; bold = "
              "smallest drop. † = the cold and full runs differ significantly.",
              notes=["Cells: relative change of the seed means ± std of the per-seed relative changes; rows "
                     "`↳ paper` = the paper's PageLLM drop on AM-Toys (Figure 6), `↳ Δ` = ours − paper in "
                     "percentage points.", DEFINITIONS_NOTE,
                     "Significance: two-sided Wilcoxon signed-rank test of the per-user metric, full vs cold "
                     "(same test users; each user averaged over seeds), Holm-corrected across the table; "
                     "† = corrected p < 0.05. p-values: `cold_start.pvalues.csv`."])
    pairs = _cold_pairs(frame)
    t.blocks = pairs
    if not pairs:
        t.stub = ("Run `bench run --preset cold-start` (pagellm, multivae and sasrec on am-toys, full and "
                  "cold-start splits).")
        return t
    records = []
    for p in pairs:
        for e in p.full.entries:
            for m in COLD_METRICS:
                if math.isnan(p.rel_change(e, m)[0]):
                    continue
                res = paired_test(per_user.series(p.cold.per_user_paths(e), m),
                                  per_user.series(p.full.per_user_paths(e), m))
                records.append({"table": key, "preset": p.preset, "split": p.split_cold, "dataset": p.dataset,
                                "metric": m, "model": e, "reference": f"{e} on {p.split_full}",
                                "mean_model": p.cold.stat(e, m)[0], "mean_reference": p.full.stat(e, m)[0],
                                "test": "wilcoxon signed-rank (two-sided)", **res})
    pv = pd.DataFrame(records)
    if len(pv):
        pv["p_holm"] = holm(pv["p"])
        pv["significant"] = pv["p_holm"] < ALPHA
    t.pvalues = pv
    sig = {(r["preset"], r["dataset"], r["split"], r["model"], r["metric"])
           for _, r in pv.iterrows() if r.get("significant")} if len(pv) else set()
    tidy = []
    for p in pairs:
        best = {}
        for m in COLD_METRICS:
            values = [p.rel_change(e, m)[0] for e in p.full.entries]
            values = [v for v in values if not math.isnan(v)]
            best[m] = max(values) if values else math.nan
        rows = []
        for e in p.full.entries:
            cells = [Cell(e)]
            paper = COLD_START_PAPER.get((our_dataset_to_paper(p.dataset), p.full.model_of(e)), {})
            for m in COLD_METRICS:
                value, std = p.rel_change(e, m)
                text = "" if math.isnan(value) else f"{value:+.1%}" + ("" if math.isnan(std) else f" ± {std:.1%}")
                cells.append(Cell(text, bold=not math.isnan(value) and value == best[m],
                                  sig=(p.preset, p.dataset, p.split_cold, e, m) in sig))
                tidy.append({"table": key, "preset": p.preset, "dataset": p.dataset, "split_full": p.split_full,
                             "split_cold": p.split_cold, "model": e, "metric": m,
                             "full_mean": p.full.stat(e, m)[0], "cold_mean": p.cold.stat(e, m)[0],
                             "rel_change": value, "rel_change_std": std, "best": value == best[m],
                             "significant": (p.preset, p.dataset, p.split_cold, e, m) in sig,
                             "paper_rel_change": paper.get(m, math.nan),
                             "diff_vs_paper": value - paper[m] if m in paper else math.nan})
            rows.append(cells)
            if paper:
                rows.append([Cell("↳ paper")] + [Cell(f"{paper[m]:+.1%}" if m in paper else "") for m in COLD_METRICS])
                rows.append([Cell("↳ Δ")] + [Cell(f"{(p.rel_change(e, m)[0] - paper[m]) * 100:+.1f} pp"
                                                  if m in paper and not math.isnan(p.rel_change(e, m)[0]) else "")
                                             for m in COLD_METRICS])
        t.sections.append(Section(p.title, ["model"] + COLD_METRICS, rows))
    t.tidy = pd.DataFrame(tidy)
    if out_dir is not None:
        t.figure = _cold_start_figure(pairs, out_dir / "cold_start.png")
    return t


def _new_figure(width: float, height: float):
    # The object-oriented API with an Agg canvas: no pyplot, no process-wide backend switch.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save_figure(fig, path: Path) -> str:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    return path.name


def _cold_start_figure(pairs: list[ColdPair], path: Path) -> str:
    fig = _new_figure(2.0 + 1.8 * len(COLD_METRICS), 3.2 * len(pairs))
    axes = fig.subplots(len(pairs), 1, squeeze=False)[:, 0]
    for ax, p in zip(axes, pairs):
        series = [(e, [p.rel_change(e, m) for m in COLD_METRICS], None) for e in p.full.entries]
        for e in p.full.entries:
            paper = COLD_START_PAPER.get((our_dataset_to_paper(p.dataset), p.full.model_of(e)))
            if paper:
                series.append((f"{e} (paper)", [(paper.get(m, math.nan), math.nan) for m in COLD_METRICS], "//"))
        width = 0.8 / max(1, len(series))
        x = np.arange(len(COLD_METRICS))
        for i, (label, values, hatch) in enumerate(series):
            heights = [100 * v for v, _ in values]
            errors = [0 if math.isnan(s) else 100 * s for _, s in values]
            ax.bar(x + (i - (len(series) - 1) / 2) * width, heights, width, yerr=errors, label=label,
                   hatch=hatch, edgecolor="black" if hatch else None, capsize=2)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xticks(x, COLD_METRICS)
        ax.set_ylabel("relative change (%)")
        ax.set_title(p.title.replace(" · ", ", "), fontsize=9)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return _save_figure(fig, path)


# ---------------------------------------------------------------------------------------------
# Reward models and PPO
# ---------------------------------------------------------------------------------------------

def _ppo_final(curve: list[dict[str, float]]) -> dict[str, float]:
    """The last epoch of a PPO curve, with the reward gain of its greedy lists over the fine-tuned ones."""
    last = curve[-1]
    sft = last["reward_greedy_sft"]
    if math.isnan(sft):
        sft = curve[0]["reward_greedy"]  # row 0 is the fine-tuned policy itself
    return {"epochs": last["epoch"], "reward_greedy_sft": sft, "reward_greedy": last["reward_greedy"],
            "reward_gain": last["reward_greedy"] - sft, "jaccard20_sft": last["jaccard20_sft"], "kl": last["kl"],
            "kl_coef": last["kl_coef"]}


PPO_SUMMARY = [("epochs", "epochs"), ("reward_greedy_sft", "reward (fine-tuned)"), ("reward_greedy", "reward (PPO)"),
               ("reward_gain", "Δ reward"), ("jaccard20_sft", "Jaccard@20"), ("kl", "kl"), ("kl_coef", "kl_coef")]


def _ppo_png(r: pd.Series) -> str:
    """Where a run's PPO figure goes, relative to results/tables/ (mirrors the result file's path)."""
    return f"{PPO_DIR}/{r['preset']}/{r['dataset']}/{r['split']}/{r['model']}-seed{int(r['seed'])}.png"


def reward_models_table(frame: pd.DataFrame, out_dir: Path | None) -> Table:
    """Per (preset, split, dataset): the reward models' held-out pair accuracy, one row per (variant, reward
    kind) and one column per pair family, and the PPO summary per variant; with `out_dir`, one PNG per run
    with a ppo_curve (see _ppo_png), linked under its block."""
    key = "reward_models"
    t = Table(key, "Reward models · held-out pair accuracy by family, and what PPO did",
              "For every PageLLM run with a reward: the held-out Bradley-Terry pair accuracy of each reward model "
              "it used (`model_info.reward_accuracy`), overall (`all`) and per pair family, and the last PPO epoch "
              "of `model_info.ppo_curve` against the fine-tuned policy on a fixed set of training prompts: mean "
              "reward-model score (the variant's own reward) of the greedy top-20 lists before (fine-tuned) and "
              "after PPO, their difference (Δ reward), and the mean Jaccard overlap of the two greedy top-20 lists "
              "(1 = PPO changed nothing), with the rollouts' KL to the reference and the adaptive KL coefficient.",
              tested=False,
              notes=["Cells: mean ± std over seeds (n = seeds); pairs = held-out pairs of the reward model (mean "
                     "over seeds); a blank cell = no pair of that family was held out (or the result predates "
                     "per-family accuracies).", NEAR_CHANCE_NOTE,
                     f"PPO curves per epoch, one PNG per run: `{PPO_DIR}/<preset>/<dataset>/<split>/<model>-seed<k>"
                     ".png` (linked under each block)."])
    runs = frame[[is_pagellm(m) and (bool(a) or c is not None) for m, a, c in
                  zip(frame["model"], frame["reward_accuracy"], frame["ppo_curve"])]] if not frame.empty else frame
    if runs.empty:
        t.stub = ("No result file holds `model_info.reward_accuracy` or `model_info.ppo_curve` (written by the "
                  "PageLLM variants with a reward): run `bench run --preset ablation` or `bench run --preset reward`.")
        return t
    order = ["pagellm", "pagellm-item", "pagellm-page"]
    keys = sorted(runs.groupby(["preset", "split", "dataset"]).groups, key=lambda k: (k[0], k[1], _dataset_rank(k[2])))
    tidy, blocks = [], []
    for preset, split, dataset in keys:
        sub = runs[(runs["preset"] == preset) & (runs["split"] == split) & (runs["dataset"] == dataset)]
        entries = sorted(_ordered_entries(sub, lambda m: True),
                         key=lambda e: (_rank_in(order, sub[sub["entry"] == e]["model"].iloc[0]), e))
        b = Block(preset, split, dataset, entries, sub)
        blocks.append(b)
        base = {"table": key, "preset": preset, "split": split, "dataset": dataset}
        # held-out pair accuracy: one row per (variant, reward kind), one column per pair family
        present = {f for a in sub["reward_accuracy"] for acc in a.values() for f in acc if f != "n"}
        families = [f for f in PAIR_FAMILIES if f in present] + sorted(present - set(PAIR_FAMILIES))
        rows = []
        for e in entries:
            kinds = {k for a in b.rows_of(e)["reward_accuracy"] for k in a}
            for kind in [k for k in REWARD_KINDS if k in kinds] + sorted(kinds - set(REWARD_KINDS)):
                stats = {f: _accuracy(b.rows_of(e), kind, f) for f in families}
                seeds = max(n for _, _, n, _ in stats.values())
                pairs = _accuracy(b.rows_of(e), kind)[3]
                rows.append([Cell(e), Cell(kind), Cell(str(seeds)), Cell(_fmt_pairs(pairs))]
                            + [_accuracy_cell(mean, std) for mean, std, _, _ in stats.values()])
                tidy += [{**base, "section": "accuracy", "model": e, "backbone": b.backbone_of(e), "reward": kind,
                          "metric": f, "mean": mean, "std": std, "n_seeds": n, "n_pairs": pairs,
                          "below_near_chance": mean < NEAR_CHANCE} for f, (mean, std, n, _) in stats.items() if n]
        if rows:
            t.sections.append(Section(f"{b.title} · held-out pair accuracy",
                                      ["variant", "reward", "n", "pairs", *families], rows))
        # PPO: the last epoch against the fine-tuned policy, and the per-run figures
        rows, links = [], []
        for e in entries:
            with_curve = b.rows_of(e)[b.rows_of(e)["ppo_curve"].notna()]
            if with_curve.empty:
                continue
            finals = pd.DataFrame([_ppo_final(c) for c in with_curve["ppo_curve"]])
            cells = [Cell(e), Cell(str(len(with_curve)))]
            for name, _ in PPO_SUMMARY:
                values = finals[name].dropna()
                mean = float(values.mean()) if len(values) else math.nan
                std = float(values.std(ddof=1)) if len(values) > 1 else math.nan
                if name == "epochs":
                    text = _mean_std(mean, math.nan, lambda v: f"{v:g}")
                elif name == "reward_gain":
                    text = _fmt_signed(mean) + ("" if math.isnan(std) or math.isnan(mean) else f" ± {_fmt(std)}")
                else:
                    text = _mean_std(mean, std)
                cells.append(Cell(text))
                tidy.append({**base, "section": "ppo", "model": e, "backbone": b.backbone_of(e), "reward": "",
                             "metric": name, "mean": mean, "std": std, "n_seeds": len(values)})
            rows.append(cells)
            for _, r in with_curve.sort_values("seed").iterrows():
                png = _ppo_png(r)
                if out_dir is not None:
                    _ppo_figure(r, out_dir / png)
                    t.figures.append(png)
                links.append(f"[{e} seed {int(r['seed'])}]({png})")
        if rows:
            footer = ("PPO curves: " + " · ".join(links)) if out_dir is not None else ""
            t.sections.append(Section(f"{b.title} · PPO, last epoch against the fine-tuned policy",
                                      ["variant", "n"] + [h for _, h in PPO_SUMMARY], rows, footer))
    t.blocks = blocks
    t.tidy = pd.DataFrame(tidy)
    return t


def _rank_in(order: list[str], model: str) -> tuple[int, str]:
    return (order.index(model) if model in order else len(order), model)


def _ppo_figure(r: pd.Series, path: Path) -> str:
    """One run's PPO curve, a small panel per quantity against the epoch (epoch 0 = fine-tuned policy)."""
    curve = pd.DataFrame(r["ppo_curve"])
    panels = [("reward of the greedy top-20", [("reward_greedy_sft", "fine-tuned"), ("reward_greedy", "PPO")]),
              ("Jaccard@20 to fine-tuned lists", [("jaccard20_sft", None)]),
              ("rollout score", [("score", None)]), ("approx. KL (update)", [("approx_kl", None)]),
              ("clip fraction", [("clipfrac", None)]), ("entropy", [("entropy", None)]),
              ("value loss", [("vf_loss", None)]), ("KL to reference (rollouts)", [("kl", None)]),
              ("KL coefficient", [("kl_coef", None)])]
    fig = _new_figure(9.5, 7.5)
    axes = fig.subplots(3, 3, sharex=True).ravel()
    for ax, (title, lines) in zip(axes, panels):
        for name, label in lines:
            ax.plot(curve["epoch"], curve[name], marker="o", markersize=3, label=label)
        if lines[0][0] == "jaccard20_sft":
            ax.set_ylim(-0.02, 1.02)  # 1 = PPO left the lists as they were
        if len(lines) > 1:
            ax.legend(fontsize=7)
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.xaxis.get_major_locator().set_params(integer=True)
    for ax in axes[-3:]:
        ax.set_xlabel("PPO epoch", fontsize=8)
    accuracy = ", ".join(f"{kind} {acc['all']:.3f}" for kind, acc in r["reward_accuracy"].items() if "all" in acc)
    fig.suptitle(f"{r['entry']} · {r['dataset']} · split {r['split']} · preset {r['preset']} · "
                 f"seed {int(r['seed'])}"
                 + (f"\nheld-out pair accuracy: {accuracy}" if accuracy else ""), fontsize=10)
    # fixed margins, not tight_layout / bbox_inches="tight": those measure every tick label and would make
    # a paper-size run (one figure per PPO run, ~60) take minutes
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.07, top=0.88, wspace=0.3, hspace=0.3)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path.name


# ---------------------------------------------------------------------------------------------
# LLM judge (Figure 3)
# ---------------------------------------------------------------------------------------------

def judge_records(judge: object) -> list[dict]:
    """`model_info.judge` -> [{aspect, baseline, wins, ties, losses}].

    Expected input (written by the judge): ``{"wins": int, "ties": int, "losses": int, "baseline": str}``
    (aspect "overall"), or one such mapping per aspect, e.g. ``{"baseline": "sasrec", "overall": {...},
    "relevance": {...}, "diversity": {...}}``.
    """
    if not isinstance(judge, dict):
        return []
    counts = ("wins", "ties", "losses")

    def ok(d):
        return isinstance(d, dict) and all(isinstance(d.get(k), (int, float)) for k in counts)

    if ok(judge):
        return [{"aspect": "overall", "baseline": str(judge.get("baseline", "?")),
                 **{k: int(judge[k]) for k in counts}}]
    return [{"aspect": aspect, "baseline": str(v.get("baseline", judge.get("baseline", "?"))),
             **{k: int(v[k]) for k in counts}} for aspect, v in judge.items() if ok(v)]


def _wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    if n == 0:
        return math.nan, math.nan
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def judge_table(frame: pd.DataFrame, out_dir: Path | None) -> Table:
    from scipy.stats import binomtest

    key = "judge_winrate"
    t = Table(key, "Figure 3 · LLM-judge win rate against the best baseline",
              "Win / tie / loss counts of each judged model against its baseline, summed over seeds; n = verdicts "
              "(one per judged user and seed, each from both orders). Win rate = wins / n with a 95% Wilson score interval (the figure's error "
              "bars); p = two-sided sign test of wins vs losses "
              "(ties left out), Holm-corrected across the table; † = corrected p < 0.05.",
              notes=["Expected input: result files whose `model_info.judge` is {\"wins\", \"ties\", \"losses\", "
                     "\"baseline\"} (or one such mapping per aspect). The paper's Figure 3 numbers are not "
                     "transcribed, so there is no paper column."])
    records = []
    if not frame.empty and "judge" in frame.columns:
        for _, r in frame.iterrows():
            for rec in judge_records(r["judge"]):
                records.append({"preset": r["preset"], "split": r["split"], "dataset": r["dataset"],
                                "model": r["entry"], "seed": r["seed"], **rec})
    if not records:
        t.stub = ("No judge results, so no figure: run `bench run --preset judge` (each judged result stores "
                  "`model_info.judge` = {wins, ties, losses, baseline}).")
        return t
    df = pd.DataFrame(records)
    keys = ["preset", "split", "dataset", "model", "baseline", "aspect"]
    agg = df.groupby(keys, sort=False).agg(seeds=("seed", "nunique"), wins=("wins", "sum"), ties=("ties", "sum"),
                                           losses=("losses", "sum")).reset_index()
    agg["n"] = agg["wins"] + agg["ties"] + agg["losses"]
    agg["win_rate"] = agg["wins"] / agg["n"].where(agg["n"] > 0)
    ci = [_wilson(int(w), int(n)) for w, n in zip(agg["wins"], agg["n"])]
    agg["ci_low"], agg["ci_high"] = [c[0] for c in ci], [c[1] for c in ci]
    agg["p_sign"] = [binomtest(int(w), int(w + l), 0.5).pvalue if w + l else math.nan
                     for w, l in zip(agg["wins"], agg["losses"])]
    agg["p_holm"] = holm(agg["p_sign"])
    agg["significant"] = agg["p_holm"] < ALPHA
    t.tidy = agg
    t.pvalues = agg
    t.blocks = agg.to_dict("records")
    for (preset, split, dataset), sub in agg.groupby(["preset", "split", "dataset"], sort=True):
        rows = [[Cell(r["model"]), Cell(r["baseline"]), Cell(r["aspect"]), Cell(str(r["seeds"])),
                 Cell(str(r["wins"])), Cell(str(r["ties"])), Cell(str(r["losses"])), Cell(str(r["n"])),
                 Cell(f"{r['win_rate']:.1%} [{r['ci_low']:.1%}, {r['ci_high']:.1%}]" if r["n"] else ""),
                 Cell(_p_text(r["p_holm"], bool(r["significant"])))] for _, r in sub.iterrows()]
        t.sections.append(Section(f"{dataset} · split {split} · preset {preset}",
                                  ["model", "baseline", "aspect", "seeds", "wins", "ties", "losses", "n",
                                   "win rate [95% CI]", "Holm p"], rows))
    if out_dir is not None:
        t.figure = _judge_figure(agg, out_dir / "judge_winrate.png")
    return t


def judge_figure_data(agg: pd.DataFrame) -> pd.DataFrame:
    """What Figure 3 draws, one row per bar: label (with n = verdicts and the seeds), the win / tie / loss
    shares and the 95% Wilson interval of the win rate, all in %. `agg`: the judge table's tidy frame."""
    n = agg["n"].where(agg["n"] > 0).astype(float)
    seeds = agg["seeds"].astype(int)
    return pd.DataFrame({
        "label": [f"{r['model']} vs {r['baseline']} ({r['aspect']}), {r['dataset']}\nn = {int(r['n'])} verdicts, "
                  f"{s} seed{'s' if s != 1 else ''}" for (_, r), s in zip(agg.iterrows(), seeds)],
        "aspect": agg["aspect"].to_numpy(), "n": agg["n"].astype(int).to_numpy(),
        "win_pct": (100 * agg["wins"] / n).to_numpy(), "tie_pct": (100 * agg["ties"] / n).to_numpy(),
        "loss_pct": (100 * agg["losses"] / n).to_numpy(),
        "ci_low_pct": (100 * agg["ci_low"]).to_numpy(dtype=float),
        "ci_high_pct": (100 * agg["ci_high"]).to_numpy(dtype=float)})


def _judge_figure(agg: pd.DataFrame, path: Path) -> str:
    data = judge_figure_data(agg)
    fig = _new_figure(8, 1.0 + 0.6 * len(data))
    ax = fig.subplots()
    y = np.arange(len(data))
    left = np.zeros(len(data))
    for col, name, colour in (("win_pct", "wins", "#2e7d32"), ("tie_pct", "ties", "#9e9e9e"),
                              ("loss_pct", "losses", "#c62828")):
        share = np.nan_to_num(data[col].to_numpy(dtype=float))
        ax.barh(y, share, left=left, color=colour, label=name)
        left += share
    # the win share's 95% Wilson interval, drawn at the end of the wins bar
    win = data["win_pct"].to_numpy(dtype=float)
    err = np.vstack([win - data["ci_low_pct"].to_numpy(dtype=float), data["ci_high_pct"].to_numpy(dtype=float) - win])
    err = np.clip(np.nan_to_num(err), 0, None)  # a 100% win rate's upper bound rounds to a hair below it
    ax.errorbar(win, y, xerr=err, fmt="none", ecolor="black", elinewidth=1.2, capsize=4,
                label="win rate, 95% Wilson interval")
    ax.set_yticks(y, data["label"], fontsize=8)
    ax.set_xlim(0, 100)
    ax.set_xlabel("% of verdicts (n per bar: judged users x seeds)")
    ax.invert_yaxis()
    ax.legend(ncol=4, fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    fig.tight_layout()
    return _save_figure(fig, path)


# ---------------------------------------------------------------------------------------------
# Writing the tables
# ---------------------------------------------------------------------------------------------

def build_tables(ws: Workspace, preset: str | None = None, out_dir: Path | None = None,
                 per_user: PerUser | None = None) -> dict[str, Table]:
    """Every table (and, when `out_dir` is given, its figure) from the result files."""
    frame = load_runs(ws, preset)
    per_user = per_user or PerUser()
    tables = [table1(frame, per_user), table2(frame, per_user), table3(frame, per_user), table5(frame, per_user),
              cold_start_table(frame, per_user, out_dir), judge_table(frame, out_dir),
              reward_models_table(frame, out_dir)]
    for t in tables:
        if t.stub and preset:
            t.stub += f" Only preset `{preset}` was read."
    return {t.key: t for t in tables}


def _csv(frame: pd.DataFrame, stub: str | None) -> str:
    if frame.empty and len(frame.columns) == 0:
        return pd.DataFrame({"status": [f"not run: {stub}" if stub else "empty"]}).to_csv(index=False)
    return frame.to_csv(index=False, float_format="%.6g")


def write_tables(ws: Workspace, preset: str | None = None) -> list[Path]:
    """results/tables/<key>.md, .csv, .tex and .pvalues.csv for every table, and the PNG figures."""
    out = ws.tables
    out.mkdir(parents=True, exist_ok=True)
    # never leave a figure from older results behind
    for name in ("cold_start.png", "judge_winrate.png"):
        (out / name).unlink(missing_ok=True)
    for png in (out / PPO_DIR).rglob("*.png"):
        png.unlink()
    for folder in sorted((out / PPO_DIR).rglob("*"), key=lambda d: len(d.parts), reverse=True):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    paths = []
    for key, t in build_tables(ws, preset, out).items():
        files = [(".md", t.markdown()), (".tex", t.latex()), (".csv", _csv(t.tidy, t.stub))]
        if t.tested:
            files.append((".pvalues.csv", _csv(t.pvalues, t.stub or "no comparisons")))
        for suffix, text in files:
            write_text_atomic(out / f"{key}{suffix}", text)
            paths.append(out / f"{key}{suffix}")
        if t.figure:
            paths.append(out / t.figure)
        paths += [out / f for f in t.figures]
    return paths


# ---------------------------------------------------------------------------------------------
# The reproduction report
# ---------------------------------------------------------------------------------------------

@cache
def _shipped_flag(name: str, flag: str) -> bool:
    """The boolean `flag` of the shipped preset `name`; True for a preset that is not shipped (a
    user's own, an old name) or that this version cannot read: nothing says its settings are not real."""
    from bench.config import load_preset
    from bench.errors import BenchError

    try:
        return bool(getattr(load_preset(name), flag))
    except BenchError:
        return True


def preset_is_evidence(name: str) -> bool:
    """False when the shipped preset `name` says `evidence: false` (e.g. `smoke`: tiny settings that check
    that everything runs)."""
    return _shipped_flag(name, "evidence")


def judge_is_evidence(name: str) -> bool:
    """`preset_is_evidence`, and the preset does not say `judge_evidence: false` (e.g. `cpu`: 4 users
    judged by the offline 135M model, a check that the judge runs)."""
    return preset_is_evidence(name) and _shipped_flag(name, "judge_evidence")


def _not_evidence(presets) -> str:
    """The answer of a claim that only runs at settings that are not evidence could answer."""
    return f"not tested ({', '.join(sorted(set(presets)))} settings are not evidence)"


def _pick_blocks(blocks: list, designated: str, usable, preset_of=lambda b: b.preset,
                 is_evidence=preset_is_evidence) -> tuple[list, str, bool]:
    """(blocks, basis, evidence): the designated preset's usable blocks, else every usable block of a
    preset that is evidence; only when there are none, the usable blocks of presets that are not
    (`evidence: false`), with evidence = False so that the claim reads "not tested"."""
    usable_blocks = [b for b in blocks if usable(b)]
    real = [b for b in usable_blocks if is_evidence(preset_of(b))]
    chosen = [b for b in real if preset_of(b) == designated]
    if chosen:
        return chosen, f"from preset `{designated}`", True
    if real:
        presets = ", ".join(f"`{p}`" for p in sorted({preset_of(b) for b in real}))
        return real, f"preset `{designated}` has no usable results; answered from preset(s) {presets}", True
    if usable_blocks:
        presets = ", ".join(f"`{p}`" for p in sorted({preset_of(b) for b in usable_blocks}))
        return usable_blocks, (f"only preset(s) {presets}, whose settings are not evidence; run "
                               f"`bench run --preset {designated}`"), False
    return [], f"no usable results (run `bench run --preset {designated}`)", True


def _orientation_only(claim: Claim, blocks: list, preset_of=lambda b: b.preset) -> Claim:
    """Turn a yes / no computed from runs that are not evidence into "not tested", keeping the numbers."""
    if claim.answer in ("yes", "no"):
        claim.summary = (f"Not an answer: computed from runs whose settings are not evidence (they check that "
                         f"everything runs), shown for orientation only. Their outcome: {claim.answer}. "
                         + claim.summary)
        claim.answer = _not_evidence(preset_of(b) for b in blocks)
    return claim


def _better(metric: str, a: float, b: float) -> bool:
    return a < b if metric in LOWER_IS_BETTER else a > b


def _p_lookup(pvalues: pd.DataFrame, b, entry: str, reference: str, metric: str) -> tuple[float, bool]:
    """The Holm-corrected p of the test between `entry` and `reference` (either way round)."""
    if pvalues.empty:
        return math.nan, False
    pair = (((pvalues["model"] == entry) & (pvalues["reference"] == reference))
            | ((pvalues["model"] == reference) & (pvalues["reference"] == entry)))
    hit = pvalues[(pvalues["preset"] == b.preset) & (pvalues["split"] == b.split) & (pvalues["dataset"] == b.dataset)
                  & pair & (pvalues["metric"] == metric)]
    if hit.empty:
        return math.nan, False
    return float(hit["p_holm"].iloc[0]), bool(hit["significant"].iloc[0])


def _p_text(p: float, sig: bool, floor: float = 0.0) -> str:
    """`floor`: the resolution of a resampling p (a bootstrap p of 0 means below 1 / resamples)."""
    if math.isnan(p):
        return "n/a"
    return (f"< {floor:g}" if p < floor else f"{p:.3g}") + (" †" if sig else "")


@dataclass
class Claim:
    title: str
    answer: str  # yes | no | not run | not tested (<presets> settings are not evidence)
    summary: str
    basis: str
    rule: str
    headers: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)


def _paper_metric(metric: str) -> str:
    """Our metric -> the column holding the paper's number (its Recall@K is our recall_mvae@K)."""
    return metric.replace("recall@", "recall_mvae@")


def _paper_best_baseline(dataset: str, metric: str) -> tuple[str, float | None]:
    """The paper's best baseline in its Table 2 (typos corrected, see PAPER_CORRECTIONS)."""
    best, value = "", None
    for model in PAPER_MODELS:
        if is_pagellm(model):
            continue
        v = paper_number("table2_baselines", dataset, model, _paper_metric(metric), corrected=True)
        if v is not None and (value is None or v > value):
            best, value = model, v
    return best, value


def _comparison_claim(title: str, rule: str, table: Table, designated: str, pairs_of, metrics: list[str],
                      paper_best_baseline: bool = False) -> Claim:
    """"entry better than reference" over the chosen blocks; only CLAIM_METRICS decide the answer.

    pairs_of(block) -> [(entry, reference or metric -> reference)] to compare in that block.
    """
    blocks, basis, evidence = _pick_blocks(table.blocks, designated, lambda b: bool(pairs_of(b)))
    claim = Claim(title, "not run", "", basis, rule,
                  ["dataset", "split", "preset", "metric", "model", "ours", "compared with", "theirs", "Δ",
                   "Holm p", "paper: model", "paper: best baseline" if paper_best_baseline else "paper: compared"])
    if not blocks:
        claim.summary = "No result file holds the runs this claim needs."
        return claim
    wins, total, sig_better, sig_worse, losses = 0, 0, 0, 0, []
    for b in blocks:
        for entry, ref_of in pairs_of(b):
            for m in metrics:
                ref = ref_of(m) if callable(ref_of) else ref_of
                if ref is None:
                    continue
                mine, theirs = b.stat(entry, m)[0], b.stat(ref, m)[0]
                if math.isnan(mine) or math.isnan(theirs):
                    continue
                p, sig = _p_lookup(table.pvalues, b, entry, ref, m)
                better = _better(m, mine, theirs)
                if m in CLAIM_METRICS:
                    total += 1
                    wins += better
                    sig_better += better and sig
                    sig_worse += (not better) and sig
                    if not better:
                        losses.append(f"{b.dataset} {m}: {entry} {mine:.4f} vs {ref} {theirs:.4f}"
                                      + (" (significant)" if sig else " (not significant)"))
                pm = _paper_metric(m)
                paper_e = paper_number(table.key, b.dataset, b.model_of(entry), pm, b.backbone_of(entry), True)
                if paper_best_baseline:
                    name, value = _paper_best_baseline(b.dataset, m)
                    paper_r = f"{name} {_fmt(value)}" if value is not None else ""
                else:
                    paper_r = _fmt(paper_number(table.key, b.dataset, b.model_of(ref), pm, b.backbone_of(ref), True))
                claim.rows.append([b.dataset, b.split, b.preset, m, entry, _fmt(mine), ref, _fmt(theirs),
                                   _fmt_signed(mine - theirs), _p_text(p, sig), _fmt(paper_e), paper_r])
    if total == 0:
        claim.summary = "The runs exist but have no value for the deciding metrics."
        return claim
    claim.answer = "yes" if wins == total else "no"
    claim.summary = (f"Better in {wins} of {total} deciding comparisons (significantly better in {sig_better}, "
                     f"significantly worse in {sig_worse}; Holm-corrected p < {ALPHA}).")
    if losses:
        claim.summary += " Not better: " + "; ".join(losses) + "."
    return claim if evidence else _orientation_only(claim, blocks)


def _claim_best(tables: dict[str, Table]) -> Claim:
    t = tables["table2_baselines"]

    def pairs(b):
        if not any(not is_pagellm(b.model_of(e)) for e in b.entries):
            return []
        return [(e, lambda m, b=b: b.refs.get(m)) for e in b.entries if b.model_of(e) == "pagellm"]

    return _comparison_claim(
        "PageLLM is the best model on each dataset (Table 2)",
        f"yes when `pagellm` has a higher mean than the best baseline (the non-PageLLM model with the highest "
        f"mean on that dataset, split and metric) on every dataset and each of {', '.join(CLAIM_METRICS)}.",
        t, PRESET_OF[t.key], pairs, list(CLAIM_METRICS), paper_best_baseline=True)


def _claim_reward(tables: dict[str, Table]) -> Claim:
    t = tables["table1_reward"]

    def pairs(b):
        sft = [e for e in b.entries if b.model_of(e) == "pagellm-sft"]
        return [(e, sft[0]) for e in b.entries if b.model_of(e) == "pagellm" and sft]

    return _comparison_claim(
        "The reward helps: pagellm beats pagellm-sft (Table 1)",
        f"yes when `pagellm` has a better mean than `pagellm-sft` on every dataset and each of "
        f"{', '.join(CLAIM_METRICS)}. The other metrics are listed but do not decide the answer.",
        t, PRESET_OF[t.key], pairs, [m for m in TABLE1_METRICS if "recall_mvae" not in m])


def _claim_ablation(tables: dict[str, Table]) -> Claim:
    t = tables["table5_ablation"]

    def pairs(b):
        full = [e for e in b.entries if b.model_of(e) == "pagellm"]
        return [(full[0], e) for e in b.entries if b.model_of(e) in ABLATIONS] if full else []

    claim = _comparison_claim(
        "Each ablation hurts: pagellm beats pagellm-item, pagellm-page and pagellm-sft (Table 5)",
        f"yes when `pagellm` has a better mean than every variant run, on every dataset and each of "
        f"{', '.join(CLAIM_METRICS)}.", t, PRESET_OF[t.key], pairs, list(CLAIM_METRICS))
    ran = {b.model_of(e) for b in t.blocks for e in b.entries}
    missing = [v for v in ABLATIONS if v not in ran]
    if missing and claim.answer in ("yes", "no"):
        claim.summary += f" Variants not run: {', '.join(missing)}."
    return claim


def _bootstrap_means(arrays: np.ndarray, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> np.ndarray:
    """(resamples, k) column means of `arrays` (n_users, k), users resampled with replacement."""
    rng = np.random.default_rng(seed)
    n = len(arrays)
    out = []
    for start in range(0, resamples, 100):
        c = min(100, resamples - start)
        idx = rng.integers(0, n, size=(c, n))
        # how often each user is drawn in each resample, then weighted means: (c, n) @ (n, k)
        counts = np.bincount((idx + n * np.arange(c)[:, None]).ravel(), minlength=c * n).reshape(c, n)
        out.append(counts.astype(np.float64) @ arrays / n)
    return np.concatenate(out)


def _rel_change_difference(means: np.ndarray, cols: list[int]) -> np.ndarray:
    """cols = [a_full, a_cold, b_full, b_cold]: relative change of a minus relative change of b."""
    a_full, a_cold, b_full, b_cold = cols
    with np.errstate(divide="ignore", invalid="ignore"):
        return (means[..., a_cold] / means[..., a_full] - 1) - (means[..., b_cold] / means[..., b_full] - 1)


def _claim_cold(tables: dict[str, Table], per_user: PerUser) -> Claim:
    t = tables["cold_start"]
    usable = lambda p: any(p.full.model_of(e) == "pagellm" for e in p.full.entries) and any(
        not is_pagellm(p.full.model_of(e)) for e in p.full.entries)
    pairs, basis, evidence = _pick_blocks(t.blocks, PRESET_OF[t.key], usable)
    claim = Claim("Cold start hurts PageLLM less than the baselines (Appendix F)", "not run", "", basis,
                  f"yes when `pagellm`'s relative change (cold − full) / full is above (a smaller drop than) that of "
                  f"every other model run, on each of {', '.join(CLAIM_METRICS)}. Significance: paired bootstrap "
                  f"over the users all these runs scored ({BOOTSTRAP_RESAMPLES} resamples, seed 0) of the difference "
                  f"of relative changes, Holm-corrected across the comparisons.",
                  ["dataset", "preset", "metric", "compared with", "pagellm change", "their change",
                   "difference (pp)", "95% CI (pp)", "Holm p", "paper: pagellm change"])
    if not pairs:
        claim.summary = "No full / cold-start pair of runs with pagellm and a baseline."
        return claim
    records = []
    for p in pairs:
        for e in [e for e in p.full.entries if p.full.model_of(e) == "pagellm"]:
            others = [o for o in p.full.entries if not is_pagellm(p.full.model_of(o))]
            # one resampling of the users for every (model, split, metric) of this pair
            series = {}
            for x in [e] + others:
                for which, blk in (("full", p.full), ("cold", p.cold)):
                    for m in CLAIM_METRICS:
                        s = per_user.series(blk.per_user_paths(x), m)
                        if s is not None:
                            series[(x, which, m)] = s
            joined = pd.concat(series, axis=1, join="inner").dropna() if series else pd.DataFrame()
            cols = {key: i for i, key in enumerate(joined.columns)}
            boot = _bootstrap_means(joined.to_numpy(dtype=float)) if len(joined) else None
            paper = COLD_START_PAPER.get((our_dataset_to_paper(p.dataset), "pagellm"), {})
            for other in others:
                for m in CLAIM_METRICS:
                    mine, theirs = p.rel_change(e, m)[0], p.rel_change(other, m)[0]
                    if math.isnan(mine) or math.isnan(theirs):
                        continue
                    keys = [(e, "full", m), (e, "cold", m), (other, "full", m), (other, "cold", m)]
                    lo = hi = p_boot = math.nan
                    if boot is not None and all(k in cols for k in keys):
                        d = _rel_change_difference(boot, [cols[k] for k in keys])
                        d = d[np.isfinite(d)]
                        if len(d):
                            lo, hi = float(np.quantile(d, 0.025)), float(np.quantile(d, 0.975))
                            p_boot = float(min(1.0, 2 * min(np.mean(d <= 0), np.mean(d >= 0))))
                    records.append({"p": p, "entry": e, "other": other, "metric": m, "mine": mine,
                                    "theirs": theirs, "ci": (lo, hi), "p_boot": p_boot,
                                    "paper": paper.get(_paper_metric(m))})
    if not records:
        claim.summary = "The runs exist but share no metric with a value."
        return claim
    adjusted = holm([r["p_boot"] for r in records])
    wins = 0
    losses = []
    for r, p_adj in zip(records, adjusted):
        better = r["mine"] > r["theirs"]
        wins += better
        sig = not math.isnan(p_adj) and p_adj < ALPHA
        if not better:
            losses.append(f"{r['p'].dataset} {r['metric']}: pagellm {r['mine']:+.1%} vs {r['other']} "
                          f"{r['theirs']:+.1%}")
        lo, hi = r["ci"]
        claim.rows.append([r["p"].dataset, r["p"].preset, r["metric"], r["other"], f"{r['mine']:+.1%}",
                           f"{r['theirs']:+.1%}", f"{100 * (r['mine'] - r['theirs']):+.1f}",
                           "" if math.isnan(lo) else f"[{100 * lo:+.1f}, {100 * hi:+.1f}]",
                           _p_text(p_adj, sig, floor=1 / BOOTSTRAP_RESAMPLES),
                           "" if r["paper"] is None else f"{r['paper']:+.1%}"])
    n_sig = sum(1 for p_adj in adjusted if not math.isnan(p_adj) and p_adj < ALPHA)
    claim.answer = "yes" if wins == len(records) else "no"
    claim.summary = (f"PageLLM's drop is smaller in {wins} of {len(records)} comparisons ({n_sig} significant "
                     f"after Holm).")
    if losses:
        claim.summary += " Not smaller: " + "; ".join(losses) + "."
    return claim if evidence else _orientation_only(claim, pairs)


def _claim_judge(tables: dict[str, Table]) -> Claim:
    t = tables["judge_winrate"]

    def preset_of(record: dict) -> str:  # the judge table's blocks are records
        return record["preset"]

    chosen, basis, evidence = _pick_blocks(
        t.blocks, PRESET_OF[t.key], lambda r: r["model"] == "pagellm" or str(r["model"]).startswith("pagellm ["),
        preset_of, judge_is_evidence)
    claim = Claim("The LLM judge prefers PageLLM's pages to the best baseline's (Figure 3)", "not run", "", basis,
                  "yes when PageLLM wins more often than it loses in every judged comparison (aspect `overall` "
                  "when present, else every aspect). Significance: two-sided sign test, Holm-corrected.",
                  ["dataset", "preset", "baseline", "aspect", "wins", "ties", "losses", "win rate", "Holm p"])
    if not chosen:
        claim.summary = "No result file holds judge counts."
        return claim
    overall = [r for r in chosen if r["aspect"] == "overall"] or chosen
    adjusted = holm([r["p_sign"] for r in chosen])
    for r, p_adj in zip(chosen, adjusted):
        claim.rows.append([r["dataset"], r["preset"], r["baseline"], r["aspect"], str(r["wins"]), str(r["ties"]),
                           str(r["losses"]), f"{r['win_rate']:.1%}", _p_text(p_adj, p_adj < ALPHA)])
    deciding = sum(r["wins"] > r["losses"] for r in overall)
    n_sig = sum(1 for r, p_adj in zip(chosen, adjusted) if r in overall and p_adj < ALPHA and r["wins"] > r["losses"])
    claim.answer = "yes" if deciding == len(overall) else "no"
    claim.summary = (f"PageLLM wins more than it loses in {deciding} of {len(overall)} deciding judged comparisons "
                     f"({n_sig} significantly, Holm-corrected sign test).")
    return claim if evidence else _orientation_only(claim, chosen, preset_of)


def build_report(ws: Workspace, preset: str | None = None) -> str:
    """results/REPORT.md: each of the paper's claims answered from the result files."""
    from tabulate import tabulate

    frame = load_runs(ws, preset)
    per_user = PerUser()
    tables = build_tables(ws, preset, out_dir=None, per_user=per_user)
    claims = [_claim_best(tables), _claim_reward(tables), _claim_ablation(tables), _claim_cold(tables, per_user),
              _claim_judge(tables)]
    n_files = len(frame)
    presets = ", ".join(f"`{p}`" for p in sorted(frame["preset"].unique())) if n_files else "none"
    parts = ["# Reproduction report: PageLLM (arXiv 2506.09084)", "",
             f"Generated by `bench report` from {n_files} result file(s) under `results/runs/`"
             + (f" (preset `{preset}` only)" if preset else "") + f"; presets read: {presets}. "
             "Every answer below is computed from those files: **yes** = this run reproduces the claim under the "
             "stated rule, **no** = it does not, **not tested** = the only runs it could rest on were made at "
             "settings their preset marks as not evidence (`evidence: false`, e.g. `smoke`: tiny models and a few "
             "epochs, which check that everything runs; their numbers are shown for orientation), **not run** = "
             "the runs it needs are missing. The tables with every number are under `results/tables/` "
             "(`bench table`).", "",
             "| # | claim | answer | basis |", "|---|---|---|---|"]
    for i, c in enumerate(claims, 1):
        parts.append(f"| {i} | {c.title} | **{c.answer}** | {c.basis} |")
    parts += ["", "Notes:", "", f"- {DEFINITIONS_NOTE}",
              "- Significance: two-sided Wilcoxon signed-rank tests over per-user metrics of the users both runs "
              "scored (each user averaged over seeds), Holm-corrected across the comparisons of each table; "
              "† = corrected p < 0.05. A difference without † may be noise.",
              f"- Answers rest on {', '.join(CLAIM_METRICS)} (our standard definitions); the paper's numbers are "
              "shown for orientation (paper recall@K beside our recall@K; its best baseline corrects AM-Food HSTU "
              "recall@20 0.949 -> 0.0949).", ""]
    for i, c in enumerate(claims, 1):
        parts += [f"## {i}. {c.title}", "", f"**Answer: {c.answer}.** {c.summary}", "",
                  f"- Basis: {c.basis}.", f"- Rule: {c.rule}", ""]
        if c.rows:
            parts += [tabulate(c.rows, headers=c.headers, tablefmt="github", disable_numparse=True), ""]
    return "\n".join(parts).rstrip() + "\n"


def write_report(ws: Workspace, preset: str | None = None) -> Path:
    path = ws.results / "REPORT.md"
    write_text_atomic(path, build_report(ws, preset))
    return path
