"""Stored records: the forms a record takes in `events.record` (FinanceRecord.to_dict's dict or the
compact tuple), reading them back, and one change a poll found."""

from __future__ import annotations

from operator import itemgetter, methodcaller
from typing import Any

import orjson

from core.domain import EventType, FinanceRecord

# One change a poll found: (event type, the record in a stored form (FinanceRecord.to_dict's dict, or the
# compact tuple, FinanceRecord.COMPACT), the state before, the approval step now). The stored form is what
# events.record holds, as JSON.
Change = tuple[EventType, dict[str, Any] | tuple[Any, ...], str | None, str]
_COMPACT_AT = {name: i for i, name in enumerate(FinanceRecord.COMPACT)}


def stored_field(records: list[Any], name: str) -> list[Any]:
    """One field of records in either stored form (to_dict's, read from tests and older rows, or COMPACT)."""
    forms = set(map(type, records))
    if forms <= {dict}:
        return list(map(methodcaller("get", name), records))
    at = _COMPACT_AT.get(name)
    if forms <= {tuple, list}:
        return list(map(itemgetter(at), records)) if at is not None else [None] * len(records)
    return [r.get(name) if type(r) is dict else None if at is None else r[at] for r in records]


def load_record(text: str | bytes) -> FinanceRecord:
    return FinanceRecord.from_dict(orjson.loads(text))
