"""`recmind`: RecMind (Wang et al. 2023), an LLM agent that plans, calls tools and revises its plan.

Per user the agent runs a ReAct-style loop of at most `max_steps` LLM calls. Each call sees the
task, the tools and every step explored so far, and answers ``Thought: ...`` and
``Action: tool[arguments]``; the harness runs the tool and the observation joins the next prompt.

Tools (plain functions over the split and the history the runner passes; `Tools`):

    history[]              the user's last `history_len` known items, oldest first
    retrieve[n]            the user's n best unseen items by item-kNN (`baselines.itemknn`, `knn_k`
                           neighbours per item; n <= `n_candidates`), cut by `bench.runner.top_k`:
                           the harness's own history mask and ranking rule
    item_info[#k]          the item's facts: title, brand, categories, description, how many train
                           users have it, its mean train rating, two train review summaries
    similar_items[#k, n]   the item's n nearest item-kNN neighbours the user has not seen
    search[words]          unseen items whose title, brand or categories contain the words
    finish[#a, #b, ...]    the answer: items, best first (`llm_rank_k` asked for)

Items are named in observations as ``#k Title`` with numbers local to the user's episode; an
answer may cite them by ``#k``, by ``k`` or by item id. Titles are not parsed.

Self-Inspiring (the paper's planning, Section 3.3): at every step the prompt holds all states
explored so far for the user, failed and repeated attempts included, under "Explored so far",
and asks the next step to build on them; a call that repeats an explored one is not run again
(its observation points back to the step). The paper's SI also branches from earlier states; a
new branch here is simply the next action, with all explored branches in view.

Parsing (`parse_action`): the text after the model's first ``Observation:`` (an invented one) is
ignored; the first ``tool[...]`` or ``tool(...)`` after ``Action:`` (else anywhere) is the action.
An action that cannot be read, names no known tool, cites no known item, or finishes with no
usable item is *invalid*: counted, answered with an observation saying why, and the loop goes on.
An agent that has not finished after `max_steps` (the last prompt asks for finish) keeps the
retriever's order. The final list: the agent's picks (unseen items, distinct, in its order), then
the retriever's order for everything it did not rank, `max(k, n_candidates)` long.

Batching and cost: step t of every running user of a rank call goes through the LLM together
(`batch_size` prompts per generation batch and per cache write). Per user the agent records its
LLM calls, prompt and answer tokens (the local model's tokenizer, chat template included; an
estimate of 4 characters per token for `openai:`), seconds (each batch's time shared equally by
its prompts), invalid and repeated actions, tool calls and the final status: finished, max_steps,
max_users (beyond `max_users`, retriever's order), no_history, no_candidates. One JSON line per user
and rank call goes to ``<workdir>/recmind_agent.jsonl`` (the whole trajectory, raw answers included);
the sums and the first agent's full last prompt go to the result's `model_info`. A progress bar
counts LLM calls; its total shrinks when users finish early, so its ETA is an upper bound.

Users through the agent: with `max_users` > 0, the first `max_users` distinct users this model is
asked to rank. The runner scores test first, users in index order, so the agent sees the
lowest-indexed test users, then the same users again when valid is scored.

Resumption: the LLM answers are cached in SQLite (`bench.llm`), by default in
``<workspace>/work/llm_cache.sqlite`` (shared by every job, preset and seed; the key holds the model,
the prompt and the decoding settings), each batch's answers written before the next batch. Prompts
depend only on the split, the config and earlier answers, so a rerun replays every user's loop
from the cache and an interrupted run generates only the answers it did not store.

SmolLM2 on real data (measured): am-instruments-2014 (no titles: items are shown as "item <id>"),
offline SmolLM2-135M, `cpu` settings (8 users, scored in test and again in valid: 16 episodes), on
the shared 2-core CPU while other jobs ran (load average about 6; times are upper bounds):
- `cpu` (max_steps 3, max_new_tokens 48): 48 LLM calls (3 per user), 0 valid actions, 0 finishes.
  The model echoes the start of the prompt. No tool was called, so every user's prompts stayed the
  same and the cache served 45 of the 48 calls: 3 generations, 31 s with the 5 s model load,
  1.9 s per user; the job took 42 s. All 16 users kept the retriever's order, so the lists are
  item-kNN's (NDCG@20 0.0426).
- max_steps 6, max_new_tokens 96: 96 calls (6 per user), 81 generated; 34 valid actions, all
  `history[]`, read from the tool list the model echoed at step 1 (18 of them repeats); 62
  invalid actions; 0 finishes. Its later answers were prose such as "The user will most likely buy
  the item B0009G1E0K", naming items copied from the history observation (already bought). 678 s
  of generation, 42 s per user, 11.5 minutes for the job; the lists were again item-kNN's.
A 135M model does not follow the ReAct format, so on a CPU RecMind measures the harness, not the
method. Results worth comparing need an instruction-following model (`openai:` or `local:`).
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from baselines.itemknn import ItemKNN, ItemKNNConfig
from bench.errors import ConfigError
from bench.io import write_text_atomic
from bench.models import Model, ModelConfig

logger = logging.getLogger(__name__)

OUTPUTS_FILE = "recmind_agent.jsonl"
CACHE_FILE = "llm_cache.sqlite"
TOOLS = ("history", "retrieve", "item_info", "similar_items", "search", "finish")
STATUSES = ("finished", "max_steps", "max_users", "no_history", "no_candidates")
CHARS_PER_TOKEN = 4  # token estimate where the backend has no tokenizer here (openai:)


@dataclass(frozen=True)
class RecMindConfig(ModelConfig):
    llm: str = field(default="smollm2-135m", metadata={
        "help": "smollm2-135m (offline), local:/path/to/hf-model or openai:<model> (OPENAI_BASE_URL, OPENAI_API_KEY)"})
    max_steps: int = field(default=6, metadata={
        "help": "LLM calls (Thought/Action/Observation steps) per user at most; the last one asks for finish"})
    n_candidates: int = field(default=100, metadata={
        "help": "most items retrieve[n] shows (paper setting 100-200); the fallback list is at least this long"})
    history_len: int = field(default=20, metadata={"help": "most recent items history[] shows"})
    llm_rank_k: int = field(default=20, metadata={"help": "items the prompt asks finish[...] to rank"})
    observe_n: int = field(default=10, metadata={"help": "items similar_items[] and search[] show by default"})
    max_new_tokens: int = field(default=160, metadata={"help": "generation budget per step"})
    temperature: float = field(default=0.0, metadata={"help": "0 = greedy decoding"})
    batch_size: int = field(default=8, metadata={"help": "prompts per generation batch (and per cache write)"})
    max_users: int = field(default=0, metadata={
        "help": "0 = every user through the agent; else only the first max_users users, the others get the "
                "retriever's order"})
    knn_k: int = field(default=100, metadata={"help": "neighbours per item of the item-kNN retrieval tool"})
    title_chars: int = field(default=80, metadata={"help": "titles longer than this are cut in observations"})
    device: str = field(default="auto", metadata={"help": "local LLM device: auto, cpu, cuda"})
    base_url: str = field(default="", metadata={
        "help": "openai backend base URL ('' = OPENAI_BASE_URL or api.openai.com)"})
    cache_path: str = field(default="", metadata={
        "help": "LLM answer cache (SQLite); '' = <workspace>/work/llm_cache.sqlite, 'off' = no cache"})


# --------------------------------------------------------------------------- parsing an answer

@dataclass
class Action:
    name: str | None  # one of TOOLS, None when no action could be read
    args: str = ""
    thought: str = ""
    error: str = ""  # why no action was read


_SPACES = re.compile(r"\s+")
_INVENTED = re.compile(r"(?i)\bobservation\s*:")
_THOUGHT = re.compile(r"(?is)\bthought\s*:\s*(.*?)(?=\baction\s*:|$)")
_ACTION_MARK = re.compile(r"(?i)\baction\s*:")
_TOOL_NAME = r"(history|retrieve|item[ _]?info|similar[ _]?items|search|finish)"
_CALL = re.compile(rf"(?i)\b{_TOOL_NAME}\s*[\[(]([^\])\n]*)")
_BARE = re.compile(rf"(?i)\s*\**\s*{_TOOL_NAME}\b(.*)")
_REF = re.compile(r"#?\s*([A-Za-z0-9][A-Za-z0-9_\-]*)")


def parse_action(text: str) -> Action:
    """The first action of an answer (see the module docstring); never raises."""
    body = _INVENTED.split(text, maxsplit=1)[0]
    thought_match = _THOUGHT.search(body)
    thought = _SPACES.sub(" ", thought_match.group(1)).strip() if thought_match else ""
    mark = _ACTION_MARK.search(body)
    region = body[mark.end():] if mark else body
    call = _CALL.search(region)
    if call is None and mark:
        call = _BARE.match(region.split("\n", 1)[0])  # "Action: history" without brackets
    if call is None:
        return Action(None, thought=thought, error="no action found" if not mark else "the action names no tool")
    name = re.sub(r"[ _]", "", call.group(1).lower())
    name = {"iteminfo": "item_info", "similaritems": "similar_items"}.get(name, name)
    args = call.group(2).strip().strip("[]()").strip()
    return Action(name, args, thought)


def item_refs(args: str) -> list[str]:
    """The item references of an argument list: ``#3, 7, B00ABC`` -> ["3", "7", "B00ABC"]."""
    return [m.group(1) for m in _REF.finditer(args)]


