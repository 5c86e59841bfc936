"""Teams-shaped inbound activities, as the Teams client would send them to the bot (tests and demo)."""

from __future__ import annotations

import itertools
from typing import Any

TEAM = "19:team-general@thread.tacv2"
CHANNEL = "19:procurement@thread.tacv2"
TENANT = "tenant-0001"
BOT_ID = "28:notifier-bot"
_ids = itertools.count(1)


def channel_message(
    text: str,
    service_url: str,
    *,
    channel: str = CHANNEL,
    user: str = "29:alice",
    aad: str = "aad-alice",
    mention: bool = True,
    team: str = TEAM,
) -> dict[str, Any]:
    body = f"<at>IFS Approvals</at> {text}" if mention else text
    activity: dict[str, Any] = {
        "type": "message",
        "id": f"17000000{next(_ids):05d}",
        "timestamp": "2026-11-27T08:00:00Z",
        "serviceUrl": service_url,
        "channelId": "msteams",
        "from": {"id": user, "name": "Alice", "aadObjectId": aad},
        "conversation": {
            "id": f"{channel};messageid=1700000000000",
            "isGroup": True,
            "conversationType": "channel",
            "tenantId": TENANT,
        },
        "recipient": {"id": BOT_ID, "name": "IFS Approvals"},
        "text": body,
        "textFormat": "plain",
        "channelData": {
            "teamsChannelId": channel,
            "teamsTeamId": team,
            "channel": {"id": channel},
            "team": {"id": team, "aadGroupId": "group-1"},
            "tenant": {"id": TENANT},
        },
    }
    if mention:
        activity["entities"] = [
            {
                "type": "mention",
                "text": "<at>IFS Approvals</at>",
                "mentioned": {"id": BOT_ID, "name": "IFS Approvals"},
            }
        ]
    return activity


def event_activity(
    kind: str,
    service_url: str,
    *,
    channel_data: dict[str, Any],
    action: str | None = None,
    members_added: list[dict[str, Any]] | None = None,
    members_removed: list[dict[str, Any]] | None = None,
    channel: str = TEAM,
) -> dict[str, Any]:
    activity: dict[str, Any] = {
        "type": kind,
        "id": f"evt-{next(_ids)}",
        "serviceUrl": service_url,
        "channelId": "msteams",
        "from": {"id": "29:alice", "aadObjectId": "aad-alice"},
        "conversation": {"id": channel, "isGroup": True, "conversationType": "channel", "tenantId": TENANT},
        "recipient": {"id": BOT_ID, "name": "IFS Approvals"},
        "channelData": {"tenant": {"id": TENANT}, **channel_data},
    }
    if action:
        activity["action"] = action
    if members_added is not None:
        activity["membersAdded"] = members_added
    if members_removed is not None:
        activity["membersRemoved"] = members_removed
    return activity
