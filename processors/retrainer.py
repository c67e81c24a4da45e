"""The retraining loop as a stream processor: labels, drift and requests in; decisions and promotions out.

Inputs:

* ``feedback`` — a label for an earlier event (key = its id). With ``text`` it is a training example at once;
  without, it waits up to ``join_s`` for the ``text.enriched`` event of that id (then it is dead-lettered:
  a label nobody can use must not vanish). Joined with the enriched event it also scores the version that
  produced that output (monitoring/rollback_watch.py).
* ``text.enriched`` — texts and the served version's predictions, for the join (a bounded cache).
* ``drift.events`` — the policy (monitoring/retrain_policy.py) arms a model on a drift episode and files a
  request on ``retrain.requests`` once enough new labels arrived (checked every tick).
* ``retrain.requests`` — from the policy, ``streamsense retrain`` or anyone: the model thread trains a
  challenger on the recent labels, the gate judges it, the registry keeps it (models/retraining.py), and a
  promotion is announced on ``model.updates``, which every text worker follows (streams/runtime/model_updates.py).
* ``model.updates`` — promotions (ours and manual ones) start a rollback watch; a verdict against the new
  version rolls it back (``action: "rollback"``).

Every decision is one ``retrain.decisions`` event, a log line and a count in
``streamsense_retrain_decisions_total``; every trained challenger counts in ``streamsense_retrains_total``.

Capabilities: Ticking (expiring joins, filing due requests), Checkpointed (labels, pending joins, policy and
watch state in one inline checkpoint; the text cache is not checkpointed: after a restart only texts
replayed since the checkpoint can be joined), WholePartitions (one retrainer per app id).
Training runs on the model thread: the event loop keeps heartbeating and other processors keep serving.
A restart during training reprocesses the request (its offset was not committed); the version is derived from
the request's id, so the registry recognises a challenger it already judged.
"""

from __future__ import annotations

import base64
import logging
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from models.registry import RegistryError
from models.retraining import SentimentRetraining, version_for
from models.sentiment import REGISTRY_NAME as SENTIMENT
from models.sentiment_retrain import LabeledText
from monitoring import metrics
from monitoring.retrain_policy import Decision, RetrainPolicy
from monitoring.rollback_watch import RollbackWatch, Verdict
from streams.contracts import topics
from streams.contracts.deadletter import dead_letter
from streams.contracts.records import OutRecord, RawRecord
from streams.contracts.schemas import (
    SchemaError,
    decode_json_object,
    encode,
    model_update,
    now_ms,
    parse_drift_event,
    parse_feedback,
    parse_model_update,
    parse_retrain_request,
    retrain_decision,
    retrain_request,
    validate_text_enriched,
)
from streams.contracts.state import TP, Checkpoint, json_checkpoint, json_state

log = logging.getLogger(__name__)

SOURCES = (topics.FEEDBACK, topics.TEXT_ENRICHED, topics.DRIFT_EVENTS, topics.RETRAIN_REQUESTS,
           topics.MODEL_UPDATES)
STATE_KEY = "retrainer"
NOT_RETRAINED = {
    "recs": "the recommender learns online from every click; it has no offline retrain",
    "ner": "no labeled entity feedback contract yet (feedback labels are sentiment labels)",
    "asr": "whisper models are promoted by an operator (streamsense models promote), not retrained here",
}


@dataclass
class _Pending:
    label: str
    ts: int
    record: RawRecord


