"""Online recommendations: ``clicks`` + ``items`` → OnlineRecommender; ``recs.requests`` → ``recs.responses``.

A thin adapter like processors/text.py: decoding, dead letters, checkpoints and serving live here, the model
(models/recs) knows nothing about Kafka. Each batch applies its catalog rows first, then its clicks in one
``model.update`` (duplicates by event id are dropped by the model, unknown users/items are created), then
answers the batch's requests, so a request sees every click consumed before it.

Checkpoints and recovery (no Faust tables). Faust commits a batch's offsets right after it is processed,
but the model lives in memory, so after a crash the committed offsets are *ahead* of what any saved state
contains. Therefore:

* every ``recs_checkpoint_s`` seconds or ``recs_checkpoint_events`` events (``tick``) the model's
  ``state_dict`` plus the last applied offset per clicks/items partition is written atomically to
  ``$STREAMSENSE_STATE_DIR/<app_id>/recs.ckpt`` (torch.save, zlib) — a local file because the state is
  ~20 MB at 10k items, far over Kafka's 1 MB message limit; a small record (path, version, offsets,
  bytes) goes to the compacted ``recs.state`` so operators and other tools can see what was saved;
* before the worker joins its group, :func:`restore` loads that file and replays ``clicks`` and ``items``
  from the checkpoint's offsets up to the group's *committed* offsets (fetched with the admin client —
  never end offsets, which the embedded broker reports wrong), so the in-memory model is exactly where the
  committed offsets say it is, then Faust continues from there. Replays are idempotent: the model drops
  click ids it already applied (its dedupe window is part of the checkpoint) and ``add_items`` upserts.

What is not recovered: requests answered between the checkpoint and the crash are not answered again (their
responses were delivered before the offsets were committed); malformed records in the replayed range are
skipped silently (their dead letters were written the first time). Without a checkpoint file (first start,
or a lost disk) the replay starts at the beginning of the topics, so the state is rebuilt from whatever the
retention kept. One worker per app id is assumed: with several, each would hold the users of its partitions
only and serve the others from popularity.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from models.recs import ClickEvent, OnlineRecommender
from streams.contracts import topics
from streams.contracts.deadletter import dead_letter
from streams.contracts.records import OutRecord, RawRecord
from streams.contracts.schemas import SchemaError, decode_json_object, encode, now_ms, schema_id

log = logging.getLogger(__name__)

MAX_ID_CHARS = 200
MAX_K = 1000
CHECKPOINT_VERSION = 1
REPLAYED_TOPICS = (topics.CLICKS, topics.ITEMS)

TP = tuple[str, int]


class BadInput(ValueError):
    """A record that cannot be used; the message is the dead-letter reason."""


# --- decoding -------------------------------------------------------------------------------------------

def _json(record: RawRecord) -> dict[str, Any]:
    try:
        return decode_json_object(record.value)
    except SchemaError as exc:  # its message is already the readable reason
        raise BadInput(str(exc)) from exc


def _id(obj: Mapping[str, Any], field: str) -> str:
    value = obj.get(field)
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise BadInput(f"field {field!r} must be a string or integer id, got {type(value).__name__}")
    text = str(value).strip()
    if not text or len(text) > MAX_ID_CHARS:
        raise BadInput(f"field {field!r} must be 1..{MAX_ID_CHARS} characters")
    return text


def parse_click(record: RawRecord) -> ClickEvent:
    obj = _json(record)
    for f in ("id", "user_id", "item_id"):
        _id(obj, f)
    try:
        ev = ClickEvent.from_dict(obj)
    except (ValueError, TypeError) as exc:
        raise BadInput(f"bad click event: {exc}") from exc
    if ev.event == "rating" and ev.value is not None and not (0.0 <= ev.value <= 10.0):
        raise BadInput(f"rating value {ev.value} out of range 0..10")
    return ev


def parse_item(record: RawRecord) -> dict[str, Any]:
    obj = _json(record)
    row: dict[str, Any] = {"item_id": _id(obj, "item_id")}
    for f in ("title", "genres", "text"):
        v = obj.get(f)
        if v is None:
            continue
        if isinstance(v, list) and all(isinstance(g, str) for g in v):
            v = "|".join(v)
        if not isinstance(v, str):
            raise BadInput(f"field {f!r} must be a string, got {type(v).__name__}")
        row[f] = v
    return row


def parse_request(record: RawRecord) -> tuple[str, str, int]:
    obj = _json(record)
    k = obj.get("k", 10)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise BadInput(f"field 'k' must be an integer in 1..{MAX_K}")
    return _id(obj, "id"), _id(obj, "user_id"), k


# --- checkpoints ----------------------------------------------------------------------------------------

def checkpoint_path(state_dir: str, app_id: str) -> Path:
    return Path(os.path.expanduser(state_dir)) / app_id / "recs.ckpt"


def save_checkpoint(path: Path, model: OnlineRecommender, offsets: Mapping[TP, int]) -> int:
    """Atomic (write + rename) so a crash mid-write leaves the previous checkpoint intact; returns bytes."""
    buf = io.BytesIO()
    torch.save({"v": CHECKPOINT_VERSION, "state": model.state_dict(),
                "offsets": [[t, p, o] for (t, p), o in sorted(offsets.items())]}, buf)
    data = zlib.compress(buf.getvalue(), 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return len(data)


def load_checkpoint(path: Path, model: OnlineRecommender) -> dict[TP, int] | None:
    """Load into ``model``; returns the offsets, or None when there is no usable checkpoint."""
    if not path.exists():
        return None
    try:
        blob = torch.load(io.BytesIO(zlib.decompress(path.read_bytes())), weights_only=False)
        if blob.get("v") != CHECKPOINT_VERSION:
            raise ValueError(f"checkpoint version {blob.get('v')!r}")
        model.load_state_dict(blob["state"])
    except Exception as exc:
        log.warning("ignoring unreadable recs checkpoint %s: %s", path, exc)
        return None
    return {(t, int(p)): int(o) for t, p, o in blob["offsets"]}


# --- the processor --------------------------------------------------------------------------------------

class RecsProcessor:
    name = "recs"
    source_topics = (topics.CLICKS, topics.ITEMS, topics.RECS_REQUESTS)
    checkpoint_topics = (topics.RECS_STATE,)
    unsharded_topics = REPLAYED_TOPICS  # one model learns from all users' clicks; see worker warnings
    pipeline_depth = 2  # read the next batch while the model trains (streams/runtime/agent.py)
    tick_s = 1.0

    def __init__(
        self,
        model: OnlineRecommender,
        *,
        app_id: str = "streamsense",
        state_path: Path | None = None,
        offsets: Mapping[TP, int] | None = None,
        batch_size: int = 512,
        batch_ms: int = 50,
        checkpoint_s: float = 30.0,
        checkpoint_events: int = 50_000,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self.model = model
        self.app_id = app_id
        self.state_path = state_path
        self.offsets: dict[TP, int] = dict(offsets or {})
        self.batch_size = batch_size
        self.batch_ms = batch_ms
        self.checkpoint_s = checkpoint_s
        self.checkpoint_events = checkpoint_events
        self.clock = clock
        # process() runs on the agent's model thread, web requests on the event loop's default executor
        self.lock = threading.Lock()
        self._applied_at_checkpoint = model.n_applied
        self._items_since_checkpoint = 0
        self._last_checkpoint_ms = clock()

    # -- stream
    def process(self, records: Sequence[RawRecord]) -> list[OutRecord]:
        outputs: list[OutRecord] = []
        requests: list[tuple[RawRecord, str, str, int]] = []
        with self.lock:
            self.apply(records, outputs.append, requests.append)
            outputs += [self._response(r, rid, user, k) for r, rid, user, k in requests]
        if self._checkpoint_due(events_only=True):
            outputs += self.tick(self.clock())
        return outputs

    def apply(
        self,
        records: Iterable[RawRecord],
        on_bad: Callable[[OutRecord], Any] | None = None,
        on_request: Callable[[tuple[RawRecord, str, str, int]], Any] | None = None,
    ) -> None:
        """Apply catalog rows and clicks (call with the lock held); also used by the startup replay."""
        items: list[dict[str, Any]] = []
        clicks: list[ClickEvent] = []
        for r in records:
            try:
                if r.topic == topics.CLICKS:
                    clicks.append(parse_click(r))
                elif r.topic == topics.ITEMS:
                    items.append(parse_item(r))
                elif r.topic == topics.RECS_REQUESTS:
                    if on_request is not None:
                        on_request((r, *parse_request(r)))
                    continue
                else:
                    raise BadInput(f"recs does not consume topic {r.topic!r}")
            except BadInput as exc:
                if on_bad is not None:
                    on_bad(dead_letter(r, processor=self.name, reason=str(exc)))
            if r.topic in REPLAYED_TOPICS:
                tp = (r.topic, r.partition)
                self.offsets[tp] = max(self.offsets.get(tp, -1), r.offset)
        if items:
            self.model.add_items(items)
            self._items_since_checkpoint += len(items)
        if clicks:
            self.model.update(clicks)

    def _response(self, record: RawRecord, request_id: str, user_id: str, k: int) -> OutRecord:
        value = {"id": request_id, "ts": self.clock(), "schema": schema_id(topics.RECS_RESPONSES),
                 **self._recommend_locked(user_id, k)}
        return OutRecord(topics.RECS_RESPONSES, request_id.encode(), encode(value), partition=record.partition,
                         source=record)

    # -- serving
    def _recommend_locked(self, user_id: str, k: int) -> dict[str, Any]:
        items = self.model.recommend(user_id, k)
        return {"user_id": user_id, "items": [{"item_id": i, "score": round(s, 6)} for i, s in items],
                "model": self.model.version}

    def recommend(self, user_id: str, k: int = 10) -> dict[str, Any]:
        """The HTTP view's answer; the lock makes it see a model between batches, never mid-update."""
        with self.lock:
            return self._recommend_locked(user_id, k)

    def register_web(self, app: Any) -> None:
        """``GET /recommend/{user_id}?k=10`` on the worker's web server (called by streams/runtime/worker.py)."""
        processor = self

        @app.page("/recommend/{user_id}")
        async def recommend_view(web: Any, request: Any, user_id: str) -> Any:
            try:
                k = int(request.query.get("k", 10))
                if not 1 <= k <= MAX_K:
                    raise ValueError
            except ValueError:
                return web.json({"error": f"k must be an integer in 1..{MAX_K}"}, status=400)
            loop = asyncio.get_running_loop()
            return web.json(await loop.run_in_executor(None, processor.recommend, user_id, k))

    # -- checkpoints
    def _checkpoint_due(self, events_only: bool = False) -> bool:
        changed = self.model.n_applied - self._applied_at_checkpoint + self._items_since_checkpoint
        if self.state_path is None or changed <= 0:
            return False
        if changed >= self.checkpoint_events:
            return True
        return not events_only and self.clock() - self._last_checkpoint_ms >= self.checkpoint_s * 1000

    def tick(self, now: int) -> list[OutRecord]:
        """Checkpoint when due; runs on the agent's model thread, so never concurrently with process()."""
        if not self._checkpoint_due():
            return []
        assert self.state_path is not None
        started = time.perf_counter()
        with self.lock:
            size = save_checkpoint(self.state_path, self.model, self.offsets)
            version, offsets = self.model.version, dict(self.offsets)
        self._applied_at_checkpoint = self.model.n_applied
        self._items_since_checkpoint = 0
        self._last_checkpoint_ms = now
        took_ms = int((time.perf_counter() - started) * 1000)
        log.info("recs checkpoint %s: %d bytes in %d ms", version, size, took_ms)
        meta = {"id": f"{self.app_id}:{version}", "ts": now, "schema": schema_id(topics.RECS_STATE),
                "app_id": self.app_id, "model": version, "path": str(self.state_path), "bytes": size,
                "save_ms": took_ms, "offsets": [[t, p, o] for (t, p), o in sorted(offsets.items())]}
        return [OutRecord(topics.RECS_STATE, self.app_id.encode(), json.dumps(meta).encode())]


