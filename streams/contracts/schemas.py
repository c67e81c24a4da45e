"""Event contracts: one JSON envelope for every topic, and validation with readable errors.

Every event is a JSON object carrying `id` (stable; consumers dedupe on it), `ts` (ms since epoch)
and `schema` ("<topic>/<version>") beside its payload fields. Validation errors become dead-letter
reasons, so their messages are written for the person reading the `deadletter` topic.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from models.text_types import ENTITY_LABELS, SENTIMENT_LABELS
from streams.contracts import topics

SCHEMA_VERSION = 1
JSON_TYPE_NAMES = {
    str: "string", int: "integer", float: "number", bool: "boolean",
    list: "array", dict: "object", type(None): "null",
}


class SchemaError(ValueError):
    """An event does not match its contract; str(error) is the reason shown in the dead letter."""


def now_ms() -> int:
    return int(time.time() * 1000)


def schema_id(topic: str, version: int = SCHEMA_VERSION) -> str:
    return f"{topic}/{version}"


def json_type(value: Any) -> str:
    return JSON_TYPE_NAMES.get(type(value), type(value).__name__)


def decode_json_object(raw: bytes | None) -> dict[str, Any]:
    """Bytes → JSON object, with a specific reason for each way it can fail."""
    if raw is None or len(raw) == 0:
        raise SchemaError("empty message: no value bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SchemaError(f"value is not valid UTF-8: {exc.reason} at byte {exc.start}") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SchemaError(f"malformed JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
    except RecursionError:  # "[[[[..." thousands deep: the parser's recursion limit, not a crash of the worker
        raise SchemaError(f"JSON nested deeper than the parser's limit (~{sys.getrecursionlimit()} levels)") from None
    if not isinstance(obj, dict):
        raise SchemaError(f"expected a JSON object, got {json_type(obj)}")
    return obj


def encode(event: Mapping[str, Any]) -> bytes:
    """UTF-8 JSON. A lone surrogate (JSON may spell one, "\\ud800", and json.loads accepts it) has no UTF-8
    form: such an event is written with ASCII escapes instead, which every JSON reader decodes the same."""
    text = json.dumps(event, ensure_ascii=False, separators=(",", ":"))
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(event, separators=(",", ":")).encode("ascii")


def require_str(obj: Mapping[str, Any], name: str, *, allow_empty: bool = False) -> str:
    if name not in obj:
        raise SchemaError(f"missing required field {name!r}")
    value = obj[name]
    if not isinstance(value, str):
        raise SchemaError(f"field {name!r} must be a string, got {json_type(value)}")
    if not allow_empty and not value.strip():
        raise SchemaError(f"field {name!r} is empty")
    return value


def check_schema(obj: Mapping[str, Any], topic: str) -> None:
    """Accept events without `schema` (external producers); reject other topics' or future versions."""
    declared = obj.get("schema")
    if declared is None:
        return
    if not isinstance(declared, str) or "/" not in declared:
        raise SchemaError(f"field 'schema' must look like '{schema_id(topic)}', got {declared!r}")
    name, _, version = declared.rpartition("/")
    if name != topic:
        raise SchemaError(f"event has schema {declared!r} but arrived on topic {topic!r}")
    if not version.isdigit() or int(version) > SCHEMA_VERSION:
        raise SchemaError(f"unsupported schema version {declared!r}; this build reads up to {schema_id(topic)}")


MAX_TS_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z: every time library can represent it


def optional_ts(obj: Mapping[str, Any], fallback_ms: int) -> int:
    ts = obj.get("ts")
    if ts is None:
        return fallback_ms
    if isinstance(ts, bool) or not isinstance(ts, int | float):
        raise SchemaError(f"field 'ts' must be milliseconds since epoch (number), got {json_type(ts)}")
    if not -MAX_TS_MS <= ts <= MAX_TS_MS:  # also NaN and Infinity (JSON readers accept them), which int() refuses
        raise SchemaError(f"field 'ts' must be milliseconds since epoch within ±{MAX_TS_MS}, got {ts!r}")
    return int(ts)


# --- text.in ------------------------------------------------------------------------------------------

TEXT_IN_RESERVED = frozenset({"id", "ts", "schema", "text", "source"})


