"""OData query options: the $filter subset (parsing, IFS enum typing, evaluation), $select, $orderby, keys."""

from __future__ import annotations

import operator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from simulator.odata_filter import (
    EDM_BOOLEAN,
    EDM_DATE,
    EDM_DECIMAL,
    EDM_INT,
    EDM_STRING,
    EDM_TIMESTAMP,
    EntityType,
    EnumType,
    FilterNotImplemented,
    FilterSyntaxError,
    compile_filter,
    parse_key_predicate,
    parse_orderby,
    parse_select,
    sort_rows,
)

STATE = EnumType("IfsApp.TestHandling.DocState", ("Planned", "Released", "Closed"))
OTHER = EnumType("IfsApp.TestHandling.OtherState", ("Planned", "Done"))
DOC = EntityType(
    name="IfsApp.TestHandling.Doc",
    properties={
        "Name": EDM_STRING,
        "Qty": EDM_INT,
        "Amount": EDM_DECIMAL,
        "Day": EDM_DATE,
        "At": EDM_TIMESTAMP,
        "Flag": EDM_BOOLEAN,
        "Objstate": STATE,
    },
    keys=("Name",),
    enums={STATE.name: STATE, OTHER.name: OTHER},
)


def doc(**values: Any) -> dict[str, Any]:
    row = dict.fromkeys(DOC.properties)
    row.update(values)
    return row


ROWS = [
    doc(
        Name="alpha",
        Qty=1,
        Amount=10.5,
        Day="2026-01-15",
        At="2026-01-15T08:00:00Z",
        Flag=True,
        Objstate="Planned",
    ),
    doc(
        Name="Beta",
        Qty=5,
        Amount=250.0,
        Day="2026-02-01",
        At="2026-02-01T12:30:00Z",
        Flag=False,
        Objstate="Released",
    ),
    doc(Name="O'Hara", Qty=10, Amount=1000.0, Day="2026-03-01", At=None, Flag=None, Objstate="Planned"),
    doc(Name=None, Qty=None, Amount=None, Day=None, At=None, Flag=None, Objstate="Closed"),
]


def names(text: str) -> list[str | None]:
    return [row["Name"] for row in compile_filter(text, DOC).apply(ROWS)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Name eq 'alpha'", ["alpha"]),
        ("Name ne 'alpha'", ["Beta", "O'Hara", None]),
        ("Name eq 'O''Hara'", ["O'Hara"]),
        ("Qty gt 1", ["Beta", "O'Hara"]),
        ("Qty ge 5 and Qty le 5", ["Beta"]),
        ("Qty lt 5", ["alpha"]),
        ("Amount ge 250", ["Beta", "O'Hara"]),
        ("Amount gt 10.25", ["alpha", "Beta", "O'Hara"]),
        ("5 lt Qty", ["O'Hara"]),
        ("Name eq null", [None]),
        ("Qty ne null", ["alpha", "Beta", "O'Hara"]),
        ("Day ge 2026-02-01", ["Beta", "O'Hara"]),
        ("At gt 2026-01-31T00:00:00Z", ["Beta"]),
        ("At lt 2026-01-15T09:00:00+00:00", ["alpha"]),
        ("Flag", ["alpha"]),
        ("Flag eq false", ["Beta"]),
        ("not Flag", ["Beta"]),
        ("Objstate eq IfsApp.TestHandling.DocState'Planned'", ["alpha", "O'Hara"]),
        ("Objstate ne IfsApp.TestHandling.DocState'Planned'", ["Beta", None]),
        ("Qty eq 1 or Qty eq 5 and Name eq 'nobody'", ["alpha"]),
        ("(Qty eq 1 or Qty eq 5) and Name eq 'Beta'", ["Beta"]),
        ("not (Qty eq 1)", ["Beta", "O'Hara", None]),
        ("contains(Name,'et')", ["Beta"]),
        ("startswith(tolower(Name),'b')", ["Beta"]),
        ("endswith(toupper(Name),'HARA')", ["O'Hara"]),
        ("not contains(Name,'zzz')", ["alpha", "Beta", "O'Hara"]),
        ("length(Name) eq 4", ["Beta"]),
        ("year(Day) eq 2026 and month(Day) eq 3", ["O'Hara"]),
        ("Amount mul 2 gt 400", ["Beta", "O'Hara"]),
        ("Qty add 1 eq 2", ["alpha"]),
        ("trim(concat(' ',Name)) eq 'alpha'", ["alpha"]),
        ("substring(Name,1) eq 'eta'", ["Beta"]),
        ("indexof(Name,'lp') eq 1", ["alpha"]),
    ],
)
def test_filter_selects_expected_rows(text: str, expected: list[str | None]) -> None:
    assert names(text) == expected


