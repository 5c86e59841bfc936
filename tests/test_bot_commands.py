"""Chat commands through the real CloudAdapter: each reply as the Bot Connector stand-in received it, and its audit row."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bot.commands import REGISTRY
from cards.replies import command_name
from cards.text import inert
from simulator.connector import ConnectorStandIn
from store.audit import AuditLog
from store.bindings import Bindings
from store.channels import Channels
from store.db import open_database
from store.outbox import Outbox
from tests.conftest import (
    CHANNEL,
    TEAM,
    channel_message,
    database_of,
    event_activity,
    post_activity,
    write_config,
)

ROOT = Path(__file__).resolve().parent.parent
OTHER = "19:other-channel@thread.tacv2"
ADMINS = '\n[bot]\nadmins = ["aad-admin"]\n'
LINK_USAGE = REGISTRY["link"].usage


# --------------------------------------------------------------------------- helpers

@pytest.fixture
async def connector():
    """The Bot Connector stand-in without Teams' per-thread limits.

    These tests type a dozen commands in one thread within a second; Teams (and the stand-in) would
    throttle the bot's replies after 7, which is not what they are about.
    """
    stand_in = ConnectorStandIn(enforce_limits=False)
    await stand_in.start()
    yield stand_in
    await stand_in.stop()


def _texts(node: Any) -> list[str]:
    """Every TextBlock text and fact title/value of an Adaptive Card, depth first."""
    out: list[str] = []
    if isinstance(node, dict):
        if node.get("type") == "TextBlock" and isinstance(node.get("text"), str):
            out.append(node["text"])
        if node.get("type") == "FactSet":
            for fact in node.get("facts") or []:
                out.append(f"{fact.get('title')}: {fact.get('value')}")
        for value in node.values():
            if isinstance(value, dict | list):
                out.extend(_texts(value))
    elif isinstance(node, list):
        for item in node:
            out.extend(_texts(item))
    return out


@dataclass
class Said:
    """One reply of the bot: its plain text, or the card with its fallback text."""

    activity: dict[str, Any]

    @property
    def card(self) -> dict[str, Any] | None:
        for att in self.activity.get("attachments") or []:
            if att.get("contentType") == "application/vnd.microsoft.card.adaptive":
                return att["content"]
        return None

    @property
    def text(self) -> str:
        if self.activity.get("text"):
            return self.activity["text"]
        return (self.card or {}).get("fallbackText", "")

    @property
    def lines(self) -> list[str]:
        return _texts(self.card) if self.card else [self.text]


def entries(said: Said) -> int:
    """The number of entries an audit reply shows, from its fallback text ("Audit trail: N entries")."""
    found = re.fullmatch(r"Audit trail: (\d+) entr(?:y|ies)", said.text)
    assert found, said.text
    return int(found.group(1))


def command_replies(connector, channel: str = CHANNEL) -> list[Said]:
    return [Said(a.activity) for a in connector.accepted if a.channel_id == channel and a.op == "reply"]


async def say(svc, connector, text: str, *, channel: str = CHANNEL, **kwargs: Any) -> Said:
    """Send one channel message to the bot and return its one reply in that thread."""
    before = len(command_replies(connector, channel))
    status = await post_activity(svc.base_url, channel_message(text, connector.service_url, channel=channel,
                                                               **kwargs))
    assert status in (200, 201)
    new = command_replies(connector, channel)[before:]
    assert len(new) == 1, [s.text for s in new]
    return new[0]


async def command_audit(svc, channel: str = CHANNEL, limit: int = 200):
    return await svc.audit.recent(limit=limit, channel_id=channel, category="command")


async def last_command(svc, channel: str = CHANNEL):
    rows = await command_audit(svc, channel, limit=1)
    assert rows, "no command audit row"
    return rows[0]


async def linked(svc, connector, ifs, company: str = "10", extra: str = "") -> Said:
    ifs.add_order(company=company)
    said = await say(svc, connector, f"link company {company}{extra}")
    assert said.text.startswith("This channel now receives: company " + company), said.text
    return said


async def failed_delivery(svc, connector, ifs) -> int:
    """One delivery to CHANNEL that Teams refused with 400 BadArgument: returns its id."""
    await linked(svc, connector, ifs)
    await svc.poll_once()
    connector.inject(400, code="BadArgument")
    await svc.worker.run_once()
    row = await svc.db.fetchone("SELECT id, status, last_code FROM deliveries WHERE channel_id = ?", (CHANNEL,))
    assert (row["status"], row["last_code"]) == ("failed", "BadArgument")
    assert connector.posts(CHANNEL) == []
    return row["id"]


def run_cli(tmp_path: Path, *args: str, config: Path | None = None, stdin: str | None = None):
    return subprocess.run([sys.executable, "app.py", "--config", str(config or tmp_path / "notifier.toml"), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=60, input=stdin)


# --------------------------------------------------------------------------- help

async def test_help_lists_every_registered_command(ifs, connector, service_factory):
    svc = await service_factory()
    said = await say(svc, connector, "help")

    assert said.card is not None
    for spec in REGISTRY.values():
        assert inert(spec.usage, 120) in said.lines, spec.name
        assert inert(spec.help + (" (admins)" if spec.admin else ""), 300) in said.lines, spec.name
    assert said.text == "Commands: " + ", ".join(inert(command_name(s.usage), 30) for s in REGISTRY.values())
    names = said.text.removeprefix("Commands: ").split(", ")
    assert len(names) == len(set(names)), names  # two-word commands ("link me") are not cut to one word
    row = await last_command(svc)
    assert (row.action, row.outcome, row.actor, row.detail["text"]) == ("help", "ok", "Alice", "help")


# --------------------------------------------------------------------------- link / unlink / links

async def test_link_with_kinds_costcenter_and_min(ifs, connector, service_factory):
    svc = await service_factory()
    ifs.add_invoice(company="10")
    said = await say(svc, connector, "link company 10 kinds invoices,po costcenter CC1,CC2 min 1,000.50")

    assert said.text.split("\n\n") == [
        "This channel now receives: company 10 kinds invoices,orders costcenter CC1,CC2 min 1000.50.",
        "Company 10 is new to me: I am polling it now.",
        "They will arrive here after the next poll (a digest when there are many).",
    ]
    [binding] = await svc.bindings.for_channel(CHANNEL)
    assert binding.company == "10"
    assert sorted(k.plural for k in binding.kinds) == ["invoices", "orders"]
    assert binding.cost_centers == frozenset({"CC1", "CC2"})
    assert str(binding.min_amount) == "1000.50"
    assert binding.created_by == "Alice"
    channel = await Channels(svc.db).get(CHANNEL)
    assert channel is not None and channel.active and channel.team_id == TEAM

    rows = await command_audit(svc)
    assert [(r.action, r.outcome) for r in rows[:2]] == [("link", "ok"), ("binding created", "ok")]
    assert rows[1].company == "10"
    assert rows[1].detail["binding"] == "company 10 kinds invoices,orders costcenter CC1,CC2 min 1000.50"
    assert rows[1].detail["backfilled"] == 0


async def test_link_again_changes_the_binding_and_reports_what_ifs_has(ifs, connector, service_factory):
    svc = await service_factory()
    await linked(svc, connector, ifs)
    await svc.poll_once()

    said = await say(svc, connector, "link company 10 kinds orders")
    assert said.text.split("\n\n")[:2] == [
        "This channel now receives: company 10 kinds orders.",
        "Pending in IFS for company 10 at the last poll: 0 invoices, 1 order, 0 vouchers.",
    ]
    [binding] = await svc.bindings.for_channel(CHANNEL)
    assert [k.plural for k in binding.kinds] == ["orders"]
    rows = await command_audit(svc)
    assert [(r.action, r.outcome) for r in rows[:2]] == [("link", "ok"), ("binding changed", "ok")]


async def test_link_in_a_second_channel_backfills_what_is_already_pending(ifs, connector, service_factory):
    svc = await service_factory()
    await linked(svc, connector, ifs)
    await svc.poll_once()

    said = await say(svc, connector, "link company 10", channel=OTHER)
    assert "1 already known pending document is on the way." in said.text.split("\n\n")
    await svc.worker.run_once()
    assert len(connector.posts(OTHER)) == 1
    assert len(connector.posts(CHANNEL)) == 1


async def test_relink_after_delivery_does_not_promise_documents_again(ifs, connector, service_factory):
    svc = await service_factory()
    await linked(svc, connector, ifs)
    await svc.poll_once()
    await svc.worker.run_once()
    assert len(connector.posts(CHANNEL)) == 1

    said = await say(svc, connector, "link company 10 min 0")
    await svc.worker.run_once()
    assert len(connector.posts(CHANNEL)) == 1  # nothing new was sent ...
    assert "already known pending document" not in said.text  # ... so nothing was promised
    rows = await command_audit(svc)
    assert rows[1].detail["backfilled"] == 0


async def test_unlink_company_and_unlink_all(ifs, connector, service_factory):
    svc = await service_factory()
    await linked(svc, connector, ifs, "10")
    await linked(svc, connector, ifs, "20")
    await linked(svc, connector, ifs, "30")

    said = await say(svc, connector, "unlink company 20")
    assert said.text == "Unlinked company 20 from this channel (1 link)."
    assert sorted(b.company for b in await svc.bindings.for_channel(CHANNEL)) == ["10", "30"]
    rows = await command_audit(svc)
    assert [(r.action, r.outcome) for r in rows[:2]] == [("unlink", "ok"), ("binding removed", "ok")]
    assert (rows[1].company, rows[1].detail["removed"]) == ("20", 1)

    said = await say(svc, connector, "unlink company 20")
    assert said.text == "This channel was not linked to company 20."
    rows = await command_audit(svc)
    assert [(r.action, r.outcome) for r in rows[:2]] == [("unlink", "ok"), ("binding removed", "skipped")]

    said = await say(svc, connector, "unlink all")
    assert said.text == "Unlinked all companies from this channel (2 links)."
    assert await svc.bindings.for_channel(CHANNEL) == []
    rows = await command_audit(svc)
    assert (rows[1].action, rows[1].company, rows[1].detail["removed"]) == ("binding removed", None, 2)

    said = await say(svc, connector, "unlink all")
    assert said.text == "This channel was not linked to any company."


@pytest.mark.parametrize("text", ["unlink", "unlink company", "unlink everything", "unlink company 10 now"])
async def test_unlink_bad_input(ifs, connector, service_factory, text):
    svc = await service_factory()
    await linked(svc, connector, ifs)
    said = await say(svc, connector, text)
    assert said.text == ("Say which company to unlink, or 'all'.\n\n"
                         "Usage: unlink company <code> | unlink all")
    assert len(await svc.bindings.for_channel(CHANNEL)) == 1
    row = await last_command(svc)
    assert (row.action, row.outcome, row.detail["problem"], row.detail["text"]) == (
        "unlink", "error", "Say which company to unlink, or 'all'.", text)


async def test_links_lists_this_channel_only(ifs, connector, service_factory):
    svc = await service_factory()
    said = await say(svc, connector, "links")
    assert said.text == "This channel is not linked to any company. Try: link company <code>"
    assert (await last_command(svc)).action == "links"

    await linked(svc, connector, ifs, "10", " kinds vouchers min 250")
    await say(svc, connector, "link company 10", channel=OTHER)

    said = await say(svc, connector, "links")
    assert re.fullmatch(r"1 linked channels?: companies 10", said.text), said.text
    assert "Documents: GL vouchers" in said.lines
    assert "Minimum amount: 250.00" in said.lines
    assert "Linked by: Alice" in said.lines
    row = await last_command(svc)
    assert (row.action, row.outcome) == ("links", "ok")

    said = await say(svc, connector, "links please")
    assert said.text == "'links' takes no arguments.\n\nUsage: links"
    assert (await last_command(svc)).outcome == "error"


# --------------------------------------------------------------------------- status and audit

async def test_status_reports_sources_backlog_and_failures(ifs, connector, service_factory):
    svc = await service_factory()
    said = await say(svc, connector, "status")
    assert {"IFS: not checked yet", "Backlog: 0", "Failed deliveries: 0"} <= set(said.lines), said.lines
    assert (await last_command(svc)).action == "status"

    await failed_delivery(svc, connector, ifs)
    ifs.add_order(company="10")
    await svc.poll_once()

    said = await say(svc, connector, "status")
    assert {"IFS: reachable", "Backlog: 1", "Failed deliveries: 1"} <= set(said.lines), said.lines
    assert "orders · company 10" in said.lines
    assert "Pending: 2" in said.lines
    assert any(line.startswith("Last error: delivery new post: 400 BadArgument") for line in said.lines), said.lines
    row = await last_command(svc)
    assert (row.action, row.outcome, row.actor) == ("status", "ok", "Alice")

    said = await say(svc, connector, "status now")
    assert said.text == "I don't know 'now' here.\n\nUsage: status [all | invoices | orders | vouchers]"


async def test_audit_recent_count_and_failed(ifs, connector, service_factory):
    svc = await service_factory()
    said = await say(svc, connector, "audit")  # the first message saved the channel: that is audited
    assert entries(said) == 1
    assert "conversation saved" in said.lines

    await linked(svc, connector, ifs)
    await say(svc, connector, "frobnicate")
    for _ in range(6):
        await say(svc, connector, "links")

    said = await say(svc, connector, "audit")
    assert entries(said) == 10

    said = await say(svc, connector, "audit 5")
    assert entries(said) == 5
    summaries = [line for line in said.lines if line in ("links", "audit", "frobnicate")]
    assert summaries == ["audit", "links", "links", "links", "links"]

    said = await say(svc, connector, "audit failed")
    assert entries(said) == 1
    assert "frobnicate" in said.lines
    assert any("problem=unknown command" in line for line in said.lines), said.lines

    said = await say(svc, connector, "audit 2 failed")
    assert entries(said) == 1

    other = await say(svc, connector, "audit", channel=OTHER)
    assert entries(other) == 1
    assert "frobnicate" not in other.lines and "links" not in other.lines

    rows = await command_audit(svc)
    assert [(r.action, r.outcome, r.detail["text"]) for r in rows[:4]] == [
        ("audit", "ok", "audit 2 failed"), ("audit", "ok", "audit failed"), ("audit", "ok", "audit 5"),
        ("audit", "ok", "audit")]


@pytest.mark.parametrize("arg", ["0", "51", "abc", "-3"])
async def test_audit_bad_count(ifs, connector, service_factory, arg):
    svc = await service_factory()
    said = await say(svc, connector, f"audit {arg}")
    assert said.text == f"'{arg}' is neither a count (1-50) nor 'failed'.\n\nUsage: audit [n] [failed]"
    row = await last_command(svc)
    assert (row.action, row.outcome) == ("audit", "error")


# --------------------------------------------------------------------------- replay

async def test_replay_failed_requeues_and_the_next_run_delivers(ifs, connector, service_factory):
    svc = await service_factory()
    delivery_id = await failed_delivery(svc, connector, ifs)

    said = await say(svc, connector, "replay failed")
    assert said.text == "Re-queued 1 delivery."
    delivery = await Outbox(svc.db).get(delivery_id)
    assert (delivery.status.value, delivery.attempts) == ("pending", 0)
    rows = await svc.audit.recent(limit=5, channel_id=CHANNEL, category="delivery")
    assert (rows[0].action, rows[0].outcome, rows[0].actor) == ("replay", "ok", "Alice")
    assert rows[0].detail == {"deliveries": [delivery_id], "count": 1}
    assert (await last_command(svc)).action == "replay"

    assert await svc.worker.run_once() == 1
    assert len(connector.posts(CHANNEL)) == 1
    assert (await Outbox(svc.db).get(delivery_id)).status.value == "sent"

    said = await say(svc, connector, "replay failed")
    assert said.text == "Nothing failed in this channel."


async def test_replay_one_delivery_by_id(ifs, connector, service_factory):
    svc = await service_factory()
    delivery_id = await failed_delivery(svc, connector, ifs)

    said = await say(svc, connector, f"replay {delivery_id}", channel=OTHER)
    assert said.text == (f"There is no delivery {delivery_id} in this channel.\n\n"
                         "Usage: replay <delivery-id> | replay failed")
    assert (await Outbox(svc.db).get(delivery_id)).status.value == "failed"
    assert (await last_command(svc, OTHER)).outcome == "error"

    said = await say(svc, connector, f"replay {delivery_id}")
    assert said.text == "Re-queued 1 delivery."
    await svc.worker.run_once()
    assert (await Outbox(svc.db).get(delivery_id)).status.value == "sent"

    said = await say(svc, connector, f"replay {delivery_id}")
    assert said.text == f"Delivery {delivery_id} is sent, not failed.\n\nUsage: replay <delivery-id> | replay failed"
    row = await last_command(svc)
    assert (row.action, row.outcome, row.detail["problem"]) == ("replay", "error",
                                                               f"Delivery {delivery_id} is sent, not failed.")


@pytest.mark.parametrize(("text", "reply"), [
    ("replay", "Say which delivery to replay, or 'failed'."),
    ("replay 1 2", "Say which delivery to replay, or 'failed'."),
    ("replay abc", "'abc' is not a delivery id."),
    ("replay 999", "There is no delivery 999 in this channel."),
])
async def test_replay_bad_input(ifs, connector, service_factory, text, reply):
    svc = await service_factory()
    said = await say(svc, connector, text)
    assert said.text == reply + "\n\nUsage: replay <delivery-id> | replay failed"
    row = await last_command(svc)
    assert (row.action, row.outcome, row.detail["problem"]) == ("replay", "error", reply)


async def test_cli_replay_requeues_for_the_running_service(tmp_path, ifs, connector, service_factory):
    svc = await service_factory()
    delivery_id = await failed_delivery(svc, connector, ifs)

    out = await asyncio.to_thread(run_cli, tmp_path, "replay")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"re-queued 1 deliveries: {delivery_id}"
    assert (await Outbox(svc.db).get(delivery_id)).status.value == "pending"
    [row] = [r for r in await svc.audit.recent(limit=20, category="delivery") if r.action == "replay"]
    assert (row.outcome, row.actor, row.detail) == ("ok", "cli", {"deliveries": [delivery_id], "count": 1})

    await svc.worker.run_once()
    assert len(connector.posts(CHANNEL)) == 1

    out = await asyncio.to_thread(run_cli, tmp_path, "replay", "--id", str(delivery_id))
    assert (out.returncode, out.stdout.strip()) == (0, "re-queued 0 deliveries")


# --------------------------------------------------------------------------- pause / resume

async def test_pause_holds_deliveries_and_resume_sends_them(ifs, connector, service_factory):
    svc = await service_factory()
    await linked(svc, connector, ifs)

    said = await say(svc, connector, "pause")
    assert said.text == "Paused. I keep collecting; type 'resume' to receive everything held."
    assert (await Channels(svc.db).get(CHANNEL)).paused
    rows = await svc.audit.recent(limit=2, channel_id=CHANNEL)
    assert [(r.category, r.action, r.outcome) for r in rows] == [("command", "pause", "ok"),
                                                                 ("lifecycle", "paused", "ok")]

    await svc.poll_once()
    assert await svc.worker.run_once() == 0
    assert connector.posts(CHANNEL) == []
    said = await say(svc, connector, "status")
    assert f"Paused channels: {inert(CHANNEL, 60)}" in said.lines

    said = await say(svc, connector, "resume")
    assert said.text == "Resumed. 1 held notification on the way."
    assert not (await Channels(svc.db).get(CHANNEL)).paused
    rows = await svc.audit.recent(limit=2, channel_id=CHANNEL)
    assert [(r.category, r.action, r.outcome) for r in rows] == [("command", "resume", "ok"),
                                                                 ("lifecycle", "resumed", "ok")]
    assert await svc.worker.run_once() == 1
    assert len(connector.posts(CHANNEL)) == 1

    said = await say(svc, connector, "pause everything")
    assert said.text == "'pause' takes no arguments.\n\nUsage: pause"
    assert not (await Channels(svc.db).get(CHANNEL)).paused


# --------------------------------------------------------------------------- bad input

@pytest.mark.parametrize(("text", "problem"), [
    ("link company", "The company code is missing."),
    ("link", "Say which company to link: 'link company <code>'."),
    ("link 10", "Say which company to link: 'link company <code>'."),
    ("link company 10 colour red", "I don't understand 'colour' here."),
    ("link company 10 min abc", "'abc' is not an amount."),
    ("link company 10 min -5", "The minimum amount must be zero or more."),
    ("link company 10 min", "'min' needs a value."),
    ("link company 10 kinds cars", "Unknown document kind 'cars' (use invoices, orders or vouchers)."),
    ("link company 10 costcenter a;b", "Cost centres are codes separated by commas."),
    ("link company <b>10</b>", "'<b>10</b>' is not a company code (letters, digits, - and _ only)."),
])
async def test_link_bad_input(ifs, connector, service_factory, text, problem):
    svc = await service_factory()
    ifs.add_order(company="10")
    said = await say(svc, connector, text)

    assert said.text == f"{problem}\n\nUsage: {LINK_USAGE}"
    assert await svc.bindings.for_channel(CHANNEL) == []
    row = await last_command(svc)
    assert (row.action, row.outcome, row.actor, row.detail["problem"], row.detail["text"]) == (
        "link", "error", "Alice", problem, text)


async def test_link_unknown_company_explains_and_links_nothing(ifs, connector, service_factory):
    svc = await service_factory()
    ifs.add_order(company="10")
    said = await say(svc, connector, "link company 99")

    problem, usage = said.text.split("\n\n")
    assert problem == ("I could not confirm company '99' in IFS: IFS returned no documents for it. Either the code"
                       " is wrong, or the IFS service user is not allowed to see that company (Allowed Companies)")
    assert usage == f"Usage: {LINK_USAGE}"
    assert await svc.bindings.for_channel(CHANNEL) == []
    row = await last_command(svc)
    assert (row.action, row.outcome, row.detail["problem"]) == ("link", "error", problem)
    assert any("99" in r.query.get("$filter", "") for r in ifs.data_requests()), "company 99 was not checked in IFS"


async def test_unknown_and_empty_commands(ifs, connector, service_factory):
    svc = await service_factory()
    said = await say(svc, connector, "frobnicate the widgets")
    assert said.text == "I don't know the command 'frobnicate'. Type 'help' to see what I can do."
    row = await last_command(svc)
    assert (row.action, row.outcome, row.detail["problem"], row.detail["text"]) == (
        "frobnicate", "error", "unknown command", "frobnicate the widgets")

    said = await say(svc, connector, "")
    assert said.text == "I don't know the command '(nothing)'. Type 'help' to see what I can do."
    row = await last_command(svc)
    assert (row.action, row.outcome) == ("empty", "error")


async def test_command_words_are_case_insensitive(ifs, connector, service_factory):
    svc = await service_factory()
    ifs.add_order(company="10")
    said = await say(svc, connector, "LINK Company 10 KINDS Orders MIN 5")
    assert said.text.startswith("This channel now receives: company 10 kinds orders min 5.")
    [binding] = await svc.bindings.for_channel(CHANNEL)
    assert (binding.company, binding.min_amount is not None) == ("10", True)
    row = await last_command(svc)
    assert (row.action, row.outcome, row.detail["text"]) == ("link", "ok", "LINK Company 10 KINDS Orders MIN 5")

    said = await say(svc, connector, "Unlink ALL")
    assert said.text == "Unlinked all companies from this channel (1 link)."


@pytest.mark.parametrize(("mention", "text"), [
    (True, "links"),  # <at>IFS Approvals</at> links, with a mention entity (a channel)
    (False, "links"),  # a personal chat: no mention at all
    (False, "@IFS Approvals links"),  # a mention Teams did not turn into an entity
    (False, "IFS Approvals   links"),
])
async def test_mentions_are_stripped(ifs, connector, service_factory, mention, text):
    svc = await service_factory()
    said = await say(svc, connector, text, mention=mention)
    assert said.text == "This channel is not linked to any company. Try: link company <code>"
    row = await last_command(svc)
    assert (row.action, row.outcome, row.detail["text"]) == ("links", "ok", "links")


# --------------------------------------------------------------------------- who may do what

async def test_non_admin_is_denied_every_admin_command(ifs, connector, service_factory):
    svc = await service_factory(extra=ADMINS)
    ifs.add_order(company="10")
    admin_only = sorted(name for name, spec in REGISTRY.items() if spec.admin)
    assert {"link", "unlink", "replay", "pause", "resume"} <= set(admin_only)

    for name in admin_only:
        said = await say(svc, connector, f"{name} company 10" if name in ("link", "unlink") else name)
        assert said.text == f"Only admins can use '{name}'. Ask a team owner or a configured notifier admin."
        row = await last_command(svc)
        assert (row.action, row.outcome, row.actor, row.detail["problem"]) == (name, "denied", "Alice",
                                                                              "not an admin")
    assert await svc.bindings.for_channel(CHANNEL) == []
    assert not (await Channels(svc.db).get(CHANNEL)).paused

    # 'link me' needs an IFS user id and a personal chat (tests/test_people.py)
    for name in sorted(n for n, spec in REGISTRY.items() if not spec.admin and n != "link me"):
        said = await say(svc, connector, name)
        assert "Only admins" not in said.text
        assert (await last_command(svc)).outcome == "ok"


async def test_configured_admin_may_link(ifs, connector, service_factory):
    svc = await service_factory(extra=ADMINS)
    ifs.add_order(company="10")
    said = await say(svc, connector, "link company 10", user="29:bob", aad="AAD-Admin")
    assert said.text.startswith("This channel now receives: company 10")
    assert len(await svc.bindings.for_channel(CHANNEL)) == 1
    row = await last_command(svc)
    assert (row.action, row.outcome) == ("link", "ok")


async def test_commands_in_a_channel_the_bot_was_removed_from(ifs, connector, service_factory):
    svc = await service_factory()
    await linked(svc, connector, ifs)
    removed = event_activity("installationUpdate", connector.service_url, action="remove",
                             channel_data={"team": {"id": TEAM, "aadGroupId": "group-1"}})
    assert await post_activity(svc.base_url, removed) in (200, 201)

    said = await say(svc, connector, "link company 10 kinds orders")
    assert said.text == ("This channel is inactive (app uninstalled). Reinstall the app in this team to receive"
                         " notifications again.")
    row = await last_command(svc)
    assert (row.action, row.outcome, row.detail["problem"]) == ("link", "denied", "channel inactive: app uninstalled")
    [binding] = await svc.bindings.for_channel(CHANNEL)
    assert len(binding.kinds) == 3  # unchanged
    channel = await Channels(svc.db).get(CHANNEL)
    assert (channel.active, channel.inactive_reason) == (False, "app uninstalled")  # a message does not revive it

    said = await say(svc, connector, "help")
    assert said.card is not None
    assert (await last_command(svc)).outcome == "ok"


# --------------------------------------------------------------------------- bindings CLI

async def test_bindings_export_then_import_into_a_fresh_database(tmp_path, ifs, connector, service_factory):
    svc = await service_factory()
    await linked(svc, connector, ifs, "10", " kinds invoices,orders costcenter CC1 min 100")
    await say(svc, connector, "link company 10", channel=OTHER)

    out = await asyncio.to_thread(run_cli, tmp_path, "bindings", "export")
    assert out.returncode == 0, out.stderr
    exported = json.loads(out.stdout)
    assert exported["format"] == "ifs-teams-notifier/bindings@1"
    assert [(b["channel_id"], b["company"]) for b in exported["bindings"]] == [(OTHER, "10"), (CHANNEL, "10")]
    (tmp_path / "links.json").write_text(out.stdout)

    fresh = tmp_path / "fresh"
    fresh.mkdir()
    config = write_config(fresh)
    out = await asyncio.to_thread(run_cli, tmp_path, "bindings", "import", str(tmp_path / "links.json"),
                                  config=config)
    assert (out.returncode, out.stdout.strip()) == (0, "imported 2 bindings"), out.stderr

    db = await open_database(database_of(fresh))
    try:
        before = {(b.channel_id, b.company, b.kinds, b.cost_centers, b.min_amount)
                  for b in await svc.bindings.all()}
        after = {(b.channel_id, b.company, b.kinds, b.cost_centers, b.min_amount) for b in await Bindings(db).all()}
        assert after == before
        channels = {c.channel_id: c for c in await Channels(db).all()}
        assert set(channels) == {CHANNEL, OTHER}
        assert channels[CHANNEL].service_url == connector.service_url
        assert channels[CHANNEL].team_id == TEAM
        [row] = await AuditLog(db).recent(limit=5, category="command")
        assert (row.action, row.outcome, row.actor, row.detail) == ("bindings imported", "ok", "cli", {"count": 2})
    finally:
        await db.close()

    out = await asyncio.to_thread(run_cli, tmp_path, "bindings", "list", config=config)
    assert out.returncode == 0
    assert "costcenter CC1 min 100" in out.stdout


@pytest.mark.parametrize(("items", "where"), [
    ([{"channel_id": CHANNEL, "company": "not a code!"}], "bindings[0]"),
    ([{"channel_id": CHANNEL, "company": "10"}, {"channel_id": OTHER, "company": "1 0"}], "bindings[1]"),
])
async def test_bindings_import_is_all_or_nothing(tmp_path, items, where):
    channel = {"tenant_id": "t", "team_id": TEAM, "service_url": "http://127.0.0.1:9/", "reference": {},
               "name": None}
    data = {"format": "ifs-teams-notifier/bindings@1",
            "bindings": [{"kinds": ["orders"], "cost_centers": [], "min_amount": None, "channel": channel, **e}
                         for e in items]}
    (tmp_path / "links.json").write_text(json.dumps(data))
    write_config(tmp_path)

    out = await asyncio.to_thread(run_cli, tmp_path, "bindings", "import", str(tmp_path / "links.json"))
    assert out.returncode == 2
    code = items[-1]["company"]
    assert out.stderr.strip().splitlines()[-1] == (f"error: config error: {where}: '{code}' is not a company code"
                                  " (letters, digits, - and _ only).")
    db = await open_database(database_of(tmp_path))
    try:
        assert await Bindings(db).all() == []
        assert await Channels(db).all() == []
        assert await AuditLog(db).recent(limit=5) == []
    finally:
        await db.close()


async def test_quiet_hours_command_sets_checks_and_clears(service_factory, connector):
    from tests.conftest import CHANNEL, channel_message, post_activity, replies_text

    svc = await service_factory()
    await post_activity(svc.base_url, channel_message("quiet 19:00-07:00", connector.service_url))
    assert (await svc.commands.channels.get(CHANNEL)).quiet_hours == "19:00-07:00"
    await post_activity(svc.base_url, channel_message("quiet 25:00-07:00", connector.service_url))
    await post_activity(svc.base_url, channel_message("quiet off", connector.service_url))
    said = replies_text(connector)
    assert any("Quiet hours 19:00-07:00" in t for t in said)
    assert any("'25:00-07:00'" in t and "Usage: quiet" in t for t in said)
    assert (await svc.commands.channels.get(CHANNEL)).quiet_hours is None
    outcomes = [e.outcome for e in await svc.audit.recent(category="command", limit=10) if e.action == "quiet"]
    assert outcomes == ["ok", "error", "ok"]


async def test_a_reply_throttled_for_longer_than_a_request_may_wait_fails_at_once(service_factory, connector):
    """Teams answers the reply with 429 and Retry-After 600: the inbound request does not sleep ten minutes
    holding the connection; the answer fails, and the next command is answered as usual."""
    svc = await service_factory()
    connector.inject(429, code="Throttled", conversation=CHANNEL, retry_after=600)
    status = await asyncio.wait_for(
        post_activity(svc.base_url, channel_message("help", connector.service_url, channel=CHANNEL)), 60)
    assert status >= 200 and [r.status for r in connector.rejected] == [429]
    assert command_replies(connector, CHANNEL) == []
    said = await say(svc, connector, "help")
    assert "link company" in said.text

