"""The `bench` command. The only module that prints or reads sys.argv."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from bench.errors import BenchError

logger = logging.getLogger("bench")


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench", description="PageLLM reproduction and recommendation benchmark harness.")
    p.add_argument("--root", help="workspace root for data/ and results/ (default: $BENCH_HOME or the current directory)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    ls = sub.add_parser("ls", help="list models, datasets and presets")
    ls.add_argument("what", nargs="?", choices=["models", "datasets", "presets", "all"], default="all")
    ls.add_argument("--model", help="show the settings of one model")

    run = sub.add_parser("run", help="train and score models on datasets; one result JSON per job")
    run.add_argument("--models", help="comma-separated model names or 'all' (default: the preset's)")
    run.add_argument("--datasets", help="comma-separated dataset names or 'all' (default: the preset's)")
    run.add_argument("--seeds", type=_ints, help="comma-separated seeds (default: the preset's)")
    run.add_argument("--preset", help="a preset from `bench ls presets` (default: cpu when no --models/--datasets "
                                      "are given, else default)")
    run.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE",
                     help="override a setting, e.g. --set ease.l2=200 or --set split.protocol=loo (repeatable)")
    run.add_argument("--overwrite", action="store_true", help="recompute jobs whose result already exists")
    run.add_argument("--jobs", type=int, help="run this many jobs in parallel processes (joblib; default: the "
                                                 "preset's `jobs`, at most the CPU count)")
    run.add_argument("--executor", choices=["local", "dask"], default="local",
                     help="local processes, or a Dask cluster (see --scheduler)")
    run.add_argument("--scheduler", help="Dask scheduler address, e.g. tcp://host:8786 (default $BENCH_DASK_SCHEDULER)")
    run.add_argument("--gpu-resource", action="store_true",
                     help="with --executor dask: jobs of GPU models ask the scheduler for a 'GPU' resource")
    run.add_argument("--download", action="store_true", help="download missing raw files first")
    run.add_argument("--no-table", action="store_true", help="do not regenerate results/LEADERBOARD.md")
    run.add_argument("--no-progress", action="store_true", help="hide progress bars")

    judge = sub.add_parser("judge", help="LLM judge (Figure 3): the judged model's pages against the best "
                                         "baseline's, for existing results of a preset")
    judge.add_argument("--preset", default="cpu", help="whose results to judge (default: cpu, the default run's)")
    judge.add_argument("--datasets", help="comma-separated dataset names (default: every dataset with results)")
    judge.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE",
                       help="judge setting, e.g. --set judge.llm=openai:gpt-4o-mini --set judge.users=200")
    judge.add_argument("--overwrite", action="store_true", help="judge again even when nothing changed")

    score = sub.add_parser("score", help="score anyone's recommendation lists with the evaluator")
    score.add_argument("--train", required=True, type=Path, help="CSV user_id,item_id[,rating] (history to mask)")
    score.add_argument("--test", required=True, type=Path, help="CSV user_id,item_id[,rating] (held-out items)")
    score.add_argument("--recs", required=True, type=Path, help="CSV user_id,item_id,rank")
    score.add_argument("--valid", type=Path, help="CSV user_id,item_id[,rating] (also masked)")
    score.add_argument("--items", type=Path, help="CSV item_id[,title][,brand][,categories] (categories with |)")
    score.add_argument("--k", type=_ints, default=(20, 40, 100), help="cutoffs (default 20,40,100)")
    score.add_argument("--similarity", choices=["category", "text"], default="category")
    score.add_argument("--encoder", help="sentence encoder for --similarity text (default: offline all-MiniLM-L6-v2)")
    score.add_argument("--out", type=Path, help="write the metrics JSON here")

    table = sub.add_parser("table", help="render results/LEADERBOARD.md and the paper's tables and figures "
                                         "(results/tables/) from result files")
    table.add_argument("--preset", help="only this preset's results")

    report = sub.add_parser("report", help="write results/REPORT.md: does this run reproduce the paper's claims?")
    report.add_argument("--preset", help="only this preset's results")

    data = sub.add_parser("data", help="download, register, prepare and split datasets")
    dsub = data.add_subparsers(dest="data_command", metavar="ACTION")
    dl = dsub.add_parser("download", help="download raw files of Amazon datasets")
    dl.add_argument("--datasets", required=True, help="comma-separated names or 'all'")
    dl.add_argument("--base-url", help="replace the release's base URL (a mirror or a local server)")
    dl.add_argument("--force", action="store_true", help="download again, replacing files already present")
    prep = dsub.add_parser("prepare", help="read raw files into canonical tables; with --source, register your own data")
    prep.add_argument("--dataset", required=True, help="a built-in name, or a new name for your data")
    prep.add_argument("--source", type=Path, help="your file or directory (registers it under --dataset)")
    prep.add_argument("--format", help="amazon2014 | amazon2018 | amazon2023 | generic (default: detect)")
    prep.add_argument("--min-core", type=int, default=0, help="apply a k-core filter when reading")
    prep.add_argument("--download", action="store_true", help="download missing raw files first")
    spl = dsub.add_parser("split", help="write the fixed split files of a dataset and print where they are")
    spl.add_argument("--dataset", required=True)
    spl.add_argument("--protocol", default="random", help="random | loo | temporal")
    spl.add_argument("--seed", type=int, default=0)
    spl.add_argument("--cold-start", action="store_true")
    spl.add_argument("--recbole", action="store_true", help="also export RecBole atomic files")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not args.command:
        parser.print_help()
        return 0
    restore_sigterm = _sigterm_as_interrupt()
    try:
        return COMMANDS[args.command](args)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished jobs are saved; rerun to continue", file=sys.stderr)
        return 130
    finally:
        restore_sigterm()


def _sigterm_as_interrupt():
    """`kill` (SIGTERM, also a batch scheduler's stop) ends a command as Ctrl-C does: finished
    jobs are kept, parallel workers are stopped, interrupted writes clean up after themselves.
    Returns the function that puts the previous handler back."""
    import signal
    import threading

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.signal(signal.SIGTERM, interrupt)
    return lambda: signal.signal(signal.SIGTERM, previous)


def _ws(args):
    from bench.paths import Workspace

    return Workspace.at(args.root)


def cmd_ls(args) -> int:
    from tabulate import tabulate

    from bench import config as cfg
    from bench.data.datasets import get_dataset, dataset_names
    from bench.models import MODELS

    ws = _ws(args)
    if args.model:
        cls = MODELS.get(args.model).Config
        print(tabulate(cfg.describe(cls), headers=["setting", "default", "help"], tablefmt="github"))
        return 0
    if args.what in ("models", "all"):
        _list_models(MODELS)
    if args.what in ("datasets", "all"):
        rows = []
        for n in dataset_names(ws):
            spec = get_dataset(n, ws)
            rows.append((n, spec.release, spec.category or "", spec.description))
        print(tabulate(rows, headers=["dataset", "release", "category", "description"], tablefmt="github"))
        print()
    if args.what in ("presets", "all"):
        rows = [(n, cfg.load_preset(n).description) for n in cfg.preset_names()]
        print(tabulate(rows, headers=["preset", "description"], tablefmt="github", maxcolwidths=[None, 90]))
    return 0


def _list_models(models) -> None:
    """One row per model; then, per measured machine (bench/configs/costs.yaml), seconds per job."""
    from tabulate import tabulate

    from bench.costs import load_profiles

    profiles = load_profiles()
    headers = ["model", "family", "needs GPU"]
    for profile in profiles:
        headers += [f"s: {dataset} ({profile.name})" for dataset in profile.datasets]
    rows = []
    for name in models:
        entry = models.entry(name)
        row = [name, entry.meta.get("family", ""), "yes" if entry.meta.get("gpu") else "no"]
        for profile in profiles:
            row += [_seconds(profile.model_seconds(name, dataset)) for dataset in profile.datasets]
        rows.append(row)
    print(tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True))
    for profile in profiles:
        sizes = "; ".join(f"{dataset}: {size}" for dataset, size in profile.datasets.items())
        print(f"\n{profile.name}: {profile.hardware}. Measured by {profile.run} ({sizes}). Seconds of one job "
              "alone (fit + predict; PageLLM variants count their shared stages in full); blank: not run there.")
    if not profiles:
        print("\nNo measured costs (bench/configs/costs.yaml is missing): see scripts/measure_costs.py.")
    print()


def _seconds(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.2f}" if value < 10 else f"{value:.0f}"


def cmd_run(args) -> int:
    from bench import config as cfg
    from bench import progress
    from bench.runner import missing_data, plan, run_grid, unavailable
    from bench.tables import write_leaderboard

    ws = _ws(args)
    progress.set_enabled(False if args.no_progress else None)
    preset_name = args.preset or (cfg.DEFAULT_PRESET if args.models is None and args.datasets is None else "default")
    preset = cfg.load_preset(preset_name)
    overrides = cfg.parse_overrides(args.overrides)
    judge_overrides = overrides.pop("judge", {})
    jobs = plan(preset, ws, models=args.models, datasets=args.datasets, seeds=args.seeds, overrides=overrides)
    if not jobs:
        raise BenchError(f"nothing to run: preset {preset.name} has no job for these --models/--datasets "
                         "(see `bench ls presets`)")
    print(f"preset {preset.name}: {len(jobs)} job(s); results under {ws.runs}")
    if args.jobs is not None and args.jobs < 1:
        raise BenchError("--jobs must be at least 1")
    n_jobs = args.jobs or max(1, min(preset.jobs, os.cpu_count() or 1))
    # Checked before the grid, reported once each: data to download, models that cannot run here.
    not_run = 0
    missing = {} if args.download else missing_data(jobs, ws)
    if missing:
        waiting = [j for j in jobs if j.dataset in missing]
        jobs = [j for j in jobs if j.dataset not in missing]
        not_run += len(waiting)
        print(_missing_summary(missing, ws, len(waiting)), file=sys.stderr)
    for reason, blocked in unavailable(jobs).items():
        keys = {j.key for j in blocked}
        jobs = [j for j in jobs if j.key not in keys]
        not_run += len(blocked)
        print(f"not run ({len(blocked)} job(s) of {', '.join(dict.fromkeys(j.model for j in blocked))}): {reason}",
              file=sys.stderr)
    scheduler = None
    if args.executor == "dask":
        scheduler = args.scheduler or os.environ.get("BENCH_DASK_SCHEDULER")
        if not scheduler:
            raise BenchError("--executor dask needs --scheduler tcp://HOST:PORT (or $BENCH_DASK_SCHEDULER)")
    outcomes = run_grid(jobs, preset, ws, overwrite=args.overwrite, download=args.download,
                        progress=not args.no_progress, n_jobs=n_jobs, scheduler=scheduler,
                        gpu_resource=args.gpu_resource)
    counts = {s: sum(o.status == s for o in outcomes) for s in ("ran", "skipped", "failed", "n/a", "held")}
    for o in outcomes:
        if o.status == "failed":
            print(f"FAILED {o.job.key}: {o.error}\n  traceback: {o.path}", file=sys.stderr)
        elif o.status == "n/a":
            print(f"not applicable: {o.job.key}: {o.error}")
        elif o.status == "held":
            print(f"held by another runner: {o.job.key} (rerun after it ends to collect its result)")
    judge_failed = 0
    if preset.judge or judge_overrides:
        from bench.judge import JudgeConfig

        config = cfg.build(JudgeConfig, {**preset.judge, **judge_overrides}, "judge")
        if any(j.model == config.model for j in jobs):  # the judged model is part of this run
            judge_failed = _judge(ws, preset, config, sorted({j.dataset for j in jobs}), args.overwrite)
    if not args.no_table:
        paths = write_leaderboard(ws)
        print(f"leaderboard: {paths[0]}")
    print(f"summary: {counts['ran']} ran, {counts['skipped']} skipped, {counts['failed']} failed"
          + (f", {counts['n/a']} not applicable" if counts["n/a"] else "")
          + (f", {counts['held']} held by another runner" if counts["held"] else "")
          + (f", {not_run} not run (see above)" if not_run else ""))
    return 1 if counts["failed"] or judge_failed or not_run else 0


def _missing_summary(missing: dict, ws, n_jobs: int) -> str:
    """One message for every dataset whose raw files are not there, with the command that fixes it."""
    names = ",".join(missing)
    return (f"missing data: the raw files of {len(missing)} dataset(s) are not under {ws.data / 'raw'} "
            f"({', '.join(missing)}), so their {n_jobs} job(s) are not run. Download them with "
            f"`bench data download --datasets {names}` (or add --download to this command), then rerun it.")


def _judge(ws, preset, config, datasets: list[str] | None, overwrite: bool) -> int:
    """Run the LLM judge over the preset's results; prints a summary, returns the failures."""
    from bench.judge import judge_results

    outcomes = judge_results(ws, preset, config, datasets=datasets, overwrite=overwrite)
    for o in outcomes:
        if o.status == "failed":
            print(f"JUDGE FAILED {o.key}: {o.error}", file=sys.stderr)
    counts = {s: sum(o.status == s for o in outcomes) for s in ("judged", "skipped", "failed")}
    if not outcomes:
        print(f"judge: no result of {config.model} under preset {preset.name} to judge")
    else:
        print(f"judge ({config.llm}, {config.model} vs {config.baseline}): {counts['judged']} judged, "
              f"{counts['skipped']} skipped, {counts['failed']} failed")
    return counts["failed"]


def cmd_judge(args) -> int:
    from bench import config as cfg
    from bench.data.datasets import resolve_datasets
    from bench.judge import JudgeConfig

    ws = _ws(args)
    preset = cfg.load_preset(args.preset)
    overrides = cfg.parse_overrides(args.overrides)
    extra = set(overrides) - {"judge"}
    if extra:
        raise BenchError(f"bench judge takes --set judge.KEY=VALUE only, not {sorted(extra)}")
    datasets = resolve_datasets(args.datasets, ws) if args.datasets else None
    config = cfg.build(JudgeConfig, {**preset.judge, **overrides.get("judge", {})}, "judge")
    return 1 if _judge(ws, preset, config, datasets, args.overwrite) else 0


def cmd_score(args) -> int:
    from bench.io import write_json_atomic
    from bench.score import format_table, score_files

    result = score_files(args.train, args.test, args.recs, valid=args.valid, items=args.items, ks=args.k,
                         similarity=args.similarity, encoder=args.encoder)
    print(format_table(result))
    if args.out:
        write_json_atomic(args.out, result)
        print(f"wrote {args.out}")
    return 0


def cmd_table(args) -> int:
    from bench.paper_tables import write_tables
    from bench.tables import write_leaderboard

    ws = _ws(args)
    _warn_missing_per_user(ws, args.preset)
    for path in write_leaderboard(ws, args.preset) + write_tables(ws, args.preset):
        print(f"wrote {path}")
    return 0


def _warn_missing_per_user(ws, preset: str | None, shown: int = 10) -> None:
    from bench.results import missing_per_user

    total, problems = missing_per_user(ws, preset)
    if not problems:
        return
    print(f"warning: {len(problems)} of {total} result(s) have no usable per-user file and are left out of "
          "the significance tests; rerun the same `bench run` to recompute them:", file=sys.stderr)
    for text in problems[:shown]:
        print(f"  {text}", file=sys.stderr)
    if len(problems) > shown:
        print(f"  ... and {len(problems) - shown} more", file=sys.stderr)


def cmd_report(args) -> int:
    from bench.paper_tables import write_report

    print(f"wrote {write_report(_ws(args), args.preset)}")
    return 0


def cmd_data(args) -> int:
    from bench.data import datasets as ds

    ws = _ws(args)
    if args.data_command == "download":
        from bench.data import download as dl

        for name in ds.resolve_datasets(args.datasets, ws):
            spec = ds.get_dataset(name, ws)
            if spec.embedded or spec.release not in dl.RELEASES:
                print(f"{name}: nothing to download ({'embedded' if spec.embedded else spec.release})")
                continue
            base = {"reviews": args.base_url, "meta": args.base_url} if args.base_url else None
            paths = dl.fetch_release_files(spec.release, spec.category, ws.raw(name), base_urls=base,
                                           force=args.force, n_reviews=spec.n_reviews)
            print(f"{name}: " + ", ".join(str(p) for p in paths))
        return 0
    if args.data_command == "prepare":
        if args.source:
            spec = ds.register_user_dataset(ws, args.dataset, args.source, args.format, args.min_core)
        else:
            spec = ds.get_dataset(args.dataset, ws)
        interactions, items, source_hash = ds.prepare(spec, ws, download=args.download)
        print(f"{spec.name}: {len(interactions)} interactions, {interactions['user'].nunique()} users, "
              f"{interactions['item'].nunique()} items, {len(items)} items with metadata -> {ws.processed(spec.name)}")
        return 0
    if args.data_command == "split":
        from bench.data.splits import SplitSpec

        split_spec = SplitSpec(protocol=args.protocol, seed=args.seed, cold_start=args.cold_start)
        split = ds.ensure_split(args.dataset, ws, split_spec)
        print(json.dumps({"directory": str(split.directory), "hash": split.hash, **split.stats}, indent=2))
        if args.recbole:
            from bench.data.recbole_export import export_recbole

            print(f"RecBole files: {export_recbole(split)}")
        return 0
    print("usage: bench data {download,prepare,split} ...", file=sys.stderr)
    return 2


COMMANDS = {"ls": cmd_ls, "run": cmd_run, "judge": cmd_judge, "score": cmd_score, "table": cmd_table,
            "report": cmd_report, "data": cmd_data}

if __name__ == "__main__":
    sys.exit(main())
