"""clicks/items → recs worker → /recommend, recs.responses, deadletter; restart from checkpoint + replay."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from streams.contracts import topics
from streams.contracts.records import OutRecord
from streams.contracts.settings import Settings
from streams.contracts.state import StateRecord, decode_state_record, state_key
from streams.runtime.kafka_io import read_topic
from tests.integration.harness import REPO, WorkerProcess, collect, produce

pytestmark = pytest.mark.integration


class RecsWorker(WorkerProcess):
    """The launcher's worker (its own web port) with the recs view, so the test can call /recommend."""

    def recommend(self, user: str, k: int = 10) -> dict:
        status, body = self.get(f"/recommend/{user}?k={k}")
        assert status == 200, (status, body)
        return body

    def wait_applied(self, n: int, timeout_s: float = 60.0) -> dict:
        deadline = time.monotonic() + timeout_s
        got: dict = {}
        while time.monotonic() < deadline:
            got = self.recommend("nobody")
            if got["model"].endswith(f"+{n}"):
                return got
            time.sleep(0.2)
        raise AssertionError(f"model never reached {n} applied events: {got}; log:\n{self.log()[-3000:]}")


def item_records(prefix: str) -> list[OutRecord]:
    rows = [{"item_id": f"{prefix}-c{k}", "title": f"Funny film {k}", "genres": "Comedy"} for k in range(20)]
    rows += [{"item_id": f"{prefix}-h{k}", "title": f"Scary film {k}", "genres": "Horror|Thriller"} for k in range(20)]
    return [OutRecord(topics.ITEMS, r["item_id"].encode(), json.dumps(r).encode()) for r in rows]


def click_records(prefix: str, pairs: list[tuple[str, str]], tag: str) -> list[OutRecord]:
    out = []
    for n, (user, item) in enumerate(pairs):
        ev = {"id": f"{prefix}-{tag}-{n}", "user_id": user, "item_id": item, "event": "click", "ts": n}
        out.append(OutRecord(topics.CLICKS, user.encode(), json.dumps(ev).encode()))
    return out


def background(prefix: str) -> list[tuple[str, str]]:
    """30 users who stick to one genre each, so co-occurrence ties items of a genre together."""
    pairs = []
    for u in range(30):
        genre = "c" if u % 2 else "h"
        pairs += [(f"{prefix}-b{u}", f"{prefix}-{genre}{(u + j) % 20}") for j in range(6)]
    return pairs


@pytest.fixture(scope="module")
def worker(broker: str, tmp_path_factory: pytest.TempPathFactory):
    tmp = Path(tmp_path_factory.mktemp("recs"))
    w = RecsWorker(broker, tmp, processors="recs", env={"STREAMSENSE_STATE_DIR": str(tmp / "state")}).start()
    w.wait_ready(timeout_s=120)
    yield w
    assert w.stop() == 0, w.log()[-3000:]


def test_recommendations_follow_new_clicks_within_seconds(broker: str, worker: RecsWorker) -> None:
    p = f"r{uuid.uuid4().hex[:6]}"
    user = f"{p}-me"
    bg = background(p)
    mine = [(user, f"{p}-c{k}") for k in range(5)]
    produce(broker, item_records(p) + click_records(p, bg + mine, "a"))
    base = worker.wait_applied(len(bg) + len(mine))["model"]
    before = worker.recommend(user)
    assert before["user_id"] == user and len(before["items"]) == 10 and before["model"] == base
    before_ids = [i["item_id"] for i in before["items"]]

    horror = [(user, f"{p}-h{k}") for k in range(5)]
    sent = time.monotonic()
    produce(broker, click_records(p, horror, "b"))
    after = before
    while time.monotonic() - sent < 30:
        after = worker.recommend(user)
        if [i["item_id"] for i in after["items"]] != before_ids:
            break
        time.sleep(0.1)
    took = time.monotonic() - sent
    after_ids = [i["item_id"] for i in after["items"]]
    assert after_ids != before_ids, f"recommendations did not change in 30 s; log:\n{worker.log()[-3000:]}"
    assert took < 10, took
    assert not {f"{p}-h{k}" for k in range(5)} & set(after_ids)  # just-clicked items are excluded
    n_horror = sum("-h" in i for i in after_ids)
    assert n_horror > sum("-h" in i for i in before_ids), (before_ids, after_ids)


