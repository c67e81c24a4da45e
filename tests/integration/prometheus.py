"""A real Prometheus server (Debian's `prometheus`) scraping workers on free ports, for integration tests."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from streams.runtime.embedded import free_port

RULES = Path(__file__).resolve().parents[2] / "docker" / "prometheus" / "alerts.yml"


class PrometheusServer:
    def __init__(self, directory: Path, targets: list[str], scrape_s: float = 1.0) -> None:
        self.port = free_port()
        directory.mkdir(parents=True, exist_ok=True)
        config = directory / "prometheus.yml"
        config.write_text(json.dumps({  # JSON is YAML
            "global": {"scrape_interval": f"{scrape_s:g}s", "evaluation_interval": f"{scrape_s:g}s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [{"job_name": "streamsense", "static_configs": [{"targets": targets}]}],
        }))
        self.log_path = directory / "prometheus.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={directory / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}"], stdout=log, stderr=subprocess.STDOUT)

    def __enter__(self) -> PrometheusServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()

    def api(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=5) as resp:
            return json.loads(resp.read())["data"]

    def wait_for(self, query: str, predicate: Any, timeout_s: float = 60.0) -> list[dict[str, Any]]:
        """Poll an instant query until ``predicate(result)`` holds; the result is [{metric, value}, ...]."""
        deadline, result = time.monotonic() + timeout_s, None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"prometheus exited:\n{self.log_path.read_text()[-2000:]}")
            try:
                result = self.api("query", query=query)["result"]
                if predicate(result):
                    return result
            except OSError:
                pass  # not listening yet
            time.sleep(0.5)
        raise AssertionError(f"{query!r} never matched within {timeout_s} s; last result {result}; "
                             f"log:\n{self.log_path.read_text()[-2000:]}")
