"""The batch consumption path's pure parts: which processors it feeds, its group, and /ready waiting for every
consumer of a worker. The path itself runs through the broker in tests/integration/test_recs_pipeline.py (the
recs worker uses it by default: restart, replay up to its committed offsets, replica failover)."""

from __future__ import annotations

import pytest

from streams.contracts.settings import ConfigError, Settings
from streams.runtime.batch_source import batch_group_id
from streams.runtime.web import Readiness
from streams.runtime.worker import batch_consumers


class Named:
    def __init__(self, name: str) -> None:
        self.name = name


class Streams(Named):
    """Declares per-partition state (PartitionedState): handed over by the Faust path only."""

    def release_partitions(self, partitions: frozenset) -> None:
        return None


def test_the_setting_picks_hosted_processors_and_ignores_the_others() -> None:
    hosted = [Named("text"), Named("recs"), Named("retrainer")]
    assert batch_consumers(Settings(), hosted) == {"text", "recs"}  # the default: text, recs, monitor (not here)
    assert batch_consumers(Settings(batch_consumer="recs, monitor"), hosted) == {"recs"}  # monitor: not here
    assert batch_consumers(Settings(batch_consumer=""), hosted) == set()
    assert batch_consumers(Settings(batch_consumer="text,retrainer"), hosted) == {"text", "retrainer"}


def test_unknown_names_and_partitioned_state_are_configuration_errors() -> None:
    with pytest.raises(ConfigError, match=r"unknown processors \['rec'\]"):
        batch_consumers(Settings(batch_consumer="rec"), [Named("recs")])
    from processors.base import PartitionedState

    asr = Streams("asr")
    assert isinstance(asr, PartitionedState)
    with pytest.raises(ConfigError, match="asr keeps state per partition"):
        batch_consumers(Settings(batch_consumer="asr"), [asr])


def test_group_is_per_processor_next_to_the_faust_group() -> None:
    assert batch_group_id("streamsense", "recs") == "streamsense.recs"


def test_ready_waits_for_a_first_assignment_from_every_consumer() -> None:
    ready = Readiness(models_loaded=True, consumers=("faust", "recs"))
    ready.assign("faust", {("text.in", 1), ("text.in", 0)})
    assert ready.missing() == ["partition assignment"]
    ready.assign("recs", set())  # an empty assignment (more members than partitions) is an assignment
    assert ready.missing() == [] and ready.partitions == ["text.in[0]", "text.in[1]"]
    ready.assign("recs", {("clicks", 0)})
    assert ready.partitions == ["clicks[0]", "text.in[0]", "text.in[1]"]
