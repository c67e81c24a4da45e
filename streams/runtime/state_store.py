"""The one state store every checkpointed processor uses (ASR streams, the recommender, the drift monitor).

A processor hands the runtime `Checkpoint`s (opaque bytes + the input offsets they include); the store turns
them into records of the processor's compacted state topic (streams/contracts/state.py), delivered after the
outputs of the same batch. Two kinds, declared by the processor:

* ``topic``: the data travels inside the record (must fit the message limit: ASR bounds its streams' state);
* ``file``: the data is written atomically to ``<state_dir>/<app_id>/<processor>/<key>-<sha>.ckpt`` on the
  model thread, and the record is a pointer (path, size, sha256, offsets). For state far over Kafka's message
  limit (the recommender's ~20 MB). The file must be on storage that outlives the worker (a volume in
  production). The two newest files per key are kept: a crash between writing a file and delivering its record
  leaves the topic pointing at the previous file, which is still there.

`load` is the inverse: this app's latest record per key (the reader stops at a marker, never at end offsets)
back to Checkpoints; record keys are ``<app id>/<key>`` (streams/contracts/state.py: state_key), so
deployments sharing a cluster never restore, or compact away, each other's state. An unreadable record or a
missing/corrupt file is skipped with a warning that says what the processor loses; the runtime then replays
that state's inputs from the start of what retention kept.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Iterable
from pathlib import Path

from streams.contracts.records import OutRecord
from streams.contracts.state import (
    MARKER_PREFIX,
    Checkpoint,
    StateError,
    decode_state_record,
    encode_state_record,
    state_key,
)

log = logging.getLogger(__name__)

KINDS = ("topic", "file")


class StateStore:
    def __init__(self, *, topic: str, kind: str, processor: str, app_id: str, state_dir: str | Path) -> None:
        if kind not in KINDS:
            raise ValueError(f"state store kind must be one of {KINDS}, got {kind!r}")
        self.topic = topic
        self.kind = kind
        self.processor = processor
        self.app_id = app_id
        self.directory = Path(os.path.expanduser(str(state_dir))) / app_id / processor

    KEEP_FILES = 2

    def _prefix(self, key: str) -> str:
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", key)[:120]
        return f"{safe}-{hashlib.sha256(key.encode()).hexdigest()[:8]}-"  # distinct keys never share a file

    def _write(self, key: str, data: bytes, sha256: str) -> Path:
        path = self.directory / f"{self._prefix(key)}{sha256[:16]}.ckpt"
        _write_atomically(path, data)
        older = sorted((p for p in self.directory.glob(f"{self._prefix(key)}*.ckpt") if p != path),
                       key=lambda p: (p.stat().st_mtime_ns, p.name), reverse=True)
        for stale in older[self.KEEP_FILES - 1 :]:
            stale.unlink(missing_ok=True)
        return path

    def records(self, checkpoints: Iterable[Checkpoint]) -> list[OutRecord]:
        """State records for ``checkpoints`` (file kind: writes each file first, atomically)."""
        out = []
        for cp in checkpoints:
            if self.kind == "topic":
                value = encode_state_record(cp, app=self.app_id)
            else:
                sha256 = hashlib.sha256(cp.data).hexdigest()
                path = self._write(cp.key, cp.data, sha256)
                value = encode_state_record(cp, app=self.app_id, path=str(path), sha256=sha256)
            out.append(OutRecord(self.topic, state_key(self.app_id, cp.key), value))
        return out

    def load(self, records: Iterable[tuple[bytes | None, bytes | None]]) -> list[Checkpoint]:
        """This app's latest checkpoint per key from (key, value) pairs in topic order; markers and other
        apps' records are skipped."""
        mine = state_key(self.app_id, "")
        latest: dict[bytes, bytes | None] = {}
        for key, value in records:
            if key is None or key.startswith(MARKER_PREFIX) or not key.startswith(mine):
                continue
            latest[key] = value  # a tombstone (None) deletes the key's state
        out = []
        for key, value in latest.items():
            if value is None:
                continue
            try:
                out.append(self._checkpoint(value))
            except StateError as exc:
                log.warning("%s: ignoring state %r: %s; its inputs are replayed from the beginning",
                            self.processor, key[len(mine):].decode("utf-8", "replace"), exc)
        return out

    def _checkpoint(self, value: bytes) -> Checkpoint:
        record = decode_state_record(value)
        if record.location == "inline":
            data = record.data
        else:
            path = Path(record.path or "")
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise StateError(f"checkpoint file {path} is unreadable: {exc}") from exc
            if hashlib.sha256(data).hexdigest() != record.sha256:
                raise StateError(f"checkpoint file {path} does not match the sha256 of its record (corrupt)")
        return Checkpoint(record.key, data, record.offsets, record.meta)


def _write_atomically(path: Path, data: bytes) -> None:
    """Write beside and rename, so a crash mid-write leaves the previous file whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
