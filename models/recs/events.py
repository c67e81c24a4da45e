"""Click-event contract for the recommender and the pieces that make applying events idempotent.

Kafka delivers at least once, so the model must tolerate replays: every event carries a stable ``id`` and
:class:`Deduper` remembers a bounded window of ids that were already applied.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from hashlib import blake2b
from typing import Any

import numpy as np

MAX_TS_MS = 253_402_300_799_999  # 9999-12-31: as streams/contracts/schemas.py (models/ imports no contracts)
EVENT_TYPES = ("impression", "click", "like", "rating", "purchase")

# Implicit-feedback strength per event type. Impressions are a weak positive (the item was at least shown and
# not skipped upstream); ratings are scaled by value into [RATING_MIN_WEIGHT, RATING_MAX_WEIGHT] so that a
# 5-star rating sits between a like and a purchase, and a 0.5-star rating barely counts.
DEFAULT_EVENT_WEIGHTS: dict[str, float] = {
    "impression": 0.1,
    "click": 1.0,
    "like": 2.0,
    "purchase": 4.0,
}
RATING_MIN_WEIGHT = 0.1
RATING_MAX_WEIGHT = 3.0
RATING_SCALE = (0.5, 5.0)


@dataclass(frozen=True, slots=True)
class ClickEvent:
    """One user-item interaction. ``ts`` is ms since epoch and may arrive out of order."""

    id: str
    user_id: str
    item_id: str
    event: str
    value: float | None = None
    ts: int = 0

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ClickEvent:
        """Parse the ``clicks`` topic JSON; raises ValueError so a processor can dead-letter the record."""
        try:
            event = str(d["event"])
            if event not in EVENT_TYPES:
                raise ValueError(f"unknown event type {event!r}")
            value = d.get("value")
            ts = d.get("ts") or 0
            if isinstance(ts, bool) or not isinstance(ts, int | float) or not -MAX_TS_MS <= ts <= MAX_TS_MS:
                raise ValueError(f"field 'ts' must be milliseconds since epoch within ±{MAX_TS_MS}, got {ts!r}")
            return cls(
                id=str(d["id"]),
                user_id=str(d["user_id"]),
                item_id=str(d["item_id"]),
                event=event,
                value=None if value is None else float(value),
                ts=int(ts),
            )
        except KeyError as exc:
            raise ValueError(f"click event missing field {exc.args[0]!r}") from exc
        except OverflowError as exc:  # an integer beyond float range (valid JSON: 10**400)
            raise ValueError(f"click event number out of range: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "id": self.id,
            "user_id": self.user_id,
            "item_id": self.item_id,
            "event": self.event,
            "ts": self.ts,
        }
        if self.value is not None:
            d["value"] = self.value
        return d


def event_weight(ev: ClickEvent, weights: Mapping[str, float] | None = None) -> float:
    """Map an event to a training weight; ratings without a value count as a mid rating."""
    w = DEFAULT_EVENT_WEIGHTS if weights is None else weights
    if ev.event == "rating":
        lo, hi = RATING_SCALE
        v = 3.0 if ev.value is None else min(max(ev.value, lo), hi)
        frac = (v - lo) / (hi - lo)
        return RATING_MIN_WEIGHT + frac * (RATING_MAX_WEIGHT - RATING_MIN_WEIGHT)
    return float(w.get(ev.event, 0.0))


class Deduper:
    """Remembers the last ~``capacity`` event ids so replays after a restart, and a producer's retries, are
    applied once.

    A bounded window suffices because Kafka replays start from the last checkpoint's offsets, which are close
    behind; the window only has to cover one checkpoint interval of events plus upstream retries.

    Ids are kept as 64-bit BLAKE2b hashes, not strings: the newest generation (up to ``generation`` ids) in a
    set, older generations merged into one sorted numpy array (8 bytes an id, plus 4 for its generation) that
    a whole batch is looked up in at once. A full window of 1M ids costs ~15 MB instead of ~160 MB of Python
    strings, so the worker's memory stops growing after its first million clicks rather than creeping for
    hours. Eviction drops the oldest generation, so the window holds about ``capacity - generation`` to
    ``capacity`` ids (``generation`` is at most a tenth of ``capacity``). Two distinct ids share a hash with
    probability ~n²/2⁶⁵ (n = ids in the window: ~3e-8 at 1M); such an event would be taken for a duplicate.
    """

    def __init__(self, capacity: int = 1_000_000, generation: int = 50_000) -> None:
        if capacity < 1 or generation < 1:
            raise ValueError(f"capacity and generation must be positive, got {capacity} and {generation}")
        self.capacity = capacity
        self.generation = max(1, min(generation, capacity // 10))
        self._current: set[int] = set()
        self._keys = np.zeros(0, np.uint64)  # every frozen hash, sorted
        self._born = np.zeros(0, np.uint32)  # the generation each of them was frozen in
        self._sizes: deque[tuple[int, int]] = deque()  # (generation, how many ids), oldest first
        self._next_generation = 0

    def __contains__(self, event_id: str) -> bool:
        return bool(self._known(_id_hashes([event_id]))[0])

    def __len__(self) -> int:
        return len(self._keys) + len(self._current)

    @property
    def nbytes(self) -> int:
        """Approximate memory held: 12 bytes a frozen id, ~60 for one in the newest generation's set."""
        return len(self._keys) * 12 + len(self._current) * 60

    def add(self, event_id: str) -> bool:
        """Record ``event_id``; returns False if it was already present (a duplicate)."""
        return bool(self.add_many([event_id])[0])

    def add_many(self, event_ids: Sequence[str]) -> np.ndarray:
        """Record a batch; element k is True when ``event_ids[k]`` is new (a repeat within the batch is not)."""
        hashes = _id_hashes(event_ids)
        fresh = np.zeros(len(hashes), bool)
        start = 0
        while start < len(hashes):  # in slices that fill the newest generation at most, so none outgrows it
            stop = min(len(hashes), start + self.generation - len(self._current))
            part = hashes[start:stop]
            new = ~self._known(part)
            current = self._current
            for k in np.flatnonzero(new).tolist():
                h = int(part[k])
                if h in current:
                    new[k] = False
                else:
                    current.add(h)
            fresh[start:stop] = new
            if len(current) >= self.generation:
                self._freeze()
            start = stop
        return fresh

    def _known(self, hashes: np.ndarray) -> np.ndarray:
        found = np.zeros(len(hashes), bool)
        if len(self._keys):
            at = np.searchsorted(self._keys, hashes)
            at[at == len(self._keys)] = 0
            found = self._keys[at] == hashes
        if self._current:
            current = self._current
            found |= np.fromiter((h in current for h in hashes.tolist()), bool, len(hashes))
        return found

    def _freeze(self) -> None:
        self._add_generation(np.fromiter(self._current, np.uint64, len(self._current)))
        self._current = set()

    def _add_generation(self, hashes: np.ndarray) -> None:
        """Merge one generation into the sorted array (np.insert: one copy, not a sort of everything), then drop
        the oldest generations past the window."""
        hashes = np.sort(hashes)
        gen = self._next_generation
        self._next_generation += 1
        at = np.searchsorted(self._keys, hashes)
        self._keys = np.insert(self._keys, at, hashes)
        self._born = np.insert(self._born, at, np.uint32(gen))
        self._sizes.append((gen, len(hashes)))
        frozen, oldest_kept = len(self._keys), None
        while self._sizes and frozen > self.capacity - self.generation:
            oldest_kept = self._sizes[0][0] + 1
            frozen -= self._sizes.popleft()[1]
        if oldest_kept is not None:
            keep = self._born >= oldest_kept
            self._keys, self._born = self._keys[keep], self._born[keep]

    def state(self) -> tuple[np.ndarray, np.ndarray]:
        """(every hash as int64, oldest generation first and the newest last; each generation's length)."""
        order = np.argsort(self._born, kind="stable")
        newest = np.fromiter(self._current, np.uint64, len(self._current))
        hashes = np.concatenate([self._keys[order], newest])
        lengths = [n for _gen, n in self._sizes] + [len(newest)]
        return hashes.view(np.int64), np.array(lengths, np.int64)

    @classmethod
    def from_state(cls, state: Any, capacity: int, generation: int = 50_000) -> Deduper:
        """Rebuild from :meth:`state`, or from a checkpoint of the previous release (a list of id strings)."""
        d = cls(capacity, generation)
        if isinstance(state, list):  # previous release: the ids themselves, oldest first
            for start in range(0, len(state), d.generation):
                d.add_many([str(i) for i in state[start : start + d.generation]])
            return d
        hashes, lengths = state
        hashes = np.asarray(hashes).view(np.uint64)
        bounds = np.cumsum(np.asarray(lengths, np.int64))
        if len(bounds) and bounds[-1] != len(hashes):
            raise ValueError(f"dedupe state: generation lengths add up to {bounds[-1]}, not {len(hashes)} hashes")
        *frozen, newest = np.split(hashes, bounds[:-1]) if len(bounds) else [np.zeros(0, np.uint64)]
        for gen in frozen:
            d._add_generation(gen)
        d._current = set(newest.tolist())
        return d


def _id_hashes(event_ids: Sequence[str]) -> np.ndarray:
    """Stable 64-bit hashes of ids (Python's hash() is salted per process; checkpoints outlive processes)."""
    digests = b"".join([blake2b(i.encode("utf-8", "surrogatepass"), digest_size=8).digest() for i in event_ids])
    return np.frombuffer(digests, np.uint64).copy()
