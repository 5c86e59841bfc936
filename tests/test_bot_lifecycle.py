"""Teams lifecycle events through the real CloudAdapter: install, removal, channel and team changes."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from cards.text import inert
from store.channels import Channels
from store.outbox import Outbox
from tests.conftest import BOT_ID, CHANNEL, TEAM, TENANT, channel_message, event_activity, post_activity

GENERAL = TEAM  # a team's General channel has the team's id
TEAM_DATA = {"id": TEAM, "name": "Finance", "aadGroupId": "group-1"}
OTHER_TEAM = "19:other-team@thread.tacv2"
WELCOME = "Hello! I post IFS Cloud approvals"


# --------------------------------------------------------------------------- helpers

def sent(connector, channel: str) -> list[dict[str, Any]]:
    return [a.activity for a in connector.accepted if a.channel_id == channel and a.op in ("send", "reply")]


def welcomes(connector, channel: str = GENERAL) -> list[str]:
    return [a["text"] for a in sent(connector, channel) if (a.get("text") or "").startswith(WELCOME)]


def card_lines(node: Any) -> list[str]:
    out: list[str] = []
    if isinstance(node, dict):
        if node.get("type") == "TextBlock" and isinstance(node.get("text"), str):
            out.append(node["text"])
        for value in node.values():
            out.extend(card_lines(value))
    elif isinstance(node, list):
        for item in node:
            out.extend(card_lines(item))
    return out


async def post(svc, activity: dict[str, Any]) -> None:
    status = await post_activity(svc.base_url, activity)
    assert status in (200, 201), status


def install(connector, action: str = "add", *, team: dict[str, Any] = TEAM_DATA) -> dict[str, Any]:
    return event_activity("installationUpdate", connector.service_url, action=action, channel=team["id"],
                          channel_data={"team": team, "channel": {"id": team["id"]},
                                        "settings": {"selectedChannel": {"id": team["id"]}}})


def team_event(connector, event: str, *, channel: dict[str, Any] | None = None,
               team: dict[str, Any] = TEAM_DATA, **kwargs: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"eventType": event, "team": team}
    if channel is not None:
        data["channel"] = channel
    return event_activity("conversationUpdate", connector.service_url, channel=team["id"], channel_data=data,
                          **kwargs)


async def lifecycle(svc, limit: int = 50):
    return await svc.audit.recent(limit=limit, category="lifecycle")


async def channel(svc, channel_id: str = CHANNEL):
    found = await Channels(svc.db).get(channel_id)
    assert found is not None, channel_id
    return found


async def linked_with_a_pending_delivery(svc, connector, ifs) -> None:
    """CHANNEL (of TEAM) linked to company 10, one order polled: one delivery waits for CHANNEL."""
    ifs.add_order(company="10")
    await post(svc, channel_message("link company 10", connector.service_url))
    assert (await svc.bindings.for_channel(CHANNEL))
    await svc.poll_once()
    assert (await Outbox(svc.db).counts(CHANNEL)) == {"pending": 1}


async def status_lines(svc, connector) -> list[str]:
    before = len(sent(connector, CHANNEL))
    await post(svc, channel_message("status", connector.service_url))
    [reply] = sent(connector, CHANNEL)[before:]
    return card_lines(reply["attachments"][0]["content"])


# --------------------------------------------------------------------------- install

async def test_install_saves_the_channel_and_welcomes_once(ifs, connector, service_factory):
    svc = await service_factory()
    await post(svc, install(connector))

    assert welcomes(connector) == [welcomes(connector)[0]]
    assert "link company <code>" in welcomes(connector)[0]
    saved = await channel(svc, GENERAL)
    assert (saved.active, saved.team_id, saved.tenant_id, saved.service_url) == (
        True, TEAM, TENANT, connector.service_url)
    assert saved.reference["conversation"]["id"] == GENERAL
    assert saved.reference["bot"]["id"] == BOT_ID

    # Teams re-sends install events (retries, upgrades) and follows them with a conversationUpdate.
    await post(svc, install(connector))
    await post(svc, install(connector, "add-upgrade"))
    await post(svc, team_event(connector, "teamMemberAdded", members_added=[{"id": BOT_ID}]))
    assert len(welcomes(connector)) == 1
    rows = [r for r in await lifecycle(svc) if r.channel_id == GENERAL]
    assert [(r.action, r.outcome) for r in rows] == [("installed", "ok")]
    assert (rows[0].detail["team"], rows[0].detail["tenant"]) == (TEAM, TENANT)


async def test_install_without_welcome_configured(ifs, connector, service_factory):
    svc = await service_factory(extra="\n[bot]\nwelcome = false\n")
    await post(svc, install(connector))
    assert welcomes(connector) == []
    assert (await channel(svc, GENERAL)).active
    assert [r.action for r in await lifecycle(svc)] == ["installed"]


async def test_bot_added_to_a_team_saves_and_welcomes(ifs, connector, service_factory):
    svc = await service_factory()
    await post(svc, team_event(connector, "teamMemberAdded", members_added=[{"id": BOT_ID, "name": "IFS Approvals"}]))

    assert len(welcomes(connector)) == 1
    assert (await channel(svc, GENERAL)).team_id == TEAM
    rows = await lifecycle(svc)
    assert [(r.action, r.outcome, r.channel_id) for r in rows] == [("bot added", "ok", GENERAL)]


async def test_a_person_added_to_a_team_is_not_the_bot(ifs, connector, service_factory):
    svc = await service_factory()
    person = {"id": "29:1aDaApprover0StandIn", "name": "Ada Approver"}
    await post(svc, team_event(connector, "teamMemberAdded", members_added=[person]))

    assert welcomes(connector) == []
    assert await Channels(svc.db).get(GENERAL) is None
    assert await lifecycle(svc) == []


# --------------------------------------------------------------------------- removal

@pytest.mark.parametrize(("how", "reason"), [
    ("uninstall", "app uninstalled"),
    ("bot removed", "bot removed from the team"),
])
async def test_removal_deactivates_the_teams_channels_and_holds_their_deliveries(
        ifs, connector, service_factory, how, reason):
    svc = await service_factory()
    await post(svc, install(connector))
    await linked_with_a_pending_delivery(svc, connector, ifs)
    await post(svc, channel_message("link company 10", connector.service_url, channel="19:elsewhere@thread.tacv2",
                                    team=OTHER_TEAM))

    if how == "uninstall":
        await post(svc, install(connector, "remove"))
    else:
        await post(svc, team_event(connector, "teamMemberRemoved", members_removed=[{"id": BOT_ID}]))

    for cid in (CHANNEL, GENERAL):
        found = await channel(svc, cid)
        assert (found.active, found.inactive_reason) == (False, reason), cid
    assert (await channel(svc, "19:elsewhere@thread.tacv2")).active  # another team is not touched
    [row] = [r for r in await lifecycle(svc) if r.action == reason]
    assert row.outcome == "ok"
    assert (row.detail["team"], sorted(row.detail["channels"])) == (TEAM, sorted([CHANNEL, GENERAL]))

    lines = await status_lines(svc, connector)
    shown = ", ".join(inert(f"{cid} ({reason})", 60) for cid in sorted([CHANNEL, GENERAL]))
    assert f"Inactive channels: {shown}" in lines

    posts_before = len(connector.posts(CHANNEL))
    assert await svc.worker.run_once() == 1  # the other team's channel got its backfilled card ...
    assert len(connector.posts("19:elsewhere@thread.tacv2")) == 1
    assert len(connector.posts(CHANNEL)) == posts_before  # ... this one was not even tried
    assert (await Outbox(svc.db).counts(CHANNEL)) == {"pending": 1}
    assert await svc.audit.recent(limit=5, channel_id=CHANNEL, category="delivery") == []


@pytest.mark.parametrize("how", ["uninstall", "bot removed"])
async def test_reinstall_revives_the_teams_channels_and_delivers_what_waited(ifs, connector, service_factory, how):
    svc = await service_factory()
    await post(svc, install(connector))
    await linked_with_a_pending_delivery(svc, connector, ifs)
    if how == "uninstall":
        await post(svc, install(connector, "remove"))
    else:
        await post(svc, team_event(connector, "teamMemberRemoved", members_removed=[{"id": BOT_ID}]))
    assert not (await channel(svc)).active

    if how == "uninstall":
        await post(svc, install(connector))
    else:
        await post(svc, team_event(connector, "teamMemberAdded", members_added=[{"id": BOT_ID}]))
    assert (await channel(svc, GENERAL)).active
    assert (await channel(svc, CHANNEL)).active
    assert await svc.worker.run_once() == 1
    assert len(connector.posts(CHANNEL)) == 1


async def test_a_person_removed_from_the_team_changes_nothing(ifs, connector, service_factory):
    svc = await service_factory()
    await post(svc, install(connector))
    await post(svc, team_event(connector, "teamMemberRemoved", members_removed=[{"id": "29:someone"}]))
    assert (await channel(svc, GENERAL)).active
    assert [r.action for r in await lifecycle(svc)] == ["installed"]


# --------------------------------------------------------------------------- channel events

async def test_channel_renamed(ifs, connector, service_factory):
    svc = await service_factory()
    await post(svc, channel_message("links", connector.service_url))
    await post(svc, team_event(connector, "channelRenamed", channel={"id": CHANNEL, "name": "Approvals EU"}))

    found = await channel(svc)
    assert (found.name, found.active) == ("Approvals EU", True)
    [row] = [r for r in await lifecycle(svc) if r.action == "channel renamed"]
    assert (row.outcome, row.channel_id, row.detail["name"]) == ("ok", CHANNEL, "Approvals EU")

    await post(svc, team_event(connector, "channelDeleted", channel={"id": CHANNEL, "name": "Approvals EU"}))
    lines = await status_lines(svc, connector)
    assert "Inactive channels: " + inert("Approvals EU (channel deleted)", 60) in lines


async def test_channel_deleted(ifs, connector, service_factory):
    svc = await service_factory()
    await linked_with_a_pending_delivery(svc, connector, ifs)
    await post(svc, channel_message("links", connector.service_url, channel="19:sibling@thread.tacv2"))

    await post(svc, team_event(connector, "channelDeleted", channel={"id": CHANNEL, "name": "Procurement"}))

    found = await channel(svc)
    assert (found.active, found.inactive_reason) == (False, "channel deleted")
    assert (await channel(svc, "19:sibling@thread.tacv2")).active
    [row] = [r for r in await lifecycle(svc) if r.action == "channel deleted"]
    assert (row.outcome, row.channel_id) == ("ok", CHANNEL)
    assert await svc.worker.run_once() == 0
    assert connector.posts(CHANNEL) == []

    # A repeated (or unknown) deletion is not audited twice.
    await post(svc, team_event(connector, "channelDeleted", channel={"id": CHANNEL}))
    await post(svc, team_event(connector, "channelDeleted", channel={"id": "19:never-seen@thread.tacv2"}))
    assert len([r for r in await lifecycle(svc) if r.action == "channel deleted"]) == 1


# --------------------------------------------------------------------------- team events

async def test_team_archived_then_unarchived(ifs, connector, service_factory):
    svc = await service_factory()
    await linked_with_a_pending_delivery(svc, connector, ifs)

    await post(svc, team_event(connector, "teamArchived"))
    found = await channel(svc)
    assert (found.active, found.inactive_reason) == (False, "team archived")
    assert await svc.worker.run_once() == 0
    assert connector.posts(CHANNEL) == []
    lines = await status_lines(svc, connector)
    assert "Inactive channels: " + inert(f"{CHANNEL} (team archived)", 60) in lines

    await post(svc, team_event(connector, "teamUnarchived"))
    found = await channel(svc)
    assert (found.active, found.inactive_reason) == (True, None)
    assert await svc.worker.run_once() == 1
    assert len(connector.posts(CHANNEL)) == 1

    rows = await lifecycle(svc)
    assert [(r.action, r.detail["channels"]) for r in rows if r.action.startswith("team")] == [
        ("team restored", [CHANNEL]), ("team archived", [CHANNEL])]
    assert all(r.detail["team"] == TEAM for r in rows if r.action.startswith("team"))


async def test_unarchive_does_not_revive_a_deleted_channel(ifs, connector, service_factory):
    svc = await service_factory()
    await linked_with_a_pending_delivery(svc, connector, ifs)
    await post(svc, team_event(connector, "channelDeleted", channel={"id": CHANNEL}))
    await post(svc, team_event(connector, "teamArchived"))
    await post(svc, team_event(connector, "teamUnarchived"))

    found = await channel(svc)
    assert (found.active, found.inactive_reason) == (False, "channel deleted")


async def test_team_deleted_then_restored(ifs, connector, service_factory):
    svc = await service_factory()
    await linked_with_a_pending_delivery(svc, connector, ifs)

    await post(svc, team_event(connector, "teamDeleted"))
    found = await channel(svc)
    assert (found.active, found.inactive_reason) == (False, "team deleted")
    assert await svc.worker.run_once() == 0
    [row] = [r for r in await lifecycle(svc) if r.action == "team deleted"]
    assert (row.outcome, row.detail["channels"]) == ("ok", [CHANNEL])

    await post(svc, team_event(connector, "teamRestored"))
    assert (await channel(svc)).active
    assert await svc.worker.run_once() == 1


async def test_team_hard_deleted(ifs, connector, service_factory):
    svc = await service_factory()
    await post(svc, channel_message("links", connector.service_url))
    await post(svc, team_event(connector, "teamHardDeleted"))
    found = await channel(svc)
    assert (found.active, found.inactive_reason) == (False, "team deleted")


async def test_team_renamed_is_audited(ifs, connector, service_factory):
    svc = await service_factory()
    await post(svc, team_event(connector, "teamRenamed", team={**TEAM_DATA, "name": "Finance EMEA"}))
    [row] = await lifecycle(svc)
    assert (row.action, row.outcome, row.detail) == ("team renamed", "ok", {"team": TEAM, "name": "Finance EMEA"})


# --------------------------------------------------------------------------- unknown events

@pytest.mark.parametrize("activity", [
    {"type": "conversationUpdate", "channelData": {"eventType": "teamFrobnicated", "team": TEAM_DATA}},
    {"type": "conversationUpdate", "channelData": {"eventType": "channelShared", "channel": {"id": CHANNEL}}},
    {"type": "installationUpdate", "action": "reinstall-sideways", "channelData": {"team": TEAM_DATA}},
    {"type": "messageReaction", "reactionsAdded": [{"type": "like"}], "replyToId": "1"},
    {"type": "frobnication"},
    {"type": "event", "name": "application/vnd.microsoft.meetingStart", "value": {}},
])
async def test_unknown_events_are_tolerated(ifs, connector, service_factory, activity):
    svc = await service_factory()
    await post(svc, channel_message("links", connector.service_url))
    rows_before = await svc.audit.recent(limit=100)

    base = event_activity("conversationUpdate", connector.service_url, channel_data={"team": TEAM_DATA})
    data = {**base, **activity, "channelData": {**base["channelData"], **activity.get("channelData", {})}}
    async with httpx.AsyncClient() as client:
        resp = await client.post(f"{svc.base_url}/api/messages", json=data)
    assert resp.status_code in (200, 201), resp.text

    assert await svc.audit.recent(limit=100) == rows_before
    assert (await channel(svc)).active
    replies_before = len(sent(connector, CHANNEL))
    await post(svc, channel_message("help", connector.service_url))
    assert len(sent(connector, CHANNEL)) == replies_before + 1


async def test_channel_restored_revives_only_a_deleted_channel(service_factory, connector):
    from tests.conftest import CHANNEL, TEAM, channel_message, event_activity, post_activity

    svc = await service_factory()
    await post_activity(svc.base_url, channel_message("links", connector.service_url))
    team = {"team": {"id": TEAM, "name": "Finance", "aadGroupId": "group-1"}}
    deleted = event_activity("conversationUpdate", connector.service_url,
                             channel_data={**team, "eventType": "channelDeleted", "channel": {"id": CHANNEL}})
    assert await post_activity(svc.base_url, deleted) in (200, 201)
    assert not (await svc.commands.channels.get(CHANNEL)).active
    restored = event_activity("conversationUpdate", connector.service_url,
                              channel_data={**team, "eventType": "channelRestored",
                                            "channel": {"id": CHANNEL, "name": "Procurement"}})
    assert await post_activity(svc.base_url, restored) in (200, 201)
    assert (await svc.commands.channels.get(CHANNEL)).active
    actions = [e.action for e in await svc.audit.recent(category="lifecycle", limit=10)]
    assert "channel restored" in actions
