# augflow — `make test` and `make demo` work on a fresh clone: they create .venv once and reuse it.
PYTHON ?= python3
# CPU build of torch on machines without a GPU; override e.g. `make TORCH=torch==2.5.1`.
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
DEMO_ROOT ?= augflow-data

.PHONY: install test test-fast lint format demo bench clean

install: $(STAMP)

# torch goes first so no dependency drags in a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip setuptools wheel
	$(BIN)/python -m pip install -q --disable-pip-version-check "$(TORCH)"
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $@

lint: install
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: install lint
	$(BIN)/python -m pytest

test-fast: install
	$(BIN)/python -m pytest -m "not slow"

demo: install
	$(BIN)/python examples/prepare_inputs.py examples/inputs
	$(BIN)/augflow run examples/demo-denoise.yaml --output $(DEMO_ROOT)
	$(BIN)/augflow datasets list --root $(DEMO_ROOT)

clean:
	rm -rf $(VENV) augflow-data .pytest_cache .ruff_cache examples/inputs
