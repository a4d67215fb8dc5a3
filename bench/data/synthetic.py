"""A deterministic synthetic Amazon category, written in the official 2018 file format.

`generate(out_dir)` writes two files that look exactly like a real 2018 download, so the
same readers as for real data are exercised end to end:

    <out_dir>/Synthetic_5.json.gz     reviews, one JSON object per line (overall, vote, verified,
                                      reviewTime "MM D, YYYY", reviewerID, asin, reviewerName,
                                      reviewText, summary, unixReviewTime)
    <out_dir>/meta_Synthetic.json.gz  item metadata, one JSON object per line with the real 2018
                                      keys (category, tech1, description, fit, title, also_buy,
                                      tech2, brand, feature, rank, also_view, main_cat,
                                      similar_item, date, price, asin, imageURL, imageURLHighRes,
                                      details)

Same arguments give byte-identical files (numpy ``default_rng(seed)``, fixed key order,
gzip header with mtime 0 and an empty file name).

Generative model (planted structure, so that models can learn and diversity metrics mean
something):

1. **Catalogue.** 8 top categories, each with 2-4 subcategories; a category path is
   ``[top, subcategory, leaf]`` (e.g. ``["Toys &amp; Games", "Puzzles", "Jigsaw Puzzles"]`` as written).
   20 brands, each tied to one top category (``brand j`` belongs to category ``j % 8``).
   Item ``i`` draws a top category from a mildly uneven distribution, a subcategory
   uniformly, a brand of its category, a popularity ``pop_i ~ LogNormal(0, 1)`` and a
   quality ``q_i ~ Normal(0, 0.5)``.
2. **Titles.** ``"<Brand> <Adjective> <Noun>"`` from per-category word lists. About 6% of
   items are near-duplicates of an earlier item (same brand, noun and category, another
   adjective or a pack size; titles are never exact duplicates), giving the redundancy that
   diversity metrics should notice.
   One brand is spelled with an HTML entity (``"Hart &amp; Finch"``) and ~1.5% of titles end with
   ``"&amp; <Accessory>"``, as real 2018 titles do; category names escape ``&`` as ``&amp;``.
3. **Users.** Taste ``theta_u ~ Dirichlet(0.15 * 1)`` over the top categories (concentrated
   on 1-3 categories) and a favourite brand drawn from the brands of the user's top category.
   Interaction count ``n_u = 5 + NegBinomial(2, mean = mean_interactions - 5)``, capped at
   half the catalogue.
4. **Interactions.** ``n_u`` distinct items sampled without replacement with probability
   ``∝ pop_i * (theta_u[cat_i] + 0.005) * (3 if brand_i is the favourite brand else 1)``:
   popularity explains part of the data, taste the rest, so collaborative filtering beats
   popularity clearly. Items nobody sampled are then given to one user, chosen with
   probability ``∝ theta_u[cat_i]``, so every item has ≥ 1 interaction and every user ≥ 5
   (a 5-core in users, not necessarily in items, like the real files).
5. **Ratings.** With ``match = theta_u[cat_i] / max(theta_u)``, a rating is low (1-3) with
   probability ``sigmoid(-1.95 + 2.0 * (1 - match) - q_i - 0.7 * [favourite brand])`` and then
   1/2/3 with probabilities .3/.25/.45; otherwise it is 5 with probability
   ``sigmoid(0.3 + 1.5 * match + q_i)``, else 4. About 15-25% of ratings are ≤ 3, so
   preference pairs with low-rated items exist.
6. **Time.** Each user starts on a random day in 2010-2016 and reviews their (shuffled) items
   on strictly increasing days, 1 + Geometric(1/20) days apart; timestamps are midnight UTC
   as in the real files.
7. **Text.** Review text and summary come from rating-dependent templates; ~12% of reviews
   carry a helpful-vote string (``"3"``, ``"1,204"``).
"""

from __future__ import annotations

import datetime as _dt
import gzip
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from bench.errors import ConfigError
from bench.io import atomic_path

logger = logging.getLogger(__name__)

CATEGORY = "Synthetic"  # the file-name category: Synthetic_5.json.gz, meta_Synthetic.json.gz
REVIEWS_FILE = f"{CATEGORY}_5.json.gz"
META_FILE = f"meta_{CATEGORY}.json.gz"

# Size presets for the `size` knob: tiny for tests in seconds, small is the default.
SIZES: dict[str, dict[str, int]] = {
    "tiny": {"n_users": 120, "n_items": 80, "mean_interactions": 10},
    "small": {"n_users": 300, "n_items": 200, "mean_interactions": 12},
    "medium": {"n_users": 3000, "n_items": 1500, "mean_interactions": 12},
}

