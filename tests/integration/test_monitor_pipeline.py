"""text.in → text worker → text.enriched → drift monitor → drift.events, drift.stats and /metrics, through a broker,
scraped by a real Prometheus server that evaluates the repository's alert rules, and shown by
`streamsense dashboard` in headless Chromium.

The monitor of a new group reads its topics from the beginning, so each test runs its own broker: the
reference must be the test's stream, not other tests' leftovers."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from models.text_types import SENTIMENT_LABELS
from models.tweets import load_tweets
from streams.contracts import topics
from streams.contracts.schemas import parse_drift_event
from streams.contracts.settings import Settings
from streams.runtime.embedded import free_port
from streams.runtime.kafka_io import read_topic
from tests.conftest import embedded_broker
from tests.integration.browser import console_errors, run_page, screenshot
from tests.integration.harness import REPO, WorkerProcess, collect, produce, text_records, wait_json
from tests.integration.prometheus import PrometheusServer

pytestmark = pytest.mark.integration

REFERENCE = 200


def tweets(n: int, only: str | None = None, seed: int = 0) -> list[str]:
    texts, labels = load_tweets()
    pool = [t for t, y in zip(texts, labels, strict=True) if only is None or SENTIMENT_LABELS[y] == only]
    return random.Random(seed).sample(pool, n)


def stats_of(bootstrap: str, model: str, signal: str, at_least: int, timeout_s: float = 60.0) -> dict:
    """The newest drift.stats snapshot of a signal once it has seen ``at_least`` events after its reference."""
    found: dict = {}

    def stop(r) -> bool:
        snap = json.loads(r.value)
        if (snap["model"], snap["signal"]) == (model, signal) and snap["events_since_reference"] >= at_least:
            found.update(snap)
        return bool(found)

    for _ in read_topic(Settings(bootstrap=bootstrap), bootstrap, topics.DRIFT_STATS, timeout_s=timeout_s, stop=stop):
        pass
    assert found, f"no drift.stats snapshot of {model}/{signal} with {at_least} events after the reference"
    return found


def check_dashboard(bootstrap: str, worker: WorkerProcess, tmp_path: Path) -> None:
    """`streamsense dashboard` as its own process, its page in headless Chromium: loads without console errors,
    draws the signals' charts with data and lists the drift episode; the worker's throughput is scraped."""
    port = free_port()
    log = open(tmp_path / "dashboard.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen([sys.executable, "-m", "streams.cli", "dashboard", "--bootstrap", bootstrap,
                             "--port", str(port), "--worker", f"http://127.0.0.1:{worker.web_port}"],
                            stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    url = f"http://127.0.0.1:{port}/"
    try:
        state = wait_json(f"{url}api/state", lambda s: s["signals"] and s["episodes"] and s["throughput"])
        assert {"sentiment", "ner"} <= {s["model"] for s in state["signals"]}
        dom, console = run_page(url)
        assert console_errors(console) == [], console
        status = re.search(r'id="status"[^>]*', dom)
        assert status, dom[:2000]
        attrs = dict(re.findall(r'data-(\w+)="(\d+)"', status.group(0)))
        assert int(attrs["signals"]) >= 5 and int(attrs["points"]) > 5 and int(attrs["episodes"]) >= 1, attrs
        assert int(attrs["charts"]) == int(attrs["signals"]) + len(state["throughput"]), attrs
        assert dom.count("<canvas") >= int(attrs["charts"])
        assert "label" in dom and "drift (#1)" in dom
        if os.environ.get("STREAMSENSE_SCREENSHOT"):  # refreshes docs/dashboard.png
            screenshot(url, Path(os.environ["STREAMSENSE_SCREENSHOT"]))
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()


@pytest.fixture
def one_partition_broker(tmp_path: Path) -> Iterator[str]:
    with embedded_broker(tmp_path, partitions=1) as bootstrap:
        yield bootstrap


def test_a_switch_to_negative_tweets_raises_sentiment_drift_and_none_before(one_partition_broker: str,
                                                                           tmp_path: Path) -> None:
    # One partition, so the monitor reads the stream in the order it is produced and the test is the same every
    # run. Over 4 partitions the read order picks which 200 tweets form the reference: replaying this test's
    # enriched events through MonitorProcessor in 1,500 random partition interleavings, the label drift came
    # 47-213 events after the switch (median 85, 1.7% over 150: a CI failure at 160) and the NER entity_type
    # signal drifted before it in 0.4% of them (a 200-entity reference is a small sample). In produce order: 110.
    bootstrap = one_partition_broker
    env = {"STREAMSENSE_DRIFT_REFERENCE_EVENTS": str(REFERENCE), "STREAMSENSE_DRIFT_STATS_S": "1",
           "STREAMSENSE_MONITOR_CHECKPOINT_S": "1", "STREAMSENSE_PARTITIONS": "1"}
    worker = WorkerProcess(bootstrap, tmp_path, processors="text,monitor", env=env).start()
    try:
        worker.wait_ready(timeout_s=180)
        # A seed whose stream is stationary in the order it is produced: with seed 0 the first 200 entities
        # happened to be 14% PER against 27% after them, a real shift the NER entity_type signal rightly flagged.
        mixed = tweets(600, seed=5)
        produce(bootstrap, text_records(mixed, prefix="mixed"))
        collect(bootstrap, topics.TEXT_ENRICHED, len(mixed), match="mixed-", worker=worker)
        before = stats_of(bootstrap, "sentiment", "label", len(mixed) - REFERENCE)
        assert before["level"] == "none" and before["reference"]["events"] == REFERENCE, before
        quiet = list(read_topic(Settings(bootstrap=bootstrap), bootstrap, topics.DRIFT_EVENTS, timeout_s=5,
                                idle_timeout_s=2))
        assert [json.loads(r.value)["level"] for r in quiet] in ([], ["warning"], ["warning", "cleared"]), [
            json.loads(r.value) for r in quiet]

        produce(bootstrap, text_records(tweets(400, only="negative", seed=1), prefix="negative"))
        [drift] = [parse_drift_event(json.dumps(e).encode()) for e in collect(
            bootstrap, topics.DRIFT_EVENTS, 1, match="label:1:drift", worker=worker, timeout_s=120)]
        assert drift["model"] == "sentiment" and drift["signal"] == "label"
        assert drift["statistic"] == "negative up" and drift["value"] >= drift["threshold"]
        delay = drift["events_since_reference"] - (len(mixed) - REFERENCE)
        assert 0 < delay <= 150, drift  # raised within 150 events of the switch

        with PrometheusServer(tmp_path / "prometheus", [f"127.0.0.1:{worker.web_port}"]) as prometheus:
            prometheus.wait_for('streamsense_drift_alarm_level{model="sentiment",signal="label"}',
                                lambda r: r and float(r[0]["value"][1]) == 2)
            score = prometheus.wait_for('streamsense_drift_score{model="sentiment",signal="label"}', bool)
            assert float(score[0]["value"][1]) >= 1
            p99 = prometheus.wait_for('histogram_quantile(0.99, sum by (le) '
                                      '(streamsense_end_to_end_latency_seconds_bucket{processor="text"}))', bool)
            assert 0 < float(p99[0]["value"][1]) < 60
            # other signals may fire as well: with the CoNLL NER, negative tweets also name other entity types
            alerts = prometheus.wait_for(
                'ALERTS{alertname="StreamsenseDrift",alertstate="firing",signal="label"}', bool)
            assert alerts[0]["metric"]["model"] == "sentiment"
        check = subprocess.run(["promtool", "check", "metrics"], input=worker.metrics_text().encode(),
                               capture_output=True, timeout=60)
        assert check.returncode == 0, check.stdout + check.stderr
        check_dashboard(bootstrap, worker, tmp_path)
    finally:
        assert worker.stop() == 0, worker.log()[-3000:]


def movie_lines(n: int) -> list[str]:
    """Another domain, another vocabulary: catalogue lines of MovieLens titles and genres."""
    from models.recs.movielens import load_movielens

    items, _ = load_movielens(limit=1)
    lines = [f"{i['title']} - {i['genres'].replace('|', ', ')}" for i in items if i["genres"]]
    return random.Random(2).sample(lines, n)


def test_a_switch_to_another_domain_raises_embedding_drift(own_broker: str, tmp_path: Path) -> None:
    """The monitor never runs the encoder: it reads the projected sentence embedding in text.enriched."""
    env = {"STREAMSENSE_DRIFT_REFERENCE_EVENTS": str(REFERENCE), "STREAMSENSE_DRIFT_STATS_S": "1"}
    worker = WorkerProcess(own_broker, tmp_path, processors="text,monitor", env=env).start()
    try:
        worker.wait_ready(timeout_s=180)
        tweets_in = tweets(500, seed=3)
        produce(own_broker, text_records(tweets_in, prefix="tweet"))
        collect(own_broker, topics.TEXT_ENRICHED, len(tweets_in), match="tweet-", worker=worker)
        # the embedding signal's own reference starts after the REFERENCE vectors that fix the centroid
        before = stats_of(own_broker, "sentiment", "embedding", len(tweets_in) - 2 * REFERENCE)
        assert before["level"] == "none", before

        produce(own_broker, text_records(movie_lines(300), prefix="movie"))
        [drift] = collect(own_broker, topics.DRIFT_EVENTS, 1, match="embedding:1:drift", worker=worker,
                          timeout_s=120)
        delay = drift["events_since_reference"] - (len(tweets_in) - 2 * REFERENCE)
        assert 0 < delay <= 150, drift
    finally:
        assert worker.stop() == 0, worker.log()[-3000:]
