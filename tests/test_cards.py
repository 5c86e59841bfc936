"""Tests for cards: golden cards, Adaptive Cards 1.5 schema, Teams rules, inert text, locales, size limit.

Regenerate the golden files with `UPDATE_GOLDEN=1 pytest tests/test_cards.py`, then review the diff.
"""

from __future__ import annotations

import json
import os
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import replace
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cards import (
    CARD_BUDGET_BYTES,
    MAX_MESSAGE_BYTES,
    AuditView,
    CardContext,
    CardTooLarge,
    SourceStatus,
    StatusView,
    audit_card,
    day,
    digest_card,
    fit,
    help_card,
    inert,
    links_card,
    message_size,
    money,
    record_card,
    relative_due,
    status_card,
    text_card,
)
from cards.text import NBSP, NNBSP, clean, safe_url
from core.domain import ApprovalStep, Binding, EventType, FinanceRecord, RecordKind
from core.links import page_link

HERE = Path(__file__).parent
GOLDEN = HERE / "golden" / "cards"
SCHEMA = json.loads((HERE / "schemas" / "adaptive-card-1.5.json").read_text(encoding="utf-8"))
VALIDATOR = jsonschema.Draft6Validator(SCHEMA)

TODAY = date(2026, 3, 5)
NOW = 1_772_712_000.0  # 2026-03-05 12:00 UTC
BASE = "https://ifs.example.com"
CTX = CardContext(today=TODAY, locale="en-US", tz="Europe/Stockholm", ifs_base_url=BASE)

NEW, CHANGED, RESOLVED = EventType.NEW, EventType.CHANGED, EventType.RESOLVED

# --------------------------------------------------------------------------- fixtures


def invoice_link(invoice_id: int) -> str:
    return page_link(BASE, "ManualSupplierInvoice/Form", [("InvoiceId", invoice_id), ("Company", "10")])


def invoice(**changes: Any) -> FinanceRecord:
    record = FinanceRecord(
        kind=RecordKind.INVOICE,
        company="10",
        key="Company=10^InvoiceId=105",
        number="105",
        state="Preliminary",
        etag='W/"Vy8iMTIi"',
        party_id="S1001",
        party_name="Nordic Steel AB",
        amount=Decimal("12500.00"),
        net_amount=Decimal("10000.00"),
        currency="SEK",
        doc_date=date(2026, 2, 20),
        due_date=date(2026, 3, 8),
        cost_center="CC100",
        approval_step="1 of 2 lines authorized",
        approvers=(
            ApprovalStep(1, "Jane Doe", "Authorized", "Authorizer", "2026-03-02T09:15:00Z", done=True),
            ApprovalStep(2, "Per Berg", "Unacknowledged", "Authorizer"),
        ),
        details=(("Supplier invoice no", "NS-2026-0042"), ("PO reference", "P1001")),
        deep_link=invoice_link(105),
    )
    return replace(record, **changes)


def order(**changes: Any) -> FinanceRecord:
    record = FinanceRecord(
        kind=RecordKind.ORDER,
        company="10",
        key="OrderNo=P1001",
        number="P1001",
        state="Planned",
        etag='W/"Vy8iMjAi"',
        party_id="V200",
        party_name="Bergmann Industrietechnik GmbH",
        amount=Decimal("48250.50"),
        currency="EUR",
        doc_date=date(2026, 3, 1),
        site="STO1",
        approval_step="Step 2 of 3: Finance manager",
        approvers=(
            ApprovalStep(1, "Anna Lind", "Approved", "Department head", "2026-03-02T14:30:00+01:00", done=True),
            ApprovalStep(2, "Erik Holm", "Pending", "Finance manager"),
            ApprovalStep(3, None, "Pending", "CFO"),
        ),
        details=(("Buyer", "Karin Ek"),),
        deep_link=page_link(BASE, "PurchaseOrder/Form", [("OrderNo", "P1001")]),
    )
    return replace(record, **changes)


def voucher(**changes: Any) -> FinanceRecord:
    record = FinanceRecord(
        kind=RecordKind.VOUCHER,
        company="10",
        key="Company=10^AccountingYear=2026^VoucherType=M^VoucherNo=2026000123",
        number="M 2026000123",
        state="AwaitingApproval",
        party_id="JDOE",
        party_name="John Doe",
        amount=Decimal("7300.00"),
        currency="SEK",
        doc_date=date(2026, 3, 4),
        approval_step="Awaiting first approval",
        approvers=(ApprovalStep(1, "Maria Sjö", "Pending", "Approver"),),
        details=(("Voucher type", "M"), ("Accounting year", "2026"), ("Second approval", "Required")),
        deep_link=None,
    )
    return replace(record, **changes)


def _all_done(record: FinanceRecord, status: str) -> tuple[ApprovalStep, ...]:
    return tuple(
        replace(step, approver=step.approver or "Olof Berg", status=status, decided_at="2026-03-05T08:00:00Z",
                done=True)
        for step in record.approvers
    )


