"""Time and peak memory of data preparation at growing sizes, up to Amazon 2018 Sports
(docs/performance.md, section 3).

The synthetic generator (`bench.data.synthetic`) writes the official 2018 files at fractions of
`SIZES["sports"]` (users and items scaled alike, so reviews scale too; the generated data are
cached in --cache and reused). Then each size goes through the two commands a user runs, each
in a fresh process:

    bench --root WS data prepare --dataset scale --source RAW   raw files -> canonical tables
    bench --root WS data split --dataset scale --recbole         split files + RecBole files

and each process's CPU seconds (user + system), wall seconds and peak resident memory
(ru_maxrss from wait4: the kernel's count, not a sample) are recorded; each size runs --rounds
times, keeping the least CPU and wall seconds (the least disturbed by other jobs on a shared
machine) and the largest peak memory. The tiny size runs the same
commands first: its cost is the fixed part (interpreter, imports), subtracted before costs are
divided by the number of reviews.

    PYTHONPATH=. python scripts/scale_data.py [--fractions 0.1 0.35 1] [--cache DIR] \\
        [--plot docs/img/scale-data.png] [--json out.json]

prints the markdown table of docs/performance.md; tests/benchmarks/test_bench_scale.py asserts on
the same measurements.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CACHE = Path(tempfile.gettempdir()) / "pagellm-bench-scale"
FRACTIONS = (0.1, 0.35, 1.0)
STEPS = {
    "prepare": ["data", "prepare", "--dataset", "scale", "--source"],  # + the raw folder
    "split": ["data", "split", "--dataset", "scale", "--recbole"],
}


def size_params(fraction: float | None) -> dict:
    """Generator arguments: the tiny size (fraction None) or a fraction of the Sports size."""
    sys.path.insert(0, str(ROOT))
    from bench.data.synthetic import SIZES

    if fraction is None:
        return {**SIZES["tiny"], "seed": 0}
    sports = SIZES["sports"]
    return {"n_users": round(sports["n_users"] * fraction), "n_items": round(sports["n_items"] * fraction),
            "mean_interactions": sports["mean_interactions"], "seed": 0}


def generated(params: dict, cache: Path) -> tuple[Path, dict]:
    """The raw folder of `params` under `cache`, generated unless it is there already;
    and the generator's counts."""
    from bench.data.synthetic import generate

    name = "u{n_users}-i{n_items}-m{mean_interactions}-s{seed}".format(**params)
    folder = cache / name
    record = folder / "generated.json"
    if record.exists():
        saved = json.loads(record.read_text())
        if saved.get("params") == params and (folder / "raw").is_dir():
            return folder / "raw", saved["info"]
    shutil.rmtree(folder, ignore_errors=True)
    start = time.perf_counter()
    info = generate(folder / "raw", **params)
    info = {k: v for k, v in info.items() if k.startswith("n_")} | {"generate_wall_s": time.perf_counter() - start}
    record.write_text(json.dumps({"params": params, "info": info}, indent=1))
    return folder / "raw", info


