"""Chaos, in the spirit of Faust's stress killer: workers of every kind are SIGKILLed at random and restarted
while a bounded stream of text, audio and clicks flows; afterwards nothing is lost.

Five real `streamsense run` processes on a broker of the test's own (new groups read their topics from the
beginning, so every count is exact): two text workers in one group, two ASR workers in another, one recs worker
(one per app id, by design). Inputs go out in waves; a seeded plan SIGKILLs (no commit, no leave-group, no flush)
a worker of each kind at least once and restarts it with the same app id after a random pause. At-least-once
then promises, and the test checks: every input id comes out (good inputs on their output topic, bad ones on
``deadletter``); duplicates carry the same id and the same content, so consumers collapse them by id; every
speech stream's finals are all there, once each by id, and right; the recommender holds every click exactly once
and each user's clicks. Replay a failure's kill plan with ``STREAMSENSE_CHAOS_SEED=<the seed it printed>``.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import threading
import time
import wave
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from models.wer import wer
from streams.audio_producer import pcm16_chunks
from streams.contracts import topics
from streams.contracts.records import OutRecord, RawRecord
from streams.contracts.schemas import encode, text_in_event
from streams.contracts.settings import Settings
from streams.runtime.kafka_io import read_topic
from tests.integration.harness import WorkerProcess, produce, restarted

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SEED_ENV = "STREAMSENSE_CHAOS_SEED"
SENTENCE = "Please send the quarterly report to the finance team in London by Friday."
TEXTS = ("{name} flew from {city} to Rome and loved every minute of it",
         "{name} waited four hours at the {city} airport, awful service",
         "The {city} office of Acme opened on Monday, {name} said")
NAMES = ("Alice", "Bob", "Carol", "Dan")
CITIES = ("Paris", "Leeds", "Oslo", "Berlin")

# Sized for ~3-4 minutes on 2 shared cores: ~40 s to start five workers, 64 s of waves with the kills among
# them, then the backlog the kills left.
WAVES, WAVE_EVERY_S = 8, 8.0
TEXTS_PER_WAVE, CLICKS_PER_WAVE, REQUESTS_PER_WAVE = 100, 60, 3
SPEECH_WAVES = (0, 2, 4, 6)  # a speech stream of UTTERANCES spoken sentences starts in each
UTTERANCES = 2
USERS, ITEMS = 20, 60
KILLS = 4
DOWN_S = (0.5, 3.0)  # how long a killed worker stays down before its restart
ROLES = {"text-a": "text", "text-b": "text", "asr-a": "asr", "asr-b": "asr", "recs": "recs"}
OUTPUTS = (topics.TEXT_ENRICHED, topics.ASR_TRANSCRIPTS, topics.RECS_RESPONSES, topics.DEADLETTER)


@dataclass
class Expected:
    """The inputs, wave by wave, and what at-least-once promises for them, by output topic."""

    waves: list[list[OutRecord]] = field(default_factory=list)
    ids: dict[str, set[str]] = field(default_factory=lambda: {t: set() for t in OUTPUTS})
    streams: dict[str, int] = field(default_factory=dict)  # speech stream id -> its number of finals
    clicked: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))  # user -> items (valid clicks)
    valid_clicks: int = 0
    counts: Counter[str] = field(default_factory=Counter)  # inputs by kind, for the summary


@dataclass(frozen=True)
class Kill:
    at_s: float  # since the first wave; a lower bound: a victim still starting is first waited for
    role: str
    down_s: float


def pcm_of(path: Path) -> tuple[bytes, int]:
    with wave.open(str(path)) as w:
        return w.readframes(w.getnframes()), w.getframerate()


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, int]:
    """One spoken SENTENCE (flite; `make` installs it) as PCM16 and its sample rate."""
    path = Path(tmp_path_factory.mktemp("flite")) / "sentence.wav"
    subprocess.run(["flite", "-voice", "rms", "-t", SENTENCE, "-o", str(path)], check=True, timeout=60)
    return pcm_of(path)


def expected(tag: str, rng: random.Random, speech: tuple[bytes, int]) -> Expected:
    """Each wave: text events (one of them empty: a dead letter), clicks (one without a user: a dead letter),
    recommendation requests and, in SPEECH_WAVES, a speech stream of UTTERANCES sentences, each ended by a
    second of silence so it is one final. Finals also reach text.enriched (the ASR worker sends them to text.in)."""
    pcm, rate = speech
    want = Expected()
    for w in range(WAVES):
        records: list[OutRecord] = []
        if w in SPEECH_WAVES:
            sid = f"{tag}-s{w}"
            records += pcm16_chunks((pcm + b"\0\0" * rate) * UTTERANCES, rate, 1, sid, chunk_ms=400)
            want.streams[sid] = UTTERANCES
            finals = {f"{sid}:{i}" for i in range(UTTERANCES)}
            want.ids[topics.ASR_TRANSCRIPTS] |= finals
            want.ids[topics.TEXT_ENRICHED] |= finals
            want.counts["utterances"] += UTTERANCES
        for n in range(CLICKS_PER_WAVE):
            click = {"id": f"{tag}-c{w}-{n:02d}", "user_id": f"{tag}-u{rng.randrange(USERS)}",
                     "item_id": f"{tag}-i{rng.randrange(ITEMS)}", "event": "click", "ts": w * 1000 + n}
            want.clicked[click["user_id"]].add(click["item_id"])
            want.valid_clicks += 1
            records.append(OutRecord(topics.CLICKS, click["user_id"].encode(), encode(click)))
        bad_click = {"id": f"{tag}-c{w}-bad", "item_id": f"{tag}-i0", "event": "click"}
        records.append(OutRecord(topics.CLICKS, bad_click["id"].encode(), encode(bad_click)))
        want.ids[topics.DEADLETTER].add(bad_click["id"])
        want.counts["clicks"] += CLICKS_PER_WAVE + 1
        for n in range(REQUESTS_PER_WAVE):
            request = {"id": f"{tag}-r{w}-{n}", "user_id": f"{tag}-u{rng.randrange(USERS)}", "k": 5}
            records.append(OutRecord(topics.RECS_REQUESTS, request["id"].encode(), encode(request)))
            want.ids[topics.RECS_RESPONSES].add(request["id"])
        want.counts["requests"] += REQUESTS_PER_WAVE
        for n in range(TEXTS_PER_WAVE):
            text = rng.choice(TEXTS).format(name=rng.choice(NAMES), city=rng.choice(CITIES))
            event = text_in_event(text, event_id=f"{tag}-t{w}-{n:02d}", source="test")
            records.append(OutRecord(topics.TEXT_IN, event["id"].encode(), encode(event)))
            want.ids[topics.TEXT_ENRICHED].add(event["id"])
        empty = {"id": f"{tag}-t{w}-empty", "text": "", "source": "test"}
        records.append(OutRecord(topics.TEXT_IN, empty["id"].encode(), encode(empty)))
        want.ids[topics.DEADLETTER].add(empty["id"])
        want.counts["texts"] += TEXTS_PER_WAVE + 1
        want.waves.append(records)
    return want


def kill_plan(rng: random.Random) -> list[Kill]:
    """KILLS kills: a worker of each kind, the rest any worker, in random order. The waves are cut into KILLS
    equal slots and each kill falls 1-4 s after a random wave of its slot, while that wave is being worked
    on (killing an idle worker tests little), and its restart has the rest of the slot to finish."""
    victims = [rng.choice(["text-a", "text-b"]), rng.choice(["asr-a", "asr-b"]), "recs"]
    victims += [rng.choice(sorted(ROLES)) for _ in range(KILLS - len(victims))]
    rng.shuffle(victims)
    per_slot = WAVES // KILLS
    return [Kill(round((i * per_slot + rng.randrange(per_slot)) * WAVE_EVERY_S + rng.uniform(1.0, 4.0), 1), role,
                 round(rng.uniform(*DOWN_S), 1)) for i, role in enumerate(victims)]


def start_workers(broker: str, log_dir: Path) -> dict[str, WorkerProcess]:
    """One app id per kind (= its consumer group). The recs checkpoint is due every 200 clicks (every 4th
    wave), so most recs kills land between checkpoints and the restart must replay the clicks from the
    checkpoint up to the committed offsets.

    ASR keeps its default idle timeout (10 s): this test found that a hand-over, a restart or a slow batch used to
    count as the source's silence and cut utterances in two (``AsrProcessor.idle_now``)."""
    apps = {kind: f"chaos-{kind}-{os.urandom(3).hex()}" for kind in set(ROLES.values())}
    env = {"recs": {"STREAMSENSE_STATE_DIR": str(log_dir / "state"), "STREAMSENSE_RECS_CHECKPOINT_EVENTS": "200"}}
    return {role: WorkerProcess(broker, log_dir, processors=kind, app_id=apps[kind], env=env.get(kind)).start()
            for role, kind in ROLES.items()}