SCENARIOS: dict[str, tuple[FinanceRecord, EventType, str | None]] = {
    "invoice_new": (invoice(), NEW, None),
    "invoice_changed": (
        invoice(due_date=date(2026, 3, 3), approval_step="2 of 2 lines acknowledged"),
        CHANGED,
        "Preliminary",
    ),
    "invoice_resolved_approved": (
        invoice(
            state="PostedAuth",
            approvers=_all_done(invoice(), "Authorized"),
            approval_step="All lines authorized",
        ),
        RESOLVED,
        "Preliminary",
    ),
    "invoice_resolved_cancelled": (invoice(state="Cancelled"), RESOLVED, "Preliminary"),
    "order_new": (order(), NEW, None),
    "order_changed": (order(), CHANGED, "Released"),
    "order_resolved_approved": (
        order(state="Released", approvers=_all_done(order(), "Approved"), approval_step="Fully authorized"),
        RESOLVED,
        "Planned",
    ),
    "order_resolved_cancelled": (order(state="Cancelled"), RESOLVED, "Planned"),
    "voucher_new": (voucher(), NEW, None),
    "voucher_changed": (
        voucher(state="PartiallyApproved", approval_step="Second approval pending"),
        CHANGED,
        "AwaitingApproval",
    ),
    "voucher_resolved_approved": (
        voucher(
            state="Confirmed",
            approvers=_all_done(voucher(), "Approved"),
            approval_step="Approved",
            details=(("Voucher type", "M"), ("Accounting year", "2026"), ("Second approval", "Done")),
        ),
        RESOLVED,
        "PartiallyApproved",
    ),
    "voucher_resolved_cancelled": (voucher(state="Cancelled"), RESOLVED, "AwaitingApproval"),
}


def small_digest_input() -> list[tuple[EventType, FinanceRecord]]:
    return [
        (NEW, invoice()),
        (
            NEW,
            invoice(
                key="Company=10^InvoiceId=106",
                number="106",
                party_name="Fjord Logistics AS",
                party_id="S1002",
                amount=Decimal("980.00"),
                currency="NOK",
                due_date=date(2026, 3, 2),
                deep_link=None,
            ),
        ),
        (
            CHANGED,
            invoice(
                key="Company=10^InvoiceId=107",
                number="107",
                amount=Decimal("45000.00"),
                deep_link=invoice_link(107),
            ),
        ),
        (
            RESOLVED,
            invoice(
                key="Company=10^InvoiceId=90",
                number="90",
                state="PostedAuth",
                approvers=_all_done(invoice(), "Authorized"),
                deep_link=invoice_link(90),
            ),
        ),
        (NEW, order()),
        (
            NEW,
            order(
                key="OrderNo=P1002",
                number="P1002",
                amount=Decimal("1200.00"),
                currency="USD",
                party_name="Acme Corp",
                party_id="V300",
                deep_link=page_link(BASE, "PurchaseOrder/Form", [("OrderNo", "P1002")]),
            ),
        ),
        (NEW, voucher()),
        (CHANGED, voucher()),  # the same voucher again: the last event wins
    ]


def big_digest_input(n: int = 5000) -> list[tuple[EventType, FinanceRecord]]:
    kinds = (invoice, order, voucher)
    currencies = ("SEK", "EUR", "USD", "NOK")
    events = (NEW, NEW, NEW, CHANGED, RESOLVED)
    final = {invoice: "PostedAuth", order: "Released", voucher: "Confirmed"}
    out = []
    for i in range(n):
        make = kinds[i % 3]
        event = events[i % 5]
        record = make(
            key=f"K{i:05d}",
            number=f"{10000 + i}",
            party_name=f"Leverantör nummer {i} Aktiebolag",
            party_id=f"S{i:05d}",
            amount=Decimal(i * 7919 % 250_000) + Decimal("0.25"),
            currency=currencies[i % 4],
            due_date=date(2026, 3, 1 + i % 28) if make is invoice else None,
            deep_link=invoice_link(10000 + i) if make is invoice else None,
        )
        if event is RESOLVED:
            record = replace(record, state=final[make])
        out.append((event, record))
    return out


def status_view() -> StatusView:
    return StatusView(
        generated_at=NOW,
        ifs_reachable=True,
        token_state="valid",
        token_expires_at=NOW + 1800,
        sources=(
            SourceStatus("invoices · company 10", NOW - 120, NOW + 180, "ok", pending=12, sent=40),
            SourceStatus("orders · company 10", NOW - 300, NOW + 600, "failed: timeout", pending=3, sent=5),
        ),
        backlog=2,
        failures=1,
        last_error="POST /v3/conversations returned 429",
        last_error_at=NOW - 900,
        inactive_channels=("Finance – Oslo",),
        paused_channels=(),
    )


HELP_ROWS = [
    ("help", "Show what I can do"),
    (
        "link company <code> [kinds invoices,orders,vouchers] [min <amount>]",
        "Send this channel an IFS company",
    ),
    ("status", "IFS reachability, polls, deliveries and problems"),
]


