# Two commands set up everything on a fresh machine: `make run` and `make test`.
# Both create .venv and install the project into it; `make test` also installs Prometheus from
# Debian's packages when it is missing and we are root (the integration tests need a real one).

PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: run test lint bench fuzz soak tools clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "$(PYTHON) not found; set PYTHON=/path/to/python3.11"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	rm -f $(VENV)/.installed-*
	touch $@

run: $(STAMP)
	$(BIN)/latency-adapter serve --insecure-no-auth --demo

# Debian's prometheus (and promtool), victoria-metrics, and kubectl when missing: tests use them as real
# clients/backends.
tools:
	@if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing prometheus from Debian's packages"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null \
	      || echo "warning: could not install prometheus"; \
	  else echo "note: prometheus is missing and we are not root; tests that need it skip (and fail under CI=true)"; fi; \
	fi
	@if ! command -v victoria-metrics >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing victoria-metrics from Debian's packages"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends victoria-metrics >/dev/null \
	      || echo "warning: could not install victoria-metrics"; \
	  else echo "note: victoria-metrics is missing and we are not root; tests that need it skip (and fail under CI=true)"; fi; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check adapter tests dashboards manifests/alerts
	$(BIN)/mypy --strict adapter
	$(BIN)/python -m tests.audit

test: $(STAMP) tools lint
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	@command -v wrk >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; } \
	  || echo "note: wrk is missing; the API benchmark is skipped"; }
	$(BIN)/python -m tests.benchmarks

# Coverage-guided fuzzing (atheris; hypothesis when atheris cannot be installed): 100,000 inputs per
# target against the parsers and a running adapter. Not part of `make test` (minutes, not seconds).
fuzz: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[fuzz]' || echo "note: atheris did not install; fuzzing with hypothesis"
	$(BIN)/python -m tests.fuzz

# Ten minutes at twice the sizing load (OTLP ingest and wrk on the API together); a table per minute.
soak: $(STAMP)
	@command -v wrk >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; } \
	  || { echo "wrk is missing and cannot be installed"; exit 1; }; }
	$(BIN)/python -m tests.soak

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info

# Regenerate dashboards/*.json from dashboards/generate.py (grafana-foundation-sdk, in the test extra).
.PHONY: dashboards
dashboards: $(STAMP)
	$(BIN)/python -m dashboards.generate

# Regenerate docs/simulation.md and docs/simulation.png (the README's simulation section) from
# `latency-adapter simulate`'s engine: every scenario, seed 1 (matplotlib comes with the test extra).
.PHONY: simulation-report
simulation-report: $(STAMP)
	$(BIN)/python -m adapter.simulate.report --out docs/simulation.md --plot docs/simulation.png --readme README.md
