"""Reply cards for bot commands: help, status, channel links, audit trail and plain text."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cards._blocks import Element, adaptive_card, container, fact_set, text_block
from cards.record import KINDS
from cards.size import fit
from cards.text import DASH, CardContext, ago, counted, inert, number
from core.domain import Binding, RecordKind


@dataclass(frozen=True, slots=True)
class SourceStatus:
    """One polled source (document kind for a company group) as the status command shows it."""

    name: str  # e.g. "invoices · company 10"
    last_poll_at: float | None = None  # unix time
    next_poll_at: float | None = None
    last_outcome: str | None = None  # "ok", "failed: timeout" ...
    pending: int = 0  # records currently awaiting approval
    sent: int = 0  # cards delivered (period chosen by the bot, e.g. today)
    quarantined: int = 0  # rows that could not be read at the last poll (kept aside, audited)
    failing: bool = False  # the last poll failed, or the source cannot be polled as configured
    fix: str | None = None  # one line: the setting to change, or what IFS said
    last_ok_at: float | None = None  # the last poll that succeeded
    left_out: tuple[str, ...] = ()  # configured names the tenant lacks, left out of the poll (one line each)


@dataclass(frozen=True, slots=True)
class StatusView:
    """Everything the status command shows, filled in by the bot; the card only formats it."""

    generated_at: float  # unix time the numbers were read; relative times count from here
    ifs_reachable: bool | None = None  # None: not checked yet
    token_state: str = "unknown"  # e.g. "valid", "expired", "refresh failed"
    token_expires_at: float | None = None
    sources: tuple[SourceStatus, ...] = ()
    backlog: int = 0  # deliveries waiting in the outbox
    failures: int = 0  # deliveries that failed for good
    last_error: str | None = None  # short, already free of secrets and bodies
    last_error_at: float | None = None
    ifs_load: str | None = None  # what polling asked of IFS in the last hour, one line
    inactive_channels: tuple[str, ...] = ()  # names (or ids) of channels the bot can no longer post to
    paused_channels: tuple[str, ...] = ()

    @property
    def pending(self) -> int:
        return sum(source.pending for source in self.sources)

    @property
    def reachable(self) -> str:
        return {True: "reachable", False: "unreachable", None: "not checked yet"}[self.ifs_reachable]

    @property
    def failing(self) -> int:
        return sum(source.failing for source in self.sources)

    @property
    def headline(self) -> str:
        """The worst news first: failing sources, then IFS reachability."""
        if self.failing:
            n = len(self.sources)
            return f"{self.failing} of {n} source{'s' if n != 1 else ''} failing"
        return f"IFS {self.reachable}"

    @property
    def sent(self) -> int:
        return sum(source.sent for source in self.sources)

    def as_text(self) -> str:
        """The same story as plain lines (inert), for a text reply or a log-free summary."""
        reachability = f". IFS {self.reachable}" if self.failing else ""  # (else the headline says it)
        lines = [
            f"{self.headline}{reachability}; token {inert(self.token_state, 60) or 'unknown'}.",
            f"Pending {self.pending}, sent {self.sent}, backlog {self.backlog}, failed deliveries {self.failures}.",
        ]
        if self.ifs_load:
            lines.append(f"Load on IFS: {inert(self.ifs_load, 200)}.")
        for source in self.sources:
            last = (
                ago(self.generated_at - source.last_poll_at) if source.last_poll_at is not None else "never"
            )
            nxt = ago(self.generated_at - source.next_poll_at) if source.next_poll_at is not None else DASH
            outcome = inert(source.last_outcome, 80) or DASH
            lines.append(
                f"{inert(source.name, 80)}: last poll {last} ({outcome}), next {nxt}, "
                f"pending {source.pending}, sent {source.sent}"
                + (f", {source.quarantined} unreadable rows set aside." if source.quarantined else ".")
            )
            if source.failing:
                good = ago(self.generated_at - source.last_ok_at) if source.last_ok_at is not None else "never"
                lines.append(f"Fix: {inert(source.fix, 300) or DASH} (last good poll {good})")
            lines += [f"Left out: {inert(line, 300)}" for line in source.left_out]
        if self.last_error:
            lines.append(f"Last error: {inert(self.last_error, 200)}")
        for label, names in (("Inactive", self.inactive_channels), ("Paused", self.paused_channels)):
            if names:
                lines.append(f"{label} channels: " + ", ".join(inert(name, 60) for name in names[:20]))
        return "\n\n".join(lines)


@dataclass(frozen=True, slots=True)
class AuditView:
    """One audit row as the audit command shows it."""

    at: float  # unix time
    kind: str  # poll / delivery / command ...
    outcome: str  # ok / failed / skipped ...
    summary: str
    detail: str | None = None


def _title(text: str) -> Element:
    return text_block(text, size="Medium", weight="Bolder")


def text_card(title: str, lines: Sequence[str]) -> dict[str, Any]:
    """A titled card of plain lines; every line is shown literally (no markdown)."""

    def build(limit: int) -> dict[str, Any]:
        shown = [inert(line, limit) for line in lines]
        shown = [line for line in shown if line]
        heading = inert(title, 120) or "Notice"
        body = [_title(heading), *(text_block(line, spacing="Small") for line in shown)]
        return adaptive_card(body, fallback=" · ".join([heading, *shown[:5]]))

    return fit(build, (2000, 500, 200, 80, 20))


def command_name(usage: str) -> str:
    """What a command is called: its usage's words before the first argument or alternative ("link me")."""
    words = []
    for word in usage.split():
        if word[:1] in ("<", "[", "|"):
            break
        words.append(word)
    return " ".join(words) or usage

