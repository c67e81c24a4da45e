"""Headless Chromium (Debian `chromium`) for page tests: the DOM after the page's scripts ran, its console
messages, and screenshots."""

from __future__ import annotations

import re
import subprocess
import tempfile
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
         "--no-first-run", "--enable-logging=stderr", "--v=0"]


def run_page(url: str, *, budget_ms: int = 8000, extra: tuple[str, ...] = ()) -> tuple[str, list[str]]:
    """(DOM after ``budget_ms`` of virtual time, console messages and page errors)."""
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run(["chromium", *FLAGS, f"--user-data-dir={profile}",
                               f"--virtual-time-budget={budget_ms}", *extra, "--dump-dom", url],
                              capture_output=True, text=True, timeout=120)
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]
    return done.stdout, console


def console_errors(console: list[str]) -> list[str]:
    return [line for line in console if re.search(r"Uncaught|ERROR:CONSOLE|\berror\b", line, re.I)]


def screenshot(url: str, path: Path, *, size: str = "1400,1700", budget_ms: int = 8000) -> None:
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(["chromium", *FLAGS, f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}",
                        f"--window-size={size}", f"--screenshot={path}", url],
                       capture_output=True, timeout=120, check=True)
