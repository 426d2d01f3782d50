"""Tests for :class:`adapter.kube.WorkloadSelector`: a workload's ``spec.selector`` as a list query.

The expected strings are what ``metav1.LabelSelectorAsSelector(...).String()`` writes: requirements
sorted by key, set values sorted, ``In``/``NotIn``/``Exists``/``DoesNotExist`` as ``in``, ``notin``, a bare
key and ``!key``. The errors are the ones ``LabelSelectorAsSelector`` returns.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapter.errors import BadSelector
from adapter.kube import WorkloadSelector
from adapter.selector import parse_selector


def deployment(match_labels: Mapping[str, str] | None = None,
               *expressions: tuple[str, str, tuple[str, ...]]) -> WorkloadSelector:
    return WorkloadSelector("Deployment", dict(match_labels or {}), tuple(expressions))


@pytest.mark.parametrize(("selector", "text"), [
    (deployment({"app": "web"}), "app=web"),
    (deployment({"b": "2", "a": "1"}), "a=1,b=2"),
    (deployment(None, ("tier", "In", ("web", "api"))), "tier in (api,web)"),
    (deployment(None, ("tier", "In", ("web",))), "tier in (web)"),
    (deployment(None, ("track", "NotIn", ("canary", "beta"))), "track notin (beta,canary)"),
    (deployment(None, ("team", "Exists", ())), "team"),
    (deployment(None, ("legacy", "DoesNotExist", ())), "!legacy"),
    (deployment({"a": "b"}, ("c", "In", ("y", "x")), ("d", "DoesNotExist", ()), ("e", "Exists", ())),
     "a=b,c in (x,y),!d,e"),
    # Sorted by key whatever the order in the object, match labels and expressions mixed.
    (deployment({"z": "1"}, ("m", "Exists", ()), ("a", "NotIn", ("q",))), "a notin (q),m,z=1"),
    # Prefixed keys and the empty value are valid label syntax.
    (deployment({"app.kubernetes.io/name": "shop", "empty": ""}), "app.kubernetes.io/name=shop,empty="),
])
def test_label_selector_text(selector: WorkloadSelector, text: str) -> None:
    assert selector.label_selector() == text
    # The text parses back to the same selector, so the API server reads what we meant.
    assert parse_selector(text) == selector.selector()


def test_an_empty_selector_selects_everything() -> None:
    empty = WorkloadSelector("StatefulSet")
    assert empty.label_selector() == ""
    assert empty.selector().is_empty()
    assert empty.selector().matches({"anything": "at-all"})


@pytest.mark.parametrize(("selector", "problem"), [
    (deployment(None, ("a", "Gt", ("1",))), r"'Gt' is not a valid label selector operator"),
    (deployment(None, ("a", "in", ("x",))), r"'in' is not a valid label selector operator"),
    (deployment(None, ("a", "In", ())), r"'in' needs at least one value"),
    (deployment(None, ("a", "NotIn", ())), r"'notin' needs at least one value"),
    (deployment(None, ("a", "Exists", ("x",))), r"'exists' takes no values"),
    (deployment(None, ("a", "DoesNotExist", ("x",))), r"'!' takes no values"),
    (deployment({"-bad": "x"}), r"key .*-bad.* is invalid"),
    (deployment({"a": "not ok"}), r"value .*not ok.* is invalid"),
])
def test_selectors_kubernetes_refuses_are_errors(selector: WorkloadSelector, problem: str) -> None:
    with pytest.raises(BadSelector, match=problem):
        selector.label_selector()


def test_workload_selector_is_frozen() -> None:
    selector = deployment({"app": "web"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        selector.kind = "StatefulSet"  # type: ignore[misc]


def label_selector_matches(selector: WorkloadSelector, labels: Mapping[str, str]) -> bool:
    """The ``metav1.LabelSelector`` semantics written out directly, as the reference."""
    if any(labels.get(key) != value for key, value in selector.match_labels.items()):
        return False
    for key, operator, values in selector.match_expressions:
        present = key in labels
        ok = {
            "In": present and labels.get(key) in values,
            "NotIn": not present or labels.get(key) not in values,
            "Exists": present,
            "DoesNotExist": not present,
        }[operator]
        if not ok:
            return False
    return True


KEYS = st.sampled_from(["app", "tier", "team", "example.com/track"])
VALUES = st.sampled_from(["", "a", "b", "c"])
EXPRESSIONS = st.one_of(
    st.tuples(KEYS, st.sampled_from(["In", "NotIn"]), st.lists(VALUES, min_size=1, max_size=3).map(tuple)),
    st.tuples(KEYS, st.sampled_from(["Exists", "DoesNotExist"]), st.just(())),
)


@settings(max_examples=300, deadline=None)
@given(match_labels=st.dictionaries(KEYS, VALUES, max_size=2),
       expressions=st.lists(EXPRESSIONS, max_size=4),
       labels=st.dictionaries(KEYS, VALUES, max_size=4))
def test_the_query_selects_what_the_label_selector_selects(
        match_labels: dict[str, str], expressions: list[tuple[str, str, tuple[str, ...]]],
        labels: dict[str, str]) -> None:
    selector = WorkloadSelector("Deployment", match_labels, tuple(expressions))
    query = parse_selector(selector.label_selector())
    assert query.matches(labels) == label_selector_matches(selector, labels)
