"""IFS Cloud stand-in: Keycloak token endpoint and IFS-shaped OData v4 projections over aiohttp, with faults."""

from __future__ import annotations

import argparse
import asyncio
import base64
import functools
import itertools
import json
import math
import operator
import random
import re
import secrets
import sys
import time
import uuid
from base64 import b64encode
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal
from urllib.parse import quote, unquote, urlencode

from aiohttp import web

from core.domain import RecordKind
from core.links import odata_literal
from simulator.odata_filter import (
    EDM_BOOLEAN,
    EDM_DATE,
    EDM_DECIMAL,
    EDM_INT,
    EDM_STRING,
    EDM_TIMESTAMP,
    EntityType,
    EnumType,
    FilterError,
    FilterNotImplemented,
    compile_filter,
    parse_key_predicate,
    parse_orderby,
    parse_select,
    sort_rows,
)
from simulator.profiles import PROFILES, Profile, Renames, StaticSet, get_profile

JSON_CONTENT_TYPE = "application/json;odata.metadata=minimal"
PAGE_CACHE_BYTES = 256 * 1024 * 1024  # encoded pages kept for repeated queries (least recently used go first)
PROJECTION_ROOT = "ifsapplications/projection/v1"
MALFORMED = "Malformed Request."

# ---------------------------------------------------------------- schema


@dataclass(frozen=True, slots=True)
class _Nav:
    name: str  # navigation property, e.g. PurchaseOrderApprovalArray
    entity: EntityType
    luname: str


@dataclass(frozen=True, slots=True)
class _Set:
    kind: RecordKind
    projection: str
    name: str
    entity: EntityType
    luname: str
    nav: _Nav | None = None

    @property
    def keys(self) -> tuple[str, ...]:
        return self.entity.keys

    @property
    def short_type(self) -> str:
        return self.entity.name.rsplit(".", 1)[1]


_COMMON = dict.fromkeys(("luname", "keyref", "Objgrants", "Objid", "Objversion", "Objkey"), EDM_STRING)
_EDM = {
    "str": EDM_STRING,
    "int": EDM_INT,
    "decimal": EDM_DECIMAL,
    "date": EDM_DATE,
    "timestamp": EDM_TIMESTAMP,
    "bool": EDM_BOOLEAN,
}


def _enum(projection: str, name: str, members: str) -> EnumType:
    return EnumType(f"IfsApp.{projection}.{name}", tuple(members.split()))


def _entity(projection: str, type_name: str, keys: str, columns: str, *enums: EnumType) -> EntityType:
    """`columns` is "Name Name:type ..." with type str (default), int, decimal, date, timestamp, bool or an enum."""
    by_short_name = {enum.name.rsplit(".", 1)[1]: enum for enum in enums}
    props: dict[str, str | EnumType] = dict(_COMMON)
    for column in columns.split():
        name, _, type_ = column.partition(":")
        props[name] = by_short_name[type_] if type_ in by_short_name else _EDM[type_ or "str"]
    return EntityType(
        f"IfsApp.{projection}.{type_name}", props, tuple(keys.split()), {enum.name: enum for enum in enums}
    )


_PO, _INV, _VOU = "PurchaseOrderHandling", "ManualSupplierInvoiceHandling", "ApproveVouchersHandling"
PO_STATE = _enum(
    _PO, "PurchaseOrderState", "Planned Released Confirmed Arrived Received Closed Cancelled Stopped"
)
INVOICE_STATE = _enum(
    _INV, "ManSuppInvoiceState", "Preliminary Posted PostedAuth PartlyPaidPosted PaidPosted Cancelled"
)
AUTHORIZER_LINE_STATE = _enum(_INV, "AuthorizerLineState", "Unacknowledged Acknowledged Authorized")
VOUCHER_STATE = _enum(
    _VOU, "VoucherState", "Waiting AwaitingApproval PartiallyApproved Confirmed Error Cancelled"
)

ORDERS = _Set(
    RecordKind.ORDER,
    _PO,
    "PurchaseOrderSet",
    _entity(
        _PO,
        "PurchaseOrder",
        "OrderNo",
        "Objstate:PurchaseOrderState OrderNo Company Contract VendorNo VendorName BuyerCode AuthorizeCode "
        "CurrencyCode OrderDate:date GrossAmtCurr:decimal CostCenter",
        PO_STATE,
    ),
    luname="PurchaseOrder",
    nav=_Nav(
        "PurchaseOrderApprovalArray",
        _entity(
            _PO,
            "PurchaseOrderApproval",
            "OrderNo ChgOrderNo SequenceNo",
            "OrderNo ChgOrderNo SequenceNo:int Route:int ApprovalRule AuthorizeId ApproverSign "
            "DateApproved:timestamp",
            PO_STATE,
        ),
        luname="PurchaseOrderApproval",
    ),
)
INVOICES = _Set(
    RecordKind.INVOICE,
    _INV,
    "ManualSupplierInvoiceSet",
    _entity(
        _INV,
        "ManualSupplierInvoice",
        "Company InvoiceId",
        "Objstate:ManSuppInvoiceState Company InvoiceId:int InvoiceNo Identity IdentityName InvoiceDate:date "
        "DueDate:date Currency NetCurrAmount:decimal GrossCurrAmount:decimal InvoiceRecipient PoRefNumber "
        "CostCenter AuthStatus",
        INVOICE_STATE,
        AUTHORIZER_LINE_STATE,
    ),
    luname="ManSuppInvoice",
    nav=_Nav(
        "AuthorizerArray",
        _entity(
            _INV,
            "PostingProposalAuth",
            "Company InvoiceId LineNo",
            "Objstate:AuthorizerLineState Company InvoiceId:int LineNo:int Authorizer Role "
            "AuthorizedDate:date",
            INVOICE_STATE,
            AUTHORIZER_LINE_STATE,
        ),
        luname="PostingProposalAuth",
    ),
)
VOUCHERS = _Set(
    RecordKind.VOUCHER,
    _VOU,
    "VoucherApprovalSet",
    _entity(
        _VOU,
        "VoucherApproval",
        "Company AccountingYear VoucherType VoucherNo",
        "Objstate:VoucherState Company AccountingYear:int VoucherType VoucherNo:int VoucherDate:date "
        "AccountingPeriod:int DateReg:date Userid UserGroup SumDebitAmount:decimal SumCreditAmount:decimal "
        "AmountInAccCurr:decimal AccCurrencyCode VoucherText2 CostCenter TwoApproverRequired:bool "
        "ApprovedByUserid ApprovalDate:date SecondApproverId SecondApprovalDate:date",
        VOUCHER_STATE,
    ),
    luname="Voucher",
)
SETS: dict[RecordKind, _Set] = {s.kind: s for s in (ORDERS, INVOICES, VOUCHERS)}
PROJECTIONS: dict[str, list[_Set]] = {}
for _set in SETS.values():
    PROJECTIONS.setdefault(_set.projection, []).append(_set)


def is_pending(kind: RecordKind | str, row: Mapping[str, Any]) -> bool:
    """The simulator's notion of "awaiting approval", per the IFS state semantics."""
    kind = _kind(kind)
    state = row.get("Objstate")
    if kind is RecordKind.ORDER:
        return state == "Planned"
    if kind is RecordKind.INVOICE:
        return state == "Preliminary" and row.get("AuthStatus") == "AWAITAUTH"
    return state in ("AwaitingApproval", "PartiallyApproved")


def _kind(kind: RecordKind | str) -> RecordKind:
    return kind if isinstance(kind, RecordKind) else RecordKind.parse(kind)


