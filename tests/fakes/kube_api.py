"""A fake Kubernetes API server: real TLS, the same JSON a real one answers, and knobs to break it.

Why a fake and not mocks: the adapter talks to the API server through the real ``kubernetes`` client
(:mod:`adapter.kube_client`), which reads a kubeconfig, verifies the server certificate and (de)serialises
the objects itself. Tests should exercise all of that, so this is an aiohttp server on ``127.0.0.1`` with a
``trustme`` CA, and :meth:`FakeKubeAPI.kubeconfig` writes the kubeconfig that points a client at it.

It serves:

* ``GET /api/v1/namespaces/{ns}/configmaps/{name}`` -> ``ConfigMap`` (404 ``Status`` when absent);
* ``POST /apis/authentication.k8s.io/v1/tokenreviews`` -> the review with ``status`` filled from
  :attr:`FakeKubeAPI.tokens` (an unknown token is ``{"user": {}, "error": ...}``, no ``authenticated``,
  as kube-apiserver omits ``false``);
* ``POST /apis/authorization.k8s.io/v1/subjectaccessreviews`` -> the review with ``status`` from
  :attr:`FakeKubeAPI.policy`; every received body is kept in :attr:`FakeKubeAPI.access_reviews`;
* ``GET /apis/apps/v1/namespaces/{ns}/deployments/{name}`` and ``.../statefulsets/{name}`` -> the
  workload (404 ``Status`` when absent), from :meth:`FakeKubeAPI.add_deployment` /
  :meth:`FakeKubeAPI.add_statefulset`;
* ``GET /api/v1/namespaces/{ns}/pods?labelSelector=`` -> ``PodList`` filtered by the selector, from
  :meth:`FakeKubeAPI.add_pod`;
* ``GET /apis/metrics.k8s.io/v1beta1/namespaces/{ns}/pods?labelSelector=`` -> ``PodMetricsList`` (what
  metrics-server answers) for the pods given a usage with :meth:`FakeKubeAPI.set_pod_usage`.

Fault injection (plain attributes, change them any time, from any thread): :attr:`delay_seconds`,
:attr:`fail_with` (HTTP status answered with a ``Status`` body), :attr:`fail_message`, and stopping and
starting the listener on the same port. The workload, pod and pod-metrics endpoints have their own
knobs, so the reviews keep working while they fail: :attr:`cpu_fail_with`, :attr:`cpu_delay_seconds`
(hang), :attr:`cpu_endpoints_affected` (which of them) and :attr:`metrics_api_available` (metrics-server
not installed: 404). A delayed request re-reads its delay knob while it waits, so setting it back to 0
answers the parked requests at once (an API server that recovers), as stopping does; :attr:`parked`
counts the requests waiting right now. When :attr:`adapter_token` is set, every request must carry
``Authorization: Bearer <adapter_token>`` (the adapter's own credentials) or gets a 401 ``Status``.

Two ways to run it:

* on the test's event loop: ``async with FakeKubeAPI(...) as api:`` (``await api.stop()`` /
  ``await api.start()`` to take it down and bring it back);
* on its own loop in a background thread, for synchronous tests that drive a subprocess:
  ``api.start_in_thread()`` ... ``api.stop()`` (``stop()`` blocks in this mode; ``start_in_thread()``
  again brings it back). ``with FakeKubeAPI(...) as api:`` does the same.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import ssl
import threading
import uuid
from collections.abc import Awaitable, Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import trustme
import yaml
from aiohttp import web

from adapter.errors import BadSelector
from adapter.kube import AUTH_CONFIGMAP_NAME, AUTH_CONFIGMAP_NAMESPACE, AccessDecision, UserInfo
from adapter.selector import parse_selector

#: The decision function: gets the SubjectAccessReview ``spec`` (JSON, as received), answers a decision
#: (or a bare bool for "allowed").
Policy = Callable[[dict[str, Any]], AccessDecision | bool]

_REASONS = {
    400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 409: "AlreadyExists",
    422: "Invalid", 429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable", 504: "Timeout",
}
_CREATION_TIMESTAMP = "2024-01-01T00:00:00Z"
#: The endpoints :attr:`FakeKubeAPI.cpu_fail_with` and :attr:`FakeKubeAPI.cpu_delay_seconds` can break.
CPU_ENDPOINTS = frozenset({"deployments", "statefulsets", "pods", "podmetrics"})
#: ``(key, operator, values)`` as in a ``matchExpressions`` entry, e.g. ``("tier", "In", ["web"])``.
Expression = tuple[str, str, Sequence[str]]


def deny_all(spec: dict[str, Any]) -> AccessDecision:
    """The default policy: no opinion, so not allowed (what RBAC answers for an unknown user)."""
    return AccessDecision(allowed=False, reason="fake: no policy configured")


def allow_users(*usernames: str) -> Policy:
    """A policy that allows every request of the named users and denies (``denied: true``) the rest."""

    def policy(spec: dict[str, Any]) -> AccessDecision:
        if spec.get("user") in usernames:
            return AccessDecision(allowed=True, reason="fake: user allowed")
        return AccessDecision(allowed=False, denied=True, reason="fake: user not allowed")

    return policy


def auth_config_map_data(
    *,
    client_ca_pem: str | bytes | None = None,
    requestheader_client_ca_pem: str | bytes | None = None,
    requestheader_allowed_names: Sequence[str] = ("front-proxy-client",),
    username_headers: Sequence[str] = ("X-Remote-User",),
    group_headers: Sequence[str] = ("X-Remote-Group",),
    extra_headers_prefix: Sequence[str] = ("X-Remote-Extra-",),
) -> dict[str, str]:
    """The ``data`` of ``kube-system/extension-apiserver-authentication`` as kube-apiserver writes it.

    The list keys hold JSON arrays in strings (e.g. ``'["X-Remote-User"]'``), exactly as in a cluster.
    """

    def pem(value: str | bytes) -> str:
        return value.decode("ascii") if isinstance(value, bytes) else value

    data: dict[str, str] = {}
    if client_ca_pem is not None:
        data["client-ca-file"] = pem(client_ca_pem)
    if requestheader_client_ca_pem is not None:
        data.update({
            "requestheader-client-ca-file": pem(requestheader_client_ca_pem),
            "requestheader-allowed-names": json.dumps(list(requestheader_allowed_names)),
            "requestheader-username-headers": json.dumps(list(username_headers)),
            "requestheader-group-headers": json.dumps(list(group_headers)),
            "requestheader-extra-headers-prefix": json.dumps(list(extra_headers_prefix)),
        })
    return data


def status_body(code: int, message: str, reason: str | None = None,
                details: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A ``metav1.Status`` failure object, as the API server sends it."""
    body: dict[str, Any] = {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
        "reason": reason or _REASONS.get(code, "Unknown"), "code": code,
    }
    if details:
        body["details"] = dict(details)
    return body


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    #: The bearer token the client presented ("" when none); lets tests check the adapter's credentials.
    bearer: str
    #: The raw query string (e.g. ``labelSelector=app%3Dweb``).
    query: str = ""


