"""Tests for adapter.policy_config: the policy sections of the config file and their live reload.

Every bad key or value must fail with a message naming the full key path (``workloads[1].color``) and
quoting the value; lookups must follow the documented override rule (matching ``workloads`` entries apply
in file order on top of ``defaults``, key by key); a reload must never replace a good policy by a bad one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

import adapter.policy_config as policy_config
from adapter.config import load_settings, settings_from_mapping
from adapter.errors import ConfigError
from adapter.policy import PolicySettings
from adapter.policy_config import (
    CanaryPair,
    PolicyConfig,
    PolicyWatcher,
    WorkloadOverride,
    policy_from_mapping,
)
from adapter.telemetry import JsonFormatter

DEFAULTS = PolicySettings()


def parse(text: str) -> PolicyConfig:
    """The policy of a YAML document, through the whole config validation (every section)."""
    return settings_from_mapping(yaml.safe_load(text)).policy


# --- invalid keys and values --------------------------------------------------------------------------------

INVALID: list[tuple[str, str, str | None, str]] = [
    # (YAML, key path, the value as quoted in the message or None when there is none, words of the problem)
    # section shapes
    ("defaults: 3\n", "defaults", "3", "must be a mapping"),
    ("defaults: [a]\n", "defaults", "['a']", "must be a mapping"),
    ("defaults:\n", "defaults", None, "must be a mapping"),
    ("workloads: {workload: checkout}\n", "workloads", "{'workload': 'checkout'}", "must be a list"),
    ("workloads:\n", "workloads", None, "must be a list"),
    ("canaries: checkout\n", "canaries", "checkout", "must be a list"),
    ("workloads: [3]\n", "workloads[0]", "3", "must be a mapping"),
    ("workloads: [{workload: a}, [x]]\n", "workloads[1]", "['x']", "must be a mapping"),
    ("canaries: [canary]\n", "canaries[0]", "canary", "must be a mapping"),
    # policy keys, each class of bad value (in defaults and in a workloads entry)
    ("defaults: {latency_target_seconds: -1}\n", "defaults.latency_target_seconds", "-1",
     "must be a number greater than 0 and at most 3600"),
    ("defaults: {latency_target_seconds: 0}\n", "defaults.latency_target_seconds", "0", "greater than 0"),
    ("defaults: {latency_target_seconds: 3601}\n", "defaults.latency_target_seconds", "3601", "at most 3600"),
    ("defaults: {latency_target_seconds: fast}\n", "defaults.latency_target_seconds", "fast", "a number"),
    ("defaults: {latency_target_seconds: '0.4'}\n", "defaults.latency_target_seconds", "0.4", "a number"),
    ("defaults: {latency_target_seconds: true}\n", "defaults.latency_target_seconds", "True", "a number"),
    ("defaults: {latency_target_seconds: .nan}\n", "defaults.latency_target_seconds", "nan", "a number"),
    ("defaults: {latency_target_seconds: .inf}\n", "defaults.latency_target_seconds", "inf", "at most 3600"),
    ("defaults: {latency_target_seconds: null}\n", "defaults.latency_target_seconds", None, "a number"),
    ("workloads: [{workload: a}, {workload: b, latency_target_seconds: -1}]\n",
     "workloads[1].latency_target_seconds", "-1", "must be a number greater than 0"),
    ("defaults: {cpu_target_utilization: 0}\n", "defaults.cpu_target_utilization", "0",
     "must be a number greater than 0 and at most 10"),
    ("workloads: [{workload: a, cpu_target_utilization: 60}]\n", "workloads[0].cpu_target_utilization", "60",
     "at most 10"),
    ("defaults: {min_samples: 0}\n", "defaults.min_samples", "0", "must be a whole number of at least 1"),
    ("defaults: {min_samples: 2.5}\n", "defaults.min_samples", "2.5", "whole number"),
    ("defaults: {min_samples: 50.0}\n", "defaults.min_samples", "50.0", "whole number"),
    ("defaults: {min_samples: '50'}\n", "defaults.min_samples", "50", "whole number"),
    ("workloads: [{workload: a, min_samples: false}]\n", "workloads[0].min_samples", "False", "whole number"),
    ("defaults: {cpu_floor: -0.1}\n", "defaults.cpu_floor", "-0.1", "must be a number from 0 to 10"),
    ("defaults: {cpu_floor: 10.5}\n", "defaults.cpu_floor", "10.5", "from 0 to 10"),
    ("defaults: {stale_after_seconds: 0}\n", "defaults.stale_after_seconds", "0",
     "must be a number greater than 0 and at most 86400"),
    ("defaults: {stale_after_seconds: 86401}\n", "defaults.stale_after_seconds", "86401", "at most 86400"),
    ("defaults: {quantile: 0}\n", "defaults.quantile", "0", "between 0 and 1"),
    ("defaults: {quantile: 1}\n", "defaults.quantile", "1", "between 0 and 1"),
    ("defaults: {quantile: 95}\n", "defaults.quantile", "95", "p50, p95, p99, p99.9"),
    ("defaults: {quantile: p42}\n", "defaults.quantile", "p42", "one of p50, p95, p99, p99.9"),
    ("workloads: [{workload: a, quantile: true}]\n", "workloads[0].quantile", "True", "between 0 and 1"),
    ("defaults: {cpu_request_cores: 0}\n", "defaults.cpu_request_cores", "0",
     "must be a number greater than 0, or null"),
    ("defaults: {cpu_request_cores: -1}\n", "defaults.cpu_request_cores", "-1", "greater than 0"),
    ("defaults: {cpu_request_cores: .inf}\n", "defaults.cpu_request_cores", "inf", "greater than 0"),
    ("defaults: {cpu_request_cores: 500m}\n", "defaults.cpu_request_cores", "500m", "a number"),
    # unknown keys
    ("defaults: {latency_target: 0.4}\n", "defaults.latency_target", "0.4", "is not a known key"),
    ("defaults: {workload: checkout}\n", "defaults.workload", "checkout", "is not a known key"),
    ("workloads: [{workload: a}, {workload: b, color: red}]\n", "workloads[1].color", "red",
     "is not a known key; known: "),
    ("canaries: [{namespace: shop, canary: a, baseline: b, weight: 10}]\n", "canaries[0].weight", "10",
     "is not a known key; known: baseline, canary, namespace"),
    # globs
    ("workloads: [{namespace: shop, latency_target_seconds: 1}]\n", "workloads[0].workload", None,
     "is required"),
    ("workloads: [{workload: 42}]\n", "workloads[0].workload", "42", "must be a string"),
    ("workloads: [{workload: ''}]\n", "workloads[0].workload", None, "must be a non-empty glob"),
    ("workloads: [{workload: [a, b]}]\n", "workloads[0].workload", "['a', 'b']", "must be a string"),
    ("workloads: [{workload: a, namespace: ''}]\n", "workloads[0].namespace", None, "non-empty glob"),
    ("workloads: [{workload: a, namespace: 7}]\n", "workloads[0].namespace", "7", "must be a string"),
    ("workloads: [{workload: a, namespace: null}]\n", "workloads[0].namespace", None, "must be a string"),
    # canaries
    ("canaries: [{namespace: shop, canary: checkout, baseline: checkout}]\n", "canaries[0].baseline",
     "checkout", "must differ from canary"),
    ("canaries: [{canary: a, baseline: b}]\n", "canaries[0].namespace", None, "is required"),
    ("canaries: [{namespace: shop, baseline: b}]\n", "canaries[0].canary", None, "is required"),
    ("canaries: [{namespace: shop, canary: a}]\n", "canaries[0].baseline", None, "is required"),
    ("canaries: [{namespace: shop, canary: '', baseline: b}]\n", "canaries[0].canary", None,
     "must not be empty"),
    ("canaries: [{namespace: shop, canary: a, baseline: 7}]\n", "canaries[0].baseline", "7",
     "must be a string"),
    ("canaries: [{namespace: [shop], canary: a, baseline: b}]\n", "canaries[0].namespace", "['shop']",
     "must be a string"),
    ("canaries: [{namespace: shop, canary: a, baseline: b}, {namespace: web, canary: a, baseline: b},\n"
     "           {namespace: shop, canary: a, baseline: c}]\n", "canaries[2].canary", "a",
     "appears twice in namespace 'shop' (first at canaries[0])"),
]


@pytest.mark.parametrize(("text", "key", "value", "problem"), INVALID,
                         ids=[f"{c[1]}:{c[2]}" for c in INVALID])
def test_invalid_policy_names_key_path_and_quotes_value(text: str, key: str, value: str | None,
                                                       problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(text)
    message = str(info.value)
    assert info.value.key == key
    assert message.startswith(f"config key {key!r}: ")
    assert problem in message
    if value is None:
        assert "(got " not in message
    else:
        assert message.endswith(f"(got {value!r})")


def test_the_messages_read_as_documented() -> None:
    examples = {
        "workloads: [{workload: a, latency_target_seconds: -1}]\n":
            "config key 'workloads[0].latency_target_seconds': must be a number greater than 0 and at most "
            "3600 (got '-1')",
        "canaries: [{namespace: shop, canary: checkout, baseline: checkout}]\n":
            "config key 'canaries[0].baseline': must differ from canary (got 'checkout')",
        "defaults: 3\n": "config key 'defaults': must be a mapping (got '3')",
        "workloads: {a: 1}\n":
            "config key 'workloads': must be a list (write [] for none) (got \"{'a': 1}\")",
    }
    for text, expected in examples.items():
        with pytest.raises(ConfigError) as info:
            parse(text)
        assert str(info.value) == expected


def test_unknown_key_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError) as info:
        parse("workloads: [{workload: a, color: red}]\n")
    known = str(info.value).split("known: ", 1)[1]
    for name in ("namespace", "workload", "latency_target_seconds", "cpu_request_cores", "quantile"):
        assert name in known
    with pytest.raises(ConfigError) as info:
        parse("defaults: {color: red}\n")
    assert "latency_target_seconds" in str(info.value) and "workload" not in str(info.value).split(":", 1)[1]


def test_every_policy_settings_field_is_a_policy_key() -> None:
    fields = set(PolicySettings.__dataclass_fields__)
    assert set(policy_config.POLICY_KEYS) == fields
    # and each one can be set in defaults and in a workloads entry
    values = {"latency_target_seconds": 1, "cpu_target_utilization": 2, "min_samples": 3, "cpu_floor": 0,
              "stale_after_seconds": 5, "quantile": 0.5, "cpu_request_cores": 0.25}
    assert set(values) == fields
    policy = policy_from_mapping({"defaults": values, "workloads": [{"workload": "a", **values}]})
    assert policy.defaults == PolicySettings(**values)  # type: ignore[arg-type]
    assert policy.for_workload("ns", "a") == PolicySettings(**values)  # type: ignore[arg-type]


# --- valid files --------------------------------------------------------------------------------------------


def test_no_policy_sections_give_the_defaults() -> None:
    assert PolicyConfig() == PolicyConfig(PolicySettings(), (), ())
    assert settings_from_mapping({"log_level": "info"}).policy == PolicyConfig()
    assert settings_from_mapping(None).policy == PolicyConfig()
    assert PolicyConfig().for_workload("shop", "checkout") == DEFAULTS


def test_empty_lists_and_partial_defaults() -> None:
    policy = parse("defaults: {min_samples: 10}\nworkloads: []\ncanaries: []\n")
    assert policy.defaults == PolicySettings(min_samples=10)
    assert policy.workloads == () and policy.canaries == ()


def test_numbers_quantile_names_and_null_request() -> None:
    policy = parse("""
