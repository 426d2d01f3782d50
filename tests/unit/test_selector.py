"""Tests for adapter.selector: the Kubernetes label selector grammar and matching semantics.

Every accept/reject case below was checked against k8s.io/apimachinery/pkg/labels/selector.go, because
the point of the module is to agree with the Go client that wrote the selector.
"""

from __future__ import annotations

import random
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapter.errors import BadRequest, BadSelector
from adapter.selector import MAX_SELECTOR_LENGTH, Requirement, Selector, parse_selector

# ----------------------------------------------------------------------------------------------------------
# Valid selectors: text -> canonical text.

CANONICAL = [
    ("", ""),
    ("   ", ""),
    ("a", "a"),
    ("!a", "!a"),
    ("! a", "!a"),
    ("a=b", "a=b"),
    ("a==b", "a=b"),
    ("a!=b", "a!=b"),
    ("a=", "a="),  # empty value is valid
    ("a==", "a="),
    ("a!=", "a!="),
    ("a=,b", "a=,b"),  # "a" equals "", and "b" exists
    ("a in (x,y)", "a in (x,y)"),
    ("a in(y, x ,x)", "a in (x,y)"),
    ("a notin (x)", "a notin (x)"),
    ("a in ()", "a in ()"),  # Go turns "()" into the set {""}
    ("a in (,)", "a in ()"),
    ("a in (b,)", "a in (,b)"),
    ("a in (,b)", "a in (,b)"),
    ("x in (foo,,baz),y,z notin ()", "x in (,baz,foo),y,z notin ()"),  # the example in selector.go
    ("a>5", "a>5"),
    ("a < 10", "a<10"),
    ("a>007", "a>007"),  # kept verbatim, as Go does
    ("in in (in,notin)", "in in (in,notin)"),  # keywords are identifiers outside operator position
    ("notin=in", "notin=in"),
    ("workload=checkout,route in (a,b)", "route in (a,b),workload=checkout"),
    ("b=1,a=2", "a=2,b=1"),
    ("a=1,a=1", "a=1"),  # exact duplicates dropped
    ("a!=1,a=2", "a!=1,a=2"),
    ("example.com/team=x", "example.com/team=x"),
    ("app.kubernetes.io/name in (web)", "app.kubernetes.io/name in (web)"),
    ("\ta\r\n=\tb ", "a=b"),
    ("A_b.c-D=E_f.g-H", "A_b.c-D=E_f.g-H"),
    ("k" * 63 + "=" + "v" * 63, "k" * 63 + "=" + "v" * 63),
    ("p" * 253 + "/k", "p" * 253 + "/k"),
    ("a>9223372036854775807", "a>9223372036854775807"),
]


@pytest.mark.parametrize(("text", "canonical"), CANONICAL)
def test_valid_selectors_parse_to_canonical_text(text: str, canonical: str) -> None:
    selector = parse_selector(text)
    assert str(selector) == canonical
    assert parse_selector(canonical) == selector
    assert str(parse_selector(canonical)) == canonical


def test_empty_selector_matches_everything() -> None:
    selector = parse_selector("")
    assert selector.is_empty()
    assert selector == Selector()
    assert selector.matches({})
    assert selector.matches({"a": "b"})
    assert not parse_selector("a").is_empty()


def test_requirement_fields() -> None:
    selector = parse_selector("z notin (b,a,b), a==x, !m, k, n>3, n<9")
    assert selector.requirements == (
        Requirement("a", "=", ("x",)),
        Requirement("k", "exists", ()),
        Requirement("m", "!", ()),
        Requirement("n", "gt", ("3",)),
        Requirement("n", "lt", ("9",)),
        Requirement("z", "notin", ("a", "b")),
    )


# ----------------------------------------------------------------------------------------------------------
# Matching: selector, labels, expected.