def reply_cards() -> dict[str, dict[str, Any]]:
    return {
        "reply_help": help_card(HELP_ROWS),
        "reply_status": status_card(status_view(), CTX),
        "reply_links": links_card(
            [
                Binding("19:abc@thread.tacv2", "10"),
                Binding(
                    "19:abc@thread.tacv2",
                    "20",
                    kinds=frozenset({RecordKind.INVOICE}),
                    cost_centers=frozenset({"CC100", "CC200"}),
                    min_amount=Decimal("5000"),
                    created_by="Jane Doe",
                ),
            ],
            channel_names={"19:abc@thread.tacv2": "Finance approvals"},
        ),
        "reply_audit": audit_card(
            [
                AuditView(NOW - 60, "delivery", "failed", "post card", "status=429, code=Throttled"),
                AuditView(NOW - 600, "poll", "ok", "invoices · company 10", None),
            ],
            CTX,
        ),
        "reply_text": text_card(
            "Linked", ["This channel now receives company 10.", "Invoices **and** orders."]
        ),
    }


def all_cards() -> dict[str, dict[str, Any]]:
    cards = {
        name: record_card(rec, ev, CTX, previous_state=prev) for name, (rec, ev, prev) in SCENARIOS.items()
    }
    cards["digest_small"] = digest_card(small_digest_input(), CTX)
    cards["digest_5000"] = digest_card(big_digest_input(), CTX)
    cards.update(reply_cards())
    return cards


@pytest.fixture(scope="module")
def cards() -> dict[str, dict[str, Any]]:
    return all_cards()


# --------------------------------------------------------------------------- checkers

TEXT_KEYS = ("text", "title", "value", "fallbackText")
ALLOWED_TYPES = {"AdaptiveCard", "TextBlock", "Container", "FactSet", "ColumnSet", "Column", "Action.OpenUrl"}


def walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from walk(item)


def texts(card: dict[str, Any]) -> Iterator[str]:
    """Every string Teams renders as markdown (TextBlock.text, Fact title/value) plus fallbackText."""
    for node in walk(card):
        if str(node.get("type", "")).startswith("Action."):
            continue  # action titles are plain text, and only ever our own words
        for key in TEXT_KEYS:
            if isinstance(node.get(key), str):
                yield node[key]


def urls(card: dict[str, Any]) -> list[str]:
    return [node["url"] for node in walk(card) if node.get("type") == "Action.OpenUrl"]


def active(text: str) -> str:
    """The text with every backslash-escaped character (and its backslash) replaced by NUL."""
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~":
            out.append("\0\0")
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


BLOCK_START = re.compile(r"(?:[-+]|#{1,6}|\d{1,9}[.)])(?:\s|$)|(?:-\s*){3,}$")
LINK = re.compile(r"\[([^\[\]]*)\]\(([^()\s]*)\)")


def assert_inert(card: dict[str, Any], allowed_links: set[str] = frozenset()) -> None:
    """No IFS text can act as markdown, mention, HTML, entity or control character anywhere in the card."""
    for text in texts(card):
        bad = [ch for ch in text if unicodedata.category(ch) in ("Cc", "Cf", "Cs")]
        assert not bad, (text, bad)
        live = active(text)
        for match in LINK.finditer(live):
            assert match.group(2) in allowed_links, text  # only our own links, to our own URLs
        stripped = LINK.sub("", live)
        assert "[" not in stripped and "]" not in stripped, text
        for special in "<>*_~`{}":
            assert special not in live, (special, text)
        assert not re.search(r"&#?[A-Za-z0-9]+;", live), text
        assert not BLOCK_START.match(live), text  # no list item, heading or rule at the start
    for url in urls(card):
        assert url.startswith(("https://", "http://")), url
        assert not any(ch.isspace() for ch in url), url


def assert_teams_card(card: dict[str, Any]) -> None:
    errors = sorted(VALIDATOR.iter_errors(card), key=lambda e: list(e.path))
    assert not errors, [f"{list(e.path)}: {e.message[:200]}" for e in errors]
    assert card["$schema"] == "http://adaptivecards.io/schemas/adaptive-card.json"
    assert card["type"] == "AdaptiveCard" and card["version"] == "1.5"
    assert card["fallbackText"].strip()
    for node in walk(card):
        if "type" in node:
            assert node["type"] in ALLOWED_TYPES, node["type"]
        assert "isEnabled" not in node
        if str(node.get("type", "")).startswith("Action."):
            assert node.get("style") not in ("positive", "destructive")
    assert message_size(card) <= CARD_BUDGET_BYTES


def unescape(text: str) -> str:
    return re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", text)


# --------------------------------------------------------------------------- golden files

CARD_NAMES = [*SCENARIOS, "digest_small", "digest_5000", *reply_cards()]


def assert_matches_golden(name: str, card: dict[str, Any]) -> None:
    """The card equals tests/golden/cards/<name>.json (UPDATE_GOLDEN=1 writes it anew)."""
    path = GOLDEN / f"{name}.json"
    rendered = json.dumps(card, indent=2, ensure_ascii=False) + "\n"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(rendered, encoding="utf-8")
    assert path.exists(), f"missing {path}; run with UPDATE_GOLDEN=1"
    assert json.loads(path.read_text(encoding="utf-8")) == json.loads(rendered)


