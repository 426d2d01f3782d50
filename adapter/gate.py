"""``latency-adapter gate``: the canary verdict from a CI pipeline, with the rule Argo Rollouts and Flagger
apply through ``manifests/canary`` (DESIGN section 5).

It reads the adapter's external metrics API, the same documents the HPA reads, either through the
cluster (kubeconfig or in-cluster config, via the ``kubernetes`` client: the aggregator authenticates
and authorises the call) or directly (``--server URL``):

* ``latency_p95_baseline_ratio{workload=<canary>}``: the ratio, its 95 % interval (``ratio_low``,
  ``ratio_high``), both sample counts and a slow canary request's ``trace_id``;
* ``error_ratio{workload=<canary>}``;
* ``request_rate`` of each side, for the sample counts while the ratio is not served yet.

Verdicts, in this order (exit status in brackets):

1. regression [1]: the canary's error ratio is over ``--max-error-ratio`` (at once, whatever the
   samples), or ``ratio_low > --max-ratio`` (slower beyond doubt) with enough samples;
2. inconclusive [3]: fewer than ``--min-samples`` requests on either side;
3. pass [0]: the ratio at or under ``--max-ratio``;
4. inconclusive [3]: the ratio is over the limit but ``ratio_low`` is not (maybe slower, maybe noise).

``--wait`` polls until the verdict is pass or regression or the time is up (then the last verdict,
inconclusive, stands). Usage and connection errors exit 2 with the URL in the message.
"""

from __future__ import annotations

import json
import re
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from .quantity import parse_quantity

PASS, REGRESSION, USAGE, INCONCLUSIVE = 0, 1, 2, 3
VERDICTS = {PASS: "pass", REGRESSION: "regression", INCONCLUSIVE: "inconclusive"}
PREFIX = "/apis/external.metrics.k8s.io/v1beta1"
#: How often ``--wait`` asks again (the adapter's answers change once per slice, 5 s by default).
POLL_SECONDS = 10.0
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")


class GateError(Exception):
    """A usage or connection problem: exit status 2, the message says what and where."""


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``5m``, ``1h`` or ``500ms`` to seconds."""
    match = _DURATION.match(text)
    if not match:
        raise GateError(f"--wait {text!r} is not a duration (e.g. 90s, 5m, 1h)")
    unit = match.group(2) or "s"
    return float(match.group(1)) * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[unit]


@dataclass(frozen=True)
class Limits:
    max_ratio: float = 1.10
    max_error_ratio: float = 0.032
    min_samples: int = 200


@dataclass(frozen=True)
class Evidence:
    """What the adapter said about the pair; None where it had no answer."""

    ratio: float | None
    ratio_low: float | None
    ratio_high: float | None
    canary_samples: int
    baseline_samples: int
    error_ratio: float | None
    trace_id: str | None


def verdict(e: Evidence, limits: Limits) -> tuple[int, str]:
    """The gate's rule: exit status and one line saying why. Pure."""
    if e.error_ratio is not None and e.error_ratio > limits.max_error_ratio:
        return REGRESSION, (f"error ratio {e.error_ratio:.2%} is over the limit {limits.max_error_ratio:.2%}")
    fewest = min(e.canary_samples, e.baseline_samples)
    if fewest < limits.min_samples or e.ratio is None:
        return INCONCLUSIVE, (f"too few requests: canary {e.canary_samples}, baseline {e.baseline_samples}; "
                              f"need {limits.min_samples} on each side")
    if e.ratio_low is not None and e.ratio_low > limits.max_ratio:
        return REGRESSION, (f"p95 ratio {e.ratio:.3f} (95 % interval {e.ratio_low:.3f} to "
                            f"{_fmt(e.ratio_high)}) is over {limits.max_ratio:g} beyond doubt")
    if e.ratio <= limits.max_ratio:
        return PASS, (f"p95 ratio {e.ratio:.3f} (95 % interval {_fmt(e.ratio_low)} to {_fmt(e.ratio_high)}) "
                      f"is within {limits.max_ratio:g}; {fewest} requests or more on each side")
    return INCONCLUSIVE, (f"p95 ratio {e.ratio:.3f} is over {limits.max_ratio:g} but its 95 % interval "
                          f"({_fmt(e.ratio_low)} to {_fmt(e.ratio_high)}) reaches below it: more requests "
                          "needed to tell")


