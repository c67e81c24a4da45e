"""Expected failures of the command line are one readable line that says what to do, never a traceback."""

from __future__ import annotations

import pytest

from models import model_store
from streams.cli import main
from streams.runtime.embedded import free_port


@pytest.fixture(autouse=True)
def keep_model_dir():
    """`main` configures the process's model directory from the environment: put back the session's, or every
    later test in this process would build its own default model under a deleted temporary directory."""
    previous = model_store.configure(None)
    model_store.configure(previous)
    yield
    model_store.configure(previous)


@pytest.mark.parametrize("argv", [["produce", "text", "hello"], ["tail", "text.in"],  # producer, consumer path
                                  ["run", "--processors", "recs"]])  # a worker, once its wait for the broker is over
def test_an_unreachable_broker_is_one_line_naming_it_and_the_fix(argv: list[str], capsys, monkeypatch) -> None:
    monkeypatch.setenv("STREAMSENSE_BROKER_WAIT_S", "0")
    where = f"127.0.0.1:{free_port()}"
    assert main([*argv, "--bootstrap", where]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"no Kafka broker answers at {where}" in err[0] and "streamsense broker" in err[0], err


def test_registry_commands_say_what_is_missing(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("STREAMSENSE_MODEL_DIR", str(tmp_path))
    assert main(["models", "show", "sentiment"]) == 2
    assert "no champion yet" in capsys.readouterr().err
    assert main(["models", "promote", "sentiment", "v9"]) == 2
    assert "sentiment has no version 'v9'" in capsys.readouterr().err
    assert main(["models", "promote"]) == 2
    assert "needs a MODEL" in capsys.readouterr().err


class FlakyBroker:
    """A probe that finds no broker ``down`` times, then one; a clock that only sleeping advances."""

    def __init__(self, down: int) -> None:
        self.down, self.now, self.sleeps = down, 0.0, []

    def probe(self) -> None:
        from kafka.errors import KafkaTimeoutError

        if self.down > 0:
            self.down -= 1
            raise KafkaTimeoutError("Unable to bootstrap from 127.0.0.1:1")

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s


def test_a_starting_worker_waits_for_the_broker_with_backoff_and_says_so() -> None:
    from streams.contracts.settings import Settings
    from streams.runtime.kafka_io import wait_for_broker

    said: list[str] = []
    broker = FlakyBroker(down=3)
    wait_for_broker(Settings(), "kafka:9092", said.append, wait_s=60, probe=broker.probe, sleep=broker.sleep,
                    clock=lambda: broker.now)
    assert broker.sleeps == [1.0, 2.0, 4.0]
    assert [line.split(";")[0] for line in said[:3]] == [f"no Kafka broker answers at kafka:9092 yet (attempt {n})"
                                                          for n in (1, 2, 3)]
    assert said[3] == "broker at kafka:9092 answers (attempt 4)"


def test_the_wait_is_bounded_and_other_kafka_errors_are_not_retried() -> None:
    from kafka.errors import KafkaTimeoutError, TopicAuthorizationFailedError

    from streams.contracts.settings import Settings
    from streams.runtime.kafka_io import wait_for_broker

    broker = FlakyBroker(down=100)
    with pytest.raises(KafkaTimeoutError, match="bootstrap"):
        wait_for_broker(Settings(), "b:1", lambda _line: None, wait_s=20, probe=broker.probe, sleep=broker.sleep,
                        clock=lambda: broker.now)
    assert broker.sleeps == [1.0, 2.0, 4.0, 8.0, 5.0] and broker.now == 20.0  # the last pause: what was left

    def refused() -> None:
        raise TopicAuthorizationFailedError("not allowed")

    with pytest.raises(TopicAuthorizationFailedError):
        wait_for_broker(Settings(), "b:1", lambda _line: None, wait_s=20, probe=refused, sleep=broker.sleep)