@pytest.mark.parametrize("name", CARD_NAMES)
def test_card_matches_golden(cards: dict[str, dict[str, Any]], name: str) -> None:
    assert_matches_golden(name, cards[name])


@pytest.mark.parametrize("name", CARD_NAMES)
def test_golden_card_is_valid_for_teams(name: str) -> None:
    card = json.loads((GOLDEN / f"{name}.json").read_text(encoding="utf-8"))
    assert_teams_card(card)


@pytest.fixture(scope="module")
def our_links() -> set[str]:
    links = {safe_url(record.deep_link) for _, record in big_digest_input() + small_digest_input()}
    return {link for link in links if link}


@pytest.mark.parametrize("name", CARD_NAMES)
def test_card_text_is_inert(cards: dict[str, dict[str, Any]], our_links: set[str], name: str) -> None:
    assert_inert(cards[name], our_links)


def test_schema_file_is_the_official_draft6_schema() -> None:
    jsonschema.Draft6Validator.check_schema(SCHEMA)
    assert SCHEMA["id"] == "http://adaptivecards.io/schemas/adaptive-card.json"
    assert VALIDATOR.is_valid({"type": "AdaptiveCard", "version": "1.5", "body": []})
    assert not VALIDATOR.is_valid({"type": "AdaptiveCard", "version": "1.5", "body": [{"type": "TextBlock"}]})


# --------------------------------------------------------------------------- record cards


def _facts(card: dict[str, Any]) -> dict[str, str]:
    return {fact["title"]: fact["value"] for node in walk(card) for fact in node.get("facts", [])}


def _badge(card: dict[str, Any]) -> tuple[str, str]:
    container = card["body"][0]
    return container["style"], container["items"][0]["text"]


def test_invoice_card_shows_what_an_approver_needs(cards: dict[str, dict[str, Any]]) -> None:
    card = cards["invoice_new"]
    facts = _facts(card)
    assert _badge(card) == ("warning", "Awaiting authorization · due in 3 days")
    assert facts["Supplier"] == "Nordic Steel AB (S1001)"
    assert facts["Supplier invoice no."] == "NS-2026-0042"
    assert facts["Invoice ID"] == "105"
    assert facts["Gross amount"] == f"SEK{NBSP}12,500.00"
    assert facts["Net amount"] == f"SEK{NBSP}10,000.00"
    assert facts["Due date"] == "Mar 8, 2026 (due in 3 days)"
    assert facts["Waiting for"] == "Per Berg"
    assert (
        facts["Step 1 · Authorizer"] == f"Jane Doe · Authorized · Mar 2, 2026, 10:15{NBSP}AM"
    )  # UTC → Stockholm
    assert card["actions"] == [{"type": "Action.OpenUrl", "title": "Open in IFS", "url": invoice().deep_link}]


def test_overdue_pending_invoice_is_flagged(cards: dict[str, dict[str, Any]]) -> None:
    assert _badge(cards["invoice_changed"]) == ("attention", "Awaiting authorization · overdue 2 days")


def test_changed_card_says_what_changed(cards: dict[str, dict[str, Any]]) -> None:
    notes = {name: [b["text"] for b in cards[name]["body"] if b.get("isSubtle")] for name in SCENARIOS}
    assert notes["order_changed"][0] == "State changed from Released to Planned"
    assert notes["invoice_changed"][0] == "Updated in IFS · now: 2 of 2 lines acknowledged"
    assert notes["voucher_changed"][0] == "State changed from Awaiting approval to Partially approved"
    assert _badge(cards["voucher_changed"])[1] == "Awaiting second approval"


@pytest.mark.parametrize(
    ("name", "badge"),
    [
        ("invoice_resolved_approved", ("good", "Authorized and posted")),
        ("order_resolved_approved", ("good", "Released")),
        ("voucher_resolved_approved", ("good", "Approved")),
        ("invoice_resolved_cancelled", ("emphasis", "Cancelled")),
        ("order_resolved_cancelled", ("emphasis", "Cancelled")),
        ("voucher_resolved_cancelled", ("emphasis", "Cancelled")),
    ],
)
def test_resolved_cards_render_the_outcome(cards: dict[str, dict[str, Any]], name: str, badge: tuple) -> None:
    card = cards[name]
    assert _badge(card) == badge
    assert card["fallbackText"].endswith(f"— {badge[1]}")
    assert "Waiting for" not in _facts(card)


def test_resolved_card_says_who_approved_and_when(cards: dict[str, dict[str, Any]]) -> None:
    notes = [b["text"] for b in cards["order_resolved_approved"]["body"] if b.get("isSubtle")]
    assert notes[0] == f"Last authorized by Olof Berg on Mar 5, 2026, 9:00{NBSP}AM · Was Planned"


def test_resolved_with_unknown_final_state_is_neutral() -> None:
    card = record_card(invoice(state="Preliminary"), RESOLVED, CTX)
    assert _badge(card) == ("default", "No longer awaiting authorization")


