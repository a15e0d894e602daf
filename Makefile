# Two commands do everything on a fresh machine: `make serve` and `make test`.
VENV   ?= .venv
PYTHON ?= python3
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
export BENTOML_DO_NOT_TRACK := True

.PHONY: install serve test lint format bench clean

$(STAMP): pyproject.toml
	@echo "make: setting up $(VENV): installing mcdrop and its dependencies (torch, bentoml, ...); the first time takes about a minute"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check --progress-bar on -e '.[dev]'
	touch $(STAMP)
	@echo "make: $(VENV) is ready"

install: $(STAMP)

PORT ?= 3000

serve: $(STAMP)  ## serve the bundled default model on http://127.0.0.1:$(PORT) (make serve PORT=3001)
	$(VENV)/bin/mcdrop serve --port $(PORT)

test: $(STAMP)  ## lint and type-check, then the whole test suite
	$(VENV)/bin/ruff check mcdrop tests bench
	$(VENV)/bin/mypy
	$(PY) -m pytest

lint: $(STAMP)  ## ruff, and mypy over mcdrop/ (settings: pyproject.toml [tool.mypy]); the code is not ruff-formatted
	$(VENV)/bin/ruff check mcdrop tests bench
	$(VENV)/bin/mypy

format: $(STAMP)
	$(VENV)/bin/ruff format mcdrop tests bench
	$(VENV)/bin/ruff check --fix mcdrop tests bench

bench: $(STAMP)  ## the engine benchmark (BENCHMARKS.md)
	$(PY) bench/bench_engine.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
