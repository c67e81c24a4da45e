"""The retraining policy (drift + labels → requests) and the rollback watch (live accuracy → verdicts)."""

from __future__ import annotations

from monitoring.retrain_policy import PolicyConfig, RetrainPolicy
from monitoring.rollback_watch import RollbackWatch


def drift(level: str = "drift", window: int = 50, model: str = "sentiment", n: int = 1) -> dict:
    return {"id": f"{model}@v1:label:{n}:{level}", "model": model, "model_version": "m@v1", "signal": "label",
            "level": level, "window": {"events": window}}


def policy(**kw: object) -> RetrainPolicy:
    return RetrainPolicy({"sentiment": PolicyConfig(**{"min_labels": 100, "cooldown_s": 60.0, "schedule_s": 0,
                                                        **kw})})  # type: ignore[arg-type]


def test_a_drift_episode_arms_and_the_request_waits_for_enough_new_labels() -> None:
    p = policy()
    armed = p.observe_drift(drift(), 1_000)
    assert armed is not None and armed.decision == "armed" and armed.drift_event_id == drift()["id"]
    p.observe_labels("sentiment", 99, 2_000)
    assert p.due(3_000) == []
    p.observe_labels("sentiment", 1, 4_000)
    [request] = p.due(5_000)
    assert (request.decision, request.reason, request.drift_event_id) == ("requested", "drift", drift()["id"])
    assert p.due(6_000) == []  # filed once


def test_levels_persistence_cooldown_and_unknown_models_are_reasons_not_silence() -> None:
    p = policy(persistence_events=40)
    assert p.observe_drift(drift(level="warning"), 0).reason == "level"
    assert p.observe_drift(drift(window=10), 0).reason == "persistence"
    assert p.observe_drift(drift(level="cleared"), 0) is None
    assert p.observe_drift(drift(model="recs"), 0) is None
    p.retrained("sentiment", 10_000)
    skipped = p.observe_drift(drift(), 30_000)
    assert skipped.reason == "cooldown" and "cooldown 60 s" in skipped.detail
    assert p.observe_drift(drift(), 71_000).decision == "armed"
    p.observe_labels("sentiment", 500, 72_000)
    assert [d.reason for d in p.due(72_000)] == ["drift"]


def test_labels_alone_retrain_on_the_schedule_and_state_round_trips() -> None:
    p = policy(schedule_s=3600)
    p.observe_labels("sentiment", 150, 0)
    assert p.due(3_599_000) == []
    [request] = p.due(3_600_000)
    assert request.reason == "schedule" and request.drift_event_id is None
    copy = policy(schedule_s=3600)
    copy.restore(p.state())
    assert copy.state() == p.state()


def test_a_worse_new_version_is_rolled_back_and_a_good_one_confirmed() -> None:
    w = RollbackWatch(min_labels=20, threshold=0.1)
    for k in range(100):
        w.scored("sentiment", "v1", k % 10 < 8)  # 0.8 before the promotion
    w.promoted("sentiment", "v2", "v1")
    verdicts = [w.scored("sentiment", "v2", k % 2 == 0) for k in range(20)]  # 0.5
    assert verdicts[:-1] == [None] * 19
    assert verdicts[-1].rollback and verdicts[-1].baseline == 0.8 and verdicts[-1].accuracy == 0.5
    w.promoted("sentiment", "v3", "v1")
    for k in range(19):
        assert w.scored("sentiment", "v1", True) is None  # labels on the old version's outputs judge nothing
        assert w.scored("sentiment", "v3", k % 10 < 8) is None
    kept = w.scored("sentiment", "v3", False)
    assert kept is not None and not kept.rollback  # 0.75 vs the bar set before the promotion (0.8): within 0.1
    copy = RollbackWatch(min_labels=20, threshold=0.1)
    copy.restore(w.state())
    assert copy.accuracy("sentiment", "v1") == w.accuracy("sentiment", "v1")


def test_a_promotion_over_a_version_without_labels_is_kept() -> None:
    w = RollbackWatch(min_labels=5)
    w.promoted("sentiment", "v2", "v1")
    verdicts = [w.scored("sentiment", "v2", False) for _ in range(5)]
    assert verdicts[-1] is not None and not verdicts[-1].rollback and "no labeled outputs" in verdicts[-1].detail
