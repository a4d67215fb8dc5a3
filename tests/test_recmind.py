"""RecMind (baselines/recmind.py) and the cached LLM client (bench/llm.py).

Fast tests drive the agent with scripted LLMs (answers by step and by what the prompt shows) and
a local HTTP server; the tests with the real offline SmolLM2-135M are marked slow
(`pytest -m slow tests/test_recmind.py`).
"""

from __future__ import annotations

import json
import math
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import bench.llm as llm_mod
from baselines.itemknn import ItemKNN, ItemKNNConfig
from baselines.recmind import (
    RecMind,
    RecMindConfig,
    build_prompt,
    final_ranking,
    item_refs,
    parse_action,
    resolve_cache_path,
)
from bench.errors import BenchError, ConfigError
from bench.llm import CachedLLM, LLMCache, LLMClient, OpenAIChatLLM, make_llm
from bench.runner import top_k
from tests.openai_stub import OpenAIStub

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- parsing an answer

def test_parse_action_reads_the_first_action_after_the_marker():
    a = parse_action("Thought: start with the candidates.\nAction: retrieve[20]")
    assert (a.name, a.args, a.thought) == ("retrieve", "20", "start with the candidates.")
    assert (parse_action("Action: Item Info (#3)").name, parse_action("Action: Item Info (#3)").args) == \
        ("item_info", "#3")
    assert parse_action("action: finish[#3, #1, 7").args == "#3, #1, 7"  # unclosed bracket: to the line end
    assert parse_action("Action: similar_items[#2, 5]").args == "#2, 5"
    # a tool named in the thought does not count; a bare tool name after Action: does
    assert parse_action("Thought: retrieve[5] maybe? no.\nAction: history").name == "history"
    assert parse_action("finish[2,1]").name == "finish"  # no marker: the first call anywhere


def test_parse_action_ignores_invented_observations_and_reports_garbage():
    a = parse_action("Action: history[]\nObservation: #1 made-up item\nAction: finish[#1]")
    assert (a.name, a.args) == ("history", "")
    assert parse_action("Observation: the user likes drums. Action: finish[1]").name is None
    garbage = parse_action("I think the user would like guitars!")
    assert garbage.name is None and garbage.error == "no action found"
    assert parse_action("Action: dance[3]").error == "the action names no tool"
    assert parse_action("").name is None


def test_item_refs_and_final_ranking():
    assert item_refs("#3, 7 ,B00ABC-1") == ["3", "7", "B00ABC-1"]
    assert item_refs("") == []
    order = np.array([10, 11, 12, 13, -1, -1])
    assert final_ranking(order, [12, 40]).tolist() == [12, 40, 10, 11, 13, -1]  # picks, then the rest
    assert final_ranking(order, []).tolist() == order.tolist()


def test_prompt_holds_tools_every_explored_step_and_the_last_step_rule():
    steps = [{"step": 1, "thought": "look", "action": "history[]", "observation": "the user's purchases:\n#1 A"},
             {"step": 2, "thought": "", "action": "dance[3]", "observation": "invalid action (names no tool)"}]
    first = build_prompt([], 1, 3, 5)
    assert "(nothing yet)" in first and "Step 1 of 3." in first and "last step" not in first
    assert "finish[#a, #b, ...] - your final answer: the 5 products" in first
    for tool in ("history[]", "retrieve[n]", "item_info[#k]", "similar_items[#k]", "search[words]"):
        assert tool in first
    last = build_prompt(steps, 3, 3, 5)
    assert "Step 1.\nThought: look\nAction: history[]\nObservation: the user's purchases:\n#1 A" in last
    assert "Step 2.\nThought: -\nAction: dance[3]\nObservation: invalid action" in last  # failures stay in view
    assert "Step 3 of 3. This is the last step: answer with finish[...] now." in last


# --------------------------------------------------------------------------- the agent with a scripted LLM

