"""People: IFS users linked to Teams users, mentioned on channel cards, sent personal cards, `mine`.

Everything through the real CloudAdapter, the IFS simulator and the Bot Connector stand-in on 127.0.0.1.
"""

from __future__ import annotations

import itertools
from typing import Any

import httpx
import pytest

from simulator.connector import ConnectorStandIn
from store.people import People
from tests.conftest import BOT_ID, CHANNEL, TEAM, TENANT, post_activity
from tests.test_bot_commands import ADMINS, Said, _texts, last_command, linked, run_cli, say

ADAPTIVE = "application/vnd.microsoft.card.adaptive"
_ids = itertools.count(1)


@pytest.fixture
async def connector():
    """The stand-in without Teams' per-thread limits: these tests type many commands in a second."""
    stand_in = ConnectorStandIn(enforce_limits=False)
    await stand_in.start()
    yield stand_in
    await stand_in.stop()


class User:
    """A Teams user with a personal chat with the bot."""

    def __init__(self, key: str, name: str) -> None:
        self.id = f"29:{key}"
        self.aad = f"aad-{key}"
        self.name = name
        self.chat = f"a:{key}-personal-chat"

    def message(self, text: str, service_url: str) -> dict[str, Any]:
        return {
            "type": "message",
            "id": f"18000000{next(_ids):05d}",
            "timestamp": "2026-11-27T08:00:00Z",
            "serviceUrl": service_url,
            "channelId": "msteams",
            "from": {"id": self.id, "name": self.name, "aadObjectId": self.aad},
            "conversation": {"id": self.chat, "conversationType": "personal", "tenantId": TENANT},
            "recipient": {"id": BOT_ID, "name": "IFS Approvals"},
            "text": text,
            "textFormat": "plain",
            "channelData": {"tenant": {"id": TENANT}},
        }


ALEX = User("alex", "Alex Wilber")
MEGAN = User("megan", "Megan Bowen")


def chat_messages(connector: ConnectorStandIn, user: User) -> list[Said]:
    return [Said(a.activity) for a in connector.accepted if a.channel_id == user.chat and a.op == "send"]


def record_cards(connector: ConnectorStandIn, user: User) -> dict[str, dict[str, Any]]:
    """Root activity id -> the record card the personal chat shows now (command replies left out)."""
    out = {}
    for activity_id, card in connector.cards(user.chat).items():
        if card.get("fallbackText", "").startswith(("Purchase order", "Supplier invoice", "GL voucher")):
            out[activity_id] = card
    return out


async def tell(svc, connector, user: User, text: str) -> Said:
    """One message in the user's personal chat; returns the bot's one answer there."""
    before = len(chat_messages(connector, user))
    assert await post_activity(svc.base_url, user.message(text, connector.service_url)) in (200, 201)
    new = chat_messages(connector, user)[before:]
    assert len(new) == 1, [s.text for s in new]
    return new[0]


def orders_with_approvers(ifs, *wanted: tuple[str, ...]) -> list[dict[str, Any]]:
    """Orders whose approval lines start with these approvers, in order (the simulator draws them per row)."""
    found: list[dict[str, Any]] = []
    for prefix in wanted:
        for _ in range(400):
            order = ifs.add_order(company="10")
            key = {"OrderNo": order["OrderNo"]}
            chain = tuple(line["AuthorizeId"] for line in ifs.nav_rows("order", key))
            if chain[:len(prefix)] == prefix and (len(prefix) > 1 or len(chain) >= 1):
                found.append(order)
                break
            ifs.remove("order", key)
        else:
            raise AssertionError(f"no order with approvers {prefix}")
    return found


async def alain_waits(svc, connector, ifs, *then: str) -> dict[str, Any]:
    """The channel linked to company 10, an order waiting for ALAIN, Alex linked as ALAIN (then says
    `then` in his personal chat), one poll and one delivery round; returns the order."""
    await linked(svc, connector, ifs)
    [order] = orders_with_approvers(ifs, ("ALAIN",))
    await tell(svc, connector, ALEX, "link me ALAIN")
    for text in then:
        await tell(svc, connector, ALEX, text)
    await svc.poll_once()
    await svc.worker.run_once()
    return order