# (top category, adjectives, [(subcategory, leaf, nouns), ...])
_CATALOGUE: list[tuple[str, list[str], list[tuple[str, str, list[str]]]]] = [
    ("Toys & Games", ["Classic", "Deluxe", "Colorful", "Wooden", "Magnetic", "Junior"], [
        ("Puzzles", "Jigsaw Puzzles", ["Jigsaw Puzzle", "Floor Puzzle", "Brain Teaser"]),
        ("Building Toys", "Building Sets", ["Block Set", "Construction Kit", "Marble Run"]),
        ("Games", "Board Games", ["Board Game", "Card Game", "Dice Game"]),
    ]),
    ("Sports & Outdoors", ["Lightweight", "Rugged", "Compact", "Waterproof", "Pro", "Adjustable"], [
        ("Camping & Hiking", "Tents", ["Dome Tent", "Backpacking Tent", "Trekking Pole"]),
        ("Exercise & Fitness", "Yoga", ["Yoga Mat", "Resistance Band", "Foam Roller"]),
        ("Cycling", "Accessories", ["Bike Light", "Bike Lock", "Water Bottle Cage"]),
        ("Fan Shop", "Apparel", ["Team Cap", "Jersey", "Fan Scarf"]),
    ]),
    ("Musical Instruments", ["Vintage", "Studio", "Acoustic", "Premium", "Beginner", "Tuned"], [
        ("Guitars", "Acoustic Guitars", ["Acoustic Guitar", "Travel Guitar", "Guitar Strings"]),
        ("Drums & Percussion", "Hand Percussion", ["Cajon", "Tambourine", "Drum Sticks"]),
        ("Instrument Accessories", "Tuners", ["Clip-On Tuner", "Capo", "Metronome"]),
    ]),
    ("Beauty", ["Hydrating", "Gentle", "Organic", "Nourishing", "Fragrance-Free", "Radiant"], [
        ("Skin Care", "Face", ["Face Cream", "Serum", "Cleanser"]),
        ("Hair Care", "Shampoos", ["Shampoo", "Conditioner", "Hair Oil"]),
        ("Fragrance", "Women's", ["Eau de Parfum", "Body Mist"]),
        ("Makeup", "Lips", ["Lip Balm", "Lipstick", "Lip Gloss"]),
    ]),
    ("Grocery & Gourmet Food", ["Roasted", "Spicy", "Sweet", "Gourmet", "Organic", "Smoked"], [
        ("Beverages", "Coffee", ["Coffee Beans", "Green Tea", "Hot Cocoa"]),
        ("Snack Foods", "Chips & Crisps", ["Potato Chips", "Trail Mix", "Pretzels"]),
        ("Cooking & Baking", "Spices", ["Sea Salt", "Chili Flakes", "Vanilla Extract"]),
    ]),
    ("Industrial & Scientific", ["Heavy-Duty", "Precision", "Stainless", "Digital", "Sterile"], [
        ("Lab Supplies", "Glassware", ["Beaker Set", "Test Tube Rack", "Pipette"]),
        ("Power Tools", "Drills", ["Cordless Drill", "Drill Bit Set"]),
    ]),
    ("Office Products", ["Smooth", "Refillable", "Recycled", "Ergonomic", "Bold", "Fine"], [
        ("Writing Instruments", "Pens", ["Gel Pen", "Fountain Pen", "Highlighter"]),
        ("Paper", "Notebooks", ["Spiral Notebook", "Sticky Notes", "Legal Pad"]),
        ("Desk Accessories", "Organizers", ["Desk Organizer", "Stapler"]),
    ]),
    ("Pet Supplies", ["Durable", "Cozy", "Natural", "Squeaky", "Washable", "Grain-Free"], [
        ("Dogs", "Toys", ["Chew Toy", "Rope Toy", "Dog Bed"]),
        ("Cats", "Treats", ["Cat Treats", "Scratching Post", "Cat Tunnel"]),
        ("Fish & Aquatic Pets", "Aquarium", ["Aquarium Filter", "Fish Food"]),
    ]),
]
N_CATEGORIES = len(_CATALOGUE)

# 20 brands; brand j belongs to top category j % 8. One carries an HTML entity, as real ones do.
_BRANDS = [
    "Acmetoy", "Trailbound", "Sonoro", "Lumiere", "Harvest Lane", "Forgeline", "Inkwell", "Pawsome",
    "Hart &amp; Finch", "Summitline", "Melodica", "Purely", "Pantry Co", "Labcraft", "Paperly",
    "Whiskerly", "Kidwise", "Peakform", "Soundbay", "Glowe",
]

