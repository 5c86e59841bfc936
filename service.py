"""The service wired together: settings, store, IFS client, pollers, bot, delivery and web apps, and their
lifecycle. `app.py` (the command line) and `demo.py` both build it from here."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any
from zoneinfo import ZoneInfo

from bot.authz import AdminPolicy, GraphOwnerCheck
from bot.claims import CardActions
from bot.commands import Commands
from bot.delivery import DeliveryWorker, SharedPacing, SoloPacing
from bot.inbound import RejectedRequests
from bot.reminders import Reminders
from bot.rendering import CardRendering
from bot.teams import BotConfig, NotifierBot, SigningKeys, TeamsSender, make_adapter
from bot.web import WebApps
from cards import CardContext
from core.clock import Clock, SystemClock
from core.company import CompanyCheck
from core.domain import FinanceRecord, RecordKind
from core.errors import ConfigError, NotifierError
from core.metrics import Metrics
from core.retry import RetryPolicy
from core.secret import Secret
from core.settings import Settings
from pollers.engine import Poller, PollResult
from pollers.ifs_client import IfsClient, IfsClientConfig
from pollers.job import FencedWriter, SourceJobs
from pollers.sources import build_sources
from pollers.tenant import TenantSchema
from store.audit import AuditLog
from store.bindings import Bindings
from store.db import DB_ERRORS, Database, open_database, owner_only
from store.leader import (
    FileLeadership,
    Leadership,
    PgLeadership,
    Timing,
    ask_for_poll,
    polls_asked,
    replica_id,
)
from store.outbox import Outbox
from store.people import Claims, People
from store.poll_writer import PollWriter
from store.seen import Seen
from store.vault import KeyRing, Vault

log = logging.getLogger("notifier")

VERSION = "0.1.0"


# --------------------------------------------------------------------------- secrets and clients

@dataclass(frozen=True)
class Credentials:
    ifs_base_url: str
    ifs_client_id: str | None
    ifs_client_secret: Secret | None
    bot_app_id: str
    bot_app_password: Secret
    bot_tenant_id: str


async def load_credentials(settings: Settings, vault: Vault) -> Credentials:
    ifs_secret = await vault.get("ifs.client_secret")
    return Credentials(
        ifs_base_url=(await vault.get("ifs.base_url")) or settings.ifs.base_url,
        ifs_client_id=await vault.get("ifs.client_id"),
        ifs_client_secret=Secret(ifs_secret) if ifs_secret is not None else None,
        bot_app_id=(await vault.get("bot.app_id")) or "",
        bot_app_password=Secret((await vault.get("bot.app_password")) or ""),
        bot_tenant_id=(await vault.get("bot.tenant_id")) or "")


def make_ifs_client(settings: Settings, creds: Credentials, *, quick: bool = False) -> IfsClient:
    """The service's IFS client; `quick` (check, discover) gives up after two attempts within 15 s."""
    missing = [n for n, v in (("ifs.base_url", creds.ifs_base_url), ("ifs.client_id", creds.ifs_client_id),
                              ("ifs.client_secret", creds.ifs_client_secret)) if not v]
    if missing:
        raise ConfigError(missing[0], "not set: use `python app.py secrets set " + missing[0] + "`")
    if not settings.ifs.realm:
        raise ConfigError("ifs.realm", "not set (the IAM namespace in /auth/realms/<realm>/...)")
    s = settings.ifs
    return IfsClient(IfsClientConfig(
        base_url=creds.ifs_base_url, realm=s.realm, client_id=creds.ifs_client_id or "",
        client_secret=creds.ifs_client_secret or "", scope=s.scope, path_prefix=s.path_prefix, timeout=s.timeout,
        requests_per_minute=s.requests_per_minute, max_concurrency=s.max_concurrency,
        retry=RetryPolicy(base=0.5, cap=30.0, max_attempts=2 if quick else s.retry_attempts,
                          max_elapsed=min(15.0, s.retry_max_seconds) if quick else s.retry_max_seconds),
        user_agent=f"ifs-teams-notifier/{VERSION}", time_zone_aware=s.time_zone_aware))