def test_unqualified_string_against_enum_is_malformed() -> None:
    with pytest.raises(FilterSyntaxError) as err:
        compile_filter("Objstate eq 'Planned'", DOC)

    assert "IfsApp.TestHandling.DocState" in err.value.detail and "Edm.String" in err.value.detail


@pytest.mark.parametrize(
    "text",
    [
        "Objstate eq IfsApp.TestHandling.OtherState'Planned'",  # another enum type
        "Objstate eq IfsApp.Nowhere.DocState'Planned'",  # unknown type
        "Objstate eq IfsApp.TestHandling.DocState'Frozen'",  # not a member
    ],
)
def test_wrong_enum_literal_is_malformed(text: str) -> None:
    with pytest.raises(FilterSyntaxError):
        compile_filter(text, DOC)


def test_unknown_property_reports_ifs_message() -> None:
    with pytest.raises(FilterSyntaxError) as err:
        compile_filter("NotAColumn eq 1", DOC)

    assert err.value.detail == (
        "The property 'NotAColumn', used in a query expression, is not defined in type 'IfsApp.TestHandling.Doc'."
    )


@pytest.mark.parametrize(
    "text",
    [
        "Day eq '2026-01-01'",  # IFS wants dates unquoted
        "Name eq 1",
        "Qty eq 'one'",
        "Day eq 2026-01-01T00:00:00Z",
        "contains(Qty,'1')",
        "Qty",  # not boolean
        "Name eq 'x' and",
        "(Name eq 'x'",
        "Name eq 'x')",
        "Name eq 'unterminated",
        "Name eq 'x' Qty eq 1",
        "frobnicate(Name) eq 'x'",
        "Day eq 2026-13-45",
        "objstate eq null",  # property names are case-sensitive
        "",
    ],
)
def test_malformed_filters_raise_syntax_error(text: str) -> None:
    with pytest.raises(FilterSyntaxError):
        compile_filter(text, DOC)


@pytest.mark.parametrize(
    "text",
    [
        "Objstate has IfsApp.TestHandling.DocState'Planned'",
        "Lines/any(l: l/Qty gt 1)",
        "round(Amount) eq 10",
        "floor(Amount) eq 10",
        "Qty mod 2 eq 0",
        "Name in ('a','b')",
        "now() gt At",
        "cast(Qty,Edm.String) eq '1'",
        "Objstate gt IfsApp.TestHandling.DocState'Planned'",
    ],
)
def test_unsupported_features_raise_not_implemented(text: str) -> None:
    with pytest.raises(FilterNotImplemented):
        compile_filter(text, DOC)


def test_compiled_filter_lists_the_properties_it_reads() -> None:
    compiled = compile_filter("Qty gt 1 and (contains(Name,'a') or Objstate eq null)", DOC)

    assert compiled.properties == {"Qty", "Name", "Objstate"}


_OPS = {
    "eq": operator.eq,
    "ne": operator.ne,
    "gt": operator.gt,
    "ge": operator.ge,
    "lt": operator.lt,
    "le": operator.le,
}


