"""Peak memory of EASE's and ItemKNN's fits, per n_items^2 and per co-occurrence (docs/performance.md).

Each measurement runs in a fresh Python process, on synthetic data (users with 5-40 items drawn
with Zipf-like popularity, 5 users per item), and prints one JSON line:

- ease: the peak resident memory of the fit (VmHWM after it minus VmRSS before it, so the
  training matrix already in memory is not counted), divided by n_items^2, for the former code
  (variant `old`: float32 and float64 copies of the Gram, np.linalg.inv) and the current one
  in float64 and float32;
- itemknn: the peak of `similarity` traced by tracemalloc (numpy's and scipy's arrays), once with
  all co-occurrences in one block and k = 1 (-> bytes per co-occurrence), once with k = 100 and
  blocks of one item (-> bytes per neighbour kept), and the peak RSS (as for EASE) of the
  former all-at-once code, of `similarity` at the fit's largest block and at blocks of 64 MiB.

    PYTHONPATH=. python scripts/memory_factors.py [--sizes 2000 4000 6000 8000]

`--dtypes ROOT DATASET` instead compares EASE solved in float32 with float64 on a prepared
dataset's random split (the test users' top-20 and top-100 lists, history masked, ranked by
`bench.ranking`, and ndcg@20 / recall@20 of the one evaluator):

    PYTHONPATH=. python scripts/memory_factors.py --dtypes /tmp/ws toys2014
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys


def _status(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {key} in /proc/self/status")


def _data(n_items: int, seed: int = 0):
    import numpy as np
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    n_users = 5 * n_items
    lengths = rng.integers(5, 41, n_users)
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.8
    items = rng.choice(n_items, size=int(lengths.sum()), p=popularity / popularity.sum())
    users = np.repeat(np.arange(n_users), lengths)
    x = sp.csr_matrix((np.ones(len(items), dtype=np.float32), (users, items)), shape=(n_users, n_items))
    x.sum_duplicates()
    x.data[:] = 1.0
    return x


def _old_ease(x, l2: float):
    import numpy as np

    gram = np.asarray((x.T @ x).todense(), dtype=np.float64)
    gram[np.diag_indices_from(gram)] += l2
    p = np.linalg.inv(gram)
    b = p / (-np.diag(p))
    b[np.diag_indices_from(b)] = 0.0
    return b.astype(np.float32)


def one(model: str, n_items: int, variant: str) -> dict:
    import numpy as np

    x = _data(n_items)
    if model == "ease":
        from baselines.ease import ease_weights

        before, hwm_before = _status("VmRSS"), _status("VmHWM")
        b = _old_ease(x, 500.0) if variant == "old" else ease_weights(x, 500.0, np.dtype(variant))
        peak = _status("VmHWM") - before
        return {"model": model, "variant": variant, "n_items": n_items, "nnz": int(x.nnz),
                "peak_bytes": peak, "bytes_per_cell": round(peak / n_items ** 2, 3),
                "after_bytes_per_cell": round((_status("VmRSS") - before) / n_items ** 2, 3),
                "hwm_before_over_rss_mb": round((hwm_before - before) / 2**20, 1), "b_sum": float(b.sum())}
    from baselines.itemknn import similarity

    def count_cooccurrences() -> int:  # after the measurement: the product would raise VmHWM
        xt = x.T.tocsr().astype(np.float64)
        return int((xt @ xt.T).nnz)

    if variant in ("rss-old", "rss", "rss-64mib"):
        from baselines.itemknn import BLOCK_BYTES, BYTES_PER_COOCCURRENCE
        # the former fit, all co-occurrences X^T X at once: the oracle the tests keep (imported
        # before the measurement starts)
        from tests.test_itemknn import _all_at_once as _old_itemknn

        # the former code; the fit's blocks on a big machine; blocks of 64 MiB
        budget = BLOCK_BYTES if variant == "rss" else 2**26
        before, hwm_before = _status("VmRSS"), _status("VmHWM")
        if variant == "rss-old":
            sim = _old_itemknn(x, 100, 0.0)
        else:
            sim = similarity(x, 100, 0.0, budget // BYTES_PER_COOCCURRENCE)
        peak = _status("VmHWM") - before
        return {"model": model, "variant": variant, "n_items": n_items, "interactions": int(x.nnz),
                "cooccurrences": count_cooccurrences(), "kept": int(sim.nnz), "peak_bytes": peak,
                "hwm_before_over_rss_mb": round((hwm_before - before) / 2**20, 1)}
    import tracemalloc

    k, block = (1, 10**12) if variant == "one-block" else (100, 1)  # 1: a block per item
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    sim = similarity(x, k, 0.0, block)
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    data = 2 * (12 * x.nnz + 8 * n_items)  # the float64 X and X^T that `similarity` makes, counted apart
    cooccurrences = count_cooccurrences()
    out = {"model": model, "variant": variant, "n_items": n_items, "interactions": int(x.nnz),
           "cooccurrences": cooccurrences, "kept": int(sim.nnz), "peak_bytes": peak, "data_bytes": data}
    if variant == "one-block":
        out["bytes_per_cooccurrence"] = round((peak - data) / cooccurrences, 1)
    else:
        out["bytes_per_neighbour"] = round((peak - data) / sim.nnz, 1)
    return out


def compare_dtypes(root: str, dataset: str, l2: float = 500.0) -> dict:
    """Top-K lists and metrics of EASE with dtype float32 against float64 on `dataset`."""
    import time
    from pathlib import Path

    import numpy as np

    from baselines.ease import ease_weights
    from bench.data.datasets import ensure_split
    from bench.data.splits import SplitSpec
    from bench.evaluator import evaluate
    from bench.paths import Workspace
    from bench.ranking import top_k_indices

    split = ensure_split(dataset, Workspace(Path(root)), SplitSpec("random"))
    x = split.matrix(("train",))
    truth = split.ground_truth("test")
    users = np.unique(split.test["user"].to_numpy())
    history = truth.history[users]
    lists, out = {}, {"dataset": dataset, "n_items": split.n_items, "n_users": len(users), "l2": l2}
    for dtype in ("float64", "float32"):
        t0 = time.perf_counter()
        b = ease_weights(x, l2, np.dtype(dtype))
        out[f"fit_seconds_{dtype}"] = round(time.perf_counter() - t0, 1)
        scores = np.asarray(history @ b, dtype=np.float32)
        scores[history.nonzero()] = -np.inf
        lists[dtype] = top_k_indices(scores, 100)
        metrics = evaluate(lists[dtype], users, truth, ks=(20,), metrics=["ndcg@20", "recall@20"]).metrics
        out[f"ndcg@20_{dtype}"], out[f"recall@20_{dtype}"] = metrics["ndcg@20"], metrics["recall@20"]
        del b, scores
    a, b = lists["float64"], lists["float32"]
    for k in (20, 100):
        out[f"identical_top{k}_lists"] = float(np.mean((a[:, :k] == b[:, :k]).all(axis=1)))
        out[f"same_top{k}_sets"] = float(np.mean([set(p[:k]) == set(q[:k]) for p, q in zip(a, b)]))
        out[f"mean_overlap@{k}"] = float(np.mean([len(set(p[:k]) & set(q[:k])) / k for p, q in zip(a, b)]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 4000, 6000, 8000])
    parser.add_argument("--one", nargs=3, metavar=("MODEL", "N_ITEMS", "VARIANT"), help=argparse.SUPPRESS)
    parser.add_argument("--dtypes", nargs=2, metavar=("ROOT", "DATASET"))
    args = parser.parse_args()
    if args.dtypes:
        print(json.dumps(compare_dtypes(*args.dtypes)), flush=True)
        return
    if args.one:
        print(json.dumps(one(args.one[0], int(args.one[1]), args.one[2])), flush=True)
        return
    runs = ([("ease", v) for v in ("old", "float64", "float32")]
            + [("itemknn", v) for v in ("one-block", "blocks", "rss-old", "rss", "rss-64mib")])
    for model, variant in runs:
        for n in args.sizes:
            subprocess.run([sys.executable, __file__, "--one", model, str(n), variant], check=True)


if __name__ == "__main__":
    main()
