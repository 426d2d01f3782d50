"""The cache in front of the delegated reviews (TokenReview, SubjectAccessReview).

Why a module of its own: both reviewers need the same four things and their interplay is where the bugs
would be: a bounded TTL cache, at most one review in flight per key (single flight), a bound on every
review call, and the fallback to an expired answer while the API server is unreachable.

Why refresh ahead: a hot key (the HPA controller's identity, asking every 15 s, or a load test asking
10,000 times a second) would otherwise see its entry expire and every request arriving during the next
review wait for the API server, a latency spike once per TTL. A hit in the last fifth of an entry's
freshness starts the review in the background and is answered from the entry, which is still fresh, so
no answer is ever older than the TTL, and a key in steady use never waits. A failed refresh changes
nothing: the entry serves until it expires, then the ordinary miss path (and its stale fallback) applies.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from adapter.errors import MAX_QUOTED
from adapter.kube import ClusterAPI, ClusterAPIError

log = logging.getLogger("adapter.auth")

K = TypeVar("K")
V = TypeVar("V")
R = TypeVar("R")
Clock = Callable[[], float]

#: How often (seconds of the injected clock) a recurring warning, e.g. "serving stale decisions", is logged.
LOG_EVERY_SECONDS = 10.0
#: Share of an entry's freshness after which a hit refreshes it in the background.
REFRESH_AHEAD_AT = 0.8


#: Where :func:`scrub` cuts a text into words: blanks, quotes, brackets, separators and escapes.
_WORD = re.compile(r"""[^\s"'`<>()\[\]{},;\\]+""")
#: A word sharing this many consecutive characters with the secret is taken for (part of) the secret.
SCRUB_WINDOW = 8


def scrub(text: str, secret: str) -> str:
    """``text`` without ``secret`` nor any recognisable part of it, for a log line or a response.

    Why more than ``str.replace``: what an API server or client library says about a token is not always
    the token verbatim. It may be quoted with escapes (Python's ``repr``, Go's ``%q``: a token with a quote,
    a backslash or a non-UTF-8 byte no longer matches), cut short by a length limit (leaving its first
    part), or glued to a label (``token=...``). So every word of ``text`` that shares
    :data:`SCRUB_WINDOW` consecutive characters with ``secret`` is replaced too. Tokens are long random
    strings, so an ordinary word of a message practically never matches.
    """
    if not secret or not text:
        return text
    text = text.replace(secret, "<redacted>")
    width = min(SCRUB_WINDOW, len(secret))
    pieces = {secret[i : i + width] for i in range(len(secret) - width + 1)}

    def redact(match: re.Match[str]) -> str:
        word = match.group(0)
        if any(word[i : i + width] in pieces for i in range(len(word) - width + 1)):
            return "<redacted>"
        return word

    return _WORD.sub(redact, text)


@dataclass(slots=True)
class Entry(Generic[V]):
    value: V
    refresh_after: float  # a hit after this starts a background review
    fresh_until: float
    usable_until: float  # fresh_until + stale grace: usable only while the API server cannot be asked


class TTLCache(Generic[K, V]):
    """A bounded LRU map whose entries are fresh until a deadline and then stale for a grace period.

    Why LRU: the working set (the HPA controller's identity, a few users) is tiny and hot, while an attacker
    sending random tokens creates cold entries; evicting the least recently used keeps the hot ones.
    """

    def __init__(self, max_entries: int) -> None:
        self._data: OrderedDict[K, Entry[V]] = OrderedDict()
        self._max = max_entries
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: K, now: float) -> Entry[V] | None:
        """The entry (fresh or stale) or ``None``; an entry past its grace is dropped."""
        entry = self._data.get(key)
        if entry is None:
            return None
        if now >= entry.usable_until:
            del self._data[key]
            return None
        self._data.move_to_end(key)
        return entry

    def put(self, key: K, value: V, now: float, ttl: float, grace: float) -> None:
        self._data[key] = Entry(value, now + ttl * REFRESH_AHEAD_AT, now + ttl, now + ttl + grace)
        self._data.move_to_end(key)
        while len(self._data) > self._max:
            self._data.popitem(last=False)
            self.evictions += 1


