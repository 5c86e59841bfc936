"""Chat commands: a registry (usage and help declared at each command), an exact parser, and the handlers."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol

from bot.authz import Actor, AdminPolicy
from bot.status import build_status
from cards import AuditView, audit_card, help_card, inert, links_card, status_card
from core.clock import SYSTEM_CLOCK, Clock
from core.company import CompanyCheck
from core.domain import Binding, RecordKind
from core.errors import CommandError, ConfigError
from core.settings import PeopleSettings, parse_span
from store.db import Database
from store.unit import Store

log = logging.getLogger(__name__)


class Runtime(Protocol):
    """What the running service knows beyond the database (scheduler, IFS client)."""

    async def check_company(self, company: str) -> CompanyCheck: ...

    def next_runs(self) -> dict[str, float | None]: ...

    def ifs_token_state(self) -> dict[str, Any]: ...

    def poll_soon(self) -> None: ...

    def card_context(self) -> Any: ...

    def link_record(self, record: Any) -> Any: ...

    def wake_delivery(self) -> None: ...


@dataclass(frozen=True)
class Reply:
    """What a command answers: plain text, or an Adaptive Card with a text fallback."""

    text: str
    card: dict[str, Any] | None = None


ALL_SCOPES = frozenset({"team", "personal", "groupChat"})
CHANNELS = frozenset({"team", "groupChat"})  # commands about the conversation's links and deliveries


@dataclass(frozen=True)
class CommandSpec:
    name: str  # one word, or two ("link me") when the second word makes it another command
    usage: str
    help: str
    admin: bool
    handler: Callable[[Commands, CommandCall], Awaitable[Reply]]
    scopes: frozenset[str] = ALL_SCOPES  # where Teams' command menu offers it (every command works anywhere)


@dataclass(frozen=True)
class CommandCall:
    channel_id: str
    actor: Actor
    args: tuple[str, ...]
    raw: str


REGISTRY: dict[str, CommandSpec] = {}


def command(name: str, usage: str, help: str, *, admin: bool = False, scopes: frozenset[str] = ALL_SCOPES):
    def register(fn):
        REGISTRY[name] = CommandSpec(name, usage, help, admin, fn, frozenset(scopes))
        return fn
    return register


MAX_ECHO = 200  # characters of one argument (or of the command line) kept in audit rows and replies


def capped(text: str, limit: int = MAX_ECHO) -> str:
    """At most `limit` characters, an ellipsis marking a cut: a 200 KB argument must not become a 200 KB
    audit row, or a reply that Teams refuses as too large."""
    return text if len(text) <= limit else text[:limit] + "\u2026"


def parse(text: str) -> tuple[str, tuple[str, ...]]:
    """'  Link  COMPANY 10 ' -> ('link', ('company', '10')). Keywords compare case-insensitively later."""
    words = text.replace("\u00a0", " ").split()
    if not words:
        return "", ()
    return words[0].lower(), tuple(words[1:])


def resolve(text: str) -> tuple[str, tuple[str, ...]]:
    """parse, then a two-word command ('link me ALAIN' -> ('link me', ('ALAIN',))) where one is registered."""
    name, args = parse(text)
    if args and f"{name} {args[0].lower()}" in REGISTRY:
        return f"{name} {args[0].lower()}", args[1:]
    return name, args


class Commands:
    """Dispatches a command line: lookup, admin check, handler, audit. Handlers never see raw activities."""

    def __init__(self, db: Database, runtime: Runtime, policy: AdminPolicy, *, clock: Clock = SYSTEM_CLOCK,
                 people: PeopleSettings | None = None) -> None:
        self.db = db
        self.people_settings = people or PeopleSettings()
        self.runtime = runtime
        self.policy = policy
        self.now = clock.time
        self.store = Store(db, clock)
        self.channels, self.bindings, self.outbox, self.audit, self.seen = (
            self.store.channels, self.store.bindings, self.store.outbox, self.store.audit, self.store.seen)

    def wants_upn(self, text: str) -> bool:
        """Does deciding on this command line need the user's UPN (an admin command, admins named by UPN)?"""
        spec = REGISTRY.get(resolve(text)[0])
        return spec is not None and spec.admin and self.policy.by_upn

    async def run(self, channel_id: str, actor: Actor, text: str) -> Reply:
        name, args = resolve(text)
        # every handler sees, stores and echoes arguments capped here, in the one place
        call = CommandCall(channel_id, actor, tuple(capped(a) for a in args), capped(text.strip()))
        spec = REGISTRY.get(name)
        if spec is None:
            shown = name[:40] or "(nothing)"
            await self.audit.record("command", name[:40] or "empty", "error", channel_id=channel_id,
                                    actor=actor.label, text=call.raw, problem="unknown command")
            return Reply(f"I don't know the command '{shown}'. Type 'help' to see what I can do.")
        channel = await self.channels.get(channel_id)
        if channel is not None and not channel.active and name not in ("help", "status"):
            await self.audit.record("command", name, "denied", channel_id=channel_id, actor=actor.label,
                                    text=call.raw, problem=f"channel inactive: {channel.inactive_reason}")
            return Reply(f"This channel is inactive ({channel.inactive_reason}). Reinstall the app in this team"
                         " to receive notifications again.")
        if spec.admin and not await self.policy.is_admin(actor):
            await self.audit.record("command", name, "denied", channel_id=channel_id, actor=actor.label,
                                    text=call.raw, problem="not an admin")
            return Reply(f"Only admins can use '{name}'. Ask a team owner or a configured notifier admin.")
        try:
            reply = await spec.handler(self, call)
        except CommandError as exc:
            problem = capped(str(exc), 2 * MAX_ECHO)
            await self.audit.record("command", name, "error", channel_id=channel_id, actor=actor.label,
                                    text=call.raw, problem=problem)
            usage = exc.usage or spec.usage
            return Reply(f"{problem}\n\nUsage: {usage}")
        await self.audit.record("command", name, "ok", channel_id=channel_id, actor=actor.label, text=call.raw)
        return reply

    @staticmethod
    def help_rows() -> list[tuple[str, str]]:
        return [(spec.usage, spec.help + (" (admins)" if spec.admin else "")) for spec in REGISTRY.values()]


