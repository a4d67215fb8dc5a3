"""Where things live on disk. Nothing is relative to an implicit working directory.

The workspace root is, in order: the `--root` option, the BENCH_HOME environment
variable, the current directory. Under it:

    data/raw/<dataset>/                 raw files (downloaded, embedded copies, generated)
    data/processed/<dataset>/           canonical tables: interactions.parquet, items.parquet
    data/splits/<dataset>/<split>/      THE CONTRACT: train/valid/test/negatives/items/reviews CSV + split.json
    data/views/<dataset>/<split>/...    model-specific views (RecBole atomic files, prompts)
    data/datasets.json                  datasets registered with `bench data prepare`
    results/runs/...                    one JSON per (preset, dataset, split, model, seed)
    results/tables/, results/LEADERBOARD.md
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from bench.errors import BenchError


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def at(cls, root: str | os.PathLike | None = None) -> "Workspace":
        chosen = root or os.environ.get("BENCH_HOME") or os.getcwd()
        return cls(Path(chosen).expanduser().resolve())

    @property
    def data(self) -> Path:
        return self.root / "data"

    def raw(self, dataset: str) -> Path:
        return self.data / "raw" / _one_folder(dataset)

    def processed(self, dataset: str) -> Path:
        return self.data / "processed" / _one_folder(dataset)

    def split(self, dataset: str, split_name: str) -> Path:
        return self.data / "splits" / _one_folder(dataset) / _one_folder(split_name)

    def view(self, dataset: str, split_name: str, kind: str) -> Path:
        return self.data / "views" / _one_folder(dataset) / _one_folder(split_name) / _one_folder(kind)

    @property
    def registered_datasets(self) -> Path:
        return self.data / "datasets.json"

    @property
    def results(self) -> Path:
        return self.root / "results"

    @property
    def runs(self) -> Path:
        return self.results / "runs"

    @property
    def tables(self) -> Path:
        return self.results / "tables"


def _one_folder(name: str) -> str:
    """`name` as one folder inside the workspace: a name from a file (data/datasets.json, a
    result) never reaches outside it, whatever checked it before."""
    if not name or name in (".", "..") or any(c in name for c in ("/", "\\", "\0")):
        raise BenchError(f"invalid name {name!r}: names of datasets and splits are one folder name "
                         "(no '/', '\\' or '..')")
    return name
