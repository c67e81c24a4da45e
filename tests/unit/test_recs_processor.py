"""The recs processor without a broker: decoding, dead letters, dedupe, requests, the /recommend view, and its
state through the real runtime core and state store (streams/runtime/testing.py): checkpoints by time and by
events, restore, replay up to the committed offsets."""

from __future__ import annotations

import hashlib
import io
import json
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from models.recs import OnlineRecommender, RecsConfig
from processors.base import Checkpointed, validate
from processors.recs import CHECKPOINT_VERSION, RecsProcessor
from streams.contracts import topics
from streams.contracts.records import RawRecord
from streams.contracts.state import Checkpoint, decode_state_record
from streams.runtime.testing import InProcessWorker, restart

torch.set_num_threads(1)


def small_model() -> OnlineRecommender:
    cfg = RecsConfig(dim=8, use_content=False, replay_size=2000, recent_size=200, n_shared_negatives=32)
    return OnlineRecommender(cfg)


class Offsets:
    def __init__(self) -> None:
        self.next: dict[tuple[str, int], int] = {}

    def rec(self, topic: str, value: bytes | dict, partition: int = 0, key: bytes | None = None) -> RawRecord:
        off = self.next.get((topic, partition), 0)
        self.next[(topic, partition)] = off + 1
        raw = value if isinstance(value, bytes) else json.dumps(value).encode()
        return RawRecord(topic, partition, off, key, raw)


def click(o: Offsets, eid: str, user: str, item: str, event: str = "click", partition: int = 0,
          **extra: object) -> RawRecord:
    return o.rec(topics.CLICKS, {"id": eid, "user_id": user, "item_id": item, "event": event, "ts": 1, **extra},
                 partition=partition, key=user.encode())


class Clock:
    """One clock for the processor and the runner, so "due" and "now" agree."""

    def __init__(self) -> None:
        self.ms = 0

    def __call__(self) -> int:
        return self.ms


def test_declares_its_capabilities() -> None:
    p = RecsProcessor(small_model())
    assert validate(p) == ["checkpoint", "web", "whole-partitions"]
    assert isinstance(p, Checkpointed) and p.state_store == "file" and p.state_topic == topics.RECS_STATE
    assert p.replay_topics == (topics.CLICKS, topics.ITEMS) == p.whole_partition_topics
    assert p.read_ahead == 2 and RecsProcessor(small_model(), read_ahead=0).read_ahead == 0
    for gone in ("state_path", "pipeline_depth", "register_web", "tick", "unsharded_topics"):
        assert not hasattr(p, gone), gone


def test_clicks_items_and_requests_in_one_batch() -> None:
    o, p = Offsets(), RecsProcessor(small_model())
    batch = [o.rec(topics.ITEMS, {"item_id": f"i{k}", "title": f"t{k}", "genres": ["Comedy"]}) for k in range(5)]
    batch += [click(o, f"e{k}", f"u{k % 3}", f"i{k % 5}") for k in range(12)]
    batch.append(click(o, "e-new", "u9", "brand-new-item"))  # unknown ids create user and item
    batch.append(o.rec(topics.RECS_REQUESTS, {"id": "req-1", "user_id": "u0", "k": 3}))
    out = p.process(batch)
    [resp] = out
    assert resp.topic == topics.RECS_RESPONSES and resp.key == b"req-1"
    body = json.loads(resp.value)
    assert body["user_id"] == "u0" and body["model"] == p.model.version
    assert [i["item_id"] for i in body["items"]] == ["i2", "brand-new-item"]  # u0 saw the other 4 of 6 items
    assert p.model.n_items == 6 and p.model.n_users == 4 and p.model.n_applied == 13
    assert p.offsets == {(topics.ITEMS, 0): 4, (topics.CLICKS, 0): 12}