_PACKS = ["(2-Pack)", "(3-Pack)", ", Large", ", Small", ", 12 oz", ", Travel Size"]
_ACCESSORIES = ["Case", "Refill", "Storage Bag", "Stand", "Gift Box"]
_FIRST_NAMES = [
    "Alex", "Maria", "John", "Linda", "Sam", "Priya", "Chen", "Fatima", "Tom", "Olga", "Kenji",
    "Grace", "Diego", "Emma", "Noah", "Aisha", "Lucas", "Mei", "Omar", "Sofia",
]

_TEXTS: dict[int, list[str]] = {
    5: ["Love this {noun}! Works perfectly and the quality is great.",
        "Best {noun} I have owned. Highly recommend {brand}.",
        "Exactly as described, and it arrived fast. Will buy again."],
    4: ["Good {noun}, does what it should. Minor issues but happy overall.",
        "Nice quality for the price. Would recommend.",
        "Solid {noun} from {brand}; not perfect but close."],
    3: ["It's okay. The {noun} works but feels a bit cheap.",
        "Average {noun}. Nothing special for the price.",
        "Does the job, but I expected more from {brand}."],
    2: ["Disappointed with this {noun}; it stopped working after a few weeks.",
        "Not great. The quality is worse than the pictures suggest."],
    1: ["Terrible {noun}. Broke on the first day, returning it.",
        "Do not buy. Complete waste of money."],
}
_SUMMARIES: dict[int, list[str]] = {
    5: ["Five Stars", "Love it", "Great {noun}"],
    4: ["Four Stars", "Pretty good", "Good value"],
    3: ["Three Stars", "It's okay", "Meh"],
    2: ["Two Stars", "Disappointed", "Not worth it"],
    1: ["One Star", "Broke quickly", "Waste of money"],
}

_START_DAY = (_dt.date(2010, 1, 1) - _dt.date(1970, 1, 1)).days
_END_START_DAY = (_dt.date(2016, 12, 31) - _dt.date(1970, 1, 1)).days
_ID_CHARS = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"))


def _escape(name: str) -> str:
    """Category names in 2018 meta files escape '&' as '&amp;'."""
    return name.replace("&", "&amp;")


def _sigmoid(x: np.ndarray | float) -> np.ndarray | float:
    return 1.0 / (1.0 + np.exp(-x))


def _unique_ids(rng: np.random.Generator, n: int, prefix: str, length: int) -> list[str]:
    """n distinct Amazon-looking ids, e.g. reviewerID 'A' + 13 chars, asin 'B0' + 8 chars."""
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:
        ident = prefix + "".join(_ID_CHARS[rng.integers(0, len(_ID_CHARS), size=length)])
        if ident not in seen:
            seen.add(ident)
            out.append(ident)
    return out


def _review_time(unix: int) -> str:
    d = _dt.datetime.fromtimestamp(unix, tz=_dt.timezone.utc)
    return f"{d.month:02d} {d.day}, {d.year}"  # the 2018 format: "09 1, 2016"


