"""Tests for deploy: the recipes' files exist and agree, the configs load, and the image's command serves and stops.

No Docker engine here: the container's command line (entrypoint script + CMD, with the image's ENV) is run
from the repository root, which has the same layout as the image's WORKDIR.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import tomllib
import typing
from dataclasses import fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from core.settings import Settings, is_loopback, load_settings
from pollers.sources import build_sources

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
ENTRYPOINT_SCRIPT = DEPLOY / "docker-entrypoint.sh"
PIN_SCRIPT = DEPLOY / "pin-base-image.sh"
COMPOSE = DEPLOY / "compose.yaml"
COMPOSE_PG = DEPLOY / "compose.postgres.yaml"
ENV_EXAMPLE = DEPLOY / "notifier.env.example"
UNIT = DEPLOY / "notifier.service"
EXAMPLE_TOML = DEPLOY / "notifier.example.toml"
BICEP = DEPLOY / "azure" / "main.bicep"
RUNBOOK = DEPLOY / "RUNBOOK.md"
STATE_DIR = "/var/lib/ifs-teams-notifier"


# --------------------------------------------------------------------------- parsing helpers

def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, pending = [], ""
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        text = pending + stripped
        pending = ""
        word, _, rest = text.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def dockerfile(name: str) -> list[str]:
    return [args for word, args in dockerfile_instructions() if word == name]


def base_image() -> str:
    """The default of the ARG the FROM line names (an ARG before FROM is the only way to give FROM a value)."""
    [(word, args)] = [i for i in dockerfile_instructions()[:2] if i[0] == "ARG"]
    name, _, value = args.partition("=")
    assert name == "PYTHON_IMAGE" and dockerfile_instructions()[1] == ("FROM", "${PYTHON_IMAGE}")
    return value


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for args in dockerfile("ENV"):
        for pair in shlex.split(args):
            key, _, value = pair.partition("=")
            env[key] = value
    return env


def copies() -> list[tuple[list[str], str]]:
    """COPY sources and destination, flags (--chmod=...) left out."""
    out = []
    for args in dockerfile("COPY"):
        words = [w for w in shlex.split(args) if not w.startswith("--")]
        out.append((words[:-1], words[-1]))
    return out


def env_file(path: Path) -> dict[str, str]:
    pairs = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"not KEY=value: {line!r}"
            pairs[key.strip()] = value.strip()
    return pairs


def unit_entries() -> dict[str, list[tuple[str, str]]]:
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for line in UNIT.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = line.strip("[]")
            sections[current] = []
        else:
            key, _, value = line.partition("=")
            sections[current].append((key.strip(), value.strip()))
    return sections


def unit_value(section: str, key: str) -> list[str]:
    return [v for k, v in unit_entries()[section] if k == key]


def container_command() -> list[str]:
    """ENTRYPOINT + CMD as the image runs them, with the entrypoint script taken from the repository."""
    entrypoint = json.loads(dockerfile("ENTRYPOINT")[-1])
    cmd = json.loads(dockerfile("CMD")[-1])
    sources = {dest: srcs[0] for srcs, dest in copies()}
    script = sources[entrypoint[0]]
    return ["sh", str(ROOT / script), *entrypoint[1:], *cmd]


def base_env() -> dict[str, str]:
    """The test's environment without NOTIFIER settings, with this interpreter first on PATH as `python`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFIER")}
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


def load_yaml(path: Path) -> Any:
    """The YAML the compose recipes are written in: block mappings and sequences, plain and quoted scalars,
    JSON-style flow sequences, comments (no YAML parser is a dependency). Anything else (anchors, block
    scalars, flow mappings) fails the test rather than being misread; every scalar stays a string."""
    lines = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        text, quote = "", None
        for i, ch in enumerate(raw):  # cut a comment: '#' at the start or after a space, outside quotes
            if quote:
                quote = None if ch == quote else quote
            elif ch in "\"'":
                quote = ch
            elif ch == "#" and (i == 0 or raw[i - 1] in " \t"):
                break
            text += ch
        if text.strip():
            assert "\t" not in text[: len(text) - len(text.lstrip())], f"tab indentation: {raw!r}"
            lines.append((len(text) - len(text.lstrip()), text.strip()))

    def scalar(text: str) -> Any:
        assert not text.startswith(("&", "*", "{", "|", ">", "!")), f"outside the supported subset: {text!r}"
        if text.startswith(("\"", "[")):
            return json.loads(text)
        if text.startswith("'"):
            assert text.endswith("'"), text
            return text[1:-1].replace("''", "'")
        return text

    def block(i: int, indent: int) -> tuple[Any, int]:
        if lines[i][1].startswith("- ") or lines[i][1] == "-":
            items = []
            while i < len(lines) and lines[i][0] == indent and lines[i][1].startswith("-"):
                rest = lines[i][1][1:].strip()
                if not rest:
                    value, i = block(i + 1, lines[i + 1][0])
                elif re.match(r"^[\w.-]+:( |$)", rest):  # a mapping item: "- key: value" and keys below it
                    lines[i] = (indent + 2, rest)
                    value, i = block(i, indent + 2)
                else:
                    value, i = scalar(rest), i + 1
                items.append(value)
            return items, i
        mapping: dict[str, Any] = {}
        while i < len(lines) and lines[i][0] == indent:
            match = re.match(r"^(\"[^\"]+\"|[\w.-]+):(?: (.*))?$", lines[i][1])
            assert match, f"not a key: {lines[i][1]!r}"
            key = match.group(1).strip('"')
            assert key not in mapping, f"duplicate key {key}"
            if match.group(2):
                mapping[key], i = scalar(match.group(2).strip()), i + 1
            elif i + 1 < len(lines) and lines[i + 1][0] > indent:
                mapping[key], i = block(i + 1, lines[i + 1][0])
            else:
                mapping[key], i = None, i + 1
        return mapping, i

    value, end = block(0, lines[0][0])
    assert end == len(lines), f"unparsed from: {lines[end]}"
    return value