def test_malformed_inputs_are_dead_lettered_with_reasons() -> None:
    o, p = Offsets(), RecsProcessor(small_model())
    bad = {
        "not-json": o.rec(topics.CLICKS, b"{nope"),
        "empty": o.rec(topics.CLICKS, b""),
        "no-user": o.rec(topics.CLICKS, {"id": "x", "item_id": "i", "event": "click"}),
        "bad-event": o.rec(topics.CLICKS, {"id": "x", "user_id": "u", "item_id": "i", "event": "hover"}),
        "list-id": o.rec(topics.CLICKS, {"id": "x", "user_id": ["u"], "item_id": "i", "event": "click"}),
        "bad-value": o.rec(topics.CLICKS, {"id": "x", "user_id": "u", "item_id": "i", "event": "rating",
                                           "value": "lots"}),
        "item-no-id": o.rec(topics.ITEMS, {"title": "no id"}),
        "bad-k": o.rec(topics.RECS_REQUESTS, {"id": "r", "user_id": "u", "k": 0}),
    }
    out = p.process([*bad.values(), click(o, "ok", "u", "i")])
    assert [r.topic for r in out] == [topics.DEADLETTER] * len(bad)
    reasons = [json.loads(r.value)["reason"] for r in out]
    assert "malformed JSON" in reasons[0] and "empty" in reasons[1]
    assert "user_id" in reasons[2] and "hover" in reasons[3] and "user_id" in reasons[4]
    assert "bad click event" in reasons[5] and "item_id" in reasons[6] and "'k'" in reasons[7]
    assert p.model.n_applied == 1


def test_duplicate_event_ids_are_applied_once_and_out_of_order_ts_is_fine() -> None:
    o, p = Offsets(), RecsProcessor(small_model())
    p.process([click(o, "a", "u", "i1", ts=50), click(o, "b", "u", "i2", ts=10)])
    v = p.model.version
    p.process([click(o, "a", "u", "i1"), click(o, "b", "u", "i2")])  # a redelivery
    assert p.model.version == v and p.model.n_applied == 2


def test_time_triggers_a_checkpoint_and_it_round_trips(tmp_path: Path) -> None:
    """Through the runtime: a checkpoint is due checkpoint_s after the last one (when something changed); the
    state store writes it to a file with a pointer record on recs.state; a new processor restored from that
    record serves the same recommendations."""
    o, clock = Offsets(), Clock()
    p = RecsProcessor(small_model(), app_id="app", checkpoint_s=5, clock=clock)
    worker = InProcessWorker(p, app_id="app", state_dir=str(tmp_path), clock=clock)
    assert worker.run([click(o, f"e{k}", f"u{k % 4}", f"i{k % 7}") for k in range(40)]) == []
    clock.ms = 1000
    assert worker.tick() == []  # not due yet
    clock.ms = 6000
    [state] = worker.tick()
    assert state.topic == topics.RECS_STATE and state.key == b"app/app"
    record = decode_state_record(state.value)
    assert record.key == "app" and record.location == "file" and record.data == b""
    assert record.offsets == {(topics.CLICKS, 0): 39}
    assert record.meta["model"] == p.model.version == "recs-online-mf@1.0+40"
    file = Path(record.path or "")
    assert file.parent == tmp_path / "app" / "recs" and file.stat().st_size == record.size
    assert hashlib.sha256(file.read_bytes()).hexdigest() == record.sha256
    clock.ms = 12_000
    assert worker.tick() == []  # nothing changed since
    assert worker.acked == [[*range(40)]]

    restored = RecsProcessor(small_model(), app_id="app")
    assert restart(restored, worker.state(), worker.store) == 0  # no committed offsets: nothing to replay
    assert restored.offsets == {(topics.CLICKS, 0): 39}
    assert restored.model.version == p.model.version
    np.testing.assert_allclose(restored.model.score_all(["u1"]), p.model.score_all(["u1"]), rtol=1e-5)
    assert restored.recommend("u1", 5) == p.recommend("u1", 5)

    other_app = RecsProcessor(small_model(), app_id="other")  # another app id's state is not ours
    restart(other_app, worker.state(), worker.store)
    assert other_app.model.n_applied == 0 and other_app.offsets == {}
    nothing = RecsProcessor(small_model(), app_id="app")  # an empty state topic: a fresh model
    assert restart(nothing, [], worker.store) == 0 and nothing.model.n_applied == 0


def test_event_count_triggers_a_checkpoint_after_a_batch(tmp_path: Path) -> None:
    o = Offsets()
    p = RecsProcessor(small_model(), checkpoint_events=10, checkpoint_s=3600)
    worker = InProcessWorker(p, state_dir=str(tmp_path))
    assert worker.run([click(o, f"e{k}", "u", f"i{k}") for k in range(8)]) == []  # 8 < 10
    out = worker.run([click(o, f"e{k}", "u", f"i{k}") for k in range(8, 12)])
    assert [r.topic for r in out] == [topics.RECS_STATE]
    assert decode_state_record(out[0].value).offsets == {(topics.CLICKS, 0): 11}
    assert len(list((tmp_path / "test" / "recs").glob("*.ckpt"))) == 1
    assert worker.run([click(o, f"e{k}", "u", f"i{k}") for k in range(12, 15)]) == []  # 3 since the last one


