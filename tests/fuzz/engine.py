"""The drivers: one worker process per target (atheris or hypothesis), and the parent that runs them.

Why a process per target: libFuzzer ends its process when it stops, and atheris must instrument the
adapter's modules as they are first imported, with the packages each target wants. So the parent starts
the adapter (HTTP targets), runs ``python -m tests.fuzz --worker KEY`` against it, reads the worker's
``result.json``, stops the adapter (which must exit 0 on SIGTERM) and adds what the adapter logged at
error level. The worker counts inputs itself and leaves (``os._exit``) right after the last one, so the
number of inputs is exact whatever libFuzzer's own bookkeeping does.

Nothing here imports the adapter at module level, for the same reason.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.fuzz.specs import BY_KEY, Spec

if TYPE_CHECKING:
    from tests.fuzz.targets import Runner

REPO = Path(__file__).resolve().parents[2]
#: Distinct findings described per target (each with its count and a reproducer file).
MAX_FINDINGS = 20


@dataclass
class Result:
    target: str
    engine: str
    wanted: int
    inputs: int = 0
    crashes: int = 0
    server_errors: int = 0
    bad_answers: int = 0
    checks: int = 0
    checks_passed: int = 0
    seconds: float = 0.0
    http: bool = False
    #: signature -> {"kind", "count", "detail", "reproducer"}
    findings: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return bool(self.crashes or self.server_errors or self.bad_answers or self.inputs != self.wanted
                    or self.checks_passed != self.checks or not self.checks)

    def note(self, kind: str, signature: str, detail: str, data: bytes | None, findings_dir: Path) -> None:
        """Count a finding under ``signature``; the first of each keeps its input as a reproducer file."""
        entry = self.findings.get(signature)
        if entry is not None:
            entry["count"] += 1
            return
        reproducer = None
        if data is not None:
            findings_dir.mkdir(parents=True, exist_ok=True)
            path = findings_dir / f"{kind}-{hashlib.sha1(data).hexdigest()[:12]}"
            path.write_bytes(data)
            reproducer = str(path)
        if len(self.findings) < MAX_FINDINGS:
            self.findings[signature] = {"kind": kind, "count": 1, "detail": detail[:6000],
                                        "reproducer": reproducer}


def _crash_signature(exc: BaseException) -> str:
    """Type and innermost frame in the adapter (else the innermost frame): one line per distinct bug."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "/adapter/" in f.filename] or frames
    where = f"{ours[-1].filename.rsplit('/', 2)[-1]}:{ours[-1].lineno}" if ours else "?"
    return f"{type(exc).__name__} at {where}"


class Session:
    """Counts one target's inputs and findings and runs the good-traffic check after every batch."""

    def __init__(self, runner: Runner, result: Result, batch: int, workdir: Path) -> None:
        self.runner = runner
        self.result = result
        self.batch = batch
        self.findings_dir = workdir / "findings"
        self.started = time.monotonic()

    @property
    def done(self) -> bool:
        return self.result.inputs >= self.result.wanted

    def feed(self, data: bytes) -> None:
        r = self.result
        r.inputs += 1
        bad = False
        try:
            problem = self.runner.local(data)
            if problem:
                bad = True
                r.note("bad-answer", "in process: " + problem[:80], problem, data, self.findings_dir)
            if self.runner.client is not None:
                answer = self.runner.remote(data)
                if answer.status >= 500:
                    r.server_errors += 1
                    r.note("5xx", f"HTTP {answer.status}", answer.problem or "", data, self.findings_dir)
                elif answer.problem:
                    bad = True
                    r.note("bad-answer", "over HTTP: " + answer.problem[:80], answer.problem, data,
                           self.findings_dir)
        except Exception as exc:
            r.crashes += 1
            r.note("crash", _crash_signature(exc), traceback.format_exc(), data, self.findings_dir)
        r.bad_answers += bad
        if r.inputs % self.batch == 0 or r.inputs == r.wanted:
            self.check()

    def check(self) -> None:
        r = self.result
        try:
            problems = self.runner.good()
        except Exception as exc:
            problems = [f"the good-traffic check raised {exc!r}"]
            traceback.print_exc()
        r.checks += 1
        r.checks_passed += not problems
        for problem in problems:
            r.note("good-traffic", "good traffic: " + problem[:80], problem, None, self.findings_dir)
        verdict = "ok" if not problems else f"FAILED ({problems[0][:160]})"
        print(f"  {r.target}: {r.inputs:,}/{r.wanted:,} inputs, {r.crashes} crashes, "
              f"{r.server_errors} >=500, {r.bad_answers} bad answers, good traffic {verdict}  "
              f"[{time.monotonic() - self.started:.0f} s]", flush=True)


# ---------------------------------------------------------------------------------------------------------
# The worker (one target, one process).


def _dictionary(tokens: list[bytes]) -> str:
    """libFuzzer's dictionary syntax: one quoted entry per line, non-printables as \\xNN."""
    def esc(b: int) -> str:
        return chr(b) if 0x20 <= b < 0x7F and b not in (0x22, 0x5C) else f"\\x{b:02x}"

    return "".join('"' + "".join(esc(b) for b in token) + '"\n' for token in tokens)


def _tokens(spec: Spec) -> list[bytes]:
    from tests.fuzz import inputs

    if spec.key in ("a", "b"):
        return inputs.otlp_tokens(spec.key == "b")
    if spec.key in ("c", "d"):
        return [t.encode() for t in inputs.SELECTOR_TOKENS] + [m.encode() for m in inputs.SELECTOR_METRICS]
    if spec.key == "e":
        return list(inputs.CONFIG_TOKENS)
    return [t.encode() for t in inputs.QUANTITY_TOKENS]


