"""Reminder digests on business days at set times: per channel (its links) and per approver (personal chat)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Collection, Sequence
from datetime import date, datetime, time
from typing import Any
from zoneinfo import ZoneInfo

from cards.reminders import reminder_card
from cards.text import CardContext
from core.domain import FinanceRecord
from core.people import next_approver
from core.settings import PeopleSettings, parse_hhmm
from core.workdays import is_business_day, next_business_day
from store.db import Database
from store.unit import Store

log = logging.getLogger(__name__)

Send = Callable[[str, dict[str, Any], str], Awaitable[bool]]


class Reminders:
    def __init__(self, db: Database, send: Send, settings: PeopleSettings, *, timezone: str,
                 holidays: Collection[date], card_context: Callable[[], CardContext],
                 link: Callable[[FinanceRecord], FinanceRecord]) -> None:
        self.send = send  # (conversation id, card, text) -> sent
        self.settings = settings
        self.tz = ZoneInfo(timezone)
        self.holidays = frozenset(holidays)
        self.card_context = card_context
        self.link = link
        store = Store(db)
        self.store, self.people, self.bindings = store.reminders, store.people, store.bindings
        self.times = sorted(parse_hhmm(f"people.remind_at[{i}]", t) for i, t in enumerate(settings.remind_at))

    def slot(self, now: float) -> str | None:
        """The latest reminder time that has passed today (local wall time, so DST moves it with the
        clocks), as 'YYYY-MM-DD HH:MM'; None on a weekend or holiday, or before the first time."""
        local = datetime.fromtimestamp(now, self.tz)
        if not self.times or not is_business_day(local.date(), self.holidays):
            return None
        passed = [t for t in self.times if (local.hour, local.minute) >= t]
        if not passed:
            return None
        h, m = passed[-1]
        return f"{local.date().isoformat()} {h:02d}:{m:02d}"

    def snooze_until(self, now: float) -> float:
        """'Remind me tomorrow': the start of the next business day."""
        local = datetime.fromtimestamp(now, self.tz)
        return datetime.combine(next_business_day(local.date(), self.holidays), time(0, 0), self.tz).timestamp()

    def due(self, pending: Sequence[tuple[FinanceRecord, float]], now: float) -> list[FinanceRecord]:
        today = datetime.fromtimestamp(now, self.tz).date()
        old = self.settings.remind_after_days * 86400.0
        return [r for r, first_seen in pending
                if now - first_seen > old
                or (r.due_date is not None and (r.due_date - today).days <= self.settings.remind_due_within_days)]

    async def run_due(self, now: float) -> int:
        """Send the reminders of the slot that is due at `now`, once; returns the cards sent."""
        slot = self.slot(now)
        if slot is None or not await self.store.take_slot(slot):
            return 0
        records = [self.link(r) for r in self.due(await self.store.pending(), now)]
        if not records:
            return 0
        ctx = self.card_context()
        sent = 0
        by_channel: dict[str, dict[str, FinanceRecord]] = {}  # channel -> its records by id (a record once)
        for binding in await self.bindings.all(active_only=True):
            by_channel.setdefault(binding.channel_id, {}).update(
                (r.record_id, r) for r in records if binding.matches(r))
        for channel_id, chosen in sorted(by_channel.items()):
            if chosen:
                card = reminder_card(list(chosen.values()), ctx, title="Reminder: waiting for approval")
                sent += await self.send(channel_id, card, card["fallbackText"])
        waiting: dict[str, list[FinanceRecord]] = {}  # IFS user -> the records whose next line is theirs
        for r in records:
            if (who := next_approver(r)) is not None:
                waiting.setdefault(who, []).append(r)
        chats: dict[str, tuple[str, list[FinanceRecord]]] = {}
        for person in (await self.people.active()).values():
            if not (person.personal and self.settings.personal and person.conversation_id):
                continue
            user = person.aad_object_id or person.teams_id or person.ifs_user
            entry = chats.setdefault(person.conversation_id, (user, []))
            entry[1].extend(waiting.get(person.ifs_user, ()))
        for chat, (user, mine) in sorted(chats.items()):
            snoozed = await self.store.snoozed(user, now)
            mine = [r for r in mine if r.record_id not in snoozed]
            if mine:
                card = reminder_card(mine, ctx, title="Reminder: waiting for you", snooze=True)
                sent += await self.send(chat, card, card["fallbackText"])
        log.info("reminder %s: %d cards sent", slot, sent)
        return sent
