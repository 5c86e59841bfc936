"""OData v4 query options as IFS reads them: `$filter` compiled to a row predicate, `$orderby`, `$select`, keys."""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

EDM_STRING = "Edm.String"
EDM_INT = "Edm.Int32"
EDM_DECIMAL = "Edm.Decimal"
EDM_DATE = "Edm.Date"
EDM_TIMESTAMP = "Edm.DateTimeOffset"
EDM_BOOLEAN = "Edm.Boolean"

Row = Mapping[str, Any]
Getter = Callable[[Row], Any]
Predicate = Callable[[Row], bool]


class FilterError(Exception):
    """A `$filter` (or other query option) the server refuses; `detail` is the user-facing reason."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class FilterSyntaxError(FilterError):
    """Answered as 400 "Malformed Request."."""


class FilterNotImplemented(FilterError):
    """Answered with code ODP_NOT_IMPLEMENTED: valid OData the IFS OData Provider does not support."""


@dataclass(frozen=True, slots=True)
class EnumType:
    name: str  # fully qualified, e.g. IfsApp.PurchaseOrderHandling.PurchaseOrderState
    members: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class EntityType:
    name: str  # fully qualified, e.g. IfsApp.PurchaseOrderHandling.PurchaseOrder
    properties: Mapping[str, str | EnumType]  # property -> Edm primitive name or enum type
    keys: tuple[str, ...] = ()
    enums: Mapping[str, EnumType] = field(default_factory=dict)  # every enum type of the projection

    def undefined(self, prop: str) -> FilterSyntaxError:
        return FilterSyntaxError(
            f"The property '{prop}', used in a query expression, is not defined in type '{self.name}'."
        )


@dataclass(frozen=True, slots=True)
class CompiledFilter:
    text: str
    predicate: Predicate
    properties: frozenset[str]  # every property the expression reads

    def apply(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        keep = self.predicate
        return [row for row in rows if keep(row) is True]


# ---------------------------------------------------------------- tokens

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<enum>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+'(?:[^']|'')*')
  | (?P<string>'(?:[^']|'')*')
  | (?P<timestamp>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:\d{2}))
  | (?P<date>\d{4}-\d{2}-\d{2})
  | (?P<number>-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)
  | (?P<name>[$A-Za-z_][\w.]*(?:/[$A-Za-z_][\w.]*)*)
  | (?P<open>\()
  | (?P<close>\))
  | (?P<comma>,)
  | (?P<colon>:)
    """,
    re.VERBOSE,
)


@dataclass(frozen=True, slots=True)
class _Tok:
    kind: str
    text: str
    pos: int


def _tokenize(text: str) -> list[_Tok]:
    tokens: list[_Tok] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise FilterSyntaxError(f"Syntax error at position {pos} in '{text}'.")
        kind = match.lastgroup or ""
        if kind != "ws":
            tokens.append(_Tok(kind, match.group(), pos))
        pos = match.end()
    tokens.append(_Tok("end", "", len(text)))
    return tokens


# ---------------------------------------------------------------- typed expression nodes

# Constants keep their value so that comparing a property with a literal compiles to one small closure.


@dataclass(slots=True)
class _Node:
    get: Getter
    type: str | EnumType | None
    const: bool = False
    value: Any = None
    prop: str | None = None


def _const(value: Any, type_: str | EnumType | None) -> _Node:
    return _Node(lambda _row: value, type_, const=True, value=value)


_NUMERIC = {EDM_INT, EDM_DECIMAL}
_COMPARISONS = {"eq", "ne", "gt", "ge", "lt", "le"}
_ARITHMETIC = {"add", "sub", "mul", "div", "mod", "divby"}
_STRING_PREDICATES = {"contains": operator.contains, "startswith": str.startswith, "endswith": str.endswith}
_STRING_TRANSFORMS = {"tolower": str.lower, "toupper": str.upper, "trim": str.strip}
_DATE_PARTS = {"year", "month", "day"}
_TIME_PARTS = {"hour", "minute", "second"}
# Listed by IFS as unsupported by its OData Provider, or valid OData this simulator does not model.
_NOT_IMPLEMENTED_FUNCTIONS = {
    "round",
    "floor",
    "ceiling",
    "fractionalseconds",
    "totalseconds",
    "totaloffsetminutes",
    "mindatetime",
    "maxdatetime",
    "now",
    "date",
    "time",
    "isof",
    "cast",
    "geo.distance",
    "geo.length",
    "geo.intersects",
    "hassubset",
    "hassubsequence",
    "matchespattern",
}


