"""Composition root and command line: settings, store, IFS client, scheduler, bot web app, delivery worker."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import logging
import os
import signal
import sqlite3
import sys
import tomllib
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any
from zoneinfo import ZoneInfo

from bot.authz import AdminPolicy, GraphOwnerCheck
from bot.bindings_io import export_bindings, import_bindings
from bot.claims import CardActions
from bot.commands import Commands
from bot.delivery import DeliveryWorker
from bot.inbound import RejectedRequests
from bot.people_io import export_people, import_people
from bot.reminders import Reminders
from bot.rendering import CardRendering
from bot.teams import BotConfig, NotifierBot, SigningKeys, TeamsSender, make_adapter
from bot.web import WebApps
from cards import CardContext
from core import runtime
from core.clock import Clock, SystemClock
from core.company import CompanyCheck
from core.domain import FinanceRecord, RecordKind
from core.errors import ConfigError, NotifierError
from core.metrics import Metrics
from core.retry import RetryPolicy
from core.secret import Secret
from core.settings import Settings, load_settings
from manifest.build import build_package
from pollers.engine import Poller, PollResult
from pollers.ifs_client import IfsClient, IfsClientConfig
from pollers.job import SourceJobs
from pollers.sources import build_sources
from pollers.tenant import TenantSchema, check_source, connection_problem, discover, render, toml_value
from store.audit import AuditLog
from store.bindings import Bindings
from store.db import Database, open_database, owner_only
from store.outbox import Outbox
from store.people import Claims, People
from store.poll_writer import PollWriter
from store.seen import Seen
from store.vault import KNOWN_SECRETS, KeyRing, Vault

log = logging.getLogger("notifier")

VERSION = "0.1.0"


# --------------------------------------------------------------------------- logging

class JsonFormatter(logging.Formatter):
    KEYS = ("company", "source", "record", "delivery", "command", "channel")

    def format(self, record: logging.LogRecord) -> str:
        out = {"at": round(record.created, 3), "level": record.levelname, "logger": record.name,
               "message": record.getMessage()}
        for k in self.KEYS:
            if hasattr(record, k):
                out[k] = getattr(record, k)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging(settings: Settings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if settings.service.log_format == "json"
                         else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.service.log_level.upper())
    for noisy in ("httpx", "httpcore", "msal", "msrest", "urllib3", "apscheduler", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


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
        self.poller = Poller(client=self.ifs, sources=self.sources, seen=Seen(db), bindings=self.bindings,
                             writer=PollWriter(db, self.clock), audit=self.audit, ifs_base_url=creds.ifs_base_url,
                             page_size=settings.ifs.page_size, use_select=settings.ifs.select,
                             confirm_reads=settings.ifs.confirm_reads_per_cycle,
                             max_listing_pages=settings.ifs.max_listing_pages,
                             max_listing_seconds=settings.ifs.max_listing_seconds, clock=self.clock)
        self._install_gauges()
        self.jobs = SourceJobs(ifs=self.ifs, sources=self.sources, poller=self.poller, tenant=self.tenant,
                               bindings=self.bindings, people=self.people, seen=Seen(db), audit=self.audit,
                               metrics=self.metrics, tz=self.tz, personal=settings.people.personal,
                               polled=self.wake_delivery, clock=self.clock)
        self.bot_config = BotConfig(APP_ID=creds.bot_app_id, APP_PASSWORD=creds.bot_app_password.reveal(),
                                    APP_TYPE=settings.bot.app_type if creds.bot_app_id else "MultiTenant",
                                    APP_TENANTID=creds.bot_tenant_id,
                                    OPENID_METADATA_URL=settings.bot.openid_metadata_url or None)
        self.adapter, self.credentials_factory = make_adapter(self.bot_config)
        self.signing_keys = SigningKeys()
        self.sender = TeamsSender(self.adapter, creds.bot_app_id)
        self.rendering = CardRendering(
            people=self.people, claims=self.claims, link=self.jobs.link_record,
            timezone=settings.service.timezone, locale=settings.service.locale,
            ifs_base_url=creds.ifs_base_url or None,
            list_pages={k: s.list_page for k, s in self.sources.items() if s.list_page},
            digest_max_rows=settings.delivery.digest_max_rows, clock=self.clock)
        self.worker = DeliveryWorker(db, self.sender, self.rendering.renderer(), settings.delivery,
                                     timezone=settings.service.timezone, metrics=self.metrics, clock=self.clock)
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
        self._poll_locks = self.jobs.locks
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
        self.jobs.poll_soon()

    def wake_delivery(self) -> None:
        self.worker.wake()

    async def poll_source(self, kind: RecordKind) -> list[PollResult]:
        return await self.jobs.poll_source(kind)

    async def poll_once(self) -> list[PollResult]:
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
        if background:
            self.jobs.start(self.settings.schedule)
            self._tasks.append(asyncio.create_task(self.worker.run(), name="delivery-worker"))
            if self.settings.people.remind_at:
                self._tasks.append(asyncio.create_task(self._reminding(), name="reminders"))
            self._tasks.append(asyncio.create_task(self.jobs.validate_sources(), name="validate-sources"))
        await self.audit.record("system", "service started", "ok", version=VERSION,
                                auth="off (development)" if self.bot_config.auth_disabled else "on")
        log.info("service started on %s:%s (bot authentication %s)", self.settings.service.host,
                 self.settings.service.port, "OFF, development mode" if self.bot_config.auth_disabled else "on")

    async def housekeep(self) -> None:
        """Periodic upkeep: rejected-request counts of a past minute written out; once a day, audit rows
        older than service.audit_retention_days deleted."""
        await self.rejections.tick()
        now = self.clock.time()
        if now >= self._next_prune:
            self._next_prune = now + 86400.0
            removed = await self.audit.prune(self.settings.service.audit_retention_days)
            if removed:
                log.info("deleted %d audit rows older than %d days", removed,
                         self.settings.service.audit_retention_days)

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(60)
            try:
                await self.housekeep()
            except sqlite3.Error as exc:  # a full disk, say: try again next round
                log.warning("housekeeping failed: %s", exc)

    async def _reminding(self) -> None:
        """Reminder digests: the slot due now is looked for once a minute (each is sent once)."""
        while True:
            try:
                await self.reminders.run_due(self.clock.time())
            except sqlite3.Error as exc:
                log.warning("reminders failed: %s", exc)
            await asyncio.sleep(60)

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self.jobs.shutdown()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.web.stop()
        await self.rejections.flush()
        await self.ifs.aclose()
        await self.audit.record("system", "service stopped", "ok")


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


# --------------------------------------------------------------------------- CLI commands

async def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    service = await build_service(settings)
    runtime.settle()
    await run_until_signalled(service)
    return 0


async def cmd_poll(settings: Settings, args: argparse.Namespace) -> int:
    service = await build_service(settings)
    try:
        results = await service.poll_once()
        if args.deliver:
            await service.worker.run_once()
        for r in results:
            print(f"{r.kind.value:8} company {r.company:6} {'ok' if r.ok else 'FAILED':6} rows={r.rows} pending={r.pending}"
                  f" new={r.new} changed={r.changed} resolved={r.resolved} bad={r.bad} deliveries={r.deliveries}"
                  f" {r.seconds:.2f}s" + (f" error: {r.error}" if r.error else ""))
        if not results:
            print("nothing to poll: no channel is linked to a company yet (link one in Teams, or `bindings import`)")
        return 0 if all(r.ok for r in results) else 1
    finally:
        await service.ifs.aclose()
        await service.db.close()


async def cmd_check(settings: Settings, args: argparse.Namespace) -> int:
    """Token, then per enabled source: names against $metadata and the poll's own queries. Exit 1 on any FAIL."""
    async with opened_store(settings) as (db, vault):
        creds = await load_credentials(settings, vault)
        companies = await Bindings(db).companies()
    try:
        client = make_ifs_client(settings, creds, quick=True)
    except ConfigError as exc:
        print(f"FAIL {exc.key}: {exc.problem}")
        return 1
    ok = True
    try:
        try:
            await client.ensure_token()
        except NotifierError as exc:
            print("FAIL " + connection_problem(exc, base_url=creds.ifs_base_url, realm=settings.ifs.realm))
            return 1
        print(f"ok   token from {creds.ifs_base_url}/auth/realms/{settings.ifs.realm}")
        sources = build_sources(settings.sources)
        schema = TenantSchema(client, sources, log_problems=False)
        company = args.company or (companies[0] if companies else None)
        for kind, spec in sources.items():
            if not spec.enabled:
                print(f"skip {kind.plural}: enabled = false")
                continue
            try:
                lines = await check_source(client, schema, kind, company, use_select=settings.ifs.select)
            except NotifierError as exc:
                lines = [("FAIL", connection_problem(exc, base_url=creds.ifs_base_url, realm=settings.ifs.realm))]
            for level, text in lines:
                print(f"{level:4} {text}")
                ok = ok and level != "FAIL"
    finally:
        await client.aclose()
    if not creds.bot_app_id:
        print("warn bot.app_id not set: only development mode (auth off, loopback) will start")
    return 0 if ok else 1


