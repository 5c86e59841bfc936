"""Adaptive Card 1.5 element constructors, limited to what Teams renders."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Literal

from cards.text import safe_url

SCHEMA_URL = "http://adaptivecards.io/schemas/adaptive-card.json"
CARD_VERSION = "1.5"  # Teams renders up to 1.5

Element = dict[str, Any]
MaybeElement = Element | Literal[""] | None  # `x and block(x)`: "" or None where x is missing


def adaptive_card(body: Sequence[Element], *, fallback: str, actions: Sequence[Element] = ()) -> Element:
    """A top-level card; `fallback` must already be inert."""
    card: Element = {
        "$schema": SCHEMA_URL,
        "type": "AdaptiveCard",
        "version": CARD_VERSION,
        "fallbackText": fallback,
        "body": list(body),
    }
    if actions:
        card["actions"] = list(actions)
    return card


def text_block(
    text: str,
    *,
    size: str | None = None,
    weight: str | None = None,
    color: str | None = None,
    subtle: bool = False,
    spacing: str | None = None,
    separator: bool = False,
    max_lines: int | None = None,
    align: str | None = None,
    monospace: bool = False,
) -> Element:
    """A wrapping TextBlock; `text` must already be inert (or our own fixed words)."""
    block: Element = {"type": "TextBlock", "text": text, "wrap": True}
    if size:
        block["size"] = size
    if weight:
        block["weight"] = weight
    if color:
        block["color"] = color
    if subtle:
        block["isSubtle"] = True
    if spacing:
        block["spacing"] = spacing
    if separator:
        block["separator"] = True
    if max_lines:
        block["maxLines"] = max_lines
    if align:
        block["horizontalAlignment"] = align
    if monospace:
        block["fontType"] = "Monospace"
    return block


def fact_set(facts: Iterable[tuple[str, str]], *, spacing: str | None = None) -> Element | None:
    """A FactSet of (title, value) pairs, both already inert; None when there are no facts."""
    rows = [{"title": title, "value": value} for title, value in facts]
    if not rows:
        return None
    block: Element = {"type": "FactSet", "facts": rows}
    if spacing:
        block["spacing"] = spacing
    return block


def container(
    items: Sequence[MaybeElement],
    *,
    style: str | None = None,
    spacing: str | None = None,
    separator: bool = False,
) -> Element:
    block: Element = {"type": "Container", "items": compact(items)}
    if style:
        block["style"] = style
    if spacing:
        block["spacing"] = spacing
    if separator:
        block["separator"] = True
    return block


def column(items: Sequence[Element], *, width: str = "stretch", align: str | None = None) -> Element:
    block: Element = {"type": "Column", "width": width, "items": list(items)}
    if align:
        block["verticalContentAlignment"] = align
    return block


def column_set(columns: Sequence[Element], *, spacing: str | None = None) -> Element:
    block: Element = {"type": "ColumnSet", "columns": list(columns)}
    if spacing:
        block["spacing"] = spacing
    return block


def open_url(title: str, url: str | None) -> Element | None:
    """An Action.OpenUrl for an http(s) URL; None for a missing or unsafe URL (no action is better).

    Action titles are not markdown, so `title` is our own plain words and is not escaped.
    """
    target = safe_url(url)
    if target is None:
        return None
    return {"type": "Action.OpenUrl", "title": title, "url": target}


def compact(items: Iterable[MaybeElement]) -> list[Element]:
    """The elements present: `x and block(x)` leaves None or "" where x is missing."""
    return [item for item in items if item]
