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


def test_deduper_is_bounded_fifo() -> None:
    d = Deduper(capacity=2)
    assert d.add("a") and d.add("b")
    assert not d.add("a")
    assert d.add("c")  # evicts "a"
    assert "a" not in d and "b" in d and "c" in d and len(d) == 2
    assert Deduper.from_state(d.state(), 2).state() == ["b", "c"]
