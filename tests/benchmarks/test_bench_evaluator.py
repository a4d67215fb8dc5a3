"""Evaluator speed at the scale of a real run: 100k users x top-100 lists, every metric.

5,000 items with 1-5 of 50 categories each, 5 held-out positives per user (3 of them planted
in the user's list so the ranked metrics have real work), 20 history items per user (some
of them inside the lists, so cleaning has real work too).

Budget: 1 s of CPU on one core of the dev machine, where the reference workload
(tests/benchmarks/reference.py) takes REFERENCE_S of CPU. On another machine, or on this one
while other jobs share its cores, the budget is scaled by the reference timed in the same run:
    min CPU time of evaluate  <=  BUDGET_S * (reference CPU time now / REFERENCE_S)
so a slower machine does not fail it, and a slower evaluator does. CPU time, not wall time: on
a shared machine the wall clock mostly measures the scheduler (pytest-benchmark's table still
shows wall time). Measured numbers: docs/performance.md.

Run: pytest tests/benchmarks -m benchmark --benchmark-only
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import scipy.sparse as sp

from bench.evaluator import GroundTruth, evaluate, metric_names
from tests.benchmarks.reference import cpu_seconds, reference_workload

pytestmark = pytest.mark.benchmark

N_USERS, N_ITEMS, N_CATS, TOP, N_TEST, N_HIST = 100_000, 5_000, 50, 100, 5, 20
BUDGET_S = 1.0
REFERENCE_S = 0.076  # the reference's CPU time on the dev machine (docs/performance.md)


def make_case(seed: int = 0, n_users: int = N_USERS, n_items: int = N_ITEMS):
    """(recs (n_users, TOP), users (n_users,), GroundTruth) with the sizes above."""
    rng = np.random.default_rng(seed)
    # Distinct items per list without an (n_users, n_items) draw: an arithmetic progression
    # modulo n_items with a step coprime to it (n_items = 5000 = 2^3 5^4).
    steps = rng.choice(np.array([s for s in range(1, 400) if np.gcd(s, n_items) == 1]), n_users)
    recs = (rng.integers(0, n_items, n_users)[:, None] + steps[:, None] * np.arange(TOP)) % n_items
    users = np.arange(n_users)

    planted = np.take_along_axis(recs, rng.integers(0, TOP, (n_users, 3)), axis=1)
    extra = rng.integers(0, n_items, (n_users, N_TEST - 3))
    test_items = np.concatenate([planted, extra], axis=1).ravel()
    test_users = np.repeat(users, N_TEST)
    ratings = rng.integers(4, 6, len(test_items)).astype(float)  # positives, with ties

    hist_items = rng.integers(0, n_items, n_users * N_HIST)
    history = sp.csr_matrix((np.ones(len(hist_items)), (np.repeat(users, N_HIST), hist_items)),
                            shape=(n_users, n_items))
    history.data[:] = 1.0
    n_item_cats = rng.integers(1, 6, n_items)
    cat_rows = np.repeat(np.arange(n_items), n_item_cats)
    cat_cols = np.concatenate([rng.choice(N_CATS, k, replace=False) for k in n_item_cats])
    categories = sp.csr_matrix((np.ones(len(cat_rows)), (cat_rows, cat_cols)), shape=(n_items, N_CATS))
    truth = GroundTruth(n_users=n_users, n_items=n_items, test_users=test_users, test_items=test_items,
                        test_ratings=ratings, history=history,
                        item_mean_rating=np.round(rng.uniform(1, 5, n_items), 1), item_categories=categories)
    return recs, users, truth


@pytest.fixture(scope="module")
def case():
    return make_case()


def test_evaluate_100k_users_top100(benchmark, case):
    recs, users, truth = case
    work = reference_workload()
    reference = cpu_seconds(work, 10)
    cpu: list[float] = []

    def timed():
        start = time.process_time()
        out = evaluate(recs, users, truth)
        cpu.append(time.process_time() - start)
        return out

    result = benchmark.pedantic(timed, rounds=5, iterations=1, warmup_rounds=1)
    reference = min(reference, cpu_seconds(work, 10))  # before and after: the least disturbed
    budget = BUDGET_S * reference / REFERENCE_S
    benchmark.extra_info.update({"cpu_s": min(cpu), "reference_cpu_s": reference, "budget_cpu_s": budget})
    assert min(cpu) <= budget, (f"evaluate took {min(cpu):.3f} s of CPU, over its budget of {budget:.3f} s "
                                f"(1 s where the reference takes {REFERENCE_S} s; it took {reference:.3f} s)")
    assert result.n_users == N_USERS
    assert list(result.metrics) == metric_names()
    assert all(v is not None and np.isfinite(v) for v in result.metrics.values())
    assert 0.3 < result.metrics["recall@100"] < 0.7  # 3 of 5 planted, some removed as history
