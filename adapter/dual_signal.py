"""The metrics built on the policy: CPU, the ratios, ``dual_signal_ratio`` and the canary ratio.

Why a module apart from :mod:`adapter.provider`: the plain latency metrics are a quantile of one
window; these combine the window with the CPU registry and the workload's policy settings, and decide
which workloads a selector means. The provider keeps the caching and the error wording; this module
turns "namespace + selector" into policy inputs and readings. Time is an argument.

Which workloads a selector means: every workload with latency series or CPU data in the namespace
whose labels (``workload``, and ``route`` for route series) the selector matches. When those
workloads have different policy settings the question has no single answer, and the request is a 400
that says which workloads it matched.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from .canary_interval import ratio_interval
from .cpu import CpuSignals
from .errors import BadRequest, NoData, quote
from .policy import CpuSignal, Decision, LatencySignal, PolicySettings, cpu_ratio, decide
from .selector import Selector, parse_selector
from .store import Series, WindowStore, WindowView

#: Metrics this module serves, with their one-line meaning.
DUAL_SIGNAL_HELP: dict[str, str] = {
    "cpu_utilization": "CPU usage / CPU requests of the workload's ready pods (0.5 = half of requests)",
    "cpu_utilization_ratio": "cpu_utilization / cpu_target_utilization (1 = at target)",
    "latency_p95_ratio": "p95 latency / latency_target_seconds (1 = at target)",
    "dual_signal_ratio": "p95 latency and CPU in one ratio for an HPA Value target of 1; see reason",
    "latency_p95_baseline_ratio": "a canary's p95 / its baseline workload's p95 (release gate: <= 1.1)",
}


class CanaryLike(Protocol):
    @property
    def namespace(self) -> str: ...

    @property
    def canary(self) -> str: ...

    @property
    def baseline(self) -> str: ...


class PolicyLookup(Protocol):
    """What the metrics need of the policy configuration (implemented by ``PolicyConfig``)."""

    @property
    def canaries(self) -> Sequence[CanaryLike]: ...

    def for_workload(self, namespace: str, workload: str) -> PolicySettings: ...

    def baseline_of(self, namespace: str, canary: str) -> str | None: ...


class ExternalLatency(Protocol):
    """A latency source besides the store (``adapter.sources.prometheus.PrometheusCache``)."""

    def workloads(self, namespace: str) -> set[str]: ...

    def all_workloads(self) -> set[tuple[str, str]]: ...

    def latency(self, namespace: str, workload: str, quantile: float, now: float,
                has_otlp: bool) -> tuple[bool, LatencySignal | None]:
        """``(False, None)``: the store answers; else ``(True, signal or None)``."""
        ...


@dataclass(frozen=True)
class Selection:
    """The workloads and latency series a selector means in one namespace, and their one policy."""

    workloads: tuple[str, ...]
    series: list[Series]
    settings: PolicySettings
    namespace: str = ""


@dataclass(frozen=True)
class CanaryReading:
    """One canary pair now: requests on each side; the p95 ratio and its 95 % interval when known."""

    samples: int
    baseline_samples: int
    ratio: float | None = None
    ratio_low: float | None = None
    ratio_high: float | None = None


@dataclass(frozen=True)
class Value:
    value: float
    labels: dict[str, str]


class DualSignal:
    """Computes the policy-based metrics for one namespace and selector at a given time."""

    def __init__(self, store: WindowStore, cpu: CpuSignals, policy: Callable[[], PolicyLookup],
                 external: ExternalLatency | None = None) -> None:
        self.store = store
        self.cpu = cpu
        self._policy = policy
        self.external = external

    def select(self, namespace: str, selector: Selector) -> Selection:
        series = self.store.matching(namespace, selector)
        names = {s.key.workload for s in series}
        names |= {w for w in self.cpu.workloads(namespace) if selector.matches({"workload": w})}
        if self.external is not None:
            names |= {w for w in self.external.workloads(namespace) if selector.matches({"workload": w})}
        workloads = tuple(sorted(names))
        policy = self._policy()
        settings = {w: policy.for_workload(namespace, w) for w in workloads}
        distinct = set(settings.values())
        if len(distinct) > 1:
            raise BadRequest(
                f"selector {quote(str(selector))} matches workloads {', '.join(workloads)} in namespace "
                f"{quote(namespace)}, which have different policy settings; select one workload "
                "(workload=<name>)")
        one = distinct.pop() if distinct else policy.for_workload(namespace, "")
        return Selection(workloads, series, one, namespace)

    def latency(self, selection: Selection, quantile: float,
                now: float) -> tuple[LatencySignal | None, WindowView | None]:
        return self._latency_from(selection, quantile, now, self.store.view(selection.series, now=now))

    def _latency_from(self, selection: Selection, quantile: float, now: float,
                      view: WindowView | None) -> tuple[LatencySignal | None, WindowView | None]:
        """:meth:`latency` on the selection's merged window, when the caller already has it."""
        if self.external is not None and len(selection.workloads) == 1 and selection.namespace:
            handled, signal = self.external.latency(selection.namespace, selection.workloads[0], quantile,
                                                    now, view is not None)
            if handled:
                return signal, None
        if view is None:
            return None, None
        value = view.sketch.quantile(quantile)
        if value is None:
            return None, view
        exemplar = view.exemplar_near(value)
        trace_id = exemplar.trace_id if exemplar else None
        return LatencySignal(value, round(view.count), now, trace_id), view

    def cpu_signal(self, namespace: str, selection: Selection, now: float) -> CpuSignal | None:
        """Σ usage / Σ requests over every selected workload's freshest usable reading."""
        s = selection.settings
        usage = request = 0.0
        pods = 0
        oldest: float | None = None
        for workload in selection.workloads:
            reading = self.cpu.reading(namespace, workload, now, s.stale_after_seconds, s.cpu_request_cores)
            if reading is None:
                continue
            usage += reading.usage_cores
            request += reading.request_cores
            pods += reading.pods
            oldest = reading.observed_at if oldest is None else min(oldest, reading.observed_at)
        if oldest is None or request <= 0:
            return None
        return CpuSignal(usage / request, oldest, pods)

    def decision(self, namespace: str, selection: Selection, now: float,
                 view: WindowView | Literal[False] | None = False) -> Decision | None:
        """The policy's decision; ``view`` is the selection's merged window when the caller has it."""
        s = selection.settings
        if view is False:
            view = self.store.view(selection.series, now=now)
        latency, _ = self._latency_from(selection, s.quantile, now, view)
        return decide(latency, self.cpu_signal(namespace, selection, now), s, now)

    def all_decisions(self, now: float) -> dict[tuple[str, str], Decision | None]:
        """The decision for every known workload (as ``workload=<name>`` would get), for ``/metrics``."""
        return dict(self.iter_decisions(now))

    def iter_decisions(self, now: float) -> Iterator[tuple[tuple[str, str], Decision | None]]:
        """:meth:`all_decisions` one workload at a time, so the caller can pace it on the event loop.

        The series are grouped by workload in one pass instead of matching a selector against the
        namespace for each one.
        """
        groups: dict[tuple[str, str], list[Series]] = {}
        for one in self.store.all_series():
            groups.setdefault((one.key.namespace, one.key.workload), []).append(one)
        for key in self.cpu.all_workloads():
            groups.setdefault(key, [])
        for key in self.external.all_workloads() if self.external is not None else ():
            groups.setdefault(key, [])
        policy = self._policy()
        for (namespace, workload), members in sorted(groups.items()):
            selection = Selection((workload,), members, policy.for_workload(namespace, workload), namespace)
            yield (namespace, workload), self.decision(namespace, selection, now)

    def latency_targets(self, workloads: Iterable[tuple[str, str]]) -> dict[tuple[str, str], float]:
        """Each workload's ``latency_target_seconds`` (defaults plus its overrides), for ``/metrics``."""
        policy = self._policy()
        return {(ns, wl): policy.for_workload(ns, wl).latency_target_seconds for ns, wl in workloads}

    def error_ratios(self) -> dict[tuple[str, str], float]:
        """Failed / all requests of every workload over the closed window (cheap: per-series counters)."""
        sums: dict[tuple[str, str], list[float]] = {}
        for series in self.store.all_series():
            acc = sums.setdefault((series.key.namespace, series.key.workload), [0.0, 0.0])
            count, errors = self.store.window_totals(series)
            acc[0] += errors
            acc[1] += count
        return {key: errors / count for key, (errors, count) in sums.items() if count >= 0.5}

    def canary_ratios(self, now: float) -> dict[tuple[str, str, str], float]:
        """``latency_p95_baseline_ratio`` of every configured canary pair that has enough requests."""
        return {key: reading.ratio for key, reading in self.canary_readings(now).items()
                if reading.ratio is not None}

    def canary_readings(self, now: float) -> dict[tuple[str, str, str], CanaryReading]:
        """Every configured canary pair: requests on each side, and the ratio with its interval when
        there are enough (what ``/metrics`` exports for Argo Rollouts, Flagger and alerts)."""
        out: dict[tuple[str, str, str], CanaryReading] = {}
        for pair in self._policy().canaries:
            counts = []
            for workload in (pair.canary, pair.baseline):
                view = self.store.view(self.store.series_of(pair.namespace, workload), now=now)
                counts.append(0 if view is None else round(view.count))
            reading = CanaryReading(counts[0], counts[1])
            try:
                selector = parse_selector(f"workload={pair.canary}")
                value = self.value("latency_p95_baseline_ratio", pair.namespace, selector, now)
            except (NoData, BadRequest):
                pass
            else:
                low, high = value.labels.get("ratio_low"), value.labels.get("ratio_high")
                reading = CanaryReading(counts[0], counts[1], value.value,
                                        float(low) if low else None, float(high) if high else None)
            out[(pair.namespace, pair.canary, pair.baseline)] = reading
        return out

    def value(self, metric: str, namespace: str, selector: Selector, now: float, *,
              shared: bool = False) -> Value:
        """The reading of one of :data:`DUAL_SIGNAL_HELP`'s metrics; raises NoData (404) or BadRequest.

        ``shared``: ``now`` is an API tick's time, so the view may be shared with the tick's other
        answers (:meth:`WindowStore.view_at`)."""
        selection = self.select(namespace, selector)
        if not selection.workloads:
            what = f"selector {str(selector)!r}" if not selector.is_empty() else "an empty selector"
            raise NoData(f"no workload in namespace {namespace!r} has latency or CPU data matching {what}")
        s = selection.settings
        # Every item names a representative request: the one near the window's p95 and, when the
        # window had errors, a failed one.
        series = selection.series  # one view: every metric below reads it
        merged = self.store.view_at(series, now) if shared else self.store.view(series, now=now)
        window, view = self._latency_from(selection, 0.95, now, merged)
        labels = _traced(_common_labels(selection), window.trace_id if window else None)
        if view is not None and view.errors > 0 and view.error_trace_id:
            labels["error_trace_id"] = view.error_trace_id
        if metric in ("cpu_utilization", "cpu_utilization_ratio"):
            cpu = self.cpu_signal(namespace, selection, now)
            ratio = cpu_ratio(cpu, s, now)
            if cpu is None or ratio is None:
                raise NoData(f"no CPU data for {_what(selection)} in namespace {namespace!r} within the last "
                             f"{s.stale_after_seconds:g}s (metrics-server or OTLP k8s.pod.cpu.usage)")
            return Value(cpu.utilization if metric == "cpu_utilization" else ratio, labels)
        if metric == "latency_p95_ratio":
            if window is None:
                raise NoData(f"no latency data for {_what(selection)} in namespace {namespace!r} "
                             f"in the last {self.store.settings.window_seconds}s")
            return Value(window.seconds / s.latency_target_seconds, labels)
        if metric == "dual_signal_ratio":
            decision = self.decision(namespace, selection, now, merged)
            if decision is None:
                raise NoData(
                    f"neither signal is usable for {_what(selection)} in namespace {namespace!r}: fewer "
                    f"than {s.min_samples} requests in the window and no CPU data within "
                    f"{s.stale_after_seconds:g}s; the HPA holds")
            # The decision's own trace (near the quantile it used) when latency counted in it.
            return Value(decision.ratio, _traced({**labels, "reason": decision.reason}, decision.trace_id))
        if metric == "latency_p95_baseline_ratio":
            return self._baseline_ratio(namespace, selector, selection, labels, window, view, now)
        raise AssertionError(metric)

    def _baseline_ratio(self, namespace: str, selector: Selector, selection: Selection,
                        labels: dict[str, str], mine: LatencySignal | None, my_view: WindowView | None,
                        now: float) -> Value:
        """The canary's p95 / its baseline's, with the 95 % interval and both sample counts as labels
        (``ratio_low``, ``ratio_high``, ``samples``, ``baseline_samples``) when both sides are sketches."""
        if len(selection.workloads) != 1:
            raise BadRequest("latency_p95_baseline_ratio needs a selector naming one canary workload "
                             f"(workload=<canary>); {quote(str(selector))} matches "
                             f"{len(selection.workloads)}")
        canary = selection.workloads[0]
        baseline = self._policy().baseline_of(namespace, canary)
        if baseline is None:
            raise NoData(f"workload {canary!r} in namespace {namespace!r} is not a canary in the config "
                         "(canaries: [{namespace, canary, baseline}])")
        # The baseline's series are the ones the same selector would pick if they were the canary's.
        base_series = [x for x in self.store.series_of(namespace, baseline)
                       if selector.matches({**x.key.labels(), "workload": canary})]
        s = selection.settings
        theirs, their_view = self.latency(Selection((baseline,), base_series, s, namespace), 0.95, now)
        for name, signal in ((canary, mine), (baseline, theirs)):
            if signal is None or signal.samples < s.min_samples or signal.seconds <= 0:
                have = 0 if signal is None else signal.samples
                raise NoData(f"too few requests for a canary verdict: {name!r} has {have} in the window, "
                             f"min_samples is {s.min_samples}")
        assert mine is not None and theirs is not None
        out = {**labels, "baseline": baseline, "samples": str(mine.samples),
               "baseline_samples": str(theirs.samples)}
        if my_view is not None and their_view is not None:  # both from the store's sketches
            interval = ratio_interval(my_view.sketch, their_view.sketch)
            if interval is not None:
                out["ratio_low"] = f"{interval.low:.4f}"
                out["ratio_high"] = f"{interval.high:.4f}"
        return Value(mine.seconds / theirs.seconds, out)


def _common_labels(selection: Selection) -> dict[str, str]:
    return {"workload": selection.workloads[0]} if len(selection.workloads) == 1 else {}


def _traced(labels: dict[str, str], trace_id: str | None) -> dict[str, str]:
    return {**labels, "trace_id": trace_id} if trace_id else labels


def _what(selection: Selection) -> str:
    return "workload " + ", ".join(repr(w) for w in selection.workloads)
