"""Reading result files: the only input of tables and reports."""

from __future__ import annotations

import gzip
import json
import re
import zlib
from pathlib import Path
from typing import Iterator

import pandas as pd

from bench.errors import DataError
from bench.io import record_problems
from bench.paths import Workspace

_RESULT_NAME = re.compile(r"seed\d+\.json")
REQUIRED = ("schema", "preset", "dataset", "model", "seed", "split", "metrics", "config_hash")
SIDE_FILES = ("per_user", "recs")  # result keys naming a file beside the JSON


def load_result(path: Path) -> dict:
    """One result JSON, checked for the fields every table relies on."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"unreadable result file ({exc})", path, fix="delete it and rerun `bench run`") from None
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise DataError(f"result file lacks {', '.join(missing)}", path, fix="delete it and rerun `bench run`")
    return data


def side_files(path: Path, result: dict) -> dict[str, Path]:
    """The files a result names beside its JSON: {"per_user": ..., "recs": ...} (those it names)."""
    return {key: Path(path).parent / result[key] for key in SIDE_FILES if isinstance(result.get(key), str)}


def damaged_side_files(path: Path, result: dict, keys: tuple[str, ...] = SIDE_FILES) -> list[str]:
    """What is wrong with the side files (`keys`) of the result at `path`: one text per damaged file.

    Results record each side file's size and sha256 under "files" (written by the runner); older
    results, without that record, have each file read through once as gzip."""
    files = {key: p for key, p in side_files(path, result).items() if key in keys}
    records = result.get("files") if isinstance(result.get("files"), dict) else {}
    problems = record_problems(Path(path).parent, {p.name: records[p.name] for p in files.values()
                                                   if p.name in records})
    for file in (p for p in files.values() if p.name not in records):
        problems.extend(_unreadable_gzip(file))
    return problems


def _unreadable_gzip(path: Path) -> list[str]:
    if not path.is_file():
        return [f"{path} is missing"]
    try:
        with gzip.open(path, "rb") as fh:
            while fh.read(1 << 20):
                pass
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
        return [f"{path} is not a complete gzip file ({exc})"]
    return []


def iter_results(ws: Workspace, preset: str | None = None) -> Iterator[tuple[Path, dict]]:
    base = ws.runs / preset if preset else ws.runs
    for path in sorted(base.rglob("seed*.json")):
        if _RESULT_NAME.fullmatch(path.name):  # not the side files (seed0.judge.json)
            yield path, load_result(path)


def missing_per_user(ws: Workspace, preset: str | None = None) -> tuple[int, list[str]]:
    """(number of results, one text per result whose per-user file is missing or damaged): those
    results have no part in the tables' significance tests."""
    total, problems = 0, []
    for path, result in iter_results(ws, preset):
        total += 1
        if not isinstance(result.get("per_user"), str):
            problems.append(f"{path} names no per-user file")
        else:
            problems.extend(damaged_side_files(path, result, ("per_user",)))
    return total, problems


def results_frame(ws: Workspace, preset: str | None = None) -> pd.DataFrame:
    """One row per result file: identifiers, split, timing and every metric as a column."""
    rows = []
    for path, r in iter_results(ws, preset):
        row = {"preset": r["preset"], "dataset": r["dataset"], "split": r["split"].get("name"),
               "protocol": r["split"].get("protocol"), "model": r["model"], "seed": r["seed"],
               "n_users": r.get("n_users"), "path": str(path)}
        row.update({k: v for k, v in r["metrics"].items()})
        row.update({f"time_{k}": v for k, v in (r.get("timing") or {}).items()})
        rows.append(row)
    return pd.DataFrame(rows)
