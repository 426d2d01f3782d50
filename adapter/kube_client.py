""":class:`~adapter.kube.ClusterAPI` implemented with the official ``kubernetes`` Python client.

Why the official client: it reads kubeconfig files (certificates, tokens, exec plugins) and in-cluster
service-account credentials (and re-reads the rotating token) exactly like every other Kubernetes tool,
so the adapter does not carry its own copy of that logic. Its costs are handled here:

* It blocks. Every call runs in a worker thread (:func:`asyncio.to_thread`) so the event loop that serves
  the HPA keeps serving while the API server answers.
* It has global state. The configuration is loaded into a fresh ``Configuration`` object owned by this
  instance, never into the process-wide default, so two instances (authentication and authorisation
  kubeconfigs may differ) and the tests never see each other's settings.
* Its failures are many types (``ApiException``, urllib3 errors, ``OSError``, model validation errors).
  Callers get one :class:`~adapter.kube.ClusterAPIError` with a short message. Messages never contain the
  reviewed token, and a failed token review does not chain the client's exception (whose text may hold
  the response body, which echoes the token).
* urllib3 retries by default, which would multiply the timeout. Retries are off: one attempt, bounded by
  ``timeout_seconds``; the callers cache decisions and decide what a failure means.
* Its models are slow to build for big lists. Pod and pod-metrics lists are read as raw JSON and only
  the few fields the CPU source needs are picked out (:class:`~adapter.kube.WorkloadAPI`).

Length: about 410 lines: every call the adapter makes to a cluster (a test checks RBAC against them),
each with the error wording an operator needs.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import Any, TypeVar

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from adapter.api.review_cache import scrub
from adapter.errors import BadSelector
from adapter.kube import (
    AccessDecision,
    AccessRequest,
    ClusterAPIError,
    PodInfo,
    TokenReviewResult,
    UserInfo,
    WorkloadSelector,
)
from adapter.quantity import parse_quantity

T = TypeVar("T")

#: Longest API-server ``Status`` message copied into an error (they can be long; logs should not be).
_MAX_DETAIL = 200
#: Extra time the event loop waits for the worker thread beyond the HTTP timeout before giving up on it.
_THREAD_GRACE_SECONDS = 1.0


class KubernetesClusterAPI:
    """The adapter's calls to a real API server, through the ``kubernetes`` client, off the event loop."""

    def __init__(self, api_client: k8s.ApiClient, timeout_seconds: float = 5.0) -> None:
        """Wrap an existing ``kubernetes.client.ApiClient``; most callers want :meth:`from_kubeconfig`."""
        if timeout_seconds <= 0:
            raise ValueError("timeout_seconds must be positive")
        self._api_client = api_client
        self._timeout = float(timeout_seconds)
        self._core = k8s.CoreV1Api(api_client)
        self._authn = k8s.AuthenticationV1Api(api_client)
        self._authz = k8s.AuthorizationV1Api(api_client)
        self._apps = k8s.AppsV1Api(api_client)
        self._custom = k8s.CustomObjectsApi(api_client)

    @classmethod
    def from_kubeconfig(cls, path: str | None, timeout_seconds: float = 5.0) -> KubernetesClusterAPI:
        """Load ``path`` (its current context), or the in-cluster service account when ``path`` is None.

        Raises :class:`ClusterAPIError` when the configuration cannot be loaded (missing file, not in a
        pod), so a bad flag fails the start with one clear line instead of a client traceback.
        """
        configuration = k8s.Configuration()
        try:
            if path is None:
                # The config loaders are not annotated upstream.
                k8s_config.load_incluster_config(  # type: ignore[no-untyped-call]
                    client_configuration=configuration)
            else:
                k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
                    config_file=path, client_configuration=configuration, persist_config=False)
        except Exception as exc:
            source = "in-cluster config" if path is None else f"kubeconfig {path}"
            raise ClusterAPIError(f"cannot load {source}: {_one_line(str(exc))}") from exc
        # One attempt per call: the timeout is then a real bound, and callers own retry policy.
        configuration.retries = 0
        return cls(k8s.ApiClient(configuration=configuration), timeout_seconds)

    @property
    def timeout_seconds(self) -> float:
        return self._timeout

    def close(self) -> None:
        """Close the client's connection pool (idempotent)."""
        self._api_client.close()  # type: ignore[no-untyped-call]  # not annotated upstream

    async def read_config_map(self, namespace: str, name: str) -> dict[str, str]:
        """The ``data`` of ConfigMap ``namespace/name`` (``{}`` when it has none)."""

        def call() -> dict[str, str]:
            cm = self._core.read_namespaced_config_map(name, namespace, _request_timeout=self._timeout)
            return dict(cm.data or {})

        return await self._run(f"read configmap {namespace}/{name}", call)

    async def review_token(self, token: str, audiences: tuple[str, ...] = ()) -> TokenReviewResult:
        """Ask the API server who ``token`` belongs to (``authentication.k8s.io/v1`` TokenReview).

        An unknown or expired token is an answer (``authenticated=False``), not an error; only a failed
        call raises :class:`ClusterAPIError`.
        """
        body = k8s.V1TokenReview(
            api_version="authentication.k8s.io/v1",
            kind="TokenReview",
            spec=k8s.V1TokenReviewSpec(token=token, audiences=list(audiences) or None),
        )

        def call() -> TokenReviewResult:
            review = self._authn.create_token_review(body, _request_timeout=self._timeout)
            status = review.status
            if status is None:
                return TokenReviewResult(authenticated=False, error="token review without status")
            authenticated = bool(status.authenticated)
            error = status.error or ""
            if not authenticated:
                return TokenReviewResult(authenticated=False, error=_redact(error, token))
            user = _user_from(status.user)
            if user is None:
                return TokenReviewResult(authenticated=False, error="token review without a user")
            return TokenReviewResult(authenticated=True, user=user, error=_redact(error, token))

        return await self._run("token review", call, secret=token)

    async def review_access(self, request: AccessRequest) -> AccessDecision:
        """Ask the API server whether ``request.user`` may do it (``authorization.k8s.io/v1`` SAR)."""
        user = request.user
        body = k8s.V1SubjectAccessReview(
            api_version="authorization.k8s.io/v1",
            kind="SubjectAccessReview",
            spec=k8s.V1SubjectAccessReviewSpec(
                resource_attributes=k8s.V1ResourceAttributes(
                    verb=request.verb,
                    group=request.group,
                    resource=request.resource,
                    # Empty means "not set" in the API (omitempty); send nothing rather than "".
                    namespace=request.namespace or None,
                    name=request.name or None,
                ),
                user=user.username,
                uid=user.uid or None,
                groups=list(user.groups) or None,
                extra={k: list(v) for k, v in user.extra.items()} or None,
            ),
        )

        def call() -> AccessDecision:
            review = self._authz.create_subject_access_review(body, _request_timeout=self._timeout)
            status = review.status
            if status is None:
                return AccessDecision(allowed=False, evaluation_error="access review without status")
            return AccessDecision(
                allowed=bool(status.allowed),
                denied=bool(status.denied),
                reason=status.reason or "",
                evaluation_error=status.evaluation_error or "",
            )

        what = f"access review ({request.verb} {request.group}/{request.resource} in {request.namespace!r})"
        return await self._run(what, call)

    async def workload_selector(self, namespace: str, name: str) -> WorkloadSelector | None:
        """The ``spec.selector`` of Deployment ``namespace/name``, else of the StatefulSet of that name.

        A 404 is an answer ("no such workload of this kind"), not an error; None when neither exists.
        """
        readers = (("Deployment", self._apps.read_namespaced_deployment),
                   ("StatefulSet", self._apps.read_namespaced_stateful_set))
        for kind, read in readers:

            def call(kind: str = kind, read: Callable[..., Any] = read) -> WorkloadSelector | None:
                try:
                    workload = read(name, namespace, _request_timeout=self._timeout)
                except ApiException as exc:
                    if exc.status == 404:
                        return None
                    raise
                return _workload_selector(kind, namespace, name, workload)

            found = await self._run(f"read {kind.lower()} {namespace}/{name}", call)
            if found is not None:
                return found
        return None

    async def list_pods(self, namespace: str, label_selector: str) -> list[PodInfo]:
        """The pods of ``namespace`` matching ``label_selector``, with readiness and CPU requests.

        ``resourceVersion=0`` lets the API server answer from its watch cache instead of a quorum read
        from etcd: a poller asking every 15 s needs "recent", not "linearizable", and this is the read
        informers (and so the HPA) use.
        """

        def call() -> list[PodInfo]:
            document = self._raw_json(self._core.list_namespaced_pod(
                namespace, label_selector=label_selector or None, resource_version="0",
                _request_timeout=self._timeout, _preload_content=False))
            return [_pod_info(namespace, item) for item in _items(document, "PodList")]

        return await self._run(f"list pods in {namespace!r} ({label_selector or 'all'})", call)

    async def list_pod_metrics(self, namespace: str, label_selector: str) -> dict[str, float]:
        """``metrics.k8s.io/v1beta1`` PodMetrics of the matching pods: name -> CPU cores in use.

        A 404 here usually means metrics-server (or another metrics API provider) is not installed;
        it is reported as an error like any other, with the API server's message.
        """

        def call() -> dict[str, float]:
            document = self._custom.list_namespaced_custom_object(
                "metrics.k8s.io", "v1beta1", namespace, "pods", label_selector=label_selector or None,
                _request_timeout=self._timeout)
            usage: dict[str, float] = {}
            for item in _items(document, "PodMetricsList"):
                name, cores = _pod_usage(namespace, item)
                if cores is not None:
                    usage[name] = cores
            return usage

        return await self._run(f"list pod metrics in {namespace!r} ({label_selector or 'all'})", call)

    @staticmethod
    def _raw_json(response: Any) -> Any:
        """The JSON body of an unparsed (``_preload_content=False``) response; the connection goes back
        to the pool."""
        try:
            data = response.data
        finally:
            response.release_conn()
        try:
            return json.loads(data)
        except ValueError:
            raise _BadAnswer("the API server answered something that is not JSON") from None

    async def _run(self, what: str, call: Callable[[], T], secret: str = "") -> T:
        """Run ``call`` in a thread; turn every failure into a short, secret-free :class:`ClusterAPIError`.

        The outer ``wait_for`` is a backstop for anything the HTTP timeout does not cover; the thread
        itself cannot be interrupted and finishes in the background.
        """
        try:
            return await asyncio.wait_for(asyncio.to_thread(call), self._timeout + _THREAD_GRACE_SECONDS)
        except ClusterAPIError:
            raise
        except TimeoutError:
            message = f"{what}: no answer within {self._timeout:g}s"
            raise ClusterAPIError(message) from None
        except Exception as exc:
            message = _redact(f"{what}: {_describe(exc, self._timeout, secret)}", secret)
            if secret:
                # The client's exception text may include the response body, which echoes the token.
                raise ClusterAPIError(message) from None
            raise ClusterAPIError(message) from exc


