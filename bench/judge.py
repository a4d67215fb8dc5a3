"""The LLM judge (RQ3, Figure 3): does an LLM prefer PageLLM's pages to the best baseline's?

The paper says only that an LLM compared PageLLM's recommendations with a baseline's for
"relevance, diversity and overall quality" and reports a win rate. Here, for each (dataset,
split, seed) of a preset whose judged model (``model``, default ``pagellm``) has a result:

    baseline   ``baseline`` = a model name, or ``best``: the model of the same (dataset, split,
               seed) with the best VALID ``baseline_metric`` (ndcg@20), PageLLM variants excluded
               (valid, not test, so the comparator is not picked on the numbers being judged)
    users      ``users`` test users drawn at random (seeded by ``seed`` and the dataset/split/seed,
               so every judged model meets the same users) among those both result files rank
    prompt     the user's last ``history_len`` known items (train + valid, oldest first: what
               the models saw) and the top ``page_size`` of each page, anonymised as "Page A" and
               "Page B", with titles (item id when none) and the last category level; one
               question per aspect, answered "A", "B" or "tie" (`judge_prompt`)
    orders     every question is asked twice, the judged page as A and then as B, which cancels
               the judge's position bias: a user-aspect is a WIN when both orders prefer the
               judged page, a LOSS when both prefer the baseline's, else a TIE (disagreeing
               orders, a "tie" answer or an answer that cannot be parsed). This is the
               conservative rule of Zheng et al. 2023 (MT-Bench, "LLM-as-a-judge").

The LLM is pluggable as RecMind's (`bench.llm`): ``smollm2-135m`` (offline, the default; a
135M model is a weak judge, so read its numbers as a check that the pipeline runs, not as
evidence), ``local:/path/to/hf-model`` or ``openai:<model>``; every answer is cached in SQLite
(``<root>/work/llm_cache.sqlite``), so a rerun costs nothing. Greedy decoding.

Output: ``<judged result>.judge.json`` beside the judged model's result file (the result file
itself is never rewritten). It holds, per aspect, {wins, ties, losses}, the baseline, how it was
chosen, the answer statistics (parsed share, share of answers naming the first page, share of
consistent orders) and every user's verdicts. A judgement is redone only when its key changes
(the judge settings, the split, or either result's recommendation file). `bench table` reads it
(Figure 3, `paper_tables.judge_table`) with a Wilson interval and a sign test.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from bench.data.canonical import clean_text, split_categories
from bench.errors import BenchError, ConfigError
from bench.io import hash_json, write_json_atomic
from bench.paths import Workspace

logger = logging.getLogger(__name__)

JUDGE_VERSION = 1  # bump when prompts, parsing or the counting rule change: every judgement is redone
ASPECTS = {
    "relevance": "relevance to this shopper's interests",
    "diversity": "diversity: covering different kinds of products, without near-duplicates",
    "overall": "overall quality as a whole page of recommendations",
}


@dataclass(frozen=True)
class JudgeConfig:
    model: str = field(default="pagellm", metadata={"help": "the judged model (its name in the results)"})
    baseline: str = field(default="best", metadata={
        "help": "the baseline's name, or best = best valid baseline_metric among non-PageLLM models"})
    baseline_metric: str = field(default="ndcg@20", metadata={"help": "valid metric that picks the best baseline"})
    users: int = field(default=100, metadata={"help": "test users judged per (dataset, split, seed)"})
    page_size: int = field(default=10, metadata={"help": "items of each page shown to the judge"})
    history_len: int = field(default=10, metadata={"help": "most recent history items shown"})
    aspects: tuple[str, ...] = field(default=("relevance", "diversity", "overall"), metadata={
        "help": "questions asked: relevance, diversity, overall"})
    llm: str = field(default="smollm2-135m", metadata={
        "help": "smollm2-135m (offline) | local:/path/to/hf-model | openai:<model>"})
    base_url: str = field(default="", metadata={"help": "openai backend base URL ('' = OPENAI_BASE_URL)"})
    device: str = field(default="auto", metadata={"help": "local LLM device: auto, cpu, cuda"})
    batch_size: int = field(default=8, metadata={"help": "prompts per generation batch"})
    max_new_tokens: int = field(default=8, metadata={"help": "tokens generated per answer"})
    title_chars: int = field(default=80, metadata={"help": "titles longer than this are cut"})
    splits: tuple[str, ...] = field(default=(), metadata={
        "help": "judge only results on these split names, e.g. random-s0 (empty = every split)"})
    seed: int = field(default=0, metadata={"help": "seed of the user sample"})
    cache_path: str = field(default="", metadata={
        "help": "LLM answer cache (SQLite); '' = <workspace>/work/llm_cache.sqlite, 'off' = no cache"})

    def __post_init__(self) -> None:
        unknown = [a for a in self.aspects if a not in ASPECTS]
        if unknown or not self.aspects:
            raise ConfigError(f"judge.aspects must be among {', '.join(ASPECTS)}, not {list(self.aspects)}")
        for name in ("users", "page_size", "history_len", "batch_size", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"judge.{name} must be >= 1, not {getattr(self, name)}")


@dataclass
class JudgeOutcome:
    key: str  # dataset/split/model/seed
    status: str  # judged | skipped | failed
    path: Path | None = None
    error: str | None = None


# --------------------------------------------------------------------------- prompt and parsing

def judge_prompt(history: Sequence[str], page_a: Sequence[str], page_b: Sequence[str], aspect: str) -> str:
    """One question about one aspect, for one order of the two pages."""
    def listed(items: Sequence[str]) -> str:
        return "\n".join(f"{i + 1}. {t}" for i, t in enumerate(items)) or "(nothing)"

    return (
        "You compare two pages of product recommendations for one shopper.\n\n"
        f"The shopper's recent purchases, oldest first:\n{listed(history)}\n\n"
        f"Page A:\n{listed(page_a)}\n\n"
        f"Page B:\n{listed(page_b)}\n\n"
        f"Which page is better for {ASPECTS[aspect]}? Answer with one word: A, B or tie."
    )


_VERDICT_START = re.compile(r"^\W*(?:(?:page|answer|verdict)\W*)?(a|b|tie|equal|same|both|neither)\b", re.IGNORECASE)
_VERDICT_PAGE = re.compile(r"\bpage\s+(a|b)\b", re.IGNORECASE)


def parse_verdict(text: str) -> str | None:
    """"A", "B", "tie", or None when the answer names neither page clearly.

    Accepted: an answer that starts with A / B / tie (or "Page A", "Answer: B", "equal", "same",
    "both", "neither"), else the first "Page A" / "Page B" in the text when only one of the two
    pages is named."""
    match = _VERDICT_START.match(text or "")
    if match:
        word = match.group(1).lower()
        return word.upper() if word in ("a", "b") else "tie"
    named = {m.upper() for m in _VERDICT_PAGE.findall(text or "")}
    return named.pop() if len(named) == 1 else None


def combine(first: str | None, second: str | None) -> int:
    """+1 win / -1 loss / 0 tie for the judged page, from the verdict with the judged page as A
    (`first`) and the verdict with it as B (`second`): a win or a loss needs both orders."""
    a = {"A": 1, "B": -1}.get(first or "", 0)
    b = {"B": 1, "A": -1}.get(second or "", 0)
    return a if a == b else 0


# --------------------------------------------------------------------------- one comparison

def _item_texts(split, title_chars: int) -> list[str]:
    items = split.items
    titles = items["title"].fillna("").astype(str) if "title" in items else pd.Series([""] * split.n_items)
    cats = items["categories"].fillna("").astype(str) if "categories" in items else pd.Series([""] * split.n_items)
    out = []
    for item_id, title, categories in zip(split.item_ids, titles, cats):
        title = clean_text(title) or f"item {item_id}"
        if len(title) > title_chars:
            title = title[:title_chars - 3].rstrip() + "..."
        last = split_categories(categories)
        out.append(f"{title} ({last[-1]})" if last else title)
    return out


def _pages(recs_path: Path, index: dict[str, int], page_size: int) -> dict[str, list[int]]:
    recs = pd.read_csv(recs_path, dtype={"user_id": str, "item_id": str})
    recs = recs[recs["rank"] <= page_size].sort_values(["user_id", "rank"])
    recs["item"] = recs["item_id"].map(index)
    return {u: [int(i) for i in g["item"].dropna()] for u, g in recs.groupby("user_id", sort=False)}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def judge_pair(llm, split, judged_recs: Path, baseline_recs: Path, config: JudgeConfig, group: str) -> dict:
    """Counts of one judged model against one baseline on `split`'s test users (module docstring)."""
    texts = _item_texts(split, config.title_chars)
    index = {str(i): k for k, i in enumerate(split.item_ids)}
    mine, theirs = _pages(judged_recs, index, config.page_size), _pages(baseline_recs, index, config.page_size)
    test_users = set(split.user_ids[np.unique(split.test["user"].to_numpy())].tolist())
    users = sorted(u for u in test_users if mine.get(u) and theirs.get(u))
    if not users:
        raise BenchError(f"no test user is ranked by both {judged_recs} and {baseline_recs}")
    rng = np.random.default_rng(int(hash_json({"seed": config.seed, "group": group})[:8], 16))
    users = sorted(rng.choice(users, size=min(config.users, len(users)), replace=False).tolist())

    seen = pd.concat([split.train, split.valid]).sort_values(["timestamp", "item"], kind="stable")
    user_index = {str(u): k for k, u in enumerate(split.user_ids)}
    history = seen.groupby("user")["item"].apply(list)
    prompts, slots = [], []
    for user in users:
        past = [texts[i] for i in history.get(user_index[user], [])[-config.history_len:]]
        a, b = [texts[i] for i in mine[user]], [texts[i] for i in theirs[user]]
        for aspect in config.aspects:
            prompts += [judge_prompt(past, a, b, aspect), judge_prompt(past, b, a, aspect)]
            slots.append((user, aspect))
    from bench.llm import generate_with_progress

    answers = generate_with_progress(llm, prompts, desc=f"judge {group}", max_new_tokens=config.max_new_tokens,
                                     temperature=0.0, seed=config.seed, chunk_size=config.batch_size)
    verdicts = [parse_verdict(t) for t in answers]

    out: dict = {"n_users": len(users)}
    rows = []
    for n, (user, aspect) in enumerate(slots):
        first, second = verdicts[2 * n], verdicts[2 * n + 1]
        rows.append({"user_id": user, "aspect": aspect, "judged_as_a": first, "judged_as_b": second,
                     "outcome": combine(first, second)})
    frame = pd.DataFrame(rows)
    for aspect in config.aspects:
        o = frame.loc[frame["aspect"] == aspect, "outcome"]
        out[aspect] = {"wins": int((o > 0).sum()), "ties": int((o == 0).sum()), "losses": int((o < 0).sum())}
    parsed = [v for v in verdicts if v is not None]
    both = frame["judged_as_a"].notna() & frame["judged_as_b"].notna()
    # Consistent = the two orders name the same page (or both say tie): the position-bias check.
    same_page = (frame["judged_as_a"] == frame["judged_as_b"].map({"A": "B", "B": "A", "tie": "tie"}))
    out["answers"] = {
        "n": len(verdicts), "parsed": len(parsed),
        "first_page_share": round(sum(v == "A" for v in parsed) / len(parsed), 4) if parsed else None,
        "tie_share": round(sum(v == "tie" for v in parsed) / len(parsed), 4) if parsed else None,
        "consistent_share": round(float(same_page[both].mean()), 4) if both.any() else None,
    }
    out["example"] = {"prompt": prompts[0], "answer": answers[0], "verdict": verdicts[0]}
    out["verdicts"] = frame.to_dict("records")
    return out