def _to_timestamp(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _type_name(type_: str | EnumType | None) -> str:
    if type_ is None:
        return "null"
    return type_.name if isinstance(type_, EnumType) else type_


class _Parser:
    def __init__(self, text: str, entity: EntityType) -> None:
        self.text = text
        self.entity = entity
        self.tokens = _tokenize(text)
        self.i = 0
        self.properties: set[str] = set()

    def peek(self) -> _Tok:
        return self.tokens[self.i]

    def take(self) -> _Tok:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def is_word(self, *words: str) -> bool:
        tok = self.peek()
        return tok.kind == "name" and tok.text in words

    def expect(self, kind: str) -> _Tok:
        tok = self.take()
        if tok.kind != kind:
            raise FilterSyntaxError(f"Syntax error at position {tok.pos} in '{self.text}'.")
        return tok

    def parse(self) -> _Node:
        node = self.parse_or()
        if self.peek().kind != "end":
            tok = self.peek()
            raise FilterSyntaxError(f"Syntax error at position {tok.pos} in '{self.text}'.")
        if node.type != EDM_BOOLEAN:
            raise FilterSyntaxError("The $filter expression must evaluate to a single boolean value.")
        return node

    def parse_or(self) -> _Node:
        left = self.parse_and()
        while self.is_word("or"):
            self.take()
            left = _logical(left, self.parse_and(), is_and=False)
        return left

    def parse_and(self) -> _Node:
        left = self.parse_not()
        while self.is_word("and"):
            self.take()
            left = _logical(left, self.parse_not(), is_and=True)
        return left

    def parse_not(self) -> _Node:
        if self.is_word("not"):
            self.take()
            inner = self.parse_not()
            _require_boolean(inner, "not")
            get = inner.get
            return _Node(lambda row: None if (v := get(row)) is None else not v, EDM_BOOLEAN)
        return self.parse_comparison()

    def parse_comparison(self) -> _Node:
        left = self.parse_arithmetic()
        tok = self.peek()
        if tok.kind == "name" and tok.text in _COMPARISONS:
            self.take()
            return _compare(tok.text, left, self.parse_arithmetic())
        if tok.kind == "name" and tok.text in ("has", "in"):
            raise FilterNotImplemented(f"The '{tok.text}' operator is not supported.")
        return left

    def parse_arithmetic(self) -> _Node:
        node = self.parse_term()
        while self.is_word("add", "sub"):
            op = self.take().text
            node = _arithmetic(op, node, self.parse_term())
        return node

    def parse_term(self) -> _Node:
        node = self.parse_primary()
        while self.is_word(*_ARITHMETIC - {"add", "sub"}):
            op = self.take().text
            if op in ("mod", "divby"):
                raise FilterNotImplemented(f"The '{op}' operator is not supported.")
            node = _arithmetic(op, node, self.parse_primary())
        return node

    def parse_primary(self) -> _Node:
        tok = self.take()
        if tok.kind == "open":
            node = self.parse_or()
            self.expect("close")
            return node
        if tok.kind == "string":
            return _const(tok.text[1:-1].replace("''", "'"), EDM_STRING)
        if tok.kind == "number":
            text = tok.text
            is_int = all(c not in text for c in ".eE")
            return _const(int(text) if is_int else float(text), EDM_INT if is_int else EDM_DECIMAL)
        if tok.kind == "date":
            try:
                date.fromisoformat(tok.text)
            except ValueError:
                raise FilterSyntaxError(f"Invalid date literal '{tok.text}'.") from None
            return _const(tok.text, EDM_DATE)
        if tok.kind == "timestamp":
            try:
                value = _to_timestamp(tok.text.replace("Z", "+00:00"))
            except ValueError:
                raise FilterSyntaxError(f"Invalid DateTimeOffset literal '{tok.text}'.") from None
            return _const(value, EDM_TIMESTAMP)
        if tok.kind == "enum":
            return self.enum_literal(tok)
        if tok.kind == "name":
            if tok.text in ("true", "false"):
                return _const(tok.text == "true", EDM_BOOLEAN)
            if tok.text == "null":
                return _const(None, None)
            if self.peek().kind == "open":
                return self.function(tok)
            return self.property(tok)
        raise FilterSyntaxError(f"Syntax error at position {tok.pos} in '{self.text}'.")

    def enum_literal(self, tok: _Tok) -> _Node:
        quote = tok.text.index("'")
        type_name, member = tok.text[:quote], tok.text[quote + 1 : -1].replace("''", "'")
        enum = self.entity.enums.get(type_name)
        if enum is None:
            raise FilterSyntaxError(f"The type '{type_name}' is not defined in the metadata.")
        if member not in enum.members:
            raise FilterSyntaxError(
                f"The value '{member}' is not a member of the enumeration type '{type_name}'."
            )
        return _const(member, enum)

    def property(self, tok: _Tok) -> _Node:
        name = tok.text
        if "/" in name:
            raise self.entity.undefined(name.split("/")[0])
        if name.startswith("$"):
            raise FilterNotImplemented(f"'{name}' is not supported in $filter.")
        type_ = self.entity.properties.get(name)
        if type_ is None:
            raise self.entity.undefined(name)
        self.properties.add(name)
        if type_ == EDM_TIMESTAMP:
            return _Node(lambda row: _to_timestamp(row[name]), type_, prop=name)
        return _Node(operator.itemgetter(name), type_, prop=name)

    def function(self, tok: _Tok) -> _Node:
        name = tok.text
        if name.rpartition("/")[2] in ("any", "all"):
            raise FilterNotImplemented(f"Lambda operator '{name.rpartition('/')[2]}' is not supported.")
        if name in _NOT_IMPLEMENTED_FUNCTIONS or name.startswith("geo."):
            raise FilterNotImplemented(f"The function '{name}' is not supported.")
        self.expect("open")
        args: list[_Node] = []
        if self.peek().kind != "close":
            args.append(self.parse_or())
            while self.peek().kind == "comma":
                self.take()
                args.append(self.parse_or())
        self.expect("close")
        if name in _STRING_PREDICATES:
            return _string_predicate(name, args)
        if name in _STRING_TRANSFORMS:
            (arg,) = _string_args(name, args, 1)
            fn, get = _STRING_TRANSFORMS[name], arg.get
            return _Node(lambda row: None if (v := get(row)) is None else fn(v), EDM_STRING)
        if name == "length":
            (arg,) = _string_args(name, args, 1)
            get = arg.get
            return _Node(lambda row: None if (v := get(row)) is None else len(v), EDM_INT)
        if name == "indexof":
            hay, needle = _string_args(name, args, 2)
            hget, nget = hay.get, needle.get
            return _Node(lambda row: _null_or(hget(row), nget(row), str.find), EDM_INT)
        if name == "concat":
            left, right = _string_args(name, args, 2)
            lget, rget = left.get, right.get
            return _Node(lambda row: _null_or(lget(row), rget(row), operator.add), EDM_STRING)
        if name == "substring":
            return _substring(args)
        if name in _DATE_PARTS or name in _TIME_PARTS:
            return _date_part(name, args)
        raise FilterSyntaxError(f"Unknown function '{name}'.")


def _null_or(a: Any, b: Any, fn: Callable[[Any, Any], Any]) -> Any:
    return None if a is None or b is None else fn(a, b)


def _require_boolean(node: _Node, where: str) -> None:
    if node.type not in (EDM_BOOLEAN, None):
        raise FilterSyntaxError(
            f"The operand of '{where}' must be of type Edm.Boolean, not '{_type_name(node.type)}'."
        )


def _logical(left: _Node, right: _Node, *, is_and: bool) -> _Node:
    _require_boolean(left, "and" if is_and else "or")
    _require_boolean(right, "and" if is_and else "or")
    lget, rget = left.get, right.get
    if is_and:

        def both(row: Row) -> bool | None:
            a = lget(row)
            if a is False:
                return False
            b = rget(row)
            if b is False:
                return False
            return None if a is None or b is None else True

        return _Node(both, EDM_BOOLEAN)

    def either(row: Row) -> bool | None:
        a = lget(row)
        if a is True:
            return True
        b = rget(row)
        if b is True:
            return True
        return None if a is None or b is None else False

    return _Node(either, EDM_BOOLEAN)


def _arithmetic(op: str, left: _Node, right: _Node) -> _Node:
    # IFS allows add/sub/mul/div on numbers only ("not supported with Date, Time or DateTimeOffset").
    for node in (left, right):
        if node.type not in (*_NUMERIC, None):
            raise FilterSyntaxError(f"The operator '{op}' cannot be applied to '{_type_name(node.type)}'.")
    both_int = left.type == EDM_INT and right.type == EDM_INT
    fn = _ARITHMETIC_OPS[op]
    if op == "div" and both_int:
        fn = _int_div
    lget, rget = left.get, right.get

    def compute(row: Row) -> Any:
        a, b = lget(row), rget(row)
        if a is None or b is None:
            return None
        try:
            return fn(a, b)
        except ZeroDivisionError:
            return None

    return _Node(compute, EDM_INT if both_int else EDM_DECIMAL)


def _int_div(a: int, b: int) -> int:
    return int(a / b)


_ARITHMETIC_OPS: dict[str, Callable[[Any, Any], Any]] = {
    "add": operator.add,
    "sub": operator.sub,
    "mul": operator.mul,
    "div": operator.truediv,
}


def _check_comparable(op: str, left: _Node, right: _Node) -> None:
    lt, rt = left.type, right.type
    if lt is None or rt is None:
        if op not in ("eq", "ne"):
            raise FilterSyntaxError(f"The operator '{op}' cannot be applied to null.")
        return
    if isinstance(lt, EnumType) or isinstance(rt, EnumType):
        # OData 4 (and so IFS) wants enum literals fully qualified; a plain 'Planned' is an Edm.String.
        if not (isinstance(lt, EnumType) and isinstance(rt, EnumType) and lt.name == rt.name):
            raise FilterSyntaxError(
                f"The types '{_type_name(lt)}' and '{_type_name(rt)}' are not compatible for operator '{op}'."
            )
        if op not in ("eq", "ne"):
            raise FilterNotImplemented(f"The operator '{op}' is not supported for enumeration types.")
        return
    if lt in _NUMERIC and rt in _NUMERIC:
        return
    if lt != rt:
        raise FilterSyntaxError(f"The types '{lt}' and '{rt}' are not compatible for operator '{op}'.")


_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "eq": operator.eq,
    "ne": operator.ne,
    "gt": operator.gt,
    "ge": operator.ge,
    "lt": operator.lt,
    "le": operator.le,
}


