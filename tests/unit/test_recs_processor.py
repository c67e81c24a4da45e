"""The recs processor without a broker: decoding, dead letters, dedupe, requests, checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from models.recs import OnlineRecommender, RecsConfig
from processors.recs import RecsProcessor, load_checkpoint
from streams.contracts import topics
from streams.contracts.records import RawRecord

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


def click(o: Offsets, eid: str, user: str, item: str, event: str = "click", **extra: object) -> RawRecord:
    return o.rec(topics.CLICKS, {"id": eid, "user_id": user, "item_id": item, "event": event, "ts": 1, **extra},
                 key=user.encode())


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


def test_checkpoint_roundtrip_restores_model_and_offsets(tmp_path: Path) -> None:
    o = Offsets()
    path = tmp_path / "app" / "recs.ckpt"
    clock = [0]
    p = RecsProcessor(small_model(), app_id="app", state_path=path, checkpoint_s=5, clock=lambda: clock[0])
    p.process([click(o, f"e{k}", f"u{k % 4}", f"i{k % 7}") for k in range(40)])
    assert p.tick(1000) == []  # not due yet
    clock[0] = 6000
    [meta] = p.tick(6000)
    assert meta.topic == topics.RECS_STATE and meta.key == b"app"
    info = json.loads(meta.value)
    assert info["model"] == p.model.version and info["offsets"] == [[topics.CLICKS, 0, 39]]
    assert p.tick(7000) == []  # nothing changed since

    restored = small_model()
    offsets = load_checkpoint(path, restored)
    assert offsets == {(topics.CLICKS, 0): 39}
    assert restored.version == p.model.version
    np.testing.assert_allclose(restored.score_all(["u1"]), p.model.score_all(["u1"]), rtol=1e-5)
    assert load_checkpoint(tmp_path / "missing.ckpt", small_model()) is None


def test_event_count_triggers_a_checkpoint_from_process(tmp_path: Path) -> None:
    o = Offsets()
    p = RecsProcessor(small_model(), state_path=tmp_path / "c.ckpt", checkpoint_events=10, checkpoint_s=3600)
    out = p.process([click(o, f"e{k}", "u", f"i{k}") for k in range(12)])
    assert [r.topic for r in out] == [topics.RECS_STATE]
    assert (tmp_path / "c.ckpt").exists()


@pytest.mark.parametrize("k", [1, 5])
def test_recommend_shape(k: int) -> None:
    o, p = Offsets(), RecsProcessor(small_model())
    p.process([click(o, f"e{n}", f"u{n % 2}", f"i{n}") for n in range(20)])
    got = p.recommend("u0", k)
    assert got["user_id"] == "u0" and len(got["items"]) == k
    assert set(got["items"][0]) == {"item_id", "score"} and got["model"].startswith("recs-online-mf@")
    assert len(p.recommend("someone-new", k)["items"]) == k  # cold user: popularity
