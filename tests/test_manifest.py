"""Tests for manifest: the official v1.29 schema, the Teams rules the schema leaves out, icons, the zip, the CLI."""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
import uuid
import zipfile
import zlib
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from bot.commands import REGISTRY, CommandSpec
from core.errors import ConfigError
from core.settings import Settings, load_settings
from manifest.build import (
    MAX_COMMAND_DESCRIPTION,
    MAX_COMMAND_TITLE,
    MAX_COMMANDS,
    PLACEHOLDER_URL,
    build_package,
    command_lists,
    render_manifest,
    shorten,
    teams_app_id,
)

HERE = Path(__file__).parent
ROOT = HERE.parent
SCHEMA = json.loads((HERE / "schemas" / "teams-manifest-1.29.json").read_text(encoding="utf-8"))
# The schema declares draft-04 but pins manifestVersion with draft-06 `const`, as the toolkit enforces it.
ManifestValidator = jsonschema.validators.extend(
    jsonschema.Draft4Validator, {"const": jsonschema.Draft6Validator.VALIDATORS["const"]})
VALIDATOR = ManifestValidator(SCHEMA)

APP_ID = "3f2c9a1e-7b4d-4e8a-9c61-0d5b2e7f8a93"
OTHER_APP_ID = "9d0e1f2a-3b4c-4d5e-8f60-718293a4b5c6"
PUBLIC_URL = "https://notifier.example.com"
GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
PACKAGE_FILES = {"manifest.json", "color.png", "outline.png"}


def settings_with(**service: Any) -> Settings:
    bot = service.pop("bot", {})
    return load_settings(env={}, overrides={"service": service, "bot": bot})


def build(tmp_path: Path, *, app_id: str | None = APP_ID, version: str = "1.2.3", **service: Any) -> Path:
    return build_package(settings_with(**service), app_id=app_id, out_dir=str(tmp_path / "build"), version=version)


def manifest_of(zip_path: Path) -> dict[str, Any]:
    with zipfile.ZipFile(zip_path) as zf:
        return json.loads(zf.read("manifest.json"))


@pytest.fixture
def package(tmp_path: Path) -> Path:
    return build(tmp_path, public_url=PUBLIC_URL)


# --------------------------------------------------------------------------- PNG, read independently of the writer

