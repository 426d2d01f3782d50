"""Bytes per active series after a full window (60 s of 5 s slices), beside the 64 KiB goal.

``N`` series each get ~100 requests/s for 70 simulated seconds through ``WindowStore.add_durations`` with
an injected clock (a batch every 0.5 s, with 5 exemplar candidates a batch as the OTLP ingestor passes
them), so every series holds a full window of closed slices plus the open one. Two measures:

- ``store.nbytes() / len(store)``: the store's own estimate (what ``/metrics`` exports);
- tracemalloc: every byte allocated and still live after building the store (numpy buffers included),
  from a snapshot difference, divided by the number of series. This is the honest figure.

Data: lognormal(median 80 ms, sigma 0.6) and a wide bimodal distribution (10 ms and 2 s modes), which
spreads each sketch over many more bins. Baseline, same run: the same windows built from the stock
``ddsketch.DDSketch`` (``DenseStore`` of Python floats), twelve closed slices plus the open one plus a
merged window per series, sketches only (no candidates).
"""

from __future__ import annotations

import gc
import sys
import tracemalloc

import numpy as np
from ddsketch import DDSketch

from adapter.model import Exemplar, SeriesKey
from adapter.sketch import DEFAULT_RELATIVE_ACCURACY
from adapter.store import WindowStore
from tests.distributions import Generator as Draw
from tests.distributions import bimodal_wide, lognormal

from . import Row, print_table

N_SERIES = 200
N_BASELINE = 40
RATE = 100  # requests per second per series
SECONDS = 70
STEP = 0.5
CANDIDATES_PER_BATCH = 5
GOAL = 64 * 1024
T0 = 1_000_000.0  # a slice boundary







def _batches(draw: Draw, seed: int, n_series: int) -> list[tuple[float, int, np.ndarray]]:
    """(time, series index, latencies) for every batch, in time order."""
    rng = np.random.default_rng(seed)
    per_batch = int(RATE * STEP)
    out = []
    steps = int(SECONDS / STEP)
    for step in range(steps):
        now = T0 + step * STEP
        for i in range(n_series):
            out.append((now + i * STEP / n_series, i, draw(rng, per_batch)))
    return out


def build_store(draw: Draw, seed: int) -> tuple[WindowStore, int]:
    """Feed the store and return it with the tracemalloc bytes it holds (data generation excluded)."""
    batches = _batches(draw, seed, N_SERIES)
    rng = np.random.default_rng(seed + 1)
    trace_ids = [rng.bytes(16).hex() for _ in range(64)]
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    store = WindowStore()
    keys = [SeriesKey("bench", f"workload-{i:03d}", f"route_{i % 7}") for i in range(N_SERIES)]
    for k, (now, i, seconds) in enumerate(batches):
        top = np.sort(seconds)[-CANDIDATES_PER_BATCH:]
        # fresh str objects, as ``bytes.hex()`` in the ingestor makes them
        candidates = [Exemplar(float(s), trace_ids[(k + j) % 64][:31] + "0123456789abcdef"[j])
                      for j, s in enumerate(top)]
        store.add_durations(keys[i], seconds, 0, candidates, now)
    del batches, candidates, top, seconds
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    held = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    return store, held


def build_baseline(draw: Draw, seed: int) -> int:
    """tracemalloc bytes of stock DDSketch windows for ``N_BASELINE`` series (same slicing)."""
    batches = _batches(draw, seed, N_BASELINE)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    slice_seconds = 5
    rings: list[dict[int, DDSketch]] = [{} for _ in range(N_BASELINE)]
    for now, i, seconds in batches:
        sid = int(now // slice_seconds)
        sketch = rings[i].get(sid)
        if sketch is None:
            sketch = rings[i][sid] = DDSketch(DEFAULT_RELATIVE_ACCURACY)
            for old in [s for s in rings[i] if s <= sid - 13]:  # keep 12 closed slices + the open one
                del rings[i][old]
        for v in seconds.tolist():
            sketch.add(v)
    last = int((T0 + SECONDS) // slice_seconds) - 1
    windows = []
    for ring in rings:
        window = DDSketch(DEFAULT_RELATIVE_ACCURACY)
        for sid, sketch in ring.items():
            if sid <= last:
                window.merge(sketch)
        windows.append(window)
    del batches
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    return sum(stat.size_diff for stat in after.compare_to(before, "filename"))


def kib(n: float) -> str:
    return f"{n / 1024:,.1f}"


def run() -> list[Row]:
    rows = []
    results = {}
    for name, draw in (("lognormal 80ms s=0.6", lognormal), ("bimodal 10ms/2s", bimodal_wide)):
        store, held = build_store(draw, seed=7)
        n = len(store)
        series = store.all_series()
        slices = [s for sr in series for s in sr.ring if s is not None]
        bins = np.mean([s.parts()[1].shape[0] for s in slices])
        window_bins = np.mean([sr.window.store.length() for sr in series])
        packed = [s.candidates for s in slices]
        cands = np.mean([p.shape[0] for p in packed])
        bins_bytes = sum(s.parts()[1].nbytes for s in slices) + sum(sr.window.nbytes() for sr in series)
        cand_bytes = sum(sys.getsizeof(p) for p in packed)
        per_store, per_traced = store.nbytes() / n, held / n
        results[name] = per_traced
        rows.append([f"adapter WindowStore, {name}", n, f"{len(slices) / n:.1f}", f"{bins:.0f}",
                     f"{window_bins:.0f}", f"{cands:.1f}", kib(per_store), kib(per_traced),
                     kib(bins_bytes / n), kib(cand_bytes / n), kib((held - bins_bytes - cand_bytes) / n),
                     kib(GOAL), "yes" if per_traced <= GOAL else "NO"])
    base = build_baseline(lognormal, seed=7) / N_BASELINE
    rows.append(["baseline: stock DDSketch DenseStore, lognormal", N_BASELINE, "13", "", "", "0", "",
                 kib(base), "", "", "", "", ""])
    print_table(
        f"memory per active series after {SECONDS} s of ~{RATE} req/s (window 60 s = 12 x 5 s slices); KiB",
        ["store", "series", "slices/series", "bins/slice", "window bins", "cands/slice",
         "store.nbytes/series", "tracemalloc/series", "= bins", "+ candidates", "+ objects", "goal",
         "met?"],
        rows,
    )
    print("  bins: numpy sketch arrays (slices float32, window float64); candidates: packed "
          "(seconds, 16-byte trace id) arrays; objects: the rest (Slice/Series/sketch objects, lists, keys)")
    worst = max(results.values())
    met = worst <= GOAL
    print(f"  goal <= 64 KiB per active series (tracemalloc): {'met' if met else 'NOT met'} (worst "
          f"{kib(worst)} KiB; stock DDSketch baseline {kib(base)} KiB)")
    figure = ", ".join(f"{name.split()[0]} {kib(v)} KiB" for name, v in results.items())
    return [Row("memory: bytes/active series", figure, f"stock DDSketch {kib(base)} KiB", "<= 64 KiB", met)]


if __name__ == "__main__":
    run()
