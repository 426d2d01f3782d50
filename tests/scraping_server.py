"""What the real metrics backends of the tests (Prometheus, VictoriaMetrics) share: a scraping server process.

Each runs on a free port of 127.0.0.1 with a temp data directory and a generated scrape config, is ready
when a health path answers 200, logs to a file whose end is attached to failing tests, stops with
SIGTERM (then SIGKILL) and can be restarted on the same port and data (a backend coming back). The
subclasses say which binary, which flags, which config and which health path.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Generic, Self, TypeVar

import pytest
import yaml

from tests.tooling import terminate

READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


def free_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago (the server binds it itself; a clash is retried)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ScrapingServer:
    """One backend process scraping ``targets``; subclasses give the name, files, flags and health path."""

    #: Used in messages and file names (``<name>.log``).
    name: ClassVar[str]
    config_name: ClassVar[str]
    ready_path: ClassVar[str]
    #: The exception raised when it fails or does not do what we wait for (an AssertionError).
    error: ClassVar[type[AssertionError]]
    tail_lines = 60

    def __init__(self, binary: str, workdir: Path, targets: Sequence[str], job: str) -> None:
        self.binary = binary
        self.workdir = workdir
        self.targets_scraped = list(targets)
        self.job = job
        self.config_path = workdir / self.config_name
        self.data_dir = workdir / "data"
        self.log_path = workdir / f"{self.name}.log"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None

    def config(self) -> dict[str, Any]:
        raise NotImplementedError

    def command(self) -> list[str]:
        raise NotImplementedError

    # -- life cycle ----------------------------------------------------------------------------------

    def start(self, attempts: int = 3) -> Self:
        """Start and wait until ready; a port taken in between is retried on a new port."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(self.config()), encoding="utf-8")
        for attempt in range(attempts):
            self.port = free_port()
            self._spawn(f"start {attempt + 1}")
            try:
                self._wait_ready()
                return self
            except self.error:
                assert self.proc is not None
                exited = self.proc.poll() is not None
                self.stop()
                self.returncode = None
                if not (exited and "address already in use" in self.log_text()):
                    raise
        raise self.error(f"{self.name} could not bind a port in {attempts} attempts\n{self.log_tail()}")

    def restart(self) -> Self:
        """Start again after :meth:`stop`, on the same port and data directory (a backend coming back)."""
        assert self.proc is not None and self.port, "restart() needs a server that was started"
        self.stop()
        self.returncode = None
        self._spawn("restart")
        self._wait_ready()
        return self

    def _spawn(self, what: str) -> None:
        with open(self.log_path, "ab") as log:
            log.write(f"--- {what}: port {self.port}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(self.command(), cwd=self.workdir, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=log)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise self.error(f"{self.name} exited with {self.proc.returncode} before it was ready\n"
                                 + self.log_tail())
            with contextlib.suppress(OSError), urllib.request.urlopen(self.url(self.ready_path),
                                                                      timeout=2) as resp:
                if resp.status == 200:
                    return
            time.sleep(0.1)
        raise self.error(f"{self.name} not ready after {READY_TIMEOUT}s\n{self.log_tail()}")

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after :data:`STOP_TIMEOUT`; returns the exit status."""
        if self.proc is None or self.returncode is not None:
            return self.returncode
        self.returncode = terminate(self.proc, STOP_TIMEOUT)
        return self.returncode

    # -- its log and address -------------------------------------------------------------------------

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int | None = None) -> str:
        return "\n".join(self.log_text().splitlines()[-(lines or self.tail_lines):])

    def url(self, path: str, params: dict[str, str] | None = None) -> str:
        query = "?" + urllib.parse.urlencode(params) if params else ""
        return f"http://127.0.0.1:{self.port}{path}{query}"


S = TypeVar("S", bound=ScrapingServer)


class ServerFactory(Generic[S]):
    """Starts servers of one kind (each in its own directory) and stops every one it started."""

    def __init__(self, base: Path, binary: str, kind: type[S]) -> None:
        self.base = base
        self.binary = binary
        self.kind = kind
        self.started: list[S] = []

    def __call__(self, targets: Sequence[str], **kwargs: Any) -> S:
        workdir = self.base / f"{self.kind.name}-{len(self.started)}"
        server = self.kind(self.binary, workdir, targets, **kwargs)
        self.started.append(server)
        return server.start()

    def stop_all(self) -> None:
        for server in self.started:
            server.stop()


def attach_logs(item: pytest.Item, report: pytest.TestReport, fixture: str) -> None:
    """Append the end of the log of every server the failing test's ``fixture`` started to its report."""
    if not report.failed:
        return
    factory = getattr(item, "funcargs", {}).get(fixture)
    if isinstance(factory, ServerFactory):
        for server in factory.started:
            report.sections.append((f"{server.name} log ({server.workdir.name}, port {server.port})",
                                    server.log_tail(80)))