defaults: {latency_target_seconds: 1, cpu_target_utilization: 1, cpu_floor: 0, stale_after_seconds: 30,
           quantile: p99, cpu_request_cores: 2}
workloads:
  - {workload: batch, quantile: P99.9, cpu_request_cores: null}
  - {workload: api, quantile: 0.9}
  - {workload: half, quantile: p50}
  - {workload: p95, quantile: p95}
""")
    d = policy.defaults
    assert d.latency_target_seconds == 1.0 and isinstance(d.latency_target_seconds, float)
    assert isinstance(d.cpu_floor, float) and isinstance(d.cpu_request_cores, float)
    assert d.quantile == 0.99 and d.cpu_request_cores == 2.0
    batch = policy.for_workload("any", "batch")
    assert batch.quantile == 0.999
    assert batch.cpu_request_cores is None  # null resets the default for this workload
    assert policy.for_workload("any", "api").quantile == 0.9
    assert policy.for_workload("any", "half").quantile == 0.5
    assert policy.for_workload("any", "p95").quantile == 0.95


def test_the_brief_example_is_valid() -> None:
    policy = parse("""
defaults: {latency_target_seconds: 0.25, cpu_target_utilization: 0.6, min_samples: 50,
           cpu_floor: 0.3, stale_after_seconds: 60}
