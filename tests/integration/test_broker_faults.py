"""Broker faults a worker must ride out without a person: a broker that is not up yet when the worker starts, a
broker killed and restarted under load; and the durable embedded broker those faults need (kill -9 loses nothing
it acknowledged, and it leaves no process behind)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from kafka import KafkaConsumer
from kafka.structs import OffsetAndMetadata

from streams.contracts import topics
from streams.contracts.records import OutRecord
from streams.contracts.settings import Settings
from streams.runtime.embedded import BrokerError, EmbeddedBroker, free_port
from streams.runtime.kafka_io import client_kwargs, ensure_topics, read_topic
from tests.integration.harness import REPO, WorkerProcess, collect, produce, text_records

pytestmark = pytest.mark.integration


def test_a_worker_started_before_its_broker_waits_with_backoff_then_works(tmp_path: Path) -> None:
    """The worker finds no broker, says so and retries (STREAMSENSE_BROKER_WAIT_S, backoff); the broker comes
    up 6 s later on that address; the worker joins, creates its topics and enriches what is sent."""
    bootstrap = f"127.0.0.1:{free_port()}"
    worker = WorkerProcess(bootstrap, tmp_path, env={"STREAMSENSE_BROKER_WAIT_S": "120"}).start()
    try:
        worker.wait_for_log(f"no Kafka broker answers at {bootstrap} yet (attempt 1)", timeout_s=60)
        time.sleep(6)
        host, _, port = bootstrap.rpartition(":")
        with EmbeddedBroker(int(port), host, log_path=tmp_path / "tansu.log",
                            tansu_bin=Settings.from_env().tansu_bin):
            worker.wait_ready(timeout_s=180)
            assert f"broker at {bootstrap} answers" in worker.log()
            prefix = f"late-{uuid.uuid4().hex[:6]}"
            produce(bootstrap, text_records([f"Text {i}: Alice met Bob in Paris" for i in range(20)], prefix))
            out = collect(bootstrap, topics.TEXT_ENRICHED, 20, match=prefix, worker=worker, timeout_s=120)
            assert {e["id"] for e in out} == {f"{prefix}-{i:04d}" for i in range(20)}
            assert worker.stop() == 0
    finally:
        if worker.proc is not None and worker.proc.poll() is None:
            worker.kill()


# --- the durable embedded broker (`streamsense broker --data-dir`) ------------------------------------------


def kill_9(broker: EmbeddedBroker) -> None:
    """SIGKILL Tansu and SeaweedFS at once (a power cut, an OOM kill), then reap them."""
    pids = broker.pids
    assert set(pids) == {"tansu", "seaweedfs"}, pids
    for pid in pids.values():
        os.kill(pid, signal.SIGKILL)
    broker.stop()  # nothing left to stop: reaps the two and closes their logs
    assert not any(alive(pid) for pid in pids.values())


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie waiting for its parent's wait() counts as dead)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def wait_dead(pids: list[int], timeout_s: float) -> list[int]:
    """The pids still alive after up to ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return [p for p in pids if alive(p)]


def durable_broker(data_dir: Path, port: int | None = None) -> EmbeddedBroker:
    return EmbeddedBroker(port, data_dir=data_dir, log_path=data_dir / "tansu.log",
                          tansu_bin=Settings.from_env().tansu_bin)


def group_consumer(bootstrap: str, group: str, topic: str) -> KafkaConsumer:
    """A consumer of ``topic`` in ``group`` with the pipeline's short session timeout (joins in seconds)."""
    return KafkaConsumer(topic, **client_kwargs(Settings(), bootstrap), group_id=group, enable_auto_commit=False,
                         auto_offset_reset="earliest", session_timeout_ms=6000, heartbeat_interval_ms=1000)