def channel_card(connector: ConnectorStandIn, number: str) -> dict[str, Any]:
    [card] = [c for c in connector.cards(CHANNEL).values() if number in c.get("fallbackText", "")]
    return card


def mention_lines(card: dict[str, Any]) -> list[str]:
    return [t for t in _texts(card) if "<at>" in t]


# --------------------------------------------------------------------------- link me / unlink me

async def test_link_me_in_a_personal_chat_maps_the_user_and_keeps_the_chat(ifs, connector, service_factory):
    svc = await service_factory()
    said = await tell(svc, connector, ALEX, "link me alain")

    assert said.text.startswith("You are IFS user ALAIN now")
    person = await People(svc.db).get("ALAIN")
    assert (person.name, person.aad_object_id, person.teams_id, person.conversation_id, person.status.value) == (
        "Alex Wilber", "aad-alex", "29:alex", ALEX.chat, "active")
    rows = await svc.audit.recent(limit=5, category="people")
    assert [(r.action, r.outcome, r.actor, r.detail["ifs_user"]) for r in rows] == [
        ("person linked", "ok", "Alex Wilber", "ALAIN")]

    said = await tell(svc, connector, ALEX, "unlink me")
    assert said.text == "Done: you are no longer IFS user ALAIN here."
    assert await People(svc.db).get("ALAIN") is None
    assert (await svc.audit.recent(limit=1, category="people"))[0].action == "person unlinked"
    said = await tell(svc, connector, ALEX, "unlink me")
    assert said.text == "You are not linked to any IFS user."


async def test_link_me_in_a_channel_is_refused(ifs, connector, service_factory):
    svc = await service_factory()
    said = await say(svc, connector, "link me ALAIN")

    assert said.text.startswith("Say this to me in a personal chat")
    assert await People(svc.db).all() == []
    row = await last_command(svc)
    assert (row.action, row.outcome) == ("link me", "error")


@pytest.mark.parametrize("text", ["link me", "link me A B", "link me <at>x</at>", "link me " + "A" * 31])
async def test_link_me_bad_input(ifs, connector, service_factory, text):
    svc = await service_factory()
    said = await tell(svc, connector, ALEX, text)
    assert said.text.endswith("Usage: link me <IFS user id>")
    assert await People(svc.db).all() == []


async def test_nobody_takes_over_someone_elses_ifs_user(ifs, connector, service_factory):
    svc = await service_factory()
    await tell(svc, connector, ALEX, "link me ALAIN")
    said = await tell(svc, connector, MEGAN, "link me ALAIN")

    assert said.text.startswith("IFS user ALAIN is already linked to someone else.")
    assert (await People(svc.db).get("ALAIN")).aad_object_id == "aad-alex"
    said = await tell(svc, connector, MEGAN, "unlink me")  # Megan's unlink cannot remove Alex's link
    assert said.text == "You are not linked to any IFS user."
    assert await People(svc.db).get("ALAIN") is not None


async def test_with_require_approval_a_link_waits_for_an_admin(ifs, connector, service_factory):
    svc = await service_factory(extra=ADMINS + "\n[people]\nrequire_approval = true\n")
    said = await tell(svc, connector, ALEX, "link me ALAIN")
    assert said.text.startswith("Thanks. An admin has to confirm that you are IFS user ALAIN")
    assert (await People(svc.db).get("ALAIN")).status.value == "pending"
    await tell(svc, connector, MEGAN, "link me BRITA")

    said = await say(svc, connector, "people confirm ALAIN")  # Alice, not an admin
    assert said.text.startswith("Only admins can use 'people'")
    said = await say(svc, connector, "people", aad="aad-admin")
    assert said.text.split("\n") == [
        "- ALAIN: Alex Wilber, waiting for an admin, personal cards on",
        "- BRITA: Megan Bowen, waiting for an admin, personal cards on",
    ]
    said = await say(svc, connector, "people confirm alain", aad="aad-admin")
    assert said.text == "Confirmed: Alex Wilber is IFS user ALAIN."
    said = await say(svc, connector, "people refuse BRITA", aad="aad-admin")
    assert said.text == "Refused: Megan Bowen is not linked to IFS user BRITA."
    said = await say(svc, connector, "people confirm ALAIN", aad="aad-admin")
    assert said.text.startswith("IFS user ALAIN is not waiting for a confirmation.")
    said = await say(svc, connector, "people remove ALAIN", aad="aad-admin")
    assert said.text == "Removed: IFS user ALAIN is no longer linked to Alex Wilber."
    assert await People(svc.db).all() == []

    rows = await svc.audit.recent(limit=20, category="people")
    assert [(r.action, r.detail["ifs_user"]) for r in reversed(rows)] == [
        ("person link requested", "ALAIN"), ("person link requested", "BRITA"), ("person confirmed", "ALAIN"),
        ("person refused", "BRITA"), ("person removed", "ALAIN")]


