"""The one HTTP client for IFS Cloud: OAuth2 token cache, OData reads, paging, throttling and retries.

Decisions worth knowing before changing this module:

* Every HTTP exchange, token requests included, goes through `IfsClient._send`: that is the only
  place where statuses become recovery intents (`AuthError`, `RetriableError`, `FatalRequestError`)
  and the only place that sleeps.
* Data requests take a slot from the client-side request budget (`requests_per_minute`); token
  requests do not. Tokens come from IAM, not from the OData provider the budget protects, they are
  rare (one per token lifetime, ~180 s), and a token refresh must never queue behind a 429 penalty,
  or the bearer would expire while the data requests wait. A 429/503 on either kind still penalises
  the budget, because the host asked us to slow down.
* Parsing: pages are parsed with orjson (about 3x faster than `json.loads` on IFS pages, the largest
  per-row cost of a poll after mapping). Decimals: floats stay floats (and
  `IEEE754Compatible=true` decimals stay strings). The mapping layer turns a field into a Decimal
  with `Decimal(str(value))`, which is exact for the 15-16 significant digits a float keeps; set
  `ieee754_compatible=True` where amounts need more. Parsing with `parse_float=Decimal` would cost
  every float of every row, most of which are never read.
* Pages are yielded exactly as the server sent them (`value` lists); the client does no per-row work.
* A listing is bounded (`ListingBounds`): in requests, derived from the rows expected, and in time on the
  client's clock. Distinct next links can go on for ever; only a repeated one is a detectable loop.
* A server may cap its pages below `$top` without a next link, so that a short first window looks like
  the end of the listing. When that window holds a round number of rows (a multiple of 50, or a power of
  two), one more window is read; rows there reveal the cap, which then becomes the window size.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import math
import random
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, Literal, TypeVar
from urllib.parse import quote, urljoin, urlsplit

import httpx
import orjson

from core.clock import Clock, SystemClock
from core.errors import AuthError, ConfigError, FatalRequestError, RetriableError
from core.links import odata_literal
from core.ratelimit import WindowLimiter
from core.retry import RetryPolicy
from core.secret import Secret

T = TypeVar("T")

log = logging.getLogger(__name__)

# Characters left as they are in a query value: OData punctuation that IFS expects literally.
# Space becomes %20 (never '+', which OData reads as a plus sign).
_QUERY_SAFE = "'(),:$*/@!;"
# ...and in a key predicate inside the path: the predicate's own syntax.
_KEY_SAFE = "'=,"
_RETRY_AFTER_STATUSES = frozenset({429, 503})
_ERROR_TEXT_LIMIT = 1000  # IFS names the offending property at the end of a long detail
PAGE_CAP_RECHECK = 10  # listings between re-checks of a steady short window (see IfsClient._worth_a_check)
_NAVIGATION_PAGE_LIMIT = 100  # server pages of one record's navigation (approval lines): far beyond any chain


@dataclass(frozen=True)
class IfsClientConfig:
    base_url: str  # https://tenant.ifs.cloud (no path)
    realm: str  # IAM namespace
    client_id: str
    client_secret: Secret | str  # a plain str is wrapped in Secret on construction
    scope: str = "openid microprofile-jwt"
    path_prefix: str = "main"  # "main" (web client APIs) or "int" (integration APIs)
    timeout: float = 30.0  # seconds, applied to connect, read, write and pool separately
    token_margin: float = 30.0  # renew this many seconds before the token expires
    requests_per_minute: int = 1000  # budget shared by every source using this client
    max_concurrency: int = 4
    retry: RetryPolicy = RetryPolicy(base=0.5, cap=30.0, max_attempts=6, max_elapsed=300.0)
    user_agent: str = "ifs-teams-notifier/0.1"
    time_zone_aware: bool = False  # send X-Ifs-Time-Zone-Aware-Request: true
    ieee754_compatible: bool = False  # ask for decimals as strings (lossless)

    def __post_init__(self) -> None:
        if not isinstance(self.client_secret, Secret):
            object.__setattr__(self, "client_secret", Secret(str(self.client_secret)))
        parts = urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError("base_url", "must be an absolute http(s) URL such as https://tenant.ifs.cloud")
        if parts.path.strip("/") or parts.query or parts.fragment:
            raise ConfigError("base_url", "must be the host only, without a path (e.g. no /main)")
        if self.path_prefix not in ("main", "int"):
            raise ConfigError("path_prefix", "must be 'main' or 'int'")
        if not self.realm or not self.client_id:
            raise ConfigError("realm" if not self.realm else "client_id", "must not be empty")
        if not self.client_secret:
            raise ConfigError("client_secret", "must not be empty")
        for key in ("timeout", "requests_per_minute", "max_concurrency"):
            if getattr(self, key) <= 0:
                raise ConfigError(key, "must be positive")
        if self.token_margin < 0:
            raise ConfigError("token_margin", "must not be negative")

    @property
    def secret(self) -> Secret:
        secret = self.client_secret
        return secret if isinstance(secret, Secret) else Secret(secret)


@dataclass
class ListingBounds:
    """How far one listing may go before it is stopped as runaway paging (IFS sending next links forever).

    Read at every page, so a caller may update `expected_rows` as the listing goes: the records it expects
    (those pending after the last poll), or the distinct records listed so far when more, so that a
    listing that keeps bringing new records is stopped by time alone, and one that repeats rows or sends
    empty pages by its page count too. The page limit counts requests, empty pages included; when
    `max_pages` is 0 it is derived: max(20, 3 * ceil(expected_rows / rows per page) + 10), rows per page
    being the page size or the largest page the server has sent, whichever is smaller (a server paging
    below `$top` sends more pages).
    """

    expected_rows: int = 0
    max_pages: int = 0  # 0: derived from expected_rows
    max_seconds: float = 900.0  # 0: no time limit

    def pages_allowed(self, page_size: int, largest_page: int) -> int:
        if self.max_pages > 0:
            return self.max_pages
        per_page = max(1, min(page_size, largest_page or page_size))
        return max(20, 3 * math.ceil(self.expected_rows / per_page) + 10)


@dataclass
class Cost:
    """What a piece of work asked of IFS: requests sent and bytes received (token requests included)."""

    requests: int = 0
    bytes: int = 0


# The cost account of the work running now (a poll of one source, say): every exchange adds to it. Tasks
# started by that work (the page asked for ahead) inherit it, so concurrent sources are counted apart.
_ACCOUNT: contextvars.ContextVar[Cost | None] = contextvars.ContextVar("ifs_cost", default=None)


class counted:
    """`with counted() as cost:` the requests and bytes of the IFS calls made inside the block."""

    def __enter__(self) -> Cost:
        self.cost = Cost()
        self._token = _ACCOUNT.set(self.cost)
        return self.cost

    def __exit__(self, *exc_info: object) -> None:
        _ACCOUNT.reset(self._token)


def looks_like_a_page_cap(rows: int, page_size: int) -> bool:
    """Whether a short window holds a round number of rows (a multiple of 50, or a power of two from 16),
    as a server's own page cap would, rather than whatever was left of a listing."""
    return 16 <= rows < page_size and (rows % 50 == 0 or rows & (rows - 1) == 0)


