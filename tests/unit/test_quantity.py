"""Tests for adapter.quantity: the Quantity strings we serve and our model of Go's parser.

The expectations come from two places: ``tests/fixtures/quantity-cases.json`` (what a real kubectl v1.32
wrote back for each input), and, for Go's quirks below, ``k8s.io/apimachinery/pkg/api/resource``
(``quantity.go``, ``amount.go``, ``math.go``, ``scale_int.go``), whose outputs for these inputs were checked
with a Go build of that package. ``tests/integration/test_quantity_kubectl.py`` re-checks against kubectl.
"""

from __future__ import annotations

import json
import math
import re
import time
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from adapter.quantity import canonical_quantity, format_quantity, milli_value, parse_quantity

#: The Quantity grammar from the Kubernetes API reference; everything we serve must match it.
GRAMMAR = re.compile(r"^[+-]?[0-9]*(\.[0-9]*)?([eE][+-]?[0-9]+|[numkMGTPE]|[KMGTPE]i)?$")
#: What format_quantity promises on top of that: an integer mantissa with at most an m/u/n suffix.
SERVED = re.compile(r"^-?[1-9][0-9]*[mun]?$|^0$")

CASES: list[dict[str, Any]] = json.loads(
    (Path(__file__).parents[1] / "fixtures" / "quantity-cases.json").read_text(encoding="utf-8")
)["cases"]
ACCEPTED = [(c["input"], c["kubectl_canonical"]) for c in CASES if c["kubectl_canonical"] is not None]
REJECTED = [c["input"] for c in CASES if c["kubectl_canonical"] is None]


def exact_rounding(value: float) -> Fraction:
    """Reference for format_quantity: ``value`` rounded half to even to micro (nano below 1e-3) units."""
    unit = 10**9 if 0 < abs(value) < 1e-3 else 10**6
    return Fraction(round(Fraction(value) * unit), unit)


def ceil_away(x: Fraction) -> int:
    """Round away from zero: what Go's MilliValue does for an int64-backed quantity of either sign."""
    return math.ceil(x) if x >= 0 else -math.ceil(-x)


# ----------------------------------------------------------------------------------------------------------
# The kubectl fixture.


def test_fixture_has_both_kinds_of_case() -> None:
    assert len(ACCEPTED) >= 40 and len(REJECTED) >= 10


@pytest.mark.parametrize(("text", "expected"), ACCEPTED, ids=[t for t, _ in ACCEPTED])
def test_canonical_matches_kubectl(text: str, expected: str) -> None:
    assert canonical_quantity(text) == expected
    # The canonical form denotes the same value, and is itself canonical.
    assert parse_quantity(expected) == parse_quantity(text)
    assert canonical_quantity(expected) == expected


@pytest.mark.parametrize("text", REJECTED, ids=REJECTED)
def test_rejected_like_kubectl(text: str) -> None:
    for function in (parse_quantity, canonical_quantity, milli_value):
        with pytest.raises(ValueError, match=re.escape(repr(text))):
            function(text)


# ----------------------------------------------------------------------------------------------------------
# format_quantity.


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0.2143, "214300u"),
        (0.214, "214m"),
        (1.1, "1100m"),
        (3.0, "3"),
        (3, "3"),
        (12345.5, "12345500m"),
        (0.0000002, "200n"),
        (0.0, "0"),
        (-0.0, "0"),
        (-0.25, "-250m"),
        (0.000173, "173u"),
        (0.0801, "80100u"),
        (42.5, "42500m"),
        (12345.678, "12345678m"),
        (1000.0, "1000"),  # never "1k": the plain number is what a human expects to read
        (1e12, "1000000000000"),
        (1e-3, "1m"),
        (0.0009999999, "1m"),  # nano rounding can carry into a whole milli
        (0.00012345678, "123457n"),
        (-0.00012345678, "-123457n"),
        (1e-12, "0"),  # below half a nano: rounds to zero, never "-0"
        (-1e-12, "0"),
        (0.1234564, "123456u"),
        (0.1234566, "123457u"),
        # Exact ties (binary fractions) round half to even, in both the micro and the nano range.
        (1 / 128, "7812u"),  # 7812.5 micro
        (3 / 128, "23438u"),  # 23437.5 micro
        (-1 / 128, "-7812u"),
        (1 / 1024, "976562n"),  # 976562.5 nano
        # Beyond ~4.5e9 the float product loses half units; the exact integer route takes over.
        (4503599627.3705, "4503599627370500u"),
        (1e10 + 0.5, "10000000000500m"),
        (123456789012.34567, "123456789012345673u"),  # the float is ...672.607 micro
    ],
)
def test_format_examples(value: float, expected: str) -> None:
    assert format_quantity(value) == expected
    assert GRAMMAR.fullmatch(expected)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, -math.nan])
