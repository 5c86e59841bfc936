"""Reading a large `$metadata`: IFS projections carry hundreds of types and `Reference_*` sets, so a document
of several MB is normal. Measures parsing and validating one, as `discover`, `check` and `serve` do."""

from __future__ import annotations

import time
from typing import Any

from core.domain import RecordKind
from pollers.metadata import parse_metadata
from pollers.sources import DEFAULT_SOURCES
from pollers.tenant import validate
from simulator.ifs import metadata_document as _edmx

GOAL_SECONDS = 2.0  # per 5 MB document: "in seconds" for a projection, with room for a slower machine


def large_edmx(projection: str, reference_types: int = 1500, properties: int = 40) -> str:
    """The simulator's document for `projection` with `reference_types` extra entity types and sets."""
    base = _edmx(projection)
    ns = f"IfsApp.{projection}"
    extra = []
    for i in range(reference_types):
        props = "".join(f'<Property Name="Field{j}" Type="{"Edm.Decimal" if j % 5 == 0 else "Edm.String"}"'
                        f' MaxLength="100"/>' for j in range(properties))
        extra.append(f'<EntityType Name="Lookup{i}"><Key><PropertyRef Name="Field1"/></Key>{props}</EntityType>')
    sets = "".join(f'<EntitySet Name="Reference_Lookup{i}" EntityType="{ns}.Lookup{i}"/>'
                   for i in range(reference_types))
    head, tail = base.split('<EntityContainer Name="DefaultContainer">', 1)
    return head + "".join(extra) + '<EntityContainer Name="DefaultContainer">' + sets + tail


def run(quick: bool = False) -> dict[str, Any]:
    spec = DEFAULT_SOURCES[RecordKind.INVOICE]
    doc = large_edmx(spec.projection, 500 if quick else 1500).encode()
    timings = []
    for _ in range(3):
        started = time.perf_counter()
        md = parse_metadata(spec.projection, doc)
        parsed = time.perf_counter() - started
        validation = validate(spec, md)
        timings.append((parsed, time.perf_counter() - started - parsed))
    parse_s = sorted(t[0] for t in timings)[1]
    mb = len(doc) / 1e6
    per_5mb = parse_s * 5 / mb
    return {
        "document_mb": round(mb, 2), "entity_sets": len(md.entity_sets),
        "parse_seconds_median": round(parse_s, 3), "validate_seconds_median": round(sorted(t[1] for t in timings)[1], 4),
        "problems": len(validation.problems),
        "parse_seconds_per_5mb": {"value": round(per_5mb, 3), "goal": f"<= {GOAL_SECONDS}",
                                  "pass": per_5mb <= GOAL_SECONDS},
    }
