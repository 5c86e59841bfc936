"""Meeting the tenant: every configured name checked against the projection's `$metadata`, optional names
that do not exist left out (the source degrades, it does not fail), and each problem said as one line that
names the setting to change and the closest names the tenant has.

Only the keys, the company field, the state field and the fields that define "pending" are required; a
missing optional field (details, cost centre, net amount, dates, party name, site, the approval-lines
navigation) is left out of `$select` and the cards show what remains.
"""

from __future__ import annotations

import asyncio
import dataclasses
import difflib
import logging
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from core.clock import Clock, SystemClock
from core.domain import DEFAULT_DONE_STATES, RecordKind
from core.errors import AuthError, FatalRequestError, NotifierError, RetriableError
from core.links import odata_literal
from pollers.mapping import RecordMapper, etag_version, marker_version, version_marker
from pollers.metadata import DATE_TYPES, NUMERIC_TYPES, Metadata, MetadataError, parse_metadata
from pollers.sources import DEFAULT_SOURCES, SourceSpec

log = logging.getLogger(__name__)

METADATA_REFRESH_SECONDS = 24 * 3600
VERSIONS_RETRY_SECONDS = 3600  # an entity set without a row to try odata.metadata=none on is asked again after this
DEFAULT_VERSION_FIELD = "Objversion"

# Names IFS releases and customisations are known or likely to use, best first. Discovery picks from these
# (and checks the type); validation suggests from them before falling back to names that merely look alike.
CANDIDATES: dict[str, tuple[str, ...]] = {
    "company_field": ("Company", "CompanyId", "CompanyCode"),
    "state_field": ("Objstate", "State", "Status", "Rowstate", "OrderState", "InvoiceState", "VoucherState",
                    "ApprovalStatus"),
    "party_id": ("VendorNo", "SupplierId", "Identity", "SupplierNo", "Supplier", "VendorId"),
    "party_name": ("VendorName", "SupplierName", "IdentityName", "Name"),
    "amount": ("GrossAmtCurr", "GrossCurrAmount", "GrossAmount", "TotalGrossAmount", "AmountInAccCurr",
               "TotalAmount", "Amount", "InvoiceAmount", "OrderTotal", "SumDebitAmount"),
    "net_amount": ("NetCurrAmount", "NetAmtCurr", "NetAmount", "TotalNetAmount"),
    "currency": ("CurrencyCode", "Currency", "AccCurrencyCode", "CurrCode", "CurrencyId"),
    "doc_date": ("OrderDate", "InvoiceDate", "VoucherDate", "DocumentDate", "DateEntered", "DateReg"),
    "due_date": ("DueDate", "PaymentDueDate", "PayDate"),
    "cost_center": ("CostCenter", "CostCentre", "CostCenterId", "CodeB"),
    "site": ("Contract", "Site", "SiteId"),
    "approvals.sequence": ("SequenceNo", "LineNo", "Sequence", "StepNo", "RouteNo", "Seq"),
    "approvals.approver": ("AuthorizeId", "Authorizer", "AuthorizerId", "Approver", "ApproverId", "UserId",
                           "Userid", "ApproverSign"),
    "approvals.status": ("Objstate", "Status", "State", "LineState"),
    "approvals.role": ("Route", "Role", "AuthorizerRole", "ApproverRole", "ApprovalRule", "AuthorizeGroupId"),
    "approvals.decided_at": ("DateApproved", "AuthorizedDate", "ApprovedDate", "ApprovedAt", "DecisionDate",
                             "DecidedAt", "ApprovalDate", "AuthorizeDate", "SignedAt"),
}
# kind-specific names for the party of a voucher (who entered it) and for the invoice's awaiting-authorization
# marker (IFS: posting proposal head message_id = 'AWAITAUTH', exposed under various names)
VOUCHER_PARTY = ("Userid", "UserId", "EnteredBy", "CreatedBy", "UserName")
AUTH_MARKER_FIELDS = ("AuthStatus", "AuthorizationStatus", "MessageId", "AuthStat", "PostingProposalStatus")
AUTH_MARKER_VALUE = "AWAITAUTH"
# the card's detail lines by label, with the names tenants give their fields
DETAILS: dict[str, tuple[str, ...]] = {
    "Supplier invoice no": ("InvoiceNo", "SupplierInvoiceNo", "SuppInvoiceNo"),
    "Recipient": ("InvoiceRecipient", "Recipient"),
    "PO ref": ("PoRefNumber", "PurchaseOrderRef", "PoRef", "PurchaseOrderNo"),
    "Buyer": ("BuyerCode", "Buyer", "BuyerId"),
    "Coordinator": ("AuthorizeCode", "Coordinator", "AuthorizeId"),
    "Voucher type": ("VoucherType",),
    "Accounting year": ("AccountingYear",),
    "Entered by": ("Userid", "UserId", "EnteredBy", "CreatedBy"),
    "User group": ("UserGroup", "UserGroupId"),
    "Text": ("VoucherText2", "Text", "VoucherText", "Description"),
    "First approval by": ("ApprovedByUserid", "FirstApprover", "ApprovedBy"),
}
PENDING_STATES = ("Planned", "Preliminary", "AwaitingApproval", "AwaitingAuthorization", "PartiallyApproved",
                  "AwaitAuth", "PendingApproval", "Pending")