def test_format_refuses_non_finite(value: float) -> None:
    with pytest.raises(ValueError, match="not a finite number"):
        format_quantity(value)


@settings(max_examples=2000)
@given(st.floats(min_value=-1e12, max_value=1e12, allow_nan=False, allow_infinity=False))
@example(0.0)
@example(-0.0)
@example(5e-324)
@example(1e-3)
@example(-1e-3)
@example(0.0005)
@example(4503599627.370496)
@example(1e12)
@example(-1e12)
def test_format_is_valid_exact_and_close(value: float) -> None:
    """Every served string parses, and Go reads back the exactly rounded value.

    Closeness: rounding to micro units is off by at most 0.5e-6 in absolute terms, and below 1e-3 (nano
    units) by at most 0.5e-9. A relative bound is not the right promise: a value under half a nano is
    served as "0" (100% off) and a value of 2e-3 is off by up to 2.5e-4 relative; what the HPA reads is
    milli units, and for those the absolute bound is what matters.
    """
    text = format_quantity(value)
    assert GRAMMAR.fullmatch(text), text
    assert SERVED.match(text), text
    parsed = parse_quantity(text)
    assert Fraction(parsed) == exact_rounding(value)
    bound = Fraction(1, 2 * 10**9) if abs(value) < 1e-3 else Fraction(1, 2 * 10**6)
    assert abs(Fraction(parsed) - Fraction(value)) <= bound
    assert abs(float(parsed) - value) <= 1e-6
    # Shortest form: the mantissa has no factor of 1000 left that a larger unit could absorb.
    if text[-1] in "mun":
        assert int(text[:-1]) % 1000 != 0
    # Go keeps our string as is or canonicalises it to the same value.
    assert parse_quantity(canonical_quantity(text)) == parsed


@settings(max_examples=1000)
@given(st.integers(min_value=-4 * 10**15, max_value=4 * 10**15))
@example(0)
@example(1)
@example(-1)
@example(999)
@example(1000)
@example(1001)
@example(-1001)
@example(214300)
def test_milli_value_of_served_micro_values(micros: int) -> None:
    """For a value exact in micro units the HPA reads ceil(value * 1000) (away from zero when negative).

    The float ``micros / 1e6`` is within half a micro of ``micros`` up to |value| ~ 4.5e9, so it is the
    value "exact in micro units"; the expectation is computed in integers because ``v * 1000`` in floats
    is not exact (``0.009 * 1000`` is ``9.000000000000002``).
    """
    value = micros / 1e6
    text = format_quantity(value)
    assert Fraction(parse_quantity(text)) == Fraction(micros, 10**6)
    assert milli_value(text) == ceil_away(Fraction(micros, 1000))
    if micros >= 0:
        assert milli_value(text) == -(-micros // 1000)  # plain ceil


@settings(max_examples=300)
@given(st.integers(min_value=-(10**18) + 1, max_value=10**18 - 1))
def test_milli_value_of_micro_strings(micros: int) -> None:
    """The same promise straight on strings, up to the 1e12 the adapter can serve."""
    assert milli_value(f"{micros}u") == ceil_away(Fraction(micros, 1000))


def test_format_is_fast() -> None:
    """It runs once per served value; guard against an accidental slow path (generous for slow CI)."""
    values = [0.2143, 0.000173, 12345.678, 3.0, 57.333333, 0.75] * 5000
    started = time.perf_counter()
    for value in values:
        format_quantity(value)
    per_call = (time.perf_counter() - started) / len(values)
    assert per_call < 25e-6, f"format_quantity took {per_call * 1e6:.1f} us per call"


# ----------------------------------------------------------------------------------------------------------
# parse_quantity, canonical_quantity, milli_value: Go's behaviour, quirks included.


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0", "0"),
        ("1", "1"),
        ("250m", "0.25"),
        ("-250m", "-0.25"),
        ("1.5Gi", "1610612736"),
        ("1Ki", "1024"),
        ("0.5Ki", "512"),
        ("1.5e2", "150"),
        ("1E3", "1000"),
        ("1e+3", "1000"),
        ("1E", "1e18"),
        ("12e-3", "0.012"),
        ("+1", "1"),
        ("1.", "1"),
        (".5", "0.5"),
        ("007", "7"),
        ("123456789012345678901234567890", "123456789012345678901234567890"),
        # Finer than a nano: rounded away from zero to the next nano, so a request never becomes zero.
        ("1e-10", "1e-9"),
        ("-1e-10", "-1e-9"),
        ("0.0000000001", "0.000000001"),
        ("1.0000000001", "1.000000001"),
        ("0.0000000019", "0.000000002"),
        ("0.0001Ki", "0.1024"),
        # Binary SI is capped at the largest int64.
        ("8Ei", "9223372036854775807"),
        ("-1024Ei", "-9223372036854775807"),
        ("7Ei", str(7 * 2**60)),
        # Go accepts these digit-less strings, as zero.
        (".", "0"),
        ("-", "0"),
        ("+", "0"),
        ("-.", "0"),
        ("k", "0"),
        ("Ki", "0"),
        ("e3", "0"),
        ("0Ei", "0"),
        ("0.e-10", "0"),
    ],
)
def test_parse_values(text: str, value: str) -> None:
    assert parse_quantity(text) == Decimal(value)


