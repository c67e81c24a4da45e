"""The processor contract: what the runtime may ask of a processor, declared and checked, never probed.

A processor turns a batch of consumed records into output records (`Processor`). Everything else is an
optional **capability**, a `runtime_checkable` protocol of its own; the runtime asks ``isinstance`` once at
start (`capabilities`) and `validate` refuses a processor that declares a capability wrongly (a typo such as
``checkpoint_topic`` would otherwise silently make the checkpoint overtake the outputs it accounts for):

* `Ticking` — periodic work on the model thread, in order with batches (idle flushes, due checkpoints);
* `Checkpointed` — state that survives restarts: the runtime persists each `Checkpoint` after the outputs it
  accounts for, hands the latest ones back on start (`restore`) and replays the inputs between a checkpoint and
  the group's committed offsets (`replay`);
* `Served` — read-only HTTP views on the worker's web server (`routes`), answered off the model thread;
* `HotSwappable` — a new model version loaded between batches on the model thread (`load_model`);
* `PartitionedState` — checkpointed state split by input partition, so it moves with its partitions when a
  rebalance reassigns them: the runtime restores a partition's checkpoints when it is assigned
  (`restore`) and has the processor drop them when it is revoked (`release_partitions`);
* `WholePartitions` — topics whose state needs every partition in one worker (warned about on rebalance).

Processors import no Kafka client and no Faust (enforced by import-linter, see .importlinter): they see
`RawRecord`s and return `OutRecord`s, so each one is tested with plain lists (see streams/runtime/testing.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence, Set
from typing import Any, Protocol, runtime_checkable

from streams.contracts.records import OutRecord, RawRecord
from streams.contracts.state import TP, Checkpoint

__all__ = ["CAPABILITIES", "Checkpoint", "Checkpointed", "ContractError", "HotSwappable", "PartitionedState",
           "Processor", "Served", "Ticking", "WholePartitions", "capabilities", "validate"]


@runtime_checkable
class Processor(Protocol):
    """Records in, outputs out. ``process`` runs on the processor's one model thread, one batch at a time."""

    name: str
    source_topics: tuple[str, ...]
    batch_size: int
    batch_ms: int
    read_ahead: int  # batches in flight on the model thread while the runtime reads on (0: read, process, deliver)

    def process(self, records: Sequence[RawRecord]) -> list[OutRecord]: ...


@runtime_checkable
class Ticking(Protocol):
    tick_s: float

    def tick(self, now_ms: int) -> list[OutRecord]: ...


@runtime_checkable
class Checkpointed(Protocol):
    """State that must survive a restart.

    ``state_topic``: where the runtime's state store records checkpoints (compacted; written after the outputs
    of the same batch). ``state_store``: "topic" (each checkpoint is one record: must fit the message limit) or
    "file" (data in a local file, a pointer with size, sha256 and offsets on the topic). ``replay_topics``:
    inputs the runtime replays from the restored offsets up to the group's committed offsets (empty when each
    batch's checkpoint is delivered before its offsets are committed, so nothing committed is ever missing)."""

    state_topic: str
    state_store: str
    replay_topics: tuple[str, ...]

    def checkpoints(self, now_ms: int) -> list[Checkpoint]:
        """Checkpoints due now; called on the model thread after each batch and tick."""
        ...

    def restore(self, checkpoints: Sequence[Checkpoint]) -> None: ...

    def replay(self, records: Sequence[RawRecord]) -> None:
        """Apply already-processed inputs to restored state without producing outputs (they were delivered)."""
        ...



@runtime_checkable
class Served(Protocol):
    def routes(self) -> Mapping[str, Callable[[Mapping[str, str], Mapping[str, str]], tuple[int, Any]]]:
        """``{"/recommend/{user_id}": view}``; a view takes (path params, query params), returns (status, JSON
        body). It runs in a thread pool, never on the event loop, and must not wait on the model thread."""
        ...


@runtime_checkable
class HotSwappable(Protocol):
    def model_versions(self) -> dict[str, str]:
        """Model name → "name@version" of what serves now (the outputs name the same)."""
        ...

    def load_model(self, model: str, version: str) -> str:
        """Load ``version`` of ``model`` (a spec its loader understands) and serve it from the next batch on;
        returns the new "name@version". Called on the model thread between batches; raises on a bad version,
        leaving the serving model untouched."""
        ...


