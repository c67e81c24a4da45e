from collections import namedtuple

from processors.base import WholePartitions
from streams.runtime.worker import partial_state_warnings

TP = namedtuple("TP", "topic partition")


class Stateful:
    name = "recs"
    whole_partition_topics = ("clicks", "items")


class Stateless:
    name = "text"


class Retired:
    """Declares the old probed-for name only: no longer a WholePartitions processor, so never warned about."""

    name = "old"
    unsharded_topics = ("clicks",)


def test_capability_is_declared_by_whole_partition_topics() -> None:
    assert isinstance(Stateful(), WholePartitions)
    assert not isinstance(Stateless(), WholePartitions)
    assert not isinstance(Retired(), WholePartitions)


def test_warns_only_when_a_whole_partition_topic_is_split() -> None:
    counts = {"clicks": 2, "items": 1, "text.in": 4}
    whole = {TP("clicks", 0), TP("clicks", 1), TP("items", 0)}
    assert partial_state_warnings([Stateful(), Stateless(), Retired()], whole, counts) == []
    split = {TP("clicks", 1), TP("items", 0), TP("text.in", 3)}
    (warning,) = partial_state_warnings([Stateful(), Stateless(), Retired()], split, counts)
    assert "recs holds clicks partitions [1] of 2" in warning
    assert "STREAMSENSE_APP_ID" in warning
    (none_held,) = partial_state_warnings([Stateful()], {TP("clicks", 0), TP("clicks", 1)}, counts)
    assert "recs holds items partitions - of 1" in none_held
