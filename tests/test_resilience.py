"""Crash safety: SIGKILL the real service at seeded random points of polling and delivery, then restart it."""

from __future__ import annotations

import asyncio
import random
import signal

from simulator.connector import ConnectorStandIn
from tests.serving import prepare_serve, start_serve, wait_until

CH = "19:crash@thread.tacv2"
TRIALS = 20


async def test_sigkill_at_random_points_loses_nothing_and_duplicates_at_most_once_per_kill(tmp_path, ifs):
    rng = random.Random(20261127)
    connector = ConnectorStandIn()
    await connector.start()
    try:
        cfg = await prepare_serve(tmp_path, "crash", str(tmp_path / "crash.sqlite3"), ifs, connector, [CH])
        expected: set[str] = set()
        for _ in range(10):
            expected.add(ifs.add_order(company="10")["OrderNo"])

        def delivered() -> list[str]:
            return [p.activity["attachments"][0]["content"].get("fallbackText", "") for p in connector.posts(CH)]

        kills = 0
        for _trial in range(TRIALS):
            for _ in range(rng.randint(0, 3)):
                expected.add(ifs.add_order(company="10")["OrderNo"])
            proc = await start_serve(cfg)
            text = "\n".join(delivered())
            undelivered = [no for no in expected if no not in text]
            if rng.random() < 0.5 or not undelivered:  # in a poll: after the k-th data request of this run
                base = len(ifs.requests)
                k = rng.randint(1, 4)
                await wait_until(lambda b=base, k=k: len(ifs.requests) >= b + k, 20)
            else:  # somewhere in delivery: after the k-th accepted post of this run
                base = len(connector.posts(CH))
                k = rng.randint(1, min(3, len(undelivered)))
                await wait_until(lambda b=base, k=k: len(connector.posts(CH)) >= b + k, 20)
            if proc.returncode is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            await proc.wait()

        proc = await start_serve(cfg)
        try:
            def all_there() -> bool:
                text = "\n".join(delivered())
                return all(no in text for no in expected)

            assert await wait_until(all_there, 60), "not every order reached the channel"
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                code = await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                code = await proc.wait()
            assert code == 0, "serve did not stop cleanly on SIGTERM within 30 s"
        texts = delivered()
        per_order = {no: sum(no in t for t in texts) for no in expected}
        duplicates = sum(n - 1 for n in per_order.values())
        assert min(per_order.values()) >= 1
        assert duplicates <= kills, (duplicates, kills)
    finally:
        await connector.stop()


async def test_serve_exits_after_sigterm_even_with_a_worker_thread_stuck_on_the_network(tmp_path, ifs):
    """The Bot Framework key server accepts the connection and never answers (botbuilder's request has no
    timeout): its worker thread would keep the stopped process from exiting; it exits after the grace."""
    import socket

    import app
    from core.settings import load_settings

    silent = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    silent.setblocking(False)
    connector = ConnectorStandIn()
    await connector.start()
    try:
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/.well-known/openidconfiguration"
        cfg = await prepare_serve(tmp_path, "stuck", str(tmp_path / "stuck.sqlite3"), ifs, connector, [CH],
                                  delivery=f'\n[bot]\nopenid_metadata_url = "{url}"\n')
        db, vault = await app.open_store(load_settings(cfg, env={}))
        try:
            for name, value in (("bot.app_id", "00000000-0000-0000-0000-00000000b07"),
                                ("bot.app_password", "never-used"), ("bot.tenant_id", "tenant")):
                await vault.set(name, value)
        finally:
            await db.close()
        proc = await start_serve(cfg)
        try:
            def connected() -> bool:
                try:
                    accepted.append(silent.accept()[0])
                except BlockingIOError:
                    pass
                return bool(accepted)

            assert await wait_until(connected, 30), "the key refresh never reached the silent server"
            proc.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(proc.wait(), 40)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert code == 0
    finally:
        for s in accepted:
            s.close()
        silent.close()
        await connector.stop()