def test_catalog_rows_count_towards_a_checkpoint(tmp_path: Path) -> None:
    o = Offsets()
    p = RecsProcessor(small_model(), checkpoint_events=5, checkpoint_s=3600)
    worker = InProcessWorker(p, state_dir=str(tmp_path))
    [state] = worker.run([o.rec(topics.ITEMS, {"item_id": f"i{k}", "title": f"t{k}"}) for k in range(5)])
    assert decode_state_record(state.value).offsets == {(topics.ITEMS, 0): 4}


def test_restart_replays_what_was_committed_after_the_checkpoint(tmp_path: Path) -> None:
    """A crash after the offsets of 10 more clicks were committed, before the next checkpoint: the restart
    restores the checkpoint of 40 and replays exactly those 10 (not the 5 read but never committed), so the
    model is where the committed offsets say, identical to the one that crashed."""
    o = Offsets()
    p = RecsProcessor(small_model(), app_id="app", checkpoint_events=40, checkpoint_s=3600)
    worker = InProcessWorker(p, app_id="app", state_dir=str(tmp_path))
    clicks = [click(o, f"e{k}", f"u{k % 5}", f"i{k % 13}") for k in range(55)]
    assert [r.topic for r in worker.run(clicks[:40])] == [topics.RECS_STATE]
    assert worker.run(clicks[40:50]) == []  # processed and committed, never checkpointed
    assert p.model.version == "recs-online-mf@1.0+50"

    second = RecsProcessor(small_model(), app_id="app", checkpoint_events=40, checkpoint_s=3600)
    replayed = restart(second, worker.state(), worker.store, inputs=clicks, committed={(topics.CLICKS, 0): 50})
    assert replayed == 10
    assert second.model.version == p.model.version and second.offsets == {(topics.CLICKS, 0): 49}
    np.testing.assert_allclose(second.model.score_all(["u2"]), p.model.score_all(["u2"]), rtol=1e-5)
    assert second.recommend("u2", 5) == p.recommend("u2", 5)

    # the next checkpoint comes soon after a replay and includes the replayed offsets
    [state] = InProcessWorker(second, app_id="app", state_dir=str(tmp_path)).run(clicks[50:51])
    assert decode_state_record(state.value).offsets == {(topics.CLICKS, 0): 50}


def test_replay_is_idempotent() -> None:
    """Replaying inputs the restored state already includes changes nothing: click ids are deduplicated (the
    dedupe window is part of the checkpoint) and catalog rows are upserted."""
    o = Offsets()
    p = RecsProcessor(small_model(), app_id="app", checkpoint_events=1)
    items = [o.rec(topics.ITEMS, {"item_id": f"i{k}", "title": f"t{k}"}) for k in range(4)]
    clicks = [click(o, f"e{k}", f"u{k % 3}", f"i{k % 4}") for k in range(20)]
    p.process(items + clicks)
    [cp] = p.checkpoints(p.clock())
    second = RecsProcessor(small_model(), app_id="app")
    second.restore([cp])
    second.replay(items + clicks)
    assert second.model.n_applied == 20 and second.model.n_items == 4 and second.model.n_users == 3
    assert second.recommend("u1", 3) == p.recommend("u1", 3)


def test_lost_checkpoint_file_replays_from_the_beginning(tmp_path: Path) -> None:
    o = Offsets()
    p = RecsProcessor(small_model(), app_id="app", checkpoint_events=20, checkpoint_s=3600)
    worker = InProcessWorker(p, app_id="app", state_dir=str(tmp_path))
    clicks = [click(o, f"e{k}", f"u{k % 3}", f"i{k % 6}", partition=k % 2) for k in range(30)]
    worker.run(clicks[:20], clicks[20:])
    for f in (tmp_path / "app" / "recs").glob("*.ckpt"):
        f.unlink()
    second = RecsProcessor(small_model(), app_id="app")
    committed = {(topics.CLICKS, 0): 15, (topics.CLICKS, 1): 15}
    assert restart(second, worker.state(), worker.store, inputs=clicks, committed=committed) == 30
    assert second.model.n_applied == 30 and second.offsets == {(topics.CLICKS, 0): 14, (topics.CLICKS, 1): 14}


