"""`streamsense run`: processor flags map onto Settings, and a flag for a processor the worker does not host is
a usage error (exit 2) instead of being silently ignored. Parsing only: no broker, no worker."""

from __future__ import annotations

import pytest

from streams import cli
from streams.contracts.settings import Settings


def run(argv: list[str]) -> tuple[Settings, list[str]]:
    """What `streamsense run ARGV` would start the worker with (parsing only: nothing connects to Kafka)."""
    return cli.run_config(cli.parser().parse_args(["run", *argv]))


def test_per_processor_flags_set_their_processor() -> None:
    argv = ["--processors", "text,asr,recs", "--text-batch-size", "16", "--text-batch-ms", "5",
            "--asr-batch-size", "4", "--asr-batch-ms", "300", "--recs-batch-size", "1024", "--recs-batch-ms", "0"]
    s, names = run(argv)
    assert names == ["text", "asr", "recs"]
    assert (s.text_batch_size, s.text_batch_ms, s.asr_batch_size, s.asr_batch_ms, s.recs_batch_size,
            s.recs_batch_ms) == (16, 5, 4, 300, 1024, 0)


def test_short_batch_flags_apply_to_the_one_processor() -> None:
    s, _ = run(["--processors", "recs", "--batch-size", "64", "--batch-ms", "7"])
    assert (s.recs_batch_size, s.recs_batch_ms) == (64, 7)
    assert (s.text_batch_size, s.text_batch_ms) == (Settings().text_batch_size, Settings().text_batch_ms)


def test_unset_flags_keep_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMSENSE_TEXT_BATCH_SIZE", "8")
    s, _ = run(["--processors", "text", "--text-batch-ms", "9"])
    assert (s.text_batch_size, s.text_batch_ms) == (8, 9)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--processors", "text", "--recs-batch-size", "8"],
         "--recs-batch-size configures the recs processor, which is not in --processors text"),
        (["--processors", "recs,asr", "--text-batch-ms", "8"],
         "--text-batch-ms configures the text processor, which is not in --processors recs,asr"),
        (["--processors", "recs", "--sentiment-model", "default"],
         "--sentiment-model configures the text processor, which is not in --processors recs"),
        (["--processors", "text,recs", "--batch-size", "8"],
         "--batch-size is ambiguous with --processors text,recs; use --text-batch-size, --recs-batch-size"),
        (["--processors", "text", "--batch-ms", "8", "--text-batch-ms", "9"],
         "--batch-ms and --text-batch-ms both given"),
        (["--processors", "text", "--text-batch-size", "0"], "argument --text-batch-size: 0 must be >= 1"),
        (["--processors", "asr", "--asr-batch-ms", "-1"], "argument --asr-batch-ms: -1 must be >= 0"),
    ],
)
def test_flags_that_do_not_apply_are_usage_errors(argv: list[str], message: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        run(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "usage: streamsense run" in err and message in err


def test_help_documents_the_rule(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "A flag for a processor that is not in --processors is an error" in out
    assert "--recs-batch-size N max events per recs batch (env STREAMSENSE_RECS_BATCH_SIZE, default 512)" in out
