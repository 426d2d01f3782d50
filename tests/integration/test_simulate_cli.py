"""``latency-adapter simulate`` run as the real console script.

The same seed gives byte-identical ``--json``; ``--plot`` writes a PNG that matplotlib reads back; a bad
``--traffic`` file exits 2 naming its line. Runs use ``--duration`` to stop 5 minutes after the burst's
step (15 simulated minutes, about a second of work), so the whole module takes a few seconds.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

SCRIPT = Path(sys.executable).with_name("latency-adapter")
SHORT = ["--scenario", "burst", "--duration", "900"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert SCRIPT.exists(), f"{SCRIPT} is missing: install the project in this environment (pip install -e .)"
    return subprocess.run([str(SCRIPT), "simulate", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, check=False)


@pytest.fixture(scope="module")
def burst_json(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any]]:
    result = run(*SHORT, "--seed", "7", "--json", cwd=tmp_path_factory.mktemp("sim"))
    assert result.returncode == 0, result.stderr
    return result.stdout, json.loads(result.stdout)


def test_same_seed_gives_byte_identical_json(burst_json: tuple[str, dict[str, Any]], tmp_path: Path) -> None:
    again = run(*SHORT, "--seed", "7", "--json", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stdout == burst_json[0]
    other = run(*SHORT, "--seed", "8", "--json", cwd=tmp_path)
    assert other.returncode == 0, other.stderr
    assert other.stdout != burst_json[0]


def test_json_document(burst_json: tuple[str, dict[str, Any]]) -> None:
    doc = burst_json[1]
    assert doc["scenario"] == "burst" and doc["seed"] == 7 and doc["slo_seconds"] == 0.42
    assert list(doc["policies"]) == ["cpu", "latency", "dual"]
    for name, figures in doc["policies"].items():
        assert set(figures) == {"slo_violation_minutes", "replica_hours", "first_scale_up_seconds",
                                "max_replicas", "scale_events", "timeouts", "timeline"}, name
        timeline = figures["timeline"]
        assert [p["t"] for p in timeline] == list(range(0, 901, 15))
        assert set(timeline[0]) == {"t", "rps", "replicas", "ready", "p95_seconds"}
        assert timeline[0]["p95_seconds"] is None and timeline[0]["rps"] == 1200
        assert all(p["ready"] <= p["replicas"] for p in timeline)
        assert max(p["replicas"] for p in timeline) == figures["max_replicas"]
        assert figures["first_scale_up_seconds"] is not None
    cpu, dual = doc["policies"]["cpu"], doc["policies"]["dual"]
    assert dual["slo_violation_minutes"] < cpu["slo_violation_minutes"]
    assert dual["timeouts"] < cpu["timeouts"]


def test_plot_is_a_png_matplotlib_reads_back(tmp_path: Path) -> None:
    image = pytest.importorskip("matplotlib.image", reason="matplotlib is in the test extra")
    out = tmp_path / "sim.png"
    result = run(*SHORT, "--plot", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    data = out.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    pixels = image.imread(str(out))
    assert pixels.ndim == 3 and pixels.shape[0] > 300 and pixels.shape[1] > 300
    assert pixels.std() > 0  # not a blank canvas
    assert f"plot written to {out}" in result.stdout


def test_human_output_has_a_table_per_policy(tmp_path: Path) -> None:
    result = run(*SHORT, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for title in ("CPU only (cpu)", "latency only (latency)", "dual-signal (dual)", "comparison",
                  "SLO-violation minutes", "dual-signal avoided"):
        assert title in result.stdout, title
    assert result.stderr == ""  # no progress bar when stderr is not a terminal


def test_traffic_file(tmp_path: Path) -> None:
    path = tmp_path / "load.csv"
    path.write_text("timestamp,rps,extra_latency_seconds\n0,500,0\n120,500,0\n130,2500,0.1\n300,2500,0\n",
                    encoding="utf-8")
    result = run("--traffic", str(path), "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["scenario"] == str(path)
    assert doc["policies"]["cpu"]["timeline"][-1]["t"] == 300


@pytest.mark.parametrize(("text", "line"), [
    ("timestamp,requests\n0,1\n", 1),
    ("timestamp,rps\n0,100\n15,lots\n", 3),
    ("timestamp,rps\n0,100\n15,-3\n", 3),
    ("timestamp,rps\n0,100\n60,100\n30,100\n90,100\n", 4),
])
def test_bad_traffic_file_exits_2_naming_the_line(tmp_path: Path, text: str, line: int) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text, encoding="utf-8")
    result = run("--traffic", str(path), cwd=tmp_path)
    assert result.returncode == 2
    assert f"{path}:{line}:" in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(("args", "words"), [
    (["--scenario", "tsunami"], "invalid choice"),
    ([], "one of the arguments --scenario --traffic is required"),
    (["--scenario", "burst", "--traffic", "x.csv"], "not allowed with"),
    (["--scenario", "burst", "--slo", "0"], "--slo"),
    (["--scenario", "burst", "--duration", "5"], "--duration"),
    (["--scenario", "burst", "--plot", "/nonexistent-dir/x.png"], "does not exist"),
])
def test_bad_arguments_exit_2(tmp_path: Path, args: list[str], words: str) -> None:
    result = run(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert words in result.stderr


def test_bad_config_exits_2_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("simulate: {behavior: {scaleUp: {selectPolicy: Fastest}}}\n", encoding="utf-8")
    result = run(*SHORT, "--config", str(path), cwd=tmp_path)
    assert result.returncode == 2
    assert "simulate.behavior.scaleUp.selectPolicy" in result.stderr
