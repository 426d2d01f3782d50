"""The catalogue of targets, importable before anything of the adapter is.

Why apart from :mod:`.targets`: atheris instruments only modules imported inside its
``instrument_imports`` context, so the worker must know which packages a target wants instrumented
before it imports the target's code (which imports the adapter).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Spec:
    key: str
    name: str
    surface: str
    #: libFuzzer's -max_len: the longest input it makes (the adapter's own limits are far above).
    max_len: int
    #: Whether it needs a running adapter (the HTTP targets).
    http: bool
    #: Packages atheris instruments for coverage feedback (the in-process part of every target).
    instrument: tuple[str, ...]
    #: Roughly what one input costs (µs, on the machine it was measured on): with several jobs the
    #: costliest targets start first, so the lanes finish together.
    cost: int


SPECS = (
    Spec("a", "otlp-protobuf", "OTLP protobuf bodies, POST /v1/traces and /v1/metrics", 65536, True,
         ("adapter",), 1500),
    Spec("b", "otlp-json", "OTLP/JSON bodies, POST /v1/traces and /v1/metrics", 65536, True,
         ("adapter", "google.protobuf"), 1400),
    Spec("c", "selector", "labelSelector of the metrics API and adapter.selector", 8192, True,
         ("adapter",), 1150),
    Spec("d", "path", "namespaces and metric names in metrics API paths", 4096, True, ("adapter",), 2100),
    Spec("e", "config", "config files, adapter.config.settings_from_bytes", 16384, False,
         ("adapter", "yaml"), 1900),
    Spec("f", "quantity", "quantities, adapter.quantity", 256, False, ("adapter",), 50),
)
BY_KEY = {s.key: s for s in SPECS}


def select(names: str) -> list[Spec]:
    """Specs named by key or name, comma-separated (``a,b`` or ``selector,config``); raises KeyError."""
    by_name = {**BY_KEY, **{s.name: s for s in SPECS}}
    return [by_name[n.strip()] for n in names.split(",") if n.strip()]
