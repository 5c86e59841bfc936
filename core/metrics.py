"""Counters and gauges rendered in the Prometheus text format; one registry per service instance."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Awaitable, Callable


class Metrics:
    def __init__(self) -> None:
        self._counters: dict[str, dict[tuple[tuple[str, str], ...], float]] = defaultdict(lambda: defaultdict(float))
        self._help: dict[str, str] = {}
        self._observed: dict[str, tuple[str, str, Callable[[], Awaitable[dict[tuple[tuple[str, str], ...], float]]]]] = {}

    def inc(self, name: str, amount: float = 1.0, help: str = "", **labels: str) -> None:
        self._counters[name][tuple(sorted(labels.items()))] += amount
        if help:
            self._help.setdefault(name, help)

    def value(self, name: str, **labels: str) -> float:
        return self._counters.get(name, {}).get(tuple(sorted(labels.items())), 0.0)

    def gauge(self, name: str, help: str,
              read: Callable[[], Awaitable[dict[tuple[tuple[str, str], ...], float]]], *, kind: str = "gauge") -> None:
        """A series read when scraped; kind "counter" for totals kept elsewhere (e.g. a client's own stats)."""
        self._observed[name] = (help, kind, read)

    async def render(self) -> str:
        lines: list[str] = []
        for name in sorted(self._counters):
            lines.append(f"# HELP {name} {self._help.get(name, name)}")
            lines.append(f"# TYPE {name} counter")
            for labels, v in sorted(self._counters[name].items()):
                lines.append(f"{name}{_labels(labels)} {_num(v)}")
        for name in sorted(self._observed):
            help, kind, read = self._observed[name]
            lines.append(f"# HELP {name} {help}")
            lines.append(f"# TYPE {name} {kind}")
            for labels, v in sorted((await read()).items()):
                lines.append(f"{name}{_labels(labels)} {_num(v)}")
        return "\n".join(lines) + "\n"


def _labels(labels: tuple[tuple[str, str], ...]) -> str:
    if not labels:
        return ""
    inner = ",".join('{}="{}"'.format(k, str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n"))
                     for k, v in labels)
    return "{" + inner + "}"


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))
