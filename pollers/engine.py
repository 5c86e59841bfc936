"""One poll engine for every source: fetch the pending set page by page, diff it against `seen`, emit events."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import compress, repeat
from operator import is_not, itemgetter
from typing import Any, Protocol

from core.domain import Binding, EventType, FinanceRecord, RecordKind
from core.errors import AuthError, BadRecordError, FatalRequestError, RetriableError
from pollers.sources import Columns, RecordMapper, SourceSpec, summarize_chain
from store.repos import AuditLog, Bindings, Change, PollWriter, Seen

BadRow = tuple[str, str, str]  # (record key, field, problem)
WRITES_IN_FLIGHT = 2  # page writes queued for the database thread at once (see Poller._poll)

log = logging.getLogger(__name__)


class IfsReader(Protocol):
    def iter_pages(self, projection: str, entity_set: str, *, filter: str | None = None,
                   select: Sequence[str] | None = None, orderby: Sequence[str] = (),
                   page_size: int = 5000) -> AsyncIterator[list[dict[str, Any]]]: ...

    async def get_by_key(self, projection: str, entity_set: str,
                         keys: Mapping[str, str | int]) -> dict[str, Any] | None: ...

    async def get_collection(self, projection: str, entity_set: str, keys: Mapping[str, str | int],
                             navigation: str, *, select: Sequence[str] | None = None) -> list[dict[str, Any]]: ...


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
    bad: int = 0
    deliveries: int = 0
    pages: int = 0
    error: str | None = None
    status: int | None = None  # IFS's HTTP status when the poll failed on an answer
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("kind", "company")}


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
    monotonic: Any = time.monotonic
    now: Any = time.time
    _mappers: dict[RecordKind, RecordMapper] = field(default_factory=dict)

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
        started = self.monotonic()
        result = PollResult(kind, company)
        fixed: list[str] = []
        try:
            fixed = await self._poll(kind, company, result)
        except (RetriableError, AuthError) as exc:
            result.ok, result.error, result.status = False, _describe(exc), getattr(exc, "status", None)
            await self._ifs_down(result.error)
        except FatalRequestError as exc:
            result.ok, result.error, result.status = False, _describe(exc), exc.status
            log.warning("poll of %s failed: %s", kind.value, result.error,
                        extra={"source": kind.value, "company": company})
        else:
            await self._ifs_up()
        result.seconds = self.monotonic() - started
        await self.writer.finish(kind, company, ok=result.ok, pending=result.pending if result.ok else None,
                                 error=result.error, audit=self.audit, summary=result.summary(),
                                 unquarantine=fixed)
        return result

    async def _ifs_down(self, error: str) -> None:
        if await self.writer.ifs_available():
            log.warning("IFS unavailable: %s", error)
            await self.writer.set_ifs_available(False, error, self.audit)

    async def _ifs_up(self) -> None:
        if not await self.writer.ifs_available():
            log.info("IFS recovered")
            await self.writer.set_ifs_available(True, None, self.audit)

    async def _poll(self, kind: RecordKind, company: str, result: PollResult) -> list[str]:
        """Returns the quarantined keys that were not bad this time (fixed, or gone): to release."""
        spec = self.sources[kind]
        mapper = self.mapper(kind)
        # what was seen before loads on the database thread while the first page is on its way
        loading = asyncio.ensure_future(self._load(company, kind))
        known = 0  # records the last polls left pending; 0 on a first poll: everything is new
        unseen = 0  # records read now that were not among them
        bindings: list[Binding] = []
        quarantined: set[str] = set()
        bad_keys: set[str] = set()
        loaded = False
        present: set[str] = set()
        touched: set[str] = set()
        budget = [self.details_limit]
        # Pages are written on the database thread while the next ones are fetched and mapped here. Two
        # writes in flight: the database thread starts page N+1 the moment page N is committed, however
        # busy this thread is at that moment. Writes run in page order; a failure surfaces two pages later.
        writing: deque[asyncio.Future[int]] = deque()
        try:
            async for page in self.client.iter_pages(
                    spec.projection, spec.entity_set, filter=spec.filter_for(company),
                    select=spec.select if self.use_select else None, orderby=spec.orderby,
                    page_size=self.page_size):
                if not loaded:
                    known, bindings, quarantined = await loading
                    loaded = True
                result.pages += 1
                result.rows += len(page)
                cols = Columns(page)
                rows = spec.pending_rows(page, cols)
                changes, bad, new = await self._page(kind, company, mapper, rows, cols, known, present, touched,
                                                     budget)
                unseen += new
                result.pending = len(present)
                result.bad += len(bad)
                if quarantined:
                    bad_keys.update(key for key, _, _ in bad)
                if changes or bad:
                    fresh = sum(map(EventType.NEW.__eq__, map(itemgetter(0), changes)))
                    result.new += fresh
                    result.changed += len(changes) - fresh
                    if len(writing) == WRITES_IN_FLIGHT:
                        result.deliveries += await writing.popleft()
                    writing.append(asyncio.ensure_future(
                        self.writer.apply(kind, company, changes, bindings, bad_rows=bad, audit=self.audit)))
                    await asyncio.sleep(0)  # let the write reach the database thread's queue before mapping on
            while writing:
                result.deliveries += await writing.popleft()
        except BaseException:
            if not loading.done():
                loading.cancel()
            elif not loading.cancelled():
                loading.exception()  # retrieved: the listing's error is the one to report
            # the pages read before the listing (or a page's write) failed are good news: their writes finish
            while writing:
                try:
                    result.deliveries += await writing.popleft()
                except Exception as exc:  # noqa: BLE001 - the first error is the one that propagates
                    log.error("writing a page of %s failed as well: %s", kind.value, type(exc).__name__,
                              extra={"source": kind.value, "company": company})
            raise
        if not loaded:  # an empty listing
            known, bindings, quarantined = await loading
        if spec.approvals is not None and budget[0] > 0:
            chained = await self._check_chains(kind, company, present, touched, bindings, budget)
            result.changed += chained[0]
            result.deliveries += chained[1]
        if len(present) - unseen < known:  # some of what was pending is no longer listed
            resolved = []
            for key, state, event_id in await self.seen.left(kind, company, present):
                record = await self._final(kind, key, event_id, budget)
                resolved.append((EventType.RESOLVED, record.to_dict(), state, ""))
            result.deliveries += await self.writer.apply(kind, company, resolved, bindings)
            result.resolved = len(resolved)
        return sorted(quarantined - bad_keys)

    async def _page(self, kind: RecordKind, company: str, mapper: RecordMapper, rows: list[dict[str, Any]],
                    cols: Columns, known: int, present: set[str], touched: set[str], budget: list[int]
                    ) -> tuple[list[Change], list[BadRow], int]:
        """The changes and the bad rows among a page's pending rows, and how many of its records were never
        seen before; adds the page's keys to `present`.

        The usual page (well-formed keys, etags and states) is identified column by column; any other goes
        row by row, which names each bad row's field. Versions are compared by the database (only when
        something was seen before), and the new or changed rows are shaped column by column."""
        bad: list[BadRow] = []
        before = len(present)
        ids = mapper.identify(rows, cols)
        if ids is None or not present.isdisjoint(ids[0]):
            rows, ids, bad = mapper.identify_rows(rows, present)
        keys, etags, states, steps = ids
        present.update(keys)
        # records present but not compared (a well-keyed row with a broken state): counted as unseen, so
        # that the poll asks SQLite which seen records left rather than assume none did
        uncompared = len(present) - before - len(keys)
        olds: list[str | None] = [None] * len(keys)
        if known and keys:
            differ = await self.seen.compare(kind, company, keys, etags, states, steps)
            if len(differ) < len(keys):  # the usual re-poll: most rows unchanged, nothing more to do for them
                picked = list(compress(range(len(keys)), map(differ.__contains__, keys)))
                rows, keys, etags, steps = ([c[i] for i in picked] for c in (rows, keys, etags, steps))
            olds = list(map(differ.__getitem__, keys))
        if not rows:
            return [], bad, uncompared
        records: list[dict[str, Any] | tuple[Any, ...] | None] = [None] * len(rows)
        detailed = min(budget[0], len(rows)) if mapper.spec.approvals is not None else 0
        # the first few within the cycle's budget are read with their approval chain (a card each) ...
        for i in range(detailed):
            try:
                records[i] = await self._with_details(mapper, rows[i], keys[i], etags[i],
                                                      mapper.key_and_etag(rows[i])[2], budget)
            except BadRecordError as exc:
                bad.append((keys[i], exc.field, exc.problem))
        # ... the rest, a digest's worth, are shaped column by column
        rest = (mapper.stored_page(rows, keys, etags, steps, cols) if not detailed else
                mapper.stored_page(rows[detailed:], keys[detailed:], etags[detailed:], steps[detailed:]))
        if rest is not None:
            records[detailed:] = rest
        else:  # some field the column checks do not accept: row by row, naming the bad rows
            for i in range(detailed, len(rows)):
                try:
                    records[i] = mapper.stored(rows[i], keys[i], etags[i], step=steps[i])
                except BadRecordError as exc:
                    bad.append((keys[i], exc.field, exc.problem))
        unseen = olds.count(None)
        changes: list[Change]
        if unseen == len(olds) and None not in records:  # a first poll's page: all new, all well formed
            changes = list(zip(repeat(EventType.NEW), records, olds, steps))  # noqa: B905 - repeat() is endless
            touched.update(keys)
        else:
            changes = [
                (EventType.NEW, record, None, step) if old is None else (EventType.CHANGED, record, old, step)
                for record, old, step in zip(records, olds, steps, strict=True) if record is not None]
            touched.update(compress(keys, map(is_not, records, repeat(None))))
        return changes, bad, unseen + uncompared

    async def _load(self, company: str, kind: RecordKind) -> tuple[int, list[Binding], set[str]]:
        known = await self.seen.known(kind, company)
        bindings = [b for b in await self.bindings.all(active_only=True) if b.company == company]
        return known, bindings, await self.seen.quarantined_keys(kind, company)

    async def _with_details(self, mapper: RecordMapper, row: dict[str, Any], key: str, etag: str,
                            keys: dict[str, str | int], budget: list[int]) -> dict[str, Any]:
        """The stored record with its approval chain read (one of the cycle's `details_limit` reads)."""
        spec = mapper.spec
        assert spec.approvals is not None
        budget[0] -= 1
        for _attempt in range(2):
            lines = await self.client.get_collection(spec.projection, spec.entity_set, keys,
                                                     spec.approvals.navigation)
            current = await self.client.get_by_key(spec.projection, spec.entity_set, keys)
            # the chain belongs to the version we saw only if the row did not move on meanwhile
            if current is None or current.get("@odata.etag") == etag:
                return mapper.stored(row, key, etag, mapper.approvals(lines))
            row, etag = current, current.get("@odata.etag") or etag
        return mapper.stored(row, key, etag, mapper.approvals(lines))

    async def _check_chains(self, kind: RecordKind, company: str, present: set[str], touched: set[str],
                            bindings: list[Binding], budget: list[int]) -> tuple[int, int]:
        """Re-read the approval lines of unchanged records whose card is in a channel, least recently
        checked first, within the cycle's budget: IFS can record an approval step without touching the
        document row, and the card should still show who signs next. Returns (changed events, deliveries)."""
        spec = self.sources[kind]
        assert spec.approvals is not None
        mapper = self.mapper(kind)
        carded = await self.seen.with_cards(kind, company)
        candidates = sorted((r for r in carded if r.key in present and r.key not in touched),
                            key=lambda r: r.chain_checked)[:budget[0]]
        if not candidates:
            return 0, 0
        changes: list[Change] = []
        for row in candidates:
            budget[0] -= 1
            lines = await self.client.get_collection(spec.projection, spec.entity_set, _typed_keys(spec, row.key),
                                                     spec.approvals.navigation)
            chain = mapper.approvals(lines)
            summary = summarize_chain(chain)
            if summary and summary != row.chain:
                last = await self.seen.last_record(row.event_id)
                changes.append((EventType.CHANGED, replace(last, approvers=chain, approval_step=summary).to_dict(),
                                last.state, row.step))
        await self.seen.mark_chains_checked(kind, company, [r.key for r in candidates], self.now())
        deliveries = await self.writer.apply(kind, company, changes, bindings) if changes else 0
        return len(changes), deliveries

    async def _final(self, kind: RecordKind, key: str, event_id: int, budget: list[int]) -> FinanceRecord:
        """The record as it left the pending set: re-read by key when we can, else as last seen."""
        last = await self.seen.last_record(event_id)
        if budget[0] <= 0:
            return last
        budget[0] -= 1
        spec = self.sources[kind]
        typed = _typed_keys(spec, key)
        try:
            row = await self.client.get_by_key(spec.projection, spec.entity_set, typed)
        except FatalRequestError:
            return last
        if row is None:
            return last
        try:
            mapper = self.mapper(kind)
            lines = []
            if spec.approvals is not None:
                lines = await self.client.get_collection(spec.projection, spec.entity_set, typed,
                                                         spec.approvals.navigation)
            return mapper.map(row, key, row.get("@odata.etag") or last.etag, mapper.approvals(lines))
        except (BadRecordError, FatalRequestError):
            return last


def _typed_keys(spec: SourceSpec, key: str) -> dict[str, str | int]:
    """Key values from our key string ('A=x^B=1'), typed as the source declares them."""
    values = dict(part.split("=", 1) for part in key.split("^"))
    return {k: int(values[k]) if t == "int" else values[k] for k, t in spec.keys}


def _describe(exc: Exception) -> str:
    """What a failed poll says in status and audit: IFS's words, whole; no class names."""
    if isinstance(exc, AuthError):
        return f"IFS refused the service user: {exc}"
    if isinstance(exc, RetriableError):
        return f"IFS unavailable: {exc}"
    return str(exc)
