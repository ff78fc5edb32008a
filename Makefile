# The few commands people type. Everything the project needs is installed here.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SYNAPSE_VENV := .venv-synapse
ISSUER_DIR := tests/oidc-provider
# Synapse with stable MSC4190 (appservice device management) and MSC4326 (device masquerading).
SYNAPSE_SPEC := matrix-synapse>=1.141,<2

.PHONY: install test lint format demo clean

install: $(VENV)/.installed $(SYNAPSE_VENV)/.installed $(ISSUER_DIR)/node_modules/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

$(SYNAPSE_VENV)/.installed:
	$(PYTHON) -m venv $(SYNAPSE_VENV)
	$(SYNAPSE_VENV)/bin/pip install --quiet '$(SYNAPSE_SPEC)'
	touch $@

$(ISSUER_DIR)/node_modules/.installed: $(ISSUER_DIR)/package-lock.json
	npm ci --prefix $(ISSUER_DIR) --no-audit --no-fund
	touch $@

# pytest's own exit code is kept in .pytest-exit-code: make reports every
# failure as 2, and CI passes pytest's code on (.ci/run).
test: install
	@rm -f .pytest-exit-code
	$(BIN)/pytest $(PYTEST_ARGS); code=$$?; echo $$code > .pytest-exit-code; exit $$code

lint: $(VENV)/.installed
	$(BIN)/ruff check bridge tests
	$(BIN)/ruff format --check bridge tests
	$(BIN)/mypy

format: $(VENV)/.installed
	$(BIN)/ruff format bridge tests
	$(BIN)/ruff check --fix bridge tests

demo: install
	$(BIN)/python -m tests.support.demo

clean:
	rm -rf $(VENV) $(SYNAPSE_VENV) $(ISSUER_DIR)/node_modules .demo
