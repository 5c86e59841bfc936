"""Rows to records: one OData row of a source becomes a FinanceRecord (its stored form), validated field by field.

A page is identified and shaped column by column with C-level builtins (map, zip, compress, set, join) when
its values have the shapes IFS sends; otherwise row by row, which quarantines exactly the bad rows and names
their field. `identify_page` and `shape` choose between the two; callers never do.
"""

from __future__ import annotations

import base64
import binascii
import math
import operator
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal, InvalidOperation
from itertools import compress, repeat
from typing import Any

from core.domain import ApprovalStep, FinanceRecord, compact, decode_key, encode_key, key_template
from core.errors import BadRecordError
from core.links import page_link
from pollers.columns import Columns, NoneType
from pollers.columns import columns_of as _columns
from pollers.columns import only as _only
from pollers.sources import SourceSpec

MAX_AMOUNT = Decimal("1e15")  # beyond any real document: treat as a broken row
BadRow = tuple[str, str, str]  # (record key, field, problem)

Identified = tuple[list[str], list[str], list[str], list[str]]  # keys, etags, states, approval steps of a page

# A record's change marker is its row's `@odata.etag`, or, where the listings compare by the row version column
# (SourceSpec.versions), "v:" and that version: the prefix keeps the two kinds apart in `seen`.
VERSION_PREFIX = "v:"


def version_marker(value: Any) -> str | None:
    """The marker of a row version value (text or a whole number), or None for anything else."""
    if type(value) is str and value:
        return VERSION_PREFIX + value
    if type(value) is int:
        return VERSION_PREFIX + str(value)
    return None


def etag_version(etag: str) -> str | None:
    """The row version inside an IFS etag, `W/"base64('W/"objid:objversion"')"`, or None when it is not one."""
    payload = etag.removeprefix("W/").strip('"')
    try:
        inner = base64.b64decode(payload, validate=True).decode("ascii")
    except (binascii.Error, ValueError):
        return None
    objid, colon, version = inner.removeprefix("W/").strip('"').rpartition(":")
    return version if colon and objid and version else None


def marker_version(marker: str) -> str | None:
    """The row version a marker of either kind stands for (None: an etag that does not carry one)."""
    if marker.startswith(VERSION_PREFIX):
        return marker[len(VERSION_PREFIX):]
    return etag_version(marker)


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
    _version: str | None = field(init=False)

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
        object.__setattr__(self, "_version", s.versions)
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
        etag = self.marker(row)
        if not etag or type(etag) is not str:
            raise BadRecordError(key, self._version or "@odata.etag", "missing row version")
        if "\x00" in key or "\x00" in etag:  # SQLite's JSON functions would cut the text there
            bad = next((k for k, v in keys.items() if "\x00" in str(v)), "@odata.etag")
            raise BadRecordError(key.replace("\x00", "\\0"), bad, "NUL character")
        if "\x1f" in etag:  # the separator of a record's version as the poll compares it
            raise BadRecordError(key, "@odata.etag", "control character")
        return key, etag, keys

    def marker(self, row: Mapping[str, Any]) -> Any:
        """A row's change marker: its version (where the listings compare by it) or its `@odata.etag` (else the
        bare Objversion, for a tenant that sends no etags); the caller checks it."""
        if self._version is not None:
            marker = version_marker(row.get(self._version))
            if marker is not None:
                return marker
        return row.get("@odata.etag") or row.get("Objversion")

    def step_of(self, row: Mapping[str, Any]) -> str:
        f = self.spec.step_field
        return str(row.get(f) or "") if f else ""

    def map(self, row: Mapping[str, Any], key: str, etag: str,
            approvals: tuple[ApprovalStep, ...] = ()) -> FinanceRecord:
        return FinanceRecord.from_dict(self.stored(row, key, etag, approvals))

    def stored(self, row: Mapping[str, Any], key: str, etag: str, approvals: tuple[ApprovalStep, ...] = (),
               step: str | None = None) -> tuple[Any, ...]:
        """The record in its stored form (FinanceRecord.COMPACT), validated field by field.

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
        return compact(out)

    # A page at a time: the same results as key_and_etag / stored row by row, computed column by column
    # with C-level builtins (map, zip, compress, set, join), about 3x less interpreter work per row. Each
    # column is checked for the shapes IFS sends (non-empty text, plain numbers, yyyy-mm-dd dates); a page
    # holding anything else returns None and goes through the row-by-row path, which names the bad field.

    def identify_page(self, rows: list[dict[str, Any]], page: Columns | None, present: set[str]
                      ) -> tuple[list[dict[str, Any]], Identified, list[BadRow]]:
        """The rows of a page that can be compared, their (keys, etags, states, approval steps), and the bad
        rows as (key, field, problem): column by column when the page is well formed and new to `present`,
        else row by row (`identify_rows`). Adds the page's keys to `present`."""
        ids = self.identify(rows, page)
        if ids is None or not present.isdisjoint(ids[0]):
            return self.identify_rows(rows, present)
        present.update(ids[0])
        return rows, ids, []

    def shape(self, rows: list[dict[str, Any]], keys: list[str], etags: list[str], steps: list[str],
              page: Columns | None = None) -> tuple[list[dict[str, Any] | tuple[Any, ...] | None], list[BadRow]]:
        """The stored records of identified rows (None where a row cannot be read) and the bad rows: column
        by column (`stored_page`), else row by row (`stored`), which names each bad row's field."""
        records = self.stored_page(rows, keys, etags, steps, page)
        if records is not None:
            return list(records), []
        out: list[dict[str, Any] | tuple[Any, ...] | None] = []
        bad: list[BadRow] = []
        for row, key, etag, step in zip(rows, keys, etags, steps, strict=True):
            try:
                out.append(self.stored(row, key, etag, step=step))
            except BadRecordError as exc:
                out.append(None)
                bad.append((key, exc.field, exc.problem))
        return out, bad

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
        if self._version is None:
            etags = page["@odata.etag"]
        else:
            versions = page[self._version]
            if _only(versions, str) and "" not in versions:
                etags = list(map(VERSION_PREFIX.__add__, versions))
            elif _only(versions, int):
                etags = list(map(f"{VERSION_PREFIX}{{}}".format, versions))
            else:
                return None
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


def _texts(col: list[Any]) -> list[str | None]:
    """Each value as stored() keeps a text: None when empty or missing, else as text."""
    return [None if v is None or v == "" else v if type(v) is str else str(v) for v in col]


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
