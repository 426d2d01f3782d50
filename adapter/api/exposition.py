"""``/metrics`` text written on the event loop in turns, byte for byte what prometheus_client writes.

Why not the library's encoder in one call: with a few hundred workloads the text is thousands of lines
and tens of milliseconds of pure Python (40 ms for 200 workloads, measured). On the event loop in one
call that is a stall for every API request in flight; in a worker thread it is worse, because the
thread and the loop take turns holding the interpreter and every loop turn of a request then waits for
the thread's share. Here each family, and each slice of :data:`CHUNK_SAMPLES` samples of a big one, is
encoded by the library itself and the loop gets a turn in between (:class:`~adapter.pacing.Pacer`).

Slicing a family keeps the library's output exactly: a slice repeats the family's ``# HELP``/``# TYPE``
/``# UNIT`` lines, which are dropped, and OpenMetrics' ``# EOF`` is written once at the end. Families
whose text the library splits into extra families (counters' ``_created``, gauge histograms) are never
sliced.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from ..pacing import Pacer

#: Samples encoded per call at most (a few hundred microseconds of work).
CHUNK_SAMPLES = 200
_SPLIT_OFF = ("_created", "_gsum", "_gcount")


class _Collected(Collector):
    """Metric families already collected, in the shape the library's encoders read."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


def _pieces(family: Metric) -> Iterator[Metric]:
    samples = family.samples
    if len(samples) <= CHUNK_SAMPLES or any(s.name.endswith(_SPLIT_OFF) for s in samples):
        yield family
        return
    for start in range(0, len(samples), CHUNK_SAMPLES):
        piece = Metric(family.name, family.documentation, family.type, family.unit)
        piece.samples = samples[start:start + CHUNK_SAMPLES]
        yield piece


def _without_headers(text: bytes) -> bytes:
    at = 0
    while text.startswith(b"# ", at):
        at = text.index(b"\n", at) + 1
    return text[at:]


async def encode(encoder: Callable[[Collector], bytes], families: Iterable[Metric],
                 pacer: Pacer | None = None) -> bytes:
    """What ``encoder`` writes for ``families``, written a piece per turn of the loop."""
    pacer = pacer or Pacer()
    trailer = encoder(_Collected([]))  # what the format writes after the families: "# EOF" or nothing
    parts: list[bytes] = []
    for family in families:
        for i, piece in enumerate(_pieces(family)):
            text = encoder(_Collected([piece]))
            text = text[: len(text) - len(trailer)] if trailer else text
            parts.append(text if i == 0 else _without_headers(text))
            await pacer.turn()
    parts.append(trailer)
    return b"".join(parts)