workloads:
  - {namespace: shop, workload: "checkout*", latency_target_seconds: 0.4}
canaries:
  - {namespace: shop, canary: checkout-canary, baseline: checkout}
""")
    assert policy.defaults == DEFAULTS
    assert policy.workloads == (WorkloadOverride("shop", "checkout*", (("latency_target_seconds", 0.4),)),)
    assert policy.canaries == (CanaryPair("shop", "checkout-canary", "checkout"),)
    assert policy.summary() == "1 workload override, 1 canary pair"


def test_policy_from_mapping_ignores_other_sections_and_keeps_base() -> None:
    base = policy_from_mapping({"defaults": {"min_samples": 7}, "workloads": [{"workload": "a"}]})
    policy = policy_from_mapping({"store": {"nonsense": 1}, "defaults": {"cpu_floor": 0.1}}, base)
    assert policy.defaults == PolicySettings(min_samples=7, cpu_floor=0.1)  # key by key over base
    assert policy.workloads == base.workloads
    assert policy_from_mapping({"log_level": "x"}, base) is base


# --- lookups: globs and the override order ------------------------------------------------------------------


LAYERED = """
defaults: {latency_target_seconds: 0.25, min_samples: 50}
workloads:
  - {workload: "*", min_samples: 10}                                    # everything, every namespace
  - {namespace: shop, workload: "checkout*", latency_target_seconds: 0.4}
  - {namespace: "shop", workload: "checkout-canary", latency_target_seconds: 0.5, cpu_floor: 0.1}
  - {namespace: "team-?", workload: "api-[ab]", quantile: p99}
