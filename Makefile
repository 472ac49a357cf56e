# The README's two commands, each creating the environment first if it is missing:
#   make sample   prepare the bundled sample corpus and train on it for a short CPU run
#   make test     lint (as make lint), then run the test suite
#   make lint     ruff (lint and format check) over the code, mypy over the package (make test runs it first)
# `make venv` only creates the environment (.venv, ~5.5 GB: torch's CUDA build runs on CPU too).

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
SAMPLE_DATA := runs/sample_prepared

.PHONY: venv sample test lint clean-sample

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements-dev.txt
	touch $@

venv: $(VENV)/.installed

# ~2 minutes on 2 CPU cores: prepare (resample 44.1 -> 22.05 kHz, normalise, cache features), then
# 30 steps of the full-size GlowTTS with the stable preset. Ends with a run folder under runs/.
sample: venv
	$(PY) -m ruslan_glowtts.prepare --src data/sample --dst $(SAMPLE_DATA)
	$(PY) train_ruslan_glowtts.py --preset stable --dataset-path $(SAMPLE_DATA) --max-steps 30 \
		--set print_step=5 --set test_delay_epochs=9

test: venv lint
	$(PY) -m pytest -q

LINTED := ruslan_glowtts tests bench scripts *.py

lint: venv
	$(PY) -m ruff check $(LINTED)
	$(PY) -m ruff format --check $(LINTED)
	$(PY) -m mypy

clean-sample:
	rm -rf $(SAMPLE_DATA)
