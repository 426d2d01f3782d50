"""Tests for adapter.config and ``latency-adapter check-config``.

A bad config file must fail at start with a message that names the key path and quotes the bad value,
so whoever is paged can fix the file without reading code.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import adapter.config
from adapter.cli import main
from adapter.config import Settings, load_settings, settings_from_mapping
from adapter.errors import MAX_QUOTED, ConfigError
from adapter.policy import PolicySettings
from adapter.policy_config import CanaryPair, PolicyConfig
from adapter.sources.otlp import ReceiverSettings
from adapter.sources.otlp_ingest import IngestSettings
from adapter.store import StoreSettings


def write(tmp_path: Path, text: str | bytes, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


# --- valid files -----------------------------------------------------------------------------------------


def test_defaults_without_a_file() -> None:
    settings = load_settings(None)
    assert settings == Settings()
    assert settings.store == StoreSettings()
    assert settings.store.window_seconds == 60 and settings.store.slice_seconds == 5
    assert settings.ingest == IngestSettings()
    assert settings.receiver == ReceiverSettings()
    assert settings.log_level == "info"
    assert settings.insecure_no_auth is False  # authentication is never off by default
    assert settings.policy == PolicyConfig()
    assert settings.policy.defaults == PolicySettings() and settings.policy.workloads == ()
    assert settings.config_path is None


@pytest.mark.parametrize("text", ["", "# only a comment\n", "---\n"])
def test_empty_file_gives_defaults(tmp_path: Path, text: str) -> None:
    assert load_settings(write(tmp_path, text)) == Settings()


def test_documented_example_loads(tmp_path: Path) -> None:
    """The example in adapter/config.py's docstring (what the README shows) must be a valid file."""
    path = write(tmp_path, """
store:  {window_seconds: 120, slice_seconds: 10, max_series: 500, max_series_per_namespace: 50}
otlp:   {max_body_bytes: 4194304, max_decompressed_bytes: 16777216, default_namespace: apps,
         split_routes: false, max_label_length: 64}
log_level: DEBUG
defaults: {latency_target_seconds: 0.3, min_samples: 20}
workloads:
  - {namespace: shop, workload: "checkout*", latency_target_seconds: 0.4}
canaries:
  - {namespace: shop, canary: checkout-canary, baseline: checkout}
""")
    settings = load_settings(path)
    assert settings.config_path == path
    assert settings.policy.defaults == PolicySettings(latency_target_seconds=0.3, min_samples=20)
    assert settings.policy.for_workload("shop", "checkout-v2") == PolicySettings(
        latency_target_seconds=0.4, min_samples=20)
    assert settings.policy.canary_of("shop", "checkout-canary") == CanaryPair("shop", "checkout-canary",
                                                                              "checkout")
    assert settings.store == StoreSettings(window_seconds=120, slice_seconds=10, max_series=500,
                                           max_series_per_namespace=50)
    assert settings.store.slices == 12
    assert settings.ingest.default_namespace == "apps"
    assert settings.ingest.split_routes is False
    assert settings.ingest.max_label_length == 64
    assert settings.receiver == ReceiverSettings(max_body_bytes=4194304, max_decompressed_bytes=16777216)
    assert settings.log_level == "debug"
    # Keys not in the file keep their defaults.
    assert settings.ingest.max_streams == IngestSettings().max_streams
    assert settings.store.refresh_seconds == StoreSettings().refresh_seconds
    assert settings.store.relative_accuracy == StoreSettings().relative_accuracy


def test_module_docstring_example_loads() -> None:
    """The YAML block of adapter/config.py's docstring is a valid file, every section included."""
    doc = adapter.config.__doc__
    assert doc is not None
    block = doc.split("```yaml\n", 1)[1].split("```", 1)[0]
    parsed = yaml.safe_load(block)
    assert {"store", "otlp", "log_level", "defaults", "workloads", "canaries"} <= set(parsed)
    settings = settings_from_mapping(parsed)
    assert settings.policy.summary() == "1 workload override, 1 canary pair"


def test_where_settings_came_from_is_not_part_of_their_value(tmp_path: Path) -> None:
    path = write(tmp_path, "log_level: info\n")
    settings = load_settings(path)
    assert settings.config_path == path
    assert settings == Settings()


