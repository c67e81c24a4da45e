"""Delivery through the in-process harness's sink (a `send` function): what is permanent becomes a dead letter and the
batch completes; what is transient fail-stops. The end-to-end proof through the broker is in
tests/integration/test_poison_pills.py."""

from __future__ import annotations

import asyncio
import hashlib
import json

import pytest

from streams.contracts import topics
from streams.contracts.deadletter import dead_letter, original_bytes
from streams.contracts.records import OutRecord, RawRecord, record_size
from streams.runtime.delivery import Delivery, DeliveryFailed, is_permanent
from streams.runtime.testing import TestingSink

LIMIT = 1_048_576


class MessageSizeTooLargeError(Exception):
    """Stands in for aiokafka's/kafka-python's class: errors are classified by class name."""


class KafkaTimeoutError(Exception):
    pass


def deliver(broker: TestingSink, outputs: list[OutRecord], **kwargs) -> list[OutRecord]:
    delivery = Delivery(broker.send, processor="text", max_message_bytes=kwargs.pop("limit", LIMIT), **kwargs)
    return asyncio.run(delivery.deliver(outputs))


def big_input(n: int = 900_000) -> RawRecord:
    value = json.dumps({"id": "big", "text": "a" * n, "source": "ceo"}).encode()
    return RawRecord("text.in", 2, 17, b"big", value, 1234, (("trace", b"t1"),))


def test_dead_letter_of_a_large_input_fits_the_limit_and_identifies_it():
    record = big_input()
    out = dead_letter(record, processor="text", reason="field 'text' has 900000 characters, over the limit of 5000")
    event = json.loads(out.value)
    assert record_size(out) <= LIMIT < len(record.value) * 4 // 3
    assert event["truncated"] is True and event["value_bytes"] == len(record.value)
    assert event["value_sha256"] == hashlib.sha256(record.value).hexdigest()
    source = event["source"]
    assert (source["topic"], source["partition"], source["offset"]) == ("text.in", 2, 17)
    kept = original_bytes(out.value)
    assert 700_000 < len(kept) < len(record.value) and record.value.startswith(kept)
    assert "truncated to fit the 1048576-byte message limit" in event["reason"]
    assert event["reason"].startswith("field 'text' has 900000 characters")


def test_small_dead_letter_keeps_everything():
    record = RawRecord("text.in", 0, 1, b"k", b"not json", None, ())
    event = json.loads(dead_letter(record, processor="text", reason="malformed").value)
    assert event["truncated"] is False and event["value_bytes"] == 8
    assert event["value_sha256"] == hashlib.sha256(b"not json").hexdigest()


def test_huge_key_and_headers_are_dropped_before_the_dead_letter_would_not_fit():
    record = RawRecord("clicks", 0, 5, b"k" * 600_000, b"v" * 10, None, (("h", b"x" * 600_000),))
    out = dead_letter(record, processor="recs", reason="bad")
    event = json.loads(out.value)
    assert record_size(out) <= LIMIT
    assert out.key == b"clicks:0:5"  # a key over 1 KB is not reused as the dead letter's key
    assert event["source"]["headers"] is None and "dropped source headers" in event["reason"]


def test_oversized_output_becomes_a_dead_letter_of_its_input_and_the_batch_completes():
    source = RawRecord("text.in", 1, 9, b"id-9", b'{"id":"id-9"}', None, ())
    too_big = OutRecord(topics.TEXT_ENRICHED, b"id-9", b"x" * (LIMIT + 1), partition=1, source=source)
    fine = OutRecord(topics.TEXT_ENRICHED, b"id-10", b"{}", partition=1)
    broker = TestingSink()
    delivered = deliver(broker, [too_big, fine])
    assert [o.topic for o in broker.records] == [topics.DEADLETTER, topics.TEXT_ENRICHED]
    event = json.loads(broker.records[0].value)
    assert event["id"] == "text.in:1:9" and original_bytes(broker.records[0].value) == source.value
    assert "over the 1048576-byte message limit" in event["reason"] and event["error"] == "RecordTooLarge"
    assert delivered == broker.records


@pytest.mark.parametrize("at_send", [True, False])
def test_permanent_refusal_dead_letters_that_record_only(at_send):
    source = RawRecord("text.in", 0, 3, b"a", b'{"id":"a"}', None, ())
    refused = OutRecord(topics.TEXT_ENRICHED, b"a", b'{"id":"a","x":1}', source=source)
    ok = OutRecord(topics.TEXT_ENRICHED, b"b", b'{"id":"b"}')
    broker = TestingSink(lambda r: MessageSizeTooLargeError("broker says no") if r is refused else None, at_send)
    deliver(broker, [refused, ok])
    assert [json.loads(r.value)["id"] for r in broker.records] == ["b", "text.in:0:3"]
    reason = json.loads(broker.records[1].value)["reason"]
    assert "MessageSizeTooLargeError: broker says no" in reason


def test_a_refused_dead_letter_is_replaced_by_one_without_the_original_bytes():
    source = RawRecord("text.in", 0, 4, b"a", b"z" * 5000, None, ())
    letter = dead_letter(source, processor="text", reason="bad")
    broker = TestingSink(lambda r: MessageSizeTooLargeError("limit 1000") if len(r.value) > 1000 else None)
    deliver(broker, [letter])
    (out,) = broker.records
    event = json.loads(out.value)
    assert event["id"] == "text.in:0:4" and event["value_b64"] == ""
    assert hashlib.sha256(source.value).hexdigest() in event["reason"]


@pytest.mark.parametrize("at_send", [True, False])
def test_transient_failure_still_fail_stops(at_send):
    broker = TestingSink(lambda r: KafkaTimeoutError("no broker"), at_send)
    stopped: list[DeliveryFailed] = []

    def on_fatal(exc: DeliveryFailed):
        stopped.append(exc)
        raise SystemExit(75)

    with pytest.raises(SystemExit):
        deliver(broker, [OutRecord(topics.TEXT_ENRICHED, b"a", b"{}")], on_fatal=on_fatal)
    assert len(stopped) == 1 and "KafkaTimeoutError: no broker" in str(stopped[0])
    assert broker.records == []


def test_checkpoints_go_out_after_the_outputs_they_account_for():
    broker = TestingSink()
    outputs = [OutRecord(topics.ASR_STATE, b"s", b"state"), OutRecord(topics.ASR_TRANSCRIPTS, b"s", b"t")]
    deliver(broker, outputs, checkpoint_topics=(topics.ASR_STATE,))
    assert [o.topic for o in broker.records] == [topics.ASR_TRANSCRIPTS, topics.ASR_STATE]


def test_error_classes_are_matched_by_name_across_client_libraries():
    from aiokafka import errors as aio
    from kafka import errors as kp

    assert is_permanent(aio.MessageSizeTooLargeError()) and is_permanent(kp.MessageSizeTooLargeError())
    assert is_permanent(aio.RecordTooLargeError()) and is_permanent(aio.CorruptRecordException())
    assert not is_permanent(aio.KafkaTimeoutError()) and not is_permanent(kp.KafkaTimeoutError())
    assert not is_permanent(aio.NotLeaderForPartitionError()) and not is_permanent(RuntimeError("?"))
