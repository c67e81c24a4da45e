"""Online recommender through the broker: click absorption, index upserts, recommend latency, each with its
baseline measured in the same run.

1. absorb: N synthetic Zipf clicks are produced to a bench topic on the embedded broker, then consumed with
   kafka-python and fed to the recs processor (``RecsProcessor.process``, the code the Faust agent runs) in
   micro-batches; events/s from the first poll to the last applied event. Baseline: the same records
   consumed the same way and applied one event per ``update`` (what a per-message consumer loop does).
   Then the production path: a real ``streamsense run --processors recs`` worker consumes the same number of
   clicks from the ``clicks`` topic; events/s from its /metrics consumed counter. ``--worker-runs N`` runs it N
   times on each path, alternating: the batch path (aiokafka getmany, the default) and, as its baseline, the
   Faust agent (``STREAMSENSE_BATCH_CONSUMER=""``); medians and their ratio.
2. upsert: rows/s of ``ItemIndex.upsert`` in chunks vs rebuilding the whole index for each chunk.
3. recommend: p50/p99 of ``model.recommend(user, 10)`` with the index in sync, at 10k and 100k items, vs the
   brute-force baseline (numpy: score every item, mask seen, argpartition) on the same vectors.

    .venv/bin/python bench/recs.py [--events 20000] [--items 10000,100000] [--queries 500] [--worker-runs 3]
    .venv/bin/python bench/recs.py --worker-only --worker-runs 3   # the worker paths alone

The content tower is off by default (``--content`` turns it on): it costs ~10 s of wordllama encoding per
100k items at start and does not change the per-request work. The last line prints a ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import torch
from kafka import KafkaConsumer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import cpu_model
from models.recs import ItemIndex, OnlineRecommender, RecsConfig
from models.recs.events import ClickEvent
from processors.recs import RecsProcessor
from streams.contracts import topics
from streams.contracts.records import OutRecord, RawRecord
from streams.contracts.settings import Settings
from streams.contracts.topics import TopicSpec
from streams.runtime.embedded import EmbeddedBroker
from streams.runtime.kafka_io import client_kwargs, ensure_topics, make_producer, send_all
from streams.runtime.launcher import WorkerProcess


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def zipf_clicks(n: int, n_users: int, n_items: int, seed: int, prefix: str) -> list[dict]:
    rng = np.random.default_rng(seed)
    users = rng.zipf(1.3, n) % n_users
    items = rng.zipf(1.2, n) % n_items
    return [{"id": f"{prefix}-{k}", "user_id": f"u{u}", "item_id": f"i{i}", "event": "click", "ts": k}
            for k, (u, i) in enumerate(zip(users, items, strict=True))]


def new_model(content: bool) -> OnlineRecommender:
    if content:
        from models.recs.content import default_encoder

        enc = default_encoder(RecsConfig().content_dim)
        return OnlineRecommender(RecsConfig(use_content=enc is not None), encoder=enc)
    return OnlineRecommender(RecsConfig(use_content=False))


def catalog(n: int) -> list[dict]:
    genres = ["Action", "Comedy", "Drama", "Horror", "Romance", "Sci-Fi", "Thriller", "Animation"]
    return [{"item_id": f"i{k}", "title": f"Film {k}", "genres": f"{genres[k % 8]}|{genres[(k // 8) % 8]}"}
            for k in range(n)]


def consume(settings: Settings, bootstrap: str, topic: str, want: int, on_batch, timeout_s: float = 600.0) -> float:
    """Poll `topic` from the beginning, hand each poll's records to on_batch; seconds until `want` were seen."""
    consumer = KafkaConsumer(topic, **client_kwargs(settings, bootstrap), group_id=None,
                             auto_offset_reset="earliest", enable_auto_commit=False, max_poll_records=2000,
                             fetch_max_bytes=16 * 1024 * 1024)
    seen, started = 0, None
    deadline = time.monotonic() + timeout_s
    try:
        while seen < want and time.monotonic() < deadline:
            polled = consumer.poll(timeout_ms=200, max_records=2000)
            if started is None:
                started = time.perf_counter()
            for messages in polled.values():
                recs = [RawRecord(m.topic, m.partition, m.offset, m.key, m.value, m.timestamp) for m in messages]
                on_batch(recs[: want - seen])
                seen += len(recs)
    finally:
        consumer.close()
    return time.perf_counter() - (started or time.perf_counter())


