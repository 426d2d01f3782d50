"""The real :class:`KubernetesClusterAPI` (real ``kubernetes`` client, real TLS) against the fake API server.

Each test gets a fresh :class:`FakeKubeAPI` on its event loop and a client built the way the adapter
builds it: :meth:`KubernetesClusterAPI.from_kubeconfig` on a kubeconfig file the fake wrote. The client
runs in a worker thread, so the fake keeps serving on the loop while the client waits for it.
Timeouts are short (1 s) so the failure tests stay fast.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import kubernetes
import pytest
import trustme

from adapter.kube import (
    AUTH_CONFIGMAP_NAME,
    AUTH_CONFIGMAP_NAMESPACE,
    AccessDecision,
    AccessRequest,
    ClusterAPIError,
    UserInfo,
)
from adapter.kube_client import KubernetesClusterAPI
from tests.fakes import FakeKubeAPI, allow_users
from tests.fakes.kube_api import real_client

TIMEOUT = 1.0
#: A token a caller presented to the adapter; it must never show up in an error.
ALICE_TOKEN = "alice-secret-token-0123456789"
ALICE = UserInfo(username="alice", uid="u-1", groups=("dev", "system:authenticated"),
                 extra={"scopes": ("a", "b")})
METRICS_GROUP = "external.metrics.k8s.io"


def metric_request(user: UserInfo, namespace: str = "demo", name: str = "") -> AccessRequest:
    return AccessRequest(user=user, verb="get", group=METRICS_GROUP, resource="latency_p95_seconds",
                         namespace=namespace, name=name)


@pytest.fixture
async def fake() -> AsyncIterator[FakeKubeAPI]:
    async with FakeKubeAPI(tokens={ALICE_TOKEN: ALICE}, policy=allow_users("alice")) as api:
        yield api


@pytest.fixture
def client(fake: FakeKubeAPI, tmp_path: Path) -> Iterator[KubernetesClusterAPI]:
    with real_client(fake, tmp_path / "kubeconfig", TIMEOUT) as api:
        yield api


# -- ConfigMap -------------------------------------------------------------------------------------------

async def test_reads_the_authentication_config_map(fake: FakeKubeAPI, client: KubernetesClusterAPI) -> None:
    front_proxy_ca, client_ca = trustme.CA(), trustme.CA()
    expected = fake.set_auth_config_map(
        client_ca_pem=client_ca.cert_pem.bytes(),
        requestheader_client_ca_pem=front_proxy_ca.cert_pem.bytes(),
        requestheader_allowed_names=["front-proxy-client", "aggregator"],
    )

    data = await client.read_config_map(AUTH_CONFIGMAP_NAMESPACE, AUTH_CONFIGMAP_NAME)

    assert data == expected
    assert set(data) == {"client-ca-file", "requestheader-client-ca-file", "requestheader-allowed-names",
                         "requestheader-username-headers", "requestheader-group-headers",
                         "requestheader-extra-headers-prefix"}
    assert json.loads(data["requestheader-allowed-names"]) == ["front-proxy-client", "aggregator"]
    assert json.loads(data["requestheader-username-headers"]) == ["X-Remote-User"]
    assert json.loads(data["requestheader-group-headers"]) == ["X-Remote-Group"]
    assert json.loads(data["requestheader-extra-headers-prefix"]) == ["X-Remote-Extra-"]
    assert data["requestheader-client-ca-file"].startswith("-----BEGIN CERTIFICATE-----")
    assert data["client-ca-file"] == client_ca.cert_pem.bytes().decode()
    # The adapter authenticated itself with the kubeconfig's token.
    assert fake.requests[-1].path == (
        f"/api/v1/namespaces/{AUTH_CONFIGMAP_NAMESPACE}/configmaps/{AUTH_CONFIGMAP_NAME}")
    assert fake.requests[-1].bearer == fake.adapter_token


async def test_config_map_without_data_is_empty(fake: FakeKubeAPI, client: KubernetesClusterAPI) -> None:
    fake.config_maps[("demo", "empty")] = {}
    assert await client.read_config_map("demo", "empty") == {}


async def test_missing_config_map_is_an_error(client: KubernetesClusterAPI) -> None:
    with pytest.raises(ClusterAPIError, match=r"404.*configmaps \"nope\" not found"):
        await client.read_config_map(AUTH_CONFIGMAP_NAMESPACE, "nope")


# -- TokenReview -----------------------------------------------------------------------------------------

async def test_token_review_of_a_known_token(fake: FakeKubeAPI, client: KubernetesClusterAPI) -> None:
    result = await client.review_token(ALICE_TOKEN, audiences=("https://kubernetes.default.svc",))

    assert result.authenticated
    assert result.user == ALICE
    assert result.error == ""
    (review,) = fake.token_reviews
    assert review["apiVersion"] == "authentication.k8s.io/v1"
    assert review["kind"] == "TokenReview"
    assert review["spec"] == {"token": ALICE_TOKEN, "audiences": ["https://kubernetes.default.svc"]}


async def test_token_review_of_an_unknown_token(fake: FakeKubeAPI, client: KubernetesClusterAPI) -> None:
    result = await client.review_token("who-knows")

    assert not result.authenticated
    assert result.user is None
    assert "invalid bearer token" in result.error
    assert fake.token_reviews[-1]["spec"] == {"token": "who-knows"}


# -- SubjectAccessReview ---------------------------------------------------------------------------------

async def test_access_review_allowed_and_the_body_sent(fake: FakeKubeAPI,
                                                       client: KubernetesClusterAPI) -> None:
    decision = await client.review_access(metric_request(ALICE))

    assert decision == AccessDecision(allowed=True, denied=False, reason="fake: user allowed")
    (review,) = fake.access_reviews
    assert review["apiVersion"] == "authorization.k8s.io/v1"
    assert review["kind"] == "SubjectAccessReview"
    assert review["spec"] == {
        "resourceAttributes": {"verb": "get", "group": METRICS_GROUP, "resource": "latency_p95_seconds",
                               "namespace": "demo"},
        "user": "alice",
        "uid": "u-1",
        "groups": ["dev", "system:authenticated"],
        "extra": {"scopes": ["a", "b"]},
    }


async def test_access_review_denied(fake: FakeKubeAPI, client: KubernetesClusterAPI) -> None:
    mallory = UserInfo(username="mallory", groups=("system:authenticated",))

    decision = await client.review_access(metric_request(mallory, namespace="prod", name="x"))

    assert decision == AccessDecision(allowed=False, denied=True, reason="fake: user not allowed")
    spec = fake.access_reviews[-1]["spec"]
    assert spec == {
        "resourceAttributes": {"verb": "get", "group": METRICS_GROUP, "resource": "latency_p95_seconds",
                               "namespace": "prod", "name": "x"},
        "user": "mallory",
        "groups": ["system:authenticated"],
    }


async def test_access_review_no_opinion_and_evaluation_error(fake: FakeKubeAPI,
                                                            client: KubernetesClusterAPI) -> None:
    fake.policy = lambda spec: AccessDecision(allowed=False, evaluation_error="rbac: role missing")

    decision = await client.review_access(metric_request(ALICE))

    assert decision == AccessDecision(allowed=False, denied=False, evaluation_error="rbac: role missing")


# -- failures --------------------------------------------------------------------------------------------

async def test_api_server_down(fake: FakeKubeAPI, client: KubernetesClusterAPI) -> None:
    await fake.stop()
    started = time.monotonic()

    with pytest.raises(ClusterAPIError, match="cannot connect") as caught:
        await client.review_token(ALICE_TOKEN)

    assert time.monotonic() - started < TIMEOUT + 0.5
    assert ALICE_TOKEN not in str(caught.value)
    with pytest.raises(ClusterAPIError, match="cannot connect"):
        await client.review_access(metric_request(ALICE))

    # Back on the same port: the same client works again.
    await fake.start()
    assert (await client.review_token(ALICE_TOKEN)).authenticated


async def test_api_server_slower_than_the_timeout(fake: FakeKubeAPI, client: KubernetesClusterAPI) -> None:
    fake.delay_seconds = 5.0
    for call in (lambda: client.review_token(ALICE_TOKEN),
                 lambda: client.review_access(metric_request(ALICE)),
                 lambda: client.read_config_map("kube-system", "x")):
        started = time.monotonic()
        with pytest.raises(ClusterAPIError, match=r"no answer within 1s") as caught:
            await call()
        elapsed = time.monotonic() - started
        assert TIMEOUT - 0.1 < elapsed < TIMEOUT + 0.5
        assert ALICE_TOKEN not in str(caught.value)


@pytest.mark.parametrize("code", [500, 503, 429])
async def test_api_server_error_status(fake: FakeKubeAPI, client: KubernetesClusterAPI, code: int) -> None:
    fake.fail_with = code
    # A hostile or careless server may quote the request; the token must still not leak.
    fake.fail_message = f"etcdserver: request timed out (token {ALICE_TOKEN})"

    with pytest.raises(ClusterAPIError) as caught:
        await client.review_token(ALICE_TOKEN)
    message = str(caught.value)
    assert f"answered {code}" in message
    assert "etcdserver: request timed out" in message
    assert ALICE_TOKEN not in message
    assert caught.value.__cause__ is None and caught.value.__suppress_context__

    with pytest.raises(ClusterAPIError, match=f"answered {code}"):
        await client.review_access(metric_request(ALICE))
    with pytest.raises(ClusterAPIError, match=f"answered {code}"):
        await client.read_config_map("kube-system", "x")


async def test_adapter_credentials_are_checked(fake: FakeKubeAPI, tmp_path: Path) -> None:
    wrong = KubernetesClusterAPI.from_kubeconfig(
        str(fake.kubeconfig(tmp_path / "wrong", token="not-the-adapter")), timeout_seconds=TIMEOUT)
    try:
        with pytest.raises(ClusterAPIError, match="answered 401"):
            await wrong.review_token(ALICE_TOKEN)
    finally:
        wrong.close()
    assert fake.token_reviews == []


async def test_server_certificate_is_verified(fake: FakeKubeAPI, tmp_path: Path) -> None:
    stranger_ca = trustme.CA()
    path = fake.kubeconfig(tmp_path / "other-ca", ca_pem=stranger_ca.cert_pem.bytes())
    untrusting = KubernetesClusterAPI.from_kubeconfig(str(path), timeout_seconds=TIMEOUT)
    try:
        with pytest.raises(ClusterAPIError, match="TLS failure"):
            await untrusting.read_config_map("kube-system", "x")
    finally:
        untrusting.close()
    assert fake.requests == []


# -- configuration ---------------------------------------------------------------------------------------

def test_config_load_failures_are_cluster_api_errors(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ClusterAPIError, match="cannot load kubeconfig"):
        KubernetesClusterAPI.from_kubeconfig(str(tmp_path / "missing"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_PORT", raising=False)
    with pytest.raises(ClusterAPIError, match="cannot load in-cluster config"):
        KubernetesClusterAPI.from_kubeconfig(None)


async def test_global_default_configuration_is_untouched(fake: FakeKubeAPI, tmp_path: Path) -> None:
    before = kubernetes.client.Configuration.get_default_copy().host
    api = KubernetesClusterAPI.from_kubeconfig(str(fake.kubeconfig(tmp_path / "kc")))
    api.close()
    assert kubernetes.client.Configuration.get_default_copy().host == before != fake.url


async def test_calls_do_not_block_the_event_loop(fake: FakeKubeAPI, client: KubernetesClusterAPI) -> None:
    fake.delay_seconds = 0.3
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    try:
        results = await asyncio.gather(*(client.review_access(metric_request(ALICE)) for _ in range(4)))
    finally:
        task.cancel()
    assert all(decision.allowed for decision in results)
    assert ticks > 10


# -- thread mode -----------------------------------------------------------------------------------------

def test_fake_runs_in_a_thread_for_synchronous_tests(tmp_path: Path) -> None:
    fake = FakeKubeAPI(tokens={ALICE_TOKEN: ALICE}).start_in_thread()
    try:
        path = str(fake.kubeconfig(tmp_path / "kubeconfig"))
        client = KubernetesClusterAPI.from_kubeconfig(path, timeout_seconds=TIMEOUT)
        try:
            result = asyncio.run(client.review_token(ALICE_TOKEN))
            assert result.user == ALICE
            fake.stop()
            assert not fake.running
            with pytest.raises(ClusterAPIError, match="cannot connect"):
                asyncio.run(client.review_token(ALICE_TOKEN))
            fake.start_in_thread()  # same port: the kubeconfig stays valid
            assert asyncio.run(client.review_token(ALICE_TOKEN)).authenticated
        finally:
            client.close()
    finally:
        fake.stop()
    assert len(fake.token_reviews) == 2