"""


def test_later_matching_entries_override_earlier_ones_key_by_key() -> None:
    policy = parse(LAYERED)
    assert policy.for_workload("shop", "checkout") == PolicySettings(latency_target_seconds=0.4,
                                                                     min_samples=10)
    assert policy.for_workload("shop", "checkout-canary") == PolicySettings(
        latency_target_seconds=0.5, min_samples=10, cpu_floor=0.1)
    # the namespace glob must match too
    assert policy.for_workload("web", "checkout") == PolicySettings(min_samples=10)
    assert policy.for_workload("team-a", "api-b") == PolicySettings(min_samples=10, quantile=0.99)
    assert policy.for_workload("team-ab", "api-b") == PolicySettings(min_samples=10)
    assert policy.for_workload("team-a", "api-c") == PolicySettings(min_samples=10)


def test_order_matters_specific_first_is_overridden_by_broad() -> None:
    policy = parse("""
workloads:
  - {workload: "checkout", latency_target_seconds: 0.4}
  - {workload: "*", latency_target_seconds: 1}
""")
    assert policy.for_workload("shop", "checkout").latency_target_seconds == 1.0


def test_globs_match_whole_names_and_are_case_sensitive() -> None:
    policy = parse('workloads: [{namespace: "sh*", workload: "checkout*", min_samples: 5}]\n')
    assert policy.for_workload("shop", "checkout-v2").min_samples == 5
    assert policy.for_workload("shop", "checkout").min_samples == 5  # * matches nothing too
    assert policy.for_workload("shop", "my-checkout").min_samples == 50  # whole name, not a search
    assert policy.for_workload("shop", "Checkout").min_samples == 50
    assert policy.for_workload("Shop", "checkout").min_samples == 50
    assert policy.for_workload("web-shop", "checkout").min_samples == 50


def test_glob_metacharacters_of_regexes_are_literal() -> None:
    policy = parse('workloads: [{workload: "a.b+", min_samples: 5},\n'
                   '            {workload: "[unclosed", min_samples: 6}]\n')
    assert policy.for_workload("ns", "a.b+").min_samples == 5
    assert policy.for_workload("ns", "axbb").min_samples == 50
    assert policy.for_workload("ns", "[unclosed").min_samples == 6


def test_an_entry_without_policy_keys_changes_nothing() -> None:
    policy = parse("workloads: [{namespace: shop, workload: checkout}]\n")
    assert policy.for_workload("shop", "checkout") == DEFAULTS


# --- canaries -----------------------------------------------------------------------------------------------


def test_canary_lookup_is_exact_and_per_namespace() -> None:
    policy = parse("""
