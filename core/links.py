"""Deep links into the IFS Cloud web client (page + $filter on the record's keys)."""

from __future__ import annotations

import functools
import re
from urllib.parse import quote


def odata_literal(value: str | int) -> str:
    """String keys quoted (with ' doubled), numeric keys bare, as IFS filters expect."""
    if isinstance(value, bool):
        raise TypeError("boolean keys are not supported")
    if isinstance(value, int):
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"


def page_link(base_url: str, page: str, filters: list[tuple[str, str | int]] | None = None) -> str:
    """`{base}/main/ifsapplications/web/page/{page};$filter=A eq 'x' and B eq 1` URL-encoded."""
    url = _page_url(base_url, page)
    if filters:
        expr = " and ".join(f"{name} eq {odata_literal(value)}" for name, value in filters)
        url += ";$filter=" + _quote_filter(expr)
    return url


@functools.lru_cache(maxsize=256)
def _page_url(base_url: str, page: str) -> str:
    # the same few pages for every record of a poll: quote() them once
    return f"{base_url.rstrip('/')}/main/ifsapplications/web/page/{quote(page, safe='/')}"


_PLAIN = re.compile(r"[A-Za-z0-9_.\-~'= ]*")


def _quote_filter(expr: str) -> str:
    # fast path for the common plain key values; identical output to quote(expr, safe="'=")
    if _PLAIN.fullmatch(expr):
        return expr.replace(" ", "%20")
    return quote(expr, safe="'=")