def first_int(text: str) -> int | None:
    match = re.search(r"\d+", text)
    return int(match.group()) if match else None


# --------------------------------------------------------------------------- the tools

class Tools:
    """The agent's tools as plain functions over a split (items, train interactions, reviews) and
    the item-kNN retriever. The user's side (known items) is passed in, as the runner passes it."""

    def __init__(self, split, knn: ItemKNN, title_chars: int):
        self.split = split
        self.knn = knn
        self.title_chars = title_chars
        items = split.items.fillna("")
        self.names = [self._name(t, i) for i, t in zip(split.item_ids, items["title"])]
        train_items = split.train["item"].to_numpy()
        self.n_buyers = np.bincount(train_items, minlength=split.n_items)
        self.by_popularity = np.lexsort((np.arange(split.n_items), -self.n_buyers))  # search's tie order
        self.brand = [_clean(b) for b in items["brand"]]
        self.categories = [" > ".join(c for c in re.split(r"[|]", _clean(cat)) if c) for cat in items["categories"]]
        self.description = [_clean(d) for d in items["description"]]
        self._words = self._word_matrix()
        self._summaries: dict[int, list[str]] | None = None

    def _name(self, title: str, item_id: str) -> str:
        title = _clean(title)
        if not title:
            return f"item {item_id}"
        cut = self.title_chars
        return title if len(title) <= cut else title[:cut - 3].rstrip() + "..."

    def _word_matrix(self) -> tuple[dict[str, int], sp.csr_matrix]:
        """(vocabulary, (n_items, n_words) binary matrix) of title, brand and category words."""
        vocab: dict[str, int] = {}
        rows, cols = [], []
        for i, text in enumerate(zip(self.split.items["title"].fillna(""), self.brand, self.categories)):
            for word in set(_words(_clean(" ".join(map(str, text))))):
                rows.append(i)
                cols.append(vocab.setdefault(word, len(vocab)))
        matrix = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)),
                               shape=(self.split.n_items, max(len(vocab), 1)))
        return vocab, matrix

    # ---- the user's side
    def retrieve(self, history: sp.csr_matrix, n: int) -> np.ndarray:
        """(n_rows, n) item-kNN ranking of each history row's unseen items, best first, -1 padded."""
        from bench.scoring import top_k

        # ItemKNN scores from the history rows alone (history @ similarity), so the rows can stand
        # for the users: the harness's own masking and ranking rule (ties: lower item index).
        rows = np.arange(history.shape[0])
        return top_k(self.knn, rows, history, n)

    def history(self, users: np.ndarray, history: sp.csr_matrix, n: int) -> list[list[int]]:
        """Each user's `n` most recent known items (the rows of `history`), oldest first."""
        # numpy only, despite the module name
        from bench.data.sequences import padded_histories

        seqs = padded_histories(self.split, users, history, n)
        return [[int(i) for i in row if i >= 0] for row in seqs]

    # ---- item facts
    def item_info(self, item: int) -> str:
        """The item's facts in one line (its name first)."""
        parts = [self.names[item], f"id {self.split.item_ids[item]}"]
        if self.brand[item]:
            parts.append(f"brand: {self.brand[item]}")
        if self.categories[item]:
            parts.append(f"categories: {self.categories[item]}")
        if self.description[item]:
            parts.append(f"description: {_cut(self.description[item], 160)}")
        rating = float(self.split.item_mean_rating[item])
        parts.append(f"bought by {int(self.n_buyers[item])} users" + (f", mean rating {rating:.1f}" if rating else ""))
        summaries = self.review_summaries().get(item, [])
        if summaries:
            parts.append("reviews: " + "; ".join(f'"{s}"' for s in summaries))
        return ". ".join(p.rstrip(".") for p in parts)

    def review_summaries(self) -> dict[int, list[str]]:
        """Up to two train review summaries per item (read once; never valid or test text)."""
        if self._summaries is None:
            reviews = self.split.reviews
            reviews = reviews[reviews["summary"].astype(str).str.strip() != ""]
            self._summaries = {int(i): [_cut(_clean(s), 60) for s in g["summary"].head(2)]
                               for i, g in reviews.groupby("item", sort=False)}
        return self._summaries

    def similar_items(self, item: int, n: int, exclude: Sequence[int] = ()) -> list[int]:
        """The `n` items most similar to `item` by item-kNN, without `item` and `exclude`."""
        scores = self.knn.sim[item].toarray().astype(np.float64)  # (1, n_items): what `item` adds to each
        return self._best(scores, n, [item, *exclude])

    def search(self, query: str, n: int, exclude: Sequence[int] = ()) -> list[int]:
        """Items whose title, brand or category words contain the most words of `query`;
        ties: more train buyers first."""
        vocab, matrix = self._words
        cols = sorted({vocab[w] for w in _words(query) if w in vocab})
        if not cols:
            return []
        scores = np.asarray(matrix[:, cols].sum(axis=1), dtype=np.float64).T  # (1, n_items)
        return self._best(scores, n, exclude, tie_order=self.by_popularity)

    @staticmethod
    def _best(scores: np.ndarray, n: int, exclude: Sequence[int], tie_order: np.ndarray | None = None) -> list[int]:
        from bench.ranking import top_k_indices

        scores[0, list(exclude)] = 0.0
        best = top_k_indices(scores, n, tie_order)[0]
        return [int(i) for i in best if scores[0, i] > 0]


