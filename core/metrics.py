"""The service's Prometheus series, kept and rendered by prometheus-client; one registry per service instance.

Each `Metrics` owns a `CollectorRegistry`: nothing is process-wide, so several services (as in the tests) live
side by side in one process. The counters and gauges the code updates are declared in SERIES. Series read
when scraped are added with `observe` (an async read, e.g. a database count) and `counter_from` (a total kept
by another object, e.g. the IFS client's own stats). prometheus-client collects synchronously, so `exposition`
awaits the async reads first and then renders: the database is never read on the event loop's thread.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import cast

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import CounterMetricFamily, Metric

# Counters without a companion `<name>_created` gauge per series (a prometheus-client setting for the process;
# in the Prometheus text format it would double every counter's series).
disable_created_metrics()  # type: ignore[no-untyped-call]  # prometheus-client leaves it unannotated


@dataclass(frozen=True)
class Series:
    name: str  # a counter's name ends in _total
    help: str
    labels: tuple[str, ...] = ()
    kind: str = "counter"  # or "gauge", "histogram"
    buckets: tuple[float, ...] = ()  # a histogram's upper bounds


SERIES: tuple[Series, ...] = (
    Series("notifier_polls_total", "Polls of a source for one company, by outcome", ("source", "outcome")),
    Series("notifier_records_seen_total", "Rows read from IFS", ("source",)),
    Series("notifier_events_total", "Events by source and type", ("source", "type")),
    Series("notifier_bad_rows_total", "Rows quarantined", ("source",)),
    Series("notifier_last_successful_poll_timestamp_seconds",
           "Unix time at which a poll of a source (for one company) last succeeded", ("source",),
           "gauge"),
    Series("notifier_deliveries_total", "Deliveries settled, by outcome", ("outcome",)),
    Series("notifier_delivery_messages_total", "Messages posted or updated in Teams", ("op",)),
    Series("notifier_delivery_eventual_success_total", "Sent after at least one failed attempt"),
    Series("notifier_delivery_first_attempt_failures_total", "Deliveries whose first try failed"),
    Series("notifier_delivery_retries_total", "Delivery attempts to be retried"),
    Series("notifier_teams_throttled_total", "429 answers received from Teams"),
    Series("notifier_poll_ifs_requests_total", "Requests a source's poll cycles sent to IFS (tokens included)",
           ("source",)),
    Series("notifier_poll_ifs_bytes_total", "Response bytes a source's poll cycles received from IFS", ("source",)),
    Series("notifier_poll_cycle_seconds", "Time of one poll cycle of a source (every linked company)", ("source",),
           "histogram", (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)),
    Series("notifier_record_to_card_seconds", "From the poll that found a new or changed record to its card in"
           " Teams (add up to one poll interval for the time IFS held it before that poll)", (), "histogram",
           (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600)),
)

# label values in the observed series' label order -> value; () for a series without labels
Reading = Mapping[tuple[str, ...], float]


class Metrics:
    def __init__(self, series: tuple[Series, ...] = SERIES, *, process: bool = True) -> None:
        self.registry = CollectorRegistry()
        self._metrics: dict[str, Counter | Gauge | Histogram] = {}
        self._observed: list[tuple[Gauge, Callable[[], Awaitable[Reading]]]] = []
        for s in series:
            self._declare(s)
        if process:  # process_* (memory, CPU, open files), python_info, python_gc_*
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)

    # ---- updated by the code

    def inc(self, name: str, amount: float = 1.0, help: str = "", **labels: str) -> None:
        """Add to a counter; a name not in SERIES is declared on first use, with `help` and these label names."""
        metric = cast(Counter | Gauge, self._metrics.get(name) or self._declare(
            Series(name, help or name, tuple(sorted(labels)))))
        (metric.labels(**labels) if labels else metric).inc(amount)

    def observe_value(self, name: str, value: float, **labels: str) -> None:
        """Put one observation into a declared histogram."""
        metric = cast(Histogram, self._metrics[name])
        (metric.labels(**labels) if labels else metric).observe(value)

    def set_to_now(self, name: str, **labels: str) -> None:
        """Set a declared gauge to the current Unix time."""
        metric = cast(Gauge, self._metrics[name])
        (metric.labels(**labels) if labels else metric).set_to_current_time()

    def value(self, name: str, **labels: str) -> float:
        """A series' current value (0 if it has none yet): a counter by its _total name."""
        return self.registry.get_sample_value(name, labels) or 0.0

    # ---- read when scraped

    def observe(self, name: str, help: str, read: Callable[[], Awaitable[Reading]],
                labels: tuple[str, ...] = ()) -> None:
        """A gauge whose values `read` returns, awaited at every scrape before the exposition is rendered."""
        gauge = cast(Gauge, self._declare(Series(name, help, labels, "gauge")))
        self._observed.append((gauge, read))

    def counter_from(self, name: str, help: str, read: Callable[[], float]) -> None:
        """A counter kept elsewhere (a running total since start), read synchronously when scraped."""
        self.registry.register(_ReadCounter(name, help, read))

    async def collect(self) -> None:
        """Run the observed reads and store their values in the gauges."""
        readings = [(gauge, await read()) for gauge, read in self._observed]
        for gauge, reading in readings:  # no await from here on: a scrape renders one consistent set
            gauge.clear()  # label sets that are gone (e.g. no failed deliveries any more) disappear
            for key, v in reading.items():
                (gauge.labels(*key) if key else gauge).set(v)

    async def exposition(self, accept: str | None = None) -> tuple[bytes, str]:
        """The registry rendered for a scrape: (body, content type), in the format the Accept header asks for."""
        await self.collect()
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type

    def _declare(self, s: Series) -> Counter | Gauge | Histogram:
        if s.kind == "counter":
            if not s.name.endswith("_total"):
                raise ValueError(f"counter {s.name}: a counter's name ends in _total")
            metric: Counter | Gauge | Histogram = Counter(s.name, s.help, s.labels, registry=self.registry)
        elif s.kind == "gauge":
            metric = Gauge(s.name, s.help, s.labels, registry=self.registry)
        elif s.kind == "histogram":
            metric = Histogram(s.name, s.help, s.labels, registry=self.registry, buckets=s.buckets)
        else:
            raise ValueError(f"{s.name}: unknown kind {s.kind!r}")
        self._metrics[s.name] = metric
        return metric


class _ReadCounter:
    """A collector for one counter whose total another object keeps."""

    def __init__(self, name: str, help: str, read: Callable[[], float]) -> None:
        if not name.endswith("_total"):
            raise ValueError(f"counter {name}: a counter's name ends in _total")
        self.name, self.help, self.read = name, help, read

    def describe(self) -> list[Metric]:  # lets the registry refuse a name that clashes, without reading
        return [CounterMetricFamily(self.name, self.help)]

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(self.name, self.help, value=self.read())