@given(
    values=st.lists(st.one_of(st.none(), st.integers(-1000, 1000)), max_size=20),
    op=st.sampled_from(sorted(_OPS)),
    literal=st.integers(-1000, 1000),
)
def test_integer_comparisons_match_python_with_null_semantics(
    values: list[int | None], op: str, literal: int
) -> None:
    rows = [doc(Qty=v) for v in values]

    kept = compile_filter(f"Qty {op} {literal}", DOC).apply(rows)

    if op in ("eq", "ne"):
        expected = [r for r in rows if _OPS[op](r["Qty"], literal)]
    else:
        expected = [r for r in rows if r["Qty"] is not None and _OPS[op](r["Qty"], literal)]
    assert kept == expected


@given(text=st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20))
def test_string_literals_round_trip_with_doubled_quotes(text: str) -> None:
    literal = "'" + text.replace("'", "''") + "'"
    rows = [doc(Name=text), doc(Name=text + "x")]

    kept = compile_filter(f"Name eq {literal}", DOC).apply(rows)

    assert kept == [rows[0]]


# ---------------------------------------------------------------- $select, $orderby, key predicates


@pytest.mark.parametrize(("text", "expected"), [("", None), ("*", None), ("Name, Qty", ["Name", "Qty"])])
def test_parse_select(text: str, expected: list[str] | None) -> None:
    assert parse_select(text, DOC) == expected


def test_parse_select_rejects_unknown_column() -> None:
    with pytest.raises(FilterSyntaxError, match="The property 'Nope', used in a query expression"):
        parse_select("Name,Nope", DOC)


def test_parse_orderby_reads_directions() -> None:
    assert parse_orderby("Qty desc, Name,Day asc", DOC) == [("Qty", True), ("Name", False), ("Day", False)]


@pytest.mark.parametrize("text", ["Qty up", "Nope", "Qty desc extra", ","])
def test_parse_orderby_rejects_bad_items(text: str) -> None:
    with pytest.raises(FilterSyntaxError):
        parse_orderby(text, DOC)


def test_sort_rows_places_nulls_like_oracle() -> None:
    rows = [doc(Name="b", Qty=None), doc(Name="a", Qty=2), doc(Name="c", Qty=1), doc(Name="d", Qty=2)]

    ascending = list(rows)
    sort_rows(ascending, [("Qty", False), ("Name", False)])
    descending = list(rows)
    sort_rows(descending, [("Qty", True), ("Name", False)])

    assert [r["Name"] for r in ascending] == ["c", "a", "d", "b"]
    assert [r["Name"] for r in descending] == ["b", "a", "d", "c"]


INVOICE = EntityType(
    name="IfsApp.TestHandling.Invoice",
    properties={"Company": EDM_STRING, "InvoiceId": EDM_INT},
    keys=("Company", "InvoiceId"),
)


@pytest.mark.parametrize(
    ("text", "entity", "expected"),
    [
        ("'O''Hara'", DOC, {"Name": "O'Hara"}),
        ("Name='P1001'", DOC, {"Name": "P1001"}),
        ("Company='10',InvoiceId=105", INVOICE, {"Company": "10", "InvoiceId": 105}),
        ("InvoiceId=105, Company='a,b'", INVOICE, {"Company": "a,b", "InvoiceId": 105}),
    ],
)
def test_parse_key_predicate(text: str, entity: EntityType, expected: dict[str, Any]) -> None:
    assert parse_key_predicate(text, entity) == expected


@pytest.mark.parametrize(
    ("text", "entity"),
    [
        ("Name=5", DOC),
        ("Company='10'", INVOICE),
        ("Company='10',InvoiceId='105'", INVOICE),
        ("'10',105", INVOICE),
        ("Other='x'", DOC),
        ("Name='x", DOC),
    ],
)
def test_parse_key_predicate_rejects_bad_keys(text: str, entity: EntityType) -> None:
    with pytest.raises(FilterSyntaxError):
        parse_key_predicate(text, entity)
