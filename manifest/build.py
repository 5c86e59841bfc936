"""The Teams app package: manifest.json (schema v1.29), the two icons, and the zip a Teams admin uploads."""

from __future__ import annotations

import json
import logging
import os
import re
import unicodedata
import uuid
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bot.commands import REGISTRY, CommandSpec
from core.errors import ConfigError
from core.settings import Settings
from manifest.icons import color_icon, outline_icon

log = logging.getLogger(__name__)

MANIFEST_VERSION = "1.29"  # latest released schema; tests/schemas holds the same version
SCHEMA_URL = f"https://developer.microsoft.com/json-schemas/teams/v{MANIFEST_VERSION}/MicrosoftTeams.schema.json"

PACKAGE_DIR = "appPackage"  # `make validate-manifest` reads build/appPackage/manifest.json
MANIFEST_FILE = "manifest.json"
COLOR_ICON = "color.png"
OUTLINE_ICON = "outline.png"
ZIP_NAME = "ifs-teams-notifier-{version}.zip"

ACCENT_COLOR = "#4B2A83"
DEVELOPER_NAME = "ifs-teams-notifier"
# Shown in Teams' app details until service.public_url is set; the runbook says to set it and rebuild.
PLACEHOLDER_URL = "https://example.com/ifs-teams-notifier"

BOT_SCOPES = ("team", "personal", "groupChat")
# The bot asks Microsoft Graph whether a member is a team owner (bot.owners_are_admins); this
# resource-specific permission is consented when the app is added to a team.
RSC_PERMISSIONS = ({"name": "TeamMember.Read.Group", "type": "Application"},)

# Teams' documented limits, stricter than the schema (which allows 128 / 4000 characters).
MAX_COMMANDS = 12
MAX_COMMAND_TITLE = 32
MAX_COMMAND_DESCRIPTION = 128
MAX_SHORT_NAME = 30
MAX_SHORT_DESCRIPTION = 80
MAX_FULL_DESCRIPTION = 4000

# The Teams app id is uuid5(this, bot app id): the same bot always gives the same Teams app, so a
# rebuilt package updates the installed app instead of adding a second one. Never change it.
APP_ID_NAMESPACE = uuid.UUID("c3256ffd-8f9a-5fd2-ba1f-5c3231c3f736")