@dataclass(frozen=True, slots=True)
class TextIn:
    """A `text.in` event. `extra` carries every other field (lang, meta, stream_id, start, end, ...) through
    to `text.enriched`, so upstream context such as ASR times survives enrichment."""

    id: str
    text: str
    source: str
    ts: int
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, raw: bytes | None, *, max_chars: int, fallback_ts: int | None = None) -> TextIn:
        obj = decode_json_object(raw)
        check_schema(obj, topics.TEXT_IN)
        event_id = require_str(obj, "id")
        text = require_str(obj, "text")
        if len(text) > max_chars:
            raise SchemaError(f"field 'text' has {len(text)} characters, over the limit of {max_chars}")
        source = require_str(obj, "source")
        ts = optional_ts(obj, fallback_ts if fallback_ts is not None else now_ms())
        extra = {k: v for k, v in obj.items() if k not in TEXT_IN_RESERVED}
        return cls(id=event_id, text=text, source=source, ts=ts, extra=extra)

    def to_event(self) -> dict[str, Any]:
        return {
            **self.extra,
            "id": self.id,
            "ts": self.ts,
            "schema": schema_id(topics.TEXT_IN),
            "text": self.text,
            "source": self.source,
        }


def text_in_event(text: str, *, event_id: str, source: str = "api", **extra: Any) -> dict[str, Any]:
    """Build a valid `text.in` event (used by the producer CLI, the demo and tests)."""
    return TextIn(id=event_id, text=text, source=source, ts=now_ms(), extra=extra).to_event()


# --- text.enriched --------------------------------------------------------------------------------------


def text_enriched_event(
    source_event: TextIn,
    *,
    sentiment: Mapping[str, Any],
    entities: list[Mapping[str, Any]],
    models: Mapping[str, str],
    done_ms: int,
) -> dict[str, Any]:
    """`latency_ms` is end to end: from the input's `ts` to the moment the enrichment finished."""
    return {
        **source_event.extra,
        "id": source_event.id,
        "ts": done_ms,
        "schema": schema_id(topics.TEXT_ENRICHED),
        "text": source_event.text,
        "source": source_event.source,
        "sentiment": dict(sentiment),
        "entities": [dict(e) for e in entities],
        "models": dict(models),
        "latency_ms": max(0, done_ms - source_event.ts),
    }


def validate_text_enriched(obj: Mapping[str, Any]) -> None:
    """Check an output event against the contract (used by tests and by consumers that want to be strict)."""
    for name in ("id", "text", "source"):
        require_str(obj, name)
    if obj.get("schema") != schema_id(topics.TEXT_ENRICHED):
        raise SchemaError(f"schema must be {schema_id(topics.TEXT_ENRICHED)!r}, got {obj.get('schema')!r}")
    sentiment = obj.get("sentiment")
    if not isinstance(sentiment, dict) or sentiment.get("label") not in SENTIMENT_LABELS:
        raise SchemaError(f"sentiment must be {{label: {'|'.join(SENTIMENT_LABELS)}, score}}, got {sentiment!r}")
    if not isinstance(sentiment.get("score"), float | int) or not 0.0 <= sentiment["score"] <= 1.0:
        raise SchemaError(f"sentiment score must be a number in [0, 1], got {sentiment.get('score')!r}")
    entities = obj.get("entities")
    if not isinstance(entities, list):
        raise SchemaError("entities must be an array")
    text = obj["text"]
    for ent in entities:
        if not isinstance(ent, dict):
            raise SchemaError(f"each entity must be an object, got {json_type(ent)}")
        if ent.get("label") not in ENTITY_LABELS:
            raise SchemaError(f"entity label must be one of {ENTITY_LABELS}, got {ent.get('label')!r}")
        start, end = ent.get("start"), ent.get("end")
        if not (isinstance(start, int) and isinstance(end, int) and 0 <= start < end <= len(text)):
            raise SchemaError(f"entity offsets [{start}, {end}) out of range for a text of {len(text)} characters")
        if text[start:end] != ent.get("text"):
            raise SchemaError(f"entity text {ent.get('text')!r} != text[{start}:{end}] {text[start:end]!r}")
    if not isinstance(obj.get("models"), dict) or not all(isinstance(v, str) for v in obj["models"].values()):
        raise SchemaError(f"models must be an object of name@version strings, got {obj.get('models')!r:.80}")
    if not isinstance(obj.get("latency_ms"), int | float):
        raise SchemaError("latency_ms must be a number")


