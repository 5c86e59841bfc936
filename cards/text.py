"""Card text: IFS-supplied strings made inert for Teams markdown, and locale-aware amounts, dates and times."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_UP, Context, Decimal, InvalidOperation
from urllib.parse import quote, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from core.domain import RecordKind
from core.links import page_link

ELLIPSIS = "…"
NBSP = "\u00a0"
NNBSP = "\u202f"
DASH = "—"  # shown where a value is missing

# Characters Teams markdown (or Adaptive Card DATE/TIME functions) give meaning anywhere in a line.
# Parentheses are escaped too: some mobile clients ignore backslash escapes, and a `\]\(` pair stops
# even a naive link pattern from matching.
_INLINE_SPECIAL = frozenset("\\`*_~[]()<>{}")
# Starts of a line that make a list item, heading or rule: "- x", "+ x", "# x", "1. x", "---".
_BLOCK_START = re.compile(r"(?:[-+]|#{1,6}|\d{1,9}\.)(?=\s|$)|-(?=\s*-)")
_ENTITY = re.compile(r"&(?=#?[A-Za-z0-9]+;)")
# Controls, zero-width and bidi formatting characters, lone surrogates.
_STRIPPED_CATEGORIES = frozenset({"Cc", "Cf", "Cs"})


def clean(text: str | None) -> str:
    """Drop control, zero-width and bidi-override characters; collapse all whitespace to single spaces."""
    if not text:
        return ""
    kept = "".join(
        ch for ch in str(text) if ch.isspace() or unicodedata.category(ch) not in _STRIPPED_CATEGORIES
    )
    return " ".join(kept.split())


def truncate(text: str, limit: int | None, *, cut: bool = False) -> str:
    """Shorten to at most `limit` characters, at a word boundary where one is near, ending in '…'."""
    if limit is None or (len(text) <= limit and not cut):
        return text
    if limit < 1:
        return ""
    if len(text) < limit:
        return text + ELLIPSIS
    room = limit - 1
    head = text[:room]
    space = head.rfind(" ")
    if space >= room * 0.6 and text[room] != " ":
        head = head[:space]
    while head and unicodedata.combining(text[len(head)]):
        head = head[:-1]  # keep a base letter with its accents
    head = head.rstrip(" ,;:-·/")
    return head + ELLIPSIS


def escape(text: str) -> str:
    """Backslash-escape every character Teams markdown could act on; the text then renders literally."""
    escaped = "".join("\\" + ch if ch in _INLINE_SPECIAL else ch for ch in text)
    escaped = _ENTITY.sub(r"\\&", escaped)
    block = _BLOCK_START.match(escaped)
    if block:
        at = block.end() - 1 if escaped[0].isdigit() else 0
        return escaped[:at] + "\\" + escaped[at:]
    return escaped


def inert(text: str | None, limit: int | None = 200) -> str:
    """Make an IFS-supplied string show as literal text in a TextBlock or Fact: cleaned, truncated, escaped.

    Links (`[x](y)`), mentions (`<at>`), HTML tags, entities, emphasis, list markers, control,
    zero-width and bidi-override characters all end up as plain visible text (or are dropped);
    `limit` counts visible characters, including the closing '…'.
    """
    if text is None:
        return ""
    raw = str(text)
    overflow = False
    if limit is not None and len(raw) > 8 * limit + 256:
        raw, overflow = raw[: 8 * limit + 256], True  # no need to clean megabytes we will not show
    return escape(truncate(clean(raw), limit, cut=overflow))


def safe_url(url: str | None) -> str | None:
    """An http(s) URL fit for Action.OpenUrl and markdown links, or None when it is anything else."""
    if not url:
        return None
    text = str(url).strip()
    if any(ch.isspace() or unicodedata.category(ch) in _STRIPPED_CATEGORIES for ch in text):
        return None
    try:
        parts = urlsplit(text)
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        return None
    # Parentheses and brackets would end a markdown link early; percent-encoding keeps the URL equal.
    return quote(text, safe="%:/?#@!$&'*+,;=-._~")


def link(label: str, url: str | None, limit: int | None = 60) -> str:
    """A markdown link with an inert label; just the inert label when the URL is not safe."""
    target = safe_url(url)
    shown = inert(label, limit) or "link"
    return f"[{shown}]({target})" if target else shown


# --- locale formats ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LocaleFormat:
    """How one locale writes numbers, dates and times (a tiny subset of CLDR, no Babel)."""

    decimal: str
    group: str
    date: str  # tokens: yyyy MMM MM M dd d
    currency_first: bool = False
    clock_12h: bool = False
    date_time_sep: str = " "


LOCALES: Mapping[str, LocaleFormat] = {
    "en-US": LocaleFormat(".", ",", "MMM d, yyyy", currency_first=True, clock_12h=True, date_time_sep=", "),
    "en-GB": LocaleFormat(".", ",", "d MMM yyyy", currency_first=True),
    "de-DE": LocaleFormat(",", ".", "dd.MM.yyyy"),
    "sv-SE": LocaleFormat(",", NBSP, "yyyy-MM-dd"),
    "fr-FR": LocaleFormat(",", NNBSP, "dd/MM/yyyy"),
    "nb-NO": LocaleFormat(",", NBSP, "dd.MM.yyyy"),
    "da-DK": LocaleFormat(",", ".", "dd.MM.yyyy"),
    "fi-FI": LocaleFormat(",", NBSP, "d.M.yyyy"),
}
DEFAULT_LOCALE = "en-US"

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_DATE_TOKEN = re.compile(r"yyyy|MMM|MM|M|dd|d")
_ZERO_DECIMAL = frozenset("BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF".split())
_THREE_DECIMAL = frozenset("BHD IQD JOD KWD LYD OMR TND".split())
_CURRENCY_CODE = re.compile(r"[A-Z]{3}")


def locale_format(locale: str | None) -> LocaleFormat:
    """The format for `locale`: exact tag, else the first of the same language, else en-US."""
    tag = (locale or DEFAULT_LOCALE).replace("_", "-").strip()
    lang, _, region = tag.partition("-")
    exact = f"{lang.lower()}-{region.upper()}" if region else lang.lower()
    if exact in LOCALES:
        return LOCALES[exact]
    for name, fmt in LOCALES.items():
        if name.split("-")[0] == lang.lower():
            return fmt
    return LOCALES[DEFAULT_LOCALE]


def _grouped(digits: str, sep: str) -> str:
    head = len(digits) % 3 or 3
    parts = [digits[:head]] + [digits[i : i + 3] for i in range(head, len(digits), 3)]
    return sep.join(parts)


def number(value: Decimal | int, locale: str | None = None, places: int = 0) -> str:
    """A number with the locale's grouping and decimal mark, rounded half-up to `places`."""
    fmt = locale_format(locale)
    amount = Decimal(value)
    if not amount.is_finite():
        return DASH
    context = Context(prec=max(28, amount.adjusted() + places + 2))
    try:
        rounded = amount.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP, context=context)
    except InvalidOperation:
        return DASH
    sign = "-" if rounded < 0 else ""
    whole, _, frac = f"{abs(rounded):f}".partition(".")
    text = _grouped(whole, fmt.group)
    return sign + text + (fmt.decimal + frac if places else "")


