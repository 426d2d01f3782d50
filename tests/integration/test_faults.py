"""Hold under faults: the adapter's dependencies slow, erroring or gone, and back again.

Against the real ``latency-adapter serve`` process, for each of its two polled dependencies:

* the Kubernetes API (the CPU source polling Deployments, pods and ``PodMetrics``), played by
  :class:`~tests.fakes.kube_api.FakeKubeAPI`: slow (answers parked far beyond the client's 5 s timeout),
  erroring (500, then 503, then 429 ``Status`` answers), gone (its port closed, then open again);
* a real Prometheus scraping the test exporter (:mod:`tests.promql_exporter`), reached through
  :class:`FaultProxy`, a proxy in this module: slow (beyond the source's ``timeout_seconds``), erroring
  (500, 503, 429 with Prometheus' error document), gone (the proxy's port closed, then open again).

Each outage must go as the README's "How it fails" and Prometheus sections say: the last value keeps
being served (fail static) while it is younger than ``stale_after_seconds``, then the metric is missing
(404 ``NotFound``, the HPA holds; with latency still there, ``dual_signal_ratio`` follows it alone with
reason ``latency_only_cpu_missing``), the error counters on ``/metrics`` rise, and when the dependency
is back the values return by themselves, fresh, from the same adapter process. Throughout, the external
metrics API answers at once: polling never blocks the event loop, even while a poll hangs.

Intervals are short (polls and refreshes every second, a few seconds of ``stale_after_seconds``); every
wait polls (``wait_for``), none sleeps blindly.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Protocol

import pytest

from adapter.sources.prometheus_config import ERROR_KINDS
from tests.fakes.kube_api import FakeKubeAPI
from tests.integration.conftest import AdapterProcess, SpanSender
from tests.integration.process import Response, wait_for
from tests.promql_exporter import NS, SELECTOR, WINDOW, WORKLOAD, number, serve_exporter, timestamp
from tests.tooling import require_tool

if TYPE_CHECKING:
    from tests.prometheus import PrometheusFactory, PrometheusServer

pytest_plugins = ["tests.prometheus"]

#: An API answer slower than this means the event loop was held up (a hanging poll takes 5 s).
FAST = 1.0
#: The adapter's HTTP timeout for Kubernetes API calls (not configurable: the client's default).
KUBE_TIMEOUT = 5.0
KUBE_STALE = 5.0
#: A value is already refresh_seconds (1) + query_offset_seconds (2, the default) old when it is new; this
#: leaves about 3 s of fail static to observe.
PROM_STALE = 6.0
PROM_TIMEOUT = 0.5
CHECKOUT, CART = "workload=checkout", "workload=cart"
CPU_ERRORS = "latency_adapter_cpu_poll_errors_total"
PROM_ERRORS = "latency_adapter_prometheus_query_errors_total"
ROUNDS = "latency_adapter_prometheus_refresh_rounds_total"
LAST_SUCCESS = "latency_adapter_prometheus_last_success_timestamp_seconds"
#: Server errors, then throttling: none of them is an answer.
ERROR_CODES = (500, 503, 429)


# ---------------------------------------------------------------------------------------------------------
# What every outage shares: answers on the way to "missing", and the documented 404.


def until_missing(adapter: AdapterProcess, metric: str, selector: str, timeout: float) -> list[Response]:
    """Ask for ``metric`` every 0.1 s until it answers 404; every answer on the way, the 404 last.

    Each answer must come fast: the API reads what the pollers left and never waits for them."""
    answers: list[Response] = []

    def check() -> bool:
        resp = adapter.value(NS, metric, selector)
        answers.append(resp)
        assert resp.status in (200, 404), resp
        return resp.status == 404

    wait_for(check, timeout, f"{metric} for {selector} to go missing", interval=0.1)
    slowest = max(answers, key=lambda r: r.elapsed)
    assert slowest.elapsed < FAST, f"the API was held up while a dependency was broken: {slowest}"
    assert all(r.status == 200 for r in answers[:-1]), answers
    return answers


def assert_not_found(resp: Response, *words: str) -> dict[str, Any]:
    """The documented answer for missing data: a 404 ``Status``, reason ``NotFound``, saying what lacks."""
    assert resp.status == 404, resp
    doc: dict[str, Any] = resp.json()
    assert (doc["kind"], doc["reason"], doc["code"]) == ("Status", "NotFound", 404), doc
    for word in words:
        assert word in doc["message"], doc
    return doc


def item_of(resp: Response) -> dict[str, Any]:
    assert resp.status == 200, resp
    item: dict[str, Any] = resp.json()["items"][0]
    return item


def one_item(adapter: AdapterProcess, metric: str, selector: str,
             check: Callable[[dict[str, Any]], bool] = lambda item: True, timeout: float = 15.0
             ) -> dict[str, Any]:
    """The first item of ``metric`` that passes ``check`` (waiting for it)."""

    def ready() -> dict[str, Any] | None:
        resp = adapter.value(NS, metric, selector)
        if resp.status != 200:
            return None
        item = item_of(resp)
        return item if check(item) else None

    return wait_for(ready, timeout, f"{metric} for {selector}", interval=0.1)


def reason_is(reason: str) -> Callable[[dict[str, Any]], bool]:
    return lambda item: bool(item["metricLabels"].get("reason") == reason)


def events_of(adapter: AdapterProcess, event: str) -> list[dict[str, Any]]:
    return [e for e in adapter.log_events() if e.get("event") == event and e.get("workload") == "checkout"]


@dataclass(frozen=True)
class Fault:
    """How a test breaks a dependency and mends it.

    ``begin`` breaks it (returning once it is broken); ``during`` runs while the last value still serves
    (more kinds of the same fault); ``end`` mends it, and runs too when a check fails on the way, so it
    must be harmless when there is nothing to mend.
    """

    begin: Callable[[], object]
    end: Callable[[], object]
    during: Callable[[], object] = lambda: None


def erroring(answer_with: Callable[[int], None], end: Callable[[], object]) -> Fault:
    """500 first, then (while the last value still serves) 503 and 429; ``answer_with(code)`` switches to
    ``code`` and returns once the adapter met it."""
    first, *others = ERROR_CODES

    def during() -> None:
        for code in others:
            answer_with(code)

    return Fault(lambda: answer_with(first), end, during)


class Listener(Protocol):
    """A server run from a thread of this process that can close its port and open it again."""

    @property
    def port(self) -> int: ...

    @property
    def running(self) -> bool: ...

    def start_in_thread(self) -> object: ...

    def stop(self) -> object: ...


def gone(server: Listener) -> Fault:
    """Close ``server``'s port; it comes back on the same one (the adapter keeps its URL)."""
    port = server.port

    def back() -> None:
        if not server.running:
            server.start_in_thread()
        assert server.port == port

    return Fault(server.stop, back)


