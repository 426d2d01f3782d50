"""The harness shared by the integration tests: one ``latency-adapter serve`` subprocess and plain HTTP.

* :class:`ServiceProcess` runs ``latency-adapter serve`` on free ports of 127.0.0.1 (port 0) in a work
  directory, with its stderr in a file, learns the bound ports from the JSON ``listening`` log line, waits
  for ``/readyz`` on the ops port and stops it with SIGTERM (then SIGKILL). Subclasses add the arguments
  (``--insecure-no-auth``, TLS and auth flags), the clients of the API port and their readiness checks.
* :func:`wait_for` polls without blind sleeps; :func:`exchange` does one request and returns a
  :class:`Response`.

Imported as ``tests.integration.process`` (the repository root is on ``pythonpath``).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self, TypeVar

import pytest
import yaml

from tests.tooling import terminate

ADAPTER_BIN = Path(sys.executable).with_name("latency-adapter")
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0

T = TypeVar("T")


def wait_for(check: Callable[[], T | None], timeout: float, what: str, interval: float = 0.05) -> T:
    """Call ``check`` until it returns something other than None/False; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            result = check()
        except (OSError, http.client.HTTPException) as exc:
            result, last = None, exc
        if result is not None and result is not False:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what} (last error: {last!r})")
        time.sleep(interval)


@dataclass
class Response:
    status: int
    headers: dict[str, str]  # names lower-cased
    body: bytes
    elapsed: float = 0.0  # seconds from sending the request to the end of the body

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip()

    def __repr__(self) -> str:
        return (f"Response({self.status}, {self.headers.get('content-type')!r}, {self.elapsed:.2f}s, "
                f"{self.body[:600]!r})")


def exchange(conn: http.client.HTTPConnection, path: str,
             headers: Mapping[str, str] | Sequence[tuple[str, str]] = (), *, method: str = "GET",
             body: bytes | None = None, close: bool = False) -> Response:
    """One request on ``conn`` (kept open unless ``close``).

    A mapping of headers goes through ``conn.request`` (which adds ``Content-Length`` for ``body``); a
    sequence of pairs may repeat a name (``X-Remote-Group`` twice) and is sent as given, without a body.
    """
    try:
        started = time.monotonic()
        if isinstance(headers, Mapping):
            conn.request(method, path, body=body, headers=dict(headers))
        else:
            assert body is None, "a body needs its headers as a mapping"
            conn.putrequest(method, path)
            for name, value in headers:
                conn.putheader(name, value)
            conn.endheaders()
        resp = conn.getresponse()
        data = resp.read()
        return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data,
                        time.monotonic() - started)
    finally:
        if close:
            conn.close()


class ServiceProcess:
    """One ``latency-adapter serve`` subprocess on free ports, run in ``workdir``.

    ``args`` follow the listener flags (``--bind 127.0.0.1``, every port 0, ``--cert-dir workdir/certs``)
    and, when ``config`` is given, ``--config`` with it written to ``workdir/config.yaml``.
    """

    #: Environment variables the child does not inherit.
    drop_env: tuple[str, ...] = ()
    #: Environment variables set for the child (after ``drop_env``), e.g. ``OTEL_EXPORTER_OTLP_ENDPOINT``.
    extra_env: Mapping[str, str] = {}
    #: How many lines :meth:`stderr_tail` returns by default.
    tail_lines = 60

    def __init__(self, workdir: Path, args: Sequence[str] = (), config: dict[str, Any] | None = None) -> None:
        self.workdir = workdir
        self.args = list(args)
        self.config = config
        self.cert_dir = workdir / "certs"
        self.stderr_path = workdir / "adapter.stderr"
        self.proc: subprocess.Popen[bytes] | None = None
        self.api_port = self.otlp_port = self.telemetry_port = 0
        self.listening: dict[str, Any] = {}
        self.returncode: int | None = None

    # -- life cycle ----------------------------------------------------------------------------------

    def command(self) -> list[str]:
        """The command line (writes the config file, if any)."""
        cmd = [str(ADAPTER_BIN), "serve", "--bind", "127.0.0.1", "--api-port", "0", "--otlp-port", "0",
               "--telemetry-port", "0", "--cert-dir", str(self.cert_dir)]
        if self.config is not None:
            config_file = self.workdir / "config.yaml"
            config_file.write_text(yaml.safe_dump(self.config), encoding="utf-8")
            cmd += ["--config", str(config_file)]
        return [*cmd, *self.args]

    def start(self) -> Self:
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k not in self.drop_env}
        env["PYTHONUNBUFFERED"] = "1"
        env.update(self.extra_env)
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(self.command(), cwd=self.workdir, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=err, env=env)
        try:
            self.listening = wait_for(self._listening_line, START_TIMEOUT, "the 'listening' log line")
            self.api_port = int(self.listening["api_port"])
            self.otlp_port = int(self.listening["otlp_port"])
            self.telemetry_port = int(self.listening["telemetry_port"])
            self.ready()
        except BaseException:
            self.stop()
            raise
        return self

    def ready(self) -> None:
        """Called once the ports are known (the process is stopped if it raises): waits for ``/readyz``."""
        wait_for(lambda: self.ops("/readyz").status == 200, START_TIMEOUT, "/readyz on the ops port")

    def _listening_line(self) -> dict[str, Any] | None:
        for doc in self.log_events():
            if doc.get("event") == "listening":
                return doc
        assert self.proc is not None
        if self.proc.poll() is not None:
            pytest.fail(f"latency-adapter exited with {self.proc.returncode} before listening:\n"
                        + self.stderr_tail())
        return None

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after :data:`STOP_TIMEOUT`; returns the exit status."""
        proc = self.proc
        if proc is None or self.returncode is not None:
            return self.returncode
        self.returncode = terminate(proc, STOP_TIMEOUT)
        return self.returncode

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- its log -------------------------------------------------------------------------------------

    def stderr_text(self) -> str:
        try:
            return self.stderr_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def stderr_tail(self, lines: int | None = None) -> str:
        return "\n".join(self.stderr_text().splitlines()[-(self.tail_lines if lines is None else lines):])

    def log_events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.stderr_text().splitlines():
            with contextlib.suppress(ValueError):
                doc = json.loads(line)
                if isinstance(doc, dict):
                    out.append(doc)
        return out

    # -- the ops port (plain HTTP) -------------------------------------------------------------------

    def ops(self, path: str, headers: dict[str, str] | None = None) -> Response:
        conn = http.client.HTTPConnection("127.0.0.1", self.telemetry_port, timeout=10)
        return exchange(conn, path, headers or {}, close=True)

    def counter(self, name: str, **labels: str) -> float:
        """The value of one sample of ``/metrics`` (0 when absent), e.g. ``counter(
        "latency_adapter_otlp_items_total", signal="traces", outcome="accepted")``."""
        from prometheus_client.parser import text_string_to_metric_families

        resp = self.ops("/metrics")
        assert resp.status == 200, resp
        total = 0.0
        for family in text_string_to_metric_families(resp.text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    total += sample.value
        return total