async def test_personal_on_and_off(ifs, connector, service_factory):
    svc = await service_factory()
    said = await tell(svc, connector, ALEX, "personal off")
    assert said.text.startswith("I don't know your IFS user yet.")
    await tell(svc, connector, ALEX, "link me ALAIN")
    assert (await tell(svc, connector, ALEX, "personal")).text == "Personal cards are on for you."
    said = await tell(svc, connector, ALEX, "personal off")
    assert said.text.startswith("Personal cards off.")
    assert (await People(svc.db).get("ALAIN")).personal is False
    assert (await tell(svc, connector, ALEX, "personal")).text == "Personal cards are off for you."
    said = await tell(svc, connector, ALEX, "personal maybe")
    assert said.text.endswith("Usage: personal on | personal off")
    assert (await svc.audit.recent(limit=1, category="people"))[0].action == "personal off"


# --------------------------------------------------------------------------- mentions and personal cards

async def test_the_next_approver_is_mentioned_and_gets_one_personal_card_updated_as_ifs_moves_on(
        ifs, connector, service_factory):
    svc = await service_factory()
    await linked(svc, connector, ifs)  # an order for company 10 whose approvers nobody is mapped to ...
    [first] = orders_with_approvers(ifs, ("ALAIN", "BRITA"))
    await tell(svc, connector, ALEX, "link me ALAIN")
    await tell(svc, connector, MEGAN, "link me BRITA")

    await svc.poll_once()
    await svc.worker.run_once()

    card = channel_card(connector, first["OrderNo"])
    assert mention_lines(card) == ["Next approver: <at>Alex Wilber</at>"]
    assert card["msteams"]["entities"] == [{"type": "mention", "text": "<at>Alex Wilber</at>",
                                            "mentioned": {"id": "aad-alex", "name": "Alex Wilber"}}]
    unmapped = [c for c in connector.cards(CHANNEL).values() if first["OrderNo"] not in c["fallbackText"]]
    assert unmapped and all("msteams" not in c and not mention_lines(c) for c in unmapped)

    [alex_card] = record_cards(connector, ALEX).values()
    assert first["OrderNo"] in alex_card["fallbackText"]
    assert record_cards(connector, MEGAN) == {}
    await svc.poll_once()
    await svc.worker.run_once()
    assert len(record_cards(connector, ALEX)) == 1  # nothing new: no second card

    ifs.approve_step("order", {"OrderNo": first["OrderNo"]}, by="ALAIN")
    await svc.poll_once()
    await svc.worker.run_once()

    [alex_now] = record_cards(connector, ALEX).values()  # the same card, updated in place
    assert [u.root_id for u in connector.updates(ALEX.chat)] == list(record_cards(connector, ALEX))
    assert mention_lines(alex_now) == ["Next approver: <at>Megan Bowen</at>"]
    [megan_card] = record_cards(connector, MEGAN).values()
    assert first["OrderNo"] in megan_card["fallbackText"]
    assert mention_lines(channel_card(connector, first["OrderNo"])) == ["Next approver: <at>Megan Bowen</at>"]


async def test_linking_later_brings_what_already_waits(ifs, connector, service_factory):
    svc = await service_factory()
    await linked(svc, connector, ifs)
    [order] = orders_with_approvers(ifs, ("ALAIN",))
    await svc.poll_once()
    await svc.worker.run_once()
    assert record_cards(connector, ALEX) == {}

    await tell(svc, connector, ALEX, "link me ALAIN")
    await svc.worker.run_once()
    [card] = record_cards(connector, ALEX).values()
    assert order["OrderNo"] in card["fallbackText"]
    assert (await svc.audit.recent(limit=1, category="people"))[0].detail["backfilled"] == 1