# ---------------------------------------------------------------------------------------------------------
# The Kubernetes API: CPU of "checkout" (CPU only) and "cart" (CPU and latency from spans).


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeKubeAPI]:
    api = FakeKubeAPI()
    for name in ("checkout", "cart"):
        api.add_deployment(NS, name, match_labels={"app": name})
        api.add_pod(NS, f"{name}-1", {"app": name}, cpu_requests=["1"])
    api.set_pod_usage(NS, "checkout-1", 0.5)
    api.set_pod_usage(NS, "cart-1", 0.6)  # 0.6 of 1 core: CPU ratio 1 at the default target 0.6
    with api.start_in_thread():
        yield api


@pytest.fixture(scope="module")
def kube_adapter(fake: FakeKubeAPI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AdapterProcess]:
    base = tmp_path_factory.mktemp("faults-kube")
    config = {"store": {"window_seconds": 60, "slice_seconds": 1},
              "defaults": {"stale_after_seconds": KUBE_STALE, "min_samples": 10},
              "workloads": [{"namespace": NS, "workload": "checkout"}, {"namespace": NS, "workload": "cart"}]}
    proc = AdapterProcess(base, config)
    proc.args += ["--kubeconfig", str(fake.kubeconfig(base / "kubeconfig")), "--cpu-source", "kubernetes",
                  "--cpu-poll-seconds", "1"]
    proc.start()
    yield proc
    assert proc.stop() == 0, proc.stderr_tail()


