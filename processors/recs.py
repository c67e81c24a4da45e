"""Online recommendations: ``clicks`` + ``items`` → OnlineRecommender; ``recs.requests`` → ``recs.responses``.

A thin adapter like processors/text.py: decoding, dead letters, checkpoints and serving live here, the model
(models/recs) knows nothing about Kafka. Each batch applies its catalog rows first, then its clicks in one
``model.update`` (duplicates by event id are dropped by the model, unknown users/items are created), then
answers the batch's requests, so a request sees every click consumed before it.

Checkpoints and recovery (no Faust tables). The runtime commits a batch's offsets right after its outputs
are delivered (by default the recs worker is fed by the batch path, streams/runtime/batch_source.py), but the
model lives in memory, so after a crash the committed offsets are *ahead* of what any saved state
contains. Therefore the processor is ``Checkpointed`` (processors/base.py) with a ``file`` state store:

* every ``checkpoint_s`` seconds or ``checkpoint_events`` events, `checkpoints` returns the model's
  ``state_dict`` (torch.save, zlib; ~20 MB at 10k items, far over Kafka's message limit) with the last applied
  offset per clicks/items partition; the runtime writes it to a file and a pointer record to ``recs.state``.
  It is read back with ``torch.load(weights_only=True)``: tensors, numbers, strings and containers only, never
  an arbitrary pickled object (whoever can write the state directory or topic must not be able to run code in
  the worker), so its numpy arrays are stored as tensors (version 2; a version-1 file is refused);
* on start the runtime restores the latest checkpoint and replays ``clicks`` and ``items`` from its offsets up
  to the group's *committed* offsets (`replay`), so the model is exactly where the committed offsets say it
  is. Replays are idempotent: the model drops click ids it already applied (its dedupe window is part of the
  checkpoint) and ``add_items`` upserts. Without a checkpoint the replay starts at the beginning of the topics.

What is not recovered: requests answered between the checkpoint and the crash are not answered again (their
responses were delivered before the offsets were committed); malformed records in the replayed range are
skipped silently (their dead letters were written the first time). One worker per app id is assumed: with
several, each would hold the users of its partitions only and serve the others from popularity.
"""

from __future__ import annotations

import io
import logging
import pickle
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from models.recs import ClickEvent, OnlineRecommender
from streams.contracts import topics
from streams.contracts.deadletter import dead_letter
from streams.contracts.records import OutRecord, RawRecord
from streams.contracts.recs_events import MAX_K, BadInput, parse_click, parse_item, parse_request
from streams.contracts.schemas import encode, now_ms, schema_id
from streams.contracts.state import TP, Checkpoint

log = logging.getLogger(__name__)

CHECKPOINT_VERSION = 2  # 2: numpy arrays as tensors, loaded with weights_only=True
REPLAYED_TOPICS = (topics.CLICKS, topics.ITEMS)


# --- the processor --------------------------------------------------------------------------------------

