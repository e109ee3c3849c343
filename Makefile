# Quick start: `make demo` trains the default config; `make test` runs the test suite.
# Both create .venv from requirements.txt on first use (needs Python >= 3.11 as $(PYTHON)).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo test clean

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python >= 3.11 required, got " + sys.version'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/python scripts/train_facenet.py --config=configs/facenet.py --workdir=runs/demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --durations=15 tests

# only what `make demo` writes: runs/ also holds long runs (e.g. the LFW cross-validations)
clean:
	rm -rf runs/demo
