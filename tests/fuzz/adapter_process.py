"""The adapter the HTTP targets hit: ``latency-adapter serve --insecure-no-auth`` on free ports.

Why these settings: 1 s slices with a 0.1 s refresh make a good-traffic value readable a fraction of a
second after it was sent (the served window includes the open slice), so checking after every batch
costs little; the 30 s window lets what the fuzzer wrote expire while it runs, as it would in production.
Everything else is the shipped default, limits included: they are part of what is under test.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.fuzz.oracles import Client
from tests.integration.process import ServiceProcess

FUZZ_CONFIG: dict[str, Any] = {"store": {"window_seconds": 30, "slice_seconds": 1, "refresh_seconds": 0.1}}


def client_of(proc: ServiceProcess, cert_file: Path) -> Client:
    return Client(proc.api_port, proc.otlp_port, proc.telemetry_port, cert_file)


def logged_errors(proc: ServiceProcess) -> list[str]:
    """Log events at error level or above: an unhandled exception in a handler shows up here even when
    the client got an answer."""
    out = []
    for doc in proc.log_events():
        if doc.get("level") in ("error", "critical"):
            out.append(json.dumps({k: doc.get(k) for k in ("logger", "msg", "event", "path", "exception")
                                   if doc.get(k) is not None})[:4000])
    return out


class FuzzAdapter(ServiceProcess):
    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir, ["--insecure-no-auth"], FUZZ_CONFIG)

    def client(self) -> Client:
        return client_of(self, self.cert_dir / "apiserver.crt")
