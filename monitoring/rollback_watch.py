"""Did the promotion help? Live accuracy per served version, and the rollback rule.

The gate judged the challenger on held-out labels before it served anything; this watches what it does once
it serves. Each label fed back for an output is scored against the version that produced that output (the
output names it), so the comparison is fair even while workers swap at different moments. After a promotion,
the new version is compared with its predecessor's accuracy over the labels just before the promotion; once
``min_labels`` labels scored the new version, it is either confirmed or — if it is worse by more than
``threshold`` — rolled back. A manual promotion is watched the same way, which is what catches an operator
promoting the wrong version.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Verdict:
    model: str
    version: str
    previous: str
    rollback: bool
    accuracy: float
    baseline: float
    labels: int
    detail: str


@dataclass
class _Watch:
    version: str
    previous: str
    baseline: float | None  # the predecessor's live accuracy before the promotion (None: it had no labels)
    correct: int = 0
    labels: int = 0


class RollbackWatch:
    def __init__(self, *, min_labels: int = 100, threshold: float = 0.1, baseline_window: int = 500) -> None:
        self.min_labels, self.threshold = min_labels, threshold
        # per (model, version): the outcomes of its most recent labeled outputs
        self.recent: dict[tuple[str, str], deque[bool]] = {}
        self.baseline_window = baseline_window
        self.watches: dict[str, _Watch] = {}

    def accuracy(self, model: str, version: str) -> float | None:
        outcomes = self.recent.get((model, version))
        return sum(outcomes) / len(outcomes) if outcomes else None

    def promoted(self, model: str, version: str, previous: str | None) -> None:
        """Start watching ``version``; the predecessor's recent accuracy is the bar it has to clear. The same
        announcement read again (a replay, the retrainer's own promotion coming back) keeps the watch going."""
        watching = self.watches.get(model)
        if watching is not None and watching.version == version:
            return
        if previous is None or version == previous:
            self.watches.pop(model, None)
            return
        self.watches[model] = _Watch(version, previous, self.accuracy(model, previous))

    def stop(self, model: str) -> None:
        """A rollback (or any move away from the watched version) ends its watch."""
        self.watches.pop(model, None)

    def scored(self, model: str, version: str, correct: bool) -> Verdict | None:
        """One label for an output of ``version``; a verdict once the watched version has enough labels."""
        key = (model, version)
        if key not in self.recent:
            self.recent[key] = deque(maxlen=self.baseline_window)
        self.recent[key].append(correct)
        watch = self.watches.get(model)
        if watch is None or watch.version != version:
            return None
        watch.labels += 1
        watch.correct += correct
        if watch.labels < self.min_labels:
            return None
        del self.watches[model]
        accuracy = watch.correct / watch.labels
        if watch.baseline is None:
            return Verdict(model, version, watch.previous, False, accuracy, float("nan"), watch.labels,
                           f"{version}: live accuracy {accuracy:.3f} on {watch.labels} labels; {watch.previous} "
                           "had no labeled outputs to compare with: kept")
        worse = watch.baseline - accuracy
        rollback = worse > self.threshold
        return Verdict(model, version, watch.previous, rollback, accuracy, watch.baseline, watch.labels,
                       f"{version}: live accuracy {accuracy:.3f} on {watch.labels} labels vs {watch.previous}'s "
                       f"{watch.baseline:.3f} ({-worse:+.3f}; rollback below -{self.threshold})")

    def state(self) -> dict[str, Any]:
        return {"recent": [[m, v, [int(x) for x in d]] for (m, v), d in self.recent.items()],
                "watches": {m: vars(w) for m, w in self.watches.items()}}

    def restore(self, state: Mapping[str, Any]) -> None:
        self.recent = {(m, v): deque((bool(x) for x in d), maxlen=self.baseline_window)
                       for m, v, d in state.get("recent", [])}
        self.watches = {m: _Watch(**w) for m, w in state.get("watches", {}).items()}
