"""Bot Connector stand-in: a local Teams serviceUrl that enforces Teams' limits and injects faults."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import uuid
from bisect import bisect_right
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Literal

from aiohttp import web

from core.clock import Clock, SystemClock

_log = logging.getLogger(__name__)

ADAPTIVE_CARD = "application/vnd.microsoft.card.adaptive"
THREAD_MARK = ";messageid="

# Teams' documented send/create limits per bot per thread, as (requests, seconds) windows.
TEAMS_LIMITS_PER_THREAD: tuple[tuple[int, float], ...] = ((7, 1.0), (8, 2.0), (60, 30.0), (1800, 3600.0))
TEAMS_APP_PER_SECOND = 50
# Teams measures a message as UTF-16 text: 40 KB is about 20 KB of ASCII JSON.
TEAMS_MAX_BYTES = 40 * 1024

STAND_IN_TENANT = "5e1c0a7e-0000-4000-8000-00000000c0de"

DEFAULT_MEMBERS: tuple[Mapping[str, Any], ...] = (
    {
        "id": "29:1aDaApprover0StandIn",
        "name": "Ada Approver",
        "aadObjectId": "a0a0a0a0-0000-4000-8000-00000000000a",
        "givenName": "Ada",
        "surname": "Approver",
        "email": "ada.approver@contoso.example",
        "userPrincipalName": "ada.approver@contoso.example",
        "tenantId": STAND_IN_TENANT,
        "userRole": "user",
    },
    {
        "id": "29:1bOrisBookkeeper0StandIn",
        "name": "Boris Bookkeeper",
        "aadObjectId": "b0b0b0b0-0000-4000-8000-00000000000b",
        "givenName": "Boris",
        "surname": "Bookkeeper",
        "email": "boris.bookkeeper@contoso.example",
        "userPrincipalName": "boris.bookkeeper@contoso.example",
        "tenantId": STAND_IN_TENANT,
        "userRole": "user",
    },
)

_DEFAULT_CODES = {
    400: "BadArgument",
    401: "Unauthorized",
    403: "Forbidden",
    404: "ConversationNotFound",
    412: "PreconditionFailed",
    413: "MessageSizeTooBig",
    429: "Throttled",
    500: "InternalServerError",
    502: "BadGateway",
    503: "ServiceUnavailable",
    504: "GatewayTimeout",
}

_MESSAGES = {
    "Throttled": "Too many requests; retry after the Retry-After interval.",
    "BotNotInConversationRoster": "The bot is not part of the conversation roster.",
    "ConversationNotFound": "Conversation not found.",
    "ActivityNotFoundInConversation": "Activity not found in conversation.",
    "BotDisabledByAdmin": "The bot is disabled by the tenant admin.",
    "ConversationBlockedByUser": "The user blocked the conversation with the bot.",
    "MessageSizeTooBig": "Message size too large.",
    "MemberNotFoundInConversation": "Member not found in conversation.",
}

Op = Literal["create", "send", "reply", "update", "delete"]
_LIMITED_OPS = frozenset({"create", "send", "reply", "update"})


@dataclass(frozen=True)
class Accepted:
    """One request the stand-in accepted and applied to a channel."""

    op: Op
    channel_id: str
    conversation_id: str
    activity_id: str
    root_id: str
    activity: dict[str, Any]
    at: float


@dataclass(frozen=True)
class Rejected:
    """One request the stand-in answered with a non-2xx status."""

    op: str
    status: int
    code: str
    conversation_id: str | None
    at: float


@dataclass
class _Fault:
    kind: Literal["status", "hang", "drop"]
    remaining: int
    channel_id: str | None
    status: int = 0
    code: str | None = None
    retry_after: float | None = None


@dataclass
class _Live:
    channel_id: str
    root_id: str
    activity: dict[str, Any]


def bare_channel(conversation_id: str) -> str:
    """The channel part of a conversation id (`19:…@thread.tacv2;messageid=N` -> `19:…@thread.tacv2`)."""
    return conversation_id.split(THREAD_MARK, 1)[0]


def thread_root(conversation_id: str) -> str | None:
    """The root message id of a thread conversation id, None for a bare channel id."""
    _, mark, root = conversation_id.partition(THREAD_MARK)
    return root if mark else None


def activity_size(activity: Any) -> int:
    """Bytes of the activity as Teams counts them: compact JSON text in UTF-16 code units x 2."""
    text = json.dumps(activity, ensure_ascii=False, separators=(",", ":"))
    return len(text.encode("utf-16-le"))


def card_contents(activity: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The Adaptive Card payloads attached to an activity."""
    attachments = activity.get("attachments") or []
    return [
        a["content"]
        for a in attachments
        if isinstance(a, Mapping)
        and a.get("contentType") == ADAPTIVE_CARD
        and isinstance(a.get("content"), dict)
    ]


