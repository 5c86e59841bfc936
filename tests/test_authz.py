"""Admin policy: configured admins, and team owners asked of a local Microsoft Graph stand-in over HTTP."""

from __future__ import annotations

from aiohttp import web

from bot.authz import Actor, AdminPolicy, GraphOwnerCheck
from core.clock import FakeClock


async def graph_server(members: dict[str, list[str]]):
    calls: list[dict] = []

    async def list_members(request: web.Request) -> web.Response:
        calls.append({"team": request.match_info["team"], "filter": request.query.get("$filter"),
                      "auth": request.headers.get("Authorization")})
        if request.headers.get("Authorization") != "Bearer graph-token":
            return web.json_response({"error": {"code": "InvalidAuthenticationToken"}}, status=401)
        flt = request.query["$filter"]
        user = flt.split("userId eq '")[1].split("'")[0]
        value = [{"userId": user, "roles": members[user]}] if user in members else []
        return web.json_response({"value": value})

    app = web.Application()
    app.router.add_get("/v1.0/teams/{team}/members", list_members)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}", calls


def actor(aad: str, upn: str | None = None) -> Actor:
    return Actor(id="29:x", aad_object_id=aad, name="X", upn=upn, team_aad_group_id="group-1", tenant_id="t1")


async def test_owners_are_admins_and_answers_are_cached():
    runner, url, calls = await graph_server({"aad-owner": ["owner"], "aad-member": [], "aad-guest": ["guest"]})
    clock = FakeClock()
    tokens: list[str] = []

    async def token(tenant: str) -> str:
        tokens.append(tenant)
        return "graph-token"

    try:
        check = GraphOwnerCheck("app", "pw", graph_url=url, token_provider=token, ttl=60, clock=clock)
        policy = AdminPolicy([], check)
        assert await policy.is_admin(actor("aad-owner"))
        assert not await policy.is_admin(actor("aad-member"))
        assert not await policy.is_admin(actor("aad-guest"))
        assert await policy.is_admin(actor("aad-owner"))
        assert len(calls) == 3  # the second owner question was answered from the cache
        clock.advance(61)
        assert await policy.is_admin(actor("aad-owner"))
        assert len(calls) == 4
        assert calls[0]["team"] == "group-1" and "aad-owner" in calls[0]["filter"] and tokens == ["t1"] * 4
    finally:
        await runner.cleanup()


async def test_configured_admins_graph_outage_denies_and_open_policy():
    runner, url, _ = await graph_server({})
    try:
        async def bad_token(tenant: str) -> str:
            return "expired"

        policy = AdminPolicy(["Admin@Contoso.com", "aad-admin"], GraphOwnerCheck("app", "pw", graph_url=url,
                                                                                   token_provider=bad_token))
        assert await policy.is_admin(actor("someone", upn="admin@contoso.com"))
        assert await policy.is_admin(actor("aad-admin"))
        assert not await policy.is_admin(actor("aad-other"))  # Graph says 401: deny, don't crash
        assert AdminPolicy([]).open_to_all and await AdminPolicy([]).is_admin(actor("anyone"))
    finally:
        await runner.cleanup()
