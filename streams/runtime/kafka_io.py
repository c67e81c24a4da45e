"""kafka-python helpers for everything that is not a stream processor: topic admin, producing, reading.

Deliberately avoids end offsets (ListOffsets latest): the embedded broker answers them wrongly, and
nothing here needs them. Readers start at the beginning and stop on a predicate, a count or a deadline.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import KafkaConnectionError, TopicAlreadyExistsError

from streams.contracts.records import OutRecord, RawRecord
from streams.contracts.settings import DEFAULT_BOOTSTRAP, Settings
from streams.contracts.topics import TOPICS, TopicSpec
from streams.runtime.embedded import EmbeddedBroker, port_open

BOOTSTRAP_TIMEOUT_MS = 8000  # kafka-python's default (30 s) leaves a user staring at a command that cannot connect


def client_kwargs(settings: Settings, bootstrap: str) -> dict[str, Any]:
    return {"bootstrap_servers": bootstrap, "client_id": f"{settings.app_id}-tool",
            "bootstrap_timeout_ms": BOOTSTRAP_TIMEOUT_MS, **settings.security.kafka_python_kwargs()}


@contextlib.contextmanager
def admin_client(settings: Settings, bootstrap: str) -> Iterator[KafkaAdminClient]:
    client = KafkaAdminClient(**client_kwargs(settings, bootstrap), request_timeout_ms=15000)
    try:
        yield client
    finally:
        client.close()


def broker_unreachable(exc: BaseException) -> bool:
    """Whether a kafka-python error means no broker answered at all (as opposed to a broker that said no)."""
    return isinstance(exc, KafkaConnectionError) or "bootstrap" in str(exc).lower()


def wait_for_broker(settings: Settings, bootstrap: str, progress: Callable[[str], None], *, wait_s: float,
                    probe: Callable[[], Any] | None = None, sleep: Callable[[float], None] = time.sleep,
                    clock: Callable[[], float] = time.monotonic) -> None:
    """Return once a broker answers a metadata request; retry with exponential backoff (1 s doubling, at most
    15 s between tries) for up to ``wait_s`` seconds, one progress line per retry, then raise the last error.

    Why: a worker often starts before its cluster does (a container orchestrator, a broker restarting); it should
    wait a bounded time and say so, not die with a traceback or hang. ``probe`` replaces the metadata request
    (tests)."""
    def ask() -> None:
        with admin_client(settings, bootstrap) as admin:
            admin.list_topics()

    deadline, delay, attempt = clock() + wait_s, 1.0, 1
    while True:
        try:
            (probe or ask)()
            if attempt > 1:
                progress(f"broker at {bootstrap} answers (attempt {attempt})")
            return
        except Exception as exc:
            left = deadline - clock()
            if not broker_unreachable(exc) or left <= 0:
                raise
            pause = min(delay, 15.0, left)
            progress(f"no Kafka broker answers at {bootstrap} yet (attempt {attempt}); retrying in {pause:.0f} s, "
                     f"giving up in {left:.0f} s")
            sleep(pause)
            delay, attempt = delay * 2, attempt + 1


def ensure_topics(
    settings: Settings, bootstrap: str, specs: Iterable[TopicSpec] = TOPICS
) -> list[str]:
    """Create the pipeline's topics that do not exist yet; return the names created. Idempotent."""
    specs = list(specs)
    with admin_client(settings, bootstrap) as admin:
        existing = set(admin.list_topics())
        missing = [s for s in specs if s.name not in existing]
        created: list[str] = []
        for spec in missing:
            new = NewTopic(
                spec.name,
                spec.partition_count(settings.partitions),
                settings.replication,
                topic_configs=dict(spec.config),
            )
            try:
                admin.create_topics([new])
                created.append(spec.name)
            except TopicAlreadyExistsError:  # another worker created it between list and create
                pass
        return created


