# The commands people type. Everything runs inside ./.venv.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin

.PHONY: install test test-fast lint format demo bench bench-quality models models-warm model-shakespeare model-news model-news-words clean

$(BIN)/charlm: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -e ".[test]"
	touch $@

install: $(BIN)/charlm            ## virtual environment with charlm and the test tools

test: install                     ## the test suite
	$(BIN)/python -m pytest -q

test-fast: install                ## the quick lane: every test not marked slow
	$(BIN)/python -m pytest -q -m "not slow"

lint: install                     ## ruff lint and format check
	$(BIN)/ruff check charlm tests benchmarks
	$(BIN)/ruff format --check charlm tests benchmarks

format: install
	$(BIN)/ruff format charlm tests benchmarks
	$(BIN)/ruff check --fix charlm tests benchmarks

demo: install                     ## train on Shakespeare for 3 minutes, then sample
	$(BIN)/charlm train shakespeare --minutes 3
	$(BIN)/charlm sample --length 300

bench: install                    ## charlm vs PyTorch side by side → benchmarks/RESULTS.md (~10 min)
	$(BIN)/python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.13.0')" 2>/dev/null \
		|| $(BIN)/pip install -q torch==2.13.0
	$(BIN)/python benchmarks/compare.py

bench-quality: install            ## quality at equal time: 600 s of training per side (~21 min)
	$(BIN)/python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.13.0')" 2>/dev/null \
		|| $(BIN)/pip install -q torch==2.13.0
	$(BIN)/python benchmarks/quality.py

# The shipped models: trained with charlm's own train command on the shipped corpora
# (last 10% held out), fixed seeds and budgets, then exported as float16 into the
# package. --threads 2 fixes the row blocks, so a run is exactly reproducible (two
# blocks run on two cores; on one core they take turns and give the same result).
# Stop with Ctrl-C and run 'make models' again: --resume continues where it stopped.
# The news model was trained before --forget-bias existed, with b_f = 1; its flags say so.
# The shipped shakespeare.safetensors is the best checkpoint (step 2,250, val 1.4457) of a run
# stopped at step 2,921 of its 25 epochs, after four evaluations without improvement.
MODEL_ARGS := --layers 2 --hidden 512 --embed 64 --batch-size 64 --seq-len 100 \
              --lr 2e-3 --eval-every 150 --seed 1 --threads 2
ARGS_shakespeare := --dropout 0.5 --forget-bias 0 --epochs 25
ARGS_news := --dropout 0.25 --forget-bias 1 --epochs 7

models: model-shakespeare model-news model-news-words   ## retrain the shipped models (about 2.5 hours on 2 cores; resumable)

# The export also stores the sampler's warmed-up state (computed from the float16 weights), so
# an unprompted sample starts at once. To compute it again without retraining (the weights stay
# as they are), e.g. after a change to the warm-up in charlm/sample.py: make models-warm
models-warm: install               ## store the warmed-up state in the shipped models again
	for m in shakespeare news news-words; do \
		$(BIN)/charlm export charlm/models/$$m.safetensors charlm/models/$$m.safetensors --half --force; done

model-shakespeare model-news: model-%: install
	@mkdir -p model-runs charlm/models
	$(BIN)/charlm train $* --out model-runs $(MODEL_ARGS) $(ARGS_$*) \
		$$(test -f model-runs/$*/last.safetensors && echo --resume model-runs/$* || echo --name $*)
	$(BIN)/charlm export model-runs/$* charlm/models/$*.safetensors --half --force

# The word model (--unit word, 10,000 words): the word model's defaults (2×200 LSTM, E 200,
# dropout 0.65, B 32, T 35, lr 3e-3), a fixed number of epochs. --unit and --vocab-size are
# recorded in the run, so a resumed run is not given them again.
WORD_MODEL_ARGS := --eval-every 200 --seed 1 --threads 2 --epochs 20

model-news-words: install
	@mkdir -p model-runs charlm/models
	$(BIN)/charlm train news --out model-runs $(WORD_MODEL_ARGS) \
		$$(test -f model-runs/news-words/last.safetensors && echo --resume model-runs/news-words \
			|| echo --name news-words --unit word --vocab-size 10000)
	$(BIN)/charlm export model-runs/news-words charlm/models/news-words.safetensors --half --force

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache
