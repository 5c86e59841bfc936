"""Digest cards: many record events summarised in one card (counts, totals, largest rows, list links)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from cards._blocks import (
    Element,
    adaptive_card,
    column,
    column_set,
    compact,
    container,
    fact_set,
    open_url,
    text_block,
)
from cards.record import KINDS, party, record_status
from cards.size import fit
from cards.text import (
    DASH,
    CardContext,
    clean,
    counted,
    currency_code,
    day,
    inert,
    link,
    money,
    number,
    relative_due,
)
from core.domain import EventType, FinanceRecord, RecordKind

DEFAULT_TITLE = "IFS approvals digest"
MAX_CURRENCIES = 6  # per kind; a digest spanning dozens of currencies lists the largest groups


@dataclass(slots=True)
class _KindSummary:
    kind: RecordKind
    rows: list[tuple[EventType, FinanceRecord]] = field(default_factory=list)
    events: dict[EventType, int] = field(default_factory=dict)
    totals: dict[str, tuple[int, Decimal]] = field(default_factory=dict)  # pending, per currency

    def add(self, event: EventType, record: FinanceRecord) -> None:
        self.rows.append((event, record))
        self.events[event] = self.events.get(event, 0) + 1
        if event is not EventType.RESOLVED and record.amount is not None and record.amount.is_finite():
            code = clean(record.currency).upper()  # raw; made inert when shown
            count, total = self.totals.get(code, (0, Decimal(0)))
            self.totals[code] = (count + 1, total + record.amount)


def _latest(records: Sequence[tuple[EventType, FinanceRecord]]) -> list[tuple[EventType, FinanceRecord]]:
    """One entry per record: its last event wins (a record new then resolved shows as resolved)."""
    latest: dict[str, tuple[EventType, FinanceRecord]] = {}
    for event, record in records:
        latest.pop(record.record_id, None)
        latest[record.record_id] = (event, record)
    return list(latest.values())


def _summaries(records: Sequence[tuple[EventType, FinanceRecord]]) -> list[_KindSummary]:
    by_kind = {kind: _KindSummary(kind) for kind in RecordKind}
    for event, record in _latest(records):
        by_kind[record.kind].add(event, record)
    for summary in by_kind.values():
        summary.rows.sort(key=_largest_first)
    return [summary for summary in by_kind.values() if summary.rows]


def _largest_first(item: tuple[EventType, FinanceRecord]) -> tuple[int, Decimal, str]:
    amount = item[1].amount
    if amount is None or not amount.is_finite():
        return (1, Decimal(0), item[1].number)
    return (0, -amount, item[1].number)


def _row(event: EventType, record: FinanceRecord, ctx: CardContext) -> Element:
    who = party(record, 40)
    label = link(record.number, record.deep_link, 30) + (f" · {who}" if who else "")
    amount = money(record.amount, record.currency, ctx.locale) if record.amount is not None else DASH
    color = None
    if event is EventType.RESOLVED:
        when = record_status(record, event, ctx).label
    elif record.due_date is not None:
        when = relative_due(record.due_date, ctx.today)
        color = "attention" if record.due_date < ctx.today else None
    else:
        when = "new" if event is EventType.NEW else "updated"
    return column_set(
        [
            column([text_block(label, max_lines=2)]),
            column([text_block(amount, align="Right")], width="auto"),
            column([text_block(when, align="Right", color=color, subtle=color is None)], width="auto"),
        ],
        spacing="Small",
    )


def document_list_card(ordered: Sequence[FinanceRecord], ctx: CardContext, *, heading: str,
                       empty: str | None = None, after: Callable[[FinanceRecord], Element] | None = None,
                       rows: Sequence[int] = (40, 20, 10, 5, 0)) -> dict[str, Any]:
    """A heading and one row per document, in the order given, each linked to IFS where possible; `after`
    adds an element under each row, `empty` is said when there are none. As many rows as fit the card's
    size limit (the first of `rows` that fits), and a count of the rest."""

    def build(shown: int) -> dict[str, Any]:
        body: list[Element] = [text_block(heading, size="Medium", weight="Bolder")]
        for record in ordered[:shown]:
            body.append(_row(EventType.NEW, record, ctx))
            if after is not None:
                body.append(after(record))
        if len(ordered) > shown:
            body.append(text_block(f"and {counted(len(ordered) - shown, 'more document')}", subtle=True))
        if not ordered and empty:
            body.append(text_block(empty, subtle=True))
        return adaptive_card(body, fallback=heading)

    return fit(build, rows)


def _event_counts(summary: _KindSummary, locale: str) -> str:
    words = {EventType.NEW: "new", EventType.CHANGED: "changed", EventType.RESOLVED: "resolved"}
    return " · ".join(
        f"{number(summary.events[event], locale)} {word}"
        for event, word in words.items()
        if event in summary.events
    )


def _totals(summary: _KindSummary, ctx: CardContext) -> list[tuple[str, str]]:
    view = KINDS[summary.kind]
    groups = sorted(summary.totals.items(), key=lambda item: (-item[1][0], item[0]))
    facts = [
        (
            f"Pending {currency_code(code)}" if code else "Pending",
            f"{money(total, code, ctx.locale)} · {view.count(count, ctx.locale)}",
        )
        for code, (count, total) in groups[:MAX_CURRENCIES]
    ]
    if len(groups) > MAX_CURRENCIES:
        rest = sum(count for _, (count, _) in groups[MAX_CURRENCIES:])
        facts.append(
            ("Other currencies", f"{len(groups) - MAX_CURRENCIES} more · {view.count(rest, ctx.locale)}")
        )
    return facts


def _section(summary: _KindSummary, ctx: CardContext, max_rows: int) -> tuple[Element, int]:
    view = KINDS[summary.kind]
    shown = summary.rows[:max_rows]
    items: list[Element | None] = [
        text_block(
            f"{view.plural} · {number(len(summary.rows), ctx.locale)}", size="Medium", weight="Bolder"
        ),
        text_block(_event_counts(summary, ctx.locale), subtle=True, spacing="None"),
        fact_set(_totals(summary, ctx), spacing="Small"),
    ]
    items.extend(_row(event, record, ctx) for event, record in shown)
    left = len(summary.rows) - len(shown)
    if left:
        items.append(
            text_block(f"and {number(left, ctx.locale)} more {view.nouns}", subtle=True, spacing="Small")
        )
    return container(items, separator=True, spacing="Medium"), left


def _build(summaries: list[_KindSummary], ctx: CardContext, title: str, max_rows: int) -> dict[str, Any]:
    total = sum(len(summary.rows) for summary in summaries)
    body: list[Element] = [
        text_block(title, size="Large", weight="Bolder"),
        text_block(
            f"{number(total, ctx.locale)} document{'s' if total != 1 else ''} · {day(ctx.today, ctx.locale)}",
            subtle=True,
            spacing="None",
        ),
    ]
    left_out = 0
    for summary in summaries:
        section, left = _section(summary, ctx, max_rows)
        body.append(section)
        left_out += left
    if not summaries:
        body.append(text_block("Nothing to report.", subtle=True))
    if left_out:
        body.append(
            text_block(
                f"Showing {number(total - left_out, ctx.locale)} of {number(total, ctx.locale)} documents; "
                f"{number(left_out, ctx.locale)} not listed.",
                subtle=True,
                separator=True,
            )
        )
    actions = compact(
        open_url(f"{KINDS[summary.kind].plural} in IFS", ctx.list_url(summary.kind)) for summary in summaries
    )
    counts = ", ".join(KINDS[summary.kind].count(len(summary.rows), ctx.locale) for summary in summaries)
    return adaptive_card(body, fallback=f"{title}: {counts or 'nothing to report'}", actions=actions)


def digest_card(
    records: Sequence[tuple[EventType, FinanceRecord]],
    ctx: CardContext,
    *,
    title: str | None = None,
    max_rows: int = 10,
) -> dict[str, Any]:
    """One card summarising many events: per kind counts, pending totals per currency, largest rows first.

    Shows up to `max_rows` rows per kind, fewer when needed to fit Teams' size limit, and says how
    many it left out.
    """
    summaries = _summaries([(EventType(event), record) for event, record in records])
    heading = inert(title, 100) or DEFAULT_TITLE
    return fit(lambda rows: _build(summaries, ctx, heading, rows), range(max(0, max_rows), -1, -1))