def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- Dockerfile

def test_every_copy_source_exists_and_keeps_the_repository_layout():
    workdir = dockerfile("WORKDIR")[-1]

    for sources, dest in copies():
        for src in sources:
            assert (ROOT / src).exists(), src
        if not dest.startswith("/"):  # relative to WORKDIR: must mirror the repository, as the tests run it
            assert len(sources) == 1 and (sources[0].rstrip("/") == dest.rstrip("/") or dest == "./"), (sources, dest)
    assert workdir == "/app"


def test_the_build_context_filter_lets_every_copy_source_through():
    rules = [line.strip() for line in (DEPLOY / "Dockerfile.dockerignore").read_text(encoding="utf-8").splitlines()
             if line.strip() and not line.startswith("#")]
    allowed = {r[1:].rstrip("/") for r in rules if r.startswith("!")}

    assert rules[0] == "**"
    assert {src.rstrip("/") for sources, _ in copies() for src in sources} <= allowed


def test_image_is_slim_python_non_root_with_data_volume_port_and_healthcheck():
    env = dockerfile_env()
    user = dockerfile("USER")[-1].split(":")[0]
    uid = re.search(r"useradd .*--uid (\d+)", " ".join(dockerfile("RUN"))).group(1)
    healthcheck = dockerfile("HEALTHCHECK")[-1]

    assert dockerfile("FROM") == ["${PYTHON_IMAGE}"]
    assert re.fullmatch(r"python:3\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", base_image())
    assert user not in ("", "0", "root") and user == uid
    assert any("pip install --no-cache-dir --require-hashes -r requirements.txt" in run for run in dockerfile("RUN"))
    assert json.loads(dockerfile("VOLUME")[-1]) == ["/data"]
    assert dockerfile("EXPOSE") == [env["NOTIFIER__SERVICE__PORT"], env["NOTIFIER__SERVICE__OPS_PORT"]] == ["3978", "3979"]
    assert env["NOTIFIER__SERVICE__HOST"] == "0.0.0.0"
    assert env["NOTIFIER__SERVICE__DATABASE"] == "/data/notifier.sqlite3"
    assert env["NOTIFIER__SERVICE__KEY_FILE"] == "/data/master.key"
    assert "/healthz" in healthcheck and "python" in healthcheck and "curl" not in healthcheck
    assert container_command()[2:] == ["python", "app.py", "serve"]


def test_base_image_python_is_in_the_supported_range():
    python = re.match(r"python:(3\.\d+)-", base_image()).group(1)
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["requires-python"]

    assert SpecifierSet(requires).contains(python + ".0")


def test_pin_base_image_script_writes_the_digest_into_the_arg(tmp_path):
    copy = tmp_path / "Dockerfile"
    copy.write_text(DOCKERFILE.read_text(encoding="utf-8"), encoding="utf-8")
    tag = base_image().partition("@")[0]
    env = base_env() | {"DOCKERFILE": str(copy)}
    first, second = "sha256:" + "ab" * 32, "sha256:" + "cd" * 32

    def pin(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["sh", str(PIN_SCRIPT), *args], env=env, capture_output=True, text=True, timeout=30)

    pinned = pin("--digest", first)
    repinned_text = copy.read_text(encoding="utf-8")
    moved = pin("--digest", second)
    refused = pin("--digest", "sha256:123")

    assert PIN_SCRIPT.stat().st_mode & stat.S_IXUSR
    assert pinned.returncode == 0, pinned.stderr
    assert f"ARG PYTHON_IMAGE={tag}@{first}\n" in repinned_text
    assert moved.returncode == 0 and f"ARG PYTHON_IMAGE={tag}@{second}\n" in copy.read_text(encoding="utf-8")
    assert copy.read_text(encoding="utf-8").count("ARG PYTHON_IMAGE=") == 1
    assert refused.returncode != 0 and "not a sha256 digest" in refused.stderr
    assert copy.read_text(encoding="utf-8").replace(second, "X") == DOCKERFILE.read_text(encoding="utf-8").replace(
        f"ARG PYTHON_IMAGE={base_image()}", f"ARG PYTHON_IMAGE={tag}@X")


