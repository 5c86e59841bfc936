"""Tenant profiles: the names one IFS Cloud tenant serves, as data the simulator builds its schema from.

Real tenants differ by release and customisation, so the product's defaults (and the `default` profile,
which matches them) are only one possibility. A profile renames projections, entity sets, entity types,
enum types, fields and approval-line navigations, or drops fields and navigations, per record kind.
Rows are generated and driven with canonical names (the `default` ones) in every profile and renamed once
on the way in, so a test drives any profile alike: `KindNames.field` maps a canonical field name to the
profile's, and `to_profile` / `to_canonical` map whole rows.

Profiles (`-` = the field or navigation does not exist; fields not listed keep their canonical name):

==================== ============================= ============================= =============================
kind / item          default                       renamed                       lean
==================== ============================= ============================= =============================
order projection     PurchaseOrderHandling         PurchaseOrderHandling         PurchaseOrderHandling
order entity set     PurchaseOrderSet              PurchaseOrders                PurchaseOrderSet
order entity type    PurchaseOrder                 PurchaseOrderHead             PurchaseOrder
order state          Objstate: PurchaseOrderState  Status: Edm.String            Objstate: PurchaseOrderStatus
order key            OrderNo                       PurchaseOrderNo               OrderNo
order fields         VendorNo VendorName           SupplierId SupplierName       VendorNo, VendorName -
                     CurrencyCode GrossAmtCurr     Currency GrossAmount          CurrencyCode GrossAmtCurr
                     OrderDate Contract            DateEntered Site              OrderDate, Contract -
                     BuyerCode AuthorizeCode       Buyer Coordinator             BuyerCode AuthorizeCode
                     CostCenter                    CodeB                         CostCenter -
order lines          PurchaseOrderApprovalArray    ApprovalRouteArray            -
  line type          PurchaseOrderApproval         PurchaseOrderApprovalRoute    -
  line entity set    PurchaseOrderApprovalSet      PurchaseOrderApprovalRouteSet -
  line fields        OrderNo SequenceNo            PurchaseOrderNo StepNo        -
                     AuthorizeId ApproverSign      ApproverId SignedBy           -
                     DateApproved                  ApprovedAt                    -
invoice projection   ManualSupplierInvoiceHandling SupplierInvoiceHandling       ManSuppInvoiceHandling
invoice entity set   ManualSupplierInvoiceSet      SupplierInvoices              ManSuppInvoiceSet
invoice entity type  ManualSupplierInvoice         SupplierInvoice               ManSuppInvoice
invoice state        Objstate: ManSuppInvoiceState InvoiceState: Edm.String      Objstate: ManSuppInvoiceState
invoice auth marker  AuthStatus                    AuthorizationStatus           AuthStatus
invoice fields       Identity IdentityName         SupplierId SupplierName       Identity, IdentityName -
                     Currency GrossCurrAmount      CurrencyCode GrossAmount      Currency GrossCurrAmount
                     NetCurrAmount DueDate         NetAmount DueDate             NetCurrAmount -, DueDate -
                     InvoiceNo InvoiceRecipient    SupplierInvoiceNo Recipient   InvoiceNo, InvoiceRecipient -
                     PoRefNumber CostCenter        PurchaseOrderRef CodeB        PoRefNumber -, CostCenter -
invoice lines        AuthorizerArray               PostingAuthorizerArray        -
  line type          PostingProposalAuth           InvoiceAuthorizer             -
  line entity set    PostingProposalAuthSet        InvoiceAuthorizerSet          -
  line state         Objstate: AuthorizerLineState LineState: Edm.String         -
  line fields        Authorizer Role               AuthorizerId AuthorizerRole   -
                     AuthorizedDate                DecisionDate                  -
voucher projection   ApproveVouchersHandling       VoucherApprovalHandling       ApproveVouchersHandling
voucher entity set   VoucherApprovalSet            VouchersToApprove             VoucherApprovalSet
voucher entity type  VoucherApproval               VoucherToApprove              VoucherApproval
voucher state        Objstate: VoucherState        Objstate: Edm.String          Objstate: VoucherState
voucher fields       Userid AmountInAccCurr        EnteredBy Amount              Userid AmountInAccCurr
                     AccCurrencyCode VoucherText2  CurrencyCode Text             AccCurrencyCode
                                                                                 VoucherText2 -
                     SumDebitAmount                DebitTotal                    SumDebitAmount
                     SumCreditAmount               CreditTotal                   SumCreditAmount
                     DateReg CostCenter            EnteredDate CodeB             DateReg, CostCenter -
                     ApprovedByUserid              FirstApprover                 ApprovedByUserid
                     ApprovalDate                  FirstApprovalDate             ApprovalDate
                     SecondApproverId              SecondApprover                SecondApproverId
catalogue            AllProjections.svc/           - (404 Metadata not       AllProjections.svc/
                     Projections                   found.)                       Projections
decoy sets           -                             Reference_SupplierInfo,       Reference_SupplierInfo,
                                                   Reference_*StateLov,          Reference_CurrencyCode
                                                   Reference_VoucherType
==================== ============================= ============================= =============================

Every projection's $metadata also declares `Reference_Company`, as it always has. Each header set with
approval lines binds its navigation (`NavigationPropertyBinding`) to a line entity set that lists the lines
of every visible record. Decoy sets and the catalogue are queryable like the record sets. `Company` keeps
its name in every profile: the grant check reads it.

Objversion and `odata.metadata=none`: `default` declares Objversion on every set and honours
`odata.metadata=none`; `renamed` declares Objversion but answers `odata.metadata=none` as minimal (rows keep
their `@odata.etag`); `lean` honours it but its record sets do not declare Objversion (`$select` of it is 400).

`renamed` has no enum type anywhere: states are plain strings (`Status eq 'Planned'`), and a filter with
an enum literal answers 400 naming the undefined type, as IFS does. `lean` has enum types, some under
other names, but no approval-line navigation: `Set(keys)/AuthorizerArray` answers 404. The states and the
pending rule are IFS's in every profile: order Planned; invoice Preliminary with the awaiting-authorization
marker AWAITAUTH; voucher AwaitingApproval or PartiallyApproved.

`lean` sits behind a front end that answers 414 URI Too Long (a web page, not an OData error) to a request
target over 2,048 characters: a listing for many companies, or a batch of reads by key, has to be split.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from core.domain import RecordKind

# The simulator's own approval logic reads these; a profile may rename them but not drop them.
REQUIRED_FIELDS: Mapping[RecordKind, frozenset[str]] = MappingProxyType({
    RecordKind.ORDER: frozenset({"Objstate", "OrderNo", "Company"}),
    RecordKind.INVOICE: frozenset({"Objstate", "Company", "InvoiceId", "AuthStatus"}),
    RecordKind.VOUCHER: frozenset({
        "Objstate", "Company", "AccountingYear", "VoucherType", "VoucherNo", "VoucherDate",
        "TwoApproverRequired", "ApprovedByUserid", "ApprovalDate", "SecondApproverId", "SecondApprovalDate",
    }),
})
REQUIRED_LINE_FIELDS: Mapping[RecordKind, frozenset[str]] = MappingProxyType({
    RecordKind.ORDER: frozenset({"OrderNo", "ChgOrderNo", "SequenceNo", "ApproverSign", "DateApproved"}),
    RecordKind.INVOICE: frozenset({"Objstate", "Company", "InvoiceId", "LineNo", "Role", "AuthorizedDate"}),
})


def _frozen(mapping: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True)
class Renames:
    """Canonical -> profile field names; unlisted names are kept, None drops the field."""

    fields: Mapping[str, str | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "fields", _frozen(self.fields))
        served = [name for name in self.fields.values() if name is not None]
        if len(served) != len(set(served)):
            raise ValueError(f"two canonical fields map to one name in {dict(self.fields)}")

    def field(self, canonical: str) -> str | None:
        """The profile's name of a canonical field, or None when the profile has no such field."""
        return self.fields.get(canonical, canonical)

    def to_profile(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """A canonical row (or part of one) under the profile's names, without the fields it lacks."""
        get = self.fields.get
        return {name: value for key, value in row.items() if (name := get(key, key)) is not None}

    def to_canonical(self, row: Mapping[str, Any]) -> dict[str, Any]:
        back = {name: key for key, name in self.fields.items() if name is not None}
        get = back.get
        return {get(key, key): value for key, value in row.items()}


@dataclass(frozen=True)
class NavNames(Renames):
    """The approval-line navigation of a header type: its property name, line type and field names."""

    name: str = ""
    entity_type: str = ""
    state_enum: str | None = None  # short enum type name of the line state; None = Edm.String


@dataclass(frozen=True)
class KindNames(Renames):
    """Where and how one record kind is served."""

    projection: str = ""
    entity_set: str = ""
    entity_type: str = ""
    state_enum: str | None = None  # short enum type name; None = the state is a plain Edm.String
    nav: NavNames | None = None

    @property
    def state_field(self) -> str:
        name = self.field("Objstate")
        assert name is not None
        return name

    @property
    def enum_type(self) -> str | None:
        """The fully qualified state enum type (what a `$filter` literal names), or None."""
        return None if self.state_enum is None else f"IfsApp.{self.projection}.{self.state_enum}"

    @property
    def entity_type_name(self) -> str:
        return f"IfsApp.{self.projection}.{self.entity_type}"


@dataclass(frozen=True)
class StaticSet:
    """An entity set with fixed rows no poller wants, like the many `Reference_*` sets of IFS projections.

    `columns` is "Name Name:type ..." (type str by default, or int, decimal, date, bool); `rows` hold the
    values in column order."""

    projection: str
    name: str
    entity_type: str
    keys: str
    columns: str
    rows: tuple[tuple[Any, ...], ...]
    luname: str


@dataclass(frozen=True)
class CatalogueEntry:
    projection: str
    description: str
    api_class: str = "Standard"


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    kinds: Mapping[RecordKind, KindNames]
    static_sets: tuple[StaticSet, ...] = ()
    # None: AllProjections.svc does not exist, so a client has to probe projection names by $metadata.
    catalogue: tuple[CatalogueEntry, ...] | None = None
    # Whether `Accept: application/json;odata.metadata=none` is honoured (OData JSON 4.0: no @odata.context, no
    # @odata.etag, nextLink kept); False: answered as minimal, as a server that ignores the parameter would.
    metadata_none: bool = True
    # Whether the record sets declare Objversion in $metadata (rows always have one: their etags carry it).
    objversion: bool = True
    # A front end (proxy, gateway) that answers 414 URI Too Long, as a web page, to a longer request target
    # (path and query, as sent); None: no limit short of aiohttp's own.
    max_url: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "kinds", _frozen(self.kinds))
        for kind, names in self.kinds.items():
            if names.field("Company") != "Company":
                raise ValueError(f"profile {self.name}: {kind.value} must keep the Company field")
            lost = [f for f in REQUIRED_FIELDS[kind] if names.field(f) is None]
            if names.nav is not None:
                lost += [f"line {f}" for f in REQUIRED_LINE_FIELDS[kind] if names.nav.field(f) is None]
            if lost:
                raise ValueError(f"profile {self.name}: {kind.value} cannot drop {', '.join(sorted(lost))}")

    def __getitem__(self, kind: RecordKind | str) -> KindNames:
        return self.kinds[kind if isinstance(kind, RecordKind) else RecordKind.parse(kind)]

    def field(self, kind: RecordKind | str, canonical: str) -> str | None:
        """The profile's name of a canonical header field of `kind`, or None when it does not exist."""
        return self[kind].field(canonical)

    @property
    def projections(self) -> tuple[str, ...]:
        """The projections serving the record kinds, in kind order, without repeats."""
        return tuple(dict.fromkeys(names.projection for names in self.kinds.values()))