def _fmt(value: float | None) -> str:
    return "?" if value is None else f"{value:.3f}"


class Reader(Protocol):
    """One GET of an external metric: (HTTP status, JSON document)."""

    where: str

    def get(self, namespace: str, metric: str, selector: str) -> tuple[int, dict[str, Any]]: ...


class DirectReader:
    """``--server URL``: the adapter itself (or the API server) over HTTPS, optionally with a token."""

    def __init__(self, server: str, *, insecure: bool = False, ca_file: Path | None = None,
                 token: str | None = None, timeout: float = 10.0) -> None:
        parsed = urllib.parse.urlsplit(server)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise GateError(f"--server {server!r} is not an http(s) URL")
        self.where = server.rstrip("/")
        self._token = token
        self._timeout = timeout
        self._context: ssl.SSLContext | None = None
        if parsed.scheme == "https":
            self._context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
            if insecure:
                self._context.check_hostname = False
                self._context.verify_mode = ssl.CERT_NONE

    def get(self, namespace: str, metric: str, selector: str) -> tuple[int, dict[str, Any]]:
        url = (f"{self.where}{PREFIX}/namespaces/{urllib.parse.quote(namespace)}/{metric}?"
               + urllib.parse.urlencode({"labelSelector": selector}))
        request = urllib.request.Request(url, headers={"Accept": "application/json"})
        if self._token:
            request.add_header("Authorization", f"Bearer {self._token}")
        try:
            with urllib.request.urlopen(request, timeout=self._timeout, context=self._context) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, _json_or_message(exc.read())
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise GateError(f"cannot read {url}: {reason}") from exc


class ClusterReader:
    """Through the cluster's API server (kubeconfig, else in-cluster), as the HPA controller reads."""

    def __init__(self, kubeconfig: Path | None, timeout: float = 10.0) -> None:
        from kubernetes import client, config

        configuration = client.Configuration()
        try:
            if kubeconfig is None and Path("/var/run/secrets/kubernetes.io/serviceaccount/token").exists():
                config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
            else:
                config.load_kube_config(  # type: ignore[no-untyped-call]
                    config_file=str(kubeconfig) if kubeconfig else None, client_configuration=configuration)
        except Exception as exc:  # the loaders raise many kinds
            raise GateError(f"cannot load kubeconfig {kubeconfig or '(default)'}: {exc}") from exc
        configuration.retries = 0
        self.where = str(configuration.host)
        self._api = client.CustomObjectsApi(client.ApiClient(configuration))
        self._timeout = timeout

    def get(self, namespace: str, metric: str, selector: str) -> tuple[int, dict[str, Any]]:
        from kubernetes.client.exceptions import ApiException

        try:
            doc = self._api.list_namespaced_custom_object(
                "external.metrics.k8s.io", "v1beta1", namespace, metric, label_selector=selector,
                _request_timeout=self._timeout)
            if not isinstance(doc, dict):
                raise GateError(f"the API server at {self.where} answered something other than a list")
            return 200, doc
        except ApiException as exc:
            if exc.status in (0, None):
                raise GateError(f"cannot reach the API server at {self.where}: {exc.reason}") from exc
            return int(exc.status), _json_or_message(exc.body or b"")
        except Exception as exc:  # urllib3 connection errors and timeouts
            raise GateError(f"cannot reach the API server at {self.where}: {exc}") from exc


def _json_or_message(body: bytes | str) -> dict[str, Any]:
    try:
        doc = json.loads(body)
        return doc if isinstance(doc, dict) else {"message": str(doc)}
    except ValueError:
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
        return {"message": text[:300]}


def _item(reader: Reader, namespace: str, metric: str, workload: str) -> dict[str, Any] | None:
    """The one item for ``workload=<name>``; None on 404 (no data); GateError on anything else."""
    status, doc = reader.get(namespace, metric, f"workload={workload}")
    if status == 404:
        message = str(doc.get("message", ""))
        if "is not a canary" in message:
            raise GateError(f"{reader.where}: {message}")
        return None
    if status != 200:
        raise GateError(f"{reader.where} answered {status} for {metric} in {namespace!r}: "
                        f"{doc.get('message', doc)}")
    items = doc.get("items") or []
    if not items:
        return None
    item: dict[str, Any] = items[0]
    return item


