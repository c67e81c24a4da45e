"""Crash recovery and the command line, against the embedded broker."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from streams.contracts import topics
from streams.contracts.settings import Settings
from streams.runtime.embedded import free_port, port_open
from streams.runtime.kafka_io import describe_topics, read_topic
from tests.integration.harness import REPO, WorkerProcess, collect, produce, text_records

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_worker_stopped_mid_stream_loses_nothing(broker: str, tmp_path: Path, how: str) -> None:
    """SIGKILL: nothing committed past delivered outputs. SIGTERM: Faust's graceful stop must not ack the
    batch in flight either (take_events acks in a finally block)."""
    prefix = f"kill-{uuid.uuid4().hex[:6]}"
    n = 600
    app_id = f"test-kill-{uuid.uuid4().hex[:6]}"
    first = WorkerProcess(broker, tmp_path, app_id=app_id).start()
    try:
        produce(broker, text_records([f"Event {i}: Alice flew from Paris to Rome, lovely trip" for i in range(n)],
                                     prefix))
        collect(broker, topics.TEXT_ENRICHED, 40, match=prefix, worker=first)  # mid-stream: some done, most not
    finally:
        if how == "SIGKILL":
            first.kill()  # no commit, no leave-group, no flush
        else:
            assert first.stop() == 0
    second = WorkerProcess(broker, tmp_path, app_id=app_id).start()  # same consumer group: resumes from commits
    try:
        out = collect(broker, topics.TEXT_ENRICHED, n, match=prefix, worker=second, timeout_s=240)
    finally:
        assert second.stop() == 0
    assert {e["id"] for e in out} == {f"{prefix}-{i:04d}" for i in range(n)}


def streamsense(*args: str, timeout: float = 120, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], capture_output=True, text=True,
                          timeout=timeout, input=input, cwd=REPO)


def test_cli_produce_then_tail_roundtrip(broker: str) -> None:
    marker = uuid.uuid4().hex
    jsonl = json.dumps({"text": f"from stdin {marker}", "lang": "en"}) + "\n"
    done = streamsense("produce", "text", f"from args {marker}", "--file", "-", "--bootstrap", broker, input=jsonl)
    assert done.returncode == 0, done.stderr
    ids = done.stdout.split()
    assert len(ids) == 2 and "produced 2 messages to text.in" in done.stderr
    tail = streamsense("tail", topics.TEXT_IN, "--bootstrap", broker, "--idle", "2", "--timeout", "30")
    assert tail.returncode == 0, tail.stderr
    mine = [json.loads(line) for line in tail.stdout.splitlines() if marker in line]
    assert {e["id"] for e in mine} == set(ids)
    assert {e.get("lang") for e in mine} == {None, "en"} and {e["source"] for e in mine} == {"cli"}


def test_cli_rejects_a_bad_jsonl_line_before_producing(broker: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": 5}\n')
    done = streamsense("produce", "text", "--file", str(bad), "--bootstrap", broker)
    assert done.returncode != 0 and "bad.jsonl:2: field 'text' must be a string" in done.stderr


def keyed(broker: str, topic: str, marker: str) -> list[tuple[str, int, dict]]:
    """(key, partition, value) of the records of ``topic`` whose value mentions ``marker``, read by an
    independent consumer."""
    return [(r.key.decode(), r.partition, json.loads(r.value))
            for r in read_topic(Settings(bootstrap=broker), broker, topic, timeout_s=30, idle_timeout_s=2)
            if marker in (r.value or b"").decode()]


def test_cli_produces_clicks_items_and_feedback_keyed_as_their_contracts_say(own_broker: str, tmp_path: Path
                                                                            ) -> None:
    """On a broker of its own: the recs tests' new groups read every click on the shared one."""
    broker, m = own_broker, uuid.uuid4().hex[:8]
    clicks = tmp_path / "clicks.jsonl"
    clicks.write_text("".join(json.dumps({"user_id": f"{m}-u{k % 10}", "item_id": f"{m}-i{k}", "event": "click"})
                              + "\n" for k in range(30)))
    done = streamsense("produce", "clicks", "--file", str(clicks), "--bootstrap", broker)
    assert done.returncode == 0 and "produced 30 messages to clicks" in done.stderr, done.stderr
    got = keyed(broker, topics.CLICKS, m)
    assert len(got) == 30 and all(key == value["user_id"] and value["id"] for key, _, value in got)
    assert all(len({p for k, p, _ in got if k == user}) == 1 for user in {k for k, _, _ in got})  # one partition each
    assert len({p for _, p, _ in got}) > 1  # ... and 10 users spread over the 4 partitions

    item = json.dumps({"item_id": f"{m}-i1", "title": "Alien (1979)", "genres": ["Horror", "Sci-Fi"]})
    label = json.dumps({"id": f"{m}-t1", "label": "negative", "text": "dull"})
    for kind, arg, topic, key in (("items", item, topics.ITEMS, f"{m}-i1"), ("feedback", label, topics.FEEDBACK,
                                                                            f"{m}-t1")):
        done = streamsense("produce", kind, arg, "--bootstrap", broker)
        assert done.returncode == 0, done.stderr
        assert [k for k, _, _ in keyed(broker, topic, m)] == [key]

    raw = streamsense("produce", "raw", "--topic", topics.CLICKS, "--key-field", "user_id", "--file", "-",
                      "--bootstrap", broker, input=json.dumps({"id": f"{m}-raw", "user_id": 7, "item_id": 1}) + "\n")
    assert raw.returncode == 0, raw.stderr
    assert ("7", f"{m}-raw") in {(k, v["id"]) for k, _, v in keyed(broker, topics.CLICKS, f"{m}-raw")}


