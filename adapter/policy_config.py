"""The policy part of the config file: per-workload targets, canary pairs, and re-reading them live.

```yaml
defaults: {latency_target_seconds: 0.25, cpu_target_utilization: 0.6, min_samples: 50,
           cpu_floor: 0.3, stale_after_seconds: 60, quantile: p95}
workloads:
  - {namespace: shop, workload: "checkout*", latency_target_seconds: 0.4}
  - {workload: "*-batch", min_samples: 10}          # namespace omitted: every namespace
canaries:
  - {namespace: shop, canary: checkout-canary, baseline: checkout}
```

Override rule (like CSS or kustomize patches): a workload starts from ``defaults``; then every
``workloads`` entry whose ``namespace`` and ``workload`` globs both match is applied **in file order**,
each setting only the keys it names, so a later matching entry overrides an earlier one key by key.
Write broad entries first and specific ones after. Globs are shell globs (``*``, ``?``, ``[...]``),
case-sensitive, matched against the whole name; ``namespace`` may be omitted (``"*"``).

``canaries`` pairs a canary workload with its baseline, both exact names in one namespace; a canary
appears at most once per namespace.

Every key and value is checked when the file is read (at start, by ``check-config``, and on every
reload): a bad one fails with a :class:`~adapter.errors.ConfigError` that names the full key path and
quotes the value, e.g. ``config key 'workloads[0].latency_target_seconds': must be a number greater than
0 and at most 3600 (got '-1')``.

:class:`PolicyWatcher` re-reads the file when its content changes and hands a new :class:`PolicyConfig`
to the service; a file that no longer validates is refused as a whole (the running policy stays).

Length: about 510 lines, most of it the per-key checks and their messages, which must name every bad
key path and value; parsing, lookup and reload share those checks, so they stay together.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import math
import os
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from fnmatch import translate
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError
from .policy import PolicySettings

if TYPE_CHECKING:
    from .config import Settings

log = logging.getLogger("adapter.config")

#: The top-level sections of the config file that this module owns.
POLICY_SECTIONS = ("defaults", "workloads", "canaries")

#: Named quantiles accepted for ``quantile`` besides a plain number.
NAMED_QUANTILES: dict[str, float] = {"p50": 0.5, "p95": 0.95, "p99": 0.99, "p99.9": 0.999}

#: At most this many (namespace, workload) lookups are remembered per :class:`PolicyConfig`.
MEMO_MAX = 4096

#: A file modified less than this many seconds ago is hashed even when its stat looks unchanged
#: (a rewrite within the file system's timestamp granularity keeps size and mtime).
RACY_SECONDS = 2.0


# --------------------------------------------------------------------------------------------------------
# Validation of one policy key
# --------------------------------------------------------------------------------------------------------


def _number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float)


def _in_range(value: Any, low: float, high: float, *, low_open: bool) -> bool:
    if not _number(value):
        return False
    above = value > low if low_open else value >= low
    return bool(above and value <= high)


def _float_key(low: float, high: float, *, low_open: bool, text: str) -> Callable[[str, Any], Any]:
    def check(path: str, value: Any) -> float:
        if not _in_range(value, low, high, low_open=low_open):
            raise ConfigError(path, value, text)
        return float(value)
    return check


def _min_samples(path: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(path, value, "must be a whole number of at least 1")
    return value


_QUANTILE_TEXT = ("must be a number between 0 and 1 (both excluded) or one of "
                  + ", ".join(NAMED_QUANTILES))


def _quantile(path: str, value: Any) -> float:
    if isinstance(value, str):
        named = NAMED_QUANTILES.get(value.strip().lower())
        if named is None:
            raise ConfigError(path, value, _QUANTILE_TEXT)
        return named
    if not _number(value) or not 0 < value < 1:
        raise ConfigError(path, value, _QUANTILE_TEXT)
    return float(value)


def _cpu_request_cores(path: str, value: Any) -> float | None:
    if value is None:
        return None
    if not _number(value) or not math.isfinite(value) or value <= 0:
        raise ConfigError(path, value, "must be a number greater than 0, or null (no request known)")
    return float(value)


#: Every policy key (each a field of PolicySettings) -> its checker, which returns the value to store.
POLICY_KEYS: dict[str, Callable[[str, Any], Any]] = {
    "latency_target_seconds": _float_key(0, 3600, low_open=True,
                                         text="must be a number greater than 0 and at most 3600"),
    "cpu_target_utilization": _float_key(0, 10, low_open=True,
                                         text="must be a number greater than 0 and at most 10"),
    "min_samples": _min_samples,
    "cpu_floor": _float_key(0, 10, low_open=False, text="must be a number from 0 to 10"),
    "stale_after_seconds": _float_key(0, 86400, low_open=True,
                                      text="must be a number greater than 0 and at most 86400"),
    "quantile": _quantile,
    "cpu_request_cores": _cpu_request_cores,
}
assert set(POLICY_KEYS) == {f.name for f in dataclasses.fields(PolicySettings)}, \
    "every PolicySettings field needs a checker in POLICY_KEYS"

_WORKLOAD_KEYS = ("namespace", "workload")

#: Where a workload's latency, rate and error values come from (``source`` key; a list: the first with
#: fresh data answers). Not a ``PolicySettings`` field: it picks the inputs, the policy is the same.
SOURCES = ("otlp", "prometheus")
DEFAULT_SOURCE: tuple[str, ...] = ("otlp",)
_SOURCE_TEXT = ("must be one of " + ", ".join(SOURCES)
                + " or a non-empty list of them (first with fresh data answers)")


def _source(path: str, value: Any) -> tuple[str, ...]:
    items = value if isinstance(value, list) else [value]
    if not items:
        raise ConfigError(path, value, _SOURCE_TEXT)
    for i, item in enumerate(items):
        where = f"{path}[{i}]" if isinstance(value, list) else path
        if not isinstance(item, str) or item not in SOURCES:
            raise ConfigError(where, item, _SOURCE_TEXT)
    if len(set(items)) != len(items):
        raise ConfigError(path, value, "must not name a source twice")
    return tuple(items)
_CANARY_KEYS = ("namespace", "canary", "baseline")


# --------------------------------------------------------------------------------------------------------
# The parsed policy
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkloadOverride:
    """One ``workloads`` entry: two globs and the policy keys it sets (in file order)."""

    namespace: str
    workload: str
    changes: tuple[tuple[str, Any], ...] = ()
    #: The ``source`` key of the entry, when it has one.
    source: tuple[str, ...] | None = None
    _namespace_re: re.Pattern[str] = field(init=False, repr=False, compare=False, hash=False)
    _workload_re: re.Pattern[str] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_namespace_re", re.compile(translate(self.namespace)))
        object.__setattr__(self, "_workload_re", re.compile(translate(self.workload)))

    def matches(self, namespace: str, workload: str) -> bool:
        """Both globs match the whole names (case-sensitive, like ``fnmatch.fnmatchcase``)."""
        return (self._workload_re.match(workload) is not None
                and self._namespace_re.match(namespace) is not None)


@dataclass(frozen=True)
class CanaryPair:
    """A canary workload and the baseline it is compared with, in one namespace."""

    namespace: str
    canary: str
    baseline: str


@dataclass(frozen=True)
class PolicyConfig:
    """``defaults``, ``workloads`` overrides and ``canaries`` of the config file (read-only).

    :meth:`for_workload` is called per API request, so its answers are memoised on the object (at most
    :data:`MEMO_MAX` of them); a reload builds a new object, so the memo never outlives its policy.
    """

    defaults: PolicySettings = field(default_factory=PolicySettings)
    workloads: tuple[WorkloadOverride, ...] = ()
    canaries: tuple[CanaryPair, ...] = ()
    #: ``defaults.source``.
    default_source: tuple[str, ...] = DEFAULT_SOURCE
    _memo: OrderedDict[tuple[str, str], PolicySettings] = field(
        default_factory=OrderedDict, init=False, repr=False, compare=False, hash=False)
    _canary_index: dict[tuple[str, str], CanaryPair] = field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        for pair in self.canaries:
            self._canary_index.setdefault((pair.namespace, pair.canary), pair)

    def for_workload(self, namespace: str, workload: str) -> PolicySettings:
        """The settings of one workload: ``defaults``, then every matching override in file order."""
        if not self.workloads:
            return self.defaults
        key = (namespace, workload)
        memo = self._memo
        hit = memo.get(key)
        if hit is not None:
            return hit
        changes: dict[str, Any] = {}
        for override in self.workloads:
            if override.matches(namespace, workload):
                changes.update(override.changes)
        result = dataclasses.replace(self.defaults, **changes) if changes else self.defaults
        if len(memo) >= MEMO_MAX:
            memo.popitem(last=False)
        memo[key] = result
        return result

    def source_of(self, namespace: str, workload: str) -> tuple[str, ...]:
        """The ``source`` list of one workload: ``defaults.source``, then matching entries in file order."""
        source = self.default_source
        for override in self.workloads:
            if override.source is not None and override.matches(namespace, workload):
                source = override.source
        return source

    def canary_of(self, namespace: str, canary: str) -> CanaryPair | None:
        """The pair whose canary is ``canary`` in ``namespace`` (exact names), or ``None``."""
        return self._canary_index.get((namespace, canary))

    def baseline_of(self, namespace: str, canary: str) -> str | None:
        """The baseline of ``canary`` in ``namespace``, or ``None`` (for ``dual_signal.PolicyLookup``)."""
        pair = self._canary_index.get((namespace, canary))
        return pair.baseline if pair is not None else None

    @property
    def memoised(self) -> int:
        """How many lookups are remembered (for tests and debugging)."""
        return len(self._memo)

    def summary(self) -> str:
        """``"3 workload overrides, 1 canary pair"``."""
        n, c = len(self.workloads), len(self.canaries)
        return (f"{n} workload override{'' if n == 1 else 's'}, "
                f"{c} canary pair{'' if c == 1 else 's'}")


# --------------------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------------------


def _policy_keys(path: str, entry: Mapping[Any, Any], skip: tuple[str, ...]) -> dict[str, Any]:
    """The checked policy keys of a mapping; any key not in ``POLICY_KEYS`` or ``skip`` is an error."""
    out: dict[str, Any] = {}
    for key, value in entry.items():
        name = str(key)
        if name in skip:
            continue
        check = POLICY_KEYS.get(name) if isinstance(key, str) else None
        if check is None:
            known = ", ".join(sorted([*POLICY_KEYS, *skip]))
            raise ConfigError(f"{path}.{name}", value, f"is not a known key; known: {known}")
        out[name] = check(f"{path}.{name}", value)
    return out


def _glob(path: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(path, value, "must be a string (a shell glob such as 'checkout*')")
    if not value:
        raise ConfigError(path, value, "must be a non-empty glob (use '*' for any name)")
    return value


def _name(path: str, value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(path, value, f"must be a string ({what})")
    if not value:
        raise ConfigError(path, value, f"must not be empty ({what})")
    return value


def _required(path: str, entry: Mapping[Any, Any], key: str, hint: str) -> Any:
    if key not in entry:
        raise ConfigError(f"{path}.{key}", None, f"is required ({hint})")
    return entry[key]


def _list(path: str, value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise ConfigError(path, value, "must be a list (write [] for none)")
    return value


def _mapping(path: str, value: Any) -> Mapping[Any, Any]:
    if not isinstance(value, dict):
        raise ConfigError(path, value, "must be a mapping")
    return value


def _parse_workloads(body: Any) -> tuple[WorkloadOverride, ...]:
    out: list[WorkloadOverride] = []
    for i, raw in enumerate(_list("workloads", body)):
        path = f"workloads[{i}]"
        entry = _mapping(path, raw)
        changes = _policy_keys(path, entry, (*_WORKLOAD_KEYS, "source"))
        source = _source(f"{path}.source", entry["source"]) if "source" in entry else None
        namespace = _glob(f"{path}.namespace", entry.get("namespace", "*"))
        workload = _glob(f"{path}.workload",
                         _required(path, entry, "workload", "a glob of workload names, e.g. 'checkout*'"))
        out.append(WorkloadOverride(namespace, workload, tuple(changes.items()), source))
    return tuple(out)


def _parse_canaries(body: Any) -> tuple[CanaryPair, ...]:
    out: list[CanaryPair] = []
    first: dict[tuple[str, str], int] = {}
    for i, raw in enumerate(_list("canaries", body)):
        path = f"canaries[{i}]"
        entry = _mapping(path, raw)
        for key, value in entry.items():
            if key not in _CANARY_KEYS:
                raise ConfigError(f"{path}.{key}", value,
                                  "is not a known key; known: " + ", ".join(sorted(_CANARY_KEYS)))
        values = [_name(f"{path}.{key}", _required(path, entry, key, hint), hint)
                  for key, hint in (("namespace", "the exact namespace name"),
                                    ("canary", "the exact workload name of the canary"),
                                    ("baseline", "the exact workload name of the baseline"))]
        pair = CanaryPair(*values)
        if pair.baseline == pair.canary:
            raise ConfigError(f"{path}.baseline", pair.baseline, "must differ from canary")
        seen = first.setdefault((pair.namespace, pair.canary), i)
        if seen != i:
            raise ConfigError(f"{path}.canary", pair.canary,
                              f"appears twice in namespace {pair.namespace!r} (first at canaries[{seen}])")
        out.append(pair)
    return tuple(out)


def policy_from_mapping(doc: Mapping[Any, Any], base: PolicyConfig | None = None) -> PolicyConfig:
    """The policy of a parsed config document; raises :class:`ConfigError` naming the key path.

    Reads the ``defaults``, ``workloads`` and ``canaries`` keys of ``doc`` and ignores every other key
    (the other sections belong to :mod:`adapter.config`, which checks them). ``defaults`` keys override
    ``base.defaults`` key by key; ``workloads`` and ``canaries`` replace ``base``'s when present.
    """
    base = base or PolicyConfig()
    defaults = base.defaults
    default_source = base.default_source
    if "defaults" in doc:
        body = _mapping("defaults", doc["defaults"])
        changes = _policy_keys("defaults", body, ("source",))
        defaults = dataclasses.replace(defaults, **changes)
        if "source" in body:
            default_source = _source("defaults.source", body["source"])
    workloads = _parse_workloads(doc["workloads"]) if "workloads" in doc else base.workloads
    canaries = _parse_canaries(doc["canaries"]) if "canaries" in doc else base.canaries
    if (defaults, workloads, canaries, default_source) == (
            base.defaults, base.workloads, base.canaries, base.default_source):
        return base
    return PolicyConfig(defaults, workloads, canaries, default_source)


# --------------------------------------------------------------------------------------------------------
# Re-reading the file
# --------------------------------------------------------------------------------------------------------


def _restart_view(settings: Settings) -> dict[str, Any]:
    """What a reload cannot change while running, by config file section."""
    return {"store": settings.store, "otlp": (settings.ingest, settings.receiver),
            "cpu": settings.cpu, "traces": settings.traces, "sources": settings.prometheus,
            "server": settings.server}


def _live_view(settings: Settings) -> tuple[Any, ...]:
    """The non-policy sections applied while running: ``limits`` and ``log_level``."""
    return (settings.limits, settings.log_level)


class PolicyWatcher:
    """Re-reads the config file when its content changes and returns the new policy.

    The whole file goes through the same validation as at start (:func:`adapter.config.settings_from_bytes`),
    so a reload is refused for a bad key in any section. A refused reload keeps the running policy, is
    logged once per bad content and counted in :attr:`reload_failures`. ``limits`` and ``log_level`` are
    applied live too, through :meth:`watch`'s ``apply_settings``, when they differ from the file's
    previous valid content (so a ``--log-level`` flag stands until the file's own level changes). Other
    sections (``store``, ``otlp``, ``cpu``, ``traces``, ``sources``, ``server``) are never applied
    live: a change there is logged once as needing a restart and sets :attr:`restart_required`.

    The file is read once when the watcher is made: that content is the baseline for "needs a restart";
    if its policy already differs from ``current`` the first :meth:`check` returns it.
    ``clock`` is wall-clock seconds (compared with file modification times). Not thread-safe: call
    :meth:`check` from one thread (the event loop).
    """

    def __init__(self, path: Path | str, current: PolicyConfig, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.current = current
        self._clock = clock
        #: Successful re-reads of changed content, and refused ones (each bad content counted once).
        self.reloads = 0
        self.reload_failures = 0
        #: The message of the last refused reload; ``None`` once a valid file is read again.
        self.last_error: str | None = None
        #: ``True`` while the file's non-policy sections differ from those the process started with.
        self.restart_required = False
        #: ``clock()`` of the last applied reload.
        self.last_reload_at: float | None = None
        self._stat: tuple[int, int, int, int] | None = None
        self._digest: str | None = None
        self._baseline: dict[str, Any] | None = None
        self._warned_view: dict[str, Any] | None = None
        self._pending: PolicyConfig | None = None
        #: The live sections of the file's last valid content, and whether they changed since applied.
        self._live: tuple[Any, ...] | None = None
        self.settings: Settings | None = None
        self.live_changed = False
        self._prime()

    # -- public -------------------------------------------------------------------------------------------

    def check(self) -> PolicyConfig | None:
        """The new policy when the file changed and validates and its policy differs, else ``None``."""
        if self._pending is not None:
            new, self._pending = self._pending, None
            self._applied(new, changed=True)
            return new
        read = self._read_if_changed()
        if read is None:
            return None
        data, digest = read
        settings = self._parse(data, digest)
        if settings is None:
            return None
        new = settings.policy
        self._note_restart_sections(settings)
        self._note_live_sections(settings)
        changed = new != self.current
        self._applied(new, changed=changed, digest=digest)
        return new if changed else None

    async def watch(self, apply: Callable[[PolicyConfig], None], interval: float = 2.0,
                    apply_settings: Callable[[Settings], None] | None = None) -> None:
        """Run :meth:`check` now and every ``interval`` seconds until cancelled; new ones go to ``apply``.

        ``apply_settings`` gets the whole new settings when their live sections changed.
        """
        while True:
            try:
                new = self.check()
                if new is not None:
                    apply(new)
                if self.live_changed and self.settings is not None:
                    self.live_changed = False
                    if apply_settings is not None:
                        apply_settings(self.settings)
            except Exception:  # the watcher must outlive any surprise; serving goes on with what is loaded
                log.exception("policy reload check failed",
                              extra={"fields": {"event": "policy_reload_error", "path": str(self.path)}})
            await asyncio.sleep(interval)

    # -- internals ----------------------------------------------------------------------------------------

    def _prime(self) -> None:
        read = self._read_if_changed()
        if read is None:
            return
        data, digest = read
        settings = self._parse(data, digest)
        if settings is None:
            return
        self._digest = digest
        self._baseline = _restart_view(settings)
        self._live = _live_view(settings)
        self.settings = settings
        if settings.policy != self.current:
            self._pending = settings.policy

    def _read_if_changed(self) -> tuple[bytes, str] | None:
        """The file's bytes and hash when they may differ from the last read; failures are logged."""
        try:
            st = os.stat(self.path)
            stamp = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
            racy = self._clock() - st.st_mtime_ns / 1e9 < RACY_SECONDS
            if stamp == self._stat and not racy:
                return None
            with open(self.path, "rb") as fh:
                st = os.fstat(fh.fileno())
                data = fh.read()
        except OSError as exc:
            problem = f"cannot be read: {exc.strerror or exc}"
            self._refuse(f"unreadable:{problem}", ConfigError("--config", str(self.path), problem))
            self._stat = None
            return None
        self._stat = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        digest = hashlib.sha256(data).hexdigest()
        if digest == self._digest:
            return None
        return data, digest

    def _parse(self, data: bytes, digest: str) -> Settings | None:
        from .config import settings_from_bytes  # config imports this module

        try:
            return settings_from_bytes(data, self.path)
        except ConfigError as exc:
            self._refuse(digest, exc)
            return None

    def _refuse(self, digest: str, exc: ConfigError) -> None:
        if digest == self._digest:
            return
        self._digest = digest
        self.reload_failures += 1
        self.last_error = str(exc)
        log.warning("config reload refused, keeping the running policy", extra={"fields": {
            "event": "policy_reload_failed", "path": str(self.path), "error": str(exc),
            "key": exc.key, "reload_failures": self.reload_failures}})

    def _applied(self, new: PolicyConfig, *, changed: bool, digest: str | None = None) -> None:
        if digest is not None:
            self._digest = digest
        self.last_error = None
        self.reloads += 1
        if changed:
            self.current = new
            self.last_reload_at = self._clock()
        log.info("policy reloaded", extra={"fields": {
            "event": "policy_reloaded", "path": str(self.path), "sha256": (self._digest or "")[:16],
            "changed": changed, "workload_overrides": len(new.workloads), "canary_pairs": len(new.canaries),
            "reloads": self.reloads}})

    def _note_live_sections(self, settings: Settings) -> None:
        self.settings = settings
        live = _live_view(settings)
        if self._live is not None and live != self._live:
            self.live_changed = True
            log.info("live settings reloaded", extra={"fields": {
                "event": "settings_reloaded", "path": str(self.path), "log_level": settings.log_level,
                "limits": dataclasses.asdict(settings.limits)}})
        self._live = live

    def _note_restart_sections(self, settings: Settings) -> None:
        view = _restart_view(settings)
        if self._baseline is None:  # the file was unreadable or invalid when the watcher started
            self._baseline = view
            return
        differ = [name for name, value in view.items() if value != self._baseline[name]]
        self.restart_required = bool(differ)
        if differ and view != self._warned_view:
            self._warned_view = view
            log.warning("config change needs a restart to apply", extra={"fields": {
                "event": "config_restart_required", "path": str(self.path), "sections": differ}})
        if not differ:
            self._warned_view = None
