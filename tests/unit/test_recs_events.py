import numpy as np
import pytest

from models.recs.events import ClickEvent, Deduper, event_weight


def _ev(event: str, value: float | None = None) -> ClickEvent:
    return ClickEvent(id="e", user_id="u", item_id="i", event=event, value=value)


def test_from_dict_round_trip_and_validation() -> None:
    d = {"id": 1, "user_id": 7, "item_id": "m", "event": "rating", "value": "4.5", "ts": 10}
    ev = ClickEvent.from_dict(d)
    assert ev == ClickEvent(id="1", user_id="7", item_id="m", event="rating", value=4.5, ts=10)
    assert ClickEvent.from_dict(ev.to_dict()) == ev
    with pytest.raises(ValueError, match="item_id"):
        ClickEvent.from_dict({"id": 1, "user_id": 1, "event": "click"})
    with pytest.raises(ValueError, match="unknown event"):
        ClickEvent.from_dict({"id": 1, "user_id": 1, "item_id": 1, "event": "hover"})


def test_event_weights_are_ordered() -> None:
    w = [event_weight(_ev(e)) for e in ("impression", "click", "like")]
    assert w[0] < w[1] < w[2] < event_weight(_ev("rating", 5.0)) < event_weight(_ev("purchase"))
    assert (
        event_weight(_ev("rating", 1.0)) < event_weight(_ev("rating", 4.0)) < event_weight(_ev("rating", 5.0))
    )


def test_deduper_forgets_the_oldest_generation_first() -> None:
    d = Deduper(capacity=40, generation=4)  # keeps 36..40 ids
    ids = [f"click-{k}" for k in range(100)]
    assert d.add_many(ids[:50]).all()
    assert not d.add("click-49") and len(d) <= 40
    assert "click-11" not in d and "click-12" in d  # nine frozen generations of 4 (12..47) + 48, 49
    assert d.add("click-0")  # forgotten, so it counts as new again


def test_deduper_catches_repeats_within_a_batch_and_across_generations() -> None:
    d = Deduper(capacity=1000, generation=10)
    first = d.add_many(["a", "b", "a", "c", "b"])
    assert first.tolist() == [True, True, False, True, False]
    d.add_many([f"x{k}" for k in range(25)])  # "a", "b", "c" now sit in a frozen generation
    assert d.add_many(["c", "new", "a", "new"]).tolist() == [False, True, False, False]


def test_deduper_state_round_trips_and_reads_the_previous_format() -> None:
    d = Deduper(capacity=100, generation=10)
    d.add_many([f"e{k}" for k in range(35)])
    hashes, lengths = d.state()
    assert hashes.dtype == np.int64 and lengths.tolist() == [10, 10, 10, 5]
    back = Deduper.from_state((hashes.copy(), lengths.copy()), 100, 10)
    assert len(back) == 35 and all(f"e{k}" in back for k in range(35)) and "e35" not in back
    assert back.add_many(["e3", "e40"]).tolist() == [False, True]
    old = Deduper.from_state(["a", "b", "c"], 100, 10)  # the previous release checkpointed the id strings
    assert "b" in old and len(old) == 3
    with pytest.raises(ValueError, match="add up to"):
        Deduper.from_state((hashes, np.array([3], np.int64)), 100, 10)


def test_a_full_deduper_window_is_compact() -> None:
    d = Deduper(capacity=200_000, generation=20_000)
    for start in range(0, 400_000, 5000):
        d.add_many([f"click-{k}" for k in range(start, start + 5000)])
    assert 180_000 <= len(d) <= 200_000
    assert d.nbytes < 3_000_000  # ~1.3 MB of hashes + one generation's set; the strings alone were ~15 MB
