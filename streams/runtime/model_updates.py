"""Every worker follows ``model.updates`` and hot-swaps what it serves, without restarting or losing a message.

The topic is read by every worker in full, without a consumer group (a group would hand each update to one
worker only). The log is folded to the latest update per model, so a worker that starts later, or reads an
old promotion and its rollback in one poll, swaps once, to the current version — and never to a version it
already serves (the worker loaded the registry's champion at start, so usually there is nothing to do).
Before loading, the pointer's sha256 is checked against the files (a half-copied or tampered version is
refused and the old model keeps serving). The swap itself goes through the runner (runner.py: ``swap``):
between batches, on the model thread, so each partition switches versions at one point.

Reading from the beginning instead of the end is deliberate: the end offset cannot be trusted on every
broker (the embedded one reports the last batch's base offset), and a compacted topic holds one record per
model anyway.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence, Set
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer, TopicPartition

from models.registry import verify_tree
from processors.base import HotSwappable
from streams.contracts import topics
from streams.contracts.schemas import SchemaError, parse_model_update
from streams.contracts.settings import Settings
from streams.runtime.kafka_io import client_kwargs
from streams.runtime.runner import ProcessorRunner

log = logging.getLogger(__name__)


def latest_per_model(values: Iterable[bytes | None]) -> dict[str, dict[str, Any]]:
    """The last valid update per model, in log order; invalid records are logged and skipped (the topic's
    producers are the retrainer and the CLI, both validating: a bad record here is an operator's mistake)."""
    latest: dict[str, dict[str, Any]] = {}
    for value in values:
        try:
            update = parse_model_update(value)
        except SchemaError as exc:
            log.error("model.updates: ignoring an invalid record: %s", exc)
            continue
        latest[update["model"]] = update
    return latest


def serves(serving: str, version: str) -> bool:
    return serving.rpartition("@")[2] == version


class ModelUpdateFollower:
    def __init__(self, settings: Settings, bootstrap: str, runners: Sequence[ProcessorRunner],
                 progress: Callable[[str], None], *, pinned: Set[str] = frozenset(), poll_ms: int = 1000) -> None:
        """``pinned``: models this worker was told to serve explicitly (a path or hub id, not "default"): they
        stay as configured whatever the registry promotes."""
        self.runners = [r for r in runners if isinstance(r.processor, HotSwappable)]
        self.pinned = pinned
        self.settings, self.bootstrap, self.progress, self.poll_ms = settings, bootstrap, progress, poll_ms

    async def run(self) -> None:
        """Runs for the worker's life; the blocking poll happens on a thread, the swaps on the runners."""
        if not self.runners:
            return
        loop = asyncio.get_running_loop()
        consumer = await loop.run_in_executor(None, self._consumer)
        try:
            while True:
                values = await loop.run_in_executor(None, self._poll, consumer)
                for update in latest_per_model(values).values():
                    await self.apply(update)
        finally:
            await loop.run_in_executor(None, consumer.close)

    async def apply(self, update: Mapping[str, Any]) -> None:
        model, version = update["model"], update["version"]
        if model in self.pinned:
            return
        for runner in self.runners:
            processor = runner.processor
            assert isinstance(processor, HotSwappable)
            serving = processor.model_versions().get(model)
            if serving is None or serves(serving, version):
                continue
            try:
                verify_tree(Path(update["registry_path"]), update["sha256"])
                now = await runner.swap(model, update["registry_path"])
            except Exception as exc:
                log.error("%s: cannot %s %s to %s (%s); still serving %s", processor.name, update["action"],
                          model, version, exc, serving)
                continue
            self.progress(f"{processor.name}: {update['action']} {model}: {serving} -> {now}")

    def _consumer(self) -> KafkaConsumer:
        consumer = KafkaConsumer(**client_kwargs(self.settings, self.bootstrap), group_id=None,
                                 enable_auto_commit=False, auto_offset_reset="earliest")
        partitions = consumer.partitions_for_topic(topics.MODEL_UPDATES) or {0}
        consumer.assign([TopicPartition(topics.MODEL_UPDATES, p) for p in sorted(partitions)])
        return consumer

    def _poll(self, consumer: KafkaConsumer) -> list[bytes | None]:
        batches = consumer.poll(timeout_ms=self.poll_ms)
        return [m.value for tp in sorted(batches, key=lambda t: t.partition) for m in batches[tp]]