def _compare(op: str, left: _Node, right: _Node) -> _Node:
    _check_comparable(op, left, right)
    fn = _OPS[op]
    # Fast paths: a property compared with a literal is what every poll sends, over up to 100k rows.
    if left.prop is not None and right.const and left.type != EDM_TIMESTAMP:
        return _Node(_prop_vs_const(op, fn, left.prop, right.value), EDM_BOOLEAN)
    if right.prop is not None and left.const and right.type != EDM_TIMESTAMP:
        flipped = {"gt": "lt", "ge": "le", "lt": "gt", "le": "ge"}.get(op, op)
        return _Node(_prop_vs_const(flipped, _OPS[flipped], right.prop, left.value), EDM_BOOLEAN)
    lget, rget = left.get, right.get
    if op in ("eq", "ne"):
        return _Node(lambda row: fn(lget(row), rget(row)), EDM_BOOLEAN)

    def ordered(row: Row) -> bool:
        a, b = lget(row), rget(row)
        return a is not None and b is not None and fn(a, b)

    return _Node(ordered, EDM_BOOLEAN)


def _prop_vs_const(op: str, fn: Callable[[Any, Any], bool], prop: str, value: Any) -> Predicate:
    if op == "eq":
        return lambda row: row[prop] == value
    if op == "ne":
        return lambda row: row[prop] != value
    if value is None:
        return lambda row: False

    def ordered(row: Row) -> bool:
        v = row[prop]
        return v is not None and fn(v, value)

    return ordered


