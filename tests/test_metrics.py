"""Metrics: the registry of one service, and /metrics scraped from a running service and parsed as Prometheus does."""

from __future__ import annotations

import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from core.domain import RecordKind
from core.metrics import Metrics, Series

IFS_COUNTERS = ("notifier_ifs_requests", "notifier_ifs_retries", "notifier_ifs_throttled",
                "notifier_ifs_token_renewals", "notifier_ifs_failures", "notifier_ifs_bytes")


async def scrape(svc, accept: str | None = None) -> httpx.Response:
    async with httpx.AsyncClient(base_url=svc.base_url) as client:
        response = await client.get("/metrics", headers={"Accept": accept} if accept else None)
    assert response.status_code == 200, response.text
    return response


def families(text: str) -> dict[str, object]:
    parsed = list(text_string_to_metric_families(text))
    names = [f.name for f in parsed]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)  # each family once
    return {f.name: f for f in parsed}


def sample(family, suffix: str = "", **labels: str) -> float | None:
    found = [s.value for s in family.samples if s.name == family.name + suffix and s.labels == labels]
    assert len(found) <= 1
    return found[0] if found else None


async def linked_service(service_factory, ifs, connector):
    """A running service with a channel linked to company 10, which has one pending purchase order."""
    from tests.conftest import channel_message, post_activity

    svc = await service_factory()
    ifs.add_order(company="10")  # the link command checks that IFS shows documents of the company
    await post_activity(svc.base_url, channel_message("link company 10", connector.service_url))
    return svc


# --------------------------------------------------------------------------- a running service

async def test_scrape_after_a_poll_and_a_delivery_has_every_series_once_with_its_type(service_factory, ifs,
                                                                                      connector):
    svc = await linked_service(service_factory, ifs, connector)
    ifs.faults.fail_next(1, status=429, retry_after=0.1)  # the listing is throttled once, then answered

    await svc.poll_source(RecordKind.ORDER)
    await svc.worker.run_once()
    response = await scrape(svc)

    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    got = families(response.text)
    types = {name: f.type for name, f in got.items() if name.startswith("notifier_")}
    assert types == {
        "notifier_polls": "counter", "notifier_records_seen": "counter", "notifier_events": "counter",
        "notifier_bad_rows": "counter", "notifier_last_successful_poll_timestamp_seconds": "gauge",
        "notifier_deliveries": "counter", "notifier_delivery_messages": "counter",
        "notifier_delivery_eventual_success": "counter", "notifier_delivery_first_attempt_failures": "counter",
        "notifier_delivery_retries": "counter", "notifier_teams_throttled": "counter",
        "notifier_outbox_deliveries": "gauge", "notifier_queue_oldest_seconds": "gauge",
        "notifier_scheduler_leader": "gauge",
        "notifier_poll_ifs_requests": "counter", "notifier_poll_ifs_bytes": "counter",
        "notifier_poll_cycle_seconds": "histogram", "notifier_record_to_card_seconds": "histogram",
        **dict.fromkeys(IFS_COUNTERS, "counter"),
    }
    assert sample(got["notifier_polls"], "_total", outcome="ok", source="order") == 1
    assert sample(got["notifier_events"], "_total", source="order", type="new") == 1
    assert sample(got["notifier_records_seen"], "_total", source="order") == 1
    assert sample(got["notifier_deliveries"], "_total", outcome="sent") == 1
    assert sample(got["notifier_delivery_messages"], "_total", op="post") == 1
    assert sample(got["notifier_outbox_deliveries"], status="sent") == 1
    assert sample(got["notifier_outbox_deliveries"], status="pending") is None
    assert sample(got["notifier_queue_oldest_seconds"]) == 0
    stats = svc.ifs.stats
    assert stats["throttled"] == 1 and stats["retries"] >= 1 and stats["token_renewals"] >= 1
    for name in IFS_COUNTERS:
        assert sample(got[name], "_total") == stats[name.removeprefix("notifier_ifs_")], name
    assert got["process_resident_memory_bytes"].type == "gauge" and "python_info" in got
    assert not [n for n in got if n.endswith("_created")]


async def test_outbox_gauges_are_read_from_the_database_at_each_scrape(service_factory, ifs, connector):
    svc = await linked_service(service_factory, ifs, connector)
    ifs.add_order(company="10")
    await svc.poll_source(RecordKind.ORDER)

    waiting = families((await scrape(svc)).text)
    await svc.worker.run_once()
    settled = families((await scrape(svc)).text)

    assert sample(waiting["notifier_outbox_deliveries"], status="pending") == 2
    assert sample(waiting["notifier_queue_oldest_seconds"]) >= 0
    assert sample(settled["notifier_outbox_deliveries"], status="pending") is None  # label set gone, not stale
    assert sample(settled["notifier_outbox_deliveries"], status="sent") == 2
    assert sample(settled["notifier_queue_oldest_seconds"]) == 0


async def test_last_successful_poll_timestamp_is_set_by_a_successful_poll_only(service_factory, ifs, connector):
    svc = await linked_service(service_factory, ifs, connector)

    before = families((await scrape(svc)).text)
    started = time.time()
    await svc.poll_source(RecordKind.ORDER)
    finished = time.time()
    after_ok = families((await scrape(svc)).text)
    ifs.faults.fail_next(1, status=400, code="ODP_BAD_REQUEST")
    [failed] = await svc.poll_source(RecordKind.ORDER)
    after_failure = families((await scrape(svc)).text)

    assert before["notifier_last_successful_poll_timestamp_seconds"].samples == []
    stamp = sample(after_ok["notifier_last_successful_poll_timestamp_seconds"], source="order")
    assert started <= stamp <= finished
    assert sample(after_ok["notifier_last_successful_poll_timestamp_seconds"], source="invoice") is None
    assert not failed.ok
    assert sample(after_failure["notifier_polls"], "_total", outcome="failed", source="order") == 1
    assert sample(after_failure["notifier_last_successful_poll_timestamp_seconds"], source="order") == stamp


async def test_openmetrics_when_the_scraper_asks_for_it(service_factory, ifs, connector):
    svc = await linked_service(service_factory, ifs, connector)

    response = await scrape(svc, accept="application/openmetrics-text; version=1.0.0,text/plain;q=0.5")

    assert response.headers["Content-Type"].startswith("application/openmetrics-text")
    assert response.text.endswith("# EOF\n")
    assert "# TYPE notifier_ifs_requests counter" in response.text


# --------------------------------------------------------------------------- the registry

def test_each_instance_has_its_own_registry():
    first, second = Metrics(process=False), Metrics(process=False)

    first.inc("notifier_polls_total", source="order", outcome="ok")
    first.inc("notifier_polls_total", 2, source="order", outcome="ok")

    assert first.value("notifier_polls_total", source="order", outcome="ok") == 3
    assert second.value("notifier_polls_total", source="order", outcome="ok") == 0
    assert first.registry is not second.registry


def test_a_name_that_clashes_with_a_counter_family_is_refused():
    metrics = Metrics(process=False)

    async def read():
        return {("sent",): 1.0}

    with pytest.raises(ValueError, match="notifier_deliveries"):  # the gauge this name once had
        metrics.observe("notifier_deliveries", "Deliveries by status", read, labels=("status",))
    metrics.counter_from("notifier_ifs_requests_total", "HTTP requests", lambda: 1.0)
    with pytest.raises(ValueError, match="notifier_ifs_requests"):
        metrics.counter_from("notifier_ifs_requests_total", "again", lambda: 1.0)
    with pytest.raises(ValueError, match="_total"):
        Metrics(series=(Series("notifier_polls", "no suffix"),), process=False)


def test_a_counter_not_declared_is_declared_on_first_use_with_its_help():
    metrics = Metrics(process=False)

    metrics.inc("notifier_widgets_total", 2, "Widgets made", colour="blue")
    metrics.inc("notifier_widgets_total", colour="blue")

    assert metrics.value("notifier_widgets_total", colour="blue") == 3
    [family] = [f for f in metrics.registry.collect() if f.name == "notifier_widgets"]
    assert (family.type, family.documentation) == ("counter", "Widgets made")


async def test_observed_reads_are_awaited_at_every_exposition():
    metrics = Metrics(process=False)
    reads = []

    async def read():
        reads.append(1)
        return {(): float(len(reads))}

    metrics.observe("notifier_reads", "Reads so far", read)
    first, _ = await metrics.exposition()
    second, content_type = await metrics.exposition()

    assert (b"notifier_reads 1.0" in first, b"notifier_reads 2.0" in second) == (True, True)
    assert content_type.startswith("text/plain")