# --------------------------------------------------------------------------- argument parsing

def parse_link_args(args: Sequence[str], usage: str) -> tuple[str, frozenset[RecordKind] | None,
                                                               frozenset[str], Decimal | None]:
    if not args or args[0].lower() != "company":
        raise CommandError("Say which company to link: 'link company <code>'.", usage=usage)
    if len(args) < 2:
        raise CommandError("The company code is missing.", usage=usage)
    company = args[1]
    if not _is_code(company):
        raise CommandError(f"'{company[:40]}' is not a company code (letters, digits, - and _ only).", usage=usage)
    kinds: frozenset[RecordKind] | None = None
    costs: frozenset[str] = frozenset()
    minimum: Decimal | None = None
    rest = list(args[2:])
    while rest:
        word = rest.pop(0).lower()
        if not rest:
            raise CommandError(f"'{word}' needs a value.", usage=usage)
        value = rest.pop(0)
        if word in ("kinds", "kind"):
            try:
                kinds = frozenset(RecordKind.parse(v) for v in value.split(",") if v)
            except ValueError as exc:
                raise CommandError(str(exc).capitalize() + ".", usage=usage) from None
        elif word in ("costcenter", "costcentre", "costcenters"):
            costs = frozenset(v for v in value.split(",") if v)
            if not all(_is_code(c) for c in costs):
                raise CommandError("Cost centres are codes separated by commas.", usage=usage)
        elif word == "min":
            try:
                minimum = Decimal(value.replace(",", ""))
            except InvalidOperation:
                raise CommandError(f"'{value[:40]}' is not an amount.", usage=usage) from None
            if not minimum.is_finite() or minimum < 0:
                raise CommandError("The minimum amount must be zero or more.", usage=usage)
        else:
            raise CommandError(f"I don't understand '{word[:40]}' here.", usage=usage)
    return company, kinds, costs, minimum


