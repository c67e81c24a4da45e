"""The text processor's batch logic, without a broker: the enricher is a small deterministic stand-in
(the real models are covered by test_enrichment.py and the end-to-end tests)."""

from __future__ import annotations

import json

from models.text_types import Entity, Sentiment
from processors.text import TextEnrichmentProcessor
from streams.contracts.records import RawRecord
from streams.contracts.schemas import encode, text_in_event, validate_text_enriched
from streams.runtime.runner import process_or_dead_letter


class KeywordEnricher:
    """'good' → positive, 'bad' → negative; 'Paris' is a LOC; 'POISON' makes the model raise."""

    def __init__(self) -> None:
        self.models = {"sentiment": "kw@1", "ner": "kw@1"}
        self.calls: list[int] = []

    def enrich(self, texts):
        self.calls.append(len(texts))
        if any("POISON" in t for t in texts):
            raise RuntimeError("tensor shape mismatch")
        out = []
        for t in texts:
            label = "positive" if "good" in t else "negative" if "bad" in t else "neutral"
            ents = [Entity("Paris", "LOC", t.index("Paris"), t.index("Paris") + 5, 1.0)] if "Paris" in t else []
            out.append((Sentiment(label, 0.9), ents))
        return out


def rec(value: bytes | None, offset: int, partition: int = 2) -> RawRecord:
    return RawRecord("text.in", partition, offset, b"k", value, timestamp_ms=1000)


def text_rec(text: str, offset: int, event_id: str | None = None) -> RawRecord:
    return rec(encode(text_in_event(text, event_id=event_id or f"id{offset}", source="t")), offset)


def test_one_output_per_input_in_order_on_the_input_partition():
    processor = TextEnrichmentProcessor(KeywordEnricher(), clock=lambda: 10**13)
    batch = [text_rec("good day in Paris", 0), rec(b"{not json", 1), text_rec("bad", 2), rec(None, 3)]
    out = processor.process(batch)
    assert [o.topic for o in out] == ["text.enriched", "deadletter", "text.enriched", "deadletter"]
    first = json.loads(out[0].value)
    validate_text_enriched(first)
    assert first["sentiment"]["label"] == "positive" and first["entities"][0]["start"] == 12
    assert out[0].key == b"id0" and out[0].partition == 2 and out[2].partition == 2
    assert json.loads(out[1].value)["id"] == "text.in:2:1"


def test_a_poison_text_costs_only_itself():
    enricher = KeywordEnricher()
    processor = TextEnrichmentProcessor(enricher)
    out = processor.process([text_rec("good", 0), text_rec("POISON pill", 1), text_rec("bad", 2)])
    assert [o.topic for o in out] == ["text.enriched", "deadletter", "text.enriched"]
    letter = json.loads(out[1].value)
    assert letter["error"] == "ModelError"
    assert letter["reason"] == "enrichment failed: RuntimeError: tensor shape mismatch"
    assert enricher.calls == [3, 1, 1, 1]  # the batch, then one by one


def test_text_over_the_limit_is_dead_lettered_with_the_limit():
    processor = TextEnrichmentProcessor(KeywordEnricher(), max_chars=10)
    [out] = processor.process([text_rec("x" * 11, 0)])
    assert "over the limit of 10" in json.loads(out.value)["reason"]


def test_a_processor_bug_turns_the_batch_into_dead_letters():
    class Broken:
        name = "broken"

        def process(self, records):
            raise KeyError("oops")

    out = process_or_dead_letter(Broken(), [rec(b"a", 0), rec(b"b", 1)])
    assert [json.loads(o.value)["error"] for o in out] == ["ProcessorError", "ProcessorError"]
    assert [json.loads(o.value)["source"]["offset"] for o in out] == [0, 1]
