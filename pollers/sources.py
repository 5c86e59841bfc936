"""Source declarations: what to read from IFS for each document kind, and how a row becomes a record.

A source is data, not code. Defaults follow what is known about IFS Cloud; every name that is not
confirmed there can be overridden per tenant in the TOML file under [sources.<kind>].
"""

from __future__ import annotations

import dataclasses
import functools
import math
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal, InvalidOperation
from itertools import compress, repeat
from typing import Any

from core.domain import (
    DEFAULT_DONE_STATES,
    ApprovalStep,
    FinanceRecord,
    RecordKind,
    decode_key,
    encode_key,
    key_template,
)
from core.errors import BadRecordError, ConfigError
from core.links import odata_literal, page_link

MAX_AMOUNT = Decimal("1e15")  # beyond any real document: treat as a broken row


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

    def filter_for(self, company: str) -> str:
        return " and ".join([f"{self.company_field} eq {odata_literal(company)}", *self.pending_conditions()])

    def filter_for_companies(self, companies: Sequence[str]) -> str:
        """One listing for several companies: `(Company eq '10' or Company eq '20') and <pending>` (OData 4.0
        has no `in` everywhere)."""
        if len(companies) == 1:
            return self.filter_for(companies[0])
        either = " or ".join(f"{self.company_field} eq {odata_literal(c)}" for c in companies)
        return " and ".join([f"({either})", *self.pending_conditions()])

    @property
    def lean_select(self) -> tuple[str, ...]:
        """What the diff needs of a listed row (the etag comes with every row): keys, company, state, step
        and the fields that define pending. New and changed records are then read whole, by key."""
        names = [k for k, _ in self.keys] + [self.company_field, self.state_field]
        names += ([self.step_field] if self.step_field else []) + [f for f, _ in self.pending_equals]
        return tuple(dict.fromkeys(names))

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
    names = {f.name for f in dataclasses.fields(SourceSpec)} - {"kind"}
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


# --------------------------------------------------------------------------- row -> record

Identified = tuple[list[str], list[str], list[str], list[str]]  # keys, etags, states, approval steps of a page

