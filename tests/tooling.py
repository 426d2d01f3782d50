"""Helpers for tests that drive a real external tool (kubectl, prometheus, promtool).

Why a helper: such a test must never pass vacuously in CI. Locally a missing tool is a skip (a developer
without kubectl can still run the suite); in CI (``CI=true``, set by GitHub Actions and most runners) it is
a failure, so a broken image cannot silently turn the live checks off.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess

import pytest


def require_tool(name: str) -> str:
    """Return the path of executable ``name`` on ``PATH``; fail in CI, skip elsewhere, when it is missing."""
    path = shutil.which(name)
    if path is not None:
        return path
    message = f"{name!r} is not installed or not on PATH"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message}; CI must provide it", pytrace=False)
    pytest.skip(message)


def terminate(proc: subprocess.Popen[bytes] | subprocess.Popen[str], timeout: float) -> int:
    """Stop a server process the way a supervisor does: SIGTERM, then SIGKILL after ``timeout``."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
    return proc.returncode