def test_cli_sends_nothing_for_an_invalid_event_unless_told_to_skip_it(own_broker: str, tmp_path: Path) -> None:
    broker, m = own_broker, uuid.uuid4().hex[:8]
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(json.dumps({"id": f"{m}-a", "label": "positive"}) + "\n"
                     + json.dumps({"id": f"{m}-b", "label": "great"}) + "\n")
    done = streamsense("produce", "feedback", "--file", str(mixed), "--bootstrap", broker)
    assert done.returncode != 0
    assert "mixed.jsonl:2: field 'label' must be one of negative|neutral|positive" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and keyed(broker, topics.FEEDBACK, m) == []
    done = streamsense("produce", "feedback", "--file", str(mixed), "--skip-invalid", "--bootstrap", broker)
    assert done.returncode == 0 and "skipped" in done.stderr and "mixed.jsonl:2" in done.stderr
    assert [k for k, _, _ in keyed(broker, topics.FEEDBACK, m)] == [f"{m}-a"]
    bad_click = streamsense("produce", "clicks", json.dumps({"item_id": 3}), "--bootstrap", broker)
    assert bad_click.returncode != 0 and "argument:1: field 'user_id'" in bad_click.stderr, bad_click.stderr


def test_topics_list_shows_explicit_partition_counts(broker: str) -> None:
    done = streamsense("topics", "list", "--bootstrap", broker)
    assert done.returncode == 0, done.stderr
    rows = {line.split()[0]: line for line in done.stdout.splitlines()}
    assert "4 partitions" in rows["text.in"] and "1 partitions" in rows["model.updates"]
    assert "compact" in rows["model.updates"]


def test_broker_command_serves_kafka_and_stops_on_sigterm() -> None:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "streams.cli", "broker", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == f"bootstrap: 127.0.0.1:{port}"
        bootstrap = f"127.0.0.1:{port}"
        names = set(describe_topics(Settings(bootstrap=bootstrap), bootstrap))
        assert set(topics.BY_NAME) <= names
        produce(bootstrap, text_records(["hello broker"], "broker-cmd"))
        got = list(read_topic(Settings(bootstrap=bootstrap), bootstrap, topics.TEXT_IN, max_records=1, timeout_s=20))
        assert got and b"hello broker" in got[0].value
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    assert not port_open("127.0.0.1", port)