canaries:
  - {namespace: shop, canary: checkout-canary, baseline: checkout}
  - {namespace: web, canary: checkout-canary, baseline: checkout-stable}
""")
    assert policy.canary_of("shop", "checkout-canary") == CanaryPair("shop", "checkout-canary", "checkout")
    assert policy.canary_of("web", "checkout-canary") == CanaryPair("web", "checkout-canary",
                                                                    "checkout-stable")
    assert policy.canary_of("shop", "checkout") is None  # a baseline is not a canary
    assert policy.canary_of("other", "checkout-canary") is None
    assert policy.canary_of("shop", "checkout-*") is None  # names, not globs
    assert policy.summary() == "0 workload overrides, 2 canary pairs"


def test_baseline_of_and_the_metrics_lookup_protocol() -> None:
    from adapter.dual_signal import PolicyLookup

    policy = parse("canaries: [{namespace: shop, canary: checkout-canary, baseline: checkout}]\n")
    lookup: PolicyLookup = policy  # what the metrics code asks of the policy
    assert lookup.baseline_of("shop", "checkout-canary") == "checkout"
    assert lookup.baseline_of("shop", "checkout") is None
    assert lookup.baseline_of("web", "checkout-canary") is None
    assert lookup.for_workload("shop", "checkout") == DEFAULTS


# --- the memo -----------------------------------------------------------------------------------------------


def _unmemoised(policy: PolicyConfig, namespace: str, workload: str) -> PolicySettings:
    return PolicyConfig(policy.defaults, policy.workloads, policy.canaries).for_workload(namespace, workload)


def test_memoised_answers_equal_fresh_ones() -> None:
    policy = parse(LAYERED)
    names = [("shop", "checkout"), ("shop", "checkout-canary"), ("web", "checkout"), ("team-a", "api-a")]
    first = [policy.for_workload(ns, wl) for ns, wl in names]
    again = [policy.for_workload(ns, wl) for ns, wl in names]
    assert [a is b for a, b in zip(first, again, strict=True)] == [True] * len(names)
    assert first == [_unmemoised(policy, ns, wl) for ns, wl in names]
    assert policy.memoised == len(names)


def test_memo_is_bounded_and_stays_correct(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(policy_config, "MEMO_MAX", 3)
    policy = parse(LAYERED)
    for i in range(20):
        for ns, wl in (("shop", f"checkout-{i}"), ("web", f"w{i}"), ("shop", "checkout-canary")):
            assert policy.for_workload(ns, wl) == _unmemoised(policy, ns, wl)
            assert policy.memoised <= 3


def test_no_overrides_needs_no_memo() -> None:
    policy = parse("defaults: {min_samples: 3}\n")
    assert policy.for_workload("shop", "checkout") is policy.defaults
    assert policy.memoised == 0


def test_memo_does_not_affect_equality_or_hash() -> None:
    a, b = parse(LAYERED), parse(LAYERED)
    a.for_workload("shop", "checkout")
    assert a == b and hash(a) == hash(b)
    assert a != parse("workloads: [{workload: x}]\n")


# --- the watcher --------------------------------------------------------------------------------------------


POLICY_A = """
log_level: info
defaults: {min_samples: 50}
workloads: [{namespace: shop, workload: "checkout*", latency_target_seconds: 0.4}]
"""
POLICY_B = POLICY_A.replace("0.4", "0.5")


class Files:
    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, text: str) -> None:
        # A new inode each time, as a ConfigMap update (a symlink swap) or an editor's save gives.
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(self.path)


@pytest.fixture
def files(tmp_path: Path) -> Files:
    return Files(tmp_path / "config.yaml")


def events(caplog: pytest.LogCaptureFixture, event: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "fields", {}).get("event") == event]


def watcher_for(files: Files, text: str) -> PolicyWatcher:
    files.write(text)
    settings = load_settings(files.path)
    assert settings.config_path == files.path
    return PolicyWatcher(files.path, settings.policy)


def test_unchanged_file_is_not_reloaded(files: Files, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="adapter.config")
    watcher = watcher_for(files, POLICY_A)
    for _ in range(3):
        assert watcher.check() is None
    files.write(POLICY_A)  # same bytes, new inode and mtime: hashed, found equal
    assert watcher.check() is None
    assert (watcher.reloads, watcher.reload_failures) == (0, 0)
    assert caplog.records == []


def test_unchanged_stat_is_not_even_read(files: Files, monkeypatch: pytest.MonkeyPatch) -> None:
    files.write(POLICY_A)
    mtime = os.stat(files.path).st_mtime
    watcher = PolicyWatcher(files.path, load_settings(files.path).policy, clock=lambda: mtime + 100)

    def no_open(*_: Any, **__: Any) -> Any:
        raise AssertionError("the file was read although its stat did not change")

    monkeypatch.setattr(policy_config, "open", no_open, raising=False)
    assert watcher.check() is None


def test_a_recently_modified_file_is_hashed_even_with_the_same_stat(files: Files) -> None:
    files.write(POLICY_A)
    now = time.time()
    watcher = PolicyWatcher(files.path, load_settings(files.path).policy, clock=lambda: now)
    st = os.stat(files.path)
    files.path.write_text(POLICY_B, encoding="utf-8")  # same size, same inode
    os.utime(files.path, ns=(st.st_atime_ns, st.st_mtime_ns))  # and the same mtime
    new = watcher.check()
    assert new is not None and new.for_workload("shop", "checkout").latency_target_seconds == 0.5


def test_valid_change_is_applied_and_logged(files: Files, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="adapter.config")
    watcher = watcher_for(files, POLICY_A)
    old = watcher.current
    files.write(POLICY_B)
    new = watcher.check()
    assert new is not None and new is watcher.current and new != old
    assert new.for_workload("shop", "checkout-v2").latency_target_seconds == 0.5
    assert watcher.reloads == 1 and watcher.reload_failures == 0 and watcher.last_reload_at is not None
    assert watcher.check() is None  # applied once
    [record] = events(caplog, "policy_reloaded")
    assert record.name == "adapter.config"
    line = json.loads(JsonFormatter().format(record))  # one JSON line, as the service logs it
    assert line["event"] == "policy_reloaded" and line["changed"] is True
    assert line["workload_overrides"] == 1 and line["canary_pairs"] == 0
    assert line["path"] == str(files.path)


def test_invalid_change_keeps_the_old_policy_counted_and_logged_once(
        files: Files, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="adapter.config")
    watcher = watcher_for(files, POLICY_A)
    old = watcher.current
    files.write(POLICY_A.replace("0.4", "-1"))
    for _ in range(3):
        assert watcher.check() is None
    assert watcher.current is old
    assert watcher.reload_failures == 1 and watcher.reloads == 0
    assert watcher.last_error is not None and "'workloads[0].latency_target_seconds'" in watcher.last_error
    assert "'-1'" in watcher.last_error
    [record] = events(caplog, "policy_reload_failed")
    assert record.levelno == logging.WARNING
    assert record.fields["key"] == "workloads[0].latency_target_seconds"  # type: ignore[attr-defined]
    assert watcher.last_error in record.fields["error"]  # type: ignore[attr-defined]

    files.write(POLICY_A.replace("0.4", "-2"))  # another bad content: counted and logged again
    assert watcher.check() is None
    assert watcher.reload_failures == 2 and len(events(caplog, "policy_reload_failed")) == 2

    files.write(POLICY_B)  # fixed
    new = watcher.check()
    assert new is not None and new.for_workload("shop", "checkout").latency_target_seconds == 0.5
    assert watcher.last_error is None and watcher.reload_failures == 2


def test_a_bad_key_in_any_section_refuses_the_whole_reload(files: Files) -> None:
    watcher = watcher_for(files, POLICY_A)
    files.write(POLICY_B + "store: {window_second: 60}\n")
    assert watcher.check() is None
    assert watcher.last_error is not None and "store.window_second" in watcher.last_error
    assert watcher.current.for_workload("shop", "checkout").latency_target_seconds == 0.4


def test_invalid_yaml_and_missing_file_are_refused_once(files: Files,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="adapter.config")
    watcher = watcher_for(files, POLICY_A)
    files.write("workloads: [\n")
    assert watcher.check() is None and watcher.check() is None
    assert watcher.last_error is not None and "not valid YAML" in watcher.last_error
    files.path.unlink()
    assert watcher.check() is None and watcher.check() is None
    assert watcher.last_error is not None and "cannot be read" in watcher.last_error
    assert watcher.reload_failures == 2 and len(events(caplog, "policy_reload_failed")) == 2
    files.write(POLICY_A)  # back as it was: valid, nothing to apply
    assert watcher.check() is None
    assert watcher.last_error is None


def test_a_comment_only_change_is_read_but_applies_nothing(files: Files,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="adapter.config")
    watcher = watcher_for(files, POLICY_A)
    old = watcher.current
    files.write(POLICY_A + "# reviewed\n")
    assert watcher.check() is None
    assert watcher.current is old
    [record] = events(caplog, "policy_reloaded")
    assert record.fields["changed"] is False  # type: ignore[attr-defined]


def test_store_change_is_logged_once_as_needing_a_restart(files: Files,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="adapter.config")
    watcher = watcher_for(files, POLICY_A)
    files.write(POLICY_A + "store: {max_series: 500}\n")
    assert watcher.check() is None  # the policy did not change, and store is not applied live
    assert watcher.restart_required
    [record] = events(caplog, "config_restart_required")
    assert record.levelno == logging.WARNING
    assert record.fields["sections"] == ["store"]  # type: ignore[attr-defined]

    files.write(POLICY_B + "store: {max_series: 500}\n")  # a policy change on top: applied, no new warning
    assert watcher.check() is not None
    assert len(events(caplog, "config_restart_required")) == 1

    files.write(POLICY_B.replace("log_level: info", "log_level: debug") + "otlp: {max_streams: 9}\n")
    assert watcher.check() is None
    [_, second] = events(caplog, "config_restart_required")
    assert second.fields["sections"] == ["otlp"]  # type: ignore[attr-defined]  # log_level is live
    assert watcher.live_changed and watcher.settings is not None
    assert watcher.settings.log_level == "debug"

    files.write(POLICY_B)  # back to what the process runs with
    assert watcher.check() is None
    assert not watcher.restart_required


def test_a_change_before_the_watcher_started_is_returned_first(files: Files) -> None:
    files.write(POLICY_A)
    started = load_settings(files.path)
    files.write(POLICY_B)
    watcher = PolicyWatcher(files.path, started.policy)
    new = watcher.check()
    assert new is not None and new.for_workload("shop", "checkout").latency_target_seconds == 0.5
    assert watcher.check() is None


def test_a_new_policy_starts_with_an_empty_memo(files: Files) -> None:
    watcher = watcher_for(files, POLICY_A)
    assert watcher.current.for_workload("shop", "checkout").latency_target_seconds == 0.4
    files.write(POLICY_B)
    new = watcher.check()
    assert new is not None and new.memoised == 0
    assert new.for_workload("shop", "checkout").latency_target_seconds == 0.5


async def test_watch_hands_new_policies_to_apply_and_survives_errors(
        files: Files, caplog: pytest.LogCaptureFixture) -> None:
    watcher = watcher_for(files, POLICY_A)
    applied: list[PolicyConfig] = []

    def apply(policy: PolicyConfig) -> None:
        applied.append(policy)
        if len(applied) == 1:
            raise RuntimeError("boom")  # a failing apply must not stop the watcher

    task = asyncio.create_task(watcher.watch(apply, interval=0.01))
    try:
        files.write(POLICY_B)
        for _ in range(500):
            if applied:
                break
            await asyncio.sleep(0.01)
        files.write(POLICY_A)
        for _ in range(500):
            if len(applied) == 2:
                break
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert [p.for_workload("shop", "checkout").latency_target_seconds for p in applied] == [0.5, 0.4]
    assert events(caplog, "policy_reload_error")


# --- the ``source`` key ----------------------------------------------------------------------------------

PROMETHEUS = "sources: {prometheus: {url: 'http://prometheus:9090'}}\n"


def test_source_defaults_to_otlp_and_follows_the_override_rule() -> None:
    assert PolicyConfig().source_of("shop", "checkout") == ("otlp",)
    policy = parse(PROMETHEUS + """
