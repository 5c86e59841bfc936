"""What linking a company can promise: whether IFS knows it and, per kind, whether its cards will arrive.

A core type because the pollers answer it (`pollers.job.SourceJobs.check_company`) and the chat commands
show it (`bot.commands`), and neither package may import the other."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class CompanyCheck:
    ok: bool
    pending: dict[str, int] = field(default_factory=dict)  # per kind plural, when known
    error: str | None = None
    kinds: dict[str, str | None] = field(default_factory=dict)  # kind plural -> why it will not arrive, or None