def _clean(text) -> str:
    from bench.data.canonical import clean_text

    return clean_text(text)


def _cut(text: str, n: int) -> str:
    return text if len(text) <= n else text[:n - 3].rstrip() + "..."


def _words(text: str) -> list[str]:
    return [w for w in re.findall(r"[a-z0-9]+", text.lower()) if len(w) > 1]


# --------------------------------------------------------------------------- one user's episode

@dataclass
class Episode:
    """One user's agent run inside one rank call."""

    row: int  # row in the rank call
    user_id: str
    recent: list[int]  # history[] items, oldest first
    seen: set[int]  # every known item (never recommended)
    candidates: np.ndarray  # the retriever's order, -1 removed (the fallback)
    status: str = "running"
    steps: list[dict] = field(default_factory=list)
    picks: list[int] = field(default_factory=list)
    labels: dict[int, int] = field(default_factory=dict)  # #k -> item
    label_of: dict[int, int] = field(default_factory=dict)  # item -> #k
    explored: dict[tuple, int] = field(default_factory=dict)  # canonical call -> its step
    cost: Counter = field(default_factory=Counter)
    tools: Counter = field(default_factory=Counter)

    def label(self, item: int) -> str:
        """``#k``, giving `item` the next number the first time it is shown."""
        if item not in self.label_of:
            self.label_of[item] = len(self.label_of) + 1
            self.labels[self.label_of[item]] = item
        return f"#{self.label_of[item]}"

    def name(self, item: int, names: Sequence[str]) -> str:
        return f"{self.label(item)} {names[item]}"

    def resolve(self, ref: str, item_index: dict[str, int]) -> int | None:
        """The item a reference names: a shown number first, then an item id."""
        if ref.isdigit() and int(ref) in self.labels:
            return self.labels[int(ref)]
        return item_index.get(ref)


