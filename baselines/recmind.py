"""`recmind`: RecMind (Wang et al. 2023), an LLM agent with planning and tools, in compact form.

The paper's agent interleaves Thought / Action / Observation steps ("self-inspiring" planning)
and calls tools (a database tool over the user's history, a search tool, a text summariser)
before it answers. Here the plan is fixed and its tool steps are run by code; the LLM does the
step that needs it, once per user:

    1. history tool    the user's last `history_len` known items, oldest first (titles; the
                       item id where an item has no title)
    2. retrieval tool  item-kNN (`baselines.itemknn.ItemKNN`, `knn_k` neighbours per item):
                       the user's `n_candidates` best-scored unseen items (ties: more training
                       interactions first, then lower item index)
    3. LLM             one prompt with the plan, the history and the numbered candidates; it
                       answers the numbers of its `llm_rank_k` best candidates, best first
    4. parsing         numbers (``3``, ``[3]``), candidate item ids and candidate titles are
                       read in order; out-of-range numbers, ids that are not candidates and
                       titles of history items (hallucinations) and repeats are dropped and
                       counted. Per user the answer is `full` (all `llm_rank_k` picks, nothing
                       dropped), `partial` (some picks) or `unusable` (none: kNN order kept).
    final list = the LLM's valid picks, then the remaining candidates in kNN order, then the kNN
    ranking beyond the candidates, so the list is never shorter than k.

Simplified from the paper: no Thought/Action loop and no self-inspiring multi-path planning
(the plan above is fixed), no web-search or summarisation tool, one LLM call per user.
Why the LLM only picks the top `llm_rank_k` (default 20) instead of ordering all candidates:
ordering 100-200 items needs hundreds of generated tokens per user, which a 135M model on a
CPU can neither afford nor do reliably; the top of the list is what the metrics weigh most.

Users the LLM does not see (reported in `extra_result`): users with no history, and, when
`max_users` > 0 (smoke runs), every user after the first `max_users` distinct users this model
is asked to rank. The runner scores test first, users in index order, so the LLM sees the
lowest-indexed test users, then the same users again when valid is scored; all others get the
kNN order unchanged.

The LLM answers are cached in SQLite (`bench.llm`), by default in ``<workspace>/work/llm_cache.sqlite``:
the runner's workdir is ``<workspace>/work/<preset>/<dataset>/<split>/<model>/seed<N>``, so the
file survives reruns (``--overwrite`` included) and is shared by every job, preset and seed;
the key holds the model, the prompt and the decoding settings, so sharing is safe. Each
rank call's raw answers and parse outcomes go to ``<workdir>/recmind_llm_outputs.jsonl``.
"""

from __future__ import annotations

import html
import json
import logging
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import scipy.sparse as sp

from baselines.itemknn import ItemKNN, ItemKNNConfig
from bench.errors import ConfigError
from bench.io import write_text_atomic
from bench.models import Model, ModelConfig

logger = logging.getLogger(__name__)

OUTPUTS_FILE = "recmind_llm_outputs.jsonl"
CACHE_FILE = "llm_cache.sqlite"
STATUSES = ("full", "partial", "unusable")


@dataclass(frozen=True)
class RecMindConfig(ModelConfig):
    llm: str = field(default="smollm2-135m", metadata={
        "help": "smollm2-135m (offline), local:/path/to/hf-model or openai:<model> (OPENAI_BASE_URL, OPENAI_API_KEY)"})
    n_candidates: int = field(default=100, metadata={
        "help": "item-kNN candidates shown to the LLM (paper setting 100-200)"})
    history_len: int = field(default=20, metadata={"help": "most recent history items in the prompt"})
    llm_rank_k: int = field(default=20, metadata={
        "help": "candidates the LLM picks and orders; the rest keep kNN order"})
    max_new_tokens: int = field(default=96, metadata={"help": "generation budget per user"})
    temperature: float = field(default=0.0, metadata={"help": "0 = greedy decoding"})
    batch_size: int = field(default=4, metadata={"help": "prompts per generation batch (and per cache write)"})
    max_users: int = field(default=0, metadata={
        "help": "0 = every user through the LLM; else only the first max_users users, the others get the kNN order"})
    knn_k: int = field(default=100, metadata={"help": "neighbours per item of the item-kNN retrieval tool"})
    title_chars: int = field(default=80, metadata={"help": "titles longer than this are cut in the prompt"})
    device: str = field(default="auto", metadata={"help": "local LLM device: auto, cpu, cuda"})
    base_url: str = field(default="", metadata={
        "help": "openai backend base URL ('' = OPENAI_BASE_URL or api.openai.com)"})
    cache_path: str = field(default="", metadata={
        "help": "LLM answer cache (SQLite); '' = <workspace>/work/llm_cache.sqlite, 'off' = no cache"})