def test_refresh_seconds_may_be_any_fraction_up_to_the_slice() -> None:
    store = {"slice_seconds": 10, "window_seconds": 60, "refresh_seconds": 7}
    settings = settings_from_mapping({"store": store})
    assert settings.store.refresh_seconds == 7.0
    assert settings_from_mapping({"store": {"refresh_seconds": 0.5}}).store.refresh_seconds == 0.5


def test_integer_accepted_for_a_float_key() -> None:
    settings = settings_from_mapping({"store": {"relative_accuracy": 0.01}})
    assert settings.store.relative_accuracy == 0.01
    with pytest.raises(ConfigError):
        settings_from_mapping({"store": {"relative_accuracy": 1}})  # a number, but out of range


def test_base_settings_are_kept_for_keys_not_in_the_file() -> None:
    base = Settings(api_port=7443)
    settings = settings_from_mapping({"store": {"max_series": 7}}, base)
    assert settings.api_port == 7443
    assert settings.store.max_series == 7


# --- invalid values: every message names the key path and quotes the value -------------------------------

INVALID = [
    # (YAML, key path, value as the user wrote it, words of the problem)
    ("stor: {window_seconds: 60}\n", "stor", "window_seconds", "not a known section"),
    ("store: {window_second: 60}\n", "store.window_second", "60", "not a known key"),
    ("otlp: {split_route: true}\n", "otlp.split_route", "True", "not a known key"),
    ("store: {window_seconds: '60'}\n", "store.window_seconds", "60", "whole number"),
    ("store: {window_seconds: 60.5}\n", "store.window_seconds", "60.5", "whole number"),
    ("store: {window_seconds: true}\n", "store.window_seconds", "True", "whole number"),
    ("store: {relative_accuracy: fine}\n", "store.relative_accuracy", "fine", "number"),
    ("otlp: {split_routes: 'yes'}\n", "otlp.split_routes", "yes", "true or false"),
    ("otlp: {default_namespace: 42}\n", "otlp.default_namespace", "42", "string"),
    ("store: {window_seconds: 0}\n", "store.window_seconds", "0", "between 1 and 3600"),
    ("store: {window_seconds: 7200}\n", "store.window_seconds", "7200", "between 1 and 3600"),
    ("store: {slice_seconds: -5}\n", "store.slice_seconds", "-5", "between 1 and 600"),
    ("store: {max_series: 0}\n", "store.max_series", "0", "at least 1"),
    ("store: {max_series_per_namespace: -1}\n", "store.max_series_per_namespace", "-1", "at least 1"),
    ("store: {relative_accuracy: 0.5}\n", "store.relative_accuracy", "0.5", "between 0.0001 and 0.05"),
    ("store: {relative_accuracy: .nan}\n", "store.relative_accuracy", "nan", "between"),
    ("otlp: {max_body_bytes: 10}\n", "otlp.max_body_bytes", "10", "between 1024"),
    ("otlp: {max_label_length: 0}\n", "otlp.max_label_length", "0", "between 1 and 1024"),
    ("otlp: {max_streams: 0}\n", "otlp.max_streams", "0", "at least 1"),
    ("otlp: {default_namespace: ''}\n", "otlp.default_namespace", "", "namespace"),
    ("otlp: {max_body_bytes: 2048, max_decompressed_bytes: 1024}\n", "otlp.max_decompressed_bytes", "1024",
     "at least otlp.max_body_bytes"),
    ("store: 60\n", "store", "60", "mapping"),
    ("log_level: loud\n", "log_level", "loud", "one of debug, info, warning, error"),
    ("log_level: 3\n", "log_level", "3", "string"),
    ("- store\n- otlp\n", "<root>", "store", "mapping"),
    ("store: {window_seconds: 62}\n", "store.window_seconds", "62", "whole number of slices"),
    ("store: {refresh_seconds: 0.01}\n", "store.refresh_seconds", "0.01", "between 0.1 and 600"),
    ("store: {refresh_seconds: 10}\n", "store.refresh_seconds", "10", "at most store.slice_seconds (5)"),
    # the policy sections (tested in depth in test_policy_config.py)
    ("defaults: fast\n", "defaults", "fast", "must be a mapping"),
    ("workloads: [{workload: a, latency_target_seconds: -1}]\n", "workloads[0].latency_target_seconds", "-1",
     "must be a number greater than 0"),
    ("canaries: [{namespace: shop, canary: a, baseline: a}]\n", "canaries[0].baseline", "a",
     "must differ from canary"),
]


