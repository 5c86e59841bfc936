"""Cards about people: mentions of mapped approvers and the `mine` list (golden files, Adaptive Cards 1.5
schema, inert IFS text). Regenerate the golden files with `UPDATE_GOLDEN=1`, then review the diff."""

from __future__ import annotations

from dataclasses import replace
from datetime import date
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cards import record_card
from cards.mentions import mention_text
from cards.people import mine_card
from cards.reminders import reminder_card
from cards.text import NBSP, safe_url
from core.domain import ApprovalStep, EventType
from core.people import Claim, Mention, next_approver
from tests.test_cards import (
    ALLOWED_TYPES,
    CTX,
    NOW,
    VALIDATOR,
    assert_inert,
    assert_matches_golden,
    assert_teams_card,
    hostile_records,
    hostile_text,
    invoice,
    order,
    texts,
)

ALEX = Mention(id="aad-alex", name="Alex Wilber")


def without_host_extension(card: dict[str, Any]) -> dict[str, Any]:
    """The card without `msteams`: Teams' own top-level property, which the Adaptive Cards schema (closed
    at the top level) does not list. It is checked on its own below."""
    return {k: v for k, v in card.items() if k != "msteams"}


def assert_mentions(card: dict[str, Any], mentions: list[Mention]) -> None:
    """Every mention entity is ours and its `<at>` text is in the card; no other live `<at>` anywhere."""
    entities = card.get("msteams", {}).get("entities", [])
    assert entities == [{"type": "mention", "text": mention_text(m), "mentioned": {"id": m.id, "name": m.name}}
                        for m in mentions]
    lines = [t for t in texts(without_host_extension(card)) if any(e["text"] in t for e in entities)]
    assert len(lines) == len(entities)
    for entity in entities:
        assert lines.count(f"Next approver: {entity['text']}") == 1
    rest = without_host_extension(card)
    rest["body"] = [b for b in card["body"] if not (b.get("type") == "TextBlock" and b["text"] in lines)]
    assert_inert(rest, {a["url"] for a in card.get("actions", []) if a.get("type") == "Action.OpenUrl"})


def mentioned_order() -> dict[str, Any]:
    return record_card(order(), EventType.NEW, CTX, next_approver=ALEX)


def mine() -> dict[str, Any]:
    records = [
        order(),
        invoice(),
        invoice(number="106", key="Company=10^InvoiceId=106", due_date=date(2026, 3, 1), amount=Decimal("99.5")),
        order(number="P1002", key="OrderNo=P1002", doc_date=date(2026, 2, 1)),
    ]
    return mine_card(records, CTX, who="ALAIN")


def claimable() -> dict[str, Any]:
    return record_card(order(), EventType.NEW, CTX, next_approver=ALEX, claimable=True)


def claimed() -> dict[str, Any]:
    claim = Claim(order().record_id, "aad-megan", "Megan Bowen", NOW - 3600)
    return record_card(order(), EventType.CHANGED, CTX, claimable=True, claim=claim)


def reminder(snooze: bool) -> dict[str, Any]:
    records = [order(), invoice(), invoice(number="106", key="Company=10^InvoiceId=106", due_date=date(2026, 3, 1))]
    return reminder_card(records, CTX, title="Reminder: waiting for you" if snooze else "Reminder", snooze=snooze)


GOLDEN_CARDS = {"people_order_mention": mentioned_order, "people_mine": mine,
                "people_reminder_personal": lambda: reminder(True), "people_reminder_channel": lambda: reminder(False),
                "people_mine_empty": lambda: mine_card([], CTX, who="ALAIN"),
                "people_order_claimable": claimable, "people_order_claimed": claimed}
ACTIONS = {"Action.Execute", "Action.Submit"}


def assert_valid_with_actions(card: dict[str, Any]) -> None:
    """assert_teams_card, with the Universal Action and its fallback allowed (both in the 1.5 schema)."""
    card = without_host_extension(card)
    errors = sorted(VALIDATOR.iter_errors(card), key=lambda e: list(e.path))
    assert not errors, [f"{list(e.path)}: {e.message[:200]}" for e in errors]
    rest = dict(card, actions=[a for a in card.get("actions", []) if a["type"] not in ACTIONS],
                body=[b for b in card["body"] if b["type"] != "ActionSet"])
    if not rest["actions"]:
        del rest["actions"]
    assert_teams_card(rest)
    for block in card["body"]:
        if block["type"] == "ActionSet":
            assert [a["type"] for a in block["actions"]] == ["Action.Submit"]
            assert set(block["actions"][0]["data"]) == {"verb", "record_id"}
    for action in card.get("actions", []):
        if action["type"] == "Action.Execute":
            assert action["verb"] in ("claim", "release") and set(action["data"]) == {"record_id"}
            assert action["fallback"]["type"] == "Action.Submit"
            assert action["fallback"]["data"] == {"verb": action["verb"], **action["data"]}
        assert action["type"] in ALLOWED_TYPES | ACTIONS


@pytest.mark.parametrize("name", sorted(GOLDEN_CARDS))
def test_people_card_matches_golden_and_is_valid_for_teams(name: str) -> None:
    card = GOLDEN_CARDS[name]()
    assert_matches_golden(name, card)
    assert_valid_with_actions(card)