OPTIONAL_SCALARS = ("party_id", "party_name", "amount", "net_amount", "currency", "doc_date", "due_date",
                    "cost_center", "site", "step_field")
_TYPE_WANTED = {"amount": NUMERIC_TYPES, "net_amount": NUMERIC_TYPES, "doc_date": DATE_TYPES,
                "due_date": DATE_TYPES}


@dataclass(frozen=True)
class Problem:
    """One thing the tenant does not have as configured, said as the setting to change."""

    kind: RecordKind
    setting: str  # e.g. "details", "approvals.navigation", "entity_set"
    message: str  # e.g. "InvoiceRecipient does not exist in ManSuppInvoiceSet"
    fatal: bool  # the source cannot be polled until this is fixed
    suggestions: tuple[str, ...] = ()
    ifs_message: str = ""  # IFS's own words, in full, where IFS said something
    meanwhile: str = "left out meanwhile"  # what the service does until it is fixed (not fatal)

    def line(self) -> str:
        out = f"[sources.{self.kind.value}] {self.setting}: {self.message}"
        if self.suggestions:
            out += f"; did you mean {_either(self.suggestions)}?"
        if not self.fatal:
            out += f" ({self.meanwhile})"
        if self.ifs_message:
            out += f" IFS said: {self.ifs_message}"
        return out


@dataclass(frozen=True)
class Validation:
    spec: SourceSpec  # what will be polled: the configured source with the names that do not exist left out
    problems: tuple[Problem, ...] = ()

    @property
    def fatal(self) -> bool:
        return any(p.fatal for p in self.problems)

    @property
    def fix(self) -> str | None:
        """The first fatal problem's line: what `status` shows for a source that cannot be polled."""
        return next((p.line() for p in self.problems if p.fatal), None)


def _either(names: Iterable[str]) -> str:
    names = list(names)
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def suggest(name: str, existing: Iterable[str], preferred: Iterable[str] = (), *,
            accept: Callable[[str], bool] = lambda _n: True) -> tuple[str, ...]:
    """The closest existing names: the known alternatives the tenant has, then look-alikes."""
    existing = [n for n in existing if accept(n)]
    have = set(existing)
    picks = [p for p in preferred if p in have and p != name]
    picks += difflib.get_close_matches(name, existing, n=3, cutoff=0.75)
    lowered = {n.lower(): n for n in existing}
    if name.lower() in lowered:
        picks.insert(0, lowered[name.lower()])
    return tuple(dict.fromkeys(picks))[:3]


