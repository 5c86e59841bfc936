"""Commands about people: `link me`, `unlink me`, `mine`, `personal on|off`, and the admins' `people`."""

from __future__ import annotations

import logging
from dataclasses import replace

from bot.commands import CommandCall, Commands, Reply, command
from cards.people import mine_card
from cards.text import clean, inert
from core.errors import CommandError
from core.people import Person, PersonStatus, ifs_user_key, valid_ifs_user

log = logging.getLogger(__name__)

PERSONAL = frozenset({"personal"})
LINK_ME_USAGE = "link me <IFS user id>"
PEOPLE_USAGE = "people | people remove <IFS user> | people confirm <IFS user> | people refuse <IFS user>"


async def _in_personal_chat(cmds: Commands, call: CommandCall) -> bool:
    channel = await cmds.channels.get(call.channel_id)
    conversation = (channel.reference or {}).get("conversation") or {} if channel is not None else {}
    return conversation.get("conversationType") == "personal"


def _ifs_user(call: CommandCall, usage: str) -> str:
    if len(call.args) != 1:
        raise CommandError("Give one IFS user id.", usage=usage)
    user = ifs_user_key(call.args[0])
    if not valid_ifs_user(user):
        raise CommandError(f"'{inert(call.args[0], 40)}' is not an IFS user id.", usage=usage)
    return user


def _describe(p: Person) -> str:
    who = inert(p.name, 60) + (f" ({inert(p.upn, 80)})" if p.upn else "")
    state = "waiting for an admin" if p.status is PersonStatus.PENDING else "active"
    chat = ("personal cards " + ("on" if p.personal else "off")) if p.conversation_id else "no personal chat yet"
    return f"{inert(p.ifs_user, 30)}: {who}, {state}, {chat}"


@command("mine", "mine", "Documents waiting for your approval in IFS, most urgent first")
async def _mine(cmds: Commands, call: CommandCall) -> Reply:
    if call.args:
        raise CommandError("'mine' takes no arguments.", usage="mine")
    people = cmds.store.people
    mine = [p for p in await people.of_user(call.actor.aad_object_id, call.actor.id) if p.active]
    if not mine:
        return Reply("I don't know your IFS user yet. In a personal chat with me, say: link me <IFS user id>")
    records = [cmds.runtime.link_record(r) for r in await people.waiting_for(p.ifs_user for p in mine)]
    card = mine_card(records, cmds.runtime.card_context(), who=", ".join(p.ifs_user for p in mine))
    return Reply(card["fallbackText"], card)


@command("link me", LINK_ME_USAGE, "In a personal chat: you are this IFS user (mentions and personal cards)",
         scopes=PERSONAL)
async def _link_me(cmds: Commands, call: CommandCall) -> Reply:
    user = _ifs_user(call, LINK_ME_USAGE)
    if not await _in_personal_chat(cmds, call):
        raise CommandError("Say this to me in a personal chat, so that I can send you your approvals there.",
                           usage=LINK_ME_USAGE)
    actor = call.actor
    if not actor.aad_object_id and not actor.id:
        raise CommandError("Teams did not tell me who you are.", usage=LINK_ME_USAGE)
    aad = (actor.aad_object_id or "").lower() or None
    people = cmds.store.people
    existing = await people.get(user)
    same = existing is not None and bool(
        (aad and existing.aad_object_id == aad) or (existing.teams_id and existing.teams_id == actor.id)
        or (existing.upn and actor.upn and existing.upn.lower() == actor.upn.lower()))
    if existing is not None and not same:
        # a wrong mapping would show someone else's approvals: only an admin may move it
        raise CommandError(f"IFS user {user} is already linked to someone else. Ask an admin"
                           " ('people remove') if that is wrong.", usage=LINK_ME_USAGE)
    confirm = cmds.people_settings.require_approval and (existing is None or not existing.active)
    person = Person(ifs_user=user, name=clean(actor.name)[:100] or user,
                    aad_object_id=aad or (existing.aad_object_id if existing else None),
                    upn=actor.upn or (existing.upn if existing else None),
                    teams_id=actor.id, status=PersonStatus.PENDING if confirm else PersonStatus.ACTIVE,
                    conversation_id=call.channel_id, personal=existing.personal if existing else True,
                    created_by=actor.label)
    async with cmds.store.unit() as u:
        await u.people.put(person)
        queued = await u.people.backfill_personal(person) if cmds.people_settings.personal else 0
        await u.audit.add("people", "person link requested" if confirm else "person linked", "ok",
                             channel_id=call.channel_id, actor=actor.label, ifs_user=user,
                             status=person.status.value, backfilled=queued)
    if queued:
        cmds.runtime.wake_delivery()
    if confirm:
        return Reply(f"Thanks. An admin has to confirm that you are IFS user {user}; until then I will not"
                     " mention you or send you approvals.")
    return Reply(f"You are IFS user {user} now: cards in channels mention you when a document waits for you,"
                 " and I send you a personal card here. Type 'mine' to see what waits for you,"
                 " 'personal off' to stop the personal cards.")


