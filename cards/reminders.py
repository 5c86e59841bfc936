"""Reminder digests: documents pending too long or due soon, most urgent first, each linked to IFS."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from cards._blocks import Element
from cards.digest import document_list_card
from cards.text import CardContext, counted
from core.domain import FinanceRecord

SNOOZE = "snooze"


def reminder_order(record: FinanceRecord) -> tuple[int, str, Decimal, str]:
    """By due date (documents without one last), then the largest amount first, then number."""
    due = record.due_date.isoformat() if record.due_date else ""
    amount = abs(record.amount) if record.amount is not None and record.amount.is_finite() else Decimal(0)
    return (0 if due else 1, due, -amount, record.number)


def snooze_action(record_id: str) -> Element:
    """A plain Action.Submit: it arrives as a message carrying this data, in the chat it was pressed in."""
    return {"type": "ActionSet", "spacing": "None",
            "actions": [{"type": "Action.Submit", "title": "Remind me tomorrow",
                         "data": {"verb": SNOOZE, "record_id": record_id}}]}


def reminder_card(records: Sequence[FinanceRecord], ctx: CardContext, *, title: str,
                  snooze: bool = False) -> dict[str, Any]:
    """`title` is our own words (a name in it must already be inert); `snooze` adds a button per document."""
    ordered = sorted(records, key=reminder_order)
    return document_list_card(ordered, ctx, heading=f"{title}: {counted(len(ordered), 'document')}",
                              after=(lambda record: snooze_action(record.record_id)) if snooze else None)
