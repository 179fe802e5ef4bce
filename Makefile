# Every target creates the virtualenv it needs, so a fresh clone needs only python3 and make.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Mixpanel's browser SDK for tests/test_proxy_browser.py, pinned by its package-lock.json.
SDK := tests/browser_sdk/node_modules/.package-lock.json

.PHONY: test lint types unit demo bench docs matrix clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

## make test: ruff, mypy --strict and the whole pytest suite with a 100% branch-coverage gate.
test: lint types unit

lint: $(STAMP)
	$(BIN)/ruff check pyramid_mixpanel tests benchmarks examples
	$(BIN)/ruff format --check pyramid_mixpanel tests benchmarks examples

types: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP) $(SDK)
	$(BIN)/pytest --cov --cov-report=term-missing $(PYTEST_ARGS)

$(SDK): tests/browser_sdk/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
		cd tests/browser_sdk && npm ci --no-audit --no-fund --ignore-scripts; \
	else \
		echo "npm not found: tests/test_proxy_browser.py will skip (CI installs npm)"; \
	fi

## make demo: the example app on http://127.0.0.1:6543 in testing mode (no Mixpanel account needed).
demo: $(STAMP)
	$(BIN)/pip install --quiet -e examples/
	$(BIN)/pserve examples/development.ini

## make bench: benchmarks, printed as ratios against baselines measured in the same run.
bench: $(STAMP)
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python -m benchmarks.overhead
	$(BIN)/python -m benchmarks.delivery
	$(BIN)/python -m benchmarks.import
	$(BIN)/python -m benchmarks.export
	$(BIN)/python -m benchmarks.accuracy
	$(BIN)/python -m benchmarks.peers

## make docs: the Sphinx site in docs/_build/html, warnings as errors.
docs: $(STAMP)
	$(BIN)/python -m sphinx -W --keep-going -b html docs docs/_build/html

## make matrix: Python 3.10-3.13, the lowest dependency versions and the built wheel (nox).
matrix:
	.ci/matrix $(SESSIONS)

clean:
	rm -rf $(VENV) .coverage .mypy_cache .pytest_cache .ruff_cache *.egg-info tests/browser_sdk/node_modules
