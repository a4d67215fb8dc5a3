"""Readers: raw Amazon 2014/2018/2023 files and generic CSV/Parquet -> canonical tables.

Fixtures under tests/fixtures/raw/ are hand-built from the official format descriptions
(/work/shared/data/README.md); the real-data tests skip when ../shared is absent.
"""

from __future__ import annotations

import gzip
import math
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.data.readers import FORMATS, detect_format, read_source
from bench.errors import DataError

RAW = Path(__file__).resolve().parent / "fixtures" / "raw"
SHARED = Path(__file__).resolve().parents[2] / "shared"


def rows(df: pd.DataFrame, cols: tuple[str, ...] = ("user", "item", "rating", "timestamp")) -> list[tuple]:
    return [tuple(r) for r in df[list(cols)].itertuples(index=False)]


def write(path: Path, text: str, gz: bool = False) -> Path:
    data = text.encode("utf-8")
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


# ---------------------------------------------------------------------------------------------
# Amazon 2014
# ---------------------------------------------------------------------------------------------

def test_amazon2014_directory_reviews_and_literal_meta():
    inter, items = read_source(RAW / "amazon2014")
    # Reviews preferred over ratings_Toys.csv: its users A2014U3 do not appear.
    # The duplicate (A2014U2, 0000031852) keeps the later review (line 3), not the last line.
    assert rows(inter) == [
        ("A2014U1", "0000031852", 5.0, 1389657600),
        ("A2014U1", "B00002N8QJ", 2.0, 1390000000),
        ("A2014U2", "0000031852", 4.0, 1310000000),
    ]
    assert list(inter.columns) == ["user", "item", "rating", "timestamp", "review_text", "summary"]
    assert inter["review_text"].tolist() == ["Great toy.", "Broke quickly.", "Better on second look."]
    assert inter["summary"].tolist() == ["Great", "Meh", "Better"]
    assert inter["timestamp"].dtype == np.int64 and inter["rating"].dtype == np.float64

    items = items.set_index("item")
    kid = items.loc["0000031852"]
    assert kid["title"] == "Kid's Puzzle & Game"
    assert kid["brand"] == "Acme"
    # list of lists flattened in order, duplicates dropped
    assert kid["categories"] == "Toys & Games|Puzzles|Games|Board Games"
    assert kid["description"] == "A puzzle. Two lines."
    robot = items.loc["B00002N8QJ"]
    assert (robot["title"], robot["brand"], robot["categories"], robot["description"]) == \
        ("Robot", "", "Toys & Games", "")


def test_amazon2014_ratings_csv_is_user_first():
    inter, items = read_source([RAW / "amazon2014" / "ratings_Toys.csv"])
    assert rows(inter) == [
        ("A2014U1", "0000031852", 5.0, 1389657600),
        ("A2014U3", "B00002N8QJ", 1.0, 1400000000),
        ("A2014U3", "B000BUGCKW", 4.0, 1400000001),
    ]
    assert "review_text" not in inter.columns
    assert len(items) == 0 and list(items.columns) == ["item", "title", "brand", "categories", "description"]


def test_amazon2014_meta_bad_literal_is_reported(tmp_path):
    bad = write(tmp_path / "meta_Toys.json", "{'asin': 'A1', 'title': 'ok'}\n{'asin': 'A2', 'title': \n")
    reviews = RAW / "amazon2014" / "reviews_Toys_5.json.gz"
    with pytest.raises(DataError, match=r"meta_Toys\.json, line 2: malformed Python dict literal"):
        read_source([reviews, bad], "amazon2014")


# ---------------------------------------------------------------------------------------------
# Amazon 2018
# ---------------------------------------------------------------------------------------------

