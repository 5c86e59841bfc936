"""Tests for pollers.ifs_client against the IFS simulator (and, for odd servers, a tiny local one)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime

import httpx
import pytest
from aiohttp import web

from core.clock import FakeClock
from core.domain import RecordKind
from core.errors import AuthError, ConfigError, FatalRequestError, RetriableError
from core.retry import RetryPolicy
from core.secret import Secret
from pollers.ifs_client import IfsClient, IfsClientConfig, counted, key_predicate, retry_after_seconds
from simulator.ifs import IfsSimulator

SECRET = "notifier-secret"
PO = ("PurchaseOrderHandling", "PurchaseOrderSet")
INVOICE = ("ManualSupplierInvoiceHandling", "ManualSupplierInvoiceSet")
VOUCHER = ("ApproveVouchersHandling", "VoucherApprovalSet")


class FakeSleep:
    """Records every wait and moves the fake clock to its end instead of sleeping.

    Concurrent sleeps overlap (the clock goes to the latest deadline) rather than add up.
    """

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        deadline = self.clock.monotonic() + seconds
        await asyncio.sleep(0)
        if (behind := deadline - self.clock.monotonic()) > 0:
            self.clock.advance(behind)


@dataclass
class Env:
    sim: IfsSimulator
    base_url: str
    clock: FakeClock
    sleep: FakeSleep
    make: Callable[..., IfsClient]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def fake_sleep(clock: FakeClock) -> FakeSleep:
    return FakeSleep(clock)


def _client_factory(base_url: str, clock: FakeClock, sleep: FakeSleep, opened: list[IfsClient]):
    def make(*, transport: httpx.AsyncBaseTransport | None = None, **overrides) -> IfsClient:
        settings = {
            "base_url": base_url,
            "realm": "ifs",
            "client_id": "notifier",
            "client_secret": SECRET,
            "timeout": 5.0,
            "retry": RetryPolicy(base=0.5, cap=30.0, max_attempts=6, max_elapsed=300.0),
        }
        settings.update(overrides)
        client = IfsClient(
            IfsClientConfig(**settings), clock=clock, sleep=sleep, rng=random.Random(7), transport=transport
        )
        opened.append(client)
        return client

    return make


class StampingTransport(httpx.AsyncHTTPTransport):
    """Real HTTP, plus the fake-clock time at which each request left the client."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self.clock = clock
        self.sent: list[tuple[float, str]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append((self.clock.monotonic(), request.url.path))
        return await super().handle_async_request(request)


@pytest.fixture
async def env(clock: FakeClock, fake_sleep: FakeSleep):
    sim = IfsSimulator(realm="ifs", clients={"notifier": SECRET}, token_ttl=180.0, clock=clock.time)
    base_url = await sim.start(host="127.0.0.1", port=0)
    opened: list[IfsClient] = []
    try:
        yield Env(sim, base_url, clock, fake_sleep, _client_factory(base_url, clock, fake_sleep, opened))
    finally:
        for client in opened:
            await client.aclose()
        await sim.stop()


async def _all_rows(client: IfsClient, *args, **kwargs) -> tuple[list[int], list[dict]]:
    sizes: list[int] = []
    rows: list[dict] = []
    async for page in client.iter_pages(*args, **kwargs):
        sizes.append(len(page))
        rows.extend(page)
    return sizes, rows


def _token_requests(sim: IfsSimulator) -> int:
    return sum(1 for r in sim.requests if "/protocol/openid-connect/token" in r.path)


# ---- paging ------------------------------------------------------------------------------------


async def test_pages_12000_rows_in_three_requests_without_duplicates(env: Env):
    env.sim.bulk_generate(RecordKind.ORDER, 12_000)
    client = env.make()

    sizes, rows = await _all_rows(client, *PO, orderby=["OrderNo"], page_size=5000)

    assert sizes == [5000, 5000, 2000]
    assert len({row["OrderNo"] for row in rows}) == 12_000
    assert len(env.sim.data_requests("PurchaseOrderSet")) == 3


async def test_follows_server_driven_next_links(clock: FakeClock, fake_sleep: FakeSleep):
    sim = IfsSimulator(
        realm="ifs", clients={"notifier": SECRET}, token_ttl=180.0, clock=clock.time, server_page_size=2000
    )
    base_url = await sim.start(host="127.0.0.1", port=0)
    opened: list[IfsClient] = []
    try:
        sim.bulk_generate(RecordKind.ORDER, 7500)
        client = _client_factory(base_url, clock, fake_sleep, opened)()

        sizes, rows = await _all_rows(client, *PO, orderby=["OrderNo"], page_size=5000)

        # $top=5000 arrives as 2000 + 2000 + 1000 via next links, then $skip=5000 as 2000 + 500
        assert sizes == [2000, 2000, 1000, 2000, 500]
        assert len({row["OrderNo"] for row in rows}) == 7500
        assert [r.query.get("$skip") for r in sim.data_requests("PurchaseOrderSet")] == [
            "0",
            "2000",
            "4000",
            "5000",
            "7000",
        ]
    finally:
        for client in opened:
            await client.aclose()
        await sim.stop()


# ---- tokens ------------------------------------------------------------------------------------


async def test_token_is_cached_and_renewed_before_expiry(env: Env):
    env.sim.add_order(company="10", OrderNo="P1")
    client = env.make()

    for _ in range(3):
        assert await client.probe(*PO, filter="Company eq '10'") is not None
    cached = env.sim.tokens_issued
    env.clock.advance(151.0)  # 180 s lifetime - 30 s margin has passed
    await client.probe(*PO, filter="Company eq '10'")

    assert cached == 1
    assert env.sim.tokens_issued == 2
    assert not [r for r in env.sim.requests if r.status == 401]
    assert client.token_state()["renewals"] == 2


async def test_token_expiring_mid_cycle_is_renewed_silently(env: Env):
    env.sim.bulk_generate(RecordKind.ORDER, 12_000)
    client = env.make()

    rows = 0
    async for page in client.iter_pages(*PO, orderby=["OrderNo"], page_size=5000):
        rows += len(page)
        env.sim.expire_all_tokens()

    assert rows == 12_000
    assert env.sim.tokens_issued == 3
    assert len([r for r in env.sim.requests if r.status == 401]) == 2
    assert client.stats["failures"] == 0


async def test_twenty_cold_requests_share_one_token_fetch(env: Env):
    env.sim.add_order(company="10", OrderNo="P1")
    client = env.make(max_concurrency=4)

    results = await asyncio.gather(*(client.probe(*PO, filter=None) for _ in range(20)))

    assert all(r is not None for r in results)
    assert env.sim.tokens_issued == 1
    assert _token_requests(env.sim) == 1


async def test_second_401_raises_auth_error(env: Env):
    env.sim.faults.fail_next(2, status=401)
    client = env.make()

    with pytest.raises(AuthError, match="401"):
        await client.probe(*PO, filter=None)

    assert env.sim.tokens_issued == 2
    assert client.token_state()["last_error"]


async def test_bad_client_secret_names_the_oauth_error_not_the_secret(env: Env):
    wrong = "wr0ng-s3cret-value"
    client = env.make(client_secret=wrong)

    with pytest.raises(AuthError) as caught:
        await client.ensure_token()

    text = str(caught.value)
    assert "invalid_client" in text or "unauthorized_client" in text
    assert wrong not in text and SECRET not in text
    state = client.token_state()
    assert state["valid"] is False and wrong not in str(state)


async def test_ensure_token_and_token_state_never_show_the_token(env: Env):
    client = env.make()

    await client.ensure_token()
    state = client.token_state()

    assert state["valid"] is True
    assert state["expires_in"] == pytest.approx(180.0)
    assert state["last_error"] is None
    assert set(state) == {"valid", "expires_in", "renewals", "last_error"}


async def test_token_endpoint_outage_follows_the_retry_policy(env: Env):
    env.sim.faults.fail_next(2, status=503, token=True)
    env.sim.faults.drop_next(1, token=True)
    client = env.make()

    await client.ensure_token()

    assert env.sim.tokens_issued == 1
    assert client.stats["retries"] == 3 and len(env.sleep.waits) == 3
    assert client.token_state()["valid"] is True


# ---- throttling and retries --------------------------------------------------------------------


async def test_429_storm_honours_retry_after_and_keeps_the_budget(env: Env):
    env.sim.bulk_generate(RecordKind.ORDER, 30)
    env.sim.faults.fail_next(6, status=429, retry_after=2.0)
    stamps = StampingTransport(env.clock)
    client = env.make(requests_per_minute=10, max_concurrency=4, transport=stamps)

    results = await asyncio.gather(*(client.probe(*PO, filter=None) for _ in range(25)))

    assert all(r is not None for r in results)
    assert client.stats["throttled"] == 6
    assert env.sleep.waits.count(2.0) >= 6
    statuses = [r.status for r in env.sim.data_requests("PurchaseOrderSet")]
    # A bearer may expire in flight while another request's fake wait moves the clock; renewed silently.
    assert (statuses.count(200), statuses.count(429), set(statuses)) in [
        (25, 6, {200, 429}),
        (25, 6, {200, 429, 401}),
    ]
    times = [t for t, path in stamps.sent if "/projection/" in path]
    busiest = max(sum(1 for t in times if start <= t < start + 60.0) for start in times)
    assert busiest == 10


async def test_mi_modified_error_is_retried(env: Env):
    env.sim.add_order(company="10", OrderNo="P1")
    env.sim.faults.fail_next(1, status=500, code="MI_MODIFIED_ERROR")
    client = env.make()

    row = await client.probe(*PO, filter=None)

    assert row is not None and row["OrderNo"] == "P1"
    assert [r.status for r in env.sim.data_requests("PurchaseOrderSet")] == [500, 200]
    assert client.stats["retries"] == 1


async def test_503_then_success(env: Env):
    env.sim.add_order(company="10", OrderNo="P1")
    env.sim.faults.fail_next(2, status=503)
    client = env.make()

    row = await client.probe(*PO, filter=None)

    assert row is not None
    assert [r.status for r in env.sim.data_requests("PurchaseOrderSet")] == [503, 503, 200]


async def test_malformed_json_is_retried(env: Env):
    env.sim.add_order(company="10", OrderNo="P1")
    env.sim.faults.malformed_next(1)
    client = env.make()

    row = await client.probe(*PO, filter=None)

    assert row is not None
    assert client.stats["retries"] == 1


async def test_dropped_connections_are_retried(env: Env):
    env.sim.add_order(company="10", OrderNo="P1")
    client = env.make()
    await client.ensure_token()
    env.sim.faults.drop_next(2)

    with counted() as cost:  # (what a poll cycle reports as its load on IFS)
        row = await client.probe(*PO, filter=None)

    assert row is not None
    assert client.stats["retries"] == 2
    assert len(env.sleep.waits) == 2
    assert cost.requests == 3  # the two dropped ones asked IFS too


async def test_timeouts_exhaust_into_retriable_error(env: Env):
    env.sim.add_order(company="10", OrderNo="P1")
    client = env.make(timeout=0.2, retry=RetryPolicy(base=0.5, cap=30.0, max_attempts=3, max_elapsed=300.0))
    await client.ensure_token()
    env.sim.faults.slow_next(3, 2.0)

    with pytest.raises(RetriableError, match="timeout") as caught:
        await client.probe(*PO, filter=None)

    assert caught.value.status is None
    assert client.stats["requests"] == 4  # one token + three tries
    assert client.stats["failures"] == 1


async def test_retries_stop_at_max_elapsed(env: Env):
    env.sim.add_order(company="10", OrderNo="P1")
    client = env.make(retry=RetryPolicy(base=0.5, cap=30.0, max_attempts=0, max_elapsed=10.0))
    env.sim.faults.fail_next(10, status=429, retry_after=4.0)

    with pytest.raises(RetriableError) as caught:
        await client.probe(*PO, filter=None)

    assert caught.value.status == 429 and caught.value.retry_after == 4.0
    assert env.sleep.waits.count(4.0) == 2  # 0 s, 4 s, 8 s; a third wait would pass 10 s


async def test_bad_filter_is_fatal_with_code_and_message(env: Env):
    client = env.make()

    with pytest.raises(FatalRequestError) as caught:
        await client.probe(*PO, filter="NotAColumn eq 'x'")

    assert caught.value.status == 400
    assert caught.value.code
    assert caught.value.code in str(caught.value)
    assert "NotAColumn" in str(caught.value)
    assert len(env.sim.data_requests("PurchaseOrderSet")) == 1


# ---- single entities and navigation -----------------------------------------------------------


async def test_get_by_key_single_key(env: Env):
    env.sim.add_order(company="10", OrderNo="P 1/2")
    client = env.make()

    row = await client.get_by_key(*PO, {"OrderNo": "P 1/2"})

    assert row is not None and row["OrderNo"] == "P 1/2"


async def test_get_by_key_multi_key(env: Env):
    env.sim.add_invoice(company="10", InvoiceId=105)
    env.sim.add_invoice(company="20", InvoiceId=105)
    client = env.make()

    row = await client.get_by_key(*INVOICE, {"Company": "20", "InvoiceId": 105})

    assert row is not None and (row["Company"], row["InvoiceId"]) == ("20", 105)


async def test_get_by_key_four_keys_mixing_strings_and_numbers(env: Env):
    voucher = env.sim.add_voucher(company="10")
    keys = {k: voucher[k] for k in ("Company", "AccountingYear", "VoucherType", "VoucherNo")}
    client = env.make()

    row = await client.get_by_key(*VOUCHER, keys)

    assert row is not None and row["@odata.etag"] == voucher["@odata.etag"]


async def test_get_by_key_missing_is_none(env: Env):
    client = env.make()

    assert await client.get_by_key(*PO, {"OrderNo": "nope"}) is None
    assert client.stats["failures"] == 0


async def test_get_by_key_on_an_unknown_projection_is_fatal(env: Env):
    client = env.make()

    with pytest.raises(FatalRequestError) as caught:
        await client.get_by_key("NoSuchHandling", "PurchaseOrderSet", {"OrderNo": "P1"})

    assert caught.value.status == 404


async def test_navigation_collection(env: Env):
    env.sim.add_order(company="10", OrderNo="P7")
    client = env.make()

    lines = await client.get_collection(
        *PO, {"OrderNo": "P7"}, "PurchaseOrderApprovalArray", select=["SequenceNo"]
    )

    expected = env.sim.nav_rows(RecordKind.ORDER, {"OrderNo": "P7"})
    assert [line["SequenceNo"] for line in lines] == [row["SequenceNo"] for row in expected]
    assert len(lines) >= 1
    assert "ApprovalRule" not in lines[0]


# ---- a tiny local server for what the simulator does not do ----------------------------------


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def _token(request: web.Request) -> web.Response:
    return web.json_response({"access_token": "t-1", "expires_in": 180, "token_type": "Bearer"})


@pytest.fixture
async def local_server():
    runners: list[web.AppRunner] = []

    async def start(data: Handler) -> str:
        app = web.Application()
        app.router.add_post("/auth/realms/ifs/protocol/openid-connect/token", _token)
        app.router.add_get("/{tail:.*}", data)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        host, port = runner.addresses[0][:2]
        return f"http://{host}:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()


def _local_client(base_url: str, clock: FakeClock, sleep: FakeSleep, opened: list[IfsClient]) -> IfsClient:
    return _client_factory(base_url, clock, sleep, opened)()


async def test_repeated_next_link_is_refused(local_server, clock: FakeClock, fake_sleep: FakeSleep):
    async def data(request: web.Request) -> web.Response:
        hop = request.query.get("hop")
        following = {None: "1", "1": "2", "2": "1"}[hop]
        link = f"{request.url.with_query({'hop': following})}"
        return web.json_response({"value": [{"OrderNo": f"hop{hop}"}], "@odata.nextLink": link})

    opened: list[IfsClient] = []
    client = _local_client(await local_server(data), clock, fake_sleep, opened)
    pages: list[list[dict]] = []

    with pytest.raises(FatalRequestError, match="paging loop"):
        async for page in client.iter_pages(*PO, page_size=5000):
            pages.append(page)

    assert [p[0]["OrderNo"] for p in pages] == ["hopNone", "hop1", "hop2"]
    await client.aclose()


async def test_next_link_to_another_host_is_refused(local_server, clock: FakeClock, fake_sleep: FakeSleep):
    async def data(request: web.Request) -> web.Response:
        return web.json_response({"value": [{"A": 1}], "@odata.nextLink": "https://elsewhere.example/steal"})

    opened: list[IfsClient] = []
    client = _local_client(await local_server(data), clock, fake_sleep, opened)

    with pytest.raises(FatalRequestError, match="another host"):
        async for _ in client.iter_pages(*PO):
            pass
    await client.aclose()


async def test_full_window_split_by_server_continues_with_skip(local_server, clock, fake_sleep):
    # 7 rows, $top=4, server pages of 2: [0,1]->[2,3] (window full) then $skip=4: [4,5]->[6]
    seen_queries: list[dict[str, str]] = []

    async def data(request: web.Request) -> web.Response:
        query = dict(request.query)
        seen_queries.append(query)
        start = int(query.get("$skip", "0")) + int(query.get("inner", "0"))
        end_of_window = int(query.get("$skip", "0")) + int(query["$top"])
        stop = min(start + 2, end_of_window, 7)
        body: dict = {"value": [{"N": n} for n in range(start, stop)]}
        if stop < min(end_of_window, 7):
            body["@odata.nextLink"] = str(
                request.url.update_query({"inner": str(stop - int(query["$skip"]))})
            )
        return web.json_response(body)

    opened: list[IfsClient] = []
    client = _local_client(await local_server(data), clock, fake_sleep, opened)

    sizes, rows = await _all_rows(client, *PO, orderby=["OrderNo"], page_size=4)

    assert [r["N"] for r in rows] == list(range(7))
    assert sizes == [2, 2, 2, 1]
    assert all(q["$orderby"] == "OrderNo" for q in seen_queries)
    await client.aclose()


async def test_query_options_are_encoded_for_odata(local_server, clock, fake_sleep):
    raw: list[str] = []

    async def data(request: web.Request) -> web.Response:
        raw.append(request.raw_path)
        return web.json_response({"value": []})

    opened: list[IfsClient] = []
    client = _local_client(await local_server(data), clock, fake_sleep, opened)

    await client.probe(*PO, filter="Company eq 'A&B' and Objstate eq IfsApp.X.S'Planned'")
    await client.get_by_key(*INVOICE, {"Company": "O'B #1", "InvoiceId": 105})

    assert raw[0] == (
        "/main/ifsapplications/projection/v1/PurchaseOrderHandling.svc/PurchaseOrderSet"
        "?$filter=Company%20eq%20'A%26B'%20and%20Objstate%20eq%20IfsApp.X.S'Planned'&$top=1"
    )
    assert raw[1].endswith("ManualSupplierInvoiceSet(Company='O''B%20%231',InvoiceId=105)")
    await client.aclose()


async def test_sends_configured_headers(local_server, clock, fake_sleep):
    headers: list[dict[str, str]] = []

    async def data(request: web.Request) -> web.Response:
        headers.append(dict(request.headers))
        return web.json_response({"value": []})

    base_url = await local_server(data)
    opened: list[IfsClient] = []
    client = _client_factory(base_url, clock, fake_sleep, opened)(
        time_zone_aware=True, ieee754_compatible=True
    )

    await client.probe(*PO, filter=None)

    sent = headers[0]
    assert sent["Authorization"] == "Bearer t-1"
    assert sent["Accept"] == "application/json;IEEE754Compatible=true"
    assert sent["X-Ifs-Time-Zone-Aware-Request"] == "true"
    assert sent["User-Agent"] == "ifs-teams-notifier/0.1"
    await client.aclose()


# ---- pure pieces -------------------------------------------------------------------------------


def test_key_predicate_quotes_strings_and_leaves_numbers_bare():
    assert key_predicate({"OrderNo": "1"}) == "OrderNo='1'"
    assert key_predicate({"Company": "O'B", "InvoiceId": 105}) == "Company='O''B',InvoiceId=105"


def test_retry_after_accepts_seconds_and_http_dates():
    now = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC).timestamp()
    later = format_datetime(datetime(2026, 3, 1, 12, 0, 7, tzinfo=UTC), usegmt=True)

    assert retry_after_seconds("3", now) == 3.0
    assert retry_after_seconds(later, now) == pytest.approx(7.0)
    assert retry_after_seconds("garbage", now) is None
    assert retry_after_seconds(None, now) is None


