"""People: IFS users (approvers, authorizers) mapped to the Teams users who act for them."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from core.domain import ApprovalStep, FinanceRecord


class PersonStatus(StrEnum):
    ACTIVE = "active"
    PENDING = "pending"  # self-service mapping an admin has not confirmed yet: never used for mentions


def ifs_user_key(text: str) -> str:
    """IFS keeps user identities in upper case; `alain` typed in Teams is user ALAIN."""
    return text.strip().upper()


def valid_ifs_user(text: str) -> bool:
    """IFS identities: letters, digits and a few separators, at most 30 characters."""
    return 0 < len(text) <= 30 and all(c.isalnum() or c in "._-@" for c in text)


@dataclass(frozen=True, slots=True)
class Person:
    """One IFS user and the Teams user behind it."""

    ifs_user: str  # upper case
    name: str  # display name in Teams (ours, never IFS text)
    aad_object_id: str | None = None
    upn: str | None = None
    teams_id: str | None = None  # 29:... when the user wrote to the bot
    status: PersonStatus = PersonStatus.ACTIVE
    conversation_id: str | None = None  # personal chat with the bot
    personal: bool = True
    created_by: str | None = None

    @property
    def mention_id(self) -> str | None:
        """What Teams accepts as `mentioned.id` on a card: the Entra object id, the 29: id, or the UPN."""
        return self.aad_object_id or self.teams_id or self.upn

    @property
    def active(self) -> bool:
        return self.status is PersonStatus.ACTIVE


@dataclass(frozen=True, slots=True)
class Mention:
    """Who a card may mention, resolved from the mapping by the bot (cards stay pure)."""

    id: str
    name: str


@dataclass(frozen=True, slots=True)
class Claim:
    """Someone said "I'm on it" for a document."""

    record_id: str
    user_id: str  # Entra object id, or the 29: id when Teams gave none
    name: str
    at: float  # unix time


def next_step(record: FinanceRecord) -> ApprovalStep | None:
    """The first approval line that still needs someone, in sequence order."""
    for step in sorted(record.approvers, key=lambda s: s.sequence):
        if not step.done:
            return step
    return None


def next_approver(record: FinanceRecord) -> str | None:
    """The IFS user of the next open approval line (upper case), or None when unassigned or all done."""
    step = next_step(record)
    return ifs_user_key(step.approver) if step is not None and step.approver else None
