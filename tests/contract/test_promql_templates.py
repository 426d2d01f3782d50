"""Every built-in PromQL template, classic and native, expands to a query promtool accepts.

Native histograms cannot be fed to the Debian Prometheus here (no protobuf scrape or remote write from
the test exporter), so the native queries are checked as text with the real PromQL parser: each one
becomes a recording rule and ``promtool check rules`` must accept the file.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from adapter.sources.prometheus_config import PrometheusSettings, builtin_queries, expand
from tests.tooling import require_tool

URL = "http://prometheus.example:9090"


@pytest.mark.parametrize("histogram", ["classic", "native"])
def test_builtin_queries_parse_with_promtool(histogram: str, tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    queries = builtin_queries(PrometheusSettings(url=URL, histogram=histogram))
    rules = [{"record": f"check:{key}", "expr": expand(template, "shop", "checkout", 60, 0.95)}
             for key, template in sorted(queries.items())]
    assert {r["record"] for r in rules} >= {"check:latency_quantile", "check:request_rate",
                                             "check:error_ratio", "check:cpu_utilization"}
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "check", "rules": rules}]}), encoding="utf-8")
    done = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, (done.stdout, done.stderr, rules)


def test_a_broken_template_is_refused_by_the_same_check(tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "check", "rules": [
        {"record": "check:broken", "expr": "histogram_quantile(0.95, sum by (le) (rate(x_bucket[60s]))"}]}]}),
        encoding="utf-8")
    done = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