class SingleFlight(Generic[K, V]):
    """At most one review in flight per key; concurrent callers share its outcome.

    Why a task and ``shield``: the review must not be cancelled when the first caller goes away (client
    disconnected), the others still wait for it. Each caller's wait stays bounded because the review itself
    is bounded by the timeout.
    """

    def __init__(self) -> None:
        self._inflight: dict[K, asyncio.Future[V]] = {}

    def __len__(self) -> int:
        return len(self._inflight)

    def joining(self, key: K) -> bool:
        return key in self._inflight

    def start(self, key: K, make: Callable[[], Awaitable[V]]) -> asyncio.Future[V]:
        """The review in flight for ``key``, started now if there is none."""
        future = self._inflight.get(key)
        if future is None:

            async def call() -> V:
                return await make()

            future = asyncio.ensure_future(call())
            self._inflight[key] = future
            future.add_done_callback(lambda done: self._finished(key, done))
        return future

    async def run(self, key: K, make: Callable[[], Awaitable[V]]) -> V:
        return await asyncio.shield(self.start(key, make))

    def _finished(self, key: K, done: asyncio.Future[V]) -> None:
        if self._inflight.get(key) is done:
            del self._inflight[key]
        if not done.cancelled():
            done.exception()  # mark as retrieved: all waiters may have gone, no "never retrieved" noise


class Throttle:
    """Allows an action at most once per period of the injected clock (for recurring warnings)."""

    def __init__(self, clock: Clock, period: float = LOG_EVERY_SECONDS) -> None:
        self._clock = clock
        self._period = period
        self._last = float("-inf")

    def ready(self) -> bool:
        now = self._clock()
        if now - self._last >= self._period:
            self._last = now
            return True
        return False


class CachedReviewer(Generic[K, V]):
    """What both reviewers share: the API, settings, clock, a TTL cache, single flight, counters.

    Counters (plain ints, exported by the service): ``cache_hits``, ``cache_misses``, ``coalesced``
    (callers that joined a review in flight), ``refreshes`` (background reviews started ahead of expiry),
    ``reviews``, ``review_errors``, ``review_timeouts`` (part of ``review_errors``), ``stale_uses`` and
    ``cache_evictions``.
    """

    def __init__(self, api: ClusterAPI, max_entries: int, timeout_seconds: float, clock: Clock) -> None:
        self._api = api
        self._clock = clock
        self._timeout = timeout_seconds
        self._cache: TTLCache[K, V] = TTLCache(max_entries)
        self._flights: SingleFlight[K, V] = SingleFlight()
        self._stale_log = Throttle(clock)
        self.cache_hits = 0
        self.cache_misses = 0
        self.coalesced = 0
        self.refreshes = 0
        self.reviews = 0
        self.review_errors = 0
        self.review_timeouts = 0
        self.stale_uses = 0

    @property
    def cache_evictions(self) -> int:
        return self._cache.evictions

    @property
    def cache_size(self) -> int:
        return len(self._cache)

    async def _cached(self, key: K, review: Callable[[], Awaitable[V]]) -> tuple[V, bool]:
        """``(answer, stale)`` for ``key``: from the cache while fresh, else from one shared ``review``.

        ``review`` must put its answer into the cache. When it fails (:class:`ClusterAPIError` or
        :class:`TimeoutError`) an expired entry still within its grace is returned with ``stale`` True;
        without one the error propagates for the caller to turn into its own 503 message.
        """
        now = self._clock()
        entry = self._cache.get(key, now)
        if entry is not None and now < entry.fresh_until:
            self.cache_hits += 1
            if now >= entry.refresh_after and not self._flights.joining(key):
                self.refreshes += 1
                self._flights.start(key, review)
            return entry.value, False
        self.cache_misses += 1
        if self._flights.joining(key):
            self.coalesced += 1
        try:
            return await self._flights.run(key, review), False
        except (ClusterAPIError, TimeoutError):
            entry = self._cache.get(key, self._clock())
            if entry is None:
                raise
            self.stale_uses += 1
            return entry.value, True

    async def _bounded(self, what: str, call: Awaitable[R], secret: str = "") -> R:
        """One review call, bounded by the timeout, counted, and logged (``secret`` scrubbed) on failure."""
        self.reviews += 1
        try:
            return await asyncio.wait_for(call, self._timeout)
        except TimeoutError:
            self.review_errors += 1
            self.review_timeouts += 1
            log.warning("%s timed out after %.3gs", what, self._timeout)
            raise
        except ClusterAPIError as exc:
            self.review_errors += 1
            log.warning("%s failed: %s", what, scrub(str(exc), secret)[:MAX_QUOTED])
            raise