def _user_from(user: k8s.V1UserInfo | None) -> UserInfo | None:
    """A :class:`UserInfo` from a ``V1UserInfo`` (None when it names nobody)."""
    if user is None or not user.username:
        return None
    return UserInfo(
        username=user.username,
        uid=user.uid or "",
        groups=tuple(user.groups or ()),
        extra={key: tuple(values or ()) for key, values in (user.extra or {}).items()},
    )


class _BadAnswer(Exception):
    """The API server answered, but not with something usable; the text says what was wrong."""


def _workload_selector(kind: str, namespace: str, name: str, workload: Any) -> WorkloadSelector:
    """A :class:`WorkloadSelector` from a ``V1Deployment``/``V1StatefulSet``; checked, so a selector the
    adapter cannot turn into a query fails here with the workload named."""
    spec = getattr(workload, "spec", None)
    selector = getattr(spec, "selector", None)
    if selector is None:
        raise _BadAnswer(f"{kind} {namespace}/{name} has no spec.selector")
    result = WorkloadSelector(
        kind=kind,
        match_labels=dict(selector.match_labels or {}),
        match_expressions=tuple(
            (str(e.key), str(e.operator), tuple(e.values or ())) for e in selector.match_expressions or ()),
    )
    try:
        result.selector()
    except BadSelector as exc:
        raise _BadAnswer(f"the selector of {kind} {namespace}/{name} cannot be used: {exc}") from None
    return result


