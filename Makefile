# Every target creates the virtual environment first, so a fresh clone needs
# only Python 3.11+ and make.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LISTEN ?= 127.0.0.1:50051
PROTOC := $(BIN)/python -m grpc_tools.protoc -I protos
PROTOS := $(wildcard protos/sessiond/v1/*.proto)

.PHONY: venv run test proto proto-check lint format clean bench bench-quick

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[server,dev]'
	touch $@

venv: $(STAMP)

## run: start the daemon on SQLite (var/sessiond.db) at $(LISTEN)
run: $(STAMP)
	mkdir -p var
	$(BIN)/sessiond serve --listen $(LISTEN) --database-url sqlite:///$(CURDIR)/var/sessiond.db

## test: the whole suite; MySQL tests use SESSIOND_TEST_MYSQL_URL (default the local server)
test: $(STAMP)
	$(BIN)/python -m pytest -q

## proto: regenerate the Python stubs under client/sessiond/v1 from protos/
proto: $(STAMP)
	$(PROTOC) --python_out=client --pyi_out=client --grpc_python_out=client $(PROTOS)

## proto-check: fail when the committed stubs differ from what protos/ generates
proto-check: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit/test_generated_stubs.py

## bench: benchmark both backends against floors; writes docs/benchmarks.md and .png
bench: $(STAMP)
	$(BIN)/python -c 'import matplotlib' 2>/dev/null || \
		$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[server,dev,bench]'
	$(BIN)/python bench/run.py

## bench-quick: a smoke run of the benchmark in about a minute; writes to var/bench-quick/
bench-quick: $(STAMP)
	$(BIN)/python -c 'import matplotlib' 2>/dev/null || \
		$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[server,dev,bench]'
	$(BIN)/python bench/run.py --quick --out-dir var/bench-quick

lint: $(STAMP)
	$(BIN)/ruff check client server tests examples
	$(BIN)/ruff format --check client server tests examples
	$(BIN)/mypy client/sessiond server/sessiond_server

format: $(STAMP)
	$(BIN)/ruff format client server tests examples
	$(BIN)/ruff check --fix client server tests examples

clean:
	rm -rf $(VENV) var build *.egg-info client/*.egg-info server/*.egg-info