class _Done:
    """An awaitable that is already finished: :meth:`FakeKubeAPI.stop` returns it in thread mode, so both
    ``api.stop()`` and ``await api.stop()`` work there."""

    def __await__(self) -> Generator[Any, None, None]:
        return
        yield


class FakeKubeAPI:
    """An in-process Kubernetes API server for the calls the adapter makes (see the module docstring)."""

    def __init__(
        self,
        *,
        config_maps: Mapping[tuple[str, str], Mapping[str, str]] | None = None,
        tokens: Mapping[str, UserInfo] | None = None,
        policy: Policy = deny_all,
        adapter_token: str | None = "fake-adapter-token",
        ca: trustme.CA | None = None,
        delay_seconds: float = 0.0,
        fail_with: int | None = None,
    ) -> None:
        #: ``(namespace, name) -> data``; mutate freely.
        self.config_maps: dict[tuple[str, str], dict[str, str]] = {
            key: dict(value) for key, value in (config_maps or {}).items()}
        #: ``token -> user`` for TokenReview; mutate freely.
        self.tokens: dict[str, UserInfo] = dict(tokens or {})
        self.policy: Policy = policy
        #: The token the adapter itself must present; None accepts any request.
        self.adapter_token = adapter_token
        self.delay_seconds = delay_seconds
        self.fail_with = fail_with
        #: ``message`` of the ``Status`` answered when :attr:`fail_with` is set.
        self.fail_message = "fake: injected failure"
        #: What was asked, in order: every request, and the bodies of the reviews that were answered.
        self.requests: list[RecordedRequest] = []
        self.token_reviews: list[dict[str, Any]] = []
        self.access_reviews: list[dict[str, Any]] = []
        #: ``(namespace, name) -> object`` (the JSON served); fill with the ``add_*`` methods.
        self.deployments: dict[tuple[str, str], dict[str, Any]] = {}
        self.statefulsets: dict[tuple[str, str], dict[str, Any]] = {}
        self.pods: dict[tuple[str, str], dict[str, Any]] = {}
        #: ``(namespace, pod) -> CPU usage per container`` (quantity strings, as metrics-server writes).
        self.pod_usage: dict[tuple[str, str], list[str]] = {}
        #: Fault injection for the endpoints in :attr:`cpu_endpoints_affected` only.
        self.cpu_fail_with: int | None = None
        self.cpu_delay_seconds = 0.0
        self.cpu_endpoints_affected: set[str] = set(CPU_ENDPOINTS)
        #: Requests held by :attr:`delay_seconds` or :attr:`cpu_delay_seconds` right now.
        self.parked = 0
        #: False: ``metrics.k8s.io`` is not served (no metrics-server), its list answers 404.
        self.metrics_api_available = True

        self.ca = ca or trustme.CA()
        self._server_cert = self.ca.issue_cert("127.0.0.1", "localhost")
        self._port = 0
        self._runner: web.AppRunner | None = None
        self._stopping: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._thread_loop: asyncio.AbstractEventLoop | None = None

    # -- where it is ---------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError("FakeKubeAPI has not been started")
        return self._port

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def ca_pem(self) -> bytes:
        """The CA certificate (PEM) that signed the server certificate."""
        return self.ca.cert_pem.bytes()

    @property
    def running(self) -> bool:
        return self._runner is not None

    def kubeconfig(self, path: str | Path, *, token: str | None = None,
                   ca_pem: bytes | None = None) -> Path:
        """Write a kubeconfig for this server to ``path`` and return the path.

        ``token`` defaults to :attr:`adapter_token`; ``ca_pem`` defaults to this server's CA (pass another
        CA to test certificate verification).
        """
        user: dict[str, Any] = {}
        bearer = token if token is not None else self.adapter_token
        if bearer:
            user["token"] = bearer
        document = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {
                "server": self.url,
                "certificate-authority-data": base64.b64encode(ca_pem or self.ca_pem).decode("ascii"),
            }}],
            "users": [{"name": "adapter", "user": user}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "adapter"}}],
            "current-context": "fake",
            "preferences": {},
        }
        target = Path(path)
        target.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
        return target

    def set_auth_config_map(self, **kwargs: Any) -> dict[str, str]:
        """Store ``kube-system/extension-apiserver-authentication`` built by :func:`auth_config_map_data`."""
        data = auth_config_map_data(**kwargs)
        self.config_maps[(AUTH_CONFIGMAP_NAMESPACE, AUTH_CONFIGMAP_NAME)] = data
        return data

    # -- workloads, pods and pod metrics ------------------------------------------------------------

    def add_deployment(self, namespace: str, name: str, *, match_labels: Mapping[str, str] | None = None,
                       match_expressions: Sequence[Expression] = (), replicas: int = 1) -> dict[str, Any]:
        """Store an ``apps/v1`` Deployment with this ``spec.selector``; returns its JSON."""
        selector = _label_selector(match_labels, match_expressions)
        document = _workload("Deployment", namespace, name, selector, replicas)
        document["spec"].update({
            "strategy": {"type": "RollingUpdate",
                         "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}},
            "revisionHistoryLimit": 10, "progressDeadlineSeconds": 600,
        })
        document["status"].update({"updatedReplicas": replicas, "availableReplicas": replicas})
        self.deployments[(namespace, name)] = document
        return document

    def add_statefulset(self, namespace: str, name: str, *, match_labels: Mapping[str, str] | None = None,
                        match_expressions: Sequence[Expression] = (), replicas: int = 1) -> dict[str, Any]:
        """Store an ``apps/v1`` StatefulSet with this ``spec.selector``; returns its JSON."""
        selector = _label_selector(match_labels, match_expressions)
        document = _workload("StatefulSet", namespace, name, selector, replicas)
        document["spec"].update({
            "serviceName": name, "podManagementPolicy": "OrderedReady",
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 0}},
            "revisionHistoryLimit": 10,
            "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Retain", "whenScaled": "Retain"},
        })
        document["status"].update({
            "currentReplicas": replicas, "updatedReplicas": replicas, "availableReplicas": replicas,
            "currentRevision": f"{name}-5d4f8c7b9", "updateRevision": f"{name}-5d4f8c7b9",
            "collisionCount": 0,
        })
        self.statefulsets[(namespace, name)] = document
        return document

    def add_pod(self, namespace: str, name: str, labels: Mapping[str, str], *,
                cpu_requests: Sequence[str | None] = ("100m",), ready: bool = True, phase: str = "Running",
                sidecar_cpu_requests: Sequence[str | None] = (), deleting: bool = False) -> dict[str, Any]:
        """Store a Pod: one container per entry of ``cpu_requests`` (None: that container declares no
        CPU request), plus native sidecars (init containers with ``restartPolicy: Always``)."""
        document = _pod(namespace, name, labels, cpu_requests, sidecar_cpu_requests, ready, phase, deleting)
        self.pods[(namespace, name)] = document
        return document

    def set_pod_usage(self, namespace: str, name: str, cores: float | str | Sequence[float | str]) -> None:
        """The CPU usage metrics-server reports for a pod: one value per container, app containers
        first, then sidecars (floats become nanocores, like ``"1234567n"``; strings are served as given).
        Containers without a value report ``"0"``."""
        values = [cores] if isinstance(cores, float | int | str) else list(cores)
        self.pod_usage[(namespace, name)] = [
            value if isinstance(value, str) else f"{round(value * 1e9)}n" for value in values]

    # -- life cycle on the caller's loop -------------------------------------------------------------

    async def start(self) -> None:
        """Listen (on the same port as before after a :meth:`stop`, so clients' URLs stay valid)."""
        if self._runner is not None:
            return
        self._stopping = asyncio.Event()
        app = web.Application(middlewares=[self._middleware])
        app.router.add_get("/api/v1/namespaces/{namespace}/configmaps/{name}", self._config_map)
        app.router.add_post("/apis/authentication.k8s.io/v1/tokenreviews", self._token_review)
        app.router.add_post("/apis/authorization.k8s.io/v1/subjectaccessreviews", self._access_review)
        app.router.add_get("/apis/apps/v1/namespaces/{namespace}/deployments/{name}", self._deployment)
        app.router.add_get("/apis/apps/v1/namespaces/{namespace}/statefulsets/{name}", self._statefulset)
        app.router.add_get("/api/v1/namespaces/{namespace}/pods", self._pod_list)
        app.router.add_get("/apis/metrics.k8s.io/v1beta1/namespaces/{namespace}/pods", self._pod_metrics_list)
        # Short shutdown: a request parked in ``delay_seconds`` must not hold up stop().
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._server_cert.configure_cert(context)
        site = web.TCPSite(runner, "127.0.0.1", self._port, ssl_context=context, reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._port = int(runner.addresses[0][1])
        self._runner = runner

    async def _stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is None:
            return
        if self._stopping is not None:
            self._stopping.set()
        server = runner.server
        transports = [handler.transport for handler in server.connections] if server else []
        await runner.cleanup()
        # A TLS close waits for the peer's close_notify, which a client that already went away never
        # sends; drop what is left so nothing outlives the loop (like a killed API server would).
        for transport in transports:
            if transport is not None:
                transport.abort()

    def stop(self) -> Awaitable[None]:
        """Stop listening (connections are refused until started again).

        On the caller's loop: ``await api.stop()``. In thread mode it blocks until the server and its
        thread are gone, and returns an already-finished awaitable.
        """
        thread = self._thread
        if thread is None or threading.current_thread() is thread:
            return self._stop()
        loop = self._thread_loop
        assert loop is not None
        with contextlib.suppress(RuntimeError):  # the loop may already be closed
            asyncio.run_coroutine_threadsafe(self._stop(), loop).result(timeout=10)
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        self._thread = self._thread_loop = None
        return _Done()

    async def __aenter__(self) -> FakeKubeAPI:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self._stop()

    # -- life cycle in a background thread -----------------------------------------------------------

    def start_in_thread(self, timeout: float = 10.0) -> FakeKubeAPI:
        """Serve from a daemon thread with its own event loop; returns once it listens."""
        if self._thread is not None:
            return self
        ready = threading.Event()
        failure: list[BaseException] = []
        loop = asyncio.new_event_loop()

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.start())
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self._stop())
                loop.close()

        thread = threading.Thread(target=run, name="fake-kube-api", daemon=True)
        thread.start()
        if not ready.wait(timeout):
            raise RuntimeError("FakeKubeAPI did not start in time")
        if failure:
            thread.join()
            raise failure[0]
        self._thread, self._thread_loop = thread, loop
        return self

    def __enter__(self) -> FakeKubeAPI:
        return self.start_in_thread()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- the API -------------------------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request,
                          handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                          ) -> web.StreamResponse:
        authorization = request.headers.get("Authorization", "")
        bearer = authorization[7:].strip() if authorization.startswith("Bearer ") else ""
        self.requests.append(RecordedRequest(request.method, request.path, bearer, request.query_string))
        await self._hold(lambda: self.delay_seconds)
        if self.fail_with is not None:
            return _json(status_body(self.fail_with, self.fail_message), self.fail_with)
        if self.adapter_token is not None and bearer != self.adapter_token:
            return _json(status_body(401, "Unauthorized"), 401)
        try:
            return await handler(request)
        except web.HTTPNotFound:
            return _json(status_body(404, "the server could not find the requested resource"), 404)
        except web.HTTPMethodNotAllowed:
            return _json(status_body(405, "the server does not allow this method on the requested resource",
                                     reason="MethodNotAllowed"), 405)

    async def _hold(self, delay: Callable[[], float]) -> None:
        """Park the request until ``delay()`` seconds passed since it came or the server stops; the knob is
        re-read while waiting, so lowering it (to 0: the API server recovered) lets parked requests go."""
        stopping = self._stopping
        if stopping is None or delay() <= 0:
            return
        loop = asyncio.get_running_loop()
        started = loop.time()
        self.parked += 1
        try:
            while not stopping.is_set() and (left := delay() - (loop.time() - started)) > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), min(left, 0.05))
        finally:
            self.parked -= 1

    async def _config_map(self, request: web.Request) -> web.Response:
        namespace, name = request.match_info["namespace"], request.match_info["name"]
        data = self.config_maps.get((namespace, name))
        if data is None:
            return _json(status_body(404, f'configmaps "{name}" not found',
                                     details={"name": name, "kind": "configmaps"}), 404)
        return _json({
            "kind": "ConfigMap",
            "apiVersion": "v1",
            "metadata": {
                "name": name, "namespace": namespace, "resourceVersion": "1",
                "uid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{namespace}/{name}")),
                "creationTimestamp": _CREATION_TIMESTAMP,
            },
            "data": dict(data),
        })

    async def _token_review(self, request: web.Request) -> web.Response:
        body = await _read_object(request, "authentication.k8s.io/v1", "TokenReview")
        if isinstance(body, web.Response):
            return body
        self.token_reviews.append(body)
        spec = body.get("spec") or {}
        token = spec.get("token")
        audiences = list(spec.get("audiences") or [])
        user = self.tokens.get(token) if isinstance(token, str) else None
        status: dict[str, Any]
        if user is None:
            status = {"user": {}, "error": "[invalid bearer token, token lookup failed]"}
        else:
            user_json: dict[str, Any] = {"username": user.username}
            if user.uid:
                user_json["uid"] = user.uid
            if user.groups:
                user_json["groups"] = list(user.groups)
            if user.extra:
                user_json["extra"] = {key: list(values) for key, values in user.extra.items()}
            status = {"authenticated": True, "user": user_json}
            if audiences:
                status["audiences"] = audiences
        return _json(_answer(body, "authentication.k8s.io/v1", "TokenReview", status), 201)

    async def _access_review(self, request: web.Request) -> web.Response:
        body = await _read_object(request, "authorization.k8s.io/v1", "SubjectAccessReview")
        if isinstance(body, web.Response):
            return body
        self.access_reviews.append(body)
        spec = body.get("spec") or {}
        if not spec.get("user") and not spec.get("groups"):
            return _json(status_body(422, "SubjectAccessReview.authorization.k8s.io is invalid: "
                                     "spec.user: Invalid value: \"\": at least one of user or group must "
                                     "be specified"), 422)
        if ("resourceAttributes" in spec) == ("nonResourceAttributes" in spec):
            return _json(status_body(422, "SubjectAccessReview.authorization.k8s.io is invalid: exactly "
                                     "one of nonResourceAttributes or resourceAttributes must be specified"),
                         422)
        decision = self.policy(spec)
        if isinstance(decision, bool):
            decision = AccessDecision(allowed=decision)
        status: dict[str, Any] = {"allowed": decision.allowed}
        if decision.denied:
            status["denied"] = True
        if decision.reason:
            status["reason"] = decision.reason
        if decision.evaluation_error:
            status["evaluationError"] = decision.evaluation_error
        return _json(_answer(body, "authorization.k8s.io/v1", "SubjectAccessReview", status), 201)


    async def _cpu_fault(self, endpoint: str) -> web.Response | None:
        """Hang and/or fail as the ``cpu_*`` knobs say, for the endpoints they affect."""
        if endpoint not in self.cpu_endpoints_affected:
            return None
        await self._hold(lambda: self.cpu_delay_seconds)
        if self.cpu_fail_with is not None:
            return _json(status_body(self.cpu_fail_with, self.fail_message), self.cpu_fail_with)
        return None

    async def _deployment(self, request: web.Request) -> web.Response:
        return await self._get_workload(request, "deployments", self.deployments)

    async def _statefulset(self, request: web.Request) -> web.Response:
        return await self._get_workload(request, "statefulsets", self.statefulsets)

    async def _get_workload(self, request: web.Request, resource: str,
                            table: Mapping[tuple[str, str], dict[str, Any]]) -> web.Response:
        fault = await self._cpu_fault(resource)
        if fault is not None:
            return fault
        namespace, name = request.match_info["namespace"], request.match_info["name"]
        document = table.get((namespace, name))
        if document is None:
            return _json(status_body(404, f'{resource}.apps "{name}" not found',
                                     details={"name": name, "group": "apps", "kind": resource}), 404)
        return _json(document)

    async def _pod_list(self, request: web.Request) -> web.Response:
        fault = await self._cpu_fault("pods")
        if fault is not None:
            return fault
        namespace = request.match_info["namespace"]
        selected = _selected(request, self.pods, namespace)
        if isinstance(selected, web.Response):
            return selected
        return _json({"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "4242"},
                      "items": selected})

    async def _pod_metrics_list(self, request: web.Request) -> web.Response:
        if not self.metrics_api_available:
            return _json(status_body(404, "the server could not find the requested resource"), 404)
        fault = await self._cpu_fault("podmetrics")
        if fault is not None:
            return fault
        namespace = request.match_info["namespace"]
        selected = _selected(request, self.pods, namespace)
        if isinstance(selected, web.Response):
            return selected
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        items = []
        for pod in selected:
            name = pod["metadata"]["name"]
            usage = self.pod_usage.get((namespace, name))
            if usage is None:
                continue  # not scraped (yet): metrics-server leaves the pod out
            containers = [c["name"] for c in pod["spec"]["containers"]] + [
                c["name"] for c in pod["spec"].get("initContainers", [])]
            values = usage + ["0"] * (len(containers) - len(usage))
            items.append({
                "metadata": {"name": name, "namespace": namespace, "creationTimestamp": now,
                             "labels": dict(pod["metadata"].get("labels", {}))},
                "timestamp": now,
                "window": "15.012s",
                "containers": [{"name": container, "usage": {"cpu": value, "memory": "24576Ki"}}
                               for container, value in zip(containers, values, strict=False)],
            })
        return _json({"kind": "PodMetricsList", "apiVersion": "metrics.k8s.io/v1beta1",
                      "metadata": {}, "items": items})