def _key_condition(keys: Mapping[str, str | int]) -> str:
    parts = [f"{name} eq {odata_literal(value)}" for name, value in keys.items()]
    return parts[0] if len(parts) == 1 else "(" + " and ".join(parts) + ")"


FILTER_CHARS = 3000  # a filter of several conditions, at first: with the rest, URLs of about 4 KB
MIN_FILTER_CHARS = 250  # never split below this (a single condition is never split at all)


def bounded_groups(items: Sequence[T], lengths: Iterable[int], joiner: int, max_chars: int) -> list[list[T]]:
    """`items` in order, grouped so that each group's lengths plus a `joiner` between each two stay within
    about `max_chars` (a group holds one item at least): the filters of one request each."""
    out: list[list[T]] = []
    current: list[T] = []
    size = 0
    for item, length in zip(items, lengths, strict=True):
        if current and size + joiner + length > max_chars:
            out.append(current)
            current, size = [], 0
        size += length + (joiner if current else 0)
        current.append(item)
    if current:
        out.append(current)
    return out


def key_predicate(keys: Mapping[str, str | int]) -> str:
    """`Company='10',InvoiceId=105` (OData literals, not yet URL-encoded)."""
    if not keys:
        raise ValueError("at least one key is needed")
    return ",".join(f"{name}={odata_literal(value)}" for name, value in keys.items())