class ScriptedLLM(LLMClient):
    """Answers by a function of the prompt; records the prompts of every generate call."""

    name = "scripted"

    def __init__(self, answer):
        self.answer, self.calls = answer, []

    @property
    def prompts(self) -> list[str]:
        return [p for call in self.calls for p in call]

    def generate(self, prompts, *, max_new_tokens, temperature=0.0, seed=0):
        self.calls.append(list(prompts))
        return [self.answer(p) for p in prompts]


def step_of(prompt: str) -> int:
    return int(re.search(r"Step (\d+) of", prompt).group(1))


def listed(prompt: str, header: str) -> list[tuple[str, str]]:
    """(label, name) of the items an observation starting with `header` listed."""
    block = re.search(re.escape(header) + r"[^\n]*:\n((?:#\d+ [^\n]*(?:\n|$))+)", prompt).group(1)
    return [tuple(line[1:].split(" ", 1)) for line in block.strip().split("\n")]


def by_step(*answers):
    """A script: the answer of step t is answers[t - 1] (a string or a function of the prompt)."""
    def answer(prompt):
        a = answers[min(step_of(prompt), len(answers)) - 1]
        return a(prompt) if callable(a) else a
    return answer


@pytest.fixture(scope="module")
def tiny_split(tmp_path_factory):
    from bench.data.datasets import ensure_split
    from bench.data.splits import SplitSpec
    from bench.paths import Workspace

    return ensure_split("synthetic-tiny", Workspace(tmp_path_factory.mktemp("ws")), SplitSpec())


@pytest.fixture(scope="module")
def itemknn(tiny_split, tmp_path_factory):
    model = ItemKNN()
    model.fit(tiny_split, ItemKNNConfig(k=100), tmp_path_factory.mktemp("knn"))
    return model


def _fit(split, tmp_path, monkeypatch, backend, **config):
    """RecMind on `split` with `backend` as its LLM (behind the SQLite cache when config names one)."""
    fake = backend if isinstance(backend, LLMClient) else ScriptedLLM(backend)
    monkeypatch.setattr(llm_mod, "make_llm", lambda spec, cache_path=None, batch_size=8, **kw:
                        CachedLLM(fake, cache_path, chunk_size=batch_size) if cache_path else fake)
    model = RecMind()
    settings = {"n_candidates": 8, "llm_rank_k": 3, "observe_n": 3, "max_steps": 4, "batch_size": 8,
                "cache_path": "off", **config}
    model.fit(split, RecMindConfig(**settings), tmp_path)
    return model, fake


def _records(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "recmind_agent.jsonl").read_text().splitlines()]


def test_agent_calls_tools_observes_and_finishes(tiny_split, tmp_path, monkeypatch):
    def cand(prompt, i):
        return listed(prompt, "the 5 best candidates")[i][0]

    script = by_step("Thought: first the purchases.\nAction: history[]", "Thought: now candidates\nAction: retrieve[5]",
                     lambda p: f"Action: item_info[#{cand(p, 0)}]", lambda p: f"Action: similar_items[#{cand(p, 0)}, 2]",
                     lambda p: f"Thought: done.\nAction: finish[#{cand(p, 2)}, #{cand(p, 0)}]")
    model, fake = _fit(tiny_split, tmp_path, monkeypatch, script, max_steps=6, history_len=4)
    users = np.arange(2)
    history = tiny_split.history("test")
    recs = top_k(model, users, history, 20)
    knn = model.tools.retrieve(history[users], 20)
    names = model.tools.names
    assert len(fake.calls) == 5 and [len(c) for c in fake.calls] == [2] * 5  # both users, step by step
    for u in users:
        last = fake.calls[4][u]  # user u's step-5 prompt holds every explored step (self-inspiring)
        for s in range(1, 5):
            assert f"Step {s}." in last
        shown_history = listed(last, "the user's purchases")
        assert len(shown_history) == min(4, history[u].nnz)
        assert {n for _, n in shown_history} <= {names[i] for i in history[u].indices}
        candidates = listed(last, "the 5 best candidates")
        assert [n for _, n in candidates] == [names[i] for i in knn[u, :5]]  # the retriever: item-kNN, top 5
        c0 = knn[u, 0]
        assert f"#{candidates[0][0]} {names[c0]}. id {tiny_split.item_ids[c0]}" in last  # item_info
        assert "bought by" in last
        similar = listed(last, f"products similar to #{candidates[0][0]}")
        assert len(similar) == 2
        for label, name in similar:  # neighbours of c0 the user does not have, named consistently
            item = names.index(name)
            assert item not in history[u].indices and model.knn.sim[c0, item] > 0
        assert recs[u, :2].tolist() == [knn[u, 2], knn[u, 0]]  # the agent's ranking first
        rest = [i for i in knn[u] if i not in (knn[u, 0], knn[u, 2])]
        assert recs[u, 2:].tolist() == rest[:18]  # then the retriever's order
    record = _records(tmp_path)[0]
    assert record["status"] == "finished" and record["llm_calls"] == 5
    assert record["picks"] == [str(tiny_split.item_ids[i]) for i in (knn[0, 2], knn[0, 0])]
    assert record["tools"] == {"history": 1, "retrieve": 1, "item_info": 1, "similar_items": 1, "finish": 1}
    assert [s["outcome"] for s in record["steps"]] == ["ok"] * 4 + ["finish"]
    assert record["steps"][0]["thought"] == "first the purchases."
    info = model.extra_result()
    assert info["status"]["finished"] == 2 and info["llm_calls"] == 10 and info["llm_calls_per_agent_user"] == 5
    assert info["picked_items"] == 4 and info["picked_outside_candidates"] == 0