def test_amazon2018_reviews_and_meta():
    inter, items = read_source([RAW / "amazon2018" / "Beauty_5.json", RAW / "amazon2018" / "meta_Beauty.json.gz"])
    assert rows(inter) == [
        ("A18U1", "B0000530HU", 5.0, 1472688000),
        ("A18U2", "B0000530HU", 1.0, 1376784000),
        ("A18U2", "B00006L9LC", 4.0, 1400000000),
    ]
    assert inter["review_text"].tolist() == ["As advertised.", "Smells awful.", ""]
    assert inter["summary"].tolist() == ["Five Stars", "No", "Nice"]
    assert rows(items, ("item", "title", "brand", "categories", "description")) == [
        ("B0000530HU", "Barbasol Shaving Cream & Gel", "Barbasol", "All Beauty|Skin Care",
         "Classic scent. 7 oz bottle."),
        ("B00006L9LC", "", "", "", ""),  # real 2018 meta lines may have empty title/brand
    ]


def test_amazon2018_ratings_csv_is_item_first():
    inter, _ = read_source(RAW / "amazon2018" / "Beauty.csv")
    assert rows(inter) == [
        ("A18U1", "B0000530HU", 5.0, 1472688000),
        ("A18U3", "B00006L9LC", 3.0, 1500000000),
    ]


def test_amazon2018_directory_prefers_reviews_over_ratings_csv():
    inter, items = read_source(RAW / "amazon2018")
    assert set(inter["user"]) == {"A18U1", "A18U2"}  # A18U3 is only in the ratings CSV
    assert "review_text" in inter.columns
    assert len(items) == 2


# ---------------------------------------------------------------------------------------------
# Amazon 2023
# ---------------------------------------------------------------------------------------------

def test_amazon2023_reviews_and_meta():
    inter, items = read_source([RAW / "amazon2023" / "Beauty.jsonl.gz", RAW / "amazon2023" / "meta_Beauty.jsonl"])
    assert rows(inter) == [
        ("AGKHLEW2SOWHNMFQIJGBECAF7INQ", "B00YQ6X8EO", 5.0, 1588687728),  # ms -> s
        ("AGKHLEW2SOWHNMFQIJGBECAF7INQ", "B08BBQ29N5", 4.0, 1588615855),  # parent_asin, not asin
        ("AEZP6Z2C5AVQDZAJECQYZWQRNG3Q", "B097R46CSY", 2.0, 1589665266),  # no parent_asin: asin
    ]
    assert inter["review_text"].tolist() == ["This spray is really nice.", "Good.", "Not for me."]
    assert inter["summary"].tolist() == ["Such a lovely scent", "Works", "Meh"]
    assert rows(items, ("item", "title", "brand", "categories", "description")) == [
        ("B00YQ6X8EO", "Howard LC0008 Leather Conditioner, 8.0 Ounce", "Howard", "Beauty|Skin Care",
         "Conditions leather. Made in USA."),
        ("B08BBQ29N5", "Yes to Tomatoes", "Yes To", "", ""),  # no details["Brand"]: store
    ]


def test_amazon2023_rating_csv_with_header_ms_to_seconds():
    inter, _ = read_source(RAW / "amazon2023" / "Beauty_5core.csv.gz")
    assert rows(inter) == [
        ("AGKHLEW2SOWHNMFQIJGBECAF7INQ", "B00YQ6X8EO", 5.0, 1588687728),
        ("AEZP6Z2C5AVQDZAJECQYZWQRNG3Q", "B08BBQ29N5", 3.0, 1589665266),
    ]


def test_amazon2023_missing_item_field_is_named(tmp_path):
    bad = write(tmp_path / "Beauty.jsonl", '{"user_id": "U1", "rating": 5.0, "timestamp": 1000}\n')
    with pytest.raises(DataError, match=r"Beauty\.jsonl, line 1: missing required field 'parent_asin'"):
        read_source(bad, "amazon2023")


# ---------------------------------------------------------------------------------------------
# generic
# ---------------------------------------------------------------------------------------------

def test_generic_interactions_and_items():
    inter, items = read_source(RAW / "generic")
    # (u1, i1) appears at ts 100 and 50: the later one (rating 5) is kept; "NA" stays an id
    assert rows(inter) == [
        ("u1", "i1", 5.0, 100),
        ("u1", "i2", 2.5, 200),
        ("u2", "i1", 4.0, 150),
        ("u2", "NA", 1.0, 300),
    ]
    assert rows(items, ("item", "title", "brand", "categories", "description")) == [
        ("i1", "Blue & Red Ball", "Acme", "Toys|Balls", "A ball"),
        ("i2", "Kite, large", "", "Outdoor", ""),
        ("NA", "Mystery", "", "", ""),
    ]


