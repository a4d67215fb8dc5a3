"""`random` and `pop`: the floor every model must clear."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.models import Model, ModelConfig


class RandomModel(Model):
    """Uniformly random scores from a counter-based hash of (seed, user, item).

    Vectorised, and the score of a (user, item) pair does not depend on batching.
    """

    def fit(self, split, config: ModelConfig, workdir: Path) -> None:
        self.n_items = split.n_items
        self.seed = config.seed

    def score(self, users: np.ndarray, history) -> np.ndarray:
        users = np.asarray(users, dtype=np.uint64)[:, None]
        items = np.arange(self.n_items, dtype=np.uint64)[None, :]
        with np.errstate(over="ignore"):
            key = (users * np.uint64(0x9E3779B97F4A7C15)) ^ (items + np.uint64(self.seed) * np.uint64(0xD1B54A32D192ED03))
            return (_splitmix64(key) >> np.uint64(40)).astype(np.float32) / np.float32(1 << 24)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser: a well-mixed 64-bit hash (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


@dataclass(frozen=True)
class PopConfig(ModelConfig):
    pass


class PopModel(Model):
    """Items ranked by their number of training interactions (ties: lower item index first)."""

    Config = PopConfig

    def fit(self, split, config: PopConfig, workdir: Path) -> None:
        # Equal counts are ranked by `bench.ranking`'s rule (lower item index first), exactly.
        self.scores = np.bincount(split.train["item"].to_numpy(), minlength=split.n_items).astype(np.float32)

    def score(self, users: np.ndarray, history) -> np.ndarray:
        return np.broadcast_to(self.scores, (len(users), len(self.scores))).copy()
