"""Domain types: finance records awaiting approval, change events, channel bindings."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from enum import StrEnum
from typing import Any


class RecordKind(StrEnum):
    INVOICE = "invoice"  # supplier invoice awaiting authorization
    ORDER = "order"  # purchase order awaiting authorization
    VOUCHER = "voucher"  # GL voucher awaiting approval

    @property
    def plural(self) -> str:
        return f"{self.value}s"

    @classmethod
    def parse(cls, text: str) -> RecordKind:
        """Accept 'invoice', 'invoices', 'orders', 'po', 'vouchers' ... (case-insensitive)."""
        word = text.strip().lower()
        aliases = {"po": cls.ORDER, "pos": cls.ORDER, "purchaseorders": cls.ORDER, "gl": cls.VOUCHER}
        if word in aliases:
            return aliases[word]
        for kind in cls:
            if word in (kind.value, kind.plural):
                return kind
        raise ValueError(f"unknown document kind {text!r} (use invoices, orders or vouchers)")


class EventType(StrEnum):
    NEW = "new"  # entered the pending set
    CHANGED = "changed"  # still pending, but its row (etag), state or approval step changed
    RESOLVED = "resolved"  # left the pending set (approved, posted, released, cancelled ...)


# Approval-line statuses that end a line, unless a source declares its own (`approvals.done_states`):
# invoice authorizer lines end Authorized, or Acknowledged when a superior was added to authorize; PO
# approval rows have no status and count as Approved once dated.
DEFAULT_DONE_STATES: tuple[str, ...] = ("Authorized", "Acknowledged", "Approved")


@dataclass(frozen=True, slots=True)
class ApprovalStep:
    """One line of an approval chain (PO approval row, invoice authorizer line, voucher approver)."""

    sequence: int
    approver: str | None
    status: str  # e.g. Unacknowledged / Acknowledged / Authorized / Pending / Approved
    role: str | None = None
    decided_at: str | None = None  # ISO date/time as IFS returned it
    done: bool = False  # the line needs nothing more: its status is one of the source's done states

    def to_dict(self) -> dict[str, Any]:
        return {"sequence": self.sequence, "approver": self.approver, "status": self.status, "role": self.role,
                "decided_at": self.decided_at, "done": self.done}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ApprovalStep:
        if "done" in d:
            return cls(**d)
        return cls(**d, done=d.get("status") in DEFAULT_DONE_STATES)  # stored before lines carried it


# ------------------------------------------------------------------ the record key codec
# A record's key within its kind: its key fields as `Name=value`, in the source's key order, joined by '^'
# ("OrderNo=P1001", "Company=10^InvoiceId=105"), as IFS writes a `keyref` (whose values never hold '^').

KEY_SEPARATOR = "^"


def encode_key(values: Mapping[str, object]) -> str:
    """{"Company": "10", "InvoiceId": 105} -> "Company=10^InvoiceId=105"."""
    return KEY_SEPARATOR.join([f"{name}={value}" for name, value in values.items()])


def decode_key(key: str) -> dict[str, str]:
    """"Company=10^InvoiceId=105" -> {"Company": "10", "InvoiceId": "105"} (values as text)."""
    return dict(part.split("=", 1) for part in key.split(KEY_SEPARATOR))


def key_template(names: Sequence[str]) -> str:
    """A str.format template that encodes key values given in `names` order: a page's keys are made with
    map(template.format, *columns), with no Python loop per row."""
    return KEY_SEPARATOR.join(f"{n.replace('{', '{{').replace('}', '}}')}={{}}" for n in names)


def compact(stored: Mapping[str, Any]) -> tuple[Any, ...]:
    """A record in to_dict's keyed form, in the stored form (FinanceRecord.COMPACT)."""
    details = stored.get("details")
    flat = [v for pair in details for v in pair] if details else None
    return tuple(flat if name == "details" else stored.get(name) for name in FinanceRecord.COMPACT)


def record_id(kind: RecordKind, company: str, key: str) -> str:
    """Globally unique id of a record: kind + company + key."""
    return f"{kind.value}:{company}:{key}"