@dataclass(frozen=True)
class RecordMapper:
    """Turns one OData row of a source into a FinanceRecord; raises BadRecordError naming the field."""

    spec: SourceSpec
    ifs_base_url: str
    _link_keys: tuple[str, ...] = field(init=False)
    _key_names: tuple[str, ...] = field(init=False)
    _key_types: tuple[tuple[str, type], ...] = field(init=False)
    _key_format: str = field(init=False)
    _kind: str = field(init=False)

    _texts: tuple[tuple[str, str], ...] = field(init=False)
    _amounts: tuple[tuple[str, str], ...] = field(init=False)
    _dates: tuple[tuple[str, str], ...] = field(init=False)

    def __post_init__(self) -> None:
        s = self.spec
        object.__setattr__(self, "_link_keys", s.link_keys or tuple(k for k, _ in s.keys))
        object.__setattr__(self, "_key_names", tuple(k for k, _ in s.keys))
        object.__setattr__(self, "_key_types", tuple((k, int if t == "int" else str) for k, t in s.keys))
        object.__setattr__(self, "_key_format", key_template([k for k, _ in s.keys]))
        object.__setattr__(self, "_kind", s.kind.value)
        pick = lambda *attrs: tuple((a, getattr(s, a)) for a in attrs if getattr(s, a))  # noqa: E731
        object.__setattr__(self, "_texts", pick("party_id", "party_name", "currency", "cost_center", "site"))
        object.__setattr__(self, "_amounts", pick("amount", "net_amount"))
        object.__setattr__(self, "_dates", pick("doc_date", "due_date"))

    def key_and_etag(self, row: Mapping[str, Any]) -> tuple[str, str, dict[str, str | int]]:
        get = row.get
        keys: dict[str, str | int] = {}
        for name, want in self._key_types:
            v = get(name)
            if type(v) is not want or v == "":
                keys = self.spec.key_values(row)  # the general path: converts, or names the bad field
                break
            keys[name] = v
        key = encode_key(keys)
        etag = get("@odata.etag") or get("Objversion")
        if not etag or type(etag) is not str:
            raise BadRecordError(key, "@odata.etag", "missing row version")
        if "\x00" in key or "\x00" in etag:  # SQLite's JSON functions would cut the text there
            bad = next((k for k, v in keys.items() if "\x00" in str(v)), "@odata.etag")
            raise BadRecordError(key.replace("\x00", "\\0"), bad, "NUL character")
        if "\x1f" in etag:  # the separator of a record's version as the poll compares it
            raise BadRecordError(key, "@odata.etag", "control character")
        return key, etag, keys

    def step_of(self, row: Mapping[str, Any]) -> str:
        f = self.spec.step_field
        return str(row.get(f) or "") if f else ""

    def map(self, row: Mapping[str, Any], key: str, etag: str,
            approvals: tuple[ApprovalStep, ...] = ()) -> FinanceRecord:
        return FinanceRecord.from_dict(self.stored(row, key, etag, approvals))

    def stored(self, row: Mapping[str, Any], key: str, etag: str, approvals: tuple[ApprovalStep, ...] = (),
               step: str | None = None) -> dict[str, Any]:
        """The record in its stored form (FinanceRecord.to_dict's), validated field by field.

        The bulk path of a poll: every new or changed row of a page goes straight from here into the
        events table, without a FinanceRecord in between (map() builds one where one is needed).
        """
        s = self.spec
        get = row.get
        company = get(s.company_field)
        if type(company) is not str or not company:  # the usual case first: a non-empty string
            if not isinstance(company, str | int) or isinstance(company, bool) or company == "":
                raise BadRecordError(key, s.company_field, "missing company")
            company = str(company)
        state = get(s.state_field)
        if type(state) is not str or not state:
            raise BadRecordError(key, s.state_field, "missing state")
        if len(s.number) == 1:
            number = get(s.number[0])
            number = "" if number is None else number if type(number) is str else str(number)
        else:
            number = " ".join([str(v) for f in s.number if (v := get(f)) is not None and v != ""])
        out: dict[str, Any] = {"kind": self._kind, "company": company, "key": key, "number": number or key,
                               "state": state, "etag": etag}
        # the hot loop of a first poll: field lists are resolved once per source (see __post_init__)
        for attr, name in self._texts:
            v = get(name)
            if type(v) is str:
                if v:
                    out[attr] = v
            elif v is None:
                continue
            elif isinstance(v, dict | list):
                raise BadRecordError(key, name, "expected text")
            else:
                out[attr] = str(v)
        for attr, name in self._amounts:
            v = get(name)
            if v is not None:
                out[attr] = _amount_text(v, key, name)
        for attr, name in self._dates:
            v = get(name)
            if v is not None and v != "":
                out[attr] = _to_date(v, key, name).isoformat()
        step = (self.step_of(row) if step is None else step) or None
        if approvals:
            step = summarize_chain(approvals) or step
            out["approvers"] = [a.to_dict() for a in approvals]
        if step is not None:
            out["approval_step"] = step
        details = None
        for label, name in s.details:
            v = get(name)
            if v is not None and v != "":
                if details is None:
                    details = out["details"] = []
                details.append([label, v if type(v) is str else str(v)])
        return out

    # A page at a time: the same results as key_and_etag / stored row by row, computed column by column
    # with C-level builtins (map, zip, compress, set, join), about 3x less interpreter work per row. Each
    # column is checked for the shapes IFS sends (non-empty text, plain numbers, yyyy-mm-dd dates); a page
    # holding anything else returns None and goes through the row-by-row path, which names the bad field.

    def identify(self, rows: list[dict[str, Any]], page: Columns | None = None) -> Identified | None:
        """(keys, etags, states, approval steps) of rows whose keys, etag and state are all well formed and
        whose keys are distinct; else None (identify_rows then sorts the good rows from the bad)."""
        page = _columns(rows, page)
        cols = []
        for name, want in self._key_types:
            col = page[name]
            if not _only(col, want) or (want is str and "" in col):
                return None
            cols.append(col)
        keys = list(map(self._key_format.format, *cols)) if rows else []
        etags = page["@odata.etag"]
        states = page[self.spec.state_field]
        if not (_only(etags, str) and _only(states, str)) or "" in etags or "" in states:
            return None
        steps = self.steps(rows, page)
        version = "".join(etags) + "".join(states) + "".join(steps)  # compared in SQLite, joined by \x1f
        if "\x00" in "".join(keys) or "\x00" in version or "\x1f" in version or len(set(keys)) != len(keys):
            return None
        return keys, etags, states, steps

    def identify_rows(self, rows: list[dict[str, Any]], present: set[str]
                      ) -> tuple[list[dict[str, Any]], Identified, list[tuple[str, str, str]]]:
        """identify, row by row: (the rows that can be compared, their keys, etags, states and steps, and
        the bad rows as (key, field, problem)). Skips a row whose key is in `present` or came earlier in
        the page (a row repeated across pages: data moved under $skip paging), and adds the keys of the
        rows it returns or refuses to `present`."""
        good: list[dict[str, Any]] = []
        keys: list[str] = []
        etags: list[str] = []
        states: list[str] = []
        steps: list[str] = []
        bad: list[tuple[str, str, str]] = []
        state_field = self.spec.state_field
        for row in rows:
            try:
                key, etag, _ = self.key_and_etag(row)
            except BadRecordError as exc:
                bad.append((exc.key or self.spec.raw_key(row), exc.field, exc.problem))
                continue
            if key in present:
                continue
            present.add(key)
            state, step = row.get(state_field), self.step_of(row)
            if type(state) is not str or not state:
                bad.append((key, state_field, "missing state"))
            elif (control := next((c for c in ("\x1f", "\x00") if c in state or c in step), None)) is not None:
                # a version is compared in SQLite as etag, state and step joined by \x1f, through its JSON
                # functions, which end a text at NUL: neither may be inside
                bad.append((key, state_field if control in state else str(self.spec.step_field),
                            "NUL character" if control == "\x00" else "control character"))
            else:
                good.append(row)
                keys.append(key)
                etags.append(etag)
                states.append(state)
                steps.append(step)
        return good, (keys, etags, states, steps), bad

    def steps(self, rows: list[dict[str, Any]], page: Columns | None = None) -> list[str]:
        """step_of for each row."""
        f = self.spec.step_field
        if not f:
            return [""] * len(rows)
        col = _columns(rows, page)[f]
        return col if _only(col, str) else [str(v or "") for v in col]

    def stored_page(self, rows: list[dict[str, Any]], keys: list[str], etags: list[str], steps: list[str],
                    page: Columns | None = None) -> list[tuple[Any, ...]] | None:
        """The records of rows that identify() accepted, in the compact stored form (FinanceRecord.COMPACT:
        from_dict of each equals from_dict of stored(row, key, etag, step=step)), or None."""
        s, n = self.spec, len(rows)
        if not n:
            return []
        page = _columns(rows, page)
        company = page[s.company_field]
        state = page[s.state_field]
        if not _only(company, str):
            if not set(map(type, company)) <= {str, int}:
                return None
            company = list(map(str, company))
        if not _only(state, str) or "" in company or "" in state:
            return None
        if len(s.number) == 1:
            number = page[s.number[0]]
            if not _only(number, str):
                if not set(map(type, number)) <= {str, int}:
                    return None
                number = list(map(str, number))
        else:
            parts = [page[f] for f in s.number]
            for i, p in enumerate(parts):
                if _only(p, int):
                    parts[i] = list(map(str, p))
                elif not _only(p, str) or "" in p:
                    return None
            number = list(map(" ".join, zip(*parts, strict=True)))
        if "" in number:
            number = [v or k for v, k in zip(number, keys, strict=True)]
        absent = repeat(None)
        fields: dict[str, Any] = dict.fromkeys(FinanceRecord.COMPACT, absent)
        fields.update(kind=repeat(self._kind), company=company, key=keys, number=number, state=state, etag=etags)
        for attr, name in self._texts:
            col = page[name]
            if not _only(col, str) or "" in col:
                if set(map(type, col)) & {dict, list}:
                    return None
                col = _texts(col)
            fields[attr] = col
        for attr, name in self._amounts:
            col = page[name]
            values = [v for v in col if v is not None] if None in col else col
            if not set(map(type, values)) <= {float, int}:
                return None
            texts = list(map(repr, values))
            joined = "".join(texts)
            if "e" in joined or "n" in joined or (values and max(map(abs, values)) >= 1e15):
                return None  # exponents, inf, nan, out of range: the row path says which and why
            if values is not col:
                it = iter(texts)
                texts = [None if v is None else next(it) for v in col]
            fields[attr] = texts
        for attr, name in self._dates:
            col = page[name]
            if not set(map(type, col)) <= {str, NoneType}:
                return None
            col = [v or None for v in col] if "" in col else col
            distinct = set(col)  # a page holds few distinct dates: each is checked once
            distinct.discard(None)
            if set(map(len, distinct)) - {10}:  # date-times: the date part, as _to_date reads them
                col = [v and v[:10] for v in col]
                distinct = set(col)
                distinct.discard(None)
            try:
                if any(date.fromisoformat(v).isoformat() != v for v in distinct):
                    return None
            except ValueError:
                return None
            fields[attr] = col
        fields["approval_step"] = [v or None for v in steps] if "" in steps else steps
        if s.details:
            flat: list[Any] = []  # label, values, label, values ...: one flat list per row
            holes: set[int] = set()  # rows missing some detail: only those are rebuilt
            for label, name in s.details:
                col = page[name]
                if not _only(col, str) or "" in col:
                    col = _texts(col)
                    if None in col:
                        holes.update(compress(range(n), map(operator.is_, col, repeat(None))))
                flat += (repeat(label), col)
            details: list[Any] = list(map(list, zip(*flat, strict=False)))  # strict=False: labels repeat()
            for i in holes:
                details[i] = [v for pair in zip(*[iter(details[i])] * 2, strict=True) if pair[1] is not None
                              for v in pair] or None
            fields["details"] = details
        return list(zip(*fields.values(), strict=False))  # strict=False: constant fields are repeat()

    def link_for(self, record: FinanceRecord) -> str | None:
        """The record's "Open in IFS" link, built when a card is rendered (not for every polled row)."""
        s = self.spec
        if not (self.ifs_base_url and s.link_page):
            return None
        types = dict(s.keys)
        values = decode_key(record.key)
        filters: list[tuple[str, str | int]] = []
        for name in self._link_keys:
            if name in values:
                raw = values[name]
                filters.append((name, int(raw) if types.get(name) == "int" and raw.lstrip("-").isdigit() else raw))
        return page_link(self.ifs_base_url, s.link_page, filters)

    def approvals(self, lines: list[Mapping[str, Any]]) -> tuple[ApprovalStep, ...]:
        a = self.spec.approvals
        if a is None:
            return ()
        steps = []
        for line in lines:
            try:
                seq = int(line.get(a.sequence) or 0)
            except (TypeError, ValueError):
                seq = 0
            decided = line.get(a.decided_at) if a.decided_at else None
            if a.status:
                status = str(line.get(a.status) or "")
            else:
                status = "Approved" if decided else "Pending"
            approver = line.get(a.approver)
            steps.append(ApprovalStep(sequence=seq, approver=None if approver is None else str(approver),
                                      status=status, role=None if not a.role else _opt(line.get(a.role)),
                                      decided_at=None if decided is None else str(decided),
                                      done=status in a.done_states if a.status else decided is not None))
        return tuple(sorted(steps, key=lambda st: st.sequence))