def _is_code(text: str) -> bool:
    return 0 < len(text) <= 20 and all(c.isalnum() or c in "-_" for c in text)


# --------------------------------------------------------------------------- handlers

LINK_USAGE = "link company <code> [kinds invoices,orders,vouchers] [costcenter <cc>[,<cc>...]] [min <amount>]"


@command("help", "help", "Show what I can do")
async def _help(cmds: Commands, call: CommandCall) -> Reply:
    rows = Commands.help_rows()
    text = "\n".join(f"- {u}: {h}" for u, h in rows)
    return Reply("Commands:\n" + text, help_card(rows))


@command("link", LINK_USAGE, "Send this channel the approvals of an IFS company", admin=True, scopes=CHANNELS)
async def _link(cmds: Commands, call: CommandCall) -> Reply:
    company, kinds, costs, minimum = parse_link_args(call.args, LINK_USAGE)
    check = await cmds.runtime.check_company(company)
    if not check.ok:
        raise CommandError(f"I could not confirm company '{company}' in IFS: {check.error}", usage=LINK_USAGE)
    binding = Binding(channel_id=call.channel_id, company=company, kinds=kinds or frozenset(RecordKind),
                      cost_centers=costs, min_amount=minimum, created_by=call.actor.label)
    async with cmds.store.unit() as u:
        created = await u.bindings.put(binding)
        queued = await u.outbox.backfill(call.channel_id, await cmds.seen.pending_records(company), binding)
        await u.audit.add("command", "binding " + ("created" if created else "changed"), "ok",
                             channel_id=call.channel_id, company=company, actor=call.actor.label,
                             binding=binding.describe(), backfilled=queued)
    cmds.runtime.poll_soon()
    cmds.runtime.wake_delivery()
    lines = [f"This channel now receives: {binding.describe()}."]
    wanted = {k.plural for k in binding.kinds}
    blocked = {k: why for k, why in check.kinds.items() if k in wanted and why}
    if blocked:
        arriving = sorted(k for k in wanted if k not in blocked)
        lines.append(("Cards will arrive for " + ", ".join(arriving) + "." if arriving else "No cards can arrive yet.")
                     + " Not arriving until an admin changes the service's configuration:")
        lines += [f"- {kind}: {why}" for kind, why in sorted(blocked.items())]
    if check.pending:
        pending = ", ".join(f"{n} {k if n != 1 else k[:-1]}" for k, n in sorted(check.pending.items())) or "nothing"
        lines.append(f"Pending in IFS for company {company} at the last poll: {pending}.")
    else:
        lines.append(f"Company {company} is new to me: I am polling it now.")
    if queued:
        lines.append(f"{queued} already known pending document{'s are' if queued != 1 else ' is'} on the way"
                     f"{' as a digest' if queued > 1 else ''}.")
    else:
        lines.append("They will arrive here after the next poll (a digest when there are many).")
    return Reply("\n\n".join(lines))


@command("unlink", "unlink company <code> | unlink all", "Stop sending a company (or everything) here", admin=True,
         scopes=CHANNELS)
async def _unlink(cmds: Commands, call: CommandCall) -> Reply:
    usage = "unlink company <code> | unlink all"
    args = [a.lower() for a in call.args]
    if args == ["all"]:
        company = None
    elif len(args) == 2 and args[0] == "company":
        company = call.args[1]
    else:
        raise CommandError("Say which company to unlink, or 'all'.", usage=usage)
    async with cmds.store.unit() as u:
        removed = await u.bindings.remove(call.channel_id, company)
        await u.audit.add("command", "binding removed", "ok" if removed else "skipped",
                             channel_id=call.channel_id, company=company, actor=call.actor.label, removed=removed)
    if not removed:
        what = f"company {company}" if company else "any company"
        return Reply(f"This channel was not linked to {what}.")
    return Reply(f"Unlinked {'company ' + company if company else 'all companies'} from this channel"
                 f" ({removed} link{'s' if removed != 1 else ''}).")