def ride_out(adapter: AdapterProcess, fake: FakeKubeAPI, fault: Fault, *, error: tuple[str, ...],
             usage: float, met: Callable[[], bool] | None = None) -> None:
    """Break the API server with ``fault``; check the adapter serves, then misses, then recovers.

    ``met``: true once the adapter has met the fault (default: a failed poll counted); ``error``: one of
    these is in the ``cpu_poll_failed`` log line; ``usage``: checkout's CPU usage on the API server from
    the start of the outage on (it changes while the adapter cannot see it, so recovered values are told
    from cached ones).
    """
    SpanSender(adapter.otlp_port).send(NS, "cart", [0.1] * 30)  # cart's latency: p95 0.1 s, ratio 0.4
    cpu = number(one_item(adapter, "cpu_utilization", CHECKOUT))
    dual = one_item(adapter, "dual_signal_ratio", CHECKOUT, reason_is("cpu_only_low_traffic"))
    one_item(adapter, "dual_signal_ratio", CART, reason_is("cpu"))  # both signals: CPU's 1.0 beats 0.4
    errors = adapter.counter(CPU_ERRORS)
    logged = len(events_of(adapter, "cpu_poll_failed"))
    recovered = len(events_of(adapter, "cpu_poll_recovered"))
    pid = adapter.proc.pid if adapter.proc else None

    started = time.monotonic()
    fault.begin()
    try:
        fake.set_pod_usage(NS, "checkout-1", usage)
        wait_for(met or (lambda: adapter.counter(CPU_ERRORS) > errors), KUBE_TIMEOUT + 5,
                 "the adapter to meet the fault")
        # Fail static: the last reading still serves, unchanged, and so does the decision built on it.
        assert number(item_of(adapter.value(NS, "cpu_utilization", CHECKOUT))) == pytest.approx(cpu)
        held = item_of(adapter.value(NS, "dual_signal_ratio", CHECKOUT))
        assert (held["value"], held["metricLabels"]) == (dual["value"], dual["metricLabels"]), (held, dual)
        fault.during()

        # Then missing: cpu_utilization and the CPU-only ratio answer 404; cart's ratio follows latency.
        answers = until_missing(adapter, "cpu_utilization", CHECKOUT, KUBE_STALE + KUBE_TIMEOUT + 5)
        assert time.monotonic() - started >= KUBE_STALE - 2.5
        assert all(number(item_of(r)) == pytest.approx(cpu) for r in answers[:-1]), answers
        assert_not_found(answers[-1], "no CPU data", "'checkout'", f"within the last {KUBE_STALE:g}s")
        assert_not_found(adapter.value(NS, "dual_signal_ratio", CHECKOUT), "neither signal is usable",
                         "the HPA holds")
        alone = one_item(adapter, "dual_signal_ratio", CART, reason_is("latency_only_cpu_missing"),
                         timeout=5)
        assert number(alone) == pytest.approx(0.1 / 0.25, rel=0.02), alone
        # Counted on /metrics, and logged once with the cause.
        wait_for(lambda: adapter.counter(CPU_ERRORS) > errors, KUBE_TIMEOUT + 5, "failed polls counted")
        failed = wait_for(lambda: events_of(adapter, "cpu_poll_failed")[logged:] or None, 5,
                          "a cpu_poll_failed line")
        assert any(text in failed[0]["error"] for text in error), failed
        assert len(events_of(adapter, "cpu_poll_failed")[logged:]) == 1  # not one per failed poll
    finally:
        fault.end()

    # The API server is back: fresh values (the usage it changed meanwhile), no restart.
    item = one_item(adapter, "cpu_utilization", CHECKOUT, lambda item: number(item) == pytest.approx(usage),
                    timeout=KUBE_TIMEOUT + 5)
    assert number(item) != pytest.approx(cpu)
    one_item(adapter, "dual_signal_ratio", CHECKOUT, reason_is("cpu_only_low_traffic"))
    one_item(adapter, "dual_signal_ratio", CART, reason_is("cpu"))
    wait_for(lambda: len(events_of(adapter, "cpu_poll_recovered")) > recovered, 5,
             "a cpu_poll_recovered line")
    assert adapter.alive() and adapter.proc is not None and adapter.proc.pid == pid


def test_kube_api_slow(kube_adapter: AdapterProcess, fake: FakeKubeAPI) -> None:
    """Every CPU call hangs far beyond the client's timeout: polls time out, the API keeps answering.

    Back to 0, the fake answers the parked requests at once, like an API server that recovers."""
    fault = Fault(lambda: setattr(fake, "cpu_delay_seconds", 60.0),
                  lambda: setattr(fake, "cpu_delay_seconds", 0.0))
    ride_out(kube_adapter, fake, fault, met=lambda: fake.parked > 0,
             error=(f"no answer within {KUBE_TIMEOUT:g}s",), usage=0.3)


def test_kube_api_erroring(kube_adapter: AdapterProcess, fake: FakeKubeAPI) -> None:
    """500, then 503, then 429 (throttled) ``Status`` answers: each fails a poll; none is a value."""

    def answer_with(code: int) -> None:
        fake.cpu_fail_with = code
        asked, failed = len(fake.requests), kube_adapter.counter(CPU_ERRORS)
        wait_for(lambda: len(fake.requests) > asked and kube_adapter.counter(CPU_ERRORS) > failed, 5,
                 f"a poll answered {code}")

    fault = erroring(answer_with, lambda: setattr(fake, "cpu_fail_with", None))
    ride_out(kube_adapter, fake, fault, error=("API server answered 500",), usage=0.7)