NoneType = type(None)


def column(rows: list[dict[str, Any]], name: str) -> list[Any]:
    """[row.get(name) for row in rows], without the interpreter loop."""
    try:
        return list(map(operator.itemgetter(name), rows))  # rows read with $select hold every field
    except KeyError:
        return list(map(dict.get, rows, repeat(name)))


class Columns(dict[str, list[Any]]):
    """The columns of one list of rows, each read from the rows once, when first asked for (a page's
    state column serves the pending filter, identify and stored_page)."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        super().__init__()
        self.rows = rows

    def __missing__(self, name: str) -> list[Any]:
        self[name] = col = column(self.rows, name)
        return col


def _columns(rows: list[dict[str, Any]], cols: Columns | None) -> Columns:
    return cols if cols is not None and cols.rows is rows else Columns(rows)


def _texts(col: list[Any]) -> list[str | None]:
    """Each value as stored() keeps a text: None when empty or missing, else as text."""
    return [None if v is None or v == "" else v if type(v) is str else str(v) for v in col]


def _only(col: Sequence[Any], t: type) -> bool:
    """Every value is exactly of type t (bool is not int, None is not str)."""
    return not col or set(map(type, col)) == {t}


def summarize_chain(steps: tuple[ApprovalStep, ...]) -> str:
    done = [s for s in steps if s.done]
    waiting = [s for s in steps if not s.done]
    if not steps:
        return ""
    if not waiting:
        return f"all {len(steps)} steps done"
    nxt = waiting[0]
    who = nxt.approver or "unassigned"
    return f"step {len(done) + 1} of {len(steps)}: waiting for {who}"


def _opt(v: Any) -> str | None:
    return None if v in (None, "") else str(v)


def _to_amount(v: Any, key: str, name: str) -> Decimal:
    if type(v) is float:  # the usual case: check range on the float, convert once
        if v != v or v in (math.inf, -math.inf):
            raise BadRecordError(key, name, "amount is not finite")
        if abs(v) >= 1e15:
            raise BadRecordError(key, name, "amount out of range")
        return Decimal(str(v))
    if isinstance(v, bool) or not isinstance(v, int | str | Decimal):
        raise BadRecordError(key, name, "amount is not a number")
    try:
        d = Decimal(v) if isinstance(v, int | Decimal) else Decimal(v.strip())
    except InvalidOperation:
        raise BadRecordError(key, name, "amount is not a number") from None
    if not d.is_finite() or abs(d) >= MAX_AMOUNT:
        raise BadRecordError(key, name, "amount out of range")
    return d


def _amount_text(v: Any, key: str, name: str) -> str:
    """An amount as stored: the text of its Decimal (str(_to_amount(v))), without the Decimal for a float."""
    if type(v) is float and v == v and abs(v) < 1e15:
        text = repr(v)  # shortest round-trip digits, as Decimal(str(v)) would keep them
        if "e" not in text:
            return text
    return str(_to_amount(v, key, name))


def _to_date(v: Any, key: str, name: str) -> date:
    if not isinstance(v, str):
        raise BadRecordError(key, name, "date is not text")
    try:
        return date.fromisoformat(v[:10])
    except ValueError:
        raise BadRecordError(key, name, "not a date") from None
