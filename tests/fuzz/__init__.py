"""Fuzzing of every input surface of the adapter (``make fuzz`` = ``python -m tests.fuzz``).

Why a package of its own: the same inputs, oracles and good-traffic check serve two masters. ``python -m
tests.fuzz`` drives them hard (100,000 inputs per target, coverage-guided with atheris when it is
installed, hypothesis otherwise), while ``tests/unit/test_fuzz_parsers.py`` and
``tests/integration/test_fuzz_http.py`` run a few hundred of the same inputs on every ``make test``, so a
regression the long run found stays found.

* :mod:`.inputs`: seeds (real OTLP requests built with ``opentelemetry-proto``, selectors, paths, configs,
  the kubectl quantity cases), how a fuzzer's bytes become a request, and hypothesis strategies.
* :mod:`.oracles`: what counts as a crash or a wrong answer for each surface, the HTTP client of a running
  adapter, and the good-traffic check that every batch of hostile input must leave working.
* :mod:`.specs`: the catalogue of the six targets (what the worker needs before it imports the adapter);
  :mod:`.targets`: what each does with one input, and after each batch.
* :mod:`.adapter_process`: the ``latency-adapter serve`` process the HTTP targets hit.
* :mod:`.engine` and ``__main__``: the atheris and hypothesis drivers and the summary table.
"""
