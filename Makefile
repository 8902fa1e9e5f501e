# The commands people type. Everything runs inside ./.venv.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin

.PHONY: install test lint format demo bench bench-quality clean

$(BIN)/charlm: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -e ".[test]"
	touch $@

install: $(BIN)/charlm            ## virtual environment with charlm and the test tools

test: install                     ## the test suite
	$(BIN)/python -m pytest -q

lint: install                     ## ruff lint and format check
	$(BIN)/ruff check charlm tests benchmarks
	$(BIN)/ruff format --check charlm tests benchmarks

format: install
	$(BIN)/ruff format charlm tests benchmarks
	$(BIN)/ruff check --fix charlm tests benchmarks

demo: install                     ## train on Shakespeare for 3 minutes, then sample
	$(BIN)/charlm train shakespeare --minutes 3
	$(BIN)/charlm sample --length 300 --temperature 0.8

bench: install                    ## charlm vs PyTorch side by side → benchmarks/RESULTS.md (~10 min)
	$(BIN)/python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.13.0')" 2>/dev/null \
		|| $(BIN)/pip install -q torch==2.13.0
	$(BIN)/python benchmarks/compare.py

bench-quality: install            ## quality at equal time: 600 s of training per side (~21 min)
	$(BIN)/python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.13.0')" 2>/dev/null \
		|| $(BIN)/pip install -q torch==2.13.0
	$(BIN)/python benchmarks/quality.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache
