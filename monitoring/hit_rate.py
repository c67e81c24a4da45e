"""Did the user click what we served? The recommender's hit signal, decided per served list.

Why a performance signal: score distributions say what the model believes; a hit says whether users agreed.
A list served to a user at time t is a **hit** when that user clicks one of its items within ``window_ms``
after t (event time), and a **miss** once the window has passed without one. Each list is decided once.
Time is the events' own: a list expires when events at least ``window_ms`` younger have been seen, so a
replay decides exactly as the first pass did.

At most ``max_pending`` lists wait at once (they go into the monitor's checkpoint); beyond that the oldest
waiting list is dropped undecided, and counted in ``dropped``.

>>> t = HitTracker(window_ms=1000)
>>> t.served("u1", ["a", "b"], ts=0, model="mf@1")
>>> t.clicked("u1", "b", ts=500)
[('mf@1', 'hit', 0)]
>>> t.served("u2", ["c"], ts=600, model="mf@1")
>>> t.expire(now_ts=1700)
[('mf@1', 'miss', 600)]
"""

from __future__ import annotations

import hashlib
from collections import deque
from typing import Any

Outcome = tuple[str, str, int]  # model, "hit" | "miss", ts of the served list


class HitTracker:
    def __init__(self, window_ms: int = 600_000, max_pending: int = 5000) -> None:
        self.window_ms = window_ms
        self.max_pending = max_pending
        self.dropped = 0
        self._pending: deque[list[Any]] = deque()  # [ts, user, items, model, decided], in serving order

    def served(self, user: str, items: list[str], *, ts: int, model: str) -> None:
        self._pending.append([ts, user, set(items), model, False])
        while len(self._pending) > self.max_pending:
            if not self._pending.popleft()[4]:
                self.dropped += 1

    def clicked(self, user: str, item: str, *, ts: int) -> list[Outcome]:
        out = []
        for entry in self._pending:
            served_ts, who, items, model, decided = entry
            if not decided and who == user and item in items and served_ts <= ts <= served_ts + self.window_ms:
                entry[4] = True
                out.append((model, "hit", served_ts))
        return out

    def expire(self, now_ts: int) -> list[Outcome]:
        out = []
        while self._pending and self._pending[0][0] + self.window_ms < now_ts:
            served_ts, _, _, model, decided = self._pending.popleft()
            if not decided:
                out.append((model, "miss", served_ts))
        return out

    def state(self) -> dict[str, Any]:
        return {"window_ms": self.window_ms, "dropped": self.dropped,
                "pending": [[ts, user, sorted(items), model, decided] for ts, user, items, model, decided
                            in self._pending]}

    @classmethod
    def from_state(cls, state: dict[str, Any], max_pending: int = 5000) -> HitTracker:
        tracker = cls(state["window_ms"], max_pending)
        tracker.dropped = state["dropped"]
        tracker._pending = deque([ts, user, set(items), model, decided]
                                 for ts, user, items, model, decided in state["pending"])
        return tracker


class ClickCounts:
    """Approximate clicks per item in fixed memory (a count-min sketch): how popular a served item is.

    Why a sketch: the monitor's whole state is one checkpoint record under the message limit, and a catalogue
    may hold millions of items. Estimates only ever over-count, by at most ~e/width of all clicks with
    probability 1 - e^-depth.

    >>> c = ClickCounts(width=64, depth=3)
    >>> for item in ["a", "a", "b"]:
    ...     c.add(item)
    >>> c.estimate("a") >= 2, c.estimate("zzz") <= 1
    (True, True)
    """

    def __init__(self, width: int = 4096, depth: int = 4) -> None:
        self.width, self.depth = width, depth
        self.table = [[0] * width for _ in range(depth)]

    def _cells(self, item: str) -> list[int]:
        digest = hashlib.blake2b(item.encode(), digest_size=4 * self.depth).digest()
        return [int.from_bytes(digest[4 * i : 4 * i + 4], "little") % self.width for i in range(self.depth)]

    def add(self, item: str) -> None:
        for row, cell in zip(self.table, self._cells(item), strict=True):
            row[cell] += 1

    def estimate(self, item: str) -> int:
        return min(row[cell] for row, cell in zip(self.table, self._cells(item), strict=True))

    def state(self) -> dict[str, Any]:
        return {"width": self.width, "depth": self.depth, "table": self.table}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> ClickCounts:
        counts = cls(state["width"], state["depth"])
        counts.table = [list(row) for row in state["table"]]
        return counts
