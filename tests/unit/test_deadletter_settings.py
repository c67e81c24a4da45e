import base64
import json

import pytest

from streams.contracts.deadletter import dead_letter, original_bytes
from streams.contracts.records import RawRecord
from streams.contracts.settings import ConfigError, KafkaSecurity, Settings
from streams.runtime.batch_source import aiokafka_kwargs
from streams.runtime.faust_app import faust_credentials


def test_dead_letter_keeps_original_bytes_and_position():
    raw = b'{"id": "a", "text": "caf\xe9"}'
    record = RawRecord("text.in", 3, 41, b"key-a", raw, 99, (("h", b"v"),))
    out = dead_letter(record, processor="text", reason="value is not valid UTF-8")
    event = json.loads(out.value)
    assert out.topic == "deadletter" and out.key == b"key-a"
    assert event["id"] == "text.in:3:41"  # deterministic: a replay rewrites the same dead letter
    assert event["source"] == {"topic": "text.in", "partition": 3, "offset": 41, "timestamp_ms": 99,
                               "key_b64": base64.b64encode(b"key-a").decode(),
                               "headers": [["h", base64.b64encode(b"v").decode()]]}
    assert event["processor"] == "text" and event["reason"] == "value is not valid UTF-8"
    assert original_bytes(out.value) == raw
    assert dict(out.headers) == {"processor": b"text", "error": b"SchemaError"}


def test_dead_letter_of_keyless_empty_message():
    out = dead_letter(RawRecord("text.in", 0, 7, None, None), processor="text", reason="empty")
    assert out.key == b"text.in:0:7" and original_bytes(out.value) == b""


def test_settings_from_env_and_overrides():
    env = {"KAFKA_BOOTSTRAP": "k1:9093", "STREAMSENSE_PARTITIONS": "8", "STREAMSENSE_TEXT_BATCH_SIZE": "16",
           "STREAMSENSE_ASR_BEAM_SIZE": "1"}
    s = Settings.from_env(env)
    assert (s.bootstrap, s.partitions, s.text_batch_size, s.asr_beam_size) == ("k1:9093", 8, 16, 1)
    assert Settings.from_env({}).asr_beam_size == 3
    assert s.with_overrides(bootstrap=None, text_batch_size=4).text_batch_size == 4
    assert s.with_overrides(bootstrap=None).bootstrap == "k1:9093"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"STREAMSENSE_PARTITIONS": "four"}, "STREAMSENSE_PARTITIONS='four' is not an integer"),
        ({"STREAMSENSE_PARTITIONS": "0"}, "must be >= 1"),
        ({"STREAMSENSE_ASR_BEAM_SIZE": "0"}, "must be >= 1"),
        ({"KAFKA_SECURITY_PROTOCOL": "TLS"}, "expected one of"),
        ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "needs KAFKA_SASL_MECHANISM"),
    ],
)
def test_bad_configuration_names_the_variable(env, message):
    with pytest.raises(ConfigError, match=None) as err:
        Settings.from_env(env)
    assert message in str(err.value)


def test_sasl_settings_pass_through_to_both_clients():
    sec = KafkaSecurity.from_env({"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
                                  "KAFKA_SASL_USERNAME": "u", "KAFKA_SASL_PASSWORD": "s3cret"})
    assert sec.kafka_python_kwargs() == {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-512",
                                         "sasl_plain_username": "u", "sasl_plain_password": "s3cret"}
    creds = faust_credentials(sec)
    assert (creds.username, creds.password, creds.mechanism.value) == ("u", "s3cret", "SCRAM-SHA-512")
    batch = aiokafka_kwargs(Settings(security=sec), "b:9092")  # the batch consumer's aiokafka client
    assert {k: batch[k] for k in ("security_protocol", "sasl_mechanism", "sasl_plain_username",
                                  "sasl_plain_password")} == {**sec.kafka_python_kwargs()}
    assert "s3cret" not in repr(sec)
    assert faust_credentials(KafkaSecurity()) is None
