"""Tests for the Bot Connector stand-in, driven by botbuilder's CloudAdapter and by raw HTTP."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from botbuilder.core import CardFactory, MessageFactory, TurnContext
from botbuilder.core.teams import TeamsInfo
from botbuilder.integration.aiohttp import CloudAdapter, ConfigurationBotFrameworkAuthentication
from botbuilder.schema import (
    Activity,
    ChannelAccount,
    ConversationAccount,
    ConversationParameters,
    ConversationReference,
    ErrorResponseException,
)
from botbuilder.schema.teams import ChannelInfo, TeamsChannelData
from msrest.exceptions import ClientRequestError

from core.clock import FakeClock
from simulator.connector import ConnectorStandIn, activity_size

CHANNEL = "19:9f3c2b1a0d8e4c7fb6a5e4d3c2b1a0f9@thread.tacv2"
OTHER = "19:0a1b2c3d4e5f60718293a4b5c6d7e8f9@thread.tacv2"
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
BOT = ChannelAccount(id="28:00000000-0000-0000-0000-000000000000", name="IFS approvals")


class _Config:
    APP_ID = ""
    APP_PASSWORD = ""


def card(text: str, *, filler: str = "") -> dict[str, Any]:
    body: list[dict[str, Any]] = [{"type": "TextBlock", "text": text, "wrap": True}]
    if filler:
        body.append({"type": "TextBlock", "text": filler, "wrap": True})
    return {"type": "AdaptiveCard", "version": "1.5", "body": body}


def card_activity(text: str, **kw: str) -> Activity:
    return MessageFactory.attachment(CardFactory.adaptive_card(card(text, **kw)))


def raw_card_activity(text: str) -> dict[str, Any]:
    return {
        "type": "message",
        "attachments": [{"contentType": "application/vnd.microsoft.card.adaptive", "content": card(text)}],
    }


def reference(service_url: str, conversation_id: str) -> ConversationReference:
    return ConversationReference(
        channel_id="msteams",
        service_url=service_url,
        conversation=ConversationAccount(
            id=conversation_id, is_group=True, conversation_type="channel", tenant_id=TENANT
        ),
        bot=BOT,
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def connector(clock: FakeClock):
    standin = ConnectorStandIn(clock=clock)
    await standin.start()
    yield standin
    await standin.stop()


@pytest.fixture
async def http(connector: ConnectorStandIn):
    async with httpx.AsyncClient(base_url=connector.service_url, timeout=5.0) as client:
        yield client


@pytest.fixture
def adapter() -> CloudAdapter:
    return CloudAdapter(ConfigurationBotFrameworkAuthentication(_Config()))


async def create_thread(adapter: CloudAdapter, service_url: str, activity: Activity, channel: str = CHANNEL):
    """Create a new thread in a channel the way the poller does; returns (conversation id, activity id)."""
    created: dict[str, str] = {}

    async def on_created(turn: TurnContext) -> None:
        created["conversation"] = turn.activity.conversation.id
        created["activity"] = turn.activity.id

    params = ConversationParameters(
        is_group=True,
        channel_data=TeamsChannelData(channel=ChannelInfo(id=channel)),
        activity=activity,
        tenant_id=TENANT,
        bot=BOT,
    )
    await adapter.create_conversation("", on_created, params, "msteams", service_url, None)
    return created["conversation"], created["activity"]


async def send(adapter: CloudAdapter, service_url: str, conversation_id: str, activity: Activity) -> str:
    """Send into a stored conversation the way the delivery worker does; returns the new activity id."""
    sent: list[str] = []

    async def on_turn(turn: TurnContext) -> None:
        sent.append((await turn.send_activity(activity)).id)

    await adapter.continue_conversation(reference(service_url, conversation_id), on_turn, bot_app_id="")
    return sent[0]


async def update(
    adapter: CloudAdapter, service_url: str, conversation_id: str, activity_id: str, activity: Activity
) -> None:
    async def on_turn(turn: TurnContext) -> None:
        activity.id = activity_id
        await turn.update_activity(activity)

    await adapter.continue_conversation(reference(service_url, conversation_id), on_turn, bot_app_id="")


async def post_raw(http: httpx.AsyncClient, conversation_id: str, text: str = "x") -> httpx.Response:
    return await http.post(f"v3/conversations/{conversation_id}/activities", json=raw_card_activity(text))


# -- routes through botbuilder -------------------------------------------------------------------


async def test_create_conversation_returns_thread_id_and_root_id(connector, adapter):
    conversation_id, activity_id = await create_thread(
        adapter, connector.service_url, card_activity("Invoice 1")
    )

    assert conversation_id == f"{CHANNEL};messageid={activity_id}"
    assert activity_id.isdigit()
    [post] = connector.posts(CHANNEL)
    assert (post.op, post.channel_id, post.root_id) == ("create", CHANNEL, activity_id)
    assert connector.cards(CHANNEL) == {activity_id: card("Invoice 1")}


async def test_send_to_bare_channel_id_is_a_new_root_post(connector, adapter):
    activity_id = await send(adapter, connector.service_url, CHANNEL, card_activity("Order 7"))

    [post] = connector.posts()
    assert (post.op, post.conversation_id, post.activity_id, post.root_id) == (
        "send",
        CHANNEL,
        activity_id,
        activity_id,
    )


async def test_send_to_thread_id_is_a_reply_in_that_thread(connector, adapter):
    thread, root = await create_thread(adapter, connector.service_url, card_activity("Voucher 3"))

    reply_id = await send(adapter, connector.service_url, thread, MessageFactory.text("Approved by Ada"))

    [reply] = connector.replies(CHANNEL)
    assert (reply.activity_id, reply.root_id, reply.conversation_id) == (reply_id, root, thread)
    assert int(reply_id) > int(root)
    assert list(connector.cards()) == [root]


async def test_update_replaces_the_card_the_channel_shows(connector, adapter):
    thread, root = await create_thread(adapter, connector.service_url, card_activity("Pending"))

    await update(adapter, connector.service_url, thread, root, card_activity("Approved"))

    assert connector.cards() == {root: card("Approved")}
    [change] = connector.updates(CHANNEL)
    assert (change.activity_id, change.root_id) == (root, root)


async def test_update_of_unknown_activity_is_404_activity_not_found(connector, adapter):
    with pytest.raises(ErrorResponseException) as caught:
        await update(adapter, connector.service_url, CHANNEL, "1700000000000", card_activity("x"))

    assert caught.value.response.status_code == 404
    assert caught.value.error.error.code == "ActivityNotFoundInConversation"
    assert connector.accepted == []


async def test_delete_removes_the_post_from_the_channel(connector, adapter, http):
    thread, root = await create_thread(adapter, connector.service_url, card_activity("Pending"))

    response = await http.delete(f"v3/conversations/{thread}/activities/{root}")

    assert response.status_code == 200
    assert connector.cards() == {}
    assert connector.activity(root) is None


async def test_wait_for_wakes_when_a_post_arrives(connector, adapter):
    sending = asyncio.create_task(send(adapter, connector.service_url, CHANNEL, card_activity("Invoice 9")))

    await connector.wait_for(lambda: len(connector.posts()) == 1)

    await sending
    assert connector.posts()[0].activity["attachments"][0]["content"] == card("Invoice 9")


# -- raw HTTP details ----------------------------------------------------------------------------


async def test_conversation_ids_are_url_decoded(connector, http):
    encoded = "19%3A9f3c2b1a0d8e4c7fb6a5e4d3c2b1a0f9%40thread.tacv2%3Bmessageid%3D1700000000001"

    response = await post_raw(http, encoded)

    assert response.status_code == 201
    [reply] = connector.replies()
    assert (reply.channel_id, reply.conversation_id, reply.root_id) == (
        CHANNEL,
        f"{CHANNEL};messageid=1700000000001",
        "1700000000001",
    )


async def test_activity_ids_are_increasing_numeric_strings(connector, http):
    ids = [(await post_raw(http, CHANNEL)).json()["id"] for _ in range(3)]

    assert all(i.isdigit() for i in ids)
    assert [int(i) for i in ids] == sorted({int(i) for i in ids})


async def test_bearer_token_is_accepted_and_other_schemes_are_not(connector, http):
    bearer = await http.post(
        f"v3/conversations/{CHANNEL}/activities",
        json=raw_card_activity("x"),
        headers={"Authorization": "Bearer eyJ0eXAiOiJKV1QifQ.e30.c2ln"},
    )
    basic = await http.post(
        f"v3/conversations/{CHANNEL}/activities",
        json=raw_card_activity("x"),
        headers={"Authorization": "Basic dXNlcjpwYXNz"},
    )

    assert (bearer.status_code, basic.status_code) == (201, 401)
    assert basic.json()["error"]["code"] == "Unauthorized"


async def test_bad_json_is_400_in_the_connector_error_shape(connector, http):
    response = await http.post(f"v3/conversations/{CHANNEL}/activities", content=b"{not json")

    assert response.status_code == 400
    assert response.json() == {"error": {"code": "BadArgument", "message": "Bad Request"}}


async def test_members_paged_members_and_team_details(connector, http):
    members = await http.get(f"v3/conversations/{CHANNEL}/members")
    first_page = await http.get(f"v3/conversations/{CHANNEL}/pagedmembers", params={"pageSize": 1})
    second_page = await http.get(
        f"v3/conversations/{CHANNEL}/pagedmembers",
        params={"pageSize": 1, "continuationToken": first_page.json()["continuationToken"]},
    )
    team = await http.get(f"v3/teams/{CHANNEL}")

    assert [m["id"][:3] for m in members.json()] == ["29:", "29:"]
    assert all(m["aadObjectId"] for m in members.json())
    assert first_page.json()["members"] + second_page.json()["members"] == members.json()
    assert "continuationToken" not in second_page.json()
    assert team.json()["id"] == CHANNEL and team.json()["aadGroupId"]


async def test_teams_info_paged_members_through_the_adapter(connector, adapter):
    found = []

    async def on_turn(turn: TurnContext) -> None:
        # Proactive turns carry no channel data, and TeamsInfo needs the team id from it.
        turn.activity.channel_data = {"team": {"id": CHANNEL}}
        found.append(await TeamsInfo.get_paged_members(turn))

    await adapter.continue_conversation(reference(connector.service_url, CHANNEL), on_turn, bot_app_id="")

    assert [m.aad_object_id for m in found[0].members] == [m["aadObjectId"] for m in connector.members]


# -- Teams' limits -------------------------------------------------------------------------------


async def test_eighth_send_within_a_second_is_throttled_until_the_clock_moves(connector, http, clock):
    accepted = [(await post_raw(http, CHANNEL)).status_code for _ in range(7)]

    throttled = await post_raw(http, CHANNEL)

    assert accepted == [201] * 7
    assert throttled.status_code == 429
    assert throttled.headers["Retry-After"] == "1"
    assert throttled.json()["error"]["code"] == "Throttled"
    assert connector.throttled == 1
    clock.advance(1.0)
    assert (await post_raw(http, CHANNEL)).status_code == 201


async def test_eight_per_two_seconds_applies_after_the_first_second(connector, http, clock):
    for _ in range(7):
        await post_raw(http, CHANNEL)
    clock.advance(1.0)
    assert (await post_raw(http, CHANNEL)).status_code == 201

    ninth = await post_raw(http, CHANNEL)

    assert (ninth.status_code, ninth.headers["Retry-After"]) == (429, "1")


async def test_sixty_per_thirty_seconds(connector, http, clock):
    statuses = []
    for _ in range(60):
        statuses.append((await post_raw(http, CHANNEL)).status_code)
        clock.advance(0.25)

    sixty_first = await post_raw(http, CHANNEL)

    assert statuses == [201] * 60
    assert (sixty_first.status_code, sixty_first.headers["Retry-After"]) == (429, "15")
    clock.advance(15.0)
    assert (await post_raw(http, CHANNEL)).status_code == 201


async def test_limits_are_per_thread_so_another_channel_is_unaffected(connector, http):
    for _ in range(7):
        await post_raw(http, CHANNEL)

    assert (await post_raw(http, f"{CHANNEL};messageid=1700000000000")).status_code == 429
    assert (await post_raw(http, OTHER)).status_code == 201


async def test_app_limit_of_fifty_per_second_spans_channels(connector, http, clock):
    channels = [f"19:{n:032x}@thread.tacv2" for n in range(11)]
    statuses = [(await post_raw(http, channels[n % 10])).status_code for n in range(50)]

    fifty_first = await post_raw(http, channels[10])

    assert statuses == [201] * 50
    assert (fifty_first.status_code, fifty_first.json()["error"]["code"]) == (429, "Throttled")
    clock.advance(1.0)
    assert (await post_raw(http, channels[10])).status_code == 201


async def test_refused_requests_do_not_take_a_slot(clock):
    async with ConnectorStandIn(clock=clock, limits_per_thread=[(1, 1.0)]) as standin:
        async with httpx.AsyncClient(base_url=standin.service_url) as http:
            first = await post_raw(http, CHANNEL)
            clock.advance(0.5)
            refused = await post_raw(http, CHANNEL)
            clock.advance(0.5)
            later = await post_raw(http, CHANNEL)

    assert (first.status_code, refused.status_code, later.status_code) == (201, 429, 201)


async def test_retry_after_is_the_whole_seconds_until_a_slot_frees(clock):
    async with ConnectorStandIn(clock=clock, limits_per_thread=[(1, 10.0)]) as standin:
        async with httpx.AsyncClient(base_url=standin.service_url) as http:
            await post_raw(http, CHANNEL)
            clock.advance(2.5)
            refused = await post_raw(http, CHANNEL)

    assert refused.headers["Retry-After"] == "8"


async def test_limits_can_be_switched_off(clock):
    async with ConnectorStandIn(clock=clock, enforce_limits=False) as standin:
        async with httpx.AsyncClient(base_url=standin.service_url) as http:
            statuses = {(await post_raw(http, CHANNEL)).status_code for _ in range(20)}

    assert statuses == {201}


async def test_throttled_send_surfaces_as_error_response_exception(connector, adapter):
    for n in range(7):
        await send(adapter, connector.service_url, CHANNEL, card_activity(f"Invoice {n}"))

    with pytest.raises(ErrorResponseException) as caught:
        await send(adapter, connector.service_url, CHANNEL, card_activity("Invoice 8"))

    assert caught.value.response.status_code == 429
    assert caught.value.response.headers["Retry-After"] == "1"
    assert caught.value.error.error.code == "Throttled"
    assert len(connector.posts()) == 7


# -- message size --------------------------------------------------------------------------------


async def test_45_kb_card_is_413_message_size_too_big(connector, adapter):
    with pytest.raises(ErrorResponseException) as caught:
        await send(adapter, connector.service_url, CHANNEL, card_activity("Big", filler="x" * 45 * 1024))

    assert caught.value.response.status_code == 413
    assert caught.value.error.error.code == "MessageSizeTooBig"
    assert connector.posts() == []
    assert [(r.op, r.status, r.code) for r in connector.rejected] == [("send", 413, "MessageSizeTooBig")]


async def test_card_under_the_limit_in_utf16_is_accepted(connector, adapter):
    await send(adapter, connector.service_url, CHANNEL, card_activity("Fits", filler="x" * 19 * 1024))

    assert len(connector.posts()) == 1


def test_size_counts_utf16_code_units_twice():
    assert activity_size({"t": "é"}) == 2 * len('{"t":"é"}')
    assert activity_size({"t": "\U0001f600"}) == 2 * (len('{"t":""}') + 2)


# -- faults --------------------------------------------------------------------------------------


async def test_injected_403_carries_the_teams_error_code_once(connector, adapter):
    connector.inject(403, "BotNotInConversationRoster")

    with pytest.raises(ErrorResponseException) as caught:
        await create_thread(adapter, connector.service_url, card_activity("Invoice 1"))
    await create_thread(adapter, connector.service_url, card_activity("Invoice 1"))

    assert caught.value.response.status_code == 403
    assert caught.value.error.error.code == "BotNotInConversationRoster"
    assert len(connector.posts()) == 1


async def test_fault_aimed_at_a_channel_spares_other_channels(connector, http):
    connector.inject(404, "ConversationNotFound", count=2, conversation=CHANNEL)

    other = await post_raw(http, OTHER)
    thread = await post_raw(http, f"{CHANNEL};messageid=1700000000000")
    bare = await post_raw(http, CHANNEL)
    after = await post_raw(http, CHANNEL)

    assert [r.status_code for r in (other, thread, bare, after)] == [201, 404, 404, 201]
    assert thread.json()["error"]["code"] == "ConversationNotFound"


async def test_injected_429_sends_retry_after_rounded_up(connector, http):
    connector.inject(429, retry_after=2.5)

    response = await post_raw(http, CHANNEL)

    assert (response.status_code, response.headers["Retry-After"]) == (429, "3")
    assert response.json()["error"]["code"] == "Throttled"
    assert connector.throttled == 1


async def test_faults_can_be_injected_over_http(connector, http):
    admin = await http.post(
        "_connector/faults", json={"status": 403, "code": "BotDisabledByAdmin", "conversation": CHANNEL}
    )

    response = await post_raw(http, CHANNEL)

    assert admin.status_code == 204
    assert (response.status_code, response.json()["error"]["code"]) == (403, "BotDisabledByAdmin")


async def test_single_503_on_update_is_retried_by_msrest_but_not_on_send(connector, adapter):
    thread, root = await create_thread(adapter, connector.service_url, card_activity("Pending"))
    connector.inject(503)
    await update(adapter, connector.service_url, thread, root, card_activity("Approved"))
    connector.inject(503)

    with pytest.raises(ErrorResponseException) as caught:
        await send(adapter, connector.service_url, thread, MessageFactory.text("Approved"))

    assert connector.cards() == {root: card("Approved")}
    assert caught.value.response.status_code == 503
    assert [(r.op, r.status) for r in connector.rejected] == [("update", 503), ("reply", 503)]


async def test_dropped_connection_has_no_response(connector, http):
    connector.drop()

    with pytest.raises(httpx.RemoteProtocolError):
        await post_raw(http, CHANNEL)

    assert connector.dropped == 1
    assert (await post_raw(http, CHANNEL)).status_code == 201


async def test_dropped_send_surfaces_as_client_request_error(connector, adapter):
    connector.drop()

    with pytest.raises(ClientRequestError):
        await send(adapter, connector.service_url, CHANNEL, card_activity("Invoice 1"))

    assert connector.posts() == []


async def test_hung_request_stays_open_until_the_stand_in_stops(connector, http):
    connector.hang()
    pending = asyncio.create_task(post_raw(http, CHANNEL))
    await connector.wait_for(lambda: connector.hanging == 1)
    assert not pending.done()

    await connector.stop()

    with pytest.raises(httpx.RemoteProtocolError):
        await pending
    assert connector.accepted == []


async def test_removed_bot_gets_403_roster_on_every_request_to_that_channel(connector, adapter, http):
    thread, root = await create_thread(adapter, connector.service_url, card_activity("Pending"))
    connector.remove_bot(CHANNEL)

    with pytest.raises(ErrorResponseException) as caught:
        await update(adapter, connector.service_url, thread, root, card_activity("Approved"))
    create = await http.post(
        "v3/conversations",
        json={
            "isGroup": True,
            "channelData": {"channel": {"id": CHANNEL}},
            "activity": raw_card_activity("x"),
        },
    )
    members = await http.get(f"v3/conversations/{thread}/members")
    other = await post_raw(http, OTHER)

    assert caught.value.error.error.code == "BotNotInConversationRoster"
    assert [create.status_code, members.status_code, other.status_code] == [403, 403, 201]
    assert create.json()["error"]["code"] == "BotNotInConversationRoster"
    assert connector.cards(CHANNEL) == {root: card("Pending")}


# -- output --------------------------------------------------------------------------------------


async def test_print_cards_writes_one_line_per_card(clock, capsys):
    async with ConnectorStandIn(clock=clock, print_cards=True) as standin:
        async with httpx.AsyncClient(base_url=standin.service_url) as http:
            response = await post_raw(http, CHANNEL, text="Invoice 4711 awaits approval")

    assert (
        capsys.readouterr().out == f"send   {CHANNEL} {response.json()['id']} Invoice 4711 awaits approval\n"
    )


async def test_cli_prints_its_service_url_then_each_card():
    root = Path(__file__).resolve().parents[1]
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "simulator.connector",
        "--port",
        "0",
        cwd=root,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        service_url = (await asyncio.wait_for(process.stdout.readline(), 20)).decode().strip()
        async with httpx.AsyncClient(base_url=service_url) as http:
            await post_raw(http, CHANNEL, text="Order 12")
        line = (await asyncio.wait_for(process.stdout.readline(), 20)).decode()
    finally:
        process.terminate()
        await process.wait()

    assert service_url.startswith("http://127.0.0.1:") and service_url.endswith("/")
    assert line.startswith("send") and line.rstrip().endswith("Order 12")