@command("links", "links", "What this channel receives")
async def _links(cmds: Commands, call: CommandCall) -> Reply:
    _no_args(call, "links")
    bindings = await cmds.bindings.for_channel(call.channel_id)
    if not bindings:
        return Reply("This channel is not linked to any company. Try: link company <code>")
    return Reply("\n".join(f"- {b.describe()}" for b in bindings), links_card(bindings))


STATUS_USAGE = "status [all | invoices | orders | vouchers]"


@command("status", STATUS_USAGE, "Health and what to fix, for this channel ('all': every company; a kind: IFS's"
         " own words)")
async def _status(cmds: Commands, call: CommandCall) -> Reply:
    if len(call.args) > 1:
        raise CommandError("'status' takes at most one word.", usage=STATUS_USAGE)
    word = call.args[0].lower() if call.args else ""
    kind: RecordKind | None = None
    companies: set[str] | None = {b.company for b in await cmds.bindings.for_channel(call.channel_id)}
    if word == "all":
        if not await cmds.policy.is_admin(call.actor):
            raise CommandError("Only admins can see every company's status; 'status' shows this channel's.",
                               usage=STATUS_USAGE)
        companies = None
    elif word:
        try:
            kind = RecordKind.parse(word)
        except ValueError:
            raise CommandError(f"I don't know '{word[:40]}' here.", usage=STATUS_USAGE) from None
    view = await build_status(cmds.db, cmds.runtime, channel_id=call.channel_id, now=cmds.now(),
                              companies=companies, kind=kind.value if kind else None)
    if kind is not None:  # the full story of one kind: what to fix and IFS's own words, whole
        lines = [f"{kind.plural.capitalize()}: " + ("failing" if any(s.failing for s in view.sources) else "ok")]
        for source in view.sources:
            lines.append(f"{source.name}: last poll {source.last_outcome or 'never'}"
                         + (f". {source.fix}" if source.fix else ""))
            lines += [f"Left out: {line}" for line in source.left_out]
        return Reply("\n\n".join(inert(line, 2000) for line in lines))
    return Reply(view.as_text(), status_card(view, cmds.runtime.card_context()))


@command("audit", "audit [n] [failed]", "Recent audit entries for this channel")
async def _audit(cmds: Commands, call: CommandCall) -> Reply:
    limit, failed = 10, False
    for arg in call.args:
        if arg.lower() == "failed":
            failed = True
        elif arg.isascii() and arg.isdigit() and 0 < int(arg) <= 50:
            limit = int(arg)
        else:
            raise CommandError(f"'{arg[:40]}' is neither a count (1-50) nor 'failed'.")
    entries = await cmds.audit.recent(limit=limit, channel_id=call.channel_id, failed_only=failed)
    if not entries:
        return Reply("No audit entries for this channel yet.")
    views = [AuditView(at=e.at, kind=e.category, outcome=e.outcome, summary=e.action,
                       detail=_audit_detail(e.detail, e.record_id, e.delivery_id)) for e in entries]
    text = "\n".join(f"- {v.kind} {v.summary}: {v.outcome} {v.detail}".rstrip() for v in views)
    return Reply(text, audit_card(views, cmds.runtime.card_context()))


def _audit_detail(detail: dict[str, Any], record_id: str | None, delivery_id: int | None) -> str:
    parts = []
    if delivery_id:
        parts.append(f"delivery {delivery_id}")
    if record_id:
        parts.append(record_id)
    for k in ("status", "code", "problem", "error", "text"):
        if detail.get(k):
            parts.append(f"{k}={detail[k]}")
    return ", ".join(str(p) for p in parts)[:300]


MAX_DELIVERY_ID = 2**63 - 1


@command("replay", "replay <delivery-id> | replay failed", "Send failed deliveries again", admin=True,
         scopes=CHANNELS)
