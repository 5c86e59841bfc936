"""Assemble what `status`, /readyz and the CLI report from the database and the running service."""

from __future__ import annotations

from typing import Any

from cards import SourceStatus, StatusView
from store.audit import AuditLog
from store.channels import Channels
from store.db import Database
from store.outbox import Outbox
from store.seen import Seen


async def build_status(db: Database, runtime: Any, *, channel_id: str | None, now: float,
                       companies: set[str] | None = None, kind: str | None = None) -> StatusView:
    """`companies`: only these companies' sources (None: all); `kind`: only that kind's sources."""
    seen = Seen(db)
    outbox = Outbox(db)  # counts only: no clock needed
    states = [s for s in await seen.source_states()
              if s.kind == "*" or ((companies is None or s.company in companies) and (kind is None or s.kind == kind))]
    problems = runtime.source_problems() if runtime is not None and hasattr(runtime, "source_problems") else {}
    quarantined = await seen.quarantine_counts()
    ifs = next((s for s in states if s.kind == "*"), None)
    next_runs = runtime.next_runs() if runtime is not None else {}
    token = runtime.ifs_token_state() if runtime is not None else {}
    sources = []
    for s in states:
        if s.kind == "*":
            continue
        sent = await outbox.sent_for_source(s.kind, s.company)
        fix, left_out = problems.get(s.kind, (None, ()))
        failing = s.last_error is not None or fix is not None
        sources.append(SourceStatus(
            name=f"{s.kind}s · company {s.company}", last_poll_at=s.last_run,
            next_poll_at=next_runs.get(s.kind), last_outcome="failing" if failing else "ok",
            pending=s.pending, sent=sent, quarantined=quarantined.get((s.kind, s.company), 0), failing=failing,
            fix=fix or s.last_error, last_ok_at=s.last_ok, left_out=left_out))
    for k, at in sorted(next_runs.items()):
        if not any(x.kind == k for x in states) and (kind is None or k == kind):
            fix, left_out = problems.get(k, (None, ()))
            sources.append(SourceStatus(name=f"{k}s", next_poll_at=at, last_outcome="not polled yet",
                                        failing=fix is not None, fix=fix, left_out=left_out))
    counts = await outbox.counts(channel_id)
    errors = [(s.last_run or 0, s.last_error) for s in states if s.last_error]
    last_error = max(errors)[1] if errors else None
    last_error_at = max(errors)[0] if errors else None
    derr = await AuditLog(db).last_delivery_problem(channel_id)
    if derr is not None and (last_error_at is None or derr.at > last_error_at):
        last_error, last_error_at = f"delivery {derr.action}: {_short(derr.detail)}", derr.at
    channels = await Channels(db).all()
    if channel_id is not None:  # a channel sees its own team's channels, not other teams' or tenants'
        here = next((c for c in channels if c.channel_id == channel_id), None)
        team = here.team_id if here else None
        channels = [c for c in channels if c.channel_id == channel_id or (team and c.team_id == team)]
    token_state = "valid" if token.get("valid") else ("refresh failed" if token.get("last_error") else "none yet")
    expires = token.get("expires_in")
    load = runtime.ifs_load() if runtime is not None and hasattr(runtime, "ifs_load") else None
    return StatusView(
        ifs_load=describe_load(load) if load and load["cycles"] else None,
        generated_at=now, ifs_reachable=None if ifs is None and not states else (ifs.available if ifs else True),
        token_state=token_state, token_expires_at=None if expires is None else now + float(expires),
        sources=tuple(sources), backlog=counts.get("pending", 0) + counts.get("sending", 0),
        failures=counts.get("failed", 0) + counts.get("dead", 0), last_error=last_error, last_error_at=last_error_at,
        inactive_channels=tuple(f"{c.name or c.channel_id} ({c.inactive_reason})" for c in channels if not c.active),
        paused_channels=tuple(c.name or c.channel_id for c in channels if c.paused))


def describe_load(load: dict[str, float]) -> str:
    """`last hour: 90 requests, 1.2 MB in 30 cycles; per cycle 3 requests, 41 KB, 0.12 s`"""
    shorter = (f"; IFS refuses long URLs, so filters are kept under {load['filter_chars']:.0f} characters"
               if "filter_chars" in load else "")
    return (f"last hour: {load['requests']:.0f} requests, {_size(load['bytes'])} in {load['cycles']:.0f} cycles;"
            f" per cycle {load['requests_per_cycle']:.1f} requests, {_size(load['bytes_per_cycle'])},"
            f" {load['seconds_per_cycle']:.2f} s{shorter}")


def _size(n: float) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.0f} KB" if n >= 1e3 else f"{n:.0f} B"


def _short(detail: dict[str, Any]) -> str:
    if not detail:
        return ""
    return " ".join(str(detail[k]) for k in ("status", "code") if detail.get(k)) or "see audit"
