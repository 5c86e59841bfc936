"""Composition root and command line: settings, store, IFS client, scheduler, bot web app, delivery worker."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import logging
import os
import sys
import threading
import tomllib
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from bot.bindings_io import export_bindings, import_bindings
from bot.people_io import export_people, import_people
from core import runtime
from core.errors import ConfigError, NotifierError
from core.settings import Settings, load_settings
from manifest.build import build_package
from pollers.sources import build_sources
from pollers.tenant import TenantSchema, check_source, connection_problem, discover, render, toml_value
from service import (  # noqa: F401 - re-exported: app.build_service, app.Service ... for scripts and tests
    VERSION,
    Credentials,
    Service,
    build_service,
    load_credentials,
    make_ifs_client,
    open_store,
    opened_store,
    run_until_signalled,
)
from store.audit import AuditLog
from store.bindings import Bindings
from store.db import DB_ERRORS, is_server_url
from store.outbox import Outbox
from store.pg import backup_advice
from store.transfer import transfer
from store.vault import KNOWN_SECRETS

log = logging.getLogger("notifier")



# --------------------------------------------------------------------------- logging

class JsonFormatter(logging.Formatter):
    KEYS = ("company", "source", "record", "delivery", "command", "channel")

    def format(self, record: logging.LogRecord) -> str:
        out = {"at": round(record.created, 3), "level": record.levelname, "logger": record.name,
               "message": record.getMessage()}
        for k in self.KEYS:
            if hasattr(record, k):
                out[k] = getattr(record, k)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging(settings: Settings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if settings.service.log_format == "json"
                         else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.service.log_level.upper())
    for noisy in ("httpx", "httpcore", "msal", "msrest", "urllib3", "apscheduler", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


# --------------------------------------------------------------------------- CLI commands

# After a clean stop, how long the process may take to exit: a worker thread blocked in a network call that
# has no timeout (botbuilder's and MSAL's `requests`) would otherwise keep the interpreter waiting for it.
EXIT_GRACE_SECONDS = 10.0


async def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    service = await build_service(settings)
    runtime.settle()
    await run_until_signalled(service)
    exit_when_stuck(EXIT_GRACE_SECONDS)
    return 0


def exit_when_stuck(grace: float) -> None:
    """Everything is stopped and written: if the process has not exited `grace` seconds from now, the threads
    still running are named in the log and it exits anyway, with status 0."""
    def leave() -> None:
        stuck = [t.name for t in threading.enumerate() if t is not threading.current_thread()
                 and t is not threading.main_thread() and t.is_alive() and not t.daemon]
        log.warning("stopped, but %d worker thread(s) are still waiting on the network (%s): exiting without"
                    " them", len(stuck), ", ".join(stuck) or "none")
        logging.shutdown()
        os._exit(0)

    timer = threading.Timer(grace, leave)
    timer.daemon = True  # a process that exits in time takes it along
    timer.start()


async def cmd_poll(settings: Settings, args: argparse.Namespace) -> int:
    service = await build_service(settings)
    try:
        results = await service.poll_once()
        if args.deliver:
            await service.worker.run_once()
        for r in results:
            print(f"{r.kind.value:8} company {r.company:6} {'ok' if r.ok else 'FAILED':6} rows={r.rows} pending={r.pending}"
                  f" new={r.new} changed={r.changed} resolved={r.resolved} bad={r.bad} deliveries={r.deliveries}"
                  f" {r.seconds:.2f}s" + (f" error: {r.error}" if r.error else ""))
        if not results:
            print("nothing to poll: no channel is linked to a company yet (link one in Teams, or `bindings import`)")
        return 0 if all(r.ok for r in results) else 1
    finally:
        await service.ifs.aclose()
        await service.db.close()


async def cmd_check(settings: Settings, args: argparse.Namespace) -> int:
    """Token, then per enabled source: names against $metadata and the poll's own queries. Exit 1 on any FAIL."""
    async with opened_store(settings) as (db, vault):
        creds = await load_credentials(settings, vault)
        companies = await Bindings(db).companies()
    try:
        client = make_ifs_client(settings, creds, quick=True)
    except ConfigError as exc:
        print(f"FAIL {exc.key}: {exc.problem}")
        return 1
    ok = True
    try:
        try:
            await client.ensure_token()
        except NotifierError as exc:
            print("FAIL " + connection_problem(exc, base_url=creds.ifs_base_url, realm=settings.ifs.realm))
            return 1
        print(f"ok   token from {creds.ifs_base_url}/auth/realms/{settings.ifs.realm}")
        sources = build_sources(settings.sources)
        schema = TenantSchema(client, sources, log_problems=False)
        company = args.company or (companies[0] if companies else None)
        for kind, spec in sources.items():
            if not spec.enabled:
                print(f"skip {kind.plural}: enabled = false")
                continue
            try:
                lines = await check_source(client, schema, kind, company, use_select=settings.ifs.select)
            except NotifierError as exc:
                lines = [("FAIL", connection_problem(exc, base_url=creds.ifs_base_url, realm=settings.ifs.realm))]
            for level, text in lines:
                print(f"{level:4} {text}")
                ok = ok and level != "FAIL"
    finally:
        await client.aclose()
    if not creds.bot_app_id:
        print("warn bot.app_id not set: only development mode (auth off, loopback) will start")
    return 0 if ok else 1


