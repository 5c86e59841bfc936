"""Tests for the unit of work: a block's writes commit together or not at all, stamped by one clock
(on both back ends: the `db` fixture)."""

from __future__ import annotations

import pytest

from core.clock import FakeClock
from core.domain import Binding, ChannelRef
from store.unit import Store


def _ref(channel_id: str) -> ChannelRef:
    return ChannelRef(channel_id, "tenant", "team-1", "https://smba.example/", reference={"conversation": {"id": channel_id}})


async def test_a_unit_commits_its_writes_together_and_stamps_them_with_the_store_clock(db):
    store = Store(db, FakeClock(1234.5))
    async with store.unit() as u:
        assert await u.channels.upsert(_ref("19:a"))
        assert await u.bindings.put(Binding("19:a", "10"))
        await u.audit.add("command", "linked", "ok", channel_id="19:a")
    assert [b.company for b in await store.bindings.for_channel("19:a")] == ["10"]
    [entry] = await store.audit.recent()
    assert (entry.action, entry.at) == ("linked", 1234.5)


async def test_a_unit_that_fails_writes_nothing(db):
    store = Store(db)
    with pytest.raises(RuntimeError):
        async with store.unit() as u:
            await u.channels.upsert(_ref("19:a"))
            await u.bindings.put(Binding("19:a", "10"))
            raise RuntimeError("after the writes")
    assert await store.channels.all() == [] and await store.bindings.all() == []


async def test_reads_inside_a_unit_see_its_writes(db):
    store = Store(db)
    async with store.unit() as u:
        await u.channels.upsert(_ref("19:a"))
        assert [c.channel_id for c in await store.channels.all()] == ["19:a"]
