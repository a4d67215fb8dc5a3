"""The datasets registry and the raw -> canonical -> split stages.

One line per dataset. The paper's seven Amazon categories default to the 2018 release
(two of them, Luxury_Beauty and Industrial_and_Scientific, exist only there); the 2014
release is offered under its own name where the category exists in it. Four datasets ship
inside the package so that a fresh offline machine has real data: ``beauty-2018-sample``
(the real 2018 All_Beauty 5-core file, no metadata), ``am-instruments-2014`` (the complete
official 2014 Musical_Instruments 5-core file ``reviews_Musical_Instruments_5.json.gz``:
10,261 reviews with text, 1,429 users, 900 items; no metadata, which the 2014 release
ships as a separate file) and ``synthetic`` (generated in the official 2018 format, with
metadata), plus ``gift-cards-2018`` (the complete official 2018 Gift_Cards 5-core file and
its metadata file: 2,972 reviews, 458 users, 148 items; real titles, brands and categories,
some of them HTML fragments).

A spec whose ``files`` is set reads those files from ``bench/data/embedded`` whatever its
release (the release then only names the reader format), so it never needs a download.
"""

from __future__ import annotations

import difflib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bench.errors import BenchError, DataError, UnknownNameError
from bench.io import hash_json, sha256_file, write_json_atomic, atomic_path
from bench.locks import locked
from bench.paths import Workspace
from bench.registry import Registry

logger = logging.getLogger(__name__)

EMBEDDED_DIR = Path(__file__).resolve().parent / "embedded"
_USER_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    release: str  # amazon2018 | amazon2014 | amazon2023 | embedded | synthetic | user
    category: str | None = None
    description: str = ""
    n_reviews: int | None = None  # published 5-core review count, where known
    files: tuple[str, ...] = ()  # file names inside bench/data/embedded (any release): no download
    size: str | None = None  # synthetic: a key of bench.data.synthetic.SIZES
    source: str | None = None  # user datasets: the path given to `bench data prepare`
    format: str | None = None  # reader format; None = the release's own / auto-detect
    min_core: int = 0
    has_metadata: bool = True

    @property
    def embedded(self) -> bool:
        """True when the raw files ship inside the package (nothing to download)."""
        return bool(self.files)

    @property
    def reader_format(self) -> str | None:
        if self.format:
            return self.format
        if self.release in ("amazon2018", "amazon2014", "amazon2023"):
            return self.release
        if self.release in ("embedded", "synthetic"):
            return "amazon2018"
        return None


DATASETS: Registry[DatasetSpec] = Registry("dataset")


def _amazon(name: str, release: str, category: str, n_reviews: int | None, what: str) -> None:
    DATASETS.register(name, DatasetSpec(name, release, category, f"Amazon {release[-4:]} {what} 5-core + metadata",
                                        n_reviews=n_reviews))


_amazon("am-instruments", "amazon2018", "Musical_Instruments", 231_392, "Musical Instruments")
_amazon("am-sports", "amazon2018", "Sports_and_Outdoors", 2_839_940, "Sports and Outdoors")
_amazon("am-luxury", "amazon2018", "Luxury_Beauty", 34_278, "Luxury Beauty")
_amazon("am-beauty", "amazon2018", "All_Beauty", 5_269, "All Beauty")
_amazon("am-food", "amazon2018", "Grocery_and_Gourmet_Food", 1_143_860, "Grocery and Gourmet Food")
_amazon("am-scientific", "amazon2018", "Industrial_and_Scientific", 77_071, "Industrial and Scientific")
_amazon("am-toys", "amazon2018", "Toys_and_Games", 1_828_971, "Toys and Games")
DATASETS.register("am-instruments-2014", DatasetSpec(
    "am-instruments-2014", "amazon2014", "Musical_Instruments",
    "embedded: the complete official Amazon 2014 Musical Instruments 5-core reviews with text (no metadata)",
    n_reviews=10_261, files=("reviews_Musical_Instruments_5.json.gz",), has_metadata=False))
