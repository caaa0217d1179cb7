"""A bounded map of verified access tokens, shared by the SDK and the daemon."""

from __future__ import annotations

import threading
from typing import Generic, TypeVar

V = TypeVar("V")


class TokenCache(Generic[V]):
    """Map token strings to what their check found; forget the oldest beyond size entries.

    Reads take no lock, because one dict lookup is atomic in CPython, so a
    hit costs a lookup. Writes, which happen once per new token, take a
    lock. A size of 0 keeps nothing.
    """

    def __init__(self, size: int) -> None:
        if size < 0:
            raise ValueError(f"cache size must be 0 or more, got {size}")
        self._size = size
        self._entries: dict[str, V] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, token: str) -> V | None:
        return self._entries.get(token)

    def put(self, token: str, value: V) -> None:
        if self._size == 0:
            return
        with self._lock:
            entries = self._entries
            if token not in entries:
                while len(entries) >= self._size:
                    # Dicts keep insertion order, so the first key is the oldest.
                    del entries[next(iter(entries))]
            entries[token] = value

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
