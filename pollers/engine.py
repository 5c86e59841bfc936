"""One poll engine for every source: fetch the pending set page by page, diff it against `seen`, emit events."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import compress, repeat
from operator import is_not, itemgetter
from typing import Any, Protocol

from core.clock import SYSTEM_CLOCK, Clock
from core.domain import Binding, EventType, FinanceRecord, RecordKind, decode_key
from core.errors import AuthError, BadRecordError, FatalRequestError, RetriableError
from pollers.columns import Columns, only
from pollers.ifs_client import Cost, ListingBounds, bounded_groups, counted, looks_like_a_page_cap
from pollers.mapping import VERSION_PREFIX, BadRow, RecordMapper, marker_version, summarize_chain
from pollers.sources import SourceSpec
from store.audit import AuditLog
from store.bindings import Bindings
from store.poll_writer import Finished, PollWriter
from store.records import Change
from store.seen import Seen

WRITES_IN_FLIGHT = 2  # page writes queued for the database thread at once (see Poller._poll)

log = logging.getLogger(__name__)


class IfsReader(Protocol):
    def iter_pages(self, projection: str, entity_set: str, *, filter: str | None = None,
                   select: Sequence[str] | None = None, orderby: Sequence[str] = (),
                   page_size: int = 5000, bounds: ListingBounds | None = None, no_metadata: bool = False
                   ) -> AsyncIterator[list[dict[str, Any]]]: ...

    async def get_by_key(self, projection: str, entity_set: str,
                         keys: Mapping[str, str | int]) -> dict[str, Any] | None: ...

    async def get_collection(self, projection: str, entity_set: str, keys: Mapping[str, str | int],
                             navigation: str, *, select: Sequence[str] | None = None) -> list[dict[str, Any]]: ...

    async def probe(self, projection: str, entity_set: str, *, filter: str | None) -> dict[str, Any] | None: ...

    async def read_by_keys(self, projection: str, entity_set: str, keys: Sequence[Mapping[str, str | int]], *,
                           select: Sequence[str] | None = None) -> list[dict[str, Any]]: ...

    filter_chars: int  # how long a filter of several conditions may be

    def shorter_filters(self, exc: FatalRequestError, filter_length: int) -> bool: ...


@dataclass
class PollResult:
    kind: RecordKind
    company: str
    ok: bool = True
    rows: int = 0
    pending: int = 0
    new: int = 0
    changed: int = 0
    resolved: int = 0
    incomplete: int = 0  # missing from the listing, yet pending when read by key: the listing was short
    deferred: int = 0  # missing from the listing, not read by key this time: confirmed by a later poll
    bad: int = 0
    deliveries: int = 0
    pages: int = 0
    error: str | None = None
    status: int | None = None  # IFS's HTTP status when the poll failed on an answer
    requests: int = 0  # what the cycle asked of IFS for this company (a shared listing's cost shared out)
    bytes: int = 0
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("kind", "company")}


class IfsLoad:
    """What the pollers asked of IFS over the last hour, cycle by cycle: the cost `status` shows."""

    WINDOW = 3600.0

    def __init__(self) -> None:
        self._cycles: deque[tuple[float, int, int, float]] = deque()  # (at, requests, bytes, seconds)

    def record(self, at: float, requests: int, received: int, seconds: float) -> None:
        self._cycles.append((at, requests, received, seconds))
        self._trim(at)

    def summary(self, now: float) -> dict[str, float]:
        self._trim(now)
        n = len(self._cycles)
        requests = sum(c[1] for c in self._cycles)
        received = sum(c[2] for c in self._cycles)
        seconds = sum(c[3] for c in self._cycles)
        return {"cycles": n, "requests": requests, "bytes": received,
                "requests_per_cycle": requests / n if n else 0.0, "bytes_per_cycle": received / n if n else 0.0,
                "seconds_per_cycle": seconds / n if n else 0.0}

    def _trim(self, now: float) -> None:
        while self._cycles and self._cycles[0][0] < now - self.WINDOW:
            self._cycles.popleft()


@dataclass
class _Budget:
    """A source cycle's allowance for reads beyond the listing, shared by its companies (the cost of a cycle
    must not grow with the companies linked), and what it learned about them on the way."""

    details: int  # approval-chain reads left (Poller.details_limit)
    chains: bool = True  # False once the approval lines could not be read: the rest go without


@dataclass
class _Cycle:
    """One company's view of its source cycle: which source and company, and the cycle's shared budget."""

    kind: RecordKind
    company: str
    budget: _Budget


@dataclass
class _Part:
    """One company's share of a poll cycle: what was seen before, what the listing holds, the result."""

    company: str
    result: PollResult
    cycle: _Cycle
    known: int = 0  # records the last polls left pending; 0 on a first poll: everything is new
    unseen: int = 0  # records read now that were not among them
    bindings: list[Binding] = field(default_factory=list)
    quarantined: set[str] = field(default_factory=set)
    bad_keys: set[str] = field(default_factory=set)
    present: set[str] = field(default_factory=set)
    touched: set[str] = field(default_factory=set)
    last_page: int = 0  # rows in the listing's last page: a server's silent page cap shows there
    fixed: list[str] = field(default_factory=list)


