"""The scheduled poll job: one job per source under its own lock, the metrics and IFS load of each cycle,
the tenant validation a poll and `link company` rely on, and the scheduler that runs the jobs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from core.clock import SYSTEM_CLOCK, Clock
from core.company import CompanyCheck
from core.domain import FinanceRecord, RecordKind
from core.errors import NotifierError
from core.metrics import Metrics
from core.settings import ScheduleSettings
from pollers.engine import IfsLoad, Poller, PollResult
from pollers.ifs_client import FILTER_CHARS, IfsClient
from pollers.schedule import PollTrigger
from pollers.sources import SourceSpec
from pollers.tenant import TenantSchema, Validation
from store.audit import AuditLog
from store.bindings import Bindings
from store.leader import LeadershipLost
from store.people import People
from store.poll_writer import Finished, PollWriter
from store.seen import Seen

log = logging.getLogger(__name__)

# IFS client totals exposed as counters, read at each scrape
IFS_STATS = (("requests", "HTTP requests sent to IFS, token requests included"),
             ("retries", "IFS requests sent again after a retriable failure or a 401"),
             ("throttled", "429 answers received from IFS"),
             ("token_renewals", "IFS access tokens obtained"),
             ("failures", "IFS calls that ended in an error raised to the caller"),
             ("bytes", "Response bytes received from IFS"))


class FencedWriter:
    """A poll's writer whose writes go through only while `current()` says this process holds the lead
    (store.leader.Leadership.current); otherwise LeadershipLost, and the poll ends there."""

    def __init__(self, writer: PollWriter, current: Callable[[], bool]) -> None:
        self._writer = writer
        self._current = current

    def _check(self) -> None:
        if not self._current():
            raise LeadershipLost("this replica's lead is not current: the poll's write was refused")

    async def apply(self, *args: Any, **kwargs: Any) -> int:
        self._check()
        return await self._writer.apply(*args, **kwargs)

    async def finish_many(self, *args: Any, **kwargs: Any) -> None:
        self._check()
        await self._writer.finish_many(*args, **kwargs)

    async def set_ifs_available(self, *args: Any, **kwargs: Any) -> None:
        self._check()
        await self._writer.set_ifs_available(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:  # reads (ifs_available) as the writer has them
        return getattr(self._writer, name)


class SourceJobs:
    """Polls each source for every linked company, on a schedule or on demand, and answers what the chat
    commands ask of the pollers (a company's check, the sources' problems, the load on IFS)."""

    def __init__(self, *, ifs: IfsClient, sources: Mapping[RecordKind, SourceSpec], poller: Poller,
                 tenant: TenantSchema, bindings: Bindings, people: People, seen: Seen, audit: AuditLog,
                 metrics: Metrics, tz: ZoneInfo, personal: bool, polled: Callable[[], None],
                 clock: Clock = SYSTEM_CLOCK, replica: str | None = None) -> None:
        self.clock = clock
        self.replica = replica  # named on each poll's start and end rows in the audit trail
        self.epoch = 0  # the leadership epoch under which this replica polls (0: not elected)
        self._running: set[asyncio.Task[Any]] = set()
        self._stopped: set[asyncio.Task[Any]] = set()  # polls stop_polls cancelled (their end is no error)
        self.ifs = ifs
        self.sources = sources
        self.poller = poller
        self.tenant = tenant
        self.bindings = bindings
        self.people = people
        self.seen = seen
        self.audit = audit
        self.metrics = metrics
        self.tz = tz
        self.personal = personal
        self.polled = polled  # after each job: the poll's deliveries are waiting
        self.load = IfsLoad()
        # one lock per source: a source stuck in a long listing never holds up the others
        self.locks = {kind: asyncio.Lock() for kind in RecordKind}
        self.scheduler: AsyncIOScheduler | None = None
        for stat, help in IFS_STATS:
            metrics.counter_from(f"notifier_ifs_{stat}_total", help, lambda stat=stat: self.ifs.stats[stat])

    # ------------------------------------------------------------------ polling

    async def poll_source(self, kind: RecordKind) -> list[PollResult]:
        """One scheduled job: this source for every company an active channel is bound to."""
        task = asyncio.current_task()
        if task is not None:
            self._running.add(task)
        try:
            return await self._poll_source(kind)
        except asyncio.CancelledError:
            if task is not None and task in self._stopped:  # stop_polls: an orderly end, not an error
                return []  # (the scheduler would log it with a traceback)
            raise
        finally:
            if task is not None:
                self._running.discard(task)

    async def _poll_source(self, kind: RecordKind) -> list[PollResult]:
        results = []
        async with self.locks[kind]:
            companies = await self.bindings.companies()
            if not companies:
                return []  # nothing linked: nothing to ask of IFS, nothing to write
            # the poll's start and end in the audit trail, with the replica: never two replicas at once
            await self.audit.record("poll", "poll started", "ok", actor=self.replica, source=kind.value,
                                    epoch=self.epoch)
            outcome = "cancelled"
            try:
                results = await self._poll_companies(kind, companies)
                outcome = "ok"
            except Exception:
                outcome = "failed"
                raise
            finally:
                with contextlib.suppress(Exception):  # a replica cut off from the database cannot say so
                    await asyncio.wait_for(asyncio.shield(self.audit.record(
                        "poll", "poll ended", outcome, actor=self.replica, source=kind.value,
                        epoch=self.epoch)), 5.0)
        self.polled()
        return results

    async def _poll_companies(self, kind: RecordKind, companies: list[str]) -> list[PollResult]:
        results: list[PollResult] = []
        validation = await self.validated(kind)
        if validation is not None and validation.fatal:
            # the names this source needs do not exist on the tenant: say which setting, poll nothing
            fix = validation.fix
            await self.poller.writer.finish_many(
                kind, [Finished(c, False, None, fix, {"error": fix}) for c in companies], self.audit)
            return []
        if validation is not None:
            self.poller.set_source(validation.spec)
        started = self.clock.monotonic()
        cycle = await self.poller.poll_many(kind, companies)
        seconds = self.clock.monotonic() - started
        requests, received = sum(r.requests for r in cycle), sum(r.bytes for r in cycle)
        self.load.record(self.clock.time(), requests, received, seconds)
        self.metrics.observe_value("notifier_poll_cycle_seconds", seconds, source=kind.value)
        self.metrics.inc("notifier_poll_ifs_requests_total", requests, source=kind.value)
        self.metrics.inc("notifier_poll_ifs_bytes_total", received, source=kind.value)
        for result in cycle:
            if not result.ok and result.status == 400:  # a name IFS no longer has: read $metadata again
                self.tenant.invalidate(self.sources[kind].projection)
            results.append(result)
            self.metrics.inc("notifier_polls_total", source=kind.value, outcome="ok" if result.ok else "failed")
            if result.ok:
                self.metrics.set_to_now("notifier_last_successful_poll_timestamp_seconds", source=kind.value)
            self.metrics.inc("notifier_records_seen_total", result.rows, source=kind.value)
            for etype in ("new", "changed", "resolved"):
                self.metrics.inc("notifier_events_total", getattr(result, etype), type=etype, source=kind.value)
            if result.bad:
                self.metrics.inc("notifier_bad_rows_total", result.bad, source=kind.value)
        # the poll's events also go to the personal chats of the approvers they wait for
        await self.people.route_personal(enabled=self.personal)
        return results

    async def poll_once(self) -> list[PollResult]:
        """Every enabled source once (the `poll --once` command)."""
        return [r for kind, spec in self.sources.items() if spec.enabled for r in await self.poll_source(kind)]

    def link_record(self, record: FinanceRecord) -> FinanceRecord:
        """The record with its "Open in IFS" link (links are built at render time, not per polled row)."""
        if record.deep_link or record.kind not in self.sources:
            return record
        return replace(record, deep_link=self.poller.mapper(record.kind).link_for(record))

    # ------------------------------------------------------------------ schedule

    def start(self, schedule: ScheduleSettings) -> None:
        """A job per enabled source, each due at once, then as `schedule` says."""
        self.scheduler = AsyncIOScheduler(timezone=self.tz)
        for kind, spec in self.sources.items():
            if spec.enabled:
                self.scheduler.add_job(self.poll_source, PollTrigger(schedule, self.tz),
                                       args=[kind], id=kind.value, max_instances=1, coalesce=True,
                                       misfire_grace_time=300, next_run_time=datetime.fromtimestamp(self.clock.time(), self.tz))
        self.scheduler.start()

    def shutdown(self) -> None:
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=False)
            self.scheduler = None

    async def stop_polls(self) -> None:
        """Leadership lost (or stopping): no new poll starts, and the polls under way are cancelled now."""
        self.shutdown()
        running = [t for t in self._running if not t.done()]
        for t in running:
            self._stopped.add(t)
            t.cancel()
        if running:
            await asyncio.gather(*running, return_exceptions=True)
            self._stopped.difference_update(running)
            log.warning("%d poll(s) cancelled", len(running))

    def next_runs(self) -> dict[str, float | None]:
        if self.scheduler is None:
            return {}
        out = {}
        for job in self.scheduler.get_jobs():
            out[job.id] = job.next_run_time.timestamp() if job.next_run_time else None
        return out

    def poll_soon(self) -> None:
        if self.scheduler is not None:
            now = datetime.fromtimestamp(self.clock.time(), self.tz)
            for job in self.scheduler.get_jobs():
                job.modify(next_run_time=now)

    # ------------------------------------------------------------------ the tenant

    async def validated(self, kind: RecordKind) -> Validation | None:
        """The source checked against the tenant's $metadata, or None when that cannot be read now (the poll
        then runs as configured and reports what IFS says)."""
        try:
            return await self.tenant.validate(kind)
        except NotifierError:
            return None

    async def validate_sources(self) -> None:
        """Check every enabled source's names against the tenant once at start (one log line per problem),
        whether or not a channel is linked yet."""
        for kind, spec in self.sources.items():
            if spec.enabled:
                await self.validated(kind)

    def source_problems(self) -> dict[str, tuple[str | None, tuple[str, ...]]]:
        """Per kind: the line that says why it cannot be polled (or None), and the names left out of it."""
        out = {}
        for kind in self.sources:
            v = self.tenant.last(kind)
            if v is not None and v.problems:
                out[kind.value] = (v.fix, tuple(p.line() for p in v.problems if not p.fatal))
        return out

    def ifs_load(self) -> dict[str, float]:
        load = self.load.summary(self.clock.time())
        if self.ifs.filter_chars < FILTER_CHARS:  # IFS refused long URLs: listings are split further
            load["filter_chars"] = self.ifs.filter_chars
        return load

    def ifs_token_state(self) -> dict[str, Any]:
        return self.ifs.token_state()

    async def check_company(self, company: str) -> CompanyCheck:
        """Whether IFS knows `company`, and for each kind whether its cards will arrive (and if not, why)."""
        kinds: dict[str, str | None] = {}
        usable: list[SourceSpec] = []
        for kind, spec in self.sources.items():
            if not spec.enabled:
                kinds[kind.plural] = f"[sources.{kind.value}] enabled = false in the service's configuration"
                continue
            validation = await self.validated(kind)
            if validation is not None and validation.fatal:
                kinds[kind.plural] = validation.fix
                continue
            kinds[kind.plural] = None
            usable.append(validation.spec if validation is not None else spec)
        try:
            found = False
            for spec in usable:
                if await self.ifs.probe(spec.projection, spec.entity_set,
                                        filter=spec.company_condition(company)):
                    found = True
                    break
        except NotifierError as exc:
            return CompanyCheck(False, error=f"IFS did not answer properly: {exc}", kinds=kinds)
        if not found and usable:
            return CompanyCheck(False, error="IFS returned no documents for it. Either the code is wrong, or the"
                                             " IFS service user is not allowed to see that company (Allowed Companies)",
                                kinds=kinds)
        pending: dict[str, int] = {}
        for st in await self.seen.source_states():
            if st.company == company:
                pending[RecordKind(st.kind).plural] = st.pending
        return CompanyCheck(True, pending=pending, kinds=kinds)