@command("unlink me", "unlink me", "Forget which IFS user you are", scopes=PERSONAL)
async def _unlink_me(cmds: Commands, call: CommandCall) -> Reply:
    if call.args:
        raise CommandError("'unlink me' takes no arguments.", usage="unlink me")
    people = cmds.store.people
    mine = await people.of_user(call.actor.aad_object_id, call.actor.id)
    if not mine:
        return Reply("You are not linked to any IFS user.")
    users = [p.ifs_user for p in mine]
    async with cmds.store.unit() as u:
        await u.people.remove(users)
        await u.audit.add("people", "person unlinked", "ok", channel_id=call.channel_id,
                             actor=call.actor.label, ifs_users=users)
    return Reply(f"Done: you are no longer IFS user {', '.join(users)} here.")


@command("personal", "personal on | personal off", "Personal cards for your approvals, on or off", scopes=PERSONAL)
async def _personal(cmds: Commands, call: CommandCall) -> Reply:
    usage = "personal on | personal off"
    people = cmds.store.people
    mine = await people.of_user(call.actor.aad_object_id, call.actor.id)
    word = call.args[0].lower() if len(call.args) == 1 else ""
    if len(call.args) > 1 or (call.args and word not in ("on", "off")):
        raise CommandError("Say 'personal on' or 'personal off'.", usage=usage)
    if not mine:
        return Reply("I don't know your IFS user yet. In a personal chat with me, say: link me <IFS user id>")
    if not word:
        on = any(p.personal for p in mine)
        return Reply(f"Personal cards are {'on' if on else 'off'} for you."
                     + ("" if cmds.people_settings.personal else " (The service sends none at the moment.)"))
    on = word == "on"
    async with cmds.store.unit() as u:
        await u.people.set_personal([p.ifs_user for p in mine], on)
        await u.audit.add("people", f"personal {word}", "ok", channel_id=call.channel_id,
                             actor=call.actor.label, ifs_users=[p.ifs_user for p in mine])
    if on:
        return Reply("Personal cards on: I send you a card here when a document reaches your step.")
    return Reply("Personal cards off. Channel cards still mention you; 'mine' still lists what waits for you.")


@command("people", PEOPLE_USAGE, "Who is which IFS user; remove, confirm or refuse a link", admin=True)
async def _people_cmd(cmds: Commands, call: CommandCall) -> Reply:
    people = cmds.store.people
    if not call.args:
        everyone = await people.all()
        if not everyone:
            return Reply("Nobody is linked to an IFS user yet. Users say 'link me <IFS user id>' in a personal"
                         " chat with me, or an admin imports a list (app.py people import).")
        return Reply("\n".join(f"- {_describe(p)}" for p in everyone[:200])
                     + (f"\n- and {len(everyone) - 200} more" if len(everyone) > 200 else ""))
    action = call.args[0].lower()
    if action not in ("remove", "confirm", "refuse"):
        raise CommandError(f"I don't understand '{inert(call.args[0], 40)}' here.", usage=PEOPLE_USAGE)
    user = _ifs_user(CommandCall(call.channel_id, call.actor, call.args[1:], call.raw), PEOPLE_USAGE)
    person = await people.get(user)
    if person is None:
        raise CommandError(f"IFS user {user} is not linked.", usage=PEOPLE_USAGE)
    if action in ("confirm", "refuse") and person.status is not PersonStatus.PENDING:
        raise CommandError(f"IFS user {user} is not waiting for a confirmation.", usage=PEOPLE_USAGE)
    async with cmds.store.unit() as u:
        if action == "confirm":
            await u.people.set_status(user, PersonStatus.ACTIVE)
            if cmds.people_settings.personal:
                await u.people.backfill_personal(replace(person, status=PersonStatus.ACTIVE))
        else:
            await u.people.remove([user])
        await u.audit.add("people", {"remove": "person removed", "confirm": "person confirmed",
                                              "refuse": "person refused"}[action], "ok",
                             channel_id=call.channel_id, actor=call.actor.label, ifs_user=user)
    name = inert(person.name, 60)
    cmds.runtime.wake_delivery()
    return Reply({"remove": f"Removed: IFS user {user} is no longer linked to {name}.",
                  "confirm": f"Confirmed: {name} is IFS user {user}.",
                  "refuse": f"Refused: {name} is not linked to IFS user {user}."}[action])