async def test_personal_cards_respect_personal_off_and_the_setting(ifs, connector, service_factory):
    svc = await service_factory(extra="\n[people]\npersonal = false\n")
    await alain_waits(svc, connector, ifs)
    assert record_cards(connector, ALEX) == {}
    assert any(mention_lines(c) for c in connector.cards(CHANNEL).values())  # mentions do not depend on it


async def test_personal_off_stops_new_personal_cards(ifs, connector, service_factory):
    svc = await service_factory()
    await alain_waits(svc, connector, ifs, "personal off")
    assert record_cards(connector, ALEX) == {}


async def test_a_pending_link_is_never_mentioned(ifs, connector, service_factory):
    svc = await service_factory(extra="\n[people]\nrequire_approval = true\n")
    await alain_waits(svc, connector, ifs)
    assert not any(mention_lines(c) for c in connector.cards(CHANNEL).values())
    assert record_cards(connector, ALEX) == {}


async def test_a_personal_chat_that_is_gone_becomes_inactive(ifs, connector, service_factory):
    svc = await service_factory()
    await linked(svc, connector, ifs)
    orders_with_approvers(ifs, ("ALAIN",))
    await tell(svc, connector, ALEX, "link me ALAIN")
    connector.remove_bot(ALEX.chat)  # the user uninstalled the app: 403 BotNotInConversationRoster
    await svc.poll_once()
    await svc.worker.run_once()

    chat = await svc.worker.channels.get(ALEX.chat)
    assert (chat.active, chat.inactive_reason) == (False, "BotNotInConversationRoster")
    assert len(connector.cards(CHANNEL)) >= 1  # the channel is not held up


async def test_mine_lists_exactly_what_waits_for_me_most_urgent_first(ifs, connector, service_factory):
    svc = await service_factory()
    await linked(svc, connector, ifs)
    late, soon = orders_with_approvers(ifs, ("ALAIN",), ("ALAIN",))
    [other] = orders_with_approvers(ifs, ("BRITA",))
    ifs.update("order", {"OrderNo": late["OrderNo"]}, OrderDate="2026-11-01")
    ifs.update("order", {"OrderNo": soon["OrderNo"]}, OrderDate="2026-10-01")
    await tell(svc, connector, ALEX, "link me ALAIN")
    await svc.poll_once()

    said = await tell(svc, connector, ALEX, "mine")
    assert said.text == "Waiting for ALAIN: 2 documents"
    shown = [o["OrderNo"] for line in said.lines for o in (late, soon, other) if o["OrderNo"] in line]
    assert shown == [soon["OrderNo"], late["OrderNo"]]  # the older order first; BRITA's not at all
    said = await say(svc, connector, "mine", user="29:nobody", aad="aad-nobody")
    assert said.text.startswith("I don't know your IFS user yet.")


# --------------------------------------------------------------------------- CSV import and export

def test_people_import_export_and_a_bad_file(tmp_path):
    from tests.conftest import write_config

    cfg = write_config(tmp_path)
    good = tmp_path / "people.csv"
    good.write_text("ifs_user,teams_user,name\nalain,0f8fad5b-d9cb-469f-a165-70867728950e,Alex Wilber\n"
                    "BRITA,megan@contoso.com,Megan Bowen\n", encoding="utf-8")
    done = run_cli(tmp_path, "people", "import", str(good), config=cfg)
    assert (done.returncode, done.stdout.strip()) == (0, "imported 2 people")

    out = run_cli(tmp_path, "people", "export", config=cfg)
    assert out.returncode == 0
    assert out.stdout.splitlines() == ["ifs_user,teams_user,name",
                                       "ALAIN,0f8fad5b-d9cb-469f-a165-70867728950e,Alex Wilber",
                                       "BRITA,megan@contoso.com,Megan Bowen"]

    bad = tmp_path / "bad.csv"
    bad.write_text("CHEN,chen@contoso.com,Chen\nDIEGO,not-an-id,Diego\n", encoding="utf-8")
    failed = run_cli(tmp_path, "people", "import", str(bad), config=cfg)
    assert failed.returncode != 0
    assert failed.stderr.strip() == "error: line 2: 'not-an-id' is neither an Entra object id nor a UPN"
    assert len(failed.stderr.strip().splitlines()) == 1
    after = run_cli(tmp_path, "people", "export", config=cfg)
    assert "CHEN" not in after.stdout and len(after.stdout.splitlines()) == 3  # nothing half-imported
    audit = run_cli(tmp_path, "audit", "--category", "people", "--json", config=cfg)
    assert '"people imported"' in audit.stdout