def test_pin_base_image_script_without_a_lookup_tool_says_so(tmp_path):
    if shutil.which("crane", path="/usr/bin:/bin") or shutil.which("docker", path="/usr/bin:/bin"):
        pytest.skip("crane or docker is installed: the script would look the digest up in the registry")
    copy = tmp_path / "Dockerfile"
    copy.write_text(DOCKERFILE.read_text(encoding="utf-8"), encoding="utf-8")

    done = subprocess.run(["sh", str(PIN_SCRIPT)], env={"PATH": "/usr/bin:/bin", "DOCKERFILE": str(copy)},
                          capture_output=True, text=True, timeout=30)

    assert done.returncode == 1 and "crane" in done.stderr and "--digest" in done.stderr
    assert copy.read_text(encoding="utf-8") == DOCKERFILE.read_text(encoding="utf-8")


def test_image_environment_is_valid_settings():
    settings = load_settings(env=dockerfile_env())

    assert (settings.service.host, settings.service.port) == ("0.0.0.0", 3978)
    assert settings.service.ops_port == 3979 and not settings.service.ops_host  # same interfaces, own port
    assert not settings.service.dev_mode


def test_entrypoint_script_is_executable_and_valid_sh():
    done = subprocess.run(["sh", "-n", str(ENTRYPOINT_SCRIPT)], capture_output=True, text=True, timeout=10)

    assert ENTRYPOINT_SCRIPT.stat().st_mode & stat.S_IXUSR
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("argv", [["--help"], ["python", "app.py", "--help"]])
def test_entrypoint_runs_app_commands_alone_or_spelled_out(argv):
    done = subprocess.run(["sh", str(ENTRYPOINT_SCRIPT), *argv], cwd=ROOT, env=base_env(),
                          capture_output=True, text=True, timeout=60)

    assert done.returncode == 0, done.stderr
    assert "usage: app.py" in done.stdout and "serve" in done.stdout


# --------------------------------------------------------------------------- the container's command, for real

async def _run(argv: list[str], env: dict[str, str], stdin: bytes | None = None,
               kill_after: float = 60) -> tuple[int | None, str, str]:
    """Exit code (None if it had to be killed after `kill_after` seconds), stdout, stderr."""
    proc = await asyncio.create_subprocess_exec(*argv, cwd=ROOT, env=env, stdin=asyncio.subprocess.PIPE,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    communicate = asyncio.ensure_future(proc.communicate(stdin))
    try:
        out, err = await asyncio.wait_for(asyncio.shield(communicate), timeout=kill_after)
        return proc.returncode, out.decode(), err.decode()
    except TimeoutError:
        proc.kill()
        out, err = await communicate
        return None, out.decode(), err.decode()


def _local_env(tmp_path: Path, port: int) -> dict[str, str]:
    """The image's ENV, pointed at a temporary /data and loopback (development mode: no bot credentials)."""
    return base_env() | dockerfile_env() | {
        "NOTIFIER__SERVICE__HOST": "127.0.0.1",
        "NOTIFIER__SERVICE__PORT": str(port),
        "NOTIFIER__SERVICE__OPS_PORT": str(free_port()),
        "NOTIFIER__SERVICE__DATABASE": str(tmp_path / "data" / "notifier.sqlite3"),
        "NOTIFIER__SERVICE__KEY_FILE": str(tmp_path / "data" / "master.key"),
        "NOTIFIER__SERVICE__DEV_MODE": "true",
        "NOTIFIER__IFS__REALM": "ifs",
    }


async def test_container_command_serves_health_and_readiness_then_stops_cleanly_on_sigterm(tmp_path, ifs):
    port = free_port()
    env = _local_env(tmp_path, port)
    ops_port = env["NOTIFIER__SERVICE__OPS_PORT"]
    for name, value in (("ifs.base_url", ifs.base_url), ("ifs.client_id", "notifier"),
                        ("ifs.client_secret", "notifier-secret")):
        code, out, err = await _run(["sh", str(ENTRYPOINT_SCRIPT), "python", "app.py", "secrets", "set", name],
                                    env, stdin=value.encode() + b"\n")
        assert code == 0 and f"{name} stored" in out, err
    log_path = tmp_path / "serve.log"

    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(*container_command(), cwd=ROOT, env=env,
                                                    stdout=log, stderr=subprocess.STDOUT)
        try:
            health = ready = None
            deadline = time.monotonic() + 60
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=2) as client:
                while time.monotonic() < deadline and proc.returncode is None:
                    try:
                        health = await client.get("/healthz")
                        break
                    except httpx.TransportError:
                        await asyncio.sleep(0.1)
                assert health is not None, log_path.read_text()
                public_ready = await client.get("/readyz")
                public_metrics = await client.get("/metrics")
                ready = await client.get(f"http://127.0.0.1:{ops_port}/readyz")
                metrics = await client.get(f"http://127.0.0.1:{ops_port}/metrics")
            proc.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(proc.wait(), timeout=30)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()

    output = log_path.read_text()
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert ready.status_code == 200 and ready.json()["ready"] and ready.json()["ifs"], ready.text
    assert metrics.status_code == 200 and public_ready.status_code == public_metrics.status_code == 404
    assert code == 0, output
    assert "Traceback" not in output
    messages = [json.loads(line)["message"] for line in output.splitlines() if line.startswith("{")]
    assert any(m.startswith("service started") for m in messages), output