@pytest.mark.parametrize(("text", "key", "value", "problem"), INVALID,
                         ids=[c[1] + ":" + c[2] for c in INVALID])
def test_invalid_config_names_key_and_quotes_value(tmp_path: Path, text: str, key: str, value: str,
                                                  problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text))
    message = str(info.value)
    assert info.value.key == key
    assert repr(key) in message  # the key path, quoted
    assert value in message  # the bad value, as written
    assert problem in message


def test_unknown_section_and_key_list_what_is_known() -> None:
    with pytest.raises(ConfigError) as info:
        settings_from_mapping({"stor": {}})
    assert "log_level" in str(info.value) and "otlp" in str(info.value) and "store" in str(info.value)
    for section in ("defaults", "workloads", "canaries"):
        assert section in str(info.value)
    with pytest.raises(ConfigError) as info:
        settings_from_mapping({"store": {"window_second": 60}})
    assert "window_seconds" in str(info.value) and "slice_seconds" in str(info.value)
    with pytest.raises(ConfigError) as info:
        settings_from_mapping({"otlp": {"nope": 1}})
    # otlp feeds two settings classes; both sets of keys are known
    assert "default_namespace" in str(info.value) and "max_body_bytes" in str(info.value)


def test_window_not_a_multiple_of_slice_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, "store: {window_seconds: 60, slice_seconds: 7}\n"))
    message = str(info.value)
    assert "window_seconds" in message and "60" in message and "7" in message


def test_window_not_a_multiple_of_slice_names_the_key_path_and_both_values(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, "store: {slice_seconds: 7}\n"))
    message = str(info.value)
    assert "'store.window_seconds'" in message
    assert "'60'" in message and "7" in message  # the effective window, quoted, and the slice


def test_long_values_are_quoted_but_capped() -> None:
    with pytest.raises(ConfigError) as info:
        settings_from_mapping({"otlp": {"default_namespace": "n" * 5000}})
    message = str(info.value)
    assert "otlp.default_namespace" in message
    assert "n" * MAX_QUOTED in message and "n" * (MAX_QUOTED + 1) not in message
    assert len(message) < 1000


def test_invalid_yaml_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "store: {window_seconds: 60\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert info.value.key == "--config"
    assert str(path) in str(info.value)
    assert "not valid YAML" in str(info.value)


def test_yaml_python_tags_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "store: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(path)


@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_unreadable_file_names_the_file(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "nope.yaml" if kind == "missing" else tmp_path
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert info.value.key == "--config"
    assert str(path) in str(info.value)
    assert "cannot be read" in str(info.value)


def test_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = write(tmp_path, b"store:\n  window_seconds: 60  # caf\xe9\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert info.value.key == "--config"
    assert str(path) in str(info.value) and "UTF-8" in str(info.value)


def test_check_config_of_a_non_utf8_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, b"log_level: \xff\n")
    assert main(["check-config", str(path)]) == 2
    assert "UTF-8" in capsys.readouterr().err


# --- check-config ----------------------------------------------------------------------------------------


def test_check_config_valid_exits_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "store: {window_seconds: 30, slice_seconds: 5}\nlog_level: warning\n")
    assert main(["check-config", str(path)]) == 0
    out, err = capsys.readouterr()
    assert out == f"{path}: ok: 0 workload overrides, 0 canary pairs\n"
    assert err == ""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("store: {window_seconds: 0}\n", ["store.window_seconds", "'0'"]),
        ("otlp: {bogus: 1}\n", ["otlp.bogus", "not a known key"]),
        ("store: [\n", ["not valid YAML"]),
    ],
)
def test_check_config_invalid_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str,
                                      expected: list[str]) -> None:
    path = write(tmp_path, text)
    assert main(["check-config", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert str(path) in err and "invalid" in err
    for word in expected:
        assert word in err


def test_check_config_missing_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(tmp_path / "absent.yaml")]) == 2
    _, err = capsys.readouterr()
    assert "absent.yaml" in err and "cannot be read" in err


def test_check_config_without_file_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["check-config"])
    assert info.value.code == 2
    assert "file" in capsys.readouterr().err
