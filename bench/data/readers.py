"""Readers: raw Amazon files (2014 / 2018 / 2023 releases) or a user's CSV -> canonical tables.

Every reader ends in `canonical.make_interactions` / `canonical.make_items`, so the rest of
the pipeline sees one shape whatever the source (see `bench.data.canonical`). Files may be
plain or gzip-compressed: gzip is detected by its magic bytes (`bench.io.open_text`), never
by the suffix.

Supported sources (`FORMATS`):

amazon2014
    reviews  ``reviews_<Cat>_5.json.gz``  JSON lines: reviewerID, asin, overall, unixReviewTime,
             reviewText, summary, helpful, ...
    ratings  ``ratings_<Cat>.csv``        no header: user,item,rating,timestamp
    meta     ``meta_<Cat>.json.gz``       one Python dict literal per line (ast.literal_eval):
             asin, title, brand, categories (list of lists), description
amazon2018
    reviews  ``<Cat>_5.json.gz``          JSON lines, as 2014 (+ verified, style, vote, image)
    ratings  ``<Cat>.csv``                no header: item,user,rating,timestamp (item FIRST)
    meta     ``meta_<Cat>.json.gz``       JSON lines: asin, title, brand, category (list),
             description (list of strings)
amazon2023
    reviews  ``<Cat>.jsonl.gz``           JSON lines: user_id, parent_asin (else asin), rating,
             timestamp (milliseconds), text, title
    ratings  5-core CSV with header user_id,parent_asin,rating,timestamp (milliseconds)
    meta     ``meta_<Cat>.jsonl.gz``      JSON lines: parent_asin, title, categories (list),
             details (dict; brand = details["Brand"], else store), description (list)
generic
    interactions CSV or Parquet with header user_id,item_id[,rating][,timestamp]
             (no rating column: every row is a positive, rating NaN)
    items    CSV or Parquet with header item_id[,title][,brand][,categories][,description],
             categories separated by "|"

Reviews files also yield two optional text columns, ``review_text`` and ``summary``, kept
beside the canonical columns because PageLLM's prompts quote review text (through the
processed interactions.parquet into the split's reviews.csv, train and negatives rows only).

Every malformed line stops the read with one `DataError` naming the file, the 1-based line
number and the fix; nothing is skipped silently. So does a line that is not UTF-8 (never
replaced: two ids differing there would merge), a rating outside 0-5 or a timestamp outside
1970-2100 in unix seconds (`canonical.RATING_RANGE`, `TIMESTAMP_RANGE`; the same rule for
generic CSV), and a truncated or corrupt gzip file (the message says how to get it again).
"""

from __future__ import annotations

import ast
import csv
import json
import logging
import math
import re
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import numpy as np
import pandas as pd

from bench.data.canonical import (
    RATING_RANGE,
    RATING_RULE,
    TIMESTAMP_RANGE,
    TIMESTAMP_RULE,
    dedupe_latest,
    in_range,
    k_core,
    make_interactions,
    make_items,
    out_of_range,
)
from bench.errors import DataError
from bench.io import open_text, reading

log = logging.getLogger(__name__)

FORMATS = ("amazon2014", "amazon2018", "amazon2023", "generic")
TEXT_COLUMNS = ("review_text", "summary")

# Roles a file can play. "reviews" and "ratings" both give interactions; "items" gives metadata.
REVIEWS, RATINGS, ITEMS = "reviews", "ratings", "items"

_SUFFIXES = (".json", ".jsonl", ".csv", ".parquet", ".pq")
_FORMAT_FIX = f"pass --format with one of {', '.join(FORMATS)}"
# ASINs are 10 characters: "B0" + 8 alphanumerics, or an ISBN-10 for books.
_ASIN = re.compile(r"^(?:B[0-9A-Z]{9}|[0-9]{9}[0-9X])$")
_PANDAS_LINE = re.compile(r"line (\d+)")
_PANDAS_FIELDS = re.compile(r"Expected (\d+) fields in line (\d+), saw (\d+)")
# Keys only the 2018 review / meta files carry (2014 review lines carry "helpful" instead).
_KEYS_2018_REVIEW = ("verified", "style", "vote", "image")
_KEYS_2018_META = ("category", "main_cat", "also_buy", "also_view", "rank", "feature", "tech1", "details")
_KEYS_2014_META = ("categories", "salesRank", "related", "imUrl")