defaults: {source: prometheus}
workloads:
  - {namespace: shop, workload: "*", source: otlp}
  - {namespace: shop, workload: cart, source: [otlp, prometheus]}
  - {namespace: shop, workload: cart, latency_target_seconds: 0.4}
""")
    assert policy.source_of("other", "checkout") == ("prometheus",)
    assert policy.source_of("shop", "checkout") == ("otlp",)
    assert policy.source_of("shop", "cart") == ("otlp", "prometheus")  # an entry without source keeps it
    assert policy.for_workload("shop", "cart") == PolicySettings(latency_target_seconds=0.4)


@pytest.mark.parametrize(("text", "key"), [
    ("defaults: {source: victoria}", "defaults.source"),
    ("defaults: {source: []}", "defaults.source"),
    ("workloads: [{workload: a, source: [otlp, graphite]}]", "workloads[0].source[1]"),
    ("workloads: [{workload: a, source: [otlp, otlp]}]", "workloads[0].source"),
    ("workloads: [{workload: a, source: 3}]", "workloads[0].source"),
    ("workloads: [{workload: a}, {workload: b, source: {a: 1}}]", "workloads[1].source"),
])
def test_bad_source_names_the_key_path(text: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(PROMETHEUS + text)
    assert info.value.key == key
    assert "otlp" in str(info.value)


def test_source_prometheus_needs_the_sources_section() -> None:
    with pytest.raises(ConfigError, match=r"sources\.prometheus is not configured") as info:
        parse("workloads: [{workload: a, source: prometheus}]")
    assert info.value.key == "workloads[0].source"


def test_source_changes_the_policy_and_survives_policy_from_mapping() -> None:
    base = policy_from_mapping({"defaults": {"source": ["prometheus", "otlp"]}})
    assert base.default_source == ("prometheus", "otlp")
    assert base != PolicyConfig()
    assert policy_from_mapping({"canaries": []}, base).default_source == ("prometheus", "otlp")


@pytest.mark.parametrize("section", ["cpu: {poll_seconds: 30}\n", "traces: {exemplar_info: false}\n",
                                     "sources: {prometheus: {url: 'http://prometheus:9090'}}\n"])
def test_other_restart_only_sections_are_flagged_too(files: Files, caplog: pytest.LogCaptureFixture,
                                                     section: str) -> None:
    caplog.set_level(logging.INFO, logger="adapter.config")
    watcher = watcher_for(files, POLICY_A)
    files.write(POLICY_A + section)
    assert watcher.check() is None
    assert watcher.restart_required
    [record] = events(caplog, "config_restart_required")
    assert record.fields["sections"] == [section.split(":")[0]]  # type: ignore[attr-defined]


def test_limits_and_log_level_are_applied_live_without_a_restart(files: Files) -> None:
    watcher = watcher_for(files, POLICY_A)
    files.write(POLICY_A + "limits: {otlp_high_water_requests: 3, max_spans_per_request: 100}\n")
    assert watcher.check() is None  # the policy is the same
    assert watcher.live_changed and not watcher.restart_required
    assert watcher.settings is not None
    assert watcher.settings.limits.otlp_high_water_requests == 3
    assert watcher.settings.limits.max_spans_per_request == 100
    watcher.live_changed = False
    files.write(POLICY_A + "limits: {otlp_high_water_requests: -3}\n")  # refused: the old limits stay
    assert watcher.check() is None
    assert not watcher.live_changed and watcher.reload_failures == 1
    assert watcher.last_error is not None and "limits.otlp_high_water_requests" in watcher.last_error
    assert watcher.settings.limits.otlp_high_water_requests == 3


def test_server_section_needs_a_restart(files: Files) -> None:
    watcher = watcher_for(files, POLICY_A)
    files.write(POLICY_A + "server: {header_timeout_seconds: 3}\n")
    assert watcher.check() is None
    assert watcher.restart_required and not watcher.live_changed
