"""An on-disk model registry: immutable versions plus a movable "champion" alias, so a retrained model can be
promoted, checked and rolled back without touching the serving code or the files of any other version.

Layout under ``root`` (the caller passes it, typically ``$STREAMSENSE_MODEL_DIR/registry``)::

    <root>/<model>/<version>/   the model's files (e.g. a save_pretrained directory) plus meta.json
    <root>/<model>/aliases.json {"champion": v|null, "previous": v|null, "history": [{version, action, ts, ...}]}

Every write is a whole-file ``os.replace`` (and a version appears by renaming a finished hidden directory), so a
process that reads while another writes sees the old state or the new one, never half of either. Writers of one
model serialise on ``<root>/<model>/.lock`` so two promotions cannot lose one another's history entry.
Hidden entries (names starting with ".") are the registry's own scratch and are never versions or models.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

META_FILE = "meta.json"
ALIASES_FILE = "aliases.json"
ALIAS_NAMES = ("champion", "previous")
# Fields that identify a version or vouch for its files; update_meta may not rewrite them.
PROTECTED_META = frozenset({"model", "version", "created_at", "sha256"})
_BLOCK = 1 << 20
# No leading "." so a name can be neither "." / ".." nor collide with the registry's hidden scratch entries.
_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")


class RegistryError(Exception):
    """Anything a caller can act on (bad name, missing version, digest mismatch), with a one-line message."""


@dataclass(frozen=True)
class ModelVersion:
    model: str
    version: str
    path: Path
    meta: dict[str, Any] = field(hash=False)  # a dict cannot be hashed; identity is model, version and path


def tree_sha256(path: Path) -> str:
    """One digest for a whole model directory, so a pointer (path + digest) pins exact weights and tokenizer.

    meta.json is left out because it changes after registration (update_meta) without changing the model.
    """
    digest = hashlib.sha256()
    for rel in _tree_files(path):
        digest.update(rel.encode("utf-8") + b"\0")
        with open(path / rel, "rb") as fh:
            while block := fh.read(_BLOCK):
                digest.update(block)
    return digest.hexdigest()


def verify_tree(path: Path, sha256: str) -> None:
    """Lets a worker refuse a model whose files are not the ones the pointer it received was made for."""
    path = Path(path)
    if not path.is_dir():
        raise RegistryError(f"model directory {path} does not exist")
    found = tree_sha256(path)
    if found != sha256:
        raise RegistryError(f"{path}: sha256 mismatch: expected {sha256}, found {found}")


def _tree_files(path: Path) -> list[str]:
    """Sorted POSIX relative paths, so the digest is the same on every machine and filesystem order."""
    path = Path(path)
    files = []
    for dirpath, _dirnames, filenames in os.walk(path):
        for name in filenames:
            rel = (Path(dirpath) / name).relative_to(path).as_posix()
            if rel != META_FILE:
                files.append(rel)
    return sorted(files)


def _check_name(name: str, kind: str) -> str:
    """Names become path parts; refusing anything else keeps every path inside the registry root."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name == ALIASES_FILE:
        raise RegistryError(f"invalid {kind} name {name!r}: use [A-Za-z0-9._-]+, not starting with '.'")
    return name


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise RegistryError(f"{path} is not valid JSON: {exc}") from exc


def _write_json(path: Path, data: Any) -> None:
    """Temp file beside the target, then os.replace: readers in other processes see old or new, never half."""
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _champion_stack(history: list[dict[str, Any]]) -> list[str]:
    """Replays the alias history into the chain of champions, so repeated rollbacks keep walking back."""
    stack: list[str] = []
    for entry in history:
        version = entry.get("version")
        if entry.get("action") == "rollback" and stack:
            stack.pop()
        if version is not None and (not stack or stack[-1] != version):
            stack.append(version)
    return stack