_amazon("am-sports-2014", "amazon2014", "Sports_and_Outdoors", None, "Sports and Outdoors")
_amazon("am-beauty-2014", "amazon2014", "Beauty", None, "Beauty")
_amazon("am-food-2014", "amazon2014", "Grocery_and_Gourmet_Food", None, "Grocery and Gourmet Food")
_amazon("am-toys-2014", "amazon2014", "Toys_and_Games", None, "Toys and Games")
DATASETS.register("beauty-2018-sample", DatasetSpec(
    "beauty-2018-sample", "embedded", "All_Beauty", "embedded: the real 2018 All_Beauty 5-core reviews (no metadata)",
    n_reviews=5_269, files=("All_Beauty_5.json.gz",), has_metadata=False))
DATASETS.register("gift-cards-2018", DatasetSpec(
    "gift-cards-2018", "amazon2018", "Gift_Cards",
    "embedded: the complete official Amazon 2018 Gift_Cards 5-core reviews + metadata (titles, brands, categories)",
    n_reviews=2_972, files=("Gift_Cards_5.json.gz", "meta_Gift_Cards.json.gz")))
DATASETS.register("synthetic", DatasetSpec(
    "synthetic", "synthetic", "Synthetic", "embedded: generated 2018-format reviews + metadata (size small)",
    size="small"))
DATASETS.register("synthetic-tiny", DatasetSpec(
    "synthetic-tiny", "synthetic", "Synthetic", "embedded: generated 2018-format reviews + metadata (size tiny)",
    size="tiny"))
DATASETS.register("synthetic-medium", DatasetSpec(
    "synthetic-medium", "synthetic", "Synthetic", "embedded: generated 2018-format reviews + metadata (size medium)",
    size="medium"))
DATASETS.register("synthetic-sports", DatasetSpec(
    "synthetic-sports", "synthetic", "Synthetic",
    "embedded: generated 2018-format reviews + metadata at the size of Amazon 2018 Sports "
    "(2.84M reviews, 332k users, 105k items; minutes to generate, for scale tests)", size="sports"))

EMBEDDED = ["am-instruments-2014", "synthetic"]  # what the default run uses
READER_VERSION = 2  # bump when a reader changes what it produces: cached tables are rebuilt
# 2: HTML markup stripped from every text field, titles that were only markup flagged


# --- user-registered datasets -------------------------------------------------------------

_NAME_RULE = "lower-case letters, digits, '-' or '_' (no '/', '..' or spaces), at most 64 characters"


def check_user_name(name: str) -> str:
    if not _USER_NAME.match(name or ""):
        raise BenchError(f"invalid dataset name {name!r}: use {_NAME_RULE}")
    return name


def user_datasets(ws: Workspace) -> dict[str, DatasetSpec]:
    return {name: DatasetSpec(name, "user", description=d.get("description", ""), source=d["source"],
                              format=d.get("format"), min_core=d.get("min_core", 0))
            for name, d in _read_registered(ws.registered_datasets).items()}


def _read_registered(path: Path) -> dict[str, dict]:
    """The entries of data/datasets.json. Every name is checked again here, where it is read:
    the file may have been edited by hand, and names become folders of the workspace."""
    if not path.exists():
        return {}
    fix = "correct or remove that entry, or delete the file and run `bench data prepare --dataset NAME --source PATH`"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise DataError(f"not valid JSON ({exc})", path, fix=fix) from None
    if not isinstance(raw, dict):
        raise DataError("expected a mapping of dataset name -> settings", path, fix=fix)
    for name, entry in raw.items():
        if not _USER_NAME.match(name):
            raise DataError(f"{name!r} is not a valid dataset name (use {_NAME_RULE})", path, fix=fix)
        if not isinstance(entry, dict) or not isinstance(entry.get("source"), str):
            raise DataError(f"dataset {name!r} has no 'source' path", path, fix=fix)
    return raw


