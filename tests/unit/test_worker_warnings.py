from collections import namedtuple

from streams.runtime.worker import partial_state_warnings

TP = namedtuple("TP", "topic partition")


class Stateful:
    name = "recs"
    unsharded_topics = ("clicks", "items")


class Stateless:
    name = "text"


def test_warns_only_when_an_unsharded_topic_is_split() -> None:
    counts = {"clicks": 2, "items": 1, "text.in": 4}
    whole = {TP("clicks", 0), TP("clicks", 1), TP("items", 0)}
    assert partial_state_warnings([Stateful(), Stateless()], whole, counts) == []
    split = {TP("clicks", 1), TP("items", 0), TP("text.in", 3)}
    (warning,) = partial_state_warnings([Stateful(), Stateless()], split, counts)
    assert "recs holds clicks partitions [1] of 2" in warning
    assert "STREAMSENSE_APP_ID" in warning
