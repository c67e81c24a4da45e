"""/metrics keeps working after a hostile message names a model with a lone surrogate (found in CI: one such label
in the process-wide registry made every later scrape raise UnicodeEncodeError)."""

from __future__ import annotations

from monitoring import metrics


def test_a_label_with_a_lone_surrogate_does_not_break_the_exposition() -> None:
    metrics.DRIFT_EPISODES.labels(model="\ud800bad", signal="s", level="drift").inc()
    out = metrics.exposition()
    assert 'model="?bad"' in out.decode("utf-8") and b"streamsense_drift_episodes" in out