def _write_json_lines_gz(path: Path, records: list[dict[str, Any]]) -> None:
    """Write JSON lines gzip-compressed, atomically and byte-reproducibly (mtime 0, no name)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
            gz.write("".join(json.dumps(rec, ensure_ascii=False) + "\n" for rec in records).encode("utf-8"))


def generate(out_dir: Path, *, n_users: int = 300, n_items: int = 200, seed: int = 0,
             mean_interactions: int = 12) -> dict[str, Any]:
    """Write `Synthetic_5.json.gz` and `meta_Synthetic.json.gz` into `out_dir`.

    Args:
        out_dir: folder to write into (created if missing).
        n_users: number of users (every one gets ≥ 5 interactions).
        n_items: number of items (every one gets ≥ 1 interaction).
        seed: the only source of randomness; same arguments -> byte-identical files.
        mean_interactions: mean interactions per user (≥ 5), before the item-coverage top-up.

    Returns:
        ``{"reviews": Path, "meta": Path, "n_users": int, "n_items": int,
        "n_interactions": int, "n_low_ratings": int}`` (low = rating ≤ 3).
    """
    if n_users < 1:
        raise ConfigError(f"synthetic data: n_users must be ≥ 1, got {n_users}")
    if n_items < 10:
        raise ConfigError(f"synthetic data: n_items must be ≥ 10 (users need ≥ 5 distinct items), got {n_items}")
    if mean_interactions < 5:
        raise ConfigError(f"synthetic data: mean_interactions must be ≥ 5 (a 5-core), got {mean_interactions}")
    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)

    # 1. catalogue -------------------------------------------------------------------------
    cat_weights = rng.dirichlet(np.full(N_CATEGORIES, 4.0))  # mildly uneven category sizes
    item_cat = rng.choice(N_CATEGORIES, size=n_items, p=cat_weights)
    item_sub = np.array([rng.integers(len(_CATALOGUE[c][2])) for c in item_cat])
    brands_of = [[b for b in range(len(_BRANDS)) if b % N_CATEGORIES == c] for c in range(N_CATEGORIES)]
    item_brand = np.array([brands_of[c][rng.integers(len(brands_of[c]))] for c in item_cat])
    pop = rng.lognormal(0.0, 1.0, size=n_items)
    quality = rng.normal(0.0, 0.5, size=n_items)

    titles: list[str] = []
    nouns: list[str] = []
    adjs: list[str] = []
    for i in range(n_items):
        top, adjectives, subs = _CATALOGUE[item_cat[i]]
        if i >= 10 and rng.random() < 0.06:
            # near-duplicate of an earlier item: same brand, noun and category path,
            # another adjective or a pack size
            j = int(rng.integers(i))
            item_cat[i], item_sub[i], item_brand[i] = item_cat[j], item_sub[j], item_brand[j]
            top, adjectives, subs = _CATALOGUE[item_cat[i]]
            noun = nouns[j]
            if rng.random() < 0.5:
                others = [a for a in adjectives if a != adjs[j]]
                adj = others[rng.integers(len(others))]
                title = f"{_BRANDS[item_brand[i]]} {adj} {noun}"
            else:
                adj = adjs[j]
                title = f"{titles[j]} {_PACKS[rng.integers(len(_PACKS))]}".replace(" ,", ",")
        else:
            noun_list = subs[item_sub[i]][2]
            noun = noun_list[rng.integers(len(noun_list))]
            adj = adjectives[rng.integers(len(adjectives))]
            title = f"{_BRANDS[item_brand[i]]} {adj} {noun}"
            if rng.random() < 0.015:
                title += f" &amp; {_ACCESSORIES[rng.integers(len(_ACCESSORIES))]}"
        base, k = title, 0
        while title in titles:  # near, never exact, duplicates (O(n^2) but n_items is small)
            title = f"{base} {_PACKS[k]}".replace(" ,", ",") if k < len(_PACKS) else f"{base} (Model {k})"
            k += 1
        titles.append(title)
        nouns.append(noun)
        adjs.append(adj)
    asins = _unique_ids(rng, n_items, "B0", 8)
    prices = np.round(rng.lognormal(np.log(15.0), 0.6, size=n_items), 2)

    # 2. users -------------------------------------------------------------------------------
    theta = rng.dirichlet(np.full(N_CATEGORIES, 0.15), size=n_users)
    fav_brand = np.empty(n_users, dtype=np.int64)
    for u in range(n_users):
        top_c = int(np.argmax(theta[u]))
        fav_brand[u] = brands_of[top_c][rng.integers(len(brands_of[top_c]))]
    extra = max(mean_interactions - 5, 0)
    n_per_user = 5 + (rng.negative_binomial(2, 2.0 / (2.0 + extra), size=n_users) if extra else 0)
    n_per_user = np.minimum(n_per_user, n_items // 2)

    # 3. interactions ------------------------------------------------------------------------
    user_items: list[list[int]] = []
    for u in range(n_users):
        score = pop * (theta[u][item_cat] + 0.005) * np.where(item_brand == fav_brand[u], 3.0, 1.0)
        picks = rng.choice(n_items, size=int(n_per_user[u]), replace=False, p=score / score.sum())
        user_items.append([int(x) for x in picks])
    counts = np.zeros(n_items, dtype=np.int64)
    for items in user_items:
        counts[items] += 1
    for i in np.flatnonzero(counts == 0):
        w = theta[:, item_cat[i]] + 1e-6
        u = int(rng.choice(n_users, p=w / w.sum()))
        user_items[u].append(int(i))  # i had no interactions, so it is not in user u's list yet

    # 4. ratings, time, text -----------------------------------------------------------------
    reviewer_ids = _unique_ids(rng, n_users, "A", 13)
    names = [
        "Amazon Customer" if rng.random() < 0.1
        else f"{_FIRST_NAMES[rng.integers(len(_FIRST_NAMES))]} {chr(65 + int(rng.integers(26)))}."
        for _ in range(n_users)
    ]
    reviews: list[tuple[int, int, dict[str, Any]]] = []
    for u in range(n_users):
        items = np.array(user_items[u])
        rng.shuffle(items)
        day = int(rng.integers(_START_DAY, _END_START_DAY))
        match = theta[u][item_cat[items]] / theta[u].max()
        fav = (item_brand[items] == fav_brand[u]).astype(float)
        p_low = _sigmoid(-1.95 + 2.0 * (1.0 - match) - quality[items] - 0.7 * fav)
        p_five = _sigmoid(0.3 + 1.5 * match + quality[items])
        for k, i in enumerate(items):
            if rng.random() < p_low[k]:
                r = rng.random()
                rating = 1 if r < 0.3 else (2 if r < 0.55 else 3)
            else:
                rating = 5 if rng.random() < p_five[k] else 4
            unix = day * 86400
            day += 1 + int(rng.geometric(1.0 / 20.0))
            fill = {"noun": nouns[i].lower(), "brand": _BRANDS[item_brand[i]]}
            rec: dict[str, Any] = {"overall": float(rating)}
            if rng.random() < 0.12:
                votes = int(rng.geometric(0.3)) + 1 if rng.random() < 0.97 else int(rng.integers(1000, 3000))
                rec["vote"] = f"{votes:,}"
            rec.update({
                "verified": bool(rng.random() < 0.85),
                "reviewTime": _review_time(unix),
                "reviewerID": reviewer_ids[u],
                "asin": asins[i],
                "reviewerName": names[u],
                "reviewText": _TEXTS[rating][rng.integers(len(_TEXTS[rating]))].format(**fill),
                "summary": _SUMMARIES[rating][rng.integers(len(_SUMMARIES[rating]))].format(**fill),
                "unixReviewTime": unix,
            })
            reviews.append((int(i), unix, rec))
    reviews.sort(key=lambda r: (r[0], r[1], r[2]["reviewerID"]))  # real files group by item

    # 5. metadata ----------------------------------------------------------------------------
    by_group: dict[tuple[int, int], list[int]] = {}
    for i in range(n_items):
        by_group.setdefault((int(item_cat[i]), int(item_sub[i])), []).append(i)
    rank_order = np.argsort(-pop, kind="stable")
    rank = np.empty(n_items, dtype=np.int64)
    rank[rank_order] = np.arange(1, n_items + 1) * 37 + 5
    meta: list[dict[str, Any]] = []
    for i in range(n_items):
        top, _, subs = _CATALOGUE[item_cat[i]]
        sub, leaf, _ = subs[item_sub[i]]
        peers = [j for j in by_group[(int(item_cat[i]), int(item_sub[i]))] if j != i]
        also_buy = [asins[j] for j in peers[: int(rng.integers(0, 4))]]
        also_view = [asins[j] for j in peers[-int(rng.integers(0, 4)):]] if peers else []
        brand = _BRANDS[item_brand[i]]
        meta.append({
            "category": [_escape(top), _escape(sub), _escape(leaf)],
            "tech1": "",
            "description": [f"A {nouns[i].lower()} from {brand} for {sub.lower()} fans."],
            "fit": "",
            "title": titles[i],
            "also_buy": also_buy,
            "tech2": "",
            "brand": brand,
            "feature": [f"Made by {brand}", f"Category: {_escape(leaf)}"],
            "rank": f"{int(rank[i]):,} in {_escape(top)} (",
            "also_view": also_view,
            "main_cat": _escape(top),
            "similar_item": "",
            "date": "",
            "price": "" if rng.random() < 0.1 else f"${prices[i]:.2f}",
            "asin": asins[i],
            "imageURL": [],
            "imageURLHighRes": [],
            "details": {},
        })

    reviews_path = out_dir / REVIEWS_FILE
    meta_path = out_dir / META_FILE
    _write_json_lines_gz(reviews_path, [r[2] for r in reviews])
    _write_json_lines_gz(meta_path, meta)
    n_low = sum(1 for r in reviews if r[2]["overall"] <= 3.0)
    logger.info("synthetic data: %d users, %d items, %d reviews (%.1f%% rated <= 3) -> %s",
                n_users, n_items, len(reviews), 100.0 * n_low / len(reviews), out_dir)
    return {
        "reviews": reviews_path,
        "meta": meta_path,
        "n_users": n_users,
        "n_items": n_items,
        "n_interactions": len(reviews),
        "n_low_ratings": n_low,
    }