# --------------------------------------------------------------------------- prompt and parsing

def build_prompt(history: Sequence[str], candidates: Sequence[str], n_pick: int) -> str:
    """The planner prompt: the plan, both tools' observations, the answer format."""
    hist = "\n".join(f"- {t}" for t in history)
    cands = "\n".join(f"[{i + 1}] {t}" for i, t in enumerate(candidates))
    return (
        "You are RecMind, a recommendation agent. Plan: (1) read the user's purchases, (2) look at the candidate "
        "products found by the item-similarity tool, (3) pick the candidates the user is most likely to buy next.\n\n"
        f"The user's purchases, oldest first:\n{hist}\n\n"
        f"Candidate products:\n{cands}\n\n"
        f"Answer with the numbers of the {n_pick} best candidates, best first, separated by commas. Numbers only."
    )


@dataclass
class Parsed:
    picks: list[int]  # 0-based candidate positions, best first, distinct, at most n_pick
    hallucinated: int = 0  # numbers out of range, item ids that are not candidates
    repeated: int = 0  # references to a candidate already picked
    extra: int = 0  # valid new candidates after n_pick were reached (ignored, not an error)
    status: str = "unusable"  # full | partial | unusable


_BRACKETED = re.compile(r"\[\s*(\d+)\s*\]")
_LIST_MARKER = re.compile(r"^\s*(?:[-*\u2022]|#?\d+\s*[.):])\s+(?=\S)")
_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-]*")
_ID_LIKE = re.compile(r"[A-Z0-9]{8,}")  # an ASIN-like token (B00H8P1GZL) that is not a candidate
_SPACES = re.compile(r"\s+")


def _norm(text: str) -> str:
    return _SPACES.sub(" ", text).strip().lower()


def parse_ranking(text: str, n_candidates: int, n_pick: int, candidate_ids: Sequence[str] = (),
                  candidate_titles: Sequence[str] = (), other_titles: Sequence[str] = ()) -> Parsed:
    """Read the LLM's ranking of candidates 1..n_candidates from free text.

    When the answer uses the prompt's ``[n]`` labels anywhere, only those are read. Otherwise,
    line by line, after a list marker (``1.``, ``2)``, ``3:``, ``-``): candidate titles (longest first),
    then number tokens (1-based candidate numbers) and candidate item ids, in reading order.
    Words are ignored; numbers out of range, ASIN-like ids that are not candidates and
    `other_titles` (items named that are not candidates, e.g. the user's history) count as
    hallucinated; repeats are counted and dropped.
    status: full = `min(n_pick, n_candidates)` distinct picks and nothing dropped; partial =
    at least one pick; unusable = none.
    """
    refs: list[int] = []  # candidate positions; -1 = hallucinated
    bracketed = _BRACKETED.findall(text)
    if bracketed:
        refs = [int(n) - 1 if 1 <= int(n) <= n_candidates else -1 for n in bracketed]
    else:
        id_pos = {str(c): i for i, c in enumerate(candidate_ids)}
        named = [(_norm(t), i) for i, t in enumerate(candidate_titles)]
        named += [(_norm(t), -1) for t in other_titles if _norm(t) not in {n for n, _ in named}]
        titles = sorted(((t, i) for t, i in named if len(t) >= 8), key=lambda x: -len(x[0]))  # longest first
        for raw in text.splitlines():
            original = _SPACES.sub(" ", _LIST_MARKER.sub("", raw, count=1)).strip()  # ids are case-sensitive
            line = original.lower()
            if len(line) != len(original):  # lower() changed a length (outside ASCII): keep offsets aligned
                line = original
            found: list[tuple[int, int]] = []  # (offset in line, candidate position)
            for title, pos in titles:
                at = line.find(title)
                while at >= 0:
                    found.append((at, pos))
                    line = line[:at] + " " * len(title) + line[at + len(title):]  # blanked: read once
                    at = line.find(title)
            for match in _TOKEN.finditer(original):
                if not line[match.start():match.end()].strip():
                    continue  # inside a matched title
                tok = match.group()
                if tok in id_pos and not (tok.isdigit() and 1 <= int(tok) <= n_candidates):
                    found.append((match.start(), id_pos[tok]))
                elif tok.isdigit():
                    found.append((match.start(), int(tok) - 1 if 1 <= int(tok) <= n_candidates else -1))
                elif _ID_LIKE.fullmatch(tok) and any(ch.isdigit() for ch in tok):
                    found.append((match.start(), -1))
            refs.extend(pos for _, pos in sorted(found))
    out = Parsed(picks=[])
    seen: set[int] = set()
    for pos in refs:
        if pos < 0:
            out.hallucinated += 1
        elif pos in seen:
            out.repeated += 1
        elif len(out.picks) >= n_pick:
            out.extra += 1
        else:
            out.picks.append(pos)
            seen.add(pos)
    target = min(n_pick, n_candidates)
    if not out.picks:
        out.status = "unusable"
    elif len(out.picks) == target and not out.hallucinated and not out.repeated:
        out.status = "full"
    else:
        out.status = "partial"
    return out