def test_generic_without_rating_column_is_implicit():
    inter, items = read_source(RAW / "generic_implicit")
    assert inter["user"].tolist() == ["7", "7", "8"]
    assert inter["item"].tolist() == ["100", "101", "100"]
    assert inter["rating"].isna().all()
    assert inter["timestamp"].tolist() == [1356220800, 1356220801, 1356220900]
    assert len(items) == 0


def test_generic_bad_rating_reports_line(tmp_path):
    bad = write(tmp_path / "inter.csv", "user_id,item_id,rating\nu1,i1,5\nu1,i2,4\nu2,i1,five\nu2,i3,1\n")
    with pytest.raises(DataError, match=r"inter\.csv, line 4: non-numeric rating 'five'") as err:
        read_source(bad)
    assert err.value.line == 4


def test_generic_wrong_field_count_reports_line(tmp_path):
    bad = write(tmp_path / "inter.csv", "user_id,item_id,rating\nu1,i1,5\nu1,i2,4,99\n")
    with pytest.raises(DataError, match=r"inter\.csv, line 3: wrong number of fields"):
        read_source(bad)


def test_generic_missing_column_names_the_columns(tmp_path):
    bad = write(tmp_path / "inter.csv", "user_id,product,rating\nu1,i1,5\n")
    with pytest.raises(DataError, match=r"missing column\(s\) item_id; the file has columns user_id, product, rating"):
        read_source(bad, "generic")


def test_generic_parquet(tmp_path):
    pytest.importorskip("pyarrow")
    pd.DataFrame({"user_id": [1, 1, 2], "item_id": [10, 11, 10], "timestamp": [5, 6, 7]}).to_parquet(
        tmp_path / "inter.parquet")
    pd.DataFrame({"item_id": [10, 11], "title": ["Ten", "Eleven"],
                  "categories": [["A", "B"], ["C"]]}).to_parquet(tmp_path / "items.parquet")
    assert detect_format(tmp_path) == "generic"
    inter, items = read_source(tmp_path)
    assert inter["user"].tolist() == ["1", "1", "2"] and inter["item"].tolist() == ["10", "11", "10"]
    assert inter["rating"].isna().all()
    assert rows(items, ("item", "title", "categories")) == [("10", "Ten", "A|B"), ("11", "Eleven", "C")]


# ---------------------------------------------------------------------------------------------
# detection
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("relpath, expected", [
    ("amazon2014/reviews_Toys_5.json.gz", "amazon2014"),
    ("amazon2014/ratings_Toys.csv", "amazon2014"),
    ("amazon2014/meta_Toys.json.gz", "amazon2014"),
    ("amazon2014", "amazon2014"),
    ("amazon2018/Beauty_5.json", "amazon2018"),
    ("amazon2018/Beauty.csv", "amazon2018"),
    ("amazon2018/meta_Beauty.json.gz", "amazon2018"),
    ("amazon2018", "amazon2018"),
    ("amazon2023/Beauty.jsonl.gz", "amazon2023"),
    ("amazon2023/meta_Beauty.jsonl", "amazon2023"),
    ("amazon2023/Beauty_5core.csv.gz", "amazon2023"),
    ("amazon2023", "amazon2023"),
    ("generic/interactions.csv", "generic"),
    ("generic/items.csv", "generic"),
    ("generic", "generic"),
    ("generic_implicit", "generic"),
])
def test_detect_format(relpath, expected):
    assert detect_format(RAW / relpath) == expected
    assert detect_format([RAW / relpath]) == expected


def test_detect_headerless_csv_by_official_name(tmp_path):
    # 2014 (user,item,...) and 2018 (item,user,...) CSVs are told apart by the file name
    renamed = shutil.copy(RAW / "amazon2018" / "Beauty.csv", tmp_path / "ratings_Beauty.csv")
    assert detect_format(renamed) == "amazon2014"


def test_detect_failure_asks_for_format(tmp_path):
    odd = write(tmp_path / "data.csv", "a,b,c\n1,2,3\n")
    with pytest.raises(DataError, match="--format"):
        detect_format(odd)
    with pytest.raises(DataError, match="--format"):
        read_source(odd)


