"""Teams mentions on cards: `<at>Name</at>` in a TextBlock plus the matching entity under `msteams`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cards.text import inert
from core.people import Mention


def mention_text(mention: Mention) -> str:
    """`<at>Name</at>`: the name from our own mapping, made inert inside the tags (the tags are ours)."""
    return f"<at>{inert(mention.name, 60) or 'approver'}</at>"


def mention_entity(mention: Mention) -> dict[str, Any]:
    return {"type": "mention", "text": mention_text(mention), "mentioned": {"id": mention.id, "name": mention.name}}


def with_mentions(card: dict[str, Any], mentions: Sequence[Mention]) -> dict[str, Any]:
    """The card with Teams' mention entities for the `<at>` texts its body carries."""
    if mentions:
        card["msteams"] = {"entities": [mention_entity(m) for m in dict.fromkeys(mentions)]}
    return card
