"""The small interface through which the adapter talks to a Kubernetes API server.

Why an interface: the adapter needs only a handful of calls (read the authentication ConfigMap, review
a token, review an access), the ``kubernetes`` client is blocking and large, and tests must run the same
code against a fake server. :class:`ClusterAPI` is what the rest of the adapter depends on;
:mod:`adapter.kube_client` implements it with the ``kubernetes`` client (in a thread, off the event
loop), and ``tests/fakes`` serve the same JSON a real API server does.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from adapter.errors import BadSelector, quote
from adapter.selector import Requirement, Selector

#: ConfigMap ``kube-system/extension-apiserver-authentication`` keys an aggregated API server reads.
AUTH_CONFIGMAP_NAMESPACE = "kube-system"
AUTH_CONFIGMAP_NAME = "extension-apiserver-authentication"


@dataclass(frozen=True)
class UserInfo:
    """Who made a request: the identity a token review or a front-proxy certificate vouches for."""

    username: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @functools.cached_property
    def review_key(self) -> tuple[object, ...]:
        """Everything an access review depends on, hashable; computed once per object.

        Why cached: a token user is one object reused from the token cache for every request, so the
        authorisation cache key costs nothing after the first request.
        """
        extra = tuple(sorted((key, tuple(values)) for key, values in self.extra.items()))
        return (self.username, self.uid, tuple(self.groups), extra)


@dataclass(frozen=True)
class TokenReviewResult:
    authenticated: bool
    user: UserInfo | None = None
    error: str = ""


@dataclass(frozen=True)
class AccessRequest:
    """The ``SubjectAccessReview`` spec the adapter asks about (``resourceAttributes`` only)."""

    user: UserInfo
    verb: str
    group: str
    resource: str
    namespace: str
    name: str = ""


@dataclass(frozen=True)
class AccessDecision:
    allowed: bool
    denied: bool = False
    reason: str = ""
    evaluation_error: str = ""


class ClusterAPIError(Exception):
    """The API server could not be reached, timed out, or answered with an error."""


class ClusterAPI(Protocol):
    """The calls the adapter makes to the API server. Implementations must not block the event loop."""

    async def read_config_map(self, namespace: str, name: str) -> dict[str, str]:
        """The ``data`` of a ConfigMap; raises :class:`ClusterAPIError`."""
        ...

    async def review_token(self, token: str, audiences: tuple[str, ...] = ()) -> TokenReviewResult:
        """``authentication.k8s.io/v1`` TokenReview; raises :class:`ClusterAPIError`."""
        ...

    async def review_access(self, request: AccessRequest) -> AccessDecision:
        """``authorization.k8s.io/v1`` SubjectAccessReview; raises :class:`ClusterAPIError`."""
        ...


# ----------------------------------------------------------------------------------------------------------
# Workloads, pods and pod metrics: what the Kubernetes CPU source (:mod:`adapter.sources.kubernetes`) reads.

#: ``metav1.LabelSelectorOperator`` -> the operator name :class:`adapter.selector.Requirement` uses.
_SELECTOR_OPERATORS = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!"}


@dataclass(frozen=True)
class WorkloadSelector:
    """The ``spec.selector`` (a ``metav1.LabelSelector``) of a Deployment or StatefulSet.

    Why keep the API's shape instead of a parsed :class:`~adapter.selector.Selector`: it is what the
    object says, so errors and logs can show it as written; :meth:`selector` and :meth:`label_selector`
    convert it the way ``metav1.LabelSelectorAsSelector`` does, which is how the workload controllers and
    the HPA turn it into the pod query.
    """

    kind: str
    match_labels: Mapping[str, str] = field(default_factory=dict)
    #: ``(key, operator, values)`` with the API's operators: ``In``, ``NotIn``, ``Exists``, ``DoesNotExist``.
    match_expressions: tuple[tuple[str, str, tuple[str, ...]], ...] = ()

    def selector(self) -> Selector:
        """The equivalent label selector, as ``LabelSelectorAsSelector`` builds it.

        No labels and no expressions select everything (the API server refuses such a selector on
        ``apps/v1`` workloads, so that never reaches here from a real cluster).

        :raises BadSelector: for an unknown operator, an invalid key or value, ``In``/``NotIn`` without
            values or ``Exists``/``DoesNotExist`` with values (the errors ``LabelSelectorAsSelector``
            returns).
        """
        requirements = [Requirement(key, "=", (value,)) for key, value in self.match_labels.items()]
        for key, operator, values in self.match_expressions:
            op = _SELECTOR_OPERATORS.get(operator)
            if op is None:
                raise BadSelector(f"{quote(operator)} is not a valid label selector operator")
            requirements.append(Requirement(key, op, tuple(values)))
        return Selector.of(requirements)

    def label_selector(self) -> str:
        """The ``labelSelector`` query text for a list call, e.g. ``a=b,c in (x,y),!d,e``.

        Requirements are sorted by key and values within a set are sorted, as Go writes them.

        :raises BadSelector: see :meth:`selector`.
        """
        return str(self.selector())


@dataclass(frozen=True)
class PodInfo:
    """What the CPU source needs of one pod.

    ``ready``: phase ``Running``, condition ``Ready`` is ``"True"`` and the pod is not being deleted (the
    HPA ignores deleted pods too). ``cpu_request_cores``: the pod's CPU request, summed over its
    containers and its restartable init containers (native sidecars run beside the app and metrics-server
    reports their usage, so their requests belong in the denominator). It is None when any of those
    containers declares no CPU request, or the sum is zero: like the HPA's ``Resource`` metric, which
    refuses a pod with a missing request, a utilisation over a partial request would be wrong, so such a
    pod is reported instead of counted.
    """

    name: str
    ready: bool
    cpu_request_cores: float | None


class WorkloadAPI(Protocol):
    """Reads of workloads, their pods and the pods' CPU usage. Implementations must not block the loop."""

    async def workload_selector(self, namespace: str, name: str) -> WorkloadSelector | None:
        """The selector of Deployment ``name``, else of StatefulSet ``name``; None when neither exists.

        Raises :class:`ClusterAPIError` on any failure other than "not found".
        """
        ...

    async def list_pods(self, namespace: str, label_selector: str) -> list[PodInfo]:
        """The pods of ``namespace`` matching ``label_selector``; raises :class:`ClusterAPIError`."""
        ...

    async def list_pod_metrics(self, namespace: str, label_selector: str) -> dict[str, float]:
        """``metrics.k8s.io/v1beta1`` PodMetrics: pod name -> CPU usage in cores, summed over containers.

        Pods metrics-server has not scraped yet are absent. Raises :class:`ClusterAPIError`.
        """
        ...