async def test_container_command_without_ifs_secrets_exits_2_naming_the_key(tmp_path):
    code, out, err = await _run(container_command(), _local_env(tmp_path, free_port()), kill_after=10)

    assert "ifs.base_url" in err
    assert code == 2


# --------------------------------------------------------------------------- pinned requirements

def locked(path: Path) -> dict[str, tuple[str, list[str]]]:
    """A pip-compile lock file: {name: (version, hashes)}; fails on a requirement that is not pinned."""
    text = re.sub(r"\\\n", " ", path.read_text(encoding="utf-8"))
    out = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        spec, *options = re.split(r"\s+(?=--)", line)
        req = Requirement(spec)
        [pin] = list(req.specifier)
        assert pin.operator == "==" and not req.marker, line
        name = canonicalize_name(req.name)
        assert name not in out, name
        out[name] = (pin.version, [o.removeprefix("--hash=") for o in options if o.startswith("--hash=")])
        assert len(out[name][1]) == sum(o.startswith("--hash=") for o in options) == len(options), line
    return out


def direct(path: Path) -> dict[str, Requirement]:
    reqs = [Requirement(line.split("#", 1)[0]) for line in path.read_text(encoding="utf-8").splitlines()
            if line.split("#", 1)[0].strip() and not line.startswith("-")]
    return {canonicalize_name(r.name): r for r in reqs}


@pytest.mark.parametrize("name", ["requirements.txt", "requirements-dev.txt"])
def test_every_locked_package_is_pinned_with_sha256_hashes(name):
    packages = locked(ROOT / name)

    assert len(packages) > 30
    for package, (_, hashes) in packages.items():
        assert hashes and all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in hashes), package
    assert "pip-compile with Python 3.11" in (ROOT / name).read_text(encoding="utf-8")


def test_dev_lock_holds_the_service_lock_at_the_same_versions_and_hashes():
    service, dev = locked(ROOT / "requirements.txt"), locked(ROOT / "requirements-dev.txt")

    assert {k: dev.get(k) for k in service} == service
    for tool in direct(ROOT / "requirements-dev.in"):
        assert tool in dev, tool


def test_direct_dependencies_agree_across_in_files_lock_files_and_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    ranges = {canonicalize_name(r.name): r.specifier for r in map(Requirement, project["dependencies"])}
    dev_ranges = {canonicalize_name(r.name): r.specifier
                  for r in map(Requirement, project["optional-dependencies"]["dev"])}
    for in_file, lock, declared in (("requirements.in", "requirements.txt", ranges),
                                    ("requirements-dev.in", "requirements-dev.txt", dev_ranges)):
        pins = direct(ROOT / in_file)
        versions = locked(ROOT / lock)
        assert set(pins) == set(declared), in_file
        for name, req in pins.items():
            assert req.specifier.contains(versions[name][0]), (name, versions[name][0])
            assert declared[name].contains(versions[name][0]), (name, str(declared[name]))
    assert "pip-compile --generate-hashes" in (ROOT / "requirements.in").read_text(encoding="utf-8")
    assert "see requirements.in for the command" in (ROOT / "requirements-dev.in").read_text(encoding="utf-8")


def test_make_ci_and_the_runbook_install_with_hashes_and_make_runs_the_tests():
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    runbook_installs = re.findall(r"^.*pip install .*$", RUNBOOK.read_text(encoding="utf-8"), re.M)

    assert runbook_installs and all("--require-hashes -r " in line for line in runbook_installs), runbook_installs
    assert re.search(r"pip install .*--require-hashes -r requirements-dev\.txt", makefile)
    assert re.search(r"^test: \$\(VENV\)/\.installed$", makefile, re.M)
    assert re.search(r"^(timeout [-\w= ]+ )?make test$", ci, re.M)  # the README's test command, bounded


# --------------------------------------------------------------------------- compose and env file

