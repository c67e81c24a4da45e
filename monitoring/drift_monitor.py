"""The drift monitor's pure core: signals per (model, model version, signal name), one false-alarm budget.

Why one budget: a monitor with 20 signals of 5 detectors each, every detector tuned for one false alarm per
100k events, raises one every 1,000 events. Here the configured expected events between false alarms is
multiplied by the number of active detectors to give each detector's own (a Bonferroni split of the alarm
rate), re-split whenever a signal's reference completes, so adding signals never adds false alarms.

A model's new version starts new signals (a new reference): what is normal for one version says nothing
about the next. The older version's signals are retired when the new one first shows up.

>>> m = DriftMonitor(DriftConfig(reference_events=3))
>>> m.observe("sentiment", "v1", "label", ["pos", "neg", "pos", "pos"], [1, 2, 3, 4])
[]
>>> [(key.signal, sig.ready) for key, sig in m.signals.items()]
[('label', True)]
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from monitoring.embedding import EmbeddingReference
from monitoring.signals import DriftConfig, Signal, Transition

__all__ = ["Alarm", "DriftConfig", "DriftMonitor", "SignalKey"]


@dataclass(frozen=True, order=True)
class SignalKey:
    model: str
    version: str
    signal: str


@dataclass
class Alarm:
    key: SignalKey
    transition: Transition
    ts: int
    reference: dict[str, Any]
    events_since_reference: int

    @property
    def event_id(self) -> str:
        """Deterministic, so a replay after a restart rewrites the same event rather than a new one."""
        t = self.transition
        return f"{self.key.model}@{self.key.version}:{self.key.signal}:{t.episode}:{t.level}"


class DriftMonitor:
    def __init__(self, config: DriftConfig | None = None) -> None:
        self.config = config or DriftConfig()
        self.signals: dict[SignalKey, Signal] = {}
        self.embeddings: dict[SignalKey, EmbeddingReference] = {}  # centroids of embedding signals
        self.versions: dict[tuple[str, str], str] = {}  # (model, signal) -> version being monitored

    def observe(self, model: str, version: str, signal: str, values: Sequence[Any], ts: Sequence[int],
                kind: str | None = None) -> list[Alarm]:
        """Feed one signal's values (with their event timestamps, in order); returns the episode changes.
        ``kind``: "scalar", "categorical" or "embedding" (default: categorical for strings, embedding for
        vectors, else scalar)."""
        if not values:
            return []
        key = SignalKey(model, version, signal)
        previous = self.versions.get((model, signal))
        if previous is not None and previous != version:
            self.signals.pop(SignalKey(model, previous, signal), None)
            self.embeddings.pop(SignalKey(model, previous, signal), None)
        self.versions[(model, signal)] = version
        kind = kind or ("categorical" if isinstance(values[0], str) else
                        "embedding" if isinstance(values[0], list | tuple) else "scalar")
        if kind == "embedding":  # one scalar per vector: its distance from the reference's (embedding.py)
            embedding = self.embeddings.setdefault(key, EmbeddingReference(self.config.reference_events))
            distances, first = embedding.distances(np.asarray(values, dtype=np.float64))
            values, ts, kind = distances.tolist(), ts[first:], "scalar"
            if not values:
                return []
        sig = self.signals.get(key)
        if sig is None:
            sig = self.signals[key] = Signal(kind, self.config, seed=zlib.crc32(repr(key).encode()))
        transitions, built = sig.observe(values, ts)
        if built:
            self.split_budget()
        return [Alarm(key, t, int(ts[t.index]), sig.reference.as_dict(),
                      sig.since_reference.events - (len(values) - 1 - t.index)) for t in transitions]

    def embedding_dim(self, model: str, version: str, signal: str) -> int | None:
        """The length of the vectors an embedding signal was fed (None before its first): a vector of another
        length cannot be compared with its reference."""
        reference = self.embeddings.get(SignalKey(model, version, signal))
        return reference.dim if reference is not None else None

    def detectors(self) -> int:
        return sum(len(s.detectors) for s in self.signals.values() if s.ready)

    def split_budget(self) -> None:
        n = max(self.detectors(), 1)
        arl = self.config.expected_events_between_false_alarms * n
        for s in self.signals.values():
            if s.ready:
                s.set_budget(arl, arl * self.config.warning_fraction)

    def snapshot(self) -> list[dict[str, Any]]:
        """Every signal's state for the dashboard (``drift.stats``) and the metrics."""
        out = []
        for key, s in sorted(self.signals.items()):
            out.append({
                "model": key.model, "model_version": key.version, "signal": key.signal, "kind": s.kind,
                "ready": s.ready, "score": round(s.score(), 4), "warning": round(s.warning_score(), 4),
                "drift": 1.0, "level": ("none", "warning", "drift")[s.level], "episode": s.episode,
                "reference": s.reference.as_dict(), "events_since_reference": s.since_reference.events,
                "window": s.window_statistics(),
            })
        return out

    # --- checkpoints ----------------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {"signals": [[k.model, k.version, k.signal, s.state()] for k, s in self.signals.items()],
                "embeddings": [[k.model, k.version, k.signal, e.state()] for k, e in self.embeddings.items()]}

    def restore(self, state: dict[str, Any]) -> None:
        self.signals, self.embeddings, self.versions = {}, {}, {}
        for model, version, signal, s in state["signals"]:
            self.signals[SignalKey(model, version, signal)] = Signal.from_state(s, self.config)
            self.versions[(model, signal)] = version
        for model, version, signal, e in state.get("embeddings", []):
            self.embeddings[SignalKey(model, version, signal)] = EmbeddingReference.from_state(e)
            self.versions[(model, signal)] = version
        self.split_budget()