# --------------------------------------------------------------------------- the service

class Service:
    """Everything wired together: the poll jobs (pollers.job), card rendering (bot.rendering), the delivery
    worker, the bot and its web apps (bot.web). start() brings them up, stop() takes them down; the methods
    below are the Runtime the chat commands ask (bot.commands) and the names the CLI and tests use."""

    def __init__(self, settings: Settings, db: Database, vault: Vault, creds: Credentials, *,
                 service_url_override: str | None = None, clock: Clock | None = None) -> None:
        if not creds.bot_app_id and not settings.service.dev_mode:
            raise ConfigError("bot.app_id", "not set. Set it with `python app.py secrets set bot.app_id`, or run"
                                            " with service.dev_mode = true on loopback for local development")
        self.settings = settings
        self.db = db
        self.vault = vault
        self.creds = creds
        self.metrics = Metrics()
        self.tz = ZoneInfo(settings.service.timezone)
        self.sources = build_sources(settings.sources)
        self.ifs = make_ifs_client(settings, creds)
        self.clock = clock or SystemClock()
        self.audit = AuditLog(db, self.clock)
        self.rejections = RejectedRequests(self.audit, self.clock)
        self._next_prune = 0.0
        self.bindings = Bindings(db, self.clock)
        self.people = People(db, self.clock)
        self.claims = Claims(db, self.clock)
        self.tenant = TenantSchema(self.ifs, self.sources)
        # several replicas (PostgreSQL): one runs the scheduler, every one delivers, under channel leases
        self.replica = replica_id(settings.service.replica_name)
        self.timing = Timing(settings.service.leader_takeover_seconds)
        self.shared = getattr(db, "dialect", "sqlite") == "postgresql"
        self.leadership: Leadership = (
            PgLeadership(db, settings.service.database, self.replica, self.timing, clock=self.clock) if self.shared
            else FileLeadership(db, settings.service.database, self.replica, self.timing, clock=self.clock))
        self.pacing = SharedPacing(db, self.replica, self.timing, clock=self.clock) if self.shared else SoloPacing()
        seen = Seen(db)
        self.poller = Poller(client=self.ifs, sources=self.sources, seen=seen, bindings=self.bindings,
                             writer=FencedWriter(PollWriter(db, self.clock), self.leadership.current),
                             audit=self.audit, ifs_base_url=creds.ifs_base_url,
                             page_size=settings.ifs.page_size, use_select=settings.ifs.select,
                             confirm_reads=settings.ifs.confirm_reads_per_cycle,
                             max_listing_pages=settings.ifs.max_listing_pages,
                             max_listing_seconds=settings.ifs.max_listing_seconds, clock=self.clock)
        self._install_gauges()
        self.jobs = SourceJobs(ifs=self.ifs, sources=self.sources, poller=self.poller, tenant=self.tenant,
                               bindings=self.bindings, people=self.people, seen=seen, audit=self.audit,
                               metrics=self.metrics, tz=self.tz, personal=settings.people.personal,
                               polled=self.wake_delivery, clock=self.clock, replica=self.replica)
        self.bot_config = BotConfig(APP_ID=creds.bot_app_id, APP_PASSWORD=creds.bot_app_password.reveal(),
                                    APP_TYPE=settings.bot.app_type if creds.bot_app_id else "MultiTenant",
                                    APP_TENANTID=creds.bot_tenant_id,
                                    OPENID_METADATA_URL=settings.bot.openid_metadata_url or None)
        self.adapter, self.credentials_factory = make_adapter(self.bot_config)
        self.signing_keys = SigningKeys()
        self.sender = TeamsSender(self.adapter, creds.bot_app_id, self.credentials_factory)
        self.rendering = CardRendering(
            people=self.people, claims=self.claims, link=self.jobs.link_record,
            timezone=settings.service.timezone, locale=settings.service.locale,
            ifs_base_url=creds.ifs_base_url or None,
            list_pages={k: s.list_page for k, s in self.sources.items() if s.list_page},
            digest_max_rows=settings.delivery.digest_max_rows, clock=self.clock)
        self.worker = DeliveryWorker(db, self.sender, self.rendering.renderer(), settings.delivery,
                                     timezone=settings.service.timezone, metrics=self.metrics, clock=self.clock,
                                     pacing=self.pacing)
        owner_check = None
        if settings.bot.owners_are_admins and creds.bot_app_id and creds.bot_app_password:
            owner_check = GraphOwnerCheck(creds.bot_app_id, creds.bot_app_password.reveal(), clock=self.clock)
        self.commands = Commands(db, self, AdminPolicy(settings.bot.admins, owner_check), people=settings.people,
                                 clock=self.clock)
        self.reminders = Reminders(db, partial(self.worker.send_card, what="reminder"), settings.people,
                                   timezone=settings.service.timezone, holidays=settings.schedule.holidays,
                                   card_context=self.rendering.card_context, link=self.jobs.link_record)
        self.bot = NotifierBot(db, self.commands, welcome=settings.bot.welcome,
                               actions=CardActions(db, self.rendering.render_record_card, clock=self.clock,
                                                   snooze_until=self.reminders.snooze_until,
                                                   refresh=partial(self.rendering.refresh_cards, self.worker)))
        self.web = WebApps(settings.service, version=VERSION, db=db, bot_config=self.bot_config, adapter=self.adapter,
                           credentials_factory=self.credentials_factory, bot=self.bot, rejections=self.rejections,
                           metrics=self.metrics, ifs_token_state=self.ifs.token_state)
        self._tasks: list[asyncio.Task] = []
        self._leader_tasks: list[asyncio.Task] = []  # what only the leader runs (reminders, the tenant check)
        self._delivering = False
        self._asks: set[asyncio.Task] = set()
        self._stopped = False

    # ------------------------------------------------------------------ Runtime protocol for commands

    def card_context(self) -> CardContext:
        return self.rendering.card_context()

    def link_record(self, record: FinanceRecord) -> FinanceRecord:
        return self.jobs.link_record(record)

    async def check_company(self, company: str) -> CompanyCheck:
        return await self.jobs.check_company(company)

    def ifs_load(self) -> dict[str, float]:
        return self.jobs.ifs_load()

    def source_problems(self) -> dict[str, tuple[str | None, tuple[str, ...]]]:
        return self.jobs.source_problems()

    def next_runs(self) -> dict[str, float | None]:
        return self.jobs.next_runs()

    def ifs_token_state(self) -> dict[str, Any]:
        return self.jobs.ifs_token_state()

    def poll_soon(self) -> None:
        """Poll at once: here when this replica runs the scheduler, else asked of the one that does."""
        if self.jobs.scheduler is not None:
            self.jobs.poll_soon()
            return
        task = asyncio.create_task(self._ask_for_poll(), name="ask-for-poll")
        self._asks.add(task)
        task.add_done_callback(self._asks.discard)

    async def _ask_for_poll(self) -> None:
        try:
            await ask_for_poll(self.db, self.replica, self.clock.time())
        except DB_ERRORS as exc:
            log.warning("could not ask the scheduler for a poll: %s", exc)

    async def _watch_poll_requests(self, seen: int) -> None:
        """On the leader: a poll asked for by another replica (or a stand-by process) starts here."""
        while True:
            await asyncio.sleep(self.timing.check_every)
            try:
                asked = await polls_asked(self.db)
            except DB_ERRORS as exc:
                log.warning("poll requests not read: %s", exc)
                continue
            if asked > seen:
                seen = asked
                self.jobs.poll_soon()

    def wake_delivery(self) -> None:
        self.worker.wake()

    async def poll_source(self, kind: RecordKind) -> list[PollResult]:
        return await self.jobs.poll_source(kind)

    async def poll_once(self) -> list[PollResult]:
        """Every enabled source once (`poll --once`), unless another process runs the scheduler."""
        async with self.leadership.exclusive() as ours:
            if not ours:
                raise NotifierError("another process runs the scheduler on this database and polls: a poll from"
                                    " here would run alongside its polls (`audit --category lifecycle` names it)")
            return await self.jobs.poll_once()

    def _install_gauges(self) -> None:
        """Series read at each scrape: the outbox (from the database); the IFS client's own totals are SourceJobs'."""
        async def backlog():
            return {(status,): float(n) for status, n in (await Outbox(self.db).counts()).items()}

        async def age():
            return {(): await Outbox(self.db).oldest_pending_age()}

        self.metrics.observe("notifier_outbox_deliveries", "Deliveries in the outbox, by status", backlog,
                             labels=("status",))
        self.metrics.observe("notifier_queue_oldest_seconds", "Age of the oldest undelivered delivery", age)

        async def leading():
            return {(): 1.0 if self.leadership.is_leader else 0.0}

        self.metrics.observe("notifier_scheduler_leader", "1 when this replica runs the scheduler (polls)", leading)

    # ------------------------------------------------------------------ lifecycle

    async def start(self, *, web_runner: bool = True, background: bool = True) -> None:
        """Start the web app and (with `background`) the poll scheduler and the delivery worker."""
        # the sockets first: a busy port must stop start-up before any poll has begun
        if web_runner:
            self.base_url, self.ops_url = await self.web.start()
            if not self.bot_config.auth_disabled:
                self._tasks.append(asyncio.create_task(self.signing_keys.run(), name="signing-keys"))
        await self.housekeep()  # the audit retention applies from the start, not a day later
        self._tasks.append(asyncio.create_task(self._housekeeping(), name="housekeeping"))
        await self.audit.record("system", "service started", "ok", version=VERSION, replica=self.replica,
                                auth="off (development)" if self.bot_config.auth_disabled else "on")
        if background:
            if self.shared:  # every replica delivers; SQLite: only the process holding the lock file
                self._tasks.append(asyncio.create_task(self.pacing.run(), name="replica-heartbeat"))
                self._start_delivery()
            self._tasks.append(asyncio.create_task(self.leadership.run(self._lead, self._follow), name="leadership"))
        log.info("service started on %s:%s (bot authentication %s)", self.settings.service.host,
                 self.settings.service.port, "OFF, development mode" if self.bot_config.auth_disabled else "on")

    def _start_delivery(self) -> None:
        if not self._delivering:
            self._delivering = True
            # several replicas: a poll wakes only the leader's worker; the others look for work (theirs to take
            # over, or their share of a burst) every heartbeat instead of every 5 s
            idle = min(5.0, self.timing.heartbeat_every) if self.shared else 5.0
            self._tasks.append(asyncio.create_task(self.worker.run(idle=idle), name="delivery-worker"))

    async def _lead(self, epoch: int) -> None:
        """This replica runs the scheduler now: it polls at once, then on schedule."""
        await self.audit.record("lifecycle", "leadership acquired", "ok", actor=self.replica, epoch=epoch,
                                backend="postgresql" if self.shared else "sqlite")
        log.info("%s runs the scheduler (epoch %d)", self.replica, epoch)
        self.jobs.epoch = epoch
        asked = await polls_asked(self.db)  # (the first poll starts now anyway)
        self.jobs.start(self.settings.schedule)
        self._leader_tasks.append(asyncio.create_task(self._watch_poll_requests(asked), name="poll-requests"))
        if self.settings.people.remind_at:
            self._leader_tasks.append(asyncio.create_task(self._reminding(), name="reminders"))
        self._leader_tasks.append(asyncio.create_task(self.jobs.validate_sources(), name="validate-sources"))
        # last: on SQLite only the lock's holder delivers, so a start that failed above (the lock given back,
        # the other process taking over) must not leave this one delivering beside it
        self._start_delivery()

    async def _stop_leading(self) -> None:
        await self.jobs.stop_polls()
        tasks, self._leader_tasks = self._leader_tasks, []
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _follow(self, reason: str) -> None:
        """Leadership lost: the scheduler stops and its polls are cancelled before anything else."""
        await self._stop_leading()
        log.error("%s no longer runs the scheduler: %s", self.replica, reason)
        try:
            await self.audit.record("lifecycle", "leadership lost", "error", actor=self.replica,
                                    epoch=self.jobs.epoch, reason=reason)
        except Exception as exc:  # noqa: BLE001 - the database may be what was lost
            log.warning("leadership loss not audited: %s", exc)
        self.jobs.epoch = 0

    async def housekeep(self, *, prune: bool = True) -> None:
        """Periodic upkeep: rejected-request counts of a past minute written out; once a day (with `prune`:
        at start, and then on the replica running the scheduler), audit rows older than
        service.audit_retention_days deleted."""
        await self.rejections.tick()
        now = self.clock.time()
        if prune and now >= self._next_prune:
            self._next_prune = now + 86400.0
            removed = await self.audit.prune(self.settings.service.audit_retention_days)
            if removed:
                log.info("deleted %d audit rows older than %d days", removed,
                         self.settings.service.audit_retention_days)

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(60)
            try:
                await self.housekeep(prune=self.leadership.is_leader)
            except DB_ERRORS as exc:  # a full disk, a lost database server: try again next round
                log.warning("housekeeping failed: %s", exc)
            except Exception:  # noqa: BLE001 - anything else is a bug, but the next round may still work
                log.exception("housekeeping failed")

    async def _reminding(self) -> None:
        """Reminder digests: the slot due now is looked for once a minute (each is sent once)."""
        while True:
            try:
                await self.reminders.run_due(self.clock.time())
            except DB_ERRORS as exc:
                log.warning("reminders failed: %s", exc)
            except Exception:  # noqa: BLE001 - as for housekeeping: logged, and tried again in a minute
                log.exception("reminders failed")
            await asyncio.sleep(60)

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        # leadership first: a lead gained while the scheduler was being stopped would start one nothing stops
        leading = [t for t in self._tasks if t.get_name() == "leadership"]
        for t in leading:
            t.cancel()
        await asyncio.gather(*leading, return_exceptions=True)
        await self._stop_leading()
        await asyncio.gather(*self._asks, return_exceptions=True)  # (each a single short write)
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        try:
            await self.pacing.leave()  # this replica's heartbeat and channel leases go now
        except Exception as exc:  # noqa: BLE001 - they run out by themselves
            log.warning("replica not deregistered: %s", exc)
        await self.web.stop()
        await self.rejections.flush()
        await self.ifs.aclose()
        await self.audit.record("system", "service stopped", "ok", replica=self.replica)


