# keyplane — the two commands are `make run` and `make test`.
# The distribution's CPython when there is one (scripts/pick-python.sh says why).
PYTHON ?= $(shell scripts/pick-python.sh)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test check fmt bench clean setup compile

# keyplane's request path compiled with mypyc into a copy of src/ (scripts/compile.py says why
# and how); `make run` and the second test pass run from it. Not there when it could not be built
# (with CI=true that fails the build instead: CI tests the compiled copy or nothing).
COMPILED := build/compiled
SOURCES  := $(shell find src -type f ! -path '*/__pycache__/*' ! -name '*.so')
COMPILED_PATH = $$(test -d $(COMPILED)/src && echo $(CURDIR)/$(COMPILED)/src)

run: $(STAMP) $(COMPILED)/.stamp
	@PYTHONPATH="$(COMPILED_PATH)" $(BIN)/keyplane dev

# The suite runs on src/ as written, then the request path's tests on the compiled copy (mypyc
# checks annotated types at run time, and compiled classes behave slightly differently), each pass
# on every core (scripts/test-passes.sh).
test: check $(COMPILED)/.stamp
	@./scripts/ensure-chromium.sh
	@./scripts/test-passes.sh $(BIN)/python $(COMPILED)/src $(PYTEST_ARGS)
	@$(MAKE) --no-print-directory bench-guard

$(COMPILED)/.stamp: $(STAMP) $(SOURCES) scripts/compile.py
	@$(BIN)/python scripts/compile.py
	@touch $@

check: $(STAMP)
	$(BIN)/ruff format --check src tests $(wildcard bench) scripts/*.py
	$(BIN)/ruff check src tests $(wildcard bench) scripts/*.py
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/keyplane migrate --check

fmt: $(STAMP)
	$(BIN)/ruff format src tests $(wildcard bench) scripts/*.py
	$(BIN)/ruff check --fix src tests $(wildcard bench) scripts/*.py

setup: $(STAMP)

compile: $(COMPILED)/.stamp

# The environment is rebuilt whenever the lock file or the project metadata changes.
$(STAMP): requirements.lock pyproject.toml
	@./scripts/setup-venv.sh "$(PYTHON)" "$(VENV)"
	@touch $(STAMP)

clean:
	rm -rf $(VENV) build .mypy_cache .ruff_cache .pytest_cache .hypothesis

# Benchmark (bench/README.md): keyplane against the bare upstream stub, side by side.
# `make bench BENCH_ARGS="--quick --no-record"` for a short look; BENCH_ARGS="--at HEAD" measures
# the last commit while the work tree is being edited.
.PHONY: bench-guard
bench: $(STAMP) $(COMPILED)/.stamp
	@bench/setup.sh
	$(BIN)/python bench/run.py $(BENCH_ARGS)

bench-guard: $(STAMP) $(COMPILED)/.stamp
	@bench/setup.sh
	$(BIN)/python bench/guard.py $(BENCH_ARGS)
