"""Everything that touches botbuilder: adapter factory, cached credentials, proactive sender, activity handler.

Keeping the SDK inside this module means a move to its successor touches one file.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

from botbuilder.core import CardFactory, InvokeResponse, MessageFactory, TurnContext
from botbuilder.core.teams import TeamsActivityHandler, TeamsInfo
from botbuilder.integration.aiohttp import CloudAdapter, ConfigurationBotFrameworkAuthentication
from botbuilder.integration.aiohttp.configuration_service_client_credential_factory import (
    ConfigurationServiceClientCredentialFactory,
)
from botbuilder.schema import (
    Activity,
    ActivityTypes,
    AdaptiveCardInvokeResponse,
    AdaptiveCardInvokeValue,
    ConversationReference,
    ErrorResponseException,
)
from botbuilder.schema.teams import ChannelInfo, TeamInfo
from botframework.connector.auth import (
    AuthenticationConstants,
    ChannelValidation,
    JwtTokenExtractor,
    ServiceClientCredentialsFactory,
)
from msrest.exceptions import ClientRequestError
from msrest.universal_http.requests import ClientRetryPolicy
from requests import RequestException

from bot.authz import Actor
from bot.claims import CardActions
from bot.commands import Commands, Reply
from core.clock import Clock, SystemClock
from core.domain import ChannelRef, PostedCard
from core.errors import SendError
from core.retry import RetryPolicy
from store.db import Database
from store.unit import Store

log = logging.getLogger(__name__)

ADAPTIVE = "application/vnd.microsoft.card.adaptive"
REPLY_RETRY = RetryPolicy(base=0.5, cap=5.0, max_attempts=3, max_elapsed=15.0)


@dataclass(frozen=True)
class BotConfig:
    """The attribute names ConfigurationBotFrameworkAuthentication reads."""

    APP_ID: str = ""
    APP_PASSWORD: str = ""
    APP_TYPE: str = "SingleTenant"
    APP_TENANTID: str = ""
    # Deliberately not TO_BOT_FROM_CHANNEL_OPENID_METADATA_URL: any TO_BOT_FROM_*/TO_CHANNEL_FROM_* attribute
    # switches botbuilder 4.17.1 to its parameterized authentication, which then needs every endpoint set.
    OPENID_METADATA_URL: str | None = None

    def __repr__(self) -> str:  # the password never reaches a log
        return f"BotConfig(APP_ID={self.APP_ID!r}, APP_TYPE={self.APP_TYPE!r}, APP_TENANTID={self.APP_TENANTID!r})"

    @property
    def auth_disabled(self) -> bool:
        return not self.APP_ID


class CachedCredentialsFactory(ServiceClientCredentialsFactory):
    """One credentials object per (app id, scope), so its MSAL token cache is reused across proactive calls.

    botbuilder 4.17.1 otherwise builds new credentials, and fetches a new token with a blocking call,
    for every continue_conversation.
    """

    def __init__(self, inner: ServiceClientCredentialsFactory) -> None:
        self._inner = inner
        self._cache: dict[tuple[str, str], Any] = {}
        self._fetches: dict[int, asyncio.Future[str]] = {}  # token fetches in flight, by credentials

    async def is_valid_app_id(self, app_id: str) -> bool:
        return await self._inner.is_valid_app_id(app_id)

    async def is_authentication_disabled(self) -> bool:
        return await self._inner.is_authentication_disabled()

    async def create_credentials(self, app_id: str, oauth_scope: str, login_endpoint: str,
                                 validate_authority: bool) -> Any:
        key = (app_id or "", oauth_scope or "")
        if key not in self._cache:
            self._cache[key] = await self._inner.create_credentials(app_id, oauth_scope, login_endpoint,
                                                                    validate_authority)
        return self._cache[key]

    @property
    def cached(self) -> int:
        return len(self._cache)

    async def token(self, credentials: Any, within: float) -> str:
        """`credentials`' token, fetched in a worker thread and awaited for `within` seconds at the most
        (TimeoutError). MSAL's request has no timeout of its own: one fetch per credentials is in flight,
        however many callers wait (sends, readiness probes), so a login endpoint that never answers holds one
        worker thread, not one per caller (the same pool resolves host names for every connection)."""
        fetch = self._fetches.get(id(credentials))
        if fetch is None or fetch.done():
            fetch = self._fetches[id(credentials)] = asyncio.ensure_future(
                asyncio.to_thread(credentials.get_access_token))
        return await asyncio.wait_for(asyncio.shield(fetch), within)


class _Authentication(ConfigurationBotFrameworkAuthentication):
    """Every token botbuilder cannot validate is a 401 (it raises jwt errors, IndexError, bare Exception)."""

    async def authenticate_request(self, activity: Activity, auth_header: str):
        try:
            return await super().authenticate_request(activity, auth_header)
        except (PermissionError, RequestException):  # refused, or the key server could not be asked
            raise
        except Exception as exc:  # noqa: BLE001 - an unreadable or invalid token
            # debug only: refusals are counted and logged once a minute per source (bot.inbound)
            log.debug("inbound token refused: %s", type(exc).__name__)
            raise PermissionError("invalid token") from None


def readable_activity(data: dict[str, Any]) -> bool:
    """Can botbuilder turn this JSON object into an activity? Asked before the adapter runs, so a body it
    cannot read is a 400 here instead of an exception (a 500 and a traceback) inside it."""
    try:
        return bool(Activity().deserialize(data).type)
    except Exception:  # noqa: BLE001 - msrest raises several kinds for a body it cannot read
        return False


def patch_sdk(openid_metadata_url: str | None) -> None:
    """The one place this project changes the Bot Framework SDK's own classes (process-wide class
    attributes, set again by every make_adapter; idempotent)."""
    # msrest 0.7.1 builds every ClientRetryPolicy's status list with `i not in <a list of 501 codes>` for 999
    # codes (about 6 ms of CPU), and botbuilder 4.17.1 builds two of them per proactive call (a connector
    # client and a user-token client): most of the CPU a card costs. A frozenset gives the same list at once.
    ClientRetryPolicy.safe_codes = frozenset(ClientRetryPolicy.safe_codes)
    # The public-cloud channel validation reads its OpenID metadata URL from this class attribute.
    ChannelValidation.open_id_metadata_endpoint = openid_metadata_url or None


def make_adapter(config: BotConfig) -> tuple[CloudAdapter, CachedCredentialsFactory]:
    patch_sdk(config.OPENID_METADATA_URL)
    factory = CachedCredentialsFactory(ConfigurationServiceClientCredentialFactory(config))
    auth = _Authentication(config, credentials_factory=factory)
    adapter = CloudAdapter(auth)

    async def on_error(context: TurnContext, error: Exception) -> None:
        log.error("turn failed: %s", type(error).__name__, exc_info=error)
        if isinstance(error, ErrorResponseException) and _send_error(error).status == 429:
            return  # Teams asked us to wait before sending here: an apology now would not be heard either
        try:
            await context.send_activity("Sorry, something went wrong on my side. The error was logged.")
        except Exception:  # noqa: BLE001 - the reply itself may be what failed
            pass

    adapter.on_turn_error = on_error
    return adapter, factory


class SigningKeys:
    """Keeps botbuilder's copy of the Bot Framework signing keys fresh, fetched off the event loop.

    botbuilder checks an inbound token against keys it downloads with a blocking `requests.get`, on the
    event loop, whenever its copy is a day old: every request waits meanwhile. Refreshed here in a
    worker thread at start and every 12 hours, its copy never gets that old. A failed refresh is logged
    and tried again in 5 minutes; botbuilder's own fetch stays the fallback.
    """

    EVERY_SECONDS = 12 * 3600
    RETRY_SECONDS = 300

    def __init__(self, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self._sleep = sleep
        self.refreshed = asyncio.Event()  # set after each successful refresh

    @staticmethod
    def url() -> str:
        """The metadata URL channel validation uses (set from bot.openid_metadata_url by make_adapter)."""
        return ChannelValidation.open_id_metadata_endpoint or AuthenticationConstants.TO_BOT_FROM_CHANNEL_OPENID_METADATA_URL

    async def refresh(self) -> None:
        metadata = JwtTokenExtractor.get_open_id_metadata(self.url())
        # botbuilder's refresh is a coroutine around blocking calls (requests, no timeout): run it on a loop of
        # its own, in a thread, awaited for a minute at the most (then tried again later, as any failure)
        await asyncio.wait_for(asyncio.to_thread(asyncio.run, metadata._refresh()), 60)
        self.refreshed.set()

    async def run(self) -> None:
        while True:
            try:
                await self.refresh()
                wait = self.EVERY_SECONDS
            except Exception as exc:  # noqa: BLE001 - any failure: log, try again later
                log.warning("could not refresh the Bot Framework signing keys: %s", type(exc).__name__)
                wait = self.RETRY_SECONDS
            await self._sleep(wait)


# --------------------------------------------------------------------------- conversation references

def bare_conversation_id(activity: Activity) -> str:
    data = activity.channel_data or {}
    channel = data.get("channel") if isinstance(data, dict) else None
    if isinstance(channel, dict) and channel.get("id"):
        return str(channel["id"])
    return str(activity.conversation.id).split(";", 1)[0]


def channel_ref_from(activity: Activity) -> ChannelRef:
    ref = TurnContext.get_conversation_reference(activity)
    bare = bare_conversation_id(activity)
    ref.conversation.id = bare
    ref.activity_id = None
    data = activity.channel_data if isinstance(activity.channel_data, dict) else {}
    team = data.get("team") or {}
    tenant = (data.get("tenant") or {}).get("id") or getattr(activity.conversation, "tenant_id", None)
    channel = data.get("channel") or {}
    return ChannelRef(channel_id=bare, tenant_id=tenant, team_id=team.get("id"), service_url=activity.service_url,
                      reference=ref.serialize(), name=channel.get("name") or getattr(activity.conversation, "name", None))


class MemberUpns:
    """User principal names of the users who send commands, asked from Teams (the Bot Connector's
    get-member call: activities carry the user's object id, never the UPN), cached per user."""

    MAX_ENTRIES = 10_000

    def __init__(self, *, ttl: float = 600.0, clock: Clock | None = None) -> None:
        self._ttl = ttl
        self._clock = clock or SystemClock()
        self._cache: dict[str, tuple[float, str | None]] = {}
        self.lookups = 0

    async def upn(self, turn_context: TurnContext, user_id: str) -> str | None:
        now = self._clock.monotonic()
        hit = self._cache.get(user_id)
        if hit is not None and hit[0] > now:
            return hit[1]
        self.lookups += 1
        try:
            member = await TeamsInfo.get_member(turn_context, user_id)
        except Exception as exc:  # noqa: BLE001 - not a member, or Teams unreachable: no UPN, so no admin by UPN
            log.warning("could not look up the UPN of %s: %s", user_id, type(exc).__name__)
            return None
        upn = getattr(member, "user_principal_name", None) or None
        if len(self._cache) >= self.MAX_ENTRIES:
            self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
        self._cache[user_id] = (now + self._ttl, upn)
        return upn


def actor_from(activity: Activity) -> Actor:
    data = activity.channel_data if isinstance(activity.channel_data, dict) else {}
    user = activity.from_property
    return Actor(id=user.id if user else "unknown", aad_object_id=getattr(user, "aad_object_id", None),
                 name=getattr(user, "name", None), team_aad_group_id=(data.get("team") or {}).get("aadGroupId"),
                 tenant_id=(data.get("tenant") or {}).get("id") or getattr(activity.conversation, "tenant_id", None))


def reply_activity(reply: Reply) -> Activity:
    if reply.card is None:
        return MessageFactory.text(reply.text)
    return MessageFactory.attachment(CardFactory.adaptive_card(reply.card), text=None)


# --------------------------------------------------------------------------- proactive sender

class TeamsSender:
    """Posts, updates and replies through the real adapter; maps every failure to SendError."""

    def __init__(self, adapter: CloudAdapter, app_id: str, credentials: CachedCredentialsFactory, *,
                 timeout: float = 30.0) -> None:
        self._adapter = adapter
        self._app_id = app_id
        self._credentials = credentials
        self._timeout = timeout

    async def _with_client(self, channel: ChannelRef, conversation_id: str,
                           call: Callable[[Any, Activity], Awaitable[Any]]) -> Any:
        reference = ConversationReference().deserialize(channel.reference)
        reference.conversation.id = conversation_id
        reference.service_url = channel.service_url
        result: list[Any] = []
        failure: list[BaseException] = []

        async def logic(tc: TurnContext) -> None:
            client = tc.turn_state.get(self._adapter.BOT_CONNECTOR_CLIENT_KEY)
            # msrest would retry PUTs by itself (3x, blocking); the delivery worker owns retries
            client.config.retry_policy.retries = 0
            try:
                await self._token_ready(client.config.credentials)
                result.append(await call(client, tc.activity))
            except Exception as exc:  # noqa: BLE001 - kept from on_turn_error, which would post into the channel
                failure.append(exc)

        try:
            await self._adapter.continue_conversation(reference, logic, bot_app_id=self._app_id)
            if failure:
                raise failure[0]
        except ErrorResponseException as exc:
            raise _send_error(exc) from None
        except (ClientRequestError, OSError, TimeoutError) as exc:
            raise SendError(f"no answer from the Bot Connector: {type(exc).__name__}") from None
        except PermissionError as exc:
            raise SendError(f"Bot Framework credentials refused: {type(exc).__name__}", status=401) from None
        return result[0] if result else None

    async def _token_ready(self, credentials: Any) -> None:
        """The Bot Framework token in the credentials' cache, fetched in a worker thread within the send's
        timeout. msrest asks the credentials for it synchronously, on the event loop, before each call: a
        renewal there (about hourly) against a login endpoint that answers slowly or not at all would stop
        every poll, delivery and inbound request meanwhile (MSAL's requests have no timeout). Here, only this
        send waits, and fails as retriable; msrest then finds the token cached."""
        if not callable(getattr(credentials, "get_access_token", None)) or not getattr(
                credentials, "microsoft_app_id", None):
            return  # no app id: no token is asked for (local development)
        try:
            await self._credentials.token(credentials, self._timeout)
        except TimeoutError:
            raise SendError(f"no Bot Framework token from the login endpoint within {self._timeout:g} s") from None

    @staticmethod
    def _card_activity(incoming: Activity, card: dict[str, Any], text: str) -> Activity:
        act = Activity(type=ActivityTypes.message, attachments=[CardFactory.adaptive_card(card)], summary=text[:200])
        act.conversation = incoming.conversation
        act.from_property = incoming.recipient
        act.channel_id = incoming.channel_id
        act.service_url = incoming.service_url
        return act

    async def post(self, channel: ChannelRef, card: dict[str, Any], text: str) -> PostedCard:
        async def send(client: Any, incoming: Activity) -> Any:
            return await client.conversations.send_to_conversation(
                channel.channel_id, self._card_activity(incoming, card, text), timeout=self._timeout)

        response = await self._with_client(channel, channel.channel_id, send)
        activity_id = getattr(response, "id", None)
        if not activity_id:
            raise SendError("the Bot Connector returned no activity id", status=200)
        thread = channel.channel_id if ";messageid=" in channel.channel_id or not channel.team_id \
            else f"{channel.channel_id};messageid={activity_id}"
        return PostedCard(conversation_id=thread, activity_id=str(activity_id))

    async def update(self, channel: ChannelRef, posted: PostedCard, card: dict[str, Any], text: str) -> None:
        async def put(client: Any, incoming: Activity) -> Any:
            act = self._card_activity(incoming, card, text)
            act.id = posted.activity_id
            return await client.conversations.update_activity(posted.conversation_id, posted.activity_id, act,
                                                              timeout=self._timeout)

        await self._with_client(channel, posted.conversation_id, put)

    async def reply(self, channel: ChannelRef, posted: PostedCard, text: str) -> None:
        async def send(client: Any, incoming: Activity) -> Any:
            act = MessageFactory.text(text)
            act.conversation = incoming.conversation
            act.from_property = incoming.recipient
            return await client.conversations.send_to_conversation(posted.conversation_id, act, timeout=self._timeout)

        await self._with_client(channel, posted.conversation_id, send)


def _send_error(exc: ErrorResponseException) -> SendError:
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    headers = getattr(response, "headers", None) or {}
    code = message = None
    try:
        code = exc.error.error.code
        message = exc.error.error.message
    except AttributeError:
        pass
    retry_after = None
    raw = headers.get("Retry-After") if hasattr(headers, "get") else None
    if raw:
        try:
            retry_after = float(raw)
        except ValueError:
            retry_after = None
    return SendError(f"HTTP {status} {code or ''} {message or ''}".strip(), status=status, code=code,
                     retry_after=retry_after)


# --------------------------------------------------------------------------- activity handler

# Reasons a reinstall (or the bot being added again) undoes; a deleted channel stays inactive.
REVIVED_BY_INSTALL = ("app uninstalled", "bot removed from the team", "BotNotInConversationRoster",
                      "BotDisabledByAdmin")


class NotifierBot(TeamsActivityHandler):
    """Saves conversation references, follows the channel's life, and hands command lines to Commands."""

    def __init__(self, db: Database, commands: Commands, *, welcome: bool = True,
                 upns: MemberUpns | None = None, actions: CardActions | None = None) -> None:
        self._db = db
        self._actions = actions
        self._commands = commands
        self._upns = upns or MemberUpns()
        self._store = Store(db)
        self._channels = self._store.channels
        self._welcome = welcome

    async def _save(self, activity: Activity, action: str, *, install: bool = False) -> bool:
        ref = channel_ref_from(activity)
        revived: list[str] = []
        async with self._store.unit() as u:
            became_active = await u.channels.upsert(ref)
            if install and ref.team_id:
                revived = await u.channels.set_active_for_team(ref.team_id, True, None,
                                                                   only_reasons=REVIVED_BY_INSTALL)
            if became_active or revived:
                await u.audit.add("lifecycle", action, "ok", channel_id=ref.channel_id,
                                      team=ref.team_id, tenant=ref.tenant_id, **({"revived": revived} if revived else {}))
        if revived:
            self._commands.runtime.wake_delivery()
        return became_active

    async def on_message_activity(self, turn_context: TurnContext) -> None:
        activity = turn_context.activity
        channel_id = bare_conversation_id(activity)
        existing = await self._channels.get(channel_id)
        if existing is None or existing.active:
            await self._save(activity, "conversation saved")
        if self._actions is not None and isinstance(activity.value, dict) and "verb" in activity.value:
            await self._submitted(turn_context, channel_id, activity.value)
            return
        text = TurnContext.remove_recipient_mention(activity) or activity.text or ""
        text = _strip_leftover_mention(text, activity)
        actor = actor_from(activity)
        if self._commands.wants_upn(text):  # admins listed by UPN: ask Teams who this is
            actor = replace(actor, upn=await self._upns.upn(turn_context, actor.id))
        reply = await self._commands.run(channel_id, actor, text)
        await self._reply(turn_context, reply)

    async def on_invoke_activity(self, turn_context: TurnContext) -> InvokeResponse:
        # botbuilder 4.17.1 serializes an adaptiveCard/action answer twice (the handler, then CloudAdapter),
        # and the second time fails on the dict the first made: answer with the model, serialized once.
        activity = turn_context.activity
        if activity.name != "adaptiveCard/action":
            return await super().on_invoke_activity(turn_context)
        value = activity.value if isinstance(activity.value, dict) else {}
        action = value.get("action")
        if not isinstance(action, dict) or action.get("type") != "Action.Execute":
            return InvokeResponse(status=200, body=_invoke_error(400, "BadRequest", "Not an Action.Execute."))
        answer = await self.on_adaptive_card_invoke(turn_context, AdaptiveCardInvokeValue(action=action))
        return InvokeResponse(status=200, body=answer)

    async def on_adaptive_card_invoke(self, turn_context: TurnContext,
                                      invoke_value: AdaptiveCardInvokeValue) -> AdaptiveCardInvokeResponse:
        """Action.Execute on one of our cards: run it, update the card, answer with the card as it is now."""
        if self._actions is None:
            return _invoke_error(501, "NotSupported", "Card actions are off.")
        activity = turn_context.activity
        action = invoke_value.action or {}
        result = await self._actions.run(bare_conversation_id(activity), actor_from(activity), action.get("verb"),
                                         action.get("data"))
        if result.card is None:
            return _invoke_error(400, "BadRequest", result.message)
        await self._update_clicked(turn_context, result.card)
        return AdaptiveCardInvokeResponse(status_code=200, type=ADAPTIVE, value=result.card)

    async def _submitted(self, turn_context: TurnContext, channel_id: str, value: dict[str, Any]) -> None:
        """The Action.Submit fallback of a card action (clients without Universal Actions)."""
        assert self._actions is not None
        result = await self._actions.run(channel_id, actor_from(turn_context.activity), value.get("verb"), value)
        if result.card is None:
            await self._reply(turn_context, Reply(result.message))
        else:
            await self._update_clicked(turn_context, result.card)

    async def _update_clicked(self, turn_context: TurnContext, card: dict[str, Any]) -> None:
        """Replace the clicked card in its conversation, so that everyone sees who is on it."""
        activity = turn_context.activity
        if not activity.reply_to_id:
            return
        updated = MessageFactory.attachment(CardFactory.adaptive_card(card))
        updated.id = activity.reply_to_id
        try:
            await turn_context.update_activity(updated)
        except Exception as exc:  # noqa: BLE001 - the answer to the click still carries the card
            log.warning("could not update card %s: %s", activity.reply_to_id, type(exc).__name__)

    async def _reply(self, turn_context: TurnContext, reply: Reply) -> None:
        """Answer a command; the channel's Teams budget is shared with card posts, so honour a 429 briefly
        (within REPLY_RETRY's 15 s: a longer Retry-After fails the answer rather than hold the request)."""
        started = asyncio.get_running_loop().time()
        for attempt in range(1, REPLY_RETRY.max_attempts + 1):
            try:
                await turn_context.send_activity(reply_activity(reply))
                return
            except ErrorResponseException as exc:
                err = _send_error(exc)
                delay = REPLY_RETRY.delay(attempt, retry_after=err.retry_after)
                elapsed = asyncio.get_running_loop().time() - started
                if err.status != 429 or REPLY_RETRY.gives_up(attempt, elapsed, delay):
                    raise
                await asyncio.sleep(delay)

    async def on_installation_update_add(self, turn_context: TurnContext) -> None:
        if await self._save(turn_context.activity, "installed", install=True) and self._welcome:
            await self._send_welcome(turn_context)

    async def on_installation_update_remove(self, turn_context: TurnContext) -> None:
        await self._deactivate(turn_context.activity, "app uninstalled")

    async def on_teams_members_added(self, members_added, team_info, turn_context: TurnContext) -> None:
        if any(m.id == turn_context.activity.recipient.id for m in members_added):
            if await self._save(turn_context.activity, "bot added", install=True) and self._welcome:
                await self._send_welcome(turn_context)

    async def on_teams_members_removed(self, members_removed, team_info, turn_context: TurnContext) -> None:
        if any(m.id == turn_context.activity.recipient.id for m in members_removed):
            await self._deactivate(turn_context.activity, "bot removed from the team")

    async def on_teams_channel_renamed(self, channel_info: ChannelInfo, team_info: TeamInfo,
                                       turn_context: TurnContext) -> None:
        async with self._store.unit() as u:
            await u.channels.rename(channel_info.id, channel_info.name)
            await u.audit.add("lifecycle", "channel renamed", "ok", channel_id=channel_info.id,
                                  name=channel_info.name)

    async def on_teams_channel_deleted(self, channel_info: ChannelInfo, team_info: TeamInfo,
                                       turn_context: TurnContext) -> None:
        async with self._store.unit() as u:
            if await u.channels.set_active(channel_info.id, False, "channel deleted"):
                await u.audit.add("lifecycle", "channel deleted", "ok", channel_id=channel_info.id)

    async def on_teams_channel_restored(self, channel_info: ChannelInfo, team_info: TeamInfo,
                                        turn_context: TurnContext) -> None:
        channel = await self._channels.get(channel_info.id)
        if channel is None or channel.active or channel.inactive_reason != "channel deleted":
            return
        async with self._store.unit() as u:
            await u.channels.set_active(channel_info.id, True, None)
            await u.audit.add("lifecycle", "channel restored", "ok", channel_id=channel_info.id)
        self._commands.runtime.wake_delivery()

    async def on_teams_team_deleted(self, team_info: TeamInfo, turn_context: TurnContext) -> None:
        await self._team_active(team_info, False, "team deleted")

    async def on_teams_team_hard_deleted(self, team_info: TeamInfo, turn_context: TurnContext) -> None:
        await self._team_active(team_info, False, "team deleted")

    async def on_teams_team_archived(self, team_info: TeamInfo, turn_context: TurnContext) -> None:
        await self._team_active(team_info, False, "team archived")

    async def on_teams_team_unarchived(self, team_info: TeamInfo, turn_context: TurnContext) -> None:
        await self._team_active(team_info, True, None, only_reasons=("team archived",))

    async def on_teams_team_restored(self, team_info: TeamInfo, turn_context: TurnContext) -> None:
        await self._team_active(team_info, True, None, only_reasons=("team deleted",))

    async def on_teams_team_renamed(self, team_info: TeamInfo, turn_context: TurnContext) -> None:
        await self._store.audit.record("lifecycle", "team renamed", "ok", team=team_info.id, name=team_info.name)

    async def _team_active(self, team_info: TeamInfo, active: bool, reason: str | None, *,
                           only_reasons: tuple[str, ...] = ()) -> None:
        async with self._store.unit() as u:
            changed = await u.channels.set_active_for_team(team_info.id, active, reason,
                                                               only_reasons=only_reasons)
            await u.audit.add("lifecycle", reason or "team restored", "ok", team=team_info.id,
                                  channels=changed)
        if active:
            self._commands.runtime.wake_delivery()

    async def _deactivate(self, activity: Activity, reason: str) -> None:
        data = activity.channel_data if isinstance(activity.channel_data, dict) else {}
        team_id = (data.get("team") or {}).get("id")
        async with self._store.unit() as u:
            if team_id:
                changed = await u.channels.set_active_for_team(team_id, False, reason)
            else:
                cid = bare_conversation_id(activity)
                changed = [cid] if await u.channels.set_active(cid, False, reason) else []
            await u.audit.add("lifecycle", reason, "ok", team=team_id, channels=changed)

    async def _send_welcome(self, turn_context: TurnContext) -> None:
        await turn_context.send_activity(MessageFactory.text(
            "Hello! I post IFS Cloud approvals (supplier invoices, purchase orders, GL vouchers) here.\n\n"
            "To start, an admin types: @me link company <code>   (for example: link company 10)\n\n"
            "Type 'help' for everything I can do."))


def _invoke_error(status: int, code: str, message: str) -> AdaptiveCardInvokeResponse:
    return AdaptiveCardInvokeResponse(status_code=status, type="application/vnd.microsoft.error",
                                      value={"code": code, "message": message})


def _strip_leftover_mention(text: str, activity: Activity) -> str:
    text = text.strip()
    name = getattr(activity.recipient, "name", None)
    for prefix in ([f"@{name}", name] if name else []):
        if text.lower().startswith(prefix.lower()):
            text = text[len(prefix):].strip()
    return text
