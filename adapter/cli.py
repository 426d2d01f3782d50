"""``latency-adapter``: the command line. Other tools and tests drive it, so names here are a contract.

Exit statuses: 0 success, 2 usage or configuration error (the message names the key and the value).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from .config import LOG_LEVELS, load_settings
from .errors import ConfigError
from .limits import DEBUG_ENDPOINTS
from .simulate import SCENARIO_NAMES
from .traces import check_url_template

log = logging.getLogger("adapter.cli")

EXIT_USAGE = 2


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"port must be a number from 0 to 65535, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be a number from 0 to 65535, got {text!r}")
    return value


def _csv(text: str) -> tuple[str, ...]:
    """A comma-separated flag value, as Kubernetes' string-slice flags take it."""
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="latency-adapter",
        description="Kubernetes external metrics adapter: windowed p95 latency from OpenTelemetry, "
                    "with trace ids, for HorizontalPodAutoscalers.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    serve = sub.add_parser("serve", help="run the adapter (API on HTTPS, OTLP receiver, operations port)",
                           description="Run the adapter. Port 0 picks a free port; the bound ports are "
                                       "logged in one 'listening' line.")
    serve.add_argument("--config", type=Path, help="YAML config file (see README: Configuration)")
    serve.add_argument("--bind", default=None, help="address to listen on (default 0.0.0.0)")
    serve.add_argument("--api-port", type=_port, default=None,
                       help="external metrics API, HTTPS (default 6443)")
    serve.add_argument("--otlp-port", type=_port, default=None, help="OTLP/HTTP receiver (default 4318)")
    serve.add_argument("--telemetry-port", type=_port, default=None,
                       help="operations: /metrics, /healthz, /readyz, /debug/workloads (default 9464)")
    serve.add_argument("--cert-dir", type=Path, default=None,
                       help="where the self-signed serving certificate is written (default: "
                            "<tmp>/latency-adapter/certs)")
    serve.add_argument("--insecure-no-auth", action="store_true",
                       help="serve the API without authentication or authorisation (local development "
                            "only; logs a warning at start and every minute)")
    sec = serve.add_argument_group(
        "TLS, authentication and authorisation (the flags of every aggregated API server)")
    sec.add_argument("--tls-cert-file", type=Path, help="serving certificate (PEM); re-read when it changes. "
                     "Default: a self-signed one in --cert-dir")
    sec.add_argument("--tls-private-key-file", type=Path, help="key of --tls-cert-file (PEM)")
    sec.add_argument("--client-ca-file", type=Path,
                     help="CA bundle for x509 client certificates (user = CN, groups = O)")
    sec.add_argument("--requestheader-client-ca-file", type=Path,
                     help="CA bundle of the aggregator's front-proxy client certificate")
    sec.add_argument("--requestheader-allowed-names", type=_csv,
                     help="comma-separated CNs the front-proxy certificate may have (empty: any)")
    sec.add_argument("--requestheader-username-headers", type=_csv, help="default X-Remote-User")
    sec.add_argument("--requestheader-group-headers", type=_csv, help="default X-Remote-Group")
    sec.add_argument("--requestheader-extra-headers-prefix", type=_csv, help="default X-Remote-Extra-")
    sec.add_argument("--authentication-kubeconfig", type=Path,
                     help="kubeconfig for TokenReview and the authentication ConfigMap (default: in-cluster)")
    sec.add_argument("--authorization-kubeconfig", type=Path,
                     help="kubeconfig for SubjectAccessReview (default: in-cluster)")
    sec.add_argument("--authorization-always-allow-paths", type=_csv, default=None,
                     help="comma-separated paths served without authorisation (default "
                          "/healthz,/readyz,/livez)")
    cpu = serve.add_argument_group("workload CPU (for the dual-signal policy)")
    cpu.add_argument("--cpu-source", choices=("auto", "kubernetes", "otlp"), default=None,
                     help="auto (default): poll metrics-server and pod specs when in a cluster or given "
                          "--kubeconfig, else OTLP CPU metrics only; kubernetes: require the API; otlp: "
                          "never poll")
    cpu.add_argument("--cpu-poll-seconds", type=float, default=None,
                     help="how often workload CPU is polled from the Kubernetes API (default 15)")
    cpu.add_argument("--kubeconfig", type=Path, default=None,
                     help="kubeconfig for reading Deployments, pods and PodMetrics (default: in-cluster)")
    serve.add_argument("--trace-url-template", default=None,
                       help="link to a trace, with {trace_id} where the id goes (e.g. "
                            "https://tempo.example/explore?traceId={trace_id}); used by /debug/workloads")
    serve.add_argument("--debug-endpoints", choices=DEBUG_ENDPOINTS, default=None,
                       help="/debug/* on the operations port: auto (default: only with --insecure-no-auth, "
                            "since that port has no authentication), on, off")
    serve.add_argument("--demo", action="store_true",
                       help="also run the demo traffic generator against this adapter's OTLP port")
    serve.add_argument("--log-level", choices=LOG_LEVELS, default=None)

    demo = sub.add_parser("demo", help="send demo OTLP traffic to an adapter (or any OTLP receiver)",
                          description="Generate demo traffic with the OpenTelemetry SDK: two workloads in "
                                      "namespace 'demo'; checkout periodically slows down on a "
                                      "dependency (low CPU), catalog gets CPU-bound busy phases.")
    demo.add_argument("--otlp-endpoint", default="http://127.0.0.1:4318",
                      help="OTLP/HTTP base URL (default http://127.0.0.1:4318)")
    demo.add_argument("--rate", type=float, default=50.0, help="requests per second per workload")
    demo.add_argument("--seed", type=int, default=1)

    check = sub.add_parser("check-config", help="validate a config file and exit (0 valid, 2 invalid)")
    check.add_argument("file", type=Path)

    sim = sub.add_parser(
        "simulate", help="what-if: replay traffic through an HPA with CPU-only, latency-only and dual-signal",
        description="Simulate the Kubernetes HPA on a traffic scenario or file with three policies (CPU "
                    "only, latency_p95_seconds only, dual_signal_ratio), the adapter's own window and policy "
                    "computing the signals. Pure and deterministic: simulated time, random numbers from "
                    "--seed.")
    source = sim.add_mutually_exclusive_group(required=True)
    source.add_argument("--scenario", choices=SCENARIO_NAMES, help="a built-in traffic scenario")
    source.add_argument("--traffic", type=Path, metavar="FILE",
                        help="CSV with the header timestamp,rps[,extra_latency_seconds]; seconds from the "
                             "start, ascending; linear between rows")
    sim.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    sim.add_argument("--config", type=Path, help="the adapter's config file (policy targets, store window); "
                                                 "an optional 'simulate' section sets the HPA behavior")
    sim.add_argument("--slo", type=float, default=0.42, metavar="SECONDS",
                     help="SLO on the p95, in seconds (default 0.42)")
    sim.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    sim.add_argument("--plot", type=Path, metavar="OUT.png",
                     help="write load, p95 and replicas per policy as a PNG (needs matplotlib)")
    sim.add_argument("--duration", type=float, metavar="SECONDS",
                     help="simulate only the first SECONDS of the traffic (quick looks)")

    gate = sub.add_parser(
        "gate", help="canary verdict: is the canary's p95 within --max-ratio of its baseline's? (exit 0/1/3)",
        description="Read the adapter's external metrics (through the cluster, or --server) and decide: "
                    "exit 0 pass (enough requests on both sides, p95 ratio at or under --max-ratio), 1 "
                    "regression (error ratio over --max-error-ratio, or the ratio's 95 % interval entirely "
                    "over --max-ratio), 3 inconclusive (too few requests, or over the limit but not beyond "
                    "doubt), 2 usage or connection error.")
    gate.add_argument("--namespace", required=True)
    gate.add_argument("--canary", required=True, help="the canary workload")
    gate.add_argument("--baseline", required=True,
                      help="the baseline workload (as in the adapter's canaries)")
    gate.add_argument("--max-ratio", type=float, default=1.10, help="canary p95 / baseline p95 limit (1.10)")
    gate.add_argument("--max-error-ratio", type=float, default=0.032,
                      help="canary error ratio above which it fails at once (0.032)")
    gate.add_argument("--min-samples", type=int, default=200, help="requests needed on each side (200)")
    gate.add_argument("--wait", metavar="DURATION", help="poll up to this long (90s, 5m) while inconclusive")
    gate.add_argument("--json", action="store_true", help="print one JSON object instead of a line")
    gate.add_argument("--server", metavar="URL", help="read this adapter (or API server) directly instead of "
                                                       "through the kubeconfig's cluster")
    gate.add_argument("--insecure-skip-tls-verify", action="store_true",
                      help="with --server: do not verify its certificate")
    gate.add_argument("--certificate-authority", type=Path, metavar="FILE",
                      help="with --server: CA bundle to verify it with")
    gate.add_argument("--token-file", type=Path, metavar="FILE", help="with --server: bearer token file")
    gate.add_argument("--kubeconfig", type=Path, help="kubeconfig (default: $KUBECONFIG, ~/.kube/config, "
                                                      "or in-cluster)")

    sub.add_parser("version", help="print the version")
    return parser