def run_step(args: list[str]) -> dict:
    """Run `python -m bench.cli ARGS` in a fresh process; its CPU, wall and peak memory."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "bench.cli", *args], cwd=ROOT, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage (Popen.wait would discard it)
        wall = time.perf_counter() - start
        proc.returncode = code = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        out, err = out.read(), err.read()
    if code != 0:
        raise RuntimeError(f"`bench {' '.join(args)}` failed ({code}): {err.strip()[-2000:]}")
    return {"cpu_s": usage.ru_utime + usage.ru_stime, "wall_s": wall, "peak_mb": usage.ru_maxrss / 1024,
            "stdout": out}


def measure(fraction: float | None, cache: Path, rounds: int = 3) -> dict:
    """Generate (or reuse) one size and run the pipeline on it `rounds` times, each in a fresh
    workspace; one row of the table: the least CPU and wall seconds of the rounds (the least
    disturbed by other jobs) and the largest peak memory."""
    params = size_params(fraction)
    raw, info = generated(params, cache)
    runs = []
    for _ in range(rounds):
        with tempfile.TemporaryDirectory(prefix="scale-ws-", dir=cache) as ws:
            prepare = run_step(["--root", ws, *STEPS["prepare"], str(raw)])
            split = run_step(["--root", ws, *STEPS["split"]])
            stats, _ = json.JSONDecoder().raw_decode(split["stdout"])  # then a line naming the RecBole files
        runs.append({"prepare": prepare, "split": split})
    row = {"fraction": fraction, **params, "n_reviews": info["n_interactions"], "rounds": rounds,
           "n_split_users": stats["n_users"], "n_split_items": stats["n_items"], "n_train": stats["n_train"]}
    for step in ("prepare", "split"):
        row[f"{step}_cpu_s"] = round(min(r[step]["cpu_s"] for r in runs), 3)
        row[f"{step}_wall_s"] = round(min(r[step]["wall_s"] for r in runs), 3)
        row[f"{step}_peak_mb"] = round(max(r[step]["peak_mb"] for r in runs), 1)
        row[f"{step}_cpu_s_rounds"] = [round(r[step]["cpu_s"], 2) for r in runs]
    row["cpu_s"] = round(row["prepare_cpu_s"] + row["split_cpu_s"], 3)
    row["wall_s"] = round(row["prepare_wall_s"] + row["split_wall_s"], 3)
    row["peak_mb"] = max(row["prepare_peak_mb"], row["split_peak_mb"])
    return row


def measure_all(fractions=FRACTIONS, cache: Path = DEFAULT_CACHE, rounds: int = 3) -> list[dict]:
    """The baseline (tiny) row, then one row per fraction, each with its cost per review above
    the baseline (`cpu_us_per_review`, `bytes_per_review`)."""
    cache.mkdir(parents=True, exist_ok=True)
    rows = [measure(None, cache, rounds)] + [measure(f, cache, rounds) for f in fractions]
    base = rows[0]
    for row in rows[1:]:
        n = row["n_reviews"]
        row["cpu_us_per_review"] = round(1e6 * (row["cpu_s"] - base["cpu_s"]) / n, 2)
        row["bytes_per_review"] = round(2**20 * (row["peak_mb"] - base["peak_mb"]) / n, 1)
    return rows


def table(rows: list[dict]) -> str:
    head = ("| reviews | users x items | prepare: CPU s / wall s / peak MB | split + RecBole: CPU s / wall s / "
            "peak MB | total CPU s | CPU µs per review | peak bytes per review |")
    lines = [head, "|" + "---|" * 7]
    for row in rows:
        per = (f"{row['cpu_us_per_review']:.1f} | {row['bytes_per_review']:.0f}" if "cpu_us_per_review" in row
               else "(baseline) | (baseline)")
        lines.append(
            f"| {row['n_reviews']:,} | {row['n_users']:,} x {row['n_items']:,} | "
            f"{row['prepare_cpu_s']:.1f} / {row['prepare_wall_s']:.1f} / {row['prepare_peak_mb']:,.0f} | "
            f"{row['split_cpu_s']:.1f} / {row['split_wall_s']:.1f} / {row['split_peak_mb']:,.0f} | "
            f"{row['cpu_s']:.1f} | {per} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    """CPU seconds and peak memory against reviews, with the linear growth from the smallest size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base, sized = rows[0], rows[1:]
    n = [r["n_reviews"] / 1e6 for r in sized]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label, floor in ((axes[0], "cpu_s", "CPU seconds", base["cpu_s"]),
                                  (axes[1], "peak_mb", "peak resident memory, MB", base["peak_mb"])):
        if key == "cpu_s":
            for step, style in (("prepare", "s--"), ("split", "^--")):
                ax.plot(n, [r[f"{step}_cpu_s"] for r in sized], style, alpha=0.6,
                        label="split + RecBole export" if step == "split" else step)
            ax.plot(n, [r[key] for r in sized], "o-", label="total")
        else:
            for step, style in (("prepare", "s--"), ("split", "^--")):
                ax.plot(n, [r[f"{step}_peak_mb"] for r in sized], style, alpha=0.6,
                        label="split + RecBole export" if step == "split" else step)
        first = sized[0]
        ref = [floor + (first[key] - floor) * r["n_reviews"] / first["n_reviews"] for r in sized]
        ax.plot(n, ref, ":", color="grey", label="linear from the smallest size")
        ax.set_xlabel("reviews (millions)")
        ax.set_ylabel(label)
        ax.set_xlim(left=0)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_title("prepare + split + RecBole export: CPU")
    axes[1].set_title("peak memory (the larger of the two processes)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fractions", type=float, nargs="+", default=list(FRACTIONS),
                        help="sizes as fractions of the Sports size (default 0.1 0.35 1)")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help=f"generated data (default {DEFAULT_CACHE})")
    parser.add_argument("--rounds", type=int, default=3, help="runs per size: least CPU, largest memory (default 3)")
    parser.add_argument("--plot", type=Path, help="write the figure here (e.g. docs/img/scale-data.png)")
    parser.add_argument("--json", type=Path, help="write the measurements here")
    args = parser.parse_args()
    rows = measure_all(tuple(args.fractions), args.cache, args.rounds)
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    if args.plot:
        plot(rows, args.plot)
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
