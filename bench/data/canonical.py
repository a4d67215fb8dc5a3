"""The canonical tables every reader produces.

interactions: one row per (user, item) event
    user       str    original user id
    item       str    original item id
    rating     float  stars, within RATING_RANGE (0-5: the binarisation "> 3" assumes the
                      5-point scale); NaN when the source has no ratings (implicit
                      feedback: every such row is a positive)
    timestamp  int64  unix seconds within TIMESTAMP_RANGE (1970-2100; 0 when the source
                      has none)
    review_text, summary   str, optional: only from Amazon reviews files (readers add them
                      after `make_interactions`); the split keeps the text of train and
                      negatives rows in reviews.csv (`bench.data.splits`)

items: one row per item with metadata (any column may be empty)
    item         str
    title        str   HTML markup stripped, entities unescaped, whitespace collapsed
                       (`clean_text`, as every text column); "" when the source had none or
                       only markup
    brand        str
    categories   str   category names joined by "|" (a "|" inside a name becomes "/")
    description  str
    title_markup_only  bool, only when there are items: the source's title was nothing but
                       markup (official 2018 metadata: in one category nearly every title is the
                       fragment `<span class="a-size-medium a-color-secondary"`), now ""; the
                       split counts these items in split.json (`n_items_title_markup_only`)
"""

from __future__ import annotations

import html
import re
from html.parser import HTMLParser

import numpy as np
import pandas as pd

from bench.errors import DataError

INTERACTION_COLUMNS = ["user", "item", "rating", "timestamp"]
ITEM_COLUMNS = ["item", "title", "brand", "categories", "description"]
POSITIVE_THRESHOLD = 3.0  # the paper's binarisation: rating > 3 is a positive
# Values outside these ranges are input errors (a -3 or 1e9 rating, a 1e30 timestamp that would
# wrap to the minimum int64), reported by the readers with the file and line.
RATING_RANGE = (0.0, 5.0)
TIMESTAMP_RANGE = (0, 4_102_444_800)  # unix seconds: 1970-01-01 .. 2100-01-01
RATING_RULE = "ratings are stars from 0 to 5 (rescale other scales; omit the column for implicit feedback)"
TIMESTAMP_RULE = "timestamps are unix seconds between 1970 and 2100 (milliseconds? divide by 1000)"

_SPACE = re.compile(r"\s+")
# something that starts a tag, a closing tag or a comment / declaration: worth parsing as HTML
_MARKUP = re.compile(r"<[A-Za-z/!?]")
# a tag left open at the end of the text (`<span class="..."`), which the parser keeps as text
_OPEN_TAG = re.compile(r"<[A-Za-z/!?][^<>]*$")
# tags that sit inside a run of text: removing them must not split or join words
_INLINE_TAGS = frozenset({"a", "abbr", "b", "bdi", "bdo", "cite", "code", "em", "font", "i", "kbd", "mark", "q",
                          "s", "small", "span", "strong", "sub", "sup", "u", "var"})


class _TextOnly(HTMLParser):
    """The text of an HTML fragment: tags, comments, scripts and styles dropped, entities decoded;
    a block-level tag (<br>, <p>, <div>, <li>, ...) separates the words on either side."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0  # inside <script> / <style>

    def handle_starttag(self, tag: str, attrs) -> None:
        if tag in ("script", "style"):
            self._skip += 1
        elif tag not in _INLINE_TAGS:
            self.parts.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style"):
            self._skip = max(0, self._skip - 1)
        elif tag not in _INLINE_TAGS:
            self.parts.append(" ")

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def _strip_markup(text: str) -> str:
    parser = _TextOnly()
    parser.feed(text)
    parser.close()
    return _OPEN_TAG.sub("", "".join(parser.parts))


def clean_text(value: object) -> str:
    """The one text cleaner of the data: strip HTML markup (official 2018 metadata holds `<i>`, `<br>`,
    `<div>` and even titles that are only an unterminated `<span ...`), unescape entities (2018 titles hold
    &amp;) and collapse whitespace. A "<" that does not start a tag ("5 < 6", "I <3 it") is text."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    if isinstance(value, (list, tuple)):
        value = " ".join(str(v) for v in value if v)
    text = str(value)
    # the parser is slow next to a regex: only text that looks like markup goes through it
    text = _strip_markup(text) if _MARKUP.search(text) else html.unescape(text)
    return collapse_whitespace(text)


def collapse_whitespace(text: str) -> str:
    """Every run of whitespace (tabs, newlines) as one space, none at the ends: the last step of
    `clean_text`, alone for text that is clean already (e.g. fields written to tab-separated files)."""
    return _SPACE.sub(" ", str(text)).strip()