def _serve(args: argparse.Namespace) -> int:
    from .service import serve
    from .telemetry import setup_logging

    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"latency-adapter: invalid configuration: {exc}", file=sys.stderr)
        return EXIT_USAGE
    overrides = {
        "bind": args.bind, "api_port": args.api_port, "otlp_port": args.otlp_port,
        "telemetry_port": args.telemetry_port, "cert_dir": args.cert_dir, "log_level": args.log_level,
    }
    security = {
        name: getattr(args, name) for name in (
            "tls_cert_file", "tls_private_key_file", "client_ca_file", "requestheader_client_ca_file",
            "requestheader_allowed_names", "requestheader_username_headers", "requestheader_group_headers",
            "requestheader_extra_headers_prefix", "authentication_kubeconfig", "authorization_kubeconfig",
            "authorization_always_allow_paths")
        if getattr(args, name) is not None
    }
    cpu = {name: value for name, value in (("source", args.cpu_source),
                                           ("poll_seconds", args.cpu_poll_seconds)) if value is not None}
    if args.cpu_poll_seconds is not None and not 1 <= args.cpu_poll_seconds <= 3600:
        bad = ConfigError("--cpu-poll-seconds", args.cpu_poll_seconds, "must be between 1 and 3600")
        print(f"latency-adapter: invalid configuration: {bad}", file=sys.stderr)
        return EXIT_USAGE
    traces = settings.traces
    if args.trace_url_template is not None:
        try:
            check_url_template("--trace-url-template", args.trace_url_template)
        except ConfigError as exc:
            print(f"latency-adapter: invalid configuration: {exc}", file=sys.stderr)
            return EXIT_USAGE
        traces = dataclasses.replace(traces, url_template=args.trace_url_template)
    server = settings.server
    if args.debug_endpoints is not None:
        server = dataclasses.replace(server, debug_endpoints=args.debug_endpoints)
    settings = dataclasses.replace(settings, **{k: v for k, v in overrides.items() if v is not None},
                                   traces=traces, server=server,
                                   insecure_no_auth=args.insecure_no_auth, demo=args.demo,
                                   kubeconfig=args.kubeconfig,
                                   cpu=dataclasses.replace(settings.cpu, **cpu),
                                   security=dataclasses.replace(settings.security, **security))
    setup_logging(settings.log_level)
    try:
        asyncio.run(serve(settings))
    except ConfigError as exc:
        log.error("cannot start", extra={"fields": {"event": "start_failed", "error": str(exc)}})
        print(f"latency-adapter: cannot start: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        log.error("cannot start", extra={"fields": {"event": "start_failed", "error": str(exc)}})
        print(f"latency-adapter: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import DemoSettings, run_demo
    from .telemetry import setup_logging

    setup_logging("info")
    stop = threading.Event()
    try:
        settings = DemoSettings(otlp_endpoint=args.otlp_endpoint.rstrip("/"), rate=args.rate, seed=args.seed)
    except ValueError as exc:
        print(f"latency-adapter demo: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        run_demo(settings, stop)
    except KeyboardInterrupt:
        stop.set()
    return 0


def _check_config(args: argparse.Namespace) -> int:
    """Validate every section of the file, as ``serve`` would at start; one line on stdout or stderr."""
    try:
        settings = load_settings(args.file)
    except ConfigError as exc:
        print(f"{args.file}: invalid: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"{args.file}: ok: {settings.policy.summary()}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "demo":
        return _demo(args)
    if args.command == "check-config":
        return _check_config(args)
    if args.command == "gate":
        from .gate import main as gate

        return gate(args)
    if args.command == "simulate":
        from .simulate.command import run as simulate

        return simulate(args)
    print(__version__)
    return 0


if __name__ == "__main__":
    sys.exit(main())
