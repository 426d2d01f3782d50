"""The fuzz targets' in-process half on every ``make test``: a few hundred inputs per parser.

Why here as well as in ``make fuzz``: the long run (``python -m tests.fuzz``, 100,000 inputs per target)
takes minutes and runs on demand; these examples take seconds and keep what it taught from regressing.
They use the very generators and oracles of :mod:`tests.fuzz` (seeds, mutations, hostile but well-formed
OTLP requests, the selector and quantity round trips), so a finding there is a failing test here once its
input is among the seeds. ``derandomize`` keeps ``make test`` repeatable: the exploration is the long
run's job.

A test fails on an exception other than the parser's documented error (``BadSelector``, ``ValueError``,
``ConfigError``, ``BadRequest``) or on a broken promise the oracle names.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings

from adapter.config import settings_from_bytes
from adapter.errors import ConfigError
from tests.fuzz import inputs
from tests.fuzz.oracles import CONFIG_PATH
from tests.fuzz.targets import Runner

EXAMPLES = settings(max_examples=400, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

#: Target key -> its seeds, for the test that every seed passes on its own.
SEEDS = {"a": lambda: inputs.otlp_seeds(False), "b": lambda: inputs.otlp_seeds(True),
         "c": lambda: tuple(s.encode() for s in inputs.SELECTOR_SEEDS), "d": lambda: inputs.PATH_SEEDS,
         "e": inputs.config_seeds, "f": inputs.quantity_seeds}


@pytest.fixture(scope="module")
def runners() -> dict[str, Runner]:
    """One runner per target, without a client: the mirror ingestor and provider, and the parsers."""
    return {key: Runner(key) for key in SEEDS}


@pytest.mark.parametrize("key", sorted(SEEDS))
def test_seeds_pass_and_parsers_still_answer_right(runners: dict[str, Runner], key: str) -> None:
    runner = runners[key]
    assert [(s, p) for s in SEEDS[key]() if (p := runner.local(s))] == []
    assert runner.good() == []


@pytest.mark.parametrize("key", sorted(SEEDS))
def test_fuzzed_inputs(runners: dict[str, Runner], key: str) -> None:
    runner = runners[key]

    @EXAMPLES
    @given(inputs.STRATEGIES[key]())
    def one(data: bytes) -> None:
        assert runner.local(data) is None

    one()


#: What ``python -m tests.fuzz`` found in ``config``: PyYAML raises IndexError, KeyError, AttributeError or
#: ValueError, not a YAMLError, for an explicit tag on a scalar it cannot convert, and ``check-config``
#: printed a traceback for them.
YAML_TAG_CRASHES = (b"!!float", b"!!int _", b"!!int 0x", b"!!bool x", b"!!timestamp x", b"a: !!float .")


@pytest.mark.parametrize("data", YAML_TAG_CRASHES)
def test_yaml_tag_errors_are_config_errors(data: bytes) -> None:
    with pytest.raises(ConfigError):
        settings_from_bytes(data, CONFIG_PATH)