def _number(text: Any) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def _samples(reader: Reader, namespace: str, workload: str) -> int:
    """Requests in the window, from ``request_rate`` (rate x window seconds)."""
    item = _item(reader, namespace, "request_rate", workload)
    if item is None:
        return 0
    return round(float(parse_quantity(item["value"])) * float(item.get("window", 0)))


def gather(reader: Reader, namespace: str, canary: str, baseline: str) -> Evidence:
    ratio_item = _item(reader, namespace, "latency_p95_baseline_ratio", canary)
    error_item = _item(reader, namespace, "error_ratio", canary)
    error_ratio = float(parse_quantity(error_item["value"])) if error_item else None
    if ratio_item is None:
        return Evidence(None, None, None, _samples(reader, namespace, canary),
                        _samples(reader, namespace, baseline), error_ratio, None)
    labels: dict[str, str] = ratio_item.get("metricLabels") or {}
    if labels.get("baseline") not in (None, baseline):
        raise GateError(f"the adapter at {reader.where} compares {canary!r} with {labels['baseline']!r}, "
                        f"not {baseline!r} (its config: canaries)")
    canary_samples = labels.get("samples")
    baseline_samples = labels.get("baseline_samples")
    return Evidence(
        ratio=float(parse_quantity(ratio_item["value"])),
        ratio_low=_number(labels.get("ratio_low")), ratio_high=_number(labels.get("ratio_high")),
        canary_samples=int(canary_samples) if canary_samples else _samples(reader, namespace, canary),
        baseline_samples=int(baseline_samples) if baseline_samples else _samples(reader, namespace, baseline),
        error_ratio=error_ratio, trace_id=labels.get("trace_id"))


def run_gate(reader: Reader, namespace: str, canary: str, baseline: str, limits: Limits, *,
             wait_seconds: float = 0.0, as_json: bool = False, poll_seconds: float = POLL_SECONDS,
             out: Callable[[str], None] = print, clock: Callable[[], float] = time.monotonic,
             sleep: Callable[[float], None] = time.sleep) -> int:
    """Decide (polling up to ``wait_seconds`` while inconclusive), print one line or JSON; the exit status."""
    deadline = clock() + wait_seconds
    while True:
        evidence = gather(reader, namespace, canary, baseline)
        code, why = verdict(evidence, limits)
        if code != INCONCLUSIVE or clock() >= deadline:
            break
        sleep(max(0.0, min(poll_seconds, deadline - clock())))
    if as_json:
        out(json.dumps({"verdict": VERDICTS[code], **asdict(evidence), "reason": why,
                        "namespace": namespace, "canary": canary, "baseline": baseline}))
    else:
        trace = f" (slow canary request: trace {evidence.trace_id})" if evidence.trace_id else ""
        out(f"{VERDICTS[code]}: {canary} vs {baseline} in {namespace}: {why}{trace}")
    return code


def main(args: Any) -> int:
    """``latency-adapter gate``; ``args`` from the CLI parser."""
    try:
        limits = Limits(args.max_ratio, args.max_error_ratio, args.min_samples)
        if limits.max_ratio <= 0 or not 0 <= limits.max_error_ratio <= 1 or limits.min_samples < 1:
            raise GateError("--max-ratio must be > 0, --max-error-ratio in [0, 1], --min-samples >= 1")
        wait = parse_duration(args.wait) if args.wait else 0.0
        reader: Reader
        if args.server:
            token = args.token_file.read_text().strip() if args.token_file else None
            reader = DirectReader(args.server, insecure=args.insecure_skip_tls_verify,
                                  ca_file=args.certificate_authority, token=token)
        else:
            reader = ClusterReader(args.kubeconfig)
        return run_gate(reader, args.namespace, args.canary, args.baseline, limits, wait_seconds=wait,
                        as_json=args.json)
    except (GateError, OSError) as exc:
        print(f"latency-adapter gate: {exc}", file=sys.stderr)
        return USAGE