# --------------------------------------------------------------------------------------------
# public entry points
# --------------------------------------------------------------------------------------------

def read_source(paths: Sequence[Path | str] | Path | str, fmt: str | None = None, *,
                min_core: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read raw files into the canonical (interactions, items) tables.

    paths     a directory (every recognised file in it is used: reviews/ratings files give
              the interactions, meta/items files give the items) or a list of files.
    fmt       one of `FORMATS`; None detects it (`detect_format`). A given format wins over
              what the files look like (a headerless 2014 or 2018 ratings CSV renamed away
              from the official name can only be read right this way).
    min_core  when > 1, iteratively drop users and items with fewer interactions.

    Returns (interactions, items): interactions has columns user, item, rating, timestamp
    (+ review_text, summary when read from a reviews file), one row per (user, item), the
    latest kept (`dedupe_latest`); items has columns item, title, brand, categories,
    description, one row per item record in the metadata files, not filtered to the items
    left in the interactions (empty when no metadata file is given).

    When both a reviews file and a ratings CSV are given, the reviews file is used and the
    CSV ignored: in the 2014 and 2018 releases the reviews file is the official 5-core the
    paper uses (the CSV is the full, un-cored rating dump) and only it carries the review
    text that PageLLM's prompts quote. (In the 2023 release the rating-only CSV is the 5-core
    and the reviews file the full dump: pass min_core=5 to core the latter.)
    """
    files = _expand(paths)
    listed = _listed(paths)
    if fmt is None:
        fmt = detect_format(files)
        log.info("detected format %s", fmt)
    elif fmt not in FORMATS:
        raise DataError(f"unknown format {fmt!r}; known formats: {', '.join(FORMATS)}",
                        fix="pass --format with one of the known formats")

    by_role: dict[str, list[Path]] = {REVIEWS: [], RATINGS: [], ITEMS: []}
    for path in files:
        if path not in listed and _sniff(path).role is None:
            # A stray file in a data directory (notes.csv, stats.json): skip it, but say so.
            log.warning("skipping %s: not a recognised reviews, ratings or metadata file", path)
            continue
        role = _role(path, fmt)
        if role is None:
            raise DataError(f"cannot tell whether this is a reviews, ratings or metadata file "
                            f"for format {fmt}", path,
                            fix="name it like the official release (e.g. meta_<Category>.json.gz)")
        by_role[role].append(path)

    if by_role[REVIEWS]:
        sources, role = by_role[REVIEWS], REVIEWS
        if by_role[RATINGS]:
            log.info("using reviews file(s) %s; ignoring rating-only file(s) %s",
                     _names(by_role[REVIEWS]), _names(by_role[RATINGS]))
        if fmt == "amazon2023" and min_core < 5:
            log.warning("2023 reviews files are the full (un-cored) dump; pass min_core=5 for the "
                        "5-core used by the 2023 benchmark")
    elif by_role[RATINGS]:
        sources, role = by_role[RATINGS], RATINGS
    else:
        raise DataError("no reviews or ratings file among " + _names(files),
                        fix="add the interactions file (e.g. <Category>_5.json.gz or a user_id,item_id CSV)")

    parts = [_READERS[(fmt, role)](path) for path in sources]
    interactions = parts[0] if len(parts) == 1 else pd.concat(parts, ignore_index=True)
    raw_rows = len(interactions)
    interactions = dedupe_latest(interactions)
    if len(interactions) < raw_rows:
        log.info("dropped %d duplicate (user, item) rows, keeping the latest", raw_rows - len(interactions))
    if min_core > 1:
        before = len(interactions)
        interactions = k_core(interactions, min_core)
        log.info("%d-core: %d -> %d interactions", min_core, before, len(interactions))
        if len(interactions) == 0:
            raise DataError(f"no interactions left after the {min_core}-core filter", _names(sources),
                            fix="lower min_core")

    item_parts = [_READERS[(fmt, ITEMS)](path) for path in by_role[ITEMS]]
    if item_parts:
        items = make_items(pd.concat(item_parts, ignore_index=True))
    else:
        items = make_items(None)
    log.info("read %d interactions (%d users, %d items) and %d item records",
             len(interactions), interactions["user"].nunique(), interactions["item"].nunique(), len(items))
    return interactions, items


def detect_format(paths: Sequence[Path | str] | Path | str) -> str:
    """Tell which of `FORMATS` the files are, from their names and first lines.

    Raises DataError (telling the user to pass --format) when no file is recognised or the
    files disagree.
    """
    files = _expand(paths)
    found: dict[str, list[Path]] = {}
    for path in files:
        fmt = _sniff(path).fmt
        if fmt is not None:
            found.setdefault(fmt, []).append(path)
    if not found:
        raise DataError("cannot detect the data format of " + _names(files), fix=_FORMAT_FIX)
    if len(found) > 1:
        detail = "; ".join(f"{fmt}: {_names(ps)}" for fmt, ps in found.items())
        raise DataError(f"the files look like different formats ({detail})", fix=_FORMAT_FIX)
    return next(iter(found))


# --------------------------------------------------------------------------------------------
# file discovery and sniffing
# --------------------------------------------------------------------------------------------

class _Sniff(NamedTuple):
    fmt: str | None
    role: str | None


def _names(paths: Sequence[Path]) -> str:
    return ", ".join(str(p) for p in paths)


def _recognised(path: Path) -> bool:
    name = path.name.lower()
    if name.startswith("."):
        return False
    if name.endswith(".gz"):
        name = name[:-3]
    return name.endswith(_SUFFIXES)


def _listed(paths: Sequence[Path | str] | Path | str) -> set[Path]:
    """The files named directly (not found inside a directory)."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    return {Path(p) for p in paths if not Path(p).is_dir()}


