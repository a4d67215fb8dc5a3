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
8. **Related items.** ``also_buy`` and ``also_view`` list 0-3 other items of the same
   subcategory (the first and the last ones). Until the generator was made fast enough for the
   Sports size, a draw of 0 listed the whole subcategory in ``also_view`` (thousands of asins
   per item at that size, growing with the square of the catalogue); that is the only change
   of its output. The readers do not read ``also_view``, so the canonical tables, splits and
   results of the earlier sizes are unchanged.
"""

from __future__ import annotations

import datetime as _dt
import functools
import gzip
import json
import logging
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from bench.errors import ConfigError
from bench.io import atomic_path

logger = logging.getLogger(__name__)

CATEGORY = "Synthetic"  # the file-name category: Synthetic_5.json.gz, meta_Synthetic.json.gz
REVIEWS_FILE = f"{CATEGORY}_5.json.gz"
META_FILE = f"meta_{CATEGORY}.json.gz"

# Size presets for the `size` knob: tiny for tests in seconds, small is the default; sports has
# the users and items of the Amazon 2018 Sports_and_Outdoors 5-core (332,447 x 104,687,
# 2,839,940 reviews) and gives 2,842,260 reviews (about 3 minutes of CPU, 0.5 GB).
SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"n_users": 120, "n_items": 80, "mean_interactions": 10},
    "small": {"n_users": 300, "n_items": 200, "mean_interactions": 12},
    "medium": {"n_users": 3000, "n_items": 1500, "mean_interactions": 12},
    "sports": {"n_users": 332_447, "n_items": 104_687, "mean_interactions": 8.54},
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


def _write_json_lines_gz(path: Path, lines: Iterable[str]) -> None:
    """Write JSON lines gzip-compressed, atomically and byte-reproducibly (mtime 0, no name).

    `lines` comes in chunks of lines (each ending in a newline), so that a file of millions
    of reviews never has to be held in memory at once."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
            for chunk in lines:
                gz.write(chunk.encode("utf-8"))


def _exact_picks(rng: np.random.Generator, pop: np.ndarray, item_cat: np.ndarray, item_brand: np.ndarray,
                 theta_u: np.ndarray, fav: int, n: int) -> np.ndarray:
    """The definition of one user's items: `n` distinct items drawn with numpy's
    ``choice(replace=False, p)`` from ``score ∝ pop * (theta_u[cat] + 0.005) * (3 if favourite brand)``."""
    score = pop * (theta_u[item_cat] + 0.005) * np.where(item_brand == fav, 3.0, 1.0)
    return rng.choice(len(pop), size=n, replace=False, p=score / score.sum())