def _selected(request: web.Request, pods: Mapping[tuple[str, str], dict[str, Any]],
              namespace: str) -> list[dict[str, Any]] | web.Response:
    """The pods of ``namespace`` matching the request's ``labelSelector`` (400 ``Status`` if invalid)."""
    text = request.query.get("labelSelector", "")
    try:
        selector = parse_selector(text)
    except BadSelector as exc:
        return _json(status_body(400, f"unable to parse requirement: {exc}"), 400)
    return [pod for (ns, _), pod in sorted(pods.items())
            if ns == namespace and selector.matches(pod["metadata"].get("labels", {}))]


def _label_selector(match_labels: Mapping[str, str] | None,
                    match_expressions: Sequence[Expression]) -> dict[str, Any]:
    """A ``metav1.LabelSelector`` as JSON (empty fields omitted, as the API server omits them)."""
    selector: dict[str, Any] = {}
    if match_labels:
        selector["matchLabels"] = dict(match_labels)
    if match_expressions:
        expressions = []
        for key, operator, values in match_expressions:
            expression: dict[str, Any] = {"key": key, "operator": operator}
            if values:
                expression["values"] = list(values)
            expressions.append(expression)
        selector["matchExpressions"] = expressions
    return selector


def _template_labels(selector: Mapping[str, Any]) -> dict[str, str]:
    """Pod template labels that satisfy ``selector`` (the API server insists they do)."""
    labels = dict(selector.get("matchLabels", {}))
    for expression in selector.get("matchExpressions", []):
        if expression["operator"] == "In":
            labels[expression["key"]] = (expression.get("values") or [""])[0]
        elif expression["operator"] == "Exists":
            labels[expression["key"]] = "yes"
    return labels


