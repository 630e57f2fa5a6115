# Python engine targets (virtual environment, protocol code, engine tests).
# Included by the top-level Makefile; paths are relative to the repository root.

.PHONY: venv test-py lint-py proto

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
VENV_PY := $(VENV)/bin/python
# The stamp is newer than pyproject.toml once its pins are installed, so a
# rerun costs nothing; pip's download cache is kept, so a rebuild after a pin
# change downloads only what changed (torch alone is several GB).
VENV_STAMP := $(VENV)/.installed

venv: $(VENV_STAMP)

$(VENV_STAMP): pyproject.toml
	test -x $(VENV_PY) || $(PYTHON) -m venv $(VENV)
	$(VENV_PY) -m pip install --upgrade 'pip>=24'
	$(VENV_PY) -m pip install -e '.[dev]'
	touch $@

test-py: venv
	$(VENV_PY) -m pytest python/tests

# bench/ is shared with other tools; only the engine's Python scripts are linted here.
BENCH_PY := bench/gpu_bench.py bench/gpu_report.py bench/engine_tracing.py

lint-py: venv
	$(VENV_PY) -m ruff check python $(BENCH_PY)
	$(VENV_PY) -m ruff format --check python $(BENCH_PY)
	$(VENV_PY) -m mypy
	$(VENV_PY) -m mypy -p enginetest
	$(VENV_PY) -m mypy $(BENCH_PY)

proto: venv
	proto/generate.sh .