def _string_args(name: str, args: list[_Node], count: int) -> list[_Node]:
    if len(args) != count:
        raise FilterSyntaxError(f"The function '{name}' takes {count} argument(s), got {len(args)}.")
    for arg in args:
        if arg.type not in (EDM_STRING, None):
            raise FilterSyntaxError(
                f"The function '{name}' expects Edm.String arguments, not '{_type_name(arg.type)}'."
            )
    return args


def _string_predicate(name: str, args: list[_Node]) -> _Node:
    hay, needle = _string_args(name, args, 2)
    fn = _STRING_PREDICATES[name]
    if hay.prop is not None and needle.const:
        prop, value = hay.prop, needle.value
        if value is None:
            return _Node(lambda row: None, EDM_BOOLEAN)
        return _Node(lambda row: None if (v := row[prop]) is None else fn(v, value), EDM_BOOLEAN)
    hget, nget = hay.get, needle.get
    return _Node(lambda row: _null_or(hget(row), nget(row), fn), EDM_BOOLEAN)


def _substring(args: list[_Node]) -> _Node:
    if len(args) not in (2, 3) or args[0].type not in (EDM_STRING, None):
        raise FilterSyntaxError("The function 'substring' takes a string and one or two integers.")
    if any(arg.type not in (EDM_INT, None) for arg in args[1:]):
        raise FilterSyntaxError("The function 'substring' takes a string and one or two integers.")
    sget, start = args[0].get, args[1].get
    length = args[2].get if len(args) == 3 else None

    def substring(row: Row) -> str | None:
        s, i = sget(row), start(row)
        if s is None or i is None:
            return None
        if length is None:
            return s[i:]
        n = length(row)
        return None if n is None else s[i : i + n]

    return _Node(substring, EDM_STRING)