def test_mixed_formats_ask_for_format():
    with pytest.raises(DataError, match="different formats.*--format"):
        detect_format([RAW / "amazon2014" / "reviews_Toys_5.json.gz", RAW / "amazon2023" / "Beauty.jsonl.gz"])


def test_gzip_detected_by_magic_not_suffix(tmp_path):
    plain_name = write(tmp_path / "Beauty_5.json", (RAW / "amazon2018" / "Beauty_5.json").read_text(), gz=True)
    inter, _ = read_source(plain_name)
    assert len(inter) == 3 and inter["user"].iloc[0] == "A18U1"


# ---------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------

def _review(user: str, item: str, rating: object = 5.0, ts: int = 1) -> str:
    return (f'{{"reviewerID": "{user}", "asin": "{item}", "overall": {rating}, '
            f'"unixReviewTime": {ts}, "verified": true}}')


@pytest.mark.parametrize("gz", [False, True])
def test_malformed_json_names_file_and_line(tmp_path, gz):
    text = "\n".join([_review("U1", "I1"), _review("U2", "I1"), '{"reviewerID": "U3", "asin": ', _review("U4", "I1")])
    bad = write(tmp_path / "Beauty_5.json.gz", text + "\n", gz=gz)
    with pytest.raises(DataError) as err:
        read_source(bad, "amazon2018")
    message = str(err.value)
    assert "Beauty_5.json.gz" in message and "line 3" in message and "malformed JSON" in message
    assert err.value.line == 3


def test_missing_field_is_named(tmp_path):
    bad = write(tmp_path / "Beauty_5.json",
                _review("U1", "I1") + "\n" + '{"reviewerID": "U2", "asin": "I1", "unixReviewTime": 5}\n')
    with pytest.raises(DataError, match=r"line 2: missing required field 'overall'"):
        read_source(bad)


def test_non_numeric_rating_in_json(tmp_path):
    bad = write(tmp_path / "Beauty_5.json", _review("U1", "I1") + "\n" + _review("U2", "I1", '"great"') + "\n")
    with pytest.raises(DataError, match=r"line 2: non-numeric rating 'great' in field 'overall'"):
        read_source(bad)


def test_headerless_csv_wrong_field_count(tmp_path):
    bad = write(tmp_path / "Beauty.csv", "B0000530HU,A1,5.0,100\nB0000530HU,A2,5.0\n")
    with pytest.raises(DataError, match=r"Beauty\.csv, line 2: "):
        read_source(bad, "amazon2018")
    bad = write(tmp_path / "Beauty.csv", "B0000530HU,A1,5.0,100\nB0000530HU,A2,x,101\n")
    with pytest.raises(DataError, match=r"Beauty\.csv, line 2: non-numeric rating 'x'"):
        read_source(bad, "amazon2018")


@pytest.mark.parametrize("name, gz, fmt", [
    ("Beauty_5.json", False, None),
    ("Beauty_5.json.gz", True, None),
    ("Beauty_5.json", False, "amazon2018"),
    ("Beauty.csv", False, "amazon2018"),
    ("inter.csv", False, "generic"),
])
def test_empty_file(tmp_path, name, gz, fmt):
    empty = write(tmp_path / name, "", gz=gz)
    with pytest.raises(DataError, match="empty"):
        read_source(empty, fmt)


def test_header_only_csv_is_empty(tmp_path):
    empty = write(tmp_path / "inter.csv", "user_id,item_id\n")
    with pytest.raises(DataError, match="empty"):
        read_source(empty)


def test_unknown_format_lists_formats():
    with pytest.raises(DataError) as err:
        read_source(RAW / "generic", "amazon2020")
    assert all(name in str(err.value) for name in FORMATS)