def help_card(commands: Sequence[tuple[str, str]], *, title: str = "Commands") -> dict[str, Any]:
    """Usage and description of each command, as the bot's registry lists them."""

    heading = inert(title, 80) or "Commands"

    def build(shown: int) -> dict[str, Any]:
        body: list[Element] = [_title(heading)]
        for usage, description in commands[:shown]:
            body.append(
                container(
                    [
                        text_block(inert(usage, 120), monospace=True, weight="Bolder"),
                        text_block(inert(description, 300), subtle=True, spacing="None"),
                    ],
                    spacing="Small",
                )
            )
        if len(commands) > shown:
            body.append(text_block(f"and {counted(len(commands) - shown, 'more command')}", subtle=True))
        names = ", ".join(inert(command_name(usage), 30) for usage, _ in commands[:20])
        return adaptive_card(body, fallback=f"{heading}: {names}" if names else heading)

    return fit(build, range(len(commands), -1, -1))


def _context(ctx: CardContext | None, at: float) -> CardContext:
    """Reply cards need no `today`; without a context they show UTC times in en-US."""
    return ctx or CardContext(today=datetime.fromtimestamp(at, UTC).date())


def _when(ctx: CardContext, at: float | None, now: float) -> str:
    if at is None:
        return DASH
    return f"{ctx.stamp(at)} ({ago(now - at)})"


def status_card(view: StatusView, ctx: CardContext | None = None) -> dict[str, Any]:
    """Health at a glance: IFS reachability and token, per source polls and counts, outbox, channels."""
    ctx = _context(ctx, view.generated_at)
    reachable = view.reachable
    token = inert(view.token_state, 60) or "unknown"
    if view.token_expires_at is not None:
        token += f", expires {_when(ctx, view.token_expires_at, view.generated_at)}"
    problems = [
        counted(view.failures, "failed delivery", "failed deliveries", ctx.locale) if view.failures else "",
        counted(len(view.inactive_channels), "inactive channel") if view.inactive_channels else "",
    ]
    badge = " · ".join([view.headline, *(problem for problem in problems if problem)])
    failing = bool(view.failing)
    tone = "good" if view.ifs_reachable and not any(problems) and not failing else "warning"
    if view.ifs_reachable is False or failing:
        tone = "attention"

    def build(shown: int) -> dict[str, Any]:
        facts = [
            ("IFS", reachable),
            ("Token", token),
            ("Pending", number(view.pending, ctx.locale)),
            ("Sent", number(view.sent, ctx.locale)),
            ("Backlog", number(view.backlog, ctx.locale)),
            ("Failed deliveries", number(view.failures, ctx.locale)),
        ]
        if view.ifs_load:
            facts.append(("Load on IFS", inert(view.ifs_load, 200)))
        if view.last_error:
            facts.append(("Last error", inert(view.last_error, 200)))
            facts.append(("Last error at", _when(ctx, view.last_error_at, view.generated_at)))
        body: list[Element | None] = [
            container([text_block(badge, weight="Bolder")], style=tone),
            _title("Status"),
            text_block(f"As of {ctx.stamp(view.generated_at)}", subtle=True, spacing="None"),
            fact_set(facts),
        ]
        for source in view.sources[:shown]:
            body.append(
                container(
                    [
                        text_block(inert(source.name, 80), weight="Bolder"),
                        fact_set(
                            [
                                ("Last poll", _when(ctx, source.last_poll_at, view.generated_at)),
                                ("Outcome", inert(source.last_outcome, 120) or DASH),
                                ("Next poll", _when(ctx, source.next_poll_at, view.generated_at)),
                                ("Pending", number(source.pending, ctx.locale)),
                                ("Sent", number(source.sent, ctx.locale)),
                                *([("Unreadable rows", number(source.quarantined, ctx.locale))]
                                  if source.quarantined else []),
                                *([("Fix", inert(source.fix, 300) or DASH),
                                   ("Last good poll", _when(ctx, source.last_ok_at, view.generated_at))]
                                  if source.failing else []),
                                *[("Left out", inert(line, 300)) for line in source.left_out[:10]],
                            ],
                            spacing="Small",
                        ),
                    ],
                    separator=True,
                )
            )
        if len(view.sources) > shown:
            body.append(text_block(f"and {counted(len(view.sources) - shown, 'more source')}", subtle=True))
        channels = [
            ("Inactive channels", view.inactive_channels),
            ("Paused channels", view.paused_channels),
        ]
        for label, names in channels:
            if names:
                listed = ", ".join(inert(name, 60) for name in names[:20])
                more = f" and {len(names) - 20} more" if len(names) > 20 else ""
                body.append(text_block(f"{label}: {listed}{more}", separator=True))
        return adaptive_card(
            [item for item in body if item],
            fallback=f"Status: {view.headline}{f', IFS {reachable}' if failing else ''}, backlog {view.backlog},"
                     f" failed deliveries {view.failures}",
        )

    return fit(build, range(len(view.sources), -1, -1))