# ---------------------------------------------------------------- the profiles

PO_PROJECTION, INVOICE_PROJECTION, VOUCHER_PROJECTION = "PurchaseOrderHandling", "ManualSupplierInvoiceHandling", "ApproveVouchersHandling"
# every tenant's state values (the enum types' members, or a plain-text state's values), by kind
PO_STATES = "Planned Released Confirmed Arrived Received Closed Cancelled Stopped"
INVOICE_STATES = "Preliminary Posted PostedAuth PartlyPaidPosted PaidPosted Cancelled"
VOUCHER_STATES = "Waiting AwaitingApproval PartiallyApproved Confirmed Error Cancelled"

DEFAULT = Profile(
    "default",
    "The names the product's defaults assume.",
    {
        RecordKind.ORDER: KindNames(
            projection=PO_PROJECTION, entity_set="PurchaseOrderSet", entity_type="PurchaseOrder",
            state_enum="PurchaseOrderState",
            nav=NavNames(name="PurchaseOrderApprovalArray", entity_type="PurchaseOrderApproval"),
        ),
        RecordKind.INVOICE: KindNames(
            projection=INVOICE_PROJECTION, entity_set="ManualSupplierInvoiceSet", entity_type="ManualSupplierInvoice",
            state_enum="ManSuppInvoiceState",
            nav=NavNames(name="AuthorizerArray", entity_type="PostingProposalAuth",
                         state_enum="AuthorizerLineState"),
        ),
        RecordKind.VOUCHER: KindNames(
            projection=VOUCHER_PROJECTION, entity_set="VoucherApprovalSet", entity_type="VoucherApproval",
            state_enum="VoucherState",
        ),
    },
    catalogue=(
        CatalogueEntry(PO_PROJECTION, "Purchase Order"),
        CatalogueEntry(INVOICE_PROJECTION, "Manual Supplier Invoice"),
        CatalogueEntry(VOUCHER_PROJECTION, "Approve Vouchers"),
        CatalogueEntry("CustomerOrderHandling", "Customer Order"),
        CatalogueEntry("PostingProposalHandling", "Posting Proposal"),
        CatalogueEntry("VoucherRowsAnalysis", "Voucher Rows Analysis"),
        CatalogueEntry("HistoryLogHandling", "History Log", "Internal"),
    ),
)

