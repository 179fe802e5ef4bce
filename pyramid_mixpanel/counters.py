"""Thread-safe counters, shared by every part that counts what happened to messages."""

from __future__ import annotations

import threading
import typing as t

__all__ = ["Counters"]


class Counters:
    """Named integer counters that many threads may increase at once.

    :param names: counters that exist (at 0) from the start, so a snapshot always shows them;
        other names are created on first :meth:`add`.
    """

    def __init__(self, names: t.Iterable[str] = ()) -> None:
        self._lock = threading.Lock()
        self._values = dict.fromkeys(names, 0)

    def add(self, name: str, amount: int = 1) -> None:
        """Increase counter ``name`` by ``amount``."""
        with self._lock:
            self._values[name] = self._values.get(name, 0) + amount

    def __getitem__(self, name: str) -> int:
        with self._lock:
            return self._values.get(name, 0)

    def snapshot(self) -> dict[str, int]:
        """A copy of every counter."""
        with self._lock:
            return dict(self._values)

    def __repr__(self) -> str:
        return f"Counters({self.snapshot()!r})"
