"""Record cards: one Adaptive Card per supplier invoice, purchase order or GL voucher event."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from typing import Any

from cards._blocks import adaptive_card, compact, container, fact_set, open_url, text_block
from cards.claims import claim_action, claim_line
from cards.mentions import mention_text, with_mentions
from cards.size import fit
from cards.text import CardContext, counted, day, inert, money, number, relative_due
from core.domain import ApprovalStep, EventType, FinanceRecord, RecordKind
from core.people import Claim, Mention

Facts = list[tuple[str, str]]


class Tone(StrEnum):
    """Container styles Teams renders for the state badge."""

    GOOD = "good"
    WARNING = "warning"
    ATTENTION = "attention"
    NEUTRAL = "emphasis"
    DEFAULT = "default"


@dataclass(frozen=True, slots=True)
class RecordStatus:
    """Where a record stands, in our words: badge label and tone, plus a one-line note on what happened."""

    label: str
    tone: Tone
    pending: bool
    note: str | None = None  # already inert


@dataclass(frozen=True, slots=True)
class _Trim:
    """How much of a record card to show; later levels drop detail until the card fits."""

    text: int  # limit for IFS-supplied texts
    steps: int | None  # approval chain lines (None: all)
    extras: int | None  # unlabelled details (None: all)


_LEVELS = (
    _Trim(200, None, None),
    _Trim(120, 12, 8),
    _Trim(80, 6, 4),
    _Trim(60, 3, 0),
    _Trim(40, 0, 0),
)

# Objstate values while a document waits for approval (IFS reference, section 10).
_PENDING_STATES = {
    "preliminary": "Preliminary",
    "planned": "Planned",
    "awaitingapproval": "Awaiting approval",
    "partiallyapproved": "Partially approved",
    "waiting": "Waiting",
}
# Objstate values after approval, with their badge.
_OUTCOMES: dict[str, tuple[str, Tone]] = {
    "posted": ("Posted", Tone.GOOD),
    "postedauth": ("Authorized and posted", Tone.GOOD),
    "partlypaidposted": ("Posted, partly paid", Tone.GOOD),
    "paidposted": ("Posted and paid", Tone.GOOD),
    "authorized": ("Authorized", Tone.GOOD),
    "approved": ("Approved", Tone.GOOD),
    "released": ("Released", Tone.GOOD),
    "confirmed": ("Confirmed", Tone.GOOD),
    "arrived": ("Arrived", Tone.GOOD),
    "received": ("Received", Tone.GOOD),
    "closed": ("Closed", Tone.GOOD),
    "cancelled": ("Cancelled", Tone.NEUTRAL),
    "canceled": ("Cancelled", Tone.NEUTRAL),
    "stopped": ("Stopped", Tone.ATTENTION),
    "error": ("Error", Tone.ATTENTION),
}


def _norm(state: str | None) -> str:
    """`AwaitingApproval`, `Awaiting Approval` and `IfsApp.X.VoucherState'AwaitingApproval'` all compare equal."""
    text = state or ""
    if text.count("'") >= 2:
        text = text.split("'")[1]  # an enum literal as OData writes it
    return "".join(ch for ch in text.lower() if ch.isalnum())


@dataclass(frozen=True, slots=True)
class KindView:
    """How one kind of document reads on a card: names, the word for approval, and its facts."""

    title: str
    plural: str
    noun: str  # in running text: "1 supplier invoice"
    nouns: str  # "2 supplier invoices"
    awaiting: str  # badge while pending
    approved_word: str  # "authorized" / "approved"
    facts: Callable[[FinanceRecord, CardContext, _Trim, bool], Facts]
    detail_labels: frozenset[str]  # details shown by `facts` under their own titles
    state_labels: dict[str, str]  # kind-specific names for states (voucher Confirmed reads "Approved")

    def count(self, n: int, locale: str | None = None) -> str:
        """`1 supplier invoice`, `1,234 supplier invoices`."""
        return f"{number(n, locale)} {self.noun if n == 1 else self.nouns}"


def _money(amount: Decimal | None, record: FinanceRecord, ctx: CardContext) -> str | None:
    return None if amount is None else money(amount, record.currency, ctx.locale)


def party(record: FinanceRecord, limit: int = 80) -> str | None:
    """`Name (ID)`, or whichever of the two IFS gave; inert."""
    name, ident = inert(record.party_name, limit), inert(record.party_id, 40)
    if name and ident and name != ident:
        return f"{name} ({ident})"
    return name or ident or None


def _detail(record: FinanceRecord, label: str, trim: _Trim) -> str | None:
    return inert(record.detail(label), trim.text) or None


def _waiting_for(record: FinanceRecord, trim: _Trim) -> str | None:
    names = [
        inert(step.approver, 60)
        for step in sorted(record.approvers, key=lambda s: s.sequence)
        if step.approver and not step.done
    ]
    names = list(dict.fromkeys(name for name in names if name))
    if not names:
        return None
    shown = names[:5]
    more = f" and {len(names) - len(shown)} more" if len(names) > len(shown) else ""
    return ", ".join(shown) + more


def _due(record: FinanceRecord, ctx: CardContext, pending: bool) -> str | None:
    if record.due_date is None:
        return None
    text = day(record.due_date, ctx.locale)
    return f"{text} ({relative_due(record.due_date, ctx.today)})" if pending else text


def _invoice_facts(record: FinanceRecord, ctx: CardContext, trim: _Trim, pending: bool) -> Facts:
    return _present(
        ("Supplier", party(record, trim.text)),
        ("Supplier invoice no.", _detail(record, "Supplier invoice no", trim)),
        ("Invoice ID", inert(record.number, 60)),
        ("Company", inert(record.company, 40)),
        ("Gross amount", _money(record.amount, record, ctx)),
        ("Net amount", _money(record.net_amount, record, ctx)),
        ("Invoice date", record.doc_date and day(record.doc_date, ctx.locale)),
        ("Due date", _due(record, ctx, pending)),
        ("Cost centre", inert(record.cost_center, 40)),
        ("Authorization", inert(record.approval_step, trim.text)),
        ("Waiting for", _waiting_for(record, trim) if pending else None),
    )


def _order_facts(record: FinanceRecord, ctx: CardContext, trim: _Trim, pending: bool) -> Facts:
    return _present(
        ("Order no.", inert(record.number, 60)),
        ("Supplier", party(record, trim.text)),
        ("Site", inert(record.site, 40)),
        ("Buyer", _detail(record, "Buyer", trim)),
        ("Company", inert(record.company, 40)),
        ("Total amount", _money(record.amount, record, ctx)),
        ("Order date", record.doc_date and day(record.doc_date, ctx.locale)),
        ("Cost centre", inert(record.cost_center, 40)),
        ("Authorization", inert(record.approval_step, trim.text)),
        ("Waiting for", _waiting_for(record, trim) if pending else None),
    )


def _voucher_facts(record: FinanceRecord, ctx: CardContext, trim: _Trim, pending: bool) -> Facts:
    return _present(
        ("Company", inert(record.company, 40)),
        ("Voucher type", _detail(record, "Voucher type", trim)),
        ("Voucher no.", inert(record.number, 60)),
        ("Accounting year", _detail(record, "Accounting year", trim)),
        ("Voucher date", record.doc_date and day(record.doc_date, ctx.locale)),
        ("Amount", _money(record.amount, record, ctx)),
        ("Entered by", party(record, trim.text) or _detail(record, "Entered by", trim)),
        ("Cost centre", inert(record.cost_center, 40)),
        ("Approval", inert(record.approval_step, trim.text)),
        ("Second approval", _detail(record, "Second approval", trim)),
        ("Waiting for", _waiting_for(record, trim) if pending else None),
    )


def _present(*facts: tuple[str, str | None]) -> Facts:
    return [(title, value) for title, value in facts if value]


KINDS: dict[RecordKind, KindView] = {
    RecordKind.INVOICE: KindView(
        title="Supplier invoice",
        plural="Supplier invoices",
        noun="supplier invoice",
        nouns="supplier invoices",
        awaiting="Awaiting authorization",
        approved_word="authorized",
        facts=_invoice_facts,
        detail_labels=frozenset({"Supplier invoice no"}),
        state_labels={},
    ),
    RecordKind.ORDER: KindView(
        title="Purchase order",
        plural="Purchase orders",
        noun="purchase order",
        nouns="purchase orders",
        awaiting="Awaiting authorization",
        approved_word="authorized",
        facts=_order_facts,
        detail_labels=frozenset({"Buyer"}),
        state_labels={},
    ),
    RecordKind.VOUCHER: KindView(
        title="GL voucher",
        plural="GL vouchers",
        noun="GL voucher",
        nouns="GL vouchers",
        awaiting="Awaiting approval",
        approved_word="approved",
        facts=_voucher_facts,
        detail_labels=frozenset({"Voucher type", "Accounting year", "Entered by", "Second approval"}),
        state_labels={"confirmed": "Approved"},  # IFS shows voucher state Confirmed as "Approved"
    ),
}


def state_name(kind: RecordKind, state: str | None) -> str:
    """A state as people read it: known Objstate values in words, anything else inert."""
    key = _norm(state)
    view = KINDS[kind]
    if key in view.state_labels:
        return view.state_labels[key]
    if key in _OUTCOMES:
        return _OUTCOMES[key][0]
    if key in _PENDING_STATES:
        return _PENDING_STATES[key]
    return inert(state, 40) or "unknown"


def _last_decision(record: FinanceRecord) -> ApprovalStep | None:
    done = [step for step in record.approvers if step.approver and step.done]
    return max(done, key=lambda step: step.sequence, default=None)


def record_status(
    record: FinanceRecord, event: EventType, ctx: CardContext, previous_state: str | None = None
) -> RecordStatus:
    """The badge and note for a record after an event."""
    view = KINDS[record.kind]
    key = _norm(record.state)
    if event is not EventType.RESOLVED:
        label = "Awaiting second approval" if key == "partiallyapproved" else view.awaiting
        tone = Tone.WARNING
        if record.kind is RecordKind.INVOICE and record.due_date is not None:
            label = f"{label} · {relative_due(record.due_date, ctx.today)}"
            if record.due_date < ctx.today:
                tone = Tone.ATTENTION
        note = _change_note(record, previous_state) if event is EventType.CHANGED else None
        return RecordStatus(label, tone, True, note)

    if key in view.state_labels or key in _OUTCOMES:
        label, tone = _OUTCOMES.get(key, ("", Tone.GOOD))
        label = view.state_labels.get(key, label)
    elif record.approvers and all(step.done for step in record.approvers):
        label, tone = view.approved_word.capitalize(), Tone.GOOD
    else:
        label, tone = f"No longer {view.awaiting.lower()}", Tone.DEFAULT
    notes = []
    decision = _last_decision(record)
    if tone is Tone.GOOD and decision is not None:
        when = ctx.ifs_time(decision.decided_at)
        notes.append(
            f"Last {view.approved_word} by {inert(decision.approver, 60)}" + (f" on {when}" if when else "")
        )
    if tone is Tone.DEFAULT and record.state:
        notes.append(f"State in IFS: {state_name(record.kind, record.state)}")
    if previous_state and _norm(previous_state) != key:
        notes.append(f"Was {state_name(record.kind, previous_state)}")
    return RecordStatus(label, tone, False, " · ".join(notes) or None)


def _change_note(record: FinanceRecord, previous_state: str | None) -> str:
    if previous_state and _norm(previous_state) != _norm(record.state):
        return (
            f"State changed from {state_name(record.kind, previous_state)} "
            f"to {state_name(record.kind, record.state)}"
        )
    step = inert(record.approval_step, 120)
    return f"Updated in IFS · now: {step}" if step else "Updated in IFS"


def _chain(record: FinanceRecord, ctx: CardContext, trim: _Trim) -> list[dict[str, Any]]:
    steps = sorted(record.approvers, key=lambda step: step.sequence)
    if not steps or trim.steps == 0:
        extra = f"Approval chain: {counted(len(steps), 'step')} (not shown)" if steps else None
        return [text_block(extra, subtle=True, spacing="Small")] if extra else []
    shown = steps if trim.steps is None else steps[: trim.steps]
    facts = []
    for step in shown:
        role = inert(step.role, 40)
        title = f"Step {step.sequence}" + (f" · {role}" if role else "")
        value = " · ".join(
            part
            for part in (
                inert(step.approver, trim.text) or "Unassigned",
                inert(step.status, 40),
                ctx.ifs_time(step.decided_at),
            )
            if part
        )
        facts.append((title, value))
    blocks = compact(
        [
            text_block("Approval chain", weight="Bolder", separator=True, spacing="Medium"),
            fact_set(facts, spacing="Small"),
        ]
    )
    if len(steps) > len(shown):
        blocks.append(
            text_block(f"and {counted(len(steps) - len(shown), 'more step')}", subtle=True, spacing="Small")
        )
    return blocks


def _extras(record: FinanceRecord, view: KindView, trim: _Trim) -> Facts:
    rest = [
        (inert(label, 40), inert(value, trim.text))
        for label, value in record.details
        if label not in view.detail_labels
    ]
    rest = [(title, value) for title, value in rest if title and value]
    return rest if trim.extras is None else rest[: trim.extras]


def _headline(record: FinanceRecord, view: KindView, limit: int) -> str:
    return f"{view.title} {inert(record.number, min(limit, 60))}".strip()


def _subline(record: FinanceRecord, ctx: CardContext, limit: int) -> str | None:
    parts = [party(record, limit), _money(record.amount, record, ctx)]
    return " · ".join(part for part in parts if part) or None


def _fallback(record: FinanceRecord, status: RecordStatus, view: KindView, ctx: CardContext) -> str:
    parts = [_headline(record, view, 60), party(record, 60), _money(record.amount, record, ctx)]
    return " · ".join(part for part in parts if part) + f" — {status.label}"


def _build(
    record: FinanceRecord,
    event: EventType,
    ctx: CardContext,
    previous_state: str | None,
    trim: _Trim,
    mention: Mention | None = None,
    claimable: bool = False,
    claim: Claim | None = None,
) -> dict[str, Any]:
    view = KINDS[record.kind]
    status = record_status(record, event, ctx, previous_state)
    subline = _subline(record, ctx, trim.text)
    body = compact(
        [
            container([text_block(status.label, weight="Bolder")], style=status.tone.value),
            text_block(_headline(record, view, trim.text), size="Large", weight="Bolder", spacing="Medium"),
            subline and text_block(subline, spacing="None"),
            status.note and text_block(status.note, subtle=True, spacing="Small"),
            fact_set(view.facts(record, ctx, trim, status.pending) + _extras(record, view, trim)),
        ]
    )
    if mention is not None and status.pending:
        # the mentioned name comes from our own mapping (passed in), never from IFS text
        body.append(text_block(f"Next approver: {mention_text(mention)}", spacing="Small"))
    if claimable and claim is not None and status.pending:
        body.append(claim_line(claim, ctx))
    body.extend(_chain(record, ctx, trim))
    action = open_url("Open in IFS", record.deep_link)
    actions = [action] if action else []
    if claimable and status.pending:
        actions.append(claim_action(record.record_id, claim))
    card = adaptive_card(body, fallback=_fallback(record, status, view, ctx), actions=actions)
    return with_mentions(card, [mention] if mention is not None and status.pending else [])


def record_card(
    record: FinanceRecord,
    event: EventType,
    ctx: CardContext,
    *,
    previous_state: str | None = None,
    next_approver: Mention | None = None,
    claimable: bool = False,
    claim: Claim | None = None,
) -> dict[str, Any]:
    """The Adaptive Card for one record event, trimmed (approval chain, long texts) to fit Teams' limit.

    `next_approver`: the Teams user mapped to the next open approval line, mentioned on a pending card.
    `claimable`: a pending card carries "I'm on it" (or "Release" and who has it, given `claim`).
    """
    event = EventType(event)
    return fit(lambda trim: _build(record, event, ctx, previous_state, trim, next_approver, claimable, claim),
               _LEVELS)
