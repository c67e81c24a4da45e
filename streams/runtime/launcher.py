"""The one way to start `streamsense run` in a child process (demo, tests, benches) and know when it is ready.

Readiness is the worker's ``/ready`` endpoint (200 once models are loaded, state restored and partitions
assigned), never a log line. Output goes to a log file the caller can show when something fails.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from streams.runtime.embedded import free_port

REPO = Path(__file__).resolve().parents[2]


class WorkerProcess:
    """`streamsense run --processors P` with its own app id, web port and log file."""

    def __init__(self, bootstrap: str, log_dir: Path, *, processors: str = "text", app_id: str | None = None,
                 env: dict[str, str] | None = None, args: tuple[str, ...] = (),
                 relay: Callable[[str], None] | None = None) -> None:
        """``relay`` receives the worker's progress and error lines as they are written (the demo shows them)."""
        self.bootstrap = bootstrap
        self.relay = relay
        self.app_id = app_id or f"test-{uuid.uuid4().hex[:8]}"
        self.processors = processors
        self.web_port = free_port()
        self.args = args
        Path(log_dir).mkdir(parents=True, exist_ok=True)
        self.log_path = Path(log_dir) / f"{self.app_id}-{uuid.uuid4().hex[:4]}.log"
        self.env = {**os.environ, "STREAMSENSE_APP_ID": self.app_id, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        cmd = [sys.executable, "-m", "streams.cli", "run", "--processors", self.processors,
               "--bootstrap", self.bootstrap, "--web-port", str(self.web_port), "--log-level", "info", *self.args]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=REPO)
        if self.relay is not None:
            threading.Thread(target=self._follow, daemon=True).start()
        return self

    def _follow(self) -> None:
        """Pass new log lines that matter to ``relay`` until the worker exits."""
        assert self.relay is not None and self.proc is not None
        with open(self.log_path, errors="replace") as log:
            while True:
                line = log.readline()
                if not line:
                    if self.proc.poll() is not None:
                        return
                    time.sleep(0.1)
                    continue
                if "[streamsense]" in line or "Error" in line or "Traceback" in line:
                    self.relay(line.rstrip())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def get(self, path: str, timeout_s: float = 10.0) -> tuple[int, Any]:
        """(status, JSON body) of a GET on the worker's web server."""
        return self._request(urllib.request.Request(self._url(path)), timeout_s)

    def metrics_text(self, timeout_s: float = 10.0) -> str:
        """The worker's ``/metrics`` exposition (Prometheus text format)."""
        with urllib.request.urlopen(self._url("/metrics"), timeout=timeout_s) as resp:
            return resp.read().decode()

    def post(self, path: str, timeout_s: float = 120.0) -> tuple[int, Any]:
        return self._request(urllib.request.Request(self._url(path), data=b"", method="POST"), timeout_s)

    def _url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.web_port}{path}"

    @staticmethod
    def _request(request: urllib.request.Request, timeout_s: float) -> tuple[int, Any]:
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def _check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.log()[-3000:]}")

    def wait_ready(self, timeout_s: float = 120.0) -> dict[str, Any]:
        """Poll ``/ready`` until it answers 200; fails early with the log if the worker exits."""
        deadline = time.monotonic() + timeout_s
        body: Any = None
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                status, body = self.get("/ready", timeout_s=2)
                if status == 200:
                    return body
            except (OSError, ValueError):
                pass  # web server not up yet
            time.sleep(0.2)
        raise AssertionError(f"worker not ready after {timeout_s} s (last /ready: {body}):\n{self.log()[-3000:]}")

    def wait_for_log(self, needle: str, timeout_s: float = 90.0) -> None:
        """For progress that has no endpoint (e.g. a checkpoint was written)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if needle in self.log():
                return
            self._check_alive()
            time.sleep(0.2)
        raise AssertionError(f"{needle!r} not in worker log after {timeout_s} s:\n{self.log()[-3000:]}")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self, timeout_s: float = 30.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            raise AssertionError(f"worker did not stop within {timeout_s} s on SIGTERM:\n{self.log()[-3000:]}"
                                 ) from None