def bench_absorb(args: argparse.Namespace, bootstrap: str, n_items: int) -> dict:
    settings = Settings(bootstrap=bootstrap)
    spec = TopicSpec(f"bench.clicks.{uuid.uuid4().hex[:6]}", "bench clicks", partitions=4)
    ensure_topics(settings, bootstrap, [spec])
    events = zipf_clicks(args.events, args.users, n_items, 1, "b")
    producer = make_producer(settings, bootstrap, linger_ms=20, batch_size=256 * 1024)
    t0 = time.perf_counter()
    send_all(producer, [OutRecord(spec.name, e["user_id"].encode(), json.dumps(e).encode()) for e in events])
    producer.close()
    produce_s = time.perf_counter() - t0

    model = new_model(args.content)
    model.add_items(catalog(n_items))
    proc = RecsProcessor(model, batch_size=args.batch_size)
    pending: list[RawRecord] = []

    def feed(recs: list[RawRecord]) -> None:
        pending.extend(RawRecord(topics.CLICKS, r.partition, r.offset, r.key, r.value) for r in recs)
        while len(pending) >= args.batch_size:
            proc.process(pending[: args.batch_size])
            del pending[: args.batch_size]

    stream_s = consume(settings, bootstrap, spec.name, len(events), feed)
    if pending:
        t = time.perf_counter()
        proc.process(pending)
        stream_s += time.perf_counter() - t
    assert model.n_applied == len(events), (model.n_applied, len(events))

    base = new_model(args.content)
    base.add_items(catalog(n_items))
    n_base = min(args.baseline_events, len(events))

    def one_by_one(recs: list[RawRecord]) -> None:
        for r in recs:
            base.update([ClickEvent.from_dict(json.loads(r.value or b"{}"))])

    base_s = consume(settings, bootstrap, spec.name, n_base, one_by_one)
    return {"events": len(events), "produce_s": produce_s, "stream_eps": len(events) / stream_s,
            "baseline_events": n_base, "baseline_eps": n_base / base_s}


def consumed_clicks(port: int) -> float | None:
    """The worker's consumed-clicks counter from /metrics; None while its web server is not up."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    m = re.search(r'streamsense_events_consumed_total\{processor="recs",topic="clicks"\} (\S+)', text)
    return float(m.group(1)) if m else 0.0


def bench_worker_absorb(args: argparse.Namespace, bootstrap: str, batch: bool = True) -> dict:
    """Clicks/s through a real worker process: its consumer (the batch path, or with ``batch`` False a Faust
    agent), the runner's pipeline, the recs processor."""
    settings = Settings(bootstrap=bootstrap)
    ensure_topics(settings, bootstrap)
    events = zipf_clicks(args.events, args.users, 10_000, 4, "w")
    producer = make_producer(settings, bootstrap, linger_ms=20, batch_size=256 * 1024)
    send_all(producer, [OutRecord(topics.CLICKS, e["user_id"].encode(), json.dumps(e).encode()) for e in events])
    producer.close()
    with tempfile.TemporaryDirectory() as state:
        worker = WorkerProcess(bootstrap, Path(state), processors="recs", app_id=f"bench-{uuid.uuid4().hex[:6]}",
                               env={"STREAMSENSE_STATE_DIR": state,
                                    "STREAMSENSE_RECS_CONTENT": "1" if args.content else "0",
                                    "STREAMSENSE_BATCH_CONSUMER": "recs" if batch else ""}).start()
        try:
            first: tuple[float, float] | None = None
            done = None
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline and worker.proc.poll() is None:
                n = consumed_clicks(worker.web_port)
                if n and first is None:
                    first = (time.perf_counter(), n)
                if n is not None and n >= len(events):
                    done = time.perf_counter()
                    break
                time.sleep(0.05)
            if first is None or done is None:
                raise RuntimeError(f"worker did not consume {len(events)} clicks; log:\n{worker.log()[-3000:]}")
        finally:
            worker.stop(timeout_s=60)
    return {"events": len(events), "eps": (len(events) - first[1]) / (done - first[0])}