def validate(spec: SourceSpec, md: Metadata) -> Validation:
    """Check every name `spec` uses against the projection's metadata; see the module docstring."""
    kind = spec.kind
    problems: list[Problem] = []

    def problem(setting: str, message: str, fatal: bool, suggestions: tuple[str, ...] = (),
                meanwhile: str = "left out meanwhile") -> None:
        problems.append(Problem(kind, setting, message, fatal, suggestions, meanwhile=meanwhile))

    entity = md.entity(spec.entity_set)
    if entity is None:
        sets = [s for s in md.entity_sets if not s.startswith("Reference_")] or list(md.entity_sets)
        problem("entity_set", f"{spec.entity_set} does not exist in {spec.projection}", True,
                suggest(spec.entity_set, sets))
        return Validation(spec, tuple(problems))
    props = entity.properties
    where = spec.entity_set
    # suggestions never name a field another setting already reads as something else (a detail line may
    # show the same field: that is no reason not to suggest it)
    in_use = {spec.company_field, spec.state_field, *(k for k, _ in spec.keys), *spec.number,
              *(getattr(spec, a) for a in OPTIONAL_SCALARS if getattr(spec, a))}
    free = {n: t for n, t in props.items() if n not in in_use}

    def candidates(setting: str) -> tuple[str, ...]:
        return (*VOUCHER_PARTY, *CANDIDATES["party_id"]) if setting == "party_id" and kind is RecordKind.VOUCHER \
            else CANDIDATES.get(setting, ())

    def exists(setting: str, name: str, fatal: bool, kinds: frozenset[str] | None = None) -> bool:
        if name in props:
            if kinds is None or props[name] in kinds:
                return True
            problem(setting, f"{name} is {props[name]} in {where}, not {'a number' if kinds is NUMERIC_TYPES else 'a date'}",
                    fatal, suggest(name, free, candidates(setting), accept=lambda n: props[n] in kinds))
            return False
        problem(setting, f"{name} does not exist in {where}", fatal,
                suggest(name, free, candidates(setting),
                        accept=(lambda n: props[n] in kinds) if kinds is not None else (lambda _n: True)))
        return False

    # required: without these a listing, a key or "pending" cannot be read
    for setting, name in (("company_field", spec.company_field), ("state_field", spec.state_field)):
        exists(setting, name, True)
    key_names = [k for k, _ in spec.keys]
    if all(k in props for k in key_names) and entity.keys and set(key_names) != set(entity.keys):
        problem("keys", f"({', '.join(key_names)}) is not the key of {where}", True,
                (_keys_toml(entity.keys, props),))
    else:
        for name in key_names:
            exists("keys", name, True)
    for name, typ in spec.keys:
        if name in props and (typ == "int") != (props[name] in NUMERIC_TYPES):  # IFS keys are often Edm.Decimal
            problem("keys", f"{name} is {props[name]}, so its key type is {'int' if typ == 'str' else 'str'}",
                    True, (_keys_toml(entity.keys or tuple(key_names), props),))
    for name, _value in spec.pending_equals:
        exists("pending_equals", name, True)
    changes: dict[str, object] = {}

    # the state: an enum type (literals must be qualified with it) or plain text
    state_type = props.get(spec.state_field)
    if state_type is not None:
        members = md.enums.get(state_type)
        if members is not None:
            if spec.enum_type != state_type:
                problem("enum_type", f"{spec.enum_type or '(none)'} is not the type of {spec.state_field}", False,
                        meanwhile=f"its type {state_type} used meanwhile")
                changes["enum_type"] = state_type
            known = [s for s in spec.pending_states if s in members]
            if spec.pending_states and not known:
                problem("pending_states", f"none of {', '.join(spec.pending_states)} is a member of {state_type}",
                        True, tuple(m for m in members if m in PENDING_STATES) or members[:3])
            elif len(known) < len(spec.pending_states):
                unknown = [s for s in spec.pending_states if s not in members]
                problem("pending_states", f"{', '.join(unknown)} not a member of {state_type}", False,
                        tuple(m for m in members if m in PENDING_STATES))
                changes["pending_states"] = tuple(known)
        elif spec.enum_type:
            problem("enum_type", f"{spec.state_field} is {state_type}, not an enum", False,
                    meanwhile="plain text literals used meanwhile")
            changes["enum_type"] = ""

    # optional: left out when missing, so the rest of the card still arrives
    for attr in OPTIONAL_SCALARS:
        name = getattr(spec, attr)
        if name and not exists(attr, name, False, _TYPE_WANTED.get(attr)):
            changes[attr] = None
    number = tuple(n for n in spec.number if n in props)
    if number != spec.number:
        for n in spec.number:
            if n not in props:
                exists("number", n, False)
        changes["number"] = number or tuple(key_names)
    details = tuple((label, f) for label, f in spec.details if f in props)
    for label, f in spec.details:
        if f not in props:
            problem("details", f"{f} ({label}) does not exist in {where}", False,
                    suggest(f, free, DETAILS.get(label, ())))
    if details != spec.details:
        changes["details"] = details
    extra = tuple(f for f in spec.extra_select if f in props)
    for f in spec.extra_select:
        if f not in props:
            exists("extra_select", f, False)
    if extra != spec.extra_select:
        changes["extra_select"] = extra
    if spec.version_field and spec.version_field not in props:
        if spec.version_field != DEFAULT_VERSION_FIELD:  # Objversion is absent from many sets: nothing to fix
            problem("version_field", f"{spec.version_field} does not exist in {where}", False,
                    suggest(spec.version_field, free, ("Objversion", "Rowversion")),
                    meanwhile="etags compared meanwhile")
        changes["version_field"] = None
    if spec.row_versions:
        changes["row_versions"] = False  # found out at run time, by TenantSchema.validate
    link_keys = tuple(k for k in spec.link_keys if k in key_names)
    if link_keys != spec.link_keys:
        problem("link_keys", f"{', '.join(set(spec.link_keys) - set(link_keys))} not among the keys", False,
                tuple(key_names))
        changes["link_keys"] = link_keys
    if spec.approvals is not None:
        changes.update(_validate_approvals(spec, md, entity, problem))
    return Validation(dataclasses.replace(spec, **changes) if changes else spec, tuple(problems))


def _validate_approvals(spec: SourceSpec, md: Metadata, entity, problem) -> dict[str, object]:
    a = spec.approvals
    assert a is not None
    collections = [n for n, (_t, many) in entity.navigations.items() if many]
    target = md.navigation_target(entity, a.navigation)
    if target is None:
        problem("approvals.navigation", f"{a.navigation} is not a navigation of {spec.entity_set}: cards come"
                " without the approval chain", False,
                suggest(a.navigation, collections, [n for n in collections if "approv" in n.lower()
                                                    or "authoriz" in n.lower()]))
        return {"approvals": None}
    lines = target.properties
    for setting, name in (("approvals.sequence", a.sequence), ("approvals.approver", a.approver)):
        if name not in lines:
            problem(setting, f"{name} does not exist in {a.navigation}: cards come without the approval chain",
                    False, suggest(name, lines, CANDIDATES[setting]))
            return {"approvals": None}
    optional: dict[str, str | None] = {}
    for setting, name in (("approvals.status", a.status), ("approvals.role", a.role),
                          ("approvals.decided_at", a.decided_at)):
        if name and name not in lines:
            problem(setting, f"{name} does not exist in {a.navigation}", False,
                    suggest(name, lines, CANDIDATES[setting]))
            optional[setting.split(".")[1]] = None
    return {"approvals": dataclasses.replace(a, **optional)} if optional else {}


