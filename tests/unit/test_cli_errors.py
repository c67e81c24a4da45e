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


@pytest.mark.parametrize("argv", [["produce", "text", "hello"], ["tail", "text.in"]])  # producer, consumer path
def test_an_unreachable_broker_is_one_line_naming_it_and_the_fix(argv: list[str], capsys) -> None:
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
