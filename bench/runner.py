"""The grid runner: (preset, dataset, split, model, seed) jobs -> one result JSON each.

The result file is the cache: a job is skipped when its JSON exists with the same config
hash and split hash (``--overwrite`` forces). Every file is written atomically, and the
JSON last, so a killed run leaves either a complete result or none. A failing job is
logged with its traceback file and does not stop the others.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import random
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bench import config as cfg
from bench import io
from bench.data.datasets import EMBEDDED, ensure_split, resolve_datasets
from bench.data.splits import Split, SplitSpec
from bench.errors import BenchError, NotApplicable
from bench.io import atomic_path, hash_json, write_json_atomic, write_text_atomic
from bench.locks import lock_if_free
from bench.models import MODELS
from bench.paths import Workspace
from bench.costs import cost_hints
from bench.provenance import PeakMemory, provenance
from bench.scoring import evaluate_split, top_k  # noqa: F401 - top_k: still importable from here (tests, recmind)

logger = logging.getLogger(__name__)

RESULT_SCHEMA = 1
METRICS_VERSION = "docs/metrics.md@2"  # part of every cache key; bump on change (@2: exact top-K tie rule)


@dataclass(frozen=True)
class Job:
    preset: str
    dataset: str
    split: SplitSpec
    model: str
    seed: int
    config: object  # the model's resolved frozen Config
    registry_name: str = ""  # the registered model behind `model` when `model` is a preset alias

    @property
    def model_class_name(self) -> str:
        return self.registry_name or self.model

    @property
    def key(self) -> str:
        return f"{self.preset}/{self.dataset}/{self.split.name}/{self.model}/seed{self.seed}"

    def result_path(self, ws: Workspace) -> Path:
        return ws.runs / self.preset / self.dataset / self.split.name / self.model / f"seed{self.seed}.json"

    def config_hash(self, preset: cfg.Preset) -> str:
        key = {"model": self.model_class_name, "config": cfg.to_dict(self.config), "topk": preset.topk,
               "ks": list(preset.ks), "metrics": METRICS_VERSION}
        version = MODELS.get(self.model_class_name).result_version
        if version:  # only when set, so the keys of unchanged models stay as they were
            key["model_version"] = version
        return hash_json(key)


@dataclass
class Outcome:
    job: Job
    status: str  # ran | skipped | failed | n/a | held (by another runner)
    path: Path | None = None
    error: str | None = None


def plan(preset: cfg.Preset, ws: Workspace, *, models=None, datasets=None, seeds=None,
         overrides: dict | None = None) -> list[Job]:
    """Expand a preset (narrowed by --models/--datasets/--seeds, changed by --set) into jobs."""
    overrides = dict(overrides or {})
    aliases = preset.aliases
    requested = _selection("models", models, preset.models, "`bench ls models`")
    # A preset may run one registered model under several names and settings ("aliases").
    model_names: list[str] = []
    for name in requested:
        for resolved in ([name] if name in aliases else MODELS.resolve(name)):
            if resolved not in model_names:
                model_names.append(resolved)
    requested_datasets = _selection("datasets", datasets, preset.datasets or EMBEDDED, "`bench ls datasets`")
    dataset_names = resolve_datasets(requested_datasets, ws)
    seed_list = check_seeds(seeds if seeds is not None else preset.seeds)
    split_over = overrides.pop("split", {})
    # A preset's split may name the models it is for (e.g. the cold-start split of `smoke`).
    splits, split_models = [], []
    for entry in preset.splits:
        entry = dict(entry)
        only = entry.pop("models", None)
        splits.append(cfg.build(SplitSpec, {**entry, **split_over}, "split"))
        split_models.append(None if only is None else
                            {n for name in ([only] if isinstance(only, str) else only)
                             for n in ([name] if name in aliases else MODELS.resolve(name))})
    unknown_scopes = set(overrides) - set(model_names)
    if unknown_scopes:
        raise BenchError(f"--set names {sorted(unknown_scopes)}, which are not models of this run "
                         f"({', '.join(model_names)}) nor 'split'")
    configs, registry, classes = {}, {}, {}
    for name in model_names:
        alias = aliases.get(name) or {}
        registry[name] = alias.get("model", name)
        entry = MODELS.entry(registry[name])
        # Variants of one model (pagellm-item, ...) read their family's settings, so they resolve
        # to the same configuration and can share training stages.
        shared = entry.meta.get("settings", registry[name])
        classes[name] = entry.load()
        cls = classes[name].Config
        values = {**cfg.model_yaml(shared, preset.model_settings),
                  **(preset.models_config.get(shared) or {}), **(preset.models_config.get(registry[name]) or {}),
                  **(alias.get("config") or {}), **overrides.get(name, {})}
        configs[name] = cfg.build(cls, values, name)
    preset_datasets = tuple(resolve_datasets(preset.datasets or EMBEDDED, ws))
    jobs = [Job(preset.name, d, s, m, seed,
                classes[m].job_config(dataclasses.replace(configs[m], seed=seed), d, preset_datasets),
                registry[m] if registry[m] != m else "")
            for d in dataset_names for s, only in zip(splits, split_models) for m in model_names
            if only is None or m in only for seed in seed_list]
    # `--set split.cold_start=true` can make two split entries equal: one job each.
    return list({job.key: job for job in jobs}.values())


def _selection(what: str, given, default, listing: str) -> list[str]:
    """The names of --models / --datasets (the preset's when not given); an empty one is an error,
    never "everything"."""
    names = default if given is None else given
    if isinstance(names, str):
        names = names.split(",")
    names = [str(n).strip() for n in names if str(n).strip()]
    if not names:
        raise BenchError(f"--{what} names no {what[:-1]}: give names from {listing} separated by commas, "
                         "or 'all'")
    return names


def check_seeds(seeds) -> list[int]:
    """Seeds as ints: at least one, none negative (result files are seed<N>.json)."""
    try:
        out = [int(s) for s in seeds]
    except (TypeError, ValueError):
        raise BenchError(f"seeds must be integers, not {seeds!r}") from None
    if not out:
        raise BenchError("--seeds names no seed: give one or more non-negative integers, e.g. --seeds 0,1,2")
    negative = [s for s in out if s < 0]
    if negative:
        raise BenchError(f"seed {negative[0]} is negative: seeds are non-negative integers, e.g. --seeds 0,1,2")
    return list(dict.fromkeys(out))


def missing_data(jobs: list[Job], ws: Workspace) -> dict[str, list[Path]]:
    """{dataset: its missing raw files} for the datasets of `jobs` that need a download."""
    from bench.data.datasets import get_dataset, missing_raw_files

    out: dict[str, list[Path]] = {}
    for name in dict.fromkeys(job.dataset for job in jobs):
        missing = missing_raw_files(get_dataset(name, ws), ws)
        if missing:
            out[name] = missing
    return out


def unavailable(jobs: list[Job]) -> dict[str, list[Job]]:
    """{reason: its jobs} for the jobs whose model says, before training, that it cannot run on
    this machine (`Model.check`, once per model name and setting)."""
    reasons: dict[str, list[Job]] = {}
    checked: dict[tuple[str, str], str | None] = {}
    for job in jobs:
        key = (job.model, hash_json(cfg.to_dict(dataclasses.replace(job.config, seed=0))))
        if key not in checked:
            checked[key] = None
            try:
                MODELS.get(job.model_class_name).check(job.config, job.model)
            except BenchError as exc:
                checked[key] = str(exc)
        if checked[key]:
            reasons.setdefault(checked[key], []).append(job)
    return reasons


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.manual_seed(seed)


def run_job(job: Job, preset: cfg.Preset, ws: Workspace, *, overwrite: bool = False, download: bool = False,
            split: Split | None = None) -> Outcome:
    path = job.result_path(ws)
    split = split or ensure_split(job.dataset, ws, job.split, download=download)
    config_hash = job.config_hash(preset)
    if path.exists() and not overwrite and _reusable(path, config_hash, split.hash):
        return Outcome(job, "skipped", path)

    workdir = ws.root / "work" / job.key
    workdir.mkdir(parents=True, exist_ok=True)
    seed_everything(job.seed)
    model = MODELS.get(job.model_class_name)()
    with PeakMemory() as memory:
        t0 = time.perf_counter()
        model.fit(split, job.config, workdir)
        t1 = time.perf_counter()
        test_eval, test_users, test_recs = evaluate_split(model, split, "test", preset.topk, preset.ks)
        t2 = time.perf_counter()
        valid_eval, _, _ = evaluate_split(model, split, "valid", preset.topk, preset.ks)

    stem = path.with_suffix("")
    per_user_path = stem.parent / f"{stem.name}.per_user.csv.gz"
    recs_path = stem.parent / f"{stem.name}.recs.csv.gz"
    per_user = test_eval.per_user.copy()
    per_user.insert(0, "user_id", split.user_ids[per_user["user"].to_numpy()])
    with atomic_path(per_user_path) as tmp:
        per_user.drop(columns=["user"]).to_csv(tmp, index=False, compression="gzip", float_format="%.6g")
    with atomic_path(recs_path) as tmp:
        _recs_frame(split, test_users, test_recs).to_csv(tmp, index=False, compression="gzip")
    result = {
        "schema": RESULT_SCHEMA,
        "preset": job.preset, "dataset": job.dataset, "model": job.model, "seed": job.seed,
        "registered_model": job.model_class_name,
        "split": {"name": split.name, "hash": split.hash, **split.spec, **split.stats},
        "config": cfg.to_dict(job.config), "config_hash": config_hash,
        "metrics": test_eval.metrics, "valid_metrics": valid_eval.metrics, "n_users": test_eval.n_users,
        "metric_settings": {"ks": list(preset.ks), "topk": preset.topk, "ranked_k": 100, "diversity_k": 20,
                            "similarity": "category", "definitions": METRICS_VERSION},
        "per_user": per_user_path.name, "recs": recs_path.name,
        "files": {p.name: io.file_record(p) for p in (per_user_path, recs_path)},
        "timing": {"fit_seconds": round(t1 - t0, 3), "predict_seconds": round(t2 - t1, 3), **memory.report()},
        "model_info": model.extra_result(),
        "provenance": provenance(),
    }
    write_json_atomic(path, result)
    return Outcome(job, "ran", path)


def _reusable(path: Path, config_hash: str, split_hash: str) -> bool:
    """Whether the result at `path` is this job's and complete: its JSON readable, same config and
    split, and every side file intact. A damaged result is recomputed, with a warning saying why."""
    from bench.results import damaged_side_files, load_result

    try:
        old = load_result(path)
    except BenchError as exc:
        logger.warning("result recomputed: %s", exc)
        return False
    if old.get("config_hash") != config_hash or old.get("split", {}).get("hash") != split_hash:
        return False
    problems = damaged_side_files(path, old)
    if problems:
        logger.warning("result %s recomputed: %s", path, "; ".join(problems))
    return not problems


def _recs_frame(split: Split, users: np.ndarray, recs: np.ndarray) -> pd.DataFrame:
    rows, ranks = np.nonzero(recs >= 0)
    return pd.DataFrame({"user_id": split.user_ids[users[rows]], "item_id": split.item_ids[recs[rows, ranks]],
                         "rank": ranks + 1})


def _run_safely(job: Job, preset: cfg.Preset, ws: Workspace, overwrite: bool, split: Split | Path,
                threads: int | None = None) -> Outcome:
    """Run one job; a failure becomes an Outcome with its traceback file, never an exception."""
    try:
        if threads:  # parallel workers share the machine's cores
            from threadpoolctl import threadpool_limits

            threadpool_limits(threads)
            try:
                import torch

                torch.set_num_threads(threads)
            except ImportError:
                pass
        if isinstance(split, Path):
            from bench.data.splits import load_split

            split = load_split(split)
        return _run_unless_held(job, preset, ws, overwrite, split)
    except KeyboardInterrupt:
        raise
    except NotApplicable as exc:
        logger.warning("job %s is not applicable: %s", job.key, exc)
        return Outcome(job, "n/a", None, str(exc))
    except Exception as exc:  # one failing job must not stop the grid
        return _failed(job, ws, exc)


def _run_unless_held(job: Job, preset: cfg.Preset, ws: Workspace, overwrite: bool, split: Split) -> Outcome:
    """Run `job` unless another runner (a second `bench run`, a Dask worker) holds it: then it
    is reported as held, and the next run finds the result it wrote."""
    with lock_if_free(ws.root / "work" / job.key / ".job.lock") as mine:
        if not mine:
            logger.info("job %s is held by another runner; not run here", job.key)
            return Outcome(job, "held", None, "held by another runner")
        return run_job(job, preset, ws, overwrite=overwrite, split=split)


def _failed(job: Job, ws: Workspace, exc: BaseException) -> Outcome:
    log = ws.results / "failures" / (job.key.replace("/", "__").replace(":", "_") + ".txt")
    write_text_atomic(log, "".join(traceback.format_exception(exc)))
    message = str(exc) if isinstance(exc, BenchError) else f"{type(exc).__name__}: {exc}"
    logger.error("job %s failed: %s (traceback: %s)", job.key, message, log)
    return Outcome(job, "failed", log, message)


def run_grid(jobs: list[Job], preset: cfg.Preset, ws: Workspace, *, overwrite: bool = False,
             download: bool = False, progress: bool = True, n_jobs: int = 1, scheduler: str | None = None,
             gpu_resource: bool = False) -> list[Outcome]:
    """Run `jobs`; splits are prepared first, once each, in this process (so parallel workers
    never write the same split), then the jobs run here (`n_jobs=1`), in `n_jobs` worker
    processes through joblib, or on a Dask cluster (`scheduler` address, see bench.cluster).
    Returns one Outcome per job, in the order of `jobs`."""
    import os

    from bench.progress import GridProgress

    splits: dict[tuple[str, SplitSpec], Split | Exception] = {}
    for key in dict.fromkeys((j.dataset, j.split) for j in jobs):
        try:
            splits[key] = ensure_split(key[0], ws, key[1], download=download)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # every job of this split fails with the same, clear reason
            splits[key] = exc
    outcomes: dict[int, Outcome] = {}
    runnable = []
    for index, job in enumerate(jobs):
        split = splits[(job.dataset, job.split)]
        if isinstance(split, Exception):
            outcomes[index] = _failed(job, ws, split)
        else:
            runnable.append((index, job, split))
    hints = cost_hints()
    grid = GridProgress({index: cost_hint(job, hints) for index, job, _ in runnable}, total=len(jobs),
                        done=len(outcomes), show=progress)
    if scheduler:
        from bench.cluster import run_on_dask

        def done(index: int, outcome: Outcome) -> None:
            outcomes[index] = outcome
            grid.finished(index, outcome.status)

        run_on_dask(runnable, preset, ws, overwrite, scheduler, gpu_resource, done)
    elif n_jobs == 1:
        for index, job, split in runnable:
            grid.started(job.key)
            outcomes[index] = _run_safely(job, preset, ws, overwrite, split)
            grid.finished(index, outcomes[index].status, job.key)
    else:
        from joblib import Parallel, delayed

        threads = max(1, (os.cpu_count() or 1) // n_jobs)
        tasks = (delayed(_in_worker)(index, job, preset, ws, overwrite, split.directory, threads)
                 for index, job, split in runnable)
        grid.started(f"{min(n_jobs, len(runnable))} jobs in parallel")
        for index, outcome in Parallel(n_jobs=n_jobs, return_as="generator_unordered")(tasks):
            outcomes[index] = outcome
            grid.finished(index, outcome.status)
    grid.close()
    return [outcomes[i] for i in range(len(jobs))]


def _indexed(index: int, *args) -> tuple[int, Outcome]:
    from bench import progress

    progress.set_enabled(False)  # a worker's bars would overwrite the grid's
    return index, _run_safely(*args)


def _in_worker(index: int, *args) -> tuple[int, Outcome]:
    """`_indexed` in a joblib worker process, which ends when the runner that started it dies."""
    _exit_with_parent()
    return _indexed(index, *args)


@functools.cache  # one watcher per worker process
def _exit_with_parent() -> None:
    """Exit this worker as soon as its parent is gone. joblib's (loky's) workers outlive a
    runner killed by a signal and would go on training for hours, writing results nobody
    waits for; a job they leave half done is recomputed (its locks die with them)."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def cost_hint(job: Job, hints: dict[str, float] | None = None) -> float:
    """The job's model's measured seconds (bench/configs/costs.yaml): the grid's ETA weighs jobs
    by them. A model never measured (e.g. recbole:NARM) weighs as the median measured model."""
    hints = cost_hints() if hints is None else hints
    seconds = hints.get(job.model, hints.get(job.model_class_name))  # an alias, then its model
    if seconds is not None and seconds > 0:
        return float(seconds)
    measured = sorted(s for s in hints.values() if s > 0)
    return measured[len(measured) // 2] if measured else 1.0