def _has_text(value: object) -> bool:
    """Whether a raw field holds anything but whitespace (before cleaning)."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return False
    if isinstance(value, (list, tuple)):
        return any(_has_text(v) for v in value)
    return bool(str(value).strip())


def join_categories(names: list[str] | tuple[str, ...]) -> str:
    seen: list[str] = []
    for name in names:
        name = clean_text(name).replace("|", "/")
        if name and name not in seen:
            seen.append(name)
    return "|".join(seen)


def split_categories(value: str) -> list[str]:
    """The one category parser: the names of a "|"-joined categories field, spaces around each
    name removed, empty names dropped ("Toys | Dolls|" -> ["Toys", "Dolls"]); [] for a non-string."""
    if not isinstance(value, str):
        return []
    return [c for c in (name.strip() for name in value.split("|")) if c]


def out_of_range(values: np.ndarray, bounds: tuple[float, float]) -> np.ndarray:
    """(n,) bool: values that are not finite or lie outside `bounds` (NaN counts as bad)."""
    values = np.asarray(values, dtype="float64")
    with np.errstate(invalid="ignore"):
        return ~np.isfinite(values) | (values < bounds[0]) | (values > bounds[1])


def in_range(value: float, bounds: tuple[float, float]) -> bool:
    """The rule of `out_of_range` for one number, without numpy (readers check every line):
    False when it is NaN, infinite or outside `bounds`."""
    return bounds[0] <= value <= bounds[1]


def make_interactions(df: pd.DataFrame, source: object) -> pd.DataFrame:
    """Validate and type a reader's output; raise one clear error when it is empty or a rating
    or timestamp is out of range (readers check first, naming the line; this is the backstop)."""
    missing = [c for c in ("user", "item") if c not in df.columns]
    if missing:
        raise DataError(f"no {', '.join(missing)} column", source)
    if len(df) == 0:
        raise DataError("no interactions found (the file is empty)", source,
                        fix="check that this is the right file and format")
    rating = pd.to_numeric(df["rating"], errors="coerce").astype("float64").to_numpy() \
        if "rating" in df.columns else np.full(len(df), np.nan)
    stamp = pd.to_numeric(df["timestamp"], errors="coerce").fillna(0).astype("float64").to_numpy() \
        if "timestamp" in df.columns else np.zeros(len(df))
    _check_range(rating, ~np.isnan(rating), RATING_RANGE, "rating", RATING_RULE, source)
    _check_range(stamp, np.ones(len(df), dtype=bool), TIMESTAMP_RANGE, "timestamp", TIMESTAMP_RULE, source)
    out = pd.DataFrame({"user": df["user"].astype(str).to_numpy(), "item": df["item"].astype(str).to_numpy(),
                        "rating": rating, "timestamp": stamp.astype("int64")})
    return out.reset_index(drop=True)


def _check_range(values: np.ndarray, checked: np.ndarray, bounds: tuple[float, float], what: str,
                 rule: str, source: object) -> None:
    bad = np.flatnonzero(checked & out_of_range(values, bounds))
    if len(bad):
        raise DataError(f"{what} {float(values[bad[0]])!r} out of range in row {bad[0] + 1} "
                        f"({len(bad)} such rows)", source, fix=rule)


def make_items(df: pd.DataFrame | None) -> pd.DataFrame:
    if df is None or len(df) == 0:
        return pd.DataFrame({c: pd.Series(dtype=str) for c in ITEM_COLUMNS})
    out = pd.DataFrame({"item": df["item"].astype(str)})
    for col in ITEM_COLUMNS[1:]:
        out[col] = df[col].map(clean_text) if col in df.columns and col != "categories" else ""
    # a title that had something, all of it markup, is missing like an absent one, but counted
    had_title = df["title"].map(_has_text).to_numpy(dtype=bool) if "title" in df.columns else False
    out["title_markup_only"] = had_title & (out["title"] == "").to_numpy()
    if "categories" in df.columns:
        out["categories"] = df["categories"].map(
            lambda v: join_categories(v) if isinstance(v, (list, tuple)) else join_categories(split_categories(v)))
    return out.drop_duplicates("item", keep="last").reset_index(drop=True)


def dedupe_latest(interactions: pd.DataFrame) -> pd.DataFrame:
    """Keep one row per (user, item): the latest by timestamp (the last in file order on ties)."""
    order = np.lexsort((np.arange(len(interactions)), interactions["timestamp"].to_numpy()))
    ordered = interactions.iloc[order]
    return ordered.drop_duplicates(["user", "item"], keep="last").sort_index().reset_index(drop=True)


def k_core(interactions: pd.DataFrame, k: int) -> pd.DataFrame:
    """Iteratively drop users and items with fewer than k interactions."""
    if k <= 1:
        return interactions
    df = interactions
    while True:
        user_counts = df["user"].map(df["user"].value_counts())
        item_counts = df["item"].map(df["item"].value_counts())
        keep = (user_counts >= k) & (item_counts >= k)
        if keep.all():
            return df.reset_index(drop=True)
        df = df[keep]


def is_positive(rating: pd.Series | np.ndarray) -> np.ndarray:
    """rating > 3, and every row without a rating (implicit feedback)."""
    r = np.asarray(rating, dtype="float64")
    return np.isnan(r) | (r > POSITIVE_THRESHOLD)


def ordered_ids(values: pd.Series | np.ndarray | list) -> np.ndarray:
    """Unique ids in a fixed order that defines integer indices everywhere.

    Numeric order when every id is an integer (so "99" < "100", as a user reading the
    ids as numbers expects), lexicographic otherwise. The evaluator's tie-break
    "item id ascending" is this order.
    """
    unique = pd.unique(pd.Series(values, dtype=str))
    as_int = pd.to_numeric(pd.Series(unique), errors="coerce")
    if len(unique) and as_int.notna().all() and (as_int == as_int.round()).all():
        order = np.argsort(as_int.to_numpy(dtype="float64"), kind="stable")
    else:
        order = np.argsort(unique.astype(str), kind="stable")
    return np.asarray(unique, dtype=object)[order]
