"""Long work on the event loop, in turns: give other requests the loop every few milliseconds.

The per-slice work (moving ten thousand windows, deciding for every workload) is pure Python that holds
the loop for as long as it runs. Done in one go it is a second during which no HPA request is answered;
done in turns of :data:`TURN_SECONDS` with a pause after each, an API request waits at most one turn.
The work itself is the same.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

#: Longest stretch of background work between two chances for other tasks to run.
TURN_SECONDS = 0.001
#: How long background work then steps aside. Not zero: an API request takes two or three turns of the
#: loop (TLS record, then the handler, then the write), and with ``sleep(0)`` background work would take
#: one of its turns inside every one of them; a pause lets the loop run them back to back first. As
#: long as a turn: background work takes at most half of a busy loop, and a request that meets it
#: waits at most a millisecond per turn of its own.
PAUSE_SECONDS = 0.001


class Pacer:
    """Call :meth:`turn` often during long work; it yields to the loop once a turn has been used up."""

    def __init__(self, turn_seconds: float = TURN_SECONDS, clock: Callable[[], float] = time.perf_counter,
                 pause_seconds: float = PAUSE_SECONDS) -> None:
        self.turn_seconds = turn_seconds
        self.pause_seconds = pause_seconds
        self._clock = clock
        self._since = clock()
        #: Times the work gave the loop back.
        self.yields = 0

    async def turn(self) -> None:
        if self._clock() - self._since >= self.turn_seconds:
            await asyncio.sleep(self.pause_seconds)
            self.yields += 1
            self._since = self._clock()
