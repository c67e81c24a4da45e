"""`streamsense dashboard`: a live drift dashboard, a process of its own (not a page inside a worker).

Why its own process: it must keep showing the last state while workers restart, and one dashboard serves
many workers. It follows ``drift.stats`` and ``drift.events`` from the beginning of what retention kept (no
consumer group: nothing is committed, every dashboard sees everything), scrapes each ``--worker``'s
``/metrics`` every ``scrape_s`` for throughput, latency and dead letters, and serves:

* ``/`` — the page (streams/dashboard/static/): one chart per signal (score against its warning and drift
  thresholds over time, episodes listed), model versions, throughput, latency percentiles, dead-letter rate;
  it polls ``/api/state`` and updates without reloading. uPlot is vendored under static/vendor/;
* ``/api/state`` — everything the page draws (monitoring/dashboard_data.py), as JSON;
* ``/health`` — 200 once the topic reader has reached the topics.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from monitoring.dashboard_data import DashboardData
from streams.contracts import topics
from streams.contracts.settings import Settings
from streams.runtime.kafka_io import client_kwargs

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".css": "text/css",
         ".png": "image/png"}


class Dashboard:
    def __init__(self, settings: Settings, bootstrap: str, workers: Sequence[str] = (), *,
                 host: str = "127.0.0.1", port: int = 8050, scrape_s: float = 2.0) -> None:
        self.settings, self.bootstrap = settings, bootstrap
        self.workers = [w.rstrip("/") for w in workers]
        self.scrape_s = scrape_s
        self.data = DashboardData()
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.reading = threading.Event()  # set once the reader is assigned the topics
        self.server = ThreadingHTTPServer((host, port), self._handler())
        self.server.daemon_threads = True

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/"

    def start(self) -> Dashboard:
        for target in (self._read_topics, self._scrape_workers, self.server.serve_forever):
            threading.Thread(target=target, daemon=True, name=f"dashboard-{target.__name__}").start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()

    # --- inputs ---------------------------------------------------------------------------------------------

    def _read_topics(self) -> None:
        from kafka import KafkaConsumer, TopicPartition

        while not self.stopping.is_set():
            consumer = None
            try:
                consumer = KafkaConsumer(**client_kwargs(self.settings, self.bootstrap), group_id=None,
                                         enable_auto_commit=False, auto_offset_reset="earliest")
                parts = [TopicPartition(t, p) for t in (topics.DRIFT_STATS, topics.DRIFT_EVENTS,
                                                        topics.RETRAIN_DECISIONS, topics.MODEL_UPDATES)
                         for p in sorted(consumer.partitions_for_topic(t) or ())]
                if not parts:
                    raise RuntimeError("drift.stats/drift.events do not exist yet (start a monitor)")
                consumer.assign(parts)
                consumer.seek_to_beginning(*parts)
                self.reading.set()
                while not self.stopping.is_set():
                    for tp, messages in consumer.poll(timeout_ms=500).items():
                        self._apply(tp.topic, [m.value for m in messages])
            except Exception as exc:  # broker away or topics missing: keep serving what we have, retry
                log.warning("dashboard: reading the drift topics failed (%s); retrying in 2 s", exc)
                self.stopping.wait(2.0)
            finally:
                if consumer is not None:
                    consumer.close()

    def _apply(self, topic: str, values: list[bytes | None]) -> None:
        with self.lock:
            for value in values:
                try:
                    event = json.loads(value or b"null")
                    if topic == topics.DRIFT_STATS:
                        self.data.add_stats(event)
                    elif topic == topics.DRIFT_EVENTS:
                        self.data.add_drift_event(event)
                    else:
                        self.data.add_retraining(topic, event)
                except (ValueError, KeyError, TypeError) as exc:
                    log.warning("dashboard: skipping an unreadable %s record: %s", topic, exc)

    def _scrape_workers(self) -> None:
        while not self.stopping.wait(self.scrape_s):
            for worker in self.workers:
                try:
                    with urllib.request.urlopen(f"{worker}/metrics", timeout=5) as resp:
                        text = resp.read().decode()
                except OSError as exc:
                    log.info("dashboard: %s/metrics unreachable: %s", worker, exc)
                    continue
                with self.lock:
                    self.data.add_scrape(worker, text, time.time())

    # --- the web side ---------------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        with self.lock:
            return {**self.data.as_json(), "workers": self.workers, "reading": self.reading.is_set()}

    def _handler(self) -> Callable[..., BaseHTTPRequestHandler]:
        dashboard = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/api/state":
                    self._send(200, "application/json", json.dumps(dashboard.state()).encode())
                elif path == "/health":
                    ok = dashboard.reading.is_set()
                    self._send(200 if ok else 503, "application/json", json.dumps({"reading": ok}).encode())
                else:
                    self._static("index.html" if path == "/" else path.removeprefix("/static/"))

            def _static(self, name: str) -> None:
                file = (STATIC / name).resolve()
                if STATIC not in file.parents or not file.is_file():
                    self._send(404, "text/plain", b"not found")
                    return
                self._send(200, TYPES.get(file.suffix, "application/octet-stream"), file.read_bytes())

            def _send(self, status: int, kind: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("dashboard: " + format, *args)

        return Handler
