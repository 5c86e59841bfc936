"""Local demo: IFS simulator + bot + poller + worker, with the Agents Playground or the connector stand-in."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import sys
from pathlib import Path

import httpx

from core.people import Person
from core.settings import load_settings
from pollers.tenant import discover, render
from service import Credentials, build_service, make_ifs_client
from simulator.connector import ConnectorStandIn
from simulator.ifs import IfsSimulator, run_generator
from simulator.ifs_fakedata import USERS
from simulator.teams_client import channel_message
from store.unit import Store

PLAYGROUND_PORT = 56150
DEMO_CHANNEL = "19:demo-procurement@thread.tacv2"
DEMO_TEAM = "19:demo-team@thread.tacv2"


def demo_config(data_dir: Path, poll_seconds: float) -> Path:
    data_dir.mkdir(parents=True, exist_ok=True)
    cfg = data_dir / "demo.toml"
    cfg.write_text(f"""# written by `python app.py demo`; safe to delete
[service]
host = "127.0.0.1"
port = 3978
database = "{data_dir / 'notifier.sqlite3'}"
key_file = "{data_dir / 'master.key'}"
dev_mode = true

[ifs]
realm = "demo"

[schedule]
every_minutes = {poll_seconds / 60.0}

[delivery]
digest_threshold = 10
""")
    return cfg


async def start_playground(workdir: Path) -> asyncio.subprocess.Process | None:
    npx = shutil.which("npx")
    if npx is None:
        return None
    env = dict(os.environ, TEAMSAPPTESTER_BROWSER="none", BOT_ENDPOINT="http://127.0.0.1:3978/api/messages",
               DEFAULT_CHANNEL_ID="msteams", TEAMSAPPTESTER_PORT=str(PLAYGROUND_PORT))
    try:
        proc = await asyncio.create_subprocess_exec(
            npx, "--yes", "@microsoft/m365agentsplayground", "start", "-e", "http://127.0.0.1:3978/api/messages",
            "-c", "msteams", "-p", str(PLAYGROUND_PORT), "--disable-telemetry", env=env, cwd=workdir,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL, start_new_session=True)
    except OSError:
        return None
    async with httpx.AsyncClient() as client:
        for _ in range(240):  # first run downloads the package
            if proc.returncode is not None:
                return None
            with contextlib.suppress(httpx.HTTPError):
                await client.get(f"http://127.0.0.1:{PLAYGROUND_PORT}/", timeout=1.0)
                return proc
            await asyncio.sleep(0.5)
    proc.terminate()
    return None


async def console(base_url: str, connector: ConnectorStandIn, interactive: bool) -> None:
    """A one-channel chat with the bot, for machines without the Playground."""
    async def say(text: str) -> None:
        before = len(connector.accepted)
        async with httpx.AsyncClient() as client:
            await client.post(f"{base_url}/api/messages",
                              json=channel_message(text, connector.service_url, channel=DEMO_CHANNEL, team=DEMO_TEAM))
        for acc in connector.accepted[before:]:
            if acc.op == "reply":
                print("bot>", acc.activity.get("text") or _fallback(acc.activity))

    await say("help")
    if not interactive:
        print("you> link company 10")
        await say("link company 10")
        return
    print("Type commands for the bot (for example: link company 10, status, audit). Ctrl-D to stop typing.")
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            return
        if line.strip():
            await say(line.strip())


def _fallback(activity: dict) -> str:
    for att in activity.get("attachments") or []:
        return (att.get("content") or {}).get("fallbackText") or "(card)"
    return ""


async def discovered_sources(settings, secrets: dict[str, str]) -> str:
    """What `discover` proposes for the simulator's tenant, as TOML (the demo of a non-default profile)."""
    creds = Credentials(secrets["ifs.base_url"], secrets["ifs.client_id"], secrets["ifs.client_secret"], "", "", "")
    client = make_ifs_client(settings, creds, quick=True)
    try:
        proposals = await discover(client, company="10", progress=lambda line: print(f"discover: {line}"))
    finally:
        await client.aclose()
    return render(proposals)


# The Agents Playground's own user; every simulated IFS approver is mapped to it, so that the channel cards
# mention "Alex Wilber" where the next step waits (`link me <IFS user>` in a personal chat does the same).
DEMO_TEAMS_USER = ("Alex Wilber", "00000000-0000-0000-0000-0000000000020")


async def map_demo_approvers(service) -> None:
    name, object_id = DEMO_TEAMS_USER
    async with Store(service.db).unit() as u:
        for user in USERS:
            await u.people.put(Person(ifs_user=user, name=name, aad_object_id=object_id, created_by="demo"))
    print(f"people              : the simulated approvers ({', '.join(USERS[:3])}, ...) are mapped to {name}")


async def run_demo(args: argparse.Namespace) -> int:
    data_dir = Path(args.data_dir)
    config = demo_config(data_dir, args.poll_seconds)
    settings = load_settings(config, env=os.environ)
    sim = IfsSimulator(realm="demo", profile=args.profile)
    ifs_url = await sim.start()
    for vendor, amount in (("Nordic Steel AB", 12500), ("Acme Fasteners Ltd", 830.4), ("Bolt & Nut GmbH", 56000)):
        fields = {"VendorName": vendor} if sim.profile.field("order", "VendorName") else {}
        sim.add_order(company="10", GrossAmtCurr=amount, **fields)
    if args.profile != "default":  # the tenant names things its own way: let discover find them, as a user would
        with config.open("a", encoding="utf-8") as f:
            f.write("\n" + await discovered_sources(settings, sim.vault_secrets()))
        settings = load_settings(config, env=os.environ)
        print(f"IFS tenant profile  : {args.profile}; the [sources.*] that discover proposed are in {config}")
    generator = asyncio.create_task(run_generator(sim, 20.0, kind="order", company="10"))
    service = await build_service(settings, sim.vault_secrets())
    db = service.db
    await map_demo_approvers(service)
    await service.start()
    print(f"IFS Cloud simulator : {ifs_url}  (admin API: {ifs_url}/_sim/stats)")
    print(f"bot                 : {service.base_url}/api/messages  (health: {service.base_url}/healthz)")
    playground = None if args.no_playground else await start_playground(data_dir)
    connector = None
    chat = None
    if playground is not None:
        print(f"Teams (Playground)  : http://localhost:{PLAYGROUND_PORT}  - in a channel, type: @bot link company 10")
    else:
        connector = ConnectorStandIn(print_cards=True)
        url = await connector.start(port=3979)
        print(f"Teams (stand-in)    : {url}  - cards print below as they arrive")
        chat = asyncio.create_task(console(service.base_url, connector, sys.stdin.isatty()))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        if args.duration:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), args.duration)
        else:
            await stop.wait()
    finally:
        for task in (generator, chat):
            if task is not None:
                task.cancel()
        await service.stop()
        await db.close()
        await sim.stop()
        if connector is not None:
            await connector.stop()
        if playground is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(playground.pid, signal.SIGTERM)
    return 0
