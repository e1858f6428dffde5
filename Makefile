# keyplane — the two commands are `make run` and `make test`.
# The distribution's CPython when there is one (scripts/pick-python.sh says why).
PYTHON ?= $(shell scripts/pick-python.sh)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test check fmt bench clean setup

run: $(STAMP)
	$(BIN)/keyplane dev

test: check
	@./scripts/ensure-chromium.sh
	$(BIN)/python -m pytest $(PYTEST_ARGS)
	@$(MAKE) --no-print-directory bench-guard

check: $(STAMP)
	$(BIN)/ruff format --check src tests $(wildcard bench)
	$(BIN)/ruff check src tests $(wildcard bench)
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/keyplane migrate --check

fmt: $(STAMP)
	$(BIN)/ruff format src tests $(wildcard bench)
	$(BIN)/ruff check --fix src tests $(wildcard bench)

setup: $(STAMP)

# The environment is rebuilt whenever the lock file or the project metadata changes.
$(STAMP): requirements.lock pyproject.toml
	@./scripts/setup-venv.sh "$(PYTHON)" "$(VENV)"
	@touch $(STAMP)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis

# Benchmark (bench/README.md): keyplane against the bare upstream stub, side by side.
# `make bench BENCH_ARGS="--quick --no-record"` for a short look; BENCH_ARGS="--at HEAD" measures
# the last commit while the work tree is being edited.
.PHONY: bench-guard
bench: $(STAMP)
	@bench/setup.sh
	$(BIN)/python bench/run.py $(BENCH_ARGS)

bench-guard: $(STAMP)
	@bench/setup.sh
	$(BIN)/python bench/guard.py $(BENCH_ARGS)