def test_kube_api_gone(kube_adapter: AdapterProcess, fake: FakeKubeAPI) -> None:
    """The API server's port is closed: connections are refused until it listens again, same port."""
    # Refused; or, for a poll caught in the middle, the connection the fake dropped.
    error = ("cannot connect to the API server", "connection to the API server failed")
    ride_out(kube_adapter, fake, gone(fake), error=error, usage=0.4)


# ---------------------------------------------------------------------------------------------------------
# Prometheus: a real one scraping the test exporter, behind a proxy that breaks on demand.


class FaultProxy:
    """A plain HTTP proxy to ``upstream`` (a PromQL backend) that can be made slow, erroring or gone.

    Knobs, changed at any time from the test: :attr:`delay_seconds` (each request waits this long
    before it is forwarded; re-read while waiting, so 0 lets the waiting ones through), :attr:`fail_with`
    (answer this status with Prometheus' error document instead); :meth:`stop` closes the port and
    :meth:`start_in_thread` listens again on the same one. One connection per request (HTTP/1.0), so
    "gone" is "connection refused", never a kept-alive connection that outlives the listener.
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.delay_seconds = 0.0
        self.fail_with: int | None = None
        self.port = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._closing = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start_in_thread(self) -> FaultProxy:
        """Serve from a daemon thread (on the port of before, after a :meth:`stop`)."""
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # the name http.server calls
                status, body = proxy.answer(self.path)
                head = {"Content-Type": "application/json", "Content-Length": str(len(body))}
                with contextlib.suppress(OSError):  # the adapter may have given up (its timeout)
                    self.send_response(status)
                    for name, value in head.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client that hung up: nothing to report

        self._closing.clear()
        self._server = Server(("127.0.0.1", self.port), Handler)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fault-proxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        server, thread, self._server, self._thread = self._server, self._thread, None, None
        self._closing.set()
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(5)

    @property
    def running(self) -> bool:
        return self._server is not None

    def answer(self, path: str) -> tuple[int, bytes]:
        started = time.monotonic()
        while (left := self.delay_seconds - (time.monotonic() - started)) > 0:
            if self._closing.wait(min(left, 0.05)):
                break
        code = self.fail_with
        if code is not None:
            kind = {503: "unavailable", 429: "too_many_requests"}.get(code, "internal")
            return code, json.dumps({"status": "error", "errorType": kind,
                                     "error": f"fault proxy: injected {code}"}).encode()
        try:
            with urllib.request.urlopen(self.upstream + path, timeout=10) as resp:
                return int(resp.status), resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except OSError as exc:
            document = {"status": "error", "errorType": "unavailable", "error": str(exc)}
            return 502, json.dumps(document).encode()


@pytest.fixture(scope="module")
def prometheus_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusFactory]:
    """One Prometheus for the module's three outages (overrides the per-test fixture of the plugin)."""
    from tests.prometheus import PrometheusFactory  # imported here: pytest loads it as a plugin first

    factory = PrometheusFactory(tmp_path_factory.mktemp("faults-prometheus"), require_tool("prometheus"))
    yield factory
    factory.stop_all()


@pytest.fixture(scope="module")
def proxy(prometheus_factory: PrometheusFactory) -> Iterator[FaultProxy]:
    """The test exporter, a real Prometheus scraping it, and the proxy in front of that Prometheus."""
    with serve_exporter() as exporter:
        prom: PrometheusServer = prometheus_factory([f"127.0.0.1:{exporter}"], job="app")
        proxy = FaultProxy(prom.url("")).start_in_thread()
        try:
            yield proxy
        finally:
            proxy.stop()


@pytest.fixture(scope="module")
def prom_adapter(proxy: FaultProxy, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AdapterProcess]:
    """The adapter asking Prometheus through the proxy, every second, giving up on a query after 0.5 s."""
    config = {"store": {"window_seconds": 30, "slice_seconds": 1},
              "sources": {"prometheus": {"url": proxy.url, "refresh_seconds": 1,
                                         "timeout_seconds": PROM_TIMEOUT, "window_seconds": WINDOW}},
              "defaults": {"stale_after_seconds": PROM_STALE, "min_samples": 10},
              "workloads": [{"namespace": NS, "workload": WORKLOAD, "source": "prometheus"}]}
    adapter = AdapterProcess(tmp_path_factory.mktemp("faults-prom-adapter"), config)
    try:
        adapter.start()
        yield adapter
        assert adapter.stop() == 0, adapter.stderr_tail()
    finally:
        adapter.stop()


