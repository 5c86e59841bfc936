"""Who may change bindings: configured admins, and team owners checked with Microsoft Graph."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

import httpx

from core.clock import SYSTEM_CLOCK, Clock

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Actor:
    """The user behind a command, as Teams told us."""

    id: str  # 29:... Bot Framework user id
    aad_object_id: str | None
    name: str | None
    upn: str | None = None
    team_aad_group_id: str | None = None
    tenant_id: str | None = None

    @property
    def label(self) -> str:
        return self.upn or self.name or self.aad_object_id or self.id


class OwnerCheck(Protocol):
    async def is_owner(self, actor: Actor) -> bool: ...


class AdminPolicy:
    def __init__(self, admins: Iterable[str], owner_check: OwnerCheck | None = None) -> None:
        self._admins = {a.strip().lower() for a in admins if a.strip()}
        self._owner_check = owner_check

    @property
    def by_upn(self) -> bool:
        """Some admin is named by UPN, which activities do not carry: it has to be looked up."""
        return any("@" in a for a in self._admins)

    @property
    def open_to_all(self) -> bool:
        return not self._admins and self._owner_check is None

    async def is_admin(self, actor: Actor) -> bool:
        if self.open_to_all:
            return True  # nobody configured: a fresh install, every member may set it up
        ids = {x.lower() for x in (actor.aad_object_id, actor.upn) if x}
        if ids & self._admins:
            return True
        if self._owner_check is not None and actor.team_aad_group_id:
            try:
                return await self._owner_check.is_owner(actor)
            except Exception as exc:  # noqa: BLE001 - Graph outage must deny, not crash the turn
                log.warning("owner check failed: %s", type(exc).__name__)
        return False


class GraphOwnerCheck:
    """GET /teams/{group}/members filtered to the user; role 'owner'. App-only token from msal, cached."""

    def __init__(self, app_id: str, app_password: str, *, graph_url: str = "https://graph.microsoft.com",
                 authority_host: str = "https://login.microsoftonline.com", http: httpx.AsyncClient | None = None,
                 ttl: float = 300.0, clock: Clock = SYSTEM_CLOCK,
                 token_provider: Callable[[str], Awaitable[str]] | None = None) -> None:
        self._app_id = app_id
        self._password = app_password
        self._graph = graph_url.rstrip("/")
        self._authority_host = authority_host.rstrip("/")
        self._http = http or httpx.AsyncClient(timeout=10.0)
        self._apps: dict[str, object] = {}
        self._cache: dict[tuple[str, str], tuple[float, bool]] = {}
        self._ttl = ttl
        self._now = clock.monotonic
        self._token_provider = token_provider or self._msal_token

    def _msal_token_sync(self, tenant: str) -> str:
        import msal  # imported here: only needed when Graph credentials are configured

        app = self._apps.get(tenant)
        if app is None:
            app = msal.ConfidentialClientApplication(self._app_id, client_credential=self._password,
                                                     authority=f"{self._authority_host}/{tenant}")
            self._apps[tenant] = app
        # msal caches the token and renews it before expiry
        result = app.acquire_token_for_client(scopes=["https://graph.microsoft.com/.default"])  # type: ignore[attr-defined]
        if "access_token" not in result:
            raise PermissionError(result.get("error", "no token"))
        return result["access_token"]

    async def _msal_token(self, tenant: str) -> str:
        # MSAL's request has no timeout of its own: bounded here (the check then fails, which denies)
        return await asyncio.wait_for(asyncio.to_thread(self._msal_token_sync, tenant), 20)

    async def is_owner(self, actor: Actor) -> bool:
        if not (actor.team_aad_group_id and actor.aad_object_id and actor.tenant_id):
            return False
        key = (actor.team_aad_group_id, actor.aad_object_id)
        hit = self._cache.get(key)
        if hit and hit[0] > self._now():
            return hit[1]
        token = await self._token_provider(actor.tenant_id)
        flt = f"(microsoft.graph.aadUserConversationMember/userId eq '{actor.aad_object_id.replace(chr(39), '')}')"
        resp = await self._http.get(f"{self._graph}/v1.0/teams/{actor.team_aad_group_id}/members",
                                    params={"$filter": flt}, headers={"Authorization": f"Bearer {token}"})
        resp.raise_for_status()
        owner = any("owner" in (m.get("roles") or []) for m in resp.json().get("value", []))
        self._cache[key] = (self._now() + self._ttl, owner)
        return owner
