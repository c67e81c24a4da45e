"""The drift monitor as a stream processor: the other processors' outputs in, drift episodes and stats out.

What it watches (each signal per model and model version; monitoring/drift_monitor.py does the statistics):

* ``text.enriched``: sentiment label mix, sentiment confidence, text length and embedding drift (the distance
  of the projected sentence embedding the sentiment model attaches from the reference centroid: the monitor
  never runs the encoder itself) (model "sentiment"); entities per text and the entity-type mix (model "ner");
* ``asr.transcripts`` (final segments): ``avg_logprob``, ``no_speech_prob``, speech rate (words/s), segment
  length and the detected-language mix (model "asr");
* ``recs.responses``: the top score and the mean score of what is served, the served items' popularity (mean
  log(1 + clicks so far) of a list's items, counted in a count-min sketch: a recommender collapsing onto the
  head of the catalogue shows here), and with ``clicks`` the **hit**
  signal: whether the user clicked an item of a served list within ``hit_window_s`` (monitoring/hit_rate.py;
  categorical hit/miss, plus the ``streamsense_recs_hit_rate`` gauge over the last 1,000 decided lists)
  (model "recs").

Outputs: ``drift.events`` on each episode change (deterministic ids), ``drift.stats`` snapshots every
``stats_s`` (tick), and the ``streamsense_drift_*`` gauges. Capabilities: Ticking, Checkpointed (the whole
monitor is one inline checkpoint on ``monitor.state``, zlib-compressed JSON, with the offsets it includes; the
runtime replays ``replay_topics`` from there to the committed offsets, so a restart neither forgets an open
episode nor re-raises it), WholePartitions (one monitor sees every partition; replicas use distinct app ids).

A record that is not a valid event of its topic is dead-lettered. Valid events that carry no signal (partial
and gap transcripts) only advance the offsets.
"""

from __future__ import annotations

import contextlib
import math
from collections import defaultdict, deque
from collections.abc import Sequence
from typing import Any

from monitoring import metrics
from monitoring.drift_monitor import Alarm, DriftConfig, DriftMonitor
from monitoring.hit_rate import ClickCounts, HitTracker
from streams.contracts import topics
from streams.contracts.deadletter import dead_letter
from streams.contracts.records import OutRecord, RawRecord
from streams.contracts.recs_events import BadInput, parse_click
from streams.contracts.schemas import (
    SchemaError,
    decode_json_object,
    drift_event,
    drift_stats_event,
    encode,
    now_ms,
    validate_text_enriched,
)
from streams.contracts.state import TP, Checkpoint, json_checkpoint, json_state

Observation = tuple[str, str, str, Any]  # model, version, signal, value

MONITORED = (topics.TEXT_ENRICHED, topics.ASR_TRANSCRIPTS, topics.RECS_RESPONSES, topics.CLICKS)
STATE_KEY = "monitor"