@pytest.mark.parametrize(
    "text",
    [
        "",
        " 1",  # kubectl trims JSON strings; ParseQuantity itself does not
        "1 ",
        "1e",
        "1.2.3",
        "1K",
        "1ki",
        "1mi",
        "1i",
        "1e3.5",
        "1ee3",
        "1e+",
        "e",
        "1Ki5",
        "0x10",
        "1_000",
        "\u0661",  # ARABIC-INDIC DIGIT ONE: str.isdigit() says yes, Go says no
        "Pi",  # digit-less, and Pi/Ei/small exponents take Go's slow path, which needs a digit
        "Ei",
        "e-10",
        ".e-10",
        "1e9223372036854775808",  # the exponent must fit an int64
        "+-1",
    ],
)
def test_parse_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(text))):
        parse_quantity(text)


def test_parse_error_quotes_long_input_capped() -> None:
    with pytest.raises(ValueError) as info:
        parse_quantity("x" * 5000)
    assert len(str(info.value)) < 600


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # Already canonical: Go keeps the input string itself.
        ("+1", "+1"),
        ("01", "01"),
        ("0100", "0100"),
        ("1.", "1."),
        ("1e3", "1e3"),
        ("1E3", "1E3"),
        ("1e+3", "1e+3"),
        ("1e03", "1e03"),
        ("1E", "1E"),
        ("1.Ki", "1.Ki"),
        ("1.5e2147483647", "1.5e2147483647"),
        # Decimal exponent inputs print as mantissa, "e", exponent (a multiple of 3).
        ("1.0e21", "1e21"),
        ("15e-1", "1500e-3"),
        ("1e-10", "1e-9"),
        ("-1e-10", "-1e-9"),
        # int32 exponents wrap, exactly as in Go.
        ("1e2147483647", "10e2147483646"),
        ("10e2147483647", "10e2147483647"),
        ("1e-2147483649", "10e2147483646"),
        # Decimal SI above E has no suffix, so Go prints the mantissa alone (a Go bug, kept).
        ("1000E", "1"),
        ("10000E", "10"),
        ("100E", "100E"),
        ("99999999999999999999", "99999999999999999999"),
        ("100000000000000000000", "100E"),
        # Binary SI.
        ("1024Mi", "1Gi"),
        ("1025Ki", "1025Ki"),
        ("8Ki", "8Ki"),
        ("1.5Ki", "1536"),
        ("0.5Ki", "512"),
        ("1.1Ki", "1126400m"),
        ("123456Gi", "123456Gi"),
        ("-1Ki", "-1Ki"),
        ("8Ei", "9223372036854775807"),
        ("-8Ei", "-9223372036854775807"),
        ("7Ei", "7Ei"),
        # Zeroes.
        ("-0", "0"),
        ("+0", "0"),
        ("0e3", "0"),
        ("k", "0"),
        (".", "0"),
        ("00.5", "500m"),
    ],
)
def test_canonical_quirks(text: str, expected: str) -> None:
    assert canonical_quantity(text) == expected


