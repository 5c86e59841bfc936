"""The Teams sender and /readyz through the real adapter, with a Bot Framework login endpoint that never answers."""

from __future__ import annotations

import asyncio
import threading

import pytest
from botbuilder.integration.aiohttp import CloudAdapter
from botframework.connector.auth import MicrosoftAppCredentials, ServiceClientCredentialsFactory

from bot import web
from bot.teams import BotConfig, CachedCredentialsFactory, TeamsSender, _Authentication
from core.domain import ChannelRef
from core.errors import SendError
from tests.serving import wait_until

CH = "19:finance@thread.tacv2"


class _Unanswered(MicrosoftAppCredentials):
    """Credentials whose token request hangs, as MSAL's does (no timeout) against a login endpoint that
    accepts the connection and never answers; `answer` ends it."""

    def __init__(self) -> None:
        super().__init__("app-id", "app-password")
        self.answer = threading.Event()
        self.asked = 0

    def get_access_token(self, force_refresh: bool = False) -> str:
        self.asked += 1
        self.answer.wait(30)
        return "token"


class _Factory(ServiceClientCredentialsFactory):
    def __init__(self, credentials: _Unanswered) -> None:
        self.credentials = credentials

    async def is_valid_app_id(self, app_id: str) -> bool:
        return app_id == "app-id"

    async def is_authentication_disabled(self) -> bool:
        return False

    async def create_credentials(self, app_id, oauth_scope, login_endpoint, validate_authority):
        return self.credentials


async def test_a_token_renewal_that_never_answers_fails_the_send_and_leaves_the_event_loop_running(connector):
    credentials = _Unanswered()
    config = BotConfig(APP_ID="app-id", APP_PASSWORD="app-password", APP_TENANTID="tenant")
    factory = CachedCredentialsFactory(_Factory(credentials))
    adapter = CloudAdapter(_Authentication(config, credentials_factory=factory))
    sender = TeamsSender(adapter, "app-id", factory, timeout=0.5)
    channel = ChannelRef(CH, "tenant", "team-1", connector.service_url, reference={
        "channelId": "msteams", "serviceUrl": connector.service_url, "bot": {"id": "28:bot"},
        "conversation": {"id": CH, "isGroup": True, "conversationType": "channel", "tenantId": "tenant"}})
    ticks = 0

    async def heartbeat() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0)  # one turn of the event loop: none while it is frozen
            ticks += 1

    beating = asyncio.create_task(heartbeat())
    try:
        with pytest.raises(SendError, match="no Bot Framework token"):
            await asyncio.wait_for(sender.post(channel, {"type": "AdaptiveCard", "body": []}, "a card"), 20)
        assert ticks >= 100  # the event loop went on turning while the token was awaited
        for _ in range(3):  # later sends wait for the same fetch: one thread blocked, not one per send
            with pytest.raises(SendError, match="no Bot Framework token"):
                await asyncio.wait_for(sender.post(channel, {"type": "AdaptiveCard", "body": []}, "a card"), 20)
        assert credentials.asked == 1 and connector.posts(CH) == []
    finally:
        credentials.answer.set()
        beating.cancel()
        await asyncio.gather(beating, return_exceptions=True)


async def test_readiness_probes_share_one_token_check_and_answer_while_the_login_endpoint_is_silent(
        service_factory, monkeypatch):
    svc = await service_factory()
    credentials = _Unanswered()
    monkeypatch.setattr(web, "READY_TOKEN_SECONDS", 0.2)
    svc.web.bot_config = BotConfig(APP_ID="app-id", APP_PASSWORD="app-password", APP_TENANTID="tenant")
    svc.web.credentials_factory = CachedCredentialsFactory(_Factory(credentials))
    try:
        answers = [await asyncio.wait_for(svc.web.readiness(), 20) for _ in range(5)]
        assert [a["ready"] for a in answers] == [False] * 5  # each answered, not ready
        assert credentials.asked == 1  # one thread waiting for the token, not one per probe
    finally:
        credentials.answer.set()
    assert await wait_until(lambda: all(f.done() for f in svc.web.credentials_factory._fetches.values()))
    assert (await svc.web.readiness())["ready"]