# --- startup: checkpoint + replay up to the committed offsets -------------------------------------------

def committed_offsets(settings: Any, bootstrap: str, group_id: str) -> dict[TP, int]:
    """The group's committed offsets (next offset to read) for the replayed topics; {} if it has none."""
    from kafka import TopicPartition

    from streams.runtime.kafka_io import admin_client, describe_topics

    counts = describe_topics(settings, bootstrap)
    wanted = [TopicPartition(t, p) for t in REPLAYED_TOPICS for p in range(counts.get(t, 0))]
    with admin_client(settings, bootstrap) as admin:
        if hasattr(admin, "list_group_offsets"):  # kafka-python 3
            got = admin.list_group_offsets({group_id: wanted}).get(group_id, {})
        else:  # kafka-python 2.x
            got = admin.list_consumer_group_offsets(group_id, partitions=wanted)
    return {(tp.topic, tp.partition): int(meta.offset) for tp, meta in got.items()
            if tp.topic in REPLAYED_TOPICS and meta.offset is not None and meta.offset >= 0}


def replay(
    processor: RecsProcessor, settings: Any, bootstrap: str, until: Mapping[TP, int], timeout_s: float = 300.0
) -> int:
    """Apply records with checkpoint offset < offset < committed offset, partition by partition.

    Stops on the committed offset of each partition (a position the group has read, so it exists) rather
    than on an end offset; returns the number of records replayed."""
    from kafka import KafkaConsumer, TopicPartition

    from streams.runtime.kafka_io import client_kwargs

    todo = {tp: end for tp, end in until.items() if end - 1 > processor.offsets.get(tp, -1)}
    if not todo:
        return 0
    consumer = KafkaConsumer(**client_kwargs(settings, bootstrap), group_id=None, enable_auto_commit=False,
                             auto_offset_reset="earliest", max_poll_records=2000)
    replayed = 0
    try:
        assigned = {TopicPartition(t, p): (t, p) for t, p in todo}
        consumer.assign(list(assigned))
        for ktp, tp in assigned.items():
            start = processor.offsets.get(tp, -1) + 1
            if start > 0:
                consumer.seek(ktp, start)
            else:
                consumer.seek_to_beginning(ktp)
        deadline = time.monotonic() + timeout_s
        while todo:
            if time.monotonic() > deadline:
                raise TimeoutError(f"recs replay did not reach the committed offsets of {sorted(todo)}")
            batch: list[RawRecord] = []
            for ktp, messages in consumer.poll(timeout_ms=500).items():
                tp = assigned[ktp]
                end = todo.get(tp)
                for m in messages:
                    if end is None or m.offset >= end:
                        break
                    batch.append(RawRecord(m.topic, m.partition, m.offset, m.key, m.value, m.timestamp,
                                           tuple((k, v) for k, v in (m.headers or []))))
                    if m.offset >= end - 1:
                        todo.pop(tp, None)
                        consumer.pause(ktp)
                        break
            with processor.lock:
                processor.apply(batch)
            replayed += len(batch)
    finally:
        consumer.close()
    return replayed


def restore(processor: RecsProcessor, settings: Any, bootstrap: str,
            progress: Callable[[str], None] = print) -> None:
    """Load the checkpoint (if any) and replay up to the committed offsets; see the module docstring."""
    if processor.state_path is not None:
        offsets = load_checkpoint(processor.state_path, processor.model)
        if offsets is not None:
            processor.offsets = offsets
            progress(f"recs checkpoint loaded: {processor.model.version}, {processor.model.n_items} items, "
                     f"{processor.model.n_users} users from {processor.state_path}")
    try:
        until = committed_offsets(settings, bootstrap, settings.app_id)
    except Exception as exc:  # no group yet, or a broker without the offsets API
        progress(f"recs: no committed offsets ({type(exc).__name__}: {exc}); nothing to replay")
        until = {}
    started = time.perf_counter()
    n = replay(processor, settings, bootstrap, until)
    processor._applied_at_checkpoint = -1 if n else processor.model.n_applied  # checkpoint soon after a replay
    progress(f"recs replayed {n} records up to the committed offsets in {time.perf_counter() - started:.1f} s; "
             f"model {processor.model.version}")