def _items(document: Any, kind: str) -> list[dict[str, Any]]:
    """The ``items`` of a list answer, checked enough that a wrong answer is an error, not a crash."""
    items = document.get("items") if isinstance(document, dict) else None
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise _BadAnswer(f"the API server answered something that is not a {kind}")
    return items


def _cpu_cores(text: Any, what: str) -> Decimal:
    """A CPU quantity (``"250m"``, ``"1"``, ``"1234567n"``) in cores; the JSON decoder trims blanks."""
    try:
        return parse_quantity(str(text).strip())
    except ValueError:
        raise _BadAnswer(f"{what} is not a quantity: {_short(repr(text))}") from None


def _pod_info(namespace: str, item: dict[str, Any]) -> PodInfo:
    """The :class:`PodInfo` of one ``PodList`` item (see :class:`PodInfo` for what counts)."""
    metadata = item.get("metadata") or {}
    spec = item.get("spec") or {}
    status = item.get("status") or {}
    name = str(metadata.get("name") or "")
    ready = (
        status.get("phase") == "Running"
        and not metadata.get("deletionTimestamp")
        and any(c.get("type") == "Ready" and c.get("status") == "True"
                for c in status.get("conditions") or ())
    )
    # Native sidecars (init containers with restartPolicy Always) run next to the app containers.
    containers: Iterable[dict[str, Any]] = [
        *(spec.get("containers") or ()),
        *(c for c in spec.get("initContainers") or () if c.get("restartPolicy") == "Always"),
    ]
    total = Decimal(0)
    for container in containers:
        cpu = ((container.get("resources") or {}).get("requests") or {}).get("cpu")
        if cpu is None:
            return PodInfo(name, ready, None)
        total += _cpu_cores(cpu, f"pod {namespace}/{name}: container {container.get('name')!r} CPU request")
    return PodInfo(name, ready, float(total) if total > 0 else None)


