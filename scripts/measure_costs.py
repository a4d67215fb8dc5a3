"""Write the measured cost of every model of a finished run into bench/configs/costs.yaml.

`bench ls models` shows these seconds and the grid's ETA weighs its jobs by them (bench.costs).
Run a preset on the machine to describe, then read its result files:

    bench run --preset cpu
    PYTHONPATH=. python scripts/measure_costs.py --results results --preset cpu --profile cpu-2core \\
        --hardware "2 cores of an Intel Xeon VM (x86_64), 23 GB, no GPU; torch 2.13 CPU" \\
        --run "bench run (cpu preset, jobs: 2) at 5f0f273, 2026-11-30"

A profile of the same name is replaced; the others are kept. The first profile in the file is
the one `bench ls models` lists first and the ETA reads.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.costs import COSTS_FILE, Profile, measure, write_profile


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path("results"), help="the run's results folder")
    parser.add_argument("--preset", required=True, help="the preset that was run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", required=True, help="a short name for the machine, e.g. cpu-2core, h100")
    parser.add_argument("--hardware", required=True, help="the machine in words: CPU/GPU model, cores, memory")
    parser.add_argument("--run", required=True, help="the command, commit and date that produced the results")
    parser.add_argument("--out", type=Path, default=COSTS_FILE)
    args = parser.parse_args(argv)

    seconds, datasets = measure(args.results, args.preset, seed=args.seed)
    write_profile(Profile(args.profile, args.hardware, args.run, datasets, seconds), args.out)
    print(f"{args.out}: profile {args.profile!r}, {len(seconds)} models on {', '.join(datasets)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