def first_text(node: Any) -> str | None:
    """The text of the first TextBlock in a card, depth first."""
    if isinstance(node, Mapping):
        if node.get("type") == "TextBlock" and isinstance(node.get("text"), str):
            return node["text"]
        children: Iterable[Any] = node.values()
    elif isinstance(node, list):
        children = node
    else:
        return None
    for child in children:
        found = first_text(child)
        if found is not None:
            return found
    return None


class _Windows:
    """Times of accepted requests per key, checked against (count, seconds) sliding windows."""

    def __init__(self, limits: Sequence[tuple[int, float]]) -> None:
        self._limits = tuple((int(n), float(s)) for n, s in limits)
        self._span = max((s for _, s in self._limits), default=0.0)
        self._times: dict[str, list[float]] = {}

    def wait(self, key: str, now: float) -> float:
        """Seconds until one more request under `key` fits every window; 0.0 if it fits now."""
        times = self._times.get(key)
        if not times:
            return 0.0
        del times[: bisect_right(times, now - self._span)]
        wait = 0.0
        for limit, seconds in self._limits:
            inside = len(times) - bisect_right(times, now - seconds)
            if inside >= limit:
                # A slot frees when the oldest time that keeps the window full slides out of it.
                wait = max(wait, times[len(times) - limit] + seconds - now)
        return wait

    def record(self, key: str, now: float) -> None:
        self._times.setdefault(key, []).append(now)


class _Reply(Exception):
    """An error answer, raised from deep inside a handler."""

    def __init__(self, status: int, code: str, retry_after: float | None = None) -> None:
        super().__init__(code)
        self.status = status
        self.code = code
        self.retry_after = retry_after


