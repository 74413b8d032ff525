# augflow — `make test` and `make demo` work on a fresh clone: they create .venv once and reuse it.
PYTHON ?= python3
# CPU build of torch on machines without a GPU; override e.g. `make TORCH=torch==2.5.1`.
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
DEMO_ROOT ?= augflow-data

.PHONY: install test test-fast lint typecheck format demo bench bench-validate usefulness clean

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

# mypy must see the installed names (augflow.schemas, ...), which only exist through the
# package-dir mapping; links under .mypy-src/augflow give it the same view.
typecheck: install
	mkdir -p .mypy-src/augflow
	for d in schemas models tasks flows; do ln -sfn ../../$$d .mypy-src/augflow/$$d; done
	$(BIN)/mypy -p augflow.schemas -p augflow.models -p augflow.tasks -p augflow.flows

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Fault injection (timers, killed processes) and the two-node Ray cluster (`ray start` makes it
# the machine's default cluster for a while) run alone; the rest on TEST_WORKERS processes
# (pytest-xdist), each with its own Prefect server, Ray and object store: most tests wait on
# servers and subprocesses, so two of them share 2 cores well; an idle worker takes queued tests
# from a busy one (worksteal), so a run of slow end-to-end tests does not end on one worker.
SERIAL_TESTS := tests/faults tests/tasks/test_ray_cluster.py
TEST_WORKERS ?= 2

test: install lint typecheck
	$(BIN)/python -m pytest $(SERIAL_TESTS)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist worksteal $(addprefix --ignore=,$(SERIAL_TESTS))

test-fast: install
	$(BIN)/python -m pytest -m "not slow"

# The demo runs with a HOME of its own: Prefect keeps its local database there, and a
# ray_bootstrap_config.yaml there stops Ray's usage-stats module from probing cloud metadata
# endpoints, so the demo talks to 127.0.0.1 only.
DEMO_HOME := $(CURDIR)/.venv/demo-home

demo: install
	mkdir -p $(DEMO_HOME) && printf 'provider:\n  type: local\n' > $(DEMO_HOME)/ray_bootstrap_config.yaml
	$(BIN)/python examples/prepare_inputs.py examples/inputs
	HOME=$(DEMO_HOME) $(BIN)/augflow run examples/demo-denoise.yaml --root $(DEMO_ROOT)
	HOME=$(DEMO_HOME) $(BIN)/augflow datasets list --root $(DEMO_ROOT)

# Writes bench/results/bench.json and bench.md; the latest numbers are in docs/benchmarks.md.
bench: install
	mkdir -p $(DEMO_HOME) && printf 'provider:\n  type: local\n' > $(DEMO_HOME)/ray_bootstrap_config.yaml
	HOME=$(DEMO_HOME) $(BIN)/python -m bench.run --out bench/results

# Peak memory and time of the quality gate at 1k/100k/1M rows (docs/quality-gate.md, Memory);
# about 6 min on the shared 2-core VM.
bench-validate: install
	$(BIN)/python -m bench.validate_memory

# Does augflow's output help a training job? A proxy classifier on few-shot digits, >= 5 seeds
# (37 min measured on the shared 2-core VM at load average 18-30). Writes
# bench/results/usefulness.json, usefulness-details.json and usefulness.md; docs/usefulness.md
# discusses the numbers. Exits 1 if an arm cannot run.
usefulness: install
	mkdir -p $(DEMO_HOME) && printf 'provider:\n  type: local\n' > $(DEMO_HOME)/ray_bootstrap_config.yaml
	HOME=$(DEMO_HOME) $(BIN)/python -m bench.usefulness --out bench/results

clean:
	rm -rf $(VENV) augflow-data .pytest_cache .ruff_cache examples/inputs
