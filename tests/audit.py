"""Known vulnerabilities in the installed dependencies (``make lint``): ``python -m tests.audit``.

Runs ``pip-audit`` on the project's environment (the interpreter running this module, or ``.venv`` when
that interpreter is not a virtual environment), skipping the editable project itself, and prints every
known vulnerability: package, installed version, advisory id (and aliases) and the versions that fix it.

Exit status: 1 only when at least one vulnerability has a fix available (upgrade the package). A
vulnerability without a fix is reported and does not fail lint (there is nothing to do yet), and neither
does an unreachable vulnerability service: lint must not fail, or hang, because of the network.

Why a probe first: pip-audit asks its service once per package (about 100 here) and, when the service is
unreachable, reports every package as "could not be audited" only after asking about each one. A mirror
that serves only the package index (``/simple``) answers 404 to PyPI's per-release JSON API, which
pip-audit reads as "Dependency not found on PyPI" for every package, after several seconds. So one request
per service (a release every index has: pip 24.0) decides first, within ``--timeout`` seconds; when no
service answers, one line says how many packages could not be audited and why.

Services (``--service``): ``pypi`` (PyPI's JSON API, pip-audit's default), ``osv`` (the OSV API, or
``--osv-url``), or ``auto`` (the default): the first of pypi, osv that answers.

``--from-json FILE`` reports an existing ``pip-audit -f json`` output instead (no network).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PYPI_PROBE_URL = "https://pypi.org/pypi/pip/24.0/json"  # the URL pip-audit builds, for a known release
DEFAULT_OSV_URL = "https://api.osv.dev/v1/query"
PROBE_PACKAGE = {"name": "pip", "ecosystem": "PyPI"}
PROBE_VERSION = "24.0"
SERVICES = ("pypi", "osv")
#: Seconds pip-audit may run in total once a service answered (about 100 sequential requests).
DEFAULT_DEADLINE = 300.0

# The inventory, run in the audited interpreter: what pip-audit audits (pip's view: site directories),
# less editable installs (``--skip-editable``).
_INVENTORY = r"""
import importlib.metadata as md, json, re, sys
paths = [p for p in sys.path if p.rstrip("/").endswith(("site-packages", "dist-packages"))]
seen, out = set(), []
for dist in md.distributions(path=paths):
    name = dist.metadata["Name"] or ""
    key = re.sub(r"[-_.]+", "-", name).lower()
    if not key or key in seen:
        continue
    seen.add(key)
    direct = dist.read_text("direct_url.json")
    if direct and json.loads(direct).get("dir_info", {}).get("editable"):
        continue
    out.append([name, dist.version])