def test_garbage_answers_are_invalid_and_fall_back_to_the_retriever(tiny_split, itemknn, tmp_path, monkeypatch):
    garbage = ["", "I like guitars!", "Action: dance[3]", "Action: finish[#77]", "Action: item_info[]"]
    answers = iter(garbage * 100)
    model, fake = _fit(tiny_split, tmp_path, monkeypatch, lambda p: next(answers), max_steps=4, batch_size=10)
    users = np.arange(10)
    history = tiny_split.history("test")
    recs = top_k(model, users, history, 20)
    assert (recs == top_k(itemknn, users, history, 20)).all()  # no finish: exactly item-kNN's lists
    info = model.extra_result()
    assert info["status"]["max_steps"] == 10 and info["invalid_actions"] == 40 and info["llm_calls"] == 40
    assert all(len(c) == 10 for c in fake.calls) and len(fake.calls) == 4  # stopped at max_steps
    last = fake.calls[-1][0]
    assert last.count("invalid action") == 3 and "This is the last step" in last
    assert all(r["status"] == "max_steps" and r["picks"] == [] for r in _records(tmp_path))


def test_repeated_call_is_not_run_again_and_the_loop_stops_at_max_steps(tiny_split, tmp_path, monkeypatch):
    model, fake = _fit(tiny_split, tmp_path, monkeypatch, lambda p: "Action: history[]", max_steps=3)
    model.rank(np.arange(3), 20, tiny_split.history("test")[:3])
    assert len(fake.prompts) == 9 and "(nothing yet)" in fake.calls[0][0]
    last = fake.calls[2][0]
    assert last.count("already explored at step 1") == 1 and last.count("Observation: the user's purchases") == 1
    record = _records(tmp_path)[0]
    assert record["status"] == "max_steps" and record["repeated_actions"] == 2
    assert [s["outcome"] for s in record["steps"]] == ["ok", "repeated", "repeated"]


