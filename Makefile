# The commands people type. Everything runs inside ./.venv.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin

.PHONY: install test lint format demo bench bench-quality models clean

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

# The shipped models: trained with charlm's own train command on the shipped corpora
# (last 10% held out), fixed seeds, then exported as float16 into the package.
# Each run can be stopped with Ctrl-C and continued with the same command
# (--resume picks the run up where it stopped; the budget is the --epochs total).
MODEL_ARGS := --layers 2 --hidden 512 --embed 64 --dropout 0.25 --batch-size 64 --seq-len 100 \
              --lr 2e-3 --epochs 30 --eval-every 150 --seed 1

models: install                   ## retrain the shipped models (hours on 2 cores; resumable)
	@mkdir -p model-runs
	$(BIN)/charlm train shakespeare --out model-runs $(MODEL_ARGS) \
		$$(test -f model-runs/shakespeare/last.safetensors && echo --resume model-runs/shakespeare || echo --name shakespeare)
	$(BIN)/charlm export model-runs/shakespeare charlm/models/shakespeare.safetensors --half --force
	$(BIN)/charlm train news --out model-runs $(MODEL_ARGS) \
		$$(test -f model-runs/news/last.safetensors && echo --resume model-runs/news || echo --name news)
	$(BIN)/charlm export model-runs/news charlm/models/news.safetensors --half --force

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache
