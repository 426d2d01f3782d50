"""The simulated workload: pods with workers and a queue, what requests take, what the pods burn.

**A pod** has ``workers`` workers; a request holds one for its *service time* (exponential, mean
``service_seconds``, of which ``cpu_seconds_per_request`` is CPU), so a pod serves at most
``workers / service_seconds`` requests/s. The load balancer splits arrivals evenly over the ready pods
(kube-proxy's random choice); pods that are still starting take nothing.

**Latency** of a request = queueing delay + service time + dependency delay:

* Queueing delay, two regimes. While a pod has no backlog and arrivals stay below its capacity, an
  M/M/c wait: with Erlang C's probability the request waits, exponentially with rate
  ``capacity - arrivals`` (utilisation capped at 0.98 in this formula, where the fluid queue takes
  over). When arrivals exceed capacity a backlog builds (a fluid queue per pod, no steady-state
  shortcut): a request waits for the backlog ahead of it to drain at the pod's capacity. The backlog
  persists across steps and drains later.
* Dependency delay: lognormal (median ``dependency_seconds``, ``dependency_sigma``) plus the profile's
  extra latency; it does not depend on the pod count and holds no worker (asynchronous calls).
* Timeouts: a request slower than the timeout (2 s by default) is a timeout. It is recorded at the
  timeout (the server span of an expired request ends when its deadline does) and counted as an error;
  a request whose queueing delay alone reaches the timeout leaves the queue (the backlog of a pod is
  capped at ``capacity x timeout``) and uses no CPU.

**Samples**: every 1 s step draws min(requests, 200) requests at random times within the step, each
standing for requests/samples requests (weights), so a sketch fed with them sees the step's latency
distribution and its true request count at a bounded cost.

**CPU** per pod: ``idle_cores`` plus ``cpu_seconds_per_request`` for each request it served, as
core-seconds; :class:`Fleet.scrape` turns that into what metrics-server reports (the average rate
over the window since its previous scrape).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

#: Utilisation used at most in the Erlang C formula; beyond it the fluid backlog describes the queue.
RHO_CAP = 0.98
#: Samples drawn per 1 s step at most (each weighted by requests / samples).
MAX_SAMPLES_PER_STEP = 200


@dataclass(frozen=True)
class WorkloadModel:
    """What one pod is like. The defaults: 8 workers x 40 ms = 200 requests/s a pod, 5 ms of CPU each,
    so a pod at capacity uses exactly its 1-core request."""

    name: str = "web"
    cpu_request_cores: float = 1.0
    cpu_seconds_per_request: float = 0.005
    workers: int = 8
    service_seconds: float = 0.040
    idle_cores: float = 0.02
    dependency_seconds: float = 0.050
    dependency_sigma: float = 0.5

    def __post_init__(self) -> None:
        if self.workers < 1 or self.service_seconds <= 0 or self.cpu_request_cores <= 0:
            raise ValueError("workers, service_seconds and cpu_request_cores must be positive")
        if not 0 <= self.cpu_seconds_per_request <= self.service_seconds:
            raise ValueError("cpu_seconds_per_request must be within the service time")

    @property
    def capacity_rps(self) -> float:
        """Requests per second one pod serves at most."""
        return self.workers / self.service_seconds

    def pods_for(self, rps: float, cpu_target_utilization: float) -> int:
        """Pods that put ``rps`` at the CPU target (the starting replica count of every policy)."""
        pods = rps * self.cpu_seconds_per_request / (self.cpu_request_cores * cpu_target_utilization)
        return max(1, math.ceil(pods - 1e-9))  # 1,200 x 0.005 / 0.6 is 10.000000000000002 in floats


DEFAULT_WORKLOAD = WorkloadModel()
#: CPU-heavy requests: 20 ms of CPU in 40 ms of service, 2 workers: 50 requests/s a pod at 1 core.
CPU_BOUND = WorkloadModel(name="cpu-heavy", cpu_seconds_per_request=0.020, workers=2, service_seconds=0.040,
                          dependency_seconds=0.010)


def erlang_c(workers: int, offered: float) -> float:
    """Probability that an arriving request waits in an M/M/c queue (``offered`` erlangs < workers)."""
    term = 1.0
    total = 1.0
    for k in range(1, workers):
        term *= offered / k
        total += term
    last = term * offered / workers * workers / (workers - offered)
    return last / (total + last)


@dataclass(frozen=True)
class StepSamples:
    """The sampled requests of one step: latency as recorded, weight, completion time within or after
    the step (seconds from the step's start) and whether each timed out."""

    latency: FloatArray
    weight: FloatArray
    done_at: FloatArray
    timed_out: BoolArray


class Fleet:
    """The pods of one workload, oldest first, and what metrics-server last reported for each."""

    def __init__(self, model: WorkloadModel, replicas: int, startup_seconds: float) -> None:
        self.model = model
        self.startup_seconds = startup_seconds
        self.created = np.full(replicas, -3600.0)  # the starting pods have run for an hour
        self.ready_at = self.created + startup_seconds
        self.backlog = np.zeros(replicas)
        self.cpu_used = np.zeros(replicas)  # core-seconds since t = 0 (or creation)
        self.scraped_at = np.zeros(replicas)  # the previous scrape (the start of the next window)
        self.scraped_cpu = np.zeros(replicas)
        self.metric_usage = np.full(replicas, np.nan)  # cores; NaN: no sample yet
        self.metric_at = np.full(replicas, np.nan)
        self.metric_window = np.full(replicas, np.nan)

    @property
    def size(self) -> int:
        return int(self.created.shape[0])

    def ready(self, t: float) -> BoolArray:
        return self.ready_at <= t

    def scale_to(self, replicas: int, t: float) -> None:
        """New pods start now (ready after the start-up delay); removal takes the newest pods first,
        as a ReplicaSet does (unready before ready, younger before older)."""
        n = self.size
        if replicas < n:
            for name in ("created", "ready_at", "backlog", "cpu_used", "scraped_at", "scraped_cpu",
                         "metric_usage", "metric_at", "metric_window"):
                setattr(self, name, getattr(self, name)[:replicas])
        elif replicas > n:
            extra = replicas - n

            def grow(arr: FloatArray, value: float) -> FloatArray:
                return np.concatenate([arr, np.full(extra, value)])

            self.created = grow(self.created, t)
            self.ready_at = grow(self.ready_at, t + self.startup_seconds)
            self.backlog = grow(self.backlog, 0.0)
            self.cpu_used = grow(self.cpu_used, 0.0)
            self.scraped_at = grow(self.scraped_at, np.nan)  # no window until the first scrape
            self.scraped_cpu = grow(self.scraped_cpu, 0.0)
            self.metric_usage = grow(self.metric_usage, np.nan)
            self.metric_at = grow(self.metric_at, np.nan)
            self.metric_window = grow(self.metric_window, np.nan)

    def scrape(self, t: float) -> None:
        """metrics-server's scrape at ``t``: each pod's average CPU since its previous scrape. A pod
        created since the last scrape gets its first sample at the next one (a window needs two
        readings of the pod's CPU counter)."""
        window = t - self.scraped_at
        has = np.isfinite(window) & (window > 0)
        usage = np.divide(self.cpu_used - self.scraped_cpu, window, out=np.zeros(self.size), where=has)
        self.metric_usage = np.where(has, usage, self.metric_usage)
        self.metric_at = np.where(has, t, self.metric_at)
        self.metric_window = np.where(has, window, self.metric_window)
        self.scraped_at = np.full(self.size, float(t))
        self.scraped_cpu = self.cpu_used.copy()

    def step(self, t: float, dt: float, rps: float, extra_latency: float, timeout: float,
             rng: np.random.Generator, max_samples: int = MAX_SAMPLES_PER_STEP) -> StepSamples:
        """Serve ``[t, t + dt)`` at ``rps``: move the backlogs and CPU counters, sample the requests."""
        m = self.model
        self.cpu_used += m.idle_cores * dt
        arrivals = rps * dt
        k = int(min(max_samples, max(1, round(arrivals)))) if arrivals > 0 else 0
        # Every draw happens whatever the state, so runs with the same seed stay in step.
        pick = rng.random(k)
        when = rng.random(k) * dt
        service = rng.exponential(m.service_seconds, k)
        dependency = m.dependency_seconds * np.exp(m.dependency_sigma * rng.standard_normal(k))
        waits = rng.random(k)
        wait_draw = rng.standard_exponential(k)
        weight = np.full(k, arrivals / k) if k else np.zeros(0)
        ready = np.flatnonzero(self.ready(t))
        if ready.shape[0] == 0:  # no endpoint: every request fails
            latency = np.full(k, timeout)
            return StepSamples(latency, weight, when + latency, np.ones(k, dtype=bool))
        n = ready.shape[0]
        lam = rps / n
        mu = m.capacity_rps
        queue_cap = mu * timeout
        q0 = self.backlog[ready]
        q1 = q0 + lam * dt
        served = np.minimum(q1, mu * dt)
        self.backlog[ready] = np.minimum(q1 - served, queue_cap)
        self.cpu_used[ready] += served * m.cpu_seconds_per_request

        pod = np.minimum((pick * n).astype(np.int64), n - 1)
        ahead = np.minimum(q0[pod] + (lam - mu) * when, queue_cap)
        queued = ahead > 0
        wait = np.where(queued, ahead / mu, 0.0)
        rho = min(lam * m.service_seconds / m.workers, RHO_CAP)
        p_wait = erlang_c(m.workers, rho * m.workers) if rho > 0 else 0.0
        drain = mu * (1.0 - rho)  # c * service rate - arrival rate
        wait = wait + np.where(~queued & (waits < p_wait), wait_draw / drain, 0.0)
        latency = wait + service + dependency + extra_latency
        timed_out = latency > timeout
        recorded = np.minimum(latency, timeout)
        return StepSamples(recorded, weight, when + recorded, timed_out)