def _seeds(spec: Spec) -> tuple[bytes, ...]:
    from tests.fuzz import inputs

    return {"a": lambda: inputs.otlp_seeds(False), "b": lambda: inputs.otlp_seeds(True),
            "c": lambda: tuple(s.encode() for s in inputs.SELECTOR_SEEDS), "d": lambda: inputs.PATH_SEEDS,
            "e": inputs.config_seeds, "f": inputs.quantity_seeds}[spec.key]()


def worker(args: argparse.Namespace) -> int:
    spec = BY_KEY[args.worker]
    workdir = Path(args.workdir)
    if args.engine == "atheris":
        import atheris

        with atheris.instrument_imports(include=list(spec.instrument)):
            from tests.fuzz import targets
    else:
        from tests.fuzz import targets
    from tests.fuzz.oracles import Client

    client = None
    if args.ports:
        api, otlp, ops = (int(p) for p in args.ports.split(","))
        client = Client(api, otlp, ops, Path(args.cert))
    result = Result(spec.name, args.engine, args.inputs, http=spec.http)
    session = Session(targets.Runner(spec.key, client), result, args.batch, workdir)

    def finish() -> None:
        result.seconds = time.monotonic() - session.started
        (workdir / "result.json").write_text(json.dumps(dataclasses.asdict(result)), encoding="utf-8")
        if client is not None:
            client.close()
        sys.stdout.flush()

    if args.engine == "atheris":
        _atheris(spec, session, workdir, args.seed, finish)
    else:
        _hypothesis(spec, session, args.seed)
        finish()
    return 0


def _atheris(spec: Spec, session: Session, workdir: Path, seed: int, finish: Any) -> None:
    import atheris

    corpus = workdir / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    for i, data in enumerate(_seeds(spec)):
        (corpus / f"seed-{i:03d}").write_bytes(data)
    tokens = workdir / "tokens.dict"
    tokens.write_text(_dictionary(_tokens(spec)), encoding="ascii")

    def one(data: bytes) -> None:
        session.feed(data)
        if session.done:
            finish()
            os._exit(0)  # libFuzzer would go on; the count is ours

    atheris.Setup([sys.argv[0], f"-max_len={spec.max_len}", f"-seed={seed}", "-rss_limit_mb=4096",
                   "-timeout=120", f"-dict={tokens}", f"-artifact_prefix={workdir}/libfuzzer-",
                   str(corpus)], one)
    atheris.Fuzz()


def _hypothesis(spec: Spec, session: Session, seed: int) -> None:
    """Batches of examples until the count is reached (a strategy may run dry before max_examples)."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hypothesis_seed

    from tests.fuzz.inputs import STRATEGIES

    strategy = STRATEGIES[spec.key]()
    rounds = 0
    while not session.done:
        remaining = session.result.wanted - session.result.inputs

        @hypothesis_seed(seed + rounds)
        @settings(max_examples=min(remaining, session.batch), database=None, deadline=None,
                  phases=[Phase.generate], suppress_health_check=list(HealthCheck))
        @given(strategy)
        def run(data: bytes) -> None:
            if not session.done:
                session.feed(data)

        run()
        rounds += 1


# ---------------------------------------------------------------------------------------------------------
# The parent.


def default_engine() -> str:
    return "atheris" if importlib.util.find_spec("atheris") is not None else "hypothesis"


def run_target(spec: Spec, inputs: int, batch: int, engine: str, seed: int, base: Path) -> Result:
    """One worker against (for HTTP targets) an adapter of its own; what the adapter logged is added."""
    from tests.fuzz.adapter_process import FuzzAdapter, logged_errors

    workdir = base / spec.name
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    adapter = FuzzAdapter(workdir / "adapter").start() if spec.http else None
    cmd = [sys.executable, "-m", "tests.fuzz", "--worker", spec.key, "--inputs", str(inputs), "--batch",
           str(batch), "--engine", engine, "--seed", str(seed), "--workdir", str(workdir)]
    if adapter is not None:
        cmd += ["--ports", f"{adapter.api_port},{adapter.otlp_port},{adapter.telemetry_port}",
                "--cert", str(adapter.cert_dir / "apiserver.crt")]
    worker_log = workdir / "worker.log"
    try:
        with open(worker_log, "wb") as log:
            rc = subprocess.run(cmd, stderr=log, cwd=REPO, check=False).returncode
        result_file = workdir / "result.json"
        if result_file.is_file():
            result = Result(**json.loads(result_file.read_text(encoding="utf-8")))
        else:
            result = Result(spec.name, engine, inputs, http=spec.http, crashes=1)
            tail = worker_log.read_text(encoding="utf-8", errors="replace")[-3000:]
            result.note("crash", f"worker exited {rc}", f"the worker exited {rc} without a result:\n{tail}",
                        None, workdir)
    finally:
        stopped = adapter.stop() if adapter is not None else 0
    if adapter is not None:
        errors = logged_errors(adapter)
        for line in errors:
            result.note("server-log", "adapter log: " + line[:120], line, None, workdir)
        if errors and not result.server_errors:
            result.crashes += len(errors)  # failures no client saw as a 5xx
        if stopped != 0:
            result.crashes += 1
            result.note("crash", "adapter exit", f"the adapter exited {stopped} on SIGTERM:\n"
                        + adapter.stderr_tail(40), None, workdir)
    result.seconds = time.monotonic() - started
    return result
