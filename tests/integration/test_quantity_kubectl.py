"""The real ``kubectl`` as a Go ``resource.Quantity`` parser: what we serve, and our model of Go.

``kubectl set resources --local`` decodes a manifest into typed objects (``resource.ParseQuantity`` on every
limit), applies the change and prints the objects back, with each quantity as ``Quantity.String()``. It needs
no cluster, so it is an offline oracle for two questions:

* does Go accept every string :func:`adapter.quantity.format_quantity` produces, and read back the value we
  meant (checked through :func:`adapter.quantity.milli_value`, what the HPA compares)?
* does :func:`adapter.quantity.canonical_quantity` predict Go's output, quirks included?

One manifest holds one container per value, so each check is a single kubectl run.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from adapter.quantity import canonical_quantity, format_quantity, milli_value, parse_quantity
from tests.tooling import require_tool

pytestmark = pytest.mark.needs_kubectl

FIXTURE = Path(__file__).parents[1] / "fixtures" / "quantity-cases.json"

#: Values like the ones the adapter serves: latencies (s), request rates (1/s), ratios, and edges.
SERVED_VALUES = [
    # latencies
    0.000173,
    0.0000002,
    0.00098765,
    0.0801,
    0.2143,
    0.214,
    0.25,
    1.1,
    3.0,
    42.5,
    12345.678,
    # request rates
    1 / 60,
    57.333333333333336,
    1234.5678901,
    98765.4321,
    250000.0,
    # ratios
    0.75,
    4 / 3,
    0.999999,
    1.0000004,
    2 / 3,
    # edges
    0.0,
    -0.25,
    1 / 128,  # an exact micro tie
    4503599627.3705,  # where the exact integer route takes over
    999999999999.999,
    1e12,
]

#: Inputs on which Go does something surprising; canonical_quantity must predict each one.
GO_QUIRKS = [
    "+1", "01", "1.", "1e3", "1E", "1e+3", "1.Ki", "1.5e2", "15e-1", "1.0e21", "1e-10", "-1e-10",
    "1000E", "10000E", "100E", "1e2147483647", "10e2147483647", "1e-2147483649", ".", "-", "k", "Ki",
    "e3", "0Ei", "00.5", "1.5Ki", "0.5Ki", "1.1Ki", "1024Mi", "123456Gi", "8Ei", "-8Ei", "7Ei",
    "0.0001Ki", "99999999999999999999", "100000000000000000000", "-0.0000000005",
]


@pytest.fixture(scope="module")
def kubectl() -> str:
    return require_tool("kubectl")


def write_back(kubectl: str, tmp_path: Path, cpu_limits: Sequence[str]) -> subprocess.CompletedProcess[str]:
    """Run ``kubectl set resources --local`` on a Pod with one container per CPU limit."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "quantities"},
        "spec": {
            "containers": [
                {"name": f"c{i}", "image": "example.invalid/app", "resources": {"limits": {"cpu": limit}}}
                for i, limit in enumerate(cpu_limits)
            ]
        },
    }
    manifest = tmp_path / "pod.json"
    manifest.write_text(json.dumps(pod), encoding="utf-8")
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.touch()  # empty: --local must not need a cluster, and must not read the real one
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    env["HOME"] = str(tmp_path)  # keep kubectl's cache out of the real home
    return subprocess.run(
        [kubectl, "set", "resources", "--local", "-f", str(manifest), "--requests=memory=1Mi", "-o", "json",
         "--kubeconfig", str(kubeconfig)],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )


def cpu_limits_written_back(kubectl: str, tmp_path: Path, cpu_limits: Sequence[str]) -> list[str]:
    result = write_back(kubectl, tmp_path, cpu_limits)
    assert result.returncode == 0, f"kubectl failed ({result.returncode}): {result.stderr}"
    pod: dict[str, Any] = json.loads(result.stdout)
    containers = pod["spec"]["containers"]
    assert [c["name"] for c in containers] == [f"c{i}" for i in range(len(cpu_limits))]
    for container in containers:  # the flag really went through Go's parser and printer too
        assert container["resources"]["requests"] == {"memory": "1Mi"}, container
    return [c["resources"]["limits"]["cpu"] for c in containers]


def test_kubectl_reads_what_we_serve(kubectl: str, tmp_path: Path) -> None:
    ours = [format_quantity(v) for v in SERVED_VALUES]
    theirs = cpu_limits_written_back(kubectl, tmp_path, ours)
    for value, served, written in zip(SERVED_VALUES, ours, theirs, strict=True):
        what = f"value {value!r} served as {served!r}, kubectl wrote {written!r}"
        assert written == canonical_quantity(served), what
        assert parse_quantity(written) == parse_quantity(served), what
        # What the HPA reads: ceil(value * 1000), where value is ours rounded to micro (nano below 1e-3).
        unit = 10**9 if 0 < abs(value) < 1e-3 else 10**6
        rounded = Fraction(round(Fraction(value) * unit), unit)
        millis = rounded * 1000
        expected = math.ceil(millis) if millis >= 0 else -math.ceil(-millis)  # Go rounds away from zero
        assert milli_value(written) == expected, what
        assert abs(milli_value(written) - value * 1000) < 1 + 1e-9 * max(1.0, abs(value)), what


def test_kubectl_writes_back_our_canonical_form(kubectl: str, tmp_path: Path) -> None:
    theirs = cpu_limits_written_back(kubectl, tmp_path, GO_QUIRKS)
    ours = [canonical_quantity(text) for text in GO_QUIRKS]
    mismatches = [(t, o, w) for t, o, w in zip(GO_QUIRKS, ours, theirs, strict=True) if o != w]
    assert not mismatches, "(input, ours, kubectl's): " + repr(mismatches)


def test_fixture_is_what_kubectl_does(kubectl: str, tmp_path: Path) -> None:
    """The unit tests trust tests/fixtures/quantity-cases.json; check it against this kubectl."""
    cases = json.loads(FIXTURE.read_text(encoding="utf-8"))["cases"]
    accepted = [c for c in cases if c["kubectl_canonical"] is not None]
    theirs = cpu_limits_written_back(kubectl, tmp_path, [c["input"] for c in accepted])
    assert [c["kubectl_canonical"] for c in accepted] == theirs
    for case in cases:
        if case["kubectl_canonical"] is None:
            result = write_back(kubectl, tmp_path, [case["input"]])
            assert result.returncode != 0, f"kubectl accepted {case['input']!r}: {result.stdout[:500]}"
            assert "quantit" in result.stderr, result.stderr  # a quantity error, not some other failure
            with pytest.raises(ValueError):
                parse_quantity(case["input"])
