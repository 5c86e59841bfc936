"""Cards about people: the mention of a mapped approver, and the `mine` list of what waits for someone."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cards._blocks import Element, adaptive_card, text_block
from cards.digest import _row
from cards.size import fit
from cards.text import CardContext, counted, inert
from core.domain import EventType, FinanceRecord


def urgency(record: FinanceRecord) -> tuple[int, str, str]:
    """Sort key: documents with a due date first, earliest due first, then the oldest document."""
    due = record.due_date.isoformat() if record.due_date else ""
    made = record.doc_date.isoformat() if record.doc_date else "9999"
    return (0 if due else 1, due, made)


def mine_card(records: Sequence[FinanceRecord], ctx: CardContext, *, who: str) -> dict[str, Any]:
    """What waits for one person, most urgent and oldest first, each row linked to IFS where possible."""
    ordered = sorted(records, key=urgency)
    heading = f"Waiting for {inert(who, 60) or 'you'}: {counted(len(ordered), 'document')}"

    def build(rows: int) -> dict[str, Any]:
        body: list[Element] = [text_block(heading, size="Medium", weight="Bolder")]
        body += [_row(EventType.NEW, record, ctx) for record in ordered[:rows]]
        if len(ordered) > rows:
            body.append(text_block(f"and {counted(len(ordered) - rows, 'more document')}", subtle=True))
        if not ordered:
            body.append(text_block("Nothing waits for you in IFS right now.", subtle=True))
        return adaptive_card(body, fallback=heading)

    return fit(build, (50, 25, 10, 5, 0))