@runtime_checkable
class PartitionedState(Protocol):
    """Checkpointed state whose every checkpoint covers one input partition (its ``offsets`` name it), so
    several workers of one group can split the topics. On start and on each rebalance the runtime hands
    ``restore`` the latest checkpoints of the partitions newly assigned (and replays them like a start-up),
    and calls ``release_partitions`` with those revoked: their state now lives in another worker, which
    restores it from the same state topic. Both run on the model thread, after every earlier batch."""

    def release_partitions(self, partitions: Set[TP]) -> None: ...


@runtime_checkable
class WholePartitions(Protocol):
    whole_partition_topics: tuple[str, ...]


CAPABILITIES: dict[str, type] = {
    "tick": Ticking,
    "checkpoint": Checkpointed,
    "web": Served,
    "hot-swap": HotSwappable,
    "partitioned-state": PartitionedState,
    "whole-partitions": WholePartitions,
}
STATE_STORES = ("topic", "file")


class ContractError(TypeError):
    """A processor does not meet the contract it declares; raised at worker start, before anything is read."""


def capabilities(processor: Any) -> list[str]:
    return [name for name, proto in CAPABILITIES.items() if isinstance(processor, proto)]


# Attribute names of each capability, so a processor that has some of them but not all is caught as a typo.
_MEMBERS = {
    "tick": ("tick", "tick_s"),
    "checkpoint": ("state_topic", "state_store", "replay_topics", "checkpoints", "restore", "replay"),
    "web": ("routes",),
    "hot-swap": ("model_versions", "load_model"),
}
# Names earlier versions probed for: declaring one of them means the processor expects behaviour that is gone.
_RETIRED = ("checkpoint_topics", "checkpoint_topic", "unsharded_topics", "register_web", "pipeline_depth")


def validate(processor: Any) -> list[str]:
    """Check ``processor`` against the contract; returns its capabilities or raises ContractError."""
    name = getattr(processor, "name", type(processor).__name__)
    if not isinstance(processor, Processor):
        missing = [m for m in ("name", "source_topics", "batch_size", "batch_ms", "read_ahead", "process")
                   if not hasattr(processor, m)]
        raise ContractError(f"{name}: not a processor, missing {', '.join(missing)}")
    problems = []
    if not processor.source_topics or not all(isinstance(t, str) for t in processor.source_topics):
        problems.append(f"source_topics must be a non-empty tuple of topic names, got {processor.source_topics!r}")
    if not (isinstance(processor.batch_size, int) and processor.batch_size >= 1):
        problems.append(f"batch_size must be an integer >= 1, got {processor.batch_size!r}")
    for attr in ("batch_ms", "read_ahead"):
        value = getattr(processor, attr)
        if not (isinstance(value, int) and value >= 0):
            problems.append(f"{attr} must be an integer >= 0, got {value!r}")
    for cap, members in _MEMBERS.items():
        present = [m for m in members if hasattr(processor, m)]
        if present and len(present) < len(members):
            absent = [m for m in members if m not in present]
            problems.append(f"declares part of the {cap!r} capability ({', '.join(present)}) but lacks "
                            f"{', '.join(absent)}")
    retired = [m for m in _RETIRED if hasattr(processor, m)]
    if retired:
        problems.append(f"declares {', '.join(retired)}, which the runtime no longer reads (see processors/base.py)")
    if isinstance(processor, Ticking) and not (isinstance(processor.tick_s, int | float) and processor.tick_s > 0):
        problems.append(f"tick_s must be a positive number of seconds, got {processor.tick_s!r}")
    if isinstance(processor, Checkpointed):
        if processor.state_store not in STATE_STORES:
            problems.append(f"state_store must be one of {STATE_STORES}, got {processor.state_store!r}")
        if processor.state_topic in processor.source_topics:
            problems.append(f"state_topic {processor.state_topic!r} is also a source topic")
        stray = [t for t in processor.replay_topics if t not in processor.source_topics]
        if stray:
            problems.append(f"replay_topics {stray} are not source topics")
    if isinstance(processor, PartitionedState):
        if not isinstance(processor, Checkpointed):
            problems.append("declares release_partitions (partitioned state) but is not checkpointed")
        if isinstance(processor, WholePartitions):
            problems.append("declares both partitioned state and whole_partition_topics: state either moves "
                            "with its partitions or needs all of them")
    if isinstance(processor, WholePartitions):
        stray = [t for t in processor.whole_partition_topics if t not in processor.source_topics]
        if stray:
            problems.append(f"whole_partition_topics {stray} are not source topics")
    if problems:
        raise ContractError(f"processor {name!r} breaks its contract: " + "; ".join(problems))
    return capabilities(processor)