# --------------------------------------------------------------------------- I'm on it

def card_action(verb: str, record_id: str, service_url: str, root: str, *, user: str, aad: str, name: str,
                submit: bool = False) -> dict[str, Any]:
    """What Teams sends when someone presses a card's Action.Execute (or, without Universal Actions, the
    Action.Submit fallback: a message whose value is the action's data)."""
    activity: dict[str, Any] = {
        "type": "message" if submit else "invoke",
        "id": f"19000000{next(_ids):05d}",
        "serviceUrl": service_url,
        "channelId": "msteams",
        "from": {"id": user, "name": name, "aadObjectId": aad},
        "conversation": {"id": f"{CHANNEL};messageid={root}", "isGroup": True, "conversationType": "channel",
                         "tenantId": TENANT},
        "recipient": {"id": BOT_ID, "name": "IFS Approvals"},
        "replyToId": root,
        "channelData": {"channel": {"id": CHANNEL}, "team": {"id": TEAM, "aadGroupId": "group-1"},
                        "tenant": {"id": TENANT}},
    }
    if submit:
        activity["value"] = {"verb": verb, "record_id": record_id}
    else:
        activity["name"] = "adaptiveCard/action"
        activity["value"] = {"action": {"type": "Action.Execute", "verb": verb, "data": {"record_id": record_id}},
                             "trigger": "manual"}
    return activity


async def press(svc, activity: dict[str, Any]) -> tuple[int, dict[str, Any] | None]:
    async with httpx.AsyncClient() as client:
        resp = await client.post(f"{svc.base_url}/api/messages", json=activity)
    return resp.status_code, (resp.json() if resp.content else None)


def claim_lines(card: dict[str, Any]) -> list[str]:
    return [t for t in _texts(card) if " is on it since " in t]


def execute_actions(card: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(a["title"], a["verb"], a["fallback"]["type"]) for a in card.get("actions", [])
            if a["type"] == "Action.Execute"]


async def test_im_on_it_first_wins_the_second_sees_who_has_it(ifs, connector, service_factory):
    svc = await service_factory()
    await linked(svc, connector, ifs)
    await svc.poll_once()
    await svc.worker.run_once()
    [(root, card)] = connector.cards(CHANNEL).items()
    [action] = [a for a in card["actions"] if a["type"] == "Action.Execute"]
    assert execute_actions(card) == [("I'm on it", "claim", "Action.Submit")]
    record_id = action["data"]["record_id"]
    assert action["fallback"]["data"] == {"verb": "claim", "record_id": record_id}

    status, body = await press(svc, card_action("claim", record_id, connector.service_url, root,
                                                user="29:alex", aad="aad-alex", name="Alex Wilber"))
    assert status == 200 and body["statusCode"] == 200 and body["type"] == ADAPTIVE
    [line] = claim_lines(body["value"])
    assert line.startswith("Alex Wilber is on it since ")
    assert execute_actions(body["value"]) == [("Release", "release", "Action.Submit")]
    assert connector.cards(CHANNEL)[root] == body["value"]  # the card everyone sees is the refreshed one

    status, body = await press(svc, card_action("claim", record_id, connector.service_url, root,
                                                user="29:megan", aad="aad-megan", name="Megan Bowen"))
    assert status == 200 and claim_lines(body["value"]) == [line]  # Megan sees who has it
    status, body = await press(svc, card_action("release", record_id, connector.service_url, root,
                                                user="29:megan", aad="aad-megan", name="Megan Bowen"))
    assert claim_lines(body["value"]) == [line]  # only the holder releases

    rows = await svc.audit.recent(limit=10, category="people")
    assert [(r.action, r.outcome, r.actor, r.record_id) for r in reversed(rows)] == [
        ("document claimed", "ok", "Alex Wilber", record_id),
        ("document claimed", "denied", "Megan Bowen", record_id),
        ("document released", "denied", "Megan Bowen", record_id)]

    status, body = await press(svc, card_action("release", record_id, connector.service_url, root,
                                                user="29:alex", aad="aad-alex", name="Alex Wilber"))
    assert claim_lines(body["value"]) == [] and execute_actions(body["value"])[0][1] == "claim"
    assert claim_lines(connector.cards(CHANNEL)[root]) == []
    assert (await svc.audit.recent(limit=1, category="people"))[0].action == "document released"