_SUPPLIERS = (
    ("V1001", "Nordic Steel AB", "SEK"),
    ("V1002", "Acme Industrial Supply Inc.", "USD"),
    ("V1003", "Müller Hydraulik GmbH", "EUR"),
    ("V1005", "Thames Valley Logistics Ltd", "GBP"),
)
_CURRENCIES = (
    ("EUR", "Euro", 2), ("GBP", "Pound Sterling", 2), ("SEK", "Swedish Krona", 2), ("USD", "US Dollar", 2)
)


def _state_lov(projection: str, name: str, key: str, states: str) -> StaticSet:
    """A lookup of state values, as the client's state filters read them."""
    return StaticSet(projection, name, name.removeprefix("Reference_"), key, f"{key} Description",
                     tuple((s, s) for s in states.split()), "StateLov")


_R_INV, _R_VOU = "SupplierInvoiceHandling", "VoucherApprovalHandling"
RENAMED = Profile(
    "renamed",
    "A customised tenant: other projections, sets and fields, states as plain strings, no catalogue.",
    {
        RecordKind.ORDER: KindNames(
            projection=PO_PROJECTION, entity_set="PurchaseOrders", entity_type="PurchaseOrderHead",
            fields={"Objstate": "Status", "OrderNo": "PurchaseOrderNo", "VendorNo": "SupplierId",
                    "VendorName": "SupplierName", "CurrencyCode": "Currency", "GrossAmtCurr": "GrossAmount",
                    "OrderDate": "DateEntered", "Contract": "Site", "BuyerCode": "Buyer",
                    "AuthorizeCode": "Coordinator", "CostCenter": "CodeB"},
            nav=NavNames(name="ApprovalRouteArray", entity_type="PurchaseOrderApprovalRoute",
                         fields={"OrderNo": "PurchaseOrderNo", "SequenceNo": "StepNo",
                                 "AuthorizeId": "ApproverId", "ApproverSign": "SignedBy",
                                 "DateApproved": "ApprovedAt"}),
        ),
        RecordKind.INVOICE: KindNames(
            projection=_R_INV, entity_set="SupplierInvoices", entity_type="SupplierInvoice",
            fields={"Objstate": "InvoiceState", "InvoiceNo": "SupplierInvoiceNo", "Identity": "SupplierId",
                    "IdentityName": "SupplierName", "Currency": "CurrencyCode", "NetCurrAmount": "NetAmount",
                    "GrossCurrAmount": "GrossAmount", "InvoiceRecipient": "Recipient",
                    "PoRefNumber": "PurchaseOrderRef", "CostCenter": "CodeB",
                    "AuthStatus": "AuthorizationStatus"},
            nav=NavNames(name="PostingAuthorizerArray", entity_type="InvoiceAuthorizer",
                         fields={"Objstate": "LineState", "Authorizer": "AuthorizerId",
                                 "Role": "AuthorizerRole", "AuthorizedDate": "DecisionDate"}),
        ),
        RecordKind.VOUCHER: KindNames(
            projection=_R_VOU, entity_set="VouchersToApprove", entity_type="VoucherToApprove",
            fields={"Userid": "EnteredBy", "AmountInAccCurr": "Amount", "AccCurrencyCode": "CurrencyCode",
                    "VoucherText2": "Text", "SumDebitAmount": "DebitTotal", "SumCreditAmount": "CreditTotal",
                    "DateReg": "EnteredDate", "CostCenter": "CodeB", "ApprovedByUserid": "FirstApprover",
                    "ApprovalDate": "FirstApprovalDate", "SecondApproverId": "SecondApprover"},
        ),
    },
    static_sets=(
        StaticSet(PO_PROJECTION, "Reference_SupplierInfo", "SupplierInfo", "SupplierId", "SupplierId Name CurrencyCode",
                  _SUPPLIERS, "SupplierInfo"),
        _state_lov(PO_PROJECTION, "Reference_PurchaseOrderStatusLov", "Status",
                   PO_STATES),
        StaticSet(_R_INV, "Reference_SupplierInfo", "SupplierInfo", "SupplierId",
                  "SupplierId Name CurrencyCode", _SUPPLIERS, "SupplierInfo"),
        _state_lov(_R_INV, "Reference_SupplierInvoiceStateLov", "InvoiceState",
                   INVOICE_STATES),
        StaticSet(_R_VOU, "Reference_VoucherType", "VoucherType", "Company VoucherType",
                  "Company VoucherType Description",
                  (("10", "M", "Manual"), ("10", "J", "Journal"), ("10", "K", "Cash")), "VoucherType"),
        _state_lov(_R_VOU, "Reference_VoucherStateLov", "Objstate",
                   VOUCHER_STATES),
    ),
    metadata_none=False,
)