def test_finish_keeps_valid_references_in_order_and_drops_the_rest(tiny_split, tmp_path, monkeypatch):
    def cand(prompt, i):
        return listed(prompt, "the 3 best candidates")[i][0]

    def item_id(prompt):
        return re.search(r"\. id (\w+)\.", prompt).group(1)

    script = by_step("Action: history[]", "Action: retrieve[3]", lambda p: f"Action: item_info[#{cand(p, 0)}]",
                     "Action: finish[#1, #99]",  # a bought item and an unknown number only: invalid
                     lambda p: f"Action: finish[#1, #99, #{cand(p, 1)}, {item_id(p)}, {cand(p, 1)}]")
    model, _ = _fit(tiny_split, tmp_path, monkeypatch, script, max_steps=5)
    history = tiny_split.history("test")[:1]
    recs = model.rank(np.array([0]), 20, history)
    knn = model.tools.retrieve(history, 20)[0]
    assert recs[0, :2].tolist() == [knn[1], knn[0]]  # "#c1" and c0's item id; bought, unknown, repeat dropped
    record = _records(tmp_path)[0]
    assert record["status"] == "finished" and record["invalid_actions"] == 1 and record["llm_calls"] == 5
    assert "finish names no product" in record["steps"][3]["observation"]
    info = model.extra_result()
    assert info["finish_dropped"] == {"unknown": 2, "already_bought": 2, "repeated": 1}


def test_step_t_of_many_users_goes_through_the_llm_together(tiny_split, tmp_path, monkeypatch):
    def second(prompt):  # some users finish at step 2, the others go on
        return "Action: finish[#1]" if len(listed(prompt, "the 2 best candidates")[0][1]) % 2 else "Action: history[]"

    script = by_step("Action: retrieve[2]", second, "Action: finish[#2]")
    model, fake = _fit(tiny_split, tmp_path, monkeypatch, script, max_steps=3, batch_size=2)
    model.rank(np.arange(5), 20, tiny_split.history("test")[:5])
    steps = [{step_of(p) for p in call} for call in fake.calls]
    assert all(len(s) == 1 for s in steps)  # one step per batch
    order = [s.pop() for s in steps]
    assert order == sorted(order) and all(len(c) <= 2 for c in fake.calls)
    early = sum(r["llm_calls"] == 2 for r in _records(tmp_path))
    assert 0 < early < 5, "the script should finish some users at step 2 and not others"
    assert order == [1] * 3 + [2] * 3 + [3] * math.ceil((5 - early) / 2)
    assert len({p for call in fake.calls[3:6] for p in call}) == 5  # five users' own step-2 prompts


def test_progress_bar_counts_llm_calls(tiny_split, tmp_path, monkeypatch, capsys):
    from bench import progress

    model, _ = _fit(tiny_split, tmp_path, monkeypatch, lambda p: "Action: finish[#1]", max_steps=3)
    progress.set_enabled(True)
    try:
        model.rank(np.arange(4), 20, tiny_split.history("test")[:4])
    finally:
        progress.set_enabled(None)
    err = capsys.readouterr().err
    assert "recmind agent" in err and "call" in err


class Failing(LLMClient):
    """Fails on its `fail_at`-th generate call (0 = never); counts the prompts it answered."""

    name = "scripted"  # the same cache key as ScriptedLLM: the same model

    def __init__(self, answer, fail_at=0):
        self.answer, self.fail_at, self.calls = answer, fail_at, []

    def generate(self, prompts, *, max_new_tokens, temperature=0.0, seed=0):
        if self.fail_at and len(self.calls) + 1 == self.fail_at:
            raise RuntimeError("killed")
        self.calls.append(list(prompts))
        return [self.answer(p) for p in prompts]


AGENT_SCRIPT = by_step("Action: history[]", "Action: retrieve[4]",
                       lambda p: f"Action: finish[#{listed(p, 'the 4 best candidates')[-1][0]}]")


def test_rerun_makes_no_new_llm_calls(tiny_split, tmp_path, monkeypatch):
    cache = str(tmp_path / "c.sqlite")
    users = np.arange(6)
    history = tiny_split.history("test")
    model, _ = _fit(tiny_split, tmp_path / "a", monkeypatch, AGENT_SCRIPT, cache_path=cache, batch_size=4)
    first = top_k(model, users, history, 20)
    assert model.extra_result()["status"]["finished"] == 6
    rerun, never = _fit(tiny_split, tmp_path / "b", monkeypatch, Failing(AGENT_SCRIPT, fail_at=1),
                        cache_path=cache, batch_size=4)
    assert (top_k(rerun, users, history, 20) == first).all() and never.calls == []
    info = rerun.extra_result()
    assert info["cache_misses"] == 0 and info["llm_calls"] == 18 and info["status"]["finished"] == 6
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in _records(tmp_path / "a")]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in _records(tmp_path / "b")]


