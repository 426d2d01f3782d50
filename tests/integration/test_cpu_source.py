"""The Kubernetes CPU source end to end: :class:`KubernetesCpuSource` on the real
:class:`KubernetesClusterAPI` (real ``kubernetes`` client, real TLS) against the fake API server.

The fake serves Deployments, StatefulSets, Pods and metrics-server's ``PodMetrics`` in the shapes a real
cluster answers; the client is built from the kubeconfig the fake writes, as the adapter builds it. The
source's clock is a test clock, so "stale" is decided by the test, not by sleeping.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import parse_qs

import pytest

from adapter.cpu import CpuSignals, WorkloadCpu
from adapter.kube import ClusterAPIError, PodInfo, WorkloadSelector
from adapter.kube_client import KubernetesClusterAPI
from adapter.policy import PolicySettings, cpu_ratio
from adapter.sources.kubernetes import KubernetesCpuSource
from tests.clock import FakeClock
from tests.fakes.kube_api import FakeKubeAPI, real_client

TIMEOUT = 1.0
NS = "shop"
STALE_AFTER = 60.0




@pytest.fixture
async def fake() -> AsyncIterator[FakeKubeAPI]:
    async with FakeKubeAPI() as api:
        yield api


@pytest.fixture
def client(fake: FakeKubeAPI, tmp_path: Path) -> Iterator[KubernetesClusterAPI]:
    with real_client(fake, tmp_path / "kubeconfig", TIMEOUT) as api:
        yield api


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def signals() -> CpuSignals:
    return CpuSignals()


@pytest.fixture
def source(client: KubernetesClusterAPI, signals: CpuSignals, clock: FakeClock) -> KubernetesCpuSource:
    return KubernetesCpuSource(client, signals, interval_seconds=0.05, clock=clock)


def reading(signals: CpuSignals, workload: str, now: float) -> WorkloadCpu | None:
    return signals.reading(NS, workload, now, STALE_AFTER)


def assert_reading(actual: WorkloadCpu | None, usage: float, request: float, pods: int, observed_at: float,
                   without: int = 0) -> None:
    assert actual is not None
    assert actual.usage_cores == pytest.approx(usage, rel=1e-12)
    assert actual.request_cores == pytest.approx(request, rel=1e-12)
    assert (actual.pods, actual.observed_at, actual.pods_without_requests) == (pods, observed_at, without)


def events(caplog: pytest.LogCaptureFixture, event: str) -> list[dict[str, object]]:
    return [r.fields for r in caplog.records  # type: ignore[attr-defined]
            if r.name == "adapter.cpu" and getattr(r, "fields", {}).get("event") == event]


def label_selectors_sent(fake: FakeKubeAPI, path: str) -> list[str]:
    return [parse_qs(r.query).get("labelSelector", [""])[0] for r in fake.requests if r.path == path]


def workload_reads(fake: FakeKubeAPI, kind: str, name: str) -> int:
    return sum(r.path == f"/apis/apps/v1/namespaces/{NS}/{kind}/{name}" for r in fake.requests)


# -- what counts -----------------------------------------------------------------------------------------

async def test_utilisation_is_over_pods_with_requests_and_the_others_are_counted(
        fake: FakeKubeAPI, source: KubernetesCpuSource, signals: CpuSignals, clock: FakeClock,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="adapter.cpu")
    fake.add_deployment(NS, "checkout", match_labels={"app": "checkout"})
    fake.add_pod(NS, "checkout-a", {"app": "checkout"}, cpu_requests=["250m"])
    fake.set_pod_usage(NS, "checkout-a", 0.1)
    fake.add_pod(NS, "checkout-b", {"app": "checkout"}, cpu_requests=["250m", "250m"])
    fake.set_pod_usage(NS, "checkout-b", [0.2, 0.1])
    fake.add_pod(NS, "checkout-c", {"app": "checkout"}, cpu_requests=[None])  # no request at all
    fake.set_pod_usage(NS, "checkout-c", 0.5)
    fake.add_pod(NS, "checkout-d", {"app": "checkout"}, cpu_requests=["250m", None])  # one container lacks it
    fake.set_pod_usage(NS, "checkout-d", [0.3, 0.3])
    fake.add_pod(NS, "other-x", {"app": "other"}, cpu_requests=["1"])  # not selected
    fake.set_pod_usage(NS, "other-x", 0.9)

    await source.poll_once([(NS, "checkout")])

    assert_reading(reading(signals, "checkout", clock.now), usage=0.4, request=0.75, pods=2,
                   observed_at=1_000.0, without=2)
    signal = signals.signal(NS, "checkout", clock.now, STALE_AFTER)
    assert signal is not None and signal.utilization == pytest.approx(0.4 / 0.75)
    assert source.pods_without_requests == {(NS, "checkout"): 2}
    assert (source.polls, source.poll_errors, source.workloads_not_found) == (1, 0, 0)
    (logged,) = events(caplog, "cpu_pods_without_requests")
    assert logged == {"event": "cpu_pods_without_requests", "namespace": NS, "workload": "checkout",
                      "kind": "Deployment", "pods_without_requests": 2}

    # Logged when the number changes, not every poll.
    clock.now += 15
    await source.poll_once([(NS, "checkout")])
    assert len(events(caplog, "cpu_pods_without_requests")) == 1
    fake.add_pod(NS, "checkout-c", {"app": "checkout"}, cpu_requests=["500m"])
    await source.poll_once([(NS, "checkout")])
    assert [e["pods_without_requests"] for e in events(caplog, "cpu_pods_without_requests")] == [2, 1]
    assert_reading(reading(signals, "checkout", clock.now), usage=0.9, request=1.25, pods=3,
                   observed_at=1_015.0, without=1)


async def test_not_ready_pods_are_ignored(fake: FakeKubeAPI, source: KubernetesCpuSource,
                                         signals: CpuSignals, clock: FakeClock) -> None:
    fake.add_deployment(NS, "web", match_labels={"app": "web"})
    labels = {"app": "web"}
    fake.add_pod(NS, "web-ready", labels, cpu_requests=["500m"])
    fake.add_pod(NS, "web-unready", labels, cpu_requests=["500m"], ready=False)
    fake.add_pod(NS, "web-pending", labels, cpu_requests=["500m"], phase="Pending")
    fake.add_pod(NS, "web-succeeded", labels, cpu_requests=["500m"], phase="Succeeded")
    fake.add_pod(NS, "web-terminating", labels, cpu_requests=["500m"], deleting=True)
    fake.add_pod(NS, "web-unready-no-request", labels, cpu_requests=[None], ready=False)
    fake.add_pod(NS, "web-not-scraped-yet", labels, cpu_requests=["500m"])  # ready, no PodMetrics yet
    for name in ("web-ready", "web-unready", "web-pending", "web-succeeded", "web-terminating",
                 "web-unready-no-request"):
        fake.set_pod_usage(NS, name, 0.25 if name == "web-ready" else 0.5)

    await source.poll_once([(NS, "web")])

    assert_reading(reading(signals, "web", clock.now), usage=0.25, request=0.5, pods=1, observed_at=1_000.0)
    assert source.pods_without_requests == {(NS, "web"): 0}


async def test_match_expressions_select_the_right_pods(fake: FakeKubeAPI, source: KubernetesCpuSource,
                                                      signals: CpuSignals, clock: FakeClock) -> None:
    fake.add_deployment(NS, "front", match_labels={"app": "web"}, match_expressions=[
        ("tier", "In", ["frontend", "edge"]),
        ("track", "NotIn", ["canary"]),
        ("team", "Exists", []),
        ("legacy", "DoesNotExist", []),
    ])
    pods = {  # name -> (labels, selected?)
        "w1": ({"app": "web", "tier": "frontend", "team": "a"}, True),  # no track: NotIn matches absent
        "w2": ({"app": "web", "tier": "edge", "track": "stable", "team": "b"}, True),
        "w3": ({"app": "web", "tier": "frontend", "track": "canary", "team": "a"}, False),
        "w4": ({"app": "web", "tier": "backend", "team": "a"}, False),
        "w5": ({"app": "web", "tier": "edge"}, False),  # no team
        "w6": ({"app": "web", "tier": "edge", "team": "a", "legacy": "true"}, False),
        "w7": ({"app": "api", "tier": "edge", "team": "a"}, False),
        "w8": ({"tier": "edge", "team": "a"}, False),
    }
    for i, (name, (labels, _)) in enumerate(pods.items()):
        fake.add_pod(NS, name, labels, cpu_requests=["100m"])
        fake.set_pod_usage(NS, name, 0.001 * 2**i)  # distinct bits: the sum says which pods were counted

    await source.poll_once([(NS, "front")])

    expected = [i for i, (_, selected) in enumerate(pods.values()) if selected]
    assert_reading(reading(signals, "front", clock.now), usage=sum(0.001 * 2**i for i in expected),
                   request=0.1 * len(expected), pods=len(expected), observed_at=1_000.0)
    query = "app=web,!legacy,team,tier in (edge,frontend),track notin (canary)"
    assert label_selectors_sent(fake, f"/api/v1/namespaces/{NS}/pods") == [query]
    assert label_selectors_sent(fake, f"/apis/metrics.k8s.io/v1beta1/namespaces/{NS}/pods") == [query]


async def test_a_statefulset(fake: FakeKubeAPI, source: KubernetesCpuSource, signals: CpuSignals,
                             clock: FakeClock) -> None:
    fake.add_statefulset(NS, "db", match_labels={"app": "db"}, replicas=2)
    for i, usage in enumerate(("500m", "1500m")):
        fake.add_pod(NS, f"db-{i}", {"app": "db", "statefulset.kubernetes.io/pod-name": f"db-{i}"},
                     cpu_requests=["1"])
        fake.set_pod_usage(NS, f"db-{i}", usage)

    await source.poll_once([(NS, "db")])

    assert_reading(reading(signals, "db", clock.now), usage=2.0, request=2.0, pods=2, observed_at=1_000.0)
    # The Deployment is tried first; its 404 is an answer, not an error.
    assert workload_reads(fake, "deployments", "db") == workload_reads(fake, "statefulsets", "db") == 1
    assert source.poll_errors == 0


async def test_a_missing_workload_is_counted_and_the_others_are_still_polled(
        fake: FakeKubeAPI, source: KubernetesCpuSource, signals: CpuSignals, clock: FakeClock,
        caplog: pytest.LogCaptureFixture) -> None:
    fake.add_deployment(NS, "web", match_labels={"app": "web"})
    fake.add_pod(NS, "web-1", {"app": "web"}, cpu_requests=["1"])
    fake.set_pod_usage(NS, "web-1", 0.5)

    await source.poll_once([(NS, "ghost"), (NS, "web")])
    await source.poll_once([(NS, "ghost"), (NS, "web")])

    assert reading(signals, "ghost", clock.now) is None
    assert_reading(reading(signals, "web", clock.now), usage=0.5, request=1.0, pods=1, observed_at=1_000.0)
    assert (source.workloads_not_found, source.poll_errors) == (2, 0)
    assert events(caplog, "cpu_workload_not_found") == [
        {"event": "cpu_workload_not_found", "namespace": NS, "workload": "ghost"}]
    # Not cached while missing: it is looked up again (it may be created any time).
    assert workload_reads(fake, "deployments", "ghost") == workload_reads(fake, "statefulsets", "ghost") == 2

    fake.add_statefulset(NS, "ghost", match_labels={"app": "ghost"})
    fake.add_pod(NS, "ghost-0", {"app": "ghost"}, cpu_requests=["200m"])
    fake.set_pod_usage(NS, "ghost-0", 0.1)
    await source.poll_once([(NS, "ghost"), (NS, "web")])
    assert_reading(reading(signals, "ghost", clock.now), usage=0.1, request=0.2, pods=1, observed_at=1_000.0)


async def test_usage_quantities_in_nano_micro_and_millicores(fake: FakeKubeAPI, source: KubernetesCpuSource,
                                                            signals: CpuSignals, clock: FakeClock) -> None:
    fake.add_deployment(NS, "calc", match_labels={"app": "calc"})
    fake.add_pod(NS, "calc-1", {"app": "calc"}, cpu_requests=["1", "500m"])
    fake.set_pod_usage(NS, "calc-1", ["1234567n", "250m"])
    fake.add_pod(NS, "calc-2", {"app": "calc"}, cpu_requests=["1.5"])
    fake.set_pod_usage(NS, "calc-2", "1500u")
    # A native sidecar's request and usage both count.
    fake.add_pod(NS, "calc-3", {"app": "calc"}, cpu_requests=["200m"], sidecar_cpu_requests=["50m"])
    fake.set_pod_usage(NS, "calc-3", ["0.1", "2n"])

    await source.poll_once([(NS, "calc")])

    usage = 0.001234567 + 0.25 + 0.0015 + 0.1 + 0.000000002
    assert_reading(reading(signals, "calc", clock.now), usage=usage, request=3.25, pods=3,
                   observed_at=1_000.0)


async def test_no_countable_pod_writes_nothing(fake: FakeKubeAPI, source: KubernetesCpuSource,
                                              signals: CpuSignals, clock: FakeClock) -> None:
    fake.add_deployment(NS, "web", match_labels={"app": "web"})
    fake.add_pod(NS, "web-1", {"app": "web"}, cpu_requests=["1"])
    fake.set_pod_usage(NS, "web-1", 0.5)
    await source.poll_once([(NS, "web")])

    clock.now += 15
    fake.add_pod(NS, "web-1", {"app": "web"}, cpu_requests=["1"], ready=False)
    fake.add_pod(NS, "web-2", {"app": "web"}, cpu_requests=[None])
    await source.poll_once([(NS, "web")])

    # Nothing to divide by: the previous reading stays, with its own time, and ages.
    assert_reading(reading(signals, "web", clock.now), usage=0.5, request=1.0, pods=1, observed_at=1_000.0)
    assert source.pods_without_requests == {(NS, "web"): 1}
    assert source.poll_errors == 0


# -- failures: fail static -------------------------------------------------------------------------------

@pytest.mark.parametrize("endpoint", ["pods", "podmetrics"])
async def test_api_errors_keep_the_previous_reading_until_it_is_stale(
        fake: FakeKubeAPI, source: KubernetesCpuSource, signals: CpuSignals, clock: FakeClock,
        caplog: pytest.LogCaptureFixture, endpoint: str) -> None:
    caplog.set_level(logging.INFO, logger="adapter.cpu")
    fake.add_deployment(NS, "web", match_labels={"app": "web"})
    fake.add_deployment(NS, "api", match_labels={"app": "api"})
    for name in ("web-1", "api-1"):
        fake.add_pod(NS, name, {"app": name[:3]}, cpu_requests=["1"])
        fake.set_pod_usage(NS, name, 0.5)
    workloads = [(NS, "web"), (NS, "api")]
    await source.poll_once(workloads)
    settings = PolicySettings(stale_after_seconds=STALE_AFTER)

    fake.cpu_fail_with = 500
    fake.cpu_endpoints_affected = {endpoint}
    fake.set_pod_usage(NS, "web-1", 0.9)  # not seen while the API fails
    for now in (1_010.0, 1_030.0):
        clock.now = now
        await source.poll_once(workloads)

    assert source.poll_errors == 4
    assert_reading(reading(signals, "web", clock.now), usage=0.5, request=1.0, pods=1, observed_at=1_000.0)
    signal = signals.signal(NS, "web", clock.now, STALE_AFTER)
    assert signal is not None and signal.observed_at == 1_000.0
    target = settings.cpu_target_utilization
    assert cpu_ratio(signal, settings, clock.now) == pytest.approx(0.5 / target)
    # Throttled: one line per workload, not one per failed poll.
    failures = events(caplog, "cpu_poll_failed")
    assert sorted(str(f["workload"]) for f in failures) == ["api", "web"]
    assert all("answered 500" in str(f["error"]) for f in failures)

    # Past stale_after the reading is still there, with its old time, and the policy no longer uses it.
    clock.now = 1_000.0 + STALE_AFTER + 1
    await source.poll_once(workloads)
    stale = signals.signal(NS, "web", clock.now, STALE_AFTER)
    assert stale is not None and stale.observed_at == 1_000.0
    assert cpu_ratio(stale, settings, clock.now) is None

    # Recovery: a fresh reading, and one line saying so.
    fake.cpu_fail_with = None
    clock.now = 1_100.0
    await source.poll_once(workloads)
    assert_reading(reading(signals, "web", clock.now), usage=0.9, request=1.0, pods=1, observed_at=1_100.0)
    fresh = signals.signal(NS, "web", clock.now, STALE_AFTER)
    assert cpu_ratio(fresh, settings, clock.now) == pytest.approx(0.9 / target)
    assert len(events(caplog, "cpu_poll_recovered")) == 2


async def test_a_hanging_api_server_times_out_and_fails_static(
        fake: FakeKubeAPI, client: KubernetesClusterAPI, signals: CpuSignals, clock: FakeClock,
        caplog: pytest.LogCaptureFixture) -> None:
    source = KubernetesCpuSource(client, signals, clock=clock, resolve_every_polls=1)
    fake.add_deployment(NS, "web", match_labels={"app": "web"})
    fake.add_pod(NS, "web-1", {"app": "web"}, cpu_requests=["1"])
    fake.set_pod_usage(NS, "web-1", 0.5)
    await source.poll_once([(NS, "web")])

    fake.cpu_delay_seconds = 5.0
    fake.cpu_endpoints_affected = {"deployments"}
    clock.now += 15
    started = time.monotonic()
    await source.poll_once([(NS, "web")])

    assert time.monotonic() - started < TIMEOUT + 1.5
    assert source.poll_errors == 1
    (failure,) = events(caplog, "cpu_poll_failed")
    assert failure["error"] == f"read deployment {NS}/web: no answer within 1s"
    assert_reading(reading(signals, "web", clock.now), usage=0.5, request=1.0, pods=1, observed_at=1_000.0)


async def test_metrics_api_not_installed_is_an_error(fake: FakeKubeAPI, source: KubernetesCpuSource,
                                                    signals: CpuSignals, clock: FakeClock,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    fake.metrics_api_available = False
    fake.add_deployment(NS, "web", match_labels={"app": "web"})
    fake.add_pod(NS, "web-1", {"app": "web"}, cpu_requests=["1"])

    await source.poll_once([(NS, "web")])

    assert source.poll_errors == 1
    assert reading(signals, "web", clock.now) is None
    (failure,) = events(caplog, "cpu_poll_failed")
    assert str(failure["error"]).startswith(f"list pod metrics in '{NS}' (app=web): API server answered 404")


async def test_the_selector_is_cached_and_read_again_every_few_polls(
        fake: FakeKubeAPI, client: KubernetesClusterAPI, signals: CpuSignals, clock: FakeClock) -> None:
    source = KubernetesCpuSource(client, signals, clock=clock, resolve_every_polls=3)
    fake.add_deployment(NS, "web", match_labels={"app": "web"})
    fake.add_pod(NS, "web-1", {"app": "web"}, cpu_requests=["1"])
    fake.set_pod_usage(NS, "web-1", 0.5)

    for _ in range(5):
        await source.poll_once([(NS, "web")])
    assert workload_reads(fake, "deployments", "web") == 2  # polls 1 and 4

    # After a failure (poll 6, selector from the cache) it is read again at once (poll 7): the workload
    # may have been replaced.
    fake.cpu_fail_with, fake.cpu_endpoints_affected = 503, {"pods"}
    await source.poll_once([(NS, "web")])
    fake.cpu_fail_with = None
    await source.poll_once([(NS, "web")])
    assert workload_reads(fake, "deployments", "web") == 3


async def test_run_polls_every_interval_until_cancelled(fake: FakeKubeAPI, source: KubernetesCpuSource,
                                                       signals: CpuSignals, clock: FakeClock) -> None:
    fake.add_deployment(NS, "web", match_labels={"app": "web"})
    fake.add_pod(NS, "web-1", {"app": "web"}, cpu_requests=["1"])
    fake.set_pod_usage(NS, "web-1", 0.5)
    asked = 0

    def workloads() -> list[tuple[str, str]]:
        nonlocal asked
        asked += 1
        return [(NS, "web")]

    task = asyncio.create_task(source.run(workloads))
    try:
        deadline = time.monotonic() + 10
        while source.polls < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert source.polls >= 3 and asked == source.polls
    assert_reading(reading(signals, "web", clock.now), usage=0.5, request=1.0, pods=1, observed_at=1_000.0)


# -- the client calls themselves -------------------------------------------------------------------------

async def test_client_workload_selector(fake: FakeKubeAPI, client: KubernetesClusterAPI) -> None:
    fake.add_deployment(NS, "web", match_labels={"app": "web"},
                        match_expressions=[("tier", "In", ["b", "a"]), ("team", "Exists", [])])
    fake.add_statefulset(NS, "db", match_labels={"app": "db"})

    assert await client.workload_selector(NS, "web") == WorkloadSelector(
        "Deployment", {"app": "web"}, (("tier", "In", ("b", "a")), ("team", "Exists", ())))
    assert await client.workload_selector(NS, "db") == WorkloadSelector("StatefulSet", {"app": "db"})
    assert await client.workload_selector(NS, "nope") is None
    assert await client.workload_selector("elsewhere", "web") is None


async def test_client_list_pods_and_metrics(fake: FakeKubeAPI, client: KubernetesClusterAPI) -> None:
    fake.add_pod(NS, "a", {"app": "web"}, cpu_requests=["250m", "1"])
    fake.add_pod(NS, "b", {"app": "web"}, cpu_requests=["250m", None], ready=False)
    fake.add_pod(NS, "c", {"app": "web"}, cpu_requests=["0"])
    fake.add_pod(NS, "d", {"app": "other"})
    fake.add_pod("elsewhere", "e", {"app": "web"})
    fake.set_pod_usage(NS, "a", ["1234567n", "250m"])
    fake.set_pod_usage(NS, "b", 0.5)
    fake.set_pod_usage(NS, "d", 0.5)

    assert await client.list_pods(NS, "app=web") == [
        PodInfo("a", True, 1.25), PodInfo("b", False, None), PodInfo("c", True, None)]
    assert {pod.name for pod in await client.list_pods(NS, "")} == {"a", "b", "c", "d"}
    assert await client.list_pod_metrics(NS, "app=web") == {
        "a": pytest.approx(0.251234567, rel=1e-12), "b": pytest.approx(0.5)}


async def test_client_errors_name_what_failed(fake: FakeKubeAPI, client: KubernetesClusterAPI) -> None:
    fake.add_pod(NS, "bad", {"app": "web"}, cpu_requests=["lots"])
    with pytest.raises(ClusterAPIError, match=r"list pods in 'shop' \(app=web\): pod shop/bad: container "
                                              r"'c0' CPU request is not a quantity: 'lots'"):
        await client.list_pods(NS, "app=web")

    fake.cpu_fail_with = 500
    fake.cpu_endpoints_affected = {"statefulsets"}
    # The Deployment's 404 is an answer, the StatefulSet's 500 is not: an error, not "missing".
    with pytest.raises(ClusterAPIError, match=r"read statefulset shop/web: API server answered 500"):
        await client.workload_selector(NS, "web")

    fake.cpu_fail_with = None
    fake.add_deployment(NS, "odd", match_expressions=[("a", "In", [])])  # the API server would refuse it
    with pytest.raises(ClusterAPIError, match=r"read deployment shop/odd: the selector of Deployment "
                                              r"shop/odd cannot be used: .*'in' needs at least one value"):
        await client.workload_selector(NS, "odd")