class RecsProcessor:
    """Capabilities (processors/base.py): Checkpointed (file store + replay), Served (/recommend),
    WholePartitions (one model learns from every user's clicks)."""

    name = "recs"
    source_topics = (topics.CLICKS, topics.ITEMS, topics.RECS_REQUESTS)
    state_topic = topics.RECS_STATE
    state_store = "file"
    replay_topics = REPLAYED_TOPICS
    whole_partition_topics = REPLAYED_TOPICS

    def __init__(
        self,
        model: OnlineRecommender,
        *,
        app_id: str = "streamsense",
        offsets: Mapping[TP, int] | None = None,
        batch_size: int = 512,
        batch_ms: int = 50,
        read_ahead: int = 2,
        checkpoint_s: float = 30.0,
        checkpoint_events: int = 50_000,
        max_k: int = MAX_K,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        """``max_k``: the most recommendations one request may ask for (``STREAMSENSE_RECS_MAX_K``); more is a
        dead letter (topic) or a 400 (web)."""
        self.model = model
        self.max_k = max_k
        self.app_id = app_id
        self.offsets: dict[TP, int] = dict(offsets or {})
        self.batch_size = batch_size
        self.batch_ms = batch_ms
        self.read_ahead = read_ahead  # read the next batch while the model trains (~15% more clicks/s)
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
                        on_request((r, *parse_request(r, self.max_k)))
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
        key = request_id.encode("utf-8", "surrogatepass")  # JSON may spell a lone surrogate ("\\udc80")
        return OutRecord(topics.RECS_RESPONSES, key, encode(value), partition=record.partition, source=record)

    # -- serving
    def _recommend_locked(self, user_id: str, k: int) -> dict[str, Any]:
        items = self.model.recommend(user_id, k)
        return {"user_id": user_id, "items": [{"item_id": i, "score": round(s, 6)} for i, s in items],
                "model": self.model.version}

    def recommend(self, user_id: str, k: int = 10) -> dict[str, Any]:
        """The HTTP view's answer; the lock makes it see a model between batches, never mid-update."""
        with self.lock:
            return self._recommend_locked(user_id, k)

    def routes(self) -> dict[str, Callable[[Mapping[str, str], Mapping[str, str]], tuple[int, Any]]]:
        """``GET /recommend/{user_id}?k=10`` and ``GET /recs/stats`` (the model's state sizes) on the worker's
        web server."""

        def recommend_view(params: Mapping[str, str], query: Mapping[str, str]) -> tuple[int, Any]:
            try:
                k = int(query.get("k", 10))
                if not 1 <= k <= self.max_k:
                    raise ValueError
            except ValueError:
                return 400, {"error": f"k must be an integer in 1..{self.max_k}"}
            return 200, self.recommend(params["user_id"], k)

        def stats_view(params: Mapping[str, str], query: Mapping[str, str]) -> tuple[int, Any]:
            with self.lock:
                return 200, {"model": self.model.version, **self.model.state_sizes()}

        return {"/recommend/{user_id}": recommend_view, "/recs/stats": stats_view}

    # -- state (the Checkpointed capability)
    def _checkpoint_due(self, now_ms: int) -> bool:
        changed = self.model.n_applied - self._applied_at_checkpoint + self._items_since_checkpoint
        if changed <= 0:
            return False
        return changed >= self.checkpoint_events or now_ms - self._last_checkpoint_ms >= self.checkpoint_s * 1000

    def checkpoints(self, now_ms: int) -> list[Checkpoint]:
        """The model and its applied offsets when a checkpoint is due; runs on the model thread."""
        if not self._checkpoint_due(now_ms):
            return []
        started = time.perf_counter()
        with self.lock:
            buf = io.BytesIO()
            torch.save({"v": CHECKPOINT_VERSION, "state": _arrays_as_tensors(self.model.state_dict())}, buf)
            version, offsets = self.model.version, dict(self.offsets)
        data = zlib.compress(buf.getvalue(), 1)
        self._applied_at_checkpoint = self.model.n_applied
        self._items_since_checkpoint = 0
        self._last_checkpoint_ms = now_ms
        took_ms = int((time.perf_counter() - started) * 1000)
        log.info("recs checkpoint %s: %d bytes in %d ms", version, len(data), took_ms)
        return [Checkpoint(self.app_id, data, offsets, {"model": version, "save_ms": took_ms})]

    def restore(self, checkpoints: Sequence[Checkpoint]) -> None:
        mine = [cp for cp in checkpoints if cp.key == self.app_id]
        if not mine:
            return
        cp = mine[-1]
        try:
            blob = torch.load(io.BytesIO(zlib.decompress(cp.data)), weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, zlib.error, EOFError) as exc:
            raise ValueError(f"recs checkpoint of {cp.key} is not a version-{CHECKPOINT_VERSION} checkpoint of "
                             f"tensors and plain values; refusing to unpickle anything else ({str(exc)[:200]}). "
                             "A version-1 file (written before numpy arrays were stored as tensors) cannot be "
                             "read safely: give the worker a new STREAMSENSE_APP_ID to rebuild the model from the "
                             "topics") from exc
        if not isinstance(blob, dict) or blob.get("v") != CHECKPOINT_VERSION:
            version = blob.get("v") if isinstance(blob, dict) else type(blob).__name__
            raise ValueError(f"recs checkpoint version {version!r}, this build reads {CHECKPOINT_VERSION}")
        with self.lock:
            self.model.load_state_dict(_tensors_as_arrays(blob["state"]))
            self.offsets = dict(cp.offsets)
        self._applied_at_checkpoint = self.model.n_applied
        log.info("recs checkpoint loaded: %s, %d items, %d users", self.model.version, self.model.n_items,
                 self.model.n_users)

    def replay(self, records: Sequence[RawRecord]) -> None:
        with self.lock:
            self.apply(records)
        self._applied_at_checkpoint = -1  # checkpoint soon after a replay, so the next restart replays less


_ARRAY = "__ndarray__"


def _arrays_as_tensors(state: Mapping[str, Any]) -> dict[str, Any]:
    """The state's numpy arrays (top-level values, or inside top-level tuples) as tagged tensors, which
    ``weights_only`` loading accepts; the id lists and dicts are walked by nothing (they are large)."""
    def tag(v: Any) -> Any:
        return {_ARRAY: torch.from_numpy(np.ascontiguousarray(v))} if isinstance(v, np.ndarray) else v

    return {k: tuple(tag(x) for x in v) if isinstance(v, tuple) else tag(v) for k, v in state.items()}


def _tensors_as_arrays(state: Mapping[str, Any]) -> dict[str, Any]:
    def untag(v: Any) -> Any:
        return v[_ARRAY].numpy() if isinstance(v, dict) and v.keys() == {_ARRAY} else v

    return {k: tuple(untag(x) for x in v) if isinstance(v, tuple) else untag(v) for k, v in state.items()}