class ConnectorStandIn:
    """A Bot Connector (Teams `serviceUrl`) on 127.0.0.1 that records what a bot sends.

    Threads are the bare channel id: a conversation id `<channel>;messageid=<root>` addresses a reply in
    thread `<root>`; a bare channel id addresses a new root post (Teams threads by conversation id, so
    the activity id in `POST …/activities/{activityId}` does not change where a message lands).
    """

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        enforce_limits: bool = True,
        limits_per_thread: Sequence[tuple[int, float]] = TEAMS_LIMITS_PER_THREAD,
        app_per_second: int = TEAMS_APP_PER_SECOND,
        max_bytes: int = TEAMS_MAX_BYTES,
        print_cards: bool = False,
        members: Sequence[Mapping[str, Any]] = DEFAULT_MEMBERS,
    ) -> None:
        self._clock: Clock = clock or SystemClock()
        self.enforce_limits = enforce_limits
        self.max_bytes = max_bytes
        self.print_cards = print_cards
        self.members = [dict(m) for m in members]
        self._threads = _Windows(limits_per_thread)
        self._app = _Windows([(app_per_second, 1.0)])

        self.accepted: list[Accepted] = []
        self.rejected: list[Rejected] = []
        self.throttled = 0
        self.dropped = 0
        self.hanging = 0

        self._live: dict[str, _Live] = {}
        self._faults: list[_Fault] = []
        self._removed: set[str] = set()
        self._last_id = 0
        self._changed = asyncio.Condition()
        self._stopping = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._service_url: str | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    @property
    def service_url(self) -> str:
        if self._service_url is None:
            raise RuntimeError("the connector stand-in is not started")
        return self._service_url

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on host:port (0 picks a free port) and return the service URL, with a trailing slash."""
        self._stopping.clear()
        # Bodies are checked against Teams' 40 KB rule by the handlers, so aiohttp's own cap sits well above it.
        app = web.Application(middlewares=[_json_errors], client_max_size=16 * 1024 * 1024)
        self._add_routes(app.router)
        runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        self._runner = runner
        bound_host, bound_port = runner.addresses[0][:2]
        self._service_url = f"http://{bound_host}:{bound_port}/"
        _log.info("connector stand-in listening on %s", self._service_url)
        return self._service_url

    async def stop(self) -> None:
        """Stop listening; requests held open by `hang` are cut off without an answer."""
        self._stopping.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> ConnectorStandIn:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- faults ----------------------------------------------------------------------------------

    def inject(
        self,
        status: int,
        code: str | None = None,
        count: int = 1,
        conversation: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        """Answer the next `count` matching requests with `status` and error `code`.

        `conversation` limits the fault to one channel (any of its threads) or one team id;
        `retry_after` adds a Retry-After header (whole seconds, rounded up).
        """
        self._faults.append(
            _Fault(
                "status",
                count,
                _channel_or_none(conversation),
                status,
                code or _default_code(status),
                retry_after,
            )
        )

    def hang(self, count: int = 1, conversation: str | None = None) -> None:
        """Hold the next `count` matching requests open, unanswered, until the stand-in stops."""
        self._faults.append(_Fault("hang", count, _channel_or_none(conversation)))

    def drop(self, count: int = 1, conversation: str | None = None) -> None:
        """Close the connection of the next `count` matching requests without any response."""
        self._faults.append(_Fault("drop", count, _channel_or_none(conversation)))

    def clear_faults(self) -> None:
        self._faults.clear()

    def remove_bot(self, conversation: str) -> None:
        """From now on every request to this channel gets 403 BotNotInConversationRoster (an uninstall)."""
        self._removed.add(bare_channel(conversation))

    def restore_bot(self, conversation: str) -> None:
        self._removed.discard(bare_channel(conversation))

    # -- what the channels show --------------------------------------------------------------------

    def posts(self, channel_id: str | None = None) -> list[Accepted]:
        """New root posts (create conversation, or send to a bare channel id)."""
        return self._of(("create", "send"), channel_id)

    def replies(self, channel_id: str | None = None) -> list[Accepted]:
        return self._of(("reply",), channel_id)

    def updates(self, channel_id: str | None = None) -> list[Accepted]:
        return self._of(("update",), channel_id)

    def deletes(self, channel_id: str | None = None) -> list[Accepted]:
        return self._of(("delete",), channel_id)

    def cards(self, channel_id: str | None = None) -> dict[str, dict[str, Any]]:
        """Root post id -> the Adaptive Card it shows now (after updates, without deleted posts)."""
        shown: dict[str, dict[str, Any]] = {}
        for activity_id, live in self._live.items():
            if activity_id != live.root_id or (channel_id is not None and live.channel_id != channel_id):
                continue
            contents = card_contents(live.activity)
            if contents:
                shown[activity_id] = contents[0]
        return shown

    def activity(self, activity_id: str) -> dict[str, Any] | None:
        """The latest version of an activity (post or reply), None if unknown or deleted."""
        live = self._live.get(activity_id)
        return live.activity if live else None

    # A guard for tests that would otherwise wait forever, so it stays a plain argument.
    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """Return once `predicate()` holds; it is re-checked after every request the stand-in answers."""
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(predicate), timeout)

    def _of(self, ops: tuple[str, ...], channel_id: str | None) -> list[Accepted]:
        return [
            a for a in self.accepted if a.op in ops and (channel_id is None or a.channel_id == channel_id)
        ]

    # -- HTTP ------------------------------------------------------------------------------------

    def _add_routes(self, router: web.UrlDispatcher) -> None:
        conv = "/v3/conversations/{conversation}"
        router.add_post("/v3/conversations", self._create)
        router.add_post(conv + "/activities", self._send)
        router.add_post(conv + "/activities/{activity}", self._send)
        router.add_put(conv + "/activities/{activity}", self._update)
        router.add_delete(conv + "/activities/{activity}", self._delete)
        router.add_get(conv + "/members", self._members)
        router.add_get(conv + "/members/{member}", self._member)
        router.add_get(conv + "/pagedmembers", self._paged_members)
        router.add_get("/v3/teams/{team}", self._team)
        router.add_get("/v3/teams/{team}/conversations", self._team_channels)
        router.add_post("/_connector/faults", self._admin_fault)
        router.add_delete("/_connector/faults", self._admin_clear_faults)
        router.add_post("/_connector/removed", self._admin_remove_bot)

    async def _create(self, request: web.Request) -> web.StreamResponse:
        # The channel is named in the body, and faults aimed at a channel must hit its new threads too.
        try:
            params: dict[str, Any] | None = await _json_body(request)
        except _Reply:
            params = None
        named = _get(params, "channelData", "channel", "id")
        target = bare_channel(named) if isinstance(named, str) and named else None

        async def apply() -> web.Response:
            if params is None or target is None or not isinstance(params.get("activity"), dict):
                raise _Reply(400, "BadArgument")
            channel_id, activity = target, params["activity"]
            self._check_channel(channel_id)
            self._check_size(activity)
            self._admit(channel_id)
            root_id = self._new_id()
            conversation_id = f"{channel_id}{THREAD_MARK}{root_id}"
            await self._accept("create", channel_id, conversation_id, root_id, root_id, activity)
            body = {"id": conversation_id, "activityId": root_id, "serviceUrl": self.service_url}
            return web.json_response(body, status=201)

        return await self._handle(request, "create", target, apply)

    async def _send(self, request: web.Request) -> web.StreamResponse:
        conversation_id = request.match_info["conversation"]
        channel_id = bare_channel(conversation_id)
        root = thread_root(conversation_id)
        op: Op = "send" if root is None else "reply"

        async def apply() -> web.Response:
            activity = await _json_body(request)
            self._check_channel(channel_id)
            self._check_size(activity)
            self._admit(channel_id)
            activity_id = self._new_id()
            await self._accept(op, channel_id, conversation_id, activity_id, root or activity_id, activity)
            return web.json_response({"id": activity_id}, status=201)

        return await self._handle(request, op, conversation_id, apply)

    async def _update(self, request: web.Request) -> web.StreamResponse:
        conversation_id = request.match_info["conversation"]
        activity_id = request.match_info["activity"]
        channel_id = bare_channel(conversation_id)

        async def apply() -> web.Response:
            activity = await _json_body(request)
            self._check_channel(channel_id)
            self._check_size(activity)
            live = self._find(channel_id, activity_id)
            self._admit(channel_id)
            await self._accept("update", channel_id, conversation_id, activity_id, live.root_id, activity)
            return web.json_response({"id": activity_id}, status=200)

        return await self._handle(request, "update", conversation_id, apply)

    async def _delete(self, request: web.Request) -> web.StreamResponse:
        conversation_id = request.match_info["conversation"]
        activity_id = request.match_info["activity"]
        channel_id = bare_channel(conversation_id)

        async def apply() -> web.Response:
            self._check_channel(channel_id)
            live = self._find(channel_id, activity_id)
            await self._accept("delete", channel_id, conversation_id, activity_id, live.root_id, {})
            return web.Response(status=200)

        return await self._handle(request, "delete", conversation_id, apply)

    async def _members(self, request: web.Request) -> web.StreamResponse:
        conversation_id = request.match_info["conversation"]

        async def apply() -> web.Response:
            self._check_channel(bare_channel(conversation_id))
            return web.json_response(self.members)

        return await self._handle(request, "members", conversation_id, apply)

    async def _member(self, request: web.Request) -> web.StreamResponse:
        conversation_id = request.match_info["conversation"]
        member_id = request.match_info["member"]

        async def apply() -> web.Response:
            self._check_channel(bare_channel(conversation_id))
            for member in self.members:
                if member_id in (member.get("id"), member.get("aadObjectId")):
                    return web.json_response(member)
            raise _Reply(404, "MemberNotFoundInConversation")

        return await self._handle(request, "member", conversation_id, apply)

    async def _paged_members(self, request: web.Request) -> web.StreamResponse:
        conversation_id = request.match_info["conversation"]

        async def apply() -> web.Response:
            self._check_channel(bare_channel(conversation_id))
            try:
                size = max(1, int(request.query.get("pageSize", "200")))
                start = int(request.query.get("continuationToken", "0"))
            except ValueError:
                raise _Reply(400, "BadArgument") from None
            page: dict[str, Any] = {"members": self.members[start : start + size]}
            if start + size < len(self.members):
                page["continuationToken"] = str(start + size)
            return web.json_response(page)

        return await self._handle(request, "pagedmembers", conversation_id, apply)

    async def _team(self, request: web.Request) -> web.StreamResponse:
        team_id = request.match_info["team"]

        async def apply() -> web.Response:
            self._check_channel(team_id)
            details = {
                "id": team_id,
                "name": "Finance approvals",
                "aadGroupId": str(uuid.uuid5(uuid.NAMESPACE_URL, "team:" + team_id)),
                "channelCount": 1,
                "memberCount": len(self.members),
                "type": "standard",
            }
            return web.json_response(details)

        return await self._handle(request, "team", team_id, apply)

    async def _team_channels(self, request: web.Request) -> web.StreamResponse:
        team_id = request.match_info["team"]

        async def apply() -> web.Response:
            self._check_channel(team_id)
            # The General channel shares the team id and has no name of its own.
            return web.json_response({"conversations": [{"id": team_id, "name": None}]})

        return await self._handle(request, "channels", team_id, apply)

    async def _handle(
        self,
        request: web.Request,
        op: str,
        conversation_id: str | None,
        apply: Callable[[], Awaitable[web.Response]],
    ) -> web.StreamResponse:
        """Run one bot request through auth, injected faults and `apply`, recording any refusal."""
        try:
            _check_auth(request)
            fault = self._take_fault(conversation_id)
            if fault is not None:
                if fault.kind == "drop":
                    return await self._cut(request, dropped=True)
                if fault.kind == "hang":
                    return await self._hold(request)
                raise _Reply(fault.status, fault.code or _default_code(fault.status), fault.retry_after)
            return await apply()
        except _Reply as reply:
            return await self._refuse(op, conversation_id, reply)

    async def _hold(self, request: web.Request) -> web.StreamResponse:
        self.hanging += 1
        await self._notify()
        try:
            await self._stopping.wait()
        finally:
            self.hanging -= 1
        return await self._cut(request, dropped=False)

    async def _cut(self, request: web.Request, *, dropped: bool) -> web.StreamResponse:
        if dropped:
            self.dropped += 1
            await self._notify()
        if request.transport is not None:
            request.transport.close()
        # Nothing reaches the client: its connection is already closed.
        return web.Response(status=500)

    async def _refuse(self, op: str, conversation_id: str | None, reply: _Reply) -> web.Response:
        if reply.status == 429:
            self.throttled += 1
        self.rejected.append(Rejected(op, reply.status, reply.code, conversation_id, self._clock.monotonic()))
        headers = {}
        if reply.retry_after is not None:
            headers["Retry-After"] = str(max(1, math.ceil(reply.retry_after)))
        message = _MESSAGES.get(reply.code, HTTPStatus(reply.status).phrase)
        body = {"error": {"code": reply.code, "message": message}}
        await self._notify()
        return web.json_response(body, status=reply.status, headers=headers)

    def _take_fault(self, conversation_id: str | None) -> _Fault | None:
        channel_id = bare_channel(conversation_id) if conversation_id else None
        for fault in self._faults:
            if fault.channel_id is None or fault.channel_id == channel_id:
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self._faults.remove(fault)
                return fault
        return None

    def _check_channel(self, channel_id: str) -> None:
        if channel_id in self._removed:
            raise _Reply(403, "BotNotInConversationRoster")

    def _check_size(self, activity: Any) -> None:
        if activity_size(activity) > self.max_bytes:
            raise _Reply(413, "MessageSizeTooBig")

    def _find(self, channel_id: str, activity_id: str) -> _Live:
        live = self._live.get(activity_id)
        if live is None or live.channel_id != channel_id:
            raise _Reply(404, "ActivityNotFoundInConversation")
        return live

    def _admit(self, channel_id: str) -> None:
        """Take a slot in the thread's and the app's windows, or refuse with 429 and Retry-After."""
        if not self.enforce_limits:
            return
        now = self._clock.monotonic()
        wait = max(self._threads.wait(channel_id, now), self._app.wait("app", now))
        if wait > 0:
            raise _Reply(429, "Throttled", retry_after=wait)
        self._threads.record(channel_id, now)
        self._app.record("app", now)

    def _new_id(self) -> str:
        # Teams message ids are epoch milliseconds; keep them strictly increasing under a frozen clock.
        self._last_id = max(self._last_id + 1, int(self._clock.time() * 1000))
        return str(self._last_id)

    async def _accept(
        self,
        op: Op,
        channel_id: str,
        conversation_id: str,
        activity_id: str,
        root_id: str,
        activity: dict[str, Any],
    ) -> None:
        if op == "delete":
            self._live.pop(activity_id, None)
        else:
            self._live[activity_id] = _Live(channel_id, root_id, activity)
        record = Accepted(
            op, channel_id, conversation_id, activity_id, root_id, activity, self._clock.monotonic()
        )
        self.accepted.append(record)
        if self.print_cards:
            print(_card_line(record), flush=True)
        await self._notify()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # -- admin HTTP ------------------------------------------------------------------------------

    async def _admin_fault(self, request: web.Request) -> web.Response:
        """`POST /_connector/faults` with {"kind": "status"|"hang"|"drop", "status", "code", "count",
        "conversation", "retry_after"}; kind defaults to "status"."""
        try:
            spec = await _json_body(request)
            kind = spec.get("kind", "status")
            count = int(spec.get("count", 1))
            conversation = spec.get("conversation")
            if kind == "status":
                retry_after = spec.get("retry_after")
                self.inject(
                    int(spec["status"]),
                    spec.get("code"),
                    count,
                    conversation,
                    None if retry_after is None else float(retry_after),
                )
            elif kind == "hang":
                self.hang(count, conversation)
            elif kind == "drop":
                self.drop(count, conversation)
            else:
                raise ValueError(kind)
        except (_Reply, KeyError, TypeError, ValueError):
            return _error(400, "BadArgument")
        return web.Response(status=204)

    async def _admin_clear_faults(self, request: web.Request) -> web.Response:
        self.clear_faults()
        return web.Response(status=204)

    async def _admin_remove_bot(self, request: web.Request) -> web.Response:
        """`POST /_connector/removed` with {"conversation": "<channel id>"}."""
        try:
            conversation = (await _json_body(request))["conversation"]
            self.remove_bot(str(conversation))
        except (_Reply, KeyError):
            return _error(400, "BadArgument")
        return web.Response(status=204)


def _channel_or_none(conversation: str | None) -> str | None:
    return bare_channel(conversation) if conversation else None


def _default_code(status: int) -> str:
    if status in _DEFAULT_CODES:
        return _DEFAULT_CODES[status]
    try:
        return HTTPStatus(status).phrase.replace(" ", "")
    except ValueError:
        return "Error"


def _error(status: int, code: str) -> web.Response:
    message = _MESSAGES.get(code) or _default_message(status)
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


def _default_message(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _check_auth(request: web.Request) -> None:
    # Auth is off in local runs (no header); a token, when sent, is taken on trust.
    header = request.headers.get("Authorization")
    if header is not None and not header.startswith("Bearer "):
        raise _Reply(401, "Unauthorized")


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.text())
    except ValueError:
        raise _Reply(400, "BadArgument") from None
    if not isinstance(body, dict):
        raise _Reply(400, "BadArgument")
    return body


def _get(data: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(data, Mapping):
            return None
        data = data.get(key)
    return data


def _card_line(record: Accepted) -> str:
    contents = card_contents(record.activity)
    # a card's fallback text is its one-line summary; else its first text block
    text = (contents[0].get("fallbackText") or first_text(contents[0])) if contents else record.activity.get("text")
    summary = " ".join(str(text).split()) if text else ""
    return f"{record.op:<6} {record.channel_id} {record.activity_id} {summary}".rstrip()


@web.middleware
async def _json_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Unknown routes and methods answer in the connector's error shape."""
    try:
        return await handler(request)
    except web.HTTPNotFound:
        return _error(404, "NotFound")
    except web.HTTPMethodNotAllowed:
        return _error(405, "MethodNotAllowed")


async def _serve(host: str, port: int, enforce_limits: bool) -> None:
    standin = ConnectorStandIn(enforce_limits=enforce_limits, print_cards=True)
    print(await standin.start(host, port), flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await standin.stop()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m simulator.connector",
        description="Run the Bot Connector stand-in: prints its service URL, then one line per card received.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3979)
    parser.add_argument("--no-limits", action="store_true", help="accept everything; no 429s")
    args = parser.parse_args(argv)
    try:
        asyncio.run(_serve(args.host, args.port, not args.no_limits))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