print(json.dumps(sorted(out, key=lambda item: item[0].lower())))
"""


# --------------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Vulnerability:
    package: str
    version: str
    id: str
    aliases: tuple[str, ...]
    fix_versions: tuple[str, ...]
    description: str

    def line(self) -> str:
        ids = self.id + (f" ({', '.join(self.aliases)})" if self.aliases else "")
        fix = f"fixed in {', '.join(self.fix_versions)}" if self.fix_versions else "no fix released yet"
        text = " ".join(self.description.split())
        if len(text) > 100:
            text = text[:97] + "..."
        return f"  {self.package} {self.version}: {ids}: {fix}" + (f" -- {text}" if text else "")


@dataclass
class AuditResult:
    service: str
    audited: int = 0
    vulnerabilities: list[Vulnerability] = field(default_factory=list)
    #: skip reason -> packages ("name version")
    skipped: dict[str, list[str]] = field(default_factory=dict)

    @property
    def fixable(self) -> list[Vulnerability]:
        return [v for v in self.vulnerabilities if v.fix_versions]


def parse_pip_audit_json(doc: Any, service: str) -> AuditResult:
    """The :class:`AuditResult` of ``pip-audit -f json`` output (a dict with ``dependencies``)."""
    if not isinstance(doc, dict) or not isinstance(doc.get("dependencies"), list):
        raise ValueError("not pip-audit JSON output (no 'dependencies' list)")
    result = AuditResult(service)
    for dep in doc["dependencies"]:
        name, version = str(dep.get("name", "?")), str(dep.get("version", ""))
        reason = dep.get("skip_reason")
        if reason and "editable" in str(reason):
            continue  # --skip-editable: the project itself, on purpose
        if reason:
            result.skipped.setdefault(_reason_class(str(reason)), []).append(f"{name} {version}".strip())
            continue
        result.audited += 1
        for vuln in dep.get("vulns") or ():
            result.vulnerabilities.append(Vulnerability(
                package=name, version=version, id=str(vuln.get("id", "?")),
                aliases=tuple(str(a) for a in vuln.get("aliases") or ()),
                fix_versions=tuple(str(v) for v in vuln.get("fix_versions") or ()),
                description=str(vuln.get("description") or "")))
    return result


def _reason_class(reason: str) -> str:
    """A skip reason without the package, so equal reasons group: "Dependency not found on PyPI ..."."""
    return reason.split(":", 1)[0].strip() if ":" in reason else reason.strip()


def report(result: AuditResult, out: Any = sys.stdout) -> int:
    """Print the findings; the exit status: 1 when a vulnerability has a fix, else 0."""
    vulns = result.vulnerabilities
    packages = sorted({v.package for v in vulns})
    skipped = sum(len(v) for v in result.skipped.values())
    head = f"pip-audit ({result.service}): {result.audited} packages audited"
    if vulns:
        print(f"{head}, {len(vulns)} known vulnerabilit{'y' if len(vulns) == 1 else 'ies'} in "
              f"{len(packages)} package{'' if len(packages) == 1 else 's'}:", file=out)
        for vuln in sorted(vulns, key=lambda v: (v.package.lower(), v.id)):
            print(vuln.line(), file=out)
    else:
        print(f"{head}, no known vulnerabilities", file=out)
    for reason, names in sorted(result.skipped.items()):
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        print(f"pip-audit ({result.service}): {len(names)} package{'' if len(names) == 1 else 's'} could "
              f"not be audited: {reason} ({shown})", file=out)
    if skipped and not result.audited:
        print("pip-audit: nothing was audited; not a lint failure", file=out)
    fixable = result.fixable
    if fixable:
        upgrades = sorted({f"{v.package}>={v.fix_versions[0]}" for v in fixable})
        print(f"FAIL: {len(fixable)} vulnerabilit{'y has' if len(fixable) == 1 else 'ies have'} a fix: "
              f"upgrade {', '.join(upgrades)}", file=out)
        return 1
    if vulns:
        print("no fix is available for any of them yet: reported, not a lint failure", file=out)
    return 0


# --------------------------------------------------------------------------------------------- services


def _short_error(exc: BaseException) -> str:
    """One line about a failed request: DNS, refused, timeout, TLS; no traceback."""
    text = str(exc)
    for pattern, say in ((r"Name or service not known|Failed to resolve|getaddrinfo failed|"
                          r"Temporary failure in name resolution|nodename nor servname", "cannot resolve"),
                         (r"Connection refused", "connection refused"),
                         (r"timed out|Timeout", "no answer in time"),
                         (r"CERTIFICATE_VERIFY_FAILED|SSLError", "TLS failure"),
                         (r"Network is unreachable|No route to host", "network unreachable")):
        if re.search(pattern, text):
            return say
    return type(exc).__name__


def probe(service: str, timeout: float, osv_url: str = DEFAULT_OSV_URL) -> str | None:
    """None when ``service`` answers the way pip-audit needs; else why not (one phrase)."""
    import requests  # pip-audit's own HTTP client (same proxies and CA bundle); imported only when probing

    try:
        if service == "pypi":
            url = PYPI_PROBE_URL
            resp = requests.get(url, timeout=timeout, allow_redirects=False)
        else:
            url = osv_url
            resp = requests.post(url, data=json.dumps({"package": PROBE_PACKAGE, "version": PROBE_VERSION}),
                                 timeout=timeout, allow_redirects=False)
    except requests.RequestException as exc:
        host = re.sub(r"^\w+://([^/]+).*$", r"\1", url)
        return f"{host}: {_short_error(exc)}"
    if resp.status_code != 200:
        what = "PyPI's per-release JSON API" if service == "pypi" else "the OSV API"
        hint = " (only a package index mirror answers here?)" if service == "pypi" and \
            resp.status_code == 404 else ""
        return f"{what} answered HTTP {resp.status_code} for a known release, {url}{hint}"
    try:
        body = resp.json()
    except ValueError:
        return f"{url} answered 200 without JSON"
    if not isinstance(body, dict) or (service == "pypi" and "info" not in body):
        return f"{url} answered JSON that is not what pip-audit expects"
    return None


def choose_service(services: Sequence[str], timeout: float, osv_url: str) -> tuple[str | None, list[str]]:
    """The first of ``services`` that answers, and why each one before it did not.

    The probes run concurrently in daemon threads, each bounded as a whole (a service trickling bytes
    cannot hold a probe past ``2 * timeout + 1`` seconds, nor the process's exit).
    """
    answers: dict[str, str | None] = {}

    def run(service: str) -> None:
        try:
            answers[service] = probe(service, timeout, osv_url)
        except Exception as exc:  # a probe must not crash lint
            answers[service] = f"probe failed ({type(exc).__name__}: {exc})"

    threads = {s: threading.Thread(target=run, args=(s,), daemon=True) for s in services}
    for thread in threads.values():
        thread.start()
    deadline = time.monotonic() + 2 * timeout + 1
    reasons: list[str] = []
    for service in services:
        threads[service].join(max(0.0, deadline - time.monotonic()))
        why = answers.get(service, f"no answer within {2 * timeout + 1:g}s")
        if why is None:
            return service, reasons
        reasons.append(f"{service}: {why}")
    return None, reasons


# --------------------------------------------------------------------------------------------- environment


def audited_python(explicit: str | None) -> str:
    """The interpreter whose packages are audited: ``--python``, else this one when it is a virtual
    environment, else the repository's ``.venv``."""
    if explicit:
        return explicit
    venv = REPO / ".venv" / "bin" / "python"
    if sys.prefix == sys.base_prefix and venv.exists():
        return str(venv)
    return sys.executable


def inventory(python: str, timeout: float = 60.0) -> list[tuple[str, str]]:
    """``(name, version)`` of every installed distribution pip-audit would audit (editable ones left out)."""
    out = subprocess.run([python, "-c", _INVENTORY], capture_output=True, text=True, timeout=timeout,
                         check=True, stdin=subprocess.DEVNULL).stdout
    return [(str(n), str(v)) for n, v in json.loads(out)]


def run_pip_audit(python: str, service: str, timeout: float, deadline: float,
                  osv_url: str) -> tuple[AuditResult | None, str]:
    """Run pip-audit; ``(result, "")`` or ``(None, why it gave no result)``. Never raises, never hangs."""
    with tempfile.TemporaryDirectory(prefix="pip-audit-") as tmp:
        output = Path(tmp) / "audit.json"
        cmd = [python, "-m", "pip_audit", "--skip-editable", "--vulnerability-service", service,
               "--format", "json", "--output", str(output), "--progress-spinner", "off",
               "--timeout", str(max(1, round(timeout))), "--aliases", "on", "--desc", "on"]
        if service == "osv":
            cmd += ["--osv-url", osv_url]
        env = {**os.environ, "PIPAPI_PYTHON_LOCATION": python}
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=deadline, env=env,
                                  stdin=subprocess.DEVNULL, cwd=tmp)
        except subprocess.TimeoutExpired:
            return None, f"pip-audit did not finish within {deadline:g}s (killed)"
        except OSError as exc:
            return None, f"cannot run {python}: {exc}"
        try:
            doc = json.loads(output.read_text(encoding="utf-8"))
            return parse_pip_audit_json(doc, service), ""
        except (OSError, ValueError):
            lines = [line.strip() for line in proc.stderr.splitlines() if line.strip()]
            last = lines[-1] if lines else f"exit status {proc.returncode}, no output"
            if "No module named pip_audit" in proc.stderr:
                last = f"pip-audit is not installed for {python} (install the project's test extra)"
            return None, last[:300]


