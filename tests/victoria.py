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

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.scraping_server import ScrapingServer, ServerFactory, attach_logs
from tests.tooling import require_tool


class VictoriaError(AssertionError):
    """VictoriaMetrics answered with an error or did not do what we waited for; carries the log's end."""


class VictoriaServer(ScrapingServer):
    """One ``victoria-metrics`` process scraping ``targets`` every second."""

    name = "victoria-metrics"
    config_name = "scrape.yml"
    ready_path = "/health"
    error = VictoriaError

    def __init__(self, binary: str, workdir: Path, targets: Sequence[str], job: str = "app") -> None:
        super().__init__(binary, workdir, targets, job)

    def config(self) -> dict[str, Any]:
        return {"global": {"scrape_interval": "1s"},
                "scrape_configs": [{"job_name": self.job, "scrape_interval": "1s",
                                    "static_configs": [{"targets": self.targets_scraped}]}]}

    def command(self) -> list[str]:
        return [self.binary, f"-httpListenAddr=127.0.0.1:{self.port}", f"-storageDataPath={self.data_dir}",
                f"-promscrape.config={self.config_path}", "-promscrape.config.strictParse=false",
                "-search.latencyOffset=0s", "-loggerLevel=INFO"]

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


class VictoriaFactory(ServerFactory[VictoriaServer]):
    def __init__(self, base: Path, binary: str) -> None:
        super().__init__(base, binary, VictoriaServer)


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
    attach_logs(item, outcome.get_result(), "victoria_factory")
