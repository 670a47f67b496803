"""A server process on 127.0.0.1 and a free port, started and always stopped by the benchmark.

The server logs JSON lines on stdout: a ``listening`` event with ``grpc_port`` (and
``metrics_port``, ``http_port``), then ``ready``. A reader thread copies every line to a log file
and hands the events to ``wait_ready``, so no port is fixed and nothing polls the log file.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from bench.lib import ROOT


def serve_command(repo: Path, *extra: str, metrics_port: int = -1) -> list[str]:
    """``python -m ortserve serve`` on loopback, a free gRPC port, JSON logs; ``extra`` last."""
    return [
        sys.executable, "-m", "ortserve", "serve",
        "--model-repository", str(repo),
        "--host", "127.0.0.1", "--grpc-port", "0", "--metrics-port", str(metrics_port),
        "--log-format", "json",
        *extra,
    ]  # fmt: skip


class Daemon:
    """One server process; ``cpus`` pins it with taskset. Settings come from ``cmd`` only."""

    def __init__(self, cmd: Sequence[str], log_path: Path, cpus: str | None = None) -> None:
        self.cmd = ["taskset", "-c", cpus, *cmd] if cpus is not None else list(cmd)
        self.log_path = log_path
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0
        self.metrics_port: int | None = None
        self.http_port: int | None = None  # None when the daemon serves no HTTP front
        self._events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._reader: threading.Thread | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        # ORTSERVE_* variables would change the settings behind the benchmark's back.
        env = {k: v for k, v in os.environ.items() if not k.startswith("ORTSERVE_")}
        self.proc = subprocess.Popen(
            self.cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=env
        )
        log = self.log_path.open("w")
        self._reader = threading.Thread(
            target=self._read, args=(self.proc.stdout, log), daemon=True
        )
        self._reader.start()

    def _read(self, stream: TextIO, log: TextIO) -> None:
        with log:
            for line in stream:
                log.write(line)
                log.flush()
                with contextlib.suppress(ValueError):
                    self._events.put(json.loads(line))
        self._events.put(None)

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                event = self._events.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if event is None:
                raise RuntimeError(f"daemon exited before ready; see {self.log_path}")
            if event.get("event") == "listening":
                self.port = int(event["grpc_port"])
                self.metrics_port = event.get("metrics_port")
                self.http_port = event.get("http_port")
            elif event.get("event") == "ready" and self.port:
                return
            elif event.get("level") == "error":
                raise RuntimeError(f"daemon: {event}; see {self.log_path}")
        raise RuntimeError(f"daemon not ready after {timeout:.0f} s; see {self.log_path}")

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout`` s; the exit code (None if never started)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if self._reader is not None:
            self._reader.join(timeout=5)
        return self.proc.returncode


@contextlib.contextmanager
def running(daemons: Sequence[Daemon]) -> Iterator[None]:
    """Start every daemon, wait until all are ready, and stop them all whatever happens."""
    try:
        for daemon in daemons:
            daemon.start()
        for daemon in daemons:
            daemon.wait_ready()
        yield
    finally:
        for daemon in daemons:
            daemon.stop()


@contextlib.contextmanager
def serving(repo: Path, log_path: Path, *extra: str, metrics_port: int = -1) -> Iterator[Daemon]:
    """One ``ortserve serve`` daemon on ``repo``, ready; stopped on the way out (``stop`` may
    also be called before, for its exit code)."""
    daemon = Daemon(serve_command(repo, *extra, metrics_port=metrics_port), log_path)
    with running([daemon]):
        yield daemon
