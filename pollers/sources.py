"""Source declarations: what to read from IFS for each document kind (pollers.mapping turns rows into records).

A source is data, not code. Defaults follow what is known about IFS Cloud; every name that is not
confirmed there can be overridden per tenant in the TOML file under [sources.<kind>].
"""

from __future__ import annotations

import dataclasses
import functools
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import compress
from typing import Any

from core.domain import (
    DEFAULT_DONE_STATES,
    RecordKind,
    encode_key,
)
from core.errors import BadRecordError, ConfigError
from core.links import odata_literal
from pollers.columns import Columns
from pollers.columns import columns_of as _columns


@dataclass(frozen=True)
class ApprovalSpec:
    """Approval chain lines, read per record (IFS allows $expand only on one-to-one links)."""

    navigation: str  # e.g. PurchaseOrderApprovalArray
    sequence: str
    approver: str
    status: str | None = None  # field holding the line state; None: derived from decided_at
    role: str | None = None
    decided_at: str | None = None
    done_states: tuple[str, ...] = DEFAULT_DONE_STATES  # line statuses that end a line


@dataclass(frozen=True)
class SourceSpec:
    kind: RecordKind
    projection: str
    entity_set: str
    keys: tuple[tuple[str, str], ...]  # (field, "str" | "int"), in key-predicate order
    number: tuple[str, ...]  # fields joined with " " to show the document number
    company_field: str = "Company"
    state_field: str = "Objstate"
    enum_type: str = ""  # fully qualified, e.g. IfsApp.PurchaseOrderHandling.PurchaseOrderState
    pending_states: tuple[str, ...] = ()
    pending_equals: tuple[tuple[str, str], ...] = ()  # extra field = value conditions of "pending"
    server_state_filter: bool = True  # False for tenants that answer 400 to any Objstate filter
    party_id: str | None = None
    party_name: str | None = None
    amount: str | None = None
    net_amount: str | None = None
    currency: str | None = None
    doc_date: str | None = None
    due_date: str | None = None
    cost_center: str | None = None
    site: str | None = None
    step_field: str | None = None  # list-row field that tells the approval step, if any
    details: tuple[tuple[str, str], ...] = ()  # (label, field) shown on the card
    extra_select: tuple[str, ...] = ()
    approvals: ApprovalSpec | None = None
    link_page: str = ""  # IFS web client page, e.g. PurchaseOrder/Form
    link_keys: tuple[str, ...] = ()  # key fields in the link's $filter (default: all keys)
    list_page: str = ""  # IFS page listing this kind (digest links)
    enabled: bool = True
    # The row version column (IFS: Objversion, a timestamp on some tables, a counter on others). When the
    # projection declares it and the tenant honours `odata.metadata=none`, listings ask for that and carry
    # the version instead of each row's `@odata.etag` (about half a lean row's bytes). False: always etags.
    version_field: str | None = "Objversion"
    # Found at run time, never configured (pollers.tenant): version_field exists and the tenant honours
    # `odata.metadata=none`, and its etags carry that version, so listings may use it as the change marker.
    row_versions: bool = False

    @property
    def versions(self) -> str | None:
        """The version column the listings compare by, when the tenant was found to allow it (else None: etags)."""
        return self.version_field if self.row_versions else None

    def company_condition(self, company: str) -> str:
        return f"{self.company_field} eq {odata_literal(company)}"

    def filter_for(self, company: str) -> str:
        return " and ".join([self.company_condition(company), *self.pending_conditions()])

    def filter_for_companies(self, companies: Sequence[str]) -> str:
        """One listing for several companies: `(Company eq '10' or Company eq '20') and <pending>` (OData 4.0
        has no `in` everywhere)."""
        if len(companies) == 1:
            return self.filter_for(companies[0])
        either = " or ".join(map(self.company_condition, companies))
        return " and ".join([f"({either})", *self.pending_conditions()])

    @property
    def lean_select(self) -> tuple[str, ...]:
        """What the diff needs of a listed row (the etag comes with every row): keys, company, state, step
        and the fields that define pending. New and changed records are then read whole, by key."""
        names = [k for k, _ in self.keys] + [self.company_field, self.state_field]
        names += ([self.step_field] if self.step_field else []) + [f for f, _ in self.pending_equals]
        return tuple(dict.fromkeys(names + ([self.versions] if self.versions else [])))

    def pending_conditions(self) -> list[str]:
        """The state conditions of the listing's $filter (joined with `and`)."""
        parts = []
        if self.server_state_filter and self.pending_states:
            states = [f"{self.state_field} eq {self.enum_type}'{s}'" if self.enum_type
                      else f"{self.state_field} eq {odata_literal(s)}" for s in self.pending_states]
            parts.append(states[0] if len(states) == 1 else "(" + " or ".join(states) + ")")
        for name, value in self.pending_equals:
            parts.append(f"{name} eq {odata_literal(value)}")
        return parts

    def is_pending(self, row: Mapping[str, Any]) -> bool:
        """Client-side twin of filter_for's state conditions."""
        if self.pending_states and row.get(self.state_field) not in self.pending_states:
            return False
        return not self.pending_equals or all(row.get(name) == value for name, value in self.pending_equals)

    @property
    def orderby(self) -> tuple[str, ...]:
        return tuple(k for k, _ in self.keys)

    @property
    def select(self) -> tuple[str, ...]:
        names = [k for k, _ in self.keys] + [self.company_field, self.state_field, *self.number]
        names += [f for f in (self.party_id, self.party_name, self.amount, self.net_amount, self.currency,
                              self.doc_date, self.due_date, self.cost_center, self.site, self.step_field) if f]
        names += [f for _, f in self.details] + [f for f, _ in self.pending_equals] + list(self.extra_select)
        return tuple(dict.fromkeys(names))

    @property
    def full_select(self) -> tuple[str, ...]:
        """`select`, with the version column where the listings compare by it (rows read whole carry it too)."""
        return tuple(dict.fromkeys((*self.select, self.versions))) if self.versions else self.select

    def pending_rows(self, page: list[dict[str, Any]], cols: Columns | None = None) -> list[dict[str, Any]]:
        """The rows of a page that is_pending keeps, in order, tested column by column (the page itself
        when it keeps them all, as it does when IFS applied the same filter)."""
        rows, cols = page, _columns(page, cols)
        tests = [(self.state_field, self.pending_states.__contains__)] if self.pending_states else []
        tests += [(name, functools.partial(operator.eq, value)) for name, value in self.pending_equals]
        for name, test in tests:
            keep = list(map(test, cols[name]))
            if not all(keep):
                rows = list(compress(rows, keep))
                cols = Columns(rows)
        return rows

    def key_values(self, row: Mapping[str, Any]) -> dict[str, str | int]:
        out: dict[str, str | int] = {}
        for name, typ in self.keys:
            value = row.get(name)
            if value is None or value == "":
                raise BadRecordError(None, name, "missing key field")
            if typ == "int":
                if isinstance(value, bool) or not isinstance(value, int | str):
                    raise BadRecordError(None, name, "key is not an integer")
                try:
                    value = int(value)
                except ValueError:
                    raise BadRecordError(None, name, "key is not an integer") from None
            elif not isinstance(value, str | int) or isinstance(value, bool):
                raise BadRecordError(None, name, "key is not a string")
            out[name] = value if typ == "int" else str(value)
        return out

    def raw_key(self, row: Mapping[str, Any]) -> str:
        """A key for naming a row whose key fields are broken (as received, unvalidated)."""
        return encode_key({k: row.get(k) for k, _ in self.keys})

    def key_of(self, row: Mapping[str, Any]) -> str:
        return encode_key(self.key_values(row))


