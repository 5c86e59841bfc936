"""The service's web apps: `/api/messages` (requests checked before the SDK reads them), `/healthz`,
`/readyz` and `/metrics`, on the public address or, with service.ops_port, monitoring on one of its own;
and the listening sockets of both."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web

from bot.inbound import INVALID_TOKEN, MALFORMED_REQUEST, RejectedRequests, parse_activity, token_problem
from bot.teams import BotConfig, CachedCredentialsFactory, NotifierBot, readable_activity
from core.errors import ConfigError
from core.metrics import Metrics
from core.settings import ServiceSettings
from store.db import DB_ERRORS, Database
from store.seen import Seen

log = logging.getLogger(__name__)
# /readyz waits this long for the Bot Framework token (the fetch goes on in its thread; the next probe joins it)
READY_TOKEN_SECONDS = 5.0


class WebApps:
    """The routes and their servers. What they read of the running service comes in as arguments: the bot
    and its adapter, the IFS client's token state (`ifs_token_state`, cached: never a new token)."""

    def __init__(self, settings: ServiceSettings, *, version: str, db: Database, bot_config: BotConfig,
                 adapter: Any, credentials_factory: CachedCredentialsFactory, bot: NotifierBot,
                 rejections: RejectedRequests, metrics: Metrics,
                 ifs_token_state: Callable[[], dict[str, Any]]) -> None:
        self.settings = settings
        self.version = version
        self.db = db
        self.bot_config = bot_config
        self.adapter = adapter
        self.credentials_factory = credentials_factory
        self.bot = bot
        self.rejections = rejections
        self.metrics = metrics
        self.ifs_token_state = ifs_token_state
        self.runner: web.AppRunner | None = None
        self.ops_runner: web.AppRunner | None = None

    def web_app(self) -> web.Application:
        """The public app: /api/messages and /healthz, and /readyz and /metrics unless service.ops_port
        puts those on an address of their own (ops_app)."""
        app = web.Application(client_max_size=256 * 1024)
        app.router.add_post("/api/messages", self._messages)
        app.router.add_get("/healthz", self._healthz)
        if not self.settings.ops_port:
            app.router.add_get("/readyz", self._readyz)
            app.router.add_get("/metrics", self._metrics)
        return app

    def ops_app(self) -> web.Application:
        """For monitoring only (service.ops_host:ops_port): /healthz, /readyz, /metrics."""
        app = web.Application(client_max_size=1024)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        return app

    async def start(self) -> tuple[str, str]:
        """Listen on service.port (and service.ops_port when set); returns (base URL, ops URL)."""
        svc = self.settings
        self.runner = web.AppRunner(self.web_app(), access_log=None)
        await self.runner.setup()
        await self._listen(self.runner, svc.host, svc.port, "service.port")
        host, port = self.runner.addresses[0][:2]
        base_url = ops_url = f"http://{host}:{port}"
        if svc.ops_port:
            self.ops_runner = web.AppRunner(self.ops_app(), access_log=None)
            await self.ops_runner.setup()
            await self._listen(self.ops_runner, svc.ops_host or svc.host, svc.ops_port, "service.ops_port")
            host, port = self.ops_runner.addresses[0][:2]
            ops_url = f"http://{host}:{port}"
        return base_url, ops_url

    async def stop(self) -> None:
        for runner in (self.runner, self.ops_runner):
            if runner is not None:
                await runner.cleanup()

    @staticmethod
    async def _listen(runner: web.AppRunner, host: str, port: int, key: str) -> None:
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as exc:  # in use, or not an address of this host
            raise ConfigError(key, f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        # Checked here, before botbuilder sees the request: it parses the body before authenticating and
        # answers what it cannot parse with an exception. Without a plausible token the body is not read.
        source = request.remote or "unknown"
        if not self.bot_config.auth_disabled:
            problem = token_problem(request.headers.get("Authorization"))
            if problem is not None:
                return await self._refuse(source, problem)
        data = parse_activity(request.content_type, await request.read())  # read() keeps the body limit
        if data is None or not readable_activity(data):
            return await self._refuse(source, MALFORMED_REQUEST)
        try:
            response = await self.adapter.process(request, self.bot)
        except (PermissionError, web.HTTPUnauthorized):
            return await self._refuse(source, INVALID_TOKEN)
        if response is not None and response.status == 401:
            await self.rejections.add(source, INVALID_TOKEN)
        return response if response is not None else web.Response(status=201)

    async def _refuse(self, source: str, reason: str) -> web.Response:
        await self.rejections.add(source, reason)
        if reason == MALFORMED_REQUEST:
            return web.json_response({"error": "bad request"}, status=400)
        return web.json_response({"error": "unauthorized"}, status=401)

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "version": self.version})

    async def readiness(self) -> dict[str, Any]:
        """What /readyz answers, from state already at hand: the IFS client's token state and the last
        polls as stored, never a new IFS token; the database writable; free disk space."""
        token = self.ifs_token_state()
        try:
            states = await Seen(self.db).source_states()
        except DB_ERRORS:  # a database server out of reach: the `database` check below says so
            states = []
        ifs_down = [s.last_error for s in states if (s.kind, s.company) == ("*", "*") and not s.available]
        failing = sorted(f"{s.kind}/{s.company}" for s in states if s.kind != "*" and not s.available)
        try:
            free = self.db.free_disk_bytes()  # None: a database server, whose disk is watched where it runs
        except OSError:  # the directory itself is gone or unreadable: nothing to write to either
            free = 0
        checks: dict[str, Any] = {
            "database": await self.db.writable(),
            "ifs": token["last_error"] is None and not ifs_down,
            "connector_credentials": await self._connector_ready(),
        }
        info: dict[str, Any] = {"ifs_token_valid": token["valid"], "sources_failing": failing}
        if free is not None:
            checks["disk"] = free >= self.settings.min_free_disk_mb * 1024 * 1024
            info["disk_free_mb"] = round(free / (1024 * 1024), 1)
        ready = all(checks.values())
        if not checks["ifs"]:
            info["ifs_error"] = str(token["last_error"] or ifs_down[0])[:200]
        return {"ready": ready, **checks, **info}

    async def _readyz(self, request: web.Request) -> web.Response:
        body = await self.readiness()
        return web.json_response(body, status=200 if body["ready"] else 503)

    async def _connector_ready(self) -> bool:
        if self.bot_config.auth_disabled:
            return True
        try:
            creds = await self.credentials_factory.create_credentials(
                self.bot_config.APP_ID, "https://api.botframework.com", None, True)
            token = await self.credentials_factory.token(creds, READY_TOKEN_SECONDS)  # (one fetch in flight)
            return bool(token)
        except Exception:  # noqa: BLE001 - any failure means not ready
            return False

    async def _metrics(self, request: web.Request) -> web.Response:
        body, content_type = await self.metrics.exposition(request.headers.get("Accept"))
        return web.Response(body=body, headers={"Content-Type": content_type})
