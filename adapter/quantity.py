"""Kubernetes ``resource.Quantity`` strings: the one we serve, and how Go reads them back.

Why this module exists: an external metric's ``value`` is a ``resource.Quantity`` string, and the consumer
is Go code. The HPA controller parses it with ``resource.ParseQuantity`` and compares
``Quantity.MilliValue()`` against its target. So the adapter must (a) never emit a string Go rejects
(``nan``, ``inf``), and (b) not lose the milli precision the HPA reads: a p95 of 0.2143 s printed as
``"0.2"`` or ``"214m"`` would move replica counts.

:func:`format_quantity` is the hot path (one call per served value), so it avoids Decimal.
:func:`parse_quantity`, :func:`canonical_quantity` and :func:`milli_value` are a faithful model of
``k8s.io/apimachinery/pkg/api/resource`` (``quantity.go``, ``amount.go``, ``math.go``, ``scale_int.go``),
quirks included, so tests can predict exactly what kubectl and the HPA make of a string without a Go
toolchain. Quirks that are deliberate here because Go has them:

* Go accepts a few strings without any digit, as zero: ``"."``, ``"-"``, ``"+"``, ``"k"``, ``"Ki"``,
  ``"e3"``. It rejects ``"Pi"``, ``"Ei"`` and ``"e-10"`` only because those take its slow path.
* When the input already is in canonical form Go keeps the original string, so ``"+1"``, ``"01"``,
  ``"1."`` and ``"1e3"`` are written back unchanged.
* A decimal-SI value whose canonical exponent is above 18 prints with no suffix at all
  (``"1000E"`` -> ``"1"``), and exponents are ``int32`` that wrap.
* ``MilliValue()`` rounds away from zero for negative values and wraps on int64 overflow. A mantissa of
  more than 18 digits takes Go's ``inf.Dec`` path, where negative values round oddly (``"-0.0000000005"``
  reads as +1 milli); :func:`format_quantity` never needs that many digits below 1e12.

The kubectl JSON decoder trims surrounding whitespace before calling ``ParseQuantity``; these functions do
not, they model ``ParseQuantity`` itself.

Length: about 490 lines because it models Go's parser and canonical form quirk for quirk; the hot
formatting path is the first 80 lines.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal
from typing import Final, Literal

from adapter.errors import quote

__all__ = ["canonical_quantity", "format_quantity", "milli_value", "parse_quantity"]

# ----------------------------------------------------------------------------------------------------------
# Formatting (hot path).

#: Below this magnitude a float ``value * 1e6`` is within half a unit of the exact product and every
#: half-integer is a float, so rounding the float product gives the exactly rounded result unless the
#: product lands exactly on a half-integer; only then is the slower exact route needed.
_FLOAT_PATH_LIMIT: Final = 2.0**52 / 1e6


def _exact_units(value: float, per_unit: int) -> int:
    """``value * per_unit`` rounded half to even, from the float's exact binary fraction."""
    numerator, denominator = value.as_integer_ratio()  # denominator is a power of two
    units, rest = divmod(numerator * per_unit, denominator)  # floors: rest >= 0 for both signs
    twice = rest + rest
    if twice > denominator or (twice == denominator and units & 1):
        units += 1
    return units


