"""Pure Adaptive Card builders for Teams: record, digest and reply cards, inert text, size guard."""

from cards.digest import digest_card
from cards.record import RecordStatus, Tone, record_card, record_status
from cards.replies import (
    AuditView,
    SourceStatus,
    StatusView,
    audit_card,
    help_card,
    links_card,
    status_card,
    text_card,
)
from cards.size import CARD_BUDGET_BYTES, MAX_MESSAGE_BYTES, fit, message_size
from cards.text import CardContext, day, inert, money, relative_due
from core.errors import CardTooLarge

__all__ = [
    "CARD_BUDGET_BYTES",
    "MAX_MESSAGE_BYTES",
    "AuditView",
    "CardContext",
    "CardTooLarge",
    "RecordStatus",
    "SourceStatus",
    "StatusView",
    "Tone",
    "audit_card",
    "day",
    "digest_card",
    "fit",
    "help_card",
    "inert",
    "links_card",
    "message_size",
    "money",
    "record_card",
    "record_status",
    "relative_due",
    "status_card",
    "text_card",
]
