# fleetgate — set-up and checks. `make demo` and `make test` work on a fresh clone.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export VIRTUAL_ENV := $(CURDIR)/$(VENV)
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export CARGO_TERM_COLOR ?= never

.PHONY: demo test test-rust test-python test-floor test-alerts test-generated build wheel redis-server bench bench-rust bench-python stubtest clean

demo: build  ## build, then run the main job on embedded defaults
	$(VENV)/bin/fleetgate demo

test: redis-server build test-generated test-rust test-python test-floor stubtest test-alerts  ## everything, against real Redis

# The sync request path is generated from the async one (scripts/unasync.py): never stale.
test-generated: $(VENV)/.ready
	$(PY) scripts/unasync.py --check

# In the release profile, after `build`: the tests run the code as the extension ships it and
# reuse every crate `maturin develop --release` compiled; only the core itself and the crates
# only tests use (proptest's) compile. Criterion's benches live in a crate of their own
# (rust/bench), and rust/core/Cargo.toml gives the tests the features the extension's build
# has, so that no shared crate is compiled twice.
test-rust:
	cargo test --release -p fleetgate-core --locked

test-python: build
	$(PY) -m pytest -q -m "not instructor"

# The oldest openai fleetgate supports (pyproject's lower bound), in a virtualenv of its own:
# the wheel from the same compile (maturin reuses it), installed with its extras and that
# openai, and the whole suite again. instructor runs there: its jiter pin keeps it off the
# newest openai, which .venv tests.
FLOOR := .venv-floor
OPENAI_FLOOR := $(shell sed -n 's/^ *"openai>=\([0-9.]*\)",.*/\1/p' pyproject.toml | head -n 1)
test-floor: build
	rm -rf target/floor-wheel
	$(VENV)/bin/maturin build --release --locked --out target/floor-wheel
	test -x $(FLOOR)/bin/python || $(PY) -m venv $(FLOOR)
	$(FLOOR)/bin/python -m pip install -q --upgrade pip
	$(FLOOR)/bin/python -m pip install -q --force-reinstall --no-deps target/floor-wheel/fleetgate-*.whl
	$(FLOOR)/bin/python -m pip install -q "$$(ls target/floor-wheel/fleetgate-*.whl)[testing,test,semantic,local-embeddings,otel,serve]" \
		"openai==$(OPENAI_FLOOR)" "instructor>=1.17"
	@echo "openai $(OPENAI_FLOOR) (fleetgate's lower bound), with instructor:"
	VIRTUAL_ENV=$(CURDIR)/$(FLOOR) PATH=$(CURDIR)/$(FLOOR)/bin:$$PATH $(FLOOR)/bin/python -m pytest -q -p no:cacheprovider

stubtest: build  ## the stubs match the extension, and the package type-checks strictly
	$(PY) -m mypy.stubtest fleetgate._core
	$(PY) -m mypy --strict python/fleetgate

# The Prometheus alerting rules and their unit tests, and the dashboards' expressions
# (scripts/dashboard_rules.py), with promtool from Debian's prometheus
# package (2.42 on bookworm), installed when missing. Its postinst would start a Prometheus
# server on :9090: a policy-rc.d answering 101 (action forbidden) keeps invoke-rc.d and
# deb-systemd-invoke from starting it, and is removed after unless one was there already
# (Docker images ship one). The service is then disabled at boot (and stopped, under systemd).
test-alerts:
	@if ! command -v promtool >/dev/null; then \
		echo "installing prometheus (for promtool) from Debian's packages, its server not started"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		policy=/usr/sbin/policy-rc.d; \
		if [ ! -e $$policy ]; then \
			trap "$$SUDO rm -f $$policy" EXIT; \
			printf '#!/bin/sh\nexit 101\n' | $$SUDO tee $$policy >/dev/null; \
			$$SUDO chmod 755 $$policy; \
		fi; \
		$$SUDO apt-get update -qq; \
		$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; \
		$$SUDO update-rc.d prometheus disable >/dev/null 2>&1 || true; \
		if [ -d /run/systemd/system ]; then $$SUDO systemctl disable --now prometheus.service >/dev/null 2>&1 || true; fi; \
	fi
	@promtool --version 2>&1 | head -n 1
	promtool check rules alerts/fleetgate.rules.yml
	promtool test rules alerts/fleetgate.rules.test.yml
	@# Every dashboard panel's expression, as a recording rule: parsed, and a few evaluated.
	dash=$$(mktemp -d); trap 'rm -rf "$$dash"' EXIT; \
	$(PYTHON) scripts/dashboard_rules.py dashboards/*.json --out "$$dash"; \
	promtool check rules "$$dash"/*.rules.yml; \
	cp dashboards/*.rules.test.yml "$$dash"/; \
	for t in "$$dash"/*.rules.test.yml; do promtool test rules "$$t"; done

# The environment: a virtualenv with maturin and the test tools.
$(VENV)/.ready: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q 'maturin>=1.9,<2'
	touch $@

# cargo prints each crate as it compiles: a first build takes several minutes on two cores.
build: $(VENV)/.ready  ## compile the Rust extension (release) into the virtualenv
	@echo "building fleetgate's Rust extension (release; a first build takes 5-15 minutes on 2 cores)"
	$(VENV)/bin/maturin develop --release --locked --extras testing,test,bench,semantic,local-embeddings,otel,serve

# One abi3 wheel (CPython 3.11 and later) for manylinux2014 (glibc 2.17: Debian 9+, Ubuntu
# 18.04+, Amazon Linux 2, RHEL/UBI 7+), linked by zig (the ziglang package) against that
# glibc, whatever this machine's. Not part of `make test`: it is a second full compile.
wheel: $(VENV)/.ready  ## build the distributable wheel into dist/
	$(PY) -m pip install -q 'ziglang>=0.13'
	$(VENV)/bin/maturin build --release --locked --zig --compatibility manylinux2014 --out dist

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
	cargo bench -p fleetgate-bench --bench limiter --locked

bench-python: redis-server build
	@command -v wrk >/dev/null || { SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); $$SUDO apt-get install -y -qq wrk >/dev/null; }
	$(PY) benches/limiter_accuracy.py
	$(PY) benches/limiter_speed.py
	$(PY) benches/fake_openai_throughput.py
	$(PY) benches/gateway_overhead.py
	$(PY) benches/gateway_quota_use.py

clean:
	rm -rf $(VENV) $(FLOOR) target
