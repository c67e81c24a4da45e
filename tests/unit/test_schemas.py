import json

import pytest

from streams.contracts import topics
from streams.contracts.schemas import (
    SchemaError,
    TextIn,
    decode_json_object,
    encode,
    text_enriched_event,
    text_in_event,
    validate_text_enriched,
)


def parse(obj_or_bytes, max_chars=100):
    raw = obj_or_bytes if isinstance(obj_or_bytes, bytes) else json.dumps(obj_or_bytes).encode()
    return TextIn.parse(raw, max_chars=max_chars, fallback_ts=1234)


def test_text_in_roundtrip_keeps_extra_fields():
    event = text_in_event("hello", event_id="e1", source="asr", stream_id="s1", start=1.5)
    parsed = parse(event)
    assert (parsed.id, parsed.text, parsed.source) == ("e1", "hello", "asr")
    assert parsed.extra == {"stream_id": "s1", "start": 1.5}
    assert parsed.to_event()["schema"] == "text.in/1"


def test_missing_ts_falls_back_to_record_timestamp():
    assert parse({"id": "a", "text": "x", "source": "s"}).ts == 1234


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "empty message"),
        (b'{"id": "a", "text": "caf\xe9"}', "not valid UTF-8: invalid continuation byte at byte 24"),
        (b'{"id": "a", "text": ', "malformed JSON: Expecting value (line 1, column 21)"),
        (b"[1, 2]", "expected a JSON object, got array"),
        (b'{"id": ' + b"[" * 100_000, "JSON nested deeper than the parser's limit"),  # was a RecursionError
        (b'{"a":' * 100_000, "JSON nested deeper than the parser's limit"),
        ({"text": "x", "source": "s"}, "missing required field 'id'"),
        ({"id": "a", "text": 42, "source": "s"}, "field 'text' must be a string, got integer"),
        ({"id": "a", "text": "   ", "source": "s"}, "field 'text' is empty"),
        ({"id": "a", "text": "x" * 101, "source": "s"}, "field 'text' has 101 characters, over the limit of 100"),
        ({"id": "a", "text": "x"}, "missing required field 'source'"),
        ({"id": "a", "text": "x", "source": "s", "ts": "yesterday"}, "field 'ts' must be milliseconds"),
        ({"id": "a", "text": "x", "source": "s", "schema": "text.in/9"}, "unsupported schema version 'text.in/9'"),
        ({"id": "a", "text": "x", "source": "s", "schema": "clicks/1"}, "arrived on topic 'text.in'"),
    ],
)
def test_bad_text_in_gives_a_readable_reason(raw, reason):
    with pytest.raises(SchemaError) as err:
        parse(raw)
    assert reason in str(err.value)


def test_enriched_event_validates_and_reports_latency():
    source = parse({"id": "a", "text": "Bob went to Paris", "source": "s", "ts": 1000, "lang": "en"})
    event = text_enriched_event(
        source,
        sentiment={"label": "neutral", "score": 0.7},
        entities=[{"text": "Paris", "label": "LOC", "start": 12, "end": 17, "score": 1.0}],
        models={"sentiment": "m@1", "ner": "n@1"},
        done_ms=1250,
    )
    validate_text_enriched(event)
    assert event["latency_ms"] == 250 and event["lang"] == "en" and event["schema"] == "text.enriched/1"
    assert decode_json_object(encode(event)) == event


@pytest.mark.parametrize(
    ("patch", "reason"),
    [
        ({"sentiment": {"label": "happy", "score": 0.5}}, "sentiment must be"),
        ({"sentiment": {"label": "neutral", "score": 1.5}}, "score must be a number in [0, 1]"),
        ({"entities": [{"text": "Paris", "label": "GPE", "start": 12, "end": 17}]}, "entity label must be"),
        ({"entities": [{"text": "Pari", "label": "LOC", "start": 12, "end": 17}]}, "!= text[12:17]"),
        ({"entities": [{"text": "x", "label": "LOC", "start": 12, "end": 99}]}, "out of range"),
    ],
)
def test_enriched_validation_catches_contract_breaks(patch, reason):
    event = {"id": "a", "text": "Bob went to Paris", "source": "s", "schema": "text.enriched/1",
             "sentiment": {"label": "neutral", "score": 0.5}, "entities": [], "models": {}, "latency_ms": 1}
    event.update(patch)
    with pytest.raises(SchemaError, match=None) as err:
        validate_text_enriched(event)
    assert reason in str(err.value)


def test_every_contract_topic_is_registered():
    for name in ("text.in", "text.enriched", "audio.chunks", "asr.transcripts", "clicks", "deadletter",
                 "drift.events", "retrain.requests", "model.updates"):
        assert topics.topic_spec(name).name == name
    assert topics.topic_spec("model.updates").config == {"cleanup.policy": "compact"}
    with pytest.raises(KeyError, match="unknown topic"):
        topics.topic_spec("nope")