def number(value: Any, what: str) -> float:
    """``value`` as a finite float, or the reason it cannot be one: JSON allows integers past float range and
    Python's parser NaN and Infinity, any of which would break the detectors' arithmetic for every later event."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SchemaError(f"{what} must be a number, got {value!r:.40}")
    try:
        x = float(value)
    except OverflowError:
        raise SchemaError(f"{what} is out of range ({len(str(value))} digits)") from None
    if not math.isfinite(x):
        raise SchemaError(f"{what} must be finite, got {x}")
    return x


def text_signals(event: dict[str, Any]) -> list[Observation]:
    validate_text_enriched(event)
    s, n = event["models"].get("sentiment", "unknown"), event["models"].get("ner", "unknown")
    out: list[Observation] = [
        ("sentiment", s, "label", event["sentiment"]["label"]),
        ("sentiment", s, "confidence", number(event["sentiment"]["score"], "sentiment.score")),
        ("sentiment", s, "text_length", float(len(event["text"]))),
        ("ner", n, "entities_per_text", float(len(event["entities"]))),
    ]
    embedding = event["sentiment"].get("embedding")
    if embedding is not None:
        if not (isinstance(embedding, list) and embedding):
            raise SchemaError("sentiment.embedding must be a non-empty array of numbers")
        out.append(("sentiment", s, "embedding", [number(x, "a sentiment.embedding value") for x in embedding]))
    out.extend(("ner", n, "entity_type", e["label"]) for e in event["entities"])
    return out


def asr_signals(event: dict[str, Any]) -> list[Observation]:
    if not event.get("final"):
        return []  # partials and gaps: previews and reports, not model outputs to watch
    model, start, end, text = event.get("model"), event.get("start"), event.get("end"), event.get("text")
    if not isinstance(model, str) or not isinstance(text, str):
        raise SchemaError("a final transcript needs string fields 'model' and 'text'")
    duration = number(end, "end") - number(start, "start")
    if not 0 < duration < math.inf:
        raise SchemaError(f"a final transcript needs start < end (finitely), got start={start!r} end={end!r}")
    out: list[Observation] = [("asr", model, "segment_s", duration),
                              ("asr", model, "words_per_s", len(text.split()) / duration)]
    for name in ("avg_logprob", "no_speech_prob"):  # optional: a value that is not a finite number is ignored
        with contextlib.suppress(SchemaError):
            out.append(("asr", model, name, number(event.get(name), name)))
    if isinstance(event.get("language"), str):
        out.append(("asr", model, "language", event["language"]))
    return out


def recs_signals(event: dict[str, Any]) -> list[Observation]:
    model, items = event.get("model"), event.get("items")
    if not isinstance(model, str) or not isinstance(items, list):
        raise SchemaError("a recommendation response needs 'model' (string) and 'items' (array)")
    if not all(isinstance(i, dict) for i in items):
        raise SchemaError("every recommended item needs a numeric 'score'")
    scores = [number(i.get("score"), "a recommended item's 'score'") for i in items]
    if not scores:
        return []
    return [("recs", model, "top_score", float(max(scores))),
            ("recs", model, "mean_score", float(sum(scores) / len(scores)))]


EXTRACTORS = {topics.TEXT_ENRICHED: text_signals, topics.ASR_TRANSCRIPTS: asr_signals,
              topics.RECS_RESPONSES: recs_signals}


class MonitorProcessor:
    name = "monitor"
    source_topics = MONITORED
    state_topic = topics.MONITOR_STATE
    state_store = "topic"
    replay_topics = MONITORED
    whole_partition_topics = MONITORED
    tick_s = 1.0

    def __init__(self, config: DriftConfig | None = None, *, batch_size: int = 500, batch_ms: int = 200,
                 read_ahead: int = 0, stats_s: float = 5.0, checkpoint_s: float = 10.0,
                 hit_window_s: float = 600.0) -> None:
        self.monitor = DriftMonitor(config)
        self.hits = HitTracker(int(hit_window_s * 1000))
        self.click_counts = ClickCounts()
        # per recommender version, its last 1,000 decided lists: the streamsense_recs_hit_rate gauge
        self.hit_history: dict[str, deque[bool]] = defaultdict(lambda: deque(maxlen=1000))
        self.batch_size, self.batch_ms, self.read_ahead = batch_size, batch_ms, read_ahead
        self.stats_ms, self.checkpoint_ms = int(stats_s * 1000), int(checkpoint_s * 1000)
        self.offsets: dict[TP, int] = {}
        self._embedding_dims: dict[tuple[str, str, str], int] = {}  # (model, version, signal) → vector length
        self._stats_at = self._checkpoint_at = 0
        self._changed = False

    def process(self, records: Sequence[RawRecord]) -> list[OutRecord]:
        groups: dict[tuple[str, str, str], tuple[list[Any], list[int]]] = defaultdict(lambda: ([], []))
        outputs: list[OutRecord] = []
        for r in records:
            self.offsets[(r.topic, r.partition)] = max(r.offset, self.offsets.get((r.topic, r.partition), -1))
            try:
                ts, observations = self._observations(r)
            except (SchemaError, BadInput) as exc:
                outputs.append(dead_letter(r, processor=self.name, reason=str(exc), error=type(exc).__name__))
                continue
            observations += [("recs", model, "hit", outcome) for model, outcome, _ in self.hits.expire(ts)]
            for model, version, signal, value in observations:
                values, stamps = groups[(model, version, signal)]
                values.append(value)
                stamps.append(ts)
                if signal == "hit":
                    self.hit_history[version].append(value == "hit")
        for (model, version, signal), (values, stamps) in groups.items():
            for alarm in self.monitor.observe(model, version, signal, values, stamps):
                outputs.append(self._drift_record(alarm))
        self._changed = self._changed or bool(records)
        return outputs

    def _observations(self, r: RawRecord) -> tuple[int, list[Observation]]:
        """The event time and the signal values one record carries (hits and clicks: HitTracker)."""
        if r.topic == topics.CLICKS:
            click = parse_click(r)
            ts = click.ts or r.timestamp_ms or now_ms()
            self.click_counts.add(click.item_id)
            return ts, [("recs", model, "hit", outcome) for model, outcome, _ in
                        self.hits.clicked(click.user_id, click.item_id, ts=ts)]
        event = decode_json_object(r.value)
        observations = EXTRACTORS[r.topic](event)
        self._check_embedding_lengths(observations)
        ts = event["ts"] if isinstance(event.get("ts"), int) else (r.timestamp_ms or now_ms())
        if r.topic == topics.RECS_RESPONSES and event["items"]:
            items = [str(i.get("item_id")) for i in event["items"]]
            popularity = sum(math.log1p(self.click_counts.estimate(i)) for i in items) / len(items)
            observations.append(("recs", str(event["model"]), "served_popularity", popularity))
            if isinstance(event.get("user_id"), str | int):
                self.hits.served(str(event["user_id"]), items, ts=ts, model=str(event["model"]))
        return ts, observations

    def _check_embedding_lengths(self, observations: list[Observation]) -> None:
        """An embedding of another length than its version's earlier ones is a bad record, not a crash of the
        batch (the reference stacks them)."""
        for model, version, signal, value in observations:
            if signal != "embedding":
                continue
            key = (model, version, signal)
            dim = self._embedding_dims.get(key) or self.monitor.embedding_dim(*key)
            if dim is not None and len(value) != dim:
                raise SchemaError(f"sentiment.embedding has {len(value)} values; the embeddings of "
                                  f"{version} so far have {dim}")
            self._embedding_dims[key] = len(value)

    def _drift_record(self, alarm: Alarm) -> OutRecord:
        t, key = alarm.transition, alarm.key
        metrics.DRIFT_EPISODES.labels(key.model, key.signal, t.level).inc()
        event = drift_event(
            alarm.event_id, ts=alarm.ts, model=key.model, model_version=key.version, signal=key.signal,
            detector="cusum", level=t.level, statistic=t.detector, value=t.value, threshold=t.threshold,
            reference=alarm.reference, window={"events": t.window_events, "from_ts": None, "to_ts": alarm.ts},
            events_since_reference=alarm.events_since_reference, episode=t.episode,
        )
        return OutRecord(topics.DRIFT_EVENTS, key.model.encode(), encode(event))

    def tick(self, now_ms: int) -> list[OutRecord]:
        """Every ``stats_s``: one ``drift.stats`` record per signal, and the gauges."""
        if now_ms - self._stats_at < self.stats_ms:
            return []
        self._stats_at = now_ms
        for model, decided in self.hit_history.items():
            metrics.RECS_HIT_RATE.labels(model).set(sum(decided) / len(decided))
        out = []
        for snap in self.monitor.snapshot():
            model, signal = snap["model"], snap["signal"]
            metrics.DRIFT_SCORE.labels(model, signal).set(snap["score"])
            metrics.DRIFT_THRESHOLD.labels(model, signal, "warning").set(snap["warning"])
            metrics.DRIFT_THRESHOLD.labels(model, signal, "drift").set(snap["drift"])
            metrics.DRIFT_LEVEL.labels(model, signal).set(("none", "warning", "drift").index(snap["level"]))
            metrics.DRIFT_SINCE_REFERENCE.labels(model, signal).set(snap["events_since_reference"])
            out.append(OutRecord(topics.DRIFT_STATS, f"{model}:{signal}".encode(),
                                 encode(drift_stats_event(snap, ts=now_ms))))
        return out

    # --- state (Checkpointed) --------------------------------------------------------------------------------

    def checkpoints(self, now_ms: int) -> list[Checkpoint]:
        if not self._changed or now_ms - self._checkpoint_at < self.checkpoint_ms:
            return []
        self._checkpoint_at, self._changed = now_ms, False
        state = {**self.monitor.state(), "hits": self.hits.state(), "click_counts": self.click_counts.state()}
        return [json_checkpoint(STATE_KEY, state, self.offsets)]

    def restore(self, checkpoints: Sequence[Checkpoint]) -> None:
        for cp in checkpoints:
            if cp.key == STATE_KEY:
                state = json_state(cp)
                self.monitor.restore(state)
                self._embedding_dims = {}
                if "hits" in state:
                    self.hits = HitTracker.from_state(state["hits"])
                if "click_counts" in state:
                    self.click_counts = ClickCounts.from_state(state["click_counts"])
                self.offsets = dict(cp.offsets)

    def replay(self, records: Sequence[RawRecord]) -> None:
        """Inputs after the checkpoint whose outputs were delivered: they move the detectors again, exactly as
        the first time (the tie-breaking random stream is in the checkpoint too); the episode changes they
        cause were already published, so the outputs are dropped."""
        self.process(records)
