"""Settings: TOML file, then NOTIFIER__SECTION__KEY environment overrides, then documented defaults.

Only what is not secret lives here; secrets live encrypted in the database vault (store.vault).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from core.errors import ConfigError

ENV_PREFIX = "NOTIFIER__"
MIN_TAKEOVER, MAX_TAKEOVER = 5.0, 600.0  # service.leader_takeover_seconds
REPLICA_NAME = re.compile(r"[A-Za-z0-9._:-]{1,64}")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


@dataclass(frozen=True)
class ServiceSettings:
    host: str = "127.0.0.1"  # bind address of the web app (/api/messages, /healthz, /metrics)
    port: int = 3978
    public_url: str = ""  # https://notifier.example.com, used in the Teams manifest
    database: str = "var/notifier.sqlite3"
    key_file: str = "var/master.key"  # Fernet key(s); the env var NOTIFIER_MASTER_KEY wins when set
    timezone: str = "UTC"  # schedules, quiet hours, dates on cards
    locale: str = "en-US"  # amounts and dates on cards
    dev_mode: bool = False  # bot authentication off; refused unless host is loopback
    log_level: str = "INFO"
    log_format: str = "text"  # "text" or "json"
    # /readyz and /metrics on their own address for monitoring only; ops_port 0 serves them on `port`
    ops_host: str = ""  # "" = the same as host
    ops_port: int = 0
    audit_retention_days: int = 90  # older audit rows are deleted once a day (and at start)
    min_free_disk_mb: int = 100  # /readyz is not ready below this much free space for the database
    # several replicas on one PostgreSQL database: this replica's name in the audit trail ("" = host:pid),
    # and the bound on how long the replicas are without a scheduler after the one running it dies
    replica_name: str = ""
    leader_takeover_seconds: float = 15.0


@dataclass(frozen=True)
class IfsSettings:
    base_url: str = ""  # https://tenant.ifs.cloud; a vault entry ifs.base_url overrides it
    realm: str = ""  # IAM namespace in /auth/realms/{realm}/...
    path_prefix: str = "main"  # "main" or "int"
    scope: str = "openid microprofile-jwt"
    page_size: int = 5000
    requests_per_minute: int = 1000
    max_concurrency: int = 4
    timeout: float = 30.0
    retry_attempts: int = 6
    retry_max_seconds: float = 300.0
    time_zone_aware: bool = False
    select: bool = True  # send $select (some projections reportedly reject it)
    confirm_reads_per_cycle: int = 500  # reads by key per poll confirming that unlisted records left
    max_listing_pages: int = 0  # requests one listing may make; 0: derived from the records pending
    max_listing_seconds: float = 900.0  # one listing's duration; 0: unbounded


@dataclass(frozen=True)
class BotSettings:
    app_type: str = "SingleTenant"  # SingleTenant, MultiTenant or UserAssignedMSI
    admins: tuple[str, ...] = ()  # Entra object ids or UPNs allowed to change bindings
    owners_are_admins: bool = True  # team owners (checked with Microsoft Graph) may change bindings
    welcome: bool = True
    name: str = "IFS Approvals"
    openid_metadata_url: str = ""  # override the Bot Framework OpenID metadata (tests, sovereign clouds)


@dataclass(frozen=True)
class DeliverySettings:
    digest_threshold: int = 10  # more pending `new` events than this for one channel -> one digest card
    digest_max_rows: int = 25
    reply_in_thread: bool = False  # also reply in the card's thread when it is updated
    max_age_hours: float = 24.0  # retriable failures become dead letters after this long
    lease_seconds: float = 120.0  # a claimed delivery returns to pending after this long
    workers: int = 8  # deliveries in flight at once (different channels)
    quiet_hours: str = ""  # "19:00-07:00" in service.timezone; nothing posted then
    batch_windows: tuple[str, ...] = ()  # "08:00-08:30": digest everything that arrives in the window


@dataclass(frozen=True)
class ScheduleSettings:
    every_minutes: float = 2.0  # a card within about two minutes; one lean listing per kind per cycle
    daily_at: tuple[str, ...] = ()  # "07:30" times; when set, replaces every_minutes
    finance_window_minutes: float = 0.0  # >0: poll this often inside the finance window
    finance_window_last_days: int = 3  # last N business days of the month
    finance_window_first_days: int = 2  # first N business days of the next month
    holidays: tuple[date, ...] = ()  # public holidays: not business days for the finance window
    jitter_seconds: float = 0.0


@dataclass(frozen=True)
class PeopleSettings:
    require_approval: bool = False  # a self-service `link me` waits for an admin's `people confirm`
    personal: bool = True  # mapped approvers get a personal card when a document reaches their step
    remind_at: tuple[str, ...] = ()  # "09:00": reminder digests on business days ([schedule] holidays)
    remind_after_days: float = 3.0  # remind of documents pending longer than this ...
    remind_due_within_days: int = 2  # ... or due within this many days (or overdue)


@dataclass(frozen=True)
class Settings:
    service: ServiceSettings = field(default_factory=ServiceSettings)
    ifs: IfsSettings = field(default_factory=IfsSettings)
    bot: BotSettings = field(default_factory=BotSettings)
    delivery: DeliverySettings = field(default_factory=DeliverySettings)
    schedule: ScheduleSettings = field(default_factory=ScheduleSettings)
    people: PeopleSettings = field(default_factory=PeopleSettings)
    # per source overrides, keyed by kind ("invoice", "order", "voucher"); validated by pollers.sources
    sources: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    path: str | None = None  # where these came from

    def validate(self) -> Settings:
        try:
            ZoneInfo(self.service.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError("service.timezone", f"unknown time zone {self.service.timezone!r}") from None
        if self.service.dev_mode and not is_loopback(self.service.host):
            raise ConfigError("service.dev_mode",
                              f"bot authentication can be off only on loopback, not on {self.service.host!r}")
        if self.service.log_format not in ("text", "json"):
            raise ConfigError("service.log_format", "must be 'text' or 'json'")
        if self.service.log_level.upper() not in LOG_LEVELS:
            raise ConfigError("service.log_level", f"must be one of {', '.join(LOG_LEVELS)}")
        for key, value, low, high in (("service.port", self.service.port, 0, 65535),
                                      ("service.ops_port", self.service.ops_port, 0, 65535),
                                      ("service.audit_retention_days", self.service.audit_retention_days, 1, 36500),
                                      ("service.min_free_disk_mb", self.service.min_free_disk_mb, 0, 10**9),
                                      ("delivery.workers", self.delivery.workers, 1, 1000)):
            if not low <= value <= high:
                raise ConfigError(key, f"must be between {low} and {high}, not {value}")
        if self.service.ops_port and self.service.ops_port == self.service.port:
            raise ConfigError("service.ops_port", "must differ from service.port (0 serves /readyz and /metrics"
                                                  " on service.port)")
        for key, number in (("delivery.lease_seconds", self.delivery.lease_seconds),
                            ("delivery.max_age_hours", self.delivery.max_age_hours)):
            if not number > 0 or number == float("inf"):
                raise ConfigError(key, f"must be a positive number, not {number}")
        if not (MIN_TAKEOVER <= self.service.leader_takeover_seconds <= MAX_TAKEOVER):
            raise ConfigError("service.leader_takeover_seconds", f"must be between {MIN_TAKEOVER:g} and"
                              f" {MAX_TAKEOVER:g} seconds, not {self.service.leader_takeover_seconds}")
        if self.service.replica_name and not REPLICA_NAME.fullmatch(self.service.replica_name):
            raise ConfigError("service.replica_name", "up to 64 letters, digits and . _ : - (no spaces),"
                              f" not {self.service.replica_name!r}")
        if self.ifs.path_prefix not in ("main", "int"):
            raise ConfigError("ifs.path_prefix", "must be 'main' or 'int'")
        if not 1 <= self.ifs.page_size <= 100_000:
            raise ConfigError("ifs.page_size", "must be between 1 and 100000")
        if self.ifs.requests_per_minute < 1:
            raise ConfigError("ifs.requests_per_minute", "must be at least 1")
        if self.ifs.confirm_reads_per_cycle < 1:
            raise ConfigError("ifs.confirm_reads_per_cycle", "must be at least 1")
        if self.ifs.max_listing_pages < 0 or self.ifs.max_listing_seconds < 0:
            raise ConfigError("ifs.max_listing_pages" if self.ifs.max_listing_pages < 0 else "ifs.max_listing_seconds",
                              "must not be negative (0: no fixed limit)")
        if self.ifs.base_url and not self.ifs.base_url.startswith(("https://", "http://")):
            raise ConfigError("ifs.base_url", "must start with https://")
        if self.bot.app_type.lower() not in ("singletenant", "multitenant", "userassignedmsi"):
            raise ConfigError("bot.app_type", "must be SingleTenant, MultiTenant or UserAssignedMSI")
        if self.delivery.digest_threshold < 1:
            raise ConfigError("delivery.digest_threshold", "must be at least 1")
        if self.schedule.every_minutes <= 0:
            raise ConfigError("schedule.every_minutes", "must be positive")
        for key, span in (("delivery.quiet_hours", self.delivery.quiet_hours),
                          *((f"delivery.batch_windows[{i}]", w) for i, w in enumerate(self.delivery.batch_windows))):
            if span:
                parse_span(key, span)
        for i, at in enumerate(self.schedule.daily_at):
            parse_hhmm(f"schedule.daily_at[{i}]", at)
        for i, at in enumerate(self.people.remind_at):
            parse_hhmm(f"people.remind_at[{i}]", at)
        if self.people.remind_after_days < 0 or self.people.remind_due_within_days < 0:
            raise ConfigError("people.remind_after_days" if self.people.remind_after_days < 0
                              else "people.remind_due_within_days", "must not be negative")
        return self


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_hhmm(key: str, text: str) -> tuple[int, int]:
    try:
        hh, mm = text.strip().split(":")
        h, m = int(hh), int(mm)
    except ValueError:
        raise ConfigError(key, f"{text!r} is not HH:MM") from None
    if not (0 <= h < 24 and 0 <= m < 60):
        raise ConfigError(key, f"{text!r} is not a time of day")
    return h, m


def parse_span(key: str, text: str) -> tuple[tuple[int, int], tuple[int, int]]:
    if "-" not in text:
        raise ConfigError(key, f"{text!r} is not HH:MM-HH:MM")
    start, end = text.split("-", 1)
    return parse_hhmm(key, start), parse_hhmm(key, end)


def _coerce(key: str, tp: Any, value: Any) -> Any:
    origin = typing.get_origin(tp)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return value.lower() in ("1", "true", "yes", "on")
        raise ConfigError(key, f"expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(key, f"expected an integer, got {value!r}")
        try:
            return int(value) if isinstance(value, int | str) else _fail()
        except (ValueError, TypeError):
            raise ConfigError(key, f"expected an integer, got {value!r}") from None
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(key, f"expected a number, got {value!r}")
        try:
            return float(value)
        except (ValueError, TypeError):
            raise ConfigError(key, f"expected a number, got {value!r}") from None
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(key, f"expected a string, got {value!r}")
        return value
    if tp is date:
        if isinstance(value, date) and not isinstance(value, datetime):  # a TOML date
            return value
        try:
            return date.fromisoformat(value.strip()) if isinstance(value, str) else _fail()
        except (ValueError, TypeError):
            raise ConfigError(key, f"expected a date (YYYY-MM-DD), got {value!r}") from None
    if origin is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise ConfigError(key, f"expected a list, got {value!r}")
        (inner, _ellipsis) = typing.get_args(tp)
        return tuple(_coerce(f"{key}[{i}]", inner, v) for i, v in enumerate(value))
    raise ConfigError(key, f"unsupported setting type {tp!r}")


def _fail() -> Any:
    raise TypeError


def _build(section_cls: type, key: str, data: Mapping[str, Any]) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(key, "expected a table")
    hints = typing.get_type_hints(section_cls)
    names = {f.name for f in dataclasses.fields(section_cls)}
    values = {}
    for name, value in data.items():
        if name not in names:
            raise ConfigError(f"{key}.{name}", f"unknown setting (known: {', '.join(sorted(names))})")
        values[name] = _coerce(f"{key}.{name}", hints[name], value)
    return section_cls(**values)


_SECTIONS = {"service": ServiceSettings, "ifs": IfsSettings, "bot": BotSettings,
             "delivery": DeliverySettings, "schedule": ScheduleSettings, "people": PeopleSettings}


def _set_source_from_env(sources: dict[str, Any], var: str, path: list[str], text: str) -> None:
    """NOTIFIER__SOURCES__INVOICE__ENTITY_SET=X, ...__DETAILS='[["Label","Field"]]' (lists and tables as JSON),
    ...__AMOUNT=false (drop an optional field), ...__APPROVALS__NAVIGATION=X (one key of a sub-table)."""
    value: Any = text
    stripped = text.strip()
    if stripped.lower() in ("true", "false"):
        value = stripped.lower() == "true"
    elif stripped[:1] in ("[", "{"):
        try:
            value = json.loads(stripped)
        except ValueError as exc:
            raise ConfigError(var, f"not valid JSON ({exc})") from None
    table = sources
    for name in path[:-1]:
        inner = table.get(name)
        if inner is None or inner is False:
            inner = table[name] = {}
        elif not isinstance(inner, Mapping):
            raise ConfigError(var, f"{name} is not a table")
        else:
            inner = table[name] = dict(inner)
        table = inner
    table[path[-1]] = value


def _no_password_in_file(database: Any) -> None:
    """A database URL in the config file names no password: files get copied, committed and attached to
    tickets. The password comes from the environment (NOTIFIER__SERVICE__DATABASE, PGPASSWORD) or a pgpass file."""
    if not isinstance(database, str):
        return
    try:
        password = urlsplit(database).password
    except ValueError:
        return
    if password is not None:
        raise ConfigError("service.database", "the URL in the config file holds a password; remove it and give it"
                                              " in PGPASSWORD or a pgpass file (PGPASSFILE), or give the whole URL"
                                              " in NOTIFIER__SERVICE__DATABASE")


def load_settings(path: str | os.PathLike[str] | None = None, *, env: Mapping[str, str],
                  overrides: Mapping[str, Mapping[str, Any]] | None = None) -> Settings:
    """Read TOML (if a path is given), apply the `NOTIFIER__*` overrides found in `env`, validate. Raises
    ConfigError. `env` is passed in (os.environ by the composition root) so only that root reads the process
    environment."""
    raw: dict[str, Any] = {}
    if path is not None and not str(path).strip():
        path = None  # NOTIFIER_CONFIG= (set but empty) means no file, as unset does
    if path is not None:
        p = Path(path)
        try:
            raw = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError("--config", f"file not found: {p}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError("--config", f"cannot read {p}: {getattr(exc, 'strerror', None) or exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("--config", f"{p} is not valid TOML: {exc}") from None
    for name in _SECTIONS:  # `service = 5` is a value where a table belongs
        if not isinstance(raw.get(name, {}), Mapping):
            raise ConfigError(name, f"expected a table ([{name}]), got {raw[name]!r}")
    _no_password_in_file(raw.get("service", {}).get("database"))
    merged: dict[str, dict[str, Any]] = {name: dict(raw.get(name, {}) or {}) for name in _SECTIONS}
    for name in raw:
        if name not in _SECTIONS and name != "sources":
            raise ConfigError(name, f"unknown section (known: {', '.join(sorted([*_SECTIONS, 'sources']))})")
    for section, values in (overrides or {}).items():
        merged.setdefault(section, {}).update(values)
    sources = raw.get("sources", {}) or {}
    if not isinstance(sources, Mapping):
        raise ConfigError("sources", "expected a table of [sources.<kind>] tables")
    sources = {kind: dict(table) if isinstance(table, Mapping) else table for kind, table in sources.items()}
    for var, value in sorted(env.items()):
        if not var.startswith(ENV_PREFIX):
            continue
        parts = var[len(ENV_PREFIX):].lower().split("__")
        if parts[0] == "sources" and len(parts) >= 3 and all(parts):
            _set_source_from_env(sources, var, parts[1:], value)
            continue
        if len(parts) != 2 or parts[0] not in _SECTIONS:
            raise ConfigError(var, "expected NOTIFIER__<SECTION>__<KEY> with a known section,"
                                   " or NOTIFIER__SOURCES__<KIND>__<KEY>")
        merged[parts[0]][parts[1]] = value
    built = {name: _build(cls, name, merged[name]) for name, cls in _SECTIONS.items()}
    settings = Settings(**built, sources=types.MappingProxyType(dict(sources)),
                        path=str(path) if path is not None else None)
    return settings.validate()
