# shoes-vz — the two commands that matter: `make run` and `make test`. Both set themselves up first
# (scripts/setup: system packages, loop devices, .venv). `make help` lists every target.
PY ?= python3
BIN := .venv/bin
SETUP := scripts/setup
export PY

.DEFAULT_GOAL := help
.PHONY: help run test bench soak chaos fuzz fuzz-http lint proto proto-check docs screenshots clean

## help: list these targets
help:
	@awk '/^## [a-z-]+: / { sub(/^## /, ""); name = $$0; sub(/:.*/, "", name); sub(/^[^:]*: /, ""); printf "  make %-12s %s\n", name, $$0 }' $(MAKEFILE_LIST)

## run: set up, then a server + one sim agent on loopback drive runners through their lifecycle; timing table
run:
	@$(SETUP) run
	$(BIN)/shoes-vz up

## test: set up, then the whole test suite (with CI set, a missing real part fails instead of skipping)
test:
	@$(SETUP) test
	$(BIN)/python -m pytest -q

## bench: startup benchmarks against baselines measured in the same run
bench:
	@$(SETUP) test
	$(BIN)/python benchmarks/bench_fastpath.py
	$(BIN)/python benchmarks/bench_plugin.py
	$(BIN)/python benchmarks/bench_warm.py
	$(BIN)/python benchmarks/bench_sim.py
	$(BIN)/python benchmarks/bench_setup.py

## soak: 1,000 sequential sim lifecycles; the daemons' RSS, fds, threads and the database size every 100; fails on growth
soak:
	@$(SETUP) test
	$(BIN)/python benchmarks/soak.py --count $${SOAK_COUNT:-1000}

## chaos: 5 minutes of SIGKILL/SIGSTOP of the agent, the server and VMs under concurrent lifecycles; invariants, faults, resync times
chaos:
	@$(SETUP) test
	$(BIN)/python tests/chaos.py --seconds $${CHAOS_SECONDS:-300} --seed $${CHAOS_SEED:-1}

## fuzz: 10,000 seeded inputs against the server's gRPC surface, with and without credentials; counts by status
fuzz:
	@$(SETUP) venv
	$(BIN)/python tests/security/fuzz_grpc.py --count $${FUZZ_COUNT:-10000} --seed $${FUZZ_SEED:-1} --time-limit 900

## fuzz-http: 10,000 seeded inputs against the notify server and a runner-agent (/health, /status, /exec); counts by status
fuzz-http:
	@$(SETUP) venv
	$(BIN)/python tests/security/fuzz_http.py --count $${FUZZ_COUNT:-10000} --seed $${FUZZ_SEED:-1} --time-limit 900
## screenshots: the status page of a two-agent sim fleet in headless Chromium → build/screenshots/; the CLI's tables → build/fleet/
screenshots:
	@$(SETUP) test
	$(BIN)/python -m pytest -q tests/test_status_page.py tests/test_fleet.py -k "page_shows or show_the_fleet"
	@ls -l build/screenshots build/fleet

## lint: ruff + mypy
lint:
	@$(SETUP) venv
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/mypy

## proto: regenerate the committed protobuf/gRPC code in src/shoes_vz/wire from proto/
proto:
	@$(SETUP) venv
	$(BIN)/python scripts/proto.py write

## proto-check: fail, naming the files, when the committed generated code is not what `make proto` makes
proto-check:
	@$(SETUP) venv
	$(BIN)/python scripts/proto.py check

## docs: regenerate README's configuration reference from the settings classes (src/shoes_vz/config.py)
docs:
	@$(SETUP) venv
	$(BIN)/python -m shoes_vz.config_doc

## clean: remove .venv and the tool caches
clean:
	rm -rf .venv .pytest_cache .mypy_cache .ruff_cache
