"""Card size: Teams' message limit measured the way Teams measures it, and the guard that trims to fit."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from core.errors import CardTooLarge

MAX_MESSAGE_BYTES = 40 * 1024  # Teams rejects larger messages with 413 MessageSizeTooBig
ENVELOPE_MARGIN_BYTES = 4 * 1024  # activity envelope: ids, conversation, channelData, attachment wrapper
CARD_BUDGET_BYTES = MAX_MESSAGE_BYTES - ENVELOPE_MARGIN_BYTES

T = TypeVar("T")


def message_size(card: dict[str, Any]) -> int:
    """Bytes of the card's JSON as UTF-16 (two per code unit), the unit Teams' 40 KB limit counts."""
    text = json.dumps(card, ensure_ascii=False)
    return len(text.encode("utf-16-le", errors="surrogatepass"))


def fits(card: dict[str, Any], budget: int = CARD_BUDGET_BYTES) -> bool:
    return message_size(card) <= budget


def fit(
    build: Callable[[T], dict[str, Any]],
    options: Sequence[T],
    *,
    budget: int = CARD_BUDGET_BYTES,
) -> dict[str, Any]:
    """`build(option)` for the richest option whose card fits `budget`.

    `options` run from richest to leanest (more rows, longer texts first); the card is assumed to
    shrink along them, so a binary search finds the first that fits in a few builds even for
    thousands of rows. Raises CardTooLarge when the leanest option is still too big.
    """
    if not options:
        raise ValueError("fit needs at least one option")
    card = build(options[0])
    if fits(card, budget):
        return card
    hi = len(options) - 1
    best = build(options[hi])
    size = message_size(best)
    if size > budget:
        raise CardTooLarge(size, budget)
    lo = 1
    while lo < hi:  # invariant: options[hi] fits and `best` is its card
        mid = (lo + hi) // 2
        card = build(options[mid])
        if fits(card, budget):
            best, hi = card, mid
        else:
            lo = mid + 1
    return best
