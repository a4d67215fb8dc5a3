"""PageLLM training data (Section 4, Appendix A): golden lists, SFT examples, preference pairs,
pre-training prompts and rating examples, built from a split's TRAIN part only.

Inputs. Only ``split.train`` (positives, rating > 3, or every row of implicit data),
``split.negatives`` (the same users' ratings <= 3), item metadata (``split.items``) and the
review text of train and negatives rows (``split.reviews``, from the split's reviews.csv) are
used. The ``split.valid`` / ``split.test`` frames are never read, not even as a mask: every
file here is the same whatever they hold (a test pins it), so no training stage sees a
held-out interaction (the item universe, indices and catalogue metadata are the split's).
An item drawn at random for a rejected list may therefore be one of the user's own held-out
items, as it may be any unseen item: held-out answers are unknown at training time.
Item indices, user indices and the item mean rating ``s_i`` (``split.item_mean_rating``,
the mean TRAIN rating of item i, 0 when it has none) are the split's.

Redundant items. Items i and j are *redundant* (near-duplicates) when all of:
(1) they have the same non-empty brand (case and spacing ignored); (2) the same set of
categories (two empty sets count as equal); (3) the Jaccard similarity of their title word
sets (lower-cased ``\\w+`` tokens) is >= ``redundancy_title_jaccard`` (default 0.6).
Items without a brand or a title are never redundant, so data without metadata loses none.

Golden list (A.2 (2) and (4)) of a set of a user's items with the user's ratings r_ui:
1. sort by r_ui descending, then s_i descending, then item index ascending (the evaluator's
   golden order; NaN ratings of implicit data form one level);
2. walk that order and drop every item that is redundant with an item kept before it;
3. diversity re-rank, one rating level at a time, highest first: repeatedly append the
   remaining item of the level that maximises ``s_i - lambda * max_j J(i, j)``, where j runs
   over ALL items already in the list (earlier levels included; 0 when the list is empty),
   J is the Jaccard similarity of the two category sets (0 when either is empty) and lambda
   is ``diversity_lambda`` (default 1.0: one full category overlap costs more than any usual
   gap in mean rating, so diversity is preferred over the fine-grained score, as A.2 (4)
   asks); ties go to the larger s_i, then the smaller item index. lambda = 0 gives step 1's
   order. Ratings never mix: the list stays sorted by r_ui.
``golden[u]`` is the golden list of ALL of u's train positives (``removed`` in
``golden.jsonl`` holds the items step 2 dropped).

Input/label split (A.2 (3)), for users with n >= 2 train positives (others get no SFT example
and no pairs, only pre-training prompts): the label list has
``n_label = min(max(1, floor(label_fraction * n + 0.5)), n - 1, max_list_len, |golden[u]|)``
items taken from ``golden[u]``, stratified by rating: rating level r with m_r golden items
gets ``floor(n_label * m_r / |golden|)`` items, and the remaining ones go to the levels with
the largest remainders (ties: higher rating first); inside a level the items are drawn at
random (seeded per user). ``label_lists[u]`` = the golden list of those items (steps 1-3
applied to them alone: the paper's I_u^gt, the SFT target). ``input_items[u]`` = all other
train positives of u (redundant ones included), chronological (timestamp, then item index).
Prompts show the last ``max_history`` of them (with their ratings when
``prompt_ratings``).

Preference pairs (A.3). For every user with a label list, ``chosen`` = ``label_lists[u]``
(length L, never longer than ``max_list_len``). ``rejected`` has the same length, valid item
indices and differs in at least one position; ``rejected_labels[p]`` = 1 where
``rejected[p] == chosen[p]``, 0 where it differs (``chosen_labels`` are all 1). Items
"drawn at random" come from items with at least one TRAIN interaction that the user has no
train or negative interaction with.
Up to ``pairs_per_user`` distinct pairs per family and user. ``k(x) = max(1, floor(x + 0.5))``.

- ``preference`` (A.3.1): k(replace_fraction * L) random positions get items the user rated
  < 3 (``split.negatives``; source ``negatives``; fewer positions when the user has fewer
  such items) or, when it has none, items drawn at random (source ``sampled``).
- ``ranked`` (A.3.2): ``ranked_swaps`` disjoint transpositions of positions a < b chosen at
  random among those where the chosen order is strictly justified, i.e.
  (r_u,chosen[a], s_chosen[a]) > (r_u,chosen[b], s_chosen[b]); the labels mark the swapped
  positions. No pair when no such positions exist (L < 2, or all keys equal: implicit data).
- ``diversity`` (A.3.3): anchor = the first item of chosen with categories; k(replace_fraction
  * (L - 1)) random positions (fewer when fewer qualify or fewer items can be drawn) among
  those whose item's category set differs from the anchor's get items drawn at random from
  those with exactly the anchor's category set (source ``same-category``). Kept only when
  the rejected list's mean pairwise category Jaccard is higher than the chosen list's (it is
  less diverse). None without categories.
- ``redundancy`` (A.3.4): a near-duplicate of the item at a random position p replaces the
  item at position q = p + 1 (p - 1 when p is last): a redundant item by the definition above
  (source ``near-duplicate``); else an item of the same brand and category set (source
  ``same-brand-category``); else, only when ``redundancy_allow_repeat`` (off by default),
  chosen[p] itself (source ``repeat``: the page shows one item twice); else no pair.
  Replacements are drawn at random among the candidates. Needs L >= 2. Repeats are off by
  default because PageLLM's decoding never lists an item twice: a "repeat" pair describes a
  page the policy can never produce, and the reward model should not spend capacity on it.
  So data without metadata (nothing redundant) has no redundancy pairs by default.

Held-out users: of the E users with a label list, ``min(E - 1, max(1, k'))`` with
``k' = floor(heldout_fraction * E + 0.5)`` (none when heldout_fraction = 0 or E < 2), drawn
at random, give all their pairs to ``pairs_heldout`` (reward-model accuracy); the others'
pairs go to ``pairs_train``. Held-out users keep their SFT examples.

Review text. The review of (u, i) quoted in prompts is the row's ``review_text`` in
``split.reviews`` (its ``summary`` when the text is empty), through
`pagellm.prompts.review_excerpt`: cut to ``max_review_words`` words (default 60; 0 = no
review text anywhere) so that prompts stay within the backbone's token budget (the backbone
also cuts every text to ``max_prompt_tokens``). Only train and negatives rows have review
text (reviews.csv never holds valid/test text), so no held-out review is ever quoted.

Pre-training prompts (B.1, texts in `pagellm.prompts`): one ``item`` prompt per item of the
split that has metadata (items seen only in valid/test included: metadata is catalogue
information, not an interaction; the same holds for 2nd-order prompts); one ``first_order``
prompt per train and negative interaction, quoting the user's review of the item when it has
one (``... 4 out of 5. Review: "..."``); ``second_order`` prompts grouping the items of each brand and of each
identical category list into chunks of ``second_order_group_size`` (seeded shuffle, a last
chunk of one joins the previous); one ``sequence`` prompt per user with >= 2 train positives
(the last ``max_history``, chronological).

Rating examples: one per train and negative interaction with a rating (1-5), prompt
`pagellm.prompts.rating_prompt` with the user's review of the item when it has one (eq. 2
predicts the rating "based on review text"). Implicit data (NaN ratings) has none (noted in
the manifest).

Files in ``out_dir`` (default ``split.view_dir("pagellm") / f"data-{config.hash}"``):
``golden.jsonl``, ``sft.jsonl``, ``pairs.jsonl`` (field ``split``: train | heldout),
``pretrain.jsonl``, ``rating.jsonl`` and, written last, ``manifest.json`` (split hash, config,
counts, notes, held-out users, file hashes). One JSON object per line:
golden {user, golden, removed}; sft {user, input, labels, prompt}; pairs {split, user, kind,
source, chosen, rejected, chosen_labels, rejected_labels}; pretrain {kind, text}; rating
{user, item, rating, prompt, source: train | negatives}. Inference prompts for valid/test
come from `history_prompts` (the same template over train, or train + valid, positives).
`build` reuses the files when the manifest matches the data version, the split hash (which
covers reviews.csv), the config and the files on disk.
"""

