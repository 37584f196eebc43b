# Cardo pipeline: `make demo` and `make test` set up everything they need, idempotently.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NATIVE_STAMP := $(VENV)/.native-installed
# checkov (the deployment files' security checks) pins tabulate below the project's pin, so it gets a venv of its
# own inside .venv, pinned by requirements-checkov.lock (cardo_pipeline_tests/test_deploy.py runs its binary)
CHECKOV_VENV := $(VENV)/tools/checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed
# Cargo's build cache outlives clones and `make clean`, like the JVM jar cache
export CARGO_TARGET_DIR ?= $(HOME)/.cache/cardo/native-target
export CARDO_HOME ?= $(CURDIR)/.cardo
export DAGSTER_HOME ?= $(CARDO_HOME)/dagster
PYTEST_ARGS ?=

.PHONY: demo dev test test-fast deps venv stack-up stack-down status lint clean

## demo: set up everything, simulate a loan book through Postgres and Debezium, run the whole asset graph
demo: deps venv
	$(BIN)/cardo demo

## dev: the local stack plus the Dagster UI on http://127.0.0.1:3000 and the MLflow UI (CARDO_MLFLOW_PORT, 25050)
dev: deps venv
	$(BIN)/cardo stack up
	mkdir -p $(DAGSTER_HOME)
	test -f $(DAGSTER_HOME)/dagster.yaml || printf 'telemetry:\n  enabled: false\nnux:\n  enabled: false\n' > $(DAGSTER_HOME)/dagster.yaml
	@echo "Dagster UI: http://127.0.0.1:3000   MLflow UI: $$($(BIN)/python -c 'from cardo_pipeline.settings import CardoSettings; print(CardoSettings.from_env().mlflow_tracking_uri)')"
	$(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

## test: the whole suite, against a real stack of its own (started once, stopped at the end)
test: deps venv
	$(BIN)/pytest $(PYTEST_ARGS)

## test-fast: unit and property tests only, no services
test-fast: venv
	$(BIN)/pytest -m "not stack and not browser and not spark" $(PYTEST_ARGS)

## deps: Debian packages the stack needs (Postgres, Chromium for the browser test); Java and Maven are checked
deps:
	@command -v java >/dev/null || { echo "Java 17+ is missing: apt-get install -y openjdk-17-jre-headless"; exit 1; }
	@command -v mvn >/dev/null || { echo "Maven is missing: apt-get install -y maven"; exit 1; }
	@missing=""; \
	ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || missing="$$missing postgresql"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO="sudo"; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

## venv: the pinned Python environment (requirements.lock constrains every transitive dependency), plus the
## decoder's Rust crate (native/), built with the Rust toolchain (cargo; https://rustup.rs), and checkov's tool venv
venv: $(STAMP) $(NATIVE_STAMP) $(CHECKOV_STAMP)
$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c requirements.lock -e '.[dev]'
	touch $(STAMP)

$(NATIVE_STAMP): $(STAMP) native/Cargo.toml native/Cargo.lock native/pyproject.toml native/src/lib.rs
	@command -v cargo >/dev/null || { echo "Rust (cargo) is missing, needed to build the decoder crate in native/: install it with rustup (https://rustup.rs)"; exit 1; }
	$(BIN)/pip install -q ./native
	touch $(NATIVE_STAMP)

$(CHECKOV_STAMP): requirements-checkov.lock | $(STAMP)
	test -x $(CHECKOV_VENV)/bin/python || $(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install -q -r requirements-checkov.lock
	touch $(CHECKOV_STAMP)

stack-up: venv
	$(BIN)/cardo stack up
stack-down:
	$(BIN)/cardo stack down
status:
	$(BIN)/cardo stack status

lint: venv
	$(BIN)/ruff check cardo_pipeline cardo_pipeline_tests

## clean: stop the stack and delete its state (not the venv or the jar cache)
clean:
	-$(BIN)/cardo stack down
	rm -rf $(CARDO_HOME) .cardo-test*
