"""State topics (asr.state, recs.state, monitor.state): one record format for every processor's checkpoints.

A record is ``4-byte big-endian header length | JSON header | inline data``; its Kafka key is ``<app
id>/<checkpoint key>`` (`state_key`). The header carries the app id, the checkpoint's key, the input offsets
its state includes (last applied offset per topic/partition), small metadata, and where the data lives:
``inline`` (after the header: state that fits one Kafka message, e.g. an ASR stream's buffered audio) or
``file`` (a local file, for state far over the message limit such as the recommender; the record then holds
its path, size and sha256). Marker records (key starts with ``MARKER_PREFIX``) let a reader stop at
"everything written before now" without end offsets, which the embedded broker reports wrongly.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

STATE_RECORD_VERSION = 1
MARKER_PREFIX = b"\x00marker/"

TP = tuple[str, int]  # (topic, partition)


class StateError(ValueError):
    """A state record or file that cannot be read; the message says which and why."""


@dataclass(frozen=True)
class Checkpoint:
    """Opaque processor state with the input offsets it includes (last applied offset per partition).

    ``key`` names one independent piece of state (an ASR stream, the recommender); stores keep the latest per
    key. ``offsets`` lets the runtime replay exactly the inputs a restored state has not seen."""

    key: str
    data: bytes
    offsets: Mapping[TP, int] = field(default_factory=dict)
    meta: Mapping[str, Any] = field(default_factory=dict)  # small facts shown on the state topic (version, ...)


def json_checkpoint(key: str, state: Mapping[str, Any], offsets: Mapping[TP, int]) -> Checkpoint:
    """A checkpoint of JSON-able state, zlib-compressed (counters and detector state compress ~5x), for the
    processors whose whole state is one inline record (monitor, retrainer)."""
    return Checkpoint(key, zlib.compress(json.dumps(state, separators=(",", ":")).encode()), dict(offsets))


def json_state(cp: Checkpoint) -> dict[str, Any]:
    return json.loads(zlib.decompress(cp.data))


@dataclass(frozen=True)
class StateRecord:
    """A decoded state record: the checkpoint's header, with its data inline or a pointer to a file."""

    key: str
    offsets: dict[TP, int]
    meta: dict[str, Any]
    location: str  # "inline" | "file"
    app: str | None = None  # None: a record written before state keys were scoped by app
    data: bytes = b""
    path: str | None = None
    size: int = 0
    sha256: str | None = None


def encode_state_record(cp: Checkpoint, *, app: str, path: str | None = None, sha256: str | None = None,
                        size: int | None = None) -> bytes:
    """Inline record for ``cp``; with ``path``, a pointer record to a file holding ``cp.data``."""
    header = {
        "v": STATE_RECORD_VERSION,
        "app": app,
        "key": cp.key,
        "offsets": [[t, p, o] for (t, p), o in sorted(cp.offsets.items())],
        "meta": dict(cp.meta),
        "location": "inline" if path is None else "file",
        "size": len(cp.data) if size is None else size,
    }
    if path is not None:
        header.update(path=path, sha256=sha256)
    head = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack(">I", len(head)) + head + (cp.data if path is None else b"")


def decode_state_record(raw: bytes) -> StateRecord:
    try:
        (n,) = struct.unpack(">I", raw[:4])
        header = json.loads(raw[4 : 4 + n])
        if header.get("v") != STATE_RECORD_VERSION:
            raise StateError(f"state record version {header.get('v')!r}, this build reads {STATE_RECORD_VERSION}")
        return StateRecord(
            key=header["key"],
            offsets={(t, int(p)): int(o) for t, p, o in header["offsets"]},
            meta=header.get("meta", {}),
            location=header["location"],
            app=header.get("app"),
            data=raw[4 + n :],
            path=header.get("path"),
            size=int(header.get("size", 0)),
            sha256=header.get("sha256"),
        )
    except (struct.error, ValueError, KeyError, TypeError, RecursionError) as exc:
        if isinstance(exc, StateError):
            raise
        raise StateError(f"unreadable state record: {type(exc).__name__}: {exc}") from exc


def marker_key(app_id: str) -> bytes:
    return MARKER_PREFIX + app_id.encode()


def state_key(app_id: str, key: str) -> bytes:
    """The Kafka key of a checkpoint: ``<app id>/<checkpoint key>``. Scoped by app, because two deployments
    (app ids) share a cluster's state topic: with bare keys, compaction would keep only one app's state for a
    stream id both see, and each app would restore the other's streams."""
    return f"{app_id}/{key}".encode()
