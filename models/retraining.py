"""One retrain of the sentiment model, start to finish: champion → challenger → gate → registry (→ promotion).

The registry is the source of truth for what serves: the champion alias names it, every challenger is kept
(promoted or not) with its metrics and the gate's reason, and `model.updates` only ever points into it. On
first use (a retrainer starting) the built default model is registered as the initial champion, so there is
always something to roll back to. Retrains are idempotent by version: the version is derived from the request,
so a request processed again after a crash finds its challenger registered and reports the same outcome
instead of training twice.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.registry import ModelVersion, Registry, RegistryError
from models.sentiment import REGISTRY_NAME as SENTIMENT
from models.sentiment import default_model_path
from models.sentiment_retrain import HeadRetrainer, LabeledText, gate, save_model

Progress = Callable[[str], None]


def version_for(request_id: str, ts_ms: int) -> str:
    """Sortable and unique per request: UTC time of the request, then a digest of its id."""
    stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(ts_ms / 1000))
    return f"v{stamp}-{hashlib.sha1(request_id.encode()).hexdigest()[:6]}"


@dataclass(frozen=True)
class Outcome:
    model: str
    decision: str  # promoted | rejected
    version: str
    previous: str | None  # the champion it was compared with
    reason: str
    metrics: dict[str, Any]
    path: Path
    sha256: str
    data_window: dict[str, Any]


class SentimentRetraining:
    def __init__(self, registry: Registry, *, margin: float, tolerance: float, progress: Progress = print,
                 default_model: Callable[[], Path] | None = None, cache_dir: Path | None = None,
                 **trainer_options: Any) -> None:
        """``cache_dir``: where the replay/holdout embeddings are kept (keyed by the encoder's weights, so one
        directory serves every registry; default: inside the registry). ``trainer_options``: HeadRetrainer's
        (replay_size, original_holdout_size, ...)."""
        self.registry, self.margin, self.tolerance, self.progress = registry, margin, tolerance, progress
        self.cache_dir = cache_dir if cache_dir is not None else registry.root / ".cache"
        self._default_model = default_model
        self._trainer_options = trainer_options
        self._trainers: dict[str, HeadRetrainer] = {}

    def champion(self) -> ModelVersion:
        """The serving champion; on first use, the built default model is registered as it."""
        current = self.registry.champion(SENTIMENT)
        if current is not None:
            return current
        source = (self._default_model or default_model_path)()
        version = str(json.loads((source / "config.json").read_text()).get("streamsense_version") or "initial")
        self.progress(f"registry: registering the built default model {source.name}@{version} as the first "
                      f"{SENTIMENT} champion")
        try:
            self.registry.get(SENTIMENT, version)
        except RegistryError:
            self.registry.register(SENTIMENT, source, version=version, parent=None, data_window={},
                                   metrics=_read_metrics(source), move=False,
                                   decision={"passed": True, "reason": "initial: the built default model"})
        self.registry.promote(SENTIMENT, version, reason="initial champion")
        return self.registry.get(SENTIMENT, version)

    def retrain(self, examples: Sequence[LabeledText], *, version: str, data_window: Mapping[str, Any],
                requested: Mapping[str, Any]) -> Outcome:
        try:
            existing = self.registry.get(SENTIMENT, version)
        except RegistryError:
            existing = None
        if existing is not None:  # this request was handled before a restart: report, do not retrain
            decision = existing.meta.get("decision", {})
            return self._outcome(existing, "promoted" if decision.get("passed") else "rejected",
                                 str(decision.get("reason", "")), existing.meta.get("parent"))
        champion = self.champion()
        challenger = self._trainer(champion).train(examples, version=version)
        passed, reason = gate(challenger.metrics, margin=self.margin, tolerance=self.tolerance)
        staging = self.registry.root / f".staging-{version}"
        shutil.rmtree(staging, ignore_errors=True)
        save_model(challenger.model, challenger.tokenizer, staging, challenger.metrics)
        registered = self.registry.register(
            SENTIMENT, staging, version=version, parent=champion.version, data_window=dict(data_window),
            metrics=challenger.metrics, decision={"passed": passed, "reason": reason, "request": dict(requested)})
        if passed:
            self.registry.promote(SENTIMENT, version, reason=reason)
        return self._outcome(registered, "promoted" if passed else "rejected", reason, champion.version)

    def prepare(self) -> None:
        """Embed the champion's replay and holdout tweets now (at worker start, ~40 s on 2 cores the first time,
        then read from the cache), so the first retrain after an alarm does not pay for it."""
        self._trainer(self.champion()).prepare()

    def _trainer(self, champion: ModelVersion) -> HeadRetrainer:
        trainer = self._trainers.get(champion.version)
        if trainer is None:
            trainer = HeadRetrainer(champion.path, cache_dir=self.cache_dir, progress=self.progress,
                                    **self._trainer_options)
            self._trainers = {champion.version: trainer}
        return trainer

    def rollback(self, *, from_version: str, reason: str) -> tuple[ModelVersion, str]:
        """Back to the previous champion, only if ``from_version`` still is the champion (another rollback or
        promotion may have happened meanwhile). Returns (the version now serving, the one rolled back)."""
        current = self.registry.alias(SENTIMENT, "champion")
        if current != from_version:
            raise RegistryError(f"{SENTIMENT}: champion is {current}, not {from_version}: nothing to roll back")
        rolled_from, to = self.registry.rollback(SENTIMENT, reason=reason)
        return self.registry.get(SENTIMENT, to), rolled_from

    def _outcome(self, v: ModelVersion, decision: str, reason: str, previous: str | None) -> Outcome:
        return Outcome(SENTIMENT, decision, v.version, previous, reason, dict(v.meta.get("metrics", {})), v.path,
                       str(v.meta["sha256"]), dict(v.meta.get("data_window", {})))


def _read_metrics(path: Path) -> dict[str, Any]:
    file = path / "metrics.json"
    return json.loads(file.read_text()) if file.is_file() else {}
