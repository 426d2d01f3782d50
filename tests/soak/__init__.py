"""Soak: ten minutes at twice the sizing load, OTLP ingest and API queries together (``make soak``).

Benchmarks (``tests/benchmarks``) measure seconds of one kind of load; what they cannot show is what
minutes of both kinds at once do: memory that creeps, a latency spike when a slice closes under ingest,
an error once in 100,000 requests. Not in CI: it takes eleven minutes and both cores.

**Sizing load of one replica** (one core): 40,000 spans/s of OTLP ingest plus 400 external-metrics API
requests/s, with a few hundred workloads. The API half is generous on purpose: the HPA controller reads
every metric of every HPA once per sync period (15 s), so 1,000 HPAs with three metrics each ask 200
requests/s; 400 req/s leaves room for ``kubectl get --raw``, dashboards and a second controller. The
soak runs at twice that: **80,000 spans/s and 800 req/s** (``--spans-per-second``, ``--api-rps``), for
``--minutes`` (10) after ``--warmup-minutes`` (2). Why this size: it keeps the API's p99 under 20 ms
at twice the load with room for a slower core. Measured on the 2-vCPU machines this project is built
on: at 80,000 + 800 the p99 was 8-9 ms at 67-68 % of the core; at 100,000 + 1,000 one ten-minute run
passed (p99 9-18 ms at 75-83 %), but when the same machine ran about a fifth slower (the same work took
88-94 % of the core) the p99 was 25-37 ms. One core cannot hold twice the 100,000 + 1,000 this project
first named at all: at that load it is full at about 140,000 spans/s.

**Set-up** (``python -m tests.soak``, options in ``--help``):

* the real service, ``latency-adapter serve`` in **secure mode** (TLS with a trustme CA, bearer token
  authenticated by a cached TokenReview and authorised by a cached SubjectAccessReview against the fake
  Kubernetes API of the tests), started by :mod:`tests.benchmarks.api`'s helper, pinned to CPU 0 as a
  one-core pod would be;
* 200 workloads (``--workloads``) in namespace ``shop``, 8 routes each: 1,600 series, under the default
  cap of 2,000 per namespace;
* OTLP: :mod:`tests.soak.otlp_load`, one process on CPU 1 posting bodies of 512 SERVER spans open loop
  at the target rate over 16 keep-alive connections, fresh trace ids in every body, plus pod CPU
  readings for every workload every 10 s;
* API: :mod:`tests.soak.api_load`, ``wrk -t1 -c32`` on CPU 1 with a Lua schedule holding the target
  rate, one run per minute, asking ``latency_p95_seconds``, ``dual_signal_ratio``, ``request_rate`` and
  ``error_ratio`` of every workload and ``latency_p95_seconds`` of one route each (1,000 queries,
  shuffled); every one of them must answer 200 before the clock starts, so a 404 is an error;
* every 2 s the adapter's RSS (``VmRSS`` of ``/proc/<pid>/status``); every 15 s a scrape of its
  ``/metrics`` as Prometheus would.

Besides the goals' figures, each minute's row shows CPU in cores: the adapter's, the generators' (OTLP
sender, wrk, the driver with the fake API server) and everything else's on the machine, so a minute
spoiled by a neighbour (a test suite, a fuzzer) is told apart from a slow adapter; and the adapter's own
estimate of its store size, so RSS growth can be told apart from the window filling.

**Goals** (a failed one makes the exit status 1):

* 0 errors, warm-up included: API non-2xx answers and socket errors; OTLP non-200 answers, connection
  failures and spans refused in ``partial_success``; 429s are back-pressure, shown apart, and count too;
* RSS growth < 5 % after warm-up: each minute's mean RSS against the **baseline, the mean RSS over the
  last 30 s of the warm-up**. Two minutes of it: the 60 s window fills during the first, so a baseline
  from the end of a one-minute warm-up was taken while the store was still growing (measured: +7.5 to
  +8.8 % in the next minute and flat after it; against a two-minute warm-up, +0.4 to +0.6 %);
* API p99 < 20 ms in every minute, warm-up included;
* the load was held: every minute at >= 95 % of both target rates, else the run did not test what it
  claims (on a machine that cannot hold it, lower the rates explicitly and say so).
"""

from __future__ import annotations

SIZING_SPANS_PER_SECOND = 40_000
SIZING_API_RPS = 400
GOAL_P99_MS = 20.0
GOAL_RSS_GROWTH = 0.05
GOAL_LOAD_SHARE = 0.95