# --------------------------------------------------------------------------- defaults (see the IFS reference)

DEFAULT_SOURCES: dict[RecordKind, SourceSpec] = {
    RecordKind.ORDER: SourceSpec(
        kind=RecordKind.ORDER, projection="PurchaseOrderHandling", entity_set="PurchaseOrderSet",
        keys=(("OrderNo", "str"),), number=("OrderNo",),
        enum_type="IfsApp.PurchaseOrderHandling.PurchaseOrderState", pending_states=("Planned",),
        party_id="VendorNo", party_name="VendorName", amount="GrossAmtCurr", currency="CurrencyCode",
        doc_date="OrderDate", cost_center="CostCenter", site="Contract",
        details=(("Buyer", "BuyerCode"), ("Coordinator", "AuthorizeCode")),
        approvals=ApprovalSpec(navigation="PurchaseOrderApprovalArray", sequence="SequenceNo",
                               approver="AuthorizeId", role="Route", decided_at="DateApproved"),
        link_page="PurchaseOrder/Form", list_page="PurchaseOrders/List"),
    RecordKind.INVOICE: SourceSpec(
        kind=RecordKind.INVOICE, projection="ManualSupplierInvoiceHandling", entity_set="ManualSupplierInvoiceSet",
        keys=(("Company", "str"), ("InvoiceId", "int")), number=("InvoiceId",),
        enum_type="IfsApp.ManualSupplierInvoiceHandling.ManSuppInvoiceState", pending_states=("Preliminary",),
        party_id="Identity", party_name="IdentityName", amount="GrossCurrAmount", net_amount="NetCurrAmount",
        currency="Currency", doc_date="InvoiceDate", due_date="DueDate", cost_center="CostCenter",
        details=(("Supplier invoice no", "InvoiceNo"), ("Recipient", "InvoiceRecipient"), ("PO ref", "PoRefNumber")),
        approvals=ApprovalSpec(navigation="AuthorizerArray", sequence="LineNo", approver="Authorizer",
                               status="Objstate", role="Role", decided_at="AuthorizedDate"),
        link_page="ManualSupplierInvoice/Form", link_keys=("InvoiceId", "Company"),
        list_page="ManualSupplierInvoices/List"),
    RecordKind.VOUCHER: SourceSpec(
        kind=RecordKind.VOUCHER, projection="ApproveVouchersHandling", entity_set="VoucherApprovalSet",
        keys=(("Company", "str"), ("AccountingYear", "int"), ("VoucherType", "str"), ("VoucherNo", "int")),
        number=("VoucherType", "VoucherNo"),
        enum_type="IfsApp.ApproveVouchersHandling.VoucherState",
        pending_states=("AwaitingApproval", "PartiallyApproved"),
        party_id="Userid", amount="AmountInAccCurr", currency="AccCurrencyCode", doc_date="VoucherDate",
        cost_center="CostCenter", step_field="Objstate",
        details=(("Voucher type", "VoucherType"), ("Accounting year", "AccountingYear"),
                 ("Entered by", "Userid"), ("User group", "UserGroup"), ("Text", "VoucherText2"),
                 ("First approval by", "ApprovedByUserid")),
        link_page="ApproveVouchers/List", list_page="ApproveVouchers/List"),
}


