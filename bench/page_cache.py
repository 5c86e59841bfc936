"""The benchmarks' cache of the IFS simulator's encoded pages: a repeated query (same path, same data
version) is answered with the bytes sent before, least recently used first out past a byte budget."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

PAGE_CACHE_BYTES = 256 * 1024 * 1024


class EncodedPageCache:
    """Satisfies simulator.ifs_http.PageCache."""

    def __init__(self, max_bytes: int = PAGE_CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._pages: OrderedDict[Hashable, bytes] = OrderedDict()
        self._bytes = 0

    def get(self, key: Hashable) -> bytes | None:
        page = self._pages.get(key)
        if page is not None:
            self._pages.move_to_end(key)
        return page

    def put(self, key: Hashable, page: bytes) -> None:
        self._pages[key] = page
        self._bytes += len(page)
        while self._bytes > self.max_bytes:
            self._bytes -= len(self._pages.popitem(last=False)[1])