def test_order_and_voucher_facts(cards: dict[str, dict[str, Any]]) -> None:
    o, v = _facts(cards["order_new"]), _facts(cards["voucher_new"])
    assert (o["Order no."], o["Site"], o["Buyer"], o["Total amount"]) == (
        "P1001",
        "STO1",
        "Karin Ek",
        f"EUR{NBSP}48,250.50",
    )
    assert o["Authorization"] == "Step 2 of 3: Finance manager"
    assert o["Waiting for"] == "Erik Holm"
    assert (v["Voucher type"], v["Voucher no."], v["Accounting year"]) == ("M", "M 2026000123", "2026")
    assert (v["Entered by"], v["Second approval"], v["Amount"]) == (
        "John Doe (JDOE)",
        "Required",
        f"SEK{NBSP}7,300.00",
    )


def test_card_without_deep_link_has_no_action(cards: dict[str, dict[str, Any]]) -> None:
    assert "actions" not in cards["voucher_new"]


@pytest.mark.parametrize(
    "link",
    [
        "javascript:alert(1)",
        "data:text/html,<b>x</b>",
        "ftp://ifs/x",
        "https://",
        "https://ifs.example.com/a b",
        "//evil.example/x",
    ],
)
def test_unsafe_deep_link_is_dropped(link: str) -> None:
    assert "actions" not in record_card(invoice(deep_link=link), NEW, CTX)


def test_deep_link_parentheses_are_encoded_not_dropped() -> None:
    card = record_card(invoice(deep_link="https://ifs.example.com/page/X;$filter=(A eq 'x')"), NEW, CTX)
    assert card.get("actions") is None  # a raw space is not a URL IFS produces (page_link encodes it)
    card = record_card(invoice(deep_link="https://ifs.example.com/page/X;$filter=(A%20eq%20'x')"), NEW, CTX)
    assert card["actions"][0]["url"] == "https://ifs.example.com/page/X;$filter=%28A%20eq%20'x'%29"


def test_long_approval_chain_and_texts_are_trimmed_to_fit() -> None:
    steps = tuple(
        ApprovalStep(i, f"Approver {i} " + "x" * 150, "Pending", "Role " * 20) for i in range(1, 400)
    )
    record = invoice(
        approvers=steps, party_name="Ü" * 5000, details=tuple((f"L{i}", "v" * 400) for i in range(200))
    )
    card = record_card(record, NEW, CTX)
    assert_teams_card(card)
    assert any("more steps" in text or "not shown" in text for text in texts(card))
    assert _facts(card)["Supplier"].endswith("… (S1001)")


def test_minimal_record_renders() -> None:
    record = FinanceRecord(kind=RecordKind.ORDER, company="10", key="OrderNo=1", number="1", state="Planned")
    card = record_card(record, NEW, CTX)
    assert_teams_card(card)
    assert card["fallbackText"] == "Purchase order 1 — Awaiting authorization"


# --------------------------------------------------------------------------- injection

HOSTILE = [
    "[click](https://evil.example)",
    "![img](https://evil.example/x.png)",
    "<at>CEO</at>",
    "<script>alert(1)</script>",
    "<https://evil.example>",
    "&lt;at&gt;CEO&lt;/at&gt; &#60;b&#62;",
    "**bold** __b__ _x_ ~s~ `code`",
    "line1\nline2\r\n\tline3\u2028line4",
    "\u202eevil\u200b\u2066x\u2069\ufeff",
    "\x00\x07\x1b[31mred\x7f",
    "1. first",
    "- item",
    "# heading",
    "---",
    "{{DATE(2017-02-14T06:08:39Z, SHORT)}}",
    "\\[escaped](https://evil.example)",
    "a]\u200b(https://evil.example)",
    "[a]\n(https://evil.example)",
    "x" * 500,
]

hostile_text = st.one_of(st.sampled_from(HOSTILE), st.text(max_size=80))
maybe = st.one_of(st.none(), hostile_text)


@st.composite
def hostile_records(draw: st.DrawFn) -> FinanceRecord:
    steps = draw(
        st.lists(
            st.builds(ApprovalStep, st.integers(0, 99), maybe, hostile_text, maybe, maybe),
            max_size=4,
        )
    )
    details = draw(st.lists(st.tuples(hostile_text, hostile_text), max_size=4))
    labels = [
        "Supplier invoice no",
        "Buyer",
        "Voucher type",
        "Accounting year",
        "Entered by",
        "Second approval",
    ]
    details += [(label, draw(hostile_text)) for label in labels]
    return FinanceRecord(
        kind=draw(st.sampled_from(list(RecordKind))),
        company=draw(hostile_text),
        key=draw(hostile_text),
        number=draw(hostile_text),
        state=draw(hostile_text),
        etag=draw(hostile_text),
        party_id=draw(maybe),
        party_name=draw(maybe),
        amount=draw(st.one_of(st.none(), st.decimals(allow_nan=True, allow_infinity=True, places=2))),
        net_amount=draw(st.one_of(st.none(), st.decimals(allow_nan=False, allow_infinity=False, places=3))),
        currency=draw(maybe),
        doc_date=draw(st.one_of(st.none(), st.dates())),
        due_date=draw(st.one_of(st.none(), st.dates())),
        cost_center=draw(maybe),
        site=draw(maybe),
        approval_step=draw(maybe),
        approvers=tuple(steps),
        details=tuple(details),
        deep_link=draw(
            st.one_of(st.none(), hostile_text, st.just("https://evil.example/a)[x](https://evil"))
        ),
    )


