"""Generated records: vendors, users, cost centres and the column-at-a-time row generators that
`IfsSimulator.bulk_generate` and `add_*` draw from (seeded, so a seed gives the same tenant)."""

from __future__ import annotations

import random
from base64 import b64encode
from collections.abc import Iterator
from datetime import date, timedelta
from typing import Any

from core.domain import RecordKind
from simulator.ifs_schema import RowIds

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
USERS = ("ALAIN", "BRITA", "CHEN", "DIEGO", "EMMA", "FARID", "GRETA", "HIRO", "INGRID", "JONAS")
_COST_CENTERS = ("CC100", "CC110", "CC200", "CC210", "CC300", "CC400")
_SITES = ("MAIN", "NORTH", "SOUTH")
APPROVAL_RULES = ("PO-STD", "PO-CAPEX", "PO-HIGHVAL")
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


class FakeData:
    """Row generators, mixed into IfsSimulator: they draw from its seeded random source, row ids and
    document counters (set by IfsSimulator.__init__), and its date (`_today`)."""

    _rng: random.Random
    _rowids: dict[RecordKind, RowIds]
    _next_order: int
    _next_invoice: int
    _next_voucher: int

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
            rng.choices(USERS, k=n),
            rng.choices(USERS, k=n),
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
            rng.choices(USERS, k=n),
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
            rng.choices(USERS, k=n),
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