def _keys_toml(keys: Iterable[str], props: Mapping[str, str]) -> str:
    return "keys = [" + ", ".join(f'["{k}", "{"int" if props.get(k) in NUMERIC_TYPES else "str"}"]'
                                  for k in keys) + "]"


def projection_missing(spec: SourceSpec, exc: NotifierError, alternatives: tuple[str, ...] = ()) -> Validation:
    return Validation(spec, (Problem(spec.kind, "projection", f"{spec.projection} does not exist on this tenant"
                                     " (or the service user may not read it)", True, alternatives,
                                     ifs_message=_ifs_words(exc)),))


def _ifs_words(exc: BaseException) -> str:
    text = str(exc)
    return text.split(": ", 1)[1] if " answered " in text and ": " in text else text


# --------------------------------------------------------------------------- metadata cache


class TenantSchema:
    """The tenant's `$metadata` per projection, fetched when first needed, refreshed daily and whenever IFS
    rejects a query that names a property or type (a tenant upgrade or customisation moved a name)."""

    def __init__(self, client, sources: Mapping[RecordKind, SourceSpec], *, clock: Clock | None = None,
                 refresh_seconds: float = METADATA_REFRESH_SECONDS, log_problems: bool = True) -> None:
        self.client = client
        self._log = log_problems
        self.sources = dict(sources)
        self._clock = clock or SystemClock()
        self._refresh = refresh_seconds
        self._metadata: dict[str, tuple[float, Metadata | FatalRequestError]] = {}  # or a 404 answered
        self._validations: dict[RecordKind, Validation] = {}
        self._versions: dict[tuple[str, str, str], tuple[float, bool]] = {}  # (projection, set, field) -> (until, ok)
        # the start-up check and the first poll ask at once: fetch a projection's $metadata once, and try
        # odata.metadata=none once per entity set; other projections and sets are not held up meanwhile
        self._fetching: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._probing: defaultdict[tuple[str, str, str], asyncio.Lock] = defaultdict(asyncio.Lock)

    def invalidate(self, projection: str | None = None) -> None:
        if projection is None:
            self._metadata.clear()
            self._versions.clear()
        else:
            self._metadata.pop(projection, None)
            for found in [k for k in self._versions if k[0] == projection]:
                del self._versions[found]

    async def metadata(self, projection: str) -> Metadata:
        async with self._fetching[projection]:
            cached = self._metadata.get(projection)
            now = self._clock.monotonic()
            if cached is not None and now - cached[0] < self._refresh:
                if isinstance(cached[1], FatalRequestError):  # (raised afresh: no traceback piling up on it)
                    raise cached[1].with_traceback(None)
                return cached[1]
            try:
                md = parse_metadata(projection, await self.client.metadata(projection))
            except MetadataError as exc:
                raise FatalRequestError(str(exc), status=200) from None
            except FatalRequestError as exc:
                if exc.status == 404:  # a projection the tenant lacks: not asked again before the refresh
                    self._metadata[projection] = (now, exc)
                raise
            self._metadata[projection] = (now, md)
            return md

    async def validate(self, kind: RecordKind) -> Validation:
        """The source as it can be polled; problems are logged once each time they change. Raises
        RetriableError / AuthError when IFS cannot be asked (the poll will say so itself)."""
        spec = self.sources[kind]
        try:
            validation = validate(spec, await self.metadata(spec.projection))
        except FatalRequestError as exc:
            if exc.status != 404:
                raise
            validation = projection_missing(spec, exc, await self._projections_for(kind))
        if not validation.fatal and validation.spec.version_field and await self.row_versions(validation.spec):
            validation = Validation(dataclasses.replace(validation.spec, row_versions=True), validation.problems)
        previous = self._validations.get(kind)
        if self._log and (previous is None or previous.problems != validation.problems):
            for p in validation.problems:
                log.log(logging.ERROR if p.fatal else logging.WARNING, "%s", p.line(), extra={"source": kind.value})
            if previous is not None and previous.problems and not validation.problems:
                log.info("[sources.%s] every configured name exists now", kind.value, extra={"source": kind.value})
        self._validations[kind] = validation
        return validation

    async def row_versions(self, spec: SourceSpec) -> bool:
        """Whether listings of `spec` may carry its version column instead of each row's `@odata.etag`: asked of
        IFS once per `$metadata` refresh with two one-row reads. The first (as today, `odata.metadata=minimal`)
        shows that the row's etag carries that version, `W/"base64('W/"objid:objversion"')"`, so records seen
        with etags are matched to their versions without looking changed; the second shows that the tenant
        honours `odata.metadata=none` (no `@odata.etag`, the version column there). Anything else: etags, as
        before. Retriable errors propagate (the poll keeps what it had)."""
        async with self._probing[(spec.projection, spec.entity_set, spec.version_field or "")]:
            return await self._row_versions(spec)

    async def _row_versions(self, spec: SourceSpec) -> bool:
        field_name = spec.version_field
        assert field_name
        cache = (spec.projection, spec.entity_set, field_name)
        now = self._clock.monotonic()
        known = self._versions.get(cache)
        if known is not None and now < known[0]:
            return known[1]
        select = [*(k for k, _ in spec.keys), field_name]
        ok, why = False, ""
        try:
            rows = await self.client.sample(spec.projection, spec.entity_set, select=select, top=1)
            if not rows:
                why = "no row to try it on yet"
            else:
                marker = version_marker(rows[0].get(field_name))
                etag = rows[0].get("@odata.etag")
                if marker is None:
                    why = f"{field_name} holds {type(rows[0].get(field_name)).__name__}, not a row version"
                elif not isinstance(etag, str) or etag_version(etag) != marker_version(marker):
                    why = f"the rows' @odata.etag does not carry {field_name}"
                else:
                    bare = await self.client.sample(spec.projection, spec.entity_set, select=select, top=1,
                                                    no_metadata=True)
                    if not bare:
                        why = "odata.metadata=none answered no row"
                    elif "@odata.etag" in bare[0] or version_marker(bare[0].get(field_name)) is None:
                        why = "odata.metadata=none is not honoured (rows still carry @odata.etag)"
                    else:
                        ok = True
        except FatalRequestError as exc:
            why = f"IFS refused the check: {_ifs_words(exc)}"
        retry = VERSIONS_RETRY_SECONDS if why == "no row to try it on yet" else self._refresh
        self._versions[cache] = (now + retry, ok)
        where = f"{spec.projection}.svc/{spec.entity_set}"
        if ok:
            log.info("[sources.%s] listings of %s carry %s instead of each row's etag (odata.metadata=none)",
                     spec.kind.value, where, field_name, extra={"source": spec.kind.value})
        else:
            log.info("[sources.%s] listings of %s carry each row's etag: %s", spec.kind.value, where, why,
                     extra={"source": spec.kind.value})
        return ok

    async def _projections_for(self, kind: RecordKind) -> tuple[str, ...]:
        """The known projection names for `kind` that this tenant serves (probed by their $metadata)."""
        found = []
        for name in PROJECTIONS[kind]:
            try:
                md = await self.metadata(name)
            except (FatalRequestError, RetriableError):
                continue
            if any(_score(kind, name, s, md.entity(s), md) > 0 for s in md.entity_sets if md.entity(s)):
                found.append(name)
        return tuple(found)

    def last(self, kind: RecordKind) -> Validation | None:
        return self._validations.get(kind)