def test_the_next_approver_is_mentioned_from_the_mapping_only() -> None:
    card = mentioned_order()
    assert_mentions(card, [ALEX])
    assert "Next approver: <at>Alex Wilber</at>" in texts(card)
    assert "Waiting for: Erik Holm" in [f"{f['title']}: {f['value']}" for b in card["body"] if b["type"] == "FactSet"
                                        for f in b["facts"]]  # IFS's own words stay as they were


def test_no_mention_without_a_mapping_or_once_the_document_left() -> None:
    assert "msteams" not in record_card(order(), EventType.NEW, CTX)
    resolved = record_card(order(state="Released"), EventType.RESOLVED, CTX, next_approver=ALEX)
    assert "msteams" not in resolved and not [t for t in texts(resolved) if "<at>" in t]


def test_an_ifs_approver_named_like_a_mention_stays_inert() -> None:
    hostile = order(approvers=(ApprovalStep(1, "<at>CEO</at>", "Pending", "<at>Board</at>"),))
    plain = record_card(hostile, EventType.NEW, CTX)
    assert "msteams" not in plain
    assert_inert(plain, {plain["actions"][0]["url"]})
    mapped = record_card(hostile, EventType.NEW, CTX, next_approver=ALEX)
    assert_mentions(mapped, [ALEX])
    assert next_approver(hostile) == "<AT>CEO</AT>"  # never valid as a mapped IFS user: no mapping can match


def test_a_mapped_name_with_markdown_is_inert_inside_the_mention() -> None:
    odd = Mention(id="aad-x", name="[x](https://evil.example) *Bob*")
    card = record_card(order(), EventType.NEW, CTX, next_approver=odd)
    [line] = [t for t in texts(card) if t.startswith("Next approver: ")]
    assert line == r"Next approver: <at>\[x\]\(https://evil.example\) \*Bob\*</at>"
    assert card["msteams"]["entities"][0]["text"] == line.removeprefix("Next approver: ")


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(record=hostile_records(), event=st.sampled_from(list(EventType)), name=hostile_text)
def test_hostile_records_with_a_mention_stay_inert(record, event: EventType, name: str) -> None:
    mention = Mention(id="aad-x", name=name)
    card = record_card(record, event, CTX, next_approver=mention)
    assert_teams_card(without_host_extension(card))
    pending = event is not EventType.RESOLVED
    assert_mentions(card, [mention] if pending else [])


def test_mine_lists_due_first_then_the_oldest() -> None:
    card = mine()
    rows = [t for t in texts(card) if t.startswith("[")]
    numbers = [r[1:r.index("]")] for r in rows]
    assert numbers == ["106", "105", "P1002", "P1001"]
    assert card["fallbackText"] == "Waiting for ALAIN: 4 documents"


def test_mine_of_many_fits_teams() -> None:
    many = [replace(order(), number=f"P{i}", key=f"OrderNo=P{i}") for i in range(3000)]
    card = mine_card(many, CTX, who="ALAIN")
    assert_teams_card(card)
    assert any(t.startswith("and ") and t.endswith("more documents") for t in texts(card))


def test_the_claim_button_and_who_is_on_it() -> None:
    assert [(a["title"], a["verb"]) for a in claimable()["actions"] if a["type"] == "Action.Execute"] == [
        ("I'm on it", "claim")]
    card = claimed()
    assert [(a["title"], a["verb"]) for a in card["actions"] if a["type"] == "Action.Execute"] == [
        ("Release", "release")]
    assert f"Megan Bowen is on it since 12:00{NBSP}PM" in texts(card)  # 12:00 CET, an hour before NOW (13:00 CET)
    assert "actions" not in record_card(order(), EventType.NEW, CTX) or all(
        a["type"] == "Action.OpenUrl" for a in record_card(order(), EventType.NEW, CTX)["actions"])


def test_no_claim_button_once_the_document_left() -> None:
    claim = Claim(order().record_id, "aad-megan", "Megan Bowen", NOW)
    card = record_card(order(state="Released"), EventType.RESOLVED, CTX, claimable=True, claim=claim)
    assert all(a["type"] == "Action.OpenUrl" for a in card.get("actions", []))
    assert not [t for t in texts(card) if "is on it" in t]


@settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(record=hostile_records(), name=hostile_text)
def test_a_hostile_holder_name_stays_inert(record, name: str) -> None:
    card = record_card(record, EventType.NEW, CTX, claimable=True, claim=Claim(record.record_id, "x", name, NOW))
    assert_valid_with_actions(card)
    assert_inert(without_host_extension(card), {a["url"] for a in card.get("actions", [])
                                                if a["type"] == "Action.OpenUrl"})


@settings(max_examples=30, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=st.lists(hostile_records(), max_size=8))
def test_hostile_records_in_reminders_and_mine_stay_inert(records) -> None:
    allowed = {safe_url(r.deep_link) for r in records} - {None}
    for card in (reminder_card(records, CTX, title="Reminder", snooze=True), mine_card(records, CTX, who="X")):
        assert_valid_with_actions(card)
        assert_inert(card, allowed)