from __future__ import annotations

import json
import logging
import math
import random
import re
from dataclasses import asdict, dataclass, field, fields
from functools import cached_property
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from bench.data.canonical import split_categories
from bench.data.sequences import in_time_order
from bench.errors import ConfigError, DataError
from bench.io import atomic_path, hash_json, sha256_file, write_json_atomic
from pagellm import prompts

logger = logging.getLogger(__name__)

DATA_VERSION = 2  # bump when the construction changes: existing files are rebuilt
FAMILIES = ("preference", "ranked", "diversity", "redundancy")
FILES = ("golden.jsonl", "sft.jsonl", "pairs.jsonl", "pretrain.jsonl", "rating.jsonl")
PRETRAIN_KINDS = ("item", "first_order", "second_order", "sequence")
_WORD = re.compile(r"\w+")
# Separate random streams, so that changing one family's draws leaves the others unchanged.
_STREAM = {"labels": 1, "preference": 2, "ranked": 3, "diversity": 4, "redundancy": 5, "heldout": 6, "second": 7}


def _rng(seed: int, stream: str, user: int = -1) -> random.Random:
    """A per-(stream, user) generator: results do not depend on the order users are processed.
    (Python's Random: seeding from a string is stable across runs and much cheaper than a
    numpy SeedSequence per user.)"""
    return random.Random(f"pagellm-data:{seed}:{_STREAM[stream]}:{user}")