# --------------------------------------------------------------------------- connection problems, said once


def connection_problem(exc: BaseException, *, base_url: str, realm: str) -> str:
    """One line an admin can act on for a failure to reach IFS or to get a token."""
    text = str(exc)
    if isinstance(exc, AuthError):
        if exc.status == 404:
            if "realm does not exist" in text.lower():
                return f"ifs.realm: realm {realm!r} does not exist at {base_url} (IAM said: Realm does not exist)"
            return (f"ifs.base_url: {base_url} does not look like IFS Cloud: no IAM answers at"
                    f" /auth/realms/{realm}/ (HTTP 404); check ifs.base_url and ifs.realm")
        return (f"IFS IAM refused the credentials: check ifs.client_id / ifs.client_secret (`secrets set`) and"
                f" that the IAM client has Service Accounts Enabled ({text})")
    if isinstance(exc, FatalRequestError) and "/auth/realms/" in text:
        return (f"ifs.base_url: {base_url} does not look like IFS Cloud: its IAM token endpoint answered"
                f" {text.split(' answered ', 1)[-1] if ' answered ' in text else text}")
    if isinstance(exc, RetriableError):
        return f"IFS unreachable at {base_url}: {text}"
    return f"IFS: {text}"


# --------------------------------------------------------------------------- check: what a poll runs


Line = tuple[str, str]  # ("ok" | "warn" | "FAIL", text)


def blame(spec: SourceSpec, exc: BaseException, what: str) -> str:
    """IFS rejected a query: name the setting that holds the name IFS complained about, with IFS's words."""
    text = _ifs_words(exc)
    named = re.findall(r"(?:property|type|member|segment|name) '([^']+)'", text)
    for name in named:
        short = name.rsplit(".", 1)[-1]
        for setting, value in _settings_naming(spec):
            if value in (name, short):
                return f"[sources.{spec.kind.value}] {setting}: IFS rejected {value} in the {what}. IFS said: {text}"
    return f"[sources.{spec.kind.value}] the {what} failed. IFS said: {text}"


def _settings_naming(spec: SourceSpec) -> list[tuple[str, str]]:
    out = [("company_field", spec.company_field), ("state_field", spec.state_field), ("enum_type", spec.enum_type),
           ("entity_set", spec.entity_set), ("projection", spec.projection)]
    out += [("keys", k) for k, _ in spec.keys] + [("number", n) for n in spec.number]
    out += [(a, getattr(spec, a)) for a in OPTIONAL_SCALARS if getattr(spec, a)]
    out += [("details", f) for _, f in spec.details] + [("pending_equals", f) for f, _ in spec.pending_equals]
    out += [("extra_select", f) for f in spec.extra_select]
    if spec.approvals is not None:
        a = spec.approvals
        out += [(f"approvals.{n}", getattr(a, n)) for n in ("navigation", "sequence", "approver", "status", "role",
                                                             "decided_at") if getattr(a, n)]
    return [(s, v) for s, v in out if v]


