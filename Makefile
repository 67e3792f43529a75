# fleetgate — set-up and checks. `make demo` and `make test` work on a fresh clone.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export VIRTUAL_ENV := $(CURDIR)/$(VENV)
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export CARGO_TERM_COLOR ?= never

.PHONY: demo test test-rust test-python build redis-server bench bench-rust bench-python stubtest clean

demo: build  ## build, then run the main job on embedded defaults
	$(VENV)/bin/fleetgate demo

test: redis-server build test-rust test-python stubtest  ## everything, against real Redis

test-rust:
	cargo test -p fleetgate-core --locked

test-python: build
	$(PY) -m pytest -q

stubtest: build  ## the stubs match the extension, and the package type-checks strictly
	$(PY) -m mypy.stubtest fleetgate._core
	$(PY) -m mypy --strict python/fleetgate

# The environment: a virtualenv with maturin and the test tools.
$(VENV)/.ready: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q 'maturin>=1.9,<2'
	touch $@

build: $(VENV)/.ready  ## compile the Rust extension (release) into the virtualenv
	$(VENV)/bin/maturin develop --release --locked --extras testing,test,bench,local-embeddings,otel -q

# Debian's redis-server (7.0), installed when missing; CI runs as root.
redis-server:
	@if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then \
		echo "installing redis-server from Debian's packages"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq redis-server >/dev/null; \
	fi
	@redis-server --version

bench: bench-rust bench-python

bench-rust:
	cargo bench -p fleetgate-core --bench limiter --locked

bench-python: redis-server build
	@command -v wrk >/dev/null || { SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); $$SUDO apt-get install -y -qq wrk >/dev/null; }
	$(PY) benches/limiter_accuracy.py
	$(PY) benches/limiter_speed.py
	$(PY) benches/fake_openai_throughput.py

clean:
	rm -rf $(VENV) target
