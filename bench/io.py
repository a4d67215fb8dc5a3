"""Small file helpers shared by every stage: gzip-transparent reading, atomic writes, hashing."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import math
import os
import tempfile
import zlib
from pathlib import Path
from typing import IO, Iterator

from bench.errors import DataError

# What reading a cut-off or corrupt gzip file raises, at any point of the read.
_DAMAGED_GZIP = (EOFError, gzip.BadGzipFile, zlib.error)


def is_gzip(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def open_text(path: str | os.PathLike) -> IO[str]:
    """Open a plain or gzip-compressed UTF-8 text file (gzip detected by magic bytes, not the suffix).

    Decoding is strict: a byte sequence that is not UTF-8 raises instead of being replaced, since
    two ids differing only there would otherwise merge. Read inside `reading(path)` to turn that,
    and a damaged gzip stream, into one DataError naming the file.
    """
    path = Path(path)
    if is_gzip(path):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, "r", encoding="utf-8", newline="")


@contextlib.contextmanager
def reading(path: str | os.PathLike) -> Iterator[None]:
    """Turn a damaged gzip stream or non-UTF-8 bytes met while reading `path` into a DataError."""
    try:
        yield
    except _DAMAGED_GZIP as exc:
        raise damaged_gzip_error(path, exc) from None
    except UnicodeDecodeError as exc:
        raise DataError(f"not UTF-8 text ({exc.reason}); ids are read exactly, never with replaced characters",
                        path, first_non_utf8_line(path), fix="save the file as UTF-8") from None


def damaged_gzip_error(path: str | os.PathLike, exc: BaseException) -> DataError:
    """One message for a truncated or corrupt .gz: the file and how to get a good copy."""
    path = Path(path)
    fix = "replace it with a complete copy, or download it again if it was downloaded"
    if path.parent.parent.name == "raw":  # a dataset's raw file: <root>/data/raw/<dataset>/ (Workspace.raw)
        fix = f"re-download it with `bench data download --datasets {path.parent.name} --force`, or {fix}"
    return DataError(f"truncated or corrupt gzip file ({type(exc).__name__}: {exc})", path, fix=fix)


def first_non_utf8_line(path: str | os.PathLike) -> int | None:
    """The 1-based number of the first line that is not valid UTF-8 (None when every line is)."""
    path = Path(path)
    opener = gzip.open if is_gzip(path) else open
    try:
        with opener(path, "rb") as fh:
            for lineno, line in enumerate(fh, start=1):
                try:
                    line.decode("utf-8")
                except UnicodeDecodeError:
                    return lineno
    except _DAMAGED_GZIP:
        return None
    return None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it over `path` atomically.

    On any exception the temporary file is removed and `path` is left untouched, so a
    killed or failing writer never leaves a half-written file under the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike, obj: object) -> None:
    """Strict JSON: a non-finite number (NaN, inf) is written as null, never as `NaN`/`Infinity`."""
    text = json.dumps(finite_json(obj), indent=2, sort_keys=False, default=_json_default, allow_nan=False)
    write_text_atomic(path, text + "\n")


def finite_json(obj: object) -> object:
    """`obj` with every non-finite float (also numpy's) replaced by None, recursively.

    JSON has no NaN or infinity; null is what readers of result files take as "not computable"."""
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    if hasattr(obj, "item") and hasattr(obj, "dtype") and getattr(obj, "ndim", 1) == 0:
        obj = obj.item()  # a numpy scalar
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _json_default(obj: object) -> object:
    # numpy scalars and paths show up in configs and metrics; keep JSON writing total.
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def file_record(path: str | os.PathLike) -> dict:
    """{"bytes", "sha256"} of one file: what a result or a stage records of the files it wrote."""
    return {"bytes": Path(path).stat().st_size, "sha256": sha256_file(path)}


def tree_record(directory: str | os.PathLike, exclude: tuple[str, ...] = ()) -> dict[str, dict]:
    """{relative POSIX path: file_record} of every file under `directory` (names in `exclude` left out)."""
    directory = Path(directory)
    return {p.relative_to(directory).as_posix(): file_record(p) for p in sorted(directory.rglob("*"))
            if p.is_file() and p.relative_to(directory).as_posix() not in exclude}


def record_problems(base: str | os.PathLike, records: dict[str, dict]) -> list[str]:
    """How the files under `base` differ from `records` (see tree_record): one text per damaged file,
    e.g. "seed0.recs.csv.gz has 120 bytes, 5012 recorded"; empty when every file matches."""
    problems = []
    for name, record in records.items():
        path = Path(base) / name
        if not path.is_file():
            problems.append(f"{path} is missing")
        elif "bytes" in record and path.stat().st_size != record["bytes"]:
            problems.append(f"{path} has {path.stat().st_size} bytes, {record['bytes']} recorded")
        elif "sha256" in record and sha256_file(path) != record["sha256"]:
            problems.append(f"{path} differs from its recorded sha256")
    return problems


def hash_json(obj: object, length: int = 16) -> str:
    """Stable short hash of a JSON-able object (sorted keys)."""
    text = json.dumps(obj, sort_keys=True, default=_json_default, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]