async def check_source(client, schema: TenantSchema, kind: RecordKind, company: str | None, *,
                       use_select: bool = True) -> list[Line]:
    """Validate the source's names, then run the poll's own listing query with `$top=1` (same `$filter`,
    `$select`, `$orderby`), one read by key and one approval-lines read."""
    spec = schema.sources[kind]
    try:
        validation = await schema.validate(kind)
    except NotifierError as exc:
        return [("FAIL", f"[sources.{kind.value}] projection: cannot read {spec.projection}.svc/$metadata:"
                         f" {_ifs_words(exc)}")]
    out: list[Line] = [("FAIL" if p.fatal else "warn", p.line()) for p in validation.problems]
    if validation.fatal:
        return out
    eff = validation.spec
    conditions = eff.filter_for(company) if company else " and ".join(eff.pending_conditions()) or None
    try:
        row = await client.probe(eff.projection, eff.entity_set, filter=conditions,
                                 select=eff.select if use_select else None, orderby=eff.orderby)
    except FatalRequestError as exc:
        return [*out, ("FAIL", blame(eff, exc, "listing query"))]
    where = f"{eff.projection}.svc/{eff.entity_set}"
    if row is None:
        scope = f"company {company}" if company else "any company"
        return [*out, ("ok", f"{kind.plural}: {where}: the listing query answers; no pending document for {scope}"
                             " to try a read by key on")]
    mapper = RecordMapper(eff, "")
    try:
        key, etag, keys = mapper.key_and_etag(row)
        mapper.stored(row, key, etag)
    except NotifierError as exc:
        out.append(("warn", f"[sources.{kind.value}] a pending row cannot be read: {exc} (such rows are set"
                            " aside and audited, the others are delivered)"))
        return out
    try:
        if await client.get_by_key(eff.projection, eff.entity_set, keys) is None:
            out.append(("warn", f"{kind.plural}: {where}({key}) was listed but a read by key found nothing"))
    except FatalRequestError as exc:
        return [*out, ("FAIL", blame(eff, exc, "read by key"))]
    read = "the listing query and a read by key answer"
    if eff.approvals is not None:
        try:
            lines = await client.get_collection(eff.projection, eff.entity_set, keys, eff.approvals.navigation)
            read = f"the listing query, a read by key and its approval lines ({len(lines)}) answer"
        except FatalRequestError as exc:
            out.append(("warn", blame(eff, exc, "approval-lines read") + " Cards will come without the chain."))
    return [*out, ("ok", f"{kind.plural}: {where}: {read} as a poll needs")]


# --------------------------------------------------------------------------- discover: propose a config

PROJECTIONS: dict[RecordKind, tuple[str, ...]] = {
    RecordKind.ORDER: ("PurchaseOrderHandling", "PurchaseOrdersHandling", "PurchaseOrderAuthorizationHandling",
                       "PurchaseOrderApprovalHandling"),
    RecordKind.INVOICE: ("ManualSupplierInvoiceHandling", "ManSuppInvoiceHandling", "SupplierInvoiceHandling",
                         "SupplierInvoicesHandling", "PostingProposalHandling", "InvoicesToAuthorizeHandling"),
    RecordKind.VOUCHER: ("ApproveVouchersHandling", "VoucherApprovalHandling", "VoucherHandling",
                         "VoucherEntryHandling"),
}
_HINTS = {RecordKind.ORDER: ("purchaseorder",), RecordKind.INVOICE: ("supplierinvoice", "mansuppinvoice",
                                                                      "invoice"),
          RecordKind.VOUCHER: ("voucher",)}
KIND_PENDING = {RecordKind.ORDER: ("Planned",), RecordKind.INVOICE: ("Preliminary",),
                RecordKind.VOUCHER: ("AwaitingApproval", "PartiallyApproved")}
SAMPLE_ROWS = 1000


@dataclass
class Proposal:
    kind: RecordKind
    values: dict[str, object]  # setting -> TOML value
    notes: dict[str, str]  # setting -> why, and the alternatives
    guesses: set[str]  # settings nothing matched well


async def catalogue(client) -> list[str] | None:
    """Projection names from `AllProjections.svc/Projections`, or None where the tenant has no catalogue."""
    try:
        rows = await client.sample("AllProjections", "Projections", top=10000)
    except FatalRequestError:
        return None
    names = []
    for row in rows:
        for k in ("ProjectionName", "Projection", "Name", "Id"):
            v = row.get(k)
            if isinstance(v, str) and v:
                names.append(v.removesuffix(".svc"))
                break
    return names