def currency_code(currency: str | None) -> str:
    """An ISO 4217 code as given, or the IFS text made inert when it does not look like one."""
    code = clean(currency).upper()
    return code if _CURRENCY_CODE.fullmatch(code) else inert(currency, 12)


def money(amount: Decimal, currency: str | None, locale: str | None = None) -> str:
    """`USD 1,234.56` (en-US), `1.234,56 EUR` (de-DE), `1 234,56 SEK` (sv-SE); minor units per currency."""
    code = currency_code(currency)
    places = 0 if code in _ZERO_DECIMAL else 3 if code in _THREE_DECIMAL else 2
    text = number(amount, locale, places)
    if not code:
        return text
    return f"{code}{NBSP}{text}" if locale_format(locale).currency_first else f"{text}{NBSP}{code}"


def day(value: date, locale: str | None = None) -> str:
    """A calendar date in the locale's short form: `Mar 5, 2026`, `05.03.2026`, `2026-03-05`."""
    if isinstance(value, datetime):
        value = value.date()
    tokens = {
        "yyyy": f"{value.year:04d}",
        "MMM": _MONTHS[value.month - 1],
        "MM": f"{value.month:02d}",
        "M": str(value.month),
        "dd": f"{value.day:02d}",
        "d": str(value.day),
    }
    return _DATE_TOKEN.sub(lambda m: tokens[m.group(0)], locale_format(locale).date)