def _pod_usage(namespace: str, item: dict[str, Any]) -> tuple[str, float | None]:
    """Pod name and CPU cores in use from one ``PodMetrics`` item; None when a container has no CPU
    figure (an incomplete sample is left out rather than under-counted)."""
    name = str((item.get("metadata") or {}).get("name") or "")
    total = Decimal(0)
    for container in item.get("containers") or ():
        cpu = (container.get("usage") or {}).get("cpu")
        if cpu is None:
            return name, None
        total += _cpu_cores(cpu, f"pod metrics {namespace}/{name}: container {container.get('name')!r} usage")
    return name, float(total)


def _describe(exc: BaseException, timeout: float, secret: str = "") -> str:
    """One short line about why a call failed, without response bodies (they may echo the request).

    ``secret`` is redacted from every quoted text *before* it is shortened: a token cut in the middle by
    the shortening would no longer match, and its first part would reach the log and the 503 message.
    """
    if isinstance(exc, _BadAnswer):
        return _redact(str(exc), secret)
    if isinstance(exc, ApiException):
        status = int(exc.status or 0)
        if status == 0:  # the client wraps TLS failures as status 0 with "SSLError\n<text>"
            return f"TLS failure talking to the API server: {_short(_redact(str(exc.reason or ''), secret))}"
        detail = _status_message(exc.body, secret)
        reason = _redact(str(exc.reason or "").strip(), secret)
        line = f"API server answered {status}{' ' + reason if reason else ''}"
        return f"{line}: {detail}" if detail else line
    if isinstance(exc, urllib3.exceptions.MaxRetryError) and exc.reason is not None:
        return _describe(exc.reason, timeout, secret)
    # Before the timeouts: urllib3's NewConnectionError (refused, no route, DNS) subclasses its
    # ConnectTimeoutError for historical reasons.
    if isinstance(exc, urllib3.exceptions.NewConnectionError | ConnectionError):
        return f"cannot connect to the API server ({_short(_redact(str(exc), secret).rsplit(': ', 1)[-1])})"
    if isinstance(exc, urllib3.exceptions.TimeoutError | TimeoutError):
        return f"no answer within {timeout:g}s"
    if isinstance(exc, urllib3.exceptions.SSLError):
        return f"TLS failure talking to the API server: {_short(_redact(str(exc), secret))}"
    if isinstance(exc, urllib3.exceptions.HTTPError | OSError):
        return f"connection to the API server failed ({type(exc).__name__})"
    # Anything else (e.g. a malformed answer the client could not deserialise): the type is enough; its
    # text may quote the data.
    return f"unexpected {type(exc).__name__}"


def _status_message(body: Any, secret: str = "") -> str:
    """The ``message`` of a ``Status`` body, ``secret`` redacted, then shortened; empty when the body is
    not a ``Status``."""
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if not isinstance(body, str) or not body:
        return ""
    try:
        document = json.loads(body)
    except ValueError:
        return ""
    if not isinstance(document, dict) or document.get("kind") != "Status":
        return ""
    return _short(_redact(str(document.get("message") or ""), secret))


def _short(text: str) -> str:
    text = _one_line(text)
    return text if len(text) <= _MAX_DETAIL else text[: _MAX_DETAIL - 3] + "..."


def _one_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " ".join(lines)


def _redact(text: str, secret: str) -> str:
    """``text`` without ``secret`` or a recognisable part of it (:func:`adapter.api.review_cache.scrub`)."""
    return scrub(text, secret)
