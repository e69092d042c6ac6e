# lockwarden — entry points. `make run` and `make test` work on a fresh Debian 12.
SHELL := /bin/bash
.DEFAULT_GOAL := build

CARGO        ?= cargo
PORT         ?= 6379
SERVER       ?= redis-server
MODULE       := target/release/liblockwarden.so
POLICY_DIR   := target/policies
POLICIES     := max-ttl key-pattern owner-format max-hold freeze-window
WASM_TARGET  := wasm32-unknown-unknown
# The policy `make run` loads at module load, and its settings.
DEFAULT_POLICY          ?= max-ttl
DEFAULT_POLICY_SETTINGS ?= {"default_ms":30000,"prefixes":[{"prefix":"batch:","max_ms":60000}],"action":"clamp"}

.PHONY: help deps build module policies run test test-unit test-integration test-faults bench lint fmt clean
# One step at a time, also under `make -j`: the suites start servers and
# measure time on a small machine, and every step needs `deps` first.
.NOTPARALLEL:

TEST_ENV := LOCKWARDEN_MODULE=$(CURDIR)/$(MODULE) LOCKWARDEN_POLICIES=$(CURDIR)/$(POLICY_DIR)

help:
	@echo 'make run               install what is missing, build, start $(SERVER) on port $(PORT) with the module and the $(DEFAULT_POLICY) policy (foreground)'
	@echo 'make test              lint, unit tests, integration tests (redis-server and valkey-server), fault suite (tests/FAULTS.md)'
	@echo 'make build             the module (target/release/liblockwarden.so) and the example policies (target/policies/*.wasm)'
	@echo 'make test-unit | test-integration | test-faults | lint | fmt    one part of it'
	@echo 'make bench             criterion benches and the side-by-side load comparisons (benches/README.md)'
	@echo 'make deps              install the missing system packages and Rust targets (idempotent)'
	@echo 'make clean             cargo clean'

deps:
	@./scripts/install-deps.sh

build: deps module policies

module: deps
	$(CARGO) build --release -p lockwarden
	@test -f $(MODULE) && echo "module: $(MODULE)"

policies: deps
	$(CARGO) build --profile wasm --target $(WASM_TARGET) $(addprefix -p policy-,$(POLICIES))
	@mkdir -p $(POLICY_DIR)
	@for p in $(POLICIES); do \
	  cp target/$(WASM_TARGET)/wasm/policy_$${p//-/_}.wasm $(POLICY_DIR)/$$p.wasm; \
	  echo "policy: $(POLICY_DIR)/$$p.wasm"; \
	done

# Starts redis-server in the foreground with the module and the default policy.
run: build
	@echo "lockwarden: redis-server on port $(PORT) (Ctrl-C to stop); try: redis-cli -p $(PORT) LOCK.ACQUIRE demo me 10000"
	$(SERVER) --port $(PORT) --save '' --appendonly no --enable-debug-command local \
	  --loadmodule $(CURDIR)/$(MODULE) \
	    policy-name $(DEFAULT_POLICY) \
	    policy-file $(CURDIR)/$(POLICY_DIR)/$(DEFAULT_POLICY).wasm \
	    policy-config '$(DEFAULT_POLICY_SETTINGS)'

# Everything CI runs: lint, unit and property tests, integration tests against
# real redis-server 7.0 and valkey-server 8.0, and the fault suite.
test: build lint test-unit test-integration test-faults

# Unit, property and doc tests of every crate except the integration suite.
test-unit: deps
	$(CARGO) test --release --workspace --exclude lockwarden-tests

test-integration: build
	$(TEST_ENV) $(CARGO) test --release -p lockwarden-tests --tests -- --test-threads=2

# The fault suite; regenerates tests/FAULTS.md. LOCKWARDEN_FAULTS_LONG=1 runs
# the long variants.
test-faults: build
	rm -rf target/faults
	$(TEST_ENV) $(CARGO) test --release -p lockwarden-tests --features faults --test faults -- --test-threads=2
	$(CARGO) run --release -q -p lockwarden-tests --bin faults-report

bench: build
	$(CARGO) bench -p lockwarden-benches
	$(CARGO) build --release -p lockwarden-floor
	$(TEST_ENV) $(CARGO) run --release -p lockwarden-benches --bin loadcompare
	$(TEST_ENV) $(CARGO) run --release -p lockwarden-benches --bin waitcompare

lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --workspace --all-targets --all-features -- -D warnings

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