def test_config_repr_hides_the_secret():
    config = IfsClientConfig(base_url="https://t.ifs.cloud", realm="r", client_id="c", client_secret=SECRET)

    assert SECRET not in repr(config)
    assert SECRET not in str(config.client_secret)
    assert isinstance(config.client_secret, Secret) and config.client_secret.reveal() == SECRET


def test_integration_prefix_changes_the_projection_path():
    config = IfsClientConfig(
        base_url="https://t.ifs.cloud/", realm="r", client_id="c", client_secret="s", path_prefix="int"
    )

    url = IfsClient(config).entity_url(*PO)

    assert (
        url
        == "https://t.ifs.cloud/int/ifsapplications/projection/v1/PurchaseOrderHandling.svc/PurchaseOrderSet"
    )


def test_config_refuses_a_base_url_with_a_path():
    with pytest.raises(ConfigError) as caught:
        IfsClientConfig(base_url="https://t.ifs.cloud/main", realm="r", client_id="c", client_secret="s")

    assert caught.value.key == "base_url"


def test_a_page_whose_value_holds_a_non_object_is_refused_by_position():
    from core.errors import FatalRequestError

    url = "https://ifs.example.com/main/ifsapplications/projection/v1/P.svc/Set?$top=2"
    assert IfsClient._rows({"value": [{"a": 1}]}, url) == [{"a": 1}]
    with pytest.raises(FatalRequestError) as err:
        IfsClient._rows({"value": [{"a": 1}, 5, None]}, url)
    assert "'value' holds int at index 1" in str(err.value) and err.value.status == 200
