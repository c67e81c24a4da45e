"""Child processes of the embedded broker (Tansu and SeaweedFS), started so that none outlives streamsense.

A leftover broker holds its port and, in durable mode, its data directory: the next start then fails or, worse,
two SeaweedFS processes write one directory. So every child runs in its own session (a terminal's Ctrl-C
reaches only streamsense, which stops the children in order: Tansu before the store it writes to) and, on
Linux, is told by the kernel to exit when the streamsense thread that started it dies, even by SIGKILL
(PR_SET_PDEATHSIG). Start brokers from the thread that lives as long as they do (the main thread).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class BrokerError(RuntimeError):
    """The embedded broker could not be found or started."""


def free_port(host: str = "127.0.0.1") -> int:
    """Ask the OS for a port that is free right now (tests and the demo never assume a fixed one)."""
    return free_ports(1, host)[0]


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports that are free right now: all sockets stay bound until the last is picked, so
    the OS cannot hand out one port twice."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((host, 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
        return True
    return False


def _exit_with_parent(sig: signal.Signals) -> Callable[[], None] | None:
    """A preexec_fn that asks the kernel to send ``sig`` to the child when its parent dies (Linux only; None
    elsewhere). The libc function is looked up here, before the fork, so the child only makes one call."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True).prctl

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)

    return preexec


class ChildProcess:
    """One server binary run as a child: its own session, output to a log file (or nowhere), stopped with a
    signal and a bounded wait, then SIGKILL."""

    def __init__(self, name: str, cmd: Sequence[str], *, env: Mapping[str, str], log_path: Path | None,
                 stop_signal: signal.Signals = signal.SIGINT) -> None:
        """``name`` appears in errors ("SeaweedFS exited ..."); ``stop_signal`` is the server's clean-exit
        signal, also sent when streamsense dies."""
        self.name = name
        self.cmd = list(cmd)
        self.env = dict(env)
        self.log_path = log_path
        self.stop_signal = stop_signal
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self._proc.poll() if self._proc is not None else None

    def start(self) -> ChildProcess:
        try:
            if self.log_path is not None:
                self._log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the child
            out = self._log if self._log is not None else subprocess.DEVNULL
            self._proc = subprocess.Popen(
                self.cmd, stdout=out, stderr=out, stdin=subprocess.DEVNULL, env=self.env,
                start_new_session=True, preexec_fn=_exit_with_parent(self.stop_signal),
            )
        except OSError as exc:
            self._close_log()
            raise BrokerError(f"cannot run {self.name} ({self.cmd[0]}): {exc}") from exc
        return self

    def exited_error(self, during: str) -> BrokerError:
        """The one-line error for a child that exited on its own, pointing at its log when it has one."""
        where = f"; see {self.log_path}" if self.log_path is not None else ""
        return BrokerError(f"{self.name} exited with code {self.returncode} {during}{where}")

    def signal(self, sig: signal.Signals) -> None:
        """Send ``sig`` without waiting (safe inside a signal handler)."""
        if self.running and self._proc is not None:
            self._proc.send_signal(sig)

    def wait(self, timeout_s: float | None = None) -> int:
        if self._proc is None:
            raise BrokerError(f"{self.name} not started")
        return self._proc.wait(timeout=timeout_s)

    def stop(self, timeout_s: float = 5.0) -> None:
        """The clean-exit signal, up to ``timeout_s`` to exit, then SIGKILL; always reaps the process."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(self.stop_signal)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=timeout_s)
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