def _expand(paths: Sequence[Path | str] | Path | str) -> list[Path]:
    """A directory -> its recognised files (sorted); a list -> its files, directories expanded."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            inside = sorted(f for f in p.iterdir() if f.is_file() and _recognised(f))
            if not inside:
                raise DataError("no data files (.json, .jsonl, .csv, .parquet, optionally .gz) in this directory",
                                p, fix="point to the directory holding the downloaded files")
            files.extend(inside)
        elif p.is_file():
            files.append(p)
        else:
            raise DataError("no such file or directory", p, fix="check the path")
    if not files:
        raise DataError("no input files given", fix="pass a data directory or files")
    return files


def _first_line(path: Path) -> str:
    """The first non-blank line (BOM stripped); DataError when the file is empty."""
    with reading(path), open_text(path) as fh:
        for line in fh:
            if line.strip():
                return line.lstrip("\ufeff").strip()
    raise DataError("the file is empty", path, fix="re-download it or remove it")


def _base_name(path: Path) -> str:
    name = path.name.lower()
    return name[:-3] if name.endswith(".gz") else name


def _sniff(path: Path) -> _Sniff:
    """Guess (format, role) of one file from its name and first line; None where unsure."""
    name = _base_name(path)
    if name.endswith((".parquet", ".pq")):
        cols = _parquet_columns(path)
        if {"user_id", "item_id"} <= cols:
            return _Sniff("generic", RATINGS)
        if "item_id" in cols:
            return _Sniff("generic", ITEMS)
        return _Sniff(None, None)

    line = _first_line(path)
    if line.startswith("{"):
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict):
            return _sniff_json(record, name)
        try:
            record = ast.literal_eval(line)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return _Sniff(None, None)
        # Only the 2014 metadata is written as Python literals ({'asin': ...}).
        if isinstance(record, dict) and "asin" in record:
            return _Sniff("amazon2014", ITEMS)
        return _Sniff(None, None)

    fields = [f.strip().lower() for f in next(csv.reader([line]))]
    if "user_id" in fields and "parent_asin" in fields:
        return _Sniff("amazon2023", RATINGS)
    if "user_id" in fields and "item_id" in fields:
        return _Sniff("generic", RATINGS)
    if "item_id" in fields:
        return _Sniff("generic", ITEMS)
    if len(fields) == 4 and _is_number(fields[2]) and _is_number(fields[3]):
        # Headerless ratings CSV: 2014 is user,item,... and 2018 item,user,...; the content
        # cannot always tell them apart, so the official file names decide first.
        raw = [f.strip() for f in next(csv.reader([line]))]
        if name.startswith("ratings_"):
            return _Sniff("amazon2014", RATINGS)
        if _ASIN.match(raw[0]) and not _ASIN.match(raw[1]):
            return _Sniff("amazon2018", RATINGS)
        if _ASIN.match(raw[1]) and not _ASIN.match(raw[0]):
            return _Sniff("amazon2014", RATINGS)
        return _Sniff(None, RATINGS)
    return _Sniff(None, None)


def _sniff_json(record: dict, name: str) -> _Sniff:
    if "reviewerID" in record:
        if any(k in record for k in _KEYS_2018_REVIEW):
            return _Sniff("amazon2018", REVIEWS)
        if "helpful" in record or name.startswith("reviews_"):
            return _Sniff("amazon2014", REVIEWS)
        return _Sniff("amazon2018", REVIEWS)
    if "user_id" in record:
        return _Sniff("amazon2023", REVIEWS)
    if "parent_asin" in record:
        return _Sniff("amazon2023", ITEMS)
    if "asin" in record:
        if any(k in record for k in _KEYS_2014_META) and not any(k in record for k in _KEYS_2018_META):
            return _Sniff("amazon2014", ITEMS)
        # 2014 metadata is Python literals, so a strict-JSON metadata line is 2018.
        return _Sniff("amazon2018", ITEMS)
    return _Sniff(None, None)


def _role(path: Path, fmt: str) -> str | None:
    """The role of one file once the format is known: sniffed, else from the file name."""
    role = _sniff(path).role
    if role is not None:
        return role
    name = _base_name(path)
    if name.startswith("meta_") or name.startswith("items"):
        return ITEMS
    if name.startswith("ratings_") or name.endswith(".csv"):
        return RATINGS
    if name.endswith((".json", ".jsonl")):
        return REVIEWS
    return None


def _parquet_columns(path: Path) -> set[str]:
    import pyarrow.parquet as pq  # lazy: only Parquet inputs need pyarrow

    try:
        return {c.strip().lower() for c in pq.read_schema(path).names}
    except Exception as exc:  # pyarrow raises several types for a bad file
        raise DataError(f"not a readable Parquet file ({exc})", path, fix="re-export it") from exc


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# --------------------------------------------------------------------------------------------
# line-level helpers
# --------------------------------------------------------------------------------------------

def _json_records(path: Path) -> Iterator[tuple[int, dict]]:
    """(1-based line number, object) per non-blank line; DataError on the first bad line."""
    empty = True
    with reading(path), open_text(path) as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            empty = False
            try:
                record = json.loads(line.lstrip("\ufeff") if lineno == 1 else line)
            except ValueError as exc:
                raise DataError(f"malformed JSON ({exc})", path, lineno,
                                fix="the file should hold one JSON object per line; re-download it") from exc
            if not isinstance(record, dict):
                raise DataError(f"expected a JSON object, found {type(record).__name__}", path, lineno,
                                fix="the file should hold one JSON object per line")
            yield lineno, record
    if empty:
        raise DataError("the file is empty", path, fix="re-download it or remove it")


def _literal_records(path: Path) -> Iterator[tuple[int, dict]]:
    """2014 metadata: one Python dict literal per line (ast.literal_eval, never eval)."""
    empty = True
    with reading(path), open_text(path) as fh:
        for lineno, line in enumerate(fh, start=1):
            text = line.strip().lstrip("\ufeff")
            if not text:
                continue
            empty = False
            try:
                record = ast.literal_eval(text)
            except (ValueError, SyntaxError, MemoryError, RecursionError) as exc:
                try:  # some re-releases of the 2014 metadata are strict JSON (true/false/null)
                    record = json.loads(text)
                except ValueError:
                    raise DataError(f"malformed Python dict literal ({type(exc).__name__}: {exc})", path, lineno,
                                    fix="the 2014 metadata holds one Python dict per line; re-download it") from exc
            if not isinstance(record, dict):
                raise DataError(f"expected a dict, found {type(record).__name__}", path, lineno,
                                fix="the 2014 metadata holds one Python dict per line")
            yield lineno, record
    if empty:
        raise DataError("the file is empty", path, fix="re-download it or remove it")


def _require(record: dict, key: str, path: Path, lineno: int) -> Any:
    try:
        value = record[key]
    except KeyError:
        raise DataError(f"missing required field {key!r}", path, lineno,
                        fix="check that the file matches the format (or pass --format)") from None
    if value is None or value == "":
        raise DataError(f"empty required field {key!r}", path, lineno, fix="fix or remove this line")
    return value


def _rating(value: Any, key: str, path: Path, lineno: int) -> float:
    try:
        rating = float(value)
    except (TypeError, ValueError, OverflowError):
        rating = math.nan
    if isinstance(value, bool) or math.isnan(rating):
        raise DataError(f"non-numeric rating {value!r} in field {key!r}", path, lineno,
                        fix="ratings must be numbers such as 4.0")
    if not in_range(rating, RATING_RANGE):
        raise DataError(f"rating {value!r} in field {key!r} out of range", path, lineno, fix=RATING_RULE)
    return rating


def _timestamp(value: Any, key: str, path: Path, lineno: int, per_second: int = 1) -> int:
    """Unix seconds from `value`, which counts `per_second` units a second (1000: milliseconds)."""
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        number = math.nan
    if isinstance(value, bool) or math.isnan(number):
        raise DataError(f"non-numeric timestamp {value!r} in field {key!r}", path, lineno,
                        fix="timestamps must be unix times (numbers)")
    if not in_range(number / per_second, TIMESTAMP_RANGE):
        raise DataError(f"timestamp {value!r} in field {key!r} out of range{_unit(per_second)}", path, lineno,
                        fix=TIMESTAMP_RULE)
    return (value if isinstance(value, int) else int(number)) // per_second


def _unit(per_second: int) -> str:
    return "" if per_second == 1 else " (this format counts milliseconds)"


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value if v)
    return str(value)


def _with_text(interactions: pd.DataFrame, texts: dict[str, list[str]]) -> pd.DataFrame:
    """Add review_text / summary back after make_interactions (which keeps only its columns)."""
    for col in TEXT_COLUMNS:
        if col in texts:
            interactions[col] = pd.Series(texts[col], dtype=object).to_numpy()
    return interactions


# --------------------------------------------------------------------------------------------
# Amazon reviews (JSON lines)
# --------------------------------------------------------------------------------------------

def _read_reviews_2014_2018(path: Path) -> pd.DataFrame:
    """2014 `reviews_<Cat>_5.json.gz` and 2018 `<Cat>_5.json.gz`: same fields."""
    users, items, ratings, stamps, texts, summaries = [], [], [], [], [], []
    for lineno, rec in _json_records(path):
        users.append(str(_require(rec, "reviewerID", path, lineno)))
        items.append(str(_require(rec, "asin", path, lineno)))
        ratings.append(_rating(_require(rec, "overall", path, lineno), "overall", path, lineno))
        stamps.append(_timestamp(_require(rec, "unixReviewTime", path, lineno), "unixReviewTime", path, lineno))
        texts.append(_text(rec.get("reviewText")))
        summaries.append(_text(rec.get("summary")))
    df = make_interactions(pd.DataFrame({"user": users, "item": items, "rating": ratings,
                                         "timestamp": stamps}), path)
    return _with_text(df, {"review_text": texts, "summary": summaries})


def _read_reviews_2023(path: Path) -> pd.DataFrame:
    """2023 `<Cat>.jsonl.gz`: item = parent_asin (else asin), timestamp in ms -> s."""
    users, items, ratings, stamps, texts, summaries = [], [], [], [], [], []
    for lineno, rec in _json_records(path):
        users.append(str(_require(rec, "user_id", path, lineno)))
        item = rec.get("parent_asin") or rec.get("asin")
        if not item:
            _require(rec, "parent_asin", path, lineno)  # raises, naming the field
        items.append(str(item))
        ratings.append(_rating(_require(rec, "rating", path, lineno), "rating", path, lineno))
        stamps.append(_timestamp(_require(rec, "timestamp", path, lineno), "timestamp", path, lineno, 1000))
        texts.append(_text(rec.get("text")))
        summaries.append(_text(rec.get("title")))  # the review's headline: 2014/2018 "summary"
    df = make_interactions(pd.DataFrame({"user": users, "item": items, "rating": ratings,
                                         "timestamp": stamps}), path)
    return _with_text(df, {"review_text": texts, "summary": summaries})


# --------------------------------------------------------------------------------------------
# Amazon metadata
# --------------------------------------------------------------------------------------------

def _flatten(value: Any) -> list[str]:
    """Category lists, nested (2014: list of lists) or flat, in order; join_categories dedupes."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    out: list[str] = []
    for v in value:
        out.extend(_flatten(v))
    return out