def clock(value: datetime, locale: str | None = None) -> str:
    """Hours and minutes: `2:05 PM` (en-US) or `14:05`."""
    if locale_format(locale).clock_12h:
        hour = value.hour % 12 or 12
        return f"{hour}:{value.minute:02d}{NBSP}{'AM' if value.hour < 12 else 'PM'}"
    return f"{value.hour:02d}:{value.minute:02d}"


def relative_due(due: date, today: date) -> str:
    """`due in 3 days`, `due tomorrow`, `due today`, `overdue 1 day`, `overdue 2 days`."""
    days = (due - today).days
    if days == 0:
        return "due today"
    if days == 1:
        return "due tomorrow"
    if days > 1:
        return f"due in {days} days"
    return f"overdue {-days} day{'s' if days != -1 else ''}"


def counted(count: int, singular: str, plural: str | None = None, locale: str | None = None) -> str:
    """`1 failed delivery`, `2 failed deliveries`, `1,234 steps`."""
    word = singular if count == 1 else (plural or singular + "s")
    return f"{number(count, locale)} {word}"


def ago(seconds: float) -> str:
    """A short relative time: `just now`, `5 min ago`, `in 2 h`, `3 days ago`."""
    future = seconds < 0
    span = abs(seconds)
    if span < 60:
        return "just now" if not future else "in under a minute"
    if span < 3600:
        text = f"{int(span // 60)} min"
    elif span < 86400 * 2:
        text = f"{int(span // 3600)} h"
    else:
        text = counted(int(span // 86400), "day")
    return f"in {text}" if future else f"{text} ago"


# --- context -----------------------------------------------------------------------------------

# Unverified page names following the web client's `{Plural}/List` pattern; set per tenant.
DEFAULT_LIST_PAGES: Mapping[RecordKind, str] = {
    RecordKind.INVOICE: "ManualSupplierInvoices/List",
    RecordKind.ORDER: "PurchaseOrders/List",
    RecordKind.VOUCHER: "ApproveVouchers/List",
}


@dataclass(frozen=True, slots=True)
class CardContext:
    """What builders need from outside: locale, time zone, today's date and where IFS lives."""

    today: date  # injected, so cards are reproducible and "due in N days" is testable
    locale: str = DEFAULT_LOCALE
    tz: str = "UTC"
    ifs_base_url: str | None = None  # for "open the list in IFS" links
    list_pages: Mapping[RecordKind, str] = field(default_factory=lambda: dict(DEFAULT_LIST_PAGES))

    def __post_init__(self) -> None:
        try:
            ZoneInfo(self.tz)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {self.tz!r}") from exc
        if self.ifs_base_url is not None and safe_url(self.ifs_base_url) is None:
            raise ValueError("ifs_base_url must be an http(s) URL")

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.tz)

    def list_url(self, kind: RecordKind) -> str | None:
        """The IFS list page for a kind, when a base URL and page are configured."""
        page = self.list_pages.get(kind)
        if not self.ifs_base_url or not page:
            return None
        return safe_url(page_link(self.ifs_base_url, page))

    def stamp(self, seconds: float) -> str:
        """Unix time as a local date and time in this context's zone and locale."""
        moment = datetime.fromtimestamp(seconds, UTC).astimezone(self.zone)
        return (
            day(moment, self.locale) + locale_format(self.locale).date_time_sep + clock(moment, self.locale)
        )

    def ifs_time(self, text: str | None) -> str:
        """An IFS date or date-time string shown in this zone and locale (inert as-is if unparseable).

        Offset-aware values are converted to the context zone; naive ones are shown as IFS sent them.
        """
        raw = clean(text)
        if not raw:
            return ""
        try:
            if len(raw) == 10:
                return day(date.fromisoformat(raw), self.locale)
            moment = datetime.fromisoformat(raw)
        except ValueError:
            return inert(raw, 40)
        if moment.tzinfo is not None:
            moment = moment.astimezone(self.zone)
        fmt = locale_format(self.locale)
        return day(moment, self.locale) + fmt.date_time_sep + clock(moment, self.locale)