def _metadata(namespace: str, name: str, **more: Any) -> dict[str, Any]:
    return {
        "name": name, "namespace": namespace,
        "uid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{namespace}/{name}")),
        "resourceVersion": "1", "creationTimestamp": _CREATION_TIMESTAMP, **more,
    }


def _container(name: str, cpu_request: str | None) -> dict[str, Any]:
    return {
        "name": name, "image": "registry.example/app:1.0",
        "resources": {"requests": {"cpu": cpu_request}} if cpu_request is not None else {},
        "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File",
        "imagePullPolicy": "IfNotPresent",
    }


def _workload(kind: str, namespace: str, name: str, selector: dict[str, Any],
              replicas: int) -> dict[str, Any]:
    """The parts Deployments and StatefulSets share, as ``kubectl get -o json`` shows them."""
    return {
        "kind": kind, "apiVersion": "apps/v1",
        "metadata": _metadata(namespace, name, generation=1),
        "spec": {
            "replicas": replicas,
            "selector": selector,
            "template": {
                "metadata": {"creationTimestamp": None, "labels": _template_labels(selector)},
                "spec": {
                    "containers": [_container("app", "100m")], "restartPolicy": "Always",
                    "terminationGracePeriodSeconds": 30, "dnsPolicy": "ClusterFirst",
                    "securityContext": {}, "schedulerName": "default-scheduler",
                },
            },
        },
        "status": {"observedGeneration": 1, "replicas": replicas, "readyReplicas": replicas},
    }


