"""The on-disk model registry: registration, digests, aliases and their history, all on tmp_path."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from models import registry as registry_module
from models.registry import ModelVersion, Registry, RegistryError, tree_sha256, verify_tree

MODEL = "sentiment"


def make_model_dir(path: Path, weights: bytes = b"weights-v1") -> Path:
    """A small stand-in for a save_pretrained directory, nested file included."""
    path.mkdir(parents=True)
    (path / "config.json").write_text('{"hidden_size": 4}')
    (path / "model.safetensors").write_bytes(weights)
    (path / "tokenizer").mkdir()
    (path / "tokenizer" / "vocab.txt").write_text("[PAD]\n[UNK]\n")
    return path


def ticking_clock(start: datetime | None = None) -> Callable[[], datetime]:
    """Each call one second later, so ordering never depends on timer resolution."""
    times: Iterator[int] = iter(range(10_000))
    origin = start or datetime(2024, 1, 1, tzinfo=UTC)
    return lambda: origin + timedelta(seconds=next(times))


def register(reg: Registry, tmp_path: Path, version: str, *, parent: str | None = None, **kw: Any) -> ModelVersion:
    source = make_model_dir(tmp_path / "incoming" / version, weights=f"weights-{version}".encode())
    return reg.register(MODEL, source, version=version, parent=parent, data_window={"from": 0, "to": 10},
                        metrics={"f1": 0.8}, decision={"promote": True}, **kw)


@pytest.fixture
def reg(tmp_path: Path) -> Registry:
    return Registry(tmp_path / "registry", clock=ticking_clock())


# ----- tree_sha256 / verify_tree -------------------------------------------------------------------------------


def test_tree_sha256_matches_the_documented_format(tmp_path: Path) -> None:
    src = make_model_dir(tmp_path / "m")
    big = bytes(range(256)) * (10 * 1024 + 7)  # ~2.5 MiB: crosses the 1 MiB read blocks unevenly
    (src / "model.safetensors").write_bytes(big)
    expected = hashlib.sha256()
    for rel in ["config.json", "model.safetensors", "tokenizer/vocab.txt"]:
        expected.update(rel.encode() + b"\0" + (src / rel).read_bytes())
    assert tree_sha256(src) == expected.hexdigest()


def test_tree_sha256_is_stable_ignores_meta_and_sees_one_changed_byte(tmp_path: Path) -> None:
    a = make_model_dir(tmp_path / "a")
    b = make_model_dir(tmp_path / "b")
    digest = tree_sha256(a)
    assert digest == tree_sha256(b) == tree_sha256(a)  # same content elsewhere, and repeatable
    (a / "meta.json").write_text('{"anything": 1}')
    assert tree_sha256(a) == digest
    (b / "model.safetensors").write_bytes(b"weights-v2")  # one byte differs ("1" -> "2")
    assert tree_sha256(b) != digest
    (a / "tokenizer" / "vocab.txt").rename(a / "tokenizer" / "vocab2.txt")  # same bytes, other name
    assert tree_sha256(a) != digest


def test_verify_tree_accepts_the_right_digest_and_names_both_on_mismatch(tmp_path: Path) -> None:
    src = make_model_dir(tmp_path / "m")
    good = tree_sha256(src)
    verify_tree(src, good)
    with pytest.raises(RegistryError) as err:
        verify_tree(src, "0" * 64)
    assert good in str(err.value) and "0" * 64 in str(err.value)
    with pytest.raises(RegistryError, match="does not exist"):
        verify_tree(tmp_path / "missing", good)


# ----- register --------------------------------------------------------------------------------------------------


def test_register_moves_source_and_writes_meta(reg: Registry, tmp_path: Path) -> None:
    source = make_model_dir(tmp_path / "build")
    digest = tree_sha256(source)
    mv = reg.register(MODEL, source, version="v1", parent=None, data_window={"offsets": [0, 99]},
                      metrics={"f1": 0.81}, decision={"accepted": True})
    assert not source.exists()
    assert mv.path == reg.root / MODEL / "v1"
    assert (mv.path / "tokenizer" / "vocab.txt").read_text() == "[PAD]\n[UNK]\n"
    on_disk = json.loads((mv.path / "meta.json").read_text())
    assert on_disk == mv.meta
    assert on_disk == {"model": MODEL, "version": "v1", "parent": None,
                       "created_at": "2024-01-01T00:00:00.000000+00:00",
                       "data_window": {"offsets": [0, 99]}, "metrics": {"f1": 0.81}, "decision": {"accepted": True},
                       "sha256": digest}
    assert [p.name for p in (reg.root / MODEL).iterdir() if p.name.startswith(".incoming")] == []


def test_register_copy_keeps_source(reg: Registry, tmp_path: Path) -> None:
    source = make_model_dir(tmp_path / "build")
    mv = reg.register(MODEL, source, version="v1", parent=None, data_window={}, metrics={}, decision={}, move=False)
    assert (source / "model.safetensors").read_bytes() == b"weights-v1"
    assert not (source / "meta.json").exists()
    assert mv.meta["sha256"] == tree_sha256(source) == tree_sha256(mv.path)
    assert reg.get(MODEL, "v1") == mv


@pytest.mark.parametrize("bad", ["", ".", "..", "../x", "a/b", "a b", ".hidden", "v1\n", "aliases.json"])
def test_register_refuses_bad_names(reg: Registry, tmp_path: Path, bad: str) -> None:
    source = make_model_dir(tmp_path / "build")
    with pytest.raises(RegistryError, match="invalid version name"):
        reg.register(MODEL, source, version=bad, parent=None, data_window={}, metrics={}, decision={})
    with pytest.raises(RegistryError, match="invalid model name"):
        reg.register(bad, source, version="v1", parent=None, data_window={}, metrics={}, decision={})
    assert (source / "model.safetensors").is_file()
    assert reg.models() == []


def test_register_refuses_an_existing_version_and_leaves_the_source(reg: Registry, tmp_path: Path) -> None:
    register(reg, tmp_path, "v1")
    second = make_model_dir(tmp_path / "again", weights=b"other")
    with pytest.raises(RegistryError, match="already has version 'v1'"):
        reg.register(MODEL, second, version="v1", parent=None, data_window={}, metrics={}, decision={})
    assert (second / "model.safetensors").read_bytes() == b"other"
    assert (reg.root / MODEL / "v1" / "model.safetensors").read_bytes() == b"weights-v1"


def test_failed_register_leaves_no_version_and_gives_the_files_back(
    reg: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = make_model_dir(tmp_path / "build")

    def broken(path: Path) -> str:
        raise OSError("disk on fire")

    monkeypatch.setattr(registry_module, "tree_sha256", broken)
    with pytest.raises(OSError, match="disk on fire"):
        reg.register(MODEL, source, version="v1", parent=None, data_window={}, metrics={}, decision={})
    assert (source / "model.safetensors").read_bytes() == b"weights-v1"
    assert reg.versions(MODEL) == []
    assert [p.name for p in (reg.root / MODEL).iterdir()] == [".lock"]


def test_register_refuses_unserialisable_metadata_before_moving(reg: Registry, tmp_path: Path) -> None:
    source = make_model_dir(tmp_path / "build")
    with pytest.raises(RegistryError, match="not JSON-serialisable"):
        reg.register(MODEL, source, version="v1", parent=None, data_window={}, metrics={"f1": object()}, decision={})
    assert (source / "model.safetensors").is_file()


# ----- reading -----------------------------------------------------------------------------------------------------


def test_versions_are_ordered_by_registration_time_not_name(reg: Registry, tmp_path: Path) -> None:
    for version in ["zeta", "alpha", "mid"]:
        register(reg, tmp_path, version)
    assert [v.version for v in reg.versions(MODEL)] == ["zeta", "alpha", "mid"]
    assert reg.versions("unknown") == []
    assert reg.models() == [MODEL]


def test_get_missing_version_lists_what_exists(reg: Registry, tmp_path: Path) -> None:
    register(reg, tmp_path, "a")
    register(reg, tmp_path, "b")
    with pytest.raises(RegistryError) as err:
        reg.get(MODEL, "x")
    assert str(err.value) == "sentiment has no version 'x' (have: a, b)"
    with pytest.raises(RegistryError, match=r"\(have: none\)"):
        reg.get("other", "x")


def test_verify_reports_recorded_and_found_digests(reg: Registry, tmp_path: Path) -> None:
    mv = register(reg, tmp_path, "v1")
    assert reg.verify(MODEL, "v1") == mv
    (mv.path / "model.safetensors").write_bytes(b"weights-v2")
    found = tree_sha256(mv.path)
    with pytest.raises(RegistryError) as err:
        reg.verify(MODEL, "v1")
    assert str(err.value) == f"sentiment/v1: sha256 mismatch: recorded {mv.meta['sha256']}, found {found}"


def test_update_meta_adds_fields_and_keeps_the_digest(reg: Registry, tmp_path: Path) -> None:
    mv = register(reg, tmp_path, "v1")
    updated = reg.update_meta(MODEL, "v1", decision={"promote": False, "why": "drift"}, shadow_f1=0.7)
    assert updated.meta["sha256"] == mv.meta["sha256"]
    assert updated.meta["decision"] == {"promote": False, "why": "drift"} and updated.meta["shadow_f1"] == 0.7
    assert Registry(reg.root).get(MODEL, "v1").meta == updated.meta
    reg.verify(MODEL, "v1")
    with pytest.raises(RegistryError, match="may not change sha256"):
        reg.update_meta(MODEL, "v1", sha256="0" * 64)
    assert reg.get(MODEL, "v1").meta["sha256"] == mv.meta["sha256"]


# ----- aliases -----------------------------------------------------------------------------------------------------


def test_promote_and_rollback_sequence(reg: Registry, tmp_path: Path) -> None:
    for version in ["v1", "v2", "v3"]:
        register(reg, tmp_path, version)
    assert reg.champion(MODEL) is None
    assert reg.promote(MODEL, "v1", reason="first") is None
    assert reg.promote(MODEL, "v2", reason="better f1") == "v1"
    assert (reg.alias(MODEL, "champion"), reg.alias(MODEL, "previous")) == ("v2", "v1")

    assert reg.rollback(MODEL, reason="regression") == ("v2", "v1")
    assert reg.champion(MODEL) == reg.get(MODEL, "v1")
    assert reg.alias(MODEL, "previous") is None  # v1 was the first champion: nothing before it
    with pytest.raises(RegistryError, match="no previous champion"):
        reg.rollback(MODEL, reason="again")

    reg.promote(MODEL, "v2", reason="retry")
    reg.promote(MODEL, "v3", reason="newer")
    assert reg.rollback(MODEL, reason="bad v3") == ("v3", "v2")
    assert reg.alias(MODEL, "previous") == "v1"  # walks back along history, not a flip between v2 and v3
    assert reg.rollback(MODEL, reason="bad v2") == ("v2", "v1")
    assert [(h["action"], h["version"]) for h in reg.history(MODEL)] == [
        ("promote", "v1"), ("promote", "v2"), ("rollback", "v1"), ("promote", "v2"), ("promote", "v3"),
        ("rollback", "v2"), ("rollback", "v1"),
    ]


def test_promote_records_reason_time_and_the_replaced_champion(reg: Registry, tmp_path: Path) -> None:
    register(reg, tmp_path, "v1")
    register(reg, tmp_path, "v2")
    reg.promote(MODEL, "v1", reason="first")
    reg.promote(MODEL, "v2", reason="better f1")
    last = reg.history(MODEL)[-1]
    assert last == {"version": "v2", "action": "promote", "from": "v1", "ts": "2024-01-01T00:00:03.000000+00:00",
                    "reason": "better f1"}


def test_promoting_the_champion_again_is_a_no_op(reg: Registry, tmp_path: Path) -> None:
    register(reg, tmp_path, "v1")
    register(reg, tmp_path, "v2")
    reg.promote(MODEL, "v1", reason="first")
    reg.promote(MODEL, "v2", reason="second")
    before = (reg.root / MODEL / "aliases.json").read_bytes()
    assert reg.promote(MODEL, "v2", reason="retried") == "v2"
    assert (reg.root / MODEL / "aliases.json").read_bytes() == before


def test_promote_unknown_version_and_unknown_alias_are_refused(reg: Registry, tmp_path: Path) -> None:
    register(reg, tmp_path, "v1")
    with pytest.raises(RegistryError, match="sentiment has no version 'v9' \\(have: v1\\)"):
        reg.promote(MODEL, "v9", reason="typo")
    assert reg.history(MODEL) == []
    with pytest.raises(RegistryError, match="unknown alias"):
        reg.alias(MODEL, "staging")


def test_aliases_survive_a_new_registry_instance(reg: Registry, tmp_path: Path) -> None:
    register(reg, tmp_path, "v1")
    register(reg, tmp_path, "v2")
    reg.promote(MODEL, "v1", reason="first")
    reg.promote(MODEL, "v2", reason="second")
    fresh = Registry(reg.root)
    assert fresh.champion(MODEL) == reg.get(MODEL, "v2")
    assert fresh.alias(MODEL, "previous") == "v1"
    assert fresh.history(MODEL) == reg.history(MODEL) and len(fresh.history(MODEL)) == 2
    assert fresh.rollback(MODEL, reason="from another process") == ("v2", "v1")


def test_a_failed_alias_write_leaves_the_old_file_whole(
    reg: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    register(reg, tmp_path, "v1")
    register(reg, tmp_path, "v2")
    reg.promote(MODEL, "v1", reason="first")
    before = (reg.root / MODEL / "aliases.json").read_bytes()

    def crash(src: str, dst: str) -> None:
        raise OSError("killed mid-write")

    monkeypatch.setattr(registry_module.os, "replace", crash)
    with pytest.raises(OSError, match="killed mid-write"):
        reg.promote(MODEL, "v2", reason="second")
    monkeypatch.undo()
    assert (reg.root / MODEL / "aliases.json").read_bytes() == before
    assert reg.alias(MODEL, "champion") == "v1"
    assert [p.name for p in (reg.root / MODEL).iterdir() if p.name.endswith(".tmp")] == []


def test_hidden_directories_are_never_versions(reg: Registry, tmp_path: Path) -> None:
    register(reg, tmp_path, "v1")
    leftover = reg.root / MODEL / ".incoming-v2-abc"  # e.g. scratch left by a killed registration
    make_model_dir(leftover)
    (leftover / "meta.json").write_text('{"created_at": "2000-01-01T00:00:00+00:00"}')
    assert [v.version for v in reg.versions(MODEL)] == ["v1"]
