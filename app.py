"""Composition root and command line: settings, store, IFS client, scheduler, bot web app, delivery worker."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import logging
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from aiohttp import web

from core import runtime
from core.domain import RecordKind
from core.errors import AuthError, ConfigError, FatalRequestError, NotifierError, RetriableError
from core.links import odata_literal
from core.metrics import Metrics
from core.retry import RetryPolicy
from core.settings import Settings, load_settings
from store.db import Database, open_database
from store.repos import AuditLog, Bindings, Outbox, Seen
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
    ifs_client_secret: str | None = field(repr=False)
    bot_app_id: str
    bot_app_password: str = field(repr=False)
    bot_tenant_id: str


async def load_credentials(settings: Settings, vault: Vault) -> Credentials:
    return Credentials(
        ifs_base_url=(await vault.get("ifs.base_url")) or settings.ifs.base_url,
        ifs_client_id=await vault.get("ifs.client_id"), ifs_client_secret=await vault.get("ifs.client_secret"),
        bot_app_id=(await vault.get("bot.app_id")) or "", bot_app_password=(await vault.get("bot.app_password")) or "",
        bot_tenant_id=(await vault.get("bot.tenant_id")) or "")


def make_ifs_client(settings: Settings, creds: Credentials):
    from pollers.ifs_client import IfsClient, IfsClientConfig

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
        retry=RetryPolicy(base=0.5, cap=30.0, max_attempts=s.retry_attempts, max_elapsed=s.retry_max_seconds),
        user_agent=f"ifs-teams-notifier/{VERSION}", time_zone_aware=s.time_zone_aware))


# --------------------------------------------------------------------------- the service

class Service:
    """Everything wired together; start() brings up scheduler, worker and web app, stop() takes them down."""

    def __init__(self, settings: Settings, db: Database, vault: Vault, creds: Credentials, *,
                 service_url_override: str | None = None) -> None:
        from bot.authz import AdminPolicy, GraphOwnerCheck
        from bot.commands import Commands
        from bot.delivery import CardRenderer, DeliveryWorker
        from bot.teams import BotConfig, NotifierBot, SigningKeys, TeamsSender, make_adapter
        from pollers.engine import Poller
        from pollers.sources import build_sources
        from store.repos import PollWriter

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
        self.audit = AuditLog(db)
        self.bindings = Bindings(db)
        self.poller = Poller(client=self.ifs, sources=self.sources, seen=Seen(db), bindings=self.bindings,
                             writer=PollWriter(db), audit=self.audit, ifs_base_url=creds.ifs_base_url,
                             page_size=settings.ifs.page_size, use_select=settings.ifs.select)
        self.bot_config = BotConfig(APP_ID=creds.bot_app_id, APP_PASSWORD=creds.bot_app_password,
                                    APP_TYPE=settings.bot.app_type if creds.bot_app_id else "MultiTenant",
                                    APP_TENANTID=creds.bot_tenant_id,
                                    OPENID_METADATA_URL=settings.bot.openid_metadata_url or None)
        self.adapter, self.credentials_factory = make_adapter(self.bot_config)
        self.signing_keys = SigningKeys()
        self.sender = TeamsSender(self.adapter, creds.bot_app_id)
        self.worker = DeliveryWorker(db, self.sender, CardRenderer(self._render_record, self._render_digest,
                                                                    self._render_reply),
                                     settings.delivery, timezone=settings.service.timezone, metrics=self.metrics)
        owner_check = None
        if settings.bot.owners_are_admins and creds.bot_app_id and creds.bot_app_password:
            owner_check = GraphOwnerCheck(creds.bot_app_id, creds.bot_app_password)
        self.commands = Commands(db, self, AdminPolicy(settings.bot.admins, owner_check))
        self.bot = NotifierBot(db, self.commands, welcome=settings.bot.welcome)
        self.scheduler = None
        self._tasks: list[asyncio.Task] = []
        self._poll_lock = asyncio.Lock()
        self._stopped = False
        self._install_gauges()

    # ------------------------------------------------------------------ cards

    def card_context(self):
        from cards import CardContext

        return CardContext(today=datetime.now(self.tz).date(), locale=self.settings.service.locale,
                           tz=self.settings.service.timezone, ifs_base_url=self.creds.ifs_base_url or None,
                           list_pages={k: s.list_page for k, s in self.sources.items() if s.list_page})

    def _linked(self, record):
        """The record with its "Open in IFS" link (links are built at render time, not per polled row)."""
        if record.deep_link or record.kind not in self.sources:
            return record
        return replace(record, deep_link=self.poller.mapper(record.kind).link_for(record))

    def _render_record(self, d) -> tuple[dict, str]:
        from cards import record_card

        card = record_card(self._linked(d.record), d.event_type, self.card_context(), previous_state=d.previous_state)
        return card, card.get("fallbackText", d.record.number)

    def _render_digest(self, ds) -> tuple[dict, str]:
        from cards import digest_card

        card = digest_card([(d.event_type, self._linked(d.record)) for d in ds], self.card_context(),
                           max_rows=self.settings.delivery.digest_max_rows)
        return card, card.get("fallbackText", f"{len(ds)} documents")

    @staticmethod
    def _render_reply(d) -> str:
        return f"{d.record.kind.value.capitalize()} {d.record.number} is now {d.record.state}."

    # ------------------------------------------------------------------ Runtime protocol for commands

    async def check_company(self, company: str):
        from bot.commands import CompanyCheck

        try:
            found = False
            for spec in self.sources.values():
                if spec.enabled and await self.ifs.probe(spec.projection, spec.entity_set,
                                                         filter=f"{spec.company_field} eq {odata_literal(company)}"):
                    found = True
                    break
        except (AuthError, RetriableError, FatalRequestError) as exc:
            return CompanyCheck(False, error=f"IFS did not answer properly ({type(exc).__name__}: {exc})")
        if not found:
            return CompanyCheck(False, error="IFS returned no documents for it. Either the code is wrong, or the"
                                             " IFS service user is not allowed to see that company (Allowed Companies)")
        pending: dict[str, int] = {}
        for st in await Seen(self.db).source_states():
            if st.company == company:
                pending[RecordKind(st.kind).plural] = st.pending
        return CompanyCheck(True, pending=pending)

    def next_runs(self) -> dict[str, float | None]:
        if self.scheduler is None:
            return {}
        out = {}
        for job in self.scheduler.get_jobs():
            out[job.id] = job.next_run_time.timestamp() if job.next_run_time else None
        return out

    def ifs_token_state(self) -> dict[str, Any]:
        return self.ifs.token_state()

    def poll_soon(self) -> None:
        if self.scheduler is not None:
            now = datetime.now(self.tz)
            for job in self.scheduler.get_jobs():
                job.modify(next_run_time=now)

    def wake_delivery(self) -> None:
        self.worker.wake()

    # ------------------------------------------------------------------ polling

    async def poll_source(self, kind: RecordKind) -> list[Any]:
        """One scheduled job: this source for every company an active channel is bound to."""
        results = []
        async with self._poll_lock:
            for company in await self.bindings.companies():
                result = await self.poller.poll(kind, company)
                results.append(result)
                self.metrics.inc("notifier_polls_total", source=kind.value, outcome="ok" if result.ok else "failed")
                if result.ok:
                    self.metrics.set_to_now("notifier_last_successful_poll_timestamp_seconds", source=kind.value)
                self.metrics.inc("notifier_records_seen_total", result.rows, source=kind.value)
                for etype in ("new", "changed", "resolved"):
                    self.metrics.inc("notifier_events_total", getattr(result, etype), type=etype, source=kind.value)
                if result.bad:
                    self.metrics.inc("notifier_bad_rows_total", result.bad, source=kind.value)
        self.worker.wake()
        return results

    async def poll_once(self) -> list[Any]:
        """Every enabled source once (the `poll --once` command)."""
        return [r for kind, spec in self.sources.items() if spec.enabled for r in await self.poll_source(kind)]

    def _install_gauges(self) -> None:
        """Series read at each scrape: the outbox (from the database) and the IFS client's own totals."""
        async def backlog():
            return {(status,): float(n) for status, n in (await Outbox(self.db).counts()).items()}

        async def age():
            return {(): await Outbox(self.db).oldest_pending_age()}

        self.metrics.observe("notifier_outbox_deliveries", "Deliveries in the outbox, by status", backlog,
                             labels=("status",))
        self.metrics.observe("notifier_queue_oldest_seconds", "Age of the oldest undelivered delivery", age)
        for stat, help in (("requests", "HTTP requests sent to IFS, token requests included"),
                           ("retries", "IFS requests sent again after a retriable failure or a 401"),
                           ("throttled", "429 answers received from IFS"),
                           ("token_renewals", "IFS access tokens obtained"),
                           ("failures", "IFS calls that ended in an error raised to the caller")):
            self.metrics.counter_from(f"notifier_ifs_{stat}_total", help, lambda stat=stat: self.ifs.stats[stat])

    # ------------------------------------------------------------------ web

    def web_app(self) -> web.Application:
        app = web.Application(client_max_size=256 * 1024)
        app.router.add_post("/api/messages", self._messages)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        return app

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        try:
            response = await self.adapter.process(request, self.bot)
        except (PermissionError, web.HTTPUnauthorized):
            await self.audit.record("security", "inbound rejected", "denied", remote=request.remote)
            return web.json_response({"error": "unauthorized"}, status=401)
        if response is not None and response.status == 401:
            await self.audit.record("security", "inbound rejected", "denied", remote=request.remote)
        return response if response is not None else web.Response(status=201)

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "version": VERSION})

    async def _readyz(self, request: web.Request) -> web.Response:
        checks: dict[str, Any] = {"database": await self.db.writable()}
        try:
            await self.ifs.ensure_token()
            checks["ifs"] = True
        except NotifierError as exc:
            checks["ifs"] = False
            checks["ifs_error"] = str(exc)[:200]
        checks["connector_credentials"] = await self._connector_ready()
        ok = all(v for k, v in checks.items() if not k.endswith("_error"))
        return web.json_response({"ready": ok, **checks}, status=200 if ok else 503)

    async def _connector_ready(self) -> bool:
        if self.bot_config.auth_disabled:
            return True
        try:
            creds = await self.credentials_factory.create_credentials(
                self.creds.bot_app_id, "https://api.botframework.com", None, True)
            token = await asyncio.to_thread(creds.get_access_token)
            return bool(token)
        except Exception:  # noqa: BLE001 - any failure means not ready
            return False

    async def _metrics(self, request: web.Request) -> web.Response:
        body, content_type = await self.metrics.exposition(request.headers.get("Accept"))
        return web.Response(body=body, headers={"Content-Type": content_type})

    # ------------------------------------------------------------------ lifecycle

    async def start(self, *, web_runner: bool = True, background: bool = True) -> None:
        """Start the web app and (with `background`) the poll scheduler and the delivery worker."""
        from apscheduler.schedulers.asyncio import AsyncIOScheduler

        from pollers.schedule import PollTrigger

        if background:
            self.scheduler = AsyncIOScheduler(timezone=self.tz)
            for kind, spec in self.sources.items():
                if spec.enabled:
                    self.scheduler.add_job(self.poll_source, PollTrigger(self.settings.schedule, self.tz),
                                           args=[kind], id=kind.value, max_instances=1, coalesce=True,
                                           misfire_grace_time=300, next_run_time=datetime.now(self.tz))
            self.scheduler.start()
            self._tasks.append(asyncio.create_task(self.worker.run(), name="delivery-worker"))
        if web_runner:
            self.runner = web.AppRunner(self.web_app(), access_log=None)
            await self.runner.setup()
            site = web.TCPSite(self.runner, self.settings.service.host, self.settings.service.port)
            await site.start()
            host, port = self.runner.addresses[0][:2]
            self.base_url = f"http://{host}:{port}"
            if not self.bot_config.auth_disabled:
                self._tasks.append(asyncio.create_task(self.signing_keys.run(), name="signing-keys"))
        await self.audit.record("system", "service started", "ok", version=VERSION,
                                auth="off (development)" if self.bot_config.auth_disabled else "on")
        log.info("service started on %s:%s (bot authentication %s)", self.settings.service.host,
                 self.settings.service.port, "OFF, development mode" if self.bot_config.auth_disabled else "on")

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=False)
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if getattr(self, "runner", None) is not None:
            await self.runner.cleanup()
        await self.ifs.aclose()
        await self.audit.record("system", "service stopped", "ok")