# --------------------------------------------------------------------------- the prompt

_TOOL_HELP = (
    "history[] - the user's purchases, oldest first\n"
    "retrieve[n] - the n products most similar to the user's purchases, best first\n"
    "item_info[#k] - facts and reviews of product #k\n"
    "similar_items[#k] - products similar to product #k\n"
    "search[words] - products whose title or category contains the words\n"
    "finish[#a, #b, ...] - your final answer: the {n_rank} products the user will most likely buy next, best first"
)


def build_prompt(steps: Sequence[dict], step: int, max_steps: int, n_rank: int) -> str:
    """The prompt of step `step` (1-based): task, tools, every explored step, answer format."""
    explored = "\n\n".join(
        f"Step {s['step']}.\nThought: {_cut(s['thought'], 160) or '-'}\nAction: {s['action']}\n"
        f"Observation: {s['observation']}" for s in steps) or "(nothing yet)"
    last = step >= max_steps
    return (
        "You are RecMind, a recommendation agent. Find the products this user will buy next. Work in steps: "
        "each step writes one Thought and one Action, then gets an Observation. Name products by their # "
        f"numbers. You have {max_steps} steps.\n\n"
        f"Tools:\n{_TOOL_HELP.format(n_rank=n_rank)}\n\n"
        "Explored so far (every earlier step, failed ones included; build on them, do not repeat them):\n"
        f"{explored}\n\n"
        f"Step {step} of {max_steps}."
        + (" This is the last step: answer with finish[...] now." if last else "")
        + "\nAnswer with two lines:\nThought: <your reasoning>\nAction: <tool>[<arguments>]"
    )