def describe_topics(settings: Settings, bootstrap: str) -> dict[str, int]:
    """Topic name → partition count, for every topic on the cluster."""
    with admin_client(settings, bootstrap) as admin:
        # kafka-python 3 names the field "name", 2.x "topic"
        return {t.get("name") or t["topic"]: len(t["partitions"]) for t in admin.describe_topics()}


def make_producer(settings: Settings, bootstrap: str, **overrides: Any) -> KafkaProducer:
    """A durable producer: acks=all and retries, so a send that returns is on the broker."""
    kwargs: dict[str, Any] = {"acks": "all", "retries": 5, "linger_ms": 5, "max_in_flight_requests_per_connection": 1,
                              "max_request_size": settings.max_message_bytes}
    kwargs.update(overrides)
    return KafkaProducer(**client_kwargs(settings, bootstrap), **kwargs)


def send_all(producer: KafkaProducer, records: Iterable[OutRecord], timeout_s: float = 30.0) -> int:
    futures = [
        producer.send(r.topic, key=r.key, value=r.value, headers=list(r.headers) or None, partition=r.partition)
        for r in records
    ]
    producer.flush(timeout=timeout_s)
    for fut in futures:
        fut.get(timeout=timeout_s)  # raises the delivery error, if any
    return len(futures)


def read_topic(
    settings: Settings,
    bootstrap: str,
    topic: str | Sequence[str],
    *,
    timeout_s: float | None = 30.0,
    max_records: int | None = None,
    stop: Callable[[RawRecord], bool] | None = None,
    idle_timeout_s: float | None = None,
    abort: Callable[[], bool] | None = None,
) -> Iterator[RawRecord]:
    """Yield the records of one or more topics from the beginning, without a consumer group (nothing is committed).

    Stops after `max_records`, when `stop(record)` is true, after `idle_timeout_s` without a record,
    at `timeout_s` overall, or as soon as `abort()` is true (checked between polls, e.g. "the worker died")
    — whichever comes first. `timeout_s=None` follows forever (tail -f). Not a latency probe on the embedded
    broker: it holds a waiting fetch for kafka-python's whole 500 ms (records of a steady stream were read p50
    121 ms after they were acknowledged); Apache Kafka answers as soon as data arrives.
    """
    consumer = KafkaConsumer(
        **client_kwargs(settings, bootstrap),
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    try:
        consumer.subscribe([topic] if isinstance(topic, str) else list(topic))
        start = last = time.monotonic()
        count = 0
        while True:
            now = time.monotonic()
            if timeout_s is not None and now - start > timeout_s:
                return
            if idle_timeout_s is not None and now - last > idle_timeout_s:
                return
            if abort is not None and abort():
                return
            for _tp, messages in consumer.poll(timeout_ms=200).items():
                for m in messages:
                    record = RawRecord(
                        topic=m.topic, partition=m.partition, offset=m.offset, key=m.key, value=m.value,
                        timestamp_ms=m.timestamp, headers=tuple((k, v) for k, v in (m.headers or [])),
                    )
                    last = time.monotonic()
                    count += 1
                    yield record
                    if (max_records is not None and count >= max_records) or (stop and stop(record)):
                        return
    finally:
        consumer.close()


@contextlib.contextmanager
def kafka_bootstrap(settings: Settings, log: Callable[[str], None] = print) -> Iterator[str]:
    """The bootstrap address to use: the configured one; else a broker already on 127.0.0.1:9092
    (e.g. `streamsense broker` in another terminal); else an embedded broker started for this command."""
    if settings.bootstrap:
        yield settings.bootstrap
        return
    host, _, port = DEFAULT_BOOTSTRAP.rpartition(":")
    if port_open(host, int(port)):
        log(f"using the broker at {DEFAULT_BOOTSTRAP}")
        yield DEFAULT_BOOTSTRAP
        return
    with EmbeddedBroker(int(port), host, tansu_bin=settings.tansu_bin) as broker:
        log(f"started the embedded broker at {broker.bootstrap} (memory storage: its data is gone when this "
            "command exits; pass --bootstrap or KAFKA_BOOTSTRAP for a real cluster)")
        yield broker.bootstrap