@pytest.mark.parametrize(
    ("text", "milli"),
    [
        ("0", 0),
        ("1", 1000),
        ("214300u", 215),  # ceil
        ("214m", 214),
        ("1n", 1),
        ("0.0001", 1),
        ("-0.0005", -1),  # int64-backed negative values round away from zero
        ("-1500u", -2),
        ("-0.0000000005", 1),  # ...but an inf.Dec-backed one is "rounded up" by Go's scaledValue: +1
        ("1.5Gi", 1610612736000),
        ("1Ei", -(2**63)),  # overflow wraps, as in Go
        ("8Ei", -1000),  # (2**63 - 1) * 1000 wrapped
        ("9223372036854775807", -1000),
        ("9223372036854775807n", 9223372036855),
        ("1e2147483647", 1),  # the int32 scale arithmetic wraps
        ("1e100", 0),  # Go's x10 loop gives up and returns 0
        ("1e16", 0),
        ("10000000000000M", 1864712049423024128),  # a fixed x10**9 step wraps instead
        ("12345678901234567890", 4807115922877858896),  # the inf.Dec path wraps too
        ("-12345678901234567890", -5097733592001),
        ("-8Ei", 1000),
    ],
)
def test_milli_value_like_go(text: str, milli: int) -> None:
    assert milli_value(text) == milli


# ----------------------------------------------------------------------------------------------------------
# Properties over the whole grammar.

_SUFFIXES = ["", "n", "u", "m", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"]


@st.composite
def quantities(draw: st.DrawFn) -> str:
    """Valid quantity strings with small exponents, every part optional as the grammar allows."""
    sign = draw(st.sampled_from(["", "", "-", "+"]))
    whole = draw(st.text("0123456789", max_size=22))
    fraction = draw(st.none() | st.text("0123456789", max_size=14))
    suffix = draw(
        st.sampled_from(_SUFFIXES)
        | st.builds(lambda e, s, n: e + s + str(n), st.sampled_from("eE"), st.sampled_from(["", "+", "-"]),
                    st.integers(0, 30))
    )
    return sign + whole + ("" if fraction is None else "." + fraction) + suffix


@settings(max_examples=1500)
@given(quantities())
def test_canonical_is_stable_and_keeps_the_value(text: str) -> None:
    try:
        value = parse_quantity(text)
    except ValueError:
        # Only digit-less strings on Go's slow path are refused; everything with a digit parses.
        assert not re.search(r"[0-9]", re.sub(r"[eE][+-]?[0-9]+$", "", text)), text
        return
    canonical = canonical_quantity(text)
    assert GRAMMAR.fullmatch(canonical), canonical
    assert canonical_quantity(canonical) == canonical
    if abs(value) < Decimal("1e21"):  # beyond that Go drops the missing suffix (see "1000E")
        assert parse_quantity(canonical) == value
    # Go keeps whole nanos only, rounding finer values away from zero.
    assert (Fraction(value) * 10**9).denominator == 1
    if 0 <= value < Decimal("9e15"):  # MilliValue() fits an int64: a plain ceil
        assert milli_value(text) == milli_value(canonical) == math.ceil(Fraction(value) * 1000)


@settings(max_examples=1500)
@given(st.text(max_size=12) | st.from_regex(GRAMMAR, fullmatch=True))
def test_accepts_only_the_grammar(text: str) -> None:
    """Whatever parses matches the grammar; whatever matches it with a digit and a sane exponent parses."""
    try:
        parse_quantity(text)
        accepted = True
    except ValueError as exc:
        assert repr(text)[:50] in str(exc) or len(text) > 200
        accepted = False
    match = GRAMMAR.fullmatch(text)
    if accepted:
        assert match, text
        return
    if match is None:
        return
    suffix = match.group(2) or ""
    mantissa = text[: len(text) - len(suffix)]
    exponent = re.fullmatch(r"[eE]([+-]?[0-9]+)", suffix)
    exponent_fits = exponent is None or -(2**63) <= int(exponent.group(1)) < 2**63
    assert not (re.search(r"[0-9]", mantissa) and exponent_fits), f"{text!r} matches the grammar"