class RetrainerProcessor:
    name = "retrainer"
    source_topics = SOURCES
    state_topic = topics.RETRAINER_STATE
    state_store = "topic"
    replay_topics = (topics.FEEDBACK, topics.TEXT_ENRICHED, topics.DRIFT_EVENTS, topics.MODEL_UPDATES)
    whole_partition_topics = (topics.FEEDBACK, topics.TEXT_ENRICHED)
    tick_s = 1.0
    batch_size = 500
    batch_ms = 200
    read_ahead = 0

    def __init__(self, retraining: SentimentRetraining, policy: RetrainPolicy, watch: RollbackWatch, *,
                 max_labels: int = 5000, join_s: float = 600.0, text_cache: int = 100_000,
                 checkpoint_s: float = 10.0, clock: Callable[[], int] = now_ms) -> None:
        self.retraining, self.policy, self.watch = retraining, policy, watch
        self.labels: deque[tuple[str, str, str, int]] = deque(maxlen=max_labels)  # id, text, label, ts
        self.texts: OrderedDict[str, tuple[str, str, str]] = OrderedDict()  # id → text, predicted label, version
        self.text_cache, self.join_ms, self.checkpoint_ms = text_cache, int(join_s * 1000), int(checkpoint_s * 1000)
        # labels without text waiting for their text.enriched event, by id: a list, since two labels for one id
        # are two training examples and neither may vanish
        self.pending: dict[str, list[_Pending]] = {}
        self.offsets: dict[TP, int] = {}
        self.clock = clock
        self._replaying = False
        self._checkpoint_at = 0
        self._changed = False

    # --- records ---------------------------------------------------------------------------------------------

    def process(self, records: Sequence[RawRecord]) -> list[OutRecord]:
        out: list[OutRecord] = []
        for r in records:
            self.offsets[(r.topic, r.partition)] = max(r.offset, self.offsets.get((r.topic, r.partition), -1))
            try:
                out += self._handle(r)
            except SchemaError as exc:
                out.append(dead_letter(r, processor=self.name, reason=str(exc), error=type(exc).__name__))
        self._changed = self._changed or bool(records)
        return out

    def _handle(self, r: RawRecord) -> list[OutRecord]:
        if r.topic == topics.TEXT_ENRICHED:
            return self._enriched(r)
        if r.topic == topics.FEEDBACK:
            return self._feedback(r)
        if r.topic == topics.DRIFT_EVENTS:
            decision = self.policy.observe_drift(parse_drift_event(r.value), self.clock())
            return self._decided(decision) if decision else []
        if r.topic == topics.MODEL_UPDATES:
            return self._model_update(parse_model_update(r.value))
        return self._request(parse_retrain_request(r.value))

    def _enriched(self, r: RawRecord) -> list[OutRecord]:
        event = decode_json_object(r.value)
        validate_text_enriched(event)
        version = str(event["models"].get("sentiment", "unknown")).rpartition("@")[2]
        self.texts[event["id"]] = (event["text"], event["sentiment"]["label"], version)
        self.texts.move_to_end(event["id"])
        while len(self.texts) > self.text_cache:
            self.texts.popitem(last=False)
        out: list[OutRecord] = []
        for p in self.pending.pop(event["id"], []):
            out += self._labeled(event["id"], p.label, None, p.ts)
        return out

    def _feedback(self, r: RawRecord) -> list[OutRecord]:
        event = parse_feedback(r.value)
        ts = event["ts"] if isinstance(event.get("ts"), int) else (r.timestamp_ms or self.clock())
        if event.get("text") is None and event["id"] not in self.texts:
            self.pending.setdefault(event["id"], []).append(_Pending(event["label"], ts, r))
            return []
        return self._labeled(event["id"], event["label"], event.get("text"), ts)

    def _labeled(self, event_id: str, label: str, text: str | None, ts: int) -> list[OutRecord]:
        """A usable label: a training example, and a score for the version that served that event."""
        served = self.texts.get(event_id)
        self.labels.append((event_id, text if text is not None else served[0] if served else "", label, ts))
        self.policy.observe_labels(SENTIMENT, 1, self.clock())
        if served is None:
            return []
        _, predicted, version = served
        verdict = self.watch.scored(SENTIMENT, version, predicted == label)
        accuracy = self.watch.accuracy(SENTIMENT, version)
        if accuracy is not None:
            metrics.LIVE_ACCURACY.labels(SENTIMENT, version).set(accuracy)
        return self._judged(verdict) if verdict else []

    # --- decisions -------------------------------------------------------------------------------------------

    def _decided(self, d: Decision) -> list[OutRecord]:
        out = [self._decision_record(d.model, d.decision, d.reason, d.detail, drift_event_id=d.drift_event_id)]
        if d.decision == "requested":
            ts = self.clock()
            request = retrain_request(f"{d.model}:{d.reason}:{ts}", ts=ts, model=d.model, reason=d.reason,
                                      requested_by="retrain-policy", drift_event_id=d.drift_event_id)
            out.append(OutRecord(topics.RETRAIN_REQUESTS, d.model.encode("utf-8", "surrogatepass"), encode(request)))
        return out

    def _decision_record(self, model: str, decision: str, reason: str, detail: str, **fields: Any) -> OutRecord:
        if not self._replaying:
            metrics.RETRAIN_DECISIONS.labels(model, decision, reason).inc()
            log.warning("retrainer: %s %s (%s): %s", model, decision, reason, detail)
        event = retrain_decision(ts=self.clock(), model=model, decision=decision, reason=reason, detail=detail,
                                 **{k: v for k, v in fields.items() if v is not None})
        return OutRecord(topics.RETRAIN_DECISIONS, model.encode("utf-8", "surrogatepass"), encode(event))

    def _request(self, request: dict[str, Any]) -> list[OutRecord]:
        model = request["model"]
        if self._replaying:  # handled before the checkpoint's successor was written: its outputs are out
            self.policy.retrained(model, self.clock())
            return []
        if model != SENTIMENT:
            return [self._decision_record(model, "skipped", "not_retrainable", NOT_RETRAINED.get(
                model, f"no retrainer for model {model!r}"), request_id=request["id"])]
        examples = [LabeledText(i, text, label) for i, text, label, _ in self.labels if text]
        self.policy.retrained(model, self.clock())
        if not examples:
            return [self._decision_record(model, "skipped", "no_labels", "no labeled feedback with text yet",
                                          request_id=request["id"])]
        stamps = [ts for *_, ts in self.labels]
        window = {"labels": len(examples), "from_ts": min(stamps), "to_ts": max(stamps),
                  "offsets": {f"{t}[{p}]": o for (t, p), o in self.offsets.items() if t == topics.FEEDBACK}}
        version = version_for(request["id"], int(request.get("ts") or self.clock()))
        try:
            outcome = self.retraining.retrain(examples, version=version, data_window=window, requested=request)
        except (ValueError, RegistryError) as exc:  # too few labels of a kind, a registry conflict: say so, go on
            metrics.RETRAINS.labels(model, "failed").inc()
            return [self._decision_record(model, "failed", "training", str(exc), request_id=request["id"])]
        except Exception as exc:  # a bug or a broken model file: this request fails, the batch and the loop go on
            log.exception("retrainer: training %s for request %s failed", model, request["id"])
            metrics.RETRAINS.labels(model, "failed").inc()
            return [self._decision_record(model, "failed", "error", f"{type(exc).__name__}: {exc}",
                                          request_id=request["id"])]
        metrics.RETRAINS.labels(model, outcome.decision).inc()
        out = [self._decision_record(model, outcome.decision, request["reason"], outcome.reason,
                                     request_id=request["id"], version=outcome.version, metrics=outcome.metrics)]
        if outcome.decision == "promoted":
            out.append(self._update(outcome.version, outcome.previous, "promote", outcome.metrics,
                                    outcome.data_window, str(outcome.path), outcome.sha256, outcome.reason))
        return out

    def _update(self, version: str, previous: str | None, action: str, metrics_: dict[str, Any],
                data_window: dict[str, Any], path: str, sha256: str, reason: str) -> OutRecord:
        metrics.MODEL_UPDATES.labels(SENTIMENT, action).inc()
        event = model_update(ts=self.clock(), model=SENTIMENT, version=version, previous_version=previous,
                             action=action, metrics={"champion": metrics_.get("champion", {}),
                                                     "challenger": metrics_.get("challenger", {})},
                             data_window=data_window, registry_path=path, sha256=sha256, reason=reason)
        return OutRecord(topics.MODEL_UPDATES, SENTIMENT.encode(), encode(event))

    def _model_update(self, update: dict[str, Any]) -> list[OutRecord]:
        if update["model"] != SENTIMENT:
            return []
        if update["action"] == "promote":
            self.watch.promoted(SENTIMENT, update["version"], update.get("previous_version"))
        else:
            self.watch.stop(SENTIMENT)
        return []

    def _judged(self, verdict: Verdict) -> list[OutRecord]:
        if not verdict.rollback:
            return [self._decision_record(SENTIMENT, "confirmed", "live_accuracy", verdict.detail,
                                          version=verdict.version)]
        if self._replaying:
            return []
        try:
            now, rolled = self.retraining.rollback(from_version=verdict.version, reason=verdict.detail)
        except RegistryError as exc:
            return [self._decision_record(SENTIMENT, "skipped", "rollback", str(exc), version=verdict.version)]
        return [self._decision_record(SENTIMENT, "rolled_back", "live_accuracy", verdict.detail, version=rolled),
                self._update(now.version, rolled, "rollback", {"champion": {"live_accuracy": verdict.baseline},
                                                              "challenger": {"live_accuracy": verdict.accuracy}},
                             dict(now.meta.get("data_window", {})), str(now.path), str(now.meta["sha256"]),
                             verdict.detail)]

    # --- ticks and state ---------------------------------------------------------------------------------------

    def tick(self, now_ms: int) -> list[OutRecord]:
        out: list[OutRecord] = []
        for event_id, waiting in list(self.pending.items()):
            expired = [p for p in waiting if now_ms - p.ts > self.join_ms]
            if not expired:
                continue
            if kept := [p for p in waiting if now_ms - p.ts <= self.join_ms]:
                self.pending[event_id] = kept
            else:
                del self.pending[event_id]
            out += [dead_letter(p.record, processor=self.name, error="FeedbackJoinTimeout",
                                reason=f"no text for feedback id {event_id!r}: no text.enriched event with that id "
                                       f"within {self.join_ms / 1000:.0f} s, and the label has no 'text' field")
                    for p in expired]
        for decision in self.policy.due(now_ms):
            out += self._decided(decision)
        return out

    def checkpoints(self, now_ms: int) -> list[Checkpoint]:
        if not self._changed or now_ms - self._checkpoint_at < self.checkpoint_ms:
            return []
        self._checkpoint_at, self._changed = now_ms, False
        state = {"labels": list(self.labels), "policy": self.policy.state(), "watch": self.watch.state(),
                 "pending": {i: [[p.label, p.ts, _record_state(p.record)] for p in waiting]
                             for i, waiting in self.pending.items()}}
        return [json_checkpoint(STATE_KEY, state, self.offsets)]

    def restore(self, checkpoints: Sequence[Checkpoint]) -> None:
        for cp in checkpoints:
            if cp.key == STATE_KEY:
                state = json_state(cp)
                self.labels.extend(tuple(x) for x in state["labels"])  # type: ignore[misc]
                self.policy.restore(state["policy"])
                self.watch.restore(state["watch"])
                self.pending = {i: [_Pending(label, ts, _record_of(rec)) for label, ts, rec in _waiting(entry)]
                                for i, entry in state["pending"].items()}
                self.offsets = dict(cp.offsets)

    def replay(self, records: Sequence[RawRecord]) -> None:
        """Inputs after the checkpoint whose outputs were delivered: labels, joins, policy and watch move
        again; requests and rollbacks are not redone (their outcomes were published)."""
        self._replaying = True
        try:
            self.process(records)
        finally:
            self._replaying = False


def _waiting(entry: list[Any]) -> list[list[Any]]:
    """The labels waiting for one id in a checkpoint: a list of [label, ts, record]; a checkpoint of the previous
    release holds one [label, ts, record] (its label is a string).

    >>> record = ["feedback", 0, 7, "", "", 1]
    >>> _waiting(["positive", 1, record]) == _waiting([["positive", 1, record]]) == [["positive", 1, record]]
    True
    """
    return [entry] if entry and isinstance(entry[0], str) else entry


def _record_state(r: RawRecord) -> list[Any]:
    return [r.topic, r.partition, r.offset, base64.b64encode(r.key or b"").decode(),
            base64.b64encode(r.value or b"").decode(), r.timestamp_ms]


def _record_of(state: list[Any]) -> RawRecord:
    topic, partition, offset, key, value, ts = state
    return RawRecord(topic=topic, partition=partition, offset=offset, key=base64.b64decode(key) or None,
                     value=base64.b64decode(value), timestamp_ms=ts)