class Registry:
    """Versions and aliases of every model under one root; holds no state, so instances are cheap and agree."""

    def __init__(self, root: Path, *, clock: Callable[[], datetime] = _utc_now) -> None:
        self.root = Path(root)
        self._clock = clock

    # ----- reading -------------------------------------------------------------------------------------------

    def models(self) -> list[str]:
        """Only models with at least one finished version, so an aborted first registration lists nothing."""
        if not self.root.is_dir():
            return []
        names = [p.name for p in self.root.iterdir() if p.is_dir() and _NAME.fullmatch(p.name)]
        return sorted(n for n in names if any(self._version_dirs(n)))

    def versions(self, model: str) -> list[ModelVersion]:
        """Oldest first by registration time (not by name: version names need not sort)."""
        found = [self._load(model, d) for d in self._version_dirs(_check_name(model, "model"))]
        return sorted(found, key=lambda v: (str(v.meta.get("created_at", "")), v.version))

    def get(self, model: str, version: str) -> ModelVersion:
        _check_name(model, "model")
        _check_name(version, "version")
        path = self.root / model / version
        if not (path / META_FILE).is_file():
            have = ", ".join(v.version for v in self.versions(model)) or "none"
            raise RegistryError(f"{model} has no version {version!r} (have: {have})")
        return self._load(model, path)

    def alias(self, model: str, name: str) -> str | None:
        if name not in ALIAS_NAMES:
            raise RegistryError(f"unknown alias {name!r} (have: {', '.join(ALIAS_NAMES)})")
        return self._aliases(_check_name(model, "model")).get(name)

    def champion(self, model: str) -> ModelVersion | None:
        version = self.alias(model, "champion")
        return None if version is None else self.get(model, version)

    def history(self, model: str) -> list[dict[str, Any]]:
        return list(self._aliases(_check_name(model, "model"))["history"])

    def verify(self, model: str, version: str) -> ModelVersion:
        """Catches weights changed or truncated on disk since registration, before anyone serves them."""
        mv = self.get(model, version)
        recorded = mv.meta.get("sha256")
        found = tree_sha256(mv.path)
        if found != recorded:
            raise RegistryError(f"{model}/{version}: sha256 mismatch: recorded {recorded}, found {found}")
        return mv

    # ----- writing -------------------------------------------------------------------------------------------

    def register(
        self,
        model: str,
        source: Path,
        *,
        version: str,
        parent: str | None,
        data_window: Mapping[str, Any],
        metrics: Mapping[str, Any],
        decision: Mapping[str, Any],
        move: bool = True,
    ) -> ModelVersion:
        """Stages the files and meta.json in a hidden directory and renames it into place, so a version is either
        complete or absent. move=True avoids copying ~90 MB of weights when source is on the same filesystem."""
        _check_name(model, "model")
        _check_name(version, "version")
        if parent is not None:
            _check_name(parent, "parent version")
        source = Path(source)
        if not source.is_dir():
            raise RegistryError(f"cannot register {model}/{version}: {source} is not a directory")
        extra = {"data_window": dict(data_window), "metrics": dict(metrics), "decision": dict(decision)}
        _check_serialisable(extra, f"{model}/{version}")
        model_dir = self.root / model
        model_dir.mkdir(parents=True, exist_ok=True)
        with self._locked(model):
            final = model_dir / version
            if final.exists():
                raise RegistryError(f"{model} already has version {version!r} ({final})")
            meta = {"model": model, "version": version, "parent": parent, **extra}
            self._stage_and_rename(source, final, meta, move=move)
        return self._load(model, final)

    def promote(self, model: str, version: str, *, reason: str) -> str | None:
        """Makes version the champion and remembers the old one for rollback; returns the old champion.

        Promoting the current champion changes nothing (no history entry, previous kept) and returns that
        version, so a retried promotion is harmless; callers can tell by ``promote(...) == version``.
        """
        self.get(model, version)
        with self._locked(model):
            aliases = self._aliases(model)
            old = aliases["champion"]
            if old == version:
                return old
            history = [*aliases["history"], self._entry(version, "promote", old, reason)]
            self._write_aliases(model, champion=version, previous=old, history=history)
        return old

    def rollback(self, model: str, *, reason: str) -> tuple[str, str]:
        """Puts the previous champion back; the new previous comes from replaying history, so a second rollback
        walks one step further back instead of flipping between the last two versions."""
        _check_name(model, "model")
        with self._locked(model):
            aliases = self._aliases(model)
            current, target = aliases["champion"], aliases["previous"]
            if target is None:
                raise RegistryError(f"{model} has no previous champion to roll back to (champion: {current})")
            self.get(model, target)
            history = [*aliases["history"], self._entry(target, "rollback", current, reason)]
            stack = _champion_stack(history)
            previous = stack[-2] if len(stack) >= 2 else None
            self._write_aliases(model, champion=target, previous=previous, history=history)
        return current, target

    def update_meta(self, model: str, version: str, **fields: Any) -> ModelVersion:
        """Records what was learnt after registration (e.g. a later decision) without touching the files, so the
        digest stays valid; identity and digest fields are refused."""
        protected = sorted(PROTECTED_META & fields.keys())
        if protected:
            raise RegistryError(f"{model}/{version}: update_meta may not change {', '.join(protected)}")
        _check_serialisable(fields, f"{model}/{version}")
        mv = self.get(model, version)
        with self._locked(model):
            meta = {**_read_json(mv.path / META_FILE), **fields}
            _write_json(mv.path / META_FILE, meta)
        return self._load(model, mv.path)

    # ----- internals -----------------------------------------------------------------------------------------

    def _version_dirs(self, model: str) -> Iterator[Path]:
        model_dir = self.root / model
        if not model_dir.is_dir():
            return
        for child in model_dir.iterdir():
            if not child.name.startswith(".") and (child / META_FILE).is_file():
                yield child

    def _load(self, model: str, path: Path) -> ModelVersion:
        return ModelVersion(model=model, version=path.name, path=path, meta=_read_json(path / META_FILE))

    def _aliases(self, model: str) -> dict[str, Any]:
        path = self.root / model / ALIASES_FILE
        data = _read_json(path) if path.is_file() else {}
        return {"champion": data.get("champion"), "previous": data.get("previous"), "history": data.get("history", [])}

    def _write_aliases(self, model: str, *, champion: str | None, previous: str | None, history: list) -> None:
        data = {"champion": champion, "previous": previous, "history": history}
        _write_json(self.root / model / ALIASES_FILE, data)

    def _entry(self, version: str, action: str, from_version: str | None, reason: str) -> dict[str, Any]:
        return {"version": version, "action": action, "from": from_version, "ts": self._now(), "reason": reason}

    def _now(self) -> str:
        return self._clock().astimezone(UTC).isoformat(timespec="microseconds")

    def _stage_and_rename(self, source: Path, final: Path, meta: dict[str, Any], *, move: bool) -> None:
        """A failed registration leaves no version behind and, when moving, gives the caller its files back."""
        holder = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".incoming-{final.name}-"))
        staged = holder / final.name
        try:
            if move:
                shutil.move(os.fspath(source), os.fspath(staged))
            else:
                shutil.copytree(source, staged, symlinks=True)
            meta = {**meta, "created_at": self._now(), "sha256": tree_sha256(staged)}
            _write_json(staged / META_FILE, meta)
            os.rename(staged, final)
        except BaseException:
            if move and staged.exists() and not source.exists():
                (staged / META_FILE).unlink(missing_ok=True)
                shutil.move(os.fspath(staged), os.fspath(source))
            raise
        finally:
            shutil.rmtree(holder, ignore_errors=True)

    @contextmanager
    def _locked(self, model: str) -> Iterator[None]:
        """Serialises writers of one model across processes; readers never need it (writes are replaces)."""
        with open(self.root / model / ".lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)


def _check_serialisable(data: Mapping[str, Any], where: str) -> None:
    """Fails before any file moves, instead of after the source has already been taken."""
    try:
        json.dumps(data)
    except (TypeError, ValueError) as exc:
        raise RegistryError(f"{where}: metadata is not JSON-serialisable: {exc}") from exc
