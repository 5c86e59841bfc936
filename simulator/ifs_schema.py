"""The IFS projections the simulator serves: entity sets and types, state enums, what "pending" means,
etags and Oracle-ROWID-shaped Objids, tenant profiles applied to the canonical schema, and `$metadata`."""

from __future__ import annotations

import base64
import functools
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from core.domain import RecordKind
from simulator.odata_filter import (
    EDM_BOOLEAN,
    EDM_DATE,
    EDM_DECIMAL,
    EDM_INT,
    EDM_STRING,
    EDM_TIMESTAMP,
    EntityType,
    EnumType,
)
from simulator.profiles import (
    INVOICE_PROJECTION,
    INVOICE_STATES,
    PO_PROJECTION,
    PO_STATES,
    VOUCHER_PROJECTION,
    VOUCHER_STATES,
    Profile,
    Renames,
    StaticSet,
    get_profile,
)

PROJECTION_ROOT = "ifsapplications/projection/v1"

# ---------------------------------------------------------------- schema


@dataclass(frozen=True, slots=True)
class NavDef:
    name: str  # navigation property, e.g. PurchaseOrderApprovalArray
    entity: EntityType
    luname: str


@dataclass(frozen=True, slots=True)
class SetDef:
    kind: RecordKind
    projection: str
    name: str
    entity: EntityType
    luname: str
    nav: NavDef | None = None

    @property
    def keys(self) -> tuple[str, ...]:
        return self.entity.keys

    @property
    def short_type(self) -> str:
        return self.entity.name.rsplit(".", 1)[1]


COMMON_COLUMNS = dict.fromkeys(("luname", "keyref", "Objgrants", "Objid", "Objversion", "Objkey"), EDM_STRING)
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
    props: dict[str, str | EnumType] = dict(COMMON_COLUMNS)
    for column in columns.split():
        name, _, type_ = column.partition(":")
        props[name] = by_short_name[type_] if type_ in by_short_name else _EDM[type_ or "str"]
    return EntityType(
        f"IfsApp.{projection}.{type_name}", props, tuple(keys.split()), {enum.name: enum for enum in enums}
    )


PO_STATE = _enum(PO_PROJECTION, "PurchaseOrderState", PO_STATES)
INVOICE_STATE = _enum(INVOICE_PROJECTION, "ManSuppInvoiceState", INVOICE_STATES)
AUTHORIZER_LINE_STATE = _enum(INVOICE_PROJECTION, "AuthorizerLineState", "Unacknowledged Acknowledged Authorized")
VOUCHER_STATE = _enum(VOUCHER_PROJECTION, "VoucherState", VOUCHER_STATES)