def format_quantity(value: float) -> str:
    """Return the Quantity string for ``value``, keeping at least milli precision.

    The value is rounded (half to even) to micro units, or to nano units when ``0 < |value| < 1e-3`` so
    a tiny latency keeps three significant digits instead of becoming ``"0"``. The result is the shortest
    exact integer-mantissa form among plain, ``m``, ``u`` and ``n``: ``0.2143`` -> ``"214300u"``,
    ``0.214`` -> ``"214m"``, ``3.0`` -> ``"3"``, ``2e-7`` -> ``"200n"``. Plain integers never get ``k``/``M``
    so a human reading the API sees the number itself; Go accepts all of these and no others are needed.

    The rounding is exact, as if done on the float's exact decimal expansion, so the served quantity is
    always within half a unit of ``value``. This runs once per served value, so the usual case is a float
    multiply and ``round``; ties and values beyond about 4.5e9 take the exact integer route.

    :raises ValueError: for NaN or infinity: Go's parser rejects them and an HPA would stop scaling.
    """
    # 1e9 and 1e6 are exact floats, so ``value * 1e6`` is the exact product correctly rounded; the
    # comparison is False for NaN.
    if -_FLOAT_PATH_LIMIT < value < _FLOAT_PATH_LIMIT:
        if -1e-3 < value < 1e-3:
            scaled = value * 1e9
            nanos = round(scaled) if scaled % 1.0 != 0.5 else _exact_units(value, 1_000_000_000)
            if nanos % 1000:
                return f"{nanos}n"
            micros = nanos // 1000
        else:
            scaled = value * 1e6
            micros = round(scaled) if scaled % 1.0 != 0.5 else _exact_units(value, 1_000_000)
    elif math.isfinite(value):
        micros = _exact_units(value, 1_000_000)
    else:
        raise ValueError(f"cannot serve {value!r} as a Kubernetes quantity: not a finite number")
    if micros % 1000:
        return f"{micros}u"
    millis = micros // 1000
    if millis % 1000:
        return f"{millis}m"
    return str(millis // 1000)  # "0" for zero, -0.0 and anything that rounds to zero: Go has no -0


# ----------------------------------------------------------------------------------------------------------
# Go's int32/int64 arithmetic, needed wherever Go's result depends on overflow.

_INT32_MASK: Final = (1 << 32) - 1
_INT64_MASK: Final = (1 << 64) - 1
_INT64_MAX: Final = (1 << 63) - 1
_INT64_MIN: Final = -(1 << 63)
#: Python refuses int <-> str conversions beyond this many digits by default; Go has no such limit.
_SAFE_DIGITS: Final = 4000


def _wrap32(n: int) -> int:
    """``int32(n)`` in Go: two's complement wrap-around."""
    n &= _INT32_MASK
    return n - (1 << 32) if n >= 1 << 31 else n


def _wrap64(n: int) -> int:
    """``int64(n)`` in Go: two's complement wrap-around."""
    n &= _INT64_MASK
    return n - (1 << 64) if n >= 1 << 63 else n


def _go_quo(a: int, b: int) -> int:
    """Go's ``a / b`` on integers: truncates toward zero (Python's ``//`` floors)."""
    q = abs(a) // abs(b)
    return q if (a < 0) == (b < 0) else -q


def _go_rem(a: int, b: int) -> int:
    """Go's ``a % b``: takes the sign of ``a``."""
    return a - b * _go_quo(a, b)


def _big_int64(n: int) -> int:
    """``(*big.Int).Int64()``: the low 64 bits of ``|n|`` as an int64, negated if ``n < 0``."""
    low = _wrap64(abs(n))
    return _wrap64(-low) if n < 0 else low


def _low64_of_scaled(unscaled: int, power: int) -> int:
    """``_big_int64(unscaled * 10**power)`` without building a number Go would need gigabytes for."""
    low = _wrap64((abs(unscaled) * pow(10, power, 1 << 64)) & _INT64_MASK)
    return _wrap64(-low) if unscaled < 0 else low


def _int_of(digits: str) -> int:
    """``int(digits)`` for a string of ASCII digits of any length (Go's big.Int has no digit limit)."""
    return int(digits) if len(digits) <= _SAFE_DIGITS else int(Decimal(digits))


def _str_of(n: int) -> str:
    """``str(n)`` for an int of any size."""
    return str(n) if n.bit_length() <= _SAFE_DIGITS * 3 else str(Decimal(n))


def _strip_tens(n: int) -> tuple[int, int]:
    """Move factors of ten out of ``n``: ``n == m * 10**k``. Zero stays ``(0, 0)``."""
    if n.bit_length() > 256:  # count the zeros once instead of dividing a huge number again and again
        digits = _str_of(abs(n))
        k = len(digits) - len(digits.rstrip("0"))
        return n // 10**k, k
    k = 0
    while n and n % 10 == 0:
        n //= 10
        k += 1
    return n, k


# ----------------------------------------------------------------------------------------------------------
# Parsing: a transcription of ParseQuantity.

_Format = Literal["DecimalSI", "BinarySI", "DecimalExponent"]

_DIGITS: Final = frozenset("0123456789")
_SUFFIX_CHARS: Final = frozenset("eEinumkKMGTP")
_NANO: Final = -9
#: ``maxInt64Factors``: at most this many digits take Go's int64 fast path.
_MAX_INT64_DIGITS: Final = 18

_SUFFIXES: Final[dict[str, tuple[int, int, _Format]]] = {
    "": (10, 0, "DecimalSI"),
    "n": (10, -9, "DecimalSI"),
    "u": (10, -6, "DecimalSI"),
    "m": (10, -3, "DecimalSI"),
    "k": (10, 3, "DecimalSI"),
    "M": (10, 6, "DecimalSI"),
    "G": (10, 9, "DecimalSI"),
    "T": (10, 12, "DecimalSI"),
    "P": (10, 15, "DecimalSI"),
    "E": (10, 18, "DecimalSI"),
    "Ki": (2, 10, "BinarySI"),
    "Mi": (2, 20, "BinarySI"),
    "Gi": (2, 30, "BinarySI"),
    "Ti": (2, 40, "BinarySI"),
    "Pi": (2, 50, "BinarySI"),
    "Ei": (2, 60, "BinarySI"),
}
#: Canonical decimal-SI suffix by exponent. Go looks the exponent up and, when it is missing (above 18),
#: silently prints no suffix: hence ``.get(exponent, "")`` below.
_DECIMAL_SI_SUFFIX: Final = {e: s for s, (b, e, f) in _SUFFIXES.items() if f == "DecimalSI"}
_BINARY_SI_SUFFIX: Final = {e // 10: s for s, (b, e, f) in _SUFFIXES.items() if f == "BinarySI"}

_ERR_FORMAT: Final = (
    "expected a number with an optional suffix, as in "
    r"^[+-]?[0-9]*(\.[0-9]*)?([eE][+-]?[0-9]+|[numkMGTPE]|[KMGTPE]i)?$"
)
_ERR_NUMERIC: Final = "unable to parse the numeric part"
_ERR_SUFFIX: Final = "unknown suffix (expected one of n u m k M G T P E Ki Mi Gi Ti Pi Ei, or e<exponent>)"


@dataclass(frozen=True, slots=True)
class _Quantity:
    """What Go holds after parsing: ``value == unscaled * 10**exponent``, plus what decides printing.

    ``cached`` is the input string when Go kept it (already canonical). ``dec_scale`` is ``None`` when Go
    stored an ``int64Amount`` (fast path) and otherwise the ``inf.Dec`` scale (9, or 0 when capped), which
    changes how ``MilliValue()`` rounds.
    """

    unscaled: int
    exponent: int
    format: _Format
    cached: str | None
    dec_scale: int | None


def _invalid(text: str, reason: str) -> ValueError:
    return ValueError(f"invalid quantity {quote(text)}: {reason}")


def _scan(text: str) -> tuple[bool, str, str, str, str]:
    """``parseQuantityString``: split into sign, numeric text, integer digits, fraction digits, suffix.

    Returns ``(positive, value, num, denom, suffix)`` exactly as Go does, including its oddities: ``num``
    has leading zeros stripped (``"0"`` if none are left) and an all-zero input returns early as ``"0"``.
    """
    positive = True
    pos = 0
    end = len(text)
    if end and text[0] in "+-":
        positive = text[0] == "+"
        pos = 1
    while pos < end and text[pos] == "0":
        pos += 1
    if pos >= end:
        return positive, "0", "0", "", ""
    i = pos
    while i < end and text[i] in _DIGITS:
        i += 1
    num = text[pos:i]
    if i >= end:
        return positive, text, num, "", ""
    pos = i
    num = num or "0"
    denom = ""
    if text[pos] == ".":
        pos += 1
        i = pos
        while i < end and text[i] in _DIGITS:
            i += 1
        denom = text[pos:i]
        if i >= end:
            return positive, text, num, denom, ""
        pos = i
    value = text[:pos]
    suffix_start = pos
    i = pos
    while i < end and text[i] in _SUFFIX_CHARS:
        i += 1
    if i < end and text[i] in "+-":
        i += 1
    while i < end and text[i] in _DIGITS:
        i += 1
    if i < end:
        raise _invalid(text, _ERR_FORMAT)
    return positive, value, num, denom, text[suffix_start:]


def _go_parse_int64(text: str) -> int | None:
    """``strconv.ParseInt(text, 10, 64)``, or ``None`` where Go returns an error."""
    digits = text[1:] if text[:1] in ("+", "-") else text
    if not digits or not all(c in _DIGITS for c in digits):
        return None
    n = _int_of(digits)
    n = -n if text[0] == "-" else n
    return n if _INT64_MIN <= n <= _INT64_MAX else None


def _interpret(text: str, suffix: str) -> tuple[int, int, _Format]:
    """``quantitySuffixer.interpret``: ``(base, exponent, format)`` for a suffix."""
    known = _SUFFIXES.get(suffix)
    if known is not None:
        return known
    if len(suffix) > 1 and suffix[0] in "eE":
        exponent = _go_parse_int64(suffix[1:])
        if exponent is not None:
            return 10, _wrap32(exponent), "DecimalExponent"
    raise _invalid(text, _ERR_SUFFIX)


def _parse(text: str) -> _Quantity:
    """``resource.ParseQuantity``: the value and representation Go ends up with, or ``ValueError``."""
    if not text:
        raise _invalid(text, _ERR_FORMAT)
    if text == "0":
        return _Quantity(0, 0, "DecimalSI", text, None)
    positive, value, num, denom, suffix = _scan(text)
    base, exponent, fmt = _interpret(text, suffix)

    # Fast path: few enough digits for an int64Amount{value, scale}.
    scale = 0
    mantissa = 1
    if fmt == "BinarySI":
        if exponent >= 0 and not denom:
            mantissa = 1 << exponent
            precision = 15 - len(num) - exponent * 3 // 10 - 1
        else:
            precision = -1
    else:
        scale = exponent
        precision = _MAX_INT64_DIGITS - (len(num) + len(denom))
    if precision >= 0:
        scale = _wrap32(scale - len(denom))
        if scale >= _NANO:
            shifted = num + denom
            parsed = _int_of(shifted)
            if parsed > _INT64_MAX:
                raise _invalid(text, _ERR_NUMERIC)
            result = parsed * mantissa
            if result <= _INT64_MAX:
                result = result if positive else -result
                cached = None
                if fmt == "BinarySI":
                    if exponent % 10 == 0 and parsed & 0x07:
                        cached = text
                elif scale % 3 == 0 and not shifted.endswith("000") and shifted[0] != "0":
                    cached = text
                return _Quantity(result, scale, fmt, cached, None)

    # Slow path: an arbitrary-precision inf.Dec built from the numeric text.
    sign = value[:1] if value[:1] in ("+", "-") else ""
    whole, _, fraction = value[len(sign) :].partition(".")
    if not whole and not fraction:
        raise _invalid(text, _ERR_NUMERIC)  # inf.Dec.SetString needs at least one digit
    magnitude = _int_of(whole + fraction)
    dec_scale = len(fraction)
    if base == 10:
        dec_scale = _wrap32(dec_scale + _wrap32(-exponent))
    else:
        magnitude <<= exponent
    exp10 = -dec_scale
    negative = sign == "-"
    go_scale: int | None = None
    if magnitude:
        go_scale = -_NANO
        if exp10 < _NANO:
            # "rounds non-zero values up to the minimum representable value" (away from zero).
            drop = _NANO - exp10
            if drop > magnitude.bit_length():
                magnitude = 1  # magnitude < 2**drop < 10**drop
            else:
                quotient, rest = divmod(magnitude, 10**drop)
                magnitude = quotient + (rest != 0)
            exp10 = _NANO
        if fmt == "BinarySI":
            # exp10 <= 0 here: binary suffixes never move the decimal point.
            if magnitude > _INT64_MAX * 10**-exp10:
                magnitude, exp10, go_scale = _INT64_MAX, 0, 0  # "the max is just a simple cap"
            elif magnitude < 10**-exp10:
                fmt = "DecimalSI"  # a fraction of one Ki is not worth a binary suffix
    return _Quantity(-magnitude if negative else magnitude, exp10, fmt, None, go_scale)


def _decimal_canonical(q: _Quantity) -> tuple[int, int]:
    """``AsCanonicalBytes``: mantissa and exponent, exponent a multiple of 3 (with Go's int32 wrap)."""
    amount, tens = _strip_tens(q.unscaled)
    exponent = _wrap32(q.exponent + tens)
    if q.dec_scale is None:  # int64Amount: one step, unless the int64 multiplication overflows
        steps = {1: 1, -2: 1, 2: 2, -1: 2}.get(_go_rem(exponent, 3), 0)
        candidate = amount * 10**steps
        if _INT64_MIN <= candidate <= _INT64_MAX:
            return candidate, _wrap32(exponent - steps)
    while _go_rem(exponent, 3):  # inf.Dec: one digit at a time
        amount *= 10
        exponent = _wrap32(exponent - 1)
    return amount, exponent


def _canonical(q: _Quantity) -> str:
    """``Quantity.String()``: the text kubectl writes back."""
    if q.cached is not None:
        return q.cached
    if q.unscaled == 0:
        return "0"
    fmt = q.format
    if fmt == "BinarySI":
        # Binary quantities never have a positive exponent: the suffix multiplies the integer mantissa.
        one = 10**-q.exponent
        if abs(q.unscaled) < 1024 * one or q.unscaled % one:
            fmt = "DecimalSI"  # "avoids rounding and hopefully confusion" / "don't lose precision"
        else:
            whole, powers = q.unscaled // one, 0
            while abs(whole) >= 1024 and whole % 1024 == 0:
                whole //= 1024
                powers += 1
            return _str_of(whole) + _BINARY_SI_SUFFIX.get(powers, "")
    amount, exponent = _decimal_canonical(q)
    if fmt == "DecimalSI":
        return _str_of(amount) + _DECIMAL_SI_SUFFIX.get(exponent, "")
    return _str_of(amount) + (f"e{exponent}" if exponent else "")


def _milli(q: _Quantity) -> int:
    """``Quantity.MilliValue()``, i.e. ``ScaledValue(Milli)``, overflow behaviour included."""
    if q.unscaled == 0:
        return 0
    if q.dec_scale is None:  # int64Amount.AsScaledInt64(Milli)
        value, scale = q.unscaled, q.exponent
        if scale < -3:  # negativeScaleInt64: rounds away from zero
            divisor = 10 ** (-3 - scale)
            quotient = _go_quo(value, divisor)
            if value % divisor:
                quotient += 1 if value > 0 else -1
            return quotient
        steps = _wrap32(scale + 3)  # positiveScaleInt64; Scale is an int32
        if steps < 0:
            return value  # wrapped around: Go's "for i := 0; i < steps" multiplies by nothing
        if steps in (0, 1, 2, 3, 6, 9):
            return _wrap64(value * 10**steps)  # int64MultiplyScale*: the wrapped product, ok ignored
        if steps >= 19:
            return 0  # a non-zero int64 times 10**19 always overflows
        product = value * 10**steps
        return product if _INT64_MIN <= product <= _INT64_MAX else 0  # the x10 loop gives up with 0
    # scaledValue(unscaled, scale, 3) on the inf.Dec, whose unscaled is value * 10**dec_scale.
    power = q.exponent + q.dec_scale  # >= 0: the value was rounded to nano, or capped to an integer
    dif = q.dec_scale - 3
    if dif < 0:
        return _wrap64(_low64_of_scaled(q.unscaled, power) * 10**-dif)
    divisor = 10**dif
    if dif < 19 and (q.unscaled < 0 or (power < 19 and q.unscaled * 10**power < _INT64_MAX)):
        small = _low64_of_scaled(q.unscaled, power)
        quotient = _go_quo(small, divisor)
        return _wrap64(quotient + 1) if _go_rem(small, divisor) else quotient
    if power >= dif:
        return _wrap64(_low64_of_scaled(q.unscaled, power - dif))  # exact division, no remainder
    quotient, rest = divmod(q.unscaled * 10**power, divisor)
    return _wrap64(_big_int64(quotient) + (rest != 0))


# ----------------------------------------------------------------------------------------------------------
# Public API.


def parse_quantity(text: str) -> Decimal:
    """Parse ``text`` the way Go's ``resource.ParseQuantity`` does and return its exact value.

    Accepts exactly the strings Go accepts (see the module docstring for the digit-less zeros Go allows).
    Values finer than a nano unit are rounded away from zero to one nano, as Go does, so a value never
    turns into zero resources; binary-SI values are capped at ``2**63 - 1``.

    :raises ValueError: with the input quoted, where Go returns an error.
    """
    q = _parse(text)
    if q.unscaled == 0:
        return Decimal(0)
    return Decimal(f"{_str_of(q.unscaled)}E{q.exponent}")


def canonical_quantity(text: str) -> str:
    """The string Go (and so kubectl) writes back for ``text``: ``Quantity.String()`` after parsing.

    Decimal SI: the largest exponent that is a multiple of 3 with an integer mantissa (``"1000"`` ->
    ``"1k"``, ``"0.1234"`` -> ``"123400u"``). Binary SI: the largest power of 1024 with an integer mantissa
    (``"1.5Gi"`` -> ``"1536Mi"``), decimal SI when below 1Ki or not an integer. Decimal exponent:
    ``"1.5e2"`` -> ``"150"``. Inputs Go already considers canonical are returned unchanged.

    :raises ValueError: where :func:`parse_quantity` does.
    """
    return _canonical(_parse(text))


def milli_value(text: str) -> int:
    """What Go's ``Quantity.MilliValue()`` returns for ``text``: what the HPA compares with its target.

    That is ``ceil(value * 1000)`` for non-negative values up to about 9.2e15. Negative values round away
    from zero (``"-0.0005"`` -> ``-1``), and, like Go, results outside int64 wrap around or become 0.

    :raises ValueError: where :func:`parse_quantity` does.
    """
    return _milli(_parse(text))