def test_compose_builds_the_dockerfile_from_the_repository_root_with_a_named_data_volume():
    text = COMPOSE.read_text(encoding="utf-8")
    context = re.search(r"^\s+context:\s*(\S+)", text, re.M).group(1)
    dockerfile_path = re.search(r"^\s+dockerfile:\s*(\S+)", text, re.M).group(1)
    env_file_path = re.search(r"^\s+- path:\s*(\S+)", text, re.M).group(1)

    assert (DEPLOY / context).resolve() == ROOT
    assert (DEPLOY / context / dockerfile_path).resolve() == DOCKERFILE
    assert env_file_path == "./notifier.env" and "required: false" in text
    assert (DEPLOY / (env_file_path.removeprefix("./") + ".example")).is_file()
    assert re.search(r"^\s+- notifier-data:/data\s*$", text, re.M)
    published = re.findall(r'^\s+- "([\d.]+):(\d+):(\d+)"', text, re.M)
    assert published == [("127.0.0.1", "3978", "3978"), ("127.0.0.1", "3979", "3979")]  # ops: this host only
    assert re.search(r"^volumes:\s*\n\s+notifier-data:", text, re.M)


def test_compose_environment_agrees_with_the_image():
    text = COMPOSE.read_text(encoding="utf-8")
    compose_env = dict(re.findall(r"^\s+(NOTIFIER__\w+):\s*\"?([^\"\n]*)\"?\s*$", text, re.M))
    image_env = dockerfile_env()

    assert compose_env
    assert all(image_env[k] == v for k, v in compose_env.items())


def _notifiers(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in compose["services"].items() if svc.get("image", "").startswith("ifs-teams-notifier")}


def test_compose_postgres_runs_two_replicas_on_a_healthy_postgres_with_its_own_volume():
    compose = load_yaml(COMPOSE_PG)
    postgres, notifiers = compose["services"]["postgres"], _notifiers(compose)
    health = " ".join(postgres["healthcheck"]["test"])

    assert set(compose["services"]) == {"postgres", *notifiers} and len(notifiers) == 2
    assert "pg_isready" in health and "-U notifier" in health and "-d notifier" in health
    assert postgres["volumes"] == ["postgres-data:/var/lib/postgresql/data"] and "postgres-data" in compose["volumes"]
    assert "ports" not in postgres  # reached on the project's network only
    names = set()
    for name, svc in notifiers.items():
        env = svc["environment"]
        database = urlsplit(env["NOTIFIER__SERVICE__DATABASE"])
        assert database.scheme == "postgresql" and database.hostname == "postgres" and database.password is None
        assert (database.username, database.path) == (postgres["environment"]["POSTGRES_USER"],
                                                     "/" + postgres["environment"]["POSTGRES_DB"])
        assert svc["depends_on"] == {"postgres": {"condition": "service_healthy"}}, name
        assert (DEPLOY / svc["build"]["context"] / svc["build"]["dockerfile"]).resolve() == DOCKERFILE
        names.add(env["NOTIFIER__SERVICE__REPLICA_NAME"])
        assert svc["env_file"] == [{"path": "./notifier.env", "required": "false"}]
        settings = load_settings(env=dockerfile_env() | env)  # what the replica's container starts with
        assert settings.service.replica_name == env["NOTIFIER__SERVICE__REPLICA_NAME"]
    assert len(names) == 2


def test_compose_postgres_replicas_differ_only_in_name_and_published_port():
    notifiers = list(_notifiers(load_yaml(COMPOSE_PG)).values())
    first, second = ({k: v for k, v in svc.items() if k != "ports"} for svc in notifiers)
    for svc in (first, second):
        svc["environment"] = {k: v for k, v in svc["environment"].items() if k != "NOTIFIER__SERVICE__REPLICA_NAME"}

    assert first == second
    published = [p for svc in notifiers for p in svc["ports"]]
    assert published == ["127.0.0.1:3978:3978", "127.0.0.1:3988:3978"]  # loopback: the reverse proxy's


def test_compose_postgres_keeps_the_ops_port_internal_and_secrets_out_of_the_file():
    compose = load_yaml(COMPOSE_PG)
    text = COMPOSE_PG.read_text(encoding="utf-8")
    image_env = dockerfile_env()
    ops = image_env["NOTIFIER__SERVICE__OPS_PORT"]

    for name, svc in _notifiers(compose).items():
        env = svc["environment"]
        assert env["NOTIFIER__SERVICE__OPS_PORT"] == ops and svc["expose"] == [ops], name
        assert not [p for p in svc["ports"] if p.rsplit(":", 1)[1] == ops], name  # never published
        assert env["PGPASSFILE"] == "/run/secrets/notifier_pgpass" and "notifier_pgpass" in svc["secrets"]
        assert env["NOTIFIER__SERVICE__KEY_FILE"] == "/run/secrets/master_key" and "master_key" in svc["secrets"]
        assert {k: v for k, v in env.items() if k in image_env and k.startswith("NOTIFIER__SERVICE__")
                and not k.endswith(("DATABASE", "KEY_FILE"))} == {
            k: image_env[k] for k in ("NOTIFIER__SERVICE__HOST", "NOTIFIER__SERVICE__PORT",
                                      "NOTIFIER__SERVICE__OPS_PORT")}
    assert compose["services"]["postgres"]["environment"]["POSTGRES_PASSWORD_FILE"] == "/run/secrets/postgres_password"
    for service in compose["services"].values():
        for key, value in service["environment"].items():
            if re.search(r"PASSWORD|SECRET|TOKEN|MASTER_KEY|PGPASS", key):
                assert value.startswith("/run/secrets/"), key  # a file given as a secret, never the value
    for secret, spec in compose["secrets"].items():
        assert set(spec) == {"file"}, secret
        ignored = subprocess.run(["git", "check-ignore", "-q", str(DEPLOY / spec["file"])], cwd=ROOT)
        assert ignored.returncode == 0, f"{spec['file']} is not ignored by git"
    assert not re.search(r"[0-9a-f]{32}", text) and not re.search(r"[A-Za-z0-9_-]{43}=", text)


