# keyplane — the two commands are `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test check fmt bench clean setup

run: $(STAMP)
	$(BIN)/keyplane dev

test: check
	$(BIN)/python -m pytest $(PYTEST_ARGS)

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
