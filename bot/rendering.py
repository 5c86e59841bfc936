"""Card adaptation for the running service: deliveries and stored records become Adaptive Cards (through
the pure builders in `cards`) with their "Open in IFS" link, the approver to mention and who is on it; and
a record's cards elsewhere refreshed when someone claims it."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from bot.delivery import CardRenderer, DeliveryWorker
from cards import CardContext, digest_card, record_card
from core.clock import SYSTEM_CLOCK, Clock
from core.domain import EventType, FinanceRecord, RecordKind
from core.people import Mention, next_approver
from store.outbox import Delivery
from store.people import Claims, People


class CardRendering:
    """The service's card builders, with what they need from outside the card: the locale, time zone and
    IFS address, the record's link (`link`: built at render time, not per polled row), people, claims."""

    def __init__(self, *, people: People, claims: Claims, link: Callable[[FinanceRecord], FinanceRecord],
                 timezone: str, locale: str, ifs_base_url: str | None, list_pages: Mapping[RecordKind, str],
                 digest_max_rows: int, clock: Clock = SYSTEM_CLOCK) -> None:
        self.clock = clock
        self.people = people
        self.claims = claims
        self.link = link
        self.timezone = timezone
        self.tz = ZoneInfo(timezone)
        self.locale = locale
        self.ifs_base_url = ifs_base_url
        self.list_pages = dict(list_pages)
        self.digest_max_rows = digest_max_rows

    def card_context(self) -> CardContext:
        return CardContext(today=datetime.fromtimestamp(self.clock.time(), self.tz).date(), locale=self.locale, tz=self.timezone,
                           ifs_base_url=self.ifs_base_url, list_pages=dict(self.list_pages))

    def renderer(self) -> CardRenderer:
        """What the delivery worker renders with."""
        return CardRenderer(self.render_record, self.render_digest, self.render_reply)

    async def next_approver(self, record: FinanceRecord) -> Mention | None:
        """The Teams user to mention for the record's next open approval line: confirmed mappings only."""
        who = next_approver(record)
        person = await self.people.get(who) if who else None
        if person is None or not person.active or not person.mention_id:
            return None
        return Mention(id=person.mention_id, name=person.name)

    async def _record_card(self, record: FinanceRecord, event: EventType, previous: str | None,
                           record_id: str) -> dict[str, Any]:
        """A record's card with its next approver mentioned and who is on it now."""
        return record_card(self.link(record), event, self.card_context(), previous_state=previous,
                           next_approver=await self.next_approver(record), claimable=True,
                           claim=await self.claims.get(record_id))

    async def render_record(self, d: Delivery) -> tuple[dict[str, Any], str]:
        card = await self._record_card(d.record, d.event_type, d.previous_state, d.record_id)
        return card, card.get("fallbackText", d.record.number)

    async def render_record_card(self, record_id: str) -> dict[str, Any] | None:
        """A record's card as its latest event shows it, with who is on it now (card actions answer with it)."""
        latest = await self.claims.latest(record_id)
        if latest is None:
            return None
        event, record, previous = latest
        return await self._record_card(record, event, previous, record_id)

    def render_digest(self, ds: Sequence[Delivery]) -> tuple[dict[str, Any], str]:
        card = digest_card([(d.event_type, self.link(d.record)) for d in ds], self.card_context(),
                           max_rows=self.digest_max_rows)
        return card, card.get("fallbackText", f"{len(ds)} documents")

    @staticmethod
    def render_reply(d: Delivery) -> str:
        return f"{d.record.kind.value.capitalize()} {d.record.number} is now {d.record.state}."

    async def refresh_cards(self, worker: DeliveryWorker, record_id: str, clicked: str, card: dict[str, Any]) -> int:
        """Put a record's card as it reads now (who is on it) in every other conversation that shows it, paced
        like deliveries."""
        updated = 0
        for conversation, posted in await self.claims.cards_of(record_id):
            if conversation != clicked:
                updated += await worker.update_card(conversation, posted, card, card["fallbackText"],
                                                    what="card refresh")
        return updated