def test_compose_files_parse_as_the_subset_and_the_sqlite_one_stays_single():
    compose = load_yaml(COMPOSE)

    assert list(compose["services"]) == ["notifier"]
    assert compose["services"]["notifier"]["environment"]["NOTIFIER__SERVICE__DATABASE"] == "/data/notifier.sqlite3"
    assert "deploy" not in compose["services"]["notifier"]  # no replicas: one process per SQLite file


def test_env_example_loads_with_the_image_settings():
    settings = load_settings(env=dockerfile_env() | env_file(ENV_EXAMPLE))

    assert settings.service.public_url.startswith("https://")
    assert settings.ifs.realm


def test_env_example_holds_no_secret_values():
    pairs = env_file(ENV_EXAMPLE)
    text = ENV_EXAMPLE.read_text(encoding="utf-8")

    assert all(k.startswith("NOTIFIER__") for k in pairs)
    assert not [k for k in pairs if re.search(r"SECRET|PASSWORD|TOKEN|MASTER_KEY|CLIENT_ID|APP_ID", k)]
    assert not re.search(r"^\s*NOTIFIER_MASTER_KEY\s*=", text, re.M)
    assert not re.search(r"[A-Za-z0-9_-]{43}=", text)  # a Fernet key
    assert not re.search(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", text, re.I)


# --------------------------------------------------------------------------- systemd and the example TOML

def test_systemd_unit_runs_the_service_as_a_dedicated_user_with_hardening():
    service = dict(unit_entries()["Service"])

    assert service["User"] not in ("", "root") and service["Group"]
    assert service["WorkingDirectory"] == "/opt/ifs-teams-notifier"
    assert service["ExecStart"] == "/opt/ifs-teams-notifier/.venv/bin/python app.py serve"
    assert (ROOT / service["ExecStart"].split()[1]).is_file()
    assert "NOTIFIER_CONFIG=/etc/ifs-teams-notifier/notifier.toml" in unit_value("Service", "Environment")
    for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ReadWritePaths": STATE_DIR,
                       "PrivateTmp": "yes", "Restart": "on-failure", "RestartPreventExitStatus": "2",
                       "KillSignal": "SIGTERM"}.items():
        assert service.get(key) == value, key
    assert unit_value("Install", "WantedBy") == ["multi-user.target"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_unit_passes_systemd_analyze_verify(tmp_path):
    # ExecStart must exist for verify; everything else is checked as written
    unit = tmp_path / "ifs-teams-notifier.service"
    unit.write_text(re.sub(r"^ExecStart=.*$", "ExecStart=/bin/true", UNIT.read_text(encoding="utf-8"), flags=re.M))

    done = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)

    assert done.returncode == 0, done.stdout + done.stderr


def test_example_toml_is_a_complete_production_config_that_loads():
    raw = tomllib.loads(EXAMPLE_TOML.read_text(encoding="utf-8"))

    settings = load_settings(EXAMPLE_TOML, env={})
    build_sources(settings.sources)

    sections = {name: tp for name, tp in typing.get_type_hints(Settings).items() if name not in ("sources", "path")}
    for section, cls in sections.items():
        assert set(raw[section]) == {f.name for f in fields(cls)}, section
    assert settings.service.host == "0.0.0.0" and not is_loopback(settings.service.host)
    assert is_loopback(settings.service.ops_host) and settings.service.ops_port not in (0, settings.service.port)
    assert settings.service.audit_retention_days >= 1 and settings.service.min_free_disk_mb > 0
    assert not settings.service.dev_mode
    assert settings.service.public_url.startswith("https://")
    assert settings.ifs.realm
    for path in (settings.service.database, settings.service.key_file):
        assert path.startswith(STATE_DIR + "/")


# --------------------------------------------------------------------------- Azure (Bicep: read, not deployed)

