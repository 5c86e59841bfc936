""""I'm on it" on record cards: who took a document, and the Universal Action that takes or releases it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from cards._blocks import Element, text_block
from cards.text import CardContext, clock, day, inert
from core.people import Claim

CLAIM = "claim"
RELEASE = "release"
VERBS = (CLAIM, RELEASE)


def since(at: float, ctx: CardContext) -> str:
    """`10:42` today, `Mar 4, 2026 10:42` on an earlier day (the context's zone and locale)."""
    moment = datetime.fromtimestamp(at, UTC).astimezone(ctx.zone)
    text = clock(moment, ctx.locale)
    return text if moment.date() == ctx.today else f"{day(moment, ctx.locale)} {text}"


def claim_line(claim: Claim, ctx: CardContext) -> Element:
    """`Alex Wilber is on it since 10:42`; the name comes from Teams, made inert all the same."""
    return text_block(f"{inert(claim.name, 60) or 'Someone'} is on it since {since(claim.at, ctx)}",
                      weight="Bolder", spacing="Small")


def claim_action(record_id: str, claim: Claim | None) -> Element:
    """Action.Execute (Universal Actions) with an Action.Submit fallback for clients without them."""
    verb, title = (RELEASE, "Release") if claim is not None else (CLAIM, "I'm on it")
    data: dict[str, Any] = {"record_id": record_id}
    return {"type": "Action.Execute", "title": title, "verb": verb, "data": data,
            "fallback": {"type": "Action.Submit", "title": title, "data": {"verb": verb, **data}}}