def complete_ranking(candidates: np.ndarray, picks: Sequence[int]) -> np.ndarray:
    """The LLM's picks (positions into `candidates`), then the other candidates in their order."""
    picked = np.zeros(len(candidates), dtype=bool)
    picked[list(picks)] = True
    return np.concatenate([candidates[list(picks)], candidates[~picked]]).astype(np.int64)


# --------------------------------------------------------------------------- the model

class RecMind(Model):
    Config = RecMindConfig

    def fit(self, split, config: RecMindConfig, workdir: Path) -> None:
        from bench.llm import make_llm

        for name in ("n_candidates", "history_len", "llm_rank_k", "max_new_tokens", "batch_size", "knn_k"):
            if getattr(config, name) < 1:
                raise ConfigError(f"recmind.{name} must be >= 1, not {getattr(config, name)}")
        if config.max_users < 0:
            raise ConfigError(f"recmind.max_users must be >= 0 (0 = all users), not {config.max_users}")
        self.config = config
        self.split = split
        self.workdir = Path(workdir)
        self.knn = ItemKNN()
        self.knn.fit(split, ItemKNNConfig(k=config.knn_k), workdir)
        counts = np.bincount(split.train["item"].to_numpy(), minlength=split.n_items)
        by_popularity = np.lexsort((np.arange(split.n_items), -counts))
        self.pop_rank = np.empty(split.n_items, dtype=np.int64)
        self.pop_rank[by_popularity] = np.arange(split.n_items)
        self.titles = [self._title(t, i) for i, t in zip(split.item_ids, split.items["title"].fillna(""))]
        self.cache_path = resolve_cache_path(config.cache_path, self.workdir)
        self.llm = make_llm(config.llm, cache_path=self.cache_path, device=config.device,
                            batch_size=config.batch_size, base_url=config.base_url or None)
        self._llm_users: dict[int, None] = {}  # ordered set of users allowed through the LLM
        self.counts: Counter = Counter()
        self.per_call: list[dict] = []
        self.records: list[dict] = []
        self.example: dict | None = None
        self.llm_seconds = 0.0

    def _title(self, title: str, item_id: str) -> str:
        title = _SPACES.sub(" ", html.unescape(str(title))).strip()
        if not title:
            return f"item {item_id}"
        cut = self.config.title_chars
        return title if len(title) <= cut else title[:cut - 3].rstrip() + "..."

    # ---- tools
    def retrieve(self, users: np.ndarray, history: sp.csr_matrix, width: int) -> np.ndarray:
        """(len(users), width) item-kNN ranking of unseen items, best first, -1 padded."""
        scores = np.asarray(self.knn.score(users, history), dtype=np.float64)
        rows, cols = history.nonzero()
        scores[rows, cols] = -np.inf
        n = scores.shape[1]
        width = min(width, n)
        out = np.full((len(users), width), -1, dtype=np.int64)
        for r in range(len(users)):
            s = scores[r]
            idx = np.flatnonzero(s >= np.partition(s, n - width)[n - width]) if width < n else np.arange(n)
            idx = idx[np.lexsort((self.pop_rank[idx], -s[idx]))][:width]
            idx = idx[np.isfinite(s[idx])]
            out[r, :len(idx)] = idx
        return out

    def recent_history(self, users: np.ndarray, history: sp.csr_matrix) -> list[list[int]]:
        from bench.torch_utils import padded_histories  # numpy only, despite the module name

        seqs = padded_histories(self.split, users, history, self.config.history_len)
        return [[int(i) for i in row if i >= 0] for row in seqs]

    def _llm_allowed(self, user: int) -> bool:
        limit = self.config.max_users
        if not limit or user in self._llm_users:
            return True
        if len(self._llm_users) < limit:
            self._llm_users[user] = None
            return True
        return False

    # ---- the contract
    def rank(self, users: np.ndarray, k: int, history) -> np.ndarray:
        """(len(users), max(k, n_candidates)) item indices, best first, -1 = empty."""
        cfg = self.config
        users = np.asarray(users, dtype=np.int64)
        history = sp.csr_matrix(history)
        order = self.retrieve(users, history, max(k, cfg.n_candidates))
        n_hist = np.diff(history.indptr)
        call = Counter(users=len(users))
        llm_rows = []
        for r, user in enumerate(users):
            if n_hist[r] == 0:
                call["users_no_history"] += 1
            elif not (order[r, 0] >= 0):
                call["users_no_candidates"] += 1
            elif not self._llm_allowed(int(user)):
                call["users_knn_only_max_users"] += 1
            else:
                llm_rows.append(r)
        llm_rows = np.asarray(llm_rows, dtype=np.int64)
        recent = self.recent_history(users[llm_rows], history[llm_rows]) if len(llm_rows) else []
        prompts, cands = [], []
        for r, hist_items in zip(llm_rows, recent):
            cand = order[r, :cfg.n_candidates]
            cand = cand[cand >= 0]
            cands.append(cand)
            prompts.append(build_prompt([self.titles[i] for i in hist_items], [self.titles[i] for i in cand],
                                        min(cfg.llm_rank_k, len(cand))))
        texts = self._generate(prompts)
        for r, hist_items, cand, prompt, text in zip(llm_rows, recent, cands, prompts, texts):
            parsed = parse_ranking(text, len(cand), min(cfg.llm_rank_k, len(cand)),
                                   candidate_ids=self.split.item_ids[cand],
                                   candidate_titles=[self.titles[i] for i in cand],
                                   other_titles=[self.titles[i] for i in hist_items])
            order[r, :len(cand)] = complete_ranking(cand, parsed.picks)
            call["users_llm"] += 1
            call[f"parse_{parsed.status}"] += 1
            call["items_hallucinated"] += parsed.hallucinated
            call["items_repeated"] += parsed.repeated
            call["items_extra"] += parsed.extra
            call["items_picked"] += len(parsed.picks)
            call["picks_equal_knn_order"] += int(bool(parsed.picks) and parsed.picks == list(range(len(parsed.picks))))
            self.records.append({"call": len(self.per_call), "user_id": str(self.split.user_ids[users[r]]),
                                 "status": parsed.status,
                                 "picks": [str(self.split.item_ids[cand[p]]) for p in parsed.picks],
                                 "hallucinated": parsed.hallucinated, "repeated": parsed.repeated, "output": text})
            if self.example is None:
                self.example = {"prompt": prompt, "output": text, "status": parsed.status}
        self.per_call.append(dict(call))
        self.counts.update(call)
        if len(llm_rows):
            write_text_atomic(self.workdir / OUTPUTS_FILE, "".join(json.dumps(r) + "\n" for r in self.records))
        return order

    def _generate(self, prompts: list[str]) -> list[str]:
        if not prompts:
            return []
        from bench.llm import generate_with_progress

        cfg = self.config
        t0 = time.perf_counter()
        texts = generate_with_progress(self.llm, prompts, desc="recmind llm", max_new_tokens=cfg.max_new_tokens,
                                       temperature=cfg.temperature, seed=cfg.seed, chunk_size=cfg.batch_size)
        self.llm_seconds += time.perf_counter() - t0
        return texts

    def extra_result(self) -> dict:
        c = self.counts
        n_llm = c["users_llm"]
        stats = self.llm.stats()
        generated = stats.get("cache_misses", n_llm)
        return {
            "llm": self.config.llm,
            "llm_backend": self.llm.name,
            "method": (f"item-kNN retrieves {self.config.n_candidates} candidates; the LLM picks and orders its top "
                       f"{self.config.llm_rank_k}; the other candidates keep kNN order"),
            "counts_cover": "every rank call: test, then valid",
            "users_ranked": c["users"],
            "users_llm": n_llm,
            "users_knn_only_max_users": c["users_knn_only_max_users"],
            "users_no_history": c["users_no_history"],
            "users_no_candidates": c["users_no_candidates"],
            "max_users": self.config.max_users,
            "parse": {s: c[f"parse_{s}"] for s in STATUSES},
            "items_hallucinated": c["items_hallucinated"],
            "items_repeated": c["items_repeated"],
            "items_extra": c["items_extra"],
            "items_picked": c["items_picked"],
            "picks_equal_knn_order": c["picks_equal_knn_order"],
            "per_call": self.per_call,
            "llm_seconds": round(self.llm_seconds, 3),
            "llm_model_load_seconds": round(getattr(getattr(self.llm, "backend", self.llm), "load_seconds", 0.0), 3),
            "seconds_per_generated_prompt": round(stats.get("backend_seconds", self.llm_seconds) / generated, 3)
            if generated else None,
            **stats,
            "outputs_file": OUTPUTS_FILE if self.records else None,
            "example": self.example,
        }


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