@settings(max_examples=100, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(record=hostile_records(), event=st.sampled_from(list(EventType)), previous=maybe)
def test_hostile_text_in_every_field_stays_inert(
    record: FinanceRecord, event: EventType, previous: str | None
) -> None:
    card = record_card(record, event, CTX, previous_state=previous)
    assert_teams_card(card)
    assert_inert(card)


@settings(max_examples=30, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    records=st.lists(st.tuples(st.sampled_from(list(EventType)), hostile_records()), max_size=12), title=maybe
)
def test_hostile_text_in_digest_stays_inert(
    records: list[tuple[EventType, FinanceRecord]], title: str | None
) -> None:
    card = digest_card(records, CTX, title=title)
    assert_teams_card(card)
    allowed = {safe_url(record.deep_link) for _, record in records}
    assert_inert(card, {link for link in allowed if link})


@settings(max_examples=40, deadline=None, database=None)
@given(text=hostile_text, other=hostile_text)
def test_hostile_text_in_replies_stays_inert(text: str, other: str) -> None:
    view = StatusView(
        generated_at=NOW,
        token_state=text,
        sources=(SourceStatus(text, NOW, NOW, other),),
        last_error=other,
        last_error_at=NOW,
        inactive_channels=(text,),
        paused_channels=(other,),
    )
    produced = [
        help_card([(text, other)]),
        status_card(view, CTX),
        links_card(
            [Binding(text, other, cost_centers=frozenset({text}), created_by=other)],
            channel_names={text: other},
        ),
        audit_card([AuditView(NOW, text, other, text, other)], CTX),
        text_card(text, [other, text]),
    ]
    for card in produced:
        assert_teams_card(card)
        assert_inert(card)
    assert not re.search(r"<|\[|\*|_", active(view.as_text()))


def test_injected_link_mention_and_html_show_literally() -> None:
    record = invoice(
        party_name="[click](https://evil.example)", party_id="<at>CEO</at>", cost_center="<b>x</b> &lt;at&gt;"
    )
    facts = _facts(record_card(record, NEW, CTX))
    assert facts["Supplier"] == r"\[click\]\(https://evil.example\) (\<at\>CEO\</at\>)"
    assert facts["Cost centre"] == r"\<b\>x\</b\> \&lt;at\&gt;"


@settings(max_examples=300, deadline=None, database=None)
@given(text=st.text(max_size=200))
def test_inert_only_adds_escapes(text: str) -> None:
    out = inert(text, limit=None)
    visible = unescape(out)
    assert visible == clean(text)
    assert not any(unicodedata.category(ch) in ("Cc", "Cf", "Cs") for ch in visible)
    assert "  " not in visible and visible == visible.strip()
    kept = [ch for ch in text if not ch.isspace() and unicodedata.category(ch) not in ("Cc", "Cf", "Cs")]
    assert visible.replace(" ", "") == "".join(kept)


@settings(max_examples=200, deadline=None, database=None)
@given(text=st.text(min_size=1, max_size=300), limit=st.integers(1, 120))
def test_inert_limit_counts_visible_characters(text: str, limit: int) -> None:
    visible = unescape(inert(text, limit))
    assert len(visible) <= limit
    if len(clean(text)) > limit:
        assert visible.endswith("…")


def test_truncation_prefers_a_word_boundary() -> None:
    assert inert("Nordic Steel Aktiebolag Stockholm Branch", 25) == "Nordic Steel Aktiebolag…"
    assert inert("Supercalifragilisticexpialidocious", 10) == "Supercali…"
    assert inert("short", 10) == "short"
    assert inert(None) == ""


# --------------------------------------------------------------------------- locales and dates


@pytest.mark.parametrize(
    ("locale", "expected"),
    [
        ("en-US", f"USD{NBSP}1,234,567.89"),
        ("en-GB", f"USD{NBSP}1,234,567.89"),
        ("de-DE", f"1.234.567,89{NBSP}USD"),
        ("sv-SE", f"1{NBSP}234{NBSP}567,89{NBSP}USD"),
        ("fr-FR", f"1{NNBSP}234{NNBSP}567,89{NBSP}USD"),
        ("de_AT", f"1.234.567,89{NBSP}USD"),  # same language
        ("xx-YY", f"USD{NBSP}1,234,567.89"),  # unknown: en-US
    ],
)
def test_money_by_locale(locale: str, expected: str) -> None:
    assert money(Decimal("1234567.889"), "USD", locale) == expected


def test_money_minor_units_sign_and_rounding() -> None:
    assert money(Decimal("1234.5"), "JPY", "en-US") == f"JPY{NBSP}1,235"
    assert money(Decimal("1.2345"), "KWD", "de-DE") == f"1,235{NBSP}KWD"
    assert money(Decimal("-980.005"), "NOK", "sv-SE") == f"-980,01{NBSP}NOK"
    assert money(Decimal("-0.001"), "EUR", "de-DE") == f"0,00{NBSP}EUR"
    assert money(Decimal("999"), None, "en-US") == "999.00"
    assert money(Decimal("1E+3"), "sek", "en-US") == f"SEK{NBSP}1,000.00"
    assert money(Decimal("NaN"), "SEK", "en-US") == f"SEK{NBSP}—"
    assert money(Decimal("5"), "<at>x</at>", "en-US") == f"\\<at\\>x\\</at\\>{NBSP}5.00"


@pytest.mark.parametrize(
    ("locale", "expected"),
    [
        ("en-US", "Mar 5, 2026"),
        ("en-GB", "5 Mar 2026"),
        ("de-DE", "05.03.2026"),
        ("sv-SE", "2026-03-05"),
        ("fr-FR", "05/03/2026"),
        ("fi-FI", "5.3.2026"),
    ],
)
def test_day_by_locale(locale: str, expected: str) -> None:
    assert day(date(2026, 3, 5), locale) == expected


@pytest.mark.parametrize(
    ("due", "expected"),
    [
        (date(2026, 3, 8), "due in 3 days"),
        (date(2026, 3, 6), "due tomorrow"),
        (date(2026, 3, 5), "due today"),
        (date(2026, 3, 4), "overdue 1 day"),
        (date(2026, 3, 3), "overdue 2 days"),
        (date(2025, 3, 5), "overdue 365 days"),
    ],
)
def test_relative_due(due: date, expected: str) -> None:
    assert relative_due(due, TODAY) == expected


def test_ifs_times_convert_to_the_context_zone() -> None:
    ctx = CardContext(today=TODAY, locale="de-DE", tz="Europe/Berlin")
    assert ctx.ifs_time("2026-07-01T10:00:00Z") == "01.07.2026 12:00"
    assert ctx.ifs_time("2026-07-01T10:00:00") == "01.07.2026 10:00"  # naive: as IFS sent it
    assert ctx.ifs_time("2026-07-01") == "01.07.2026"
    assert ctx.ifs_time("yesterday <at>") == r"yesterday \<at\>"
    assert ctx.stamp(NOW) == "05.03.2026 13:00"


def test_context_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="time zone"):
        CardContext(today=TODAY, tz="Mars/Olympus")
    with pytest.raises(ValueError, match="http"):
        CardContext(today=TODAY, ifs_base_url="javascript:alert(1)")