def test_a_durable_broker_keeps_messages_and_committed_offsets_through_kill_9(tmp_path: Path) -> None:
    """Produce keyed messages (acks=all), consume part of them in a group and commit, SIGKILL Tansu and
    SeaweedFS, restart on the same data dir and port: every message is there, and a consumer of the group
    resumes exactly after the committed offsets."""
    data_dir, n, consume_first = tmp_path / "data", 2000, 700
    broker = durable_broker(data_dir).start()
    try:
        bootstrap = broker.bootstrap
        ensure_topics(Settings(bootstrap=bootstrap), bootstrap)
        sent = {f"key-{i:05d}".encode(): f"value {i} {uuid.uuid4().hex}".encode() for i in range(n)}
        produce(bootstrap, [OutRecord(topics.TEXT_IN, k, v) for k, v in sent.items()])

        consumer, seen, committed = group_consumer(bootstrap, "durable-test", topics.TEXT_IN), 0, {}
        try:
            deadline = time.monotonic() + 60
            while seen < consume_first and time.monotonic() < deadline:
                for tp, records in consumer.poll(timeout_ms=500).items():
                    seen += len(records)
                    committed[tp] = records[-1].offset + 1
            assert seen >= consume_first, f"consumed only {seen} of {n} within 60 s"
            consumer.commit({tp: OffsetAndMetadata(off, "", -1) for tp, off in committed.items()})
        finally:
            consumer.close()
        kill_9(broker)

        broker = durable_broker(data_dir, broker.port).start()
        got = {r.key: r.value for r in read_topic(Settings(bootstrap=bootstrap), bootstrap, topics.TEXT_IN,
                                                  timeout_s=60, max_records=n)}
        assert got == sent

        consumer, resumed_at, rest = group_consumer(bootstrap, "durable-test", topics.TEXT_IN), {}, 0
        try:
            deadline = time.monotonic() + 60
            while rest < n - seen and time.monotonic() < deadline:
                for tp, records in consumer.poll(timeout_ms=500).items():
                    resumed_at.setdefault(tp, records[0].offset)
                    rest += len(records)
            assert {tp: consumer.committed(tp) for tp in committed} == committed
        finally:
            consumer.close()
        assert rest == n - seen
        assert {tp: off for tp, off in resumed_at.items() if tp in committed} == {
            tp: off for tp, off in committed.items() if tp in resumed_at}
    finally:
        broker.stop()


def start_cli_broker(data_dir: Path, log: Path) -> tuple[subprocess.Popen[bytes], list[int]]:
    """`streamsense broker --data-dir` as a child; returns it and its children's pids once it is running."""
    with open(log, "wb") as out:
        cli = subprocess.Popen([sys.executable, "-m", "streams.cli", "broker", "--data-dir", str(data_dir),
                                "--port", str(free_port()), "--no-topics"], stdout=out, stderr=out, cwd=REPO)
    deadline = time.monotonic() + 60
    while "broker running" not in log.read_text() and time.monotonic() < deadline:
        assert cli.poll() is None, log.read_text()
        time.sleep(0.1)
    assert "durable storage: SeaweedFS" in log.read_text(), log.read_text()
    children = [int(p) for p in Path(f"/proc/{cli.pid}/task/{cli.pid}/children").read_text().split()]
    names = sorted(Path(f"/proc/{p}/comm").read_text().strip()[:5] for p in children)
    assert names == ["tansu", "weed"], names
    return cli, children


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_the_cli_broker_leaves_no_process_behind(tmp_path: Path, how: str) -> None:
    """SIGTERM: the CLI stops Tansu, then SeaweedFS, and exits 0. SIGKILL (nothing runs in the CLI): the
    kernel stops both children, which asked for a signal when their parent dies."""
    cli, children = start_cli_broker(tmp_path / "data", tmp_path / "cli.log")
    try:
        cli.send_signal(signal.SIGTERM if how == "SIGTERM" else signal.SIGKILL)
        code = cli.wait(timeout=60)
        assert code == (0 if how == "SIGTERM" else -signal.SIGKILL), (tmp_path / "cli.log").read_text()
        assert wait_dead(children, 30) == []
    finally:
        for pid in [cli.pid, *children]:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_failed_tansu_start_stops_the_seaweedfs_it_started(tmp_path: Path) -> None:
    """A start that fails halfway (SeaweedFS up, then Tansu exits) leaves no process behind."""
    tansu = tmp_path / "tansu"
    tansu.write_text("#!/bin/sh\nexit 1\n")
    tansu.chmod(0o755)
    broker = EmbeddedBroker(data_dir=tmp_path / "data", tansu_bin=tansu)
    with pytest.raises(BrokerError, match=r"Tansu\) exited with code 1 during start-up"):
        broker.start()
    assert broker.store is not None and broker.store.pid is not None
    assert not alive(broker.store.pid) and not broker.running