# --------------------------------------------------------------------------- over a preset's results

def _llm_cache_path(config: JudgeConfig, ws: Workspace) -> Path | None:
    if config.cache_path.strip().lower() == "off":
        return None
    return Path(config.cache_path).expanduser() if config.cache_path.strip() else ws.root / "work" / "llm_cache.sqlite"


def _pick_baseline(candidates: dict[str, dict], config: JudgeConfig, where: str) -> tuple[str, str]:
    """(name, how it was chosen) among {model name: result} of one (dataset, split, seed)."""
    if config.baseline != "best":
        if config.baseline not in candidates:
            raise BenchError(f"{where}: no result of baseline {config.baseline!r} to judge against; run it first "
                             f"(`bench run --models {config.baseline}`) or set judge.baseline=best")
        return config.baseline, "named"
    scored = []
    for name, result in candidates.items():
        registered = str(result.get("registered_model") or name)
        if registered.startswith("pagellm"):
            continue
        value = (result.get("valid_metrics") or {}).get(config.baseline_metric)
        if isinstance(value, (int, float)) and np.isfinite(value):
            scored.append((-float(value), name))
    if not scored:
        raise BenchError(f"{where}: no baseline result with a valid {config.baseline_metric} to judge against; "
                         "run some baselines first (e.g. `bench run --models ease,sasrec`)")
    value, name = min(scored)
    return name, f"best valid {config.baseline_metric} ({-value:.4f}) of {len(scored)} baselines"