def _query(params: Mapping[str, str]) -> str:
    return "&".join(f"{name}={quote(value, safe=_QUERY_SAFE)}" for name, value in params.items())


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """Retry-After as seconds from now: delta-seconds or an HTTP date (RFC 9110 §10.2.3)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - now)


def _odata_error(content: bytes) -> tuple[str | None, str]:
    """(code, message) from `{"error": {"code", "message", "details": [...]}}`; never the raw body.

    The first detail is kept because IFS puts the useful part there ("The property 'X' ... is not
    defined in type ..."); it describes our request, not row data.
    """
    try:
        err = json.loads(content)["error"]
        code = err.get("code")
        message = str(err.get("message") or "")
        details = err.get("details") or []
        if details and isinstance(details[0], dict) and details[0].get("message"):
            message = f"{message} {details[0]['message']}".strip()
    except (ValueError, KeyError, TypeError, AttributeError):
        return None, "(no OData error in the response)"
    return (str(code) if code else None), message[:_ERROR_TEXT_LIMIT]


def _transport_cause(exc: Exception) -> str:
    """What an admin can act on in a transport error: TLS, DNS or a refused connection (no URLs, no data)."""
    text = str(exc).lower()
    if "certificate" in text or "ssl" in text or "tls" in text:
        return ": TLS handshake or certificate verification failed"
    if "name or service not known" in text or "name resolution" in text or "nodename nor servname" in text \
            or "getaddrinfo" in text or "no address associated" in text:
        return ": the host name does not resolve (DNS)"
    if "connection refused" in text or "connect call failed" in text or "all connection attempts failed" in text:
        return ": nothing accepts connections there (refused or unreachable)"
    return ""


def _unknown_service(content: bytes) -> bool:
    """A 404 about the projection itself ("Metadata not found."), not about a missing entity."""
    code, _ = _odata_error(content)
    return code is not None and "METADATA" in code.upper()


@dataclass
class _Token:
    value: str
    refresh_at: float  # monotonic time after which we renew
    expires_at: float  # monotonic time the server stops accepting it


@dataclass
class _Attempt:
    """Why one try failed in a way worth retrying."""

    reason: str
    status: int | None = None
    code: str | None = None
    retry_after: float | None = None


_NO_FAILURE = _Attempt("")


@dataclass(frozen=True, slots=True)
class _Answer:
    """One HTTP answer as read: status, headers and the whole (decoded) body."""

    status_code: int
    headers: httpx.Headers
    content: bytes
_Kind = Literal["token", "data"]


class IfsClient:
    """Reads IFS Cloud OData projections for one tenant and one service user.

    Safe to share between sources: token, request budget, concurrency and stats are per client.
    """

    def __init__(
        self,
        config: IfsClientConfig,
        *,
        clock: Clock | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self._clock = clock or SystemClock()
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._base = config.base_url.rstrip("/")
        self._origin = urlsplit(self._base)[:2]
        self._token_url = (
            f"{self._base}/auth/realms/{quote(config.realm, safe='')}/protocol/openid-connect/token"
        )
        headers = {"User-Agent": config.user_agent, "Accept": self._accept(False)}
        if config.time_zone_aware:
            headers["X-Ifs-Time-Zone-Aware-Request"] = "true"
        # One extra connection so a token renewal never waits for a data request to finish.
        pool = config.max_concurrency + 1
        self._http = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(
                connect=config.timeout, read=config.timeout, write=config.timeout, pool=config.timeout
            ),
            limits=httpx.Limits(max_connections=pool, max_keepalive_connections=pool),
            transport=transport,
            follow_redirects=False,
        )
        self._limiter = WindowLimiter([(config.requests_per_minute, 60.0)], self._clock.monotonic)
        self._slots = asyncio.Semaphore(config.max_concurrency)
        self._token_lock = asyncio.Lock()
        self._token: _Token | None = None
        self._token_error: str | None = None
        self._uncapped: dict[str, tuple[int, int]] = {}  # query -> (rows of its short window, listings since)
        # how long a filter of several conditions may be; lowered for good when IFS answers 414 (shorter_filters)
        self.filter_chars = FILTER_CHARS
        self.stats: dict[str, int] = {
            "requests": 0,  # HTTP requests sent, token requests included
            "retries": 0,  # requests sent again after a retriable failure or a 401
            "throttled": 0,  # 429 answers received
            "token_renewals": 0,  # tokens obtained
            "failures": 0,  # calls that ended in an error raised to the caller
            "bytes": 0,  # response bytes received (decoded)
        }

    # ---- public surface -------------------------------------------------------------------

    def service_url(self, projection: str) -> str:
        return f"{self._base}/{self.config.path_prefix}/ifsapplications/projection/v1/{quote(projection, safe='')}.svc"

    def entity_url(self, projection: str, entity_set: str) -> str:
        return f"{self.service_url(projection)}/{quote(entity_set, safe='')}"

    async def iter_pages(
        self,
        projection: str,
        entity_set: str,
        *,
        filter: str | None = None,
        select: Sequence[str] | None = None,
        orderby: Sequence[str] = (),
        page_size: int = 5000,
        bounds: ListingBounds | None = None,
        no_metadata: bool = False,
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """Yield the rows of a query one page at a time.

        Client paging with `$top`/`$skip` (order by the keys: IFS warns that rows shift between pages
        otherwise), plus any `@odata.nextLink` the server sends. A `$top` window may itself arrive in
        several server pages; the window is complete when a page comes without a next link. The
        query ends when a window returned fewer than `$top` rows; a window that returned more means
        the server ignored `$top`, and its next links already covered everything.

        `no_metadata` asks for `odata.metadata=none` (rows without `@odata.etag`; see `_accept`).

        A listing past its `bounds` (pages, or seconds on the client's clock) raises FatalRequestError
        after the last page within them: distinct next links can go on for ever, and the loop check
        only catches a repeated one.
        """
        if page_size <= 0:
            raise ValueError("page_size must be positive")
        bounds = bounds or ListingBounds()
        base = self.entity_url(projection, entity_set)
        params = self._options(filter=filter, select=select, orderby=orderby)
        started = self._clock.monotonic()
        requests = 1
        largest = 0
        top = page_size  # rows per window: the page size, or a smaller cap the server turned out to have
        probe = 0  # rows of the short first window whose next window is read to find out whether it ended

        def window(skip: int) -> str:
            return f"{base}?{_query({**params, '$top': str(top), '$skip': str(skip)})}"

        query = f"{base}?{_query(self._options(filter=filter, orderby=orderby))}"  # a cap ignores $select

        seen: set[str] = set()
        skip = 0
        window_rows = 0
        url: str | None = window(0)
        self._remember(url, seen)
        # The next page is requested before this one is handed out, so that the server prepares it
        # (and its body arrives) while the caller is busy with this one: at most one request ahead.
        accept = self._accept(True) if no_metadata else None
        ahead: asyncio.Future[Any] | None = asyncio.ensure_future(self._send("data", "GET", url, accept=accept))
        try:
            while ahead is not None and url is not None:
                body = await ahead
                ahead = None
                rows = self._rows(body, url)
                window_rows += len(rows)
                largest = max(largest, len(rows))
                if probe and not rows:  # the short window was the end: the same count needs no check for a while
                    self._uncapped[query] = (probe, 0)
                if probe and rows:  # rows after a short window: the server capped it, silently
                    log.warning("IFS answered %d rows to $top=%d on %s.svc/%s, and more rows after them: it caps"
                                " its pages at %d rows. Paging by %d; set ifs.page_size to %d to save this check",
                                probe, top, projection, entity_set, probe, probe, probe)
                    top = probe
                probe = 0
                next_link = body.get("@odata.nextLink")
                refused: FatalRequestError | None = None
                nxt: str | None = None
                try:
                    if next_link:
                        nxt = self._next_url(url, next_link)
                    elif window_rows == top:
                        # a full $top window without a next link: the next window may hold more
                        skip += top
                        window_rows = 0
                        nxt = window(skip)
                    elif requests == 1 and looks_like_a_page_cap(window_rows, top) and self._worth_a_check(
                            query, window_rows):
                        # a short first answer of a round size, without a next link, may be a server's own
                        # page cap rather than the end (a cap below $top shows in the first window): one
                        # more window tells
                        probe = window_rows
                        skip += window_rows
                        window_rows = 0
                        nxt = window(skip)
                    # else: a short window (the end), or more than $top (next links covered it all)
                    if nxt is not None:
                        self._within(bounds, projection, entity_set, requests, top, largest, started)
                        self._remember(nxt, seen)
                        requests += 1
                        ahead = asyncio.ensure_future(self._send("data", "GET", nxt, accept=accept))
                except FatalRequestError as exc:
                    refused, nxt = exc, None  # raised after this page, as if we had not looked ahead
                url = nxt
                if rows:
                    yield rows
                if refused is not None:
                    raise refused
        finally:
            # the caller stopped early (error or break): the page asked for ahead is not needed
            if ahead is not None:
                if not ahead.done():
                    ahead.cancel()
                elif not ahead.cancelled():
                    ahead.exception()  # retrieved, so asyncio does not report it as lost

    def _worth_a_check(self, query: str, rows: int) -> bool:
        """Whether a short first window of a round size needs its next window read. Not when the same query
        answered the same count last time and the window after it was empty (a steady pending set would pay a
        request every cycle), except every PAGE_CAP_RECHECK listings: a cap that equals the count exactly
        shows only when the count grows, and confirmations by key cover the records already seen."""
        count, since = self._uncapped.get(query, (None, 0))
        if count == rows and since < PAGE_CAP_RECHECK:
            self._uncapped[query] = (count, since + 1)
            return False
        return True

    def _within(self, bounds: ListingBounds, projection: str, entity_set: str, requests: int, page_size: int,
                largest: int, started: float) -> None:
        """Raise when a listing that has made `requests` requests may not make one more."""
        where = f"listing of {projection}.svc/{entity_set}"
        allowed = bounds.pages_allowed(page_size, largest)
        if requests >= allowed:
            setting = ("ifs.max_listing_pages" if bounds.max_pages else
                       f"derived from {bounds.expected_rows} rows expected; raise it with ifs.max_listing_pages")
            raise FatalRequestError(
                f"{where} stopped after {requests} pages (limit {allowed}, {setting}): IFS kept sending next"
                " links; nothing was resolved from this listing", code="LISTING_UNBOUNDED")
        elapsed = self._clock.monotonic() - started
        if bounds.max_seconds > 0 and elapsed >= bounds.max_seconds:
            raise FatalRequestError(
                f"{where} stopped after {requests} pages and {elapsed:.0f} s (limit ifs.max_listing_seconds ="
                f" {bounds.max_seconds:g}): IFS kept sending next links; nothing was resolved from this listing",
                code="LISTING_UNBOUNDED")

    async def get_by_key(
        self, projection: str, entity_set: str, keys: Mapping[str, str | int]
    ) -> dict[str, Any] | None:
        """One entity by its key(s), or None when IFS answers 404 (unless the projection is unknown)."""
        url = self._key_url(projection, entity_set, keys)
        body = await self._send("data", "GET", url, missing_ok=True)
        if body is None:
            return None
        if not isinstance(body, dict):
            raise FatalRequestError(f"IFS GET {urlsplit(url).path}: expected an entity object", status=200)
        return body

    async def get_collection(
        self,
        projection: str,
        entity_set: str,
        keys: Mapping[str, str | int],
        navigation: str,
        *,
        select: Sequence[str] | None = None,
    ) -> list[dict[str, Any]]:
        """All rows of `{Set}(keys)/{navigation}` (e.g. approval lines), following next links."""
        url = f"{self._key_url(projection, entity_set, keys)}/{quote(navigation, safe='')}"
        params = self._options(select=select)
        if params:
            url = f"{url}?{_query(params)}"
        seen: set[str] = set()
        result: list[dict[str, Any]] = []
        while True:
            if len(seen) >= _NAVIGATION_PAGE_LIMIT:
                raise FatalRequestError(
                    f"IFS GET {urlsplit(url).path}: stopped after {len(seen)} pages: IFS kept sending next links",
                    code="LISTING_UNBOUNDED")
            self._remember(url, seen)
            body = await self._send("data", "GET", url)
            result.extend(self._rows(body, url))
            next_link = body.get("@odata.nextLink")
            if not next_link:
                return result
            url = self._next_url(url, next_link)

    async def probe(self, projection: str, entity_set: str, *, filter: str | None,
                    select: Sequence[str] | None = None, orderby: Sequence[str] = (),
                    top: int = 1) -> dict[str, Any] | None:
        """The first row of a query (`$top=1`), or None: checks a connection, a company or a poll's query.

        IFS answers empty sets, not 403, for companies the service user is not granted.
        """
        rows = await self.sample(projection, entity_set, filter=filter, select=select, orderby=orderby, top=top)
        return rows[0] if rows else None

    async def sample(self, projection: str, entity_set: str, *, filter: str | None = None,
                     select: Sequence[str] | None = None, orderby: Sequence[str] = (),
                     top: int = 100, no_metadata: bool = False) -> list[dict[str, Any]]:
        """The first `top` rows of a query, one request (no paging); `no_metadata` as for iter_pages."""
        options = self._options(filter=filter, select=select, orderby=orderby)
        url = f"{self.entity_url(projection, entity_set)}?{_query({**options, '$top': str(top)})}"
        accept = self._accept(True) if no_metadata else None
        return self._rows(await self._send("data", "GET", url, accept=accept), url)

    async def read_by_keys(
        self,
        projection: str,
        entity_set: str,
        keys: Sequence[Mapping[str, str | int]],
        *,
        select: Sequence[str] | None = None,
    ) -> list[dict[str, Any]]:
        """The rows with these keys, whatever their state, in as few requests as URLs of about 4 KB allow:
        `$filter=(K1 eq a and K2 eq 1) or (...)`, chunked (see `filter_chars`). A key with no row is simply
        not answered."""
        rows: list[dict[str, Any]] = []
        names = list(keys[0]) if keys else []
        def grouped(conditions: list[str]) -> list[list[str]]:
            return bounded_groups(conditions, map(len, conditions), len(" or "), self.filter_chars)

        groups = deque(grouped([_key_condition(k) for k in keys]))
        while groups:
            group = groups.popleft()
            chunk, before = " or ".join(group), len(rows)
            try:
                async for page in self.iter_pages(projection, entity_set, filter=chunk, select=select,
                                                  orderby=names, page_size=max(50, len(group))):
                    rows.extend(page)
            except FatalRequestError as exc:
                if len(group) > 1 and self.shorter_filters(exc, len(chunk)):  # 414: the same, in smaller parts
                    del rows[before:]  # (a page or two may have come before a next link was refused)
                    groups = deque(grouped([c for g in (group, *groups) for c in g]))  # the rest too
                    continue
                raise
        return rows

    def shorter_filters(self, exc: FatalRequestError, filter_length: int) -> bool:
        """Whether `exc` is IFS, or a proxy in front of it, refusing a URL as too long (414 URI Too Long) for
        a filter of several conditions joined to `filter_length` characters, that a smaller limit would now
        split. Later filters of several conditions (companies, keys) are then kept under half that length,
        for the life of this client, and the caller asks again in smaller parts: more requests, the same
        rows. False when the limit cannot go lower (a single condition is never split): the request fails."""
        if exc.status != 414:
            return False
        limit = max(MIN_FILTER_CHARS, filter_length // 2)
        if limit < self.filter_chars:
            log.warning("IFS refused a URL as too long (414) for a filter of %d characters; filters are kept"
                        " under %d characters from now on (more requests per poll)", filter_length, limit)
            self.filter_chars = limit
        return self.filter_chars < filter_length

    async def metadata(self, projection: str) -> bytes:
        """The projection's `$metadata` document (EDMX), as sent. 404 (unknown projection) raises."""
        url = f"{self.service_url(projection)}/$metadata"
        return await self._send("data", "GET", url, raw=True)

    async def ensure_token(self) -> None:
        """Fetch a fresh token now (for connection checks).

        Raises AuthError naming the OAuth error when IAM refuses the credentials, and
        RetriableError when IAM could not be reached within the retry policy.
        """
        async with self._token_lock:
            self._token = None
            try:
                await self._fetch_token()
            except (AuthError, RetriableError):
                self.stats["failures"] += 1
                raise

    def token_state(self) -> dict[str, Any]:
        """What a status page may show about the token; never the token itself."""
        token = self._token
        now = self._clock.monotonic()
        valid = token is not None and now < token.expires_at
        return {
            "valid": valid,
            "expires_in": max(0.0, token.expires_at - now) if token is not None else None,
            "renewals": self.stats["token_renewals"],
            "last_error": self._token_error,
        }

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> IfsClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # ---- URLs ------------------------------------------------------------------------------

    def _accept(self, no_metadata: bool) -> str:
        """The Accept header: JSON (IFS answers `odata.metadata=minimal`), or `odata.metadata=none`, with which an
        OData 4.0 server leaves out control information (`@odata.context`, each row's `@odata.etag`) but keeps
        `@odata.nextLink`. Whether a tenant honours it is found out at run time (pollers.tenant)."""
        parts = ["application/json"] + (["odata.metadata=none"] if no_metadata else [])
        return ";".join(parts + (["IEEE754Compatible=true"] if self.config.ieee754_compatible else []))

    def _options(
        self,
        *,
        filter: str | None = None,
        select: Sequence[str] | None = None,
        orderby: Sequence[str] = (),
    ) -> dict[str, str]:
        params: dict[str, str] = {}
        if filter:
            params["$filter"] = filter
        if select:
            params["$select"] = ",".join(select)
        if orderby:
            params["$orderby"] = ",".join(orderby)
        return params

    def _key_url(self, projection: str, entity_set: str, keys: Mapping[str, str | int]) -> str:
        return f"{self.entity_url(projection, entity_set)}({quote(key_predicate(keys), safe=_KEY_SAFE)})"

    def _next_url(self, current: str, next_link: Any) -> str:
        if not isinstance(next_link, str):
            raise FatalRequestError("IFS sent a @odata.nextLink that is not a string", status=200)
        url = urljoin(current, next_link)
        # The bearer goes with the next link, so it must stay on the tenant's own origin.
        if urlsplit(url)[:2] != self._origin:
            raise FatalRequestError("IFS sent a @odata.nextLink to another host; not followed", status=200)
        return url

    @staticmethod
    def _remember(url: str, seen: set[str]) -> None:
        if url in seen:
            raise FatalRequestError(
                f"paging loop: IFS repeated the next link {urlsplit(url).path}", status=200
            )
        seen.add(url)

    @staticmethod
    def _rows(body: Any, url: str) -> list[dict[str, Any]]:
        rows = body.get("value") if isinstance(body, dict) else None
        if not isinstance(rows, list):
            raise FatalRequestError(f"IFS GET {urlsplit(url).path}: response has no 'value' list", status=200)
        if not set(map(type, rows)) <= {dict}:  # an entity is a JSON object; nothing else can be read as one
            at, item = next((i, r) for i, r in enumerate(rows) if type(r) is not dict)
            raise FatalRequestError(f"IFS GET {urlsplit(url).path}: 'value' holds {type(item).__name__} at"
                                    f" index {at} where an entity (a JSON object) belongs", status=200)
        return rows

    # ---- token -----------------------------------------------------------------------------

    async def _bearer(self) -> str:
        token = self._token
        if token is not None and self._clock.monotonic() < token.refresh_at:
            return token.value
        async with self._token_lock:
            # Whoever held the lock before us may already have renewed it.
            token = self._token
            if token is not None and self._clock.monotonic() < token.refresh_at:
                return token.value
            return await self._fetch_token()

    def _drop_token(self, value: str) -> None:
        if self._token is not None and self._token.value == value:
            self._token = None

    async def _fetch_token(self) -> str:
        """Call with the token lock held."""
        form = {
            "grant_type": "client_credentials",
            "client_id": self.config.client_id,
            "client_secret": self.config.secret.reveal(),
            "scope": self.config.scope,
        }
        started = self._clock.monotonic()
        try:
            body = await self._send("token", "POST", self._token_url, form=form)
        except (AuthError, RetriableError) as exc:
            self._token_error = str(exc)
            raise
        value = body.get("access_token") if isinstance(body, dict) else None
        try:
            lifetime = float(body.get("expires_in", 0))
        except (TypeError, ValueError):
            lifetime = 0.0
        if not isinstance(value, str) or not value or lifetime <= 0:
            self._token_error = "token response without access_token/expires_in"
            raise AuthError("IAM answered the token request without a usable access_token/expires_in")
        # A margin larger than half the lifetime would renew on every request.
        margin = min(self.config.token_margin, lifetime / 2)
        self._token = _Token(value, started + lifetime - margin, started + lifetime)
        self._token_error = None
        self.stats["token_renewals"] += 1
        log.debug("IFS token obtained for client %s, valid %.0f s", self.config.client_id, lifetime)
        return value

    def _token_refused(self, response: _Answer) -> AuthError:
        try:
            body = json.loads(response.content)
            error = str(body.get("error") or "")
            description = str(body.get("error_description") or "")
        except (ValueError, AttributeError):
            error, description = "", ""
        reason = ": ".join(p for p in (error, description) if p) or "no OAuth error given"
        secret = self.config.secret.reveal()
        if secret and secret in reason:
            reason = reason.replace(secret, "**********")
        if response.status_code == 404:  # no such realm, or no IFS IAM at this address at all
            return AuthError(
                f"no IFS IAM token endpoint for realm {self.config.realm!r} at {self._base} "
                f"(HTTP 404): {reason[:_ERROR_TEXT_LIMIT]}",
                status=404,
            )
        return AuthError(
            f"IAM refused client {self.config.client_id!r} in realm {self.config.realm!r} "
            f"(HTTP {response.status_code}): {reason[:_ERROR_TEXT_LIMIT]}",
            status=response.status_code,
        )

    # ---- the one request path --------------------------------------------------------------

    async def _send(
        self,
        kind: _Kind,
        method: str,
        url: str,
        *,
        form: Mapping[str, str] | None = None,
        missing_ok: bool = False,
        raw: bool = False,
        accept: str | None = None,
    ) -> Any:
        """Send one logical request; return its parsed JSON (None for a tolerated 404).

        The single place where statuses become intents, Retry-After is honoured, the budget is
        taken and backoff happens.
        """
        policy = self.config.retry
        path = urlsplit(url).path
        started = self._clock.monotonic()
        attempt = 0
        reauthenticated = False
        try:
            while True:
                attempt += 1
                token = ""
                if kind == "data":
                    async with self._slots:
                        await self._take_slot()
                        # The bearer is read after any budget wait, so it cannot expire in the queue.
                        token = await self._bearer()
                        headers = {"Authorization": f"Bearer {token}"}
                        if accept is not None:
                            headers["Accept"] = accept
                        response, failure = await self._exchange(method, url, headers)
                else:
                    # Token requests skip the semaphore: requests holding it may be waiting for the token.
                    response, failure = await self._exchange(method, url, {}, form)

                if response is not None:
                    status = response.status_code
                    if 200 <= status < 300:
                        if raw:
                            return response.content
                        try:
                            return orjson.loads(response.content)
                        except ValueError:
                            if kind == "token":  # a web page, not an IAM: asking again will not help
                                raise FatalRequestError(
                                    f"{method} {path} answered {status} with something that is not JSON"
                                    f" ({response.headers.get('Content-Type', 'no content type')})",
                                    status=status,
                                ) from None
                            failure = _Attempt("malformed JSON in a 200 answer", status=status)
                    elif status == 404 and missing_ok and not _unknown_service(response.content):
                        return None
                    elif status == 401 and kind == "data":
                        self._drop_token(token)
                        if reauthenticated:
                            self._token_error = "IFS answered 401 to a freshly issued token"
                            raise AuthError(f"IFS refused a freshly issued token (401) for {method} {path}")
                        reauthenticated = True
                        self.stats["retries"] += 1
                        log.info("IFS answered 401 for %s %s; renewing the token once", method, path)
                        attempt -= 1  # the renewal is not a failure of the request itself
                        continue
                    elif kind == "token" and 400 <= status < 500 and status != 429:
                        raise self._token_refused(response)
                    elif status in _RETRY_AFTER_STATUSES or (status >= 500 and status != 501):
                        # 501 is ODP_NOT_IMPLEMENTED: asking again will not implement it
                        code, _ = _odata_error(response.content)
                        retry_after = (
                            retry_after_seconds(response.headers.get("Retry-After"), self._clock.time())
                            if status in _RETRY_AFTER_STATUSES
                            else None
                        )
                        if status == 429:
                            self.stats["throttled"] += 1
                        failure = _Attempt(
                            f"HTTP {status}", status=status, code=code, retry_after=retry_after
                        )
                    else:
                        code, message = _odata_error(response.content)
                        answer = f"{status} {code}" if code else str(status)
                        raise FatalRequestError(
                            f"IFS {method} {path} answered {answer}: {message}", status=status, code=code
                        )

                delay = policy.delay(attempt, retry_after=failure.retry_after, rng=self._rng)
                if failure.status in _RETRY_AFTER_STATUSES:
                    # Everyone sharing this client backs off, not only this request.
                    self._limiter.penalise(delay)
                elapsed = self._clock.monotonic() - started
                if policy.gives_up(attempt, elapsed, delay):
                    raise RetriableError(
                        f"IFS {method} {path}: gave up after {attempt} attempt(s) in {elapsed:.1f} s: "
                        f"{failure.reason}{' ' + failure.code if failure.code else ''}",
                        status=failure.status,
                        code=failure.code,
                        retry_after=failure.retry_after,
                    )
                log.info(
                    "IFS %s %s failed (%s%s); attempt %d, retrying in %.2f s",
                    method,
                    path,
                    failure.reason,
                    f" {failure.code}" if failure.code else "",
                    attempt,
                    delay,
                )
                self.stats["retries"] += 1
                await self._sleep(delay)
        except (AuthError, RetriableError, FatalRequestError):
            if kind == "data":  # a token failure is counted once, by the request that needed it
                self.stats["failures"] += 1
            raise

    async def _exchange(
        self, method: str, url: str, headers: dict[str, str], form: Mapping[str, str] | None = None
    ) -> tuple[_Answer | None, _Attempt]:
        """One HTTP round trip: the response, or None and why the transport failed."""
        self.stats["requests"] += 1
        account = _ACCOUNT.get()  # (this cycle's own count: a request that got no answer counts too)
        if account is not None:
            account.requests += 1
        try:
            # Streamed into a buffer of our own: an httpx Response keeps its body in a reference cycle
            # (response <-> stream), so a buffered 2.5 MB page would wait for the cyclic collector.
            async with self._http.stream(method, url, headers=headers, data=form) as response:
                chunks = [chunk async for chunk in response.aiter_bytes()]  # decoded (gzip ...)
                body = b"".join(chunks)
                self.stats["bytes"] += len(body)
                if account is not None:
                    account.bytes += len(body)
                return _Answer(response.status_code, response.headers, body), _NO_FAILURE
        except httpx.TimeoutException as exc:
            return None, _Attempt(f"timeout ({type(exc).__name__})")
        except httpx.RequestError as exc:
            return None, _Attempt(f"connection failed ({type(exc).__name__}{_transport_cause(exc)})")

    async def _take_slot(self) -> None:
        while (wait := self._limiter.try_acquire()) > 0:
            await self._sleep(wait)