MATCHES = [
    ("a=b", {"a": "b"}, True),
    ("a=b", {"a": "c"}, False),
    ("a=b", {}, False),
    ("a=", {"a": ""}, True),
    ("a=", {}, False),
    ("a!=b", {"a": "c"}, True),
    ("a!=b", {"a": "b"}, False),
    ("a!=b", {}, True),  # absent key matches !=
    ("a!=b", {"other": "b"}, True),
    ("a in (x,y)", {"a": "y"}, True),
    ("a in (x,y)", {"a": "z"}, False),
    ("a in (x,y)", {}, False),
    ("a in ()", {"a": ""}, True),
    ("a in ()", {"a": "x"}, False),
    ("a notin (x,y)", {"a": "z"}, True),
    ("a notin (x,y)", {"a": "x"}, False),
    ("a notin (x,y)", {}, True),  # absent key matches notin
    ("a", {"a": ""}, True),
    ("a", {"b": "a"}, False),
    ("!a", {}, True),
    ("!a", {"a": ""}, False),
    ("a>5", {"a": "6"}, True),
    ("a>5", {"a": "5"}, False),
    ("a>5", {"a": "10"}, True),  # integer, not string, comparison
    ("a>5", {"a": "-7"}, False),
    ("a>5", {"a": "x"}, False),  # non-integer label never matches
    ("a>5", {"a": " 6"}, False),  # Go's ParseInt does not trim
    ("a>5", {"a": "1_0"}, False),  # nor accept underscores
    ("a>5", {"a": "99999999999999999999"}, False),  # out of int64 range
    ("a>5", {}, False),
    ("a<5", {"a": "4"}, True),
    ("a<5", {"a": "-9"}, True),
    ("a<5", {"a": "5"}, False),
    ("a<5", {"a": "+4"}, True),
    ("a>005", {"a": "6"}, True),
    ("a=b,c!=d", {"a": "b"}, True),
    ("a=b,c!=d", {"a": "b", "c": "d"}, False),
    ("a=x,a=y", {"a": "x"}, False),
    ("route in (a,b),workload=checkout", {"route": "a", "workload": "checkout", "pod": "p"}, True),
    ("route in (a,b),workload=checkout", {"route": "c", "workload": "checkout"}, False),
]


@pytest.mark.parametrize(("text", "labels", "expected"), MATCHES)
def test_matches(text: str, labels: dict[str, str], expected: bool) -> None:
    selector = parse_selector(text)
    assert selector.matches(labels) is expected
    assert all(r.matches(labels) for r in selector.requirements) is expected


# ----------------------------------------------------------------------------------------------------------
# Invalid selectors. (text, a fragment the message must contain)

INVALID = [
    ("=x", "column 1"),
    ("!", "expected a key after '!'"),
    ("!!a", "column 2"),
    ("a,", "after ','"),
    (",a", "column 1"),
    ("a,,b", "column 3"),
    ("a=b,", "after ','"),
    ("workload in x", "expected '('"),
    ("workload in", "expected '('"),
    ("workload in (a", "column 15"),
    ("workload in (", "column 14"),
    ("workload in (a b)", "expected ',' or ')'"),
    ("workload in ((a))", "column 14"),
    ("a in (a,,)", "column 10"),  # Go's parseIdentifiersList rejects these two
    ("a in (,,)", "column 9"),
    ("a in (b),", "after ','"),
    ("work load=x", "expected an operator"),
    ("a b", "expected an operator"),
    ("a!b", "expected an operator"),
    ("a=b=c", "column 4"),
    ("a=b c", "column 5"),
    ("a===b", "expected a value"),
    ("a=(b)", "expected a value"),
    ("a>=1", "expected a value"),
    ("a<>1", "expected a value"),
    ("!a=b", "'!key' takes no operator"),
    ("!a in (b)", "'!key' takes no operator"),
    ("a>x", "64-bit integer"),
    ("a>", "64-bit integer"),
    ("a<1.5", "64-bit integer"),
    ("a>-1", "invalid value"),  # a valid integer, but not a valid label value
    ("a>+1", "invalid value"),
    ("a>9223372036854775808", "64-bit integer"),
    ("k" * 64, "limit is 63"),
    ("k" * 64 + "=v", "limit is 63"),
    ("a=" + "v" * 64, "limit is 63"),
    ("a=b c d", "column 5"),
    ("a=x y", "column 5"),  # a value with a space in it
    ("a=-x", "invalid value"),
    ("a=x-", "invalid value"),
    ("a=x/y", "invalid value"),
    ("a in (x,/y)", "invalid value"),
    ("a=é", "invalid value"),
    ("-a=b", "invalid key"),
    ("a_=b", "invalid key"),
    ("/a", "prefix before '/' is empty"),
    ("a/", "name part of the key is empty"),
    ("a/b/c", "at most one '/'"),
    ("Example.com/a", "DNS subdomain"),
    ("ex_ample.com/a", "DNS subdomain"),
    ("p" * 254 + "/k", "longer than 253"),
    ("a\x00b", "invalid key"),  # Go would stop at NUL; we reject
    ("a\x0b=b", "invalid key"),  # vertical tab is not a separator in Go
    ("a==b==c", "column 5"),
]


@pytest.mark.parametrize(("text", "fragment"), INVALID)
def test_invalid_selectors_raise_bad_selector(text: str, fragment: str) -> None:
    with pytest.raises(BadSelector) as info:
        parse_selector(text)
    message = str(info.value)
    assert fragment in message
    assert repr(text)[:50] in message  # the input is quoted


