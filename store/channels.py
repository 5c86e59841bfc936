"""Channels the bot is in: conversation references, active/inactive, paused, quiet hours, names."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from core.clock import SYSTEM_CLOCK, Clock
from core.domain import ChannelRef
from store.db import Connection, Database


class Channels:
    def __init__(self, db: Database, clock: Clock = SYSTEM_CLOCK) -> None:
        self._db = db
        self._now = clock.time

    async def upsert(self, conn: Connection, ref: ChannelRef) -> bool:
        """Save or refresh a conversation reference; reactivates the channel. True if it was new or inactive."""
        async with conn.execute("SELECT active FROM channels WHERE channel_id = ?", (ref.channel_id,)) as cur:
            row = await cur.fetchone()
        await conn.execute(
            "INSERT INTO channels (channel_id, tenant_id, team_id, service_url, reference, name, active, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, 1, ?) ON CONFLICT (channel_id) DO UPDATE SET"
            " tenant_id = coalesce(excluded.tenant_id, channels.tenant_id),"
            " team_id = coalesce(excluded.team_id, channels.team_id),"
            " service_url = excluded.service_url, reference = excluded.reference,"
            " name = coalesce(excluded.name, channels.name), active = 1, inactive_reason = NULL, updated_at = excluded.updated_at",
            (ref.channel_id, ref.tenant_id, ref.team_id, ref.service_url, json.dumps(ref.reference), ref.name,
             self._now()))
        return row is None or not row["active"]

    async def get(self, channel_id: str) -> ChannelRef | None:
        row = await self._db.fetchone("SELECT * FROM channels WHERE channel_id = ?", (channel_id,))
        return _channel(row) if row else None

    async def all(self) -> list[ChannelRef]:
        return [_channel(r) for r in await self._db.fetchall("SELECT * FROM channels ORDER BY channel_id")]

    async def set_active(self, conn: Connection, channel_id: str, active: bool, reason: str | None) -> bool:
        cur = await conn.execute(
            "UPDATE channels SET active = ?, inactive_reason = ?, updated_at = ? WHERE channel_id = ? AND active != ?",
            (int(active), None if active else reason, self._now(), channel_id, int(active)))
        return cur.rowcount > 0

    async def set_active_for_team(self, conn: Connection, team_id: str, active: bool,
                                  reason: str | None, *, only_reasons: Sequence[str] = ()) -> list[str]:
        """Change every channel of a team; with `only_reasons`, only channels made inactive for one of them."""
        sql = "SELECT channel_id FROM channels WHERE team_id = ? AND active != ?"
        params: list[Any] = [team_id, int(active)]
        if only_reasons:
            sql += f" AND inactive_reason IN ({','.join('?' * len(only_reasons))})"
            params.extend(only_reasons)
        async with conn.execute(sql, params) as cur:
            ids = [r[0] for r in await cur.fetchall()]
        for cid in ids:
            await self.set_active(conn, cid, active, reason)
        return ids

    async def set_quiet_hours(self, conn: Connection, channel_id: str, span: str | None) -> None:
        await conn.execute("UPDATE channels SET quiet_hours = ?, updated_at = ? WHERE channel_id = ?",
                           (span, self._now(), channel_id))

    async def set_paused(self, conn: Connection, channel_id: str, paused: bool) -> None:
        await conn.execute("UPDATE channels SET paused = ?, updated_at = ? WHERE channel_id = ?",
                           (int(paused), self._now(), channel_id))

    async def hold(self, conn: Connection, channel_id: str, until: float) -> None:
        """Nothing is sent to the channel before `until` (unix time), by any replica: Teams asked us to wait
        (Outbox.due_channels and next_due_at read it). A later hold extends it; an earlier one changes nothing."""
        await conn.execute("UPDATE channels SET held_until = ? WHERE channel_id = ?"
                           " AND (held_until IS NULL OR held_until < ?)", (until, channel_id, until))

    async def rename(self, conn: Connection, channel_id: str, name: str | None) -> None:
        await conn.execute("UPDATE channels SET name = ?, updated_at = ? WHERE channel_id = ?",
                           (name, self._now(), channel_id))


def _channel(row: Any) -> ChannelRef:
    return ChannelRef(channel_id=row["channel_id"], tenant_id=row["tenant_id"], team_id=row["team_id"],
                      service_url=row["service_url"], reference=json.loads(row["reference"]), name=row["name"],
                      active=bool(row["active"]), inactive_reason=row["inactive_reason"], paused=bool(row["paused"]),
                      quiet_hours=row["quiet_hours"])
