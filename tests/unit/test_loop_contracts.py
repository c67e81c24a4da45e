"""Contracts of the monitoring/retraining topics: valid events pass unchanged, each defect has a readable reason."""

from __future__ import annotations

import json

import pytest

from streams.contracts.schemas import (
    SchemaError,
    parse_drift_event,
    parse_feedback,
    parse_model_update,
    parse_retrain_request,
)

DRIFT = {"id": "d1", "ts": 1, "schema": "drift.events/1", "model": "sentiment", "model_version": "head@1",
         "signal": "label_mix", "detector": "cusum", "level": "drift", "statistic": "chi2", "value": 31.5,
         "threshold": 20.0, "reference": {"events": 5000, "from_ts": 0, "to_ts": 1},
         "window": {"events": 500, "from_ts": 1, "to_ts": 2}, "events_since_reference": 500}
UPDATE = {"id": "u1", "ts": 1, "model": "sentiment", "version": "v2", "previous_version": "v1", "action": "promote",
          "metrics": {"champion": {"macro_f1": 0.7}, "challenger": {"macro_f1": 0.75}}, "data_window": {"labels": 500},
          "registry_path": "/models/sentiment/v2", "sha256": "ab" * 32}


def test_valid_events_pass_from_bytes_or_dicts():
    assert parse_drift_event(json.dumps(DRIFT).encode()) == DRIFT
    assert parse_model_update(UPDATE) == UPDATE
    assert parse_feedback({"id": "e1", "label": "negative", "source": "agent"})["label"] == "negative"
    assert parse_retrain_request({"id": "r1", "model": "sentiment", "reason": "manual", "requested_by": "ops"})


@pytest.mark.parametrize(("parse", "event", "reason"), [
    (parse_feedback, {"id": "e1", "label": "great", "source": "x"}, "must be one of negative|neutral|positive"),
    (parse_feedback, {"id": "e1", "label": "positive"}, "missing required field 'source'"),
    (parse_retrain_request, {"id": "r", "model": "m", "reason": "drift", "requested_by": "monitor"},
     "missing required field 'drift_event_id'"),
    (parse_drift_event, {**DRIFT, "level": "panic"}, "must be one of warning|drift|cleared"),
    (parse_drift_event, {**DRIFT, "value": "high"}, "field 'value' must be a number"),
    (parse_drift_event, {**DRIFT, "schema": "model.updates/1"}, "arrived on topic 'drift.events'"),
    (parse_model_update, {**UPDATE, "action": "delete"}, "must be one of promote|rollback"),
    (parse_model_update, {**UPDATE, "metrics": {"champion": {}}}, "'metrics.challenger' must be an object"),
])
def test_each_defect_has_a_reason(parse, event, reason):
    with pytest.raises(SchemaError) as err:
        parse(event)
    assert reason in str(err.value)