def register_user_dataset(ws: Workspace, name: str, source: Path, fmt: str | None, min_core: int = 0) -> DatasetSpec:
    check_user_name(name)
    if name in DATASETS:
        raise BenchError(f"{name!r} is a built-in dataset; choose another name for your data")
    source = Path(source).expanduser().resolve()
    if not source.exists():
        raise DataError("no such file or directory", source, fix="give --source the path of your data")
    entry = {"source": str(source), "format": fmt, "min_core": min_core, "description": f"user data from {source}"}
    spec = DatasetSpec(name, "user", description=entry["description"], source=str(source), format=fmt,
                       min_core=min_core)
    prepare(spec, ws, force=True)  # read it now: bad data fails here, before registration
    # Read, change and write the file under a lock: concurrent registrations all land.
    with locked(ws.registered_datasets.with_name(".datasets.json.lock")):
        entries = _read_registered(ws.registered_datasets)
        entries[name] = entry
        write_json_atomic(ws.registered_datasets, entries)
    return spec


def dataset_names(ws: Workspace | None = None) -> list[str]:
    return DATASETS.names() + (list(user_datasets(ws)) if ws else [])


def get_dataset(name: str, ws: Workspace | None = None) -> DatasetSpec:
    if name in DATASETS:
        return DATASETS.get(name)
    users = user_datasets(ws) if ws else {}
    if name in users:
        return users[name]
    if "/" in name or ".." in name:
        raise UnknownNameError(f"invalid dataset name {name!r}: names never contain '/' or '..'; "
                               "register your files with `bench data prepare --dataset NAME --source PATH`")
    close = difflib.get_close_matches(name, dataset_names(ws), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise UnknownNameError(f"unknown dataset {name!r}.{hint} Run `bench ls datasets` to see every dataset; "
                           "your own data: `bench data prepare --dataset NAME --source PATH`.")


def resolve_datasets(spec: str | list[str] | None, ws: Workspace, default: list[str] | None = None) -> list[str]:
    names = dataset_names(ws)
    parts = (spec.split(",") if isinstance(spec, str) else list(spec or [])) or (default or EMBEDDED)
    out: list[str] = []
    for part in (p.strip() for p in parts):
        if not part:
            continue
        for name in (names if part == "all" else [part]):
            get_dataset(name, ws)
            if name not in out:
                out.append(name)
    return out


# --- stages ---------------------------------------------------------------------------------

def raw_files(spec: DatasetSpec, ws: Workspace, *, download: bool = False) -> list[Path]:
    """The raw files of a dataset, generating or downloading them when allowed."""
    if spec.files:  # shipped inside the package, whatever the release
        return [EMBEDDED_DIR / f for f in spec.files]
    if spec.release == "user":
        return [Path(spec.source)]
    raw_dir = ws.raw(spec.name)
    if spec.release == "synthetic":
        from bench.data import synthetic

        marker = raw_dir / "generated.json"
        params = {"size": spec.size, **synthetic.SIZES[spec.size], "seed": 0}
        if not marker.exists() or json.loads(marker.read_text()) != params:
            logger.info("generating %s into %s", spec.name, raw_dir)
            synthetic.generate(raw_dir, seed=0, **synthetic.SIZES[spec.size])
            write_json_atomic(marker, params)
        return sorted(p for p in raw_dir.glob("*.json.gz"))
    from bench.data import download as dl

    expected = {part: raw_dir / url.rsplit("/", 1)[-1] for part, url in dl.file_urls(spec.release, spec.category).items()}
    missing = [p for p in expected.values() if not p.exists()]
    if missing and download:
        dl.fetch_release_files(spec.release, spec.category, raw_dir, n_reviews=spec.n_reviews)
        missing = [p for p in expected.values() if not p.exists()]
    if missing and not expected["reviews"].exists():
        raise DataError(f"raw files of {spec.name} are missing", missing[0],
                        fix=f"run `bench data download --datasets {spec.name}`, or place "
                            f"{', '.join(p.name for p in missing)} in {raw_dir} by hand")
    present = [p for p in expected.values() if p.exists()]
    dl.verify_recorded(present)  # a file changed since its download is an error, not silently read
    return present


def missing_raw_files(spec: DatasetSpec, ws: Workspace) -> list[Path]:
    """The raw files of a release dataset that `raw_files` would need to download (none for
    embedded, synthetic and user data). Empty when the reviews file is there: a missing
    metadata file only leaves the items without titles, as in `raw_files`."""
    if spec.files or spec.release not in ("amazon2018", "amazon2014", "amazon2023"):
        return []
    from bench.data import download as dl

    raw_dir = ws.raw(spec.name)
    expected = {part: raw_dir / url.rsplit("/", 1)[-1] for part, url in dl.file_urls(spec.release, spec.category).items()}
    if expected["reviews"].exists():
        return []
    return [p for p in expected.values() if not p.exists()]


def source_fingerprint(spec: DatasetSpec, ws: Workspace, *, download: bool = False) -> tuple[list[Path], str]:
    """The raw files of `spec` and a hash of their contents and of how they are read."""
    files = raw_files(spec, ws, download=download)
    fingerprint = {"files": [_file_fingerprint(p) for p in files], "format": spec.reader_format,
                   "min_core": spec.min_core, "reader_version": READER_VERSION}
    return files, hash_json(fingerprint)


def prepare(spec: DatasetSpec, ws: Workspace, *, download: bool = False, force: bool = False) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """Raw files -> canonical tables, cached as parquet beside a manifest with the source hash."""
    from bench.data.readers import read_source

    files, source_hash = source_fingerprint(spec, ws, download=download)
    out = ws.processed(spec.name)
    manifest_path = out / "manifest.json"
    if not force and manifest_path.exists():
        try:
            if json.loads(manifest_path.read_text()).get("source_hash") == source_hash:
                return (pd.read_parquet(out / "interactions.parquet"), pd.read_parquet(out / "items.parquet"),
                        source_hash)
        except (OSError, ValueError):
            logger.warning("cached tables of %s unreadable; rebuilding", spec.name)
    interactions, items = read_source(files if len(files) > 1 else files[0], spec.reader_format, min_core=spec.min_core)
    out.mkdir(parents=True, exist_ok=True)
    for name, frame in (("interactions", interactions), ("items", items)):
        with atomic_path(out / f"{name}.parquet") as tmp:
            frame.to_parquet(tmp, index=False)
    write_json_atomic(manifest_path, {"dataset": spec.name, "source_hash": source_hash,
                                      "files": [str(p) for p in files], "format": spec.reader_format,
                                      "n_interactions": len(interactions), "n_items_meta": len(items)})
    return interactions, items, source_hash


def _file_fingerprint(path: Path) -> dict:
    path = Path(path)
    if path.is_dir():
        return {"name": path.name, "files": [_file_fingerprint(p) for p in sorted(path.iterdir()) if p.is_file()]}
    return {"name": path.name, "sha256": sha256_file(path)}


def ensure_split(name: str, ws: Workspace, split_spec, *, download: bool = False):
    """Return the fixed split of `name`, building it (and the canonical tables) only when needed.

    A split on disk is reused when its files match its recorded hash, it was made with the
    same spec, and the raw files it came from are unchanged.
    """
    from dataclasses import asdict

    from bench.data.splits import load_split, make_split, split_is_current, write_split

    spec = get_dataset(name, ws)
    directory = ws.split(name, split_spec.name)
    _, source_hash = source_fingerprint(spec, ws, download=download)
    if split_is_current(directory):
        meta = json.loads((directory / "split.json").read_text())
        if meta.get("source_hash") == source_hash and meta.get("spec") == asdict(split_spec):
            return load_split(directory)
    interactions, items, source_hash = prepare(spec, ws, download=download)
    frames = make_split(interactions, items, split_spec, source=name)
    write_split(frames, directory, split_spec, name, source_hash)
    return load_split(directory)