def _date_part(name: str, args: list[_Node]) -> _Node:
    allowed = (EDM_DATE, EDM_TIMESTAMP) if name in _DATE_PARTS else (EDM_TIMESTAMP,)
    if len(args) != 1 or args[0].type not in (*allowed, None):
        raise FilterSyntaxError(f"The function '{name}' expects one argument of type {' or '.join(allowed)}.")
    get = args[0].get
    if args[0].type == EDM_DATE:
        index = {"year": (0, 4), "month": (5, 7), "day": (8, 10)}[name]
        return _Node(lambda row: None if (v := get(row)) is None else int(v[index[0] : index[1]]), EDM_INT)
    return _Node(lambda row: None if (v := get(row)) is None else getattr(v, name), EDM_INT)


def compile_filter(text: str, entity: EntityType) -> CompiledFilter:
    """Parse and type-check `text` against `entity`; raise FilterError subclasses for what IFS refuses."""
    if not text.strip():
        raise FilterSyntaxError("The $filter expression is empty.")
    parser = _Parser(text, entity)
    node = parser.parse()
    return CompiledFilter(text=text, predicate=node.get, properties=frozenset(parser.properties))


# ---------------------------------------------------------------- other query options


def parse_select(text: str, entity: EntityType) -> list[str] | None:
    """Columns named by `$select`, or None for all columns."""
    if text.strip() in ("", "*"):
        return None
    columns = [c.strip() for c in text.split(",") if c.strip()]
    for column in columns:
        if column not in entity.properties:
            raise entity.undefined(column)
    return columns


def parse_orderby(text: str, entity: EntityType) -> list[tuple[str, bool]]:
    """`$orderby` as (property, descending) pairs."""
    order: list[tuple[str, bool]] = []
    for item in text.split(",") if text.strip() else ():
        parts = item.split()
        if not parts or len(parts) > 2 or (len(parts) == 2 and parts[1] not in ("asc", "desc")):
            raise FilterSyntaxError(f"Invalid $orderby item '{item.strip()}'.")
        if parts[0] not in entity.properties:
            raise entity.undefined(parts[0])
        order.append((parts[0], len(parts) == 2 and parts[1] == "desc"))
    return order


def sort_rows(rows: list[dict[str, Any]], order: list[tuple[str, bool]]) -> None:
    """Sort in place; NULLs last ascending and first descending, as Oracle (under IFS) orders them."""
    for prop, descending in reversed(order):
        rows.sort(key=lambda row: (row[prop] is None, row[prop]), reverse=descending)


_KEY_ITEM = re.compile(r"\s*(?:(?P<name>[A-Za-z_]\w*)\s*=\s*)?(?P<value>'(?:[^']|'')*'|[^,']+?)\s*(?:,|$)")


def parse_key_predicate(text: str, entity: EntityType) -> dict[str, Any]:
    """`OrderNo='P1'`, `'P1'` or `Company='10',InvoiceId=105` as typed key values."""
    values: dict[str, Any] = {}
    pos = 0
    while pos < len(text):
        match = _KEY_ITEM.match(text, pos)
        if match is None or match.end() == pos:
            raise FilterSyntaxError(f"Invalid key predicate '({text})'.")
        name = match["name"]
        if name is None and len(entity.keys) == 1 and not values:
            name = entity.keys[0]
        if name not in entity.keys:
            raise FilterSyntaxError(f"Key predicate '({text})' does not match the keys of '{entity.name}'.")
        raw = match["value"]
        if entity.properties[name] == EDM_INT:
            if not re.fullmatch(r"-?\d+", raw):
                raise FilterSyntaxError(f"The key value {raw} is not compatible with '{name}' (Edm.Int32).")
            values[name] = int(raw)
        else:
            if len(raw) < 2 or raw[0] != "'" or raw[-1] != "'":
                raise FilterSyntaxError(f"The key value {raw} is not compatible with '{name}' (Edm.String).")
            values[name] = raw[1:-1].replace("''", "'")
        pos = match.end()
    if set(values) != set(entity.keys):
        raise FilterSyntaxError(f"Key predicate '({text})' must name every key: {', '.join(entity.keys)}.")
    return values
