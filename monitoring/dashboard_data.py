"""What the drift dashboard shows, computed from what the pipeline publishes (pure: no Kafka, no web).

Inputs: ``drift.stats`` snapshots (each signal's score against its thresholds), ``drift.events`` (episodes),
the retraining loop's ``retrain.decisions`` and ``model.updates`` (its timeline) and the workers' ``/metrics``
expositions, scraped periodically. Throughput and the dead-letter rate are counter differences between two
scrapes; latency percentiles come from the difference of the end-to-end latency histogram's buckets,
interpolated as Prometheus's ``histogram_quantile`` does.

>>> histogram_quantile(0.5, [(0.1, 10.0), (1.0, 30.0), (float("inf"), 30.0)])
0.325
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

Labels = tuple[tuple[str, str], ...]

POINTS = 720  # per series: an hour at the monitor's default 5 s snapshots


def histogram_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """``buckets``: (upper bound, cumulative count), ascending, the last +Inf; None when empty."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    prev_le, prev_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if math.isinf(le):
                return prev_le
            return prev_le + (le - prev_le) * (rank - prev_count) / max(count - prev_count, 1e-12)
        prev_le, prev_count = le, count
    return prev_le


def parse_exposition(text: str) -> dict[tuple[str, Labels], float]:
    """Every sample of a Prometheus text exposition: (name, sorted labels) → value."""
    return {(s.name, tuple(sorted(s.labels.items()))): float(s.value)
            for family in text_string_to_metric_families(text) for s in family.samples}


@dataclass
class Scrape:
    at_s: float
    samples: dict[tuple[str, Labels], float]


def _by(samples: Mapping[tuple[str, Labels], float], name: str, label: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for (n, labels), value in samples.items():
        if n == name:
            key = dict(labels).get(label, "")
            out[key] = out.get(key, 0.0) + value
    return out


def worker_rates(before: Scrape, after: Scrape) -> dict[str, dict[str, float | None]]:
    """Per processor: consumed/s, produced/s, dead letters/s and p50/p99 end-to-end latency (s) between two
    scrapes of one worker (a counter that went down means the worker restarted: its new value is the delta)."""
    dt = max(after.at_s - before.at_s, 1e-9)

    def delta(name: str) -> dict[str, float]:
        a, b = _by(after.samples, name, "processor"), _by(before.samples, name, "processor")
        return {k: (v - b.get(k, 0.0)) if v >= b.get(k, 0.0) else v for k, v in a.items()}

    consumed = delta("streamsense_events_consumed_total")
    produced = delta("streamsense_events_produced_total")
    dead = delta("streamsense_dead_letters_total")
    out: dict[str, dict[str, float | None]] = {}
    for processor in sorted(set(consumed) | set(produced)):
        buckets: dict[float, float] = {}
        for (n, labels), value in after.samples.items():
            d = dict(labels)
            if n == "streamsense_end_to_end_latency_seconds_bucket" and d.get("processor") == processor:
                le = float(d["le"])
                old = before.samples.get((n, labels), 0.0)
                buckets[le] = value - old if value >= old else value
        ordered = sorted(buckets.items())
        out[processor] = {
            "consumed_per_s": consumed.get(processor, 0.0) / dt,
            "produced_per_s": produced.get(processor, 0.0) / dt,
            "dead_letters_per_s": dead.get(processor, 0.0) / dt,
            "latency_p50_s": histogram_quantile(0.5, ordered),
            "latency_p99_s": histogram_quantile(0.99, ordered),
        }
    return out


@dataclass
class DashboardData:
    """Everything the page draws; ``as_json`` is what its /api/state answers."""

    points: int = POINTS
    signals: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    episodes: list[dict[str, Any]] = field(default_factory=list)
    versions: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # model -> [{version, from_ts}]
    retraining: list[dict[str, Any]] = field(default_factory=list)  # decisions and announcements, by time
    throughput: dict[str, deque[dict[str, Any]]] = field(default_factory=dict)  # processor -> points
    _last_scrape: dict[str, Scrape] = field(default_factory=dict)

    def add_stats(self, snap: Mapping[str, Any]) -> None:
        key = (str(snap["model"]), str(snap["signal"]))
        sig = self.signals.setdefault(key, {"model": key[0], "signal": key[1], "series": deque(maxlen=self.points)})
        sig.update({k: snap.get(k) for k in ("model_version", "kind", "level", "episode", "reference",
                                            "events_since_reference", "window", "warning", "drift")})
        sig["series"].append([int(snap["ts"]), float(snap["score"]), float(snap["warning"]), float(snap["drift"])])
        self._version(key[0], str(snap.get("model_version")), int(snap["ts"]))

    def _version(self, model: str, version: str, ts: int) -> None:
        history = self.versions.setdefault(model, [])
        if not history or history[-1]["version"] != version:
            history.append({"version": version, "from_ts": ts})

    def add_drift_event(self, event: Mapping[str, Any]) -> None:
        if any(e["id"] == event["id"] for e in self.episodes):
            return  # a replayed episode change (deterministic ids)
        self.episodes.append({k: event.get(k) for k in ("id", "ts", "model", "model_version", "signal", "level",
                                                        "statistic", "value", "threshold", "episode")})
        self.episodes.sort(key=lambda e: e["ts"] or 0)
        del self.episodes[: -self.points]

    def add_retraining(self, topic: str, event: Mapping[str, Any]) -> None:
        """A ``retrain.decisions`` event, or a ``model.updates`` announcement (manual ones appear only there),
        with the gate's numbers where there are some."""
        if any(e["id"] == event["id"] and e["topic"] == topic for e in self.retraining):
            return
        metrics = event.get("metrics") or {}
        champion, challenger = metrics.get("champion") or {}, metrics.get("challenger") or {}
        numbers = {k: [champion.get(k), challenger.get(k)] for k in ("recent_accuracy", "original_accuracy",
                                                                     "live_accuracy") if k in challenger}
        what = event.get("decision") or f"announced {event.get('action')}"
        self.retraining.append({"id": event["id"], "topic": topic, "ts": event.get("ts"), "model": event.get("model"),
                                "what": what, "version": event.get("version"), "detail": event.get("detail")
                                or event.get("reason") or "", "numbers": numbers})
        self.retraining.sort(key=lambda e: e["ts"] or 0)
        del self.retraining[: -self.points]

    def add_scrape(self, worker: str, text: str, at_s: float) -> None:
        scrape = Scrape(at_s, parse_exposition(text))
        before = self._last_scrape.get(worker)
        self._last_scrape[worker] = scrape
        if before is None:
            return
        for processor, rates in worker_rates(before, scrape).items():
            series = self.throughput.setdefault(f"{worker} {processor}", deque(maxlen=self.points))
            series.append({"ts": int(at_s * 1000), **rates})

    def as_json(self) -> dict[str, Any]:
        return {
            "signals": [{**s, "series": list(s["series"])} for _, s in sorted(self.signals.items())],
            "episodes": self.episodes,
            "versions": self.versions,
            "retraining": self.retraining,
            "throughput": {name: list(points) for name, points in sorted(self.throughput.items())},
        }
