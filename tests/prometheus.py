"""A real Prometheus server for tests: it scrapes what we point it at, and we ask it with its HTTP API.

Why a real one: whether exemplars reach Prometheus depends on content negotiation (Prometheus asks for
OpenMetrics on its own), on the exposition being valid for *its* parser, and on the exemplar storage
accepting the timestamps; a parser in Python proves none of that.

* :class:`PrometheusServer` runs ``prometheus`` (found with :func:`tests.tooling.require_tool`: a skip on
  a developer machine without it, a failure under ``CI=true``) on a free port of 127.0.0.1 with a temp
  TSDB (``--storage.tsdb.path``), exemplar storage on (``--enable-feature=exemplar-storage``) and a
  generated config that scrapes the given targets every second. It waits for ``/-/ready``, answers
  :meth:`~PrometheusServer.query`, :meth:`~PrometheusServer.query_exemplars` and
  :meth:`~PrometheusServer.targets`, and stops with SIGTERM (then SIGKILL).
* Fixture ``prometheus_factory``: starts servers and stops them after the test. Used from a test module
  with ``pytest_plugins = ["tests.prometheus"]``, which also registers the report hook below: a failing
  test that used a server gets the end of its log attached to its report.

The first scrape comes a few seconds after start (Prometheus applies target discovery with a delay of
up to 5 s); :meth:`PrometheusServer.wait_scraped` waits for it rather than sleeping.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.scraping_server import ScrapingServer, ServerFactory, attach_logs
from tests.tooling import require_tool

#: How often Prometheus scrapes; ``scrape_timeout`` is the same (it may not exceed the interval).
SCRAPE_INTERVAL = "1s"


class PrometheusError(AssertionError):
    """Prometheus answered with an error, or did not do what we waited for; carries the log's end."""


class PrometheusServer(ScrapingServer):
    """One ``prometheus`` process scraping ``targets`` (``host:port``, path ``metrics_path``)."""

    name = "prometheus"
    config_name = "prometheus.yml"
    ready_path = "/-/ready"
    error = PrometheusError

    def __init__(self, binary: str, workdir: Path, targets: Sequence[str], job: str = "adapter",
                 metrics_path: str = "/metrics", scrape_interval: str = SCRAPE_INTERVAL) -> None:
        super().__init__(binary, workdir, targets, job)
        self.metrics_path = metrics_path
        self.scrape_interval = scrape_interval

    def config(self) -> dict[str, Any]:
        return {
            "global": {"scrape_interval": self.scrape_interval, "scrape_timeout": self.scrape_interval,
                       "evaluation_interval": self.scrape_interval},
            "scrape_configs": [{
                "job_name": self.job,
                "metrics_path": self.metrics_path,
                "static_configs": [{"targets": self.targets_scraped}],
            }],
        }

    def command(self) -> list[str]:
        return [self.binary, f"--config.file={self.config_path}", f"--storage.tsdb.path={self.data_dir}",
                f"--web.listen-address=127.0.0.1:{self.port}", "--enable-feature=exemplar-storage",
                "--log.level=info"]

    # -- the HTTP API --------------------------------------------------------------------------------

    def api(self, path: str, params: dict[str, str] | None = None) -> Any:
        """GET ``/api/v1/<path>``; the ``data`` of a ``success`` answer, else :class:`PrometheusError`."""
        url = self.url(f"/api/v1/{path}", params)
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                doc = json.loads(resp.read())
        except urllib.error.HTTPError as exc:  # 400/422/503 carry a JSON error document
            body = exc.read().decode("utf-8", errors="replace")
            raise PrometheusError(f"GET {url}: HTTP {exc.code}: {body[:500]}") from exc
        if doc.get("status") != "success":
            raise PrometheusError(f"GET {url}: {doc}")
        return doc["data"]

    def query(self, promql: str, at: float | None = None) -> list[dict[str, Any]]:
        """An instant query's result (for a vector: ``[{"metric": {...}, "value": [t, "v"]}, ...]``)."""
        params = {"query": promql}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self.api("query", params)
        result: list[dict[str, Any]] = data["result"]
        return result

    def query_exemplars(self, promql: str, start: float, end: float) -> list[dict[str, Any]]:
        """``/api/v1/query_exemplars``: ``[{"seriesLabels": {...}, "exemplars": [{"labels", "value",
        "timestamp"}, ...]}, ...]``."""
        data = self.api("query_exemplars", {"query": promql, "start": f"{start:.3f}", "end": f"{end:.3f}"})
        return list(data or [])

    def targets(self) -> list[dict[str, Any]]:
        """The active targets with ``health``, ``lastError``, ``lastScrape``, ``scrapeUrl``."""
        data = self.api("targets", {"state": "active"})
        active: list[dict[str, Any]] = data["activeTargets"]
        return active

    def wait_scraped(self, timeout: float = 30.0, after: float | None = None) -> list[dict[str, Any]]:
        """Wait until every target was scraped successfully (``health`` up; after ``after``, a Unix time,
        when given); a target that stays down fails with its ``lastError``."""
        deadline = time.monotonic() + timeout
        targets: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            targets = self.targets()
            if len(targets) == len(self.targets_scraped) and all(
                    t["health"] == "up" and (after is None or _parse_time(t["lastScrape"]) > after)
                    for t in targets):
                return targets
            time.sleep(0.2)
        raise PrometheusError(f"targets not scraped within {timeout}s: "
                              f"{[(t['scrapeUrl'], t['health'], t['lastError']) for t in targets]}\n"
                              + self.log_tail())


def _parse_time(text: str) -> float:
    """An RFC 3339 time as Prometheus writes it (nanoseconds, ``Z`` or an offset) to a Unix time."""
    from datetime import datetime

    head, _, rest = text.partition(".")
    fraction, zone = "", rest
    for i, c in enumerate(rest):
        if not c.isdigit():
            fraction, zone = rest[:i], rest[i:]
            break
    zone = "+00:00" if zone in ("Z", "") else zone
    stamp = datetime.fromisoformat(head + zone).timestamp()
    return stamp + (float("0." + fraction) if fraction else 0.0)


class PrometheusFactory(ServerFactory[PrometheusServer]):
    """Starts Prometheus servers (each in its own directory) and stops every one it started."""

    def __init__(self, base: Path, binary: str) -> None:
        super().__init__(base, binary, PrometheusServer)


@pytest.fixture
def prometheus_factory(tmp_path: Path) -> Iterator[PrometheusFactory]:
    """Starts real Prometheus servers for one test; requires the ``prometheus`` binary (CI: must exist)."""
    factory = PrometheusFactory(tmp_path, require_tool("prometheus"))
    yield factory
    factory.stop_all()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Attach the log of every Prometheus a failing test started to its report."""
    outcome = yield
    attach_logs(item, outcome.get_result(), "prometheus_factory")