def bench_upsert(n_items: int, dim: int, chunk: int, rounds: int) -> dict:
    rng = np.random.default_rng(2)
    vecs = rng.standard_normal((n_items, dim)).astype(np.float32)
    ids = np.arange(n_items, dtype=np.int64)
    idx = ItemIndex(dim)
    idx.replace_all(ids, vecs)
    t = time.perf_counter()
    for _ in range(rounds):
        pick = rng.choice(n_items, chunk, replace=False).astype(np.int64)
        idx.upsert(pick, vecs[pick] + 0.01)
    upsert_rps = rounds * chunk / (time.perf_counter() - t)
    t = time.perf_counter()
    for _ in range(max(1, rounds // 4)):
        rebuilt = ItemIndex(dim)
        rebuilt.replace_all(ids, vecs)
    rebuild_rps = max(1, rounds // 4) * chunk / (time.perf_counter() - t)
    return {"items": n_items, "chunk": chunk, "upsert_rows_s": upsert_rps, "rebuild_rows_s": rebuild_rps}


def bench_recommend(args: argparse.Namespace, n_items: int) -> dict:
    model = new_model(args.content)
    model.add_items(catalog(n_items))
    clicks = zipf_clicks(args.warm_events, args.users, n_items, 3, f"w{n_items}")
    for k in range(0, len(clicks), 512):
        model.update([ClickEvent.from_dict(c) for c in clicks[k : k + 512]])
    users = [u for u in dict.fromkeys(c["user_id"] for c in clicks) if model.is_warm(u)][: args.queries]
    cold_first = time.perf_counter()
    model.recommend(users[0], 10)  # first call after the updates: full index refresh
    first_ms = (time.perf_counter() - cold_first) * 1000
    lat = []
    for u in users:
        t = time.perf_counter()
        model.recommend(u, 10)
        lat.append((time.perf_counter() - t) * 1000)
    with torch.no_grad():
        mat = model.item_vectors().numpy().copy()
    offsets = model.item_offsets()
    base = []
    for u in users:
        t = time.perf_counter()
        ui = model._uidx[u]
        s = mat @ model.t.user[ui].numpy() + offsets
        if model.config.covis_weight:
            s = s + model.config.covis_weight * model.covis_scores(ui)
        seen = list(model.seen.get(ui, ()))
        s[seen] = -np.inf
        top = np.argpartition(-s, 10)[:10]
        top[np.argsort(-s[top])]
        base.append((time.perf_counter() - t) * 1000)
    return {"items": n_items, "queries": len(users), "first_after_update_ms": first_ms,
            "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99), "brute_p50_ms": pct(base, 50),
            "brute_p99_ms": pct(base, 99)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=50_000, help="clicks absorbed through the broker")
    p.add_argument("--baseline-events", type=int, default=2000, help="clicks for the one-by-one baseline")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--users", type=int, default=5000)
    p.add_argument("--items", default="10000,100000", help="catalog sizes for the recommend latency")
    p.add_argument("--warm-events", type=int, default=20_000, help="clicks applied before timing recommend")
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--upsert-chunk", type=int, default=1000)
    p.add_argument("--upsert-rounds", type=int, default=20)
    p.add_argument("--content", action="store_true", help="with the wordllama content tower")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--worker-runs", type=int, default=1, help="worker absorb runs on each path (medians)")
    p.add_argument("--worker-only", action="store_true", help="only the worker absorb runs")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    sizes = [int(s) for s in args.items.split(",") if s]
    print(f"# {cpu_model()}, {os.cpu_count()} cores, torch threads {args.threads}, "
          f"content {'on' if args.content else 'off'}", flush=True)

    with EmbeddedBroker(tansu_bin=Settings.from_env().tansu_bin) as broker:
        if not args.worker_only:
            a = bench_absorb(args, broker.bootstrap, sizes[0])
            print(f"absorb: {a['events']} clicks through the broker, micro-batch {args.batch_size}: "
                  f"{a['stream_eps']:,.0f} events/s (target >= 10,000); baseline one update per event "
                  f"({a['baseline_events']} clicks): {a['baseline_eps']:,.0f} events/s "
                  f"-> {a['stream_eps'] / a['baseline_eps']:.1f}x", flush=True)
        runs: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(args.worker_runs):
            for batch in (True, False):
                runs[batch].append(bench_worker_absorb(args, broker.bootstrap, batch)["eps"])
                path = "batch path" if batch else "Faust agent"
                print(f"absorb by a `streamsense run --processors recs` worker ({path}): {args.events} clicks at "
                      f"{runs[batch][-1]:,.0f} events/s", flush=True)
        worker_ratio = statistics.median(runs[True]) / statistics.median(runs[False])
        print(f"worker absorb, median of {args.worker_runs}: batch path {statistics.median(runs[True]):,.0f} "
              f"events/s, Faust agent {statistics.median(runs[False]):,.0f} events/s -> {worker_ratio:.2f}x",
              flush=True)
    if args.worker_only:
        print(f"ratio: worker absorb {worker_ratio:.2f}x the Faust agent "
              f"({statistics.median(runs[True]):,.0f} vs {statistics.median(runs[False]):,.0f} clicks/s)")
        return
    for n in sizes:
        u = bench_upsert(n, RecsConfig().dim + 1, args.upsert_chunk, args.upsert_rounds)
        print(f"upsert @ {n:,} items: {u['upsert_rows_s']:,.0f} rows/s in chunks of {u['chunk']}; baseline "
              f"full rebuild per chunk: {u['rebuild_rows_s']:,.0f} rows/s "
              f"-> {u['upsert_rows_s'] / u['rebuild_rows_s']:.1f}x", flush=True)
    results = []
    for n in sizes:
        r = bench_recommend(args, n)
        results.append(r)
        print(f"recommend @ {n:,} items ({r['queries']} warm users): p50 {r['p50_ms']:.2f} ms, p99 "
              f"{r['p99_ms']:.2f} ms (first call after an update {r['first_after_update_ms']:.1f} ms); "
              f"brute-force numpy p50 {r['brute_p50_ms']:.2f} ms, p99 {r['brute_p99_ms']:.2f} ms", flush=True)
    last = results[-1]
    print(f"ratio: absorb {a['stream_eps'] / a['baseline_eps']:.1f}x the per-event baseline; recommend p99 at "
          f"{last['items']:,} items {last['brute_p99_ms'] / last['p99_ms']:.2f}x brute force "
          f"({last['p99_ms']:.2f} vs {last['brute_p99_ms']:.2f} ms)")


if __name__ == "__main__":
    main()