def test_german_card_uses_german_numbers_and_dates() -> None:
    ctx = CardContext(today=TODAY, locale="de-DE", tz="Europe/Berlin")
    facts = _facts(record_card(invoice(), NEW, ctx))
    assert facts["Gross amount"] == f"12.500,00{NBSP}SEK"
    assert facts["Due date"] == "08.03.2026 (due in 3 days)"


# --------------------------------------------------------------------------- digest


def test_small_digest_counts_totals_and_orders_rows(cards: dict[str, dict[str, Any]]) -> None:
    card = cards["digest_small"]
    invoices = card["body"][2]
    assert invoices["items"][0]["text"] == "Supplier invoices · 4"
    assert invoices["items"][1]["text"] == "2 new · 1 changed · 1 resolved"
    totals = {fact["title"]: fact["value"] for fact in invoices["items"][2]["facts"]}
    assert totals == {
        "Pending SEK": f"SEK{NBSP}57,500.00 · 2 supplier invoices",
        "Pending NOK": f"NOK{NBSP}980.00 · 1 supplier invoice",
    }
    rows = [item for item in invoices["items"] if item["type"] == "ColumnSet"]
    firsts = [row["columns"][0]["items"][0]["text"] for row in rows]
    assert firsts[0].startswith("[107](https://ifs.example.com/")  # largest amount first
    assert firsts[-1] == "106 · Fjord Logistics AS (S1002)"  # no deep link: no link
    assert [a["title"] for a in card["actions"]] == [
        "Supplier invoices in IFS",
        "Purchase orders in IFS",
        "GL vouchers in IFS",
    ]
    assert card["actions"][1]["url"] == f"{BASE}/main/ifsapplications/web/page/PurchaseOrders/List"
    vouchers = card["body"][4]
    assert vouchers["items"][1]["text"] == "1 changed"
    assert (
        card["fallbackText"] == "IFS approvals digest: 4 supplier invoices, 2 purchase orders, 1 GL voucher"
    )


def test_5000_item_digest_fits_and_says_what_it_left_out(cards: dict[str, dict[str, Any]]) -> None:
    card = cards["digest_5000"]
    size = message_size(card)
    assert size <= CARD_BUDGET_BYTES < MAX_MESSAGE_BYTES
    all_text = list(texts(card))
    shown = sum(1 for node in walk(card) if node.get("type") == "ColumnSet")
    footer = card["body"][-1]["text"]
    assert footer == f"Showing {shown} of 5,000 documents; {5000 - shown:,} not listed."
    assert any(text.startswith("and ") and text.endswith("more supplier invoices") for text in all_text)
    assert shown > 0