_L_INV = "ManSuppInvoiceHandling"
LEAN = Profile(
    "lean",
    "An older or trimmed tenant: enum types (some named differently), optional fields and lines missing,"
    " behind a proxy that refuses URLs over 2,048 characters.",
    {
        RecordKind.ORDER: KindNames(
            projection=PO_PROJECTION, entity_set="PurchaseOrderSet", entity_type="PurchaseOrder",
            state_enum="PurchaseOrderStatus",
            fields={"CostCenter": None, "VendorName": None, "Contract": None},
        ),
        RecordKind.INVOICE: KindNames(
            projection=_L_INV, entity_set="ManSuppInvoiceSet", entity_type="ManSuppInvoice",
            state_enum="ManSuppInvoiceState",
            fields={"NetCurrAmount": None, "DueDate": None, "IdentityName": None, "InvoiceRecipient": None,
                    "PoRefNumber": None, "CostCenter": None},
        ),
        RecordKind.VOUCHER: KindNames(
            projection=VOUCHER_PROJECTION, entity_set="VoucherApprovalSet", entity_type="VoucherApproval",
            state_enum="VoucherState",
            fields={"VoucherText2": None, "CostCenter": None, "DateReg": None},
        ),
    },
    objversion=False,
    max_url=2048,
    static_sets=(
        StaticSet(PO_PROJECTION, "Reference_SupplierInfo", "SupplierInfo", "SupplierId", "SupplierId Name CurrencyCode",
                  _SUPPLIERS, "SupplierInfo"),
        StaticSet(_L_INV, "Reference_CurrencyCode", "CurrencyCode", "Currency",
                  "Currency Description Decimals:int", _CURRENCIES, "CurrencyCode"),
        StaticSet(VOUCHER_PROJECTION, "Reference_CurrencyCode", "CurrencyCode", "Currency",
                  "Currency Description Decimals:int", _CURRENCIES, "CurrencyCode"),
    ),
    catalogue=(
        CatalogueEntry(PO_PROJECTION, "Purchase Order"),
        CatalogueEntry(_L_INV, "Supplier Invoice"),
        CatalogueEntry(VOUCHER_PROJECTION, "Approve Vouchers"),
        CatalogueEntry("CustomerOrderHandling", "Customer Order"),
        CatalogueEntry("SupplierHandling", "Supplier"),
        CatalogueEntry("PostingProposalHandling", "Posting Proposal"),
    ),
)

PROFILES: Mapping[str, Profile] = MappingProxyType({p.name: p for p in (DEFAULT, RENAMED, LEAN)})


def get_profile(profile: str | Profile) -> Profile:
    if isinstance(profile, Profile):
        return profile
    try:
        return PROFILES[profile]
    except KeyError:
        raise ValueError(f"unknown profile {profile!r} (known: {', '.join(PROFILES)})") from None