def test_missing_path(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_source(tmp_path / "nope.json.gz")


def test_blank_lines_are_skipped_and_numbering_kept(tmp_path):
    text = _review("U1", "I1") + "\n\n" + _review("U2", "I1") + "\n" + "not json\n"
    bad = write(tmp_path / "Beauty_5.json", text)
    with pytest.raises(DataError, match="line 4"):
        read_source(bad, "amazon2018")
    csv_text = "user_id,item_id,rating\nu1,i1,5\n\nu2,i1,bad\n"
    with pytest.raises(DataError, match="line 4"):
        read_source(write(tmp_path / "inter.csv", csv_text))


# ---------------------------------------------------------------------------------------------
# dedupe and k-core
# ---------------------------------------------------------------------------------------------

def test_dedupe_keeps_latest_timestamp(tmp_path):
    text = "\n".join([_review("U1", "I1", 1.0, 300), _review("U1", "I1", 2.0, 100), _review("U1", "I1", 3.0, 200)])
    inter, _ = read_source(write(tmp_path / "Beauty_5.json", text + "\n"))
    assert rows(inter) == [("U1", "I1", 1.0, 300)]


def test_min_core(tmp_path):
    text = "user_id,item_id\n" + "".join(f"u{u},i{i}\n" for u in range(3) for i in range(3)) + "u9,i9\n"
    path = write(tmp_path / "inter.csv", text)
    assert len(read_source(path)[0]) == 10
    inter, _ = read_source(path, min_core=3)
    assert len(inter) == 9 and "u9" not in set(inter["user"])


# ---------------------------------------------------------------------------------------------
# real data (../shared, absent on a user's machine)
# ---------------------------------------------------------------------------------------------

def _shared(rel: str) -> Path:
    path = SHARED / "data" / rel
    if not path.exists():
        pytest.skip(f"{path} not available")
    return path


def test_real_all_beauty_2018():
    path = _shared("amazon2018/All_Beauty_5.json.gz")
    assert detect_format(path) == "amazon2018"
    start = time.perf_counter()
    inter, items = read_source(path)
    elapsed = time.perf_counter() - start
    # 5,269 raw reviews; 1,040 (user, item) pairs occur more than once, holding 1,177 extra
    # rows, so 5,269 - 1,177 = 4,092 distinct pairs remain.
    assert len(inter) == 4092
    assert inter["user"].nunique() == 991 and inter["item"].nunique() == 85
    assert not inter.duplicated(["user", "item"]).any()
    assert len(items) == 0
    assert inter["review_text"].str.len().gt(0).mean() > 0.99
    assert elapsed < 5.0  # about 0.2 s on the dev machine; a loose bound against pathologies


def test_real_all_beauty_2018_raw_counts():
    import bench.data.readers as readers

    raw = readers._READERS[("amazon2018", readers.REVIEWS)](_shared("amazon2018/All_Beauty_5.json.gz"))
    assert len(raw) == 5269
    assert raw["user"].nunique() == 991 and raw["item"].nunique() == 85
    pair_counts = raw.groupby(["user", "item"]).size()
    assert (pair_counts > 1).sum() == 1040
    assert raw["rating"].value_counts().to_dict() == {5.0: 4649, 4.0: 332, 1.0: 115, 3.0: 109, 2.0: 64}


def test_real_all_beauty_2023_csv():
    path = _shared("amazon2023/All_Beauty.csv")
    assert detect_format(path) == "amazon2023"
    inter, _ = read_source(path)
    assert len(inter) == 2535
    assert inter["user"].nunique() == 253 and inter["item"].nunique() == 356
    first = inter.iloc[0]
    assert (first["user"], first["item"], first["rating"], first["timestamp"]) == \
        ("AFSKPY37N3C43SOI5IEXEK5JSIYA", "B07J3GH1W1", 5.0, 1547589356)
    assert not math.isnan(inter["rating"].mean())


def test_directory_skips_stray_files(tmp_path):
    for f in (RAW / "amazon2018").iterdir():
        shutil.copy(f, tmp_path / f.name)
    write(tmp_path / "notes.csv", "a,b,c\n1,2,3\n")
    write(tmp_path / "README.md", "not data\n")
    assert detect_format(tmp_path) == "amazon2018"
    inter, items = read_source(tmp_path)
    assert len(inter) == 3 and len(items) == 2
    with pytest.raises(DataError, match="notes.csv"):  # named explicitly: an error, not a skip
        read_source([tmp_path / "notes.csv"], "amazon2018")
