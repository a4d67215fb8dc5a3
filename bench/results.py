"""Reading result files: the only input of tables and reports."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterator

import pandas as pd

from bench.errors import DataError
from bench.paths import Workspace

_RESULT_NAME = re.compile(r"seed\d+\.json")
REQUIRED = ("schema", "preset", "dataset", "model", "seed", "split", "metrics", "config_hash")


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


def iter_results(ws: Workspace, preset: str | None = None) -> Iterator[tuple[Path, dict]]:
    base = ws.runs / preset if preset else ws.runs
    for path in sorted(base.rglob("seed*.json")):
        if _RESULT_NAME.fullmatch(path.name):  # not the side files (seed0.judge.json)
            yield path, load_result(path)


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
