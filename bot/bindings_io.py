"""Export and import of company -> channel links (backup, migration, bulk set-up), validated like `link`."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from bot.commands import parse_link_args
from core.domain import Binding, ChannelRef, RecordKind
from core.errors import CommandError, ConfigError
from store.bindings import Bindings
from store.channels import Channels
from store.db import Database
from store.unit import Store

FORMAT = "ifs-teams-notifier/bindings@1"


async def export_bindings(db: Database) -> dict[str, Any]:
    channels = {c.channel_id: c for c in await Channels(db).all()}
    out = []
    for b in await Bindings(db).all():
        ch = channels.get(b.channel_id)
        out.append({"channel_id": b.channel_id, "company": b.company, "kinds": sorted(k.plural for k in b.kinds),
                    "cost_centers": sorted(b.cost_centers),
                    "min_amount": None if b.min_amount is None else str(b.min_amount),
                    "channel": None if ch is None else {
                        "tenant_id": ch.tenant_id, "team_id": ch.team_id, "service_url": ch.service_url,
                        "reference": ch.reference, "name": ch.name}})
    return {"format": FORMAT, "bindings": out}


async def import_bindings(db: Database, data: Any, *, actor: str) -> int:
    """All or nothing: every entry is validated before anything is written."""
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("bindings"), list):
        raise ConfigError("bindings", f"expected an object with format {FORMAT!r} and a 'bindings' list")
    parsed: list[tuple[Binding, ChannelRef | None]] = []
    for i, item in enumerate(data["bindings"]):
        where = f"bindings[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("channel_id"), str) or not item["channel_id"]:
            raise ConfigError(where, "needs a channel_id")
        words = ["company", str(item.get("company", ""))]
        if item.get("kinds"):
            words += ["kinds", ",".join(item["kinds"])]
        if item.get("cost_centers"):
            words += ["costcenter", ",".join(item["cost_centers"])]
        if item.get("min_amount") is not None:
            words += ["min", str(item["min_amount"])]
        try:
            company, kinds, costs, minimum = parse_link_args(words, "")
        except CommandError as exc:
            raise ConfigError(where, str(exc)) from None
        binding = Binding(channel_id=item["channel_id"], company=company, kinds=kinds or frozenset(RecordKind),
                          cost_centers=costs, min_amount=None if minimum is None else Decimal(minimum),
                          created_by=actor)
        ch = item.get("channel")
        ref = None
        if isinstance(ch, dict) and ch.get("service_url"):
            ref = ChannelRef(channel_id=item["channel_id"], tenant_id=ch.get("tenant_id"), team_id=ch.get("team_id"),
                             service_url=ch["service_url"], reference=ch.get("reference") or {}, name=ch.get("name"))
        parsed.append((binding, ref))
    store = Store(db)
    known = {c.channel_id for c in await store.channels.all()}
    for i, (b, ref) in enumerate(parsed):
        if b.channel_id not in known and ref is None:
            raise ConfigError(f"bindings[{i}]", f"channel {b.channel_id} is unknown here and the entry has no"
                                                " 'channel' reference (install the app in that team first)")
    async with store.unit() as u:
        for b, ref in parsed:
            if ref is not None and b.channel_id not in known:
                await u.channels.upsert(ref)
            await u.bindings.put(b)
        await u.audit.add("command", "bindings imported", "ok", actor=actor, count=len(parsed))
    return len(parsed)
