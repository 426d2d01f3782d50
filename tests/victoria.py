"""A real single-node VictoriaMetrics for tests: it scrapes what we point it at; we ask it with PromQL.

:class:`VictoriaServer` runs ``victoria-metrics`` (Debian's package; found with
:func:`tests.tooling.require_tool`: a skip on a developer machine without it, a failure under ``CI=true``)
with ``-httpListenAddr=127.0.0.1:<free port>``, a temp ``-storageDataPath`` and a generated
``-promscrape.config`` that scrapes the given targets every second. ``-search.latencyOffset=0s`` makes
fresh samples queryable at once (the default hides the last 30 s). It waits for ``/health``, answers
:meth:`~VictoriaServer.query` and stops with SIGTERM (then SIGKILL). Fixture ``victoria_factory`` starts
servers and stops them after the test (``pytest_plugins = ["tests.victoria"]``).
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Self

import pytest
import yaml

from tests.tooling import require_tool, terminate

READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class VictoriaError(AssertionError):
    """VictoriaMetrics answered with an error or did not do what we waited for; carries the log's end."""


class VictoriaServer:
    """One ``victoria-metrics`` process scraping ``targets`` every second."""

    def __init__(self, binary: str, workdir: Path, targets: Sequence[str], job: str = "app") -> None:
        self.binary = binary
        self.workdir = workdir
        self.targets_scraped = list(targets)
        self.job = job
        self.config_path = workdir / "scrape.yml"
        self.data_dir = workdir / "data"
        self.log_path = workdir / "victoria-metrics.log"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None

    def config(self) -> dict[str, Any]:
        return {"global": {"scrape_interval": "1s"},
                "scrape_configs": [{"job_name": self.job, "scrape_interval": "1s",
                                    "static_configs": [{"targets": self.targets_scraped}]}]}

    def command(self) -> list[str]:
        return [self.binary, f"-httpListenAddr=127.0.0.1:{self.port}", f"-storageDataPath={self.data_dir}",
                f"-promscrape.config={self.config_path}", "-promscrape.config.strictParse=false",
                "-search.latencyOffset=0s", "-loggerLevel=INFO"]

    def start(self, attempts: int = 3) -> Self:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(self.config()), encoding="utf-8")
        for attempt in range(attempts):
            self.port = free_port()
            with open(self.log_path, "ab") as log:
                log.write(f"--- start {attempt + 1}: port {self.port}\n".encode())
                log.flush()
                self.proc = subprocess.Popen(self.command(), cwd=self.workdir, stdin=subprocess.DEVNULL,
                                             stdout=log, stderr=log)
            try:
                self._wait_ready()
                return self
            except VictoriaError:
                exited = self.proc.poll() is not None
                self.stop()
                self.returncode = None
                if not (exited and "address already in use" in self.log_text()):
                    raise
        raise VictoriaError(f"victoria-metrics could not bind a port in {attempts} attempts\n"
                            + self.log_tail())

    def restart(self) -> Self:
        """Start again after :meth:`stop`, on the same port and data directory (a backend coming back)."""
        assert self.proc is not None and self.port, "restart() needs a server that was started"
        self.stop()
        self.returncode = None
        with open(self.log_path, "ab") as log:
            log.write(f"--- restart: port {self.port}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(self.command(), cwd=self.workdir, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=log)
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise VictoriaError(f"victoria-metrics exited with {self.proc.returncode}\n{self.log_tail()}")
            with contextlib.suppress(OSError), urllib.request.urlopen(self.url("/health"), timeout=2) as resp:
                if resp.status == 200:
                    return
            time.sleep(0.1)
        raise VictoriaError(f"victoria-metrics not healthy after {READY_TIMEOUT}s\n{self.log_tail()}")

    def stop(self) -> int | None:
        if self.proc is None or self.returncode is not None:
            return self.returncode
        self.returncode = terminate(self.proc, STOP_TIMEOUT)
        return self.returncode

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def url(self, path: str, params: dict[str, str] | None = None) -> str:
        query = "?" + urllib.parse.urlencode(params) if params else ""
        return f"http://127.0.0.1:{self.port}{path}{query}"

    def get(self, path: str, params: dict[str, str] | None = None) -> tuple[int, Any]:
        """GET ``path``: (HTTP status, decoded JSON or the text when it is not JSON)."""
        try:
            with urllib.request.urlopen(self.url(path, params), timeout=10) as resp:
                status, body = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            status, body = exc.code, exc.read()
        try:
            return status, json.loads(body)
        except ValueError:
            return status, body.decode("utf-8", errors="replace")

    def query(self, promql: str, at: float | None = None) -> list[dict[str, Any]]:
        params = {"query": promql}
        if at is not None:
            params["time"] = f"{at:.3f}"
        status, doc = self.get("/api/v1/query", params)
        if status != 200 or not isinstance(doc, dict) or doc.get("status") != "success":
            raise VictoriaError(f"query {promql!r}: HTTP {status}: {str(doc)[:500]}")
        result: list[dict[str, Any]] = doc["data"]["result"]
        return result


class VictoriaFactory:
    def __init__(self, base: Path, binary: str) -> None:
        self.base = base
        self.binary = binary
        self.started: list[VictoriaServer] = []

    def __call__(self, targets: Sequence[str], **kwargs: Any) -> VictoriaServer:
        server = VictoriaServer(self.binary, self.base / f"victoria-{len(self.started)}", targets, **kwargs)
        self.started.append(server)
        return server.start()

    def stop_all(self) -> None:
        for server in self.started:
            server.stop()


@pytest.fixture
def victoria_factory(tmp_path: Path) -> Iterator[VictoriaFactory]:
    """Starts real VictoriaMetrics servers for one test; requires ``victoria-metrics`` (CI: must exist)."""
    factory = VictoriaFactory(tmp_path, require_tool("victoria-metrics"))
    yield factory
    factory.stop_all()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Attach the log of every VictoriaMetrics a failing test started to its report."""
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        factory = getattr(item, "funcargs", {}).get("victoria_factory")
        if isinstance(factory, VictoriaFactory):
            for server in factory.started:
                report.sections.append((f"victoria-metrics log (port {server.port})", server.log_tail(80)))