async def cmd_discover(settings: Settings, args: argparse.Namespace) -> int:
    """Propose [sources.*] for this tenant from its catalogue and $metadata; --write FILE for review."""
    async with opened_store(settings) as (db, vault):
        creds = await load_credentials(settings, vault)
    try:
        client = make_ifs_client(settings, creds, quick=True)
    except ConfigError as exc:
        print(f"error: {exc.key}: {exc.problem}", file=sys.stderr)
        return 1
    try:
        try:
            await client.ensure_token()
            progress = (lambda line: print(line, file=sys.stderr)) if args.write else print
            proposals = await discover(client, company=args.company, progress=progress)
        except NotifierError as exc:
            print("error: " + connection_problem(exc, base_url=creds.ifs_base_url, realm=settings.ifs.realm),
                  file=sys.stderr)
            return 1
    finally:
        await client.aclose()
    header = (f"# Proposed by `app.py discover` from {creds.ifs_base_url} on {datetime.now().date()}.\n"
              "# Review each choice (comments say why; `# guess` marks what nothing matched well), then run\n"
              "# `python app.py --config THIS_FILE check`.\n")
    text = render(proposals)
    if not args.write:
        print(header + "\n" + text)
        return 0
    base = settings_toml(settings)
    try:
        with open(args.write, "x" if not args.force else "w", encoding="utf-8") as f:
            f.write(header + "\n" + base + text)
    except FileExistsError:
        print(f"error: {args.write} exists (use --force to replace it)", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: cannot write {args.write}: {exc.strerror}", file=sys.stderr)
        return 1
    print(f"wrote {args.write}: review it, then `python app.py --config {args.write} check`", file=sys.stderr)
    return 0


def settings_toml(settings: Settings) -> str:
    """The sections of the settings file in use other than [sources.*], so a written proposal is a whole config."""
    if not settings.path:
        return ""
    with open(settings.path, "rb") as f:
        raw = tomllib.load(f)
    out = []
    for section, table in raw.items():
        if section == "sources" or not isinstance(table, dict):
            continue
        out.append(f"[{section}]")
        out += [f"{k} = {toml_value(v)}" for k, v in table.items()]
        out.append("")
    return "\n".join(out) + "\n"


async def cmd_audit(settings: Settings, args: argparse.Namespace) -> int:
    async with opened_store(settings, keys=False) as (db, _vault):
        entries = await AuditLog(db).recent(limit=args.last, failed_only=args.failed, category=args.category)
        entries.reverse()
        if args.json:
            print(json.dumps([e.to_dict() for e in entries], indent=1, default=str))
        else:
            for e in entries:
                when = datetime.fromtimestamp(e.at).strftime("%Y-%m-%d %H:%M:%S")
                print(f"{when} #{e.id:<6} {e.category:9} {e.action:28} {e.outcome:8} "
                      f"{e.channel_id or '':30.30} {json.dumps(e.detail, default=str)[:160]}")
        return 0


async def cmd_secrets(settings: Settings, args: argparse.Namespace) -> int:
    async with opened_store(settings) as (db, vault):
        if args.action == "list":
            names = dict(await vault.names())
            for name, meaning in KNOWN_SECRETS.items():
                state = ("set " + datetime.fromtimestamp(names[name]).strftime("%Y-%m-%d %H:%M")) \
                    if name in names else "not set"
                print(f"{name:20} {state:22} {meaning}")
        elif args.action == "set":
            if args.name not in KNOWN_SECRETS:
                raise ConfigError(args.name, f"unknown secret (known: {', '.join(KNOWN_SECRETS)})")
            if sys.stdin.isatty():
                value = getpass.getpass(f"{args.name}: ")
            else:
                value = sys.stdin.readline().rstrip("\r\n")
            await vault.set(args.name, value)
            print(f"{args.name} stored (encrypted)")
        elif args.action == "delete":
            print(f"{args.name} {'deleted' if await vault.delete(args.name) else 'was not set'}")
        elif args.action == "rotate-key":
            n = await vault.rotate_key()
            print(f"master key rotated; {n} secrets re-encrypted; old key retired")
        return 0


async def cmd_bindings(settings: Settings, args: argparse.Namespace) -> int:
    async with opened_store(settings, keys=False) as (db, _vault):
        if args.action in ("list", "export"):
            data = await export_bindings(db)
            if args.action == "export":
                print(json.dumps(data, indent=1))
            else:
                for b in data["bindings"]:
                    print(f"{b['channel_id']:45.45} company {b['company']:6} kinds {','.join(b['kinds'])}"
                          + (f" costcenter {','.join(b['cost_centers'])}" if b["cost_centers"] else "")
                          + (f" min {b['min_amount']}" if b["min_amount"] is not None else ""))
        else:
            raw = sys.stdin.read() if args.file == "-" else open(args.file, encoding="utf-8").read()
            n = await import_bindings(db, json.loads(raw), actor="cli")
            print(f"imported {n} bindings")
        return 0


async def cmd_people(settings: Settings, args: argparse.Namespace) -> int:
    if args.action == "import":  # read (and fail on a missing file) before the database is opened
        raw = sys.stdin.read() if args.file == "-" else open(args.file, encoding="utf-8").read()
    async with opened_store(settings, keys=False) as (db, _vault):
        if args.action == "export":
            sys.stdout.write(await export_people(db))
        else:
            print(f"imported {await import_people(db, raw, actor='cli')} people")
        return 0


async def cmd_replay(settings: Settings, args: argparse.Namespace) -> int:
    async with opened_store(settings, keys=False) as (db, _vault):
        ids = await Outbox(db).replay(delivery_id=args.id, channel_id=args.channel)
        await AuditLog(db).record("delivery", "replay", "ok", actor="cli", deliveries=ids[:100], count=len(ids))
        print(f"re-queued {len(ids)} deliveries" + (f": {', '.join(map(str, ids[:20]))}" if ids else ""))
        return 0


async def cmd_backup(settings: Settings, args: argparse.Namespace) -> int:
    async with opened_store(settings, keys=False) as (db, _vault):
        await db.backup_to(args.target)
        os.chmod(args.target, 0o600)
        print(f"backup written to {args.target} (secrets stay encrypted; keep the key file separately)")
        return 0


async def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    # imported here, not at the top: demo imports app (it runs the service this module wires)
    from demo import run_demo

    return await run_demo(args)


async def cmd_manifest(settings: Settings, args: argparse.Namespace) -> int:
    app_id = args.app_id
    if app_id is None and os.path.exists(settings.service.database):
        async with opened_store(settings) as (_db, vault):
            app_id = await vault.get("bot.app_id")
    path = build_package(settings, app_id=app_id, out_dir=args.out, version=args.version)
    print(f"Teams app package written to {path}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="app.py", description="IFS Cloud approvals in Microsoft Teams")
    p.add_argument("--config", metavar="PATH", default=os.environ.get("NOTIFIER_CONFIG"),
                   help="TOML settings file (default: $NOTIFIER_CONFIG, else built-in defaults)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("serve", help="run the service (bot web app, pollers, delivery)").set_defaults(fn=cmd_serve)
    d = sub.add_parser("demo", help="run everything locally: IFS simulator, bot, connector stand-in or Playground")
    d.add_argument("--no-playground", action="store_true", help="use the built-in connector stand-in and console")
    d.add_argument("--poll-seconds", type=float, default=10.0)
    d.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (0: until Ctrl-C)")
    d.add_argument("--data-dir", default="var/demo")
    d.add_argument("--profile", default="default", choices=["default", "renamed", "lean"],
                   help="the simulated IFS tenant's names (renamed, lean: discover finds them at start)")
    d.set_defaults(fn=cmd_demo)
    pl = sub.add_parser("poll", help="poll IFS once and print a summary")
    pl.add_argument("--once", action="store_true", required=True)
    pl.add_argument("--deliver", action="store_true", help="also deliver what the poll queued")
    pl.set_defaults(fn=cmd_poll)
    c = sub.add_parser("check", help="IFS credentials, then every source's names and the queries a poll runs")
    c.add_argument("--company", help="company to run the listing with (default: the first linked one)")
    c.set_defaults(fn=cmd_check)
    dc = sub.add_parser("discover", help="read the tenant's catalogue and $metadata and propose [sources.*]")
    dc.add_argument("--company", help="company whose rows are sampled for plain-text states")
    dc.add_argument("--write", metavar="FILE", help="write a whole config (this one plus the proposal) for review")
    dc.add_argument("--force", action="store_true", help="replace FILE if it exists")
    dc.set_defaults(fn=cmd_discover)
    a = sub.add_parser("audit", help="show the audit trail")
    a.add_argument("--last", type=int, default=50)
    a.add_argument("--failed", action="store_true")
    a.add_argument("--category", choices=["poll", "delivery", "command", "lifecycle", "people", "record", "security",
                                          "system"])
    a.add_argument("--json", action="store_true")
    a.set_defaults(fn=cmd_audit)
    s = sub.add_parser("secrets", help="manage encrypted credentials (values are read from a prompt or stdin)")
    ss = s.add_subparsers(dest="action", required=True)
    ss.add_parser("list", help="names and when they were set (never values)")
    st = ss.add_parser("set", help="set one secret; the value is read from the terminal or stdin")
    st.add_argument("name", choices=sorted(KNOWN_SECRETS))
    sd = ss.add_parser("delete")
    sd.add_argument("name", choices=sorted(KNOWN_SECRETS))
    ss.add_parser("rotate-key", help="re-encrypt every secret under a new master key and retire the old one")
    s.set_defaults(fn=cmd_secrets)
    b = sub.add_parser("bindings", help="list, export or import company -> channel links")
    bs = b.add_subparsers(dest="action", required=True)
    bs.add_parser("list")
    bs.add_parser("export", help="JSON to stdout")
    bi = bs.add_parser("import", help="JSON from a file or - for stdin")
    bi.add_argument("file")
    b.set_defaults(fn=cmd_bindings)
    pp = sub.add_parser("people", help="export or import IFS user -> Teams user links (CSV)")
    ps = pp.add_subparsers(dest="action", required=True)
    ps.add_parser("export", help="CSV to stdout: ifs_user, Entra object id or UPN, name")
    pi = ps.add_parser("import", help="CSV from a file or - for stdin; all rows or none")
    pi.add_argument("file")
    pp.set_defaults(fn=cmd_people)
    r = sub.add_parser("replay", help="re-queue failed or dead deliveries")
    r.add_argument("--id", type=int)
    r.add_argument("--channel")
    r.set_defaults(fn=cmd_replay)
    bk = sub.add_parser("backup", help="online backup of the database")
    bk.add_argument("target")
    bk.set_defaults(fn=cmd_backup)
    m = sub.add_parser("manifest", help="Teams app package")
    ms = m.add_subparsers(dest="action", required=True)
    mb = ms.add_parser("build")
    mb.add_argument("--app-id", help="Azure Bot app id (default: the vault's bot.app_id)")
    mb.add_argument("--version", default=VERSION)
    mb.add_argument("--out", default="build")
    m.set_defaults(fn=cmd_manifest)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        settings = load_settings(args.config, env=os.environ)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings)
    try:
        return asyncio.run(args.fn(settings, args))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except (NotifierError, OSError, ValueError, ArithmeticError, sqlite3.Error) as exc:
        # The one place a command's failure on bad input (a missing file, bad JSON, an id SQLite cannot
        # hold, a path that cannot be written) becomes one line; the traceback only at DEBUG.
        log.debug("%s failed", args.command, exc_info=True)
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 1


def one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        text = f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    elif isinstance(exc, ValueError) and type(exc).__name__ == "JSONDecodeError":
        text = f"not valid JSON: {exc}"
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())[:500]


if __name__ == "__main__":
    sys.exit(main())