# --- the monitoring and retraining loop's topics (drift.events, retrain.requests, model.updates, feedback) ---
# Validators only: each returns the event unchanged or raises SchemaError with a reason for the dead letter.

FEEDBACK_LABELS = SENTIMENT_LABELS
DRIFT_LEVELS = ("warning", "drift", "cleared")
RETRAIN_REASONS = ("drift", "manual", "schedule")
MODEL_ACTIONS = ("promote", "rollback")


def _envelope(raw: bytes | Mapping[str, Any] | None, topic: str) -> dict[str, Any]:
    obj = dict(raw) if isinstance(raw, Mapping) else decode_json_object(raw)
    check_schema(obj, topic)
    require_str(obj, "id")
    optional_ts(obj, 0)
    return obj


def _one_of(obj: Mapping[str, Any], name: str, allowed: tuple[str, ...]) -> str:
    value = require_str(obj, name)
    if value not in allowed:
        raise SchemaError(f"field {name!r} must be one of {'|'.join(allowed)}, got {value!r}")
    return value


def _object(obj: Mapping[str, Any], name: str) -> dict[str, Any]:
    value = obj.get(name)
    if not isinstance(value, dict):
        raise SchemaError(f"field {name!r} must be an object, got {json_type(value)}")
    return value


def parse_feedback(raw: bytes | Mapping[str, Any] | None) -> dict[str, Any]:
    """`feedback` (key = event id): a label for an earlier event: {id, ts, schema, label, source, text?}."""
    obj = _envelope(raw, topics.FEEDBACK)
    _one_of(obj, "label", FEEDBACK_LABELS)
    require_str(obj, "source")
    if "text" in obj and obj["text"] is not None:
        require_str(obj, "text")
    return obj


def parse_drift_event(raw: bytes | Mapping[str, Any] | None) -> dict[str, Any]:
    """`drift.events` (key = model name): {id, ts, schema, model, model_version, signal, detector, level, statistic,
    value, threshold, reference: {events, from_ts, to_ts}, window: {...}, events_since_reference}."""
    obj = _envelope(raw, topics.DRIFT_EVENTS)
    for name in ("model", "model_version", "signal", "detector", "statistic"):
        require_str(obj, name)
    _one_of(obj, "level", DRIFT_LEVELS)
    for name in ("value", "threshold"):
        if isinstance(obj.get(name), bool) or not isinstance(obj.get(name), int | float):
            raise SchemaError(f"field {name!r} must be a number, got {json_type(obj.get(name))}")
    for name in ("reference", "window"):
        span = _object(obj, name)
        if not isinstance(span.get("events"), int):
            raise SchemaError(f"field '{name}.events' must be an integer")
    return obj


def drift_event(event_id: str, *, ts: int, model: str, model_version: str, signal: str, detector: str,
                level: str, statistic: str, value: float, threshold: float, reference: Mapping[str, Any],
                window: Mapping[str, Any], events_since_reference: int, episode: int) -> dict[str, Any]:
    """One `drift.events` event; ``id`` is deterministic (model@version:signal:episode:level), so a replay
    rewrites the same event. ``window``: the events since the detector's statistic last left zero (its
    change-point estimate), up to this one."""
    event = {"id": event_id, "ts": ts, "schema": schema_id(topics.DRIFT_EVENTS), "model": model,
             "model_version": model_version, "signal": signal, "detector": detector, "level": level,
             "statistic": statistic, "value": round(value, 4), "threshold": round(threshold, 4),
             "reference": dict(reference), "window": dict(window), "events_since_reference": events_since_reference,
             "episode": episode}
    return parse_drift_event(event)


def drift_stats_event(snapshot: Mapping[str, Any], *, ts: int) -> dict[str, Any]:
    """One `drift.stats` record (key = model:signal): a signal's score against its thresholds (1.0 = drift),
    alarm level, reference and window statistics (KS/chi², PSI, Jensen-Shannon), for dashboards."""
    return {"id": f"{snapshot['model']}:{snapshot['signal']}:{ts}", "ts": ts, "schema": schema_id(topics.DRIFT_STATS),
            **snapshot}