async def cmd_discover(settings: Settings, args: argparse.Namespace) -> int:
    """Propose [sources.*] for this tenant from its catalogue and $metadata; --write FILE for review."""
    async with opened_store(settings) as (db, vault):
        creds = await load_credentials(settings, vault)
    try:
        client = make_ifs_client(settings, creds, quick=True)
    except ConfigError as exc:
        print(f"error: {exc.key}: {exc.problem}", file=sys.stderr)
        return 1
    try:
        try:
            await client.ensure_token()
            progress = (lambda line: print(line, file=sys.stderr)) if args.write else print
            proposals = await discover(client, company=args.company, progress=progress)
        except NotifierError as exc:
            print("error: " + connection_problem(exc, base_url=creds.ifs_base_url, realm=settings.ifs.realm),
                  file=sys.stderr)
            return 1
    finally:
        await client.aclose()
    header = (f"# Proposed by `app.py discover` from {creds.ifs_base_url} on {datetime.now().date()}.\n"
              "# Review each choice (comments say why; `# guess` marks what nothing matched well), then run\n"
              "# `python app.py --config THIS_FILE check`.\n")
    text = render(proposals)
    if not args.write:
        print(header + "\n" + text)
        return 0
    base = settings_toml(settings)
    try:
        with open(args.write, "x" if not args.force else "w", encoding="utf-8") as f:
            f.write(header + "\n" + base + text)
    except FileExistsError:
        print(f"error: {args.write} exists (use --force to replace it)", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: cannot write {args.write}: {exc.strerror}", file=sys.stderr)
        return 1
    print(f"wrote {args.write}: review it, then `python app.py --config {args.write} check`", file=sys.stderr)
    return 0


def settings_toml(settings: Settings) -> str:
    """The sections of the settings file in use other than [sources.*], so a written proposal is a whole config."""
    if not settings.path:
        return ""
    with open(settings.path, "rb") as f:
        raw = tomllib.load(f)
    out = []
    for section, table in raw.items():
        if section == "sources" or not isinstance(table, dict):
            continue
        out.append(f"[{section}]")
        out += [f"{k} = {toml_value(v)}" for k, v in table.items()]
        out.append("")
    return "\n".join(out) + "\n"


async def cmd_audit(settings: Settings, args: argparse.Namespace) -> int:
    async with opened_store(settings, keys=False) as (db, _vault):
        entries = await AuditLog(db).recent(limit=args.last, failed_only=args.failed, category=args.category)
        entries.reverse()
        if args.json:
            print(json.dumps([e.to_dict() for e in entries], indent=1, default=str))
        else:
            for e in entries:
                when = datetime.fromtimestamp(e.at).strftime("%Y-%m-%d %H:%M:%S")
                print(f"{when} #{e.id:<6} {e.category:9} {e.action:28} {e.outcome:8} "
                      f"{e.channel_id or '':30.30} {json.dumps(e.detail, default=str)[:160]}")
        return 0


async def cmd_secrets(settings: Settings, args: argparse.Namespace) -> int:
    async with opened_store(settings) as (db, vault):
        if args.action == "list":
            names = dict(await vault.names())
            for name, meaning in KNOWN_SECRETS.items():
                state = ("set " + datetime.fromtimestamp(names[name]).strftime("%Y-%m-%d %H:%M")) \
                    if name in names else "not set"
                print(f"{name:20} {state:22} {meaning}")
        elif args.action == "set":
            if args.name not in KNOWN_SECRETS:
                raise ConfigError(args.name, f"unknown secret (known: {', '.join(KNOWN_SECRETS)})")
            if sys.stdin.isatty():
                value = getpass.getpass(f"{args.name}: ")
            else:
                value = sys.stdin.readline().rstrip("\r\n")
            await vault.set(args.name, value)
            print(f"{args.name} stored (encrypted)")
        elif args.action == "delete":
            print(f"{args.name} {'deleted' if await vault.delete(args.name) else 'was not set'}")
        elif args.action == "rotate-key":
            n = await vault.rotate_key()
            print(f"master key rotated; {n} secrets re-encrypted; old key retired")
        return 0


def read_input(path: str) -> str:
    """An import's text: standard input for `-`, else the file."""
    return sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")


async def cmd_bindings(settings: Settings, args: argparse.Namespace) -> int:
    async with opened_store(settings, keys=False) as (db, _vault):
        if args.action in ("list", "export"):
            data = await export_bindings(db)
            if args.action == "export":
                print(json.dumps(data, indent=1))
            else:
                for b in data["bindings"]:
                    print(f"{b['channel_id']:45.45} company {b['company']:6} kinds {','.join(b['kinds'])}"
                          + (f" costcenter {','.join(b['cost_centers'])}" if b["cost_centers"] else "")
                          + (f" min {b['min_amount']}" if b["min_amount"] is not None else ""))
        else:
            raw = read_input(args.file)
            n = await import_bindings(db, json.loads(raw), actor="cli")
            print(f"imported {n} bindings")
        return 0


async def cmd_people(settings: Settings, args: argparse.Namespace) -> int:
    if args.action == "import":  # read (and fail on a missing file) before the database is opened
        raw = read_input(args.file)
    async with opened_store(settings, keys=False) as (db, _vault):
        if args.action == "export":
            sys.stdout.write(await export_people(db))
        else:
            print(f"imported {await import_people(db, raw, actor='cli')} people")
        return 0


async def cmd_replay(settings: Settings, args: argparse.Namespace) -> int:
    async with opened_store(settings, keys=False) as (db, _vault):
        ids = await Outbox(db).replay(delivery_id=args.id, channel_id=args.channel)
        await AuditLog(db).record("delivery", "replay", "ok", actor="cli", deliveries=ids[:100], count=len(ids))
        print(f"re-queued {len(ids)} deliveries" + (f": {', '.join(map(str, ids[:20]))}" if ids else ""))
        return 0


async def cmd_backup(settings: Settings, args: argparse.Namespace) -> int:
    if is_server_url(settings.service.database):
        # PostgreSQL's own tool takes a consistent dump of a live database; the password comes from
        # PGPASSWORD or a PGPASSFILE, never from this command line
        print(f"error: backup copies SQLite stores only; {backup_advice(settings.service.database, args.target)}",
              file=sys.stderr)
        return 2
    async with opened_store(settings, keys=False) as (db, _vault):
        await db.backup_to(args.target)
        os.chmod(args.target, 0o600)
        print(f"backup written to {args.target} (secrets stay encrypted; keep the key file separately)")
        return 0


async def cmd_migrate_store(settings: Settings, args: argparse.Namespace) -> int:
    report = await transfer(args.source, args.target, progress=print)
    print(f"copied {report.rows} rows in {len(report.tables)} tables from {report.source} to {report.target}"
          f" (schema version {report.schema_version}, {report.seconds:.1f} s); row counts match table by table")
    print("secrets were copied encrypted: the new store needs the same master key (service.key_file or"
          f" NOTIFIER_MASTER_KEY). Next: set service.database to {report.target} and start the service.")
    return 0


async def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    # imported here: the demo and the simulator it runs are development tools, not in the image
    from demo import run_demo

    return await run_demo(args)


async def cmd_manifest(settings: Settings, args: argparse.Namespace) -> int:
    app_id = args.app_id
    database = settings.service.database
    if app_id is None and (is_server_url(database) or os.path.exists(database)):  # (no SQLite file made here)
        async with opened_store(settings) as (_db, vault):
            app_id = await vault.get("bot.app_id")
    path = build_package(settings, app_id=app_id, out_dir=args.out, version=args.version)
    print(f"Teams app package written to {path}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="app.py", description="IFS Cloud approvals in Microsoft Teams")
    p.add_argument("--config", metavar="PATH", default=os.environ.get("NOTIFIER_CONFIG"),
                   help="TOML settings file (default: $NOTIFIER_CONFIG, else built-in defaults)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("serve", help="run the service (bot web app, pollers, delivery)").set_defaults(fn=cmd_serve)
    d = sub.add_parser("demo", help="run everything locally: IFS simulator, bot, connector stand-in or Playground")
    d.add_argument("--no-playground", action="store_true", help="use the built-in connector stand-in and console")
    d.add_argument("--poll-seconds", type=float, default=10.0)
    d.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (0: until Ctrl-C)")
    d.add_argument("--data-dir", default="var/demo")
    d.add_argument("--profile", default="default", choices=["default", "renamed", "lean"],
                   help="the simulated IFS tenant's names (renamed, lean: discover finds them at start)")
    d.set_defaults(fn=cmd_demo)
    pl = sub.add_parser("poll", help="poll IFS once and print a summary")
    pl.add_argument("--once", action="store_true", required=True)
    pl.add_argument("--deliver", action="store_true", help="also deliver what the poll queued")
    pl.set_defaults(fn=cmd_poll)
    c = sub.add_parser("check", help="IFS credentials, then every source's names and the queries a poll runs")
    c.add_argument("--company", help="company to run the listing with (default: the first linked one)")
    c.set_defaults(fn=cmd_check)
    dc = sub.add_parser("discover", help="read the tenant's catalogue and $metadata and propose [sources.*]")
    dc.add_argument("--company", help="company whose rows are sampled for plain-text states")
    dc.add_argument("--write", metavar="FILE", help="write a whole config (this one plus the proposal) for review")
    dc.add_argument("--force", action="store_true", help="replace FILE if it exists")
    dc.set_defaults(fn=cmd_discover)
    a = sub.add_parser("audit", help="show the audit trail")
    a.add_argument("--last", type=int, default=50)
    a.add_argument("--failed", action="store_true")
    a.add_argument("--category", choices=["poll", "delivery", "command", "lifecycle", "people", "record", "security",
                                          "system"])
    a.add_argument("--json", action="store_true")
    a.set_defaults(fn=cmd_audit)
    s = sub.add_parser("secrets", help="manage encrypted credentials (values are read from a prompt or stdin)")
    ss = s.add_subparsers(dest="action", required=True)
    ss.add_parser("list", help="names and when they were set (never values)")
    st = ss.add_parser("set", help="set one secret; the value is read from the terminal or stdin")
    st.add_argument("name", choices=sorted(KNOWN_SECRETS))
    sd = ss.add_parser("delete")
    sd.add_argument("name", choices=sorted(KNOWN_SECRETS))
    ss.add_parser("rotate-key", help="re-encrypt every secret under a new master key and retire the old one")
    s.set_defaults(fn=cmd_secrets)
    b = sub.add_parser("bindings", help="list, export or import company -> channel links")
    bs = b.add_subparsers(dest="action", required=True)
    bs.add_parser("list")
    bs.add_parser("export", help="JSON to stdout")
    bi = bs.add_parser("import", help="JSON from a file or - for stdin")
    bi.add_argument("file")
    b.set_defaults(fn=cmd_bindings)
    pp = sub.add_parser("people", help="export or import IFS user -> Teams user links (CSV)")
    ps = pp.add_subparsers(dest="action", required=True)
    ps.add_parser("export", help="CSV to stdout: ifs_user, Entra object id or UPN, name")
    pi = ps.add_parser("import", help="CSV from a file or - for stdin; all rows or none")
    pi.add_argument("file")
    pp.set_defaults(fn=cmd_people)
    r = sub.add_parser("replay", help="re-queue failed or dead deliveries")
    r.add_argument("--id", type=int)
    r.add_argument("--channel")
    r.set_defaults(fn=cmd_replay)
    bk = sub.add_parser("backup", help="online backup of a SQLite store to a new file (PostgreSQL: pg_dump)")
    bk.add_argument("target")
    bk.set_defaults(fn=cmd_backup)
    mg = sub.add_parser("migrate-store", help="copy the whole store into a new, empty one (SQLite <-> PostgreSQL);"
                                              " stop the service first")
    mg.add_argument("--from", dest="source", required=True, metavar="STORE",
                    help="sqlite:PATH or postgresql://USER@HOST[:PORT]/DATABASE (password: PGPASSWORD or PGPASSFILE)")
    mg.add_argument("--to", dest="target", required=True, metavar="STORE", help="a new file or an empty database")
    mg.set_defaults(fn=cmd_migrate_store)
    m = sub.add_parser("manifest", help="Teams app package")
    ms = m.add_subparsers(dest="action", required=True)
    mb = ms.add_parser("build")
    mb.add_argument("--app-id", help="Azure Bot app id (default: the vault's bot.app_id)")
    mb.add_argument("--version", default=VERSION)
    mb.add_argument("--out", default="build")
    m.set_defaults(fn=cmd_manifest)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        settings = load_settings(args.config, env=os.environ)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings)
    try:
        return asyncio.run(args.fn(settings, args))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except (NotifierError, OSError, ValueError, ArithmeticError, *DB_ERRORS) as exc:
        # The one place a command's failure on bad input (a missing file, bad JSON, an id the database cannot
        # hold, a path that cannot be written) becomes one line; the traceback only at DEBUG.
        log.debug("%s failed", args.command, exc_info=True)
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 1


def one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        text = f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    elif isinstance(exc, ValueError) and type(exc).__name__ == "JSONDecodeError":
        text = f"not valid JSON: {exc}"
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())[:500]


if __name__ == "__main__":
    sys.exit(main())
