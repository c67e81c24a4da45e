"""Prometheus metrics shared by every processor.

One registry per process; the worker serves it at /metrics on its web port. Labels are the processor
name and topic — never event ids or user ids, which would explode cardinality.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

REGISTRY = CollectorRegistry(auto_describe=True)

CONSUMED = Counter(
    "streamsense_events_consumed", "Messages consumed by a processor", ["processor", "topic"], registry=REGISTRY
)
PRODUCED = Counter(
    "streamsense_events_produced", "Messages produced by a processor", ["processor", "topic"], registry=REGISTRY
)
DEAD_LETTERS = Counter(
    "streamsense_dead_letters", "Inputs sent to the deadletter topic", ["processor", "error"], registry=REGISTRY
)
BATCH_SIZE = Histogram(
    "streamsense_batch_size", "Messages per processed batch", ["processor"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512), registry=REGISTRY,
)
BATCH_SECONDS = Histogram(
    "streamsense_batch_seconds", "Wall time to process one batch (models included, delivery excluded)",
    ["processor"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10), registry=REGISTRY,
)
DELIVERY_SECONDS = Histogram(
    "streamsense_delivery_seconds", "Wall time until a batch's outputs were acknowledged by the broker",
    ["processor"], buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5), registry=REGISTRY,
)
END_TO_END_LATENCY = Histogram(
    "streamsense_end_to_end_latency_seconds",
    "From the input record's timestamp (when it was produced) to the broker's acknowledgement of its output",
    ["processor"], buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60), registry=REGISTRY,
)
MODEL_INFO = Gauge(
    "streamsense_model_info", "The model version a processor serves (value 1; the labels are the information)",
    ["processor", "model", "version"], registry=REGISTRY,
)
ASR_REAL_TIME_FACTOR = Histogram(
    "streamsense_asr_real_time_factor", "Seconds of decoding per second of audio, per engine call (< 1: faster "
    "than real time)", buckets=(0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 5), registry=REGISTRY,
)
RECS_HIT_RATE = Gauge(
    "streamsense_recs_hit_rate", "Share of served recommendation lists with an item the user clicked within the "
    "monitor's window (over the last 1,000 lists that were decided)", ["model"], registry=REGISTRY,
)

# --- the drift monitor (labels: model name and signal; the version is in streamsense_drift_reference_info) ---
DRIFT_SCORE = Gauge(
    "streamsense_drift_score", "Largest detector statistic of a signal as a fraction of its drift threshold",
    ["model", "signal"], registry=REGISTRY,
)
DRIFT_THRESHOLD = Gauge(
    "streamsense_drift_threshold", "Thresholds on the drift score's scale (drift is 1)", ["model", "signal", "level"],
    registry=REGISTRY,
)
DRIFT_LEVEL = Gauge(
    "streamsense_drift_alarm_level", "Open episode of a signal: 0 none, 1 warning, 2 drift", ["model", "signal"],
    registry=REGISTRY,
)
DRIFT_SINCE_REFERENCE = Gauge(
    "streamsense_drift_events_since_reference", "Events a signal has seen since its reference was complete",
    ["model", "signal"], registry=REGISTRY,
)
RETRAINS = Counter(
    "streamsense_retrains", "Challengers trained and judged by the gate", ["model", "outcome"], registry=REGISTRY,
)
RETRAIN_DECISIONS = Counter(
    "streamsense_retrain_decisions", "Retraining policy decisions (armed, requested, skipped) and why",
    ["model", "decision", "reason"], registry=REGISTRY,
)
MODEL_UPDATES = Counter(
    "streamsense_model_updates", "Promotions and rollbacks announced on model.updates", ["model", "action"],
    registry=REGISTRY,
)
LIVE_ACCURACY = Gauge(
    "streamsense_model_live_accuracy", "Accuracy of a model version's served outputs on the labels fed back so far",
    ["model", "version"], registry=REGISTRY,
)
DRIFT_EPISODES = Counter(
    "streamsense_drift_episodes", "Drift episode transitions (warning, drift, cleared)", ["model", "signal", "level"],
    registry=REGISTRY,
)


def exposition() -> bytes:
    """The registry in Prometheus text format.

    A label value may hold a lone surrogate (a model name from a hostile message: JSON may spell "\\ud800"), which
    has no UTF-8 form; generate_latest would then fail on every scrape from then on, so such values are written
    with "?" in its place."""
    try:
        return generate_latest(REGISTRY)
    except UnicodeEncodeError:
        return generate_latest(_EncodableLabels())  # type: ignore[arg-type]


class _EncodableLabels:
    """REGISTRY's metrics with every label value made UTF-8 encodable."""

    def collect(self) -> Any:
        for metric in REGISTRY.collect():
            metric.samples = [s._replace(labels={k: v.encode("utf-8", "replace").decode("utf-8")
                                                 for k, v in s.labels.items()}) for s in metric.samples]
            yield metric