def test_demo_tours_every_processor_and_exits_zero() -> None:
    done = streamsense("demo", "--timeout", "300", timeout=420)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-3000:]
    assert "16 enriched, 3 dead letters, 0 missing" in done.stdout
    assert re.search(r"the drift dashboard: http://127\.0\.0\.1:\d+/", done.stdout)
    recs = re.search(r"recs: user \S+'s top 10 changed [\d.]+ s after \d+ \w+ likes: (\d+) new items", done.stdout)
    assert recs and int(recs[1]) > 0, done.stdout[-4000:]
    loop = re.search(r"retraining: drift, promotion of \S+, accuracy on reviews ([\d.]+) -> ([\d.]+)", done.stdout)
    assert loop and float(loop[2]) > float(loop[1]) + 0.1, done.stdout[-4000:]
    assert "the worker swapped without a restart" in done.stdout
    assert "Eiffel Tower/" in done.stdout or "Paris/LOC" in done.stdout
    assert "malformed JSON" in done.stdout and "not valid UTF-8" in done.stdout
    if shutil.which("flite"):  # the spoken clip: its final transcript and its enriched text (source asr)
        assert "speech: 1 final(s), 1 enriched, complete" in done.stdout, done.stdout[-3000:]
        assert "from Berlin" in done.stdout and "(source asr," in done.stdout
    else:
        assert "flite is not on PATH: skipping the speech part" in done.stdout


def test_tail_of_a_missing_topic_is_one_line_saying_what_to_run(broker: str) -> None:
    done = streamsense("tail", "no.such.topic", "--bootstrap", broker)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "topic 'no.such.topic' does not exist" in done.stderr and "streamsense topics create" in done.stderr


def test_two_text_workers_split_the_partitions_and_one_takes_over_when_the_other_is_killed(
        broker: str, tmp_path: Path) -> None:
    """Scale-out and failover: two workers in one group split text.in; after one is SIGKILLed the other holds
    every partition within the session timeout (plus a rebalance) and every input id comes out (duplicates
    allowed: at-least-once, they carry the same id)."""
    prefix = f"pair-{uuid.uuid4().hex[:6]}"
    app_id = f"test-pair-{uuid.uuid4().hex[:6]}"
    n_partitions = describe_topics(Settings(bootstrap=broker), broker)[topics.TEXT_IN]
    a = WorkerProcess(broker, tmp_path, app_id=app_id).start()
    b = WorkerProcess(broker, tmp_path, app_id=app_id).start()

    def text_partitions(worker: WorkerProcess) -> set[str]:
        status, body = worker.get("/ready")
        return {p for p in body.get("partitions", []) if p.startswith(f"{topics.TEXT_IN}[")} if status == 200 else set()

    def wait_until(check, what: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not check():
            assert time.monotonic() < deadline, f"{what} not within {timeout_s} s:\n{a.log()[-2000:]}"
            time.sleep(0.5)

    try:
        a.wait_ready(timeout_s=180)
        b.wait_ready(timeout_s=180)
        wait_until(lambda: text_partitions(a) and text_partitions(b)
                   and len(text_partitions(a) | text_partitions(b)) == n_partitions, "a split", 60)
        first = text_records([f"Item {i}: Carol drove from Leeds to York" for i in range(200)], f"{prefix}-a")
        produce(broker, first)
        collect(broker, topics.TEXT_ENRICHED, len(first), match=f"{prefix}-a", worker=a, timeout_s=240)
        b.kill()  # no commit, no leave-group
        second = text_records([f"Item {i}: Dan flew from Oslo to Rome" for i in range(200)], f"{prefix}-b")
        produce(broker, second)
        wait_until(lambda: len(text_partitions(a)) == n_partitions, "the take-over", 60)
        out = collect(broker, topics.TEXT_ENRICHED, len(second), match=f"{prefix}-b", worker=a, timeout_s=240)
        assert {e["id"] for e in out} == {f"{prefix}-b-{i:04d}" for i in range(200)}
    finally:
        for w in (a, b):
            if w.proc is not None and w.proc.poll() is None:
                w.kill()
