"""Traffic profiles: the built-in scenarios and ``--traffic FILE``.

A profile is a list of points ``(t, rps, extra_latency_seconds)``, linear in between; the run lasts until
the last point. ``extra_latency_seconds`` is added to every request's dependency delay (a slow
downstream), independent of the pod count.

The scenarios (every one starts with 10 minutes of steady load, so each policy settles first):

* ``burst``: 1,200 requests/s, then 9,800 (x8) within 10 s for 10 minutes, then 1,200 again; 40 min.
* ``diurnal``: one day, from 600 requests/s at night to 4,800 at midday (a cosine), with +-3 % noise
  every 5 minutes drawn from the seed.
* ``dependency-slowdown``: 2,000 requests/s throughout; a downstream adds 300 ms to every request for
  10 minutes (within 1 s); 40 min.
* ``cpu-bound``: CPU-heavy requests (20 ms of CPU, 2 workers a pod): 300 requests/s, then 1,200 within
  60 s for 15 minutes, then 300 again; 40 min.

The CSV format: a header ``timestamp,rps`` or ``timestamp,rps,extra_latency_seconds`` (any order), then
one row per point: seconds from the start (strictly ascending, at most 7 days), requests per second
(a finite number >= 0) and optionally the extra latency in seconds (>= 0, default 0). Blank lines and
lines starting with ``#`` are skipped. Every error names the file and the line.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from . import SCENARIO_NAMES
from .workload import CPU_BOUND, DEFAULT_WORKLOAD, WorkloadModel

FloatArray = npt.NDArray[np.float64]

#: Longest profile accepted: the simulator steps every second.
MAX_DURATION_SECONDS = 7 * 86_400
#: A profile shorter than one HPA sync period has nothing to show.
MIN_DURATION_SECONDS = 15.0
#: Relative change of the request rate (and absolute change of the extra latency) that counts as
#: "the load changed" for ``first_scale_up_seconds``.
CHANGE_RPS_FRACTION = 0.01
CHANGE_EXTRA_SECONDS = 0.001
COLUMNS = ("timestamp", "rps", "extra_latency_seconds")


class TrafficError(ValueError):
    """A bad ``--traffic`` file; ``str()`` is ``FILE:LINE: problem`` (line omitted when not one line's)."""

    def __init__(self, path: Path | str, line: int | None, problem: str) -> None:
        self.path = str(path)
        self.line = line
        self.problem = problem
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {problem}")


@dataclass(frozen=True)
class Traffic:
    """A load profile and the workload that serves it."""

    name: str
    times: FloatArray
    rps: FloatArray
    extra_latency: FloatArray
    workload: WorkloadModel = DEFAULT_WORKLOAD
    description: str = ""

    @property
    def duration(self) -> float:
        return float(self.times[-1])

    def rps_at(self, t: FloatArray) -> FloatArray:
        return np.interp(t, self.times, self.rps)

    def extra_at(self, t: FloatArray) -> FloatArray:
        return np.interp(t, self.times, self.extra_latency)

    def change_at(self) -> float | None:
        """When the load first departs from where it starts: the last point before the first point that
        differs (by more than 1 % of the rate or 1 ms of extra latency), or ``None`` if none does."""
        rps0, extra0 = float(self.rps[0]), float(self.extra_latency[0])
        for i in range(1, self.times.shape[0]):
            moved_rps = abs(float(self.rps[i]) - rps0) > CHANGE_RPS_FRACTION * max(rps0, 1.0)
            moved_extra = abs(float(self.extra_latency[i]) - extra0) > CHANGE_EXTRA_SECONDS
            if moved_rps or moved_extra:
                return float(self.times[i - 1])
        return None

    def truncated(self, duration: float) -> Traffic:
        """The first ``duration`` seconds (the profile's own points plus one at the cut)."""
        if duration >= self.duration:
            return self
        keep = self.times < duration
        times = np.append(self.times[keep], duration)
        rps = np.append(self.rps[keep], self.rps_at(np.array([duration]))[0])
        extra = np.append(self.extra_latency[keep], self.extra_at(np.array([duration]))[0])
        return Traffic(self.name, times, rps, extra, self.workload, self.description)


def _profile(name: str, points: Sequence[tuple[float, float, float]], workload: WorkloadModel,
             description: str) -> Traffic:
    arr = np.asarray(points, dtype=np.float64)
    return Traffic(name, arr[:, 0].copy(), arr[:, 1].copy(), arr[:, 2].copy(), workload, description)


def burst(seed: int) -> Traffic:
    del seed
    return _profile("burst", [
        (0, 1200, 0), (600, 1200, 0), (610, 9800, 0), (1200, 9800, 0), (1210, 1200, 0), (2400, 1200, 0),
    ], DEFAULT_WORKLOAD, "1,200 -> 9,800 requests/s (x8) within 10 s at 10 min, for 10 min")


def diurnal(seed: int) -> Traffic:
    rng = np.random.default_rng([seed, 7])  # its own stream: the same day for every policy
    times = np.arange(0.0, 86_400.0 + 1.0, 300.0)
    shape = (1.0 - np.cos(2.0 * math.pi * times / 86_400.0)) / 2.0
    noise = 1.0 + rng.uniform(-0.03, 0.03, times.shape[0])
    noise[:3] = 1.0  # the first 10 minutes steady, like every scenario
    rps = (600.0 + 4200.0 * shape) * noise
    rps[:3] = 600.0
    return Traffic("diurnal", times, rps, np.zeros_like(times), DEFAULT_WORKLOAD,
                   "one day: 600 requests/s at night, 4,800 at midday, +-3 % noise every 5 min")


def dependency_slowdown(seed: int) -> Traffic:
    del seed
    return _profile("dependency-slowdown", [
        (0, 2000, 0), (600, 2000, 0), (601, 2000, 0.3), (1200, 2000, 0.3), (1201, 2000, 0), (2400, 2000, 0),
    ], DEFAULT_WORKLOAD, "2,000 requests/s; a downstream adds 300 ms for 10 min at 10 min")


def cpu_bound(seed: int) -> Traffic:
    del seed
    return _profile("cpu-bound", [
        (0, 300, 0), (600, 300, 0), (660, 1200, 0), (1500, 1200, 0), (1560, 300, 0), (2400, 300, 0),
    ], CPU_BOUND, "CPU-heavy requests: 300 -> 1,200 requests/s within 60 s at 10 min, for 15 min")


SCENARIOS: dict[str, Callable[[int], Traffic]] = {
    "burst": burst,
    "diurnal": diurnal,
    "dependency-slowdown": dependency_slowdown,
    "cpu-bound": cpu_bound,
}


# -- CSV ----------------------------------------------------------------------------------------------------


def _number(path: Path | str, line: int, column: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise TrafficError(path, line, f"{column} {text!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise TrafficError(path, line, f"{column} must be a finite number >= 0, got {text!r}")
    return value


def _header(path: Path | str, line: int, row: list[str]) -> dict[str, int]:
    names = [c.strip().lower() for c in row]
    expected = "expected the header timestamp,rps[,extra_latency_seconds]"
    unknown = [n for n in names if n not in COLUMNS]
    if unknown:
        raise TrafficError(path, line, f"unknown column {unknown[0]!r}; {expected}")
    for required in COLUMNS[:2]:
        if required not in names:
            raise TrafficError(path, line, f"missing column {required!r}; {expected}")
    if len(set(names)) != len(names):
        raise TrafficError(path, line, f"a column appears twice; {expected}")
    return {name: i for i, name in enumerate(names)}


def parse_traffic(text: str, path: Path | str = "<traffic>") -> Traffic:
    """A profile from CSV text; raises :class:`TrafficError` naming the line of the first problem."""
    columns: dict[str, int] | None = None
    points: list[tuple[float, float, float]] = []
    last_line = 0
    for number, raw in enumerate(io.StringIO(text), start=1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        last_line = number
        row = next(csv.reader([stripped]))
        if columns is None:
            columns = _header(path, number, row)
            continue
        if len(row) != len(columns):
            raise TrafficError(path, number, f"expected {len(columns)} fields "
                               f"({','.join(sorted(columns, key=columns.__getitem__))}), got {len(row)}")
        t = _number(path, number, "timestamp", row[columns["timestamp"]].strip())
        rps = _number(path, number, "rps", row[columns["rps"]].strip())
        extra_col = columns.get("extra_latency_seconds")
        extra = 0.0 if extra_col is None else _number(path, number, "extra_latency_seconds",
                                                        row[extra_col].strip())
        if points and t <= points[-1][0]:
            raise TrafficError(path, number, f"timestamp {t:g} is not after the previous row's "
                               f"{points[-1][0]:g}: timestamps must be in ascending order")
        if t > MAX_DURATION_SECONDS:
            raise TrafficError(path, number, f"timestamp {t:g} is beyond {MAX_DURATION_SECONDS} s (7 days)")
        points.append((t, rps, extra))
    if columns is None:
        raise TrafficError(path, 1, "empty file; expected the header timestamp,rps[,extra_latency_seconds]")
    if not points or points[-1][0] < MIN_DURATION_SECONDS:
        covered = points[-1][0] if points else 0.0
        raise TrafficError(path, last_line, f"the rows cover {covered:g} s; at least "
                           f"{MIN_DURATION_SECONDS:g} s (one HPA sync period) are needed")
    name = Path(str(path)).name
    return _profile(name, points, DEFAULT_WORKLOAD, f"from {name}: {len(points)} rows")


def load_traffic(path: Path) -> Traffic:
    """Read and parse a ``--traffic`` file; raises :class:`TrafficError`."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TrafficError(path, None, f"cannot be read: {exc.strerror or exc}") from exc
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise TrafficError(path, line, f"is not UTF-8 text: {exc.reason}") from exc
    return parse_traffic(text, path)


def scenario(name: str, seed: int) -> Traffic:
    try:
        return SCENARIOS[name](seed)
    except KeyError:
        raise ValueError(f"unknown scenario {name!r}; choose from {', '.join(SCENARIOS)}") from None


def describe(traffic: Traffic) -> dict[str, Any]:
    return {"name": traffic.name, "duration_seconds": traffic.duration, "description": traffic.description}


assert tuple(SCENARIOS) == SCENARIO_NAMES, "adapter.simulate.SCENARIO_NAMES must list every scenario"
