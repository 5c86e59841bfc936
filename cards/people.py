"""Cards about people: the mention of a mapped approver, and the `mine` list of what waits for someone."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cards.digest import document_list_card
from cards.text import CardContext, counted, inert
from core.domain import FinanceRecord


def urgency(record: FinanceRecord) -> tuple[int, str, str]:
    """Sort key: documents with a due date first, earliest due first, then the oldest document."""
    due = record.due_date.isoformat() if record.due_date else ""
    made = record.doc_date.isoformat() if record.doc_date else "9999"
    return (0 if due else 1, due, made)


def mine_card(records: Sequence[FinanceRecord], ctx: CardContext, *, who: str) -> dict[str, Any]:
    """What waits for one person, most urgent and oldest first, each row linked to IFS where possible."""
    ordered = sorted(records, key=urgency)
    return document_list_card(ordered, ctx, heading=f"Waiting for {inert(who, 60) or 'you'}: "
                                                    f"{counted(len(ordered), 'document')}",
                              empty="Nothing waits for you in IFS right now.", rows=(50, 25, 10, 5, 0))