def _bicep_code() -> str:
    """The template's code outside strings and comments (string contents dropped), to check brackets."""
    text, out, i = BICEP.read_text(encoding="utf-8"), [], 0
    while i < len(text):
        if text.startswith("//", i):
            end = text.find("\n", i)
            i = len(text) if end < 0 else end
        elif text.startswith("/*", i):
            i = text.index("*/", i) + 2
        elif text[i] == "'":
            i += 1
            while text[i] != "'":
                i += 2 if text[i] == "\\" else 1
            i += 1
            out.append("''")
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def test_bicep_brackets_balance():
    code, stack = _bicep_code(), []
    pairs = {")": "(", "]": "[", "}": "{"}

    for ch in code:
        if ch in "([{":
            stack.append(ch)
        elif ch in pairs:
            assert stack and stack.pop() == pairs[ch]
    assert stack == []
    assert "param masterKey string" in code and "'" not in code.replace("''", "")


def test_bicep_wires_bot_key_vault_key_and_data_share_as_the_image_expects():
    text = BICEP.read_text(encoding="utf-8")
    uid = dockerfile("USER")[-1].split(":")[0]

    assert "'Microsoft.BotService/botServices@" in text and "'Microsoft.BotService/botServices/channels@" in text
    assert "channelName: 'MsTeamsChannel'" in text
    assert re.search(r"endpoint: 'https://\$\{publicHost\}/api/messages'", text)
    assert re.search(r"msaAppType: botAppType", text) and "'SingleTenant'" in text and "'UserAssignedMSI'" in text
    assert re.search(r"name: 'NOTIFIER_MASTER_KEY'\s+secretRef: 'master-key'", text)
    assert re.search(r"name: 'master-key'\s+keyVaultUrl: ", text) and "identity: identity.id" in text
    assert "'Microsoft.KeyVault/vaults/secrets@" in text and "@secure()\nparam masterKey string" in text
    assert re.search(r"mountPath: '/data'", text) and "storageType: 'AzureFile'" in text
    assert f"uid={uid},gid={uid}" in text and "file_mode=0600" in text
    assert re.search(r"var containerPort = (\d+)", text).group(1) == dockerfile("EXPOSE")[0]
    assert "path: '/healthz'" in text


def _bicep_resource(text: str, symbol: str) -> str:
    """A resource's declaration line and body (up to the next top-level closing brace)."""
    return re.search(rf"^resource {symbol} '[^']+' = [^\n]*\{{\n.*?^\}}", text, re.M | re.S).group(0)


def test_bicep_runs_two_replicas_on_a_postgres_flexible_server_and_one_on_sqlite():
    text = BICEP.read_text(encoding="utf-8")
    server = _bicep_resource(text, "postgres")
    scale = re.search(r"scale: \{(.*?)\}", text, re.S).group(1)

    assert re.search(r"^param database string = 'postgresql'$", text, re.M)
    assert re.search(r"@allowed\(\[\s+'postgresql'\s+'sqlite'\s+\]\)\nparam database ", text)
    assert "var onPostgres = database == 'postgresql'" in text
    assert "var replicas = onPostgres ? 2 : 1" in text
    assert re.search(r"minReplicas: replicas\s+maxReplicas: replicas", scale)
    assert server.startswith("resource postgres 'Microsoft.DBforPostgreSQL/flexibleServers@")
    assert "= if (onPostgres) {" in server and "version: '16'" in server and "administratorLogin: postgresUser" in server
    assert "'Microsoft.DBforPostgreSQL/flexibleServers/databases@" in _bicep_resource(text, "postgresDb")
    assert "parent: postgres" in _bicep_resource(text, "postgresFromAzure")
    for symbol in ("storage", "fileService", "dataShare", "environmentStorage"):  # the share: SQLite only
        assert "= if (!onPostgres) {" in _bicep_resource(text, symbol).splitlines()[0], symbol
    assert "volumeMounts: onPostgres ? [] : [" in text and "volumes: onPostgres ? [] : [" in text
    assert "SQLite's locks do not work across SMB" in text and "never more than one replica" in text


def test_bicep_takes_the_postgres_password_as_a_secure_parameter_into_key_vault_only():
    text = BICEP.read_text(encoding="utf-8")
    url = re.search(r"^var databaseUrl = (.*)$", text, re.M).group(1)
    uses = [line.strip() for line in text.splitlines()
            if re.search(r"\bpostgresPassword\b", line) and not line.lstrip().startswith("//")]

    assert "@secure()\nparam postgresPassword string = ''" in text
    # declared, written to Key Vault and given to the server on creation; nowhere else (no env, no output)
    assert uses == ["param postgresPassword string = ''",
                    "resource postgresPasswordSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (onPostgres"
                    " && !empty(postgresPassword)) {",
                    "value: postgresPassword",
                    "}, empty(postgresPassword) ? {} : {",
                    "administratorLoginPassword: postgresPassword"], uses
    assert url.startswith("onPostgres ? 'postgresql://${postgresUser}@${postgres.properties.fullyQualifiedDomainName}")
    assert "sslmode=require" in url and ":5432/" in url
    assert re.search(r"name: 'NOTIFIER__SERVICE__DATABASE'\s+value: databaseUrl", text)
    assert re.search(r"name: 'PGPASSWORD'\s+secretRef: 'postgres-password'", text)
    assert re.search(r"name: 'postgres-password'\s+keyVaultUrl: '\$\{vault.properties.vaultUri\}secrets/"
                     r"\$\{postgresSecretName\}'\s+identity: identity.id", text)
    assert not re.search(r"^output .*[Pp]assword", text, re.M)


