"""The LLM judge: verdict parsing, the two-order counting rule, baseline choice, caching, tables."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from bench import config as cfg
from bench.data.datasets import ensure_split
from bench.data.splits import SplitSpec
from bench.judge import JudgeConfig, _item_texts, combine, judge_results, parse_verdict
from bench.llm import LLMClient
from bench.paths import Workspace


@pytest.mark.parametrize("text, verdict", [
    ("A", "A"), ("b.", "B"), (" Page B, which is the most relevant", "B"), ("Answer: A", "A"),
    ("tie", "tie"), ("Both pages are equally good", "tie"), ("Neither.", "tie"), ("Equal", "tie"),
    ("I would choose page A here", "A"), ("Maybe page A or page B", None), ("", None),
    ("The first one", None),
])
def test_parse_verdict(text, verdict):
    assert parse_verdict(text) == verdict


@pytest.mark.parametrize("first, second, outcome", [
    ("A", "B", 1),      # judged page preferred in both orders
    ("B", "A", -1),     # baseline preferred in both orders
    ("A", "A", 0),      # the judge always names the first page: position bias, not a preference
    ("B", "B", 0),
    ("A", "tie", 0), ("tie", "B", 0), (None, "B", 0), (None, None, 0),
])
def test_a_win_needs_both_orders(first, second, outcome):
    assert combine(first, second) == outcome


class PageCounter(LLMClient):
    """Prefers the page with more of `good` titles ("tie" when equal); or a fixed answer."""

    name = "fake"

    def __init__(self, good: set[str] | None = None, answer: str | None = None):
        self.good, self.answer, self.calls = good or set(), answer, 0

    def generate(self, prompts, *, max_new_tokens, temperature=0.0, seed=0):
        self.calls += len(prompts)
        out = []
        for prompt in prompts:
            if self.answer is not None:
                out.append(self.answer)
                continue
            block_a = prompt.split("Page A:\n")[1].split("\n\nPage B:")[0]
            block_b = prompt.split("Page B:\n")[1].split("\n\nWhich page")[0]
            score = [sum(re.sub(r"^\d+\. ", "", line) in self.good for line in block.splitlines())
                     for block in (block_a, block_b)]
            out.append("A" if score[0] > score[1] else "B" if score[1] > score[0] else "tie")
        return out


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """A workspace with hand-made results on synthetic-tiny: `pagellm` recommends items 0-9 to every
    test user, `good-base` items 10-19, `bad-base` items 20-29, `pagellm-item` items 30-39."""
    ws = Workspace(tmp_path_factory.mktemp("judge"))
    split = ensure_split("synthetic-tiny", ws, SplitSpec())
    users = split.user_ids[np.unique(split.test["user"].to_numpy())]
    runs = ws.runs / "smoke" / "synthetic-tiny" / split.name
    valid = {"pagellm": 0.2, "good-base": 0.3, "bad-base": 0.1, "pagellm-item": 0.9}
    for n, (model, score) in enumerate(valid.items()):
        folder = runs / model
        folder.mkdir(parents=True)
        items = split.item_ids[10 * n:10 * n + 10]
        recs = pd.DataFrame([(u, i, r + 1) for u in users for r, i in enumerate(items)],
                            columns=["user_id", "item_id", "rank"])
        recs.to_csv(folder / "seed0.recs.csv.gz", index=False, compression="gzip")
        result = {"schema": 1, "preset": "smoke", "dataset": "synthetic-tiny", "model": model, "seed": 0,
                  "registered_model": model, "split": {"name": split.name, "hash": split.hash, **split.spec},
                  "metrics": {"recall@20": 0.0}, "valid_metrics": {"ndcg@20": score}, "config_hash": "x",
                  "recs": "seed0.recs.csv.gz"}
        (folder / "seed0.json").write_text(json.dumps(result))
    texts = _item_texts(split, 80)
    return ws, split, {model: {texts[i] for i in range(10 * n, 10 * n + 10)} for n, model in enumerate(valid)}


def test_judged_pages_win_against_the_best_valid_baseline(grid):
    ws, split, titles = grid
    preset = cfg.Preset(name="smoke")
    config = JudgeConfig(users=5, aspects=("relevance", "overall"))
    llm = PageCounter(good=titles["pagellm"])
    [outcome] = judge_results(ws, preset, config, llm=llm)
    assert outcome.status == "judged"
    record = json.loads(outcome.path.read_text())
    # best valid ndcg@20 among non-PageLLM models: good-base (0.3), not pagellm-item (0.9)
    assert record["baseline"] == "good-base"
    assert record["relevance"] == record["overall"] == {"wins": 5, "ties": 0, "losses": 0}
    assert "diversity" not in record and llm.calls == 5 * 2 * 2
    assert record["answers"]["consistent_share"] == 1.0 and record["answers"]["first_page_share"] == 0.5

    # Unchanged inputs: skipped, no LLM call; --overwrite judges again.
    assert judge_results(ws, preset, config, llm=llm)[0].status == "skipped" and llm.calls == 20
    assert judge_results(ws, preset, config, llm=llm, overwrite=True)[0].status == "judged"

    # The baseline's pages preferred in both orders: losses; a judge that always says "A": ties only.
    lose = judge_results(ws, preset, config, llm=PageCounter(good=titles["good-base"]), overwrite=True)
    assert json.loads(lose[0].path.read_text())["overall"] == {"wins": 0, "ties": 0, "losses": 5}
    biased = judge_results(ws, preset, config, llm=PageCounter(answer="A"), overwrite=True)
    record = json.loads(biased[0].path.read_text())
    assert record["overall"] == {"wins": 0, "ties": 5, "losses": 0}
    assert record["answers"]["first_page_share"] == 1.0 and record["answers"]["consistent_share"] == 0.0
    garbled = judge_results(ws, preset, config, llm=PageCounter(answer="hmm"), overwrite=True)
    assert json.loads(garbled[0].path.read_text())["answers"]["parsed"] == 0


def test_named_baseline_user_sample_and_missing_baseline(grid):
    ws, split, titles = grid
    preset = cfg.Preset(name="smoke")
    config = JudgeConfig(users=3, baseline="bad-base", aspects=("overall",))
    [outcome] = judge_results(ws, preset, config, llm=PageCounter(good=titles["pagellm"]), overwrite=True)
    record = json.loads(outcome.path.read_text())
    assert record["baseline"] == "bad-base" and record["n_users"] == 3
    first = [v["user_id"] for v in record["verdicts"]]
    [again] = judge_results(ws, preset, JudgeConfig(users=3, baseline="good-base", aspects=("overall",)),
                            llm=PageCounter(good=titles["pagellm"]))
    assert [v["user_id"] for v in json.loads(again.path.read_text())["verdicts"]] == first  # same users
    assert judge_results(ws, preset, JudgeConfig(splits=("random-s0-cold50",)), llm=PageCounter(answer="A")) == []
    [failed] = judge_results(ws, preset, JudgeConfig(baseline="sasrec"), llm=PageCounter(answer="A"))
    assert failed.status == "failed" and "bench run --models sasrec" in failed.error


def test_judge_counts_reach_the_figure_and_the_report(grid, monkeypatch, capsys):
    from bench.cli import main
    from bench.paper_tables import build_tables

    ws, split, titles = grid
    monkeypatch.setattr("bench.llm.make_llm", lambda *a, **k: PageCounter(good=titles["pagellm"]))
    assert main(["--root", str(ws.root), "judge", "--preset", "smoke", "--overwrite", "--set", "judge.users=4"]) == 0
    assert "1 judged" in capsys.readouterr().out
    table = build_tables(ws, "smoke", out_dir=ws.tables)["judge_winrate"]
    overall = [r for r in table.blocks if r["aspect"] == "overall"]
    assert [(r["model"], r["baseline"], r["wins"], r["losses"]) for r in overall] == [("pagellm", "good-base", 4, 0)]
    assert (ws.tables / "judge_winrate.png").stat().st_size > 1000
    # The judge file is a side file, never read as a result of its own.
    from bench.results import iter_results

    assert all(p.name == "seed0.json" for p, _ in iter_results(ws, "smoke"))
    with pytest.raises(SystemExit):
        main(["judge", "--set", "judge.nope=1", "--bogus"])
    assert main(["--root", str(ws.root), "judge", "--set", "pagellm.x=1"]) == 2


def test_judge_through_an_openai_endpoint_is_cached(grid, monkeypatch):
    """The real client path (`make_llm("openai:...")` behind the SQLite cache) against a local
    endpoint: a second judgement of the same pages asks the endpoint nothing."""
    from tests.openai_stub import OpenAIStub

    ws, split, titles = grid
    counter = PageCounter(good=titles["pagellm"])
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with OpenAIStub(reply=lambda prompt: counter.generate([prompt], max_new_tokens=1)[0]) as server:
        config = JudgeConfig(users=3, aspects=("overall",), llm="openai:judge-model", base_url=server.url)
        [first] = judge_results(ws, cfg.Preset(name="smoke"), config, overwrite=True)
        assert first.status == "judged" and len(server.requests) == 3 * 2
        assert json.loads(first.path.read_text())["overall"] == {"wins": 3, "ties": 0, "losses": 0}
        judge_results(ws, cfg.Preset(name="smoke"), config, overwrite=True)
        assert len(server.requests) == 6  # every answer came from <root>/work/llm_cache.sqlite
    assert (ws.root / "work" / "llm_cache.sqlite").exists()


def test_bad_judge_settings_are_one_clear_error(tmp_path, capsys):
    from bench.cli import main
    from bench.errors import ConfigError

    with pytest.raises(ConfigError, match="judge.aspects must be among relevance, diversity, overall"):
        JudgeConfig(aspects=("fun",))
    with pytest.raises(ConfigError, match="judge.users must be >= 1"):
        JudgeConfig(users=0)
    assert main(["--root", str(tmp_path), "judge", "--set", "judge.usres=5"]) == 2
    assert "Did you mean users" in capsys.readouterr().err
