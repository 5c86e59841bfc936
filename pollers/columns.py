"""A page's columns: each read from the rows once, with C-level builtins instead of a Python loop per row."""

from __future__ import annotations

import operator
from collections.abc import Sequence
from itertools import repeat
from typing import Any

NoneType = type(None)


def column(rows: list[dict[str, Any]], name: str) -> list[Any]:
    """[row.get(name) for row in rows], without the interpreter loop."""
    try:
        return list(map(operator.itemgetter(name), rows))  # rows read with $select hold every field
    except KeyError:
        return list(map(dict.get, rows, repeat(name)))


class Columns(dict[str, list[Any]]):
    """The columns of one list of rows, each read from the rows once, when first asked for (a page's
    state column serves the pending filter, identify and stored_page)."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        super().__init__()
        self.rows = rows

    def __missing__(self, name: str) -> list[Any]:
        self[name] = col = column(self.rows, name)
        return col


def columns_of(rows: list[dict[str, Any]], cols: Columns | None) -> Columns:
    return cols if cols is not None and cols.rows is rows else Columns(rows)


def only(col: Sequence[Any], t: type) -> bool:
    """Every value is exactly of type t (bool is not int, None is not str)."""
    return not col or set(map(type, col)) == {t}
