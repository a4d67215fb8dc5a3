"""RecMind (baselines/recmind.py) and the cached LLM client (bench/llm.py).

Fast tests use fake LLM clients and a local HTTP server; the one test with the real offline
SmolLM2-135M is marked slow (`pytest -m slow tests/test_recmind.py`).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import bench.llm as llm_mod
from baselines.recmind import (RecMind, RecMindConfig, build_prompt, complete_ranking, parse_ranking,
                               resolve_cache_path)
from bench.errors import BenchError, ConfigError
from bench.llm import CachedLLM, LLMCache, LLMClient, OpenAIChatLLM, make_llm
from bench.runner import top_k
from tests.openai_stub import OpenAIStub

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- parsing

def test_clean_answer_is_full():
    p = parse_ranking("3, 1, 7", n_candidates=10, n_pick=3)
    assert p.picks == [2, 0, 6] and p.status == "full"
    assert (p.hallucinated, p.repeated, p.extra) == (0, 0, 0)


def test_hallucinated_and_repeated_numbers_are_dropped_and_counted():
    p = parse_ranking("Sure! 3, 3, 11, 0, 2, 5", n_candidates=10, n_pick=3)
    assert p.picks == [2, 1, 4]
    assert p.hallucinated == 2 and p.repeated == 1 and p.status == "partial"


def test_unparseable_answer_is_unusable():
    for text in ("I cannot rank these products.", "", "1234567890123"):
        p = parse_ranking(text, n_candidates=10, n_pick=3)
        assert p.picks == [] and p.status == "unusable", text
    assert parse_ranking("1234567890123", 10, 3).hallucinated == 1


def test_more_picks_than_asked_are_ignored_without_penalty():
    p = parse_ranking("1, 2, 3, 4", n_candidates=10, n_pick=2)
    assert p.picks == [0, 1] and p.extra == 2 and p.status == "full"


def test_bracket_labels_win_over_list_numbers():
    p = parse_ranking("1. [4] Soft Towel (2-Pack)\n2. [2] Blue Puzzle\n3. [12] Made Up", n_candidates=10, n_pick=3)
    assert p.picks == [3, 1] and p.hallucinated == 1 and p.status == "partial"


def test_list_markers_titles_and_item_ids():
    ids = ["B000000001", "B00ITGZU2C", "B000000003"]
    titles = ["Hart & Finch Board Game", "Glowe Hydrating Body Mist", "Labcraft Drill Bit Set (2-Pack)"]
    text = "1. glowe hydrating  body mist\n2) B000000003\n3: B0XXXXXXX9\n- Labcraft Drill Bit Set (2-Pack)"
    p = parse_ranking(text, 3, 3, candidate_ids=ids, candidate_titles=titles)
    # title (case and spaces ignored), then an id, a non-candidate id (hallucinated), a repeated title
    assert p.picks == [1, 2] and p.hallucinated == 1 and p.repeated == 1
    assert parse_ranking("1: 2\n2: 1", 3, 2).picks == [1, 0]
    # naming an item the user already bought (shown as history, not a candidate) is hallucinated
    p = parse_ranking("1. Old Purchase Title\n2. Glowe Hydrating Body Mist", 3, 2, ids, titles,
                      other_titles=["Old Purchase Title"])
    assert p.picks == [1] and p.hallucinated == 1


def test_complete_ranking_keeps_knn_order_for_the_rest():
    cand = np.array([10, 11, 12, 13, 14])
    assert complete_ranking(cand, [3, 0]).tolist() == [13, 10, 11, 12, 14]
    assert complete_ranking(cand, []).tolist() == cand.tolist()


def test_prompt_lists_history_and_numbered_candidates():
    p = build_prompt(["Old Thing", "New Thing"], ["Cand A", "Cand B"], 2)
    assert "- Old Thing\n- New Thing" in p and "[1] Cand A\n[2] Cand B" in p and "2 best candidates" in p


# --------------------------------------------------------------------------- the model with a fake LLM

class ScriptedLLM(LLMClient):
    """Answers by a function of the prompt; records every prompt it sees."""

    name = "scripted"

    def __init__(self, answer):
        self.answer, self.prompts = answer, []

    def generate(self, prompts, *, max_new_tokens, temperature=0.0, seed=0):
        self.prompts += list(prompts)
        return [self.answer(p) for p in prompts]


@pytest.fixture(scope="module")
def tiny_split(tmp_path_factory):
    from bench.data.datasets import ensure_split
    from bench.data.splits import SplitSpec
    from bench.paths import Workspace

    return ensure_split("synthetic-tiny", Workspace(tmp_path_factory.mktemp("ws")), SplitSpec())


def _fit(split, tmp_path, monkeypatch, answer, **config):
    fake = ScriptedLLM(answer)
    monkeypatch.setattr(llm_mod, "make_llm", lambda spec, **kw: fake)
    model = RecMind()
    model.fit(split, RecMindConfig(**{"n_candidates": 8, "llm_rank_k": 3, "cache_path": "off", **config}), tmp_path)
    return model, fake


def test_rank_puts_llm_picks_first_then_completes_from_candidates(tiny_split, tmp_path, monkeypatch):
    answers = iter(["2, 99, 2, 5", "no idea", "1, 2, 3"] * 1000)
    model, fake = _fit(tiny_split, tmp_path, monkeypatch, lambda p: next(answers))
    users = np.arange(min(6, tiny_split.n_users))
    hist = tiny_split.history("test")[users]
    knn = model.retrieve(users, hist, 100)
    recs = model.rank(users, 20, hist)
    assert recs.shape[1] >= 20 and len(fake.prompts) == len(users)
    assert ((recs >= -1) & (recs < tiny_split.n_items)).all()
    for r in range(len(users)):
        assert not set(recs[r][recs[r] >= 0]) & set(hist[r].indices)  # history never recommended
    # user 0 answered "2, 99, 2, 5": candidates 2 and 5 first, then the others in kNN order
    assert recs[0, :2].tolist() == [knn[0, 1], knn[0, 4]]
    rest = [i for i in knn[0] if i not in (knn[0, 1], knn[0, 4])]
    assert recs[0, 2:].tolist() == rest[:recs.shape[1] - 2]
    assert recs[1].tolist() == knn[1, :recs.shape[1]].tolist()  # unusable answer -> kNN order
    info = model.extra_result()
    assert info["users_llm"] == len(users)
    assert info["parse"] == {"full": 2, "partial": 2, "unusable": 2}
    assert info["items_hallucinated"] == 2 and info["items_repeated"] == 2
    assert info["picks_equal_knn_order"] == 2 and info["example"]["output"] == "2, 99, 2, 5"
    lines = (tmp_path / "recmind_llm_outputs.jsonl").read_text().splitlines()
    assert len(lines) == len(users) and json.loads(lines[1])["status"] == "unusable"


def test_max_users_limits_the_llm_and_is_reported(tiny_split, tmp_path, monkeypatch):
    model, fake = _fit(tiny_split, tmp_path, monkeypatch, lambda p: "3, 2, 1", max_users=2)
    users = np.arange(tiny_split.n_users)
    history = tiny_split.history("test")
    recs = top_k(model, users, history, 20)  # through the harness, as the runner does
    assert len(fake.prompts) == 2
    knn = model.retrieve(users, history[users], 100)
    assert (recs[2:, :10] == knn[2:, :10]).all()  # users beyond max_users: kNN order
    assert recs[0, :3].tolist() == knn[0, [2, 1, 0]].tolist()
    model.rank(users[:5], 20, tiny_split.history("valid")[users[:5]])  # valid: the same two users again
    info = model.extra_result()
    assert len(fake.prompts) == 4 and info["users_llm"] == 4
    assert info["users_knn_only_max_users"] == (len(users) - 2) + 3 and info["max_users"] == 2
    assert [c["users_llm"] for c in info["per_call"]] == [2, 2]


def test_prompt_has_recent_history_and_titles(tiny_split, tmp_path, monkeypatch):
    model, fake = _fit(tiny_split, tmp_path, monkeypatch, lambda p: "1", history_len=2, max_users=1)
    user = np.array([0])
    hist = tiny_split.history("test")[user]
    model.rank(user, 10, hist)
    prompt = fake.prompts[0]
    assert prompt.count("\n- ") == min(2, hist.nnz)
    cand = model.retrieve(user, hist, 8)[0]
    assert f"[1] {model.titles[cand[0]]}" in prompt and f"[8] {model.titles[cand[7]]}" in prompt


def test_bad_config_is_a_clear_error(tiny_split, tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="n_candidates"):
        _fit(tiny_split, tmp_path, monkeypatch, lambda p: "", n_candidates=0)
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
def test_smollm2_ranks_a_few_users_offline(synthetic_split, tmp_path):
    """3 users through SmolLM2-135M on CPU (tens of seconds; the first run on a machine also
    converts the GGUF, about a minute), the others kNN only; a rerun is served by the cache."""
    split = synthetic_split
    config = RecMindConfig(n_candidates=10, history_len=3, llm_rank_k=3, max_new_tokens=16, batch_size=3,
                           max_users=3, device="cpu", cache_path=str(tmp_path / "cache.sqlite"))
    users = np.arange(8)
    history = split.history("test")
    model = RecMind()
    model.fit(split, config, tmp_path)
    recs = top_k(model, users, history, 20)
    assert ((recs >= 0) & (recs < split.n_items)).all()  # full lists, every item in the catalogue
    info = model.extra_result()
    assert info["users_llm"] == 3 and info["users_knn_only_max_users"] == 5
    assert sum(info["parse"].values()) == 3 and info["cache_misses"] == 3
    print("\nsmollm2 parse stats:", json.dumps({k: info[k] for k in (
        "parse", "items_hallucinated", "items_repeated", "items_extra", "picks_equal_knn_order",
        "llm_seconds", "llm_model_load_seconds", "seconds_per_generated_prompt")}))
    for record in model.records:
        print(record["status"], repr(record["output"]))

    rerun = RecMind()
    rerun.fit(split, config, tmp_path)
    assert (top_k(rerun, users, history, 20) == recs).all()
    assert rerun.extra_result()["cache_hits"] == 3 and rerun.llm.backend._model is None  # never loaded


@pytest.mark.slow
def test_smollm2_batched_generation_matches_one_at_a_time():
    llm = make_llm("smollm2-135m", device="cpu", batch_size=3)
    prompts = ["Name a fruit.", "Count from one to five, in words, separated by commas.", "Say hello."]
    batched = llm.generate(prompts, max_new_tokens=8)
    assert all(isinstance(t, str) and t for t in batched)
    assert [llm.generate([p], max_new_tokens=8)[0] for p in prompts] == batched
    sampled = llm.generate(prompts[:1], max_new_tokens=8, temperature=0.8, seed=1)
    assert llm.generate(prompts[:1], max_new_tokens=8, temperature=0.8, seed=1) == sampled  # seeded sampling