def send_waves(broker: str, waves: list[list[OutRecord]], start: float, stop: threading.Event) -> None:
    for i, records in enumerate(waves):
        if stop.wait(max(0.0, start + i * WAVE_EVERY_S - time.monotonic())):
            return
        produce(broker, records)


def run_chaos(broker: str, workers: dict[str, WorkerProcess], retired: list[WorkerProcess], plan: list[Kill],
              waves: list[list[OutRecord]]) -> Counter[str]:
    """Send the waves on their schedule from a thread while this one carries out the kill plan; returns the
    kills by kind. A victim is first waited for until ready, so it is always killed while it serves."""
    kills: Counter[str] = Counter()
    start, stop = time.monotonic(), threading.Event()
    with ThreadPoolExecutor(max_workers=1) as pool:
        sending = pool.submit(send_waves, broker, waves, start, stop)
        try:
            for kill in plan:
                time.sleep(max(0.0, start + kill.at_s - time.monotonic()))
                victim = workers[kill.role]
                victim.wait_ready(timeout_s=240)
                victim.kill()
                kills[ROLES[kill.role]] += 1
                retired.append(victim)
                time.sleep(kill.down_s)
                workers[kill.role] = restarted(victim).start()
            sending.result(timeout=WAVES * WAVE_EVERY_S + 120)
        finally:
            stop.set()
    return kills


