"""Kubernetes label selectors, parsed and matched the way ``k8s.io/apimachinery/pkg/labels.Parse`` does.

Why a port instead of something simpler: the HPA (a Go client) sends the ``labelSelector`` written in a
``metricSelector``, and the user wrote it expecting Kubernetes semantics. If this adapter accepted a
selector the apiserver would reject, or read one differently (``!=`` on an absent key, ``in ()``, ``key=``
with an empty value), the HPA would silently scale on the wrong series. So the grammar, the validation of
keys and values, and the matching rules below follow ``labels/selector.go`` line by line, including its
quirks; the few deliberate differences are listed at the end of this docstring.

Grammar (from ``labels.Parse``)::

    <selector>     ::= "" | <requirement> | <requirement> "," <selector>
    <requirement>  ::= ["!"] KEY [ <set-based> | <exact-match> | <compare> ]
    <set-based>    ::= ("in" | "notin") "(" <values> ")"
    <exact-match>  ::= ("=" | "==" | "!=") [VALUE]
    <compare>      ::= (">" | "<") INTEGER

Whitespace (space, tab, CR, LF) may surround every token. Facts taken from apimachinery that are easy to
get wrong:

* ``key=``, ``key==`` and ``key!=`` are valid: the value is the empty string.
* ``key in ()`` is valid and means ``key in ("")``: the parser turns empty slots into ``""``, so the
  "values set can't be empty" check in ``NewRequirement`` can never fire from text. Likewise
  ``(a,)``, ``(,a)`` and ``(a,,b)`` contain ``""``; but ``(a,,)`` and ``(,,)`` are errors (that is what
  Go's ``parseIdentifiersList`` does, and we mirror it so both sides reject the same strings).
* ``in`` and ``notin`` are keywords only where an operator is expected, so ``in in (notin)`` is a valid
  selector on the key ``in``.
* ``>``/``<`` values must parse as a 64-bit integer *and* be valid label values, so negative numbers are
  rejected (a label value cannot start with ``-``); leading zeros are kept verbatim, as Go does.
* ``!=`` and ``notin`` match when the key is absent; ``=``, ``in``, ``>``, ``<`` require it to be present;
  ``>``/``<`` never match a label whose value is not an integer.
* ``!key`` takes no operator: ``!key=x`` is an error.

Deliberate differences from Go, all of them stricter or invisible to callers:

* A NUL character ends the input in Go's lexer (``a\\x00junk`` parses as ``a``); here it is an ordinary
  character and fails validation, because silently ignoring the rest of the input hides mistakes.
* Inputs longer than :data:`MAX_SELECTOR_LENGTH` characters are rejected before parsing. The apiserver
  has no such cap, but nothing a human writes in a ``metricSelector`` comes close, and the parse result
  is cached, so the cap also bounds the cache's memory.
* Requirements are sorted by key, operator and values, and exact duplicates are dropped (Go sorts by key
  only, with an unstable sort, and keeps duplicates). The AND of a set does not depend on order or
  repetition, and a canonical form makes equal selectors compare and print equal.
* ``==`` is normalised to ``=``, which means the same thing.

Length: about 510 lines: a faithful port of the Go lexer and parser with positioned error messages.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final, NamedTuple

from adapter.errors import BadSelector, quote

#: Longest accepted selector text. See the module docstring for why there is a cap at all.
MAX_SELECTOR_LENGTH: Final = 4096

#: How many distinct selector strings :func:`parse_selector` remembers. Every HPA re-sends the same
#: selector every 15 s, so a few thousand entries cover any realistic cluster.
CACHE_SIZE: Final = 4096

#: The canonical operator names. ``"exists"`` is a bare ``key``, ``"!"`` is ``!key``.
OPERATORS: Final = frozenset({"=", "!=", "in", "notin", "exists", "!", "gt", "lt"})

_QUALIFIED_NAME_MAX = 63
_DNS_SUBDOMAIN_MAX = 253
_LABEL_VALUE_MAX = 63
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1

# The same expressions as k8s.io/apimachinery/pkg/util/validation (used with fullmatch, i.e. anchored).
_QUALIFIED_NAME_RE = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_LABEL_VALUE_RE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
_DNS_SUBDOMAIN_RE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
# What Go's strconv.ParseInt(s, 10, 64) accepts, before the range check. Python's int() would also
# accept surrounding whitespace, underscores and non-ASCII digits, which Go does not.
_INT_RE = re.compile(r"[+-]?[0-9]+")


# --------------------------------------------------------------------------------------------------------
# Validation shared by the parser (which knows positions) and the dataclasses (which guard direct use).


def _key_problem(key: str) -> str | None:
    """Why ``key`` is not a Kubernetes qualified name (``validation.IsQualifiedName``), or None."""
    parts = key.split("/")
    if len(parts) > 2:
        return "a key may contain at most one '/' (an optional DNS-subdomain prefix, then the name)"
    if len(parts) == 2:
        prefix = parts[0]
        if not prefix:
            return "the prefix before '/' is empty"
        if len(prefix) > _DNS_SUBDOMAIN_MAX:
            return f"the prefix before '/' is longer than {_DNS_SUBDOMAIN_MAX} characters"
        if not _DNS_SUBDOMAIN_RE.fullmatch(prefix):
            return (
                "the prefix before '/' must be a DNS subdomain: lowercase alphanumerics, '-' and '.', "
                "starting and ending with an alphanumeric"
            )
    name = parts[-1]
    if not name:
        return "the name part of the key is empty"
    if len(name) > _QUALIFIED_NAME_MAX:
        return f"the name part of the key is {len(name)} characters long; the limit is {_QUALIFIED_NAME_MAX}"
    if not _QUALIFIED_NAME_RE.fullmatch(name):
        return (
            "the name part of the key must consist of alphanumerics, '-', '_' or '.', "
            "and start and end with an alphanumeric"
        )
    return None


def _value_problem(value: str) -> str | None:
    """Why ``value`` is not a label value (``validation.IsValidLabelValue``), or None. Empty is valid."""
    if len(value) > _LABEL_VALUE_MAX:
        return f"the value is {len(value)} characters long; the limit is {_LABEL_VALUE_MAX}"
    if not _LABEL_VALUE_RE.fullmatch(value):
        return (
            "a value must be empty or consist of alphanumerics, '-', '_' or '.', "
            "and start and end with an alphanumeric"
        )
    return None


def _parse_int64(text: str) -> int | None:
    """``strconv.ParseInt(text, 10, 64)``: the integer, or None where Go would return an error."""
    if not _INT_RE.fullmatch(text):
        return None
    number = int(text)
    if not _INT64_MIN <= number <= _INT64_MAX:
        return None
    return number


def _arity_problem(operator: str, values: tuple[str, ...]) -> str | None:
    """Why ``values`` do not fit ``operator`` (the checks of ``labels.NewRequirement``), or None."""
    if operator in ("in", "notin"):
        if not values:
            return f"'{operator}' needs at least one value"
    elif operator in ("=", "!="):
        if len(values) != 1:
            return f"'{operator}' needs exactly one value"
    elif operator in ("exists", "!"):
        if values:
            return f"'{operator}' takes no values"
    elif operator in ("gt", "lt"):
        if len(values) != 1:
            return f"'{operator}' needs exactly one value"
        if _parse_int64(values[0]) is None:
            return f"the value of '>' or '<' must be a 64-bit integer, got {quote(values[0])}"
    else:
        return f"unknown operator {quote(operator)}; expected one of {', '.join(sorted(OPERATORS))}"
    return None


# --------------------------------------------------------------------------------------------------------
# The immutable result types.


@dataclass(frozen=True, slots=True)
class Requirement:
    """One ``key <operator> values`` condition of a selector.

    Immutable and hashable so parsed selectors can be cached and shared between requests. Constructing
    one directly validates it exactly like the parser would (raising :class:`BadSelector`), normalises
    ``"=="`` to ``"="`` and sorts and deduplicates ``values``, so two requirements that mean the same
    thing compare equal however they were built.
    """

    key: str
    operator: str
    values: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        operator = "=" if self.operator == "==" else self.operator
        values = tuple(sorted(set(self.values)))
        # Frozen dataclass: normalising in place needs object.__setattr__.
        object.__setattr__(self, "operator", operator)
        object.__setattr__(self, "values", values)
        problem = _key_problem(self.key)
        if problem is not None:
            raise BadSelector(f"label selector key {quote(self.key)} is invalid: {problem}")
        problem = _arity_problem(operator, values)
        if problem is not None:
            raise BadSelector(f"label selector requirement on key {quote(self.key)} is invalid: {problem}")
        for value in values:
            problem = _value_problem(value)
            if problem is not None:
                raise BadSelector(
                    f"label selector value {quote(value)} for key {quote(self.key)} is invalid: {problem}"
                )

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether ``labels`` satisfy this requirement, with ``Requirement.Matches`` semantics.

        Absent keys are the subtle part: ``!=`` and ``notin`` match them (Kubernetes reads "not equal to
        x" as "does not carry x"), while ``=``, ``in``, ``gt`` and ``lt`` do not.
        """
        op = self.operator
        if op == "exists":
            return self.key in labels
        if op == "!":
            return self.key not in labels
        actual = labels.get(self.key)
        if op in ("=", "in"):
            return actual is not None and actual in self.values
        if op in ("!=", "notin"):
            return actual is None or actual not in self.values
        # gt / lt: both sides must be 64-bit integers; a non-numeric label simply does not match.
        if actual is None:
            return False
        have = _parse_int64(actual)
        want = _parse_int64(self.values[0])
        if have is None or want is None:
            return False
        return have > want if op == "gt" else have < want

    def __str__(self) -> str:
        """The Kubernetes text for this requirement, as ``Requirement.String`` writes it."""
        op = self.operator
        if op == "exists":
            return self.key
        if op == "!":
            return "!" + self.key
        if op in ("in", "notin"):
            return f"{self.key} {op} ({','.join(self.values)})"
        symbol = {"=": "=", "!=": "!=", "gt": ">", "lt": "<"}[op]
        return f"{self.key}{symbol}{self.values[0]}"


