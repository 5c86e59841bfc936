"""Tests for the unit of work: a block's writes commit together or not at all, stamped by one clock."""

from __future__ import annotations

import pytest

from core.clock import FakeClock
from core.domain import Binding, ChannelRef
from store.db import open_database
from store.unit import Store


def _ref(channel_id: str) -> ChannelRef:
    return ChannelRef(channel_id, "tenant", "team-1", "https://smba.example/", reference={"conversation": {"id": channel_id}})


async def test_a_unit_commits_its_writes_together_and_stamps_them_with_the_store_clock(tmp_path):
    db = await open_database(str(tmp_path / "s.sqlite3"))
    try:
        store = Store(db, FakeClock(1234.5))
        async with store.unit() as u:
            assert await u.channels.upsert(_ref("19:a"))
            assert await u.bindings.put(Binding("19:a", "10"))
            await u.audit.add("command", "linked", "ok", channel_id="19:a")
        assert [b.company for b in await store.bindings.for_channel("19:a")] == ["10"]
        [entry] = await store.audit.recent()
        assert (entry.action, entry.at) == ("linked", 1234.5)
    finally:
        await db.close()


async def test_a_unit_that_fails_writes_nothing(tmp_path):
    db = await open_database(str(tmp_path / "s.sqlite3"))
    try:
        store = Store(db)
        with pytest.raises(RuntimeError):
            async with store.unit() as u:
                await u.channels.upsert(_ref("19:a"))
                await u.bindings.put(Binding("19:a", "10"))
                raise RuntimeError("after the writes")
        assert await store.channels.all() == [] and await store.bindings.all() == []
    finally:
        await db.close()
