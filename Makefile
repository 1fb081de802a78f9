# Two commands do everything on a fresh machine: `make study` (the main job:
# the tuning study, then the baseline-vs-tuned report) and `make test`. The
# virtual environment is rebuilt whenever requirements.txt changes.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export CIFAR10_DIR ?= data
RUN ?= runs/smallcnn
# The study's storage: STORAGE=... here, else $$CIFAR_STORAGE (keep a URL with a password there, off the
# command line), else sqlite:///results/study.db.
STORAGE ?=
STORAGE_ARG = $(if $(STORAGE),--storage $(STORAGE))
STUDY_ARGS ?=
PORT ?= 8080

.PHONY: help setup test lint smallcnn train study report dashboard dashboard-screenshot report-screenshot bench serve readme clean

help: ## list the targets (the default)
	@awk -F':.*## ' '/^[a-z-]+:.*## / {printf "  make %-22s %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@echo "  variables: CIFAR10_DIR=$(CIFAR10_DIR) STORAGE=$(or $(STORAGE),\$$CIFAR_STORAGE or sqlite:///results/study.db) STUDY_NAME=$(STUDY_NAME) RUN=$(RUN) MODEL=$(MODEL)"

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

setup: $(VENV)/.installed ## create .venv from requirements.txt (again when it changes)

test: setup ## the test suite (tiny data, offline, a few minutes)
	$(PY) -m pytest -q

lint: setup ## ruff over every package
	$(VENV)/bin/ruff check cifar study reports tests bench

# Train and evaluate the original task's model, the SmallCNN; results land in results/smallcnn/.
# (The study's "baseline" is another config: the one it starts from, trial 0, configs/fast.json.)
smallcnn: setup ## train, evaluate and export the SmallCNN of the original task into RUN and results/smallcnn/
	$(PY) -m cifar.train --config configs/smallcnn.json --out $(RUN)
	$(PY) -m cifar.evaluate $(RUN)
	$(PY) -m cifar.export $(RUN)
	mkdir -p results/smallcnn
	cp $(RUN)/config.json $(RUN)/metrics.csv $(RUN)/results.json $(RUN)/test_metrics.json \
	   $(RUN)/plots/*.png results/smallcnn/

# The main job: the tuning study (preset chosen for the hardware; resumes when
# run again), then the baseline-vs-tuned report.
study: setup ## the main job: the tuning study (resumes when run again), then its report
	$(PY) -m study run $(STORAGE_ARG) $(if $(STUDY_NAME),--study-name $(STUDY_NAME)) $(STUDY_ARGS)
	$(MAKE) report

# The report of the storage's only study (or STUDY_NAME=...).
report: setup ## the baseline-vs-tuned report of the storage's study (STUDY_NAME=... if several)
	$(PY) -m reports build $(STORAGE_ARG) $(if $(STUDY_NAME),--study-name $(STUDY_NAME)) $(REPORT_ARGS)

# optuna-dashboard on the study's storage, bound to loopback only.
dashboard: setup ## optuna-dashboard on STORAGE (or $CIFAR_STORAGE) at http://127.0.0.1:8080 (PORT=...)
	$(PY) -m study dashboard $(STORAGE_ARG) --port $(PORT)

# Headless Chromium taking a 1400x1000 PNG of a page once its scripts have drawn (append --screenshot=FILE URL).
SCREENSHOT = chromium --headless --no-sandbox --disable-gpu --no-first-run --disable-background-networking \
	--disable-component-update --disable-sync --user-data-dir=$$(mktemp -d) \
	--window-size=1400,1000 --virtual-time-budget=20000 --hide-scrollbars

# A PNG of optuna-dashboard showing study 1, taken with headless Chromium
# (Debian's `chromium`: apt-get install chromium).
SHOT ?= results/studies/dashboard.png
dashboard-screenshot: setup ## a PNG of optuna-dashboard (needs Debian's chromium)
	mkdir -p $(dir $(SHOT))
	$(PY) -m study dashboard $(STORAGE_ARG) --port 8765 >/dev/null 2>&1 & pid=$$!; \
	trap "kill $$pid" EXIT; \
	for i in $$(seq 60); do curl -sf http://127.0.0.1:8765/api/studies >/dev/null && break; sleep 0.5; done; \
	$(SCREENSHOT) --screenshot=$(SHOT) http://127.0.0.1:8765/dashboard/studies/1

# A PNG of a report's first screen, taken the same way.
REPORT_HTML ?= results/reports/$(STUDY_NAME)/report.html
REPORT_SHOT ?= results/reports/report.png
report-screenshot: ## a PNG of a report's first screen (REPORT_HTML=..., REPORT_SHOT=...; needs chromium)
	@test -f $(REPORT_HTML) || { echo "error: no report $(REPORT_HTML): make report builds one (or give REPORT_HTML=path)" >&2; exit 2; }
	mkdir -p $(dir $(REPORT_SHOT))
	$(SCREENSHOT) --screenshot=$(REPORT_SHOT) file://$(abspath $(REPORT_HTML))

train: setup ## python -m cifar.train with ARGS="..." (python -m cifar.train --help lists them)
	$(PY) -m cifar.train $(ARGS)

bench: setup ## the data-pipeline benchmark
	$(PY) bench/pipeline.py

# The HTTP prediction service on 127.0.0.1:8000 (MODEL: a model.onnx or a .pt checkpoint).
MODEL ?= runs/smallcnn/model.onnx
serve: setup ## the HTTP prediction service on 127.0.0.1:8000 (MODEL=...)
	@test -f $(MODEL) || { echo "error: no model file $(MODEL): make smallcnn trains and exports one (or give MODEL=path)" >&2; exit 2; }
	$(PY) -m cifar.serve --model $(MODEL)

readme: setup ## rewrite the measured blocks of the README and docs/ from their owners (a test checks they are current)
	$(PY) bench/blocks.py

clean: ## remove runs/ (checkpoints of every run)
	rm -rf runs .pytest_cache
