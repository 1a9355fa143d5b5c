# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/vidssl demo $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check vidssl tests bench
	$(BIN)/ruff format --check vidssl tests bench

bench: $(STAMP)
	$(BIN)/pip install -q scikit-learn  # the retrieval benchmark's reference only
	$(BIN)/python bench/data_loading.py
	$(BIN)/python bench/train_step.py
	$(BIN)/python bench/pipeline.py
	$(BIN)/python bench/retrieval.py
	$(BIN)/python bench/memory.py
	$(BIN)/python bench/op_profile.py

clean:
	rm -rf $(VENV) runs build *.egg-info