def test_interrupted_run_resumes_from_the_stored_answers(tiny_split, tmp_path, monkeypatch):
    users = np.arange(6)
    history = tiny_split.history("test")
    clean, clean_llm = _fit(tiny_split, tmp_path / "clean", monkeypatch, AGENT_SCRIPT, batch_size=4)
    expected = top_k(clean, users, history, 20)
    cache = str(tmp_path / "c.sqlite")
    killed, killed_llm = _fit(tiny_split, tmp_path / "a", monkeypatch, Failing(AGENT_SCRIPT, fail_at=4),
                              cache_path=cache, batch_size=4)
    with pytest.raises(RuntimeError, match="killed"):
        top_k(killed, users, history, 20)
    answered = {p for call in killed_llm.calls for p in call}
    resumed, resumed_llm = _fit(tiny_split, tmp_path / "b", monkeypatch, Failing(AGENT_SCRIPT), cache_path=cache,
                                batch_size=4)
    assert (top_k(resumed, users, history, 20) == expected).all()
    asked = [p for call in resumed_llm.calls for p in call]
    assert asked and not set(asked) & answered  # nothing generated twice
    assert answered | set(asked) == set(clean_llm.prompts)


class Counting(ScriptedLLM):
    """A scripted LLM with a tokenizer: one token per word, +100 for the chat template."""

    def count_tokens(self, texts, *, as_prompt=False):
        return [len(t.split()) + (100 if as_prompt else 0) for t in texts]


def test_per_user_cost_records(tiny_split, tmp_path, monkeypatch):
    llm = Counting(lambda p: "Thought: hmm\nAction: history[]" if step_of(p) == 1 else "gibberish")
    model, _ = _fit(tiny_split, tmp_path, monkeypatch, llm, max_steps=3)
    users = np.arange(4)
    model.rank(users, 20, tiny_split.history("test")[users])
    records = _records(tmp_path)
    assert len(records) == 4 and len(llm.calls) == 3
    for u, record in enumerate(records):
        prompts = [call[u] for call in llm.calls]
        answers = [llm.answer(p) for p in prompts]
        assert record["user_id"] == str(tiny_split.user_ids[u]) and record["status"] == "max_steps"
        assert record["llm_calls"] == 3 == len(record["steps"]) and record["invalid_actions"] == 2
        assert record["prompt_tokens"] == sum(len(p.split()) + 100 for p in prompts)
        assert record["answer_tokens"] == sum(len(a.split()) for a in answers)
        assert record["seconds"] >= 0 and record["call"] == 0
        assert [s["answer"] for s in record["steps"]] == answers
    info = model.extra_result()
    for key in ("llm_calls", "prompt_tokens", "answer_tokens", "invalid_actions"):
        assert info[key] == sum(r[key] for r in records), key
    assert info["token_counts"] == "tokenizer" and info["users_agent"] == 4
    assert info["llm_seconds"] == pytest.approx(sum(r["seconds"] for r in records), abs=0.01)
    assert info["llm_seconds"] <= info["agent_wall_seconds"] + 0.01
    assert info["example"]["status"] == "max_steps" and info["example"]["last_prompt"] == llm.calls[-1][0]


def test_token_estimate_without_a_tokenizer(tiny_split, tmp_path, monkeypatch):
    model, fake = _fit(tiny_split, tmp_path, monkeypatch, lambda p: "Action: finish[#1]", max_steps=2)
    model.rank(np.array([0]), 20, tiny_split.history("test")[:1])
    record = _records(tmp_path)[0]
    assert record["status"] == "max_steps"  # #1 was never shown: invalid twice
    assert record["prompt_tokens"] == sum(math.ceil(len(p) / 4) for p in fake.prompts)
    assert model.extra_result()["token_counts"] == "estimated (4 characters per token)"


