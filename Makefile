# Two entry points for a fresh machine: `make serve` and `make test`. Both create .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: serve test install lint bench

serve: install
	$(VENV)/bin/batchery serve

test: install
	scripts/test

install: $(VENV)/.installed

# torch is pinned first: that release is a local CPU wheel; anything else downloads gigabytes of CUDA.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[default-model,dev]'
	touch $@

lint: install
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/ruff format --check src tests
	$(VENV)/bin/mypy