@dataclass
class _Compared:
    """A company's rows of one page after the comparison: the new and changed ones (with their keys, etags,
    approval steps and previous versions, None for new), the bad rows, and the rows present but not compared."""

    rows: list[dict[str, Any]]
    keys: list[str]
    etags: list[str]
    steps: list[str]
    olds: list[str | None]
    bad: list[BadRow]
    uncompared: int
    states: list[str] = field(default_factory=list)  # as listed (compared; not needed once shaped)


def _chunks(spec: SourceSpec, parts: Sequence[_Part], max_chars: int) -> list[list[_Part]]:
    """Companies grouped so that each listing's company filter stays within about `max_chars`."""
    return bounded_groups(parts, [len(spec.company_condition(p.company)) for p in parts], len(" or "), max_chars)


def _by_company(spec: SourceSpec, page: list[dict[str, Any]], parts: Mapping[str, _Part]
                ) -> list[tuple[_Part, list[dict[str, Any]], Columns]]:
    """A page's rows per company (one listing serves several): column by column, no loop per row."""
    cols = Columns(page)
    if len(parts) == 1:
        [part] = parts.values()
        return [(part, page, cols)]
    col = cols[spec.company_field]
    names = col if only(col, str) else [str(v) for v in col]
    distinct = set(names)
    if len(distinct) == 1:
        part = parts.get(next(iter(distinct)))
        return [(part, page, cols)] if part is not None else []
    out = []
    for company in sorted(distinct & parts.keys()):  # rows of companies not asked for are not ours to read
        rows = list(compress(page, map(company.__eq__, names)))
        out.append((parts[company], rows, Columns(rows)))
    return out


