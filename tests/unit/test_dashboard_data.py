"""What the dashboard shows of the retraining loop: decisions and announcements in time order, deduplicated, with
the gate's champion → challenger numbers."""

from __future__ import annotations

from monitoring.dashboard_data import DashboardData


def test_the_retraining_timeline_orders_dedupes_and_carries_the_numbers() -> None:
    data = DashboardData()
    promoted = {"id": "sentiment:promoted:drift:2000", "ts": 2000, "model": "sentiment", "decision": "promoted",
                "version": "v2", "detail": "recent accuracy 0.63 vs 0.32",
                "metrics": {"champion": {"recent_accuracy": 0.32, "original_accuracy": 0.74},
                            "challenger": {"recent_accuracy": 0.63, "original_accuracy": 0.72}}}
    announced = {"id": "sentiment@v2:promote", "ts": 2001, "model": "sentiment", "action": "promote",
                 "version": "v2", "reason": "gate passed", "metrics": {"champion": {}, "challenger": {}}}
    armed = {"id": "sentiment:armed:drift:1000", "ts": 1000, "model": "sentiment", "decision": "armed",
             "detail": "drift on label"}
    data.add_retraining("retrain.decisions", promoted)
    data.add_retraining("model.updates", announced)
    data.add_retraining("retrain.decisions", armed)
    data.add_retraining("retrain.decisions", promoted)  # replayed
    timeline = data.as_json()["retraining"]
    assert [e["what"] for e in timeline] == ["armed", "promoted", "announced promote"]
    assert timeline[1]["numbers"] == {"recent_accuracy": [0.32, 0.63], "original_accuracy": [0.74, 0.72]}
    assert timeline[2]["detail"] == "gate passed" and timeline[0]["version"] is None
