"""Every PageLLM prompt template (Appendix B of the paper), in this one module.

Tokens (Section 5.1.1): one new tokenizer token per user and per item, ``<u_{u}>`` and
``<i_{i}>``, with ``u``, ``i`` the split's integer indices (`bench.data.splits.Split`).

The paper shows its templates only as figures (4 and 5); the texts below follow the four
pre-training kinds of B.1 and the predictive prompt of B.2 in as few words as possible, so
that a small model can be trained on a CPU. Rendered examples (user 5, items 1, 3, 7, 9):

Pre-training (B.1), field ``kind`` of ``pretrain.jsonl``:

- ``item`` (user/item contents): the item token and its non-empty fields, in this order::

      <i_3> has title "Glowe Hydrating Body Mist", brand Glowe, categories Beauty > Fragrance, description: A body mist.

  Categories are the "|"-joined list shown with " > " (Amazon lists are breadcrumbs);
  the description is cut to ``max_description_words`` words ("..." marks a cut). An item
  without any metadata has no such prompt.
- ``first_order`` (1st-order user-item relationship), one per rated interaction::

      <u_5> rated <i_7> 4 out of 5.
      <u_5> rated <i_7> 4 out of 5. Review: "Nice quality for the price."   (when review text is given)
      <u_5> interacted with <i_7>.                                           (implicit data: no rating)

  Review text (``review_excerpt``) is the user's own review of that item from the split's
  reviews.csv (train and negatives rows only), cut to ``max_review_words`` words ("..."
  marks a cut); double quotes inside it become single quotes and anything shaped like a
  user/item token is removed, so the text never adds a token or ends the quotation early.

- ``second_order`` (2nd-order: items sharing an attribute), 2 or more items::

      <i_3> and <i_9> share the brand Glowe.
      <i_1>, <i_3> and <i_9> share the category Beauty > Fragrance.

- ``sequence`` (user-item interactions, chronological)::

      <u_5> interacted with <i_1> <i_7> <i_3> in this order.

Rating prediction (Section 5.1.2, eq. 2: the rating is predicted "based on review text"):
the rating head reads the last hidden state of::

      How would <u_5> rate <i_7>? Rating:
      How would <u_5> rate <i_7>? Review: "Nice quality for the price." Rating:   (review text given)

Fine-tuning (B.2): the prompt ends right before the page; the target is the item tokens
separated by single spaces, after one space (``finetune_text``)::

      <u_5> has rated <i_1> 5, <i_7> 4. Recommend a ranked page:          (history with ratings)
      <u_5> has interacted with <i_1> <i_7>. Recommend a ranked page:     (ratings off, or implicit data)
      <u_5> has rated <i_1> 5, <i_7> 4. Recommend a ranked page: <i_9> <i_3>   (prompt + target)
"""

from __future__ import annotations

import math
import re
from typing import Sequence

USER_TOKEN_PATTERN = re.compile(r"<u_(\d+)>")
ITEM_TOKEN_PATTERN = re.compile(r"<i_(\d+)>")

PAGE_INSTRUCTION = "Recommend a ranked page:"
RATING_TEMPLATE = "How would {user} rate {item}?{review} Rating:"
SEQUENCE_TEMPLATE = "{user} interacted with {items} in this order."
CATEGORY_SEPARATOR = " > "
_TOKEN_LIKE = re.compile(r"<[ui]_\d+>")


def user_token(u: int) -> str:
    return f"<u_{int(u)}>"


def item_token(i: int) -> str:
    return f"<i_{int(i)}>"


def special_tokens(n_users: int, n_items: int) -> list[str]:
    """All new tokenizer tokens: users first, then items."""
    return [user_token(u) for u in range(n_users)] + [item_token(i) for i in range(n_items)]


def parse_items(text: str) -> list[int]:
    """Item indices of every ``<i_N>`` token in `text`, in order (duplicates kept)."""
    return [int(m) for m in ITEM_TOKEN_PATTERN.findall(text)]


def parse_users(text: str) -> list[int]:
    return [int(m) for m in USER_TOKEN_PATTERN.findall(text)]


def format_rating(rating: float) -> str:
    """5.0 -> "5", 4.5 -> "4.5"."""
    r = float(rating)
    return str(int(r)) if r == int(r) else f"{r:g}"


def _has_rating(rating: float | None) -> bool:
    return rating is not None and not (isinstance(rating, float) and math.isnan(rating))


