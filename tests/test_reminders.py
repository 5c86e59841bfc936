"""Reminder digests at set local times on business days, per channel and per approver, and snoozing them.

The service runs on an injected clock; reminders are asked for at chosen instants (no sleeping, no timers).
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest

from bot.reminders import Reminders
from cards.text import CardContext
from core.clock import FakeClock
from core.domain import FinanceRecord, RecordKind
from core.settings import PeopleSettings, load_settings
from simulator.connector import ConnectorStandIn
from tests import test_people
from tests.conftest import CHANNEL, post_activity, write_config
from tests.test_people import ALEX, alain_waits, chat_messages

connector = test_people.connector  # the stand-in without Teams' per-thread limits

# Europe/Stockholm moves to summer time on Sunday 2027-03-28: 09:00 is 08:00 UTC before, 07:00 UTC after.
FRI_0859 = datetime(2027, 3, 26, 7, 59, tzinfo=UTC).timestamp()
FRI_0900 = datetime(2027, 3, 26, 8, 0, tzinfo=UTC).timestamp()
FRI_0930 = datetime(2027, 3, 26, 8, 30, tzinfo=UTC).timestamp()
SAT_0900 = datetime(2027, 3, 27, 8, 0, tzinfo=UTC).timestamp()
MON_0859 = datetime(2027, 3, 29, 6, 59, tzinfo=UTC).timestamp()  # 08:59 summer time
MON_0900 = datetime(2027, 3, 29, 7, 0, tzinfo=UTC).timestamp()  # 09:00 summer time
MON_1400 = datetime(2027, 3, 29, 12, 0, tzinfo=UTC).timestamp()
TUE_0900 = datetime(2027, 3, 30, 7, 0, tzinfo=UTC).timestamp()  # a configured holiday below
WED_0900 = datetime(2027, 3, 31, 7, 0, tzinfo=UTC).timestamp()

REMINDERS = """
[people]
remind_at = ["09:00"]
remind_after_days = 0  # every pending document is due a reminder (the documents here are minutes old)
[schedule]
holidays = [2027-03-30]
"""


@pytest.fixture
async def clocked(tmp_path, ifs):
    """A started service on a fake clock; the test moves the clock to each instant it asks about."""
    import app

    made = []

    async def factory(extra: str, at: float):
        clock = FakeClock(start=at)
        settings = load_settings(write_config(tmp_path, extra), env={})
        svc = await app.build_service(settings, ifs.vault_secrets(), clock=clock)
        await svc.start(background=False)
        made.append(svc)
        return svc, clock

    yield factory
    for svc in made:
        await svc.stop()
        await svc.db.close()


def reminders_in(stand_in: ConnectorStandIn, conversation: str) -> list[dict[str, Any]]:
    out = []
    for a in stand_in.posts(conversation):
        for att in a.activity.get("attachments") or []:
            if att["content"].get("fallbackText", "").startswith("Reminder: "):
                out.append(att["content"])
    return out


async def at(svc, clock: FakeClock, when: float) -> int:
    clock.advance(when - clock.time())
    return await svc.reminders.run_due(clock.time())


async def test_reminders_at_nine_local_time_on_business_days_only(ifs, connector, clocked):
    svc, clock = await clocked(REMINDERS, FRI_0859)
    order = await alain_waits(svc, connector, ifs)

    assert await at(svc, clock, FRI_0859) == 0
    assert await at(svc, clock, FRI_0900) == 2  # the channel and Alex
    assert await at(svc, clock, FRI_0930) == 0  # once per slot
    assert await at(svc, clock, SAT_0900) == 0  # weekend
    assert await at(svc, clock, MON_0859) == 0  # 08:59 in summer time, although 09:00 winter time has passed
    assert await at(svc, clock, MON_0900) == 2
    assert await at(svc, clock, TUE_0900) == 0  # holiday
    assert await at(svc, clock, WED_0900) == 2

    [first, *_] = channel_reminders = reminders_in(connector, CHANNEL)
    assert len(channel_reminders) == 3
    assert first["fallbackText"] == "Reminder: waiting for approval: 2 documents"  # the linked order and ALAIN's
    rows = [b["columns"][0]["items"][0]["text"] for b in first["body"] if b["type"] == "ColumnSet"]
    assert all(r.startswith("[") and "](http" in r for r in rows)  # each with its deep link
    personal = reminders_in(connector, ALEX.chat)
    assert [p["fallbackText"] for p in personal] == ["Reminder: waiting for you: 1 document"] * 3
    [button] = [a for b in personal[0]["body"] if b["type"] == "ActionSet" for a in b["actions"]]
    assert (button["type"], button["title"]) == ("Action.Submit", "Remind me tomorrow")
    assert button["data"] == {"verb": "snooze", "record_id": f"order:10:OrderNo={order['OrderNo']}"}
    sent = await svc.audit.recent(limit=20, category="delivery")
    assert sum(r.action == "reminder" and r.outcome == "ok" for r in sent) == 6


async def test_snooze_suppresses_exactly_one_reminder(ifs, connector, clocked):
    svc, clock = await clocked(REMINDERS.replace('["09:00"]', '["09:00", "14:00"]'), MON_0859)
    order = await alain_waits(svc, connector, ifs)
    assert await at(svc, clock, MON_0900) == 2
    [reminder] = reminders_in(connector, ALEX.chat)
    [button] = [a for b in reminder["body"] if b["type"] == "ActionSet" for a in b["actions"]]

    pressed = ALEX.message("", connector.service_url)
    pressed["value"] = button["data"]
    pressed.pop("text")
    before = len(chat_messages(connector, ALEX))
    assert await post_activity(svc.base_url, pressed) in (200, 201)
    assert [s.text for s in chat_messages(connector, ALEX)[before:]] == ["Fine: I will remind you about it tomorrow."]
    row = (await svc.audit.recent(limit=1, category="people"))[0]
    assert (row.action, row.record_id) == ("reminder snoozed", f"order:10:OrderNo={order['OrderNo']}")

    assert await at(svc, clock, MON_1400) == 1  # the channel only: Alex's one document is snoozed
    assert len(reminders_in(connector, ALEX.chat)) == 1
    assert await at(svc, clock, TUE_0900) == 0  # holiday
    assert await at(svc, clock, WED_0900) == 2  # "tomorrow" is the next business day: Alex again
    assert len(reminders_in(connector, ALEX.chat)) == 2


def record(number: str, *, due: date | None = None, amount: str = "100") -> FinanceRecord:
    return FinanceRecord(kind=RecordKind.INVOICE, company="10", key=f"InvoiceId={number}", number=number,
                         state="Preliminary", amount=Decimal(amount), currency="EUR", due_date=due)


def test_which_documents_are_due_for_a_reminder():
    settings = PeopleSettings(remind_at=("09:00",), remind_after_days=3, remind_due_within_days=2)
    reminders = Reminders(None, None, settings, timezone="Europe/Stockholm", holidays=(),  # type: ignore[arg-type]
                          card_context=lambda: CardContext(date(2027, 3, 29)), link=lambda r: r)
    now = MON_0900
    day = 86400.0
    pending = [
        (record("young"), now - 2 * day),
        (record("old"), now - 3 * day - 60),
        (record("due-in-2", due=date(2027, 3, 31)), now),
        (record("due-in-3", due=date(2027, 4, 1)), now),
        (record("overdue", due=date(2027, 3, 1)), now),
    ]
    assert [r.number for r in reminders.due(pending, now)] == ["old", "due-in-2", "overdue"]


def test_reminder_rows_by_due_date_then_amount():
    from cards.reminders import reminder_card

    records = [record("a", due=date(2027, 4, 2), amount="10"), record("b"), record("c", due=date(2027, 4, 1)),
               record("d", due=date(2027, 4, 2), amount="900")]
    card = reminder_card(records, CardContext(date(2027, 3, 29)), title="Reminder: waiting for you", snooze=True)
    rows = [b["columns"][0]["items"][0]["text"] for b in card["body"] if b["type"] == "ColumnSet"]
    assert rows == ["c", "d", "a", "b"]