def test_max_users_limits_the_agent_and_is_recorded(tiny_split, itemknn, tmp_path, monkeypatch):
    model, fake = _fit(tiny_split, tmp_path, monkeypatch, AGENT_SCRIPT, max_users=2)
    users = np.arange(tiny_split.n_users)
    history = tiny_split.history("test")
    recs = top_k(model, users, history, 20)  # through the harness, as the runner does
    assert len(fake.prompts) == 6  # 2 users x 3 steps
    assert (recs[2:] == top_k(itemknn, users[2:], history, 20)).all()  # the others: the retriever's order
    records = _records(tmp_path)
    assert [r["status"] for r in records[:2]] == ["finished"] * 2
    assert all(r["status"] == "max_users" and r["llm_calls"] == 0 for r in records[2:])
    model.rank(users[:5], 20, tiny_split.history("valid")[users[:5]])  # valid: the same two users again
    info = model.extra_result()
    assert len(fake.prompts) == 12 and info["users_agent"] == 4 and info["max_users"] == 2
    assert info["status"]["max_users"] == (len(users) - 2) + 3 and info["status"]["finished"] == 4
    assert [c["users_agent"] for c in info["per_call"]] == [2, 2]
    assert len(_records(tmp_path)) == len(users) + 5


def test_openai_endpoint_runs_the_agent(tiny_split, tmp_path, monkeypatch):
    def reply(prompt):
        if "(nothing yet)" in prompt:
            return "Thought: I need candidates.\nAction: retrieve[3]"
        return "Action: finish[#2, #1]"

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    users = np.arange(3)
    history = tiny_split.history("test")
    with OpenAIStub(reply=reply) as server:
        model = RecMind()
        model.fit(tiny_split, RecMindConfig(llm="openai:test-model", base_url=server.url, n_candidates=8,
                                            cache_path=str(tmp_path / "c.sqlite")), tmp_path)
        recs = top_k(model, users, history, 20)
    knn = model.tools.retrieve(history[users], 20)
    assert (recs[:, :2] == knn[:, [1, 0]]).all()
    # step 1 is the same prompt for every user: one request, then one per user
    assert len(server.requests) == 1 + len(users)
    assert server.requests[0]["body"]["model"] == "test-model"
    info = model.extra_result()
    assert info["status"]["finished"] == 3 and info["llm_calls"] == 6 and info["cache_hits"] == 2
    assert info["token_counts"].startswith("estimated")


def test_bad_config_is_a_clear_error(tiny_split, tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="max_steps"):
        _fit(tiny_split, tmp_path, monkeypatch, lambda p: "", max_steps=0)
    with pytest.raises(ConfigError, match="unknown LLM"):
        make_llm("gpt-4")


def test_cache_location(tmp_path):
    workdir = tmp_path / "work" / "smoke" / "synthetic" / "random-s0" / "recmind" / "seed0"
    assert resolve_cache_path("", workdir) == (tmp_path / "work" / "llm_cache.sqlite").resolve()
    assert resolve_cache_path("", tmp_path / "elsewhere") == (tmp_path / "elsewhere" / "llm_cache.sqlite").resolve()
    assert resolve_cache_path("off", workdir) is None
    assert resolve_cache_path(str(tmp_path / "c.sqlite"), workdir) == tmp_path / "c.sqlite"


def test_importing_the_model_loads_no_torch():
    code = "import sys, bench.llm, baselines.recmind; print('torch' in sys.modules or 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --------------------------------------------------------------------------- the SQLite cache

class CountingBackend(LLMClient):
    def __init__(self, name="counting"):
        self.name, self.calls, self.prompts = name, 0, []

    def generate(self, prompts, *, max_new_tokens, temperature=0.0, seed=0):
        self.calls += 1
        self.prompts += list(prompts)
        return [f"{p}|{max_new_tokens}|{temperature}|{seed}" for p in prompts]


