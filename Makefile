# Build glue for the README's two commands. Everything else is `hrnet_sweep <command>`.
VENV ?= .venv
PY := $(VENV)/bin/python
# The PyTorch pair installed here; on a GPU machine pick the pair that matches its CUDA.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=

.PHONY: install lint test test-all demo clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e '.[test]'
	touch $@

test: install lint
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

# ruff: lint rules and the format are in pyproject.toml
lint: install
	$(VENV)/bin/ruff check hrnet_sweep tests benchmarks
	$(VENV)/bin/ruff format --check hrnet_sweep tests benchmarks

# Also the few slow tests (whole demo, real CPU sweep, quick-start walk-through): ~20 min more.
test-all: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

demo: install
	$(VENV)/bin/hrnet_sweep demo

clean:
	rm -rf outputs .pytest_cache build *.egg-info
