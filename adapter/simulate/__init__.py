"""``latency-adapter simulate``: a pure, deterministic what-if simulator of the HPA on traffic.

It answers "what would the HPA have done with CPU only, with ``latency_p95_seconds`` only, and with
``dual_signal_ratio``?" for a traffic scenario or a CSV of requests per second, with the adapter's own
window store, provider and policy computing the latency signals (not a copy of them).

Modules, from the bottom up:

* :mod:`.hpa`: the HPA controller model (per-metric proposals, tolerance, stabilisation, policies);
* :mod:`.workload`: pods with workers, queues and CPU; what requests take;
* :mod:`.traffic`: the built-in scenarios and ``--traffic`` CSV files;
* :mod:`.settings`: the adapter config plus an optional ``simulate`` section (replica range, behavior);
* :mod:`.engine`: one run per policy, simulated second by second, and the figures;
* :mod:`.goals`, :mod:`.output`, :mod:`.command`, :mod:`.report`: goals, JSON/tables/plot, the
  subcommand and the README report (``python -m adapter.simulate.report``).

Only names are imported here, so ``latency-adapter`` starts without numpy-heavy imports it does not use.
"""

#: The built-in scenarios (:data:`adapter.simulate.traffic.SCENARIOS` has their definitions).
SCENARIO_NAMES = ("burst", "diurnal", "dependency-slowdown", "cpu-bound")
