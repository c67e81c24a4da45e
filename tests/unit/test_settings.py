"""Settings fields added for per-processor batching, read-ahead, torch threads, /health and locations."""

from __future__ import annotations

from pathlib import Path

import pytest

from models import model_store
from streams.contracts.settings import ConfigError, Settings
from streams.runtime.embedded import broker_binary


def test_defaults_without_environment() -> None:
    s = Settings.from_env({})
    assert (s.asr_batch_size, s.asr_batch_ms) == (32, 200)
    assert (s.text_read_ahead, s.asr_read_ahead, s.recs_read_ahead) == (0, 0, 2)
    assert (s.torch_threads, s.health_stall_s) == (0, 300)
    assert s.model_dir == "~/.cache/streamsense/models" and s.tansu_bin is None
    assert s == Settings()  # from_env({}) and the dataclass agree on every default


def test_new_fields_from_environment() -> None:
    env = {
        "STREAMSENSE_ASR_BATCH_SIZE": "8", "STREAMSENSE_ASR_BATCH_MS": "0",
        "STREAMSENSE_TEXT_READ_AHEAD": "1", "STREAMSENSE_ASR_READ_AHEAD": "3", "STREAMSENSE_RECS_READ_AHEAD": "0",
        "STREAMSENSE_TORCH_THREADS": "4", "STREAMSENSE_HEALTH_STALL_S": "60",
        "STREAMSENSE_MODEL_DIR": "/models", "STREAMSENSE_TANSU_BIN": "/opt/tansu",
    }
    s = Settings.from_env(env)
    assert (s.asr_batch_size, s.asr_batch_ms) == (8, 0)
    assert (s.text_read_ahead, s.asr_read_ahead, s.recs_read_ahead) == (1, 3, 0)
    assert (s.torch_threads, s.health_stall_s) == (4, 60)
    assert (s.model_dir, s.tansu_bin) == ("/models", "/opt/tansu")


def test_empty_locations_mean_the_default() -> None:
    s = Settings.from_env({"STREAMSENSE_MODEL_DIR": "", "STREAMSENSE_TANSU_BIN": ""})
    assert (s.model_dir, s.tansu_bin) == (Settings().model_dir, None)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("STREAMSENSE_ASR_BATCH_SIZE", "0", "must be >= 1"),
        ("STREAMSENSE_ASR_BATCH_MS", "-1", "must be >= 0"),
        ("STREAMSENSE_TEXT_READ_AHEAD", "-1", "must be >= 0"),
        ("STREAMSENSE_ASR_READ_AHEAD", "-1", "must be >= 0"),
        ("STREAMSENSE_RECS_READ_AHEAD", "two", "is not an integer"),
        ("STREAMSENSE_TORCH_THREADS", "-1", "must be >= 0"),
        ("STREAMSENSE_HEALTH_STALL_S", "0", "must be >= 1"),
    ],
)
def test_bad_values_name_the_variable(name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        Settings.from_env({name: value})
    assert name in str(err.value) and message in str(err.value)


def test_model_dir_is_configured_not_read_from_the_environment(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    previous = model_store.configure(None)
    try:
        assert model_store.model_dir() == Path(Settings().model_dir).expanduser()  # never configured: the default
        monkeypatch.setenv("STREAMSENSE_MODEL_DIR", str(tmp_path / "ignored"))
        assert model_store.model_dir() == Path(Settings().model_dir).expanduser()
        model_store.configure(Settings.from_env().model_dir)  # what the entry points do
        assert model_store.model_dir() == tmp_path / "ignored"
        model_store.configure("~/elsewhere")
        assert model_store.model_dir() == Path.home() / "elsewhere"
    finally:
        model_store.configure(previous)


def test_tansu_binary_is_an_explicit_parameter(monkeypatch: pytest.MonkeyPatch) -> None:
    assert broker_binary("/opt/tansu") == Path("/opt/tansu")
    monkeypatch.setenv("STREAMSENSE_TANSU_BIN", "/not/read/here")
    assert broker_binary(None) != Path("/not/read/here")