@dataclass
class Poller:
    """Polls sources for companies; owns nothing but wiring. Errors are turned into results here."""

    client: IfsReader
    sources: Mapping[RecordKind, SourceSpec]
    seen: Seen
    bindings: Bindings
    writer: PollWriter
    audit: AuditLog
    ifs_base_url: str = ""
    page_size: int = 5000
    use_select: bool = True
    details_limit: int = 50  # per cycle: extra per-record reads beyond this are skipped (digest territory)
    confirm_reads: int = 500  # per cycle: reads by key confirming that records missing from a listing left
    max_listing_pages: int = 0  # requests one listing may make; 0: derived from the records pending
    max_listing_seconds: float = 900.0  # one listing's time (on the client's clock); 0: unbounded
    lean_listing: bool = True  # re-polls list only what the diff needs, then read new and changed rows whole
    clock: Clock = SYSTEM_CLOCK
    _mappers: dict[RecordKind, RecordMapper] = field(default_factory=dict)
    # Per source, whether its listings last compared by row version (else etags); and per source and company, the
    # records seen with the other kind of marker (key -> marker), read from the store when first needed after
    # the kind changed (a tenant found to honour odata.metadata=none, or no longer), with the version each
    # stands for (None: an etag that carries none): see _rebased.
    _by_version: dict[RecordKind, bool] = field(default_factory=dict)
    _foreign: dict[tuple[RecordKind, str], dict[str, tuple[str, str | None]]] = field(default_factory=dict)
    # sources poll concurrently: IFS going down (or coming back) is noticed, logged and audited once
    _availability: asyncio.Lock = field(default_factory=asyncio.Lock)

    def set_source(self, spec: SourceSpec) -> None:
        """Poll `spec` for its kind from now on (the configured source with names the tenant lacks left out)."""
        if self.sources.get(spec.kind) != spec:
            self.sources = {**self.sources, spec.kind: spec}
            self._mappers.pop(spec.kind, None)

    def mapper(self, kind: RecordKind) -> RecordMapper:
        if kind not in self._mappers:
            self._mappers[kind] = RecordMapper(self.sources[kind], self.ifs_base_url)
        return self._mappers[kind]

    async def poll(self, kind: RecordKind, company: str) -> PollResult:
        return (await self.poll_many(kind, [company]))[0]

    async def poll_many(self, kind: RecordKind, companies: Sequence[str]) -> list[PollResult]:
        """One cycle of a source for several companies: one listing for all of them (chunked by URL length),
        its rows grouped by company; then, per company, approval chains and confirmations. Each company
        gets its own result: a listing that fails fails the companies it was for."""
        spec = self.sources[kind]
        if not companies:
            return []
        budget = _Budget(self.details_limit)
        parts = [_Part(c, PollResult(kind, c), _Cycle(kind, c, budget)) for c in dict.fromkeys(companies)]
        chunks = deque(_chunks(spec, parts, self.client.filter_chars))
        while chunks:
            chunk = chunks.popleft()
            started = self.clock.monotonic()
            try:
                await self._listing(kind, chunk)
            except (RetriableError, AuthError, FatalRequestError) as exc:
                smaller = _chunks(spec, chunk, self.client.filter_chars) if self._too_long(spec, chunk, exc) else []
                if len(smaller) > 1:  # IFS refused the URL (414): the same in smaller parts, and the rest too
                    chunks = deque(smaller + _chunks(spec, [p for c in chunks for p in c], self.client.filter_chars))
                    continue
                await self._failed(kind, chunk, exc)
            else:
                await self._ifs_up()
            share = (self.clock.monotonic() - started) / len(chunk)
            for part in chunk:
                part.result.seconds += share
        finished = []
        for part in parts:
            if part.result.ok:
                started = self.clock.monotonic()
                try:
                    with counted() as cost:
                        fixed = await self._settle(kind, part)
                except (RetriableError, AuthError, FatalRequestError) as exc:
                    await self._failed(kind, [part], exc)
                else:
                    part.fixed = fixed
                finally:
                    part.result.requests += cost.requests
                    part.result.bytes += cost.bytes
                    part.result.seconds += self.clock.monotonic() - started
            r = part.result
            finished.append(Finished(part.company, r.ok, r.pending if r.ok else None, r.error, r.summary(),
                                     part.fixed))
        await self.writer.finish_many(kind, finished, self.audit)
        return [part.result for part in parts]

    async def _failed(self, kind: RecordKind, parts: Sequence[_Part], exc: Exception) -> None:
        error, status = _describe(exc), getattr(exc, "status", None)
        for part in parts:
            part.result.ok, part.result.error, part.result.status = False, error, status
            part.fixed = []
        if isinstance(exc, FatalRequestError):
            log.warning("poll of %s failed: %s", kind.value, error,
                        extra={"source": kind.value, "company": ",".join(p.company for p in parts)})
        else:
            await self._ifs_down(error)

    async def _ifs_down(self, error: str) -> None:
        async with self._availability:
            if await self.writer.ifs_available():
                log.warning("IFS unavailable: %s", error)
                await self.writer.set_ifs_available(False, error, self.audit)

    async def _ifs_up(self) -> None:
        async with self._availability:
            if not await self.writer.ifs_available():
                log.info("IFS recovered")
                await self.writer.set_ifs_available(True, None, self.audit)

    def _too_long(self, spec: SourceSpec, chunk: Sequence[_Part], exc: Exception) -> bool:
        """Whether a listing of several companies failed only for its URL's length, and can be asked again in
        smaller parts now. After a page was read (a later page's URL was refused) the limit is lowered for
        the next cycle, but this one fails: the pages read were written already."""
        if not isinstance(exc, FatalRequestError) or len(chunk) < 2:
            return False
        companies = len(" or ".join(spec.company_condition(p.company) for p in chunk))  # as _chunks measures
        return self.client.shorter_filters(exc, companies) and not any(p.result.pages for p in chunk)

    async def _listing(self, kind: RecordKind, parts: Sequence[_Part]) -> None:
        """Read one listing for `parts`' companies and write its new and changed records, page by page."""
        spec = self.sources[kind]
        mapper = self.mapper(kind)
        by_version = spec.versions is not None
        if self._by_version.get(kind, by_version) != by_version:  # the markers listed change kind
            self._foreign = {k: v for k, v in self._foreign.items() if k[0] is not kind}
        self._by_version[kind] = by_version
        await self._load(kind, parts)  # what was seen before decides which columns the listing needs
        # after a company's first poll the listing carries only what the diff compares; new and changed
        # records are read whole by key. A first poll reads everything whole: it is all new anyway.
        lean = self.lean_listing and self.use_select and all(part.known for part in parts)
        select = (spec.lean_select if lean else spec.full_select) if self.use_select else None
        by_company = {part.company: part for part in parts}
        bounds = ListingBounds(expected_rows=sum(p.known for p in parts), max_pages=self.max_listing_pages,
                               max_seconds=self.max_listing_seconds)
        # Pages are written on the database thread while the next ones are fetched and mapped here. Two
        # writes in flight: the database thread starts page N+1 the moment page N is committed, however
        # busy this thread is at that moment. Writes run in page order; a failure surfaces two pages later.
        writing: deque[asyncio.Future[int]] = deque()
        counts: dict[str, int] = {}  # deliveries per company, as writes complete
        cost = Cost()

        async def settled(done: asyncio.Future[int], company: str) -> None:
            written = await done  # awaited before reading counts: two writes settle concurrently
            counts[company] = counts.get(company, 0) + written

        try:
            with counted() as cost:
                async for page in self.client.iter_pages(
                        spec.projection, spec.entity_set, filter=spec.filter_for_companies(list(by_company)),
                        select=select, orderby=spec.orderby, page_size=self.page_size, bounds=bounds,
                        no_metadata=by_version):
                    staged = []
                    for part, rows, cols in _by_company(spec, page, by_company):
                        part.result.pages += 1
                        part.result.rows += len(rows)
                        part.last_page = len(page)
                        staged.append((part, cols, self._identify(mapper, spec.pending_rows(rows, cols), cols,
                                                                  part)))
                    await self._compare(kind, [(part, c) for part, _, c in staged])
                    if lean:  # one batched read of the whole rows for every company on the page
                        await self._whole(mapper, [c for _, _, c in staged])
                    for part, cols, compared in staged:
                        r = part.result
                        changes, bad, new = await self._shape(mapper, compared, None if lean else cols, part)
                        part.unseen += new
                        r.pending = len(part.present)
                        r.bad += len(bad)
                        if part.quarantined:
                            part.bad_keys.update(key for key, _, _ in bad)
                        if changes or bad:
                            fresh = sum(map(EventType.NEW.__eq__, map(itemgetter(0), changes)))
                            r.new += fresh
                            r.changed += len(changes) - fresh
                            if len(writing) == WRITES_IN_FLIGHT:
                                await writing.popleft()
                            write = asyncio.ensure_future(self.writer.apply(
                                kind, part.company, changes, part.bindings, bad_rows=bad, audit=self.audit))
                            writing.append(asyncio.ensure_future(settled(write, part.company)))
                            await asyncio.sleep(0)  # let the write reach the database thread's queue first
                    bounds.expected_rows = max(bounds.expected_rows, sum(len(p.present) for p in parts))
                while writing:
                    await writing.popleft()
        except BaseException:
            # the pages read before the listing (or a page's write) failed are good news: their writes finish
            while writing:
                try:
                    await writing.popleft()
                except Exception as exc:  # noqa: BLE001 - the first error is the one that propagates
                    log.error("writing a page of %s failed as well: %s", kind.value, type(exc).__name__,
                              extra={"source": kind.value})
            raise
        finally:
            for i, part in enumerate(parts):  # the listing's cost, shared out (the first takes the remainder)
                part.result.requests += cost.requests // len(parts) + (cost.requests % len(parts) if not i else 0)
                part.result.bytes += cost.bytes // len(parts) + (cost.bytes % len(parts) if not i else 0)
                part.result.deliveries += counts.get(part.company, 0)

    async def _settle(self, kind: RecordKind, part: _Part) -> list[str]:
        """After the listing, for one company: approval chains of carded records, and the records that left.
        Returns the quarantined keys that were not bad this time (fixed, or gone): to release."""
        spec = self.sources[kind]
        result, cycle, present = part.result, part.cycle, part.present
        if spec.approvals is not None and cycle.budget.details > 0 and cycle.budget.chains:
            chained = await self._check_chains(present, part.touched, part.bindings, cycle)
            result.changed += chained[0]
            result.deliveries += chained[1]
        if len(present) - part.unseen < part.known:  # some of what was pending is no longer listed
            resolved = await self._confirm_left(present, cycle, result, part.last_page)
            if resolved:
                result.deliveries += await self.writer.apply(kind, part.company, resolved, part.bindings)
            result.resolved = len(resolved)
        released = part.quarantined - part.bad_keys  # fixed, or gone: absent from a short listing is neither
        return sorted(released & present if result.incomplete or result.deferred else released)

    async def _confirm_left(self, present: set[str], cycle: _Cycle, result: PollResult, last_page: int
                            ) -> list[Change]:
        """The resolved events of the seen records missing from the listing that a read by key shows gone
        (404) or out of the pending set. Absence from a listing is not evidence: a record still pending
        when read by key means the listing was incomplete (one warning, an audit entry, nothing changes
        for it), and a record not read this time (read failed, or past `confirm_reads`) stays pending until
        a later poll confirms it. Nor is a 404 evidence when IFS shows nothing at all of the company: a
        service user that lost the company sees empty listings and 404s alike."""
        kind, company = cycle.kind, cycle.company
        spec = self.sources[kind]
        where = {"source": kind.value, "company": company}
        missing = await self.seen.left(kind, company, present)
        resolved: list[Change] = []
        gone: list[tuple[str, str, int]] = []  # 404 when read by key
        failure: Exception | None = None
        if len(missing) > self.confirm_reads:
            result.deferred += len(missing) - self.confirm_reads
            missing = missing[:self.confirm_reads]
        # read in batches ($filter on the keys, whatever the state): a cycle in which hundreds of documents
        # were approved stays a handful of requests. A key the batch does not answer is read alone, by key:
        # only that read's 404 says the record is gone.
        found: dict[str, dict[str, Any]] = {}
        try:
            rows = await self.client.read_by_keys(spec.projection, spec.entity_set,
                                                  [_typed_keys(spec, key) for key, _, _ in missing],
                                                  select=spec.full_select if self.use_select else None)
        except RetriableError as exc:  # IFS struggles: ask it nothing more about these this time
            failure, rows = exc, []
            result.deferred += len(missing)
            missing = []
        except FatalRequestError:
            rows = []  # a server that refuses the batched filter: each record is read by key
        mapper = self.mapper(kind)
        for row in rows:
            try:
                found[mapper.key_and_etag(row)[0]] = row
            except BadRecordError:
                continue
        for n, (key, state, event_id) in enumerate(missing):
            row = found.get(key)
            if row is None:
                try:
                    row = await self.client.get_by_key(spec.projection, spec.entity_set, _typed_keys(spec, key))
                except RetriableError as exc:
                    failure = exc
                    result.deferred += len(missing) - n
                    break
                except FatalRequestError as exc:
                    failure = exc
                    result.deferred += 1
                    continue
            if row is None:
                gone.append((key, state, event_id))
                continue
            if spec.is_pending(row) and row.get(spec.company_field, company) == company:
                result.incomplete += 1
                continue
            record = await self._final(cycle, key, event_id, row)
            resolved.append((EventType.RESOLVED, record.to_compact(), state, ""))
        hidden = bool(gone) and not present and not await self._company_visible(spec, company)
        if hidden:
            result.incomplete += len(gone)
        for key, state, event_id in [] if hidden else gone:
            resolved.append((EventType.RESOLVED, (await self._final(cycle, key, event_id, None)).to_compact(), state, ""))
        result.pending += result.incomplete + result.deferred  # still pending, as far as anyone knows
        deferred = ""
        if result.deferred:
            why = _describe(failure) if failure else f"over ifs.confirm_reads_per_cycle = {self.confirm_reads}"
            deferred = (f"{result.deferred} records missing from it were not confirmed by key ({why}); they stay"
                        " pending until a later poll confirms them")
        if result.incomplete:
            hint = ""
            if hidden:
                hint = (f"; IFS shows no {kind.plural} at all for company {company} now: is the company still"
                        " granted to the service user (Allowed Companies)?")
            elif looks_like_a_page_cap(last_page, self.page_size):
                hint = (f"; its last page held {last_page} rows, fewer than ifs.page_size = {self.page_size}: if"
                        f" IFS caps pages at {last_page} rows, set ifs.page_size to {last_page}")
            log.warning("listing of %s for company %s looks incomplete: it missed %d records still pending when"
                        " read by key (%d listed); nothing was resolved for them. Causes: a glitch, a company"
                        " not granted to the service user, or a server page cap below ifs.page_size (%d)%s%s",
                        kind.value, company, result.incomplete, len(present), self.page_size, hint,
                        f". {deferred}" if deferred else "", extra=where)
            await self.audit.record("poll", f"listing {kind.value}", "incomplete", company=company,
                                    missed=result.incomplete, listed=len(present), page_size=self.page_size,
                                    last_page=last_page, company_visible=not hidden, deferred=result.deferred)
        elif deferred:
            log.warning("listing of %s for company %s: %s", kind.value, company, deferred, extra=where)
        return resolved

    async def _company_visible(self, spec: SourceSpec, company: str) -> bool:
        """Whether IFS shows any row of the company in the source's entity set (whatever its state)."""
        try:
            return await self.client.probe(spec.projection, spec.entity_set,
                                           filter=spec.company_condition(company)) is not None
        except (FatalRequestError, RetriableError):
            return False  # no evidence either way: nothing is resolved on a 404 alone

    def _identify(self, mapper: RecordMapper, rows: list[dict[str, Any]], cols: Columns, part: _Part
                  ) -> _Compared:
        """A company's pending rows of a page identified, and its bad rows; adds the page's keys to `present`.
        The usual page (well-formed keys, etags and states) is identified column by column; any other goes row
        by row, which names each bad row's field."""
        present = part.present
        before = len(present)
        rows, (keys, etags, states, steps), bad = mapper.identify_page(rows, cols, present)
        # records present but not compared (a well-keyed row with a broken state): counted as unseen, so
        # that the poll asks SQLite which seen records left rather than assume none did
        uncompared = len(present) - before - len(keys)
        return _Compared(rows, keys, etags, steps, [None] * len(keys), bad, uncompared, states)

    async def _compare(self, kind: RecordKind, staged: Sequence[tuple[_Part, _Compared]]) -> None:
        """Keep, of each company's identified rows, the new and changed ones, with the state seen before (None:
        new). The database compares every company of the page in one call (only where something was seen)."""
        asked = [(part, c) for part, c in staged if part.known and c.keys]
        if not asked:
            return
        answers = await self.seen.compare_many(kind, [(part.company, c.keys, c.etags, c.states, c.steps)
                                                      for part, c in asked])
        for (part, c), differ in zip(asked, answers, strict=True):
            await self._rebased(kind, part.company, c, differ)
            if len(differ) < len(c.keys):  # the usual re-poll: most rows unchanged, nothing more to do for them
                picked = list(compress(range(len(c.keys)), map(differ.__contains__, c.keys)))
                c.rows, c.keys, c.etags, c.steps = ([v[i] for i in picked] for v in (c.rows, c.keys, c.etags, c.steps))
            c.olds = list(map(differ.__getitem__, c.keys))

    async def _rebased(self, kind: RecordKind, company: str, c: _Compared, differ: dict[str, str | None]) -> None:
        """Leave out of `differ` the records that differ only in the kind of their marker: seen with an etag and
        listed with its version now (or the other way round), for the same row version (an IFS etag carries it,
        which TenantSchema checked before listings switched). Such a record is compared again with the marker
        it was seen with, so its state and step still count; it keeps that marker until it really changes."""
        seen = [k for k, old in differ.items() if old is not None]
        if not seen:
            return
        foreign = self._foreign.get((kind, company))
        if foreign is None:  # not known since the kind changed (or since start): read once
            listed_by_version = self._by_version.get(kind, False)
            foreign = self._foreign[(kind, company)] = {
                key: (marker, marker_version(marker)) for key, marker in (await self.seen.markers(kind, company)).items()
                if marker.startswith(VERSION_PREFIX) != listed_by_version}
        if not foreign:
            return
        at = {k: i for i, k in enumerate(c.keys)}
        again = {k: stored[0] for k in seen if (stored := foreign.get(k)) is not None
                 and stored[1] is not None and stored[1] == marker_version(c.etags[at[k]])}
        if not again:
            return
        keys = list(again)
        [still] = await self.seen.compare_many(kind, [(company, keys, list(again.values()),
                                                       [c.states[at[k]] for k in keys], [c.steps[at[k]] for k in keys])])
        for k in keys:
            if k not in still:
                del differ[k]

    async def _whole(self, mapper: RecordMapper, compared: Sequence[_Compared]) -> None:
        """The new and changed records of a lean listing's page, every company's, read whole by key in as few
        batches as URLs allow. A record gone between the listing and this read is left out: the next poll
        finds it missing and confirms it."""
        wanted = [key for c in compared for key in c.keys]
        if not wanted:
            return
        spec = mapper.spec
        found: dict[str, dict[str, Any]] = {}
        for row in await self.client.read_by_keys(spec.projection, spec.entity_set,
                                                   [_typed_keys(spec, k) for k in wanted], select=spec.full_select):
            try:
                found[mapper.key_and_etag(row)[0]] = row
            except BadRecordError:
                continue  # its listed form was fine: the row changed meanwhile; the next poll sees it again
        for c in compared:
            if all(k in found for k in c.keys):
                c.rows = [found[k] for k in c.keys]
                continue
            kept = [i for i, k in enumerate(c.keys) if k in found]
            c.rows = [found[c.keys[i]] for i in kept]
            c.keys, c.etags, c.steps, c.olds = ([v[i] for i in kept] for v in (c.keys, c.etags, c.steps, c.olds))

    async def _shape(self, mapper: RecordMapper, c: _Compared, cols: Columns | None, part: _Part
                     ) -> tuple[list[Change], list[BadRow], int]:
        """The changes of a company's new and changed rows (records shaped column by column; the first few
        within the cycle's budget with their approval chain), its bad rows, and how many of its records were
        never seen before."""
        rows, keys, etags, steps, olds, bad, cycle = c.rows, c.keys, c.etags, c.steps, c.olds, c.bad, part.cycle
        if not rows:
            return [], bad, c.uncompared
        records: list[dict[str, Any] | tuple[Any, ...] | None] = [None] * len(rows)
        detailed = min(cycle.budget.details, len(rows)) if mapper.spec.approvals is not None and cycle.budget.chains else 0
        # the first few within the cycle's budget are read with their approval chain (a card each) ...
        for i in range(detailed):
            try:
                records[i] = await self._with_details(mapper, rows[i], keys[i], etags[i],
                                                      _typed_keys(mapper.spec, keys[i]), cycle)
            except BadRecordError as exc:
                bad.append((keys[i], exc.field, exc.problem))
        # ... the rest, a digest's worth, are shaped column by column where they can be
        rest, refused = (mapper.shape(rows, keys, etags, steps, cols) if not detailed else
                         mapper.shape(rows[detailed:], keys[detailed:], etags[detailed:], steps[detailed:]))
        records[detailed:] = rest
        bad += refused
        unseen = olds.count(None)
        changes: list[Change]
        if unseen == len(olds) and None not in records:  # a first poll's page: all new, all well formed
            changes = list(zip(repeat(EventType.NEW), records, olds, steps))  # noqa: B905 - repeat() is endless
            part.touched.update(keys)
        else:
            changes = [
                (EventType.NEW, record, None, step) if old is None else (EventType.CHANGED, record, old, step)
                for record, old, step in zip(records, olds, steps, strict=True) if record is not None]
            part.touched.update(compress(keys, map(is_not, records, repeat(None))))
        return changes, bad, unseen + c.uncompared

    async def _load(self, kind: RecordKind, parts: Sequence[_Part]) -> None:
        """What was seen before, the channels bound and the rows set aside, for every company of a listing."""
        companies = [p.company for p in parts]
        known = await self.seen.known_by_company(kind, companies)
        quarantined = await self.seen.quarantined_by_company(kind, companies)
        bindings = await self.bindings.all(active_only=True)
        for part in parts:
            part.known = known.get(part.company, 0)
            if not part.known:  # nothing seen: whatever this poll writes carries the markers listed now
                self._foreign[(kind, part.company)] = {}
            part.quarantined = quarantined.get(part.company, set())
            part.bindings = [b for b in bindings if b.company == part.company]

    async def _with_details(self, mapper: RecordMapper, row: dict[str, Any], key: str, etag: str,
                            keys: dict[str, str | int], cycle: _Cycle) -> dict[str, Any]:
        """The stored record with its approval chain read (one of the cycle's `details_limit` reads); without
        it once the approval lines cannot be read."""
        spec = mapper.spec
        cycle.budget.details -= 1
        for _attempt in range(2):
            lines = await self._lines(cycle, keys)
            if lines is None:
                return mapper.stored(row, key, etag)
            current = await self.client.get_by_key(spec.projection, spec.entity_set, keys)
            # the chain belongs to the version we saw only if the row did not move on meanwhile
            marker = None if current is None else mapper.marker(current)
            if current is None or marker == etag:
                return mapper.stored(row, key, etag, mapper.approvals(lines))
            row, etag = current, marker if isinstance(marker, str) and marker else etag
        return mapper.stored(row, key, etag, mapper.approvals(lines))

    async def _lines(self, cycle: _Cycle, keys: Mapping[str, str | int]) -> list[dict[str, Any]] | None:
        """A record's approval lines, or None once they cannot be read in this poll. A refused read (a wrong
        navigation name answers 404) degrades the cards, never fails the source: one warning per poll, and
        no more approval-line reads for the source until the next one. Retriable errors propagate."""
        spec = self.sources[cycle.kind]
        if spec.approvals is None or not cycle.budget.chains:
            return None
        try:
            return await self.client.get_collection(spec.projection, spec.entity_set, keys, spec.approvals.navigation)
        except FatalRequestError as exc:
            if exc.status == 404 and await self._gone(spec, keys):
                return []  # the record itself went away meanwhile: no lines to show, nothing wrong with the name
            cycle.budget.chains = False
            log.warning("approval lines of %s for company %s cannot be read, so its cards go without the approval"
                        " chain this poll: check [sources.%s] approvals.navigation (now %r). %s", cycle.kind.value,
                        cycle.company, cycle.kind.value, spec.approvals.navigation, _describe(exc),
                        extra={"source": cycle.kind.value, "company": cycle.company})
            return None

    async def _gone(self, spec: SourceSpec, keys: Mapping[str, str | int]) -> bool:
        """Whether a read by key finds the record missing (a failed read does not say so)."""
        try:
            return await self.client.get_by_key(spec.projection, spec.entity_set, keys) is None
        except FatalRequestError:
            return False

    async def _check_chains(self, present: set[str], touched: set[str], bindings: list[Binding], cycle: _Cycle
                            ) -> tuple[int, int]:
        """Re-read the approval lines of unchanged records whose card is in a channel, least recently
        checked first, within the cycle's budget: IFS can record an approval step without touching the
        document row, and the card should still show who signs next. Returns (changed events, deliveries)."""
        kind, company = cycle.kind, cycle.company
        spec = self.sources[kind]
        mapper = self.mapper(kind)
        carded = await self.seen.with_cards(kind, company)
        candidates = sorted((r for r in carded if r.key in present and r.key not in touched),
                            key=lambda r: r.chain_checked)[:cycle.budget.details]
        if not candidates:
            return 0, 0
        changes: list[Change] = []
        checked: list[str] = []
        for row in candidates:
            cycle.budget.details -= 1
            lines = await self._lines(cycle, _typed_keys(spec, row.key))
            if lines is None:
                break
            checked.append(row.key)
            chain = mapper.approvals(lines)
            summary = summarize_chain(chain)
            if summary and summary != row.chain:
                last = await self.seen.last_record(row.event_id)
                changes.append((EventType.CHANGED, replace(last, approvers=chain, approval_step=summary).to_compact(),
                                last.state, row.step))
        if checked:
            await self.seen.mark_chains_checked(kind, company, checked, self.clock.time())
        deliveries = await self.writer.apply(kind, company, changes, bindings) if changes else 0
        return len(changes), deliveries

    async def _final(self, cycle: _Cycle, key: str, event_id: int, row: dict[str, Any] | None) -> FinanceRecord:
        """The record as it left the pending set: the row read by key with its approval lines (within the
        cycle's `details_limit`), else as last seen (gone from IFS, or a row that cannot be mapped)."""
        last = await self.seen.last_record(event_id)
        if row is None:
            return last
        spec = self.sources[cycle.kind]
        lines = None
        if spec.approvals is not None and cycle.budget.chains and cycle.budget.details > 0:
            cycle.budget.details -= 1
            lines = await self._lines(cycle, _typed_keys(spec, key))
        mapper = self.mapper(cycle.kind)
        try:
            marker = mapper.marker(row)
            return mapper.map(row, key, marker if isinstance(marker, str) and marker else last.etag,
                              last.approvers if lines is None else mapper.approvals(lines))
        except BadRecordError:
            return last


def _typed_keys(spec: SourceSpec, key: str) -> dict[str, str | int]:
    """Key values from a record key, typed as the source declares them."""
    values = decode_key(key)
    return {k: int(values[k]) if t == "int" else values[k] for k, t in spec.keys}


def _describe(exc: Exception) -> str:
    """What a failed poll says in status and audit: IFS's words, whole; no class names."""
    if isinstance(exc, AuthError):
        return f"IFS refused the service user: {exc}"
    if isinstance(exc, RetriableError):
        return f"IFS unavailable: {exc}"
    return str(exc)