@pytest.mark.parametrize("k", [1, 5])
def test_recommend_shape(k: int) -> None:
    o, p = Offsets(), RecsProcessor(small_model())
    p.process([click(o, f"e{n}", f"u{n % 2}", f"i{n}") for n in range(20)])
    got = p.recommend("u0", k)
    assert got["user_id"] == "u0" and len(got["items"]) == k
    assert set(got["items"][0]) == {"item_id", "score"} and got["model"].startswith("recs-online-mf@")
    assert len(p.recommend("someone-new", k)["items"]) == k  # cold user: popularity


def test_recommend_route() -> None:
    o, p = Offsets(), RecsProcessor(small_model())
    p.process([click(o, f"e{n}", f"u{n % 2}", f"i{n}") for n in range(20)])
    view = p.routes()["/recommend/{user_id}"]
    status, body = view({"user_id": "u0"}, {"k": "3"})
    assert status == 200 and body == p.recommend("u0", 3)
    status, body = view({"user_id": "u0"}, {})
    assert status == 200 and len(body["items"]) == 10
    for bad in ("0", "1001", "ten"):
        status, body = view({"user_id": "u0"}, {"k": bad})
        assert status == 400 and "k must be" in body["error"]


def test_the_stats_view_reports_how_full_the_models_state_is() -> None:
    """What the soak reads next to RSS: every part of the state and its bound, so growth can be explained."""
    o, p = Offsets(), RecsProcessor(small_model())
    p.process([click(o, f"e{n}", f"u{n % 3}", f"i{n % 5}") for n in range(20)])
    p.process([click(o, f"e{n}", f"u{n % 3}", f"i{n % 5}") for n in range(5)])  # replayed ids: no growth
    status, body = p.routes()["/recs/stats"]({}, {})
    assert status == 200 and body["model"] == p.model.version
    assert body["applied"] == body["dedupe_ids"] == 20 and body["users"] == 3 and body["items"] == 5
    assert body["seen_pairs"] == 15 and body["covis_entries"] > 0
    assert body["dedupe_capacity"] == p.model.config.dedupe_capacity and body["dedupe_bytes"] > 0


class _Planted:
    """A pickled object that would create a file when unpickled: what a tampered checkpoint could carry."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_a_checkpoint_is_never_unpickled_beyond_tensors_and_plain_values(tmp_path: Path) -> None:
    """No code runs from a checkpoint: restore loads with weights_only=True and refuses anything else with a
    readable reason (a tampered file, or a version-1 file that pickled numpy arrays)."""
    planted = tmp_path / "planted"
    buf = io.BytesIO()
    torch.save({"v": CHECKPOINT_VERSION, "state": _Planted(planted)}, buf)
    p = RecsProcessor(small_model(), app_id="app")
    with pytest.raises(ValueError, match="refusing to unpickle"):
        p.restore([Checkpoint("app", zlib.compress(buf.getvalue()), {})])
    assert not planted.exists() and p.model.n_applied == 0
    old = io.BytesIO()
    torch.save({"v": 1, "state": small_model().state_dict()}, old)  # version 1: numpy arrays pickled
    with pytest.raises(ValueError, match="version-1 file"):
        p.restore([Checkpoint("app", zlib.compress(old.getvalue()), {})])


def test_the_largest_k_is_a_setting_on_the_topic_and_the_web_view() -> None:
    from streams.contracts.settings import Settings
    from streams.runtime.worker import build_recs

    o = Offsets()
    p = RecsProcessor(small_model(), max_k=5)
    out = p.process([click(o, "c", "u", "i"), o.rec(topics.RECS_REQUESTS, {"id": "r1", "user_id": "u", "k": 6}),
                     o.rec(topics.RECS_REQUESTS, {"id": "r2", "user_id": "u", "k": 5})])
    assert [r.topic for r in out] == [topics.DEADLETTER, topics.RECS_RESPONSES]
    assert "1..5" in json.loads(out[0].value)["reason"]
    view = p.routes()["/recommend/{user_id}"]
    assert view({"user_id": "u"}, {"k": "6"})[0] == 400 and view({"user_id": "u"}, {"k": "5"})[0] == 200
    worker = build_recs(Settings.from_env({"STREAMSENSE_RECS_MAX_K": "7", "STREAMSENSE_RECS_CONTENT": "0"}),
                        lambda _line: None)
    assert worker.max_k == 7