async def discover(client, *, company: str | None = None, progress: Callable[[str], None] = print,
                   base: Mapping[RecordKind, SourceSpec] | None = None) -> list[Proposal]:
    """Read the catalogue (or probe candidate names) and each candidate's `$metadata`; propose a source per
    kind. `base` gives the defaults the proposal starts from (link pages, labels)."""
    base = base or DEFAULT_SOURCES
    listed = await catalogue(client)
    progress(f"catalogue: {len(listed)} projections" if listed is not None
             else "catalogue: AllProjections.svc does not answer; probing known projection names")
    wanted: list[str] = []
    for kind, names in PROJECTIONS.items():
        wanted += names
        if listed:
            wanted += [n for n in listed if any(h in n.lower() for h in _HINTS[kind])]
    if listed is not None:
        present = set(listed)
        wanted = [n for n in wanted if n in present]
    metadata: dict[str, Metadata] = {}
    for name in dict.fromkeys(wanted):
        try:
            metadata[name] = parse_metadata(name, await client.metadata(name))
            md = metadata[name]
            progress(f"  {name}: {len(md.entity_sets)} entity sets, {len(md.enums)} enum types")
        except FatalRequestError as exc:
            if exc.status != 404:
                progress(f"  {name}: {_ifs_words(exc)}")
        except MetadataError as exc:
            progress(f"  {name}: {exc}")
    proposals = []
    for kind in RecordKind:
        proposals.append(await _propose(client, kind, metadata, company, base[kind]))
    return proposals


def _field(props: Mapping[str, str], names: Iterable[str], types: frozenset[str] | None = None) -> str | None:
    return next((n for n in names if n in props and (types is None or props[n] in types)), None)


def _score(kind: RecordKind, projection: str, entity_set: str, entity, md: Metadata) -> int:
    props = entity.properties
    if not (_field(props, CANDIDATES["company_field"]) and _field(props, CANDIDATES["state_field"])):
        return -1
    score = 0
    low_set, low_type = entity_set.lower(), entity.name.rsplit(".", 1)[-1].lower()
    if any(h in low_set for h in _HINTS[kind]):
        score += 6
    if any(h in low_type for h in _HINTS[kind]):
        score += 3
    if entity_set.startswith("Reference_") or "line" in low_set or "row" in low_set:
        score -= 10
    if projection in PROJECTIONS[kind]:
        score += 4 - min(3, PROJECTIONS[kind].index(projection))
    score += bool(_field(props, CANDIDATES["amount"], NUMERIC_TYPES)) + bool(entity.navigations)
    state = props.get(_field(props, CANDIDATES["state_field"]) or "")
    members = md.enums.get(state or "", ())
    if any(m in KIND_PENDING[kind] for m in members):
        score += 3
    return score


async def _propose(client, kind: RecordKind, metadata: Mapping[str, Metadata], company: str | None,
                   default: SourceSpec) -> Proposal:
    ranked = sorted(((_score(kind, p, s, md.entity(s), md), p, s) for p, md in metadata.items()
                     for s in md.entity_sets if md.entity(s) is not None), reverse=True)
    ranked = [r for r in ranked if r[0] >= 0]
    if not ranked:
        return Proposal(kind, {"enabled": False}, {"enabled": "no projection with a company and a state field"
                                                   " found for this kind"}, {"enabled"})
    _, projection, entity_set = ranked[0]
    md = metadata[projection]
    entity = md.entity(entity_set)
    assert entity is not None
    props = entity.properties
    values: dict[str, object] = {}
    notes: dict[str, str] = {}
    guesses: set[str] = set()
    others = [f"{p}.svc/{s}" for score, p, s in ranked[1:4] if score >= 6]
    values["projection"] = projection
    values["entity_set"] = entity_set
    notes["entity_set"] = "best match" + (f"; also considered {', '.join(others)}" if others else "")
    values["keys"] = [[k, "int" if props.get(k) in NUMERIC_TYPES else "str"] for k in entity.keys]
    notes["keys"] = "the entity set's <Key>"
    company_field = _field(props, CANDIDATES["company_field"]) or "Company"
    state_field = _field(props, CANDIDATES["state_field"]) or "Objstate"
    values["company_field"], values["state_field"] = company_field, state_field
    state_type = props.get(state_field, "")
    members = md.enums.get(state_type)
    if members is not None:
        values["enum_type"] = state_type
        pending = [m for m in KIND_PENDING[kind] if m in members] or [m for m in members if m in PENDING_STATES]
        notes["pending_states"] = f"members of {state_type.rsplit('.', 1)[-1]}: {', '.join(members)}"
    else:
        values["enum_type"] = ""
        notes["enum_type"] = f"{state_field} is {state_type or 'untyped'}: plain text, no enum type"
        counts = await _distinct(client, projection, entity_set, state_field, company_field, company)
        # IFS's pending values for the kind, whether or not this sample holds each; else what looks pending
        pending = list(KIND_PENDING[kind]) if any(v in counts for v in KIND_PENDING[kind]) else \
            [v for v in counts if v in PENDING_STATES]
        seen = ", ".join(f"{v} ({n})" for v, n in sorted(counts.items(), key=lambda x: -x[1])[:8])
        notes["pending_states"] = f"values in a sample of {sum(counts.values())} rows: {seen or 'none'}"
    if not pending:
        pending = list(KIND_PENDING[kind])
        guesses.add("pending_states")
    values["pending_states"] = pending
    if kind is RecordKind.INVOICE:
        marker = _field(props, AUTH_MARKER_FIELDS)
        if marker:
            values["pending_equals"] = [[marker, AUTH_MARKER_VALUE]]
            notes["pending_equals"] = "awaiting authorization: the posting proposal's AWAITAUTH marker"
            sample = await _distinct(client, projection, entity_set, marker, company_field, company)
            if sample and AUTH_MARKER_VALUE not in sample:
                guesses.add("pending_equals")
        else:
            values["pending_equals"] = []
            notes["pending_equals"] = "no awaiting-authorization marker field found: every pending state counts"
    number = [n for n in default.number if n in props] or [k for k in entity.keys if k != company_field] \
        or list(entity.keys)
    values["number"] = number
    for attr in OPTIONAL_SCALARS:
        if attr == "step_field":
            continue
        names: tuple[str, ...] = CANDIDATES[attr]
        if attr == "party_id" and kind is RecordKind.VOUCHER:
            names = VOUCHER_PARTY
        wanted = getattr(default, attr)
        found = _field(props, ((wanted,) if wanted else ()) + names, _TYPE_WANTED.get(attr))
        values[attr] = found if found else False
        if not found:
            notes[attr] = "nothing matched: left out"
        else:
            alts = [n for n in names if n in props and n != found][:3]
            if alts:
                notes[attr] = f"also present: {', '.join(alts)}"
    values["step_field"] = state_field if default.step_field else False
    details, dropped = [], []
    for label, f in default.details:
        found = _field(props, (f, *DETAILS.get(label, ())))
        if found:
            details.append([label, found])
        else:
            dropped.append(label)
    values["details"] = details
    if dropped:
        notes["details"] = f"nothing in {entity_set} for: {', '.join(dropped)}"
    values["approvals"] = _propose_approvals(md, entity, notes, guesses)
    values["link_page"] = default.link_page
    values["list_page"] = default.list_page
    notes["link_page"] = "web client pages cannot be read from the API: check IFS's \"Copy link\" on a record"
    guesses.update({"link_page", "list_page"})
    link_keys = [k for k in (default.link_keys or entity.keys) if k in entity.keys]
    values["link_keys"] = link_keys
    values["enabled"] = True
    return Proposal(kind, values, notes, guesses)