def test_second_identical_call_does_not_reach_the_backend(tmp_path):
    backend = CountingBackend()
    llm = CachedLLM(backend, tmp_path / "c.sqlite")
    first = llm.generate(["a", "b", "a"], max_new_tokens=5)
    assert backend.prompts == ["a", "b"]  # duplicates inside one call are generated once
    second = llm.generate(["b", "a"], max_new_tokens=5)
    assert second == first[1:] and backend.calls == 1
    assert llm.stats()["cache_hits"] == 3 and llm.stats()["cache_misses"] == 2
    # a new process (new client, same file) is served from disk
    again = CachedLLM(CountingBackend(), tmp_path / "c.sqlite")
    assert again.generate(["a"], max_new_tokens=5) == first[:1] and again.backend.calls == 0


def test_decoding_settings_and_model_are_part_of_the_key(tmp_path):
    backend = CountingBackend()
    llm = CachedLLM(backend, tmp_path / "c.sqlite")
    llm.generate(["a"], max_new_tokens=5)
    llm.generate(["a"], max_new_tokens=6)
    llm.generate(["a"], max_new_tokens=5, temperature=0.7, seed=1)
    assert backend.calls == 3
    llm.generate(["a"], max_new_tokens=5, seed=3)  # greedy: the seed changes nothing, so it hits
    llm.generate(["a"], max_new_tokens=5, temperature=0.7, seed=1)
    assert backend.calls == 3
    llm.generate(["a"], max_new_tokens=5, temperature=0.7, seed=2)  # sampling: another seed misses
    assert backend.calls == 4
    other = CachedLLM(CountingBackend("other-model"), tmp_path / "c.sqlite")
    other.generate(["a"], max_new_tokens=5)
    assert other.backend.calls == 1
    assert len(LLMCache(tmp_path / "c.sqlite")) == 5


def test_answers_are_stored_chunk_by_chunk(tmp_path):
    class Failing(CountingBackend):
        def generate(self, prompts, **kw):
            if "boom" in prompts:
                raise RuntimeError("killed")
            return super().generate(prompts, **kw)

    llm = CachedLLM(Failing(), tmp_path / "c.sqlite", chunk_size=2)
    with pytest.raises(RuntimeError):
        llm.generate(["a", "b", "boom"], max_new_tokens=5)
    resumed = CachedLLM(CountingBackend(), tmp_path / "c.sqlite", chunk_size=2)
    resumed.generate(["a", "b", "c"], max_new_tokens=5)
    assert resumed.backend.prompts == ["c"]


def test_corrupt_cache_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "c.sqlite"
    bad.write_bytes(b"this is not a database" * 100)
    with pytest.raises(BenchError, match="delete the file"):
        LLMCache(bad)


# --------------------------------------------------------------------------- openai backend

def test_openai_backend_sends_a_chat_completion_and_reads_the_answer(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    with OpenAIStub() as server:
        llm = make_llm("openai:test-model", base_url=server.url + "/")
        assert llm.generate(["rank these", "and these"], max_new_tokens=7, seed=3) == ["4, 2, 9", "4, 2, 9"]
    req = server.requests[0]
    assert req["path"] == "/v1/chat/completions" and req["auth"] == "Bearer sk-test"
    assert req["body"]["model"] == "test-model" and req["body"]["max_tokens"] == 7
    assert req["body"]["temperature"] == 0.0 and req["body"]["seed"] == 3
    assert req["body"]["messages"] == [{"role": "user", "content": "rank these"}]
    assert server.requests[1]["body"]["messages"][0]["content"] == "and these"


def test_openai_backend_base_url_from_environment_and_cached(monkeypatch, tmp_path):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with OpenAIStub() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.url)
        llm = make_llm("openai:m", cache_path=tmp_path / "c.sqlite")
        assert llm.generate(["p"], max_new_tokens=4) == ["4, 2, 9"]
        assert llm.generate(["p"], max_new_tokens=4) == ["4, 2, 9"]
    assert len(server.requests) == 1 and server.requests[0]["auth"] is None  # no key: no header
    assert server.url in llm.name


