"""The Teams app icons, drawn in pure Python and written as PNG with zlib and struct (same bytes every build)."""

from __future__ import annotations

import functools
import math
import struct
import zlib
from collections.abc import Callable, Sequence

COLOR_SIZE = 192  # Teams: full-colour icon 192x192
OUTLINE_SIZE = 32  # Teams: outline icon 32x32, white on transparent, nothing else

WHITE = (255, 255, 255)

# The glyph is drawn in unit coordinates (0..1 across the icon) so both sizes share one design:
# a rounded square (the "document awaiting approval") and a check mark.
_BOX_HALF = 0.42
_BOX_RADIUS = 0.16
_CHECK = ((0.28, 0.52), (0.44, 0.68), (0.73, 0.36))
_CHECK_HALF_WIDTH_COLOR = 0.055
_OUTLINE_BORDER = 2.0  # pixels, for the outline icon's rounded square
_OUTLINE_CHECK_HALF_WIDTH = 1.6  # pixels

Pixel = tuple[int, int, int, int]


def hex_rgb(color: str) -> tuple[int, int, int]:
    """'#4B2A83' -> (75, 42, 131)."""
    text = color.removeprefix("#")
    if len(text) != 6:
        raise ValueError(f"not a #RRGGBB colour: {color!r}")
    return int(text[0:2], 16), int(text[2:4], 16), int(text[4:6], 16)


@functools.lru_cache(maxsize=4)  # about a second of pure Python per colour
def color_icon(accent: str) -> bytes:
    """192x192 RGBA: the accent-coloured rounded square filling the icon, a white check mark on it."""
    rgb = hex_rgb(accent)
    n = COLOR_SIZE
    radius = _BOX_RADIUS * n
    check = _scaled(_CHECK, n)
    check_half = _CHECK_HALF_WIDTH_COLOR * n

    def pixel(x: float, y: float) -> Pixel:
        box = _coverage(_rounded_square(x, y, n / 2, n / 2, n / 2, radius))
        if box == 0.0:
            return (0, 0, 0, 0)
        mark = _coverage(_polyline(x, y, check) - check_half)
        # white over the accent colour, then the square's own edge as alpha
        rgb_out = tuple(round(c + (255 - c) * mark) for c in rgb)
        return (rgb_out[0], rgb_out[1], rgb_out[2], round(255 * box))

    return encode_png(n, n, _raster(n, pixel))


@functools.lru_cache(maxsize=1)
def outline_icon() -> bytes:
    """32x32 RGBA: a white rounded-square border and check mark; every pixel white or fully transparent."""
    n = OUTLINE_SIZE
    half = _BOX_HALF * n
    radius = _BOX_RADIUS * n
    check = _scaled(_CHECK, n)

    def pixel(x: float, y: float) -> Pixel:
        border = abs(_rounded_square(x, y, n / 2, n / 2, half, radius) + _OUTLINE_BORDER / 2) - _OUTLINE_BORDER / 2
        mark = _polyline(x, y, check) - _OUTLINE_CHECK_HALF_WIDTH
        # Teams wants no anti-aliasing grey: a pixel is in (white, opaque) or out (transparent)
        return (*WHITE, 255) if min(border, mark) <= 0.0 else (0, 0, 0, 0)

    return encode_png(n, n, _raster(n, pixel))


# --------------------------------------------------------------------------- drawing

def _raster(n: int, pixel: Callable[[float, float], Pixel]) -> list[list[Pixel]]:
    return [[pixel(x + 0.5, y + 0.5) for x in range(n)] for y in range(n)]


def _scaled(points: Sequence[tuple[float, float]], n: int) -> list[tuple[float, float]]:
    return [(px * n, py * n) for px, py in points]


def _coverage(distance: float) -> float:
    """Signed distance at a pixel centre -> share of the pixel inside the shape (one-pixel ramp)."""
    return min(1.0, max(0.0, 0.5 - distance))


def _rounded_square(x: float, y: float, cx: float, cy: float, half: float, radius: float) -> float:
    """Signed distance to a square of half-size `half` centred on (cx, cy), corners rounded by `radius`."""
    qx = abs(x - cx) - (half - radius)
    qy = abs(y - cy) - (half - radius)
    outside = math.hypot(max(qx, 0.0), max(qy, 0.0))
    inside = min(max(qx, qy), 0.0)
    return outside + inside - radius


def _segment(x: float, y: float, a: tuple[float, float], b: tuple[float, float]) -> float:
    ax, ay = a
    bx, by = b
    dx, dy = bx - ax, by - ay
    t = max(0.0, min(1.0, ((x - ax) * dx + (y - ay) * dy) / (dx * dx + dy * dy)))
    return math.hypot(x - (ax + t * dx), y - (ay + t * dy))


def _polyline(x: float, y: float, points: Sequence[tuple[float, float]]) -> float:
    return min(_segment(x, y, a, b) for a, b in zip(points, points[1:], strict=False))


# --------------------------------------------------------------------------- PNG

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def encode_png(width: int, height: int, rows: Sequence[Sequence[Pixel]]) -> bytes:
    """8-bit RGBA, non-interlaced, filter 0 on every row, one IDAT chunk, no timestamps."""
    if len(rows) != height or any(len(row) != width for row in rows):
        raise ValueError("rows do not match the image size")
    raw = bytearray()
    for row in rows:
        raw.append(0)
        for r, g, b, a in row:
            raw += bytes((r, g, b, a))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    return (PNG_SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(bytes(raw), 9))
            + _chunk(b"IEND", b""))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