def _propose_approvals(md: Metadata, entity, notes: dict[str, str], guesses: set[str]) -> object:
    navs = [n for n, (_t, many) in entity.navigations.items() if many]
    chosen = next((n for n in navs if "approv" in n.lower() or "authoriz" in n.lower()), None)
    if chosen is None:
        notes["approvals"] = "no approval-lines navigation" + (f" (collections: {', '.join(navs)})" if navs else "")
        return False
    target = md.navigation_target(entity, chosen)
    assert target is not None
    lines = target.properties
    table: dict[str, object] = {"navigation": chosen}
    for part in ("sequence", "approver", "status", "role", "decided_at"):
        found = _field(lines, CANDIDATES[f"approvals.{part}"])
        table[part] = found if found else False
    if not (table["sequence"] and table["approver"]):
        notes["approvals"] = f"{chosen} has no sequence/approver fields that match"
        guesses.add("approvals")
        return False
    status_type = lines.get(str(table["status"])) if table["status"] else None
    members = md.enums.get(status_type or "")
    if members:
        table["done_states"] = [m for m in members if m in DEFAULT_DONE_STATES] or list(DEFAULT_DONE_STATES)
    notes["approvals"] = f"navigation {chosen}" + (f"; other collections: {', '.join(n for n in navs if n != chosen)}"
                                                   if len(navs) > 1 else "")
    return table


async def _distinct(client, projection: str, entity_set: str, field_name: str, company_field: str,
                    company: str | None) -> dict[str, int]:
    """Distinct values of a field in a sample of rows, with their counts."""
    try:
        rows = await client.sample(projection, entity_set, select=[field_name],
                                   filter=f"{company_field} eq {odata_literal(company)}" if company else None,
                                   top=SAMPLE_ROWS)
    except FatalRequestError:
        return {}
    return dict(Counter(str(r.get(field_name)) for r in rows if r.get(field_name) not in (None, "")))


def render(proposals: Iterable[Proposal], *, header: str = "") -> str:
    """The proposals as `[sources.<kind>]` TOML tables, each choice with a comment; `# guess` where nothing
    matched well."""
    out = [header] if header else []
    for p in proposals:
        out.append(f"[sources.{p.kind.value}]")
        for setting, value in p.values.items():
            if setting == "approvals":
                continue
            out.append(_toml_line(setting, value, p.notes.get(setting), setting in p.guesses))
        approvals = p.values.get("approvals")
        if isinstance(approvals, dict):
            out.append(f"[sources.{p.kind.value}.approvals]" + (f"  # {p.notes['approvals']}"
                                                                 if "approvals" in p.notes else ""))
            for k, v in approvals.items():
                out.append(_toml_line(k, v, None, False))
        elif "approvals" in p.values:
            out.append(_toml_line("approvals", False, p.notes.get("approvals"), "approvals" in p.guesses))
        out.append("")
    return "\n".join(out)


def _toml_line(setting: str, value: object, note: str | None, guess: bool) -> str:
    comment = " # ".join(c for c in (("guess" if guess else ""), note or "") if c)
    return f"{setting} = {toml_value(value)}" + (f"  # {comment}" if comment else "")


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    return toml_value(str(value))
