"""Inbound authentication with a real bot app id: Bot Framework JWTs checked against a local OpenID issuer."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

import app
from core.errors import ConfigError
from core.settings import load_settings
from tests.conftest import CHANNEL, channel_message, write_config
from tests.jwt_issuer import TokenIssuer, new_rsa_key

ROOT = Path(__file__).resolve().parent.parent
APP_ID = "0b5e1a2c-3d4f-4a5b-8c6d-7e8f9a0b1c2d"
TENANT_ID = "5e1c0a7e-0000-4000-8000-00000000c0de"

@pytest.fixture(scope="module")
def issuer():
    started = TokenIssuer().start()
    yield started
    started.stop()


async def auth_service(tmp_path: Path, ifs, issuer: TokenIssuer | None, *, app_type: str = "SingleTenant",
                       app_id: str = APP_ID, dev_mode: bool = False) -> app.Service:
    """A service with bot authentication on (unless app_id is empty), keys from the local issuer."""
    extra = f'\n[bot]\napp_type = "{app_type}"\n'
    if issuer is not None:
        extra += f'openid_metadata_url = "{issuer.metadata_url}"\n'
    settings = load_settings(write_config(tmp_path, extra), env={}, overrides={"service": {"dev_mode": dev_mode}})
    secrets = ifs.vault_secrets()
    if app_id:
        secrets |= {"bot.app_id": app_id, "bot.app_password": "bot-password-not-used-here", "bot.tenant_id": TENANT_ID}
    return await app.build_service(settings, secrets)


@pytest.fixture
async def secured(tmp_path, ifs, issuer):
    made: list[app.Service] = []

    async def factory(app_type: str = "SingleTenant") -> app.Service:
        svc = await auth_service(tmp_path, ifs, issuer, app_type=app_type)
        made.append(svc)
        await svc.start(background=False)
        return svc

    yield factory
    for svc in made:
        await svc.stop()
        await svc.db.close()


async def send(svc: app.Service, activity: dict, headers: dict[str, str]) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.post(f"{svc.base_url}/api/messages", json=activity, headers=headers)


async def processed(svc: app.Service, connector) -> bool:
    """Did the bot act on the message: a command audit row, or anything sent to the connector."""
    rows = await svc.audit.recent(limit=20, category="command")
    return bool(rows) or bool(connector.accepted)


# --------------------------------------------------------------------------- accepted

@pytest.mark.parametrize("app_type", ["SingleTenant", "MultiTenant"])
async def test_valid_token_is_accepted_and_the_command_processed(ifs, connector, issuer, secured, caplog,
                                                                 app_type):
    svc = await secured(app_type)
    activity = channel_message("links", connector.service_url)

    resp = await send(svc, activity, issuer.header(audience=APP_ID, service_url=connector.service_url))

    assert resp.status_code in (200, 201), resp.text
    [row] = await svc.audit.recent(limit=5, category="command")
    assert (row.action, row.outcome, row.channel_id, row.actor) == ("links", "ok", CHANNEL, "Alice")
    assert issuer.key_fetches >= 1  # the signing key can only have come from the local issuer
    # The reply needs an outbound token from login.microsoftonline.com, which tests cannot reach: the turn
    # fails after the command ran, and that is logged, not fatal.
    assert any(r.name == "bot.teams" and r.getMessage().startswith("turn failed") for r in caplog.records)
    async with httpx.AsyncClient() as client:
        assert (await client.get(f"{svc.base_url}/healthz")).status_code == 200
    started = await svc.audit.recent(limit=50, category="system")
    assert started[-1].detail["auth"] == "on"


async def test_signing_keys_are_fetched_at_start_off_the_event_loop_not_per_request(ifs, connector, issuer,
                                                                                  secured):
    before = issuer.key_fetches
    svc = await secured()
    await asyncio.wait_for(svc.signing_keys.refreshed.wait(), 10)
    assert issuer.key_fetches == before + 1
    resp = await send(svc, channel_message("links", connector.service_url),
                      issuer.header(audience=APP_ID, service_url=connector.service_url))
    assert resp.status_code in (200, 201)
    assert issuer.key_fetches == before + 1  # validated with the keys fetched at start


async def test_a_failed_signing_key_refresh_is_logged_and_retried_soon(monkeypatch, caplog):
    from botframework.connector.auth import ChannelValidation

    from bot.teams import SigningKeys

    with socket.socket() as unused:  # a port nothing listens on
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    monkeypatch.setattr(ChannelValidation, "open_id_metadata_endpoint", f"http://127.0.0.1:{port}/openid")
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        raise asyncio.CancelledError  # stop after the first round

    keys = SigningKeys(sleep=sleep)
    with pytest.raises(asyncio.CancelledError):
        await keys.run()
    assert waits == [SigningKeys.RETRY_SECONDS] and not keys.refreshed.is_set()
    assert any("could not refresh the Bot Framework signing keys" in r.getMessage() for r in caplog.records)


async def test_token_expired_within_the_clock_skew_is_accepted(ifs, connector, issuer, secured):
    svc = await secured()
    headers = issuer.header(audience=APP_ID, service_url=connector.service_url, issued_ago=3600 + 120,
                            lifetime=3600)  # expired two minutes ago; the skew is five
    resp = await send(svc, channel_message("links", connector.service_url), headers)
    assert resp.status_code in (200, 201)
    assert [r.action for r in await svc.audit.recent(limit=5, category="command")] == ["links"]


# --------------------------------------------------------------------------- refused

REFUSED: dict[str, Callable[[TokenIssuer, str], dict[str, str]]] = {
    "expired beyond the skew": lambda iss, url: iss.header(audience=APP_ID, service_url=url,
                                                           issued_ago=3600 + 600, lifetime=3600),
    "not yet valid": lambda iss, url: iss.header(audience=APP_ID, service_url=url, issued_ago=-900),
    "signed with another key": lambda iss, url: iss.header(audience=APP_ID, service_url=url,
                                                           signing_key=new_rsa_key()),
    "wrong issuer": lambda iss, url: iss.header(audience=APP_ID, service_url=url,
                                                issuer="https://login.example.com/botframework"),
    "wrong audience": lambda iss, url: iss.header(audience="00000000-1111-2222-3333-444444444444",
                                                  service_url=url),
    "serviceurl of another connector": lambda iss, url: iss.header(
        audience=APP_ID, service_url="https://smba.trafficmanager.net/emea/"),
    "no serviceurl claim": lambda iss, url: iss.header(audience=APP_ID, service_url=None),
    "not a bearer token": lambda iss, url: {"Authorization": "Basic " + iss.token(audience=APP_ID,
                                                                                  service_url=url)},
}


@pytest.mark.parametrize("case", list(REFUSED))
async def test_bad_token_is_refused_and_not_processed(ifs, connector, issuer, secured, case):
    svc = await secured()
    resp = await send(svc, channel_message("link company 10", connector.service_url),
                      REFUSED[case](issuer, connector.service_url))

    assert resp.status_code == 401, resp.text
    assert not await processed(svc, connector)
    assert await svc.bindings.all() == []


async def test_missing_authorization_is_refused_and_not_processed(ifs, connector, issuer, secured):
    svc = await secured()
    resp = await send(svc, channel_message("link company 10", connector.service_url), {})
    assert resp.status_code == 401, resp.text
    assert not await processed(svc, connector)


async def test_missing_authorization_is_never_processed(ifs, connector, issuer, secured):
    svc = await secured()
    resp = await send(svc, channel_message("link company 10", connector.service_url), {})
    assert resp.status_code >= 400
    assert not await processed(svc, connector)
    assert await svc.bindings.all() == []


async def test_malformed_token_is_refused(ifs, connector, issuer, secured):
    svc = await secured()
    resp = await send(svc, channel_message("links", connector.service_url), {"Authorization": "Bearer not.a.jwt"})
    assert resp.status_code == 401, resp.text
    assert not await processed(svc, connector)


async def test_refused_requests_are_audited(ifs, connector, issuer, secured):
    svc = await secured()
    headers = issuer.header(audience="someone-else", service_url=connector.service_url)
    resp = await send(svc, channel_message("links", connector.service_url), headers)
    assert resp.status_code == 401
    [row] = await svc.audit.recent(limit=5, category="security")
    assert (row.action, row.outcome) == ("inbound rejected", "denied")


# --------------------------------------------------------------------------- configuration guards

async def test_service_refuses_to_start_without_app_id_unless_dev_mode(tmp_path, ifs):
    with pytest.raises(ConfigError) as caught:
        await auth_service(tmp_path, ifs, None, app_type="MultiTenant", app_id="")
    assert caught.value.key == "bot.app_id"
    assert "dev_mode" in caught.value.problem


async def test_serve_exits_with_the_config_error_when_app_id_is_missing(tmp_path, ifs):
    cfg = tmp_path / "serve.toml"
    cfg.write_text(write_config(tmp_path).read_text().replace("dev_mode = true", "dev_mode = false"))
    secrets = [("ifs.base_url", ifs.base_url), ("ifs.client_id", "notifier"), ("ifs.client_secret", "x")]
    for name, value in secrets:
        await asyncio.to_thread(subprocess.run, [sys.executable, "app.py", "--config", str(cfg), "secrets", "set",
                                                 name], cwd=ROOT, input=value, capture_output=True, text=True,
                                timeout=60, check=True)
    out = await asyncio.to_thread(subprocess.run, [sys.executable, "app.py", "--config", str(cfg), "serve"],
                                  cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith("error: config error: bot.app_id: not set.")


async def test_dev_mode_with_an_app_id_still_checks_tokens(tmp_path, ifs, connector, issuer):
    svc = await auth_service(tmp_path, ifs, issuer, dev_mode=True)
    await svc.start(background=False)
    try:
        assert not svc.bot_config.auth_disabled
        headers = issuer.header(audience="someone-else", service_url=connector.service_url)
        resp = await send(svc, channel_message("links", connector.service_url), headers)
        assert resp.status_code == 401
        assert not await processed(svc, connector)
    finally:
        await svc.stop()
        await svc.db.close()


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "notifier.example.com", "::"])
def test_settings_refuse_dev_mode_off_loopback(tmp_path, host):
    with pytest.raises(ConfigError) as caught:
        load_settings(write_config(tmp_path), env={"NOTIFIER__SERVICE__HOST": host})
    assert caught.value.key == "service.dev_mode"
    assert repr(host) in caught.value.problem

    with pytest.raises(ConfigError) as caught:
        load_settings(None, env={}, overrides={"service": {"host": host, "dev_mode": True}})
    assert caught.value.key == "service.dev_mode"

    assert not load_settings(None, env={}, overrides={"service": {"host": host}}).service.dev_mode


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_settings_allow_dev_mode_on_loopback(host):
    assert load_settings(None, env={}, overrides={"service": {"host": host, "dev_mode": True}}).service.dev_mode


async def test_dev_mode_without_app_id_accepts_unsigned_requests(tmp_path, ifs, connector):
    """The other side of the guard: on loopback in development mode no token is needed."""
    svc = await auth_service(tmp_path, ifs, None, app_type="MultiTenant", app_id="", dev_mode=True)
    await svc.start(background=False)
    try:
        assert svc.bot_config.auth_disabled
        resp = await send(svc, channel_message("links", connector.service_url), {})
        assert resp.status_code in (200, 201)
        assert [r.action for r in await svc.audit.recent(limit=5, category="command")] == ["links"]
        assert any(a.channel_id == CHANNEL for a in connector.accepted)
        started = await svc.audit.recent(limit=50, category="system")
        assert started[-1].detail["auth"] == "off (development)"
    finally:
        await svc.stop()
        await svc.db.close()


def test_token_issuer_publishes_metadata_and_an_endorsed_key():
    """The stand-in for login.botframework.com that the tests above rely on."""
    iss = TokenIssuer().start()
    try:
        httpx.get(iss.metadata_url, timeout=10).raise_for_status()
        assert httpx.get(iss.metadata().get("jwks_uri"), timeout=10).json()["keys"][0]["endorsements"] == ["msteams"]
        assert iss.requests == ["/v1/.well-known/openidconfiguration", "/v1/keys"]
    finally:
        iss.stop()