@functools.cache
def _db_column(prop: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", prop).upper()


def encode_etag(objid: str, objversion: str) -> str:
    # Recorded IFS etags base64 the whole weak tag: W/"base64('W/"objid:objversion"')".
    inner = f'W/"{objid}:{objversion}"'.encode()
    return 'W/"' + base64.b64encode(inner).decode() + '"'


def decode_etag(etag: str) -> tuple[str, str]:
    """(Objid, Objversion) from an `@odata.etag` value."""
    payload = etag.removeprefix("W/").strip('"')
    inner = base64.b64decode(payload).decode()
    objid, _, objversion = inner.removeprefix("W/").strip('"').rpartition(":")
    return objid, objversion


# ---------------------------------------------------------------- tenant profiles
# A profile renames the canonical schema above; rows are generated canonically and renamed on insertion.


@dataclass(frozen=True, slots=True)
class _Fixed:
    """An entity set with fixed rows (a profile's `Reference_*` sets, the projection catalogue)."""

    name: str
    entity: EntityType
    rows: tuple[dict[str, Any], ...]


@dataclass(frozen=True, slots=True)
class _Projection:
    sets: tuple[_Set, ...]
    lines: Mapping[str, _Set]  # entity set of approval lines -> the header set whose navigation reads them
    fixed: Mapping[str, _Fixed]


@dataclass(frozen=True, slots=True)
class _Schema:
    sets: Mapping[RecordKind, _Set]
    projections: Mapping[str, _Projection]


CATALOGUE_PROJECTION, CATALOGUE_SET = "AllProjections", "Projections"
_FIXED_OBJVERSION = "20240105093000"


def _lines_set_name(nav: _Nav) -> str:
    return nav.entity.name.rsplit(".", 1)[1] + "Set"


def _profiled_entity(
    base: EntityType, projection: str, type_name: str, names: Renames, state_enum: str | None,
    enums: Mapping[str, EnumType],
) -> EntityType:
    props: dict[str, str | EnumType] = {}
    for name, type_ in base.properties.items():
        served = names.field(name)
        if served in props:
            raise ValueError(f"{projection}.{type_name}: two fields would be served as {served}")
        if served is not None:
            is_state = isinstance(type_, EnumType)
            props[served] = (EDM_STRING if state_enum is None else enums[state_enum]) if is_state else type_
    keys = tuple(str(names.field(k)) for k in base.keys)
    return EntityType(f"IfsApp.{projection}.{type_name}", props, keys, {e.name: e for e in enums.values()})


def _fixed_rows(static: StaticSet, entity: EntityType, table_no: int) -> tuple[dict[str, Any], ...]:
    columns = [name for name in entity.properties if name not in _COMMON]
    out = []
    for objid, values in zip(_RowIds(table_no).take(len(static.rows)), static.rows, strict=True):
        fields = dict(zip(columns, values, strict=True))
        out.append({
            "@odata.etag": encode_etag(objid, _FIXED_OBJVERSION),
            "luname": static.luname,
            "keyref": "".join(f"{_db_column(k)}={fields[k]}^" for k in entity.keys),
            "Objgrants": None,
            "Objid": objid,
            "Objversion": _FIXED_OBJVERSION,
            "Objkey": uuid.uuid5(uuid.NAMESPACE_OID, objid).hex.upper(),
            **fields,
        })
    return tuple(out)


def _build_schema(profile: Profile) -> _Schema:
    """The entity sets, types and enums `profile` serves, built from the canonical schema."""
    enums: dict[str, dict[str, EnumType]] = {}  # projection -> short enum name -> enum, over all its kinds
    for kind, names in profile.kinds.items():
        base = SETS[kind]
        pairs = [(names.state_enum, base.entity)]
        if names.nav is not None and base.nav is not None:
            pairs.append((names.nav.state_enum, base.nav.entity))
        for short, entity in pairs:
            states = next((t for t in entity.properties.values() if isinstance(t, EnumType)), None)
            if short is not None and states is not None:
                enums.setdefault(names.projection, {})[short] = EnumType(
                    f"IfsApp.{names.projection}.{short}", states.members
                )
    sets: dict[RecordKind, _Set] = {}
    for kind, names in profile.kinds.items():
        base, own = SETS[kind], enums.get(names.projection, {})
        nav = None
        if names.nav is not None and base.nav is not None:
            nav = _Nav(
                names.nav.name,
                _profiled_entity(base.nav.entity, names.projection, names.nav.entity_type, names.nav,
                                 names.nav.state_enum, own),
                base.nav.luname,
            )
        entity = _profiled_entity(
            base.entity, names.projection, names.entity_type, names, names.state_enum, own
        )
        sets[kind] = _Set(kind, names.projection, names.entity_set, entity, base.luname, nav)
    fixed: dict[str, dict[str, _Fixed]] = {}
    for i, static in enumerate(profile.static_sets):
        entity = _entity(static.projection, static.entity_type, static.keys, static.columns)
        rows = _fixed_rows(static, entity, 70001 + i)
        fixed.setdefault(static.projection, {})[static.name] = _Fixed(static.name, entity, rows)
    if profile.catalogue is not None:
        entity = EntityType(
            f"IfsApp.{CATALOGUE_PROJECTION}.ProjectionInfo",
            dict.fromkeys(("ProjectionName", "Description", "ApiClass"), EDM_STRING),
            ("ProjectionName",),
        )
        rows = tuple(
            {"ProjectionName": e.projection, "Description": e.description, "ApiClass": e.api_class}
            for e in profile.catalogue
        )
        fixed[CATALOGUE_PROJECTION] = {CATALOGUE_SET: _Fixed(CATALOGUE_SET, entity, rows)}
    projections: dict[str, _Projection] = {}
    for name in dict.fromkeys([*profile.projections, *fixed]):
        own_sets = tuple(s for s in sets.values() if s.projection == name)
        lines = {_lines_set_name(s.nav): s for s in own_sets if s.nav is not None}
        projections[name] = _Projection(own_sets, lines, fixed.get(name, {}))
    return _Schema(sets, projections)


# ---------------------------------------------------------------- generated data

_VENDORS = (
    ("V1001", "Nordic Steel AB", "SEK"),
    ("V1002", "Acme Industrial Supply Inc.", "USD"),
    ("V1003", "Müller Hydraulik GmbH", "EUR"),
    ("V1004", "Baltic Timber Oy", "EUR"),
    ("V1005", "Thames Valley Logistics Ltd", "GBP"),
    ("V1006", "Lindqvist Elektro AB", "SEK"),
    ("V1007", "Great Lakes Fasteners LLC", "USD"),
    ("V1008", "Rhône Composites SA", "EUR"),
    ("V1009", "Pennine Packaging Ltd", "GBP"),
    ("V1010", "Kowalski Metal Sp. z o.o.", "EUR"),
    ("V1011", "Cascade Office Solutions Inc.", "USD"),
    ("V1012", "Van der Berg Tooling BV", "EUR"),
    ("V1013", "Svea Kemi AB", "SEK"),
    ("V1014", "Midland Bearings Ltd", "GBP"),
    ("V1015", "Pacific Coast Electronics Inc.", "USD"),
    ("V1016", "Alpine Druckluft AG", "EUR"),
)
_CURRENCIES = ("EUR", "USD", "SEK", "GBP")
_USERS = ("ALAIN", "BRITA", "CHEN", "DIEGO", "EMMA", "FARID", "GRETA", "HIRO", "INGRID", "JONAS")
_COST_CENTERS = ("CC100", "CC110", "CC200", "CC210", "CC300", "CC400")
_SITES = ("MAIN", "NORTH", "SOUTH")
_APPROVAL_RULES = ("PO-STD", "PO-CAPEX", "PO-HIGHVAL")
_VOUCHER_TYPES = ("M", "J", "K")
_USER_GROUPS = ("AC", "GL", "AP")
_VOUCHER_TEXTS = (
    "Accrual of utilities",
    "Reclassification of freight costs",
    "Month-end depreciation adjustment",
    "Correction of VAT posting",
    "Prepaid insurance release",
    "Intercompany recharge",
    "Bank fee accrual",
)
_ACC_CURRENCY = {"10": "SEK", "20": "EUR", "30": "USD", "40": "GBP"}
_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_TABLE_NO = {RecordKind.ORDER: 71234, RecordKind.INVOICE: 71301, RecordKind.VOUCHER: 71422}
_ROWS_PER_BLOCK = 160


def _b64n(value: int, width: int) -> str:
    chars = []
    for _ in range(width):
        value, digit = divmod(value, 64)
        chars.append(_B64[digit])
    return "".join(reversed(chars))


_ROW_SUFFIX = tuple(_b64n(i, 3) for i in range(_ROWS_PER_BLOCK))


class _RowIds:
    """Oracle-ROWID-shaped Objid values (object, file, block, row), unique per table."""

    def __init__(self, table_no: int) -> None:
        self._prefix = _b64n(table_no, 6) + "AAF"
        self._n = 0

    def take(self, n: int) -> list[str]:
        out: list[str] = []
        start, self._n = self._n, self._n + n
        while start < self._n:
            block, row = divmod(start, _ROWS_PER_BLOCK)
            stop = min(_ROWS_PER_BLOCK, row + self._n - start)
            block_text = self._prefix + _b64n(4096 + block, 6)
            out += [block_text + suffix for suffix in _ROW_SUFFIX[row:stop]]
            start += stop - row
        return out

    def next(self) -> str:
        return self.take(1)[0]


# ---------------------------------------------------------------- request log and faults


@dataclass(frozen=True, slots=True)
class RequestLog:
    method: str
    path: str
    query: dict[str, str]
    status: int  # 0 when the connection was dropped without a response
    monotonic: float  # time.monotonic() when the request arrived
    client_id: str | None  # from the bearer token (data) or the form (token endpoint)


FaultAction = Literal["fail", "drop", "slow", "malformed", "empty"]
_DEFAULT_CODES = {
    429: "TOO_MANY_REQUESTS",
    500: "ODP_INTERNAL_ERROR",
    502: "BAD_GATEWAY",
    503: "SERVICE_UNAVAILABLE",
    504: "GATEWAY_TIMEOUT",
}
_MESSAGES = {
    "MI_MODIFIED_ERROR": "Service metadata already modified.",
    "TOO_MANY_REQUESTS": "Too many requests.",
    "SERVICE_UNAVAILABLE": "Service unavailable.",
}


@dataclass(slots=True)
class _Fault:
    action: FaultAction
    remaining: int
    status: int = 200
    code: str | None = None
    retry_after: float | None = None
    seconds: float = 0.0
    path: str | None = None
    token: bool = False

    def matches(self, path: str, is_token: bool) -> bool:
        if self.remaining <= 0 or (is_token and not self.token):
            return False
        return self.path is None or self.path in path

    def describe(self) -> dict[str, Any]:
        return {
            k: getattr(self, k)
            for k in ("action", "remaining", "status", "code", "retry_after", "seconds", "path", "token")
        }


class FaultPlan:
    """Queued failures for the next requests, and an optional server-side rate limit.

    Each fault counts down over the data requests whose path or decoded query string contains `path`
    (any when None; "$skip=20" picks one page of a listing); with
    `token=True` the token endpoint counts too. Several slow faults add up; at most one fail, drop,
    malformed or empty fault applies to a request, the earliest queued.

    Two standing behaviours of a collection (listing) answer last until `clear()`: `cap_top(n)` (at most
    n rows per answer, whatever `$top` asks, and no next link: a server with a silent page cap) and
    `endless_next_links()` (every answer carries a fresh, distinct next link: paging that never ends)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._faults: list[_Fault] = []
        self.per_minute: int | None = None
        self._window: deque[float] = deque()
        self._top_caps: list[tuple[str | None, int]] = []
        self._endless: list[str | None] = []
        self.endless_links = 0  # next links made up by endless_next_links so far

    def fail_next(
        self,
        n: int = 1,
        status: int = 429,
        *,
        retry_after: float | None | Literal["auto"] = "auto",
        code: str | None = None,
        path: str | None = None,
        token: bool = False,
    ) -> None:
        """Answer the next `n` matching requests with `status`; 429 carries `Retry-After: 1` unless told."""
        if retry_after == "auto":
            retry_after = 1.0 if status == 429 else None
        code = code or _DEFAULT_CODES.get(status, f"HTTP_{status}")
        self._faults.append(
            _Fault("fail", n, status=status, code=code, retry_after=retry_after, path=path, token=token)
        )

    def drop_next(self, n: int = 1, *, path: str | None = None, token: bool = False) -> None:
        self._faults.append(_Fault("drop", n, path=path, token=token))

    def slow_next(self, n: int, seconds: float, *, path: str | None = None, token: bool = False) -> None:
        self._faults.append(_Fault("slow", n, seconds=seconds, path=path, token=token))

    def malformed_next(self, n: int = 1, *, path: str | None = None, token: bool = False) -> None:
        self._faults.append(_Fault("malformed", n, path=path, token=token))

    def empty_next(self, n: int = 1, *, path: str | None = None) -> None:
        """Answer the next `n` matching requests `200 {"value": []}`: an empty listing, as IFS answers for
        a company the service user is not granted or on a transient glitch. Match listings only with a
        path such as "PurchaseOrderSet?" (a read by key has no query string)."""
        self._faults.append(_Fault("empty", n, path=path))

    def cap_top(self, n: int, *, path: str | None = None) -> None:
        """From now on, collection answers (matching `path`) hold at most `n` rows and no next link."""
        if n < 1:
            raise ValueError("cap_top needs n >= 1")
        self._top_caps.append((path, n))

    def endless_next_links(self, *, path: str | None = None) -> None:
        """From now on, every collection answer (matching `path`) carries a fresh, distinct next link."""
        self._endless.append(path)

    def top_cap(self, target: str) -> int | None:
        """The smallest row cap that applies to a collection request, if any."""
        caps = [n for path, n in self._top_caps if path is None or path in target]
        return min(caps) if caps else None

    def endless(self, target: str) -> bool:
        return any(path is None or path in target for path in self._endless)

    def rate_limit(self, per_minute: int | None) -> None:
        """Answer 429 + Retry-After beyond `per_minute` data requests in any 60 s; None or 0 turns it off."""
        self.per_minute = per_minute or None
        self._window.clear()

    def clear(self) -> None:
        self._faults.clear()
        self._top_caps.clear()
        self._endless.clear()
        self.rate_limit(None)

    @property
    def pending(self) -> list[dict[str, Any]]:
        standing = [{"action": "cap_top", "top": n, "path": path} for path, n in self._top_caps]
        standing += [{"action": "endless_next_links", "path": path} for path in self._endless]
        return [f.describe() for f in self._faults if f.remaining > 0] + standing

    def take(self, path: str, is_token: bool) -> tuple[float, _Fault | None]:
        """Seconds to delay, and the one failure (fail/drop/malformed) this request gets, if any."""
        delay = 0.0
        chosen: _Fault | None = None
        for fault in self._faults:
            if not fault.matches(path, is_token):
                continue
            if fault.action == "slow":
                fault.remaining -= 1
                delay += fault.seconds
            elif chosen is None:
                fault.remaining -= 1
                chosen = fault
        self._faults = [f for f in self._faults if f.remaining > 0]
        return delay, chosen

    def over_rate(self) -> float | None:
        """Retry-After seconds when the rate limit is exceeded, else None (and the request is counted)."""
        if self.per_minute is None:
            return None
        now = self._clock()
        while self._window and self._window[0] <= now - 60.0:
            self._window.popleft()
        if len(self._window) >= self.per_minute:
            return max(1.0, math.ceil(self._window[0] + 60.0 - now))
        self._window.append(now)
        return None


# ---------------------------------------------------------------- errors


class _ODataError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        detail: str | None = None,
        detail_code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.detail, self.detail_code = detail, detail_code
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.detail:
            error["details"] = [{"code": self.detail_code or self.code, "message": self.detail}]
        return {"error": error}


def _checked(parse: Callable[..., Any], *args: Any) -> Any:
    """Run a query-option parser, answering its refusals the way the IFS OData Provider does."""
    try:
        return parse(*args)
    except FilterNotImplemented as exc:
        raise _not_implemented(exc.detail) from None
    except FilterError as exc:
        raise _malformed(exc.detail) from None


def _malformed(detail: str) -> _ODataError:
    return _ODataError(400, "ODP_BAD_REQUEST", MALFORMED, detail, "ODP_URI_SEMANTIC_ERROR")


def _not_implemented(detail: str) -> _ODataError:
    return _ODataError(501, "ODP_NOT_IMPLEMENTED", "Not implemented.", detail)


def _not_found(detail: str) -> _ODataError:
    return _ODataError(404, "ODP_RESOURCE_NOTFOUND", "Resource not found.", detail)


def _dumps(body: Any) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def _json_response(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    """`body`: a JSON-ready object, or bytes already encoded."""
    all_headers = {"Content-Type": JSON_CONTENT_TYPE, "OData-Version": "4.0", **(headers or {})}
    return web.Response(status=status, body=body if isinstance(body, bytes) else _dumps(body), headers=all_headers)


def _error_response(err: _ODataError) -> web.Response:
    return _json_response(err.body(), err.status, err.headers)


# ---------------------------------------------------------------- the simulator


@dataclass(slots=True)
class _Token:
    client_id: str
    expires_at: float


_CLIENT_ID = web.RequestKey("client_id", str)
_DROPPED = web.RequestKey("dropped", bool)
_SYSTEM_OPTIONS = {
    "$filter",
    "$select",
    "$orderby",
    "$top",
    "$skip",
    "$count",
    "$format",
    "$expand",
    "$apply",
    "$search",
    "$compute",
    "$skiptoken",
    "$levels",
    "$index",
    "$schemaversion",
}
_NOT_IMPLEMENTED_OPTIONS = ("$expand", "$apply", "$search", "$compute", "$levels", "$index")


@dataclass(slots=True)
class _Query:
    select: list[str] | None
    filter_text: str
    orderby_text: str
    top: int | None
    skip: int


class IfsSimulator:
    """An IFS Cloud tenant with three approval projections, served over real HTTP.

    Data: `add_order` / `add_invoice` / `add_voucher` (pending by default), `update`, `approve`,
    `approve_step`, `remove`, `bulk_generate`; keys are dicts such as {"OrderNo": "P1001"} or
    {"Company": "10", "InvoiceId": 1001}. Every call returns a copy of the row under canonical names (as
    the default profile serves it).
    Observation: `requests` (every token and data request), `data_requests()`, `tokens_issued`, `stats()`.
    Failure: `faults`, `expire_all_tokens()`, and the constructor switches. Admin HTTP API under /_sim/.
    Tenant: `profile` ("default", "renamed", "lean" or a `simulator.profiles.Profile`) picks the names served;
    the data API takes and returns canonical (default) names in every profile, and `self.profile` tells the
    served ones, e.g. `sim.profile.field("order", "GrossAmtCurr")`."""

    def __init__(
        self,
        *,
        realm: str = "ifs",
        clients: dict[str, str] | None = None,
        token_ttl: float = 180.0,
        clock: Callable[[], float] = time.time,
        granted_companies: set[str] | None = None,
        server_page_size: int | None = None,
        reject_objstate_filter: bool = False,
        seed: int = 0,
        profile: str | Profile = "default",
    ) -> None:
        self.profile = get_profile(profile)
        self._schema = _build_schema(self.profile)
        self._sets = self._schema.sets
        # Only kinds whose names differ pay for renaming; the default profile never renames a row.
        self._renamed = {
            kind: names
            for kind, names in self.profile.kinds.items()
            if names.fields or (names.nav is not None and names.nav.fields)
        }
        self._state_fields = frozenset(
            name
            for names in self.profile.kinds.values()
            for name in (names.state_field, names.nav.field("Objstate") if names.nav else None)
            if name is not None
        )
        self._metadata: dict[str, str] = {}
        self.realm = realm
        self.clients = dict(clients) if clients is not None else {"notifier": "notifier-secret"}
        self.token_ttl = token_ttl
        self.granted_companies = granted_companies
        self.server_page_size = server_page_size
        self.reject_objstate_filter = reject_objstate_filter
        self.seed = seed
        self._clock = clock
        self._rng = random.Random(seed)
        self.faults = FaultPlan(clock)
        self.requests: list[RequestLog] = []
        self.tokens_issued = 0
        self._tokens: dict[str, _Token] = {}
        self._rows: dict[RecordKind, dict[tuple[Any, ...], dict[str, Any]]] = {k: {} for k in SETS}
        self._children: dict[RecordKind, dict[tuple[Any, ...], list[dict[str, Any]]]] = {k: {} for k in SETS}
        self._rowids = {k: _RowIds(_TABLE_NO[k]) for k in SETS}
        self._child_rowids = {k: _RowIds(_TABLE_NO[k] + 7) for k in SETS}
        self._versions = dict.fromkeys(SETS, 0)
        self._cache: OrderedDict[tuple[Any, ...], list[dict[str, Any]]] = OrderedDict()
        self._pages: OrderedDict[tuple[Any, ...], bytes] = OrderedDict()  # encoded top-level pages
        self._pages_bytes = 0
        self._next_order = 1001
        self._next_invoice = 1001
        self._next_voucher = 1001
        self._runner: web.AppRunner | None = None
        self.base_url = ""
        self.app = self._build_app()

    # ------------------------------------------------------------ lifecycle

    def vault_secrets(self) -> dict[str, str]:
        """The service's IFS secrets (vault names) that reach this simulator with its first client."""
        client_id, secret = next(iter(self.clients.items()))
        return {"ifs.base_url": self.base_url, "ifs.client_id": client_id, "ifs.client_secret": secret}

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        # handler_cancellation lets a client timeout on a slow fault end the server-side sleep too.
        self._runner = web.AppRunner(
            self.app, handler_cancellation=True, shutdown_timeout=0.5, access_log=None
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound_host, bound_port = self._runner.addresses[0][:2]
        self.base_url = f"http://{bound_host}:{bound_port}"
        return self.base_url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> IfsSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------ tokens and request log

    def expire_all_tokens(self) -> None:
        for token in self._tokens.values():
            token.expires_at = -math.inf

    def data_requests(self, path_contains: str = "") -> list[RequestLog]:
        """Requests to the OData projections (not the token endpoint), optionally narrowed by path."""
        return [r for r in self.requests if f"/{PROJECTION_ROOT}/" in r.path and path_contains in r.path]

    # ------------------------------------------------------------ time helpers

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), tz=UTC)

    def _today(self) -> date:
        return self._now().date()

    def _timestamp(self) -> str:
        return self._now().strftime("%Y-%m-%dT%H:%M:%SZ")

    def _objversion(self, previous: str | None = None) -> str:
        now = self._now().replace(microsecond=0, tzinfo=None)
        if previous is not None:
            # Two updates in the same second must still change the etag.
            floor = datetime.strptime(previous, "%Y%m%d%H%M%S") + timedelta(seconds=1)
            now = max(now, floor)
        return now.strftime("%Y%m%d%H%M%S")

    # ------------------------------------------------------------ data API

    def add(self, kind: RecordKind | str, company: str = "10", **fields: Any) -> dict[str, Any]:
        kind = _kind(kind)
        if kind is RecordKind.ORDER:
            return self.add_order(company, **fields)
        if kind is RecordKind.INVOICE:
            return self.add_invoice(company, **fields)
        return self.add_voucher(company, **fields)

    def add_order(self, company: str = "10", **fields: Any) -> dict[str, Any]:
        """A purchase order, pending ('Planned') unless `fields` say otherwise, with 1-3 approval steps."""
        return self._insert(self._sets[RecordKind.ORDER], company, fields)

    def add_invoice(self, company: str = "10", **fields: Any) -> dict[str, Any]:
        """A supplier invoice awaiting authorization ('Preliminary', AuthStatus 'AWAITAUTH') with authorizer lines."""
        return self._insert(self._sets[RecordKind.INVOICE], company, fields)

    def add_voucher(self, company: str = "10", **fields: Any) -> dict[str, Any]:
        """A GL voucher awaiting approval ('AwaitingApproval')."""
        return self._insert(self._sets[RecordKind.VOUCHER], company, fields)

    def bulk_generate(self, kind: RecordKind | str, n: int, company: str = "10") -> None:
        """Add `n` pending records of `kind` at once (approval lines are generated when first read)."""
        sdef = self._sets[_kind(kind)]
        key_of = operator.itemgetter(*sdef.keys)
        generated = self._generate(sdef.kind, company, n, self._objversion())
        names = self._renamed.get(sdef.kind)
        if names is not None:
            generated = map(names.to_profile, generated)
        if len(sdef.keys) == 1:
            self._rows[sdef.kind].update({(key_of(row),): row for row in generated})
        else:
            self._rows[sdef.kind].update({key_of(row): row for row in generated})
        self._touch(sdef.kind)

    def get(self, kind: RecordKind | str, key: Mapping[str, Any]) -> dict[str, Any] | None:
        sdef = self._sets[_kind(kind)]
        row = self._rows[sdef.kind].get(self._key_tuple(sdef, key))
        return self._api_row(sdef.kind, row) if row is not None else None

    def rows(self, kind: RecordKind | str) -> list[dict[str, Any]]:
        kind = _kind(kind)
        return [self._api_row(kind, r) for r in self._rows[kind].values()]

    def nav_rows(self, kind: RecordKind | str, key: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The approval lines of one record (PO approval rows, invoice authorizer lines; none for vouchers)."""
        sdef = self._sets[_kind(kind)]
        return [self._api_row(sdef.kind, r, line=True) for r in self._nav_of(sdef, self._require(sdef, key))]

    def update(self, kind: RecordKind | str, key: Mapping[str, Any], **fields: Any) -> dict[str, Any]:
        """Change columns of one record; bumps Objversion so its etag changes."""
        sdef, base = self._sets[_kind(kind)], SETS[_kind(kind)]
        row = self._require(sdef, key)
        for name in fields:
            if name in base.keys:
                raise ValueError(f"key column {name} cannot be updated")
        return self._replace(sdef, row, self._served(sdef, self._coerce(base.entity, fields), strict=True))

    def _pending(self, kind: RecordKind | str, key: Mapping[str, Any]) -> tuple[_Set, dict[str, Any]]:
        sdef = self._sets[_kind(kind)]
        row = self._require(sdef, key)
        if not is_pending(sdef.kind, self._canonical(sdef.kind, row)):
            raise ValueError(f"{sdef.kind.value} {self._key_text(sdef, row)} is not awaiting approval")
        return sdef, row

    def approve(
        self, kind: RecordKind | str, key: Mapping[str, Any], by: str = "APPROVER1"
    ) -> dict[str, Any]:
        """Approve fully (a two-approver voucher needs two calls); raises ValueError when not pending."""
        sdef, row = self._pending(kind, key)
        if sdef.kind is RecordKind.VOUCHER:
            return self._approve_voucher(row, by)
        children = self._nav_of(sdef, row)
        for index, child in enumerate(children):
            children[index] = self._signed_child(sdef, child, by)
        return self._finish_approval(sdef, row)

    def approve_step(
        self, kind: RecordKind | str, key: Mapping[str, Any], by: str = "APPROVER1"
    ) -> dict[str, Any]:
        """Sign the next open approval line only. As in IFS, the header row (and its etag) changes only when
        the last line completes the approval; vouchers have no lines, so this equals `approve`."""
        sdef, row = self._pending(kind, key)
        if sdef.kind is RecordKind.VOUCHER:
            return self._approve_voucher(row, by)
        children = self._nav_of(sdef, row)
        open_lines = [i for i, c in enumerate(children) if not self._child_done(sdef, c)]
        if open_lines:
            children[open_lines[0]] = self._signed_child(sdef, children[open_lines[0]], by)
            self._touch(sdef.kind)
        if len(open_lines) <= 1:
            return self._finish_approval(sdef, row)
        return self._api_row(sdef.kind, row)

    def remove(self, kind: RecordKind | str, key: Mapping[str, Any]) -> None:
        sdef = self._sets[_kind(kind)]
        row = self._require(sdef, key)
        key_tuple = tuple(row[k] for k in sdef.keys)
        del self._rows[sdef.kind][key_tuple]
        self._children[sdef.kind].pop(key_tuple, None)
        self._touch(sdef.kind)

    def stats(self) -> dict[str, Any]:
        records: dict[str, Any] = {}
        for kind, rows in self._rows.items():
            states: dict[str, int] = {}
            pending = 0
            for served in rows.values():
                row = self._canonical(kind, served)
                states[row["Objstate"]] = states.get(row["Objstate"], 0) + 1
                pending += is_pending(kind, row)
            records[kind.value] = {"total": len(rows), "pending": pending, "by_state": states}
        return {
            "records": records,
            "requests": len(self.requests),
            "data_requests": len(self.data_requests()),
            "tokens_issued": self.tokens_issued,
            "faults": self.faults.pending,
            "rate_limit_per_minute": self.faults.per_minute,
        }

    # ------------------------------------------------------------ row plumbing

    def _touch(self, kind: RecordKind) -> None:
        self._versions[kind] += 1

    def _key_tuple(self, sdef: _Set, key: Mapping[str, Any]) -> tuple[Any, ...]:
        base = SETS[sdef.kind]  # keys come in canonical names; a profile keeps their order
        missing = [k for k in base.keys if k not in key]
        if missing:
            raise KeyError(
                f"{sdef.kind.value} key needs {', '.join(base.keys)}; missing {', '.join(missing)}"
            )
        return tuple(int(key[k]) if base.entity.properties[k] == EDM_INT else str(key[k]) for k in base.keys)

    def _canonical(self, kind: RecordKind, row: Mapping[str, Any], line: bool = False) -> Mapping[str, Any]:
        """A stored row under canonical names (the row itself in a profile that renames nothing)."""
        names = self._renamed.get(kind)
        if names is None:
            return row
        renames = names.nav if line else names
        assert renames is not None
        return renames.to_canonical(row)

    def _api_row(self, kind: RecordKind, row: Mapping[str, Any], line: bool = False) -> dict[str, Any]:
        return dict(self._canonical(kind, row, line))

    def _served(
        self, sdef: _Set, fields: Mapping[str, Any], line: bool = False, strict: bool = False
    ) -> dict[str, Any]:
        """Canonical columns under the profile's names; `strict` refuses columns the profile lacks."""
        names = self._renamed.get(sdef.kind)
        if names is None:
            return dict(fields)
        renames = names.nav if line else names
        assert renames is not None
        if strict:
            for name in fields:
                if renames.field(name) is None:
                    entity = sdef.nav.entity if line and sdef.nav else sdef.entity
                    raise ValueError(
                        f"{entity.name} has no settable column {name!r} in profile {self.profile.name}"
                    )
        return renames.to_profile(fields)

    def _require(self, sdef: _Set, key: Mapping[str, Any]) -> dict[str, Any]:
        row = self._rows[sdef.kind].get(self._key_tuple(sdef, key))
        if row is None:
            raise KeyError(f"no {sdef.kind.value} with key {dict(key)}")
        return row

    @staticmethod
    def _key_text(sdef: _Set, row: Mapping[str, Any]) -> str:
        return ",".join(f"{k}={row[k]}" for k in sdef.keys)

    def _coerce(self, entity: EntityType, fields: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, value in fields.items():
            type_ = entity.properties.get(name)
            if type_ is None or name in _COMMON:
                raise ValueError(f"{entity.name} has no settable column {name!r}")
            if value is None:
                out[name] = None
            elif isinstance(type_, EnumType):
                if value not in type_.members:
                    raise ValueError(f"{value!r} is not a {type_.name} (one of {', '.join(type_.members)})")
                out[name] = value
            elif type_ == EDM_DECIMAL:
                out[name] = float(Decimal(str(value)))
            elif type_ == EDM_INT:
                out[name] = int(value)
            elif type_ == EDM_BOOLEAN:
                out[name] = value if isinstance(value, bool) else str(value).lower() == "true"
            elif type_ == EDM_DATE:
                out[name] = (
                    value.isoformat() if isinstance(value, date) else date.fromisoformat(value).isoformat()
                )
            elif type_ == EDM_TIMESTAMP and isinstance(value, datetime):
                out[name] = value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            else:
                out[name] = str(value)
        return out

    def _insert(self, sdef: _Set, company: str, overrides: Mapping[str, Any]) -> dict[str, Any]:
        version = self._objversion()
        generated = next(self._generate(sdef.kind, company, 1, version))
        fields = {k: v for k, v in generated.items() if k not in _COMMON and k != "@odata.etag"}
        base = SETS[sdef.kind]
        changes = self._coerce(base.entity, overrides)
        self._served(sdef, changes, strict=True)
        if sdef.kind is RecordKind.VOUCHER and changes.get("VoucherDate"):
            day = date.fromisoformat(changes["VoucherDate"])
            fields.update(AccountingYear=day.year, AccountingPeriod=day.month)
        fields.update(changes)
        key = tuple(fields[k] for k in base.keys)
        if key in self._rows[sdef.kind]:
            raise ValueError(f"{sdef.kind.value} {dict(zip(base.keys, key, strict=True))} already exists")
        row = self._served(sdef, self._materialize(base, fields, version, objid=generated["Objid"]))
        self._rows[sdef.kind][key] = row
        self._skip_past(sdef.kind, fields)
        self._nav_of(sdef, row)
        self._touch(sdef.kind)
        return self._api_row(sdef.kind, row)

    def _skip_past(self, kind: RecordKind, fields: Mapping[str, Any]) -> None:
        """Keep generated numbers clear of keys chosen by hand, so bulk_generate never overwrites a row."""
        if kind is RecordKind.ORDER:
            match = re.fullmatch(r"P(\d+)", fields["OrderNo"])
            if match:
                self._next_order = max(self._next_order, int(match[1]) + 1)
        elif kind is RecordKind.INVOICE:
            self._next_invoice = max(self._next_invoice, fields["InvoiceId"] + 1)
        else:
            self._next_voucher = max(self._next_voucher, fields["VoucherNo"] + 1)

    def _materialize(
        self,
        sdef: _Set,
        fields: Mapping[str, Any],
        version: str,
        entity: EntityType | None = None,
        luname: str | None = None,
        objid: str | None = None,
    ) -> dict[str, Any]:
        entity = entity or sdef.entity
        objid = objid or self._rowids[sdef.kind].next()
        keyref = "".join(f"{_db_column(k)}={fields[k]}^" for k in entity.keys)
        row: dict[str, Any] = {
            "@odata.etag": encode_etag(objid, version),
            "luname": luname or sdef.luname,
            "keyref": keyref,
            "Objgrants": None,
            "Objid": objid,
            "Objversion": version,
            "Objkey": f"{self._rng.getrandbits(128):032X}",
        }
        for name in entity.properties:
            if name not in row:
                row[name] = fields.get(name)
        return row

    def _replace(self, sdef: _Set, row: dict[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
        # Rows are replaced, never mutated, so cached query results stay consistent snapshots.
        version = self._objversion(row["Objversion"])
        new = {**row, **changes, "Objversion": version, "@odata.etag": encode_etag(row["Objid"], version)}
        self._rows[sdef.kind][tuple(new[k] for k in sdef.keys)] = new
        self._touch(sdef.kind)
        return self._api_row(sdef.kind, new)

    # ------------------------------------------------------------ approval lines

    def _nav_of(self, sdef: _Set, row: Mapping[str, Any]) -> list[dict[str, Any]]:
        if sdef.nav is None:
            return []
        key = tuple(row[k] for k in sdef.keys)
        children = self._children[sdef.kind].get(key)
        if children is None:
            children = self._gen_children(sdef, row)
            self._children[sdef.kind][key] = children
        return children

    def _gen_children(self, sdef: _Set, row: Mapping[str, Any]) -> list[dict[str, Any]]:
        base = SETS[sdef.kind]
        assert base.nav is not None
        row = self._canonical(sdef.kind, row)
        # Seeded per row so lazily generated lines do not depend on read order.
        rng = random.Random(f"{self.seed}:{row['Objid']}")
        version = row["Objversion"]
        out: list[dict[str, Any]] = []
        for i in range(1, rng.randint(1, 3) + 1):
            if sdef.kind is RecordKind.ORDER:
                fields = {
                    "OrderNo": row["OrderNo"],
                    "ChgOrderNo": "*",
                    "SequenceNo": i,
                    "Route": i,
                    "ApprovalRule": rng.choice(_APPROVAL_RULES),
                    "AuthorizeId": rng.choice(_USERS),
                    "ApproverSign": None,
                    "DateApproved": None,
                }
            else:
                role = "Acknowledger" if i == 1 and rng.random() < 0.3 else "Authorizer"
                fields = {
                    "Company": row["Company"],
                    "InvoiceId": row["InvoiceId"],
                    "LineNo": i,
                    "Authorizer": rng.choice(_USERS),
                    "Role": role,
                    "Objstate": "Unacknowledged",
                    "AuthorizedDate": None,
                }
            line = self._materialize(
                base, fields, version, base.nav.entity, base.nav.luname, self._child_rowids[sdef.kind].next()
            )
            out.append(self._served(sdef, line, line=True))
        return out

    def _child_done(self, sdef: _Set, child: Mapping[str, Any]) -> bool:
        child = self._canonical(sdef.kind, child, line=True)
        if sdef.kind is RecordKind.ORDER:
            return child["DateApproved"] is not None
        return child["Objstate"] == _final_line_state(child)

    def _signed_child(self, sdef: _Set, child: dict[str, Any], by: str) -> dict[str, Any]:
        if self._child_done(sdef, child):
            return child
        if sdef.kind is RecordKind.ORDER:
            changes: dict[str, Any] = {"ApproverSign": by, "DateApproved": self._timestamp()}
        else:
            final = _final_line_state(self._canonical(sdef.kind, child, line=True))
            changes = {"Objstate": final, "AuthorizedDate": self._today().isoformat()}
        changes = self._served(sdef, changes, line=True)
        version = self._objversion(child["Objversion"])
        return {
            **child,
            **changes,
            "Objversion": version,
            "@odata.etag": encode_etag(child["Objid"], version),
        }

    def _finish_approval(self, sdef: _Set, row: dict[str, Any]) -> dict[str, Any]:
        if sdef.kind is RecordKind.ORDER:
            return self._replace(sdef, row, self._served(sdef, {"Objstate": "Released"}))
        return self._replace(sdef, row, self._served(sdef, {"Objstate": "PostedAuth", "AuthStatus": None}))

    def _approve_voucher(self, row: dict[str, Any], by: str) -> dict[str, Any]:
        today = self._today().isoformat()
        sdef = self._sets[RecordKind.VOUCHER]
        now = self._canonical(RecordKind.VOUCHER, row)
        if now["TwoApproverRequired"] and now["ApprovedByUserid"] is None:
            changes = {"Objstate": "PartiallyApproved", "ApprovedByUserid": by, "ApprovalDate": today}
        elif now["TwoApproverRequired"]:
            changes = {"Objstate": "Confirmed", "SecondApproverId": by, "SecondApprovalDate": today}
        else:
            changes = {"Objstate": "Confirmed", "ApprovedByUserid": by, "ApprovalDate": today}
        return self._replace(sdef, row, self._served(sdef, changes))

    # ------------------------------------------------------------ generators
    # Whole rows, whole columns at a time: bulk_generate must make 100,000 rows in well under 2 s.

    def _generate(self, kind: RecordKind, company: str, n: int, version: str) -> Iterator[dict[str, Any]]:
        gen = {
            RecordKind.ORDER: self._gen_orders,
            RecordKind.INVOICE: self._gen_invoices,
            RecordKind.VOUCHER: self._gen_vouchers,
        }[kind]
        objids = self._rowids[kind].take(n)
        bits = self._rng.getrandbits
        tail = f':{version}"'.encode()
        headers = [
            ('W/"' + b64encode(b'W/"' + objid.encode() + tail).decode() + '"', objid, f"{bits(128):032X}")
            for objid in objids
        ]
        return gen(company, n, self._today(), version, headers)

    def _amounts(self, n: int) -> list[float]:
        rnd = self._rng.random
        return [round(10 ** (2 + rnd() * 3.3), 2) for _ in range(n)]

    def _vendors(self, n: int) -> list[tuple[str, str, str]]:
        rng = self._rng
        vendors = rng.choices(_VENDORS, k=n)
        return [(v[0], v[1], rng.choice(_CURRENCIES)) if rng.random() < 0.2 else v for v in vendors]

    def _gen_orders(
        self, company: str, n: int, today: date, version: str, headers: list[tuple[str, str, str]]
    ) -> Iterator[dict[str, Any]]:
        rng = self._rng
        first, self._next_order = self._next_order, self._next_order + n
        days = [(today - timedelta(days=d)).isoformat() for d in range(21)]
        columns = zip(
            headers,
            self._vendors(n),
            rng.choices(_SITES, k=n),
            rng.choices(_USERS, k=n),
            rng.choices(_USERS, k=n),
            rng.choices(days, k=n),
            self._amounts(n),
            rng.choices(_COST_CENTERS, k=n),
            strict=True,
        )
        for i, ((etag, objid, objkey), vendor, site, buyer, coordinator, day, amount, cc) in enumerate(
            columns
        ):
            order_no = f"P{first + i}"
            yield {
                "@odata.etag": etag,
                "luname": "PurchaseOrder",
                "keyref": f"ORDER_NO={order_no}^",
                "Objgrants": None,
                "Objid": objid,
                "Objversion": version,
                "Objkey": objkey,
                "Objstate": "Planned",
                "OrderNo": order_no,
                "Company": company,
                "Contract": site,
                "VendorNo": vendor[0],
                "VendorName": vendor[1],
                "BuyerCode": buyer,
                "AuthorizeCode": coordinator,
                "CurrencyCode": vendor[2],
                "OrderDate": day,
                "GrossAmtCurr": amount,
                "CostCenter": cc,
            }

    def _gen_invoices(
        self, company: str, n: int, today: date, version: str, headers: list[tuple[str, str, str]]
    ) -> Iterator[dict[str, Any]]:
        rng, rnd = self._rng, self._rng.random
        first, self._next_invoice = self._next_invoice, self._next_invoice + n
        dates = [today - timedelta(days=d) for d in range(30)]
        invoice_dates = [(d.isoformat(), (d + timedelta(days=30)).isoformat()) for d in dates]
        po_span = max(1, self._next_order - 1001)
        po_refs = [f"P{1001 + int(rnd() * po_span)}" if rnd() < 0.6 else None for _ in range(n)]
        columns = zip(
            headers,
            self._vendors(n),
            rng.choices(invoice_dates, k=n),
            self._amounts(n),
            rng.choices((1.0, 1.2, 1.25), k=n),
            rng.choices(_USERS, k=n),
            po_refs,
            rng.choices(_COST_CENTERS, k=n),
            strict=True,
        )
        for i, ((etag, objid, objkey), vendor, (day, due), net, rate, recipient, po_ref, cc) in enumerate(
            columns
        ):
            invoice_id = first + i
            yield {
                "@odata.etag": etag,
                "luname": "ManSuppInvoice",
                "keyref": f"COMPANY={company}^INVOICE_ID={invoice_id}^",
                "Objgrants": None,
                "Objid": objid,
                "Objversion": version,
                "Objkey": objkey,
                "Objstate": "Preliminary",
                "Company": company,
                "InvoiceId": invoice_id,
                "InvoiceNo": f"INV-{10000 + int(rnd() * 90000)}",
                "Identity": vendor[0],
                "IdentityName": vendor[1],
                "InvoiceDate": day,
                "DueDate": due,
                "Currency": vendor[2],
                "NetCurrAmount": net,
                "GrossCurrAmount": round(net * rate, 2),
                "InvoiceRecipient": recipient,
                "PoRefNumber": po_ref,
                "CostCenter": cc,
                "AuthStatus": "AWAITAUTH",
            }

    def _gen_vouchers(
        self, company: str, n: int, today: date, version: str, headers: list[tuple[str, str, str]]
    ) -> Iterator[dict[str, Any]]:
        rng, rnd = self._rng, self._rng.random
        first, self._next_voucher = self._next_voucher, self._next_voucher + n
        dates = [(d.year, d.isoformat(), d.month) for d in (today - timedelta(days=i) for i in range(10))]
        registered = today.isoformat()
        currency = _ACC_CURRENCY.get(company, "EUR")
        columns = zip(
            headers,
            rng.choices(dates, k=n),
            rng.choices(_VOUCHER_TYPES, k=n),
            rng.choices(_USERS, k=n),
            rng.choices(_USER_GROUPS, k=n),
            self._amounts(n),
            rng.choices(_VOUCHER_TEXTS, k=n),
            rng.choices(_COST_CENTERS, k=n),
            strict=True,
        )
        for i, (
            (etag, objid, objkey),
            (year, day, period),
            vtype,
            user,
            group,
            amount,
            text,
            cc,
        ) in enumerate(columns):
            voucher_no = first + i
            yield {
                "@odata.etag": etag,
                "luname": "Voucher",
                "keyref": f"COMPANY={company}^ACCOUNTING_YEAR={year}^VOUCHER_TYPE={vtype}^VOUCHER_NO={voucher_no}^",
                "Objgrants": None,
                "Objid": objid,
                "Objversion": version,
                "Objkey": objkey,
                "Objstate": "AwaitingApproval",
                "Company": company,
                "AccountingYear": year,
                "VoucherType": vtype,
                "VoucherNo": voucher_no,
                "VoucherDate": day,
                "AccountingPeriod": period,
                "DateReg": registered,
                "Userid": user,
                "UserGroup": group,
                "SumDebitAmount": amount,
                "SumCreditAmount": amount,
                "AmountInAccCurr": amount,
                "AccCurrencyCode": currency,
                "VoucherText2": text,
                "CostCenter": cc,
                "TwoApproverRequired": rnd() < 0.3,
                "ApprovedByUserid": None,
                "ApprovalDate": None,
                "SecondApproverId": None,
                "SecondApprovalDate": None,
            }

    # ------------------------------------------------------------ HTTP app

    def _build_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        token_path = "/auth/realms/{realm}/protocol/openid-connect/token"
        app.router.add_post(token_path, self._handle_token)
        app.router.add_get("/auth/realms/{realm}/.well-known/openid-configuration", self._handle_discovery)
        app.router.add_route(
            "*", "/{prefix:(?:main|int)}/" + PROJECTION_ROOT + "/{rest:.*}", self._handle_odata
        )
        app.router.add_get("/_sim/stats", self._admin_stats)
        app.router.add_post("/_sim/faults", self._admin_faults)
        app.router.add_post("/_sim/tokens/expire", self._admin_expire_tokens)
        app.router.add_post("/_sim/{kind}", self._admin_add)
        app.router.add_patch("/_sim/{kind}", self._admin_update)
        app.router.add_delete("/_sim/{kind}", self._admin_remove)
        app.router.add_post("/_sim/{kind}/approve", self._admin_approve)
        app.router.add_post("/_sim/{kind}/bulk", self._admin_bulk)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Callable[..., Any]) -> web.StreamResponse:
        if request.path.startswith("/_sim/"):
            return await handler(request)
        arrived = time.monotonic()
        is_token = request.path.startswith("/auth/")
        request[_CLIENT_ID] = None if is_token else self._client_of(request)
        status = 0
        try:
            response = await self._serve(request, handler, is_token)
            status = 0 if request.get(_DROPPED) else response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            self.requests.append(
                RequestLog(
                    request.method, request.path, dict(request.query), status, arrived, request[_CLIENT_ID]
                )
            )

    async def _serve(
        self, request: web.Request, handler: Callable[..., Any], is_token: bool
    ) -> web.StreamResponse:
        # faults match on the path and the decoded query, so a test can fail one page ("$skip=20")
        target = f"{request.path}?{unquote(request.query_string)}" if request.query_string else request.path
        delay, fault = self.faults.take(target, is_token)
        if delay:
            await asyncio.sleep(delay)
        if fault is not None and fault.action == "drop":
            request[_DROPPED] = True
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=499)
        if fault is not None and fault.action == "empty":
            return _json_response({"@odata.context": f"{request.url.origin()}{request.path}", "value": []})
        if fault is not None and fault.action == "fail":
            headers = {} if fault.retry_after is None else {"Retry-After": format(fault.retry_after, "g")}
            code = fault.code or "ODP_INTERNAL_ERROR"
            message = _MESSAGES.get(code, "Simulated failure.")
            return _error_response(_ODataError(fault.status, code, message, headers=headers))
        if not is_token:
            retry_after = self.faults.over_rate()
            if retry_after is not None:
                err = _ODataError(
                    429,
                    "TOO_MANY_REQUESTS",
                    "Too many requests.",
                    headers={"Retry-After": format(retry_after, "g")},
                )
                return _error_response(err)
        response = await handler(request)
        if fault is not None and fault.action == "malformed" and isinstance(response, web.Response):
            body = response.body if isinstance(response.body, bytes) else b'{"value":[{"a":1}]}'
            return web.Response(
                status=200, body=body[: max(1, len(body) // 2)], headers={"Content-Type": JSON_CONTENT_TYPE}
            )
        return response

    # ------------------------------------------------------------ token endpoint

    def _client_of(self, request: web.Request) -> str | None:
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            return None
        token = self._tokens.get(auth[7:].strip())
        return token.client_id if token else None

    async def _handle_discovery(self, request: web.Request) -> web.Response:
        realm = request.match_info["realm"]
        if realm != self.realm:
            return web.json_response({"error": "Realm does not exist"}, status=404)
        issuer = f"{request.url.origin()}/auth/realms/{realm}"
        return web.json_response(
            {
                "issuer": issuer,
                "token_endpoint": f"{issuer}/protocol/openid-connect/token",
                "grant_types_supported": ["client_credentials"],
                "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
            }
        )

    async def _handle_token(self, request: web.Request) -> web.Response:
        if request.match_info["realm"] != self.realm:
            return web.json_response({"error": "Realm does not exist"}, status=404)
        form = await request.post()
        client_id, client_secret = str(form.get("client_id", "")), str(form.get("client_secret", ""))
        basic = request.headers.get("Authorization", "")
        if basic.startswith("Basic ") and not client_id:
            try:
                client_id, _, client_secret = base64.b64decode(basic[6:]).decode().partition(":")
            except ValueError:
                client_id = ""
        request[_CLIENT_ID] = client_id or None
        if form.get("grant_type") != "client_credentials":
            return web.json_response(
                {"error": "unsupported_grant_type", "error_description": "Unsupported grant_type"}, status=400
            )
        if not client_id or self.clients.get(client_id) != client_secret:
            return web.json_response(
                {
                    "error": "unauthorized_client",
                    "error_description": "Invalid client or Invalid client credentials",
                },
                status=401,
            )
        token = secrets.token_urlsafe(32)
        self._tokens[token] = _Token(client_id, self._clock() + self.token_ttl)
        self.tokens_issued += 1
        return web.json_response(
            {
                "access_token": token,
                "expires_in": int(self.token_ttl) if float(self.token_ttl).is_integer() else self.token_ttl,
                "refresh_expires_in": 1800,
                "refresh_token": secrets.token_urlsafe(32),
                "token_type": "Bearer",
                "id_token": secrets.token_urlsafe(32),
                "not-before-policy": 0,
                "session_state": str(uuid.uuid4()),
                "scope": "openid audience microprofile-jwt profile email",
            }
        )

    # ------------------------------------------------------------ OData

    async def _handle_odata(self, request: web.Request) -> web.Response:
        try:
            return self._odata(request)
        except _ODataError as err:
            return _error_response(err)

    def _odata(self, request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        token = self._tokens.get(auth[7:].strip()) if auth.startswith("Bearer ") else None
        if token is None or self._clock() >= token.expires_at:
            raise _ODataError(
                401,
                "UNAUTHORIZED",
                "Access token is missing, invalid or expired.",
                headers={"WWW-Authenticate": 'Bearer realm="' + self.realm + '"'},
            )
        prefix, rest = request.match_info["prefix"], request.match_info["rest"]
        svc, _, tail = rest.partition("/")
        projection = self._schema.projections.get(svc.removesuffix(".svc"))
        if not svc.endswith(".svc") or projection is None:
            raise _ODataError(404, "ODP_METADATA_NOTFOUND", "Metadata not found.")
        if request.method not in ("GET", "HEAD"):
            raise _ODataError(
                405,
                "ODP_METHOD_NOT_ALLOWED",
                "Method not allowed.",
                f"{request.method} is not supported by this read-only simulator.",
            )
        service_root = f"{request.url.origin()}/{prefix}/{PROJECTION_ROOT}/{svc}"
        name = svc.removesuffix(".svc")
        if tail == "$metadata":
            if name not in self._metadata:
                self._metadata[name] = _edmx(name, projection)
            return web.Response(
                text=self._metadata[name], content_type="application/xml", headers={"OData-Version": "4.0"}
            )
        if tail == "":
            names = [*(s.name for s in projection.sets), *projection.lines, *projection.fixed]
            return _json_response(
                {
                    "@odata.context": f"{service_root}/$metadata",
                    "value": [{"name": n, "kind": "EntitySet", "url": n} for n in names],
                }
            )
        match = re.fullmatch(r"(?P<set>[A-Za-z_]\w*)(?:\((?P<keys>.*?)\))?(?:/(?P<nav>[$\w]+))?", tail)
        sdef = next((s for s in projection.sets if match and s.name == match["set"]), None)
        ieee754 = "ieee754compatible=true" in request.headers.get("Accept", "").lower().replace(" ", "")
        context_root = f"{service_root}/$metadata#"
        if match is not None and sdef is None:
            fixed = self._fixed_set(projection, match["set"])
            if fixed is not None:
                return self._serve_fixed(request, match, *fixed, context_root + match["set"], ieee754)
        if match is None or sdef is None:
            raise _not_found(
                f"Cannot find EntitySet, Singleton, ActionImport or FunctionImport with name "
                f"'{tail.split('(')[0].split('/')[0]}'."
            )
        if match["keys"] is None:
            if match["nav"] == "$count":
                return web.Response(text=str(len(self._visible(sdef))), content_type="text/plain")
            if match["nav"] is not None:
                raise _not_found(f"Resource segment '{match['nav']}' not found.")
            return self._collection(request, sdef, sdef.entity, context_root + sdef.name, None, ieee754)
        key = _checked(parse_key_predicate, match["keys"], sdef.entity)
        row = self._rows[sdef.kind].get(tuple(key[k] for k in sdef.keys))
        if row is None or not self._granted(row):
            raise _not_found(f"No {sdef.short_type} found for key ({match['keys']}).")
        key_text = ",".join(f"{k}={odata_literal(key[k])}" for k in sdef.keys)
        if match["nav"] is None:
            return self._entity(request, sdef.entity, row, context_root + sdef.name, ieee754)
        if sdef.nav is None or match["nav"] != sdef.nav.name:
            raise _not_found(
                f"Navigation property '{match['nav']}' is not defined in type '{sdef.entity.name}'."
            )
        children = self._nav_of(sdef, row)
        context = f"{context_root}{sdef.name}({key_text})/{sdef.nav.name}"
        return self._collection(request, sdef, sdef.nav.entity, context, children, ieee754)

    def _fixed_set(
        self, projection: _Projection, name: str
    ) -> tuple[EntityType, list[dict[str, Any]]] | None:
        """The type and rows of a set that is not a record set: approval lines of every visible record, or
        a set with fixed rows."""
        owner = projection.lines.get(name)
        if owner is not None and owner.nav is not None:
            lines = [line for row in self._visible(owner) for line in self._nav_of(owner, row)]
            return owner.nav.entity, lines
        fixed = projection.fixed.get(name)
        return None if fixed is None else (fixed.entity, list(fixed.rows))

    def _serve_fixed(
        self,
        request: web.Request,
        match: re.Match[str],
        entity: EntityType,
        rows: list[dict[str, Any]],
        context: str,
        ieee754: bool,
    ) -> web.Response:
        if match["nav"] == "$count" and match["keys"] is None:
            return web.Response(text=str(len(rows)), content_type="text/plain")
        if match["nav"] is not None:
            raise _not_found(f"Navigation property '{match['nav']}' is not defined in type '{entity.name}'.")
        if match["keys"] is None:
            return self._collection(request, None, entity, context, rows, ieee754)
        key = _checked(parse_key_predicate, match["keys"], entity)
        row = next((r for r in rows if all(r[k] == v for k, v in key.items())), None)
        if row is None:
            raise _not_found(f"No {entity.name.rsplit('.', 1)[1]} found for key ({match['keys']}).")
        return self._entity(request, entity, row, context, ieee754)

    def _granted(self, row: Mapping[str, Any]) -> bool:
        return self.granted_companies is None or row.get("Company") in self.granted_companies

    def _visible(self, sdef: _Set) -> list[dict[str, Any]]:
        rows = self._rows[sdef.kind].values()
        if self.granted_companies is None:
            return list(rows)
        # Like IFS: companies the service user is not allowed to see simply have no rows.
        granted = self.granted_companies
        return [r for r in rows if r["Company"] in granted]

    def _parse_options(self, request: web.Request, entity: EntityType) -> _Query:
        params = request.query
        for name in params:
            if name.startswith("$") and name not in _SYSTEM_OPTIONS:
                raise _malformed(f"The system query option '{name}' is not supported.")
        for name in _NOT_IMPLEMENTED_OPTIONS:
            if name in params:
                raise _not_implemented(
                    f"The system query option '{name}' is not implemented for this entity set."
                )
        return _Query(
            select=_checked(parse_select, params.get("$select", ""), entity),
            filter_text=params.get("$filter", "").strip(),
            orderby_text=params.get("$orderby", "").strip(),
            top=_non_negative(params, "$top"),
            skip=_non_negative(params, "$skip") or _non_negative(params, "$skiptoken") or 0,
        )

    def _filtered(
        self, sdef: _Set | None, entity: EntityType, query: _Query, source: list[dict[str, Any]] | None
    ) -> list[dict[str, Any]]:
        """Filtered and sorted rows of `sdef` (or `source`, when given); top-level results are cached per
        data version so paging is cheap."""
        cache_key = None
        if source is None:
            assert sdef is not None
            grants = None if self.granted_companies is None else frozenset(self.granted_companies)
            cache_key = (
                sdef.kind,
                query.filter_text,
                query.orderby_text,
                self._versions[sdef.kind],
                grants,
                self.reject_objstate_filter,
            )
            cached = self._cache.get(cache_key)
            if cached is not None:
                self._cache.move_to_end(cache_key)
                return cached
        order = _checked(parse_orderby, query.orderby_text, entity)
        predicate = None
        if query.filter_text:
            compiled = _checked(compile_filter, query.filter_text, entity)
            states = self._state_fields & compiled.properties if self.reject_objstate_filter else ()
            if states:
                # Seen on a 24R2 tenant: every filter on Objstate answered 400, whatever the literal.
                raise _malformed(f"Filtering on '{min(states)}' is not supported for this entity set.")
            predicate = compiled
        rows = self._visible(sdef) if source is None else list(source)
        if predicate is not None:
            rows = predicate.apply(rows)
        sort_rows(rows, order)
        if cache_key is not None:
            self._cache[cache_key] = rows
            while len(self._cache) > 32:
                self._cache.popitem(last=False)
        return rows

    def _collection(
        self,
        request: web.Request,
        sdef: _Set | None,
        entity: EntityType,
        context: str,
        source: list[dict[str, Any]] | None,
        ieee754: bool,
    ) -> web.Response:
        query = self._parse_options(request, entity)
        target = f"{request.path}?{unquote(request.query_string)}" if request.query_string else request.path
        cap, endless = self.faults.top_cap(target), self.faults.endless(target)
        page_key = None
        if source is None and cap is None and not endless:
            assert sdef is not None
            # a page read before (same query, same data): its bytes, as a database answers a repeated
            # query from cache; the benchmarks' warm-up pass fills this, so the floor is the client's
            page_key = (str(request.url.origin()), request.path_qs, self._versions[sdef.kind], ieee754,
                        self.server_page_size,
                        None if self.granted_companies is None else frozenset(self.granted_companies),
                        self.reject_objstate_filter)
            cached = self._pages.get(page_key)
            if cached is not None:
                self._pages.move_to_end(page_key)
                return _json_response(cached)
        rows = self._filtered(sdef, entity, query, source)
        keep = _kept(entity, query.select)
        limit = query.top
        page_size = self.server_page_size
        paged = page_size is not None and (limit is None or limit > page_size)
        if paged:
            assert page_size is not None
            limit = page_size
        if cap is not None:  # a silent server-side cap: fewer rows than $top, and no next link
            limit, paged = cap if limit is None else min(limit, cap), False
        page = rows[query.skip :] if limit is None else rows[query.skip : query.skip + limit]
        body: dict[str, Any] = {
            "@odata.context": context + (f"({','.join(query.select)})" if query.select else ""),
            "value": [_shape(row, entity, keep, ieee754) for row in page],
        }
        end = query.skip + len(page)
        remaining_top = None if query.top is None else query.top - len(page)
        if paged and end < len(rows) and (remaining_top is None or remaining_top > 0):
            params = {k: v for k, v in request.query.items() if k not in ("$skip", "$skiptoken", "$top")}
            if remaining_top is not None:
                params["$top"] = str(remaining_top)
            params["$skip"] = str(end)
            link = f"{request.url.origin()}{request.path}?{urlencode(params, quote_via=quote, safe=_SAFE)}"
            body["@odata.nextLink"] = link
        if endless:  # paging that never ends: onwards from here, each link distinct from every other
            self.faults.endless_links += 1
            params = {k: v for k, v in request.query.items() if k not in ("$skip", "$skiptoken", "sim_seq")}
            params.update({"$skip": str(end), "sim_seq": str(self.faults.endless_links)})
            link = f"{request.url.origin()}{request.path}?{urlencode(params, quote_via=quote, safe=_SAFE)}"
            body["@odata.nextLink"] = link
        encoded = _dumps(body)
        if page_key is not None:
            self._pages[page_key] = encoded
            self._pages_bytes += len(encoded)
            while self._pages_bytes > PAGE_CACHE_BYTES:
                self._pages_bytes -= len(self._pages.popitem(last=False)[1])
        return _json_response(encoded)

    def _entity(
        self, request: web.Request, entity: EntityType, row: Mapping[str, Any], context: str, ieee754: bool
    ) -> web.Response:
        query = self._parse_options(request, entity)
        if query.filter_text or query.orderby_text or query.top is not None or query.skip:
            raise _malformed(
                "$filter, $orderby, $top and $skip are not allowed when reading a single entity."
            )
        selected = f"({','.join(query.select)})" if query.select else ""
        body = {
            "@odata.context": f"{context}{selected}/$entity",
            **_shape(row, entity, _kept(entity, query.select), ieee754),
        }
        return _json_response(body, headers={"ETag": row["@odata.etag"]} if "@odata.etag" in row else None)

    # ------------------------------------------------------------ admin API

    async def _admin_json(self, request: web.Request) -> dict[str, Any]:
        try:
            data = await request.json() if request.can_read_body else {}
        except ValueError:
            raise web.HTTPBadRequest(
                text=json.dumps({"error": "body is not JSON"}), content_type="application/json"
            ) from None
        if not isinstance(data, dict):
            raise web.HTTPBadRequest(
                text=json.dumps({"error": "body must be a JSON object"}), content_type="application/json"
            )
        return data

    @staticmethod
    def _admin_call(fn: Callable[[], Any], status: int = 200) -> web.Response:
        try:
            result = fn()
        except KeyError as exc:
            return web.json_response({"error": str(exc.args[0] if exc.args else exc)}, status=404)
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(result if result is not None else {"ok": True}, status=status)

    async def _admin_add(self, request: web.Request) -> web.Response:
        data = await self._admin_json(request)
        kind = request.match_info["kind"]
        company = str(data.pop("company", data.pop("Company", "10")))
        return self._admin_call(lambda: self.add(kind, company, **data), status=201)

    async def _admin_update(self, request: web.Request) -> web.Response:
        data = await self._admin_json(request)
        key = data.pop("key", None)
        if not isinstance(key, dict):
            return web.json_response({"error": "body needs a 'key' object"}, status=400)
        return self._admin_call(lambda: self.update(request.match_info["kind"], key, **data))

    async def _admin_remove(self, request: web.Request) -> web.Response:
        data = await self._admin_json(request)
        key = data.get("key")
        if not isinstance(key, dict):
            return web.json_response({"error": "body needs a 'key' object"}, status=400)
        return self._admin_call(lambda: self.remove(request.match_info["kind"], key))

    async def _admin_approve(self, request: web.Request) -> web.Response:
        data = await self._admin_json(request)
        key = data.get("key")
        if not isinstance(key, dict):
            return web.json_response({"error": "body needs a 'key' object"}, status=400)
        by = str(data.get("by", "APPROVER1"))
        step = self.approve_step if data.get("step") else self.approve
        return self._admin_call(lambda: step(request.match_info["kind"], key, by=by))

    async def _admin_bulk(self, request: web.Request) -> web.Response:
        data = await self._admin_json(request)
        kind, company = request.match_info["kind"], str(data.get("company", "10"))
        return self._admin_call(lambda: self.bulk_generate(kind, int(data.get("n", 0)), company))

    async def _admin_faults(self, request: web.Request) -> web.Response:
        data = await self._admin_json(request)
        return self._admin_call(lambda: self._configure_faults(data))

    def _configure_faults(self, data: Mapping[str, Any]) -> dict[str, Any]:
        where = {"path": data.get("path"), "token": bool(data.get("token", False))}
        if data.get("clear"):
            self.faults.clear()
        if "fail_next" in data:
            extra: dict[str, Any] = {"code": data.get("code")}
            if "retry_after" in data:
                extra["retry_after"] = data["retry_after"]
            self.faults.fail_next(int(data["fail_next"]), int(data.get("status", 429)), **extra, **where)
        if "drop_next" in data:
            self.faults.drop_next(int(data["drop_next"]), **where)
        if "slow_next" in data:
            self.faults.slow_next(int(data["slow_next"]), float(data.get("seconds", 1.0)), **where)
        if "empty_next" in data:
            self.faults.empty_next(int(data["empty_next"]), path=where["path"])
        if "cap_top" in data:
            self.faults.cap_top(int(data["cap_top"]), path=where["path"])
        if data.get("endless_next_links"):
            self.faults.endless_next_links(path=where["path"])
        if "malformed_next" in data:
            self.faults.malformed_next(int(data["malformed_next"]), **where)
        if "rate_limit" in data:
            self.faults.rate_limit(int(data["rate_limit"]) if data["rate_limit"] else None)
        return {"faults": self.faults.pending, "rate_limit_per_minute": self.faults.per_minute}

    async def _admin_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    async def _admin_expire_tokens(self, request: web.Request) -> web.Response:
        self.expire_all_tokens()
        return web.json_response({"ok": True})


# ---------------------------------------------------------------- OData helpers

_SAFE = "$'(),:="


def _literal(value: Any) -> str:
    return str(value) if isinstance(value, int) else "'" + str(value).replace("'", "''") + "'"


def _non_negative(params: Mapping[str, str], name: str) -> int | None:
    text = params.get(name)
    if text is None:
        return None
    if not text.strip().isdigit():
        raise _malformed(f"The value '{text}' of '{name}' is not a non-negative integer.")
    return int(text)


def _final_line_state(line: Mapping[str, Any]) -> str:
    # An acknowledger line ends Acknowledged; only authorizer lines reach Authorized.
    return "Acknowledged" if line["Role"] == "Acknowledger" else "Authorized"


def _decimal_columns(entity: EntityType) -> tuple[str, ...]:
    return tuple(name for name, type_ in entity.properties.items() if type_ == EDM_DECIMAL)


_ALWAYS = ("@odata.etag", "luname", "keyref")


def _kept(entity: EntityType, select: Sequence[str] | None) -> tuple[str, ...] | None:
    """The columns a `$select` answer carries: the selected ones after the row's own annotations, if any."""
    if select is None:
        return None
    return (*(_ALWAYS if "luname" in entity.properties else ()), *select)


def _shape(
    row: Mapping[str, Any], entity: EntityType, keep: Sequence[str] | None, ieee754: bool
) -> Mapping[str, Any]:
    out: Mapping[str, Any] | dict[str, Any]
    if keep is None:
        if not ieee754:
            return row
        out = dict(row)
    else:
        out = {name: row[name] for name in keep}
    if ieee754:
        # With IEEE754Compatible=true OData sends Edm.Decimal as strings so no precision is lost.
        for name in _decimal_columns(entity):
            if name in out and out[name] is not None:
                out[name] = repr(out[name]) if isinstance(out[name], float) else str(out[name])
    return out


_EDM_FACETS = {EDM_DECIMAL: ' Precision="130" Scale="65"', EDM_STRING: ' MaxLength="4000"'}
def metadata_document(projection: str, profile: str | Profile = "default") -> str:
    """The `$metadata` a profile serves for `projection`, without a server (tests and benchmarks)."""
    return _edmx(projection, _build_schema(get_profile(profile)).projections[projection])


def _edmx(name: str, projection: _Projection) -> str:
    ns = f"IfsApp.{name}"
    enums: dict[str, EnumType] = {}
    entities: list[tuple[EntityType, _Nav | None]] = []
    for sdef in projection.sets:
        enums.update(sdef.entity.enums)
        entities.append((sdef.entity, sdef.nav))
        if sdef.nav is not None:
            entities.append((sdef.nav.entity, None))
    entities += [(fixed.entity, None) for fixed in projection.fixed.values()]
    lines = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        '<edmx:Edmx xmlns:edmx="http://docs.oasis-open.org/odata/ns/edmx" Version="4.0">',
        "<edmx:DataServices>",
        f'<Schema xmlns="http://docs.oasis-open.org/odata/ns/edm" Namespace="{ns}">',
    ]
    for enum in enums.values():
        lines.append(f'<EnumType Name="{enum.name.rsplit(".", 1)[1]}" UnderlyingType="Edm.Int32">')
        lines += [f'<Member Name="{m}" Value="{i}"/>' for i, m in enumerate(enum.members)]
        lines.append("</EnumType>")
    for entity, nav in entities:
        lines.append(f'<EntityType Name="{entity.name.rsplit(".", 1)[1]}">')
        lines.append("<Key>" + "".join(f'<PropertyRef Name="{k}"/>' for k in entity.keys) + "</Key>")
        for prop, type_ in entity.properties.items():
            type_name = type_.name if isinstance(type_, EnumType) else type_
            nullable = ' Nullable="false"' if prop in entity.keys else ""
            facets = "" if isinstance(type_, EnumType) else _EDM_FACETS.get(type_, "")
            lines.append(f'<Property Name="{prop}" Type="{type_name}"{nullable}{facets}/>')
        if nav is not None:
            lines.append(f'<NavigationProperty Name="{nav.name}" Type="Collection({nav.entity.name})"/>')
        lines.append("</EntityType>")
    lines.append(
        '<EntityType Name="Company"><Key><PropertyRef Name="Company"/></Key>'
        '<Property Name="Company" Type="Edm.String" Nullable="false" MaxLength="20"/>'
        '<Property Name="Name" Type="Edm.String" MaxLength="100"/></EntityType>'
    )
    lines.append('<EntityContainer Name="DefaultContainer">')
    for sdef in projection.sets:
        if sdef.nav is None:
            lines.append(f'<EntitySet Name="{sdef.name}" EntityType="{sdef.entity.name}"/>')
            continue
        lines += [
            f'<EntitySet Name="{sdef.name}" EntityType="{sdef.entity.name}">',
            f'<NavigationPropertyBinding Path="{sdef.nav.name}" Target="{_lines_set_name(sdef.nav)}"/>',
            "</EntitySet>",
            f'<EntitySet Name="{_lines_set_name(sdef.nav)}" EntityType="{sdef.nav.entity.name}"/>',
        ]
    lines += [
        f'<EntitySet Name="{fixed.name}" EntityType="{fixed.entity.name}"/>'
        for fixed in projection.fixed.values()
    ]
    lines.append(f'<EntitySet Name="Reference_Company" EntityType="{ns}.Company"/>')
    lines += ["</EntityContainer>", "</Schema>", "</edmx:DataServices>", "</edmx:Edmx>"]
    return "\n".join(lines)


# ---------------------------------------------------------------- generator and CLI


async def run_generator(
    sim: IfsSimulator,
    every: float,
    kind: RecordKind | str = "order",
    company: str | Sequence[str] = "10",
    on_record: Callable[[RecordKind, dict[str, Any]], None] | None = None,
) -> None:
    """Add one pending record every `every` seconds (cycling through companies) until cancelled."""
    kind = _kind(kind)
    companies = itertools.cycle([company] if isinstance(company, str) else list(company))
    while True:
        await asyncio.sleep(every)
        row = sim.add(kind, next(companies))
        if on_record is not None:
            on_record(kind, row)


def describe_record(kind: RecordKind, row: Mapping[str, Any]) -> str:
    """One human line per record (canonical names), for the CLI and the demo."""
    if kind is RecordKind.ORDER:
        return (
            f"order   company={row['Company']} {row['OrderNo']} {row['Objstate']} "
            f"{row.get('VendorName', row['VendorNo'])} "
            f"{row['GrossAmtCurr']:,.2f} {row['CurrencyCode']}"
        )
    if kind is RecordKind.INVOICE:
        return (
            f"invoice company={row['Company']} {row['InvoiceId']} ({row['InvoiceNo']}) {row['Objstate']} "
            f"{row.get('IdentityName', row['Identity'])} {row['GrossCurrAmount']:,.2f} {row['Currency']}"
        )
    return (
        f"voucher company={row['Company']} {row['VoucherType']}{row['VoucherNo']}/{row['AccountingYear']} "
        f"{row['Objstate']} {row['AmountInAccCurr']:,.2f} {row['AccCurrencyCode']}"
    )


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m simulator.ifs", description="Run the IFS Cloud simulator."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--realm", default="ifs")
    parser.add_argument("--client-id", default="notifier")
    parser.add_argument("--client-secret", default="notifier-secret")
    parser.add_argument(
        "--companies", default="10", help="comma-separated company codes to seed and generate"
    )
    parser.add_argument("--seed-orders", type=int, default=3, help="pending purchase orders per company")
    parser.add_argument("--seed-invoices", type=int, default=0, help="pending supplier invoices per company")
    parser.add_argument("--seed-vouchers", type=int, default=0, help="pending GL vouchers per company")
    parser.add_argument("--new-order-every", type=float, default=None, metavar="SECONDS")
    parser.add_argument("--new-invoice-every", type=float, default=None, metavar="SECONDS")
    parser.add_argument("--new-voucher-every", type=float, default=None, metavar="SECONDS")
    parser.add_argument("--page-size", type=int, default=None, help="server-driven page size (nextLink)")
    parser.add_argument("--reject-objstate-filter", action="store_true")
    parser.add_argument("--seed", type=int, default=0, help="random seed for generated data")
    parser.add_argument(
        "--profile",
        choices=sorted(PROFILES),
        default="default",
        help="tenant names to serve (see simulator.profiles)",
    )
    return parser.parse_args(argv)


async def _serve_forever(args: argparse.Namespace) -> None:
    sim = IfsSimulator(
        realm=args.realm,
        clients={args.client_id: args.client_secret},
        seed=args.seed,
        server_page_size=args.page_size,
        reject_objstate_filter=args.reject_objstate_filter,
        profile=args.profile,
    )
    companies = [c.strip() for c in args.companies.split(",") if c.strip()]
    base_url = await sim.start(args.host, args.port)
    print(
        f"IFS simulator at {base_url} (realm {args.realm}, client {args.client_id}, profile {args.profile}); "
        f"admin API at {base_url}/_sim/",
        flush=True,
    )

    def show(kind: RecordKind, row: dict[str, Any]) -> None:
        print(describe_record(kind, row), flush=True)

    for company in companies:
        for kind, count in (
            (RecordKind.ORDER, args.seed_orders),
            (RecordKind.INVOICE, args.seed_invoices),
            (RecordKind.VOUCHER, args.seed_vouchers),
        ):
            for _ in range(count):
                show(kind, sim.add(kind, company))
    tasks = [
        asyncio.create_task(run_generator(sim, every, kind, companies, on_record=show))
        for kind, every in (
            (RecordKind.ORDER, args.new_order_every),
            (RecordKind.INVOICE, args.new_invoice_every),
            (RecordKind.VOUCHER, args.new_voucher_every),
        )
        if every
    ]
    try:
        await asyncio.Event().wait()
    finally:
        for task in tasks:
            task.cancel()
        await sim.stop()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    try:
        asyncio.run(_serve_forever(args))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
