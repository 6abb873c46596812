# shoes-vz — the two commands that matter: `make run` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test proto proto-check lint bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

## run: bring up server + one sim agent on loopback, drive runners through their lifecycle, print timings
run: $(STAMP)
	$(BIN)/shoes-vz up

## test: install and run the whole test suite
test: $(STAMP)
	$(BIN)/python -m pytest -q

## proto: regenerate the committed protobuf/gRPC code
proto: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -I proto --python_out=src --pyi_out=src --grpc_python_out=src \
		$$(find proto -name '*.proto' | sort)

## lint: ruff + mypy
lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy

## bench: startup benchmarks against baselines measured in the same run
bench: $(STAMP)
	$(BIN)/python benchmarks/bench_fastpath.py
	@test ! -f benchmarks/bench_plugin.py || $(BIN)/python benchmarks/bench_plugin.py
	$(BIN)/python benchmarks/bench_warm.py
	$(BIN)/python benchmarks/bench_sim.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