def _sort_key(requirement: Requirement) -> tuple[str, str, tuple[str, ...]]:
    return (requirement.key, requirement.operator, requirement.values)


@dataclass(frozen=True, slots=True)
class Selector:
    """The AND of its requirements; the empty selector matches everything.

    ``requirements`` is kept sorted (key, then operator, then values) and free of exact duplicates, so
    ``parse_selector("b=1,a=2") == parse_selector("a=2, b==1")`` and ``str()`` is a canonical form that
    can be used as a cache or series key.
    """

    requirements: tuple[Requirement, ...] = ()

    def __post_init__(self) -> None:
        normalised = tuple(sorted(set(self.requirements), key=_sort_key))
        object.__setattr__(self, "requirements", normalised)

    @classmethod
    def of(cls, requirements: Iterable[Requirement]) -> Selector:
        """Build a selector from any iterable of requirements (the constructor wants a tuple)."""
        return cls(tuple(requirements))

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether ``labels`` satisfy every requirement."""
        return all(requirement.matches(labels) for requirement in self.requirements)

    def equalities(self) -> dict[str, str]:
        """Keys whose value every matching label set must have: ``key -> value``.

        Why: sources index series by a few labels (workload, route); this lets a handler go straight to
        the right series instead of scanning. A key is pinned by ``=`` and by ``in``; when a key has
        several such requirements their value sets are intersected, and the key is reported only if
        exactly one value survives (``a in (x,y),a in (y,z)`` pins ``a`` to ``y``). Keys pinned to
        contradictory values (``a=x,a=y``) are left out: such a selector matches nothing.

        This is a lookup hint, not the whole selector: callers must still apply :meth:`matches` to the
        candidates, because other requirements (``!=``, ``notin``, ``>``...) are not represented here.
        """
        allowed: dict[str, set[str]] = {}
        for requirement in self.requirements:
            if requirement.operator in ("=", "in"):
                values = set(requirement.values)
                if requirement.key in allowed:
                    allowed[requirement.key] &= values
                else:
                    allowed[requirement.key] = values
        return {key: next(iter(values)) for key, values in allowed.items() if len(values) == 1}

    def is_empty(self) -> bool:
        """True for the selector that does not restrict anything (the empty string)."""
        return not self.requirements

    def __str__(self) -> str:
        """Canonical Kubernetes text, e.g. ``route in (/a,/b),workload=checkout``; it parses back equal."""
        return ",".join(str(requirement) for requirement in self.requirements)


# --------------------------------------------------------------------------------------------------------
# Lexer and parser: a port of the Lexer/Parser in labels/selector.go, with positions for error messages.

_IDENT = "identifier"
_IN = "in"
_NOTIN = "notin"
_BANG = "!"
_EQ = "="
_EQEQ = "=="
_NE = "!="
_GT = ">"
_LT = "<"
_OPEN = "("
_CLOSE = ")"
_COMMA = ","
_EOS = "end of input"

_WHITESPACE = frozenset(" \t\r\n")
_SPECIAL = frozenset("=!(),><")
_TWO_CHAR_SYMBOLS = frozenset({"!=", "=="})
# Tokens that start a requirement, or serve as a key or value: in Go's "Values" parser context the
# keywords in/notin are plain identifiers.
_IDENTIFIER_LIKE = frozenset({_IDENT, _IN, _NOTIN})
_OPERATOR_TOKENS: Final = {_IN: "in", _NOTIN: "notin", _EQ: "=", _EQEQ: "=", _NE: "!=", _GT: "gt", _LT: "lt"}


class _Token(NamedTuple):
    kind: str
    text: str
    pos: int  # 0-based offset into the input


def _lex(text: str) -> list[_Token]:
    """Split ``text`` into tokens, always ending with an end-of-input token.

    Like Go's lexer: whitespace separates tokens; a run of special characters is split greedily into
    the longest known symbols (so ``>=`` is ``>`` then ``=``); anything else up to the next special or
    whitespace character is one identifier, which is a keyword if it is exactly ``in`` or ``notin``.
    """
    tokens: list[_Token] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i] in _WHITESPACE:
            i += 1
        if i >= n:
            tokens.append(_Token(_EOS, "", n))
            return tokens
        if text[i] in _SPECIAL:
            pair = text[i : i + 2]
            symbol = pair if pair in _TWO_CHAR_SYMBOLS else text[i]
            tokens.append(_Token(symbol, symbol, i))
            i += len(symbol)
            continue
        start = i
        while i < n and text[i] not in _SPECIAL and text[i] not in _WHITESPACE:
            i += 1
        word = text[start:i]
        kind = _IN if word == "in" else _NOTIN if word == "notin" else _IDENT
        tokens.append(_Token(kind, word, start))


class _Parser:
    """Recursive descent over the token list, mirroring ``Parser.parse`` and friends in selector.go."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _lex(text)
        self.index = 0

    # -- helpers ---------------------------------------------------------------------------------------

    def peek(self) -> _Token:
        return self.tokens[self.index]

    def consume(self) -> _Token:
        token = self.tokens[self.index]
        if token.kind != _EOS:  # the end token is sticky, so look-ahead past the end is harmless
            self.index += 1
        return token

    def fail(self, token: _Token, problem: str) -> BadSelector:
        """An error naming the input, the column (1-based) and the offending token."""
        found = "end of input" if token.kind == _EOS else quote(token.text) if token.text else "nothing"
        return BadSelector(
            f"invalid label selector {quote(self.text)}: at column {token.pos + 1} (found {found}): {problem}"
        )

    # -- grammar ---------------------------------------------------------------------------------------

    def parse(self) -> Selector:
        requirements: list[Requirement] = []
        if self.peek().kind == _EOS:
            return Selector()
        while True:
            token = self.peek()
            if token.kind not in _IDENTIFIER_LIKE and token.kind != _BANG:
                raise self.fail(token, "expected a key or '!key'")
            requirements.append(self.parse_requirement())
            after = self.consume()
            if after.kind == _EOS:
                return Selector.of(requirements)
            if after.kind != _COMMA:
                raise self.fail(after, "expected ',' or the end of the selector after a requirement")
            following = self.peek()
            if following.kind not in _IDENTIFIER_LIKE and following.kind != _BANG:
                raise self.fail(following, "expected another requirement after ','")

    def parse_requirement(self) -> Requirement:
        token = self.consume()
        negated = token.kind == _BANG
        if negated:
            token = self.consume()
        if token.kind not in _IDENTIFIER_LIKE:
            raise self.fail(token, "expected a key" + (" after '!'" if negated else ""))
        key = token.text
        problem = _key_problem(key)
        if problem is not None:
            raise self.fail(token, f"invalid key: {problem}")
        if self.peek().kind in (_EOS, _COMMA):
            return self.build(token, key, "!" if negated else "exists", [])
        if negated:
            # Go returns DoesNotExist here and then fails on the next token; say why more plainly.
            raise self.fail(self.peek(), "'!key' takes no operator or value")

        op_token = self.consume()
        operator = _OPERATOR_TOKENS.get(op_token.kind)
        if operator is None:
            raise self.fail(op_token, "expected an operator: =, ==, !=, in, notin, > or <")
        is_set = operator in ("in", "notin")
        values = self.parse_set(op_token) if is_set else [self.parse_exact_value()]
        return self.build(op_token, key, operator, values)

    def parse_exact_value(self) -> _Token:
        """The single value after ``=``, ``==``, ``!=``, ``>``, ``<``; nothing there means ``""``."""
        token = self.peek()
        if token.kind in (_EOS, _COMMA):
            return _Token(_IDENT, "", token.pos)
        self.consume()
        if token.kind not in _IDENTIFIER_LIKE:
            raise self.fail(token, "expected a value")
        return token

    def parse_set(self, op_token: _Token) -> list[_Token]:
        """``( v1, v2, ... )`` after ``in``/``notin``, with Go's handling of empty slots."""
        opening = self.consume()
        if opening.kind != _OPEN:
            raise self.fail(opening, f"expected '(' after '{op_token.text}'")
        token = self.peek()
        if token.kind == _CLOSE:  # "()" means the set {""}
            self.consume()
            return [_Token(_IDENT, "", token.pos)]
        if token.kind not in _IDENTIFIER_LIKE and token.kind != _COMMA:
            raise self.fail(token, "expected a value, ',' or ')'")
        values = self.parse_value_list()
        self.consume()  # parse_value_list only returns when ')' is next
        return values

    def parse_value_list(self) -> list[_Token]:
        """Port of ``parseIdentifiersList``: returns with ``)`` as the next token, or raises."""
        values: list[_Token] = []
        while True:
            token = self.consume()
            if token.kind in _IDENTIFIER_LIKE:
                values.append(token)
                following = self.peek()
                if following.kind == _COMMA:
                    continue
                if following.kind == _CLOSE:
                    return values
                raise self.fail(following, "expected ',' or ')' in a value list")
            if token.kind == _COMMA:
                empty = _Token(_IDENT, "", token.pos)
                if not values:
                    values.append(empty)  # "(,": a leading empty value
                following = self.peek()
                if following.kind == _CLOSE:
                    values.append(empty)  # ",)": a trailing empty value
                    return values
                if following.kind == _COMMA:
                    self.consume()
                    values.append(empty)  # ",,": an empty value in between
                continue
            raise self.fail(token, "expected a value or ',' in a value list")

    def build(self, where: _Token, key: str, operator: str, values: list[_Token]) -> Requirement:
        """Validate the values with their positions, then construct the requirement."""
        for value in values:
            problem = _value_problem(value.text)
            if problem is not None:
                raise self.fail(value, f"invalid value for key {quote(key)}: {problem}")
        texts = tuple(value.text for value in values)
        problem = _arity_problem(operator, texts)
        if problem is not None:
            raise self.fail(values[0] if values else where, problem)
        return Requirement(key, operator, texts)


def _parse_uncached(text: str) -> Selector:
    return _Parser(text).parse()


_parse_cached = functools.lru_cache(maxsize=CACHE_SIZE)(_parse_uncached)


def parse_selector(text: str) -> Selector:
    """Parse a Kubernetes label selector (already URL-decoded); ``""`` matches everything.

    Cached: every HPA re-sends the same selector every 15 seconds, and the result is immutable, so it is
    safe to hand the same object to every request. Errors are not cached (``lru_cache`` never caches an
    exception), which is fine: they are rare and cheap. Over-long input is refused before the cache so it
    cannot occupy cache slots.

    Raises :class:`BadSelector` with a message that quotes the input and says what is wrong and where.
    """
    if len(text) > MAX_SELECTOR_LENGTH:
        raise BadSelector(
            f"label selector {quote(text)} is {len(text)} characters long; the limit is {MAX_SELECTOR_LENGTH}"
        )
    return _parse_cached(text)
