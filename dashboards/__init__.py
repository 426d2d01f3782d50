"""Grafana dashboards of the latency adapter, generated from code (``python -m dashboards.generate``)."""