def test_bad_selector_is_a_bad_request() -> None:
    with pytest.raises(BadRequest):
        parse_selector("a in x")


def test_length_cap() -> None:
    # "ab,a,a,...": valid, and exactly at the cap (duplicates collapse, so the result is small).
    at_cap = "ab" + ",a" * ((MAX_SELECTOR_LENGTH - 2) // 2)
    assert len(at_cap) == MAX_SELECTOR_LENGTH
    assert str(parse_selector(at_cap)) == "a,ab"
    with pytest.raises(BadSelector, match="limit is 4096"):
        parse_selector(at_cap + "a")
    with pytest.raises(BadSelector, match="limit is 4096"):
        parse_selector("a=b," * 100_000)


def test_error_message_quote_is_capped() -> None:
    text = "a=" + "v" * 1000
    with pytest.raises(BadSelector) as info:
        parse_selector(text)
    assert len(str(info.value)) < 600


def test_parse_is_cached_and_results_are_immutable() -> None:
    first = parse_selector("workload=checkout")
    assert parse_selector("workload=checkout") is first
    with pytest.raises(AttributeError):
        first.requirements = ()  # type: ignore[misc]
    with pytest.raises(AttributeError):
        first.requirements[0].key = "x"  # type: ignore[misc]
    assert hash(first) == hash(parse_selector("workload==checkout"))


# ----------------------------------------------------------------------------------------------------------
# equalities()

EQUALITIES = [
    ("", {}),
    ("a=b", {"a": "b"}),
    ("a==b", {"a": "b"}),
    ("a=", {"a": ""}),
    ("a in (x)", {"a": "x"}),
    ("a in (x,y)", {}),
    ("a in (x,y),a in (y,z)", {"a": "y"}),
    ("a in (x,y),a=x", {"a": "x"}),
    ("a=x,a=y", {}),  # contradictory: matches nothing, so nothing is pinned
    ("a!=b,c notin (d),e,!f,g>1", {}),
    ("route in (a,b),workload=checkout,team=x", {"workload": "checkout", "team": "x"}),
]


@pytest.mark.parametrize(("text", "expected"), EQUALITIES)
def test_equalities(text: str, expected: dict[str, str]) -> None:
    assert parse_selector(text).equalities() == expected


# ----------------------------------------------------------------------------------------------------------
# Direct construction validates and normalises like the parser.


def test_requirement_normalises() -> None:
    assert Requirement("a", "==", ("b",)) == Requirement("a", "=", ("b",))
    assert Requirement("a", "in", ("y", "x", "y")).values == ("x", "y")
    assert Selector((Requirement("b", "exists"), Requirement("a", "!"), Requirement("b", "exists"))) == (
        parse_selector("!a,b")
    )


@pytest.mark.parametrize(
    ("key", "operator", "values"),
    [
        ("", "exists", ()),
        ("a", "~", ("b",)),
        ("a", "=", ()),
        ("a", "=", ("b", "c")),
        ("a", "in", ()),
        ("a", "exists", ("b",)),
        ("a", "!", ("b",)),
        ("a", "gt", ("x",)),
        ("a", "gt", ("1", "2")),
        ("a", "=", ("b c",)),
    ],
)
def test_requirement_rejects_invalid(key: str, operator: str, values: tuple[str, ...]) -> None:
    with pytest.raises(BadSelector):
        Requirement(key, operator, values)


# ----------------------------------------------------------------------------------------------------------
# Properties.

_ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
_LOWER_ALNUM = "abcdefghijklmnopqrstuvwxyz0123456789"


def _bounded(first: str, middle: str, max_middle: int) -> st.SearchStrategy[str]:
    """Strings matching ``[first]([middle]{0,max_middle}[first])?`` (cheaper than st.from_regex)."""
    edge = st.sampled_from(first)
    return st.one_of(
        edge,
        st.tuples(edge, st.text(alphabet=middle, max_size=max_middle), edge).map("".join),
    )


# The character classes of k8s.io/apimachinery/pkg/util/validation.
names = st.one_of(
    _bounded(_ALNUM, _ALNUM + "-_.", 61),
    st.sampled_from(["in", "notin", "a", "b", "workload", "route"]),
)
prefixes = st.lists(_bounded(_LOWER_ALNUM, _LOWER_ALNUM + "-", 8), min_size=1, max_size=3).map(".".join)
keys = st.one_of(names, st.tuples(prefixes, names).map("/".join))
values = st.one_of(
    st.just(""),
    st.sampled_from(["in", "notin", "x", "y", "5", "10"]),
    _bounded(_ALNUM, _ALNUM + "-_.", 61),
)
integers = st.one_of(
    st.integers(min_value=0, max_value=2**63 - 1).map(str),
    st.integers(min_value=0, max_value=99).map(lambda n: f"0{n}"),
)


@st.composite
def requirements(draw: st.DrawFn) -> Requirement:
    key = draw(keys)
    operator = draw(st.sampled_from(["=", "!=", "in", "notin", "exists", "!", "gt", "lt"]))
    if operator in ("exists", "!"):
        vals: tuple[str, ...] = ()
    elif operator in ("gt", "lt"):
        vals = (draw(integers),)
    elif operator in ("=", "!="):
        vals = (draw(values),)
    else:
        vals = tuple(draw(st.lists(values, min_size=1, max_size=4)))
    return Requirement(key, operator, vals)


selectors = st.lists(requirements(), max_size=6).map(Selector.of)


@st.composite
def selector_and_labels(draw: st.DrawFn) -> tuple[Selector, dict[str, str]]:
    """A selector plus labels drawn mostly from its own keys and values, so matches are not all False."""
    selector = draw(selectors)
    own_keys = [r.key for r in selector.requirements] or ["a"]
    own_values = [v for r in selector.requirements for v in r.values] + ["", "7", "-3", "x"]
    label_keys = st.one_of(st.sampled_from(own_keys), keys)
    label_values = st.one_of(st.sampled_from(own_values), values, st.integers().map(str))
    labels = draw(st.dictionaries(label_keys, label_values, max_size=6))
    return selector, labels


def _reference_match(requirement: Requirement, labels: dict[str, str]) -> bool:
    """An independent statement of Requirement.Matches from selector.go."""
    present = requirement.key in labels
    value = labels.get(requirement.key, "")
    op = requirement.operator
    if op in ("=", "in"):
        return present and value in requirement.values
    if op in ("!=", "notin"):
        return not present or value not in requirement.values
    if op == "exists":
        return present
    if op == "!":
        return not present
    if not present or re.fullmatch(r"[+-]?[0-9]+", value) is None:
        return False
    have, want = int(value), int(requirement.values[0])
    if not -(2**63) <= have < 2**63:
        return False
    return have > want if op == "gt" else have < want


def _scruffy_text(selector: Selector, rng: random.Random) -> str:
    """Render ``selector`` non-canonically: shuffled, duplicated, '==' for '=', random whitespace."""

    def ws() -> str:
        return rng.choice(["", " ", "  ", "\t", "\n"])

    def ws1() -> str:  # between two identifiers at least one separator is required
        return rng.choice([" ", "  ", "\t", " \r\n "])

    parts: list[str] = []
    for r in selector.requirements:
        op = r.operator
        if op == "exists":
            text = r.key
        elif op == "!":
            text = "!" + ws() + r.key
        elif op in ("in", "notin"):
            vals = list(r.values)
            non_empty = [v for v in vals if v]
            vals += rng.sample(non_empty, k=min(len(non_empty), rng.randint(0, 2)))  # never repeat ""
            rng.shuffle(vals)
            inner = ",".join(ws() + v + ws() for v in vals)
            text = f"{r.key}{ws1()}{op}{ws()}({inner})"
        else:
            symbol = {"=": rng.choice(["=", "=="]), "!=": "!=", "gt": ">", "lt": "<"}[op]
            text = f"{r.key}{ws()}{symbol}{ws()}{r.values[0]}"
        parts.append(ws() + text + ws())
        if rng.random() < 0.2:
            parts.append(text)
    rng.shuffle(parts)
    return ",".join(parts)


@given(selectors)
def test_canonical_text_round_trips(selector: Selector) -> None:
    text = str(selector)
    parsed = parse_selector(text)
    assert parsed == selector
    assert str(parsed) == text


@settings(max_examples=200)
@given(selectors, st.randoms(use_true_random=False))
def test_non_canonical_text_parses_to_the_same_selector(selector: Selector, rng: random.Random) -> None:
    text = _scruffy_text(selector, rng)
    if len(text) <= MAX_SELECTOR_LENGTH:
        assert parse_selector(text) == selector


@settings(max_examples=300)
@given(selector_and_labels())
def test_matches_is_the_and_of_the_reference_semantics(case: tuple[Selector, dict[str, str]]) -> None:
    selector, labels = case
    expected = all(_reference_match(r, labels) for r in selector.requirements)
    assert selector.matches(labels) is expected
    assert parse_selector(str(selector)).matches(labels) is expected
    if expected:
        # Anything that matches carries every pinned value.
        for key, value in selector.equalities().items():
            assert labels.get(key) == value