async def open_store(settings: Settings) -> tuple[Database, Vault]:
    db = await open_database(settings.service.database)
    return db, Vault(db, KeyRing(settings.service.key_file))


async def build_service(settings: Settings, secrets: Mapping[str, str] | None = None) -> Service:
    """Open the store, store any `secrets` given (demo, tests, benchmarks), and wire the service."""
    db, vault = await open_store(settings)
    try:
        for name, value in (secrets or {}).items():
            await vault.set(name, value)
        creds = await load_credentials(settings, vault)
        return Service(settings, db, vault, creds)
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
    db, vault = await open_store(settings)
    try:
        creds = await load_credentials(settings, vault)
        try:
            client = make_ifs_client(settings, creds)
        except ConfigError as exc:
            print(f"FAIL {exc}")
            return 1
        ok = True
        try:
            await client.ensure_token()
            print(f"ok   token from {creds.ifs_base_url}/auth/realms/{settings.ifs.realm}")
            from pollers.sources import build_sources

            for kind, spec in build_sources(settings.sources).items():
                if not spec.enabled:
                    continue
                try:
                    await client.probe(spec.projection, spec.entity_set, filter=None)
                    print(f"ok   {kind.plural}: {spec.projection}.svc/{spec.entity_set} answers")
                except NotifierError as exc:
                    ok = False
                    print(f"FAIL {kind.plural}: {spec.projection}.svc/{spec.entity_set}: {exc}")
        except AuthError as exc:
            print(f"FAIL IFS refused the credentials: {exc}")
            ok = False
        except RetriableError as exc:
            print(f"FAIL IFS unreachable: {exc}")
            ok = False
        finally:
            await client.aclose()
        if not creds.bot_app_id:
            print("warn bot.app_id not set: only development mode (auth off, loopback) will start")
        return 0 if ok else 1
    finally:
        await db.close()