def test_requests_topic_is_answered_and_bad_clicks_are_dead_lettered(broker: str, worker: RecsWorker) -> None:
    p = f"q{uuid.uuid4().hex[:6]}"
    bad = OutRecord(topics.CLICKS, f"{p}-bad".encode(), json.dumps({"id": f"{p}-bad", "event": "click"}).encode())
    req = {"id": f"{p}-req", "user_id": f"{p}-anyone", "k": 4}
    produce(broker, [bad, OutRecord(topics.RECS_REQUESTS, req["id"].encode(), json.dumps(req).encode())])
    [resp] = collect(broker, topics.RECS_RESPONSES, 1, match=p, worker=worker, timeout_s=60)
    assert resp["user_id"] == f"{p}-anyone" and len(resp["items"]) == 4 and resp["model"].startswith("recs-")
    cli = subprocess.run([sys.executable, "-m", "streams.cli", "recommend", f"{p}-anyone", "-k", "3", "--url",
                          f"http://127.0.0.1:{worker.web_port}"], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert cli.returncode == 0, cli.stderr
    printed = json.loads(cli.stdout)
    assert printed["user_id"] == f"{p}-anyone" and len(printed["items"]) == 3
    dead = None
    for rec in read_topic(Settings(bootstrap=broker), broker, topics.DEADLETTER, timeout_s=60,
                          stop=lambda r: r.key == f"{p}-bad".encode()):
        if rec.key == f"{p}-bad".encode():
            dead = json.loads(rec.value)
    assert dead is not None and dead["processor"] == "recs" and "user_id" in dead["reason"], dead


def test_restart_loads_checkpoint_and_replays_up_to_committed_offsets(tmp_path: Path) -> None:
    """Own broker: a new group starts at the beginning of clicks, so the counts must not see other tests."""
    from streams.runtime.embedded import EmbeddedBroker
    from streams.runtime.kafka_io import ensure_topics

    with EmbeddedBroker(log_path=tmp_path / "tansu.log", tansu_bin=Settings.from_env().tansu_bin) as embedded:
        ensure_topics(Settings(bootstrap=embedded.bootstrap), embedded.bootstrap)
        restart_scenario(embedded.bootstrap, tmp_path)


def restart_scenario(broker: str, tmp_path: Path) -> None:
    p = f"k{uuid.uuid4().hex[:6]}"
    env = {"STREAMSENSE_STATE_DIR": str(tmp_path / "state"), "STREAMSENSE_RECS_CHECKPOINT_EVENTS": "40",
           "STREAMSENSE_RECS_CHECKPOINT_S": "3600", "STREAMSENSE_RECS_CONTENT": "0"}
    app_id = f"test-{p}"
    first = RecsWorker(broker, tmp_path, processors="recs", app_id=app_id, env=env).start()
    try:
        first.wait_ready(timeout_s=120)
        produce(broker, click_records(p, [(f"{p}-u{n % 5}", f"{p}-i{n % 13}") for n in range(40)], "a"))
        first.wait_applied(40)
        first.wait_for_log("recs checkpoint recs-online-mf@1.0+40")
        produce(broker, click_records(p, [(f"{p}-u{n % 5}", f"{p}-j{n}") for n in range(10)], "b"))
        first.wait_applied(50)
        time.sleep(3)  # Faust commits acked offsets every second
    finally:
        first.kill()
    [pointer] = state_records(broker, app_id)
    assert pointer.location == "file" and pointer.meta["model"] == "recs-online-mf@1.0+40", pointer
    assert {t for t, _ in pointer.offsets} == {topics.CLICKS}
    assert sum(o + 1 for o in pointer.offsets.values()) == 40, pointer.offsets  # own broker: clicks began empty
    file = Path(pointer.path or "")
    assert file.parent == tmp_path / "state" / app_id / "recs" and file.stat().st_size == pointer.size
    second = RecsWorker(broker, tmp_path, processors="recs", app_id=app_id, env=env).start()
    try:
        second.wait_ready(timeout_s=120)  # ready only once restored and replayed
        log = second.log()
        assert f"recs: restored 1 checkpoint(s) from {topics.RECS_STATE}" in log, log[-3000:]
        assert "replayed 10 records of clicks, items up to the committed offsets" in log, log[-3000:]
        second.wait_applied(50, timeout_s=10)
    finally:
        assert second.stop() == 0, second.log()[-3000:]


def state_records(broker: str, app_id: str) -> list[StateRecord]:
    """The recs checkpoint pointers of ``app_id`` on recs.state (state records, streams/contracts/state.py)."""
    found = []
    for rec in read_topic(Settings(bootstrap=broker), broker, topics.RECS_STATE, timeout_s=15, idle_timeout_s=3):
        if rec.key == state_key(app_id, app_id) and rec.value is not None:
            found.append(decode_state_record(rec.value))
    return found


def test_replicas_each_hold_the_whole_model_and_one_survives_the_other(tmp_path: Path) -> None:
    """The recs scaling model: replicas with distinct app ids, each reading every partition of clicks and items
    (its own group), each a complete model that serves /recommend and answers recs.requests. One SIGKILLed: the
    other keeps absorbing clicks and serving; the killed one restarts from its checkpoint, replays, and reaches
    the same applied count. Own broker: the applied counts must not see other tests' clicks."""
    from streams.runtime.batch_source import batch_group_id
    from streams.runtime.embedded import EmbeddedBroker
    from streams.runtime.kafka_io import ensure_topics
    from streams.runtime.recovery import kafka_committed_offsets

    p = f"rep{uuid.uuid4().hex[:6]}"
    env = {"STREAMSENSE_STATE_DIR": str(tmp_path / "state"), "STREAMSENSE_RECS_CHECKPOINT_EVENTS": "50",
           "STREAMSENSE_RECS_CONTENT": "0"}
    with EmbeddedBroker(log_path=tmp_path / "tansu.log", tansu_bin=Settings.from_env().tansu_bin) as embedded:
        broker = embedded.bootstrap
        ensure_topics(Settings(bootstrap=broker), broker)
        a = RecsWorker(broker, tmp_path, processors="recs", app_id=f"{p}-a", env=env).start()
        b = RecsWorker(broker, tmp_path, processors="recs", app_id=f"{p}-b", env=env).start()
        try:
            a.wait_ready(timeout_s=180)
            b.wait_ready(timeout_s=180)
            first = background(p)  # 180 clicks over every clicks partition (keyed by 30 users)
            produce(broker, click_records(p, first, "a"))
            for replica in (a, b):
                replica.wait_applied(len(first), timeout_s=90)
            request = {"id": f"{p}-req1", "user_id": f"{p}-b1", "k": 5}
            produce(broker, [OutRecord(topics.RECS_REQUESTS, request["id"].encode(), json.dumps(request).encode())])
            answers = read_answers(broker, request["id"], want=2)
            assert len(answers) == 2 and all(len(r["items"]) == 5 for r in answers), answers  # one per replica

            a.kill()
            second = [(f"{p}-b{u}", f"{p}-{'c' if u % 2 else 'h'}{(u + 7) % 20}") for u in range(30)]
            produce(broker, click_records(p, second, "b"))
            total = len(first) + len(second)
            served = b.wait_applied(total, timeout_s=90)  # the survivor absorbs and serves on its own
            assert served["model"].endswith(f"+{total}")
            user_items = {i["item_id"] for i in b.recommend(f"{p}-b3")["items"]}
            assert not user_items & {item for user, item in first + second if user == f"{p}-b3"}  # clicked: excluded

            restarted = RecsWorker(broker, tmp_path, processors="recs", app_id=f"{p}-a", env=env).start()
            try:
                restarted.wait_ready(timeout_s=180)  # ready once restored and replayed up to its committed offsets
                restarted.wait_applied(total, timeout_s=90)  # and then caught up with what it missed
                log = restarted.log()
                assert f"recs: restored 1 checkpoint(s) from {topics.RECS_STATE}" in log, log[-3000:]
                again = {i["item_id"] for i in restarted.recommend(f"{p}-b3")["items"]}
                assert not again & {item for user, item in first + second if user == f"{p}-b3"}
            finally:
                assert restarted.stop() == 0, restarted.log()[-3000:]
            # a clean stop commits what was delivered (the batch path's own group: streams/runtime/batch_source.py)
            committed = kafka_committed_offsets(Settings(bootstrap=broker), broker, [topics.CLICKS],
                                                batch_group_id(f"{p}-a", "recs"))
            assert sum(committed.values()) == total, committed  # own broker: clicks began empty
        finally:
            for replica in (a, b):
                if replica.proc is not None and replica.proc.poll() is None:
                    replica.kill()


def read_answers(broker: str, request_id: str, want: int) -> list[dict]:
    """Every response to one request (replicas each answer it: the responses share its id)."""
    found: list[dict] = []
    for rec in read_topic(Settings(bootstrap=broker), broker, topics.RECS_RESPONSES, timeout_s=60,
                          stop=lambda _r: len(found) >= want):
        if rec.key == request_id.encode():
            found.append(json.loads(rec.value))
    return found