def _kinds(kinds: frozenset[RecordKind]) -> str:
    if kinds >= frozenset(RecordKind):
        return "All"
    return ", ".join(KINDS[kind].plural for kind in RecordKind if kind in kinds) or DASH


def links_card(
    bindings: Sequence[Binding],
    *,
    locale: str | None = None,
    channel_names: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Which company (and which documents) each channel receives."""
    names = channel_names or {}

    def build(shown: int) -> dict[str, Any]:
        body: list[Element] = [_title("Linked channels")]
        if not bindings:
            body.append(text_block("No channel is linked to an IFS company yet.", subtle=True))
        for binding in bindings[:shown]:
            facts = [
                ("Channel", inert(names.get(binding.channel_id) or binding.channel_id, 80)),
                ("Company", inert(binding.company, 40)),
                ("Documents", _kinds(binding.kinds)),
                ("Cost centres", ", ".join(inert(c, 30) for c in sorted(binding.cost_centers)) or "All"),
            ]
            if binding.min_amount is not None:
                facts.append(("Minimum amount", number(binding.min_amount, locale, 2)))
            if binding.created_by:
                facts.append(("Linked by", inert(binding.created_by, 60)))
            body.append(container([fact_set(facts)], separator=True))
        if len(bindings) > shown:
            body.append(text_block(f"and {counted(len(bindings) - shown, 'more link')}", subtle=True))
        companies = sorted({inert(binding.company, 20) for binding in bindings})
        fallback = counted(len(bindings), "linked channel") + (
            f": companies {', '.join(companies[:20])}" if companies else ""
        )
        return adaptive_card(body, fallback=fallback)

    return fit(build, range(len(bindings), -1, -1))


def audit_card(
    entries: Sequence[AuditView], ctx: CardContext | None = None, *, title: str = "Audit trail"
) -> dict[str, Any]:
    """Audit rows in the order given (newest first, as the bot reads them), trimmed to fit."""
    ctx = _context(ctx, entries[0].at if entries else 0.0)
    heading = inert(title, 80) or "Audit trail"

    def build(shown: int) -> dict[str, Any]:
        body: list[Element] = [_title(heading)]
        if not entries:
            body.append(text_block("No audit entries.", subtle=True))
        for entry in entries[:shown]:
            outcome = inert(entry.outcome, 30)
            failed = outcome.lower() in ("failed", "error", "fatal")
            body.append(
                container(
                    [
                        text_block(
                            f"{ctx.stamp(entry.at)} · {inert(entry.kind, 30)} · {outcome}",
                            subtle=not failed,
                            color="attention" if failed else None,
                        ),
                        text_block(inert(entry.summary, 200), spacing="None"),
                        entry.detail and text_block(inert(entry.detail, 300), subtle=True, spacing="None"),
                    ],
                    spacing="Small",
                    separator=True,
                )
            )
        if len(entries) > shown:
            body.append(
                text_block(
                    f"and {counted(len(entries) - shown, 'older entry', 'older entries')} not shown",
                    subtle=True,
                )
            )
        return adaptive_card(body, fallback=f"{heading}: {counted(len(entries), 'entry', 'entries')}")

    return fit(build, range(len(entries), -1, -1))