async def cmd_audit(settings: Settings, args: argparse.Namespace) -> int:
    db = await open_database(settings.service.database)
    try:
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
    finally:
        await db.close()


async def cmd_secrets(settings: Settings, args: argparse.Namespace) -> int:
    db, vault = await open_store(settings)
    try:
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
    finally:
        await db.close()


async def cmd_bindings(settings: Settings, args: argparse.Namespace) -> int:
    from bot.bindings_io import export_bindings, import_bindings

    db = await open_database(settings.service.database)
    try:
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
    finally:
        await db.close()


async def cmd_replay(settings: Settings, args: argparse.Namespace) -> int:
    db = await open_database(settings.service.database)
    try:
        ids = await Outbox(db).replay(delivery_id=args.id, channel_id=args.channel)
        await AuditLog(db).record("delivery", "replay", "ok", actor="cli", deliveries=ids[:100], count=len(ids))
        print(f"re-queued {len(ids)} deliveries" + (f": {', '.join(map(str, ids[:20]))}" if ids else ""))
        return 0
    finally:
        await db.close()


async def cmd_backup(settings: Settings, args: argparse.Namespace) -> int:
    db = await open_database(settings.service.database)
    try:
        await db.backup_to(args.target)
        os.chmod(args.target, 0o600)
        print(f"backup written to {args.target} (secrets stay encrypted; keep the key file separately)")
        return 0
    finally:
        await db.close()


async def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    from demo import run_demo

    return await run_demo(args)


async def cmd_manifest(settings: Settings, args: argparse.Namespace) -> int:
    from manifest.build import build_package

    app_id = args.app_id
    if app_id is None and os.path.exists(settings.service.database):
        db, vault = await open_store(settings)
        try:
            app_id = await vault.get("bot.app_id")
        finally:
            await db.close()
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
    d.set_defaults(fn=cmd_demo)
    pl = sub.add_parser("poll", help="poll IFS once and print a summary")
    pl.add_argument("--once", action="store_true", required=True)
    pl.add_argument("--deliver", action="store_true", help="also deliver what the poll queued")
    pl.set_defaults(fn=cmd_poll)
    sub.add_parser("check", help="test the IFS connection and credentials").set_defaults(fn=cmd_check)
    a = sub.add_parser("audit", help="show the audit trail")
    a.add_argument("--last", type=int, default=50)
    a.add_argument("--failed", action="store_true")
    a.add_argument("--category", choices=["poll", "delivery", "command", "lifecycle", "record", "security", "system"])
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
        settings = load_settings(args.config)
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


if __name__ == "__main__":
    sys.exit(main())
