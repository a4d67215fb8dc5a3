"""Scoring a fitted model on a split part: the one place where lists are cut and evaluated.

`top_k` masks every model's history and cuts its lists by the one ranking rule; `evaluate_split`
scores a split part with the one evaluator; `validate` is the same for early stopping. The runner
(final scoring) and the models (validation during `fit`) both call down into this module, which
imports neither of them, so the data flow reads one way: runner -> models -> scoring -> evaluator.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from bench.errors import BenchError

if TYPE_CHECKING:
    from bench.data.splits import Split
    from bench.models import Model


SCORE_BATCH = 1024  # users scored at once: (SCORE_BATCH, n_items) scores exist at a time


def top_k(model: Model, users: np.ndarray, history, k: int, batch_size: int = SCORE_BATCH) -> np.ndarray:
    """(len(users), k) item indices, best first, history removed, -1 where fewer than k remain.

    The one place where lists are cut: every model's history is masked here, identically, and
    scores are ranked by the one rule of `bench.ranking` (ties: lower item index first).
    """
    from bench.evaluator import clean_lists
    from bench.ranking import top_k_indices

    out = np.full((len(users), k), -1, dtype=np.int64)
    for start in range(0, len(users), batch_size):
        batch = users[start:start + batch_size]
        hist = history[batch]
        if model.produces_lists:
            lists = np.asarray(model.rank(batch, k, hist), dtype=np.int64)
            lists = clean_lists(lists, np.arange(len(batch)), hist)[:, :k]
            out[start:start + len(batch), :lists.shape[1]] = lists
            continue
        scores = np.array(model.score(batch, hist), dtype=np.float32, copy=True)
        _require_finite_scores(scores, model)
        scores[np.isnan(scores)] = -np.inf
        rows, cols = hist.nonzero()
        scores[rows, cols] = -np.inf
        ranked = top_k_indices(scores, k)  # higher score first; ties: lower item index first
        ranked[np.take_along_axis(scores, ranked, axis=1) == -np.inf] = -1
        out[start:start + len(batch), :ranked.shape[1]] = ranked
    return out


def _require_finite_scores(scores: np.ndarray, model: Model) -> None:
    """A model whose scores (users, items) are all NaN or infinite (a diverged fit, a degenerate
    setting) fails the job, instead of ranking nothing and being recorded with every metric 0."""
    if scores.size and not np.isfinite(scores).any():
        raise BenchError(f"{type(model).__name__} gave no finite score to any item for {len(scores)} users: "
                         "its fit diverged or a setting is degenerate; check its settings "
                         "(`bench ls --model NAME` lists them)")


def evaluate_split(model: Model, split: Split, part: str, topk: int, ks: tuple[int, ...], metrics=None):
    """(Evaluation, users, recs) of `model` on `part`; `metrics` as in `bench.evaluator.evaluate`."""
    from bench.evaluator import evaluate

    truth = split.ground_truth(part)
    users = np.unique(getattr(split, part)["user"].to_numpy())
    recs = top_k(model, users, truth.history, topk)
    return evaluate(recs, users, truth, ks=ks, metrics=metrics), users, recs


def validate(model: Model, split: Split, metric: str = "ndcg@20") -> float:
    """`metric` of `model` on the validation split, through the one evaluator and the same
    history masking as the final scoring; the evaluator computes that metric alone. For early
    stopping and model selection."""
    k = int(metric.rsplit("@", 1)[1]) if "@" in metric else 100
    evaluation, _, _ = evaluate_split(model, split, "valid", topk=max(k, 20), ks=(k,), metrics=[metric])
    value = evaluation.metrics[metric]
    return float("nan") if value is None else float(value)