# --------------------------------------------------------------------------- the model

class RecMind(Model):
    Config = RecMindConfig

    def fit(self, split, config: RecMindConfig, workdir: Path) -> None:
        from bench.llm import make_llm

        for name in ("max_steps", "n_candidates", "history_len", "llm_rank_k", "observe_n", "max_new_tokens",
                     "batch_size", "knn_k"):
            if getattr(config, name) < 1:
                raise ConfigError(f"recmind.{name} must be >= 1, not {getattr(config, name)}")
        if config.max_users < 0:
            raise ConfigError(f"recmind.max_users must be >= 0 (0 = all users), not {config.max_users}")
        self.config = config
        self.split = split
        self.workdir = Path(workdir)
        self.knn = ItemKNN()
        self.knn.fit(split, ItemKNNConfig(k=config.knn_k), workdir)
        self.tools = Tools(split, self.knn, config.title_chars)
        self.item_index = {str(i): n for n, i in enumerate(split.item_ids)}
        self.cache_path = resolve_cache_path(config.cache_path, self.workdir)
        self.llm = make_llm(config.llm, cache_path=self.cache_path, device=config.device,
                            batch_size=config.batch_size, base_url=config.base_url or None)
        self._agent_users: dict[int, None] = {}  # ordered set of users allowed through the agent
        self.counts: Counter = Counter()
        self.tool_counts: Counter = Counter()
        self.per_call: list[dict] = []
        self.records: list[dict] = []
        self.example: dict | None = None
        self.token_counts = "tokenizer"

    def _agent_allowed(self, user: int) -> bool:
        limit = self.config.max_users
        if not limit or user in self._agent_users:
            return True
        if len(self._agent_users) < limit:
            self._agent_users[user] = None
            return True
        return False

    # ---- the contract
    def rank(self, users: np.ndarray, k: int, history) -> np.ndarray:
        """(len(users), max(k, n_candidates)) item indices, best first, -1 = empty."""
        cfg = self.config
        users = np.asarray(users, dtype=np.int64)
        history = sp.csr_matrix(history)
        order = self.tools.retrieve(history, max(k, cfg.n_candidates))
        n_hist = np.diff(history.indptr)
        statuses: dict[int, str] = {}
        rows = []
        for r, user in enumerate(users):
            if n_hist[r] == 0:
                statuses[r] = "no_history"
            elif order[r, 0] < 0:
                statuses[r] = "no_candidates"
            elif not self._agent_allowed(int(user)):
                statuses[r] = "max_users"
            else:
                rows.append(r)
        recent = self.tools.history(users[rows], history[rows], cfg.history_len) if rows else []
        episodes = [Episode(row=r, user_id=str(self.split.user_ids[users[r]]), recent=hist,
                            seen=set(history[r].indices.tolist()), candidates=order[r][order[r] >= 0])
                    for r, hist in zip(rows, recent)]
        t0 = time.perf_counter()
        self.run_agent(episodes)
        call = Counter(users=len(users), users_agent=len(episodes), wall_seconds=time.perf_counter() - t0)
        call.update(f"status_{s}" for s in statuses.values())
        for ep in episodes:
            order[ep.row] = final_ranking(order[ep.row], ep.picks)
            call[f"status_{ep.status}"] += 1
            call.update(ep.cost)
            self.tool_counts.update(ep.tools)
        self.records += [self._record(ep) for ep in episodes]
        self.records += [{"call": len(self.per_call), "user_id": str(self.split.user_ids[users[r]]), "status": s,
                          "llm_calls": 0} for r, s in statuses.items()]
        self.per_call.append({key: (round(v, 3) if isinstance(v, float) else v) for key, v in call.items()})
        self.counts.update(call)
        write_text_atomic(self.workdir / OUTPUTS_FILE, "".join(json.dumps(r) + "\n" for r in self.records))
        return order

    def _record(self, ep: Episode) -> dict:
        return {"call": len(self.per_call), "user_id": ep.user_id, "status": ep.status,
                "picks": [str(self.split.item_ids[i]) for i in ep.picks],
                "llm_calls": ep.cost["llm_calls"], "prompt_tokens": ep.cost["prompt_tokens"],
                "answer_tokens": ep.cost["answer_tokens"], "seconds": round(ep.cost["seconds"], 3),
                "invalid_actions": ep.cost["invalid_actions"], "repeated_actions": ep.cost["repeated_actions"],
                "tools": dict(ep.tools), "steps": ep.steps}

    # ---- the loop
    def run_agent(self, episodes: list[Episode]) -> None:
        """Step t of every running episode through the LLM together, until each finishes or
        has used `max_steps` calls."""
        from bench import progress

        cfg = self.config
        active = list(episodes)
        with progress.bar(total=len(active) * cfg.max_steps, desc="recmind agent", unit="call",
                          disable=not active) as bar:
            for step in range(1, cfg.max_steps + 1):
                if not active:
                    break
                prompts = [build_prompt(ep.steps, step, cfg.max_steps, cfg.llm_rank_k) for ep in active]
                answers, seconds = self._generate(prompts, bar)
                prompt_tokens = self._count_tokens(prompts, as_prompt=True)
                answer_tokens = self._count_tokens(answers)
                for i, ep in enumerate(active):
                    ep.cost.update(llm_calls=1, prompt_tokens=prompt_tokens[i], answer_tokens=answer_tokens[i],
                                   seconds=seconds[i])
                    self.act(ep, answers[i], step)
                    if self.example is None and (ep.status != "running" or step == cfg.max_steps):
                        self.example = {"user_id": ep.user_id, "last_prompt": prompts[i], "answer": answers[i],
                                        "status": ep.status if ep.status != "running" else "max_steps"}
                running = [ep for ep in active if ep.status == "running"]
                bar.total -= (len(active) - len(running)) * (cfg.max_steps - step)  # finished early
                bar.set_postfix(step=step, finished=sum(ep.status == "finished" for ep in episodes), refresh=False)
                bar.refresh()
                active = running
        for ep in active:
            ep.status = "max_steps"

    def _generate(self, prompts: list[str], bar) -> tuple[list[str], list[float]]:
        """Answers and seconds per prompt (each batch's time shared by its prompts)."""
        cfg = self.config
        answers: list[str] = []
        seconds: list[float] = []
        for start in range(0, len(prompts), cfg.batch_size):
            part = prompts[start:start + cfg.batch_size]
            t0 = time.perf_counter()
            answers += self.llm.generate(part, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                         seed=cfg.seed)
            seconds += [(time.perf_counter() - t0) / len(part)] * len(part)
            bar.update(len(part))
        return answers, seconds

    def _count_tokens(self, texts: list[str], as_prompt: bool = False) -> list[int]:
        counter = getattr(self.llm, "count_tokens", None)
        counts = counter(texts, as_prompt=as_prompt) if counter is not None else None
        if counts is None:
            self.token_counts = f"estimated ({CHARS_PER_TOKEN} characters per token)"
            return [math.ceil(len(t) / CHARS_PER_TOKEN) for t in texts]
        return list(counts)

    def act(self, ep: Episode, answer: str, step: int) -> None:
        """Read the answer's action, run its tool and record the step."""
        action = parse_action(answer)
        record = {"step": step, "thought": action.thought, "answer": answer}
        if action.name is None:
            return self._invalid(ep, record, _cut(_SPACES.sub(" ", answer), 60) or "(empty)", action.error)
        ep.tools[action.name] += 1
        shown = f"{action.name}[{action.args}]"
        if action.name == "finish":
            return self._finish(ep, record, shown, action.args)
        key, observation, error = self._run_tool(ep, action)
        if error:
            return self._invalid(ep, record, shown, error)
        outcome = "ok"
        if key in ep.explored:  # self-inspiring: an explored state is pointed to, not explored again
            outcome = "repeated"
            ep.cost["repeated_actions"] += 1
            observation = (f"already explored at step {ep.explored[key]} (see above); choose another action "
                           "or finish")
        else:
            ep.explored[key] = step
        ep.steps.append({**record, "action": shown, "outcome": outcome, "observation": observation})

    def _invalid(self, ep: Episode, record: dict, shown: str, why: str) -> None:
        ep.cost["invalid_actions"] += 1
        ep.steps.append({**record, "action": shown, "outcome": "invalid",
                         "observation": f"invalid action ({why}). Write: Action: <tool>[<arguments>] with a tool "
                                        f"from the list."})

    def _finish(self, ep: Episode, record: dict, shown: str, args: str) -> None:
        picks: list[int] = []
        dropped = Counter()
        for ref in item_refs(args):
            item = ep.resolve(ref, self.item_index)
            if item is None:
                dropped["unknown"] += 1
            elif item in ep.seen:
                dropped["already_bought"] += 1
            elif item in picks:
                dropped["repeated"] += 1
            else:
                picks.append(item)
        ep.cost.update({f"finish_dropped_{why}": n for why, n in dropped.items()})
        if not picks:
            return self._invalid(ep, record, shown, "finish names no product shown above that the user has not "
                                                    "bought")
        ep.picks, ep.status = picks, "finished"
        ep.cost["picked_items"] += len(picks)
        candidates = set(ep.candidates[:self.config.n_candidates].tolist())
        ep.cost["picked_outside_candidates"] += sum(i not in candidates for i in picks)
        ep.steps.append({**record, "action": shown, "outcome": "finish",
                         "observation": f"ranking of {len(picks)} products accepted"
                                        + (f" ({sum(dropped.values())} references dropped)" if dropped else "")})

    def _run_tool(self, ep: Episode, action: Action) -> tuple[tuple, str, str]:
        """(canonical call, observation, error) of a non-finish action."""
        cfg, names = self.config, self.tools.names

        def listing(items) -> str:
            return "\n" + "\n".join(ep.name(i, names) for i in items)

        if action.name == "history":
            return ("history",), "the user's purchases, oldest first:" + listing(ep.recent), ""
        if action.name == "retrieve":
            n = min(first_int(action.args) or cfg.n_candidates, cfg.n_candidates)
            return ("retrieve", n), f"the {n} best candidates by item similarity:" + listing(ep.candidates[:n]), ""
        if action.name == "search":
            query = _SPACES.sub(" ", action.args).strip().strip("'\"")
            if not _words(query):
                return (), "", "search needs words, e.g. search[guitar strings]"
            found = self.tools.search(query, cfg.observe_n, sorted(ep.seen))
            return (("search", query.lower()),
                    f"products matching '{query}':" + listing(found) if found else f"no product matches '{query}'",
                    "")
        refs = item_refs(action.args)
        item = ep.resolve(refs[0], self.item_index) if refs else None
        if item is None:
            return (), "", f"{action.name} needs a product number shown above, e.g. {action.name}[#1]"
        if action.name == "item_info":
            return ("item_info", item), f"{ep.label(item)} {self.tools.item_info(item)}", ""
        n = min(first_int(" ".join(refs[1:])) or cfg.observe_n, cfg.n_candidates)
        found = self.tools.similar_items(item, n, sorted(ep.seen))
        head = ep.label(item)
        return (("similar_items", item, n), f"products similar to {head}:" + listing(found) if found
                else f"no product similar to {head} that the user has not bought", "")

    def extra_result(self) -> dict:
        c = self.counts
        n_agent = c["users_agent"]
        stats = self.llm.stats()
        return {
            "llm": self.config.llm,
            "llm_backend": self.llm.name,
            "method": (f"ReAct-style agent with self-inspiring planning: at most {self.config.max_steps} "
                       f"Thought/Action/Observation steps per user over the tools {', '.join(TOOLS)}; "
                       "unranked items keep the item-kNN retriever's order"),
            "counts_cover": "every rank call: test, then valid",
            "users_ranked": c["users"],
            "users_agent": n_agent,
            "max_users": self.config.max_users,
            "status": {s: c[f"status_{s}"] for s in STATUSES},
            "llm_calls": c["llm_calls"],
            "llm_calls_per_agent_user": round(c["llm_calls"] / n_agent, 3) if n_agent else None,
            "prompt_tokens": c["prompt_tokens"],
            "answer_tokens": c["answer_tokens"],
            "token_counts": self.token_counts,
            "llm_seconds": round(c["seconds"], 3),  # the users' shares of their batches' generation time
            "seconds_per_agent_user": round(c["seconds"] / n_agent, 3) if n_agent else None,
            "agent_wall_seconds": round(c["wall_seconds"], 3),  # also tools, tokenizer and model loading
            "invalid_actions": c["invalid_actions"],
            "repeated_actions": c["repeated_actions"],
            "tool_calls": {t: self.tool_counts[t] for t in TOOLS},
            "picked_items": c["picked_items"],
            "picked_outside_candidates": c["picked_outside_candidates"],
            "finish_dropped": {w: c[f"finish_dropped_{w}"] for w in ("unknown", "already_bought", "repeated")},
            "per_call": self.per_call,
            "llm_model_load_seconds": round(getattr(getattr(self.llm, "backend", self.llm), "load_seconds", 0.0), 3),
            **stats,
            "outputs_file": OUTPUTS_FILE if self.records else None,
            "example": self.example,
        }


def final_ranking(order: np.ndarray, picks: Sequence[int]) -> np.ndarray:
    """The agent's picks, then `order` (the retriever's, -1 padded) without them; as long as `order`."""
    picked = set(picks)
    rest = [int(i) for i in order if i >= 0 and int(i) not in picked]
    out = np.full(len(order), -1, dtype=np.int64)
    ranked = ([*picks, *rest])[:len(order)]
    out[:len(ranked)] = ranked
    return out


def resolve_cache_path(setting: str, workdir: Path) -> Path | None:
    """'off' -> None; a path -> it; '' -> <workspace>/work/llm_cache.sqlite when workdir is the
    runner's <workspace>/work/<preset>/<dataset>/<split>/<model>/seed<N>, else <workdir>/llm_cache.sqlite."""
    if setting.strip().lower() == "off":
        return None
    if setting.strip():
        return Path(setting).expanduser()
    workdir = Path(workdir).resolve()
    parents = workdir.parents
    if len(parents) > 4 and parents[4].name == "work":
        return parents[4] / CACHE_FILE
    return workdir / CACHE_FILE