def _read_meta_2014(path: Path) -> pd.DataFrame:
    rows = []
    for lineno, rec in _literal_records(path):
        rows.append({"item": str(_require(rec, "asin", path, lineno)), "title": _text(rec.get("title")),
                     "brand": _text(rec.get("brand")), "categories": _flatten(rec.get("categories")),
                     "description": _text(rec.get("description"))})
    return pd.DataFrame(rows)


def _read_meta_2018(path: Path) -> pd.DataFrame:
    rows = []
    for lineno, rec in _json_records(path):
        rows.append({"item": str(_require(rec, "asin", path, lineno)), "title": _text(rec.get("title")),
                     "brand": _text(rec.get("brand")), "categories": _flatten(rec.get("category")),
                     "description": _text(rec.get("description"))})
    return pd.DataFrame(rows)


def _read_meta_2023(path: Path) -> pd.DataFrame:
    rows = []
    for lineno, rec in _json_records(path):
        item = rec.get("parent_asin") or rec.get("asin")
        if not item:
            _require(rec, "parent_asin", path, lineno)
        details = rec.get("details") if isinstance(rec.get("details"), dict) else {}
        brand = details.get("Brand") or details.get("brand") or rec.get("store")
        rows.append({"item": str(item), "title": _text(rec.get("title")), "brand": _text(brand),
                     "categories": _flatten(rec.get("categories")),
                     "description": _text(rec.get("description"))})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------