def test_digest_without_base_url_has_no_list_links() -> None:
    card = digest_card(small_digest_input(), CardContext(today=TODAY))
    assert "actions" not in card


def test_empty_digest() -> None:
    card = digest_card([], CTX, title="Morning digest")
    assert_teams_card(card)
    assert card["fallbackText"] == "Morning digest: nothing to report"


# --------------------------------------------------------------------------- size guard


def test_message_size_counts_utf16_bytes() -> None:
    assert message_size({}) == 4
    assert message_size({"a": "é"}) == 2 * len('{"a": "é"}')
    assert message_size({"a": "😀"}) == 2 * (len('{"a": ""}') + 2)  # a surrogate pair is two code units


def test_fit_picks_the_richest_option_that_fits() -> None:
    built = []

    def build(n: int) -> dict[str, Any]:
        built.append(n)
        return {"x": "a" * n}

    card = fit(build, range(1000, -1, -1), budget=1000)
    assert message_size(card) <= 1000 < message_size(build(len(card["x"]) + 1))
    assert len(built) < 20


def test_fit_raises_when_even_the_smallest_card_is_too_big() -> None:
    with pytest.raises(CardTooLarge) as info:
        fit(lambda n: {"x": "a" * (5000 + n)}, [10, 0], budget=1000)
    assert info.value.budget == 1000 and info.value.size > 1000


# --------------------------------------------------------------------------- replies


def test_help_card_lists_usage_literally(cards: dict[str, dict[str, Any]]) -> None:
    body = cards["reply_help"]["body"]
    assert (
        body[2]["items"][0]["text"]
        == r"link company \<code\> \[kinds invoices,orders,vouchers\] \[min \<amount\>\]"
    )
    assert body[2]["items"][0]["fontType"] == "Monospace"


def test_status_card_and_text(cards: dict[str, dict[str, Any]]) -> None:
    facts = _facts(cards["reply_status"]["body"][3])  # the overview; sources follow with their own facts
    assert facts["IFS"] == "reachable"
    assert facts["Token"] == f"valid, expires Mar 5, 2026, 1:30{NBSP}PM (in 30 min)"
    assert (facts["Pending"], facts["Sent"], facts["Backlog"], facts["Failed deliveries"]) == (
        "15",
        "45",
        "2",
        "1",
    )
    badge = cards["reply_status"]["body"][0]
    assert (badge["style"], badge["items"][0]["text"]) == (
        "warning",
        "IFS reachable · 1 failed delivery · 1 inactive channel",
    )
    text = status_view().as_text()
    assert text.startswith("IFS reachable; token valid.\n")  # said once
    assert "invoices · company 10: last poll 2 min ago (ok), next in 3 min" in text
    failing = replace(status_view(), sources=(replace(status_view().sources[1], failing=True),))
    assert failing.as_text().startswith("1 of 1 source failing. IFS reachable; token valid.\n")
    assert "Inactive channels: Finance – Oslo" in text


def test_status_shows_unreadable_rows_only_for_the_source_that_has_them() -> None:
    view = replace(status_view(), sources=(
        SourceStatus("invoices · company 10", NOW - 120, NOW + 180, "ok", pending=12, sent=40, quarantined=2),
        SourceStatus("orders · company 10", NOW - 300, NOW + 600, "ok", pending=3, sent=5),
    ))
    card = status_card(view, CTX)
    assert_teams_card(card)
    facts = [[f["title"] for f in el["facts"]] for item in card["body"] if item.get("type") == "Container"
             for el in item["items"] if el.get("type") == "FactSet"]
    assert [("Unreadable rows" in titles) for titles in facts] == [True, False]
    assert "sent 40, 2 unreadable rows set aside." in view.as_text()


def test_status_card_without_context_uses_utc() -> None:
    card = status_card(StatusView(generated_at=NOW))
    assert card["body"][2]["text"] == f"As of Mar 5, 2026, 12:00{NBSP}PM"


def test_long_replies_are_trimmed() -> None:
    entries = [AuditView(NOW - i, "delivery", "failed", "x" * 200, "y" * 300) for i in range(500)]
    card = audit_card(entries)
    assert_teams_card(card)
    assert card["body"][-1]["text"].endswith("older entries not shown")
    bindings = [Binding(f"19:{i}@thread.tacv2", str(i)) for i in range(1000)]
    card = links_card(bindings)
    assert_teams_card(card)
    assert card["body"][-1]["text"].endswith("more links")


def test_odata_enum_literals_and_plain_event_strings_are_understood() -> None:
    record = voucher(state="IfsApp.ApproveVouchersHandling.VoucherState'PartiallyApproved'")
    card = record_card(record, "changed", CTX, previous_state="AwaitingApproval")
    assert _badge(card) == ("warning", "Awaiting second approval")