def _pod(namespace: str, name: str, labels: Mapping[str, str], cpu_requests: Sequence[str | None],
         sidecar_cpu_requests: Sequence[str | None], ready: bool, phase: str,
         deleting: bool) -> dict[str, Any]:
    """A Pod as the API server lists it (list items carry no ``kind``/``apiVersion``)."""
    containers = [_container(f"c{i}", cpu) for i, cpu in enumerate(cpu_requests)]
    sidecars = [{**_container(f"sidecar{i}", cpu), "restartPolicy": "Always"}
                for i, cpu in enumerate(sidecar_cpu_requests)]
    metadata = _metadata(namespace, name, labels=dict(labels), generateName=name.rsplit("-", 1)[0] + "-")
    if deleting:
        metadata.update({"deletionTimestamp": _CREATION_TIMESTAMP, "deletionGracePeriodSeconds": 30})
    spec: dict[str, Any] = {
        "containers": containers, "restartPolicy": "Always", "terminationGracePeriodSeconds": 30,
        "dnsPolicy": "ClusterFirst", "serviceAccountName": "default", "nodeName": "node-1",
        "securityContext": {}, "schedulerName": "default-scheduler", "priority": 0,
    }
    if sidecars:
        spec["initContainers"] = sidecars
    requests = [c for c in containers + sidecars if c["resources"]]
    status: dict[str, Any] = {
        "phase": phase,
        "qosClass": "Burstable" if requests else "BestEffort",
        "conditions": [{"type": "PodScheduled", "status": "True", "lastProbeTime": None,
                        "lastTransitionTime": _CREATION_TIMESTAMP}],
    }
    if phase == "Running":
        state = "True" if ready else "False"
        for kind in ("Initialized", "ContainersReady", "Ready"):
            condition: dict[str, Any] = {"type": kind, "status": "True" if kind == "Initialized" else state,
                                         "lastProbeTime": None, "lastTransitionTime": _CREATION_TIMESTAMP}
            if condition["status"] == "False":
                condition["reason"] = "ContainersNotReady"
                condition["message"] = f"containers with unready status: [{containers[0]['name']}]"
            status["conditions"].append(condition)
        status.update({
            "hostIP": "10.0.0.1", "podIP": "10.244.0.17", "startTime": _CREATION_TIMESTAMP,
            "containerStatuses": [{
                "name": c["name"], "ready": ready, "restartCount": 0, "started": True,
                "image": c["image"], "imageID": "registry.example/app@sha256:" + "0" * 64,
                "containerID": "containerd://" + "1" * 64,
                "state": {"running": {"startedAt": _CREATION_TIMESTAMP}},
            } for c in containers],
        })
    return {"metadata": metadata, "spec": spec, "status": status}