def test_a_worker_rides_out_a_kill_9_restart_of_its_durable_broker(tmp_path: Path) -> None:
    """A text worker is mid-stream when its broker (Tansu and SeaweedFS) is SIGKILLed; the broker stays down
    for 10 s, then restarts on the same data dir and port (the only address the worker knows). The worker
    reconnects by itself and every input id comes out on text.enriched (duplicates allowed: at-least-once);
    every input and output the broker acknowledged before the kill is still readable after it."""
    data_dir, prefix, n = tmp_path / "data", f"restart-{uuid.uuid4().hex[:6]}", 4000
    broker, worker = durable_broker(data_dir).start(), None
    try:
        bootstrap = broker.bootstrap
        settings = Settings(bootstrap=bootstrap)
        ensure_topics(settings, bootstrap)
        worker = WorkerProcess(bootstrap, tmp_path).start()
        worker.wait_ready(timeout_s=180)
        before = text_records([f"Event {i}: Alice flew from Paris to Rome, a lovely trip" for i in range(n)],
                              f"{prefix}-a")
        produce(bootstrap, before)  # returns once every record is acknowledged (acks=all)
        collect(bootstrap, topics.TEXT_ENRICHED, 40, match=prefix, worker=worker)
        acked_outputs = {(r.partition, r.offset, r.key)
                         for r in read_topic(settings, bootstrap, topics.TEXT_ENRICHED, timeout_s=2)}
        done_before = {key for _p, _o, key in acked_outputs if key and key.startswith(prefix.encode())}
        kill_9(broker)
        assert len(done_before) < n, "the worker finished before the kill: raise n"  # it is mid-stream
        time.sleep(10)  # the broker is down; the worker keeps running against nothing
        assert worker.proc is not None and worker.proc.poll() is None, worker.log()[-3000:]
        started = time.monotonic()
        broker = durable_broker(data_dir, broker.port).start()
        restart_s = time.monotonic() - started
        collect(bootstrap, topics.TEXT_ENRICHED, len(done_before) + 1, match=prefix, worker=worker, timeout_s=120)
        resumed_s = time.monotonic() - started

        inputs = [r.key for r in read_topic(settings, bootstrap, topics.TEXT_IN, timeout_s=60, max_records=n)]
        assert sorted(inputs) == sorted(r.key for r in before)  # every acknowledged input survived
        after = text_records([f"Event {i}: Bob drove from Leeds to York" for i in range(100)], f"{prefix}-b")
        produce(bootstrap, after)
        want = {r.key.decode() for r in [*before, *after]}
        out = collect(bootstrap, topics.TEXT_ENRICHED, len(want), match=prefix, worker=worker, timeout_s=300)
        assert {e["id"] for e in out} == want
        enriched = [(r.partition, r.offset, r.key) for r in read_topic(settings, bootstrap, topics.TEXT_ENRICHED,
                                                                       timeout_s=60, idle_timeout_s=5)]
        assert acked_outputs <= set(enriched)  # every output acknowledged before the kill survived
        ids = [key for _p, _o, key in enriched if key and key.startswith(prefix.encode())]
        print(f"\nbroker restart under load: {len(done_before)}/{n} done at the kill; broker back in "
              f"{restart_s:.1f} s; first new output {resumed_s:.1f} s after the restart began; "
              f"{len(set(ids))} ids, {len(ids) - len(set(ids))} duplicates on {topics.TEXT_ENRICHED}")
        assert worker.stop() == 0
    finally:
        if worker is not None and worker.proc is not None and worker.proc.poll() is None:
            worker.kill()
        broker.stop()