async def _replay(cmds: Commands, call: CommandCall) -> Reply:
    usage = "replay <delivery-id> | replay failed"
    if len(call.args) != 1:
        raise CommandError("Say which delivery to replay, or 'failed'.", usage=usage)
    arg = call.args[0].lower()
    if arg == "failed":
        ids = await cmds.outbox.replay(channel_id=call.channel_id)
    elif arg.isascii() and arg.isdigit():
        if int(arg) > MAX_DELIVERY_ID:  # SQLite integers end here; no such delivery can exist
            raise CommandError(f"There is no delivery {capped(arg, 24)} in this channel.", usage=usage)
        found = await cmds.outbox.get(int(arg))
        if found is None or found.channel_id != call.channel_id:
            raise CommandError(f"There is no delivery {arg} in this channel.", usage=usage)
        ids = await cmds.outbox.replay(delivery_id=int(arg))
        if not ids:
            raise CommandError(f"Delivery {arg} is {found.status.value}, not failed.", usage=usage)
    else:
        raise CommandError(f"'{call.args[0][:40]}' is not a delivery id.", usage=usage)
    await cmds.audit.record("delivery", "replay", "ok", channel_id=call.channel_id, actor=call.actor.label,
                            deliveries=ids[:100], count=len(ids))
    cmds.runtime.wake_delivery()
    return Reply(f"Re-queued {len(ids)} deliver{'y' if len(ids) == 1 else 'ies'}." if ids
                 else "Nothing failed in this channel.")


@command("pause", "pause", "Hold deliveries to this channel (nothing is lost)", admin=True, scopes=CHANNELS)
async def _pause(cmds: Commands, call: CommandCall) -> Reply:
    return await _set_paused(cmds, call, True)


@command("resume", "resume", "Deliver again, including everything held while paused", admin=True,
         scopes=CHANNELS)
async def _resume(cmds: Commands, call: CommandCall) -> Reply:
    return await _set_paused(cmds, call, False)


async def _set_paused(cmds: Commands, call: CommandCall, paused: bool) -> Reply:
    _no_args(call, "pause" if paused else "resume")
    async with cmds.store.unit() as u:
        await u.channels.set_paused(call.channel_id, paused)
        await u.audit.add("lifecycle", "paused" if paused else "resumed", "ok",
                             channel_id=call.channel_id, actor=call.actor.label)
    if paused:
        return Reply("Paused. I keep collecting; type 'resume' to receive everything held.")
    cmds.runtime.wake_delivery()
    held = (await cmds.outbox.counts(call.channel_id)).get("pending", 0)
    return Reply(f"Resumed. {held} held notification{'s' if held != 1 else ''} on the way.")


@command("quiet", "quiet <HH:MM-HH:MM> | quiet off", "Hold posts here during these hours (service time zone)",
         admin=True, scopes=CHANNELS)
async def _quiet(cmds: Commands, call: CommandCall) -> Reply:
    usage = "quiet <HH:MM-HH:MM> | quiet off"
    if len(call.args) != 1:
        raise CommandError("Give the quiet hours as one span, like 19:00-07:00, or 'off'.", usage=usage)
    span = None if call.args[0].lower() == "off" else call.args[0]
    if span is not None:
        try:
            parse_span("quiet", span)
        except ConfigError as exc:
            raise CommandError(f"'{span[:20]}': {exc.problem}.", usage=usage) from None
    async with cmds.store.unit() as u:
        await u.channels.set_quiet_hours(call.channel_id, span)
        await u.audit.add("lifecycle", "quiet hours", "ok", channel_id=call.channel_id,
                             actor=call.actor.label, span=span or "off")
    cmds.runtime.wake_delivery()
    if span is None:
        return Reply("Quiet hours off for this channel: notifications are posted as they come.")
    return Reply(f"Quiet hours {span}: nothing is posted here then; what arrives is delivered when they end.")


def _no_args(call: CommandCall, name: str) -> None:
    if call.args:
        raise CommandError(f"'{name}' takes no arguments.", usage=REGISTRY[name].usage)


# Commands about people live in their own module; importing it here puts them in the registry (help,
# the manifest's command menu) wherever the registry is used.
from bot import people_commands  # noqa: E402,F401