@dataclass(frozen=True, slots=True)
class FinanceRecord:
    """One IFS document awaiting (or just past) approval, in our own words."""

    kind: RecordKind
    company: str
    key: str  # canonical identity within kind, e.g. "OrderNo=P1001" or "Company=10^InvoiceId=105"
    number: str  # what people call it: order no., invoice id, voucher type+no.
    state: str  # IFS Objstate value, e.g. Planned, Preliminary, AwaitingApproval
    etag: str = ""
    party_id: str | None = None  # vendor / supplier identity, or the voucher's entering user
    party_name: str | None = None
    amount: Decimal | None = None  # gross amount in document currency
    net_amount: Decimal | None = None
    currency: str | None = None
    doc_date: date | None = None  # order / invoice / voucher date
    due_date: date | None = None
    cost_center: str | None = None
    site: str | None = None
    approval_step: str | None = None  # short description of where the approval stands
    approvers: tuple[ApprovalStep, ...] = ()
    details: tuple[tuple[str, str], ...] = ()  # kind-specific labelled facts (buyer, voucher type ...)
    deep_link: str | None = None  # "Open in IFS"

    @property
    def record_id(self) -> str:
        return record_id(self.kind, self.company, self.key)

    def detail(self, label: str) -> str | None:
        for name, value in self.details:
            if name == label:
                return value
        return None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict, the stored form; fields left at their empty default are omitted (from_dict
        restores them). pollers.mapping.RecordMapper.stored builds the same form straight from an IFS row."""
        # written out by hand: dataclasses.asdict deep-copies and dominated the cost of a first poll
        out: dict[str, Any] = {"kind": self.kind.value, "company": self.company, "key": self.key,
                               "number": self.number, "state": self.state, "etag": self.etag}
        for name in ("party_id", "party_name", "currency", "cost_center", "site", "approval_step", "deep_link"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        if self.amount is not None:
            out["amount"] = str(self.amount)
        if self.net_amount is not None:
            out["net_amount"] = str(self.net_amount)
        if self.doc_date is not None:
            out["doc_date"] = self.doc_date.isoformat()
        if self.due_date is not None:
            out["due_date"] = self.due_date.isoformat()
        if self.approvers:
            out["approvers"] = [a.to_dict() for a in self.approvers]
        if self.details:
            out["details"] = [list(pair) for pair in self.details]
        return out

    # The stored form: these fields in this order as a JSON array, None where absent, details as one flat
    # [label, value, label, value ...] list, approvers as to_dict's list of steps. About 30 % less text than
    # a keyed object, and a page is built column by column without a dict per record (RecordMapper). Every
    # record the service writes is in this form; to_dict's keyed form is for JSON output, and from_dict
    # reads both (records stored before the forms were one).
    COMPACT = ("kind", "company", "key", "number", "state", "etag", "party_id", "party_name", "amount",
               "net_amount", "currency", "doc_date", "due_date", "cost_center", "site", "approval_step", "details",
               "approvers")

    def to_compact(self) -> tuple[Any, ...]:
        """The stored form (COMPACT)."""
        return compact(self.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any] | list[Any] | tuple[Any, ...]) -> FinanceRecord:
        """From either stored form: to_dict's, or the compact array (COMPACT)."""
        if isinstance(data, list | tuple):
            values = {k: v for k, v in zip(cls.COMPACT, data, strict=False) if v is not None}
            if "details" in values:
                flat = iter(values["details"])
                values["details"] = list(zip(flat, flat, strict=True))
        else:
            values = dict(data)
        values["kind"] = RecordKind(values["kind"])
        for name in ("amount", "net_amount"):
            if values.get(name) is not None:
                values[name] = Decimal(values[name])
        for name in ("doc_date", "due_date"):
            if values.get(name) is not None:
                values[name] = date.fromisoformat(values[name])
        values["approvers"] = tuple(ApprovalStep.from_dict(step) for step in values.get("approvers", ()))
        values["details"] = tuple((str(a), str(b)) for a, b in values.get("details", ()))
        return cls(**values)


@dataclass(frozen=True, slots=True)
class Binding:
    """A company code (optionally narrowed) linked to one Teams channel."""

    channel_id: str  # bare Teams channel / conversation id (never ';messageid=')
    company: str
    kinds: frozenset[RecordKind] = frozenset(RecordKind)
    cost_centers: frozenset[str] = frozenset()  # empty: all cost centres
    min_amount: Decimal | None = None
    created_by: str | None = None

    def matches(self, record: FinanceRecord) -> bool:
        if record.company != self.company or record.kind not in self.kinds:
            return False
        if self.cost_centers and record.cost_center not in self.cost_centers:
            return False
        if self.min_amount is not None and (record.amount is None or abs(record.amount) < self.min_amount):
            return False
        return True

    def describe(self) -> str:
        parts = [f"company {self.company}", "kinds " + ",".join(sorted(k.plural for k in self.kinds))]
        if self.cost_centers:
            parts.append("costcenter " + ",".join(sorted(self.cost_centers)))
        if self.min_amount is not None:
            parts.append(f"min {self.min_amount}")
        return " ".join(parts)


@dataclass(frozen=True, slots=True)
class ChannelRef:
    """Where and how to reach one Teams conversation; `reference` is the adapter's own serialized form."""

    channel_id: str
    tenant_id: str | None
    team_id: str | None
    service_url: str
    reference: dict[str, Any] = field(default_factory=dict)
    name: str | None = None
    active: bool = True
    inactive_reason: str | None = None
    paused: bool = False
    quiet_hours: str | None = None  # "HH:MM-HH:MM" in the service time zone; overrides delivery.quiet_hours


@dataclass(frozen=True, slots=True)
class PostedCard:
    """Where a card for one record lives in one channel, so later events update it in place."""

    conversation_id: str  # '<channel>;messageid=<root>'
    activity_id: str
