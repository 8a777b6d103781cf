# The two commands: `make demo` and `make test`. Both create .venv with pip when missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Nothing may download at run or test time; timm/huggingface must fail fast offline.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: demo test test-fast lint notebook bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip >/dev/null

# Stamp files: reinstall only when the package metadata changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e ".[test]"
	touch $@ $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/cxrlab demo --out demo-run

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest

# The fast part of the suite only (skips tests marked slow).
test-fast: $(VENV)/.installed-test
	$(BIN)/python -m pytest -m "not slow"

lint: $(VENV)/.installed-test
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

# After editing notebooks/walkthrough.py: rewrite the paired .ipynb (stored without outputs).
notebook: $(VENV)/.installed-test
	$(BIN)/jupytext --update --to ipynb notebooks/walkthrough.py -o notebooks/walkthrough.ipynb

clean:
	rm -rf demo-run .pytest_cache build dist src/*.egg-info