def read_png(data: bytes) -> tuple[dict[str, int], list[list[tuple[int, ...]]]]:
    """IHDR fields and RGBA rows of an 8-bit RGBA PNG, undoing any of the five row filters."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert zlib.crc32(kind + body) == crc, kind
        chunks.append((kind, body))
        pos += 12 + length
    assert chunks[0][0] == b"IHDR" and chunks[-1][0] == b"IEND"
    width, height, depth, color_type, _comp, _filter, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    header = {"width": width, "height": height, "depth": depth, "color_type": color_type, "interlace": interlace}
    assert (depth, color_type, interlace) == (8, 6, 0), header
    raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    stride, bpp = width * 4, 4
    rows, previous = [], bytearray(stride)
    for y in range(height):
        ftype, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            left = line[i - bpp] if i >= bpp else 0
            up, up_left = previous[i], (previous[i - bpp] if i >= bpp else 0)
            if ftype == 1:
                line[i] = (line[i] + left) & 0xFF
            elif ftype == 2:
                line[i] = (line[i] + up) & 0xFF
            elif ftype == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif ftype == 4:
                p = left + up - up_left
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - up_left)
                line[i] = (line[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else up_left)) & 0xFF
        rows.append([tuple(line[x * 4:x * 4 + 4]) for x in range(width)])
        previous = line
    return header, rows


# --------------------------------------------------------------------------- schema

def test_manifest_is_valid_against_the_official_v1_29_schema(package):
    errors = sorted(VALIDATOR.iter_errors(manifest_of(package)), key=lambda e: list(e.absolute_path))

    assert [f"{list(e.absolute_path)}: {e.message}" for e in errors] == []


def test_manifest_without_public_url_is_valid_too(tmp_path):
    errors = list(VALIDATOR.iter_errors(manifest_of(build(tmp_path))))

    assert errors == []


@pytest.mark.parametrize("spoil", [
    lambda m: m.update(manifestVersion="1.28"),
    lambda m: m["bots"][0].update(unexpected=True),
    lambda m: m["name"].update(short="x" * 31),
    lambda m: m.update(id="not-a-guid"),
])
def test_the_schema_check_is_not_vacuous(package, spoil):
    manifest = manifest_of(package)
    spoil(manifest)

    assert not VALIDATOR.is_valid(manifest)


# --------------------------------------------------------------------------- what the schema cannot say

def test_ids_are_guids_and_the_bot_is_the_app_registration(package):
    m = manifest_of(package)

    assert GUID.match(m["id"]) and GUID.match(m["bots"][0]["botId"])
    assert m["bots"][0]["botId"] == APP_ID
    assert m["webApplicationInfo"] == {"id": APP_ID, "resource": f"api://botid-{APP_ID}"}
    assert m["id"] == teams_app_id(APP_ID) == str(uuid.uuid5(uuid.UUID("c3256ffd-8f9a-5fd2-ba1f-5c3231c3f736"),
                                                               APP_ID))


def test_teams_app_id_is_stable_per_bot_and_differs_between_bots(tmp_path):
    first = manifest_of(build(tmp_path / "a"))["id"]
    again = manifest_of(build(tmp_path / "b", app_id=APP_ID.upper()))["id"]
    other = manifest_of(build(tmp_path / "c", app_id=OTHER_APP_ID))["id"]

    assert first == again != other


def test_bot_scopes_files_and_rsc_permission(package):
    m = manifest_of(package)
    bot = m["bots"][0]

    assert len(m["bots"]) == 1
    assert bot["scopes"] == ["team", "personal", "groupChat"]
    assert bot["supportsFiles"] is False and bot["isNotificationOnly"] is False
    assert m["authorization"]["permissions"]["resourceSpecific"] == [
        {"name": "TeamMember.Read.Group", "type": "Application"}]


def test_command_lists_are_generated_from_the_registry(package):
    bot = manifest_of(package)["bots"][0]
    assert sorted(s for cl in bot["commandLists"] for s in cl["scopes"]) == sorted(bot["scopes"])
    for cl in bot["commandLists"]:
        [scope] = cl["scopes"]
        names = [spec.name for spec in REGISTRY.values() if scope in spec.scopes][:MAX_COMMANDS]
        titles = [c["title"] for c in cl["commands"]]
        assert set(cl["scopes"]) <= set(bot["scopes"])
        assert titles == names
        assert len(titles) == len(set(titles)) <= MAX_COMMANDS
        assert all(0 < len(t) <= MAX_COMMAND_TITLE for t in titles)
        assert all(0 < len(c["description"]) <= MAX_COMMAND_DESCRIPTION for c in cl["commands"])


def test_command_descriptions_carry_help_usage_and_admin_marker(package):
    commands = {c["title"]: c["description"] for cl in manifest_of(package)["bots"][0]["commandLists"]
                for c in cl["commands"]}

    for spec in REGISTRY.values():  # every command is offered in some scope
        assert commands[spec.name].startswith(spec.help)
        assert ("Admins only" in commands[spec.name]) == spec.admin


async def _noop(cmds, call):  # pragma: no cover - never called
    raise AssertionError


def test_personal_commands_are_offered_in_personal_chats_and_channel_ones_in_channels(package):
    lists = {cl["scopes"][0]: [c["title"] for c in cl["commands"]]
             for cl in manifest_of(package)["bots"][0]["commandLists"]}

    assert {"link me", "unlink me", "mine", "personal"} <= set(lists["personal"])
    assert "link me" not in lists["team"] and "pause" not in lists["personal"]
    assert {"link", "unlink", "mine", "people"} <= set(lists["team"])


def test_command_lists_keep_teams_limits_for_any_registry():
    registry = {f"cmd{i:02d}": CommandSpec(f"cmd{i:02d}", f"cmd{i:02d} " + "<argument> " * 30,
                                           "Does a thing with many words " * 10, i % 2 == 0, _noop)
                for i in range(15)}
    long_name = "x" * (MAX_COMMAND_TITLE + 1)
    registry = {long_name: CommandSpec(long_name, long_name, "too long to type", False, _noop), **registry}

    lists = command_lists(registry, ["team", "personal"])

    assert [cl["scopes"] for cl in lists] == [["team"], ["personal"]]
    titles = [c["title"] for c in lists[0]["commands"]]
    assert titles == [f"cmd{i:02d}" for i in range(MAX_COMMANDS)]
    assert all(len(c["description"]) <= MAX_COMMAND_DESCRIPTION and c["description"].endswith("…")
               for c in lists[0]["commands"])


@pytest.mark.parametrize(("text", "limit", "expected"), [
    ("short enough", 12, "short enough"),
    ("one two three four", 12, "one two…"),
    ("abcdefghijklmnop", 8, "abcdefg…"),
    ("Hold deliveries, then resume", 17, "Hold deliveries…"),
    ("caf" + "e\u0301" * 6, 5, "caf…"),
])
def test_shorten_cuts_at_words_and_marks_the_cut(text, limit, expected):
    out = shorten(text, limit)

    assert out == expected and len(out) <= limit


def test_names_descriptions_and_links(package):
    m = manifest_of(package)

    assert m["name"]["short"] == "IFS Approvals"
    assert len(m["description"]["short"]) <= 80 and len(m["description"]["full"]) <= 4000
    assert "@IFS Approvals link company" in m["description"]["full"]
    assert len(m["developer"]["name"]) <= 32
    assert m["developer"]["websiteUrl"] == PUBLIC_URL
    assert all(m["developer"][k].startswith(PUBLIC_URL + "/") for k in ("privacyUrl", "termsOfUseUrl"))
    assert m["validDomains"] == ["notifier.example.com"]


def test_without_public_url_the_links_are_the_documented_placeholder(tmp_path):
    m = manifest_of(build(tmp_path))

    assert all(m["developer"][k].startswith(PLACEHOLDER_URL)
               for k in ("websiteUrl", "privacyUrl", "termsOfUseUrl"))
    assert "validDomains" not in m
    assert PLACEHOLDER_URL in (ROOT / "deploy" / "RUNBOOK.md").read_text(encoding="utf-8")


def test_bot_name_comes_from_settings(tmp_path):
    m = manifest_of(build(tmp_path, bot={"name": "Finance approvals"}))

    assert m["name"]["short"] == "Finance approvals"
    assert "@Finance approvals help" in m["description"]["full"]


# --------------------------------------------------------------------------- refusals

@pytest.mark.parametrize("app_id", [None, "", "   ", "not-a-guid", "{" + APP_ID + "}", APP_ID.replace("-", "")])
def test_a_missing_or_malformed_app_id_is_a_config_error_naming_bot_app_id(tmp_path, app_id):
    with pytest.raises(ConfigError) as exc:
        build(tmp_path, app_id=app_id)

    assert exc.value.key == "bot.app_id"
    assert not (tmp_path / "build").exists()


@pytest.mark.parametrize(("service", "key"), [
    ({"public_url": "http://notifier.example.com"}, "service.public_url"),
    ({"public_url": "notifier.example.com"}, "service.public_url"),
    ({"bot": {"name": "A" * 31}}, "bot.name"),
])
def test_values_teams_would_reject_are_config_errors(tmp_path, service, key):
    with pytest.raises(ConfigError) as exc:
        build(tmp_path, **service)

    assert exc.value.key == key


@pytest.mark.parametrize("version", ["1.2", "v1.2.3", "1.2.3-rc1", "01.2.3"])
def test_version_must_be_plain_semver(version):
    with pytest.raises(ConfigError) as exc:
        render_manifest(settings_with(), app_id=APP_ID, version=version)

    assert exc.value.key == "--version"


# --------------------------------------------------------------------------- icons and zip

def test_icons_have_the_sizes_teams_requires(package):
    app_dir = package.parent / "appPackage"

    color, _ = read_png((app_dir / "color.png").read_bytes())
    outline, _ = read_png((app_dir / "outline.png").read_bytes())

    assert (color["width"], color["height"]) == (192, 192)
    assert (outline["width"], outline["height"]) == (32, 32)


def test_outline_icon_is_white_on_transparent_only(package):
    _, rows = read_png((package.parent / "appPackage" / "outline.png").read_bytes())
    pixels = [p for row in rows for p in row]

    assert {p for p in pixels if p[3] != 0} == {(255, 255, 255, 255)}
    assert 0.1 < sum(p[3] == 255 for p in pixels) / len(pixels) < 0.6  # a glyph, neither empty nor a block


def test_color_icon_is_the_accent_square_with_a_white_mark(package):
    m = manifest_of(package)
    _, rows = read_png((package.parent / "appPackage" / "color.png").read_bytes())
    accent = tuple(int(m["accentColor"][i:i + 2], 16) for i in (1, 3, 5))
    opaque = [p[:3] for row in rows for p in row if p[3] == 255]

    assert rows[0][0][3] == 0 and rows[96][2][:3] == accent  # rounded corner, accent edge
    assert opaque.count(accent) > len(opaque) // 2
    assert opaque.count((255, 255, 255)) > 500


def test_zip_holds_exactly_the_three_files_at_its_root(package):
    with zipfile.ZipFile(package) as zf:
        names = zf.namelist()
        contents = {name: zf.read(name) for name in names}

    assert package.name == "ifs-teams-notifier-1.2.3.zip"
    assert sorted(names) == sorted(PACKAGE_FILES)
    for name in names:
        assert contents[name] == (package.parent / "appPackage" / name).read_bytes()


def test_the_same_inputs_build_the_same_bytes(tmp_path):
    first = build(tmp_path / "one", public_url=PUBLIC_URL).read_bytes()
    second = build(tmp_path / "two", public_url=PUBLIC_URL).read_bytes()

    assert first == second


# --------------------------------------------------------------------------- command line and Makefile

def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFIER")}
    env |= {"NOTIFIER__SERVICE__DATABASE": str(tmp_path / "notifier.sqlite3"),
            "NOTIFIER__SERVICE__KEY_FILE": str(tmp_path / "master.key")}
    return subprocess.run([sys.executable, "app.py", "manifest", "build", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def test_cli_writes_the_layout_make_validate_manifest_reads(tmp_path):
    out = tmp_path / "build"

    done = _cli(tmp_path, "--app-id", APP_ID, "--out", str(out))

    assert done.returncode == 0, done.stderr
    assert {p.name for p in (out / "appPackage").iterdir()} == PACKAGE_FILES
    assert (out / "ifs-teams-notifier-0.1.0.zip").is_file()
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert "cd build &&" in makefile and "--manifest-file ./appPackage/manifest.json" in makefile


def test_cli_without_an_app_id_exits_2_naming_bot_app_id(tmp_path):
    done = _cli(tmp_path, "--out", str(tmp_path / "build"))

    assert done.returncode == 2
    assert "bot.app_id" in done.stderr