REQUIRED_FIELDS = frozenset({"projection", "entity_set", "keys", "company_field", "state_field"})
# what `false` sets an optional field to: its empty form ("" for names that default to "", () for lists)
_EMPTY = {f.name: () if f.type.startswith("tuple") else "" if f.default == "" else None
          for f in dataclasses.fields(SourceSpec)}


def build_sources(overrides: Mapping[str, Mapping[str, Any]]) -> dict[RecordKind, SourceSpec]:
    """Defaults with [sources.<kind>] overrides applied; unknown kinds or fields are config errors."""
    out = dict(DEFAULT_SOURCES)
    names = {f.name for f in dataclasses.fields(SourceSpec)} - {"kind", "row_versions"}
    for kind_name, values in overrides.items():
        try:
            kind = RecordKind.parse(kind_name)
        except ValueError as exc:
            raise ConfigError(f"sources.{kind_name}", str(exc)) from None
        if not isinstance(values, Mapping):
            raise ConfigError(f"sources.{kind_name}", "expected a table")
        changes: dict[str, Any] = {}
        for name, value in values.items():
            key = f"sources.{kind_name}.{name}"
            if name not in names:
                raise ConfigError(key, f"unknown source setting (known: {', '.join(sorted(names))})")
            changes[name] = _convert(key, name, getattr(out[kind], name), value)
        out[kind] = dataclasses.replace(out[kind], **changes)
        if not out[kind].keys:
            raise ConfigError(f"sources.{kind_name}.keys", "at least one key field is required")
        if not out[kind].number:
            out[kind] = dataclasses.replace(out[kind], number=tuple(k for k, _ in out[kind].keys))
    return out


def _convert(key: str, name: str, current: Any, value: Any) -> Any:
    if value is False and not isinstance(current, bool):  # `false` drops an optional field
        if name in REQUIRED_FIELDS:
            raise ConfigError(key, "required: it cannot be switched off")
        return _EMPTY[name]
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise ConfigError(key, "expected true or false")
        return value
    if name == "approvals":
        if value == {}:
            return None
        if not isinstance(value, Mapping):
            raise ConfigError(key, "expected a table or false")
        base = dataclasses.asdict(current) if isinstance(current, ApprovalSpec) else {}
        merged = {**base, **{k: tuple(v) if isinstance(v, list) else (None if v is False else v)
                             for k, v in value.items()}}
        try:
            spec = ApprovalSpec(**merged)
        except TypeError as exc:
            raise ConfigError(key, str(exc).replace("ApprovalSpec.__init__() ", "")) from None
        if not (spec.navigation and spec.sequence and spec.approver):
            raise ConfigError(key, "navigation, sequence and approver are required")
        return spec
    if isinstance(current, tuple):
        if not isinstance(value, list):
            raise ConfigError(key, "expected a list")
        converted = tuple(tuple(v) if isinstance(v, list) else v for v in value)
        if name in ("keys", "details", "pending_equals") and not all(
                isinstance(v, tuple) and len(v) == 2 and all(isinstance(x, str) for x in v) for v in converted):
            raise ConfigError(key, "expected a list of two-string lists, e.g. [[\"Company\", \"str\"]]")
        if name == "keys" and any(t not in ("str", "int") for _, t in converted):
            raise ConfigError(key, 'each key is [field, "str"] or [field, "int"]')
        if name in ("number", "pending_states", "extra_select", "link_keys") and not all(
                isinstance(v, str) for v in converted):
            raise ConfigError(key, "expected a list of strings")
        return converted
    if not isinstance(value, str):
        raise ConfigError(key, "expected a string")
    return value