ORDERS = SetDef(
    RecordKind.ORDER,
    PO_PROJECTION,
    "PurchaseOrderSet",
    _entity(
        PO_PROJECTION,
        "PurchaseOrder",
        "OrderNo",
        "Objstate:PurchaseOrderState OrderNo Company Contract VendorNo VendorName BuyerCode AuthorizeCode "
        "CurrencyCode OrderDate:date GrossAmtCurr:decimal CostCenter",
        PO_STATE,
    ),
    luname="PurchaseOrder",
    nav=NavDef(
        "PurchaseOrderApprovalArray",
        _entity(
            PO_PROJECTION,
            "PurchaseOrderApproval",
            "OrderNo ChgOrderNo SequenceNo",
            "OrderNo ChgOrderNo SequenceNo:int Route:int ApprovalRule AuthorizeId ApproverSign "
            "DateApproved:timestamp",
            PO_STATE,
        ),
        luname="PurchaseOrderApproval",
    ),
)
INVOICES = SetDef(
    RecordKind.INVOICE,
    INVOICE_PROJECTION,
    "ManualSupplierInvoiceSet",
    _entity(
        INVOICE_PROJECTION,
        "ManualSupplierInvoice",
        "Company InvoiceId",
        "Objstate:ManSuppInvoiceState Company InvoiceId:int InvoiceNo Identity IdentityName InvoiceDate:date "
        "DueDate:date Currency NetCurrAmount:decimal GrossCurrAmount:decimal InvoiceRecipient PoRefNumber "
        "CostCenter AuthStatus",
        INVOICE_STATE,
        AUTHORIZER_LINE_STATE,
    ),
    luname="ManSuppInvoice",
    nav=NavDef(
        "AuthorizerArray",
        _entity(
            INVOICE_PROJECTION,
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
VOUCHERS = SetDef(
    RecordKind.VOUCHER,
    VOUCHER_PROJECTION,
    "VoucherApprovalSet",
    _entity(
        VOUCHER_PROJECTION,
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
SETS: dict[RecordKind, SetDef] = {s.kind: s for s in (ORDERS, INVOICES, VOUCHERS)}
PROJECTIONS: dict[str, list[SetDef]] = {}
for _set in SETS.values():
    PROJECTIONS.setdefault(_set.projection, []).append(_set)


def is_pending(kind: RecordKind | str, row: Mapping[str, Any]) -> bool:
    """The simulator's notion of "awaiting approval", per the IFS state semantics."""
    kind = as_kind(kind)
    state = row.get("Objstate")
    if kind is RecordKind.ORDER:
        return state == "Planned"
    if kind is RecordKind.INVOICE:
        return state == "Preliminary" and row.get("AuthStatus") == "AWAITAUTH"
    return state in ("AwaitingApproval", "PartiallyApproved")


def as_kind(kind: RecordKind | str) -> RecordKind:
    return kind if isinstance(kind, RecordKind) else RecordKind.parse(kind)


@functools.cache
def db_column(prop: str) -> str:
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
class FixedSet:
    """An entity set with fixed rows (a profile's `Reference_*` sets, the projection catalogue)."""

    name: str
    entity: EntityType
    rows: tuple[dict[str, Any], ...]


@dataclass(frozen=True, slots=True)
class ProjectionDef:
    sets: tuple[SetDef, ...]
    lines: Mapping[str, SetDef]  # entity set of approval lines -> the header set whose navigation reads them
    fixed: Mapping[str, FixedSet]


@dataclass(frozen=True, slots=True)
class Schema:
    sets: Mapping[RecordKind, SetDef]
    projections: Mapping[str, ProjectionDef]


CATALOGUE_PROJECTION, CATALOGUE_SET = "AllProjections", "Projections"
_FIXED_OBJVERSION = "20240105093000"


def _lines_set_name(nav: NavDef) -> str:
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
    columns = [name for name in entity.properties if name not in COMMON_COLUMNS]
    out = []
    for objid, values in zip(RowIds(table_no).take(len(static.rows)), static.rows, strict=True):
        fields = dict(zip(columns, values, strict=True))
        out.append({
            "@odata.etag": encode_etag(objid, _FIXED_OBJVERSION),
            "luname": static.luname,
            "keyref": "".join(f"{db_column(k)}={fields[k]}^" for k in entity.keys),
            "Objgrants": None,
            "Objid": objid,
            "Objversion": _FIXED_OBJVERSION,
            "Objkey": uuid.uuid5(uuid.NAMESPACE_OID, objid).hex.upper(),
            **fields,
        })
    return tuple(out)


def build_schema(profile: Profile) -> Schema:
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
    sets: dict[RecordKind, SetDef] = {}
    for kind, names in profile.kinds.items():
        base, own = SETS[kind], enums.get(names.projection, {})
        nav = None
        if names.nav is not None and base.nav is not None:
            nav = NavDef(
                names.nav.name,
                _profiled_entity(base.nav.entity, names.projection, names.nav.entity_type, names.nav,
                                 names.nav.state_enum, own),
                base.nav.luname,
            )
        entity = _profiled_entity(
            base.entity, names.projection, names.entity_type, names, names.state_enum, own
        )
        if not profile.objversion:  # the rows keep theirs (their etags carry it); $metadata does not declare it
            entity = replace(entity, properties={n: t for n, t in entity.properties.items() if n != "Objversion"})
        sets[kind] = SetDef(kind, names.projection, names.entity_set, entity, base.luname, nav)
    fixed: dict[str, dict[str, FixedSet]] = {}
    for i, static in enumerate(profile.static_sets):
        entity = _entity(static.projection, static.entity_type, static.keys, static.columns)
        rows = _fixed_rows(static, entity, 70001 + i)
        fixed.setdefault(static.projection, {})[static.name] = FixedSet(static.name, entity, rows)
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
        fixed[CATALOGUE_PROJECTION] = {CATALOGUE_SET: FixedSet(CATALOGUE_SET, entity, rows)}
    projections: dict[str, ProjectionDef] = {}
    for name in dict.fromkeys([*profile.projections, *fixed]):
        own_sets = tuple(s for s in sets.values() if s.projection == name)
        lines = {_lines_set_name(s.nav): s for s in own_sets if s.nav is not None}
        projections[name] = ProjectionDef(own_sets, lines, fixed.get(name, {}))
    return Schema(sets, projections)


# ---------------------------------------------------------------- row ids

_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
TABLE_NO = {RecordKind.ORDER: 71234, RecordKind.INVOICE: 71301, RecordKind.VOUCHER: 71422}
_ROWS_PER_BLOCK = 160


def _b64n(value: int, width: int) -> str:
    chars = []
    for _ in range(width):
        value, digit = divmod(value, 64)
        chars.append(_B64[digit])
    return "".join(reversed(chars))


_ROW_SUFFIX = tuple(_b64n(i, 3) for i in range(_ROWS_PER_BLOCK))


class RowIds:
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


def final_line_state(line: Mapping[str, Any]) -> str:
    # An acknowledger line ends Acknowledged; only authorizer lines reach Authorized.
    return "Acknowledged" if line["Role"] == "Acknowledger" else "Authorized"


_EDM_FACETS = {EDM_DECIMAL: ' Precision="130" Scale="65"', EDM_STRING: ' MaxLength="4000"'}
def metadata_document(projection: str, profile: str | Profile = "default") -> str:
    """The `$metadata` a profile serves for `projection`, without a server (tests and benchmarks)."""
    return edmx(projection, build_schema(get_profile(profile)).projections[projection])


def edmx(name: str, projection: ProjectionDef) -> str:
    ns = f"IfsApp.{name}"
    enums: dict[str, EnumType] = {}
    entities: list[tuple[EntityType, NavDef | None]] = []
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
