"""The whole loop on real sockets: Teams message -> link -> IFS poll -> outbox -> card in the channel."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import CHANNEL, channel_message, post_activity, replies_text, sqlite_only

ROOT = Path(__file__).resolve().parent.parent


async def test_link_poll_deliver_once_and_never_again(tmp_path, ifs, connector, service_factory):
    order = ifs.add_order(company="10", VendorName="Nordic Steel AB", GrossAmtCurr=12500.5, CurrencyCode="EUR")
    svc = await service_factory()

    status = await post_activity(svc.base_url, channel_message("link company 10", connector.service_url))
    assert status in (200, 201)
    assert any("now receives" in t for t in replies_text(connector)), replies_text(connector)

    await svc.poll_once()
    await svc.worker.run_once()
    cards = connector.cards(CHANNEL)
    assert len(cards) == 1
    text = json.dumps(list(cards.values())[0])
    assert order["OrderNo"] in text and "Nordic Steel AB" in text
    assert "/main/ifsapplications/web/page/PurchaseOrder/Form;$filter=OrderNo%20eq%20'" in text

    await svc.poll_once()
    await svc.worker.run_once()
    assert len(connector.posts(CHANNEL)) == 1

    await svc.stop()
    await svc.db.close()
    again = await service_factory()
    await again.poll_once()
    await again.worker.run_once()
    assert len(connector.posts(CHANNEL)) == 1

    out = await asyncio.to_thread(subprocess.run, [sys.executable, "app.py", "--config", str(tmp_path / "notifier.toml"), "audit", "--json",
                          "--last", "200"], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
    entries = json.loads(out.stdout)
    categories = {(e["category"], e["outcome"]) for e in entries}
    assert ("poll", "ok") in categories
    assert ("command", "ok") in categories
    assert any(e["category"] == "delivery" and e["outcome"] == "ok" and e["delivery_id"] for e in entries)


@sqlite_only  # (on PostgreSQL: tests/test_store_backends.py reads the stored tokens)
async def test_secrets_never_stored_in_plaintext(tmp_path, ifs, service_factory):
    svc = await service_factory()
    await svc.vault.set("bot.app_password", "p@ssw0rd-very-secret-value")
    await svc.stop()
    await svc.db.close()
    blob = b"".join(p.read_bytes() for p in tmp_path.glob("notifier.sqlite3*"))
    for secret in (b"notifier-secret", b"p@ssw0rd-very-secret-value", ifs.base_url.encode()):
        assert secret not in blob
    assert (tmp_path / "master.key").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "notifier.sqlite3").stat().st_mode & 0o077 == 0
