# The verbs a user types. Parameters pass through to the notebooks, e.g.
#   make run DATA_DIR=../shared/lgg
#   make run EXTRA="-p EPOCHS 5"
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA_DIR ?=
ARTIFACTS_DIR ?= artifacts
SEED ?= 42
EXTRA ?=
# pytest-xdist processes for make test; each loads TensorFlow (about 1 GB), so more than the cores gain nothing.
TEST_WORKERS ?= 2
# Computed once (:=), so that every use names the same folder.
ifndef RUN_DIR
RUN_DIR := runs/$(shell date +%Y%m%d-%H%M%S)
endif
NOTEBOOKS := 01_data_download 02_preprocessing 03_resunet_model 04_training 05_evaluation
DATA_PARAMETER := $(if $(DATA_DIR),-p DATA_DIR $(abspath $(DATA_DIR)),)
# The benchmarks read DATA_DIR, else $$LGG_DATA_DIR, else ../shared/lgg where it exists, else the kagglehub download.
BENCH_DATA := $(or $(DATA_DIR),$(LGG_DATA_DIR),$(wildcard ../shared/lgg))
BENCH_DATA_OPTION := $(if $(BENCH_DATA),--data-dir $(BENCH_DATA),)
# TensorFlow's start-up lines on a machine without a GPU (its other errors stay), Jupyter's notice about a
# local kernel, and papermill's warning for each parameter a notebook does not take (the names were checked
# first): harmless.
NOISE := ^(I0000|W0000)|^E0000.*(failed call to cuInit|Unable to register cu(DNN|FFT|BLAS) factory|computation placer already registered)|Passed unknown parameter|All log messages before absl::InitializeLog|rebuild TensorFlow with the appropriate compiler flags|oneDNN custom operations are on|TCP without encryption|Unable to register cu(DNN|FFT|BLAS) factory|computation placer already registered

.PHONY: install run demo test lint bench quality compare app clean-venv

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: requirements.txt pyproject.toml | $(BIN)/activate
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -r requirements.txt
	$(BIN)/pip install --no-deps -e .
	touch $@

install: $(VENV)/.installed  ## create .venv and install the project

run: install  ## run notebooks 01-05 with papermill into runs/<time>/
	@$(BIN)/python -P helpers/parameters.py $(NOTEBOOKS:%=notebooks/%.ipynb) -- -p SLIDER False $(DATA_PARAMETER) $(EXTRA)
	@mkdir -p $(RUN_DIR)
	@set -e -o pipefail; for nb in $(NOTEBOOKS); do \
	  echo "== $$nb"; \
	  status=0; \
	  $(BIN)/papermill --log-output notebooks/$$nb.ipynb $(RUN_DIR)/$$nb.ipynb \
	    -p ARTIFACTS_DIR $(abspath $(ARTIFACTS_DIR)) -p SEED $(SEED) $$([ $$nb = 05_evaluation ] && echo -p SLIDER False) $(DATA_PARAMETER) $(EXTRA) \
	    2>&1 | { grep --line-buffered -v -E '$(NOISE)' || true; } || status=$$?; \
	  test $$status -eq 0 && test -f $(RUN_DIR)/$$nb.ipynb && ! grep -q '"ename"' $(RUN_DIR)/$$nb.ipynb \
	    || { echo "$$nb failed (papermill exit status $$status): see $(RUN_DIR)/$$nb.ipynb"; exit 1; }; \
	done
	@echo "Executed notebooks: $(RUN_DIR)/"
	@echo "Metrics:            $(abspath $(ARTIFACTS_DIR))/metrics.json"
	@$(BIN)/python -c "import json, sys; m = json.load(open(sys.argv[1])); print('Test patients: %d; mean per-patient Dice %.3f (median %.3f, lowest %.3f), IoU %.3f; post-processing chosen on validation: %s' % (m['patients'], m['dice_per_patient_mean'], m['dice_per_patient_median'], m['dice_per_patient_min'], m['iou_per_patient_mean'], m['chosen_on_validation']))" $(ARTIFACTS_DIR)/metrics.json

demo: install  ## notebooks 01-05 on synthetic data, in a few minutes
	$(MAKE) run ARTIFACTS_DIR=artifacts/demo RUN_DIR=runs/demo-$(shell date +%Y%m%d-%H%M%S) \
	  EXTRA="-p SYNTHETIC True -p INPUT_SIZE 64 -p BASE_FILTERS 16 -p EPOCHS 8 -p TIME_BUDGET_MINUTES 0 $(EXTRA)"

test: install  ## unit tests and every notebook run by papermill, test files shared among TEST_WORKERS processes
	$(BIN)/python -m pytest -ra --durations=15 -n $(TEST_WORKERS) --dist loadfile

lint: install  ## ruff over the package, tests and notebooks; no notebook with outputs
	$(BIN)/ruff check helpers tests benchmarks notebooks
	$(BIN)/python -m pytest -q tests/test_notebooks.py -k without_outputs

bench: install  ## input pipeline, manifest, inference and training speed, JSON under artifacts/bench
	$(BIN)/python benchmarks/pipeline.py $(BENCH_DATA_OPTION) --out $(ARTIFACTS_DIR)/bench
	$(BIN)/python benchmarks/pipeline_stages.py $(BENCH_DATA_OPTION) --out $(ARTIFACTS_DIR)/bench --cache-dir $(ARTIFACTS_DIR)/cache
	$(BIN)/python benchmarks/augment_threads.py $(BENCH_DATA_OPTION) --out $(ARTIFACTS_DIR)/bench --cache-dir $(ARTIFACTS_DIR)/cache
	$(BIN)/python benchmarks/inference.py --out $(ARTIFACTS_DIR)/bench
	$(BIN)/python benchmarks/training_speed.py --out $(ARTIFACTS_DIR)/bench

quality: install  ## train the CPU profile on real data and score held-out patients
	$(BIN)/python benchmarks/quality.py $(BENCH_DATA_OPTION) --out $(ARTIFACTS_DIR)/quality \
	  --cache-dir $(ARTIFACTS_DIR)/cache

compare: install  ## design choices at equal time (8 min each), scored on validation patients
	$(BIN)/python benchmarks/compare.py $(BENCH_DATA_OPTION) --out $(ARTIFACTS_DIR)/compare \
	  --cache-dir $(ARTIFACTS_DIR)/cache \
	  --minutes 8 --variants residual plain no_standardize no_flair_only

app: install  ## the Gradio app on http://127.0.0.1:7860
	$(BIN)/python -m helpers.app

clean-venv:
	rm -rf $(VENV)