def parse_retrain_request(raw: bytes | Mapping[str, Any] | None) -> dict[str, Any]:
    """`retrain.requests` (key = model name): {id, ts, schema, model, reason, drift_event_id?, requested_by}."""
    obj = _envelope(raw, topics.RETRAIN_REQUESTS)
    require_str(obj, "model")
    require_str(obj, "requested_by")
    if _one_of(obj, "reason", RETRAIN_REASONS) == "drift":
        require_str(obj, "drift_event_id")
    return obj


def parse_model_update(raw: bytes | Mapping[str, Any] | None) -> dict[str, Any]:
    """`model.updates` (compacted, key = model name): a pointer to a registered version, never the weights:
    {id, ts, schema, model, version, previous_version, action, metrics: {champion, challenger}, data_window,
    registry_path, sha256}."""
    obj = _envelope(raw, topics.MODEL_UPDATES)
    for name in ("model", "version", "registry_path", "sha256"):
        require_str(obj, name)
    if obj.get("previous_version") is not None:
        require_str(obj, "previous_version")
    _one_of(obj, "action", MODEL_ACTIONS)
    metrics = _object(obj, "metrics")
    for side in ("champion", "challenger"):
        if not isinstance(metrics.get(side), dict):
            raise SchemaError(f"field 'metrics.{side}' must be an object")
    _object(obj, "data_window")
    return obj


def retrain_request(request_id: str, *, ts: int, model: str, reason: str, requested_by: str,
                    drift_event_id: str | None = None) -> dict[str, Any]:
    """One `retrain.requests` event (key = model name)."""
    event = {"id": request_id, "ts": ts, "schema": schema_id(topics.RETRAIN_REQUESTS), "model": model,
             "reason": reason, "requested_by": requested_by}
    if drift_event_id is not None:
        event["drift_event_id"] = drift_event_id
    return parse_retrain_request(event)


def model_update(*, ts: int, model: str, version: str, previous_version: str | None, action: str,
                 metrics: Mapping[str, Any], data_window: Mapping[str, Any], registry_path: str, sha256: str,
                 reason: str) -> dict[str, Any]:
    """One `model.updates` event (key = model name); the id (model@version:action) is deterministic, so a
    decision re-announced after a restart is recognisably the same one."""
    event = {"id": f"{model}@{version}:{action}", "ts": ts, "schema": schema_id(topics.MODEL_UPDATES), "model": model,
             "version": version, "previous_version": previous_version, "action": action, "metrics": dict(metrics),
             "data_window": dict(data_window), "registry_path": registry_path, "sha256": sha256, "reason": reason}
    return parse_model_update(event)


def retrain_decision(*, ts: int, model: str, decision: str, reason: str, detail: str,
                     **fields: Any) -> dict[str, Any]:
    """One `retrain.decisions` event (key = model name): what the retraining loop decided and why, for people and
    dashboards (``decision``: armed, requested, skipped, promoted, rejected, failed, rolled_back, confirmed)."""
    return {"id": f"{model}:{decision}:{reason}:{ts}", "ts": ts, "schema": schema_id(topics.RETRAIN_DECISIONS),
            "model": model, "decision": decision, "reason": reason, "detail": detail, **fields}


# --- asr.transcripts ----------------------------------------------------------------------------------------

def asr_transcript_event(
    event_id: str, *, ts: int, stream_id: str, seq: int, start: float, end: float, text: str, final: bool,
    model: str, **fields: Any,
) -> dict[str, Any]:
    """One `asr.transcripts` event: a final segment (``final: true``, id ``stream:index``), a partial
    (``final: false, partial: true``) or a gap (``final: false`` with ``error``). Times are seconds from the
    stream's start, rounded to ms; other fields (segment_index, language, avg_logprob, no_speech_prob, words,
    error, partial) pass through."""
    return {"id": event_id, "ts": ts, "schema": schema_id(topics.ASR_TRANSCRIPTS), "stream_id": stream_id,
            "seq": seq, "start": round(start, 3), "end": round(end, 3), "text": text, "final": final,
            "model": model, **fields}
