"""Card actions: "I'm on it" (claim) and release, from Action.Execute invokes or their Action.Submit fallback."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from bot.authz import Actor
from cards.claims import CLAIM, RELEASE
from cards.reminders import SNOOZE
from core.clock import SYSTEM_CLOCK, Clock
from store.db import Database
from store.unit import Store

log = logging.getLogger(__name__)


class ActionOutcome(StrEnum):
    OK = "ok"
    DENIED = "denied"  # someone else holds the document
    UNKNOWN = "unknown"  # no such verb or document


@dataclass(frozen=True)
class ActionResult:
    outcome: ActionOutcome
    message: str
    card: dict[str, Any] | None = None  # the record's card as it reads now, for everyone


class CardActions:
    """Runs one card action and answers with the refreshed card; every attempt is audited."""

    def __init__(self, db: Database, render: Callable[[str], Awaitable[dict[str, Any] | None]], *,
                 clock: Clock = SYSTEM_CLOCK,
                 snooze_until: Callable[[float], float] | None = None,
                 refresh: Callable[[str, str, dict[str, Any]], Awaitable[int]] | None = None) -> None:
        self.refresh = refresh  # (record id, clicked conversation, its card now) -> its other cards updated
        self.render = render  # record id -> its card now (None: no such record)
        self.now = clock.time
        self.snooze_until = snooze_until  # now -> when "remind me tomorrow" ends
        self.store = Store(db, clock)
        self.claims = self.store.claims
        self.audit = self.store.audit

    async def run(self, channel_id: str, actor: Actor, verb: Any, data: Any) -> ActionResult:
        record_id = data.get("record_id") if isinstance(data, dict) else None
        if verb == SNOOZE and self.snooze_until is not None and isinstance(record_id, str) and len(record_id) <= 300:
            return await self._snooze(channel_id, actor, record_id)
        if verb not in (CLAIM, RELEASE) or not isinstance(record_id, str) or len(record_id) > 300:
            await self.audit.record("people", "card action", "error", channel_id=channel_id, actor=actor.label,
                                    verb=str(verb)[:40], problem="unknown action")
            return ActionResult(ActionOutcome.UNKNOWN, "I don't know that action.")
        if await self.claims.latest(record_id) is None:
            await self.audit.record("people", f"document {verb}", "error", channel_id=channel_id,
                                    actor=actor.label, record_id=record_id[:300], problem="unknown document")
            return ActionResult(ActionOutcome.UNKNOWN, "I don't know that document.")
        user = (actor.aad_object_id or "").lower() or actor.id
        async with self.store.unit() as u:
            if verb == CLAIM:
                holder = await u.claims.claim(record_id, user, actor.name or actor.label)
                ok = holder.user_id == user
                action = "document claimed"
            else:
                ok = await u.claims.release(record_id, user)
                action = "document released"
            await u.audit.add("people", action, "ok" if ok else "denied", channel_id=channel_id,
                                 actor=actor.label, record_id=record_id)
        card = await self.render(record_id)
        if ok and self.refresh is not None and card is not None:
            # the clicked card is answered (and updated) by the caller; the same document's cards elsewhere here
            await self.refresh(record_id, channel_id, card)
        if ok:
            message = "You are on it." if verb == CLAIM else "Released."
        else:
            holder = await self.claims.get(record_id)
            message = f"{holder.name} is on it already." if holder is not None else "Nobody is on it."
        return ActionResult(ActionOutcome.OK if ok else ActionOutcome.DENIED, message, card)

    async def _snooze(self, channel_id: str, actor: Actor, record_id: str) -> ActionResult:
        """'Remind me tomorrow' on a reminder: this person's reminders leave the document out until then."""
        assert self.snooze_until is not None
        user = (actor.aad_object_id or "").lower() or actor.id
        until = self.snooze_until(self.now())
        async with self.store.unit() as u:
            await u.reminders.snooze(user, record_id, until)
            await u.audit.add("people", "reminder snoozed", "ok", channel_id=channel_id,
                                 actor=actor.label, record_id=record_id, until=until)
        return ActionResult(ActionOutcome.OK, "Fine: I will remind you about it tomorrow.")
