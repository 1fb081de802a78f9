# Two commands do everything on a fresh machine: `make baseline` (the main job
# for now) and `make test`. The virtual environment is rebuilt whenever
# requirements.txt changes.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export CIFAR10_DIR ?= data
RUN ?= runs/baseline
STORAGE ?= sqlite:///results/study.db
STUDY_ARGS ?=
PORT ?= 8080

.PHONY: setup test lint baseline train study dashboard bench clean

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

setup: $(VENV)/.installed

test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check cifar study tests bench

# Train and evaluate the documented baseline; results land in results/baseline/.
baseline: setup
	$(PY) -m cifar.train --config configs/baseline.json --out $(RUN)
	$(PY) -m cifar.evaluate $(RUN)
	mkdir -p results/baseline
	cp $(RUN)/config.json $(RUN)/metrics.csv $(RUN)/results.json $(RUN)/test_metrics.json \
	   $(RUN)/plots/*.png results/baseline/

# The tuning study (preset chosen for the hardware); resumes when run again.
study: setup
	$(PY) -m study run --storage $(STORAGE) $(STUDY_ARGS)

# optuna-dashboard on the study's storage, bound to loopback only.
dashboard: setup
	$(VENV)/bin/optuna-dashboard $(STORAGE) --host 127.0.0.1 --port $(PORT) \
	    --artifact-dir results/study-artifacts

train: setup
	$(PY) -m cifar.train $(ARGS)

bench: setup
	$(PY) bench/pipeline.py

clean:
	rm -rf runs .pytest_cache