def output_id(record: RawRecord) -> str | None:
    """The id an output record answers: the event id (text.enriched, recs.responses: the record key), a final
    transcript's id (its value; partials and gap events answer no input), a dead letter's original key."""
    if record.topic == topics.ASR_TRANSCRIPTS:
        event = json.loads(record.value or b"{}")
        return event["id"] if event.get("final") else None
    return (record.key or b"").decode()


def wait_for_outputs(broker: str, want: Expected, alive: Callable[[], bool], timeout_s: float) -> None:
    """Follow the output topics until every expected id came out, the deadline passed or a worker died."""
    missing = {t: set(ids) for t, ids in want.ids.items()}

    def stop(record: RawRecord) -> bool:
        missing[record.topic].discard(output_id(record) or "")
        return not any(missing.values())

    for _ in read_topic(Settings(bootstrap=broker), broker, list(OUTPUTS), timeout_s=timeout_s, stop=stop,
                        abort=lambda: not alive()):
        pass


def read_outputs(broker: str) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Every output event by topic and by the id it answers, duplicates included (read until 5 s idle); ASR
    events that answer no input (partials, gaps) are kept under "" so the test can see them."""
    out: dict[str, dict[str, list[dict[str, Any]]]] = {t: defaultdict(list) for t in OUTPUTS}
    for record in read_topic(Settings(bootstrap=broker), broker, list(OUTPUTS), timeout_s=120, idle_timeout_s=5):
        out[record.topic][output_id(record) or ""].append(json.loads(record.value or b"{}"))
    return out


def content(topic: str, event: dict[str, Any]) -> Any:
    """What must be equal in every copy of one id for consumers to keep any of them (not ts, latency, scores)."""
    if topic == topics.TEXT_ENRICHED:
        return (event["text"], event["sentiment"]["label"],
                sorted((e["text"], e["label"], e["start"], e["end"]) for e in event["entities"]))
    if topic == topics.ASR_TRANSCRIPTS:
        return event["text"], event["start"], event["end"]
    if topic == topics.RECS_RESPONSES:
        return event["user_id"], len(event["items"])
    return event["id"], event["reason"]  # deadletter: the input's position and why


def recs_model(recs: WorkerProcess, clicks: int, timeout_s: float) -> str:
    """The recommender's model version once it says ``+<clicks>`` applied (or the last one seen at the deadline):
    the version counts distinct click ids applied, so it is exact only if no click was lost or applied twice."""
    deadline, model = time.monotonic() + timeout_s, ""
    while time.monotonic() < deadline:
        status, body = recs.get("/recommend/nobody?k=1")
        model = body["model"] if status == 200 else f"HTTP {status}: {body}"
        if model.endswith(f"+{clicks}"):
            break
        time.sleep(0.5)
    return model


def check(want: Expected, out: dict[str, dict[str, list[dict[str, Any]]]], model: str,
          recommended: dict[str, list[str]]) -> tuple[dict[str, int], dict[str, int], list[str]]:
    """(lost ids by topic, duplicate records by topic, every problem found)."""
    problems: list[str] = []
    lost = {t: len(want.ids[t] - out[t].keys()) for t in OUTPUTS}
    duplicates = {t: sum(len(copies) - 1 for i, copies in out[t].items() if i) for t in OUTPUTS}
    for t in OUTPUTS:
        if missing := sorted(want.ids[t] - out[t].keys()):
            problems.append(f"lost on {t}: {len(missing)}, e.g. {missing[:10]}")
        if extra := sorted(out[t].keys() - want.ids[t] - {""}):
            problems.append(f"unexpected ids on {t}: {extra[:10]}")
        for i, copies in out[t].items():
            if i and len({json.dumps(content(t, e), sort_keys=True) for e in copies}) > 1:
                problems.append(f"{t}: the {len(copies)} copies of {i} differ: {[content(t, e) for e in copies]}")
    if no_answer := out[topics.ASR_TRANSCRIPTS].get(""):
        problems.append(f"asr.transcripts events that are not finals (gaps, partials): {no_answer[:5]}")
    for sid, n in want.streams.items():
        finals = sorted((copies[0] for i, copies in out[topics.ASR_TRANSCRIPTS].items() if i.startswith(f"{sid}:")),
                        key=lambda e: e["start"])
        text = " ".join(e["text"] for e in finals)
        if len(finals) != n or wer(" ".join([SENTENCE] * n), text) > 0.15:
            problems.append(f"speech stream {sid}: {len(finals)} finals, want {n}: {text!r}")
    if not model.endswith(f"+{want.valid_clicks}"):
        problems.append(f"the recommender's model is {model}, want +{want.valid_clicks} clicks applied")
    for user, items in recommended.items():
        if not items or set(items) & want.clicked[user]:
            problems.append(f"/recommend/{user}: {items} (clicked: {sorted(want.clicked[user])})")
    return lost, duplicates, problems


def recovered(workers: list[WorkerProcess]) -> str:
    """What the restarts and hand-overs had to recover, from the workers' progress lines (the recovery tests
    assert these lines too): speech streams' checkpoints restored from asr.state by a restarted worker or the
    one taking its partitions over, records replayed by the recommender from its checkpoint up to the committed
    offsets. Shows that the kills hit work in progress."""
    logs = "".join(w.log() for w in workers)
    streams = sum(int(n) for n in re.findall(r"asr: restored (\d+) checkpoint", logs))
    clicks = sum(int(n) for n in re.findall(r"recs: replayed (\d+) records", logs))
    return f"asr stream checkpoints restored={streams} recs records replayed={clicks}"


def test_random_sigkills_of_workers_of_every_kind_lose_nothing(own_broker: str, speech: tuple[bytes, int],
                                                               tmp_path: Path) -> None:
    seed = int(os.environ.get(SEED_ENV) or random.SystemRandom().randrange(1_000_000))
    rng = random.Random(seed)
    want = expected(f"x{seed}", rng, speech)
    plan = kill_plan(rng)
    print(f"chaos seed={seed}, kill plan: " + ", ".join(f"{k.role} at {k.at_s} s down {k.down_s} s" for k in plan))
    began = time.monotonic()
    workers = start_workers(own_broker, tmp_path)
    retired: list[WorkerProcess] = []

    def alive() -> bool:
        return all(w.proc is not None and w.proc.poll() is None for w in workers.values())

    def report() -> str:
        """How to replay this run, and the end of every worker's log (all of them are under tmp_path)."""
        logs = "\n".join(f"--- {w.log_path}\n{w.log()[-1500:]}" for w in [*retired, *workers.values()])
        return f"rerun with {SEED_ENV}={seed}\n{logs}"

    try:
        for w in workers.values():
            w.wait_ready(timeout_s=240)
        kills = run_chaos(own_broker, workers, retired, plan, want.waves)
        for w in workers.values():
            w.wait_ready(timeout_s=240)
        wait_for_outputs(own_broker, want, alive, timeout_s=300)
        assert alive(), f"a worker exited by itself\n{report()}"
        model = recs_model(workers["recs"], want.valid_clicks, timeout_s=60)
        recommended: dict[str, list[str]] = {}
        for user in sorted(want.clicked):
            status, body = workers["recs"].get(f"/recommend/{user}?k=10")
            recommended[user] = [i["item_id"] for i in body["items"]] if status == 200 else []
        out = read_outputs(own_broker)
        recovery = recovered([*retired, *workers.values()])  # before the shutdown's own hand-overs
    finally:
        with ThreadPoolExecutor(max_workers=len(workers)) as pool:  # all at once: no rebalance per stop
            codes = dict(zip(workers, pool.map(WorkerProcess.stop, workers.values()), strict=True))
    lost, duplicates, problems = check(want, out, model, recommended)
    problems += [f"{role} exited with {code} on SIGTERM" for role, code in codes.items() if code != 0]
    summary = (f"chaos seed={seed}: {sum(kills.values())} kills ("
               + ", ".join(f"{kind} {kills[kind]}" for kind in ("text", "asr", "recs")) + "); duplicates "
               + " ".join(f"{t}={n}" for t, n in duplicates.items()) + f"; lost={sum(lost.values())}; "
               + recovery + "; inputs "
               + " ".join(f"{k}={n}" for k, n in sorted(want.counts.items()))
               + f"; {time.monotonic() - began:.0f} s")
    print(summary)
    assert not problems, f"{summary}\n" + "\n".join(problems) + f"\n{report()}"