@dataclass(frozen=True)
class DataConfig:
    label_fraction: float = field(default=0.5, metadata={
        "help": "share of each user's train positives used as the label list (>= 1 item, >= 1 input item)"})
    max_list_len: int = field(default=20, metadata={"help": "cap on the label list (and pair) length"})
    max_history: int = field(default=50, metadata={"help": "most recent history items shown in a prompt"})
    prompt_ratings: bool = field(default=True, metadata={
        "help": "show the user's rating after each history item in the fine-tuning prompt (A.2)"})
    diversity_lambda: float = field(default=1.0, metadata={
        "help": "golden re-rank: weight of the max category-Jaccard penalty against the mean rating (0 = off)"})
    redundancy_title_jaccard: float = field(default=0.6, metadata={
        "help": "title word-Jaccard at or above which two items of the same brand and categories are redundant"})
    pairs_per_user: int = field(default=1, metadata={"help": "preference pairs per user and family (at most)"})
    replace_fraction: float = field(default=0.5, metadata={
        "help": "share of positions replaced in preference (of L) and diversity (of L-1) pairs"})
    ranked_swaps: int = field(default=1, metadata={"help": "disjoint position swaps per ranked pair"})
    redundancy_allow_repeat: bool = field(default=False, metadata={
        "help": "redundancy pairs may repeat a chosen item when no near-duplicate exists (off: "
                "PageLLM's decoding never repeats an item, so such a page never occurs)"})
    heldout_fraction: float = field(default=0.1, metadata={
        "help": "share of users whose pairs are held out for reward-model accuracy"})
    second_order_group_size: int = field(default=5, metadata={"help": "items per 2nd-order prompt (at most)"})
    max_description_words: int = field(default=30, metadata={"help": "description words kept in item prompts"})
    max_review_words: int = field(default=60, metadata={
        "help": "review words quoted in first-order and rating prompts (train/negatives reviews only; 0 = none)"})
    seed: int = field(default=0, metadata={"help": "seed of every random draw here"})

    def __post_init__(self) -> None:
        checks = [
            (0 < self.label_fraction < 1, "label_fraction must be in (0, 1)"),
            (self.max_list_len >= 1, "max_list_len must be >= 1"),
            (self.max_history >= 1, "max_history must be >= 1"),
            (self.diversity_lambda >= 0, "diversity_lambda must be >= 0"),
            (0 < self.redundancy_title_jaccard <= 1, "redundancy_title_jaccard must be in (0, 1]"),
            (self.pairs_per_user >= 0, "pairs_per_user must be >= 0"),
            (0 < self.replace_fraction <= 1, "replace_fraction must be in (0, 1]"),
            (self.ranked_swaps >= 1, "ranked_swaps must be >= 1"),
            (0 <= self.heldout_fraction < 1, "heldout_fraction must be in [0, 1)"),
            (self.second_order_group_size >= 2, "second_order_group_size must be >= 2"),
            (self.max_description_words >= 0, "max_description_words must be >= 0"),
            (self.max_review_words >= 0, "max_review_words must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"pagellm data config: {message}")

    @property
    def hash(self) -> str:
        return hash_json({"config": asdict(self), "version": DATA_VERSION})

    @classmethod
    def from_dict(cls, values: dict) -> "DataConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown pagellm data setting(s): {', '.join(unknown)}")
        return cls(**values)


@dataclass
class PreferencePair:
    user: int
    kind: str                  # "preference" | "ranked" | "diversity" | "redundancy"
    chosen: list[int]          # the user's label list (golden-ordered)
    rejected: list[int]        # same length
    chosen_labels: list[int]   # all 1
    rejected_labels: list[int] # 1 = same item as chosen at this position, 0 = differs
    source: str = ""           # how the rejected items were found (see the module docstring)


@dataclass
class PageLLMData:
    input_items: dict[int, list[int]]   # user -> input part of its TRAIN positives (chronological)
    label_lists: dict[int, list[int]]   # user -> golden-ordered label list (SFT target)
    golden: dict[int, list[int]]        # user -> golden list over all its TRAIN positives
    pairs_train: list[PreferencePair]
    pairs_heldout: list[PreferencePair]
    pretrain_texts: list[str]
    rating_examples: list[tuple[int, int, float, str]]  # (user, item, rating, prompt)
    finetune_prompts: dict[int, str]    # user -> prompt ending right before the page (B.2)
    pretrain_kinds: list[str] = field(default_factory=list)  # kind of each pretrain text
    heldout_users: list[int] = field(default_factory=list)
    config: DataConfig | None = None
    manifest: dict = field(default_factory=dict)


# --- item metadata ----------------------------------------------------------------------------

def _jaccard(a: frozenset, b: frozenset) -> float:
    if not a or not b:
        return 0.0
    inter = len(a & b)
    return inter / (len(a) + len(b) - inter)


@dataclass
class Catalogue:
    """Item metadata prepared for the redundancy and diversity rules (index = item index)."""

    titles: list[str]
    brands: list[str]
    categories: list[list[str]]
    descriptions: list[str]
    redundancy_title_jaccard: float = 0.6

    @classmethod
    def from_items(cls, items: pd.DataFrame, redundancy_title_jaccard: float = 0.6) -> "Catalogue":
        """`items`: indexed 0..n_items-1 with title, brand, categories ("|"-joined), description."""
        items = items.reindex(columns=["title", "brand", "categories", "description"]).fillna("")
        return cls(titles=[str(t).strip() for t in items["title"]], brands=[str(b).strip() for b in items["brand"]],
                   categories=[split_categories(c) for c in items["categories"]],
                   descriptions=[str(d).strip() for d in items["description"]],
                   redundancy_title_jaccard=redundancy_title_jaccard)

    def __len__(self) -> int:
        return len(self.titles)

    @cached_property
    def brand_keys(self) -> list[str]:
        return [" ".join(b.lower().split()) for b in self.brands]

    @cached_property
    def title_words(self) -> list[frozenset]:
        return [frozenset(_WORD.findall(t.lower())) for t in self.titles]

    @cached_property
    def cat_sets(self) -> list[frozenset]:
        return [frozenset(c) for c in self.categories]

    @cached_property
    def has_categories(self) -> bool:
        return any(self.cat_sets)

    @cached_property
    def has_metadata(self) -> bool:
        return any(self.titles) or any(self.brands) or self.has_categories or any(self.descriptions)

    def cat_jaccard(self, i: int, j: int) -> float:
        return _jaccard(self.cat_sets[i], self.cat_sets[j])

    def redundant(self, i: int, j: int) -> bool:
        """Same non-empty brand, same category set, title word-Jaccard >= the threshold."""
        if i == j:
            return True
        bi = self.brand_keys[i]
        if not bi or bi != self.brand_keys[j] or self.cat_sets[i] != self.cat_sets[j]:
            return False
        a, b = self.title_words[i], self.title_words[j]
        return bool(a) and bool(b) and _jaccard(a, b) >= self.redundancy_title_jaccard

    @cached_property
    def _brand_category_groups(self) -> dict[tuple, np.ndarray]:
        groups: dict[tuple, list[int]] = {}
        for i, (b, c) in enumerate(zip(self.brand_keys, self.cat_sets)):
            if b:
                groups.setdefault((b, c), []).append(i)
        return {k: np.asarray(v, dtype=np.int64) for k, v in groups.items()}

    @cached_property
    def _category_groups(self) -> dict[frozenset, np.ndarray]:
        groups: dict[frozenset, list[int]] = {}
        for i, c in enumerate(self.cat_sets):
            if c:
                groups.setdefault(c, []).append(i)
        return {k: np.asarray(v, dtype=np.int64) for k, v in groups.items()}

    def same_brand_category(self, i: int) -> np.ndarray:
        """Other items with the same non-empty brand and the same category set (ascending)."""
        if not self.brand_keys[i]:
            return np.zeros(0, dtype=np.int64)
        group = self._brand_category_groups[(self.brand_keys[i], self.cat_sets[i])]
        return group[group != i]

    def same_categories(self, i: int) -> np.ndarray:
        """Items (i included) with exactly i's non-empty category set (ascending)."""
        if not self.cat_sets[i]:
            return np.zeros(0, dtype=np.int64)
        return self._category_groups[self.cat_sets[i]]

    def near_duplicates(self, i: int) -> np.ndarray:
        """Items redundant with i (i excluded), ascending."""
        cache = self.__dict__.setdefault("_dup_cache", {})
        if i not in cache:
            cache[i] = np.asarray([j for j in self.same_brand_category(i) if self.redundant(i, int(j))],
                                  dtype=np.int64)
        return cache[i]


# --- golden lists -----------------------------------------------------------------------------

def _level(r: float) -> float:
    return 0.0 if math.isnan(r) else float(r)


def golden_list(items: Sequence[int], ratings: Sequence[float], item_scores: np.ndarray,
                catalogue: Catalogue, diversity_lambda: float = 1.0) -> tuple[list[int], list[int]]:
    """(golden list, items removed as redundant) of a user's `items` with its `ratings`.

    item_scores: (n_items,) fine-grained score s_i (the mean training rating). Steps 1-3 of
    the module docstring.
    """
    items = np.asarray(items, dtype=np.int64)
    levels = np.asarray([_level(float(r)) for r in ratings], dtype=np.float64)
    scores = np.asarray(item_scores, dtype=np.float64)
    order = np.lexsort((items, -scores[items], -levels))  # last key is the primary one
    kept: list[tuple[int, float]] = []
    removed: list[int] = []
    for pos in order:
        i = int(items[pos])
        if any(catalogue.redundant(i, j) for j, _ in kept):
            removed.append(i)
        else:
            kept.append((i, levels[pos]))
    result: list[int] = []
    use_categories = diversity_lambda > 0 and catalogue.has_categories
    for level in sorted({lv for _, lv in kept}, reverse=True):
        remaining = [i for i, lv in kept if lv == level]
        # overlap[i] = max category-Jaccard of i with the items already in `result`
        overlap = {i: max((catalogue.cat_jaccard(i, j) for j in result), default=0.0) if use_categories else 0.0
                   for i in remaining}
        while remaining:
            best = max(remaining, key=lambda i: (scores[i] - diversity_lambda * overlap[i], scores[i], -i))
            result.append(best)
            remaining.remove(best)
            if use_categories:
                for i in remaining:
                    overlap[i] = max(overlap[i], catalogue.cat_jaccard(i, best))
    return result, removed


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def label_count(n: int, n_golden: int, config: DataConfig) -> int:
    """Size of the label list of a user with n train positives (0: no SFT example)."""
    if n < 2 or n_golden < 1:
        return 0
    return min(max(1, _round_half_up(config.label_fraction * n)), n - 1, config.max_list_len, n_golden)


def stratified_labels(golden: Sequence[int], rating_of: dict[int, float], n_label: int,
                      rng: random.Random) -> list[int]:
    """The label items: `n_label` items of `golden`, shared over rating levels in proportion."""
    levels: dict[float, list[int]] = {}
    for i in golden:
        levels.setdefault(_level(rating_of[i]), []).append(i)
    order = sorted(levels, reverse=True)
    quota = {lv: n_label * len(levels[lv]) / len(golden) for lv in order}
    counts = {lv: int(math.floor(quota[lv])) for lv in order}
    left = n_label - sum(counts.values())
    for lv in sorted(order, key=lambda lv: (-(quota[lv] - counts[lv]), -lv))[:left]:
        counts[lv] += 1
    chosen: list[int] = []
    for lv in order:
        if counts[lv]:
            chosen.extend(rng.sample(levels[lv], counts[lv]))
    return chosen


# --- preference pairs -------------------------------------------------------------------------

@dataclass
class _UserContext:
    user: int
    chosen: list[int]
    rating_of: dict[int, float]
    low_rated: np.ndarray  # items the user rated < 3, chronological
    excluded: set          # never drawn for this user: its train and negatives items
    scores: np.ndarray
    catalogue: Catalogue
    train_items: np.ndarray  # items with >= 1 train interaction, ascending
    is_train_item: np.ndarray


def _draw(rng: random.Random, candidates: np.ndarray, k: int, excluded: set,
          also: Iterable[int] = ()) -> list[int]:
    """Up to k distinct items of `candidates` (distinct, ascending) not in `excluded` or
    `also`, in random order."""
    blocked = excluded | set(also)
    if len(candidates) <= 4 * (len(blocked) + k) + 64:
        pool = [int(c) for c in candidates if int(c) not in blocked]
        return rng.sample(pool, min(k, len(pool)))
    out: list[int] = []  # large pool, few blocked: rejection sampling
    while len(out) < k:
        c = int(candidates[rng.randrange(len(candidates))])
        if c not in blocked:
            out.append(c)
            blocked.add(c)
    return out


def _make_pair(ctx: _UserContext, kind: str, rejected: list[int], source: str) -> PreferencePair | None:
    chosen = ctx.chosen
    labels = [int(a == b) for a, b in zip(chosen, rejected)]
    if len(rejected) != len(chosen) or all(labels):
        return None
    return PreferencePair(user=ctx.user, kind=kind, chosen=list(chosen), rejected=rejected,
                          chosen_labels=[1] * len(chosen), rejected_labels=labels, source=source)


def _preference(ctx: _UserContext, rng: random.Random, config: DataConfig) -> PreferencePair | None:
    L = len(ctx.chosen)
    k = min(L, max(1, _round_half_up(config.replace_fraction * L)))
    if len(ctx.low_rated):
        source = "negatives"
        items = rng.sample([int(i) for i in ctx.low_rated], min(k, len(ctx.low_rated)))
    else:
        source = "sampled"
        items = _draw(rng, ctx.train_items, k, ctx.excluded, ctx.chosen)
    if not items:
        return None
    positions = sorted(rng.sample(range(L), len(items)))
    rejected = list(ctx.chosen)
    for p, item in zip(positions, items):
        rejected[p] = item
    return _make_pair(ctx, "preference", rejected, source)


def _ranked(ctx: _UserContext, rng: random.Random, config: DataConfig) -> PreferencePair | None:
    chosen = ctx.chosen
    keys = [(_level(ctx.rating_of[i]), float(ctx.scores[i])) for i in chosen]
    candidates = [(a, b) for a in range(len(chosen)) for b in range(a + 1, len(chosen)) if keys[a] > keys[b]]
    if not candidates:
        return None
    used: set[int] = set()
    rejected = list(chosen)
    swaps = 0
    for a, b in rng.sample(candidates, len(candidates)):
        if a in used or b in used:
            continue
        rejected[a], rejected[b] = rejected[b], rejected[a]
        used.update((a, b))
        swaps += 1
        if swaps == config.ranked_swaps:
            break
    return _make_pair(ctx, "ranked", rejected, "swap")


def mean_category_jaccard(items: Sequence[int], catalogue: Catalogue) -> float:
    """Mean pairwise category-Jaccard of a list (0 for fewer than two items)."""
    n = len(items)
    if n < 2:
        return 0.0
    total = sum(catalogue.cat_jaccard(items[a], items[b]) for a in range(n) for b in range(a + 1, n))
    return total / (n * (n - 1) / 2)


def _diversity(ctx: _UserContext, rng: random.Random, config: DataConfig) -> PreferencePair | None:
    chosen, cat = ctx.chosen, ctx.catalogue
    anchor = next((p for p, i in enumerate(chosen) if cat.cat_sets[i]), None)
    if len(chosen) < 2 or anchor is None:
        return None
    anchor_set = cat.cat_sets[chosen[anchor]]
    positions = [p for p, i in enumerate(chosen) if p != anchor and cat.cat_sets[i] != anchor_set]
    if not positions:
        return None
    pool = cat.same_categories(chosen[anchor])
    pool = pool[ctx.is_train_item[pool]]
    k = min(len(positions), max(1, _round_half_up(config.replace_fraction * (len(chosen) - 1))))
    items = _draw(rng, pool, k, ctx.excluded, chosen)
    if not items:
        return None
    rejected = list(chosen)
    for p, item in zip(sorted(rng.sample(positions, len(items))), items):
        rejected[p] = item
    if mean_category_jaccard(rejected, cat) <= mean_category_jaccard(chosen, cat):
        return None
    return _make_pair(ctx, "diversity", rejected, "same-category")


def _redundancy(ctx: _UserContext, rng: random.Random, config: DataConfig) -> PreferencePair | None:
    chosen, cat = ctx.chosen, ctx.catalogue
    L = len(chosen)
    if L < 2:
        return None
    blocked = ctx.excluded | set(chosen)
    for source, finder in (("near-duplicate", cat.near_duplicates), ("same-brand-category", cat.same_brand_category)):
        options = {}
        for p, i in enumerate(chosen):
            found = finder(i)
            found = [int(j) for j in found[ctx.is_train_item[found]] if int(j) not in blocked]
            if found:
                options[p] = found
        if options:
            p = rng.choice(sorted(options))
            replacement = rng.choice(options[p])
            break
    else:
        if not config.redundancy_allow_repeat:
            return None
        source = "repeat"
        p = rng.randrange(L)
        replacement = chosen[p]
    q = p + 1 if p + 1 < L else p - 1
    rejected = list(chosen)
    rejected[q] = replacement
    return _make_pair(ctx, "redundancy", rejected, source)


_FAMILY_BUILDERS = {"preference": _preference, "ranked": _ranked, "diversity": _diversity,
                    "redundancy": _redundancy}


def make_pairs(ctx: _UserContext, kind: str, config: DataConfig) -> list[PreferencePair]:
    """Up to `pairs_per_user` distinct pairs of one family for one user."""
    rng = _rng(config.seed, kind, ctx.user)
    out: list[PreferencePair] = []
    seen: set[tuple[int, ...]] = set()
    for _ in range(3 * config.pairs_per_user):
        if len(out) == config.pairs_per_user:
            break
        pair = _FAMILY_BUILDERS[kind](ctx, rng, config)
        if pair is None:
            if kind in ("ranked", "diversity") and not out:
                break  # deterministic failure modes: retrying cannot help
            continue
        key = tuple(pair.rejected)
        if key not in seen:
            seen.add(key)
            out.append(pair)
    return out


# --- pre-training prompts -----------------------------------------------------------------------

def _chunks(items: list[int], size: int) -> list[list[int]]:
    chunks = [items[k:k + size] for k in range(0, len(items), size)]
    if len(chunks) > 1 and len(chunks[-1]) == 1:
        chunks[-2].extend(chunks.pop())
    return chunks


def pretrain_prompts(catalogue: Catalogue, train_by_user: list, interactions: pd.DataFrame,
                     config: DataConfig, reviews: dict[tuple[int, int], str] | None = None) -> list[tuple[str, str]]:
    """(kind, text) pairs of the four B.1 kinds. `interactions`: train + negatives rows;
    `reviews`: (user, item) -> review excerpt (`review_texts`)."""
    reviews = reviews or {}
    out: list[tuple[str, str]] = []
    for i in range(len(catalogue)):
        text = prompts.item_content_text(i, catalogue.titles[i], catalogue.brands[i], catalogue.categories[i],
                                         catalogue.descriptions[i], config.max_description_words)
        if text is not None:
            out.append(("item", text))
    rows = interactions.sort_values(["user", "timestamp", "item"], kind="stable")
    for u, i, r in zip(rows["user"].to_numpy(), rows["item"].to_numpy(), rows["rating"].to_numpy(dtype="float64")):
        out.append(("first_order", prompts.first_order_text(int(u), int(i), None if math.isnan(r) else float(r),
                                                            reviews.get((int(u), int(i))))))
    rng = _rng(config.seed, "second")
    brand_groups: dict[str, list[int]] = {}
    brand_names: dict[str, str] = {}
    for i, key in enumerate(catalogue.brand_keys):
        if key:
            brand_groups.setdefault(key, []).append(i)
            brand_names.setdefault(key, catalogue.brands[i])
    category_groups: dict[tuple, list[int]] = {}
    for i, cats in enumerate(catalogue.categories):
        if cats:
            category_groups.setdefault(tuple(cats), []).append(i)
    for attribute, groups, name in (("brand", brand_groups, lambda k: brand_names[k]),
                                    ("category", category_groups, prompts.category_text)):
        for key in sorted(groups):
            members = groups[key]
            if len(members) < 2:
                continue
            shuffled = rng.sample(members, len(members))
            for chunk in _chunks(shuffled, config.second_order_group_size):
                out.append(("second_order", prompts.second_order_text(chunk, attribute, name(key))))
    for u, (items, _ratings) in enumerate(train_by_user):
        if len(items) >= 2:
            out.append(("sequence", prompts.sequence_text(u, [int(i) for i in items[-config.max_history:]])))
    return out


# --- build / load ---------------------------------------------------------------------------------

def review_texts(split, config: DataConfig) -> dict[tuple[int, int], str]:
    """(user, item) -> the review excerpt quoted in prompts: ``review_text`` (else ``summary``)
    of the split's reviews (train and negatives rows only), cut to ``max_review_words``."""
    reviews = getattr(split, "reviews", None)
    if config.max_review_words == 0 or reviews is None or len(reviews) == 0:
        return {}
    out = {}
    for u, i, summary, text in zip(reviews["user"].to_numpy(), reviews["item"].to_numpy(),
                                   reviews["summary"].to_numpy(), reviews["review_text"].to_numpy()):
        excerpt = prompts.review_excerpt(text or summary, config.max_review_words)
        if excerpt:
            out[(int(u), int(i))] = excerpt
    return out


def _by_user(frame: pd.DataFrame, n_users: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per user: (items, ratings), chronological (timestamp, then item index)."""
    f = in_time_order(frame)
    users = f["user"].to_numpy()
    items = f["item"].to_numpy(dtype=np.int64)
    ratings = f["rating"].to_numpy(dtype="float64")
    bounds = np.searchsorted(users, np.arange(n_users + 1))
    return [(items[bounds[u]:bounds[u + 1]], ratings[bounds[u]:bounds[u + 1]]) for u in range(n_users)]


def _prompt_ratings(ratings: Sequence[float], config: DataConfig) -> list[float] | None:
    if not config.prompt_ratings or any(math.isnan(float(r)) for r in ratings):
        return None
    return [float(r) for r in ratings]


def history_prompts(split, parts: tuple[str, ...] = ("train",), config: DataConfig | None = None,
                    users: Iterable[int] | None = None) -> dict[int, str]:
    """B.2 prompts for inference, user -> text: each user's positives of `parts` (("train",)
    when scoring valid, ("train", "valid") when scoring test), chronological, the last
    `max_history`, rendered as in training. Users without such items get the empty-history
    prompt."""
    config = config or DataConfig()
    frame = pd.concat([getattr(split, p) for p in parts])
    by_user = _by_user(frame, split.n_users)
    wanted = range(split.n_users) if users is None else users
    out = {}
    for u in wanted:
        items, ratings = by_user[int(u)]
        items, ratings = items[-config.max_history:], ratings[-config.max_history:]
        out[int(u)] = prompts.finetune_prompt(int(u), [int(i) for i in items], _prompt_ratings(ratings, config))
    return out


def history_prompt(split, user: int, parts: tuple[str, ...] = ("train",), config: DataConfig | None = None) -> str:
    """`history_prompts` for one user."""
    return history_prompts(split, parts, config, [user])[int(user)]


def default_dir(split, config: DataConfig) -> Path:
    return split.view_dir("pagellm") / f"data-{config.hash}"


def _construct(split, config: DataConfig) -> tuple[dict[str, list[dict]], dict, list[str], list[int]]:
    """All records by file name, counts, notes and the held-out users."""
    n_users = split.n_users
    catalogue = Catalogue.from_items(split.items, config.redundancy_title_jaccard)
    scores = np.asarray(split.item_mean_rating, dtype=np.float64)
    train = split.train
    train_by_user = _by_user(train, n_users)
    neg_by_user = _by_user(split.negatives, n_users)
    implicit = bool(len(train)) and bool(np.isnan(train["rating"].to_numpy(dtype="float64")).all())
    # Train and negatives rows only (reviews.csv never holds valid/test text); see the docstring.
    reviews = review_texts(split, config)
    train_items = np.unique(train["item"].to_numpy(dtype=np.int64))
    is_train_item = np.zeros(split.n_items, dtype=bool)
    is_train_item[train_items] = True

    golden_rows, sft_rows = [], []
    golden: dict[int, list[int]] = {}
    labels: dict[int, list[int]] = {}
    rating_maps: dict[int, dict[int, float]] = {}
    for u in range(n_users):
        items, ratings = train_by_user[u]
        if len(items) == 0:
            continue
        rating_of = {int(i): float(r) for i, r in zip(items, ratings)}
        rating_maps[u] = rating_of
        g, removed = golden_list(items, ratings, scores, catalogue, config.diversity_lambda)
        golden[u] = g
        golden_rows.append({"user": u, "golden": g, "removed": removed})
        n_label = label_count(len(items), len(g), config)
        if n_label == 0:
            continue
        rng = _rng(config.seed, "labels", u)
        label_items = stratified_labels(g, rating_of, n_label, rng)
        label_list, _ = golden_list(label_items, [rating_of[i] for i in label_items], scores, catalogue,
                                    config.diversity_lambda)
        labels[u] = label_list
        in_label = set(label_list)
        keep = np.asarray([int(i) not in in_label for i in items], dtype=bool)
        input_items, input_ratings = items[keep], ratings[keep]
        shown = slice(max(0, len(input_items) - config.max_history), len(input_items))
        prompt = prompts.finetune_prompt(u, [int(i) for i in input_items[shown]],
                                         _prompt_ratings(input_ratings[shown], config))
        sft_rows.append({"user": u, "input": [int(i) for i in input_items], "labels": label_list, "prompt": prompt})

    eligible = sorted(labels)
    n_heldout = 0  # at least one held-out user when asked for, and at least one training user
    if config.heldout_fraction > 0 and len(eligible) >= 2:
        n_heldout = min(len(eligible) - 1, max(1, _round_half_up(config.heldout_fraction * len(eligible))))
    heldout = set(_rng(config.seed, "heldout").sample(eligible, n_heldout))

    pair_rows = []
    for u in eligible:
        neg_items, neg_ratings = neg_by_user[u]
        ctx = _UserContext(
            user=u, chosen=labels[u], rating_of=rating_maps[u],
            low_rated=np.asarray([int(i) for i, r in zip(neg_items, neg_ratings) if r < 3], dtype=np.int64),
            excluded=set(int(i) for i in train_by_user[u][0]) | set(int(i) for i in neg_items),
            scores=scores, catalogue=catalogue, train_items=train_items, is_train_item=is_train_item)
        for kind in FAMILIES:
            for pair in make_pairs(ctx, kind, config):
                pair_rows.append({"split": "heldout" if u in heldout else "train", "user": pair.user,
                                  "kind": pair.kind, "source": pair.source, "chosen": pair.chosen,
                                  "rejected": pair.rejected, "chosen_labels": pair.chosen_labels,
                                  "rejected_labels": pair.rejected_labels})

    pre = pretrain_prompts(catalogue, train_by_user, pd.concat([train, split.negatives]), config, reviews)
    pretrain_rows = [{"kind": kind, "text": text} for kind, text in pre]

    rating_rows = []
    for source, frame in (("train", train), ("negatives", split.negatives)):
        f = in_time_order(frame)
        for u, i, r in zip(f["user"].to_numpy(), f["item"].to_numpy(), f["rating"].to_numpy(dtype="float64")):
            if not math.isnan(r):
                rating_rows.append({"user": int(u), "item": int(i), "rating": float(r),
                                    "prompt": prompts.rating_prompt(int(u), int(i), reviews.get((int(u), int(i)))),
                                    "source": source})

    notes = []
    if implicit:
        notes.append("implicit feedback (no ratings): no rating examples; first-order prompts say "
                     "'interacted with'; ranked pairs need rating or mean-rating differences")
    if not catalogue.has_metadata:
        notes.append("no item metadata: no item or 2nd-order prompts; nothing is redundant; "
                     + ("redundancy pairs repeat an item" if config.redundancy_allow_repeat
                        else "no redundancy pairs"))
    if not catalogue.has_categories:
        notes.append("no item categories: no diversity re-rank effect and no diversity pairs")
    if not reviews:
        notes.append("no review text in prompts" + (" (max_review_words = 0)" if config.max_review_words == 0
                                                     else " (the split has no train/negatives review text)"))

    def count_by(rows, key):
        out: dict[str, int] = {}
        for row in rows:
            out[row[key]] = out.get(row[key], 0) + 1
        return dict(sorted(out.items()))

    label_lengths = [len(v) for v in labels.values()]
    counts = {
        "n_users": n_users,
        "n_users_golden": len(golden),
        "n_users_sft": len(labels),
        "n_users_without_sft": n_users - len(labels),
        "n_golden_items": sum(len(g) for g in golden.values()),
        "n_removed_redundant": sum(len(r["removed"]) for r in golden_rows),
        "mean_label_len": float(np.mean(label_lengths)) if label_lengths else 0.0,
        "max_label_len": max(label_lengths, default=0),
        "n_heldout_users": len(heldout),
        "pairs_train": count_by([r for r in pair_rows if r["split"] == "train"], "kind"),
        "pairs_heldout": count_by([r for r in pair_rows if r["split"] == "heldout"], "kind"),
        "pair_sources": count_by([{"k": f"{r['kind']}:{r['source']}"} for r in pair_rows], "k"),
        "pretrain": count_by(pretrain_rows, "kind"),
        "n_rating_examples": len(rating_rows),
        "n_reviews_quoted": len(reviews),  # (user, item) pairs whose review excerpt the prompts quote
    }
    records = {"golden.jsonl": golden_rows, "sft.jsonl": sft_rows, "pairs.jsonl": pair_rows,
               "pretrain.jsonl": pretrain_rows, "rating.jsonl": rating_rows}
    return records, counts, notes, sorted(heldout)


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def _read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        raise DataError("missing PageLLM data file", path, fix="run pagellm.data.build again")
    rows = []
    with open(path, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except ValueError as exc:
                    raise DataError(f"not valid JSON ({exc})", path, line=line_no,
                                    fix="delete the directory and build again") from exc
    return rows


def _manifest_matches(out_dir: Path, split, config: DataConfig) -> bool:
    try:
        manifest = json.loads((out_dir / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    if (manifest.get("version") != DATA_VERSION or manifest.get("split_hash") != split.hash
            or manifest.get("config") != asdict(config)):
        return False
    hashes = manifest.get("files", {})
    return all((out_dir / name).exists() and hashes.get(name) == sha256_file(out_dir / name) for name in FILES)


def build(split, config: DataConfig | None = None, out_dir: Path | None = None) -> PageLLMData:
    """Build (or reuse) the PageLLM data of `split` in `out_dir`; see the module docstring."""
    config = config or DataConfig()
    out_dir = Path(out_dir) if out_dir is not None else default_dir(split, config)
    if _manifest_matches(out_dir, split, config):
        logger.info("reusing PageLLM data in %s", out_dir)
        return load(out_dir)
    logger.info("building PageLLM data of %s/%s in %s", split.dataset, split.name, out_dir)
    records, counts, notes, heldout_users = _construct(split, config)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "manifest.json").unlink(missing_ok=True)  # the manifest marks a complete build
    for name in FILES:
        _write_jsonl(out_dir / name, records[name])
    write_json_atomic(out_dir / "manifest.json", {
        "version": DATA_VERSION, "dataset": split.dataset, "split": split.name, "split_hash": split.hash,
        "config": asdict(config), "config_hash": config.hash, "counts": counts, "notes": notes,
        "heldout_users": heldout_users,
        "files": {name: sha256_file(out_dir / name) for name in FILES},
    })
    return load(out_dir)


def load(out_dir: Path) -> PageLLMData:
    """Read the files `build` wrote."""
    out_dir = Path(out_dir)
    manifest_path = out_dir / "manifest.json"
    if not manifest_path.exists():
        raise DataError("no manifest.json here (no complete PageLLM data build)", out_dir,
                        fix="run pagellm.data.build")
    manifest = json.loads(manifest_path.read_text())
    golden_rows = _read_jsonl(out_dir / "golden.jsonl")
    sft_rows = _read_jsonl(out_dir / "sft.jsonl")
    pair_rows = _read_jsonl(out_dir / "pairs.jsonl")
    pretrain_rows = _read_jsonl(out_dir / "pretrain.jsonl")
    rating_rows = _read_jsonl(out_dir / "rating.jsonl")
    pair_fields = {f.name for f in fields(PreferencePair)}

    def pair(row: dict) -> PreferencePair:
        return PreferencePair(**{k: v for k, v in row.items() if k in pair_fields})

    return PageLLMData(
        input_items={r["user"]: r["input"] for r in sft_rows},
        label_lists={r["user"]: r["labels"] for r in sft_rows},
        golden={r["user"]: r["golden"] for r in golden_rows},
        pairs_train=[pair(r) for r in pair_rows if r["split"] == "train"],
        pairs_heldout=[pair(r) for r in pair_rows if r["split"] == "heldout"],
        pretrain_texts=[r["text"] for r in pretrain_rows],
        rating_examples=[(r["user"], r["item"], r["rating"], r["prompt"]) for r in rating_rows],
        finetune_prompts={r["user"]: r["prompt"] for r in sft_rows},
        pretrain_kinds=[r["kind"] for r in pretrain_rows],
        heldout_users=list(manifest.get("heldout_users", [])),
        config=DataConfig.from_dict(manifest["config"]),
        manifest=manifest,
    )