def _sample_items(rng: np.random.Generator, pop: np.ndarray, item_cat: np.ndarray, item_brand: np.ndarray,
                  theta: np.ndarray, fav_brand: np.ndarray, n_per_user: np.ndarray) -> np.ndarray:
    """Every user's items, user after user, exactly as `_exact_picks` gives them (same items, same
    random numbers consumed), without its O(n_items) work per user for almost every user.

    `_exact_picks` draws n uniforms x and takes, for each, the first item whose cumulative
    probability exceeds x; only when two draws hit the same item does numpy draw again. Here
    the n uniforms of many users are drawn at once and each is located in two steps: a block of
    `_BLOCK` consecutive items (block masses per user are one small matrix product, since an
    item's score depends on the user only through its category and brand), then the item
    inside the block. A user whose draws collide, or one of whose draws lies within
    `_MARGIN` (relative) of an item boundary, where rounding could decide differently than
    numpy's cumulative sum, is redrawn with `_exact_picks` from the same random state.
    numpy's cumulative sum is accurate to about n_items * 1e-16 (1e-11 at 100k items), far
    inside the margin, so the result is that of `_exact_picks` for every user.

    Returns (sum(n_per_user),) int64: the items of user 0, then user 1, ...
    """
    n_items, n_users = len(pop), len(n_per_user)
    n_blocks = -(-n_items // _BLOCK)
    pad = n_blocks * _BLOCK - n_items
    pop_p = np.r_[pop, np.zeros(pad)]
    cat_p = np.r_[item_cat, np.zeros(pad, dtype=item_cat.dtype)]
    brand_p = np.r_[item_brand, np.full(pad, -1, dtype=item_brand.dtype)]
    block = np.arange(n_items) // _BLOCK
    n_brands = len(_BRANDS)
    # (n_blocks, 8) popularity per block and category; (n_blocks, 20) per block and brand
    by_cat = np.bincount(block * N_CATEGORIES + item_cat, weights=pop, minlength=n_blocks * N_CATEGORIES)
    by_cat = by_cat.reshape(n_blocks, N_CATEGORIES)
    by_brand = np.bincount(block * n_brands + item_brand, weights=pop, minlength=n_blocks * n_brands)
    by_brand = by_brand.reshape(n_blocks, n_brands)
    offsets = np.r_[0, np.cumsum(n_per_user)]
    out = np.empty(offsets[-1], dtype=np.int64)

    def exact(u: int) -> None:
        out[offsets[u]:offsets[u + 1]] = _exact_picks(rng, pop, item_cat, item_brand, theta[u], int(fav_brand[u]),
                                                      int(n_per_user[u]))

    # Users likely to draw an item twice (few items, many draws) go to numpy at once: for them
    # the fast path would only be thrown away. P(collision) ~ 1 - exp(-n(n-1)/2 * sum_i p_i^2).
    weight = theta + 0.005
    fav_w = weight[np.arange(n_users), fav_brand % N_CATEGORIES]
    mass = weight @ by_cat.sum(axis=0) + 2.0 * fav_w * by_brand.sum(axis=0)[fav_brand]
    squares_cat = np.bincount(item_cat, weights=pop ** 2, minlength=N_CATEGORIES)
    squares_brand = np.bincount(item_brand, weights=pop ** 2, minlength=n_brands)
    sum_p2 = (weight ** 2 @ squares_cat + 8.0 * fav_w ** 2 * squares_brand[fav_brand]) / mass ** 2
    likely = n_per_user * (n_per_user - 1) / 2.0 * sum_p2 > 0.3
    next_likely = np.r_[np.flatnonzero(likely), n_users]

    u, chunk = 0, 256
    while u < n_users:
        if likely[u]:
            exact(u)
            u += 1
            continue
        end = min(u + chunk, int(next_likely[np.searchsorted(next_likely, u)]))
        state = rng.bit_generator.state
        x = rng.random(offsets[end] - offsets[u])
        items, bad = _locate(x, u, end, n_per_user, n_items, pop_p, cat_p, brand_p, by_cat, by_brand, theta,
                             fav_brand)
        if not bad.any():
            out[offsets[u]:offsets[end]] = items
            u, chunk = end, min(2 * chunk, 1024)
            continue
        first = u + int(np.argmax(bad))  # users before it are right; it and those after start again
        n_ok = offsets[first] - offsets[u]
        out[offsets[u]:offsets[first]] = items[:n_ok]
        rng.bit_generator.state = state
        rng.random(n_ok)  # consume the accepted users' uniforms again
        exact(first)
        u, chunk = first + 1, min(1024, max(16, 2 * (first - u + 1)))
    return out


_BLOCK = 256  # items per block in `_sample_items`
_MARGIN = 1e-9  # relative distance to an item boundary below which `_sample_items` asks numpy


def _locate(x: np.ndarray, u0: int, u1: int, n_per_user: np.ndarray, n_items: int, pop_p: np.ndarray,
            cat_p: np.ndarray, brand_p: np.ndarray, by_cat: np.ndarray, by_brand: np.ndarray, theta: np.ndarray,
            fav_brand: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The item of each uniform `x` (users u0..u1-1 in order, n_per_user[u] each) and, per user,
    whether it must be redrawn exactly (a collision, or a draw too near a boundary)."""
    n_users = u1 - u0
    weight = theta[u0:u1] + 0.005  # (U, 8)
    fav = fav_brand[u0:u1]
    fav_cat = fav % N_CATEGORIES  # brand j belongs to category j % 8
    # (U, n_blocks) score mass per block: favourite-brand items count 3x, i.e. 2x extra
    mass = weight @ by_cat.T + (2.0 * weight[np.arange(n_users), fav_cat])[:, None] * by_brand[:, fav].T
    cum = np.cumsum(mass, axis=1)
    total = cum[:, -1]
    row = np.repeat(np.arange(n_users), n_per_user[u0:u1])
    y = x * total[row]
    blk = np.minimum((cum[row] <= y[:, None]).sum(axis=1), cum.shape[1] - 1)
    before = np.where(blk > 0, cum[row, np.maximum(blk - 1, 0)], 0.0)
    idx = blk[:, None] * _BLOCK + np.arange(_BLOCK)  # (D, _BLOCK) the items of each draw's block
    score = pop_p[idx] * weight[row[:, None], cat_p[idx]] * np.where(brand_p[idx] == fav[row][:, None], 3.0, 1.0)
    inner = before[:, None] + np.cumsum(score, axis=1)
    pos = np.minimum((inner <= y[:, None]).sum(axis=1), _BLOCK - 1)
    draws = np.arange(len(x))
    upper = inner[draws, pos]
    lower = np.where(pos > 0, inner[draws, np.maximum(pos - 1, 0)], before)
    margin = _MARGIN * total[row]
    items = blk * _BLOCK + pos
    near = (y - lower < margin) | (upper - y < margin) | (items >= n_items)
    bad = np.zeros(n_users, dtype=bool)
    bad[row[near]] = True
    order = np.lexsort((items, row))
    same = (row[order][1:] == row[order][:-1]) & (items[order][1:] == items[order][:-1])
    bad[row[order][1:][same]] = True
    return items, bad


def generate(out_dir: Path, *, n_users: int = 300, n_items: int = 200, seed: int = 0,
             mean_interactions: float = 12) -> dict[str, Any]:
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

    Time and memory grow about linearly with the number of reviews (`SIZES["sports"]`, 2.8M
    reviews: about 3 minutes of CPU and 0.5 GB): reviews are kept as arrays, not records, and
    written in chunks; the interactions are drawn by `_sample_items`.
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
    taken: set[str] = set()  # the titles so far, for the no-exact-duplicates rule
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
        while title in taken:  # near, never exact, duplicates
            title = f"{base} {_PACKS[k]}".replace(" ,", ",") if k < len(_PACKS) else f"{base} (Model {k})"
            k += 1
        titles.append(title)
        taken.add(title)
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
    n_per_user = 5 + (rng.negative_binomial(2, 2.0 / (2.0 + extra), size=n_users) if extra
                      else np.zeros(n_users, dtype=np.int64))
    n_per_user = np.minimum(n_per_user, n_items // 2)

    # 3. interactions ------------------------------------------------------------------------
    picks = _sample_items(rng, pop, item_cat, item_brand, theta, fav_brand, n_per_user)
    counts = np.bincount(picks, minlength=n_items)
    lonely = np.flatnonzero(counts == 0)
    # each item nobody picked goes to one user, drawn as numpy's choice(n_users, p) would: one
    # uniform per item, in item order, looked up in the cumulative weights of its category
    cdf = {}
    for c in np.unique(item_cat[lonely]):
        w = theta[:, c] + 1e-6
        cdf[c] = (w / w.sum()).cumsum()
        cdf[c] /= cdf[c][-1]
    uniforms = rng.random(len(lonely))
    takers = np.array([cdf[c].searchsorted(x, side="right") for c, x in zip(item_cat[lonely], uniforms)],
                      dtype=np.int64)
    # each user's items: its picks, then the lonely items it was given (in item order)
    owner = np.r_[np.repeat(np.arange(n_users), n_per_user), takers]
    order = np.argsort(owner, kind="stable")
    user_items = np.r_[picks, lonely][order]
    user_start = np.r_[0, np.cumsum(np.bincount(owner, minlength=n_users))]

    # 4. ratings, time, text -----------------------------------------------------------------
    reviewer_ids = _unique_ids(rng, n_users, "A", 13)
    names = [
        "Amazon Customer" if rng.random() < 0.1
        else f"{_FIRST_NAMES[rng.integers(len(_FIRST_NAMES))]} {chr(65 + int(rng.integers(26)))}."
        for _ in range(n_users)
    ]
    n_reviews = len(user_items)
    # one entry per review, in the order the reviews are drawn (user by user)
    rv_item = np.empty(n_reviews, dtype=np.int64)
    rv_unix = np.empty(n_reviews, dtype=np.int64)
    rv_rating = np.empty(n_reviews, dtype=np.int8)
    rv_vote = np.full(n_reviews, -1, dtype=np.int64)  # -1: no vote field
    rv_verified = np.empty(n_reviews, dtype=bool)
    rv_text = np.empty(n_reviews, dtype=np.int8)  # index into _TEXTS[rating]
    rv_summary = np.empty(n_reviews, dtype=np.int8)  # index into _SUMMARIES[rating]
    random, integers, geometric = rng.random, rng.integers, rng.geometric
    n_texts = {r: len(v) for r, v in _TEXTS.items()}
    n_summaries = {r: len(v) for r, v in _SUMMARIES.items()}
    for u in range(n_users):
        start = int(user_start[u])
        items = user_items[start:user_start[u + 1]].copy()
        rng.shuffle(items)
        rv_item[start:start + len(items)] = items
        day = int(integers(_START_DAY, _END_START_DAY))
        match = theta[u][item_cat[items]] / theta[u].max()
        fav = (item_brand[items] == fav_brand[u]).astype(float)
        p_low = _sigmoid(-1.95 + 2.0 * (1.0 - match) - quality[items] - 0.7 * fav).tolist()
        p_five = _sigmoid(0.3 + 1.5 * match + quality[items]).tolist()
        for k in range(len(items)):
            j = start + k
            if random() < p_low[k]:
                r = random()
                rating = 1 if r < 0.3 else (2 if r < 0.55 else 3)
            else:
                rating = 5 if random() < p_five[k] else 4
            rv_rating[j] = rating
            rv_unix[j] = day * 86400
            day += 1 + int(geometric(1.0 / 20.0))
            if random() < 0.12:
                rv_vote[j] = int(geometric(0.3)) + 1 if random() < 0.97 else int(integers(1000, 3000))
            rv_verified[j] = random() < 0.85
            rv_text[j] = integers(n_texts[rating])
            rv_summary[j] = integers(n_summaries[rating])
    rv_user = np.repeat(np.arange(n_users), np.diff(user_start))
    # real files group by item: sort by (item, time, reviewerID)
    reviewer_rank = np.empty(n_users, dtype=np.int64)
    reviewer_rank[np.argsort(np.array(reviewer_ids), kind="stable")] = np.arange(n_users)
    written = np.lexsort((reviewer_rank[rv_user], rv_unix, rv_item))

    def review_lines() -> Iterator[str]:
        review_time = functools.lru_cache(maxsize=None)(_review_time)
        fills = [{"noun": nouns[i].lower(), "brand": _BRANDS[item_brand[i]]} for i in range(n_items)]
        for at in range(0, n_reviews, _CHUNK):
            lines = []
            for j in written[at:at + _CHUNK].tolist():
                i, u, rating = int(rv_item[j]), int(rv_user[j]), int(rv_rating[j])
                rec: dict[str, Any] = {"overall": float(rating)}
                if rv_vote[j] >= 0:
                    rec["vote"] = f"{int(rv_vote[j]):,}"
                unix = int(rv_unix[j])
                rec.update({
                    "verified": bool(rv_verified[j]),
                    "reviewTime": review_time(unix),
                    "reviewerID": reviewer_ids[u],
                    "asin": asins[i],
                    "reviewerName": names[u],
                    "reviewText": _TEXTS[rating][rv_text[j]].format(**fills[i]),
                    "summary": _SUMMARIES[rating][rv_summary[j]].format(**fills[i]),
                    "unixReviewTime": unix,
                })
                lines.append(json.dumps(rec, ensure_ascii=False) + "\n")
            yield "".join(lines)

    # 5. metadata ----------------------------------------------------------------------------
    by_group: dict[tuple[int, int], list[int]] = {}
    for i in range(n_items):
        by_group.setdefault((int(item_cat[i]), int(item_sub[i])), []).append(i)
    rank_order = np.argsort(-pop, kind="stable")
    rank = np.empty(n_items, dtype=np.int64)
    rank[rank_order] = np.arange(1, n_items + 1) * 37 + 5

    def meta_lines() -> Iterator[str]:
        lines = []
        for i in range(n_items):
            top, _, subs = _CATALOGUE[item_cat[i]]
            sub, leaf, _ = subs[item_sub[i]]
            group = by_group[(int(item_cat[i]), int(item_sub[i]))]
            # the first and the last few other items of the same subcategory
            n_buy = int(rng.integers(0, 4))
            also_buy = [asins[j] for j in [j for j in group[:n_buy + 1] if j != i][:n_buy]]
            also_view: list[str] = []
            if len(group) > 1:
                n_view = int(rng.integers(0, 4))
                also_view = [asins[j] for j in [j for j in group[max(0, len(group) - n_view - 1):] if j != i][-n_view:]] \
                    if n_view else []
            brand = _BRANDS[item_brand[i]]
            lines.append(json.dumps({
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
            }, ensure_ascii=False) + "\n")
            if len(lines) == _CHUNK:
                yield "".join(lines)
                lines = []
        yield "".join(lines)

    reviews_path = out_dir / REVIEWS_FILE
    meta_path = out_dir / META_FILE
    _write_json_lines_gz(reviews_path, review_lines())
    _write_json_lines_gz(meta_path, meta_lines())
    n_low = int((rv_rating <= 3).sum())
    logger.info("synthetic data: %d users, %d items, %d reviews (%.1f%% rated <= 3) -> %s",
                n_users, n_items, n_reviews, 100.0 * n_low / n_reviews, out_dir)
    return {
        "reviews": reviews_path,
        "meta": meta_path,
        "n_users": n_users,
        "n_items": n_items,
        "n_interactions": n_reviews,
        "n_low_ratings": n_low,
    }


_CHUNK = 20_000  # lines per write