# --------------------------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.audit", description=__doc__.split("\n\n")[0])
    parser.add_argument("--service", choices=("auto", *SERVICES), default="auto",
                        help="vulnerability service (auto: the first of pypi, osv that answers)")
    parser.add_argument("--osv-url", default=DEFAULT_OSV_URL, help="the OSV query endpoint")
    parser.add_argument("--timeout", type=float, default=5.0,
                        help="seconds to wait for a service's answer (probe and each pip-audit request)")
    parser.add_argument("--deadline", type=float, default=DEFAULT_DEADLINE,
                        help="seconds pip-audit may run in total")
    parser.add_argument("--python", help="the interpreter whose packages are audited (default: see above)")
    parser.add_argument("--from-json", type=Path, help="report this pip-audit JSON output (no network)")
    args = parser.parse_args(argv)
    started = time.monotonic()

    if args.from_json is not None:
        return report(parse_pip_audit_json(json.loads(args.from_json.read_text(encoding="utf-8")), "file"))

    python = audited_python(args.python)
    try:
        packages = inventory(python)
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        print(f"pip-audit: not run: cannot list the packages of {python} ({exc})")
        return 0
    try:
        import requests  # noqa: F401 - pip-audit's HTTP client, the probes use it too
    except ImportError:
        print(f"pip-audit: not run: pip-audit is not installed for {sys.executable} (install the project's "
              "test extra: pip install -e '.[test]')")
        return 0
    services = SERVICES if args.service == "auto" else (args.service,)
    service, reasons = choose_service(services, args.timeout, args.osv_url)
    if service is None:
        print(f"pip-audit: {len(packages)} installed packages could not be audited: no vulnerability "
              f"service reachable ({'; '.join(reasons)}); not a lint failure "
              f"[{time.monotonic() - started:.1f}s]")
        return 0
    result, why = run_pip_audit(python, service, args.timeout, args.deadline, args.osv_url)
    if result is None:
        print(f"pip-audit ({service}): {len(packages)} installed packages could not be audited: {why}; "
              "not a lint failure")
        return 0
    for reason in reasons:
        print(f"pip-audit: skipped {reason}")
    status = report(result)
    print(f"[{time.monotonic() - started:.1f}s]")
    return status


if __name__ == "__main__":
    sys.exit(main())
