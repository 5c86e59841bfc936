"""IFS Cloud stand-in: Keycloak token endpoint and IFS-shaped OData v4 projections over aiohttp, with faults.

This module owns the simulator's data and workflow (records, approval lines, approvals), the record
generator and the CLI (`python -m simulator.ifs`). The schema is in ifs_schema, generated rows in
ifs_fakedata, the HTTP side in ifs_http, faults in ifs_faults; their public names are importable here too.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import math
import operator
import random
import re
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from aiohttp import web

from core.domain import RecordKind
from simulator.ifs_fakedata import APPROVAL_RULES, USERS, FakeData
from simulator.ifs_faults import FaultPlan, RequestLog
from simulator.ifs_http import ODataHttp, PageCache, Token
from simulator.ifs_schema import (
    COMMON_COLUMNS,
    PROJECTION_ROOT,
    SETS,
    TABLE_NO,
    RowIds,
    SetDef,
    as_kind,
    build_schema,
    db_column,
    decode_etag,
    encode_etag,
    final_line_state,
    is_pending,
    metadata_document,
)
from simulator.odata_filter import (
    EDM_BOOLEAN,
    EDM_DATE,
    EDM_DECIMAL,
    EDM_INT,
    EDM_TIMESTAMP,
    EntityType,
    EnumType,
)
from simulator.profiles import PROFILES, Profile, get_profile

__all__ = ["SETS", "FaultPlan", "IfsSimulator", "PageCache", "RequestLog", "decode_etag", "describe_record",
           "encode_etag", "is_pending", "metadata_document", "run_generator"]


class IfsSimulator(FakeData, ODataHttp):
    """An IFS Cloud tenant with three approval projections, served over real HTTP.

    Data: `add_order` / `add_invoice` / `add_voucher` (pending by default), `update`, `approve`,
    `approve_step`, `remove`, `bulk_generate`; keys are dicts such as {"OrderNo": "P1001"} or
    {"Company": "10", "InvoiceId": 1001}. Every call returns a copy of the row under canonical names (as
    the default profile serves it).
    Observation: `requests` (every token and data request), `data_requests()`, `tokens_issued`, `stats()`.
    Failure: `faults`, `expire_all_tokens()`, and the constructor switches. Admin HTTP API under /_sim/.
    Tenant: `profile` ("default", "renamed", "lean" or a `simulator.profiles.Profile`) picks the names served;
    the data API takes and returns canonical (default) names in every profile, and `self.profile` tells the
    served ones, e.g. `sim.profile.field("order", "GrossAmtCurr")`.
    `page_cache` keeps encoded answers to repeated listing queries (the benchmarks pass one, so their
    floor is the client's work, not the simulator's)."""

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
        page_cache: PageCache | None = None,
    ) -> None:
        self.profile = get_profile(profile)
        self._schema = build_schema(self.profile)
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
        self._tokens: dict[str, Token] = {}
        self._rows: dict[RecordKind, dict[tuple[Any, ...], dict[str, Any]]] = {k: {} for k in SETS}
        self._children: dict[RecordKind, dict[tuple[Any, ...], list[dict[str, Any]]]] = {k: {} for k in SETS}
        self._rowids = {k: RowIds(TABLE_NO[k]) for k in SETS}
        self._child_rowids = {k: RowIds(TABLE_NO[k] + 7) for k in SETS}
        self._versions = dict.fromkeys(SETS, 0)
        self._cache: OrderedDict[tuple[Any, ...], list[dict[str, Any]]] = OrderedDict()
        self.page_cache = page_cache
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
        kind = as_kind(kind)
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
        sdef = self._sets[as_kind(kind)]
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
        sdef = self._sets[as_kind(kind)]
        row = self._rows[sdef.kind].get(self._key_tuple(sdef, key))
        return self._api_row(sdef.kind, row) if row is not None else None

    def rows(self, kind: RecordKind | str) -> list[dict[str, Any]]:
        kind = as_kind(kind)
        return [self._api_row(kind, r) for r in self._rows[kind].values()]

    def nav_rows(self, kind: RecordKind | str, key: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The approval lines of one record (PO approval rows, invoice authorizer lines; none for vouchers)."""
        sdef = self._sets[as_kind(kind)]
        return [self._api_row(sdef.kind, r, line=True) for r in self._nav_of(sdef, self._require(sdef, key))]

    def update(self, kind: RecordKind | str, key: Mapping[str, Any], **fields: Any) -> dict[str, Any]:
        """Change columns of one record; bumps Objversion so its etag changes."""
        sdef, base = self._sets[as_kind(kind)], SETS[as_kind(kind)]
        row = self._require(sdef, key)
        for name in fields:
            if name in base.keys:
                raise ValueError(f"key column {name} cannot be updated")
        return self._replace(sdef, row, self._served(sdef, self._coerce(base.entity, fields), strict=True))

    def _pending(self, kind: RecordKind | str, key: Mapping[str, Any]) -> tuple[SetDef, dict[str, Any]]:
        sdef = self._sets[as_kind(kind)]
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
        sdef = self._sets[as_kind(kind)]
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

    def _key_tuple(self, sdef: SetDef, key: Mapping[str, Any]) -> tuple[Any, ...]:
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
        self, sdef: SetDef, fields: Mapping[str, Any], line: bool = False, strict: bool = False
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

    def _require(self, sdef: SetDef, key: Mapping[str, Any]) -> dict[str, Any]:
        row = self._rows[sdef.kind].get(self._key_tuple(sdef, key))
        if row is None:
            raise KeyError(f"no {sdef.kind.value} with key {dict(key)}")
        return row

    @staticmethod
    def _key_text(sdef: SetDef, row: Mapping[str, Any]) -> str:
        return ",".join(f"{k}={row[k]}" for k in sdef.keys)

    def _coerce(self, entity: EntityType, fields: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, value in fields.items():
            type_ = entity.properties.get(name)
            if type_ is None or name in COMMON_COLUMNS:
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

    def _insert(self, sdef: SetDef, company: str, overrides: Mapping[str, Any]) -> dict[str, Any]:
        version = self._objversion()
        generated = next(self._generate(sdef.kind, company, 1, version))
        fields = {k: v for k, v in generated.items() if k not in COMMON_COLUMNS and k != "@odata.etag"}
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
        sdef: SetDef,
        fields: Mapping[str, Any],
        version: str,
        entity: EntityType | None = None,
        luname: str | None = None,
        objid: str | None = None,
    ) -> dict[str, Any]:
        entity = entity or sdef.entity
        objid = objid or self._rowids[sdef.kind].next()
        keyref = "".join(f"{db_column(k)}={fields[k]}^" for k in entity.keys)
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

    def _replace(self, sdef: SetDef, row: dict[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
        # Rows are replaced, never mutated, so cached query results stay consistent snapshots.
        version = self._objversion(row["Objversion"])
        new = {**row, **changes, "Objversion": version, "@odata.etag": encode_etag(row["Objid"], version)}
        self._rows[sdef.kind][tuple(new[k] for k in sdef.keys)] = new
        self._touch(sdef.kind)
        return self._api_row(sdef.kind, new)

    # ------------------------------------------------------------ approval lines

    def _nav_of(self, sdef: SetDef, row: Mapping[str, Any]) -> list[dict[str, Any]]:
        if sdef.nav is None:
            return []
        key = tuple(row[k] for k in sdef.keys)
        children = self._children[sdef.kind].get(key)
        if children is None:
            children = self._gen_children(sdef, row)
            self._children[sdef.kind][key] = children
        return children

    def _gen_children(self, sdef: SetDef, row: Mapping[str, Any]) -> list[dict[str, Any]]:
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
                    "ApprovalRule": rng.choice(APPROVAL_RULES),
                    "AuthorizeId": rng.choice(USERS),
                    "ApproverSign": None,
                    "DateApproved": None,
                }
            else:
                role = "Acknowledger" if i == 1 and rng.random() < 0.3 else "Authorizer"
                fields = {
                    "Company": row["Company"],
                    "InvoiceId": row["InvoiceId"],
                    "LineNo": i,
                    "Authorizer": rng.choice(USERS),
                    "Role": role,
                    "Objstate": "Unacknowledged",
                    "AuthorizedDate": None,
                }
            line = self._materialize(
                base, fields, version, base.nav.entity, base.nav.luname, self._child_rowids[sdef.kind].next()
            )
            out.append(self._served(sdef, line, line=True))
        return out

    def _child_done(self, sdef: SetDef, child: Mapping[str, Any]) -> bool:
        child = self._canonical(sdef.kind, child, line=True)
        if sdef.kind is RecordKind.ORDER:
            return child["DateApproved"] is not None
        return child["Objstate"] == final_line_state(child)

    def _signed_child(self, sdef: SetDef, child: dict[str, Any], by: str) -> dict[str, Any]:
        if self._child_done(sdef, child):
            return child
        if sdef.kind is RecordKind.ORDER:
            changes: dict[str, Any] = {"ApproverSign": by, "DateApproved": self._timestamp()}
        else:
            final = final_line_state(self._canonical(sdef.kind, child, line=True))
            changes = {"Objstate": final, "AuthorizedDate": self._today().isoformat()}
        changes = self._served(sdef, changes, line=True)
        version = self._objversion(child["Objversion"])
        return {
            **child,
            **changes,
            "Objversion": version,
            "@odata.etag": encode_etag(child["Objid"], version),
        }

    def _finish_approval(self, sdef: SetDef, row: dict[str, Any]) -> dict[str, Any]:
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


# ---------------------------------------------------------------- generator and CLI


async def run_generator(
    sim: IfsSimulator,
    every: float,
    kind: RecordKind | str = "order",
    company: str | Sequence[str] = "10",
    on_record: Callable[[RecordKind, dict[str, Any]], None] | None = None,
) -> None:
    """Add one pending record every `every` seconds (cycling through companies) until cancelled."""
    kind = as_kind(kind)
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
