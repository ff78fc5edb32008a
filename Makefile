# The few commands people type. Everything the project needs is installed here.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SYNAPSE_VENV := .venv-synapse
ISSUER_DIR := tests/oidc-provider
# Synapse with stable MSC4190 (appservice device management) and MSC4326 (device masquerading).
SYNAPSE_SPEC := matrix-synapse>=1.141,<2
# Dendrite (Go) for the legacy-homeserver tests; binaries in $(DENDRITE_BIN), built once.
DENDRITE_VERSION := v0.13.8
DENDRITE_BIN := .bin
DENDRITE_STAMP := $(DENDRITE_BIN)/.dendrite-$(DENDRITE_VERSION)

.PHONY: install test lint format demo clean

install: $(VENV)/.installed $(SYNAPSE_VENV)/.installed $(ISSUER_DIR)/node_modules/.installed $(DENDRITE_STAMP)

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[dev,fast]'
	touch $@

$(SYNAPSE_VENV)/.installed:
	$(PYTHON) -m venv $(SYNAPSE_VENV)
	$(SYNAPSE_VENV)/bin/pip install --quiet '$(SYNAPSE_SPEC)'
	touch $@

$(ISSUER_DIR)/node_modules/.installed: $(ISSUER_DIR)/package-lock.json
	npm ci --prefix $(ISSUER_DIR) --no-audit --no-fund
	touch $@

# Dendrite binaries for the legacy-homeserver tests, built from the Go module proxy.
# -p 1: a cold build takes about 2.5 minutes on two cores, seconds from the Go cache.
$(DENDRITE_STAMP):
	mkdir -p $(DENDRITE_BIN)
	GOBIN=$(abspath $(DENDRITE_BIN)) go install -p 1 \
		$(foreach cmd,dendrite generate-keys generate-config,github.com/matrix-org/dendrite/cmd/$(cmd)@$(DENDRITE_VERSION))
	touch $@

# PostgreSQL server binaries (initdb, pg_ctl) for the store tests: Debian's
# package, installed only when neither the PATH nor /usr/lib/postgresql has them.
.PHONY: postgres-server
install: postgres-server
postgres-server:
	@command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
		{ apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql; }

# systemd-analyze, which scores the units' hardening (tests/runtime/test_systemd_units.py):
# Debian's systemd package, installed only when missing.
.PHONY: systemd-tools
install: systemd-tools
systemd-tools:
	@command -v systemd-analyze >/dev/null 2>&1 || \
		{ apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends systemd; }

# Chromium for the legacy-SSO browser test: Debian's package (Playwright drives it
# with executable_path; no browser download), installed only when missing.
.PHONY: browser
install: browser
browser:
	@command -v chromium >/dev/null 2>&1 || \
		{ apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium; }

# pytest's own exit code is kept in .pytest-exit-code: make reports every
# failure as 2, and CI passes pytest's code on (.ci/run).
test: install
	@rm -f .pytest-exit-code
	$(BIN)/pytest $(PYTEST_ARGS); code=$$?; echo $$code > .pytest-exit-code; exit $$code

lint: $(VENV)/.installed
	$(BIN)/ruff check bridge tests bench
	$(BIN)/ruff format --check bridge tests bench
	$(BIN)/mypy

format: $(VENV)/.installed
	$(BIN)/ruff format bridge tests bench
	$(BIN)/ruff check --fix bridge tests

demo: install
	$(BIN)/python -m tests.support.demo

clean:
	rm -rf $(VENV) $(SYNAPSE_VENV) $(ISSUER_DIR)/node_modules .demo $(DENDRITE_BIN)

# Benchmarks (bench/README.md): nginx and wrk from Debian, installed only when missing.
.PHONY: bench bench-deps
bench-deps:
	@{ command -v nginx >/dev/null 2>&1 && command -v wrk >/dev/null 2>&1; } || \
		{ apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nginx wrk; }

bench: install bench-deps
	$(BIN)/python bench/proxy.py $(BENCH_ARGS)
	$(BIN)/python bench/streaming.py $(STREAMING_ARGS)

# Token validation (bench/README.md): Python only, no nginx or wrk needed.
.PHONY: bench-auth
bench-auth: install
	$(BIN)/python bench/auth.py $(AUTH_ARGS)
