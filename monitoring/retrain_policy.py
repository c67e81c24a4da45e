"""When to retrain: drift episodes and fed-back labels in, retrain requests (or the reason there is none) out.

A drift alarm alone is not a reason to retrain: without labels from the new world a challenger cannot be
trained or judged. So a drift episode *arms* the model, and the request is filed once enough new labels have
arrived — unless the model was retrained recently (cooldown). A schedule is the fallback for slow drift the
detectors miss: with enough new labels, a model is retrained every ``schedule_s`` anyway.

Every decision is returned as a `Decision` with a readable reason, so the caller can log, count and publish
it: "skipped: cooldown (retrained 120 s ago, cooldown 600 s)" tells an operator more than silence does.
Pure logic: time is passed in, nothing is read from a clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class PolicyConfig:
    trigger_levels: tuple[str, ...] = ("drift",)
    persistence_events: int = 0  # the episode's window must hold this many events
    min_labels: int = 500  # new labels since the last retrain
    cooldown_s: float = 600.0
    schedule_s: float = 86_400.0  # 0: no schedule


@dataclass(frozen=True)
class Decision:
    model: str
    decision: str  # armed | requested | skipped
    reason: str  # drift | schedule | level | persistence | cooldown | ...
    detail: str
    drift_event_id: str | None = None


@dataclass
class _ModelState:
    labels: int = 0  # labels since the last retrain
    last_retrain_ms: int | None = None
    started_ms: int | None = None
    armed_by: str | None = None  # the drift event id waiting for labels


@dataclass
class RetrainPolicy:
    configs: Mapping[str, PolicyConfig]  # model → its policy; models not listed are never retrained
    models: dict[str, _ModelState] = field(default_factory=dict)

    def _state(self, model: str, now_ms: int) -> _ModelState:
        state = self.models.setdefault(model, _ModelState())
        if state.started_ms is None:
            state.started_ms = now_ms
        return state

    def observe_drift(self, event: Mapping[str, Any], now_ms: int) -> Decision | None:
        """A `drift.events` event; None for models this policy does not retrain and for ``cleared``."""
        model, level = str(event["model"]), str(event["level"])
        config = self.configs.get(model)
        if config is None or level == "cleared":
            return None
        state = self._state(model, now_ms)
        what = f"{level} on {event.get('signal')} ({event.get('model_version')})"
        if level not in config.trigger_levels:
            return Decision(model, "skipped", "level", f"{what}: level {level} does not trigger "
                            f"(trigger levels: {', '.join(config.trigger_levels)})", event["id"])
        window = int(event.get("window", {}).get("events", 0))
        if window < config.persistence_events:
            return Decision(model, "skipped", "persistence", f"{what}: the episode spans {window} events, "
                            f"< {config.persistence_events} required", event["id"])
        cooling = self._cooldown_left(config, state, now_ms)
        if cooling > 0:
            return Decision(model, "skipped", "cooldown", f"{what}: retrained {self._since_retrain(state, now_ms)} "
                            f"ago, cooldown {config.cooldown_s:.0f} s", event["id"])
        if state.armed_by is not None:
            return None  # already armed by an earlier episode's alarm: one retrain serves both
        state.armed_by = str(event["id"])
        return Decision(model, "armed", "drift", f"{what}: retrain once {config.min_labels} new labels arrived "
                        f"(have {state.labels})", state.armed_by)

    def observe_labels(self, model: str, count: int, now_ms: int) -> None:
        if model in self.configs:
            self._state(model, now_ms).labels += count

    def due(self, now_ms: int) -> list[Decision]:
        """Requests to file now (the caller files each one and later calls `retrained`)."""
        out = []
        for model, config in self.configs.items():
            state = self._state(model, now_ms)
            if state.labels < config.min_labels or self._cooldown_left(config, state, now_ms) > 0:
                continue
            if state.armed_by is not None:
                out.append(Decision(model, "requested", "drift", f"drift episode and {state.labels} new labels",
                                    state.armed_by))
            elif config.schedule_s > 0 and now_ms - self._last(state) >= config.schedule_s * 1000:
                idle_s = (now_ms - self._last(state)) / 1000
                out.append(Decision(model, "requested", "schedule", f"{state.labels} new labels and no retrain for "
                                    f"{idle_s:.0f} s (schedule {config.schedule_s:.0f} s)"))
            else:
                continue
            state.armed_by = None
            state.labels = 0  # counted again from here: a request in flight is not filed twice
            state.last_retrain_ms = now_ms
        return out

    def retrained(self, model: str, now_ms: int) -> None:
        """A retrain of ``model`` ran (whatever its outcome, and manual ones too): the cooldown starts now and
        the labels it used no longer count as new."""
        state = self._state(model, now_ms)
        state.labels, state.armed_by, state.last_retrain_ms = 0, None, now_ms

    def _last(self, state: _ModelState) -> int:
        return state.last_retrain_ms if state.last_retrain_ms is not None else int(state.started_ms or 0)

    def _cooldown_left(self, config: PolicyConfig, state: _ModelState, now_ms: int) -> float:
        if state.last_retrain_ms is None:
            return 0.0
        return config.cooldown_s - (now_ms - state.last_retrain_ms) / 1000

    def _since_retrain(self, state: _ModelState, now_ms: int) -> str:
        return f"{(now_ms - (state.last_retrain_ms or now_ms)) / 1000:.0f} s"

    def state(self) -> dict[str, Any]:
        return {model: asdict(s) for model, s in self.models.items()}

    def restore(self, state: Mapping[str, Any]) -> None:
        self.models = {model: _ModelState(**s) for model, s in state.items()}
