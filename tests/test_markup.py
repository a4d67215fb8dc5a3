"""HTML in official metadata: markup is stripped, a title that is only markup is missing, and split.json counts
those items. Hand-made fixture modelled on real 2018 lines (one category's titles are nearly all the unterminated
fragment `<span class="a-size-medium a-color-secondary"`; descriptions carry <i>, <br>, <div> and <a> tags)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pandas as pd
import pytest

from bench.data.canonical import clean_text, make_items
from bench.data.readers import read_source
from bench.data.splits import SplitSpec, load_split, make_split, write_split

SPAN = '<span class="a-size-medium a-color-secondary"'
META = [  # asin, title, description (a list, as in the 2018 files)
    ("B01", SPAN, ["<i>Soft</i> cotton, <b>machine</b> washable.<br>Made in Portugal."]),
    ("B02", SPAN + ">  </span>", ['<div class="aplus"> <h4>Gift&nbsp;Box</h4><br />Ships <a href="x">free</a>.</div>']),
    ("B03", "Tom &amp; Jerry <i>Deluxe</i> Set", ["Plain text, 5 < 6 and I <3 it."]),
    ("B04", "Great Card " + SPAN, []),
    ("B05", "", []),
]


def _write_raw(directory: Path) -> list[Path]:
    meta = directory / "meta_Fixture.json.gz"
    with gzip.open(meta, "wt") as fh:
        for asin, title, description in META:
            fh.write(json.dumps({"asin": asin, "title": title, "description": description, "brand": "<b>Acme</b>",
                                 "category": ["Fixture", "<i>Sub</i>"]}) + "\n")
    reviews = directory / "Fixture_5.json"
    with reviews.open("w") as fh:
        for u in range(4):
            for i, (asin, _, _) in enumerate(META):
                fh.write(json.dumps({"reviewerID": f"U{u}", "asin": asin, "overall": 5.0,
                                     "unixReviewTime": 1_500_000_000 + 100 * u + i,
                                     "reviewText": "Loved it!<br /><br />Would buy again.", "summary": "ok"}) + "\n")
    return [reviews, meta]


@pytest.mark.parametrize(("raw", "clean"), [
    (SPAN, ""),  # an unterminated tag alone: nothing left
    (SPAN + ">Real Title</span>", "Real Title"),
    ("<i>Soft</i> cotton, <b>machine</b> washable.<br>Made in Portugal.", "Soft cotton, machine washable. Made in Portugal."),
    ('<div class="aplus"> <h4>Gift&nbsp;Box</h4><br />Ships <a href="x">free</a>.</div>', "Gift Box Ships free."),
    ("Tom &amp; Jerry", "Tom & Jerry"),  # entities as before
    ("5 < 6 and I <3 it, AT&T", "5 < 6 and I <3 it, AT&T"),  # a bare "<" is text, not markup
    ("Hello <script>var x = 1;</script>world<!-- note -->", "Hello world"),
    (["<p>one</p>", "two"], "one two"),
    (None, ""),
])
def test_clean_text_strips_markup(raw, clean):
    assert clean_text(raw) == clean


def test_markup_only_title_is_missing_and_flagged():
    items = make_items(pd.DataFrame(
        {"item": [a for a, _, _ in META], "title": [t for _, t, _ in META]}))
    assert items["title"].tolist() == ["", "", "Tom & Jerry Deluxe Set", "Great Card", ""]
    # only a title that had something, all of it markup, counts (an empty source title is just missing)
    assert items["title_markup_only"].tolist() == [True, True, False, False, False]


def test_split_json_counts_items_whose_title_was_only_markup(tmp_path):
    interactions, items = read_source(_write_raw(tmp_path))
    by_item = items.set_index("item")
    assert by_item.loc["B01", "title"] == "" and by_item.loc["B03", "title"] == "Tom & Jerry Deluxe Set"
    assert by_item.loc["B01", "description"] == "Soft cotton, machine washable. Made in Portugal."
    assert by_item.loc["B02", "description"] == "Gift Box Ships free."
    assert by_item.loc["B01", "brand"] == "Acme" and by_item.loc["B01", "categories"] == "Fixture|Sub"
    frames = make_split(interactions, items, SplitSpec("random", seed=0))
    assert frames["stats"]["n_items_title_markup_only"] == 2
    directory = tmp_path / "split"
    write_split(frames, directory, SplitSpec("random", seed=0), "fixture")
    meta = json.loads((directory / "split.json").read_text())
    assert meta["n_items_title_markup_only"] == 2
    split = load_split(directory)
    assert split.stats["n_items_title_markup_only"] == 2
    texts = " ".join(split.items["title"]) + " ".join(split.items["description"])
    assert not any(tag in texts for tag in ("<span", "<i>", "<br", "<div", "</")) and "5 < 6" in texts
    assert (directory / "items.csv").read_text().splitlines()[0] == "item_id,title,brand,categories,description"
    reviews = (directory / "reviews.csv").read_text()
    assert "<br" not in reviews and "Loved it! Would buy again." in reviews


def test_items_without_the_flag_count_zero():
    """Canonical tables cached before the flag existed (no column) still split."""
    inter = pd.DataFrame({"user": ["u"] * 3, "item": ["a", "b", "c"], "rating": [5.0] * 3, "timestamp": [1, 2, 3]})
    items = pd.DataFrame({"item": ["a"], "title": ["A"], "brand": [""], "categories": [""], "description": [""]})
    assert make_split(inter, items, SplitSpec("random"))["stats"]["n_items_title_markup_only"] == 0
