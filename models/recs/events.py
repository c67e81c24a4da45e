"""Click-event contract for the recommender and the pieces that make applying events idempotent.

Kafka delivers at least once, so the model must tolerate replays: every event carries a stable ``id`` and
:class:`Deduper` remembers a bounded window of ids that were already applied.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

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
    """Remembers the last ``capacity`` event ids (FIFO) so replays after a restart are applied once.

    A bounded window suffices because Kafka replays start from the last committed offset, which is close
    behind; the window only has to cover one checkpoint interval of events.
    """

    def __init__(self, capacity: int = 1_000_000) -> None:
        self.capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, event_id: str) -> bool:
        return event_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, event_id: str) -> bool:
        """Record ``event_id``; returns False if it was already present (a duplicate)."""
        if event_id in self._ids:
            return False
        self._ids[event_id] = None
        while len(self._ids) > self.capacity:
            self._ids.popitem(last=False)
        return True

    def state(self) -> list[str]:
        return list(self._ids)

    @classmethod
    def from_state(cls, ids: Iterable[str], capacity: int) -> Deduper:
        d = cls(capacity)
        for i in ids:
            d.add(i)
        return d
