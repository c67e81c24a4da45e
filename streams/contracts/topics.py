"""The topic registry: every topic of the pipeline, with explicit partition counts and cleanup policy.

Topics are always created explicitly (`streamsense topics create`, and every worker on start-up):
auto-created topics take the broker's default partition count (4 on Tansu, 1 on many Kafka clusters),
which breaks Faust's co-partitioning checks and silently changes key→partition mapping.
"""

from __future__ import annotations

from dataclasses import dataclass, field

TEXT_IN = "text.in"
TEXT_ENRICHED = "text.enriched"
AUDIO_CHUNKS = "audio.chunks"
ASR_TRANSCRIPTS = "asr.transcripts"
ASR_STATE = "asr.state"
CLICKS = "clicks"
ITEMS = "items"
RECS_REQUESTS = "recs.requests"
RECS_RESPONSES = "recs.responses"
RECS_STATE = "recs.state"
DEADLETTER = "deadletter"
DRIFT_EVENTS = "drift.events"
DRIFT_STATS = "drift.stats"
MONITOR_STATE = "monitor.state"
RETRAIN_REQUESTS = "retrain.requests"
MODEL_UPDATES = "model.updates"
FEEDBACK = "feedback"
RETRAIN_DECISIONS = "retrain.decisions"
RETRAINER_STATE = "retrainer.state"


@dataclass(frozen=True)
class TopicSpec:
    name: str
    doc: str
    # None: the pipeline-wide data partition count (STREAMSENSE_PARTITIONS); control topics pin 1 for total order.
    partitions: int | None = None
    config: dict[str, str] = field(default_factory=dict)

    def partition_count(self, default: int) -> int:
        return self.partitions if self.partitions is not None else default


TOPICS: tuple[TopicSpec, ...] = (
    TopicSpec(TEXT_IN, "text events to enrich; key = event id"),
    TopicSpec(TEXT_ENRICHED, "text events with sentiment and entities; key = event id"),
    TopicSpec(AUDIO_CHUNKS, "audio chunks; key = stream id"),
    TopicSpec(ASR_TRANSCRIPTS, "timed transcript segments; key = stream id"),
    TopicSpec(
        ASR_STATE,
        "open ASR stream state (buffered audio, next seq); key = app id/stream id (latest per key is kept)",
        partitions=1,
        config={"cleanup.policy": "compact"},
    ),
    TopicSpec(CLICKS, "click/rating events; key = user id"),
    TopicSpec(
        ITEMS,
        "item catalog (item_id, title, genres/text); key = item id (latest per key is kept)",
        config={"cleanup.policy": "compact"},
    ),
    TopicSpec(RECS_REQUESTS, "recommendation requests {id, user_id, k}; key = request id"),
    TopicSpec(RECS_RESPONSES, "recommendations answering recs.requests; key = request id"),
    TopicSpec(
        RECS_STATE,
        "recommender checkpoint metadata (file, version, offsets); key = app id/app id (latest per key is kept)",
        partitions=1,
        config={"cleanup.policy": "compact"},
    ),
    TopicSpec(DEADLETTER, "unprocessable input: original bytes, source topic/partition/offset, reason"),
    TopicSpec(DRIFT_EVENTS, "drift episodes (warning, drift, cleared); key = model name", partitions=1),
    TopicSpec(
        DRIFT_STATS,
        "snapshots of every monitored signal for dashboards; key = model:signal (one day retention)",
        partitions=1,
        config={"retention.ms": "86400000"},
    ),
    TopicSpec(
        MONITOR_STATE,
        "drift monitor checkpoint (references, detectors, offsets); key = app id/monitor (latest is kept)",
        partitions=1,
        config={"cleanup.policy": "compact"},
    ),
    TopicSpec(RETRAIN_REQUESTS, "requests to retrain a model; key = model name", partitions=1),
    TopicSpec(FEEDBACK, "labels for earlier events (retraining); key = event id"),
    TopicSpec(
        RETRAIN_DECISIONS,
        "every retraining decision (armed, skipped and why, requested, promoted, rejected, rolled back); key = model",
        partitions=1,
    ),
    TopicSpec(
        RETRAINER_STATE,
        "retrainer checkpoint (labels, policy, rollback watch, offsets); key = app id/retrainer (latest is kept)",
        partitions=1,
        config={"cleanup.policy": "compact"},
    ),
    TopicSpec(
        MODEL_UPDATES,
        "model versions to hot-swap; key = model name (latest per key is kept)",
        partitions=1,
        config={"cleanup.policy": "compact"},
    ),
)

BY_NAME: dict[str, TopicSpec] = {spec.name: spec for spec in TOPICS}


def topic_spec(name: str) -> TopicSpec:
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown topic {name!r}; known topics: {', '.join(BY_NAME)}") from None
