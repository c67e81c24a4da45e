"""The embedded broker's durable storage (Tansu on SeaweedFS, ``--data-dir``) against its memory storage.

Method: for each storage, in this process, memory first (the baseline): start an EmbeddedBroker on free loopback
ports (durable: on a fresh temporary data dir), create one 4-partition topic, produce ``--messages`` keyed
1 KB messages with the pipeline's tool producer (kafka-python, acks=all, linger 5 ms; ``make_producer``) and
time it until every acknowledgement is in; then read them all back from the beginning with one consumer
(``read_topic``) and time that. Durable only: start time of SeaweedFS (until its S3 bucket answers) and of the
whole broker, SeaweedFS's RSS after the run (from /proc), and a SIGKILL of both processes followed by a restart
on the same data dir (time until Tansu accepts connections; every message is read back).

The last line prints the durable/memory produce and consume rate ratios.

    .venv/bin/python bench/broker_storage.py [--messages 5000]
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streams.contracts.records import OutRecord
from streams.contracts.settings import Settings
from streams.contracts.topics import TopicSpec
from streams.runtime.embedded import EmbeddedBroker
from streams.runtime.kafka_io import ensure_topics, make_producer, read_topic, send_all

TOPIC = "bench.storage"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def produce_and_read(broker: EmbeddedBroker, n: int) -> tuple[float, float]:
    """(produced/s, read/s) of ``n`` 1 KB messages."""
    settings = Settings(bootstrap=broker.bootstrap, partitions=4)
    ensure_topics(settings, broker.bootstrap, [TopicSpec(TOPIC, "bench")])
    records = [OutRecord(TOPIC, f"k{i}".encode(), os.urandom(512).hex().encode()) for i in range(n)]
    producer = make_producer(settings, broker.bootstrap)
    try:
        started = time.perf_counter()
        send_all(producer, records, timeout_s=300)
        produce_s = time.perf_counter() - started
    finally:
        producer.close()
    started = time.perf_counter()
    got = sum(1 for _ in read_topic(settings, broker.bootstrap, TOPIC, timeout_s=300, max_records=n))
    read_s = time.perf_counter() - started
    assert got == n, f"read {got} of {n}"
    return n / produce_s, n / read_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=5000)
    n = parser.parse_args().messages
    tansu_bin = Settings.from_env().tansu_bin

    with EmbeddedBroker(tansu_bin=tansu_bin) as memory:
        mem_produce, mem_read = produce_and_read(memory, n)
    print(f"memory:  produce {mem_produce:,.0f} msg/s, read {mem_read:,.0f} msg/s ({n} x 1 KB, acks=all)")

    with tempfile.TemporaryDirectory(prefix="broker-storage-") as tmp:
        data_dir = Path(tmp)
        started = time.perf_counter()
        durable = EmbeddedBroker(data_dir=data_dir, log_path=data_dir / "tansu.log", tansu_bin=tansu_bin).start()
        start_s = time.perf_counter() - started
        try:
            dur_produce, dur_read = produce_and_read(durable, n)
            weed_rss = rss_mb(durable.pids["seaweedfs"])
            tansu_rss = rss_mb(durable.pids["tansu"])
            port = durable.port
            for pid in durable.pids.values():
                os.kill(pid, signal.SIGKILL)
        finally:
            durable.stop()
        started = time.perf_counter()
        with EmbeddedBroker(port, data_dir=data_dir, log_path=data_dir / "tansu.log", tansu_bin=tansu_bin) as again:
            restart_s = time.perf_counter() - started
            settings = Settings(bootstrap=again.bootstrap)
            kept = sum(1 for _ in read_topic(settings, again.bootstrap, TOPIC, timeout_s=300, max_records=n))
            stop_started = time.perf_counter()
        stop_s = time.perf_counter() - stop_started
    print(f"durable: produce {dur_produce:,.0f} msg/s, read {dur_read:,.0f} msg/s; start {start_s:.1f} s, "
          f"restart after kill -9 {restart_s:.1f} s ({kept}/{n} messages kept), clean stop {stop_s:.1f} s; "
          f"RSS after the run: SeaweedFS {weed_rss:.0f} MB, Tansu {tansu_rss:.0f} MB")
    print(f"durable/memory: produce {dur_produce / mem_produce:.2f}x, read {dur_read / mem_read:.2f}x")


if __name__ == "__main__":
    main()