async def _read_object(request: web.Request, api_version: str, kind: str) -> dict[str, Any] | web.Response:
    """The JSON body of a create, or a 400/415 ``Status`` when it is not a ``kind`` object."""
    # kube-apiserver decodes a body without Content-Type as its first serializer, JSON (and the
    # ``kubernetes`` client sends reviews without one).
    if "Content-Type" in request.headers and request.content_type != "application/json":
        return _json(status_body(415, f"the body of the request was in an unknown format - accepted "
                                 f"media types include: application/json; got {request.content_type}",
                                 reason="UnsupportedMediaType"), 415)
    try:
        body = json.loads(await request.read())
    except ValueError:
        return _json(status_body(400, "the body of the request could not be decoded as JSON"), 400)
    if not isinstance(body, dict):
        return _json(status_body(400, f"expected a {kind} object"), 400)
    # Like the API server, a body without apiVersion/kind takes them from the URL; a different one is wrong.
    if body.get("apiVersion", api_version) != api_version or body.get("kind", kind) != kind:
        return _json(status_body(400, f"the API version in the data ({body.get('apiVersion')}) does not "
                                 f"match the expected API version ({api_version})"), 400)
    return body


def _answer(body: dict[str, Any], api_version: str, kind: str, status: dict[str, Any]) -> dict[str, Any]:
    """The created review as the API server returns it: the request echoed, metadata and status filled."""
    return {
        "kind": kind,
        "apiVersion": api_version,
        "metadata": {"creationTimestamp": None, **(body.get("metadata") or {})},
        "spec": body.get("spec") or {},
        "status": status,
    }


def _json(document: Any, status: int = 200) -> web.Response:
    return web.Response(body=json.dumps(document).encode("utf-8"), status=status,
                        content_type="application/json")


@contextlib.contextmanager
def real_client(fake: FakeKubeAPI, kubeconfig: Path, timeout_seconds: float) -> Iterator[Any]:
    """The adapter's real ``KubernetesClusterAPI`` pointed at ``fake`` through a kubeconfig file."""
    from adapter.kube_client import KubernetesClusterAPI

    api = KubernetesClusterAPI.from_kubeconfig(str(fake.kubeconfig(kubeconfig)),
                                               timeout_seconds=timeout_seconds)
    try:
        yield api
    finally:
        api.close()
