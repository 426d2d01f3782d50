"""Tests for adapter.model: label values a Kubernetes selector can name, and the frozen value objects."""

from __future__ import annotations

import dataclasses
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapter.model import LABEL_VALUE_MAX, Exemplar, Reading, SeriesKey, label_value

# k8s.io/apimachinery/pkg/util/validation: IsValidLabelValue (at most 63 characters, may be empty).
K8S_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/cart/{id}", "cart_id"),
        ("/api/v1/users/{user_id}/orders", "api_v1_users_user_id_orders"),
        ("/users/:id/profile", "users_id_profile"),
        ("checkout", "checkout"),
        ("Checkout-Service.v2", "Checkout-Service.v2"),  # already valid: unchanged
        ("a b   c", "a_b_c"),  # a run of invalid characters becomes one "_"
        ("a/{b}/c", "a_b_c"),
        ("-edge-", "edge"),  # must start and end alphanumeric
        ("._x_.", "x"),
        ("café", "caf"),  # non-ASCII is not valid in a label value
        ("GET /items?id=1", "GET_items_id_1"),
        ("a\nb", "a_b"),
    ],
)
def test_label_value_cases(text: str, expected: str) -> None:
    assert label_value(text) == expected


@pytest.mark.parametrize("text", ["", "/", "{}", "///", "ü", "-_."])
def test_label_value_nothing_valid_left_gives_the_callers_default(text: str) -> None:
    assert label_value(text) == ""
    assert label_value(text, "root") == "root"


def test_label_value_is_cut_to_63_characters() -> None:
    assert LABEL_VALUE_MAX == 63
    assert label_value("a" * 100) == "a" * 63
    # The cut must not leave a trailing separator: 62 letters, then "/" at position 63.
    assert label_value("a" * 62 + "/" + "b" * 10) == "a" * 62
    assert label_value("/" + "x" * 70 + "/") == "x" * 63


@given(st.text(max_size=200))
def test_label_value_is_always_a_valid_kubernetes_label_value(text: str) -> None:
    value = label_value(text)
    assert len(value) <= LABEL_VALUE_MAX
    assert K8S_LABEL_VALUE.fullmatch(value), value
    assert label_value(value) == value  # idempotent: a sanitised value is a fixed point


@given(st.from_regex(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?", fullmatch=True))
def test_label_value_keeps_valid_values_unchanged(text: str) -> None:
    assert label_value(text) == text


def test_series_key_labels() -> None:
    assert SeriesKey("shop", "checkout").labels() == {"workload": "checkout"}
    assert SeriesKey("shop", "checkout", "cart_id").labels() == {"workload": "checkout", "route": "cart_id"}
    # The namespace comes from the request path, never from the labels a selector sees.
    assert "namespace" not in SeriesKey("shop", "checkout", "r").labels()


def test_series_key_equality_and_hash() -> None:
    a = SeriesKey("shop", "checkout", "cart_id")
    assert a == SeriesKey("shop", "checkout", "cart_id")
    assert a != SeriesKey("shop", "checkout")
    assert a != SeriesKey("other", "checkout", "cart_id")
    assert len({a, SeriesKey("shop", "checkout", "cart_id"), SeriesKey("shop", "checkout")}) == 2


@pytest.mark.parametrize(
    ("obj", "attr", "value"),
    [
        (SeriesKey("shop", "checkout"), "workload", "other"),
        (Exemplar(0.1, "ab" * 16), "seconds", 1.0),
        (Reading("latency_p95_seconds", 0.1, 1.0, 60), "value", 2.0),
    ],
)
def test_value_objects_are_frozen(obj: object, attr: str, value: object) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(obj, attr, value)


def test_reading_labels_default_is_not_shared() -> None:
    a = Reading("m", 1.0, 0.0, 60)
    b = Reading("m", 1.0, 0.0, 60)
    assert a.labels == {} and a.labels is not b.labels