def test_bicep_parameters_are_documented():
    blocks = BICEP.read_text(encoding="utf-8").split("\n\n")

    params = [b for b in blocks if re.search(r"^param ", b, re.M)]
    assert len(params) >= 8
    assert all("@description(" in b for b in params), [b for b in params if "@description(" not in b]


# --------------------------------------------------------------------------- cross references

@pytest.mark.parametrize("path", [DOCKERFILE, COMPOSE, COMPOSE_PG, ENV_EXAMPLE, UNIT, EXAMPLE_TOML, BICEP, RUNBOOK,
                                  ENTRYPOINT_SCRIPT])
def test_every_repository_file_a_recipe_names_exists(path):
    text = path.read_text(encoding="utf-8")

    named = set(re.findall(r"(?<![\w/.])((?:deploy|tests|manifest)/[\w./-]*\w)", text))
    assert all((ROOT / p).exists() for p in named), sorted(p for p in named if not (ROOT / p).exists())


def test_runbook_covers_the_path_from_registration_to_status():
    text = RUNBOOK.read_text(encoding="utf-8")

    for needle in ("SingleTenant", "Azure Bot", "secrets set ifs.client_secret", "secrets set bot.app_id",
                   "Service Accounts Enabled", "20 characters", "PurchaseOrderHandling",
                   "ManualSupplierInvoiceHandling", "ApproveVouchersHandling", "CONNECT", "Allowed Companies",
                   "python app.py check", "manifest build", "Upload a custom app", "link company 10", "status",
                   "rotate-key", "backup", "AADSTS700016", "BotNotInConversationRoster", "server_state_filter = false",
                   "MessageSizeTooBig", "Clock skew"):
        assert needle in text, needle


def test_bicep_keeps_readiness_and_metrics_off_the_public_ingress():
    text = BICEP.read_text(encoding="utf-8")
    ops = re.search(r"var opsPort = (\d+)", text).group(1)
    ingress = re.search(r"ingress: \{(.*?)\n      \}", text, re.S).group(1)

    assert ops == dockerfile_env()["NOTIFIER__SERVICE__OPS_PORT"] == dockerfile("EXPOSE")[1]
    assert re.search(r"external: true\s+targetPort: containerPort", ingress)
    assert re.search(r"additionalPortMappings: \[\s+\{\s+external: false\s+targetPort: opsPort", ingress)
    assert "type: 'Readiness'" not in text  # see the template: an IFS outage must not take the bot off ingress
    assert "output opsEndpoint string = 'http://${appName}:${opsPort}'" in text


def test_runbook_names_the_ops_port_and_the_new_refusals():
    text = RUNBOOK.read_text(encoding="utf-8")

    for needle in ("service.ops_port", "3979", "audit_retention_days", "min_free_disk_mb",
                   "does not decrypt the stored secret", "cannot listen on", "cannot be used", "changed to 600"):
        assert needle in text, needle


def test_runbook_covers_fail_over_upgrades_moving_and_postgres_backups():
    text = RUNBOOK.read_text(encoding="utf-8")

    for needle in ("## Fail-over", "## Rolling upgrade", "## Moving from SQLite to PostgreSQL", "leader_takeover_seconds",
                   "leadership acquired", "audit --category lifecycle", "forward-only", "under a lock",
                   "one at a time", "migrate-store", "same master key", "PGPASSFILE", "pg_restore",
                   "compose.postgres.yaml", "database=sqlite", "SMB"):
        assert needle in text, needle


def test_the_pg_dump_command_of_the_runbook_and_readme_is_the_one_backup_prints():
    from store.pg import pg_dump_command

    printed = pg_dump_command("postgresql://notifier:pw@db:5432/notifier", "x.dump")
    options = re.findall(r"(?<!\S)--[\w-]+", printed)
    for path in (RUNBOOK, ROOT / "README.md"):
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()
                 if line.strip().startswith("pg_dump ")]
        assert lines, path
        for line in lines:
            assert re.findall(r"(?<!\S)--[\w-]+", line) == options, (path, line)
    assert printed.startswith("pg_dump ") and options == ["--format", "--file", "--dbname"]
    assert "pw" not in printed and "--dbname=postgresql://notifier@db:5432/notifier" in printed