def _join_tokens(items: Sequence[int]) -> str:
    return " ".join(item_token(i) for i in items)


def _enumerate(tokens: Sequence[str]) -> str:
    """"a", "a and b", "a, b and c"."""
    if len(tokens) <= 1:
        return "".join(tokens)
    return ", ".join(tokens[:-1]) + " and " + tokens[-1]


def category_text(categories: Sequence[str]) -> str:
    return CATEGORY_SEPARATOR.join(categories)


def truncate_words(text: str, max_words: int) -> str:
    words = text.split()
    if max_words <= 0 or len(words) <= max_words:
        return " ".join(words)
    return " ".join(words[:max_words]) + "..."


def review_excerpt(text: str | None, max_words: int) -> str:
    """Review text as quoted in a prompt: at most `max_words` words ("..." marks a cut), double
    quotes made single and user/item-token look-alikes removed; "" when `max_words` is 0 or
    there is no text."""
    if max_words <= 0 or not text:
        return ""
    return truncate_words(_TOKEN_LIKE.sub(" ", str(text)).replace('"', "'"), max_words)


# --- B.1 pre-training -------------------------------------------------------------------------

def item_content_text(item: int, title: str = "", brand: str = "", categories: Sequence[str] = (),
                      description: str = "", max_description_words: int = 30) -> str | None:
    """User/item contents; None when the item has no metadata at all."""
    fields = []
    if title:
        fields.append(f'title "{title}"')
    if brand:
        fields.append(f"brand {brand}")
    if categories:
        fields.append(f"categories {category_text(categories)}")
    description = truncate_words(description or "", max_description_words)
    if description:
        fields.append(f"description: {description}")
    if not fields:
        return None
    text = f"{item_token(item)} has " + ", ".join(fields)
    return text if text.endswith((".", "!", "?")) else text + "."


def first_order_text(user: int, item: int, rating: float | None = None, review: str | None = None) -> str:
    """1st-order user-item relationship: a rating (and review text when available)."""
    if _has_rating(rating):
        text = f"{user_token(user)} rated {item_token(item)} {format_rating(rating)} out of 5."
    else:
        text = f"{user_token(user)} interacted with {item_token(item)}."
    if review:
        text += f' Review: "{review}"'
    return text


def second_order_text(items: Sequence[int], attribute: str, value: str) -> str:
    """2nd-order relationship: `items` (2 or more) share `attribute` ("brand" or "category")."""
    if len(items) < 2:
        raise ValueError("a 2nd-order prompt needs at least two items")
    return f"{_enumerate([item_token(i) for i in items])} share the {attribute} {value}."


def sequence_text(user: int, items: Sequence[int]) -> str:
    """User-item interactions in chronological order."""
    return SEQUENCE_TEMPLATE.format(user=user_token(user), items=_join_tokens(items))


# --- rating head ------------------------------------------------------------------------------

def rating_prompt(user: int, item: int, review: str | None = None) -> str:
    """The rating-prediction prompt (with the user's review of the item when given); the
    rating head reads the hidden state of its last token."""
    return RATING_TEMPLATE.format(user=user_token(user), item=item_token(item),
                                  review=f' Review: "{review}"' if review else "")


# --- B.2 fine-tuning --------------------------------------------------------------------------

def finetune_prompt(user: int, items: Sequence[int], ratings: Sequence[float | None] | None = None) -> str:
    """The predictive prompt: user token + history items (with their ratings when given and
    known) + the instruction; the page follows after one space (`finetune_text`)."""
    user_tok = user_token(user)
    if not items:
        return f"{user_tok} has no history. {PAGE_INSTRUCTION}"
    if ratings is not None and all(_has_rating(r) for r in ratings):
        if len(ratings) != len(items):
            raise ValueError("items and ratings differ in length")
        history = ", ".join(f"{item_token(i)} {format_rating(r)}" for i, r in zip(items, ratings))
        return f"{user_tok} has rated {history}. {PAGE_INSTRUCTION}"
    return f"{user_tok} has interacted with {_join_tokens(items)}. {PAGE_INSTRUCTION}"


def page_text(items: Sequence[int]) -> str:
    """A ranked page as text: item tokens, best first, separated by single spaces."""
    return _join_tokens(items)


def finetune_text(prompt: str, items: Sequence[int]) -> str:
    """Prompt + target: the full SFT example (the model adds its EOS token)."""
    return f"{prompt} {page_text(items)}"