def prom_outage(adapter: AdapterProcess, fault: Fault, kind: str) -> None:
    """Break the backend with ``fault``; cached values (their time frozen) until stale, then 404, then
    fresh values again. ``kind``: what the failed queries are counted as."""
    # Values first (the first test waits here for Prometheus' first scrapes), the ratio on both signals.
    one_item(adapter, "latency_p95_seconds", SELECTOR, timeout=45)
    one_item(adapter, "cpu_utilization", SELECTOR)
    one_item(adapter, "dual_signal_ratio", SELECTOR, reason_is("latency"))
    errors = adapter.counter(PROM_ERRORS, kind=kind)
    others = {k: adapter.counter(PROM_ERRORS, kind=k) for k in ERROR_KINDS if k != kind}
    pid = adapter.proc.pid if adapter.proc else None

    fault.begin()
    try:
        started = time.time()  # a refresh already under way may still get its answers until now
        rounds = adapter.counter(ROUNDS)
        wait_for(lambda: adapter.counter(PROM_ERRORS, kind=kind) > errors, PROM_TIMEOUT + 5,
                 f"failed queries counted as {kind}")
        # The refresh under way at the fault may still land (its exemplar query failing first): wait for
        # the next round too, which met the fault with every query.
        wait_for(lambda: adapter.counter(ROUNDS) >= rounds + 2, PROM_TIMEOUT + 5, "a round in the fault")
        # Fail static: the cached p95, stamped with the last refresh that was answered, before the fault.
        cached = item_of(adapter.value(NS, "latency_p95_seconds", SELECTOR))
        frozen = timestamp(cached)
        assert frozen <= started, (cached, started)
        assert 0 < adapter.counter(LAST_SUCCESS) < started + 0.5
        item_of(adapter.value(NS, "dual_signal_ratio", SELECTOR))
        fault.during()

        # Then missing, stale_after_seconds after that refresh; nothing newer was ever served.
        answers = until_missing(adapter, "latency_p95_seconds", SELECTOR, PROM_STALE + 5)
        assert time.time() >= frozen + PROM_STALE
        assert all(item_of(r) == cached for r in answers[:-1]), answers
        assert_not_found(answers[-1], "no fresh Prometheus value", "stale_after_seconds")
        assert_not_found(adapter.value(NS, "cpu_utilization", SELECTOR), "no CPU data")
        assert_not_found(adapter.value(NS, "dual_signal_ratio", SELECTOR), "neither signal is usable")
        assert adapter.counter(LAST_SUCCESS) < started + 0.5
        assert {k: adapter.counter(PROM_ERRORS, kind=k) for k in others} == others  # counted as one kind
    finally:
        fault.end()

    # The backend is back: fresh values, from the same process.
    again = one_item(adapter, "latency_p95_seconds", SELECTOR, lambda item: timestamp(item) > frozen)
    assert number(again) == pytest.approx(number(cached), rel=0.05)
    one_item(adapter, "dual_signal_ratio", SELECTOR, reason_is("latency"))
    assert adapter.counter(LAST_SUCCESS) > started
    assert adapter.alive() and adapter.proc is not None and adapter.proc.pid == pid


def test_prometheus_slow(prom_adapter: AdapterProcess, proxy: FaultProxy) -> None:
    """Every query waits beyond ``timeout_seconds``: timeouts, and the API answers at once meanwhile."""
    fault = Fault(lambda: setattr(proxy, "delay_seconds", 30.0), lambda: setattr(proxy, "delay_seconds", 0.0))
    prom_outage(prom_adapter, fault, "timeout")


def test_prometheus_erroring(prom_adapter: AdapterProcess, proxy: FaultProxy) -> None:
    """500, then 503, then 429 with Prometheus' error document: counted as ``http_status``; no value."""

    def answer_with(code: int) -> None:
        proxy.fail_with = code
        failed = prom_adapter.counter(PROM_ERRORS, kind="http_status")
        wait_for(lambda: prom_adapter.counter(PROM_ERRORS, kind="http_status") > failed, PROM_TIMEOUT + 5,
                 f"queries answered {code} counted")

    prom_outage(prom_adapter, erroring(answer_with, lambda: setattr(proxy, "fail_with", None)), "http_status")


def test_prometheus_gone(prom_adapter: AdapterProcess, proxy: FaultProxy) -> None:
    """The backend's port is closed: connections refused until it listens again on the same port."""
    prom_outage(prom_adapter, gone(proxy), "connection")
