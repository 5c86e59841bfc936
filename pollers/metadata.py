"""A projection's `$metadata` (OData 4.0 EDMX) read into what the poller needs: entity sets, keys,
property types, enum types and their members, navigation properties.

IFS projections carry hundreds of types and `Reference_*` sets, so a document of several MB is normal;
one pass of ElementTree's C parser reads it in well under a second.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

NUMERIC_TYPES = frozenset({"Edm.Decimal", "Edm.Double", "Edm.Single", "Edm.Int16", "Edm.Int32", "Edm.Int64",
                           "Edm.Byte", "Edm.SByte"})
INTEGER_TYPES = frozenset({"Edm.Int16", "Edm.Int32", "Edm.Int64", "Edm.Byte", "Edm.SByte"})
DATE_TYPES = frozenset({"Edm.Date", "Edm.DateTimeOffset", "Edm.DateTime"})


class MetadataError(ValueError):
    """The document is not OData EDMX (an HTML page, a proxy's error, truncated XML)."""


@dataclass(frozen=True)
class EntityInfo:
    name: str  # fully qualified, e.g. IfsApp.PurchaseOrderHandling.PurchaseOrder
    keys: tuple[str, ...]
    properties: dict[str, str] = field(default_factory=dict)  # name -> type (Edm.* or a qualified enum)
    navigations: dict[str, tuple[str, bool]] = field(default_factory=dict)  # name -> (target type, collection)


@dataclass(frozen=True)
class Metadata:
    projection: str
    entity_sets: dict[str, str]  # set name -> entity type name
    types: dict[str, EntityInfo]
    enums: dict[str, tuple[str, ...]]  # qualified enum type -> member names

    def entity(self, entity_set: str) -> EntityInfo | None:
        type_name = self.entity_sets.get(entity_set)
        return None if type_name is None else self.types.get(type_name)

    def navigation_target(self, entity: EntityInfo, navigation: str) -> EntityInfo | None:
        target = entity.navigations.get(navigation)
        return None if target is None else self.types.get(target[0])

    def is_enum(self, type_name: str | None) -> bool:
        return type_name is not None and type_name in self.enums


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def parse_metadata(projection: str, document: bytes | str) -> Metadata:
    """Read an EDMX document. Aliases (`Schema Alias="x"`) are resolved to their namespaces."""
    try:
        root = ET.fromstring(document)
    except ET.ParseError as exc:
        raise MetadataError(f"$metadata of {projection} is not XML ({exc})") from None
    if _local(root.tag) != "Edmx":
        raise MetadataError(f"$metadata of {projection} is not an OData EDMX document (root <{_local(root.tag)}>)")
    schemas = [el for el in root.iter() if _local(el.tag) == "Schema"]
    aliases = {s.get("Alias"): s.get("Namespace", "") for s in schemas if s.get("Alias")}

    def qualify(type_name: str) -> str:
        head, dot, tail = type_name.rpartition(".")
        return f"{aliases[head]}.{tail}" if dot and head in aliases else type_name

    types: dict[str, EntityInfo] = {}
    enums: dict[str, tuple[str, ...]] = {}
    sets: dict[str, str] = {}
    for schema in schemas:
        ns = schema.get("Namespace", "")
        for el in schema:
            tag = _local(el.tag)
            if tag == "EnumType":
                enums[f"{ns}.{el.get('Name')}"] = tuple(m.get("Name", "") for m in el if _local(m.tag) == "Member")
            elif tag == "EntityType":
                keys: list[str] = []
                props: dict[str, str] = {}
                navs: dict[str, tuple[str, bool]] = {}
                for child in el:
                    ctag = _local(child.tag)
                    if ctag == "Key":
                        keys += [r.get("Name", "") for r in child if _local(r.tag) == "PropertyRef"]
                    elif ctag == "Property":
                        props[child.get("Name", "")] = qualify(child.get("Type", ""))
                    elif ctag == "NavigationProperty":
                        target = child.get("Type", "")
                        many = target.startswith("Collection(") and target.endswith(")")
                        navs[child.get("Name", "")] = (qualify(target[11:-1] if many else target), many)
                types[f"{ns}.{el.get('Name')}"] = EntityInfo(f"{ns}.{el.get('Name')}", tuple(keys), props, navs)
            elif tag == "EntityContainer":
                for s in el:
                    if _local(s.tag) == "EntitySet":
                        sets[s.get("Name", "")] = qualify(s.get("EntityType", ""))
    if not sets and not types:
        raise MetadataError(f"$metadata of {projection} declares no entity sets")
    return Metadata(projection, sets, types, enums)