_GUID = re.compile(r"^[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
_SEMVER = re.compile(r"^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)$")
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed, so the same inputs give the same zip bytes


def build_package(settings: Settings, *, app_id: str | None, out_dir: str = "build",
                  version: str = "0.1.0") -> Path:
    """Write out_dir/appPackage/{manifest.json,color.png,outline.png} and the zip; return the zip's path."""
    manifest = render_manifest(settings, app_id=app_id, version=version)
    files = {
        MANIFEST_FILE: (json.dumps(manifest, indent=2, ensure_ascii=False) + "\n").encode("utf-8"),
        COLOR_ICON: color_icon(ACCENT_COLOR),
        OUTLINE_ICON: outline_icon(),
    }
    package_dir = Path(out_dir) / PACKAGE_DIR
    package_dir.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        _write_atomically(package_dir / name, data)
    zip_path = Path(out_dir) / ZIP_NAME.format(version=version)
    _write_zip(zip_path, files)
    log.info("Teams app package %s (Teams app id %s, bot %s)", zip_path, manifest["id"], manifest["bots"][0]["botId"])
    return zip_path


def render_manifest(settings: Settings, *, app_id: str | None, version: str) -> dict[str, Any]:
    """The manifest as a dict. Raises ConfigError for a missing or malformed app id, name, URL or version."""
    bot_id = _bot_id(app_id)
    if not _SEMVER.match(version):
        raise ConfigError("--version", f"{version!r} is not MAJOR.MINOR.PATCH (the Teams manifest wants plain semver)")
    name = settings.bot.name.strip()
    if not name or len(name) > MAX_SHORT_NAME:
        raise ConfigError("bot.name", f"must be 1 to {MAX_SHORT_NAME} characters (the Teams app's short name)")
    public_url = _public_url(settings.service.public_url)
    site = public_url or PLACEHOLDER_URL
    if not public_url:
        log.warning("service.public_url is not set: the manifest's developer links point to %s; set it and"
                    " rebuild before publishing the app", PLACEHOLDER_URL)
    manifest: dict[str, Any] = {
        "$schema": SCHEMA_URL,
        "manifestVersion": MANIFEST_VERSION,
        "version": version,
        "id": teams_app_id(bot_id),
        "developer": {
            "name": DEVELOPER_NAME,
            "websiteUrl": site,
            "privacyUrl": f"{site}/privacy",
            "termsOfUseUrl": f"{site}/terms",
        },
        "name": {"short": name},
        "description": {
            "short": shorten("IFS Cloud invoices, orders and vouchers awaiting approval, posted to channels",
                             MAX_SHORT_DESCRIPTION),
            "full": shorten(_full_description(name), MAX_FULL_DESCRIPTION),
        },
        "icons": {"color": COLOR_ICON, "outline": OUTLINE_ICON},
        "accentColor": ACCENT_COLOR,
        "bots": [{
            "botId": bot_id,
            "scopes": list(BOT_SCOPES),
            "supportsFiles": False,
            "isNotificationOnly": False,
            "commandLists": command_lists(REGISTRY, BOT_SCOPES),
        }],
        "defaultInstallScope": "team",
        "webApplicationInfo": {"id": bot_id, "resource": f"api://botid-{bot_id}"},
        "authorization": {"permissions": {"resourceSpecific": [dict(p) for p in RSC_PERMISSIONS]}},
    }
    if public_url:
        manifest["validDomains"] = [urlsplit(public_url).netloc]
    return manifest


def teams_app_id(bot_id: str) -> str:
    """The manifest `id`: a GUID derived from the bot's app id (stable across rebuilds)."""
    return str(uuid.uuid5(APP_ID_NAMESPACE, bot_id.lower()))


def command_lists(registry: Mapping[str, CommandSpec], scopes: Iterable[str]) -> list[dict[str, Any]]:
    """One command list per scope, generated from the command registry (the menu Teams shows on @mention)."""
    return [{"scopes": [scope], "commands": _commands(registry, scope)} for scope in scopes]


def _commands(registry: Mapping[str, CommandSpec], scope: str) -> list[dict[str, Any]]:
    """The commands offered in one scope (a command's `scopes`), at most Teams' limit."""
    commands = []
    for spec in registry.values():
        if scope not in spec.scopes:
            continue
        if len(spec.name) > MAX_COMMAND_TITLE:
            # Teams types the title into the compose box: a cut title would be a command the bot doesn't know
            log.warning("command %r is longer than %d characters: left out of the Teams command menu",
                        spec.name, MAX_COMMAND_TITLE)
            continue
        commands.append({"title": spec.name, "description": shorten(_describe(spec), MAX_COMMAND_DESCRIPTION)})
    if len(commands) > MAX_COMMANDS:
        log.warning("the Teams command menu shows %d commands in scope %s; left out: %s", MAX_COMMANDS, scope,
                    ", ".join(c["title"] for c in commands[MAX_COMMANDS:]))
        commands = commands[:MAX_COMMANDS]
    return commands


def shorten(text: str, limit: int) -> str:
    """`text` if it fits in `limit` characters, else cut at a word boundary with an ellipsis."""
    if len(text) <= limit:
        return text
    end = limit - 1
    while end > 0 and unicodedata.combining(text[end]):  # keep a letter and its accents together
        end -= 1
    cut = text[:end]
    space = cut.rfind(" ")
    if space >= limit // 2:
        cut = cut[:space]
    return cut.rstrip(" ,;:.-([{") + "…"


# --------------------------------------------------------------------------- helpers

def _bot_id(app_id: str | None) -> str:
    if app_id is None or not app_id.strip():
        raise ConfigError("bot.app_id", "not set: pass --app-id or `python app.py secrets set bot.app_id` (the"
                                        " Microsoft Entra application (client) id of the Azure Bot)")
    text = app_id.strip()
    if not _GUID.match(text):
        raise ConfigError("bot.app_id", "is not a GUID (the Microsoft Entra application (client) id,"
                                        " xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)")
    return text.lower()


def _public_url(value: str) -> str:
    if not value:
        return ""
    parts = urlsplit(value.strip())
    if parts.scheme != "https" or not parts.hostname or parts.query or parts.fragment:
        raise ConfigError("service.public_url", f"{value!r} is not an https:// base URL (Teams only calls https)")
    return value.strip().rstrip("/")


def _describe(spec: CommandSpec) -> str:
    text = spec.help + (". Admins only" if spec.admin else "")
    return text if spec.usage == spec.name else f"{text}. Usage: {spec.usage}"


def _full_description(name: str) -> str:
    return (
        f"{name} watches IFS Cloud for supplier invoices, purchase orders and GL vouchers that wait for approval,"
        " and posts each one as a card into the Teams channels linked to its IFS company: supplier, amount,"
        " document number, approval step and an Open in IFS link. When the document is approved, released,"
        " posted or cancelled, the card is updated in place; a surge arrives as one digest. Nothing is ever"
        " written back to IFS.\n\n"
        f"To start, a team owner mentions the bot in a channel: @{name} link company <code>. "
        f"@{name} help lists every command."
    )


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _write_zip(path: Path, files: Mapping[str, bytes]) -> None:
    """The three files at the zip root (Teams rejects a package whose manifest sits in a folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w") as zf:
        for name in sorted(files):
            info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3
            info.external_attr = 0o644 << 16
            zf.writestr(info, files[name])
    os.replace(tmp, path)