def test_openai_backend_retries_server_errors_then_fails_clearly():
    with OpenAIStub(statuses=(503, 200)) as server:
        llm = OpenAIChatLLM("m", base_url=server.url, api_key="", retries=2, backoff=0)
        assert llm.generate(["p"], max_new_tokens=4) == ["4, 2, 9"] and len(server.requests) == 2
    with OpenAIStub(statuses=(400,)) as server:
        llm = OpenAIChatLLM("m", base_url=server.url, api_key="", retries=2, backoff=0)
        with pytest.raises(BenchError, match="HTTP 400"):
            llm.generate(["p"], max_new_tokens=4)
        assert len(server.requests) == 1  # a client error is not retried


def test_refused_connection_is_a_bench_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    llm = OpenAIChatLLM("m", base_url=f"http://127.0.0.1:{port}/v1", api_key="", retries=1, backoff=0, timeout=5)
    with pytest.raises(BenchError, match=rf"127.0.0.1:{port}/v1/chat/completions: no answer after 2 tries"):
        llm.generate(["p"], max_new_tokens=4)


def test_openai_without_key_on_the_public_endpoint_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(BenchError, match="OPENAI_API_KEY"):
        make_llm("openai:gpt-4o-mini")


def test_missing_local_model_is_a_clear_error(tmp_path):
    with pytest.raises(BenchError, match="does not exist"):
        make_llm(f"local:{tmp_path / 'nothing'}")


# --------------------------------------------------------------------------- the real offline model

@pytest.fixture(scope="module")
def synthetic_split(tmp_path_factory):
    from bench.data.datasets import ensure_split
    from bench.data.splits import SplitSpec
    from bench.paths import Workspace

    return ensure_split("synthetic", Workspace(tmp_path_factory.mktemp("ws")), SplitSpec())


@pytest.mark.slow
def test_smollm2_runs_the_agent_for_a_few_users_offline(synthetic_split, tmp_path):
    """3 users x 2 steps through SmolLM2-135M on CPU (tens of seconds; the first run on a machine
    also converts the GGUF, about a minute), the others item-kNN only; a rerun is served by the cache."""
    split = synthetic_split
    config = RecMindConfig(max_steps=2, n_candidates=10, history_len=3, llm_rank_k=3, observe_n=3,
                           max_new_tokens=24, batch_size=3, max_users=3, device="cpu",
                           cache_path=str(tmp_path / "cache.sqlite"))
    users = np.arange(8)
    history = split.history("test")
    model = RecMind()
    model.fit(split, config, tmp_path)
    recs = top_k(model, users, history, 20)
    assert ((recs >= 0) & (recs < split.n_items)).all()  # full lists, every item in the catalogue
    info = model.extra_result()
    assert info["users_agent"] == 3 and info["status"]["max_users"] == 5
    assert sum(info["status"].values()) == 8 and 3 <= info["llm_calls"] <= 6
    assert info["token_counts"] == "tokenizer" and info["prompt_tokens"] > 100 * info["llm_calls"]
    print("\nsmollm2 agent:", json.dumps({k: info[k] for k in (
        "status", "llm_calls", "invalid_actions", "repeated_actions", "tool_calls", "llm_seconds", "agent_wall_seconds",
        "prompt_tokens", "answer_tokens")}))
    for record in model.records[:3]:
        print(record["status"], [s["answer"] for s in record["steps"]])

    rerun = RecMind()
    rerun.fit(split, config, tmp_path)
    assert (top_k(rerun, users, history, 20) == recs).all()
    assert rerun.extra_result()["cache_misses"] == 0 and rerun.llm.backend._model is None  # never loaded


@pytest.mark.slow
def test_smollm2_batched_generation_matches_one_at_a_time():
    llm = make_llm("smollm2-135m", device="cpu", batch_size=3)
    prompts = ["Name a fruit.", "Count from one to five, in words, separated by commas.", "Say hello."]
    batched = llm.generate(prompts, max_new_tokens=8)
    assert all(isinstance(t, str) and t for t in batched)
    assert [llm.generate([p], max_new_tokens=8)[0] for p in prompts] == batched
    sampled = llm.generate(prompts[:1], max_new_tokens=8, temperature=0.8, seed=1)
    assert llm.generate(prompts[:1], max_new_tokens=8, temperature=0.8, seed=1) == sampled  # seeded sampling
