"""latency-adapter: windowed p95 latency and a dual-signal ratio for the Kubernetes external metrics API."""

__version__ = "0.1.0"