# CSV / Parquet tables
# --------------------------------------------------------------------------------------------

def _read_csv(path: Path, header: bool) -> pd.DataFrame:
    """All cells as strings ('NA' stays an id), blank lines kept so row i is line i+1(+1 header)."""
    try:
        with reading(path), open_text(path) as fh:
            df = pd.read_csv(fh, header=0 if header else None, dtype=str, keep_default_na=False,
                             skip_blank_lines=False, skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise DataError("the file is empty", path, fix="re-download it or remove it") from None
    except pd.errors.ParserError as exc:
        # pandas: "Error tokenizing data. C error: Expected 4 fields in line 3, saw 5"
        found = _PANDAS_FIELDS.search(str(exc))
        if found:
            raise DataError(f"wrong number of fields: expected {found.group(1)} (as in the first row), "
                            f"found {found.group(3)}", path, int(found.group(2)),
                            fix="fix or remove this line") from None
        found = _PANDAS_LINE.search(str(exc))
        raise DataError(f"unreadable CSV ({str(exc).strip()})", path, int(found.group(1)) if found else None,
                        fix="check the quoting and the number of fields") from None
    if header:
        df.columns = [str(c).lstrip("\ufeff").strip().lower() for c in df.columns]
    return df


def _read_parquet(path: Path) -> pd.DataFrame:
    try:
        df = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for a bad file
        raise DataError(f"not a readable Parquet file ({exc})", path, fix="re-export it") from exc
    df.columns = [str(c).strip().lower() for c in df.columns]
    return df.reset_index(drop=True)  # a stored pandas index would break row numbers


def _drop_blank_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Drop rows read from blank lines (every cell empty; the first may hold spaces)."""
    if df.shape[1] == 0 or len(df) == 0:
        return df
    if df.shape[1] > 1:
        blank = (df.iloc[:, 1:] == "").to_numpy().all(axis=1)
    else:
        blank = np.ones(len(df), dtype=bool)
    if not blank.any():
        return df
    # strip only the few candidate rows: stripping every cell of a large table is slow
    blank[blank] = (df.iloc[blank, 0].astype(str).str.strip() == "").to_numpy()
    return df[~blank] if blank.any() else df


def _check_values(df: pd.DataFrame, path: Path, first_line: int, ids: Sequence[str],
                  numeric: Sequence[str], unit: str = "line", per_second: int = 1) -> dict[str, np.ndarray]:
    """Ids non-empty, numeric columns numbers, ratings and timestamps in range (`canonical`);
    report the first bad row as its line number.

    first_line is the line number of row 0 (1 headerless, 2 after a header). For Parquet
    (no lines) unit="row" and the number is the 1-based row. per_second: units of the
    timestamp column per second (1000 for milliseconds).
    """
    def where(pos: int) -> tuple[int | None, str]:
        # The index still holds the row's position in the file (blank rows were dropped after).
        number = int(df.index[pos]) + first_line
        return (number, "") if unit == "line" else (None, f" (row {number})")

    for col in ids:
        values = df[col]
        bad = values.isna().to_numpy() | (values.astype(str) == "").to_numpy()
        if bad.any():
            line, extra = where(int(np.flatnonzero(bad)[0]))
            raise DataError(f"empty {col} (wrong number of fields?){extra}", path, line,
                            fix=f"every row needs a {col}")
    out: dict[str, np.ndarray] = {}
    for col in numeric:
        values = pd.to_numeric(df[col], errors="coerce")
        bad = values.isna() | ~np.isfinite(values.to_numpy(dtype="float64"))
        if bad.any():
            pos = int(np.flatnonzero(bad.to_numpy())[0])
            line, extra = where(pos)
            value = df[col].iloc[pos]
            if isinstance(value, str) and not value.strip():
                raise DataError(f"empty {col} (wrong number of fields?){extra}", path, line,
                                fix=f"every row needs a {col}")
            raise DataError(f"non-numeric {col} {value!r}{extra}", path, line, fix=f"{col} must be a number")
        out[col] = values.to_numpy()
    for col, (bounds, rule, scale) in (("rating", (RATING_RANGE, RATING_RULE, 1)),
                                        ("timestamp", (TIMESTAMP_RANGE, TIMESTAMP_RULE, per_second))):
        bad = out_of_range(out[col] / scale, bounds) if col in out else np.zeros(0, dtype=bool)
        if bad.any():
            pos = int(np.flatnonzero(bad)[0])
            line, extra = where(pos)
            raise DataError(f"{col} {df[col].iloc[pos]!r} out of range{extra}{_unit(scale) if col == 'timestamp' else ''}",
                            path, line, fix=rule)
    return out


def _read_headerless_ratings(path: Path, order: tuple[str, str, str, str]) -> pd.DataFrame:
    """2014 `ratings_<Cat>.csv` (user,item,rating,ts) and 2018 `<Cat>.csv` (item,user,rating,ts)."""
    df = _read_csv(path, header=False)
    expected = ",".join(order)
    if df.shape[1] != 4:
        if df.shape[1] > 4:
            extra = (df.iloc[:, 4:].astype(str).apply(lambda s: s.str.strip()) != "").any(axis=1).to_numpy()
            index = int(np.flatnonzero(extra)[0]) if extra.any() else 0
        else:
            index = 0
        raise DataError(f"wrong number of fields: found {df.shape[1]}, expected 4 ({expected}, no header)",
                        path, index + 1, fix="check that this is a rating-only CSV of this format")
    df.columns = list(order)
    df = _drop_blank_rows(df)
    if len(df) == 0:
        raise DataError("the file is empty", path, fix="re-download it or remove it")
    values = _check_values(df, path, 1, ("user", "item"), ("rating", "timestamp"))
    out = pd.DataFrame({"user": df["user"], "item": df["item"],
                        "rating": values["rating"], "timestamp": values["timestamp"].astype("int64")})
    return make_interactions(out, path)


def _read_ratings_2014(path: Path) -> pd.DataFrame:
    return _read_headerless_ratings(path, ("user", "item", "rating", "timestamp"))


def _read_ratings_2018(path: Path) -> pd.DataFrame:
    return _read_headerless_ratings(path, ("item", "user", "rating", "timestamp"))


def _table(path: Path) -> tuple[pd.DataFrame, int, str]:
    """A CSV (with header) or Parquet table, the number of row 0's line, and the unit."""
    if _base_name(path).endswith((".parquet", ".pq")):
        return _read_parquet(path), 1, "row"
    df = _read_csv(path, header=True)
    return df, 2, "line"


def _read_ratings_2023(path: Path) -> pd.DataFrame:
    """The 2023 5-core rating-only CSV: header user_id,parent_asin,rating,timestamp (ms -> s)."""
    df, first, unit = _table(path)
    required = ["user_id", "parent_asin", "rating", "timestamp"]
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataError(f"missing column(s) {', '.join(missing)}; the file has columns "
                        f"{', '.join(map(str, df.columns))}", path, 1,
                        fix="the 2023 5-core CSV has the header user_id,parent_asin,rating,timestamp")
    df = _drop_blank_rows(df) if unit == "line" else df  # Parquet has no blank lines
    if len(df) == 0:
        raise DataError("the file is empty (header only)", path, fix="re-download it or remove it")
    values = _check_values(df, path, first, ("user_id", "parent_asin"), ("rating", "timestamp"), unit, 1000)
    out = pd.DataFrame({"user": df["user_id"].astype(str),
                        "item": df["parent_asin"].astype(str),
                        "rating": values["rating"],
                        "timestamp": np.floor_divide(values["timestamp"], 1000).astype("int64")})
    return make_interactions(out, path)


def _read_generic_interactions(path: Path) -> pd.DataFrame:
    """user_id,item_id[,rating][,timestamp]; without a rating column every row is a positive."""
    df, first, unit = _table(path)
    missing = [c for c in ("user_id", "item_id") if c not in df.columns]
    if missing:
        raise DataError(f"missing column(s) {', '.join(missing)}; the file has columns "
                        f"{', '.join(map(str, df.columns))}", path, 1 if unit == "line" else None,
                        fix="rename the columns to user_id,item_id[,rating][,timestamp]")
    df = _drop_blank_rows(df) if unit == "line" else df  # Parquet has no blank lines
    if len(df) == 0:
        raise DataError("the file is empty (no rows)", path, fix="check that this is the right file")
    numeric = [c for c in ("rating", "timestamp") if c in df.columns]
    values = _check_values(df, path, first, ("user_id", "item_id"), numeric, unit)
    out = pd.DataFrame({"user": df["user_id"].astype(str),
                        "item": df["item_id"].astype(str)})
    out["rating"] = values["rating"].astype("float64") if "rating" in values else np.nan
    if "timestamp" in values:
        out["timestamp"] = values["timestamp"].astype("float64").astype("int64")
    result = make_interactions(out, path)
    texts = {c: df[c].fillna("").astype(str).tolist() for c in TEXT_COLUMNS if c in df.columns}
    return _with_text(result, texts)


def _read_generic_items(path: Path) -> pd.DataFrame:
    """item_id[,title][,brand][,categories][,description]; categories separated by "|"."""
    df, first, unit = _table(path)
    if "item_id" not in df.columns:
        raise DataError(f"missing column item_id; the file has columns {', '.join(map(str, df.columns))}",
                        path, 1 if unit == "line" else None,
                        fix="rename the columns to item_id[,title][,brand][,categories][,description]")
    df = _drop_blank_rows(df) if unit == "line" else df  # Parquet has no blank lines
    _check_values(df, path, first, ("item_id",), (), unit)
    out = pd.DataFrame({"item": df["item_id"].astype(str)})
    for col in ("title", "brand", "description"):
        if col in df.columns:
            out[col] = df[col].fillna("").astype(str).to_numpy()
    if "categories" in df.columns:
        # Parquet may hold real lists (numpy arrays); CSV holds "a|b|c" strings.
        out["categories"] = [list(v) if isinstance(v, (list, tuple, np.ndarray)) else ("" if v is None else v)
                             for v in df["categories"]]
    return out


_READERS: dict[tuple[str, str], Callable[[Path], pd.DataFrame]] = {
    ("amazon2014", REVIEWS): _read_reviews_2014_2018,
    ("amazon2014", RATINGS): _read_ratings_2014,
    ("amazon2014", ITEMS): _read_meta_2014,
    ("amazon2018", REVIEWS): _read_reviews_2014_2018,
    ("amazon2018", RATINGS): _read_ratings_2018,
    ("amazon2018", ITEMS): _read_meta_2018,
    ("amazon2023", REVIEWS): _read_reviews_2023,
    ("amazon2023", RATINGS): _read_ratings_2023,
    ("amazon2023", ITEMS): _read_meta_2023,
    ("generic", REVIEWS): _read_generic_interactions,
    ("generic", RATINGS): _read_generic_interactions,
    ("generic", ITEMS): _read_generic_items,
}