async def test_a_claim_refreshes_the_documents_cards_in_other_conversations(ifs, connector, service_factory):
    svc = await service_factory()
    order = await alain_waits(svc, connector, ifs)
    other = "19:other-channel@thread.tacv2"
    await say(svc, connector, "link company 10", channel=other)
    await svc.worker.run_once()
    [(root, _)] = [(r, c) for r, c in connector.cards(CHANNEL).items() if order["OrderNo"] in c["fallbackText"]]
    record_id = f"order:10:OrderNo={order['OrderNo']}"

    await press(svc, card_action("claim", record_id, connector.service_url, root, user="29:megan",
                                 aad="aad-megan", name="Megan Bowen"))

    elsewhere = [c for c in [*connector.cards(other).values(), *record_cards(connector, ALEX).values()]
                 if order["OrderNo"] in c["fallbackText"]]
    assert len(elsewhere) == 2  # the other channel's card and Alex's personal one
    assert all(claim_lines(c)[0].startswith("Megan Bowen is on it since ") for c in elsewhere)
    refreshed = [r for r in await svc.audit.recent(limit=10, category="delivery") if r.action == "card refresh"]
    assert sorted(r.channel_id for r in refreshed) == sorted([other, ALEX.chat])


async def test_the_submit_fallback_claims_too_and_later_updates_keep_the_claim(ifs, connector, service_factory):
    svc = await service_factory()
    await linked(svc, connector, ifs)
    await svc.poll_once()
    await svc.worker.run_once()
    [(root, card)] = connector.cards(CHANNEL).items()
    record_id = next(a for a in card["actions"] if a["type"] == "Action.Execute")["data"]["record_id"]

    status, _ = await press(svc, card_action("claim", record_id, connector.service_url, root, user="29:alex",
                                             aad="aad-alex", name="Alex Wilber", submit=True))
    assert status in (200, 201)
    assert claim_lines(connector.cards(CHANNEL)[root])[0].startswith("Alex Wilber is on it since ")

    order_no = record_id.rsplit("=", 1)[1]
    ifs.update("order", {"OrderNo": order_no}, GrossAmtCurr=12345)  # IFS changes it: the card is re-rendered
    updates = len(connector.updates(CHANNEL))
    await svc.poll_once()
    await svc.worker.run_once()
    assert len(connector.updates(CHANNEL)) == updates + 1
    now = connector.cards(CHANNEL)[root]
    assert "12,345" in now["fallbackText"]
    assert claim_lines(now)[0].startswith("Alex Wilber is on it since ")


async def test_an_unknown_card_action_is_refused(ifs, connector, service_factory):
    svc = await service_factory()
    status, body = await press(svc, card_action("claim", "order:10:OrderNo=NOPE", connector.service_url, "1",
                                                user="29:alex", aad="aad-alex", name="Alex Wilber"))
    assert status == 200 and body["statusCode"] == 400 and body["type"] == "application/vnd.microsoft.error"
    status, body = await press(svc, card_action("delete", "order:10:OrderNo=NOPE", connector.service_url, "1",
                                                user="29:alex", aad="aad-alex", name="Alex Wilber"))
    assert body["statusCode"] == 400
    assert [r.outcome for r in await svc.audit.recent(limit=2, category="people")] == ["error", "error"]