async def open_store(settings: Settings, *, keys: bool = True) -> tuple[Database, Vault]:
    """The database and its vault. `keys`: the key file is made owner-only first (also when the command then
    reads no secret); False for commands that only read or write rows."""
    if keys:
        owner_only(settings.service.key_file, "service.key_file")
    db = await open_database(settings.service.database)
    return db, Vault(db, KeyRing(settings.service.key_file, env=os.environ))


@asynccontextmanager
async def opened_store(settings: Settings, *, keys: bool = True) -> AsyncIterator[tuple[Database, Vault]]:
    """The store for one command, closed when the command is done with it, however that ends (aiosqlite's
    worker thread would keep the process alive otherwise)."""
    db, vault = await open_store(settings, keys=keys)
    try:
        yield db, vault
    finally:
        await db.close()


async def build_service(settings: Settings, secrets: Mapping[str, str] | None = None, *,
                        clock: Clock | None = None) -> Service:
    """Open the store, store any `secrets` given (demo, tests, benchmarks), and wire the service."""
    db, vault = await open_store(settings)
    try:
        for name, value in (secrets or {}).items():
            await vault.set(name, value)
        creds = await load_credentials(settings, vault)
        return Service(settings, db, vault, creds, clock=clock)
    except BaseException:
        await db.close()  # aiosqlite's worker thread would keep the process alive after the error
        raise


async def run_until_signalled(service: Service) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await service.start()
        await stop.wait()
    finally:
        try:
            await service.stop()
        finally:
            await service.db.close()
