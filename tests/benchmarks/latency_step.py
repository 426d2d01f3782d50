"""How fast a latency step shows in the served p95, beside an ideal sliding window.

Steady traffic (200 requests/s, lognormal sigma 0.6) at a median of 80 ms fills a full window, then the
median steps to 400 ms. An injected clock moves in 0.1 s ticks; every tick adds that tick's requests
through ``WindowStore.add_durations`` and reads the served p95 through
``MetricsProvider.reading(..., "latency_p95_seconds", ...)``. The figure is the time from the step until
the served p95 first reaches 240 ms (the midpoint, in log terms near the geometric mean).

The step lands at several phases within a slice (the store only publishes closed slices, so the phase
matters); the worst phase is the figure. Baseline, same samples: the exact p95 of an ideal continuous
60 s sliding window (``numpy.percentile`` over every request of the last 60 s at every tick), i.e. the
delay inherent to a 60 s p95, with no slicing.

Goal (DESIGN section 8): within one slice (5 s).
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np

from adapter.model import SeriesKey
from adapter.provider import MetricsProvider
from adapter.selector import parse_selector
from adapter.store import WindowStore

from . import Row, print_table

RATE = 200
TICK = 0.1
BEFORE, AFTER, SIGMA = 0.080, 0.400, 0.6
THRESHOLD = 0.240
WARMUP_SECONDS = 70.0
MAX_WAIT = 30.0
PHASES = (0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 4.9)
T0 = 1_000_000.0  # a slice boundary


def one_step(phase: float, seed: int) -> tuple[float, float, int]:
    """(served delay, ideal sliding-window delay, slice seconds) for a step ``phase`` s into a slice."""
    rng = np.random.default_rng(seed)
    store = WindowStore()
    slice_seconds = store.settings.slice_seconds
    window_seconds = store.settings.window_seconds
    clock = [T0]
    provider = MetricsProvider(store, lambda: clock[0])
    key = SeriesKey("bench", "checkout")
    selector = parse_selector("workload=checkout")
    per_tick = round(RATE * TICK)
    window_ticks = round(window_seconds / TICK)
    recent: deque[np.ndarray] = deque(maxlen=window_ticks)
    t_step = T0 + WARMUP_SECONDS + phase
    served = ideal = math.nan
    k = 0
    while True:
        k += 1
        now = T0 + k * TICK
        clock[0] = now
        median = AFTER if now > t_step + 1e-9 else BEFORE
        batch = rng.lognormal(math.log(median), SIGMA, per_tick)
        store.add_durations(key, batch, 0, (), now)
        recent.append(batch)
        if now <= t_step:
            continue
        if math.isnan(served):
            value = provider.reading("bench", "latency_p95_seconds", selector).value
            if value >= THRESHOLD:
                served = now - t_step
        if math.isnan(ideal) and float(np.percentile(np.concatenate(recent), 95)) >= THRESHOLD:
            ideal = now - t_step
        if not (math.isnan(served) or math.isnan(ideal)) or now - t_step > MAX_WAIT:
            return served, ideal, slice_seconds


def run() -> list[Row]:
    rows = []
    served_all, ideal_all = [], []
    slice_seconds = 5
    for n, phase in enumerate(PHASES):
        served, ideal, slice_seconds = one_step(phase, seed=100 + n)
        served_all.append(served)
        ideal_all.append(ideal)
        ok = served <= slice_seconds
        rows.append([f"{phase:.1f}", f"{served:.1f}", f"{ideal:.1f}", f"<= {slice_seconds}",
                     "yes" if ok else "NO"])
    print_table(
        f"latency step {BEFORE * 1e3:.0f} ms -> {AFTER * 1e3:.0f} ms (lognormal sigma {SIGMA}, {RATE} req/s, "
        f"clock ticks {TICK} s): seconds until the served p95 reaches {THRESHOLD * 1e3:.0f} ms",
        ["step at s into slice", "served (s)", "ideal 60s sliding window (s)", "goal", "met?"],
        rows,
    )
    worst = max(served_all)
    mean = float(np.mean(served_all))
    worst_ideal = max(ideal_all)
    met = worst <= slice_seconds
    print(f"  goal within one slice ({slice_seconds} s): {'met' if met else 'NOT met'} (worst {worst:.1f} s, "
          f"mean {mean:.1f} s over step phases; ideal sliding window worst {worst_ideal:.1f} s)")
    return [Row("latency step: s to served p95", f"worst {worst:.1f} s, mean {mean:.1f} s",
                f"ideal window {worst_ideal:.1f} s", f"<= {slice_seconds} s", met)]


if __name__ == "__main__":
    run()