def judge_results(ws: Workspace, preset, config: JudgeConfig, *, datasets: Sequence[str] | None = None,
                  overwrite: bool = False, llm=None, download: bool = False) -> list[JudgeOutcome]:
    """Judge every result of `config.model` under `preset` (a Preset; narrowed to `datasets`)
    against its baseline; one ``.judge.json`` per judged result. `llm`: a client to use instead
    of `config.llm` (tests). A failing comparison is logged and does not stop the others."""
    from bench.config import build
    from bench.data.datasets import ensure_split
    from bench.data.splits import SplitSpec
    from bench.results import iter_results

    outcomes: list[JudgeOutcome] = []
    results = list(iter_results(ws, preset.name)) if (ws.runs / preset.name).exists() else []
    groups: dict[tuple, dict[str, tuple[Path, dict]]] = {}
    for path, r in results:
        if datasets and r["dataset"] not in datasets:
            continue
        if config.splits and r["split"].get("name") not in config.splits:
            continue
        key = (r["dataset"], r["split"].get("name"), int(r["seed"]))
        groups.setdefault(key, {})[r["model"]] = (path, r)
    for (dataset, split_name, seed), models in sorted(groups.items()):
        if config.model not in models:
            continue
        where = f"{preset.name}/{dataset}/{split_name}/{config.model}/seed{seed}"
        path, result = models[config.model]
        out_path = path.with_name(path.stem + ".judge.json")
        try:
            others = {m: r for m, (p, r) in models.items() if m != config.model}
            baseline, chosen = _pick_baseline(others, config, where)
            base_path, base_result = models[baseline]
            recs, base_recs = path.parent / result["recs"], base_path.parent / base_result["recs"]
            settings = {k: v for k, v in dataclasses.asdict(config).items()
                        if k not in ("device", "batch_size", "cache_path", "splits")}
            key = hash_json({"version": JUDGE_VERSION, "config": settings, "split": result["split"].get("hash"),
                             "baseline": baseline, "recs": [_sha(recs), _sha(base_recs)]})
            if out_path.exists() and not overwrite:
                try:
                    if json.loads(out_path.read_text()).get("key") == key:
                        outcomes.append(JudgeOutcome(where, "skipped", out_path))
                        continue
                except ValueError:
                    pass
            spec_fields = {f.name: result["split"][f.name] for f in dataclasses.fields(SplitSpec)
                           if f.name in result["split"]}
            split = ensure_split(dataset, ws, build(SplitSpec, spec_fields, "split"), download=download)
            if llm is None:
                from bench.llm import make_llm

                llm = make_llm(config.llm, cache_path=_llm_cache_path(config, ws), device=config.device,
                               batch_size=config.batch_size, base_url=config.base_url or None)
            counts = judge_pair(llm, split, recs, base_recs, config, f"{dataset}/{split_name}/{seed}")
            record = {"key": key, "model": config.model, "baseline": baseline, "baseline_chosen_by": chosen,
                      "judge_llm": config.llm, "config": settings, **counts}
            write_json_atomic(out_path, record)
            outcomes.append(JudgeOutcome(where, "judged", out_path))
            logger.info("judge %s vs %s: %s", where, baseline,
                        {a: counts[a] for a in config.aspects})
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # one failing comparison must not stop the others
            message = str(exc) if isinstance(exc, BenchError) else f"{type(exc).__name__}: {exc}"
            logger.error("judge %s failed: %s", where, message)
            outcomes.append(JudgeOutcome(where, "failed", None, message))
    return outcomes


def read_judgement(result_path: Path) -> dict | None:
    """The judge counts stored beside a result file, in the shape `paper_tables.judge_records`
    reads ({baseline, <aspect>: {wins, ties, losses}}), or None."""
    path = Path(result_path).with_name(Path(result_path).stem + ".judge.json")
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except ValueError:
        logger.warning("unreadable judge file %s is ignored; rerun `bench judge`", path)
        return None
    return {"baseline": data.get("baseline"),
            **{a: data[a] for a in ASPECTS if isinstance(data.get(a), dict)}}
